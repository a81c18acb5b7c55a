"""Trainer: a train step on a 4x2 CPU mesh equals 1 device; sharding follows the rules;
microbatching equals one big batch; checkpoint save -> restore -> continue equals an
uninterrupted run."""
import jax
import numpy as np
import pytest

from gbt_t5x.train import checkpoints, data, train_lib, trainer as trainer_lib
from gbt_t5x.train.partitioning import PjitPartitioner
from tests.train import tiny


def _trainer(partitioner, num_microbatches=None, seed=0):
  model = tiny.tiny_model()
  state, axes = train_lib.initial_train_state(model, tiny.INPUT_SHAPES, partitioner,
                                              jax.random.PRNGKey(seed))
  return trainer_lib.Trainer(model=model, train_state=state, partitioner=partitioner,
                             eval_names=[], summary_dir=None, train_state_axes=axes,
                             rng=jax.random.PRNGKey(1), learning_rate_fn=lambda step: 1e-2,
                             num_microbatches=num_microbatches, log_every=1000,
                             print_fn=lambda s: None)


def _batches(partitioner, n, start=0):
  for i in range(start, start + n):
    yield data.global_batch(tiny.random_batch(i), partitioner.data_sharding)


@pytest.fixture(scope="module")
def one_device_run():
  p = PjitPartitioner(devices=jax.devices()[:1])
  t = _trainer(p)
  metrics = t.train(_batches(p, 3), 3)
  return t.train_state, metrics


def test_mesh_4x2_equals_one_device(one_device_run):
  state1, metrics1 = one_device_run
  p = PjitPartitioner(num_partitions=2)
  assert dict(p.mesh.shape) == {"data": 4, "model": 2}
  t = _trainer(p)
  metrics8 = t.train(_batches(p, 3), 3)
  assert abs(metrics8["loss"] - metrics1["loss"]) < 1e-5 * max(1.0, abs(metrics1["loss"]))
  assert tiny.params_close(t.train_state.params, state1.params, atol=1e-5)
  # Params are sharded as T5X's rules say: mlp / vocab / heads on 'model', embed replicated.
  params = t.train_state.params
  flat = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_flatten_with_path(params)[0]}
  specs = {k: v.sharding.spec for k, v in flat.items()}
  wi = [s for k, s in specs.items() if "wi" in k]
  assert wi and all(tuple(s) == (None, "model") for s in wi), specs
  emb = [s for k, s in specs.items() if "token_embedder" in k]
  assert emb and all(tuple(s) == ("model", None) for s in emb), specs
  logits = [s for k, s in specs.items() if "logits_dense" in k]
  assert logits and all(tuple(s) == (None, "model") for s in logits), specs
  # The Adam moments of a sharded param are sharded like it.
  mu_leaves = [x for x in jax.tree.leaves(t.train_state.opt_state) if x.ndim == 2]
  assert any(tuple(x.sharding.spec) == (None, "model") for x in mu_leaves)


def test_microbatches_equal_one_batch(one_device_run):
  state1, metrics1 = one_device_run
  p = PjitPartitioner(devices=jax.devices()[:1])
  t = _trainer(p, num_microbatches=2)
  metrics = t.train(_batches(p, 3), 3)
  assert abs(metrics["loss"] - metrics1["loss"]) < 1e-5 * max(1.0, abs(metrics1["loss"]))
  assert tiny.params_close(t.train_state.params, state1.params, atol=2e-5)


def test_checkpoint_resume_equals_uninterrupted(tmp_path, one_device_run):
  state_full, _ = one_device_run
  p = PjitPartitioner(devices=jax.devices()[:1])
  t = _trainer(p)
  t.train(_batches(p, 2), 2)
  ckpt = checkpoints.Checkpointer(str(tmp_path / "ckpt"))
  ckpt.save(2, t.train_state, {"data_positions": {"train": 2}})
  ckpt.wait_until_finished()
  del t  # "kill": a new trainer starts from a different random init, then restores.
  t2 = _trainer(p, seed=123)
  target = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        t2.train_state, t2.train_state_axes)
  t2.train_state, meta = ckpt.restore(ckpt.latest_step(), target)
  assert meta["data_positions"]["train"] == 2
  t2.train(_batches(p, 1, start=meta["data_positions"]["train"]), 1)
  assert int(t2.train_state.step) == 3
  for a, b in zip(jax.tree.leaves(t2.train_state.params), jax.tree.leaves(state_full.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_step_time_is_logged_for_every_window_but_the_first_calls_first(tmp_path):
  """The training loop calls `train` again after every checkpoint and evaluation: the first
  window of the first call (compilation) is untimed, every later window has its seconds/step."""
  from gbt_t5x.train import summaries
  p = PjitPartitioner(devices=jax.devices()[:1])
  model = tiny.tiny_model()
  state, axes = train_lib.initial_train_state(model, tiny.INPUT_SHAPES, p, jax.random.PRNGKey(0))
  t = trainer_lib.Trainer(model=model, train_state=state, partitioner=p, eval_names=[],
                          summary_dir=str(tmp_path), train_state_axes=axes,
                          rng=jax.random.PRNGKey(1), learning_rate_fn=lambda step: 1e-2,
                          log_every=2, print_fn=lambda s: None)
  for call in range(3):
    t.train(_batches(p, 2, start=2 * call), 2)
  rows = summaries.read_metrics_log(str(tmp_path / "metrics.jsonl"))
  for kind in ("seconds_per_step", "cpu_seconds_per_step"):
    timed = {r["step"]: r.get(f"train/timing/{kind}") for r in rows if "step" in r}
    assert sorted(timed) == [2, 4, 6] and timed[2] is None, kind
    assert timed[4] > 0 and timed[6] > 0, kind


def test_nonfinite_step_is_skipped_counted_and_limited():
  from gbt_t5x import errors
  p = PjitPartitioner(devices=jax.devices()[:1])
  model = tiny.tiny_model()
  state, axes = train_lib.initial_train_state(model, tiny.INPUT_SHAPES, p, jax.random.PRNGKey(0))
  lr = lambda step: jax.numpy.where(step == 1, jax.numpy.nan, 1e-2)  # noqa: E731
  printed = []
  t = trainer_lib.Trainer(model=model, train_state=state, partitioner=p, eval_names=[],
                          summary_dir=None, train_state_axes=axes, rng=jax.random.PRNGKey(1),
                          learning_rate_fn=lr, log_every=1, print_fn=printed.append,
                          max_nonfinite_steps=1)
  t.train(_batches(p, 1), 1)
  after_step0 = jax.tree.map(np.asarray, t.train_state.params)
  metrics = t.train(_batches(p, 1, start=1), 1)  # NaN learning rate: update dropped
  assert int(t.train_state.num_nonfinite) == 1 and int(t.train_state.step) == 2
  assert tiny.params_close(t.train_state.params, after_step0, atol=0, rtol=0)
  assert metrics["nonfinite_skipped"] == 1.0 and any("non-finite" in line for line in printed)
  t.train(_batches(p, 1, start=2), 1)  # training goes on with finite params
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(t.train_state.params))
  assert not tiny.params_close(t.train_state.params, after_step0, atol=0, rtol=0)
  t._learning_rate_fn = lambda step: jax.numpy.nan
  t.__dict__.pop("_partitioned_train_step")  # recompile with the new schedule
  with pytest.raises(errors.TrainingStopped, match="max_nonfinite_steps=1"):
    t.train(_batches(p, 1, start=3), 1)
