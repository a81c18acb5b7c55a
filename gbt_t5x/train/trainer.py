"""T5X-style `Trainer`: the partitioned train step, evaluation, metrics and progress.

The step is `step.model_step` (gradients accumulated over microbatches, then the optax update at
the scheduled learning rate and the run's hyper-parameter values, guarded against non-finite
losses), jitted by the partitioner in the overridable `_partitioned_train_step` property. Where
the values come from is `_values_fn` (none, or replayed schedules); `GuidedTrainer`
(`guided_trainer.py`) takes them from its guided state and adds a partitioned guided step.

Metrics are kept on device as per-step sums and fetched only when a progress line or summary is
written, so the host never waits on every step. Must not import gin.

Public metrics of each logged training window (TensorBoard `train/` and metrics.jsonl lines
`train/NAME`), besides the step's own (`loss`, `accuracy`, `learning_rate`, `hp/...`, counts):
  - `timing/seconds_per_step`: wall seconds per step over the window;
  - `timing/cpu_seconds_per_step`: this process's CPU seconds (all its threads,
    `time.process_time`) per step over the window: a run's compute that hardly changes when other
    processes share the machine (wall seconds grow with them); `gbt_t5x.runner.seconds_per_step`
    reads it back for the search's and the experiments' compute accounting.
Both include the host fetch; the first window of a run holds compilation and is not timed.
"""
from __future__ import annotations

import functools
import itertools
import time
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from gbt_t5x import errors
from gbt_t5x.guided import specs as specs_lib
from gbt_t5x.train import data_weights as data_weights_lib
from gbt_t5x.train import metric_kinds
from gbt_t5x.train import step as step_lib
from gbt_t5x.train import summaries
from gbt_t5x.train.partitioning import PjitPartitioner
from gbt_t5x.train.step import Batch, Metrics
from gbt_t5x.train.train_state import TrainState


def eval_step(model: Any, params: Any, batch: Batch) -> Metrics:
  """Deterministic loss/accuracy sums on one batch (no dropout)."""
  _, metrics = model.eval_fn(params, batch)
  return metrics


def finalize_metrics(sums: Mapping[str, float], num_steps: int) -> dict[str, float]:
  """Turns summed per-step metrics into T5X-style reported values, by `metric_kinds`.

  PER_TOKEN keys (`loss`, `accuracy`, ...) become per-target-token means; COUNT keys (tokens,
  examples, skips) stay sums; MEAN keys (the learning rate, hyper-parameter values, any other
  key) become per-step means.
  """
  tokens = max(float(sums.get("num_tokens", 0.0)), 1.0)
  divisors = {metric_kinds.PER_TOKEN: tokens, metric_kinds.COUNT: 1.0,
              metric_kinds.MEAN: float(max(num_steps, 1))}
  return {key: float(value) / divisors[metric_kinds.kind_of(key).reduce]
          for key, value in sums.items()}


def teacher_forced_eval(step_fn: Callable[[Any, Batch], Metrics], params: Any,
                        batches: Iterable[Batch], max_batches: int | None = None
                        ) -> dict[str, float]:
  """The one teacher-forced evaluation loop (trainer, `gbt_t5x.eval`, `gbt_t5x.scoring`).

  Sums `step_fn(params, batch)` (an `eval_step`, jitted or partitioned: per-batch metric sums)
  over `batches` on the host and finalizes them (`finalize_metrics` with one step).

  Args:
    step_fn: `(params, batch) -> {name: scalar sum}`, e.g. `eval_step` bound to a model.
    params: the model params `step_fn` takes.
    batches: model-feature batches (each `[batch, length]` arrays).
    max_batches: score only the first N batches (None: all of them).

  Returns:
    {'loss': per target token (CE + z-loss), 'accuracy': per target token, 'num_tokens',
    'num_examples', ...}; {} when `batches` is empty.
  """
  sums: dict[str, float] = {}
  for batch in itertools.islice(batches, max_batches):
    for key, value in jax.device_get(step_fn(params, batch)).items():
      sums[key] = sums.get(key, 0.0) + float(np.asarray(value))
  return finalize_metrics(sums, 1) if sums else {}


