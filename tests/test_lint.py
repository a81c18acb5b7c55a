"""The repository passes its linter configuration (`[tool.ruff]` in pyproject.toml: pycodestyle
and pyflakes at 100 columns), so style and unused-import drift fail CI like any other defect."""
from __future__ import annotations

import pathlib
import shutil
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_ruff_check_is_clean():
  ruff = shutil.which("ruff", path=str(pathlib.Path(sys.executable).parent)) or "ruff"
  proc = subprocess.run([ruff, "check", "--output-format", "concise", str(ROOT)], cwd=ROOT,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-2000:]
