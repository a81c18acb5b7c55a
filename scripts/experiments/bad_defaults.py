"""Bad defaults: a user does not know good values; how much of the way to the best known values
does one guided run get from a start that is off by a known factor?

    python scripts/experiments/bad_defaults.py [--results_dir results] [--quick] [--seeds 0,1,2]

Per start (`STARTS`: the demo translation config with the LR ×0.25 or ×0.1, label smoothing 0.3,
Adam b1 0.5 / b2 0.9, or all of them at once) and seed, on the regime of guided_vs_plain:
* `plain`: trained at the start;
* `guided (greedy)`: one guided run learning the values the start got wrong, starting from them
  (the one-step lookahead as shipped);
* `guided (<remedy>)`: the same with guidance_diagnosis's best LR-only remedy (lowest mean dev
  loss over its seeds; `chosen_remedy`), run once guidance_diagnosis has every seed of its
  remedies (before that, the report shows plain and greedy only); `--quick` takes its first
  candidate so that CI runs the arm.
References read from the committed records of the other experiments (no new runs): the best
constant of schedule_vs_constant (the grid run with the lowest guide loss on the same seed) and
BO (bo_vs_gbt's TPE studies, whose boxes cover every start: d = 1 for the LR starts, d = 6 for
the others) limited to the guided run's compute. The report gives, per start, the fraction of the
gap from the start to the best constant that one guided run closes (dev loss, the primary
metric, and test BLEU), per seed and as a mean ("no gap" where the start is already at least as
good as the best constant), with paired intervals against BO.

Writes RESULTS_DIR/bad_defaults/: report.md, gap_closed.png, experiment.json, records/ and runs/.
Rerunning skips finished runs and resumes an interrupted one; `--report_only` rebuilds the report.
"""
from __future__ import annotations

import sys

from gbt_t5x import console

if __name__ == "__main__":
  console.configure(sys.argv, import_tensorflow=False)

import math
import os
from typing import Any, Sequence

import numpy as np

import guidance_diagnosis as gd  # the sibling script: its remedies and their records
from harness import bo, common, records as records_lib, report

NAME = "bad_defaults"
BASE_LR = 0.002  # experiments/demo_nmt.gin
_LR = "learning_rate.create_learning_rate_scheduler.base_learning_rate"


def _lr(factor: float) -> list[str]:
  return [f"{_LR} = {BASE_LR * factor!r}"]


# start -> (plain bindings, guided kinds, guided-only bindings (the guided values' inits), the
# bo_vs_gbt space whose box covers the start).
STARTS: dict[str, tuple[list[str], tuple[str, ...], list[str], str]] = {
    "LR x0.25": (_lr(0.25), ("learning_rate",), [], "d=1"),
    "LR x0.1": (_lr(0.1), ("learning_rate",), [], "d=1"),
    "label smoothing 0.3": (["LABEL_SMOOTHING = 0.3"], ("label_smoothing",),
                            ["label_smoothing/specs.GuidedHParam.init = 0.3"], "d=6"),
    "b1 0.5, b2 0.9": (["optimizers.adamw.b1 = 0.5", "optimizers.adamw.b2 = 0.9"], ("b1", "b2"),
                       ["b1/specs.GuidedHParam.init = 0.5", "b2/specs.GuidedHParam.init = 0.9"],
                       "d=6"),
    "all four": ([*_lr(0.25), "LABEL_SMOOTHING = 0.3", "optimizers.adamw.b1 = 0.5",
                  "optimizers.adamw.b2 = 0.9"], ("learning_rate", "label_smoothing", "b1", "b2"),
                 ["label_smoothing/specs.GuidedHParam.init = 0.3",
                  "b1/specs.GuidedHParam.init = 0.5", "b2/specs.GuidedHParam.init = 0.9"], "d=6"),
}
QUICK_STARTS = ("LR x0.25",)
GREEDY = "greedy"
BO_TRIALS = 12


def starts(quick: bool) -> tuple[str, ...]:
  return QUICK_STARTS if quick else tuple(STARTS)


def arm(start: str, kind: str) -> str:
  return f"{start}: {kind}"


def chosen_remedy(exp: common.Experiment) -> str | None:
  """guidance_diagnosis's best LR-only remedy on the size's seeds (not `--seeds`: a run of one seed
  picks the same remedy as the whole experiment; None until those records are complete); with
  --quick its first candidate."""
  if exp.size.quick:
    return gd.REMEDIES[0]
  path = os.path.join(exp.results_dir, gd.NAME)
  if not os.path.exists(os.path.join(path, "experiment.json")):
    return None
  return gd.best_lr_remedy(records_lib.load_store(path), exp.size.seeds)


