"""Long-horizon (forward-mode) hypergradients on the MLP problem of test_hypergrad, float64.

mu = 0 equals the greedy one-step hypergradient; mu = 1 carried over T model steps equals the
central finite difference of the T-step composed guide loss (raw values held constant), for the
LR multiplier, Adam's b1 and label smoothing (and the per-group LR / data-weight vectors).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gbt_t5x.guided import forward
from gbt_t5x.guided import hypergrad
from gbt_t5x.guided import specs as specs_lib
from gbt_t5x.guided.specs import GuidedHParam
from tests.finite_differences import central_differences
from tests.guided.test_hypergrad import (BASE_LR, DW_EXP, _mlp_data, adamw, mlp_forward,
                                         mlp_guide, mlp_loss)

T = 4
FD_STEP = 1e-4
SPECS = (GuidedHParam("learning_rate", 1.0, "exp", lower=0.01, upper=100.0),
         GuidedHParam("b1", 0.8, "sigmoid", lower=0.0, upper=0.999),
         GuidedHParam("label_smoothing", 0.1, "sigmoid", lower=0.0, upper=0.5))
VECTOR_SPECS = (GuidedHParam("learning_rate", (1.0, 2.0, 0.5), "exp", shape=(3,),
                             groups=("dense0", "dense1/w", ".*")), DW_EXP)


@pytest.fixture(scope="module", autouse=True)
def x64():
  with jax.enable_x64(True):
    yield


def _problem(specs):
  params, batch, guide = jax.tree.map(jnp.asarray, _mlp_data(0))
  groups = next((s.groups for s in specs if s.groups), ())
  kwargs = dict(optimizer=adamw(), forward_fn=mlp_forward, loss_from_outputs=mlp_loss,
                lr_group_ids=hypergrad.param_group_ids(params, groups) if groups else None)
  batches = [jax.tree.map(lambda x, i=i: jnp.roll(x, i, axis=0), batch) for i in range(T)]
  return params, kwargs["optimizer"].init(params), batches, guide, kwargs


def _run(specs, mu, steps):
  """Carries tangents from zero over `steps` model steps; returns (hypergrads, composed fn)."""
  params, opt_state, batches, guide, kwargs = _problem(specs)
  raw = specs_lib.init_raw(specs)
  rngs = [jax.random.PRNGKey(i) for i in range(steps)]
  step = jax.jit(functools.partial(forward.forward_step, mu=mu, specs=specs, **kwargs),
                 static_argnames=())
  tangents = forward.init_tangents(specs, params, opt_state)
  p, s = params, opt_state
  for i in range(steps):
    p, s, tangents, _ = step(p, s, raw, tangents, batches[i], rngs[i], BASE_LR)
  _, got = forward.hypergradient(p, tangents, raw, guide, specs=specs, guide_loss_fn=mlp_guide)

  @jax.jit
  def composed(r):  # The guide loss after `steps` plain steps at raw values r.
    pp, ss = params, opt_state
    for i in range(steps):
      pp, ss, _ = hypergrad.plain_step(pp, ss, specs_lib.effective(specs, r), batches[i],
                                       rngs[i], BASE_LR, **kwargs)
    return mlp_guide(pp, guide)

  return raw, got, composed, (params, opt_state, batches, guide, kwargs, rngs)


@pytest.mark.parametrize("specs", [SPECS, VECTOR_SPECS], ids=["scalars", "vectors"])
def test_mu_0_equals_the_greedy_hypergradient(specs):
  raw, got, _, (params, opt_state, batches, guide, kwargs, rngs) = _run(specs, 0.0, 2)
  # Greedy at the state after the first step (mu = 0 forgets the first step's tangent).
  p, s, _ = hypergrad.plain_step(params, opt_state, specs_lib.effective(specs, raw), batches[0],
                                 rngs[0], BASE_LR, **kwargs)
  _, _, want, _ = hypergrad.lookahead_hypergradient(
      p, s, raw, batches[1], guide, rngs[1], BASE_LR, specs=specs, guide_loss_fn=mlp_guide,
      **kwargs)
  for name in want:
    assert np.linalg.norm(want[name]) > 1e-8, name
    assert np.linalg.norm(got[name] - want[name]) <= 1e-6 * np.linalg.norm(want[name]), (
        name, got[name], want[name])


@pytest.mark.parametrize("specs", [SPECS, VECTOR_SPECS], ids=["scalars", "vectors"])
def test_mu_1_equals_finite_differences_of_the_composed_guide_loss(specs):
  raw, got, composed, _ = _run(specs, 1.0, T)
  for name in raw:
    fd = central_differences(composed, raw, name, FD_STEP)
    assert np.linalg.norm(fd) > 1e-6, (name, fd)
    assert np.linalg.norm(got[name] - fd) <= 1e-4 * np.linalg.norm(fd), (name, got[name], fd)
  # Not the greedy value: the long horizon carries the earlier steps.
  _, greedy, _, _ = _run(specs, 0.0, T)
  assert any(np.linalg.norm(got[k] - greedy[k]) > 1e-3 * np.linalg.norm(got[k]) for k in raw)


def test_bad_horizon_settings_are_one_line_errors():
  for args, match in [(("sideways", 0.5, None), "horizon must be one of"),
                      (("forward", 1.5, None), r"mu must be in \[0, 1\]"),
                      (("forward", -0.1, None), r"mu must be in \[0, 1\]"),
                      (("forward", 0.9, 4), "num_microbatches")]:
    with pytest.raises(ValueError, match=match) as info:
      forward.check_horizon(*args)
    assert "\n" not in str(info.value)
  forward.check_horizon("greedy", 0.0, 4)


def test_a_non_finite_tangent_restarts_its_horizon():
  """An overflowed tangent would poison every later hypergradient: it is reset to zero (the
  next step's tangent is then exactly the greedy one), counted, and the others are kept."""
  specs = SPECS
  params, opt_state, batches, guide, kwargs = _problem(specs)
  raw = specs_lib.init_raw(specs)
  step = jax.jit(functools.partial(forward.forward_step, mu=1.0, specs=specs, **kwargs))
  rng = jax.random.PRNGKey(0)
  p, s, tangents, metrics = step(params, opt_state, raw, forward.init_tangents(
      specs, params, opt_state), batches[0], rng, BASE_LR)
  assert float(metrics["tangent_resets"]) == 0.0
  # Poison the b1 tangent (scalar 1) with an inf in one parameter entry.
  z_params, z_opt = tangents[1]
  leaves, treedef = jax.tree.flatten(z_params)
  leaves[0] = leaves[0].at[(0,) * leaves[0].ndim].set(jnp.inf)
  poisoned = (tangents[0], (jax.tree.unflatten(treedef, leaves), z_opt), tangents[2])
  _, _, after, metrics = step(p, s, raw, poisoned, batches[1], rng, BASE_LR)
  _, _, clean, _ = step(p, s, raw, tangents, batches[1], rng, BASE_LR)
  _, _, fresh, _ = step(p, s, raw, forward.init_tangents(specs, p, s), batches[1], rng, BASE_LR)
  assert float(metrics["tangent_resets"]) == 1.0
  for got, want in [(after[0], clean[0]), (after[2], clean[2])]:  # untouched scalars
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
      np.testing.assert_array_equal(a, b)
  # The poisoned step's result is non-finite, so it is zeroed: the b1 tangent restarts there.
  assert all(np.all(np.asarray(x) == 0) for x in jax.tree.leaves(after[1]))
  assert any(np.any(np.asarray(x) != 0) for x in jax.tree.leaves(fresh[1]))
  # A hypergradient that overflows resets its scalar too.
  hypergrads = {"learning_rate": jnp.asarray(1.0), "b1": jnp.asarray(jnp.nan),
                "label_smoothing": jnp.asarray(2.0)}
  kept, resets = forward.reset_tangents(clean, forward.finite_contractions(hypergrads, specs))
  assert float(resets) == 1.0
  assert all(np.all(np.asarray(x) == 0) for x in jax.tree.leaves(kept[1]))
  for a, b in zip(jax.tree.leaves(kept[0]), jax.tree.leaves(clean[0])):
    np.testing.assert_array_equal(a, b)
