"""jax.export of inference: reloaded in a fresh process, it reproduces the live model's labels."""

import importlib.util
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deeplab_jax import models
from deeplab_jax.crf import CRFParams
from deeplab_jax.serving.export import export_inference, load_inference, make_inference_fn
from deeplab_jax.models.resize import upsample_logits
from deeplab_jax.weights.mapping import flatten

SIZE = (33, 41)


@pytest.fixture(scope="module")
def demo():
    model = models.get_model("deeplab_v2_demo", 4)
    # Random variables in the model's shapes (no init compile): BN variances kept positive.
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, *SIZE, 3))))
    rng = np.random.default_rng(1)
    variables = jax.tree_util.tree_map_with_path(
        lambda path, leaf: (np.abs(rng.normal(size=leaf.shape)) + 0.5 if "var" in str(path[-1])
                            else 0.3 * rng.normal(size=leaf.shape)).astype(np.float32), shapes)
    images = np.random.default_rng(0).integers(0, 256, (3, *SIZE, 3), dtype=np.uint8)
    return model, variables, images


def _live_labels(model, variables, images):
    """Independent of serving/export.py: model -> upsampling at the stride -> argmax."""
    logits = model.apply(variables, images.astype(np.float32), train=False)
    full = upsample_logits(logits, SIZE, output_stride=8)
    return np.asarray(jnp.argmax(full, axis=-1))


def test_reloaded_in_a_fresh_process_with_other_batch_sizes(demo, tmp_path):
    model, variables, images = demo
    path = tmp_path / "demo.jaxexport"
    exported = export_inference(model, variables, path, input_size=SIZE)
    assert exported.in_avals[0].shape[1:] == (*SIZE, 3) and "cpu" in exported.platforms
    np.save(tmp_path / "images.npy", images)
    script = textwrap.dedent(f"""
        import numpy as np
        from deeplab_jax.serving.export import load_inference
        infer = load_inference({str(path)!r})
        images = np.load({str(tmp_path / 'images.npy')!r})
        np.save({str(tmp_path / 'three.npy')!r}, np.asarray(infer(images)))
        np.save({str(tmp_path / 'one.npy')!r}, np.asarray(infer(images[1:2])))
    """)
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    expected = _live_labels(model, variables, images)
    three, one = np.load(tmp_path / "three.npy"), np.load(tmp_path / "one.npy")
    assert three.dtype == np.int32 and three.shape == (3, *SIZE)
    np.testing.assert_array_equal(three, expected)
    np.testing.assert_array_equal(one, expected[1:2])
    assert len(np.unique(expected)) > 1  # a constant map would make the comparison weak


def test_crf_variant_matches_the_live_function(demo, tmp_path):
    model, variables, images = demo
    crf = CRFParams(iterations=2)
    path = tmp_path / "crf.jaxexport"
    export_inference(model, variables, path, input_size=SIZE, crf=crf, platforms=("cpu",))
    reloaded = np.asarray(load_inference(path)(images))
    live = np.asarray(jax.jit(make_inference_fn(model, variables, SIZE, crf=crf))(images))
    np.testing.assert_array_equal(reloaded, live)
    assert (live != _live_labels(model, variables, images)).any()  # the CRF changed something


def test_wrong_inputs_and_files_give_clear_errors(demo, tmp_path):
    model, variables, images = demo
    path = tmp_path / "demo.jaxexport"
    export_inference(model, variables, path, input_size=SIZE, platforms=("cpu",))
    infer = load_inference(path)
    with pytest.raises(ValueError, match=r"\(B, 33, 41, 3\)"):
        infer(images[:, :32])
    with pytest.raises(ValueError, match="uint8"):
        infer(images.astype(np.float32))
    (tmp_path / "junk.jaxexport").write_bytes(b"junk")
    with pytest.raises(ValueError, match="junk.jaxexport"):
        load_inference(tmp_path / "junk.jaxexport")
    with pytest.raises(ValueError, match="input_size"):
        export_inference(model, variables, path, input_size=(33,))


def test_tf_saved_model_serves_the_same_labels(demo, tmp_path):
    """jax2tf SavedModel, written and served by TensorFlow in a subprocess (TF stays out of this
    process: imported before PyTorch's triton, it crashes the interpreter). Serialised for the
    StableHLO version the installed TensorFlow reads (`serving.tf_compat`): jax 0.12's default
    is newer than TensorFlow 2.21 can deserialise."""
    if importlib.util.find_spec("tensorflow") is None:
        pytest.skip("TensorFlow (the export extra) is not installed")
    model, variables, images = demo
    np.savez(tmp_path / "variables.npz", **flatten(variables))
    np.save(tmp_path / "images.npy", images[:2])
    script = textwrap.dedent(f"""
        import numpy as np, tensorflow as tf
        from deeplab_jax import models, weights
        from deeplab_jax.serving import tf_compat
        from deeplab_jax.serving.export import export_saved_model
        variables = weights.load_variables({str(tmp_path / 'variables.npz')!r})
        model = models.get_model("deeplab_v2_demo", 4)
        with tf_compat.stablehlo_for_tensorflow():
            export_saved_model(model, variables, {str(tmp_path / 'saved_model')!r}, {SIZE!r})
        serve = tf.saved_model.load({str(tmp_path / 'saved_model')!r}).signatures["serving_default"]
        images = tf.constant(np.load({str(tmp_path / 'images.npy')!r}))
        np.save({str(tmp_path / 'labels.npy')!r}, serve(images=images)["labels"].numpy())
    """)
    env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    np.testing.assert_array_equal(np.load(tmp_path / "labels.npy"),
                                  _live_labels(model, variables, images[:2]))


def test_the_stablehlo_target_follows_the_consumer():
    from deeplab_jax.serving import tf_compat

    assert tf_compat.target_version("1.13.7", "1.15.0", "0.9.0") == "1.13.7"
    assert tf_compat.target_version("1.13.7", "1.12.0", "0.9.0") == "1.12.0"  # already readable
    with pytest.raises(tf_compat.IncompatibleTensorFlowError,
                       match=r"reads StableHLO up to 1\.2\.0.*1\.5\.0 at the oldest"):
        tf_compat.target_version("1.2.0", "1.18.0", "1.5.0")


def test_the_export_command_line_writes_a_reloadable_artifact(demo, tmp_path):
    """python -m deeplab_jax.export --weights=DIR: the artifact gives the live model's labels."""
    from deeplab_jax import weights
    from deeplab_jax.weights import model_info

    model, variables, images = demo
    info = model_info.make_model_info("deeplab_v2_demo", 4, {}, "test", "-")
    weights.save_variables(tmp_path / "w", variables, model_info=info)
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    result = subprocess.run(
        [sys.executable, "-m", "deeplab_jax.export", f"--weights={tmp_path / 'w'}",
         f"--output={tmp_path / 'demo.jaxexport'}", f"--input_size={SIZE[0]},{SIZE[1]}"],
        capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "input 33x41" in result.stdout
    labels = np.asarray(load_inference(tmp_path / "demo.jaxexport")(images))
    np.testing.assert_array_equal(labels, _live_labels(model, variables, images))
