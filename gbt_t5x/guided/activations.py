"""Activations mapping raw (unconstrained) hyper-parameter values to effective values, and back.

A guided hyper-parameter is stored as a raw value `phi` that the meta optimizer moves freely; the
optimizer or loss sees the effective value `h = activate(name, phi, lower, upper)`:

- `exp`:      h = exp(phi)                                  (positive; log-scale meta steps)
- `softplus`: h = log(1 + exp(phi))                         (positive; ~linear for large h)
- `sigmoid`:  h = lower + (upper - lower) * sigmoid(phi)    (open interval (lower, upper);
              lower/upper default to 0 and 1)
- `linear`:   h = phi                                       (bounds enforced by projection)

Every activation has an exact inverse (`inverse`), used to turn an init given in the effective
space into a raw value. Optional bounds on `exp`, `softplus` and `linear` are a clip range that the
meta optimizer enforces by projecting the raw value into `raw_bounds(...)` after each update, so
the forward map stays smooth and differentiable everywhere. Sigmoid bounds are built in.

Pure jax.numpy; must not import gin, seqio, tensorflow, flax or anything from `gbt_t5x`.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

ACTIVATIONS = ("exp", "softplus", "sigmoid", "linear")
POSITIVE_ACTIVATIONS = ("exp", "softplus")


def _check_name(name: str) -> None:
  if name not in ACTIVATIONS:
    raise ValueError(f"unknown activation {name!r}; valid activations: {list(ACTIVATIONS)}")


def sigmoid_range(lower: float | None, upper: float | None) -> tuple[float, float]:
  """The (lower, upper) interval of a sigmoid activation, defaulting to (0, 1)."""
  lo = 0.0 if lower is None else float(lower)
  hi = 1.0 if upper is None else float(upper)
  return lo, hi


def activate(name: str, raw: jax.Array, lower: float | None = None,
             upper: float | None = None) -> jax.Array:
  """Effective value of a raw hyper-parameter.

  Args:
    name: one of `ACTIVATIONS`.
    raw: raw values, any shape, float.
    lower, upper: the declared range (effective units). Only `sigmoid` uses them here; for the
      other activations they are enforced by `raw_bounds` projection in the meta update.

  Returns:
    Effective values, same shape and dtype as `raw`.
  """
  _check_name(name)
  raw = jnp.asarray(raw)
  if name == "exp":
    return jnp.exp(raw)
  if name == "softplus":
    return jax.nn.softplus(raw)
  if name == "sigmoid":
    lo, hi = sigmoid_range(lower, upper)
    return lo + (hi - lo) * jax.nn.sigmoid(raw)
  return raw


def _softplus_inverse(y: jax.Array) -> jax.Array:
  # log(exp(y) - 1) = y + log(1 - exp(-y)) = y + log(-expm1(-y)): no overflow for large y, and
  # expm1 keeps full precision for small y (where the result is ~log(y)).
  return y + jnp.log(-jnp.expm1(-y))


def inverse(name: str, effective: jax.Array, lower: float | None = None,
            upper: float | None = None) -> jax.Array:
  """Raw value whose activation is `effective` (exact inverse of `activate`).

  Args:
    name: one of `ACTIVATIONS`.
    effective: effective values, any shape. Must lie in the activation's open range (positive
      for exp/softplus, strictly inside (lower, upper) for sigmoid); values on the boundary map to
      +-inf.
    lower, upper: as for `activate`.

  Returns:
    Raw values, same shape as `effective`.
  """
  _check_name(name)
  y = jnp.asarray(effective)
  if not jnp.issubdtype(y.dtype, jnp.floating):
    y = y.astype(jnp.result_type(float))
  if name == "exp":
    return jnp.log(y)
  if name == "softplus":
    return _softplus_inverse(y)
  if name == "sigmoid":
    lo, hi = sigmoid_range(lower, upper)
    p = (y - lo) / (hi - lo)
    return jnp.log(p) - jnp.log1p(-p)  # logit
  return y


def raw_bounds(name: str, lower: float | None, upper: float | None) -> tuple[float, float]:
  """Interval (raw units) that the raw value is projected into after each meta update.

  `sigmoid` needs no projection (returns (-inf, inf)); for `exp`/`softplus` a bound <= 0 is no
  bound. Returns Python floats (possibly infinite).
  """
  _check_name(name)
  if name == "sigmoid":
    return -math.inf, math.inf
  lo, hi = -math.inf, math.inf
  if name == "linear":
    if lower is not None:
      lo = float(lower)
    if upper is not None:
      hi = float(upper)
    return lo, hi
  if lower is not None and lower > 0:
    lo = math.log(lower) if name == "exp" else lower + math.log(-math.expm1(-lower))
  if upper is not None and upper > 0:
    hi = math.log(upper) if name == "exp" else upper + math.log(-math.expm1(-upper))
  return lo, hi


def project(name: str, raw: jax.Array, lower: float | None, upper: float | None) -> jax.Array:
  """Clips raw values into `raw_bounds(name, lower, upper)`; same shape and dtype as `raw`."""
  lo, hi = raw_bounds(name, lower, upper)
  raw = jnp.asarray(raw)
  if lo == -math.inf and hi == math.inf:
    return raw
  return jnp.clip(raw, lo, hi).astype(raw.dtype)
