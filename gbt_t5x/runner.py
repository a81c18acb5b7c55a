"""Runs one gin-configured training in this process and returns what scoring needs.

What it is for: in-process drivers of many runs, the BO search CLI (`gbt_t5x.search`) and the
experiments (scripts/experiments/). `seconds_per_step` reads a run's compute from the trainer's
public timing metrics in its metrics.jsonl.

The gin files mirror T5X (`import __main__ as train_script`; `train_script.train.*`), so the
running program's `__main__` must expose `train`: `run_training` makes sure it does. Gin state is
cleared before every run, so runs in one process do not leak bindings into each other. Runs also
use JAX's persistent compilation cache (`compilation_cache_dir`) so that repeated evaluation and
decoding functions are compiled once per experiment.
"""
from __future__ import annotations

import dataclasses
import os
import sys
import time
from typing import Any, Callable, Sequence

import gin

from gbt_t5x import gin_utils
from gbt_t5x.train import train_lib

_train_using_gin = gin_utils.train_configurable()


@gin.configurable
def experiment_model(model: Any = gin.REQUIRED) -> Any:
  """The gin-configured model (bound to %MODEL by `run_training`), for scoring after training."""
  return model


@dataclasses.dataclass
class TrainResult:
  """One finished run.

  Attributes:
    model: the `EncoderDecoderModel` it trained.
    params: final params (on the mesh).
    train_steps: model steps taken in this call (not counting a resumed run's earlier steps).
    final_step: the run's global step at the end.
    wall_seconds: wall-clock seconds of `train` (compilation included).
    model_dir: its run directory.
  """
  model: Any
  params: Any
  train_steps: int
  final_step: int
  wall_seconds: float
  model_dir: str


def ensure_main_exposes_train() -> None:
  """Gin files bind `__main__.train`; give the running program's `__main__` that attribute."""
  main = sys.modules.get("__main__")
  if main is not None and getattr(main, "train", None) is not train_lib.train:
    setattr(main, "train", train_lib.train)


def enable_compilation_cache(cache_dir: str) -> None:
  """Turns on JAX's persistent compilation cache in `cache_dir` (every compile is cached)."""
  import jax
  os.makedirs(cache_dir, exist_ok=True)
  jax.config.update("jax_compilation_cache_dir", cache_dir)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def parse(gin_files: Sequence[str], bindings: Sequence[str]) -> None:
  """Clears gin and parses `gin_files` then `bindings` (one-line ValueError on a gin problem)."""
  ensure_main_exposes_train()
  gin.clear_config()
  gin_utils.parse_gin(list(gin_files), ["experiment_model.model = %MODEL", *bindings])


def run_training(gin_files: Sequence[str], bindings: Sequence[str],
                 print_fn: Callable[[str], None] = print) -> TrainResult:
  """Trains as `python -m gbt_t5x.train --gin_file=... --gin_bindings=...` would, in process.

  Args:
    gin_files: gin files (searched in the repository's gin/ folder too).
    bindings: gin bindings `NAME = VALUE`, applied after the files (must set MODEL_DIR).
    print_fn: receives the trainer's progress and eval lines.

  Returns:
    the finished run; a resumed run (a checkpoint in MODEL_DIR) counts only its new steps.
  """
  parse(gin_files, bindings)
  model_dir = gin.query_parameter("%MODEL_DIR")
  model = experiment_model()
  start_step = latest_step(model_dir)
  start = time.time()
  final_step, state = _train_using_gin(summarize_config_fn=gin_utils.write_config_gin,
                                       print_fn=print_fn)
  return TrainResult(model=model, params=state.params, train_steps=final_step - start_step,
                     final_step=final_step, wall_seconds=time.time() - start, model_dir=model_dir)


def query_macro(name: str) -> Any:
  """The value of gin macro `name` in the current (last parsed) configuration."""
  return gin.query_parameter(f"%{name}")


def latest_step(model_dir: str) -> int:
  """The step of the latest checkpoint in `model_dir` (0 if none)."""
  from gbt_t5x import fileio
  from gbt_t5x.train import checkpoints
  ckpt_dir = fileio.join(model_dir, checkpoints.CHECKPOINTS_DIR)
  if not fileio.isdir(ckpt_dir):
    return 0
  return int(checkpoints.make_checkpointer(ckpt_dir).latest_step() or 0)


def seconds_per_step(model_dir: str, cpu: bool = False) -> float:
  """Steady-state seconds per model step of a run: the median over its logged windows
  (`train/timing/seconds_per_step` in metrics.jsonl, or with `cpu` the process's CPU seconds
  `train/timing/cpu_seconds_per_step`; windows holding compilation are not timed); NaN if none."""
  import math

  import numpy as np

  from gbt_t5x.train import summaries
  path = os.path.join(model_dir, "metrics.jsonl")
  if not os.path.exists(path):
    return math.nan
  key = "train/timing/cpu_seconds_per_step" if cpu else "train/timing/seconds_per_step"
  values = [r[key] for r in summaries.read_metrics_log(path) if r.get(key) is not None]
  return float(np.median(values)) if values else math.nan
