"""Benchmark: tokens/s and model FLOP/s of the plain train step vs this machine's matmul rate.

For each T5 v1.1 size, times the jitted `Trainer._partitioned_train_step` (AdamW, 1 device,
dropout off, synthetic full-length batches) and reports its step time, tokens/s
(B * (inputs + targets) real tokens per step), the model FLOP/s and that rate as a fraction of the
machine's float32 matmul rate, measured in the same run with a jitted 2048 x 2048 `jnp.dot`
(median of several). This "MFU" is relative to measured matmul throughput, not a datasheet peak.

Model FLOPs per step (forward + backward; the optimizer update is not counted), see
`bench_common.train_step_flops`:

    F = 6 * B * (Le * (P_enc + P_cross_kv) + Ld * P_dec)
      + 12 * B * H * dk * (Ne * Le^2 + Nd * (Ld^2 + Ld * Le))

P_enc: matmul params per encoder token (self-attention q,k,v,o + gated MLP, all encoder layers);
P_cross_kv: cross-attention k,v of all decoder layers (they act on encoder tokens); P_dec: per
decoder token (self-attention, cross-attention q,o, MLP, output projection). XLA's own count,
`jit(step).lower(...).compile().cost_analysis()['flops']`, is printed beside it (it includes the
optimizer and the elementwise work, and on CPU may count some ops differently).

--guards: instead, the cost of the non-finite guard (`hypergrad.guarded_update`, which keeps the
old params and optimizer state after a non-finite step): the plain step compiled with each guard
('where', 'cond') and with none, timed round-robin in this one process (one call of each per
round, median of --iters rounds; a shared machine's load then hits all three alike), printed as
each guard's (step - unguarded step) / unguarded step, with compiled memory.

Usage:
  .venv/bin/python scripts/bench_train.py --quick           # tiny only, tiny shapes, < 1 min
  .venv/bin/python scripts/bench_train.py --sizes tiny --guards --iters 30   # guard cost
  .venv/bin/python scripts/bench_train.py --sizes small --small_shape 2,16,8 --layers 2 --guards
  .venv/bin/python scripts/bench_train.py                   # tiny (B32, 64/40), small (B8, 128/64)
  .venv/bin/python scripts/bench_train.py --sizes small --iters 3 --dtype bfloat16

Not a test; prints a table and a final `ratio:` line.
"""
from __future__ import annotations

import argparse
import json
import time
from unittest import mock

import bench_common as bc  # first: sets XLA_FLAGS before jax starts

import jax
import numpy as np
import optax

from gbt_t5x.guided import hypergrad
from gbt_t5x.train import trainer as trainer_lib

NO_GUARD = "none"


def parse_shape(text: str | None, default: tuple[int, int, int]) -> tuple[int, int, int]:
  if not text:
    return default
  b, le, ld = (int(x) for x in text.split(","))
  return b, le, ld


def bench_size(size: str, shape: tuple[int, int, int], iters: int, dtype: str) -> dict:
  batch_size, le, ld = shape
  model = bc.make_model(size, dtype)
  partitioner = bc.one_device_partitioner()
  state, axes = bc.initial_state(model, partitioner, le, ld)
  trainer = trainer_lib.Trainer(model=model, train_state=state, partitioner=partitioner,
                                eval_names=[], summary_dir=None, train_state_axes=axes,
                                rng=jax.random.PRNGKey(1), learning_rate_fn=lambda step: 1e-3,
                                log_every=10**9, print_fn=lambda s: None)
  batch = bc.synthetic_batch(0, batch_size, le, ld, model.module.config.vocab_size,
                             sharding=partitioner.data_sharding)
  step = trainer._partitioned_train_step
  t0 = time.perf_counter()
  compiled = bc.compiled(step, trainer.train_state, batch)
  compile_s = time.perf_counter() - t0
  stepper = bc.Stepper(compiled, trainer.train_state, batch)
  seconds = bc.time_fn(stepper, iters, warmup=1)
  flops = bc.train_step_flops(model.module.config, batch_size, le, ld)
  return dict(size=size, params=bc.count_params(stepper.state.params), batch=batch_size,
              lengths=f"{le}/{ld}", seconds=seconds, tokens=batch_size * (le + ld),
              flops=flops, xla_flops=bc.xla_flops(compiled), compile_s=compile_s)


