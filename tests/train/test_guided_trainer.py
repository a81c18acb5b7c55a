"""GuidedTrainer on a tiny T5: hypergradients against central finite differences (float64), a 4x2
mesh against one device, NaN skips, hyper_step_every, exact resume, one-line errors, and the
trajectory file / plot.

Guide batches come from a synthetic deterministic stream (`SyntheticGuideTrainer`), so no SeqIO
task is needed except for the empty-guide-task error test.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import glob
import json
import os
import types
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import seqio
import tensorflow as tf

from gbt_t5x.guided import forward, hypergrad
from gbt_t5x.guided import specs as specs_lib
from gbt_t5x.guided.specs import GuidedHParam
from gbt_t5x.models import encoder_decoder, losses, network
from gbt_t5x.train import checkpoints, data, guided_trainer, optimizers, step, train_lib
from gbt_t5x.train.partitioning import PjitPartitioner
from tests.finite_differences import central_differences
from tests.train import tiny

NUM_IDS = 3
BATCH = 8
BASE_LR = 1e-2
GUIDE_SEED = 10_000
GUIDE_CFG = data.DatasetConfig("synthetic_guide_unused", {"inputs": tiny.LENGTH,
                                                         "targets": tiny.LENGTH},
                               "train", BATCH, shuffle=False)


class SyntheticGuideTrainer(guided_trainer.GuidedTrainer):
  """GuidedTrainer whose guide batches are `tiny.random_batch(GUIDE_SEED + position)`.

  The position is kept here (`data_positions` / `restore_data_positions` play the training
  loop's part of saving and restoring the guide iterator's position). `poison` (a set of guide
  positions) makes those guide batches carry a NaN scale that `_guide_loss` multiplies in.
  """
  poison: frozenset = frozenset()
  guide_calls: list

  def _check_guide_data(self) -> None:
    self.guide_calls = []
    self._guide_position = 0

  def data_positions(self):
    return {"guide": self._guide_position}

  def restore_data_positions(self, positions):
    self._guide_position = int(positions.get("guide", 0))

  def _next_guide_batch(self):
    self.guide_calls.append(self._host_step)
    batch = tiny.random_batch(GUIDE_SEED + self._guide_position, batch_size=BATCH)
    if self.poison is not None:
      bad = self._guide_position in self.poison
      batch["poison"] = np.full((BATCH,), np.nan if bad else 0.0, np.float32)
    self._guide_position += 1
    return data.global_batch(batch, self._partitioner.data_sharding)

  def _guide_loss(self, params, guide_batch):
    loss = super()._guide_loss(params, guide_batch)
    if "poison" in guide_batch:
      loss = loss * (1.0 + jnp.sum(guide_batch["poison"]))
    return loss

  def _loss_from_outputs(self, logits, batch, loss_inputs):
    """A train batch with a `poison` feature scales its train loss (NaN: a non-finite loss)."""
    loss, aux = super()._loss_from_outputs(logits, batch, loss_inputs)
    if "poison" in batch:
      scale = 1.0 + jnp.sum(batch["poison"])
      loss, aux = loss * scale, dict(aux, loss=aux["loss"] * scale)
    return loss, aux


def make_trainer(specs, partitioner=None, optimizer=None, seed=0, trainer_cls=None,
                 summary_dir=None, **kwargs):
  partitioner = partitioner or PjitPartitioner(devices=jax.devices()[:1])
  model = tiny.tiny_model(optimizer or optimizers.adamw())
  state, axes = train_lib.initial_train_state(model, tiny.INPUT_SHAPES, partitioner,
                                              jax.random.PRNGKey(seed))
  cls = trainer_cls or SyntheticGuideTrainer
  return cls(model=model, train_state=state, partitioner=partitioner, eval_names=[],
             summary_dir=summary_dir, train_state_axes=axes, rng=jax.random.PRNGKey(1),
             learning_rate_fn=lambda step: BASE_LR, log_every=1000, print_fn=lambda s: None,
             guided_hparams=tuple(specs), guide_dataset_cfg=GUIDE_CFG, **kwargs)


def train_batches(partitioner, start, n, data_ids=NUM_IDS):
  for i in range(start, start + n):
    yield data.global_batch(tiny.random_batch(i, batch_size=BATCH, with_data_ids=data_ids),
                            partitioner.data_sharding)


def host(tree):
  return jax.tree.map(lambda x: np.array(x), jax.device_get(tree))


# ============================================================================ 1. finite differences
# The model code computes in float32 by construction (params, activations and losses are cast to
# float32 explicitly). For a float64 finite-difference check, the tests swap `jnp` in those
# modules for a view of jax.numpy in which float32 means float64, and build the optimizer with
# float64 hyper-parameters; the code paths are otherwise exactly the trainer's.
class _Float64Numpy(types.ModuleType):
  def __init__(self):
    super().__init__("jnp_float64_view")
    self.float32 = jnp.float64

  def __getattr__(self, name):
    return getattr(jnp, name)

  def dtype(self, x, *args, **kwargs):
    d = jnp.dtype(x, *args, **kwargs)
    return jnp.dtype(jnp.float64) if d == jnp.float32 else d


@contextlib.contextmanager
def float64_model():
  view = _Float64Numpy()
  with jax.enable_x64(True), pytest.MonkeyPatch.context() as mp:
    for module in (network, losses, encoder_decoder, optimizers, step):
      mp.setattr(module, "jnp", view)
    mp.setattr(optimizers, "HYPERPARAM_DTYPE", jnp.float64)
    mp.setattr(network, "_DTYPES", network._DTYPES + ("float64",))
    yield


FD_STEP = 1e-5
FD_RTOL = 1e-4
LR_GROUPS = ("token_embedder", "encoder/", "decoder/layers_0/(self|encoder_decoder)_attention",
             "decoder/")
FD_CONFIGS = {
    "adamw": (lambda: optimizers.adamw(b1=0.9, b2=0.99, eps=1e-3, weight_decay=0.0), (
        GuidedHParam("learning_rate", 1.0, "exp", lower=0.01, upper=100.0),
        GuidedHParam("b1", 0.8, "sigmoid", lower=0.0, upper=0.999),
        GuidedHParam("b2", 0.99, "sigmoid", lower=0.5, upper=0.9999),
        GuidedHParam("eps", 1e-3, "exp"),
        GuidedHParam("weight_decay", 0.05, "linear", lower=0.0, upper=1.0),
        GuidedHParam("label_smoothing", 0.1, "sigmoid", lower=0.0, upper=0.5),
        GuidedHParam("data_weights", (1.0, 0.5, 2.0), "exp", shape=(NUM_IDS,)))),
    "adamw_lr_groups": (lambda: optimizers.adamw(b1=0.9, b2=0.99, eps=1e-3), (
        GuidedHParam("learning_rate", (1.0, 2.0, 0.5, 1.5), "exp", shape=(len(LR_GROUPS),),
                     groups=LR_GROUPS),
        GuidedHParam("label_smoothing", 0.05, "linear", lower=0.0, upper=0.5))),
    "adafactor": (lambda: optimizers.adafactor(momentum=0.5, weight_decay_rate=0.0,
                                               min_dim_size_to_factor=8), (
        GuidedHParam("learning_rate", 1.0, "exp"),
        GuidedHParam("decay_rate", 0.8, "sigmoid", lower=0.1, upper=1.0),
        GuidedHParam("momentum", 0.5, "sigmoid", lower=0.0, upper=0.99),
        GuidedHParam("clipping_threshold", 0.5, "exp"),
        GuidedHParam("weight_decay", 0.01, "linear", lower=0.0),
        GuidedHParam("data_weights", (1.0, 0.5, 2.0), "softplus", shape=(NUM_IDS,)))),
}


@dataclasses.dataclass
class FDSetup:
  trainer: Any
  state: Any
  batch: dict
  guide_batch: dict
  rng: jax.Array
  hypergrads: dict
  hyper_loss: Any


def build_fd_setup(trainer) -> FDSetup:
  """The hypergradient at the third step of `trainer`'s model (two plain warm-up steps, the
  lookahead's model step being the plain step, for non-trivial moments and step counts), with
  the compiled composed hyper-loss; call inside `float64_model()`."""
  p = trainer._partitioner
  assert jax.tree.leaves(trainer.train_state.params)[0].dtype == jnp.float64
  kwargs = dict(guide_loss_fn=trainer._guide_loss, **trainer.step_kwargs())
  lookahead = jax.jit(functools.partial(hypergrad.lookahead_hypergradient,
                                        base_lr=jnp.asarray(BASE_LR), **kwargs))
  hyper_loss = jax.jit(functools.partial(hypergrad.hyper_loss, base_lr=jnp.asarray(BASE_LR),
                                         **kwargs))
  state = trainer.train_state
  raw = host(state.guided.raw)  # numpy everywhere: one jit cache entry for every FD call
  guide = data.global_batch(tiny.random_batch(GUIDE_SEED, batch_size=BATCH), p.data_sharding)
  rng = jax.random.PRNGKey(5)
  for i, batch in enumerate(train_batches(p, 0, 3)):
    params, opt_state, hypergrads, _ = lookahead(state.params, state.opt_state, raw, batch,
                                                 guide, jax.random.fold_in(rng, i))
    if i < 2:
      state = state.replace(params=params, opt_state=opt_state)
  rng = jax.random.fold_in(rng, 2)
  hyper_loss(raw, state.params, state.opt_state, batch, guide, rng)  # compile here
  state = state.replace(guided=state.guided.replace(raw=raw))
  return FDSetup(trainer, state, batch, guide, rng, host(hypergrads), hyper_loss)


@pytest.fixture(scope="module")
def fd_setups():
  """config -> FDSetup after two plain warm-up steps (float64; x64 and the float64 view are on
  only while building and inside each test, never for the other tests of this module)."""
  out = {}
  with float64_model():
    for name, (make_opt, specs) in FD_CONFIGS.items():
      out[name] = build_fd_setup(make_trainer(specs, optimizer=make_opt()))
  return out


def _central_difference(s: FDSetup, name: str) -> np.ndarray:
  raw = s.state.guided.raw
  base = np.asarray(raw[name], np.float64)
  fd = np.zeros(base.shape)
  for idx in np.ndindex(base.shape):
    values = []
    for sign in (1.0, -1.0):
      shifted = base.copy()
      shifted[idx] += sign * FD_STEP
      new_raw = dict(raw, **{name: shifted})
      values.append(float(s.hyper_loss(new_raw, s.state.params, s.state.opt_state, s.batch,
                                        s.guide_batch, s.rng)))
    fd[idx] = (values[0] - values[1]) / (2 * FD_STEP)
  return fd


FD_CASES = [(c, spec.name) for c, (_, specs) in FD_CONFIGS.items() for spec in specs]


@pytest.mark.parametrize("config,name", FD_CASES, ids=[f"{c}-{n}" for c, n in FD_CASES])
def test_t5_hypergradient_matches_central_differences(fd_setups, config, name):
  s = fd_setups[config]
  with float64_model():
    fd = _central_difference(s, name)
  got = s.hypergrads[name]
  assert got.dtype == np.float64
  assert np.linalg.norm(fd) > 1e-6, f"{config}/{name}: hypergradient too small to test: {fd}"
  assert np.all(np.abs(fd) > 1e-9), f"{config}/{name}: a component has no effect: {fd}"
  assert np.linalg.norm(got - fd) <= FD_RTOL * np.linalg.norm(fd), (config, name, got, fd)


# ============================================================================ 1b. closed form
# The default derivative of the AdamW update ('auto': `optimizer_derivatives`' closed form for
# the registered AdamW / Adam) against the generic VJP, in float32 (the trainer's precision), on
# the 4 x 2 mesh with 2 microbatches, for every AdamW kind plus the loss-side ones. (The float64
# finite-difference tests above and the microbatched one below run the default, i.e. the closed
# form, for their AdamW configurations, one pass and microbatched; the VJP path keeps its own in
# tests/guided/test_hypergrad.py, whose optimizers are unregistered.)
# Tolerance: both paths compute the same sums sum_i v_i du_i/dh in float32 with different
# rounding (the closed form recovers m - g, n - g^2 and theta from the updated state, which
# cancels digits where the update is small). Measured ||cf - vjp|| / ||vjp|| on T5 tiny, 4 x 2
# mesh: b1 2.4e-6 (one pass) / 4.1e-6 (2 microbatches), every other kind <= 9e-7; so 1e-4, 25x
# above that, while a wrong term misses by O(1).
CF_RTOL_FLOAT32 = 1e-4


# T5X's Adafactor (factored second moments, clipping, parameter scale; no momentum), whose
# closed form covers the LR multiplier and decay_rate.
ADAFACTOR_T5X = (lambda: optimizers.adafactor(min_dim_size_to_factor=8),
                 (GuidedHParam("learning_rate", 1.0, "exp", lower=0.01, upper=100.0),
                  GuidedHParam("decay_rate", 0.8, "exp")))


@pytest.mark.parametrize("config", ["adamw", "adafactor (T5X)"])
def test_closed_form_default_equals_vjp_in_float32_on_mesh(config):
  make_opt, specs = FD_CONFIGS["adamw"] if config == "adamw" else ADAFACTOR_T5X
  num_microbatches = 2
  p = PjitPartitioner(num_partitions=2)
  trainer = make_trainer(specs, partitioner=p, optimizer=make_opt(),
                         num_microbatches=num_microbatches)
  assert trainer.optimizer_derivative == hypergrad.AUTO
  assert hypergrad.closed_form_for(trainer.optimizer, hypergrad.AUTO,
                                   {"learning_rate": 1.0, ("b1" if config == "adamw" else
                                                           "decay_rate"): 0.8},
                                   trainer.train_state.opt_state) is not None
  kwargs = dict(guide_loss_fn=trainer._guide_loss, base_lr=jnp.float32(BASE_LR),
                **trainer.step_kwargs())
  with p.context():
    paths = {how: jax.jit(functools.partial(hypergrad.lookahead_hypergradient,
                                            optimizer_derivative=how, **kwargs))
             for how in (hypergrad.VJP, hypergrad.AUTO)}
    state, raw = trainer.train_state, trainer.train_state.guided.raw
    guide = data.global_batch(tiny.random_batch(GUIDE_SEED, batch_size=BATCH), p.data_sharding)
    rng = jax.random.PRNGKey(5)
    for i, batch in enumerate(train_batches(p, 0, 3)):  # two warm-up steps, then compare
      out = {how: fn(state.params, state.opt_state, raw, batch, guide, jax.random.fold_in(rng, i))
             for how, fn in paths.items() if i == 2 or how == hypergrad.VJP}
      state = state.replace(params=out[hypergrad.VJP][0], opt_state=out[hypergrad.VJP][1])
  vjp, auto = host(out[hypergrad.VJP]), host(out[hypergrad.AUTO])
  for a, b in zip(jax.tree.leaves(vjp[:2]), jax.tree.leaves(auto[:2])):  # the same model step
    np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-7)
  assert set(vjp[2]) == set(auto[2]) == {s.name for s in specs}
  for name, expected in vjp[2].items():
    got = auto[2][name]
    assert expected.dtype == got.dtype == np.float32 and np.all(expected != 0), name
    err = np.linalg.norm(got - expected) / np.linalg.norm(expected)
    assert err <= CF_RTOL_FLOAT32, (name, err, got, expected)


# ============================================================================ 2.-3. trainer runs
# LR multiplier, Adam b1, label smoothing and data weights, float32 (the default precision).
SPECS = (GuidedHParam("learning_rate", 1.0, "exp", lower=0.01, upper=100.0),
         GuidedHParam("b1", 0.9, "sigmoid", lower=0.0, upper=0.999),
         GuidedHParam("label_smoothing", 0.1, "sigmoid", lower=0.0, upper=0.5),
         GuidedHParam("data_weights", (1.0, 0.5, 2.0), "exp", shape=(NUM_IDS,)))
META_LR = 0.05


@pytest.fixture(scope="module")
def init_1dev():
  """(model, fresh state, axes, partitioner) on one device; trainers get copies of the state."""
  p = PjitPartitioner(devices=jax.devices()[:1])
  model = tiny.tiny_model(optimizers.adamw())
  state, axes = train_lib.initial_train_state(model, tiny.INPUT_SHAPES, p, jax.random.PRNGKey(0))
  return model, state, axes, p


def trainer_1dev(init, specs=SPECS, trainer_cls=SyntheticGuideTrainer, state=None, **kwargs):
  model, fresh, axes, p = init
  state = jax.tree.map(jnp.copy, fresh) if state is None else state
  kwargs.setdefault("meta_learning_rate", META_LR)
  kwargs.setdefault("guide_dataset_cfg", GUIDE_CFG)
  return trainer_cls(model=model, train_state=state, partitioner=p, eval_names=[],
                     summary_dir=kwargs.pop("summary_dir", None), train_state_axes=axes,
                     rng=jax.random.PRNGKey(1), learning_rate_fn=lambda step: BASE_LR,
                     log_every=kwargs.pop("log_every", 1000),
                     print_fn=kwargs.pop("print_fn", lambda s: None),
                     guided_hparams=tuple(specs), **kwargs)


def warm_start(trainer):
  """One plain model step on train batch 0 (so that Adam's b1 matters at the first guided step:
  on the optimizer's first step bias correction cancels it and its hypergradient is ~0)."""
  batch = next(train_batches(trainer._partitioner, 0, 1))
  trainer.train_state, _ = trainer._partitioned_train_step(trainer.train_state, batch)


def run_steps(trainer, start, n):
  """Trains `n` steps one at a time; returns host snapshots of the state after each."""
  p = trainer._partitioner
  snaps = []
  for batch in train_batches(p, start, n):
    trainer.train(iter([batch]), 1)
    snaps.append(host(trainer.train_state))
  return snaps


@pytest.fixture(scope="module")
def reference_run(init_1dev, tmp_path_factory):
  """A plain step, then 4 guided steps (one per step) on one device; checkpoint after step 3."""
  trainer = trainer_1dev(init_1dev)
  warm_start(trainer)
  snaps = run_steps(trainer, 1, 2)
  ckpt_dir = str(tmp_path_factory.mktemp("ckpt"))
  ckpt = checkpoints.Checkpointer(ckpt_dir)
  ckpt.save(3, trainer.train_state, {"data_positions": {"train": 3, **trainer.data_positions()}})
  ckpt.wait_until_finished()
  snaps += run_steps(trainer, 3, 2)
  return snaps, ckpt_dir


def assert_trees_equal(a, b):
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  assert jax.tree.structure(a) == jax.tree.structure(b) and len(la) == len(lb)
  for x, y in zip(la, lb):
    np.testing.assert_array_equal(x, y)


def assert_trees_close(a, b, rtol):
  for path, x in jax.tree_util.tree_flatten_with_path(a)[0]:
    y = functools.reduce(lambda t, k: t[k.key] if hasattr(k, "key") else (
        getattr(t, k.name) if hasattr(k, "name") else t[k.idx]), path, b)
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    assert np.linalg.norm(x - y) <= rtol * np.linalg.norm(y) + 1e-12, (
        jax.tree_util.keystr(path), x, y)


def test_reference_run_moves_every_value(reference_run):
  snaps, _ = reference_run
  assert [int(s.step) for s in snaps] == [2, 3, 4, 5]
  assert [int(s.guided.num_hyper_steps) for s in snaps] == [1, 2, 3, 4]
  assert int(snaps[-1].guided.num_skipped) == 0
  init = specs_lib.init_raw(SPECS)
  for name, value in snaps[0].guided.raw.items():
    # Adam's first meta step moves every raw entry by ~ the meta learning rate.
    np.testing.assert_allclose(np.abs(value - np.asarray(init[name])), META_LR, rtol=0.01,
                               err_msg=name)


def test_mesh_4x2_guided_step_equals_one_device(reference_run):
  snaps, _ = reference_run
  p = PjitPartitioner(num_partitions=2)
  assert dict(p.mesh.shape) == {"data": 4, "model": 2}
  trainer = make_trainer(SPECS, partitioner=p, meta_learning_rate=META_LR)
  warm_start(trainer)
  mesh_snaps = []
  for batch in train_batches(p, 1, 2):
    guide = trainer._next_guide_batch()
    trainer.train_state, metrics = trainer._partitioned_guided_step(trainer.train_state, batch,
                                                                    guide)
    mesh_snaps.append(host(trainer.train_state))
  # Params are sharded over the model axis on the mesh (not silently replicated).
  wi = [x for path, x in jax.tree_util.tree_flatten_with_path(trainer.train_state.params)[0]
        if "wi_0" in jax.tree_util.keystr(path)]
  assert wi and all(tuple(x.sharding.spec) == (None, "model") for x in wi)
  for i in range(2):
    # The meta Adam moments hold the hypergradients themselves (mu = sum of (1-b1) b1^k g).
    assert_trees_close(mesh_snaps[i].guided.meta_opt_state, snaps[i].guided.meta_opt_state,
                       rtol=1e-4)
    assert_trees_close(mesh_snaps[i].guided.raw, snaps[i].guided.raw, rtol=1e-4)
    assert_trees_close(mesh_snaps[i].params, snaps[i].params, rtol=1e-4)


def test_resume_equals_uninterrupted_run(init_1dev, reference_run):
  snaps, ckpt_dir = reference_run
  ckpt = checkpoints.Checkpointer(ckpt_dir)
  # A fresh trainer from another random init, as after a restart, restores step 2.
  model, _, axes, p = init_1dev
  other, _ = train_lib.initial_train_state(model, tiny.INPUT_SHAPES, p, jax.random.PRNGKey(7))
  trainer = trainer_1dev(init_1dev, state=other)
  target = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        trainer.train_state, trainer.train_state_axes)
  trainer.train_state, meta = ckpt.restore(ckpt.latest_step(), target)
  trainer.restore_data_positions(meta["data_positions"])
  assert meta["data_positions"] == {"train": 3, "guide": 2}
  resumed = run_steps(trainer, meta["data_positions"]["train"], 2)
  assert trainer.guide_calls == [3, 4]
  for got, want in zip(resumed, snaps[2:]):
    assert_trees_equal(got.guided, want.guided)  # raw values, meta state, counters
    assert_trees_equal(got.params, want.params)
    assert_trees_equal(got.opt_state, want.opt_state)


