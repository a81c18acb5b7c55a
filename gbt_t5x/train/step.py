"""The one model step: every parameter update of every run goes through `model_step`.

A plain run, a run replaying a learned schedule and a guided run differ only in where the
hyper-parameter values of a step come from (a `ValuesFn`: nothing, the replayed schedules at the
step, or the guided state's effective values) and, on a guided step, in the hypergradient and
meta update that `hypergrad.guided_update` (greedy) or `forward.guided_update` (long horizon)
adds on top of the same model step. Everything else happens here once:

- the values are split by name into optimizer side and loss side (`hypergrad.split_values`);
- optimizer-side values are injected into the optax `inject_hyperparams` state with aliases
  resolved (`hypergrad.optimizer_update`; the learning rate is the schedule's value times the
  multiplier);
- loss-side values become the loss head's inputs (`StepFns.loss_inputs_fn`: label smoothing and
  per-token data weights of the whole batch);
- the train gradient is `hypergrad.train_loss_gradients` on every path (accumulated over
  microbatches), the update `hypergrad.optimizer_update`;
- with the long ('forward') hypergradient horizon, every step also carries the tangents
  d(params, optimizer state)/d(raw values) in `TrainState.tangents` (`guided.forward`), and a
  guided step contracts them with the guide gradient instead of differentiating one step;
- the non-finite guard (`hypergrad.guard_update` on every path, its test returned as
  `ModelUpdate.ok`): a step whose train loss or new params are not finite keeps the old
  params, optimizer and guided state, advances the step counter and counts it in
  `TrainState.num_nonfinite` (the trainer stops past `max_nonfinite_steps`);
- the step's metrics, treated as `metric_kinds` says (zeroed on a dropped step or not).

Must not import gin or seqio.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import optax

from gbt_t5x.guided import forward as forward_lib
from gbt_t5x.guided import hypergrad
from gbt_t5x.guided import specs as specs_lib
from gbt_t5x.train import metric_kinds
from gbt_t5x.train import train_state as train_state_lib
from gbt_t5x.train.train_state import TrainState

Batch = Mapping[str, jax.Array]
Metrics = dict[str, jax.Array]
# state -> effective hyper-parameter values by name for the step `state.step`.
ValuesFn = Callable[[TrainState], Mapping[str, jax.Array]]


@dataclasses.dataclass(frozen=True)
class StepFns:
  """The model-side callables and settings of a model step.

  Attributes:
    optimizer: the model optimizer (`optax.inject_hyperparams` transformation).
    forward_fn: (params, batch, dropout rng) -> logits [B, T, V].
    loss_from_outputs: (logits, batch, loss inputs) -> (summed loss, aux metric sums).
    loss_inputs_fn: (loss-side values, whole batch) -> loss inputs
      ({'label_smoothing': scalar, 'token_weights': [B, T]}).
    guide_loss_fn: (params, guide batch) -> summed guide cross-entropy (nats).
    learning_rate_fn: step -> the schedule's learning rate.
    rng: base PRNG key; step t uses `fold_in(rng, t)` for dropout.
    num_microbatches: gradient accumulation (None/1: one pass).
    lr_group_ids: parameter-group ids of a per-group learning-rate multiplier, or None.
    entry_names: {value name: names of its entries} for vector values (data-weight ids,
      learning-rate groups): the `hp/NAME/ENTRY` metric keys (see `value_metrics`).
  """
  optimizer: optax.GradientTransformation
  forward_fn: Callable[..., Any]
  loss_from_outputs: Callable[..., Any]
  loss_inputs_fn: Callable[..., Any]
  guide_loss_fn: Callable[..., Any]
  learning_rate_fn: Callable[[jax.Array], jax.Array]
  rng: jax.Array
  num_microbatches: int | None = None
  lr_group_ids: Any = None
  entry_names: Mapping[str, Sequence[str]] | None = None

  def hypergrad_kwargs(self) -> dict[str, Any]:
    """Keyword arguments shared by `hypergrad.model_update`, `hypergrad.guided_update` and
    `forward.forward_update` / `forward.guided_update`."""
    return dict(optimizer=self.optimizer, forward_fn=self.forward_fn,
                loss_from_outputs=self.loss_from_outputs, loss_inputs_fn=self.loss_inputs_fn,
                lr_group_ids=self.lr_group_ids, num_microbatches=self.num_microbatches)


@dataclasses.dataclass(frozen=True)
class Guidance:
  """What guiding adds to the model step.

  Attributes:
    specs: the guided hyper-parameters.
    meta_optimizer: moves the raw values (`meta.make_meta_optimizer`).
    recompute_tangent: greedy horizon: the memory option of `hypergrad.guided_step`.
    horizon: 'greedy' (one-step lookahead) or 'forward' (tangents carried along the trajectory
      in `TrainState.tangents`, updated at every model step; `gbt_t5x.guided.forward`).
    mu: the forward horizon's damping in [0, 1] (0: greedy).
    optimizer_derivative: greedy horizon: how the optimizer update is differentiated, 'auto'
      (closed form where registered, else VJP), 'vjp' (generic) or 'closed_form' (AdamW / Adam;
      `hypergrad.guided_step`).
  """
  specs: tuple[specs_lib.GuidedHParam, ...]
  meta_optimizer: optax.GradientTransformation
  recompute_tangent: bool = False
  horizon: str = "greedy"
  mu: float = 1.0
  optimizer_derivative: str = hypergrad.AUTO


# ------------------------------------------------------------------------------ value providers
def no_values(state: TrainState) -> dict[str, jax.Array]:
  """A plain run: the optimizer's own values, multiplier 1, the model's label smoothing."""
  del state
  return {}


def schedule_values(schedules: Mapping[str, Callable[[jax.Array], jax.Array]]) -> ValuesFn:
  """A replayed run: {name: step -> value} evaluated at the step (see `guided.export`).

  `learning_rate` multiplies the model's schedule, `label_smoothing` / `data_weights` go to the
  loss, any other name (aliases included) is an optimizer hyper-parameter.
  """
  schedules = dict(schedules)
  return lambda state: {name: fn(state.step) for name, fn in schedules.items()}


def guided_values(specs: Sequence[specs_lib.GuidedHParam]) -> ValuesFn:
  """A guided run: the effective values of the guided state's raw values."""
  return lambda state: specs_lib.effective(specs, state.guided.raw)


