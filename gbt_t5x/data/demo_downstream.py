"""Downstream classification data sets in the demo source language (the demo's GLUE stand-ins).

What it is for: `gbt_t5x_tasks.demo_glue` finetunes and scores a model pretrained on the demo
world (`gbt_t5x.data.demo_world`) on three small classification tasks whose labels the demo
grammar decides, formatted and scored like their GLUE analogues:

Each task comes in two difficulties (`DownstreamConfig.difficulty`). 'clear' (the default) is
learnable by a tiny pretrained T5 within a few hundred finetuning steps; 'hard' is the first
construction, whose labels need agreement morphology, one-slot comparisons or an XOR, and which
a tiny model leaves at chance (kept for larger models).

* `cola` (grammaticality, label 1 "acceptable" / 0 "unacceptable"): half the sentences are
  canonical renderings of a meaning; the other half are renderings corrupted by one rule the
  grammar forbids. 'clear' (sentences of at most `CLEAR_MAX_WORDS` words): in equal halves,
  `foreign_word` (one English function word of `INTRUDER_WORDS` inserted anywhere: a single-token
  cue a tiny model learns within a few hundred steps) and `verb_final` (the main clause's verb,
  the sentence's last word, moved to the start of the main clause: a structural cue it does not
  learn at that size, so the task is neither at chance nor at its ceiling). 'hard': in equal
  thirds, `agreement` (the
  verb's person/number suffix swapped for one that disagrees with an overt subject), `verb_final`
  (the verb moved to a random earlier position of its clause) and `adjective_order` (an
  adjective moved in front of its noun, where no other noun phrase can absorb it). Every
  corruption is kept only if `violations` reports its rule (`unknown_word` for a foreign word).
* `mrpc` (paraphrase, 1 "equivalent" / 0 "not equivalent"): one side is the canonical rendering
  of a meaning A, the other a *variant* rendering (see below) of A (label 1) or of another
  meaning B (label 0): 'clear' draws B afresh (an unrelated sentence; both of at most
  `MRPC_CLEAR_MAX_WORDS` words; `MRPC_CLEAR_TRAIN_FACTOR` times `num_train` training pairs),
  'hard' changes exactly one slot of `meaning_slots` of A. Which side
  comes first is random, so surface differences never give the label away.
* `sst2` (a sentiment-like attribute, 1 "positive" / 0 "negative"): every sentence holds exactly
  one evaluative adjective (`POSITIVE_ADJECTIVES` / `NEGATIVE_ADJECTIVES`, anywhere in the
  sentence) and its main clause is negated half of the time. 'clear': the label is the
  adjective's polarity (negation is a distractor); 'hard': positive iff the adjective is positive
  XOR the *main* clause is negated (the subordinate clause's negation is a distractor).

The grammar the checker (`violations`, `is_grammatical`) enforces is the demo source grammar
read from `demo_world`'s renderer, plus two optional variants that only `mrpc` uses: an explicit
1st/2nd-person subject pronoun (the language is pro-drop, not pro-required) and scrambling (the
case-marked object before the postpositional phrases). Per clause, verb-final:
`[subject] (PP | object)* VERB`; NP = `[NUM] NOUN ADJ* [DEM]`, adjectives agree in number with
the noun; the verb agrees with an overt nominative subject, and with a dropped subject only in the
1st/2nd person; transitive verbs take exactly one accusative object, intransitives none; a
sentence is `clause` or `sub-clause CONJ main-clause`. Words are analysed against every form the
morphology can build from the lexicon; when a word has several analyses, a sentence is
grammatical if some reading is, and `violations` lists the rules every reading breaks.

Splits `train`, `validation`, `test` (default 4000 / 500 / 500 examples per task), labels balanced
(counts differ by at most one), no meaning used twice within a task (so splits are disjoint),
eval splits drawn first so `num_train` does not change them. On disk (next to the demo world,
`ensure_demo_downstream`): `downstream_<task>_<split>.tsv` with a header (text columns, then
`label`, `info`, `idx`) and `downstream_manifest.json` (written last; generation is skipped when
it records the requested config).

Must not import: jax, flax, seqio, tensorflow, or anything of `gbt_t5x.models` / `train` /
`guided` (numpy only, like `demo_world`).
"""
from __future__ import annotations

import dataclasses
import fcntl
import functools
import hashlib
import itertools
import json
import os
import pathlib
import shutil
import tempfile
from typing import Mapping, Optional, Sequence, Union

from gbt_t5x.data import demo_world as dw
from gbt_t5x.data.demo_world import Clause, Lexicon, NounPhrase, Pronoun, Sentence

