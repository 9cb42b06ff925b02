"""A reader of TensorFlow's checkpoint format (tensor bundles, V2) in numpy, without TensorFlow.

A checkpoint `PREFIX` is `PREFIX.index` plus `PREFIX.data-SSSSS-of-NNNNN` shards. The index is a
LevelDB-format sorted table (TF's `tensorflow/core/lib/io/table`): data blocks of prefix-compressed
(key, value) entries with restart points, each followed by a 1-byte compression type (0 none,
1 snappy) and a CRC; an index block of block handles; a 48-byte footer (metaindex and index
handles, magic 0xdb4775248b80fb57). Key "" holds a BundleHeaderProto (num_shards = 1,
endianness = 2); every other key is a tensor name whose value is a BundleEntryProto (dtype = 1,
shape = 2 (TensorShapeProto: dim = 2 (size = 1)), shard_id = 3, offset = 4, size = 5); the tensor
is `size` raw little-endian bytes at `offset` of its shard.

Reading without TensorFlow keeps TF out of the importing process (TF and PyTorch/triton crash when
TF is imported first in one process) and makes TF unnecessary for import. Sliced (partitioned)
tensors and the V1 format are not supported; `tf_import` then falls back to TF's own reader.
"""

import os
import struct

import numpy as np

from deeplab_jax.weights.caffe_proto import FIXED32, LENGTH, VARINT, WireReader
from deeplab_jax.weights.mapping import WeightImportError

TABLE_MAGIC = 0xDB4775248B80FB57
FOOTER_SIZE = 48
# tensorflow/core/framework/types.proto DataType -> numpy (little-endian).
DTYPES = {1: "<f4", 2: "<f8", 3: "<i4", 4: "u1", 5: "<i2", 6: "i1", 9: "<i8", 10: "?",
          14: "bfloat16", 17: "<u2", 19: "<f2", 22: "<u4", 23: "<u8"}


class BundleFormatError(WeightImportError):
    """A checkpoint this reader cannot decode (malformed, or a feature it does not support)."""


def snappy_decompress(data):
    """Decompresses one raw snappy block (the format TF's table writer uses)."""
    reader = WireReader(data, 0, len(data), "<snappy block>", BundleFormatError)
    length = reader.varint()
    out = bytearray()
    pos = reader.pos
    while pos < len(data):
        tag = data[pos]
        pos += 1
        kind = tag & 3
        if kind == 0:  # literal
            size = tag >> 2
            if size >= 60:
                extra = size - 59
                size = int.from_bytes(data[pos:pos + extra], "little")
                pos += extra
            size += 1
            out += data[pos:pos + size]
            pos += size
            continue
        if kind == 1:
            size, offset = ((tag >> 2) & 7) + 4, ((tag >> 5) << 8) | data[pos]
            pos += 1
        else:
            width = 2 if kind == 2 else 4
            size, offset = (tag >> 2) + 1, int.from_bytes(data[pos:pos + width], "little")
            pos += width
        if offset == 0 or offset > len(out):
            raise BundleFormatError("corrupt snappy block (copy before the start)")
        start = len(out) - offset
        for i in range(size):  # copies may overlap their own output
            out.append(out[start + i])
    if len(out) != length:
        raise BundleFormatError(f"corrupt snappy block ({len(out)} bytes, expected {length})")
    return bytes(out)


def _block_handle(buf, pos, source):
    reader = WireReader(buf, pos, len(buf), source, BundleFormatError)
    offset, size = reader.varint(), reader.varint()
    return offset, size


def _read_block(table, handle, source):
    offset, size = handle
    if offset + size + 5 > len(table):
        raise BundleFormatError(f"{source}: block at {offset} runs past the end of the file")
    contents = table[offset:offset + size]
    if table[offset + size] == 1:
        contents = snappy_decompress(contents)
    elif table[offset + size] != 0:
        raise BundleFormatError(f"{source}: unknown block compression {table[offset + size]}")
    return contents


def _block_entries(block, source):
    """(key, value) pairs of one table block."""
    if len(block) < 4:
        raise BundleFormatError(f"{source}: table block too short")
    (num_restarts,) = struct.unpack_from("<I", block, len(block) - 4)
    end = len(block) - 4 * (num_restarts + 1)
    reader = WireReader(block, 0, max(end, 0), source, BundleFormatError)
    key = b""
    while reader.pos < reader.end:
        shared, non_shared, value_size = reader.varint(), reader.varint(), reader.varint()
        start = reader.pos
        if start + non_shared + value_size > end:
            raise BundleFormatError(f"{source}: table entry runs past its block")
        key = key[:shared] + block[start:start + non_shared]
        value = block[start + non_shared:start + non_shared + value_size]
        reader.pos = start + non_shared + value_size
        yield key, value


