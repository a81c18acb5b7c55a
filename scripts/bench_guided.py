"""Benchmark: cost of the fused guided step against the plain step, T5 v1.1 tiny/small + AdamW.

Measured side by side in one run on one device (dropout off, synthetic full-length batches):

  plain     the jitted plain `Trainer._partitioned_train_step` (AdamW).
  guide     jitted `value_and_grad(model.guide_loss_fn)` on a guide batch (full, and 1/4 size).
  floor     plain + guide (full): what a guided step cannot beat without changing the method.
  guided    `GuidedTrainer._partitioned_guided_step` (the fused `hypergrad.guided_step`, jitted
            and donating exactly as the trainer does), one per configuration below;
  plain_g   `GuidedTrainer._partitioned_train_step` (the plain step at guided values, used on the
            steps without a hyper step).

Configurations and targets (AdamW, float32 unless said otherwise):
  (a) LR multiplier + b1 + b2, every step, guide batch = train batch, the default derivative
      ('auto': AdamW's closed form): guided / floor <= 1.10, memory guided / plain <= 1.20.
  (b) as (a) with a 1/4-size guide batch: guided / plain <= 1.50.
  (c) as (a) every 10 steps: (9 plain_g + 1 guided) / (10 plain) <= 1.08 (composed from the
      measured step times).
  (d) LR + b1 + label smoothing + data weights (4 ids), every step, equal batches:
      guided / floor <= 1.2, memory guided / plain <= 1.3; (d') the same with
      `recompute_tangent`: memory below (d)'s.
  (a-vjp), (d-vjp), (d'-vjp) (a), (d), (d') with `optimizer_derivative='vjp'` (the optax
      update's VJP, the default before the closed form; no targets, for comparison).
  (g) the T5X configuration: Adafactor (factored, decay_rate 0.8, clipping 1, parameter scale),
      LR multiplier + decay_rate guided every step: guided / its floor <= 1.10, memory / its plain
      <= 1.40.
  (h) bfloat16 activations (`dtype='bfloat16'`, float32 params), configuration (a): the same
      targets as (a) against the bfloat16 plain step and floor.
  (f1), (f3) the long ('forward') hypergradient horizon (mu 0.99) for the LR alone and for
      LR + b1 + b2: guided step against the greedy one and the floor, the plain step that carries
      the tangents against the plain step, compiled memory against plain (no targets).
  (e) LR alone: the reverse-mode guided step (as (a), LR only) against a forward-mode variant.
      AdamW's update is linear in the learning rate, u(m) = m * u(1), so for the multiplier m
      dL_guide(theta + m u(1))/dm = JVP of the guide loss at theta' along u / m: one `jax.jvp` of
      the guide loss (no guide backward, no VJP of the update). Reported: forward / reverse time
      and the relative difference of the two hypergradients (d raw, same state and batches).

Memory rows (a), (g) "exact-derivative floor": (plain + one params copy) / plain, an estimate of
where an exact b1 / b2 / decay_rate hypergradient can get to (`PARAMS_COPY`); no target.

With --memory_only nothing is timed: only the compiled-memory rows are printed (deterministic,
so they can be taken on a busy machine).

Timing: the configurations of a size are taken in groups (greedy; loss-side; forward horizon
f1, f3; Adafactor; bfloat16), so that only one group's train states are held at a time (all at
once do not fit 24 GiB at T5.1.1 small). A group's functions are compiled
(`jit(...).lower(...).compile()`), then timed round-robin with the plain step and the guide
forward/backward (one call of each per round, after a warm-up round), each call ended by
`jax.block_until_ready`; the median over rounds is reported. Round-robin spreads a shared
machine's load drift evenly over the compared functions; a later group's times are scaled by the
first group's plain-step median over its own (printed as `drift`, 1.00 on a quiet machine).
Memory is `compiled.memory_analysis()` argument + output + temp − alias bytes (donated state
aliases its output): deterministic, from XLA's buffer assignment, not a measured RSS.

Where a target is missed (or with --profile), a breakdown is printed: train forward+backward,
optimizer update alone and update + its VJP, guide forward+backward, network forward alone and a
forward JVP (primal + tangent; tangent forward ~ JVP − forward, what loss-side kinds add), and the
guide-loss JVP of (e).

Usage:
  .venv/bin/python scripts/bench_guided.py --quick          # tiny only, small shapes, < 1 min
  .venv/bin/python scripts/bench_guided.py                  # tiny (B32, 64/40), small (B8, 64/32)
  .venv/bin/python scripts/bench_guided.py --sizes small --iters 3 --small_shape 8,128,64
  .venv/bin/python scripts/bench_guided.py --memory_only    # compiled memory only, no timing
  .venv/bin/python scripts/bench_guided.py --sizes small --groups f3   # one group per process
  .venv/bin/python scripts/bench_guided.py --combine small a.log f1.log f3.log

--combine SIZE LOG... rebuilds SIZE's table from the printed output of several `--groups` runs
(nothing is compiled or timed): each log's step times are scaled by the first log's plain-step
time over its own (printed as `drift`), as the groups of one run are; the rows whose two steps
come from different logs (e.g. (f3) against the greedy step) therefore compare processes.

Not a test; prints a table and a final `ratio:` line.
"""
from __future__ import annotations

import argparse
import collections
import gc
import json
import time
from typing import Any, Callable, Sequence

import bench_common as bc  # first: sets XLA_FLAGS before jax starts

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gbt_t5x.guided import hypergrad
from gbt_t5x.guided import meta as meta_lib
from gbt_t5x.guided import optimizer_derivatives as opt_derivs
from gbt_t5x.guided import specs as specs_lib
from gbt_t5x.guided.specs import GuidedHParam
from gbt_t5x.train import guided_trainer as guided_trainer_lib
from gbt_t5x.train import optimizers
from gbt_t5x.train import trainer as trainer_lib