def test_nan_guide_loss_skips_meta_update_and_training_goes_on(init_1dev, reference_run):
  snaps, _ = reference_run

  class Poisoned(SyntheticGuideTrainer):
    poison = frozenset({1})

  trainer = trainer_1dev(init_1dev, trainer_cls=Poisoned)
  p = trainer._partitioner
  warm_start(trainer)
  got = []
  for batch in train_batches(p, 1, 3):
    metrics = trainer.train(iter([batch]), 1)
    got.append((host(trainer.train_state), metrics))
  (s0, m0), (s1, m1), (s2, m2) = got
  assert m0["skipped"] == 0 and m1["skipped"] == 1 and m2["skipped"] == 0
  assert not np.isfinite(m1["guide_loss_per_token"])
  assert int(s1.guided.num_skipped) == 1 and int(s2.guided.num_skipped) == 1
  assert int(s2.guided.num_hyper_steps) == 3
  # Step 0 is the reference's; the skipped step leaves raw values and meta state as they were.
  assert_trees_equal(s0.guided, snaps[0].guided)
  assert_trees_equal(s1.guided.raw, s0.guided.raw)
  assert_trees_equal(s1.guided.meta_opt_state, s0.guided.meta_opt_state)
  # The model step is taken anyway, and is the reference's (same values, same batch).
  assert not tiny.params_close(s1.params, s0.params, atol=0, rtol=0)
  assert_trees_equal(s1.params, snaps[1].params)
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(s1.params))
  # Training goes on: the next guided step updates the raw values again.
  assert not tiny.params_close(s2.guided.raw, s1.guided.raw, atol=0, rtol=0)


