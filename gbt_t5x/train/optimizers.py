"""Model optimizers whose float hyper-parameters are arrays in the optimizer state.

Every optimizer here is built with `optax.inject_hyperparams`, so each float hyper-parameter
(learning rate, betas, epsilons, decay rates, ...) lives in `opt_state.hyperparams` as a float32
array that the model step overwrites (`gbt_t5x.guided.hypergrad.set_hyperparams`) and the guided
step differentiates through.
Integers, booleans, masks and dtypes are static (`static_args`), never arrays. The learning rate is
a placeholder (0.0): the trainer sets `hyperparams['learning_rate']` every step from its schedule.

`adafactor` is T5X's Adafactor configuration expressed with `optax.adafactor` (which follows the
same algorithm): per step t (counted from 0)

    β2_t = 1 - (t + 1)^(-decay_rate)                        # decay_rate 0.8
    v    = β2_t v + (1 - β2_t) (g² + eps)                   # factored into row/col means for
                                                            # params with two dims >= 128
    u    = g / sqrt(v̂);  u /= max(1, rms(u) / clipping_threshold)
    u   *= learning_rate * max(rms(param), 1e-3)            # multiply_by_parameter_scale, ε2
    m    = momentum m + (1 - momentum) u  (only if momentum is not None; no debiasing)
    Δθ   = -(u or m) - weight_decay_rate θ                  # decay not scaled by the lr (T5X)

Must not import gin, seqio, tensorflow or anything from `gbt_t5x.models`.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import optax

from gbt_t5x.guided import optimizer_derivatives

# A weight-decay mask: a pytree of bools like the params (or a prefix), or params -> such a tree.
Mask = Any | Callable[[Any], Any] | None

HYPERPARAM_DTYPE = jnp.float32


# optax's default eps_root is 0, which makes the *derivative* of the Adam update infinite
# (sqrt'(0)) wherever a gradient is exactly 0 and v is 0 -- e.g. embedding rows of tokens that have
# not appeared yet -- so every hypergradient through the update (b1, b2, label smoothing, data
# weights) would be NaN and guided steps skipped. 1e-30 keeps it finite and changes no update
# measurably (it matters only where v < 1e-24).
EPS_ROOT = 1e-30

def _adamw_inner(learning_rate: float, b1: float, b2: float, eps: float, eps_root: float,
                 weight_decay: float, mask: Mask = None) -> optax.GradientTransformation:
  return optax.adamw(learning_rate, b1=b1, b2=b2, eps=eps, eps_root=eps_root,
                     weight_decay=weight_decay, mask=mask)


def _adam_inner(learning_rate: float, b1: float, b2: float, eps: float,
                eps_root: float) -> optax.GradientTransformation:
  return optax.adam(learning_rate, b1=b1, b2=b2, eps=eps, eps_root=eps_root)


# ---------------------------------------------------------------------------- Adafactor
# optax's `scale_by_factored_rms` divides the gradient by sqrt of its second-moment estimate,
# written `x ** -0.5`, whose derivative -x^-1.5 / 2 overflows float32 (and bfloat16) once
# x < ~2e-26. Entries whose gradient is always 0 (a relative-position bucket that never occurs,
# vocabulary rows not yet seen) keep x at eps = 1e-30, so the derivative of the update w.r.t.
# `decay_rate` (and anything else upstream of x) is 0 * inf = NaN there, every guided step is
# skipped and the guided values never move. The true derivative there is 0 (the update is
# grad * x^-1/2 = 0 whatever x is). `_rescale` is the same product with the derivative written
# through the output, d(g x^-1/2) = x^-1/2 dg - (g x^-1/2) dx / (2x), which is finite wherever
# the update is. The transformation below is optax's algorithm (same state, same arithmetic in
# the forward pass, so runs are unchanged) with that product; it is hand-written only because
# optax offers no hook for the derivative.
@functools.partial(jax.custom_jvp, nondiff_argnums=(3, 4))
def _rescale(grad: jax.Array, row: jax.Array, col: jax.Array, row_axis: int | None,
             col_axis: int | None) -> jax.Array:
  """grad * row^-1/2 * col^-1/2 (factored: row/col broadcast along `row_axis`/`col_axis`;
  unfactored: `row` is the full second moment and `col` a scalar 1)."""
  return grad * _expand(row ** -0.5, row_axis) * _expand(col ** -0.5, col_axis)


def _expand(x: jax.Array, axis: int | None) -> jax.Array:
  return x if axis is None else jnp.expand_dims(x, axis)


@_rescale.defjvp
def _rescale_jvp(row_axis, col_axis, primals, tangents):
  grad, row, col = primals
  d_grad, d_row, d_col = tangents
  out = _rescale(grad, row, col, row_axis, col_axis)
  d_out = (d_grad * _expand(row ** -0.5, row_axis) * _expand(col ** -0.5, col_axis)
           - 0.5 * out * _expand(d_row / row, row_axis)
           - 0.5 * out * _expand(d_col / col, col_axis))
  return out, d_out


def scale_by_factored_rms(factored: bool, decay_rate: jax.Array, min_dim_size_to_factor: int,
                          eps: jax.Array) -> optax.GradientTransformation:
  """optax's `scale_by_factored_rms` (decay offset 0) with a float32-safe derivative.

  State: `optax.FactoredState` exactly as optax keeps it. Per step t (count from 0),
  beta2_t = 1 - (t + 1)^-decay_rate and v = beta2_t v + (1 - beta2_t)(g^2 + eps), factored into
  row and column means for params with two dims >= `min_dim_size_to_factor`; the update is
  g / sqrt(v) (factored: g / sqrt(v_row / mean(v_row)) / sqrt(v_col)).
  """
  inner = optax.scale_by_factored_rms(factored=factored, decay_rate=decay_rate,
                                      min_dim_size_to_factor=min_dim_size_to_factor,
                                      epsilon=eps)

  def update_fn(grads, state, params):
    if params is None:
      raise ValueError("Adafactor needs the params in update()")
    t = jnp.array(state.count + 1, jnp.float32)
    beta2 = 1.0 - t ** (-decay_rate)

    def one(grad, v_row, v_col, v, param):
      dims = optimizer_derivatives.factored_dims(param.shape, factored, min_dim_size_to_factor)
      dtype = param.dtype
      empty = jnp.zeros((1,), dtype=dtype)
      grad_sqr = jnp.square(grad) + eps
      if dims is not None:
        d1, d0 = dims
        new_v_row = (beta2 * v_row + (1.0 - beta2) * jnp.mean(grad_sqr, axis=d0)).astype(dtype)
        new_v_col = (beta2 * v_col + (1.0 - beta2) * jnp.mean(grad_sqr, axis=d1)).astype(dtype)
        reduced_d1 = d1 - 1 if d1 > d0 else d1
        row = new_v_row / jnp.mean(new_v_row, axis=reduced_d1, keepdims=True)
        return _rescale(grad, row, new_v_col, d0, d1), new_v_row, new_v_col, empty
      new_v = (beta2 * v + (1.0 - beta2) * grad_sqr).astype(dtype)
      return _rescale(grad, new_v, jnp.ones((), dtype), None, None), empty, empty, new_v

    out = jax.tree.map(one, grads, state.v_row, state.v_col, state.v, params)
    is_out = lambda x: isinstance(x, tuple) and len(x) == 4  # noqa: E731
    pick = lambda i: jax.tree.map(lambda o: o[i], out, is_leaf=is_out)  # noqa: E731
    new_state = state._replace(count=optax.safe_increment(state.count), v_row=pick(1),
                               v_col=pick(2), v=pick(3))
    return pick(0), new_state

  return optax.GradientTransformation(inner.init, update_fn)


def _adafactor_inner(learning_rate: float, decay_rate: float, clipping_threshold: float | None,
                     momentum: float | None, weight_decay_rate: float | None, eps: float,
                     multiply_by_parameter_scale: bool, min_dim_size_to_factor: int,
                     factored: bool, weight_decay_mask: Mask = None
                     ) -> optax.GradientTransformation:
  """optax.adafactor's chain (decay offset 0, float32 momentum) on `scale_by_factored_rms`."""
  parts = [scale_by_factored_rms(factored, decay_rate, min_dim_size_to_factor, eps)]
  if clipping_threshold is not None:
    parts.append(optax.clip_by_block_rms(clipping_threshold))
  parts.append(optax.scale_by_learning_rate(learning_rate, flip_sign=False))
  if multiply_by_parameter_scale:
    parts.append(optax.scale_by_param_block_rms())
  if momentum is not None:
    parts.append(optax.ema(momentum, debias=False, accumulator_dtype=jnp.float32))
  if weight_decay_rate is not None:
    parts.append(optax.add_decayed_weights(weight_decay_rate, mask=weight_decay_mask))
  parts.append(optax.scale(-1))
  return optax.chain(*parts)


