"""Guided vs plain: the demo configuration trained plain and guided, at equal steps and at equal
compute, plus an ablation that guides one kind at a time.

    python scripts/experiments/guided_vs_plain.py [--results_dir results] [--quick] [--seeds 0,1,2]

Arms (every one per seed, same seed = same initial params and data order):
* `plain`: the demo's translation config (`experiments/demo_nmt.gin`) at the experiment's size;
* `guided (all kinds)`: the demo's guided kinds (LR multiplier, Adam b1, label smoothing, the
  four noise-bucket data weights) learned from the clean guide task;
* `plain, equal compute`: plain with the guided run's cost as extra steps (its measured seconds
  per step / plain's, times the steps; CPU seconds of the training process, `common.StepTime`);
* `guided: <kind>`: one kind guided at a time (the ablation; `--quick`: the data weights only).

Writes RESULTS_DIR/guided_vs_plain/: report.md, bleu_by_arm.png, bleu_vs_compute.png,
learned_values.png, experiment.json, records/ (one JSON per finished run) and runs/. Rerunning
skips finished runs and resumes an interrupted one; `--report_only` rebuilds the report.
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

from harness import common, report, sizes

NAME = "guided_vs_plain"
ALL_KINDS = ("learning_rate", "b1", "label_smoothing", "data_weights")
KIND_TITLES = {"learning_rate": "LR multiplier", "b1": "Adam b1",
               "label_smoothing": "label smoothing", "data_weights": "data weights"}
PLAIN, GUIDED, EQUAL = "plain", "guided (all kinds)", "plain, equal compute"
# --quick ablates the data weights alone (CI time: each ablation arm is a guided step of its own
# to compile); the all-kinds arm covers scalar and vector kinds together.
QUICK_ABLATION_KINDS = ("data_weights",)


def ablation(size: sizes.Size) -> dict[str, str]:
  """Kind -> the label of the arm guiding it alone (--quick: one kind, to keep CI short)."""
  kinds = QUICK_ABLATION_KINDS if size.quick else ALL_KINDS
  return {kind: f"guided: {KIND_TITLES[kind]}" for kind in kinds}


def run_all(exp: common.Experiment) -> None:
  size = exp.size
  ablation_arms = ablation(size)
  score = common.translation_scores(exp)
  gin_dir = os.path.join(exp.out, "gin")
  guided_gins = {
      GUIDED: common.guided_gin(os.path.join(gin_dir, "guided_all.gin"), common.NMT_GIN,
                                ALL_KINDS, exp.meta_lr, size.hyper_step_every),
      **{label: common.guided_gin(os.path.join(gin_dir, f"guided_{kind}.gin"), common.NMT_GIN,
                                  (kind,), exp.meta_lr, size.hyper_step_every)
         for kind, label in ablation_arms.items()}}
  for seed in exp.seeds:
    plain = common.run_arm(exp, PLAIN, seed, [common.NMT_GIN], [], score)
    guided = common.run_arm(exp, GUIDED, seed, [guided_gins[GUIDED]], [], score,
                            common.trajectory_extra)
    equal_steps = int(round(common.step_equivalents(guided, common.StepTime.of(plain))))
    common.run_arm(exp, EQUAL, seed, [common.NMT_GIN], [], score, steps=equal_steps)
    for label in ablation_arms.values():
      common.run_arm(exp, label, seed, [guided_gins[label]], [], score, common.trajectory_extra)


def write_report(exp: common.Experiment) -> str:
  size = exp.size
  ablation_arms = ablation(size)
  arms = [PLAIN, GUIDED, EQUAL, *ablation_arms.values()]
  seeds = list(exp.seeds)
  runs = {a: [common.require_record(exp, a, s) for s in seeds] for a in arms}
  plain_sps = {r.seed: common.StepTime.of(r) for r in runs[PLAIN]}
  compute = {a: [common.step_equivalents(r, plain_sps[r.seed]) for r in runs[a]] for a in arms}
  values = lambda arm, key: [r.scores[key] for r in runs[arm]]

  table = report.arm_table(arms, runs, compute)
  comparisons = [(GUIDED, PLAIN, "guided vs plain, equal steps"),
                 (GUIDED, EQUAL, "guided vs plain, equal compute"),
                 *[(label, PLAIN, f"{label} vs plain") for label in ablation_arms.values()]]
  paired, diffs = report.paired_table(comparisons, runs)
  verdict_of = lambda a, b: report.interval_verdict(diffs[(a, b)]["bleu"], True)
  verdicts_by_kind = {k: verdict_of(label, PLAIN) for k, label in ablation_arms.items()}
  helps = [KIND_TITLES[k] for k, verdict in verdicts_by_kind.items() if verdict == "better"]
  hurts = [KIND_TITLES[k] for k, verdict in verdicts_by_kind.items() if verdict == "worse"]
  mean = lambda arm, key: float(np.mean(values(arm, key)))
  ratio = float(np.mean(compute[GUIDED]) / np.mean([r.train_steps for r in runs[GUIDED]]))
  ratios = ", ".join(f"seed {r.seed}: {c / r.train_steps:.2f}"
                     for r, c in zip(runs[GUIDED], compute[GUIDED]))
  verdicts = "\n".join([
      f"- **Equal steps**: guided {mean(GUIDED, 'bleu'):.2f} test BLEU vs plain "
      f"{mean(PLAIN, 'bleu'):.2f} — {report.paired_summary(diffs[(GUIDED, PLAIN)])}.",
      f"- **Equal compute** (a guided run costs {ratio:.2f}× a plain run's steps — {ratios} — "
      f"so plain gets {np.mean([r.train_steps for r in runs[EQUAL]]):.0f} steps): plain "
      f"{mean(EQUAL, 'bleu'):.2f} — {report.paired_summary(diffs[(GUIDED, EQUAL)])}.",
      *[f"- **{label}**: {mean(label, 'bleu'):.2f} — "
        f"{report.paired_summary(diffs[(label, PLAIN)])}." for label in ablation_arms.values()],
      f"- Guided one kind at a time, test BLEU is better with: {', '.join(helps) or 'none'}; "
      f"worse with: {', '.join(hurts) or 'none'}."])

  report.plot_bars(os.path.join(exp.out, "bleu_by_arm.png"), arms,
                   [values(a, "bleu") for a in arms], "test BLEU", "guided vs plain")
  report.plot_points(os.path.join(exp.out, "bleu_vs_compute.png"),
                     {a: (compute[a], values(a, "bleu")) for a in arms},
                     "compute (plain train-step equivalents)", "test BLEU",
                     f"test BLEU against compute (mean ± std over {len(seeds)} seeds)")
  traj = runs[GUIDED][0].extra["trajectory"]
  from gbt_t5x.data import demo_world
  panels = {}
  for kind in ALL_KINDS:
    ys = np.asarray(traj[kind], dtype=float)
    if ys.ndim == 2:
      names = demo_world.NOISE_BUCKET_NAMES if ys.shape[1] == len(
          demo_world.NOISE_BUCKET_NAMES) else [str(i) for i in range(ys.shape[1])]
      panels[KIND_TITLES[kind]] = {n: (traj["steps"], ys[:, i]) for i, n in enumerate(names)}
    else:
      panels[KIND_TITLES[kind]] = {KIND_TITLES[kind]: (traj["steps"], ys)}
  report.plot_panels(os.path.join(exp.out, "learned_values.png"), panels, "step",
                     f"values learned by the guided run (all kinds, seed {seeds[0]})")

  final = {kind: np.asarray(traj[kind], dtype=float)[-1] for kind in ALL_KINDS}
  final_text = ", ".join(
      f"{KIND_TITLES[k]} " + (", ".join(f"{n} {v:.2f}" for n, v in zip(
          demo_world.NOISE_BUCKET_NAMES, final[k])) if final[k].ndim else f"{float(final[k]):.3g}")
      for k in ALL_KINDS)
  return report.write_experiment_report(
      exp.out, "Guided vs plain: the demo configuration", size.quick, [
      verdicts,
      "Setup: the demo world with English sentences of at most "
      f"{size.world.get('max_target_words', 25)} "
      f"words, packed {size.lengths['inputs']}/{size.lengths['targets']}-token rows, tiny T5 "
      f"({size.num_layers}+{size.num_layers} layers), {size.train_steps} steps of "
      f"{size.batch_size} rows, the demo's schedule (AdamW 2e-3, 100 warmup steps, linear decay "
      "to 0; b1 0.9, b2 0.98, label smoothing 0, data weights 1). Guided runs start from those "
      "values (guided label smoothing from its gin default 0.1), learn them from the clean guide "
      f"task `demo_nmt_guide` with a guided step every {size.hyper_step_every} steps and meta "
      f"learning rate {exp.meta_lr:g} (ln 10 / {size.guided_steps} guided steps: the run can move "
      "a value by a factor 10). Test BLEU / word F1: greedy decoding of "
      f"{size.decode_examples} test sentences; dev loss: teacher-forced over "
      f"{'the whole dev split' if size.eval_batches is None else f'{size.eval_batches} batches'}."
      f" Seeds {seeds}; mean ± std over seeds. Compute is counted in plain train steps: a run's "
      "steps × its measured steady-state seconds per step ÷ the plain run's (same seed, same "
      f"process; {common.timing_basis([r for rs in runs.values() for r in rs])}).",
      table,
      report.PAIRED_NOTE,
      paired,
      f"Learned values at the end of the guided run (seed {seeds[0]}): {final_text}.",
      "![test BLEU by arm](bleu_by_arm.png)\n\n![BLEU vs compute](bleu_vs_compute.png)\n\n"
      "![learned values](learned_values.png)",
      ], "guided_vs_plain.py", exp.results_dir)


def main(argv: Sequence[str] | None = None) -> int:
  args = common.parse_args(__doc__.splitlines()[0], argv)
  exp = common.setup(args, NAME, {"kinds": list(ALL_KINDS)})
  return common.run_and_report(exp, run_all, write_report)


if __name__ == "__main__":
  sys.exit(common.main_with_one_line_errors(main))
