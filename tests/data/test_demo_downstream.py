"""Tests of the demo downstream generator (`gbt_t5x.data.demo_downstream`) and its checker."""
import collections
import dataclasses
import json

import pytest

from gbt_t5x.data import demo_downstream as dd
from gbt_t5x.data import demo_world as dw
from gbt_t5x.data.demo_world import Clause, NounPhrase, Pronoun, Sentence

SEED = 3
# The tests below the checker's cover the 'hard' construction (SMALL); those named `clear` the
# default 'clear' one (CLEAR).
SMALL = dd.DownstreamConfig(seed=SEED, num_train=90, num_validation=30, num_test=31,
                            difficulty=dd.HARD)
CLEAR = dataclasses.replace(SMALL, difficulty=dd.CLEAR)
TINY_WORLD = dict(seed=SEED, num_train=200, num_guide=20, num_dev=20, num_test=20, num_mono=50,
                  vocab_size=300)


@pytest.fixture(scope="module")
def generated():
  return {task: dd.generate_task(task, SMALL) for task in dd.TASKS}


@pytest.fixture(scope="module")
def generated_clear():
  return {task: dd.generate_task(task, CLEAR) for task in dd.TASKS}


@pytest.fixture(scope="module")
def lex():
  return dw.build_lexicon(SEED)


# ----------------------------------------------------------------------------- the checker


def _dog_sees_big_cat():
  """The dog sees a big cat."""
  return Sentence(Clause(NounPhrase("def", "dog", False), "see",
                         NounPhrase("indef", "cat", False, ("big",)), "present"))


def test_checker_accepts_a_hand_rendered_sentence_and_flags_each_rule(lex):
  st, sx = lex.stems, lex.suffixes
  words = [st["noun:dog"] + sx["def"], st["noun:cat"] + sx["acc"], st["adj:big"],
           st["verb:see"] + sx["p3sg"]]
  text = " ".join(words) + "."
  assert dw.render_source(_dog_sees_big_cat(), lex) == text  # the grammar as written by hand
  assert dd.is_grammatical(text, SEED) and dd.violations(text, SEED) == frozenset()

  wrong_agr = words[:3] + [st["verb:see"] + sx["p1sg"]]
  verb_first = [words[3]] + words[:3]
  # "(I) big cat-ACC see": nothing before the adjective can take it.
  adj_first = [st["adj:big"], st["noun:cat"] + sx["acc"], st["verb:see"] + sx["p1sg"]]
  # Moved behind the subject noun, the adjective is read as the subject's: still grammatical,
  # which is why the generator keeps a corruption only if the checker reports its rule.
  absorbed = [words[0], st["adj:big"], st["noun:cat"] + sx["acc"], words[3]]
  assert dd.is_grammatical(" ".join(absorbed) + ".", SEED)
  no_object = [words[0], st["verb:see"] + sx["p3sg"]]
  plural_adj = words[:2] + [st["adj:big"] + sx["adj_pl"], words[3]]
  for bad, rule in ((wrong_agr, dd.AGREEMENT), (verb_first, dd.VERB_FINAL),
                    (adj_first, dd.ADJECTIVE_ORDER), (no_object, dd.VALENCY),
                    (plural_adj, dd.ADJECTIVE_AGREEMENT), (words[:3] + ["qqq"], dd.UNKNOWN_WORD)):
    t = " ".join(bad) + "."
    assert rule in dd.violations(t, SEED), (rule, dd.violations(t, SEED))
    assert not dd.is_grammatical(t, SEED)


def test_checker_pro_drop_and_variants(lex):
  st, sx = lex.stems, lex.suffixes
  sleep = st["verb:sleep"]
  assert dd.is_grammatical(sleep + sx["p1sg"] + ".", SEED)  # "(I) sleep": pro-drop
  assert dd.violations(sleep + sx["p3sg"] + ".", SEED) == {dd.AGREEMENT}  # 3rd person needs one
  explicit = st["pron:1sg"] + " " + sleep + sx["p1sg"] + "."
  assert dd.is_grammatical(explicit, SEED)  # the explicit-pronoun variant
  assert dd.AGREEMENT in dd.violations(st["pron:1sg"] + " " + sleep + sx["p2sg"] + ".", SEED)


