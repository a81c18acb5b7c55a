"""Bayesian-optimisation baseline: `python -m gbt_t5x.search --gin_file=... --space=...`.

Tunes, over full *plain* runs, the hyper-parameters a guided run learns (see
`gbt_t5x.search_space` for the `--space` spec), with optuna's GP sampler or TPE. Each
trial trains the gin-configured model with the sampled values held constant and is scored on the
guide set a guided run learns from: the teacher-forced per-token loss on `--guide_task` (default
`demo_nmt_guide`, split `validation`, the same examples as its `train` split). Lower is better.

The study lives in `--study_dir/study.db` (SQLite), so a killed search resumes: finished trials
are kept and only COMPLETE trials count toward `--num_trials`; a trial left RUNNING by the kill is
marked failed and its parameters are queued to run again; the resumed sampler is seeded anew
(from the seed and the trial count), so it proposes new values. The search space is stored in the
study's user attrs; resuming with another space is refused. Every trial records its compute
(`train_steps`, `wall_seconds`) as trial user attrs and in `--study_dir/trials.csv`; trial runs are
in `--study_dir/trial_NNNN/`. `--prune` turns on optuna's MedianPruner over the periodic eval loss
(off by default). One search process per study: a RUNNING trial found at start is taken as dead.

Bad input (unknown hyper-parameter, empty or inverted range, malformed spec, a study of another
space, a gin error) prints one `error:` line and exits with status 2.
"""
from __future__ import annotations

import sys

from gbt_t5x import console

if __name__ == "__main__":
  console.configure(sys.argv)  # Before TensorFlow and JAX load (they log when imported).

import argparse
import csv
import dataclasses
import importlib.util
import math
import os
import re
import shutil
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import optuna

from gbt_t5x import errors
from gbt_t5x import search_space

STUDY_NAME = "gbt_t5x_search"
STUDY_FILE = "study.db"
CSV_FILE = "trials.csv"
SPACE_ATTR = "space"
DIVERGED_SCORE = 100.0  # Score of a trial whose guide loss is not finite (CE of chance is ~7).
_EVAL_LINE = re.compile(r"^eval step (\d+): loss (\S+)")


@dataclasses.dataclass
class TrialContext:
  """What an objective gets for one trial.

  Attributes:
    trial: the optuna trial.
    values: {hyper-parameter name: sampled value}.
    report: `report(step, value)` feeds an intermediate score to the pruner (raises
      `optuna.TrialPruned` when pruning is on and the trial should stop).
  """
  trial: optuna.Trial
  values: dict[str, float]
  report: Callable[[int, float], None]


# (score, user attrs) — attrs must include 'train_steps' and 'wall_seconds'.
Objective = Callable[[TrialContext], tuple[float, Mapping[str, Any]]]


def make_sampler(name: str, seed: int) -> optuna.samplers.BaseSampler:
  """'gp' (optuna's GPSampler; needs torch), 'tpe', or 'auto' (gp when torch is installed)."""
  has_torch = importlib.util.find_spec("torch") is not None
  if name == "auto":
    name = "gp" if has_torch else "tpe"
  if name == "gp":
    if not has_torch:
      raise ValueError("--sampler gp needs torch, which is not installed; use --sampler tpe")
    return optuna.samplers.GPSampler(seed=seed)
  if name == "tpe":
    return optuna.samplers.TPESampler(seed=seed)
  raise ValueError(f"unknown sampler {name!r}: use gp, tpe or auto")


def open_study(study_dir: str, space: Sequence[search_space.Param], sampler: str = "auto",
               seed: int = 0, prune: bool = False) -> optuna.Study:
  """Creates or loads the study in `study_dir/study.db`, refusing one of another space.

  A new study's sampler is seeded with `seed`. A loaded study that already has trials gets a seed
  derived from (`seed`, its number of trials): a sampler seeded with `seed` again would replay
  the random start-up proposals of the first trials, so a resumed search would repeat them.
  """
  os.makedirs(study_dir, exist_ok=True)
  storage = f"sqlite:///{os.path.abspath(os.path.join(study_dir, STUDY_FILE))}"
  pruner = optuna.pruners.MedianPruner() if prune else optuna.pruners.NopPruner()
  study = optuna.create_study(storage=storage, study_name=STUDY_NAME, direction="minimize",
                              sampler=make_sampler(sampler, seed), pruner=pruner,
                              load_if_exists=True)
  num_trials = len(study.get_trials(deepcopy=False))
  if num_trials:
    resumed_seed = int(np.random.SeedSequence([seed, num_trials]).generate_state(1)[0])
    study.sampler = make_sampler(sampler, resumed_seed)
  wanted = search_space.canonical(tuple(space))
  stored = study.user_attrs.get(SPACE_ATTR)
  if stored is None:
    if study.trials:
      raise ValueError(f"study {storage} has trials but no stored search space; use a new "
                       "--study_dir")
    study.set_user_attr(SPACE_ATTR, wanted)
  elif stored != wanted:
    raise ValueError(f"study {storage} was created with space {stored!r}, not {wanted!r}; use "
                     "another --study_dir")
  return study


