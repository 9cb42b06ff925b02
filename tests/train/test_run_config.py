"""config.json of a run and the checkpoint layout check: the differences named, hand-written."""

import json
import logging

import jax
import ml_collections
import numpy as np

from deeplab_jax.train import checkpoint, run_config


def _config(widths, lr):
    config = ml_collections.ConfigDict()
    config.model = ml_collections.ConfigDict({"name": "m", "overrides": {"widths": widths}})
    config.optim = ml_collections.ConfigDict({"base_lr": lr})
    config.seed = 0
    return config


def test_differences_name_each_changed_field_model_first(tmp_path):
    saved = json.loads(_config((8, 16), 0.01).to_json_best_effort())
    saved["dataset"] = {"name": "demo"}  # a field this config no longer has
    now = _config((8, 32), 0.02)
    assert run_config.differences(saved, now) == [
        "model.overrides.widths: [8, 16] there, [8, 32] here",
        "dataset.name: \"demo\" there, absent here",
        "optim.base_lr: 0.01 there, 0.02 here",
    ]
    assert run_config.differences(json.loads(now.to_json_best_effort()), now) == []


def test_explain_adds_the_differences_only_when_there_are_some(tmp_path):
    run_config.write(_config((8, 16), 0.01), tmp_path)
    error = checkpoint.CheckpointLayoutError("checkpoint 6 holds another model's variables")
    assert run_config.explain(error, tmp_path, _config((8, 16), 0.01)) == str(error)
    explained = run_config.explain(error, tmp_path, _config((8, 32), 0.01))
    assert explained.startswith(str(error) + ". The run that wrote them")
    assert "model.overrides.widths: [8, 16] there, [8, 32] here" in explained
    assert run_config.explain(error, tmp_path / "no_run", _config((8, 32), 0.01)) == str(error)


def test_layout_differences_compare_variables_not_optimizer_state():
    def state(kernel_out, extra=False):
        params = {"conv": {"kernel": np.zeros((3, 3, 4, kernel_out))}}
        if extra:
            params["head"] = {"bias": np.zeros(5)}
        return {"params": params, "batch_stats": {"bn": {"mean": np.zeros(kernel_out)}},
                "opt_state": (np.zeros(()),), "step": np.zeros(())}

    assert checkpoint.layout_differences(state(8), state(8)) == []
    # The optimizer state's paths are not compared (orbax drops its empty nodes when saving).
    assert checkpoint.layout_differences(state(8), {**state(8), "opt_state": ()}) == []
    assert checkpoint.layout_differences(state(8), state(16, extra=True)) == [
        "params/conv/kernel is (3, 3, 4, 8) in the checkpoint, (3, 3, 4, 16) here",
        "params/head/bias (5,) is not in the checkpoint",
        "batch_stats/bn/mean is (8,) in the checkpoint, (16,) here",
    ]
    assert checkpoint.layout_differences(state(8, extra=True), state(8)) == [
        "params/head/bias (5,) is only in the checkpoint"]
    # Abstract states (ShapeDtypeStruct leaves, as restore gets them) compare the same way.
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state(16))
    assert len(checkpoint.layout_differences(state(8), abstract)) == 2


def test_a_resume_with_changed_settings_warns_and_keeps_the_old_record(tmp_path, caplog):
    first = _config((8, 16), 0.01)
    first.num_steps = 6
    run_config.record(first, tmp_path)  # a fresh start: config.json only
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]
    with caplog.at_level(logging.WARNING):
        run_config.record(first, tmp_path, resumed_step=6)  # the same settings: nothing to say
    assert not caplog.text and sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]

    longer = _config((8, 16), 0.01)
    longer.num_steps = 12
    with caplog.at_level(logging.WARNING):
        run_config.record(longer, tmp_path, resumed_step=6)
    assert "resuming at step 6 with settings that differ" in caplog.text
    assert "num_steps: 6 there, 12 here" in caplog.text and "learning-rate schedule" in caplog.text
    assert json.loads((tmp_path / "config_until_step_6.json").read_text())["num_steps"] == 6
    assert run_config.read(tmp_path)["num_steps"] == 12
