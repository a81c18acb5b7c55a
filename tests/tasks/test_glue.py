"""Tests of the GLUE / SuperGLUE tasks (gbt_t5x_tasks.glue, gbt_t5x.data.glue) on mocked TFDS.

The tasks are re-registered with `seqio.ByteVocabulary` (no SentencePiece model needed) under a
test suffix; `tfds.testing.mock_data` fakes the examples from each builder's features.
"""
import math

import numpy as np
import pytest
import seqio
import tensorflow as tf
import tensorflow_datasets as tfds

from gbt_t5x.data import glue as fmt
from gbt_t5x.data import guide_split
from gbt_t5x_tasks import glue

SUFFIX = "_bytetest"
SUFFIX20 = "_bytetest20"  # guide slice of 20 % so that small mocked splits have guide examples
LENGTHS = {"inputs": 96, "targets": 24}
VOCAB = seqio.ByteVocabulary()
ALL_SPECS = [("glue", s) for s in glue.GLUE_TASKS] + [("super_glue", s)
                                                      for s in glue.SUPER_GLUE_TASKS]
PREFIXES = {
    ("glue", "cola"): "cola sentence: ", ("glue", "sst2"): "sst2 sentence: ",
    ("glue", "mrpc"): "mrpc sentence1: ", ("glue", "qqp"): "qqp question1: ",
    ("glue", "stsb"): "stsb sentence1: ", ("glue", "mnli"): "mnli hypothesis: ",
    ("glue", "mnli_matched"): "mnli hypothesis: ", ("glue", "mnli_mismatched"): "mnli hypothesis: ",
    ("glue", "qnli"): "qnli question: ", ("glue", "rte"): "rte sentence1: ",
    ("glue", "wnli"): "wnli sentence1: ", ("glue", "ax"): "mnli hypothesis: ",
    ("super_glue", "boolq"): "boolq passage: ", ("super_glue", "cb"): "cb hypothesis: ",
    ("super_glue", "copa"): "copa choice1: ", ("super_glue", "multirc"): "multirc question: ",
    ("super_glue", "record"): "record query: ", ("super_glue", "rte"): "rte hypothesis: ",
    ("super_glue", "wic"): "wic sentence1: ", ("super_glue", "wsc"): "wsc text: ",
    ("super_glue", "axb"): "rte sentence1: ", ("super_glue", "axg"): "rte hypothesis: ",
}


@pytest.fixture(scope="module", autouse=True)
def registered():
  names = glue.register_tasks(VOCAB, SUFFIX) + glue.register_tasks(VOCAB, SUFFIX20, 20.0)
  yield
  for name in names:
    registry = seqio.MixtureRegistry if "proportional" in name else seqio.TaskRegistry
    registry.remove(name)


def _name(family, spec, suffix=SUFFIX):
  return (glue.glue_task_name if family == "glue" else glue.super_glue_task_name)(spec.name,
                                                                                  suffix)


def _examples(name, split, num_examples=3):
  with tfds.testing.mock_data(num_examples=num_examples):
    ds = seqio.get_mixture_or_task(name).get_dataset(LENGTHS, split=split, shuffle=False)
    return list(ds.as_numpy_iterator())


def _spec(family, name):
  specs = glue.GLUE_TASKS if family == "glue" else glue.SUPER_GLUE_TASKS
  return next(s for s in specs if s.name == name)


def _eval_split(spec):
  return next(s for s in ("validation", "validation_matched", "test") if s in spec.splits)


def test_import_registers_t5_names_with_t5_vocabulary():
  for name in ("glue_cola_v002", "glue_mnli_mismatched_v002", "glue_ax_v002",
               "super_glue_record_v102", "super_glue_wsc_v102", "glue_cola_v002_guide",
               "super_glue_multirc_v102_guide", "glue_v002_proportional", "glue_v2_proportional",
               "super_glue_v102_proportional", "super_glue_v2_proportional",
               "glue_v002_proportional_guide"):
    assert name in glue.TASK_NAMES
  task = seqio.get_mixture_or_task("glue_cola_v002")
  assert task.output_features["inputs"].vocabulary.sentencepiece_model_file == (
      glue.T5_VOCABULARY_PATH)
  assert "glue_ax_v002_guide" not in glue.TASK_NAMES  # no train split, no guide task


