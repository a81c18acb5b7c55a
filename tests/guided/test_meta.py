"""Meta optimizer: projection into declared ranges, non-finite skips, per-name scales, clipping."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gbt_t5x.guided import meta as meta_lib
from gbt_t5x.guided import specs as specs_lib
from gbt_t5x.guided.specs import GuidedHParam

BOUNDED = (
    GuidedHParam("b2", 0.99, "sigmoid", lower=0.5, upper=0.9999),
    GuidedHParam("weight_decay", 0.05, "linear", lower=0.0, upper=0.1),
    GuidedHParam("learning_rate", 1.0, "exp", lower=0.01, upper=100.0),
    GuidedHParam("clipping_threshold", 1.0, "softplus", lower=0.5, upper=3.0),
    GuidedHParam("data_weights", (1.0, 2.0), "exp", upper=4.0, shape=(2,)),
)


@pytest.fixture(scope="module")
def meta_step():
  """A jitted run of `n` meta steps with constant hypergradients (compiled once per sign)."""
  optimizer = meta_lib.make_meta_optimizer(0.1, BOUNDED)

  @jax.jit
  def run(state, hypergrads):
    def body(s, _):
      s, skipped = meta_lib.apply_hypergradient(s, hypergrads, BOUNDED, optimizer)
      return s, skipped
    return jax.lax.scan(body, state, None, length=300)

  return optimizer, run


@pytest.mark.parametrize("direction", [1.0, -1.0])
def test_bounds_hold_after_many_steps_pushed_against_them(meta_step, direction):
  optimizer, run = meta_step
  state = meta_lib.init_guided_state(BOUNDED, optimizer)
  # Gradient descent: a positive hypergradient pushes values down, a negative one up.
  hypergrads = {k: jnp.full_like(v, direction) for k, v in state.raw.items()}
  state, skipped = run(state, hypergrads)
  assert not np.any(skipped) and int(state.num_hyper_steps) == 300
  values = specs_lib.effective(BOUNDED, state.raw)
  for spec in BOUNDED:
    lower = spec.lower if spec.lower is not None else 0.0
    v = np.asarray(values[spec.name])
    assert np.all(v >= lower * (1 - 1e-6)) and np.all(v <= spec.upper * (1 + 1e-6)), spec.name
  # 300 steps of 0.1 in raw units reach every bound; linear ones sit on it exactly.
  wd = float(values["weight_decay"])
  assert wd == (0.0 if direction > 0 else np.float32(0.1))  # the bound in float32
  expected_lr = 0.01 if direction > 0 else 100.0
  assert float(values["learning_rate"]) == pytest.approx(expected_lr, rel=1e-5)
  if direction < 0:
    np.testing.assert_allclose(values["data_weights"], [4.0, 4.0], rtol=1e-5)
    assert float(values["b2"]) > 0.999
  else:
    assert float(values["clipping_threshold"]) == pytest.approx(0.5, rel=1e-5)
    assert float(values["b2"]) < 0.51


def _adam_state(guided):
  is_adam = lambda x: isinstance(x, optax.ScaleByAdamState)  # noqa: E731
  return next(x for x in jax.tree.leaves(guided.meta_opt_state, is_leaf=is_adam) if is_adam(x))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_hypergradient_skips_that_value_only(bad):
  optimizer = meta_lib.make_meta_optimizer(0.1, BOUNDED)
  state = meta_lib.init_guided_state(BOUNDED, optimizer)
  good = {k: jnp.ones_like(v) for k, v in state.raw.items()}
  # One finite step first so the meta state is not all zeros.
  state, skipped = meta_lib.apply_hypergradient(state, good, BOUNDED, optimizer)
  assert not bool(skipped)
  grads = dict(good, data_weights=jnp.array([1.0, bad]))
  new, skipped = jax.jit(meta_lib.apply_hypergradient, static_argnums=(2, 3))(
      state, grads, BOUNDED, optimizer)
  reference, _ = meta_lib.apply_hypergradient(state, good, BOUNDED, optimizer)
  assert bool(skipped)
  assert int(new.num_skipped) == 1 and int(new.num_hyper_steps) == 2
  assert {k: int(v) for k, v in new.skips.items()} == {
      k: int(k == "data_weights") for k in state.raw}
  # The skipped value keeps its raw value and its own Adam moments ...
  np.testing.assert_array_equal(new.raw["data_weights"], state.raw["data_weights"])
  adam_new, adam_old = _adam_state(new), _adam_state(state)
  np.testing.assert_array_equal(adam_new.mu["data_weights"], adam_old.mu["data_weights"])
  np.testing.assert_array_equal(adam_new.nu["data_weights"], adam_old.nu["data_weights"])
  # ... while every other value takes exactly the all-finite step.
  for name in state.raw:
    if name != "data_weights":
      np.testing.assert_array_equal(new.raw[name], reference.raw[name], err_msg=name)
  assert not np.array_equal(new.raw["learning_rate"], state.raw["learning_rate"])
  # All values non-finite: nothing moves, the shared step count included.
  all_bad = {k: jnp.full_like(v, bad) for k, v in good.items()}
  frozen, skipped = meta_lib.apply_hypergradient(state, all_bad, BOUNDED, optimizer)
  assert bool(skipped) and int(frozen.num_skipped) == 1
  for a, b in zip(jax.tree.leaves((state.raw, state.meta_opt_state)),
                  jax.tree.leaves((frozen.raw, frozen.meta_opt_state))):
    np.testing.assert_array_equal(a, b)
  # And the next finite step is applied again.
  newer, skipped = meta_lib.apply_hypergradient(new, good, BOUNDED, optimizer)
  assert not bool(skipped) and int(newer.num_skipped) == 1
  assert not np.allclose(newer.raw["data_weights"], new.raw["data_weights"])


def test_a_finite_hypergradient_that_overflows_adam_is_skipped_not_frozen():
  """|g| ~ 1e20 is finite in float32 but g^2 is not: taking it would make Adam's second moment
  inf and every later update of that value 0 (frozen without a word). It is skipped instead,
  and the value moves again on the next ordinary hypergradient."""
  optimizer = meta_lib.make_meta_optimizer(0.1, BOUNDED)
  state = meta_lib.init_guided_state(BOUNDED, optimizer)
  good = {k: jnp.ones_like(v) for k, v in state.raw.items()}
  state, _ = meta_lib.apply_hypergradient(state, good, BOUNDED, optimizer)
  huge = dict(good, learning_rate=jnp.asarray(1e20, jnp.float32))
  assert np.isfinite(np.asarray(huge["learning_rate"]))
  new, skipped = jax.jit(meta_lib.apply_hypergradient, static_argnums=(2, 3))(
      state, huge, BOUNDED, optimizer)
  assert bool(skipped) and int(new.skips["learning_rate"]) == 1
  np.testing.assert_array_equal(new.raw["learning_rate"], state.raw["learning_rate"])
  assert np.all(np.isfinite(np.asarray(_adam_state(new).nu["learning_rate"])))
  assert not np.array_equal(new.raw["b2"], state.raw["b2"])  # the others moved
  newer, skipped = meta_lib.apply_hypergradient(new, good, BOUNDED, optimizer)
  assert not bool(skipped)
  assert not np.array_equal(newer.raw["learning_rate"], new.raw["learning_rate"])


def test_meta_lr_scale_is_a_per_name_learning_rate():
  specs = (GuidedHParam("b1", 0.5, "sigmoid", meta_lr_scale=0.0),
           GuidedHParam("b2", 0.5, "sigmoid", meta_lr_scale=1.0),
           GuidedHParam("eps", 1.0, "exp", meta_lr_scale=2.5))
  optimizer = meta_lib.make_meta_optimizer(0.01, specs)
  state = meta_lib.init_guided_state(specs, optimizer)
  grads = {"b1": jnp.asarray(3.0), "b2": jnp.asarray(-0.2), "eps": jnp.asarray(7.0)}
  new, _ = meta_lib.apply_hypergradient(state, grads, specs, optimizer)
  # Adam's first step is lr * sign(g) (up to eps): scaled per name.
  moved = {k: float(new.raw[k] - state.raw[k]) for k in grads}
  assert moved["b1"] == 0.0
  assert moved["b2"] == pytest.approx(0.01, rel=1e-4)
  assert moved["eps"] == pytest.approx(-0.025, rel=1e-4)


def test_eps_damps_the_step_of_a_hypergradient_below_it():
  specs = (GuidedHParam("b1", 0.5, "sigmoid"), GuidedHParam("b2", 0.5, "sigmoid"))
  optimizer = meta_lib.make_meta_optimizer(0.01, specs, eps=1e-3)
  state = meta_lib.init_guided_state(specs, optimizer)
  new, _ = meta_lib.apply_hypergradient(
      state, {"b1": jnp.asarray(1e-5), "b2": jnp.asarray(1.0)}, specs, optimizer)
  # Adam's first step: -lr * g / (|g| + eps).
  assert float(state.raw["b1"] - new.raw["b1"]) == pytest.approx(0.01 * 1e-5 / (1e-5 + 1e-3),
                                                                 rel=1e-3)
  assert float(state.raw["b2"] - new.raw["b2"]) == pytest.approx(0.01 / (1 + 1e-3), rel=1e-4)


def test_clip_norm_clips_hypergradients_before_adam():
  specs = (GuidedHParam("b1", 0.5, "sigmoid"), GuidedHParam("b2", 0.5, "sigmoid"))
  clipped = meta_lib.make_meta_optimizer(0.01, specs, clip_norm=1.0)
  reference = optax.adam(0.01)
  steps = [{"b1": jnp.asarray(300.0), "b2": jnp.asarray(400.0)},
           {"b1": jnp.asarray(-0.6), "b2": jnp.asarray(0.8)}]
  state = meta_lib.init_guided_state(specs, clipped)
  raw, ref_state = dict(state.raw), reference.init(state.raw)
  for g in steps:
    state, _ = meta_lib.apply_hypergradient(state, g, specs, clipped)
    norm = float(optax.tree.norm(g))
    g_clipped = jax.tree.map(lambda x: x * min(1.0, 1.0 / norm), g)
    updates, ref_state = reference.update(g_clipped, ref_state)
    raw = optax.apply_updates(raw, updates)
  for k in raw:
    np.testing.assert_allclose(state.raw[k], raw[k], rtol=1e-6)
  # Without clipping the big first step dominates Adam's moments and the result differs.
  unclipped = meta_lib.make_meta_optimizer(0.01, specs)
  other = meta_lib.init_guided_state(specs, unclipped)
  for g in steps:
    other, _ = meta_lib.apply_hypergradient(other, g, specs, unclipped)
  assert abs(float(other.raw["b1"] - state.raw["b1"])) > 1e-4


def test_average_every_takes_one_adam_step_on_the_mean_of_k_hypergradients():
  specs = (GuidedHParam("learning_rate", 1.0, "exp"), GuidedHParam("b1", 0.5, "sigmoid"))
  averaged = meta_lib.make_meta_optimizer(0.01, specs, average_every=3)
  reference = optax.adam(0.01)
  hypergrads = [{"learning_rate": jnp.asarray(g), "b1": jnp.asarray(-2.0 * g)}
                for g in (3.0, -1.0, 0.4, 5.0, 5.0, -7.0)]
  state = meta_lib.init_guided_state(specs, averaged)
  raw, ref_state = dict(state.raw), reference.init(state.raw)
  for i, g in enumerate(hypergrads):
    before = dict(state.raw)
    state, skipped = meta_lib.apply_hypergradient(state, g, specs, averaged)
    assert not bool(skipped)
    if (i + 1) % 3:  # Accumulating: the values stay put.
      for k in raw:
        assert float(state.raw[k]) == float(before[k])
      continue
    mean = jax.tree.map(lambda *xs: sum(xs) / 3, *hypergrads[i - 2:i + 1])
    updates, ref_state = reference.update(mean, ref_state)
    raw = optax.apply_updates(raw, updates)
    for k in raw:
      np.testing.assert_allclose(state.raw[k], raw[k], rtol=1e-6)
  assert int(state.num_hyper_steps) == 6
  with pytest.raises(ValueError, match="average_every must be an integer >= 1"):
    meta_lib.make_meta_optimizer(0.1, specs, average_every=0)


def test_initial_state_and_errors():
  optimizer = meta_lib.make_meta_optimizer(0.1, BOUNDED)
  state = meta_lib.init_guided_state(BOUNDED, optimizer)
  assert state.num_hyper_steps.dtype == jnp.int32 and int(state.num_hyper_steps) == 0
  assert state.num_skipped.dtype == jnp.int32 and int(state.num_skipped) == 0
  assert set(state.raw) == {s.name for s in BOUNDED}
  with pytest.raises(ValueError, match=r"hypergradients have names \['b2'\]"):
    meta_lib.apply_hypergradient(state, {"b2": jnp.asarray(1.0)}, BOUNDED, optimizer)
  with pytest.raises(ValueError, match="clip_norm must be > 0"):
    meta_lib.make_meta_optimizer(0.1, BOUNDED, clip_norm=0.0)
  with pytest.raises(ValueError, match="meta eps must be > 0"):
    meta_lib.make_meta_optimizer(0.1, BOUNDED, eps=0.0)
