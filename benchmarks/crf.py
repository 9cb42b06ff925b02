"""Dense CRF side by side: pydensecrf2 (C++), our permutohedral (numpy), meanfield, separable (JAX).

    python benchmarks/crf.py [--sizes voc,cityscapes] [--repeats 3]
    python benchmarks/crf.py --sizes voc --methods pydensecrf2,permutohedral,separable,\
        "separable[stride=4]","separable[weight_dtype=float32]"

Per size (VOC 500x375 with 21 classes; Cityscapes 2048x1024 with 19) and method, in a fresh
subprocess each: the median wall time of `--repeats` runs after one warm-up run (the warm-up
includes JAX compilation); the process's peak resident memory (ru_maxrss: interpreter, imports,
inputs and warm-up included); "+run", its growth over the resident memory just before the first
run (/proc/self/statm); the fraction of labels equal to the exact result (our permutohedral
method); max |dQ| against pydensecrf2; and the time and memory ratios to pydensecrf2. The methods
run one after the other in one invocation, so they share the machine's load. The image is
scikit-image's astronaut resized; the probabilities are a noisy, blurred colour clustering of it,
softmaxed. DeepLab-v2 parameters, 10 iterations. "separable[k=v,...]" runs the separable method
with those `SeparableOptions` fields changed. On an accelerator, `--device-batches 1,8` instead
reports milliseconds per image at those batch sizes and `--sizes` for `--device-methods` (default
meanfield and separable); it runs on whatever JAX's default device is and needs no accelerator.
"""

import argparse
import itertools
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

# Runnable from a checkout without installing the package.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SIZES = {"voc": (375, 500, 21), "cityscapes": (1024, 2048, 19)}
METHODS = ("pydensecrf2", "permutohedral", "meanfield", "separable")


def separable_options(method):
    """"separable[stride=4,weight_dtype=float32]" -> SeparableOptions with those fields."""
    from deeplab_jax.crf.separable import SeparableOptions

    changes = {}
    inside = method[len("separable"):].strip("[]")
    for item in filter(None, inside.split(",")):
        key, value = item.split("=")
        changes[key] = type(getattr(SeparableOptions(), key))(value)
    return SeparableOptions(**changes).validate()


def dense_crf_arguments(method):
    """A method name of these scripts -> (dense_crf's method, its keyword arguments)."""
    if method.startswith("separable"):
        return "separable", dict(separable_options=separable_options(method))
    return method, {}


def split_methods(text):
    """Comma-separated methods; commas inside [...] belong to a separable variant."""
    return [m for m in re.split(r",(?![^\[]*\])", text) if m]


def make_inputs(height, width, num_classes, seed=0):
    import scipy.ndimage
    import skimage.data
    import skimage.transform

    image = skimage.transform.resize(skimage.data.astronaut(), (height, width), anti_aliasing=True)
    image = np.round(image * 255).astype(np.uint8)
    rng = np.random.default_rng(seed)
    pixels = image.reshape(-1, 3).astype(np.float32)
    sample = pixels[rng.choice(len(pixels), 20000, replace=False)]
    centres = sample[rng.choice(len(sample), num_classes, replace=False)]
    for _ in range(8):  # k-means on a sample, then assign every pixel
        assign = ((sample[:, None] - centres[None]) ** 2).sum(-1).argmin(1)
        for k in range(num_classes):
            if np.any(assign == k):
                centres[k] = sample[assign == k].mean(0)
    labels = np.concatenate([((chunk[:, None] - centres[None]) ** 2).sum(-1).argmin(1)
                             for chunk in np.array_split(pixels, 64)]).reshape(height, width)
    logits = np.zeros((height, width, num_classes), np.float32)
    np.put_along_axis(logits, labels[..., None], 3.0, axis=-1)
    logits = scipy.ndimage.gaussian_filter(logits, (4, 4, 0))
    logits += 1.5 * rng.standard_normal(logits.shape).astype(np.float32)
    logits = 2 * scipy.ndimage.gaussian_filter(logits, (1.5, 1.5, 0))
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    return image, (probs / probs.sum(-1, keepdims=True)).astype(np.float32)


def worker(method, inputs_path, output_path, repeats):
    """Runs in a fresh process: times one method, writes Q and the measurements."""
    image, probs = np.load(inputs_path + ".image.npy"), np.load(inputs_path + ".probs.npy")
    if method == "pydensecrf2":
        import pydensecrf.densecrf as dcrf

        def run():
            height, width, num_classes = probs.shape
            crf = dcrf.DenseCRF2D(width, height, num_classes)
            unary = -np.log(np.clip(probs, 1e-5, 1.0)).reshape(-1, num_classes).T
            crf.setUnaryEnergy(np.ascontiguousarray(unary, np.float32))
            crf.addPairwiseGaussian(sxy=1, compat=3)
            crf.addPairwiseBilateral(sxy=67, srgb=3, rgbim=np.ascontiguousarray(image), compat=4)
            q = np.array(crf.inference(10), np.float32)
            return q.reshape(num_classes, height, width).transpose(1, 2, 0)
    else:
        from deeplab_jax.crf import dense_crf

        if method in ("meanfield", "auto") or method.startswith("separable"):
            # JAX in the baseline, not in "+run".
            import deeplab_jax.crf.meanfield  # noqa: F401
        method, kwargs = dense_crf_arguments(method)

        def run():
            return np.asarray(dense_crf(image, probs, method=method, **kwargs))
    rss_before = _current_rss_mb()
    q = run()  # warm-up (compilation for meanfield)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        q = run()
        times.append(time.perf_counter() - start)
    np.save(output_path + ".q.npy", q)
    with open(output_path, "w") as f:
        json.dump({"times": times, "peak_rss_mb": _rss_mb(), "rss_before_mb": rss_before}, f)


