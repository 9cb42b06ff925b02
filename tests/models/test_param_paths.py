"""The variable tree of every registered model, and its override defaults, against a golden file.

Checkpoints (orbax trees), the weight converters (Caffe, kazuto1011, torchvision and TF names are
mapped onto these paths), the optimizer's regexes (frozen BatchNorm, per-part learning rates) and
`allow_missing=('head',)` all address variables by path. A refactor of the model code must leave
every 'collection/module/.../leaf' path and shape as it is; this test recomputes them for every
model in `MODELS` (plus variants whose options add or move modules) and reports the difference.

The golden file also holds `config.model_overrides.model_defaults(name)`: the flat override names and their
defaults are the configuration API (`--config.model.overrides.<name>=...` on a locked config).

Regenerate ONLY for an intended change of the tree (and then fix the converters, the regexes and
the checkpoints that depend on it): `python -m tests.models.test_param_paths --regenerate`.
"""

import functools
import gzip
import json
import os
import sys

import jax
import jax.numpy as jnp
import pytest

from deeplab_jax import models
from deeplab_jax.config import model_overrides as model_config

GOLDEN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "golden_param_paths.json.gz")
IMAGE_SHAPE = (1, 65, 65, 3)
NUM_CLASSES = 21
# Variants beyond the registered defaults: options that add, remove or wrap modules.
V3_RESNET = ("deeplab_v3_resnet50", "deeplab_v3_resnet101", "deeplab_v3plus_resnet50",
             "deeplab_v3plus_resnet101", "deeplab_v3_demo", "deeplab_v3plus_demo")
VARIANTS = {
    **{f"{name}[pointrend]": (name, dict(pointrend=True))
       for name in (*V3_RESNET, "deeplab_v3plus_xception65")},
    "deeplab_v2_resnet101_aspp_l[msc]": ("deeplab_v2_resnet101_aspp_l",
                                         dict(msc_scales=(1.0, 0.75, 0.5))),
    "deeplab_v2_demo[remat]": ("deeplab_v2_demo", dict(remat=True)),
    "deeplab_v1_largefov[remat]": ("deeplab_v1_largefov", dict(remat=True)),
    "deeplab_v2_resnet50_aspp_l[torchvision_layout]": (
        "deeplab_v2_resnet50_aspp_l", dict(stride_on_3x3=True, stem_width=32)),
    "deeplab_v3_resnet50[extra_conv3x3]": (
        "deeplab_v3_resnet50", dict(extra_conv3x3=True, output_stride=8, multi_grid=())),
    "deeplab_v3_resnet50[separable_no_pooling]": (
        "deeplab_v3_resnet50", dict(aspp_separable=True, image_pooling=False)),
    "deeplab_v3plus_demo[separable]": (
        "deeplab_v3plus_demo", dict(aspp_separable=True, decoder_separable=True)),
    "deeplab_v3plus_xception65[v3_head_remat]": (
        "deeplab_v3plus_xception65", dict(decoder=False, remat=True, middle_repeats=2)),
    "deeplab_v2_vgg16_aspp_s[rates]": ("deeplab_v2_vgg16_aspp_s", dict(aspp_rates=(2, 4))),
}
RNGS = {"params": jax.random.key(0), "dropout": jax.random.key(1)}


def cases():
    """{case: (model name, overrides)}: every registered model, then VARIANTS."""
    return {**{name: (name, {}) for name in models.MODELS}, **VARIANTS}


def variable_paths(name, overrides):
    """Sorted ['collection/a/b/leaf', [shape]] of get_model(name, 21, **overrides)'s variables."""
    model = models.get_model(name, NUM_CLASSES, **overrides)
    variables = jax.eval_shape(functools.partial(model.init, train=False), RNGS,
                               jax.ShapeDtypeStruct(IMAGE_SHAPE, jnp.uint8))
    leaves = jax.tree_util.tree_flatten_with_path(variables)[0]
    return sorted(["/".join(str(k.key) for k in path), list(leaf.shape)] for path, leaf in leaves)


def override_defaults(name):
    """[[override, repr(default)], ...] in the order model_config.model_defaults lists them."""
    return [[key, repr(value)] for key, value in model_config.model_defaults(name).items()]


def compute():
    return {
        "paths": {case: variable_paths(*spec) for case, spec in cases().items()},
        "override_defaults": {name: override_defaults(name) for name in models.MODELS},
    }


def load_golden():
    with gzip.open(GOLDEN, "rt", encoding="utf-8") as f:
        return json.load(f)


def write_golden(table):
    # mtime=0: the same table gives the same bytes, so an unchanged tree makes no diff.
    with open(GOLDEN, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as f:
        f.write(json.dumps(table, indent=0, sort_keys=True).encode("utf-8"))


def path_diff(want, got):
    """Readable missing / extra / reshaped lines between two [[path, shape], ...] lists."""
    want, got = {p: tuple(s) for p, s in want}, {p: tuple(s) for p, s in got}
    lines = [f"  missing  {p} {want[p]}" for p in sorted(set(want) - set(got))]
    lines += [f"  extra    {p} {got[p]}" for p in sorted(set(got) - set(want))]
    lines += [f"  reshaped {p} {want[p]} -> {got[p]}"
              for p in sorted(set(want) & set(got)) if want[p] != got[p]]
    return lines


WHY = ("checkpoints, the weight converters (deeplab_jax.weights) and the optimizer's learning-rate "
       "and freezing regexes address variables by these paths; restore the tree, or regenerate "
       "the golden file and update all of them")


@pytest.fixture(scope="module")
def golden():
    return load_golden()


def test_golden_covers_every_registered_model(golden):
    assert set(golden["paths"]) == set(cases()), (
        "the golden file lists other models than MODELS + VARIANTS; regenerate it for a new model")
    assert set(golden["override_defaults"]) == set(models.MODELS)


@pytest.mark.parametrize("case", sorted(cases()))
def test_variable_paths_and_shapes_are_unchanged(golden, case):
    got = variable_paths(*cases()[case])
    lines = path_diff(golden["paths"][case], got)
    assert not lines, f"{case}: variable tree changed ({WHY}):\n" + "\n".join(lines[:60]) + (
        f"\n  ... {len(lines) - 60} more" if len(lines) > 60 else "")


@pytest.mark.parametrize("name", sorted(models.MODELS))
def test_override_names_and_defaults_are_unchanged(golden, name):
    """The flat override names and their defaults (configs and checkpoint metadata); the order in
    which they are listed is not part of the contract."""
    want, got = dict(golden["override_defaults"][name]), dict(override_defaults(name))
    changed = {key: (want.get(key, "<absent>"), got.get(key, "<absent>"))
               for key in set(want) | set(got) if want.get(key) != got.get(key)}
    assert not changed, f"{name}: override (golden, now): {changed}"


if __name__ == "__main__":
    if sys.argv[1:] != ["--regenerate"]:
        sys.exit(f"usage: python -m tests.models.test_param_paths --regenerate\n\n{__doc__}")
    write_golden(compute())
    print(f"wrote {GOLDEN}")
