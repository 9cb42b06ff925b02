#!/usr/bin/env bash
# Prepares, on a machine with network access, the wheels that benchmarks/accelerator.py needs on a
# GPU machine without it: deeplab_jax itself and its dependencies, plus timm (the Xception-65
# reference), for CPython 3.12 on linux x86_64 (run it with such an interpreter: PYTHON=...). The
# GPU machine is expected to have jax + CUDA, flax, optax, orbax-checkpoint, torch and torchvision
# already; they are not downloaded (torch's CUDA wheels alone are gigabytes).
#
#   PYTHON=python3.12 bash benchmarks/prepare_accelerator_wheels.sh [OUT_DIR]
#   # default OUT_DIR: accelerator_wheels/ in the repository. Copy the repository and OUT_DIR to
#   # the GPU machine, then there:
#   python -m pip install --no-index --find-links OUT_DIR deeplab-jax timm
#   python benchmarks/accelerator.py
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="${1:-$root/accelerator_wheels}"
python="${PYTHON:-python3}"
mkdir -p "$out"

# The wheels are resolved for the interpreter that runs pip: it must match the GPU machine's.
"$python" -c '
import platform, sys
if sys.version_info[:2] != (3, 12) or sys.platform != "linux" or platform.machine() != "x86_64":
    sys.exit(f"run with a CPython 3.12 on linux x86_64 (PYTHON=...), not "
             f"{sys.version.split()[0]} on {sys.platform} {platform.machine()}")'

# deeplab_jax's own dependencies (pyproject.toml), less those the GPU machine already has.
deps=$("$python" -c '
import re, sys, tomllib
present = {"jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "torch", "torchvision"}
for spec in tomllib.load(open(sys.argv[1], "rb"))["project"]["dependencies"]:
    if re.split(r"[<>=!~ \[;]", spec, maxsplit=1)[0].lower() not in present:
        print(spec)' "$root/pyproject.toml")

# With their dependencies (none of them requires jax or torch); `pip wheel` also builds the few
# that PyPI has only as source (e.g. promise, needed by tensorflow-datasets). timm's other
# dependencies are listed here; timm itself and deeplab_jax come without dependencies (timm's
# remaining ones are torch and torchvision, present there).
# shellcheck disable=SC2086
"$python" -m pip wheel --prefer-binary -w "$out" $deps huggingface_hub safetensors pyyaml
"$python" -m pip wheel --no-deps -w "$out" timm "$root"
echo "wheels in $out:"
ls "$out"
