"""The one owner of the train state (T5X's `TrainStateInitializer`): its shape, its shardings and
every way a run, an evaluation or an inference gets its state.

* Abstract state: `jax.eval_shape` of the model's and the optimizer's init, so learning shapes,
  dtypes and shardings allocates no array.
* Shardings (a `TrainState` of `NamedSharding`s):
  - params follow their logical axis names (the partitioner's rules);
  - the optimizer state is mapped structurally with `optax.tree_map_params`: each per-param
    statistic (Adam's moments, Adafactor's unfactored `v`, momentum) takes the sharding of the
    param it belongs to; per-param statistics of another shape (Adafactor's factored rows and
    columns) and the rest (counters, injected hyper-parameters) are replicated;
  - the guided state is replicated and long-horizon tangents mirror the params and the float
    optimizer-state leaves (`add_guided_state`, `add_tangents`, called by `GuidedTrainer`).
* Restore modes (`TrainStateInitializer`):
  - from scratch: `from_scratch`;
  - resume: `resume`, the newest checkpoint of the run that verifies (falling back past corrupt
    ones, refusing one of another shape), the trainer's whole state;
  - params only: `restore_params` (INITIAL_CHECKPOINT_PATH with `reset_optimizer`, T5X
    checkpoints included, optionally continuing the source's step count);
  - params and optimizer state: `restore_params_and_optimizer` (`reset_optimizer=False`);
  - inference: `abstract_params` and `restore_for_inference` (eval and infer CHECKPOINT_PATH);
  `start` picks the first three for a training run.
Checkpoints are opened through `checkpoints.find_checkpoint` / `checkpoints.make_checkpointer`.
Must not import gin or seqio.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Mapping, Sequence

import flax.linen as nn
import jax
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec

from gbt_t5x import errors
from gbt_t5x.train import checkpoints as checkpoints_lib
from gbt_t5x.train import t5x_checkpoints
from gbt_t5x.train import train_state as train_state_lib
from gbt_t5x.train.train_state import TrainState


def sharded_target(tree: Any, shardings: Any) -> Any:
  """`tree`'s leaves (arrays or `jax.ShapeDtypeStruct`s) as `jax.ShapeDtypeStruct`s carrying the
  matching leaf of `shardings`: a restore target."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      tree, shardings)


def param_shardings(abstract_boxed_params: Any, partitioner: Any) -> Any:
  """Shardings of the params from their logical axis names (`nn.Partitioned` boxes).

  Args:
    abstract_boxed_params: `jax.eval_shape` of the model's boxed `params` collection.
    partitioner: a `PjitPartitioner` (mesh and logical axis rules).
  """
  specs = nn.get_partition_spec(abstract_boxed_params)
  return jax.tree.map(
      lambda s: NamedSharding(partitioner.mesh,
                              nn.logical_to_mesh_axes(s, partitioner.logical_axis_rules)),
      specs, is_leaf=lambda x: isinstance(x, PartitionSpec))


def optimizer_state_shardings(optimizer: optax.GradientTransformation, abstract_params: Any,
                              abstract_opt_state: Any, params_shardings: Any,
                              replicated: NamedSharding) -> Any:
  """Shardings of an optax state, derived from its structure (`optax.tree_map_params`).

  A leaf inside a params-structured part of the state gets its param's sharding when it has the
  param's shape, else (a factored statistic) `replicated`; leaves outside such parts (step
  counts, injected hyper-parameters) are replicated; masked-out entries stay `optax.MaskedNode`.

  Args:
    optimizer: the transformation whose `init` built `abstract_opt_state`.
    abstract_params: the params (arrays or `jax.ShapeDtypeStruct`s).
    abstract_opt_state: `jax.eval_shape(optimizer.init, params)`.
    params_shardings: the params' shardings (same structure as `abstract_params`).
    replicated: the fully replicated sharding.
  """
  is_masked = lambda x: isinstance(x, optax.MaskedNode)  # noqa: E731

  def per_param(leaf: Any, param: Any, sharding: NamedSharding) -> Any:
    if is_masked(leaf):
      return leaf
    return sharding if tuple(leaf.shape) == tuple(param.shape) else replicated

  return optax.tree_map_params(optimizer, per_param, abstract_opt_state, abstract_params,
                               params_shardings, transform_non_params=lambda _: replicated,
                               is_leaf=is_masked)


