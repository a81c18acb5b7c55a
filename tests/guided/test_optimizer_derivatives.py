"""The closed-form AdamW derivative (`optimizer_derivatives`) against the generic VJP path.

Same problems as `test_hypergrad` (float64): the guided step with
`optimizer_derivative='closed_form'` must give the hypergradient of the `'vjp'` path and of
central finite differences (checked here directly, at `test_hypergrad`'s tolerance) for every
AdamW value, a per-group LR vector, weight decay with a mask, and loss-side kinds (which need
(du/dg)^T v), with an identical model step; 'auto' (the default) must pick the closed form for
the registered optimizers and the VJP for others. The trainer-level checks (T5 tiny, float32 to
float32 rounding, microbatched, on a 4 x 2 mesh) are in `tests/train/test_guided_trainer.py`.
"""
from __future__ import annotations

import functools
import inspect
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gbt_t5x.guided import hypergrad
from gbt_t5x.guided import meta as meta_lib
from gbt_t5x.guided import optimizer_derivatives as opt_derivs
from gbt_t5x.guided import specs as specs_lib
from gbt_t5x.guided.specs import GuidedHParam
from gbt_t5x.train import optimizers
from tests.finite_differences import central_differences
from tests.guided.test_hypergrad import (BASE_LR, DW_EXP, FD_STEP, RTOL as FD_RTOL, _mlp_data,
                                         _quad_data, mlp_forward, mlp_guide, mlp_loss,
                                         quad_forward, quad_guide, quad_loss)

# The optimizers keep their hyper-parameters in float32 (`optimizers.HYPERPARAM_DTYPE`), so the
# bias corrections 1 - b^t and their derivatives agree to float32 rounding only.
RTOL = 1e-6

LR_B1_B2_EPS = (GuidedHParam("learning_rate", 1.3, "exp"),
                GuidedHParam("b1", 0.8, "sigmoid", lower=0.0, upper=0.999),
                GuidedHParam("b2", 0.99, "sigmoid", lower=0.5, upper=0.9999),
                GuidedHParam("eps", 1e-3, "exp"))
CASES = {
    # problem, optimizer factory, guided values
    "quad adamw all values + data weights": (
        "quad", lambda: optimizers.adamw(b2=0.99, eps=1e-3, weight_decay=0.1),
        LR_B1_B2_EPS + (GuidedHParam("eps_root", 1e-6, "exp"),
                        GuidedHParam("weight_decay", 0.05, "linear", lower=0.0), DW_EXP)),
    "mlp adamw LR vector + masked decay + label smoothing": (
        "mlp", lambda: optimizers.adamw(
            weight_decay=0.01, mask=lambda p: jax.tree.map(lambda x: x.ndim > 1, p)),
        (GuidedHParam("learning_rate", (1.0, 2.0, 0.5), "exp", shape=(3,),
                      groups=("dense0", "dense1/w", ".*")),
         GuidedHParam("b1", 0.8, "sigmoid", lower=0.0, upper=0.999),
         GuidedHParam("weight_decay", 0.01, "linear", lower=0.0),
         GuidedHParam("label_smoothing", 0.1, "sigmoid", lower=0.0, upper=0.5))),
    "mlp adafactor LR + decay_rate + weight decay": (
        "mlp", lambda: optimizers.adafactor(weight_decay_rate=0.01, min_dim_size_to_factor=2),
        (GuidedHParam("learning_rate", 1.3, "exp"),
         GuidedHParam("decay_rate", 0.8, "exp"),
         GuidedHParam("weight_decay_rate", 0.01, "linear", lower=0.0))),
    "mlp adam LR + b2 + label smoothing + data weights": (
        "mlp", lambda: optimizers.adam(eps=1e-4),
        (GuidedHParam("learning_rate", 0.7, "softplus"),
         GuidedHParam("b2", 0.99, "sigmoid", lower=0.5, upper=0.9999),
         GuidedHParam("label_smoothing", 0.1, "linear", lower=0.0, upper=0.5), DW_EXP)),
}


@pytest.fixture(scope="module", autouse=True)
def x64():
  with jax.enable_x64(True):
    yield


def _setup(case: str) -> tuple[Any, ...]:
  """(params, opt_state, raw, batch, guide_batch, rng, base_lr, kwargs) of `case` after three
  plain steps (non-trivial moments and step count)."""
  problem, make_opt, specs = CASES[case]
  params, batch, guide_batch = (_quad_data if problem == "quad" else _mlp_data)(1)
  params, batch, guide_batch = jax.tree.map(jnp.asarray, (params, batch, guide_batch))
  optimizer = make_opt()
  specs_lib.validate_specs(specs, set(optimizer.init(params).hyperparams))
  groups = next((s.groups for s in specs if s.groups), ())
  kwargs = dict(specs=specs, optimizer=optimizer,
                forward_fn=quad_forward if problem == "quad" else mlp_forward,
                loss_from_outputs=quad_loss if problem == "quad" else mlp_loss,
                guide_loss_fn=quad_guide if problem == "quad" else mlp_guide,
                lr_group_ids=hypergrad.param_group_ids(params, groups) if groups else None)
  guided = meta_lib.init_guided_state(specs, meta_lib.make_meta_optimizer(0.01, specs))
  base_lr = jnp.asarray(BASE_LR)
  rng = jax.random.PRNGKey(5)
  opt_state = optimizer.init(params)
  plain = jax.jit(lambda p, s, r: hypergrad.plain_step(
      p, s, specs_lib.effective(specs, guided.raw), batch, r, base_lr,
      **{k: v for k, v in kwargs.items() if k not in ("specs", "guide_loss_fn")}))
  for i in range(3):  # non-trivial moments and step count
    params, opt_state, _ = plain(params, opt_state, jax.random.fold_in(rng, i))
  return params, opt_state, guided.raw, batch, guide_batch, rng, base_lr, kwargs


