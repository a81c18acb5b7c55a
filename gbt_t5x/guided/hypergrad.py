"""The fused model step + hypergradient step (one-step lookahead), generic over callables.

Notation (docs/DESIGN.md, section 1 "The method"): theta params, s optimizer state, phi raw
guided values, h = act(phi) effective values split into h_opt (optimizer side) and h_loss (loss
side), x a train batch, z a guide batch. The guided step computes the ordinary model step

    g = grad_theta L_train(theta; x, h_loss);  u, s' = U(g, s, theta; h_opt);  theta' = theta + u

and, from the *same* quantities, the exact gradient of

    L_hyper(phi) = L_guide(theta + U(grad_theta L_train(theta; x, h_loss(phi)), s, theta;
                                     h_opt(phi)); z)

with respect to phi. Because the lookahead step is the model step, no second train
forward/backward is run. Scheme and cost (F = one network forward, ~2F its backward):

a) `train_loss_gradients`, the plain step's own gradient (`jax.value_and_grad`, ~3F); when
   loss-side values are guided, `outputs, lin = jax.linearize(forward, theta)` and
   `g = linear_transpose(lin)(dL/d outputs)` instead: the same backward pass, with `lin` kept
   for e).
b) the model update under the non-finite guard: `guarded_update`, the plain step's own, when d)
   has a closed form (`optimizer_derivatives`); else `(u, s'), U_vjp = jax.vjp(U, g, h_opt)`
   (the update is elementwise per leaf, so its VJP is a few elementwise passes over the
   parameters). theta' = theta + u.
c) `L_guide(theta'), v = value_and_grad(L_guide)(theta')`: one guide forward/backward. Since
   theta' = theta + u and theta does not depend on phi, v is also dL_hyper/du.
d) `(dg, dh_opt) = U_vjp(v)` or the closed form: the optimizer-side hypergradient in effective
   units (exact: the chain rule through U, first order in theta).
e) only when loss-side hyper-parameters are guided (decided statically): g = J^T dL/do(o, h_loss)
   with J = d outputs / d theta, so d(dg . g)/dh_loss = d((J dg) . dL/do(o, h_loss))/dh_loss.
   `t = lin(dg)` is a tangent-only forward (~F, reusing a)'s residuals) and the remaining mixed
   second derivative touches only the loss head: `grad_hl vdot(dL/do(o, hl), t)`.
f) effective -> raw by the VJP of the activations, then `meta.apply_hypergradient`.

With `recompute_tangent=True`, e) re-runs the forward with `jax.jvp` (~2F instead of ~F) so that
a)'s residuals are freed before c): less peak memory for one more forward (an option for large
models; the default keeps the linearisation). The re-run starts from an optimization barrier on
the params: without it XLA merges it with a)'s forward (the same computation on the same inputs)
and keeps a)'s residuals after all.

Total: plain step (3F + U) + guide forward/backward + elementwise VJP (or closed form) of U, plus
~F when loss-side hyper-parameters are guided. `jax.linearize` + `jax.linear_transpose` in a) is
`jax.vjp` split in two (bit-identical gradients); it is used because it hands `lin` to e), where
`jax.vjp` + `jax.jvp` would re-run the primal forward. Measurements behind these choices:
docs/results/gradient_core/README.md.

Memory: when loss-side values are guided, a)'s residuals stay alive until e), i.e. across the
guide forward/backward; otherwise they die after the backward as in a plain step.

Imports only jax, optax and `gbt_t5x.guided`; must not import gin, seqio, tensorflow, or anything
from `gbt_t5x.models` / `gbt_t5x.train`.
"""
from __future__ import annotations

import re
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import optax

from gbt_t5x.guided import meta as meta_lib
from gbt_t5x.guided import optimizer_derivatives as opt_derivs
from gbt_t5x.guided import specs as specs_lib

PyTree = Any
# How step d) differentiates the optimizer update: 'auto' (the default: the hand-written closed
# form of `optimizer_derivatives` where the optimizer has one registered, AdamW / Adam, and every
# guided optimizer-side name is covered by it; `jax.vjp` of the optax update otherwise), 'vjp'
# (always the generic VJP) or 'closed_form' (always the closed form; an error without one).
AUTO, VJP, CLOSED_FORM = "auto", "vjp", "closed_form"
OPTIMIZER_DERIVATIVES = (AUTO, VJP, CLOSED_FORM)
Batch = Mapping[str, jax.Array]
ForwardFn = Callable[[PyTree, Batch, jax.Array], PyTree]
LossFromOutputs = Callable[[PyTree, Batch, Mapping[str, jax.Array]],
                           tuple[jax.Array, Mapping[str, jax.Array]]]
GuideLossFn = Callable[[PyTree, Batch], jax.Array]
# (loss-side effective values, whole batch) -> the loss head's inputs for that batch, e.g.
# {'label_smoothing': scalar, 'token_weights': [B, T]}. Computed once per batch, so that
# microbatches see slices of whole-batch quantities (data weights are normalised per batch).
LossInputsFn = Callable[[Mapping[str, jax.Array], Batch], Mapping[str, jax.Array]]


def _identity_loss_inputs(h_loss: Mapping[str, jax.Array], batch: Batch
                          ) -> Mapping[str, jax.Array]:
  del batch
  return h_loss


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


