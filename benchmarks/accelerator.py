"""Accelerator benchmark: ours (JAX) beside PyTorch on the same device, one command, one table.

    python benchmarks/accelerator.py            # one GPU, at most --budget_s (450 s) + 150 s
    python benchmarks/accelerator.py --smoke    # CPU, tiny sizes, about a minute (CI)

Rows (benchmarks/README.md, "Accelerator", says how to set up a machine without network access):
- train-step throughput (images/s) of DeepLab-v2 ResNet-101 ASPP-L (batch 10, crop 321, fp32 and
  bf16) and DeepLab-v3+ Xception-65 (batch 16, crop 513, bf16): forward, cross-entropy, backward,
  SGD with momentum (BatchNorm frozen for v2 as in the paper, trained for v3+);
- inference throughput (images/s) at 513, batch 8 (ours through `inference.prepare`);
- dense CRF ms/image at VOC size (500x375, 21 classes) for every jitted method of
  `deeplab_jax.crf.api.METHODS` (not the host-only 'permutohedral', nor 'auto', which picks one
  of the others), batch 1 and 8;
- peak device memory of each (`peak_bytes_in_use` for ours, `max_memory_allocated` for PyTorch);
- then `depthwise.py`'s table at batch 16, bfloat16: Xception-65's depthwise convolutions as
  XLA's grouped convolution and as shifted copies, beside PyTorch (which form the GPU wants).
The CRF cases run first (short), then PyTorch's, then ours; a case still running after
`--case_timeout_s` is stopped and reported with its last progress line (compiling or stepping).
On one H100 a DeepLab-v2 case took 60-80 s (process start, compilation, 13 steps).
PyTorch twins (`torch_twins.py`): torchvision's dilated ResNet-101 + ASPP-L, timm's `xception65` +
a v3+ head; channels-last, AMP (autocast) for bf16. fp32 means float32 storage with TF32 matrix
units on both sides (JAX's default precision; PyTorch with allow_tf32). Every JAX case runs in its
own process (the peak is a high-water mark since the process started); the PyTorch cases share one.
Timing: warm-up steps (compilation), then the wall time of `--steps` steps, synchronised at the end.
"""

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

STARTED = time.perf_counter()
NUM_CLASSES = 21
VOC_SIZE = (375, 500)  # height, width of a typical VOC 2012 image
SPECS = {  # name: (kind, model, dtype, batch, crop)
    "train_v2_fp32": ("train", "v2", "float32", 10, 321),
    "train_v2_bf16": ("train", "v2", "bfloat16", 10, 321),
    "train_x65_bf16": ("train", "x65", "bfloat16", 16, 513),
    "infer_v2_fp32": ("infer", "v2", "float32", 8, 513),
    "infer_x65_bf16": ("infer", "x65", "bfloat16", 8, 513),
}
SMOKE_SIZES = {"train": (2, 33), "infer": (1, 33)}
LABELS = {"v2": "DeepLab-v2 R-101 ASPP-L", "x65": "DeepLab-v3+ Xception-65"}
# Not timed: the host-only method, and 'auto', which dispatches to one of the others.
NOT_TIMED_CRF = ("permutohedral", "auto")


def sizes(name, smoke):
    kind, _, _, batch, crop = SPECS[name]
    return SMOKE_SIZES[kind] if smoke else (batch, crop)


def crf_methods():
    from deeplab_jax.crf.api import METHODS

    return [m for m in METHODS if m not in NOT_TIMED_CRF]


def progress(message):
    """A line on stderr with the time since the process started: the parent shows a case's last
    one when the case runs out of time (was it compiling, or stepping?)."""
    print(f"{time.perf_counter() - STARTED:.1f} s: {message}", file=sys.stderr, flush=True)


def timed(fn, warmup, steps, sync=None):
    """Seconds per call of fn after `warmup` calls; sync(last output) waits for the device
    (default: jax.block_until_ready)."""
    if sync is None:
        import jax

        sync = jax.block_until_ready
    for call in range(warmup):
        begin = time.perf_counter()
        sync(fn())
        progress(f"warm-up call {call + 1} of {warmup} took {time.perf_counter() - begin:.1f} s"
                 + (" (compilation included)" if call == 0 else ""))
    start = time.perf_counter()
    for _ in range(steps):
        out = fn()
    sync(out)
    return (time.perf_counter() - start) / steps


