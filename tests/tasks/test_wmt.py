"""Tests of the WMT translation tasks (`gbt_t5x_tasks.wmt`) and `gbt_t5x.data.translation`.

TFDS is mocked: `tfds.testing.mock_data` with its random generator (strings built from the real
builders' features) for the family build tests, and with a small `as_dataset_fn` that yields
split-dependent text for the guide-split tests. Tasks are registered with `seqio.ByteVocabulary`
under test-only name suffixes (T5's vocabulary lives on GCS).
"""
import math

import numpy as np
import pytest
import sacrebleu
import seqio
import tensorflow as tf
import tensorflow_datasets as tfds

from gbt_t5x.data import guide_split
from gbt_t5x.data import translation
from gbt_t5x_tasks import wmt

LENGTHS = {"inputs": 48, "targets": 24}
BYTES = seqio.ByteVocabulary()


def _config(family: str, pair: str) -> wmt.WmtConfig:
  (config,) = [c for c in wmt.WMT_CONFIGS if c.family == family and "-".join(c.pair) == pair]
  return config


@pytest.fixture
def registered():
  """Registers tasks for the test and removes them afterwards: `registered(**kwargs) -> names`."""
  names = []

  def register(**kwargs):
    new = wmt.register_wmt_tasks(BYTES, **kwargs)
    names.extend(new)
    return new

  yield register
  for name in names:
    seqio.TaskRegistry.remove(name)


# ----------------------------------------------------------------------------------------------
# translation.py
# ----------------------------------------------------------------------------------------------
def test_prefixes_name_languages_in_english():
  assert translation.translate_prefix("lt", "en") == "translate Lithuanian to English: "
  assert translation.translate_prefix("en", "de") == "translate English to German: "
  assert translation.translate_prefix("fr", "de") == "translate French to German: "
  assert translation.language_name("zh-cn") == "Chinese"  # T5: first two letters
  assert translation.language_name("kk") == "Kazakh"
  with pytest.raises(ValueError, match="unknown language code 'xx'"):
    translation.language_name("xx")
  with pytest.raises(ValueError, match="both"):
    translation.translate_prefix("en", "en")


def test_translate_maps_a_pair_and_names_missing_fields():
  ds = tf.data.Dataset.from_tensors({"lt": "Labas rytas.", "en": "Good morning."})
  (ex,) = list(translation.translate(ds, "lt", "en").as_numpy_iterator())
  assert ex == {"inputs": b"translate Lithuanian to English: Labas rytas.",
                "targets": b"Good morning."}
  (ex,) = list(translation.translate(ds, "en", "lt").as_numpy_iterator())
  assert ex == {"inputs": b"translate English to Lithuanian: Good morning.",
                "targets": b"Labas rytas."}
  with pytest.raises(ValueError, match=r"no field\(s\) \['de'\]"):
    translation.translate(ds, "de", "en")


def test_pair_key_joins_source_and_target_with_a_newline():
  key = translation.pair_key_fn("lt", "en")({"lt": tf.constant("a b"), "en": tf.constant("c")})
  assert key.numpy() == b"a b\nc"


# ----------------------------------------------------------------------------------------------
# The registration table
# ----------------------------------------------------------------------------------------------
def test_table_matches_the_tfds_configs_and_splits(tmp_path):
  for config in wmt.WMT_CONFIGS:
    builder = tfds.builder(f"{config.family}/{'-'.join(config.pair)}", data_dir=str(tmp_path))
    assert builder.builder_config.language_pair == config.pair
    assert str(builder.version) == config.version
    assert tuple(str(s) for s in builder.subsets) == config.splits, config.tfds_name
  pairs = {(c.family, "-".join(c.pair)) for c in wmt.WMT_CONFIGS}
  wanted = {("wmt19_translate", p) for p in
            ["de-en", "lt-en", "kk-en", "ru-en", "zh-en", "fi-en", "gu-en", "cs-en", "fr-de"]}
  wanted |= {("wmt14_translate", "de-en"), ("wmt16_translate", "de-en"),
             ("wmt16_translate", "ro-en")}
  assert wanted <= pairs


