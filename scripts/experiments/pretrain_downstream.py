"""Claim 3: hyper-parameters learned during pretraining help downstream. Tiny T5 is pretrained
with span corruption on the demo world (`demo_span_corruption`) plainly and guided (LR multiplier
and Adam b1 learned from `demo_span_corruption_guide`), then both checkpoints are finetuned
identically (finetune.gin's restore, constant LR 0.001) on the downstream task or mixture and
scored. The default downstream is the demo's GLUE: the mixture `demo_glue_proportional`
(demo_cola, demo_mrpc, demo_sst2), finetuned multi-task as T5 finetunes on GLUE.

    python scripts/experiments/pretrain_downstream.py [--results_dir results] [--quick]
        [--downstream gbt_t5x_tasks.demo_glue:demo_glue_proportional[,MODULE:TASK...]]

Writes RESULTS_DIR/pretrain_downstream/: report.md, downstream.png, experiment.json, records/ (one
JSON per finished run; a rerun skips them and resumes an interrupted run) and runs/.
Downstream scores are on the validation split of each task: teacher-forced loss of the
mixture, and each task's own SeqIO metrics on greedy decodes (Matthews corr. for demo_cola, F1 and
accuracy for demo_mrpc, accuracy for demo_sst2; BLEU for translation) and their GLUE-style
average (the mean over tasks of each task's mean metric).
"""
from __future__ import annotations

import os
import sys
from typing import Sequence

import numpy as np

from gbt_t5x.experiments import common, report, sizes as sizes_lib

NAME = "pretrain_downstream"
DEFAULT_DOWNSTREAM = "gbt_t5x_tasks.demo_glue:demo_glue_proportional"


def _add_flags(parser) -> None:
  parser.add_argument("--downstream", default=DEFAULT_DOWNSTREAM,
                      help="comma-separated MODULE:TASK_OR_MIXTURE downstream tasks (finetuned one by one)")


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
  from gbt_t5x.experiments import scoring

  def score(model, params) -> dict[str, float]:
    dev = scoring.teacher_forced(model, params, task, "validation", lengths, size.batch_size,
                                 size.eval_batches, module)
    return {"dev_loss": dev["loss"], "dev_accuracy": dev["accuracy"],
            **scoring.task_metrics(model, params, task, "validation", lengths, size.batch_size,
                                   size.decode_examples, module)}

  return score