def set_hyperparams(opt_state: Any, values: Mapping[str, Any]) -> Any:
  """The one injection of hyper-parameter values into an `inject_hyperparams` optimizer state.

  Works inside jit and under autodiff (values may be tracers). Names are resolved against the
  optimizer's own (`specs.resolve_optimizer_name`: Adafactor's `b1` is `momentum`,
  `weight_decay` is `weight_decay_rate`); each value is cast to the dtype of the entry it
  replaces and must have its shape (scalars: shape ()).

  Args:
    opt_state: an `optax.InjectHyperparamsState` / `InjectStatefulHyperparamsState`.
    values: name -> new value (Python number or array); `learning_rate` is the absolute rate.

  Returns:
    A copy of `opt_state` with the values replaced (the input is not modified).

  Raises:
    ValueError (one line): a state without `hyperparams`, unknown names (the message lists the
      known ones), an entry that follows an optax schedule, a non-float entry, a shape mismatch.
  """
  hyperparams = getattr(opt_state, "hyperparams", None)
  if not isinstance(hyperparams, Mapping) or not hasattr(opt_state, "_replace"):
    raise ValueError("optimizer state has no `hyperparams` dict: build the optimizer with "
                     "optax.inject_hyperparams")
  resolved = {name: specs_lib.resolve_optimizer_name(name, hyperparams) for name in values}
  unknown = sorted(name for name, key in resolved.items() if key is None)
  if unknown:
    raise ValueError(f"unknown optimizer hyper-parameter(s) {unknown}; known: "
                     f"{sorted(hyperparams)}")
  scheduled = set(getattr(opt_state, "hyperparams_states", None) or {})
  new = dict(hyperparams)
  for name, value in values.items():
    key = resolved[name]
    if key in scheduled:
      raise ValueError(f"optimizer hyper-parameter {key!r} is a schedule inside the optimizer; "
                       "give it a plain number so the value can be injected")
    old = jnp.asarray(hyperparams[key])
    if not jnp.issubdtype(old.dtype, jnp.floating):
      raise ValueError(f"optimizer hyper-parameter {key!r} is {old.dtype}, not a float; it "
                       "cannot be set")
    value = jnp.asarray(value)
    if value.shape != old.shape:
      raise ValueError(f"optimizer hyper-parameter {key!r} has shape {old.shape}, got a value "
                       f"of shape {value.shape}")
    new[key] = value.astype(old.dtype)
  return opt_state._replace(hyperparams=new)


def _inject(opt_state: Any, opt_hparams: Mapping[str, jax.Array], base_lr: jax.Array) -> Any:
  """`opt_state` with the optimizer-side values injected; the learning rate is base_lr *
  multiplier for a scalar multiplier, base_lr for a vector one (applied per group after)."""
  multiplier = opt_hparams.get(specs_lib.LEARNING_RATE)
  vector_lr = multiplier is not None and jnp.ndim(multiplier) > 0
  lr = base_lr if multiplier is None or vector_lr else base_lr * multiplier
  values = {k: v for k, v in opt_hparams.items() if k != specs_lib.LEARNING_RATE}
  return set_hyperparams(opt_state, {specs_lib.LEARNING_RATE: lr, **values})


def optimizer_update(optimizer: optax.GradientTransformation, grads: PyTree, opt_state: Any,
                     params: PyTree, opt_hparams: Mapping[str, jax.Array], base_lr: jax.Array,
                     lr_group_ids: PyTree | None = None) -> tuple[PyTree, Any]:
  """The optimizer update with optimizer-side values injected (`set_hyperparams`).

  Args:
    optimizer: an `optax.inject_hyperparams` transformation (its state has `hyperparams`).
    grads: gradients, structure of `params`.
    opt_state: its state.
    params: current parameters.
    opt_hparams: effective optimizer-side values keyed by name: `learning_rate` (multiplier,
      scalar or [num_groups]) and/or optimizer names (aliases allowed, e.g. Adafactor `b1`).
    base_lr: scalar, the model schedule's learning rate at this step.
    lr_group_ids: from `param_group_ids`; required iff the multiplier is a vector.

  Returns:
    (updates, new_opt_state): updates with the structure of `params` (to be added to them).
    The learning rate used is base_lr * multiplier (a vector multiplier scales each leaf's
    whole update, after the optimizer, by its group's entry).
  """
  hyperparams = getattr(opt_state, "hyperparams", None)
  if isinstance(hyperparams, Mapping) and specs_lib.LEARNING_RATE not in hyperparams:
    raise ValueError(f"optimizer has no injectable 'learning_rate'; its hyper-parameters are "
                     f"{sorted(hyperparams)}")
  multiplier = opt_hparams.get(specs_lib.LEARNING_RATE)
  vector_lr = multiplier is not None and jnp.ndim(multiplier) > 0
  opt_state = _inject(opt_state, opt_hparams, base_lr)
  updates, new_opt_state = optimizer.update(grads, opt_state, params)
  if vector_lr:
    if lr_group_ids is None:
      raise ValueError("a per-group learning_rate multiplier needs lr_group_ids "
                       "(from param_group_ids(params, spec.groups))")
    updates = jax.tree.map(lambda u, gid: u * multiplier[gid].astype(u.dtype), updates,
                           lr_group_ids)
  return updates, new_opt_state


# --------------------------------------------------------------------------- values, microbatches
def split_values(values: Mapping[str, jax.Array]
                 ) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
  """Splits effective values by name into (optimizer side, loss side).

  Loss-side names are `specs.LOSS_NAMES` (label smoothing, data weights); every other name (the
  learning-rate multiplier included) is optimizer side. Used for guided, replayed and constant
  values alike.
  """
  h_opt = {k: v for k, v in values.items() if k not in specs_lib.LOSS_NAMES}
  h_loss = {k: v for k, v in values.items() if k in specs_lib.LOSS_NAMES}
  return h_opt, h_loss


def microbatch(tree: Mapping[str, Any], num_microbatches: int, index: jax.Array
               ) -> dict[str, Any]:
  """Rows `index, index + M, index + 2M, ...` of every array with a batch axis.

  Arrays of rank >= 1 whose leading dim is the batch size B become `[B / M, ...]`; scalars (e.g.
  a label smoothing value) pass through unchanged.
  """
  def take(x):
    if jnp.ndim(x) == 0:
      return x
    x = x.reshape((x.shape[0] // num_microbatches, num_microbatches) + x.shape[1:])
    return jax.lax.dynamic_index_in_dim(x, index, axis=1, keepdims=False)
  return {k: take(v) for k, v in tree.items()}


def _check_microbatches(batch: Batch, num_microbatches: int) -> None:
  batch_size = next(iter(batch.values())).shape[0]
  if batch_size % num_microbatches:
    raise ValueError(f"batch size {batch_size} is not divisible by num_microbatches "
                     f"{num_microbatches}")


def _loss_and_grads(params: PyTree, batch: Batch, rng: jax.Array,
                    loss_inputs: Mapping[str, jax.Array], *, forward_fn: ForwardFn,
                    loss_from_outputs: LossFromOutputs, num_microbatches: int | None = None
                    ) -> tuple[jax.Array, dict[str, jax.Array], PyTree]:
  """(loss, aux sums, grads) by `value_and_grad`, summed over microbatches by `lax.scan`."""
  def loss_fn(p, b, r, inputs):
    return loss_from_outputs(forward_fn(p, b, r), b, inputs)

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  if not num_microbatches or num_microbatches <= 1:
    (loss, aux), grads = grad_fn(params, batch, rng, loss_inputs)
    return loss, dict(aux), grads
  _check_microbatches(batch, num_microbatches)

  def body(carry, index):
    mb = microbatch(batch, num_microbatches, index)
    mb_inputs = microbatch(loss_inputs, num_microbatches, index)
    (loss, aux), grads = grad_fn(params, mb, jax.random.fold_in(rng, index), mb_inputs)
    return jax.tree.map(jnp.add, carry, (loss, dict(aux), grads)), None

  mb0 = microbatch(batch, num_microbatches, jnp.int32(0))
  inputs0 = microbatch(loss_inputs, num_microbatches, jnp.int32(0))
  shapes = jax.eval_shape(lambda: grad_fn(params, mb0, rng, inputs0))
  (loss_shape, aux_shape), grads_shape = shapes
  zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype),
                       (loss_shape, dict(aux_shape), grads_shape))
  (loss, aux, grads), _ = jax.lax.scan(body, zeros, jnp.arange(num_microbatches))
  return loss, aux, grads


