"""Evaluation: jitted per-batch confusion matrices, host mIoU, optional dense CRF, pictures.

`Evaluator` (STYLE.md habit 7): a cached jitted function maps a globally sharded, fixed-shape eval
batch to a K x K confusion matrix (padding masked out); matrices are summed in int64 on the host and
mIoU, per-class IoU and pixel accuracy are computed once. Logits are upsampled bilinearly to the
image size with the output-stride alignment before the argmax (paper 002 §3.1). With
`config.crf.enabled` the dense CRF (§3.3) refines the probabilities of every image on its valid
region, and results are reported before and after it.

CLI: python -m deeplab_jax.evaluate --config=configs/demo.py --workdir=/tmp/deeplab_demo
"""

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.experimental import multihost_utils
from tqdm import tqdm

from deeplab_jax import metrics, sharding
from deeplab_jax.data import input_pipeline
from deeplab_jax.losses import infer_output_stride
from deeplab_jax.models.resize import upsample_logits
from deeplab_jax import visualize


def crf_params_from_config(config_crf):
    from deeplab_jax.crf import CRFParams

    return CRFParams(iterations=int(config_crf.iterations), bi_w=float(config_crf.bi_w),
                     bi_xy_std=float(config_crf.bi_xy_std), bi_rgb_std=float(config_crf.bi_rgb_std),
                     pos_w=float(config_crf.pos_w), pos_xy_std=float(config_crf.pos_xy_std))


