"""End-to-end guided runs on a small demo world (slow): learned data weights find the noisy
buckets, and a learned LR multiplier repairs a badly scaled constant learning rate.

Each test trains a tiny T5 (width 64, 1+1 layers) with `train_lib.train` on `demo_nmt` guided by
`demo_nmt_guide`, in a world of 3000 training pairs of which 40% are noisy (bucket 1 misaligned,
2 truncated, 3 copy). The world is generated in a temporary folder (`GBT_T5X_DEMO_DIR`,
`GBT_T5X_DEMO_CONFIG`) before the demo task is first used.
"""
from __future__ import annotations

import functools
import json
import os

import jax
import numpy as np
import pytest

WORLD_CONFIG = {"num_train": 3000, "num_guide": 300, "num_dev": 200, "num_test": 100,
                "num_mono": 100, "noise_rate": 0.4}
LENGTHS = {"inputs": 48, "targets": 32}
BATCH = 32


@pytest.fixture(scope="module")
def demo_world(tmp_path_factory):
  """Points the demo tasks at a small world in a temporary folder (restored afterwards)."""
  with pytest.MonkeyPatch.context() as mp:
    mp.setenv("GBT_T5X_DEMO_DIR", str(tmp_path_factory.mktemp("demo_world")))
    mp.setenv("GBT_T5X_DEMO_CONFIG", json.dumps(WORLD_CONFIG))
    from gbt_t5x_tasks import demo  # noqa: F401 (registers demo_nmt, demo_nmt_guide)
    demo.ensure_world()
    yield demo


def _model(demo):
  from gbt_t5x.models import encoder_decoder, network
  from gbt_t5x.train import optimizers
  config = network.T5Config(vocab_size=1152, emb_dim=64, num_heads=4, head_dim=16, mlp_dim=128,
                            num_encoder_layers=1, num_decoder_layers=1, dropout_rate=0.0)
  return encoder_decoder.EncoderDecoderModel(network.Transformer(config), demo.VOCABULARY,
                                             demo.VOCABULARY, optimizer_def=optimizers.adamw())


def _configs(data_ids: bool):
  from gbt_t5x.train import data
  train = data.DatasetConfig("demo_nmt", LENGTHS, "train", BATCH, shuffle=True, seed=0,
                             data_id_feature="noise_bucket" if data_ids else None)
  dev = data.DatasetConfig("demo_nmt", LENGTHS, "validation", 100, shuffle=False, num_epochs=1)
  guide = data.DatasetConfig("demo_nmt_guide", LENGTHS, "train", BATCH, shuffle=True, seed=1)
  return train, dev, guide


def run(demo, model_dir, steps, lr, specs=None, meta_lr=3e-2, data_ids=False):
  """Trains; returns (final dev loss per token, final effective guided values or None)."""
  from gbt_t5x.guided import specs as specs_lib
  from gbt_t5x.train import guided_trainer, train_lib, trainer as trainer_lib
  train_cfg, dev_cfg, guide_cfg = _configs(data_ids)
  lr_fn = lambda step: lr  # noqa: E731
  if specs:
    trainer_cls = functools.partial(guided_trainer.GuidedTrainer, learning_rate_fn=lr_fn,
                                    guided_hparams=tuple(specs), guide_dataset_cfg=guide_cfg,
                                    meta_learning_rate=meta_lr)
  else:
    trainer_cls = functools.partial(trainer_lib.Trainer, learning_rate_fn=lr_fn)
  from gbt_t5x.train.partitioning import PjitPartitioner
  _, state = train_lib.train(model=_model(demo), train_dataset_cfg=train_cfg,
                             partitioner=PjitPartitioner(devices=jax.devices()[:1]),
                             train_eval_dataset_cfg=dev_cfg, trainer_cls=trainer_cls,
                             checkpoint_cfg=train_lib.CheckpointConfig(save=None),
                             model_dir=str(model_dir), total_steps=steps, eval_period=steps,
                             log_every=steps, print_fn=lambda s: None)
  rows = [json.loads(line) for line in open(os.path.join(model_dir, "metrics.jsonl"))]
  dev_loss = [r["train_eval/loss"] for r in rows if "train_eval/loss" in r][-1]
  values = None
  if specs:
    values = {k: np.asarray(v) for k, v in
              specs_lib.effective(specs, jax.device_get(state.guided.raw)).items()}
  return dev_loss, values


