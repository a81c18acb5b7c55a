"""Tests of cached decoding, greedy / sampling / beam search and `predict_batch` decoder options.

Reference points: the uncached full forward pass (teacher forcing), the uncached greedy loop
`decoding.greedy_decode`, and an exhaustive enumeration of every hypothesis on a 5-token model.
"""
import functools
import itertools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gbt_t5x.models import decoding
from gbt_t5x.models import encoder_decoder
from gbt_t5x.models import network
from gbt_t5x.train.partitioning import PjitPartitioner

EOS = 1
VOCAB = 40  # even, so 'vocab' splits over a 2-way model axis
CFG = network.T5Config(vocab_size=VOCAB, emb_dim=16, num_heads=2, head_dim=8, mlp_dim=32,
                       num_encoder_layers=2, num_decoder_layers=2, dropout_rate=0.0)
# pad 0, EOS 1 and three real tokens; decoding treats 0 as an ordinary token.
SMALL_VOCAB = 5
SMALL_CFG = network.T5Config(**{**CFG.__dict__, "vocab_size": SMALL_VOCAB})


def _init(cfg, seed=0):
  model = encoder_decoder.EncoderDecoderModel(network.Transformer(cfg), None, None)
  shapes = {"encoder_input_tokens": (2, 8), "decoder_input_tokens": (2, 6)}
  boxed = jax.jit(lambda rng: model.get_initial_variables(rng, shapes))(
      jax.random.PRNGKey(seed))
  return model, boxed


@pytest.fixture(scope="module")
def model_and_boxed():
  return _init(CFG)


@pytest.fixture(scope="module")
def model(model_and_boxed):
  return model_and_boxed[0]


@pytest.fixture(scope="module")
def params(model_and_boxed):
  return nn.meta.unbox(model_and_boxed[1]["params"])


@pytest.fixture(scope="module")
def eos_params(params):
  """`params` with a 4x larger EOS output column: decodes end early at varied lengths."""
  kernel = params["decoder"]["logits_dense"]["kernel"]
  out = jax.tree.map(lambda x: x, params)
  out["decoder"]["logits_dense"]["kernel"] = kernel.at[:, EOS].multiply(4.0)
  return out


@pytest.fixture(scope="module")
def small():
  model, boxed = _init(SMALL_CFG, seed=3)
  return model, nn.meta.unbox(boxed["params"])


def _encoder_batch(seed, batch=4, length=8, vocab=VOCAB):
  rng = np.random.RandomState(seed)
  enc = rng.randint(2, vocab, size=(batch, length)).astype(np.int32)
  for i in range(batch):
    enc[i, length - i:] = 0  # different padding per row
  return {"encoder_input_tokens": enc}


@functools.partial(jax.jit, static_argnums=0)
def _logits(module, params, enc, seqs):
  """Teacher-forced logits `[N, T, V]` for decodes `seqs [N, T]`, no decoder padding mask."""
  return module.apply({"params": params}, enc, decoding.shift_right(seqs), jnp.ones_like(seqs),
                      enable_dropout=False)


def _token_log_probs(module, params, enc, seqs):
  """Teacher-forced log p(seqs[:, t] | prefix) `[N, T]`."""
  log_probs = jax.nn.log_softmax(_logits(module, params, enc, seqs), axis=-1)
  return jnp.take_along_axis(log_probs, seqs[..., None], axis=-1)[..., 0]


def _sequence_scores(model, params, enc, seqs, alpha=0.0):
  """Uncached score of decodes `[N, T]`: log-prob up to the first EOS (or T) / length penalty."""
  seqs = np.asarray(seqs)
  per_token = np.asarray(_token_log_probs(model.module, params, jnp.asarray(enc),
                                          jnp.asarray(seqs)))
  is_eos = seqs == EOS
  length = np.where(is_eos.any(1), is_eos.argmax(1) + 1, seqs.shape[1])
  keep = np.arange(seqs.shape[1])[None] < length[:, None]
  assert np.all(seqs[~keep] == 0), "positions after EOS must be 0"
  return (per_token * keep).sum(1) / decoding.brevity_penalty(alpha, length)


_JITTED = {}


def _predict(model, decoder_params=None, **kwargs):
  """`predict_batch_with_aux` jitted with static decoder options (one jit per option set)."""
  key = (id(model), tuple(sorted((decoder_params or {}).items())), tuple(sorted(kwargs.items())))
  if key not in _JITTED:
    _JITTED[key] = jax.jit(functools.partial(model.predict_batch_with_aux,
                                             decoder_params=decoder_params, **kwargs))
  return _JITTED[key]


