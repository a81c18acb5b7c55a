"""`GuidedTrainer`: the T5X `Trainer` subclass that interleaves guided (hyper) steps.

Every step is `step.model_step` at the guided state's effective values; every
`hyper_step_every` model steps it is a guided one: the ordinary model update *is* the one-step
lookahead, and the guide loss at the updated params (a batch from the held-out guide task, drawn
from the `guide_iter` that the training loop hands to `train`) is differentiated through that
update into the raw hyper-parameters, which the meta optimizer then moves
(`gbt_t5x.guided.hypergrad.guided_update`). The guided state lives in
`TrainState.guided` (checkpointed with everything else, replicated on the mesh); effective values
go to TensorBoard, the progress line, `MODEL_DIR/guided_trajectory.jsonl` (every step) and
`MODEL_DIR/hparams.png`, vector entries under their names (`GuidedHParam.entry_names`, e.g. the
demo's noise buckets: `hp/data_weights/untranslated_copy`). Gin selects it with
`train.trainer_cls = @guided_trainer.GuidedTrainer`.
"""
from __future__ import annotations

import functools
import json
from typing import Any, Callable, Iterator, Mapping, Sequence

import jax
import numpy as np

from gbt_t5x import fileio
from gbt_t5x.guided import forward as forward_lib
from gbt_t5x.guided import hypergrad
from gbt_t5x.guided import meta as meta_lib
from gbt_t5x.guided import specs as specs_lib
from gbt_t5x.train import data as data_lib
from gbt_t5x.train.data_weights import DATA_IDS
from gbt_t5x.train import metric_kinds
from gbt_t5x.train import optimizers as optimizers_lib
from gbt_t5x.train import state_init
from gbt_t5x.train import step as step_lib
from gbt_t5x.train import summaries
from gbt_t5x.train.step import Batch, Metrics
from gbt_t5x.train.trainer import Trainer


TRAJECTORY_FILE = "guided_trajectory.jsonl"


# How guided mixture weights act (`GuidedTrainer.mixture_sampling`).
LOSS_WEIGHTS, SAMPLING_RATES = "loss_weights", "sampling_rates"
MIXTURE_SAMPLING_MODES = (LOSS_WEIGHTS, SAMPLING_RATES)

def flatten_trajectory_row(row: Mapping[str, Any]) -> dict[str, float]:
  """A trajectory row with vector values spread into `NAME/ENTRY` keys (for plotting).

  ENTRY is the tag-safe entry name from the row's `entry_names` (`data_weights/untranslated_copy`)
  or, for rows without names (files written before names existed), the index (`data_weights/3`).
  Keys keep the row's order: values in spec order, entries in id order.
  """
  flat = {k: v for k, v in row.items() if k not in ("values", "entry_names", "hypergrad")}
  names = row.get("entry_names", {})
  for name, value in row.get("values", {}).items():
    if isinstance(value, list):
      tags = specs_lib.entry_tags(tuple(names.get(name, ())), len(value))
      flat.update({f"{name}/{tag}": v for tag, v in zip(tags, value)})
    else:
      flat[name] = value
  return flat


