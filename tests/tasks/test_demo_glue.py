"""Tests of the demo downstream SeqIO tasks (`gbt_t5x_tasks.demo_glue`) on a tiny world."""
import json

import numpy as np
import pytest
import seqio

from gbt_t5x.data import demo_downstream as dd
from gbt_t5x.data import demo_world as dw

TINY = dict(seed=5, num_train=200, num_guide=20, num_dev=20, num_test=20, num_mono=80,
            vocab_size=300)
SIZES = dict(num_train=200, num_validation=24, num_test=20)
LENGTHS = {"inputs": 128, "targets": 16}  # tiny vocab: labels take up to 12 pieces


@pytest.fixture(scope="module")
def demo_glue(tmp_path_factory):
  """The task module with the environment pointing at an empty tmp dir (generated on use)."""
  data_dir = tmp_path_factory.mktemp("demo_glue")
  with pytest.MonkeyPatch.context() as mp:
    mp.setenv(dw.ENV_DATA_DIR, str(data_dir))
    mp.setenv(dw.ENV_CONFIG, json.dumps(TINY))
    mp.setenv(dd.ENV_CONFIG, json.dumps(SIZES))
    from gbt_t5x_tasks import demo_glue as module  # pylint: disable=g-import-not-at-top
    module.register_demo_glue_tasks()  # fresh registrations if another test imported it first
    assert not list(data_dir.iterdir()), "importing the tasks must not generate data"
    yield module, data_dir


def _examples(name, split, lengths=LENGTHS):
  ds = seqio.get_mixture_or_task(name).get_dataset(sequence_length=lengths, split=split,
                                                   shuffle=False)
  return list(ds.as_numpy_iterator())


@pytest.mark.parametrize("task", dd.TASKS)
@pytest.mark.parametrize("split", ["validation", "test"])
def test_eval_splits_are_glue_formatted_tokens_ending_in_eos(demo_glue, task, split):
  module, data_dir = demo_glue
  exs = _examples(f"demo_{task}", split)
  rows = dd.read_tsv(data_dir / dd.tsv_name(task, split))
  assert len(exs) == len(rows) == SIZES[f"num_{split}"]
  vocab = module.demo.VOCABULARY
  for ex, row in zip(exs, rows):
    for key in ("inputs", "targets"):
      assert ex[key].dtype == np.int32 and ex[key].ndim == 1
      assert ex[key][-1] == vocab.eos_id and vocab.eos_id not in ex[key][:-1]
    assert ex["idx"].dtype == np.int32 and int(ex["idx"]) == row["idx"]
    fields = " ".join(f"{c}: {row[c]}" for c in dd.TEXT_COLUMNS[task])
    assert ex["inputs_pretokenized"].decode() == f"{module.BENCHMARKS[task]} {fields}"
    assert ex["targets_pretokenized"].decode() == dd.LABEL_NAMES[task][row["label"]]
    assert vocab.decode(ex["targets"][:-1].tolist()) == dd.LABEL_NAMES[task][row["label"]]


@pytest.mark.parametrize("task", dd.TASKS)
def test_guide_and_train_partition_the_train_file(demo_glue, task):
  _, data_dir = demo_glue
  rows = dd.read_tsv(data_dir / dd.tsv_name(task, "train"))
  train = [int(ex["idx"]) for ex in _examples(f"demo_{task}", "train")]
  guide = [int(ex["idx"]) for ex in _examples(f"demo_{task}_guide", "train")]
  assert guide == [int(ex["idx"]) for ex in _examples(f"demo_{task}_guide", "validation")]
  assert not set(train) & set(guide) and sorted(train + guide) == [r["idx"] for r in rows]
  assert 0 < len(guide) < 30  # 5 % of 200, with hash noise


def test_prefixes_and_labels_survive_the_demo_vocabulary(demo_glue):
  module, _ = demo_glue
  vocab = module.demo.VOCABULARY
  words = list(module.BENCHMARKS.values()) + [c + ":" for cols in dd.TEXT_COLUMNS.values()
                                              for c in cols]
  words += [n for names in dd.LABEL_NAMES.values() for n in names]
  for w in words:
    ids = vocab.encode(w)
    assert vocab.unk_id not in ids and vocab.decode(ids) == w
  # Every label + EOS fits the default targets length (a truncated label can never be scored).
  for name in [n for names in dd.LABEL_NAMES.values() for n in names]:
    assert len(vocab.encode(name)) + 1 <= module.DEFAULT_SEQUENCE_LENGTH["targets"], name


def test_mixture_covers_the_tasks(demo_glue):
  module, _ = demo_glue
  mixture = seqio.get_mixture_or_task(module.MIXTURE)
  assert sorted(t.name for t in mixture.tasks) == ["demo_cola", "demo_mrpc", "demo_sst2"]
  guide = seqio.get_mixture_or_task(module.MIXTURE + "_guide")
  assert sorted(t.name for t in guide.tasks) == ["demo_cola_guide", "demo_mrpc_guide",
                                                  "demo_sst2_guide"]
  ex = next(iter(mixture.get_dataset(LENGTHS, split="validation", shuffle=False)))
  assert ex["inputs"].dtype == np.int32


@pytest.mark.parametrize("task, targets, predictions, expected", [
    # t = [1, 0, 1, 0], p = [1, 1, 1, 0]: TP 2, TN 1, FP 1, FN 0 -> 2 / sqrt(3*2*2*1).
    ("cola", ["acceptable", "unacceptable", "acceptable", "unacceptable"],
     ["acceptable", "acceptable", "acceptable", "unacceptable"],
     {"matthews_corrcoef": 100 * 2 / np.sqrt(12)}),
    # t = [1, 1, 1, 0], p = [1, 1, 0, -1 -> scored as 1]: TP 2, FP 1, FN 1 -> F1 4/6; 2 hits.
    ("mrpc", ["equivalent", "equivalent", "equivalent", "not equivalent"],
     ["equivalent", "equivalent", "not equivalent", "not_equivalent"],
     {"f1": 100 * 4 / 6, "accuracy": 50.0}),
    ("sst2", ["positive", "negative", "negative", "positive"],
     ["positive", "negative", "positive", " positive "], {"accuracy": 75.0}),
])
def test_postprocessor_and_metric_on_fixed_predictions(demo_glue, task, targets, predictions,
                                                       expected):
  del demo_glue
  t = seqio.get_mixture_or_task(f"demo_{task}")
  target_ids = [t.postprocess_fn(x, example=None, is_target=True) for x in targets]
  pred_ids = [t.postprocess_fn(x.encode(), example=None, is_target=False) for x in predictions]
  scores = {}
  for fn in t.metric_fns:
    scores.update(fn(target_ids, pred_ids))
  assert scores == pytest.approx(expected)
