"""state_init.TrainStateInitializer: shardings derived from the optimizer's structure, and the
restore modes (resume, params only, params + optimizer, inference) on a tiny T5."""
import pathlib
import re

import jax
import numpy as np
import pytest

from gbt_t5x.train import checkpoints, optimizers, state_init
from gbt_t5x.train.partitioning import PjitPartitioner
from tests.train import tiny

REPO = pathlib.Path(__file__).resolve().parents[2]


def _by_path(tree):
  return {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


@pytest.mark.parametrize("optimizer", ["adamw", "adafactor"])
def test_optimizer_state_shardings_follow_each_moment_s_param(optimizer):
  make = {"adamw": lambda: optimizers.adamw(weight_decay=0.1),
          "adafactor": lambda: optimizers.adafactor(momentum=0.9, min_dim_size_to_factor=16)}
  model = tiny.tiny_model(make[optimizer]())
  partitioner = PjitPartitioner(num_partitions=2)
  init = state_init.TrainStateInitializer(model, tiny.INPUT_SHAPES, partitioner)
  abstract, axes = init.abstract_state, init.axes
  params = _by_path(abstract.params)
  param_axes = _by_path(axes.params)
  assert any(tuple(s.spec) == (None, "model") for s in param_axes.values())
  per_param = 0
  replicated = partitioner.replicated
  for path, leaf in _by_path(abstract.opt_state).items():
    sharding = _by_path(axes.opt_state)[path]
    suffix = max((p for p in params if path.endswith(p)), key=len, default=None)
    if suffix is not None and tuple(leaf.shape) == tuple(params[suffix].shape):
      per_param += 1
      assert sharding == param_axes[suffix], path  # A moment is sharded like its param.
    else:
      assert sharding == replicated, path  # Counts, hyper-parameters, factored statistics.
  assert per_param >= len(params)
  assert axes.step == replicated and axes.num_nonfinite == replicated and axes.guided is None


@pytest.fixture(scope="module")
def source(tmp_path_factory):
  """A tiny model's fresh state saved as step 3 of a run dir, and the model's initializer."""
  model = tiny.tiny_model()
  init = state_init.TrainStateInitializer(model, tiny.INPUT_SHAPES,
                                          PjitPartitioner(devices=jax.devices()[:1]))
  state, axes = init.from_scratch(jax.random.PRNGKey(0))
  state = state.replace(step=jax.device_put(np.int32(3), axes.step))
  model_dir = tmp_path_factory.mktemp("run")
  checkpoints.model_dir_checkpointer(str(model_dir)).save(3, state, {"data_positions": {}})
  return init, state, str(model_dir)


def _bits_equal(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_restore_modes(source):
  init, saved, model_dir = source
  fresh, axes = init.from_scratch(jax.random.PRNGKey(5))
  # Resume: the whole state, bit for bit.
  start = init.start(fresh, axes, checkpoints.model_dir_checkpointer(model_dir),
                     print_fn=lambda s: None)
  assert start.resumed_step == 3 and start.failed_steps == () and not start.data_from_start
  _bits_equal(start.state, saved)
  # Nothing to resume: the initial checkpoint's params only (step 0, fresh optimizer) ...
  empty = checkpoints.make_checkpointer(str(pathlib.Path(model_dir) / "none"))
  lines = []
  start = init.start(fresh, axes, empty, model_dir, print_fn=lines.append)
  assert lines == [f"initialised params from {model_dir}"] and start.resumed_step is None
  _bits_equal(start.state.params, saved.params)
  _bits_equal(start.state.opt_state, fresh.opt_state)
  assert int(start.state.step) == 0 and not start.data_from_start
  # ... keeping its step (T5X's finetuning) ...
  start = init.start(fresh, axes, empty, model_dir, keep_step=True, print_fn=lines.append)
  assert int(start.state.step) == 3 and start.data_from_start
  # ... or params, optimizer state and step.
  start = init.start(fresh, axes, empty, model_dir, reset_optimizer=False, print_fn=lines.append)
  assert lines[-1] == f"initialised params, optimizer state and step 3 from {model_dir}"
  _bits_equal((start.state.params, start.state.opt_state, start.state.step),
              (saved.params, saved.opt_state, saved.step))
  # Inference: the params and the step, no train state.
  params, step = init.restore_for_inference(model_dir)
  assert step == 3
  _bits_equal(params, saved.params)


def test_params_and_optimizer_of_another_optimizer_is_one_line(source):
  _, _, model_dir = source
  init = state_init.TrainStateInitializer(tiny.tiny_model(optimizers.adafactor()),
                                          tiny.INPUT_SHAPES,
                                          PjitPartitioner(devices=jax.devices()[:1]))
  state, axes = init.from_scratch(jax.random.PRNGKey(0))
  with pytest.raises(ValueError, match=r"^cannot restore params and optimizer state "
                     r"\(reset_optimizer=False\) from checkpoint step 3 in .* does not fit the "
                     r"target: .*opt_state") as e:
    init.restore_params_and_optimizer(model_dir, state, axes)
  assert "\n" not in str(e.value)


def test_one_factory_and_no_private_manifest_reads():
  """Only checkpoints.py constructs checkpointers (`make_checkpointer`) or reads manifests."""
  for path in (REPO / "gbt_t5x").rglob("*.py"):
    if path.name == "checkpoints.py" and path.parent.name == "train":
      continue
    text = path.read_text()
    assert not re.search(r"Checkpointer\(", text), path
    assert "._read_manifest(" not in text, path