class TrainGradients(NamedTuple):
  """The train loss and its gradient at the params (the first part of every model step).

  Attributes:
    loss: scalar, the summed train loss (nats).
    aux: the loss head's aux metric sums (scalars, e.g. `loss`, `accuracy`, `num_tokens`).
    grads: dL/dparams, structure of the params.
    outputs: the forward's outputs (e.g. logits [B, T, V]) when the linearisation is kept.
    lin: the forward's linearisation (params tangent -> outputs tangent), when kept: a tangent
      forward that reuses the forward's residuals (step e of the guided step).
  """
  loss: jax.Array
  aux: dict[str, jax.Array]
  grads: PyTree
  outputs: PyTree | None = None
  lin: Callable[[PyTree], PyTree] | None = None


def train_loss_gradients(params: PyTree, batch: Batch, rng: jax.Array,
                         loss_inputs: Mapping[str, jax.Array], *, forward_fn: ForwardFn,
                         loss_from_outputs: LossFromOutputs,
                         num_microbatches: int | None = None,
                         keep_linearization: bool = False) -> TrainGradients:
  """The summed train loss, its aux metric sums and its gradient: the one gradient computation
  of the plain, greedy guided and forward-horizon steps.

  Args:
    params: parameters.
    batch: the global batch, features `[B, ...]`.
    rng: dropout rng; microbatch i uses `fold_in(rng, i)`.
    loss_inputs: from the `LossInputsFn` on the whole batch (per-token arrays `[B, T]` are
      sliced like the batch).
    forward_fn, loss_from_outputs: see `guided_step`.
    num_microbatches: None/1 for one pass, else M dividing B (gradients summed by `lax.scan`).
    keep_linearization: also return the forward's outputs and linearisation (one pass only):
      the gradient is then the transpose of that linearisation (the same backward pass).
      Otherwise `jax.value_and_grad`, exactly as a plain step.

  Returns:
    `TrainGradients` (outputs and lin None unless kept).
  """
  if not keep_linearization:
    loss, aux, grads = _loss_and_grads(params, batch, rng, loss_inputs, forward_fn=forward_fn,
                                       loss_from_outputs=loss_from_outputs,
                                       num_microbatches=num_microbatches)
    return TrainGradients(loss, aux, grads)
  if num_microbatches and num_microbatches > 1:
    raise ValueError("keep_linearization needs one pass (num_microbatches None or 1)")
  outputs, lin = jax.linearize(lambda p: forward_fn(p, batch, rng), params)
  (loss, aux), d_out = jax.value_and_grad(loss_from_outputs, has_aux=True)(outputs, batch,
                                                                            loss_inputs)
  (grads,) = jax.linear_transpose(lin, params)(d_out)
  return TrainGradients(loss, dict(aux), grads, outputs, lin)


def train_loss_and_grads(params: PyTree, batch: Batch, rng: jax.Array,
                         loss_inputs: Mapping[str, jax.Array], *, forward_fn: ForwardFn,
                         loss_from_outputs: LossFromOutputs,
                         num_microbatches: int | None = None
                         ) -> tuple[jax.Array, dict[str, jax.Array], PyTree]:
  """(loss, aux metric sums, grads): `train_loss_gradients` as a tuple."""
  g = train_loss_gradients(params, batch, rng, loss_inputs, forward_fn=forward_fn,
                           loss_from_outputs=loss_from_outputs,
                           num_microbatches=num_microbatches)
  return g.loss, g.aux, g.grads


def train_metrics(gradients: TrainGradients) -> dict[str, jax.Array]:
  """The metrics of a model step's train pass: the aux sums and `train_loss`."""
  return {**gradients.aux, "train_loss": gradients.loss}


# --------------------------------------------------------------------------- the non-finite guard
# Legacy tuple API only (`plain_step(guard=True)`, `lookahead_hypergradient`): the metric key of
# the guard's test. The step path gets it as `ModelUpdate.ok`.
UPDATE_OK = "update_ok"


def update_is_finite(loss: jax.Array, new_params: PyTree) -> jax.Array:
  """The non-finite guard's test (bool scalar): the train loss finite, and every new param
  finite and at most sqrt(the dtype's largest value) in magnitude (about 1.8e19 in float32):
  beyond that its square overflows, so the update has diverged (an LR of 1e30 gives such finite
  params one step before it gives NaNs; they must not be saved as a good checkpoint).

  One boolean reduction per leaf. (The test was the finiteness of the params' norm, which flags
  the same updates, but as a float reduction, which XLA:CPU runs as YNNPACK fusions whose
  operands must be materialised: the scalar hyper-parameters broadcast to each leaf's shape, up
  to 10 vocabulary-sized buffers alive through the train pass at T5.1.1 small.)"""
  bounded = [jnp.all(jnp.abs(leaf) <= float(jnp.finfo(leaf.dtype).max) ** 0.5)
             for leaf in jax.tree.leaves(new_params)]  # NaN compares False
  return jnp.isfinite(loss) & jnp.all(jnp.stack(bounded))


