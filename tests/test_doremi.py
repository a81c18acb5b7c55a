"""DoReMi's proxy (the mixture-weights experiment's baseline): domain losses and the Group-DRO
update of the domain weights, against hand-computed values."""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from harness import doremi


def test_domain_losses_sum_cross_entropy_and_count_tokens_per_domain():
  # Two rows of 3 tokens over a vocabulary of 2; uniform logits except one confident token.
  logits = jnp.zeros((2, 3, 2)).at[0, 0].set(jnp.array([5.0, 0.0]))
  batch = {"decoder_target_tokens": jnp.array([[0, 1, 1], [1, 0, 0]]),
           "decoder_loss_weights": jnp.array([[1, 1, 0], [1, 1, 1]]),
           "decoder_data_ids": jnp.array([[0, 0, 0], [2, 2, 2]])}
  sums, counts = doremi.domain_losses(logits, batch, 3)
  confident = -np.log(np.exp(5.0) / (np.exp(5.0) + 1.0))
  np.testing.assert_allclose(sums, [confident + np.log(2.0), 0.0, 3 * np.log(2.0)], rtol=1e-5)
  np.testing.assert_allclose(counts, [2.0, 0.0, 3.0])


def test_group_dro_update_raises_the_weight_of_domains_with_excess_loss_only():
  alpha = np.array([0.5, 0.25, 0.25])
  proxy, reference = np.array([2.0, 1.0, 3.0]), np.array([1.0, 2.0, 0.0])
  present = np.array([True, True, False])
  new = doremi.update_alpha(alpha, proxy, reference, present, eta=0.5)
  # Excess max(proxy - reference, 0) = [1, 0, 0 (absent)]: alpha * exp(0.5 * excess), normalised.
  expected = alpha * np.exp(0.5 * np.array([1.0, 0.0, 0.0]))
  np.testing.assert_allclose(new, expected / expected.sum())
  assert abs(new.sum() - 1.0) < 1e-12