DOWNSTREAM_VERSION = 6
ENV_CONFIG = "GBT_T5X_DEMO_DOWNSTREAM_CONFIG"
TASKS = ("cola", "mrpc", "sst2")
SPLITS = ("train", "validation", "test")
TEXT_COLUMNS = {"cola": ("sentence",), "mrpc": ("first", "second"), "sst2": ("sentence",)}
# Label names by class id. The demo SentencePiece model has no "_" or digits, so MRPC's label is
# "not equivalent" (GLUE: "not_equivalent") to keep every target decodable.
LABEL_NAMES = {"cola": ("unacceptable", "acceptable"), "mrpc": ("not equivalent", "equivalent"),
               "sst2": ("negative", "positive")}
MANIFEST = "downstream_manifest.json"

AGREEMENT, VERB_FINAL, ADJECTIVE_ORDER = "agreement", "verb_final", "adjective_order"
CORRUPTIONS = (AGREEMENT, VERB_FINAL, ADJECTIVE_ORDER)
# The 'clear' tasks' corruptions, each visible locally: a verb moved to its clause's start, a
# word (not an adjective: those may repeat) written twice in a row.
FOREIGN_WORD = "foreign_word"
# English function words a 'clear' foreign_word corruption inserts: each is a single piece of the
# demo SentencePiece model that never occurs in source-language text.
INTRUDER_WORDS = ("the", "in", "that", "this", "with", "you", "will")
CLEAR_CORRUPTIONS = (FOREIGN_WORD, VERB_FINAL)
# The 'clear' tasks draw short sentences (at most this many English words per meaning); 'clear'
# MRPC shorter ones still, and twice `num_train` training pairs (so that the proportional mixture
# gives the comparison task half of each batch): a 1+1-layer T5 leaves it near 70 % either way, a
# 2+2-layer one learns it.
CLEAR_MAX_WORDS = 12
MRPC_CLEAR_MAX_WORDS = 7
MRPC_CLEAR_TRAIN_FACTOR = 2
CLEAR, HARD = "clear", "hard"
DIFFICULTIES = (CLEAR, HARD)
ADJECTIVE_AGREEMENT, NOUN_PHRASE, STRUCTURE, VALENCY, UNKNOWN_WORD = (
    "adjective_agreement", "noun_phrase", "structure", "valency", "unknown_word")
POSITIVE_ADJECTIVES = ("happy", "kind", "beautiful", "brave", "clever", "rich", "strong",
                       "famous", "bright")
NEGATIVE_ADJECTIVES = ("sad", "angry", "ugly", "lazy", "poor", "weak", "tired", "hungry", "dirty")

# Grammar facts of the demo world (its lexicon lists and agreement keys).
_AGREEMENTS = ("p1sg", "p2sg", "p3sg", "p1pl", "p2pl", "p3pl")
_TRANSITIVE = tuple(dw._TRANSITIVE_FORMS)  # pylint: disable=protected-access
_INTRANSITIVE = tuple(dw._INTRANSITIVE_FORMS)  # pylint: disable=protected-access
_NOUNS = tuple(dw._NOUN_FORMS)  # pylint: disable=protected-access
_ADJECTIVES = tuple(dw._ADJECTIVE_LIST)  # pylint: disable=protected-access
_PRONOUNS = tuple(Pronoun(*k) for k in dw._PRONOUNS)  # pylint: disable=protected-access
_NEUTRAL_ADJECTIVES = tuple(a for a in _ADJECTIVES
                            if a not in POSITIVE_ADJECTIVES + NEGATIVE_ADJECTIVES)
_POS = {"noun": "NOUN", "adj": "ADJ", "verb": "VERB", "prep": "POSTP", "conj": "CONJ",
        "num": "NUM", "dem": "DEM", "pron": "PRON"}
_MAX_READINGS = 256

PathLike = Union[str, os.PathLike]


def agreement_key(arg: Union[NounPhrase, Pronoun]) -> str:
  """The verb agreement suffix name ("p1sg" ... "p3pl") an argument demands as subject."""
  if isinstance(arg, Pronoun):
    return f"p{arg.person}{'pl' if arg.plural else 'sg'}"
  return "p3pl" if arg.plural else "p3sg"


def _pronoun_stem_key(p: Pronoun) -> str:
  return f"pron:{p.person}{'pl' if p.plural else 'sg'}{p.gender}"


# --------------------------------------------------------------------------------------------
# Morphological analysis and the grammaticality checker.
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Morph:
  """One analysis of a source word: part of speech, lexicon key ("verb:see") and the suffix
  names in order (e.g. ("neg", "past", "p3sg"))."""
  pos: str
  lemma: str
  suffixes: tuple[str, ...] = ()


def _suffix_sequences(pos: str) -> list[tuple[str, ...]]:
  """Every suffix sequence the morphology allows after a stem of `pos`."""
  opt = lambda name: ((), (name,))  # noqa: E731
  if pos == "NOUN":
    return [a + b + c for a in opt("noun_pl") for b in opt("def") for c in opt("acc")]
  if pos == "ADJ":
    return list(opt("adj_pl"))
  if pos == "PRON":
    return list(opt("acc"))
  if pos == "VERB":
    return [n + t + (agr,) for n in opt("neg") for t in ((), ("past",), ("future",))
            for agr in _AGREEMENTS]
  return [()]