def run_all(exp: common.Experiment) -> None:
  score = common.translation_scores(exp)
  remedy = chosen_remedy(exp)
  # Plain and greedy arms of every start first; the remedy's arms once it is chosen.
  for with_remedy in (False, True):
    if with_remedy and remedy is None:
      exp.log("guidance_diagnosis has not finished its remedies: the remedy arms wait")
      return
    for start in starts(exp.size.quick):
      plain, kinds, inits, _ = STARTS[start]
      tag = start.replace(" ", "_").replace(",", "").replace(".", "")
      if with_remedy:
        extra, meta_lr, period = gd.remedy_bindings(remedy, exp)
        name, gin_lines = remedy, [*inits, *extra]
      else:
        name, gin_lines, meta_lr, period = GREEDY, inits, exp.meta_lr, exp.size.hyper_step_every
      gin_file = common.guided_gin(
          os.path.join(exp.out, "gin", f"{tag}_{name.replace(' ', '_')}.gin"), common.NMT_GIN,
          kinds, meta_lr, period, extra=gin_lines)
      for seed in exp.seeds:
        if not with_remedy:
          common.run_arm(exp, arm(start, "plain"), seed, [common.NMT_GIN], plain, score)
        common.run_arm(exp, arm(start, f"guided ({name})"), seed, [gin_file], plain, score,
                       common.trajectory_extra)


def best_constants(exp: common.Experiment, seeds: Sequence[int]
                   ) -> tuple[list[Any], list[float]] | None:
  """schedule_vs_constant's best constant per seed (lowest guide loss among its grid) and the
  compute of the grid that found it (the grid runs' steps, plain-step equivalents), or None when
  its records are not there (e.g. --quick)."""
  runs = gd.constant_runs(exp.results_dir, seeds)
  if not runs:
    return None
  # One entry per run: constant_runs lists the default under every kind.
  grid = {records[0].label: records for records in runs.values()}
  best, compute = [], []
  for i in range(len(seeds)):
    of_seed = [records[i] for records in grid.values()]
    best.append(min(of_seed, key=lambda r: np.nan_to_num(r.scores["guide_loss"], nan=np.inf)))
    compute.append(float(sum(r.train_steps for r in of_seed)))
  return best, compute


def bo_at_budget(exp: common.Experiment, space: str, seed: int, budget: float
                 ) -> tuple[Any, float] | None:
  """bo_vs_gbt's TPE pick in `space` for `seed` within `budget` plain steps and the compute its
  trials used, or None."""
  path = os.path.join(exp.results_dir, "bo_vs_gbt")
  if not os.path.exists(os.path.join(path, "experiment.json")):
    return None
  store = records_lib.load_store(path)
  trials = [store.get(bo.trial_label(f"BO {space}", n), seed) for n in range(BO_TRIALS)]
  if any(t is None for t in trials):
    return None
  curve = bo.pick_curve(trials, common.StepTime.median(trials))
  picks = bo.picks_at_budget(curve, budget)
  return picks.at_budget, picks.at_budget_compute


def gap_closed(start: float, reached: float, best: float, lower_is_better: bool) -> float:
  """(reached − start) / (best − start): 1 = all the way to the best constant, 0 = no better than
  the start, < 0 = worse. NaN when the best constant is not better than the start (no gap to
  close: a ratio there would read a step away from the start as progress)."""
  gap = best - start
  if (gap >= 0) if lower_is_better else (gap <= 0):
    return math.nan
  return (reached - start) / gap


LOWER_IS_BETTER = {"dev_loss": True, "bleu": False}


def _percents(values: Sequence[float]) -> str:
  return ", ".join("no gap" if math.isnan(v) else f"{v * 100:.0f} %" for v in values)


def _mean_percent(values: Sequence[float]) -> str:
  finite = [v for v in values if not math.isnan(v)]
  return f"{np.mean(finite) * 100:.0f} %" if finite else "n/a"


def lr_multiplier_path(record: Any) -> str:
  """'peak P at step S, final F' of a guided run's learned LR multiplier (its record's
  trajectory)."""
  trajectory = record.extra["trajectory"]
  values, steps = trajectory["learning_rate"], trajectory["steps"]
  peak = int(np.argmax(values))
  return f"peak {values[peak]:.2f} at step {steps[peak]}, final {values[-1]:.2f}"


