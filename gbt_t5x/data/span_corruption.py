"""T5's span-corruption pretraining objective as SeqIO preprocessors.

What it is for: turning tokenized monolingual text (`targets`, 1-D int32 token ids) into
(inputs, targets) pairs the way T5 pretrains (Raffel et al. 2020, section 3.1.4):

1. `select_random_chunk`: one random `max_length` window of each document (seeded).
2. `reduce_concat_tokens`: documents concatenated in groups of `batch_size` (no separator; id-0
   padding dropped).
3. `split_tokens`: the stream cut into segments of `tokens_length` ids (the last one shorter),
   where `(tokens_length, targets_length) = random_spans_helper(inputs_length, ...)`.
4. Per segment, `random_spans_noise_mask` marks `round(noise_density * n)` ids as noise in
   `round(noise / mean_noise_span_length)` spans; the first span is never noise, the last is.
   `inputs` = the segment with each noise span replaced by one sentinel; `targets` = the noise
   spans, each preceded by the sentinel that replaced it (i.e. the non-noise spans replaced by
   sentinels). Sentinels count down from `vocabulary.vocab_size - 1` (`<extra_id_0>`, 1, ...).

`append_eos_after_trim` (a separate task preprocessor) then adds EOS, so with the defaults a
full segment of 568 ids yields exactly 512 input and 114 target ids. All randomness is stateless
(`tf.random.stateless_*`) with seeds from `seqio.map_over_dataset(num_seeds=...)`, so the output
is a function of the seed that `seqio.get_dataset(..., seed=...)` fixes.

Must not import: jax, flax, or anything of `gbt_t5x.models` / `train` / `guided`.
"""
from __future__ import annotations

from typing import Mapping, Optional, Union

import seqio
import tensorflow as tf

DEFAULT_NOISE_DENSITY = 0.15
DEFAULT_MEAN_NOISE_SPAN_LENGTH = 3.0
DEFAULT_MAX_CHUNK_LENGTH = 65536
DEFAULT_CONCAT_BATCH_SIZE = 128

IntLike = Union[int, tf.Tensor]


# --------------------------------------------------------------------------------------------
# Length arithmetic.
# --------------------------------------------------------------------------------------------
def _check_noise_args(noise_density: float, mean_noise_span_length: float) -> None:
  if not 0.0 < float(noise_density) < 1.0:
    raise ValueError(f"noise_density must be in (0, 1), got {noise_density!r}")
  if float(mean_noise_span_length) < 1.0:
    raise ValueError(f"mean_noise_span_length must be >= 1, got {mean_noise_span_length!r}")


def _corrupted_lengths(tokens_length: int, noise_density: float, mean_noise_span_length: float,
                       extra_inputs: int, extra_targets: int) -> tuple[int, int, int]:
  """(inputs length, targets length, noise spans) of a `tokens_length` segment, EOS included."""
  num_noise = int(round(tokens_length * noise_density))
  num_spans = int(round(num_noise / mean_noise_span_length))
  return (tokens_length - num_noise + num_spans * extra_inputs + 1,
          num_noise + num_spans * extra_targets + 1, num_spans)


def random_spans_helper(inputs_length: int,
                        noise_density: float = DEFAULT_NOISE_DENSITY,
                        mean_noise_span_length: float = DEFAULT_MEAN_NOISE_SPAN_LENGTH,
                        extra_tokens_per_span_inputs: int = 1,
                        extra_tokens_per_span_targets: int = 1) -> tuple[int, int]:
  """Segment length before corruption and the targets length it produces (T5's calculation).

  Returns `(tokens_length, targets_length)`: the largest `tokens_length` whose corrupted inputs
  (non-noise ids + one sentinel per span + EOS) fit in `inputs_length` ids, and the length of its
  targets (noise ids + one sentinel per span + EOS). E.g. 512 -> (568, 114) at the defaults.
  As in T5, at noise density 0.5 the targets length is brought down to `inputs_length` when it
  would exceed it. Raises ValueError when `inputs_length` is below `min_inputs_length(...)`."""
  _check_noise_args(noise_density, mean_noise_span_length)
  minimum = min_inputs_length(noise_density, mean_noise_span_length)
  if isinstance(inputs_length, bool) or not isinstance(inputs_length, int) or (
      inputs_length < minimum):
    raise ValueError(f"span corruption needs an inputs length of at least {minimum} "
                     f"(noise_density={noise_density}, mean_noise_span_length="
                     f"{mean_noise_span_length}), got {inputs_length!r}")
  extras = (extra_tokens_per_span_inputs, extra_tokens_per_span_targets)
  tokens_length = inputs_length - 1
  while _corrupted_lengths(tokens_length + 1, noise_density, mean_noise_span_length,
                           *extras)[0] <= inputs_length:
    tokens_length += 1
  _, targets_length, _ = _corrupted_lengths(tokens_length, noise_density,
                                            mean_noise_span_length, *extras)
  if noise_density == 0.5 and targets_length > inputs_length:
    tokens_length -= 1
    targets_length -= 1
  return tokens_length, targets_length


