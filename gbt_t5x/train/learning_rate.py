"""T5X's factored learning-rate schedules: `step -> learning rate` as a product of named factors.

`create_learning_rate_scheduler('constant * rsqrt_decay', base_learning_rate=1.0,
warmup_steps=10000)` is T5X's pretraining schedule. With `s = max(0, step - step_offset)`:

    constant                 base_learning_rate
    linear_warmup            min(1, s / warmup_steps)
    rsqrt_decay              1 / sqrt(max(s, warmup_steps))
    rsqrt_normalized_decay   sqrt(warmup_steps) / sqrt(max(s, warmup_steps))
    decay_every              decay_factor ** floor(s / steps_per_decay)
    cosine_decay             max(0, 0.5 (1 + cos(pi * (p mod 1)))),
                             p = max(0, (s - warmup_steps) / steps_per_cycle)
    linear_decay             clip((total_steps - s) / (total_steps - warmup_steps), 0, 1)
                             (1 during warmup, reaching 0 at `total_steps`; this project's
                             definition, not T5X's rarely used `linear_decay`). A run shorter
                             than its warmup (total_steps <= warmup_steps, e.g. a smoke test
                             with --gin.TRAIN_STEPS=10) decays over all of it instead,
                             clip((total_steps - s) / total_steps, 0, 1), with a logged warning

and the product is floored at `min_learning_rate`. Must not import gin, seqio, tensorflow or
anything from `gbt_t5x.models`.
"""
from __future__ import annotations

import logging
from typing import Callable

import jax
import jax.numpy as jnp

VALID_FACTORS = ("constant", "linear_warmup", "rsqrt_decay", "rsqrt_normalized_decay",
                 "decay_every", "cosine_decay", "linear_decay")
_NEEDS_WARMUP = ("linear_warmup", "rsqrt_decay", "rsqrt_normalized_decay")


def parse_factors(factors: str) -> tuple[str, ...]:
  """Splits `'a * b * c'` into factor names, validating each against `VALID_FACTORS`."""
  names = tuple(n.strip() for n in factors.split("*"))
  for name in names:
    if name not in VALID_FACTORS:
      raise ValueError(f"unknown learning-rate factor {name!r} in {factors!r}; valid factors: "
                       f"{', '.join(VALID_FACTORS)}")
  return names


def create_learning_rate_scheduler(
    factors: str = "constant * linear_warmup * rsqrt_decay",
    base_learning_rate: float = 0.5,
    warmup_steps: int = 1000,
    decay_factor: float = 0.5,
    steps_per_decay: int = 20000,
    steps_per_cycle: int = 100000,
    step_offset: int = 0,
    min_learning_rate: float = 1e-8,
    total_steps: int | None = None,
) -> Callable[[jax.Array], jax.Array]:
  """A jittable `step -> learning rate` (float32 scalar) multiplying the named factors.

  Args:
    factors: factor names joined by '*' (see the module docstring).
    base_learning_rate: the `constant` factor (learning-rate units).
    warmup_steps: steps of linear warmup / the rsqrt plateau (>= 1 for the warmup and rsqrt
      factors).
    decay_factor: multiplier applied every `steps_per_decay` steps by `decay_every`.
    steps_per_decay: period (steps) of `decay_every`.
    steps_per_cycle: cosine period (steps) of `cosine_decay`.
    step_offset: the schedule starts at this step (earlier steps act as step 0).
    min_learning_rate: floor of the result.
    total_steps: end of `linear_decay` (required, and > warmup_steps, when it is used).

  Returns:
    fn(step: int or int32/float array scalar) -> float32 scalar array.
  """
  names = parse_factors(factors)
  if warmup_steps < 1 and any(n in _NEEDS_WARMUP for n in names):
    raise ValueError(f"warmup_steps must be >= 1 for factors {factors!r}, got {warmup_steps}")
  if "decay_every" in names and steps_per_decay < 1:
    raise ValueError(f"steps_per_decay must be >= 1, got {steps_per_decay}")
  if "cosine_decay" in names and steps_per_cycle < 1:
    raise ValueError(f"steps_per_cycle must be >= 1, got {steps_per_cycle}")
  if "linear_decay" in names:
    if total_steps is None:
      raise ValueError("factor 'linear_decay' needs total_steps (the step where the rate hits 0)")
    if total_steps < 1:
      raise ValueError(f"linear_decay needs total_steps >= 1, got {total_steps}")
  decay_start = warmup_steps
  if "linear_decay" in names and total_steps <= warmup_steps:
    logging.warning("linear_decay: total_steps %d <= warmup_steps %d, so warmup never ends; "
                    "decaying linearly over all %d steps instead", total_steps, warmup_steps,
                    total_steps)
    decay_start = 0

  def step_fn(step: jax.Array) -> jax.Array:
    s = jnp.maximum(0.0, jnp.asarray(step, jnp.float32) - step_offset)
    ret = jnp.ones((), jnp.float32)
    for name in names:
      if name == "constant":
        ret = ret * base_learning_rate
      elif name == "linear_warmup":
        ret = ret * jnp.minimum(1.0, s / warmup_steps)
      elif name == "rsqrt_decay":
        ret = ret / jnp.sqrt(jnp.maximum(s, float(warmup_steps)))
      elif name == "rsqrt_normalized_decay":
        ret = ret * jnp.sqrt(float(warmup_steps)) / jnp.sqrt(jnp.maximum(s, float(warmup_steps)))
      elif name == "decay_every":
        ret = ret * decay_factor ** jnp.floor_divide(s, float(steps_per_decay))
      elif name == "cosine_decay":
        progress = jnp.maximum(0.0, (s - warmup_steps) / float(steps_per_cycle))
        ret = ret * jnp.maximum(0.0, 0.5 * (1.0 + jnp.cos(jnp.pi * jnp.mod(progress, 1.0))))
      elif name == "linear_decay":
        ret = ret * jnp.clip((total_steps - s) / float(total_steps - decay_start), 0.0, 1.0)
    return jnp.maximum(ret, min_learning_rate).astype(jnp.float32)

  return step_fn
