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
    out = tmp_path / "out"
    predicted = _run(["deeplab_jax.predict", "--config=configs/demo.py:tiny",
                      f"--workdir={workdir}", f"--config.dataset.data_dir={demo_data_dir}",
                      f"--input={images}", f"--output={out}"])
    assert predicted.returncode == 1, predicted.stderr[-3000:]
    assert "segmented 2 of 3" in predicted.stdout and "broken.jpg" in predicted.stdout
    label_a = Image.open(out / "a.png")
    assert label_a.mode == "P" and label_a.size == (90, 70)
    assert np.asarray(label_a).max() < 8
    assert (out / "b_overlay.jpg").exists()


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