@pytest.mark.parametrize("family, spec", ALL_SPECS, ids=lambda x: getattr(x, "name", x))
def test_task_builds_and_scores(family, spec):
  task = seqio.get_mixture_or_task(_name(family, spec))
  split = _eval_split(spec)
  exs = _examples(task.name, split)
  assert len(exs) >= 3  # ReCoRD yields one example per answer
  for ex in exs:
    for key in ("inputs", "targets"):
      tokens = ex[key]
      assert tokens.dtype == np.int32 and tokens.ndim == 1
      assert 2 <= len(tokens) <= LENGTHS[key] and tokens[-1] == 1 and 0 not in tokens
      if len(tokens) < LENGTHS[key]:  # untrimmed: the bytes decode back to the text
        assert VOCAB.decode(tokens[:-1].tolist()) == ex[key + "_pretokenized"].decode()
    assert ex["inputs_pretokenized"].decode().startswith(PREFIXES[(family, spec.name)])
    for key in [k for k in ex if k.startswith("idx")]:
      assert ex[key].dtype == np.int32 and ex[key].shape == ()
  targets = [task.postprocess_fn(ex["targets_pretokenized"].decode(), example=ex, is_target=True)
             for ex in exs]
  perfect = [task.postprocess_fn(ex["targets_pretokenized"].decode(), example=ex)
             for ex in exs]
  garbage = [task.postprocess_fn("no idea", example=ex) for ex in exs]
  for t in targets:  # every target text maps back to a label (mock labels are never hidden)
    value = t["value"] if isinstance(t, dict) else t
    assert value != -1 and value != [] and value is not None
  for metric_fn in task.metric_fns:
    good, bad = metric_fn(targets, perfect), metric_fn(targets, garbage)
    assert good and all(isinstance(v, float) and math.isfinite(v) for v in good.values())
    for key in ("accuracy", "exact_match", "em"):
      if key in good:
        assert good[key] == 100.0 and bad[key] == 0.0
  if spec.name == "stsb":
    assert set(garbage) == {-1.0}


def test_mnli_has_matched_and_mismatched_eval_splits():
  task = seqio.get_mixture_or_task(glue.glue_task_name("mnli", SUFFIX))
  assert set(task.splits) == {"train", "validation_matched", "validation_mismatched",
                              "test_matched", "test_mismatched"}
  for name in ("mnli_matched", "mnli_mismatched"):
    assert set(seqio.get_mixture_or_task(glue.glue_task_name(name, SUFFIX)).splits) == {
        "validation", "test"}


def test_mixtures_are_proportional_to_train_size():
  for base in ("glue_v002_proportional", "glue_v2_proportional"):
    mixture = seqio.get_mixture_or_task(base + SUFFIX)
    rates = {t.name: mixture.get_rate(t) for t in mixture.tasks}
    assert set(rates) == {glue.glue_task_name(s.name, SUFFIX) for s in glue.GLUE_TASKS
                          if s.name != "wnli"}
    assert rates[glue.glue_task_name("cola", SUFFIX)] == 8_551
    assert rates[glue.glue_task_name("ax", SUFFIX)] == 0
  sg = seqio.get_mixture_or_task("super_glue_v2_proportional" + SUFFIX)
  assert len(sg.tasks) == len(glue.SUPER_GLUE_TASKS)
  guide = seqio.get_mixture_or_task("super_glue_v102_proportional" + SUFFIX + glue.GUIDE_SUFFIX)
  assert {t.name for t in guide.tasks} == {
      glue.super_glue_task_name(s.name, SUFFIX) + "_guide" for s in glue.SUPER_GLUE_TASKS
      if "train" in s.splits}
  with tfds.testing.mock_data(num_examples=2):  # a mixture repeats forever: take a few
    ds = seqio.get_mixture_or_task("glue_v002_proportional" + SUFFIX).get_dataset(
        LENGTHS, split="train", shuffle=False)
    exs = list(ds.take(4).as_numpy_iterator())
  assert len(exs) == 4 and all(set(ex) == {"inputs", "targets"} for ex in exs)


def _raw_idx(tfds_name, num_examples):
  with tfds.testing.mock_data(num_examples=num_examples):
    return [ex["idx"] for ex in tfds.load(tfds_name, split="train").as_numpy_iterator()]


def _key(tfds_name, idx):
  return fmt.guide_key({"idx": tf.constant(idx)}, tfds_name.split(":")[0])


def test_guide_split_partitions_train_and_is_stable():
  spec = _spec("glue", "cola")
  name = glue.glue_task_name("cola", SUFFIX20)
  raw = [int(i) for i in _raw_idx(spec.tfds_name, 60)]
  train = [int(ex["idx"]) for ex in _examples(name, "train", 60)]
  guide = [int(ex["idx"]) for ex in _examples(name + "_guide", "train", 60)]
  assert guide and train
  assert not set(train) & set(guide)
  assert sorted(train + guide) == sorted(raw)
  expected = sorted(i for i in raw
                    if bool(guide_split.in_guide_split(_key(spec.tfds_name, i), 20.0)))
  assert sorted(guide) == expected
  assert [int(ex["idx"]) for ex in _examples(name + "_guide", "validation", 60)] == guide
  assert [int(ex["idx"]) for ex in _examples(name + "_guide", "train", 60)] == guide


