"""The demo world's pretraining corpora besides its source-language text, for a SeqIO mixture.

What it is for: guided mixture weights (gin/guided/mixture_weights.gin) need a pretraining
mixture whose members are of different use to the downstream tasks, as C4, code, forums and
boilerplate are to a real T5. `gbt_t5x_tasks.demo_mixture` registers `demo_pretrain_mixture` from
the demo world's source-language text (`demo_span_corruption`) and these corpora, each
generated deterministically from the world's config:

* `target`: English-like sentences of the downstream grammar (fresh meanings rendered by the
  world's English renderer): the language the demo translation task decodes into; no use to the
  source-language classification tasks.
* `shuffled`: the world's source-language sentences (outside the guide slice) with their words in
  random order: the right words and morphology, no syntax.
* `other_language`: sentences of a second invented language (another seed's lexicon, the same
  sentence shapes): text of no use downstream that the shared vocabulary cuts into pieces.
* `boilerplate`: a few dozen web-boilerplate lines repeated with changing numbers.

numpy only: must not import tensorflow, seqio, jax or anything of `gbt_t5x.models` / `train`.
"""
from __future__ import annotations

import functools
from typing import Sequence

import numpy as np

from gbt_t5x.data import demo_world

CORPORA = ("target", "shuffled", "other_language", "boilerplate")
# Sizes relative to the world's `num_mono` (its source-language corpus): the mixture's natural
# (size-proportional) rates. Most text is of little use, as in web crawls.
RELATIVE_SIZES = {"target": 1.0, "shuffled": 1.0, "other_language": 1.5, "boilerplate": 0.5}
OTHER_LANGUAGE_SEED_OFFSET = 1_000  # the second language's lexicon: world seed + this
_STREAM = {"target": 11, "shuffled": 12, "other_language": 13, "boilerplate": 14}
_BOILERPLATE = (
    "click here to subscribe to our newsletter", "all rights reserved", "read more",
    "share this page with your friends", "cookies help us deliver our services",
    "sign in to continue", "terms of use and privacy policy", "back to top",
    "free shipping on orders over {n} dollars", "page {n} of {m}", "posted {n} days ago",
    "{n} comments", "follow us for more updates", "contact us at any time",
    "last updated {n} hours ago", "skip to main content", "loading please wait",
    "this site uses cookies", "you may also like", "download the app now")


def size_of(corpus: str, num_mono: int) -> int:
  """Sentences in `corpus` for a world with `num_mono` source-language sentences."""
  if corpus not in RELATIVE_SIZES:
    raise ValueError(f"unknown demo mixture corpus {corpus!r}; known: {list(CORPORA)}")
  return int(round(RELATIVE_SIZES[corpus] * num_mono))


@functools.lru_cache(maxsize=16)
def _generate(corpus: str, config: demo_world.DemoWorldConfig,
              mono: tuple[str, ...] | None) -> tuple[str, ...]:
  n = size_of(corpus, config.num_mono)
  rng = np.random.default_rng(np.random.SeedSequence([config.seed, _STREAM[corpus]]))
  if corpus == "shuffled":
    lines = []
    for line in mono or ():
      words = line.split()
      rng.shuffle(words)
      lines.append(" ".join(words))
    return tuple(lines)
  if corpus == "boilerplate":
    out = []
    for _ in range(n):
      line = _BOILERPLATE[int(rng.integers(len(_BOILERPLATE)))]
      out.append(line.format(n=int(rng.integers(1, 100)), m=int(rng.integers(100, 1000))))
    return tuple(out)
  draws = demo_world._Draws(rng)  # noqa: SLF001 (the world's own sampler, shared on purpose)
  if corpus == "target":
    return tuple(demo_world.render_target(demo_world.sample_sentence(draws,
                                                                     config.max_target_words))
                 for _ in range(n))
  lexicon = demo_world.build_lexicon(config.seed + OTHER_LANGUAGE_SEED_OFFSET)
  return tuple(demo_world.render_source(demo_world.sample_sentence(draws,
                                                                   config.max_target_words),
                                        lexicon) for _ in range(n))


def corpus_lines(corpus: str, config: demo_world.DemoWorldConfig,
                 mono: Sequence[str] = ()) -> tuple[str, ...]:
  """The sentences of `corpus` for the world `config` (deterministic; cached per config).

  Args:
    corpus: one of `CORPORA`.
    config: the demo world's config.
    mono: for 'shuffled', the source-language sentences to shuffle (one line each).
  """
  if corpus not in CORPORA:
    raise ValueError(f"unknown demo mixture corpus {corpus!r}; known: {list(CORPORA)}")
  return _generate(corpus, config, tuple(mono) if corpus == "shuffled" else None)
