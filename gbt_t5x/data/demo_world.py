"""The built-in demo world: a seeded synthetic language pair, its noisy corpus and its vocabulary.

What it is for: the project cannot download WMT, so the demo tasks (`gbt_t5x_tasks.demo`) read a
corpus generated here. The generator has a real grammar so that translation is not word-by-word:

* Target ("English-like"): SVO, determiners (the / a / an / some / this / these / that / those /
  numerals), adjectives before nouns, regular and irregular plurals, present / past / future
  tense with 3rd-person-singular agreement and do-support negation, prepositional phrases after
  the object, an optional trailing subordinate clause ("... because ...").
* Source (an invented language, words generated from seeded syllables): SOV and verb-final,
  adjectives after the noun (in mirrored order), postpositions, agglutinative suffixes (noun
  number, definiteness, accusative case, adjective number agreement, verb negation, tense and
  person/number), pro-drop of 1st/2nd person subjects, the subordinate clause first and its
  conjunction after it.

Every sentence is rendered from a meaning representation (`Sentence`), so clean pairs are exact
translations and tests can regenerate them. The train split carries label noise at `noise_rate`;
each noisy pair gets one kind, recorded in the `noise_bucket` column: 0 clean, 1 misaligned (the
target of another random train pair), 2 truncated (a 30-70 % word prefix of its own target),
3 untranslated copy (target = source). Guide / dev / test are clean and disjoint from train (no
shared source or target string).

On disk (`ensure_demo_world(data_dir, **config)`): `train.tsv`, `guide.tsv`, `dev.tsv`,
`test.tsv` (header + rows `source<TAB>target<TAB>noise_bucket<TAB>example_id`, `example_id`
counting 0.. within each split), `mono.txt` (monolingual source sentences, one a line),
`spm.model` (SentencePiece unigram trained on the prefixed train sources, train targets and
mono; T5 ids pad 0 / eos 1 / unk 2, no bos) and `manifest.json`
(written last; generation is skipped when it matches the requested config).

Must not import: jax, flax, seqio, tensorflow, or anything of `gbt_t5x.models` / `train` /
`guided` (numpy + sentencepiece only, so that the CLI and the generator stay light).
"""
from __future__ import annotations

import argparse
import dataclasses
import fcntl
import hashlib
import io
import json
import os
import pathlib
import shutil
import sys
import tempfile
import time
from typing import Iterable, Optional, Sequence, Union

import numpy as np

from gbt_t5x import errors

DEMO_WORLD_VERSION = 1
ENV_DATA_DIR = "GBT_T5X_DEMO_DIR"
ENV_CONFIG = "GBT_T5X_DEMO_CONFIG"
SPLITS = ("train", "guide", "dev", "test")
TSV_COLUMNS = ("source", "target", "noise_bucket", "example_id")
NOISE_CLEAN, NOISE_MISALIGNED, NOISE_TRUNCATED, NOISE_COPY = 0, 1, 2, 3
# The names of the noise buckets (the `noise_bucket` feature's values, in order).
NOISE_BUCKET_NAMES = ("clean", "misaligned", "truncated", "untranslated copy")
MIN_TARGET_WORDS, MAX_TARGET_WORDS = 4, 25
# The T5-style task prefix of the demo translation task; the vocabulary is trained on prefixed
# train sources so that the prefix costs a few pieces, not one piece per character.
TASK_PREFIX = "translate Demo to English: "

PathLike = Union[str, os.PathLike]

