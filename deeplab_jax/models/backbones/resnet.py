"""ResNet-50/101 of DeepLab-v2 (v2 paper §3.1, §4.1.2), with atrous stages and both block layouts.

DeepLab-v2 re-purposes ResNet-101 by atrous convolution: the stride of the stage that would take the
features below output stride 8 is removed and all later 3x3 convolutions get rate 2, then 4 (§3.1).
The released Caffe model (MSRA ResNet layout) has
  stem:  conv1 7x7/2 (pad 3, no bias) + BN + ReLU, max-pool 3x3/2 with padding 1 and ceil mode
         (DeepLab's change: the MSRA and torchvision stems differ here);
  res2..res5: bottleneck blocks (1x1 reduce, 3x3, 1x1 increase = 4x), BN after every conv, no conv
         bias, a projection shortcut (1x1 conv + BN) in the first block of each stage, the stride on
         the 1x1 reduce conv (Caffe/v1 layout; `stride_on_3x3=True` is the torchvision/v1.5 layout);
  output stride 8: res4 stride 1 rate 2, res5 stride 1 rate 4 (16: res4 stride 2, res5 rate 2).
`output_stride` may be 4, 8, 16 or 32; `ResNetSpec.multi_grid` multiplies the rates of the last
stage's blocks (DeepLab-v3 §3.2). With the stride on the 3x3 conv, the first block of a dilated
stage keeps the previous rate in its (formerly strided) 3x3, as torchvision does; this is what makes
the network an exact atrous re-sampling of itself at every output stride (tested). Basic blocks (two
3x3 convs, for the small demo models) follow the same rules with the stride on the first 3x3.

Parameter tree (names as kazuto1011/deeplab-pytorch, whose `layer1` is our `stem`):
  stem/conv1/{conv/kernel, bn/{scale,bias}}                       Caffe conv1, bn_conv1/scale_conv1
  layer{2..5}/block{1..N}/reduce/{conv,bn}      res{2..5}{a,b,..}_branch2a (bn2a_branch2a, scale..)
                          conv3x3/{conv,bn}     ..._branch2b
                          increase/{conv,bn}    ..._branch2c
                          shortcut/{conv,bn}    ..._branch1 (first block of each stage only)
  basic blocks: layer{2..5}/block{i}/{conv1, conv2, shortcut}/{conv,bn}
  batch_stats mirror the bn entries with {mean, var}. torchvision's layer{1..4} are our layer{2..5};
  its conv1/conv2/conv3/downsample are our reduce/conv3x3/increase/shortcut.
"""

import dataclasses
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from deeplab_jax.models.layers import ConvBN, NormConfig, max_pool, remat_policy, tuple_fields

STEM_STRIDE = 4  # conv1 stride 2 x max-pool stride 2
OUTPUT_STRIDES = (4, 8, 16, 32)
RESNET101_STAGES = (3, 4, 23, 3)
RESNET50_STAGES = (3, 4, 6, 3)


@dataclasses.dataclass(frozen=True)
class ResNetSpec:
    """What the trunk is, independent of the output stride it runs at; hashable.

    Defaults: DeepLab-v2's ResNet-101 in the Caffe (MSRA) layout (v2 paper §4.1.2).
    stage_sizes: blocks in layer2..layer5. widths: the blocks' inner width per stage (a bottleneck
    outputs 4x). block: 'bottleneck' or 'basic'. stem_width: conv1's channels, None = widths[0].
    multi_grid: factors of the last stage's rates, one per block (v3 paper §3.2), () = all 1.
    stride_on_3x3: the torchvision (v1.5) layout instead of Caffe's stride on the 1x1 reduce.
    zero_init_last_bn: each block's last BN scale starts at 0 (its residual branch starts at 0).
    """

    stage_sizes: tuple = RESNET101_STAGES
    widths: tuple = (64, 128, 256, 512)
    block: str = "bottleneck"
    stem_width: int | None = None
    multi_grid: tuple = ()
    stride_on_3x3: bool = False
    zero_init_last_bn: bool = False

    def __post_init__(self):
        tuple_fields(self, "stage_sizes", "widths", "multi_grid")

    @property
    def stem(self):
        """conv1's output channels."""
        return self.widths[0] if self.stem_width is None else self.stem_width


class BlockPlan(NamedTuple):
    """Where a block sits in the atrous schedule (see `block_schedule`)."""

    stride: int = 1
    strided_rate: int = 1  # rate of the conv at the strided position
    rate: int = 1  # rate of the block's other 3x3 convs


def stage_strides_and_rates(output_stride):
    """(stride, rate, previous rate) of layer2..layer5 for the given output stride."""
    if output_stride not in OUTPUT_STRIDES:
        raise ValueError(f"output_stride={output_stride!r} is not supported; use {OUTPUT_STRIDES}")
    current, rate, stages = STEM_STRIDE, 1, []
    for nominal_stride in (1, 2, 2, 2):
        previous_rate = rate
        if nominal_stride == 1:
            stride = 1
        elif current >= output_stride:
            stride, rate = 1, rate * 2  # atrous instead of striding (§3.1)
        else:
            stride, current = 2, current * 2
        stages.append((stride, rate, previous_rate))
    return tuple(stages)


