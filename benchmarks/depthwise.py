"""Depthwise convolutions: XLA's grouped convolution against shifted copies, beside PyTorch.

    python benchmarks/depthwise.py [--batch 2] [--model_crop 129] [--repeats 5]
    python benchmarks/depthwise.py --smoke   # tiny shapes, one repeat (benchmarks/accelerator.py)

Xception-65 (DeepLab-v3+) spends its 3x3 convolutions in depthwise form (feature_group_count =
channels). On XLA:CPU these run through a slow generic path, so `layers.conv2d` writes them as a
sum of k*k shifted, scaled copies of the input (`layers.depthwise_taps`) when the program is
lowered for a CPU. This script times, on JAX's default device, for each depthwise shape of
Xception-65 at crop 513 (output stride 16) and batch `--batch`:
- "conv": XLA's grouped convolution (`feature_group_count=C`); "taps": `layers.depthwise_taps`
  (both through `layers.conv2d`, its platform setting switched);
- PyTorch's `conv2d(groups=C)` (channels-last) on the same device, when torch is installed;
forward, and forward + backward (gradients of the input and the kernel), milliseconds per call,
the median of `--repeats` after a compiling call. Then the whole DeepLab-v3+ Xception-65 train
step (forward, loss, gradients; batch `--batch`, crop `--model_crop`) with each form.
"""

import argparse
import contextlib
import os
import statistics
import sys
import time

import numpy as np

# Runnable from a checkout without installing the package.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# (height = width, channels, stride, rate) of Xception-65's depthwise convs at 513, OS 16: entry
# flow blocks 1-3, middle flow, exit flow (rate 2), the separable ASPP (rate 12 of 6/12/18) and
# the decoder.
SHAPES = ((257, 128, 1, 1), (257, 128, 2, 1), (129, 256, 1, 1), (65, 728, 1, 1),
          (33, 728, 1, 1), (33, 1536, 1, 2), (33, 2048, 1, 12), (129, 304, 1, 1))


def median_ms(fn, sync, repeats):
    sync(fn())  # compilation
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        sync(fn())
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


@contextlib.contextmanager
def depthwise_form(impl):
    """Programs traced inside compute depthwise convolutions as `impl` on every platform: "conv"
    (XLA's grouped convolution) or "taps" (shifted copies), through `layers.conv2d`'s setting."""
    from deeplab_jax.models import layers

    platforms = layers.DEPTHWISE_TAPS_PLATFORMS
    layers.DEPTHWISE_TAPS_PLATFORMS = () if impl == "conv" else ("cpu", "cuda", "rocm", "tpu")
    try:
        yield
    finally:
        layers.DEPTHWISE_TAPS_PLATFORMS = platforms


def jax_times(impl, batch, size, channels, stride, rate, dtype, repeats):
    import jax
    import jax.numpy as jnp

    from deeplab_jax.models import layers

    def conv(x, k):
        return layers.conv2d(x, k, stride, rate, ((rate, rate), (rate, rate)), groups=channels)

    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(batch, size, size, channels)), dtype)
    k = jnp.asarray(rng.normal(size=(3, 3, 1, channels)), dtype)
    sync = jax.block_until_ready
    with depthwise_form(impl):  # both programs are traced (and compiled) on their first call
        forward = jax.jit(conv)
        grads = jax.jit(jax.grad(lambda a, b: jnp.sum(conv(a, b).astype(jnp.float32) ** 2),
                                 (0, 1)))
        return (median_ms(lambda: forward(x, k), sync, repeats),
                median_ms(lambda: grads(x, k), sync, repeats))


def torch_times(batch, size, channels, stride, rate, dtype, repeats):
    import torch

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch_dtype = getattr(torch, dtype)
    x = torch.randn(batch, channels, size, size, device=device, dtype=torch_dtype)
    x = x.contiguous(memory_format=torch.channels_last).requires_grad_(True)
    k = torch.randn(channels, 1, 3, 3, device=device, dtype=torch_dtype, requires_grad=True)

    def forward():
        with torch.no_grad():
            return torch.nn.functional.conv2d(x, k, None, stride, rate, rate, channels)

    def backward():
        y = torch.nn.functional.conv2d(x, k, None, stride, rate, rate, channels)
        return torch.autograd.grad((y.float() ** 2).sum(), (x, k))

    def sync(_):
        if device.type == "cuda":
            torch.cuda.synchronize()

    return median_ms(forward, sync, repeats), median_ms(backward, sync, repeats)