# --------------------------------------------------------------------------------------------
# Target-side lexicon. "word" or "word/irregular-form" (plural for nouns, past for verbs).
# --------------------------------------------------------------------------------------------
_NOUNS = """man/men woman/women child/children boy girl friend teacher student doctor farmer king
queen baby mother father brother sister neighbor soldier cook driver singer dog cat horse bird
fish/fish mouse/mice cow sheep/sheep fox wolf/wolves bear rabbit snake lion duck goat apple bread
cake egg orange banana book letter box cup table chair bed door window house garden city village
road river lake mountain forest tree flower stone ball car boat train bus key knife/knives bag hat
shoe coat shirt picture song story game gift lamp clock phone bottle glass plate spoon basket
bridge tower church school shop market farm field hill island beach star cloud leaf/leaves wall
roof kitchen room ship bicycle computer map ring candle pencil pen desk bench""".split()
_ADJECTIVES = """big small old young new red blue green white black yellow happy sad tall short
long heavy light quick slow warm cold hot clean dirty quiet loud strong weak rich poor kind angry
tired hungry beautiful ugly brave clever lazy busy empty full soft hard bright dark strange famous
little wooden""".split()
_TRANSITIVE = """see/saw find/found take/took make/made hold/held buy/bought sell/sold
bring/brought carry watch like love want need help visit open close clean paint push pull follow
chase catch/caught throw/threw eat/ate drink/drank read/read write/wrote draw/drew build/built
break/broke hear/heard know/knew meet/met call wash fix touch kick lift hide/hid keep/kept
lose/lost teach/taught remember cook answer count miss kiss feed/fed drop/dropped stop/stopped move
describe forget/forgot""".split()
_INTRANSITIVE = """sleep/slept run/ran walk sing/sang dance laugh cry smile swim/swam jump wait
fall/fell sit/sat stand/stood arrive work play rest shout listen""".split()
_PREPOSITIONS = "in on with near under behind from without beside".split()
_CONJUNCTIONS = "because when while although before until if".split()
_NUMERALS = {2: "two", 3: "three", 4: "four", 5: "five"}
_DETERMINERS = ("def", "indef", "this", "that", "num")
_TENSES = ("present", "past", "future")
# (person, plural, gender) -> (subject form, object form); gender only matters for 3rd singular.
_PRONOUNS = {
    (1, False, ""): ("I", "me"), (2, False, ""): ("you", "you"),
    (3, False, "m"): ("he", "him"), (3, False, "f"): ("she", "her"),
    (1, True, ""): ("we", "us"), (2, True, ""): ("you", "you"), (3, True, ""): ("they", "them"),
}
_SUFFIX_NAMES = ("noun_pl", "adj_pl", "def", "acc", "neg", "past", "future",
                 "p1sg", "p2sg", "p3sg", "p1pl", "p2pl", "p3pl")
_CONSONANTS = ("p", "t", "k", "m", "n", "s", "l", "r", "v", "d", "g", "b", "h", "f", "z", "sh",
               "ch")
_VOWELS = ("a", "e", "i", "o", "u")
_CODAS = ("n", "r", "s", "l", "m", "k")


def _split_forms(entries: Sequence[str]) -> dict[str, Optional[str]]:
  out: dict[str, Optional[str]] = {}
  for e in entries:
    base, _, irregular = e.partition("/")
    if base in out:
      raise ValueError(f"duplicate lexicon entry {base!r}")
    out[base] = irregular or None
  return out


_NOUN_FORMS = _split_forms(_NOUNS)
_TRANSITIVE_FORMS = _split_forms(_TRANSITIVE)
_INTRANSITIVE_FORMS = _split_forms(_INTRANSITIVE)
_VERB_FORMS = {**_TRANSITIVE_FORMS, **_INTRANSITIVE_FORMS}
_ADJECTIVE_LIST = tuple(dict.fromkeys(_ADJECTIVES))
if len(_VERB_FORMS) != len(_TRANSITIVE_FORMS) + len(_INTRANSITIVE_FORMS):
  raise ValueError("a verb is listed as both transitive and intransitive")


def _ends_sibilant(w: str) -> bool:
  return w.endswith(("s", "x", "z", "ch", "sh"))


def _consonant_y(w: str) -> bool:
  return len(w) > 1 and w.endswith("y") and w[-2] not in "aeiou"


def english_plural(noun: str) -> str:
  """Plural of a lexicon noun ("box" -> "boxes", "city" -> "cities", "child" -> "children")."""
  irregular = _NOUN_FORMS.get(noun)
  if irregular:
    return irregular
  if _ends_sibilant(noun):
    return noun + "es"
  if _consonant_y(noun):
    return noun[:-1] + "ies"
  return noun + "s"


def english_third_singular(verb: str) -> str:
  """Present 3rd person singular ("watch" -> "watches", "carry" -> "carries")."""
  if _ends_sibilant(verb):
    return verb + "es"
  if _consonant_y(verb):
    return verb[:-1] + "ies"
  return verb + "s"


def english_past(verb: str) -> str:
  """Simple past ("like" -> "liked", "carry" -> "carried", "see" -> "saw")."""
  irregular = _VERB_FORMS.get(verb)
  if irregular:
    return irregular
  if verb.endswith("e"):
    return verb + "d"
  if _consonant_y(verb):
    return verb[:-1] + "ied"
  return verb + "ed"


