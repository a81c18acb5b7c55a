"""Resumable experiment records: seeds parsing, one record per run, configuration guard, paired
differences. (The scripts' end-to-end resumption is in test_experiments.py.)"""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from gbt_t5x import errors
from harness import common, records, report


@pytest.mark.parametrize("text,expected", [("0,1,2", (0, 1, 2)), ("5", (5,)), (" 3, 4 ", (3, 4))])
def test_parse_seeds(text, expected):
  assert records.parse_seeds(text, (9,)) == expected


def test_parse_seeds_default():
  assert records.parse_seeds(None, (0, 1, 2)) == (0, 1, 2)


@pytest.mark.parametrize("text,message", [("", "comma-separated"), (",", "comma-separated"),
                                          ("0,,1", "comma-separated"), ("a", "comma-separated"),
                                          ("0,1,0", "more than once"), ("-1", ">= 0")])
def test_parse_seeds_bad(text, message):
  with pytest.raises(ValueError, match=message) as e:
    records.parse_seeds(text, (0,))
  assert "\n" not in str(e.value)


def test_store_roundtrip_and_skip(tmp_path):
  store = records.RunStore(str(tmp_path / "exp"), {"size": "quick", "meta_lr": 0.1})
  assert store.get("plain", 0) is None
  rec = records.RunRecord("guided: LR multiplier", 1, {"bleu": 21.5}, 100, 12.0, 0.125,
                          extra={"trajectory": {"steps": [1, 2]}}, cpu_seconds_per_step=0.25)
  store.put(rec)
  again = records.RunStore(str(tmp_path / "exp"), {"meta_lr": 0.1, "size": "quick"})
  assert again.get("guided: LR multiplier", 1) == rec
  assert again.get("guided: LR multiplier", 0) is None
  assert [r.label for r in again.all()] == ["guided: LR multiplier"]
  assert os.path.basename(again._path(rec.label, rec.seed)) == "guided_LR_multiplier__seed1.json"


def test_store_refuses_another_config(tmp_path):
  out = str(tmp_path / "exp")
  store = records.RunStore(out, {"size": "quick", "meta_lr": 0.1})
  store.put(records.RunRecord("plain", 0, {"bleu": 1.0}, 10, 1.0))
  before = {p: open(os.path.join(root, p)).read() for root, _, files in os.walk(out) for p in files}
  with pytest.raises(ValueError, match=r"another configuration \(differs in meta_lr\)") as e:
    records.RunStore(out, {"size": "quick", "meta_lr": 0.2})
  assert "\n" not in str(e.value)
  after = {p: open(os.path.join(root, p)).read() for root, _, files in os.walk(out) for p in files}
  assert before == after


def test_load_store_missing(tmp_path):
  with pytest.raises(ValueError, match="no records"):
    records.load_store(str(tmp_path / "nothing"))


def test_paired_difference_hand_computed():
  d = report.paired_difference([3.0, 5.0, 4.0], [1.0, 2.0, 4.0])
  assert d["mean"] == pytest.approx(5.0 / 3.0)
  assert (d["positive"], d["negative"], d["n"]) == (2, 0, 3)
  # Bootstrap means lie between the smallest and largest per-seed difference (0 and 3); one
  # seed has difference 0, so the interval reaches 0 (1/27 of resamples are all that seed).
  assert d["low"] == pytest.approx(0.0) and 0.0 <= d["low"] <= d["mean"] <= d["high"] <= 3.0
  assert report.interval_verdict(d, higher_is_better=True) == "no clear difference"
  all_up = report.paired_difference([2.0, 3.0, 4.0], [1.0, 1.0, 1.0])
  assert all_up["low"] > 0 and report.interval_verdict(all_up, True) == "better"
  assert report.interval_verdict(all_up, False) == "worse"
  assert report.fmt_paired(all_up).endswith("(3/3 seeds >0)")


def test_paired_difference_needs_pairs():
  with pytest.raises(ValueError, match="equally many"):
    report.paired_difference([1.0, 2.0], [1.0])