@functools.lru_cache(maxsize=None)  # one compile per case, shared by the parametrized tests
def _both_paths(case: str):
  params, opt_state, raw, batch, guide_batch, rng, base_lr, kwargs = _setup(case)
  out = {}
  for how, recompute in ((hypergrad.VJP, False), (hypergrad.CLOSED_FORM, False),
                         (hypergrad.CLOSED_FORM, True)):
    key = how + (" + recompute_tangent" if recompute else "")
    out[key] = jax.jit(lambda p, s, raw, how=how, recompute=recompute:
                       hypergrad.lookahead_hypergradient(
                           p, s, raw, batch, guide_batch, rng, base_lr, optimizer_derivative=how,
                           recompute_tangent=recompute, **kwargs))(params, opt_state, raw)
  return out


@functools.lru_cache(maxsize=None)
def _closed_form_and_hyper_loss(case: str):
  """(closed-form hypergradients, jitted raw -> L_hyper, raw) with the optimizer's
  hyper-parameters kept in float64: in float32 a raw step of FD_STEP moves b1 by ~1e-5, which
  float32 rounds by ~1e-3 of itself, too coarse for central differences."""
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(optimizers, "HYPERPARAM_DTYPE", jnp.float64)
    params, opt_state, raw, batch, guide_batch, rng, base_lr, kwargs = _setup(case)
  _, _, hypergrads, _ = jax.jit(lambda raw: hypergrad.lookahead_hypergradient(
      params, opt_state, raw, batch, guide_batch, rng, base_lr,
      optimizer_derivative=hypergrad.CLOSED_FORM, **kwargs))(raw)
  hyper_loss = jax.jit(lambda raw: hypergrad.hyper_loss(
      raw, params, opt_state, batch, guide_batch, rng, base_lr, **kwargs))
  return hypergrads, hyper_loss, raw


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("how", [hypergrad.CLOSED_FORM,
                                 hypergrad.CLOSED_FORM + " + recompute_tangent"])
def test_closed_form_equals_the_vjp_path(case, how):
  """Also with `recompute_tangent` (the loss-side tangent from a re-run forward)."""
  out = _both_paths(case)
  vjp_params, vjp_state, vjp_hg, _ = out[hypergrad.VJP]
  cf_params, cf_state, cf_hg, _ = out[how]
  # The model step is the same computation on both paths (XLA may fuse it differently: 1 ulp).
  for a, b in zip(jax.tree.leaves((vjp_params, vjp_state)), jax.tree.leaves((cf_params, cf_state))):
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-14, atol=0)
  assert set(vjp_hg) == set(cf_hg) == {s.name for s in CASES[case][2]}
  for name in vjp_hg:
    expected, got = np.asarray(vjp_hg[name]), np.asarray(cf_hg[name])
    assert np.all(expected != 0), name  # a zero would make the comparison vacuous
    np.testing.assert_allclose(got, expected, rtol=RTOL, atol=0, err_msg=name)


# eps_root's hypergradient here is ~1.5e-7, below what central differences of an O(1) loss
# resolve at FD_STEP (test_hypergrad's floor is 1e-6): it is checked against the VJP only.
FD_CASES = [(case, spec.name) for case, (_, _, specs) in CASES.items() for spec in specs
            if spec.name != "eps_root"]


@pytest.mark.parametrize("case,name", FD_CASES, ids=[f"{c}-{n}" for c, n in FD_CASES])
def test_closed_form_matches_finite_differences(case, name):
  """float64 central differences of the composed hyper-loss, as `test_hypergrad` for the VJP."""
  hypergrads, hyper_loss, raw = _closed_form_and_hyper_loss(case)
  got = np.asarray(hypergrads[name])
  fd = central_differences(hyper_loss, raw, name, FD_STEP)
  assert np.linalg.norm(fd) > 1e-6, f"{case}/{name}: hypergradient too small to test: {fd}"
  assert np.all(np.abs(fd) > 1e-9), f"{case}/{name}: a component has no effect: {fd}"
  assert np.linalg.norm(got - fd) <= FD_RTOL * np.linalg.norm(fd), (case, name, got, fd)