# --------------------------------------------------------------------------------------------
# Meaning representation.
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class NounPhrase:
  """A noun phrase: determiner kind (`_DETERMINERS`), noun lemma, number, adjectives in English
  order, and the count when `det == "num"` (then `plural` is True)."""
  det: str
  noun: str
  plural: bool
  adjectives: tuple[str, ...] = ()
  count: int = 0


@dataclasses.dataclass(frozen=True)
class Pronoun:
  """A personal pronoun: person 1-3, number, gender "m"/"f" for 3rd singular else ""."""
  person: int
  plural: bool
  gender: str = ""


Argument = Union[NounPhrase, Pronoun]


@dataclasses.dataclass(frozen=True)
class Clause:
  """One clause: subject, verb lemma, optional object (transitive verbs only), tense
  (`_TENSES`), negation and prepositional phrases `((preposition, NounPhrase), ...)`."""
  subject: Argument
  verb: str
  obj: Optional[Argument]
  tense: str
  negated: bool = False
  pps: tuple[tuple[str, NounPhrase], ...] = ()


@dataclasses.dataclass(frozen=True)
class Sentence:
  """A main clause with an optional subordinate clause introduced by `conjunction`."""
  main: Clause
  conjunction: Optional[str] = None
  sub: Optional[Clause] = None


@dataclasses.dataclass(frozen=True)
class Lexicon:
  """The invented language: a stem for every target lemma / function word and the suffixes.

  `stems` maps keys such as "noun:dog", "adj:red", "verb:see", "prep:in", "conj:because",
  "num:2", "dem:this", "pron:3sgf" to source stems; `suffixes` maps `_SUFFIX_NAMES` to strings.
  """
  stems: dict[str, str]
  suffixes: dict[str, str]


def _agreement_key(arg: Argument) -> str:
  if isinstance(arg, Pronoun):
    return f"p{arg.person}{'pl' if arg.plural else 'sg'}"
  return "p3pl" if arg.plural else "p3sg"


def _pronoun_key(p: Pronoun) -> str:
  return f"pron:{p.person}{'pl' if p.plural else 'sg'}{p.gender}"


# --------------------------------------------------------------------------------------------
# Rendering.
# --------------------------------------------------------------------------------------------
def _english_np(np_: NounPhrase) -> list[str]:
  noun = english_plural(np_.noun) if np_.plural else np_.noun
  body = list(np_.adjectives) + [noun]
  if np_.det == "def":
    det = ["the"]
  elif np_.det == "indef":
    det = ["some"] if np_.plural else ["an" if body[0][0] in "aeiou" else "a"]
  elif np_.det == "this":
    det = ["these" if np_.plural else "this"]
  elif np_.det == "that":
    det = ["those" if np_.plural else "that"]
  elif np_.det == "num":
    det = [_NUMERALS[np_.count]]
  else:
    raise ValueError(f"unknown determiner {np_.det!r}")
  return det + body


def _english_arg(arg: Argument, subject: bool) -> list[str]:
  if isinstance(arg, Pronoun):
    forms = _PRONOUNS[(arg.person, arg.plural, arg.gender)]
    return [forms[0] if subject else forms[1]]
  return _english_np(arg)


def _english_verb(clause: Clause) -> list[str]:
  third_sg = _agreement_key(clause.subject) == "p3sg"
  v = clause.verb
  if clause.tense == "future":
    return ["will", "not", v] if clause.negated else ["will", v]
  if clause.tense == "past":
    return ["did", "not", v] if clause.negated else [english_past(v)]
  if clause.negated:
    return ["does" if third_sg else "do", "not", v]
  return [english_third_singular(v) if third_sg else v]


def _english_clause(clause: Clause) -> list[str]:
  words = _english_arg(clause.subject, subject=True) + _english_verb(clause)
  if clause.obj is not None:
    words += _english_arg(clause.obj, subject=False)
  for prep, np_ in clause.pps:
    words += [prep] + _english_np(np_)
  return words


def render_target_words(sentence: Sentence) -> list[str]:
  """The English-like words of `sentence`, lower case, without final punctuation."""
  words = _english_clause(sentence.main)
  if sentence.sub is not None:
    words += [sentence.conjunction] + _english_clause(sentence.sub)
  return words


def render_target(sentence: Sentence) -> str:
  """The English-like sentence: first letter capitalised, final "."."""
  text = " ".join(render_target_words(sentence))
  return text[0].upper() + text[1:] + "."