NUM_DATA_IDS = 4
BASE_LR = 1e-3
GUIDED_DEFAULT_SHAPES = {"tiny": (32, 64, 40), "small": (8, 64, 32), "base": (8, 64, 32)}

LR = GuidedHParam("learning_rate", 1.0, "exp", lower=0.01, upper=100.0)
B1 = GuidedHParam("b1", 0.9, "sigmoid", lower=0.0, upper=0.9999)
B2 = GuidedHParam("b2", 0.999, "sigmoid", lower=0.5, upper=0.99999)
LS = GuidedHParam("label_smoothing", 0.1, "sigmoid", lower=0.0, upper=0.5)
DW = GuidedHParam("data_weights", 1.0, "exp", shape=(NUM_DATA_IDS,))
DECAY_RATE = GuidedHParam("decay_rate", 0.8, "sigmoid", lower=0.1, upper=1.0)
# The size of one copy of the params (a row of the memory table): an exact b1 / b2 /
# decay_rate hypergradient keeps one such copy (the train gradient) through the guide pass, so
# (plain + it) / plain estimates the floor of rows (a) and (g) (docs/DESIGN.md, the guided step's
# memory).
PARAMS_COPY = "one params copy"

# Timing groups (see the module docstring): --groups key -> name printed.
GROUPS = {"greedy": "greedy (a), (b), (e)", "loss_side": "loss-side (d)",
          "f1": "forward horizon (f1)", "f3": "forward horizon (f3)", "g": "Adafactor (g)",
          "h": "bfloat16 (h)"}


class BenchGuidedTrainer(guided_trainer_lib.GuidedTrainer):
  """`GuidedTrainer` without a SeqIO guide task: the benchmark feeds guide batches itself."""

  def _check_guide_data(self) -> None:
    pass


def copy_state(state: Any) -> Any:
  """A fresh copy (the steps donate their state argument)."""
  return jax.tree.map(lambda x: x.copy() if isinstance(x, jax.Array) else x, state)


# ----------------------------------------------------------------------------- timing
def time_round_robin(fns: dict[str, Callable[[], Any]], iters: int, warmup: int = 1
                     ) -> dict[str, float]:
  """Median seconds per call of each fn, timed in interleaved rounds (see module docstring)."""
  for _ in range(warmup):
    for fn in fns.values():
      jax.block_until_ready(fn())
  samples: dict[str, list[float]] = {k: [] for k in fns}
  for _ in range(iters):
    for name, fn in fns.items():
      start = time.perf_counter()
      jax.block_until_ready(fn())
      samples[name].append(time.perf_counter() - start)
  return {k: float(np.median(v)) for k, v in samples.items()}


# ----------------------------------------------------------------------------- forward mode (e)
def forward_mode_lr_step(trainer: BenchGuidedTrainer) -> Callable:
  """(state, batch, guide_batch) -> (state, metrics, hypergrads): LR-only guided step, forward mode.

  Model step exactly as `plain_step`; the hypergradient of the scalar LR multiplier m is
  JVP_theta' L_guide along u / m (AdamW's update is linear in the learning rate), chained to
  the raw value through the activation, then the same meta update as the reverse-mode step.
  """
  (spec,) = trainer.specs
  assert spec.name == specs_lib.LEARNING_RATE and spec.shape == ()
  kwargs = trainer.step_kwargs()

  def step(state, batch, guide_batch):
    rng = jax.random.fold_in(trainer._rng, state.step)
    base_lr = trainer._learning_rate_fn(state.step)
    raw = state.guided.raw
    values, act_vjp = jax.vjp(lambda r: specs_lib.effective(trainer.specs, r), dict(raw))
    h_opt, h_loss = specs_lib.split_effective(trainer.specs, values)

    def train_loss(p):
      return kwargs["loss_from_outputs"](kwargs["forward_fn"](p, batch, rng), batch,
                                         kwargs["loss_inputs_fn"](h_loss, batch))

    (loss, _), grads = jax.value_and_grad(train_loss, has_aux=True)(state.params)
    updates, opt_state = hypergrad.optimizer_update(trainer.optimizer, grads, state.opt_state,
                                                    state.params, h_opt, base_lr)
    params = optax.apply_updates(state.params, updates)
    m = values[specs_lib.LEARNING_RATE]
    direction = jax.tree.map(lambda u: u / m.astype(u.dtype), updates)
    guide_loss, d_m = jax.jvp(lambda p: trainer._guide_loss(p, guide_batch), (params,),
                              (direction,))
    (hypergrads,) = act_vjp({specs_lib.LEARNING_RATE: d_m.astype(m.dtype)})
    guided, skipped = meta_lib.apply_hypergradient(state.guided, hypergrads, trainer.specs,
                                                   trainer.meta_optimizer)
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                              guided=guided)
    return new_state, {"loss": loss, "guide_loss": guide_loss,
                       "skipped": skipped.astype(jnp.float32)}, hypergrads

  data = trainer._partitioner.data_sharding
  replicated = trainer._partitioner.replicated
  return trainer._partitioner.partition(
      step, in_shardings=(trainer.train_state_axes, data, data),
      out_shardings=(trainer.train_state_axes, replicated, replicated), donate_argnums=(0,))


def reverse_lr_hypergrads(trainer: BenchGuidedTrainer, state: Any, batch, guide_batch):
  """The reverse-mode (library) hypergradient d L_hyper / d raw for the same state and batches."""
  def fn(state, batch, guide_batch):
    rng = jax.random.fold_in(trainer._rng, state.step)
    base_lr = trainer._learning_rate_fn(state.step)
    _, _, hg, _ = hypergrad.lookahead_hypergradient(
        state.params, state.opt_state, state.guided.raw, batch, guide_batch, rng, base_lr,
        guide_loss_fn=trainer._guide_loss, **trainer.step_kwargs())
    return hg
  with trainer._partitioner.context():
    return jax.jit(fn)(state, batch, guide_batch)


