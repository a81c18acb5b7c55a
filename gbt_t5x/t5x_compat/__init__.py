"""T5X users' gin files, unmodified: a stand-in `t5x` namespace, put on the path by the CLI only.

T5X is not installable here, so a T5X user's gin file (`from t5x import partitioning`, `from t5x
import utils`, `include 't5x/examples/t5/t5_1_1/small.gin'`, `include
't5x/configs/runs/pretrain.gin'`) would fail at its first line. `activate()` -- called by the entry
points (`gin_utils.parse_gin`) before any gin file is parsed, never on import -- appends this
folder to `sys.path` and to gin's search path when no real `t5x` is importable, so that:
  - `from t5x import partitioning / utils / trainer / models / adafactor / decoding / gin_utils`
    and `from t5x.examples.t5 import network` import this folder's `t5x/` modules, whose names
    are *the same objects* as this project's (`utils.SaveCheckpointConfig` is
    `gbt_t5x.train.train_lib.SaveCheckpointConfig`): gin registers a configurable under its own
    module, so a T5X-named binding and this project's binding set the same parameter;
  - `MIXTURE_OR_TASK_MODULE = 't5.data.mixtures'` (or `'t5.data.tasks'`), as T5X's docs pass
    it, imports this project's registrations of T5's task and mixture names (`t5/`);
  - `include 't5x/examples/t5/t5_1_1/{tiny,small,base,large}.gin'` and
    `'t5x/configs/runs/{pretrain,finetune,eval,infer}.gin'` find this folder's files, which
    include this project's model and run files (`gin/models`, `gin/runs`).
A real installed `t5x` is never shadowed: then nothing is added and T5X's own modules and gin
files are used. T5X parameter names without an equivalent here (e.g. `train.stats_period`,
`utils.SaveCheckpointConfig.save_dataset`) are refused by gin at parse time; `unsupported_message`
rewrites that error into one line naming the T5X binding.
"""
from __future__ import annotations

import importlib.util
import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parent


def real_t5x_installed() -> bool:
  """True when a `t5x` package other than this stand-in is importable."""
  spec = importlib.util.find_spec("t5x")
  if spec is None:
    return False
  origin = pathlib.Path(spec.origin or "").resolve()
  return ROOT not in origin.parents


def activate() -> bool:
  """Makes `t5x` importable and `t5x/...gin` includable (this stand-in) unless a real `t5x` is
  installed. Idempotent; returns whether the stand-in is active."""
  if str(ROOT) in sys.path:
    return True
  if real_t5x_installed():
    return False
  sys.path.append(str(ROOT))  # Appended: anything installed later still comes first.
  import gin
  gin.add_config_file_search_path(str(ROOT))
  return True


# gin's message for a binding of a parameter that a configurable lacks.
_NO_PARAMETER = re.compile(r"Configurable '([\w.]+)' doesn't have a parameter named '(\w+)'")
# T5X module names -> this project's modules the stand-in aliases (for the one-line message).
_T5X_NAMES = {"SaveCheckpointConfig": "utils", "RestoreCheckpointConfig": "utils",
              "CheckpointConfig": "utils", "DatasetConfig": "utils",
              "create_learning_rate_scheduler": "utils", "PjitPartitioner": "partitioning",
              "Trainer": "trainer", "EncoderDecoderModel": "models", "adafactor": "adafactor",
              "T5Config": "network", "Transformer": "network", "train": "train",
              "evaluate": "evaluate", "infer": "infer"}


def unsupported_message(gin_error: str) -> str | None:
  """One line naming the T5X binding gbt_t5x does not support, for gin's "doesn't have a
  parameter" error on a configurable the stand-in provides (else None)."""
  match = _NO_PARAMETER.search(gin_error)
  if match is None:
    return None
  configurable, parameter = match.group(1).split(".")[-1], match.group(2)
  module = _T5X_NAMES.get(configurable)
  if module is None:
    return None
  name = configurable if module in ("train", "evaluate", "infer") else f"{module}.{configurable}"
  return (f"{match.group(0)}; if it is a T5X binding, {name}.{parameter} is not supported by "
          f"gbt_t5x (no equivalent parameter; see README 'Coming from T5X')")