def test_guide_split_keeps_multirc_questions_whole():
  name = glue.super_glue_task_name("multirc", SUFFIX20)
  group = lambda ex: (int(ex["idx/paragraph"]), int(ex["idx/question"]))
  train = {group(ex) for ex in _examples(name, "train", 60)}
  guide = {group(ex) for ex in _examples(name + "_guide", "train", 60)}
  assert guide and train and not train & guide


def test_guide_membership_is_pinned():
  """The 1 % slice of glue/cola idx 0..999: a change of key or hash would move it."""
  ds = tf.data.Dataset.range(1000).filter(
      lambda i: guide_split.in_guide_split(fmt.guide_key({"idx": i}, "glue/cola"),
                                           glue.GUIDE_PERCENT))
  members = [int(i) for i in ds.as_numpy_iterator()]
  assert members == [27, 44, 101, 117, 154, 220, 307, 623]


# ----------------------------------------------------------------------------- formatting


def _fmt(family, name, **features):
  ex = {k: tf.constant(v) for k, v in features.items()}
  out = _spec(family, name).formatter(ex)
  return out["inputs"].numpy().decode(), out["targets"].numpy().decode()


@pytest.mark.parametrize("family, name, features, inputs, target", [
    ("glue", "cola", dict(sentence="It rains.", label=1, idx=0),
     "cola sentence: It rains.", "acceptable"),
    ("glue", "mrpc", dict(sentence1="A b.", sentence2="B a.", label=0, idx=0),
     "mrpc sentence1: A b. sentence2: B a.", "not_equivalent"),
    ("glue", "qnli", dict(question="Who?", sentence="Me.", label=1, idx=0),
     "qnli question: Who? sentence: Me.", "not_entailment"),
    ("glue", "mnli", dict(premise="A man sleeps.", hypothesis="Nobody sleeps.", label=2, idx=0),
     "mnli hypothesis: Nobody sleeps. premise: A man sleeps.", "contradiction"),
    ("glue", "ax", dict(premise="P.", hypothesis="H.", label=-1, idx=0),
     "mnli hypothesis: H. premise: P.", "<unk>"),
    ("glue", "wnli", dict(sentence1="S1.", sentence2="S2.", label=1, idx=0),
     "wnli sentence1: S1. sentence2: S2.", "entailment"),
    ("super_glue", "boolq", dict(passage="Sky is blue.", question="is sky blue", label=1, idx=0),
     "boolq passage: Sky is blue. question: is sky blue", "True"),
    ("super_glue", "cb", dict(premise="P.", hypothesis="H.", label=2, idx=0),
     "cb hypothesis: H. premise: P.", "neutral"),
    ("super_glue", "copa", dict(premise="It fell.", question="cause", choice1="Pushed.",
                                choice2="Slept.", label=0, idx=0),
     "copa choice1: Pushed. choice2: Slept. premise: It fell. question: cause", "choice1"),
    ("super_glue", "wic", dict(sentence1="A bat flew.", sentence2="He swung the bat.",
                               word="bat", start1=2, end1=5, start2=12, end2=15, label=0, idx=0),
     "wic sentence1: A bat flew. sentence2: He swung the bat. word: bat", "False"),
    ("super_glue", "axb", dict(sentence1="S1.", sentence2="S2.", label=0, idx=0),
     "rte sentence1: S1. sentence2: S2.", "entailment"),
])
def test_text_to_text_formatting(family, name, features, inputs, target):
  assert _fmt(family, name, **features) == (inputs, target)


def test_stsb_targets_round_to_point_two():
  got = fmt.stsb_text_to_text({"sentence1": tf.constant("A."), "sentence2": tf.constant("B."),
                               "label": tf.constant(3.7), "idx": tf.constant(4)})
  assert got["inputs"].numpy() == b"stsb sentence1: A. sentence2: B."
  assert got["targets"].numpy() == b"3.6" and int(got["idx"]) == 4
  rounded = [fmt.stsb_target(tf.constant(x)).numpy() for x in (0.0, 0.09, 0.11, 3.9, 5.0)]
  assert rounded == [b"0.0", b"0.0", b"0.2", b"4.0", b"5.0"]


