"""The compact search-space spec of `gbt_t5x.search` and its gin bindings.

A spec is `NAME=LOW:HIGH[:log],NAME=...`, e.g. `learning_rate=1e-4:1e-1:log,b1=0.5:0.99`. Each
NAME is a hyper-parameter a guided run can learn, held constant for a whole plain run:

* `learning_rate`: the base LR of `learning_rate.create_learning_rate_scheduler` (the model's
  schedule; a guided run learns a multiplier on it);
* `lr_multiplier`: the same, as a multiple of the base LR already configured (a replayed or
  guided multiplier's constant counterpart);
* `b1`, `b2`, `eps`, `weight_decay`: AdamW (`optimizers.adamw`);
* `label_smoothing`: the model's label smoothing (the `LABEL_SMOOTHING` macro);
* `data_weight_0` .. `data_weight_3`: the constant loss weight of each noise bucket of the demo
  translation task (the `noise_bucket` feature: clean, misaligned, truncated, untranslated copy);
  a run using them also includes `DATA_WEIGHTS_GIN` (`gin_files`);
* `noisy_data_weight`: one weight shared by the three noisy buckets (clean keeps 1);
* `mixture_weight_0` .. `mixture_weight_7`: the rate multiplier of a SeqIO mixture's i-th leaf
  task (the `MIXTURE_WEIGHT_i` macros of a gin file written by
  `gbt_t5x.guided.mixture_export.search_gin_text`, which the run must also include).

Must not import jax, gin or optuna.
"""
from __future__ import annotations

import dataclasses
import math
import re
from typing import Callable, Mapping, Sequence

_LR = "learning_rate.create_learning_rate_scheduler.base_learning_rate"
MAX_MIXTURE_TASKS = 8  # mixture_weight_0 .. _7

# name -> (gin binding(s) template taking the value, hard bounds (low, high) of a valid value).
KNOWN: dict[str, tuple[Callable[[float], str | list[str]], tuple[float, float]]] = {
    "learning_rate": (lambda v: f"{_LR} = {v!r}", (0.0, math.inf)),
    "b1": (lambda v: f"optimizers.adamw.b1 = {v!r}", (0.0, 1.0)),
    "b2": (lambda v: f"optimizers.adamw.b2 = {v!r}", (0.0, 1.0)),
    "eps": (lambda v: f"optimizers.adamw.eps = {v!r}", (0.0, math.inf)),
    "weight_decay": (lambda v: f"optimizers.adamw.weight_decay = {v!r}", (0.0, math.inf)),
    "label_smoothing": (lambda v: f"LABEL_SMOOTHING = {v!r}", (0.0, 1.0)),
    **{f"data_weight_{i}": ((lambda v, i=i: f"DATA_WEIGHT_{i} = {v!r}"), (0.0, math.inf))
       for i in range(4)},
    # One weight shared by the three noisy buckets (the clean bucket keeps weight 1).
    "noisy_data_weight": (lambda v: [f"DATA_WEIGHT_{i} = {v!r}" for i in (1, 2, 3)],
                          (0.0, math.inf)),
    **{f"mixture_weight_{i}": ((lambda v, i=i: f"MIXTURE_WEIGHT_{i} = {v!r}"), (0.0, math.inf))
       for i in range(MAX_MIXTURE_TASKS)},
}
DATA_WEIGHTS_GIN = "search/data_weights.gin"

LR_MULTIPLIER = "lr_multiplier"
_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_ITEM = re.compile(rf"^([A-Za-z_]\w*)=({_NUMBER}):({_NUMBER})(?::(log))?$")


@dataclasses.dataclass(frozen=True)
class Param:
  """One searched hyper-parameter: name, range [low, high] and whether it is sampled in log."""
  name: str
  low: float
  high: float
  log: bool = False

  def spec(self) -> str:
    return f"{self.name}={self.low!r}:{self.high!r}" + (":log" if self.log else "")


def parse_space(text: str) -> tuple[Param, ...]:
  """Parses a spec like `learning_rate=1e-4:1e-1:log,b1=0.5:0.99` (ValueError, one line)."""
  items = [item.strip() for item in (text or "").split(",")]
  if not any(items):
    raise ValueError("empty search space: give NAME=LOW:HIGH[:log],... "
                     f"with NAME in {sorted([*KNOWN, LR_MULTIPLIER])}")
  params: list[Param] = []
  for item in items:
    match = _ITEM.match(item.replace(" ", ""))
    if not match:
      raise ValueError(f"malformed search-space item {item!r}: expected NAME=LOW:HIGH or "
                       "NAME=LOW:HIGH:log")
    name, low, high, log = match.group(1), float(match.group(2)), float(match.group(3)), \
        bool(match.group(4))
    if name not in KNOWN and name != LR_MULTIPLIER:
      raise ValueError(f"unknown hyper-parameter {name!r} in the search space; known: "
                       f"{', '.join(sorted([*KNOWN, LR_MULTIPLIER]))}")
    if any(p.name == name for p in params):
      raise ValueError(f"hyper-parameter {name!r} appears twice in the search space")
    if not low < high:
      raise ValueError(f"empty or inverted range for {name!r}: {low!r}:{high!r} (need LOW < HIGH)")
    lo_bound, hi_bound = KNOWN.get(name, (None, (0.0, math.inf)))[1]
    if low < lo_bound or high > hi_bound:
      raise ValueError(f"range {low!r}:{high!r} of {name!r} is outside its valid values "
                       f"[{lo_bound}, {hi_bound}]")
    if log and low <= 0:
      raise ValueError(f"log range of {name!r} needs LOW > 0, got {low!r}")
    params.append(Param(name, low, high, log))
  names = {p.name for p in params}
  if "learning_rate" in names and LR_MULTIPLIER in names:
    raise ValueError("search either learning_rate or lr_multiplier, not both")
  if "noisy_data_weight" in names and names & {f"data_weight_{i}" for i in (1, 2, 3)}:
    raise ValueError("search either noisy_data_weight or data_weight_1..3, not both")
  return tuple(params)


def canonical(params: tuple[Param, ...]) -> str:
  """The spec string of `params` in a normal form (stored with a study to detect other spaces)."""
  return ",".join(p.spec() for p in params)


def bindings(values: Mapping[str, float], base_learning_rate: float | None = None) -> list[str]:
  """Gin bindings holding `values` constant for a plain run.

  Args:
    values: {name: value} of a trial.
    base_learning_rate: the configured base LR, needed to turn `lr_multiplier` into a base LR.
  """
  out = []
  for name, value in values.items():
    if name == LR_MULTIPLIER:
      if base_learning_rate is None:
        raise ValueError("lr_multiplier needs the configured base learning rate")
      out.append(KNOWN["learning_rate"][0](float(value) * base_learning_rate))
    elif name in KNOWN:
      lines = KNOWN[name][0](float(value))
      out.extend([lines] if isinstance(lines, str) else lines)
    else:
      raise ValueError(f"unknown hyper-parameter {name!r}")
  return out


def gin_files(names: Sequence[str]) -> list[str]:
  """Gin files a run holding hyper-parameters `names` constant must also include."""
  return [DATA_WEIGHTS_GIN] if any(n.startswith(("data_weight_", "noisy_data_weight"))
                                   for n in names) else []
