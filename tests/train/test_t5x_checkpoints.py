"""T5X checkpoints in and out (`gbt_t5x.train.t5x_checkpoints`, `gbt_t5x.export_t5x`).

T5X itself is not installable, so its layout is reproduced here *independently of the code under
test*, step by step as T5X's `t5x/checkpoints.py` (VERSION 3) does it:
  - `_write_as_t5x` mirrors `Checkpointer.save`: `_get_spec` (zarr driver, `file` kvstore whose
    path is the '/'-joined state-dict name with '/' -> '.', relative to the step folder),
    `_get_param_info` (metadata: gzip compressor, shape, chunks), `_write_state_to_tensorstore`
    (the path made absolute only for the write; with a save dtype, a `cast` spec around it, the
    stored spec keeping the relative path), `register_ts_spec_for_serialization` (a `ts.Spec`
    leaf serialised as its JSON), unpartitioned leaves (the step) left inline, and the
    msgpack file `checkpoint` = `flax.serialization.to_bytes({'version': 3, 'optimizer':
    state_dict})` of a flax-optimizer state dict `{'target': params, 'state': {'step',
    'param_states': Adafactor's v_row / v_col / v / m}}`;
  - `_read_as_t5x` mirrors `Checkpointer.restore` + `_read_ts`: `msgpack_restore`, drop
    `metadata.chunks` / `metadata.compressor`, join the relative kvstore path to the step folder,
    check the shape, `ts.open(...).read()`.
One tiny T5 (shared compiled apply) checks logits through a T5X-layout round trip.
"""
from __future__ import annotations

import os
import pathlib

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorstore as ts
from flax import serialization

from gbt_t5x import export_t5x
from gbt_t5x.train import checkpoints, state_init, t5x_checkpoints
from tests.train import tiny

DEVICE = jax.sharding.SingleDeviceSharding(jax.devices()[0])


def _names(tree, prefix=()):
  """('a/b/c', leaf) for a nested dict; a tensorstore spec dict is one leaf."""
  if isinstance(tree, dict) and "driver" not in tree:
    for key, value in tree.items():
      yield from _names(value, prefix + (key,))
  else:
    yield "/".join(prefix), tree


# T5X's register_ts_spec_for_serialization: a ts.Spec leaf becomes its JSON in the state dict.
serialization.register_serialization_state(
    ts.Spec, ty_to_state_dict=lambda spec: spec.to_json(),
    ty_from_state_dict=lambda spec, state: ts.Spec(state) if isinstance(state, dict) else state,
    override=True)


def _write_as_t5x(step_dir: pathlib.Path, state_dict: dict, save_dtype: str | None = None,
                  inline: tuple[str, ...] = ("state/step",)) -> None:
  """A checkpoint folder laid out as T5X's legacy `Checkpointer.save` writes it (see above)."""
  step_dir.mkdir(parents=True)
  written = {}
  for name, arr in _names(state_dict):
    if name in inline:  # No partitioning axes: T5X keeps the value in the msgpack.
      written[name] = arr
      continue
    arr = np.asarray(arr)
    spec = {"driver": "zarr", "dtype": jnp.dtype(arr.dtype).name,
            "kvstore": {"driver": "file", "path": name.replace("/", ".")},
            "metadata": {"compressor": {"id": "gzip"}, "shape": arr.shape,
                         "chunks": np.array(arr.shape)}}
    stored = ts.Spec(spec).to_json()
    if save_dtype is not None and name.startswith("target/"):
      stored["dtype"] = save_dtype
    absolute = dict(stored, kvstore=dict(stored["kvstore"],
                                         path=os.path.join(step_dir, stored["kvstore"]["path"])))
    if save_dtype is not None and name.startswith("target/"):
      absolute = {"base": absolute, "driver": "cast", "dtype": jnp.dtype(arr.dtype).name}
    ts.open(absolute, create=True, open=True).result().write(arr).result()
    written[name] = ts.Spec(stored)
  tree: dict = {}
  for name, value in written.items():
    *parents, leaf = name.split("/")
    node = tree
    for part in parents:
      node = node.setdefault(part, {})
    node[leaf] = value
  (step_dir / "checkpoint").write_bytes(
      serialization.to_bytes({"version": 3, "optimizer": tree}))


