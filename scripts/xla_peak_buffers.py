"""What is alive at a compiled step's memory peak, from an XLA dump (the profile behind the
compiled-memory rows of `bench_guided.py`).

    XLA_FLAGS=--xla_dump_to=/tmp/dump .venv/bin/python scripts/bench_guided.py --sizes small \
        --memory_only --groups loss_side
    .venv/bin/python scripts/xla_peak_buffers.py /tmp/dump --module jit_guided_step

For each matching module (`*<module>.cpu_after_optimizations.txt`) it takes the entry
computation's schedule (the printed order of a scheduled module), the temp buffers of the
buffer assignment with their defining instruction and uses, and prints the peak of the live temp
bytes, the position of the peak in the schedule, and the live buffers there, summed by the op
name JAX recorded (`op_name` metadata): e.g. a `jit(guided_step)/sqrt` of 293 MiB alive through
the guide pass is the closed form's denominator computed too early.

Hand-written: XLA prints the buffer assignment but no per-op attribution of the peak; values
defined only inside nested computations (loop or branch bodies) are not counted (printed).
Arguments and outputs are not temp buffers: the compiled total is these plus the peak.
"""
from __future__ import annotations

import argparse
import collections
import glob
import os
import re
import sys

_INSTR = re.compile(r"\s*(?:ROOT )?%?([\w.\-]+) = ")
_VALUE = re.compile(r"<(\d+) (\S+) @\S+>")
_TEMP_VALUE = re.compile(r"\s*value: <(\d+) (\S+) @\S+> \(size=(\d+),offset=(\d+)\)")


def entry_schedule(hlo_path: str) -> tuple[dict[str, int], dict[str, str]]:
  """({instruction: position in the entry schedule}, {instruction: op_name or its HLO})."""
  order, label, in_entry = {}, {}, False
  with open(hlo_path) as f:
    for line in f:
      if line.startswith("ENTRY"):
        in_entry = True
      elif in_entry and line.startswith("}"):
        break
      elif in_entry and (m := _INSTR.match(line)):
        order[m.group(1)] = len(order)
        op = re.search(r'op_name="([^"]*)"', line)
        copied = re.search(r"copy\(%(state_params|state_opt_state\w*?_(?:mu|nu))_", line)
        label[m.group(1)] = (op.group(1) if op else
                             f"copy of {copied.group(1)} (old value kept)" if copied else
                             line.split("=", 2)[-1].strip()[:80])
  return order, label


def value_uses(values_path: str) -> dict[str, tuple[list[str], list[str]]]:
  """{value id: (positions, uses)} (instruction names) from `*-buffer-assignment-values.txt`."""
  out, current, section = {}, None, None
  with open(values_path) as f:
    for line in f:
      if m := _VALUE.match(line):
        current, section = m.group(1), None
        out[current] = ([m.group(2)], [])
        continue
      text = line.strip()
      if text in ("positions:", "uses:"):
        section = text[:-1]
      elif text.startswith("from instruction"):
        section = None
      elif current and section and text and text != "(none)":
        out[current][0 if section == "positions" else 1].append(text.split(",")[0])
  return out


def temp_values(assignment_path: str) -> list[tuple[str, str, int]]:
  """[(value id, name, bytes)] of the preallocated temp allocation."""
  out, in_temp = [], False
  with open(assignment_path) as f:
    for line in f:
      if line.startswith("allocation"):
        in_temp = "preallocated-temp" in line
      elif in_temp and (m := _TEMP_VALUE.match(line)):
        out.append((m.group(1), m.group(2), int(m.group(3))))
  return out


def report(prefix: str, top: int) -> str:
  order, label = entry_schedule(prefix + ".txt")
  uses = value_uses(prefix + "-buffer-assignment-values.txt")
  names = {i: n for n, i in order.items()}
  intervals, nested = [], 0
  for vid, name, size in temp_values(prefix + "-buffer-assignment.txt"):
    positions, users = uses.get(vid, ([name], []))
    at = [order[n] for n in positions if n in order]
    if not at:
      nested += size
      continue
    intervals.append((min(at), max(at + [order[u] for u in users if u in order]), size))
  delta = collections.Counter()
  for start, end, size in intervals:
    delta[start] += size
    delta[end + 1] -= size
  live, peak, peak_at = 0, 0, 0
  for t in range(len(order) + 1):
    live += delta[t]
    if live > peak:
      peak, peak_at = live, t
  by_op = collections.Counter()
  for start, end, size in intervals:
    if start <= peak_at <= end:
      by_op[label.get(names[start], "?")[:110]] += size
  mib = 2 ** 20
  lines = [f"{os.path.basename(prefix)}: temp peak {peak / mib:.1f} MiB at schedule position "
           f"{peak_at}/{len(order)} ({label.get(names.get(peak_at, ''), '')[:90]}); "
           f"values only in nested computations (not counted): {nested / mib:.1f} MiB"]
  lines += [f"  {size / mib:8.1f} MiB  {op}" for op, size in by_op.most_common(top)]
  return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("dump_dir", help="the --xla_dump_to directory")
  parser.add_argument("--module", default="jit_guided_step",
                      help="module name to match (default: jit_guided_step)")
  parser.add_argument("--top", type=int, default=12, help="op names to list per module")
  args = parser.parse_args(argv)
  paths = sorted(glob.glob(os.path.join(args.dump_dir,
                                        f"*{args.module}.cpu_after_optimizations.txt")))
  if not paths:
    print(f"error: no '*{args.module}.cpu_after_optimizations.txt' in {args.dump_dir}",
          file=sys.stderr)
    return 2
  for path in paths:
    print(report(path[:-len(".txt")], args.top))
  return 0


if __name__ == "__main__":
  sys.exit(main())