def block_schedule(stage_sizes, output_stride, multi_grid=()):
    """Per stage, per block: BlockPlan(stride, rate of the strided-position conv, rate of the
    3x3 convs).

    The strided-position conv is the first block's 1x1 reduce (Caffe), its 3x3 (torchvision) or its
    first 3x3 (basic block); in a dilated stage it keeps the previous stage's rate.
    """
    stage_sizes = tuple(stage_sizes)
    if len(stage_sizes) != 4 or any(n < 1 for n in stage_sizes):
        raise ValueError(f"stage_sizes must be 4 positive ints, got {stage_sizes!r}")
    multi_grid = tuple(multi_grid) or (1,) * stage_sizes[-1]
    if len(multi_grid) != stage_sizes[-1]:
        raise ValueError(
            f"multi_grid={multi_grid!r} needs one factor per block of the last stage "
            f"({stage_sizes[-1]} blocks)"
        )
    schedule = []
    for stage, ((stride, rate, previous_rate), size) in enumerate(
        zip(stage_strides_and_rates(output_stride), stage_sizes)
    ):
        grid = multi_grid if stage == 3 else (1,) * size
        blocks = []
        for j in range(size):
            block_rate = rate * grid[j]
            if j == 0:
                blocks.append(BlockPlan(stride, previous_rate * grid[0], block_rate))
            else:
                blocks.append(BlockPlan(1, block_rate, block_rate))
        schedule.append(tuple(blocks))
    return tuple(schedule)


class Bottleneck(nn.Module):
    """1x1 reduce -> 3x3 (atrous) -> 1x1 increase (4x), plus shortcut; ReLU after the sum."""

    width: int
    out_features: int
    plan: BlockPlan = BlockPlan()
    stride_on_3x3: bool = False
    projection: bool = False
    zero_init_last_bn: bool = False
    materialise_output: bool = True  # see _materialised_on_cpu; ResStage decides per stage
    norm: NormConfig = NormConfig()
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train=False):
        unit = dict(norm=self.norm, dtype=self.dtype, param_dtype=self.param_dtype)
        stride = self.plan.stride
        reduce_stride, mid_stride = (1, stride) if self.stride_on_3x3 else (stride, 1)
        mid_rate = self.plan.strided_rate if self.stride_on_3x3 else self.plan.rate
        h = ConvBN(self.width, 1, stride=reduce_stride, name="reduce", **unit)(x, train)
        h = ConvBN(
            self.width, 3, stride=mid_stride, rate=mid_rate, name="conv3x3", **unit
        )(h, train)
        h = ConvBN(
            self.out_features, 1, relu=False, name="increase",
            bn_scale_init=nn.initializers.zeros if self.zero_init_last_bn else None, **unit,
        )(h, train)
        return _add_shortcut(self, h, x, train)


def _add_shortcut(block, h, x, train):
    """ReLU(h + shortcut(x)): a strided 1x1 conv + BN projection when `block.projection`."""
    if block.projection:
        x = ConvBN(
            block.out_features, 1, stride=block.plan.stride, relu=False, name="shortcut",
            norm=block.norm, dtype=block.dtype, param_dtype=block.param_dtype,
        )(x, train)
    output = nn.relu(h + x.astype(h.dtype))
    return _materialised_on_cpu(output) if block.materialise_output else output


def _materialised_on_cpu(block_output):
    """The block's output as one buffer that later blocks read, on XLA:CPU.

    A block's output feeds the next block's first convolution (a matrix product that reads it
    from memory) and the next residual sum. XLA:CPU fuses each residual sum with its producers
    instead of reading that buffer, so the sum of block k recomputes blocks 1..k-1's sums: in a
    ResNet-101 stage of 23 blocks, fusions reading up to 23 [65, 65, 1024] arrays, 180 ms of a
    1.1 s forward pass at 513x513 (benchmarks/README.md, "Model"). An optimisation barrier keeps
    the sum where it is; other backends do not recompute and keep the plain value. Stages of one
    or two blocks go without it (`MATERIALISED_STAGE_SIZE`): there the recomputation is one
    elementwise sum at most, and the barrier would only split fusions (on the demo's one-block
    stages the train step's speed is the same with and without it).
    """
    return jax.lax.platform_dependent(block_output, cpu=jax.lax.optimization_barrier,
                                      default=lambda value: value)


class BasicBlock(nn.Module):
    """Two 3x3 convs (stride on the first) plus shortcut; for the small demo ResNets."""

    width: int
    out_features: int
    plan: BlockPlan = BlockPlan()
    stride_on_3x3: bool = True  # the only layout a basic block has; kept for a uniform signature
    projection: bool = False
    zero_init_last_bn: bool = False
    materialise_output: bool = True  # see _materialised_on_cpu; ResStage decides per stage
    norm: NormConfig = NormConfig()
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train=False):
        unit = dict(norm=self.norm, dtype=self.dtype, param_dtype=self.param_dtype)
        h = ConvBN(
            self.width, 3, stride=self.plan.stride, rate=self.plan.strided_rate, name="conv1",
            **unit,
        )(x, train)
        h = ConvBN(
            self.out_features, 3, rate=self.plan.rate, relu=False, name="conv2",
            bn_scale_init=nn.initializers.zeros if self.zero_init_last_bn else None, **unit,
        )(h, train)
        return _add_shortcut(self, h, x, train)