def _source_np(np_: NounPhrase, lex: Lexicon, case: str) -> list[tuple[str, str]]:
  s, x = lex.stems, lex.suffixes
  noun = s["noun:" + np_.noun] + (x["noun_pl"] if np_.plural else "")
  if np_.det == "def":
    noun += x["def"]
  if case == "acc":
    noun += x["acc"]
  out: list[tuple[str, str]] = []
  if np_.det == "num":
    out.append((s[f"num:{np_.count}"], "NUM"))
  out.append((noun, "NOUN"))
  for adj in reversed(np_.adjectives):
    out.append((s["adj:" + adj] + (x["adj_pl"] if np_.plural else ""), "ADJ"))
  if np_.det in ("this", "that"):
    out.append((s["dem:" + np_.det], "DEM"))
  return out


def _source_arg(arg: Argument, lex: Lexicon, case: str) -> list[tuple[str, str]]:
  if isinstance(arg, Pronoun):
    if case == "nom" and arg.person in (1, 2):
      return []  # pro-drop: the verb's person suffix carries the subject.
    return [(lex.stems[_pronoun_key(arg)] + (lex.suffixes["acc"] if case == "acc" else ""),
             "PRON")]
  return _source_np(arg, lex, case)


def _source_clause(clause: Clause, lex: Lexicon) -> list[tuple[str, str]]:
  x = lex.suffixes
  out = _source_arg(clause.subject, lex, "nom")
  for prep, np_ in clause.pps:
    out += _source_np(np_, lex, "nom") + [(lex.stems["prep:" + prep], "POSTP")]
  if clause.obj is not None:
    out += _source_arg(clause.obj, lex, "acc")
  verb = lex.stems["verb:" + clause.verb]
  if clause.negated:
    verb += x["neg"]
  if clause.tense != "present":
    verb += x[clause.tense]
  verb += x[_agreement_key(clause.subject)]
  return out + [(verb, "VERB")]


def render_source_tagged(sentence: Sentence, lexicon: Lexicon) -> list[tuple[str, str]]:
  """Source words with their part-of-speech tags (NOUN ADJ NUM DEM PRON POSTP VERB CONJ),
  subordinate clause first; no final punctuation."""
  out: list[tuple[str, str]] = []
  if sentence.sub is not None:
    out += _source_clause(sentence.sub, lexicon)
    out.append((lexicon.stems["conj:" + sentence.conjunction], "CONJ"))
  return out + _source_clause(sentence.main, lexicon)


def render_source(sentence: Sentence, lexicon: Lexicon) -> str:
  """The invented-language sentence: lower case, words joined by spaces, final "."."""
  return " ".join(w for w, _ in render_source_tagged(sentence, lexicon)) + "."


# --------------------------------------------------------------------------------------------
# Sampling.
# --------------------------------------------------------------------------------------------
class _Draws:
  """Fast seeded draws: uniforms taken from large numpy blocks (one RNG call per 65k draws)."""

  def __init__(self, rng: np.random.Generator):
    self._rng = rng
    self._buf: list[float] = []
    self._i = 0

  def uniform(self) -> float:
    if self._i >= len(self._buf):
      self._buf = self._rng.random(1 << 16).tolist()
      self._i = 0
    self._i += 1
    return self._buf[self._i - 1]

  def index(self, n: int) -> int:
    return min(int(self.uniform() * n), n - 1)

  def choice(self, seq: Sequence):
    return seq[self.index(len(seq))]

  def weighted(self, weights: Sequence[float]) -> int:
    u, acc = self.uniform() * sum(weights), 0.0
    for i, w in enumerate(weights):
      acc += w
      if u < acc:
        return i
    return len(weights) - 1


def _rng(seed: int, stream: int) -> np.random.Generator:
  return np.random.default_rng(np.random.SeedSequence([seed, stream]))