def requeue_interrupted(study: optuna.Study) -> list[int]:
  """Marks trials left RUNNING (by a killed search) failed and queues their parameters again.

  Returns:
    the numbers of the interrupted trials.
  """
  storage = study._storage  # noqa: SLF001 (optuna exposes no public handle on a loaded study)
  study_id = storage.get_study_id_from_name(study.study_name)
  numbers = []
  for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
    trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
    storage.set_trial_user_attr(trial_id, "interrupted", True)
    storage.set_trial_state_values(trial_id, optuna.trial.TrialState.FAIL)
    _queue_again(study, trial.params, trial.number)
    numbers.append(trial.number)
  return numbers


def _queue_again(study: optuna.Study, params: Mapping[str, float], number: int) -> None:
  """Queues the parameters of interrupted trial `number` to run first when the search goes on."""
  if params:
    study.enqueue_trial(dict(params), user_attrs={"rerun_of": number}, skip_if_exists=False)


def complete_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
  return study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))


def suggest(trial: optuna.Trial, space: Sequence[search_space.Param]) -> dict[str, float]:
  return {p.name: trial.suggest_float(p.name, p.low, p.high, log=p.log) for p in space}


def run_search(study: optuna.Study, space: Sequence[search_space.Param], num_trials: int,
               objective: Objective, print_fn: Callable[[str], None] = print,
               csv_path: str | None = None) -> optuna.Study:
  """Runs trials until the study has `num_trials` COMPLETE ones (pruned/failed do not count).

  An objective that raises fails its trial and stops the search (re-raised); a non-finite score
  is recorded as `DIVERGED_SCORE` with user attr `diverged`.
  """
  if num_trials < 1:
    raise ValueError(f"--num_trials must be >= 1, got {num_trials}")
  interrupted = requeue_interrupted(study)
  if interrupted:
    print_fn(f"re-running interrupted trial(s) {interrupted}")

  def wrapped(trial: optuna.Trial) -> float:
    values = suggest(trial, space)

    def report(step: int, value: float) -> None:
      if not math.isfinite(value):
        return
      trial.report(value, step)
      if trial.should_prune():
        raise optuna.TrialPruned(f"pruned at step {step} (eval loss {value:.4f})")

    try:
      score, attrs = objective(TrialContext(trial=trial, values=values, report=report))
    except errors.Preempted:
      # Stopped gracefully (SIGTERM / SIGINT): the trial fails like a killed one, and like a
      # killed one its parameters run again first when the search resumes.
      trial.set_user_attr("interrupted", True)
      _queue_again(study, trial.params, trial.number)
      raise
    for key, value in attrs.items():
      trial.set_user_attr(key, value)
    if not math.isfinite(score):
      trial.set_user_attr("diverged", True)
      score = DIVERGED_SCORE
    print_fn(f"trial {trial.number}: {values} -> guide loss {score:.4f} "
             f"({attrs.get('train_steps')} steps, {attrs.get('wall_seconds', 0.0):.1f} s)")
    return float(score)

  attempts = 0
  while len(complete_trials(study)) < num_trials:
    attempts += 1
    if attempts > 10 * num_trials:
      raise ValueError(f"{attempts - 1} trials ran without reaching {num_trials} complete ones "
                       "(all pruned?)")
    study.optimize(wrapped, n_trials=1, catch=())
    if csv_path:
      write_csv(study, csv_path)
  if csv_path:
    write_csv(study, csv_path)
  return study


