"""What one guided configuration costs per model step against the plain demo configuration, in
CPU seconds of the training process, from short runs that alternate between the two.

    python scripts/experiments/cost_probe.py GUIDED_GIN [--steps 400] [--rounds 2] [--seed 0]
        [--results_dir results] [--quick]

e.g. `GUIDED_GIN = docs/results/guided_vs_plain/gin/guided_all.gin`. Each round trains the plain
demo NMT configuration (`experiments/demo_nmt.gin`) and then GUIDED_GIN for `--steps` steps at
the experiments' default size (`harness.sizes`) in the default demo world, and reads
back each run's median seconds per step over its timed logging windows, in CPU seconds (all the
process's threads) and in wall seconds. CPU seconds hardly change when other processes share the
machine, so the ratio can be taken on a busy machine; wall seconds are printed for comparison.
Prints one line per run and a final `ratio: cpu X wall Y` line (medians over rounds).

Not a test and writes no record: a check on the cost ratios the experiments measured per run
(their records carry `cpu_seconds_per_step` since the trainer logs it). Runs go to
RESULTS_DIR/cost_probe/runs/ and are deleted after they are timed.
"""
from __future__ import annotations

import sys

from gbt_t5x import console

if __name__ == "__main__":
  # Before TensorFlow and JAX load (they log when imported); TensorFlow itself loads in
  # `common.setup`, once the flags are checked.
  console.configure(sys.argv, import_tensorflow=False)

import os
import shutil
import statistics
from typing import Sequence

from harness import common, sizes


def _add_flags(parser) -> None:
  parser.add_argument("guided_gin", help="gin file of the guided configuration")
  parser.add_argument("--steps", type=int, default=400, help="model steps of each timed run")
  parser.add_argument("--rounds", type=int, default=2, help="plain + guided pairs")
  parser.add_argument("--seed", type=int, default=0)


def main(argv: Sequence[str] | None = None) -> int:
  args = common.parse_args(__doc__.splitlines()[0], argv, _add_flags)
  if not os.path.exists(args.guided_gin):
    raise ValueError(f"no gin file {args.guided_gin}")
  if args.steps < 40 or args.rounds < 1:
    raise ValueError(f"--steps must be >= 40 (timed windows) and --rounds >= 1, got "
                     f"{args.steps}, {args.rounds}")
  exp = common.setup(args, "cost_probe")
  from gbt_t5x import runner  # (loads gin and TensorFlow: after the flag checks)
  common.use_demo_world(exp)
  configs = {"plain": [common.NMT_GIN], "guided": [os.path.abspath(args.guided_gin)]}
  times: dict[str, list[tuple[float, float]]] = {label: [] for label in configs}
  for round_ in range(args.rounds):
    for label, gin_files in configs.items():
      model_dir = os.path.join(exp.out, "runs", f"{label}_round{round_}")
      shutil.rmtree(model_dir, ignore_errors=True)
      runner.run_training(gin_files,
                          sizes.run_bindings(exp.size, args.seed, model_dir, args.steps),
                          print_fn=lambda line: None)
      cpu = runner.seconds_per_step(model_dir, cpu=True)
      wall = runner.seconds_per_step(model_dir)
      times[label].append((cpu, wall))
      print(f"round {round_} {label}: {cpu * 1e3:.1f} ms CPU, {wall * 1e3:.1f} ms wall per step",
            flush=True)
      shutil.rmtree(model_dir, ignore_errors=True)
  cpu_ratio = statistics.median(g[0] / p[0] for p, g in zip(times["plain"], times["guided"]))
  wall_ratio = statistics.median(g[1] / p[1] for p, g in zip(times["plain"], times["guided"]))
  print(f"ratio: cpu {cpu_ratio:.3f} wall {wall_ratio:.3f}")
  return 0


if __name__ == "__main__":
  sys.exit(common.main_with_one_line_errors(main))
