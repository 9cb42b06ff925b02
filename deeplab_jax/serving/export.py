"""Serialized inference: `jax.export` of image -> label map, reloadable without the model code.

The exported function is the whole of DeepLab inference (DeepLab-v2 §3): RGB uint8 images (the
preprocessing, e.g. Caffe's BGR mean subtraction, is inside the model) -> logits at the output
stride -> bilinear upsampling to the input size (§3.1) -> optionally the dense CRF's mean-field
iterations (§3.3, the jitted `crf.meanfield`) -> per-pixel argmax. The variables are baked in as
constants, so the artifact is self-contained: StableHLO plus its calling convention, serialized
by `jax.export` (stable across JAX versions within its compatibility window). The batch dimension
is symbolic ('b'), so one artifact serves any batch size; height and width are fixed at export time
(the upsampling matrices and the pooling arithmetic depend on them), so resize or pad images to
`input_size` first.

    exported = export_inference(model, variables, "deeplab.jaxexport", input_size=(513, 513))
    infer = load_inference("deeplab.jaxexport")        # in any process; no deeplab_jax needed
    labels_BxHxW = infer(images_BxHxWx3_uint8)         # int32 class ids

`platforms` defaults to ('cpu', 'cuda'): the artifact then runs on either (lowered for both on any
machine). To serve from TensorFlow, `jax2tf` can wrap the same function (the `export` extra).
"""

import os

import jax
import jax.numpy as jnp
import numpy as np

from deeplab_jax import storage
from deeplab_jax.crf import meanfield
from deeplab_jax.finite import check_finite
from deeplab_jax.inference import prepare_if_unfolded
from deeplab_jax.losses import infer_output_stride
from deeplab_jax.models.resize import upsample_logits

DEFAULT_PLATFORMS = ("cpu", "cuda")


def _check_input_size(input_size):
    if (len(input_size) != 2 or any(isinstance(s, bool) or not isinstance(s, (int, np.integer))
                                    or s < 1 for s in input_size)):
        raise ValueError(
            f"input_size must be two positive ints (height, width), got {input_size!r}")
    return int(input_size[0]), int(input_size[1])


def make_inference_fn(model, variables, input_size, crf=None):
    """images (B, H, W, 3) uint8 RGB -> labels (B, H, W) int32, with `variables` closed over.

    crf: None, or a `deeplab_jax.crf.CRFParams` to refine the softmax probabilities with the
    mean-field dense CRF before the argmax. Raises `finite.NonFiniteError` if any variable holds
    NaN or inf.
    """
    height, width = _check_input_size(input_size)
    # NaN weights (a diverged run) export and run without error but label every pixel 0.
    check_finite(variables, "the variables to export")
    # BatchNorm folded into the convolutions: a faster program and a smaller artifact.
    model, variables = prepare_if_unfolded(model, variables)
    constants = jax.tree.map(jnp.asarray, variables)
    if crf is not None:
        crf.validate()

    def infer(images_BxHxWx3):
        logits = model.apply(constants, images_BxHxWx3.astype(jnp.float32), train=False)
        stride = infer_output_stride(height, logits.shape[1])
        logits_BxHxWxK = upsample_logits(logits, (height, width), output_stride=stride)
        if crf is not None:
            probs = jax.nn.softmax(logits_BxHxWxK, axis=-1)
            capacity = meanfield.default_capacity(height, width)
            logits_BxHxWxK, _ = meanfield.meanfield(images_BxHxWx3, probs, crf, capacity)
        return jnp.argmax(logits_BxHxWxK, axis=-1).astype(jnp.int32)

    return infer


def export_inference(model, variables, path, input_size, crf=None, platforms=DEFAULT_PLATFORMS):
    """Exports the inference function (symbolic batch, fixed `input_size`) and writes it to `path`.

    Returns the `jax.export.Exported`. `platforms`: the backends the artifact can run on.
    """
    height, width = _check_input_size(input_size)
    infer = make_inference_fn(model, variables, (height, width), crf=crf)
    (batch,) = jax.export.symbolic_shape("b")
    spec = jax.ShapeDtypeStruct((batch, height, width, 3), jnp.uint8)
    exported = jax.export.export(jax.jit(infer), platforms=tuple(platforms))(spec)
    path = storage.as_path(path)  # local or gs://
    path.parent.mkdir(parents=True, exist_ok=True)
    storage.write_atomic(path, bytes(exported.serialize()))
    return exported


def load_exported(path):
    """The `jax.export.Exported` stored at `path`."""
    path = storage.as_path(path)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise FileNotFoundError(f"cannot read exported model {path}: {error}") from None
    try:
        return jax.export.deserialize(bytearray(data))
    except Exception as error:  # flatbuffer / version errors
        raise ValueError(f"{path}: not a jax.export artifact ({error})") from None


def load_inference(path):
    """A callable images (B, H, W, 3) uint8 -> labels (B, H, W) int32 from an exported file."""
    exported = load_exported(path)
    (spec,) = exported.in_avals
    height, width = spec.shape[1], spec.shape[2]

    def infer(images_BxHxWx3):
        images = jnp.asarray(images_BxHxWx3)
        if images.ndim != 4 or images.shape[1:] != (height, width, 3):
            raise ValueError(
                f"{path} was exported for images of shape (B, {height}, {width}, 3), got "
                f"{images.shape}; resize or pad the images to {height}x{width}")
        if images.dtype != jnp.uint8:
            raise ValueError(f"{path} takes uint8 RGB images, got dtype {images.dtype}")
        return exported.call(images)

    infer.exported = exported
    infer.input_size = (height, width)
    return infer


def export_saved_model(model, variables, directory, input_size, crf=None):
    """A TF SavedModel (serving signature `serving_default`: uint8 images -> int32 labels).

    Wraps the same function through `jax.experimental.jax2tf` (StableHLO inside an XlaCallModule
    op, symbolic batch); needs TensorFlow (the `export` extra). For TF Serving / TF Lite users.
    """
    try:
        import tensorflow as tf
        from jax.experimental import jax2tf
    except ImportError:
        raise ImportError("a TF SavedModel needs TensorFlow: pip install 'deeplab-jax[export]'")
    height, width = _check_input_size(input_size)
    infer = make_inference_fn(model, variables, (height, width), crf=crf)
    converted = jax2tf.convert(infer, polymorphic_shapes=[f"(b, {height}, {width}, 3)"])
    module = tf.Module()
    module.serve = tf.function(
        lambda images: {"labels": converted(images)}, autograph=False,
        input_signature=[tf.TensorSpec([None, height, width, 3], tf.uint8, name="images")])
    tf.saved_model.save(module, os.fspath(directory),
                        signatures={"serving_default": module.serve})
    return directory