def _check_range(name: str, value: float | None, low: float, high: float,
                 high_open: bool = True) -> None:
  if value is None:
    return
  bad = value < low or (value >= high if high_open else value > high)
  if bad:
    bracket = ")" if high_open else "]"
    raise ValueError(f"{name} must be in [{low}, {high}{bracket}, got {value}")


def adamw(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8, weight_decay: float = 0.0,
          mask: Mask = None, eps_root: float = EPS_ROOT) -> optax.GradientTransformation:
  """optax AdamW with injectable hyper-parameters.

  Hyper-parameters (float32 scalars in `opt_state.hyperparams`): `learning_rate` (placeholder
  0.0, set by the trainer every step), `b1`, `b2`, `eps`, `eps_root`, `weight_decay` (decoupled,
  multiplied by the learning rate as in optax/Loshchilov & Hutter).

  Args:
    b1, b2: moment decay rates in [0, 1).
    eps: added to sqrt(v̂) in the denominator (> 0 recommended).
    weight_decay: decoupled decay coefficient (per unit learning rate).
    mask: optional pytree of bools (or params -> pytree) selecting the params to decay.
    eps_root: added to v̂ inside the square root (default `EPS_ROOT`, see there).
  """
  _check_range("b1", b1, 0.0, 1.0)
  _check_range("b2", b2, 0.0, 1.0)
  _check_range("eps", eps, 0.0, float("inf"))
  _check_range("weight_decay", weight_decay, 0.0, float("inf"))
  optimizer = optax.inject_hyperparams(_adamw_inner, static_args=("mask",),
                                       hyperparam_dtype=HYPERPARAM_DTYPE)(
      learning_rate=0.0, b1=float(b1), b2=float(b2), eps=float(eps), eps_root=float(eps_root),
      weight_decay=float(weight_decay), mask=mask)
  return optimizer_derivatives.register(
      optimizer, optimizer_derivatives.ClosedForm(optimizer_derivatives.ADAMW, mask))


