#!/usr/bin/env bash
# Runs (or continues) every default-size experiment into docs/results/, one after the other
# (in this order: guidance_diagnosis reads schedule_vs_constant's records, bad_defaults those of
# schedule_vs_constant, bo_vs_gbt and guidance_diagnosis).
# Each experiment skips its finished runs and resumes an interrupted one, so this can be stopped
# and restarted at any time; commit docs/results/ as records accumulate.
#
#   scripts/experiments/run_all.sh [EXPERIMENT ...]   # default: all, in this order
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-.venv/bin/python}
experiments=("$@")
if [ ${#experiments[@]} -eq 0 ]; then
  experiments=(guided_vs_plain schedule_vs_constant noisy_data short_horizon bo_vs_gbt pretrain_downstream
               guidance_diagnosis bad_defaults mixture_weights)
fi
for name in "${experiments[@]}"; do
  echo "=== $name ($(date -u +%H:%M:%S))"
  "$PY" "scripts/experiments/$name.py" --results_dir docs/results
done
