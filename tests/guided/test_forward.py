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
import optax
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
