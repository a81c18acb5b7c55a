"""Mixture-task ids (guided mixture weights): every example of a SeqIO mixture carries its leaf
task's id through packing; the stream is SeqIO's own; bad mixtures fail in one line."""
from __future__ import annotations

import numpy as np
import pytest
import seqio
import tensorflow as tf

from gbt_t5x.data import data_ids
from gbt_t5x.guided import specs as specs_lib
from gbt_t5x.train import data as data_lib

VOCAB = seqio.PassThroughVocabulary(size=64, eos_id=1)
FEATURES = {k: seqio.Feature(VOCAB, add_eos=True) for k in ("inputs", "targets")}
# Task name -> (first token id, number of examples): each task's tokens lie in its own range, so a
# token says which task it came from.
TASKS = {"gbt_t5x_mix_a": (10, 40), "gbt_t5x_mix_b": (30, 40), "gbt_t5x_mix_c": (50, 40),
         "gbt_t5x_mix_empty": (20, 0)}


def _source_of(first: int, count: int):
  def source(split, shuffle_files, seed=None):
    del split, shuffle_files, seed
    rng = np.random.RandomState(first)
    lengths = rng.randint(2, 7, size=count)
    rows = [list(rng.randint(first, first + 10, size=n)) for n in lengths]
    return tf.data.Dataset.from_generator(
        lambda: ({"inputs": r[:2], "targets": r} for r in rows),
        output_signature={k: tf.TensorSpec([None], tf.int32) for k in ("inputs", "targets")})
  return source


@pytest.fixture(scope="module", autouse=True)
def registered():
  for name, (first, count) in TASKS.items():
    seqio.TaskRegistry.remove(name)
    seqio.TaskRegistry.add(name, source=seqio.FunctionDataSource(_source_of(first, count),
                                                                 splits=("train",)),
                           preprocessors=[seqio.preprocessors.append_eos],
                           output_features=FEATURES)
  mixtures = {"gbt_t5x_mix_inner": [("gbt_t5x_mix_b", 1.0), ("gbt_t5x_mix_c", 3.0)],
              "gbt_t5x_mix_nested": [("gbt_t5x_mix_a", 2.0), ("gbt_t5x_mix_inner", 2.0)],
              "gbt_t5x_mix_with_empty": [("gbt_t5x_mix_a", 1.0), ("gbt_t5x_mix_empty", 1.0)],
              "gbt_t5x_mix_zero_rate": [("gbt_t5x_mix_a", 1.0), ("gbt_t5x_mix_b", 0.0)]}
  for name, members in mixtures.items():
    seqio.MixtureRegistry.remove(name)
    seqio.MixtureRegistry.add(name, members)
  yield


def _cfg(name: str, pack: bool, **kw) -> data_lib.DatasetConfig:
  return data_lib.DatasetConfig(name, {"inputs": 8, "targets": 16}, "train", 4, shuffle=True,
                                seed=7, pack=pack, data_id_feature=data_ids.MIXTURE_TASK, **kw)


