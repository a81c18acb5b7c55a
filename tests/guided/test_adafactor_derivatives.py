"""The hand-written Adafactor derivative (`optimizer_derivatives.adafactor_derivatives`) against
the VJP of the real optax update, in float64: every supported value, factored and whole second
moments, clipped and unclipped leaves, weight decay with a mask, a scalar and a per-group
learning-rate multiplier, the first step (β = 0) and later ones."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gbt_t5x.guided import hypergrad
from gbt_t5x.guided import optimizer_derivatives as opt_derivs
from gbt_t5x.train import optimizers

BASE_LR = 0.01
OPTIONS = opt_derivs.AdafactorOptions(factored=True, min_dim_size_to_factor=3,
                                      multiply_by_parameter_scale=True, clipping=True,
                                      weight_decay=True)
MASK = {"w": True, "b": False, "m": True, "tiny": True}


@pytest.fixture(scope="module", autouse=True)
def x64():
  with jax.enable_x64(True):
    yield


def _params(rng: np.random.RandomState) -> dict[str, jax.Array]:
  # 'w' and 'm' are factored (two dims >= 3), 'b' and 'tiny' keep a whole second moment; 'tiny'
  # has a parameter RMS below 1e-3 (the relative step size's floor).
  return {"w": jnp.asarray(rng.randn(4, 5)), "m": jnp.asarray(rng.randn(3, 2, 6)),
          "b": jnp.asarray(rng.randn(5)), "tiny": jnp.asarray(1e-5 * rng.randn(2, 2))}


def _state_after(steps: int, rng: np.random.RandomState):
  optimizer = optimizers.adafactor(weight_decay_rate=0.001, min_dim_size_to_factor=3,
                                   weight_decay_mask=MASK)
  params = _params(rng)
  state = optimizer.init(params)
  for _ in range(steps):
    grads = jax.tree.map(lambda p: jnp.asarray(rng.randn(*p.shape)), params)
    updates, state = hypergrad.optimizer_update(optimizer, grads, state, params, {}, BASE_LR)
    params = optax.apply_updates(params, updates)
  return optimizer, params, state


@pytest.mark.parametrize("steps", [0, 3])
@pytest.mark.parametrize("threshold", [0.5, 50.0])
@pytest.mark.parametrize("vector_lr", [False, True])
def test_adafactor_derivative_equals_the_vjp_of_the_update(steps, threshold, vector_lr):
  rng = np.random.RandomState(steps + 7)
  optimizer, params, state = _state_after(steps, rng)
  grads = jax.tree.map(lambda p: jnp.asarray(rng.randn(*p.shape)), params)
  v = jax.tree.map(lambda p: jnp.asarray(rng.randn(*p.shape)), params)
  groups = {"w": 0, "m": 1, "b": 1, "tiny": 0} if vector_lr else None
  h = {"learning_rate": jnp.asarray([1.3, 0.7]) if vector_lr else jnp.asarray(1.3),
       "decay_rate": jnp.asarray(0.8), "eps": jnp.asarray(1e-3),
       "clipping_threshold": jnp.asarray(threshold), "weight_decay_rate": jnp.asarray(0.02)}

  def update(hv):
    return hypergrad.optimizer_update(optimizer, grads, state, params, hv, BASE_LR, groups)

  (updates, new_state), update_vjp = jax.vjp(update, h)
  new_params = optax.apply_updates(params, updates)
  (expected,) = update_vjp((v, jax.tree.map(jnp.zeros_like, new_state)))
  hyperparams = hypergrad._inject(state, h, BASE_LR).hyperparams
  closed_form = opt_derivs.ClosedForm(opt_derivs.ADAFACTOR, MASK, OPTIONS)
  got = opt_derivs.adafactor_derivatives(
      grads, new_state, new_params, v, opt_derivs.param_scales(params, OPTIONS), hyperparams,
      jnp.asarray(BASE_LR), list(h), closed_form, multiplier=h["learning_rate"],
      lr_group_ids=groups)
  for name in h:
    np.testing.assert_allclose(got[name], expected[name], rtol=1e-6, atol=1e-12, err_msg=name)
  if steps == 0:  # The first step: β = 0, so the decay rate does not act.
    assert float(got["decay_rate"]) == 0.0
  else:
    assert abs(float(got["decay_rate"])) > 1e-6


def test_factored_dims_match_the_optimizer():
  """The derivative factors exactly the leaves whose state the optimizer factors."""
  _, params, state = _state_after(1, np.random.RandomState(0))
  inner = [s for s in state.inner_state if isinstance(s, optax.FactoredState)][0]
  for name, p in params.items():
    dims = opt_derivs.factored_dims(p.shape, True, 3)
    assert (dims is not None) == (inner.v.get(name).size == 1), name