def _unguarded_update(optimizer, grads, opt_state, params, opt_hparams, base_lr, loss,
                      lr_group_ids=None):
  """`hypergrad.guarded_update` without the guard (ok is always True): the reference step."""
  updates, new_opt_state = hypergrad.optimizer_update(optimizer, grads, opt_state, params,
                                                      opt_hparams, base_lr, lr_group_ids)
  return optax.apply_updates(params, updates), new_opt_state, jax.numpy.bool_(True)


def guard_costs(size: str, shape: tuple[int, int, int], iters: int, dtype: str,
                layers: int | None = None) -> dict:
  """Median plain-step seconds and compiled bytes with each non-finite guard and with none."""
  batch_size, le, ld = shape
  model = bc.make_model(size, dtype, layers=layers)
  partitioner = bc.one_device_partitioner()
  state, axes = bc.initial_state(model, partitioner, le, ld)
  batch = bc.synthetic_batch(0, batch_size, le, ld, model.module.config.vocab_size,
                             sharding=partitioner.data_sharding)
  steppers, mem = {}, {}
  for guard in hypergrad.NON_FINITE_GUARDS + (NO_GUARD,):
    trainer = trainer_lib.Trainer(
        model=model, train_state=jax.tree.map(lambda x: x.copy(), state),
        partitioner=partitioner, eval_names=[], summary_dir=None, train_state_axes=axes,
        rng=jax.random.PRNGKey(1), learning_rate_fn=lambda step: 1e-3, log_every=10**9,
        print_fn=lambda s: None)
    unguarded = mock.patch.object(hypergrad, "guarded_update", _unguarded_update)
    with mock.patch.object(hypergrad, "NON_FINITE_GUARD",
                           hypergrad.WHERE if guard == NO_GUARD else guard):
      if guard == NO_GUARD:
        unguarded.start()
      try:  # traced here, so the guard in force is the one compiled
        compiled = bc.compiled(trainer._partitioned_train_step, trainer.train_state, batch)
      finally:
        if guard == NO_GUARD:
          unguarded.stop()
    steppers[guard] = bc.Stepper(compiled, trainer.train_state, batch)
    mem[guard] = bc.memory_bytes(compiled)
  for fn in steppers.values():  # warm-up round
    jax.block_until_ready(fn())
  samples = {k: [] for k in steppers}
  for _ in range(iters):
    for name, fn in steppers.items():
      start = time.perf_counter()
      jax.block_until_ready(fn())
      samples[name].append(time.perf_counter() - start)
  seconds = {k: float(np.median(v)) for k, v in samples.items()}
  return dict(size=size, seconds=seconds, mem=mem,
              cost={k: seconds[k] / seconds[NO_GUARD] - 1 for k in hypergrad.NON_FINITE_GUARDS})