def device_timing(sizes, batches, repeats, methods):
    """Milliseconds per image on the default device at given sizes and batch sizes, per method
    (the median of `repeats` runs after a compiling one); one line per case as it finishes."""
    import jax
    import jax.numpy as jnp

    from deeplab_jax.crf import CRFParams, meanfield, separable

    print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()})")
    for size in sizes:
        image, probs = make_inputs(*SIZES[size])
        for method, batch in itertools.product(methods, batches):
            images = jnp.asarray(np.repeat(image[None], batch, 0))
            probs_b = jnp.asarray(np.repeat(probs[None], batch, 0))
            if method == "meanfield":
                capacity = meanfield.default_capacity(*image.shape[:2])
                run = lambda: meanfield.meanfield(images, probs_b, CRFParams(), capacity)[0]
            else:
                options = separable_options(method)
                run = lambda: separable.separable(images, probs_b, CRFParams(), options)
            run().block_until_ready()
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                run().block_until_ready()
                times.append(time.perf_counter() - start)
            print(f"{size} {method}, batch {batch}: {1000 * np.median(times) / batch:.1f} ms per "
                  f"image", flush=True)


def _rss_mb():
    """Peak resident memory of this process so far, MB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _current_rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="voc,cityscapes")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--device-batches", default="", help="e.g. 1,8 (accelerator timing)")
    parser.add_argument("--device-methods", default="meanfield,separable")
    parser.add_argument("--worker", nargs=3, metavar=("METHOD", "INPUTS", "OUTPUT"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(*args.worker, args.repeats)
        return
    if args.device_batches:
        device_timing(args.sizes.split(","), [int(b) for b in args.device_batches.split(",")],
                      args.repeats, split_methods(args.device_methods))
        return
    methods = split_methods(args.methods)
    print(f"CPUs available: {len(os.sched_getaffinity(0))}; pydensecrf2 is single-threaded; "
          f"permutohedral uses {min(len(os.sched_getaffinity(0)), 8)} threads; XLA uses all.")
    if "separable" in args.methods:
        from deeplab_jax.crf.separable import SeparableOptions

        print(f"separable defaults: {SeparableOptions()}")
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes.split(","):
            height, width, num_classes = SIZES[size]
            image, probs = make_inputs(height, width, num_classes)
            inputs = os.path.join(tmp, size)
            np.save(inputs + ".image.npy", image)
            np.save(inputs + ".probs.npy", probs)
            results = {}
            for method in methods:
                output = os.path.join(tmp, f"{size}-{method}.json")
                subprocess.run([sys.executable, __file__, "--repeats", str(args.repeats),
                                "--worker", method, inputs, output], check=True)
                with open(output) as f:
                    results[method] = json.load(f)
                results[method]["q"] = np.load(output + ".q.npy")
            _print_table(size, height, width, num_classes, probs, results)


def _print_table(size, height, width, num_classes, probs, results):
    exact = results.get("permutohedral", {}).get("q")
    reference = results.get("pydensecrf2")
    print(f"\n{size}: {width}x{height}, K={num_classes}; labels changed by the CRF (exact): "
          + (f"{np.mean(exact.argmax(-1) != probs.argmax(-1)):.1%}" if exact is not None else "-"))
    print("| method | median time (s) | peak RSS (MB) | +run (MB) | labels = exact | "
          "max abs dQ vs pydensecrf2 | time ratio | memory ratio |")
    print("|---|---|---|---|---|---|---|---|")
    for method, r in results.items():
        median = float(np.median(r["times"]))
        agreement = (f"{np.mean(r['q'].argmax(-1) == exact.argmax(-1)):.4%}"
                     if exact is not None else "-")
        max_dq = (f"{np.abs(r['q'] - reference['q']).max():.1e}" if reference is not None else "-")
        ratios = ("-", "-")
        if reference is not None:
            ratios = (f"{median / np.median(reference['times']):.2f}x",
                      f"{r['peak_rss_mb'] / reference['peak_rss_mb']:.2f}x")
        print(f"| {method} | {median:.2f} | {r['peak_rss_mb']:.0f} | "
              f"{r['peak_rss_mb'] - r['rss_before_mb']:.0f} | {agreement} | {max_dq} | "
              f"{ratios[0]} | {ratios[1]} |")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
