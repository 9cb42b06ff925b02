"""Mixed precision (bf16 compute, fp32 parameters and optimizer) and rematerialisation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deeplab_jax import experiment
from deeplab_jax.train.state import TrainState
from tests.helpers.training import assert_trees_close, first_batch, run_steps

# bf16 keeps 8 mantissa bits (relative rounding 2^-9 = 0.2%); over a few steps of the tiny demo
# model the loss stays within 1% of fp32 (measured: < 0.3%).
BF16_LOSS_RTOL = 0.01


def _conv_dtypes(config):
    model = experiment.create_model(config)
    images = jnp.zeros((1, 33, 33, 3), jnp.uint8)
    variables = jax.eval_shape(lambda: model.init({"params": jax.random.key(0)}, images))
    jaxpr = jax.make_jaxpr(lambda v: model.apply(v, images))(variables)
    dtypes = set()

    def visit(jaxpr):
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == "conv_general_dilated":
                dtypes.add(str(eqn.invars[0].aval.dtype))
            for param in eqn.params.values():
                inner = getattr(param, "jaxpr", param)  # ClosedJaxpr or Jaxpr (jit, remat)
                if hasattr(inner, "eqns"):
                    visit(inner)

    visit(jaxpr.jaxpr)
    return dtypes


def test_bf16_computes_in_bf16_keeps_fp32_state_and_tracks_the_fp32_loss(tiny_config,
                                                                         num_devices):
    config = tiny_config
    config.optim.warmup_steps = 0
    config.optim.base_lr = 3e-3  # fixed: a larger LR amplifies the rounding step by step
    batches = [first_batch(config)] * 3
    params_32, history_32 = run_steps(config, batches)
    config.model.overrides.dtype = "bfloat16"
    assert _conv_dtypes(config) == {"bfloat16"}
    state_16, history_16 = run_steps(config, batches, return_state=True)
    for leaf in jax.tree.leaves((state_16.params, state_16.opt_state, state_16.batch_stats)):
        assert leaf.dtype in (jnp.float32, jnp.int32), leaf.dtype
    for a, b in zip(history_16, history_32):
        assert a["loss"] == pytest.approx(b["loss"], rel=BF16_LOSS_RTOL)
    assert history_16[-1]["loss"] < history_16[0]["loss"]  # it still learns
    assert not np.array_equal(jax.tree.leaves(params_32)[0],
                              jax.device_get(jax.tree.leaves(state_16.params)[0]))


@pytest.mark.parametrize("policy", ["", "dots_saveable"])
def test_remat_changes_memory_not_numbers(tiny_config, policy, num_devices):
    config = tiny_config
    config.optim.warmup_steps = 0
    batch = first_batch(config)
    params_plain, metrics_plain = run_steps(config, [batch])
    config.model.overrides.remat = True
    config.model.remat_policy = policy
    assert experiment.model_overrides(config)["remat"] == (policy or True)
    params_remat, metrics_remat = run_steps(config, [batch])
    assert metrics_remat[0]["loss"] == pytest.approx(metrics_plain[0]["loss"], rel=1e-6)
    assert_trees_close(params_remat, params_plain, rtol=1e-5, atol=1e-6)


def test_remat_shrinks_what_the_backward_pass_keeps():
    """Residuals of jax.vjp (what is stored between forward and backward), by abstract trace."""
    from benchmarks.memory import saved_for_backward
    from deeplab_jax import models

    def saved(**overrides):
        model = models.get_model("deeplab_v2_resnet101_aspp_l", 5, stage_sizes=(1, 2, 3, 1),
                                 widths=(8, 8, 16, 16), **overrides)
        images = jax.ShapeDtypeStruct((2, 65, 65, 3), jnp.uint8)
        variables = jax.eval_shape(lambda x: model.init({"params": jax.random.key(0)}, x), images)
        state = TrainState(step=None, opt_state=None, **variables)
        batch = {"image": images, "label": jax.ShapeDtypeStruct((2, 65, 65), jnp.uint8)}
        return saved_for_backward(model, state, batch)

    plain, full, dots = saved(), saved(remat=True), saved(remat="dots_saveable")
    bf16 = saved(dtype=jnp.bfloat16)
    assert full < dots < plain
    assert full < 0.6 * plain
    assert bf16 < 0.75 * plain  # activations half size; the parameters (kept too) are not


def test_unknown_remat_policy_is_a_clear_error(tiny_config):
    tiny_config.model.overrides.remat = True
    tiny_config.model.remat_policy = "save_nothing_please"
    with pytest.raises(ValueError, match="jax.checkpoint_policies"):
        experiment.model_overrides(tiny_config)
