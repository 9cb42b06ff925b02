"""TensorBoard event files written through `etils.epath` (local directories and gs://).

tensorboardX's own writer opens local files (its 'gs://' path needs google-cloud-storage and
re-uploads the whole file at every flush, from a background thread that fails noisily at
interpreter shutdown). Here tensorboardX builds the summaries and this writer keeps the encoded
records in memory until `flush` (the training loop flushes at its log, evaluation and checkpoint
intervals), with no thread:
- local directory: appends the new records to the file;
- object store (no append): rewrites the current file with everything it holds, and starts a new
  part (`....0001`, ...) once a part passes `part_bytes`, so no upload exceeds that size and
  the total uploaded stays proportional to the log's size, not to its square.
TensorBoard reads every `*tfevents*` file of the directory. `purge_step` writes the same
SessionLog.START event as tensorboardX's `SummaryWriter(purge_step=...)`, which makes TensorBoard
drop the events of steps >= purge_step written by an earlier (interrupted) run.
"""

import itertools
import os
import socket
import struct
import time

from tensorboardX.proto.event_pb2 import Event, SessionLog
from tensorboardX.record_writer import masked_crc32c

from deeplab_jax import storage

PART_BYTES = 8 << 20
_WRITERS = itertools.count()  # two writers of one process in the same second get two files


def encode_record(data: bytes) -> bytes:
    """One TFRecord: length, its masked CRC32C, the data, its masked CRC32C."""
    header = struct.pack("<Q", len(data))
    return (header + struct.pack("<I", masked_crc32c(header)) + data
            + struct.pack("<I", masked_crc32c(data)))


class EventFileWriter:
    """Writes tensorboardX `Event`s to <directory>/events.out.tfevents.<time>.<host>.<pid>.<n>
    (.<part> after the first part)."""

    def __init__(self, directory, purge_step: int | None = None, part_bytes: int = PART_BYTES):
        self.directory = storage.as_path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._remote = storage.is_url(self.directory)
        self._stem = (f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}."
                      f"{os.getpid()}.{next(_WRITERS):03d}")
        self._part = 0
        self._part_bytes = part_bytes
        self._content = bytearray()  # object stores: the current part as uploaded so far
        self._pending = bytearray()
        self._closed = False
        self.add(Event(wall_time=time.time(), step=purge_step or 0, file_version="brain.Event:2"))
        if purge_step is not None:
            self.add(Event(wall_time=time.time(), step=purge_step,
                           session_log=SessionLog(status=SessionLog.START)))

    @property
    def path(self):
        return self.directory / (self._stem + (f".{self._part:04d}" if self._part else ""))

    def add(self, event: Event):
        if not event.wall_time:
            event.wall_time = time.time()
        self._pending += encode_record(event.SerializeToString())

    def flush(self):
        if not self._pending or self._closed:
            return
        path = self.path
        try:
            if self._remote:
                content = self._content + self._pending
                path.write_bytes(bytes(content))
                self._content = content
                if len(content) >= self._part_bytes:
                    self._part += 1
                    self._content = bytearray()
            else:
                with path.open("ab") as handle:
                    handle.write(bytes(self._pending))
        except OSError as error:
            self._closed = True  # a full disk fails once, not again at close
            storage.raise_if_disk_full(error, "TensorBoard events", path)
            raise
        self._pending = bytearray()

    def close(self):
        try:
            self.flush()
        finally:
            self._closed = True
