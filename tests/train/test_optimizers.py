"""Optimizers: T5X Adafactor vs a numpy reference, hyper-parameter injection and overwrite."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gbt_t5x.guided import hypergrad
from gbt_t5x.train import optimizers


def _rms(x):
  return np.sqrt(np.mean(np.square(x)))


def _adafactor_reference(params, grads_per_step, lr, decay_rate=0.8, eps1=1e-30, eps2=1e-3,
                         clip=1.0, momentum=None, weight_decay_rate=None, min_dim=128):
  """Adafactor as written in Shazeer & Stern (2018) with T5X's knobs, in float64 numpy.

  Factored second moments use row/column means: v̂ = outer(r, c) / mean(r), which equals the
  paper's R C / (1ᵀ R) with row/column sums. Returns the params after each step.
  """
  params = {k: np.asarray(v, np.float64) for k, v in params.items()}
  state = {}
  history = []
  for t, grads in enumerate(grads_per_step):
    beta2 = 1.0 - (t + 1.0) ** (-decay_rate)
    new_params = {}
    for name, p in params.items():
      g = np.asarray(grads[name], np.float64)
      g2 = g * g + eps1
      st = state.setdefault(name, {})
      factored = p.ndim == 2 and sorted(p.shape)[0] >= min_dim
      if factored:
        r = beta2 * st.get("r", 0.0) + (1 - beta2) * g2.mean(axis=1)
        c = beta2 * st.get("c", 0.0) + (1 - beta2) * g2.mean(axis=0)
        st["r"], st["c"] = r, c
        v_hat = np.outer(r, c) / r.mean()
      else:
        v_hat = beta2 * st.get("v", 0.0) + (1 - beta2) * g2
        st["v"] = v_hat
      u = g / np.sqrt(v_hat)
      if clip is not None:
        u = u / max(1.0, _rms(u) / clip)
      u = u * lr * max(_rms(p), eps2)
      if momentum is not None:
        u = momentum * st.get("m", 0.0) + (1 - momentum) * u
        st["m"] = u
      new_p = p - u
      if weight_decay_rate is not None:
        new_p = new_p - weight_decay_rate * p
      new_params[name] = new_p
    params = new_params
    history.append(params)
  return history


def _run(optimizer, params, grads_per_step, lr):
  state = optimizer.init(params)
  update = jax.jit(optimizer.update)
  out = []
  for grads in grads_per_step:
    state = hypergrad.set_hyperparams(state, {"learning_rate": lr})
    updates, state = update(grads, state, params)
    params = jax.tree.map(lambda p, u: p + u, params, updates)
    out.append(params)
  return out, state


@pytest.fixture(scope="module")
def problem():
  rng = np.random.default_rng(0)
  params = {
      # min_dim_size_to_factor=4 below: (4, 6) is factored, the others are not.
      "kernel": rng.normal(size=(4, 6)).astype(np.float32),
      "bias": rng.normal(size=(5,)).astype(np.float32),
      # Tiny values: rms(param) < 1e-3, so the ε2 = 1e-3 floor sets the step size.
      "tiny": (1e-5 * rng.normal(size=(3, 2))).astype(np.float32),
  }
  grads = [{k: (rng.normal(size=v.shape) * (1 + 3 * rng.random(v.shape))).astype(np.float32)
            for k, v in params.items()} for _ in range(2)]
  return {k: jnp.asarray(v) for k, v in params.items()}, grads


@pytest.mark.parametrize("kwargs", [
    {},  # T5X's configuration: no momentum, no weight decay, clipping 1.0.
    {"momentum": 0.9, "weight_decay_rate": 0.01, "clipping_threshold": 1.5, "decay_rate": 0.7},
])
def test_adafactor_matches_numpy_reference(problem, kwargs):
  params, grads = problem
  lr = 0.05
  got, _ = _run(optimizers.adafactor(min_dim_size_to_factor=4, **kwargs), params, grads, lr)
  ref_kwargs = {"clip": kwargs.get("clipping_threshold", 1.0),
                "momentum": kwargs.get("momentum"),
                "weight_decay_rate": kwargs.get("weight_decay_rate"),
                "decay_rate": kwargs.get("decay_rate", 0.8)}
  want = _adafactor_reference(params, grads, lr, min_dim=4, **ref_kwargs)
  for step in range(2):
    for name in params:
      np.testing.assert_allclose(np.asarray(got[step][name]), want[step][name], rtol=2e-5,
                                 atol=1e-12, err_msg=f"step {step + 1} param {name}")


def test_adafactor_state_is_factored_and_has_no_momentum(problem):
  params, _ = problem
  state = optimizers.adafactor(min_dim_size_to_factor=4).init(params)
  factored_state = state.inner_state[0]
  assert factored_state.v_row["kernel"].shape == (4,)
  assert factored_state.v_col["kernel"].shape == (6,)
  assert factored_state.v["bias"].shape == (5,)
  # Default min_dim_size_to_factor=128: nothing this small is factored.
  state128 = optimizers.adafactor().init(params)
  assert state128.inner_state[0].v["kernel"].shape == (4, 6)
  assert not any(leaf.shape == (4, 6) for leaf in jax.tree.leaves(state.inner_state[1:]))


def test_hyperparam_names(problem):
  params, _ = problem
  assert optimizers.hyperparam_names(optimizers.adamw(), params) == (
      "b1", "b2", "eps", "eps_root", "learning_rate", "weight_decay")
  assert optimizers.hyperparam_names(optimizers.adam(), params) == (
      "b1", "b2", "eps", "eps_root", "learning_rate")
  assert optimizers.hyperparam_names(optimizers.adafactor(), params) == (
      "clipping_threshold", "decay_rate", "eps", "learning_rate")
  assert optimizers.hyperparam_names(
      optimizers.adafactor(momentum=0.9, weight_decay_rate=1e-3, clipping_threshold=None),
      params) == ("decay_rate", "eps", "learning_rate", "momentum", "weight_decay_rate")
  # Works from shapes alone.
  abstract = jax.tree.map(lambda p: jax.ShapeDtypeStruct(p.shape, p.dtype), params)
  assert "b1" in optimizers.hyperparam_names(optimizers.adamw(), abstract)


def test_hyperparams_are_float32_arrays_with_configured_values(problem):
  params, _ = problem
  hp = optimizers.adamw(b1=0.8, b2=0.95, eps=1e-6, weight_decay=0.1).init(params).hyperparams
  assert all(v.dtype == jnp.float32 and v.shape == () for v in hp.values())
  np.testing.assert_allclose([hp["learning_rate"], hp["b1"], hp["b2"], hp["eps"],
                              hp["weight_decay"]], [0.0, 0.8, 0.95, 1e-6, 0.1], rtol=1e-6)


def test_zero_learning_rate_gives_zero_update(problem):
  params, grads = problem
  opt = optimizers.adamw(weight_decay=0.1)
  state = hypergrad.set_hyperparams(opt.init(params), {"learning_rate": 0.0})
  updates, _ = opt.update(grads[0], state, params)
  for u in jax.tree.leaves(updates):
    assert np.all(np.asarray(u) == 0.0)


def test_changing_b1_changes_the_momentum_as_adam_says():
  params = {"w": jnp.array([1.0, -2.0, 0.5])}
  g1 = {"w": jnp.array([0.3, -1.0, 2.0])}
  g2 = {"w": jnp.array([-0.7, 0.4, 1.0])}
  lr, b2, eps = 0.1, 0.99, 1e-8
  opt = optimizers.adam(b1=0.9, b2=b2, eps=eps)
  update = jax.jit(opt.update)
  state = hypergrad.set_hyperparams(opt.init(params), {"learning_rate": lr})
  _, state = update(g1, state, params)
  new_b1 = 0.5
  state = hypergrad.set_hyperparams(state, {"b1": new_b1})
  u2, state = update(g2, state, params)
  m1, v1 = 0.1 * np.asarray(g1["w"]), (1 - b2) * np.asarray(g1["w"]) ** 2
  m2 = new_b1 * m1 + (1 - new_b1) * np.asarray(g2["w"])
  v2 = b2 * v1 + (1 - b2) * np.asarray(g2["w"]) ** 2
  want = -lr * (m2 / (1 - new_b1 ** 2)) / (np.sqrt(v2 / (1 - b2 ** 2)) + eps)
  np.testing.assert_allclose(np.asarray(u2["w"]), want, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(state.inner_state[0].mu["w"]), m2, rtol=1e-6)


def test_set_hyperparams_keeps_dtype_and_is_differentiable(problem):
  params, grads = problem
  opt = optimizers.adamw()
  state = opt.init(params)
  new = hypergrad.set_hyperparams(state, {"b2": np.float64(0.9), "learning_rate": 2})
  assert new.hyperparams["b2"].dtype == jnp.float32
  assert new.hyperparams["learning_rate"].dtype == jnp.float32
  assert float(new.hyperparams["learning_rate"]) == 2.0
  assert float(state.hyperparams["b2"]) == pytest.approx(0.999)  # the input is not modified

  def total_update(lr):
    s = hypergrad.set_hyperparams(state, {"learning_rate": lr})
    updates, _ = opt.update(grads[0], s, params)
    return sum(jnp.sum(u) for u in jax.tree.leaves(updates))

  # The Adam update is linear in the learning rate: d/dlr sum(u) = sum(u at lr=1).
  np.testing.assert_allclose(jax.grad(total_update)(0.3), total_update(1.0), rtol=1e-5)


def test_set_hyperparams_errors(problem):
  params, _ = problem
  state = optimizers.adafactor().init(params)
  with pytest.raises(ValueError, match=r"unknown .*\['b1'\].*known: \['clipping_threshold', "
                                       r"'decay_rate', 'eps', 'learning_rate'\]"):
    hypergrad.set_hyperparams(state, {"b1": 0.9, "learning_rate": 1.0})
  with pytest.raises(ValueError, match="shape"):
    hypergrad.set_hyperparams(state, {"learning_rate": jnp.ones(3)})
  with pytest.raises(ValueError, match="inject_hyperparams"):
    hypergrad.set_hyperparams(state.inner_state, {"learning_rate": 1.0})


@pytest.mark.parametrize("factory, kwargs, message", [
    (optimizers.adamw, {"b1": 1.0}, "b1"),
    (optimizers.adam, {"b2": -0.1}, "b2"),
    (optimizers.adafactor, {"clipping_threshold": 0.5}, "clipping_threshold"),
    (optimizers.adafactor, {"decay_rate": 0.0}, "decay_rate"),
    (optimizers.adafactor, {"momentum": 1.5}, "momentum"),
])
def test_bad_arguments_raise(factory, kwargs, message):
  with pytest.raises(ValueError, match=message):
    factory(**kwargs)


def test_weight_decay_masks_are_static_and_applied():
  params = {"kernel": jnp.full((2, 2), 2.0), "bias": jnp.full((2,), 3.0)}
  zeros = jax.tree.map(jnp.zeros_like, params)
  mask_fn = lambda p: {"kernel": True, "bias": False}  # noqa: E731
  # Zero gradients: Adam's step is 0, so the update is the decoupled decay alone (-lr * wd * p).
  opt = optimizers.adamw(weight_decay=0.1, mask=mask_fn)
  assert "mask" not in opt.init(params).hyperparams
  state = hypergrad.set_hyperparams(opt.init(params), {"learning_rate": 0.5})
  updates, _ = opt.update(zeros, state, params)
  np.testing.assert_allclose(updates["kernel"], -0.5 * 0.1 * 2.0, rtol=1e-6)
  np.testing.assert_allclose(updates["bias"], 0.0)
  # Adafactor's decay is not scaled by the learning rate (T5X): -wd * p.
  opt = optimizers.adafactor(weight_decay_rate=0.01, weight_decay_mask=mask_fn)
  state = hypergrad.set_hyperparams(opt.init(params), {"learning_rate": 0.0})
  updates, _ = opt.update(zeros, state, params)
  np.testing.assert_allclose(updates["kernel"], -0.01 * 2.0, rtol=1e-6)
  np.testing.assert_allclose(updates["bias"], 0.0)
