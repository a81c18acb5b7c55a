"""Hypergradients of the fused guided step against finite differences and a naive jax.grad.

Two problems: (a) linear regression with per-example data weights, (b) a tiny MLP classifier
with dropout, T5X-style label smoothing and per-example data weights. Four configurations guide
every kind of hyper-parameter (AdamW lr/b1/b2/eps/weight_decay, per-group lr vector, Adafactor
decay_rate/momentum/clipping_threshold/weight_decay_rate incl. the b1/weight_decay aliases,
label smoothing, data weights). Everything runs in float64 inside `jax.enable_x64` for this module
only; compiled functions are shared through module-scoped fixtures.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gbt_t5x.guided import hypergrad
from gbt_t5x.guided import meta as meta_lib
from gbt_t5x.guided import specs as specs_lib
from gbt_t5x.guided.specs import GuidedHParam

NUM_IDS = 3
BATCH = 12
BASE_LR = 0.05
FD_STEP = 1e-4
RTOL = 1e-4


@pytest.fixture(scope="module", autouse=True)
def x64():
  with jax.enable_x64(True):
    yield


# ----------------------------------------------------------------------------- problems
def _normalised_weights(table, ids):
  w = table[ids]
  return w * (w.shape[0] / jnp.sum(w))


def quad_forward(params, batch, rng):
  del rng
  return batch["x"] @ params["w"] + params["b"]


def quad_loss(outputs, batch, loss_hparams):
  per_example = 0.5 * jnp.sum(jnp.square(outputs - batch["y"]), axis=-1)
  if "data_weights" in loss_hparams:
    per_example = per_example * _normalised_weights(loss_hparams["data_weights"], batch["ids"])
  return jnp.sum(per_example), {"loss": jnp.sum(per_example)}


def quad_guide(params, batch):
  return 0.5 * jnp.sum(jnp.square(quad_forward(params, batch, None) - batch["y"]))


def mlp_forward(params, batch, rng):
  h = jnp.tanh(batch["x"] @ params["dense0"]["w"] + params["dense0"]["b"])
  if rng is not None:  # dropout, rate 0.25
    keep = jax.random.bernoulli(rng, 0.75, h.shape)
    h = jnp.where(keep, h / 0.75, 0.0)
  h = jnp.tanh(h @ params["dense1"]["w"] + params["dense1"]["b"])
  return h @ params["dense2"]["w"] + params["dense2"]["b"]


def smoothed_cross_entropy(logits, targets, label_smoothing):
  """T5X-style: CE against smoothed targets minus the smoothed targets' entropy. [B]."""
  vocab = logits.shape[-1]
  confidence = 1.0 - label_smoothing
  low = label_smoothing / (vocab - 1)
  normalizer = -(confidence * jnp.log(confidence) + (vocab - 1) * low * jnp.log(low + 1e-20))
  soft = jax.nn.one_hot(targets, vocab) * (confidence - low) + low
  return -jnp.sum(soft * jax.nn.log_softmax(logits), axis=-1) - normalizer


def mlp_loss(outputs, batch, loss_hparams):
  ls = loss_hparams.get("label_smoothing", 0.0)
  per_example = smoothed_cross_entropy(outputs, batch["y"], ls)
  if "data_weights" in loss_hparams:
    per_example = per_example * _normalised_weights(loss_hparams["data_weights"], batch["ids"])
  return jnp.sum(per_example), {"loss": jnp.sum(per_example)}


def mlp_guide(params, batch):
  return jnp.sum(smoothed_cross_entropy(mlp_forward(params, batch, None), batch["y"], 0.0))


def _quad_data(seed):
  rs = np.random.RandomState(seed)
  w_true = rs.normal(size=(4, 3))
  def make(n):
    x = rs.normal(size=(n, 4))
    return {"x": x, "y": x @ w_true + 0.3 * rs.normal(size=(n, 3)),
            "ids": np.arange(n) % NUM_IDS}
  params = {"w": rs.normal(size=(4, 3)), "b": 0.5 * rs.normal(size=(3,))}
  return params, make(BATCH), make(8)


