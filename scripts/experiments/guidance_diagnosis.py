"""Guidance diagnosis: why do the guided optimizer values lose to plain training, and which remedy
keeps them from it?

    python scripts/experiments/guidance_diagnosis.py [--results_dir results] [--quick]

Phase 1, diagnosis (per seed s, the demo translation config at the experiment's size, the same
regime and seeds as guided_vs_plain):
* `plain` and `guided: LR multiplier` (greedy, as guided_vs_plain), with their train-loss curves
  (a window of `LOG_EVERY` steps per point) and, for the guided run, the signed hypergradient of
  every guided step;
* `constant: guided peak` and `constant: guided final`: plain runs at a constant LR multiplier
  equal to the guided run's largest and last value on the same seed. If they fail too, the
  default sits at the edge of stability and guiding only exposed it; if they do not, the loss
  comes from the path (when the values moved), not from the values reached;
* `plain: label smoothing 0.1` and `guided: label smoothing`: guided label smoothing starts at 0.1
  (a sigmoid value cannot start at 0), so its plain control trains at 0.1 as well.

Phase 2, remedies (each with the LR multiplier alone and with all kinds of guided_vs_plain: LR
multiplier, Adam b1, label smoothing, data weights), chosen from the diagnosis:
* `late start`: no guided steps before step `LATE_START_FRACTION` of the run (the guided run
  raises the LR in the first few hundred steps, at the schedule's peak);
* `averaged K`: the hypergradients of K guided steps averaged before one meta step (meta LR × K,
  so the values can still cover the same range);
* `guide batch ×4`: a 4× larger guide batch every 4× fewer steps (the same guided compute; meta
  LR × 4).
The all-kinds arm without a remedy is `guided: all kinds`. And for label smoothing, whose one-step
hypergradient points against its whole-run effect (the report's direction section), the long
horizon: `guided: label smoothing, forward mu=0.9` (forward-mode tangents through every model
step, `HORIZON_MU`), from the same start as its greedy arm.

Scores: dev loss (primary), test BLEU on the whole test split, compute in plain-step equivalents.
Writes RESULTS_DIR/guidance_diagnosis/: report.md, loss_curves.png, hypergradients.png,
remedies.png, experiment.json, records/ and runs/. Rerunning skips finished runs and resumes an
interrupted one; `--report_only` rebuilds the report from the records.
"""
from __future__ import annotations

import sys

from gbt_t5x import console

if __name__ == "__main__":
  console.configure(sys.argv, import_tensorflow=False)

import os
from typing import Any, Sequence

import numpy as np

from harness import common, records as records_lib, report

NAME = "guidance_diagnosis"
BASE_LR = 0.002  # experiments/demo_nmt.gin
_LR_BINDING = "learning_rate.create_learning_rate_scheduler.base_learning_rate"
LOG_POINTS = 120  # train-loss windows per run (LOG_EVERY = steps / LOG_POINTS)
ALL_KINDS = ("learning_rate", "b1", "label_smoothing", "data_weights")
LR_ONLY = ("learning_rate",)
LS_START = 0.1
LATE_START_FRACTION = 0.1
AVERAGE_EVERY = 8
GUIDE_BATCH_FACTOR = 4
# Spike rule: a logged window whose mean train loss exceeds the lowest earlier window by more
# than SPIKE_RATIO (after the first SPIKE_FROM_FRACTION of the run, where the loss still falls).
SPIKE_RATIO = 1.05
SPIKE_FROM_FRACTION = 0.05
SNR_WINDOW = 50  # guided steps per signal-to-noise window

PLAIN, LR_GUIDED = "plain", "guided: LR multiplier"
PEAK, FINAL = "constant: guided peak", "constant: guided final"
LS_PLAIN, LS_GUIDED = f"plain: label smoothing {LS_START:g}", "guided: label smoothing"
ALL_GUIDED = "guided: all kinds"
HORIZON_MU = 0.9  # short_horizon's damping with the fewer skipped meta updates
LS_FORWARD = f"guided: label smoothing, forward mu={HORIZON_MU:g}"
REMEDIES = ("late start", f"averaged {AVERAGE_EVERY}", f"guide batch x{GUIDE_BATCH_FACTOR}")


