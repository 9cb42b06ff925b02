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

Faults (README "Reliability"): each step returns an all-finite flag with its metrics, and the loop
reads a step's metrics before it logs, evaluates or saves that step, so a diverged step stops the
run (`NonFiniteError`) and its state is never saved; SIGTERM (preemption) or Ctrl-C stops the run
after the step in flight, with a checkpoint of that step (`stop_signals.py`; in a multi-process
job every process stops at the same step); resume skips
damaged checkpoints (`checkpoint.py`); a full disk is one `DiskFullError`; the checkpoint
manager, metric writer and input iterator are closed in `finally`. The workdir may be local or a
URL (gs://...).
"""

import sys
import time

import jax
import numpy as np
from absl import logging
from tqdm import tqdm

from deeplab_jax import experiment, losses, storage
from deeplab_jax.data import input_pipeline
from deeplab_jax.evaluation import report
from deeplab_jax.evaluation.evaluator import EvalSettings, Evaluator
from deeplab_jax.finite import NonFiniteError
from deeplab_jax.parallel import mesh as mesh_lib
from deeplab_jax.train import accumulation, checkpoint, init_weights, run_config, stop_signals
from deeplab_jax.train.metric_writer import MetricWriter
from deeplab_jax.train.state import parameter_count, setup_state
from deeplab_jax.train.step import make_train_step


def _check_batch_sizes(config, mesh):
    mesh_lib.check_batch_size(config.batch_size, mesh)
    mesh_lib.check_batch_size(config.eval.batch_size, mesh)
    accumulation.check_accumulation(config.batch_size, int(config.get("grad_accum_steps", 1)),
                                    mesh)


class _Resources:
    """What a run opens (checkpoints, metric writer, input iterator), closed in reverse order.

    Closing runs in `finally`: on an error every resource is still closed, and an error while
    closing is logged rather than raised, so the error that stopped the run stays the one
    reported (last) and no writer thread is left to fail at interpreter shutdown.
    """

    def __init__(self):
        self._closers = []

    def add(self, resource, close_name="close"):
        close = getattr(resource, close_name, None)
        if close is not None:
            self._closers.append((type(resource).__name__, close))
        return resource

    def close(self, failing: bool):
        first_error = None
        for name, close in reversed(self._closers):
            try:
                close()
            except Exception as error:  # noqa: BLE001 (reported below)
                if failing or first_error is not None:
                    logging.warning("while stopping, closing %s failed too: %s", name, error)
                else:
                    first_error = error
        self._closers = []
        if first_error is not None:
            raise first_error


def train_and_evaluate(config, workdir) -> dict:
    """Trains config.num_steps steps (resuming if a checkpoint exists); returns the last eval.

    `workdir` is a local directory or a URL (gs://bucket/run); everything is written through
    epath/orbax, never to a local copy of a URL.
    """
    workdir = storage.as_path(workdir)
    if jax.process_index() == 0:
        workdir.mkdir(parents=True, exist_ok=True)
    mesh = mesh_lib.create_mesh()
    _check_batch_sizes(config, mesh)
    logging.info("process %d of %d: %d local of %d devices (%s)", jax.process_index(),
                 jax.process_count(), jax.local_device_count(), jax.device_count(),
                 jax.default_backend())
    resources = _Resources()
    try:
        results = _train(config, workdir, mesh, resources)
    except BaseException:
        resources.close(failing=True)
        raise
    resources.close(failing=False)
    return results


def _train(config, workdir, mesh, resources):
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
    train_iter = resources.add(iter(dataset))

    checkpoints = resources.add(checkpoint.Checkpoints(workdir, keep=config.keep_checkpoints))
    try:
        state, data_state, start_step = checkpoints.restore_latest(setup.abstract)
    except checkpoint.CheckpointError as error:  # say what changed since the run that wrote them
        raise type(error)(run_config.explain(error, workdir, config)) from None
    # Only now: a refused resume keeps the run's own record.
    run_config.record(config, workdir, start_step if state is not None else 0)
    if state is None:
        state = setup.create(config.seed)
        if config.model.init_checkpoint:
            state = init_weights.load_into(state, config.model.init_checkpoint, setup.shardings)
    elif data_state:
        train_iter.set_state(data_state)
    # Records after the restored step belong to the interrupted run: they are replayed now.
    writer = resources.add(MetricWriter(workdir, resume_step=start_step if start_step else None))
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

    progress = resources.add(tqdm(
        total=config.num_steps, initial=start_step, desc="train", unit="step",
        disable=not (config.progress_bar and sys.stderr.isatty() and jax.process_index() == 0),
        dynamic_ncols=True))
    stops = resources.add(stop_signals.StopSignals().install())
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
        is_log = step % config.log_every_steps == 0 or is_last
        is_eval = step % config.eval.every_steps == 0 or is_last
        is_save = step % config.checkpoint_every_steps == 0 or is_last
        if is_log or is_eval or is_save:
            # This step's metrics (and its finite flag) are read before anything uses its state.
            history.append(_check_finite(*pending))
            pending = None
        if is_log:
            summary = {k: float(np.mean([h[k] for h in history])) for k in history[0]}
            elapsed = time.perf_counter() - timer
            summary["steps_per_second"] = len(history) / max(elapsed, 1e-9)
            summary["images_per_second"] = summary["steps_per_second"] * config.batch_size
            writer.write_scalars(step, summary, split="train")
            progress.set_postfix(loss=f"{summary['loss']:.3f}")
            logging.info("step %d: %s", step, {k: round(v, 4) for k, v in summary.items()})
            history, timer = [], time.perf_counter()
        if is_eval:
            eval_results = _evaluate(evaluator, eval_variables(), eval_source, writer, step,
                                     config.eval.num_overlays)
            progress.write(f"step {step}: val mIoU {eval_results['miou']:.4f}")
            timer = time.perf_counter()  # evaluation time is not training speed
        if is_log or is_eval or is_save:
            writer.flush()  # the logs of every step up to a checkpoint are on disk before it
        if is_save:
            checkpoints.save(step, state, train_iter.get_state(), force=is_last)
        if stops.should_stop(step) and not is_last:
            _stop_at(step, pending, state, train_iter, checkpoints, writer, stops, is_save)
    if pending is not None:
        _check_finite(*pending)
    progress.close()
    checkpoints.wait_until_finished()
    if not eval_results and start_step >= config.num_steps:
        logging.info("training already finished at step %d; evaluating", start_step)
        eval_results = _evaluate(evaluator, eval_variables(), eval_source, writer, start_step,
                                 config.eval.num_overlays)
        writer.flush()
    if config.predict.num_images:
        report.write_val_predictions(evaluator, _process_local(eval_variables()), eval_source,
                                     workdir / "predictions", config.predict.num_images)
    return eval_results


def _stop_at(step, pending, state, train_iter, checkpoints, writer, stops, saved):
    """After a stop signal: the step in flight is checked for divergence and saved (its logs so
    far flushed first, as before any checkpoint), then the run ends with TrainingStopped."""
    if pending is not None:
        _check_finite(*pending)  # a diverged step is reported as such, and never saved
    writer.flush()
    if not saved:
        checkpoints.save(step, state, train_iter.get_state(), force=True)
    checkpoints.wait_until_finished()
    raise stop_signals.TrainingStopped(stops.received, step, checkpoints.directory)


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
    """The step's metrics as floats (without the flag); NonFiniteError if anything diverged."""
    values = {k: float(v) for k, v in jax.device_get(metrics).items()}
    finite = bool(values.pop("finite", 1.0))
    bad = [f"{name} {values[name]}" for name in ("loss", "grad_norm")
           if name in values and not np.isfinite(values[name])]
    if bad or not finite:
        what = ", ".join(bad) if bad else "NaN or inf in the updated parameters or optimizer state"
        raise NonFiniteError(
            f"training diverged at step {step}: {what}; no checkpoint of this or a later step was "
            "written. Lower config.optim.base_lr, enable config.optim.grad_clip_norm, or check "
            "the labels (values must be < num_classes or the data set's ignore label)")
    return values