def test_hyper_step_every_3_and_trajectory_file(init_1dev, tmp_path):
  trainer = trainer_1dev(init_1dev, hyper_step_every=3, summary_dir=str(tmp_path))
  p = trainer._partitioner
  trainer.log_every = 4
  trainer.train(train_batches(p, 0, 7), 7)
  assert trainer.guide_calls == [0, 3, 6]
  assert int(trainer.train_state.guided.num_hyper_steps) == 3
  assert int(trainer.train_state.step) == 7
  rows = [json.loads(line) for line in open(tmp_path / "guided_trajectory.jsonl")]
  assert [r["step"] for r in rows] == list(range(1, 8))
  for row in rows:
    assert set(row["values"]) == {s.name for s in SPECS}, row
    assert len(row["values"]["data_weights"]) == NUM_IDS
    flat = guided_trainer.flatten_trajectory_row(row)
    assert all(np.isfinite(v) for k, v in flat.items() if k != "step")
  # Guided steps report a guide loss; the plain steps in between do not.
  assert [i for i, r in enumerate(rows) if "guide_loss_per_token" in r] == [0, 3, 6]
  # Each row holds the values used by its step: the init, then what the guided steps at
  # 0 and 3 made of them.
  values = [json.dumps(r["values"], sort_keys=True) for r in rows]
  assert rows[0]["values"]["data_weights"] == pytest.approx([1.0, 0.5, 2.0])
  assert values[0] != values[1] and values[1] == values[2] == values[3]
  assert values[3] != values[4] and values[4] == values[5] == values[6]
  for row in rows:
    assert row["applied_learning_rate"] == pytest.approx(
        BASE_LR * row["values"]["learning_rate"], rel=1e-6)
  trainer.write_plots(str(tmp_path))
  png = tmp_path / "hparams.png"
  assert png.exists() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


