"""Train-state checkpoints on orbax: atomic step directories holding a state pytree plus JSON.

Each step directory `<directory>/<step>/` holds three orbax items:
  - `state`: the train-state pytree (jax arrays, any mix of dicts, tuples, NamedTuples and
    flax/struct dataclasses), written with `StandardSave` and restored straight into the
    shardings of a target pytree of `jax.ShapeDtypeStruct`s (multi-device meshes included);
  - `metadata`: a caller JSON dict (model fingerprint, data-pipeline positions, ...);
  - `manifest`: {leaf path: shape} of the saved state, used to refuse (with one line naming the
    first mismatching leaf) a restore target of another structure or shape *before* orbax reads
    anything;
  - `checksums`: content checksums (CRC-32) of every array of the state, computed at save on the
    host copies of the arrays, and of the metadata and manifest JSON. A restore recomputes them on
    the restored arrays and also requires every floating-point array to be finite, so a bit flip
    that orbax reads without complaint is still caught (checkpoints written before checksums
    existed are checked for finiteness only).
A listed checkpoint that cannot be read (truncated or corrupted files, a missing item, bad JSON)
or fails verification raises a one-line `errors.CorruptCheckpoint` (a ValueError) naming the step,
directory and, where known, the array -- never orbax's own exception types; `restore_newest_valid`
then falls back to the newest older checkpoint that verifies.
Saves are synchronous and atomic (orbax writes `<step>.orbax-checkpoint-tmp*` and renames it), so
a checkpoint listed by `all_steps` is complete. Saving a step that exists is a no-op; restoring
never writes or deletes anything. Rotation (`keep`) never deletes a `protect`ed step (the
trainer's last checkpoint before its first non-finite step). `restore_items` reads only some
fields of the state (the params for eval and finetuning, params and optimizer state), verified
like a whole restore. Checkpointers are constructed by `make_checkpointer` (or
`model_dir_checkpointer`) only, and orbax's PyTree reader by `restore_subtrees` only (also used for
T5X's orbax layout). Must not import gin, seqio or anything from `gbt_t5x.models`.
"""
from __future__ import annotations

import json
import zlib
from typing import Any, Callable, Mapping, Sequence

import jax
import numpy as np
import orbax.checkpoint as ocp

from gbt_t5x import errors
from gbt_t5x import fileio

_STATE, _METADATA, _MANIFEST, _CHECKSUMS = "state", "metadata", "manifest", "checksums"
CHECKPOINTS_DIR = "checkpoints"
# Where `Checkpointer.quarantine` moves a checkpoint that failed verification (a sibling of the
# checkpoints folder, so that orbax never lists or rotates it; nothing is deleted).
QUARANTINE_DIR = "corrupt_checkpoints"
CHECKSUM_ALGORITHM = "crc32"


def resolve_checkpoint_path(path: str) -> tuple[str, int | None]:
  """The checkpoints folder and step named by a user-given checkpoint path.

  Accepts a model dir (`runs/x`, `gs://b/x`), its checkpoints folder (`runs/x/checkpoints`) or
  one step folder (`runs/x/checkpoints/524288`).

  Returns:
    (checkpoints folder, step) -- step is None for a model dir or checkpoints folder (the caller
    takes the latest), or the step of a step folder.

  Raises:
    ValueError: `path` does not exist.
  """
  path = fileio.absolute(path)
  if not fileio.exists(path):
    raise ValueError(f"checkpoint path {path} does not exist")
  nested = fileio.join(path, CHECKPOINTS_DIR)
  if fileio.isdir(nested):
    return nested, None
  name = fileio.basename(path)
  if name.isdigit() and (fileio.exists(fileio.join(path, _STATE))
                         or fileio.exists(fileio.join(path, "_CHECKPOINT_METADATA"))):
    return fileio.dirname(path), int(name)
  return path, None


def make_checkpointer(directory: str, keep: int | None = None) -> "Checkpointer":
  """The one place that constructs `Checkpointer`s (see there for `directory` and `keep`)."""
  return Checkpointer(directory, keep=keep)


