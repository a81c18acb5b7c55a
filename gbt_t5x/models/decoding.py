"""Autoregressive decoding loops over a generic "decoder inputs -> logits" function.

Greedy decoding runs in a `jax.lax.while_loop` (jit-able) and, for now, re-runs the decoder on the
whole prefix each step (no key/value cache); the step function only ever reads the logits at the
current position, so a cached single-step function can replace it later without changing callers.
T5 conventions: BOS = 0 (the first decoder input), EOS = 1, padding = 0 after EOS.

Pure JAX: must not import flax, gin, seqio or `gbt_t5x.train`.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

Array = jax.Array


def shift_right(tokens: Array, bos_id: int = 0) -> Array:
  """`[B, T]` -> `[B, T]` with `bos_id` first and the last token dropped (decoder inputs)."""
  bos = jnp.full(tokens.shape[:1] + (1,), bos_id, tokens.dtype)
  return jnp.concatenate([bos, tokens[:, :-1]], axis=1)


def greedy_decode(tokens_to_logits: Callable[[Array], Array], batch_size: int,
                  max_decode_length: int, eos_id: int = 1, bos_id: int = 0) -> Array:
  """Greedy (argmax) decoding that stops at EOS.

  Args:
    tokens_to_logits: decoder inputs int32 `[B, T]` -> logits `[B, T, V]`; it must be causal
      (position t may depend only on inputs `<= t`).
    batch_size: B.
    max_decode_length: T, the number of output positions.
    eos_id: end-of-sequence id; it is written, and every later position of that row is 0.
    bos_id: the first decoder input.

  Returns:
    int32 `[B, T]` decoded tokens; rows without EOS run to T tokens.
  """
  if batch_size <= 0 or max_decode_length <= 0:
    raise ValueError(f"batch_size and max_decode_length must be positive, got {batch_size} "
                     f"and {max_decode_length}")
  out0 = jnp.zeros((batch_size, max_decode_length), jnp.int32)
  done0 = jnp.zeros((batch_size,), bool)

  def cond(state):
    step, _, done = state
    return (step < max_decode_length) & ~jnp.all(done)

  def body(state):
    step, out, done = state
    logits = tokens_to_logits(shift_right(out, bos_id))
    step_logits = jax.lax.dynamic_index_in_dim(logits, step, axis=1, keepdims=False)
    token = jnp.argmax(step_logits, axis=-1).astype(jnp.int32)
    token = jnp.where(done, 0, token)
    out = jax.lax.dynamic_update_index_in_dim(out, token, step, axis=1)
    return step + 1, out, done | (token == eos_id)

  _, out, _ = jax.lax.while_loop(cond, body, (jnp.int32(0), out0, done0))
  return out
