"""DeepLab-v2 ResNet-101 ASPP-L: ours (JAX/XLA) vs a PyTorch reference with the same weights.

    python benchmarks/model.py [--repeats 5] [--train_batch 2] [--threads 2] [--no_flag_column]
    python benchmarks/model.py --demo_only     # the demo train step alone (steps/s)

The reference is torchvision's resnet101(replace_stride_with_dilation=[False, True, True]) (output
stride 8) with the v2 ASPP-L head (four 3x3 classifiers at rates 6, 12, 18, 24, summed); our model
is `deeplab_v2_resnet101_aspp_l` in the torchvision layout (stride on the 3x3, floor max-pool), and
the reference's random weights (BN statistics randomised too) are copied into it through
deeplab_jax.weights, so both compute the same function: the relative error of the logits is printed
(for the model as built and for `deeplab_jax.inference.prepare`'s, BatchNorm folded).
Measured in one process, same threads, every call warmed up (compilation) and then timed in
interleaved rounds (one call of each per round, PyTorch's and ours), medians of --repeats rounds, so
that a load that comes and goes on a shared machine hits both sides alike:
- forward 513x513 batch 1 (PyTorch eval + no_grad; ours prepared, and as built);
- a training step at 321x321 (forward, cross-entropy against labels subsampled to the score map,
  backward, SGD with momentum; BatchNorm frozen as in the paper);
- the demo train step (`configs/demo.py`: deeplab_v2_demo, batch 8, crop 129, the jitted step of
  `train_and_evaluate`), ours only, in steps/s.
`--no_flag_column` also runs ours in a subprocess without the XLA CPU flag deeplab_jax sets
(deeplab_jax/parallel/xla_flags.py; XLA reads flags at start-up).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

RATES = (6, 12, 18, 24)
NUM_CLASSES = 21
DEMO_BATCH, DEMO_CROP = 8, 129
# Pause before each timed call: the previous call's worker threads (PyTorch's OpenMP pool, XLA's
# Eigen pool) keep spinning for a while after their work ends and took the cores from the next
# call (the 37 ms demo step ran at 3.0 instead of 26.8 steps/s right after the others).
SETTLE_S = float(os.environ.get("BENCHMARK_SETTLE_S", "0.5"))


def torch_reference(threads):
    import torch
    import torchvision

    torch.set_num_threads(threads)
    torch.manual_seed(0)

    class TorchDeepLabV2(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = torchvision.models.resnet101(
                weights=None, replace_stride_with_dilation=[False, True, True])
            self.aspp = torch.nn.ModuleList(
                torch.nn.Conv2d(2048, NUM_CLASSES, 3, padding=r, dilation=r) for r in RATES)

        def forward(self, x):
            b = self.backbone
            x = b.maxpool(b.relu(b.bn1(b.conv1(x))))
            x = b.layer4(b.layer3(b.layer2(b.layer1(x))))
            return sum(conv(x) for conv in self.aspp)

    model = TorchDeepLabV2()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.1, 0.1)
    return model


def our_model_and_variables(reference):
    """Our model with the reference's weights, through the torchvision importer."""
    import torch

    from deeplab_jax import models, weights

    overrides = dict(stride_on_3x3=True, pool_ceil_mode=False, input_norm="none", bn_frozen=True)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "backbone.pth")
        torch.save(reference.backbone.state_dict(), path)
        variables = weights.convert("torchvision", path, "deeplab_v2_resnet101_aspp_l", NUM_CLASSES,
                                    allow_missing=("head",), strict=False, **overrides)
    for i, conv in enumerate(reference.aspp):
        variables["params"]["head"][f"c{i}"] = {
            "kernel": conv.weight.detach().numpy().transpose(2, 3, 1, 0).copy(),
            "bias": conv.bias.detach().numpy().copy()}
    model = models.get_model("deeplab_v2_resnet101_aspp_l", NUM_CLASSES, **overrides)
    return model, variables


def interleaved_medians(calls, repeats):
    """{name: median seconds}: one warm-up call each (compilation), then `repeats` rounds."""
    for fn in calls.values():
        fn()
    times = {name: [] for name in calls}
    for _ in range(repeats):
        for name, fn in calls.items():
            time.sleep(SETTLE_S)
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: float(np.median(values)) for name, values in times.items()}


