"""train_and_evaluate(config, workdir): the DeepLab training loop (paper 002, §4.1.2).

mesh -> abstract state -> jit(init, out_shardings) -> restore (state + data position) -> loop of one
jitted, donated train step over globally sharded uint8 batches (normalised inside the model) ->
periodic evaluation (mIoU, per-class IoU, overlays), checkpoints and logs (TensorBoard,
metrics.jsonl, config.json) -> predictions for a few val images. A second run in the same workdir
resumes from the last checkpoint and continues with exactly the same batches.
"""

import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from tqdm import tqdm

from deeplab_jax import checkpoint, losses, sharding, train_state
from deeplab_jax.data import input_pipeline
from deeplab_jax.evaluate import Evaluator, write_val_predictions
from deeplab_jax.metric_writer import MetricWriter

INIT_IMAGE_SIZE = (65, 65)  # parameters do not depend on the image size; a small dummy is cheaper


def make_train_step(model, tx, schedule, config):
    """The jitted step: forward (all MSC branches), loss, gradients, update; returns metrics."""
    class_weights = tuple(config.loss.class_weights) or None
    label_mode = config.loss.label_mode

    def train_step(state, batch, rng):
        step_rng = jax.random.fold_in(rng, state.step)

        def loss_fn(params):
            variables = {"params": params}
            if state.batch_stats:
                variables["batch_stats"] = state.batch_stats
            (fused, branches), updates = model.apply(
                variables, batch["image"], train=True, return_branches=True,
                rngs={"dropout": step_rng}, mutable=["batch_stats"])
            loss = losses.msc_loss(fused, branches, batch["label"], label_mode=label_mode,
                                   class_weights=class_weights)
            return loss, (updates.get("batch_stats", state.batch_stats), fused)

        (loss, (batch_stats, fused)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = jax.tree.map(lambda p, u: p + u, state.params, updates)
        labels = losses.labels_for_logits(batch["label"], fused.shape[1:3])
        valid = labels != 255
        correct = (jnp.argmax(fused, axis=-1) == labels) & valid
        metrics = {
            "loss": loss,
            "learning_rate": schedule(state.step),
            "grad_norm": jnp.sqrt(sum(jnp.sum(g.astype(jnp.float32) ** 2)
                                      for g in jax.tree.leaves(grads))),
            "pixel_accuracy": jnp.sum(correct) / jnp.maximum(jnp.sum(valid), 1),
        }
        new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                                  opt_state=opt_state)
        return new_state, metrics

    return train_step


def _write_config(config, workdir):
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "config.json"), "w", encoding="utf-8") as handle:
            handle.write(config.to_json_best_effort(indent=2))


