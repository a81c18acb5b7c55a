"""Resumable experiment records: one JSON file per finished run, keyed by run label + seed.

An experiment's results folder holds `experiment.json` (the experiment's configuration: size,
meta learning rate, ...) and `records/<label>__seed<seed>.json`, each written atomically the moment
its run is scored. Rerunning the same command skips every run that has a record and continues an
unfinished one from the checkpoints in its model dir (the trainer restores the latest one), so an
interrupted experiment continues where it stopped. A results folder whose `experiment.json` names
another configuration is refused (one-line error, nothing touched).

Must not import jax or gin.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Any, Mapping

EXPERIMENT_FILE = "experiment.json"
RECORDS_DIR = "records"


@dataclasses.dataclass
class RunRecord:
  """One finished, scored run.

  Attributes:
    label: the arm, e.g. 'plain' or 'guided: learning_rate'.
    seed: its random seed (params init and data order).
    scores: metric name -> value (e.g. 'bleu' 0-100, 'dev_loss' nats per target token).
    train_steps: model steps of the run (its final global step).
    wall_seconds: wall-clock seconds of training (compilation included; all attempts of a
      resumed run that this process saw).
    seconds_per_step: steady-state wall seconds per model step (median over logged windows).
    cpu_seconds_per_step: the same in CPU seconds of the training process (all its threads;
      NaN in records written before it was logged).
    model_dir: its run directory.
    extra: anything else the experiment keeps (e.g. learned values, BO trial parameters).
  """
  label: str
  seed: int
  scores: dict[str, float]
  train_steps: int
  wall_seconds: float
  seconds_per_step: float = float("nan")
  model_dir: str = ""
  extra: dict[str, Any] = dataclasses.field(default_factory=dict)
  cpu_seconds_per_step: float = float("nan")

  def to_json(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


def record_key(label: str, seed: int) -> str:
  """A file-name-safe key for (label, seed): 'guided_learning_rate__seed0'."""
  slug = re.sub(r"[^A-Za-z0-9.+-]+", "_", label).strip("_")
  return f"{slug}__seed{int(seed)}"


def parse_seeds(text: str | None, default: tuple[int, ...]) -> tuple[int, ...]:
  """`--seeds` ('0,1,2') as a tuple; ValueError (one line) for empty, non-integer, negative or
  duplicated seeds."""
  if text is None:
    return tuple(default)
  parts = [p.strip() for p in str(text).split(",")]
  if not text.strip() or any(not p for p in parts):
    raise ValueError(f"--seeds must be a comma-separated list of integers, got {text!r}")
  try:
    seeds = tuple(int(p) for p in parts)
  except ValueError:
    raise ValueError(f"--seeds must be a comma-separated list of integers, got {text!r}") from None
  if any(s < 0 for s in seeds):
    raise ValueError(f"--seeds must be >= 0, got {text!r}")
  duplicated = sorted({s for s in seeds if seeds.count(s) > 1})
  if duplicated:
    raise ValueError(f"--seeds lists seed(s) {duplicated} more than once: {text!r}")
  return seeds


class RunStore:
  """The records of one experiment's results folder.

  Args:
    out: the experiment's results folder (created if missing).
    config: the experiment's configuration (JSON-serialisable); the first run writes it to
      `experiment.json`, later runs must match it.

  Raises:
    ValueError: `out` holds records of another configuration (names the differing keys).
  """

  def __init__(self, out: str, config: Mapping[str, Any]):
    self.out = out
    self.config = json.loads(json.dumps(dict(config), sort_keys=True))
    self.records_dir = os.path.join(out, RECORDS_DIR)
    path = os.path.join(out, EXPERIMENT_FILE)
    if os.path.exists(path):
      with open(path) as f:
        stored = json.load(f)
      if stored != self.config:
        keys = sorted(k for k in set(stored) | set(self.config)
                      if stored.get(k) != self.config.get(k))
        raise ValueError(
            f"{out} holds records of another configuration (differs in {', '.join(keys)}): use "
            "another --results_dir, or --fresh to delete them")
    else:
      os.makedirs(out, exist_ok=True)
      _write_json(path, self.config)
    os.makedirs(self.records_dir, exist_ok=True)

  def _path(self, label: str, seed: int) -> str:
    return os.path.join(self.records_dir, record_key(label, seed) + ".json")

  def get(self, label: str, seed: int) -> RunRecord | None:
    """The finished run's record, or None."""
    path = self._path(label, seed)
    if not os.path.exists(path):
      return None
    with open(path) as f:
      return RunRecord(**json.load(f))

  def put(self, record: RunRecord) -> None:
    """Writes (atomically) the record of a finished run."""
    _write_json(self._path(record.label, record.seed), record.to_json())

  def delete(self, label: str, seed: int) -> None:
    """Deletes the record of run (`label`, `seed`) if there is one."""
    if os.path.exists(self._path(label, seed)):
      os.remove(self._path(label, seed))

  def all(self) -> list[RunRecord]:
    """Every record, sorted by (label, seed)."""
    out = []
    for name in sorted(os.listdir(self.records_dir)):
      if name.endswith(".json"):
        with open(os.path.join(self.records_dir, name)) as f:
          out.append(RunRecord(**json.load(f)))
    return sorted(out, key=lambda r: (r.label, r.seed))


def load_store(out: str) -> RunStore:
  """The store of an existing results folder (for `--report_only`); ValueError if none."""
  path = os.path.join(out, EXPERIMENT_FILE)
  if not os.path.exists(path):
    raise ValueError(f"no records at {out}: run the experiment first (without --report_only)")
  with open(path) as f:
    return RunStore(out, json.load(f))


def _write_json(path: str, value: Any) -> None:
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "w") as f:
    json.dump(value, f, indent=1, sort_keys=True)
  os.replace(tmp, path)
