#!/usr/bin/env bash
# Prepares, on a machine with network access, the wheels that benchmarks/accelerator.py needs on a
# GPU machine without it: deeplab_jax itself and its dependencies, plus timm (the Xception-65
# reference), for CPython 3.12 on linux x86_64. The GPU machine is expected to have jax + CUDA,
# flax, optax, orbax-checkpoint, torch and torchvision already; they are not downloaded (torch's
# CUDA wheels alone are gigabytes).
#
#   bash benchmarks/prepare_accelerator_wheels.sh [OUT_DIR]     # default: accelerator_wheels/
#   # copy the repository and OUT_DIR to the GPU machine, then there:
#   python -m pip install --no-index --find-links OUT_DIR OUT_DIR/*.whl
#   python benchmarks/accelerator.py
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="${1:-$root/accelerator_wheels}"
python="${PYTHON:-python3}"
mkdir -p "$out"
target=(--only-binary=:all: --python-version 3.12 --implementation cp --abi cp312
        --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64
        --platform manylinux_2_28_x86_64 --platform linux_x86_64)

# deeplab_jax's own dependencies (pyproject.toml), less those the GPU machine already has.
deps=$("$python" - "$root/pyproject.toml" <<'EOF'
import re, sys, tomllib
present = {"jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "torch", "torchvision"}
for spec in tomllib.load(open(sys.argv[1], "rb"))["project"]["dependencies"]:
    name = re.split(r"[<>=!~ \[;]", spec, maxsplit=1)[0]
    if name.lower() not in present:
        print(spec)
EOF
)
# With their own dependencies resolved; none of these requires jax or torch.
# shellcheck disable=SC2086
"$python" -m pip download "${target[@]}" -d "$out" $deps
# timm requires torch and torchvision, which are present there: only its other dependencies.
"$python" -m pip download "${target[@]}" -d "$out" --no-deps timm
"$python" -m pip download "${target[@]}" -d "$out" huggingface_hub safetensors pyyaml
# deeplab_jax itself (pure Python), without dependencies.
"$python" -m pip wheel --no-deps -w "$out" "$root"
echo "wheels in $out:"
ls "$out"