class Evaluator:
    def __init__(self, model, mesh, descriptor, config):
        from deeplab_jax.train_state import eval_size

        self.model = model
        self.mesh = mesh
        self.descriptor = descriptor
        self.num_classes = descriptor.num_classes
        self.ignore_label = descriptor.ignore_label
        self.size = eval_size(config, descriptor)
        self.batch_size = int(config.eval.batch_size)
        self.max_examples = int(config.eval.max_examples) or None
        self.num_overlays = int(config.eval.num_overlays)
        self.pad_value = tuple(config.input.pad_value)
        self.crf_config = config.crf if config.crf.enabled else None
        sharding.check_batch_size(self.batch_size, mesh)
        replicated, batched = sharding.replicated(mesh), sharding.batch_sharding(mesh)
        self._confusion = jax.jit(self._confusion_fn, in_shardings=(replicated, batched),
                                  out_shardings=replicated)
        self._probabilities = jax.jit(self._probabilities_fn, in_shardings=(replicated, batched),
                                      out_shardings=batched)

    def full_resolution_logits(self, variables, images_BxHxWx3):
        logits = self.model.apply(variables, images_BxHxWx3, train=False)
        height, width = images_BxHxWx3.shape[1:3]
        stride = infer_output_stride(height, logits.shape[1])
        return upsample_logits(logits, (height, width), output_stride=stride)

    def _confusion_fn(self, variables, batch):
        predictions = jnp.argmax(self.full_resolution_logits(variables, batch["image"]), axis=-1)
        return metrics.confusion_matrix(batch["label"], predictions, self.num_classes,
                                        mask=batch["mask"], ignore_label=self.ignore_label)

    def _probabilities_fn(self, variables, batch):
        return jax.nn.softmax(self.full_resolution_logits(variables, batch["image"]), axis=-1)

    def batches(self, source, max_examples=None):
        return input_pipeline.eval_batches(
            source, global_batch_size=self.batch_size, size=self.size,
            ignore_label=self.ignore_label, pad_value=self.pad_value,
            max_examples=max_examples if max_examples is not None else self.max_examples)

    def evaluate(self, variables, source, progress=False):
        """Returns metrics (miou, per_class_iou, pixel_accuracy, ...; crf_* with the CRF)."""
        total = len(source) if self.max_examples is None else min(len(source), self.max_examples)
        steps = input_pipeline.num_eval_batches(total, self.batch_size)
        confusion = np.zeros((self.num_classes, self.num_classes), np.int64)
        crf_confusion = np.zeros_like(confusion) if self.crf_config else None
        for local in tqdm(self.batches(source), total=steps, desc="eval", disable=not progress):
            batch = sharding.global_batch(local, self.mesh)
            confusion += np.asarray(jax.device_get(self._confusion(variables, batch)), np.int64)
            if self.crf_config is not None:
                crf_confusion += self._crf_confusion(variables, batch, local)
        results = metrics.iou_from_confusion(confusion, self.descriptor.class_names)
        results["confusion"] = confusion
        if crf_confusion is not None:
            if jax.process_count() > 1:
                crf_confusion = np.asarray(
                    multihost_utils.process_allgather(crf_confusion)).sum(axis=0)
            crf = metrics.iou_from_confusion(crf_confusion, self.descriptor.class_names)
            results.update({f"crf_{k}": v for k, v in crf.items()})
            results["crf_confusion"] = crf_confusion
        return results

    def _crf_confusion(self, variables, batch, local):
        """Dense CRF on each local image's valid region; numpy confusion of the refined labels."""
        from deeplab_jax.crf import dense_crf

        params = crf_params_from_config(self.crf_config)
        probs = _local_rows(self._probabilities(variables, batch))
        confusion = np.zeros((self.num_classes, self.num_classes), np.int64)
        for i in range(len(local["image"])):
            height, width = int(local["height"][i]), int(local["width"][i])
            if height == 0:
                continue  # filler example of the last batch
            refined = dense_crf(local["image"][i, :height, :width],
                                probs[i, :height, :width], params, method=self.crf_config.method)
            predictions = np.asarray(refined).argmax(-1)
            confusion += metrics.confusion_matrix_numpy(
                local["label"][i, :height, :width], predictions, self.num_classes,
                ignore_label=self.ignore_label)
        return confusion

    def predict_labels(self, variables, images_BxHxWx3):
        """Argmax labels at full resolution for a few images (host arrays in, host arrays out)."""
        logits = _predict_jit(self)(variables, jnp.asarray(images_BxHxWx3))
        return np.asarray(jnp.argmax(logits, axis=-1), np.uint8)

    def evaluate_and_log(self, variables, source, writer, step):
        results = self.evaluate(variables, source)
        scalars = {"miou": results["miou"], "pixel_accuracy": results["pixel_accuracy"],
                   "mean_accuracy": results["mean_accuracy"]}
        scalars.update({f"iou/{name}": value for name, value in results["per_class"].items()})
        if "crf_miou" in results:
            scalars.update({"crf_miou": results["crf_miou"],
                            "crf_pixel_accuracy": results["crf_pixel_accuracy"]})
            scalars.update({f"crf_iou/{n}": v for n, v in results["crf_per_class"].items()})
        writer.write_scalars(step, scalars, split="val")
        if self.num_overlays and jax.process_index() == 0:
            writer.write_images(step, self.overlays(variables, source, self.num_overlays))
        logging.info("step %d: val mIoU %.4f, pixel accuracy %.4f%s", step, results["miou"],
                     results["pixel_accuracy"],
                     f", after CRF {results['crf_miou']:.4f}" if "crf_miou" in results else "")
        return results

    def overlays(self, variables, source, count):
        """name -> image | prediction overlay | ground truth panels for the first val images."""
        count = min(count, len(source))
        examples = [source[i] for i in range(count)]
        panels = {}
        for i, example in enumerate(examples):
            prediction = self.predict_labels(variables, example["image"][None])[0]
            panels[f"overlay_{i}"] = visualize.panel(example["image"], prediction,
                                                     self.descriptor.palette, example["label"])
        return panels


@functools.lru_cache(maxsize=8)
def _predict_jit(evaluator):
    return jax.jit(evaluator.full_resolution_logits)


def _local_rows(array):
    """This process's rows of a batch-sharded global array, in order, as numpy."""
    shards = sorted(array.addressable_shards, key=lambda s: s.index[0].start or 0)
    seen, rows = set(), []
    for shard in shards:
        start = shard.index[0].start or 0
        if start not in seen:
            seen.add(start)
            rows.append(np.asarray(shard.data))
    return np.concatenate(rows, axis=0)


