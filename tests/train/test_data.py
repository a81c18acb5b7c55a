"""`DatasetConfig.module` (T5X's MIXTURE_OR_TASK_MODULE) is imported before the task lookup."""
from __future__ import annotations

import dataclasses
import sys

import pytest

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
