"""The T5 v1.1 encoder-decoder Transformer in flax linen (T5X's `examples/t5/network.py` surface).

What it is: pre-LayerNorm (RMS, no bias) encoder and decoder stacks with T5 relative position
biases (one table per stack, shared across its layers), gated-GELU MLPs, no biases anywhere, a
token embedding shared by encoder and decoder, and an untied output projection `logits_dense`.
Attention logits are not scaled by 1/sqrt(head_dim); as in T5, the query kernel's initialiser is
divided by sqrt(head_dim) instead.

Conventions: token id 0 is padding (masked as attention key and query); packed rows carry segment
ids (0 = padding) that block cross-segment attention, and optional positions (restarting at 0 per
segment) that feed the relative position buckets. `Transformer.decode(..., decode=True)` runs the
decoder one token at a time over a key/value cache in the flax `cache` collection (T5X's
`cached_key` / `cached_value` / `cache_index`). Every parameter is created float32 and boxed
with `nn.with_logical_partitioning` under T5X's logical axis names; activations are constrained
with `nn.with_logical_constraint` (a no-op outside a mesh with logical axis rules).

Must not import gin, seqio or `gbt_t5x.train`.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
Initializer = Callable[..., Array]

_ATTENTION_MASK_BIAS = -1e10
_ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "gelu": nn.gelu,  # tanh approximation, T5 v1.1's "gelu_new"
    "relu": nn.relu,
    "silu": nn.silu,
    "swish": nn.silu,
    "linear": lambda x: x,
}
_DTYPES = ("float32", "bfloat16")

# Initialisers as T5X's T5 v1.1 network uses them.
_kernel_init = nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal")
_attention_kernel_init = nn.initializers.variance_scaling(1.0, "fan_in", "normal")
_embedding_init = nn.initializers.normal(stddev=1.0)
_relpos_init = nn.initializers.variance_scaling(1.0, "fan_avg", "uniform")


@dataclasses.dataclass(frozen=True)
class T5Config:
  """Hyper-parameters of the T5 v1.1 network (T5X's `network.T5Config`).

  Attributes:
    vocab_size: number of embeddings / output logits (>= the vocabulary's size).
    emb_dim: model width d_model.
    num_heads: attention heads.
    head_dim: width of each head (q/k/v projections are num_heads * head_dim wide).
    mlp_dim: hidden width of the gated MLP.
    num_encoder_layers, num_decoder_layers: stack depths.
    dropout_rate: dropout probability (embeddings, attention weights, sublayer outputs, MLP
      hidden, final outputs), used only when dropout is enabled.
    dtype: activation dtype, 'float32' or 'bfloat16' (params are always float32).
    mlp_activations: one activation per input projection `wi_i`; outputs are multiplied.
    logits_via_embedding: tie the output projection to the input embedding.
    relative_attention_num_buckets, relative_attention_max_distance: T5 relative positions.
  """
  vocab_size: int
  emb_dim: int
  num_heads: int
  head_dim: int
  mlp_dim: int
  num_encoder_layers: int
  num_decoder_layers: int
  dropout_rate: float = 0.1
  dtype: Any = "float32"
  mlp_activations: Sequence[str] = ("gelu", "linear")
  logits_via_embedding: bool = False
  relative_attention_num_buckets: int = 32
  relative_attention_max_distance: int = 128

  def __post_init__(self):
    for name in ("vocab_size", "emb_dim", "num_heads", "head_dim", "mlp_dim",
                 "relative_attention_num_buckets", "relative_attention_max_distance"):
      value = getattr(self, name)
      if not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"T5Config.{name} must be a positive int, got {value!r}")
    for name in ("num_encoder_layers", "num_decoder_layers"):
      value = getattr(self, name)
      if not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"T5Config.{name} must be a non-negative int, got {value!r}")
    if not 0.0 <= float(self.dropout_rate) < 1.0:
      raise ValueError(f"T5Config.dropout_rate must be in [0, 1), got {self.dropout_rate!r}")
    try:
      dtype_name = jnp.dtype(self.dtype).name
    except TypeError:
      dtype_name = repr(self.dtype)
    if dtype_name not in _DTYPES:
      raise ValueError(f"T5Config.dtype must be one of {_DTYPES}, got {self.dtype!r}")
    object.__setattr__(self, "dtype", dtype_name)
    activations = tuple(self.mlp_activations)
    if not activations or any(a not in _ACTIVATIONS for a in activations):
      raise ValueError(f"T5Config.mlp_activations must be a non-empty tuple of "
                       f"{sorted(_ACTIVATIONS)}, got {self.mlp_activations!r}")
    object.__setattr__(self, "mlp_activations", activations)
    if self.relative_attention_num_buckets < 2:
      raise ValueError("T5Config.relative_attention_num_buckets must be >= 2")

  @property
  def jnp_dtype(self) -> jnp.dtype:
    """The activation dtype as a numpy dtype object."""
    return jnp.dtype(self.dtype)


# ----------------------------------------------------------------------------- masks and buckets
def make_attention_mask(query_input: Array, key_input: Array,
                        pairwise_fn: Callable[[Array, Array], Array] = jnp.multiply) -> Array:
  """Pairwise mask `[B, 1, Q, K]` (bool) from per-position inputs `[B, Q]` and `[B, K]`."""
  mask = pairwise_fn(query_input[:, :, None], key_input[:, None, :])
  return mask[:, None, :, :].astype(bool)


def make_causal_mask(length: int) -> Array:
  """Lower-triangular mask `[1, 1, L, L]`: query i may attend to keys j <= i."""
  idx = jnp.arange(length)
  return (idx[:, None] >= idx[None, :])[None, None]


def relative_position_bucket(relative_position: Array, bidirectional: bool, num_buckets: int,
                             max_distance: int) -> Array:
  """T5's bucketing of `key_position - query_position` (int array, any shape) -> int32 buckets.

  Half the buckets (per direction when bidirectional) are exact small distances; the rest grow
  logarithmically up to `max_distance`, beyond which everything shares the last bucket. In the
  causal (unidirectional) case, keys after the query all fall in bucket 0.
  """
  ret = jnp.zeros_like(relative_position, dtype=jnp.int32)
  n = -relative_position.astype(jnp.int32)
  if bidirectional:
    num_buckets //= 2
    ret = ret + (n < 0).astype(jnp.int32) * num_buckets
    n = jnp.abs(n)
  else:
    n = jnp.maximum(n, 0)
  max_exact = num_buckets // 2
  is_small = n < max_exact
  scaled = (jnp.log(jnp.maximum(n, 1).astype(jnp.float32) / max_exact + np.finfo(np.float32).eps)
            / np.log(max_distance / max_exact) * (num_buckets - max_exact))
  val_if_large = max_exact + jnp.maximum(scaled, 0.0).astype(jnp.int32)
  val_if_large = jnp.minimum(val_if_large, num_buckets - 1)
  return ret + jnp.where(is_small, n, val_if_large)


def _mask_to_bias(mask: Array | None, dtype: Any) -> Array | None:
  if mask is None:
    return None
  return jnp.where(mask, 0.0, _ATTENTION_MASK_BIAS).astype(dtype)


# ----------------------------------------------------------------------------- layers
class RMSNorm(nn.Module):
  """T5 layer norm: x / sqrt(mean(x^2) + eps) * scale; no centering, no bias. [..., E] -> same."""
  epsilon: float = 1e-6
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    x32 = x.astype(jnp.float32)
    var = jnp.mean(jnp.square(x32), axis=-1, keepdims=True)
    y = (x32 * jax.lax.rsqrt(var + self.epsilon)).astype(self.dtype)
    scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, ("embed",)),
                       (x.shape[-1],), jnp.float32)
    return y * scale.astype(self.dtype)


class Embed(nn.Module):
  """Token embedding table `[vocab, embed]`; `attend` gives logits against it (tied output)."""
  num_embeddings: int
  features: int
  dtype: Any = jnp.float32

  def setup(self):
    self.embedding = self.param(
        "embedding", nn.with_logical_partitioning(_embedding_init, ("vocab", "embed")),
        (self.num_embeddings, self.features), jnp.float32)

  def __call__(self, tokens: Array) -> Array:
    """int tokens `[B, L]` -> embeddings `[B, L, E]` in `dtype`."""
    return jnp.take(self.embedding, tokens, axis=0).astype(self.dtype)

  def attend(self, x: Array) -> Array:
    """`[B, L, E]` -> float32 `[B, L, vocab]` dot products with the embedding table."""
    return jnp.einsum("ble,ve->blv", x.astype(jnp.float32), self.embedding)


class Dense(nn.Module):
  """Bias-free linear map on the last axis, kernel `[in, features]` with logical `kernel_axes`."""
  features: int
  kernel_axes: tuple[str, str]
  kernel_init: Initializer = _kernel_init
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    kernel = self.param("kernel", nn.with_logical_partitioning(self.kernel_init, self.kernel_axes),
                        (x.shape[-1], self.features), jnp.float32)
    return jnp.einsum("...i,io->...o", x.astype(self.dtype), kernel.astype(self.dtype))


class RelativePositionBiases(nn.Module):
  """T5 relative position attention biases from a `[heads, buckets]` table (one per stack)."""
  num_buckets: int
  max_distance: int
  num_heads: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, query_positions: Array, key_positions: Array, bidirectional: bool) -> Array:
    """Positions `[Q]`/`[K]` (shared) or `[B, Q]`/`[B, K]` -> bias `[1 or B, heads, Q, K]`."""
    table = self.param("rel_embedding",
                       nn.with_logical_partitioning(_relpos_init, ("heads", "relpos_buckets")),
                       (self.num_heads, self.num_buckets), jnp.float32)
    if query_positions.ndim == 1:
      query_positions, key_positions = query_positions[None], key_positions[None]
    relative = key_positions[:, None, :] - query_positions[:, :, None]  # [B, Q, K]
    buckets = relative_position_bucket(relative, bidirectional, self.num_buckets,
                                       self.max_distance)
    bias = jnp.take(table, buckets, axis=1)  # [H, B, Q, K]
    return jnp.transpose(bias, (1, 0, 2, 3)).astype(self.dtype)


class MultiHeadAttention(nn.Module):
  """Multi-head dot-product attention without logit scaling (the query init carries 1/sqrt(d)).

  With `decode=True` it is causal self-attention over a key/value cache kept in the flax `cache`
  collection, as in T5X: `cached_key`, `cached_value` `[B, L, heads, head_dim]` (activation dtype)
  and `cache_index` (int32 scalar, the next position to write). The first call (cache not yet
  created, `mutable=['cache']`) only sizes the cache from its full-length `[B, L, E]` inputs and
  attends causally; every later call takes one token `[B, 1, E]`, writes its key/value at
  `cache_index`, attends to positions `<= cache_index` and increments the index.
  """
  num_heads: int
  head_dim: int
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, inputs_q: Array, inputs_kv: Array, bias: Array | None = None, *,
               deterministic: bool, decode: bool = False) -> Array:
    """Attends `inputs_q [B, Q, E]` to `inputs_kv [B, K, E]`.

    Args:
      bias: additive attention bias broadcastable to `[B, heads, Q, K]` (masks as -1e10 plus
        relative position biases). In cached decoding steps it must cover the whole cache,
        `[1 or B, heads, L, L]`; the row of the current position is sliced out.
      deterministic: disables attention-weight dropout.
      decode: cached causal self-attention (see the class docstring); `inputs_kv` must be
        `inputs_q`.

    Returns:
      `[B, Q, E]` in `dtype`.
    """
    joined = self.num_heads * self.head_dim
    depth_scaling = float(np.sqrt(self.head_dim))

    def query_init(*args):
      return _attention_kernel_init(*args) / depth_scaling

    def project(name, x, init):
      y = Dense(joined, ("embed", "joined_kv"), init, self.dtype, name=name)(x)
      y = y.reshape(y.shape[:-1] + (self.num_heads, self.head_dim))
      return nn.with_logical_constraint(y, ("batch", "length", "heads", "kv"))

    query = project("query", inputs_q, query_init)
    key = project("key", inputs_kv, _attention_kernel_init)
    value = project("value", inputs_kv, _attention_kernel_init)
    if decode:
      key, value, bias = self._use_cache(key, value, bias)

    logits = jnp.einsum("bqhd,bkhd->bhqk", query.astype(jnp.float32), key.astype(jnp.float32))
    if bias is not None:
      logits = logits + bias.astype(jnp.float32)
    weights = jax.nn.softmax(logits, axis=-1)
    if not deterministic and self.dropout_rate > 0.0:
      # As in T5X: one keep-mask per (batch, head, key), broadcast over queries.
      keep_prob = 1.0 - self.dropout_rate
      shape = weights.shape[:-2] + (1,) + weights.shape[-1:]
      keep = jax.random.bernoulli(self.make_rng("dropout"), keep_prob, shape)
      weights = weights * keep.astype(weights.dtype) / keep_prob
    out = jnp.einsum("bhqk,bkhd->bqhd", weights.astype(self.dtype), value)
    out = out.reshape(out.shape[:-2] + (joined,))
    return Dense(inputs_q.shape[-1], ("joined_kv", "embed"), _attention_kernel_init, self.dtype,
                 name="out")(out)

  def _use_cache(self, key: Array, value: Array, bias: Array | None
                 ) -> tuple[Array, Array, Array]:
    """Cache bookkeeping of one decode call: new `[B, L, H, D]` keys/values and the bias.

    On the sizing call (no cache yet) it creates the cache and returns the inputs with a causal
    mask added to `bias`. On a step it returns the updated cache contents and `bias [.., H, 1, L]`
    = the current row of the given bias plus -1e10 on not-yet-written positions.
    """
    initialized = self.has_variable("cache", "cached_key")
    cached_key = self.variable("cache", "cached_key", jnp.zeros, key.shape, key.dtype)
    cached_value = self.variable("cache", "cached_value", jnp.zeros, value.shape, value.dtype)
    cache_index = self.variable("cache", "cache_index", lambda: jnp.zeros((), jnp.int32))
    if not initialized:
      causal = _mask_to_bias(make_causal_mask(key.shape[1]), jnp.float32)
      return key, value, causal if bias is None else bias + causal
    batch, length, heads, head_dim = cached_key.value.shape
    if key.shape != (batch, 1, heads, head_dim):
      raise ValueError(f"a cached decoding step takes one token per row: expected keys "
                       f"{(batch, 1, heads, head_dim)}, got {tuple(key.shape)}")
    index = cache_index.value
    constrain = lambda x: nn.with_logical_constraint(x, ("batch", "length", "heads", "kv"))
    cached_key.value = constrain(jax.lax.dynamic_update_slice(
        cached_key.value, key.astype(cached_key.value.dtype), (0, index, 0, 0)))
    cached_value.value = constrain(jax.lax.dynamic_update_slice(
        cached_value.value, value.astype(cached_value.value.dtype), (0, index, 0, 0)))
    cache_index.value = index + 1
    step_bias = _mask_to_bias((jnp.arange(length) <= index)[None, None, None, :], jnp.float32)
    if bias is not None:
      if bias.ndim != 4 or bias.shape[-2:] != (length, length):
        raise ValueError(f"cached decoding needs the self-attention bias for the whole cache "
                         f"[.., heads, {length}, {length}], got {tuple(bias.shape)}")
      row = jax.lax.dynamic_slice_in_dim(bias, index, 1, axis=-2)
      step_bias = step_bias + row.astype(jnp.float32)
    return cached_key.value, cached_value.value, step_bias


class MlpBlock(nn.Module):
  """Gated MLP: prod_i act_i(x @ wi_i) -> dropout -> @ wo. `[B, L, E]` -> `[B, L, E]`."""
  intermediate_dim: int
  activations: Sequence[str] = ("gelu", "linear")
  intermediate_dropout_rate: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, *, deterministic: bool) -> Array:
    hidden = None
    for i, name in enumerate(self.activations):
      h = Dense(self.intermediate_dim, ("embed", "mlp"), _kernel_init, self.dtype,
                name=f"wi_{i}" if len(self.activations) > 1 else "wi")(x)
      h = _ACTIVATIONS[name](h)
      hidden = h if hidden is None else hidden * h
    hidden = nn.Dropout(self.intermediate_dropout_rate, broadcast_dims=(-2,))(
        hidden, deterministic=deterministic)
    hidden = nn.with_logical_constraint(hidden, ("batch", "length", "mlp"))
    return Dense(x.shape[-1], ("mlp", "embed"), _kernel_init, self.dtype, name="wo")(hidden)


def _constrain(x: Array) -> Array:
  return nn.with_logical_constraint(x, ("batch", "length", "embed"))


class EncoderLayer(nn.Module):
  """Pre-norm self-attention + gated MLP, each with dropout and a residual."""
  config: T5Config

  @nn.compact
  def __call__(self, x: Array, bias: Array, *, deterministic: bool) -> Array:
    cfg = self.config
    dtype = cfg.jnp_dtype
    drop = nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,))
    y = RMSNorm(dtype=dtype, name="pre_attention_layer_norm")(x)
    y = MultiHeadAttention(cfg.num_heads, cfg.head_dim, cfg.dropout_rate, dtype,
                           name="attention")(y, y, bias, deterministic=deterministic)
    x = _constrain(x + drop(y, deterministic=deterministic))
    y = RMSNorm(dtype=dtype, name="pre_mlp_layer_norm")(x)
    y = MlpBlock(cfg.mlp_dim, cfg.mlp_activations, cfg.dropout_rate, dtype,
                 name="mlp")(y, deterministic=deterministic)
    return _constrain(x + drop(y, deterministic=deterministic))


class DecoderLayer(nn.Module):
  """Pre-norm causal self-attention, cross-attention and gated MLP, each with a residual."""
  config: T5Config

  @nn.compact
  def __call__(self, x: Array, encoded: Array, self_bias: Array, cross_bias: Array, *,
               deterministic: bool, decode: bool = False) -> Array:
    """`x [B, T, E]`, `encoded [B, S, E]`; `decode` caches the self-attention keys/values."""
    cfg = self.config
    dtype = cfg.jnp_dtype
    drop = nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,))
    y = RMSNorm(dtype=dtype, name="pre_self_attention_layer_norm")(x)
    y = MultiHeadAttention(cfg.num_heads, cfg.head_dim, cfg.dropout_rate, dtype,
                           name="self_attention")(y, y, self_bias, deterministic=deterministic,
                                                  decode=decode)
    x = _constrain(x + drop(y, deterministic=deterministic))
    y = RMSNorm(dtype=dtype, name="pre_cross_attention_layer_norm")(x)
    y = MultiHeadAttention(cfg.num_heads, cfg.head_dim, cfg.dropout_rate, dtype,
                           name="encoder_decoder_attention")(y, encoded, cross_bias,
                                                             deterministic=deterministic)
    x = _constrain(x + drop(y, deterministic=deterministic))
    y = RMSNorm(dtype=dtype, name="pre_mlp_layer_norm")(x)
    y = MlpBlock(cfg.mlp_dim, cfg.mlp_activations, cfg.dropout_rate, dtype,
                 name="mlp")(y, deterministic=deterministic)
    return _constrain(x + drop(y, deterministic=deterministic))


def _positions_or_arange(positions: Array | None, length: int) -> Array:
  return jnp.arange(length) if positions is None else positions


class Encoder(nn.Module):
  """Embeds, runs the encoder layers with a shared bidirectional relative-position bias, norms."""
  config: T5Config
  shared_embedding: nn.Module

  @nn.compact
  def __call__(self, tokens: Array, mask: Array, positions: Array | None, *,
               deterministic: bool) -> Array:
    cfg = self.config
    dtype = cfg.jnp_dtype
    length = tokens.shape[1]
    pos = _positions_or_arange(positions, length)
    relpos = RelativePositionBiases(cfg.relative_attention_num_buckets,
                                    cfg.relative_attention_max_distance, cfg.num_heads,
                                    jnp.float32, name="relpos_bias")
    bias = relpos(pos, pos, bidirectional=True) + _mask_to_bias(mask, jnp.float32)
    drop = nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,))
    x = drop(self.shared_embedding(tokens), deterministic=deterministic)
    x = _constrain(x.astype(dtype))
    for i in range(cfg.num_encoder_layers):
      x = EncoderLayer(cfg, name=f"layers_{i}")(x, bias, deterministic=deterministic)
    x = RMSNorm(dtype=dtype, name="encoder_norm")(x)
    return _constrain(drop(x, deterministic=deterministic))


class Decoder(nn.Module):
  """Embeds decoder inputs, runs causal decoder layers with cross-attention, returns logits.

  With `decode=True` the self-attention layers use their key/value caches (see
  `MultiHeadAttention`); the relative position bias is then built for the whole cache length
  `max_decode_length` (default: the input length, right for the cache-sizing call) and each
  layer slices out the current position's row.
  """
  config: T5Config
  shared_embedding: nn.Module

  @nn.compact
  def __call__(self, encoded: Array, tokens: Array, self_mask: Array | None,
               cross_mask: Array, positions: Array | None, *, deterministic: bool,
               decode: bool = False, max_decode_length: int | None = None) -> Array:
    cfg = self.config
    dtype = cfg.jnp_dtype
    length = tokens.shape[1]
    if decode:
      length = max_decode_length or length
    pos = _positions_or_arange(positions, length)
    relpos = RelativePositionBiases(cfg.relative_attention_num_buckets,
                                    cfg.relative_attention_max_distance, cfg.num_heads,
                                    jnp.float32, name="relpos_bias")
    self_bias = relpos(pos, pos, bidirectional=False)
    if self_mask is not None:
      self_bias = self_bias + _mask_to_bias(self_mask, jnp.float32)
    cross_bias = _mask_to_bias(cross_mask, jnp.float32)
    drop = nn.Dropout(cfg.dropout_rate, broadcast_dims=(-2,))
    y = drop(self.shared_embedding(tokens), deterministic=deterministic)
    y = _constrain(y.astype(dtype))
    for i in range(cfg.num_decoder_layers):
      y = DecoderLayer(cfg, name=f"layers_{i}")(y, encoded, self_bias, cross_bias,
                                                 deterministic=deterministic, decode=decode)
    y = RMSNorm(dtype=dtype, name="decoder_norm")(y)
    y = _constrain(drop(y, deterministic=deterministic))
    if cfg.logits_via_embedding:
      logits = self.shared_embedding.attend(y) / np.sqrt(y.shape[-1])
    else:
      logits = Dense(cfg.vocab_size, ("embed", "vocab"), _kernel_init, jnp.float32,
                     name="logits_dense")(y)
    return nn.with_logical_constraint(logits.astype(jnp.float32), ("batch", "length", "vocab"))


def _check_2d(name: str, x: Array | None, like: Array | None = None) -> None:
  if x is None:
    return
  if x.ndim != 2:
    raise ValueError(f"{name} must be [batch, length], got shape {tuple(x.shape)}")
  if like is not None and tuple(x.shape) != tuple(like.shape):
    raise ValueError(f"{name} has shape {tuple(x.shape)}, expected {tuple(like.shape)}")


class Transformer(nn.Module):
  """T5 v1.1 encoder-decoder. Params: `token_embedder`, `encoder`, `decoder` (see module doc)."""
  config: T5Config

  def setup(self):
    cfg = self.config
    self.token_embedder = Embed(cfg.vocab_size, cfg.emb_dim, cfg.jnp_dtype)
    self.encoder = Encoder(cfg, self.token_embedder)
    self.decoder = Decoder(cfg, self.token_embedder)

  def encode(self, encoder_input_tokens: Array, encoder_segment_ids: Array | None = None,
             encoder_positions: Array | None = None, *, enable_dropout: bool = True) -> Array:
    """Encoder outputs `[B, S, E]` (activation dtype) for int tokens `[B, S]` (0 = padding).

    Packed rows give `encoder_segment_ids [B, S]` (attention stays within a segment) and
    `encoder_positions [B, S]` (restarting at 0 per segment; default arange).
    """
    _check_2d("encoder_input_tokens", encoder_input_tokens)
    _check_2d("encoder_segment_ids", encoder_segment_ids, encoder_input_tokens)
    _check_2d("encoder_positions", encoder_positions, encoder_input_tokens)
    valid = encoder_input_tokens > 0
    mask = make_attention_mask(valid, valid)
    if encoder_segment_ids is not None:
      mask = mask & make_attention_mask(encoder_segment_ids, encoder_segment_ids, jnp.equal)
    return self.encoder(encoder_input_tokens, mask, encoder_positions,
                        deterministic=not enable_dropout)

  def decode(self, encoded: Array, encoder_input_tokens: Array, decoder_input_tokens: Array,
             decoder_target_tokens: Array, encoder_segment_ids: Array | None = None,
             decoder_segment_ids: Array | None = None, decoder_positions: Array | None = None,
             *, enable_dropout: bool = True, decode: bool = False,
             max_decode_length: int | None = None) -> Array:
    """Decoder logits `[B, T, vocab]` float32 given encoder outputs `encoded [B, S, E]`.

    `decoder_input_tokens [B, T]` are the shifted targets (BOS = 0); `decoder_target_tokens
    [B, T]` only supply the padding mask (target 0 = padding). The causal mask, the encoder
    padding mask (`encoder_input_tokens > 0`) and, when packed, the segment masks are combined.

    Cached decoding (T5X's protocol), `decode=True` with `mutable=['cache']`:
      1. size the cache with a call on full-length inputs `[B, L]` (any tokens, e.g. ones);
         only the returned `cache` collection matters;
      2. then call once per position with `decoder_input_tokens [B, 1]` (the previous token, BOS
         first), `decoder_target_tokens` nonzero `[B, 1]` and `max_decode_length=L`, passing
         the cache back in each time. Each step returns `[B, 1, vocab]` logits equal to the
         uncached pass's logits at that position.
    In decode mode the decoder has no self-attention padding mask and packed inputs are rejected.
    """
    _check_2d("decoder_input_tokens", decoder_input_tokens)
    _check_2d("decoder_target_tokens", decoder_target_tokens, decoder_input_tokens)
    _check_2d("decoder_segment_ids", decoder_segment_ids, decoder_input_tokens)
    _check_2d("decoder_positions", decoder_positions, decoder_input_tokens)
    if encoded.shape[:2] != encoder_input_tokens.shape:
      raise ValueError(f"encoded has shape {tuple(encoded.shape)}, which does not match "
                       f"encoder_input_tokens {tuple(encoder_input_tokens.shape)}")
    if (encoder_segment_ids is None) != (decoder_segment_ids is None):
      raise ValueError("give both encoder_segment_ids and decoder_segment_ids, or neither")
    if decode and (decoder_segment_ids is not None or decoder_positions is not None):
      raise ValueError("cached decoding (decode=True) does not support packed inputs")
    if max_decode_length is not None and (not decode or max_decode_length < 1):
      raise ValueError(f"max_decode_length ({max_decode_length!r}) is for decode=True only "
                       "and must be positive")
    dec_valid = decoder_target_tokens > 0
    cross_mask = make_attention_mask(dec_valid, encoder_input_tokens > 0)
    if decode:
      self_mask = None  # the cache applies causality; decoded rows have no padding
    else:
      self_mask = make_attention_mask(dec_valid, dec_valid) & make_causal_mask(
          decoder_input_tokens.shape[1])
    if decoder_segment_ids is not None:
      self_mask = self_mask & make_attention_mask(decoder_segment_ids, decoder_segment_ids,
                                                  jnp.equal)
      cross_mask = cross_mask & make_attention_mask(decoder_segment_ids, encoder_segment_ids,
                                                    jnp.equal)
    return self.decoder(encoded, decoder_input_tokens, self_mask, cross_mask, decoder_positions,
                        deterministic=not enable_dropout, decode=decode,
                        max_decode_length=max_decode_length)

  def __call__(self, encoder_input_tokens: Array, decoder_input_tokens: Array,
               decoder_target_tokens: Array, encoder_segment_ids: Array | None = None,
               decoder_segment_ids: Array | None = None, encoder_positions: Array | None = None,
               decoder_positions: Array | None = None, *, enable_dropout: bool = True) -> Array:
    """Teacher-forced logits `[B, T, vocab]` float32 (see `encode` and `decode`)."""
    encoded = self.encode(encoder_input_tokens, encoder_segment_ids, encoder_positions,
                          enable_dropout=enable_dropout)
    return self.decode(encoded, encoder_input_tokens, decoder_input_tokens,
                       decoder_target_tokens, encoder_segment_ids, decoder_segment_ids,
                       decoder_positions, enable_dropout=enable_dropout)
