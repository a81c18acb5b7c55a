"""Run sizes of the experiments: `QUICK` (CI, numbers not meaningful) and `DEFAULT` (the demo).

A `Size` says how big the demo world, the model and each run are, how many seeds, Bayesian-
optimisation trials and grid points an experiment uses, and turns that into gin bindings shared by
every run of an experiment. Must not import jax or gin.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any, Mapping

# The untuned starting point every method starts from: the demo's base LR (0.002) 10x too small
# and Adam's b1 at 0.5 instead of 0.9.
BAD_BASE_LR = 0.0002
BAD_B1 = 0.5
GOOD_BASE_LR = 0.002


@dataclasses.dataclass(frozen=True)
class Size:
  """How big one experiment is.

  Attributes:
    name: 'quick' or 'default'.
    world: `DemoWorldConfig` fields of the demo world (`GBT_T5X_DEMO_CONFIG`).
    num_layers: encoder and decoder layers of tiny T5 (each).
    train_steps: model steps of every translation run (bo_vs_gbt, schedule_vs_constant).
    pretrain_steps: steps of each span-corruption pretraining run (pretrain_downstream).
    finetune_steps: steps of each downstream finetuning run (pretrain_downstream).
    batch_size: train (and guide) batch size, examples.
    lengths: task feature lengths of the translation task (tokens).
    eval_batches: batches of the teacher-forced dev / guide evaluations.
    decode_examples: test sentences greedy-decoded for BLEU / exact match.
    seeds: random seeds (params init and data order) of the repeated runs.
    bo_trials: Bayesian-optimisation trials per seed.
    grid_lr_multipliers: grid over the base LR, as multiples of `BAD_BASE_LR`.
    grid_b1: grid over Adam's b1.
    curve_points: intermediate scores of a guided run (for compute curves).
  """
  name: str
  world: Mapping[str, Any]
  num_layers: int
  train_steps: int
  pretrain_steps: int
  finetune_steps: int
  batch_size: int
  lengths: Mapping[str, int]
  eval_batches: int
  decode_examples: int
  seeds: tuple[int, ...]
  bo_trials: int
  grid_lr_multipliers: tuple[float, ...]
  grid_b1: tuple[float, ...]
  curve_points: int

  @property
  def quick(self) -> bool:
    return self.name == "quick"

  def world_json(self) -> str:
    return json.dumps(dict(self.world), sort_keys=True)


QUICK = Size(
    name="quick",
    world={"num_train": 3000, "num_guide": 300, "num_dev": 200, "num_test": 200,
           "num_mono": 600},
    num_layers=1, train_steps=10, pretrain_steps=10, finetune_steps=10, batch_size=8, lengths={"inputs": 32, "targets": 24},
    eval_batches=1, decode_examples=8, seeds=(0, 1), bo_trials=2,
    grid_lr_multipliers=(1.0, 10.0), grid_b1=(0.5,), curve_points=1)

DEFAULT = Size(
    name="default",
    world={"num_train": 6000, "num_guide": 300, "num_dev": 200, "num_test": 200,
           "num_mono": 4000},
    num_layers=2, train_steps=200, pretrain_steps=1000, finetune_steps=500, batch_size=16, lengths={"inputs": 64, "targets": 40},
    eval_batches=8, decode_examples=100, seeds=(0, 1, 2), bo_trials=8,
    grid_lr_multipliers=(1.0, 10.0, 30.0), grid_b1=(0.5, 0.9), curve_points=3)


def get_size(quick: bool) -> Size:
  return QUICK if quick else DEFAULT


def common_bindings(size: Size, seed: int, model_dir: str, steps: int | None = None
                    ) -> list[str]:
  """Gin bindings shared by every run of an experiment (model size, steps, batch, seed);
  `steps` overrides `size.train_steps`."""
  steps = size.train_steps if steps is None else int(steps)
  return [
      f"MODEL_DIR = {model_dir!r}",
      f"TRAIN_STEPS = {steps}",
      f"BATCH_SIZE = {size.batch_size}",
      f"EVAL_PERIOD = {steps}",
      f"EVAL_STEPS = {size.eval_batches}",
      f"LOG_EVERY = {max(1, steps // 4)}",
      f"RANDOM_SEED = {seed}",
      "PACK = False",  # One example per row, whatever the base gin file says.
      f"DATA_SEED = {seed}",
      f"network.T5Config.num_encoder_layers = {size.num_layers}",
      f"network.T5Config.num_decoder_layers = {size.num_layers}",
      f"learning_rate.create_learning_rate_scheduler.warmup_steps = {max(1, steps // 10)}",
      # Scores are computed after training (gbt_t5x.experiments.scoring); no periodic evals.
      "train_script.train.train_eval_dataset_cfg = None",
      "train_script.train.infer_eval_dataset_cfg = None",
      "BEST_CHECKPOINT_METRIC = None",
  ]


def nmt_bindings(size: Size) -> list[str]:
  """The translation task's lengths at this size, and a constant LR after warmup (the experiments
  compare learned schedules with constants, whatever decay the demo's gin file uses)."""
  return [f"TASK_FEATURE_LENGTHS = {dict(size.lengths)!r}",
          "learning_rate.create_learning_rate_scheduler.factors = 'constant * linear_warmup'"]
