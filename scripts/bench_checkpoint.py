"""Checkpoint save and restore time with and without content verification (issue 40).

    python scripts/bench_checkpoint.py [--size small] [--repeats 3] [--dir /tmp/bench_ckpt]

Builds the real train state (params + AdamW moments) of T5 v1.1 `--size` on one device and times,
`--repeats` times each (median reported, seconds): a save with the per-array CRC-32 checksums and
one without (checksumming switched off), a restore with the checksum and finiteness checks and one
without. Also prints the checksum pass alone (host copy + CRC-32 of every array), and the last
line `ratio: ...` (with checks / without, save and restore). Not a test; the
numbers depend on the machine, its disk and how busy it is (run it on a quiet one).
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import time

import bench_common as bc  # first: sets XLA_FLAGS before jax starts

import jax

from gbt_t5x.train import checkpoints


def _median_seconds(fn, repeats: int) -> float:
  """Median wall seconds of `repeats` calls of `fn` after one untimed warm-up call."""
  fn()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--size", default="small", choices=["tiny", "small"])
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--dir", default="/tmp/bench_checkpoint")
  args = parser.parse_args()
  model = bc.make_model(args.size)
  state, axes = bc.initial_state(model, bc.one_device_partitioner(), 16, 16)
  target = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        state, axes)
  n_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state))
  print(bc.device_line())
  print(f"T5 v1.1 {args.size}: train state {n_bytes / 2**20:.0f} MiB "
        f"({len(jax.tree.leaves(state))} arrays)")
  real_sums, real_check = checkpoints.state_checksums, checkpoints.first_bad_leaf
  rows = []
  for verified in (False, True):
    checkpoints.state_checksums = real_sums if verified else (lambda tree: {})
    checkpoints.first_bad_leaf = real_check if verified else (lambda *a, **k: None)
    counter = iter(range(10**6))

    def save():
      shutil.rmtree(args.dir, ignore_errors=True)
      ckpt = checkpoints.Checkpointer(args.dir)
      ckpt.save(next(counter), state)
      ckpt.close()

    save_s = _median_seconds(save, args.repeats)

    def restore():
      ckpt = checkpoints.Checkpointer(args.dir)
      restored, _ = ckpt.restore(ckpt.latest_step(), target)
      jax.block_until_ready(restored)
      ckpt.close()

    restore_s = _median_seconds(restore, args.repeats)
    rows.append(["checksums + finiteness" if verified else "none", save_s, restore_s])
  checkpoints.state_checksums, checkpoints.first_bad_leaf = real_sums, real_check
  alone = _median_seconds(lambda: checkpoints.state_checksums(state), args.repeats)
  bc.print_table(["verification", "save s", "restore s"], rows)
  print(f"checksum pass alone: {alone:.3f} s ({n_bytes / 2**30 / alone:.2f} GiB/s)")
  (_, save_plain, restore_plain), (_, save_checked, restore_checked) = rows
  print(f"ratio: with checks / without, {args.size}: save {save_checked / save_plain:.2f}, "
        f"restore {restore_checked / restore_plain:.2f}")
  shutil.rmtree(args.dir, ignore_errors=True)


if __name__ == "__main__":
  main()