# schedule_vs_constant's grid of plain runs at a constant value (kind, value, record label); the
# default (LR multiplier 1, label smoothing 0) is its "constant: default" run.
CONSTANTS_EXPERIMENT = "schedule_vs_constant"
CONSTANT_GRID = (
    *[("learning_rate", m, f"constant: LR multiplier {m:g}") for m in (0.5, 2.0, 4.0)],
    *[("label_smoothing", v, f"constant: label smoothing {v:g}") for v in (0.05, 0.1, 0.2)])
DEFAULTS = {"learning_rate": 1.0, "label_smoothing": 0.0}


def constant_runs(results_dir: str, seeds: Sequence[int]) -> dict[tuple[str, float], list[Any]]:
  """{(kind, value): schedule_vs_constant's records on `seeds`} for each grid value (the default
  under both kinds) with a record on every seed; empty when that experiment is not there."""
  path = os.path.join(results_dir, CONSTANTS_EXPERIMENT)
  if not os.path.exists(os.path.join(path, "experiment.json")):
    return {}
  store = records_lib.load_store(path)
  grid = [*CONSTANT_GRID, *[(k, v, "constant: default") for k, v in DEFAULTS.items()]]
  out = {}
  for kind, value, label in grid:
    records = [store.get(label, s) for s in seeds]
    if all(r is not None for r in records):
      out[(kind, value)] = records
  return out


def remedy_arm(remedy: str, kinds: Sequence[str]) -> str:
  return f"{'LR' if tuple(kinds) == LR_ONLY else 'all kinds'}, {remedy}"


def remedy_bindings(remedy: str, exp: common.Experiment) -> tuple[list[str], float, int]:
  """(extra gin lines, meta LR, guided-step period) of a remedy."""
  size = exp.size
  if remedy == "late start":
    start = int(size.train_steps * LATE_START_FRACTION)
    guided_steps = (size.train_steps - start) // size.hyper_step_every
    return ([f"GUIDE_FROM_STEP = {start}"], exp.meta_lr * size.guided_steps / guided_steps,
            size.hyper_step_every)
  if remedy.startswith("averaged"):
    return ([f"META_AVERAGE_EVERY = {AVERAGE_EVERY}"], exp.meta_lr * AVERAGE_EVERY,
            size.hyper_step_every)
  return ([f"GUIDE_BATCH_SIZE = {size.batch_size * GUIDE_BATCH_FACTOR}"],
          exp.meta_lr * GUIDE_BATCH_FACTOR, size.hyper_step_every * GUIDE_BATCH_FACTOR)


def log_binding(exp: common.Experiment) -> str:
  return f"LOG_EVERY = {max(1, exp.size.train_steps // LOG_POINTS)}"


def curve_extra(model_dir: str) -> dict[str, Any]:
  """The run's train-loss curve for its record: {'loss_curve': {'steps': [...], 'loss': [...]}}
  (one point per logged window, nats per target token)."""
  from gbt_t5x.train import summaries
  rows = summaries.read_metrics_log(os.path.join(model_dir, "metrics.jsonl"))
  points = {int(r["step"]): float(r["train/loss"]) for r in rows if "train/loss" in r}
  steps = sorted(points)
  return {"loss_curve": {"steps": steps, "loss": [points[s] for s in steps]}}


def guided_extra(model_dir: str) -> dict[str, Any]:
  """Curve, learned values and the signed scalar hypergradients of every guided step."""
  from gbt_t5x.guided import export
  rows = [r for r in export.read_trajectory(model_dir) if "hypergrad" in r]
  names = sorted({k for r in rows for k in r["hypergrad"]})
  hypergrads = {"steps": [int(r["step"]) for r in rows],
                **{n: [r["hypergrad"].get(n, float("nan")) for r in rows] for n in names}}
  return {**curve_extra(model_dir), **common.trajectory_extra(model_dir),
          "hypergrads": hypergrads}


def count_spikes(curve: dict[str, list[float]], train_steps: int) -> int:
  """Windows that break the spike rule (`SPIKE_RATIO` above the lowest earlier window)."""
  lowest, spikes = float("inf"), 0
  for step, loss in zip(curve["steps"], curve["loss"]):
    if step > SPIKE_FROM_FRACTION * train_steps and loss > SPIKE_RATIO * lowest:
      spikes += 1
    lowest = min(lowest, loss)
  return spikes


def snr_windows(values: Sequence[float]) -> list[float]:
  """|mean| / std of the hypergradient over consecutive windows of `SNR_WINDOW` guided steps."""
  out = []
  for i in range(0, len(values) - SNR_WINDOW + 1, SNR_WINDOW):
    window = np.asarray(values[i:i + SNR_WINDOW], dtype=np.float64)
    window = window[np.isfinite(window)]
    if len(window) > 1 and np.std(window) > 0:
      out.append(float(abs(np.mean(window)) / np.std(window)))
  return out