# ------------------------------------------------------------------------------ the step
def value_metrics(values: Mapping[str, jax.Array], base_lr: jax.Array,
                  entry_names: Mapping[str, Sequence[str]] | None = None) -> Metrics:
  """`hp/NAME` per scalar value, `hp/NAME/ENTRY` per vector entry (`metric_kinds.hp_key`, the
  only place these keys are built), and the applied `learning_rate` (the schedule's value times
  a scalar multiplier).

  ENTRY is the entry's name from `entry_names[NAME]` made tag-safe (`hp/data_weights/
  untranslated_copy`), or its index (`hp/data_weights/3`) for a value without names. A names
  list of the wrong length raises a one-line ValueError (when the step is traced, before it runs).
  """
  entry_names = entry_names or {}
  metrics = {}
  for name, value in values.items():
    flat = jnp.ravel(jnp.asarray(value))
    if jnp.ndim(value) == 0:
      metrics[metric_kinds.hp_key(name)] = flat[0]
      continue
    try:
      tags = specs_lib.entry_tags(tuple(entry_names.get(name, ())), flat.size)
    except ValueError as e:
      raise ValueError(f"hyper-parameter {name!r}: {e}") from None
    for i, tag in enumerate(tags):
      metrics[metric_kinds.hp_key(name, tag)] = flat[i]
  multiplier = values.get(specs_lib.LEARNING_RATE)
  scalar = multiplier is not None and jnp.ndim(multiplier) == 0
  metrics["learning_rate"] = base_lr * multiplier if scalar else jnp.asarray(base_lr)
  return metrics


@dataclasses.dataclass(frozen=True)
class _Stepped:
  """What one of the step's bodies returns: the guarded update, the state parts that guiding
  moves, the hypergradients of a guided step (else None) and the body's metrics."""
  update: hypergrad.ModelUpdate
  guided: Any
  tangents: Any
  hypergrads: Mapping[str, jax.Array] | None
  metrics: Metrics


def _step_body(state: TrainState, batch: Batch, values: Mapping[str, jax.Array], rng: jax.Array,
               base_lr: jax.Array, fns: StepFns, guide_batch: Batch | None,
               guidance: Guidance | None) -> _Stepped:
  """Dispatches to the plain, greedy guided or forward-horizon (plain or guided) step."""
  kwargs = fns.hypergrad_kwargs()
  if guidance is not None and guidance.horizon == "forward":
    horizon = dict(mu=guidance.mu, specs=guidance.specs, **kwargs)
    if guide_batch is None:
      update, tangents, metrics = forward_lib.forward_update(
          state.params, state.opt_state, state.guided.raw, state.tangents, batch, rng, base_lr,
          **horizon)
      return _Stepped(update, state.guided, tangents, None, metrics)
    out, tangents = forward_lib.guided_update(
        state.params, state.opt_state, state.guided, state.tangents, batch, guide_batch, rng,
        base_lr, meta_optimizer=guidance.meta_optimizer, guide_loss_fn=fns.guide_loss_fn,
        **horizon)
    return _Stepped(out.update, out.guided, tangents, out.hypergrads, out.metrics)
  if guide_batch is None:
    out = hypergrad.model_update(state.params, state.opt_state, values, batch, rng, base_lr,
                                 guard=True, **kwargs)
    update = hypergrad.ModelUpdate(out.params, out.opt_state, out.ok)
    return _Stepped(update, state.guided, state.tangents, None, out.metrics)
  out = hypergrad.guided_update(
      state.params, state.opt_state, state.guided, batch, guide_batch, rng, base_lr,
      specs=guidance.specs, meta_optimizer=guidance.meta_optimizer,
      guide_loss_fn=fns.guide_loss_fn, recompute_tangent=guidance.recompute_tangent,
      optimizer_derivative=guidance.optimizer_derivative, **kwargs)
  return _Stepped(out.update, out.guided, state.tangents, out.hypergrads, out.metrics)