# How the model step's non-finite guard keeps the old params and optimizer state
# (`guard_update`): 'cond' (the default: the update's finiteness is tested in a first fused pass
# that materialises nothing, then `lax.cond` either applies the update or returns the old state)
# or 'where' (the update is materialised, then tested, then an elementwise select per leaf picks
# new or old: one more params-sized buffer at the peak, which 'cond' pays for with one more
# elementwise pass over g, the moments and the params). Both keep the old state bit for bit on a
# dropped step and give the same run bit for bit otherwise (tests/guided/test_hypergrad.py,
# tests/train/test_guided_trainer.py); `python scripts/bench_train.py --guards` measures what each
# costs against an unguarded step (README, Benchmarks). The guided step with the update's VJP
# always uses 'where' (the VJP closure cannot leave a `lax.cond`).
WHERE, COND = "where", "cond"
NON_FINITE_GUARDS = (WHERE, COND)
NON_FINITE_GUARD = COND


def keep_if(ok: jax.Array, new: PyTree, old: PyTree) -> PyTree:
  """`new` where `ok` (bool scalar), else `old` (same structure): an elementwise select."""
  return jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, old)


class ModelUpdate(NamedTuple):
  """A guarded model update.

  Attributes:
    params, opt_state: the updated params and optimizer state, or the old ones (bit for bit)
      where `ok` is False.
    ok: bool scalar, the guard's test (`update_is_finite`): False when the step was dropped.
  """
  params: PyTree
  opt_state: Any
  ok: jax.Array


def guard_update(loss: jax.Array, params: PyTree, opt_state: Any,
                 update_fn: Callable[[], tuple[PyTree, Any, Any]], mode: str | None = None
                 ) -> tuple[ModelUpdate, Any]:
  """The one non-finite guard of the model step: apply `update_fn` only where it leaves the
  train loss and the params finite.

  Args:
    loss: the step's train loss (scalar).
    params, opt_state: before the update (kept where the test fails).
    update_fn: () -> (new_params, new_opt_state, extra); `extra` (e.g. the update's VJP) is
      passed through, and must be None with 'cond' (which calls `update_fn` twice).
    mode: 'where' or 'cond' (see `NON_FINITE_GUARD`, read when traced, the default).

  Returns:
    (`ModelUpdate`, extra).
  """
  mode = NON_FINITE_GUARD if mode is None else mode
  if mode == COND:
    ok = update_is_finite(loss, update_fn()[0])  # only the norm is kept: nothing params-sized
    new_params, new_opt_state = jax.lax.cond(ok, lambda: update_fn()[:2],
                                             lambda: (params, opt_state))
    return ModelUpdate(new_params, new_opt_state, ok), None
  if mode != WHERE:
    raise ValueError(f"NON_FINITE_GUARD must be one of {NON_FINITE_GUARDS}, got {mode!r}")
  new_params, new_opt_state, extra = update_fn()
  ok = update_is_finite(loss, new_params)
  new_params, new_opt_state = keep_if(ok, (new_params, new_opt_state), (params, opt_state))
  return ModelUpdate(new_params, new_opt_state, ok), extra


def guarded_update(optimizer: optax.GradientTransformation, grads: PyTree, opt_state: Any,
                   params: PyTree, opt_hparams: Mapping[str, jax.Array], base_lr: jax.Array,
                   loss: jax.Array, lr_group_ids: PyTree | None = None
                   ) -> tuple[PyTree, Any, jax.Array]:
  """The optimizer update (`optimizer_update`) under the non-finite guard (`guard_update`).

  The update itself runs as a branch of a `lax.cond` (with 'where', one on the loss being
  finite: a step with a non-finite loss is dropped anyway; with 'cond', the guard's own): a
  branch is a computation of its own, which XLA compiles alone, the same way in every program
  that calls it (the plain step, the guided step). Inlined, it would be fused with whatever else
  the program does with the gradient and the moments, and XLA contracts a * b + c into a fused
  multiply-add inside a fusion, so a different fusion can change the last bit (an optimization
  barrier does not keep fusions apart: XLA turns barriers into control dependencies before
  fusion). With the branch, a plain and a guided step give the same model update bit for bit.

  Args: as `optimizer_update`, plus the step's train `loss` (scalar).

  Returns:
    (new_params, new_opt_state, ok): where ok (bool scalar) is False, `params` / `opt_state`
    themselves (bit for bit).
  """
  def apply():
    updates, new_opt_state = optimizer_update(optimizer, grads, opt_state, params, opt_hparams,
                                              base_lr, lr_group_ids)
    return optax.apply_updates(params, updates), new_opt_state

  def update_fn():
    if NON_FINITE_GUARD == COND:  # the guard's own `lax.cond` holds the update
      return (*apply(), None)
    new_params, new_opt_state = jax.lax.cond(jnp.isfinite(loss), apply,
                                             lambda: (params, opt_state))
    return new_params, new_opt_state, None

  update, _ = guard_update(loss, params, opt_state, update_fn)
  return update.params, update.opt_state, update.ok


# --------------------------------------------------------------------------- the plain step
class StepOutput(NamedTuple):
  """A model step without a hypergradient.

  Attributes:
    params, opt_state: after the step (guarded when `ok` is not None).
    metrics: `train_metrics` (aux sums and `train_loss`).
    ok: the guard's test (bool scalar) when the step was guarded, else None.
  """
  params: PyTree
  opt_state: Any
  metrics: dict[str, jax.Array]
  ok: jax.Array | None