class Trainer:
  """Runs partitioned train and eval steps on a `TrainState` (T5X's Trainer surface).

  Args:
    model: an `EncoderDecoderModel` with an `optimizer_def`.
    train_state: the initial (or restored) `TrainState`, already placed on the mesh.
    partitioner: a `PjitPartitioner`.
    eval_names: names of the eval datasets (summary subdirectories).
    summary_dir: where TensorBoard events, the metrics log and plots go (None: nowhere).
    train_state_axes: the `TrainState` of shardings.
    rng: base PRNG key; dropout uses `fold_in(rng, step)`.
    learning_rate_fn: step -> learning rate (the model's schedule).
    num_microbatches: gradient-accumulation microbatches per step (None/1: none).
    log_every: steps between progress lines and summaries.
    total_steps: for the progress line's ETA.
    max_nonfinite_steps: stop (raising `TrainingStopped`) once more than this many steps had a
      non-finite loss or gradient; each such step is skipped (params unchanged), counted and
      logged, and left out of the reported metrics (a window of skipped steps only reports
      `nonfinite_skipped`, never a loss of 0). `first_nonfinite_step` is the first such step
      of this process (the state's step after it), for the last-known-good checkpoint policy.
    hyperparam_schedules: replayed fixed schedules {name: step -> value} (see
      `gbt_t5x.guided.export`): `learning_rate` multiplies `learning_rate_fn`, `label_smoothing`
      and `data_weights` go to the loss, other names are optimizer hyper-parameters.
    hyperparam_entry_names: {name: one name per entry} of vector values (e.g. {'data_weights':
      ['clean', 'misaligned', ...]}, bound by an exported schedule): summaries report them as
      `hp/NAME/ENTRY` (tag-safe) instead of the entry index.
  """

  def __init__(self, model: Any, train_state: TrainState, partitioner: PjitPartitioner,
               eval_names: Iterable[str], summary_dir: str | None, train_state_axes: TrainState,
               rng: jax.Array, learning_rate_fn: Callable[[jax.Array], jax.Array],
               num_microbatches: int | None = None, log_every: int = 50,
               total_steps: int | None = None, print_fn: Callable[[str], None] = print,
               hyperparam_schedules: Mapping[str, Callable[[jax.Array], jax.Array]] | None = None,
               max_nonfinite_steps: int = 100,
               hyperparam_entry_names: Mapping[str, Sequence[str]] | None = None):
    self.model = model
    self.optimizer = model.optimizer_def
    self.train_state = train_state
    self._partitioner = partitioner
    self.eval_names = list(eval_names)
    self.summary_dir = summary_dir
    self.train_state_axes = train_state_axes
    self._rng = rng
    self._learning_rate_fn = learning_rate_fn
    self.hyperparam_schedules = dict(hyperparam_schedules or {})
    # Names of vector values' entries (GuidedTrainer: from its specs' entry_names).
    self.entry_names = {k: tuple(v) for k, v in (hyperparam_entry_names or {}).items()}
    self._check_entry_names()
    self.max_nonfinite_steps = int(max_nonfinite_steps)
    self.first_nonfinite_step: int | None = None
    self._num_microbatches = num_microbatches
    # Parameter-group ids of a per-group learning-rate multiplier (GuidedTrainer sets them).
    self._lr_group_ids: Any = None
    self._guide_iter: Iterator[Batch] | None = None
    self.log_every = max(1, int(log_every))
    self.total_steps = total_steps
    self._print = print_fn
    self._is_chief = jax.process_index() == 0 and summary_dir is not None
    self._writers: dict[str, summaries.SummaryWriter] = {}

  def _check_entry_names(self) -> None:
    """One name per entry of each replayed vector value (its schedule's value at step 0)."""
    for name, names in self.entry_names.items():
      if name not in self.hyperparam_schedules:
        continue
      size = int(np.size(jax.device_get(self.hyperparam_schedules[name](jnp.asarray(0)))))
      try:
        specs_lib.entry_tags(names, size)
      except ValueError as e:
        raise ValueError(f"hyperparam_entry_names[{name!r}]: {e}") from None

  def check_train_batch(self, local_batch: Mapping[str, np.ndarray]) -> None:
    """Called on each host-side train batch: replayed data weights need per-token data ids."""
    if "data_weights" in self.hyperparam_schedules and (
        data_weights_lib.DATA_IDS not in local_batch):
      raise ValueError("replayed data_weights need per-token data ids: set data_id_feature on "
                       "the train/ DatasetConfig (the guided run's DATA_ID_FEATURE), e.g. "
                       "--gin.train/data.DatasetConfig.data_id_feature=\"'noise_bucket'\"")

  # ---------------------------------------------------------------- outputs (created lazily, so
  # that constructing a trainer writes nothing into a model dir that may fail to restore)
  def _writer(self, name: str) -> summaries.SummaryWriter:
    if name not in self._writers:
      self._writers[name] = summaries.SummaryWriter(
          f"{self.summary_dir}/{name}" if self.summary_dir else "", enabled=self._is_chief)
    return self._writers[name]

  @functools.cached_property
  def _metrics_log(self) -> summaries.MetricsLog:
    return summaries.MetricsLog(f"{self.summary_dir}/metrics.jsonl" if self.summary_dir else "",
                                enabled=self._is_chief)

  # ---------------------------------------------------------------- the model's callables
  def _forward(self, params: Any, batch: Batch, rng: jax.Array) -> jax.Array:
    """Teacher-forced train logits [B, T, V] (dropout from `rng`)."""
    return self.model.logits_fn(params, batch, dropout_rng=rng)

  def _loss_inputs(self, loss_values: Mapping[str, jax.Array], batch: Batch
                   ) -> dict[str, jax.Array]:
    """The one mapping of loss-side values to the loss: `label_smoothing` as it is, a
    `data_weights` table [num_ids] as per-token weights [B, T] of the whole batch."""
    inputs = {}
    if "label_smoothing" in loss_values:
      inputs["label_smoothing"] = loss_values["label_smoothing"]
    if "data_weights" in loss_values:
      inputs["token_weights"] = data_weights_lib.data_weight_tokens(loss_values["data_weights"],
                                                                    batch)
    return inputs

  def _loss_from_outputs(self, logits: jax.Array, batch: Batch,
                         loss_inputs: Mapping[str, jax.Array]) -> tuple[jax.Array, Metrics]:
    return self.model.loss_from_logits(logits, batch,
                                       label_smoothing=loss_inputs.get("label_smoothing"),
                                       token_weights=loss_inputs.get("token_weights"))

  def _guide_loss(self, params: Any, guide_batch: Batch) -> jax.Array:
    return self.model.guide_loss_fn(params, guide_batch)

  def step_kwargs(self) -> dict[str, Any]:
    """The model-side keyword arguments of `gbt_t5x.guided.hypergrad`'s step functions
    (optimizer, forward_fn, loss_from_outputs, loss_inputs_fn, learning-rate groups, ...; a
    `GuidedTrainer` adds its `specs`): for calling those functions on this trainer's model
    directly, e.g. in benchmarks and tests."""
    return self._step_fns.hypergrad_kwargs()

  @property
  def _step_fns(self) -> step_lib.StepFns:
    return step_lib.StepFns(
        optimizer=self.optimizer, forward_fn=self._forward,
        loss_from_outputs=self._loss_from_outputs, loss_inputs_fn=self._loss_inputs,
        guide_loss_fn=self._guide_loss, learning_rate_fn=self._learning_rate_fn, rng=self._rng,
        num_microbatches=self._num_microbatches, lr_group_ids=self._lr_group_ids,
        entry_names=self.entry_names)

  def _values_fn(self, state: TrainState) -> Mapping[str, jax.Array]:
    """This step's hyper-parameter values: replayed schedules, or none (the optimizer's own)."""
    if self.hyperparam_schedules:
      return step_lib.schedule_values(self.hyperparam_schedules)(state)
    return step_lib.no_values(state)

  def _plain_step_guidance(self) -> step_lib.Guidance | None:
    """What guiding adds to a step without a guide batch (GuidedTrainer's long horizon)."""
    return None

  # ---------------------------------------------------------------- compiled functions
  @functools.cached_property
  def _partitioned_train_step(self) -> Callable[[TrainState, Batch], tuple[TrainState, Metrics]]:
    """The jitted model step `(state, batch) -> (state, metric sums)`; overridable."""
    def train_step(state, batch):
      return step_lib.model_step(state, batch, fns=self._step_fns, values_fn=self._values_fn,
                                 guidance=self._plain_step_guidance())
    return self._partitioner.partition(
        train_step, in_shardings=(self.train_state_axes, self._partitioner.data_sharding),
        out_shardings=(self.train_state_axes, self._partitioner.replicated),
        donate_argnums=(0,))

  @functools.cached_property
  def _partitioned_eval_step(self) -> Callable[[Any, Batch], Metrics]:
    return self._partitioner.partition(
        lambda params, batch: eval_step(self.model, params, batch),
        in_shardings=(self.train_state_axes.params, self._partitioner.data_sharding),
        out_shardings=self._partitioner.replicated)

  # ---------------------------------------------------------------- loops
  def _run_one_step(self, batch_iter: Iterator[Batch]) -> Metrics:
    """Runs one train step on the next batch (GuidedTrainer also draws guide batches)."""
    batch = next(batch_iter)
    self.train_state, metrics = self._partitioned_train_step(self.train_state, batch)
    return metrics

  def train(self, batch_iter: Iterator[Batch], num_steps: int,
            start_step: int | None = None,
            stop_fn: Callable[[], bool] | None = None,
            guide_iter: Iterator[Batch] | None = None) -> dict[str, float]:
    """Runs `num_steps` train steps; returns the window's finalized mean metrics.

    Per-step metric sums stay on device and are fetched every `log_every` steps, when a progress
    line, TensorBoard scalars and a metrics-log line are written. `stop_fn` is polled after every
    step; when it returns True the loop ends early (e.g. on preemption) after flushing metrics.
    `guide_iter` yields guide batches (global, on the data sharding) for a `GuidedTrainer`; the
    training loop owns it (and its position) as it owns `batch_iter`.
    """
    if guide_iter is not None:
      self._guide_iter = guide_iter
    # The first window of the first call holds compilation and is not timed; a later call (the
    # training loop calls again after every checkpoint and evaluation) starts the clock here, so
    # its first window is timed without the evaluation or save before it.
    first_call = not hasattr(self, "_progress")
    self._last_flush_time = None if first_call else time.monotonic()
    self._last_flush_cpu = time.process_time()
    start = int(start_step if start_step is not None else jax.device_get(self.train_state.step))
    if first_call:
      self._progress = summaries.ProgressLine(self.total_steps or start + num_steps, start,
                                              self.log_every, print_fn=self._print)
    pending: list[tuple[int, Metrics]] = []
    window_sums: dict[str, float] = {}
    steps_kept = 0
    for i in range(num_steps):
      step = start + i
      pending.append((step + 1, self._run_one_step(batch_iter)))
      stop = stop_fn is not None and stop_fn()
      if (step + 1) % self.log_every == 0 or i == num_steps - 1 or stop:
        steps_kept += self._flush(pending, window_sums)
        pending = []
      if stop:
        break
    return finalize_metrics(window_sums, steps_kept)

  def record_steps(self, steps: list[int], host_metrics: list[dict[str, Any]]) -> None:
    """Hook receiving every step's fetched metrics (GuidedTrainer writes its trajectory)."""

  def _flush(self, pending: list[tuple[int, Metrics]], window_sums: dict[str, float]) -> int:
    """Fetches and reports the pending steps' metrics; returns how many steps were not skipped.

    A step skipped for a non-finite loss or gradient adds only its `nonfinite_skipped` count:
    its (zeroed) loss and other metrics are left out of every report."""
    host = jax.device_get([m for _, m in pending])
    if self._is_chief:
      self.record_steps([s for s, _ in pending], host)
    chunk_sums: dict[str, float] = {}
    kept = 0
    for (step, _), metrics in zip(pending, host):
      skipped = float(np.asarray(metrics.get("nonfinite_skipped", 0.0))) > 0
      if skipped and self.first_nonfinite_step is None:
        self.first_nonfinite_step = step
      kept += not skipped
      for key, value in metrics.items():
        if skipped and key != "nonfinite_skipped":
          continue
        value = float(np.asarray(value))
        chunk_sums[key] = chunk_sums.get(key, 0.0) + value
        window_sums[key] = window_sums.get(key, 0.0) + value
    last_step = pending[-1][0]
    report = finalize_metrics(chunk_sums, kept)
    # The public timing metrics (module docstring): wall and CPU seconds per step over this
    # window.
    now, now_cpu = time.monotonic(), time.process_time()
    last_flush = self._last_flush_time
    if last_flush is not None:
      report["timing/seconds_per_step"] = (now - last_flush) / len(pending)
      report["timing/cpu_seconds_per_step"] = (now_cpu - self._last_flush_cpu) / len(pending)
    self._last_flush_time, self._last_flush_cpu = now, now_cpu
    skipped = int(round(chunk_sums.get("nonfinite_skipped", 0.0)))
    if skipped:
      total = int(jax.device_get(self.train_state.num_nonfinite))
      self._print(f"warning: {skipped} step(s) up to step {last_step} had a non-finite loss or "
                  f"gradient and were skipped ({total} in this run so far)")
      if total > self.max_nonfinite_steps:
        raise errors.TrainingStopped(
            f"stopping at step {last_step}: {total} steps had a non-finite loss or gradient "
            f"(limit max_nonfinite_steps={self.max_nonfinite_steps})")
    self._writer("train").scalars(last_step, report)
    self._metrics_log.log(last_step, {f"train/{k}": v for k, v in report.items()})
    self._progress.update(last_step, self.progress_view(report),
                          int(chunk_sums.get("num_tokens", 0)))
    return kept

  def progress_view(self, report: Mapping[str, float]) -> dict[str, float]:
    """The subset of a report shown on the progress line (everything goes to TensorBoard), by
    `metric_kinds` (e.g. token counts and hypergradients hidden, skip counts only when
    non-zero); a learning-rate multiplier (`hp/learning_rate[/GROUP]`) is shown as
    `lr_mult[/GROUP]`, apart from the applied learning rate `lr`."""
    lr_key = metric_kinds.hp_key(specs_lib.LEARNING_RATE)
    view = {}
    for key, value in report.items():
      progress = metric_kinds.kind_of(key).progress
      if progress == metric_kinds.HIDDEN or (
          progress in (metric_kinds.NONZERO, metric_kinds.NONZERO_COUNT) and value == 0):
        continue
      if progress == metric_kinds.NONZERO_COUNT:
        value = int(value)
      if key == lr_key or key.startswith(lr_key + "/"):
        key = "lr_mult" + key[len(lr_key):]
      view[key] = value
    return view

  def eval(self, batch_iters: Mapping[str, Iterable[Batch]]) -> dict[str, dict[str, float]]:
    """Evaluates the current params on each named dataset (one full pass each).

    Returns:
      {name: {'loss': per-token CE (+ z-loss), 'accuracy': per-token, ...}}.
    """
    results = {}
    step = int(jax.device_get(self.train_state.step))
    for name, batches in batch_iters.items():
      report = teacher_forced_eval(self._partitioned_eval_step, self.train_state.params, batches)
      results[name] = report
      self._writer(name).scalars(step, report)
      self._metrics_log.log(step, {f"{name}/{k}": v for k, v in report.items()})
    return results

  def close(self) -> None:
    for writer in self._writers.values():
      writer.close()
