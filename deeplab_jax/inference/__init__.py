"""Test-time inference, shared by evaluation, prediction and export: scores at the input size,
multi-scale inputs with flips, sliding windows (`modes`); `prepare` specialises a model for
inference (BatchNorm folded into the convolutions)."""

from deeplab_jax.inference.modes import (
    FUSIONS,
    TestTimeOptions,
    logits_at_input_size,
    multiscale_logits,
    predict_logits,
    sliding_window_logits,
    window_starts,
)
from deeplab_jax.inference.prepare import prepare, prepare_if_unfolded

__all__ = [
    "FUSIONS",
    "TestTimeOptions",
    "logits_at_input_size",
    "multiscale_logits",
    "predict_logits",
    "prepare",
    "prepare_if_unfolded",
    "sliding_window_logits",
    "window_starts",
]