def test_render_variant(lex):
  s = Sentence(Clause(Pronoun(2, True), "see", NounPhrase("def", "cat", True), "past",
                      pps=(("in", NounPhrase("indef", "house", False)),)))
  st, sx = lex.stems, lex.suffixes
  cat = st["noun:cat"] + sx["noun_pl"] + sx["def"] + sx["acc"]
  pp = [st["noun:house"], st["prep:in"]]
  verb = st["verb:see"] + sx["past"] + sx["p2pl"]
  expected = " ".join(pp + [cat, verb]) + "."
  assert dd.render_variant(s, lex, []) == dw.render_source(s, lex) == expected
  assert set(dd.variant_options(s)) == {("main", "explicit"), ("main", "scramble")}
  both = dd.render_variant(s, lex, [("main", "explicit"), ("main", "scramble")])
  assert both == " ".join([st["pron:2pl"], cat] + pp + [verb]) + "."
  assert dd.is_grammatical(both, SEED)


def test_meaning_slots_count_one_change():
  a = _dog_sees_big_cat()
  b = Sentence(Clause(NounPhrase("def", "dog", False), "see",
                      NounPhrase("indef", "cat", True, ("big",)), "present"))
  slots_a, slots_b = dd.meaning_slots(a), dd.meaning_slots(b)
  assert [k for k in slots_a if slots_a[k] != slots_b[k]] == ["main.obj.plural"]


# ----------------------------------------------------------------------------- the data sets


def test_deterministic_for_a_seed():
  again = dd.generate_task("cola", SMALL)
  assert again == dd.generate_task("cola", SMALL)
  other = dd.generate_task("cola", dataclasses.replace(SMALL, seed=SEED + 1))
  assert [r.texts for r in other["test"]] != [r.texts for r in again["test"]]
  bigger = dd.generate_task("cola", dataclasses.replace(SMALL, num_train=120))
  assert bigger["test"] == again["test"] and bigger["validation"] == again["validation"]


@pytest.mark.parametrize("difficulty", dd.DIFFICULTIES)
@pytest.mark.parametrize("task", dd.TASKS)
def test_sizes_balance_and_disjoint_splits(generated, generated_clear, task, difficulty):
  assert dd.DownstreamConfig().difficulty == dd.CLEAR  # the default
  splits = (generated_clear if difficulty == dd.CLEAR else generated)[task]
  seen_texts, seen_meanings = set(), set()
  sizes = (CLEAR if difficulty == dd.CLEAR else SMALL).sizes(task)
  if task == "mrpc" and difficulty == dd.CLEAR:
    assert sizes["train"] == dd.MRPC_CLEAR_TRAIN_FACTOR * SMALL.num_train
  for split, n in sizes.items():
    rows = splits[split]
    assert len(rows) == n and [r.idx for r in rows] == list(range(n))
    counts = collections.Counter(r.label for r in rows)
    assert set(counts) == {0, 1} and abs(counts[0] - counts[1]) <= 1
    texts = {r.texts for r in rows}
    meanings = {m for r in rows for m in r.meanings}
    assert len(texts) == n and not texts & seen_texts and not meanings & seen_meanings
    seen_texts |= texts
    seen_meanings |= meanings
    assert all(len(r.texts) == len(dd.TEXT_COLUMNS[task]) for r in rows)


def test_cola_corruptions_break_their_rule_and_intact_sentences_pass(generated, lex):
  kinds = collections.Counter()
  for rows in generated["cola"].values():
    for r in rows:
      (text,) = r.texts
      if r.label == 1:
        assert r.info == "intact" and dd.is_grammatical(text, SEED)
        assert text == dw.render_source(r.meanings[0], lex)
      else:
        kinds[r.info] += 1
        assert r.info in dd.violations(text, SEED) and not dd.is_grammatical(text, SEED)
        # Same words as the meaning's rendering, except for the swapped agreement suffix.
        original = dw.render_source(r.meanings[0], lex)[:-1].split(" ")
        if r.info != dd.AGREEMENT:
          assert sorted(text[:-1].split(" ")) == sorted(original)
  assert set(kinds) == set(dd.CORRUPTIONS)
  assert max(kinds.values()) - min(kinds.values()) <= 3  # thirds within each split