def _mlp_data(seed):
  rs = np.random.RandomState(seed)
  def dense(a, b):
    return {"w": rs.normal(size=(a, b)) / np.sqrt(a), "b": 0.1 * rs.normal(size=(b,))}
  params = {"dense0": dense(5, 6), "dense1": dense(6, 6), "dense2": dense(6, 4)}
  def make(n):
    x = rs.normal(size=(n, 5))
    return {"x": x, "y": (np.argmax(x[:, :4] + 0.5 * rs.normal(size=(n, 4)), -1)),
            "ids": np.arange(n) % NUM_IDS}
  return params, make(BATCH), make(8)


def adamw():
  return optax.inject_hyperparams(optax.adamw)(learning_rate=0.0, b1=0.9, b2=0.99, eps=1e-3,
                                                 weight_decay=0.0)


def adafactor():
  return optax.inject_hyperparams(
      optax.adafactor, static_args=("min_dim_size_to_factor", "dtype_momentum"))(
          learning_rate=0.0, min_dim_size_to_factor=2, decay_rate=0.8,
          multiply_by_parameter_scale=True, clipping_threshold=1.0, momentum=0.5,
          dtype_momentum=jnp.float64, weight_decay_rate=0.0)


DW_EXP = GuidedHParam("data_weights", (1.0, 0.5, 2.0), "exp", shape=(NUM_IDS,))
DW_SOFTPLUS = GuidedHParam("data_weights", (1.0, 0.5, 2.0), "softplus", shape=(NUM_IDS,))

CONFIGS = {
    "quad_adamw": ("quad", adamw, (
        GuidedHParam("learning_rate", 1.0, "exp", lower=0.01, upper=100.0),
        GuidedHParam("b1", 0.8, "sigmoid", lower=0.0, upper=0.999),
        GuidedHParam("b2", 0.99, "sigmoid", lower=0.5, upper=0.9999),
        GuidedHParam("eps", 1e-3, "exp"),
        GuidedHParam("weight_decay", 0.0, "linear", lower=0.0, upper=1.0),
        DW_EXP)),
    "quad_adafactor": ("quad", adafactor, (
        GuidedHParam("learning_rate", 1.0, "softplus"),
        GuidedHParam("decay_rate", 0.8, "sigmoid", lower=0.1, upper=1.0),
        GuidedHParam("b1", 0.5, "sigmoid", lower=0.0, upper=0.99),  # alias of momentum
        GuidedHParam("clipping_threshold", 0.3, "softplus"),
        GuidedHParam("weight_decay_rate", 0.01, "linear", lower=0.0),
        DW_SOFTPLUS)),
    "mlp_adamw": ("mlp", adamw, (
        GuidedHParam("learning_rate", (1.0, 2.0, 0.5), "exp", shape=(3,),
                     groups=("dense0", "dense1/w", ".*")),
        GuidedHParam("b1", 0.8, "sigmoid", lower=0.0, upper=0.999),
        GuidedHParam("b2", 0.99, "sigmoid", lower=0.5, upper=0.9999),
        GuidedHParam("eps", 1e-3, "exp"),
        GuidedHParam("weight_decay", 0.01, "linear", lower=0.0, upper=1.0),
        GuidedHParam("label_smoothing", 0.1, "sigmoid", lower=0.0, upper=0.5),
        DW_EXP)),
    "mlp_adafactor": ("mlp", adafactor, (
        GuidedHParam("learning_rate", 1.0, "exp"),
        GuidedHParam("decay_rate", 0.8, "sigmoid", lower=0.1, upper=1.0),
        GuidedHParam("momentum", 0.5, "sigmoid", lower=0.0, upper=0.99),
        GuidedHParam("clipping_threshold", 0.3, "exp"),
        GuidedHParam("weight_decay", 0.01, "linear", lower=0.0),  # alias of weight_decay_rate
        GuidedHParam("label_smoothing", 0.1, "linear", lower=0.0, upper=0.5),
        DW_EXP)),
}


