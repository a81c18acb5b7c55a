"""Step time of the plain and the guided train step on 1, 2, 4, 8 simulated CPU devices (data
parallel), on a 4x2 data x model mesh, and as 1 vs 2 JAX processes (2 x 2 devices, gloo).

What this measures, and what it does not: simulated CPU devices share the same few cores, so
more devices never make a step faster here. CPU simulation says little about speed on TPUs or
GPUs; it shows the program's overhead per device (partitioning, collectives, dispatch) and that
nothing serialises: with a fixed global batch, the time per step should stay roughly flat as the
same work is split over more devices or processes, and the guided/plain ratio should not grow.

Each configuration runs in its own worker subprocess (the device count is fixed at backend start);
a 2-process configuration starts two workers on 127.0.0.1 (`gbt_t5x.distributed`, gloo).
Synthetic full-length batches, T5 v1.1 tiny, AdamW; guided: learning-rate multiplier, b1 and label
smoothing, a guided step every step. Prints a table and a final ratio line. Not a test.

  python scripts/bench_scaling.py [--quick] [--iters N] [--batch B]
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
# (label, processes, devices per process, model-parallel partitions)
CONFIGS = [("1 dev", 1, 1, 1), ("2 dev", 1, 2, 1), ("4 dev", 1, 4, 1), ("8 dev", 1, 8, 1),
           ("8 dev 4x2", 1, 8, 2), ("2 proc x 2 dev", 2, 2, 1)]


def worker(args: argparse.Namespace) -> None:
  """Builds the model on this process's devices, times both steps, prints one JSON line."""
  sys.path.insert(0, HERE)
  import bench_common  # Strips any device-count flag from XLA_FLAGS at import.
  import jax
  jax.config.update("jax_num_cpu_devices", args.devices)  # Before the CPU backend starts.
  from gbt_t5x import distributed
  if args.process_count > 1:
    distributed.maybe_initialize(distributed.ProcessSpec(
        args.coordinator, args.process_count, args.process_index))
  import numpy as np
  import bench_guided
  from gbt_t5x.train import data as data_lib
  from gbt_t5x.train import train_lib
  from gbt_t5x.train import trainer as trainer_lib
  from gbt_t5x.train.partitioning import PjitPartitioner
  assert jax.local_device_count() == args.devices, jax.local_devices()

  le, ld = 64, 40
  model = bench_common.make_model("tiny")
  partitioner = PjitPartitioner(num_partitions=args.model_parallel)
  vocab = model.module.config.vocab_size
  local_rows = slice(args.process_index * args.batch // args.process_count,
                     (args.process_index + 1) * args.batch // args.process_count)

  def batch(seed):
    full = bench_common.synthetic_batch(seed, args.batch, le, ld, vocab,
                                        num_data_ids=bench_guided.NUM_DATA_IDS)
    local = {k: np.asarray(v)[local_rows] for k, v in full.items()}
    return data_lib.global_batch(local, partitioner.data_sharding)

  train_batch, guide_batch = batch(0), batch(1)
  common = dict(model=model, partitioner=partitioner, eval_names=[], summary_dir=None,
                rng=jax.random.PRNGKey(1), learning_rate_fn=lambda step: 1e-3)
  shapes = {"encoder_input_tokens": (1, le), "decoder_input_tokens": (1, ld),
            "decoder_target_tokens": (1, ld)}
  state, axes = train_lib.initial_train_state(model, shapes, partitioner, jax.random.PRNGKey(0))
  plain = trainer_lib.Trainer(train_state=state, train_state_axes=axes, **common)
  state, axes = train_lib.initial_train_state(model, shapes, partitioner, jax.random.PRNGKey(0))
  guide_cfg = data_lib.DatasetConfig("unused", {"inputs": le, "targets": ld}, "train",
                                     args.batch, shuffle=False)
  guided = bench_guided.BenchGuidedTrainer(
      train_state=state, train_state_axes=axes, guided_hparams=[bench_guided.LR, bench_guided.B1,
                                                                bench_guided.LS],
      guide_dataset_cfg=guide_cfg, **common)

  def run_plain():
    plain.train_state, metrics = plain._partitioned_train_step(plain.train_state, train_batch)
    return metrics

  def run_guided():
    guided.train_state, metrics = guided._partitioned_guided_step(guided.train_state,
                                                                  train_batch, guide_batch)
    return metrics

  result = {"plain_s": bench_common.time_fn(run_plain, args.iters, warmup=2),
            "guided_s": bench_common.time_fn(run_guided, args.iters, warmup=2),
            "mesh": dict(partitioner.mesh.shape), "global_devices": jax.device_count()}
  if jax.process_index() == 0:
    print("RESULT " + json.dumps(result), flush=True)


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def run_config(processes: int, devices: int, model_parallel: int, args) -> dict:
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)
  port = free_port()
  base = [sys.executable, os.path.abspath(__file__), "--worker", f"--devices={devices}",
          f"--model_parallel={model_parallel}", f"--process_count={processes}",
          f"--coordinator=127.0.0.1:{port}", f"--iters={args.iters}", f"--batch={args.batch}"]
  procs = [subprocess.Popen(base + [f"--process_index={i}"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True) for i in range(processes)]
  outputs = []
  for p in procs:
    try:
      outputs.append(p.communicate(timeout=args.timeout))
    except subprocess.TimeoutExpired:
      for q in procs:
        q.kill()
      raise SystemExit(f"worker timed out after {args.timeout}s (devices={devices}, "
                       f"processes={processes})")
  for p, (out, err) in zip(procs, outputs):
    if p.returncode != 0:
      raise SystemExit(f"worker failed (rc {p.returncode}):\n{err[-3000:]}")
  line = next(l for out, _ in outputs for l in out.splitlines() if l.startswith("RESULT "))
  return json.loads(line[len("RESULT "):])


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
  parser.add_argument("--devices", type=int, default=1, help=argparse.SUPPRESS)
  parser.add_argument("--model_parallel", type=int, default=1, help=argparse.SUPPRESS)
  parser.add_argument("--process_count", type=int, default=1, help=argparse.SUPPRESS)
  parser.add_argument("--process_index", type=int, default=0, help=argparse.SUPPRESS)
  parser.add_argument("--coordinator", default=None, help=argparse.SUPPRESS)
  parser.add_argument("--quick", action="store_true", help="2 timed steps, batch 16")
  parser.add_argument("--iters", type=int, default=None, help="timed steps (median), default 5")
  parser.add_argument("--batch", type=int, default=None, help="global batch (default 32)")
  parser.add_argument("--timeout", type=int, default=600, help="seconds per configuration")
  args = parser.parse_args()
  args.iters = args.iters or (2 if args.quick else 5)
  args.batch = args.batch or (16 if args.quick else 32)
  if args.worker:
    worker(args)
    return

  rows, results = [], {}
  for label, processes, devices, mp in CONFIGS:
    r = run_config(processes, devices, mp, args)
    results[label] = r
    rows.append([label, processes, r["global_devices"],
                 "x".join(str(v) for v in r["mesh"].values()),
                 f"{r['plain_s'] * 1e3:.1f}", f"{r['guided_s'] * 1e3:.1f}",
                 f"{r['guided_s'] / r['plain_s']:.2f}"])
    print(f"done: {label}", file=sys.stderr, flush=True)
  headers = ["config", "procs", "devices", "mesh data x model", "plain ms", "guided ms",
             "guided/plain"]
  widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows)]
  print(f"T5 v1.1 tiny, global batch {args.batch}, lengths 64/40, median of {args.iters} steps "
        "(CPU-simulated devices share the cores: compare shapes, not speeds)")
  for row in [headers, ["-" * w for w in widths], *rows]:
    print("  ".join(str(x).rjust(w) for x, w in zip(row, widths)))
  one, eight = results["1 dev"], results["8 dev"]
  four, two_proc = results["4 dev"], results["2 proc x 2 dev"]
  print(f"ratio: 8 dev / 1 dev plain {eight['plain_s'] / one['plain_s']:.2f}x guided "
        f"{eight['guided_s'] / one['guided_s']:.2f}x; 2 proc x 2 dev / 1 proc x 4 dev plain "
        f"{two_proc['plain_s'] / four['plain_s']:.2f}x guided "
        f"{two_proc['guided_s'] / four['guided_s']:.2f}x; guided/plain at 1 dev "
        f"{one['guided_s'] / one['plain_s']:.2f}x")


if __name__ == "__main__":
  main()
