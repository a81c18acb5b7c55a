"""Names of data ids: the task registry, mixtures, explicit names, and the gin default
(`DATA_ID_NAMES = None` in gin/guided/data_weights.gin takes the train task's names)."""
from __future__ import annotations

import gin
import pytest
import seqio

from gbt_t5x.data import data_ids, demo_world
from gbt_t5x.guided import specs as specs_lib


def test_demo_tasks_register_the_noise_bucket_names_in_id_order():
  from gbt_t5x_tasks import demo  # noqa: F401 (registers demo_nmt, demo_nmt_guide)
  for task in ("demo_nmt", "demo_nmt_guide"):
    names = data_ids.registered_names(task, "noise_bucket")
    assert names == demo_world.NOISE_BUCKET_NAMES
  assert names[demo_world.NOISE_CLEAN] == "clean"
  assert names[demo_world.NOISE_COPY] == "untranslated copy"
  assert data_ids.registered_names("demo_nmt", "example_id") == ()


def test_explicit_names_win_and_unknown_tasks_have_none():
  from gbt_t5x_tasks import demo  # noqa: F401
  assert data_ids.data_id_names("demo_nmt", "noise_bucket", ["a", "b"]) == ("a", "b")
  assert data_ids.data_id_names("demo_nmt", "noise_bucket") == demo_world.NOISE_BUCKET_NAMES
  assert data_ids.data_id_names("no_such_task", "noise_bucket") == ()
  assert data_ids.data_id_names(None, None) == ()


def test_a_mixture_has_the_names_its_tasks_agree_on():
  from gbt_t5x_tasks import demo  # noqa: F401
  name = "gbt_t5x_test_data_ids_mixture"
  if name not in seqio.MixtureRegistry.names():
    seqio.MixtureRegistry.add(name, [("demo_nmt", 1.0), ("demo_nmt_guide", 1.0)])
  assert data_ids.data_id_names(name, "noise_bucket") == demo_world.NOISE_BUCKET_NAMES
  data_ids.register_names("demo_nmt_guide", "noise_bucket", ("a", "b", "c", "d"))
  try:
    assert data_ids.data_id_names(name, "noise_bucket") == ()  # they disagree
  finally:
    data_ids.register_names("demo_nmt_guide", "noise_bucket", demo_world.NOISE_BUCKET_NAMES)


def test_register_refuses_empty_names():
  with pytest.raises(ValueError, match=r"names of t feature 'f' must be non-empty strings"):
    data_ids.register_names("t", "f", ["clean", " "])


@gin.configurable("data_ids_probe")
def _probe(specs=gin.REQUIRED):
  return specs


def _data_weights_spec(*bindings: str) -> specs_lib.GuidedHParam:
  """The data-weights spec that gin/experiments/demo_nmt_guided.gin builds (with `bindings`)."""
  from gbt_t5x import runner
  runner.parse(["experiments/demo_nmt_guided.gin"],
               ["MODEL_DIR = '/tmp/unused'", "data_ids_probe.specs = %GUIDED_HPARAMS", *bindings])
  try:
    return next(s for s in _probe() if s.name == "data_weights")
  finally:
    gin.clear_config()


def test_gin_default_takes_the_train_tasks_names_and_data_id_names_overrides():
  spec = _data_weights_spec()
  assert spec.entry_names == demo_world.NOISE_BUCKET_NAMES
  specs_lib.validate_specs([spec], ())
  spec = _data_weights_spec("DATA_ID_NAMES = ['ok', 'bad', 'short', 'copy']")
  assert spec.entry_names == ("ok", "bad", "short", "copy")
  spec = _data_weights_spec("DATA_ID_NAMES = ['ok', 'bad']")
  with pytest.raises(ValueError, match=r"2 entry names for a data-weight table of 4 entries") as e:
    specs_lib.validate_specs([spec], ())
  assert "\n" not in str(e.value)
