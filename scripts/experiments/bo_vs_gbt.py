"""BO vs GBT: one guided run against Bayesian optimisation (optuna TPE) over the same
hyper-parameters, by quality against cumulative compute, for three search spaces.

    python scripts/experiments/bo_vs_gbt.py [--results_dir results] [--quick] [--seeds 0,1,2]

Per seed and search space (`SPACES`: d = 1, 6 and 10 hyper-parameters), both methods start from
the demo's defaults:
* `GBT`: one guided run learning the space's hyper-parameters from the clean guide task;
* `BO`: `--bo_trials` plain runs, each holding the values TPE samples constant, scored by the
  teacher-forced loss on the same guide set (what the tuner may look at; never the test split);
* `plain (demo defaults)`: one plain run per seed at the demo's values (the same run for every
  space), the reference a tuning method has to beat. GBT starts from them too, except that a
  guided label smoothing starts at 0.1 (`gin/guided/label_smoothing.gin`: a sigmoid-activated
  value cannot start at the default 0).
BO's pick after k trials is the trial with the lowest guide loss among the first k (its first
trials are TPE's random start, not the defaults). Optuna's GP sampler needs torch, which the
project does not install, so GP does not run here.

Writes RESULTS_DIR/bo_vs_gbt/: report.md, quality_vs_compute.png, experiment.json, records/ (one
JSON per finished run or trial), studies/BO_<space>_seed<s>/ (optuna's study.db and trials.csv;
their trial_NNNN run folders are not kept in git) and runs/. Rerunning skips finished runs,
resumes an interrupted guided run from its checkpoints and an interrupted search from its study;
`--report_only` rebuilds the report.
"""
from __future__ import annotations

import sys

from gbt_t5x import console

if __name__ == "__main__":
  # Before TensorFlow and JAX load (they log when imported); TensorFlow itself loads in
  # `common.setup`, once the flags are checked.
  console.configure(sys.argv, import_tensorflow=False)

import os
from typing import Sequence

import numpy as np

from harness import bo, common, report, sizes

NAME = "bo_vs_gbt"
_D6 = ("lr_multiplier=0.1:10:log,b1=0.5:0.99,b2=0.9:0.9999,eps=1e-10:1e-6:log,"
       "weight_decay=0:0.1,label_smoothing=0:0.3")
_D6_KINDS = ("learning_rate", "b1", "b2", "eps", "weight_decay", "label_smoothing")
# name -> (BO's search space, the kinds GBT guides: the same hyper-parameters).
SPACES = {
    "d=1": ("lr_multiplier=0.1:10:log", ("learning_rate",)),
    "d=6": (_D6, _D6_KINDS),
    "d=10": (_D6 + "," + ",".join(f"data_weight_{i}=0.05:5:log" for i in range(4)),
             (*_D6_KINDS, "data_weights")),
}
GBT_ROW, EQUAL_ROW = "GBT (1 guided run)", "BO at GBT's compute"
DEFAULT_ROW = "plain (demo defaults)"
# The long-horizon ('forward') hypergradient runs in the spaces listed here only: it carries one
# tangent of the params and optimizer state per guided scalar through every model step, so its
# cost grows with d (about d times a plain step's tangent work) -- affordable for d = 1.
FORWARD_MU = 0.99
FORWARD_SPACES = ("d=1",)  # (--quick: none, for CI time; its report is tested on the default
                           # size's committed records)
FORWARD_ROW = f"GBT, forward horizon (mu {FORWARD_MU:g})"


def _add_flags(parser) -> None:
  parser.add_argument("--bo_trials", type=int, default=None,
                      help="BO trials per seed and space (default: the size's, 12 at default)")
  parser.add_argument("--spaces", default=",".join(SPACES),
                      help=f"comma-separated subset of {list(SPACES)}")


def gbt_label(space: str, forward: bool = False) -> str:
  return f"GBT {space}" + (f" forward mu {FORWARD_MU:g}" if forward else "")


def forward_spaces(size: sizes.Size) -> tuple[str, ...]:
  """The spaces with a forward-horizon GBT run at this size."""
  return () if size.quick else FORWARD_SPACES


