"""Scores of a trained model on a SeqIO task split, from in-memory params (no checkpoint reload).

What it is for: scoring runs right after training in the same process (the BO search CLI
`gbt_t5x.search`, the experiments under scripts/experiments/), through the same evaluation layer
as the trainer and `gbt_t5x.eval`:
* `teacher_forced`: per-token loss / accuracy, `trainer.teacher_forced_eval` (the one
  teacher-forced loop) over the split;
* `decode_scores`, `task_metrics`: greedy decodes scored with each task's SeqIO metric fns, by
  `train.infer_eval.InferEvaluator` (the one decode-and-score path); the demo translation task's
  fns give corpus BLEU, exact match, word F1 and token accuracy (`gbt_t5x.data.metrics`);
* `score_run`: the dev / guide / test scores of one translation run (`ScoreSpec`).
Every split is read unshuffled with seed `EVAL_SEED`, so random preprocessing (span corruption's
noise masks) is the same for every run scored and scores are deterministic.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Sequence

import jax
import numpy as np

from gbt_t5x.train import data as data_lib
from gbt_t5x.train import infer_eval
from gbt_t5x.train import trainer as trainer_lib
from gbt_t5x.train.partitioning import PjitPartitioner

# The data seed of every scored split (random preprocessing, e.g. span corruption's noise masks).
EVAL_SEED = 42


def _config(task: str, split: str, lengths: Mapping[str, int], batch_size: int,
            module: str | None) -> data_lib.DatasetConfig:
  """The unshuffled single-pass `DatasetConfig` of `task`/`split` (seed `EVAL_SEED`)."""
  return data_lib.DatasetConfig(task, dict(lengths), split, batch_size, shuffle=False,
                                seed=EVAL_SEED, num_epochs=1, module=module)


def teacher_forced(model: Any, params: Any, task: str, split: str, lengths: Mapping[str, int],
                   batch_size: int, max_batches: int | None = None,
                   module: str | None = None) -> dict[str, float]:
  """Teacher-forced `loss` (per target token, CE + z-loss) and `accuracy` on `task`/`split`.

  Args:
    model: the `EncoderDecoderModel`.
    params: its params.
    task: SeqIO task name (e.g. 'demo_nmt_guide').
    split: split name.
    lengths: task feature lengths (tokens).
    batch_size: examples per batch (the last batch is zero-padded to it).
    max_batches: batches to score (None: the whole split).
    module: a module registering `task`.

  Raises:
    ValueError: the split yields no examples.
  """
  cfg = _config(task, split, lengths, batch_size, module)
  step = jax.jit(lambda p, b: trainer_lib.eval_step(model, p, b))
  batches = (data_lib.pad_batch(b, batch_size) for b in data_lib.single_pass_batches(cfg))
  metrics = trainer_lib.teacher_forced_eval(step, params, batches, max_batches)
  if not metrics:
    raise ValueError(f"task {task} split {split!r} yields no examples")
  return metrics


def _evaluator(model: Any, params: Any, mixture_or_task: str, split: str,
               lengths: Mapping[str, int], batch_size: int, num_examples: int | None,
               module: str | None, targets_from_tokens: bool = False,
               metric_fns: Sequence[Callable[..., Mapping[str, Any]]] | None = None
               ) -> infer_eval.InferEvaluator:
  """A greedy `InferEvaluator` on the default mesh, for params placed as training left them."""
  cfg = _config(mixture_or_task, split, lengths, batch_size, module)
  param_shardings = jax.tree.map(lambda x: x.sharding, params)
  return infer_eval.InferEvaluator(model, cfg, PjitPartitioner(), param_shardings,
                                   num_examples=num_examples, require_metrics=True,
                                   targets_from_tokens=targets_from_tokens,
                                   metric_fns=metric_fns)


def decode_scores(model: Any, params: Any, task: str, split: str, lengths: Mapping[str, int],
                  batch_size: int, num_examples: int, module: str | None = None,
                  metric_fns: Sequence[Callable[..., Mapping[str, Any]]] | None = None
                  ) -> dict[str, float]:
  """Greedy-decodes the first `num_examples` of `task`/`split` and scores them with the task's
  SeqIO metric fns (or `metric_fns`, e.g. the demo's for a task without any), against the
  detokenized target ids (cut at `lengths['targets']`).

  Returns:
    The task's metrics (for the demo translation task: {'bleu': corpus BLEU (0-100),
    'exact_match', 'token_accuracy', 'word_f1': fractions}) and 'num_examples'.
  """
  evaluator = _evaluator(model, params, task, split, lengths, batch_size, num_examples, module,
                         targets_from_tokens=True, metric_fns=metric_fns)
  result = evaluator.evaluate(params)[task]
  return {**result.metrics, "num_examples": float(len(result.rows))}


def task_metrics(model: Any, params: Any, mixture_or_task: str, split: str,
                 lengths: Mapping[str, int], batch_size: int, num_examples: int | None,
                 module: str | None = None) -> dict[str, float]:
  """Greedy-decodes the first `num_examples` of `split` of every task of `mixture_or_task` and
  runs each task's postprocessor and SeqIO metric fns (as the trainer's infer-eval does).

  Returns:
    {'<task>/<metric>': value} (e.g. 'demo_cola/matthews_corrcoef', on the metric's own scale),
    plus 'average': the mean over tasks of each task's mean metric (GLUE's averaged score).
  """
  evaluator = _evaluator(model, params, mixture_or_task, split, lengths, batch_size,
                         num_examples, module)
  out: dict[str, float] = {}
  per_task = []
  for task_name, result in evaluator.evaluate(params).items():
    for key, value in result.metrics.items():
      out[f"{task_name}/{key}"] = float(value)
    per_task.append(float(np.mean(list(result.metrics.values()))))
  out["average"] = float(np.mean(per_task))
  return out


@dataclasses.dataclass(frozen=True)
class ScoreSpec:
  """What to score after a run: the dev / guide tasks (teacher-forced) and the decoded split,
  scored with `decode_metric_fns` (None: the decode task's own; they must give 'bleu',
  'exact_match', 'token_accuracy' and 'word_f1', as the demo task's `METRIC_FNS` do)."""
  dev_task: str = "demo_nmt"
  dev_split: str = "validation"
  guide_task: str | None = "demo_nmt_guide"
  guide_split: str = "validation"
  decode_task: str = "demo_nmt"
  decode_split: str = "test"
  module: str | None = "gbt_t5x_tasks.demo"
  decode_metric_fns: tuple[Callable[..., Mapping[str, Any]], ...] | None = None


def score_run(model: Any, params: Any, spec: ScoreSpec, lengths: Mapping[str, int],
              batch_size: int, eval_batches: int, decode_examples: int) -> dict[str, float]:
  """{'dev_loss', 'dev_accuracy', 'guide_loss', 'bleu', 'exact_match', 'token_accuracy',
  'word_f1'}."""
  dev = teacher_forced(model, params, spec.dev_task, spec.dev_split, lengths, batch_size,
                       eval_batches, spec.module)
  guide = (teacher_forced(model, params, spec.guide_task, spec.guide_split, lengths, batch_size,
                          eval_batches, spec.module) if spec.guide_task else {"loss": float("nan")})
  decoded = decode_scores(model, params, spec.decode_task, spec.decode_split, lengths,
                          batch_size, decode_examples, spec.module, spec.decode_metric_fns)
  return {"dev_loss": dev["loss"], "dev_accuracy": dev["accuracy"], "guide_loss": guide["loss"],
          "bleu": decoded["bleu"], "exact_match": decoded["exact_match"],
          "token_accuracy": decoded["token_accuracy"], "word_f1": decoded["word_f1"]}
