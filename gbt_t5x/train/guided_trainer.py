"""`GuidedTrainer`: the T5X `Trainer` subclass that interleaves guided (hyper) steps.

Every `hyper_step_every` model steps, the train step is replaced by the fused step of
`gbt_t5x.guided.hypergrad.guided_step`: the ordinary model update *is* the one-step lookahead, and
the guide loss at the updated params (a batch from the held-out guide task) is differentiated
through that update into the raw hyper-parameters, which the meta optimizer then moves. The other
steps are plain steps at the current effective values. The guided state lives in
`TrainState.guided` (checkpointed with everything else, replicated on the mesh); effective values
go to TensorBoard, the progress line, `MODEL_DIR/guided_trajectory.jsonl` (every step) and
`MODEL_DIR/hparams.png`. Gin selects it with `train.trainer_cls = @guided_trainer.GuidedTrainer`.
"""
from __future__ import annotations

import dataclasses
import functools
import json
from typing import Any, Callable, Iterator, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from gbt_t5x import fileio
from gbt_t5x.guided import hypergrad
from gbt_t5x.guided import meta as meta_lib
from gbt_t5x.guided import specs as specs_lib
from gbt_t5x.train import data as data_lib
from gbt_t5x.train.data_weights import DATA_IDS, data_weight_tokens
from gbt_t5x.train import optimizers as optimizers_lib
from gbt_t5x.train import summaries
from gbt_t5x.train.trainer import Batch, Metrics, Trainer



def flatten_trajectory_row(row: Mapping[str, Any]) -> dict[str, float]:
  """A trajectory row with vector values spread into `NAME_i` keys (for plotting)."""
  flat = {k: v for k, v in row.items() if k != "values"}
  for name, value in row.get("values", {}).items():
    if isinstance(value, list):
      flat.update({f"{name}_{i}": v for i, v in enumerate(value)})
    else:
      flat[name] = value
  return flat


