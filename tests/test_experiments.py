"""End-to-end `--quick` runs of the experiment scripts comparing guided with plain runs and
constants: each writes its report (mean ± std tables of finite numbers, paired differences, PNGs);
a rerun skips finished runs; an interrupted run resumes from its checkpoint to the same result;
bad flags are one-line errors that touch nothing. (The searches and pretraining experiments are in
`test_experiments_search.py`, a separate module so that pytest-xdist runs the two on different
workers.)"""
from __future__ import annotations

import importlib.util
import json
import math
import pathlib
import shutil

import pytest

from harness import common, report, sizes
from harness import records as records_lib
from tests.experiment_helpers import (SCRIPTS, assert_rerun_skips_finished_runs, check_tables,
                                      run_script, snapshot)


@pytest.mark.slow
def test_guided_vs_plain_quick_skips_finished_runs_and_resumes(results_dir):
  out = results_dir / "guided_vs_plain"
  run_script("guided_vs_plain.py", results_dir, "--seeds=0")
  text = (out / "report.md").read_text()
  tables = check_tables(text, "arm")
  arms = [row["arm"] for row in tables[0]]
  # (--quick ablates the data weights alone; the default size all four kinds.)
  assert arms == ["plain", "guided (all kinds)", "plain, equal compute", "guided: data weights"]
  assert len(tables[1]) == 3 and "Equal compute" in text
  for png in ("bleu_by_arm.png", "bleu_vs_compute.png", "learned_values.png"):
    assert (out / png).stat().st_size > 1000
  # The equal-compute plain run gets the guided run's measured cost as extra steps.
  records = {json.loads(p.read_text())["label"]: json.loads(p.read_text())
             for p in (out / "records").glob("*.json")}
  plain, guided = records["plain"], records["guided (all kinds)"]
  # (in CPU seconds of the training process, which other processes hardly change)
  ratio = guided["cpu_seconds_per_step"] / plain["cpu_seconds_per_step"]
  assert records["plain, equal compute"]["train_steps"] == round(guided["train_steps"] * ratio)
  assert "untranslated copy" in text  # learned data weights carry the bucket names

  # An interrupted run (no record, its last checkpoint lost) resumes from the checkpoint before
  # and ends with the same scores as the uninterrupted run; the rerun skips every finished run
  # (one training; their records untouched).
  before = snapshot(out / "records")
  (out / "records" / "plain__seed0.json").unlink()
  checkpoints = out / "runs" / "plain__seed0" / "checkpoints"
  steps = sorted(int(p.name) for p in checkpoints.iterdir() if p.name.isdigit())
  shutil.rmtree(checkpoints / str(steps[-1]))
  proc = run_script("guided_vs_plain.py", results_dir, "--seeds=0")
  assert f"[plain | seed 0] training (resuming at step {steps[-2]})" in proc.stdout
  assert proc.stdout.count("] training") == 1
  after = snapshot(out / "records")
  assert {k: v for k, v in after.items() if k != "plain__seed0.json"} == {
      k: v for k, v in before.items() if k != "plain__seed0.json"}
  resumed = json.loads((out / "records" / "plain__seed0.json").read_text())
  assert resumed["train_steps"] == plain["train_steps"]
  for key, value in plain["scores"].items():
    assert resumed["scores"][key] == pytest.approx(value, rel=1e-5, abs=1e-6), key

  # --report_only rebuilds the same report from the records alone.
  report_text = (out / "report.md").read_text()
  (out / "report.md").unlink()
  run_script("guided_vs_plain.py", results_dir, "--seeds=0", "--report_only")
  assert (out / "report.md").read_text() == report_text


def write_records_of_another_meta_lr(out) -> None:
  """A guided_vs_plain --quick folder as a run with --meta_lr=0.25 leaves it (its configuration
  as `common.setup` writes it, and one record)."""
  spec = importlib.util.spec_from_file_location("guided_vs_plain", SCRIPTS / "guided_vs_plain.py")
  script = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(script)
  store = records_lib.RunStore(str(out), common.experiment_config(
      "guided_vs_plain", sizes.QUICK, 0.25, {"kinds": list(script.ALL_KINDS)}))
  (pathlib.Path(store.records_dir) / "plain__seed0.json").write_text('{"label": "plain"}')