@functools.lru_cache(maxsize=8)
def _form_table(seed: int) -> dict[str, tuple[Morph, ...]]:
  lex = dw.build_lexicon(seed)
  table: dict[str, list[Morph]] = {}
  for key, stem in lex.stems.items():
    pos = _POS[key.split(":")[0]]
    for seq in _suffix_sequences(pos):
      form = stem + "".join(lex.suffixes[s] for s in seq)
      table.setdefault(form, []).append(Morph(pos, key, seq))
  return {k: tuple(v) for k, v in table.items()}


def analyse(word: str, seed: int) -> tuple[Morph, ...]:
  """All analyses of `word` in the language of world `seed` (empty: not a word of it)."""
  return _form_table(seed).get(word, ())


def _noun_phrase(ms: Sequence[Morph], i: int, out: set[str]) -> tuple[int, Optional[tuple]]:
  """Parses `[NUM] NOUN ADJ* [DEM] [POSTP]` from ms[i]; returns (next index, constituent)."""
  n = len(ms)
  num = ms[i].pos == "NUM"
  if num:
    i += 1
  if i < n and ms[i].pos == "ADJ":  # an adjective no noun precedes
    out.add(ADJECTIVE_ORDER)
    while i < n and ms[i].pos == "ADJ":
      i += 1
  if i >= n or ms[i].pos != "NOUN":
    out.add(STRUCTURE)
    return i, None
  noun = ms[i]
  i += 1
  plural = "noun_pl" in noun.suffixes
  while i < n and ms[i].pos == "ADJ":
    if ("adj_pl" in ms[i].suffixes) != plural:
      out.add(ADJECTIVE_AGREEMENT)
    i += 1
  dem = i < n and ms[i].pos == "DEM"
  if dem:
    i += 1
  if (num and not plural) or ("def" in noun.suffixes and (num or dem)):
    out.add(NOUN_PHRASE)
  acc = "acc" in noun.suffixes
  if i < n and ms[i].pos == "POSTP":
    if acc:
      out.add(STRUCTURE)  # postpositions govern the nominative
    return i + 1, ("pp",)
  return i, ("arg", "acc" if acc else "nom", "p3pl" if plural else "p3sg")


def _clause_violations(ms: Sequence[Morph]) -> set[str]:
  out: set[str] = set()
  verbs = [k for k, m in enumerate(ms) if m.pos == "VERB"]
  if len(verbs) != 1 or verbs[0] != len(ms) - 1:
    out.add(VERB_FINAL)
  if not verbs:
    return out
  verb = ms[verbs[-1]]
  rest = [m for k, m in enumerate(ms) if k != verbs[-1]]
  consts: list[tuple] = []
  i = 0
  while i < len(rest):
    m = rest[i]
    if m.pos == "PRON":
      key = m.lemma.split(":")[1]
      consts.append(("arg", "acc" if "acc" in m.suffixes else "nom", f"p{key[0]}{key[1:3]}"))
      i += 1
    elif m.pos in ("NUM", "NOUN", "ADJ"):
      i, const = _noun_phrase(rest, i, out)
      if const is not None:
        consts.append(const)
    else:  # VERB (a second one), DEM, POSTP or CONJ where no phrase allows it
      out.add(STRUCTURE)
      i += 1
  noms = [k for k, c in enumerate(consts) if c[0] == "arg" and c[1] == "nom"]
  accs = [k for k, c in enumerate(consts) if c[0] == "arg" and c[1] == "acc"]
  if len(noms) > 1 or (noms and noms[0] != 0) or len(accs) > 1:
    out.add(STRUCTURE)
  agr = verb.suffixes[-1]
  if noms:
    if agr != consts[noms[0]][2]:
      out.add(AGREEMENT)
  elif agr in ("p3sg", "p3pl"):  # only 1st / 2nd person subjects may be dropped
    out.add(AGREEMENT)
  if (verb.lemma.split(":")[1] in _TRANSITIVE) != bool(accs):
    out.add(VALENCY)
  return out


def _reading_violations(ms: Sequence[Morph]) -> set[str]:
  conj = [k for k, m in enumerate(ms) if m.pos == "CONJ"]
  if not conj:
    return _clause_violations(ms)
  if len(conj) > 1 or conj[0] in (0, len(ms) - 1):
    return {STRUCTURE}
  return _clause_violations(ms[:conj[0]]) | _clause_violations(ms[conj[0] + 1:])


def _readings(text: str, seed: int) -> Optional[list[list[Morph]]]:
  if not text.endswith(".") or not text[:-1]:
    raise ValueError(f"a demo source sentence ends with '.', got {text!r}")
  options = [analyse(w, seed) for w in text[:-1].split(" ")]
  if not all(options):
    return None
  return [list(r) for r in itertools.islice(itertools.product(*options), _MAX_READINGS)]