def adam(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
         eps_root: float = EPS_ROOT) -> optax.GradientTransformation:
  """optax Adam (no weight decay) with injectable `learning_rate`, `b1`, `b2`, `eps`, `eps_root`.

  See `adamw` for the meaning of the arguments; `learning_rate` is a 0.0 placeholder.
  """
  _check_range("b1", b1, 0.0, 1.0)
  _check_range("b2", b2, 0.0, 1.0)
  _check_range("eps", eps, 0.0, float("inf"))
  optimizer = optax.inject_hyperparams(_adam_inner, hyperparam_dtype=HYPERPARAM_DTYPE)(
      learning_rate=0.0, b1=float(b1), b2=float(b2), eps=float(eps), eps_root=float(eps_root))
  return optimizer_derivatives.register(
      optimizer, optimizer_derivatives.ClosedForm(optimizer_derivatives.ADAMW))


def adafactor(decay_rate: float = 0.8, momentum: float | None = None,
              clipping_threshold: float | None = 1.0, weight_decay_rate: float | None = None,
              multiply_by_parameter_scale: bool = True, min_dim_size_to_factor: int = 128,
              eps: float = 1e-30, factored: bool = True,
              weight_decay_mask: Mask = None) -> optax.GradientTransformation:
  """Adafactor as T5X configures it, with injectable float hyper-parameters.

  Hyper-parameters in `opt_state.hyperparams` (float32 scalars): `learning_rate` (placeholder
  0.0), `decay_rate`, `eps` (ε1, added to g²), and — only when not None — `clipping_threshold`,
  `momentum` (β1 of an un-debiased EMA of the scaled updates) and `weight_decay_rate` (per step,
  not multiplied by the learning rate, as in T5X). Static: `multiply_by_parameter_scale` (scale
  the step by max(rms(param), 1e-3)), `min_dim_size_to_factor` (factor the second moment over the
  two largest dims when the second largest is >= this), `factored`, `weight_decay_mask`.

  Args:
    decay_rate: exponent of the second-moment decay β2_t = 1 - (t+1)^-decay_rate (> 0).
    momentum: None (T5X default: no first moment, no state) or a rate in [0, 1).
    clipping_threshold: update-RMS clipping threshold (>= 1) or None for no clipping.
    weight_decay_rate: None or a per-step decay coefficient >= 0.
    multiply_by_parameter_scale: relative step size (T5X default True).
    min_dim_size_to_factor: see above (int, T5X default 128).
    eps: ε1 regulariser added to squared gradients (T5X default 1e-30).
    factored: use factored second moments for eligible params.
    weight_decay_mask: optional pytree of bools (or params -> pytree) selecting params to decay.
  """
  if decay_rate <= 0:
    raise ValueError(f"decay_rate must be > 0, got {decay_rate}")
  _check_range("momentum", momentum, 0.0, 1.0)
  if clipping_threshold is not None and clipping_threshold < 1.0:
    raise ValueError(f"clipping_threshold must be >= 1 or None, got {clipping_threshold}")
  _check_range("weight_decay_rate", weight_decay_rate, 0.0, float("inf"))
  if int(min_dim_size_to_factor) != min_dim_size_to_factor or min_dim_size_to_factor < 1:
    raise ValueError(f"min_dim_size_to_factor must be a positive int, got "
                     f"{min_dim_size_to_factor}")
  as_float = lambda v: None if v is None else float(v)  # noqa: E731
  optimizer = optax.inject_hyperparams(
      _adafactor_inner,
      static_args=("multiply_by_parameter_scale", "min_dim_size_to_factor", "factored",
                   "weight_decay_mask"),
      hyperparam_dtype=HYPERPARAM_DTYPE)(
          learning_rate=0.0, decay_rate=float(decay_rate),
          clipping_threshold=as_float(clipping_threshold), momentum=as_float(momentum),
          weight_decay_rate=as_float(weight_decay_rate), eps=float(eps),
          multiply_by_parameter_scale=bool(multiply_by_parameter_scale),
          min_dim_size_to_factor=int(min_dim_size_to_factor), factored=bool(factored),
          weight_decay_mask=weight_decay_mask)
  if momentum is not None:  # A first moment: no closed form (the guided step takes the VJP).
    return optimizer
  return optimizer_derivatives.register(optimizer, optimizer_derivatives.ClosedForm(
      optimizer_derivatives.ADAFACTOR, weight_decay_mask, optimizer_derivatives.AdafactorOptions(
          factored=bool(factored), min_dim_size_to_factor=int(min_dim_size_to_factor),
          multiply_by_parameter_scale=bool(multiply_by_parameter_scale),
          clipping=clipping_threshold is not None, weight_decay=weight_decay_rate is not None)))


def hyperparam_names(optimizer: optax.GradientTransformation, params: Any) -> tuple[str, ...]:
  """Sorted names of the optimizer's injectable hyper-parameters.

  Args:
    optimizer: an `optax.inject_hyperparams` transformation (e.g. from `adamw`, `adafactor`).
    params: the params pytree (arrays or `jax.ShapeDtypeStruct`s); only shapes are used
      (`jax.eval_shape`, nothing is allocated).
  """
  state = jax.eval_shape(optimizer.init, params)
  hyperparams = getattr(state, "hyperparams", None)
  if not isinstance(hyperparams, Mapping):
    raise ValueError("optimizer state has no `hyperparams` dict: build the optimizer with "
                     "optax.inject_hyperparams")
  return tuple(sorted(hyperparams))
