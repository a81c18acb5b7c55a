"""The README's "Running on real data" gin files parse, name registered SeqIO tasks (train and
guide), configure T5.1.1 small and valid guided hyper-parameters. Nothing is trained: the real
datasets cannot be prepared here (their loading is tested with mock data in tests/tasks/)."""
from __future__ import annotations

import importlib
import sys

import gin
import pytest
import seqio

from gbt_t5x import gin_utils
from gbt_t5x.guided import specs as specs_lib
from gbt_t5x.models import network
from gbt_t5x.train import train_lib

REQUIRED = ["MODEL_DIR = '/tmp/unused'", "INITIAL_CHECKPOINT_PATH = '/tmp/unused_ckpt'",
            "CHECKPOINT_PATH = '/tmp/unused_ckpt'", "EVAL_OUTPUT_DIR = '/tmp/unused_eval'"]
# file -> (train / eval task, guide task or None)
FILES = {
    "experiments/real/c4_t5_small_guided.gin": ("c4_span_corruption",
                                                "c4_span_corruption_guide"),
    "experiments/real/wmt19_lt_en_guided.gin": ("wmt19_translate_lt_en",
                                                "wmt19_translate_lt_en_guide"),
    "experiments/real/glue_finetune.gin": ("glue_v002_proportional", None),
    "experiments/real/glue_eval.gin": ("glue_v002_proportional", None),
}


@pytest.fixture
def parsed(monkeypatch):
  """`parsed(file)`: parses `file` (+ the required paths) with `__main__.train` and
  `__main__.evaluate` present, as the entry points provide them; clears gin afterwards."""
  import gbt_t5x.eval as eval_main
  monkeypatch.setattr(sys.modules["__main__"], "train", train_lib.train, raising=False)
  monkeypatch.setattr(sys.modules["__main__"], "evaluate", eval_main.evaluate, raising=False)

  def parse(path: str) -> None:
    gin.clear_config()
    gin_utils.parse_gin([path], REQUIRED)  # Unused macros among REQUIRED are harmless.

  yield parse
  gin.clear_config()


@pytest.mark.parametrize("path", sorted(FILES))
def test_real_data_gin_file_parses_and_names_registered_tasks(parsed, path):
  parsed(path)
  task, guide = FILES[path]
  assert gin.query_parameter("%MIXTURE_OR_TASK_NAME") == task
  importlib.import_module(gin.query_parameter("%MIXTURE_OR_TASK_MODULE"))
  seqio.get_mixture_or_task(task)  # Raises if not registered.
  config = gin.query_parameter("network.Transformer.config").scoped_configurable_fn()
  assert (config.emb_dim, config.num_heads, config.head_dim, config.mlp_dim,
          config.num_encoder_layers, config.vocab_size) == (512, 6, 64, 1024, 8, 32128)
  if guide is None:
    return
  assert gin.query_parameter("%GUIDE_MIXTURE_OR_TASK_NAME") == guide
  seqio.get_mixture_or_task(guide)
  hparams = [ref.scoped_configurable_fn() for ref in gin.query_parameter("%GUIDED_HPARAMS")]
  assert all(isinstance(h, specs_lib.GuidedHParam) for h in hparams)
  assert "learning_rate" in {h.name for h in hparams}