def our_calls(model, variables, forward_image, train_images, train_labels):
    """({name: timed call}, logits as built, logits prepared) for our forward passes and step."""
    import jax
    import jax.numpy as jnp
    import optax

    from deeplab_jax import inference, losses

    prepared_model, prepared_variables = inference.prepare(model, variables)
    forward = jax.jit(lambda v, x: model.apply(v, x, train=False))
    forward_prepared = jax.jit(lambda v, x: prepared_model.apply(v, x, train=False))
    x = jnp.asarray(forward_image)
    tx = optax.sgd(1e-3, momentum=0.9)

    def step(params, opt_state, images, labels):
        def loss_fn(p):
            logits = model.apply({"params": p, "batch_stats": variables["batch_stats"]}, images,
                                 train=True)
            return losses.segmentation_loss(logits, labels)

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    step = jax.jit(step, donate_argnums=(0, 1))
    state = {"params": jax.tree.map(jnp.array, variables["params"])}
    state["opt"] = tx.init(state["params"])
    images, labels = jnp.asarray(train_images), jnp.asarray(train_labels)

    def one_step():
        state["params"], state["opt"], loss = step(state["params"], state["opt"], images, labels)
        loss.block_until_ready()

    calls = {
        "forward_prepared": lambda: forward_prepared(prepared_variables, x).block_until_ready(),
        "forward": lambda: forward(variables, x).block_until_ready(),
        "train": one_step,
    }
    return (calls, np.asarray(forward(variables, x)),
            np.asarray(forward_prepared(prepared_variables, x)))


def torch_calls(reference, forward_image, train_images, train_labels):
    import torch

    x = torch.from_numpy(forward_image.transpose(0, 3, 1, 2).copy())
    reference.eval()
    with torch.no_grad():
        logits = reference(x).numpy().transpose(0, 2, 3, 1)
    for module in reference.modules():  # frozen BN, as ours (bn_frozen=True)
        if isinstance(module, torch.nn.BatchNorm2d):
            module.eval()
    optimizer = torch.optim.SGD(reference.parameters(), lr=1e-3, momentum=0.9)
    images = torch.from_numpy(train_images.transpose(0, 3, 1, 2).copy())
    labels = torch.from_numpy(train_labels[:, ::8, ::8].astype(np.int64))

    def forward():
        reference.eval()
        with torch.no_grad():
            reference(x)

    def one_step():
        reference.train()
        for module in reference.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.eval()
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(reference(images), labels, ignore_index=255)
        loss.backward()
        optimizer.step()

    return {"torch_forward": forward, "torch_train": one_step}, logits


def demo_step_call():
    """A timed call of the demo configuration's jitted train step on random data."""
    import jax
    import jax.numpy as jnp

    from configs import demo
    from deeplab_jax import experiment, losses
    from deeplab_jax.parallel import mesh as mesh_lib
    from deeplab_jax.train.state import setup_state
    from deeplab_jax.train.step import make_train_step

    config = demo.get_config()
    model = experiment.create_model(config)
    setup = setup_state(config, model, mesh_lib.create_mesh())
    # Every call starts from the initial state (no donation). Chaining the updates on random
    # images and labels slowed the steps several-fold (jax 0.10.2: 2.97 against 25.3 steps/s;
    # 0.12: 16.5 against 25.3), a state real training never reaches (the demo's 5,500 steps
    # plus evaluation take 279 s on the same machine), so it measured the random data.
    state = setup.create(config.seed)
    loss_config = losses.LossConfig.from_config(config.loss, ignore_label=255)
    step = jax.jit(make_train_step(model, setup.tx, setup.schedule, loss_config=loss_config))
    rng = np.random.default_rng(0)
    batch = {"image": jnp.asarray(rng.integers(0, 256, (DEMO_BATCH, DEMO_CROP, DEMO_CROP, 3)),
                                  jnp.uint8),
             "label": jnp.asarray(rng.integers(0, 8, (DEMO_BATCH, DEMO_CROP, DEMO_CROP)),
                                  jnp.int32)}
    key = jax.random.key(1)

    def one_step():
        _, metrics = step(state, batch, key)
        metrics["loss"].block_until_ready()

    return one_step