def _guided_metrics(old: TrainState, new: TrainState, hypergrads: Mapping[str, jax.Array],
                    guide_loss: jax.Array, guide_batch: Batch) -> Metrics:
  """A guided step's own metrics: `guide_loss_per_token`, the hypergradient metrics and the
  meta-update skips as counted in the (guarded) states."""
  guide_tokens = jnp.sum(guide_batch["decoder_loss_weights"].astype(jnp.float32))
  metrics = {"guide_loss_per_token": guide_loss / jnp.maximum(guide_tokens, 1)}
  metrics.update(hypergrad.hypergrad_metrics(hypergrads))
  metrics["skipped"] = (new.guided.num_skipped - old.guided.num_skipped).astype(jnp.float32)
  for name in new.guided.skips:
    metrics[f"skipped/{name}"] = (new.guided.skips[name] - old.guided.skips[name]).astype(
        jnp.float32)
  return metrics


def model_step(state: TrainState, batch: Batch, *, fns: StepFns, values_fn: ValuesFn,
               guide_batch: Batch | None = None, guidance: Guidance | None = None
               ) -> tuple[TrainState, Metrics]:
  """One model step (a guided one when `guide_batch` is given), guarded against non-finite loss.

  Args:
    state: the train state (params, optimizer state, guided state, counters).
    batch: the global train batch, features [B, L].
    fns: the model-side callables.
    values_fn: where this step's hyper-parameter values come from (ignored on guided and
      forward-horizon steps, whose values are the guided state's).
    guide_batch: a guide batch for a guided step, else None.
    guidance: required with `guide_batch`; with the 'forward' horizon, given on every step of
      the run (the tangents move with every model step).

  Returns:
    (new state, scalar metrics): the loss head's sums (`loss`, `accuracy`, `num_tokens`, ...),
    `train_loss`, `hp/NAME` (`hp/NAME/ENTRY`) values used, `learning_rate`,
    `nonfinite_skipped`; `tangent_resets` with the forward horizon; on guided steps also
    `guide_loss_per_token` (nats per guide token), `hypergrad_norm/NAME` (`hypergrad/NAME`,
    signed, for scalars), `skipped` (1 if any value's meta update was skipped) and
    `skipped/NAME` per value. Keys whose `metric_kinds` kind says so are zeroed on a step the
    guard dropped.
  """
  if guide_batch is not None and guidance is None:
    raise ValueError("a guided step needs a Guidance (specs and meta optimizer)")
  rng = jax.random.fold_in(fns.rng, state.step)
  base_lr = fns.learning_rate_fn(state.step)
  if guidance is not None and (guide_batch is not None or guidance.horizon == "forward"):
    values = specs_lib.effective(guidance.specs, state.guided.raw)
  else:
    values = values_fn(state)
  body = _step_body(state, batch, values, rng, base_lr, fns, guide_batch, guidance)
  new_state = state.replace(step=state.step + 1, params=body.update.params,
                            opt_state=body.update.opt_state, guided=body.guided,
                            tangents=body.tangents)
  new_state, nonfinite = train_state_lib.keep_finite_update(
      state, new_state, body.metrics["loss"], body.update.ok)
  metrics = {k: v for k, v in body.metrics.items() if k != "guide_loss"}
  if guide_batch is not None:
    metrics.update(_guided_metrics(state, new_state, body.hypergrads,
                                   body.metrics["guide_loss"], guide_batch))
  metrics = {k: jnp.where(nonfinite > 0, jnp.zeros_like(v), v)
             if metric_kinds.kind_of(k).zero_on_skip else v for k, v in metrics.items()}
  metrics.update(value_metrics(values, base_lr, fns.entry_names))
  metrics["nonfinite_skipped"] = nonfinite
  return new_state, {k: v for k, v in metrics.items() if jnp.ndim(v) == 0}
