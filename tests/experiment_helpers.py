"""Helpers of the experiment test modules (`test_experiments*.py`): a runner for the `--quick`
scripts, checks of a report's tables, a snapshot of a records folder."""
from __future__ import annotations

import math
import os
import pathlib
import subprocess
import sys

from harness import report

REPO = pathlib.Path(__file__).resolve().parent.parent
SCRIPTS = REPO / "scripts" / "experiments"


def run_script(script: str, results_dir: pathlib.Path, *flags: str, check: bool = True,
               timeout: int = 900, quick: bool = True) -> subprocess.CompletedProcess:
  # One CPU device, as a user's CPU run has (conftest asks for 8 simulated ones for the mesh
  # tests): the experiments train on a 1 x 1 mesh, and 8 simulated devices split the cores'
  # threads among them (the bo_vs_gbt quick run: 174 s with 8, 104 s with 1).
  env = dict(os.environ, PYTHONPATH=str(REPO), XLA_FLAGS="")
  proc = subprocess.run([sys.executable, str(SCRIPTS / script), *(["--quick"] if quick else []),
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


def assert_rerun_skips_finished_runs(script: str, results_dir: pathlib.Path,
                                     *flags: str) -> None:
  """Reruns a finished `--quick` experiment: it trains nothing, leaves every record (and optuna
  study) byte-identical and writes the same report."""
  out = results_dir / script.removesuffix(".py")
  kept = [p for p in (out / "records", out / "studies") if p.exists()]
  before = [snapshot(p) for p in kept]
  report_text = (out / "report.md").read_text()
  proc = run_script(script, results_dir, *flags)
  assert "training" not in proc.stdout and "trial " not in proc.stdout, proc.stdout[-2000:]
  assert [snapshot(p) for p in kept] == before
  assert (out / "report.md").read_text() == report_text