def violations(text: str, seed: int) -> frozenset[str]:
  """The grammar rules (module constants) that `text` breaks under every reading.

  `text`: one demo source sentence (words joined by single spaces, final "."), `seed`: the
  world seed that fixes the lexicon. Empty for grammatical sentences (and, rarely, for
  ungrammatical ones whose readings break different rules: use `is_grammatical`)."""
  readings = _readings(text, seed)
  if readings is None:
    return frozenset({UNKNOWN_WORD})
  common = None
  for r in readings:
    v = _reading_violations(r)
    common = v if common is None else common & v
  return frozenset(common)


def is_grammatical(text: str, seed: int) -> bool:
  """Whether some reading of `text` breaks no rule of the demo grammar (with its variants)."""
  readings = _readings(text, seed)
  return readings is not None and any(not _reading_violations(r) for r in readings)


def sentiment_label(text: str, seed: int, difficulty: str = "clear") -> int:
  """1 ("positive") or 0 from the surface of an sst2 sentence: positive iff its one evaluative
  adjective is positive ('clear'), XOR the main (last) clause's verb carries the negation
  suffix ('hard')."""
  words = text[:-1].split(" ")
  polar, main_negated = [], False
  for w in words:
    ms = analyse(w, seed)
    if not ms:
      raise ValueError(f"sentiment_label: {w!r} is not a word of the demo language")
    m = ms[0]
    if m.pos == "ADJ" and m.lemma.split(":")[1] in POSITIVE_ADJECTIVES + NEGATIVE_ADJECTIVES:
      polar.append(m.lemma.split(":")[1] in POSITIVE_ADJECTIVES)
    if m.pos == "VERB":
      main_negated = "neg" in m.suffixes  # the last verb is the main clause's
  if len(polar) != 1:
    raise ValueError(f"sentiment_label needs exactly one evaluative adjective, found {len(polar)}")
  if difficulty not in DIFFICULTIES:
    raise ValueError(f"difficulty must be one of {DIFFICULTIES}, got {difficulty!r}")
  return int(polar[0] != (main_negated and difficulty == HARD))


# --------------------------------------------------------------------------------------------
# Meanings: slots, variants.
# --------------------------------------------------------------------------------------------
def _arg_slots(prefix: str, arg) -> dict[str, object]:
  if isinstance(arg, NounPhrase):
    return {f"{prefix}.{f.name}": getattr(arg, f.name) for f in dataclasses.fields(arg)}
  return {prefix: arg}  # a pronoun (or no object) is one slot


def meaning_slots(sentence: Sentence) -> dict[str, object]:
  """The flat slots of a meaning: "main.verb", "main.subject.noun", "sub.pps.0.np.plural",
  "main.subject" (a pronoun as a whole) ... -> value. Two meanings differ in exactly one slot
  when one leaf value (or the presence of a slot) differs."""
  out: dict[str, object] = {"conjunction": sentence.conjunction}
  for name, clause in (("main", sentence.main), ("sub", sentence.sub)):
    if clause is None:
      continue
    out.update(_arg_slots(f"{name}.subject", clause.subject))
    out.update(_arg_slots(f"{name}.obj", clause.obj))
    out.update({f"{name}.verb": clause.verb, f"{name}.tense": clause.tense,
                f"{name}.negated": clause.negated})
    for k, (prep, np_) in enumerate(clause.pps):
      out[f"{name}.pps.{k}.prep"] = prep
      out.update(_arg_slots(f"{name}.pps.{k}.np", np_))
  return out


def _np_words(arg, case: str) -> int:
  """Number of source words of an argument (0 for a dropped 1st/2nd-person subject)."""
  if isinstance(arg, Pronoun):
    return 0 if case == "nom" and arg.person in (1, 2) else 1
  return 1 + len(arg.adjectives) + (arg.det == "num") + (arg.det in ("this", "that"))


def _clause_variant(clause: Clause, words: list[str], lex: Lexicon, explicit: bool,
                    scramble: bool) -> list[str]:
  n_subj = _np_words(clause.subject, "nom")
  n_pps = sum(_np_words(np_, "nom") + 1 for _, np_ in clause.pps)
  subj, pps = words[:n_subj], words[n_subj:n_subj + n_pps]
  obj, verb = words[n_subj + n_pps:-1], words[-1:]
  if explicit and isinstance(clause.subject, Pronoun) and clause.subject.person in (1, 2):
    subj = [lex.stems[_pronoun_stem_key(clause.subject)]]
  if scramble and obj and pps:
    pps, obj = obj, pps
  return subj + pps + obj + verb


def variant_options(sentence: Sentence) -> list[tuple[str, str]]:
  """The (clause, variant) choices that change the rendering: ("main"|"sub", "explicit" |
  "scramble"); explicit needs a 1st/2nd-person subject, scramble an object and a PP."""
  out = []
  for name, clause in (("sub", sentence.sub), ("main", sentence.main)):
    if clause is None:
      continue
    if isinstance(clause.subject, Pronoun) and clause.subject.person in (1, 2):
      out.append((name, "explicit"))
    if clause.obj is not None and clause.pps:
      out.append((name, "scramble"))
  return out


