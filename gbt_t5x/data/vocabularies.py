"""Vocabulary helpers: T5-style SentencePiece vocabularies and model/vocabulary size checks.

What it is for: building the `seqio.SentencePieceVocabulary` that tasks and gin files use (T5's
convention: pad 0, eos 1, unk 2, plus 100 sentinel "extra ids" counted down from the top), and
catching the classic fault of a model whose embedding table is smaller than its vocabulary.

Must not import: jax, flax, or anything of `gbt_t5x.models` / `train` / `guided`.
"""
from __future__ import annotations

import os
from typing import Union

import seqio


def sentencepiece_vocabulary(path: Union[str, os.PathLike],
                             extra_ids: int = 100) -> seqio.SentencePieceVocabulary:
  """A `seqio.SentencePieceVocabulary` for the model file at `path` with `extra_ids` sentinels.

  `vocab_size` of the result = SentencePiece pieces + `extra_ids`. The file is read lazily (on
  first encode / decode), so `path` may be a `gs://` path for real runs."""
  if isinstance(extra_ids, bool) or not isinstance(extra_ids, int) or extra_ids < 0:
    raise ValueError(f"extra_ids must be a non-negative int, got {extra_ids!r}")
  path = os.fspath(path)
  if not path:
    raise ValueError("sentencepiece_vocabulary needs a model path, got an empty string")
  return seqio.SentencePieceVocabulary(path, extra_ids=extra_ids)


def padded_vocab_size(n: int, multiple: int = 128) -> int:
  """Smallest multiple of `multiple` that is >= `n` (e.g. 1100 -> 1152, 32100 -> 32128)."""
  if isinstance(n, bool) or not isinstance(n, int) or n < 1:
    raise ValueError(f"vocabulary size must be a positive int, got {n!r}")
  if isinstance(multiple, bool) or not isinstance(multiple, int) or multiple < 1:
    raise ValueError(f"multiple must be a positive int, got {multiple!r}")
  return -(-n // multiple) * multiple


def readable_vocab_size(vocabulary: seqio.Vocabulary, what: str = "vocabulary") -> int:
  """`vocabulary.vocab_size` (ids: pieces + extra ids), loading its model file if needed.

  A SentencePiece model file that cannot be read (a missing local path, a gs:// path this machine
  cannot reach) is a one-line ValueError naming `what` and the path, instead of TensorFlow's
  multi-line NotFoundError / PermissionDeniedError."""
  try:
    return int(vocabulary.vocab_size)
  except Exception as e:  # pylint: disable=broad-except  (tf.errors.*, OSError, sentencepiece)
    path = getattr(vocabulary, "sentencepiece_model_file", None)
    if path is None:
      raise
    lines = [l.strip() for l in str(e).splitlines() if l.strip()] or [""]
    raise ValueError(
        f"{what}: cannot read the SentencePiece model {path} ({type(e).__name__}: {lines[0]}); "
        "check the path and this machine's access to it") from None


def check_vocab_fits_model(vocabulary: seqio.Vocabulary, model_vocab_size: int) -> None:
  """Raises ValueError if `vocabulary` has more ids (pieces + extra ids) than the model's
  embedding table rows `model_vocab_size`; a larger (padded) model table is fine."""
  n = int(vocabulary.vocab_size)
  if model_vocab_size < n:
    raise ValueError(
        f"vocabulary {vocabulary} has {n} ids but the model's vocab_size is {model_vocab_size}; "
        f"set the model's vocab_size to at least {n} (e.g. {padded_vocab_size(n)})")


# T5's public SentencePiece vocabulary (32000 pieces; the model adds 100 sentinels → 32128 rows):
# the default of every real task family (C4, WMT, GLUE/SuperGLUE).
T5_VOCABULARY_PATH = "gs://t5-data/vocabs/cc_all.32000.100extra/sentencepiece.model"