class GuidedTrainer(Trainer):
  """A `Trainer` whose hyper-parameters follow the hypergradient of a held-out guide loss.

  Extra args (gin-bound; see gin/guided/*.gin):
    guided_hparams: the `GuidedHParam` specs to learn.
    guide_dataset_cfg: the guide task (`guide/` scope), e.g. `demo_nmt_guide`.
    hyper_step_every: a guided step every k model steps (1: every step).
    meta_learning_rate: Adam learning rate of the meta optimizer (on raw values).
    meta_clip_norm: optional global-norm clip of hypergradients.
    fixed_guide_batch: reuse one guide batch for the whole run (the reference implementation's
      behaviour, for parity); default rotates through the repeated guide set.
    recompute_tangent: with loss-side hyper-parameters (label smoothing, data weights), trade one
      extra train forward for lower peak memory (see `hypergrad.guided_step`).
  """

  def __init__(self, model: Any, train_state: Any, partitioner: Any, eval_names: Sequence[str],
               summary_dir: str | None, train_state_axes: Any, rng: jax.Array,
               learning_rate_fn: Callable[[jax.Array], jax.Array],
               num_microbatches: int | None = None, *,
               guided_hparams: Sequence[specs_lib.GuidedHParam] = (),
               guide_dataset_cfg: data_lib.DatasetConfig | None = None,
               hyper_step_every: int = 1, meta_learning_rate: float = 3e-3,
               meta_clip_norm: float | None = None, fixed_guide_batch: bool = False,
               recompute_tangent: bool = False, **kwargs: Any):
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
    if num_microbatches and num_microbatches > 1:
      raise ValueError("GuidedTrainer does not support num_microbatches > 1 yet; use a smaller "
                       "batch or plain Trainer")
    self.specs = tuple(guided_hparams)
    optimizer_names = optimizers_lib.hyperparam_names(self.optimizer, train_state.params)
    specs_lib.validate_specs(self.specs, optimizer_names)
    self.hyper_step_every = int(hyper_step_every)
    self.guide_dataset_cfg = guide_dataset_cfg
    self.fixed_guide_batch = fixed_guide_batch
    self.recompute_tangent = recompute_tangent
    self.meta_optimizer = meta_lib.make_meta_optimizer(meta_learning_rate, self.specs,
                                                       clip_norm=meta_clip_norm)
    self._lr_group_ids = None
    for spec in self.specs:
      if spec.name == "learning_rate" and spec.groups:
        self._lr_group_ids = hypergrad.param_group_ids(train_state.params, spec.groups)
    self._data_weights_spec = next((s for s in self.specs if s.name == "data_weights"), None)
    replicated = partitioner.replicated
    if train_state.guided is None:
      guided = meta_lib.init_guided_state(self.specs, self.meta_optimizer)
      guided = jax.device_put(guided, jax.tree.map(lambda _: replicated, guided))
      self.train_state = train_state.replace(guided=guided)
    self.train_state_axes = train_state_axes.replace(
        guided=jax.tree.map(lambda _: replicated, self.train_state.guided))
    self._guide_position = 0
    self._guide_iter: Iterator[Batch] | None = None
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
                       f"{table_size} (feature {self._data_weights_spec.index_feature})")

  def data_positions(self) -> dict[str, int]:
    """Guide-pipeline position, saved in checkpoint metadata for exact resume."""
    return {"guide": self._guide_position}

  def restore_data_positions(self, positions: Mapping[str, int]) -> None:
    self._guide_position = int(positions.get("guide", 0))

  def _next_guide_batch(self) -> Batch:
    if self.fixed_guide_batch:
      if self._fixed_batch is None:
        self._fixed_batch = next(data_lib.BatchIterator(self.guide_dataset_cfg,
                                                        self._partitioner.data_sharding))
      return self._fixed_batch
    if self._guide_iter is None:
      self._guide_iter = data_lib.BatchIterator(self.guide_dataset_cfg,
                                                self._partitioner.data_sharding,
                                                start_position=self._guide_position)
    batch = next(self._guide_iter)
    self._guide_position = self._guide_iter.position
    return batch

  # ---------------------------------------------------------------- model callables
  def _forward(self, params: Any, batch: Batch, rng: jax.Array) -> jax.Array:
    return self.model.logits_fn(params, batch, dropout_rng=rng)

  def _loss_from_outputs(self, logits: jax.Array, batch: Batch,
                         loss_hparams: Mapping[str, jax.Array]) -> tuple[jax.Array, Metrics]:
    token_weights = None
    if "data_weights" in loss_hparams:
      token_weights = data_weight_tokens(loss_hparams["data_weights"], batch)
    return self.model.loss_from_logits(logits, batch,
                                       label_smoothing=loss_hparams.get("label_smoothing"),
                                       token_weights=token_weights)

  def _guide_loss(self, params: Any, guide_batch: Batch) -> jax.Array:
    return self.model.guide_loss_fn(params, guide_batch)

  def _step_kwargs(self) -> dict[str, Any]:
    return dict(specs=self.specs, optimizer=self.optimizer, forward_fn=self._forward,
                loss_from_outputs=self._loss_from_outputs, lr_group_ids=self._lr_group_ids)

  # ---------------------------------------------------------------- compiled steps
  @functools.cached_property
  def _partitioned_train_step(self) -> Callable[[Any, Batch], tuple[Any, Metrics]]:
    """Plain model step at the current effective hyper-parameter values."""
    def step(state, batch):
      rng = jax.random.fold_in(self._rng, state.step)
      base_lr = self._learning_rate_fn(state.step)
      params, opt_state, metrics = hypergrad.plain_step(
          state.params, state.opt_state, state.guided, batch, rng, base_lr, **self._step_kwargs())
      new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
      return new_state, self._with_values(dict(metrics), state.guided, base_lr)
    return self._partitioner.partition(
        step, in_shardings=(self.train_state_axes, self._partitioner.data_sharding),
        out_shardings=(self.train_state_axes, self._partitioner.replicated),
        donate_argnums=(0,))

  @functools.cached_property
  def _partitioned_guided_step(self) -> Callable[[Any, Batch, Batch], tuple[Any, Metrics]]:
    """Fused model step + hypergradient + meta update."""
    def step(state, batch, guide_batch):
      rng = jax.random.fold_in(self._rng, state.step)
      base_lr = self._learning_rate_fn(state.step)
      params, opt_state, guided, metrics = hypergrad.guided_step(
          state.params, state.opt_state, state.guided, batch, guide_batch, rng, base_lr,
          meta_optimizer=self.meta_optimizer, guide_loss_fn=self._guide_loss,
          recompute_tangent=self.recompute_tangent, **self._step_kwargs())
      metrics = dict(metrics)
      guide_tokens = jnp.sum(guide_batch["decoder_loss_weights"].astype(jnp.float32))
      if "guide_loss" in metrics:
        metrics["guide_loss_per_token"] = metrics.pop("guide_loss") / jnp.maximum(guide_tokens, 1)
      new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                                guided=guided)
      return new_state, self._with_values(metrics, state.guided, base_lr)
    data = self._partitioner.data_sharding
    return self._partitioner.partition(
        step, in_shardings=(self.train_state_axes, data, data),
        out_shardings=(self.train_state_axes, self._partitioner.replicated),
        donate_argnums=(0,))

  def _with_values(self, metrics: Metrics, guided: Any, base_lr: jax.Array) -> Metrics:
    """Adds the effective values used by this step (`hp/NAME` or `hp/NAME_i`) and the LR."""
    values = specs_lib.effective(self.specs, guided.raw)
    for name, value in values.items():
      flat = jnp.ravel(value)
      if flat.size == 1:
        metrics[f"hp/{name}"] = flat[0]
      else:
        for i in range(flat.size):
          metrics[f"hp/{name}_{i}"] = flat[i]
    metrics["learning_rate"] = base_lr * (values["learning_rate"] if "learning_rate" in values
                                          and jnp.ndim(values["learning_rate"]) == 0 else 1.0)
    # Keep only scalar metrics (the trainer sums them over steps).
    return {k: v for k, v in metrics.items() if jnp.ndim(v) == 0}

  def progress_view(self, report: Mapping[str, float]) -> dict[str, float]:
    """Losses, effective values (the LR multiplier as `lr_mult`) and the skipped fraction."""
    view = {}
    for key, value in super().progress_view(report).items():
      if key.startswith("hypergrad_norm/") or (key == "skipped" and value == 0):
        continue
      view["lr_mult" if key == "hp/learning_rate" else key] = value
    return view

  # ---------------------------------------------------------------- loop hooks
  def _run_one_step(self, batch_iter: Iterator[Batch]) -> Metrics:
    if self._host_step is None:
      self._host_step = int(jax.device_get(self.train_state.step))
    batch = next(batch_iter)
    if self._host_step % self.hyper_step_every == 0:
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
    "values": {spec name: effective value used (float, or list for vectors)},
    "guide_loss_per_token"/"skipped" on guided steps}.
    """
    lines = []
    for step, metrics in zip(steps, host_metrics):
      values = {}
      for spec in self.specs:
        if f"hp/{spec.name}" in metrics:
          values[spec.name] = float(metrics[f"hp/{spec.name}"])
        else:
          size = int(np.prod(spec.shape))
          values[spec.name] = [float(metrics[f"hp/{spec.name}_{i}"]) for i in range(size)]
      row = {"step": step, "applied_learning_rate": float(metrics["learning_rate"]),
             "values": values}
      for key in ("guide_loss_per_token", "skipped"):
        if key in metrics:
          row[key] = float(metrics[key])
      lines.append(json.dumps(row))
    fileio.append_lines(fileio.join(self.summary_dir, "guided_trajectory.jsonl"), lines)

  def write_plots(self, model_dir: str) -> None:
    """`hparams.png`: every effective hyper-parameter value against the step."""
    path = fileio.join(model_dir, "guided_trajectory.jsonl")
    rows = [flatten_trajectory_row(r)
            for r in (summaries.read_metrics_log(path) if fileio.exists(path) else [])]
    keys = sorted({k for r in rows for k in r if k not in ("step", "skipped")})
    if rows and keys:
      summaries.plot_curves(rows, keys, fileio.join(model_dir, "hparams.png"),
                            title="guided hyper-parameters")