BUCKETS = ("clean", "misaligned", "untranslated copy")
NAMED_SPECS = SPECS[:3] + (dataclasses.replace(SPECS[3], entry_names=BUCKETS),)
BUCKET_TAGS = ("clean", "misaligned", "untranslated_copy")


def _event_tags(logdir):
  tags = set()
  for path in glob.glob(os.path.join(logdir, "events.out.tfevents.*")):
    for event in tf.compat.v1.train.summary_iterator(path):
      tags.update(value.tag for value in event.summary.value)
  return tags


def test_named_data_weights_in_progress_line_tensorboard_trajectory_and_plot(init_1dev, tmp_path):
  lines = []
  trainer = trainer_1dev(init_1dev, specs=NAMED_SPECS, summary_dir=str(tmp_path), log_every=2,
                         print_fn=lines.append, total_steps=2)
  trainer.train(train_batches(trainer._partitioner, 0, 2), 2)
  trainer.close()
  # Progress line: every bucket by its tag-safe name, no numbered entries.
  (line,) = [l for l in lines if l.startswith("step 2/2")]
  for tag in BUCKET_TAGS:
    assert f"| data_weights/{tag} " in line, line
  assert "data_weights/0" not in line and "data_weights_0" not in line
  # TensorBoard: hp/data_weights/<name> scalars.
  tags = _event_tags(str(tmp_path / "train"))
  assert {f"hp/data_weights/{t}" for t in BUCKET_TAGS} <= tags, sorted(tags)
  assert not any(t.startswith("hp/data_weights_") for t in tags)
  # Trajectory rows: the vector under its kind, the names beside it, in id order.
  rows = [json.loads(l) for l in open(tmp_path / guided_trainer.TRAJECTORY_FILE)]
  assert [r["step"] for r in rows] == [1, 2]
  for row in rows:
    assert row["entry_names"] == {"data_weights": list(BUCKETS)}
    assert len(row["values"]["data_weights"]) == NUM_IDS
  assert rows[0]["values"]["data_weights"] == pytest.approx([1.0, 0.5, 2.0])
  flat = guided_trainer.flatten_trajectory_row(rows[0])
  assert [flat[f"data_weights/{t}"] for t in BUCKET_TAGS] == pytest.approx([1.0, 0.5, 2.0])
  # hparams.png plots the named keys (in id order).
  plotted = []
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(guided_trainer.summaries, "plot_curves",
               lambda records, keys, path, title="": plotted.append(list(keys)))
    trainer.write_plots(str(tmp_path))
  (keys,) = plotted
  assert [k for k in keys if k.startswith("data_weights")] == [
      f"data_weights/{t}" for t in BUCKET_TAGS]