def test_auto_picks_the_closed_form_where_registered(x64):
  """'auto' (the default): the closed form for `optimizers.adamw` / `adam` when it covers every
  guided optimizer-side name, the VJP for an unregistered optimizer; the LR multiplier alone
  uses the VJP whatever the mode (it keeps less)."""
  lr_b1 = {"learning_rate": 1.0, "b1": 0.9}
  registered = optimizers.adamw()
  state = registered.init({"w": jnp.zeros((2,))})
  assert hypergrad.closed_form_for(registered, hypergrad.AUTO, lr_b1, state) is not None
  assert hypergrad.closed_form_for(registered, hypergrad.VJP, lr_b1, state) is None
  unregistered = optax.inject_hyperparams(optax.adamw)(learning_rate=0.0)
  assert hypergrad.closed_form_for(unregistered, hypergrad.AUTO, lr_b1,
                                   unregistered.init({"w": jnp.zeros((2,))})) is None
  adafactor = optimizers.adafactor()
  assert hypergrad.closed_form_for(adafactor, hypergrad.AUTO, {"decay_rate": 0.8},
                                   adafactor.init({"w": jnp.zeros((2, 2))})) is not None
  with_momentum = optimizers.adafactor(momentum=0.9)
  assert hypergrad.closed_form_for(with_momentum, hypergrad.AUTO, {"decay_rate": 0.8},
                                   with_momentum.init({"w": jnp.zeros((2, 2))})) is None
  for fn in (hypergrad.guided_step, hypergrad.lookahead_update):
    assert inspect.signature(fn).parameters["optimizer_derivative"].default == hypergrad.AUTO


def test_closed_form_refuses_an_unregistered_optimizer(x64):
  optimizer = optax.inject_hyperparams(optax.adamw)(learning_rate=0.0)
  params, batch, guide_batch = jax.tree.map(jnp.asarray, _quad_data(0))
  specs = (GuidedHParam("learning_rate", 1.0, "exp"),)
  with pytest.raises(ValueError, match="closed-form derivative"):
    hypergrad.lookahead_hypergradient(
        params, optimizer.init(params), {"learning_rate": jnp.zeros(())}, batch, guide_batch,
        jax.random.PRNGKey(0), jnp.asarray(BASE_LR), specs=specs, optimizer=optimizer,
        forward_fn=quad_forward, loss_from_outputs=quad_loss, guide_loss_fn=quad_guide,
        optimizer_derivative=hypergrad.CLOSED_FORM)
  with pytest.raises(ValueError, match="optimizer_derivative must be one of"):
    hypergrad.lookahead_hypergradient(
        params, optimizer.init(params), {"learning_rate": jnp.zeros(())}, batch, guide_batch,
        jax.random.PRNGKey(0), jnp.asarray(BASE_LR), specs=specs, optimizer=optimizer,
        forward_fn=quad_forward, loss_from_outputs=quad_loss, guide_loss_fn=quad_guide,
        optimizer_derivative="jvp")


def test_registered_families():
  assert opt_derivs.closed_form_of(optimizers.adamw()).family == opt_derivs.ADAMW
  assert opt_derivs.closed_form_of(optimizers.adam()).family == opt_derivs.ADAMW
  adafactor = opt_derivs.closed_form_of(optimizers.adafactor())
  assert adafactor.family == opt_derivs.ADAFACTOR
  assert adafactor.adafactor == opt_derivs.AdafactorOptions(
      factored=True, min_dim_size_to_factor=128, multiply_by_parameter_scale=True,
      clipping=True, weight_decay=False)
  assert opt_derivs.closed_form_of(optimizers.adafactor(momentum=0.9)) is None


@pytest.mark.parametrize("case", [c for c in CASES if "adafactor" not in c])
def test_params_before_the_update_are_recovered_from_the_updated_state(case):
  """`adamw_params_before` (what step e) re-runs the forward at, with `recompute_tangent`) gives
  the params the model step started from, from the updated params and moments alone: masked
  weight decay, a per-group LR vector and a scalar multiplier included (float64, with the
  optimizer's float32 hyper-parameters: to `RTOL`)."""
  params, opt_state, raw, batch, _, rng, base_lr, kwargs = _setup(case)
  values = specs_lib.effective(kwargs["specs"], raw)
  h_opt, _ = specs_lib.split_effective(kwargs["specs"], values)
  step = hypergrad.plain_step(
      params, opt_state, values, batch, rng, base_lr,
      **{k: v for k, v in kwargs.items() if k not in ("specs", "guide_loss_fn")})
  new_params, new_opt_state = step[0], step[1]
  hyperparams = hypergrad._inject(opt_state, h_opt, base_lr).hyperparams
  recovered = opt_derivs.adamw_params_before(
      new_params, new_opt_state, jax.tree.map(jnp.zeros_like, params), hyperparams, base_lr,
      opt_derivs.closed_form_of(kwargs["optimizer"]),
      multiplier=h_opt.get(specs_lib.LEARNING_RATE), lr_group_ids=kwargs["lr_group_ids"])
  moved = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(
      jax.tree.leaves(new_params), jax.tree.leaves(params)))
  assert moved > 1e-4  # the step moved the params: recovering them is not trivial
  for got, want in zip(jax.tree.leaves(recovered), jax.tree.leaves(params)):
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=RTOL, atol=1e-12)
