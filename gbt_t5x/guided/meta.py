"""The meta optimizer: moves raw guided hyper-parameters along their hypergradients.

`make_meta_optimizer` builds optax Adam over the raw-value dict (optionally after global-norm
clipping of the hypergradients), with each hyper-parameter's update multiplied by its
`meta_lr_scale`. `apply_hypergradient` applies one meta step inside jit: a value whose
hypergradient is not finite keeps its raw value and its meta moments (counted per value in
`skips`; the other values of that step move as usual, and `num_skipped` counts the guided steps
that skipped at least one value); after a real step, raw values with a clip range are projected back
into it (`activations.project`), so effective values stay inside their declared range.

Imports only jax, optax, flax.struct and `gbt_t5x.guided`; must not import gin, seqio, tensorflow,
or anything from `gbt_t5x.models` / `gbt_t5x.train`.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import flax.struct
import jax
import jax.numpy as jnp
import optax

from gbt_t5x.guided import activations
from gbt_t5x.guided import specs as specs_lib


@flax.struct.dataclass
class GuidedState:
  """Guided part of the train state (checkpointed, replicated).

  Attributes:
    raw: name -> raw value array (shape `spec.shape`).
    meta_opt_state: the meta optimizer's state over `raw`.
    num_hyper_steps: int32[] guided steps taken, skipped ones included.
    num_skipped: int32[] guided steps that skipped at least one value (non-finite
      hypergradient).
    skips: name -> int32[] guided steps that skipped this value.
  """
  raw: dict[str, jax.Array]
  meta_opt_state: Any
  num_hyper_steps: jax.Array
  num_skipped: jax.Array
  skips: dict[str, jax.Array]


def _scale_by_name(scales: Mapping[str, float]) -> optax.GradientTransformation:
  """Multiplies update `name` by `scales[name]` (a stateless transformation over a dict)."""
  def init_fn(params):
    del params
    return optax.EmptyState()

  def update_fn(updates, state, params=None):
    del params
    if set(updates) != set(scales):
      raise ValueError(f"meta updates have names {sorted(updates)} but the specs have "
                       f"{sorted(scales)}")
    return {k: u * jnp.asarray(scales[k], u.dtype) for k, u in updates.items()}, state

  return optax.GradientTransformation(init_fn, update_fn)


def make_meta_optimizer(learning_rate: float | optax.Schedule,
                        specs: Sequence[specs_lib.GuidedHParam],
                        clip_norm: float | None = None, b1: float = 0.9,
                        b2: float = 0.999, eps: float = 1e-8,
                        average_every: int = 1) -> optax.GradientTransformation:
  """Adam on the raw values, per-name scaled by `meta_lr_scale`, optionally norm-clipped.

  Args:
    learning_rate: meta learning rate (raw units per step) or an optax schedule of the
      guided-step count.
    specs: the guided hyper-parameters (for the per-name scales).
    clip_norm: if set, hypergradients are clipped to this global norm before Adam.
    b1, b2: Adam decay rates of the meta optimizer.
    eps: Adam's epsilon, in hypergradient units. Adam normalises each step to about
      `learning_rate` whatever the hypergradient's size; a hypergradient much smaller than `eps`
      moves its value by only `learning_rate * |g| / eps` instead.
    average_every: K >= 1: the hypergradients of K guided steps are averaged before one meta
      step (`optax.MultiSteps`; the values stay put in between). Adam moves a value by about
      `learning_rate` per meta step whatever the hypergradient's sign-to-noise ratio, so a noisy
      hypergradient makes a random walk; averaging K of them raises the ratio by up to sqrt(K).
  """
  if clip_norm is not None and not clip_norm > 0:
    raise ValueError(f"meta clip_norm must be > 0 or None, got {clip_norm}")
  # 0 is allowed: the values stay frozen (a guided run that reproduces the plain one, to check
  # the plumbing); negative or non-finite rates cannot be right.
  if not callable(learning_rate) and not (math.isfinite(float(learning_rate))
                                          and float(learning_rate) >= 0):
    raise ValueError(f"the meta learning rate (META_LEARNING_RATE) must be finite and >= 0 (0 "
                     f"freezes the values), got {learning_rate}")
  parts = []
  if clip_norm is not None:
    parts.append(optax.clip_by_global_norm(clip_norm))
  if not eps > 0:
    raise ValueError(f"meta eps must be > 0, got {eps}")
  parts.append(optax.adam(learning_rate, b1=b1, b2=b2, eps=eps))
  parts.append(_scale_by_name({s.name: float(s.meta_lr_scale) for s in specs}))
  if int(average_every) != average_every or average_every < 1:
    raise ValueError(f"meta average_every must be an integer >= 1, got {average_every}")
  if average_every == 1:
    return optax.chain(*parts)
  return optax.MultiSteps(optax.chain(*parts),
                          every_k_schedule=int(average_every)).gradient_transformation()


def init_guided_state(specs: Sequence[specs_lib.GuidedHParam],
                      meta_optimizer: optax.GradientTransformation) -> GuidedState:
  """Initial guided state: raw values from the specs' inits, fresh meta state, zero counters."""
  raw = specs_lib.init_raw(specs)
  return GuidedState(raw=raw, meta_opt_state=meta_optimizer.init(raw),
                     num_hyper_steps=jnp.zeros((), jnp.int32),
                     num_skipped=jnp.zeros((), jnp.int32),
                     skips={s.name: jnp.zeros((), jnp.int32) for s in specs})


