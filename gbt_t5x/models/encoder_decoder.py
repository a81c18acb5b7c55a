"""`EncoderDecoderModel`: the T5X model surface (loss, eval, score, predict) around a flax module.

The model is stateless: it holds the flax module (normally `network.Transformer`), the two
vocabularies and the loss settings, and every method takes *unboxed* params (plain arrays). Only
`get_initial_variables` returns boxed variables (`nn.Partitioned` leaves) so that the partitioner
can read logical axis names with `nn.get_partition_spec`.

Batches use seqio's `EncDecFeatureConverter` names (`encoder_input_tokens`,
`decoder_input_tokens` with BOS = 0 already shifted in, `decoder_target_tokens`,
`decoder_loss_weights`, plus segment ids / positions when packed). Losses and metrics are sums
over the batch (T5X); the trainer turns them into means.

Must not import gin or `gbt_t5x.train`.
"""
from __future__ import annotations

from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from gbt_t5x.models import decoding
from gbt_t5x.models import losses

Array = jax.Array
Batch = Mapping[str, Array]

_PACKING_FEATURES = ("encoder_segment_ids", "decoder_segment_ids", "encoder_positions",
                     "decoder_positions")
_SPECIAL_NORMALIZERS = ("NUM_REAL_TARGET_TOKENS", "NUM_TOTAL_TARGET_TOKENS")
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
  """

  def __init__(self, module: nn.Module, input_vocabulary: Any, output_vocabulary: Any,
               label_smoothing: float = 0.0, z_loss: float = 1e-4,
               loss_normalizing_factor: float | str | None = None, optimizer_def: Any = None):
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

  def predict_batch(self, params: Any, batch: Batch,
                    max_decode_length: int | None = None) -> Array:
    """Greedy decodes int32 `[B, T]` (EOS = 1 written, zeros after it).

    T is `max_decode_length`, else the length of `decoder_target_tokens` (or
    `decoder_input_tokens`). Packed batches are not supported.
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
    params = nn.meta.unbox(params)
    variables = {"params": params}
    enc_tokens = batch["encoder_input_tokens"]
    encoded = self.module.apply(variables, enc_tokens, enable_dropout=False, method="encode")

    def tokens_to_logits(decoder_input_tokens: Array) -> Array:
      return self.module.apply(variables, encoded, enc_tokens, decoder_input_tokens,
                               jnp.ones_like(decoder_input_tokens), enable_dropout=False,
                               method="decode")

    return decoding.greedy_decode(tokens_to_logits, enc_tokens.shape[0], int(max_decode_length),
                                  eos_id=EOS_ID)