def test_old_trajectory_rows_without_names_flatten_by_index():
  row = {"step": 3, "applied_learning_rate": 1e-3,
         "values": {"learning_rate": 1.5, "data_weights": [1.0, 0.5]}}
  assert guided_trainer.flatten_trajectory_row(row) == {
      "step": 3, "applied_learning_rate": 1e-3, "learning_rate": 1.5, "data_weights/0": 1.0,
      "data_weights/1": 0.5}


# ============================================================================ errors
def _one_line_error(fn, match):
  with pytest.raises(ValueError, match=match) as info:
    fn()
  assert "\n" not in str(info.value), str(info.value)


@pytest.mark.parametrize("spec,match", [
    (GuidedHParam("learning_rat", 1.0), r"unknown guided hyper-parameter 'learning_rat'"),
    (GuidedHParam("b1", 0.9995, "sigmoid", lower=0.0, upper=0.999), r"outside \[lower, upper\]"),
    (GuidedHParam("decay_rate", 0.8, "sigmoid", lower=0.1, upper=1.0),
     r"'decay_rate' is not a hyper-parameter of the chosen optimizer"),
    (dataclasses.replace(SPECS[3], entry_names=BUCKETS[:2]),
     rf"'data_weights': 2 entry names for a data-weight table of {NUM_IDS} entries"),
], ids=["unknown-name", "init-out-of-bounds", "decay_rate-with-adamw", "names-count"])
def test_bad_spec_fails_before_any_step(init_1dev, spec, match):
  _one_line_error(lambda: trainer_1dev(init_1dev, specs=(spec,)), match)


def test_data_id_beyond_table_fails(init_1dev):
  trainer = trainer_1dev(init_1dev)
  ok = tiny.random_batch(0, with_data_ids=NUM_IDS)
  trainer.check_train_batch(ok)
  bad = dict(ok, decoder_data_ids=np.full_like(ok["decoder_data_ids"], NUM_IDS))
  _one_line_error(lambda: trainer.check_train_batch(bad),
                  rf"train data id {NUM_IDS} is beyond the data_weights table of size {NUM_IDS}")
  missing = {k: v for k, v in ok.items() if k != "decoder_data_ids"}
  _one_line_error(lambda: trainer.check_train_batch(missing), r"data_id_feature")
  assert int(trainer.train_state.step) == 0


def _empty_source(split, shuffle_files, seed=None):
  del split, shuffle_files, seed
  empty = tf.zeros([0, 4], tf.int32)
  return tf.data.Dataset.from_tensor_slices({"inputs": empty, "targets": empty})


def test_empty_guide_task_fails_in_constructor(init_1dev):
  name = "gbt_t5x_test_empty_guide"
  if name not in seqio.TaskRegistry.names():
    vocab = seqio.PassThroughVocabulary(size=tiny.VOCAB)
    seqio.TaskRegistry.add(
        name, source=seqio.FunctionDataSource(_empty_source, splits=("train",)),
        preprocessors=[],
        output_features={"inputs": seqio.Feature(vocab, add_eos=False),
                         "targets": seqio.Feature(vocab, add_eos=False)})
  cfg = dataclasses.replace(GUIDE_CFG, mixture_or_task_name=name)
  _one_line_error(lambda: trainer_1dev(init_1dev, trainer_cls=guided_trainer.GuidedTrainer,
                                       guide_dataset_cfg=cfg),
                  rf"task {name} split 'train' yields no examples")