def model_step_ms(impl, batch, crop, dtype, repeats):
    """ms per DeepLab-v3+ Xception-65 train step (gradients only) with depthwise `impl`."""
    import jax
    import jax.numpy as jnp

    from deeplab_jax import losses, models

    with depthwise_form(impl):
        model = models.get_model("deeplab_v3plus_xception65", 21, dtype=getattr(jnp, dtype))
        rng = np.random.default_rng(0)
        images = jnp.asarray(rng.integers(0, 256, (batch, crop, crop, 3)), jnp.uint8)
        labels = jnp.asarray(rng.integers(0, 21, (batch, crop, crop)), jnp.int32)
        keys = {"params": jax.random.key(0, impl="rbg"), "dropout": jax.random.key(1)}
        variables = jax.jit(lambda x: model.init(keys, x, train=False))(images[:1])

        def loss(params):
            logits, _ = model.apply({**variables, "params": params}, images, train=True,
                                    rngs={"dropout": keys["dropout"]}, mutable=["batch_stats"])
            return losses.segmentation_loss(logits, labels)

        step = jax.jit(jax.grad(loss))
        return median_ms(lambda: step(variables["params"]), jax.block_until_ready, repeats)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--model_crop", type=int, default=129,
                        help="crop of the whole train step (0: skip it)")
    parser.add_argument("--smoke", action="store_true",
                        help="the strided and two atrous shapes at 1/8 the size and 1/16 the "
                             "channels, one repeat, no train step")
    args = parser.parse_args()
    shapes = SHAPES
    if args.smoke:
        shapes = [(size // 8 + 1, channels // 16, stride, min(rate, 3))
                  for size, channels, stride, rate in (SHAPES[1], SHAPES[5], SHAPES[6])]
        args.repeats, args.model_crop = 1, 0
    from deeplab_jax.parallel import xla_flags

    xla_flags.apply()  # as the command-line entry points do
    import jax

    try:
        import torch  # noqa: F401
        have_torch = True
    except ImportError:
        have_torch = False
    print(f"device: {jax.devices()[0].device_kind}; batch {args.batch}, {args.dtype}; "
          f"ms per call, forward / forward + backward")
    print("| input (HxWxC), stride, rate | conv | taps | taps / conv | PyTorch | taps / PyTorch |")
    print("|---|---|---|---|---|---|")
    for size, channels, stride, rate in shapes:
        shape = (args.batch, size, channels, stride, rate, args.dtype, args.repeats)
        conv = jax_times("conv", *shape)
        taps = jax_times("taps", *shape)
        ref = torch_times(*shape) if have_torch else None
        ratio = "n/a" if ref is None else (
            f"{taps[0] / ref[0]:.2f}x / {taps[1] / ref[1]:.2f}x")
        shown = "n/a" if ref is None else f"{ref[0]:.1f} / {ref[1]:.1f}"
        print(f"| {size}x{size}x{channels}, {stride}, {rate} | {conv[0]:.1f} / {conv[1]:.1f} | "
              f"{taps[0]:.1f} / {taps[1]:.1f} | {taps[0] / conv[0]:.2f}x / "
              f"{taps[1] / conv[1]:.2f}x | {shown} | {ratio} |", flush=True)
    if args.model_crop:
        steps = {impl: model_step_ms(impl, args.batch, args.model_crop, args.dtype, args.repeats)
                 for impl in ("conv", "taps")}
        print(f"DeepLab-v3+ Xception-65 gradients, batch {args.batch}, crop {args.model_crop}: "
              f"conv {steps['conv']:.0f} ms, taps {steps['taps']:.0f} ms "
              f"({steps['taps'] / steps['conv']:.2f}x)")


if __name__ == "__main__":
    main()
