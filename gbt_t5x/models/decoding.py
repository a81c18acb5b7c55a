"""Autoregressive decoding loops: greedy, temperature/top-k sampling and beam search.

Every loop is a `jax.lax.while_loop` over a generic single-step function

    step_fn(tokens int32 [N, 1], state) -> (logits float32 [N, V], state)

that consumes the previous token of each row (BOS first) and returns the next-token logits.
`state` is any pytree: the flax `cache` collection of `network.Transformer.decode(decode=True)`,
or, for modules without a cache, the prefix buffer of `prefix_step_fn`. Its array leaves are
per-row (leading dim N); scalar leaves (e.g. `cache_index`) are shared by all rows. Beam search
repeats the per-row leaves `beam_size` times (rows ordered batch-major, `[b0k0, b0k1, ...]`) and
gathers them whenever beams are reordered.

T5 conventions: BOS = 0 (the first decoder input), EOS = 1; EOS is written and every later
position of a finished row is 0. A sequence that reaches `max_decode_length` without EOS is a
finished (truncated) hypothesis of that length. Scores are sums of the model's log-probabilities
(natural log, untempered) over the written tokens including EOS; beam scores are divided by
T5X's length penalty `((5 + length) / 6) ** alpha`.

The uncached `greedy_decode` (re-runs the decoder on the whole prefix each step) is kept as the
reference the cached loops are tested against.

Pure JAX: must not import flax, gin, seqio or `gbt_t5x.train`.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
State = Any
StepFn = Callable[[Array, State], tuple[Array, State]]

# "Effective minus infinity" for masked candidates (finite so sums stay finite and ordered).
NEG_INF = -1.0e7


def shift_right(tokens: Array, bos_id: int = 0) -> Array:
  """`[B, T]` -> `[B, T]` with `bos_id` first and the last token dropped (decoder inputs)."""
  bos = jnp.full(tokens.shape[:1] + (1,), bos_id, tokens.dtype)
  return jnp.concatenate([bos, tokens[:, :-1]], axis=1)


def brevity_penalty(alpha: float, length: Any) -> Any:
  """T5X's length penalty `((5 + length) / 6) ** alpha` (scalar or array `length`)."""
  return ((5.0 + length) / 6.0) ** alpha


def flat_batch_beam_expand(x: Array, beam_size: int) -> Array:
  """`[B, ...]` -> `[B * beam_size, ...]`, each row repeated `beam_size` times (batch-major)."""
  return jnp.repeat(x, beam_size, axis=0)


def _check_lengths(batch_size: int, max_decode_length: int) -> None:
  if batch_size <= 0 or max_decode_length <= 0:
    raise ValueError(f"batch_size and max_decode_length must be positive, got {batch_size} "
                     f"and {max_decode_length}")


