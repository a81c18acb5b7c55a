"""`scripts/bench_guided.py --combine`: one table from the logs of several `--groups` runs."""
from __future__ import annotations

import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]

# What `--groups greedy` and `--groups f1` print for a size (only the parts --combine reads),
# the second run on a machine twice as fast.
GREEDY_LOG = """\
device: cpu
== small: 76.96M params, train batch 8, guide batch 8 (1/4: 2), lengths 64/32; compile 296 s
                  step      ms
----------------------  ------
                 plain  1000.0
         guide fwd+bwd   500.0
    guided (e) reverse  2500.0
compile s: plain_c 5.6, guide_c 2.9

           step  compiled MiB
---------------  ------------
          plain        1500.0
one params copy         300.0

(e) hypergradient d/d raw lr: forward -2.5, reverse -2.5, relative difference 1.76e-06
"""
F1_LOG = """\
== tiny: 1M params
                  step      ms
----------------------  ------
                 plain     9.0
== small: 76.96M params, train batch 8, guide batch 8 (1/4: 2), lengths 64/32; compile 432 s
                step      ms
--------------------  ------
               plain   500.0
       guide fwd+bwd   250.0
 guided (f1) horizon  1000.0
plain_g (f1) horizon   750.0
compile s: plain_c 5.5, f1_c 286.8

 step  compiled MiB
-----  ------------
plain        1500.0
   f1        3000.0
"""


def combine(tmp_path: pathlib.Path, *logs: str) -> subprocess.CompletedProcess:
  paths = []
  for i, text in enumerate(logs):
    paths.append(tmp_path / f"run{i}.log")
    paths[-1].write_text(text)
  return subprocess.run([sys.executable, str(REPO / "scripts" / "bench_guided.py"), "--combine",
                         "small", *map(str, paths)], capture_output=True, text=True, cwd=REPO,
                        timeout=300)


def row_values(stdout: str) -> dict[tuple[str, str], str]:
  """(configuration, measure) -> printed value, from the combined table."""
  out = {}
  for line in stdout.splitlines():
    cells = [c for c in line.split("  ") if c.strip()]
    if len(cells) == 5 and cells[0].strip().startswith("("):
      out[(cells[0].strip(), cells[1].strip())] = cells[2].strip()
  return out


def test_combine_scales_each_log_by_its_plain_step(tmp_path):
  result = combine(tmp_path, GREEDY_LOG, F1_LOG)
  assert result.returncode == 0, result.stderr[-2000:]
  assert "drift x0.50" not in result.stdout and "drift x2.00" in result.stdout
  rows = row_values(result.stdout)
  # f1's times x2 (its plain step took 500 ms against 1000): guided 2000 ms against the greedy
  # LR-only step's 2500 and the floor 1000 + 500; its plain step 1500 against 1000.
  assert rows[("(f1) forward horizon, lr", "guided / greedy guided")] == "0.8"
  assert rows[("(f1) forward horizon, lr", "guided / (plain + guide fb)")] == "1.33"
  assert rows[("(f1) forward horizon, lr", "plain step with tangents / plain")] == "1.5"
  assert rows[("(f1) memory", "guided / plain (compiled bytes)")] == "2"
  # What an exact b1/b2 derivative must keep beyond a plain step: (1500 + 300) / 1500.
  assert rows[("(a) exact-derivative floor", "(plain + 1 params copy) / plain")] == "1.2"
  assert rows[("(g) exact-derivative floor", "(plain + 1 params copy) / plain")] == "nan"
  assert rows[("(e) hypergradient", "|fwd - rev| / |rev|")] == "1.76e-06"
  assert rows[("(a) lr+b1+b2 every step", "guided / (plain + guide fb)")] == "nan"


def test_combine_rejects_a_log_without_the_size(tmp_path):
  result = combine(tmp_path, "== tiny: 1M params\n                  step      ms\n")
  assert result.returncode != 0
  assert result.stderr.strip().splitlines()[-1] == (
      f"--combine: no '== small' step tables in {tmp_path / 'run0.log'}")