def main_guards(sizes, shapes, iters: int, dtype: str, layers: int | None = None) -> None:
  results = [guard_costs(size, shapes[size], iters, dtype, layers) for size in sizes]
  rows = []
  for r in results:
    for guard, sec in r["seconds"].items():
      rows.append([r["size"], guard, sec * 1e3, (r["mem"][guard] or float("nan")) / 2**20,
                   r["cost"].get(guard, 0.0) * 100])
  print()
  bc.print_table(["size", "guard", "plain step ms", "compiled MiB", "cost % of unguarded"], rows)
  print()
  print("ratio: guard cost / unguarded plain step = " + ", ".join(
      f"{r['size']} {g} {r['cost'][g]:+.3f}" for r in results for g in hypergrad.NON_FINITE_GUARDS))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true",
                      help="tiny only, small shapes, few iterations (< 1 minute)")
  parser.add_argument("--sizes", default=None, help="comma-separated: tiny,small,base")
  parser.add_argument("--iters", type=int, default=None, help="timed steps per size (median)")
  parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                      help="activation dtype (params are float32); gin's small uses bfloat16")
  parser.add_argument("--tiny_shape", default=None, help="B,Le,Ld (default 32,64,40)")
  parser.add_argument("--small_shape", default=None, help="B,Le,Ld (default 8,128,64)")
  parser.add_argument("--base_shape", default=None, help="B,Le,Ld (default 8,128,64)")
  parser.add_argument("--matmul_n", type=int, default=2048)
  parser.add_argument("--guards", action="store_true",
                      help="time the plain step with each non-finite guard and none instead")
  parser.add_argument("--json", default=None, help="also write the results to this JSON file")
  parser.add_argument("--layers", type=int, default=None,
                      help="with --guards: override both stack depths (default: the size's)")
  args = parser.parse_args()

  sizes = bc.parse_sizes(args.sizes or ("tiny" if args.quick else "tiny,small"))
  shapes = bc.QUICK_SHAPES if args.quick else bc.DEFAULT_SHAPES
  shapes = {"tiny": parse_shape(args.tiny_shape, shapes["tiny"]),
            "small": parse_shape(args.small_shape, shapes["small"]),
            "base": parse_shape(args.base_shape, shapes["base"])}
  iters = args.iters or (3 if args.quick else 5)
  print(bc.device_line())
  if args.guards:
    main_guards(sizes, shapes, iters, args.dtype, args.layers)
    return
  print(f"dtype {args.dtype}; timing: 1 warm-up step, median of {iters} steps; "
        "tokens = B * (inputs + targets), all real (no padding)")

  matmul_n = 1024 if args.quick else args.matmul_n
  matmul_rate = bc.matmul_flops_per_s(matmul_n, iters=max(iters, 5))
  print(f"matmul: jitted {matmul_n}x{matmul_n} float32 jnp.dot: {matmul_rate / 1e9:.1f} GFLOP/s "
        "(measured again after the models; the larger is used)")

  results = [bench_size(size, shapes[size], iters, args.dtype) for size in sizes]
  # Re-measure the matmul rate after the models, to show drift on a shared machine.
  matmul_after = bc.matmul_flops_per_s(matmul_n, iters=max(iters, 5))
  if abs(matmul_after / matmul_rate - 1) > 0.1:
    print(f"note: matmul rate drifted to {matmul_after / 1e9:.1f} GFLOP/s by the end "
          "(noisy machine?)")
  # The machine's capability: the better of the two measurements (load only slows it down).
  matmul_rate = max(matmul_rate, matmul_after)

  rows = []
  for r in results:
    model_rate = r["flops"] / r["seconds"]
    rows.append([r["size"], f"{r['params'] / 1e6:.2f}M", r["batch"], r["lengths"],
                 r["seconds"] * 1e3, r["tokens"] / r["seconds"], r["flops"] / 1e9,
                 (r["xla_flops"] or float("nan")) / 1e9, model_rate / 1e9, matmul_rate / 1e9,
                 model_rate / matmul_rate])
    r["mfu"] = model_rate / matmul_rate
  print()
  bc.print_table(["size", "params", "batch", "in/tgt", "step ms", "tokens/s", "GFLOP/step",
                  "XLA GFLOP/step", "model GFLOP/s", "matmul GFLOP/s", "MFU frac"], rows)
  for r in results:
    if r["xla_flops"]:
      diff = r["xla_flops"] / r["flops"] - 1
      if abs(diff) > 0.05:
        print(f"note: {r['size']}: XLA cost_analysis flops differ from the analytic count by "
              f"{diff:+.0%} (XLA counts the optimizer/elementwise work too)")
    print(f"{r['size']}: compile {r['compile_s']:.1f} s")
  if args.json:
    with open(args.json, "w") as f:
      json.dump({"device": bc.device_line(), "dtype": args.dtype,
                 "matmul_flops_per_s": matmul_rate,
                 "sizes": [{k: r[k] for k in ("size", "params", "batch", "lengths", "seconds",
                                              "tokens", "flops", "xla_flops", "compile_s", "mfu")}
                           for r in results]}, f, indent=1)
  print()
  print("ratio: model FLOP/s / matmul FLOP/s = "
        + ", ".join(f"{r['size']} {r['mfu']:.2f}" for r in results))


if __name__ == "__main__":
  main()
