"""T5X-style `Trainer`: the partitioned train step, evaluation, metrics and progress.

The step is built as in T5X: `accumulate_grads_microbatched` (forward/backward, summed over
microbatches) followed by `apply_grads` (the optax update with the scheduled learning rate),
jitted by the partitioner in the overridable `_partitioned_train_step` property. `GuidedTrainer`
(`guided_trainer.py`) overrides that property to fuse the hyper-parameter step in between.

Metrics are kept on device as per-step sums and fetched only when a progress line or summary is
written, so the host never waits on every step. Must not import gin.
"""
from __future__ import annotations

import functools
import time
from typing import Any, Callable, Iterable, Iterator, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gbt_t5x import errors
from gbt_t5x.train import data_weights as data_weights_lib
from gbt_t5x.train import optimizers as optimizers_lib
from gbt_t5x.train import summaries
from gbt_t5x.train.partitioning import PjitPartitioner
from gbt_t5x.train import train_state as train_state_lib
from gbt_t5x.train.train_state import TrainState

Batch = Mapping[str, jax.Array]
Metrics = dict[str, jax.Array]


def _microbatch(batch: Batch, num_microbatches: int, index: jax.Array) -> dict[str, jax.Array]:
  """Rows `index, index + M, index + 2M, ...` of every feature ([B, L] -> [B / M, L])."""
  def take(x):
    x = x.reshape((x.shape[0] // num_microbatches, num_microbatches) + x.shape[1:])
    return jax.lax.dynamic_index_in_dim(x, index, axis=1, keepdims=False)
  return {k: take(v) for k, v in batch.items()}


def accumulate_grads_microbatched(model: Any, params: Any, batch: Batch, dropout_rng: jax.Array,
                                  num_microbatches: int | None,
                                  loss_kwargs: Mapping[str, Any] | None = None
                                  ) -> tuple[Any, Metrics]:
  """Gradient of the summed training loss over the batch, accumulated over microbatches.

  Args:
    model: an `EncoderDecoderModel`.
    params: unboxed params.
    batch: global batch, features `[B, L]`.
    dropout_rng: PRNG key for dropout (folded with the microbatch index).
    num_microbatches: None/1 for one pass, else M dividing B.
    loss_kwargs: extra keyword arguments for `model.loss_fn` (label smoothing, token weights).

  Returns:
    (grads with the params' structure, metrics dict of per-batch sums).
  """
  loss_kwargs = dict(loss_kwargs or {})
  grad_fn = jax.value_and_grad(model.loss_fn, has_aux=True)
  if not num_microbatches or num_microbatches <= 1:
    (_, metrics), grads = grad_fn(params, batch, dropout_rng, **loss_kwargs)
    return grads, metrics
  batch_size = next(iter(batch.values())).shape[0]
  if batch_size % num_microbatches:
    raise ValueError(f"batch size {batch_size} is not divisible by num_microbatches "
                     f"{num_microbatches}")

  def body(carry, index):
    grads_acc, metrics_acc = carry
    mb = _microbatch(batch, num_microbatches, index)
    mb_kwargs = {k: (_microbatch({"w": v}, num_microbatches, index)["w"]
                     if isinstance(v, jax.Array) and v.ndim == 2 else v)
                 for k, v in loss_kwargs.items()}
    (_, metrics), grads = grad_fn(params, mb, jax.random.fold_in(dropout_rng, index), **mb_kwargs)
    return (jax.tree.map(jnp.add, grads_acc, grads),
            jax.tree.map(jnp.add, metrics_acc, metrics)), None

  mb0 = _microbatch(batch, num_microbatches, jnp.int32(0))
  metrics_shape = jax.eval_shape(lambda: model.loss_fn(params, mb0, dropout_rng)[1])
  zeros_metrics = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), metrics_shape)
  zeros_grads = jax.tree.map(jnp.zeros_like, params)
  (grads, metrics), _ = jax.lax.scan(body, (zeros_grads, zeros_metrics),
                                     jnp.arange(num_microbatches))
  return grads, metrics


def apply_grads(optimizer: optax.GradientTransformation, state: TrainState, grads: Any,
                learning_rate: jax.Array,
                extra_hyperparams: Mapping[str, jax.Array] | None = None) -> TrainState:
  """One optax update with `learning_rate` (and any other injected hyper-parameter values)."""
  values = {"learning_rate": learning_rate, **(extra_hyperparams or {})}
  opt_state = optimizers_lib.set_hyperparams(state.opt_state, values)
  updates, opt_state = optimizer.update(grads, opt_state, state.params)
  return state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                       opt_state=opt_state)


LOSS_SIDE_SCHEDULES = ("label_smoothing", "data_weights")