def test_mrpc_pairs(generated, lex):
  for rows in generated["mrpc"].values():
    for r in rows:
      a, b = r.meanings
      assert all(dd.is_grammatical(t, SEED) for t in r.texts)
      assert r.texts[0] != r.texts[1]
      canonical = [t == dw.render_source(m, lex) for t, m in zip(r.texts, r.meanings)]
      assert sorted(canonical) == [False, True]  # one canonical side, one variant side
      if r.label == 1:
        assert a == b
      else:
        sa, sb = dd.meaning_slots(a), dd.meaning_slots(b)
        changed = [k for k in set(sa) | set(sb) if sa.get(k) != sb.get(k)]
        assert len(changed) == 1
        assert r.info.split(":")[0].startswith(changed[0])


def test_sst2_label_follows_adjective_and_main_negation(generated, lex):
  for rows in generated["sst2"].values():
    for r in rows:
      (text,) = r.texts
      s = r.meanings[0]
      polar = [a for c in (s.main, s.sub) if c is not None
               for np_ in [c.subject, c.obj] + [n for _, n in c.pps]
               if isinstance(np_, NounPhrase) for a in np_.adjectives
               if a in dd.POSITIVE_ADJECTIVES + dd.NEGATIVE_ADJECTIVES]
      assert len(polar) == 1
      assert r.label == int((polar[0] in dd.POSITIVE_ADJECTIVES) != s.main.negated)
      assert dd.sentiment_label(text, SEED, dd.HARD) == r.label  # read off the surface alone
      assert dd.is_grammatical(text, SEED) and text == dw.render_source(s, lex)
  negated = collections.Counter((r.label, r.meanings[0].main.negated)
                                for rows in generated["sst2"].values() for r in rows)
  assert len(negated) == 4  # both labels occur with and without negation


def _main_clause_start(words):
  conj = [i for i, w in enumerate(words) if any(m.pos == "CONJ" for m in dd.analyse(w, SEED))]
  return conj[-1] + 1 if conj else 0


def test_clear_cola_fronts_the_main_verb_or_inserts_a_foreign_word(generated_clear, lex):
  kinds = collections.Counter()
  for rows in generated_clear["cola"].values():
    for r in rows:
      (text,) = r.texts
      original = dw.render_source(r.meanings[0], lex)
      assert len(dw.render_target_words(r.meanings[0])) <= dd.CLEAR_MAX_WORDS
      if r.label == 1:
        assert r.info == "intact" and text == original and dd.is_grammatical(text, SEED)
        assert not set(text[:-1].split(" ")) & set(dd.INTRUDER_WORDS)
        continue
      kinds[r.info] += 1
      assert not dd.is_grammatical(text, SEED)
      words, before = text[:-1].split(" "), original[:-1].split(" ")
      if r.info == dd.VERB_FINAL:
        assert dd.VERB_FINAL in dd.violations(text, SEED)
        assert sorted(words) == sorted(before)  # only the order changed
        # The main clause's verb (the sentence's last word) now opens the main clause.
        assert words[_main_clause_start(words)] == before[-1] and words[-1] != before[-1]
      else:
        assert r.info == dd.FOREIGN_WORD and dd.UNKNOWN_WORD in dd.violations(text, SEED)
        inserted = [i for i in range(len(words)) if words[:i] + words[i + 1:] == before]
        assert inserted and words[inserted[0]] in dd.INTRUDER_WORDS
  assert max(kinds.values()) - min(kinds.values()) <= 3  # halves within each split