# ----------------------------------------------------------------------------- profile
def profile_parts(model, state, batch, guide_batch, guide_batch_q, specs, iters: int
                  ) -> dict[str, float]:
  """Seconds of the separate pieces of a guided step (each jitted on its own)."""
  params, opt_state = state.params, state.opt_state
  optimizer = model.optimizer_def
  values = specs_lib.effective(specs, specs_lib.init_raw(specs))
  h_opt, _ = specs_lib.split_effective(specs, values)
  base_lr = jnp.float32(BASE_LR)

  train_fb = jax.jit(jax.value_and_grad(lambda p, b: model.loss_fn(p, b, None)[0]))

  @jax.jit
  def train_fb_linearize(p, b):
    # The guided step's scheme a): linearize the forward, loss-head gradient, transpose.
    outputs, lin = jax.linearize(lambda q: model.logits_fn(q, b), p)
    loss, d_out = jax.value_and_grad(lambda o: model.loss_from_logits(o, b)[0])(outputs)
    return loss, jax.linear_transpose(lin, p)(d_out)[0]
  guide_fb = jax.jit(jax.value_and_grad(model.guide_loss_fn))
  grads = train_fb(params, batch)[1]

  @jax.jit
  def update(g, hopt):
    return hypergrad.optimizer_update(optimizer, g, opt_state, params, hopt, base_lr)

  @jax.jit
  def update_and_vjp(g, hopt, cot):
    u, vjp, _ = jax.vjp(lambda g_, h_: hypergrad.optimizer_update(
        optimizer, g_, opt_state, params, h_, base_lr), g, hopt, has_aux=True)
    return u, vjp(cot)

  forward = jax.jit(lambda p, b: model.logits_fn(p, b))
  forward_jvp = jax.jit(lambda p, t, b: jax.jvp(lambda q: model.logits_fn(q, b), (p,), (t,)))
  guide_jvp = jax.jit(lambda p, t, b: jax.jvp(lambda q: model.guide_loss_fn(q, b), (p,), (t,)))
  fns = {
      "train fwd+bwd": lambda: train_fb(params, batch),
      "train fwd+bwd, linearize+transpose": lambda: train_fb_linearize(params, batch),
      "optimizer update": lambda: update(grads, h_opt),
      "update + its VJP": lambda: update_and_vjp(grads, h_opt, grads),
      "guide fwd+bwd (full)": lambda: guide_fb(params, guide_batch),
      "guide fwd+bwd (1/4)": lambda: guide_fb(params, guide_batch_q),
      "network forward": lambda: forward(params, batch),
      "forward JVP (primal+tangent)": lambda: forward_jvp(params, grads, batch),
      "guide-loss JVP (full)": lambda: guide_jvp(params, grads, guide_batch),
  }
  return time_round_robin(fns, iters, warmup=1)


# ----------------------------------------------------------------------------- (g), (h)
def variant_steps(size: str, shape: tuple[int, int, int], dtype: str, layers: int | None,
                  optimizer: Any, specs: tuple[GuidedHParam, ...], tag: str, clog: dict
                  ) -> tuple[dict[str, Callable], dict[str, int | None]]:
  """Plain step, guide forward/backward and guided step of one more configuration.

  Own model (dtype, optimizer), state and batches of the same shape; compiled (times logged in
  `clog` under `tag`). Returns (steppers named 'plain (tag)', 'guide fwd+bwd (tag)',
  'guided (tag)'; compiled memory bytes of the plain and guided steps).
  """
  batch_size, le, ld = shape
  model = bc.make_model(size, dtype, optimizer=optimizer, layers=layers)
  vocab = model.module.config.vocab_size
  partitioner = bc.one_device_partitioner()
  state0, axes = bc.initial_state(model, partitioner, le, ld)
  data = partitioner.data_sharding
  batch = bc.synthetic_batch(0, batch_size, le, ld, vocab, sharding=data)
  guide = bc.synthetic_batch(1, batch_size, le, ld, vocab, sharding=data)
  common = dict(partitioner=partitioner, eval_names=[], summary_dir=None, train_state_axes=axes,
                rng=jax.random.PRNGKey(1), learning_rate_fn=lambda step: jnp.float32(BASE_LR),
                log_every=10**9, print_fn=lambda s: None)
  plain_tr = trainer_lib.Trainer(model=model, train_state=copy_state(state0), **common)
  guided_tr = BenchGuidedTrainer(model=model, train_state=copy_state(state0), guided_hparams=specs,
                                 guide_dataset_cfg=object(), hyper_step_every=1,
                                 meta_learning_rate=3e-3, **common)
  plain_c = timed_compile(clog, f"plain_{tag}_c", plain_tr._partitioned_train_step,
                          plain_tr.train_state, batch)
  guide_c = timed_compile(clog, f"guide_{tag}_c", jax.jit(jax.value_and_grad(model.guide_loss_fn)),
                          state0.params, guide)
  guided_c = timed_compile(clog, f"{tag}_c", guided_tr._partitioned_guided_step,
                           guided_tr.train_state, batch, guide)
  steppers = {f"plain ({tag})": bc.Stepper(plain_c, plain_tr.train_state, batch),
              f"guide fwd+bwd ({tag})": lambda: guide_c(state0.params, guide),
              f"guided ({tag})": bc.Stepper(guided_c, guided_tr.train_state, batch, guide)}
  return steppers, {f"plain_{tag}": bc.memory_bytes(plain_c), tag: bc.memory_bytes(guided_c)}


