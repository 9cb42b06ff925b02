"""Evaluation: jitted per-batch confusion matrices, host mIoU, test-time modes, CRF, trimap.

`Evaluator`: a cached jitted function maps a globally sharded, fixed-shape eval batch to a K x K
confusion matrix (padding masked out); matrices are summed in int64 on the host and mIoU, per-class
IoU and pixel accuracy are computed once. Scores come from `inference.predict_logits` (full
resolution; multi-scale + flip and sliding window by `TestTimeOptions`). With a CRF the dense CRF
(DeepLab-v2 §3.3) refines every image on its valid region, and with trimap widths the trimap
accuracy (Fig. 10) is measured; both are reported before and after the CRF.
"""

import dataclasses
from typing import Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from tqdm import tqdm

from deeplab_jax import experiment
from deeplab_jax.crf import CRFParams, dense_crf
from deeplab_jax.data import input_pipeline
from deeplab_jax.evaluation import metrics, trimap
from deeplab_jax.inference import TestTimeOptions, predict_logits, prepare_if_unfolded
from deeplab_jax.parallel import mesh as mesh_lib


@dataclasses.dataclass(frozen=True)
class EvalSettings:
    """What an evaluation does; `from_config` reads config.eval, config.input and config.crf."""

    size: Tuple[int, int]  # fixed padded (H, W) of every eval batch
    batch_size: int = 8  # global
    max_examples: Optional[int] = None  # None = the whole split
    options: TestTimeOptions = TestTimeOptions()
    crf: Optional[CRFParams] = None  # None = no CRF
    crf_method: str = "meanfield"
    trimap_widths: Tuple[int, ...] = ()

    @classmethod
    def from_config(cls, config, descriptor) -> "EvalSettings":
        crf = CRFParams.from_config(config.crf) if config.crf.enabled else None
        return cls(size=experiment.eval_size(config, descriptor),
                   batch_size=int(config.eval.batch_size),
                   max_examples=int(config.eval.max_examples) or None,
                   options=TestTimeOptions.from_config(config), crf=crf,
                   crf_method=config.crf.method,
                   trimap_widths=tuple(int(w) for w in config.eval.trimap_widths))


class Evaluator:
    def __init__(self, model, mesh, descriptor, settings: EvalSettings,
                 return_probabilities=False):
        self.model = model
        self.mesh = mesh
        self.descriptor = descriptor
        self.settings = settings
        self.num_classes = descriptor.num_classes
        self.ignore_label = descriptor.ignore_label
        self._want_probabilities = return_probabilities or settings.crf is not None
        mesh_lib.check_batch_size(settings.batch_size, mesh)
        replicated, batched = mesh_lib.replicated(mesh), mesh_lib.batch_sharding(mesh)
        self._confusion = jax.jit(self._confusion_fn, in_shardings=(replicated, batched),
                                  out_shardings=replicated)
        self._details = jax.jit(self._details_fn, in_shardings=(replicated, batched),
                                out_shardings=(replicated, batched, batched))
        self._logits = jax.jit(self.logits)

    def logits(self, variables, images_BxHxWx3):
        """Scores at the input resolution with the configured test-time modes.

        `variables` are the model's own (as trained); BatchNorm is folded into the convolutions
        here, inside the compiled function (`inference.prepare`: faster, same scores), so the
        training loop can hand over its state as it is.
        """
        model, variables = prepare_if_unfolded(self.model, variables)
        return predict_logits(model, variables, images_BxHxWx3, self.settings.options)

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
            source, global_batch_size=self.settings.batch_size, size=self.settings.size,
            ignore_label=self.ignore_label, pad_value=self.settings.options.pad_value,
            max_examples=max_examples if max_examples is not None else self.settings.max_examples)

    def evaluate(self, variables, source, progress=False):
        """Metrics: miou, per_class_iou, pixel_accuracy, ...; crf_* and trimap_* when enabled."""
        limit = self.settings.max_examples
        total = len(source) if limit is None else min(len(source), limit)
        steps = input_pipeline.num_eval_batches(total, self.settings.batch_size)
        k = self.num_classes
        sums = {"confusion": np.zeros((k, k), np.int64)}
        host_pass = self.settings.crf is not None or bool(self.settings.trimap_widths)
        for local in tqdm(self.batches(source), total=steps, desc="eval", disable=not progress):
            batch = mesh_lib.global_batch(local, self.mesh)
            if not host_pass:
                sums["confusion"] += np.asarray(jax.device_get(self._confusion(variables, batch)))
                continue
            confusion, predictions, probs = self._details(variables, batch)
            sums["confusion"] += np.asarray(jax.device_get(confusion))
            self._host_pass(local, local_rows(predictions),
                            local_rows(probs) if self.settings.crf is not None else None, sums)
        return self._results(sums)

    def probabilities(self, variables, source, num_images):
        """Yields (image uint8 HxWx3, probs float32 HxWxK, label uint8 HxW) of the first images."""
        for local in self.batches(source, max_examples=num_images):
            _, _, probs = self._details(variables, mesh_lib.global_batch(local, self.mesh))
            probs = local_rows(probs)
            for i in range(len(local["image"])):
                height, width = int(local["height"][i]), int(local["width"][i])
                if height:
                    yield (local["image"][i, :height, :width], probs[i, :height, :width],
                           local["label"][i, :height, :width])

    def _host_pass(self, local, predictions, probs, sums):
        """Per image, on its valid region: trimap counts, and the CRF with its own counts."""
        widths = self.settings.trimap_widths
        for i in range(len(local["image"])):
            height, width = int(local["height"][i]), int(local["width"][i])
            if height == 0:
                continue  # filler example of the last batch
            label = local["label"][i, :height, :width]
            outputs = {"": predictions[i, :height, :width]}
            if probs is not None:
                refined = dense_crf(local["image"][i, :height, :width],
                                    probs[i, :height, :width], self.settings.crf,
                                    method=self.settings.crf_method)
                outputs["crf_"] = np.asarray(refined).argmax(-1)
                sums["crf_confusion"] = sums.get("crf_confusion", 0) + \
                    metrics.confusion_matrix_numpy(label, outputs["crf_"], self.num_classes,
                                                   ignore_label=self.ignore_label)
            for prefix, prediction in outputs.items():
                if widths:
                    correct, total = trimap.trimap_counts(prediction, label, widths,
                                                          self.ignore_label)
                    for name, count in (("correct", correct), ("total", total)):
                        key = f"{prefix}trimap_{name}"
                        sums[key] = sums.get(key, 0) + count

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
                results[f"{prefix}trimap_widths"] = self.settings.trimap_widths
                results[f"{prefix}trimap_accuracy"] = trimap.trimap_accuracy(
                    sums[f"{prefix}trimap_correct"], sums[f"{prefix}trimap_total"])
        return results

    def predict_labels(self, variables, images_BxHxWx3):
        """Argmax labels at full resolution for a few images (host arrays in, host arrays out)."""
        logits = self._logits(variables, jnp.asarray(images_BxHxWx3))
        return np.asarray(jnp.argmax(logits, axis=-1), np.uint8)


def local_rows(array):
    """This process's rows of a batch-sharded global array, in order, as numpy."""
    rows = {}
    for shard in array.addressable_shards:
        start = shard.index[0].start or 0
        rows.setdefault(start, np.asarray(shard.data))
    return np.concatenate([rows[start] for start in sorted(rows)], axis=0)
