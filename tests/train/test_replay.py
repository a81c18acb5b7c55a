"""Replaying fixed hyper-parameter schedules in a plain Trainer equals the same constants."""
import jax
import pytest

from gbt_t5x.guided import schedule
from gbt_t5x.train import data, optimizers, train_lib, trainer as trainer_lib
from gbt_t5x.train.partitioning import PjitPartitioner
from tests.train import tiny


def _trainer(optimizer, lr, schedules=None, entry_names=None):
  p = PjitPartitioner(devices=jax.devices()[:1])
  model = tiny.tiny_model(optimizer=optimizer)
  state, axes = train_lib.initial_train_state(model, tiny.INPUT_SHAPES, p, jax.random.PRNGKey(0))
  t = trainer_lib.Trainer(model=model, train_state=state, partitioner=p, eval_names=[],
                          summary_dir=None, train_state_axes=axes, rng=jax.random.PRNGKey(1),
                          learning_rate_fn=lambda step: lr, log_every=1000,
                          print_fn=lambda s: None, hyperparam_schedules=schedules,
                          hyperparam_entry_names=entry_names)
  return t, p


def _run(optimizer, lr, schedules=None, steps=2, entry_names=None):
  t, p = _trainer(optimizer, lr, schedules, entry_names)
  batches = (data.global_batch(tiny.random_batch(i, with_data_ids=3), p.data_sharding)
             for i in range(steps))
  metrics = t.train(batches, steps)
  return t.train_state.params, metrics


def test_replayed_lr_multiplier_and_b1_equal_constants():
  reference, _ = _run(optimizers.adamw(b1=0.8), 2e-3)
  replayed, metrics = _run(optimizers.adamw(b1=0.9), 1e-3, {
      "learning_rate": schedule.piecewise_linear([0], [2.0]),
      "b1": schedule.piecewise_linear([0, 10], [0.8, 0.8])})
  assert tiny.params_close(reference, replayed, atol=1e-6)
  assert abs(metrics["learning_rate"] - 2e-3) < 1e-9 and abs(metrics["hp/b1"] - 0.8) < 1e-6


def test_replayed_uniform_data_weights_change_nothing_and_skewed_ones_do():
  base, _ = _run(optimizers.adamw(), 1e-3)
  uniform, _ = _run(optimizers.adamw(), 1e-3,
                    {"data_weights": schedule.piecewise_linear([0], [[2.0, 2.0, 2.0]])})
  skewed, _ = _run(optimizers.adamw(), 1e-3,
                   {"data_weights": schedule.piecewise_linear([0], [[1.0, 0.1, 3.0]])})
  assert tiny.params_close(base, uniform, atol=1e-6)
  assert not tiny.params_close(base, skewed, atol=1e-6)


def test_replayed_data_weights_are_reported_by_entry_name():
  dw = {"data_weights": schedule.piecewise_linear([0], [[1.0, 0.1, 3.0]])}
  _, metrics = _run(optimizers.adamw(), 1e-3, dw,
                    entry_names={"data_weights": ["clean", "misaligned", "untranslated copy"]})
  assert {k: round(v, 6) for k, v in metrics.items() if k.startswith("hp/")} == {
      "hp/data_weights/clean": 1.0, "hp/data_weights/misaligned": 0.1,
      "hp/data_weights/untranslated_copy": 3.0}
  _, metrics = _run(optimizers.adamw(), 1e-3, dw)  # without names: the entry index
  assert sorted(k for k in metrics if k.startswith("hp/")) == [
      "hp/data_weights/0", "hp/data_weights/1", "hp/data_weights/2"]
  with pytest.raises(ValueError, match=r"hyperparam_entry_names\['data_weights'\]: 2 entry "
                     r"names for a value of 3 entries") as info:
    _run(optimizers.adamw(), 1e-3, dw, entry_names={"data_weights": ["clean", "noisy"]})
  assert "\n" not in str(info.value)


def test_replayed_data_weights_without_data_ids_are_refused_in_one_line():
  dw = {"data_weights": schedule.piecewise_linear([0], [[1.0, 0.1, 3.0]])}
  t, _ = _trainer(optimizers.adamw(), 1e-3, dw)
  t.check_train_batch(tiny.random_batch(0, with_data_ids=3))
  with pytest.raises(ValueError, match=r"replayed data_weights need per-token data ids: set "
                     r"data_id_feature on the train/ DatasetConfig") as info:
    t.check_train_batch(tiny.random_batch(0))
  assert "\n" not in str(info.value)
  _trainer(optimizers.adamw(), 1e-3)[0].check_train_batch(tiny.random_batch(0))  # no weights


def test_replayed_run_progress_line_shows_the_multiplier_apart_from_the_applied_lr():
  t, _ = _trainer(optimizers.adamw(), 1e-3)
  view = t.progress_view({"loss": 3.0, "learning_rate": 2e-3, "hp/learning_rate": 2.0,
                          "hp/data_weights/untranslated_copy": 0.5, "num_tokens": 10.0})
  assert view == {"loss": 3.0, "learning_rate": 2e-3, "lr_mult": 2.0,
                  "hp/data_weights/untranslated_copy": 0.5}
