"""A minimal reader and writer of Caffe's .caffemodel files (protobuf wire format), without Caffe.

A .caffemodel is a serialized `caffe.NetParameter`. Only what weight import needs is decoded; all
other fields are skipped by their wire type. Field numbers (Caffe's src/caffe/proto/caffe.proto):

  NetParameter      name = 1, layers = 2 (V1LayerParameter, legacy), layer = 100 (LayerParameter)
  LayerParameter    name = 1, type = 2 (string, e.g. "Convolution"), blobs = 7
  V1LayerParameter  name = 4, type = 5 (enum LayerType, e.g. CONVOLUTION = 4), blobs = 6
  BlobProto         num = 1, channels = 2, height = 3, width = 4 (legacy 4-d shape),
                    data = 5 (packed float), shape = 7 (BlobShape), double_data = 8 (packed double)
  BlobShape         dim = 1 (packed int64)

Both layouts occur in the released DeepLab models: the DeepLab-v1 release (DeepLab-LargeFOV, VGG-16)
was written by a Caffe of early 2015 whose prototxts use the legacy `layers { type: CONVOLUTION }`
form, so its weights sit in field 2; the DeepLab-v2 release (ResNet-101, deeplab-public-ver2) uses
the current `layer { type: "Convolution" }` form (field 100), as kazuto1011's converter reads it.

Blobs come back as float32 numpy arrays in the blob's own shape (the legacy (num, channels, height,
width) form for old files). Truncated or malformed input raises `CaffeFormatError` naming the file
and the byte offset.
"""

import dataclasses
import os

import numpy as np

from deeplab_jax.weights.mapping import WeightImportError

# Wire types.
VARINT, FIXED64, LENGTH, FIXED32 = 0, 1, 2, 5
# The V1 LayerType enum values weight import cares about (caffe.proto V1LayerParameter.LayerType).
V1_LAYER_TYPES = {
    4: "Convolution", 14: "InnerProduct", 17: "Pooling", 18: "ReLU", 6: "Dropout",
    39: "Deconvolution", 3: "Concat", 25: "Eltwise", 5: "Data", 21: "SoftmaxWithLoss",
}
V1_TYPE_NUMBERS = {name: number for number, name in V1_LAYER_TYPES.items()}


class CaffeFormatError(WeightImportError):
    """A file that is not a well-formed serialized caffe.NetParameter."""


@dataclasses.dataclass
class CaffeLayer:
    """One layer of a .caffemodel: its name, type and parameter blobs (float32 arrays)."""

    name: str
    type: str
    blobs: list
    legacy: bool = False  # from NetParameter.layers (V1LayerParameter)
    bn_eps: float | None = None  # BatchNormParameter.eps when the file sets it (Caffe default 1e-5)


class WireReader:
    """Iterates the fields of one message inside `buf[start:end]`."""

    def __init__(self, buf, start, end, source, error=None):
        self.buf, self.pos, self.end, self.source = buf, start, end, source
        self.error = error

    def _fail(self, what):
        if self.error is not None:  # another protobuf-based format (tf_bundle)
            raise self.error(f"{self.source}: malformed protobuf at byte {self.pos}: {what}")
        raise CaffeFormatError(
            f"{self.source}: malformed or truncated .caffemodel at byte {self.pos}: {what} "
            "(is it a complete binary .caffemodel, not a .prototxt or a partial download?)"
        )

    def varint(self):
        result, shift, buf = 0, 0, self.buf
        while True:
            if self.pos >= self.end:
                self._fail("varint runs past the end of its message")
            byte = buf[self.pos]
            self.pos += 1
            result |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return result
            shift += 7
            if shift > 63:
                self._fail("varint longer than 10 bytes")

    def fields(self):
        """Yields (field number, wire type, value); LENGTH values are (start, end) offsets."""
        while self.pos < self.end:
            key = self.varint()
            field, wire = key >> 3, key & 7
            if field == 0:
                self._fail("field number 0")
            if wire == VARINT:
                yield field, wire, self.varint()
            elif wire == LENGTH:
                length = self.varint()
                start = self.pos
                if start + length > self.end:
                    self._fail(f"field {field} of {length} bytes runs past the end")
                self.pos += length
                yield field, wire, (start, start + length)
            elif wire == FIXED32:
                if self.pos + 4 > self.end:
                    self._fail("fixed32 runs past the end")
                self.pos += 4
                yield field, wire, (self.pos - 4, self.pos)
            elif wire == FIXED64:
                if self.pos + 8 > self.end:
                    self._fail("fixed64 runs past the end")
                self.pos += 8
                yield field, wire, (self.pos - 8, self.pos)
            else:
                self._fail(f"unsupported wire type {wire} (field {field})")