def test_bo_picks_at_budget_hand_computed():
  """Trials cost 100, 100 and 200 plain steps (the third ran at twice the plain step time); BO
  picks the lowest guide loss so far: trial 0, then 1 (loss 2 < 3), then still 1 (loss 5)."""
  from harness import bo

  def trial(n, guide_loss, seconds_per_step):
    return records.RunRecord(label=f"t{n}", seed=0, scores={"guide_loss": guide_loss},
                             train_steps=100, wall_seconds=1.0,
                             seconds_per_step=seconds_per_step)

  trials = [trial(0, 3.0, 0.1), trial(1, 2.0, 0.1), trial(2, 5.0, 0.2)]
  curve = bo.pick_curve(trials, common.StepTime(wall=0.1))
  picked = bo.picks_at_budget(curve, budget=250.0)
  assert (picked.at_budget.label, picked.at_budget_compute) == ("t1", 200.0)
  assert (picked.final.label, picked.final_compute) == ("t1", 400.0)
  # A budget below the first trial still gets that trial (BO has to run at least one).
  first = bo.picks_at_budget(curve, budget=10.0)
  assert (first.at_budget.label, first.at_budget_compute) == ("t0", 100.0)


def test_step_equivalents_prefers_cpu_seconds_hand_computed():
  """100 steps at 0.2 wall s / 0.3 CPU s per step against a plain step of 0.1 s of each: 300
  plain steps by CPU seconds; 200 by wall seconds when either run lacks CPU seconds (records
  written before they were logged); the run's own steps when it has no step time at all."""
  run = records.RunRecord(label="guided", seed=0, scores={}, train_steps=100, wall_seconds=1.0,
                          seconds_per_step=0.2, cpu_seconds_per_step=0.3)
  assert common.step_equivalents(run, common.StepTime(wall=0.1, cpu=0.1)) == pytest.approx(300)
  assert common.step_equivalents(run, common.StepTime(wall=0.1)) == pytest.approx(200)
  old = records.RunRecord(label="old", seed=0, scores={}, train_steps=100, wall_seconds=1.0,
                          seconds_per_step=0.2)
  assert common.step_equivalents(old, common.StepTime(wall=0.1, cpu=0.1)) == pytest.approx(200)
  untimed = records.RunRecord(label="untimed", seed=0, scores={}, train_steps=100,
                              wall_seconds=1.0)
  assert common.step_equivalents(untimed, common.StepTime(wall=0.1, cpu=0.1)) == 100
  # The median reference of several plain runs (BO's trials), per kind of seconds.
  trials = [records.RunRecord(label=f"t{i}", seed=0, scores={}, train_steps=10, wall_seconds=1.0,
                              seconds_per_step=w, cpu_seconds_per_step=c)
            for i, (w, c) in enumerate([(0.1, 0.2), (0.3, 0.4), (0.2, 0.9)])]
  assert common.StepTime.median(trials) == common.StepTime(wall=0.2, cpu=0.4)
  assert np.isnan(common.StepTime.median([*trials, old]).cpu)


@pytest.mark.parametrize("error, line, status", [
    (ValueError("bad --seeds\n  In call to configurable 'train'"), "error: bad --seeds", 2),
    (errors.Preempted(7, "SIGTERM"), "preempted: stopped by SIGTERM at step 7 after saving a "
                                     "checkpoint; rerun the same command to continue",
     errors.PREEMPTED_EXIT_CODE),
])
def test_script_errors_are_one_line(capsys, error, line, status):
  """A script's ValueError (gin appends a second line) or a preempted run: one stderr line."""
  def main(argv):
    raise error
  assert common.main_with_one_line_errors(main) == status
  assert capsys.readouterr().err == line + "\n"


def test_a_bug_is_not_turned_into_a_user_error(capsys):
  """Only user errors become one line: anything else (a bug) keeps its traceback."""
  def main(argv):
    return {}["missing"]
  with pytest.raises(KeyError):
    common.main_with_one_line_errors(main)
  assert capsys.readouterr().err == ""


@pytest.mark.parametrize("name", ["bo_vs_gbt", "guidance_diagnosis", "guided_vs_plain",
                                  "mixture_weights", "noisy_data",
                                  "pretrain_downstream", "schedule_vs_constant", "short_horizon"])
def test_default_size_still_keys_the_committed_records(name):
  """A field added to `Size` must not change the default size's key: the committed records
  would then be refused as another configuration's (its optional fields at their default are
  left out of `as_json`)."""
  from harness import sizes
  committed = os.path.join(os.path.dirname(__file__), "..", "docs", "results", name,
                           "experiment.json")
  with open(committed) as f:
    assert json.load(f)["size"] == sizes.DEFAULT.as_json()
  assert "downstream_world" in sizes.QUICK.as_json()


def test_sizes_eval_seed_is_the_scoring_seed():
  """`harness.sizes` mirrors `gbt_t5x.scoring.EVAL_SEED` (it must not import jax) for records."""
  from gbt_t5x import scoring
  from harness import sizes
  assert sizes.EVAL_SEED == scoring.EVAL_SEED