def write_csv(study: optuna.Study, path: str) -> None:
  """One row per trial: number, state, value, parameters, compute and other user attrs."""
  trials = study.get_trials(deepcopy=False)
  params = sorted({k for t in trials for k in t.params})
  attrs = ["train_steps", "wall_seconds"]
  attrs += sorted({k for t in trials for k in t.user_attrs if k not in attrs})
  with open(path, "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["number", "state", "value", *params, *attrs])
    for t in trials:
      writer.writerow([t.number, t.state.name, "" if t.value is None else t.value,
                       *[t.params.get(k, "") for k in params],
                       *[t.user_attrs.get(k, "") for k in attrs]])


# ------------------------------------------------------------------------------------------------
# The default objective: a plain gin-configured run scored on the guide task.
@dataclasses.dataclass(frozen=True)
class PlainRunObjective:
  """Trains a plain run with the trial's constants and returns its guide loss.

  Attributes:
    gin_files / bindings: the run's configuration (as for `python -m gbt_t5x.train`).
    study_dir: trial runs go to `study_dir/trial_NNNN`.
    guide_task / guide_split / guide_module: the guide set to score on (teacher-forced loss).
    guide_eval_batches: batches of the guide evaluation (None: all of it).
    base_learning_rate: the configured base LR (for `lr_multiplier`).
    extra_scores: optional `(model, params) -> {name: float}` recorded as user attrs.
  """
  gin_files: tuple[str, ...]
  bindings: tuple[str, ...]
  study_dir: str
  guide_task: str = "demo_nmt_guide"
  guide_split: str = "validation"
  guide_module: str | None = None
  guide_eval_batches: int | None = None
  base_learning_rate: float | None = None
  extra_scores: Callable[[Any, Any], Mapping[str, float]] | None = None
  print_fn: Callable[[str], None] = print

  def __call__(self, ctx: TrialContext) -> tuple[float, dict[str, Any]]:
    from gbt_t5x import runner, scoring
    model_dir = os.path.join(self.study_dir, f"trial_{ctx.trial.number:04d}")
    shutil.rmtree(model_dir, ignore_errors=True)
    bindings = [*self.bindings, f"MODEL_DIR = {model_dir!r}",
                *search_space.bindings(ctx.values, self.base_learning_rate)]

    def print_and_report(line: str) -> None:
      self.print_fn(line)
      match = _EVAL_LINE.match(line)
      if match:
        ctx.report(int(match.group(1)), float(match.group(2)))

    gin_files = [*self.gin_files, *search_space.gin_files(list(ctx.values))]
    result = runner.run_training(gin_files, bindings, print_fn=print_and_report)
    lengths = dict(runner.query_macro("TASK_FEATURE_LENGTHS"))
    batch_size = int(runner.query_macro("BATCH_SIZE"))
    module = self.guide_module or runner.query_macro("MIXTURE_OR_TASK_MODULE")
    guide = scoring.teacher_forced(result.model, result.params, self.guide_task,
                                   self.guide_split, lengths, batch_size,
                                   self.guide_eval_batches, module)
    attrs: dict[str, Any] = {"train_steps": result.train_steps,
                             "wall_seconds": result.wall_seconds,
                             "seconds_per_step": runner.seconds_per_step(model_dir),
                             "cpu_seconds_per_step": runner.seconds_per_step(model_dir, cpu=True),
                             "guide_accuracy": guide["accuracy"], "model_dir": model_dir}
    if self.extra_scores is not None:
      attrs.update(self.extra_scores(result.model, result.params))
    return guide["loss"], attrs


def configured_base_learning_rate(gin_files: Sequence[str], bindings: Sequence[str]) -> float:
  """Parses the configuration (validating it) and returns its base learning rate."""
  import gin
  from gbt_t5x import runner
  runner.parse(gin_files, [*bindings, "MODEL_DIR = '/nonexistent'"]
               if not any(b.strip().startswith("MODEL_DIR") for b in bindings) else bindings)
  return float(gin.query_parameter(
      "gbt_t5x.train.learning_rate.create_learning_rate_scheduler.base_learning_rate"))


def main(argv: Sequence[str] | None = None) -> int:
  from gbt_t5x import gin_utils
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--gin_file", action="append", default=[])
  parser.add_argument("--gin_bindings", action="append", default=[])
  parser.add_argument("--verbose", action="store_true",
                  help="also show the libraries' log lines (or GBT_T5X_VERBOSE=1)")
  parser.add_argument("--space", required=True, help="e.g. learning_rate=1e-4:1e-1:log,b1=0.5:0.99")
  parser.add_argument("--study_dir", default="runs/search")
  parser.add_argument("--num_trials", type=int, default=8, help="COMPLETE trials wanted")
  parser.add_argument("--sampler", default="auto", choices=("auto", "gp", "tpe"))
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--prune", action="store_true", help="MedianPruner on the periodic eval")
  parser.add_argument("--guide_task", default="demo_nmt_guide")
  parser.add_argument("--guide_split", default="validation")
  parser.add_argument("--guide_eval_batches", type=int, default=None)

  def body() -> int:
    args = parser.parse_args(gin_utils.rewrite_gin_args(sys.argv[1:] if argv is None else argv))
    if not args.gin_file:
      raise ValueError("give at least one --gin_file (e.g. experiments/demo_nmt.gin)")
    space = search_space.parse_space(args.space)
    study = open_study(args.study_dir, space, args.sampler, args.seed, args.prune)
    gin_utils.quiet_tensorflow()
    base_lr = configured_base_learning_rate(args.gin_file, args.gin_bindings)
    objective = PlainRunObjective(tuple(args.gin_file), tuple(args.gin_bindings),
                                  args.study_dir, args.guide_task, args.guide_split,
                                  guide_eval_batches=args.guide_eval_batches,
                                  base_learning_rate=base_lr)
    study = run_search(study, space, args.num_trials, objective,
                       csv_path=os.path.join(args.study_dir, CSV_FILE))
    best = study.best_trial
    print(f"best trial {best.number}: guide loss {best.value:.4f} with {best.params}; "
          f"{len(complete_trials(study))} complete trials, "
          f"{sum(int(t.user_attrs.get('train_steps', 0)) for t in study.trials)} train steps, "
          f"{sum(float(t.user_attrs.get('wall_seconds', 0.0)) for t in study.trials):.0f} s")
    return 0

  return errors.exit_code_of(body)


if __name__ == "__main__":
  sys.exit(main())
