"""Scores of a trained model on a SeqIO task split, from in-memory params.

* `teacher_forced`: per-token loss / accuracy, the same numbers as `gbt_t5x.eval.evaluate` (the
  trainer's `eval_step` summed over batches, then `finalize_metrics`), without a checkpoint reload.
* `greedy_decode_scores`: greedy decoding (`model.predict_batch`) of the first examples of a split:
  corpus BLEU (sacrebleu), exact match and token accuracy against the targets.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax
import numpy as np

from gbt_t5x.experiments import sizes as sizes_lib
from gbt_t5x.train import data as data_lib
from gbt_t5x.train import trainer as trainer_lib


def _config(task: str, split: str, lengths: Mapping[str, int], batch_size: int,
            module: str | None) -> data_lib.DatasetConfig:
  # seed: random preprocessing (span corruption's noise masks) is the same for every run scored,
  # so scores are deterministic and every arm is scored on the same examples.
  return data_lib.DatasetConfig(task, dict(lengths), split, batch_size, shuffle=False,
                                seed=sizes_lib.EVAL_SEED, num_epochs=1, module=module)


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
    batch_size: examples per batch.
    max_batches: batches to score (None: the whole split).
    module: a module registering `task`.

  Raises:
    ValueError: the split yields no examples.
  """
  cfg = _config(task, split, lengths, batch_size, module)
  step = jax.jit(lambda p, b: trainer_lib.eval_step(model, p, b))
  sums: dict[str, float] = {}
  for i, batch in enumerate(data_lib.single_pass_batches(cfg)):
    if max_batches is not None and i >= max_batches:
      break
    batch = data_lib.pad_batch(batch, batch_size)
    for key, value in jax.device_get(step(params, batch)).items():
      sums[key] = sums.get(key, 0.0) + float(value)
  if not sums:
    raise ValueError(f"task {task} split {split!r} yields no examples")
  return trainer_lib.finalize_metrics(sums, 1)


def greedy_decode_scores(model: Any, params: Any, task: str, split: str,
                         lengths: Mapping[str, int], batch_size: int, num_examples: int,
                         module: str | None = None) -> dict[str, float]:
  """Greedy-decodes the first `num_examples` of `task`/`split`.

  Returns:
    {'bleu': corpus BLEU (0-100), 'exact_match': fraction, 'token_accuracy': fraction of target
    tokens predicted at their position, 'word_f1': SQuAD-style bag-of-words F1 (fraction),
    'num_examples'}.
  """
  import sacrebleu
  cfg = _config(task, split, lengths, batch_size, module)
  vocab = model.output_vocabulary
  predict = jax.jit(lambda p, b: model.predict_batch(p, b))
  predictions, references = [], []
  correct = total = 0
  for batch in data_lib.single_pass_batches(cfg):
    if len(references) >= num_examples:
      break
    batch = data_lib.pad_batch(batch, batch_size)
    real = int((batch["decoder_loss_weights"].sum(axis=1) > 0).sum())
    decoded = np.asarray(predict(params, {k: v for k, v in batch.items()}))
    for i in range(real):
      target = batch["decoder_target_tokens"][i]
      n = int((target > 0).sum())
      correct += int((decoded[i][:n] == target[:n]).sum())
      total += n
      predictions.append(vocab.decode(decoded[i].tolist()))
      references.append(vocab.decode(target.tolist()))
  predictions, references = predictions[:num_examples], references[:num_examples]
  if not references:
    raise ValueError(f"task {task} split {split!r} yields no examples")
  from gbt_t5x.data import metrics
  bleu = sacrebleu.corpus_bleu(predictions, [references]).score
  exact = float(np.mean([p == r for p, r in zip(predictions, references)]))
  word_f1 = metrics.squad_em_f1([[r] for r in references], predictions)["f1"] / 100.0
  return {"bleu": float(bleu), "exact_match": exact, "token_accuracy": correct / max(total, 1),
          "word_f1": float(word_f1), "num_examples": float(len(references))}


@dataclasses.dataclass(frozen=True)
class ScoreSpec:
  """What to score after a run: the dev / guide tasks (teacher-forced) and the decoded split."""
  dev_task: str = "demo_nmt"
  dev_split: str = "validation"
  guide_task: str | None = "demo_nmt_guide"
  guide_split: str = "validation"
  decode_task: str = "demo_nmt"
  decode_split: str = "test"
  module: str | None = "gbt_t5x_tasks.demo"


def score_run(model: Any, params: Any, spec: ScoreSpec, lengths: Mapping[str, int],
              batch_size: int, eval_batches: int, decode_examples: int) -> dict[str, float]:
  """{'dev_loss', 'dev_accuracy', 'guide_loss', 'bleu', 'exact_match', 'token_accuracy',
  'word_f1'}."""
  dev = teacher_forced(model, params, spec.dev_task, spec.dev_split, lengths, batch_size,
                       eval_batches, spec.module)
  guide = (teacher_forced(model, params, spec.guide_task, spec.guide_split, lengths, batch_size,
                          eval_batches, spec.module) if spec.guide_task else {"loss": float("nan")})
  decoded = greedy_decode_scores(model, params, spec.decode_task, spec.decode_split, lengths,
                                 batch_size, decode_examples, spec.module)
  return {"dev_loss": dev["loss"], "dev_accuracy": dev["accuracy"], "guide_loss": guide["loss"],
          "bleu": decoded["bleu"], "exact_match": decoded["exact_match"],
          "token_accuracy": decoded["token_accuracy"], "word_f1": decoded["word_f1"]}


def task_metrics(model: Any, params: Any, mixture_or_task: str, split: str,
                 lengths: Mapping[str, int], batch_size: int, num_examples: int | None,
                 module: str | None = None) -> dict[str, float]:
  """Greedy-decodes the first `num_examples` of `split` of every task of `mixture_or_task` and
  runs each task's postprocessor and SeqIO metric fns (as the trainer's infer-eval does).

  Returns:
    {'<task>/<metric>': value} (e.g. 'demo_cola/matthews_corrcoef', on the metric's own scale),
    plus 'average': the mean over tasks of each task's mean metric (GLUE's averaged score).
  """
  from gbt_t5x.train import infer_eval
  from gbt_t5x.train.partitioning import PjitPartitioner
  cfg = _config(mixture_or_task, split, lengths, batch_size, module)
  param_shardings = jax.tree.map(lambda x: x.sharding, params)
  evaluator = infer_eval.InferEvaluator(model, cfg, PjitPartitioner(), param_shardings,
                                        num_examples=num_examples, require_metrics=True)
  out: dict[str, float] = {}
  per_task = []
  for task_name, result in evaluator.evaluate(params).items():
    for key, value in result.metrics.items():
      out[f"{task_name}/{key}"] = float(value)
    per_task.append(float(np.mean(list(result.metrics.values()))))
  out["average"] = float(np.mean(per_task))
  return out
