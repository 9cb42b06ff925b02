"""End to end: `python -m deeplab_jax.main` on the tiny demo config, then evaluate and predict."""

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(args, env_extra=None):
    env = dict(os.environ)
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=900)


def test_main_trains_evaluates_and_writes_everything(demo_data_dir, tmp_path):
    workdir = str(tmp_path / "run")
    result = _run(["deeplab_jax.main", "--config=configs/demo.py:tiny", f"--workdir={workdir}",
                   f"--config.dataset.data_dir={demo_data_dir}"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "final val mIoU" in result.stdout
    for name in ("config.json", "metrics.jsonl", "tensorboard", "checkpoints", "predictions"):
        assert os.path.exists(os.path.join(workdir, name)), name
    records = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    val = [r for r in records if r["split"] == "val"]
    assert [r["step"] for r in val] == [3, 6]
    assert all(0.0 <= r["miou"] <= 1.0 for r in val)
    assert any("iou/disc" in r for r in val)
    train = [r for r in records if r["split"] == "train"]
    assert train and all(r["loss"] > 0 for r in train)
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["3", "6"]
    pngs = [f for f in os.listdir(os.path.join(workdir, "predictions")) if f.endswith(".png")]
    assert len(pngs) == 2
    assert any(f.startswith("events") for f in os.listdir(os.path.join(workdir, "tensorboard")))
    # The console shows the run's progress, not orbax's bookkeeping around each save, nor JAX's
    # note that the absent TPU backend could not start (jax 0.10 writes it on CPU machines).
    assert "saved checkpoint at step 6" in result.stderr
    assert "step 6: val mIoU" in result.stderr
    for library_info in ("Finished synchronous save", "atomicity.py", "checkpoint_manager.py",
                         "Unable to initialize backend"):
        assert library_info not in result.stderr, library_info

    # A misspelt override is rejected by the locked config.
    bad = _run(["deeplab_jax.main", "--config=configs/demo.py:tiny", f"--workdir={workdir}",
                "--config.optim.base_lrr=0.1"])
    assert bad.returncode != 0
    assert "base_lrr" in bad.stderr

    # The evaluate entry point reads the same checkpoint and prints the same mIoU.
    evaluated = _run(["deeplab_jax.evaluate", "--config=configs/demo.py:tiny",
                      f"--workdir={workdir}", f"--config.dataset.data_dir={demo_data_dir}"])
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert f"val mIoU {val[-1]['miou']:.4f}" in evaluated.stdout

    # predict: any image size, palette PNG + overlay each, a broken file reported, others done.
    images = tmp_path / "images"
    images.mkdir()
    from PIL import Image
    import numpy as np

    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (70, 90, 3), dtype=np.uint8)).save(images / "a.jpg")
    Image.fromarray(rng.integers(0, 255, (129, 129, 3), dtype=np.uint8)).save(images / "b.png")
    (images / "broken.jpg").write_bytes(b"not a jpeg")
    (images / "notes.txt").write_text("not an image either: named in a warning, not segmented")
    out = tmp_path / "out"
    predicted = _run(["deeplab_jax.predict", "--config=configs/demo.py:tiny",
                      f"--workdir={workdir}", f"--config.dataset.data_dir={demo_data_dir}",
                      f"--input={images}", f"--output={out}"])
    assert predicted.returncode == 1, predicted.stderr[-3000:]
    assert "segmented 2 of 3" in predicted.stdout and "broken.jpg" in predicted.stdout
    assert "Pillow cannot read it" in predicted.stdout and "BytesIO" not in predicted.stdout
    assert "skipped 1 file(s)" in predicted.stderr and "notes.txt" in predicted.stderr
    label_a = Image.open(out / "a.png")
    assert label_a.mode == "P" and label_a.size == (90, 70)
    assert np.asarray(label_a).max() < 8
    assert (out / "b_overlay.jpg").exists()

    # The generations figure: image | the run | ground truth for one val image (the MS/flip + CRF
    # column, --crf, left out here: its extra compilations cost CI time).
    figure = tmp_path / "generations.jpg"
    drawn = _run(["experiments.generations_figure", f"--run=tiny={workdir}", "--images=1",
                  f"--data_dir={demo_data_dir}", f"--output={figure}"])
    assert drawn.returncode == 0, drawn.stderr[-3000:]
    from deeplab_jax.serving import visualize

    # One row of a 129 px val image, three columns, the gaps and the title strip.
    assert Image.open(figure).size == (3 * 129 + 2 * visualize.GAP, visualize.TITLE_HEIGHT + 129)
    refused = _run(["experiments.generations_figure", f"--run=v4={workdir}"])
    assert refused.returncode == 2 and "VARIANT one of" in refused.stderr


def test_voc_config_without_data_gives_one_clear_error(tmp_path):
    result = _run(["deeplab_jax.main", "--config=configs/voc.py", f"--workdir={tmp_path}",
                   f"--config.dataset.data_dir={tmp_path / 'tfds'}",
                   "--config.dataset.manual_dir=/nonexistent/voc", "--config.batch_size=8"])
    assert result.returncode != 0
    assert "VOCdevkit/VOC2012" in result.stderr
    assert "manual_dir" in result.stderr


@pytest.mark.parametrize("variant", ["v2_aspp_l", "v2_aspp_s", "v2_largefov", "v2_msc",
                                     "v1_largefov"])
def test_voc_variants_build(variant):
    from configs import voc
    from deeplab_jax import models

    config = voc.get_config(variant)
    assert config.model.name in models.MODELS
    assert config.batch_size in (10, 20) and config.input.crop_size == (321, 321)