def our_model(arch, dtype, smoke):
    import jax.numpy as jnp

    from deeplab_jax import models

    dtype = getattr(jnp, dtype)
    if arch == "v2":
        small = dict(stage_sizes=(1, 1, 1, 1)) if smoke else {}
        return models.get_model("deeplab_v2_resnet101_aspp_l", NUM_CLASSES, stride_on_3x3=True,
                                pool_ceil_mode=False, input_norm="imagenet", dtype=dtype, **small)
    # Smoke: the same program structure at 1/8 width (compilation time is what CI pays).
    small = dict(middle_repeats=1, width_multiplier=0.125) if smoke else {}
    return models.get_model("deeplab_v3plus_xception65", NUM_CLASSES, dtype=dtype, **small)


def ours_case(name, smoke, warmup, steps):
    """images/s (train, infer) of one case of ours."""
    import jax
    import jax.numpy as jnp
    import optax

    from deeplab_jax import inference, losses

    kind, arch, dtype, _, _ = SPECS[name]
    batch, crop = sizes(name, smoke)
    model = our_model(arch, dtype, smoke)
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.integers(0, 256, (batch, crop, crop, 3)), jnp.uint8)
    # The parameters' values do not matter for timing, and initialising them from an "rbg" key
    # compiles several times faster than from the default threefry key (smoke Xception-65 init:
    # 3.9 s against 12.9 s on the 2-core CI machine), which is most of what the CI smoke run
    # pays. The timed step keeps the default key for its dropout masks.
    keys = {"params": jax.random.key(0, impl="rbg"), "dropout": jax.random.key(1)}
    variables = jax.jit(lambda x: model.init(keys, x, train=False))(images[:1])
    progress("parameters initialised")
    if kind == "infer":
        prepared_model, prepared = inference.prepare(model, variables)
        forward = jax.jit(lambda v, x: prepared_model.apply(v, x, train=False))
        return batch / timed(lambda: forward(prepared, images), warmup, steps)
    labels = jnp.asarray(rng.integers(0, NUM_CLASSES, (batch, crop, crop)), jnp.int32)
    tx = optax.sgd(1e-3, momentum=0.9)

    def step(params, stats, opt_state):
        def loss_fn(p):
            logits, updates = model.apply({"params": p, "batch_stats": stats}, images, train=True,
                                          rngs={"dropout": keys["dropout"]},
                                          mutable=["batch_stats"])
            return losses.segmentation_loss(logits, labels), updates["batch_stats"]

        (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), stats, opt_state, loss

    step = jax.jit(step, donate_argnums=(0, 1, 2))
    state = [variables["params"], variables["batch_stats"], tx.init(variables["params"])]

    def one_step():
        *state[:], loss = step(*state)  # params, batch statistics, optimizer state
        return loss

    return batch / timed(one_step, warmup, steps)