@pytest.mark.slow
@pytest.mark.parametrize("flags, message", [
    (["--seeds="], "--seeds must be a comma-separated list"),
    (["--seeds=0,1,0"], "more than once"),
    (["--seeds=0", "--meta_lr=0.5"], "holds records of another configuration (differs in "
                                     "meta_lr)"),
])
def test_bad_flags_are_one_line_errors_and_touch_nothing(tmp_path, flags, message):
  out = tmp_path / "guided_vs_plain"
  if any(f.startswith("--meta_lr") for f in flags):
    write_records_of_another_meta_lr(out)
  before = snapshot(out) if out.exists() else {}
  proc = run_script("guided_vs_plain.py", tmp_path, *flags, check=False, timeout=120)
  assert proc.returncode == 2
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and message in lines[0], proc.stderr
  assert (snapshot(out) if out.exists() else {}) == before


@pytest.mark.slow
@pytest.mark.parametrize("args, message", [
    (["nosuch.gin"], "no gin file nosuch.gin"),
    (["gin/experiments/demo_nmt.gin", "--steps=10"], "--steps must be >= 40"),
])
def test_cost_probe_bad_input_is_one_line_error(results_dir, args, message):
  proc = run_script("cost_probe.py", results_dir, *args, check=False, timeout=120)
  assert proc.returncode == 2
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and message in lines[0], proc.stderr
  assert not (results_dir / "cost_probe" / "runs").exists()


@pytest.mark.slow
def test_schedule_vs_constant_quick(results_dir):
  out = results_dir / "schedule_vs_constant"
  run_script("schedule_vs_constant.py", results_dir, "--seeds=0")
  tables = check_tables((out / "report.md").read_text(), "arm")
  arms = [row["arm"] for row in tables[0]]
  assert arms[0] == "constant: default" and arms[-5:] == [
      "GBT (guided run)", "GBT, forward horizon (mu 0.99)", "best constant (picked on its seed)",
      "best constant (unseen seed)", "replayed schedule (unseen seed)"]
  assert [row["comparison"] for row in tables[1]][-2:] == [
      "GBT forward horizon vs greedy", "GBT forward horizon vs best constant (seed s)"]
  # The replayed and the best constant runs use a seed the guided run never saw.
  assert (out / "records" / "replayed_schedule_unseen_seed__seed100.json").exists()
  assert (out / "runs" / "GBT_guided_run__seed0" / "learned_schedule.gin").exists()
  assert (out / "learned_schedules.png").stat().st_size > 1000
  assert_rerun_skips_finished_runs("schedule_vs_constant.py", results_dir, "--seeds=0")


@pytest.mark.slow
def test_short_horizon_quick(results_dir):
  out = results_dir / "short_horizon"
  run_script("short_horizon.py", results_dir, "--seeds=0")
  text = (out / "report.md").read_text()
  tables = check_tables(text, "arm")
  assert [row["arm"] for row in tables[0]] == ["greedy LR", "branch LR at 50% x2"]
  assert [row["arm"] for row in tables[-2]] == ["greedy LR", "forward mu=0.9 LR"]
  # A branch continues the greedy run's state from its checkpoint with the learned values held
  # constant and the LR multiplier doubled.
  branch = json.loads((out / "records" / "branch_LR+b1+LS_at_50_x2__seed0.json").read_text())
  greedy = json.loads((out / "records" / "greedy_LR+b1+LS__seed0.json").read_text())
  assert branch["extra"]["from_step"] == 8 and branch["train_steps"] == greedy["train_steps"]
  trajectory = greedy["extra"]["trajectory"]
  at_8 = {k: trajectory[k][trajectory["steps"].index(8)] for k in ("learning_rate", "b1")}
  assert branch["extra"]["constants"]["learning_rate"] == pytest.approx(2 * at_8["learning_rate"])
  assert branch["extra"]["constants"]["b1"] == pytest.approx(at_8["b1"])
  assert (out / "lr_trajectories.png").stat().st_size > 1000
  assert_rerun_skips_finished_runs("short_horizon.py", results_dir, "--seeds=0")


