"""Modified aligned Xception-65 of DeepLab-v3+ (Chen et al. 2018, §3.2 and Fig. 4).

Xception (Chollet 2017) made deeper and "aligned" (Dai et al., COCO 2017 entry), then modified by
the v3+ paper: (1) the middle flow repeats its block 16 times (Xception-65); (2) every max pooling
becomes a depthwise-separable conv with stride 2, so atrous separable convs can extract features at
any output stride; (3) extra BatchNorm after each 3x3 depthwise conv (MobileNet style).

Layout, as TF models/research/deeplab `core/xception.py` `xception_65` (the released checkpoints):
  entry_flow/conv1_1   3x3/2, 32 ch, BN, ReLU;   entry_flow/conv1_2   3x3, 64 ch, BN, ReLU
  entry_flow/block1    unit: 3 separable convs 128-128-128, stride 2 on the 3rd, 1x1/2 conv shortcut
  entry_flow/block2    256-256-256, stride 2   (its 2nd separable conv is the stride-4 endpoint)
  entry_flow/block3    728-728-728, stride 2
  middle_flow/block1   16 units 728-728-728, identity shortcut
  exit_flow/block1     728-1024-1024, stride 2, conv shortcut
  exit_flow/block2     1536-1536-2048, no shortcut, ReLU inside each separable conv
Each separable conv: depthwise 3x3 -> BN -> pointwise 1x1 -> BN (no conv biases). In the entry,
middle and exit block1 units the ReLU comes *before* each separable conv (pre-activation, TF's
`activation_fn_in_separable_conv=False`), so a unit's output is the un-activated sum; in exit
block2 both BNs are followed by ReLU. `relu_after_depthwise=True` puts a ReLU after every
depthwise BN as the paper's text describes (same parameters; not the released checkpoints).

Atrous rates: TF's `stack_blocks_dense` rule. The stem has stride 2; once the target output stride
is reached, a unit that would stride instead runs at stride 1 with the current rate, and the rate is
multiplied by its stride for the later units. A de-strided 3x3 conv at rate r, subsampled by 2, is
exactly the strided conv, so the network is an atrous re-sampling of itself at output strides 4, 8,
16 and 32 (tested). `XceptionSpec.multi_grid` multiplies the rates of exit block2's three separable
convs (TF `unit_rate_list`).

Parameter count (width_multiplier 1): 37,867,312 trainable (conv kernels, BN gamma/beta), the
sum over the layout above; with TF's 1001-class ImageNet logits it is the ~40M that timm reports
for its port of these weights. Parameter names follow TF's scopes:
  entry_flow/conv1_1/{conv, bn}, entry_flow/block1/unit1/separable_conv{1,2,3}/{depthwise,
  pointwise}/{conv, bn}, entry_flow/block1/unit1/shortcut/{conv, bn}, middle_flow/block1/
  unit{1..16}/..., exit_flow/block{1,2}/unit1/...
"""

import dataclasses
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from deeplab_jax.models.layers import ConvBN, NormConfig, remat_policy, tuple_fields
from deeplab_jax.models.separable import SeparableConvBN

OUTPUT_STRIDES = (4, 8, 16, 32)
STEM_STRIDE = 2
# (flow, block, separable-conv depths, skip connection, units, stride, ReLU inside the convs)
XCEPTION65_BLOCKS = (
    ("entry_flow", "block1", (128, 128, 128), "conv", 1, 2, False),
    ("entry_flow", "block2", (256, 256, 256), "conv", 1, 2, False),
    ("entry_flow", "block3", (728, 728, 728), "conv", 1, 2, False),
    ("middle_flow", "block1", (728, 728, 728), "sum", 16, 1, False),
    ("exit_flow", "block1", (728, 1024, 1024), "conv", 1, 2, False),
    ("exit_flow", "block2", (1536, 1536, 2048), "none", 1, 1, True),
)
STEM_WIDTHS = (32, 64)
LOW_LEVEL_ENDPOINT = "entry_flow/block2/unit1/separable_conv2"


