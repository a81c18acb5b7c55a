"""Tests of the cross-entropy losses: hand-computed values, minimum 0, derivatives vs FD."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gbt_t5x.models import losses

V = 5
LOGITS = np.random.RandomState(0).randn(2, 3, V).astype(np.float32) * 2.0
TARGETS = np.array([[0, 3, 4], [2, 1, 1]], np.int32)
WEIGHTS = np.array([[1.0, 0.5, 0.0], [2.0, 1.0, 1.0]], np.float32)


def _numpy_loss(logits, targets, ls, z):
  """Per-token KL(smoothed target || softmax) + z * logZ^2, written out in float64."""
  logits = logits.astype(np.float64)
  log_z = np.log(np.exp(logits).sum(-1))
  logp = logits - log_z[..., None]
  q = np.full(logits.shape, ls / (V - 1))
  np.put_along_axis(q, targets[..., None], 1.0 - ls, axis=-1)
  with np.errstate(divide="ignore", invalid="ignore"):
    qlogq = np.where(q > 0, q * np.log(q), 0.0)
  kl = (qlogq - q * logp).sum(-1)
  return kl + z * log_z ** 2, z * log_z ** 2


@pytest.mark.parametrize("ls,z", [(0.0, 0.0), (0.1, 0.0), (0.0, 1e-4), (0.2, 1e-2)])
def test_weighted_cross_entropy_matches_numpy(ls, z):
  per_tok, z_tok = _numpy_loss(LOGITS, TARGETS, ls, z)
  loss, z_sum, w_sum = losses.compute_weighted_cross_entropy(
      jnp.asarray(LOGITS), jnp.asarray(TARGETS), jnp.asarray(WEIGHTS), ls, z)
  np.testing.assert_allclose(loss, (per_tok * WEIGHTS).sum(), rtol=1e-5)
  np.testing.assert_allclose(z_sum, (z_tok * WEIGHTS).sum(), rtol=1e-5, atol=1e-9)
  np.testing.assert_allclose(w_sum, WEIGHTS.sum())
  # No weights: every token counts once.
  loss_u, _, w_u = losses.compute_weighted_cross_entropy(LOGITS, TARGETS, None, ls, z)
  np.testing.assert_allclose(loss_u, per_tok.sum(), rtol=1e-5)
  assert float(w_u) == TARGETS.size


def test_plain_cross_entropy_is_negative_log_softmax():
  loss, z_term = losses.cross_entropy_with_logits(LOGITS, TARGETS)
  logp = jax.nn.log_softmax(LOGITS)
  np.testing.assert_allclose(loss, -np.take_along_axis(logp, TARGETS[..., None], -1)[..., 0],
                             rtol=1e-6)
  assert np.all(np.asarray(z_term) == 0.0)


@pytest.mark.parametrize("ls", [0.0, 0.1, 0.4])
def test_minimum_is_zero_at_the_smoothed_target(ls):
  q = np.full((2, 3, V), ls / (V - 1))
  np.put_along_axis(q, TARGETS[..., None], 1.0 - ls, axis=-1)
  best_logits = np.log(np.maximum(q, 1e-30)).astype(np.float32) + 3.0  # any shift
  loss, _ = losses.cross_entropy_with_logits(best_logits, TARGETS, ls)
  np.testing.assert_allclose(loss, 0.0, atol=2e-5)
  other, _ = losses.cross_entropy_with_logits(LOGITS, TARGETS, ls)
  assert np.all(np.asarray(other) > 1e-3)


def test_bfloat16_logits_are_computed_in_float32():
  lb = jnp.asarray(LOGITS, jnp.bfloat16)
  loss, z_sum, _ = losses.compute_weighted_cross_entropy(lb, TARGETS, WEIGHTS, 0.1, 1e-4)
  assert loss.dtype == jnp.float32 and z_sum.dtype == jnp.float32
  ref, _, _ = losses.compute_weighted_cross_entropy(lb.astype(jnp.float32), TARGETS, WEIGHTS,
                                                    0.1, 1e-4)
  np.testing.assert_allclose(loss, ref, rtol=1e-6)


def _loss_of(ls, w):
  return losses.compute_weighted_cross_entropy(LOGITS, TARGETS, w, ls, 1e-4)[0]


@pytest.mark.parametrize("ls", [0.1, 0.3])
def test_label_smoothing_derivative_matches_finite_differences(ls):
  grad = jax.grad(_loss_of)(jnp.float32(ls), jnp.asarray(WEIGHTS))
  h = 3e-3
  fd = (_loss_of(ls + h, WEIGHTS) - _loss_of(ls - h, WEIGHTS)) / (2 * h)
  np.testing.assert_allclose(grad, fd, rtol=2e-3, atol=2e-3)


def test_label_smoothing_derivative_is_finite_at_zero():
  g = jax.grad(_loss_of)(jnp.float32(0.0), jnp.asarray(WEIGHTS))
  assert np.isfinite(g)
  # The mixed derivative d/d(ls) of d(loss)/d(logits) (what hypergradients use) is finite at 0
  # and equals its finite difference (the logits gradient is linear in ls).
  dlogits = jax.jit(lambda ls: jax.grad(lambda lg: losses.compute_weighted_cross_entropy(
      lg, TARGETS, WEIGHTS, ls, 1e-4)[0])(jnp.asarray(LOGITS)))
  mixed = jax.jit(jax.jacfwd(dlogits))(jnp.float32(0.0))
  assert np.all(np.isfinite(mixed))
  fd = (dlogits(jnp.float32(0.01)) - dlogits(jnp.float32(0.0))) / 0.01
  np.testing.assert_allclose(mixed, fd, rtol=1e-3, atol=1e-4)


def test_weights_derivative_matches_finite_differences():
  grad = np.asarray(jax.grad(_loss_of, argnums=1)(jnp.float32(0.1), jnp.asarray(WEIGHTS)))
  h = 1e-2
  for idx in [(0, 0), (0, 2), (1, 1)]:
    e = np.zeros_like(WEIGHTS)
    e[idx] = h
    fd = (_loss_of(0.1, WEIGHTS + e) - _loss_of(0.1, WEIGHTS - e)) / (2 * h)
    np.testing.assert_allclose(grad[idx], fd, rtol=1e-3)
  per_tok, _ = _numpy_loss(LOGITS, TARGETS, 0.1, 1e-4)
  np.testing.assert_allclose(grad, per_tok, rtol=1e-5)  # the loss is linear in the weights


def test_loss_normalizing_factor_divides_both_sums():
  loss, z, w = losses.compute_weighted_cross_entropy(LOGITS, TARGETS, WEIGHTS, 0.1, 1e-2)
  loss_n, z_n, w_n = losses.compute_weighted_cross_entropy(LOGITS, TARGETS, WEIGHTS, 0.1, 1e-2,
                                                           loss_normalizing_factor=4.0)
  np.testing.assert_allclose(loss_n, loss / 4.0, rtol=1e-6)
  np.testing.assert_allclose(z_n, z / 4.0, rtol=1e-6)
  assert float(w_n) == float(w)


def test_bad_shapes_raise():
  with pytest.raises(ValueError, match="weights shape"):
    losses.compute_weighted_cross_entropy(LOGITS, TARGETS, WEIGHTS[:, :2])
  with pytest.raises(ValueError, match="targets shape"):
    losses.cross_entropy_with_logits(LOGITS, TARGETS[:, :2])
  with pytest.raises(ValueError, match="loss_normalizing_factor"):
    losses.compute_weighted_cross_entropy(LOGITS, TARGETS, WEIGHTS, loss_normalizing_factor=0)
