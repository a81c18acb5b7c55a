"""Tests of EncoderDecoderModel (losses, metrics, score, greedy predict) and the model gin files."""
import pathlib

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gbt_t5x.models import decoding
from gbt_t5x.models import encoder_decoder
from gbt_t5x.models import losses
from gbt_t5x.models import network

VOCAB = 37
CFG = network.T5Config(vocab_size=VOCAB, emb_dim=16, num_heads=2, head_dim=8, mlp_dim=32,
                       num_encoder_layers=2, num_decoder_layers=2, dropout_rate=0.1)
GIN_DIR = pathlib.Path(__file__).resolve().parents[2] / "gin" / "models"


@pytest.fixture(scope="module")
def model():
  return encoder_decoder.EncoderDecoderModel(network.Transformer(CFG), None, None,
                                             label_smoothing=0.0, z_loss=1e-4)


@pytest.fixture(scope="module")
def boxed(model):
  shapes = {"encoder_input_tokens": (2, 8), "decoder_input_tokens": (2, 6)}
  return jax.jit(lambda rng: model.get_initial_variables(rng, shapes))(jax.random.PRNGKey(0))


@pytest.fixture(scope="module")
def params(boxed):
  return nn.meta.unbox(boxed["params"])


@pytest.fixture(scope="module")
def batch():
  rng = np.random.RandomState(0)
  enc = rng.randint(2, VOCAB, size=(2, 8)).astype(np.int32)
  enc[0, 5:] = 0
  tgt = rng.randint(2, VOCAB, size=(2, 6)).astype(np.int32)
  tgt[0, 4:] = 0
  tgt[1, 5] = 1
  dec_in = np.concatenate([np.zeros((2, 1), np.int32), tgt[:, :-1]], axis=1)
  return {"encoder_input_tokens": enc, "decoder_input_tokens": dec_in,
          "decoder_target_tokens": tgt, "decoder_loss_weights": (tgt > 0).astype(np.int32)}


@pytest.fixture(scope="module")
def jitted(model):
  return {
      "logits": jax.jit(model.logits_fn),
      "loss": jax.jit(model.loss_fn),
      "loss_kw": jax.jit(lambda p, b, ls, tw: model.loss_fn(p, b, None, label_smoothing=ls,
                                                            token_weights=tw)),
      "score": jax.jit(model.score_batch),
      "guide": jax.jit(model.guide_loss_fn),
      "eval": jax.jit(model.eval_fn),
  }


# --------------------------------------------------------------------------- variables
def test_initial_variables_are_boxed_with_logical_axes(boxed, model):
  assert set(boxed) == {"params"}
  spec = nn.get_partition_spec(boxed)["params"]
  assert tuple(spec["token_embedder"]["embedding"]) == ("vocab", "embed")
  assert tuple(spec["encoder"]["relpos_bias"]["rel_embedding"]) == ("heads", "relpos_buckets")
  assert model.module.config is CFG
  with pytest.raises(ValueError, match="decoder_input_tokens"):
    model.get_initial_variables(jax.random.PRNGKey(0), {"encoder_input_tokens": (1, 4)})


def test_constructor_rejects_bad_settings():
  m = network.Transformer(CFG)
  with pytest.raises(ValueError, match="label_smoothing"):
    encoder_decoder.EncoderDecoderModel(m, None, None, label_smoothing=1.0)
  with pytest.raises(ValueError, match="loss_normalizing_factor"):
    encoder_decoder.EncoderDecoderModel(m, None, None, loss_normalizing_factor="PER_BANANA")


# --------------------------------------------------------------------------- loss and metrics
def test_metrics_are_consistent_sums(jitted, params, batch):
  loss, m = jitted["loss"](params, batch, None)
  logits = np.asarray(jitted["logits"](params, batch))
  w = batch["decoder_loss_weights"].astype(np.float32)
  tgt = batch["decoder_target_tokens"]
  ref, ref_z, _ = losses.compute_weighted_cross_entropy(logits, tgt, w, 0.0, 1e-4)
  np.testing.assert_allclose(loss, ref, rtol=1e-5)
  np.testing.assert_allclose(m["loss"], loss, rtol=1e-6)
  np.testing.assert_allclose(m["z_loss"], ref_z, rtol=1e-5)
  np.testing.assert_allclose(m["cross_ent_loss"] + m["z_loss"], m["loss"], rtol=1e-6)
  assert float(m["num_tokens"]) == w.sum() == 10.0
  assert float(m["num_examples"]) == 2.0
  assert float(m["accuracy"]) == ((logits.argmax(-1) == tgt) * w).sum()
  assert all(v.dtype == jnp.float32 and v.shape == () for v in m.values())


