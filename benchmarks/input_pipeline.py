"""Input pipeline throughput next to the train step's consumption rate.

    python benchmarks/input_pipeline.py [--crops 321,513] [--workers 0,1,2] [--images 200]
        [--batches 20] [--repeats 3] [--model deeplab_v2_resnet101_aspp_l] [--model-batch 2]

1. Writes `--images` synthetic VOC-size images (500x375 JPEG, quality 90, smooth colour fields +
   shapes + noise so the files are photo-sized) and palette masks with a 255 band, in the VOC
   layout, and builds them with the real `voc2012_segmentation` builder (array_record).
2. Pipeline: `input_pipeline.create_train_dataset` (random scale 0.5-1.5, pad, crop, flip, batch
   10) with `--workers` grain worker processes (0 = reading threads in this process only);
   images/s = batch * batches / wall time, after 3 warm-up batches (worker start-up excluded),
   median of `--repeats` runs, per crop size.
3. Model: one jitted forward + backward (cross-entropy on the subsampled labels, gradients of
   every parameter) of `--model` at the crop size, batch `--model-batch`, on the same CPU:
   images/s after one warm-up call (compilation), median of `--repeats`.

The target: pipeline images/s >= 2x the model's at the same crop, i.e. the input is
never the bottleneck. Both run in one process one after the other, so they share the machine's
load (other jobs on the 2-core machine inflate both; the ratio is what matters).
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import numpy as np

# Runnable from a checkout without installing the package.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def write_synthetic_voc(root, count, seed=0):
    """VOC layout with `count` 500x375 JPEGs and palette masks; all ids in train.txt."""
    from PIL import Image, ImageDraw

    from deeplab_jax.data import palettes

    rng = np.random.default_rng(seed)
    voc = os.path.join(root, "VOCdevkit", "VOC2012")
    for folder in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        os.makedirs(os.path.join(voc, folder), exist_ok=True)
    height, width = 375, 500
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    ids = [f"2012_{i:06d}" for i in range(count)]
    for image_id in ids:
        base = rng.uniform(0, 255, 3) + rng.uniform(-0.3, 0.3, 3) * x[..., None] \
            + rng.uniform(-0.3, 0.3, 3) * y[..., None]
        image = Image.fromarray(np.clip(base + rng.normal(0, 12, (height, width, 3)), 0,
                                        255).astype(np.uint8))
        label = Image.new("P", (width, height), 0)
        draw_image, draw_label = ImageDraw.Draw(image), ImageDraw.Draw(label)
        for _ in range(3):
            x0, y0 = int(rng.integers(0, width - 100)), int(rng.integers(0, height - 100))
            box = (x0, y0, x0 + int(rng.integers(40, 200)), y0 + int(rng.integers(40, 200)))
            class_id = int(rng.integers(1, 21))
            draw_image.ellipse(box, fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
            draw_label.ellipse(box, fill=class_id, outline=255, width=3)
        label.putpalette(palettes.voc_palette().reshape(-1).tolist())
        image.save(os.path.join(voc, "JPEGImages", f"{image_id}.jpg"), quality=90)
        label.save(os.path.join(voc, "SegmentationClass", f"{image_id}.png"))
    for split, split_ids in (("train", ids), ("val", ids[:10]), ("trainval", ids)):
        with open(os.path.join(voc, "ImageSets/Segmentation", f"{split}.txt"), "w") as stream:
            stream.write("".join(f"{i}\n" for i in split_ids))


def pipeline_rate(source, crop, workers, batches, repeats, batch_size=10):
    from deeplab_jax.data import input_pipeline

    rates = []
    for repeat in range(repeats):
        dataset = input_pipeline.create_train_dataset(
            source, global_batch_size=batch_size, crop_size=(crop, crop), seed=repeat,
            worker_count=workers)
        iterator = iter(dataset)
        for _ in range(3):  # warm-up: worker start-up, first reads
            next(iterator)
        start = time.perf_counter()
        for _ in range(batches):
            batch = next(iterator)
        elapsed = time.perf_counter() - start
        assert batch["image"].shape == (batch_size, crop, crop, 3)
        rates.append(batch_size * batches / elapsed)
        del iterator, dataset
    return statistics.median(rates)


def model_rate(model_name, crop, batch, repeats, num_classes=21):
    import jax
    import jax.numpy as jnp
    import optax

    from deeplab_jax import models

    model = models.get_model(model_name, num_classes)
    images = jnp.asarray(np.random.default_rng(0).integers(0, 256, (batch, crop, crop, 3)),
                         jnp.float32)
    variables = jax.jit(lambda key: model.init({"params": key, "dropout": key}, images,
                                               train=False))(jax.random.key(0))

    def loss_fn(params, images):
        logits = model.apply({**variables, "params": params}, images, train=True,
                             rngs={"dropout": jax.random.key(1)}, mutable=["batch_stats"])[0]
        labels = jnp.zeros(logits.shape[:3], jnp.int32)
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    step = jax.jit(jax.value_and_grad(loss_fn))
    jax.block_until_ready(step(variables["params"], images))  # compile
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(step(variables["params"], images))
        times.append(time.perf_counter() - start)
    return batch / statistics.median(times)


def main():
    from deeplab_jax.parallel import xla_flags

    xla_flags.apply()  # the package's XLA CPU settings, before JAX starts its backends
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--crops", default="321,513")
    parser.add_argument("--workers", default="0,1,2")
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--model", default="deeplab_v2_resnet101_aspp_l")
    parser.add_argument("--model-batch", type=int, default=2)
    parser.add_argument("--model-crops", default="321",
                        help="crops at which to time the model ('' to skip the model)")
    args = parser.parse_args()
    # grain's worker processes read absl flags; outside an absl app they must be marked parsed.
    from absl import flags
    flags.FLAGS.mark_as_parsed()

    import tensorflow_datasets as tfds

    from deeplab_jax.data import sources

    crops = [int(c) for c in args.crops.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as root:
        write_synthetic_voc(os.path.join(root, "manual"), args.images)
        builder = sources.get_builder("voc2012_segmentation/default", os.path.join(root, "tfds"),
                                      full_data=False)
        builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
            manual_dir=os.path.join(root, "manual")))
        source = sources.DecodedSource(builder, "train")
        for crop in crops:
            for workers in [int(w) for w in args.workers.split(",")]:
                rate = pipeline_rate(source, crop, workers, args.batches, args.repeats)
                rows.append({"what": f"pipeline, {workers} workers", "crop": crop,
                             "images_per_s": rate})
                print(json.dumps(rows[-1]), flush=True)
    for crop in [int(c) for c in args.model_crops.split(",") if c]:
        rate = model_rate(args.model, crop, args.model_batch, args.repeats)
        rows.append({"what": f"{args.model} fwd+bwd, batch {args.model_batch}", "crop": crop,
                     "images_per_s": rate})
        print(json.dumps(rows[-1]), flush=True)

    model_rows = {row["crop"]: row["images_per_s"] for row in rows if "fwd+bwd" in row["what"]}
    print("\n| what | crop | images/s | x model rate at 321 |\n|---|---|---|---|")
    reference = model_rows.get(min(model_rows)) if model_rows else None
    for row in rows:
        ratio = f"{row['images_per_s'] / reference:.0f}x" if reference else "-"
        print(f"| {row['what']} | {row['crop']} | {row['images_per_s']:.2f} | {ratio} |")


if __name__ == "__main__":
    main()
