"""Peak memory of a DeepLab-v2 ResNet-101 train step, with and without remat and bfloat16.

  python benchmarks/memory.py                       # CPU: batch 2, crop 161
  python benchmarks/memory.py --batch=10 --crop=321 # the paper's step (default on an accelerator)
  python benchmarks/memory.py --run                 # also execute 3 steps per variant and measure

Each variant is built in a fresh subprocess (so process RSS is its own) from the library's own
pieces: train.state.setup_state (model, optimizer, state) and train.step.make_train_step (the step
jitted and donated as in train_and_evaluate), with the paper's recipe (SGD momentum, frozen BN, ASPP-L, no MSC).
Columns (MiB):
  saved for backward: bytes of the residuals `jax.vjp` keeps between the forward and the backward
        pass of the loss (activations, and the parameters themselves, 168 MiB for ResNet-101 in
        fp32), from an abstract trace: exact and the same on every backend. This is what remat
        and bf16 act on.
  state+batch: XLA `compiled.memory_analysis()` argument bytes (parameters, momentum, BN
        statistics, batch; the outputs alias them through donation);
  XLA temp: the compiled step's temporary buffers (backend-specific buffer assignment);
  measured (--run): on an accelerator the device's peak_bytes_in_use; on CPU the growth of the
        process RSS over the first 3 executions (sampled every 2 ms; includes allocator slack).
CPU caveats, measured with jaxlib 0.10.2 (benchmarks/README.md "Memory"): XLA:CPU's buffer
assignment gives the same temp with and without remat (its schedule does not exploit the
recomputation), and it has no native bf16 convolution (it converts around each one), so only the
"saved for backward" column shows on CPU what remat and bf16 buy on TPU/GPU. Re-run there.
"""

import argparse
import json
import os
import subprocess
import sys
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VARIANTS = (
    ("fp32", "float32", False, ""),
    ("fp32 + remat", "float32", True, ""),
    ("fp32 + remat(dots)", "float32", True, "dots_saveable"),
    ("bf16", "bfloat16", False, ""),
    ("bf16 + remat", "bfloat16", True, ""),
)


def build_step(model_name, batch, crop, dtype, remat, policy, num_classes=21):
    """(jitted step, state, batch, config) of the paper's train step for one variant."""
    import jax
    import numpy as np

    from deeplab_jax import experiment, losses, models
    from deeplab_jax.config import base_config, overrides_config
    from deeplab_jax.parallel import mesh as mesh_lib
    from deeplab_jax.train.state import setup_state
    from deeplab_jax.train.step import make_train_step

    config = base_config()
    config.model.name = model_name
    config.model.overrides = overrides_config(model_name, dtype=dtype, remat=remat)
    config.model.remat_policy = policy
    config.batch_size = batch
    mesh = mesh_lib.create_mesh(jax.devices()[:1])
    model = models.get_model(model_name, num_classes, **experiment.model_overrides(config))
    setup = setup_state(config, model, mesh)
    state = setup.create(seed=0)
    rng = np.random.default_rng(0)
    local = {"image": rng.integers(0, 256, (batch, crop, crop, 3), dtype=np.uint8),
             "label": rng.integers(0, num_classes, (batch, crop, crop), dtype=np.uint8)}
    loss_config = losses.LossConfig.from_config(config.loss, ignore_label=255)
    step = jax.jit(make_train_step(model, setup.tx, setup.schedule, loss_config=loss_config),
                   in_shardings=(setup.shardings, mesh_lib.batch_sharding(mesh),
                                 mesh_lib.replicated(mesh)),
                   out_shardings=(setup.shardings, mesh_lib.replicated(mesh)), donate_argnums=(0,))
    return step, state, mesh_lib.global_batch(local, mesh), jax.random.key(1), model


def saved_for_backward(model, state, batch):
    """Bytes of the residuals jax.vjp keeps for the backward pass of the training loss."""
    import jax
    import numpy as np

    from deeplab_jax import losses

    def residuals(params, batch_stats, images, labels):
        def loss(p):
            fused, branches = model.apply({"params": p, "batch_stats": batch_stats}, images,
                                          train=True, return_branches=True)
            return losses.msc_loss(fused, branches, labels)

        return jax.vjp(loss, params)[1]

    abstract = jax.eval_shape(residuals, state.params, state.batch_stats, batch["image"],
                              batch["label"])
    return int(sum(np.prod(leaf.shape) * np.dtype(leaf.dtype).itemsize
                   for leaf in jax.tree.leaves(abstract)))