def test_padding_does_not_leak_into_the_loss(jitted, params, batch):
  loss, _ = jitted["loss"](params, batch, None)
  changed = {k: v.copy() for k, v in batch.items()}
  # Row 0 has 4 real targets; positions 4, 5 are padding with weight 0.
  changed["decoder_target_tokens"][0, 4:] = [7, 9]
  changed["decoder_input_tokens"][0, 5] = 11
  changed["decoder_loss_weights"][0, 4:] = 0
  np.testing.assert_allclose(jitted["loss"](params, changed, None)[0], loss, rtol=1e-6)


def test_token_weights_multiply_loss_weights(jitted, params, batch):
  ones = jnp.ones((2, 6), jnp.float32)
  base, _ = jitted["loss_kw"](params, batch, 0.0, ones)
  np.testing.assert_allclose(jitted["loss"](params, batch, None)[0], base, rtol=1e-6)
  doubled, _ = jitted["loss_kw"](params, batch, 0.0, 2.0 * ones)
  np.testing.assert_allclose(doubled, 2.0 * base, rtol=1e-6)
  row0_only, m = jitted["loss_kw"](params, batch, 0.0, ones.at[1].set(0.0))
  masked = dict(batch, decoder_loss_weights=batch["decoder_loss_weights"] * np.array([[1], [0]]))
  ref, _ = jitted["loss"](params, masked, None)
  np.testing.assert_allclose(row0_only, ref, rtol=1e-6)
  assert float(m["num_tokens"]) == 10.0  # token counts ignore the data weights


def test_traced_label_smoothing_and_token_weights_are_differentiable(jitted, params, batch):
  f = lambda ls, tw: jitted["loss_kw"](params, batch, ls, tw)[0]
  tw = jnp.ones((2, 6), jnp.float32)
  g_ls, g_tw = jax.grad(f, argnums=(0, 1))(jnp.float32(0.1), tw)
  h = 3e-3
  fd = (f(0.1 + h, tw) - f(0.1 - h, tw)) / (2 * h)
  np.testing.assert_allclose(g_ls, fd, rtol=5e-3, atol=5e-3)
  # d loss / d token_weight = the per-token loss on real tokens, 0 on padding.
  logits = jitted["logits"](params, batch)
  per_tok, _ = losses.cross_entropy_with_logits(logits, batch["decoder_target_tokens"], 0.1, 1e-4)
  np.testing.assert_allclose(g_tw, per_tok * batch["decoder_loss_weights"], rtol=1e-4, atol=1e-6)
  assert np.isfinite(jax.grad(f)(jnp.float32(0.0), tw))


def test_dropout_only_with_rng_and_eval_is_deterministic(jitted, params, batch):
  plain, _ = jitted["loss"](params, batch, None)
  dropped, _ = jitted["loss"](params, batch, jax.random.PRNGKey(1))
  assert abs(float(dropped) - float(plain)) > 1e-4
  np.testing.assert_allclose(jitted["eval"](params, batch)[0], plain, rtol=1e-6)


def test_score_and_guide_loss_equal_minus_cross_entropy(jitted, params, batch):
  _, m = jitted["loss"](params, batch, None)  # label smoothing 0: cross_ent_loss is plain CE
  scores = np.asarray(jitted["score"](params, batch))
  assert scores.shape == (2,) and np.all(scores < 0)
  np.testing.assert_allclose(scores.sum(), -m["cross_ent_loss"], rtol=1e-5)
  np.testing.assert_allclose(jitted["guide"](params, batch), -scores.sum(), rtol=1e-5)
  row1 = dict(batch, decoder_loss_weights=batch["decoder_loss_weights"] * np.array([[0], [1]]))
  np.testing.assert_allclose(scores[1], -jitted["loss"](params, row1, None)[1]["cross_ent_loss"],
                             rtol=1e-5)


def test_packed_num_examples_counts_segments(model):
  logits = jnp.zeros((1, 6, VOCAB))
  batch = {"decoder_target_tokens": np.array([[3, 1, 4, 5, 1, 0]]),
           "decoder_loss_weights": np.array([[1, 1, 1, 1, 1, 0]]),
           "decoder_segment_ids": np.array([[1, 1, 2, 2, 2, 0]])}
  _, m = model.loss_from_logits(logits, batch)
  assert float(m["num_examples"]) == 2.0
  np.testing.assert_allclose(m["cross_ent_loss"], 5 * np.log(VOCAB), rtol=1e-6)


# --------------------------------------------------------------------------- decoding
def test_greedy_predict_matches_step_by_step_argmax(model, jitted, params, batch):
  got = np.asarray(jax.jit(model.predict_batch)(params, batch))
  assert got.shape == (2, 6) and got.dtype == np.int32
  # Reference: teacher-force the decoded prefix and take the argmax at each step.
  out = np.zeros((2, 6), np.int32)
  done = np.zeros(2, bool)
  for t in range(6):
    feed = dict(batch, decoder_input_tokens=decoding.shift_right(jnp.asarray(out)),
                decoder_target_tokens=np.ones((2, 6), np.int32))
    tok = np.asarray(jitted["logits"](params, feed))[:, t].argmax(-1)
    tok = np.where(done, 0, tok)
    out[:, t] = tok
    done |= tok == 1
  np.testing.assert_array_equal(got, out)