def run_all(exp: common.Experiment) -> None:
  score = common.translation_scores(exp)
  gin_dir = os.path.join(exp.out, "gin")
  every = exp.size.hyper_step_every
  log = [log_binding(exp)]

  def guided(name: str, kinds: Sequence[str], meta_lr: float, period: int,
             extra: Sequence[str] = ()) -> str:
    return common.guided_gin(os.path.join(gin_dir, f"{name}.gin"), common.NMT_GIN, kinds,
                             meta_lr, period, extra=extra)

  lr_gin = guided("lr", LR_ONLY, exp.meta_lr, every)
  ls_gin = guided("label_smoothing", ("label_smoothing",), exp.meta_lr, every)
  all_gin = guided("all_kinds", ALL_KINDS, exp.meta_lr, every)
  for seed in exp.seeds:
    common.run_arm(exp, PLAIN, seed, [common.NMT_GIN], log, score, curve_extra)
    lr_run = common.run_arm(exp, LR_GUIDED, seed, [lr_gin], log, score, guided_extra)
    values = lr_run.extra["trajectory"]["learning_rate"]
    for label, multiplier in ((PEAK, max(values)), (FINAL, values[-1])):
      common.run_arm(exp, label, seed, [common.NMT_GIN],
                     [*log, f"{_LR_BINDING} = {BASE_LR * multiplier!r}"], score,
                     lambda d, m=multiplier: {**curve_extra(d), "lr_multiplier": m})
    common.run_arm(exp, LS_PLAIN, seed, [common.NMT_GIN], [*log, f"LABEL_SMOOTHING = {LS_START}"],
                   score, curve_extra)
    common.run_arm(exp, LS_GUIDED, seed, [ls_gin], log, score, guided_extra)
  # The LR-only remedies of every seed first: bad_defaults picks its remedy from them.
  for kinds in (LR_ONLY, ALL_KINDS):
    for seed in exp.seeds:
      if kinds == ALL_KINDS:
        common.run_arm(exp, ALL_GUIDED, seed, [all_gin], log, score, guided_extra)
      for remedy in REMEDIES:
        extra, meta_lr, period = remedy_bindings(remedy, exp)
        tag = remedy.split()[0] + ("_lr" if kinds == LR_ONLY else "_all")
        gin_file = guided(f"remedy_{tag}", kinds, meta_lr, period, extra)
        common.run_arm(exp, remedy_arm(remedy, kinds), seed, [gin_file], log, score,
                       guided_extra)
  run_label_smoothing_horizon(exp)


def run_label_smoothing_horizon(exp: common.Experiment) -> None:
  """Guided label smoothing with the long (forward) horizon, from the same start: the remedy the
  direction section points to, since the one-step hypergradient of label smoothing asks for less
  on every guided step while plain runs end better with more."""
  gin_file = common.guided_gin(
      os.path.join(exp.out, "gin", f"label_smoothing_forward_mu{HORIZON_MU:g}.gin"),
      common.NMT_GIN, ("label_smoothing",), exp.meta_lr, exp.size.hyper_step_every,
      extra=common.forward_horizon(HORIZON_MU))
  for seed in exp.seeds:
    common.run_arm(exp, LS_FORWARD, seed, [gin_file], [log_binding(exp)],
                   common.translation_scores(exp), guided_extra)


def best_lr_remedy(store: Any, seeds: Sequence[int]) -> str | None:
  """The LR-only remedy with the lowest mean dev loss (the primary metric; never the test split)
  over `seeds`, once each remedy has a record on every seed; None before."""
  means = {}
  for remedy in REMEDIES:
    runs = [store.get(remedy_arm(remedy, LR_ONLY), s) for s in seeds]
    if any(r is None for r in runs):
      return None
    means[remedy] = float(np.mean([r.scores["dev_loss"] for r in runs]))
  return min(means, key=means.get)


def _mean(values: Sequence[float]) -> float:
  return float(np.mean(values)) if len(values) else float("nan")