def render_variant(sentence: Sentence, lexicon: Lexicon,
                   choices: Sequence[tuple[str, str]]) -> str:
  """The source rendering of `sentence` with the grammar's optional variants in `choices`
  (see `variant_options`) applied; with no choices it equals `demo_world.render_source`."""
  tagged = [w for w, _ in dw.render_source_tagged(sentence, lexicon)]
  chosen = set(choices)
  parts = []
  if sentence.sub is not None:
    n_sub = len(tagged) - len(dw.render_source_tagged(Sentence(sentence.main), lexicon)) - 1
    parts.append(_clause_variant(sentence.sub, tagged[:n_sub], lexicon,
                                 ("sub", "explicit") in chosen, ("sub", "scramble") in chosen))
    parts.append([tagged[n_sub]])
    tagged = tagged[n_sub + 1:]
  parts.append(_clause_variant(sentence.main, tagged, lexicon, ("main", "explicit") in chosen,
                               ("main", "scramble") in chosen))
  return " ".join(w for p in parts for w in p) + "."


# --------------------------------------------------------------------------------------------
# Generators.
# --------------------------------------------------------------------------------------------
def _fits(s: Sentence) -> bool:
  return dw.MIN_TARGET_WORDS <= len(dw.render_target_words(s)) <= dw.MAX_TARGET_WORDS


def _clause_ranges(tags: Sequence[str]) -> list[tuple[str, int, int]]:
  if "CONJ" in tags:
    c = tags.index("CONJ")
    return [("sub", 0, c), ("main", c + 1, len(tags))]
  return [("main", 0, len(tags))]


def _corrupt(s: Sentence, lex: Lexicon, kind: str, d, verb_first: bool = False
             ) -> Optional[str]:
  """A rendering of `s` broken by rule `kind`, or None when `s` offers no place for it.

  `verb_final` moves a clause's verb to a random earlier position of its clause, or with
  `verb_first` the main clause's verb to the main clause's first position; `foreign_word`
  inserts one of `INTRUDER_WORDS` at a random position.
  """
  tagged = dw.render_source_tagged(s, lex)
  words, tags = [w for w, _ in tagged], [t for _, t in tagged]
  ranges = _clause_ranges(tags)
  if kind == AGREEMENT:
    clauses = {"main": s.main, "sub": s.sub}
    cands = [(name, end) for name, _, end in ranges
             if not (isinstance(clauses[name].subject, Pronoun) and clauses[name].subject.person
                     in (1, 2))]
    if not cands:
      return None
    name, end = d.choice(cands)
    right = agreement_key(clauses[name].subject)
    wrong = d.choice([a for a in _AGREEMENTS if a != right])
    verb = words[end - 1]
    words[end - 1] = verb[:len(verb) - len(lex.suffixes[right])] + lex.suffixes[wrong]
  elif kind == VERB_FINAL:
    cands = [(start, end) for name, start, end in ranges
             if end - start >= 2 and (name == "main" or not verb_first)]
    if not cands:
      return None
    start, end = d.choice(cands)
    verb = words.pop(end - 1)
    words.insert(start if verb_first else start + d.index(end - 1 - start), verb)
  elif kind == FOREIGN_WORD:
    words.insert(d.index(len(words) + 1), d.choice(INTRUDER_WORDS))
  elif kind == ADJECTIVE_ORDER:
    cands = [k for k in range(len(tags) - 1) if tags[k] == "NOUN" and tags[k + 1] == "ADJ"]
    if not cands:
      return None
    k = d.choice(cands)
    n_adj = 1
    while k + 1 + n_adj < len(tags) and tags[k + 1 + n_adj] == "ADJ":
      n_adj += 1
    adj = words.pop(k + 1 + d.index(n_adj))
    words.insert(k, adj)
  else:
    raise ValueError(f"unknown corruption {kind!r}; expected one of "
                     f"{CORRUPTIONS + (FOREIGN_WORD,)}")
  return " ".join(words) + "."


def _fresh(d, seen: set, max_words: int = dw.MAX_TARGET_WORDS) -> Sentence:
  while True:
    s = dw.sample_sentence(d, max_words)
    if s not in seen:
      return s


def _cola_example(label: int, k: int, d, lex: Lexicon, seed: int, seen: set,
                  clear: bool) -> tuple:
  kinds = CLEAR_CORRUPTIONS if clear else CORRUPTIONS
  max_words = CLEAR_MAX_WORDS if clear else dw.MAX_TARGET_WORDS
  while True:
    s = _fresh(d, seen, max_words)
    if label == 1:
      seen.add(s)
      return (dw.render_source(s, lex),), "intact", (s,)
    kind = kinds[k % len(kinds)]
    text = _corrupt(s, lex, kind, d, verb_first=clear)
    if text is None:
      continue
    broken = violations(text, seed)
    if kind == FOREIGN_WORD and UNKNOWN_WORD in broken or kind in broken:
      seen.add(s)
      return (text,), kind, (s,)