def run_all(exp: common.Experiment, spaces: Sequence[str], num_trials: int) -> None:
  score = common.translation_scores(exp)
  for seed in exp.seeds:
    common.run_arm(exp, DEFAULT_ROW, seed, [common.NMT_GIN], [], score)
  # Space by space, every seed before the next space: an experiment stopped part way leaves
  # whole spaces with all their seeds, which `--spaces ... --report_only` can already report.
  for space in spaces:
    gin = common.guided_gin(os.path.join(exp.out, "gin", f"gbt_{space.replace('=', '')}.gin"),
                            common.NMT_GIN, SPACES[space][1], exp.meta_lr,
                            exp.size.hyper_step_every)
    forward_gin = None
    if space in forward_spaces(exp.size):
      forward_gin = common.guided_gin(
          os.path.join(exp.out, "gin", f"gbt_{space.replace('=', '')}_forward.gin"),
          common.NMT_GIN, SPACES[space][1], exp.meta_lr, exp.size.hyper_step_every,
          extra=common.forward_horizon(FORWARD_MU))
    for seed in exp.seeds:
      common.run_arm(exp, gbt_label(space), seed, [gin], [], score)
      bo.run_study(exp, f"BO {space}", SPACES[space][0], seed, num_trials)
      if forward_gin is not None:
        common.run_arm(exp, gbt_label(space, forward=True), seed, [forward_gin], [], score)


