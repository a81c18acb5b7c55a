"""Tests of the demo SeqIO tasks and the vocabulary helpers, on a tiny world in a tmp dir."""
import json

import numpy as np
import pytest
import seqio

from gbt_t5x.data import demo_world as dw
from gbt_t5x.data import vocabularies

TINY = dict(seed=7, num_train=300, num_guide=40, num_dev=30, num_test=20, num_mono=100,
            vocab_size=300)
LENGTHS = {"inputs": 64, "targets": 64}


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
  """Imports the tasks with the environment pointing at an empty tmp dir (generated on use)."""
  data_dir = tmp_path_factory.mktemp("demo_world")
  with pytest.MonkeyPatch.context() as mp:
    mp.setenv(dw.ENV_DATA_DIR, str(data_dir))
    mp.setenv(dw.ENV_CONFIG, json.dumps(TINY))
    from gbt_t5x_tasks import demo as demo_tasks  # pylint: disable=g-import-not-at-top
    assert not list(data_dir.iterdir()), "importing the tasks must not generate the world"
    yield demo_tasks, data_dir


def _examples(name, split, lengths=LENGTHS):
  ds = seqio.get_mixture_or_task(name).get_dataset(sequence_length=lengths, split=split,
                                                   shuffle=False)
  return list(ds.as_numpy_iterator())


@pytest.mark.parametrize("name, split, tsv", [
    ("demo_nmt", "train", "train.tsv"), ("demo_nmt", "validation", "dev.tsv"),
    ("demo_nmt", "test", "test.tsv"), ("demo_nmt_guide", "train", "guide.tsv"),
    ("demo_nmt_guide", "validation", "guide.tsv")])
def test_tasks_yield_int32_tokens_ending_in_eos(demo, name, split, tsv):
  demo_tasks, data_dir = demo
  exs = _examples(name, split)  # first use: generates the world
  rows = dw.read_tsv(data_dir / tsv)
  assert len(exs) == len(rows)
  vocab = demo_tasks.VOCABULARY
  for ex, row in zip(exs, rows):
    for key in ("inputs", "targets"):
      assert ex[key].dtype == np.int32 and ex[key].ndim == 1
      assert 2 <= len(ex[key]) <= 64 and ex[key][-1] == 1 and 1 not in ex[key][:-1]
      assert 0 not in ex[key]
    for key in ("noise_bucket", "example_id"):
      assert ex[key].dtype == np.int32 and ex[key].shape == ()
    assert (int(ex["noise_bucket"]), int(ex["example_id"])) == (row["noise_bucket"],
                                                                row["example_id"])
    assert ex["inputs_pretokenized"].decode() == demo_tasks.TASK_PREFIX + row["source"]
    assert ex["targets_pretokenized"].decode() == row["target"]
    if len(ex["targets"]) < 64:  # untrimmed: the tokens decode back to the target text
      assert vocab.decode(ex["targets"][:-1].tolist()) == row["target"]
  if name == "demo_nmt_guide" or split != "train":
    assert all(int(ex["noise_bucket"]) == 0 for ex in exs)
  else:
    assert {int(ex["noise_bucket"]) for ex in exs} == {0, 1, 2, 3}


def test_trimming_keeps_eos(demo):
  exs = _examples("demo_nmt", "validation", {"inputs": 12, "targets": 6})
  assert all(len(ex["inputs"]) <= 12 and ex["inputs"][-1] == 1 for ex in exs)
  assert all(len(ex["targets"]) <= 6 and ex["targets"][-1] == 1 for ex in exs)
  assert any(len(ex["inputs"]) == 12 for ex in exs)


def test_vocabulary_is_t5_shaped(demo):
  demo_tasks, data_dir = demo
  vocab = demo_tasks.VOCABULARY
  assert vocab.vocab_size == TINY["vocab_size"] + 100
  assert (vocab.pad_id, vocab.eos_id, vocab.unk_id) == (0, 1, 2)
  assert vocab.sentencepiece_model_file == str(data_dir / "spm.model")
  assert vocab.encode("<extra_id_0>") == [vocab.vocab_size - 1]  # sentinels from the top
  same = vocabularies.sentencepiece_vocabulary(data_dir / "spm.model")
  text = "The big dog saw a cat."
  assert same.encode(text) == vocab.encode(text) and same.vocab_size == vocab.vocab_size


def test_vocabulary_follows_the_data_dir(demo, tmp_path, monkeypatch):
  demo_tasks, data_dir = demo
  monkeypatch.setenv(dw.ENV_DATA_DIR, str(tmp_path))
  monkeypatch.setenv(dw.ENV_CONFIG, json.dumps({**TINY, "num_train": 200, "vocab_size": 250}))
  assert demo_tasks.VOCABULARY.vocab_size == 350
  assert (tmp_path / "manifest.json").is_file()
  monkeypatch.setenv(dw.ENV_DATA_DIR, str(data_dir))
  monkeypatch.setenv(dw.ENV_CONFIG, json.dumps(TINY))
  assert demo_tasks.VOCABULARY.vocab_size == 400


def test_bleu_metric(demo):
  demo_tasks, _ = demo
  refs = ["The big dog saw a cat.", "She will not sit beside the keys."]
  assert demo_tasks.bleu(refs, refs)["bleu"] == pytest.approx(100.0)
  assert demo_tasks.bleu([r.encode() for r in refs], refs)["bleu"] == pytest.approx(100.0)
  assert demo_tasks.bleu(refs, ["x y z w", "q r s t"])["bleu"] == pytest.approx(0.0)
  partial = demo_tasks.bleu(refs, ["The big dog saw a cow.", "She will sit beside the keys."])
  assert 0 < partial["bleu"] < 100
  with pytest.raises(ValueError, match="one prediction per target"):
    demo_tasks.bleu(refs, refs[:1])
  task = seqio.get_mixture_or_task("demo_nmt")
  assert demo_tasks.bleu in task.metric_fns


def test_padded_vocab_size():
  assert [vocabularies.padded_vocab_size(n) for n in (1, 128, 129, 1100, 32100)] == [
      128, 128, 256, 1152, 32128]
  assert vocabularies.padded_vocab_size(1100, multiple=8) == 1104
  with pytest.raises(ValueError, match="positive"):
    vocabularies.padded_vocab_size(0)


def test_check_vocab_fits_model(demo):
  vocab = demo[0].VOCABULARY
  n = vocab.vocab_size
  vocabularies.check_vocab_fits_model(vocab, n)
  vocabularies.check_vocab_fits_model(vocab, vocabularies.padded_vocab_size(n))
  with pytest.raises(ValueError, match=f"has {n} ids but the model's vocab_size is {n - 1}"):
    vocabularies.check_vocab_fits_model(vocab, n - 1)


def test_sentencepiece_vocabulary_rejects_bad_args(tmp_path):
  with pytest.raises(ValueError, match="extra_ids"):
    vocabularies.sentencepiece_vocabulary(tmp_path / "m.model", extra_ids=-1)
  with pytest.raises(ValueError, match="path"):
    vocabularies.sentencepiece_vocabulary("")
