"""Where training and evaluation results go: TensorBoard event files and a metrics.jsonl.

TensorBoard files are built with tensorboardX (no TensorFlow needed) and written through epath
(`events.py`); every scalar also goes to <workdir>/metrics.jsonl, one JSON object per line
({"step": ..., "split": ..., name: value}), which is what scripts and tests read. Only process 0
writes. The workdir may be local or a URL (gs://...).

Records are kept in memory until `flush` (the training loop flushes at every log, evaluation and
checkpoint; `close` flushes too). metrics.jsonl is then appended to on a local disk, and on an
object store (which has no append) rewritten whole: it is small (a record per log interval).

Resuming: a run restored at step N passes `resume_step=N`. The records of steps > N, written by
the interrupted run and about to be replayed, are dropped from metrics.jsonl (rewritten
atomically) and TensorBoard is told to purge its events of steps > N, so readers see one record
per step. `read_metrics` also keeps only the last record of each (split, step).

A full disk raises one `storage.DiskFullError` naming the file.
"""

import json
import math

import jax
import numpy as np
from absl import logging
from tensorboardX import summary as tb_summary
from tensorboardX.proto.event_pb2 import Event

from deeplab_jax import storage
from deeplab_jax.train.events import EventFileWriter

METRICS_FILE = "metrics.jsonl"


def _plain(value):
    if isinstance(value, (np.generic, np.ndarray)) and np.ndim(value) == 0:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN; None marks "undefined" (e.g. IoU of an absent class)
    return value


def _parse_lines(text: str, path) -> list[dict]:
    records = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut short by a killed process
            logging.warning("%s line %d is not JSON (cut short?); ignored", path, number)
    return records


def _encode(records) -> str:
    return "".join(json.dumps(record) + "\n" for record in records)


class MetricWriter:
    def __init__(self, workdir, enabled: bool | None = None, resume_step: int | None = None):
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self.workdir = storage.as_path(workdir)
        self.path = self.workdir / METRICS_FILE
        self._remote = storage.is_url(self.workdir)
        self._pending = []
        self._failed = False
        self._content = ""  # object stores: what metrics.jsonl holds
        self._tb = None
        if self.enabled:
            self.workdir.mkdir(parents=True, exist_ok=True)
            self._start(resume_step)
            purge = None if resume_step is None else int(resume_step) + 1
            self._tb = EventFileWriter(self.workdir / "tensorboard", purge_step=purge)

    def _start(self, resume_step):
        if not self.path.exists():
            return
        if resume_step is None and not self._remote:
            return  # plain appends
        records = _parse_lines(self.path.read_text(), self.path)
        if resume_step is not None:
            kept = [r for r in records if int(r.get("step", 0)) <= resume_step]
            if len(kept) != len(records):
                logging.info("%s: dropped %d records after step %d (to be replayed)", self.path,
                             len(records) - len(kept), resume_step)
                self._guarded(storage.write_atomic, self.path, _encode(kept))
            records = kept
        self._content = _encode(records)

    def _guarded(self, write, *args):
        try:
            write(*args)
        except OSError as error:
            self._failed = True  # reported once; close() does not try again
            self._pending = []
            storage.raise_if_disk_full(error, "metrics", self.path)
            raise

    def write_scalars(self, step: int, scalars: dict, split: str = "train"):
        if not self.enabled:
            return
        record = {"step": int(step), "split": split}
        values = []
        for name, value in scalars.items():
            value = _plain(value)
            record[name] = value
            if value is not None and isinstance(value, (int, float)):
                values.append(tb_summary.scalar(f"{split}/{name}", value).value[0])
        self._pending.append(record)
        self._tb.add(Event(step=int(step), summary=tb_summary.Summary(value=values)))

    def write_images(self, step: int, images: dict, split: str = "val"):
        """images: name -> uint8 [H, W, 3]."""
        if not self.enabled:
            return
        for name, image in images.items():
            self._tb.add(Event(step=int(step), summary=tb_summary.image(
                f"{split}/{name}", np.asarray(image, np.uint8), dataformats="HWC")))

    def write_curve(self, step: int, name: str, xs, ys, split: str = "val"):
        """A curve (e.g. trimap accuracy vs band width) as a TensorBoard scalar series by x, one
        series per evaluation step: '<split>/<name>_step<step>' (TensorBoard tags allow only
        letters, digits and ._/-)."""
        if not self.enabled:
            return
        for x, y in zip(xs, ys):
            if y is not None and math.isfinite(float(y)):
                self._tb.add(Event(step=int(x), summary=tb_summary.scalar(
                    f"{split}/{name}_step{int(step)}", float(y))))

    def flush(self):
        if not self.enabled or self._failed:
            return
        if self._pending:
            text = _encode(self._pending)
            if self._remote:
                self._guarded(self.path.write_text, self._content + text)
                self._content += text
            else:
                self._guarded(self._append, text)
            self._pending = []
        self._tb.flush()

    def _append(self, text):
        with self.path.open("a") as handle:
            handle.write(text)

    def close(self):
        if not self.enabled:
            return
        try:
            self.flush()
        finally:
            self.enabled = False
            self._pending = []
            if not self._failed:
                self._tb.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


def read_metrics(workdir) -> list[dict]:
    """The records of <workdir>/metrics.jsonl, one per (split, step) (the last written), by step."""
    path = storage.as_path(workdir) / METRICS_FILE
    latest = {}
    for record in _parse_lines(path.read_text(), path):
        key = (record.get("split"), record.get("step"))
        latest.pop(key, None)
        latest[key] = record
    return sorted(latest.values(), key=lambda r: r.get("step", 0))