def write_report(exp: common.Experiment, spaces: Sequence[str], num_trials: int) -> str:
  seeds = list(exp.seeds)
  sections, panels_bleu, panels_loss, verdicts = [], {}, {}, []
  defaults = [common.require_record(exp, DEFAULT_ROW, seed) for seed in seeds]
  for space in spaces:
    gbt, curves, plain_sps_of = [], [], {}
    for seed in seeds:
      g = exp.store.get(gbt_label(space), seed)
      trials = [exp.store.get(bo.trial_label(f"BO {space}", n), seed) for n in range(num_trials)]
      if g is None or any(t is None for t in trials):
        raise ValueError(f"runs of space {space} seed {seed} in {exp.out} are not finished: "
                         "rerun without --report_only")
      plain_sps = plain_sps_of[seed] = common.StepTime.median(trials)
      gbt.append((g, common.step_equivalents(g, plain_sps)))
      curves.append(bo.pick_curve(trials, plain_sps))
    gbt_runs = [g for g, _ in gbt]
    gbt_compute = [c for _, c in gbt]
    forward = []
    if space in forward_spaces(exp.size):
      for seed in seeds:
        f = common.require_record(exp, gbt_label(space, forward=True), seed)
        forward.append((f, common.step_equivalents(f, plain_sps_of[seed])))
    # BO at GBT's compute: its pick among the trials whose cumulative compute fits (at least 1).
    picked = [bo.picks_at_budget(curve, budget=c) for curve, c in zip(curves, gbt_compute)]
    final_row = f"BO after {num_trials} trials"
    runs = {GBT_ROW: gbt_runs, EQUAL_ROW: [p.at_budget for p in picked],
            final_row: [p.final for p in picked]}
    compute = {GBT_ROW: gbt_compute, EQUAL_ROW: [p.at_budget_compute for p in picked],
               final_row: [p.final_compute for p in picked]}
    runs[DEFAULT_ROW] = defaults
    compute[DEFAULT_ROW] = [common.step_equivalents(d, plain_sps_of[d.seed]) for d in defaults]
    comparisons = [(GBT_ROW, EQUAL_ROW, "GBT vs BO at GBT's compute"),
                   (GBT_ROW, final_row, f"GBT vs BO after {num_trials} trials"),
                   (GBT_ROW, DEFAULT_ROW, "GBT vs the defaults it starts from"),
                   (final_row, DEFAULT_ROW, f"BO after {num_trials} trials vs the defaults")]
    if forward:
      runs[FORWARD_ROW] = [f for f, _ in forward]
      compute[FORWARD_ROW] = [c for _, c in forward]
      comparisons.append((FORWARD_ROW, GBT_ROW, "GBT forward horizon vs greedy"))
    order = [DEFAULT_ROW] + [arm for arm in runs if arm != DEFAULT_ROW]
    table = report.arm_table(order, runs, compute).replace("| arm |", "| method |", 1)
    paired, diffs = report.paired_table(comparisons, runs)
    # When does BO's pick first reach GBT's test BLEU (per seed)?
    matches = []
    for (comp, picks), g in zip(curves, gbt_runs):
      hit = next((c for c, p in zip(comp, picks) if p.scores["bleu"] >= g.scores["bleu"]), None)
      matches.append(hit)
    matched = [m for m in matches if m is not None]
    gbt_mean = float(np.mean(gbt_compute))
    when = (f"BO's pick first matches GBT's test BLEU after {np.mean(matched):.0f} plain steps "
            f"of compute ({np.mean(matched) / gbt_mean:.1f}× GBT's) on {len(matched)}/{len(seeds)}"
            f" seeds" if matched else f"BO's pick never matches GBT's test BLEU within "
            f"{num_trials} trials on any seed")
    if matched and len(matched) < len(seeds):
      when += f", and never within {num_trials} trials on the others"
    versus_equal = report.paired_summary(diffs[(GBT_ROW, EQUAL_ROW)])
    versus_default = report.paired_summary(diffs[(GBT_ROW, DEFAULT_ROW)])
    verdicts.append(f"- **{space}**: {when}. GBT vs BO at GBT's compute: {versus_equal}. "
                    f"GBT vs the plain run at the defaults it starts from: {versus_default}."
                    + (f" Forward horizon (mu {FORWARD_MU:g}, "
                       f"{np.mean(compute[FORWARD_ROW]):.0f} plain steps of compute) vs greedy "
                       f"GBT: {report.paired_summary(diffs[(FORWARD_ROW, GBT_ROW)])}."
                       if forward else ""))
    sections += [f"### Search space {space}: `{SPACES[space][0]}`", table, paired]
    n = min(len(comp) for comp, _ in curves)
    mean_x = list(np.mean([comp[:n] for comp, _ in curves], axis=0))
    for key, panels in (("bleu", panels_bleu), ("dev_loss", panels_loss)):
      # One point per single-run method: (mean compute, mean score) over seeds.
      points = {arm: ([float(np.mean(compute[arm]))],
                      [float(np.mean([r.scores[key] for r in runs[arm]]))])
                for arm in (GBT_ROW, DEFAULT_ROW, FORWARD_ROW) if arm in runs}
      panels[space] = {
          "BO (TPE), pick by guide loss": (mean_x, list(np.mean(
              [[p.scores[key] for p in picks[:n]] for _, picks in curves], axis=0))),
          **points}
  report.plot_panels(os.path.join(exp.out, "bleu_vs_compute.png"), panels_bleu,
                     "cumulative compute (plain train-step equivalents)",
                     f"test BLEU of the pick vs compute (mean over {len(seeds)} seeds)",
                     markers=True)
  report.plot_panels(os.path.join(exp.out, "dev_loss_vs_compute.png"), panels_loss,
                     "cumulative compute (plain train-step equivalents)",
                     f"dev loss of the pick vs compute (mean over {len(seeds)} seeds)",
                     markers=True)
  size = exp.size
  return report.write_experiment_report(
      exp.out, "BO vs GBT: quality against compute", size.quick, [
      "\n".join(verdicts),
      f"Setup: as guided_vs_plain ({size.train_steps} steps of {size.batch_size} packed rows, "
      f"tiny T5 {size.num_layers}+{size.num_layers} layers, the demo's defaults as the start of "
      f"both methods). GBT: one guided run per space (meta LR {exp.meta_lr:g}, a guided step every "
      f"{size.hyper_step_every}; greedy one-step lookahead, plus the forward horizon with mu "
      f"{FORWARD_MU:g} in {list(forward_spaces(size))}: its cost grows with the number of guided "
      f"scalars); BO: optuna TPE, {num_trials} plain trials per space and seed, "
      "scored by guide-set loss; the GP sampler needs torch (not installed), so it does not run. "
      "Compute in plain train-step equivalents (a run's steps × its seconds per step ÷ the "
      f"median plain trial's, same seed; {common.timing_basis(exp.store.all())}). Test BLEU: "
      "greedy decoding of "
      f"{size.decode_examples} test sentences. Seeds {seeds}; mean ± std over seeds.",
      report.PAIRED_NOTE, *sections,
      "![test BLEU vs compute](bleu_vs_compute.png)\n\n![dev loss vs compute]"
      "(dev_loss_vs_compute.png)",
      ], "bo_vs_gbt.py", exp.results_dir)


def main(argv: Sequence[str] | None = None) -> int:
  args = common.parse_args(__doc__.splitlines()[0], argv, _add_flags)
  spaces = [s.strip() for s in args.spaces.split(",") if s.strip()]
  unknown = [s for s in spaces if s not in SPACES]
  if unknown or not spaces:
    raise ValueError(f"--spaces must list some of {list(SPACES)}, got {args.spaces!r}")
  exp_trials = args.bo_trials if args.bo_trials is not None else sizes.get_size(
      args.quick).bo_trials
  if exp_trials < 1:
    raise ValueError(f"--bo_trials must be >= 1, got {exp_trials}")
  exp = common.setup(args, NAME, {"spaces": {s: SPACES[s][0] for s in SPACES},
                                  "bo_trials": exp_trials, "sampler": "tpe"})
  return common.run_and_report(exp, run_all, write_report, spaces, exp_trials)


if __name__ == "__main__":
  sys.exit(common.main_with_one_line_errors(main))