def write_report(exp: common.Experiment) -> str:
  seeds = list(exp.seeds)
  remedy_arms = [remedy_arm(r, k) for r in REMEDIES for k in (LR_ONLY, ALL_KINDS)]
  arms = [PLAIN, LR_GUIDED, PEAK, FINAL, LS_PLAIN, LS_GUIDED, LS_FORWARD, ALL_GUIDED,
          *remedy_arms]
  stored = {a: [exp.store.get(a, s) for s in seeds] for a in arms}
  done = [a for a in arms if all(r is not None for r in stored[a])]
  if PLAIN not in done or LR_GUIDED not in done:
    raise ValueError(f"no complete plain and LR-guided records for seeds {seeds} in {exp.out}: "
                     "rerun without --report_only")
  runs = {a: stored[a] for a in done}
  plain_sps = {r.seed: common.StepTime.of(r) for r in runs[PLAIN]}
  compute = {a: [common.step_equivalents(r, plain_sps[r.seed]) for r in runs[a]] for a in done}
  table = report.arm_table(done, runs, compute)
  steps = exp.size.train_steps
  spikes = {a: [count_spikes(r.extra["loss_curve"], steps) for r in runs[a]] for a in done}
  spike_table = report.markdown_table(
      ["arm", *[f"seed {s}" for s in seeds], "LR multiplier (peak / final)"],
      [[a, *[str(n) for n in spikes[a]],
        " ; ".join(_multiplier_note(r) for r in runs[a])] for a in done])
  comparisons = [(LR_GUIDED, PLAIN, "LR-guided vs plain"),
                 (PEAK, PLAIN, "constant at the guided peak vs plain"),
                 (FINAL, PLAIN, "constant at the guided final value vs plain"),
                 (LR_GUIDED, FINAL, "LR-guided vs constant at its final value"),
                 (LS_GUIDED, LS_PLAIN, f"guided label smoothing vs plain at {LS_START:g}"),
                 (LS_FORWARD, LS_PLAIN, f"{LS_FORWARD} vs plain at {LS_START:g}"),
                 (LS_FORWARD, LS_GUIDED, f"{LS_FORWARD} vs the greedy horizon"),
                 (ALL_GUIDED, PLAIN, "all kinds vs plain")]
  comparisons += [(a, PLAIN, f"{a} vs plain") for a in remedy_arms]
  comparisons += [(remedy_arm(r, k), LR_GUIDED if k == LR_ONLY else ALL_GUIDED,
                   f"{remedy_arm(r, k)} vs no remedy") for r in REMEDIES for k in (LR_ONLY,
                                                                                  ALL_KINDS)]
  comparisons = [c for c in comparisons if c[0] in done and c[1] in done]
  paired, diffs = report.paired_table(comparisons, runs)
  snr = _snr_section(runs)
  gap_table = _gap_table(runs, steps)
  _plot_curves(exp, runs)
  interim = ([f"**Interim: {len(seeds)} seed(s) so far; a verdict (better / worse) needs every "
              "one of ≥ 3 seeds to agree.**"] if len(seeds) < 3 else [])
  sections = [*interim, _verdicts(runs, diffs, spikes, compute),
              f"Setup: as guided_vs_plain (the demo world with sentences of at most "
              f"{exp.size.world.get('max_target_words', 25)} words, tiny T5 "
              f"{exp.size.num_layers}+{exp.size.num_layers} layers, {steps} steps of "
              f"{exp.size.batch_size} packed rows, AdamW 2e-3, 100 warmup steps and linear "
              f"decay; guided runs: meta LR {exp.meta_lr:g}, a guided step every "
              f"{exp.size.hyper_step_every}). Seeds {seeds}; test BLEU on the first "
              f"{exp.size.decode_examples} greedy-decoded test sentences (as in the experiments "
              "it diagnoses); dev loss is the primary metric. Arms not yet run are left out of "
              "the tables.",
              table, "Loss spikes (rule: a logged window of "
              f"{max(1, steps // LOG_POINTS)} steps whose mean train loss is more than "
              f"{(SPIKE_RATIO - 1) * 100:.0f} % above the lowest earlier window, after the first "
              f"{SPIKE_FROM_FRACTION * 100:.0f} % of the run), per seed:", spike_table,
              "Train loss against plain's on the same seed (mean difference of the logged "
              "windows, nats per token) in each third of the run: a gap opened early and kept "
              "is a path effect; one that follows the current value is the value's:", gap_table,
              snr, _direction_section(exp, runs), report.PAIRED_NOTE, paired,
              "![train loss](loss_curves.png)\n\n![hypergradients](hypergradients.png)"]
  return report.write_experiment_report(exp.out, "Guidance diagnosis", exp.size.quick, sections,
                                        "guidance_diagnosis.py", exp.results_dir)