def build_lexicon(seed: int) -> Lexicon:
  """The invented language for `seed`: ~300 distinct syllable stems and 13 distinct suffixes."""
  d = _Draws(_rng(seed, 0))

  def syllable(coda_p: float) -> str:
    s = d.choice(_CONSONANTS) + d.choice(_VOWELS)
    return s + d.choice(_CODAS) if d.uniform() < coda_p else s

  suffixes: dict[str, str] = {}
  used: set[str] = set()
  for name in _SUFFIX_NAMES:
    while True:
      cand = d.choice(_VOWELS) + d.choice(_CONSONANTS) if d.uniform() < 0.3 else syllable(0.0)
      if cand not in used:
        break
    used.add(cand)
    suffixes[name] = cand
  keys = ([f"noun:{n}" for n in _NOUN_FORMS] + [f"adj:{a}" for a in _ADJECTIVE_LIST]
          + [f"verb:{v}" for v in _VERB_FORMS] + [f"prep:{p}" for p in _PREPOSITIONS]
          + [f"conj:{c}" for c in _CONJUNCTIONS] + [f"num:{k}" for k in _NUMERALS]
          + ["dem:this", "dem:that"] + [_pronoun_key(Pronoun(*k)) for k in _PRONOUNS])
  stems: dict[str, str] = {}
  for key in keys:
    function_word = key.split(":")[0] in ("prep", "conj", "num", "dem", "pron")
    while True:
      n_syll = 1 + d.index(2) if function_word else 2 + d.index(2)
      cand = "".join(syllable(0.25) for _ in range(n_syll))
      if cand not in used:
        break
    used.add(cand)
    stems[key] = cand
  return Lexicon(stems=stems, suffixes=suffixes)


def _sample_np(d: _Draws) -> NounPhrase:
  det = _DETERMINERS[d.weighted((0.45, 0.3, 0.08, 0.07, 0.1))]
  count = 2 + d.index(4) if det == "num" else 0
  plural = True if det == "num" else d.uniform() < 0.35
  n_adj = d.weighted((0.45, 0.4, 0.15))
  adjs: list[str] = []
  while len(adjs) < n_adj:
    a = d.choice(_ADJECTIVE_LIST)
    if a not in adjs:
      adjs.append(a)
  return NounPhrase(det=det, noun=d.choice(_NOUNS_LIST), plural=plural,
                    adjectives=tuple(adjs), count=count)


def _sample_pronoun(d: _Draws) -> Pronoun:
  return Pronoun(*d.choice(_PRONOUN_KEYS))


def _sample_clause(d: _Draws) -> Clause:
  subject = _sample_pronoun(d) if d.uniform() < 0.35 else _sample_np(d)
  if d.uniform() < 0.7:
    verb = d.choice(_TRANSITIVE_LIST)
    obj = _sample_pronoun(d) if d.uniform() < 0.15 else _sample_np(d)
  else:
    verb, obj = d.choice(_INTRANSITIVE_LIST), None
  tense = _TENSES[d.weighted((0.4, 0.4, 0.2))]
  negated = d.uniform() < 0.15
  pps = tuple((d.choice(_PREPOSITIONS), _sample_np(d))
              for _ in range(d.weighted((0.55, 0.35, 0.1))))
  return Clause(subject=subject, verb=verb, obj=obj, tense=tense, negated=negated, pps=pps)


_NOUNS_LIST = tuple(_NOUN_FORMS)
_TRANSITIVE_LIST = tuple(_TRANSITIVE_FORMS)
_INTRANSITIVE_LIST = tuple(_INTRANSITIVE_FORMS)
_PRONOUN_KEYS = tuple(_PRONOUNS)


def sample_sentence(d: _Draws, max_words: int = MAX_TARGET_WORDS) -> Sentence:
  """One meaning whose English rendering has 4-`max_words` words (rejection sampling)."""
  while True:
    main = _sample_clause(d)
    s = (Sentence(main, d.choice(_CONJUNCTIONS), _sample_clause(d)) if d.uniform() < 0.3
         else Sentence(main))
    if MIN_TARGET_WORDS <= len(render_target_words(s)) <= max_words:
      return s


