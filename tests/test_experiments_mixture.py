"""End-to-end `--quick` run of scripts/experiments/mixture_weights.py: every arm (natural rates,
GBT as online sampling rates, DoReMi with its proxy, the replay on an unseen seed, BO over the
rates and its picks) pretrains, the picks and final runs are finetuned, the report holds finite
tables and the learned-weights plot, and a rerun trains nothing; a `--part bo` worker started
before its seed's other arms stops with one line."""
from __future__ import annotations

import json
import math

import pytest

from harness import report
from tests.experiment_helpers import assert_rerun_skips_finished_runs, check_tables, run_script


@pytest.mark.slow
def test_mixture_weights_quick(results_dir):
  out = results_dir / "mixture_weights"
  # A BO worker started before its seed's other arms stops at once with one line.
  early = run_script("mixture_weights.py", results_dir, "--seeds=0", "--part=bo", check=False)
  assert early.returncode == 2 and early.stderr.strip().count("\n") == 0, early.stderr[-2000:]
  assert "'natural rates'" in early.stderr and "--part arms" in early.stderr
  assert not (out / "records").exists() or not list((out / "records").glob("*.json"))
  run_script("mixture_weights.py", results_dir, "--seeds=0", timeout=1500)
  text = (out / "report.md").read_text()
  tables = check_tables(text, "arm")
  pretraining = tables[0]
  arms = [row["arm"] for row in pretraining]
  assert arms == ["natural rates", "GBT, sampling rates", "DoReMi", "BO pick at GBT's compute",
                  "BO pick after all trials", "natural rates (unseen seed)",
                  "learned rates replayed (unseen seed)"]
  records = {json.loads(p.read_text())["label"]: json.loads(p.read_text())
             for p in (out / "records").glob("*.json")}
  # BO: two complete trials; the pick after all trials is the lower guide loss of the two, and
  # the pick within GBT's compute is one of the trials that fit in it.
  trials = [records[f"BO over the rates trial {n:02d}"] for n in range(2)]
  final = records["BO pick after all trials"]
  assert final["scores"]["guide_loss"] == min(t["scores"]["guide_loss"] for t in trials)
  assert final["extra"]["trial"] in {f"BO over the rates trial {n:02d}" for n in range(2)}
  assert set(final["extra"]["params"]) == {f"mixture_weight_{i}" for i in range(5)}
  at_budget = records["BO pick at GBT's compute"]
  assert at_budget["extra"]["bo_compute"] <= final["extra"]["bo_compute"]
  # DoReMi's compute counts its reference and proxy runs: more than twice a plain run's.
  compute = {row["arm"]: report.parse_mean_std(row["compute (plain steps)"])[0]
             for row in pretraining}
  assert compute["DoReMi"] > 2 * compute["natural rates"]
  # Every pretrained checkpoint (the BO picks included) is finetuned once on the quick task.
  finetuned = [label for label in records if label.startswith("finetune ")]
  assert len(finetuned) == len(arms)
  assert all(math.isfinite(records[l]["scores"]["average"]) for l in finetuned)
  assert "GBT, sampling rates vs BO pick at GBT's compute" in text
  assert (out / "learned_weights.png").stat().st_size > 1000
  assert_rerun_skips_finished_runs("mixture_weights.py", results_dir, "--seeds=0")