def loss_gap_by_third(curve: dict[str, list[float]], plain: dict[str, list[float]],
                      train_steps: int) -> list[float]:
  """Mean train-loss difference (run − plain, same logged steps) in each third of the run."""
  reference = dict(zip(plain["steps"], plain["loss"]))
  out = []
  for third in range(3):
    lo, hi = third * train_steps / 3, (third + 1) * train_steps / 3
    diffs = [loss - reference[step] for step, loss in zip(curve["steps"], curve["loss"])
             if lo < step <= hi and step in reference]
    out.append(float(np.mean(diffs)) if diffs else float("nan"))
  return out


def _gap_table(runs: dict[str, list[Any]], train_steps: int) -> str:
  plain = {r.seed: r.extra["loss_curve"] for r in runs[PLAIN]}
  rows = []
  for arm, records in runs.items():
    if arm == PLAIN:
      continue
    gaps = np.array([loss_gap_by_third(r.extra["loss_curve"], plain[r.seed], train_steps)
                     for r in records])
    rows.append([arm, *[report.fmt(gaps[:, i].tolist()) for i in range(3)]])
  return report.markdown_table(["arm", "first third", "second third", "last third"], rows)


def _multiplier_note(record: Any) -> str:
  if "lr_multiplier" in record.extra:
    return f"{record.extra['lr_multiplier']:.3f} (constant)"
  values = record.extra.get("trajectory", {}).get("learning_rate")
  if not values:
    return "1 (constant)"
  return f"{max(values):.3f} / {values[-1]:.3f}"


def _direction_section(exp: common.Experiment, runs: dict[str, list[Any]]) -> str:
  """Where the guidance moves a value against where a whole run at a constant value is better:
  the guided runs' start / peak / final value and the share of their hypergradients asking for
  less, beside schedule_vs_constant's dev loss per constant (mean over the same seeds)."""
  constants = constant_runs(exp.results_dir, [r.seed for r in runs[PLAIN]])
  rows, verdicts = [], []
  for arm, kind in ((LR_GUIDED, "learning_rate"), (LS_GUIDED, "label_smoothing"),
                    (LS_FORWARD, "label_smoothing")):
    grid = sorted((v, rs) for (k, v), rs in constants.items() if k == kind)
    if arm not in runs or not grid:
      continue
    paths = [r.extra["trajectory"][kind] for r in runs[arm]]
    asks_less = [float(np.mean(np.asarray(r.extra["hypergrads"][kind]) > 0)) for r in runs[arm]]
    best_value = min(grid, key=lambda g: _mean([r.scores["dev_loss"] for r in g[1]]))[0]
    moves = {np.sign(p[-1] - p[0]) for p in paths}
    if len(moves) == 1 and (best_value - paths[0][0]) * moves.pop() < 0:
      verdicts.append(
          f"- {arm}: the guidance ends {'below' if paths[0][-1] < paths[0][0] else 'above'} its "
          f"start on every seed, while the constant with the lowest dev loss ({best_value:g}) "
          "lies the other way: the one-step guide gradient points against the value's "
          "whole-run effect.")
    rows.append([
        arm,
        " ; ".join(f"{p[0]:.3g} / {max(p):.3g} / {p[-1]:.3g}" for p in paths),
        ", ".join(f"{a * 100:.0f} %" for a in asks_less),
        ", ".join(f"{v:g}: {_mean([r.scores['dev_loss'] for r in rs]):.3f}" for v, rs in grid)])
  if not rows:
    return ""
  return ("Direction of the guidance against the whole-run effect of the value: the guided "
          "value per seed (start / peak / final), the share of guided steps whose hypergradient "
          "asks for a smaller value, and the dev loss of plain runs at a constant value "
          f"({CONSTANTS_EXPERIMENT}, mean over the same seeds). Where the guidance walks the "
          "value away from the constants with the lower dev loss, the one-step guide gradient "
          "points against the value's effect over the run (short-horizon bias):\n\n"
          + report.markdown_table(["arm", "guided value: start / peak / final",
                                   "hypergradients asking for less",
                                   "dev loss of plain at a constant value"], rows)
          + ("\n\n" + "\n".join(verdicts) if verdicts else ""))