@dataclasses.dataclass
class Setup:
  """A configuration after two plain warm-up steps, with its compiled functions."""
  specs: tuple
  kwargs: dict
  params: Any
  opt_state: Any
  guided: meta_lib.GuidedState
  batch: dict
  guide_batch: dict
  rng: jax.Array
  plain: Callable
  guided_step: Callable
  lookahead: Callable
  hyper_loss: Callable
  meta_optimizer: Any


def _build(name: str) -> Setup:
  problem, make_opt, specs = CONFIGS[name]
  params, batch, guide_batch = (_quad_data if problem == "quad" else _mlp_data)(0)
  params, batch, guide_batch = jax.tree.map(jnp.asarray, (params, batch, guide_batch))
  optimizer = make_opt()
  opt_names = set(optimizer.init(params).hyperparams)
  specs_lib.validate_specs(specs, opt_names)
  groups = next((s.groups for s in specs if s.groups), ())
  kwargs = dict(specs=specs, optimizer=optimizer,
                forward_fn=quad_forward if problem == "quad" else mlp_forward,
                loss_from_outputs=quad_loss if problem == "quad" else mlp_loss,
                lr_group_ids=hypergrad.param_group_ids(params, groups) if groups else None)
  guide_fn = quad_guide if problem == "quad" else mlp_guide
  meta_optimizer = meta_lib.make_meta_optimizer(0.01, specs)
  guided = meta_lib.init_guided_state(specs, meta_optimizer)
  rng = jax.random.PRNGKey(3)
  base_lr = jnp.asarray(BASE_LR)
  plain_kwargs = {k: v for k, v in kwargs.items() if k != "specs"}
  plain = jax.jit(lambda p, s, g, b, r: hypergrad.plain_step(
      p, s, specs_lib.effective(specs, g.raw), b, r, base_lr, **plain_kwargs))
  guided_step = jax.jit(lambda p, s, g, b, z, r: hypergrad.guided_step(
      p, s, g, b, z, r, base_lr, meta_optimizer=meta_optimizer, guide_loss_fn=guide_fn,
      **kwargs))
  lookahead = jax.jit(lambda p, s, raw, b, z, r: hypergrad.lookahead_hypergradient(
      p, s, raw, b, z, r, base_lr, guide_loss_fn=guide_fn, **kwargs))
  hyper_loss = jax.jit(lambda raw, p, s, b, z, r: hypergrad.hyper_loss(
      raw, p, s, b, z, r, base_lr, guide_loss_fn=guide_fn, **kwargs))
  opt_state = optimizer.init(params)
  # Two plain warm-up steps so that Adam/Adafactor moments and step counts are non-trivial.
  for i in range(2):
    params, opt_state, _ = plain(params, opt_state, guided, batch, jax.random.fold_in(rng, i))
  return Setup(specs, kwargs, params, opt_state, guided, batch, guide_batch, rng, plain,
               guided_step, lookahead, hyper_loss, meta_optimizer)


@pytest.fixture(scope="module")
def setups(x64) -> dict[str, Setup]:
  return {}


def get_setup(setups, name) -> Setup:
  if name not in setups:
    setups[name] = _build(name)
  return setups[name]


@pytest.fixture(scope="module")
def lookahead_results(setups):
  """name -> (new_params, new_opt_state, hypergrads, metrics) of `lookahead_hypergradient`."""
  out = {}
  for name in CONFIGS:
    s = get_setup(setups, name)
    out[name] = s.lookahead(s.params, s.opt_state, s.guided.raw, s.batch, s.guide_batch, s.rng)
  return out


def _central_differences(s: Setup, name: str) -> np.ndarray:
  raw = s.guided.raw
  base = np.asarray(raw[name])
  fd = np.zeros(base.shape)
  for idx in np.ndindex(base.shape):
    values = []
    for sign in (1.0, -1.0):
      shifted = base.copy()
      shifted[idx] += sign * FD_STEP
      new_raw = dict(raw, **{name: jnp.asarray(shifted)})
      values.append(float(s.hyper_loss(new_raw, s.params, s.opt_state, s.batch, s.guide_batch,
                                        s.rng)))
    fd[idx] = (values[0] - values[1]) / (2 * FD_STEP)
  return fd


