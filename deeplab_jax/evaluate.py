"""Evaluation: jitted per-batch confusion matrices, host mIoU, test-time modes, CRF, trimap.

`Evaluator` (STYLE.md habit 7): a cached jitted function maps a globally sharded, fixed-shape eval
batch to a K x K confusion matrix (padding masked out); matrices are summed in int64 on the host and
mIoU, per-class IoU and pixel accuracy are computed once. Scores come from `inference.predict_logits`
(full resolution; multi-scale + flip and sliding window from config.eval). With `config.crf.enabled`
the dense CRF (paper 002 §3.3) refines every image on its valid region, and with
`config.eval.trimap_widths` the trimap accuracy (Fig. 10) is measured; both are reported before and
after the CRF.

CLI: python -m deeplab_jax.evaluate --config=configs/demo.py --workdir=/tmp/deeplab_demo
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.experimental import multihost_utils
from tqdm import tqdm

from deeplab_jax import inference, sharding, trimap, visualize
from deeplab_jax.crf import CRFParams
from deeplab_jax.evaluation import metrics
from deeplab_jax.data import input_pipeline


class Evaluator:
    def __init__(self, model, mesh, descriptor, config, return_probabilities=False):
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
        self.inference_options = dict(
            scales=tuple(config.eval.scales), flip=bool(config.eval.flip),
            fusion=config.eval.fusion, window_size=tuple(config.eval.window_size) or None,
            window_stride=tuple(config.eval.window_stride) or None, pad_value=self.pad_value)
        self.crf_config = config.crf if config.crf.enabled else None
        self._want_probabilities = return_probabilities or self.crf_config is not None
        self.trimap_widths = tuple(int(w) for w in config.eval.trimap_widths)
        sharding.check_batch_size(self.batch_size, mesh)
        replicated, batched = sharding.replicated(mesh), sharding.batch_sharding(mesh)
        self._confusion = jax.jit(self._confusion_fn, in_shardings=(replicated, batched),
                                  out_shardings=replicated)
        self._details = jax.jit(self._details_fn, in_shardings=(replicated, batched),
                                out_shardings=(replicated, batched, batched))

    def logits(self, variables, images_BxHxWx3):
        """Scores at the input resolution with the configured test-time modes."""
        return inference.predict_logits(self.model, variables, images_BxHxWx3,
                                        **self.inference_options)

    def _confusion_fn(self, variables, batch):
        predictions = jnp.argmax(self.logits(variables, batch["image"]), axis=-1)
        return metrics.confusion_matrix(batch["label"], predictions, self.num_classes,
                                        mask=batch["mask"], ignore_label=self.ignore_label)

    def _details_fn(self, variables, batch):
        """Confusion, uint8 predictions, and probabilities (only when the CRF needs them)."""
        logits = self.logits(variables, batch["image"])
        predictions = jnp.argmax(logits, axis=-1)
        confusion = metrics.confusion_matrix(batch["label"], predictions, self.num_classes,
                                             mask=batch["mask"], ignore_label=self.ignore_label)
        probs = jax.nn.softmax(logits, axis=-1) if self._want_probabilities else jnp.zeros(
            (logits.shape[0],), jnp.float32)
        return confusion, predictions.astype(jnp.uint8), probs

    def batches(self, source, max_examples=None):
        return input_pipeline.eval_batches(
            source, global_batch_size=self.batch_size, size=self.size,
            ignore_label=self.ignore_label, pad_value=self.pad_value,
            max_examples=max_examples if max_examples is not None else self.max_examples)

    def evaluate(self, variables, source, progress=False):
        """Metrics: miou, per_class_iou, pixel_accuracy, ...; crf_* and trimap_* when enabled."""
        total = len(source) if self.max_examples is None else min(len(source), self.max_examples)
        steps = input_pipeline.num_eval_batches(total, self.batch_size)
        k = self.num_classes
        sums = {"confusion": np.zeros((k, k), np.int64)}
        host_pass = self.crf_config is not None or bool(self.trimap_widths)
        for local in tqdm(self.batches(source), total=steps, desc="eval", disable=not progress):
            batch = sharding.global_batch(local, self.mesh)
            if not host_pass:
                sums["confusion"] += np.asarray(jax.device_get(self._confusion(variables, batch)))
                continue
            confusion, predictions, probs = self._details(variables, batch)
            sums["confusion"] += np.asarray(jax.device_get(confusion))
            self._host_pass(local, _local_rows(predictions),
                            _local_rows(probs) if self.crf_config is not None else None, sums)
        return self._results(sums)

    def _host_pass(self, local, predictions, probs, sums):
        """Per image, on its valid region: trimap counts, and the CRF with its own counts."""
        params = CRFParams.from_config(self.crf_config) if probs is not None else None
        widths = self.trimap_widths
        for i in range(len(local["image"])):
            height, width = int(local["height"][i]), int(local["width"][i])
            if height == 0:
                continue  # filler example of the last batch
            label = local["label"][i, :height, :width]
            outputs = {"": predictions[i, :height, :width]}
            if params is not None:
                from deeplab_jax.crf import dense_crf

                refined = dense_crf(local["image"][i, :height, :width],
                                    probs[i, :height, :width], params,
                                    method=self.crf_config.method)
                outputs["crf_"] = np.asarray(refined).argmax(-1)
                sums["crf_confusion"] = sums.get("crf_confusion", 0) + \
                    metrics.confusion_matrix_numpy(label, outputs["crf_"], self.num_classes,
                                                   ignore_label=self.ignore_label)
            for prefix, prediction in outputs.items():
                if widths:
                    correct, total = trimap.trimap_counts(prediction, label, widths,
                                                          self.ignore_label)
                    sums[f"{prefix}trimap_correct"] = sums.get(f"{prefix}trimap_correct", 0) + correct
                    sums[f"{prefix}trimap_total"] = sums.get(f"{prefix}trimap_total", 0) + total

    def _results(self, sums):
        if jax.process_count() > 1:
            # The device confusion is already global; host-side counts are per process.
            for key in [k for k in sums if k != "confusion"]:
                sums[key] = np.asarray(multihost_utils.process_allgather(sums[key])).sum(axis=0)
        names = self.descriptor.class_names
        results = metrics.iou_from_confusion(sums["confusion"], names)
        results["confusion"] = sums["confusion"]
        if "crf_confusion" in sums:
            crf = metrics.iou_from_confusion(sums["crf_confusion"], names)
            results.update({f"crf_{k}": v for k, v in crf.items()})
            results["crf_confusion"] = sums["crf_confusion"]
        for prefix in ("", "crf_"):
            if f"{prefix}trimap_total" in sums:
                results[f"{prefix}trimap_widths"] = self.trimap_widths
                results[f"{prefix}trimap_accuracy"] = trimap.trimap_accuracy(
                    sums[f"{prefix}trimap_correct"], sums[f"{prefix}trimap_total"])
        return results

    def predict_labels(self, variables, images_BxHxWx3):
        """Argmax labels at full resolution for a few images (host arrays in, host arrays out)."""
        logits = _logits_jit(self)(variables, jnp.asarray(images_BxHxWx3))
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
        for prefix in ("", "crf_"):
            if f"{prefix}trimap_accuracy" in results:
                accuracy = results[f"{prefix}trimap_accuracy"]
                scalars.update({f"{prefix}trimap/{w}px": float(a)
                                for w, a in zip(self.trimap_widths, accuracy)})
                writer.write_curve(step, f"{prefix}trimap_accuracy", self.trimap_widths, accuracy)
        writer.write_scalars(step, scalars, split="val")
        if self.num_overlays and jax.process_index() == 0:
            writer.write_images(step, self.overlays(variables, source, self.num_overlays))
        logging.info("step %d: val mIoU %.4f, pixel accuracy %.4f%s", step, results["miou"],
                     results["pixel_accuracy"],
                     f", after CRF {results['crf_miou']:.4f}" if "crf_miou" in results else "")
        return results

    def overlays(self, variables, source, count):
        """name -> image | overlay | prediction | ground truth panels of the first val images."""
        panels = {}
        for i in range(min(count, len(source))):
            example = source[i]
            prediction = self.predict_labels(variables, example["image"][None])[0]
            panels[f"overlay_{i}"] = visualize.panel(example["image"], prediction,
                                                     self.descriptor.palette, example["label"])
        return panels


@functools.lru_cache(maxsize=8)
def _logits_jit(evaluator):
    return jax.jit(evaluator.logits)


def _local_rows(array):
    """This process's rows of a batch-sharded global array, in order, as numpy."""
    rows = {}
    for shard in array.addressable_shards:
        start = shard.index[0].start or 0
        rows.setdefault(start, np.asarray(shard.data))
    return np.concatenate([rows[start] for start in sorted(rows)], axis=0)