DW_STEPS = 150
LR_STEPS = 150
GOOD_LR = 3e-3


@pytest.mark.slow
def test_guided_data_weights_down_weight_noisy_buckets(demo_world, tmp_path):
  from gbt_t5x.guided.specs import GuidedHParam
  specs = (GuidedHParam("data_weights", 1.0, "exp", shape=(4,)),)
  dev_loss, values = run(demo_world, tmp_path, DW_STEPS, GOOD_LR, specs, meta_lr=3e-2,
                         data_ids=True)
  w = values["data_weights"]
  print(f"data weights after {DW_STEPS} steps: {np.round(w, 3).tolist()}, dev loss {dev_loss:.3f}")
  assert np.all(np.isfinite(w)) and np.isfinite(dev_loss)
  # Bucket 0 is clean; 1 (misaligned) and 3 (copy) teach the wrong mapping.
  assert w[1] < w[0] and w[3] < w[0], w
  assert w[0] > 1.0 > w[3], w


@pytest.fixture(scope="module")
def well_tuned_dev_loss(demo_world, tmp_path_factory):
  return run(demo_world, tmp_path_factory.mktemp("good"), LR_STEPS, GOOD_LR)[0]


@pytest.mark.slow
@pytest.mark.parametrize("factor", [0.1, 10.0], ids=["lr_too_small", "lr_too_large"])
def test_guided_lr_multiplier_repairs_a_bad_constant_lr(demo_world, well_tuned_dev_loss,
                                                        tmp_path, factor):
  from gbt_t5x.guided.specs import GuidedHParam
  specs = (GuidedHParam("learning_rate", 1.0, "exp", lower=0.01, upper=100.0),)
  bad_lr = GOOD_LR * factor
  plain_loss, _ = run(demo_world, tmp_path / "plain", LR_STEPS, bad_lr)
  guided_loss, values = run(demo_world, tmp_path / "guided", LR_STEPS, bad_lr, specs,
                            meta_lr=6e-2)
  mult = float(values["learning_rate"])
  print(f"factor {factor}: dev loss well-tuned {well_tuned_dev_loss:.3f}, constant "
        f"{plain_loss:.3f}, guided {guided_loss:.3f} (final multiplier {mult:.3f})")
  assert abs(guided_loss - well_tuned_dev_loss) < abs(plain_loss - well_tuned_dev_loss)
  # The multiplier moved towards the well-tuned LR.
  assert (mult > 1.0) if factor < 1 else (mult < 1.0)


# ---------------------------------------------------------------- guided mixture weights
NOISE_TASK, MIXTURE = "gbt_t5x_test_pure_noise", "gbt_t5x_test_nmt_and_noise"
MIX_STEPS = 120


@pytest.fixture(scope="module")
def noise_mixture(demo_world):
  """A two-task mixture: `demo_nmt` and a task of the same inputs with random-token targets."""
  import seqio
  import tensorflow as tf

  def random_targets(ds):
    def scramble(ex):
      seed = tf.stack([tf.cast(ex["example_id"], tf.int32), 7])
      noise = tf.random.stateless_uniform(tf.shape(ex["targets"]), seed, 3, 1100, tf.int32)
      return {**ex, "targets": noise}
    return ds.map(scramble)

  seqio.TaskRegistry.remove(NOISE_TASK)
  seqio.TaskRegistry.add(
      NOISE_TASK, source=seqio.FunctionDataSource(
          demo_world._make_dataset_fn({"train": "train.tsv"}), splits=("train",)),
      preprocessors=[*demo_world._preprocessors()[:-1], random_targets,
                     seqio.preprocessors.append_eos_after_trim],
      output_features=demo_world.OUTPUT_FEATURES)
  seqio.MixtureRegistry.remove(MIXTURE)
  seqio.MixtureRegistry.add(MIXTURE, [("demo_nmt", 1.0), (NOISE_TASK, 1.0)])
  return MIXTURE


