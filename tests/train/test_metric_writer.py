"""MetricWriter: replayed steps are dropped on resume, readers see one record per step, and the
TensorBoard event file is valid TFRecord framing with the purge marker."""

import glob
import json
import logging
import os
import struct

import numpy as np
from tensorboardX.proto.event_pb2 import Event, SessionLog
from tensorboardX.record_writer import masked_crc32c

from deeplab_jax.train.metric_writer import MetricWriter, read_metrics


def read_events(path):
    """Every Event of a TensorBoard file, checking each record's CRCs."""
    with open(path, "rb") as handle:
        return decode_events(handle.read())


def decode_events(data: bytes):
    events, offset = [], 0
    while offset < len(data):
        header = data[offset:offset + 8]
        (length,) = struct.unpack("<Q", header)
        assert struct.unpack("<I", data[offset + 8:offset + 12])[0] == masked_crc32c(header)
        body = data[offset + 12:offset + 12 + length]
        assert struct.unpack("<I", data[offset + 12 + length:offset + 16 + length])[0] == (
            masked_crc32c(body))
        events.append(Event.FromString(body))
        offset += 16 + length
    return events


def test_resume_drops_replayed_records_and_purges_tensorboard(tmp_path):
    workdir = str(tmp_path)
    with MetricWriter(workdir, enabled=True) as writer:
        for step in (2, 4, 6):
            writer.write_scalars(step, {"loss": 1.0 / step})
        writer.write_scalars(3, {"miou": 0.5}, split="val")
        writer.write_images(3, {"overlay": np.zeros((4, 4, 3), np.uint8)})
    # Killed after step 6, resumed from the checkpoint of step 4: steps 5 and 6 are replayed.
    with MetricWriter(workdir, enabled=True, resume_step=4) as writer:
        writer.write_scalars(6, {"loss": 0.125})
    lines = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert [(r["split"], r["step"]) for r in lines] == [
        ("train", 2), ("train", 4), ("val", 3), ("train", 6)]
    assert lines[-1]["loss"] == 0.125
    files = sorted(glob.glob(os.path.join(workdir, "tensorboard", "*tfevents*")))
    assert len(files) == 2
    resumed = read_events(files[-1])
    assert resumed[0].file_version == "brain.Event:2"
    assert resumed[1].session_log.status == SessionLog.START and resumed[1].step == 5
    first = read_events(files[0])
    tags = {value.tag for event in first for value in event.summary.value}
    assert {"train/loss", "val/miou", "val/overlay"} <= tags


def test_read_metrics_keeps_the_last_record_per_split_and_step(tmp_path):
    records = [{"step": 2, "split": "train", "loss": 3.0}, {"step": 3, "split": "val", "miou": 0.1},
               {"step": 2, "split": "train", "loss": 2.0}]
    text = "".join(json.dumps(r) + "\n" for r in records) + '{"step": 4, "spl'  # cut short
    (tmp_path / "metrics.jsonl").write_text(text)
    assert read_metrics(str(tmp_path)) == [records[2], records[1]]


def test_curve_is_a_series_by_x_under_a_valid_tag(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    with MetricWriter(str(tmp_path), enabled=True) as writer:
        writer.write_curve(500, "trimap_accuracy", [2, 4, 8], [0.7, 0.8, float("nan")])
    (path,) = glob.glob(os.path.join(str(tmp_path), "tensorboard", "*tfevents*"))
    points = [(event.step, value.tag, round(value.simple_value, 6))
              for event in read_events(path) for value in event.summary.value]
    assert points == [(2, "val/trimap_accuracy_step500", 0.7),
                      (4, "val/trimap_accuracy_step500", 0.8)]  # NaN widths are left out
    # The tag needed no renaming (tensorboardX logs a line per value it renames).
    assert "illegal" not in caplog.text
