"""Tests of the deterministic guide hash split: matches its documented formula, partitions a
dataset into disjoint complete parts, has the requested fraction, is nested and salt-dependent."""
import numpy as np
import pytest
import tensorflow as tf

from gbt_t5x.data import guide_split

_MASK = (1 << 64) - 1


def _mix(z: int) -> int:
  z ^= z >> 30
  z = (z * 0xBF58476D1CE4E5B9) & _MASK
  z ^= z >> 27
  z = (z * 0x94D049BB133111EB) & _MASK
  return z ^ (z >> 31)


def _reference_bucket(key: str, salt: str = "gbt_t5x_guide") -> int:
  """The bucket recomputed from the module docstring's formula in plain Python integers."""
  data = (salt + key).encode("utf-8")
  total = sum(_mix((256 * i + b + 0x9E3779B97F4A7C15) & _MASK) for i, b in enumerate(data))
  return _mix((total + len(data)) & _MASK) % 10000


KEYS = [f"sentence number {i}: the dog saw {i % 7} cats." for i in range(3000)]


def _buckets(keys, salt="gbt_t5x_guide"):
  ds = tf.data.Dataset.from_tensor_slices(keys).map(
      lambda k: guide_split.guide_bucket(k, salt))
  return np.array(list(ds.as_numpy_iterator()))


def test_bucket_matches_documented_formula():
  keys = KEYS[:200] + ["", "ü ñ 汉字", "a" * 5000]
  got = _buckets(keys)
  want = np.array([_reference_bucket(k) for k in keys])
  np.testing.assert_array_equal(got, want)
  got_salted = _buckets(keys[:50], salt="other")
  np.testing.assert_array_equal(got_salted, [_reference_bucket(k, "other") for k in keys[:50]])
  assert (got_salted != got[:50]).mean() > 0.9  # the salt changes the split


def test_memberships_follow_threshold_and_are_stable():
  # The bucket of "" is that of the salt alone; membership is bucket < round(percent * 100).
  for key in ["", "hello", "The big dog saw a cat.", "x" * 100]:
    b = _reference_bucket(key)
    for percent in (0.0, 1.0, 2.5, 50.0, 100.0):
      assert bool(guide_split.in_guide_split(tf.constant(key), percent)) == (
          b < round(percent * 100)), (key, percent)


def test_filter_partitions_and_fraction():
  ds = tf.data.Dataset.from_tensor_slices({"text": KEYS, "id": np.arange(len(KEYS))})
  key_fn = lambda ex: ex["text"]
  for percent in (1.0, 10.0):
    guide = [int(e["id"]) for e in guide_split.filter_guide(
        ds, key_fn, percent, keep_guide=True).as_numpy_iterator()]
    rest = [int(e["id"]) for e in guide_split.filter_guide(
        ds, key_fn, percent, keep_guide=False).as_numpy_iterator()]
    assert not set(guide) & set(rest)
    assert sorted(guide + rest) == list(range(len(KEYS)))
    want = [i for i, k in enumerate(KEYS) if _reference_bucket(k) < round(percent * 100)]
    assert guide == want
    # Binomial(3000, p): within 4 standard deviations of the expected count.
    p = percent / 100
    assert abs(len(guide) - 3000 * p) < 4 * np.sqrt(3000 * p * (1 - p))
  small = {int(e["id"]) for e in guide_split.filter_guide(ds, key_fn, 1.0).as_numpy_iterator()}
  large = {int(e["id"]) for e in guide_split.filter_guide(ds, key_fn, 10.0).as_numpy_iterator()}
  assert small < large  # nested slices


@pytest.mark.parametrize("percent", [-1.0, 100.5, "1", True])
def test_bad_percent(percent):
  with pytest.raises(ValueError, match="percent"):
    guide_split.in_guide_split(tf.constant("a"), percent)


def test_bad_key():
  with pytest.raises(ValueError, match="scalar tf.string"):
    guide_split.in_guide_split(tf.constant(["a", "b"]))
  with pytest.raises(ValueError, match="keep_guide"):
    guide_split.filter_guide(tf.data.Dataset.from_tensor_slices(["a"]), lambda x: x, 1.0, "yes")