def model_update(params: PyTree, opt_state: Any, values: Mapping[str, jax.Array], batch: Batch,
                 rng: jax.Array, base_lr: jax.Array, *, optimizer: optax.GradientTransformation,
                 forward_fn: ForwardFn, loss_from_outputs: LossFromOutputs,
                 loss_inputs_fn: LossInputsFn | None = None, lr_group_ids: PyTree | None = None,
                 num_microbatches: int | None = None, guard: bool = True) -> StepOutput:
  """A model step at given effective values: `train_loss_gradients`, then the optimizer update
  (under `guarded_update` with `guard`).

  Args:
    params, opt_state: model parameters and optimizer state.
    values: effective values by name (guided, replayed or constant; may be empty): the
      learning-rate multiplier, optimizer names (aliases allowed) and loss-side names.
    batch: train batch; rng: dropout rng for `forward_fn`; base_lr: schedule value (scalar).
    optimizer, forward_fn, loss_from_outputs, loss_inputs_fn, lr_group_ids: see `guided_step`.
    num_microbatches: gradient accumulation over M microbatches (None/1: one pass).
    guard: apply the non-finite guard (`ok` is then its test, else None).
  """
  h_opt, h_loss = split_values(values)
  loss_inputs = (loss_inputs_fn or _identity_loss_inputs)(h_loss, batch)
  g = train_loss_gradients(params, batch, rng, loss_inputs, forward_fn=forward_fn,
                           loss_from_outputs=loss_from_outputs,
                           num_microbatches=num_microbatches)
  if guard:
    new_params, new_opt_state, ok = guarded_update(optimizer, g.grads, opt_state, params, h_opt,
                                                   base_lr, g.loss, lr_group_ids)
    return StepOutput(new_params, new_opt_state, train_metrics(g), ok)
  updates, new_opt_state = optimizer_update(optimizer, g.grads, opt_state, params, h_opt,
                                            base_lr, lr_group_ids)
  return StepOutput(optax.apply_updates(params, updates), new_opt_state, train_metrics(g), None)


def plain_step(params: PyTree, opt_state: Any, values: Mapping[str, jax.Array], batch: Batch,
               rng: jax.Array, base_lr: jax.Array, *, guard: bool = False, **step_kwargs: Any
               ) -> tuple[PyTree, Any, dict[str, jax.Array]]:
  """`model_update` as a (new_params, new_opt_state, metrics) tuple, unguarded by default.

  With `guard`, metrics also hold the guard's test under `UPDATE_OK` (for tuple callers; the
  step path reads `StepOutput.ok`).
  """
  out = model_update(params, opt_state, values, batch, rng, base_lr, guard=guard, **step_kwargs)
  metrics = dict(out.metrics)
  if guard:
    metrics[UPDATE_OK] = out.ok
  return out.params, out.opt_state, metrics


# --------------------------------------------------------------------------- the guided step
def closed_form_for(optimizer: optax.GradientTransformation, optimizer_derivative: str,
                    h_opt: Mapping[str, Any] | None = None, opt_state: Any = None
                    ) -> opt_derivs.ClosedForm | None:
  """The closed form to use for step d), or None for the generic VJP.

  Args:
    optimizer: the model optimizer (registered with `optimizer_derivatives.register` or not).
    optimizer_derivative: one of `OPTIMIZER_DERIVATIVES`.
    h_opt: the guided optimizer-side values by name (aliases allowed); with 'auto', a name the
      closed form does not cover selects the VJP. None: not checked (construction time).
    opt_state: the optimizer state, to resolve aliases in `h_opt` (needed with `h_opt`).

  Returns:
    The registered `ClosedForm` ('closed_form'; 'auto' when it covers `h_opt`), else None.

  Raises:
    ValueError (one line): an unknown mode, or 'closed_form' with an optimizer that has none
      (the trainer checks this at construction).
  """
  if optimizer_derivative not in OPTIMIZER_DERIVATIVES:
    raise ValueError(f"optimizer_derivative must be one of {OPTIMIZER_DERIVATIVES}, got "
                     f"{optimizer_derivative!r}")
  if optimizer_derivative == VJP:
    return None
  closed_form = opt_derivs.closed_form_of(optimizer)
  if closed_form is None and optimizer_derivative == CLOSED_FORM:
    raise ValueError("optimizer_derivative='closed_form' needs an optimizer with a closed-form "
                     "derivative (gbt_t5x.train.optimizers.adamw or adam); use 'vjp' or 'auto' "
                     "for others")
  if closed_form is None or optimizer_derivative == CLOSED_FORM or h_opt is None:
    return closed_form
  hyperparams = getattr(opt_state, "hyperparams", None) or {}
  covered = set(opt_derivs.SUPPORTED[closed_form.family])
  for name in h_opt:
    own = (name if name == specs_lib.LEARNING_RATE
           else specs_lib.resolve_optimizer_name(name, hyperparams))
    if own not in covered:
      return None
  return closed_form


def _closed_form_derivatives(closed_form: opt_derivs.ClosedForm, grads: PyTree, opt_state: Any,
                             new_opt_state: Any, new_params: PyTree, v: PyTree,
                             h_opt: Mapping[str, jax.Array], base_lr: jax.Array,
                             lr_group_ids: PyTree | None, need_d_grads: bool,
                             scales: PyTree | None = None
                             ) -> tuple[dict[str, jax.Array], PyTree]:
  """Step d) by `optimizer_derivatives` from the updated state (`opt_state`, the state before
  the update, only gives the hyper-parameter values the update used; Adafactor also needs
  `scales`, its `param_scales` of the params before the update): ({name in h_opt:
  <v, du/dh>}, (du/dg)^T v or None)."""
  hyperparams = _inject(opt_state, h_opt, base_lr).hyperparams
  own = {name: (name if name == specs_lib.LEARNING_RATE else
                specs_lib.resolve_optimizer_name(name, hyperparams)) for name in h_opt}
  names = [own[n] for n in h_opt]
  multiplier = h_opt.get(specs_lib.LEARNING_RATE)
  if closed_form.family == opt_derivs.ADAFACTOR:
    derivs, d_grads = opt_derivs.adafactor_derivatives(
        grads, new_opt_state, new_params, v, scales, hyperparams, base_lr, names, closed_form,
        multiplier=multiplier, lr_group_ids=lr_group_ids), None
  else:
    derivs, d_grads = opt_derivs.adamw_derivatives(
        grads, new_opt_state, new_params, v, hyperparams, base_lr, names, closed_form,
        multiplier=multiplier, lr_group_ids=lr_group_ids, need_d_grads=need_d_grads)
  return {name: derivs[own[name]] for name in h_opt}, d_grads