# --------------------------------------------------------------------------- the cache
def test_cached_steps_give_the_full_forward_logits(model, params):
  module = model.module
  enc = _encoder_batch(0, batch=3)["encoder_input_tokens"]
  dec = np.random.RandomState(1).randint(0, VOCAB, size=(3, 7)).astype(np.int32)
  dec[:, 0] = 0  # BOS
  v = {"params": params}

  @jax.jit
  def run():
    ones = jnp.ones_like(dec)
    full = module.apply(v, enc, dec, ones, enable_dropout=False)
    encoded = module.apply(v, enc, enable_dropout=False, method="encode")
    _, init = module.apply(v, encoded, enc, ones, ones, enable_dropout=False, decode=True,
                           method="decode", mutable=["cache"])

    def step(cache, token):
      logits, new = module.apply({**v, "cache": cache}, encoded, enc, token[:, None],
                                 jnp.ones_like(token[:, None]), enable_dropout=False,
                                 decode=True, max_decode_length=7, method="decode",
                                 mutable=["cache"])
      return new["cache"], logits[:, 0]

    cache, steps = jax.lax.scan(step, init["cache"], dec.T)
    return full, init["cache"], cache, jnp.swapaxes(steps, 0, 1)

  full, init, cache, steps = run()
  layer = init["decoder"]["layers_1"]["self_attention"]
  assert layer["cached_key"].shape == layer["cached_value"].shape == (3, 7, 2, 8)
  assert int(layer["cache_index"]) == 0 and not np.any(layer["cached_key"])
  assert "encoder_decoder_attention" not in init["decoder"]["layers_1"]
  np.testing.assert_allclose(steps, full, rtol=1e-5, atol=1e-5)
  final = cache["decoder"]["layers_0"]["self_attention"]
  assert int(final["cache_index"]) == 7
  assert np.all(np.abs(np.asarray(final["cached_key"])).max(axis=(2, 3)) > 0)  # all written


def test_cached_decode_rejects_bad_calls(model, params):
  module, v = model.module, {"params": params}
  enc = _encoder_batch(0, batch=2)["encoder_input_tokens"]
  encoded = jnp.zeros((2, 8, CFG.emb_dim))
  ones = jnp.ones((2, 5), jnp.int32)
  _, init = jax.eval_shape(lambda: module.apply(
      v, encoded, enc, ones, ones, enable_dropout=False, decode=True, method="decode",
      mutable=["cache"]))
  cache = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), init["cache"])

  def step(tokens, **kwargs):
    return jax.eval_shape(lambda: module.apply(
        {**v, "cache": cache}, encoded, enc, tokens, jnp.ones_like(tokens), enable_dropout=False,
        decode=True, method="decode", mutable=["cache"], **kwargs))

  assert step(ones[:, :1], max_decode_length=5)[0].shape == (2, 1, VOCAB)
  with pytest.raises(ValueError, match="one token per row"):
    step(ones[:, :2], max_decode_length=5)
  with pytest.raises(ValueError, match="whole cache"):  # forgot max_decode_length
    step(ones[:, :1])
  with pytest.raises(ValueError, match="packed"):
    step(ones[:, :1], max_decode_length=5, decoder_positions=ones[:, :1])


# --------------------------------------------------------------------------- greedy
@pytest.mark.parametrize("which", ["params", "eos_params"])
def test_cached_greedy_equals_uncached_greedy(model, which, request):
  params = request.getfixturevalue(which)
  batch = _encoder_batch(2, batch=4)
  enc = jnp.asarray(batch["encoder_input_tokens"])
  got, aux = _predict(model, max_decode_length=6)(params, batch)
  assert got.shape == (4, 6) and got.dtype == jnp.int32

  v = {"params": params}
  def tokens_to_logits(dec_in):
    encoded = model.module.apply(v, enc, enable_dropout=False, method="encode")
    return model.module.apply(v, encoded, enc, dec_in, jnp.ones_like(dec_in),
                              enable_dropout=False, method="decode")
  want = jax.jit(lambda: decoding.greedy_decode(tokens_to_logits, 4, 6))()
  np.testing.assert_array_equal(got, want)
  # The returned score is the decode's log-probability under the uncached model.
  np.testing.assert_allclose(aux["scores"], _sequence_scores(model, params, enc, got),
                             rtol=1e-5, atol=1e-5)


