"""`EncoderDecoderModel`: the T5X model surface (loss, eval, score, predict) around a flax module.

The model is stateless: it holds the flax module (normally `network.Transformer`), the two
vocabularies and the loss settings, and every method takes *unboxed* params (plain arrays). Only
`get_initial_variables` returns boxed variables (`nn.Partitioned` leaves) so that the partitioner
can read logical axis names with `nn.get_partition_spec`.

Batches use seqio's `EncDecFeatureConverter` names (`encoder_input_tokens`,
`decoder_input_tokens` with BOS = 0 already shifted in, `decoder_target_tokens`,
`decoder_loss_weights`, plus segment ids / positions when packed). Losses and metrics are sums
over the batch (T5X); the trainer turns them into means. `predict_batch` decodes greedily by
default, or samples / beam-searches with T5X-style `decoder_params` (loops in `decoding`).

Must not import gin or `gbt_t5x.train`.
"""
from __future__ import annotations

import inspect
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from gbt_t5x.models import decoding
from gbt_t5x.models import losses

Array = jax.Array
Batch = Mapping[str, Array]

_PACKING_FEATURES = ("encoder_segment_ids", "decoder_segment_ids", "encoder_positions",
                     "decoder_positions")
_SPECIAL_NORMALIZERS = ("NUM_REAL_TARGET_TOKENS", "NUM_TOTAL_TARGET_TOKENS")
_DECODE_METHODS = ("greedy", "sample", "beam")
_DECODER_DEFAULTS = {"method": "greedy", "beam_size": 1, "alpha": 0.6, "temperature": 1.0,
                     "topk": 0}
EOS_ID = 1


def _count_packed_examples(segment_ids: Array) -> Array:
  """Number of segments (runs of equal nonzero ids) in `[B, T]` segment ids; float32 scalar."""
  previous = jnp.pad(segment_ids[:, :-1], ((0, 0), (1, 0)))
  starts = (segment_ids > 0) & (segment_ids != previous)
  return jnp.sum(starts).astype(jnp.float32)


