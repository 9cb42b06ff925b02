"""grain pipelines: an endless, shuffled, augmented training stream and padded evaluation batches.

Training: each process reads only its own slice of the source (process_index::process_count), so
multi-host input is correct by construction; shuffling is global within that slice and re-drawn every
epoch, the augmentation's randomness is a function of (seed, element index), and the iterator's state
is a small dict ({'next_index': ...}) saved with every checkpoint, so a resumed run continues with
exactly the batches an uninterrupted run would have seen.

Evaluation: batches of a fixed shape (padded images with a validity mask, padded last batch), the
same number of batches in every process so jitted collectives line up.
"""

import math

import grain
import jax
import numpy as np

from deeplab_jax.data.augment import EvalPad, TrainAugment, empty_eval_example
from deeplab_jax.data.datasets import IGNORE_LABEL, PAD_RGB


def per_process_batch_size(global_batch_size: int) -> int:
    processes, devices = jax.process_count(), jax.device_count()
    if global_batch_size % devices:
        raise ValueError(
            f"batch size {global_batch_size} must be divisible by the number of devices ({devices}): "
            f"set config.batch_size to a multiple of {devices}")
    return global_batch_size // processes


def create_train_dataset(source, *, global_batch_size, crop_size, seed, scale_range=(0.5, 1.5),
                         flip=True, pad_value=PAD_RGB, ignore_label=IGNORE_LABEL, worker_count=0,
                         read_threads=2) -> grain.IterDataset:
    """Endless stream of batches {'image': uint8 [b, h, w, 3], 'label': uint8 [b, h, w]}.

    b is the per-process batch. worker_count > 0 moves augmentation to that many worker processes.
    """
    batch = per_process_batch_size(global_batch_size)
    dataset = grain.MapDataset.source(source)
    if jax.process_count() > 1:
        dataset = dataset[jax.process_index()::jax.process_count()]
    if len(dataset) == 0:
        raise ValueError(f"training source {source!r} is empty for process {jax.process_index()}")
    augment = TrainAugment(tuple(crop_size), tuple(scale_range), flip, tuple(pad_value),
                           ignore_label)
    dataset = (dataset.seed(seed).shuffle().repeat()
               .map(lambda example: {"image": example["image"], "label": example["label"]})
               .random_map(augment)
               .batch(batch, drop_remainder=True))
    iter_dataset = dataset.to_iter_dataset(
        grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=2 * batch))
    if worker_count > 0:
        # grain's worker processes read absl flags; outside an absl app (tests, notebooks) they are
        # unparsed and grain would raise UnparsedFlagAccessError.
        from absl import flags

        if not flags.FLAGS.is_parsed():
            flags.FLAGS.mark_as_parsed()
        iter_dataset = iter_dataset.mp_prefetch(
            grain.MultiprocessingOptions(num_workers=worker_count))
    return iter_dataset


def num_eval_batches(num_examples: int, global_batch_size: int) -> int:
    return math.ceil(num_examples / global_batch_size)


def eval_batches(source, *, global_batch_size, size, ignore_label=IGNORE_LABEL, pad_value=PAD_RGB,
                 max_examples=None):
    """Yields per-process eval batches; every example appears once over all processes.

    Keys: image uint8 [b, H, W, 3], label uint8 [b, H, W], mask bool [b, H, W], height/width int32
    [b] (0 for filler examples), image_id str [b].
    """
    batch = per_process_batch_size(global_batch_size)
    total = len(source) if max_examples is None else min(len(source), int(max_examples))
    steps = num_eval_batches(total, global_batch_size)
    pad = EvalPad(tuple(size), ignore_label, tuple(pad_value))
    # Contiguous slices per process, padded to `steps * batch` with filler examples.
    per_process = steps * batch
    start = jax.process_index() * per_process
    indices = [i for i in range(start, start + per_process) if i < total]
    filler = empty_eval_example(tuple(size), ignore_label)
    examples = (pad.map(source[i]) for i in indices)
    for _ in range(steps):
        chunk = []
        for _ in range(batch):
            chunk.append(next(examples, filler))
        yield {key: np.stack([example[key] for example in chunk]) for key in filler}