def scheduled_values(schedules: Mapping[str, Callable[[jax.Array], jax.Array]] | None,
                     step: jax.Array, batch: Batch
                     ) -> tuple[jax.Array, dict[str, jax.Array], dict[str, jax.Array]]:
  """Evaluates replayed hyper-parameter schedules at `step`.

  Returns:
    (learning-rate multiplier, optimizer hyper-parameter values, `model.loss_fn` kwargs).
    `learning_rate` is a multiplier on the model's schedule (as when it was guided);
    `label_smoothing` and `data_weights` (a per-id table) go to the loss; any other name is an
    optimizer hyper-parameter of the `inject_hyperparams` state.
  """
  schedules = dict(schedules or {})
  multiplier = schedules.pop("learning_rate", lambda _: jnp.float32(1.0))(step)
  loss_kwargs = {}
  if "label_smoothing" in schedules:
    loss_kwargs["label_smoothing"] = schedules.pop("label_smoothing")(step)
  if "data_weights" in schedules:
    table = schedules.pop("data_weights")(step)
    loss_kwargs["token_weights"] = data_weights_lib.data_weight_tokens(table, batch)
  return multiplier, {k: fn(step) for k, fn in schedules.items()}, loss_kwargs


def drop_if_skipped(metrics: Metrics, skipped: jax.Array) -> Metrics:
  """Zeroes a skipped step's metric sums so that one NaN does not poison the window's means."""
  return {k: jnp.where(skipped > 0, jnp.zeros_like(v), v) for k, v in metrics.items()}


def train_step(model: Any, optimizer: optax.GradientTransformation, state: TrainState,
               batch: Batch, rng: jax.Array, learning_rate_fn: Callable[[jax.Array], jax.Array],
               num_microbatches: int | None,
               hyperparam_schedules: Mapping[str, Callable[[jax.Array], jax.Array]] | None = None
               ) -> tuple[TrainState, Metrics]:
  """The plain model step: gradients, then the optimizer update at `learning_rate_fn(step)`
  (times a replayed multiplier, with replayed optimizer / loss values if schedules are given)."""
  dropout_rng = jax.random.fold_in(rng, state.step)
  multiplier, opt_values, loss_kwargs = scheduled_values(hyperparam_schedules, state.step, batch)
  grads, metrics = accumulate_grads_microbatched(model, state.params, batch, dropout_rng,
                                                 num_microbatches, loss_kwargs)
  learning_rate = learning_rate_fn(state.step) * multiplier
  new_state = apply_grads(optimizer, state, grads, learning_rate, opt_values)
  new_state, skipped = train_state_lib.keep_finite_update(state, new_state, metrics["loss"])
  metrics = drop_if_skipped(metrics, skipped)
  metrics = dict(metrics, learning_rate=learning_rate, nonfinite_skipped=skipped)
  metrics.update({f"hp/{k}": v for k, v in opt_values.items()})
  if "label_smoothing" in loss_kwargs:
    metrics["hp/label_smoothing"] = loss_kwargs["label_smoothing"]
  return new_state, metrics


def eval_step(model: Any, params: Any, batch: Batch) -> Metrics:
  """Deterministic loss/accuracy sums on one batch (no dropout)."""
  _, metrics = model.eval_fn(params, batch)
  return metrics


