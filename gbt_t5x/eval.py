"""`python -m gbt_t5x.eval --gin_file=runs/eval.gin ...`: score a checkpoint on a task split.

T5X's eval entry point surface: gin files `import __main__ as eval_script` and bind
`eval_script.evaluate.*`. This version reports the teacher-forced metrics (per-token loss and
accuracy, as the trainer's periodic eval) and writes them to `OUTPUT_DIR/metrics.json`;
decoding-based metrics (BLEU, GLUE scores) arrive with the decoding issue.
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
from typing import Any

import gin
import jax

from gbt_t5x import gin_utils
from gbt_t5x.train import data as data_lib
from gbt_t5x.train import train_lib
from gbt_t5x.train import trainer as trainer_lib
from gbt_t5x.train.partitioning import PjitPartitioner


def evaluate(*, model: Any, dataset_cfg: data_lib.DatasetConfig, checkpoint_path: str,
             output_dir: str, partitioner: PjitPartitioner | None = None,
             eval_steps: int | None = None, print_fn=print) -> dict[str, float]:
  """Teacher-forced loss/accuracy of the checkpoint in `checkpoint_path` on `dataset_cfg`.

  Args:
    model: the `EncoderDecoderModel` the checkpoint was trained with.
    dataset_cfg: task/split to score (one pass, no shuffling).
    checkpoint_path: a model dir (its latest checkpoint) or its checkpoints/ dir.
    output_dir: where metrics.json goes.
    partitioner: mesh partitioner (default: all devices data-parallel).
    eval_steps: batches to score (None: the whole split).

  Returns:
    {'loss': per-token CE + z-loss, 'accuracy': per-token, 'num_tokens', 'num_examples'}.
  """
  partitioner = partitioner or PjitPartitioner()
  data_lib.validate_feature_lengths(dataset_cfg)
  train_lib.check_vocabularies(model, dataset_cfg)
  shapes = train_lib.input_shapes(dataset_cfg)
  state, axes = train_lib.initial_train_state(model, shapes, partitioner, jax.random.PRNGKey(0))
  params = train_lib.load_params(checkpoint_path, state.params, axes.params)
  cfg = dataclasses.replace(dataset_cfg, num_epochs=1, shuffle=False)
  step_fn = partitioner.partition(lambda p, b: trainer_lib.eval_step(model, p, b),
                                  in_shardings=(axes.params, partitioner.data_sharding),
                                  out_shardings=partitioner.replicated)
  sums: dict[str, float] = {}
  for i, batch in enumerate(data_lib.BatchIterator(cfg, partitioner.data_sharding)):
    if eval_steps is not None and i >= eval_steps:
      break
    for key, value in jax.device_get(step_fn(params, batch)).items():
      sums[key] = sums.get(key, 0.0) + float(value)
  if not sums:
    raise ValueError(f"task {cfg.mixture_or_task_name} split {cfg.split!r} yields no examples")
  metrics = trainer_lib.finalize_metrics(sums, 1)
  os.makedirs(output_dir, exist_ok=True)
  with open(os.path.join(output_dir, "metrics.json"), "w") as f:
    json.dump({"task": cfg.mixture_or_task_name, "split": cfg.split,
               "checkpoint": os.path.abspath(checkpoint_path), **metrics}, f, indent=2)
  print_fn(f"{cfg.mixture_or_task_name}/{cfg.split}: loss {metrics['loss']:.4f} "
           f"accuracy {metrics['accuracy']:.4f} over {int(metrics['num_tokens'])} tokens")
  return metrics


_evaluate_using_gin = gin.configurable(evaluate)


def main(args) -> int:
  del args
  _evaluate_using_gin()
  return 0


if __name__ == "__main__":
  gin_utils.quiet_tensorflow()
  sys.exit(gin_utils.run(main, "Score a checkpoint on a SeqIO task split."))