def _microbatched_loss_side_hypergradient(
    params: PyTree, batch: Batch, rng: jax.Array, h_loss: Mapping[str, jax.Array],
    d_grads: PyTree, *, forward_fn: ForwardFn, loss_from_outputs: LossFromOutputs,
    loss_inputs_fn: LossInputsFn, num_microbatches: int) -> dict[str, jax.Array]:
  """Step e) summed over microbatches: d(d_grads . g)/dh_loss with g = sum_m g_m.

  Each microbatch's forward is re-run with `jax.jvp` (outputs and the tangent J_m d_grads) and
  the mixed second derivative goes through the loss head only, as in the one-pass case. The loss
  inputs come from the whole batch (then sliced), as in the model step.
  """
  def body(acc, index):
    mb = microbatch(batch, num_microbatches, index)
    fwd = lambda p: forward_fn(p, mb, jax.random.fold_in(rng, index))  # noqa: E731
    outputs, tangent = jax.jvp(fwd, (params,), (d_grads,))

    def contraction(hl):
      inputs = microbatch(loss_inputs_fn(hl, batch), num_microbatches, index)
      head = jax.grad(lambda o: loss_from_outputs(o, mb, inputs)[0])(outputs)
      return _tree_vdot(head, tangent)

    return jax.tree.map(jnp.add, acc, jax.grad(contraction)(h_loss)), None

  zeros = jax.tree.map(jnp.zeros_like, dict(h_loss))
  total, _ = jax.lax.scan(body, zeros, jnp.arange(num_microbatches))
  return total


def _derivative_closed_form(optimizer: optax.GradientTransformation, optimizer_derivative: str,
                            h_opt: Mapping[str, jax.Array], h_loss: Mapping[str, jax.Array],
                            opt_state: Any) -> opt_derivs.ClosedForm | None:
  """`closed_form_for`, except that the LR multiplier alone (no loss side) takes the VJP: it then
  keeps only the update (linear in the LR), less than the closed form's inputs (g, m, n), and
  both give the same value."""
  closed_form = closed_form_for(optimizer, optimizer_derivative, h_opt, opt_state)
  if closed_form is not None and set(h_opt) <= {specs_lib.LEARNING_RATE} and not h_loss:
    return None
  if closed_form is not None and closed_form.family == opt_derivs.ADAFACTOR and h_loss:
    # Adafactor's closed form gives <v, du/dh> only, not the (du/dg)^T v of the loss side.
    if optimizer_derivative == CLOSED_FORM:
      raise ValueError("optimizer_derivative='closed_form': Adafactor's closed form does not "
                       "cover loss-side values (label smoothing, data weights); use 'auto'")
    return None
  return closed_form


def _update_with_derivative(optimizer: optax.GradientTransformation, grads: PyTree,
                            opt_state: Any, params: PyTree, h_opt: Mapping[str, jax.Array],
                            base_lr: jax.Array, loss: jax.Array, lr_group_ids: PyTree | None,
                            keep_vjp: bool) -> tuple[ModelUpdate, Callable[..., Any] | None]:
  """Step b): the guarded model update, with the VJP of the optimizer update kept or not.

  Without the VJP this is exactly the plain step's `guarded_update`. With it, the guard is
  'where' (the VJP closure cannot leave a `lax.cond`). The guard runs before the guide pass, so
  the old params and moments die here instead of living next to the new ones.

  Returns:
    (`ModelUpdate`, the update's VJP (d updates -> (d grads, d h_opt)) or None).
  """
  if not keep_vjp:
    new_params, new_opt_state, ok = guarded_update(optimizer, grads, opt_state, params, h_opt,
                                                   base_lr, loss, lr_group_ids)
    return ModelUpdate(new_params, new_opt_state, ok), None

  def update(g, hopt):
    return optimizer_update(optimizer, g, opt_state, params, hopt, base_lr, lr_group_ids)

  def update_fn():
    updates, update_vjp, new_opt_state = jax.vjp(update, grads, h_opt, has_aux=True)
    return optax.apply_updates(params, updates), new_opt_state, update_vjp

  return guard_update(loss, params, opt_state, update_fn, mode=WHERE)


def _loss_side_hypergradient(params: PyTree, batch: Batch, rng: jax.Array,
                             h_loss: Mapping[str, jax.Array], d_grads: PyTree,
                             gradients: TrainGradients, *, forward_fn: ForwardFn,
                             loss_from_outputs: LossFromOutputs, loss_inputs_fn: LossInputsFn,
                             num_microbatches: int | None) -> dict[str, jax.Array]:
  """Step e): d(d_grads . g)/dh_loss, the mixed second derivative through the loss head only.

  The tangent J d_grads comes from the kept linearisation (`gradients.lin`), else from a re-run
  forward (`jax.jvp`; per microbatch when microbatched). The re-run starts from an optimization
  barrier on the params, so that XLA cannot merge it with step a)'s forward (which would keep
  a)'s residuals alive through the guide pass after all).
  """
  if num_microbatches and num_microbatches > 1:
    return _microbatched_loss_side_hypergradient(
        params, batch, rng, h_loss, d_grads, forward_fn=forward_fn,
        loss_from_outputs=loss_from_outputs, loss_inputs_fn=loss_inputs_fn,
        num_microbatches=num_microbatches)
  if gradients.lin is not None:
    outputs, tangent = gradients.outputs, gradients.lin(d_grads)
  else:
    params_again, d_grads = jax.lax.optimization_barrier((params, d_grads))
    outputs, tangent = jax.jvp(lambda p: forward_fn(p, batch, rng), (params_again,), (d_grads,))

  def head_grad(hl):
    return jax.grad(lambda o: loss_from_outputs(o, batch, loss_inputs_fn(hl, batch))[0])(
        outputs)

  return dict(jax.grad(lambda hl: _tree_vdot(head_grad(hl), tangent))(h_loss))


def _params_for_tangent(params: PyTree, update: ModelUpdate, d_grads: PyTree,
                        gradients: TrainGradients, closed_form: opt_derivs.ClosedForm | None,
                        opt_state: Any, h_opt: Mapping[str, jax.Array], base_lr: jax.Array,
                        lr_group_ids: PyTree | None) -> PyTree:
  """The params step e) re-runs the train forward at: the old params, or, for AdamW's closed form
  when e) re-runs the forward (`recompute_tangent`, microbatches), the old params recovered from
  the updated ones (`optimizer_derivatives.adamw_params_before`; equal up to rounding), so that
  the old params need not outlive the update (one params-sized buffer less at the peak). On a
  step the guard dropped the recovery is meaningless, and so are the hypergradients it feeds,
  which the step drops."""
  if (closed_form is None or closed_form.family != opt_derivs.ADAMW
      or gradients.lin is not None):
    return params
  return opt_derivs.adamw_params_before(
      update.params, update.opt_state, d_grads, _inject(opt_state, h_opt, base_lr).hyperparams,
      base_lr, closed_form, multiplier=h_opt.get(specs_lib.LEARNING_RATE),
      lr_group_ids=lr_group_ids)