def finalize_metrics(sums: Mapping[str, float], num_steps: int) -> dict[str, float]:
  """Turns summed per-step metrics into T5X-style reported values.

  `loss`, `cross_ent_loss`, `z_loss` and `accuracy` become per-target-token means; the learning
  rate and any other non-sum key (hyper-parameter values) become per-step means.
  """
  tokens = max(float(sums.get("num_tokens", 0.0)), 1.0)
  out = {}
  for key, value in sums.items():
    if key in ("loss", "cross_ent_loss", "z_loss", "accuracy"):
      out[key] = float(value) / tokens
    elif key in ("num_tokens", "num_examples"):
      out[key] = float(value)
    else:
      out[key] = float(value) / max(num_steps, 1)
  return out


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
      logged.
    hyperparam_schedules: replayed fixed schedules {name: step -> value} (see
      `gbt_t5x.guided.export`): `learning_rate` multiplies `learning_rate_fn`, `label_smoothing`
      and `data_weights` go to the loss, other names are optimizer hyper-parameters.
  """

  def __init__(self, model: Any, train_state: TrainState, partitioner: PjitPartitioner,
               eval_names: Iterable[str], summary_dir: str | None, train_state_axes: TrainState,
               rng: jax.Array, learning_rate_fn: Callable[[jax.Array], jax.Array],
               num_microbatches: int | None = None, log_every: int = 50,
               total_steps: int | None = None, print_fn: Callable[[str], None] = print,
               hyperparam_schedules: Mapping[str, Callable[[jax.Array], jax.Array]] | None = None,
               max_nonfinite_steps: int = 100):
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
    self.max_nonfinite_steps = int(max_nonfinite_steps)
    self._num_microbatches = num_microbatches
    self.log_every = max(1, int(log_every))
    self.total_steps = total_steps
    self._print = print_fn
    self._is_chief = jax.process_index() == 0 and summary_dir is not None
    self._writers: dict[str, summaries.SummaryWriter] = {}

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

  # ---------------------------------------------------------------- compiled functions
  @functools.cached_property
  def _partitioned_train_step(self) -> Callable[[TrainState, Batch], tuple[TrainState, Metrics]]:
    """The jitted plain train step `(state, batch) -> (state, metric sums)`; overridable."""
    def step(state, batch):
      return train_step(self.model, self.optimizer, state, batch, self._rng,
                        self._learning_rate_fn, self._num_microbatches,
                        self.hyperparam_schedules)
    return self._partitioner.partition(
        step, in_shardings=(self.train_state_axes, self._partitioner.data_sharding),
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
    """Runs one train step on the next batch; subclasses may consume more iterators."""
    batch = next(batch_iter)
    self.train_state, metrics = self._partitioned_train_step(self.train_state, batch)
    return metrics

  def step_summaries(self, host_metrics: Mapping[str, float]) -> dict[str, float]:
    """Extra per-step scalars for logs (GuidedTrainer adds hyper-parameter values)."""
    return {}

  def train(self, batch_iter: Iterator[Batch], num_steps: int,
            start_step: int | None = None,
            stop_fn: Callable[[], bool] | None = None) -> dict[str, float]:
    """Runs `num_steps` train steps; returns the window's finalized mean metrics.

    Per-step metric sums stay on device and are fetched every `log_every` steps, when a progress
    line, TensorBoard scalars and a metrics-log line are written. `stop_fn` is polled after every
    step; when it returns True the loop ends early (e.g. on preemption) after flushing metrics.
    """
    start = int(start_step if start_step is not None else jax.device_get(self.train_state.step))
    if not hasattr(self, "_progress"):
      self._progress = summaries.ProgressLine(self.total_steps or start + num_steps, start,
                                              self.log_every, print_fn=self._print)
    pending: list[tuple[int, Metrics]] = []
    window_sums: dict[str, float] = {}
    steps_run = 0
    for i in range(num_steps):
      step = start + i
      pending.append((step + 1, self._run_one_step(batch_iter)))
      steps_run += 1
      stop = stop_fn is not None and stop_fn()
      if (step + 1) % self.log_every == 0 or i == num_steps - 1 or stop:
        self._flush(pending, window_sums)
        pending = []
      if stop:
        break
    return finalize_metrics(window_sums, steps_run)

  def record_steps(self, steps: list[int], host_metrics: list[dict[str, Any]]) -> None:
    """Hook receiving every step's fetched metrics (GuidedTrainer writes its trajectory)."""

  def _flush(self, pending: list[tuple[int, Metrics]], window_sums: dict[str, float]) -> None:
    host = jax.device_get([m for _, m in pending])
    if self._is_chief:
      self.record_steps([s for s, _ in pending], host)
    chunk_sums: dict[str, float] = {}
    for metrics in host:
      for key, value in metrics.items():
        value = float(np.asarray(value))
        chunk_sums[key] = chunk_sums.get(key, 0.0) + value
        window_sums[key] = window_sums.get(key, 0.0) + value
    last_step = pending[-1][0]
    report = finalize_metrics(chunk_sums, len(pending))
    report.update(self.step_summaries(report))
    skipped = int(round(chunk_sums.get("nonfinite_skipped", 0.0)))
    if skipped:
      total = int(jax.device_get(self.train_state.num_nonfinite))
      self._print(f"warning: {skipped} step(s) up to step {last_step} had a non-finite loss or "
                  f"gradient and were skipped ({total} in this run so far)")
      if total > self.max_nonfinite_steps:
        raise errors.TrainingStopped(
            f"stopping at step {last_step}: {total} steps had a non-finite loss or gradient "
            f"(limit max_nonfinite_steps={self.max_nonfinite_steps}); the last checkpoint is "
            "intact")
    self._writer("train").scalars(last_step, report)
    self._metrics_log.log(last_step, {f"train/{k}": v for k, v in report.items()})
    self._progress.update(last_step, self.progress_view(report),
                          int(chunk_sums.get("num_tokens", 0)))

  def progress_view(self, report: Mapping[str, float]) -> dict[str, float]:
    """The subset of a report shown on the progress line (everything goes to TensorBoard)."""
    hidden = ("num_tokens", "num_examples", "train_loss", "cross_ent_loss", "z_loss")
    return {k: v for k, v in report.items()
            if k not in hidden and not (k == "nonfinite_skipped" and v == 0)}

  def eval(self, batch_iters: Mapping[str, Iterable[Batch]]) -> dict[str, dict[str, float]]:
    """Evaluates the current params on each named dataset (one full pass each).

    Returns:
      {name: {'loss': per-token CE (+ z-loss), 'accuracy': per-token, ...}}.
    """
    results = {}
    step = int(jax.device_get(self.train_state.step))
    for name, batches in batch_iters.items():
      sums: dict[str, float] = {}
      for batch in batches:
        metrics = jax.device_get(self._partitioned_eval_step(self.train_state.params, batch))
        for key, value in metrics.items():
          sums[key] = sums.get(key, 0.0) + float(np.asarray(value))
      report = finalize_metrics(sums, 1)
      results[name] = report
      self._writer(name).scalars(step, report)
      self._metrics_log.log(step, {f"{name}/{k}": v for k, v in report.items()})
    return results

  def close(self) -> None:
    for writer in self._writers.values():
      writer.close()
