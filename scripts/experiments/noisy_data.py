"""Noisy data: can a guided run learn per-bucket data weights that discount noisy training pairs,
and how close does it get to an oracle that drops them?

    python scripts/experiments/noisy_data.py [--results_dir results] [--quick] [--seeds 0,1,2]

The demo world's train split has noise buckets (clean, misaligned, truncated, untranslated copy);
the guide, dev and test splits are clean. For each train noise rate in `NOISE_RATES` and seed:
* `no weighting`: the demo's plain translation config;
* `GBT: data weights`: the four bucket weights guided by the clean guide task;
* `GBT: data weights + LR`: the same with the LR multiplier;
* `oracle`: the noisy buckets weighted 0 (constant), the clean bucket 1;
* `BO: one noisy weight`: optuna TPE over one weight shared by the three noisy buckets (the
  heuristic a practitioner would tune), plain trials scored by guide-set loss; reported at GBT's
  compute and after all its trials.

Writes RESULTS_DIR/noisy_data/: report.md, bleu_by_arm.png, learned_weights.png,
experiment.json, records/, studies/ and runs/. Rerunning skips finished runs and resumes an
interrupted one; `--report_only` rebuilds the report.
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

from harness import bo, common, report

NAME = "noisy_data"
NOISE_RATES = (0.2, 0.4)
QUICK_NOISE_RATES = (0.4,)  # --quick: one noise rate


def noise_rates(exp: common.Experiment) -> tuple[float, ...]:
  return QUICK_NOISE_RATES if exp.size.quick else NOISE_RATES
BO_SPACE = "noisy_data_weight=0.01:1:log"
NONE, GBT_DW, GBT_DW_LR, ORACLE = ("no weighting", "GBT: data weights",
                                   "GBT: data weights + LR", "oracle (noisy weight 0)")
BO_EQUAL, BO_ALL = "BO one noisy weight, at GBT's compute", "BO one noisy weight, all trials"
ORACLE_BINDINGS = ["DATA_WEIGHT_1 = 0.0", "DATA_WEIGHT_2 = 0.0", "DATA_WEIGHT_3 = 0.0"]


def _add_flags(parser) -> None:
  parser.add_argument("--bo_trials", type=int, default=None,
                      help="BO trials per seed and noise rate (default: 4; --quick: 2)")


def at(label: str, noise: float) -> str:
  return f"{label} @ noise {noise:g}"


def bo_trials(args) -> int:
  n = args.bo_trials if args.bo_trials is not None else (2 if args.quick else 4)
  if n < 1:
    raise ValueError(f"--bo_trials must be >= 1, got {n}")
  return n


def run_all(exp: common.Experiment, num_trials: int) -> None:
  from gbt_t5x import search_space
  score = common.translation_scores(exp)
  every = exp.size.hyper_step_every
  gins = {
      GBT_DW: common.guided_gin(os.path.join(exp.out, "gin", "gbt_data_weights.gin"),
                                common.NMT_GIN, ("data_weights",), exp.meta_lr, every),
      GBT_DW_LR: common.guided_gin(os.path.join(exp.out, "gin", "gbt_data_weights_lr.gin"),
                                   common.NMT_GIN, ("data_weights", "learning_rate"),
                                   exp.meta_lr, every)}
  for noise in noise_rates(exp):
    common.use_demo_world(exp, noise_rate=noise)
    for seed in exp.seeds:
      common.run_arm(exp, at(NONE, noise), seed, [common.NMT_GIN], [], score)
      for label in (GBT_DW, GBT_DW_LR):
        common.run_arm(exp, at(label, noise), seed, [gins[label]], [], score,
                       common.trajectory_extra)
      common.run_arm(exp, at(ORACLE, noise), seed,
                     [common.NMT_GIN, search_space.DATA_WEIGHTS_GIN], ORACLE_BINDINGS, score)
      bo.run_study(exp, at("BO", noise), BO_SPACE, seed, num_trials)


def write_report(exp: common.Experiment, num_trials: int) -> str:
  from gbt_t5x.data import demo_world
  seeds = list(exp.seeds)
  sections, verdicts, bars, panels = [], [], {}, {}
  for noise in noise_rates(exp):
    get = lambda label, seed: common.require_record(exp, at(label, noise), seed)
    runs = {a: [get(a, s) for s in seeds] for a in (NONE, GBT_DW, GBT_DW_LR, ORACLE)}
    plain_sps = {s: common.StepTime.of(get(NONE, s)) for s in seeds}
    compute = {a: [common.step_equivalents(r, plain_sps[r.seed]) for r in rs]
               for a, rs in runs.items()}
    runs[BO_EQUAL], runs[BO_ALL], compute[BO_EQUAL], compute[BO_ALL] = [], [], [], []
    for i, s in enumerate(seeds):
      trials = [common.require_record(exp, bo.trial_label(at("BO", noise), n), s)
                for n in range(num_trials)]
      picked = bo.picks_at_budget(bo.pick_curve(trials, plain_sps[s]), budget=compute[GBT_DW][i])
      runs[BO_EQUAL].append(picked.at_budget)
      compute[BO_EQUAL].append(picked.at_budget_compute)
      runs[BO_ALL].append(picked.final)
      compute[BO_ALL].append(picked.final_compute)
    arms = list(runs)
    table = report.arm_table(arms, runs, compute)
    paired, diffs = report.paired_table(
        [(GBT_DW, NONE, "GBT data weights vs no weighting"),
         (GBT_DW_LR, NONE, "GBT data weights + LR vs no weighting"),
         (ORACLE, NONE, "oracle vs no weighting"),
         (GBT_DW, ORACLE, "GBT data weights vs oracle"),
         (GBT_DW, BO_EQUAL, "GBT data weights vs BO at GBT's compute"),
         (BO_ALL, NONE, "BO (all trials) vs no weighting")], runs)
    mean = lambda arm: float(np.mean([r.scores["bleu"] for r in runs[arm]]))
    gap = mean(ORACLE) - mean(NONE)
    if gap > 1e-9:
      to_oracle = (f"GBT closes {(mean(GBT_DW) - mean(NONE)) / gap:.0%} of the gap from no "
                   "weighting to the oracle.")
    else:
      to_oracle = (f"The oracle scores {-gap:.2f} BLEU below no weighting (the noisy pairs "
                   f"still carry signal), GBT {mean(GBT_DW) - mean(ORACLE):+.2f} from the oracle.")
    final_weights = np.mean([r.extra["trajectory"]["data_weights"][-1] for r in runs[GBT_DW]],
                            axis=0)
    learned = ", ".join(f"{name} {w:.2f}" for name, w in zip(demo_world.NOISE_BUCKET_NAMES,
                                                             final_weights))
    verdicts.append(
        f"- **Noise {noise:g}**: no weighting {mean(NONE):.2f} test BLEU, GBT data weights "
        f"{mean(GBT_DW):.2f}, oracle {mean(ORACLE):.2f}, BO at GBT's compute "
        f"{mean(BO_EQUAL):.2f}. {to_oracle} Final learned weights (mean over seeds): "
        f"{learned}. GBT vs no "
        f"weighting — {report.paired_summary(diffs[(GBT_DW, NONE)])}; "
        "GBT vs BO at its compute — "
        f"{report.paired_summary(diffs[(GBT_DW, BO_EQUAL)])}.")
    sections += [f"### Train noise {noise:g}", table, paired]
    bars.update({at(a, noise): [r.scores["bleu"] for r in runs[a]] for a in arms})
    traj = runs[GBT_DW][0].extra["trajectory"]
    weights = np.asarray(traj["data_weights"], dtype=float)
    panels[f"weights, noise {noise:g}"] = {
        name: (traj["steps"], weights[:, i]) for i, name in enumerate(
            demo_world.NOISE_BUCKET_NAMES[:weights.shape[1]])}
  report.plot_bars(os.path.join(exp.out, "bleu_by_arm.png"), list(bars), list(bars.values()),
                   "test BLEU", "noisy training data")
  report.plot_panels(os.path.join(exp.out, "learned_weights.png"), panels, "step",
                     f"data weights learned by GBT (seed {seeds[0]})")
  size = exp.size
  return report.write_experiment_report(
      exp.out, "Noisy data: learned data weights", size.quick, [
      "\n".join(verdicts),
      f"Setup: as guided_vs_plain ({size.train_steps} steps of {size.batch_size} packed rows, "
      f"tiny T5 {size.num_layers}+{size.num_layers} layers, the demo's schedule), with the "
      f"demo world's train noise at {list(noise_rates(exp))} (misaligned, truncated and "
      "untranslated "
      "copies in equal parts; guide, dev and test are clean). GBT learns the four bucket "
      f"weights (init 1; meta LR {exp.meta_lr:g}, a guided step every {size.hyper_step_every}) "
      f"from the clean guide task. BO: TPE over `{BO_SPACE}`, {num_trials} plain trials per seed "
      f"and noise rate, picked by guide-set loss. Seeds {seeds}; test BLEU on "
      f"{size.decode_examples} greedy-decoded test sentences. Compute in plain train steps (a "
      "run's steps × its seconds per step ÷ the no-weighting run's, same seed and noise; "
      f"{common.timing_basis(exp.store.all())}).",
      report.PAIRED_NOTE, *sections,
      "![test BLEU by arm](bleu_by_arm.png)\n\n![learned weights](learned_weights.png)",
      ], "noisy_data.py", exp.results_dir)


def main(argv: Sequence[str] | None = None) -> int:
  args = common.parse_args(__doc__.splitlines()[0], argv, _add_flags)
  num_trials = bo_trials(args)
  exp = common.setup(args, NAME, {"noise_rates": list(NOISE_RATES), "bo_space": BO_SPACE,
                                  "bo_trials": num_trials})
  return common.run_and_report(exp, run_all, write_report, num_trials)


if __name__ == "__main__":
  sys.exit(common.main_with_one_line_errors(main))
