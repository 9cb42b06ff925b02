"""Reusable DeepLab layers: atrous convolution, Conv+BN(+ReLU), Caffe pooling, input normalisation.

Atrous ("with holes") convolution is the core of DeepLab (v2 paper, §3.1): a k x k filter applied
with rate r samples its input every r pixels, so its field of view grows to k + (k - 1)(r - 1) with
the same number of parameters. Here it is `jax.lax.conv_general_dilated(..., rhs_dilation=(r, r))`
with the explicit symmetric padding r (k - 1) / 2 of the released Caffe models, which keeps the
spatial size of stride-1 layers (§3.1, and the 4x4 fc6 kernels of Table 1, §4.1.1).

Pooling follows Caffe (the released DeepLab models were trained in Caffe): max pooling ignores
padded cells, output sizes use Caffe's ceil rule when `ceil_mode=True` (PyTorch's ceil_mode is the
same rule), and average pooling divides by the window clipped at the padded border (Caffe's count).

Parameters are float32 (`param_dtype`); `dtype` is the compute dtype (e.g. jnp.bfloat16).
"""

import dataclasses
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Dtype = Any

# RGB statistics of torchvision / ImageNet models; images are 0..255.
IMAGENET_MEAN_RGB = (123.675, 116.28, 103.53)
IMAGENET_STD_RGB = (58.395, 57.12, 57.375)
# BGR mean subtracted by the released DeepLab Caffe models (no division by a std).
CAFFE_MEAN_BGR = (104.008, 116.669, 122.675)
INPUT_NORMS = ("imagenet", "caffe_bgr", "inception", "none")

# He et al. (MSRA) normal init for convolutions, as Caffe's "msra" filler (fan-in).
he_normal = nn.initializers.variance_scaling(2.0, "fan_in", "normal")
# Classifier init of the paper's release: gaussian std 0.01, bias 0.
classifier_normal = nn.initializers.normal(stddev=0.01)


def _channel_vector(values, ndim, dtype):
    """A (1, ..., 1, C) array so that broadcasting needs no rank promotion."""
    return jnp.asarray(values, dtype).reshape((1,) * (ndim - 1) + (len(values),))


def normalize_images(images, mode, dtype=jnp.float32):
    """Maps RGB images in 0..255 (uint8 or float, any leading dims, last dim 3) to network input.

    mode: 'imagenet' ((x - mean) / std, RGB), 'caffe_bgr' (channels reversed to BGR, Caffe mean
    subtracted, no std: the released DeepLab weights expect this), 'inception' (x / 127.5 - 1, the
    [-1, 1] range of TF models/research/deeplab's Xception checkpoints), or 'none' (only cast).
    The arithmetic is float32 whatever `dtype`; the result is cast to `dtype`.
    """
    if mode not in INPUT_NORMS:
        raise ValueError(f"input_norm={mode!r} is unknown; use one of {INPUT_NORMS}")
    if images.ndim < 1 or images.shape[-1] != 3:
        raise ValueError(
            f"images must have 3 (RGB) channels last, got shape {tuple(images.shape)}"
        )
    x = jnp.asarray(images).astype(jnp.float32)
    if mode == "imagenet":
        x = (x - _channel_vector(IMAGENET_MEAN_RGB, x.ndim, jnp.float32)) / _channel_vector(
            IMAGENET_STD_RGB, x.ndim, jnp.float32
        )
    elif mode == "caffe_bgr":
        x = jnp.flip(x, axis=-1) - _channel_vector(CAFFE_MEAN_BGR, x.ndim, jnp.float32)
    elif mode == "inception":
        x = x / 127.5 - 1.0
    return x.astype(dtype)


def atrous_padding(kernel_size, rate):
    """Symmetric padding r (k - 1) / 2 that keeps a stride-1 atrous conv size-preserving.

    Raises for combinations where it is not an integer (e.g. a 4x4 kernel at an odd rate), which
    would need asymmetric padding that the released models never used.
    """
    total = rate * (kernel_size - 1)
    if total % 2:
        raise ValueError(
            f"kernel_size={kernel_size} with rate={rate} needs padding r*(k-1)/2 = {total / 2}, "
            "which is not an integer; use an even rate for even kernels (Table 1 uses 4x4 with "
            "r=4 or r=8) or pass an explicit `padding`"
        )
    return total // 2


