"""Serialising for the installed TensorFlow: the StableHLO version a jax2tf SavedModel carries.

A jax2tf SavedModel holds the model as a StableHLO portable artifact inside an XlaCallModule op.
`jax.export` serialises it for a StableHLO version about four weeks old (its
`StablehloCompatibilityRequirement.WEEK_4` target); a TensorFlow built against an older StableHLO
cannot read ops that version introduced. Measured: jax 0.12 writes StableHLO 1.18.0 (including
`vhlo.custom_call_v2`), which TensorFlow 2.21 (StableHLO 1.13.7) refuses ("failed to deserialize
portable artifact"); jax 0.10.2 writes 1.15.0, which it reads. StableHLO's compatibility
guarantees (openxla/stablehlo docs/compatibility.md) let a producer target any version back to its
minimum, so `stablehlo_for_tensorflow()` lowers the target to TensorFlow's version for the duration
of an export, or refuses with both versions named when jax cannot go back that far.

jax has no public option for the target version: the hook is jax's private `_module_to_bytecode`
(jax 0.10-0.12); without it the export runs unchanged and TensorFlow's own error stands.
"""

import contextlib

from absl import logging


class IncompatibleTensorFlowError(RuntimeError):
    """jax cannot serialise for a StableHLO version as old as the installed TensorFlow reads."""


def _version(text):
    return tuple(int(part) for part in str(text).split(".")[:3])


def tensorflow_stablehlo_version():
    """The newest StableHLO version the installed TensorFlow deserialises ('1.13.7'), or None
    when this TensorFlow does not say."""
    try:
        from tensorflow.compiler.mlir.stablehlo import stablehlo
    except ImportError as error:
        if "tensorflow" in str(error) and "stablehlo" not in str(error):
            raise ImportError("a TF SavedModel needs TensorFlow: pip install "
                              "'deeplab-jax[export]'") from None
        return None
    version = getattr(stablehlo, "get_current_version", None)
    return str(version()) if version is not None else None


def _jax_hooks():
    """(the _export module, stablehlo dialect bindings, jaxlib's _jax) or None when absent."""
    try:
        from jax._src.export import _export
        from jax._src.lib import _jax
        from jax._src.lib.mlir.dialects import hlo
    except ImportError:
        return None
    needed = (hasattr(_export, "_module_to_bytecode"), hasattr(hlo, "get_minimum_version"),
              hasattr(hlo, "get_version_from_compatibility_requirement"),
              hasattr(getattr(_jax, "mlir", None), "serialize_portable_artifact"))
    return (_export, hlo, _jax) if all(needed) else None


def target_version(consumer, default, minimum):
    """The StableHLO version to serialise for a consumer reading up to `consumer`: jax's
    `default` when the consumer reads it, else `consumer` itself if jax can go back that far."""
    if _version(default) <= _version(consumer):
        return default
    if _version(consumer) < _version(minimum):
        raise IncompatibleTensorFlowError(
            f"the installed TensorFlow reads StableHLO up to {consumer}, but this jax serialises "
            f"StableHLO {minimum} at the oldest (and {default} by default): install a newer "
            "tensorflow (or an older jax) to write a SavedModel")
    return consumer


@contextlib.contextmanager
def stablehlo_for_tensorflow(consumer=None):
    """Within the block, jax.export / jax2tf serialise StableHLO the installed TF can read."""
    hooks = _jax_hooks()
    if hooks is None:
        logging.warning("jax has no known hook for the StableHLO target version; exporting with "
                        "its default")
        yield None
        return
    export_module, hlo, jaxlib = hooks
    consumer = consumer or tensorflow_stablehlo_version()
    if consumer is None:
        logging.warning("this TensorFlow does not report its StableHLO version; exporting with "
                        "jax's default")
        yield None
        return
    default = hlo.get_version_from_compatibility_requirement(
        hlo.StablehloCompatibilityRequirement.WEEK_4)
    target = target_version(consumer, str(default), str(hlo.get_minimum_version()))
    if target == str(default):
        yield target
        return
    original = export_module._module_to_bytecode
    from jax._src import xla_bridge

    def to_bytecode(module):
        return jaxlib.mlir.serialize_portable_artifact(
            module, target, xla_bridge.get_backend().serialize_with_sdy)

    logging.info("serialising StableHLO %s (jax's default %s) for TensorFlow", target, default)
    export_module._module_to_bytecode = to_bytecode
    try:
        yield target
    finally:
        export_module._module_to_bytecode = original