class EncoderDecoderModel:
  """T5X-style encoder-decoder model wrapper.

  Args:
    module: a flax module with T5X's `Transformer` call signature and `encode`/`decode` methods.
    input_vocabulary, output_vocabulary: seqio vocabularies (kept as attributes; unused here).
    label_smoothing: default training label smoothing in [0, 1).
    z_loss: coefficient of the z-loss `log(Z)^2` per target token.
    loss_normalizing_factor: None (sums), a positive number, or 'NUM_REAL_TARGET_TOKENS' /
      'NUM_TOTAL_TARGET_TOKENS' (the batch's weight sum / target count).
    optimizer_def: the optax optimizer the trainer uses (T5X keeps it on the model); optional.
    default_decoder_params: decoder options used by `predict_batch` unless overridden per call
      (e.g. `{'method': 'beam', 'beam_size': 4, 'alpha': 0.6}`); default greedy.
  """

  def __init__(self, module: nn.Module, input_vocabulary: Any, output_vocabulary: Any,
               label_smoothing: float = 0.0, z_loss: float = 1e-4,
               loss_normalizing_factor: float | str | None = None, optimizer_def: Any = None,
               default_decoder_params: Mapping[str, Any] | None = None):
    if not 0.0 <= float(label_smoothing) < 1.0:
      raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing!r}")
    if float(z_loss) < 0.0:
      raise ValueError(f"z_loss must be non-negative, got {z_loss!r}")
    if isinstance(loss_normalizing_factor, str):
      if loss_normalizing_factor.upper() not in _SPECIAL_NORMALIZERS:
        raise ValueError(f"loss_normalizing_factor {loss_normalizing_factor!r} is not one of "
                         f"{_SPECIAL_NORMALIZERS} or a positive number")
      loss_normalizing_factor = loss_normalizing_factor.upper()
    elif loss_normalizing_factor is not None and float(loss_normalizing_factor) <= 0:
      raise ValueError(f"loss_normalizing_factor must be positive, got {loss_normalizing_factor}")
    self.module = module
    self.input_vocabulary = input_vocabulary
    self.output_vocabulary = output_vocabulary
    self.label_smoothing = float(label_smoothing)
    self.z_loss = float(z_loss)
    self.loss_normalizing_factor = loss_normalizing_factor
    self.optimizer_def = optimizer_def
    self.default_decoder_params = dict(default_decoder_params or {})
    _resolve_decoder_params(self.default_decoder_params, 1, None, check_rng=False)

  # ------------------------------------------------------------------ variables and logits
  def get_initial_variables(self, rng: Array, input_shapes: Mapping[str, tuple[int, ...]],
                            input_types: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Boxed initial variables `{'params': ...}` (leaves `nn.Partitioned` with logical names).

    Args:
      rng: PRNG key for the initialisers.
      input_shapes: at least `encoder_input_tokens` and `decoder_input_tokens` shapes `(B, L)`.
      input_types: ignored (T5X compatibility; tokens are int32).
    """
    del input_types
    for key in ("encoder_input_tokens", "decoder_input_tokens"):
      if key not in input_shapes:
        raise ValueError(f"input_shapes needs {key!r}; got keys {sorted(input_shapes)}")
    enc = jnp.ones(tuple(input_shapes["encoder_input_tokens"]), jnp.int32)
    dec = jnp.ones(tuple(input_shapes["decoder_input_tokens"]), jnp.int32)
    return dict(self.module.init(rng, enc, dec, dec, enable_dropout=False))

  def logits_fn(self, params: Any, batch: Batch, dropout_rng: Array | None = None) -> Array:
    """Teacher-forced logits `[B, T, vocab]` float32; dropout is on iff `dropout_rng` is given."""
    for key in ("encoder_input_tokens", "decoder_input_tokens", "decoder_target_tokens"):
      if key not in batch:
        raise ValueError(f"batch is missing feature {key!r}")
    packed = {k: batch[k] for k in _PACKING_FEATURES if k in batch}
    rngs = {"dropout": dropout_rng} if dropout_rng is not None else {}
    return self.module.apply({"params": nn.meta.unbox(params)}, batch["encoder_input_tokens"],
                             batch["decoder_input_tokens"], batch["decoder_target_tokens"],
                             **packed, enable_dropout=dropout_rng is not None, rngs=rngs)

  # ------------------------------------------------------------------ losses
  @staticmethod
  def _base_weights(batch: Batch) -> Array:
    """`decoder_loss_weights` as float32 `[B, T]`, or `targets > 0` when the batch has none."""
    if "decoder_loss_weights" in batch:
      return jnp.asarray(batch["decoder_loss_weights"], jnp.float32)
    return (batch["decoder_target_tokens"] > 0).astype(jnp.float32)

  def _normalizing_factor(self, batch: Batch, base_weights: Array) -> Any:
    if self.loss_normalizing_factor == "NUM_REAL_TARGET_TOKENS":
      return jnp.maximum(jnp.sum(base_weights), 1.0)
    if self.loss_normalizing_factor == "NUM_TOTAL_TARGET_TOKENS":
      return float(batch["decoder_target_tokens"].size)
    return self.loss_normalizing_factor

  def loss_from_logits(self, logits: Array, batch: Batch, label_smoothing: Any = None,
                       token_weights: Array | None = None) -> tuple[Array, dict[str, Array]]:
    """Summed training loss and metric sums from logits `[B, T, V]`.

    Args:
      logits: `[B, T, V]` (any float dtype; the loss is float32).
      batch: needs `decoder_target_tokens` (and normally `decoder_loss_weights`).
      label_smoothing: overrides the model's value; may be a traced scalar.
      token_weights: optional float `[B, T]` (traced) multiplying `decoder_loss_weights`.

    Returns:
      `(loss, metrics)`: `loss` float32 scalar (cross-entropy + z-loss, summed over weighted
      tokens, divided by the normalising factor if set). `metrics` are float32 sums: `loss`,
      `cross_ent_loss`, `z_loss` (with the same weights as the loss), `accuracy` (correct tokens
      weighted by `decoder_loss_weights`), `num_tokens` (sum of `decoder_loss_weights`) and
      `num_examples` (packed segments, or rows with any target token).
    """
    targets = batch["decoder_target_tokens"]
    if logits.shape[:-1] != targets.shape:
      raise ValueError(f"logits shape {tuple(logits.shape)} does not match "
                       f"decoder_target_tokens {tuple(targets.shape)}")
    base = self._base_weights(batch)
    weights = base
    if token_weights is not None:
      if tuple(token_weights.shape) != tuple(targets.shape):
        raise ValueError(f"token_weights shape {tuple(token_weights.shape)} does not match "
                         f"decoder_target_tokens {tuple(targets.shape)}")
      weights = base * jnp.asarray(token_weights, jnp.float32)
    ls = self.label_smoothing if label_smoothing is None else label_smoothing
    loss, z_loss, _ = losses.compute_weighted_cross_entropy(
        logits, targets, weights, label_smoothing=ls, z_loss=self.z_loss,
        loss_normalizing_factor=self._normalizing_factor(batch, base))
    correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
    if "decoder_segment_ids" in batch:
      num_examples = _count_packed_examples(batch["decoder_segment_ids"])
    else:
      num_examples = jnp.sum(jnp.any(base > 0, axis=-1)).astype(jnp.float32)
    metrics = {
        "loss": loss,
        "cross_ent_loss": loss - z_loss,
        "z_loss": z_loss,
        "accuracy": jnp.sum(correct * base),
        "num_tokens": jnp.sum(base),
        "num_examples": num_examples,
    }
    return loss, metrics

  def loss_fn(self, params: Any, batch: Batch, dropout_rng: Array | None,
              label_smoothing: Any = None, token_weights: Array | None = None
              ) -> tuple[Array, dict[str, Array]]:
    """Training loss (dropout iff `dropout_rng`) and metric sums; see `loss_from_logits`."""
    logits = self.logits_fn(params, batch, dropout_rng)
    return self.loss_from_logits(logits, batch, label_smoothing, token_weights)

  def guide_loss_fn(self, params: Any, batch: Batch) -> Array:
    """Plain token cross-entropy summed over `decoder_loss_weights`: no dropout, smoothing or
    z-loss, no normalising factor. float32 scalar (nats)."""
    logits = self.logits_fn(params, batch, None)
    loss, _, _ = losses.compute_weighted_cross_entropy(
        logits, batch["decoder_target_tokens"], self._base_weights(batch))
    return loss

  def eval_fn(self, params: Any, batch: Batch) -> tuple[Array, dict[str, Array]]:
    """`loss_fn` without dropout, with the model's own label smoothing and z-loss."""
    return self.loss_fn(params, batch, None)

  # ------------------------------------------------------------------ inference
  def score_batch(self, params: Any, batch: Batch) -> Array:
    """Sum log-likelihood (nats) of each row's targets under `decoder_loss_weights`; `[B]`."""
    logits = self.logits_fn(params, batch, None)
    neg_logp, _ = losses.cross_entropy_with_logits(logits, batch["decoder_target_tokens"])
    return -jnp.sum(neg_logp * self._base_weights(batch), axis=-1)

  def predict_batch(self, params: Any, batch: Batch, rng: Array | None = None,
                    decoder_params: Mapping[str, Any] | None = None,
                    max_decode_length: int | None = None, return_all_decodes: bool = False,
                    num_decodes: int = 1) -> Array:
    """Decoded tokens int32 `[B, T]` (or `[B, num_decodes, T]`); see `predict_batch_with_aux`."""
    decodes, _ = self.predict_batch_with_aux(params, batch, rng, decoder_params,
                                             max_decode_length, return_all_decodes, num_decodes)
    return decodes

  def predict_batch_with_aux(self, params: Any, batch: Batch, rng: Array | None = None,
                             decoder_params: Mapping[str, Any] | None = None,
                             max_decode_length: int | None = None,
                             return_all_decodes: bool = False, num_decodes: int = 1
                             ) -> tuple[Array, dict[str, Array]]:
    """Decodes each example (EOS = 1 written, zeros after it) and scores the decodes.

    Args:
      params: boxed or unboxed params.
      batch: needs `encoder_input_tokens [B, S]`; packed batches are not supported.
      rng: PRNG key, required by sampling.
      decoder_params: overrides of the model's `default_decoder_params` (T5X's name):
        'method': 'greedy' (default) | 'sample' | 'beam'; 'temperature' (> 0, default 1.0)
        and 'topk' (>= 0, 0 = all; default 0) for sampling; 'beam_size' (>= num_decodes,
        default num_decodes) and 'alpha' (length penalty ((5+len)/6)^alpha, default 0.6) for
        beam search. Python values: they are static under `jax.jit` (bind them with
        `functools.partial`).
      max_decode_length: T; default the length of `decoder_target_tokens` (or
        `decoder_input_tokens`).
      return_all_decodes: return every decode `[B, num_decodes, T]` in increasing order of
        score (best last, as T5X) instead of the best one `[B, T]`.
      num_decodes: decodes per example (beams kept, or independent samples); greedy gives 1.

    Returns:
      `(decodes, {'scores': ...})`: scores `[B]` or `[B, num_decodes]` float32, the sum of the
      model's log-probabilities of the written tokens (divided by the length penalty for beam
      search). Modules whose `decode` has a `decode` (key/value cache) argument decode one token
      per step from the cache; others re-run the decoder on the whole prefix each step.
    """
    if "encoder_input_tokens" not in batch:
      raise ValueError("batch is missing feature 'encoder_input_tokens'")
    if any(k in batch for k in _PACKING_FEATURES):
      raise ValueError("predict_batch does not support packed batches (segment ids/positions)")
    if max_decode_length is None:
      for key in ("decoder_target_tokens", "decoder_input_tokens"):
        if key in batch:
          max_decode_length = batch[key].shape[1]
          break
      else:
        raise ValueError("give max_decode_length or a batch with decoder_target_tokens")
    if not isinstance(num_decodes, (int, np.integer)) or num_decodes < 1:
      raise ValueError(f"num_decodes must be an int >= 1, got {num_decodes!r}")
    opts = _resolve_decoder_params({**self.default_decoder_params, **(decoder_params or {})},
                                   int(num_decodes), rng)
    length = int(max_decode_length)
    variables = {"params": nn.meta.unbox(params)}
    enc_tokens = jnp.asarray(batch["encoder_input_tokens"])
    batch_size = enc_tokens.shape[0]
    encoded = self.module.apply(variables, enc_tokens, enable_dropout=False, method="encode")

    if opts["method"] == "beam":
      beam_size = opts["beam_size"]
      step_fn, state = self._step_fn(variables, encoded, enc_tokens, beam_size, length)
      decodes, scores = decoding.beam_search(step_fn, state, batch_size, length, beam_size,
                                             alpha=opts["alpha"], eos_id=EOS_ID)
      decodes, scores = decodes[:, -num_decodes:], scores[:, -num_decodes:]
    elif opts["method"] == "sample":
      step_fn, state = self._step_fn(variables, encoded, enc_tokens, num_decodes, length)
      state = jax.tree.map(
          lambda x: x if x.ndim == 0 else decoding.flat_batch_beam_expand(x, num_decodes), state)
      flat, flat_scores = decoding.temperature_sample(
          step_fn, state, rng, batch_size * num_decodes, length, opts["temperature"],
          opts["topk"], eos_id=EOS_ID)
      decodes = flat.reshape(batch_size, num_decodes, length)
      scores = flat_scores.reshape(batch_size, num_decodes)
      order = jnp.argsort(scores, axis=1)  # increasing, best last (T5X)
      decodes = jnp.take_along_axis(decodes, order[:, :, None], axis=1)
      scores = jnp.take_along_axis(scores, order, axis=1)
    else:
      step_fn, state = self._step_fn(variables, encoded, enc_tokens, 1, length)
      flat, flat_scores = decoding.greedy_search(step_fn, state, batch_size, length,
                                                 eos_id=EOS_ID)
      decodes, scores = flat[:, None], flat_scores[:, None]
    if return_all_decodes:
      return decodes, {"scores": scores}
    return decodes[:, -1], {"scores": scores[:, -1]}

  def _step_fn(self, variables: Mapping[str, Any], encoded: Array, enc_tokens: Array,
               copies: int, length: int) -> tuple[decoding.StepFn, Any]:
    """Single-step decoder over `B * copies` rows and its initial state for `B` rows.

    Encoder outputs `[B, S, E]` are repeated `copies` times (batch-major) for the step function;
    the state (cache, or prefix buffer) is built for B rows and the decoding loop repeats it.
    """
    rows_encoded = decoding.flat_batch_beam_expand(encoded, copies)
    rows_tokens = decoding.flat_batch_beam_expand(enc_tokens, copies)
    batch_size = enc_tokens.shape[0]
    if not _supports_cache(self.module):
      def tokens_to_logits(decoder_input_tokens: Array) -> Array:
        return self.module.apply(variables, rows_encoded, rows_tokens, decoder_input_tokens,
                                 jnp.ones_like(decoder_input_tokens), enable_dropout=False,
                                 method="decode")
      step_fn, _ = decoding.prefix_step_fn(tokens_to_logits, batch_size * copies, length)
      _, state = decoding.prefix_step_fn(tokens_to_logits, batch_size, length)
      return step_fn, state

    ones = jnp.ones((batch_size, length), jnp.int32)
    _, initial = self.module.apply(variables, encoded, enc_tokens, ones, ones,
                                   enable_dropout=False, decode=True, method="decode",
                                   mutable=["cache"])

    def step_fn(tokens: Array, cache: Any) -> tuple[Array, Any]:
      logits, new = self.module.apply({**variables, "cache": cache}, rows_encoded, rows_tokens,
                                      tokens, jnp.ones_like(tokens), enable_dropout=False,
                                      decode=True, max_decode_length=length, method="decode",
                                      mutable=["cache"])
      return logits[:, 0], new["cache"]

    return step_fn, initial["cache"]


def _supports_cache(module: nn.Module) -> bool:
  """Whether `module.decode` takes a `decode` flag (T5X's cached single-step decoding)."""
  try:
    return "decode" in inspect.signature(module.decode).parameters
  except (AttributeError, TypeError, ValueError):
    return False


def _resolve_decoder_params(params: Mapping[str, Any], num_decodes: int, rng: Array | None,
                            check_rng: bool = True) -> dict[str, Any]:
  """Validated decoder options with defaults filled in (see `predict_batch_with_aux`)."""
  unknown = set(params) - set(_DECODER_DEFAULTS)
  if unknown:
    raise ValueError(f"unknown decoder_params {sorted(unknown)}; "
                     f"known: {sorted(_DECODER_DEFAULTS)}")
  opts = {**_DECODER_DEFAULTS, "beam_size": num_decodes, **params}
  method = opts["method"]
  if method not in _DECODE_METHODS:
    raise ValueError(f"decoder_params['method'] must be one of {_DECODE_METHODS}, got {method!r}")
  beam_size, topk = opts["beam_size"], opts["topk"]
  if not isinstance(beam_size, (int, np.integer)) or beam_size < 1:
    raise ValueError(f"beam_size must be an int >= 1, got {beam_size!r}")
  if not isinstance(topk, (int, np.integer)) or topk < 0:
    raise ValueError(f"topk must be an int >= 0 (0 = no top-k filter), got {topk!r}")
  if method == "greedy" and num_decodes != 1:
    raise ValueError(f"greedy decoding gives one decode per example, got num_decodes="
                     f"{num_decodes}; use method 'sample' or 'beam'")
  if method == "beam" and beam_size < num_decodes:
    raise ValueError(f"beam_size ({beam_size}) must be >= num_decodes ({num_decodes})")
  if method == "sample":
    if check_rng and rng is None:
      raise ValueError("sampling (method 'sample') needs an rng")
    temperature = opts["temperature"]
    if not isinstance(temperature, jax.core.Tracer) and not float(temperature) > 0.0:
      raise ValueError(f"temperature must be > 0 for sampling, got {temperature!r}")
  opts["beam_size"], opts["topk"] = int(beam_size), int(topk)
  return opts