def train_and_evaluate(config, workdir: str) -> dict:
    """Trains config.num_steps steps (resuming if a checkpoint exists); returns the last eval."""
    os.makedirs(workdir, exist_ok=True)
    _write_config(config, workdir)
    writer = MetricWriter(workdir)
    mesh = sharding.create_mesh()
    sharding.check_batch_size(config.batch_size, mesh)
    sharding.check_batch_size(config.eval.batch_size, mesh)

    descriptor = train_state.dataset_descriptor(config)
    train_source = train_state.load_source(config, descriptor, descriptor.train_split)
    eval_source = train_state.load_source(config, descriptor, descriptor.eval_split)
    logging.info("data: %s train, %s eval", train_source, eval_source)

    model = train_state.create_model(config, descriptor)
    tx, schedule = train_state.create_optimizer(config, model, INIT_IMAGE_SIZE)
    abstract, state_shardings = train_state.abstract_and_sharding(model, tx, INIT_IMAGE_SIZE, mesh)

    dataset = input_pipeline.create_train_dataset(
        train_source, global_batch_size=config.batch_size,
        crop_size=train_state.crop_size(config, descriptor), seed=config.seed,
        scale_range=tuple(config.input.scale_range), flip=config.input.flip,
        pad_value=tuple(config.input.pad_value), ignore_label=descriptor.ignore_label,
        worker_count=config.input.worker_count, read_threads=config.input.read_threads)
    train_iter = iter(dataset)

    manager = checkpoint.create_manager(workdir, keep=config.keep_checkpoints)
    state, data_state, start_step = checkpoint.restore_latest(manager, abstract)
    if state is None:
        state = train_state.create_state(model, tx, INIT_IMAGE_SIZE, mesh, config.seed)
        if config.model.init_checkpoint:
            state = _load_init_weights(state, config.model.init_checkpoint, state_shardings)
    elif data_state:
        train_iter.set_state(data_state)
    logging.info("model %s: %d parameters; starting at step %d of %d", config.model.name,
                 train_state.parameter_count(state.params), start_step, config.num_steps)
    writer.write_scalars(start_step, {"parameters": train_state.parameter_count(state.params)},
                         split="model")

    step_fn = jax.jit(
        make_train_step(model, tx, schedule, config),
        in_shardings=(state_shardings, sharding.batch_sharding(mesh), sharding.replicated(mesh)),
        out_shardings=(state_shardings, sharding.replicated(mesh)),
        donate_argnums=(0,))
    evaluator = Evaluator(model, mesh, descriptor, config)
    rng = jax.random.key(config.seed + 1)

    progress = tqdm(total=config.num_steps, initial=start_step, desc="train", unit="step",
                    disable=not (config.progress_bar and sys.stderr.isatty()), dynamic_ncols=True)
    pending = None  # (step, metrics) of the previous step, read after the next is dispatched
    history = []
    eval_results = {}
    timer = time.perf_counter()
    for step in range(start_step + 1, config.num_steps + 1):
        batch = sharding.global_batch(next(train_iter), mesh)
        state, metrics = step_fn(state, batch, rng)
        if pending is not None:
            history.append(_check_finite(*pending))
        pending = (step, metrics)
        progress.update(1)
        is_last = step == config.num_steps
        if step % config.log_every_steps == 0 or is_last:
            history.append(_check_finite(*pending))
            pending = None
            summary = {k: float(np.mean([h[k] for h in history])) for k in history[0]}
            elapsed = time.perf_counter() - timer
            summary["steps_per_second"] = len(history) / max(elapsed, 1e-9)
            summary["images_per_second"] = summary["steps_per_second"] * config.batch_size
            writer.write_scalars(step, summary, split="train")
            progress.set_postfix(loss=f"{summary['loss']:.3f}")
            logging.info("step %d: %s", step, {k: round(v, 4) for k, v in summary.items()})
            history, timer = [], time.perf_counter()
        if step % config.eval.every_steps == 0 or is_last:
            eval_results = evaluator.evaluate_and_log(state.variables(), eval_source, writer, step)
            progress.write(f"step {step}: val mIoU {eval_results['miou']:.4f}")
            timer = time.perf_counter()  # evaluation time is not training speed
        if step % config.checkpoint_every_steps == 0 or is_last:
            checkpoint.save(manager, step, state, train_iter.get_state(), force=is_last)
    if pending is not None:
        _check_finite(*pending)
    progress.close()
    manager.wait_until_finished()
    if not eval_results and start_step >= config.num_steps:
        logging.info("training already finished at step %d; evaluating", start_step)
        eval_results = evaluator.evaluate_and_log(state.variables(), eval_source, writer,
                                                  start_step)
    if config.predict.num_images:
        write_val_predictions(evaluator, state.variables(), eval_source,
                              os.path.join(workdir, "predictions"), config.predict.num_images)
    writer.close()
    manager.close()
    return eval_results


def _check_finite(step, metrics):
    values = {k: float(v) for k, v in jax.device_get(metrics).items()}
    if not np.isfinite(values["loss"]):
        raise FloatingPointError(
            f"non-finite loss {values['loss']} at step {step}: lower config.optim.base_lr, enable "
            "config.optim.grad_clip_norm, or check the labels (values must be < num_classes or 255)")
    return values


def _load_init_weights(state, path, state_shardings):
    """Starts from converted published weights (deeplab_jax.weights) where names and shapes match."""
    from deeplab_jax import weights  # optional path: only needed when init_checkpoint is set

    variables = weights.load_variables(path)
    params = weights.merge_into(state.params, variables.get("params", {}))
    batch_stats = weights.merge_into(state.batch_stats, variables.get("batch_stats", {}))
    state = state.replace(params=params, batch_stats=batch_stats)
    return jax.device_put(state, state_shardings)