# ----------------------------------------------------------------------------- one size
def _resident_gib() -> float:
  """This process's resident memory (GiB; Linux /proc, NaN elsewhere)."""
  try:
    with open("/proc/self/status") as f:
      kib = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    return kib / 2**20
  except (OSError, StopIteration, ValueError):
    return float("nan")


# name -> (XLA FLOPs, bytes accessed) of every function compiled by `timed_compile` (one size at
# a time: `bench_size` clears it), printed as the cost table.
COSTS: dict[str, tuple[float, float]] = {}


def timed_compile(log: dict, name: str, jitted: Any, *args: Any):
  start = time.perf_counter()
  out = bc.compiled(jitted, *args)
  log[name] = time.perf_counter() - start
  COSTS[name] = bc.xla_cost(out)
  return out


def cost_parts(model, state, batch, guide_batch, guide_batch_q, specs, clog: dict) -> None:
  """Compiles the pieces of a guided step on their own (as `profile_parts` times them), so
  that their XLA cost lands in `COSTS` under 'piece: NAME'."""
  params, opt_state = state.params, state.opt_state
  optimizer = model.optimizer_def
  values = specs_lib.effective(specs, specs_lib.init_raw(specs))
  h_opt, _ = specs_lib.split_effective(specs, values)
  base_lr = jnp.float32(BASE_LR)
  train_fb = jax.jit(jax.value_and_grad(lambda p, b: model.loss_fn(p, b, None)[0]))
  guide_fb = jax.jit(jax.value_and_grad(model.guide_loss_fn))
  grads = jax.eval_shape(train_fb, params, batch)[1]
  grads = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), grads)

  def update(g, hopt):
    return hypergrad.optimizer_update(optimizer, g, opt_state, params, hopt, base_lr)

  def update_and_vjp(g, hopt, cot):
    u, vjp, _ = jax.vjp(update, g, hopt, has_aux=True)
    return u, vjp(cot)

  def update_and_closed_form(g, hopt, v):
    u, new_state = update(g, hopt)
    new_params = optax.apply_updates(params, u)
    return hypergrad._closed_form_derivatives(
        opt_derivs.closed_form_of(optimizer), g, opt_state, new_state, new_params, v, hopt,
        base_lr, None, need_d_grads=True)

  forward_jvp = jax.jit(lambda p, t, b: jax.jvp(lambda q: model.logits_fn(q, b), (p,), (t,)))
  pieces = {
      "train fwd+bwd": (train_fb, params, batch),
      "guide fwd+bwd (full)": (guide_fb, params, guide_batch),
      "guide fwd+bwd (1/4)": (guide_fb, params, guide_batch_q),
      "optimizer update": (jax.jit(update), grads, h_opt),
      "update + its VJP": (jax.jit(update_and_vjp), grads, h_opt, grads),
      "update + closed form (+ d_grads)": (jax.jit(update_and_closed_form), grads, h_opt, grads),
      "network forward": (jax.jit(lambda p, b: model.logits_fn(p, b)), params, batch),
      "forward JVP (primal+tangent)": (forward_jvp, params, grads, batch),
  }
  for name, (fn, *args) in pieces.items():
    timed_compile(clog, f"piece: {name}", fn, *args)