def test_beam_size_one_equals_greedy(model, eos_params):
  params = eos_params
  batch = _encoder_batch(4, batch=4)
  greedy, g_aux = _predict(model, max_decode_length=6)(params, batch)
  beam, b_aux = _predict(model, max_decode_length=6,
                         decoder_params={"method": "beam", "beam_size": 1, "alpha": 0.6}
                         )(params, batch)
  np.testing.assert_array_equal(beam, greedy)
  greedy = np.asarray(greedy)
  length = np.where((greedy == EOS).any(1), np.argmax(greedy == EOS, 1) + 1, 6)
  assert length.min() < 6 and length.max() == 6  # EOS early in some rows, late in others
  np.testing.assert_allclose(b_aux["scores"],
                             g_aux["scores"] / decoding.brevity_penalty(0.6, length), rtol=1e-5)


# --------------------------------------------------------------------------- beam search
def _all_hypotheses(vocab, length):
  """Every decode of <= `length` tokens: non-EOS tokens then EOS, or `length` non-EOS tokens."""
  others = [t for t in range(vocab) if t != EOS]
  rows = []
  for n in range(1, length + 1):
    for prefix in itertools.product(others, repeat=n - 1):
      rows.append(list(prefix) + [EOS] + [0] * (length - n))
  rows.extend(list(p) for p in itertools.product(others, repeat=length))
  return np.array(rows, np.int32)


@pytest.mark.parametrize("alpha", [0.0, 0.6])
def test_wide_beam_equals_exhaustive_search_and_beats_greedy(small, alpha):
  model, params = small
  length, batch = 4, _encoder_batch(5, batch=3, vocab=SMALL_VOCAB)
  enc = batch["encoder_input_tokens"]
  hyps = _all_hypotheses(SMALL_VOCAB, length)
  assert len(hyps) == 1 + 4 + 16 + 64 + 256
  # 80 >= the real candidates of any non-final step (16 alive x 5 tokens): exact search.
  beams, aux = _predict(model, max_decode_length=length, return_all_decodes=True, num_decodes=80,
                        decoder_params={"method": "beam", "alpha": alpha})(params, batch)
  assert beams.shape == (3, 80, length)
  scores = np.asarray(aux["scores"])
  assert np.all(np.diff(scores, axis=1) >= 0)  # increasing, best last
  greedy, g_aux = _predict(model, max_decode_length=length)(params, batch)
  narrow, n_aux = _predict(model, max_decode_length=length,
                           decoder_params={"method": "beam", "beam_size": 3, "alpha": 0.0}
                           )(params, batch)
  for i in range(3):
    exhaustive = _sequence_scores(model, params, np.repeat(enc[i:i + 1], len(hyps), 0), hyps,
                                  alpha)
    best = int(np.argmax(exhaustive))
    np.testing.assert_array_equal(beams[i, -1], hyps[best])
    np.testing.assert_allclose(scores[i, -1], exhaustive[best], rtol=1e-5)
    # The whole beam is the top 80 of the enumeration.
    np.testing.assert_allclose(scores[i], np.sort(exhaustive)[-80:], rtol=1e-5, atol=1e-6)
    if alpha == 0.0:
      assert scores[i, -1] >= g_aux["scores"][i] - 1e-6
      assert n_aux["scores"][i] >= g_aux["scores"][i] - 1e-6
      assert scores[i, -1] >= n_aux["scores"][i] - 1e-6


def test_beam_scores_rescore_and_beat_greedy_on_a_larger_vocab(model, params):
  batch = _encoder_batch(6, batch=4)
  enc = batch["encoder_input_tokens"]
  beams, aux = _predict(model, max_decode_length=6, return_all_decodes=True, num_decodes=4,
                        decoder_params={"method": "beam", "beam_size": 4, "alpha": 0.6}
                        )(params, batch)
  flat = np.asarray(beams).reshape(16, 6)
  np.testing.assert_allclose(np.asarray(aux["scores"]).reshape(16),
                             _sequence_scores(model, params, np.repeat(enc, 4, 0), flat, 0.6),
                             rtol=1e-5, atol=1e-5)
  assert all(len({tuple(r) for r in np.asarray(beams[i])}) == 4 for i in range(4))  # distinct
  _, g_aux = _predict(model, max_decode_length=6)(params, batch)
  _, b_aux = _predict(model, max_decode_length=6,
                      decoder_params={"method": "beam", "beam_size": 4, "alpha": 0.0}
                      )(params, batch)
  assert np.all(np.asarray(b_aux["scores"]) >= np.asarray(g_aux["scores"]) - 1e-6)