def inputs(train_batch):
    rng = np.random.default_rng(0)
    forward_image = rng.normal(size=(1, 513, 513, 3)).astype(np.float32)
    train_images = rng.normal(size=(train_batch, 321, 321, 3)).astype(np.float32)
    train_labels = rng.integers(0, NUM_CLASSES, (train_batch, 321, 321)).astype(np.int32)
    return forward_image, train_images, train_labels


def ours_only(args):
    """Subprocess entry: our timings only (used for the run without the XLA flag)."""
    reference = torch_reference(args.threads)
    model, variables = our_model_and_variables(reference)
    calls, _, _ = our_calls(model, variables, *inputs(args.train_batch))
    calls["demo"] = demo_step_call()
    print(json.dumps(interleaved_medians(calls, args.repeats)))


def relative_error(ours, reference):
    return float(np.linalg.norm(ours - reference) / np.linalg.norm(reference))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--train_batch", type=int, default=2)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--no_flag_column", action="store_true",
                        help="also time ours without the XLA CPU flag (a subprocess)")
    parser.add_argument("--demo_only", action="store_true", help="only the demo train step")
    parser.add_argument("--ours_only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from deeplab_jax.parallel import xla_flags

    xla_flags.apply()  # before JAX starts: XLA reads its flags once
    if args.ours_only:
        return ours_only(args)
    import jax

    header = (f"jax {jax.__version__}, {jax.devices()[0].platform}, {args.threads} threads; "
              f"XLA flags: {xla_flags.flags_to_add() or 'none'}")
    if args.demo_only:
        demo = interleaved_medians({"demo": demo_step_call()}, args.repeats)["demo"]
        print(f"{header}\ndemo train step (deeplab_v2_demo, batch {DEMO_BATCH}, crop "
              f"{DEMO_CROP}): {1.0 / demo:.2f} steps/s ({demo * 1000:.0f} ms)")
        return None

    reference = torch_reference(args.threads)
    model, variables = our_model_and_variables(reference)
    data = inputs(args.train_batch)
    calls, torch_logits = torch_calls(reference, *data)
    ours, logits, prepared_logits = our_calls(model, variables, *data)
    calls.update(ours, demo=demo_step_call())
    t = interleaved_medians(calls, args.repeats)
    plain = {}
    if args.no_flag_column:
        env = dict(os.environ, DEEPLAB_JAX_NO_XLA_FLAGS="1",
                   XLA_FLAGS=os.environ.get("XLA_FLAGS", "").replace(xla_flags.YNN_CONV_FLAG, ""))
        out = subprocess.run(
            [sys.executable, __file__, "--ours_only", f"--repeats={args.repeats}",
             f"--train_batch={args.train_batch}", f"--threads={args.threads}"],
            env=env, capture_output=True, text=True, check=True)
        plain = json.loads(out.stdout.strip().splitlines()[-1])

    print(f"{header}; logits rel. error {relative_error(logits, torch_logits):.1e} (as built), "
          f"{relative_error(prepared_logits, torch_logits):.1e} (prepared)")
    print("| measurement | PyTorch (s) | ours (s) | ours / PyTorch |"
          + (" ours, no XLA flag (s) | ratio, no flag |" if plain else ""))
    print("|---|---|---|---|" + ("---|---|" if plain else ""))
    rows = (("forward 513x513, batch 1, prepared", "torch_forward", "forward_prepared"),
            ("forward 513x513, batch 1, as built", "torch_forward", "forward"),
            (f"train step 321x321, batch {args.train_batch}", "torch_train", "train"))
    for label, reference_key, key in rows:
        ratio = t[key] / t[reference_key]
        line = f"| {label} | {t[reference_key]:.2f} | {t[key]:.2f} | {ratio:.2f}x |"
        if plain:
            line += f" {plain[key]:.2f} | {plain[key] / t[reference_key]:.2f}x |"
        print(line)
    demo_line = (f"demo train step (deeplab_v2_demo, batch {DEMO_BATCH}, crop {DEMO_CROP}): "
                 f"{1.0 / t['demo']:.2f} steps/s")
    if plain:
        demo_line += f"; no XLA flag: {1.0 / plain['demo']:.2f} steps/s"
    print(demo_line)
    return None


if __name__ == "__main__":
    main()
