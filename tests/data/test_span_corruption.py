"""Tests of T5 span corruption: length arithmetic, the noise mask, sentinels, exact
reconstruction of the original token stream, statistics and seeding."""
import numpy as np
import pytest
import seqio
import tensorflow as tf

from gbt_t5x.data import span_corruption as sc

VOCAB_SIZE = 1100  # 1000 ordinary ids + 100 sentinels (1099 down to 1000)
EXTRA_IDS = 100


class _Vocab(seqio.PassThroughVocabulary):
  """Ids pass through; `vocab_size` 1100 of which the top 100 are extra ids (sentinels)."""

  def __init__(self):
    super().__init__(size=VOCAB_SIZE - EXTRA_IDS, eos_id=1)

  @property
  def extra_ids(self):
    return EXTRA_IDS

  @property
  def _base_vocab_size(self):
    return VOCAB_SIZE - EXTRA_IDS

  @property
  def vocab_size(self):
    return VOCAB_SIZE


FEATURES = {"inputs": seqio.Feature(_Vocab()), "targets": seqio.Feature(_Vocab())}


def reconstruct(inputs, targets, first_sentinel=VOCAB_SIZE - EXTRA_IDS):
  """Original ids from span-corrupted (inputs, targets): each input sentinel is replaced by the
  target ids that follow the same sentinel in targets."""
  spans, current = {}, None
  for t in targets:
    if t >= first_sentinel:
      current = int(t)
      spans[current] = []
    else:
      assert current is not None, "targets must start with a sentinel"
      spans[current].append(int(t))
  out = []
  for t in inputs:
    out.extend(spans[int(t)] if t >= first_sentinel else [int(t)])
  return out


def _docs(num_docs=40, seed=0):
  rng = np.random.default_rng(seed)
  return [rng.integers(3, VOCAB_SIZE - EXTRA_IDS, size=rng.integers(50, 400)).astype(np.int32)
          for _ in range(num_docs)]


def _corrupt(docs, inputs_length, seed, **kwargs):
  ds = tf.data.Dataset.from_generator(
      lambda: ({"targets": d} for d in docs),
      output_signature={"targets": tf.TensorSpec([None], tf.int32)})
  lengths = {"inputs": inputs_length, "targets": sc.random_spans_helper(inputs_length)[1]}
  with seqio.utils.map_seed_manager(seed):
    out = sc.span_corruption(ds, lengths, FEATURES, **kwargs)
  return list(out.as_numpy_iterator())


def test_random_spans_helper_hand_computed():
  # 568 ids: 85 noise ids in 28 spans -> inputs 568 - 85 + 28 + 1 = 512, targets 85 + 28 + 1
  # = 114; 569 ids would give 569 - 85 + 28 + 1 = 513 > 512.
  assert sc.random_spans_helper(512) == (568, 114)
  # 70 ids: round(10.5) = 10 noise ids (half to even) in 3 spans -> 64 / 14.
  assert sc.random_spans_helper(64) == (70, 14)
  # Two extra ids per span on each side: 559 ids, round(83.85) = 84 noise in 28 spans ->
  # 559 - 84 + 56 + 1 = 532 / 84 + 56 + 1 = 141 (560 ids would give 533 inputs).
  assert sc.random_spans_helper(532, extra_tokens_per_span_inputs=2,
                                extra_tokens_per_span_targets=2) == (559, 141)
  # Noise density 0.5: 95 ids -> 48 noise in 16 spans -> 64 / 65; the targets length is then
  # brought down to the inputs length, one id shorter: (94, 64).
  assert sc.random_spans_helper(64, noise_density=0.5) == (94, 64)


def test_too_short_lengths_say_the_minimum():
  assert sc.min_inputs_length() == 10
  with pytest.raises(ValueError, match="at least 10"):
    sc.random_spans_helper(9)
  with pytest.raises(ValueError, match="targets length of at least 114"):
    sc.span_corruption(
        tf.data.Dataset.from_tensors({"targets": tf.constant([5, 6], tf.int32)}),
        {"inputs": 512, "targets": 113}, FEATURES)
  with pytest.raises(ValueError, match="inputs length of at least 10"):
    sc.span_corruption(tf.data.Dataset.from_tensors({"targets": tf.constant([5], tf.int32)}),
                       {"inputs": 8, "targets": 64}, FEATURES)
  with pytest.raises(ValueError, match="noise_density"):
    sc.random_spans_helper(512, noise_density=0.0)


