"""The jitted training step: forward (every MSC branch), loss, gradients, optimiser update.

One step is one pure function of (state, batch, rng), jitted once by the training loop with the
state's shardings and donated; BatchNorm statistics over the batch-sharded input are global under
jit (synchronised BN without an axis name). Losses follow the paper's recipe (`deeplab_jax.losses`:
DeepLab-v2 §4.1.2, MSC on every branch and the fusion; PointRend's coarse + point loss); with
`accum_steps` > 1 the batch is split into micro-batches whose gradients are accumulated before one
update (`accumulation.py`).
"""

import jax
import jax.numpy as jnp

from deeplab_jax import finite, losses
from deeplab_jax.train import accumulation


def _loss_and_grads_fn(model, loss_config: losses.LossConfig):
    """(params, batch_stats, images, labels, rng) -> (loss, batch_stats, correct, valid, grads)."""
    pointrend = getattr(model, "point_head", None) is not None

    def loss_and_grads(params, batch_stats, images, labels, rng):
        def loss_fn(params):
            variables = {"params": params}
            if batch_stats:
                variables["batch_stats"] = batch_stats
            if pointrend:
                # PointRend (Kirillov et al. §3.3): coarse loss + loss at uncertain points.
                dropout_rng, points_rng = jax.random.split(rng)
                outputs, updates = model.apply(
                    variables, images, train=True, return_points=True,
                    rngs={"dropout": dropout_rng, "points": points_rng}, mutable=["batch_stats"])
                fused = outputs["logits"]
                loss = losses.pointrend_loss(outputs, labels, loss_config)
            else:
                (fused, branches), updates = model.apply(
                    variables, images, train=True, return_branches=True, rngs={"dropout": rng},
                    mutable=["batch_stats"])
                loss = losses.msc_loss(fused, branches, labels, loss_config)
            return loss, (updates.get("batch_stats", batch_stats), fused)

        (loss, (new_stats, fused)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        # Pixel accuracy at the score map's positions, over the pixels the loss counts.
        target = losses.labels_for_logits(labels, fused.shape[1:3])
        weights, _ = losses.pixel_weights(target, fused.shape[-1], loss_config.ignore_label)
        valid = weights > 0
        correct = (jnp.argmax(fused, axis=-1) == target) & valid
        return (loss, new_stats, jnp.sum(correct, dtype=jnp.int32),
                jnp.sum(valid, dtype=jnp.int32), grads)

    return loss_and_grads


def global_norm(tree):
    """sqrt of the sum of squares of every leaf, in float32."""
    return jnp.sqrt(sum(jnp.sum(leaf.astype(jnp.float32) ** 2) for leaf in jax.tree.leaves(tree)))


def make_train_step(model, tx, schedule, *, loss_config: losses.LossConfig, accum_steps: int = 1,
                    mesh=None):
    """train_step(state, batch, rng) -> (new_state, metrics).

    metrics: loss, learning_rate, grad_norm, pixel_accuracy (scalars) and `finite`: a bool that
    is False when the loss, the gradient norm or any tensor of the new state is NaN or inf (one
    fused reduction over the state, read by the loop with the metrics, so a diverged state is
    caught at its step and never saved). `mesh` pins the micro-batches' sharding when
    accumulating (optional).
    """
    loss_and_grads = _loss_and_grads_fn(model, loss_config)

    def train_step(state, batch, rng):
        step_rng = jax.random.fold_in(rng, state.step)
        images, labels = batch["image"], batch["label"]
        if accum_steps == 1:
            loss, batch_stats, correct, valid, grads = loss_and_grads(
                state.params, state.batch_stats, images, labels, step_rng)
        else:
            micro_shape = (images.shape[0] // accum_steps,) + images.shape[1:]
            logits, _ = jax.eval_shape(  # the training logits' shape (PointRend: coarse)
                lambda x: model.apply(state.variables(), x, train=True,
                                      rngs={"dropout": step_rng}, mutable=["batch_stats"]),
                jax.ShapeDtypeStruct(micro_shape, images.dtype))
            loss, batch_stats, correct, valid, grads = accumulation.accumulate(
                loss_and_grads, state.params, state.batch_stats, images, labels, step_rng,
                accum_steps=accum_steps, logits_hw=logits.shape[1:3],
                num_classes=logits.shape[-1], loss_config=loss_config, mesh=mesh)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = jax.tree.map(lambda p, u: p + u, state.params, updates)
        new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                                  opt_state=opt_state)
        grad_norm = global_norm(grads)
        metrics = {
            "loss": loss,
            "learning_rate": schedule(state.step),
            "grad_norm": grad_norm,
            "pixel_accuracy": correct / jnp.maximum(valid, 1),
            "finite": finite.all_finite((loss, grad_norm, params, batch_stats, opt_state)),
        }
        return new_state, metrics

    return train_step