def _rss_bytes():
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure(args, dtype, remat, policy):
    """One variant in this process: the compiled analysis, and optionally the measured peak."""
    import jax

    step, state, batch, rng, model = build_step(args.model, args.batch, args.crop, dtype, remat,
                                                policy)
    result = {"saved": saved_for_backward(model, state, batch)}
    started = time.perf_counter()
    compiled = step.lower(state, batch, rng).compile()
    result["compile_s"] = time.perf_counter() - started
    analysis = compiled.memory_analysis()
    result.update(argument=analysis.argument_size_in_bytes, temp=analysis.temp_size_in_bytes)
    if args.run:
        device = jax.devices()[0]
        baseline, peak_rss, stop = _rss_bytes(), [0], threading.Event()

        def sample():
            while not stop.is_set():
                peak_rss[0] = max(peak_rss[0], _rss_bytes())
                time.sleep(0.002)

        sampler = threading.Thread(target=sample)
        sampler.start()
        state, metrics = compiled(state, batch, rng)  # warm-up (first execution allocates)
        jax.block_until_ready(metrics)
        started = time.perf_counter()
        for _ in range(2):
            state, metrics = compiled(state, batch, rng)
        jax.block_until_ready(metrics)
        result["step_s"] = (time.perf_counter() - started) / 2
        stop.set()
        sampler.join()
        stats = device.memory_stats() if hasattr(device, "memory_stats") else None
        if stats and "peak_bytes_in_use" in stats:
            result["measured"] = stats["peak_bytes_in_use"]
            result["measured_kind"] = "device peak_bytes_in_use"
        else:
            result["measured"] = max(peak_rss[0] - baseline, 0)
            result["measured_kind"] = "RSS growth during the first 3 steps (CPU)"
    return result


def _mib(value):
    return f"{value / 2 ** 20:,.0f}"


def main():
    from deeplab_jax.parallel import xla_flags

    xla_flags.apply()  # the package's XLA CPU settings, before JAX starts its backends
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="deeplab_v2_resnet101_aspp_l")
    parser.add_argument("--batch", type=int, default=None, help="10 on an accelerator, 2 on CPU")
    parser.add_argument("--crop", type=int, default=None, help="321 on an accelerator, 161 on CPU")
    parser.add_argument("--run", action="store_true", help="also execute the step and measure")
    parser.add_argument("--variants", default=",".join(v[0] for v in VARIANTS))
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:  # one variant, in its own process
        _, dtype, remat, policy = VARIANTS[int(args.child)]
        print("RESULT " + json.dumps(measure(args, dtype, remat, policy)), flush=True)
        return

    import jax

    backend = jax.default_backend()
    args.batch = args.batch or (2 if backend == "cpu" else 10)
    args.crop = args.crop or (161 if backend == "cpu" else 321)
    wanted = [v.strip() for v in args.variants.split(",")]
    print(f"{args.model}, batch {args.batch}, crop {args.crop}x{args.crop}, backend {backend} "
          f"({jax.devices()[0].device_kind}), jax {jax.__version__}; MiB")
    header = ["variant", "saved for backward", "state+batch", "XLA temp", "compile s"]
    if args.run:
        header += ["measured", "step s"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    kind = None
    for index, (name, *_) in enumerate(VARIANTS):
        if name not in wanted:
            continue
        command = [sys.executable, os.path.abspath(__file__), f"--child={index}",
                   f"--model={args.model}", f"--batch={args.batch}", f"--crop={args.crop}"]
        command += ["--run"] if args.run else []
        env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
        done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO)
        lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
        if done.returncode or not lines:
            print(f"| {name} | failed: {done.stderr.strip().splitlines()[-1:]} |")
            continue
        result = json.loads(lines[-1][len("RESULT "):])
        row = [name, _mib(result["saved"]), _mib(result["argument"]), _mib(result["temp"]),
               f"{result['compile_s']:.0f}"]
        if args.run:
            row += [_mib(result["measured"]), f"{result['step_s']:.2f}"]
            kind = result["measured_kind"]
        print("| " + " | ".join(row) + " |", flush=True)
    if kind:
        print(f"measured = {kind}")


if __name__ == "__main__":
    main()