CASES = [(config, spec.name) for config, (_, _, specs) in CONFIGS.items() for spec in specs]


@pytest.mark.parametrize("config,name", CASES, ids=[f"{c}-{n}" for c, n in CASES])
def test_hypergradient_matches_finite_differences(setups, lookahead_results, config, name):
  s = get_setup(setups, config)
  hypergrads = lookahead_results[config][2]
  got = np.asarray(hypergrads[name])
  fd = _central_differences(s, name)
  assert np.linalg.norm(fd) > 1e-6, f"{config}/{name}: hypergradient too small to test"
  assert np.all(np.abs(fd) > 1e-9), f"{config}/{name}: a component has no effect: {fd}"
  assert np.linalg.norm(got - fd) <= RTOL * np.linalg.norm(fd), (config, name, got, fd)


@pytest.mark.parametrize("config", list(CONFIGS))
def test_hypergradient_matches_naive_grad(setups, lookahead_results, config):
  s = get_setup(setups, config)
  naive = jax.grad(s.hyper_loss)(s.guided.raw, s.params, s.opt_state, s.batch, s.guide_batch,
                                 s.rng)
  for name, value in lookahead_results[config][2].items():
    np.testing.assert_allclose(value, naive[name], rtol=1e-9, atol=1e-14, err_msg=name)


EXP_DATA_WEIGHTS = [c for c, (_, _, specs) in CONFIGS.items() if DW_EXP in specs]


@pytest.mark.parametrize("config", EXP_DATA_WEIGHTS)
def test_data_weight_hypergradient_is_scale_invariant(lookahead_results, config):
  # Weights are normalised to mean 1 per batch: scaling the table changes nothing, so for the exp
  # activation (a scale is a raw shift) the raw hypergradient sums to zero.
  g = np.asarray(lookahead_results[config][2]["data_weights"])
  assert abs(g.sum()) <= 1e-9 * np.abs(g).sum()


@pytest.mark.parametrize("config", list(CONFIGS))
def test_lookahead_step_is_the_model_step(setups, config):
  s = get_setup(setups, config)
  p1, s1, m1 = s.plain(s.params, s.opt_state, s.guided, s.batch, s.rng)
  p2, s2, g2, m2 = s.guided_step(s.params, s.opt_state, s.guided, s.batch, s.guide_batch, s.rng)
  for a, b in zip(jax.tree.leaves((p1, s1)), jax.tree.leaves((p2, s2))):
    np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-14)
  np.testing.assert_allclose(m1["train_loss"], m2["train_loss"], rtol=1e-12)
  assert float(m2["skipped"]) == 0.0
  assert int(g2.num_hyper_steps) == 1 and int(g2.num_skipped) == 0
  # The guide loss metric is the guide loss at the new params.
  guide_fn = quad_guide if config.startswith("quad") else mlp_guide
  np.testing.assert_allclose(m2["guide_loss"], guide_fn(p2, s.guide_batch), rtol=1e-12)


@pytest.mark.parametrize("config", ["quad_adamw", "mlp_adafactor"])
def test_guided_step_applies_the_meta_update(setups, lookahead_results, config):
  s = get_setup(setups, config)
  _, _, new_guided, _ = s.guided_step(s.params, s.opt_state, s.guided, s.batch, s.guide_batch,
                                      s.rng)
  expected, skipped = meta_lib.apply_hypergradient(s.guided, lookahead_results[config][2],
                                                   s.specs, s.meta_optimizer)
  assert not bool(skipped)
  for name in s.guided.raw:
    np.testing.assert_allclose(new_guided.raw[name], expected.raw[name], rtol=1e-10, atol=1e-14)
    # Adam's first step moves every unclipped raw value by ~the meta learning rate.
    assert not np.allclose(new_guided.raw[name], s.guided.raw[name]) or name == "weight_decay"


