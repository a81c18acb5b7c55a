"""The `train` entry function (T5X's `train.py:train`), configured by gin through `__main__`.

Order of work, chosen so that a failed start never touches an existing run: validate the
configuration (tasks, lengths, vocabulary vs model), build the mesh, the train state and the
trainer, restore the newest checkpoint of `model_dir` that verifies (falling back past corrupt
ones, refusing one of another shape) or the configured initial checkpoint
(`state_init.TrainStateInitializer` owns the state, its shardings and these restore modes), and
only then write `config.gin`, train, evaluate, checkpoint (see `last_good.py` for what is saved
and kept after non-finite steps) and plot (`_TrainingLoop`). Must be driven by gin only through
its arguments (no gin import here).
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
from gbt_t5x.train import state_init
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
  """A freshly initialised `TrainState` placed on the mesh, and its `TrainState` of shardings
  (`state_init.TrainStateInitializer.from_scratch`; for tests, benchmarks and notebooks).

  Args:
    model: an `EncoderDecoderModel` with `optimizer_def`.
    input_shapes: feature name -> shape used to trace the init (batch 1 is enough).
    partitioner: the mesh partitioner.
    rng: PRNG key for params init.
  """
  return state_init.TrainStateInitializer(model, input_shapes, partitioner).from_scratch(rng)


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
  """Trains `model` on `train_dataset_cfg` until `total_steps`, resuming from `model_dir`;
  returns (final step, final TrainState).

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
    divergence_factor: a window whose mean loss exceeds this times the lowest one so far counts
      as diverged: the checkpoint before it is kept out of rotation (`last_good.LastKnownGood`);
      None: only non-finite steps count.
  """
  partitioner = partitioner or PjitPartitioner()
  _check_before_start(model, train_dataset_cfg, train_eval_dataset_cfg, total_steps, model_dir,
                      run_lock_stale_after_s)
  initializer = state_init.TrainStateInitializer(model, input_shapes(train_dataset_cfg),
                                                 partitioner)
  init_rng, trainer_rng = jax.random.split(jax.random.PRNGKey(random_seed))
  state, axes = initializer.from_scratch(init_rng)  # The trainer adds its parts (guided state).
  infer_evaluator, best_keeper = _infer_eval_and_best(
      model, infer_eval_dataset_cfg, inference_evaluator_cls, partitioner, axes, model_dir,
      best_checkpoint_metric, best_checkpoint_mode, train_eval_dataset_cfg is not None, print_fn)
  trainer = _make_trainer(trainer_cls, model=model, train_state=state, partitioner=partitioner,
                          eval_names=["train_eval"] if train_eval_dataset_cfg else [],
                          summary_dir=model_dir, train_state_axes=axes, rng=trainer_rng,
                          log_every=log_every, total_steps=total_steps, print_fn=print_fn)
  check_guide_is_not_train(trainer, train_dataset_cfg, allow_guide_equals_train)
  save = checkpoint_cfg.save  # Restore (validating shapes) before anything is written:
  checkpointer = checkpoints_lib.model_dir_checkpointer(model_dir, save.keep if save else None)
  start = _start(initializer, trainer, checkpointer, checkpoint_cfg.restore, total_steps, print_fn)
  lock = _lock_model_dir(model_dir, run_lock_heartbeat_s, run_lock_stale_after_s, print_fn)
  try:
    _prepare_model_dir(model_dir, checkpointer, start.failed_steps, summarize_config_fn, print_fn)
    save_period = save.period if save else None
    periods = _Periods(save_period, eval_period or save_period or total_steps, eval_steps,
                       log_every)
    loop = _TrainingLoop(trainer, checkpointer, partitioner, model_dir, total_steps, periods,
                         train_eval_dataset_cfg, infer_evaluator, best_keeper, print_fn,
                         last_good_lib.LastKnownGood(checkpointer, divergence_factor, print_fn))
    return loop.run(*_data_iterators(start, trainer, train_dataset_cfg, partitioner))
  finally:
    lock.release()


def _check_before_start(model: Any, train_cfg: data_lib.DatasetConfig,
                        train_eval_cfg: data_lib.DatasetConfig | None, total_steps: int,
                        model_dir: str, run_lock_stale_after_s: float) -> None:
  """Everything checked before any state is built: the steps, the tasks, lengths and vocabulary
  vs the model, that the train data yields a batch, and (process 0, read-only) that no live run
  holds `model_dir` and that its metrics log reads."""
  if total_steps <= 0:
    raise ValueError(f"total_steps must be > 0, got {total_steps}")
  data_lib.validate_feature_lengths(train_cfg)
  data_lib.task_of(train_cfg)
  check_vocabularies(model, train_cfg)
  # Empty or unparsable train data fails here, before model_dir is touched.
  data_lib.first_batch_or_error(train_cfg)
  if train_eval_cfg is not None:
    data_lib.validate_feature_lengths(train_eval_cfg)
    data_lib.task_of(train_eval_cfg)
  if jax.process_index() == 0:
    run_lock.check_free(model_dir, run_lock_stale_after_s)
    check_metrics_log(model_dir)


def _make_trainer(trainer_cls: Callable[..., Any] | None, **kwargs: Any) -> Any:
  """`trainer_cls(**kwargs)`, `trainer.Trainer` by default."""
  from gbt_t5x.train import trainer as trainer_lib
  return (trainer_cls or trainer_lib.Trainer)(**kwargs)


def _start(initializer: state_init.TrainStateInitializer, trainer: Any,
           checkpointer: checkpoints_lib.Checkpointer,
           restore_cfg: RestoreCheckpointConfig | None, total_steps: int,
           print_fn: Callable[[str], None]) -> state_init.Start:
  """Puts the run's start state into `trainer` (`TrainStateInitializer.start`: resumed, from
  `restore_cfg`'s checkpoint, or fresh) and returns where it came from."""
  restore_cfg = restore_cfg or RestoreCheckpointConfig()
  start = initializer.start(trainer.train_state, trainer.train_state_axes, checkpointer,
                            restore_cfg.path, restore_cfg.reset_optimizer, restore_cfg.keep_step,
                            print_fn)
  if start.resumed_step is not None:
    check_total_steps(start.resumed_step, total_steps, checkpointer.directory)
  trainer.train_state = start.state
  return start