# ============================================================================ Adafactor, float32
def adafactor_gin_specs():
  """The specs of gin/guided/adafactor.gin, as a run including that file gets them."""
  import sys
  import gin
  from gbt_t5x import gin_utils
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(sys.modules["__main__"], "train", train_lib.train, raising=False)
    gin.clear_config()
    try:
      gin_utils.parse_gin(["guided/adafactor.gin"], [
          "BATCH_SIZE = 8", "TASK_FEATURE_LENGTHS = None", "USE_CACHED_TASKS = False",
          "PACK = False", "MIXTURE_OR_TASK_MODULE = None", "GUIDE_MIXTURE_OR_TASK_NAME = 'x'"])
      return tuple(r.scoped_configurable_fn() for r in gin.query_parameter("%GUIDED_HPARAMS"))
    finally:
      gin.clear_config()


def _adafactor():
  # T5X's Adafactor with a numeric momentum and weight decay (so that b1 and weight_decay can be
  # guided); factored second moments for the tiny model's matrices.
  return optimizers.adafactor(momentum=0.5, weight_decay_rate=0.0, min_dim_size_to_factor=8)


@pytest.mark.slow
def test_adafactor_gin_specs_float32_move_without_skips_and_match_float64():
  specs = adafactor_gin_specs()
  assert {s.name for s in specs} == {"decay_rate", "b1", "clipping_threshold", "weight_decay"}
  trainer = make_trainer(specs, optimizer=_adafactor(), meta_learning_rate=META_LR)
  p = trainer._partitioner
  init = host(trainer.train_state.guided.raw)
  trainer.train(train_batches(p, 0, 20), 20)
  state = trainer.train_state
  assert int(state.guided.num_hyper_steps) == 20
  assert int(state.guided.num_skipped) == 0
  assert {k: int(v) for k, v in state.guided.skips.items()} == {s.name: 0 for s in specs}
  for name, value in host(state.guided.raw).items():
    assert not np.allclose(value, init[name], rtol=0, atol=1e-4), name
  # The setting that made float32 hypergradients NaN is present: second-moment entries that
  # never saw a gradient, still at eps = 1e-30.
  moments = [x for path, x in jax.tree_util.tree_flatten_with_path(host(state.opt_state))[0]
             if any(getattr(k, "name", None) in ("v", "v_row", "v_col") for k in path)]
  assert min(float(np.min(m)) for m in moments if m.size > 1) < 1e-25

  # The hypergradient at the next step, float32 against float64 from the same state.
  batch = next(train_batches(p, 20, 1))
  guide = data.global_batch(tiny.random_batch(GUIDE_SEED, batch_size=BATCH), p.data_sharding)
  rng = jax.random.PRNGKey(5)
  kwargs = dict(guide_loss_fn=trainer._guide_loss, **trainer.step_kwargs())
  *_, got32, _ = jax.jit(functools.partial(hypergrad.lookahead_hypergradient,
                                           base_lr=jnp.asarray(BASE_LR), **kwargs))(
      state.params, state.opt_state, state.guided.raw, batch, guide, rng)
  got32 = host(got32)
  with float64_model():
    trainer64 = make_trainer(specs, optimizer=_adafactor(), meta_learning_rate=META_LR)
    state64 = jax.tree.map(lambda x, t: jnp.asarray(np.asarray(x), t.dtype), host(state),
                           trainer64.train_state)
    kwargs64 = dict(guide_loss_fn=trainer64._guide_loss, **trainer64.step_kwargs())
    *_, want, _ = jax.jit(functools.partial(hypergrad.lookahead_hypergradient,
                                            base_lr=jnp.asarray(BASE_LR), **kwargs64))(
        state64.params, state64.opt_state, state64.guided.raw, batch, guide, rng)
    want = host(want)
  for name in want:
    assert want[name].dtype == np.float64 and np.all(np.isfinite(got32[name])), name
    assert np.linalg.norm(got32[name] - want[name]) <= 1e-3 * np.linalg.norm(want[name]), (
        name, got32[name], want[name])


# ============================================================================ the one model step
def test_nan_train_loss_in_a_guided_step_is_skipped_and_counted(init_1dev):
  trainer = trainer_1dev(init_1dev)
  p = trainer._partitioner
  warm_start(trainer)
  before = host(trainer.train_state)
  batch = tiny.random_batch(1, batch_size=BATCH, with_data_ids=NUM_IDS)
  batch["poison"] = np.full((BATCH,), np.nan, np.float32)
  metrics = trainer.train(iter([data.global_batch(batch, p.data_sharding)]), 1)
  after = host(trainer.train_state)
  assert trainer.guide_calls == [1]  # It was a guided step.
  assert metrics["nonfinite_skipped"] == 1.0
  assert int(after.num_nonfinite) == 1 and int(after.step) == 2
  assert_trees_equal(after.params, before.params)
  assert_trees_equal(after.opt_state, before.opt_state)
  assert_trees_equal(after.guided, before.guided)  # No meta step either.
  # The run goes on: the next guided step moves params and values.
  trainer.train(train_batches(p, 2, 1), 1)
  assert not tiny.params_close(host(trainer.train_state.params), after.params, atol=0, rtol=0)
  assert int(trainer.train_state.guided.num_hyper_steps) == 1


def test_replayed_adafactor_b1_schedule_sets_momentum(init_1dev):
  from gbt_t5x.train import trainer as trainer_lib
  p = PjitPartitioner(devices=jax.devices()[:1])

  def run(optimizer, schedules):
    model = tiny.tiny_model(optimizer)
    state, axes = train_lib.initial_train_state(model, tiny.INPUT_SHAPES, p,
                                                jax.random.PRNGKey(0))
    t = trainer_lib.Trainer(model=model, train_state=state, partitioner=p, eval_names=[],
                            summary_dir=None, train_state_axes=axes, rng=jax.random.PRNGKey(1),
                            learning_rate_fn=lambda step: BASE_LR, log_every=1000,
                            print_fn=lambda s: None, hyperparam_schedules=schedules)
    metrics = t.train(train_batches(p, 0, 3), 3)
    return host(t.train_state), metrics

  replayed, metrics = run(optimizers.adafactor(momentum=0.5),
                          {"b1": lambda step: jnp.where(step < 2, 0.7, 0.2)})
  assert metrics["hp/b1"] == pytest.approx((0.7 + 0.7 + 0.2) / 3, rel=1e-6)
  assert float(replayed.opt_state.hyperparams["momentum"]) == pytest.approx(0.2)
  constant, _ = run(optimizers.adafactor(momentum=0.5), {"b1": lambda step: 0.7})
  reference, _ = run(optimizers.adafactor(momentum=0.7), {})
  assert_trees_equal(constant.params, reference.params)  # b1 is the optimizer's momentum.
  assert not tiny.params_close(replayed.params, reference.params, atol=0, rtol=0)


