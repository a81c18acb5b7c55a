"""Per-token loss weights from a per-id data-weight table (guided or replayed data weights).

Must not import gin, seqio or `gbt_t5x.models`.
"""
from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp

DATA_IDS = "decoder_data_ids"


def data_weight_tokens(table: jax.Array, batch: Mapping[str, jax.Array]) -> jax.Array:
  """Per-token loss weights [B, T] from a per-id table, normalised to mean 1 over real tokens.

  Args:
    table: [num_ids] positive weights (effective values).
    batch: must hold `decoder_data_ids` [B, T] (int ids) and `decoder_loss_weights` [B, T].

  Returns:
    float32 [B, T]: table[id] * mask, scaled so its sum equals the number of real tokens.
  """
  mask = batch["decoder_loss_weights"].astype(jnp.float32)
  raw = jnp.take(table, batch[DATA_IDS], mode="clip") * mask
  return raw * (jnp.sum(mask) / jnp.maximum(jnp.sum(raw), 1e-12))
