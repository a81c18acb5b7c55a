"""Tests of the C4 and demo span-corruption tasks: registration under T5's names, building on
`tfds.testing.mock_data` with a local vocabulary, declared lengths, guide disjointness, exact
reconstruction of demo sentences, and the error for an unprepared TFDS dataset."""
import json

import numpy as np
import pytest
import seqio
import tensorflow as tf
import tensorflow_datasets as tfds

from gbt_t5x.data import demo_world as dw
from gbt_t5x.data import span_corruption as sc

TINY = dict(seed=5, num_train=200, num_guide=20, num_dev=30, num_test=10, num_mono=800,
            vocab_size=300)
SMALL = {"inputs": 64, "targets": 14}


@pytest.fixture(scope="module")
def tasks(tmp_path_factory):
  """The task modules, with the demo world (vocabulary + mono corpus) in a tmp dir."""
  data_dir = tmp_path_factory.mktemp("demo_world_pretrain")
  with pytest.MonkeyPatch.context() as mp:
    mp.setenv(dw.ENV_DATA_DIR, str(data_dir))
    mp.setenv(dw.ENV_CONFIG, json.dumps(TINY))
    from gbt_t5x_tasks import c4  # pylint: disable=g-import-not-at-top
    from gbt_t5x_tasks import demo  # pylint: disable=g-import-not-at-top
    from gbt_t5x_tasks import demo_pretrain  # pylint: disable=g-import-not-at-top
    names = c4.register_c4_tasks(demo.VOCABULARY, suffix="_demo_vocab")
    yield c4, demo, demo_pretrain, names, data_dir


def _reconstruct(inputs, targets, first_sentinel):
  spans, current = {}, None
  for t in targets:
    if t >= first_sentinel:
      current = int(t)
      spans[current] = []
    else:
      spans[current].append(int(t))
  out = []
  for t in inputs:
    out.extend(spans[int(t)] if t >= first_sentinel else [int(t)])
  return out