def _perturb(s: Sentence, d) -> tuple[Sentence, str]:
  """`s` with one slot changed (verb, tense, negation, noun, number, adjective or pronoun)."""
  clauses = [("main", s.main)] + ([("sub", s.sub)] if s.sub is not None else [])
  while True:
    name, c = d.choice(clauses)
    what = d.choice(("verb", "tense", "negated", "arg"))
    if what == "verb":
      pool = _TRANSITIVE if c.verb in _TRANSITIVE else _INTRANSITIVE
      new, slot = dataclasses.replace(c, verb=d.choice([v for v in pool if v != c.verb])), "verb"
    elif what == "tense":
      new = dataclasses.replace(c, tense=d.choice([t for t in dw._TENSES if t != c.tense]))  # pylint: disable=protected-access
      slot = "tense"
    elif what == "negated":
      new, slot = dataclasses.replace(c, negated=not c.negated), "negated"
    else:
      args = [("subject", c.subject)] + ([("obj", c.obj)] if c.obj is not None else [])
      args += [(f"pps.{k}.np", np_) for k, (_, np_) in enumerate(c.pps)]
      where, arg = d.choice(args)
      if isinstance(arg, Pronoun):
        value, field = d.choice([p for p in _PRONOUNS if p != arg]), None
      else:
        field = d.choice(("noun", "plural", "adjectives"))
        if field == "noun":
          value = d.choice([n for n in _NOUNS if n != arg.noun])
        elif field == "plural":
          if arg.det == "num":
            continue
          value = not arg.plural
        else:
          if not arg.adjectives:
            continue
          adjs = list(arg.adjectives)
          adjs[d.index(len(adjs))] = d.choice([a for a in _ADJECTIVES if a not in adjs])
          value = tuple(adjs)
      value = value if field is None else dataclasses.replace(arg, **{field: value})
      slot = where if field is None else f"{where}.{field}"
      if where == "subject":
        new = dataclasses.replace(c, subject=value)
      elif where == "obj":
        new = dataclasses.replace(c, obj=value)
      else:
        k = int(where.split(".")[1])
        pps = list(c.pps)
        pps[k] = (pps[k][0], value)
        new = dataclasses.replace(c, pps=tuple(pps))
    out = dataclasses.replace(s, **{name: new})
    if _fits(out):
      return out, f"{name}.{slot}"


def _mrpc_example(label: int, k: int, d, lex: Lexicon, seed: int, seen: set,
                  clear: bool) -> tuple:
  del k, seed
  max_words = MRPC_CLEAR_MAX_WORDS if clear else dw.MAX_TARGET_WORDS
  while True:
    s = _fresh(d, seen, max_words)
    if label == 1:
      other, info = s, "same"
    elif clear:
      other, info = _fresh(d, seen | {s}, max_words), "unrelated"
    else:
      other, info = _perturb(s, d)
    options = variant_options(other)
    if not options or other in seen:
      continue
    chosen = [o for o in options if d.uniform() < 0.5] or [d.choice(options)]
    pair = (dw.render_source(s, lex), render_variant(other, lex, chosen))
    seen.update((s, other))
    info += ":" + ",".join(f"{a}.{b}" for a, b in chosen)
    if d.uniform() < 0.5:
      return pair, info, (s, other)
    return pair[::-1], info, (other, s)


def _with_adjectives(np_: NounPhrase, adjs: Sequence[str]) -> NounPhrase:
  return dataclasses.replace(np_, adjectives=tuple(adjs))


def _neutralise(np_: NounPhrase, d) -> NounPhrase:
  adjs = list(np_.adjectives)
  for k, a in enumerate(adjs):
    if a not in _NEUTRAL_ADJECTIVES:
      adjs[k] = d.choice([n for n in _NEUTRAL_ADJECTIVES if n not in adjs])
  return _with_adjectives(np_, adjs)


def _map_nps(c: Clause, fn) -> Clause:
  subject = fn(c.subject) if isinstance(c.subject, NounPhrase) else c.subject
  obj = fn(c.obj) if isinstance(c.obj, NounPhrase) else c.obj
  return dataclasses.replace(c, subject=subject, obj=obj,
                             pps=tuple((p, fn(np_)) for p, np_ in c.pps))