def test_import_registers_both_directions_and_guides_with_t5_vocabulary():
  assert len(wmt.TASK_NAMES) == 4 * len(wmt.WMT_CONFIGS) == 80
  for name in ["wmt19_translate_lt_en", "wmt19_translate_en_lt", "wmt19_translate_lt_en_guide",
               "wmt19_translate_fr_de", "wmt19_translate_de_fr_guide", "wmt14_translate_en_de",
               "wmt16_translate_ro_en_guide"]:
    assert name in wmt.TASK_NAMES and name in seqio.TaskRegistry.names()
  task = seqio.get_mixture_or_task("wmt19_translate_lt_en")
  vocab = task.output_features["targets"].vocabulary
  assert vocab.sentencepiece_model_file == wmt.T5_VOCABULARY_PATH and vocab.extra_ids == 100
  assert sorted(task.splits) == ["train", "validation"]
  assert sorted(seqio.get_mixture_or_task("wmt14_translate_de_en").splits) == [
      "test", "train", "validation"]
  assert sorted(seqio.get_mixture_or_task("wmt14_translate_de_en_guide").splits) == [
      "train", "validation"]


def test_bad_registration_arguments_are_one_line_errors():
  with pytest.raises(ValueError, match="guide_source must be one of"):
    wmt.register_wmt_tasks(BYTES, guide_source="dev", name_suffix="_bad")
  with pytest.raises(ValueError, match="guide percent must be a number in"):
    wmt.register_wmt_tasks(BYTES, guide_percent=0.0, name_suffix="_bad")
  with pytest.raises(ValueError, match="not a direction of"):
    wmt.task_name(_config("wmt19_translate", "lt-en"), "de", "en")


# ----------------------------------------------------------------------------------------------
# Each family builds on mocked TFDS data
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("family, pair, source, target, prefix", [
    ("wmt19_translate", "lt-en", "lt", "en", "translate Lithuanian to English: "),
    ("wmt19_translate", "fr-de", "de", "fr", "translate German to French: "),
    ("wmt14_translate", "de-en", "en", "de", "translate English to German: "),
    ("wmt16_translate", "ro-en", "ro", "en", "translate Romanian to English: "),
])
def test_family_builds_int32_features_of_declared_lengths(registered, family, pair, source,
                                                          target, prefix):
  config = _config(family, pair)
  registered(configs=[config], name_suffix="_bytes")
  name = wmt.task_name(config, source, target, "_bytes")
  n = 12
  with tfds.testing.mock_data(num_examples=n):
    raw = list(tfds.load(config.tfds_name, split="validation").as_numpy_iterator())
    for split in config.splits:
      exs = list(seqio.get_mixture_or_task(name).get_dataset(
          LENGTHS, split=split, shuffle=False).as_numpy_iterator())
      if split != "train":  # train loses its (content-decided) guide slice
        assert len(exs) == n
      for ex in exs:
        for key in ("inputs", "targets"):
          assert ex[key].dtype == np.int32 and ex[key].ndim == 1
          assert 2 <= len(ex[key]) <= LENGTHS[key] and ex[key][-1] == 1
        inputs_text = BYTES.decode(ex["inputs"].tolist())
        assert inputs_text.startswith(prefix)
        assert ex["inputs_pretokenized"].decode().startswith(prefix)
      if split == "validation":  # the pairs are TFDS's, in order, nothing filtered
        assert [ex["inputs_pretokenized"] for ex in exs] == [
            prefix.encode() + r[source] for r in raw]
        assert [ex["targets_pretokenized"] for ex in exs] == [r[target] for r in raw]
        # prefix (>= 30 bytes) + 10..19 random bytes + EOS overflows 48 for some examples
        assert any(len(ex["inputs"]) == LENGTHS["inputs"] for ex in exs)
    converted = seqio.get_dataset(
        name, task_feature_lengths=LENGTHS, dataset_split="validation", shuffle=False,
        feature_converter=seqio.EncDecFeatureConverter(pack=False))
    for ex in converted.as_numpy_iterator():
      assert ex["encoder_input_tokens"].shape == (LENGTHS["inputs"],)
      assert ex["decoder_target_tokens"].shape == (LENGTHS["targets"],)
      assert all(v.dtype == np.int32 for v in ex.values())