def _check_features(exs, lengths, vocab_size, num_documents):
  assert exs
  for ex in exs:
    for key in ("inputs", "targets"):
      assert ex[key].dtype == np.int32 and ex[key].ndim == 1
      assert 2 <= len(ex[key]) <= lengths[key] and ex[key][-1] == 1
      assert ex[key].max() < vocab_size and ex[key][0] != 0
    assert ex["targets"][0] == vocab_size - 1  # the first sentinel opens the targets
  # Documents are concatenated 128 at a time and cut into full segments, which have exactly the
  # planned lengths; only the last segment of each group of 128 documents may be shorter.
  targets_length = sc.random_spans_helper(lengths["inputs"])[1]
  full = [len(ex["inputs"]) == lengths["inputs"] and len(ex["targets"]) == targets_length
          for ex in exs]
  assert len(full) - sum(full) <= -(-num_documents // 128) and sum(full) >= 1


def test_t5_names_and_defaults(tasks):
  c4, _, demo_pretrain, _, _ = tasks
  for name in ("c4_span_corruption", "c4_span_corruption_guide", "c4_v220_span_corruption",
               "demo_span_corruption", "demo_span_corruption_guide"):
    assert name in seqio.TaskRegistry.names()
  task = seqio.get_mixture_or_task("c4_v220_span_corruption")
  vocab = task.output_features["targets"].vocabulary
  assert vocab.sentencepiece_model_file == c4.T5_VOCABULARY_PATH and vocab.extra_ids == 100
  assert task.source.tfds_dataset.name == "c4/en:2.2.0"
  assert seqio.get_mixture_or_task("c4_span_corruption").source.tfds_dataset.name == (
      "c4/en:3.1.0")
  assert c4.DEFAULT_SEQUENCE_LENGTH == {"inputs": 512, "targets": 114}
  assert demo_pretrain.DEFAULT_SEQUENCE_LENGTH == {"inputs": 64, "targets": 14}


@pytest.mark.parametrize("lengths, which", [(SMALL, slice(None)),
                                             ({"inputs": 512, "targets": 114}, slice(1))])
def test_c4_builds_on_mock_data(tasks, lengths, which):
  _, demo, _, names, _ = tasks
  with tfds.testing.mock_data(num_examples=150, policy=tfds.testing.MockPolicy.USE_CODE):
    for name in names[which]:
      for split in ("train", "validation"):
        ds = seqio.get_mixture_or_task(name).get_dataset(
            lengths, split=split, shuffle=False, seed=1)
        exs = list(ds.as_numpy_iterator())
        if name.startswith("c4_span_corruption_guide"):
          continue  # 1 % of 150 mock documents: possibly empty
        _check_features(exs, lengths, demo.VOCABULARY.vocab_size, 150)


def test_c4_guide_is_disjoint_from_validation(tasks):
  c4, _, _, _, _ = tasks
  main = seqio.get_mixture_or_task("c4_span_corruption_demo_vocab").source
  guide = seqio.get_mixture_or_task("c4_span_corruption_guide_demo_vocab").source
  with tfds.testing.mock_data(num_examples=400, policy=tfds.testing.MockPolicy.USE_CODE):
    full = [e["text"] for e in main.tfds_dataset.load("validation", shuffle_files=False)
            .as_numpy_iterator()]
    rest = [e["text"] for e in main.get_dataset("validation", shuffle=False).as_numpy_iterator()]
    held = [e["text"] for e in guide.get_dataset("train", shuffle=False).as_numpy_iterator()]
  assert sorted(rest + held) == sorted(full) and not set(rest) & set(held)
  assert 0 < len(held) < 0.05 * len(full)  # ~1 % (4 expected of 400)
  assert c4.GUIDE_PERCENT == 1.0


def test_unprepared_tfds_dataset_says_how_to_build(tasks, tmp_path):
  c4, demo, _, _, _ = tasks
  (name, *_) = c4.register_c4_tasks(demo.VOCABULARY, suffix="_empty_dir",
                                    tfds_data_dir=str(tmp_path))
  with pytest.raises(ValueError, match=r"tfds build c4 --config en --version 3.1.0"):
    seqio.get_mixture_or_task(name).get_dataset(SMALL, split="train", shuffle=False)


def test_demo_span_corruption_reconstructs_mono(tasks):
  _, demo, demo_pretrain, _, data_dir = tasks
  vocab = demo.VOCABULARY
  exs = list(seqio.get_mixture_or_task("demo_span_corruption").get_dataset(
      SMALL, split="train", shuffle=False, seed=3).as_numpy_iterator())
  _check_features(exs, SMALL, vocab.vocab_size, TINY["num_mono"])
  guide = list(seqio.get_mixture_or_task("demo_span_corruption_guide").get_dataset(
      SMALL, split="train", shuffle=False, seed=3).as_numpy_iterator())
  first = vocab.vocab_size - demo.EXTRA_IDS
  # Reconstructed token streams are exactly the tokenized sentences, in order; the guide slice
  # and the train remainder partition mono.txt.
  lines = (data_dir / "mono.txt").read_text(encoding="utf-8").splitlines()

  def stream(examples):
    return sum((_reconstruct(e["inputs"][:-1], e["targets"][:-1], first) for e in examples), [])

  train_ids, guide_ids = stream(exs), stream(guide)
  in_guide = list(tf.data.Dataset.from_tensor_slices(lines).map(
      lambda s: demo_pretrain.guide_split.in_guide_split(
          s, demo_pretrain.GUIDE_PERCENT, demo_pretrain.GUIDE_SALT)).as_numpy_iterator())
  assert 0 < sum(in_guide) < 0.06 * len(lines)
  assert train_ids == sum((vocab.encode(s) for s, g in zip(lines, in_guide) if not g), [])
  assert guide_ids == sum((vocab.encode(s) for s, g in zip(lines, in_guide) if g), [])
  assert vocab.decode(train_ids[:40])  # real demo-language text


def test_demo_too_short_lengths(tasks):
  with pytest.raises(ValueError, match="at least 10"):
    list(seqio.get_mixture_or_task("demo_span_corruption").get_dataset(
        {"inputs": 6, "targets": 6}, split="train", shuffle=False).take(1))
