"""Tests of the T5 v1.1 network: layers vs numpy, masks (padding, packing, causality), axes."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gbt_t5x.models import network

VOCAB = 37
CFG = network.T5Config(vocab_size=VOCAB, emb_dim=16, num_heads=2, head_dim=8, mlp_dim=32,
                       num_encoder_layers=2, num_decoder_layers=2, dropout_rate=0.1)

EXPECTED_AXES = {
    "embedding": ("vocab", "embed"),
    "query": ("embed", "joined_kv"),
    "key": ("embed", "joined_kv"),
    "value": ("embed", "joined_kv"),
    "out": ("joined_kv", "embed"),
    "wi_0": ("embed", "mlp"),
    "wi_1": ("embed", "mlp"),
    "wo": ("mlp", "embed"),
    "scale": ("embed",),
    "rel_embedding": ("heads", "relpos_buckets"),
    "logits_dense": ("embed", "vocab"),
}


@pytest.fixture(scope="module")
def module():
  return network.Transformer(CFG)


@pytest.fixture(scope="module")
def boxed(module):
  tokens = jnp.ones((2, 8), jnp.int32)
  init = jax.jit(lambda rng: module.init(rng, tokens, tokens[:, :6], tokens[:, :6],
                                         enable_dropout=False))
  return init(jax.random.PRNGKey(0))


@pytest.fixture(scope="module")
def params(boxed):
  return nn.meta.unbox(boxed)["params"]


@pytest.fixture(scope="module")
def fwd(module):
  """Deterministic logits; jit caches one compile per input structure/shape."""
  @jax.jit
  def f(params, enc, dec_in, dec_tgt, **packed):
    return module.apply({"params": params}, enc, dec_in, dec_tgt, **packed, enable_dropout=False)
  return f


def _batch(seed=0, b=2, s=8, t=6, enc_len=(5, 8), dec_len=(4, 6)):
  rng = np.random.RandomState(seed)
  enc = rng.randint(2, VOCAB, size=(b, s)).astype(np.int32)
  tgt = rng.randint(2, VOCAB, size=(b, t)).astype(np.int32)
  for i in range(b):
    enc[i, enc_len[i]:] = 0
    tgt[i, dec_len[i]:] = 0
  dec_in = np.concatenate([np.zeros((b, 1), np.int32), tgt[:, :-1]], axis=1)
  return enc, dec_in, tgt


# --------------------------------------------------------------------------- shapes and axes
def test_forward_shape_dtype_and_finite(fwd, params):
  enc, dec_in, tgt = _batch()
  logits = fwd(params, enc, dec_in, tgt)
  assert logits.shape == (2, 6, VOCAB)
  assert logits.dtype == jnp.float32
  assert np.all(np.isfinite(logits))


def test_param_logical_axes_and_dtypes(boxed):
  leaves = jax.tree_util.tree_leaves_with_path(
      boxed["params"], is_leaf=lambda x: isinstance(x, nn.Partitioned))
  seen = {}
  for path, leaf in leaves:
    assert isinstance(leaf, nn.Partitioned), f"{jax.tree_util.keystr(path)} is not boxed"
    keys = [p.key for p in path]
    name = keys[-2] if keys[-1] == "kernel" else keys[-1]
    assert leaf.names == EXPECTED_AXES[name], (keys, leaf.names)
    assert leaf.value.dtype == jnp.float32
    assert len(leaf.value.shape) == len(leaf.names)
    seen[name] = seen.get(name, 0) + 1
  assert set(seen) == set(EXPECTED_AXES)
  # One shared embedding, one relative-position table per stack, one output projection.
  assert seen["embedding"] == 1 and seen["rel_embedding"] == 2 and seen["logits_dense"] == 1
  # No biases anywhere: every kernel is 2-D, every scale 1-D.
  specs = nn.get_partition_spec(boxed)["params"]
  assert tuple(specs["decoder"]["logits_dense"]["kernel"]) == ("embed", "vocab")


def test_bfloat16_activations_keep_float32_params_and_logits(fwd, params):
  m16 = network.Transformer(network.T5Config(**{**CFG.__dict__, "dtype": "bfloat16"}))
  enc, dec_in, tgt = _batch()
  logits16 = jax.jit(lambda p: m16.apply({"params": p}, enc, dec_in, tgt,
                                         enable_dropout=False))(params)
  logits32 = fwd(params, enc, dec_in, tgt)
  assert logits16.dtype == jnp.float32
  valid = tgt > 0
  np.testing.assert_allclose(np.asarray(logits16)[valid], np.asarray(logits32)[valid],
                             atol=0.15 * float(np.abs(logits32).max()))
  shapes = jax.eval_shape(lambda: m16.init(jax.random.PRNGKey(0), enc, dec_in, tgt,
                                           enable_dropout=False))
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(nn.meta.unbox(shapes)))


# --------------------------------------------------------------------------- layers vs numpy
def test_rms_norm_matches_numpy():
  x = np.random.RandomState(1).randn(3, 5).astype(np.float32) * 3.0
  layer = network.RMSNorm()
  scale = np.linspace(0.5, 2.0, 5).astype(np.float32)
  v = {"params": {"scale": nn.Partitioned(jnp.asarray(scale), ("embed",))}}
  got = layer.apply(v, x)
  want = x / np.sqrt(np.mean(x ** 2, axis=-1, keepdims=True) + 1e-6) * scale
  np.testing.assert_allclose(got, want, rtol=1e-5)


def test_attention_is_unscaled_dot_product_and_query_init_is_scaled():
  heads, head_dim, emb = 4, 16, 64
  attn = network.MultiHeadAttention(heads, head_dim)
  rng = np.random.RandomState(2)
  xq = rng.randn(1, 3, emb).astype(np.float32)
  xkv = rng.randn(1, 5, emb).astype(np.float32)
  bias = rng.randn(1, heads, 3, 5).astype(np.float32)
  v = nn.meta.unbox(attn.init(jax.random.PRNGKey(3), xq, xkv, bias, deterministic=True))
  p = jax.tree.map(np.asarray, v["params"])
  # Query kernel std is 1/sqrt(fan_in)/sqrt(head_dim); key kernel std is 1/sqrt(fan_in).
  ratio = p["key"]["kernel"].std() / p["query"]["kernel"].std()
  assert abs(ratio - np.sqrt(head_dim)) < 0.1 * np.sqrt(head_dim)
  got = attn.apply(v, xq, xkv, bias, deterministic=True)
  q = (xq @ p["query"]["kernel"]).reshape(1, 3, heads, head_dim)
  k = (xkv @ p["key"]["kernel"]).reshape(1, 5, heads, head_dim)
  val = (xkv @ p["value"]["kernel"]).reshape(1, 5, heads, head_dim)
  logits = np.einsum("bqhd,bkhd->bhqk", q, k) + bias  # no 1/sqrt(d)
  w = np.exp(logits - logits.max(-1, keepdims=True))
  w /= w.sum(-1, keepdims=True)
  out = np.einsum("bhqk,bkhd->bqhd", w, val).reshape(1, 3, heads * head_dim)
  np.testing.assert_allclose(got, out @ p["out"]["kernel"], rtol=2e-4, atol=2e-5)


@pytest.mark.parametrize("relative,bidirectional,bucket", [
    (0, True, 0), (-1, True, 1), (1, True, 17), (-7, True, 7), (-8, True, 8),
    (-20, True, 10),  # 8 + int(log(20/8) / log(128/8) * 8)
    (20, True, 26), (-200, True, 15), (200, True, 31),
    (5, False, 0), (-1, False, 1), (-15, False, 15), (-16, False, 16),
    (-20, False, 17),  # 16 + int(log(20/16) / log(128/16) * 16)
    (-1000, False, 31),
])
def test_relative_position_bucket_hand_values(relative, bidirectional, bucket):
  got = network.relative_position_bucket(jnp.asarray([relative]), bidirectional, 32, 128)
  assert int(got[0]) == bucket


# --------------------------------------------------------------------------- masking
def test_padding_length_does_not_change_logits(fwd, params):
  """The same examples padded to longer encoder/decoder lengths give the same logits."""
  enc, dec_in, tgt = _batch()
  short = fwd(params, enc, dec_in, tgt)
  pad = lambda x, n: np.pad(x, ((0, 0), (0, n)))
  long = fwd(params, pad(enc, 5), pad(dec_in, 3), pad(tgt, 3))
  valid = tgt > 0
  np.testing.assert_allclose(np.asarray(long)[:, :6][valid], np.asarray(short)[valid],
                             rtol=1e-5, atol=1e-5)


def test_decoder_is_causal(fwd, params):
  enc, dec_in, tgt = _batch(dec_len=(6, 6))
  base = np.asarray(fwd(params, enc, dec_in, tgt))
  changed_in = dec_in.copy()
  changed_in[:, 4] = (changed_in[:, 4] + 5) % (VOCAB - 2) + 2
  changed = np.asarray(fwd(params, enc, changed_in, tgt))
  np.testing.assert_allclose(changed[:, :4], base[:, :4], rtol=1e-6, atol=1e-6)
  assert np.abs(changed[:, 4:] - base[:, 4:]).max() > 1e-3  # the change is visible later on


def test_encoder_change_reaches_every_decoder_position(fwd, params):
  enc, dec_in, tgt = _batch(dec_len=(6, 6))
  base = np.asarray(fwd(params, enc, dec_in, tgt))
  enc2 = enc.copy()
  enc2[:, 4] = (enc2[:, 4] + 3) % (VOCAB - 2) + 2
  changed = np.asarray(fwd(params, enc2, dec_in, tgt))
  assert np.all(np.abs(changed - base).max(axis=-1) > 1e-5)


def test_packed_segments_do_not_leak(fwd, params):
  """Each segment of a packed row has the logits of its example alone, unpacked."""
  rng = np.random.RandomState(5)
  enc_a, enc_b = rng.randint(2, VOCAB, 3), rng.randint(2, VOCAB, 4)
  tgt_a, tgt_b = rng.randint(2, VOCAB, 2), rng.randint(2, VOCAB, 3)
  shift = lambda t: np.concatenate([[0], t[:-1]])
  z = lambda n: np.zeros(n, np.int64)
  packed = dict(
      encoder_segment_ids=np.array([[1, 1, 1, 2, 2, 2, 2, 0]] * 2, np.int32),
      decoder_segment_ids=np.array([[1, 1, 2, 2, 2, 0]] * 2, np.int32),
      encoder_positions=np.array([[0, 1, 2, 0, 1, 2, 3, 0]] * 2, np.int32),
      decoder_positions=np.array([[0, 1, 0, 1, 2, 0]] * 2, np.int32))
  enc = np.stack([np.concatenate([enc_a, enc_b, z(1)])] * 2).astype(np.int32)
  tgt = np.stack([np.concatenate([tgt_a, tgt_b, z(1)])] * 2).astype(np.int32)
  dec_in = np.stack([np.concatenate([shift(tgt_a), shift(tgt_b), z(1)])] * 2).astype(np.int32)
  got = np.asarray(fwd(params, enc, dec_in, tgt, **packed))[0]

  alone_enc = np.stack([np.concatenate([enc_a, z(5)]), np.concatenate([enc_b, z(4)])])
  alone_tgt = np.stack([np.concatenate([tgt_a, z(4)]), np.concatenate([tgt_b, z(3)])])
  alone_in = np.stack([np.concatenate([shift(tgt_a), z(4)]),
                       np.concatenate([shift(tgt_b), z(3)])])
  alone = np.asarray(fwd(params, alone_enc.astype(np.int32), alone_in.astype(np.int32),
                         alone_tgt.astype(np.int32)))
  np.testing.assert_allclose(got[0:2], alone[0, 0:2], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(got[2:5], alone[1, 0:3], rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------- methods, dropout
def test_encode_then_decode_equals_call(module, params, fwd):
  enc, dec_in, tgt = _batch()
  v = {"params": params}
  def two_step(v):
    encoded = module.apply(v, enc, enable_dropout=False, method="encode")
    return encoded, module.apply(v, encoded, enc, dec_in, tgt, enable_dropout=False,
                                 method="decode")
  encoded, logits = jax.jit(two_step)(v)
  assert encoded.shape == (2, 8, CFG.emb_dim)
  np.testing.assert_allclose(logits, fwd(params, enc, dec_in, tgt), rtol=1e-5, atol=1e-6)


def test_dropout_is_random_only_when_enabled(module, params):
  enc, dec_in, tgt = _batch()
  v = {"params": params}
  run_jit = jax.jit(lambda rng: module.apply(v, enc, dec_in, tgt, enable_dropout=True,
                                             rngs={"dropout": rng}))
  run = lambda seed: run_jit(jax.random.PRNGKey(seed))
  a, b, a2 = run(0), run(1), run(0)
  np.testing.assert_array_equal(a, a2)
  assert np.abs(np.asarray(a) - np.asarray(b)).max() > 1e-3


# --------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("overrides,match", [
    ({"dtype": "float16"}, "dtype"),
    ({"mlp_activations": ("gelu", "nope")}, "mlp_activations"),
    ({"emb_dim": 0}, "emb_dim"),
    ({"dropout_rate": 1.0}, "dropout_rate"),
])
def test_config_rejects_bad_values(overrides, match):
  with pytest.raises(ValueError, match=match):
    network.T5Config(**{**CFG.__dict__, **overrides})


def test_mismatched_shapes_raise(module, params):
  enc, dec_in, tgt = _batch()
  with pytest.raises(ValueError, match="decoder_target_tokens"):
    module.apply({"params": params}, enc, dec_in, tgt[:, :5], enable_dropout=False)
  with pytest.raises(ValueError, match="decoder_segment_ids"):
    module.apply({"params": params}, enc, dec_in, tgt, encoder_segment_ids=np.ones_like(enc),
                 enable_dropout=False)