class Conv(nn.Module):
    """2-D (atrous, grouped) convolution, NHWC input, HWIO 'kernel' and optional 'bias'.

    The bias starts at zero, as every bias of the released models (Caffe "constant" filler).
    `rate` is the atrous rate (rhs_dilation); `groups` is feature_group_count (groups = input
    channels gives a depthwise conv). `padding`: None = symmetric rate*(k-1)/2 (Caffe's choice for
    every DeepLab layer, also the strided ones), an int = symmetric, or a sequence of two (lo, hi)
    pairs, or 'SAME'/'VALID' as lax understands them.
    """

    features: int
    kernel_size: int = 3
    stride: int = 1
    rate: int = 1
    groups: int = 1
    use_bias: bool = True
    padding: Any = None
    kernel_init: Any = he_normal
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x_BxHxWxC):
        if x_BxHxWxC.ndim != 4:
            raise ValueError(f"Conv expects NHWC input, got shape {x_BxHxWxC.shape}")
        in_channels = x_BxHxWxC.shape[-1]
        if in_channels % self.groups or self.features % self.groups:
            raise ValueError(
                f"groups={self.groups} must divide input channels {in_channels} and "
                f"features {self.features}"
            )
        k = self.kernel_size
        kernel_HxWxIxO = self.param(
            "kernel", self.kernel_init, (k, k, in_channels // self.groups, self.features),
            self.param_dtype,
        )
        bias_O = (
            self.param("bias", nn.initializers.zeros, (self.features,), self.param_dtype)
            if self.use_bias else None
        )
        if self.padding is None:
            pad = atrous_padding(k, self.rate)
            padding = ((pad, pad), (pad, pad))
        elif isinstance(self.padding, int):
            padding = ((self.padding, self.padding),) * 2
        else:
            padding = self.padding
        x, kernel, bias = nn.dtypes.promote_dtype(
            x_BxHxWxC, kernel_HxWxIxO, bias_O, dtype=self.dtype
        )
        y = conv2d(x, kernel, stride=self.stride, rate=self.rate, padding=padding,
                   groups=self.groups)
        if bias is not None:
            y = y + bias.reshape((1, 1, 1, self.features))
        return y


# Platforms (`lax.platform_dependent` names) whose programs compute depthwise convolutions as
# shifted copies (`depthwise_taps`) instead of a grouped convolution: where that measured faster
# (benchmarks/depthwise.py). Read when a program is traced; benchmarks change it to compare.
DEPTHWISE_TAPS_PLATFORMS = ("cpu",)


def conv2d(x_BxHxWxC, kernel_HxWxIxO, stride=1, rate=1, padding=((0, 0), (0, 0)), groups=1,
           precision=None):
    """NHWC x HWIO convolution. A 1x1 kernel with zero padding is lowered as a (strided) matrix
    product for XLA:CPU, the same function as the convolution.

    On the 2-core CPU the matrix product makes a DeepLab-v2 ResNet-101 train step about 3x faster:
    XLA:CPU lowers the weight gradient of a 1x1 convolution as a convolution whose window is the
    whole feature map, over transposed copies of the activations, while the gradients of a matrix
    product are two more matrix products (benchmarks/README.md, "Model"). On GPU/TPU the
    convolution is kept: it was not measured slower there. The choice follows the platform the
    program is lowered for (`lax.platform_dependent`), not the process's default backend, so a
    program exported from a CPU host for a GPU gets the convolution.
    """
    def convolution(x, kernel):
        return jax.lax.conv_general_dilated(
            x, kernel,
            window_strides=(stride, stride),
            padding=padding,
            rhs_dilation=(rate, rate),
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
            feature_group_count=groups,
            precision=precision,
        )

    def matrix_product(x, kernel):
        if stride > 1:
            x = x[:, ::stride, ::stride]
        return jax.lax.dot_general(x, kernel[0, 0], (((3,), (0,)), ((), ())),
                                   precision=precision)

    def taps(x, kernel):
        return depthwise_taps(x, kernel, stride, rate, padding)

    kh, kw, kernel_in, kernel_out = kernel_HxWxIxO.shape
    explicit_padding = not isinstance(padding, str)
    zero_padding = explicit_padding and all(p == (0, 0) for p in map(tuple, padding))
    if (kh, kw) == (1, 1) and groups == 1 and zero_padding:
        return jax.lax.platform_dependent(x_BxHxWxC, kernel_HxWxIxO, cpu=matrix_product,
                                          default=convolution)
    depthwise = groups == x_BxHxWxC.shape[-1] == kernel_out and kernel_in == 1
    if depthwise and (kh, kw) != (1, 1) and explicit_padding and DEPTHWISE_TAPS_PLATFORMS:
        return jax.lax.platform_dependent(
            x_BxHxWxC, kernel_HxWxIxO, **{p: taps for p in DEPTHWISE_TAPS_PLATFORMS},
            default=convolution)
    return convolution(x_BxHxWxC, kernel_HxWxIxO)


def depthwise_taps(x_BxHxWxC, kernel_HxWx1xC, stride, rate, padding):
    """A depthwise (atrous, strided) convolution as the sum of k*k shifted, scaled copies of the
    input (float32 products and sum, then cast): elementwise work XLA fuses, forward and backward.

    XLA:CPU's grouped convolution is slow here: this form is 8-50x faster forward, 3-20x with
    gradients on Xception-65's shapes (benchmarks/README.md "Depthwise"). The copies are
    recomputed in the backward pass (`jax.checkpoint`): kept, Xception-65's gradients at 257x257,
    batch 2, needed 2.44 GB of temporaries against the grouped convolution's 1.50 GB; now 1.16 GB.
    """
    padding = tuple(tuple(pair) for pair in padding)
    return jax.checkpoint(_shifted_copies, static_argnums=(2, 3, 4))(
        x_BxHxWxC, kernel_HxWx1xC, stride, rate, padding)


def _shifted_copies(x_BxHxWxC, kernel_HxWx1xC, stride, rate, padding):
    kh, kw = kernel_HxWx1xC.shape[:2]
    (top, bottom), (left, right) = padding
    batch, height, width, channels = x_BxHxWxC.shape
    out_h = (height + top + bottom - rate * (kh - 1) - 1) // stride + 1
    out_w = (width + left + right - rate * (kw - 1) - 1) // stride + 1
    padded = jax.lax.pad(x_BxHxWxC, jnp.zeros((), x_BxHxWxC.dtype),
                         ((0, 0, 0), (top, bottom, 0), (left, right, 0), (0, 0, 0)))
    kernel = kernel_HxWx1xC.astype(jnp.float32)
    total = None
    for i in range(kh):
        for j in range(kw):
            start = (0, i * rate, j * rate, 0)
            limit = (batch, start[1] + (out_h - 1) * stride + 1,
                     start[2] + (out_w - 1) * stride + 1, channels)
            tap = jax.lax.slice(padded, start, limit, (1, stride, stride, 1))
            term = tap.astype(jnp.float32) * kernel[i, j, 0].reshape(1, 1, 1, channels)
            total = term if total is None else total + term
    return total.astype(jnp.result_type(x_BxHxWxC, kernel_HxWx1xC))


def remat_policy(remat):
    """The `jax.checkpoint` policy of a model's `remat` setting (a truthy value turns remat on).

    True or 'full': None, jax.checkpoint's default (save only the rematerialised module's inputs,
    recompute everything inside it in the backward pass). A name from `jax.checkpoint_policies`
    (e.g. 'dots_saveable': keep convolution and matmul outputs, recompute BatchNorm and ReLU).
    """
    if remat is True or remat == "full":
        return None
    policy = getattr(jax.checkpoint_policies, str(remat), None) if isinstance(remat, str) else None
    if policy is None or not callable(policy) or str(remat).startswith("save_"):
        names = sorted(n for n in dir(jax.checkpoint_policies)
                       if not n.startswith(("_", "save_")) and "offload" not in n)
        raise ValueError(
            f"remat={remat!r} is unknown; use True/'full' or a jax.checkpoint_policies name: "
            f"{', '.join(names)}")
    return policy


@dataclasses.dataclass(frozen=True)
class NormConfig:
    """How BatchNorm behaves; hashable so it can be a module attribute.

    frozen=True: BN always normalises with its running averages (Caffe `use_global_stats: true`,
    as in the DeepLab-v2 release) and never updates them; the optimizer freezes scale/bias by regex.
    momentum 0.999 / eps 1e-5 are Caffe's BatchNorm defaults (moving_average_fraction, eps), used by
    the released ResNet DeepLab models; Flax's momentum is the decay of the running average.
    folded=True: BatchNorm has been folded into the preceding convolution for inference
    (`deeplab_jax.inference.prepare`): `ConvBN` then owns conv/{kernel, bias} and no 'bn'.
    """

    frozen: bool = False
    momentum: float = 0.999
    epsilon: float = 1e-5
    folded: bool = False


def tuple_fields(spec, *names):
    """Makes the named sequence fields of a frozen dataclass tuples (None stays None).

    For `__post_init__` of the model specs: configs and callers hand over lists, and a spec must
    stay hashable to be a Flax module attribute.
    """
    for name in names:
        value = getattr(spec, name)
        if value is not None:
            object.__setattr__(spec, name, tuple(value))


def batch_norm(norm, train, *, dtype=None, param_dtype=jnp.float32, scale_init=None, name=None):
    """BatchNorm factory: running averages when not training or when `norm.frozen`.

    No axis_name: under jax.jit with a sharded batch the statistics are already global.
    """
    kwargs = {} if scale_init is None else {"scale_init": scale_init}
    return nn.BatchNorm(
        use_running_average=(not train) or norm.frozen,
        momentum=norm.momentum,
        epsilon=norm.epsilon,
        dtype=dtype,
        param_dtype=param_dtype,
        name=name,
        **kwargs,
    )


class ConvBN(nn.Module):
    """Conv (no bias) -> BatchNorm -> optional ReLU; submodules 'conv' and 'bn'.

    The Caffe ResNets use this unit everywhere (conv, BatchNorm + Scale layers, ReLU); the names
    follow kazuto1011/deeplab-pytorch's `_ConvBnReLU` so weight import maps one to one.
    With `norm.folded` (inference only) the BatchNorm is already in the conv's kernel and bias.
    """

    features: int
    kernel_size: int = 3
    stride: int = 1
    rate: int = 1
    groups: int = 1
    relu: bool = True
    norm: NormConfig = NormConfig()
    bn_scale_init: Any = None
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, train=False):
        if self.norm.folded and train:
            raise ValueError(
                "this model's BatchNorm is folded into its convolutions (inference.prepare); "
                "train the model returned by models.get_model instead")
        x = Conv(
            self.features, self.kernel_size, stride=self.stride, rate=self.rate,
            groups=self.groups, use_bias=self.norm.folded, dtype=self.dtype,
            param_dtype=self.param_dtype, name="conv",
        )(x)
        if self.norm.folded:
            return nn.relu(x) if self.relu else x
        x = batch_norm(
            self.norm, train, dtype=self.dtype, param_dtype=self.param_dtype,
            scale_init=self.bn_scale_init, name="bn",
        )(x)
        return nn.relu(x) if self.relu else x