def read_table(path):
    """All (key, value) entries of a LevelDB-format table file (TF's checkpoint index)."""
    with open(path, "rb") as f:
        table = f.read()
    if len(table) < FOOTER_SIZE or int.from_bytes(table[-8:], "little") != TABLE_MAGIC:
        raise BundleFormatError(f"{path}: not a TF checkpoint index (no table footer)")
    footer = table[-FOOTER_SIZE:]
    reader = WireReader(footer, 0, FOOTER_SIZE - 8, path, BundleFormatError)
    reader.varint(), reader.varint()  # metaindex handle: filters only
    index_handle = (reader.varint(), reader.varint())
    entries = []
    for _, handle in _block_entries(_read_block(table, index_handle, path), path):
        block = _read_block(table, _block_handle(handle, 0, path), path)
        entries.extend(_block_entries(block, path))
    return entries


def _parse_entry(value, name, source):
    entry = {"dtype": 0, "shape": [], "shard_id": 0, "offset": 0, "size": 0}
    for field, wire, item in WireReader(value, 0, len(value), source, BundleFormatError).fields():
        if field in (1, 3, 4, 5) and wire == VARINT:
            entry[{1: "dtype", 3: "shard_id", 4: "offset", 5: "size"}[field]] = item
        elif field == 2 and wire == LENGTH:
            for sub, sub_wire, dim in WireReader(value, *item, source, BundleFormatError).fields():
                if sub == 2 and sub_wire == LENGTH:
                    for f, w, size in WireReader(value, *dim, source, BundleFormatError).fields():
                        if f == 1 and w == VARINT:
                            entry["shape"].append(size)
        elif field == 7 and wire == LENGTH:
            raise BundleFormatError(f"{source}: tensor {name!r} is sliced (partitioned)")
        elif field == 6 and wire != FIXED32:
            raise BundleFormatError(f"{source}: bad crc32c field of {name!r}")
    return entry


def read_bundle(prefix):
    """{tensor name: numpy array} of the TF V2 checkpoint at `prefix` (or its .index file)."""
    prefix = os.fspath(prefix)
    if prefix.endswith(".index"):
        prefix = prefix[: -len(".index")]
    index = prefix + ".index"
    if not os.path.isfile(index):
        raise BundleFormatError(f"{prefix}: no {os.path.basename(index)} (not a V2 checkpoint)")
    entries = read_table(index)
    header = dict(entries).get(b"", b"")
    num_shards = 1
    for field, wire, value in WireReader(header, 0, len(header), index, BundleFormatError).fields():
        if field == 1 and wire == VARINT:
            num_shards = value
        elif field == 2 and wire == VARINT and value != 0:
            raise BundleFormatError(f"{prefix}: big-endian checkpoints are not supported")
    shards = {}
    tensors = {}
    for key, value in entries:
        if key == b"":
            continue
        name = key.decode("utf-8", errors="replace")
        entry = _parse_entry(value, name, index)
        dtype = DTYPES.get(entry["dtype"])
        if dtype is None:
            continue  # strings and other non-numeric entries: not weights
        shard = entry["shard_id"]
        if shard not in shards:
            data_path = f"{prefix}.data-{shard:05d}-of-{num_shards:05d}"
            try:
                with open(data_path, "rb") as f:
                    shards[shard] = f.read()
            except OSError as error:
                raise BundleFormatError(
                    f"{prefix}: cannot read shard {data_path}: {error}") from None
        data, start, size = shards[shard], entry["offset"], entry["size"]
        if start + size > len(data):
            raise BundleFormatError(f"{prefix}: tensor {name!r} runs past the end of its shard "
                                    "(truncated file?)")
        if dtype == "bfloat16":
            raw = np.frombuffer(data, "<u2", size // 2, start).astype(np.uint32) << 16
            array = raw.view(np.float32)
        else:
            array = np.frombuffer(data, dtype, size // np.dtype(dtype).itemsize, start)
        if array.size != int(np.prod(entry["shape"], dtype=np.int64)):
            raise BundleFormatError(f"{prefix}: tensor {name!r} has {array.size} values for shape "
                                    f"{tuple(entry['shape'])}")
        tensors[name] = array.reshape(entry["shape"]).copy()
    return tensors
