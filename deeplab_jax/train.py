"""train_and_evaluate(config, workdir): the DeepLab training loop (paper 002, §4.1.2).

mesh -> abstract state -> jit(init, out_shardings) -> restore (state + data position) -> loop of one
jitted, donated train step over globally sharded uint8 batches (normalised inside the model) ->
periodic evaluation (mIoU, per-class IoU, overlays), checkpoints and logs (TensorBoard,
metrics.jsonl, config.json) -> predictions for a few val images. A second run in the same workdir
resumes from the last checkpoint and continues with exactly the same batches.

Scale-out: the same loop runs in every process of a multi-host job (distributed.py initialises
JAX's runtime first): each process feeds its own shard of the data, the jitted step and the
evaluation's confusion matrices are global (summed over all devices), orbax writes one checkpoint
from all processes, and only process 0 writes logs, overlays and predictions. Parameters may be
sharded by config (partitioning.py), activations computed in bfloat16 and backbone blocks
rematerialised (model overrides), and a batch accumulated over micro-batches (accumulation.py).
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

from deeplab_jax import accumulation, checkpoint, losses, pointrend_loss, sharding, train_state
from deeplab_jax.data import input_pipeline
from deeplab_jax.evaluate import Evaluator, write_val_predictions
from deeplab_jax.metric_writer import MetricWriter

INIT_IMAGE_SIZE = (65, 65)  # parameters do not depend on the image size; a small dummy is cheaper


def make_train_step(model, tx, schedule, config, mesh=None):
    """The jitted step: forward (all MSC branches), loss, gradients, update; returns metrics.

    With config.grad_accum_steps = n > 1 the batch is split into n micro-batches whose gradients
    are accumulated before one update (accumulation.py: exact for frozen BN; BN statistics are
    per micro-batch otherwise). `mesh` pins the micro-batches' sharding (optional).
    """
    class_weights = tuple(config.loss.class_weights) or None
    label_mode = config.loss.label_mode
    accum_steps = int(config.get("grad_accum_steps", 1) or 1)
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
                loss = pointrend_loss.pointrend_loss(outputs, labels, label_mode=label_mode,
                                                     class_weights=class_weights)
            else:
                (fused, branches), updates = model.apply(
                    variables, images, train=True, return_branches=True, rngs={"dropout": rng},
                    mutable=["batch_stats"])
                loss = losses.msc_loss(fused, branches, labels, label_mode=label_mode,
                                       class_weights=class_weights)
            return loss, (updates.get("batch_stats", batch_stats), fused)

        (loss, (new_stats, fused)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        target = losses.labels_for_logits(labels, fused.shape[1:3])
        valid = target != 255
        correct = (jnp.argmax(fused, axis=-1) == target) & valid
        return loss, new_stats, jnp.sum(correct, dtype=jnp.int32), jnp.sum(valid, dtype=jnp.int32), \
            grads

    def train_step(state, batch, rng):
        step_rng = jax.random.fold_in(rng, state.step)
        if accum_steps == 1:
            loss, batch_stats, correct, valid, grads = loss_and_grads(
                state.params, state.batch_stats, batch["image"], batch["label"], step_rng)
        else:
            micro_shape = (batch["image"].shape[0] // accum_steps,) + batch["image"].shape[1:]
            logits, _ = jax.eval_shape(  # the training logits' shape (PointRend: coarse)
                lambda images: model.apply(state.variables(), images, train=True,
                                           rngs={"dropout": step_rng}, mutable=["batch_stats"]),
                jax.ShapeDtypeStruct(micro_shape, batch["image"].dtype))
            logits_hw, num_classes = logits.shape[1:3], logits.shape[-1]
            loss, batch_stats, correct, valid, grads = accumulation.accumulate(
                loss_and_grads, state.params, state.batch_stats, batch["image"], batch["label"],
                step_rng, accum_steps, logits_hw, num_classes, label_mode=label_mode,
                class_weights=class_weights, mesh=mesh)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = jax.tree.map(lambda p, u: p + u, state.params, updates)
        metrics = {
            "loss": loss,
            "learning_rate": schedule(state.step),
            "grad_norm": jnp.sqrt(sum(jnp.sum(g.astype(jnp.float32) ** 2)
                                      for g in jax.tree.leaves(grads))),
            "pixel_accuracy": correct / jnp.maximum(valid, 1),
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
    accumulation.check_accumulation(config.batch_size, int(config.get("grad_accum_steps", 1)),
                                    mesh)
    logging.info("process %d of %d: %d local of %d devices (%s)", jax.process_index(),
                 jax.process_count(), jax.local_device_count(), jax.device_count(),
                 jax.default_backend())

    descriptor = train_state.dataset_descriptor(config)
    train_source = train_state.load_source(config, descriptor, descriptor.train_split)
    eval_source = train_state.load_source(config, descriptor, descriptor.eval_split)
    logging.info("data: %s train, %s eval", train_source, eval_source)

    model = train_state.create_model(config, descriptor)
    tx, schedule = train_state.create_optimizer(config, model, INIT_IMAGE_SIZE)
    rules, fsdp_min_size = train_state.sharding_rules(config)
    abstract, state_shardings = train_state.abstract_and_sharding(
        model, tx, INIT_IMAGE_SIZE, mesh, rules, fsdp_min_size)

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
        state = train_state.create_state(model, tx, INIT_IMAGE_SIZE, mesh, config.seed, rules,
                                         fsdp_min_size)
        if config.model.init_checkpoint:
            state = _load_init_weights(state, config.model.init_checkpoint, state_shardings)
    elif data_state:
        train_iter.set_state(data_state)
    logging.info("model %s: %d parameters; starting at step %d of %d", config.model.name,
                 train_state.parameter_count(state.params), start_step, config.num_steps)
    writer.write_scalars(start_step, {"parameters": train_state.parameter_count(state.params)},
                         split="model")

    step_fn = jax.jit(
        make_train_step(model, tx, schedule, config, mesh),
        in_shardings=(state_shardings, sharding.batch_sharding(mesh), sharding.replicated(mesh)),
        out_shardings=(state_shardings, sharding.replicated(mesh)),
        donate_argnums=(0,))
    evaluator = Evaluator(train_state.create_model(config, descriptor, for_eval=True), mesh,
                          descriptor, config)
    # Overlays and val predictions are drawn by process 0 alone; with several processes it must
    # not run a program over the global (all-process) arrays, so it gets a process-local copy.
    num_overlays = evaluator.num_overlays
    if jax.process_count() > 1:
        evaluator.num_overlays = 0
    rng = jax.random.key(config.seed + 1)

    progress = tqdm(total=config.num_steps, initial=start_step, desc="train", unit="step",
                    disable=not (config.progress_bar and sys.stderr.isatty()
                                 and jax.process_index() == 0), dynamic_ncols=True)
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
            variables = _eval_variables(state, mesh, rules)
            eval_results = evaluator.evaluate_and_log(variables, eval_source, writer, step)
            if num_overlays and not evaluator.num_overlays and jax.process_index() == 0:
                writer.write_images(step, evaluator.overlays(
                    _process_local(variables), eval_source, num_overlays))
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
        eval_results = evaluator.evaluate_and_log(_eval_variables(state, mesh, rules),
                                                  eval_source, writer, start_step)
    if config.predict.num_images:
        write_val_predictions(evaluator, _process_local(_eval_variables(state, mesh, rules)),
                              eval_source, os.path.join(workdir, "predictions"),
                              config.predict.num_images)
    writer.close()
    manager.close()
    return eval_results


def _eval_variables(state, mesh, rules):
    """Variables laid out as the Evaluator's jitted functions expect them: replicated.

    Sharded parameters (config.sharding) are all-gathered once per evaluation.
    """
    variables = state.variables()
    if rules:
        variables = jax.jit(lambda v: v, out_shardings=sharding.replicated(mesh))(variables)
    return variables


def _process_local(variables):
    """This process's copy of replicated variables as host arrays (one process: unchanged)."""
    if jax.process_count() == 1:
        return variables
    return jax.tree.map(lambda array: np.asarray(array.addressable_data(0)), variables)


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