class GuidedTrainer(Trainer):
  """A `Trainer` whose hyper-parameters follow the hypergradient of a held-out guide loss.

  Extra args (gin-bound; see gin/guided/*.gin):
    guided_hparams: the `GuidedHParam` specs to learn.
    guide_dataset_cfg: the guide task (`guide/` scope), e.g. `demo_nmt_guide`; the training
      loop reads it and passes the batches to `train(..., guide_iter=...)`.
    hyper_step_every: a guided step every k model steps (1: every step).
    meta_learning_rate: Adam learning rate of the meta optimizer (on raw values).
    meta_clip_norm: optional global-norm clip of hypergradients.
    meta_eps: the meta optimizer's Adam epsilon (hypergradient units; see
      `meta.make_meta_optimizer`).
    meta_average_every: average the hypergradients of this many guided steps before one meta
      step (see `meta.make_meta_optimizer`; 1: a meta step per guided step).
    guide_from_step: no guided steps before this model step (e.g. the end of the LR warmup, where
      the one-step lookahead sees a schedule about to change); plain steps until then.
    mixture_sampling: how guided mixture weights (`data_weights` over mixture-task ids, see
      gin/guided/mixture_weights.gin) act: 'loss_weights' (each task's tokens weighted in the
      train loss, the batches drawn at the mixture's fixed rates) or 'sampling_rates' (tasks
      sampled ∝ rate × weight, the weights read from the guided state every `resample_every`
      steps; the loss weights are then 1 and the hypergradient is taken through them, i.e.
      through a multiplicative change of each task's share of the batch).
    resample_every: model steps between two refreshes of the sampling rates.
    fixed_guide_batch: reuse one guide batch for the whole run (the reference implementation's
      behaviour, for parity); default rotates through the repeated guide set.
    recompute_tangent: with loss-side hyper-parameters (label smoothing, data weights), trade one
      extra train forward for lower peak memory (see `hypergrad.guided_step`).
    horizon: 'greedy' (the one-step lookahead) or 'forward' (long-horizon: tangents of the whole
      trajectory, one params-and-optimizer-state-sized tangent per guided scalar, carried in
      the train state and updated at every model step; see `gbt_t5x.guided.forward`).
    mu: damping of the carried tangent with the 'forward' horizon, in [0, 1] (0 = greedy).
    optimizer_derivative: how the greedy guided step differentiates the optimizer update:
      'auto' (default: the closed form for AdamW / Adam from `train.optimizers`, the same
      hypergradient to float32 rounding with less memory and time, see
      `gbt_t5x.guided.optimizer_derivatives`; the VJP for any other optimizer), 'vjp' (always
      the VJP of the optax update) or 'closed_form' (always the closed form; an error for an
      optimizer without one).
  """

  def __init__(self, model: Any, train_state: Any, partitioner: Any, eval_names: Sequence[str],
               summary_dir: str | None, train_state_axes: Any, rng: jax.Array,
               learning_rate_fn: Callable[[jax.Array], jax.Array],
               num_microbatches: int | None = None, *,
               guided_hparams: Sequence[specs_lib.GuidedHParam] = (),
               guide_dataset_cfg: data_lib.DatasetConfig | None = None,
               hyper_step_every: int = 1, meta_learning_rate: float = 3e-3,
               meta_clip_norm: float | None = None, meta_eps: float = 1e-8,
               meta_average_every: int = 1, guide_from_step: int = 0,
               mixture_sampling: str = LOSS_WEIGHTS, resample_every: int = 100,
               fixed_guide_batch: bool = False,
               recompute_tangent: bool = False, horizon: str = "greedy", mu: float = 1.0,
               optimizer_derivative: str = hypergrad.AUTO, **kwargs: Any):
    super().__init__(model, train_state, partitioner, eval_names, summary_dir, train_state_axes,
                     rng, learning_rate_fn, num_microbatches, **kwargs)
    if not guided_hparams:
      raise ValueError("GuidedTrainer needs at least one guided hyper-parameter "
                       "(bind GuidedTrainer.guided_hparams, e.g. include gin/guided/lr.gin)")
    if guide_dataset_cfg is None:
      raise ValueError("GuidedTrainer needs a guide dataset: bind GuidedTrainer.guide_dataset_cfg "
                       "= @guide/data.DatasetConfig() and GUIDE_MIXTURE_OR_TASK_NAME")
    if hyper_step_every < 1:
      raise ValueError(f"hyper_step_every must be >= 1, got {hyper_step_every}")
    forward_lib.check_horizon(horizon, mu, num_microbatches)
    self.horizon, self.mu = horizon, float(mu)
    self.specs = tuple(guided_hparams)
    optimizer_names = optimizers_lib.hyperparam_names(self.optimizer, train_state.params)
    specs_lib.validate_specs(self.specs, optimizer_names)
    self.entry_names = {s.name: s.entry_names for s in self.specs if s.entry_names}
    self.hyper_step_every = int(hyper_step_every)
    if guide_from_step < 0:
      raise ValueError(f"guide_from_step must be >= 0, got {guide_from_step}")
    self.guide_from_step = int(guide_from_step)
    if mixture_sampling not in MIXTURE_SAMPLING_MODES:
      raise ValueError(f"mixture_sampling must be one of {MIXTURE_SAMPLING_MODES}, got "
                       f"{mixture_sampling!r}")
    if mixture_sampling == SAMPLING_RATES and not any(s.name == "data_weights"
                                                      for s in guided_hparams):
      raise ValueError("mixture_sampling='sampling_rates' needs guided mixture weights "
                       "(include gin/guided/mixture_weights.gin)")
    if resample_every < 1:
      raise ValueError(f"resample_every must be >= 1, got {resample_every}")
    self.mixture_sampling, self.resample_every = mixture_sampling, int(resample_every)
    self.guide_dataset_cfg = guide_dataset_cfg
    self.fixed_guide_batch = fixed_guide_batch
    self.recompute_tangent = recompute_tangent
    self.optimizer_derivative = optimizer_derivative
    hypergrad.closed_form_for(self.optimizer, optimizer_derivative)  # bad mode: one-line error
    self.meta_optimizer = meta_lib.make_meta_optimizer(meta_learning_rate, self.specs,
                                                       clip_norm=meta_clip_norm,
                                                       eps=meta_eps,
                                                       average_every=meta_average_every)
    for spec in self.specs:
      if spec.name == "learning_rate" and spec.groups:
        self._lr_group_ids = hypergrad.param_group_ids(train_state.params, spec.groups)
    self._data_weights_spec = next((s for s in self.specs if s.name == "data_weights"), None)
    self.train_state, self.train_state_axes = state_init.add_guided_state(
        self.train_state, self.train_state_axes,
        lambda: meta_lib.init_guided_state(self.specs, self.meta_optimizer), partitioner)
    if self.horizon == "forward":
      self.train_state, self.train_state_axes = state_init.add_tangents(
          self.train_state, self.train_state_axes, self.specs, partitioner)
    self._fixed_batch: Batch | None = None
    self._host_step: int | None = None
    self._check_guide_data()

  # ---------------------------------------------------------------- data
  def _check_guide_data(self) -> None:
    """Fails before any step when the guide task yields no examples."""
    data_lib.first_batch_or_error(self.guide_dataset_cfg)

  def check_train_batch(self, local_batch: Mapping[str, np.ndarray]) -> None:
    """Called on each host-side train batch: data ids must exist and fit the weight table."""
    if self._data_weights_spec is None:
      return
    if DATA_IDS not in local_batch:
      raise ValueError("guided data_weights need per-token ids: set data_id_feature on the "
                       "train/ DatasetConfig (e.g. 'noise_bucket')")
    table_size = int(np.prod(self._data_weights_spec.shape))
    max_id = int(np.max(local_batch[DATA_IDS]))
    if max_id >= table_size:
      raise ValueError(f"train data id {max_id} is beyond the data_weights table of size "
                       f"{table_size} (feature {DATA_IDS})")

  def _next_guide_batch(self) -> Batch:
    """The next batch of the loop's guide iterator (its first, again, with fixed_guide_batch)."""
    if self.fixed_guide_batch and self._fixed_batch is not None:
      return self._fixed_batch
    if self._guide_iter is None:
      raise ValueError("GuidedTrainer.train needs guide batches: pass guide_iter= (the training "
                       "loop reads guide_dataset_cfg)")
    batch = next(self._guide_iter)
    if self.fixed_guide_batch:
      self._fixed_batch = batch
    return batch

  # ---------------------------------------------------------------- values and steps
  def _values_fn(self, state: Any) -> Mapping[str, jax.Array]:
    """The guided state's effective values (replayed schedules do not apply here)."""
    return step_lib.guided_values(self.specs)(state)

  def step_kwargs(self) -> dict[str, Any]:
    return dict(super().step_kwargs(), specs=self.specs)

  def mixture_weight_values(self) -> list[float]:
    """The effective guided data (mixture) weights now, one per id (host floats)."""
    values = specs_lib.effective(self.specs, self.train_state.guided.raw)
    return [float(w) for w in np.asarray(jax.device_get(values["data_weights"])).reshape(-1)]

  def _loss_inputs(self, loss_values: Mapping[str, jax.Array], batch: Batch
                   ) -> dict[str, jax.Array]:
    """With online sampling rates the weights act through the sampling: the loss weights are
    w / stop_gradient(w) (exactly 1), so the hypergradient still flows through them."""
    if self.mixture_sampling == SAMPLING_RATES and "data_weights" in loss_values:
      weights = loss_values["data_weights"]
      loss_values = {**loss_values, "data_weights": weights / jax.lax.stop_gradient(weights)}
    return super()._loss_inputs(loss_values, batch)

  @functools.cached_property
  def _guidance(self) -> step_lib.Guidance:
    return step_lib.Guidance(self.specs, self.meta_optimizer, self.recompute_tangent,
                             self.horizon, self.mu, self.optimizer_derivative)

  def _plain_step_guidance(self) -> step_lib.Guidance | None:
    """The forward horizon carries its tangents through plain steps too."""
    return self._guidance if self.horizon == "forward" else None

  @functools.cached_property
  def _partitioned_guided_step(self) -> Callable[[Any, Batch, Batch], tuple[Any, Metrics]]:
    """The model step with the hypergradient and meta update on top."""
    def guided_step(state, batch, guide_batch):
      return step_lib.model_step(state, batch, fns=self._step_fns, values_fn=self._values_fn,
                                 guide_batch=guide_batch, guidance=self._guidance)
    data = self._partitioner.data_sharding
    return self._partitioner.partition(
        guided_step, in_shardings=(self.train_state_axes, data, data),
        out_shardings=(self.train_state_axes, self._partitioner.replicated),
        donate_argnums=(0,))

  # ---------------------------------------------------------------- loop hooks
  def _run_one_step(self, batch_iter: Iterator[Batch]) -> Metrics:
    if self._host_step is None:
      self._host_step = int(jax.device_get(self.train_state.step))
    if self.mixture_sampling == SAMPLING_RATES and self._host_step % self.resample_every == 0:
      batch_iter.start_segment(self.mixture_weight_values())
    batch = next(batch_iter)
    if (self._host_step % self.hyper_step_every == 0
        and self._host_step >= self.guide_from_step):
      guide_batch = self._next_guide_batch()
      self.train_state, metrics = self._partitioned_guided_step(self.train_state, batch,
                                                                guide_batch)
    else:
      self.train_state, metrics = self._partitioned_train_step(self.train_state, batch)
    self._host_step += 1
    return metrics

  def record_steps(self, steps: list[int], host_metrics: list[dict[str, Any]]) -> None:
    """Appends one row per step to guided_trajectory.jsonl.

    Row: {"step": model step after the update, "applied_learning_rate": the LR applied,
    "values": {spec name: effective value used (float, or list in entry order for vectors)},
    "entry_names": {spec name: its entries' names} for vectors with names (e.g.
    {"data_weights": ["clean", "misaligned", "truncated", "untranslated copy"]}),
    "guide_loss_per_token"/"skipped" and "hypergrad" ({scalar spec name: signed hypergradient,
    raw units}) on guided steps}.
    """
    lines = []
    for step, metrics in zip(steps, host_metrics):
      values = {}
      for spec in self.specs:
        if spec.shape == ():
          values[spec.name] = float(metrics[metric_kinds.hp_key(spec.name)])
        else:
          tags = specs_lib.entry_tags(spec.entry_names, int(np.prod(spec.shape)))
          values[spec.name] = [float(metrics[metric_kinds.hp_key(spec.name, tag)]) for tag in tags]
      row = {"step": step, "applied_learning_rate": float(metrics["learning_rate"]),
             "values": values}
      if self.entry_names:
        row["entry_names"] = {name: list(names) for name, names in self.entry_names.items()}
      for key in ("guide_loss_per_token", "skipped"):
        if key in metrics:
          row[key] = float(metrics[key])
      hypergrads = {k[len("hypergrad/"):]: float(v) for k, v in metrics.items()
                    if k.startswith("hypergrad/")}
      if hypergrads:
        row["hypergrad"] = hypergrads
      lines.append(json.dumps(row))
    fileio.append_lines(fileio.join(self.summary_dir, TRAJECTORY_FILE), lines)

  def write_plots(self, model_dir: str) -> None:
    """`hparams.png`: every effective hyper-parameter value against the step (vector entries by
    name, e.g. `data_weights/untranslated_copy`)."""
    path = fileio.join(model_dir, TRAJECTORY_FILE)
    rows = [flatten_trajectory_row(r)
            for r in (summaries.read_metrics_log(path) if fileio.exists(path) else [])]
    keys = list(dict.fromkeys(k for r in rows for k in r if k not in ("step", "skipped")))
    if rows and keys:
      summaries.plot_curves(rows, keys, fileio.join(model_dir, "hparams.png"),
                            title="guided hyper-parameters")
