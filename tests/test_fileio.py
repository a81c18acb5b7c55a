"""`gbt_t5x.fileio` on a local folder and on `gs://` (GCS emulator), and the checkpoint-path
resolver (model dir, its checkpoints/ folder, a step folder)."""
from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import jax.numpy as jnp
import pytest

from gbt_t5x import fileio
from gbt_t5x.train import checkpoints
from tests import gcs_emulator

REPO = pathlib.Path(__file__).resolve().parents[1]

# Exercised on both filesystems; prints a JSON summary for the test to compare.
_SCRIPT = r"""
import json, sys
from gbt_t5x import fileio
root = sys.argv[1]
d = fileio.join(root, "a", "b")
fileio.makedirs(d)
fileio.write_text(fileio.join(d, "x.txt"), "one")
fileio.write_text(fileio.join(d, "x.txt"), "two")
fileio.append_lines(fileio.join(d, "log.jsonl"), ["1", "2"])
fileio.append_text(fileio.join(d, "log.jsonl"), "3\n")
fileio.write_bytes(fileio.join(d, "p.png"), b"\x89PNG\x00")
fileio.copy_file(fileio.join(d, "p.png"), fileio.join(root, "q.png"))
first = fileio.create_exclusive(fileio.join(root, "lock"), "me")
second = fileio.create_exclusive(fileio.join(root, "lock"), "you")
out = {
    "text": fileio.read_text(fileio.join(d, "x.txt")),
    "log": fileio.read_text(fileio.join(d, "log.jsonl")),
    "png": list(fileio.read_bytes(fileio.join(root, "q.png"))),
    "ls": fileio.listdir(d), "ls_missing": fileio.listdir(fileio.join(root, "nope")),
    "glob": [fileio.basename(p) for p in fileio.glob(fileio.join(d, "*.jsonl"))],
    "isdir": [fileio.isdir(d), fileio.isdir(fileio.join(d, "x.txt"))],
    "exclusive": [first, second, fileio.read_text(fileio.join(root, "lock"))],
    "dirname": fileio.dirname(fileio.join(d, "x.txt")) == d,
}
fileio.remove(fileio.join(d, "x.txt"))
fileio.remove(fileio.join(d, "x.txt"))  # Already gone: no error.
out["after_remove"] = fileio.exists(fileio.join(d, "x.txt"))
fileio.rmtree(fileio.join(root, "a"))
out["after_rmtree"] = fileio.exists(fileio.join(d, "log.jsonl"))
print(json.dumps(out))
"""

_EXPECTED = {"text": "two", "log": "1\n2\n3\n", "png": list(b"\x89PNG\x00"),
             "ls": ["log.jsonl", "p.png", "x.txt"], "ls_missing": [], "glob": ["log.jsonl"],
             "isdir": [True, False], "exclusive": [True, False, "me"], "dirname": True,
             "after_remove": False, "after_rmtree": False}


def _run_script(root: str, env: dict[str, str] | None = None) -> dict:
  import os
  proc = subprocess.run([sys.executable, "-c", _SCRIPT, root], cwd=REPO, capture_output=True,
                        text=True, timeout=120, env={**os.environ, **(env or {})})
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])


def test_local_operations(tmp_path):
  assert _run_script(str(tmp_path / "root")) == _EXPECTED


def test_gcs_operations():
  with gcs_emulator.running_emulator() as endpoint:
    got = _run_script(f"gs://{gcs_emulator.BUCKET}/fileio", gcs_emulator.env_for(endpoint))
  assert got == _EXPECTED


def test_url_paths_stay_urls():
  assert fileio.join("gs://b/run", "checkpoints", "5") == "gs://b/run/checkpoints/5"
  assert fileio.join("gs://b/run/", "x") == "gs://b/run/x"
  assert fileio.dirname("gs://b/run/checkpoints/5") == "gs://b/run/checkpoints"
  assert fileio.basename("gs://b/run/checkpoints/5/") == "5"
  assert fileio.absolute("gs://b/run/") == "gs://b/run"
  assert fileio.is_remote("gs://b/x") and not fileio.is_remote("runs/x")
  assert fileio.absolute("runs/x") == str(pathlib.Path("runs/x").resolve())


def test_checkpoint_path_resolves_model_dir_checkpoints_folder_and_step_folder(tmp_path):
  model_dir = tmp_path / "run"
  ckpt_dir = model_dir / "checkpoints"
  ckpt = checkpoints.Checkpointer(str(ckpt_dir))
  for step in (2, 4):
    ckpt.save(step, {"params": {"w": jnp.full((2,), float(step))}})
  ckpt.close()
  assert checkpoints.resolve_checkpoint_path(str(model_dir)) == (str(ckpt_dir), None)
  assert checkpoints.resolve_checkpoint_path(str(ckpt_dir)) == (str(ckpt_dir), None)
  assert checkpoints.resolve_checkpoint_path(str(ckpt_dir / "2")) == (str(ckpt_dir), 2)
  assert checkpoints.find_checkpoint(str(model_dir))[1] == 4
  found, step = checkpoints.find_checkpoint(str(ckpt_dir / "2") + "/")
  assert (found.directory, step) == (str(ckpt_dir), 2)
  with pytest.raises(ValueError, match="does not exist"):
    checkpoints.resolve_checkpoint_path(str(tmp_path / "missing"))
  (tmp_path / "empty").mkdir()
  with pytest.raises(ValueError, match="holds no checkpoint"):
    checkpoints.find_checkpoint(str(tmp_path / "empty"))


def test_makedirs_over_a_file_is_a_one_line_error(tmp_path):
  """A MODEL_DIR given as the path of an existing file (or below one) is refused in one line."""
  a_file = tmp_path / "run"
  a_file.write_text("not a folder")
  for path in (a_file, a_file / "checkpoints"):
    with pytest.raises(ValueError, match="is a file, not a folder") as info:
      fileio.makedirs(str(path))
    assert "\n" not in str(info.value)
  fileio.makedirs(str(tmp_path / "new" / "folder"))
  assert (tmp_path / "new" / "folder").is_dir()
