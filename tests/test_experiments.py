"""End-to-end `--quick` runs of the experiment scripts: each writes its report (mean ± std tables
of finite numbers, paired differences, PNGs); a rerun skips finished runs; an interrupted run
resumes from its checkpoint to the same result; bad flags are one-line errors that touch nothing."""
from __future__ import annotations

import json
import math
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

from gbt_t5x.experiments import report

REPO = pathlib.Path(__file__).resolve().parent.parent
SCRIPTS = REPO / "scripts" / "experiments"


@pytest.fixture(scope="module")
def results_dir(tmp_path_factory):
  """One results dir for the module, so the demo world and JAX cache are built once."""
  return tmp_path_factory.mktemp("results")


def run_script(script: str, results_dir: pathlib.Path, *flags: str, check: bool = True,
               timeout: int = 600) -> subprocess.CompletedProcess:
  env = dict(os.environ, PYTHONPATH=str(REPO))
  proc = subprocess.run([sys.executable, str(SCRIPTS / script), "--quick",
                         f"--results_dir={results_dir}", *flags], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=timeout)
  if check:
    assert proc.returncode == 0, proc.stderr[-3000:]
  return proc


def check_tables(text: str, first_col: str) -> list[list[dict[str, str]]]:
  """Checks the report's mean ± std tables (finite cells) and paired-difference tables."""
  assert report.QUICK_NOTE in text
  tables = report.parse_tables(text)
  assert tables
  for table in tables:
    for row in table:
      cells = {k: v for k, v in row.items() if k not in (first_col, "comparison", "method")}
      for cell in cells.values():
        if "seeds >0" in cell:  # a paired difference: '+1.2 [-0.3, +2.0] (2/3 seeds >0)'
          mean = float(cell.split(" ")[0])
          assert math.isfinite(mean), (row, cell)
        else:
          mean, std = report.parse_mean_std(cell)
          assert math.isfinite(mean) and math.isfinite(std) and std >= 0, (row, cell)
  return tables


def snapshot(folder: pathlib.Path) -> dict[str, bytes]:
  return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
          if p.is_file()}


@pytest.mark.slow
def test_guided_vs_plain_quick_skips_finished_runs_and_resumes(results_dir):
  out = results_dir / "guided_vs_plain"
  run_script("guided_vs_plain.py", results_dir, "--seeds=0")
  text = (out / "report.md").read_text()
  tables = check_tables(text, "arm")
  arms = [row["arm"] for row in tables[0]]
  assert arms == ["plain", "guided (all kinds)", "plain, equal compute", "guided: LR multiplier",
                  "guided: Adam b1", "guided: label smoothing", "guided: data weights"]
  assert len(tables[1]) == 6 and "Equal compute" in text
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

  # A rerun skips every finished run: no training, records untouched, same report.
  before = snapshot(out / "records")
  proc = run_script("guided_vs_plain.py", results_dir, "--seeds=0")
  assert "training" not in proc.stdout
  assert snapshot(out / "records") == before
  assert (out / "report.md").read_text() == text

  # An interrupted run (no record, its last checkpoint lost) resumes from the checkpoint before
  # and ends with the same scores as the uninterrupted run.
  (out / "records" / "plain__seed0.json").unlink()
  checkpoints = out / "runs" / "plain__seed0" / "checkpoints"
  steps = sorted(int(p.name) for p in checkpoints.iterdir() if p.name.isdigit())
  shutil.rmtree(checkpoints / str(steps[-1]))
  proc = run_script("guided_vs_plain.py", results_dir, "--seeds=0")
  assert f"[plain | seed 0] training (resuming at step {steps[-2]})" in proc.stdout
  assert proc.stdout.count("] training") == 1
  resumed = json.loads((out / "records" / "plain__seed0.json").read_text())
  assert resumed["train_steps"] == plain["train_steps"]
  for key, value in plain["scores"].items():
    assert resumed["scores"][key] == pytest.approx(value, rel=1e-5, abs=1e-6), key

  # --report_only rebuilds the report from the records alone.
  (out / "report.md").unlink()
  run_script("guided_vs_plain.py", results_dir, "--seeds=0", "--report_only")
  assert check_tables((out / "report.md").read_text(), "arm")


