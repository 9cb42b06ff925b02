"""What an evaluation's results become: logged scalars and curves, text, pictures, label PNGs.

`log_results` writes to any writer with `write_scalars(step, dict, split)` and
`write_curve(step, name, xs, ys)` (the training run's MetricWriter); `overlay_panels` and
`write_val_predictions` draw with the evaluator's model on host-local variables (process 0 only in
multi-host jobs: the caller passes a process-local copy).
"""

import jax
from absl import logging

from deeplab_jax import storage
from deeplab_jax.serving import visualize


def scalars(results) -> dict:
    """Flat name -> value of what an evaluation measured (mIoU, per-class IoU, CRF, trimap)."""
    out = {"miou": results["miou"], "pixel_accuracy": results["pixel_accuracy"],
           "mean_accuracy": results["mean_accuracy"]}
    out.update({f"iou/{name}": value for name, value in results["per_class"].items()})
    if "crf_miou" in results:
        out.update({"crf_miou": results["crf_miou"],
                    "crf_pixel_accuracy": results["crf_pixel_accuracy"]})
        out.update({f"crf_iou/{n}": v for n, v in results["crf_per_class"].items()})
    for prefix in ("", "crf_"):
        if f"{prefix}trimap_accuracy" in results:
            out.update({f"{prefix}trimap/{w}px": float(a) for w, a in zip(
                results[f"{prefix}trimap_widths"], results[f"{prefix}trimap_accuracy"])})
    return out


def log_results(results, writer, step, split="val"):
    """Scalars and trimap curves to `writer`, one line to the log."""
    for prefix in ("", "crf_"):
        if f"{prefix}trimap_accuracy" in results:
            writer.write_curve(step, f"{prefix}trimap_accuracy", results[f"{prefix}trimap_widths"],
                               results[f"{prefix}trimap_accuracy"])
    writer.write_scalars(step, scalars(results), split=split)
    logging.info("step %d: %s mIoU %.4f, pixel accuracy %.4f%s", step, split, results["miou"],
                 results["pixel_accuracy"],
                 f", after CRF {results['crf_miou']:.4f}" if "crf_miou" in results else "")


def summary_text(results, split="val") -> str:
    """A human-readable table: mIoU, per-class IoU, CRF and trimap results."""
    lines = [f"{split} mIoU {results['miou']:.4f}  pixel accuracy "
             f"{results['pixel_accuracy']:.4f}"]
    crf = results.get("crf_per_class", {})
    for name, value in results["per_class"].items():
        after = f"  after CRF {crf[name]:.4f}" if name in crf else ""
        lines.append(f"  {name:>16s} {value:.4f}{after}")
    if "crf_miou" in results:
        lines.append(f"after CRF: mIoU {results['crf_miou']:.4f}  pixel accuracy "
                     f"{results['crf_pixel_accuracy']:.4f}")
    for prefix in ("", "crf_"):
        if f"{prefix}trimap_accuracy" in results:
            curve = ", ".join(f"{w}px {a:.3f}" for w, a in zip(
                results[f"{prefix}trimap_widths"], results[f"{prefix}trimap_accuracy"]))
            lines.append(f"trimap accuracy{' after CRF' if prefix else ''}: {curve}")
    return "\n".join(lines)


def overlay_panels(evaluator, variables, source, count) -> dict:
    """name -> image | overlay | prediction | ground truth panels of the first images."""
    panels = {}
    for i in range(min(count, len(source))):
        example = source[i]
        prediction = evaluator.predict_labels(variables, example["image"][None])[0]
        panels[f"overlay_{i}"] = visualize.panel(example["image"], prediction,
                                                 evaluator.descriptor.palette, example["label"])
    return panels


def write_val_predictions(evaluator, variables, source, directory, count):
    """Palette PNGs and overlay panels of the first `count` images (process 0 only).

    `directory` may be local or a URL (gs://...): files are written through epath.
    """
    if jax.process_index() != 0:
        return
    directory = storage.as_path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for i in range(min(count, len(source))):
        example = source[i]
        prediction = evaluator.predict_labels(variables, example["image"][None])[0]
        name = example["image_id"] or f"{i:05d}"
        visualize.save_label_png(directory / f"{name}.png", prediction,
                                 evaluator.descriptor.palette)
        visualize.save_jpeg(directory / f"{name}_overlay.jpg", visualize.panel(
            example["image"], prediction, evaluator.descriptor.palette, example["label"]))
    logging.info("wrote %d val predictions to %s", min(count, len(source)), directory)