# ----------------------------------------------------------------------------- reference
def greedy_decode(tokens_to_logits: Callable[[Array], Array], batch_size: int,
                  max_decode_length: int, eos_id: int = 1, bos_id: int = 0) -> Array:
  """Uncached greedy (argmax) decoding that stops at EOS (the reference implementation).

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
  _check_lengths(batch_size, max_decode_length)
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


def prefix_step_fn(tokens_to_logits: Callable[[Array], Array], batch_size: int,
                   max_decode_length: int, bos_id: int = 0) -> tuple[StepFn, State]:
  """A cache-free `step_fn` over a full-prefix decoder, and its initial state.

  The state is `{'prefix': int32 [B, T] decoder inputs so far, 'index': int32 scalar}`; each
  step writes the given token at `index`, runs `tokens_to_logits` (`[B, T] -> [B, T, V]`,
  causal) on the whole prefix and returns the logits at `index`. O(T) times slower than a
  key/value cache; used for modules whose `decode` has no cached mode.
  """
  _check_lengths(batch_size, max_decode_length)

  def step_fn(tokens: Array, state: State) -> tuple[Array, State]:
    index = state["index"]
    prefix = jax.lax.dynamic_update_slice(state["prefix"], tokens.astype(jnp.int32), (0, index))
    logits = tokens_to_logits(prefix)
    step_logits = jax.lax.dynamic_index_in_dim(logits, index, axis=1, keepdims=False)
    return step_logits.astype(jnp.float32), {"prefix": prefix, "index": index + 1}

  state = {"prefix": jnp.full((batch_size, max_decode_length), bos_id, jnp.int32),
           "index": jnp.zeros((), jnp.int32)}
  return step_fn, state


# ----------------------------------------------------------------------------- greedy, sampling
def _token_by_token(step_fn: StepFn, state: State, batch_size: int, max_decode_length: int,
                    choose: Callable[[Array, Array], Array], eos_id: int, bos_id: int
                    ) -> tuple[Array, Array]:
  """Shared loop of greedy and sampling: `choose(logits [B, V], step) -> tokens [B]`."""
  _check_lengths(batch_size, max_decode_length)
  init = (jnp.int32(0), jnp.full((batch_size,), bos_id, jnp.int32),
          jnp.zeros((batch_size, max_decode_length), jnp.int32),
          jnp.zeros((batch_size,), bool), jnp.zeros((batch_size,), jnp.float32), state)

  def cond(carry):
    step, _, _, done, _, _ = carry
    return (step < max_decode_length) & ~jnp.all(done)

  def body(carry):
    step, last, out, done, score, state = carry
    logits, state = step_fn(last[:, None], state)
    logits = logits.astype(jnp.float32)
    token = jnp.where(done, 0, choose(logits, step).astype(jnp.int32))
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    token_log_prob = jnp.take_along_axis(log_probs, token[:, None], axis=-1)[:, 0]
    score = score + jnp.where(done, 0.0, token_log_prob)
    out = jax.lax.dynamic_update_index_in_dim(out, token, step, axis=1)
    return step + 1, token, out, done | (token == eos_id), score, state

  _, _, out, _, score, _ = jax.lax.while_loop(cond, body, init)
  return out, score


def greedy_search(step_fn: StepFn, state: State, batch_size: int, max_decode_length: int,
                  eos_id: int = 1, bos_id: int = 0) -> tuple[Array, Array]:
  """Greedy (argmax) decoding with a single-step function.

  Args:
    step_fn, state: see the module docstring; rows N = `batch_size`.
    batch_size: B.
    max_decode_length: T, the number of output positions.
    eos_id, bos_id: special ids.

  Returns:
    `(tokens int32 [B, T], log_probs float32 [B])`: zeros after EOS; the sum of the model's
    log-probabilities of the written tokens (EOS included).
  """
  argmax = lambda logits, step: jnp.argmax(logits, axis=-1)
  return _token_by_token(step_fn, state, batch_size, max_decode_length, argmax, eos_id, bos_id)


def _check_sampling(temperature: Any, topk: Any) -> None:
  """Rejects a non-positive temperature or a negative top-k (concrete Python/numpy values)."""
  if not isinstance(topk, (int, np.integer)) or topk < 0:
    raise ValueError(f"topk must be an int >= 0 (0 = no top-k filter), got {topk!r}")
  if not isinstance(temperature, jax.core.Tracer) and not float(temperature) > 0.0:
    raise ValueError(f"temperature must be > 0 for sampling, got {temperature!r}")


def temperature_sample(step_fn: StepFn, state: State, rng: Array, batch_size: int,
                       max_decode_length: int, temperature: Any = 1.0, topk: int = 0,
                       eos_id: int = 1, bos_id: int = 0) -> tuple[Array, Array]:
  """Ancestral sampling from `softmax(logits / temperature)`, optionally from the top-k only.

  Args:
    step_fn, state, batch_size, max_decode_length, eos_id, bos_id: as in `greedy_search`.
    rng: PRNG key; step t draws with `fold_in(rng, t)`, so a fixed key is reproducible.
    temperature: > 0 (may be a traced scalar); 1 samples the model distribution.
    topk: keep only the k largest logits per row (0 = all). topk = 1 is greedy.

  Returns:
    `(tokens int32 [B, T], log_probs float32 [B])`; log-probabilities are the model's
    (untempered, unfiltered) ones, as in `greedy_search`.
  """
  _check_sampling(temperature, topk)

  def choose(logits: Array, step: Array) -> Array:
    if topk:
      k = min(int(topk), logits.shape[-1])
      kth = jax.lax.top_k(logits, k)[0][:, -1:]
      logits = jnp.where(logits < kth, NEG_INF, logits)
    return jax.random.categorical(jax.random.fold_in(rng, step), logits / temperature, axis=-1)

  return _token_by_token(step_fn, state, batch_size, max_decode_length, choose, eos_id, bos_id)


# ----------------------------------------------------------------------------- beam search
def _gather_rows(tree: State, batch_size: int, beam_size: int, parents: Array) -> State:
  """Reorders the per-row leaves `[B*K, ...]` of `tree` by `parents [B, K]` (beam indices)."""
  flat = (jnp.arange(batch_size)[:, None] * beam_size + parents).reshape(-1)
  return jax.tree.map(lambda x: x if x.ndim == 0 else jnp.take(x, flat, axis=0), tree)


def _take_beams(x: Array, index: Array) -> Array:
  """`x [B, M, ...]`, `index [B, K]` -> `[B, K, ...]` (per-batch gather on axis 1)."""
  return jax.vmap(lambda row, idx: row[idx])(x, index)


def _beam_search_continues(max_decode_length: int, alpha: float) -> Callable[[dict], Array]:
  """The beam search loop's condition: steps left, and some row with an alive beam that can
  still beat its pool's worst finished score (alpha >= 0: log-probs only fall, and the largest
  length penalty flatters them most)."""
  max_penalty = brevity_penalty(alpha, float(max_decode_length))

  def cond(c: dict) -> Array:
    best_alive = jnp.max(c["alive_log_probs"], axis=1)
    no_alive = best_alive <= NEG_INF / 2
    if alpha >= 0.0:
      worst_finished = jnp.min(jnp.where(c["finished_flags"], c["finished_scores"], NEG_INF),
                               axis=1)
      settled = jnp.all(c["finished_flags"], axis=1) & (worst_finished > best_alive / max_penalty)
    else:
      settled = jnp.zeros_like(no_alive)
    return (c["step"] < max_decode_length) & ~jnp.all(no_alive | settled)

  return cond


def beam_search(step_fn: StepFn, state: State, batch_size: int, max_decode_length: int,
                beam_size: int, alpha: float = 0.6, eos_id: int = 1, bos_id: int = 0
                ) -> tuple[Array, Array]:
  """Beam search with T5X's length penalty.

  Each step extends every alive beam by every token and keeps the `beam_size` best extensions
  (by log-probability). Extensions ending in EOS, or reaching `max_decode_length`, are finished:
  they join a pool of the `beam_size` best finished hypotheses, scored
  `log_prob / ((5 + length) / 6) ** alpha` with `length` counting EOS; the others stay alive.
  The loop ends at `max_decode_length`, when no beam is alive, or (alpha >= 0) when no alive
  beam can still beat the pool's worst score. With `beam_size=1` this is greedy decoding; with
  `beam_size` >= the number of candidates per step it is exact search.

  Args:
    step_fn, state: see the module docstring; `state` has per-row leaves for B rows (they are
      repeated to B * beam_size rows inside), and `step_fn` must accept B * beam_size rows.
    batch_size: B.
    max_decode_length: T.
    beam_size: K >= 1.
    alpha: length-penalty exponent (0 = plain log-probability).
    eos_id, bos_id: special ids.

  Returns:
    `(tokens int32 [B, K, T], scores float32 [B, K])`, beams in increasing order of score (the
    best is `[:, -1]`, as in T5X). Slots without a real hypothesis score <= NEG_INF / 2.
  """
  _check_lengths(batch_size, max_decode_length)
  if not isinstance(beam_size, (int, np.integer)) or beam_size < 1:
    raise ValueError(f"beam_size must be an int >= 1, got {beam_size!r}")
  b, k, t = batch_size, int(beam_size), max_decode_length
  alpha = float(alpha)
  state = jax.tree.map(lambda x: x if x.ndim == 0 else flat_batch_beam_expand(x, k), state)
  init = dict(
      step=jnp.int32(0),
      last=jnp.full((b * k,), bos_id, jnp.int32),
      alive_seqs=jnp.zeros((b, k, t), jnp.int32),
      # Only beam 0 is live at the start (all beams would be identical).
      alive_log_probs=jnp.tile(jnp.array([0.0] + [NEG_INF] * (k - 1), jnp.float32), (b, 1)),
      finished_seqs=jnp.zeros((b, k, t), jnp.int32),
      finished_scores=jnp.full((b, k), NEG_INF, jnp.float32),
      finished_flags=jnp.zeros((b, k), bool),
      state=state)
  cond = _beam_search_continues(t, alpha)

  def body(c):
    step = c["step"]
    logits, state = step_fn(c["last"][:, None], c["state"])
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    vocab = log_probs.shape[-1]
    candidates = (c["alive_log_probs"][:, :, None] + log_probs.reshape(b, k, vocab))
    top_log_probs, top_index = jax.lax.top_k(candidates.reshape(b, k * vocab), k)  # [B, K]
    parents, tokens = top_index // vocab, (top_index % vocab).astype(jnp.int32)
    seqs = _take_beams(c["alive_seqs"], parents)
    seqs = jax.lax.dynamic_update_slice(seqs, tokens[:, :, None], (0, 0, step))
    ended = (tokens == eos_id) | (step == t - 1)
    real = top_log_probs > NEG_INF / 2

    # Finished pool: the K best of the old pool and this step's finished extensions.
    new_scores = jnp.where(ended & real, top_log_probs / brevity_penalty(alpha, step + 1.0),
                           NEG_INF)
    pool_scores = jnp.concatenate([c["finished_scores"], new_scores], axis=1)
    pool_seqs = jnp.concatenate([c["finished_seqs"], seqs], axis=1)
    pool_flags = jnp.concatenate([c["finished_flags"], ended & real], axis=1)
    finished_scores, keep = jax.lax.top_k(pool_scores, k)

    # Alive beams: the extensions that did not end (ended ones are masked out).
    alive_log_probs = jnp.where(ended, NEG_INF, top_log_probs)
    return dict(
        step=step + 1,
        last=tokens.reshape(-1),
        alive_seqs=seqs,
        alive_log_probs=alive_log_probs,
        finished_seqs=_take_beams(pool_seqs, keep),
        finished_scores=finished_scores,
        finished_flags=_take_beams(pool_flags, keep),
        state=_gather_rows(state, b, k, parents))

  final = jax.lax.while_loop(cond, body, init)
  # top_k sorts descending; flip to T5X's increasing order (best last).
  return final["finished_seqs"][:, ::-1], final["finished_scores"][:, ::-1]