def project_raw(specs: Sequence[specs_lib.GuidedHParam],
                raw: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
  """Clips each raw value into its spec's raw range (see `activations.raw_bounds`)."""
  by_name = {s.name: s for s in specs}
  return {k: activations.project(by_name[k].activation, v, by_name[k].lower, by_name[k].upper)
          for k, v in raw.items()}


def all_finite(tree: Any) -> jax.Array:
  """bool[]: True iff every element of every leaf of `tree` is finite."""
  leaves = jax.tree.leaves(tree)
  if not leaves:
    return jnp.asarray(True)
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def _name_in_path(path: tuple[Any, ...], names: Sequence[str]) -> str | None:
  """The guided value a meta-state leaf belongs to (a dict key on its path), or None (shared)."""
  for entry in path:
    key = getattr(entry, "key", None)
    if key in names:
      return key
  return None


def apply_hypergradient(state: GuidedState, hypergrads: Mapping[str, jax.Array],
                        specs: Sequence[specs_lib.GuidedHParam],
                        meta_optimizer: optax.GradientTransformation
                        ) -> tuple[GuidedState, jax.Array]:
  """One meta step: raw <- project(raw + meta_update(hypergrads)), value by value.

  A value whose hypergradient has a non-finite entry, or whose meta update would not be finite
  (e.g. Adam's second moment overflowing on a huge hypergradient), is skipped: its raw value and
  its own meta moments stay as they were and `skips[name]` is incremented, while the finite values
  move
  (their update is exactly the all-finite one when every value is finite). Shared meta-state
  leaves (Adam's step count) advance when any value moves.

  Args:
    state: current guided state.
    hypergrads: name -> d L_guide / d raw, same shapes as `state.raw`.
    specs: the guided hyper-parameters.
    meta_optimizer: from `make_meta_optimizer`.

  Returns:
    (new_state, skipped) with `skipped` bool[]: True if any value was skipped; jittable (no
    Python branching on values).
  """
  if set(hypergrads) != set(state.raw):
    raise ValueError(f"hypergradients have names {sorted(hypergrads)} but the guided state has "
                     f"{sorted(state.raw)}")
  names = tuple(state.raw)
  grads_finite = {k: all_finite(g) for k, g in hypergrads.items()}
  safe = {k: jnp.where(grads_finite[k], g, jnp.zeros_like(g)).astype(state.raw[k].dtype)
          for k, g in hypergrads.items()}
  updates, new_meta = meta_optimizer.update(safe, state.meta_opt_state, state.raw)
  new_raw = project_raw(specs, optax.apply_updates(state.raw, updates))
  # A finite hypergradient can still overflow the meta optimizer (Adam's g^2 beyond float range:
  # an inf second moment would freeze that value for the rest of the run): skip it too.
  own_meta: dict[str, list[jax.Array]] = {k: [] for k in names}
  for path, leaf in jax.tree_util.tree_flatten_with_path(new_meta)[0]:
    name = _name_in_path(path, names)
    if name is not None:
      own_meta[name].append(leaf)
  finite = {k: grads_finite[k] & all_finite(new_raw[k]) & all_finite(own_meta[k])
            for k in names}
  any_finite = jnp.any(jnp.stack([finite[k] for k in names]))

  def keep_meta(path, new, old):
    name = _name_in_path(path, names)
    return jnp.where(any_finite if name is None else finite[name], new, old)

  skipped = {k: jnp.logical_not(finite[k]) for k in names}
  any_skipped = jnp.any(jnp.stack([skipped[k] for k in names]))
  return GuidedState(
      raw={k: jnp.where(finite[k], new_raw[k], state.raw[k]) for k in names},
      meta_opt_state=jax.tree_util.tree_map_with_path(keep_meta, new_meta,
                                                      state.meta_opt_state),
      num_hyper_steps=state.num_hyper_steps + 1,
      num_skipped=state.num_skipped + any_skipped.astype(jnp.int32),
      skips={k: state.skips[k] + skipped[k].astype(jnp.int32) for k in names}), any_skipped
