"""Run sizes of the experiments: `QUICK` (CI, numbers not meaningful) and `DEFAULT` (evidence).

The default size is the regime where the models learn within the CPU budget: the demo world with
English sentences of at most 12 words (the demo's own world allows 25), packed 32/24-token rows,
tiny T5 with 1+1 layers, 3000 steps of 32 rows with the demo's schedule (AdamW 2e-3, 100 warmup
steps, linear decay to 0). A plain run takes ~3.3 minutes on a 2-core CPU (~17 steps/s) and
reaches ~22 test BLEU (seed 0: 22.5 on 200 test sentences, dev loss 1.22). Measured before
choosing: 2+2 layers at 2000 steps reached 19.2 BLEU in about the same time (~11 steps/s); the
demo's own world (sentences up to 25 words, 64/40 rows, 2+2 layers) reached 16.0 after 1000 steps
in 3.5 minutes.
Every method starts from the demo's gin defaults (LR multiplier 1, b1 0.9, b2 0.98, label
smoothing 0, data weights 1), not from a contrived error.

Must not import jax or gin.
"""
from __future__ import annotations

import dataclasses
import json
import math
from typing import Any, Mapping

NMT_GIN = "experiments/demo_nmt.gin"
# Seed of the datasets the runs are scored on (`gbt_t5x.scoring.EVAL_SEED`, which this mirrors
# without importing jax): random preprocessing (span corruption's noise masks) is then the same in
# every scoring; 42 as the gin eval configs (runs/eval.gin).
EVAL_SEED = 42


@dataclasses.dataclass(frozen=True)
class Size:
  """How big one experiment is.

  Attributes:
    name: 'quick' or 'default'.
    world: `DemoWorldConfig` fields of the demo world (`GBT_T5X_DEMO_CONFIG`).
    num_layers: encoder and decoder layers of tiny T5 (each).
    train_steps: model steps of a plain translation run.
    batch_size: train (and guide) batch size, rows.
    lengths: task feature lengths of the translation task (tokens).
    pack: pack several sentence pairs into each row.
    eval_batches: batches of the teacher-forced dev / guide evaluations (None: the whole split).
    decode_examples: test sentences greedy-decoded for BLEU / word F1.
    seeds: random seeds (params init and data order) of the repeated runs.
    hyper_step_every: a guided step every this many model steps.
    bo_trials: Bayesian-optimisation trials per seed and search space.
    pretrain_steps: steps of each span-corruption pretraining run (pretrain_downstream).
    finetune_steps: steps of each downstream finetuning run (pretrain_downstream).
    downstream_world: `demo_downstream.DownstreamConfig` sizes of the demo GLUE data
      (`GBT_T5X_DEMO_DOWNSTREAM_CONFIG`; None: the demo's own sizes).
  """
  name: str
  world: Mapping[str, Any]
  num_layers: int
  train_steps: int
  batch_size: int
  lengths: Mapping[str, int]
  pack: bool
  eval_batches: int | None
  decode_examples: int
  seeds: tuple[int, ...]
  hyper_step_every: int
  bo_trials: int
  pretrain_steps: int
  finetune_steps: int
  downstream_world: Mapping[str, int] | None = None

  @property
  def quick(self) -> bool:
    return self.name == "quick"

  @property
  def guided_steps(self) -> int:
    """Guided (hyper-parameter) steps of one guided run."""
    return self.train_steps // self.hyper_step_every

  def meta_learning_rate(self, log_range: float = math.log(10.0),
                         steps: int | None = None) -> float:
    """A meta learning rate with which the guided steps can cover `log_range` (in raw, log
    space; default: a factor 10 either way): Adam moves a raw value by at most ~meta_lr per
    guided step, so meta_lr = log_range / guided steps. `steps`: the guided run's model steps
    (default `train_steps`; e.g. `pretrain_steps`), one guided step every `hyper_step_every`."""
    guided_steps = self.guided_steps if steps is None else steps // self.hyper_step_every
    return float(f"{log_range / max(1, guided_steps):.2g}")

  def as_json(self) -> dict[str, Any]:
    """The fields as JSON, without the optional ones (fields with a default, added after the
    first records were written) left at their default: records written before a field was added
    keep their key (`experiment.json`)."""
    fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
              if f.default is dataclasses.MISSING or getattr(self, f.name) != f.default}
    return json.loads(json.dumps(fields, default=dict))

  def world_json(self) -> str:
    return json.dumps(dict(self.world), sort_keys=True)

  def downstream_json(self) -> str:
    """`downstream_world` as `GBT_T5X_DEMO_DOWNSTREAM_CONFIG` text ('' for the demo's own)."""
    if self.downstream_world is None:
      return ""
    return json.dumps(dict(self.downstream_world), sort_keys=True)


_SHORT = {"max_target_words": 12}

QUICK = Size(
    name="quick",
    world={"num_train": 3000, "num_guide": 300, "num_dev": 200, "num_test": 200,
           "num_mono": 600, **_SHORT},
    num_layers=1, train_steps=16, batch_size=8, lengths={"inputs": 32, "targets": 24},
    pack=True, eval_batches=1, decode_examples=8, seeds=(0, 1), hyper_step_every=2,
    bo_trials=2, pretrain_steps=10, finetune_steps=10,
    # 10 finetuning steps of 8 rows read 80 train examples, scores 8 validation ones: generating
    # the demo's 4000-example tasks took longer than training on them.
    downstream_world={"num_train": 200, "num_validation": 32, "num_test": 32})

DEFAULT = Size(
    name="default",
    world={**_SHORT},
    num_layers=1, train_steps=3000, batch_size=32, lengths={"inputs": 32, "targets": 24},
    pack=True, eval_batches=None, decode_examples=200, seeds=(0, 1, 2), hyper_step_every=4,
    bo_trials=12, pretrain_steps=1000, finetune_steps=500)


def get_size(quick: bool) -> Size:
  return QUICK if quick else DEFAULT


def run_bindings(size: Size, seed: int, model_dir: str, steps: int | None = None) -> list[str]:
  """Gin bindings of every run of an experiment on top of its gin files: model depth, steps,
  batch, packing, seed, lengths; a checkpoint every quarter of the run (so an interrupted run
  resumes; --quick: every half, for CI time); no periodic evals (scores are computed after
  training, `scoring`). `steps` overrides `size.train_steps` (the demo's LR decays to 0 at the
  run's last step, whatever its length)."""
  steps = size.train_steps if steps is None else int(steps)
  return [
      f"MODEL_DIR = {model_dir!r}",
      f"TRAIN_STEPS = {steps}",
      f"BATCH_SIZE = {size.batch_size}",
      f"TASK_FEATURE_LENGTHS = {dict(size.lengths)!r}",
      f"PACK = {size.pack}",
      f"EVAL_PERIOD = {max(1, steps // (2 if size.quick else 4))}",
      "EVAL_STEPS = 1",
      f"LOG_EVERY = {max(1, steps // 20)}",
      f"RANDOM_SEED = {seed}",
      f"DATA_SEED = {seed}",
      f"network.T5Config.num_encoder_layers = {size.num_layers}",
      f"network.T5Config.num_decoder_layers = {size.num_layers}",
      "train_script.train.train_eval_dataset_cfg = None",
      "train_script.train.infer_eval_dataset_cfg = None",
      "BEST_CHECKPOINT_METRIC = None",
  ]