def bench_size(size: str, shape: tuple[int, int, int], iters: int, dtype: str,
               profile: str, layers: int | None = None, memory_only: bool = False,
               only_groups: tuple[str, ...] | None = None, with_cost_parts: bool = False
               ) -> dict:
  """Compiles and times every row's steps at one size, one group of configurations at a time.

  `only_groups` (keys of `GROUPS`) runs a subset; the other groups' rows print as nan, so a
  machine too small for all of them can take them in separate processes.

  Each group (`groups` below) builds its trainers, compiles them, is timed round-robin together
  with the reference steps (plain step, guide forward/backward) and is freed before the next:
  holding every configuration's train state at once (about 25 params + moments copies) does not
  fit a 24 GiB machine at T5.1.1 small. A later group's times are scaled by the first group's
  plain-step time over its own (`drift`, printed; 1.00 on a quiet machine), so all rows share
  one reference.
  """
  batch_size, le, ld = shape
  quarter = max(1, batch_size // 4)
  model = bc.make_model(size, dtype, layers=layers)
  vocab = model.module.config.vocab_size
  partitioner = bc.one_device_partitioner()
  state0, axes = bc.initial_state(model, partitioner, le, ld)
  data = partitioner.data_sharding
  batch = bc.synthetic_batch(0, batch_size, le, ld, vocab, sharding=data)
  batch_dw = bc.synthetic_batch(0, batch_size, le, ld, vocab, NUM_DATA_IDS, sharding=data)
  guide = bc.synthetic_batch(1, batch_size, le, ld, vocab, sharding=data)
  guide_q = bc.synthetic_batch(2, quarter, le, ld, vocab, sharding=data)
  lr_fn = lambda step: jnp.float32(BASE_LR)
  common = dict(partitioner=partitioner, eval_names=[], summary_dir=None, train_state_axes=axes,
                rng=jax.random.PRNGKey(1), learning_rate_fn=lr_fn, log_every=10**9,
                print_fn=lambda s: None)

  def guided_trainer(specs, recompute_tangent=False, **options):
    return BenchGuidedTrainer(model=model, train_state=copy_state(state0),
                              guided_hparams=specs, guide_dataset_cfg=object(),
                              hyper_step_every=1, meta_learning_rate=3e-3,
                              recompute_tangent=recompute_tangent, **options, **common)

  clog: dict[str, float] = {}
  COSTS.clear()
  t_compile = time.perf_counter()
  if with_cost_parts:
    cost_parts(model, state0, batch, guide, guide_q, (LR, B1, B2), clog)
  plain_tr = trainer_lib.Trainer(model=model, train_state=copy_state(state0), **common)
  plain_c = timed_compile(clog, "plain_c", plain_tr._partitioned_train_step,
                          plain_tr.train_state, batch)
  guide_fb = jax.jit(jax.value_and_grad(model.guide_loss_fn))
  guide_c = timed_compile(clog, "guide_c", guide_fb, state0.params, guide)
  guide_q_c = timed_compile(clog, "guide_q_c", guide_fb, state0.params, guide_q)
  compile_s = time.perf_counter() - t_compile
  reference = {"plain": bc.Stepper(plain_c, plain_tr.train_state, batch),
               "guide fwd+bwd": lambda: guide_c(state0.params, guide),
               "guide fwd+bwd 1/4": lambda: guide_q_c(state0.params, guide_q)}
  mem: dict[str, int | None] = {"plain": bc.memory_bytes(plain_c),
                                PARAMS_COPY: bc.params_bytes(state0.params)}
  times: dict[str, float] = {}
  checks: dict[str, float] = {}

  def greedy_group():
    tr = {k: guided_trainer(specs, **kw) for k, (specs, kw) in {
        "a": ((LR, B1, B2), {}), "b": ((LR, B1, B2), {}),
        "a_vjp": ((LR, B1, B2), {"optimizer_derivative": "vjp"}),
        "e": ((LR,), {}), "e_fwd": ((LR,), {})}.items()}
    a_c = timed_compile(clog, "a_c", tr["a"]._partitioned_guided_step, tr["a"].train_state,
                        batch, guide)
    a_plain_c = timed_compile(clog, "a_plain_c", tr["a"]._partitioned_train_step,
                              tr["a"].train_state, batch)
    b_c = timed_compile(clog, "b_c", tr["b"]._partitioned_guided_step, tr["b"].train_state,
                        batch, guide_q)
    a_vjp_c = timed_compile(clog, "a_vjp_c", tr["a_vjp"]._partitioned_guided_step,
                            tr["a_vjp"].train_state, batch, guide)
    e_c = timed_compile(clog, "e_c", tr["e"]._partitioned_guided_step, tr["e"].train_state,
                        batch, guide)
    e_fwd_c = timed_compile(clog, "e_fwd_c", forward_mode_lr_step(tr["e_fwd"]),
                            tr["e_fwd"].train_state, batch, guide)
    group_mem = {"a": bc.memory_bytes(a_c), "a_vjp": bc.memory_bytes(a_vjp_c),
                 "e_rev": bc.memory_bytes(e_c), "e_fwd": bc.memory_bytes(e_fwd_c)}
    if not memory_only:  # (e)'s two hypergradients on identical state and batches.
      state_e = copy_state(tr["e_fwd"].train_state)
      rev = reverse_lr_hypergrads(tr["e_fwd"], state_e, batch, guide)[specs_lib.LEARNING_RATE]
      _, _, fwd = e_fwd_c(copy_state(state_e), batch, guide)
      fwd = fwd[specs_lib.LEARNING_RATE]
      checks.update(rev=float(rev), fwd=float(fwd),
                    rel_diff=float(jnp.abs(fwd - rev) / jnp.maximum(jnp.abs(rev), 1e-30)))
    box_a = {"state": tr["a"].train_state}
    return {
        "guided (a)": _SharedStepper(a_c, box_a, batch, guide),
        "plain_g (a)": _SharedStepper(a_plain_c, box_a, batch),
        "guided (b)": bc.Stepper(b_c, tr["b"].train_state, batch, guide_q),
        "guided (a) vjp": bc.Stepper(a_vjp_c, tr["a_vjp"].train_state, batch, guide),
        "guided (e) reverse": bc.Stepper(e_c, tr["e"].train_state, batch, guide),
        "guided (e) forward": _DropThird(e_fwd_c, tr["e_fwd"].train_state, batch, guide),
    }, group_mem

  def loss_side_group():
    tr = {"d": guided_trainer((LR, B1, LS, DW)),
          "dr": guided_trainer((LR, B1, LS, DW), recompute_tangent=True),
          "d_vjp": guided_trainer((LR, B1, LS, DW), optimizer_derivative="vjp"),
          "dr_vjp": guided_trainer((LR, B1, LS, DW), recompute_tangent=True,
                                   optimizer_derivative="vjp")}
    c = {k: timed_compile(clog, f"{k}_c", t._partitioned_guided_step, t.train_state, batch_dw,
                          guide) for k, t in tr.items()}
    names = {"d": "guided (d)", "dr": "guided (d) recompute", "d_vjp": "guided (d) vjp",
             "dr_vjp": "guided (d) recompute, vjp"}
    return ({names[k]: bc.Stepper(c[k], tr[k].train_state, batch_dw, guide) for k in tr},
            {k: bc.memory_bytes(c[k]) for k in tr})

  def forward_horizon_group(k: str, specs: tuple[GuidedHParam, ...]):
    # The tangents (params + moments per guided scalar) make these the largest states: one
    # trainer per group, its guided and plain steps sharing one state.
    tr = guided_trainer(specs, horizon="forward", mu=0.99)
    f_c = timed_compile(clog, f"{k}_c", tr._partitioned_guided_step, tr.train_state, batch,
                        guide)
    f_plain_c = timed_compile(clog, f"{k}_plain_c", tr._partitioned_train_step, tr.train_state,
                              batch)
    box = {"state": tr.train_state}
    return ({f"guided ({k}) horizon": _SharedStepper(f_c, box, batch, guide),
             f"plain_g ({k}) horizon": _SharedStepper(f_plain_c, box, batch)},
            {k: bc.memory_bytes(f_c)})

  builders = {
      "greedy": greedy_group,
      "loss_side": loss_side_group,
      "f1": lambda: forward_horizon_group("f1", (LR,)),
      "f3": lambda: forward_horizon_group("f3", (LR, B1, B2)),
      "g": lambda: variant_steps(size, shape, dtype, layers, optimizers.adafactor(),
                                 (LR, DECAY_RATE), "g", clog),
      "h": lambda: variant_steps(size, shape, "bfloat16", layers, None, (LR, B1, B2), "h", clog),
  }
  groups = {GROUPS[k]: build for k, build in builders.items()
            if only_groups is None or k in only_groups}
  for name, build in groups.items():
    start = time.perf_counter()
    steppers, group_mem = build()
    compile_s += time.perf_counter() - start
    mem.update(group_mem)
    if not memory_only:
      t = time_round_robin({**reference, **steppers}, iters, warmup=1)
      if not times:
        times.update({k: t[k] for k in reference})
      drift = times["plain"] / t["plain"]
      times.update({k: t[k] * drift for k in steppers})
      print(f"  {size} group {name}: timed; drift x{drift:.2f}", flush=True)
    else:
      print(f"  {size} group {name}: compiled", flush=True)
    del steppers
    gc.collect()
    print(f"  {size} group {name}: freed; resident {_resident_gib():.1f} GiB", flush=True)

  if memory_only:
    return dict(size=size, shape=shape, quarter=quarter, times={}, mem=mem,
                rows=_rows({}, mem, memory_only=True), parts=None, compile_s=compile_s,
                clog=clog, params=bc.count_params(state0.params), rev=None, fwd=None,
                costs=dict(COSTS))
  rows = _rows(times, mem, rel_diff=checks.get("rel_diff", float("nan")))
  missed = any(r["met"] is False for r in rows)
  parts = None
  if profile == "always" or (profile == "auto" and missed):
    parts = profile_parts(model, state0, batch, guide, guide_q, (LR, B1, B2), iters)
  return dict(size=size, shape=shape, quarter=quarter, times=times, mem=mem, rows=rows,
              parts=parts, compile_s=compile_s, clog=clog, params=bc.count_params(state0.params),
              rev=checks.get("rev", float("nan")), fwd=checks.get("fwd", float("nan")),
              rel_diff=checks.get("rel_diff", float("nan")), costs=dict(COSTS))


def _rows(t: dict[str, float], mem: dict[str, int | None], *, rel_diff: float | None = None,
          memory_only: bool = False) -> list[dict]:
  """The table rows (configuration, measure, value, target, met) from step times and memory.

  `t`: median seconds by stepper name; `mem`: compiled bytes by configuration key. With
  `memory_only`, only the compiled-memory rows (t may be empty).
  """
  t = collections.defaultdict(lambda: float("nan"), t)  # groups not run: nan rows

  def mem_ratio(key: str, base: str = "plain") -> float:
    return mem[key] / mem[base] if mem.get(key) and mem.get(base) else float("nan")

  def exact_floor(base: str) -> float:
    """(plain + one params-sized copy) / plain: see `PARAMS_COPY`."""
    return 1.0 + mem_ratio(PARAMS_COPY, base)

  def floor(tag: str = "") -> float:
    suffix = f" ({tag})" if tag else ""
    return t[f"plain{suffix}"] + t[f"guide fwd+bwd{suffix}"]

  memory_rows = [
      dict(cfg="(a) memory", metric="guided / plain (compiled bytes)", value=mem_ratio("a"),
           target=1.2),
      dict(cfg="(a-vjp) memory", metric="guided / plain (compiled bytes)",
           value=mem_ratio("a_vjp"), target=None),
      dict(cfg="(a) exact-derivative floor", metric="(plain + 1 params copy) / plain",
           value=exact_floor("plain"), target=None),
      dict(cfg="(d) memory", metric="guided / plain (compiled bytes)", value=mem_ratio("d"),
           target=1.3),
      dict(cfg="(d-vjp) memory", metric="guided / plain (compiled bytes)",
           value=mem_ratio("d_vjp"), target=None),
      dict(cfg="(d') memory", metric="guided / plain (compiled bytes)", value=mem_ratio("dr"),
           target=None),
      dict(cfg="(d') memory vs (d)", metric="(d') / (d) (compiled bytes)",
           value=mem_ratio("dr", "d"), target=0.999),
      dict(cfg="(d'-vjp) memory", metric="guided / plain (compiled bytes)",
           value=mem_ratio("dr_vjp"), target=None),
      dict(cfg="(g) Adafactor memory", metric="guided / plain (compiled bytes)",
           value=mem_ratio("g", "plain_g"), target=1.4),
      dict(cfg="(g) exact-derivative floor", metric="(plain + 1 params copy) / plain",
           value=exact_floor("plain_g"), target=None),
      dict(cfg="(h) bfloat16 memory", metric="guided / plain (compiled bytes)",
           value=mem_ratio("h", "plain_h"), target=1.2),
      dict(cfg="(f1) memory", metric="guided / plain (compiled bytes)", value=mem_ratio("f1"),
           target=None),
      dict(cfg="(f3) memory", metric="guided / plain (compiled bytes)", value=mem_ratio("f3"),
           target=None),
  ]
  rows = memory_rows
  if not memory_only:
    rows = [
        dict(cfg="(a) lr+b1+b2 every step", metric="guided / (plain + guide fb)",
             value=t["guided (a)"] / floor(), target=1.1),
        dict(cfg="(a-vjp) (a), VJP derivative", metric="guided / (plain + guide fb)",
             value=t["guided (a) vjp"] / floor(), target=None),
        dict(cfg="(b) 1/4 guide batch", metric="guided / plain",
             value=t["guided (b)"] / t["plain"], target=1.5),
        dict(cfg="(c) every 10 steps", metric="(9 plain_g + guided) / 10 plain",
             value=(9 * t["plain_g (a)"] + t["guided (a)"]) / (10 * t["plain"]), target=1.08),
        dict(cfg="(d) lr+b1+ls+dw every step", metric="guided / (plain + guide fb)",
             value=t["guided (d)"] / floor(), target=1.2),
        dict(cfg="(d-vjp) (d), VJP derivative", metric="guided / (plain + guide fb)",
             value=t["guided (d) vjp"] / floor(), target=None),
        dict(cfg="(d') (d), recompute_tangent", metric="guided / (plain + guide fb)",
             value=t["guided (d) recompute"] / floor(), target=None),
        dict(cfg="(d'-vjp) (d'), VJP derivative", metric="guided / (plain + guide fb)",
             value=t["guided (d) recompute, vjp"] / floor(), target=None),
        dict(cfg="(g) Adafactor lr+decay_rate", metric="guided / (plain + guide fb)",
             value=t["guided (g)"] / floor("g"), target=1.1),
        dict(cfg="(h) bfloat16 lr+b1+b2", metric="guided / (plain + guide fb)",
             value=t["guided (h)"] / floor("h"), target=1.1),
        dict(cfg="(e) lr, forward mode", metric="forward / reverse guided step",
             value=t["guided (e) forward"] / t["guided (e) reverse"], target=None),
        dict(cfg="(e) hypergradient", metric="|fwd - rev| / |rev|", value=rel_diff, target=None),
    ]
    for k, label in (("f1", "lr"), ("f3", "lr+b1+b2")):
      greedy = t["guided (e) reverse" if k == "f1" else "guided (a)"]
      rows += [
          dict(cfg=f"({k}) forward horizon, {label}", metric="guided / greedy guided",
               value=t[f"guided ({k}) horizon"] / greedy, target=None),
          dict(cfg=f"({k}) forward horizon, {label}", metric="guided / (plain + guide fb)",
               value=t[f"guided ({k}) horizon"] / floor(), target=None),
          dict(cfg=f"({k}) forward horizon, {label}", metric="plain step with tangents / plain",
               value=t[f"plain_g ({k}) horizon"] / t["plain"], target=None),
      ]
    rows += memory_rows
  for r in rows:
    r["met"] = (None if r["target"] is None or np.isnan(r["value"])
                else bool(r["value"] <= r["target"]))
  return rows


def _read_log(path: str, size: str) -> tuple[dict[str, float], dict[str, float], float]:
  """(step seconds, compiled bytes, (e)'s |fwd - rev| / |rev| or nan) of `size` in a log of this
  script's output (its '== SIZE' section: the 'step ms' and 'step compiled MiB' tables)."""
  times: dict[str, float] = {}
  mem: dict[str, float] = {}
  rel_diff, table, in_size = float("nan"), None, False
  with open(path) as f:
    for line in f:
      text = line.strip()
      if line.startswith("== "):
        in_size = line.startswith(f"== {size}:")
        continue
      if not in_size:
        continue
      if text.startswith("step") and text.endswith(" ms"):
        table = (times, 1e-3)
      elif text.startswith("step") and text.endswith("compiled MiB"):
        table = (mem, 2.0**20)
      elif not text or text.startswith(("configuration", "compile s:")):
        table = None
      elif text.startswith("(e) hypergradient d/d raw lr:") and "relative difference" in text:
        rel_diff = float(text.rsplit(maxsplit=1)[1])
      elif table is not None and not text.startswith("-"):
        name, value = text.rsplit(maxsplit=1)
        if value != "nan":
          table[0][name] = float(value) * table[1]
  if not times and not mem:
    raise SystemExit(f"--combine: no '== {size}' step tables in {path}")
  return times, mem, rel_diff


def combine_logs(size: str, paths: Sequence[str]) -> dict:
  """One table of `size` from several `--groups` runs' logs (see the module docstring)."""
  times: dict[str, float] = {}
  mem: dict[str, float] = {}
  rel_diff = float("nan")
  for path in paths:
    t, m, rd = _read_log(path, size)
    if "plain" not in t:
      raise SystemExit(f"--combine: {path} has no plain-step time for {size}")
    drift = times["plain"] / t["plain"] if times else 1.0
    print(f"  {path}: {len(t)} step times, drift x{drift:.2f}")
    for k, v in t.items():
      times.setdefault(k, v * drift)
    for k, v in m.items():
      mem.setdefault(k, v)
    rel_diff = rd if np.isnan(rel_diff) else rel_diff
  return dict(size=size, rows=_rows(times, mem, rel_diff=rel_diff))


class _SharedStepper:
  """Like `bc.Stepper`, but the state lives in `box` (a one-entry dict) shared with the other
  steppers of the same trainer (its guided and its plain step), so a group holds one copy."""

  def __init__(self, step: Callable, box: dict, *args: Any):
    self.step, self.box, self.args = step, box, args

  def __call__(self):
    self.box["state"], metrics = self.step(self.box["state"], *self.args)
    return self.box["state"], metrics


class _DropThird(bc.Stepper):
  """Stepper for steps returning (state, metrics, extra)."""

  def __call__(self):
    self.state, metrics, extra = self.step(self.state, *self.args)
    return self.state, metrics, extra


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true",
                      help="tiny only, small shapes, few iterations (< 1 minute)")
  parser.add_argument("--sizes", default=None, help="comma-separated: tiny,small,base")
  parser.add_argument("--iters", type=int, default=None, help="timed rounds (median)")
  parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  parser.add_argument("--tiny_shape", default=None, help="B,Le,Ld (default 32,64,40)")
  parser.add_argument("--small_shape", default=None, help="B,Le,Ld (default 8,64,32)")
  parser.add_argument("--base_shape", default=None, help="B,Le,Ld (default 8,64,32)")
  parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
  parser.add_argument("--cost_parts", action="store_true",
                      help="also compile the pieces of a guided step alone for the XLA cost "
                      "table (FLOPs, bytes accessed per pass)")
  parser.add_argument("--profile", default=None, choices=("auto", "always", "never"),
                      help="breakdown: when a target is missed (auto, the default), always or "
                      "never (the default with --quick)")
  parser.add_argument("--layers", type=int, default=None,
                      help="override both stack depths (default: the size's; 1 with --quick)")
  parser.add_argument("--memory_only", action="store_true",
                      help="compile and report compiled memory only (no timing)")
  parser.add_argument("--groups", default=",".join(GROUPS),
                      help=f"comma-separated subset of {list(GROUPS)} (default: all)")
  parser.add_argument("--combine", nargs="+", metavar="SIZE_THEN_LOG", default=None,
                      help="rebuild SIZE's table from the logs of --groups runs (no timing)")
  args = parser.parse_args()
  if args.combine:
    if len(args.combine) < 2:
      parser.error("--combine needs a size and at least one log")
    r = combine_logs(args.combine[0], args.combine[1:])
    _print_rows(r["rows"])
    print("\nratio: " + _short(r))
    return
  only_groups = tuple(g.strip() for g in args.groups.split(",") if g.strip())
  unknown = sorted(set(only_groups) - set(GROUPS))
  if unknown or not only_groups:
    parser.error(f"--groups must name some of {list(GROUPS)}, got {args.groups!r}")

  sizes = bc.parse_sizes(args.sizes or ("tiny" if args.quick else "tiny,small"))
  defaults = bc.QUICK_SHAPES if args.quick else GUIDED_DEFAULT_SHAPES
  shapes = {}
  for size in ("tiny", "small", "base"):
    text = getattr(args, f"{size}_shape")
    shapes[size] = tuple(int(x) for x in text.split(",")) if text else defaults[size]
  iters = args.iters or (2 if args.quick else 7)
  layers = args.layers or (1 if args.quick else None)
  profile = args.profile or ("never" if args.quick else "auto")
  if layers:
    print(f"note: {layers} encoder + {layers} decoder layer(s) instead of the size's depth")
  print(bc.device_line())
  print(f"dtype {args.dtype} ((h): bfloat16); AdamW ((g): Adafactor); base LR {BASE_LR}; "
        + ("compiled memory only" if args.memory_only else
           f"round-robin timing, 1 warm-up round, median of {iters} rounds"))

  results = []
  for size in sizes:
    r = bench_size(size, shapes[size], iters, args.dtype, profile, layers, args.memory_only,
                   only_groups, args.cost_parts)
    results.append(r)
    b, le, ld = r["shape"]
    print(f"\n== {size}: {r['params'] / 1e6:.2f}M params, train batch {b}, guide batch {b} "
          f"(1/4: {r['quarter']}), lengths {le}/{ld}; compile {r['compile_s']:.0f} s")
    bc.print_table(["step", "ms"], [[k, v * 1e3] for k, v in r["times"].items()])
    print("compile s: " + ", ".join(f"{k} {v:.1f}" for k, v in r["clog"].items()))
    print()
    bc.print_table(["step", "compiled MiB"],
                   [[k, (v or float("nan")) / 2**20] for k, v in r["mem"].items()])
    print()
    print("XLA cost per call (cost_analysis of the compiled function; '_c': a whole step):")
    bc.print_table(["compiled", "GFLOP", "GB accessed"],
                   [[k, f / 1e9, b / 1e9] for k, (f, b) in r["costs"].items()])
    print()
    _print_rows(r["rows"])
    if r["fwd"] is not None and not np.isnan(r["fwd"]):  # (e) runs in the greedy group
      print(f"(e) hypergradient d/d raw lr: forward {r['fwd']:.6g}, reverse {r['rev']:.6g}, "
            f"relative difference {r['rel_diff']:.3g}")
    if r["parts"]:
      print("\nprofile breakdown (each piece jitted alone; tangent forward ~ JVP - forward):")
      bc.print_table(["piece", "ms"], [[k, v * 1e3] for k, v in r["parts"].items()])

  if args.json:
    with open(args.json, "w") as f:
      json.dump({"device": bc.device_line(), "dtype": args.dtype, "iters": iters,
                 "sizes": [{"size": r["size"], "shape": list(r["shape"]),
                            "params": r["params"], "compile_s": r["compile_s"],
                            "step_ms": {k: v * 1e3 for k, v in r["times"].items()},
                            "compiled_mib": {k: (v or float("nan")) / 2**20
                                             for k, v in r["mem"].items()},
                            "rows": r["rows"]} for r in results]}, f, indent=1)
  print()
  print("ratio: (time rows: guided / floor or / plain; memory rows: compiled bytes / plain) "
        + "; ".join(_short(r) for r in results))


def _print_rows(rows: Sequence[dict]) -> None:
  bc.print_table(["configuration", "measure", "value", "target", "met"],
                 [[x["cfg"], x["metric"], x["value"],
                   "-" if x["target"] is None else f"<= {x['target']}",
                   "-" if x["met"] is None else ("yes" if x["met"] else "NO")]
                  for x in rows])


def _short(r: dict) -> str:
  return f"{r['size']}: " + ", ".join(
      f"{x['cfg']} {x['value']:.2f}" for x in r["rows"] if x["target"] is not None)


if __name__ == "__main__":
  main()