# --------------------------------------------------------------------------------------------
# The world.
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class DemoWorldConfig:
  """Generation settings; all sizes are numbers of sentence pairs (mono: sentences)."""
  seed: int = 0
  num_train: int = 20_000
  num_guide: int = 1_000
  num_dev: int = 500
  num_test: int = 500
  num_mono: int = 20_000
  noise_rate: float = 0.2
  vocab_size: int = 1_000
  max_target_words: int = MAX_TARGET_WORDS  # longest English sentence (words)

  def __post_init__(self):
    for name in ("seed", "num_train", "num_guide", "num_dev", "num_test", "num_mono",
                 "vocab_size", "max_target_words"):
      v = getattr(self, name)
      if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise ValueError(f"demo world {name} must be an int, got {v!r}")
    if self.seed < 0:
      raise ValueError(f"demo world seed must be >= 0, got {self.seed}")
    if self.num_train < 2:
      raise ValueError(f"demo world num_train must be >= 2, got {self.num_train}")
    for name in ("num_guide", "num_dev", "num_test", "num_mono"):
      if getattr(self, name) < 0:
        raise ValueError(f"demo world {name} must be >= 0, got {getattr(self, name)}")
    if isinstance(self.noise_rate, bool) or not isinstance(self.noise_rate, (int, float)):
      raise ValueError(f"demo world noise_rate must be a number, got {self.noise_rate!r}")
    if not 0.0 <= float(self.noise_rate) <= 1.0:
      raise ValueError(f"demo world noise_rate must be in [0, 1], got {self.noise_rate}")
    if not MIN_TARGET_WORDS + 4 <= self.max_target_words <= MAX_TARGET_WORDS:
      raise ValueError(f"demo world max_target_words must be in [{MIN_TARGET_WORDS + 4}, "
                       f"{MAX_TARGET_WORDS}], got {self.max_target_words}")
    if self.vocab_size < 100:
      raise ValueError(f"demo world vocab_size must be >= 100, got {self.vocab_size}")

  def as_dict(self) -> dict:
    d = dataclasses.asdict(self)
    d = {k: (int(v) if isinstance(v, (int, np.integer)) else float(v)) for k, v in d.items()}
    return d


@dataclasses.dataclass(frozen=True)
class Example:
  """One pair. `meaning` renders to `source` always and to `target` when `noise_bucket == 0`."""
  example_id: int
  meaning: Sentence
  source: str
  target: str
  noise_bucket: int


@dataclasses.dataclass(frozen=True)
class World:
  """An in-memory demo world: lexicon, the four splits and the monolingual source corpus."""
  config: DemoWorldConfig
  lexicon: Lexicon
  splits: dict[str, list[Example]]
  mono: list[str]


def truncate_target(target: str, fraction: float) -> str:
  """Keeps round(fraction * n) of the n words of `target` (at least 1, at most n - 1).

  The result is a strict word prefix of `target` (so it loses the final ".")."""
  words = target.split(" ")
  if len(words) < 2:
    raise ValueError(f"cannot truncate a one-word target {target!r}")
  k = min(len(words) - 1, max(1, int(round(fraction * len(words)))))
  return " ".join(words[:k])


def generate_world(config: Optional[DemoWorldConfig] = None, **overrides) -> World:
  """Generates the demo world in memory (deterministic in `config`).

  Eval splits are drawn first (dev, test, guide, then train), so changing `num_train` leaves
  dev / test / guide unchanged. No source or target string occurs twice across the four splits;
  mono sentences avoid every guide / dev / test source."""
  config = dataclasses.replace(config or DemoWorldConfig(), **overrides)
  lex = build_lexicon(config.seed)
  d = _Draws(_rng(config.seed, 1))
  seen_src: set[str] = set()
  seen_tgt: set[str] = set()
  clean: dict[str, list[tuple[Sentence, str, str]]] = {}
  for split, n in (("dev", config.num_dev), ("test", config.num_test),
                   ("guide", config.num_guide), ("train", config.num_train)):
    rows = []
    while len(rows) < n:
      s = sample_sentence(d, config.max_target_words)
      src, tgt = render_source(s, lex), render_target(s)
      if src in seen_src or tgt in seen_tgt:
        continue
      seen_src.add(src)
      seen_tgt.add(tgt)
      rows.append((s, src, tgt))
    clean[split] = rows
  splits = {split: [Example(i, s, src, tgt, NOISE_CLEAN) for i, (s, src, tgt) in enumerate(rows)]
            for split, rows in clean.items() if split != "train"}

  train = clean["train"]
  n = len(train)
  noise_rng = _rng(config.seed, 2)
  noisy = noise_rng.random(n) < config.noise_rate
  kinds = noise_rng.integers(1, 4, size=n)
  partner = (np.arange(n) + noise_rng.integers(1, n, size=n)) % n
  fractions = noise_rng.uniform(0.3, 0.7, size=n)
  examples = []
  for i, (s, src, tgt) in enumerate(train):
    kind = int(kinds[i]) if noisy[i] else NOISE_CLEAN
    if kind == NOISE_MISALIGNED:
      tgt = train[int(partner[i])][2]
    elif kind == NOISE_TRUNCATED:
      tgt = truncate_target(tgt, float(fractions[i]))
    elif kind == NOISE_COPY:
      tgt = src
    examples.append(Example(i, s, src, tgt, kind))
  splits["train"] = examples
  splits = {k: splits[k] for k in SPLITS}

  held_out = {e.source for k in ("guide", "dev", "test") for e in splits[k]}
  dm = _Draws(_rng(config.seed, 3))
  mono: list[str] = []
  while len(mono) < config.num_mono:
    src = render_source(sample_sentence(dm, config.max_target_words), lex)
    if src not in held_out:
      mono.append(src)
  return World(config=config, lexicon=lex, splits=splits, mono=mono)