@pytest.mark.slow
def test_microbatched_guided_run_equals_one_pass(init_1dev):
  whole = trainer_1dev(init_1dev)
  split = trainer_1dev(init_1dev, num_microbatches=4)
  for trainer in (whole, split):
    warm_start(trainer)
    trainer.train(train_batches(trainer._partitioner, 1, 3), 3)
  a, b = host(split.train_state), host(whole.train_state)
  assert int(a.guided.num_hyper_steps) == 3 and int(a.guided.num_skipped) == 0
  assert_trees_close(a.params, b.params, rtol=1e-4)
  assert_trees_close(a.guided.raw, b.guided.raw, rtol=1e-4)
  assert_trees_close(a.guided.meta_opt_state, b.guided.meta_opt_state, rtol=1e-3)


@pytest.fixture(scope="module")
def fd_setup_microbatched():
  """As `fd_setups['adamw']`, with the batch split into 4 microbatches (float64)."""
  make_opt, specs = FD_CONFIGS["adamw"]
  with float64_model():
    trainer = make_trainer(specs, optimizer=make_opt(), num_microbatches=4)
    assert trainer.step_kwargs()["num_microbatches"] == 4
    return build_fd_setup(trainer)


@pytest.mark.slow
@pytest.mark.parametrize("name", [s.name for s in FD_CONFIGS["adamw"][1]])
def test_microbatched_hypergradient_matches_central_differences(fd_setup_microbatched, name):
  s = fd_setup_microbatched
  with float64_model():
    fd = _central_difference(s, name)
  got = s.hypergrads[name]
  assert got.dtype == np.float64 and np.linalg.norm(fd) > 1e-6
  assert np.linalg.norm(got - fd) <= FD_RTOL * np.linalg.norm(fd), (name, got, fd)


@pytest.mark.slow
def test_adafactor_gin_specs_bfloat16_activations_do_not_skip():
  """bfloat16 activations (float32 params and optimizer state): finite hypergradients too."""
  specs = adafactor_gin_specs()
  p = PjitPartitioner(devices=jax.devices()[:1])
  model = tiny.tiny_model(_adafactor(), dtype="bfloat16")
  state, axes = train_lib.initial_train_state(model, tiny.INPUT_SHAPES, p, jax.random.PRNGKey(0))
  trainer = SyntheticGuideTrainer(
      model=model, train_state=state, partitioner=p, eval_names=[], summary_dir=None,
      train_state_axes=axes, rng=jax.random.PRNGKey(1), learning_rate_fn=lambda step: BASE_LR,
      log_every=1000, print_fn=lambda s: None, guided_hparams=specs,
      guide_dataset_cfg=GUIDE_CFG, meta_learning_rate=META_LR)
  init = host(trainer.train_state.guided.raw)
  trainer.train(train_batches(p, 0, 8), 8)
  guided = host(trainer.train_state.guided)
  assert int(guided.num_hyper_steps) == 8 and int(guided.num_skipped) == 0
  for name, value in guided.raw.items():
    assert not np.allclose(value, init[name], rtol=0, atol=1e-4), name


# ============================================================================ long horizon
FORWARD_SPECS = (GuidedHParam("learning_rate", 1.0, "exp", lower=0.01, upper=100.0),
                 GuidedHParam("b1", 0.8, "sigmoid", lower=0.0, upper=0.999),
                 GuidedHParam("label_smoothing", 0.1, "sigmoid", lower=0.0, upper=0.5))


@pytest.mark.slow
def test_forward_horizon_with_hyper_step_every_matches_finite_differences():
  """Tangents carried by the trainer over k = 3 model steps (2 plain, then a guided one) give
  the central finite difference of the guide loss after those 3 steps (float64, mu = 1)."""
  k = 3
  with float64_model():
    trainer = make_trainer(FORWARD_SPECS, optimizer=FD_CONFIGS["adamw"][0](), horizon="forward",
                           mu=1.0, hyper_step_every=k, meta_learning_rate=META_LR)
    p = trainer._partitioner
    warm_start(trainer)  # Step 0 (guided with k = 3 when run by `train`; here a plain step).
    fresh = forward.init_tangents(FORWARD_SPECS, trainer.train_state.params,
                                  trainer.train_state.opt_state)
    trainer.train_state = trainer.train_state.replace(tangents=fresh)
    start = host(trainer.train_state)
    trainer.train(train_batches(p, 1, k), k)
    assert trainer.guide_calls == [3] and int(trainer.train_state.guided.num_hyper_steps) == 1
    # After one meta Adam step its first moment is (1 - b1) * hypergradient.
    adam = next(x for x in jax.tree.leaves(
        trainer.train_state.guided.meta_opt_state,
        is_leaf=lambda x: isinstance(x, optax.ScaleByAdamState))
                if isinstance(x, optax.ScaleByAdamState))
    got = {n: np.asarray(v) / 0.1 for n, v in host(adam.mu).items()}

    kwargs = {n: v for n, v in trainer.step_kwargs().items() if n != "specs"}
    batches = list(train_batches(p, 1, k))
    guide = data.global_batch(tiny.random_batch(GUIDE_SEED, batch_size=BATCH), p.data_sharding)
    guide = dict(guide, poison=jnp.zeros((BATCH,)))

    @jax.jit
    def composed(raw):
      params, opt_state = start.params, start.opt_state
      for i, batch in enumerate(batches):
        rng = jax.random.fold_in(jax.random.PRNGKey(1), 1 + i)
        params, opt_state, _ = hypergrad.plain_step(
            params, opt_state, specs_lib.effective(FORWARD_SPECS, raw), batch, rng,
            jnp.asarray(BASE_LR), **kwargs)
      return trainer._guide_loss(params, guide)

    raw = host(start.guided.raw)
    for name in raw:
      fd = float(central_differences(composed, raw, name, FD_STEP))
      assert abs(fd) > 1e-6, (name, fd)
      assert abs(got[name] - fd) <= FD_RTOL * abs(fd), (name, got[name], fd)


def test_forward_horizon_bad_settings_fail_before_any_step(init_1dev):
  _one_line_error(lambda: trainer_1dev(init_1dev, horizon="forward", mu=1.5), r"mu must be in")
  _one_line_error(lambda: trainer_1dev(init_1dev, horizon="forward", num_microbatches=2),
                  r"does not support num_microbatches")
  _one_line_error(lambda: trainer_1dev(init_1dev, horizon="long"), r"horizon must be one of")


