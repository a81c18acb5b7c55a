"""End-to-end `--quick` runs of the three experiment scripts: each writes its report with a
mean ± std table of finite numbers, its PNG plots, the quick-mode warning and a verdict line."""
from __future__ import annotations

import math
import os
import pathlib
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


def run_quick(script: str, results_dir: pathlib.Path) -> str:
  env = dict(os.environ, PYTHONPATH=str(REPO))
  proc = subprocess.run([sys.executable, str(SCRIPTS / script), "--quick",
                         f"--results_dir={results_dir}"], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  name = script[:-3]
  return (results_dir / name / "report.md").read_text()


def check_report(text: str, out: pathlib.Path, pngs: list[str], first_col: str,
                 expected_rows: int, num_tables: int = 1) -> list[dict[str, str]]:
  """Checks the report's tables (all cells finite mean ± std) and PNGs; returns all rows."""
  assert report.QUICK_NOTE in text
  assert "REPRODUCED" in text or "NOT reproduced" in text
  tables = report.parse_tables(text)
  assert len(tables) == num_tables
  rows = [row for table in tables for row in table]
  assert len(rows) == expected_rows
  for row in rows:
    cells = [v for k, v in row.items() if k not in (first_col, "scored on")]
    assert cells
    for cell in cells:
      mean, std = report.parse_mean_std(cell)
      assert math.isfinite(mean) and math.isfinite(std) and std >= 0, (row, cell)
  for png in pngs:
    assert (out / png).stat().st_size > 1000
  return rows


@pytest.mark.slow
def test_bo_vs_gbt_quick(results_dir):
  text = run_quick("bo_vs_gbt.py", results_dir)
  rows = check_report(text, results_dir / "bo_vs_gbt",
                      ["best_bleu_vs_steps.png", "best_bleu_vs_seconds.png"], "method", 5)
  by_method = {r["method"].split(" (")[0]: r for r in rows}
  steps = lambda method: report.parse_mean_std(by_method[method]["total train steps"])[0]
  secs = lambda method: report.parse_mean_std(by_method[method]["total wall s"])[0]
  # Compute accounting: BO ran 2 trials of as many steps as the single guided run; the
  # same-compute BO row uses the first 1 or 2 of them.
  assert steps("GBT") > 0 and steps("BO") == 2 * steps("GBT")
  assert steps("GBT") <= steps("BO at GBT's compute") <= steps("BO")
  assert secs("BO at GBT's compute") <= secs("BO")
  # --report_only rebuilds the same report from records.json without training.
  before = (results_dir / "bo_vs_gbt" / "report.md").read_text()
  env = dict(os.environ, PYTHONPATH=str(REPO))
  proc = subprocess.run([sys.executable, str(SCRIPTS / "bo_vs_gbt.py"), "--quick",
                         "--report_only", f"--results_dir={results_dir}"], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert (results_dir / "bo_vs_gbt" / "report.md").read_text() == before
  for seed in (0, 1):
    assert (results_dir / "bo_vs_gbt" / f"seed{seed}" / "bo" / "study.db").exists()
    assert (results_dir / "bo_vs_gbt" / f"seed{seed}" / "bo" / "trials.csv").exists()


@pytest.mark.slow
def test_schedule_vs_constant_quick(results_dir):
  text = run_quick("schedule_vs_constant.py", results_dir)
  out = results_dir / "schedule_vs_constant"
  rows = check_report(text, out, ["bleu.png", "dev_loss.png", "schedules.png"], "run", 5)
  by_run = {r["run"]: r for r in rows}
  # The replayed schedule is the guided run's own trajectory: the same model updates.
  replay = report.parse_mean_std(by_run["replayed learned schedule"]["final dev loss"])[0]
  guided = report.parse_mean_std(by_run["guided run"]["final dev loss"])[0]
  assert replay == pytest.approx(guided, abs=2e-3)
  assert (out / "seed0" / "guided" / "learned_schedule.gin").exists()


@pytest.mark.slow
def test_pretrain_downstream_quick(results_dir):
  text = run_quick("pretrain_downstream.py", results_dir)
  rows = check_report(text, results_dir / "pretrain_downstream", ["downstream.png"],
                      "pretraining", 4, num_tables=2)
  pretraining, finetuned = rows[:2], rows[2:]
  assert [r["pretraining"] for r in pretraining] == ["plain pretraining", "guided pretraining"]
  assert [r["pretraining"] for r in finetuned] == ["plain pretraining", "guided pretraining"]
  # Every demo GLUE task is scored with its own metric, and their average is reported.
  for key in ("demo_cola/matthews_corrcoef", "demo_mrpc/f1", "demo_mrpc/accuracy",
              "demo_sst2/accuracy", "average"):
    assert all(key in r for r in finetuned), (key, finetuned[0].keys())