def _read_as_t5x(step_dir: pathlib.Path) -> dict[str, np.ndarray]:
  """{name: array} of every `target` leaf, read as T5X's restore reads it (see above)."""
  contents = serialization.msgpack_restore((step_dir / "checkpoint").read_bytes())
  assert contents["version"] == 3
  out = {}
  for name, leaf in _names(contents["optimizer"]["target"]):
    if not (isinstance(leaf, dict) and "driver" in leaf):
      continue
    spec = dict(leaf, metadata=dict(leaf["metadata"]))
    del spec["metadata"]["chunks"], spec["metadata"]["compressor"]
    spec["kvstore"] = dict(spec["kvstore"], path=os.path.join(step_dir, spec["kvstore"]["path"]))
    out[name] = ts.open(spec, open=True).result().read().result()
  return out


def _target(tree):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), jnp.float32, sharding=DEVICE),
                      tree)


def _bits(x) -> np.ndarray:
  return np.asarray(x).view(np.uint8)


@pytest.fixture(scope="module")
def tiny_params():
  model = tiny.tiny_model()
  params = model.get_initial_variables(jax.random.PRNGKey(0), tiny.INPUT_SHAPES)["params"]
  return model, flax.linen.meta.unbox(params)


# ----------------------------------------------------------------------------------------------
# T5X -> here


def _t5x_state(rng):
  """A T5-named flax-optimizer state dict with Adafactor's factored / unfactored param states."""
  kernel = rng.normal(size=(16, 8)).astype(np.float32)
  scale = rng.normal(size=(16,)).astype(np.float32)
  embedding = rng.normal(size=(40, 16)).astype(np.float32)
  target = {"encoder": {"layers_0": {"attention": {"query": {"kernel": kernel}}},
                        "encoder_norm": {"scale": scale}},
            "token_embedder": {"embedding": embedding}}
  zeros1 = np.zeros((1,), np.float32)
  factored = lambda r, c: {"m": zeros1, "v": zeros1, "v_row": np.ones(r, np.float32),
                           "v_col": np.ones(c, np.float32)}
  param_states = {
      "encoder": {"layers_0": {"attention": {"query": {"kernel": factored(16, 8)}}},
                  "encoder_norm": {"scale": {"m": zeros1, "v": np.ones(16, np.float32),
                                             "v_row": zeros1, "v_col": zeros1}}},
      "token_embedder": {"embedding": factored(40, 16)}}
  return {"target": target, "state": {"step": np.int32(1000), "param_states": param_states}}


@pytest.mark.parametrize("save_dtype", [None, "bfloat16"])
def test_checkpoint_laid_out_as_t5x_writes_it_loads_params_only(tmp_path, save_dtype):
  state = _t5x_state(np.random.default_rng(0))
  step_dir = tmp_path / "model" / "checkpoint_1000"
  _write_as_t5x(step_dir, state, save_dtype=save_dtype)
  for path in (tmp_path / "model", step_dir, step_dir / "checkpoint"):  # As T5X accepts them.
    ckpt = t5x_checkpoints.locate(str(path))
    assert ckpt == t5x_checkpoints.T5XCheckpoint(str(step_dir), 1000, "msgpack")
  params = t5x_checkpoints.read_params(ckpt, _target(state["target"]))
  assert jax.tree_util.tree_structure(params) == jax.tree_util.tree_structure(state["target"])
  wanted = dict(_names(state["target"]))
  for name, got in _names(params):
    want = wanted[name]
    if save_dtype == "bfloat16":
      want = want.astype(jnp.bfloat16).astype(np.float32)
    assert got.dtype == jnp.float32 and got.sharding == DEVICE, name
    np.testing.assert_array_equal(_bits(got), _bits(want), err_msg=name)
  assert t5x_checkpoints.step_of(t5x_checkpoints.T5XCheckpoint(str(step_dir), None,
                                                               "msgpack")) == 1000


def test_t5x_orbax_layout_loads(tmp_path):
  """T5X's OrbaxCheckpointManagerInterface: the state dict under checkpoint_<step>/state/."""
  import orbax.checkpoint as ocp
  state = _t5x_state(np.random.default_rng(1))
  step_dir = tmp_path / "checkpoint_7"
  ocp.PyTreeCheckpointer().save(str(step_dir / "state"), jax.tree.map(jnp.asarray, state))
  ckpt = t5x_checkpoints.locate(str(tmp_path))
  assert (ckpt.layout, ckpt.step) == ("orbax", 7)
  params = t5x_checkpoints.read_params(ckpt, _target(state["target"]))
  wanted = dict(_names(state["target"]))
  for name, got in _names(params):
    np.testing.assert_array_equal(_bits(got), _bits(wanted[name]), err_msg=name)