# ----------------------------------------------------------------------------------------------
# The guide split
# ----------------------------------------------------------------------------------------------
NUM_SPLIT = 1500


def _split_dependent_data(self, split, decoders=None, read_config=None, shuffle_files=False):
  """Mock `_as_dataset`: NUM_SPLIT distinct pairs per split, the split's name in the text."""
  del self, decoders, read_config, shuffle_files
  i = tf.range(NUM_SPLIT)
  return tf.data.Dataset.from_tensor_slices({
      "lt": tf.strings.join([f"{split} sakinys ", tf.strings.as_string(i), "."]),
      "en": tf.strings.join([f"{split} sentence ", tf.strings.as_string(i * 7 % 1000), "."]),
  })


def _pairs(name, split, shuffle=False, seed=None):
  ds = seqio.get_mixture_or_task(name).get_dataset(None, split=split, shuffle=shuffle, seed=seed)
  return [(ex["inputs_pretokenized"], ex["targets_pretokenized"]) for ex in ds.as_numpy_iterator()]


def test_hash_guide_is_a_stable_one_percent_disjoint_from_train(registered):
  config = _config("wmt19_translate", "lt-en")
  registered(configs=[config], name_suffix="_hash")
  prefix = b"translate Lithuanian to English: "
  with tfds.testing.mock_data(as_dataset_fn=_split_dependent_data):
    train = _pairs("wmt19_translate_lt_en_hash", "train")
    guide = _pairs("wmt19_translate_lt_en_hash_guide", "train")
    guide_again = _pairs("wmt19_translate_lt_en_hash_guide", "train", shuffle=True, seed=5)
    guide_validation = _pairs("wmt19_translate_lt_en_hash_guide", "validation")
    reverse_guide = _pairs("wmt19_translate_en_lt_hash_guide", "train")
    validation = _pairs("wmt19_translate_lt_en_hash", "validation")
    raw_ds = tfds.load(config.tfds_name, split="train")
    raw = list(raw_ds.as_numpy_iterator())
    # Expected membership, recomputed from the recipe: hash of lt + "\n" + en, 1 %.
    member = list(raw_ds.map(lambda r: guide_split.in_guide_split(
        tf.strings.join([r["lt"], "\n", r["en"]]), 1.0)).as_numpy_iterator())
  expected = {(prefix + r["lt"], r["en"]) for r, m in zip(raw, member) if m}
  assert set(guide) == expected and len(guide) == len(expected)
  assert 5 <= len(guide) <= 30  # 1 % of 1500 = 15 (binomial sd ~3.9)
  assert not set(guide) & set(train)
  assert len(train) + len(guide) == NUM_SPLIT  # nothing else dropped
  assert set(train) | set(guide) == {(prefix + r["lt"], r["en"]) for r in raw}
  assert set(guide_again) == set(guide) and guide_validation == guide
  # The other direction holds out the same sentence pairs.
  assert {(t, s[len(b"translate English to Lithuanian: "):]) for s, t in reverse_guide} == {
      (s[len(prefix):], t) for s, t in guide}
  assert len(validation) == NUM_SPLIT and all(s.startswith(prefix + b"validation")
                                              for s, _ in validation)


def test_validation_as_guide_keeps_all_of_train(registered):
  config = _config("wmt19_translate", "lt-en")
  registered(configs=[config], name_suffix="_dev", guide_source="validation")
  with tfds.testing.mock_data(as_dataset_fn=_split_dependent_data):
    train = _pairs("wmt19_translate_lt_en_dev", "train")
    guide = _pairs("wmt19_translate_en_lt_dev_guide", "train")
  assert len(train) == NUM_SPLIT
  assert len(guide) == NUM_SPLIT
  assert all(s.startswith(b"translate English to Lithuanian: validation sentence")
             and t.startswith(b"validation sakinys") for s, t in guide)