def _sst2_example(label: int, k: int, d, lex: Lexicon, seed: int, seen: set,
                  clear: bool) -> tuple:
  del k, seed
  negated = d.uniform() < 0.5
  flips = negated and not clear  # 'clear': the main clause's negation is a distractor too
  pool = POSITIVE_ADJECTIVES if bool(label) != flips else NEGATIVE_ADJECTIVES
  while True:
    s = _fresh(d, seen)
    neutral = lambda np_: _neutralise(np_, d)  # noqa: E731
    s = Sentence(dataclasses.replace(_map_nps(s.main, neutral), negated=negated), s.conjunction,
                 _map_nps(s.sub, neutral) if s.sub is not None else None)
    nps: list[NounPhrase] = []
    for c in (s.main, s.sub):
      if c is not None:
        _map_nps(c, lambda np_: nps.append(np_) or np_)
    if not nps:
      continue
    target = nps[d.index(len(nps))]
    adjs = list(target.adjectives)
    polar = d.choice(pool)
    if len(adjs) < 2:
      adjs.insert(d.index(len(adjs) + 1), polar)
    else:
      adjs[d.index(len(adjs))] = polar
    done = [False]

    def put(np_: NounPhrase, target=target, adjs=adjs, done=done) -> NounPhrase:
      if np_ is target and not done[0]:
        done[0] = True
        return _with_adjectives(np_, adjs)
      return np_

    s = Sentence(_map_nps(s.main, put), s.conjunction,
                 _map_nps(s.sub, put) if s.sub is not None else None)
    if s in seen or not _fits(s):
      continue
    seen.add(s)
    return (dw.render_source(s, lex),), f"adjective={polar};negated={int(negated)}", (s,)


_GENERATORS = {"cola": _cola_example, "mrpc": _mrpc_example, "sst2": _sst2_example}


@dataclasses.dataclass(frozen=True)
class DownstreamConfig:
  """World seed (fixes the lexicon), examples per split of every task, and the tasks' difficulty.

  `difficulty` 'clear' (the default: labels a tiny pretrained model can learn) or 'hard' (the
  first construction, at chance for tiny models): see the module docstring.
  """
  seed: int = 0
  num_train: int = 4_000
  num_validation: int = 500
  num_test: int = 500
  difficulty: str = CLEAR

  def __post_init__(self):
    if self.difficulty not in DIFFICULTIES:
      raise ValueError(f"demo downstream difficulty must be one of {DIFFICULTIES}, got "
                       f"{self.difficulty!r}")
    for f in dataclasses.fields(self):
      if f.name == "difficulty":
        continue
      v = getattr(self, f.name)
      if isinstance(v, bool) or not isinstance(v, int) or v < (2 if f.name != "seed" else 0):
        raise ValueError(f"demo downstream {f.name} must be an int >= "
                         f"{2 if f.name != 'seed' else 0}, got {v!r}")

  def sizes(self, task: Optional[str] = None) -> dict[str, int]:
    """Examples per split (of `task`: 'clear' MRPC has `MRPC_CLEAR_TRAIN_FACTOR` x num_train)."""
    factor = MRPC_CLEAR_TRAIN_FACTOR if task == "mrpc" and self.difficulty == CLEAR else 1
    return {"train": factor * self.num_train, "validation": self.num_validation,
            "test": self.num_test}


@dataclasses.dataclass(frozen=True)
class Row:
  """One example: text columns (`TEXT_COLUMNS[task]`), class id, free-text info, idx, and
  the meaning behind each text column (in memory only; a corrupted CoLA sentence keeps the
  meaning it was rendered from)."""
  texts: tuple[str, ...]
  label: int
  info: str
  idx: int
  meanings: tuple[Sentence, ...] = ()


# The settings `ensure_demo_downstream` and $GBT_T5X_DEMO_DOWNSTREAM_CONFIG take: every field of
# `DownstreamConfig` but the seed, which comes from the world.
DOWNSTREAM_KEYS = tuple(f.name for f in dataclasses.fields(DownstreamConfig) if f.name != "seed")


def generate_task(task: str, config: Optional[DownstreamConfig] = None
                  ) -> dict[str, list[Row]]:
  """The three splits of `task` (deterministic in `config`); test, validation, then train are
  drawn, each meaning at most once, labels alternating before a seeded shuffle."""
  if task not in _GENERATORS:
    raise ValueError(f"unknown demo downstream task {task!r}; expected one of {TASKS}")
  config = config or DownstreamConfig()
  lex = dw.build_lexicon(config.seed)
  rng = dw._rng(config.seed, 100 + TASKS.index(task))  # pylint: disable=protected-access
  d = dw._Draws(rng)  # pylint: disable=protected-access
  seen: set = set()
  out: dict[str, list[Row]] = {}
  for split in ("test", "validation", "train"):
    n = config.sizes(task)[split]
    made = [_GENERATORS[task](i % 2, i // 2, d, lex, config.seed, seen,
                              clear=config.difficulty == CLEAR) for i in range(n)]
    order = rng.permutation(n)
    out[split] = [Row(made[j][0], int(j % 2), made[j][1], i, made[j][2])
                  for i, j in enumerate(order)]
  return {s: out[s] for s in SPLITS}


def tsv_name(task: str, split: str) -> str:
  """"downstream_<task>_<split>.tsv"."""
  return f"downstream_{task}_{split}.tsv"


def tsv_header(task: str) -> tuple[str, ...]:
  """The header columns of a task's TSV: its text columns, then label, info, idx."""
  return TEXT_COLUMNS[task] + ("label", "info", "idx")