def _tsv_bytes(examples: Iterable[Example]) -> bytes:
  lines = ["\t".join(TSV_COLUMNS)]
  lines += [f"{e.source}\t{e.target}\t{e.noise_bucket}\t{e.example_id}" for e in examples]
  return ("\n".join(lines) + "\n").encode("utf-8")


def read_tsv(path: PathLike) -> list[dict]:
  """Reads a demo TSV back: a list of {"source", "target", "noise_bucket", "example_id"}."""
  lines = pathlib.Path(path).read_text(encoding="utf-8").splitlines()
  if not lines or tuple(lines[0].split("\t")) != TSV_COLUMNS:
    raise ValueError(f"{path} is not a demo TSV (header must be {TSV_COLUMNS})")
  rows = []
  for line in lines[1:]:
    src, tgt, bucket, eid = line.split("\t")
    rows.append(dict(source=src, target=tgt, noise_bucket=int(bucket), example_id=int(eid)))
  return rows


def train_sentencepiece(sentences: Iterable[str], vocab_size: int, seed: int) -> bytes:
  """Trains a deterministic SentencePiece unigram model; returns the serialized model.

  T5 ids: pad 0, eos 1, unk 2, no bos. Single-threaded with a fixed random seed, so the bytes
  depend only on (sentences, vocab_size, seed)."""
  import sentencepiece as spm  # pylint: disable=g-import-not-at-top

  spm.set_random_generator_seed(seed + 1)  # 0 would mean "pick from the clock" in some builds.
  out = io.BytesIO()
  try:
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(list(sentences)), model_writer=out, model_type="unigram",
        vocab_size=vocab_size, pad_id=0, eos_id=1, unk_id=2, bos_id=-1, num_threads=1,
        character_coverage=1.0, input_sentence_size=0, shuffle_input_sentence=False,
        max_sentencepiece_length=8, minloglevel=2)
  except RuntimeError as e:
    raise ValueError(f"SentencePiece training failed for vocab_size={vocab_size}: {e}") from e
  return out.getvalue()


def default_data_dir() -> pathlib.Path:
  """`$GBT_T5X_DEMO_DIR` if set, else `~/.cache/gbt_t5x/demo`."""
  env = os.environ.get(ENV_DATA_DIR)
  return (pathlib.Path(env) if env else pathlib.Path("~/.cache/gbt_t5x/demo")).expanduser()


def config_from_env() -> dict:
  """Config overrides from `$GBT_T5X_DEMO_CONFIG` (a JSON object, e.g. '{"num_train": 2000}').

  Lets the demo tasks (and child processes such as the train CLI) use a small world."""
  raw = os.environ.get(ENV_CONFIG, "").strip()
  if not raw:
    return {}
  try:
    cfg = json.loads(raw)
  except json.JSONDecodeError as e:
    raise ValueError(f"${ENV_CONFIG} is not valid JSON: {e}") from e
  if not isinstance(cfg, dict):
    raise ValueError(f"${ENV_CONFIG} must be a JSON object, got {raw!r}")
  allowed = {f.name for f in dataclasses.fields(DemoWorldConfig)}
  unknown = set(cfg) - allowed
  if unknown:
    raise ValueError(f"${ENV_CONFIG} has unknown keys {sorted(unknown)}; "
                     f"allowed: {sorted(allowed)}")
  return cfg


def _manifest_config(config: DemoWorldConfig) -> dict:
  return {"version": DEMO_WORLD_VERSION, **config.as_dict()}


def _read_manifest(data_dir: pathlib.Path) -> Optional[dict]:
  try:
    return json.loads((data_dir / "manifest.json").read_text(encoding="utf-8"))
  except (OSError, ValueError):
    return None


