"""Claim 3: hyper-parameters learned during pretraining help downstream. Tiny T5 is pretrained
with span corruption on the demo world (`demo_span_corruption`) three ways, then every checkpoint
is finetuned identically on the downstream task or mixture and scored:

* `plain pretraining`: AdamW with the demo's defaults (base LR 0.002 after warmup, b1 0.9, label
  smoothing 0);
* `guided pretraining`: the same, with the LR multiplier, Adam b1 and label smoothing learned from
  the pretraining guide task `demo_span_corruption_guide` (a guided step every k steps, k and the
  meta learning rate from the experiment's size; --quick: the LR multiplier only);
* `plain pretraining, equal compute`: plain, with the guided run's extra cost as extra steps.

The default downstream is the demo's GLUE, one task at a time: demo_cola, demo_mrpc and demo_sst2
(their 'clear' construction), each finetuned from every checkpoint on its own (finetune.gin's
restore, constant LR 0.001) and scored with its GLUE metric; the report adds the GLUE-style average
over the three. (The mixture `demo_glue_proportional` can be given instead: finetuned on the
mixture, a 2+2-layer model learns demo_mrpc's sentence comparison only erratically.)

    python scripts/experiments/pretrain_downstream.py [--results_dir results] [--quick]
        [--seeds 0,1,2]
        [--downstream MODULE:TASK[,MODULE:TASK...]]   # default: the three demo GLUE tasks

Writes RESULTS_DIR/pretrain_downstream/: report.md, downstream.png, learned_values.png,
experiment.json, records/ (one JSON per finished run; a rerun skips them and resumes an
interrupted run) and runs/.

Downstream scores are on the validation split of each task: teacher-forced loss of the
mixture, and each task's own SeqIO metrics on greedy decodes (Matthews corr. × 100 for demo_cola,
F1 and accuracy for demo_mrpc, accuracy for demo_sst2; BLEU for translation) and their GLUE-style
average (the mean over tasks of each task's mean metric).
"""
from __future__ import annotations

import sys

from gbt_t5x import console

if __name__ == "__main__":
  # Before TensorFlow and JAX load (they log when imported); TensorFlow itself loads in
  # `common.setup`, once the flags are checked.
  console.configure(sys.argv, import_tensorflow=False)

import dataclasses
import os
from typing import Any, Sequence

import numpy as np

from gbt_t5x.data import demo_downstream
from harness import common, report, sizes as sizes_lib

NAME = "pretrain_downstream"
DEFAULT_DOWNSTREAM = ",".join(f"gbt_t5x_tasks.demo_glue:demo_{t}" for t in ("cola", "mrpc", "sst2"))


def _add_flags(parser) -> None:
  parser.add_argument("--downstream", default=DEFAULT_DOWNSTREAM,
                      help="comma-separated MODULE:TASK_OR_MIXTURE downstream tasks (finetuned "
                      "one by one)")


def parse_downstream(text: str) -> list[tuple[str, str]]:
  """[(module, task)] from 'MODULE:TASK,...' (ValueError on a malformed item)."""
  out = []
  for item in [i.strip() for i in text.split(",") if i.strip()]:
    module, sep, task = item.rpartition(":")
    if not sep or not module or not task:
      raise ValueError(f"malformed --downstream item {item!r}: expected MODULE:TASK")
    out.append((module, task))
  if not out:
    raise ValueError("--downstream names no task")
  return out


def downstream_lengths(module: str, size: sizes_lib.Size) -> dict[str, int]:
  """Feature lengths of a downstream task: the translation lengths of `size` for the demo NMT
  module, the demo GLUE tasks' untruncated lengths otherwise."""
  if module == "gbt_t5x_tasks.demo":
    return dict(size.lengths)
  from gbt_t5x_tasks import demo_glue
  return dict(demo_glue.DEFAULT_SEQUENCE_LENGTH)


def downstream_scores(size: sizes_lib.Size, task: str, module: str, lengths: dict[str, int]):
  """`(model, params) -> scores` on `task`'s validation split: teacher-forced dev loss /
  accuracy and every task's metrics on greedy decodes (`scoring.task_metrics`)."""
  from gbt_t5x import scoring

  def score(model, params) -> dict[str, float]:
    dev = scoring.teacher_forced(model, params, task, "validation", lengths, size.batch_size,
                                 size.eval_batches, module)
    return {"dev_loss": dev["loss"], "dev_accuracy": dev["accuracy"],
            **scoring.task_metrics(model, params, task, "validation", lengths, size.batch_size,
                                   size.decode_examples, module)}

  return score