def main(argv: Sequence[str] | None = None) -> int:
  args = common.parse_args(__doc__.splitlines()[0], argv, _add_flags)
  downstream = parse_downstream(args.downstream)
  exp = common.setup(args, NAME, {"downstream": [f"{m}:{t}" for m, t in downstream]})
  size, out, seeds = exp.size, exp.out, exp.seeds
  from gbt_t5x.experiments import scoring
  from gbt_t5x_tasks import demo_pretrain
  pre_lengths = dict(demo_pretrain.DEFAULT_SEQUENCE_LENGTH)
  plain_gin = common.pretrain_gin(os.path.join(out, "gin", "pretrain.gin"))
  guided_gin = common.guided_gin(os.path.join(out, "gin", "pretrain_guided.gin"),
                                 os.path.abspath(plain_gin), ("learning_rate", "b1"),
                                 exp.meta_lr, size.hyper_step_every,
                                 guide_task="demo_span_corruption_guide")
  pre_spec = scoring.ScoreSpec(dev_task="demo_span_corruption", guide_task=None,
                               decode_task="demo_span_corruption", decode_split="validation",
                               module="gbt_t5x_tasks.demo_pretrain")

  def pre_score(model, params):
    return scoring.score_run(model, params, pre_spec, pre_lengths, size.batch_size,
                             size.eval_batches, size.decode_examples)

  records: dict[tuple[str, str], list[common.RunRecord]] = {}
  for seed in seeds:
    for kind, gin_file in (("plain", plain_gin), ("guided", guided_gin)):
      label = f"pretrain {kind}"
      pre = common.run_arm(exp, label, seed, [gin_file],
                           [f"TASK_FEATURE_LENGTHS = {pre_lengths!r}", "PACK = False"], pre_score,
                           steps=size.pretrain_steps)
      records.setdefault((kind, "pretraining"), []).append(pre)
      for module, task in downstream:
        ft_gin = common.finetune_gin(os.path.join(out, "gin", f"finetune_{task}.gin"), task,
                                     module)
        lengths = downstream_lengths(module, size)
        records.setdefault((kind, task), []).append(common.run_arm(
            exp, f"finetune {kind} -> {task}", seed, [ft_gin],
            [f"TASK_FEATURE_LENGTHS = {lengths!r}", "PACK = False",
             f"INITIAL_CHECKPOINT_PATH = {os.path.abspath(os.path.join(out, pre.model_dir))!r}"],
            downstream_scores(size, task, module, lengths), steps=size.finetune_steps))

  tasks = [t for _, t in downstream]
  pre_rows = []
  for kind in ("plain", "guided"):
    recs = records[(kind, "pretraining")]
    pre_rows.append([f"{kind} pretraining", report.fmt([r.scores["dev_loss"] for r in recs]),
                     report.fmt([r.scores["dev_accuracy"] for r in recs]),
                     report.fmt([r.wall_seconds for r in recs], 1)])
  pre_table = report.markdown_table(
      ["pretraining", "span-corruption dev loss", "dev token accuracy", "wall s"], pre_rows)
  tables, verdicts = [], []
  for t in tasks:
    keys = sorted({k for kind in ("plain", "guided") for r in records[(kind, t)]
                   for k in r.scores if "/" in k}) + ["average"]
    rows = []
    for kind in ("plain", "guided"):
      recs = records[(kind, t)]
      rows.append([f"{kind} pretraining", report.fmt([r.scores["dev_loss"] for r in recs])]
                  + [report.fmt([r.scores.get(k, float("nan")) for r in recs], 2) for k in keys])
    tables.append(f"Finetuned on `{t}` (validation splits):\n\n" + report.markdown_table(
        ["pretraining", "dev loss"] + keys, rows))
    mean = lambda kind, key: float(np.mean([r.scores[key] for r in records[(kind, t)]]))
    pa, ga = mean("plain", "average"), mean("guided", "average")
    pl, gl = mean("plain", "dev_loss"), mean("guided", "dev_loss")
    verdicts.append(f"**Claim 3 on {t}: {'REPRODUCED' if ga > pa else 'NOT reproduced'}** — "
                    f"after guided pretraining the downstream average score is {ga:.2f} (dev loss "
                    f"{gl:.3f}) vs {pa:.2f} ({pl:.3f}) after plain pretraining (a higher average "
                    "score required).")
  report.plot_bars(os.path.join(out, "downstream.png"),
                   [f"{k} -> {t}" for t in tasks for k in ("plain", "guided")],
                   [[r.scores["average"] for r in records[(k, t)]] for t in tasks
                    for k in ("plain", "guided")], "downstream average score (higher is better)",
                   "pretraining plain vs guided, then identical finetuning")
  report.write_experiment_report(
      out, "Claim 3: hyper-parameters learned in pretraining help downstream", size.quick, [
      *verdicts,
      f"Tiny T5 ({size.num_layers}+{size.num_layers} layers) pretrained {size.pretrain_steps} steps "
      f"at batch {size.batch_size} on demo_span_corruption (lengths {pre_lengths}), plain "
      "(base LR 0.002, b1 0.9) or guided (LR multiplier and b1 learned from "
      f"demo_span_corruption_guide, meta LR {exp.meta_lr:g}); then each is finetuned "
      f"{size.finetune_steps} steps with the same configuration on {tasks}. Seeds {list(seeds)}; "
      "mean ± std.",
      pre_table,
      *tables,
      "![downstream](downstream.png)",
      ], "pretrain_downstream.py", exp.results_dir)
  return 0


if __name__ == "__main__":
  sys.exit(common.main_with_one_line_errors(main))