def _console_scripts():
    """[project.scripts] of pyproject.toml: name -> 'module:function'."""
    import tomllib

    with open(os.path.join(REPO, "pyproject.toml"), "rb") as handle:
        return tomllib.load(handle)["project"]["scripts"]


# Entry point -> a flag of its own that its --help must list (absl's flags do not count).
HELP_FLAGS = {"train": "--workdir", "evaluate": "--weights", "predict": "--probabilities",
              "export": "--saved_model", "convert": "--allow_missing", "fetch": "--mirror",
              "crf_tune": "--num_images"}


def test_every_console_script_has_a_useful_help():
    """Run as pip's console-script stubs run them: sys.argv[0] is the script and __main__ is
    not the command-line module, which absl's --help needs (deeplab_jax/cli.py)."""
    scripts = _console_scripts()
    assert scripts["deeplab-jax"] == "deeplab_jax.cli:train"
    assert {target.split(":")[1] for target in scripts.values()} == set(HELP_FLAGS)
    processes = {}
    for name, target in scripts.items():
        module, function = target.split(":")
        code = (f"import sys; sys.argv = [{name!r}, '--help']; import {module}; "
                f"sys.exit({module}.{function}())")
        processes[name] = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, text=True,
                                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    for name, process in processes.items():
        output, _ = process.communicate(timeout=300)
        # absl ends --help with exit status 1 (app.HelpFlag); anything else is a failure.
        assert process.returncode == 1 and "Traceback" not in output, (name, output[-2000:])
        assert HELP_FLAGS[scripts[name].split(":")[1]] in output, (name, output[-2000:])
        assert "python -m deeplab_jax" in output, (name, output[-2000:])  # the module docstring


def _demo_weights(path, num_classes):
    """Random deeplab_v2_demo weights converted for the demo data set (model info included)."""
    import jax
    import numpy as np

    from deeplab_jax import models, weights
    from deeplab_jax.weights import model_info

    model = models.get_model("deeplab_v2_demo", num_classes)
    variables = jax.device_get(jax.jit(model.init)(jax.random.key(0), np.zeros((1, 33, 33, 3))))
    info = model_info.make_model_info("deeplab_v2_demo", num_classes, {}, "test", "-",
                                      dataset="demo" if num_classes == 8 else None,
                                      published={"demo val": 67.0})
    weights.save_variables(path, variables, model_info=info)


def test_evaluate_converted_weights_with_flip_and_crf(demo_data_dir, tmp_path):
    _demo_weights(tmp_path / "w", 8)
    result = _run(["deeplab_jax.evaluate", f"--weights={tmp_path / 'w'}",
                   "--config=configs/demo.py:tiny", f"--config.dataset.data_dir={demo_data_dir}",
                   "--config.eval.flip=True", "--config.eval.scales=(0.75,1.0)",
                   "--config.crf.enabled=True", "--config.crf.iterations=1",
                   "--config.eval.trimap_widths=(2,4)"])
    assert result.returncode == 0, result.stderr[-3000:]
    (output,) = os.listdir(tmp_path / "w" / "eval")
    assert output.startswith("demo-tiny-")
    record = json.load(open(tmp_path / "w" / "eval" / output / "results.json"))
    assert record["model"] == "deeplab_v2_demo" and record["num_images"] == 16
    assert record["settings"]["options"]["flip"] is True
    assert record["settings"]["options"]["scales"] == [0.75, 1.0]
    assert record["settings"]["crf"]["iterations"] == 1
    assert set(record["per_class"]) == {"background", "disc", "square", "triangle", "ring",
                                        "star", "bar", "cross"}
    assert 0.0 <= record["miou"] <= 1.0 and "crf_miou" in record and "trimap_accuracy" in record
    assert record["published"] == {"demo val": 67.0}
    assert f"val mIoU {record['miou']:.4f}" in result.stdout and "after CRF" in result.stdout

    # Weights for another number of classes: one clear error, no results.
    _demo_weights(tmp_path / "w5", 5)
    result = _run(["deeplab_jax.evaluate", f"--weights={tmp_path / 'w5'}",
                   "--config=configs/demo.py:tiny", f"--config.dataset.data_dir={demo_data_dir}"])
    assert result.returncode == 1
    assert "predicts 5 classes" in result.stderr and "'demo' has 8" in result.stderr
    assert not (tmp_path / "w5" / "eval").exists()


def test_predict_with_converted_weights_needs_no_config(tmp_path):
    from PIL import Image
    import numpy as np

    _demo_weights(tmp_path / "w", 8)
    images = tmp_path / "images"
    for folder in ("a", "b"):
        (images / folder).mkdir(parents=True)
    rng = np.random.default_rng(0)
    picture = rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)
    Image.fromarray(picture).save(images / "a" / "x.png")
    Image.fromarray(picture).save(images / "b" / "x.png")
    Image.fromarray(picture[..., 0].astype(np.uint16) * 257).save(images / "b" / "gray16.png")
    out = tmp_path / "out"
    result = _run(["deeplab_jax.predict", f"--weights={tmp_path / 'w'}", f"--input={images}",
                   f"--output={out}", "--probabilities"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "segmented 3 of 3" in result.stdout
    a, b = np.asarray(Image.open(out / "a" / "x.png")), np.asarray(Image.open(out / "b" / "x.png"))
    np.testing.assert_array_equal(a, b)  # same picture, two folders, two files
    assert np.load(out / "b" / "gray16_probs.npy").shape == (40, 50, 8)