def run_mixture(demo, model_dir, steps, seed, sampling="loss_weights", save_period=None):
  """A guided mixture-weights run; returns (final train state, trajectory rows)."""
  from gbt_t5x.data import data_ids
  from gbt_t5x.guided.specs import GuidedHParam
  from gbt_t5x.train import data, guided_trainer, train_lib
  from gbt_t5x.train.partitioning import PjitPartitioner
  train = data.DatasetConfig(MIXTURE, LENGTHS, "train", BATCH, shuffle=True, seed=seed,
                             pack=True, data_id_feature=data_ids.MIXTURE_TASK)
  guide = data.DatasetConfig("demo_nmt_guide", LENGTHS, "train", BATCH, shuffle=True, seed=1)
  names = data_ids.data_id_names(MIXTURE, data_ids.MIXTURE_TASK)
  specs = (GuidedHParam("data_weights", 1.0, "exp", shape=(len(names),), entry_names=names),)
  trainer_cls = functools.partial(
      guided_trainer.GuidedTrainer, learning_rate_fn=lambda step: GOOD_LR, guided_hparams=specs,
      guide_dataset_cfg=guide, meta_learning_rate=3e-2, mixture_sampling=sampling,
      resample_every=10)
  save = train_lib.SaveCheckpointConfig(period=save_period) if save_period else None
  _, state = train_lib.train(model=_model(demo), train_dataset_cfg=train,
                             partitioner=PjitPartitioner(devices=jax.devices()[:1]),
                             trainer_cls=trainer_cls, random_seed=seed,
                             checkpoint_cfg=train_lib.CheckpointConfig(save=save),
                             model_dir=str(model_dir), total_steps=steps, eval_period=steps,
                             log_every=10, print_fn=lambda s: None)
  rows = [json.loads(line) for line in open(os.path.join(model_dir, "guided_trajectory.jsonl"))]
  return state, rows


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_guided_mixture_weight_of_a_pure_noise_task_falls(demo_world, noise_mixture, tmp_path,
                                                          seed):
  _, rows = run_mixture(demo_world, tmp_path, MIX_STEPS, seed)
  names, final = rows[-1]["entry_names"]["data_weights"], rows[-1]["values"]["data_weights"]
  weights = dict(zip(names, final))
  print(f"seed {seed}: mixture weights after {MIX_STEPS} steps: {weights}")
  assert weights[NOISE_TASK] < 1.0 < weights["demo_nmt"], weights


@pytest.mark.slow
def test_online_sampling_rates_resume_reproduces_the_uninterrupted_run(demo_world, noise_mixture,
                                                                       tmp_path):
  """Sampling rates refreshed every 10 steps; a run stopped at step 25 (mid-segment) and resumed
  ends with the same params, guided values and trajectory as one that never stopped."""
  full, full_rows = run_mixture(demo_world, tmp_path / "full", 40, 0, "sampling_rates")
  run_mixture(demo_world, tmp_path / "resumed", 25, 0, "sampling_rates", save_period=5)
  resumed, resumed_rows = run_mixture(demo_world, tmp_path / "resumed", 40, 0, "sampling_rates",
                                      save_period=5)
  for a, b in zip(jax.tree.leaves(full.params), jax.tree.leaves(resumed.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert np.array_equal(np.asarray(full.guided.raw["data_weights"]),
                        np.asarray(resumed.guided.raw["data_weights"]))
  by_step = {r["step"]: r["values"] for r in resumed_rows}
  assert [r["values"] for r in full_rows] == [by_step[r["step"]] for r in full_rows]
  # The weights moved, so the sampling rates changed between segments.
  assert full_rows[-1]["values"]["data_weights"] != full_rows[0]["values"]["data_weights"]