def test_b2_is_guided(setups, lookahead_results):
  # The reference implementation crashed when b2 was guided.
  s = get_setup(setups, "quad_adamw")
  g = float(lookahead_results["quad_adamw"][2]["b2"])
  assert np.isfinite(g) and g != 0.0
  _, _, new_guided, _ = s.guided_step(s.params, s.opt_state, s.guided, s.batch, s.guide_batch,
                                      s.rng)
  b2 = float(specs_lib.effective(s.specs, new_guided.raw)["b2"])
  assert b2 != pytest.approx(0.99, abs=1e-6) and 0.5 < b2 < 0.9999
  assert np.sign(0.99 - b2) == np.sign(g)  # moved downhill


def test_non_finite_guide_loss_skips_update(setups):
  s = get_setup(setups, "mlp_adamw")
  bad_guide = dict(s.guide_batch, x=s.guide_batch["x"].at[0, 0].set(jnp.nan))
  p1, s1, _ = s.plain(s.params, s.opt_state, s.guided, s.batch, s.rng)
  p2, s2, g2, m2 = s.guided_step(s.params, s.opt_state, s.guided, s.batch, bad_guide, s.rng)
  assert not np.isfinite(float(m2["guide_loss"]))
  assert float(m2["skipped"]) == 1.0
  assert int(g2.num_skipped) == 1 and int(g2.num_hyper_steps) == 1
  for a, b in zip(jax.tree.leaves((s.guided.raw, s.guided.meta_opt_state)),
                  jax.tree.leaves((g2.raw, g2.meta_opt_state))):
    np.testing.assert_array_equal(a, b)
  # The model step still happens, unaffected.
  for a, b in zip(jax.tree.leaves((p1, s1)), jax.tree.leaves((p2, s2))):
    np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("guide_scale,should_move", [(0.0, True), (3.0, False)])
def test_weight_decay_from_zero_moves_when_hypergradient_says_so(setups, guide_scale,
                                                                 should_move):
  # quad_adamw guides weight decay from 0 (linear, lower 0). Guide targets 0: shrinking helps,
  # so the hypergradient is negative and the decay must move up off 0. Guide targets 3x the
  # current predictions: shrinking hurts, the hypergradient is positive and the projection must
  # keep the decay exactly at 0.
  s = get_setup(setups, "quad_adamw")
  pred = quad_forward(s.params, s.guide_batch, None)
  guide = dict(s.guide_batch, y=guide_scale * pred)
  _, _, hypergrads, _ = s.lookahead(s.params, s.opt_state, s.guided.raw, s.batch, guide, s.rng)
  g = float(hypergrads["weight_decay"])
  assert (g < 0) == should_move and g != 0.0
  _, _, new_guided, _ = s.guided_step(s.params, s.opt_state, s.guided, s.batch, guide, s.rng)
  wd = float(specs_lib.effective(s.specs, new_guided.raw)["weight_decay"])
  if should_move:
    assert 0.0 < wd <= 1.0
  else:
    assert wd == 0.0


# ----------------------------------------------------------------------------- helpers & errors
def test_param_group_ids_first_match_wins():
  params = {"dense0": {"w": 0, "b": 0}, "dense1": {"w": 0, "b": 0}, "out": {"w": 0}}
  ids = hypergrad.param_group_ids(params, ("dense0", "dense1/w", ".*"))
  assert ids == {"dense0": {"w": 0, "b": 0}, "dense1": {"w": 1, "b": 2}, "out": {"w": 2}}
  ids = hypergrad.param_group_ids(params, (".*", "dense0"))
  assert set(jax.tree.leaves(ids)) == {0}


def test_param_group_ids_unmatched_parameter():
  with pytest.raises(ValueError, match=r"parameter 'out/w' matches no learning-rate group"):
    hypergrad.param_group_ids({"dense0": {"w": 0}, "out": {"w": 0}}, ("dense",))