def _text(buf, span):
    return bytes(buf[span[0]:span[1]]).decode("utf-8", errors="replace")


def _packed_ints(buf, span, source):
    reader = WireReader(buf, span[0], span[1], source)
    values = []
    while reader.pos < reader.end:
        values.append(reader.varint())
    return values


def _parse_blob(buf, start, end, source, where):
    legacy_dims = {}
    shape = None
    chunks = []  # float32 arrays in file order
    for field, wire, value in WireReader(buf, start, end, source).fields():
        if field in (1, 2, 3, 4) and wire == VARINT:
            legacy_dims[field] = value
        elif field == 7 and wire == LENGTH:
            shape = []
            for sub_field, sub_wire, sub_value in WireReader(buf, *value, source).fields():
                if sub_field != 1:
                    continue
                if sub_wire == LENGTH:
                    shape.extend(_packed_ints(buf, sub_value, source))
                elif sub_wire == VARINT:
                    shape.append(sub_value)
        elif field in (5, 8):
            dtype, size = ("<f4", 4) if field == 5 else ("<f8", 8)
            lo, hi = value if wire in (LENGTH, FIXED32, FIXED64) else (0, 0)
            if (hi - lo) % size or (wire == FIXED32 and size != 4) or (
                    wire == FIXED64 and size != 8) or wire == VARINT:
                raise CaffeFormatError(
                    f"{source}: {where}: bad encoding of blob data field {field}")
            chunks.append(np.frombuffer(buf, dtype, (hi - lo) // size, lo).astype(np.float32))
    data = np.concatenate(chunks) if len(chunks) > 1 else (
        chunks[0] if chunks else np.zeros(0, np.float32))
    if shape is None:
        if legacy_dims:
            shape = [legacy_dims.get(i, 0) for i in (1, 2, 3, 4)]
        else:
            shape = [data.size]
    if int(np.prod(shape, dtype=np.int64)) != data.size:
        raise CaffeFormatError(
            f"{source}: {where}: blob shape {tuple(shape)} needs {int(np.prod(shape))} values but "
            f"the file holds {data.size} (truncated or corrupt file?)"
        )
    return data.reshape(shape)


def _parse_layer(buf, start, end, source, legacy):
    name_field, type_field, blobs_field = (4, 5, 6) if legacy else (1, 2, 7)
    name, layer_type, blob_spans, bn_eps = "", "", [], None
    for field, wire, value in WireReader(buf, start, end, source).fields():
        if field == name_field and wire == LENGTH:
            name = _text(buf, value)
        elif field == 139 and wire == LENGTH and not legacy:  # batch_norm_param
            for sub_field, sub_wire, sub_value in WireReader(buf, *value, source).fields():
                if sub_field == 3 and sub_wire == FIXED32:  # eps
                    bn_eps = float(np.frombuffer(buf, "<f4", 1, sub_value[0])[0])
        elif field == type_field:
            if legacy and wire == VARINT:
                layer_type = V1_LAYER_TYPES.get(value, f"V1LayerType{value}")
            elif not legacy and wire == LENGTH:
                layer_type = _text(buf, value)
        elif field == blobs_field and wire == LENGTH:
            blob_spans.append(value)
    blobs = [
        _parse_blob(buf, lo, hi, source, f"layer {name!r} blob {i}")
        for i, (lo, hi) in enumerate(blob_spans)
    ]
    return CaffeLayer(name=name, type=layer_type, blobs=blobs, legacy=legacy, bn_eps=bn_eps)


def parse_net(buf, source="<bytes>"):
    """Layers of a serialized NetParameter (bytes), in file order, both layouts."""
    buf = bytes(buf)
    layers = []
    for field, wire, value in WireReader(buf, 0, len(buf), source).fields():
        if field in (2, 100) and wire == LENGTH:
            layers.append(_parse_layer(buf, *value, source, legacy=field == 2))
    if not layers:
        raise CaffeFormatError(
            f"{source}: no layers found: not a serialized caffe.NetParameter (.caffemodel)"
        )
    return layers


def read_caffemodel(path):
    """Layers of the .caffemodel at `path` (see `CaffeLayer`)."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            buf = f.read()
    except OSError as error:
        raise CaffeFormatError(f"cannot read Caffe model {path}: {error}") from None
    if not buf:
        raise CaffeFormatError(f"{path}: the file is empty")
    return parse_net(buf, source=path)


# ---------------------------------------------------------------------------------------- writer


def _varint(value):
    if value < 0:
        value += 1 << 64  # two's complement, as protobuf encodes negative int32/int64
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _tag(field, wire):
    return _varint((field << 3) | wire)


def _length_field(field, payload):
    return _tag(field, LENGTH) + _varint(len(payload)) + payload


def _varint_field(field, value):
    return _tag(field, VARINT) + _varint(value)


def serialize_blob(array, legacy=False):
    """A BlobProto: packed float32 data with `shape` (or num/channels/height/width if legacy)."""
    array = np.asarray(array, np.float32)
    out = b""
    if legacy:
        if array.ndim > 4:
            raise ValueError(f"a legacy blob has at most 4 dims, got shape {array.shape}")
        dims = (1,) * (4 - array.ndim) + array.shape
        out += b"".join(_varint_field(i + 1, d) for i, d in enumerate(dims))
    else:
        packed = b"".join(_varint(d) for d in array.shape)
        out += _length_field(7, _length_field(1, packed))
    out += _length_field(5, array.astype("<f4").tobytes())
    return out


def serialize_net(layers, legacy=False, name="net"):
    """A NetParameter holding `layers` ((name, type, [arrays]) or CaffeLayer), either layout."""
    parts = [_length_field(1, name.encode())]  # joined once: += on bytes would be quadratic
    for layer in layers:
        bn_eps = layer.bn_eps if isinstance(layer, CaffeLayer) else None
        if isinstance(layer, CaffeLayer):
            layer = (layer.name, layer.type, layer.blobs)
        layer_name, layer_type, blobs = layer
        if legacy:
            if layer_type not in V1_TYPE_NUMBERS:
                raise ValueError(
                    f"no V1 LayerType for {layer_type!r}; known {tuple(V1_TYPE_NUMBERS)}")
            body = _length_field(4, layer_name.encode()) + _varint_field(
                5, V1_TYPE_NUMBERS[layer_type])
            body += b"".join(_length_field(6, serialize_blob(b, legacy=True)) for b in blobs)
            parts.append(_length_field(2, body))
        else:
            body = _length_field(1, layer_name.encode()) + _length_field(2, layer_type.encode())
            body += b"".join(_length_field(7, serialize_blob(b)) for b in blobs)
            if bn_eps is not None:
                eps = _tag(3, FIXED32) + np.asarray(bn_eps, "<f4").tobytes()
                body += _length_field(139, eps)
            parts.append(_length_field(100, body))
    return b"".join(parts)


def write_caffemodel(path, layers, legacy=False, name="net"):
    """Writes `layers` as a .caffemodel (for tests and for round trips)."""
    with open(path, "wb") as f:
        f.write(serialize_net(layers, legacy=legacy, name=name))
