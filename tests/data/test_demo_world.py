"""Tests of the demo-world generator: determinism, noise, grammar, splits, vocabulary, caching."""
import json
import math
import pathlib
import threading

import pytest
import sentencepiece as spm

from gbt_t5x.data import demo_world as dw

SMALL = dict(seed=3, num_train=800, num_guide=80, num_dev=50, num_test=50, num_mono=200,
             vocab_size=400)
FILES = ("train.tsv", "guide.tsv", "dev.tsv", "test.tsv", "mono.txt", "spm.model",
         "manifest.json")


@pytest.fixture(scope="module")
def world_dir(tmp_path_factory) -> pathlib.Path:
  return dw.ensure_demo_world(tmp_path_factory.mktemp("world"), **SMALL)


@pytest.fixture(scope="module")
def world() -> dw.World:
  return dw.generate_world(dw.DemoWorldConfig(**SMALL))


def _bytes(d: pathlib.Path) -> dict:
  return {f: (d / f).read_bytes() for f in FILES}


# ---- determinism ---------------------------------------------------------------------------
def test_same_seed_same_bytes_other_seed_differs(world_dir, tmp_path):
  again = dw.ensure_demo_world(tmp_path / "again", **SMALL)
  assert _bytes(again) == _bytes(world_dir)
  other = dw.ensure_demo_world(tmp_path / "other", **{**SMALL, "seed": 4})
  for f in FILES:
    assert (other / f).read_bytes() != (world_dir / f).read_bytes(), f


def test_files_match_the_in_memory_world(world_dir, world):
  for split in dw.SPLITS:
    rows = dw.read_tsv(world_dir / f"{split}.tsv")
    assert [(r["source"], r["target"], r["noise_bucket"], r["example_id"]) for r in rows] == [
        (e.source, e.target, e.noise_bucket, e.example_id) for e in world.splits[split]]
    assert [r["example_id"] for r in rows] == list(range(len(rows)))
  assert (world_dir / "mono.txt").read_text().splitlines() == world.mono
  manifest = json.loads((world_dir / "manifest.json").read_text())
  assert manifest["config"] == {"version": dw.DEMO_WORLD_VERSION, **SMALL, "noise_rate": 0.2,
                                "max_target_words": dw.MAX_TARGET_WORDS}
  assert manifest["counts"]["train"] == SMALL["num_train"]


def test_eval_splits_do_not_depend_on_train_size(world):
  bigger = dw.generate_world(dw.DemoWorldConfig(**{**SMALL, "num_train": 900, "num_mono": 0}))
  for split in ("guide", "dev", "test"):
    assert [e.target for e in bigger.splits[split]] == [e.target for e in world.splits[split]]


# ---- noise -----------------------------------------------------------------------------------
@pytest.mark.parametrize("rate", [0.2, 0.5])
def test_realised_noise_rate_within_binomial_tolerance(rate):
  n = 3000
  w = dw.generate_world(dw.DemoWorldConfig(seed=11, num_train=n, num_guide=0, num_dev=0,
                                           num_test=0, num_mono=0, noise_rate=rate))
  buckets = [e.noise_bucket for e in w.splits["train"]]
  noisy = sum(b != 0 for b in buckets)
  assert abs(noisy - rate * n) < 4 * math.sqrt(n * rate * (1 - rate))
  for kind in (1, 2, 3):  # each kind is a uniform third of the noisy pairs
    k = buckets.count(kind)
    assert abs(k - noisy / 3) < 4 * math.sqrt(noisy * (1 / 3) * (2 / 3)), (kind, k, noisy)


def test_zero_noise_rate_gives_clean_train():
  w = dw.generate_world(dw.DemoWorldConfig(seed=1, num_train=300, num_guide=0, num_dev=0,
                                           num_test=0, num_mono=0, noise_rate=0.0))
  assert all(e.noise_bucket == 0 and e.target == dw.render_target(e.meaning)
             for e in w.splits["train"])


def test_each_noise_kind_holds_its_definition(world):
  train = world.splits["train"]
  clean_targets = {dw.render_target(e.meaning) for e in train}
  seen = set()
  for e in train:
    assert e.source == dw.render_source(e.meaning, world.lexicon)
    own = dw.render_target(e.meaning)
    seen.add(e.noise_bucket)
    if e.noise_bucket == dw.NOISE_CLEAN:
      assert e.target == own
    elif e.noise_bucket == dw.NOISE_MISALIGNED:
      assert e.target != own and e.target in clean_targets
    elif e.noise_bucket == dw.NOISE_TRUNCATED:
      words, full = e.target.split(" "), own.split(" ")
      assert len(words) < len(full) and full[:len(words)] == words
      assert 0.3 - 0.5 / len(full) <= len(words) / len(full) <= 0.7 + 0.5 / len(full)
    elif e.noise_bucket == dw.NOISE_COPY:
      assert e.target == e.source
    else:
      raise AssertionError(f"unknown bucket {e.noise_bucket}")
  assert seen == {0, 1, 2, 3}


