"""The fused model step + hypergradient step (one-step lookahead), generic over callables.

Notation (DESIGN.md section 1): theta params, s optimizer state, phi raw guided values,
h = act(phi) effective values split into h_opt (optimizer side) and h_loss (loss side), x a train
batch, z a guide batch. The guided step computes the ordinary model step

    g = grad_theta L_train(theta; x, h_loss);  u, s' = U(g, s, theta; h_opt);  theta' = theta + u

and, from the *same* quantities, the exact gradient of

    L_hyper(phi) = L_guide(theta + U(grad_theta L_train(theta; x, h_loss(phi)), s, theta;
                                     h_opt(phi)); z)

with respect to phi. Because the lookahead step is the model step, no second train
forward/backward is run. Scheme and cost (F = one network forward, ~2F its backward):

a) `outputs, lin = jax.linearize(forward, theta)` (F, keeps the residuals),
   `d_out = dL/d outputs` (loss head only) and `g = linear_transpose(lin)(d_out)` (~2F): exactly
   the ordinary backward pass.
b) `(u, s'), U_vjp = jax.vjp(U, g, h_opt)`: the optimizer update is elementwise per leaf, so its
   VJP is a few elementwise passes over the parameters. theta' = theta + u.
c) `L_guide(theta'), v = value_and_grad(L_guide)(theta')`: one guide forward/backward. Since
   theta' = theta + u and theta does not depend on phi, v is also dL_hyper/du.
d) `(dg, dh_opt) = U_vjp(v)`: the optimizer-side hypergradient in effective units (exact: the
   chain rule through U, first order in theta).
e) only when loss-side hyper-parameters are guided (decided statically): g = J^T dL/do(o, h_loss)
   with J = d outputs / d theta, so d(dg . g)/dh_loss = d((J dg) . dL/do(o, h_loss))/dh_loss.
   `t = lin(dg)` is a tangent-only forward (~F, reusing a)'s residuals) and the remaining mixed
   second derivative touches only the loss head: `grad_hl vdot(dL/do(o, hl), t)`.
f) effective -> raw by the VJP of the activations, then `meta.apply_hypergradient`.

With `recompute_tangent=True`, e) re-runs the forward with `jax.jvp` (~2F instead of ~F) so that
a)'s residuals are freed before c): less peak memory for one more forward (an option for large
models; the default keeps the linearisation).

Total: plain step (3F + U) + guide forward/backward + elementwise VJP of U, plus ~F when
loss-side hyper-parameters are guided.

Choice of a): `jax.linearize` + `jax.linear_transpose` was timed against `jax.vjp` on a 0.55M
parameter MLP (batch 512, jit, 2 shared CPU cores): 10.5-11 ms against 10.7-11.3 ms (best of 5),
bit-identical gradients, as expected since `jax.vjp` is itself linearize + transpose. It is kept
because it hands `lin` to e) for free, where the fallback `jax.vjp` + `jax.jvp` would re-run the
primal forward. On that MLP with AdamW, guided / (plain + guide forward/backward) measured
~1.1-1.2 with optimizer-side values only (the VJP of U is elementwise work proportional to the
parameter count, so the ratio falls as the batch grows) and ~1.45 with label smoothing guided
(the extra tangent forward of e)). A forward-mode alternative for d) (one JVP of U per scalar)
was slower than the VJP.

Memory: when loss-side values are guided, a)'s residuals stay alive until e), i.e. across the
guide forward/backward; otherwise they die after the transpose as in a plain step.

Imports only jax, optax and `gbt_t5x.guided`; must not import gin, seqio, tensorflow, or anything
from `gbt_t5x.models` / `gbt_t5x.train`.
"""
from __future__ import annotations

import re
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import optax

from gbt_t5x.guided import meta as meta_lib
from gbt_t5x.guided import specs as specs_lib

PyTree = Any
Batch = Mapping[str, jax.Array]
ForwardFn = Callable[[PyTree, Batch, jax.Array], PyTree]
LossFromOutputs = Callable[[PyTree, Batch, Mapping[str, jax.Array]],
                           tuple[jax.Array, Mapping[str, jax.Array]]]
GuideLossFn = Callable[[PyTree, Batch], jax.Array]


# --------------------------------------------------------------------------- parameter groups
def _key_str(entry: Any) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(entry, attr):
      return str(getattr(entry, attr))
  return str(entry)


def param_path(path: Sequence[Any]) -> str:
  """'/'-joined name of a pytree key path, e.g. 'encoder/layers_0/mlp/wi/kernel'."""
  return "/".join(_key_str(p) for p in path)