def test_vector_multiplier_scales_each_group(x64):
  # With a per-group multiplier m and SGD, the update of group k is -base_lr * m[k] * grad.
  opt = optax.inject_hyperparams(optax.sgd)(learning_rate=0.0)
  params = {"a": jnp.ones(2), "b": jnp.ones(3)}
  grads = {"a": jnp.full(2, 2.0), "b": jnp.full(3, 3.0)}
  ids = hypergrad.param_group_ids(params, ("a", "b"))
  updates, state = hypergrad.optimizer_update(opt, grads, opt.init(params), params,
                                              {"learning_rate": jnp.array([0.5, 4.0])},
                                              jnp.asarray(0.1), ids)
  np.testing.assert_allclose(updates["a"], -0.1 * 0.5 * 2.0)
  np.testing.assert_allclose(updates["b"], -0.1 * 4.0 * 3.0)
  assert float(state.hyperparams["learning_rate"]) == pytest.approx(0.1)
  updates, state = hypergrad.optimizer_update(opt, grads, opt.init(params), params,
                                              {"learning_rate": jnp.asarray(3.0)},
                                              jnp.asarray(0.1))
  np.testing.assert_allclose(updates["b"], -0.1 * 3.0 * 3.0)
  assert float(state.hyperparams["learning_rate"]) == pytest.approx(0.3)


def test_optimizer_update_errors(x64):
  params = {"a": jnp.ones(2)}
  plain_opt = optax.sgd(0.1)
  with pytest.raises(ValueError, match="inject_hyperparams"):
    hypergrad.optimizer_update(plain_opt, params, plain_opt.init(params), params, {}, 0.1)
  opt = optax.inject_hyperparams(optax.sgd)(learning_rate=0.0)
  with pytest.raises(ValueError, match="lr_group_ids"):
    hypergrad.optimizer_update(opt, params, opt.init(params), params,
                               {"learning_rate": jnp.ones(2)}, 0.1)
  with pytest.raises(ValueError, match=r"unknown optimizer hyper-parameter\(s\) \['b2'\]"):
    hypergrad.optimizer_update(opt, params, opt.init(params), params, {"b2": 0.9}, 0.1)
  scheduled = optax.inject_hyperparams(optax.sgd)(learning_rate=lambda count: 0.1)
  with pytest.raises(ValueError, match="is a schedule inside the optimizer"):
    hypergrad.optimizer_update(scheduled, params, scheduled.init(params), params, {}, 0.1)


def test_integer_optimizer_hyperparameter_cannot_be_guided(x64):
  opt = optax.inject_hyperparams(optax.adafactor, static_args=("min_dim_size_to_factor",
                                                                "dtype_momentum"))(
      learning_rate=0.0, min_dim_size_to_factor=2)
  params = {"a": jnp.ones((2, 2))}
  with pytest.raises(ValueError, match="'decay_offset' is int.*, not a float"):
    hypergrad.optimizer_update(opt, params, opt.init(params), params,
                               {"decay_offset": jnp.asarray(1.0)}, 0.1)


@pytest.mark.parametrize("config", EXP_DATA_WEIGHTS)
def test_recomputed_tangent_gives_the_same_hypergradient(setups, lookahead_results, config):
  s = get_setup(setups, config)
  guide_fn = mlp_guide if s.kwargs["forward_fn"] is mlp_forward else quad_guide
  recomputed = jax.jit(lambda p, st, raw, b, z, r: hypergrad.lookahead_hypergradient(
      p, st, raw, b, z, r, jnp.asarray(BASE_LR), guide_loss_fn=guide_fn,
      recompute_tangent=True, **s.kwargs))(s.params, s.opt_state, s.guided.raw, s.batch,
                                           s.guide_batch, s.rng)
  for name, value in lookahead_results[config][2].items():
    np.testing.assert_allclose(recomputed[2][name], value, rtol=1e-10, atol=1e-14, err_msg=name)


# ----------------------------------------------------------------------------- non-finite guard
def _bits(tree):
  return [np.asarray(x).tobytes() for x in jax.tree.leaves(tree)]