def _is_current(data_dir: pathlib.Path, config: DemoWorldConfig) -> bool:
  manifest = _read_manifest(data_dir)
  if manifest is None or manifest.get("config") != _manifest_config(config):
    return False
  return all((data_dir / name).is_file() for name in manifest.get("files", {}))


def write_world(world: World, data_dir: PathLike) -> dict:
  """Writes `world` (TSVs, mono.txt, spm.model, manifest.json last) into `data_dir`.

  Files are written to a temporary folder inside `data_dir` and moved in with atomic renames;
  the old manifest is removed first, so a reader never sees a manifest over mixed files.
  Callers that may race should go through `ensure_demo_world` (which holds a file lock).
  Returns the manifest."""
  data_dir = pathlib.Path(data_dir)
  data_dir.mkdir(parents=True, exist_ok=True)
  cfg = world.config
  contents = {f"{s}.tsv": _tsv_bytes(world.splits[s]) for s in SPLITS}
  contents["mono.txt"] = ("\n".join(world.mono) + "\n").encode("utf-8") if world.mono else b""
  spm_text = [t for e in world.splits["train"] for t in (TASK_PREFIX + e.source, e.target)]
  spm_text += world.mono
  contents["spm.model"] = train_sentencepiece(spm_text, cfg.vocab_size, cfg.seed)
  manifest = {
      "config": _manifest_config(cfg),
      "counts": {**{s: len(world.splits[s]) for s in SPLITS}, "mono": len(world.mono),
                 "noisy_train": sum(e.noise_bucket != 0 for e in world.splits["train"])},
      "files": {k: hashlib.sha256(v).hexdigest() for k, v in sorted(contents.items())},
      "lexicon_size": len(world.lexicon.stems),
  }
  tmp = pathlib.Path(tempfile.mkdtemp(prefix=".tmp-", dir=data_dir))
  try:
    (data_dir / "manifest.json").unlink(missing_ok=True)
    for name, blob in contents.items():
      (tmp / name).write_bytes(blob)
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n",
                                       encoding="utf-8")
    for name in list(contents) + ["manifest.json"]:
      os.replace(tmp / name, data_dir / name)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  return manifest


def ensure_demo_world(data_dir: Optional[PathLike] = None, **config) -> pathlib.Path:
  """Makes sure `data_dir` (default `default_data_dir()`) holds the world for `config`.

  `config` are `DemoWorldConfig` fields (seed, num_train, num_guide, num_dev, num_test,
  num_mono, noise_rate, vocab_size). Generates only if `manifest.json` is missing or records a
  different config (or version); an exclusive `fcntl` lock on `data_dir/.lock` serialises
  concurrent generators. A world for another config in the same folder is replaced. Returns
  `data_dir` as a Path."""
  cfg = DemoWorldConfig(**config)
  data_dir = pathlib.Path(data_dir).expanduser() if data_dir else default_data_dir()
  if _is_current(data_dir, cfg):
    return data_dir
  data_dir.mkdir(parents=True, exist_ok=True)
  with open(data_dir / ".lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
      if not _is_current(data_dir, cfg):
        write_world(generate_world(cfg), data_dir)
    finally:
      fcntl.flock(lock, fcntl.LOCK_UN)
  return data_dir


def main(argv: Optional[Sequence[str]] = None) -> int:
  """CLI: `python -m gbt_t5x.data.demo_world --out_dir DIR [--seed ...]`."""
  defaults = DemoWorldConfig()
  p = argparse.ArgumentParser(description="Generate the gbt_t5x demo world (corpus + vocabulary).")
  p.add_argument("--out_dir", default=None,
                 help=f"default: ${ENV_DATA_DIR} or ~/.cache/gbt_t5x/demo")
  for f in dataclasses.fields(DemoWorldConfig):
    p.add_argument(f"--{f.name}", type=type(getattr(defaults, f.name)),
                   default=getattr(defaults, f.name))
  args = p.parse_args(argv)
  config = {f.name: getattr(args, f.name) for f in dataclasses.fields(DemoWorldConfig)}

  def body() -> None:
    start = time.perf_counter()
    out = ensure_demo_world(args.out_dir, **config)
    manifest = _read_manifest(out) or {}
    print(f"demo world in {out} ({time.perf_counter() - start:.1f}s): {manifest.get('counts')}")

  return errors.exit_code_of(body)


if __name__ == "__main__":
  sys.exit(main())
