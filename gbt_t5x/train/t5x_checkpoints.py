"""T5X's checkpoint layouts, read (params only) and written, so public T5X checkpoints finetune here
and a model trained here finetunes or serves in T5X.

T5X's layouts (mirroring `t5x/checkpoints.py`, which cannot be imported: T5X is not installable):
  - legacy (`Checkpointer`, VERSION 3): a step folder `<checkpoints_dir>/checkpoint_<step>/`
    holding a msgpack file `checkpoint` (flax.serialization) of
    `{'version': 3, 'optimizer': {'target': params, 'state': {'step': ..., 'param_states': ...}}}`
    in which every partitioned array is replaced by the JSON of a tensorstore spec (zarr driver,
    kvstore path relative to the step folder, e.g. `target.encoder.layers_0.attention.query.kernel`
    -- the '/'-joined tree path with '/' replaced by '.') and stored beside it as a zarr array;
    small unpartitioned leaves (the step) are inline msgpack arrays. A spec written on GCS names a
    dummy bucket (`t5x-dummy-bucket`): paths are always relative to the step folder.
  - orbax (`OrbaxCheckpointManagerInterface`): the same state dict written by orbax's
    `PyTreeCheckpointHandler` under `checkpoint_<step>/state/`.
Only `target` (the params) is read: T5X's optimizer state (Adafactor's `param_states`: v_row,
v_col, v, m) is dropped, the optimizer here starts fresh. Written checkpoints hold `target` and
`state.step` (float32 params); T5X restores them as a finetuning start with
`utils.RestoreCheckpointConfig.assignment_map = ((r'state.*', None),)` and
`fallback_to_scratch = True` (its optimizer state is initialised fresh).

Why hand-written: the layout is T5X's, and T5X's own reader needs T5X; tensorstore (zarr),
flax.serialization (msgpack) and orbax do the byte work. Errors (a missing `checkpoint` file, a
model of another architecture, an unreadable array) are one-line ValueErrors naming the
checkpoint and the first differing parameter; nothing is written by a read. Must not import gin,
seqio or anything from `gbt_t5x.models`.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any

import jax
import numpy as np

from gbt_t5x import errors, fileio
from gbt_t5x.train import checkpoints as checkpoints_lib

MSGPACK_FILE = "checkpoint"  # T5X's _FLAX_CHECKPOINT_FILE.
ORBAX_STATE_DIR = "state"  # T5X's _STATE_KEY (orbax layout).
VERSION = 3  # T5X's checkpoint VERSION: bfloat16 stored natively by tensorstore.
STEP_PREFIX = "checkpoint_"  # T5X's get_checkpoint_prefix() + '_'.
_STEP_DIR = re.compile(r"^checkpoint_(\d+)$")
_CHUNK_BYTES = 64 * 1024 * 1024  # T5X's _DESIRED_CHUNK_SIZE_BYTES.


@dataclasses.dataclass(frozen=True)
class T5XCheckpoint:
  """One T5X checkpoint step folder.

  Attributes:
    step_dir: the `checkpoint_<step>` folder (local path or URL).
    step: its training step (from the folder name, else the msgpack's `state.step`).
    layout: 'msgpack' (legacy Checkpointer) or 'orbax'.
  """
  step_dir: str
  step: int | None
  layout: str


def _step_of(name: str) -> int | None:
  match = _STEP_DIR.match(name)
  return int(match.group(1)) if match else None


def locate(path: str) -> T5XCheckpoint | None:
  """The T5X checkpoint `path` names, or None when `path` is not in a T5X layout.

  Accepts what T5X's `find_checkpoint` accepts: the `checkpoint` msgpack file, a step folder
  `.../checkpoint_1000000` (legacy or orbax), or a folder of step folders (its latest step).
  A folder named `checkpoint_<N>` without a `checkpoint` file or `state/` folder is reported
  (missing `checkpoint` file), not taken for another layout.
  """
  path = fileio.absolute(path)
  if fileio.basename(path) == MSGPACK_FILE and fileio.exists(path) and not fileio.isdir(path):
    path = fileio.dirname(path)
  if not fileio.isdir(path):
    return None
  names = fileio.listdir(path)
  step = _step_of(fileio.basename(path))
  if MSGPACK_FILE in names and not fileio.isdir(fileio.join(path, MSGPACK_FILE)):
    if fileio.isdir(fileio.join(path, ORBAX_STATE_DIR)):
      return T5XCheckpoint(path, step, "orbax")
    return T5XCheckpoint(path, step, "msgpack")
  if ORBAX_STATE_DIR in names and step is not None:
    return T5XCheckpoint(path, step, "orbax")
  if step is not None:
    raise ValueError(f"T5X checkpoint folder {path} has no `{MSGPACK_FILE}` file (nor an orbax "
                     f"`{ORBAX_STATE_DIR}/` folder); it is incomplete or not a checkpoint")
  steps = sorted(s for s in (_step_of(n) for n in names) if s is not None)
  if not steps:
    return None
  return locate(fileio.join(path, f"{STEP_PREFIX}{steps[-1]}"))


# ----------------------------------------------------------------------------------------------
# Reading


def _flatten(tree: Any, prefix: tuple[str, ...] = ()) -> dict[str, Any]:
  """{'a/b/c': leaf} for a nested dict (T5X's '/'-joined parameter names)."""
  if isinstance(tree, dict):
    out: dict[str, Any] = {}
    for key, value in tree.items():
      out.update(_flatten(value, prefix + (str(key),)))
    return out
  return {"/".join(prefix): tree}


def _is_spec(leaf: Any) -> bool:
  return isinstance(leaf, dict) and "driver" in leaf and "kvstore" in leaf


def _flatten_specs(tree: Any, prefix: tuple[str, ...] = ()) -> dict[str, Any]:
  """Like `_flatten`, but a tensorstore spec dict is one leaf."""
  if isinstance(tree, dict) and not _is_spec(tree):
    out: dict[str, Any] = {}
    for key, value in tree.items():
      out.update(_flatten_specs(value, prefix + (str(key),)))
    return out
  return {"/".join(prefix): tree}


def _saved_shape(leaf: Any) -> tuple[int, ...]:
  if _is_spec(leaf):
    return tuple(int(d) for d in leaf.get("metadata", {}).get("shape", ()))
  return tuple(np.shape(leaf))


def _target_leaves(target: Any) -> dict[str, Any]:
  """{'encoder/layers_0/attention/query/kernel': ShapeDtypeStruct} of a params target tree."""
  flat = jax.tree_util.tree_flatten_with_path(target)[0]
  return {"/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path): leaf
          for path, leaf in flat}


def first_difference(saved: dict[str, tuple[int, ...]],
                     wanted: dict[str, tuple[int, ...]]) -> str | None:
  """One line naming the first parameter (model order) whose name or shape differs."""
  return checkpoints_lib.first_mismatch(saved, wanted, leaf="parameter", target_name="model")


def _read_msgpack(ckpt: T5XCheckpoint) -> dict[str, Any]:
  """The state dict of a legacy checkpoint's `checkpoint` file (T5X's msgpack_restore)."""
  from flax import serialization
  file = fileio.join(ckpt.step_dir, MSGPACK_FILE)
  if not fileio.exists(file):
    raise ValueError(f"T5X checkpoint {ckpt.step_dir} has no `{MSGPACK_FILE}` file")
  try:
    contents = serialization.msgpack_restore(fileio.read_bytes(file))
  except Exception as e:  # msgpack raises several types for cut or foreign bytes.
    raise ValueError(f"T5X checkpoint file {file} is not a readable msgpack state dict "
                     f"({type(e).__name__}: {errors.one_line(e)})") from None
  if not isinstance(contents, dict):
    raise ValueError(f"T5X checkpoint file {file} holds a {type(contents).__name__}, not a dict")
  # Version >= 1 wraps the optimizer state dict; version 0 (plain flax) is the state dict itself.
  state = contents.get("optimizer", contents) if contents.get("version", 0) else contents
  if not isinstance(state, dict) or not isinstance(state.get("target"), dict):
    raise ValueError(f"T5X checkpoint file {file} has no `target` (params) tree; keys: "
                     f"{sorted(state) if isinstance(state, dict) else type(state).__name__}")
  return state


def _absolute_spec(spec: dict[str, Any], step_dir: str) -> dict[str, Any]:
  """A T5X spec with its kvstore made absolute (T5X's _update_ts_path_from_relative_to_absolute)
  and the chunking/compression left to the stored `.zarray` (as T5X's reader does)."""
  relative = spec["kvstore"].get("path")
  if relative is None:
    raise ValueError(f"tensorstore spec without a kvstore path: {spec}")
  out = {k: v for k, v in spec.items() if k not in ("kvstore", "metadata")}
  metadata = {k: v for k, v in spec.get("metadata", {}).items()
              if k not in ("chunks", "compressor")}
  if metadata:
    out["metadata"] = metadata
  out["kvstore"] = fileio.tensorstore_kvstore(fileio.join(step_dir, relative.rstrip("/")))
  return out


def _read_legacy(ckpt: T5XCheckpoint, target: Any) -> Any:
  import tensorstore as ts
  state = _read_msgpack(ckpt)
  saved = _flatten_specs(state["target"])
  wanted = _target_leaves(target)
  mismatch = first_difference({k: _saved_shape(v) for k, v in saved.items()},
                              {k: tuple(v.shape) for k, v in wanted.items()})
  if mismatch is not None:
    raise ValueError(f"T5X checkpoint {ckpt.step_dir} does not fit the model: {mismatch}")

  def read(name: str, want: Any) -> jax.Array:
    leaf = saved[name]
    try:
      if _is_spec(leaf):
        store = ts.open(_absolute_spec(leaf, ckpt.step_dir), open=True, read=True).result()
        return jax.make_array_from_callback(
            want.shape, want.sharding,
            lambda index: np.asarray(store[index].read().result()).astype(want.dtype))
      value = np.asarray(leaf).astype(want.dtype)
      return jax.make_array_from_callback(want.shape, want.sharding, lambda index: value[index])
    except Exception as e:  # tensorstore: missing/cut/corrupt chunk files, bad specs.
      raise ValueError(f"T5X checkpoint {ckpt.step_dir}: parameter {name} cannot be read "
                       f"(corrupt or incomplete: {errors.one_line(e)[:200]})") from None

  values = {name: read(name, want) for name, want in wanted.items()}
  return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(target),
                                      [values[name] for name in wanted])


def _read_orbax(ckpt: T5XCheckpoint, target: Any) -> Any:
  state_dir = fileio.join(ckpt.step_dir, ORBAX_STATE_DIR)
  try:
    tree = checkpoints_lib.pytree_metadata(state_dir)
  except Exception as e:
    raise ValueError(f"T5X orbax checkpoint {state_dir} cannot be read "
                     f"({type(e).__name__}: {errors.one_line(e)[:200]})") from None
  if not isinstance(tree, dict) or not isinstance(tree.get("target"), dict):
    raise ValueError(f"T5X orbax checkpoint {state_dir} has no `target` (params) tree")
  saved = {k: tuple(getattr(v, "shape", ())) for k, v in _flatten(tree["target"]).items()}
  wanted = _target_leaves(target)
  mismatch = first_difference(saved, {k: tuple(v.shape) for k, v in wanted.items()})
  if mismatch is not None:
    raise ValueError(f"T5X checkpoint {ckpt.step_dir} does not fit the model: {mismatch}")
  try:
    restored = checkpoints_lib.restore_subtrees(state_dir, {"target": target}, cast_dtype=True)
  except Exception as e:
    raise ValueError(f"T5X orbax checkpoint {state_dir} is unreadable (corrupt or incomplete: "
                     f"{type(e).__name__}: {errors.one_line(e)[:200]})") from None
  return restored["target"]


def read_params(ckpt: T5XCheckpoint, target: Any) -> Any:
  """The params (`target`) of a T5X checkpoint, placed on the target's shardings.

  Args:
    ckpt: a located checkpoint (`locate`).
    target: the model's params as a nested dict of `jax.ShapeDtypeStruct` with `.sharding`;
      names must equal T5X's ('encoder/layers_0/attention/query/kernel', ...), shapes too.

  Returns:
    The params with `target`'s structure, cast to its dtypes. T5X's optimizer state is not read.

  Raises:
    ValueError: one line naming the first differing parameter, or the unreadable file.
  """
  if ckpt.layout == "orbax":
    return _read_orbax(ckpt, target)
  return _read_legacy(ckpt, target)


def step_of(ckpt: T5XCheckpoint) -> int:
  """The checkpoint's step: from the folder name, else the msgpack's `state.step` (else 0)."""
  if ckpt.step is not None:
    return ckpt.step
  if ckpt.layout == "msgpack":
    step = _read_msgpack(ckpt).get("state", {}).get("step")
    if step is not None and not _is_spec(step):
      return int(np.asarray(step))
  return 0


# ----------------------------------------------------------------------------------------------
# Writing


def chunk_shape(shape: tuple[int, ...], itemsize: int, limit_bytes: int = _CHUNK_BYTES
                ) -> list[int]:
  """A zarr chunk shape dividing `shape` with at most `limit_bytes` per chunk (as T5X sizes
  its chunks): the largest dimension is cut to its next smaller divisor until the chunk fits."""
  chunk = [int(d) for d in shape]
  while chunk and int(np.prod(chunk)) * itemsize > limit_bytes:
    i = int(np.argmax(chunk))
    if chunk[i] <= 1:
      break
    chunk[i] = max(d for d in range(1, chunk[i]) if shape[i] % d == 0)
  return chunk


def param_spec(name: str, shape: tuple[int, ...], dtype: str, remote: bool) -> dict[str, Any]:
  """The tensorstore spec JSON T5X's `_get_spec` stores in the msgpack for one state-dict leaf
  `name` ('target/encoder/...'): zarr, kvstore path relative to the step folder ('/' -> '.'), on
  GCS a dummy bucket that readers replace; gzip chunks of at most 64 MiB."""
  import tensorstore as ts
  path = name.replace("/", ".")
  kvstore = ({"driver": "gcs", "bucket": "t5x-dummy-bucket", "path": path} if remote
             else {"driver": "file", "path": path})
  metadata = {"compressor": {"id": "gzip"}, "shape": list(shape),
              "chunks": chunk_shape(tuple(shape), np.dtype(dtype).itemsize)}
  return ts.Spec({"driver": "zarr", "dtype": dtype, "kvstore": kvstore,
                  "metadata": metadata}).to_json()


def write(params: Any, step: int, checkpoints_dir: str, dtype: str = "float32") -> str:
  """Writes `params` as the T5X legacy checkpoint `<checkpoints_dir>/checkpoint_<step>/`.

  The step folder is written under a temporary name and renamed when complete (locally; object
  stores have no rename, so there the `checkpoint` file is written last and marks completion).

  Args:
    params: nested dict of arrays with T5X's names (this project's T5 v1.1 params).
    step: the training step (names the folder and `state.step`).
    checkpoints_dir: the folder that gets `checkpoint_<step>/`; created if missing.
    dtype: 'float32' (T5X's default save dtype) or 'bfloat16'.

  Returns:
    The step folder's path.

  Raises:
    ValueError: the step folder exists already (nothing is overwritten).
  """
  import tensorstore as ts
  from flax import serialization
  if dtype not in ("float32", "bfloat16"):
    raise ValueError(f"T5X checkpoint dtype must be 'float32' or 'bfloat16', got {dtype!r}")
  final_dir = fileio.join(fileio.absolute(checkpoints_dir), f"{STEP_PREFIX}{int(step)}")
  if fileio.exists(final_dir):
    raise ValueError(f"{final_dir} exists already; remove it or choose another --output_dir")
  remote = fileio.is_remote(final_dir)
  work_dir = final_dir if remote else f"{final_dir}.tmp-{np.random.randint(1 << 30)}"
  fileio.makedirs(work_dir)
  specs: dict[str, Any] = {}
  for name, value in _flatten(jax.device_get(params)).items():
    value = np.asarray(value)
    spec = param_spec(f"target/{name}", value.shape, dtype, remote)
    full = dict(spec, kvstore=fileio.tensorstore_kvstore(
        fileio.join(work_dir, spec["kvstore"]["path"].rstrip("/"))))
    store = ts.open(full, create=True, open=True).result()
    store.write(value.astype(store.dtype.numpy_dtype)).result()
    specs[name] = spec
  tree: dict[str, Any] = {}
  for name, spec in specs.items():
    node = tree
    *parents, leaf = name.split("/")
    for part in parents:
      node = node.setdefault(part, {})
    node[leaf] = spec
  contents = {"version": VERSION,
              "optimizer": {"target": tree, "state": {"step": np.int32(step)}}}
  fileio.write_bytes(fileio.join(work_dir, MSGPACK_FILE), serialization.msgpack_serialize(contents))
  if work_dir != final_dir:
    fileio.rename(work_dir, final_dir)
  return final_dir
