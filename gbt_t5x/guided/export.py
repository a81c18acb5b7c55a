"""Export a learned hyper-parameter trajectory as a gin-loadable fixed schedule.

    python -m gbt_t5x.guided.export MODEL_DIR [--num_knots 50] [--out FILE]
    python -m gbt_t5x.guided.export MODEL_DIR --as_mixture [--rates final|mean]

Reads `MODEL_DIR/guided_trajectory.jsonl` (one row per model step, written by GuidedTrainer) and
writes `MODEL_DIR/learned_schedule.gin` (or `--out`): a plain run that includes it follows the
learned values through `trainer.Trainer.hyperparam_schedules`, each a piecewise-linear
`schedule.piecewise_linear(steps, values)` over window means of the trajectory. This is how
"learned schedules beat constant tuning" is checked: replay vs the best constant. Vector values
whose entries have names in the trajectory (`entry_names`, e.g. the demo's noise buckets) get a
comment line naming the components in order and `trainer.Trainer.hyperparam_entry_names`, so the
replayed run reports them by name too. Trajectories written before names existed export as
before.

Only known hyper-parameter names (`KNOWN_NAMES`) are written into the gin text; a trajectory
naming anything else is refused in one line (a crafted trajectory must not inject gin lines into a
file users include). The gin text is written as plain strings; this module must not import gin,
seqio or other `gbt_t5x` modules than `gbt_t5x.guided` and `gbt_t5x.fileio` (MODEL_DIR may be
`gs://...`).
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Sequence

import numpy as np

from gbt_t5x import errors, fileio
from gbt_t5x.guided import schedule as schedule_lib
from gbt_t5x.guided import specs as specs_lib

TRAJECTORY_FILE = "guided_trajectory.jsonl"
SCHEDULE_FILE = "learned_schedule.gin"


def read_trajectory(model_dir: str) -> list[dict[str, Any]]:
  """Rows of MODEL_DIR/guided_trajectory.jsonl, de-duplicated by step (a resumed run may repeat
  steps; the last row for a step wins) and sorted by step."""
  path = fileio.join(model_dir, TRAJECTORY_FILE)
  if not fileio.exists(path):
    raise ValueError(f"{path} not found: is {model_dir} the model dir of a guided run?")
  by_step: dict[int, dict[str, Any]] = {}
  for line in fileio.read_text(path).splitlines():
    line = line.strip()
    if not line:
      continue
    try:
      row = json.loads(line)
    except json.JSONDecodeError:
      continue  # a torn last line from a killed run
    by_step[int(row["step"])] = row
  if not by_step:
    raise ValueError(f"{path} holds no trajectory rows")
  return [by_step[s] for s in sorted(by_step)]


def trajectory_knots(rows: Sequence[dict[str, Any]], num_knots: int
                     ) -> dict[str, tuple[list[float], list]]:
  """{hyper-parameter name: (knot steps, knot values)} from trajectory rows.

  Knot steps are the model steps at which the values were used (`row['step'] - 1`, i.e. the
  train state's step before the update), so `schedule(state.step)` replays them.
  """
  names = list(rows[0]["values"])
  steps = [int(r["step"]) - 1 for r in rows]
  return {name: schedule_lib.knots_from_trajectory(
      steps, np.array([r["values"][name] for r in rows], np.float64), num_knots)
          for name in names}


def trajectory_entry_names(rows: Sequence[dict[str, Any]]) -> dict[str, list[str]]:
  """{vector value name: its entries' names} from the last trajectory row that has them ({} for
  trajectories without names)."""
  for row in reversed(rows):
    if row.get("entry_names"):
      return {name: [str(n) for n in names] for name, names in row["entry_names"].items()}
  return {}


# Every name a guided hyper-parameter can have: only these are written into gin (as a gin scope
# and a quoted dict key), so a crafted trajectory cannot inject gin lines.
KNOWN_NAMES = frozenset((specs_lib.LEARNING_RATE, *specs_lib.LOSS_NAMES,
                         *specs_lib.KNOWN_OPTIMIZER_NAMES, *specs_lib.ALIASES))


def check_names(names: Sequence[str], source: str) -> None:
  """Raises a one-line ValueError for a name that is not a known hyper-parameter name."""
  for name in names:
    if name not in KNOWN_NAMES:
      shown = " ".join(repr(name).split())[:80]
      raise ValueError(f"{source}: the trajectory names an unknown hyper-parameter {shown}; "
                       f"refusing to write it into gin (known: {', '.join(sorted(KNOWN_NAMES))})")


def _gin_list(values: Sequence[Any]) -> str:
  return "[" + ", ".join(repr(v) if not isinstance(v, list) else _gin_list(v) for v in values) + "]"


def schedule_gin_text(knots: dict[str, tuple[list[float], list]], source: str,
                      entry_names: dict[str, list[str]] | None = None) -> str:
  """The gin file replaying `knots` in a plain run (Trainer.hyperparam_schedules).

  Args:
    knots: {name: (knot steps, knot values)} as from `trajectory_knots`.
    source: where the trajectory came from (a comment line).
    entry_names: {vector value name: its entries' names}; each gets a comment line (`#
      data_weights = [clean, misaligned, ...]`) and all go to
      `trainer.Trainer.hyperparam_entry_names`.
  """
  check_names(list(knots), source)
  entry_names = {k: v for k, v in (entry_names or {}).items() if k in knots}
  lines = [f"# Learned hyper-parameter schedule exported from {source}.",
           "# Include it after the run's gin files; it binds trainer.Trainer.hyperparam_schedules."]
  if "data_weights" in knots:
    lines.append("# data_weights are looked up by each token's data id: the run must bind "
                 "train/data.DatasetConfig.data_id_feature (e.g. 'noise_bucket').")
  for name, names in entry_names.items():
    shown = ", ".join(" ".join(n.split()) for n in names)  # one line, whatever the names hold
    lines.append(f"# {name} = [{shown}] (its entries, in this order)")
  lines += ["from __gin__ import dynamic_registration", "",
            "from gbt_t5x.guided import schedule", "from gbt_t5x.train import trainer", ""]
  entries = ", ".join(f"{name!r}: @{name}/schedule.piecewise_linear()" for name in knots)
  lines.append(f"trainer.Trainer.hyperparam_schedules = {{{entries}}}")
  if entry_names:
    named = ", ".join(f"{name!r}: {_gin_list(names)}" for name, names in entry_names.items())
    lines.append(f"trainer.Trainer.hyperparam_entry_names = {{{named}}}")
  for name, (steps, values) in knots.items():
    lines.append(f"{name}/schedule.piecewise_linear.steps = {_gin_list(steps)}")
    lines.append(f"{name}/schedule.piecewise_linear.values = {_gin_list(values)}")
  return "\n".join(lines) + "\n"


def export(model_dir: str, num_knots: int = 50, out: str | None = None) -> str:
  """Writes the learned schedule gin file for `model_dir`; returns its path."""
  if num_knots < 1:
    raise ValueError(f"num_knots must be >= 1, got {num_knots}")
  rows = read_trajectory(model_dir)
  knots = trajectory_knots(rows, num_knots)
  path = out or fileio.join(model_dir, SCHEDULE_FILE)
  fileio.write_text(path, schedule_gin_text(knots, fileio.absolute(model_dir),
                                            trajectory_entry_names(rows)))
  return path


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("model_dir")
  parser.add_argument("--num_knots", type=int, default=50)
  parser.add_argument("--out", default=None)
  parser.add_argument("--as_mixture", action="store_true",
                      help="write learned_mixture.gin: the learned mixture weights as a SeqIO "
                           "mixture a plain run trains on (see gbt_t5x.guided.mixture_export)")
  parser.add_argument("--rates", default="final", choices=("final", "mean"),
                      help="--as_mixture: the final weights or their mean over the run")
  parser.add_argument("--mixture", default=None,
                      help="--as_mixture: the run's train mixture (default: from config.gin)")
  parser.add_argument("--module", default=None, help="--as_mixture: its task module")
  args = parser.parse_args(argv)

  def body() -> None:
    if args.as_mixture:
      from gbt_t5x.guided import mixture_export
      path = mixture_export.export_mixture(args.model_dir, read_trajectory(args.model_dir),
                                           args.rates, args.mixture, args.module, args.out)
    else:
      path = export(args.model_dir, args.num_knots, args.out)
    print(f"wrote {path}")

  return errors.exit_code_of(body)


if __name__ == "__main__":
  sys.exit(main())