def pooled_size(size, window, stride, padding, ceil_mode):
    """Output length of a pooling layer; ceil_mode=True is Caffe's rule (also PyTorch ceil_mode).

    Caffe rounds up but drops a last window that would start in the right padding.
    """
    span = size + 2 * padding - window
    if span < 0:
        raise ValueError(f"pooling window {window} larger than padded input {size + 2 * padding}")
    if not ceil_mode:
        return span // stride + 1
    out = -(-span // stride) + 1
    if padding > 0 and (out - 1) * stride >= size + padding:
        out -= 1
    return out


def _pool_padding(size, window, stride, padding, ceil_mode):
    out = pooled_size(size, window, stride, padding, ceil_mode)
    # Right padding so that exactly `out` windows fit (ceil mode may need more than `padding`).
    high = max((out - 1) * stride + window - size - padding, 0)
    return out, (padding, high)


def max_pool(x_BxHxWxC, window=3, stride=2, padding=1, ceil_mode=True):
    """Max pooling where padded cells never win (Caffe/PyTorch), with Caffe's size rule."""
    _, height, width, _ = x_BxHxWxC.shape
    _, pad_h = _pool_padding(height, window, stride, padding, ceil_mode)
    _, pad_w = _pool_padding(width, window, stride, padding, ceil_mode)
    # A Python scalar init lets JAX recognise the max monoid (reduce_window_max), which has a
    # gradient; an array init would select the generic reduce_window, which has none.
    return jax.lax.reduce_window(
        x_BxHxWxC, -jnp.inf, jax.lax.max, (1, window, window, 1), (1, stride, stride, 1),
        ((0, 0), pad_h, pad_w, (0, 0)),
    )


def _caffe_avg_counts(size, window, stride, padding, out):
    """Caffe's per-window divisor: the window clipped to [-pad, size + pad), padding included."""
    starts = np.arange(out) * stride - padding
    ends = np.minimum(starts + window, size + padding)
    return (ends - starts).astype(np.float32)


def avg_pool(x_BxHxWxC, window=3, stride=1, padding=1, ceil_mode=True):
    """Average pooling with Caffe's divisor (zeros of the padding count, cells beyond do not)."""
    _, height, width, _ = x_BxHxWxC.shape
    out_h, pad_h = _pool_padding(height, window, stride, padding, ceil_mode)
    out_w, pad_w = _pool_padding(width, window, stride, padding, ceil_mode)
    summed = jax.lax.reduce_window(
        x_BxHxWxC, 0.0, jax.lax.add, (1, window, window, 1),
        (1, stride, stride, 1), ((0, 0), pad_h, pad_w, (0, 0)),
    )
    counts_hxw = np.outer(
        _caffe_avg_counts(height, window, stride, padding, out_h),
        _caffe_avg_counts(width, window, stride, padding, out_w),
    )
    return summed / jnp.asarray(counts_hxw, summed.dtype).reshape((1, out_h, out_w, 1))


def check_rates(rates: Sequence[int], what: str):
    """Validates a tuple of atrous rates (positive ints)."""
    rates = tuple(rates)
    if not rates or any((not isinstance(r, (int, np.integer))) or r < 1 for r in rates):
        raise ValueError(f"{what} must be a non-empty tuple of positive ints, got {rates!r}")
    return rates