def min_inputs_length(noise_density: float = DEFAULT_NOISE_DENSITY,
                      mean_noise_span_length: float = DEFAULT_MEAN_NOISE_SPAN_LENGTH) -> int:
  """Smallest inputs length (EOS included) whose full segment gets at least one noise span.

  Below it the length calculation plans zero spans while the noise mask always makes one, so
  targets would overflow. 10 at the defaults (a 10-id segment: 2 noise ids in 1 span)."""
  _check_noise_args(noise_density, mean_noise_span_length)
  tokens_length = 2
  while _corrupted_lengths(tokens_length, noise_density, mean_noise_span_length, 1, 1)[2] < 1:
    tokens_length += 1
  return _corrupted_lengths(tokens_length, noise_density, mean_noise_span_length, 1, 1)[0]


# --------------------------------------------------------------------------------------------
# Noise mask and sentinel replacement (single example, tensors).
# --------------------------------------------------------------------------------------------
def _stateless_shuffle(values: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
  """A seeded permutation of the 1-D `values`."""
  keys = tf.random.stateless_uniform(tf.shape(values), seed=seed)
  return tf.gather(values, tf.argsort(keys))


def _random_segmentation(num_items: tf.Tensor, num_segments: tf.Tensor,
                         seed: tf.Tensor) -> tf.Tensor:
  """Lengths [num_segments] (int32, each >= 1, sum num_items) of a uniformly random composition
  of `num_items` into `num_segments` parts; needs 1 <= num_segments <= num_items."""
  gaps = tf.cast(tf.range(num_items - 1) < num_segments - 1, tf.int32)
  starts = tf.concat([[1], _stateless_shuffle(gaps, seed)], axis=0)  # 1 where a part begins
  part = tf.cumsum(starts) - 1
  return tf.math.segment_sum(tf.ones_like(part), part)


def random_spans_noise_mask(length: IntLike,
                            noise_density: float,
                            seeds: tf.Tensor,
                            mean_noise_span_length: float = DEFAULT_MEAN_NOISE_SPAN_LENGTH
                            ) -> tf.Tensor:
  """Noise mask [length] (tf.bool) of alternating non-noise / noise spans (T5's semantics).

  For `n = max(length, 2)`: `round(n * noise_density)` noise ids (clamped to [1, n - 1]) in
  `max(1, round(noise / mean_noise_span_length))` spans (also at most the non-noise count, so
  every span is non-empty); span lengths are uniformly random compositions; the mask starts with
  a non-noise span and ends with a noise span, then is cut to `length`. `seeds`: int32 [2, 2],
  one stateless seed for the noise and one for the non-noise segmentation."""
  _check_noise_args(noise_density, mean_noise_span_length)
  seeds = tf.convert_to_tensor(seeds)
  orig_length = tf.cast(length, tf.int32)
  n = tf.maximum(orig_length, 2)
  num_noise = tf.cast(tf.round(tf.cast(n, tf.float32) * noise_density), tf.int32)
  num_noise = tf.clip_by_value(num_noise, 1, n - 1)
  num_nonnoise = n - num_noise
  num_spans = tf.cast(tf.round(tf.cast(num_noise, tf.float32) / mean_noise_span_length),
                      tf.int32)
  num_spans = tf.minimum(tf.maximum(num_spans, 1), num_nonnoise)
  noise_lengths = _random_segmentation(num_noise, num_spans, seeds[0])
  nonnoise_lengths = _random_segmentation(num_nonnoise, num_spans, seeds[1])
  lengths = tf.reshape(tf.stack([nonnoise_lengths, noise_lengths], axis=1), [-1])
  kinds = tf.tile(tf.constant([False, True]), [num_spans])
  return tf.repeat(kinds, lengths)[:orig_length]


def sentinel_id(vocabulary: seqio.Vocabulary) -> int:
  """The first sentinel `<extra_id_0>`: `vocabulary.vocab_size - 1` (the next ones count down)."""
  return int(vocabulary.vocab_size) - 1


def noise_span_to_unique_sentinel(tokens: tf.Tensor, noise_mask: tf.Tensor,
                                  vocabulary: seqio.Vocabulary) -> tf.Tensor:
  """`tokens` [n] with each run of `noise_mask` [n] replaced by one sentinel; [n'] same dtype.

  The k-th run (0-based) becomes `sentinel_id(vocabulary) - k`."""
  prev_noise = tf.concat([[False], noise_mask[:-1]], axis=0)
  first_noise = tf.logical_and(noise_mask, tf.logical_not(prev_noise))
  later_noise = tf.logical_and(noise_mask, prev_noise)
  sentinels = sentinel_id(vocabulary) + 1 - tf.cumsum(tf.cast(first_noise, tokens.dtype))
  tokens = tf.where(first_noise, sentinels, tokens)
  return tf.boolean_mask(tokens, tf.logical_not(later_noise))


def nonnoise_span_to_unique_sentinel(tokens: tf.Tensor, noise_mask: tf.Tensor,
                                     vocabulary: seqio.Vocabulary) -> tf.Tensor:
  """`tokens` [n] with each run of non-noise ids replaced by one sentinel (the targets side)."""
  return noise_span_to_unique_sentinel(tokens, tf.logical_not(noise_mask), vocabulary)


# --------------------------------------------------------------------------------------------
# Dataset-level steps.
# --------------------------------------------------------------------------------------------
def select_random_chunk(dataset: tf.data.Dataset, max_length: int = DEFAULT_MAX_CHUNK_LENGTH,
                        feature_key: str = "targets") -> tf.data.Dataset:
  """Keeps one seeded random window of `max_length` ids of each non-empty `feature_key` [n].

  The window is one of the `ceil(n / max_length)` aligned windows (the last may be shorter);
  other features are dropped."""

  @seqio.map_over_dataset(num_seeds=1)
  def _chunk(ex, seed):
    tokens = ex[feature_key]
    n = tf.shape(tokens)[0]
    num_windows = (n + max_length - 1) // max_length
    start = max_length * tf.random.stateless_uniform([], seed=seed, maxval=num_windows,
                                                     dtype=tf.int32)
    return {feature_key: tokens[start:tf.minimum(start + max_length, n)]}

  return _chunk(dataset.filter(lambda ex: tf.size(ex[feature_key]) > 0))


def reduce_concat_tokens(dataset: tf.data.Dataset, feature_key: str = "targets",
                         batch_size: int = DEFAULT_CONCAT_BATCH_SIZE) -> tf.data.Dataset:
  """Concatenates `feature_key` of every `batch_size` consecutive examples (id 0 dropped)."""
  dataset = dataset.map(lambda ex: {feature_key: ex[feature_key]},
                        num_parallel_calls=tf.data.AUTOTUNE)
  dataset = dataset.padded_batch(batch_size, padded_shapes={feature_key: [-1]})

  def _flatten(batch):
    tokens = tf.reshape(batch[feature_key], [-1])
    return {feature_key: tf.boolean_mask(tokens, tf.not_equal(tokens, 0))}

  return dataset.map(_flatten, num_parallel_calls=tf.data.AUTOTUNE)


def split_tokens(dataset: tf.data.Dataset, max_tokens_per_segment: int,
                 feature_key: str = "targets") -> tf.data.Dataset:
  """Cuts each `feature_key` [n] into consecutive segments of `max_tokens_per_segment` ids (the
  last one shorter); one example per segment, other features dropped."""
  if isinstance(max_tokens_per_segment, bool) or not isinstance(max_tokens_per_segment, int) or (
      max_tokens_per_segment < 1):
    raise ValueError(f"max_tokens_per_segment must be a positive int, got "
                     f"{max_tokens_per_segment!r}")
  seg = max_tokens_per_segment

  def _segments(ex):
    tokens = ex[feature_key]
    n = tf.size(tokens)
    num = (n + seg - 1) // seg
    rows = tf.reshape(tf.pad(tokens, [[0, num * seg - n]]), [num, seg])
    lengths = tf.minimum(seg, n - seg * tf.range(num))
    return tf.data.Dataset.from_tensor_slices((rows, lengths))

  return dataset.flat_map(_segments).map(lambda row, n: {feature_key: row[:n]},
                                         num_parallel_calls=tf.data.AUTOTUNE)


def _check_lengths(sequence_length: Optional[Mapping[str, int]], noise_density: float,
                   mean_noise_span_length: float) -> tuple[int, int]:
  """(tokens_length, targets_length) for `sequence_length`; ValueError if they do not fit."""
  if not sequence_length or "inputs" not in sequence_length or "targets" not in sequence_length:
    raise ValueError(f"span corruption needs sequence_length with 'inputs' and 'targets', got "
                     f"{sequence_length!r}")
  tokens_length, targets_length = random_spans_helper(
      sequence_length["inputs"], noise_density, mean_noise_span_length)
  if sequence_length["targets"] < targets_length:
    raise ValueError(
        f"span corruption with inputs length {sequence_length['inputs']} needs a targets length "
        f"of at least {targets_length}, got {sequence_length['targets']}")
  return tokens_length, targets_length


def span_corruption(dataset: tf.data.Dataset,
                    sequence_length: Mapping[str, int],
                    output_features: Mapping[str, seqio.Feature],
                    mean_noise_span_length: float = DEFAULT_MEAN_NOISE_SPAN_LENGTH,
                    noise_density: float = DEFAULT_NOISE_DENSITY) -> tf.data.Dataset:
  """SeqIO preprocessor: tokenized `targets` [n] documents -> span-corrupted examples.

  Output examples hold `inputs` [<= L_in - 1] and `targets` [<= L_tg - 1] int32 ids (EOS is left
  to `append_eos_after_trim`), where `L_in = sequence_length['inputs']` and `L_tg` the targets
  length from `random_spans_helper(L_in, ...)`; `sequence_length['targets']` must be >= `L_tg`.
  Sentinels come from each feature's vocabulary (`vocab_size - 1` downwards), which needs at
  least as many extra ids as a full segment has noise spans."""
  tokens_length, _ = _check_lengths(sequence_length, noise_density, mean_noise_span_length)
  num_spans = _corrupted_lengths(tokens_length, noise_density, mean_noise_span_length, 1, 1)[2]
  for key in ("inputs", "targets"):
    if key not in output_features:
      raise ValueError(f"span corruption needs an output feature {key!r}, got "
                       f"{sorted(output_features)}")
    extra_ids = getattr(output_features[key].vocabulary, "extra_ids", 0)
    if extra_ids < num_spans:
      raise ValueError(f"span corruption of {tokens_length}-id segments uses {num_spans} "
                       f"sentinels but the {key!r} vocabulary has {extra_ids} extra ids")
  inputs_vocab = output_features["inputs"].vocabulary
  targets_vocab = output_features["targets"].vocabulary

  @seqio.map_over_dataset(num_seeds=2)
  def _corrupt(ex, seeds):
    tokens = ex["targets"]
    mask = random_spans_noise_mask(tf.size(tokens), noise_density, seeds,
                                   mean_noise_span_length)
    return {"inputs": noise_span_to_unique_sentinel(tokens, mask, inputs_vocab),
            "targets": nonnoise_span_to_unique_sentinel(tokens, mask, targets_vocab)}

  dataset = select_random_chunk(dataset, feature_key="targets")
  dataset = reduce_concat_tokens(dataset, feature_key="targets")
  dataset = split_tokens(dataset, tokens_length, feature_key="targets")
  return _corrupt(dataset)