def add_guided_state(state: TrainState, axes: TrainState, init_guided: Callable[[], Any],
                     partitioner: Any) -> tuple[TrainState, TrainState]:
  """The state with a guided state (replicated on the mesh) and its shardings.

  Args:
    state, axes: the train state and its shardings.
    init_guided: builds a fresh guided state; called only when `state.guided` is None (a state
      restored with its guided state keeps it).
    partitioner: the mesh partitioner.
  """
  replicated = partitioner.replicated
  if state.guided is None:
    guided = init_guided()
    state = state.replace(guided=jax.device_put(guided,
                                                jax.tree.map(lambda _: replicated, guided)))
  return state, axes.replace(guided=jax.tree.map(lambda _: replicated, state.guided))


def tangent_shardings(axes: TrainState, opt_state: Any, num_scalars: int) -> tuple[Any, ...]:
  """Shardings of long-horizon tangents (`gbt_t5x.guided.forward.Tangents`): per guided scalar,
  the params' shardings and those of the float optimizer-state leaves, in tree order."""
  float_axes = [a for a, x in zip(jax.tree.leaves(axes.opt_state), jax.tree.leaves(opt_state))
                if jax.numpy.issubdtype(x.dtype, jax.numpy.floating)]
  return tuple((axes.params, list(float_axes)) for _ in range(num_scalars))


def add_tangents(state: TrainState, axes: TrainState, specs: Sequence[Any],
                 partitioner: Any) -> tuple[TrainState, TrainState]:
  """The state with long-horizon tangents (zero unless `state` already holds some) and its
  shardings; `specs` are the guided hyper-parameters (one tangent per scalar entry)."""
  from gbt_t5x.guided import forward as forward_lib
  tangent_axes = tangent_shardings(axes, state.opt_state, len(forward_lib.scalar_index(specs)))
  if state.tangents is None:
    init = functools.partial(forward_lib.init_tangents, specs)
    tangents = partitioner.partition(init, in_shardings=(axes.params, axes.opt_state),
                                     out_shardings=tangent_axes)(state.params, state.opt_state)
    state = state.replace(tangents=tangents)
  return state, axes.replace(tangents=tangent_axes)


def source_step(path: str) -> int:
  """The step a checkpoint path names: a T5X checkpoint's, a step folder's own, else the latest
  checkpoint's (`checkpoints.resolve_checkpoint_path`)."""
  t5x = t5x_checkpoints.locate(path)
  if t5x is not None:
    return t5x_checkpoints.step_of(t5x)
  return checkpoints_lib.find_checkpoint(path)[1]


def read_params(path: str, target: Any, step: int | None = None) -> tuple[Any, int]:
  """The params of a checkpoint, placed on `target`'s shardings, and the checkpoint's step.

  Args:
    path: a model dir, its checkpoints/ folder or a step folder, local or `gs://`; or a T5X
      checkpoint (`t5x_checkpoints.locate`: `.../checkpoint_1000000`, its `checkpoint` file or a
      T5X model dir), read by parameter name.
    target: the params as `jax.ShapeDtypeStruct`s with shardings.
    step: a checkpoint step of `path` (not for T5X checkpoints), or None for the one the path
      names or the latest.
  """
  t5x = t5x_checkpoints.locate(path)
  if t5x is not None and step is None:
    return t5x_checkpoints.read_params(t5x, target), t5x_checkpoints.step_of(t5x)
  ckpt, found = checkpoints_lib.find_checkpoint(path)
  step = found if step is None else step
  return ckpt.restore_params(step, target), step