def test_clear_mrpc_negatives_pair_unrelated_meanings(generated_clear, lex):
  changed_slots = []
  for rows in generated_clear["mrpc"].values():
    for r in rows:
      a, b = r.meanings
      assert all(dd.is_grammatical(t, SEED) for t in r.texts)
      canonical = [t == dw.render_source(m, lex) for t, m in zip(r.texts, r.meanings)]
      assert sorted(canonical) == [False, True]
      assert all(len(dw.render_target_words(m)) <= dd.MRPC_CLEAR_MAX_WORDS for m in r.meanings)
      if r.label == 1:
        assert a == b and r.info.startswith("same:")
      else:
        assert a != b and r.info.startswith("unrelated:")
        sa, sb = dd.meaning_slots(a), dd.meaning_slots(b)
        changed_slots.append(sum(sa.get(k) != sb.get(k) for k in set(sa) | set(sb)))
  assert sum(changed_slots) / len(changed_slots) >= 4  # drawn afresh, not one slot apart


def test_clear_sst2_label_is_the_adjective_polarity(generated_clear, lex):
  for rows in generated_clear["sst2"].values():
    for r in rows:
      (text,) = r.texts
      polar = [w for w in text[:-1].split(" ") for m in dd.analyse(w, SEED)[:1]
               if m.pos == "ADJ" and m.lemma.split(":")[1] in
               dd.POSITIVE_ADJECTIVES + dd.NEGATIVE_ADJECTIVES]
      assert len(polar) == 1
      adjective = dd.analyse(polar[0], SEED)[0].lemma.split(":")[1]
      assert r.label == int(adjective in dd.POSITIVE_ADJECTIVES)
      assert dd.sentiment_label(text, SEED) == r.label
      assert dd.is_grammatical(text, SEED)
  negated = collections.Counter((r.label, r.meanings[0].main.negated)
                                for rows in generated_clear["sst2"].values() for r in rows)
  assert len(negated) == 4  # negation occurs with both labels: a distractor


# ----------------------------------------------------------------------------- on disk


def test_ensure_writes_once_and_reads_back(tmp_path):
  sizes = {"num_train": 40, "num_validation": 10, "num_test": 10}
  out = dd.ensure_demo_downstream(tmp_path, sizes, **TINY_WORLD)
  manifest = json.loads((out / dd.MANIFEST).read_text())
  assert manifest["counts"]["cola/train"] == 40
  stamps = {p.name: p.stat().st_mtime_ns for p in out.glob("downstream_*")}
  assert len(stamps) == 10  # 9 TSVs + manifest
  dd.ensure_demo_downstream(tmp_path, sizes, **TINY_WORLD)
  assert stamps == {p.name: p.stat().st_mtime_ns for p in out.glob("downstream_*")}
  expected = dd.generate_task("mrpc", dd.DownstreamConfig(seed=SEED, **sizes))
  rows = dd.read_tsv(out / dd.tsv_name("mrpc", "validation"))
  assert [(r["first"], r["second"], r["label"], r["idx"]) for r in rows] == [
      r.texts + (r.label, r.idx) for r in expected["validation"]]


def test_bad_input_says_what_is_wrong(monkeypatch, tmp_path):
  with pytest.raises(ValueError, match="num_train"):
    dd.DownstreamConfig(num_train=1)
  with pytest.raises(ValueError, match="unknown demo downstream task"):
    dd.generate_task("qqp", SMALL)
  with pytest.raises(ValueError, match="num_tain"):
    dd.ensure_demo_downstream(tmp_path, {"num_tain": 3}, **TINY_WORLD)
  assert not list(tmp_path.iterdir())  # checked before anything is generated
  with pytest.raises(ValueError, match="difficulty must be one of"):
    dd.DownstreamConfig(difficulty="easy")
  with pytest.raises(ValueError, match="difficulty must be one of"):
    dd.sentiment_label(
        dd.generate_task("sst2", CLEAR)["test"][0].texts[0], SEED, "easy")
  monkeypatch.setenv(dd.ENV_CONFIG, '{"num_tain": 3}')
  with pytest.raises(ValueError, match="keys among"):
    dd.config_from_env()
  monkeypatch.setenv(dd.ENV_CONFIG, '{"difficulty": "hard"}')
  assert dd.config_from_env() == {"difficulty": "hard"}
  with pytest.raises(ValueError, match="ends with"):
    dd.violations("no final stop", SEED)
