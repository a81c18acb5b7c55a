"""Train-state checkpoints on orbax: atomic step directories holding a state pytree plus JSON.

Each step directory `<directory>/<step>/` holds three orbax items:
  - `state`: the train-state pytree (jax arrays, any mix of dicts, tuples, NamedTuples and
    flax/struct dataclasses), written with `StandardSave` and restored straight into the
    shardings of a target pytree of `jax.ShapeDtypeStruct`s (multi-device meshes included);
  - `metadata`: a caller JSON dict (model fingerprint, data-pipeline positions, ...);
  - `manifest`: {leaf path: shape} of the saved state, used to refuse (with one line naming the
    first mismatching leaf) a restore target of another structure or shape *before* orbax reads
    anything.
A listed checkpoint that cannot be read (truncated or corrupted files, a missing item, bad JSON)
raises a one-line ValueError naming the step and directory, never orbax's own exception types.
Saves are synchronous and atomic (orbax writes `<step>.orbax-checkpoint-tmp*` and renames it), so
a checkpoint listed by `all_steps` is complete. Saving a step that exists is a no-op; restoring
never writes or deletes anything. Must not import gin, seqio or anything from `gbt_t5x.models`.
"""
from __future__ import annotations

from typing import Any

import jax
import orbax.checkpoint as ocp

from gbt_t5x import fileio

_STATE, _METADATA, _MANIFEST = "state", "metadata", "manifest"
CHECKPOINTS_DIR = "checkpoints"


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


def find_checkpoint(path: str) -> tuple["Checkpointer", int]:
  """A `Checkpointer` and step for `path` (see `resolve_checkpoint_path`; latest by default).

  Raises:
    ValueError: `path` does not exist or holds no checkpoint.
  """
  ckpt_dir, step = resolve_checkpoint_path(path)
  ckpt = Checkpointer(ckpt_dir)
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


def first_mismatch(saved: dict[str, list[int]], target: dict[str, list[int]]) -> str | None:
  """One line describing the first leaf (in target order) where the two manifests differ."""
  for path, shape in target.items():
    if path not in saved:
      return f"target leaf {path} (shape {tuple(shape)}) is not in the checkpoint"
    if list(saved[path]) != list(shape):
      return (f"leaf {path}: checkpoint shape {tuple(saved[path])} != target shape "
              f"{tuple(shape)}")
  for path, shape in saved.items():
    if path not in target:
      return f"checkpoint leaf {path} (shape {tuple(shape)}) is not in the target"
  return None


class Checkpointer:
  """Saves and restores `(state pytree, metadata dict)` per step under one directory."""

  def __init__(self, directory: str, keep: int | None = None):
    """Args:
      directory: the checkpoint root, a local path or a URL such as `gs://bucket/run/checkpoints`
        (created on the first save, not before).
      keep: keep only the newest `keep` steps (>= 1), or None to keep all.
    """
    if keep is not None and keep < 1:
      raise ValueError(f"keep must be None or >= 1, got {keep}")
    self.directory = fileio.absolute(directory)
    self.keep = keep
    self._manager: ocp.CheckpointManager | None = None

  def _get_manager(self, create: bool) -> ocp.CheckpointManager | None:
    if self._manager is None:
      if not create and not fileio.isdir(self.directory):
        return None
      options = ocp.CheckpointManagerOptions(max_to_keep=self.keep, create=True,
                                             enable_async_checkpointing=False)
      self._manager = ocp.CheckpointManager(self.directory,
                                            item_names=(_STATE, _METADATA, _MANIFEST),
                                            options=options)
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

    Returns when the checkpoint is complete on disk. Older steps beyond `keep` are deleted.

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
    saved = manager.save(step, args=ocp.args.Composite(**{
        _STATE: ocp.args.StandardSave(state),
        _METADATA: ocp.args.JsonSave(dict(metadata or {})),
        _MANIFEST: ocp.args.JsonSave(leaf_shapes(state)),
    }), force=True)
    manager.wait_until_finished()
    return bool(saved)

  def _unreadable(self, step: int, e: BaseException) -> ValueError:
    """One-line error for a checkpoint that exists but cannot be read (corrupt or cut short)."""
    detail = " ".join(str(e).split()) or type(e).__name__
    if len(detail) > 160:
      detail = detail[:157] + "..."
    others = [s for s in self.all_steps() if s != step]
    hint = (f"; move it out of the way to resume from step {others[-1]}" if others else "")
    return ValueError(f"checkpoint step {step} in {self.directory} is unreadable (corrupt or "
                      f"incomplete: {type(e).__name__}: {detail}){hint}")

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

  def _read_manifest(self, manager: ocp.CheckpointManager, step: int) -> dict[str, list[int]]:
    try:
      restored = manager.restore(step, args=ocp.args.Composite(
          **{_MANIFEST: ocp.args.JsonRestore()}))
      manifest = restored[_MANIFEST]
    except Exception as e:
      raise self._unreadable(step, e) from None
    if not isinstance(manifest, dict):
      raise self._unreadable(step, TypeError(f"manifest is {type(manifest).__name__}, not a dict"))
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
      ValueError: no such step, or the target's structure/shapes differ from the checkpoint's
        (one line naming the first mismatching leaf path and both shapes).
    """
    step = int(step)
    manager = self._require_step(step)
    mismatch = first_mismatch(self._read_manifest(manager, step), leaf_shapes(target))
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
    return state, dict(metadata or {})

  def restore_params(self, step: int, params_target: Any) -> Any:
    """Reads only the `params` of checkpoint `step` (for eval, inference and finetuning).

    Args:
      step: an existing checkpoint step.
      params_target: pytree of `jax.ShapeDtypeStruct` (with `.sharding`) matching the saved
        params' structure and shapes; the optimizer and guided state are not read.

    Returns:
      The params pytree, placed on the target shardings.
    """
    step = int(step)
    manager = self._require_step(step)
    saved = {k[len(".params"):]: v for k, v in self._read_manifest(manager, step).items()
             if k.startswith(".params")}
    wanted = {k.replace("['params']", "", 1): v
              for k, v in leaf_shapes({"params": params_target}).items()}
    mismatch = first_mismatch(saved, wanted)
    if mismatch is not None:
      raise ValueError(f"checkpoint step {step} in {self.directory} does not fit the model: "
                       f"{mismatch}")
    item = {"params": params_target}
    restore_args = jax.tree.map(lambda s: ocp.ArrayRestoreArgs(sharding=s.sharding), item)
    try:
      restored = ocp.PyTreeCheckpointer().restore(
          fileio.join(self.directory, str(step), _STATE),
          args=ocp.args.PyTreeRestore(item=item, restore_args=restore_args,
                                      partial_restore=True))
    except Exception as e:
      raise self._unreadable(step, e) from None
    return restored["params"]

  def saved_params(self, step: int) -> Any:
    """The `params` of checkpoint `step` as saved (structure, shapes, dtypes from orbax's
    metadata), on one device: for tools that have no model, such as `gbt_t5x.export_t5x`."""
    step = int(step)
    self._require_step(step)
    try:
      from etils import epath
      meta = ocp.PyTreeCheckpointHandler().metadata(
          epath.Path(fileio.join(self.directory, str(step), _STATE)))
      params_meta = getattr(meta, "tree", meta)["params"]
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