def test_beam_search_without_a_cache_matches_the_cached_one(model, params):
  """`prefix_step_fn` (modules without a cache) gives the same beams as the key/value cache."""
  batch = _encoder_batch(7, batch=2)
  enc = jnp.asarray(batch["encoder_input_tokens"])
  v = {"params": params}

  @jax.jit
  def uncached():
    encoded = jnp.repeat(model.module.apply(v, enc, enable_dropout=False, method="encode"), 3, 0)
    rows = jnp.repeat(enc, 3, 0)
    def tokens_to_logits(dec_in):
      return model.module.apply(v, encoded, rows, dec_in, jnp.ones_like(dec_in),
                                enable_dropout=False, method="decode")
    step_fn, _ = decoding.prefix_step_fn(tokens_to_logits, 6, 6)
    _, state = decoding.prefix_step_fn(tokens_to_logits, 2, 6)
    return decoding.beam_search(step_fn, state, 2, 6, beam_size=3, alpha=0.6)

  tokens, scores = uncached()
  cached, aux = _predict(model, max_decode_length=6, return_all_decodes=True, num_decodes=3,
                         decoder_params={"method": "beam", "alpha": 0.6})(params, batch)
  np.testing.assert_array_equal(tokens, cached)
  np.testing.assert_allclose(scores, aux["scores"], rtol=1e-5)


# --------------------------------------------------------------------------- sampling
def test_top1_sampling_is_greedy_and_samples_depend_on_the_rng(model, params):
  batch = _encoder_batch(8, batch=4)
  greedy = _predict(model, max_decode_length=6)(params, batch)[0]
  sample = lambda **dp: _predict(model, max_decode_length=6,
                                 decoder_params={"method": "sample", **dp})
  top1 = sample(topk=1, temperature=3.0)
  for seed in (0, 1):
    np.testing.assert_array_equal(top1(params, batch, jax.random.PRNGKey(seed))[0], greedy)
  hot = sample(temperature=5.0)
  a, a_aux = hot(params, batch, jax.random.PRNGKey(0))
  b, _ = hot(params, batch, jax.random.PRNGKey(1))
  np.testing.assert_array_equal(hot(params, batch, jax.random.PRNGKey(0))[0], a)  # reproducible
  assert np.mean(np.asarray(a) != np.asarray(b)) > 0.3
  assert np.mean(np.asarray(a) != np.asarray(greedy)) > 0.3
  # Scores are the model's (untempered) log-probabilities of the samples.
  np.testing.assert_allclose(a_aux["scores"],
                             _sequence_scores(model, params, batch["encoder_input_tokens"], a),
                             rtol=1e-5, atol=1e-5)


def test_topk_samples_come_from_the_top_k(model, params):
  batch = _encoder_batch(9, batch=4)
  enc = batch["encoder_input_tokens"]
  samples, aux = _predict(model, max_decode_length=6, return_all_decodes=True, num_decodes=8,
                          decoder_params={"method": "sample", "topk": 3, "temperature": 10.0}
                          )(params, batch, jax.random.PRNGKey(2))
  assert samples.shape == (4, 8, 6) and aux["scores"].shape == (4, 8)
  assert np.all(np.diff(np.asarray(aux["scores"]), axis=1) >= 0)  # increasing, best last
  flat = np.asarray(samples).reshape(32, 6)
  rows = np.repeat(enc, 8, 0)
  logits = _logits(model.module, params, rows, flat)
  rank = (np.asarray(logits) > np.take_along_axis(np.asarray(logits), flat[..., None], -1)).sum(-1)
  written = np.cumsum(flat == EOS, axis=1) - (flat == EOS) == 0  # up to and including EOS
  assert rank[written].max() <= 2 and len(np.unique(rank[written])) == 3


def test_sampling_follows_the_model_distribution(small):
  """At temperature 1, first-token frequencies over 4000 samples match the softmax."""
  model, params = small
  batch = _encoder_batch(10, batch=1, vocab=SMALL_VOCAB)
  samples, _ = _predict(model, max_decode_length=1, return_all_decodes=True, num_decodes=4000,
                        decoder_params={"method": "sample"})(params, batch, jax.random.PRNGKey(4))
  freq = np.bincount(np.asarray(samples).reshape(-1), minlength=SMALL_VOCAB) / 4000
  logits = _logits(model.module, params, batch["encoder_input_tokens"],
                   np.zeros((1, 1), np.int32))[0, 0]
  np.testing.assert_allclose(freq, jax.nn.softmax(logits), atol=0.03)