def test_keep_if_returns_either_tree_bit_for_bit(x64):
  """`keep_if` (jitted): a dropped step returns the old tree bit for bit (NaN, inf and -0.0 in
  the new one), a kept step the new tree bit for bit; int leaves too."""
  old = {"w": jnp.array([1.0, -0.0, 3.0]), "count": jnp.array(7, jnp.int32),
         "m": (jnp.array([[0.5]], jnp.float32),)}
  new = {"w": jnp.array([jnp.nan, jnp.inf, -0.0]), "count": jnp.array(8, jnp.int32),
         "m": (jnp.array([[-jnp.inf]], jnp.float32),)}
  guard = jax.jit(hypergrad.keep_if)
  assert _bits(guard(jnp.bool_(False), new, old)) == _bits(old)
  assert _bits(guard(jnp.bool_(True), new, old)) == _bits(new)


@pytest.mark.parametrize("mode", hypergrad.NON_FINITE_GUARDS)
def test_guarded_plain_step_keeps_the_old_state_exactly(setups, mode, monkeypatch):
  """The model step's guard (`plain_step(guard=True)`, either implementation): a NaN in the
  train batch keeps the old params and optimizer state bit for bit; a finite step is the
  unguarded step."""
  monkeypatch.setattr(hypergrad, "NON_FINITE_GUARD", mode)
  s = get_setup(setups, "mlp_adamw")
  values = specs_lib.effective(s.specs, s.guided.raw)
  kwargs = {k: v for k, v in s.kwargs.items() if k != "specs"}
  step = jax.jit(lambda p, st, b, guard: hypergrad.plain_step(
      p, st, values, b, s.rng, jnp.asarray(BASE_LR), guard=guard, **kwargs),
      static_argnums=3)
  bad = dict(s.batch, x=s.batch["x"].at[0, 0].set(jnp.nan))
  p, st, metrics = step(s.params, s.opt_state, bad, True)
  assert not bool(metrics[hypergrad.UPDATE_OK])
  assert _bits((p, st)) == _bits((s.params, s.opt_state))
  p, st, metrics = step(s.params, s.opt_state, s.batch, True)
  assert bool(metrics[hypergrad.UPDATE_OK])
  unguarded = step(s.params, s.opt_state, s.batch, False)
  for a, b in zip(jax.tree.leaves((p, st)), jax.tree.leaves(unguarded[:2])):
    np.testing.assert_allclose(a, b, rtol=1e-15, atol=0)  # fusion may differ: 1 ulp


def test_non_finite_train_loss_keeps_params_and_opt_state_exactly(setups):
  """The guided step's own guard (before its guide pass, always 'where'): a NaN in the train
  batch keeps the old params and optimizer state bit for bit; a finite step is the unguarded
  model step."""
  s = get_setup(setups, "mlp_adamw")
  guide_fn = mlp_guide
  step = jax.jit(lambda p, st, raw, b: hypergrad.lookahead_hypergradient(
      p, st, raw, b, s.guide_batch, s.rng, jnp.asarray(BASE_LR), guide_loss_fn=guide_fn,
      **s.kwargs))
  bad = dict(s.batch, x=s.batch["x"].at[0, 0].set(jnp.nan))
  p, st, _, metrics = step(s.params, s.opt_state, s.guided.raw, bad)
  assert not bool(metrics[hypergrad.UPDATE_OK])
  assert _bits((p, st)) == _bits((s.params, s.opt_state))
  p, st, _, metrics = step(s.params, s.opt_state, s.guided.raw, s.batch)
  assert bool(metrics[hypergrad.UPDATE_OK])
  values = specs_lib.effective(s.specs, s.guided.raw)
  unguarded = jax.jit(lambda p, st: hypergrad.plain_step(
      p, st, values, s.batch, s.rng, jnp.asarray(BASE_LR),
      **{k: v for k, v in s.kwargs.items() if k != "specs"}))(s.params, s.opt_state)
  for a, b in zip(jax.tree.leaves((p, st)), jax.tree.leaves(unguarded[:2])):
    np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-14)  # fusion may differ: 1 ulp
