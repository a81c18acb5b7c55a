"""Orbax checkpointer: bit-exact round trips (1 device and a 4x2 mesh), retention, refusals."""
import os

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from gbt_t5x.guided import hypergrad
from gbt_t5x.train import checkpoints, optimizers


@flax.struct.dataclass
class _State:
  step: jax.Array
  params: dict
  opt_state: object
  guided: object = None


def _make_state(seed: int = 0) -> _State:
  rng = np.random.default_rng(seed)
  params = {
      "dense": {"kernel": jnp.asarray(rng.normal(size=(8, 4)), jnp.float32),
                "scale": jnp.asarray(rng.normal(size=(4,)), jnp.bfloat16)},
      "pair": (jnp.asarray(rng.normal(size=(2, 6)), jnp.float32),
               jnp.asarray(rng.integers(0, 100, size=(3,)), jnp.int32)),
  }
  float_params = {"dense": params["dense"], "pair0": params["pair"][0]}
  opt = optimizers.adamw(weight_decay=0.01)
  opt_state = hypergrad.set_hyperparams(opt.init(float_params), {"learning_rate": 0.1})
  grads = jax.tree.map(lambda p: jnp.ones_like(p) * (seed + 1), float_params)
  _, opt_state = opt.update(grads, opt_state, float_params)  # non-trivial moments
  return _State(step=jnp.int32(7 + seed), params=params, opt_state=opt_state)


def _abstract(state, shardings=None):
  if shardings is None:
    shardings = jax.tree.map(lambda x: x.sharding, state)
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      state, shardings)


def _assert_bit_equal(got, want):
  assert jax.tree_util.tree_structure(got) == jax.tree_util.tree_structure(want)
  for path_and_a, b in zip(jax.tree_util.tree_flatten_with_path(got)[0], jax.tree.leaves(want)):
    path, a = path_and_a
    assert a.dtype == b.dtype and a.shape == b.shape, jax.tree_util.keystr(path)
    np.testing.assert_array_equal(np.atleast_1d(np.asarray(a)).view(np.uint8),
                                  np.atleast_1d(np.asarray(b)).view(np.uint8),
                                  err_msg=jax.tree_util.keystr(path))


def _snapshot(directory):
  out = {}
  for root, dirs, files in os.walk(directory):
    for name in dirs + files:
      path = os.path.join(root, name)
      st = os.stat(path)
      out[os.path.relpath(path, directory)] = (st.st_size, st.st_mtime_ns)
  return out


@pytest.fixture(scope="module")
def mesh():
  return Mesh(np.array(jax.devices()).reshape(4, 2), ("data", "model"))


METADATA = {"fingerprint": {"['dense']['kernel']": [8, 4]}, "data_positions": {"train": 123},
            "note": "ok", "ratio": 0.25}


def test_round_trip_single_device(tmp_path):
  state = _make_state()
  ckpt = checkpoints.Checkpointer(str(tmp_path / "ckpt"))
  assert ckpt.save(7, state, METADATA) is True
  assert ckpt.all_steps() == [7] and ckpt.latest_step() == 7
  restored, metadata = ckpt.restore(7, _abstract(state))
  _assert_bit_equal(restored, state)
  assert isinstance(restored, _State) and restored.guided is None
  assert isinstance(restored.opt_state, type(state.opt_state))
  assert float(restored.opt_state.hyperparams["learning_rate"]) == pytest.approx(0.1)
  assert metadata == METADATA
  assert ckpt.read_metadata(7) == METADATA
  ckpt.close()
  # A fresh Checkpointer (a resumed run) sees and restores the same checkpoint.
  again = checkpoints.Checkpointer(str(tmp_path / "ckpt"))
  assert again.latest_step() == 7
  _assert_bit_equal(again.restore(7, _abstract(state))[0], state)
  again.close()


def test_round_trip_on_8_device_mesh(tmp_path, mesh):
  state = _make_state(seed=1)
  specs = _State(
      step=P(),
      params={"dense": {"kernel": P("data", "model"), "scale": P("model")},
              "pair": (P(None, "model"), P())},
      opt_state=jax.tree.map(lambda x: P("data", "model") if x.shape == (8, 4) else P(),
                             state.opt_state))
  shardings = jax.tree.map(lambda s: NamedSharding(mesh, s), specs,
                           is_leaf=lambda x: isinstance(x, P))
  sharded = jax.device_put(state, shardings)
  assert len(sharded.params["dense"]["kernel"].addressable_shards) == 8
  ckpt = checkpoints.Checkpointer(str(tmp_path / "ckpt"))
  ckpt.save(3, sharded, {"a": 1})

  restored, _ = ckpt.restore(3, _abstract(state, shardings))
  _assert_bit_equal(restored, state)
  for got, want in zip(jax.tree.leaves(restored), jax.tree.leaves(shardings)):
    assert got.sharding == want

  # Restore into other shardings: model-parallel kernel becomes data-only, scalars replicated.
  other = jax.tree.map(lambda x: NamedSharding(mesh, P("model") if x.shape == (8, 4) else P()),
                       state)
  restored2, _ = ckpt.restore(3, _abstract(state, other))
  _assert_bit_equal(restored2, state)
  assert restored2.params["dense"]["kernel"].sharding == other.params["dense"]["kernel"]
  ckpt.close()