# --------------------------------------------------------------------------- options, errors
def test_default_decoder_params_and_overrides(model, params):
  beam = {"method": "beam", "beam_size": 4, "alpha": 0.0}
  beam_model = encoder_decoder.EncoderDecoderModel(network.Transformer(CFG), None, None,
                                                   default_decoder_params=beam)
  batch = _encoder_batch(11)
  got = _predict(beam_model, max_decode_length=6)(params, batch)[0]
  np.testing.assert_array_equal(got, _predict(model, max_decode_length=6,
                                              decoder_params=beam)(params, batch)[0])
  greedy = _predict(beam_model, max_decode_length=6,
                    decoder_params={"method": "greedy"})(params, batch)[0]
  np.testing.assert_array_equal(greedy, _predict(model, max_decode_length=6)(params, batch)[0])


@pytest.mark.parametrize("kwargs,match", [
    ({"decoder_params": {"method": "beam", "beam_size": 0}}, "beam_size must be"),
    ({"decoder_params": {"method": "sample", "topk": -1}}, "topk must be"),
    ({"decoder_params": {"method": "sample", "temperature": 0.0}}, "temperature must be > 0"),
    ({"decoder_params": {"method": "sample", "temperature": -1.0}}, "temperature must be > 0"),
    ({"decoder_params": {"method": "nucleus"}}, "method"),
    ({"decoder_params": {"beam": 4}}, "unknown decoder_params"),
    ({"decoder_params": {"method": "beam", "beam_size": 2}, "num_decodes": 3}, "beam_size"),
    ({"num_decodes": 2}, "greedy decoding gives one decode"),
    ({"num_decodes": 0}, "num_decodes"),
])
def test_bad_decoder_options_raise_one_line_errors(model, params, kwargs, match):
  batch = _encoder_batch(0, batch=2)
  with pytest.raises(ValueError, match=match) as info:
    model.predict_batch(params, batch, jax.random.PRNGKey(0), max_decode_length=3, **kwargs)
  assert "\n" not in str(info.value)


def test_bad_direct_calls_raise(model, params):
  with pytest.raises(ValueError, match="needs an rng"):
    model.predict_batch(params, _encoder_batch(0, batch=2), max_decode_length=3,
                        decoder_params={"method": "sample"})
  with pytest.raises(ValueError, match="beam_size must be"):
    encoder_decoder.EncoderDecoderModel(network.Transformer(CFG), None, None,
                                        default_decoder_params={"beam_size": -2})
  step = lambda tokens, state: (jnp.zeros((tokens.shape[0], 4)), state)
  with pytest.raises(ValueError, match="beam_size must be"):
    decoding.beam_search(step, {}, 2, 3, beam_size=0)
  with pytest.raises(ValueError, match="temperature must be > 0"):
    decoding.temperature_sample(step, {}, jax.random.PRNGKey(0), 2, 3, temperature=0.0)
  with pytest.raises(ValueError, match="topk must be"):
    decoding.temperature_sample(step, {}, jax.random.PRNGKey(0), 2, 3, topk=-3)


# --------------------------------------------------------------------------- mesh
def test_predict_under_jit_on_a_4x2_mesh(model, model_and_boxed, params):
  partitioner = PjitPartitioner(num_partitions=2)
  assert dict(partitioner.mesh.shape) == {"data": 4, "model": 2}
  shardings = partitioner.shardings_from_logical(nn.get_partition_spec(model_and_boxed[1]))
  sharded = jax.device_put(params, shardings["params"])
  assert not sharded["decoder"]["logits_dense"]["kernel"].sharding.is_fully_replicated
  batch = {k: jax.device_put(v, partitioner.data_sharding)
           for k, v in _encoder_batch(12, batch=4).items()}
  for decoder_params in ({"method": "greedy"}, {"method": "beam", "beam_size": 2, "alpha": 0.6}):
    predict = _predict(model, max_decode_length=6, decoder_params=decoder_params)
    with partitioner.context():
      got, aux = predict(sharded, batch)
    want, want_aux = predict(params, jax.device_get(batch))
    np.testing.assert_array_equal(got, want)
    np.testing.assert_allclose(aux["scores"], want_aux["scores"], rtol=1e-5)
