#!/usr/bin/env bash
# The step-time benchmarks on one accelerator (GPU): bench_train.py and bench_guided.py at
# T5.1.1 small and base, each size in its own process, within a time budget (default 480 s, the
# issue's "under 8 minutes"), then one JSON and one Markdown table of everything that finished.
#
# Usage (repository root, the venv's python with a CUDA jax on the PATH or in $PYTHON):
#   scripts/bench_accelerator.sh                       # small and base, into bench_accelerator/
#   scripts/bench_accelerator.sh --sizes tiny --out /tmp/acc --iters 2   # the logic, on a CPU
#
# Options:
#   --sizes LIST    comma-separated T5.1.1 sizes (default small,base; env BENCH_SIZES)
#   --out DIR       output folder (default bench_accelerator; env BENCH_OUT): per run a log and a
#                   JSON (train_SIZE.*, guided_SIZE.*), then results.json and results.md
#   --groups LIST   bench_guided.py --groups (default greedy,loss_side,g: the rows with targets
#                   but bfloat16 (h) and the forward horizon (f1, f3); env BENCH_GROUPS)
#   --iters N       timed rounds per bench (default 5; env BENCH_ITERS)
#   --budget S      seconds for all runs (default 480; env BENCH_BUDGET): each run gets what is
#                   left, a run past it is stopped (its size then reads "not finished"); the
#                   last run, the non-finite guard's cost at the first size (guards_SIZE.log),
#                   only gets what the others leave
#
# Each bench keeps its own output format (its last line is its `ratio: ...` line, in the logs).
# On the host the benches default to CPU (bench_common sets JAX_PLATFORMS=cpu unless set): here
# JAX_PLATFORMS is left to jax's own choice (an accelerator when present) unless set by the
# caller. Timings from a shared or loaded machine are indicative only.
set -euo pipefail

SIZES="${BENCH_SIZES:-small,base}"
OUT="${BENCH_OUT:-bench_accelerator}"
GUIDED_GROUPS="${BENCH_GROUPS:-greedy,loss_side,g}"
ITERS="${BENCH_ITERS:-5}"
BUDGET="${BENCH_BUDGET:-480}"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --sizes) SIZES="$2"; shift 2 ;;
    --out) OUT="$2"; shift 2 ;;
    --groups) GUIDED_GROUPS="$2"; shift 2 ;;
    --iters) ITERS="$2"; shift 2 ;;
    --budget) BUDGET="$2"; shift 2 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | grep '^#'; exit 0 ;;
    *) echo "error: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PYTHON="${PYTHON:-python}"
export JAX_PLATFORMS="${JAX_PLATFORMS-}"  # empty: jax picks the accelerator (see above)
mkdir -p "$OUT"
START=$(date +%s)

# run NAME CMD...: runs CMD with what is left of the budget, its output in $OUT/NAME.log.
run() {
  local name="$1"; shift
  local left=$(( BUDGET - ($(date +%s) - START) ))
  if (( left < 10 )); then
    echo "$name: skipped, budget spent" | tee "$OUT/$name.log"
    return 0
  fi
  echo "== $name (${left} s left): $*"
  local rc=0
  timeout "$left" "$@" > "$OUT/$name.log" 2>&1 || rc=$?
  if (( rc != 0 )); then
    echo "$name: exit $rc$([[ $rc == 124 ]] && echo ' (out of budget)')" >> "$OUT/$name.log"
  fi
  tail -n 1 "$OUT/$name.log"
}

IFS=',' read -r -a SIZE_LIST <<< "$SIZES"
for size in "${SIZE_LIST[@]}"; do
  run "train_$size" "$PYTHON" "$HERE/bench_train.py" --sizes "$size" --iters "$ITERS" \
    --json "$OUT/train_$size.json"
done
for size in "${SIZE_LIST[@]}"; do
  run "guided_$size" "$PYTHON" "$HERE/bench_guided.py" --sizes "$size" --iters "$ITERS" \
    --groups "$GUIDED_GROUPS" --profile never --json "$OUT/guided_$size.json"
done
# Last, with what is left: the non-finite guard's cost ('where' / 'cond' / none) at the first
# size, which decides whether 'cond' (less memory) becomes the default (README, Benchmarks).
run "guards_${SIZE_LIST[0]}" "$PYTHON" "$HERE/bench_train.py" --sizes "${SIZE_LIST[0]}" --guards \
  --iters 20

"$PYTHON" - "$OUT" "$SIZES" "$(( $(date +%s) - START ))" <<'EOF'
"""Merges the per-run JSONs into results.json and a Markdown table (results.md)."""
import json
import math
import os
import sys

out, sizes, wall_s = sys.argv[1], sys.argv[2].split(","), int(sys.argv[3])


def load(name):
  path = os.path.join(out, name + ".json")
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


train = {s: load(f"train_{s}") for s in sizes}
guided = {s: load(f"guided_{s}") for s in sizes}
device = next((r["device"] for r in list(train.values()) + list(guided.values()) if r),
              "device: unknown (no run finished)")
merged = {"device": device, "wall_s": wall_s, "train": train, "guided": guided}
with open(os.path.join(out, "results.json"), "w") as f:
  json.dump(merged, f, indent=1)


def cell(value, digits=2):
  """A table cell: None (the size's run did not finish), NaN (its group was not run)."""
  if value is None:
    return "not finished"
  if isinstance(value, float) and math.isnan(value):
    return "not run"
  return f"{value:.{digits}f}" if abs(value) >= 0.01 or value == 0 else f"{value:.2g}"


lines = [f"{device}; all runs {wall_s} s.", "",
         "| row | " + " | ".join(sizes) + " | target |",
         "|---|" + "---|" * len(sizes) + "---|"]
for key, label, digits in (("seconds", "plain step ms (bench_train)", 1),
                           ("tokens_per_s", "tokens/s (bench_train)", 0),
                           ("mfu", "model FLOP/s / matmul FLOP/s", 2)):
  vals = []
  for s in sizes:
    r = (train[s] or {}).get("sizes", [None])[0] if train[s] else None
    if r is None:
      vals.append(cell(None))
    elif key == "seconds":
      vals.append(cell(r["seconds"] * 1e3, digits))
    elif key == "tokens_per_s":
      vals.append(cell(r["tokens"] / r["seconds"], digits))
    else:
      vals.append(cell(r["mfu"], digits))
  lines.append(f"| {label} | " + " | ".join(vals) + " | — |")
labels = []
for s in sizes:
  for r in ((guided[s] or {}).get("sizes") or [{}])[0].get("rows", []):
    if (r["cfg"], r["metric"]) not in labels:
      labels.append((r["cfg"], r["metric"]))
for cfg, metric in labels:
  vals, target = [], None
  for s in sizes:
    rows = ((guided[s] or {}).get("sizes") or [{}])[0].get("rows", [])
    match = next((r for r in rows if (r["cfg"], r["metric"]) == (cfg, metric)), None)
    vals.append(cell(match["value"] if match else None))
    target = target if target is not None else (match or {}).get("target")
  label = f"{cfg}: {metric}".replace("|", "\\|")  # '|fwd - rev| / |rev|' in a Markdown cell
  lines.append(f"| {label} | " + " | ".join(vals) + " | "
               + (f"≤ {target}" if target is not None else "—") + " |")
with open(os.path.join(out, "results.md"), "w") as f:
  f.write("\n".join(lines) + "\n")
print("\n".join(lines))
print(f"wrote {os.path.join(out, 'results.json')} and {os.path.join(out, 'results.md')}")
EOF
