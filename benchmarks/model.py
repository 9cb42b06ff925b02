"""DeepLab-v2 ResNet-101 ASPP-L: ours (JAX/XLA) vs a PyTorch reference with the same weights.

    python benchmarks/model.py [--repeats 3] [--train_batch 2] [--threads 2]

The reference is torchvision's resnet101(replace_stride_with_dilation=[False, True, True]) (output
stride 8) with the v2 ASPP-L head (four 3x3 classifiers at rates 6, 12, 18, 24, summed); our model is
`deeplab_v2_resnet101_aspp_l` in the torchvision layout (stride on the 3x3, floor max-pool), and the
reference's random weights (BN statistics randomised too) are copied into it through
deeplab_jax.weights, so both compute the same function: the relative error of the logits is printed.
Timed in one run, same threads: forward at 513x513 batch 1, and a training step at 321x321 (forward,
cross-entropy against labels subsampled to the score map, backward, SGD with momentum; BatchNorm
frozen as in the paper). Our numbers are given with and without the XLA CPU flag deeplab_jax sets
(deeplab_jax/xla_flags.py), the second measured in a subprocess because XLA reads flags at start-up.
Medians of --repeats runs after one warm-up (which includes compilation).
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


def median_time(fn, repeats):
    fn()  # warm-up (compilation)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def time_ours(model, variables, forward_image, train_images, train_labels, repeats):
    import jax
    import jax.numpy as jnp
    import optax

    from deeplab_jax import losses

    forward = jax.jit(lambda v, x: model.apply(v, x, train=False))
    x = jnp.asarray(forward_image)
    t_forward = median_time(lambda: forward(variables, x).block_until_ready(), repeats)

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
    state = {"params": jax.tree.map(jnp.asarray, variables["params"])}
    state["opt"] = tx.init(state["params"])
    images, labels = jnp.asarray(train_images), jnp.asarray(train_labels)

    def one_step():
        state["params"], state["opt"], loss = step(state["params"], state["opt"], images, labels)
        loss.block_until_ready()

    t_train = median_time(one_step, repeats)
    return t_forward, t_train, np.asarray(forward(variables, x))


def time_torch(reference, forward_image, train_images, train_labels, repeats):
    import torch

    x = torch.from_numpy(forward_image.transpose(0, 3, 1, 2).copy())
    reference.eval()
    with torch.no_grad():
        t_forward = median_time(lambda: reference(x), repeats)
        logits = reference(x).numpy().transpose(0, 2, 3, 1)
    reference.train()
    for module in reference.modules():  # frozen BN, as ours (bn_frozen=True)
        if isinstance(module, torch.nn.BatchNorm2d):
            module.eval()
    optimizer = torch.optim.SGD(reference.parameters(), lr=1e-3, momentum=0.9)
    images = torch.from_numpy(train_images.transpose(0, 3, 1, 2).copy())
    labels = torch.from_numpy(train_labels[:, ::8, ::8].astype(np.int64))

    def one_step():
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(reference(images), labels, ignore_index=255)
        loss.backward()
        optimizer.step()

    t_train = median_time(one_step, repeats)
    return t_forward, t_train, logits


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
    t_forward, t_train, _ = time_ours(model, variables, *inputs(args.train_batch), args.repeats)
    print(json.dumps({"forward": t_forward, "train": t_train}))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--train_batch", type=int, default=2)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--ours_only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.ours_only:
        return ours_only(args)

    from deeplab_jax.parallel import xla_flags

    xla_flags.apply()  # before JAX starts its backends
    import jax

    reference = torch_reference(args.threads)
    model, variables = our_model_and_variables(reference)
    data = inputs(args.train_batch)
    torch_forward, torch_train, torch_logits = time_torch(reference, *data, args.repeats)
    ours_forward, ours_train, our_logits = time_ours(model, variables, *data, args.repeats)
    rel_err = float(np.linalg.norm(our_logits - torch_logits) / np.linalg.norm(torch_logits))

    env = dict(os.environ, DEEPLAB_JAX_NO_XLA_FLAGS="1",
               XLA_FLAGS=os.environ.get("XLA_FLAGS", "").replace(xla_flags.YNN_CONV_FLAG, ""))
    out = subprocess.run([sys.executable, __file__, "--ours_only", f"--repeats={args.repeats}",
                          f"--train_batch={args.train_batch}", f"--threads={args.threads}"],
                         env=env, capture_output=True, text=True, check=True)
    no_flag = json.loads(out.stdout.strip().splitlines()[-1])

    print(f"jax {jax.__version__}, {jax.devices()[0].platform}, {args.threads} threads; "
          f"XLA flags: {xla_flags.flags_to_add() or 'none'}; logits rel. error {rel_err:.1e}")
    print("| measurement | PyTorch (s) | ours (s) | ours / PyTorch | ours, no XLA flag (s) | "
          "ratio, no flag |")
    print("|---|---|---|---|---|---|")
    for name, t_ref, t_ours, t_plain in (
            ("forward 513x513, batch 1", torch_forward, ours_forward, no_flag["forward"]),
            (f"train step 321x321, batch {args.train_batch}", torch_train, ours_train,
             no_flag["train"])):
        print(f"| {name} | {t_ref:.2f} | {t_ours:.2f} | {t_ours / t_ref:.2f}x | {t_plain:.2f} | "
              f"{t_plain / t_ref:.2f}x |")


if __name__ == "__main__":
    main()
