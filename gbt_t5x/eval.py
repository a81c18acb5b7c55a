"""`python -m gbt_t5x.eval --gin_file=runs/eval.gin ...`: score a checkpoint on a task or mixture.

T5X's eval entry point surface: gin files `import __main__ as eval_script` and bind
`eval_script.evaluate.*`. Two kinds of scores go into `OUTPUT_DIR/metrics.json`:
  - teacher-forced per-token loss and accuracy (as the trainer's periodic `train_eval`);
  - decoding metrics: the split is decoded (`decoder_params`: greedy by default, or beam search
    / sampling) and scored with each task's SeqIO metric fns (`train.infer_eval`), the decodes
    going to `OUTPUT_DIR/predictions.jsonl` (one {task, input, target, prediction} per line).
Everything is validated (tasks, lengths, vocabulary, metric fns, decoder options, checkpoint)
before anything is written.
"""
from __future__ import annotations

import sys

from gbt_t5x import console

if __name__ == "__main__":
  console.configure(sys.argv)  # Before TensorFlow and JAX load (they log when imported).

import dataclasses
import json
from typing import Any, Callable, Mapping

import gin
import jax

from gbt_t5x import fileio
from gbt_t5x import gin_utils
from gbt_t5x.train import data as data_lib
from gbt_t5x.train import infer_eval
from gbt_t5x.train import state_init
from gbt_t5x.train import train_lib
from gbt_t5x.train import trainer as trainer_lib
from gbt_t5x.train.partitioning import PjitPartitioner

METRICS_FILE = "metrics.json"
PREDICTIONS_FILE = "predictions.jsonl"


def teacher_forced_metrics(model: Any, params: Any, param_axes: Any,
                           dataset_cfg: data_lib.DatasetConfig, partitioner: PjitPartitioner,
                           eval_steps: int | None = None) -> dict[str, float]:
  """Per-token `loss` (CE + z-loss), `accuracy`, `num_tokens`, `num_examples` on one pass."""
  cfg = dataclasses.replace(dataset_cfg, num_epochs=1, shuffle=False, pack=False)
  step_fn = partitioner.partition(lambda p, b: trainer_lib.eval_step(model, p, b),
                                  in_shardings=(param_axes, partitioner.data_sharding),
                                  out_shardings=partitioner.replicated)
  metrics = trainer_lib.teacher_forced_eval(
      step_fn, params, data_lib.BatchIterator(cfg, partitioner.data_sharding), eval_steps)
  if not metrics:
    raise ValueError(f"task {cfg.mixture_or_task_name} split {cfg.split!r} yields no examples")
  return metrics


def evaluate(*, model: Any, dataset_cfg: data_lib.DatasetConfig, checkpoint_path: str,
             output_dir: str, partitioner: PjitPartitioner | None = None,
             eval_steps: int | None = None, decoder_params: Mapping[str, Any] | None = None,
             num_examples: int | None = None, compute_decoding_metrics: bool = True,
             print_fn: Callable[[str], None] = print) -> dict[str, Any]:
  """Scores the latest checkpoint in `checkpoint_path` on `dataset_cfg`.

  Args:
    model: the `EncoderDecoderModel` the checkpoint was trained with.
    dataset_cfg: task or mixture, split, lengths, global batch size (one pass, no shuffling).
    checkpoint_path: a model dir or its checkpoints/ folder (the latest checkpoint), or a step
      folder (`.../checkpoints/524288`); local or `gs://`.
    output_dir: where metrics.json and predictions.jsonl go (local or `gs://`).
    partitioner: mesh partitioner (default: all devices data-parallel).
    eval_steps: teacher-forced batches to score (None: the whole split).
    decoder_params: decoding options overriding the model's (e.g. {'method': 'beam',
      'beam_size': 4, 'alpha': 0.6}); None: the model's default (greedy).
    num_examples: decode only the first N examples per task (None: all).
    compute_decoding_metrics: decode and run the tasks' metric fns (needs tasks with metrics).

  Returns:
    The metrics.json content: `task`, `split`, `checkpoint`, `step`, the teacher-forced `loss`,
    `accuracy`, `num_tokens`, `num_examples`, and `infer_eval` {task: {metric: value}}.
  """
  partitioner = partitioner or PjitPartitioner()
  data_lib.validate_feature_lengths(dataset_cfg)
  train_lib.check_vocabularies(model, dataset_cfg)
  shapes = train_lib.input_shapes(dataset_cfg)
  initializer = state_init.TrainStateInitializer(model, shapes, partitioner)
  _, param_axes = initializer.abstract_params()
  evaluator = None
  if compute_decoding_metrics:
    evaluator = infer_eval.InferEvaluator(model, dataset_cfg, partitioner, param_axes,
                                          decoder_params=decoder_params,
                                          num_examples=num_examples, require_metrics=True)
  params, step = initializer.restore_for_inference(checkpoint_path)
  metrics = teacher_forced_metrics(model, params, param_axes, dataset_cfg, partitioner,
                                   eval_steps)
  name, split = dataset_cfg.mixture_or_task_name, dataset_cfg.split
  print_fn(f"{name}/{split}: loss {metrics['loss']:.4f} accuracy {metrics['accuracy']:.4f} "
           f"over {int(metrics['num_tokens'])} tokens")
  report: dict[str, Any] = {"task": name, "split": split,
                            "checkpoint": fileio.absolute(checkpoint_path), "step": step,
                            **metrics}
  results = {}
  if evaluator is not None:
    results = evaluator.evaluate(params)
    report["infer_eval"] = infer_eval.metrics_of(results)
    report["decoder_params"] = {**model.default_decoder_params, **(decoder_params or {})}
    print_fn(f"{name}/{split} decoding ({sum(len(r.rows) for r in results.values())} examples): "
             f"{infer_eval.format_metrics(results)}")
  if jax.process_index() == 0:
    fileio.makedirs(output_dir)
    if results:
      infer_eval.write_predictions(fileio.join(output_dir, PREDICTIONS_FILE), results)
    fileio.write_text(fileio.join(output_dir, METRICS_FILE), json.dumps(report, indent=2))
  return report


_evaluate_using_gin = gin.configurable(evaluate)


def main(args) -> int:
  del args
  _evaluate_using_gin()
  return 0


if __name__ == "__main__":
  gin_utils.quiet_tensorflow()
  sys.exit(gin_utils.run(main, "Score a checkpoint on a SeqIO task or mixture split.",
                         entry='eval'))