def _source_task(token: int) -> int:
  """The leaf-task id (names sorted: a, b, c) a target token came from."""
  return {1: 0, 3: 1, 5: 2}[token // 10]


def test_leaf_tasks_of_a_nested_mixture_and_their_names():
  assert data_ids.data_id_names("gbt_t5x_mix_nested", data_ids.MIXTURE_TASK) == (
      "gbt_t5x_mix_a", "gbt_t5x_mix_b", "gbt_t5x_mix_c")
  assert data_ids.mixture_weights_shape("gbt_t5x_mix_nested") == (3,)


@pytest.mark.parametrize("pack", [False, True])
def test_every_target_token_carries_its_source_task_id(pack):
  batches = list(data_lib.get_dataset(_cfg("gbt_t5x_mix_nested", pack)).take(30)
                 .as_numpy_iterator())
  counts = np.zeros(3)
  for batch in batches:
    real = batch["decoder_loss_weights"] > 0
    tokens, ids = batch["decoder_target_tokens"][real], batch["decoder_data_ids"][real]
    content = tokens != 1  # EOS belongs to its example's segment: check it by its neighbours.
    assert [_source_task(t) for t in tokens[content]] == ids[content].tolist()
    if pack:  # Within a packed row every segment keeps its own id, EOS included.
      for row, seg in zip(batch["decoder_data_ids"], batch["decoder_segment_ids"]):
        for s in set(seg[seg > 0].tolist()):
          assert len(set(row[seg == s].tolist())) == 1
    counts += np.bincount(ids[content], minlength=3)
  # Rates: a 2 of 4, b 0.5, c 1.5 (the inner mixture's 2 split 1:3): tokens roughly follow.
  assert counts[0] > counts[1] and counts[2] > counts[1]
  if pack:
    assert any(len(set(r[r > 0].tolist())) > 1 for b in batches
               for r in b["decoder_segment_ids"])  # Rows really pack several examples.


def test_the_stream_is_seqios_own_mixture_stream():
  cfg = _cfg("gbt_t5x_mix_nested", pack=False)
  ours = data_lib.mixture_with_task_ids(cfg, seqio.ShardInfo(0, 1))
  theirs = seqio.get_mixture_or_task("gbt_t5x_mix_nested").get_dataset(
      {"inputs": 8, "targets": 16}, split="train", shuffle=True, seed=7)
  for a, b in zip(ours.take(50).as_numpy_iterator(), theirs.take(50).as_numpy_iterator()):
    assert a["targets"].tolist() == b["targets"].tolist()
    assert a["inputs"].tolist() == b["inputs"].tolist()
    assert set(a[data_lib.DATA_IDS_FEATURE].tolist()) == {
        _source_task(int(a["targets"][0])) + data_lib.ID_OFFSET}


@pytest.mark.parametrize("name, message", [
    ("gbt_t5x_mix_a", "need a SeqIO mixture as the train task; 'gbt_t5x_mix_a' is a task"),
    ("gbt_t5x_mix_zero_rate", "rate of task gbt_t5x_mix_b must be a positive number, got 0"),
    ("gbt_t5x_mix_with_empty", "task gbt_t5x_mix_empty split 'train' yields no examples"),
])
def test_bad_mixtures_fail_in_one_line_before_training(name, message):
  with pytest.raises(ValueError, match=message) as info:
    data_lib.first_batch_or_error(_cfg(name, pack=True))
  assert "\n" not in str(info.value)


def test_a_names_list_of_the_wrong_length_is_refused():
  names = data_ids.data_id_names("gbt_t5x_mix_nested", data_ids.MIXTURE_TASK)
  spec = specs_lib.GuidedHParam("data_weights", 1.0, "exp", shape=(2,), entry_names=names)
  with pytest.raises(ValueError, match="3 entry names for a data-weight table of 2 entries"):
    specs_lib.validate_specs([spec], ())


def _bucket_source(split, shuffle_files, seed=None):
  del split, shuffle_files, seed
  rng = np.random.RandomState(0)
  rows = [(b, list(rng.randint(10 + 20 * b, 20 + 20 * b, size=rng.randint(2, 7))))
          for b in rng.randint(0, 2, size=60)]
  return tf.data.Dataset.from_generator(
      lambda: ({"inputs": r[:2], "targets": r, "bucket": b} for b, r in rows),
      output_signature={"inputs": tf.TensorSpec([None], tf.int32),
                        "targets": tf.TensorSpec([None], tf.int32),
                        "bucket": tf.TensorSpec([], tf.int32)})


def test_task_feature_ids_survive_packing_id_zero_included():
  """The data-weights path (an integer task feature, e.g. the demo's noise bucket): a packed row
  that holds an id-0 example keeps every segment's own id (SeqIO's packing drops zeros)."""
  name = "gbt_t5x_bucket_task"
  seqio.TaskRegistry.remove(name)
  seqio.TaskRegistry.add(name, source=seqio.FunctionDataSource(_bucket_source, splits=("train",)),
                         preprocessors=[seqio.preprocessors.append_eos], output_features=FEATURES)
  cfg = data_lib.DatasetConfig(name, {"inputs": 8, "targets": 16}, "train", 4, shuffle=False,
                               pack=True, data_id_feature="bucket")
  mixed_rows = 0
  for batch in data_lib.get_dataset(cfg).take(10).as_numpy_iterator():
    real = (batch["decoder_loss_weights"] > 0) & (batch["decoder_target_tokens"] != 1)
    tokens = batch["decoder_target_tokens"][real]
    assert batch["decoder_data_ids"][real].tolist() == ((tokens >= 30).astype(int)).tolist()
    mixed_rows += sum(len(set(r[w > 0].tolist())) > 1 for r, w in
                      zip(batch["decoder_data_ids"], batch["decoder_loss_weights"]))
  assert mixed_rows > 0  # Rows that pack a bucket-0 and a bucket-1 example exist.