BLOCKS = {"bottleneck": (Bottleneck, 4), "basic": (BasicBlock, 1)}
# The fewest blocks a stage has for its block outputs to be materialised on XLA:CPU.
MATERIALISED_STAGE_SIZE = 3


class ResStage(nn.Module):
    """One ResNet stage (Caffe res2..res5): blocks block1..blockN."""

    block: str
    width: int
    schedule: tuple  # a BlockPlan per block
    # Whether block1 has a projection shortcut. Decided by the nominal (ImageNet) stride and widths,
    # never by the output stride, so that the parameter tree is the same at every output stride.
    first_projection: bool = True
    stride_on_3x3: bool = False
    zero_init_last_bn: bool = False
    remat: bool | str = False  # True / 'full' or a jax.checkpoint_policies name (remat_policy)
    norm: NormConfig = NormConfig()
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train=False):
        block_cls, expansion = BLOCKS[self.block]
        if self.remat:
            # Argument 2 counts the module itself: (self, x, train); `train` must stay static.
            block_cls = nn.remat(block_cls, static_argnums=(2,), policy=remat_policy(self.remat))
        out_features = self.width * expansion
        for j, plan in enumerate(self.schedule):
            x = block_cls(
                self.width, out_features, plan=BlockPlan(*plan), stride_on_3x3=self.stride_on_3x3,
                projection=self.first_projection if j == 0 else False,
                zero_init_last_bn=self.zero_init_last_bn,
                materialise_output=len(self.schedule) >= MATERIALISED_STAGE_SIZE,
                norm=self.norm, dtype=self.dtype, param_dtype=self.param_dtype,
                name=f"block{j + 1}",
            )(x, train)
        return x


class ResNet(nn.Module):
    """Atrous ResNet trunk (`spec`); returns the last stage's features at `output_stride`.

    Defaults are DeepLab-v2's ResNet-101 (Caffe layout, ceil-mode pooling, output stride 8).
    `__call__(x, train, return_endpoints=True)` returns `(features, endpoints)` where endpoints maps
    'stem', 'layer2' ... 'layer5' to each stage's output; 'layer2' (stride 4, torchvision's layer1,
    Caffe res2) is `LOW_LEVEL_ENDPOINT`, the low-level features of the v3+ decoder (v3+ paper §4.1
    "Conv2") and the fine-grained features of PointRend (Kirillov et al. 2019, §4 "res2").
    """

    LOW_LEVEL_ENDPOINT = "layer2"

    spec: ResNetSpec = ResNetSpec()
    output_stride: int = 8
    pool_ceil_mode: bool = True
    remat: bool | str = False  # True / 'full' or a jax.checkpoint_policies name (remat_policy)
    norm: NormConfig = NormConfig()
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x_BxHxWx3, train=False, return_endpoints=False):
        spec = self.spec
        if spec.block not in BLOCKS:
            raise ValueError(f"block={spec.block!r} is unknown; use one of {tuple(BLOCKS)}")
        if len(spec.widths) != 4:
            raise ValueError(f"widths must be 4 ints (one per stage), got {spec.widths!r}")
        schedule = block_schedule(spec.stage_sizes, self.output_stride, spec.multi_grid)
        unit = dict(norm=self.norm, dtype=self.dtype, param_dtype=self.param_dtype)
        expansion = BLOCKS[spec.block][1]
        x = Stem(spec.stem, self.pool_ceil_mode, name="stem", **unit)(x_BxHxWx3, train)
        endpoints = {"stem": x}
        for stage, (width, blocks) in enumerate(zip(spec.widths, schedule)):
            # layer2 keeps the resolution (projection only if the width changes); layer3-5 halve
            # it on ImageNet, so their first block always projects (Caffe res{3,4,5}a_branch1).
            first_projection = stage > 0 or x.shape[-1] != width * expansion
            x = ResStage(
                spec.block, width, blocks, first_projection=first_projection,
                stride_on_3x3=spec.stride_on_3x3, zero_init_last_bn=spec.zero_init_last_bn,
                remat=self.remat, name=f"layer{stage + 2}", **unit,
            )(x, train)
            endpoints[f"layer{stage + 2}"] = x
        return (x, endpoints) if return_endpoints else x


class Stem(nn.Module):
    """conv1 7x7/2 + BN + ReLU, then 3x3/2 max-pool with padding 1 (ceil mode in Caffe DeepLab)."""

    width: int = 64
    pool_ceil_mode: bool = True
    norm: NormConfig = NormConfig()
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train=False):
        x = ConvBN(
            self.width, 7, stride=2, norm=self.norm, dtype=self.dtype,
            param_dtype=self.param_dtype, name="conv1",
        )(x, train)
        return max_pool(x, 3, 2, 1, ceil_mode=self.pool_ceil_mode)
