"""End-to-end `--quick` runs of the experiments with Bayesian-optimisation arms or pretraining
(bo_vs_gbt, noisy_data, pretrain_downstream): each writes its report with finite numbers; a rerun
skips finished runs and redoes only what lost its record or checkpoint."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from harness import report
from tests.experiment_helpers import (REPO, assert_rerun_skips_finished_runs, check_tables,
                                      run_script, snapshot)


@pytest.mark.slow
def test_bo_vs_gbt_quick(results_dir):
  out = results_dir / "bo_vs_gbt"
  run_script("bo_vs_gbt.py", results_dir, "--seeds=0", "--spaces=d=1,d=10")
  text = (out / "report.md").read_text()
  tables = check_tables(text, "method")
  assert len(tables) == 4  # a result table and a paired table per space
  methods = ["plain (demo defaults)", "GBT (1 guided run)", "BO at GBT's compute",
             "BO after 2 trials"]
  # (--quick runs no long-horizon GBT run: see the next test for its report.)
  assert [row["method"] for row in tables[0]] == methods
  assert [row["method"] for row in tables[2]] == methods
  assert [row["comparison"] for row in tables[1]][2:] == [
      "GBT vs the defaults it starts from", "BO after 2 trials vs the defaults"]
  # The defaults' plain run is one per seed, shared by every space's table (its compute is in
  # units of that space's median BO trial).
  same = lambda row: {k: v for k, v in row.items() if k != "compute (plain steps)"}  # noqa: E731
  assert same(tables[0][0]) == same(tables[2][0])
  assert len(list((out / "records").glob("plain_demo_defaults*.json"))) == 1
  for space in ("BO_d_1", "BO_d_10"):
    assert (out / "studies" / f"{space}_seed0" / "study.db").exists()
    assert (out / "studies" / f"{space}_seed0" / "trials.csv").exists()
  trial = json.loads((out / "records" / "BO_d_10_trial_01__seed0.json").read_text())
  assert set(trial["extra"]["params"]) >= {f"data_weight_{i}" for i in range(4)}
  assert (out / "bleu_vs_compute.png").stat().st_size > 1000
  assert_rerun_skips_finished_runs("bo_vs_gbt.py", results_dir, "--seeds=0", "--spaces=d=1,d=10")


def test_bo_vs_gbt_report_of_the_committed_default_records(tmp_path):
  """The forward-horizon rows (not run by --quick) rebuilt by --report_only from the default
  size's committed d = 1 records: its mean test BLEU is the records' mean."""
  committed = REPO / "docs" / "results" / "bo_vs_gbt"
  out = tmp_path / "bo_vs_gbt"
  out.mkdir()
  shutil.copy(committed / "experiment.json", out)
  shutil.copytree(committed / "records", out / "records")
  run_script("bo_vs_gbt.py", tmp_path, "--spaces=d=1", "--report_only", timeout=300, quick=False)
  tables = report.parse_tables((out / "report.md").read_text())
  rows = {row["method"]: row for row in tables[0]}
  forward = rows["GBT, forward horizon (mu 0.99)"]
  bleus = [json.loads(p.read_text())["scores"]["bleu"]
           for p in sorted((out / "records").glob("GBT_d_1_forward_mu_0.99__seed*.json"))]
  assert len(bleus) == 3
  mean, std = report.parse_mean_std(forward["test BLEU"])
  assert mean == pytest.approx(np.mean(bleus), abs=0.006)
  assert std > 0
  assert [row["comparison"] for row in tables[1]][-1] == "GBT forward horizon vs greedy"


@pytest.mark.slow
def test_pretrain_downstream_quick(results_dir):
  out = results_dir / "pretrain_downstream"
  # Two of the three demo GLUE tasks (CI time): each has its own metric.
  flags = ("--seeds=0", "--downstream=gbt_t5x_tasks.demo_glue:demo_cola,"
           "gbt_t5x_tasks.demo_glue:demo_mrpc")
  run_script("pretrain_downstream.py", results_dir, *flags)
  text = (out / "report.md").read_text()
  tables = check_tables(text, "arm")
  # Pretraining; then per task (cola, mrpc) its table and paired table; then the average.
  assert len(tables) == 1 + 2 * 2 + 2
  pretraining, glue, glue_paired = tables[0], tables[-2], tables[-1]
  arms = ["plain pretraining", "guided pretraining", "plain pretraining, equal compute"]
  assert [r["arm"] for r in pretraining] == arms and [r["arm"] for r in glue] == arms
  # Every demo GLUE task is scored with its own metric; the GLUE-style average is their mean.
  for k, keys in enumerate((("demo_cola/matthews_corrcoef",),
                            ("demo_mrpc/f1", "demo_mrpc/accuracy"))):
    finetuned, paired = tables[1 + 2 * k], tables[2 + 2 * k]
    assert [r["arm"] for r in finetuned] == arms
    for key in (*keys, "average"):
      assert all(key in r for r in finetuned), (key, finetuned[0].keys())
    assert [r["comparison"] for r in paired] == ["guided vs plain pretraining, equal steps",
                                                 "guided vs plain pretraining, equal compute"]
  for i, arm in enumerate(arms):
    task_means = [report.parse_mean_std(tables[1 + 2 * k][i]["average"])[0] for k in range(2)]
    glue_mean = report.parse_mean_std(glue[i]["GLUE-style average"])[0]
    assert abs(glue_mean - sum(task_means) / 2) <= 0.01, (arm, glue_mean, task_means)
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
  assert len(finetunes) == 6 and len({r["train_steps"] for r in finetunes}) == 1
  assert "learnable at this size" in text
  for png in ("downstream.png", "learned_values.png"):
    assert (out / png).stat().st_size > 1000
  # A rerun skips every run with a record (its record file is byte-identical); a finetuning
  # that lost its record is redone from its pretraining's checkpoint (plain -> cola). A fresh
  # clone has the records but not the run dirs: with the guided pretraining's checkpoint gone
  # and one of its finetunings not recorded, the checkpoint is re-trained and the finetuning
  # redone. Another machine's re-training can differ from the record (simulated: the guided
  # pretraining's recorded dev loss is off by 1): then the re-trained scores replace the
  # record's and every finetuning made from the old checkpoint is redone, reproducing the
  # scores of the first run.
  before = snapshot(out / "records")
  by_label = {json.loads(text)["label"]: name for name, text in before.items()}
  lost = {by_label["finetune plain pretraining -> demo_cola"],
          by_label["finetune guided pretraining -> demo_mrpc"]}
  redone = lost | {by_label["finetune guided pretraining -> demo_cola"]}
  rescored = by_label["guided pretraining"]
  shutil.rmtree(out / "runs" / "guided_pretraining__seed0")
  for name in lost:
    (out / "records" / name).unlink()
  tampered = json.loads(before[rescored])
  tampered["scores"]["dev_loss"] += 1.0
  (out / "records" / rescored).write_text(json.dumps(tampered))
  run_script("pretrain_downstream.py", results_dir, *flags, timeout=900)
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
  # The verdict compares GBT with the oracle and names the learned weights by bucket.
  assert "of the gap from no weighting to the oracle" in text or "below no weighting" in text
  assert "Final learned weights (mean over seeds): clean " in text
  # The oracle arm trained with the noisy buckets weighted 0; BO searched the shared weight.
  trial = json.loads((out / "records" / "BO_noise_0.4_trial_00__seed0.json").read_text())
  assert set(trial["extra"]["params"]) == {"noisy_data_weight"}
  config = (out / "runs" / "oracle_noisy_weight_0_noise_0.4__seed0" / "config.gin").read_text()
  assert "DATA_WEIGHT_1 = 0.0" in config
  assert (out / "learned_weights.png").stat().st_size > 1000
  assert_rerun_skips_finished_runs("noisy_data.py", results_dir, "--seeds=0")