@pytest.mark.slow
def test_forward_horizon_resume_equals_uninterrupted_run(init_1dev, tmp_path):
  def fresh():
    return trainer_1dev(init_1dev, specs=FORWARD_SPECS, horizon="forward", mu=0.9,
                        hyper_step_every=2)

  full = fresh()
  full.train(train_batches(full._partitioner, 0, 4), 4)
  half = fresh()
  half.train(train_batches(half._partitioner, 0, 2), 2)
  ckpt = checkpoints.Checkpointer(str(tmp_path / "ckpt"))
  ckpt.save(2, half.train_state, {"data_positions": {"train": 2, **half.data_positions()}})
  ckpt.wait_until_finished()
  resumed = fresh()
  target = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        resumed.train_state, resumed.train_state_axes)
  resumed.train_state, meta = ckpt.restore(2, target)
  resumed.restore_data_positions(meta["data_positions"])
  resumed.train(train_batches(resumed._partitioner, 2, 2), 2)
  a, b = host(resumed.train_state), host(full.train_state)
  assert_trees_equal(a.tangents, b.tangents)
  assert_trees_equal(a.params, b.params)
  assert_trees_equal(a.guided, b.guided)
  assert int(a.guided.num_hyper_steps) == 2

  # A checkpoint of a greedy run cannot silently start a long-horizon run mid-way.
  greedy = trainer_1dev(init_1dev, specs=FORWARD_SPECS)
  greedy.train(train_batches(greedy._partitioner, 0, 1), 1)
  ckpt2 = checkpoints.Checkpointer(str(tmp_path / "greedy"))
  ckpt2.save(1, greedy.train_state, {"data_positions": {"train": 1}})
  ckpt2.wait_until_finished()
  with pytest.raises(ValueError) as info:
    ckpt2.restore(1, target)
  assert "\n" not in str(info.value) and "tangents" in str(info.value)


@pytest.mark.parametrize("guard", hypergrad.NON_FINITE_GUARDS)
def test_guided_run_with_frozen_values_trains_as_the_plain_trainer(init_1dev, guard, monkeypatch):
  """Meta learning rate 0: every model step of a GuidedTrainer (guided every 2nd step, plain at
  the guided values in between) is bit for bit the plain Trainer's step at the same values, so
  guided and plain runs differ only by what the guide moves, not through their plumbing: the
  guided step takes its gradient and its guarded update from the plain step's own functions
  (`hypergrad.train_loss_gradients`, `hypergrad.guarded_update`). Optimizer-side (LR, b1) and
  loss-side (label smoothing: the guided step's train pass carries a tangent) values alike.

  The plain run replays the guided run's initial effective values as constant schedules: the
  optimizer's own b1 = 0.9 is not among them (its raw value maps back through the sigmoid to
  0.89999992 in float32), so a plain run at the optimizer's own values differs by that rounding.
  """
  from gbt_t5x.train import trainer as trainer_lib
  monkeypatch.setattr(hypergrad, "NON_FINITE_GUARD", guard)  # either guard (read when traced)
  model, fresh, axes, p = init_1dev
  specs = (GuidedHParam("learning_rate", 1.0, "exp", lower=0.01, upper=100.0),
           GuidedHParam("b1", 0.9, "sigmoid", lower=0.0, upper=0.999),
           GuidedHParam("label_smoothing", 0.1, "sigmoid", lower=0.0, upper=0.5))
  guided = trainer_1dev(init_1dev, specs=specs, meta_learning_rate=0.0, hyper_step_every=2)
  frozen = host(specs_lib.effective(specs, guided.train_state.guided.raw))
  schedules = {name: (lambda step, v=value: jnp.asarray(v)) for name, value in frozen.items()}
  plain = trainer_lib.Trainer(model=model, train_state=jax.tree.map(jnp.copy, fresh),
                              partitioner=p, eval_names=[], summary_dir=None,
                              train_state_axes=axes, rng=jax.random.PRNGKey(1),
                              learning_rate_fn=lambda step: BASE_LR, log_every=1000,
                              print_fn=lambda s: None, hyperparam_schedules=schedules)
  logged = {"guided": [], "plain": []}
  for name, trainer in (("guided", guided), ("plain", plain)):
    for batch in train_batches(p, 0, 4):
      report = trainer.train(iter([batch]), 1)
      logged[name].append([report[k] for k in ("loss", "train_loss", "accuracy")])
  assert guided.guide_calls == [0, 2]  # two guided steps happened
  np.testing.assert_array_equal(np.asarray(logged["guided"]), np.asarray(logged["plain"]))
  got, want = host(guided.train_state), host(plain.train_state)
  for a, b in zip(jax.tree.leaves((got.params, got.opt_state)),
                  jax.tree.leaves((want.params, want.opt_state))):
    np.testing.assert_array_equal(a, b)
  moved = jax.tree.leaves(jax.tree.map(lambda a, b: np.max(np.abs(a - b)), got.params,
                                       host(fresh.params)))
  assert max(moved) > 1e-4  # the runs trained (equality is not of two untouched inits)


def test_the_guard_mode_does_not_change_a_runs_numbers(init_1dev, monkeypatch):
  """Plain Trainer runs under the 'where' and the 'cond' non-finite guard (the default since
  issue 39) log the same losses and end in the same state, bit for bit: switching the default
  changes memory and time, not results (runs recorded under either compare)."""
  from gbt_t5x.train import trainer as trainer_lib
  model, fresh, axes, p = init_1dev
  logged, states = {}, {}
  for guard in hypergrad.NON_FINITE_GUARDS:
    monkeypatch.setattr(hypergrad, "NON_FINITE_GUARD", guard)
    plain = trainer_lib.Trainer(model=model, train_state=jax.tree.map(jnp.copy, fresh),
                                partitioner=p, eval_names=[], summary_dir=None,
                                train_state_axes=axes, rng=jax.random.PRNGKey(1),
                                learning_rate_fn=lambda step: BASE_LR, log_every=1000,
                                print_fn=lambda s: None)
    logged[guard] = [[plain.train(iter([b]), 1)[k] for k in ("loss", "accuracy")]
                     for b in train_batches(p, 0, 4)]
    states[guard] = host(plain.train_state)
  np.testing.assert_array_equal(np.asarray(logged["where"]), np.asarray(logged["cond"]))
  for a, b in zip(jax.tree.leaves((states["where"].params, states["where"].opt_state)),
                  jax.tree.leaves((states["cond"].params, states["cond"].opt_state))):
    np.testing.assert_array_equal(a, b)
