"""`DatasetConfig.module` (T5X's MIXTURE_OR_TASK_MODULE) is imported before the task lookup;
under a read cache (the harness's `trust_unchanged_data`) a configuration is read once per data
version."""
from __future__ import annotations

import dataclasses
import sys

import pytest
import seqio
import tensorflow as tf

from gbt_t5x.train import data as data_lib

MODULE = '''
import seqio
import tensorflow as tf

def _source(split, shuffle_files, seed=None):
  return tf.data.Dataset.from_tensor_slices({"inputs": [[3, 4]], "targets": [[5, 6]]})

vocab = seqio.PassThroughVocabulary(size=16)
seqio.TaskRegistry.add(
    "gbt_t5x_test_task_from_module", source=seqio.FunctionDataSource(_source, splits=("train",)),
    preprocessors=[], output_features={"inputs": seqio.Feature(vocab, add_eos=False),
                                       "targets": seqio.Feature(vocab, add_eos=False)})
'''


def test_task_module_is_imported_before_the_lookup(tmp_path, monkeypatch):
  (tmp_path / "gbt_t5x_test_task_module.py").write_text(MODULE)
  monkeypatch.syspath_prepend(str(tmp_path))
  cfg = data_lib.DatasetConfig("gbt_t5x_test_task_from_module", {"inputs": 4, "targets": 4},
                               "train", 1, shuffle=False)
  with pytest.raises(ValueError, match="unknown SeqIO task or mixture"):
    data_lib.task_of(cfg)  # Not registered without its module.
  cfg = dataclasses.replace(cfg, module="gbt_t5x_test_task_module")
  assert data_lib.task_of(cfg).name == "gbt_t5x_test_task_from_module"
  assert "gbt_t5x_test_task_module" in sys.modules


_ROWS = {"targets": [[5, 6], [7, 8], [9, 10]]}


def _rows_source(split, shuffle_files, seed=None):
  return tf.data.Dataset.from_tensor_slices({"inputs": [[3, 4]] * len(_ROWS["targets"]),
                                             "targets": _ROWS["targets"]})


def test_trusted_data_is_read_once_per_version(monkeypatch):
  """Under the experiment harness's `trust_unchanged_data` (a `data_lib.ReadCache`) an evaluation
  split is read once per data version and replayed (read-only) however far an earlier read got;
  another version, or no trust, reads the data as it is now."""
  from harness import data_cache
  vocab = seqio.PassThroughVocabulary(size=16)
  features = {k: seqio.Feature(vocab, add_eos=False) for k in ("inputs", "targets")}
  name = "gbt_t5x_test_rows_task"
  seqio.TaskRegistry.remove(name)
  seqio.TaskRegistry.add(name, source=seqio.FunctionDataSource(_rows_source, splits=("test",)),
                         preprocessors=[], output_features=features)
  monkeypatch.setitem(_ROWS, "targets", [[5, 6], [7, 8], [9, 10]])
  cfg = data_lib.DatasetConfig(name, {"inputs": 2, "targets": 2}, "test", 1, shuffle=False,
                               num_epochs=1)
  targets = lambda: [b["decoder_target_tokens"][0].tolist()  # noqa: E731
                     for b in data_lib.single_pass_batches(cfg)]
  try:
    data_cache.trust_unchanged_data("world a")
    first = next(data_lib.single_pass_batches(cfg))  # A partial read...
    assert first["decoder_target_tokens"].tolist() == [[5, 6]]
    assert data_lib.first_batch_or_error(cfg)["decoder_target_tokens"].tolist() == [[5, 6]]
    monkeypatch.setitem(_ROWS, "targets", [[1, 2], [3, 4]])  # (breaks the trust on purpose)
    assert targets() == [[5, 6], [7, 8], [9, 10]]  # ...then the rest, from the same read.
    assert data_lib.first_batch_or_error(cfg)["decoder_target_tokens"].tolist() == [[5, 6]]
    with pytest.raises(ValueError, match="read-only"):
      first["decoder_target_tokens"][0, 0] = 0
    data_cache.trust_unchanged_data("world b")
    assert targets() == [[1, 2], [3, 4]]
  finally:
    data_cache.trust_unchanged_data(None)
  monkeypatch.setitem(_ROWS, "targets", [[11, 12]])
  assert targets() == [[11, 12]]
  with pytest.raises(ValueError, match="shuffle=False and num_epochs=1"):
    next(data_lib.single_pass_batches(dataclasses.replace(cfg, num_epochs=None)))