class _EosAtLengthModule(nn.Module):
  """Fake network: step t emits 4 + t, except EOS at t == number of real encoder tokens."""
  vocab: int = VOCAB

  def setup(self):
    self.unused = self.param("unused", nn.initializers.zeros, (1,))

  def encode(self, encoder_input_tokens, *, enable_dropout=False):
    return encoder_input_tokens[..., None].astype(jnp.float32)

  def decode(self, encoded, encoder_input_tokens, decoder_input_tokens, decoder_target_tokens,
             *, enable_dropout=False):
    length = decoder_input_tokens.shape[1]
    eos_at = jnp.sum(encoder_input_tokens > 0, axis=1)[:, None]
    pos = jnp.arange(length)[None, :]
    want = jnp.where(pos == eos_at, 1, 4 + pos)
    return jax.nn.one_hot(want, self.vocab) * 5.0

  def __call__(self, encoder_input_tokens, decoder_input_tokens, decoder_target_tokens, *,
               enable_dropout=True):
    return self.decode(self.encode(encoder_input_tokens), encoder_input_tokens,
                       decoder_input_tokens, decoder_target_tokens)


def test_greedy_predict_stops_at_eos_and_pads_with_zeros():
  model = encoder_decoder.EncoderDecoderModel(_EosAtLengthModule(), None, None)
  enc = np.array([[5, 5, 0, 0], [5, 5, 5, 5], [5, 0, 0, 0]], np.int32)
  params = nn.meta.unbox(model.get_initial_variables(
      jax.random.PRNGKey(0), {"encoder_input_tokens": (3, 4), "decoder_input_tokens": (3, 7)}
  )["params"])
  got = np.asarray(model.predict_batch(params, {"encoder_input_tokens": enc},
                                       max_decode_length=7))
  np.testing.assert_array_equal(got, [[4, 5, 1, 0, 0, 0, 0],
                                      [4, 5, 6, 7, 1, 0, 0],
                                      [4, 1, 0, 0, 0, 0, 0]])
  # Without EOS inside the length, rows run to the end.
  got3 = np.asarray(model.predict_batch(params, {"encoder_input_tokens": enc,
                                                 "decoder_target_tokens": np.ones((3, 3))}))
  np.testing.assert_array_equal(got3, [[4, 5, 1], [4, 5, 6], [4, 1, 0]])


def test_predict_rejects_packed_batches(model, params, batch):
  with pytest.raises(ValueError, match="packed"):
    model.predict_batch(params, dict(batch, encoder_segment_ids=np.ones((2, 8), np.int32)))


# --------------------------------------------------------------------------- gin files
@pytest.mark.parametrize("name,emb,layers,num_params", [
    ("tiny", 128, 2, None),
    # Published T5 v1.1 parameter counts (vocab 32128).
    ("small", 512, 8, 76_961_152),
    ("base", 768, 12, 247_577_856),
    ("large", 1024, 24, 783_150_080),
])
def test_gin_model_files_parse_and_build(name, emb, layers, num_params):
  gin.clear_config()
  try:
    gin.parse_config_files_and_bindings(
        [str(GIN_DIR / f"t5_1_1_{name}.gin")],
        ["from __gin__ import dynamic_registration\nimport seqio\n"
         "VOCABULARY = @seqio.PassThroughVocabulary()\n"
         "seqio.PassThroughVocabulary.size = 32128"])
    model = gin.query_parameter("%MODEL").scoped_configurable_fn()
  finally:
    gin.clear_config()
  assert isinstance(model, encoder_decoder.EncoderDecoderModel)
  cfg = model.module.config
  assert (cfg.emb_dim, cfg.num_encoder_layers, cfg.num_decoder_layers) == (emb, layers, layers)
  assert cfg.vocab_size == 32128 and cfg.mlp_activations == ("gelu", "linear")
  assert model.z_loss == 1e-4 and model.label_smoothing == 0.0
  assert model.input_vocabulary.vocab_size == model.output_vocabulary.vocab_size == 32128
  shapes = jax.eval_shape(lambda: model.get_initial_variables(
      jax.random.PRNGKey(0), {"encoder_input_tokens": (1, 4), "decoder_input_tokens": (1, 4)}))
  count = sum(int(np.prod(x.value.shape)) for x in jax.tree.leaves(
      shapes, is_leaf=lambda x: isinstance(x, nn.Partitioned)))
  if num_params is not None:
    assert count == num_params
