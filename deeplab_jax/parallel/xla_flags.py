"""XLA CPU compiler settings that make DeepLab's convolutions fast, applied before JAX starts.

On XLA:CPU, jaxlib routes convolutions to the YNNPACK fusion path, which is several times slower
than XLA's Eigen path for 1x1 convolutions with many channels and for the 2048->K ASPP classifiers;
excluding individual convolutions from YNN fusion brings a ResNet-101 DeepLab-v2 forward pass to
PyTorch's speed (benchmarks/README.md, "Model"). On jaxlib 0.10 in a CPU-only process a second
flag keeps the optimisation barriers the ResNet blocks put on their outputs (see `BARRIER_FLAG`).
XLA aborts the process on an unknown flag, so flags are only added for jaxlib releases on which
they were verified to exist.

Importing deeplab_jax changes nothing: the command-line entry points call `apply()` first thing,
and library users who want the setting call it themselves before their first JAX computation:

    from deeplab_jax.parallel import xla_flags
    xla_flags.apply()

Set DEEPLAB_JAX_NO_XLA_FLAGS=1 to opt out.
"""

import importlib.metadata
import os
import sys

YNN_CONV_FLAG = "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution"
# (lowest, highest) jaxlib release, inclusive, on which the flag was checked to be known to XLA.
_VERIFIED_JAXLIB = ((0, 10, 0), (0, 12, 99))
# jaxlib 0.10's CPU pipeline removes optimisation barriers before fusion, which undoes the one
# ResNet blocks put on their outputs (`models.backbones.resnet`: without it XLA:CPU recomputes
# every earlier residual sum of a stage in each block's; with the flag a ResNet-101 forward pass
# at 513x513 took 1.18 -> 0.93 s, benchmarks/README.md). Later jaxlibs keep the barriers as is.
# The flag is process-wide and applies to every backend, so it is only added where JAX has no
# accelerator plugin installed (a CPU-only process).
BARRIER_FLAG = "--xla_disable_hlo_passes=cse_barrier_expander"
_BARRIER_JAXLIB = ((0, 10, 0), (0, 10, 99))
_ACCELERATOR_DISTRIBUTIONS = ("jax-cuda", "jax-rocm", "libtpu")


def _jaxlib_version():
    try:
        text = importlib.metadata.version("jaxlib")
    except importlib.metadata.PackageNotFoundError:
        return None
    parts = []
    for piece in text.split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def _accelerator_plugin_installed():
    names = (dist.metadata["Name"] or "" for dist in importlib.metadata.distributions())
    return any(name.lower().replace("_", "-").startswith(_ACCELERATOR_DISTRIBUTIONS)
               for name in names)


def flags_to_add():
    """Returns the XLA flags this package would add for the installed jaxlib (possibly none)."""
    version = _jaxlib_version()
    if version is None or not (_VERIFIED_JAXLIB[0] <= version <= _VERIFIED_JAXLIB[1]):
        return []
    flags = [YNN_CONV_FLAG]
    if _BARRIER_JAXLIB[0] <= version <= _BARRIER_JAXLIB[1] and not _accelerator_plugin_installed():
        flags.append(BARRIER_FLAG)
    return flags


def apply():
    """Adds the flags to XLA_FLAGS unless opted out, already present, or JAX already started.

    Once a backend exists, XLA has read its flags; changing the variable then would only mislead,
    so nothing is done.
    """
    if os.environ.get("DEEPLAB_JAX_NO_XLA_FLAGS"):
        return
    jax_module = sys.modules.get("jax")
    if jax_module is not None:
        try:
            # Private, but JAX has no public "are the backends initialised?" (stable 0.10-0.12).
            from jax._src import xla_bridge

            if xla_bridge.backends_are_initialized():
                return
        except (ImportError, AttributeError):
            pass
    current = os.environ.get("XLA_FLAGS", "")
    for flag in flags_to_add():
        name = flag.split("=")[0]
        if name not in current:
            current = (current + " " + flag).strip()
    os.environ["XLA_FLAGS"] = current