def model_dir_checkpointer(model_dir: str, keep: int | None = None) -> "Checkpointer":
  """The `Checkpointer` of a run directory: `<model_dir>/checkpoints` (created on first save)."""
  return make_checkpointer(fileio.join(model_dir, CHECKPOINTS_DIR), keep=keep)


def find_checkpoint(path: str) -> tuple["Checkpointer", int]:
  """A `Checkpointer` and step for `path` (see `resolve_checkpoint_path`; latest by default).

  Raises:
    ValueError: `path` does not exist or holds no checkpoint.
  """
  ckpt_dir, step = resolve_checkpoint_path(path)
  ckpt = make_checkpointer(ckpt_dir)
  if step is None:
    step = ckpt.latest_step()
    if step is None:
      raise ValueError(f"{path} holds no checkpoint")
  return ckpt, step


def leaf_shapes(tree: Any) -> dict[str, list[int]]:
  """{jax key path string (e.g. `.opt_state[0].mu['w']`): shape} for every leaf of `tree`."""
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {jax.tree_util.keystr(path): [int(d) for d in getattr(leaf, "shape", ())]
          for path, leaf in flat}


def pytree_metadata(state_dir: str) -> Any:
  """The tree of orbax's per-leaf metadata (`.shape`, `.dtype`) of an orbax PyTree folder (our
  `<step>/state` or a T5X orbax checkpoint's `state/`); orbax's own exceptions pass through."""
  from etils import epath
  meta = ocp.PyTreeCheckpointHandler().metadata(epath.Path(state_dir))
  return getattr(meta, "tree", meta)


def restore_subtrees(state_dir: str, item: Mapping[str, Any], cast_dtype: bool = False
                     ) -> dict[str, Any]:
  """Reads only the top-level entries named by `item` from an orbax PyTree folder.

  Args:
    state_dir: the folder orbax wrote the pytree to.
    item: {top-level key: pytree of `jax.ShapeDtypeStruct` with `.sharding`}; leaves are placed
      directly on those shardings, the other entries of the saved tree are not read.
    cast_dtype: also cast each leaf to its target's dtype (e.g. a bfloat16 checkpoint read into
      float32 params).

  Returns:
    {key: restored pytree}. Orbax's own exceptions pass through (callers word them).
  """
  def restore_args(s: jax.ShapeDtypeStruct) -> ocp.ArrayRestoreArgs:
    if cast_dtype:
      return ocp.ArrayRestoreArgs(sharding=s.sharding, dtype=s.dtype)
    return ocp.ArrayRestoreArgs(sharding=s.sharding)

  item = dict(item)
  return ocp.PyTreeCheckpointer().restore(state_dir, args=ocp.args.PyTreeRestore(
      item=item, restore_args=jax.tree.map(restore_args, item), partial_restore=True))


def _host_array(leaf: Any) -> np.ndarray | None:
  """The host copy of a state leaf (a jax array, numpy array or Python number), or None for a
  jax array this process does not hold whole (a multi-process run: not checksummed here)."""
  if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
    return None
  return np.asarray(jax.device_get(leaf))


def array_checksum(array: np.ndarray) -> str:
  """CRC-32 (8 hex digits) of an array's bytes in C order, any dtype (bfloat16 included)."""
  data = np.ascontiguousarray(array).reshape(-1).view(np.uint8)
  return f"{zlib.crc32(memoryview(data)) & 0xFFFFFFFF:08x}"


def json_checksum(obj: Any) -> str:
  """CRC-32 of the canonical JSON text of `obj` (tuples and lists alike, keys sorted), so that
  a JSON item checks the same before it is written and after it is read back."""
  text = json.dumps(obj, sort_keys=True, separators=(",", ":"))
  return f"{zlib.crc32(text.encode()) & 0xFFFFFFFF:08x}"


def state_checksums(state: Any) -> dict[str, str]:
  """{leaf path (as in `leaf_shapes`): `array_checksum`} of every leaf this process holds whole."""
  sums = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
    host = _host_array(leaf)
    if host is not None:
      sums[jax.tree_util.keystr(path)] = array_checksum(host)
  return sums


