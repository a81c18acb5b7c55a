"""Token cross-entropy with label smoothing and z-loss, T5X semantics, differentiable in both.

The smoothed target puts `1 - ls` on the true class and `ls / (V - 1)` on each other class; the
smoothed target's own entropy is subtracted, so the per-token loss is KL(target || model) and its
minimum is 0. The z-loss `z_loss * log(Z)^2` (Z the softmax normaliser) is added to the loss and
also reported on its own. `label_smoothing` and `weights` may be traced arrays: the loss is
differentiable with respect to both (the entropy uses `xlogy`, with T5X's 1e-20 floor inside the
log of the off-target probability, so the derivative at ls = 0 is finite). All math is float32,
whatever the logits' dtype.

Pure JAX: must not import flax, gin, seqio or `gbt_t5x.train`.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax.scipy.special import xlogy

Array = jax.Array
_LOW_CONFIDENCE_FLOOR = 1e-20  # T5X's floor inside log(low_confidence).


def smoothed_target_entropy(label_smoothing: Any, vocab_size: int) -> Array:
  """Entropy (nats) of the smoothed one-hot target over `vocab_size` classes; scalar float32."""
  ls = jnp.asarray(label_smoothing, jnp.float32)
  confidence = 1.0 - ls
  low_confidence = ls / (vocab_size - 1)
  # (V - 1) * low * log(low) == ls * log(low).
  return -(xlogy(confidence, confidence) + xlogy(ls, low_confidence + _LOW_CONFIDENCE_FLOOR))


def cross_entropy_with_logits(logits: Array, targets: Array, label_smoothing: Any = 0.0,
                              z_loss: Any = 0.0) -> tuple[Array, Array]:
  """Per-token smoothed cross-entropy minus the target entropy, plus the z-loss.

  Args:
    logits: `[..., V]` unnormalised log-probabilities (any float dtype; computed in float32).
    targets: int `[...]` class ids in `[0, V)`.
    label_smoothing: scalar in [0, 1) (float or traced array).
    z_loss: scalar coefficient of `log(Z)^2`.

  Returns:
    `(loss, z_loss_term)`, both float32 `[...]` in nats; `loss` includes `z_loss_term`.
  """
  if targets.shape != logits.shape[:-1]:
    raise ValueError(f"targets shape {tuple(targets.shape)} does not match logits shape "
                     f"{tuple(logits.shape)} without its vocab axis")
  vocab_size = logits.shape[-1]
  if vocab_size < 2:
    raise ValueError(f"logits need a vocab axis of at least 2 classes, got {vocab_size}")
  logits = logits.astype(jnp.float32)
  ls = jnp.asarray(label_smoothing, jnp.float32)
  confidence = 1.0 - ls
  low_confidence = ls / (vocab_size - 1)
  log_z = jax.nn.logsumexp(logits, axis=-1)
  target_logit = jnp.take_along_axis(logits, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
  target_logp = target_logit - log_z
  sum_logp = jnp.sum(logits, axis=-1) - vocab_size * log_z
  # -sum_c q_c log p_c with q = confidence on the target, low_confidence elsewhere.
  cross_ent = -(confidence * target_logp + low_confidence * (sum_logp - target_logp))
  z_term = jnp.asarray(z_loss, jnp.float32) * jnp.square(log_z)
  loss = cross_ent - smoothed_target_entropy(ls, vocab_size) + z_term
  return loss, z_term


def compute_weighted_cross_entropy(logits: Array, targets: Array, weights: Array | None = None,
                                   label_smoothing: Any = 0.0, z_loss: Any = 0.0,
                                   loss_normalizing_factor: Any = None
                                   ) -> tuple[Array, Array, Array]:
  """Weighted sums of the per-token loss (T5X's `compute_weighted_cross_entropy`).

  Args:
    logits: `[B, T, V]` (any float dtype).
    targets: int `[B, T]`.
    weights: `[B, T]` float per-token weights (None: all ones); may be traced.
    label_smoothing: scalar in [0, 1); may be traced.
    z_loss: scalar z-loss coefficient.
    loss_normalizing_factor: None, or a positive number/array dividing both loss sums.

  Returns:
    `(loss_sum, z_loss_sum, weight_sum)` float32 scalars: `loss_sum` includes the z-loss;
    `weight_sum` is the sum of `weights` (the token count when None), not normalised.
  """
  if weights is not None and tuple(weights.shape) != tuple(targets.shape):
    raise ValueError(f"weights shape {tuple(weights.shape)} does not match targets shape "
                     f"{tuple(targets.shape)}")
  loss, z_term = cross_entropy_with_logits(logits, targets, label_smoothing, z_loss)
  if weights is None:
    weight_sum = jnp.asarray(targets.size, jnp.float32)
  else:
    weights = jnp.asarray(weights, jnp.float32)
    loss = loss * weights
    z_term = z_term * weights
    weight_sum = jnp.sum(weights)
  loss_sum, z_sum = jnp.sum(loss), jnp.sum(z_term)
  if loss_normalizing_factor is not None:
    if isinstance(loss_normalizing_factor, (int, float)) and loss_normalizing_factor <= 0:
      raise ValueError(f"loss_normalizing_factor must be positive, got {loss_normalizing_factor}")
    factor = jnp.asarray(loss_normalizing_factor, jnp.float32)
    loss_sum, z_sum = loss_sum / factor, z_sum / factor
  return loss_sum, z_sum, weight_sum