def write_val_predictions(evaluator, variables, source, directory, count):
    """Palette PNGs and overlay panels of the first `count` val images (process 0 only)."""
    if jax.process_index() != 0:
        return
    os.makedirs(directory, exist_ok=True)
    for i in range(min(count, len(source))):
        example = source[i]
        prediction = evaluator.predict_labels(variables, example["image"][None])[0]
        name = example["image_id"] or f"{i:05d}"
        visualize.save_label_png(os.path.join(directory, f"{name}.png"), prediction,
                                 evaluator.descriptor.palette)
        panel = visualize.panel(example["image"], prediction, evaluator.descriptor.palette,
                                example["label"])
        from PIL import Image

        Image.fromarray(panel).save(os.path.join(directory, f"{name}_overlay.jpg"), quality=90)
    logging.info("wrote %d val predictions to %s", min(count, len(source)), directory)


def load_trained(config, workdir):
    """(model, variables, descriptor, mesh) from the newest checkpoint in workdir."""
    from deeplab_jax import checkpoint, train_state
    from deeplab_jax.train import INIT_IMAGE_SIZE

    mesh = sharding.create_mesh()
    descriptor = train_state.dataset_descriptor(config)
    model = train_state.create_model(config, descriptor)
    tx, _ = train_state.create_optimizer(config, model, INIT_IMAGE_SIZE)
    abstract, _ = train_state.abstract_and_sharding(model, tx, INIT_IMAGE_SIZE, mesh)
    manager = checkpoint.create_manager(workdir)
    state, _, step = checkpoint.restore_latest(manager, abstract)
    manager.close()
    if state is None:
        raise FileNotFoundError(
            f"no checkpoint in {os.path.join(workdir, 'checkpoints')}: train first with "
            f"python -m deeplab_jax.main --config=... --workdir={workdir}")
    logging.info("evaluating the checkpoint of step %d", step)
    return model, state.variables(), descriptor, mesh, step


def collect_val_probabilities(config, workdir, num_images):
    """Yields (image uint8 HxWx3, probs float32 HxWxK, label uint8 HxW) of the first val images."""
    from deeplab_jax.train_state import load_source

    model, variables, descriptor, mesh, _ = load_trained(config, workdir)
    evaluator = Evaluator(model, mesh, descriptor, config)
    source = load_source(config, descriptor, descriptor.eval_split)
    for local in evaluator.batches(source, max_examples=num_images):
        probs = _local_rows(evaluator._probabilities(variables, sharding.global_batch(local, mesh)))
        for i in range(len(local["image"])):
            height, width = int(local["height"][i]), int(local["width"][i])
            if height:
                yield (local["image"][i, :height, :width], probs[i, :height, :width],
                       local["label"][i, :height, :width])


def evaluate_checkpoint(config, workdir):
    """Evaluates the newest checkpoint on the eval split; logs under workdir; returns metrics."""
    from deeplab_jax.metric_writer import MetricWriter
    from deeplab_jax.train_state import load_source

    model, variables, descriptor, mesh, step = load_trained(config, workdir)
    evaluator = Evaluator(model, mesh, descriptor, config)
    source = load_source(config, descriptor, descriptor.eval_split)
    writer = MetricWriter(workdir)
    results = evaluator.evaluate_and_log(variables, source, writer, step)
    writer.close()
    return results


def main(argv):
    del argv
    from absl import flags

    results = evaluate_checkpoint(flags.FLAGS.config, flags.FLAGS.workdir)
    print(f"val mIoU {results['miou']:.4f}  pixel accuracy {results['pixel_accuracy']:.4f}")
    for name, value in results["per_class"].items():
        print(f"  {name:>16s} {value:.4f}")
    if "crf_miou" in results:
        print(f"after CRF: mIoU {results['crf_miou']:.4f}")


if __name__ == "__main__":
    from absl import app, flags
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", None, "configuration file", lock_config=True)
    flags.DEFINE_string("workdir", None, "directory with the training checkpoints")
    flags.mark_flags_as_required(["config", "workdir"])
    app.run(main)
