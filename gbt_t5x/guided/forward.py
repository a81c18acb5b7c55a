"""Long-horizon hypergradients: forward-mode tangents carried along the trajectory, damped by mu.

Notation as in `hypergrad.py` (docs/DESIGN.md, "The method"). Write one model step as
(theta', s') = Phi(theta, s, phi; x). The greedy method differentiates only the last step. This
module carries, for every guided scalar phi_i (each entry of a vector value counts), the tangent

    Z_i = d(theta, s) / d phi_i,   updated at every model step by
    Z_i <- mu * dPhi/d(theta, s) . Z_i + dPhi/d phi_i          (one JVP of Phi per scalar)

and gives, at a guided step, dL_guide(theta')/d phi_i = <grad L_guide(theta'), Z_i[theta]>.
mu = 0 is the greedy one-step lookahead exactly; mu = 1 is the exact derivative of the guide
loss after T steps with phi held constant over them (RTHO, Franceschi et al. 2017); 0 < mu < 1
forgets old steps (MARTHE, Donini et al. 2020). When phi moves, Z is kept (the usual online
approximation). A scalar's tangent that stops being finite (or whose hypergradient overflows) is
reset to zero, i.e. its horizon restarts at that step; the metric `tangent_resets` counts them.

Cost: `jax.linearize` of the whole model step (a forward and backward with their residuals, the
primal computed once), then one tangent pass per guided scalar (a forward-over-reverse
Hessian-vector product of the train loss plus the elementwise optimizer update); memory: one
params-and-optimizer-state-sized tangent per scalar, kept in the train state. Only the float
leaves of the optimizer state carry tangents (counts are integers).

Imports only jax, optax and `gbt_t5x.guided`; must not import gin, seqio, tensorflow, or anything
from `gbt_t5x.models` / `gbt_t5x.train`.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gbt_t5x.guided import hypergrad
from gbt_t5x.guided import meta as meta_lib
from gbt_t5x.guided import specs as specs_lib

PyTree = Any
# One entry per guided scalar: (params tangent, [float optimizer-state leaf tangents]).
Tangents = tuple[tuple[PyTree, list[jax.Array]], ...]

HORIZONS = ("greedy", "forward")


def check_horizon(horizon: str, mu: float, num_microbatches: int | None) -> None:
  """Raises a one-line ValueError unless (horizon, mu) is usable."""
  if horizon not in HORIZONS:
    raise ValueError(f"hypergradient horizon must be one of {list(HORIZONS)}, got {horizon!r}")
  if not 0.0 <= float(mu) <= 1.0:
    raise ValueError(f"hypergradient damping mu must be in [0, 1], got {mu}")
  if horizon == "forward" and num_microbatches and num_microbatches > 1:
    raise ValueError("the 'forward' hypergradient horizon does not support num_microbatches > 1; "
                     "use horizon 'greedy' or no microbatches")


def scalar_index(specs: Sequence[specs_lib.GuidedHParam]) -> list[tuple[str, tuple[int, ...]]]:
  """(spec name, entry index) of every guided scalar, in tangent order."""
  return [(s.name, idx) for s in specs for idx in np.ndindex(*s.shape)]


def _is_float(x: Any) -> bool:
  return jnp.issubdtype(jnp.asarray(x).dtype, jnp.floating)


def float_leaves(opt_state: Any) -> list[jax.Array]:
  """The float leaves of an optimizer state, in tree order (the ones that carry tangents)."""
  return [x for x in jax.tree.leaves(opt_state) if _is_float(x)]


def with_float_leaves(opt_state: Any, floats: Sequence[jax.Array]) -> Any:
  """`opt_state` with its float leaves replaced, in tree order, by `floats`."""
  leaves, treedef = jax.tree.flatten(opt_state)
  floats = iter(floats)
  return jax.tree.unflatten(treedef, [next(floats) if _is_float(x) else x for x in leaves])


def init_tangents(specs: Sequence[specs_lib.GuidedHParam], params: PyTree,
                  opt_state: Any) -> Tangents:
  """Zero tangents (a fresh trajectory) for every guided scalar."""
  zeros = lambda: (jax.tree.map(jnp.zeros_like, params),  # noqa: E731
                   [jnp.zeros_like(x) for x in float_leaves(opt_state)])
  return tuple(zeros() for _ in scalar_index(specs))


def _unit(raw: Mapping[str, jax.Array], name: str, idx: tuple[int, ...]) -> dict[str, jax.Array]:
  return {k: (jnp.zeros_like(v).at[idx].set(1) if k == name else jnp.zeros_like(v))
          for k, v in raw.items()}


def forward_step(params: PyTree, opt_state: Any, raw: Mapping[str, jax.Array],
                 tangents: Tangents, batch: Mapping[str, jax.Array], rng: jax.Array,
                 base_lr: jax.Array, *, mu: float, specs: Sequence[specs_lib.GuidedHParam],
                 **step_kwargs: Any) -> tuple[PyTree, Any, Tangents, dict[str, jax.Array]]:
  """The (unguarded) model step at the raw values' effective values, with the tangents carried
  through it.

  Args:
    params, opt_state: model parameters and optimizer state.
    raw: the raw guided values (name -> array).
    tangents: Z before the step (from `init_tangents` or a previous step).
    batch, rng, base_lr: as `hypergrad.model_update`.
    mu: damping of the carried tangent in [0, 1].
    specs: the guided hyper-parameters.
    **step_kwargs: `hypergrad.model_update`'s keyword arguments (optimizer, forward_fn,
      loss_from_outputs, loss_inputs_fn, lr_group_ids, num_microbatches).

  Returns:
    (new_params, new_opt_state, new_tangents, metrics); params and optimizer state are exactly
    `hypergrad.model_update`'s at the effective values; metrics are its metrics and
    `tangent_resets`.
  """
  def phi(p, s_float, r):
    out = hypergrad.model_update(p, with_float_leaves(opt_state, s_float),
                                 specs_lib.effective(specs, r), batch, rng, base_lr, guard=False,
                                 **step_kwargs)
    return (out.params, float_leaves(out.opt_state)), (out.opt_state, out.metrics)

  (new_params, _), step_jvp, (new_opt_state, metrics) = jax.linearize(
      phi, params, float_leaves(opt_state), dict(raw), has_aux=True)
  mu = jnp.asarray(mu, jnp.result_type(float))
  scale = lambda tree: jax.tree.map(lambda z: (mu * z).astype(z.dtype), tree)  # noqa: E731
  new_tangents = tuple(
      step_jvp(scale(z_params), scale(z_opt), _unit(raw, name, idx))
      for (z_params, z_opt), (name, idx) in zip(tangents, scalar_index(specs)))
  new_tangents, resets = reset_tangents(new_tangents, [_all_finite(z) for z in new_tangents])
  metrics = dict(metrics, tangent_resets=resets)
  return new_params, new_opt_state, new_tangents, metrics


def forward_update(params: PyTree, opt_state: Any, raw: Mapping[str, jax.Array],
                   tangents: Tangents, batch: Mapping[str, jax.Array], rng: jax.Array,
                   base_lr: jax.Array, *, mu: float, specs: Sequence[specs_lib.GuidedHParam],
                   **step_kwargs: Any
                   ) -> tuple[hypergrad.ModelUpdate, Tangents, dict[str, jax.Array]]:
  """`forward_step` under the model step's non-finite guard (`hypergrad.guard_update`, 'where':
  the update is already materialised by the linearisation).

  Args: as `forward_step`.

  Returns:
    (`hypergrad.ModelUpdate`, new tangents (dropped by the model step with the update when
    `ok` is False), metrics).
  """
  new_params, new_opt_state, new_tangents, metrics = forward_step(
      params, opt_state, raw, tangents, batch, rng, base_lr, mu=mu, specs=specs, **step_kwargs)
  update, _ = hypergrad.guard_update(metrics["train_loss"], params, opt_state,
                                     lambda: (new_params, new_opt_state, None),
                                     mode=hypergrad.WHERE)
  return update, new_tangents, metrics


def guided_update(params: PyTree, opt_state: Any, guided_state: meta_lib.GuidedState,
                  tangents: Tangents, batch: Mapping[str, jax.Array],
                  guide_batch: Mapping[str, jax.Array], rng: jax.Array, base_lr: jax.Array, *,
                  mu: float, specs: Sequence[specs_lib.GuidedHParam],
                  meta_optimizer: optax.GradientTransformation, guide_loss_fn: Any,
                  **step_kwargs: Any) -> tuple[hypergrad.GuidedOutput, Tangents]:
  """The long-horizon guided step, structured as the greedy `hypergrad.guided_update`: the
  guarded model step (with the tangents), the hypergradient at its params, the meta update.

  A tangent whose hypergradient is not finite is reset (`finite_contractions`), counted in the
  metric `tangent_resets` with the step's own resets.

  Args:
    params, opt_state, tangents, batch, rng, base_lr, mu, specs, **step_kwargs: as
      `forward_step`; guided_state: raw values and meta optimizer state.
    guide_batch: the guide batch z; meta_optimizer: from `meta.make_meta_optimizer`.
    guide_loss_fn: (params, guide_batch) -> scalar.

  Returns:
    (`hypergrad.GuidedOutput` (metrics also hold `guide_loss`), the tangents after the step).
  """
  update, tangents, metrics = forward_update(params, opt_state, guided_state.raw, tangents,
                                             batch, rng, base_lr, mu=mu, specs=specs,
                                             **step_kwargs)
  guide_loss, hypergrads = hypergradient(update.params, tangents, guided_state.raw, guide_batch,
                                         specs=specs, guide_loss_fn=guide_loss_fn)
  new_guided, _ = meta_lib.apply_hypergradient(guided_state, hypergrads, specs, meta_optimizer)
  tangents, resets = reset_tangents(tangents, finite_contractions(hypergrads, specs))
  metrics = dict(metrics, tangent_resets=metrics["tangent_resets"] + resets,
                 guide_loss=guide_loss)
  return hypergrad.GuidedOutput(update, new_guided, hypergrads, metrics), tangents


def _all_finite(tree: PyTree) -> jax.Array:
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def reset_tangents(tangents: Tangents, keep: Sequence[jax.Array]) -> tuple[Tangents, jax.Array]:
  """Each scalar's tangent where `keep[i]` (a bool scalar), else zeros (its horizon restarts).

  Used when a tangent stops being finite: with mu near 1 and a step Jacobian that expands, Z
  grows geometrically until it overflows, and a non-finite Z would stay non-finite (and every
  later hypergradient skipped) for the rest of the run.

  Returns:
    (tangents, number of scalars reset as a float32 scalar).
  """
  out = tuple(jax.tree.map(lambda z, k=k: jnp.where(k, z, jnp.zeros_like(z)), tangent)
              for tangent, k in zip(tangents, keep))
  resets = sum((1.0 - k.astype(jnp.float32)) for k in keep) if keep else jnp.float32(0)
  return out, jnp.asarray(resets, jnp.float32)


def hypergradient(params: PyTree, tangents: Tangents, raw: Mapping[str, jax.Array],
                  guide_batch: Mapping[str, jax.Array], *,
                  specs: Sequence[specs_lib.GuidedHParam], guide_loss_fn: Any
                  ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """(guide loss at `params`, name -> dL_guide/d raw) from the carried tangents Z[theta].

  Args:
    params: the params after the model step (theta').
    tangents: Z after that step.
    raw: the raw values (for shapes and dtypes).
    guide_batch: the guide batch z.
    specs: the guided hyper-parameters.
    guide_loss_fn: (params, guide_batch) -> scalar.
  """
  guide_loss, v = jax.value_and_grad(guide_loss_fn)(params, guide_batch)
  grads = {k: jnp.zeros_like(x) for k, x in raw.items()}
  for (z_params, _), (name, idx) in zip(tangents, scalar_index(specs)):
    contraction = sum(jnp.vdot(a, b) for a, b in zip(jax.tree.leaves(v),
                                                      jax.tree.leaves(z_params)))
    grads[name] = grads[name].at[idx].set(contraction.astype(grads[name].dtype))
  return guide_loss, grads


def finite_contractions(hypergrads: Mapping[str, jax.Array],
                        specs: Sequence[specs_lib.GuidedHParam]) -> list[jax.Array]:
  """Per guided scalar (tangent order), whether its hypergradient is finite: a finite tangent
  whose contraction with the guide gradient overflows is reset too (`reset_tangents`)."""
  return [jnp.isfinite(hypergrads[name][idx]) for name, idx in scalar_index(specs)]
