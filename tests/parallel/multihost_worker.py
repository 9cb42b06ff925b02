"""One process of the multi-host tests (run by test_multihost.py; not a test module itself).

python tests/parallel/multihost_worker.py ROLE OUT_DIR DATA_DIR [PORT PROCESS_ID NUM_PROCESSES]
  train:     this process of a multi-process train_and_evaluate (jax.distributed over loopback,
             gloo CPU collectives); writes OUT_DIR/confusion_<id>.npy and OUT_DIR/done_<id>
  long:      the same, for many steps (the test kills a peer, or sends it SIGTERM, while it runs);
             a run stopped by SIGTERM exits as `deeplab_jax.main` does (143, the message last)
  until=N:   the same workdir, trained on to step N (resumes what `long` saved)
  reference: one process holding all the devices, fed the same global batches (the
             concatenation of what each process reads from its own shard), stepping
             the train step directly; writes OUT_DIR/reference.npz
Local devices per process: the XLA_FLAGS the test sets (--xla_force_host_platform_device_count).
"""

import os
import sys

import numpy as np

ROLE, OUT, DATA_DIR = sys.argv[1], sys.argv[2], sys.argv[3]
NUM_STEPS = 3
HEARTBEAT_TIMEOUT_S = 10


def tiny_config():
    from configs import demo

    config = demo.get_config("tiny")
    config.dataset.data_dir = DATA_DIR
    config.progress_bar = False
    config.num_steps = NUM_STEPS
    config.optim.schedule = "constant"  # the long run then compiles the very same step
    config.optim.warmup_steps = 0
    config.optim.base_lr = 3e-3  # fixed here, not the demo recipe's: the tolerances assume it
    config.eval.every_steps = NUM_STEPS
    config.eval.max_examples = 8
    config.checkpoint_every_steps = NUM_STEPS
    config.log_every_steps = 1
    config.predict.num_images = 1
    config.eval.num_overlays = 1
    return config


def run_process(port, process_id, num_processes, num_steps):
    from deeplab_jax.parallel import distributed

    assert distributed.initialize(
        "auto", coordinator_address=f"localhost:{port}", num_processes=num_processes,
        process_id=process_id, heartbeat_timeout_s=HEARTBEAT_TIMEOUT_S,
        initialization_timeout_s=120)
    import jax

    jax.config.update("jax_numpy_rank_promotion", "raise")
    from deeplab_jax.train.loop import train_and_evaluate
    from deeplab_jax.train.stop_signals import TrainingStopped

    config = tiny_config()
    config.num_steps = num_steps
    if num_steps > NUM_STEPS:
        config.eval.every_steps = config.checkpoint_every_steps = 10 ** 6
        config.predict.num_images = 0
    try:
        results = train_and_evaluate(config, os.path.join(OUT, "workdir"))
    except TrainingStopped as stopped:
        print(stopped, flush=True)
        sys.exit(stopped.exit_status)
    np.save(os.path.join(OUT, f"confusion_{jax.process_index()}.npy"), results["confusion"])
    open(os.path.join(OUT, f"done_{jax.process_index()}"), "w").close()


def run_reference(num_processes):
    import unittest.mock

    import jax

    jax.config.update("jax_numpy_rank_promotion", "raise")
    from deeplab_jax import experiment
    from deeplab_jax.data import input_pipeline
    from deeplab_jax.evaluation.evaluator import EvalSettings, Evaluator
    from deeplab_jax.parallel import mesh as mesh_lib
    from deeplab_jax.parallel.partitioning import path_string
    from tests.helpers import training

    config = tiny_config()
    descriptor = experiment.dataset_descriptor(config)
    setup, state, mesh = training.build(config, seed=config.seed)
    source = experiment.load_source(config, descriptor, descriptor.train_split)
    streams = []
    for index in range(num_processes):  # what process `index` of `num_processes` reads
        with unittest.mock.patch("jax.process_index", return_value=index), \
                unittest.mock.patch("jax.process_count", return_value=num_processes):
            streams.append(iter(input_pipeline.create_train_dataset(
                source, global_batch_size=config.batch_size,
                crop_size=experiment.crop_size(config, descriptor), seed=config.seed,
                scale_range=tuple(config.input.scale_range), flip=config.input.flip,
                pad_value=tuple(config.input.pad_value), ignore_label=descriptor.ignore_label)))
    step_fn = training.jit_step(config, setup, mesh)
    rng = jax.random.key(config.seed + 1)
    for _ in range(NUM_STEPS):
        parts = [next(stream) for stream in streams]
        batch = {key: np.concatenate([part[key] for part in parts]) for key in ("image", "label")}
        state, _ = step_fn(state, mesh_lib.global_batch(batch, mesh), rng)
    evaluator = Evaluator(setup.model, mesh, descriptor,
                          EvalSettings.from_config(config, descriptor))
    eval_source = experiment.load_source(config, descriptor, descriptor.eval_split)
    confusion = evaluator.evaluate(state.variables(), eval_source)["confusion"]
    params = {path_string(path): np.asarray(leaf)
              for path, leaf in jax.tree_util.tree_flatten_with_path(state.params)[0]}
    np.savez(os.path.join(OUT, "reference.npz"), confusion=confusion, **params)


if __name__ == "__main__":
    if ROLE == "reference":
        run_reference(int(sys.argv[4]))
    else:
        port, process_id, num_processes = (int(v) for v in sys.argv[4:7])
        steps = {"train": NUM_STEPS, "long": 10 ** 6}.get(ROLE) or int(ROLE.split("=")[1])
        run_process(port, process_id, num_processes, steps)