def test_noise_mask_structure():
  seeds = tf.constant([[1, 2], [3, 4]])
  for n in (2, 5, 10, 70, 568):
    mask = sc.random_spans_noise_mask(n, 0.15, seeds, 3.0).numpy()
    num_noise = min(max(int(round(n * 0.15)), 1), n - 1)
    num_spans = min(max(int(round(num_noise / 3.0)), 1), n - num_noise)
    assert mask.shape == (n,) and mask.dtype == bool
    assert mask.sum() == num_noise
    starts = np.flatnonzero(mask & ~np.concatenate([[False], mask[:-1]]))
    assert len(starts) == num_spans
    assert not mask[0] and mask[-1]  # non-noise first, noise last
  # Length 1 is computed as length 2 and cut: the one id is non-noise.
  assert sc.random_spans_noise_mask(1, 0.15, seeds, 3.0).numpy().tolist() == [False]
  # Same seeds -> same mask; other seeds -> another mask.
  a = sc.random_spans_noise_mask(568, 0.15, seeds).numpy()
  b = sc.random_spans_noise_mask(568, 0.15, tf.constant([[1, 2], [3, 4]])).numpy()
  c = sc.random_spans_noise_mask(568, 0.15, tf.constant([[5, 6], [7, 8]])).numpy()
  assert (a == b).all() and (a != c).any()


def test_sentinel_replacement_by_hand():
  tokens = tf.constant([10, 11, 12, 13, 14, 15, 16], tf.int32)
  mask = tf.constant([False, True, True, False, False, True, False])
  vocab = _Vocab()
  assert sc.sentinel_id(vocab) == 1099
  assert sc.noise_span_to_unique_sentinel(tokens, mask, vocab).numpy().tolist() == [
      10, 1099, 13, 14, 1098, 16]
  assert sc.nonnoise_span_to_unique_sentinel(tokens, mask, vocab).numpy().tolist() == [
      1099, 11, 12, 1098, 15, 1097]


@pytest.mark.parametrize("inputs_length", [64, 512])
def test_reconstruction_sentinels_and_lengths(inputs_length):
  docs = _docs()
  exs = _corrupt(docs, inputs_length, seed=3)
  tokens_length, targets_length = sc.random_spans_helper(inputs_length)
  total = sum(len(d) for d in docs)
  assert len(exs) == -(-total // tokens_length)
  stream = []
  for i, ex in enumerate(exs):
    inputs, targets = ex["inputs"], ex["targets"]
    assert inputs.dtype == np.int32 and targets.dtype == np.int32
    in_sent = [int(t) for t in inputs if t >= VOCAB_SIZE - EXTRA_IDS]
    tg_sent = [int(t) for t in targets if t >= VOCAB_SIZE - EXTRA_IDS]
    assert in_sent == list(range(VOCAB_SIZE - 1, VOCAB_SIZE - 1 - len(in_sent), -1))
    assert tg_sent == list(range(VOCAB_SIZE - 1, VOCAB_SIZE - 1 - len(tg_sent), -1))
    assert targets[0] == VOCAB_SIZE - 1 and len(tg_sent) == len(in_sent)
    original = reconstruct(inputs, targets)
    if i < len(exs) - 1:  # full segments: exactly the planned lengths (EOS still to come)
      assert len(original) == tokens_length
      assert (len(inputs) + 1, len(targets) + 1) == (inputs_length, targets_length)
    stream.extend(original)
  np.testing.assert_array_equal(stream, np.concatenate(docs))


def test_noise_statistics():
  # 568-id segments: 85 noise ids (0.1496) in 28 spans (mean 3.04) each.
  exs = _corrupt(_docs(120, seed=1), 512, seed=11)
  noise = nonnoise = 0
  span_lengths = []
  for ex in exs:
    first = VOCAB_SIZE - EXTRA_IDS
    targets = ex["targets"].tolist()
    noise += sum(t < first for t in targets)
    nonnoise += sum(t < first for t in ex["inputs"].tolist())
    run = None
    for t in targets + [first]:  # a trailing sentinel closes the last span
      if t >= first:
        if run:
          span_lengths.append(run)
        run = 0
      else:
        run += 1
  assert len(exs) > 40
  assert abs(noise / (noise + nonnoise) - 0.15) < 0.005
  assert abs(np.mean(span_lengths) - 3.0) < 0.1
  assert len(set(span_lengths)) >= 4  # span lengths vary (random compositions)


def test_seeded_determinism():
  docs = _docs(10)
  a, b, c = _corrupt(docs, 64, 5), _corrupt(docs, 64, 5), _corrupt(docs, 64, 6)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x["inputs"], y["inputs"])
    np.testing.assert_array_equal(x["targets"], y["targets"])
  assert any(not np.array_equal(x["inputs"], z["inputs"]) for x, z in zip(a, c))


def test_select_random_chunk_and_split():
  long_doc = np.arange(3, 3 + 250, dtype=np.int32)
  ds = tf.data.Dataset.from_tensors({"targets": long_doc})
  chunks = set()
  for seed in range(12):
    with seqio.utils.map_seed_manager(seed):
      (chunk,) = list(sc.select_random_chunk(ds, max_length=100).as_numpy_iterator())
    chunks.add(tuple(chunk["targets"].tolist()))
  # The aligned windows [0:100], [100:200], [200:250]; several seeds hit more than one.
  windows = {tuple(long_doc[i:i + 100].tolist()) for i in (0, 100, 200)}
  assert chunks <= windows and len(chunks) >= 2
  parts = [ex["targets"].tolist() for ex in sc.split_tokens(ds, 100).as_numpy_iterator()]
  assert [len(p) for p in parts] == [100, 100, 50] and sum(parts, []) == long_doc.tolist()