PLAIN, GUIDED, EQUAL = ("plain pretraining", "guided pretraining",
                        "plain pretraining, equal compute")
ARMS = (PLAIN, GUIDED, EQUAL)
GUIDED_KINDS = ("learning_rate", "b1", "label_smoothing")
# --quick guides the LR multiplier only: each further kind is more of the guided step's compile,
# which dominated the quick run (its numbers are not meaningful anyway).
QUICK_GUIDED_KINDS = ("learning_rate",)
KIND_TITLES = {"learning_rate": "LR multiplier", "b1": "Adam b1",
               "label_smoothing": "label smoothing"}
# The model of this experiment (pretraining and finetuning), deeper than the translation
# experiments' 1+1 layers: a 1+1-layer T5 leaves demo_mrpc (a comparison of two sentences) at
# 67-72 % however it is finetuned; 2+2 layers reach 75-80 % finetuned on it alone (README,
# Results). The quick size keeps its own depth.
DEFAULT_LAYERS = 2


def model_layers(size: sizes_lib.Size) -> int:
  """Encoder and decoder layers (each) of every run of this experiment."""
  return size.num_layers if size.quick else DEFAULT_LAYERS


def guided_kinds(size: sizes_lib.Size) -> tuple[str, ...]:
  """The kinds the guided pretraining learns at this size."""
  return QUICK_GUIDED_KINDS if size.quick else GUIDED_KINDS


def layer_bindings(size: sizes_lib.Size) -> list[str]:
  n = model_layers(size)
  return [f"network.T5Config.num_encoder_layers = {n}",
          f"network.T5Config.num_decoder_layers = {n}"]


# What a plain-pretrained, finetuned tiny T5 must reach on the demo GLUE tasks for the comparison
# to mean anything (validation split; the metrics' own scales).
THRESHOLDS = {"demo_cola/matthews_corrcoef": 40.0, "demo_mrpc/accuracy": 75.0,
              "demo_sst2/accuracy": 75.0}
PRETRAIN_METRICS = (("dev_loss", "span-corruption dev loss", 3, False),
                    ("dev_accuracy", "dev token accuracy", 3, True))


def finetune_label(pretraining: str, task: str) -> str:
  return f"finetune {pretraining} -> {task}"


def across_tasks(records: Sequence[Any]) -> Any:
  """One pretraining's finetunes on several tasks (same seed) as one record: the GLUE-style
  `average` (mean over tasks of each task's own average), finetuning steps and seconds summed."""
  first = records[0]
  return dataclasses.replace(
      first, label=first.label.split(" -> ")[0],
      scores={"average": float(np.mean([r.scores["average"] for r in records]))},
      train_steps=sum(r.train_steps for r in records),
      wall_seconds=float(sum(r.wall_seconds for r in records)), extra={})


def run_all(exp: common.Experiment, downstream: Sequence[tuple[str, str]]) -> None:
  size, out = exp.size, exp.out
  from gbt_t5x import scoring
  from gbt_t5x_tasks import demo, demo_pretrain
  pre_lengths = dict(demo_pretrain.DEFAULT_SEQUENCE_LENGTH)
  plain_gin = common.pretrain_gin(os.path.join(out, "gin", "pretrain.gin"))
  guided_gin = common.guided_gin(os.path.join(out, "gin", "pretrain_guided.gin"),
                                 os.path.abspath(plain_gin), guided_kinds(size),
                                 size.meta_learning_rate(steps=size.pretrain_steps),
                                 size.hyper_step_every, guide_task="demo_span_corruption_guide")
  pre_spec = scoring.ScoreSpec(dev_task="demo_span_corruption", guide_task=None,
                               decode_task="demo_span_corruption", decode_split="validation",
                               module="gbt_t5x_tasks.demo_pretrain",
                               decode_metric_fns=demo.METRIC_FNS)
  pre_bindings = [f"TASK_FEATURE_LENGTHS = {pre_lengths!r}", "PACK = False",
                  *layer_bindings(size)]

  def pre_score(model, params):
    return scoring.score_run(model, params, pre_spec, pre_lengths, size.batch_size,
                             size.eval_batches, size.decode_examples)

  for seed in exp.seeds:
    plain = common.run_arm(exp, PLAIN, seed, [plain_gin], pre_bindings, pre_score,
                           steps=size.pretrain_steps)
    guided = common.run_arm(exp, GUIDED, seed, [guided_gin], pre_bindings, pre_score,
                            common.trajectory_extra, steps=size.pretrain_steps)
    equal_steps = int(round(common.step_equivalents(guided, common.StepTime.of(plain))))
    equal = common.run_arm(exp, EQUAL, seed, [plain_gin], pre_bindings, pre_score,
                           steps=equal_steps)
    pre_gin = {PLAIN: plain_gin, GUIDED: guided_gin, EQUAL: plain_gin}
    for pre in (plain, guided, equal):
      if any(exp.store.get(finetune_label(pre.label, task), seed) is None
             for _, task in downstream):
        if common.ensure_checkpoint(exp, pre, [pre_gin[pre.label]], pre_bindings, pre_score,
                                    steps=pre.train_steps):
          for _, task in downstream:  # Made from the old checkpoint: redone from the new one.
            exp.forget(finetune_label(pre.label, task), seed)
      for module, task in downstream:
        ft_gin = common.finetune_gin(os.path.join(out, "gin", f"finetune_{task}.gin"), task,
                                     module)
        lengths = downstream_lengths(module, size)
        common.run_arm(
            exp, finetune_label(pre.label, task), seed, [ft_gin],
            [f"TASK_FEATURE_LENGTHS = {lengths!r}", "PACK = False", *layer_bindings(size),
             f"INITIAL_CHECKPOINT_PATH = {os.path.abspath(os.path.join(out, pre.model_dir))!r}"],
            downstream_scores(size, task, module, lengths), steps=size.finetune_steps)