def test_truncate_target_is_a_strict_word_prefix():
  t = "The big dog saw a cat."
  assert dw.truncate_target(t, 0.5) == "The big dog"
  assert dw.truncate_target(t, 0.01) == "The"
  assert dw.truncate_target(t, 0.99) == "The big dog saw a"
  with pytest.raises(ValueError, match="one-word"):
    dw.truncate_target("Hello.", 0.5)


# ---- splits ----------------------------------------------------------------------------------
def test_guide_dev_test_are_clean_and_disjoint_from_train(world):
  train_src = {e.source for e in world.splits["train"]}
  train_tgt = {dw.render_target(e.meaning) for e in world.splits["train"]}
  held = []
  for split in ("guide", "dev", "test"):
    exs = world.splits[split]
    assert len(exs) == SMALL[f"num_{split}"]
    for e in exs:
      assert e.noise_bucket == 0 and e.target == dw.render_target(e.meaning)
      assert e.source not in train_src and e.target not in train_tgt
    held += [e.source for e in exs]
  assert len(set(held)) == len(held)
  assert not set(held) & set(world.mono)


def test_target_lengths_in_range(world):
  lengths = [len(e.target.split()) for k in ("guide", "dev", "test") for e in world.splits[k]]
  assert min(lengths) >= dw.MIN_TARGET_WORDS and max(lengths) <= dw.MAX_TARGET_WORDS
  assert max(lengths) - min(lengths) >= 10  # lengths really vary


def test_max_target_words_bounds_every_split():
  short = dw.generate_world(dw.DemoWorldConfig(seed=3, num_train=300, num_guide=50, num_dev=50,
                                               num_test=50, num_mono=50, max_target_words=10))
  clean = [e for k in dw.SPLITS for e in short.splits[k] if e.noise_bucket == 0]
  lengths = [len(e.target.split()) for e in clean]
  assert max(lengths) <= 10 and min(lengths) >= dw.MIN_TARGET_WORDS


# ---- grammar ---------------------------------------------------------------------------------
def test_english_morphology():
  assert [dw.english_plural(n) for n in ("dog", "box", "city", "child", "knife", "key")] == [
      "dogs", "boxes", "cities", "children", "knives", "keys"]
  assert [dw.english_third_singular(v) for v in ("see", "watch", "carry", "play")] == [
      "sees", "watches", "carries", "plays"]
  assert [dw.english_past(v) for v in ("like", "carry", "see", "walk", "stop")] == [
      "liked", "carried", "saw", "walked", "stopped"]


def test_hand_built_sentence_renders_both_sides(world):
  lex = world.lexicon
  s, x = lex.stems, lex.suffixes
  dogs = dw.NounPhrase("def", "dog", True, ("big", "red"))
  apple = dw.NounPhrase("indef", "apple", False, ("old",))
  house = dw.NounPhrase("this", "house", False)
  main = dw.Clause(dogs, "chase", dw.Pronoun(3, False, "f"), "past", pps=(("in", house),))
  sub = dw.Clause(dw.Pronoun(1, False), "eat", apple, "present", negated=True)
  sent = dw.Sentence(main, "because", sub)
  assert dw.render_target(sent) == (
      "The big red dogs chased her in this house because I do not eat an old apple.")
  expected_src = [
      # subordinate clause first, pro-dropped 1sg subject, object noun + acc, adjective after it
      s["noun:apple"] + x["acc"], s["adj:old"],
      s["verb:eat"] + x["neg"] + x["p1sg"], s["conj:because"],
      # main clause: subject NP (noun-pl-def, adjectives mirrored with plural agreement),
      # postpositional phrase, object pronoun + acc, verb-past-3pl last
      s["noun:dog"] + x["noun_pl"] + x["def"], s["adj:red"] + x["adj_pl"],
      s["adj:big"] + x["adj_pl"], s["noun:house"], s["dem:this"], s["prep:in"],
      s["pron:3sgf"] + x["acc"], s["verb:chase"] + x["past"] + x["p3pl"]]
  assert dw.render_source(sent, lex) == " ".join(expected_src) + "."


def test_source_is_verb_final_with_adjectives_after_nouns(world):
  for e in world.splits["dev"] + world.splits["train"][:200]:
    tagged = dw.render_source_tagged(e.meaning, world.lexicon)
    tags = [t for _, t in tagged]
    assert tags[-1] == "VERB"
    assert tagged[-1][0].startswith(world.lexicon.stems["verb:" + e.meaning.main.verb])
    for i, t in enumerate(tags):
      if t == "ADJ":
        assert tags[i - 1] in ("NOUN", "ADJ")
    # English side: SVO with adjectives before the subject noun, the verb group right after.
    words = dw.render_target_words(e.meaning)
    subj, main = e.meaning.main.subject, e.meaning.main
    if isinstance(subj, dw.NounPhrase):
      noun = dw.english_plural(subj.noun) if subj.plural else subj.noun
      k = 1 + len(subj.adjectives)
      assert words[1:k + 1] == list(subj.adjectives) + [noun]
      verb_at = k + 1
    else:
      verb_at = 1
    verb_forms = {main.verb, dw.english_past(main.verb), dw.english_third_singular(main.verb),
                  "will", "do", "does", "did"}
    assert words[verb_at] in verb_forms


