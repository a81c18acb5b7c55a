"""`python -m gbt_t5x.infer --gin_file=runs/infer.gin ...`: decode a task split with a checkpoint.

T5X's infer entry point surface: gin files `import __main__ as infer_script` and bind
`infer_script.infer.*`. Writes `OUTPUT_DIR/predictions.jsonl`, one {task, input, target,
prediction} line per example (detokenized strings; `target` is the task's reference text), decoded
with `decoder_params` (greedy by default; beam search or sampling on request).
No metrics are computed, so tasks without metric fns work too.
"""
from __future__ import annotations

import sys

from gbt_t5x import console

if __name__ == "__main__":
  console.configure(sys.argv)  # Before TensorFlow and JAX load (they log when imported).

from typing import Any, Callable, Mapping

import gin
import jax

from gbt_t5x import fileio
from gbt_t5x import gin_utils
from gbt_t5x.eval import PREDICTIONS_FILE
from gbt_t5x.train import data as data_lib
from gbt_t5x.train import infer_eval
from gbt_t5x.train import state_init
from gbt_t5x.train import train_lib
from gbt_t5x.train.partitioning import PjitPartitioner


def infer(*, model: Any, dataset_cfg: data_lib.DatasetConfig, checkpoint_path: str,
          output_dir: str, partitioner: PjitPartitioner | None = None,
          decoder_params: Mapping[str, Any] | None = None, num_examples: int | None = None,
          print_fn: Callable[[str], None] = print) -> str:
  """Decodes `dataset_cfg`'s split with the latest checkpoint in `checkpoint_path`.

  Args:
    model: the `EncoderDecoderModel` the checkpoint was trained with.
    dataset_cfg: task or mixture, split, lengths (decodes are at most `targets` tokens), global
      batch size.
    checkpoint_path: a model dir or its checkpoints/ folder (the latest checkpoint), or a step
      folder (`.../checkpoints/524288`); local or `gs://`.
    output_dir: where predictions.jsonl goes (local or `gs://`).
    partitioner: mesh partitioner (default: all devices data-parallel).
    decoder_params: decoding options overriding the model's default (greedy).
    num_examples: decode only the first N examples per task (None: all).

  Returns:
    The path of the predictions file.
  """
  partitioner = partitioner or PjitPartitioner()
  data_lib.validate_feature_lengths(dataset_cfg)
  train_lib.check_vocabularies(model, dataset_cfg)
  shapes = train_lib.input_shapes(dataset_cfg)
  initializer = state_init.TrainStateInitializer(model, shapes, partitioner)
  _, param_axes = initializer.abstract_params()
  evaluator = infer_eval.InferEvaluator(model, dataset_cfg, partitioner, param_axes,
                                        decoder_params=decoder_params, num_examples=num_examples,
                                        require_metrics=False)
  params, step = initializer.restore_for_inference(checkpoint_path)
  results = evaluator.evaluate(params, with_metrics=False)
  path = fileio.join(output_dir, PREDICTIONS_FILE)
  if jax.process_index() == 0:
    count = infer_eval.write_predictions(path, results)
    print_fn(f"decoded {count} examples of {dataset_cfg.mixture_or_task_name}/"
             f"{dataset_cfg.split} with checkpoint step {step} -> {path}")
  return path


_infer_using_gin = gin.configurable(infer)


def main(args) -> int:
  del args
  _infer_using_gin()
  return 0


if __name__ == "__main__":
  gin_utils.quiet_tensorflow()
  sys.exit(gin_utils.run(main, "Decode a SeqIO task or mixture split with a checkpoint.",
                         entry='infer'))