def param_group_ids(params: PyTree, groups: Sequence[str]) -> PyTree:
  """Group index of every parameter leaf: the first regex in `groups` found in its path.

  Args:
    params: the parameter pytree (arrays or shape structs).
    groups: regexes, searched (`re.search`) in '/'-joined parameter paths.

  Returns:
    A pytree with the structure of `params` whose leaves are Python ints in [0, len(groups)).
  """
  compiled = [re.compile(g) for g in groups]

  def group_of(path, _):
    name = param_path(path)
    for i, pattern in enumerate(compiled):
      if pattern.search(name):
        return i
    raise ValueError(f"parameter {name!r} matches no learning-rate group regex in "
                     f"{list(groups)}; add a catch-all group such as '.*'")

  return jax.tree_util.tree_map_with_path(group_of, params)


# --------------------------------------------------------------------------- optimizer update
def _tree_vdot(a: PyTree, b: PyTree) -> jax.Array:
  return sum(jnp.vdot(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def optimizer_update(optimizer: optax.GradientTransformation, grads: PyTree, opt_state: Any,
                     params: PyTree, opt_hparams: Mapping[str, jax.Array], base_lr: jax.Array,
                     lr_group_ids: PyTree | None = None) -> tuple[PyTree, Any]:
  """The optimizer update with guided optimizer-side values injected.

  Args:
    optimizer: an `optax.inject_hyperparams` transformation (its state has `hyperparams`).
    grads: gradients, structure of `params`.
    opt_state: its state.
    params: current parameters.
    opt_hparams: effective optimizer-side values keyed by spec name: `learning_rate` (multiplier,
      scalar or [num_groups]) and/or optimizer names (aliases allowed, e.g. Adafactor `b1`).
    base_lr: scalar, the model schedule's learning rate at this step.
    lr_group_ids: from `param_group_ids`; required iff the multiplier is a vector.

  Returns:
    (updates, new_opt_state): updates with the structure of `params` (to be added to them).
    The learning rate used is base_lr * multiplier (a vector multiplier scales each leaf's
    whole update, after the optimizer, by its group's entry).
  """
  hyperparams = getattr(opt_state, "hyperparams", None)
  if not isinstance(hyperparams, Mapping):
    raise ValueError("optimizer state has no `hyperparams` dict: build the model optimizer with "
                     "optax.inject_hyperparams")
  scheduled = set(getattr(opt_state, "hyperparams_states", {}) or {})
  hp = dict(hyperparams)

  def put(key: str, value: jax.Array) -> None:
    if key in scheduled:
      raise ValueError(f"optimizer hyper-parameter {key!r} is a schedule inside the optimizer; "
                       "give it a plain number so the guided value can be injected")
    dtype = jnp.asarray(hyperparams[key]).dtype
    if not jnp.issubdtype(dtype, jnp.floating):
      raise ValueError(f"optimizer hyper-parameter {key!r} is {dtype}, not a float; it cannot "
                       "be guided")
    hp[key] = jnp.asarray(value).astype(dtype)

  if specs_lib.LEARNING_RATE not in hyperparams:
    raise ValueError(f"optimizer has no injectable 'learning_rate'; its hyper-parameters are "
                     f"{sorted(hyperparams)}")
  multiplier = opt_hparams.get(specs_lib.LEARNING_RATE)
  vector_lr = multiplier is not None and jnp.ndim(multiplier) > 0
  lr = base_lr if multiplier is None or vector_lr else base_lr * multiplier
  put(specs_lib.LEARNING_RATE, lr)
  for name, value in opt_hparams.items():
    if name == specs_lib.LEARNING_RATE:
      continue
    key = specs_lib.resolve_optimizer_name(name, hyperparams)
    if key is None:
      raise ValueError(f"optimizer has no hyper-parameter {name!r}; its hyper-parameters are "
                       f"{sorted(hyperparams)}")
    put(key, value)
  updates, new_opt_state = optimizer.update(grads, opt_state._replace(hyperparams=hp), params)
  if vector_lr:
    if lr_group_ids is None:
      raise ValueError("a per-group learning_rate multiplier needs lr_group_ids "
                       "(from param_group_ids(params, spec.groups))")
    updates = jax.tree.map(lambda u, gid: u * multiplier[gid].astype(u.dtype), updates,
                           lr_group_ids)
  return updates, new_opt_state


# --------------------------------------------------------------------------- steps
def _metrics(aux: Mapping[str, jax.Array], loss: jax.Array,
             values: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
  metrics = dict(aux)
  metrics["train_loss"] = loss
  for name, value in values.items():
    metrics[f"hp/{name}"] = value
  return metrics


def plain_step(params: PyTree, opt_state: Any, guided_state: meta_lib.GuidedState, batch: Batch,
               rng: jax.Array, base_lr: jax.Array, *, specs: Sequence[specs_lib.GuidedHParam],
               optimizer: optax.GradientTransformation, forward_fn: ForwardFn,
               loss_from_outputs: LossFromOutputs, lr_group_ids: PyTree | None = None
               ) -> tuple[PyTree, Any, dict[str, jax.Array]]:
  """A model step at the current effective values (no hypergradient).

  Args:
    params, opt_state: model parameters and optimizer state.
    guided_state: supplies the raw guided values.
    batch: train batch; rng: dropout rng for `forward_fn`; base_lr: schedule value (scalar).
    specs, optimizer, forward_fn, loss_from_outputs, lr_group_ids: see `guided_step`.

  Returns:
    (new_params, new_opt_state, metrics): metrics are the loss head's aux metrics plus
    `train_loss` and `hp/NAME` (effective values used).
  """
  values = specs_lib.effective(specs, guided_state.raw)
  h_opt, h_loss = specs_lib.split_effective(specs, values)

  def train_loss(p):
    return loss_from_outputs(forward_fn(p, batch, rng), batch, h_loss)

  (loss, aux), grads = jax.value_and_grad(train_loss, has_aux=True)(params)
  updates, new_opt_state = optimizer_update(optimizer, grads, opt_state, params, h_opt, base_lr,
                                            lr_group_ids)
  return optax.apply_updates(params, updates), new_opt_state, _metrics(aux, loss, values)


def lookahead_hypergradient(
    params: PyTree, opt_state: Any, raw: Mapping[str, jax.Array], batch: Batch,
    guide_batch: Batch, rng: jax.Array, base_lr: jax.Array, *,
    specs: Sequence[specs_lib.GuidedHParam], optimizer: optax.GradientTransformation,
    forward_fn: ForwardFn, loss_from_outputs: LossFromOutputs, guide_loss_fn: GuideLossFn,
    lr_group_ids: PyTree | None = None, recompute_tangent: bool = False
) -> tuple[PyTree, Any, dict[str, jax.Array], dict[str, jax.Array]]:
  """The model step and the exact gradient of L_hyper w.r.t. the raw values (steps a-f above).

  Args: as `guided_step`, with `raw` (name -> raw value) in place of the guided state.

  Returns:
    (new_params, new_opt_state, hypergrads, metrics): hypergrads is name -> dL_hyper/d raw
    (shapes of `raw`, may be non-finite); metrics as `guided_step` without `skipped`.
  """
  values, act_vjp = jax.vjp(lambda r: specs_lib.effective(specs, r), dict(raw))
  h_opt, h_loss = specs_lib.split_effective(specs, values)

  # a) forward with a linearisation, loss head gradient, ordinary backward by transposition.
  forward = lambda p: forward_fn(p, batch, rng)  # noqa: E731
  if h_loss and not recompute_tangent:
    outputs, lin = jax.linearize(forward, params)
    backward = jax.linear_transpose(lin, params)
  else:
    outputs, backward = jax.vjp(forward, params)
  (loss, aux), d_out = jax.value_and_grad(loss_from_outputs, has_aux=True)(outputs, batch, h_loss)
  (grads,) = backward(d_out)

  # b) the model step, with the VJP of the optimizer update kept.
  def update(g, hopt):
    return optimizer_update(optimizer, g, opt_state, params, hopt, base_lr, lr_group_ids)

  updates, update_vjp, new_opt_state = jax.vjp(update, grads, h_opt, has_aux=True)
  new_params = optax.apply_updates(params, updates)

  # c) guide loss at the lookahead (= model step) params; d) back through the update.
  guide_loss, v = jax.value_and_grad(guide_loss_fn)(new_params, guide_batch)
  d_grads, d_h_opt = update_vjp(v)
  d_values = dict(d_h_opt)

  # e) loss-side: mixed second derivative through the loss head only.
  if h_loss:
    if recompute_tangent:  # Memory for time: re-run the forward instead of keeping residuals.
      _, tangent = jax.jvp(forward, (params,), (d_grads,))
    else:
      tangent = lin(d_grads)

    def head_grad(hl):
      return jax.grad(lambda o: loss_from_outputs(o, batch, hl)[0])(outputs)

    d_values.update(jax.grad(lambda hl: _tree_vdot(head_grad(hl), tangent))(h_loss))

  # f) effective -> raw.
  d_values = {k: d_values[k].astype(values[k].dtype) for k in values}
  (hypergrads,) = act_vjp(d_values)
  metrics = _metrics(aux, loss, values)
  metrics["guide_loss"] = guide_loss
  for name, g in hypergrads.items():
    metrics[f"hypergrad_norm/{name}"] = jnp.sqrt(jnp.sum(jnp.square(g)))
  return new_params, new_opt_state, hypergrads, metrics


def guided_step(params: PyTree, opt_state: Any, guided_state: meta_lib.GuidedState,
                batch: Batch, guide_batch: Batch, rng: jax.Array, base_lr: jax.Array, *,
                specs: Sequence[specs_lib.GuidedHParam],
                optimizer: optax.GradientTransformation,
                meta_optimizer: optax.GradientTransformation, forward_fn: ForwardFn,
                loss_from_outputs: LossFromOutputs, guide_loss_fn: GuideLossFn,
                lr_group_ids: PyTree | None = None, recompute_tangent: bool = False
                ) -> tuple[PyTree, Any, meta_lib.GuidedState, dict[str, jax.Array]]:
  """The fused model step + exact one-step-lookahead hypergradient + meta update.

  Args:
    params, opt_state: model parameters and optimizer state (`inject_hyperparams` state).
    guided_state: raw guided values, meta optimizer state, counters.
    batch: train batch x; guide_batch: guide batch z.
    rng: dropout rng for `forward_fn`; base_lr: scalar schedule value at this step.
    specs: the guided hyper-parameters (validated).
    optimizer: the model optimizer; meta_optimizer: from `meta.make_meta_optimizer`.
    forward_fn: (params, batch, rng) -> outputs (float pytree, e.g. logits [B, T, V]).
    loss_from_outputs: (outputs, batch, loss_hparams) -> (loss scalar, aux metrics dict), where
      loss_hparams holds the guided loss-side effective values (`label_smoothing` scalar,
      `data_weights` [num_ids]) and nothing else.
    guide_loss_fn: (params, guide_batch) -> scalar, deterministic.
    lr_group_ids: from `param_group_ids`, when the learning-rate multiplier is a vector.
    recompute_tangent: for loss-side hyper-parameters, recompute the train forward for the
      tangent (e) instead of keeping its linearisation alive through the guide pass: less peak
      memory (the train activations are freed before the guide forward), one more forward.

  Returns:
    (new_params, new_opt_state, new_guided_state, metrics). new_params/new_opt_state are the
    model step at the values before the meta update (identical to `plain_step`). metrics: aux
    metrics, `train_loss`, `guide_loss` (at new_params), `hypergrad_norm/NAME` (raw units),
    `hp/NAME` (values used), `skipped` (1.0 if the meta update was skipped).
  """
  new_params, new_opt_state, hypergrads, metrics = lookahead_hypergradient(
      params, opt_state, guided_state.raw, batch, guide_batch, rng, base_lr, specs=specs,
      optimizer=optimizer, forward_fn=forward_fn, loss_from_outputs=loss_from_outputs,
      guide_loss_fn=guide_loss_fn, lr_group_ids=lr_group_ids,
      recompute_tangent=recompute_tangent)
  new_guided, skipped = meta_lib.apply_hypergradient(guided_state, hypergrads, specs,
                                                     meta_optimizer)
  metrics["skipped"] = skipped.astype(jnp.float32)
  return new_params, new_opt_state, new_guided, metrics


def hyper_loss(raw: Mapping[str, jax.Array], params: PyTree, opt_state: Any, batch: Batch,
               guide_batch: Batch, rng: jax.Array, base_lr: jax.Array, *,
               specs: Sequence[specs_lib.GuidedHParam], optimizer: optax.GradientTransformation,
               forward_fn: ForwardFn, loss_from_outputs: LossFromOutputs,
               guide_loss_fn: GuideLossFn, lr_group_ids: PyTree | None = None) -> jax.Array:
  """L_hyper(raw) composed naively (for tests and debugging): scalar guide loss after one step.

  `jax.grad(hyper_loss)` must equal the hypergradient of `guided_step` (before the meta update).
  """
  values = specs_lib.effective(specs, raw)
  h_opt, h_loss = specs_lib.split_effective(specs, values)
  grads = jax.grad(lambda p: loss_from_outputs(forward_fn(p, batch, rng), batch, h_loss)[0])(
      params)
  updates, _ = optimizer_update(optimizer, grads, opt_state, params, h_opt, base_lr,
                                lr_group_ids)
  return guide_loss_fn(optax.apply_updates(params, updates), guide_batch)