@dataclasses.dataclass(frozen=True)
class XceptionSpec:
    """What the trunk is, independent of the output stride it runs at; hashable.

    Defaults: the released Xception-65. multi_grid: factors of exit_flow/block2's three rates,
    () = (1, 1, 1). middle_repeats and width_multiplier shrink the network (tests, demos).
    relu_after_depthwise: a ReLU after every depthwise BN, as the v3+ paper's text (§3.2).
    """

    multi_grid: tuple = ()
    middle_repeats: int = 16
    width_multiplier: float = 1.0
    relu_after_depthwise: bool = False

    def __post_init__(self):
        tuple_fields(self, "multi_grid")


def unit_schedule(output_stride, blocks=XCEPTION65_BLOCKS):
    """Per block, per unit: (stride, rate), following TF's stack_blocks_dense after the stem."""
    if output_stride not in OUTPUT_STRIDES:
        raise ValueError(f"output_stride={output_stride!r} is not supported; use {OUTPUT_STRIDES}")
    current, rate, schedule = STEM_STRIDE, 1, []
    for *_, num_units, stride, _ in blocks:
        units = []
        for _ in range(num_units):
            if current == output_stride:
                units.append((1, rate))
                rate *= stride  # atrous instead of striding
            else:
                units.append((stride, rate))
                current *= stride
        schedule.append(tuple(units))
    return tuple(schedule)


class XceptionUnit(nn.Module):
    """Three separable convs (stride on the third) plus a conv / identity / no shortcut.

    Returns (output, (sepconv1, sepconv2, sepconv3) outputs); the second is an endpoint.
    """

    depths: Sequence[int]
    skip: str = "conv"
    stride: int = 1
    rates: Sequence[int] = (1, 1, 1)
    activation_inside: bool = False
    relu_after_depthwise: bool = False
    norm: NormConfig = NormConfig()
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train=False):
        if self.skip not in ("conv", "sum", "none"):
            raise ValueError(f"skip={self.skip!r}; use 'conv', 'sum' or 'none'")
        unit = dict(norm=self.norm, dtype=self.dtype, param_dtype=self.param_dtype)
        residual, outputs = x, []
        for i, (depth, rate) in enumerate(zip(self.depths, self.rates)):
            if not self.activation_inside:
                residual = nn.relu(residual)  # pre-activation (TF activation_fn_in_separable_conv)
            residual = SeparableConvBN(
                depth, 3, stride=self.stride if i == 2 else 1, rate=rate,
                depthwise_relu=self.activation_inside or self.relu_after_depthwise,
                relu=self.activation_inside, name=f"separable_conv{i + 1}", **unit,
            )(residual, train)
            outputs.append(residual)
        if self.skip == "conv":
            shortcut = ConvBN(
                self.depths[-1], 1, stride=self.stride, relu=False, name="shortcut", **unit
            )(x, train)
            residual = residual + shortcut
        elif self.skip == "sum":
            residual = residual + x.astype(residual.dtype)
        return residual, tuple(outputs)


class XceptionBlock(nn.Module):
    """unit1..unitN of one block; `units` holds (stride, rates) per unit."""

    depths: Sequence[int]
    skip: str
    units: Sequence[tuple]
    activation_inside: bool = False
    relu_after_depthwise: bool = False
    remat: bool = False
    norm: NormConfig = NormConfig()
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train=False):
        # Argument 2 counts the module itself: (self, x, train); `train` must stay static.
        unit_cls = (nn.remat(XceptionUnit, static_argnums=(2,), policy=remat_policy(self.remat))
                    if self.remat else XceptionUnit)
        endpoints = {}
        for index, (stride, rates) in enumerate(self.units):
            x, sepconv_outputs = unit_cls(
                tuple(self.depths), self.skip, stride, tuple(rates),
                activation_inside=self.activation_inside,
                relu_after_depthwise=self.relu_after_depthwise, norm=self.norm, dtype=self.dtype,
                param_dtype=self.param_dtype, name=f"unit{index + 1}",
            )(x, train)
            for i, output in enumerate(sepconv_outputs):
                endpoints[f"unit{index + 1}/separable_conv{i + 1}"] = output
        return x, endpoints


