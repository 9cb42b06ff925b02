"""Checkpoints: the fingerprint catches a silently changed array; NaN states are never saved."""

import json
import os

import jax
import jax.numpy as jnp
import pytest

from deeplab_jax.finite import NonFiniteError
from deeplab_jax.train import fingerprint
from deeplab_jax.train.checkpoint import CheckpointError, Checkpoints
from tests.helpers import training


def test_fingerprint_sees_any_single_changed_element():
    tree = {"w": jnp.arange(12, dtype=jnp.float32).reshape(3, 4), "n": jnp.int32(7)}
    prints, ok = fingerprint.fingerprint(tree)
    assert ok
    changed = {"w": tree["w"].at[2, 1].set(jnp.nextafter(9.0, 10.0)), "n": tree["n"]}
    assert fingerprint.mismatches(prints, fingerprint.fingerprint(changed)[0]) == ["w"]
    swapped = {"w": tree["w"][::-1], "n": tree["n"]}  # same values, other places
    assert fingerprint.mismatches(prints, fingerprint.fingerprint(swapped)[0]) == ["w"]
    assert not fingerprint.fingerprint({"w": tree["w"].at[0, 0].set(jnp.nan)})[1]


def test_altered_checkpoint_and_nan_state(tiny_config, tmp_path):
    setup, state, _ = training.build(tiny_config)
    checkpoints = Checkpoints(str(tmp_path), keep=3)
    checkpoints.save(1, state, {})
    nan_state = state.replace(params=jax.tree.map(lambda p: p * jnp.nan, state.params))
    with pytest.raises(NonFiniteError, match="refusing to save checkpoint 2"):
        checkpoints.save(2, nan_state, {})
    checkpoints.close()
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["1"]
    # An array whose stored bytes no longer match what was saved (as a bit flip that the storage
    # layer does not detect would leave it): the recorded checksum differs.
    path = tmp_path / "checkpoints" / "1" / "integrity" / "metadata"
    record = json.loads(path.read_text())
    name = sorted(record["fingerprint"])[0]
    record["fingerprint"][name] ^= 1
    path.write_text(json.dumps(record))
    checkpoints = Checkpoints(str(tmp_path), read_only=True)
    with pytest.raises(CheckpointError, match=f"altered after it was written.*{name}"):
        checkpoints.restore_step(1, setup.abstract)
    checkpoints.close()