def _prepare_model_dir(model_dir: str, checkpointer: checkpoints_lib.Checkpointer,
                       failed_steps: Sequence[int],
                       summarize_config_fn: Callable[[str], None] | None,
                       print_fn: Callable[[str], None]) -> None:
  """The first writes of a run, once it holds the lock: `model_dir` itself, the checkpoints that
  failed verification moved out of the way (not deleted, so that their steps can be saved anew),
  and config.gin (`summarize_config_fn`)."""
  fileio.makedirs(model_dir)
  if jax.process_index() != 0:
    return
  for bad in failed_steps:
    print_fn(f"moved checkpoint step {bad}, which fails verification, to "
             f"{checkpointer.quarantine(bad)}")
  if summarize_config_fn is not None:
    summarize_config_fn(model_dir)


def _data_iterators(start: state_init.Start, trainer: Any, train_cfg: data_lib.DatasetConfig,
                    partitioner: PjitPartitioner
                    ) -> tuple[data_lib.BatchIterator, data_lib.BatchIterator | None]:
  """The train batches (and the guide task's, for a `GuidedTrainer`), at the positions the start
  state was saved with: a resumed run reads on where it stopped (its online sampling segment
  too), a finetuning start from the beginning, else at the state's step."""
  positions = dict(start.metadata.get("data_positions", {}))
  if start.data_from_start:
    positions = {"train": 0}  # A new task: read it from its start, not at the step.
  segment = None  # online mixture sampling rates: the segment being read
  if start.metadata.get(SAMPLING_SEGMENT_KEY):
    segment = data_lib.SamplingSegment.from_json(start.metadata[SAMPLING_SEGMENT_KEY])
  step = int(jax.device_get(trainer.train_state.step))
  train_iter = data_lib.BatchIterator(train_cfg, partitioner.data_sharding,
                                      start_position=positions.get("train", step),
                                      check_fn=getattr(trainer, "check_train_batch", None),
                                      segment=segment)
  guide_cfg = getattr(trainer, "guide_dataset_cfg", None)
  guide_iter = None
  if guide_cfg is not None:  # Read here too, so that both positions resume together.
    guide_iter = data_lib.BatchIterator(guide_cfg, partitioner.data_sharding,
                                        start_position=positions.get("guide", 0))
  return train_iter, guide_iter


@dataclasses.dataclass(frozen=True)
class _Periods:
  """When the loop stops: `save` (None: never saves) and `eval` steps, `eval_steps` batches per
  eval (None: the whole split), `log_every` (the preemption check's sync period)."""
  save: int | None
  eval: int
  eval_steps: int | None
  log_every: int