class LookaheadOutput(NamedTuple):
  """The greedy guided step before its meta update.

  Attributes:
    update: the guarded model step (`ModelUpdate`), identical to the plain step's.
    hypergrads: name -> dL_hyper/d raw (shapes of the raw values; may be non-finite).
    metrics: `train_metrics` and `guide_loss` (summed guide loss at the new params).
  """
  update: ModelUpdate
  hypergrads: dict[str, jax.Array]
  metrics: dict[str, jax.Array]


def lookahead_update(
    params: PyTree, opt_state: Any, raw: Mapping[str, jax.Array], batch: Batch,
    guide_batch: Batch, rng: jax.Array, base_lr: jax.Array, *,
    specs: Sequence[specs_lib.GuidedHParam], optimizer: optax.GradientTransformation,
    forward_fn: ForwardFn, loss_from_outputs: LossFromOutputs, guide_loss_fn: GuideLossFn,
    loss_inputs_fn: LossInputsFn | None = None, lr_group_ids: PyTree | None = None,
    recompute_tangent: bool = False, num_microbatches: int | None = None,
    optimizer_derivative: str = AUTO) -> LookaheadOutput:
  """The model step and the exact gradient of L_hyper w.r.t. the raw values (steps a-f above).

  Args: as `guided_step`, with `raw` (name -> raw value) in place of the guided state.

  A step the guard drops (`update.ok` False: a non-finite loss or update) keeps the old params
  and optimizer state; its hypergradients mean nothing and the model step drops its meta update.
  """
  loss_inputs_fn = loss_inputs_fn or _identity_loss_inputs
  microbatched = bool(num_microbatches) and num_microbatches > 1
  values, act_vjp = jax.vjp(lambda r: specs_lib.effective(specs, r), dict(raw))
  h_opt, h_loss = specs_lib.split_effective(specs, values)
  # a) the train gradient, with the forward's linearisation kept when e) will reuse it.
  gradients = train_loss_gradients(
      params, batch, rng, loss_inputs_fn(h_loss, batch), forward_fn=forward_fn,
      loss_from_outputs=loss_from_outputs, num_microbatches=num_microbatches,
      keep_linearization=bool(h_loss) and not recompute_tangent and not microbatched)
  # b) the guarded model step, with the VJP of the optimizer update kept unless closed form.
  closed_form = _derivative_closed_form(optimizer, optimizer_derivative, h_opt, h_loss,
                                        opt_state)
  # Adafactor's closed form needs of the old params only their per-leaf RMS scalars.
  scales = (opt_derivs.param_scales(params, closed_form.adafactor)
            if closed_form is not None and closed_form.family == opt_derivs.ADAFACTOR else None)
  update, update_vjp = _update_with_derivative(
      optimizer, gradients.grads, opt_state, params, h_opt, base_lr, gradients.loss,
      lr_group_ids, keep_vjp=closed_form is None)
  # c) guide loss at the lookahead (= model step) params; d) back through the update.
  guide_loss, v = jax.value_and_grad(guide_loss_fn)(update.params, guide_batch)
  if closed_form is None:
    d_grads, d_h_opt = update_vjp(v)
  else:  # d) reads only the updated state and g.
    d_h_opt, d_grads = _closed_form_derivatives(
        closed_form, gradients.grads, opt_state, update.opt_state, update.params, v, h_opt,
        base_lr, lr_group_ids, need_d_grads=bool(h_loss), scales=scales)
  d_values = dict(d_h_opt)
  if h_loss:  # e) loss side.
    d_values.update(_loss_side_hypergradient(
        _params_for_tangent(params, update, d_grads, gradients, closed_form, opt_state, h_opt,
                            base_lr, lr_group_ids),
        batch, rng, h_loss, d_grads, gradients, forward_fn=forward_fn,
        loss_from_outputs=loss_from_outputs, loss_inputs_fn=loss_inputs_fn,
        num_microbatches=num_microbatches))
  # f) effective -> raw.
  (hypergrads,) = act_vjp({k: d_values[k].astype(values[k].dtype) for k in values})
  return LookaheadOutput(update, hypergrads, {**train_metrics(gradients),
                                              "guide_loss": guide_loss})


def lookahead_hypergradient(*args: Any, **kwargs: Any
                            ) -> tuple[PyTree, Any, dict[str, jax.Array], dict[str, jax.Array]]:
  """`lookahead_update(*args, **kwargs)` as a (new_params, new_opt_state, hypergrads, metrics)
  tuple, with the guard's test in metrics under `UPDATE_OK` (for tuple callers: tests and the
  benchmark). Args: exactly `lookahead_update`'s."""
  out = lookahead_update(*args, **kwargs)
  return (out.update.params, out.update.opt_state, out.hypergrads,
          {**out.metrics, UPDATE_OK: out.update.ok})


