"""The `train` entry function (T5X's `train.py:train`), configured by gin through `__main__`.

Order of work, chosen so that a failed start never touches an existing run: validate the
configuration (tasks, lengths, vocabulary vs model), build the mesh and the abstract train state,
restore the newest checkpoint of `model_dir` that verifies (falling back past corrupt ones,
refusing one of another shape), and only then write `config.gin`, train, evaluate, checkpoint
(see `last_good.py` for what is saved and kept after non-finite steps) and plot. Must be driven
by gin only through its arguments (no gin import here).
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Mapping, Sequence

import jax
import numpy as np

from gbt_t5x import errors
from gbt_t5x import fileio
from gbt_t5x.train import checkpoints as checkpoints_lib
from gbt_t5x.train import last_good as last_good_lib
from gbt_t5x.train import preemption
from gbt_t5x.train import run_lock
from gbt_t5x.train import data as data_lib
from gbt_t5x.train import summaries
from gbt_t5x.train import t5x_checkpoints
from gbt_t5x.train import train_state as train_state_lib
from gbt_t5x.train.partitioning import PjitPartitioner


@dataclasses.dataclass(frozen=True)
class SaveCheckpointConfig:
  """How often to save (steps) and how many checkpoints to keep (None: all)."""
  period: int = 1000
  keep: int | None = None


@dataclasses.dataclass(frozen=True)
class RestoreCheckpointConfig:
  """Where to initialise params from when `model_dir` has no checkpoint of its own.

  Attributes:
    path: a model dir or its checkpoints/ folder (the latest checkpoint is used), a step folder
      (`.../checkpoints/524288`), local or `gs://`; or None for random init.
    reset_optimizer: keep only params from `path` (fresh optimizer state and step 0); False also
      restores the optimizer state and the step (the optimizer must be the same kind, so that
      the state's shapes match; the guided state, if any, starts fresh either way).
    keep_step: with `reset_optimizer`, continue the checkpoint's step count instead of starting
      at 0 -- T5X's finetuning semantics (its gin files set TRAIN_STEPS = pretrained steps +
      finetuning steps, e.g. 1_020_000 from checkpoint_1000000); T5X's runs/finetune.gin as
      provided by `gbt_t5x.t5x_compat` sets it.
  """
  path: str | None = None
  reset_optimizer: bool = True
  keep_step: bool = False


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
  save: SaveCheckpointConfig | None = SaveCheckpointConfig()
  restore: RestoreCheckpointConfig | None = None


# Checkpoint metadata key of the online mixture sampling segment being read (its weights are
# part of the data stream, so a resumed run needs them).
SAMPLING_SEGMENT_KEY = "train_sampling_segment"


def input_shapes(cfg: data_lib.DatasetConfig) -> dict[str, tuple[int, int]]:
  lengths = cfg.task_feature_lengths
  return {"encoder_input_tokens": (1, int(lengths["inputs"])),
          "decoder_input_tokens": (1, int(lengths["targets"])),
          "decoder_target_tokens": (1, int(lengths["targets"]))}


def check_vocabularies(model: Any, cfg: data_lib.DatasetConfig) -> None:
  """Raises ValueError when a task's vocabulary does not fit the model's embedding table."""
  from gbt_t5x.data.vocabularies import readable_vocab_size
  task = data_lib.task_of(cfg)
  model_vocab = int(model.module.config.vocab_size)
  for name in ("inputs", "targets"):
    feature = task.output_features.get(name)
    if feature is None:
      continue
    size = readable_vocab_size(feature.vocabulary,
                               f"task {cfg.mixture_or_task_name} {name} vocabulary")
    if size > model_vocab:
      raise ValueError(f"task {cfg.mixture_or_task_name} {name} vocabulary has {size} ids but the "
                       f"model's vocab_size is {model_vocab}")
  if readable_vocab_size(model.output_vocabulary, "the model's output vocabulary") > model_vocab:
    raise ValueError(f"the model's output vocabulary has {model.output_vocabulary.vocab_size} ids "
                     f"but its vocab_size is {model_vocab}")


def initial_train_state(model: Any, input_shapes: Mapping[str, tuple[int, ...]],
                        partitioner: PjitPartitioner, rng: jax.Array) -> tuple[Any, Any]:
  """A freshly initialised `TrainState` placed on the mesh, and its `TrainState` of shardings.

  Args:
    model: an `EncoderDecoderModel` with `optimizer_def`.
    input_shapes: feature name -> shape used to trace the init (batch 1 is enough).
    partitioner: the mesh partitioner.
    rng: PRNG key for params init.
  """
  init_fn = train_state_lib.init_fn_for(model, model.optimizer_def, dict(input_shapes))
  abstract_boxed = jax.eval_shape(
      lambda r: model.get_initial_variables(r, dict(input_shapes))["params"], rng)
  abstract_state = jax.eval_shape(init_fn, rng)
  axes = train_state_lib.train_state_shardings(abstract_boxed, abstract_state, partitioner)
  state = partitioner.partition(init_fn, in_shardings=None, out_shardings=axes)(rng)
  return state, axes


def shape_fingerprint(params: Any) -> dict[str, list[int]]:
  """{param path: shape} — stored with each checkpoint to name mismatches on restore."""
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  return {jax.tree_util.keystr(path): list(leaf.shape) for path, leaf in flat}


def _restore_params_from(path: str, state: Any, axes: Any, keep_step: bool = False) -> Any:
  """Loads the params (only) of the latest checkpoint in another model dir (or a T5X checkpoint)
  into `state`; `keep_step` also sets the step to the checkpoint's (T5X's finetuning)."""
  state = state.replace(params=load_params(path, state.params, axes.params))
  if not keep_step:
    return state
  t5x = t5x_checkpoints.locate(path)
  step = (t5x_checkpoints.step_of(t5x) if t5x is not None
          else checkpoints_lib.find_checkpoint(path)[1])
  return state.replace(step=jax.device_put(np.asarray(step, state.step.dtype), axes.step))


def _restore_params_and_optimizer_from(path: str, state: Any, axes: Any) -> Any:
  """Loads step, params and optimizer state of the latest checkpoint in another model dir.

  Raises a one-line ValueError naming the first leaf whose shape (or presence) differs.
  """
  import orbax.checkpoint as ocp
  if t5x_checkpoints.locate(path) is not None:
    raise ValueError(f"{path} is a T5X checkpoint: only its params are read (T5X's optimizer "
                     "state is dropped); set RestoreCheckpointConfig.reset_optimizer = True")
  ckpt, step = checkpoints_lib.find_checkpoint(path)
  item = {"step": state.step, "params": state.params, "opt_state": state.opt_state}
  item_axes = {"step": axes.step, "params": axes.params, "opt_state": axes.opt_state}
  target = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        item, item_axes)
  saved = ckpt._read_manifest(ckpt._require_step(step), step)  # pylint: disable=protected-access
  prefixes = tuple(f".{k}" for k in item)
  saved = {k: v for k, v in saved.items() if k.startswith(prefixes)}
  wanted = {k.replace("['", ".", 1).replace("']", "", 1): v
            for k, v in checkpoints_lib.leaf_shapes(target).items()}
  mismatch = checkpoints_lib.first_mismatch(saved, wanted)
  if mismatch is not None:
    raise ValueError(f"cannot restore params and optimizer state (reset_optimizer=False) from "
                     f"checkpoint step {step} in {ckpt.directory}: {mismatch}")
  restore_args = jax.tree.map(lambda s: ocp.ArrayRestoreArgs(sharding=s.sharding), target)
  restored = ocp.PyTreeCheckpointer().restore(
      fileio.join(ckpt.directory, str(step), "state"),
      args=ocp.args.PyTreeRestore(item=target, restore_args=restore_args, partial_restore=True))
  return state.replace(**restored)


def load_params(model_dir: str, params: Any, param_axes: Any, step: int | None = None) -> Any:
  """The params of checkpoint `step` (default: latest) in `model_dir`, on `param_axes` shardings.

  Args:
    model_dir: a run directory, its checkpoints/ folder or a step folder
      (`checkpoints.resolve_checkpoint_path`), local or `gs://`.
    params: pytree with the model's param shapes/dtypes (arrays or ShapeDtypeStructs).
    param_axes: matching pytree of shardings.
    step: checkpoint step, or None for the one the path names (a step folder) or the latest.

  A T5X checkpoint (`t5x_checkpoints.locate`: `.../checkpoint_1000000`, its `checkpoint` file or
  a T5X model dir) is read too: its params only, mapped by name.
  """
  target = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        params, param_axes)
  t5x = t5x_checkpoints.locate(model_dir)
  if t5x is not None and step is None:
    return t5x_checkpoints.read_params(t5x, target)
  ckpt, found = checkpoints_lib.find_checkpoint(model_dir)
  step = found if step is None else step
  return ckpt.restore_params(step, target)


def abstract_params(model: Any, input_shapes: Mapping[str, tuple[int, ...]],
                    partitioner: PjitPartitioner) -> tuple[Any, Any]:
  """The model's params as `jax.ShapeDtypeStruct`s (with shardings) and their shardings.

  Traced with `jax.eval_shape`: no parameter or optimizer array is allocated.
  """
  rng = jax.random.PRNGKey(0)
  init_fn = train_state_lib.init_fn_for(model, model.optimizer_def, dict(input_shapes))
  abstract_boxed = jax.eval_shape(
      lambda r: model.get_initial_variables(r, dict(input_shapes))["params"], rng)
  abstract_state = jax.eval_shape(init_fn, rng)
  axes = train_state_lib.train_state_shardings(abstract_boxed, abstract_state, partitioner)
  target = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        abstract_state.params, axes.params)
  return target, axes.params


def restore_inference_params(checkpoint_path: str, target: Any) -> tuple[Any, int]:
  """Params of the checkpoint `checkpoint_path` names, for eval and inference.

  Args:
    checkpoint_path: a model dir, its checkpoints/ folder or a step folder, local or `gs://`.
    target: the params as `jax.ShapeDtypeStruct`s with shardings (`abstract_params`); no
      random train state is needed.

  Returns:
    (params on the target's shardings, step). Only the params are read; a T5X checkpoint
    (`t5x_checkpoints.locate`) is read too.
  """
  t5x = t5x_checkpoints.locate(checkpoint_path)
  if t5x is not None:
    return t5x_checkpoints.read_params(t5x, target), t5x_checkpoints.step_of(t5x)
  ckpt, step = checkpoints_lib.find_checkpoint(checkpoint_path)
  return ckpt.restore_params(step, target), step


def train(*, model: Any, train_dataset_cfg: data_lib.DatasetConfig,
          train_eval_dataset_cfg: data_lib.DatasetConfig | None = None,
          infer_eval_dataset_cfg: data_lib.DatasetConfig | None = None,
          checkpoint_cfg: CheckpointConfig = CheckpointConfig(),
          partitioner: PjitPartitioner | None = None,
          trainer_cls: Callable[..., Any] | None = None,
          model_dir: str, total_steps: int, eval_steps: int | None = None,
          eval_period: int | None = None, random_seed: int = 0,
          log_every: int = 50, summarize_config_fn: Callable[[str], None] | None = None,
          print_fn: Callable[[str], None] = print,
          inference_evaluator_cls: Callable[..., Any] | None = None,
          best_checkpoint_metric: str | None = None,
          best_checkpoint_mode: str = "max", allow_guide_equals_train: bool = False,
          run_lock_heartbeat_s: float = 60.0,
          run_lock_stale_after_s: float = 600.0,
          divergence_factor: float | None = 10.0) -> tuple[int, Any]:
  """Trains `model` on `train_dataset_cfg` until `total_steps`, resuming from `model_dir`.

  Args:
    model: an `EncoderDecoderModel` (with `optimizer_def`).
    train_dataset_cfg: the training data (global batch size).
    train_eval_dataset_cfg: data for periodic eval loss (e.g. the validation split), or None.
    infer_eval_dataset_cfg: task/mixture decoded every `eval_period` steps and scored with its
      SeqIO metric fns (TensorBoard `infer_eval/`, metrics.jsonl, progress line), or None.
    checkpoint_cfg: save period / keep, optional params source.
    partitioner: the mesh partitioner (default: all devices data-parallel).
    trainer_cls: `Trainer` or `GuidedTrainer` (partially bound by gin).
    model_dir: run directory: checkpoints/, TensorBoard events, metrics.jsonl, config.gin, PNGs.
    total_steps: train until this global step.
    eval_steps: batches per eval (None: the whole split once).
    eval_period: steps between evals (default: the save period). Checkpoints follow the save
      period on their own (a save period shorter than the eval period still saves at each one).
    random_seed: seeds params init and dropout.
    log_every: steps between progress lines.
    summarize_config_fn: called with the operative gin config text (to write config.gin).
    inference_evaluator_cls: builds the infer-eval evaluator (T5X's name; default
      `infer_eval.InferEvaluator`, whose `num_examples` caps the decoded examples).
    best_checkpoint_metric: keep the train state of the best evaluation under MODEL_DIR/best/
      by this metric ('infer_eval/TASK/METRIC' or 'train_eval/NAME'), or None.
    best_checkpoint_mode: 'max' or 'min' for `best_checkpoint_metric`.
    allow_guide_equals_train: let a guided run's guide data be the train data (same task or
      mixture and split); refused by default, since the guide loss then measures training fit.
    run_lock_heartbeat_s: seconds between refreshes of MODEL_DIR/run.lock's heartbeat.
    run_lock_stale_after_s: a run lock whose heartbeat is older than this (seconds) is stale and
      taken over (a lock of a dead process on the same host is taken over at once).
    divergence_factor: a training window whose mean loss exceeds this times the lowest one so
      far counts as diverged: the checkpoint before it is kept out of rotation (see
      `last_good.LastKnownGood`); None: only non-finite steps count.

  Returns:
    (final step, final TrainState).
  """
  from gbt_t5x.train import trainer as trainer_lib
  if total_steps <= 0:
    raise ValueError(f"total_steps must be > 0, got {total_steps}")
  partitioner = partitioner or PjitPartitioner()
  trainer_cls = trainer_cls or trainer_lib.Trainer
  data_lib.validate_feature_lengths(train_dataset_cfg)
  data_lib.task_of(train_dataset_cfg)
  check_vocabularies(model, train_dataset_cfg)
  # Empty or unparsable train data fails here, before model_dir is touched.
  data_lib.first_batch_or_error(train_dataset_cfg)
  if train_eval_dataset_cfg is not None:
    data_lib.validate_feature_lengths(train_eval_dataset_cfg)
    data_lib.task_of(train_eval_dataset_cfg)

  # A live run on model_dir refuses this one before any work (read-only check, process 0).
  chief = jax.process_index() == 0
  if chief:
    run_lock.check_free(model_dir, run_lock_stale_after_s)
    check_metrics_log(model_dir)

  # Fresh state (the trainer adds its own parts, e.g. the guided state), then restore over it.
  init_rng, trainer_rng = jax.random.split(jax.random.PRNGKey(random_seed))
  state, axes = initial_train_state(model, input_shapes(train_dataset_cfg), partitioner,
                                    init_rng)
  infer_evaluator, best_keeper = _infer_eval_and_best(
      model, infer_eval_dataset_cfg, inference_evaluator_cls, partitioner, axes, model_dir,
      best_checkpoint_metric, best_checkpoint_mode, train_eval_dataset_cfg is not None, print_fn)
  trainer = trainer_cls(model=model, train_state=state, partitioner=partitioner,
                        eval_names=["train_eval"] if train_eval_dataset_cfg else [],
                        summary_dir=model_dir, train_state_axes=axes, rng=trainer_rng,
                        log_every=log_every, total_steps=total_steps, print_fn=print_fn)
  check_guide_is_not_train(trainer, train_dataset_cfg, allow_guide_equals_train)

  # Restore (validating shapes) before anything is written to model_dir.
  ckpt_dir = fileio.join(model_dir, checkpoints_lib.CHECKPOINTS_DIR)
  keep = checkpoint_cfg.save.keep if checkpoint_cfg.save else None
  checkpointer = checkpoints_lib.Checkpointer(ckpt_dir, keep=keep)
  restored = _restore_newest_valid(checkpointer, trainer, print_fn)
  data_positions: dict[str, int] = {}
  sampling_segment = None  # online mixture sampling rates: the segment being read
  failed_steps: list[int] = []
  if restored is not None:
    latest, trainer.train_state, metadata, failed_steps = restored
    data_positions = dict(metadata.get("data_positions", {}))
    if metadata.get(SAMPLING_SEGMENT_KEY):
      sampling_segment = data_lib.SamplingSegment.from_json(metadata[SAMPLING_SEGMENT_KEY])
    print_fn(f"restored checkpoint step {latest} from {ckpt_dir}")
    check_total_steps(latest, total_steps, ckpt_dir)
  elif checkpoint_cfg.restore is not None and checkpoint_cfg.restore.path:
    if checkpoint_cfg.restore.reset_optimizer:
      trainer.train_state = _restore_params_from(checkpoint_cfg.restore.path,
                                                 trainer.train_state, trainer.train_state_axes,
                                                 checkpoint_cfg.restore.keep_step)
      if checkpoint_cfg.restore.keep_step:
        data_positions = {"train": 0}  # A new task: read it from its start, not at the step.
      print_fn(f"initialised params from {checkpoint_cfg.restore.path}")
    else:
      trainer.train_state = _restore_params_and_optimizer_from(
          checkpoint_cfg.restore.path, trainer.train_state, trainer.train_state_axes)
      data_positions = {"train": 0}  # A new task: read it from its start, not at the step.
      print_fn(f"initialised params, optimizer state and step "
               f"{int(jax.device_get(trainer.train_state.step))} from "
               f"{checkpoint_cfg.restore.path}")

  # One writer per model dir: process 0 holds MODEL_DIR/run.lock until this function returns.
  lock = run_lock.RunLock(model_dir, heartbeat_s=run_lock_heartbeat_s,
                          stale_after_s=run_lock_stale_after_s, print_fn=print_fn,
                          enabled=chief)
  _acquire_on_chief(lock)
  try:
    fileio.makedirs(model_dir)
    for bad in failed_steps:  # Out of the way (not deleted), so that the step can be saved anew.
      if chief:
        print_fn(f"moved checkpoint step {bad}, which fails verification, to "
                 f"{checkpointer.quarantine(bad)}")
    if summarize_config_fn is not None and jax.process_index() == 0:
      summarize_config_fn(model_dir)
    state = trainer.train_state
    step = int(jax.device_get(state.step))
    train_iter = data_lib.BatchIterator(train_dataset_cfg, partitioner.data_sharding,
                                        start_position=data_positions.get("train", step),
                                        check_fn=getattr(trainer, "check_train_batch", None),
                                        segment=sampling_segment)
    # The guide task (GuidedTrainer) is read here too, so both positions resume together.
    guide_cfg = getattr(trainer, "guide_dataset_cfg", None)
    guide_iter = None
    if guide_cfg is not None:
      guide_iter = data_lib.BatchIterator(guide_cfg, partitioner.data_sharding,
                                          start_position=data_positions.get("guide", 0))
    save_period = checkpoint_cfg.save.period if checkpoint_cfg.save else None
    eval_period = eval_period or save_period or total_steps
    n_params = train_state_lib.param_count(state.params)
    print_fn(f"model: {n_params / 1e6:.2f}M params; mesh {dict(partitioner.mesh.shape)}; "
             f"training steps {step} -> {total_steps}")

    last_good = last_good_lib.LastKnownGood(checkpointer, divergence_factor, print_fn)

    def save(current_step: int) -> None:
      if checkpoint_cfg.save is None:
        return
      positions = {"train": train_iter.position}
      if guide_iter is not None:
        positions["guide"] = guide_iter.position
      metadata = {"data_positions": positions,
                  "param_shapes": shape_fingerprint(trainer.train_state.params)}
      if train_iter.segment is not None:
        metadata[SAMPLING_SEGMENT_KEY] = train_iter.segment.as_json()
      checkpointer.save(current_step, trainer.train_state, metadata)

    def run_eval() -> dict[str, float]:
      if train_eval_dataset_cfg is None:
        return {}
      eval_cfg = dataclasses.replace(train_eval_dataset_cfg, num_epochs=1, shuffle=False)
      batches = data_lib.BatchIterator(eval_cfg, partitioner.data_sharding)
      if eval_steps:
        batches = (b for _, b in zip(range(eval_steps), batches))
      results = trainer.eval({"train_eval": batches})
      r = results["train_eval"]
      print_fn(f"eval step {int(jax.device_get(trainer.train_state.step))}: "
               f"loss {r.get('loss', float('nan')):.4f} accuracy {r.get('accuracy', float('nan')):.4f}")
      return {f"train_eval/{k}": v for k, v in r.items()}

    last_plot_time = time.monotonic()  # The first plot after PLOT_MIN_INTERVAL_S, or at the end.
    with preemption.PreemptionGuard(sync_every=log_every) as guard:
      while step < total_steps:
        next_stop = min(total_steps, (step // eval_period + 1) * eval_period)
        if save_period:
          next_stop = min(next_stop, (step // save_period + 1) * save_period)
        window_start = step
        try:
          window = trainer.train(train_iter, next_stop - step, start_step=step,
                                 stop_fn=guard.should_stop, guide_iter=guide_iter)
        except errors.TrainingStopped as e:
          last_good.observe(window_start, {}, trainer.first_nonfinite_step)
          raise errors.TrainingStopped(f"{e}; {last_good.newest_text()}") from None
        step = int(jax.device_get(trainer.train_state.step))
        healthy = last_good.observe(window_start, window, trainer.first_nonfinite_step)
        if guard.requested:
          # Saved even after non-finite steps: skipped steps leave the params as they were, and
          # the rerun must continue from exactly here.
          save(step)
          checkpointer.wait_until_finished()
          print_fn(f"preempted ({guard.signal_name}) at step {step}: checkpoint saved")
          raise errors.Preempted(step, guard.signal_name)
        if save_period and (step % save_period == 0 or step == total_steps):
          if healthy:
            save(step)
          else:
            print_fn(last_good.skip_notice(step, window))
        if step % eval_period and step != total_steps:
          continue  # A checkpoint-only stop.
        eval_metrics = run_eval()
        if infer_evaluator is not None:
          eval_metrics.update(infer_evaluator(step, trainer.train_state.params))
        if best_keeper is not None and best_keeper.update(
            step, eval_metrics, trainer.train_state,
            {"param_shapes": shape_fingerprint(trainer.train_state.params)}):
          print_fn(f"best {best_keeper.metric} {best_keeper.best['value']:.4f} at step {step}: "
                   f"saved to {best_keeper.directory}")
        if jax.process_index() == 0 and (
            step == total_steps or time.monotonic() - last_plot_time >= PLOT_MIN_INTERVAL_S):
          write_plots(model_dir, trainer)
          last_plot_time = time.monotonic()
    checkpointer.wait_until_finished()
    trainer.close()
    if infer_evaluator is not None:
      infer_evaluator.close()
    return step, trainer.train_state
  finally:
    lock.release()


def _restore_newest_valid(checkpointer: checkpoints_lib.Checkpointer, trainer: Any,
                          print_fn: Callable[[str], None]
                          ) -> tuple[int, Any, dict[str, Any], list[int]] | None:
  """The newest checkpoint of `checkpointer` that verifies, restored into the trainer's state
  structure and shardings (`Checkpointer.restore_newest_valid`), or None without checkpoints."""
  abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                          trainer.train_state, trainer.train_state_axes)
  try:
    return checkpointer.restore_newest_valid(abstract, print_fn)
  except ValueError as e:
    if trainer.train_state.tangents is not None and ".tangents" in str(e):
      raise ValueError(
          f"checkpoint step {checkpointer.latest_step()} in {checkpointer.directory} holds no "
          "long-horizon tangents (its run used HYPERGRAD_HORIZON='greedy'); resume it with the "
          "greedy horizon, or start HYPERGRAD_HORIZON='forward' in a new MODEL_DIR") from None
    raise


def check_metrics_log(model_dir: str) -> None:
  """Reads an existing MODEL_DIR/metrics.jsonl before training (the plots read it after each
  eval): a broken line is a one-line error now, not after the run."""
  path = fileio.join(model_dir, "metrics.jsonl")
  if fileio.exists(path):
    try:
      summaries.read_metrics_log(path)
    except ValueError as e:
      raise ValueError(f"{e}; fix or remove that line, then rerun") from None


def check_total_steps(checkpoint_step: int, total_steps: int, ckpt_dir: str) -> None:
  """Refuses a TRAIN_STEPS below the step of the checkpoint the run resumes from (one line)."""
  if total_steps < checkpoint_step:
    raise ValueError(f"total_steps (TRAIN_STEPS) {total_steps} is below the step of the "
                     f"checkpoint to resume, {checkpoint_step} in {ckpt_dir}: raise TRAIN_STEPS "
                     "to continue, or use another MODEL_DIR to train a new model")


def _acquire_on_chief(lock: run_lock.RunLock) -> None:
  """Process 0 takes the run lock; with several processes, all of them learn whether it did."""
  refused: Exception | None = None
  try:
    lock.acquire()
  except errors.ModelDirInUse as e:
    refused = e
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    flags = multihost_utils.process_allgather(np.array([refused is not None], np.int32))
    if refused is None and np.any(flags):
      raise errors.ModelDirInUse(f"process 0 could not take the run lock of {lock.model_dir}")
  if refused is not None:
    raise refused


def check_guide_is_not_train(trainer: Any, train_cfg: data_lib.DatasetConfig,
                             allow: bool) -> None:
  """Refuses a guided run whose guide data is its train data (same task/mixture and split).

  Raises:
    ValueError: one line, unless `allow` (`train.allow_guide_equals_train = True`).
  """
  guide = getattr(trainer, "guide_dataset_cfg", None)
  if guide is not None:
    data_lib.validate_batch_size(guide)
  if guide is None or allow:
    return
  if (guide.mixture_or_task_name == train_cfg.mixture_or_task_name
      and guide.split == train_cfg.split):
    raise ValueError(f"the guide data is the train data ({guide.mixture_or_task_name} split "
                     f"{guide.split!r}): the guide loss must be held out; use a guide task or "
                     "split, or bind train.allow_guide_equals_train = True to allow it")


def _infer_eval_and_best(model: Any, cfg: data_lib.DatasetConfig | None,
                         evaluator_cls: Callable[..., Any] | None, partitioner: PjitPartitioner,
                         axes: Any, model_dir: str, best_metric: str | None, best_mode: str,
                         has_train_eval: bool, print_fn: Callable[[str], None]
                         ) -> tuple[Any, Any]:
  """The periodic infer-eval hook and the best-checkpoint keeper (either may be None).

  Validates everything (tasks, metric fns, decoder options, the best metric's name) and reads the
  infer-eval examples before anything is written to `model_dir`.
  """
  from gbt_t5x.train import eval_hooks
  from gbt_t5x.train import infer_eval
  hook = None
  if cfg is not None:
    evaluator = (evaluator_cls or infer_eval.InferEvaluator)(
        model=model, dataset_cfg=cfg, partitioner=partitioner, param_axes=axes.params)
    evaluator.prepare()
    hook = eval_hooks.PeriodicInferEval(evaluator, model_dir, print_fn)
  if best_metric is None:
    return hook, None
  tasks = [t.name for t in hook.evaluator.tasks] if hook is not None else None
  eval_hooks.check_best_metric(best_metric, best_mode, has_train_eval, tasks)
  return hook, eval_hooks.BestCheckpointKeeper(model_dir, best_metric, best_mode)


# The PNG plots are drawn after an eval once this many seconds (of this process) have passed since
# the last drawing or the start of training, and always at the end: drawing takes ~0.5 s, which
# short runs with frequent evals would otherwise pay at every eval.
PLOT_MIN_INTERVAL_S = 60.0
LOSS_CURVE_KEYS = ("train/loss", "train_eval/loss", "train/accuracy", "train_eval/accuracy")


def loss_curve_keys(records: Sequence[Mapping[str, Any]]) -> list[str]:
  """The metrics.jsonl keys `loss_curves.png` plots, one subplot each: train and eval loss and
  accuracy, then every decoding metric of the periodic infer-eval (`infer_eval/TASK/METRIC`,
  e.g. `infer_eval/demo_nmt/bleu`) in the order first logged; only keys some record holds."""
  present = dict.fromkeys(k for r in records for k in r)
  return ([k for k in LOSS_CURVE_KEYS if k in present]
          + [k for k in present if k.startswith("infer_eval/")])


def write_plots(model_dir: str, trainer: Any) -> None:
  """Loss curves (train and eval losses, decoding metrics) as PNG, plus the trainer's own plots
  (hyper-parameters)."""
  metrics_path = fileio.join(model_dir, "metrics.jsonl")
  records = summaries.read_metrics_log(metrics_path) if fileio.exists(metrics_path) else []
  keys = loss_curve_keys(records)
  if records and keys:
    summaries.plot_curves(records, keys, fileio.join(model_dir, "loss_curves.png"),
                          title=fileio.basename(model_dir))
  if hasattr(trainer, "write_plots"):
    trainer.write_plots(model_dir)