def pretraining_comparison(runs: dict[str, list], metrics: Sequence[tuple], subject: str
                           ) -> tuple[str, list[str]]:
  """Guided vs plain pretraining (equal steps, equal compute) on one downstream score.

  Args:
    runs: arm -> one record per seed, each with an 'average' score (0-100, higher is better).
    metrics: `report.arm_table` metric rows (the first is 'average').
    subject: what the average is of, for the verdict lines (a task, or the GLUE-style average).

  Returns:
    (the paired-difference table, two verdict lines: equal steps, then equal compute).
  """
  paired, diffs = report.paired_table(
      [(GUIDED, PLAIN, "guided vs plain pretraining, equal steps"),
       (GUIDED, EQUAL, "guided vs plain pretraining, equal compute")], runs, metrics)
  mean = lambda arm: float(np.mean([r.scores["average"] for r in runs[arm]]))  # noqa: E731
  lines = []
  for ref, what in ((PLAIN, "equal pretraining steps"), (EQUAL, "equal pretraining compute")):
    d = diffs[(GUIDED, ref)]["average"]
    verdict = report.interval_verdict(d, True)
    lines.append(
        f"- **{subject}, {what}**: average {mean(GUIDED):.2f} after guided pretraining vs "
        f"{mean(ref):.2f} — {verdict} (Δ {report.fmt_paired(d)}); claim 3 "
        f"{'REPRODUCED' if verdict == 'better' else 'NOT reproduced'} here.")
  return paired, lines


