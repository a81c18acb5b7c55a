"""Fixed per-step schedules of hyper-parameter values, for replaying a learned trajectory.

A guided run writes the effective value of every guided hyper-parameter at every step
(`guided_trajectory.jsonl`); `export.py` reduces it to knots and this module turns knots back into
a jittable `step -> value` function (piecewise-linear between knots, constant outside), so a plain
run can follow the learned schedule. Pure JAX + numpy; must not import gin, seqio or other
`gbt_t5x` packages.
"""
from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np


def piecewise_linear(steps: Sequence[float], values: Sequence[float] | Sequence[Sequence[float]]
                     ) -> Callable[[jax.Array], jax.Array]:
  """`step -> value` interpolating linearly between knots (`jnp.interp`), constant outside.

  Args:
    steps: increasing knot positions (model steps), length K >= 1.
    values: K scalars, or K vectors of equal length D (one interpolation per component).

  Returns:
    A jittable function of an integer/float step returning a float32 scalar or [D] vector.
  """
  xs = np.asarray(steps, np.float32)
  ys = np.asarray(values, np.float32)
  if xs.ndim != 1 or len(xs) == 0 or len(ys) != len(xs):
    raise ValueError(f"piecewise_linear needs K >= 1 steps and K values, got {len(xs)} steps and "
                     f"{len(ys)} values")
  if np.any(np.diff(xs) <= 0):
    raise ValueError("piecewise_linear steps must be strictly increasing")
  if not np.all(np.isfinite(ys)):
    raise ValueError("piecewise_linear values must be finite")
  xs_j, ys_j = jnp.asarray(xs), jnp.asarray(ys)

  def schedule(step: jax.Array) -> jax.Array:
    s = jnp.asarray(step, jnp.float32)
    if ys_j.ndim == 1:
      return jnp.interp(s, xs_j, ys_j)
    return jax.vmap(lambda column: jnp.interp(s, xs_j, column), in_axes=1)(ys_j)

  return schedule


def knots_from_trajectory(steps: Sequence[int], values: np.ndarray, num_knots: int
                          ) -> tuple[list[float], list]:
  """Reduces a per-step trajectory to at most `num_knots` knots (window means at window centres).

  Args:
    steps: [N] model steps of the trajectory rows (increasing).
    values: [N] or [N, D] effective values used at those steps.
    num_knots: maximum number of knots (>= 1).

  Returns:
    (knot steps, knot values) as plain Python lists, ready to be written to a gin file.
  """
  steps_arr = np.asarray(steps, np.float64)
  vals = np.asarray(values, np.float64)
  if len(steps_arr) == 0:
    raise ValueError("empty trajectory")
  windows = np.array_split(np.arange(len(steps_arr)), min(num_knots, len(steps_arr)))
  knot_steps = [float(np.mean(steps_arr[w])) for w in windows]
  knot_values = [np.mean(vals[w], axis=0).tolist() for w in windows]
  return knot_steps, knot_values