def first_bad_leaf(tree: Any, expected: dict[str, str] | None,
                   rename: Callable[[str], str] = lambda k: k) -> str | None:
  """One line naming the first leaf of restored `tree` whose checksum differs from `expected`
  (None: not checked) or whose floating-point values are not all finite; None if all are good.

  Args:
    tree: the restored pytree.
    expected: {leaf path: checksum} recorded at save.
    rename: maps a leaf path of `tree` to its key in `expected`.
  """
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    host = _host_array(leaf)
    if host is None:
      continue
    key = rename(jax.tree_util.keystr(path))
    if expected is not None and key in expected and array_checksum(host) != expected[key]:
      return f"array {key} does not match its checksum (corrupted data)"
    if jax.numpy.issubdtype(host.dtype, jax.numpy.inexact) and not np.isfinite(host).all():
      return f"array {key} holds non-finite values"
  return None


def first_mismatch(saved: Mapping[str, Sequence[int]], target: Mapping[str, Sequence[int]],
                   leaf: str = "leaf", target_name: str = "target") -> str | None:
  """One line describing the first leaf (in target order) where the two manifests {path: shape}
  differ (`leaf` / `target_name`: the words for a leaf and the target in the message, e.g.
  'parameter' / 'model')."""
  for path, shape in target.items():
    if path not in saved:
      return f"{target_name} {leaf} {path} (shape {tuple(shape)}) is not in the checkpoint"
    if tuple(saved[path]) != tuple(shape):
      return (f"{leaf} {path}: checkpoint shape {tuple(saved[path])} != {target_name} shape "
              f"{tuple(shape)}")
  for path, shape in saved.items():
    if path not in target:
      return f"checkpoint {leaf} {path} (shape {tuple(shape)}) is not in the {target_name}"
  return None