def crf_case(method, batch, smoke, warmup, steps):
    """ms per image of dense_crf(method) on a batch of VOC-size images."""
    import jax

    from deeplab_jax.crf import dense_crf

    height, width = (30, 40) if smoke else VOC_SIZE
    rng = np.random.default_rng(0)
    # A smooth synthetic photograph and probabilities from blocky noisy scores (as a DeepLab
    # score map upsampled x8), so the bilateral lattice is of realistic size.
    yy, xx = np.mgrid[0:height, 0:width]
    image = np.stack([xx * 255 // width, yy * 255 // height, (xx + yy) % 256], -1)
    image = np.clip(image[None] + rng.normal(0, 8, (batch, height, width, 3)), 0, 255)
    scores = np.kron(rng.normal(0, 2, (batch, height // 8 + 1, width // 8 + 1, NUM_CLASSES)),
                     np.ones((1, 8, 8, 1)))[:, :height, :width]
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs = (probs / probs.sum(-1, keepdims=True)).astype(np.float32)
    image = image.astype(np.uint8)
    if batch == 1:
        image, probs = image[0], probs[0]
    image, probs = jax.device_put(image), jax.device_put(probs)
    return 1000.0 * timed(lambda: dense_crf(image, probs, method=method), warmup, steps) / batch


def jax_peak_mib():
    import jax

    stats = jax.devices()[0].memory_stats() or {}
    peak = stats.get("peak_bytes_in_use")
    return None if peak is None else peak / 2 ** 20


def torch_case(name, smoke, warmup, steps, device):
    """images/s of one case of the PyTorch twin, and its peak memory (MiB, None on CPU)."""
    import torch

    from benchmarks import torch_twins

    kind, arch, dtype, _, _ = SPECS[name]
    batch, crop = sizes(name, smoke)
    torch.manual_seed(0)
    if arch == "v2":
        model = torch_twins.DeepLabV2(NUM_CLASSES, layers=(1, 1, 1, 1) if smoke else (3, 4, 23, 3))
    else:
        model = torch_twins.DeepLabV3PlusXception(NUM_CLASSES)
    model = model.to(device, memory_format=torch.channels_last)
    images = torch.randint(0, 256, (batch, 3, crop, crop), device=device).float()
    images = images.contiguous(memory_format=torch.channels_last)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == "bfloat16")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    model.eval()
    if kind == "infer":
        def one_call():
            with torch.no_grad(), autocast:
                return model(images)
    else:
        with torch.no_grad():
            stride = crop // (model(images[:1]).shape[-1] - 1)
        torch_twins.set_train_mode(model)
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
        labels = torch.randint(0, NUM_CLASSES, (batch, crop, crop), device=device)
        labels = labels[:, ::stride, ::stride].contiguous()

        def one_call():
            optimizer.zero_grad(set_to_none=True)
            with autocast:
                loss = torch.nn.functional.cross_entropy(model(images).float(), labels)
            loss.backward()
            optimizer.step()
            return loss.detach()

    def sync(_):
        if device.type == "cuda":
            torch.cuda.synchronize()

    rate = batch / timed(one_call, warmup, steps, sync)
    peak = torch.cuda.max_memory_allocated() / 2 ** 20 if device.type == "cuda" else None
    return rate, peak


def run_child(args):
    """Runs args.cases in this process; prints one JSON line per case."""
    warmup, steps = (1, 1) if args.smoke else (3, args.steps)
    if args.child == "torch":
        import torch

        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
        device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
        if args.smoke:
            # The smoke run's children share the CPU cores; PyTorch's own thread pool then spins
            # against the JAX processes (its Xception-65 step took 34 s instead of 4 s on 2 cores).
            torch.set_num_threads(1)
    for case in args.cases.split(","):
        result = {"case": case, "framework": args.child}
        try:
            if args.child == "torch":
                result["value"], result["peak_mib"] = torch_case(case, args.smoke, warmup, steps,
                                                                 device)
            elif case.startswith("crf:"):
                _, method, batch = case.split(":")
                result["value"] = crf_case(method, int(batch), args.smoke, warmup, steps)
                result["peak_mib"] = jax_peak_mib()
            else:
                result["value"] = ours_case(case, args.smoke, warmup, steps)
                result["peak_mib"] = jax_peak_mib()
        except Exception as error:  # one failing case must not hide the others' rows
            result["error"] = f"{type(error).__name__}: {str(error).splitlines()[0][:120]}"
        print("RESULT " + json.dumps(result), flush=True)


def start_child(args, framework, cases, env):
    command = [sys.executable, os.path.abspath(__file__), "--child", framework,
               "--cases", ",".join(cases), "--steps", str(args.steps)] + (
                   ["--smoke"] if args.smoke else [])
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def collect(child, framework, cases, deadline):
    """The child's results, and an error row for each case it did not report."""
    try:
        stdout, stderr = child.communicate(timeout=max(deadline - time.monotonic(), 1))
        note = f"exit {child.returncode}: {stderr.strip()[-200:]}"
    except subprocess.TimeoutExpired:
        child.kill()
        stdout, stderr = child.communicate()
        last = [line for line in stderr.splitlines() if " s: " in line][-1:]
        note = "timeout" + (f" (last: {last[0]})" if last else " (no progress line)")
    results = [json.loads(line[7:]) for line in stdout.splitlines() if line.startswith("RESULT ")]
    done = {r["case"] for r in results}
    results += [{"case": c, "framework": framework, "error": note} for c in cases if c not in done]
    for r in results:  # progress: the table comes only at the end
        print(f"[{time.strftime('%H:%M:%S')}] {framework} {r['case']}: "
              f"{r.get('value', r.get('error'))}", file=sys.stderr, flush=True)
    return results


def run_all(args, groups, env):
    """Runs (framework, cases) groups: one after the other on a device (each JAX case alone, so
    that its memory peak is its own), all at once for --smoke (compilation is mostly
    single-threaded, and the smoke run only checks that every case works)."""
    deadline = time.monotonic() + args.budget_s
    if args.smoke:
        children = [(start_child(args, f, cases, env), f, cases) for f, cases in groups]
        return [r for child, f, cases in children for r in collect(child, f, cases, deadline)]
    results = []
    for framework, cases in groups:
        if deadline - time.monotonic() < 10:
            results += [{"case": c, "framework": framework, "error": "skipped: time budget"}
                        for c in cases]
            continue
        # One slow case (e.g. a compilation that does not end) must not take the others' time.
        cap = min(deadline, time.monotonic() + args.case_timeout_s * len(cases))
        results += collect(start_child(args, framework, cases, env), framework, cases, cap)
    return results


def depthwise_table(args, env):
    """`benchmarks/depthwise.py` on the same device (Xception-65's depthwise convolutions: XLA's
    grouped convolution against shifted copies, beside PyTorch), or why it is missing."""
    command = [sys.executable, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                            "depthwise.py")]
    command += ["--smoke"] if args.smoke else ["--batch", "16", "--dtype", "bfloat16",
                                               "--model_crop", "0"]
    try:
        done = subprocess.run(command, env=env, capture_output=True, text=True,
                              timeout=args.case_timeout_s)
    except subprocess.TimeoutExpired as error:
        out = error.stdout.decode() if isinstance(error.stdout, bytes) else error.stdout or ""
        return out + f"depthwise: stopped after {args.case_timeout_s:.0f} s"
    if done.returncode:
        return f"depthwise: exit {done.returncode}: {done.stderr.strip()[-300:]}"
    return done.stdout


def fmt(value, digits=1):
    return "n/a" if value is None else f"{value:,.{digits}f}"


def print_table(results, smoke):
    by = {(r["framework"], r["case"]): r for r in results}
    print("| measurement | ours | PyTorch | ours / PyTorch | ours peak MiB | PyTorch peak MiB |")
    print("|---|---|---|---|---|---|")
    for name, (kind, arch, dtype, _, _) in SPECS.items():
        if ("jax", name) not in by and ("torch", name) not in by:
            continue  # not asked for (--only)
        batch, crop = sizes(name, smoke)
        label = (f"{kind} {LABELS[arch]} {dtype}, batch {batch}, crop {crop} (images/s)")
        ours, ref = by.get(("jax", name), {}), by.get(("torch", name), {})
        ratio = (f"{ours['value'] / ref['value']:.2f}x" if "value" in ours and "value" in ref
                 else "n/a")
        print(f"| {label} | {fmt(ours.get('value')) if 'value' in ours else ours.get('error')} | "
              f"{fmt(ref.get('value')) if 'value' in ref else ref.get('error')} | {ratio} | "
              f"{fmt(ours.get('peak_mib'), 0)} | {fmt(ref.get('peak_mib'), 0)} |")
    for (framework, case), r in by.items():
        if case.startswith("crf:"):
            _, method, batch = case.split(":")
            shown = fmt(r.get("value"), 2) if "value" in r else r.get("error")
            size = "30x40" if smoke else "VOC size 375x500"
            print(f"| dense CRF {method}, batch {batch}, {size} (ms/image) | {shown} | - | - | "
                  f"{fmt(r.get('peak_mib'), 0)} | - |")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny sizes (CI)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per case")
    parser.add_argument("--budget_s", type=float, default=450.0,
                        help="cases not started by then are reported as skipped")
    parser.add_argument("--case_timeout_s", type=float, default=150.0,
                        help="a case still running after this long is stopped and reported")
    parser.add_argument("--only", default="", help="comma-separated case names (default: all)")
    parser.add_argument("--child", choices=("jax", "torch"), help=argparse.SUPPRESS)
    parser.add_argument("--cases", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    sys.path.insert(0, root)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [root] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    if args.smoke:
        env.update(JAX_PLATFORMS="cpu", CUDA_VISIBLE_DEVICES="")
    from deeplab_jax.parallel import xla_flags

    xla_flags.apply()  # before JAX starts; the children inherit XLA_FLAGS through env
    env["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "")
    if args.child:
        return run_child(args)
    names = [n for n in SPECS if not args.only or n in args.only.split(",")]
    crf_cases = [f"crf:{m}:{b}" for m in crf_methods() for b in ((1, 2) if args.smoke else (1, 8))]
    if args.only:
        crf_cases = [c for c in crf_cases if c in args.only.split(",")]
    if args.smoke:
        jax_groups = [[n for n in names if "_x65_" in n],
                      [n for n in names if "_x65_" not in n] + crf_cases]
    else:
        jax_groups = [[case] for case in names + crf_cases]
    # The dense CRF's cases first: they are short, and most of the budget goes to the models.
    crf_groups = [("jax", g) for g in jax_groups if g and g[0].startswith("crf:")]
    groups = crf_groups + ([("torch", names)] if names else []) + [
        ("jax", g) for g in jax_groups if g and not g[0].startswith("crf:")]
    results = run_all(args, groups, env)
    device = "CPU (smoke sizes)" if args.smoke else "first visible device"
    steps = 1 if args.smoke else args.steps
    print(f"accelerator benchmark, {device}; {steps} timed steps per case")
    print_table(results, args.smoke)
    if not args.only:
        print()
        print(depthwise_table(args, env))
    return None


if __name__ == "__main__":
    main()
