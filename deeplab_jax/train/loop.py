"""train_and_evaluate(config, workdir): the DeepLab training loop (DeepLab-v2 §4.1.2).

mesh -> state setup (abstract state, shardings) -> restore (state + data position) or create ->
loop of one jitted, donated train step over globally sharded uint8 batches (normalised inside the
model) -> periodic evaluation (mIoU, per-class IoU, overlays), checkpoints and logs (TensorBoard,
metrics.jsonl, config.json) -> predictions for a few val images. A second run in the same workdir
resumes from the last checkpoint and continues with exactly the same batches.

Scale-out: the same loop runs in every process of a multi-host job (`parallel/distributed.py`
initialises JAX's runtime first): each process feeds its own shard of the data, the jitted step and
the evaluation's confusion matrices are global (summed over all devices), orbax writes one
checkpoint from all processes, and only process 0 writes logs, overlays and predictions.
Parameters may be sharded by config (`parallel/partitioning.py`), activations computed in bfloat16
and backbone blocks rematerialised (model overrides), and a batch accumulated over micro-batches.
"""

import os
import sys
import time

import jax
import numpy as np
from absl import logging
from tqdm import tqdm

from deeplab_jax import experiment, losses
from deeplab_jax.data import input_pipeline
from deeplab_jax.evaluation import report
from deeplab_jax.evaluation.evaluator import EvalSettings, Evaluator
from deeplab_jax.parallel import mesh as mesh_lib
from deeplab_jax.train import accumulation, checkpoint, init_weights
from deeplab_jax.train.metric_writer import MetricWriter
from deeplab_jax.train.state import parameter_count, setup_state
from deeplab_jax.train.step import make_train_step


def _write_config(config, workdir):
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "config.json"), "w", encoding="utf-8") as handle:
            handle.write(config.to_json_best_effort(indent=2))


def _check_batch_sizes(config, mesh):
    mesh_lib.check_batch_size(config.batch_size, mesh)
    mesh_lib.check_batch_size(config.eval.batch_size, mesh)
    accumulation.check_accumulation(config.batch_size, int(config.get("grad_accum_steps", 1)),
                                    mesh)


def train_and_evaluate(config, workdir: str) -> dict:
    """Trains config.num_steps steps (resuming if a checkpoint exists); returns the last eval."""
    os.makedirs(workdir, exist_ok=True)
    _write_config(config, workdir)
    mesh = mesh_lib.create_mesh()
    _check_batch_sizes(config, mesh)
    logging.info("process %d of %d: %d local of %d devices (%s)", jax.process_index(),
                 jax.process_count(), jax.local_device_count(), jax.device_count(),
                 jax.default_backend())
    writer = MetricWriter(workdir)
    try:
        return _train(config, workdir, mesh, writer)
    finally:
        writer.close()


def _train(config, workdir, mesh, writer):
    descriptor = experiment.dataset_descriptor(config)
    train_source = experiment.load_source(config, descriptor, descriptor.train_split)
    eval_source = experiment.load_source(config, descriptor, descriptor.eval_split)
    logging.info("data: %s train, %s eval", train_source, eval_source)

    setup = setup_state(config, experiment.create_model(config, descriptor), mesh)
    dataset = input_pipeline.create_train_dataset(
        train_source, global_batch_size=config.batch_size,
        crop_size=experiment.crop_size(config, descriptor), seed=config.seed,
        scale_range=tuple(config.input.scale_range), flip=config.input.flip,
        pad_value=tuple(config.input.pad_value), ignore_label=descriptor.ignore_label,
        worker_count=config.input.worker_count, read_threads=config.input.read_threads)
    train_iter = iter(dataset)

    manager = checkpoint.create_manager(workdir, keep=config.keep_checkpoints)
    state, data_state, start_step = checkpoint.restore_latest(manager, setup.abstract)
    if state is None:
        state = setup.create(config.seed)
        if config.model.init_checkpoint:
            state = init_weights.load_into(state, config.model.init_checkpoint, setup.shardings)
    elif data_state:
        train_iter.set_state(data_state)
    count = parameter_count(state.params)
    logging.info("model %s: %d parameters; starting at step %d of %d", config.model.name, count,
                 start_step, config.num_steps)
    writer.write_scalars(start_step, {"parameters": count}, split="model")

    loss_config = losses.LossConfig.from_config(config.loss, descriptor.ignore_label)
    step_fn = jax.jit(
        make_train_step(setup.model, setup.tx, setup.schedule, loss_config=loss_config,
                        accum_steps=int(config.get("grad_accum_steps", 1) or 1), mesh=mesh),
        in_shardings=(setup.shardings, mesh_lib.batch_sharding(mesh), mesh_lib.replicated(mesh)),
        out_shardings=(setup.shardings, mesh_lib.replicated(mesh)),
        donate_argnums=(0,))
    evaluator = Evaluator(experiment.create_model(config, descriptor, for_eval=True), mesh,
                          descriptor, EvalSettings.from_config(config, descriptor))
    rng = jax.random.key(config.seed + 1)

    def eval_variables():
        return _eval_variables(state, mesh, bool(setup.sharding_rules))

    progress = tqdm(total=config.num_steps, initial=start_step, desc="train", unit="step",
                    disable=not (config.progress_bar and sys.stderr.isatty()
                                 and jax.process_index() == 0), dynamic_ncols=True)
    pending = None  # (step, metrics) of the previous step, read after the next is dispatched
    history = []
    eval_results = {}
    timer = time.perf_counter()
    for step in range(start_step + 1, config.num_steps + 1):
        batch = mesh_lib.global_batch(next(train_iter), mesh)
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
            eval_results = _evaluate(evaluator, eval_variables(), eval_source, writer, step,
                                     config.eval.num_overlays)
            progress.write(f"step {step}: val mIoU {eval_results['miou']:.4f}")
            timer = time.perf_counter()  # evaluation time is not training speed
        if step % config.checkpoint_every_steps == 0 or is_last:
            checkpoint.save(manager, step, state, train_iter.get_state(), force=is_last)
    if pending is not None:
        _check_finite(*pending)
    progress.close()
    manager.wait_until_finished()
    manager.close()
    if not eval_results and start_step >= config.num_steps:
        logging.info("training already finished at step %d; evaluating", start_step)
        eval_results = _evaluate(evaluator, eval_variables(), eval_source, writer, start_step,
                                 config.eval.num_overlays)
    if config.predict.num_images:
        report.write_val_predictions(evaluator, _process_local(eval_variables()), eval_source,
                                     os.path.join(workdir, "predictions"),
                                     config.predict.num_images)
    return eval_results


def _evaluate(evaluator, variables, source, writer, step, num_overlays):
    results = evaluator.evaluate(variables, source)
    report.log_results(results, writer, step)
    if num_overlays and jax.process_index() == 0:
        # Drawn by process 0 alone: with several processes it must not run a program over the
        # global (all-process) arrays, so it draws from a process-local copy.
        writer.write_images(step, report.overlay_panels(
            evaluator, _process_local(variables), source, num_overlays))
    return results


def _eval_variables(state, mesh, sharded):
    """Variables laid out as the Evaluator's jitted functions expect them: replicated.

    Sharded parameters (config.sharding) are all-gathered once per evaluation.
    """
    variables = state.variables()
    if sharded:
        variables = jax.jit(lambda v: v, out_shardings=mesh_lib.replicated(mesh))(variables)
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
            "config.optim.grad_clip_norm, or check the labels (values must be < num_classes or "
            "the data set's ignore label)")
    return values