def write_report(exp: common.Experiment, downstream: Sequence[tuple[str, str]]) -> str:
  size, out, seeds = exp.size, exp.out, list(exp.seeds)
  pre_runs = {a: [common.require_record(exp, a, s) for s in seeds] for a in ARMS}
  plain_sps = {r.seed: common.StepTime.of(r) for r in pre_runs[PLAIN]}
  compute = {a: [common.step_equivalents(r, plain_sps[r.seed]) for r in pre_runs[a]]
             for a in ARMS}
  pre_table = report.arm_table(ARMS, pre_runs, compute, PRETRAIN_METRICS)
  pre_records = [r for rs in pre_runs.values() for r in rs]
  ratio = float(np.mean(compute[GUIDED]) / size.pretrain_steps)

  sections, verdicts, bars = [], [], {}
  per_task: dict[str, dict[str, list]] = {}
  for _, task in downstream:
    runs = {a: [common.require_record(exp, finetune_label(a, task), s) for s in seeds]
            for a in ARMS}
    keys = sorted({k for a in ARMS for r in runs[a] for k in r.scores if "/" in k})
    metrics = [("average", "average", 2, True), *[(k, k, 2, True) for k in keys],
               ("dev_loss", "dev loss", 3, False)]
    table = report.arm_table(ARMS, runs, {a: [r.train_steps for r in runs[a]] for a in ARMS},
                             metrics)
    paired, lines = pretraining_comparison(runs, metrics, task)
    verdicts += lines
    mean = lambda arm, key: float(np.mean([r.scores[key] for r in runs[arm]]))  # noqa: E731
    met = {k: mean(PLAIN, k) >= v for k, v in THRESHOLDS.items() if k in keys}
    if met:
      verdicts.append(
          f"- Plain pretraining then finetuning on {task} reaches " + ", ".join(
              f"{k} {mean(PLAIN, k):.1f} (≥ {THRESHOLDS[k]:g}: {'met' if ok else 'NOT met'})"
              for k, ok in met.items())
          + ": the tasks are " + ("learnable at this size." if all(met.values()) else
                                  "not all learnable at this size."))
    sections += [f"Finetuned on `{task}` (validation splits; compute = finetuning steps):",
                 table, paired]
    bars.update({f"{a} -> {task}": [r.scores["average"] for r in runs[a]] for a in ARMS})
    per_task[task] = runs
  if len(per_task) > 1:
    glue = {a: [across_tasks([per_task[t][a][i] for t in per_task]) for i in range(len(seeds))]
            for a in ARMS}
    metrics = [("average", "GLUE-style average", 2, True)]
    table = report.arm_table(ARMS, glue, {a: [r.train_steps for r in glue[a]] for a in ARMS},
                             metrics)
    paired, lines = pretraining_comparison(glue, metrics,
                                           f"GLUE-style average over {', '.join(per_task)}")
    verdicts[:0] = lines
    sections += ["GLUE-style average over the tasks (the mean of each task's mean metric; "
                 "compute = finetuning steps of all tasks):", table, paired]

  report.plot_bars(os.path.join(out, "downstream.png"), list(bars), list(bars.values()),
                   "downstream average score (higher is better)",
                   "pretraining plain / guided / plain at equal compute, then identical finetuning")
  traj = pre_runs[GUIDED][0].extra.get("trajectory", {})
  if traj:
    report.plot_panels(os.path.join(out, "learned_values.png"),
                       {KIND_TITLES[k]: {KIND_TITLES[k]: (traj["steps"], traj[k])}
                        for k in guided_kinds(exp.size) if k in traj}, "pretraining step",
                       f"values learned by guided pretraining (seed {seeds[0]})")
  tasks = [t for _, t in downstream]
  return report.write_experiment_report(
      out, "Claim 3: hyper-parameters learned in pretraining help downstream", size.quick, [
      "\n".join(verdicts),
      f"Setup: tiny T5 ({model_layers(size)}+{model_layers(size)} layers) pretrained "
      f"{size.pretrain_steps} steps at batch {size.batch_size} on demo_span_corruption, plain "
      "(AdamW, base LR 0.002 after warmup, b1 0.9, label smoothing 0) or guided ("
      + ("LR multiplier only" if size.quick else "LR multiplier, b1 and label smoothing — from "
         "0.1, a sigmoid value cannot start at 0") + " — learned from "
      f"demo_span_corruption_guide, a guided step every {size.hyper_step_every} steps, meta LR "
      f"{size.meta_learning_rate(steps=size.pretrain_steps):g} = ln 10 / guided steps), or "
      "plain for the guided run's "
      f"compute ({ratio:.2f}× the plain run's: "
      f"{np.mean([r.train_steps for r in pre_runs[EQUAL]]):.0f} steps); then each checkpoint is "
      f"finetuned {size.finetune_steps} steps with the same configuration on {tasks}. Seeds "
      f"{seeds}; mean ± std. Compute in plain pretraining steps (steps × measured s/step ÷ the "
      f"plain run's, same seed; {common.timing_basis(pre_records)}).",
      pre_table,
      *([note] if (note := common.rescoring_note(pre_records)) else []),
      *sections,
      report.PAIRED_NOTE,
      "![downstream](downstream.png)" + ("\n\n![learned values](learned_values.png)"
                                         if traj else ""),
      ], "pretrain_downstream.py", exp.results_dir)


def main(argv: Sequence[str] | None = None) -> int:
  args = common.parse_args(__doc__.splitlines()[0], argv, _add_flags)
  downstream = parse_downstream(args.downstream)
  size = sizes_lib.get_size(args.quick)
  exp = common.setup(args, NAME, {"downstream": [f"{m}:{t}" for m, t in downstream],
                                  "guided": list(guided_kinds(size)),
                                  "downstream_difficulty": "clear",
                                  "downstream_version": demo_downstream.DOWNSTREAM_VERSION,
                                  "layers": model_layers(size)})
  return common.run_and_report(exp, run_all, write_report, downstream)


if __name__ == "__main__":
  sys.exit(common.main_with_one_line_errors(main))