def _tsv_bytes(task: str, rows: Sequence[Row]) -> bytes:
  lines = ["\t".join(tsv_header(task))]
  lines += ["\t".join(r.texts + (str(r.label), r.info, str(r.idx))) for r in rows]
  return ("\n".join(lines) + "\n").encode("utf-8")


def read_tsv(path: PathLike) -> list[dict]:
  """A downstream TSV as dicts (text columns as str, `label` and `idx` as int, `info`)."""
  lines = pathlib.Path(path).read_text(encoding="utf-8").splitlines()
  header = tuple(lines[0].split("\t")) if lines else ()
  if header[-3:] != ("label", "info", "idx"):
    raise ValueError(f"{path} is not a demo downstream TSV (header {header})")
  rows = []
  for line in lines[1:]:
    row = dict(zip(header, line.split("\t")))
    row["label"], row["idx"] = int(row["label"]), int(row["idx"])
    rows.append(row)
  return rows


def config_from_env() -> dict:
  """Overrides from `$GBT_T5X_DEMO_DOWNSTREAM_CONFIG` (JSON: num_train, num_validation,
  num_test, difficulty); the seed comes from the world (`$GBT_T5X_DEMO_CONFIG`)."""
  raw = os.environ.get(ENV_CONFIG, "").strip()
  if not raw:
    return {}
  try:
    cfg = json.loads(raw)
  except json.JSONDecodeError as e:
    raise ValueError(f"${ENV_CONFIG} is not valid JSON: {e}") from e
  allowed = set(DOWNSTREAM_KEYS)
  if not isinstance(cfg, dict) or set(cfg) - allowed:
    raise ValueError(f"${ENV_CONFIG} must be a JSON object with keys among {sorted(allowed)}, "
                     f"got {raw!r}")
  return cfg


def _manifest_config(config: DownstreamConfig) -> dict:
  return {"version": DOWNSTREAM_VERSION, **dataclasses.asdict(config)}


def _is_current(data_dir: pathlib.Path, config: DownstreamConfig) -> bool:
  try:
    manifest = json.loads((data_dir / MANIFEST).read_text(encoding="utf-8"))
  except (OSError, ValueError):
    return False
  return (manifest.get("config") == _manifest_config(config)
          and all((data_dir / f).is_file() for f in manifest.get("files", {})))


def write_downstream(config: DownstreamConfig, data_dir: PathLike) -> dict:
  """Generates every task for `config` and writes its TSVs and the manifest (last, after atomic
  renames) into `data_dir`; returns the manifest."""
  data_dir = pathlib.Path(data_dir)
  data_dir.mkdir(parents=True, exist_ok=True)
  contents, counts = {}, {}
  for task in TASKS:
    splits = generate_task(task, config)
    for split, rows in splits.items():
      contents[tsv_name(task, split)] = _tsv_bytes(task, rows)
      counts[f"{task}/{split}"] = len(rows)
  manifest = {"config": _manifest_config(config), "counts": counts,
              "files": {k: hashlib.sha256(v).hexdigest() for k, v in sorted(contents.items())}}
  tmp = pathlib.Path(tempfile.mkdtemp(prefix=".tmp-downstream-", dir=data_dir))
  try:
    (data_dir / MANIFEST).unlink(missing_ok=True)
    for name, blob in contents.items():
      (tmp / name).write_bytes(blob)
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n",
                                encoding="utf-8")
    for name in list(contents) + [MANIFEST]:
      os.replace(tmp / name, data_dir / name)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  return manifest


def ensure_demo_downstream(data_dir: Optional[PathLike] = None,
                           downstream: Optional[Mapping[str, Union[int, str]]] = None,
                           **world_config) -> pathlib.Path:
  """Makes sure `data_dir` (default `demo_world.default_data_dir()`) holds the demo world for
  `world_config` (`demo_world.ensure_demo_world` keywords) and the downstream TSVs for its seed
  and the sizes and difficulty in `downstream` (`num_train`, `num_validation`, `num_test`,
  `difficulty`; defaults of `DownstreamConfig`). Generates only when `downstream_manifest.json`
  records another config (an exclusive lock on `data_dir/.downstream.lock` serialises
  generators). Returns `data_dir`."""
  sizes = dict(downstream or {})
  unknown = set(sizes) - set(DOWNSTREAM_KEYS)
  if unknown:
    raise ValueError(f"unknown demo downstream settings {sorted(unknown)}; expected some of "
                     f"{list(DOWNSTREAM_KEYS)}")
  cfg = DownstreamConfig(seed=int(world_config.get("seed", dw.DemoWorldConfig.seed)), **sizes)
  data_dir = dw.ensure_demo_world(data_dir, **world_config)
  if _is_current(data_dir, cfg):
    return data_dir
  with open(data_dir / ".downstream.lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
      if not _is_current(data_dir, cfg):
        write_downstream(cfg, data_dir)
    finally:
      fcntl.flock(lock, fcntl.LOCK_UN)
  return data_dir