class Checkpointer:
  """Saves and restores `(state pytree, metadata dict)` per step under one directory."""

  def __init__(self, directory: str, keep: int | None = None):
    """Args:
      directory: the checkpoint root, a local path or a URL such as `gs://bucket/run/checkpoints`
        (created on the first save, not before).
      keep: keep only the newest `keep` steps (>= 1) plus any `protect`ed one, or None to keep
        all.
    """
    if keep is not None and keep < 1:
      raise ValueError(f"keep must be None or >= 1, got {keep}")
    self.directory = fileio.absolute(directory)
    self.keep = keep
    self.protected: set[int] = set()
    self._manager: ocp.CheckpointManager | None = None

  def _get_manager(self, create: bool) -> ocp.CheckpointManager | None:
    if self._manager is None:
      if not create and not fileio.isdir(self.directory):
        return None
      # Rotation is done here (`_rotate`), not by orbax, so that protected steps survive it.
      options = ocp.CheckpointManagerOptions(max_to_keep=None, create=True,
                                             enable_async_checkpointing=False)
      self._manager = ocp.CheckpointManager(
          self.directory, item_names=(_STATE, _METADATA, _MANIFEST, _CHECKSUMS), options=options)
    return self._manager

  def all_steps(self) -> list[int]:
    """Sorted steps with a complete checkpoint (unfinished tmp directories are ignored)."""
    manager = self._get_manager(create=False)
    if manager is None:
      return []
    manager.reload()
    return sorted(int(s) for s in manager.all_steps())

  def latest_step(self) -> int | None:
    """The newest complete checkpoint's step, or None when there is none."""
    steps = self.all_steps()
    return steps[-1] if steps else None

  def save(self, step: int, state: Any, metadata: dict[str, Any] | None = None) -> bool:
    """Writes `state` (pytree of jax arrays) and JSON `metadata` as checkpoint `step`.

    Returns when the checkpoint is complete on disk. Older steps beyond `keep` are deleted,
    except protected ones. The checksums are computed on host copies of the arrays (the ones
    orbax writes), before the write.

    Returns:
      True if written, False if `step` already existed (nothing is changed then).
    """
    step = int(step)
    if step < 0:
      raise ValueError(f"checkpoint step must be >= 0, got {step}")
    manager = self._get_manager(create=True)
    manager.reload()
    if step in manager.all_steps():
      return False
    metadata = dict(metadata or {})
    manifest = leaf_shapes(state)
    checksums = {"algorithm": CHECKSUM_ALGORITHM, "arrays": state_checksums(state),
                 "metadata": json_checksum(metadata), "manifest": json_checksum(manifest)}
    try:
      saved = manager.save(step, args=ocp.args.Composite(**{
          _STATE: ocp.args.StandardSave(state),
          _METADATA: ocp.args.JsonSave(metadata),
          _MANIFEST: ocp.args.JsonSave(manifest),
          _CHECKSUMS: ocp.args.JsonSave(checksums),
      }), force=True)
      manager.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except
      reason = errors.write_failure(e)
      if reason is None:
        raise
      # The unfinished `<step>.orbax-checkpoint-tmp*` folder is never listed; older steps stand.
      raise errors.WriteFailed(
          f"cannot write checkpoint step {step} to {self.directory}: {reason}; the checkpoints "
          f"saved before it are intact (steps {self.all_steps()}): free space or make the folder "
          "writable, then rerun the same command") from None
    self._rotate()
    return bool(saved)

  def protect(self, step: int) -> None:
    """Keeps checkpoint `step` out of rotation for the life of this object (the last-known-good
    checkpoint of a run that met non-finite steps)."""
    self.protected.add(int(step))

  def _rotate(self) -> None:
    """Deletes the steps older than the newest `keep`, except protected ones."""
    if self.keep is None:
      return
    manager = self._get_manager(create=True)
    for step in self.all_steps()[:-self.keep]:
      if step not in self.protected:
        manager.delete(step)

  def quarantine(self, step: int) -> str:
    """Moves checkpoint `step` (one that failed verification) out of the checkpoints folder into
    `<parent>/corrupt_checkpoints/<step>[.N]`, where nothing lists, rotates or deletes it, so that
    the step can be saved anew; returns the new path."""
    root = fileio.join(fileio.dirname(self.directory), QUARANTINE_DIR)
    dest, n = fileio.join(root, str(int(step))), 0
    while fileio.exists(dest):
      n += 1
      dest = fileio.join(root, f"{int(step)}.{n}")
    fileio.rename(fileio.join(self.directory, str(int(step))), dest)
    if self._manager is not None:
      self._manager.reload()
    return dest

  def _unreadable(self, step: int, e: BaseException) -> errors.CorruptCheckpoint:
    """One-line error for a checkpoint that exists but cannot be read (corrupt or cut short)."""
    detail = " ".join(str(e).split()) or type(e).__name__
    if len(detail) > 160:
      detail = detail[:157] + "..."
    return errors.CorruptCheckpoint(step, f"checkpoint step {step} in {self.directory} is "
                                    f"unreadable (corrupt or incomplete: {type(e).__name__}: "
                                    f"{detail})", self._older_hint(step))

  def _older_hint(self, step: int) -> str:
    others = [s for s in self.all_steps() if s < step]
    return f"; move it out of the way to resume from step {others[-1]}" if others else ""

  def _failed(self, step: int, what: str) -> errors.CorruptCheckpoint:
    """One-line error for a checkpoint that was read but fails verification (`what`)."""
    return errors.CorruptCheckpoint(step, f"checkpoint step {step} in {self.directory} fails "
                                    f"verification: {what}", self._older_hint(step))

  def _read_checksums(self, manager: ocp.CheckpointManager, step: int) -> dict[str, Any] | None:
    """The checksums saved with `step`, or None for a checkpoint written before they existed."""
    if not fileio.exists(fileio.join(self.directory, str(step), _CHECKSUMS)):
      return None
    try:
      sums = manager.restore(step, args=ocp.args.Composite(
          **{_CHECKSUMS: ocp.args.JsonRestore()}))[_CHECKSUMS]
    except Exception as e:  # pylint: disable=broad-except
      raise self._unreadable(step, e) from None
    if (not isinstance(sums, dict) or sums.get("algorithm") != CHECKSUM_ALGORITHM
        or not isinstance(sums.get("arrays"), dict)):
      raise self._failed(step, "its checksums item is malformed")
    return sums

  def _check_json(self, step: int, sums: dict[str, Any] | None, item: str, value: Any) -> None:
    if sums is not None and sums.get(item) != json_checksum(value):
      raise self._failed(step, f"the {item} item does not match its checksum (corrupted data)")

  def _require_step(self, step: int) -> ocp.CheckpointManager:
    steps = self.all_steps()
    if int(step) not in steps:
      raise ValueError(f"no checkpoint for step {step} in {self.directory}; steps: {steps}")
    return self._manager

  def read_metadata(self, step: int) -> dict[str, Any]:
    """The JSON metadata dict saved with checkpoint `step`."""
    manager = self._require_step(step)
    try:
      restored = manager.restore(int(step), args=ocp.args.Composite(
          **{_METADATA: ocp.args.JsonRestore()}))
    except Exception as e:  # orbax/tensorstore/json raise many types; report one line.
      raise self._unreadable(int(step), e) from None
    return dict(restored[_METADATA] or {})

  def _read_manifest(self, manager: ocp.CheckpointManager, step: int,
                     sums: dict[str, Any] | None = None) -> dict[str, list[int]]:
    """The saved {leaf path: shape}, checked against `sums` (the checkpoint's checksums)."""
    try:
      restored = manager.restore(step, args=ocp.args.Composite(
          **{_MANIFEST: ocp.args.JsonRestore()}))
      manifest = restored[_MANIFEST]
    except Exception as e:
      raise self._unreadable(step, e) from None
    if not isinstance(manifest, dict):
      raise self._unreadable(step, TypeError(f"manifest is {type(manifest).__name__}, not a dict"))
    self._check_json(step, sums, _MANIFEST, manifest)
    return dict(manifest)

  def restore(self, step: int, target: Any) -> tuple[Any, dict[str, Any]]:
    """Reads checkpoint `step` into the structure, dtypes and shardings of `target`.

    Args:
      step: an existing checkpoint step.
      target: pytree of `jax.ShapeDtypeStruct` (with `.sharding`, e.g. `NamedSharding` on a
        mesh) of the same structure and leaf shapes as the saved state; leaves are placed
        directly on those shardings.

    Returns:
      (state with `target`'s tree structure, metadata dict).

    Raises:
      errors.CorruptCheckpoint: the checkpoint cannot be read, or an array or JSON item does not
        match its checksum, or a floating-point array is not finite (one line naming the step and
        the array or item).
      ValueError: no such step, or the target's structure/shapes differ from the checkpoint's
        (one line naming the first mismatching leaf path and both shapes).
    """
    step = int(step)
    manager = self._require_step(step)
    sums = self._read_checksums(manager, step)
    mismatch = first_mismatch(self._read_manifest(manager, step, sums), leaf_shapes(target))
    if mismatch is not None:
      raise ValueError(f"checkpoint step {step} in {self.directory} does not fit the target: "
                       f"{mismatch}")
    try:
      restored = manager.restore(step, args=ocp.args.Composite(**{
          _STATE: ocp.args.StandardRestore(target),
          _METADATA: ocp.args.JsonRestore(),
      }))
      state = restored[_STATE]
      metadata = restored[_METADATA]
    except Exception as e:  # Truncated/corrupt array files, missing items, bad JSON.
      raise self._unreadable(step, e) from None
    if jax.tree_util.tree_structure(state) != jax.tree_util.tree_structure(target):
      raise ValueError(f"orbax restored checkpoint step {step} with another tree structure than "
                       f"the target: {jax.tree_util.tree_structure(state)}")
    metadata = dict(metadata or {})
    self._check_json(step, sums, _METADATA, metadata)
    bad = first_bad_leaf(state, sums["arrays"] if sums else None)
    if bad is not None:
      raise self._failed(step, bad)
    return state, metadata

  def restore_newest_valid(self, target: Any, print_fn: Callable[[str], None] = print
                           ) -> tuple[int, Any, dict[str, Any], list[int]] | None:
    """Restores the newest checkpoint that reads and verifies, falling back past corrupt ones.

    Each checkpoint that fails is reported by `print_fn` in one line (step and array); nothing is
    written or deleted (the caller may `quarantine` the failed steps once it goes on).

    Returns:
      (step, state, metadata, failed steps newest first), or None when there is no checkpoint.

    Raises:
      ValueError: no checkpoint verifies (one line naming each failed step and the newest's
        reason), or the newest checkpoint does not fit `target` (another model; not a fallback
        case).
    """
    failed: list[errors.CorruptCheckpoint] = []
    for step in reversed(self.all_steps()):
      try:
        state, metadata = self.restore(step, target)
      except errors.CorruptCheckpoint as e:
        failed.append(e)
        print_fn(f"warning: {e.reason}; trying an older checkpoint")
        continue
      return step, state, metadata, [e.step for e in failed]
    if failed:
      steps = ", ".join(str(e.step) for e in failed)
      raise ValueError(f"no checkpoint in {self.directory} verifies (steps {steps}); the newest: "
                       f"{failed[0].reason}")
    return None

  def restore_items(self, step: int, targets: Mapping[str, Any],
                    fit_name: str = "the target") -> dict[str, Any]:
    """Reads only some top-level fields of the saved state (partial restore), verified.

    Args:
      step: an existing checkpoint step.
      targets: {field of the saved state (`params`, `opt_state`, `step`, ...): pytree of
        `jax.ShapeDtypeStruct` (with `.sharding`) matching that field's saved structure and
        shapes}; the other fields are not read.
      fit_name: how a mismatch names the targets ('the model', ...).

    Returns:
      {field: restored pytree placed on the target shardings}.

    Raises:
      errors.CorruptCheckpoint: unreadable, or an array does not match its checksum or is not
        finite (one line naming the step and array).
      ValueError: no such step, or a field's structure/shapes differ from the checkpoint's (one
        line naming the first mismatching leaf, as a path of the whole state: `.params['w']`).
    """
    step = int(step)
    manager = self._require_step(step)
    sums = self._read_checksums(manager, step)
    manifest = self._read_manifest(manager, step, sums)
    saved, wanted = {}, {}
    for name, target in targets.items():
      prefix = f".{name}"
      saved.update({k: v for k, v in manifest.items()
                    if k == prefix or k.startswith((prefix + "[", prefix + "."))})
      wanted.update({prefix + k: v for k, v in leaf_shapes(target).items()})
    mismatch = first_mismatch(saved, wanted)
    if mismatch is not None:
      raise ValueError(f"checkpoint step {step} in {self.directory} does not fit {fit_name}: "
                       f"{mismatch}")
    try:
      restored = restore_subtrees(fileio.join(self.directory, str(step), _STATE), targets)
    except Exception as e:  # pylint: disable=broad-except
      raise self._unreadable(step, e) from None
    for name in targets:
      bad = first_bad_leaf(restored[name], sums["arrays"] if sums else None,
                           rename=lambda k, name=name: f".{name}{k}")
      if bad is not None:
        raise self._failed(step, bad)
    return {name: restored[name] for name in targets}

  def restore_params(self, step: int, params_target: Any) -> Any:
    """Reads only the `params` of checkpoint `step` (for eval, inference and finetuning).

    Args:
      step: an existing checkpoint step.
      params_target: pytree of `jax.ShapeDtypeStruct` (with `.sharding`) matching the saved
        params' structure and shapes; the optimizer and guided state are not read.

    Returns:
      The params pytree, placed on the target shardings.
    """
    return self.restore_items(step, {"params": params_target}, fit_name="the model")["params"]

  def saved_params(self, step: int) -> Any:
    """The `params` of checkpoint `step` as saved (structure, shapes, dtypes from orbax's
    metadata), on one device: for tools that have no model, such as `gbt_t5x.export_t5x`."""
    step = int(step)
    self._require_step(step)
    try:
      params_meta = pytree_metadata(fileio.join(self.directory, str(step), _STATE))["params"]
    except Exception as e:  # Missing or corrupt metadata.
      raise self._unreadable(step, e) from None
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype, sharding=device),
                          params_meta)
    return self.restore_params(step, target)

  def wait_until_finished(self) -> None:
    """Blocks until any pending save is complete (saves here are already synchronous)."""
    if self._manager is not None:
      self._manager.wait_until_finished()

  def close(self) -> None:
    """Waits for pending work and releases orbax resources; the object is unusable after."""
    if self._manager is not None:
      self._manager.wait_until_finished()
      self._manager.close()
      self._manager = None