def load_params(model_dir: str, params: Any, param_axes: Any, step: int | None = None) -> Any:
  """The params of checkpoint `step` (default: latest) in `model_dir` (see `read_params`),
  shaped like `params` (arrays or `jax.ShapeDtypeStruct`s) and placed on `param_axes`."""
  return read_params(model_dir, sharded_target(params, param_axes), step)[0]


@dataclasses.dataclass(frozen=True)
class Start:
  """The state a training run starts from and what the training loop needs of its origin.

  Attributes:
    state: the train state, on the mesh.
    metadata: the resumed checkpoint's JSON metadata ({} unless resumed).
    resumed_step: the step of the run's own checkpoint it resumed, or None.
    failed_steps: newer checkpoints of the run that failed verification (newest first), for the
      caller to quarantine once it goes on.
    data_from_start: a finetuning start whose step is not 0: read the data from its start, not
      at the step.
  """
  state: TrainState
  metadata: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  resumed_step: int | None = None
  failed_steps: tuple[int, ...] = ()
  data_from_start: bool = False


class TrainStateInitializer:
  """Owns the train state's abstract shape, shardings and restore modes (see the module doc).

  Args:
    model: an `EncoderDecoderModel` with `optimizer_def`.
    input_shapes: feature name -> shape used to trace the init (batch 1 is enough).
    partitioner: the mesh partitioner (`PjitPartitioner`).
  """

  def __init__(self, model: Any, input_shapes: Mapping[str, tuple[int, ...]], partitioner: Any):
    self.model = model
    self.partitioner = partitioner
    self.input_shapes = dict(input_shapes)
    self._init_fn = train_state_lib.init_fn_for(model, model.optimizer_def, self.input_shapes)

  @functools.cached_property
  def abstract_state(self) -> TrainState:
    """The fresh `TrainState` as `jax.ShapeDtypeStruct`s (no guided state nor tangents)."""
    return jax.eval_shape(self._init_fn, jax.random.PRNGKey(0))

  @functools.cached_property
  def axes(self) -> TrainState:
    """The `TrainState` of shardings of `abstract_state` (see the module doc)."""
    boxed = jax.eval_shape(
        lambda r: self.model.get_initial_variables(r, self.input_shapes)["params"],
        jax.random.PRNGKey(0))
    params = param_shardings(boxed, self.partitioner)
    abstract, replicated = self.abstract_state, self.partitioner.replicated
    opt_state = optimizer_state_shardings(self.model.optimizer_def, abstract.params,
                                          abstract.opt_state, params, replicated)
    return TrainState(step=replicated, params=params, opt_state=opt_state, guided=None,
                      num_nonfinite=replicated)

  def from_scratch(self, rng: jax.Array) -> tuple[TrainState, TrainState]:
    """A freshly initialised state (params from `rng`), placed on the mesh, and its shardings."""
    init = self.partitioner.partition(self._init_fn, in_shardings=None, out_shardings=self.axes)
    return init(rng), self.axes

  def abstract_params(self) -> tuple[Any, Any]:
    """The params as `jax.ShapeDtypeStruct`s with shardings (a restore target), and their
    shardings; nothing is allocated."""
    return sharded_target(self.abstract_state.params, self.axes.params), self.axes.params

  def restore_for_inference(self, checkpoint_path: str) -> tuple[Any, int]:
    """(params, step) of the checkpoint `checkpoint_path` names (`read_params`: our layouts and
    T5X's), for eval and inference: only the params are read, no train state is built."""
    return read_params(checkpoint_path, self.abstract_params()[0])

  def resume(self, checkpointer: checkpoints_lib.Checkpointer, state: TrainState,
             axes: TrainState, print_fn: Callable[[str], None] = print) -> Start | None:
    """The newest checkpoint of `checkpointer` that verifies, restored into the structure and
    shardings of `state`/`axes` (the trainer's, guided state and tangents included); None
    without checkpoints. See `Checkpointer.restore_newest_valid` for the fallback."""
    try:
      restored = checkpointer.restore_newest_valid(sharded_target(state, axes), print_fn)
    except ValueError as e:
      if state.tangents is not None and ".tangents" in str(e):
        raise ValueError(
            f"checkpoint step {checkpointer.latest_step()} in {checkpointer.directory} holds no "
            "long-horizon tangents (its run used HYPERGRAD_HORIZON='greedy'); resume it with the "
            "greedy horizon, or start HYPERGRAD_HORIZON='forward' in a new MODEL_DIR") from None
      raise
    if restored is None:
      return None
    step, restored_state, metadata, failed = restored
    return Start(restored_state, dict(metadata), step, tuple(failed))

  def restore_params(self, path: str, state: TrainState, axes: TrainState,
                     keep_step: bool = False) -> TrainState:
    """`state` with the params of the checkpoint `path` names (ours or T5X's); `keep_step` also
    sets the step to the checkpoint's (T5X's finetuning semantics)."""
    state = state.replace(params=load_params(path, state.params, axes.params))
    if not keep_step:
      return state
    step = np.asarray(source_step(path), state.step.dtype)
    return state.replace(step=jax.device_put(step, axes.step))

  def restore_params_and_optimizer(self, path: str, state: TrainState,
                                   axes: TrainState) -> TrainState:
    """`state` with the step, params and optimizer state of the checkpoint `path` names (the
    optimizer must be of the same kind; the guided state, if any, stays fresh).

    Raises:
      ValueError: a T5X checkpoint (its optimizer state is not read), or one line naming the
        first leaf whose shape (or presence) differs.
    """
    if t5x_checkpoints.locate(path) is not None:
      raise ValueError(f"{path} is a T5X checkpoint: only its params are read (T5X's optimizer "
                       "state is dropped); set RestoreCheckpointConfig.reset_optimizer = True")
    ckpt, step = checkpoints_lib.find_checkpoint(path)
    fields = ("step", "params", "opt_state")
    targets = {k: sharded_target(getattr(state, k), getattr(axes, k)) for k in fields}
    try:
      restored = ckpt.restore_items(step, targets)
    except ValueError as e:
      if isinstance(e, errors.CorruptCheckpoint):
        raise
      raise ValueError("cannot restore params and optimizer state (reset_optimizer=False) from "
                       f"{e}") from None
    return state.replace(**restored)

  def start(self, state: TrainState, axes: TrainState,
            checkpointer: checkpoints_lib.Checkpointer, initial_checkpoint: str | None = None,
            reset_optimizer: bool = True, keep_step: bool = False,
            print_fn: Callable[[str], None] = print) -> Start:
    """Where a training run starts: its own newest valid checkpoint (`resume`), else the
    `initial_checkpoint`'s params (`restore_params`, with `keep_step`) or, without
    `reset_optimizer`, its params and optimizer state (`restore_params_and_optimizer`), else
    `state` itself. One line tells which (`print_fn`).

    Args:
      state, axes: the trainer's fresh state and its shardings.
      checkpointer: the run's own checkpoints.
      initial_checkpoint, reset_optimizer, keep_step: see `train_lib.RestoreCheckpointConfig`.
      print_fn: receives the one-line notices.
    """
    resumed = self.resume(checkpointer, state, axes, print_fn)
    if resumed is not None:
      print_fn(f"restored checkpoint step {resumed.resumed_step} from {checkpointer.directory}")
      return resumed
    if not initial_checkpoint:
      return Start(state)
    if reset_optimizer:
      state = self.restore_params(initial_checkpoint, state, axes, keep_step)
      print_fn(f"initialised params from {initial_checkpoint}")
      return Start(state, data_from_start=keep_step)
    state = self.restore_params_and_optimizer(initial_checkpoint, state, axes)
    print_fn(f"initialised params, optimizer state and step {int(jax.device_get(state.step))} "
             f"from {initial_checkpoint}")
    return Start(state, data_from_start=True)