def _snr_section(runs: dict[str, list[Any]]) -> str:
  """A table of the LR hypergradient's signal-to-noise ratio per arm (median over windows)."""
  rows = []
  for arm, records in runs.items():
    per_seed = []
    for r in records:
      values = r.extra.get("hypergrads", {}).get("learning_rate")
      if values:
        windows = snr_windows(values)
        positive = float(np.mean(np.asarray(values) > 0))
        per_seed.append(f"{np.median(windows) if windows else float('nan'):.2f} "
                        f"({positive * 100:.0f} % > 0)")
    if per_seed:
      rows.append([arm, *per_seed])
  if not rows:
    return ""
  return ("LR hypergradient signal-to-noise: median over windows of "
          f"{SNR_WINDOW} guided steps of |mean| / std, and the share of guided steps whose "
          "hypergradient is positive (the guide asks for a smaller LR), per seed:\n\n"
          + report.markdown_table(["arm", *[f"seed {r.seed}" for r in runs[PLAIN]]], rows))


def _verdicts(runs, diffs, spikes, compute) -> str:
  lines = []

  def dev(a, b):
    return diffs[(a, b)]["dev_loss"] if (a, b) in diffs else None

  for a, b, what in ((PEAK, PLAIN, "A plain run at the guided run's peak LR multiplier"),
                     (FINAL, PLAIN, "A plain run at its final multiplier"),
                     (LR_GUIDED, PLAIN, "The LR-guided run"),
                     (LS_GUIDED, LS_PLAIN, f"Guided label smoothing (vs plain at {LS_START:g})"),
                     (LS_FORWARD, LS_PLAIN,
                      f"Guided label smoothing, forward horizon mu={HORIZON_MU:g} (vs plain at "
                      f"{LS_START:g})"),
                     (LS_FORWARD, LS_GUIDED,
                      f"Guided label smoothing, forward horizon mu={HORIZON_MU:g} (vs greedy)"),
                     (ALL_GUIDED, PLAIN, "All kinds guided")):
    if (a, b) in diffs:
      lines.append(f"- {what}: {report.paired_summary(diffs[(a, b)])}; loss spikes per seed "
                   f"{spikes[a]} (reference {spikes[b]}).")
  for remedy in REMEDIES:
    for kinds in (LR_ONLY, ALL_KINDS):
      arm = remedy_arm(remedy, kinds)
      if (arm, PLAIN) in diffs:
        lines.append(f"- {arm} ({_mean(compute[arm]):.0f} plain steps of compute): vs plain "
                     f"{report.paired_summary(diffs[(arm, PLAIN)])}.")
  del dev
  return "\n".join(lines)


def _plot_curves(exp: common.Experiment, runs: dict[str, list[Any]]) -> None:
  panels = {}
  for r_plain, r_lr in zip(runs[PLAIN], runs[LR_GUIDED]):
    series = {a: (runs[a][i].extra["loss_curve"]["steps"], runs[a][i].extra["loss_curve"]["loss"])
              for a in (PLAIN, LR_GUIDED, PEAK, FINAL) if a in runs
              for i in [[r.seed for r in runs[a]].index(r_plain.seed)]}
    panels[f"train loss, seed {r_plain.seed}"] = series
    traj = r_lr.extra["trajectory"]
    panels[f"LR multiplier, seed {r_lr.seed}"] = {LR_GUIDED: (traj["steps"],
                                                              traj["learning_rate"])}
  report.plot_panels(os.path.join(exp.out, "loss_curves.png"), panels, "step",
                     "train loss of plain and LR-guided runs, and the learned LR multiplier")
  hyper = {}
  for arm in (LR_GUIDED, *[remedy_arm(r, LR_ONLY) for r in REMEDIES]):
    for r in runs.get(arm, []):
      h = r.extra["hypergrads"]
      hyper.setdefault(f"seed {r.seed}", {})[arm] = (h["steps"], h["learning_rate"])
  report.plot_panels(os.path.join(exp.out, "hypergradients.png"), hyper, "step",
                     "signed LR hypergradient per guided step (> 0: the guide asks for less)")


def main(argv: Sequence[str] | None = None) -> int:
  args = common.parse_args(__doc__.splitlines()[0], argv)
  exp = common.setup(args, NAME, {
      "all_kinds": list(ALL_KINDS), "ls_start": LS_START, "log_points": LOG_POINTS,
      "late_start_fraction": LATE_START_FRACTION, "average_every": AVERAGE_EVERY,
      "guide_batch_factor": GUIDE_BATCH_FACTOR})
  return common.run_and_report(exp, run_all, write_report)


if __name__ == "__main__":
  sys.exit(common.main_with_one_line_errors(main))