@pytest.mark.slow
@pytest.mark.parametrize("flags, message", [
    (["--seeds="], "--seeds must be a comma-separated list"),
    (["--seeds=0,1,0"], "more than once"),
    (["--seeds=0", "--meta_lr=0.5"], "holds records of another configuration (differs in "
                                     "meta_lr)"),
])
def test_bad_flags_are_one_line_errors_and_touch_nothing(results_dir, flags, message):
  out = results_dir / "guided_vs_plain"
  before = snapshot(out) if out.exists() else {}
  proc = run_script("guided_vs_plain.py", results_dir, *flags, check=False, timeout=120)
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


@pytest.mark.slow
def test_bo_vs_gbt_quick(results_dir):
  out = results_dir / "bo_vs_gbt"
  run_script("bo_vs_gbt.py", results_dir, "--seeds=0", "--spaces=d=1,d=10")
  text = (out / "report.md").read_text()
  tables = check_tables(text, "method")
  assert len(tables) == 4  # a result table and a paired table per space
  methods = ["GBT (1 guided run)", "BO at GBT's compute", "BO after 2 trials"]
  # d = 1 also has the long-horizon GBT run (forward mode is priced per guided scalar).
  assert [row["method"] for row in tables[0]] == methods + ["GBT, forward horizon (mu 0.99)"]
  assert [row["method"] for row in tables[2]] == methods
  assert tables[1][-1]["comparison"] == "GBT forward horizon vs greedy"
  for space in ("BO_d_1", "BO_d_10"):
    assert (out / "studies" / f"{space}_seed0" / "study.db").exists()
    assert (out / "studies" / f"{space}_seed0" / "trials.csv").exists()
  trial = json.loads((out / "records" / "BO_d_10_trial_01__seed0.json").read_text())
  assert set(trial["extra"]["params"]) >= {f"data_weight_{i}" for i in range(4)}
  assert (out / "bleu_vs_compute.png").stat().st_size > 1000