def write_report(exp: common.Experiment) -> str:
  seeds = list(exp.seeds)
  constants = best_constants(exp, seeds)
  best = constants[0] if constants is not None else None
  remedy = chosen_remedy(exp)
  sections, verdicts, bars = [], [], {}
  for start in starts(exp.size.quick):
    kinds = ["plain", f"guided ({GREEDY})"]
    if remedy is not None and all(exp.store.get(arm(start, f"guided ({remedy})"), s)
                                  for s in seeds):
      kinds.append(f"guided ({remedy})")
    runs = {k: [common.require_record(exp, arm(start, k), s) for s in seeds] for k in kinds}
    plain_sps = {r.seed: common.StepTime.of(r) for r in runs["plain"]}
    compute = {k: [common.step_equivalents(r, plain_sps[r.seed]) for r in runs[k]]
               for k in kinds}
    order = list(kinds)
    space = STARTS[start][3]
    if best is not None:
      runs["best constant (schedule_vs_constant)"] = best
      compute["best constant (schedule_vs_constant)"] = constants[1]  # the grid's runs
      order.append("best constant (schedule_vs_constant)")
    bo_picks = [bo_at_budget(exp, space, s, c)
                for s, c in zip(seeds, compute[f"guided ({GREEDY})"])]
    if all(p is not None for p in bo_picks):
      label = f"BO {space} at the guided run's compute"
      runs[label] = [pick for pick, _ in bo_picks]
      compute[label] = [used for _, used in bo_picks]  # its trials' steps within the budget
      order.append(label)
    table = report.arm_table(order, runs, compute)
    comparisons = [(k, "plain", f"{k} vs plain at the start") for k in kinds[1:]]
    if len(order) > len(kinds) and order[-1].startswith("BO"):
      comparisons += [(k, order[-1], f"{k} vs BO at equal compute") for k in kinds[1:]]
    paired, diffs = report.paired_table(comparisons, runs)
    lines = []
    if best is not None:
      for k in kinds[1:]:
        per_seed = {m: [gap_closed(p.scores[m], g.scores[m], b.scores[m], LOWER_IS_BETTER[m])
                        for p, g, b in zip(runs["plain"], runs[k], best)]
                    for m in LOWER_IS_BETTER}
        lines.append(
            f"- {start}, {k}: share of the gap from the start to the best constant closed, mean "
            f"(per seed): dev loss {_mean_percent(per_seed['dev_loss'])} "
            f"({_percents(per_seed['dev_loss'])}), test BLEU {_mean_percent(per_seed['bleu'])} "
            f"({_percents(per_seed['bleu'])}), at {np.mean(compute[k]):.0f} plain steps of "
            "compute (\"no gap\": the start is already at least as good as the best constant "
            "on that seed).")
        finite = [v * 100 for v in per_seed["dev_loss"] if not math.isnan(v)]
        if finite:  # a start with no gap on any seed has no bar
          bars[f"{start}, {k}"] = finite
    for a, b, name in comparisons:
      lines.append(f"- {start}, {name}: {report.paired_summary(diffs[(a, b)])}.")
    if "learning_rate" in STARTS[start][1]:
      for k in kinds[1:]:
        lines.append(f"- {start}, {k}: learned LR multiplier (1 = the start's LR), per seed: "
                     + "; ".join(lr_multiplier_path(r) for r in runs[k]) + ".")
    verdicts += lines
    sections += [f"### Start: {start}", table, paired]
  if bars:
    report.plot_bars(os.path.join(exp.out, "gap_closed.png"), list(bars), list(bars.values()),
                     "dev-loss gap closed (%)", "one guided run from a bad start")
  setup = (f"Setup: the regime of guided_vs_plain ({exp.size.train_steps} steps of "
           f"{exp.size.batch_size} packed rows, tiny T5 {exp.size.num_layers}+"
           f"{exp.size.num_layers} layers, AdamW 2e-3 warmup + linear decay). Each guided run "
           f"learns the values its start got wrong (meta LR {exp.meta_lr:g}, a guided step every "
           f"{exp.size.hyper_step_every}). Best constant and BO are read from the committed "
           "schedule_vs_constant and bo_vs_gbt records (same seeds and regime); the best "
           "constant's compute is that of the grid that found it, BO's that of its trials within "
           "the guided run's compute"
           + ("" if best is not None else "; not available at this size") + f". Seeds {seeds}. "
           + (f"Remedy: {remedy!r}, guidance_diagnosis's LR-only remedy with the lowest mean dev "
              "loss" + (" (--quick: its first candidate)" if exp.size.quick else "")
              if remedy is not None else
              "Remedy arms: waiting for guidance_diagnosis's remedies on every seed."))
  return report.write_experiment_report(
      exp.out, "Bad defaults", exp.size.quick,
      ["\n".join(verdicts), setup, *sections, report.PAIRED_NOTE]
      + (["![gap closed](gap_closed.png)"] if bars else []),
      "bad_defaults.py", exp.results_dir)


def main(argv: Sequence[str] | None = None) -> int:
  args = common.parse_args(__doc__.splitlines()[0], argv)
  exp = common.setup(args, NAME, {"starts": {k: v[0] for k, v in STARTS.items()}})
  return common.run_and_report(exp, run_all, write_report)


if __name__ == "__main__":
  sys.exit(common.main_with_one_line_errors(main))