def test_multirc_strips_markup_and_keeps_ids():
  idx = {"paragraph": tf.constant(5), "question": tf.constant(6), "answer": tf.constant(7)}
  got = fmt.multirc_text_to_text({
      "paragraph": tf.constant("One.<br>Two <b>bold</b>."), "question": tf.constant("Q?"),
      "answer": tf.constant("A"), "label": tf.constant(1), "idx": idx})
  assert got["inputs"].numpy() == b"multirc question: Q? answer: A paragraph: One. Two bold."
  assert got["targets"].numpy() == b"True"
  assert [int(got[f"idx/{k}"]) for k in ("paragraph", "question", "answer")] == [5, 6, 7]


def test_wsc_marks_both_spans():
  text = "Mark told Pete many lies about himself , which Pete included in his book ."
  got = fmt.wsc_text_to_text({
      "text": tf.constant(text), "span1_index": tf.constant(2),
      "span1_text": tf.constant("Pete many"), "span2_index": tf.constant(12),
      "span2_text": tf.constant("his"), "label": tf.constant(0), "idx": tf.constant(0)})
  assert got["inputs"].numpy().decode() == (
      "wsc text: Mark told * Pete many * lies about himself , which Pete included in # his # "
      "book .")
  assert got["targets"].numpy() == b"False"
  out_of_range = fmt.mark_spans(tf.constant("a b"), 5, tf.constant("x"), 0, tf.constant("a"))
  assert out_of_range.numpy() == b"# a # b"


def test_record_expands_one_example_per_answer():
  raw = {"passage": "First.\n@highlight\nSecond\n@highlight\nThird", "query": "@placeholder won",
         "entities": ["Ann", "Bo"], "idx": {"passage": 1, "query": 2}}
  ds = tf.data.Dataset.from_tensors({**raw, "answers": ["Ann", "Bo"]}).concatenate(
      tf.data.Dataset.from_tensors({**raw, "answers": tf.constant([], tf.string)}))
  exs = list(fmt.record_expand(ds).as_numpy_iterator())
  assert [ex["targets"] for ex in exs] == [b"Ann", b"Bo", b"<unk>"]
  assert exs[0]["inputs"] == (b"record query: @placeholder won entities: Ann, Bo passage: "
                              b"First. Second. Third")
  assert exs[1]["answers"].tolist() == [b"Ann", b"Bo"] and exs[2]["answers"].size == 0
  assert (int(exs[0]["idx/passage"]), int(exs[0]["idx/query"])) == (1, 2)
  target = fmt.record_postprocess("Ann", example=exs[1], is_target=True)
  assert target == {"value": ["Ann", "Bo"], "group": (1, 2)}


# ----------------------------------------------------------------------------- postprocessors


def test_postprocessors_map_text_back_to_labels():
  to_id = fmt.string_label_to_class_id(("unacceptable", "acceptable"))
  assert [to_id(t) for t in ("acceptable", b" unacceptable\n", "Acceptable", "")] == [1, 0, -1, -1]
  assert [fmt.string_to_float(t) for t in ("3.8", b"0", "x", "nan", "inf")] == [
      3.8, 0.0, -1.0, -1.0, -1.0]
  ex = {"idx/paragraph": np.int32(3), "idx/question": np.int32(4)}
  assert fmt.multirc_postprocess("True", example=ex, is_target=True) == {"value": 1,
                                                                        "group": (3, 4)}
  assert fmt.multirc_postprocess("maybe", example=ex) == {"value": -1}


def test_bad_input_raises_value_error():
  with pytest.raises(ValueError, match="suffix"):
    glue.register_tasks(VOCAB, "bad-suffix")
  with pytest.raises(ValueError, match="guide_percent"):
    glue.register_tasks(VOCAB, SUFFIX, guide_percent=0)
  with pytest.raises(ValueError, match="label_names"):
    fmt.string_label_to_class_id([])
  with pytest.raises(ValueError, match="idx/question"):
    fmt.multirc_postprocess("True", example={"idx/paragraph": 1}, is_target=True)


def test_unprepared_tfds_dataset_says_how_to_build(tmp_path):
  """No mock: an empty data dir must name the `tfds build` command, not try to download."""
  names = glue.register_tasks(VOCAB, "_empty_dir", tfds_data_dir=str(tmp_path))
  for name, build in (("glue_cola_v002_empty_dir", "tfds build glue --config cola"),
                      ("super_glue_boolq_v102_empty_dir_guide",
                       "tfds build super_glue --config boolq")):
    assert name in names
    with pytest.raises(ValueError, match=f"{build}.*--tfds_data_dir"):
      seqio.get_mixture_or_task(name).get_dataset(
          {"inputs": 32, "targets": 8}, split="train", shuffle=False)
