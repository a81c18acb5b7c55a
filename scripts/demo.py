"""The built-in demo, end to end: generate the demo world, train tiny T5 on it (guided by default),
then greedy-translate held-out dev sentences and report token accuracy, exact match and BLEU.

    python scripts/demo.py [--model_dir runs/demo] [--plain] [--gin.TRAIN_STEPS=300 ...]

Writes into the model dir: checkpoints/, TensorBoard events (train/, train_eval/), metrics.jsonl,
loss_curves.png, config.gin, and for guided runs guided_trajectory.jsonl and hparams.png; plus
demo_predictions.jsonl and demo_report.json from the decoding step.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import gin

from gbt_t5x import gin_utils
from gbt_t5x.train.train_lib import train, write_config_gin  # noqa: F401 (gin binds __main__.train)

train_using_gin = gin.configurable(train)


@gin.configurable
def demo_model(model=gin.REQUIRED):
  """Returns the gin-configured model (bound to %MODEL below) for decoding after training."""
  return model


def decode_dev(model, params, num_examples: int, batch_size: int, lengths: dict) -> dict:
  """Greedy-decodes `num_examples` dev sentences; returns metrics and example rows."""
  import jax
  import numpy as np
  import sacrebleu

  from gbt_t5x.train import data as data_lib
  cfg = data_lib.DatasetConfig("demo_nmt", lengths, "validation", batch_size, shuffle=False,
                               num_epochs=1, module="gbt_t5x_tasks.demo")
  vocab = model.output_vocabulary
  predict = jax.jit(model.predict_batch)
  rows, correct, total = [], 0, 0
  for batch in data_lib.get_dataset(cfg).as_numpy_iterator():
    if len(rows) >= num_examples:
      break
    batch = data_lib.pad_batch(batch, batch_size)
    n_real = int((batch["decoder_loss_weights"].sum(axis=1) > 0).sum())
    predictions = np.asarray(predict(params, {k: jax.numpy.asarray(v) for k, v in batch.items()}))
    for i in range(n_real):
      target = batch["decoder_target_tokens"][i]
      pred = predictions[i]
      n = int((target > 0).sum())
      correct += int((pred[:n] == target[:n]).sum())
      total += n
      rows.append({"input": vocab.decode(batch["encoder_input_tokens"][i].tolist()),
                   "target": vocab.decode(target.tolist()),
                   "prediction": vocab.decode(pred.tolist())})
  rows = rows[:num_examples]
  bleu = sacrebleu.corpus_bleu([r["prediction"] for r in rows], [[r["target"] for r in rows]])
  exact = float(np.mean([r["prediction"] == r["target"] for r in rows]))
  return {"token_accuracy": correct / max(total, 1), "exact_match": exact,
          "bleu": bleu.score, "num_examples": len(rows), "examples": rows}


def main(argv: list[str]) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--model_dir", default="runs/demo")
  parser.add_argument("--plain", action="store_true", help="plain training (no guided steps)")
  parser.add_argument("--decode_examples", type=int, default=200)
  parser.add_argument("--gin_bindings", action="append", default=[])
  args = parser.parse_args(gin_utils.rewrite_gin_args(argv))
  gin_file = "experiments/demo_nmt.gin" if args.plain else "experiments/demo_nmt_guided.gin"
  bindings = [f"MODEL_DIR = '{args.model_dir}'", "demo_model.model = %MODEL"] + args.gin_bindings
  try:
    gin_utils.parse_gin([gin_file], bindings)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  start = time.time()
  _, state = train_using_gin(summarize_config_fn=write_config_gin)
  train_seconds = time.time() - start
  lengths = gin.query_parameter("%TASK_FEATURE_LENGTHS")
  report = decode_dev(demo_model(), state.params, args.decode_examples, batch_size=32,
                      lengths=dict(lengths))
  report["train_seconds"] = train_seconds
  examples = report.pop("examples")
  with open(os.path.join(args.model_dir, "demo_predictions.jsonl"), "w") as f:
    for row in examples:
      f.write(json.dumps(row) + "\n")
  with open(os.path.join(args.model_dir, "demo_report.json"), "w") as f:
    json.dump(report, f, indent=2)
  print(f"\ndev greedy decoding on {report['num_examples']} sentences: token accuracy "
        f"{report['token_accuracy']:.3f}, exact match {report['exact_match']:.3f}, "
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