@pytest.mark.slow
def test_bad_defaults_quick_report_and_rerun(results_dir):
  """bad_defaults --quick: a report with finite numbers per start (plain and guided from the
  bad start); a rerun trains nothing and leaves every record as it was."""
  out = results_dir / "bad_defaults"
  run_script("bad_defaults.py", results_dir)
  text = (out / "report.md").read_text()
  tables = check_tables(text, "arm")
  assert [row["arm"] for row in tables[0]] == ["plain", "guided (greedy)", "guided (late start)"]
  assert "### Start: LR x0.25" in text
  assert "LR x0.25, guided (greedy): learned LR multiplier (1 = the start's LR), per seed: peak " \
      in text
  before = snapshot(out / "records")
  proc = run_script("bad_defaults.py", results_dir)
  assert "] training" not in proc.stdout
  assert snapshot(out / "records") == before


def test_bad_defaults_gap_is_only_a_gap_when_the_best_constant_is_better():
  """The share of the start → best-constant gap a guided run closes, by hand: a start already
  better than the best constant (label smoothing 0.3 has a lower dev loss than any grid value)
  has no gap, so a guided run that moves away from it is not counted as progress."""
  spec = importlib.util.spec_from_file_location("bad_defaults", SCRIPTS / "bad_defaults.py")
  script = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(script)
  gap = script.gap_closed
  assert gap(1.2, 1.1, 1.0, lower_is_better=True) == pytest.approx(0.5)
  assert gap(1.2, 1.3, 1.0, lower_is_better=True) == pytest.approx(-0.5)
  assert math.isnan(gap(0.826, 0.946, 0.965, lower_is_better=True))
  assert gap(20.0, 23.0, 26.0, lower_is_better=False) == pytest.approx(0.5)
  assert math.isnan(gap(24.0, 20.0, 22.0, lower_is_better=False))
  assert math.isnan(gap(1.0, 0.9, 1.0, lower_is_better=True))


@pytest.mark.slow
def test_guidance_diagnosis_quick_runs_every_arm(results_dir):
  """guidance_diagnosis --quick: every arm trains (the constants at the guided run's values, the
  remedies with the LR alone and with all kinds, label smoothing with the forward horizon) and
  the report has finite numbers for each; a rerun trains nothing."""
  out = results_dir / "guidance_diagnosis"
  run_script("guidance_diagnosis.py", results_dir, "--seeds=0")
  text = (out / "report.md").read_text()
  assert report.QUICK_NOTE in text
  table = report.parse_tables(text)[0]  # (the next ones count spikes: integers)
  for row in table:
    for column, cell in row.items():
      if column != "arm":
        assert all(math.isfinite(v) for v in report.parse_mean_std(cell)), (row, column)
  arms = [row["arm"] for row in table]
  assert arms[:7] == ["plain", "guided: LR multiplier", "constant: guided peak",
                      "constant: guided final", "plain: label smoothing 0.1",
                      "guided: label smoothing", "guided: label smoothing, forward mu=0.9"]
  assert {"LR, late start", "all kinds, guide batch x4"} <= set(arms)
  before = snapshot(out / "records")
  proc = run_script("guidance_diagnosis.py", results_dir, "--seeds=0")
  assert "] training" not in proc.stdout
  assert snapshot(out / "records") == before


def test_guidance_diagnosis_report_rebuilds_from_the_committed_records(tmp_path):
  """guidance_diagnosis --report_only on a copy of the committed records (the default size; the
  arms not yet run are left out): a report and the loss-curve plot, no training."""
  results = pathlib.Path(SCRIPTS).parents[1] / "docs" / "results"
  for name in ("guidance_diagnosis", "schedule_vs_constant"):  # (the constants it compares)
    shutil.copytree(results / name / "records", tmp_path / name / "records")
    shutil.copy(results / name / "experiment.json", tmp_path / name)
  proc = run_script("guidance_diagnosis.py", tmp_path, "--report_only", "--seeds=0",
                    quick=False)
  text = (tmp_path / "guidance_diagnosis" / "report.md").read_text()
  assert "Loss spikes" in text and "| plain |" in text
  # Guided label smoothing falls from 0.1 while plain runs at 0.2 end with a lower dev loss.
  row = next(line for line in text.splitlines() if line.startswith("| guided: label smoothing")
             and "0.2: " in line)
  start, _, final = row.split(" | ")[1].split(" / ")
  assert float(final) < float(start) == 0.1
  assert "training" not in proc.stdout
  assert (tmp_path / "guidance_diagnosis" / "loss_curves.png").stat().st_size > 1000
