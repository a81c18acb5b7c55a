"""Bayesian optimisation (optuna TPE) inside an experiment: a resumable study whose complete
trials become the experiment's run records, and BO's pick against cumulative compute.

The study (optuna's `study.db` and `trials.csv`) lives in `<experiment>/studies/<name>_seed<s>/`,
so an interrupted search resumes where it stopped (`gbt_t5x.search`); each complete trial is
also written as a record `'<label> trial NN'` so reports are rebuilt from records alone.
"""
from __future__ import annotations

import dataclasses
import math
import os
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from harness import common
from harness.records import RunRecord

BASE_LR = 0.002  # experiments/demo_nmt.gin's base learning rate (for `lr_multiplier`)


def trial_label(label: str, number: int) -> str:
  return f"{label} trial {number:02d}"


TRANSLATION_SCORES = ("dev_loss", "dev_accuracy", "guide_loss", "bleu", "exact_match",
                      "token_accuracy", "word_f1")


def run_study(exp: common.Experiment, label: str, space_spec: str, seed: int, num_trials: int,
              gin_files: Sequence[str] = (common.NMT_GIN,), bindings: Sequence[str] = (),
              guide_task: str = common.GUIDE_TASK, guide_module: str | None = None,
              extra_scores: Callable[[Any, Any], Mapping[str, float]] | None = None,
              score_keys: Sequence[str] = TRANSLATION_SCORES, steps: int | None = None,
              ) -> list[RunRecord]:
  """Runs (or resumes) the TPE study `label` for `seed` until it has `num_trials` complete
  trials; returns their records in trial order.

  Args:
    exp: the experiment.
    label: the study's name in records (e.g. 'BO d=6').
    space_spec: the search space (`gbt_t5x.search_space`).
    seed: the runs' seed (params init and data order) and the sampler's seed.
    num_trials: complete trials wanted.
    gin_files: the plain runs' gin files.
    bindings: bindings on top of `sizes.run_bindings` (as `common.run_arm`'s).
    guide_task / guide_module: the set the trials are scored on (teacher-forced loss).
    extra_scores: (model, params) -> more scores (default: the translation scores).
    score_keys: the scores kept in each trial's record (`guide_loss` and those of
      `extra_scores`).
    steps: model steps of each trial (default: the size's).
  """
  labels = [trial_label(label, n) for n in range(num_trials)]
  done = [exp.store.get(l, seed) for l in labels]
  if all(done):
    return done
  if exp.report_only:
    raise ValueError(f"study {label!r} seed {seed} of {exp.out} is not finished: rerun without "
                     "--report_only")
  import optuna

  from gbt_t5x import search
  from gbt_t5x import search_space
  from harness import sizes
  optuna.logging.set_verbosity(optuna.logging.WARNING)  # run_search prints one line per trial.
  space = search_space.parse_space(space_spec)
  slug = "".join(c if c.isalnum() else "_" for c in label).strip("_")
  study_dir = os.path.join(exp.out, "studies", f"{slug}_seed{seed}")
  study = search.open_study(study_dir, space, "tpe", seed)
  run_bindings = [b for b in sizes.run_bindings(exp.size, seed, "/unused", steps)
                  if not b.startswith("MODEL_DIR")]
  objective = search.PlainRunObjective(
      tuple(gin_files), (*run_bindings, *bindings), study_dir, guide_task, "validation",
      guide_module=guide_module, guide_eval_batches=exp.size.eval_batches,
      base_learning_rate=BASE_LR,
      extra_scores=extra_scores or common.translation_scores(exp),
      print_fn=lambda line: exp.log(f"  [{label} | seed {seed}] {line}"))
  search.run_search(study, space, num_trials, objective, print_fn=exp.log,
                    csv_path=os.path.join(study_dir, search.CSV_FILE))
  records = []
  for number, trial in enumerate(search.complete_trials(study)[:num_trials]):
    attrs = {"guide_loss": trial.value, **trial.user_attrs}
    scores = {k: float(attrs[k]) for k in score_keys}
    record = RunRecord(
        label=labels[number], seed=seed, scores=scores,
        train_steps=int(attrs["train_steps"]), wall_seconds=float(attrs["wall_seconds"]),
        seconds_per_step=float(attrs.get("seconds_per_step", math.nan)),
        cpu_seconds_per_step=float(attrs.get("cpu_seconds_per_step", math.nan)),
        model_dir=os.path.relpath(str(attrs["model_dir"]), exp.out),
        extra={"params": dict(trial.params), "optuna_trial": trial.number})
    exp.store.put(record)
    records.append(record)
  return records


def pick_curve(trials: Sequence[RunRecord], plain: common.StepTime
               ) -> tuple[list[float], list[RunRecord]]:
  """(cumulative compute in plain train steps, BO's pick: the lowest guide loss so far) after
  each trial, in trial order."""
  compute, picks, total, best = [], [], 0.0, None
  key = lambda r: np.nan_to_num(r.scores["guide_loss"], nan=np.inf)
  for t in trials:
    total += common.step_equivalents(t, plain)
    if best is None or key(t) < key(best):
      best = t
    compute.append(total)
    picks.append(best)
  return compute, picks


def pick_within(compute: Sequence[float], picks: Sequence[RunRecord], budget: float
                ) -> tuple[float, RunRecord]:
  """(compute used, pick) of BO limited to its first trials whose cumulative compute fits in
  `budget` (at least one trial)."""
  k = max(1, int(np.sum(np.asarray(compute) <= budget)))
  return compute[k - 1], picks[k - 1]


@dataclasses.dataclass(frozen=True)
class BudgetedPicks:
  """BO's pick (and the compute it used, in plain train steps) at a budget and after all trials."""
  at_budget: RunRecord
  at_budget_compute: float
  final: RunRecord
  final_compute: float


def picks_at_budget(curve: tuple[Sequence[float], Sequence[RunRecord]], budget: float
                    ) -> BudgetedPicks:
  """BO's pick within `budget` plain train steps (e.g. one GBT run's compute; at least one
  trial) and after every trial, from `curve` = `pick_curve(trials, ...)`."""
  compute, picks = curve
  used, pick = pick_within(compute, picks, budget)
  return BudgetedPicks(pick, used, picks[-1], compute[-1])