# ----------------------------------------------------------------------------------------------
# here -> T5X -> here


def test_round_trip_through_t5x_layout_is_bit_exact_and_gives_identical_logits(tmp_path,
                                                                                 tiny_params):
  model, params = tiny_params

  @flax.struct.dataclass
  class State:
    step: jax.Array
    params: dict

  ckpt = checkpoints.Checkpointer(str(tmp_path / "ours" / "checkpoints"))
  ckpt.save(5, State(step=jnp.int32(5), params=params))
  written = export_t5x.export(str(tmp_path / "ours"), str(tmp_path / "t5x"))
  assert written == str(tmp_path / "t5x" / "checkpoint_5")
  # T5X's reader sees every parameter under T5X's names with our values.
  as_t5x = _read_as_t5x(pathlib.Path(written))
  assert set(as_t5x) == {name for name, _ in _names(params)}
  for name, value in _names(params):
    np.testing.assert_array_equal(_bits(as_t5x[name]), _bits(value), err_msg=name)
  # And back through the eval/infer path.
  back, step = state_init.read_params(written, _target(params))
  assert step == 5
  wanted = dict(_names(params))
  for name, got in _names(back):
    np.testing.assert_array_equal(_bits(got), _bits(wanted[name]), err_msg=name)
  batch = tiny.random_batch(0)
  apply = jax.jit(lambda p: model.module.apply(
      {"params": p}, batch["encoder_input_tokens"], batch["decoder_input_tokens"],
      batch["decoder_target_tokens"], enable_dropout=False))
  np.testing.assert_array_equal(_bits(apply(back)), _bits(apply(params)))
  with pytest.raises(ValueError, match="exists already"):
    export_t5x.export(str(tmp_path / "ours"), str(tmp_path / "t5x"))


# ----------------------------------------------------------------------------------------------
# Bad input: one line naming the problem


def _one_line(excinfo) -> str:
  text = str(excinfo.value)
  assert "\n" not in text, text
  return text


def test_checkpoint_of_another_architecture_names_the_first_differing_parameter(tmp_path,
                                                                                  tiny_params):
  _, params = tiny_params
  t5x_checkpoints.write(params, 3, str(tmp_path))
  other = dict(params, encoder=dict(params["encoder"]))
  other["encoder"]["layers_1"] = other["encoder"]["layers_0"]
  with pytest.raises(ValueError) as excinfo:
    t5x_checkpoints.read_params(t5x_checkpoints.locate(str(tmp_path)), _target(other))
  assert _one_line(excinfo).endswith(
      "does not fit the model: model parameter encoder/layers_1/attention/key/kernel (shape "
      "(16, 16)) is not in the checkpoint")
  wider = jax.tree.map(lambda x: np.zeros(x.shape[:-1] + (x.shape[-1] * 2,), x.dtype), params)
  with pytest.raises(ValueError) as excinfo:
    t5x_checkpoints.read_params(t5x_checkpoints.locate(str(tmp_path)), _target(wider))
  assert "parameter decoder/decoder_norm/scale: checkpoint shape (16,) != model shape (32,)" in \
      _one_line(excinfo)


def test_truncated_array_file_and_missing_checkpoint_file(tmp_path, tiny_params):
  _, params = tiny_params
  step_dir = pathlib.Path(t5x_checkpoints.write(params, 3, str(tmp_path)))
  chunk = step_dir / "target.token_embedder.embedding" / "0.0"
  chunk.write_bytes(chunk.read_bytes()[: chunk.stat().st_size // 2])
  with pytest.raises(ValueError) as excinfo:
    t5x_checkpoints.read_params(t5x_checkpoints.locate(str(tmp_path)), _target(params))
  assert "parameter token_embedder/embedding cannot be read (corrupt or incomplete" in \
      _one_line(excinfo)
  (step_dir / "checkpoint").unlink()
  with pytest.raises(ValueError) as excinfo:
    t5x_checkpoints.locate(str(tmp_path))
  assert _one_line(excinfo) == (f"T5X checkpoint folder {step_dir} has no `checkpoint` file (nor "
                                "an orbax `state/` folder); it is incomplete or not a checkpoint")
