"""`scripts/fault_cases.py --only`: one cheap case end to end (a crafted trajectory given to
`python -m gbt_t5x.guided.export`; no training, no demo world), table written to `--out`."""
from __future__ import annotations

import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[2]


def test_one_case_writes_its_row(tmp_path):
  out = tmp_path / "table.md"
  proc = subprocess.run([sys.executable, str(REPO / "scripts" / "fault_cases.py"), "--only",
                         "export_crafted_name", "--out", str(out), "--work_dir",
                         str(tmp_path / "work")],
                        capture_output=True, text=True, timeout=300, check=False)
  assert proc.returncode == 0, proc.stdout + proc.stderr
  rows = [l for l in out.read_text().splitlines() if l.startswith("| 1 |")]
  assert len(rows) == 1 and "| export_crafted_name |" in rows[0] and "| ok |" in rows[0], rows
  assert "refusing to write it into gin" in rows[0]
