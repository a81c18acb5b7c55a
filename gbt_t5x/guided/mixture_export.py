"""Export learned mixture weights as a SeqIO mixture a plain run trains on.

    python -m gbt_t5x.guided.export MODEL_DIR --as_mixture [--rates final|mean]

A guided mixture-weights run (gin/guided/mixture_weights.gin) learns one weight per leaf task of
its train mixture. This writes MODEL_DIR/learned_mixture.gin, which binds
`MIXTURE_OR_TASK_NAME = @data_ids.learned_mixture()`: at run time that registers
`<mixture>_learned`, the run's mixture with each task's rate multiplied by its learned weight
(the final weights, or their mean over the run with `--rates mean`), and names it as the train
task. Add the file after a plain run's gin files to train on the learned rates:

    python -m gbt_t5x.train --gin_file=<the run's gin files> \
        --gin_file=MODEL_DIR/learned_mixture.gin --gin.MODEL_DIR=...

The learned per-step schedule (the weights as loss weights on the original mixture) is the
ordinary schedule export (`learned_schedule.gin`).

The gin text is written as plain strings; this module must not import gin, seqio or other
`gbt_t5x` modules than `gbt_t5x.guided` and `gbt_t5x.fileio` (MODEL_DIR may be `gs://...`).
"""
from __future__ import annotations

import re
from typing import Any, Sequence

import numpy as np

from gbt_t5x import fileio, search_space

MIXTURE_FILE = "learned_mixture.gin"
RATES = ("final", "mean")
_MACRO = re.compile(r"^(MIXTURE_OR_TASK_NAME|MIXTURE_OR_TASK_MODULE)\s*=\s*(.+?)\s*$")
_NAME = re.compile(r"^[A-Za-z0-9_.:\-]+$")


def run_mixture(model_dir: str) -> tuple[str, str | None]:
  """(train mixture name, task module or None) from MODEL_DIR/config.gin, the run's resolved
  configuration.

  Raises:
    ValueError: one line, when config.gin is missing or does not name the train task.
  """
  path = fileio.join(model_dir, "config.gin")
  if not fileio.exists(path):
    raise ValueError(f"{path} not found: give --mixture (and --module) explicitly")
  found: dict[str, Any] = {}
  for line in fileio.read_text(path).splitlines():
    match = _MACRO.match(line)
    if match:
      value = match.group(2)
      found[match.group(1)] = None if value == "None" else value.strip("'\"")
  if not found.get("MIXTURE_OR_TASK_NAME"):
    raise ValueError(f"{path} does not set MIXTURE_OR_TASK_NAME: give --mixture explicitly")
  return found["MIXTURE_OR_TASK_NAME"], found.get("MIXTURE_OR_TASK_MODULE")


def learned_weights(rows: Sequence[dict[str, Any]], rates: str = "final") -> dict[str, float]:
  """{leaf task name: learned weight} from a mixture-weights run's trajectory rows: the last
  row's weights ('final') or their mean over all rows ('mean').

  Raises:
    ValueError: one line, for an unknown `rates` or rows without named data weights.
  """
  if rates not in RATES:
    raise ValueError(f"--rates must be one of {RATES}, got {rates!r}")
  named = [r for r in rows if r.get("entry_names", {}).get("data_weights")
           and "data_weights" in r.get("values", {})]
  if not named:
    raise ValueError("the trajectory holds no named data (mixture) weights: is this a guided "
                     "mixture-weights run (gin/guided/mixture_weights.gin)?")
  names = [str(n) for n in named[-1]["entry_names"]["data_weights"]]
  values = np.array([r["values"]["data_weights"] for r in named], np.float64)
  chosen = values[-1] if rates == "final" else values.mean(axis=0)
  return {name: float(w) for name, w in zip(names, chosen)}


def _check_names(names: Sequence[str]) -> None:
  for name in names:
    if not _NAME.match(name):
      raise ValueError(f"refusing to write {name!r} into gin: not a SeqIO task or module name")


def search_gin_text(mixture: str, module: str | None, task_names: Sequence[str]) -> str:
  """A gin file for searching `mixture`'s rates with `gbt_t5x.search` (or BO in an experiment):
  it trains on `<mixture>_searched`, the mixture with the rate of `task_names[i]` multiplied by
  the macro `MIXTURE_WEIGHT_i` (default 1), which the search space's `mixture_weight_i` binds.

  Raises:
    ValueError: one line, for a name that is not a plain SeqIO name, or more tasks than the
      search space has `mixture_weight_i` entries for (`search_space.MAX_MIXTURE_TASKS`).
  """
  if len(task_names) > search_space.MAX_MIXTURE_TASKS:
    raise ValueError(f"{mixture} has {len(task_names)} leaf tasks: a rate search covers at most "
                     f"{search_space.MAX_MIXTURE_TASKS}")
  _check_names([mixture, *task_names, *([module] if module else [])])
  entries = ", ".join(f"{name!r}: %MIXTURE_WEIGHT_{i}" for i, name in enumerate(task_names))
  return "\n".join([
      f"# Searched mixture rates: {mixture}_searched is {mixture} with task i's rate multiplied",
      "# by MIXTURE_WEIGHT_i (search space entry mixture_weight_i):",
      *[f"#   {i}: {name}" for i, name in enumerate(task_names)],
      "from __gin__ import dynamic_registration",
      "from gbt_t5x.data import data_ids",
      "",
      *[f"MIXTURE_WEIGHT_{i} = 1.0" for i in range(len(task_names))],
      "MIXTURE_OR_TASK_NAME = @data_ids.learned_mixture()",
      f"data_ids.learned_mixture.name = {mixture + '_searched'!r}",
      f"data_ids.learned_mixture.source = {mixture!r}",
      f"data_ids.learned_mixture.weights = {{{entries}}}",
      f"data_ids.learned_mixture.module = {module!r}",
  ]) + "\n"


def mixture_gin_text(mixture: str, module: str | None, weights: dict[str, float], source: str,
                     rates: str) -> str:
  """The gin file registering `<mixture>_learned` with `weights` and training on it.

  Raises:
    ValueError: one line, when a task or mixture name is not a plain SeqIO name (it is written
      into gin).
  """
  _check_names([mixture, *weights, *([module] if module else [])])
  learned = f"{mixture}_learned"
  entries = ", ".join(f"{name!r}: {w!r}" for name, w in weights.items())
  return "\n".join([
      f"# Learned mixture rates exported from {source} ({rates} weights): {learned} is",
      f"# {mixture} with each task's rate multiplied by its weight. Add this file after a plain",
      "# run's gin files to train on it.",
      "from __gin__ import dynamic_registration",
      "from gbt_t5x.data import data_ids",
      "",
      "MIXTURE_OR_TASK_NAME = @data_ids.learned_mixture()",
      f"data_ids.learned_mixture.name = {learned!r}",
      f"data_ids.learned_mixture.source = {mixture!r}",
      f"data_ids.learned_mixture.weights = {{{entries}}}",
      f"data_ids.learned_mixture.module = {module!r}",
  ]) + "\n"


def export_mixture(model_dir: str, rows: Sequence[dict[str, Any]], rates: str = "final",
                   mixture: str | None = None, module: str | None = None,
                   out: str | None = None) -> str:
  """Writes learned_mixture.gin for a mixture-weights run; returns its path."""
  if mixture is None:
    mixture, found_module = run_mixture(model_dir)
    module = module or found_module
  path = out or fileio.join(model_dir, MIXTURE_FILE)
  fileio.write_text(path, mixture_gin_text(mixture, module, learned_weights(rows, rates),
                                           fileio.absolute(model_dir), rates))
  return path