def write_val_predictions(evaluator, variables, source, directory, count):
    """Palette PNGs and overlay panels of the first `count` val images (process 0 only)."""
    import os

    from PIL import Image

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
        Image.fromarray(panel).save(os.path.join(directory, f"{name}_overlay.jpg"), quality=90)
    logging.info("wrote %d val predictions to %s", min(count, len(source)), directory)


def collect_val_probabilities(config, workdir, num_images):
    """Yields (image uint8 HxWx3, probs float32 HxWxK, label uint8 HxW) of the first val images."""
    from deeplab_jax.restore import load_trained
    from deeplab_jax.train_state import load_source

    model, variables, descriptor, mesh, _ = load_trained(config, workdir)
    evaluator = Evaluator(model, mesh, descriptor, config, return_probabilities=True)
    source = load_source(config, descriptor, descriptor.eval_split)
    for local in evaluator.batches(source, max_examples=num_images):
        _, _, probs = evaluator._details(variables, sharding.global_batch(local, mesh))
        probs = _local_rows(probs)
        for i in range(len(local["image"])):
            height, width = int(local["height"][i]), int(local["width"][i])
            if height:
                yield (local["image"][i, :height, :width], probs[i, :height, :width],
                       local["label"][i, :height, :width])


def evaluate_checkpoint(config, workdir):
    """Evaluates the newest checkpoint on the eval split; logs under workdir; returns metrics."""
    from deeplab_jax.metric_writer import MetricWriter
    from deeplab_jax.restore import load_trained
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
    for prefix in ("", "crf_"):
        if f"{prefix}trimap_accuracy" in results:
            curve = ", ".join(f"{w}px {a:.3f}" for w, a in zip(
                results[f"{prefix}trimap_widths"], results[f"{prefix}trimap_accuracy"]))
            print(f"trimap accuracy{' after CRF' if prefix else ''}: {curve}")


if __name__ == "__main__":
    from absl import app, flags
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", None, "configuration file", lock_config=True)
    flags.DEFINE_string("workdir", None, "directory with the training checkpoints")
    flags.mark_flags_as_required(["config", "workdir"])
    app.run(main)
