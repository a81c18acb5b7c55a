"""Short-horizon bias: is the greedy (one-step lookahead) guided run's learning rate too small,
and does the long-horizon (forward-mode) hypergradient fix it?

    python scripts/experiments/short_horizon.py [--results_dir results] [--quick] [--seeds 0,1,2]

Per seed:
* greedy guided runs learning `SETS` (the LR multiplier alone; LR multiplier + Adam b1 + label
  smoothing together, the paper's remedy), keeping a checkpoint every twentieth of the run;
* branching diagnostic: from each greedy run's checkpoints at `BRANCH_FRACTIONS` of training,
  plain continuations to the end with the learned values held constant and the LR multiplier
  scaled by each of `SCALES` (the restored state keeps the optimizer moments and the step, so
  the schedule goes on where it was). A 2× continuation above the greedy run's own end says the
  greedy multiplier was too small;
* long horizon: the LR multiplier learned with `HYPERGRAD_HORIZON = 'forward'` and damping
  mu in `MUS`, against greedy (trajectories in one plot, final scores paired per seed).

Writes RESULTS_DIR/short_horizon/: report.md, lr_trajectories.png, branches.png,
experiment.json, records/ and runs/. Rerunning skips finished runs and resumes an interrupted
one; `--report_only` rebuilds the report.
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

from harness import common, report

NAME = "short_horizon"
SETS = {"LR": ("learning_rate",), "LR+b1+LS": ("learning_rate", "b1", "label_smoothing")}
BRANCH_FRACTIONS = (0.25, 0.6)
SCALES = (0.5, 1.0, 2.0)
MUS = (0.9, 0.99)
CHECKPOINTS_PER_RUN = 20


def plan(size) -> tuple[tuple[float, ...], tuple[float, ...], tuple[float, ...]]:
  """(branch fractions, LR scales, mus) at this size (--quick: one of each)."""
  return ((0.5,), (2.0,), (0.9,)) if size.quick else (BRANCH_FRACTIONS, SCALES, MUS)


def greedy_label(set_name: str) -> str:
  return f"greedy {set_name}"


def forward_label(mu: float) -> str:
  return f"forward mu={mu:g} LR"


def branch_label(set_name: str, fraction: float, scale: float) -> str:
  return f"branch {set_name} at {fraction:.0%} x{scale:g}"


def checkpoint_period(size) -> int:
  return max(1, size.train_steps // CHECKPOINTS_PER_RUN)


def branch_step(size, fraction: float) -> int:
  """The checkpoint step nearest `fraction` of the run (a multiple of the checkpoint period)."""
  period = checkpoint_period(size)
  return max(period, int(round(fraction * size.train_steps / period)) * period)


def values_at(trajectory_rows: Sequence[dict], step: int) -> dict[str, float]:
  """The guided values in effect after model step `step` (the trajectory row of that step)."""
  for row in trajectory_rows:
    if int(row["step"]) == step:
      return {k: float(v) for k, v in row["values"].items()}
  raise ValueError(f"the trajectory has no row for step {step}")


def run_all(exp: common.Experiment) -> None:
  from gbt_t5x.guided import export
  size, score = exp.size, common.translation_scores(exp)
  fractions, scales, mus = plan(size)
  keep_all = [f"train_lib.SaveCheckpointConfig.period = {checkpoint_period(size)}",
              "train_lib.SaveCheckpointConfig.keep = None"]
  gins = {s: common.guided_gin(os.path.join(exp.out, "gin", f"greedy_{i}.gin"), common.NMT_GIN,
                               kinds, exp.meta_lr, size.hyper_step_every)
          for i, (s, kinds) in enumerate(SETS.items())}
  forward_gins = {mu: common.guided_gin(
      os.path.join(exp.out, "gin", f"forward_mu{mu:g}.gin"), common.NMT_GIN, SETS["LR"],
      exp.meta_lr, size.hyper_step_every,
      extra=common.forward_horizon(mu)) for mu in mus}
  for seed in exp.seeds:
    for set_name in SETS:
      greedy = common.run_arm(exp, greedy_label(set_name), seed, [gins[set_name]], keep_all,
                              score, common.trajectory_extra)
      greedy_dir = os.path.join(exp.out, greedy.model_dir)
      rows = export.read_trajectory(greedy_dir)
      for fraction in fractions:
        step = branch_step(size, fraction)
        learned = values_at(rows, step)
        for scale in scales:
          label = branch_label(set_name, fraction, scale)
          constants = {**learned, "learning_rate": scale * learned["learning_rate"]}
          checkpoint = os.path.abspath(os.path.join(greedy_dir, "checkpoints", str(step)))
          gin_path = common.write_gin(
              os.path.join(exp.out, "runs", "branch_gin", f"{label.replace(' ', '_')}_s{seed}.gin"),
              [*export.schedule_gin_text({k: ([0], [v]) for k, v in constants.items()},
                                         f"{greedy_dir} at step {step}").splitlines(),
               "# Continue from the greedy run's state (params, optimizer moments, step).",
               "from gbt_t5x.train import train_lib",
               "train_lib.CheckpointConfig.restore = @train_lib.RestoreCheckpointConfig()",
               f"train_lib.RestoreCheckpointConfig.path = {checkpoint!r}",
               "train_lib.RestoreCheckpointConfig.reset_optimizer = False"])
          common.run_arm(exp, label, seed, [common.NMT_GIN, os.path.abspath(gin_path)],
                         [], score,
                         lambda _dir, step=step, constants=constants: {
                             "from_step": step, "constants": constants})
    for mu in mus:
      common.run_arm(exp, forward_label(mu), seed, [forward_gins[mu]], [], score,
                     common.trajectory_extra)


def write_report(exp: common.Experiment) -> str:
  seeds = list(exp.seeds)
  fractions, scales, mus = plan(exp.size)
  get = lambda label: [common.require_record(exp, label, s) for s in seeds]
  sections, verdicts, bars = [], [], {}
  for set_name in SETS:
    arms = [greedy_label(set_name)] + [branch_label(set_name, f, c)
                                        for f in fractions for c in scales]
    runs = {a: get(a) for a in arms}
    compute = {a: [float(r.train_steps - r.extra.get("from_step", 0)) for r in runs[a]]
               for a in arms}
    table = report.arm_table(arms, runs, compute).replace(
        "compute (plain steps)", "steps trained in the run")
    paired, diffs = report.paired_table(
        [(a, arms[0], f"{a} vs greedy") for a in arms[1:]], runs)
    above = [a for a in arms[1:] if report.interval_verdict(diffs[(a, arms[0])]["bleu"], True)
             == "better"]
    best = max(arms[1:], key=lambda a: np.mean([r.scores["bleu"] for r in runs[a]]))
    verdicts.append(
        f"- **{set_name}**: the best continuation ({best}, "
        f"{np.mean([r.scores['bleu'] for r in runs[best]]):.2f} test BLEU) vs greedy "
        f"{np.mean([r.scores['bleu'] for r in runs[arms[0]]]):.2f} — "
        f"{report.paired_summary(diffs[(best, arms[0])])}. Continuations clearly above greedy: "
        f"{', '.join(above) or 'none'}.")
    sections += [f"### Branching from the greedy run learning {set_name}", table, paired]
    bars.update({a: [r.scores["bleu"] for r in runs[a]] for a in arms})
  horizon_arms = [greedy_label("LR"), *[forward_label(mu) for mu in mus]]
  runs = {a: get(a) for a in horizon_arms}
  plain_sps = {r.seed: common.StepTime.of(r) for r in runs[greedy_label("LR")]}
  # Runs from before the trainer timed every window (a checkpoint every logging window left
  # none timed) have no step time: their compute is unknown, not their step count.
  timed = all(np.isfinite(v.wall) for v in plain_sps.values())
  compute = {a: [common.step_equivalents(r, plain_sps[r.seed]) if timed else float("nan")
                 for r in runs[a]] for a in horizon_arms}
  horizon_table = report.arm_table(horizon_arms, runs, compute).replace(
      "compute (plain steps)", "compute (greedy-run steps)")
  horizon_paired, horizon_diffs = report.paired_table(
      [(a, horizon_arms[0], f"{a} vs greedy") for a in horizon_arms[1:]], runs)
  for a in horizon_arms[1:]:
    cost = (f"{np.mean(compute[a]) / np.mean(compute[horizon_arms[0]]):.2f}× the greedy run's "
            "compute" if timed else "compute not compared: the greedy runs logged no step time")
    verdicts.append(f"- **{a}** ({cost}): "
                    f"{report.paired_summary(horizon_diffs[(a, horizon_arms[0])])}. "
                    + common.meta_step_summary(runs[a]))
  lines = {}
  for a in horizon_arms:
    traj = runs[a][0].extra["trajectory"]
    lines[a] = (traj["steps"], traj["learning_rate"])
  report.plot_lines(os.path.join(exp.out, "lr_trajectories.png"), lines, "step",
                    "learned LR multiplier", f"greedy vs forward horizon (seed {seeds[0]})")
  report.plot_bars(os.path.join(exp.out, "branches.png"), list(bars), list(bars.values()),
                   "test BLEU", "greedy run vs constant continuations")
  size = exp.size
  return report.write_experiment_report(
      exp.out, "Short-horizon bias and the long horizon", size.quick, [
      "\n".join(verdicts),
      f"Setup: as guided_vs_plain ({size.train_steps} steps of {size.batch_size} packed rows, "
      f"tiny T5 {size.num_layers}+{size.num_layers} layers, the demo's schedule; meta LR "
      f"{exp.meta_lr:g}, a guided step every {size.hyper_step_every}). Branches restore the "
      f"greedy run's checkpoint at steps {[branch_step(size, f) for f in fractions]} "
      "(params, optimizer moments and step) and train to the end as plain runs with the values "
      f"learned by then held constant, the LR multiplier scaled by {list(scales)}. The long "
      f"horizon carries forward-mode tangents through every model step, damped by mu in "
      f"{list(mus)}. Seeds {seeds}; test BLEU on {size.decode_examples} greedy-decoded test "
      "sentences.",
      report.PAIRED_NOTE, *sections, "### Greedy vs the long horizon (LR multiplier)",
      horizon_table, horizon_paired,
      "![LR trajectories](lr_trajectories.png)\n\n![branches](branches.png)",
      ], "short_horizon.py", exp.results_dir)


def main(argv: Sequence[str] | None = None) -> int:
  args = common.parse_args(__doc__.splitlines()[0], argv)
  exp = common.setup(args, NAME, {"sets": {k: list(v) for k, v in SETS.items()},
                                  "branch_fractions": list(BRANCH_FRACTIONS),
                                  "scales": list(SCALES), "mus": list(MUS)})
  return common.run_and_report(exp, run_all, write_report)


if __name__ == "__main__":
  sys.exit(common.main_with_one_line_errors(main))
