"""Gradient accumulation over micro-batches: the paper's batch 10/20 on small accelerators.

DeepLab-v2 (§4.1.2) trains with batch 10 (20 for some runs), which does not fit a small
accelerator at crop 321 with ResNet-101; Caffe's `iter_size` accumulated gradients over several
forward/backward passes. Here one jitted step scans over `n` micro-batches and applies a single
optimizer update, so the learning-rate schedule, weight decay and momentum see one step per batch.

Exactness. The loss is a mean over valid (non-ignored, class-weighted) label positions of the whole
batch. Micro-batch i has loss S_i / w_i (its sum over its own w_i valid positions; w_i is
`losses.loss_denominator`); weighting it by
w_i / sum_j w_j gives sum_i S_i / sum_j w_j, the large-batch loss, and by linearity its gradient.
So with frozen BatchNorm (the paper's setting: `use_global_stats`) and no dropout the accumulated
step equals the large-batch step up to float summation order (tested). With MSC (§4.1.2) the
weights are those of the scale-1 score map; the smaller branches' terms are then weighted
approximately (their valid counts scale alike).

BatchNorm (trainable, e.g. the demo models): the forward pass normalises each micro-batch with its
own statistics, as any accumulation does (a known difference from the large batch; it is what
Caffe's iter_size did too). The running averages are updated once per step with the mean over
micro-batches of each micro-batch's update from the same starting point: for the running mean this
equals the large-batch update exactly (equal-sized micro-batches: the mean of the micro-batch
means is the batch mean); the running variance is the mean of the micro-batch variances, smaller
than the batch variance by the variance of the micro-batch means.
"""

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P

from deeplab_jax import losses
from deeplab_jax.parallel.mesh import DATA_AXIS


def check_accumulation(global_batch_size: int, accum_steps: int, mesh) -> None:
    devices = mesh.devices.size
    if accum_steps < 1:
        raise ValueError(f"config.grad_accum_steps={accum_steps} must be >= 1")
    if global_batch_size % (accum_steps * devices):
        raise ValueError(
            f"config.batch_size={global_batch_size} must be a multiple of config.grad_accum_steps "
            f"x devices = {accum_steps} x {devices} = {accum_steps * devices}, so that every "
            "micro-batch splits evenly over the devices")


def split_micro_batches(array_BxD, accum_steps: int, mesh=None):
    """(B, ...) -> (n, B / n, ...): micro-batch i holds rows i, i + n, i + 2n, ...

    Interleaving keeps every micro-batch spread over all devices with no data movement: a device
    holding B / D consecutive rows (a multiple of n) holds B / (D n) rows of every micro-batch.
    """
    batch = array_BxD.shape[0]
    rows = array_BxD.reshape((batch // accum_steps, accum_steps) + array_BxD.shape[1:])
    micro = jnp.swapaxes(rows, 0, 1)
    if mesh is not None:
        spec = P(None, DATA_AXIS, *([None] * (micro.ndim - 2)))
        micro = jax.lax.with_sharding_constraint(micro, NamedSharding(mesh, spec))
    return micro


def accumulate(loss_and_grads, params, batch_stats, images, labels, rng, *, accum_steps,
               logits_hw, num_classes, loss_config: losses.LossConfig, mesh=None):
    """Scans `loss_and_grads` over micro-batches; returns the combined step quantities.

    loss_and_grads(params, batch_stats, images, labels, rng) ->
        (loss, new_batch_stats, correct_pixels, valid_pixels, grads).
    Returns (loss, batch_stats, correct, valid, grads) of the whole batch (see module docstring).
    """
    images_n = split_micro_batches(images, accum_steps, mesh)
    labels_n = split_micro_batches(labels, accum_steps, mesh)
    weights_n = jax.vmap(lambda lab: losses.loss_denominator(lab, logits_hw, num_classes,
                                                             loss_config))(labels_n)
    total = jnp.sum(weights_n)
    # No valid pixel anywhere: every micro-batch loss is 0; any weights give the right answer.
    scales_n = jnp.where(total > 0, weights_n / jnp.maximum(total, 1e-6), 1.0 / accum_steps)

    def body(carry, inputs):
        loss_sum, stats_delta, correct_sum, valid_sum, grad_sum = carry
        index, images_i, labels_i, scale = inputs
        loss, stats, correct, valid, grads = loss_and_grads(
            params, batch_stats, images_i, labels_i, jax.random.fold_in(rng, index))
        grad_sum = jax.tree.map(lambda acc, g: acc + scale * g, grad_sum, grads)
        stats_delta = jax.tree.map(lambda acc, new, old: acc + (new - old), stats_delta, stats,
                                   batch_stats)
        return (loss_sum + scale * loss, stats_delta, correct_sum + correct, valid_sum + valid,
                grad_sum), None

    zeros = jax.tree.map(jnp.zeros_like, params)
    init = (jnp.zeros((), jnp.float32), jax.tree.map(jnp.zeros_like, batch_stats),
            jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32), zeros)
    (loss, stats_delta, correct, valid, grads), _ = jax.lax.scan(
        body, init, (jnp.arange(accum_steps), images_n, labels_n, scales_n))
    # Frozen BN: every delta is exactly 0, so the statistics come back bit for bit.
    new_stats = jax.tree.map(lambda old, delta: old + delta / accum_steps, batch_stats,
                             stats_delta)
    return loss, new_stats, correct, valid, grads
