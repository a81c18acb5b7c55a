"""The built-in demo, end to end: generate the demo world, train tiny T5 on it (guided by default),
then greedy-translate held-out dev sentences (gbt_t5x.train.infer_eval) and report BLEU, token
accuracy, word F1 and exact match (the demo task's SeqIO metric fns).

    python scripts/demo.py [--model_dir runs/demo] [--plain] [--gin.TRAIN_STEPS=300 ...]

Writes into the model dir: checkpoints/, TensorBoard events (train/, train_eval/), metrics.jsonl,
loss_curves.png, config.gin, and for guided runs guided_trajectory.jsonl and hparams.png; plus
demo_predictions.jsonl and demo_report.json from the decoding step.
"""
from __future__ import annotations

import sys

from gbt_t5x import console

if __name__ == "__main__":
  console.configure(sys.argv)  # Before TensorFlow and JAX load (they log when imported).

import argparse
import json
import time
from typing import Any, Mapping

import gin

from gbt_t5x import errors, fileio
from gbt_t5x import gin_utils
from gbt_t5x.train.train_lib import train  # noqa: F401 (gin binds __main__.train)

train_using_gin = gin.configurable(train)


@gin.configurable
def demo_model(model=gin.REQUIRED):
  """Returns the gin-configured model (bound to %MODEL below) for decoding after training."""
  return model


def decode_dev(model: Any, params: Any, num_examples: int, batch_size: int,
               lengths: Mapping[str, int], decoder_params: Mapping[str, Any] | None = None
               ) -> dict[str, Any]:
  """Decodes the first `num_examples` dev sentences with `gbt_t5x.train.infer_eval` (greedy by
  default) and scores them with the demo task's SeqIO metric fns (`gbt_t5x_tasks.demo`): BLEU,
  exact match, position-wise token accuracy and SQuAD-style word F1, against the dev references.

  Returns:
    {'bleu' (0-100), 'exact_match', 'token_accuracy', 'word_f1' (fractions), 'num_examples',
    'examples': [{'task', 'input', 'target', 'prediction'}]}.
  """
  import jax

  from gbt_t5x.train import data as data_lib
  from gbt_t5x.train import infer_eval
  from gbt_t5x.train.partitioning import PjitPartitioner
  cfg = data_lib.DatasetConfig("demo_nmt", dict(lengths), "validation", batch_size,
                               shuffle=False, num_epochs=1, module="gbt_t5x_tasks.demo")
  partitioner = PjitPartitioner()  # the default training mesh: params keep their shardings
  param_axes = jax.tree.map(lambda x: x.sharding, params)
  evaluator = infer_eval.InferEvaluator(model, cfg, partitioner, param_axes,
                                        decoder_params=decoder_params, num_examples=num_examples)
  result = evaluator.evaluate(params)["demo_nmt"]
  rows = [{"task": "demo_nmt", **r} for r in result.rows]
  return {"token_accuracy": result.metrics["token_accuracy"],
          "exact_match": result.metrics["exact_match"], "word_f1": result.metrics["word_f1"],
          "bleu": result.metrics["bleu"], "num_examples": len(rows), "examples": rows}


def main(argv: list[str]) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--model_dir", default="runs/demo")
  parser.add_argument("--plain", action="store_true", help="plain training (no guided steps)")
  parser.add_argument("--decode_examples", type=int, default=200)
  parser.add_argument("--gin_bindings", action="append", default=[])
  parser.add_argument("--verbose", action="store_true",
                  help="also show the libraries' log lines (or GBT_T5X_VERBOSE=1)")
  args = parser.parse_args(gin_utils.rewrite_gin_args(argv))
  gin_file = "experiments/demo_nmt.gin" if args.plain else "experiments/demo_nmt_guided.gin"
  bindings = [f"MODEL_DIR = '{args.model_dir}'", "demo_model.model = %MODEL"] + args.gin_bindings
  return errors.exit_code_of(lambda: train_and_report(args, gin_file, bindings),
                             user_errors=(ValueError, errors.TrainingStopped))


def train_and_report(args: argparse.Namespace, gin_file: str, bindings: list[str]) -> int:
  """Trains the demo from `gin_file` + `bindings`, decodes dev, writes and prints the report."""
  gin_utils.parse_gin([gin_file], bindings)
  start = time.time()
  _, state = train_using_gin(summarize_config_fn=gin_utils.write_config_gin)
  train_seconds = time.time() - start
  lengths = gin.query_parameter("%TASK_FEATURE_LENGTHS")
  report = decode_dev(demo_model(), state.params, args.decode_examples, batch_size=32,
                      lengths=dict(lengths))
  report["train_seconds"] = train_seconds
  examples = report.pop("examples")
  fileio.write_text(fileio.join(args.model_dir, "demo_predictions.jsonl"),
                    "".join(json.dumps(row) + "\n" for row in examples))
  fileio.write_text(fileio.join(args.model_dir, "demo_report.json"), json.dumps(report, indent=2))
  print(f"\ndev greedy decoding on {report['num_examples']} sentences: token accuracy "
        f"{report['token_accuracy']:.3f}, word F1 {report['word_f1']:.3f}, exact match "
        f"{report['exact_match']:.3f}, "
        f"BLEU {report['bleu']:.1f} (training took {train_seconds / 60:.1f} min)")
  for row in examples[:5]:
    print(f"  source:     {row['input']}\n  reference:  {row['target']}\n"
          f"  prediction: {row['prediction']}\n")
  print(f"outputs in {args.model_dir}: loss_curves.png, hparams.png (guided), metrics.jsonl, "
        "TensorBoard events, checkpoints/")
  return 0


if __name__ == "__main__":
  gin_utils.quiet_tensorflow()
  sys.exit(main(sys.argv[1:]))