@dataclasses.dataclass
class _TrainingLoop:
  """Trains in windows that end at checkpoint and eval stops; saves (`last_good` decides
  whether), evaluates, keeps the best checkpoint, plots, and stops cleanly on preemption."""
  trainer: Any
  checkpointer: checkpoints_lib.Checkpointer
  partitioner: PjitPartitioner
  model_dir: str
  total_steps: int
  periods: _Periods
  train_eval_cfg: data_lib.DatasetConfig | None
  infer_evaluator: Any
  best_keeper: Any
  print_fn: Callable[[str], None]
  last_good: last_good_lib.LastKnownGood
  train_iter: data_lib.BatchIterator | None = None
  guide_iter: data_lib.BatchIterator | None = None

  def run(self, train_iter: data_lib.BatchIterator,
          guide_iter: data_lib.BatchIterator | None) -> tuple[int, Any]:
    """Trains from the trainer's state to `total_steps`; returns (final step, final state)."""
    self.train_iter, self.guide_iter = train_iter, guide_iter
    trainer, periods = self.trainer, self.periods
    step = int(jax.device_get(trainer.train_state.step))
    n_params = train_state_lib.param_count(trainer.train_state.params)
    self.print_fn(f"model: {n_params / 1e6:.2f}M params; mesh {dict(self.partitioner.mesh.shape)}; "
                  f"training steps {step} -> {self.total_steps}")
    last_plot_time = time.monotonic()  # The first plot after PLOT_MIN_INTERVAL_S, or at the end.
    with preemption.PreemptionGuard(sync_every=periods.log_every) as guard:
      while step < self.total_steps:
        step, healthy, window = self._window(step, guard)
        if periods.save and (step % periods.save == 0 or step == self.total_steps):
          if healthy:
            self.save(step)
          else:
            self.print_fn(self.last_good.skip_notice(step, window))
        if step % periods.eval and step != self.total_steps:
          continue  # A checkpoint-only stop.
        self._evaluate(step)
        if jax.process_index() == 0 and (step == self.total_steps or
                                         time.monotonic() - last_plot_time >= PLOT_MIN_INTERVAL_S):
          write_plots(self.model_dir, trainer)
          last_plot_time = time.monotonic()
    self.checkpointer.wait_until_finished()
    trainer.close()
    if self.infer_evaluator is not None:
      self.infer_evaluator.close()
    return step, trainer.train_state

  def _window(self, step: int, guard: preemption.PreemptionGuard
              ) -> tuple[int, bool, Mapping[str, float]]:
    """Trains to the next checkpoint or eval stop; returns (step, whether the window's state may
    be saved, its metrics). Preemption saves and raises `errors.Preempted`."""
    periods = self.periods
    next_stop = min(self.total_steps, (step // periods.eval + 1) * periods.eval)
    if periods.save:
      next_stop = min(next_stop, (step // periods.save + 1) * periods.save)
    try:
      window = self.trainer.train(self.train_iter, next_stop - step, start_step=step,
                                  stop_fn=guard.should_stop, guide_iter=self.guide_iter)
    except errors.TrainingStopped as e:
      self.last_good.observe(step, {}, self.trainer.first_nonfinite_step)
      raise errors.TrainingStopped(f"{e}; {self.last_good.newest_text()}") from None
    window_start, step = step, int(jax.device_get(self.trainer.train_state.step))
    healthy = self.last_good.observe(window_start, window, self.trainer.first_nonfinite_step)
    if guard.requested:
      # Saved even after non-finite steps: skipped steps leave the params as they were, and the
      # rerun must continue from exactly here.
      self.save(step)
      self.checkpointer.wait_until_finished()
      self.print_fn(f"preempted ({guard.signal_name}) at step {step}: checkpoint saved")
      raise errors.Preempted(step, guard.signal_name)
    return step, healthy, window

  def save(self, step: int) -> None:
    """Checkpoints the trainer's state with the data positions (and sampling segment)."""
    if self.periods.save is None:
      return
    positions = {"train": self.train_iter.position}
    if self.guide_iter is not None:
      positions["guide"] = self.guide_iter.position
    params = self.trainer.train_state.params
    metadata = {"data_positions": positions, "param_shapes": checkpoints_lib.leaf_shapes(params)}
    if self.train_iter.segment is not None:
      metadata[SAMPLING_SEGMENT_KEY] = self.train_iter.segment.as_json()
    self.checkpointer.save(step, self.trainer.train_state, metadata)

  def _evaluate(self, step: int) -> None:
    """The eval loss, the infer-eval hook and the best-checkpoint keeper at an eval stop."""
    metrics = self._run_eval()
    state = self.trainer.train_state
    if self.infer_evaluator is not None:
      metrics.update(self.infer_evaluator(step, state.params))
    keeper = self.best_keeper
    if keeper is not None and keeper.update(
        step, metrics, state, {"param_shapes": checkpoints_lib.leaf_shapes(state.params)}):
      self.print_fn(f"best {keeper.metric} {keeper.best['value']:.4f} at step {step}: saved to "
                    f"{keeper.directory}")

  def _run_eval(self) -> dict[str, float]:
    if self.train_eval_cfg is None:
      return {}
    eval_cfg = dataclasses.replace(self.train_eval_cfg, num_epochs=1, shuffle=False)
    batches = data_lib.BatchIterator(eval_cfg, self.partitioner.data_sharding)
    if self.periods.eval_steps:
      batches = (b for _, b in zip(range(self.periods.eval_steps), batches))
    r = self.trainer.eval({"train_eval": batches})["train_eval"]
    self.print_fn(f"eval step {int(jax.device_get(self.trainer.train_state.step))}: "
                  f"loss {r.get('loss', float('nan')):.4f} "
                  f"accuracy {r.get('accuracy', float('nan')):.4f}")
    return {f"train_eval/{k}": v for k, v in r.items()}


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


def _lock_model_dir(model_dir: str, heartbeat_s: float, stale_after_s: float,
                    print_fn: Callable[[str], None]) -> run_lock.RunLock:
  """One writer per model dir: process 0 takes MODEL_DIR/run.lock (`_acquire_on_chief`); the
  caller releases it when the run ends."""
  lock = run_lock.RunLock(model_dir, heartbeat_s=heartbeat_s, stale_after_s=stale_after_s,
                          print_fn=print_fn, enabled=jax.process_index() == 0)
  _acquire_on_chief(lock)
  return lock


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

