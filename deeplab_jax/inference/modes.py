"""Test-time inference modes: full-resolution logits, multi-scale + flip, sliding window.

- Logits at the input size: bilinear upsampling of the output-stride score map with logit i on pixel
  i * os (DeepLab-v2 §3.1; the alignment `upsample_logits` keeps for every size).
- Multi-scale inputs with left-right flip: the image is resized to each scale (aligned corners,
  int((H - 1) s) + 1 pixels as the MSC branches), every score map is brought back to H x W, flipped
  maps are flipped back, and the maps are fused by averaging ('mean', the v3/v3+ evaluation, v3
  paper §4.3) or by the per-pixel maximum ('max', the v2 MSC fusion, DeepLab-v2 §3.2).
- Sliding window (DeepLab-v2 §4.4, Cityscapes at full 1024x2048 resolution): windows of a fixed
  size
  with a stride tile the image (the last window is moved to end at the border); window logits are
  summed where windows overlap and divided by the overlap count. Images smaller than the window
  are padded with the mean colour and cropped back.

Everything is static in shape, so each function jits once per image size.
"""

import dataclasses
from typing import Optional, Tuple

import jax.numpy as jnp

from deeplab_jax.data.datasets import PAD_RGB
from deeplab_jax.losses import infer_output_stride
from deeplab_jax.models.resize import resize_bilinear, scaled_size, upsample_logits

FUSIONS = ("mean", "max")


@dataclasses.dataclass(frozen=True)
class TestTimeOptions:
    """How scores are computed at test time: input scales and flip, fusion, sliding window."""

    scales: Tuple[float, ...] = (1.0,)
    flip: bool = False
    fusion: str = "mean"
    window_size: Optional[Tuple[int, int]] = None  # None = whole image
    window_stride: Optional[Tuple[int, int]] = None  # None = 2/3 of the window
    pad_value: Tuple[int, int, int] = PAD_RGB

    @classmethod
    def from_config(cls, config) -> "TestTimeOptions":
        """config.eval's test-time modes and config.input.pad_value."""
        return cls(scales=tuple(float(s) for s in config.eval.scales),
                   flip=bool(config.eval.flip), fusion=config.eval.fusion,
                   window_size=tuple(config.eval.window_size) or None,
                   window_stride=tuple(config.eval.window_stride) or None,
                   pad_value=tuple(config.input.pad_value))


def logits_at_input_size(model, variables, images_BxHxWx3):
    """Class scores (B, H, W, K) at the input resolution, float32."""
    logits = model.apply(variables, images_BxHxWx3, train=False)
    height, width = images_BxHxWx3.shape[1:3]
    stride = infer_output_stride(height, logits.shape[1])
    if stride is None or infer_output_stride(width, logits.shape[2]) != stride:
        stride = None  # sizes not on the stride grid: fall back to aligned-corner resizing
    return upsample_logits(logits, (height, width), output_stride=stride)


def multiscale_logits(model, variables, images_BxHxWx3, scales=(1.0,), flip=False,
                      fusion="mean"):
    """Fused class scores over input scales (and flips) at the input resolution."""
    if fusion not in FUSIONS:
        raise ValueError(f"fusion={fusion!r}; use one of {FUSIONS} (config.eval.fusion)")
    scales = tuple(float(s) for s in scales)
    if not scales or any(s <= 0 for s in scales):
        raise ValueError(f"scales={scales!r} must be positive (config.eval.scales)")
    height, width = images_BxHxWx3.shape[1:3]
    fused = None
    for scale in scales:
        if scale == 1.0:
            scaled = images_BxHxWx3
        else:
            size = (scaled_size(height, scale), scaled_size(width, scale))
            scaled = resize_bilinear(images_BxHxWx3.astype(jnp.float32), size, align_corners=True)
        for flipped in ((False, True) if flip else (False,)):
            inputs = scaled[:, :, ::-1] if flipped else scaled
            logits = logits_at_input_size(model, variables, inputs)
            if flipped:
                logits = logits[:, :, ::-1]
            if scale != 1.0:
                logits = resize_bilinear(logits, (height, width), align_corners=True)
            if fused is None:
                fused = logits
            elif fusion == "mean":
                fused = fused + logits
            else:
                fused = jnp.maximum(fused, logits)
    if fusion == "mean":
        fused = fused / (len(scales) * (2 if flip else 1))
    return fused


def window_starts(size, window, stride):
    """Window offsets covering [0, size): every `stride`, the last one ending at the border."""
    if window <= 0 or stride <= 0:
        raise ValueError(f"window {window} and stride {stride} must be positive "
                         "(config.eval.window_size / window_stride)")
    if size <= window:
        return [0]
    starts = list(range(0, size - window + 1, stride))
    if starts[-1] + window < size:
        starts.append(size - window)
    return starts


def sliding_window_logits(predict_fn, images_BxHxWx3, window, stride, pad_value=PAD_RGB):
    """Overlap-averaged class scores; predict_fn maps (N, wh, ww, 3) images to (N, wh, ww, K)."""
    window_h, window_w = window
    stride_h, stride_w = stride
    batch, height, width, _ = images_BxHxWx3.shape
    padded_h, padded_w = max(height, window_h), max(width, window_w)
    if (padded_h, padded_w) != (height, width):
        canvas = jnp.broadcast_to(jnp.asarray(pad_value, images_BxHxWx3.dtype),
                                  (batch, padded_h, padded_w, 3))
        images_BxHxWx3 = canvas.at[:, :height, :width].set(images_BxHxWx3)
    tops = window_starts(padded_h, window_h, stride_h)
    lefts = window_starts(padded_w, window_w, stride_w)
    crops = [images_BxHxWx3[:, t:t + window_h, l:l + window_w] for t in tops for l in lefts]
    # One model call over all windows (stacked on the batch axis) keeps the device busy.
    logits = predict_fn(jnp.concatenate(crops, axis=0))
    num_classes = logits.shape[-1]
    total = jnp.zeros((batch, padded_h, padded_w, num_classes), jnp.float32)
    count = jnp.zeros((1, padded_h, padded_w, 1), jnp.float32)
    index = 0
    for top in tops:
        for left in lefts:
            part = logits[index * batch:(index + 1) * batch]
            total = total.at[:, top:top + window_h, left:left + window_w].add(part)
            count = count.at[:, top:top + window_h, left:left + window_w].add(1.0)
            index += 1
    return (total / count)[:, :height, :width]


def predict_logits(model, variables, images_BxHxWx3, options: TestTimeOptions = TestTimeOptions()):
    """The evaluation's scores: multi-scale/flip, in a sliding window when window_size is set."""
    def predict(images):
        return multiscale_logits(model, variables, images, options.scales, options.flip,
                                 options.fusion)

    if not options.window_size:
        return predict(images_BxHxWx3)
    window = tuple(options.window_size)
    stride = (tuple(options.window_stride) if options.window_stride
              else tuple(max(1, (w * 2) // 3) for w in window))
    return sliding_window_logits(predict, images_BxHxWx3, window, stride, options.pad_value)