def hypergrad_metrics(hypergrads: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
  """The metrics of one guided step's hypergradients (raw units): `hypergrad_norm/NAME` (L2 norm)
  for every value and the signed `hypergrad/NAME` for scalar values (its sign says which way the
  guide pulls; its mean / std over a window is the hypergradient's signal-to-noise ratio)."""
  metrics = {}
  for name, g in hypergrads.items():
    metrics[f"hypergrad_norm/{name}"] = jnp.sqrt(jnp.sum(jnp.square(g)))
    if jnp.ndim(g) == 0:
      metrics[f"hypergrad/{name}"] = g
  return metrics


class GuidedOutput(NamedTuple):
  """A guided step (either horizon): the model step, the hypergradient and the meta update.

  Attributes:
    update: the guarded model step (`ModelUpdate`).
    guided: the guided state after the meta update (the model step drops it with the update).
    hypergrads: name -> dL_guide/d raw (before the meta update).
    metrics: `train_metrics`, `guide_loss` and the horizon's own (`tangent_resets`).
  """
  update: ModelUpdate
  guided: meta_lib.GuidedState
  hypergrads: dict[str, jax.Array]
  metrics: dict[str, jax.Array]


def guided_update(params: PyTree, opt_state: Any, guided_state: meta_lib.GuidedState,
                  batch: Batch, guide_batch: Batch, rng: jax.Array, base_lr: jax.Array, *,
                  specs: Sequence[specs_lib.GuidedHParam],
                  meta_optimizer: optax.GradientTransformation,
                  **lookahead_kwargs: Any) -> GuidedOutput:
  """The greedy guided step: `lookahead_update`, then the meta update of the raw values.

  Args: as `guided_step`.
  """
  out = lookahead_update(params, opt_state, guided_state.raw, batch, guide_batch, rng, base_lr,
                         specs=specs, **lookahead_kwargs)
  new_guided, _ = meta_lib.apply_hypergradient(guided_state, out.hypergrads, specs,
                                               meta_optimizer)
  return GuidedOutput(out.update, new_guided, out.hypergrads, out.metrics)


def guided_step(params: PyTree, opt_state: Any, guided_state: meta_lib.GuidedState,
                batch: Batch, guide_batch: Batch, rng: jax.Array, base_lr: jax.Array, *,
                specs: Sequence[specs_lib.GuidedHParam],
                optimizer: optax.GradientTransformation,
                meta_optimizer: optax.GradientTransformation, forward_fn: ForwardFn,
                loss_from_outputs: LossFromOutputs, guide_loss_fn: GuideLossFn,
                loss_inputs_fn: LossInputsFn | None = None, lr_group_ids: PyTree | None = None,
                recompute_tangent: bool = False, num_microbatches: int | None = None,
                optimizer_derivative: str = AUTO
                ) -> tuple[PyTree, Any, meta_lib.GuidedState, dict[str, jax.Array]]:
  """The fused model step + exact one-step-lookahead hypergradient + meta update, as a tuple
  (`guided_update` is the same step as a `GuidedOutput`).

  Args:
    params, opt_state: model parameters and optimizer state (`inject_hyperparams` state).
    guided_state: raw guided values, meta optimizer state, counters.
    batch: train batch x; guide_batch: guide batch z.
    rng: dropout rng for `forward_fn`; base_lr: scalar schedule value at this step.
    specs: the guided hyper-parameters (validated).
    optimizer: the model optimizer; meta_optimizer: from `meta.make_meta_optimizer`.
    forward_fn: (params, batch, rng) -> outputs (float pytree, e.g. logits [B, T, V]).
    loss_from_outputs: (outputs, batch, loss_inputs) -> (loss scalar, aux metrics dict), where
      loss_inputs = loss_inputs_fn(h_loss, batch).
    guide_loss_fn: (params, guide_batch) -> scalar, deterministic.
    loss_inputs_fn: (h_loss, whole batch) -> the loss head's inputs, with h_loss the loss-side
      effective values (`label_smoothing` scalar, `data_weights` [num_ids]); default: h_loss
      itself.
    lr_group_ids: from `param_group_ids`, when the learning-rate multiplier is a vector.
    recompute_tangent: for loss-side hyper-parameters, recompute the train forward for the
      tangent (e) instead of keeping its linearisation alive through the guide pass: less peak
      memory (the train activations are freed before the guide forward; with AdamW's closed
      form the old params too, recovered from the updated state), one more forward.
    num_microbatches: gradient accumulation over M microbatches (None/1: one pass); step e)
      then re-runs each microbatch's forward (as with `recompute_tangent`).
    optimizer_derivative: 'auto' (default: the closed form where `optimizer_derivatives` has
      one for the optimizer and the guided names, the VJP otherwise), 'vjp' (`jax.vjp` of the
      optax update, any optimizer) or 'closed_form' (`optimizer_derivatives`, for optimizers
      registered there: AdamW / Adam; the same values to float32 rounding, without keeping the
      update's linearisation alive). With the LR multiplier as the only guided value the VJP
      keeps less, and is used by both 'auto' and 'closed_form'.

  Returns:
    (new_params, new_opt_state, new_guided_state, metrics). new_params/new_opt_state are the
    model step at the values before the meta update (the plain step's, guarded). metrics:
    aux metrics, `train_loss`, `guide_loss` (at new_params), `hypergrad_norm/NAME` (raw
    units), `skipped` (1.0 if any value's meta update was skipped) and `UPDATE_OK` (bool: False
    when the non-finite guard kept the old params and optimizer state).
  """
  out = guided_update(
      params, opt_state, guided_state, batch, guide_batch, rng, base_lr, specs=specs,
      meta_optimizer=meta_optimizer, optimizer=optimizer, forward_fn=forward_fn,
      loss_from_outputs=loss_from_outputs, guide_loss_fn=guide_loss_fn,
      loss_inputs_fn=loss_inputs_fn, lr_group_ids=lr_group_ids,
      recompute_tangent=recompute_tangent, num_microbatches=num_microbatches,
      optimizer_derivative=optimizer_derivative)
  skipped = (out.guided.num_skipped - guided_state.num_skipped).astype(jnp.float32)
  metrics = {**out.metrics, **hypergrad_metrics(out.hypergrads), "skipped": skipped,
             UPDATE_OK: out.update.ok}
  return out.update.params, out.update.opt_state, out.guided, metrics


def hyper_loss(raw: Mapping[str, jax.Array], params: PyTree, opt_state: Any, batch: Batch,
               guide_batch: Batch, rng: jax.Array, base_lr: jax.Array, *,
               specs: Sequence[specs_lib.GuidedHParam], optimizer: optax.GradientTransformation,
               forward_fn: ForwardFn, loss_from_outputs: LossFromOutputs,
               guide_loss_fn: GuideLossFn, loss_inputs_fn: LossInputsFn | None = None,
               lr_group_ids: PyTree | None = None,
               num_microbatches: int | None = None) -> jax.Array:
  """L_hyper(raw) composed naively (for tests and debugging): scalar guide loss after one step.

  `jax.grad(hyper_loss)` must equal the hypergradient of `guided_step` (before the meta update).
  """
  values = specs_lib.effective(specs, raw)
  out = model_update(params, opt_state, values, batch, rng, base_lr, optimizer=optimizer,
                     forward_fn=forward_fn, loss_from_outputs=loss_from_outputs,
                     loss_inputs_fn=loss_inputs_fn, lr_group_ids=lr_group_ids,
                     num_microbatches=num_microbatches, guard=False)
  return guide_loss_fn(out.params, guide_batch)