@pytest.mark.slow
def test_pretrain_downstream_quick(results_dir):
  out = results_dir / "pretrain_downstream"
  run_script("pretrain_downstream.py", results_dir, "--seeds=0")
  text = (out / "report.md").read_text()
  tables = check_tables(text, "arm")
  # Pretraining; then per task (cola, mrpc, sst2) its table and paired table; then the average.
  assert len(tables) == 1 + 2 * 3 + 2
  pretraining, glue, glue_paired = tables[0], tables[-2], tables[-1]
  arms = ["plain pretraining", "guided pretraining", "plain pretraining, equal compute"]
  assert [r["arm"] for r in pretraining] == arms and [r["arm"] for r in glue] == arms
  # Every demo GLUE task is scored with its own metric; the GLUE-style average is their mean.
  for k, keys in enumerate((("demo_cola/matthews_corrcoef",),
                            ("demo_mrpc/f1", "demo_mrpc/accuracy"), ("demo_sst2/accuracy",))):
    finetuned, paired = tables[1 + 2 * k], tables[2 + 2 * k]
    assert [r["arm"] for r in finetuned] == arms
    for key in (*keys, "average"):
      assert all(key in r for r in finetuned), (key, finetuned[0].keys())
    assert [r["comparison"] for r in paired] == ["guided vs plain pretraining, equal steps",
                                                 "guided vs plain pretraining, equal compute"]
  for i, arm in enumerate(arms):
    task_means = [report.parse_mean_std(tables[1 + 2 * k][i]["average"])[0] for k in range(3)]
    glue_mean = report.parse_mean_std(glue[i]["GLUE-style average"])[0]
    assert abs(glue_mean - sum(task_means) / 3) <= 0.01, (arm, glue_mean, task_means)
  assert [r["comparison"] for r in glue_paired] == ["guided vs plain pretraining, equal steps",
                                                    "guided vs plain pretraining, equal compute"]
  # The equal-compute pretraining gets the guided run's measured cost as extra steps.
  records = {json.loads(p.read_text())["label"]: json.loads(p.read_text())
             for p in (out / "records").glob("*.json")}
  plain, guided = records["plain pretraining"], records["guided pretraining"]
  ratio = guided["cpu_seconds_per_step"] / plain["cpu_seconds_per_step"]
  assert records["plain pretraining, equal compute"]["train_steps"] == round(
      guided["train_steps"] * ratio)
  # Each of the three checkpoints is finetuned on each task the same number of steps.
  finetunes = [r for label, r in records.items() if label.startswith("finetune ")]
  assert len(finetunes) == 9 and len({r["train_steps"] for r in finetunes}) == 1
  assert "learnable at this size" in text
  for png in ("downstream.png", "learned_values.png"):
    assert (out / png).stat().st_size > 1000
  # A rerun skips every run with a record (its record file is byte-identical). A fresh clone
  # has the records but not the run dirs: with the plain pretraining's checkpoint gone and one
  # of its finetunings not recorded, the checkpoint is re-trained (its record kept) and the
  # finetuning redone, reproducing its scores. Another machine's re-training can differ from
  # the record (simulated: the guided pretraining's recorded dev loss is off by 1): then the
  # re-trained scores replace the record's and every finetuning made from the old checkpoint is
  # redone.
  before = snapshot(out / "records")
  by_label = {json.loads(text)["label"]: name for name, text in before.items()}
  lost = {by_label["finetune plain pretraining -> demo_cola"],
          by_label["finetune guided pretraining -> demo_mrpc"]}
  redone = lost | {by_label[f"finetune guided pretraining -> {task}"]
                   for task in ("demo_cola", "demo_sst2")}
  rescored = by_label["guided pretraining"]
  for run in ("plain_pretraining__seed0", "guided_pretraining__seed0"):
    shutil.rmtree(out / "runs" / run)
  for name in lost:
    (out / "records" / name).unlink()
  tampered = json.loads(before[rescored])
  tampered["scores"]["dev_loss"] += 1.0
  (out / "records" / rescored).write_text(json.dumps(tampered))
  run_script("pretrain_downstream.py", results_dir, "--seeds=0", timeout=900)
  after = snapshot(out / "records")
  assert set(after) == set(before)
  assert {k: v for k, v in after.items() if k not in redone | {rescored}} == {
      k: v for k, v in before.items() if k not in redone | {rescored}}
  for name in redone | {rescored}:
    old, new = json.loads(before[name]), json.loads(after[name])
    assert new["scores"]["dev_loss"] == pytest.approx(old["scores"]["dev_loss"], rel=1e-5), name
  guided_after = json.loads(after[rescored])
  assert guided_after["extra"]["replaced_scores"] == [tampered["scores"]]
  assert guided_after["seconds_per_step"] == tampered["seconds_per_step"]
  note = next(line for line in (out / "report.md").read_text().splitlines()
              if line.startswith("Re-trained from its gin"))
  assert "guided pretraining (seed 0)" in note and "plain pretraining (seed 0)" not in note


@pytest.mark.slow
def test_noisy_data_quick(results_dir):
  out = results_dir / "noisy_data"
  run_script("noisy_data.py", results_dir, "--seeds=0")
  text = (out / "report.md").read_text()
  tables = check_tables(text, "arm")
  assert [row["arm"] for row in tables[0]] == [
      "no weighting", "GBT: data weights", "GBT: data weights + LR", "oracle (noisy weight 0)",
      "BO one noisy weight, at GBT's compute", "BO one noisy weight, all trials"]
  assert "of the gap to the oracle" in text
  # The oracle arm trained with the noisy buckets weighted 0; BO searched the shared weight.
  trial = json.loads((out / "records" / "BO_noise_0.4_trial_00__seed0.json").read_text())
  assert set(trial["extra"]["params"]) == {"noisy_data_weight"}
  config = (out / "runs" / "oracle_noisy_weight_0_noise_0.4__seed0" / "config.gin").read_text()
  assert "DATA_WEIGHT_1 = 0.0" in config
  assert (out / "learned_weights.png").stat().st_size > 1000


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
