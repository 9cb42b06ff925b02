"""Where training and evaluation results go: TensorBoard event files and a metrics.jsonl.

TensorBoard files are written with tensorboardX (no TensorFlow needed); every scalar also goes to
<workdir>/metrics.jsonl, one JSON object per line ({"step": ..., "split": ..., name: value}), which
is what scripts and tests read. Only process 0 writes.
"""

import json
import math
import os

import jax
import numpy as np


def _plain(value):
    if isinstance(value, (np.generic, np.ndarray)) and np.ndim(value) == 0:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN; None marks "undefined" (e.g. IoU of an absent class)
    return value


class MetricWriter:
    def __init__(self, workdir: str, enabled: bool | None = None):
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self.workdir = workdir
        self._tb = None
        if self.enabled:
            os.makedirs(workdir, exist_ok=True)
            from tensorboardX import SummaryWriter  # imported lazily: only the writer needs it

            self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))
            self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a", encoding="utf-8")

    def write_scalars(self, step: int, scalars: dict, split: str = "train"):
        if not self.enabled:
            return
        record = {"step": int(step), "split": split}
        for name, value in scalars.items():
            value = _plain(value)
            record[name] = value
            if value is not None and isinstance(value, (int, float)):
                self._tb.add_scalar(f"{split}/{name}", value, int(step))
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()

    def write_images(self, step: int, images: dict, split: str = "val"):
        """images: name -> uint8 [H, W, 3]."""
        if not self.enabled:
            return
        for name, image in images.items():
            self._tb.add_image(f"{split}/{name}", np.asarray(image, np.uint8), int(step),
                               dataformats="HWC")

    def write_curve(self, step: int, name: str, xs, ys, split: str = "val"):
        """A curve (e.g. trimap accuracy vs band width) as a TensorBoard scalar series by x."""
        if not self.enabled:
            return
        for x, y in zip(xs, ys):
            if y is not None and math.isfinite(float(y)):
                self._tb.add_scalar(f"{split}/{name}@step{int(step)}", float(y), int(x))

    def flush(self):
        if self.enabled:
            self._tb.flush()
            self._jsonl.flush()

    def close(self):
        if self.enabled:
            self._tb.close()
            self._jsonl.close()
            self.enabled = False


def read_metrics(workdir: str):
    """All records of <workdir>/metrics.jsonl as a list of dicts."""
    path = os.path.join(workdir, "metrics.jsonl")
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]