class XceptionFlow(nn.Module):
    """A flow (entry / middle / exit): optional stem convs conv1_1, conv1_2, then its blocks.

    blocks: ((name, depths, skip, units, activation_inside), ...). A scope of its own so that the
    parameter names read 'entry_flow/block1/unit1/...' as in TF.
    """

    blocks: Sequence[tuple]
    stem_widths: Sequence[int] = ()
    relu_after_depthwise: bool = False
    remat: bool = False
    norm: NormConfig = NormConfig()
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train=False):
        unit = dict(norm=self.norm, dtype=self.dtype, param_dtype=self.param_dtype)
        endpoints = {}
        if self.stem_widths:
            x = ConvBN(self.stem_widths[0], 3, stride=STEM_STRIDE, name="conv1_1", **unit)(
                x, train)
            x = ConvBN(self.stem_widths[1], 3, name="conv1_2", **unit)(x, train)
            endpoints["conv1_2"] = x
        for name, depths, skip, units, inside in self.blocks:
            x, block_endpoints = XceptionBlock(
                depths, skip, units, activation_inside=inside,
                relu_after_depthwise=self.relu_after_depthwise, remat=self.remat, name=name,
                **unit,
            )(x, train)
            endpoints.update({f"{name}/{k}": v for k, v in block_endpoints.items()})
            endpoints[name] = x
        return x, endpoints


def _scaled(width, multiplier):
    return max(1, int(round(width * multiplier)))


class Xception(nn.Module):
    """Modified aligned Xception (`spec`, 65 layers by default); features at `output_stride`.

    `__call__(x, train, return_endpoints=True)` returns `(features, endpoints)`:
    'entry_flow/conv1_2', 'flow/blockN' (each block's output) and
    'flow/blockN/unitK/separable_convI', among them `LOW_LEVEL_ENDPOINT` (entry_flow/block2's
    second separable conv: stride 4, 256 ch, before ReLU; TF's decoder end point for
    xception_65).
    """

    LOW_LEVEL_ENDPOINT = LOW_LEVEL_ENDPOINT

    spec: XceptionSpec = XceptionSpec()
    output_stride: int = 16
    remat: bool = False
    norm: NormConfig = NormConfig(momentum=0.9997, epsilon=1e-3)
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def block_table(self):
        """XCEPTION65_BLOCKS with the spec's `middle_repeats` and `width_multiplier` applied."""
        spec = self.spec
        if spec.middle_repeats < 1:
            raise ValueError(f"middle_repeats must be >= 1, got {spec.middle_repeats!r}")
        if spec.width_multiplier <= 0:
            raise ValueError(f"width_multiplier must be positive, got {spec.width_multiplier!r}")
        blocks = []
        for flow, name, depths, skip, units, stride, inside in XCEPTION65_BLOCKS:
            units = spec.middle_repeats if flow == "middle_flow" else units
            depths = tuple(_scaled(d, spec.width_multiplier) for d in depths)
            blocks.append((flow, name, depths, skip, units, stride, inside))
        return tuple(blocks)

    @nn.compact
    def __call__(self, x_BxHxWx3, train=False, return_endpoints=False):
        multi_grid = self.spec.multi_grid or (1, 1, 1)
        if len(multi_grid) != 3 or any(int(m) != m or m < 1 for m in multi_grid):
            raise ValueError(
                f"multi_grid={self.spec.multi_grid!r} must be 3 positive ints (one per separable "
                "conv of exit_flow/block2), or () for (1, 1, 1)"
            )
        blocks = self.block_table()
        schedule = unit_schedule(self.output_stride, blocks)
        flows = {}  # flow -> [(name, depths, skip, ((stride, rates), ...), inside)]
        for (flow, name, depths, skip, _, _, inside), units in zip(blocks, schedule):
            grid = multi_grid if (flow, name) == ("exit_flow", "block2") else (1, 1, 1)
            units = tuple((stride, tuple(rate * g for g in grid)) for stride, rate in units)
            flows.setdefault(flow, []).append((name, depths, skip, units, inside))
        stem = tuple(_scaled(w, self.spec.width_multiplier) for w in STEM_WIDTHS)
        endpoints, x = {}, x_BxHxWx3
        for flow, flow_blocks in flows.items():
            x, flow_endpoints = XceptionFlow(
                tuple(flow_blocks), stem if flow == "entry_flow" else (),
                relu_after_depthwise=self.spec.relu_after_depthwise, remat=self.remat,
                norm=self.norm, dtype=self.dtype, param_dtype=self.param_dtype, name=flow,
            )(x, train)
            endpoints.update({f"{flow}/{k}": v for k, v in flow_endpoints.items()})
        return (x, endpoints) if return_endpoints else x