def test_lexicon_is_seeded_and_injective():
  a, b, c = dw.build_lexicon(0), dw.build_lexicon(0), dw.build_lexicon(1)
  assert a == b and a != c
  stems = list(a.stems.values()) + list(a.suffixes.values())
  assert len(set(stems)) == len(stems) >= 250


# ---- vocabulary ------------------------------------------------------------------------------
def test_sentencepiece_ids_and_round_trip(world_dir, world):
  sp = spm.SentencePieceProcessor(model_file=str(world_dir / "spm.model"))
  assert (sp.pad_id(), sp.eos_id(), sp.unk_id(), sp.bos_id()) == (0, 1, 2, -1)
  assert sp.get_piece_size() == SMALL["vocab_size"]
  for e in world.splits["dev"]:  # unseen sentences
    for text in (dw.TASK_PREFIX + e.source, e.target):
      ids = sp.encode(text)
      assert 2 not in ids and sp.decode(ids) == text


# ---- caching, locking, config ----------------------------------------------------------------
def test_ensure_is_idempotent_and_regenerates_on_config_change(world_dir, tmp_path, monkeypatch):
  d = tmp_path / "w"
  cfg = {**SMALL, "num_train": 100, "num_mono": 0, "vocab_size": 200}
  calls = []
  real = dw.write_world
  monkeypatch.setattr(dw, "write_world", lambda w, p: calls.append(1) or real(w, p))
  dw.ensure_demo_world(d, **cfg)
  dw.ensure_demo_world(d, **cfg)
  assert len(calls) == 1
  dw.ensure_demo_world(d, **{**cfg, "noise_rate": 0.5})
  assert len(calls) == 2
  assert json.loads((d / "manifest.json").read_text())["config"]["noise_rate"] == 0.5
  assert not [p for p in d.iterdir() if p.name.startswith(".tmp-")]


def test_concurrent_ensure_generates_once(tmp_path, monkeypatch):
  cfg = {**SMALL, "num_train": 100, "num_mono": 0, "vocab_size": 200}
  calls = []
  real = dw.write_world
  monkeypatch.setattr(dw, "write_world", lambda w, p: calls.append(1) or real(w, p))
  errors = []

  def run():
    try:
      dw.ensure_demo_world(tmp_path / "race", **cfg)
    except Exception as e:  # pylint: disable=broad-except
      errors.append(e)

  threads = [threading.Thread(target=run) for _ in range(3)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  assert not errors and len(calls) == 1
  assert dw._is_current(tmp_path / "race", dw.DemoWorldConfig(**cfg))


@pytest.mark.parametrize("bad, match", [
    (dict(noise_rate=1.5), "noise_rate"), (dict(num_train=1), "num_train"),
    (dict(seed=-1), "seed"), (dict(vocab_size=10), "vocab_size"), (dict(num_dev=2.5), "num_dev"),
    (dict(noise_rate="0.2"), "noise_rate"), (dict(max_target_words=7), "max_target_words"),
    (dict(max_target_words=26), "max_target_words")])
def test_bad_config_is_a_clear_error(bad, match):
  with pytest.raises(ValueError, match=match):
    dw.DemoWorldConfig(**bad)


def test_too_large_vocab_is_a_clear_error(tmp_path):
  with pytest.raises(ValueError, match="vocab_size"):
    dw.ensure_demo_world(tmp_path, **{**SMALL, "num_train": 20, "num_mono": 0,
                                      "vocab_size": 5000})


def test_default_data_dir_and_env_config(monkeypatch, tmp_path):
  monkeypatch.setenv(dw.ENV_DATA_DIR, str(tmp_path / "x"))
  assert dw.default_data_dir() == tmp_path / "x"
  monkeypatch.delenv(dw.ENV_DATA_DIR)
  monkeypatch.setenv("HOME", str(tmp_path))
  assert dw.default_data_dir() == tmp_path / ".cache" / "gbt_t5x" / "demo"
  monkeypatch.setenv(dw.ENV_CONFIG, '{"num_train": 50}')
  assert dw.config_from_env() == {"num_train": 50}
  monkeypatch.setenv(dw.ENV_CONFIG, '{"num_trian": 50}')
  with pytest.raises(ValueError, match="unknown keys"):
    dw.config_from_env()


def test_cli_writes_a_world(tmp_path, capsys):
  rc = dw.main(["--out_dir", str(tmp_path), "--seed", "5", "--num_train", "60",
                "--noise_rate", "0.5", "--num_mono", "0", "--num_guide", "10", "--num_dev", "10",
                "--num_test", "10", "--vocab_size", "150"])
  assert rc == 0
  manifest = json.loads((tmp_path / "manifest.json").read_text())
  assert manifest["config"]["seed"] == 5 and manifest["config"]["noise_rate"] == 0.5
  assert len(dw.read_tsv(tmp_path / "train.tsv")) == 60
  assert dw.main(["--out_dir", str(tmp_path), "--noise_rate", "2"]) == 2
  assert "noise_rate" in capsys.readouterr().err