def test_keep_two_and_existing_step_is_a_no_op(tmp_path):
  directory = tmp_path / "ckpt"
  ckpt = checkpoints.Checkpointer(str(directory), keep=2)
  states = {step: _make_state(seed=step) for step in (1, 2, 3)}
  for step, state in states.items():
    assert ckpt.save(step, state, {"step": step})
  assert ckpt.all_steps() == [2, 3]
  assert sorted(int(n) for n in os.listdir(directory) if n.isdigit()) == [2, 3]
  before = _snapshot(directory)
  assert ckpt.save(3, states[1], {"step": "other"}) is False
  assert _snapshot(directory) == before
  restored, metadata = ckpt.restore(3, _abstract(states[3]))
  _assert_bit_equal(restored, states[3])
  assert metadata == {"step": 3}
  ckpt.close()


def test_mismatched_target_is_refused_and_disk_untouched(tmp_path):
  directory = tmp_path / "ckpt"
  state = _make_state()
  ckpt = checkpoints.Checkpointer(str(directory))
  ckpt.save(5, state, {})
  before = _snapshot(directory)

  bigger = state.replace(params={**state.params, "dense": {
      **state.params["dense"], "kernel": jnp.zeros((8, 5), jnp.float32)}})
  with pytest.raises(ValueError) as err:
    ckpt.restore(5, _abstract(bigger))
  message = str(err.value)
  assert "\n" not in message
  assert ".params['dense']['kernel']" in message
  assert "(8, 4)" in message and "(8, 5)" in message

  extra = state.replace(guided={"raw": jnp.zeros((2,))})
  with pytest.raises(ValueError, match=r"\.guided\['raw'\] \(shape \(2,\)\) is not in the "
                                       r"checkpoint"):
    ckpt.restore(5, _abstract(extra))

  fewer = state.replace(params={"dense": state.params["dense"]})
  with pytest.raises(ValueError, match=r"checkpoint leaf \.params\['pair'\]\[0\]"):
    ckpt.restore(5, _abstract(fewer))

  with pytest.raises(ValueError, match=r"no checkpoint for step 6 .*steps: \[5\]"):
    ckpt.restore(6, _abstract(state))
  assert _snapshot(directory) == before
  ckpt.close()


def test_missing_directory_is_not_created_and_tmp_dirs_are_ignored(tmp_path):
  directory = tmp_path / "absent"
  ckpt = checkpoints.Checkpointer(str(directory))
  assert ckpt.latest_step() is None and ckpt.all_steps() == []
  assert not directory.exists()
  ckpt.save(1, {"x": jnp.arange(3)}, {})
  # An interrupted save leaves only orbax's tmp directory: it is not a checkpoint.
  (directory / "2.orbax-checkpoint-tmp-1234").mkdir()
  assert checkpoints.Checkpointer(str(directory)).all_steps() == [1]
  assert ckpt.latest_step() == 1
  ckpt.close()


def test_bad_keep_raises(tmp_path):
  with pytest.raises(ValueError, match="keep"):
    checkpoints.Checkpointer(str(tmp_path), keep=0)


def test_restore_params_reads_only_params_and_checks_shapes(tmp_path):
  import jax.numpy as jnp
  from gbt_t5x.train.train_state import TrainState
  state = TrainState(step=jnp.int32(3), params={"enc": {"w": jnp.arange(6.0).reshape(2, 3)}},
                     opt_state=(jnp.zeros(4),), guided={"x": jnp.ones(())})
  ckpt = checkpoints.Checkpointer(str(tmp_path / "c"))
  ckpt.save(3, state, {})
  sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  target = {"enc": {"w": jax.ShapeDtypeStruct((2, 3), jnp.float32, sharding=sharding)}}
  params = ckpt.restore_params(3, target)
  np.testing.assert_array_equal(np.asarray(params["enc"]["w"]), np.arange(6.0).reshape(2, 3))
  bad = {"enc": {"w": jax.ShapeDtypeStruct((3, 3), jnp.float32, sharding=sharding)}}
  with pytest.raises(ValueError, match=r"\['enc'\]\['w'\]: checkpoint shape \(2, 3\) != target"):
    ckpt.restore_params(3, bad)