# ----------------------------------------------------------------------------------------------
# BLEU through the task's metric fn
# ----------------------------------------------------------------------------------------------
def test_task_bleu_equals_sacrebleu_and_hand_value():
  (metric,) = seqio.get_mixture_or_task("wmt19_translate_lt_en").metric_fns
  # 1-4 gram precisions 5/6, 3/5, 2/4, 1/3, equal lengths -> BLEU = 100 * (1/12) ** (1/4).
  hand = metric([b"the cat sat on a mat"], ["the cat sat on the mat"])["bleu"]
  assert hand == pytest.approx(100 * (1 / 12) ** 0.25, abs=1e-9)
  targets = [b"Good morning, Vilnius.", "It rains again today.", "We will meet tomorrow."]
  predictions = ["Good morning Vilnius.", "It rains today again.", "We meet tomorrow."]
  expected = sacrebleu.corpus_bleu(predictions, [[t if isinstance(t, str) else t.decode()
                                                  for t in targets]]).score
  assert metric(targets, predictions) == {"bleu": pytest.approx(expected, abs=1e-9)}
  assert metric(["We will meet again tomorrow."], ["We will meet again tomorrow."])["bleu"] == (
      pytest.approx(100.0))
  with pytest.raises(ValueError, match="one prediction per target"):
    metric(["a"], ["a", "b"])


def test_chinese_targets_use_sacrebleus_zh_tokenizer():
  (metric,) = seqio.get_mixture_or_task("wmt19_translate_en_zh").metric_fns
  targets, predictions = ["我们明天见面。"], ["我们明天见。"]
  expected = sacrebleu.corpus_bleu(predictions, [targets], tokenize="zh").score
  assert metric(targets, predictions)["bleu"] == pytest.approx(expected, abs=1e-9)
  # 13a sees each sentence as one token (no match); zh splits characters (partial credit).
  assert sacrebleu.corpus_bleu(predictions, [targets]).score == 0.0 < expected
  assert not math.isclose(expected, 100.0)


def test_unprepared_tfds_dataset_says_how_to_build(tmp_path):
  """No mock: an empty data dir must name the `tfds build` command, not try to download."""
  config = next(c for c in wmt.WMT_CONFIGS if c.tfds_name.startswith("wmt19_translate/lt-en"))
  names = wmt.register_wmt_tasks(BYTES, configs=[config], name_suffix="_empty_dir",
                                 tfds_data_dir=str(tmp_path))
  for name in names:
    with pytest.raises(ValueError, match="tfds build wmt19_translate --config lt-en"):
      seqio.get_mixture_or_task(name).get_dataset(
          {"inputs": 32, "targets": 32}, split="train", shuffle=False)


def test_sharded_read_as_the_trainer_does_names_the_build_command_or_reads_mock_data(tmp_path):
  """`seqio.Task.get_dataset` with a ShardInfo (as `gbt_t5x.train.data` calls it) first lists the
  split's files: without split metadata that must still end in the one-line `tfds build` error
  (not TFDS's KeyError), and mocked data must load."""
  config = next(c for c in wmt.WMT_CONFIGS if c.tfds_name.startswith("wmt19_translate/lt-en"))
  names = wmt.register_wmt_tasks(BYTES, configs=[config], name_suffix="_sharded",
                                 tfds_data_dir=str(tmp_path))
  try:
    task = seqio.get_mixture_or_task(names[0])
    shard = seqio.ShardInfo(index=0, num_shards=1)
    assert task.source.list_shards("train") == []
    with pytest.raises(ValueError, match=r"tfds build wmt19_translate --config lt-en.*"
                                         r"--tfds_data_dir"):
      task.get_dataset(LENGTHS, split="validation", shuffle=False, shard_info=shard)
    with tfds.testing.mock_data(num_examples=4, policy=tfds.testing.MockPolicy.USE_CODE):
      exs = list(task.get_dataset(LENGTHS, split="validation", shuffle=False,
                                  shard_info=shard).as_numpy_iterator())
    assert len(exs) == 4
  finally:
    for name in names:
      seqio.TaskRegistry.remove(name)
