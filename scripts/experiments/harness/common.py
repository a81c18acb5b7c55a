"""Plumbing shared by the experiment scripts: command line, demo-world environment, the gin files
of the runs, and the one resumable train-then-score path (`run_arm`).

Generated gin files go into the experiment's results folder (they include the project's gin files
by their search path), so each report's runs can be repeated with `python -m gbt_t5x.train`.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shutil
import statistics
from typing import Any, Callable, Mapping, Sequence

from gbt_t5x import console, errors, fileio
from harness import records as records_lib
from harness import sizes as sizes_lib
from harness.records import RunRecord

NMT_GIN = sizes_lib.NMT_GIN
GUIDE_TASK = "demo_nmt_guide"

# Guided kinds the experiments use: name -> (gin file defining it, its GuidedHParam reference).
GUIDED_KINDS: dict[str, tuple[str, str]] = {
    "learning_rate": ("guided/lr.gin", "@lr/specs.GuidedHParam()"),
    "b1": ("guided/adam_betas.gin", "@b1/specs.GuidedHParam()"),
    "b2": ("guided/adam_betas.gin", "@b2/specs.GuidedHParam()"),
    "eps": ("guided/adam_eps_weight_decay.gin", "@eps/specs.GuidedHParam()"),
    "weight_decay": ("guided/adam_eps_weight_decay.gin", "@weight_decay/specs.GuidedHParam()"),
    "label_smoothing": ("guided/label_smoothing.gin", "@label_smoothing/specs.GuidedHParam()"),
    "data_weights": ("guided/data_weights.gin", "@data_weights/specs.GuidedHParam()"),
    "mixture_weights": ("guided/mixture_weights.gin", "@data_weights/specs.GuidedHParam()"),
}


def parse_args(description: str, argv: Sequence[str] | None,
               extra: Callable[[argparse.ArgumentParser], None] | None = None
               ) -> argparse.Namespace:
  """`--results_dir`, `--quick`, `--seeds`, `--fresh`, `--report_only`, `--meta_lr` (+ the
  script's own flags)."""
  parser = argparse.ArgumentParser(description=description)
  parser.add_argument("--results_dir", default="results")
  parser.add_argument("--quick", action="store_true", help="CI size (numbers not meaningful)")
  parser.add_argument("--seeds", default=None,
                      help="comma-separated seeds (default: the size's, 3 at default size)")
  parser.add_argument("--fresh", action="store_true",
                      help="delete this experiment's records and runs first")
  parser.add_argument("--report_only", action="store_true",
                      help="rebuild report.md and the plots from the records (no training)")
  parser.add_argument("--meta_lr", type=float, default=None,
                      help="meta learning rate of the guided runs (default: ln 10 / guided steps)")
  parser.add_argument("--verbose", action="store_true", help="keep the libraries' log lines")
  if extra is not None:
    extra(parser)
  return parser.parse_args(argv)


@dataclasses.dataclass
class Experiment:
  """One experiment invocation: its size, folder, seeds, records and meta learning rate."""
  name: str
  size: sizes_lib.Size
  out: str
  seeds: tuple[int, ...]
  store: records_lib.RunStore
  meta_lr: float
  report_only: bool
  results_dir: str
  log: Callable[[str], None] = print

  def run_dir(self, label: str, seed: int) -> str:
    return os.path.join(self.out, "runs", records_lib.record_key(label, seed))

  def forget(self, label: str, seed: int) -> None:
    """Deletes run (`label`, `seed`)'s record and run dir, so that it is redone from scratch."""
    self.store.delete(label, seed)
    shutil.rmtree(self.run_dir(label, seed), ignore_errors=True)


def setup(args: argparse.Namespace, name: str, config: Mapping[str, Any] | None = None
          ) -> Experiment:
  """Checks the flags, sets the demo-world environment, quiets TF, enables the compile cache.

  Args:
    args: `parse_args`'s namespace.
    name: the experiment (its folder under `--results_dir`).
    config: the script's own settings that change its runs (they key the records with the size
      and meta learning rate).

  Raises:
    ValueError (one line): bad `--seeds`; the folder holds records of another configuration.
  """
  size = sizes_lib.get_size(args.quick)
  seeds = records_lib.parse_seeds(args.seeds, size.seeds)
  meta_lr = float(args.meta_lr) if args.meta_lr is not None else size.meta_learning_rate()
  if not (math.isfinite(meta_lr) and meta_lr > 0):
    raise ValueError(f"--meta_lr must be a positive number, got {args.meta_lr}")
  out = os.path.join(args.results_dir, name)
  if args.fresh and not args.report_only:
    shutil.rmtree(out, ignore_errors=True)
  full_config = experiment_config(name, size, meta_lr, config)
  if args.report_only:
    store = records_lib.load_store(out)
    if store.config != json.loads(json.dumps(full_config, sort_keys=True)):
      raise ValueError(f"{out} holds records of another configuration: give the same flags "
                       "(--quick, --meta_lr, ...) as the run that wrote them")
  else:
    store = records_lib.RunStore(out, full_config)
  if not (args.verbose or console.is_verbose()):
    console.import_tensorflow_quietly()  # The flags are fine: now load the libraries.
  _point_at_demo_world(os.path.join(args.results_dir, f"_demo_world_{size.name}"),
                       size.world_json(), size.downstream_json())
  from gbt_t5x import gin_utils
  gin_utils.quiet_tensorflow()
  if not args.report_only:
    from gbt_t5x import runner
    # A cache the caller names wins (the test suite shares one among all its experiment runs).
    runner.enable_compilation_cache(os.environ.get("JAX_COMPILATION_CACHE_DIR")
                                    or os.path.join(args.results_dir, "_jax_cache"))
  return Experiment(name, size, out, seeds, store, meta_lr, bool(args.report_only),
                    args.results_dir)


def run_and_report(exp: Experiment, run_all: Callable[..., None],
                   write_report: Callable[..., str], *args: Any) -> int:
  """An experiment script's body: `run_all(exp, *args)` (unless `--report_only`), then
  `write_report(exp, *args)`; returns the exit status 0."""
  if not exp.report_only:
    run_all(exp, *args)
  write_report(exp, *args)
  return 0


def experiment_config(name: str, size: sizes_lib.Size, meta_lr: float,
                      config: Mapping[str, Any] | None = None) -> dict[str, Any]:
  """What keys an experiment's records (`experiment.json`): its name, size, meta learning rate
  and the script's own settings `config`."""
  return {"experiment": name, "size": size.as_json(), "meta_lr": meta_lr, **dict(config or {})}


def main_with_one_line_errors(main: Callable[[Sequence[str] | None], int]) -> int:
  """Runs a script's `main` on the command line's flags; a ValueError becomes one line on stderr
  and exit status 2, a preempted run one line and `errors.PREEMPTED_EXIT_CODE`, as the train
  entry point does (`errors.exit_code_of`)."""
  return errors.exit_code_of(lambda: main(None))


def write_gin(path: str, lines: Sequence[str]) -> str:
  """Writes `lines` to `path` atomically (`fileio.write_text`), so that workers of one experiment
  on different `--seeds`, which write the same gin files, never read a partial one."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  fileio.write_text(path, "\n".join(lines) + "\n")
  return path


# Guided values that start where experiments/demo_nmt.gin's plain run is (the guided gin files'
# own defaults are 0.999 and 1e-8); label smoothing starts at its guided default 0.1 (a sigmoid
# value cannot start at exactly 0).
DEMO_INITS = ("b2/specs.GuidedHParam.init = 0.98", "eps/specs.GuidedHParam.init = 1e-09")


def guided_gin(path: str, base_gin: str, kinds: Sequence[str], meta_lr: float,
               hyper_step_every: int, guide_task: str = GUIDE_TASK,
               extra: Sequence[str] = ()) -> str:
  """A gin file: `base_gin` with `kinds` (names of `GUIDED_KINDS`) guided by `guide_task`, each
  starting from its gin default, a guided step every `hyper_step_every` steps."""
  unknown = [k for k in kinds if k not in GUIDED_KINDS]
  if unknown or not kinds:
    raise ValueError(f"unknown guided kinds {unknown or list(kinds)}; known: {list(GUIDED_KINDS)}")
  includes = list(dict.fromkeys(GUIDED_KINDS[k][0] for k in kinds))
  return write_gin(path, [
      f"# Generated by gbt_t5x.experiments: {', '.join(kinds)} guided by {guide_task}.",
      "from __gin__ import dynamic_registration",
      "from gbt_t5x.guided import specs",
      f"include '{base_gin}'",
      *[f"include '{f}'" for f in includes],
      f"GUIDE_MIXTURE_OR_TASK_NAME = {guide_task!r}",
      f"META_LEARNING_RATE = {meta_lr!r}",
      f"HYPER_STEP_EVERY = {int(hyper_step_every)}",
      f"GUIDED_HPARAMS = [{', '.join(GUIDED_KINDS[k][1] for k in kinds)}]",
      # The committed experiments ran with the VJP derivative (the default then); the closed
      # form agrees to float32 rounding, which a 3000-step run amplifies: resumed and new runs
      # of these experiments keep the VJP so that their arms stay comparable.
      "OPTIMIZER_DERIVATIVE = 'vjp'",
      *[line for line in DEMO_INITS if line.split("/")[0] in kinds],
      *extra,
  ])


def forward_horizon(mu: float) -> tuple[str, str]:
  """The `guided_gin(extra=...)` bindings of the long-horizon ('forward') hypergradient with
  damping `mu`."""
  return ("HYPERGRAD_HORIZON = 'forward'", f"HYPERGRAD_MU = {mu!r}")


def pretrain_gin(path: str) -> str:
  """A gin file: tiny T5 span-corruption pretraining on the demo world (`demo_span_corruption`),
  AdamW with the demo's defaults (base LR 0.002, b1 0.9, constant after warmup)."""
  from gbt_t5x_tasks import demo_pretrain
  lengths = dict(demo_pretrain.DEFAULT_SEQUENCE_LENGTH)
  return write_gin(path, [
      "# Generated by gbt_t5x.experiments: demo span-corruption pretraining.",
      "from __gin__ import dynamic_registration",
      "from gbt_t5x.train import learning_rate",
      "from gbt_t5x.train import optimizers",
      "from gbt_t5x_tasks import demo",
      "include 'models/t5_1_1_tiny.gin'",
      "include 'runs/pretrain.gin'",
      "MIXTURE_OR_TASK_NAME = 'demo_span_corruption'",
      "MIXTURE_OR_TASK_MODULE = 'gbt_t5x_tasks.demo_pretrain'",
      f"TASK_FEATURE_LENGTHS = {lengths!r}",
      "PACK = False",
      "DROPOUT_RATE = 0.0",
      "VOCABULARY = @demo.DemoVocabulary()",
      "NUM_EMBEDDINGS = 1152",
      "OPTIMIZER = @optimizers.adamw()",
      "optimizers.adamw.b1 = 0.9",
      "optimizers.adamw.b2 = 0.98",
      "optimizers.adamw.eps = 1e-9",
      "optimizers.adamw.weight_decay = 0.0",
      "learning_rate.create_learning_rate_scheduler.factors = 'constant * linear_warmup'",
      "learning_rate.create_learning_rate_scheduler.base_learning_rate = 0.002",
  ])


def finetune_gin(path: str, task: str, module: str) -> str:
  """A gin file: finetune tiny T5 on `task` from INITIAL_CHECKPOINT_PATH (finetune.gin's
  restore and constant LR 0.001), starting from the demo NMT configuration."""
  return write_gin(path, [
      "# Generated by gbt_t5x.experiments: finetuning from a pretrained checkpoint.",
      "from __gin__ import dynamic_registration",
      "from gbt_t5x.train import learning_rate",
      "from gbt_t5x.train import train_lib",
      f"include '{NMT_GIN}'",
      f"MIXTURE_OR_TASK_NAME = {task!r}",
      f"MIXTURE_OR_TASK_MODULE = {module!r}",
      "INITIAL_CHECKPOINT_PATH = %gin.REQUIRED",
      "train_lib.CheckpointConfig.restore = @train_lib.RestoreCheckpointConfig()",
      "train_lib.RestoreCheckpointConfig.path = %INITIAL_CHECKPOINT_PATH",
      "train_lib.RestoreCheckpointConfig.reset_optimizer = True",
      "learning_rate.create_learning_rate_scheduler.factors = 'constant'",
      "learning_rate.create_learning_rate_scheduler.base_learning_rate = 0.001",
  ])


def run_arm(exp: Experiment, label: str, seed: int, gin_files: Sequence[str],
            bindings: Sequence[str], score_fn: Callable[[Any, Any], dict[str, float]],
            extra_fn: Callable[[str], dict[str, Any]] | None = None,
            steps: int | None = None) -> RunRecord:
  """The record of run (`label`, `seed`): read back if it exists, else trained (continuing from
  the checkpoints in its run dir when an earlier attempt was interrupted), scored and written.

  Args:
    exp: the experiment.
    label: the arm.
    seed: its seed.
    gin_files: gin files of the run.
    bindings: bindings on top of `sizes.run_bindings` (which set the run dir, steps, seed...).
    score_fn: (model, params) -> scores, after training.
    extra_fn: model_dir -> anything else to keep in the record (e.g. learned values).
    steps: model steps (default: the size's).

  Raises:
    ValueError: with `--report_only`, when the record is missing.
  """
  record = exp.store.get(label, seed)
  if record is not None:
    return record
  if exp.report_only:
    raise ValueError(f"no record of run {label!r} seed {seed} in {exp.out}: rerun without "
                     "--report_only to finish the experiment")
  from gbt_t5x import runner
  model_dir = exp.run_dir(label, seed)
  resumed_from = runner.latest_step(model_dir)
  result = _train(exp, label, seed, gin_files, bindings, steps,
                  f" (resuming at step {resumed_from})" if resumed_from else "")
  scores = {k: float(v) for k, v in score_fn(result.model, result.params).items()}
  record = RunRecord(label=label, seed=seed, scores=scores, train_steps=result.final_step,
                     wall_seconds=result.wall_seconds,
                     seconds_per_step=runner.seconds_per_step(model_dir),
                     cpu_seconds_per_step=runner.seconds_per_step(model_dir, cpu=True),
                     model_dir=os.path.relpath(model_dir, exp.out),
                     extra={"resumed_from_step": resumed_from, "eval_seed": sizes_lib.EVAL_SEED,
                            **(extra_fn(model_dir) if extra_fn else {})})
  exp.store.put(record)
  exp.log(f"[{label} | seed {seed}] done: "
          f"{json.dumps({k: round(v, 4) for k, v in scores.items()})} ({record.train_steps} steps, "
          f"{record.wall_seconds:.0f} s, {record.seconds_per_step * 1e3:.0f} ms/step)")
  return record


def _train(exp: Experiment, label: str, seed: int, gin_files: Sequence[str],
           bindings: Sequence[str], steps: int | None, why: str = "") -> Any:
  """Trains (or continues) run (`label`, `seed`) in its run dir: `sizes.run_bindings` (run dir,
  steps, seed...) then `bindings` on top of `gin_files`, logging each line with the run's name.
  Returns the `runner.TrainResult`."""
  from gbt_t5x import runner
  model_dir = exp.run_dir(label, seed)
  exp.log(f"[{label} | seed {seed}] training{why}")
  return runner.run_training(
      gin_files, sizes_lib.run_bindings(exp.size, seed, model_dir, steps) + list(bindings),
      print_fn=lambda line: exp.log(f"  [{label} | seed {seed}] {line}"))


def same_scores(a: Mapping[str, float], b: Mapping[str, float], rel: float = 1e-5) -> bool:
  """Whether two runs' scores agree (same keys, each within `rel` relative difference, or both
  NaN: a score the run does not have)."""
  return set(a) == set(b) and all(
      (math.isnan(a[k]) and math.isnan(b[k]))
      or abs(a[k] - b[k]) <= rel * max(1.0, abs(a[k]), abs(b[k])) for k in a)


def ensure_checkpoint(exp: Experiment, record: RunRecord, gin_files: Sequence[str],
                      bindings: Sequence[str],
                      score_fn: Callable[[Any, Any], dict[str, float]],
                      steps: int | None = None) -> bool:
  """Re-trains the finished run of `record` when its final checkpoint is gone, so that runs
  starting from it (finetunings) can go on. Returns True when the record was replaced.

  Records are committed and run dirs are not, so a fresh clone continuing an experiment has the
  records of finished runs but not their checkpoints. The re-training uses the record's seed and
  the same gin; on the same machine it reproduces the run (same scores: the record is kept), but
  another machine's floating point can train a slightly different model. Then the re-trained
  run is what later runs start from, so its scores replace the record's (the old ones are kept
  in `extra['replaced_scores']`; the timing stays the original measurement) and the caller must
  redo the runs made from the old checkpoint.
  """
  from gbt_t5x import runner
  model_dir = exp.run_dir(record.label, record.seed)
  if runner.latest_step(model_dir) >= record.train_steps:
    return False
  result = _train(exp, record.label, record.seed, gin_files, bindings, steps,
                  " (its checkpoint is missing: re-training it from its gin)")
  scores = {k: float(v) for k, v in score_fn(result.model, result.params).items()}
  if same_scores(scores, record.scores):
    exp.log(f"[{record.label} | seed {record.seed}] re-trained: scores reproduced, record kept")
    return False
  exp.log(f"[{record.label} | seed {record.seed}] re-trained: scores differ from the record "
          f"({json.dumps({k: round(v, 4) for k, v in scores.items()})} vs "
          f"{json.dumps({k: round(v, 4) for k, v in record.scores.items()})}): record replaced")
  exp.store.put(dataclasses.replace(
      record, scores=scores,
      extra={**record.extra, "eval_seed": sizes_lib.EVAL_SEED,
             "replaced_scores": record.extra.get("replaced_scores", []) + [record.scores]}))
  return True


def rescoring_note(records: Sequence[RunRecord]) -> str:
  """A sentence naming the runs whose checkpoint was re-trained on another machine with
  different scores (`ensure_checkpoint`), and those scored before the scoring's random
  preprocessing was seeded (no `eval_seed` in their record; only tasks with random
  preprocessing, such as span corruption, are affected); '' when there are none."""
  def names(rs):
    return ", ".join(f"{r.label} (seed {r.seed})" for r in rs)
  replaced = [r for r in records if r.extra.get("replaced_scores")]
  unseeded = [r for r in records if "eval_seed" not in r.extra]
  parts = []
  if replaced:
    parts.append(f"Re-trained from its gin on another machine (run dirs are not committed), "
                 f"whose floating point trains a slightly different model, so its scores and "
                 f"the runs made from it are the re-trained model's (its first scores are kept "
                 f"in its record): {names(replaced)}.")
  if unseeded:
    parts.append(f"Scored before the scoring seeded its random preprocessing (seed "
                 f"{sizes_lib.EVAL_SEED} since), so their span-corruption noise masks differ "
                 f"from the other runs': {names(unseeded)}.")
  return " ".join(parts)


def trajectory_extra(model_dir: str, max_rows: int = 100) -> dict[str, Any]:
  """A guided run's learned values for its record, thinned to about `max_rows` rows:
  {'trajectory': {'steps': [...], name: [value or vector per row]}} (the last row kept)."""
  from gbt_t5x.guided import export
  rows = export.read_trajectory(model_dir)
  kept = rows[::max(1, len(rows) // max_rows)]
  if kept[-1] is not rows[-1]:
    kept.append(rows[-1])
  out: dict[str, Any] = {"steps": [int(r["step"]) for r in kept]}
  for name in kept[0]["values"]:
    out[name] = [r["values"][name] for r in kept]
  return {"trajectory": out, **meta_step_counts(model_dir)}


def meta_step_counts(model_dir: str) -> dict[str, Any]:
  """How often a guided run's meta updates were skipped, per value, and how often the forward
  horizon reset a tangent, summed over its metrics.jsonl windows:
  {'skipped_meta_updates': {name: count}, 'tangent_resets': count}."""
  from gbt_t5x.train import summaries
  path = os.path.join(model_dir, "metrics.jsonl")
  skipped: dict[str, float] = {}
  resets = 0.0
  for row in summaries.read_metrics_log(path) if os.path.exists(path) else []:
    for key, value in row.items():
      if key.startswith("train/skipped/"):
        name = key[len("train/skipped/"):]
        skipped[name] = skipped.get(name, 0.0) + float(value)
      elif key == "train/tangent_resets":
        resets += float(value)
  return {"skipped_meta_updates": {k: int(v) for k, v in skipped.items()},
          "tangent_resets": int(resets)}


def meta_step_summary(records: Sequence[RunRecord]) -> str:
  """One sentence: the skipped meta updates and tangent resets of guided runs (from
  `meta_step_counts` in their records), e.g. for the forward horizon, whose tangents can grow
  until they overflow."""
  counts = [r.extra for r in records if "tangent_resets" in r.extra]
  if not counts:
    return ""
  skipped = sum(sum(c["skipped_meta_updates"].values()) for c in counts)
  resets = sum(c["tangent_resets"] for c in counts)
  return (f"Over its {len(counts)} runs: {skipped} skipped meta updates (all values together; a "
          f"hypergradient the meta optimizer cannot take) and {resets} tangent resets (an "
          "overflowed tangent restarted at zero).")


def use_demo_world(exp: Experiment, **overrides: Any) -> None:
  """Points the demo tasks at the world of the experiment's size with `overrides` (e.g.
  `noise_rate=0.4`), each world in its own folder next to the results."""
  import hashlib
  world = {**dict(exp.size.world), **overrides}
  text = json.dumps(world, sort_keys=True)
  suffix = "" if not overrides else "_" + hashlib.sha1(text.encode()).hexdigest()[:8]
  _point_at_demo_world(
      os.path.join(exp.results_dir, f"_demo_world_{exp.size.name}{suffix}"), text,
      exp.size.downstream_json())


def _point_at_demo_world(folder: str, world_json: str, downstream_json: str) -> None:
  """Points the demo tasks at `folder` holding the world of `world_json` (and its demo GLUE
  data of `downstream_json`, '' for the demo's own sizes). The world is written once and not
  changed (its folder and settings name it): datasets are checked and evaluation splits read
  once per process."""
  from gbt_t5x.data import demo_downstream
  from harness import data_cache
  os.environ["GBT_T5X_DEMO_DIR"] = os.path.abspath(folder)
  os.environ["GBT_T5X_DEMO_CONFIG"] = world_json
  if downstream_json:
    os.environ[demo_downstream.ENV_CONFIG] = downstream_json
  else:
    os.environ.pop(demo_downstream.ENV_CONFIG, None)
  data_cache.trust_unchanged_data(f"{os.path.abspath(folder)}|{world_json}|{downstream_json}")


def require_record(exp: Experiment, label: str, seed: int) -> RunRecord:
  """The record of a finished run (for reports); ValueError (one line) if it is missing."""
  record = exp.store.get(label, seed)
  if record is None:
    raise ValueError(f"run {label!r} seed {seed} of {exp.out} is not finished: rerun without "
                     "--report_only")
  return record


def translation_scores(exp: Experiment) -> Callable[[Any, Any], dict[str, float]]:
  """Score function of a translation run: teacher-forced dev and guide loss, greedy test BLEU,
  exact match, token accuracy and word F1 (`scoring.score_run`)."""
  from gbt_t5x import scoring
  size = exp.size

  def score(model, params):
    return scoring.score_run(model, params, scoring.ScoreSpec(), size.lengths, size.batch_size,
                             size.eval_batches, size.decode_examples)
  return score


@dataclasses.dataclass(frozen=True)
class StepTime:
  """A plain run's steady-state seconds per model step, the reference of `step_equivalents`:
  wall seconds and CPU seconds of the training process (NaN where not logged)."""
  wall: float
  cpu: float = float("nan")

  @classmethod
  def of(cls, record: RunRecord) -> "StepTime":
    return cls(record.seconds_per_step, record.cpu_seconds_per_step)

  @classmethod
  def median(cls, records: Sequence[RunRecord]) -> "StepTime":
    """The median over several plain runs (e.g. BO's trials) of each kind of seconds that all
    of them logged (else NaN)."""
    def median_of(values: list[float]) -> float:
      return statistics.median(values) if all(map(math.isfinite, values)) else float("nan")
    return cls(median_of([r.seconds_per_step for r in records]),
               median_of([r.cpu_seconds_per_step for r in records]))


def timing_basis(records: Sequence[RunRecord]) -> str:
  """Which seconds `step_equivalents` counted for `records` (for a report's setup line)."""
  with_cpu = [math.isfinite(r.cpu_seconds_per_step) for r in records
              if math.isfinite(r.seconds_per_step)]
  if with_cpu and all(with_cpu):
    return "CPU seconds of the training process"
  if not any(with_cpu):
    return "wall seconds"
  return "CPU seconds of the training process where both runs logged them, else wall seconds"


def step_equivalents(record: RunRecord, plain: StepTime) -> float:
  """A run's compute in plain train steps: its steps x (its seconds per step / the plain run's,
  measured in the same experiment), so a guided run pays its overhead. CPU seconds of the
  training process when both logged them (other processes on the machine hardly change them,
  while they stretch wall seconds), else wall seconds; a run without a step time counts its
  steps."""
  if math.isfinite(record.cpu_seconds_per_step) and plain.cpu > 0:
    return record.train_steps * record.cpu_seconds_per_step / plain.cpu
  if not (plain.wall > 0) or not math.isfinite(record.seconds_per_step):
    return float(record.train_steps)
  return record.train_steps * record.seconds_per_step / plain.wall
