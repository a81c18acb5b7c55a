"""Faults met by a training run, end to end through the train entry point (in this process, as
`tests/test_bad_input.py` runs it): a corrupted newest checkpoint, every checkpoint corrupted, a
continuation whose updates all go non-finite, TRAIN_STEPS below the checkpoint's step, and a full
or read-only MODEL_DIR (write hooks raising ENOSPC / EROFS: tests run as root here, where file
modes do not stop writes and no size-limited filesystem can be mounted).

Each asserts that no good checkpoint is lost, that the run resumes from the right step (and
ends equal to an uninterrupted run), and that a refusal is one line. One plain 5-step demo run
(checkpoints 3, 4, 5; keep = 3) is copied for every case.
"""
from __future__ import annotations

import errno
import json
import os
import pathlib
import shutil
import sys

import gin
import pytest

from gbt_t5x import gin_utils
from gbt_t5x.train import train_lib
from tests.faults.test_checkpoint_files import _flip_array_data, _flip_json_digit
from tests.test_bad_input import BASE_FLAGS, assert_one_line_error, cli, world  # noqa: F401
from tests.train.test_cli import DEMO_CONFIG, checkpoint_steps, snapshot

STEPS = ("--gin.TRAIN_STEPS=5",)
# End-to-end runs (about 2 minutes of CPU in all): scheduled early with the other slow modules.
pytestmark = pytest.mark.slow


def _run_in_process(model_dir: pathlib.Path, world_dir: pathlib.Path, *flags: str) -> int:
  """One entry-point run outside any test's fixtures (for module-scoped fixtures)."""
  import gbt_t5x.train.__main__ as train_main
  saved = {k: os.environ.get(k) for k in ("GBT_T5X_DEMO_DIR", "GBT_T5X_DEMO_CONFIG")}
  main_module = sys.modules["__main__"]
  old_train = getattr(main_module, "train", None)
  os.environ.update(GBT_T5X_DEMO_DIR=str(world_dir), GBT_T5X_DEMO_CONFIG=json.dumps(DEMO_CONFIG))
  main_module.train = train_lib.train
  gin.clear_config()
  try:
    return gin_utils.run(train_main.main, "test",
                         argv=[*BASE_FLAGS, f"--gin.MODEL_DIR={str(model_dir)!r}", *flags])
  finally:
    gin.clear_config()
    for k, v in saved.items():
      if v is None:
        os.environ.pop(k, None)
      else:
        os.environ[k] = v
    if old_train is None:
      del main_module.train
    else:
      main_module.train = old_train


@pytest.fixture(scope="module")
def good_run(world, tmp_path_factory):  # noqa: F811
  model_dir = tmp_path_factory.mktemp("good") / "run"
  assert _run_in_process(model_dir, world, *STEPS) == 0
  assert checkpoint_steps(model_dir) == [3, 4, 5]
  return model_dir


def _copy(good_run: pathlib.Path, tmp_path: pathlib.Path) -> pathlib.Path:
  model_dir = tmp_path / "run"
  shutil.copytree(good_run, model_dir)
  return model_dir


def _state_files(step_dir: pathlib.Path) -> dict[str, bytes]:
  return {str(p.relative_to(step_dir)): p.read_bytes()
          for p in sorted(step_dir.rglob("*")) if p.is_file()}


def _trained_checksums(model_dir: pathlib.Path, step: int) -> dict[str, str]:
  """The saved CRC-32s of checkpoint `step`'s params and optimizer state."""
  sums = json.loads((model_dir / "checkpoints" / str(step) / "checksums" / "metadata").read_text())
  return {k: v for k, v in sums["arrays"].items() if k.startswith((".params", ".opt_state"))}


def test_corrupt_newest_falls_back_resumes_and_equals_the_uninterrupted_run(cli, good_run,  # noqa: F811
                                                                             tmp_path):
  model_dir = _copy(good_run, tmp_path)
  _flip_array_data(model_dir / "checkpoints" / "5")
  damaged = _state_files(model_dir / "checkpoints" / "5")
  rc, err = cli(model_dir, *STEPS)
  assert rc == 0, err
  # The damaged checkpoint is kept, out of the way; training redid step 5 from checkpoint 4.
  assert _state_files(model_dir / "corrupt_checkpoints" / "5") == damaged
  assert checkpoint_steps(model_dir) == [3, 4, 5]
  # Same arrays, bit for bit (CRC-32).
  assert _trained_checksums(model_dir, 5) == _trained_checksums(good_run, 5)


def test_every_checkpoint_corrupt_is_one_line_and_writes_nothing(cli, good_run, tmp_path):  # noqa: F811
  model_dir = _copy(good_run, tmp_path)
  for step in (3, 4, 5):
    _flip_json_digit("metadata")(model_dir / "checkpoints" / str(step))
  before = snapshot(model_dir)
  rc, err = cli(model_dir, *STEPS)
  ckpt = model_dir / "checkpoints"
  assert_one_line_error(rc, err, f"no checkpoint in {ckpt} verifies (steps 5, 4, 3); the newest: "
                        f"checkpoint step 5 in {ckpt} fails verification: the metadata item")
  assert snapshot(model_dir) == before


def test_non_finite_continuation_keeps_every_good_checkpoint(cli, good_run, tmp_path):  # noqa: F811
  """A continuation whose every update is non-finite (learning rate 1e30): no checkpoint is
  saved or rotated out, the stop message names the newest good checkpoint, and metrics.jsonl
  holds no loss for the skipped steps."""
  model_dir = _copy(good_run, tmp_path)
  kept = {s: _state_files(model_dir / "checkpoints" / str(s)) for s in (3, 4, 5)}
  rc, err = cli(model_dir, "--gin.TRAIN_STEPS=12", "--gin.trainer.Trainer.max_nonfinite_steps=3",
                "--gin.learning_rate.create_learning_rate_scheduler.base_learning_rate=1e30",
                "--gin.learning_rate.create_learning_rate_scheduler.total_steps=1000")
  assert_one_line_error(rc, err, "stopping at step 9: 4 steps had a non-finite loss or gradient",
                        f"the newest checkpoint is step 5 in {model_dir / 'checkpoints'}")
  assert {s: _state_files(model_dir / "checkpoints" / str(s)) for s in (3, 4, 5)} == kept
  assert checkpoint_steps(model_dir) == [3, 4, 5]
  records = [json.loads(l) for l in (model_dir / "metrics.jsonl").read_text().splitlines()]
  late = [r for r in records if r["step"] > 5 and any(k.startswith("train/") for k in r)]
  assert late and all("train/loss" not in r and r["train/nonfinite_skipped"] == 1 for r in late)


def test_train_steps_below_the_checkpoint_is_one_line(cli, good_run, tmp_path):  # noqa: F811
  model_dir = _copy(good_run, tmp_path)
  before = snapshot(model_dir)
  rc, err = cli(model_dir, "--gin.TRAIN_STEPS=2")
  assert_one_line_error(rc, err, "total_steps (TRAIN_STEPS) 2 is below the step of the checkpoint "
                        f"to resume, 5 in {model_dir / 'checkpoints'}")
  assert snapshot(model_dir) == before


# ----------------------------------------------------------------------------------------------
# Typos and impossible values: one line, nothing written.

BAD_VALUES = {
    "misspelled_macro": (["--gin.TRAIN_STEP=20"],
                         ["gin binding 'TRAIN_STEP = 20': no gin file binds or uses the macro "
                          "TRAIN_STEP (a typo?); did you mean TRAIN_STEPS"]),
    "batch_size_zero": (["--gin.BATCH_SIZE=0"], ["batch_size (BATCH_SIZE) must be an int > 0, "
                                                 "got 0"]),
    "negative_meta_lr": (["--gin_file=experiments/demo_nmt_guided.gin", "--gin.GUIDE_BATCH_SIZE=8",
                          "--gin.META_LEARNING_RATE=-0.01"],
                         ["the meta learning rate (META_LEARNING_RATE) must be finite and >= 0 "
                          "(0 freezes the values), got -0.01"]),
    "nan_meta_lr": (["--gin_file=experiments/demo_nmt_guided.gin",
                     "--gin.META_LEARNING_RATE=nan"],
                    ["gin binding 'META_LEARNING_RATE = nan'", "nan is not one, and no "
                     "hyper-parameter may be non-finite"]),
}


@pytest.mark.parametrize("case", sorted(BAD_VALUES))
def test_typos_and_impossible_values_are_one_line(case, cli, tmp_path):  # noqa: F811
  flags, fragments = BAD_VALUES[case]
  model_dir = tmp_path / "run"
  model_dir.mkdir()
  (model_dir / "notes.txt").write_text("kept\n")
  before = snapshot(model_dir)
  rc, err = cli(model_dir, *flags)
  assert_one_line_error(rc, err, *fragments)
  assert snapshot(model_dir) == before


def test_broken_metrics_line_is_refused_before_training(cli, good_run, tmp_path):  # noqa: F811
  model_dir = _copy(good_run, tmp_path)
  path = model_dir / "metrics.jsonl"
  lines = path.read_text().splitlines(keepends=True)
  path.write_text("".join([lines[0][:10] + "\n", *lines[1:]]))
  before = snapshot(model_dir)
  rc, err = cli(model_dir, "--gin.TRAIN_STEPS=6")
  assert_one_line_error(rc, err, f"{path}:1: not a JSON line", "fix or remove that line")
  assert snapshot(model_dir) == before


# ----------------------------------------------------------------------------------------------
# A full or read-only MODEL_DIR (write hooks: as root, file modes do not stop writes).

def test_full_disk_at_a_checkpoint_is_one_line_and_the_rerun_resumes(cli, good_run, tmp_path,  # noqa: F811
                                                                      monkeypatch):
  import orbax.checkpoint as ocp
  model_dir = _copy(good_run, tmp_path)
  kept = {s: _state_files(model_dir / "checkpoints" / str(s)) for s in (3, 4, 5)}

  def full(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device", str(model_dir / "checkpoints"))

  with monkeypatch.context() as patch:
    patch.setattr(ocp.CheckpointManager, "save", full)
    rc, err = cli(model_dir, "--gin.TRAIN_STEPS=7")
  assert_one_line_error(rc, err, f"cannot write checkpoint step 6 to {model_dir / 'checkpoints'}: "
                        "no space left on device", "(steps [3, 4, 5])")
  assert {s: _state_files(model_dir / "checkpoints" / str(s)) for s in (3, 4, 5)} == kept
  rc, err = cli(model_dir, "--gin.TRAIN_STEPS=7")
  assert rc == 0, err
  assert checkpoint_steps(model_dir) == [5, 6, 7]


def test_read_only_model_dir_is_one_line(cli, tmp_path, monkeypatch):  # noqa: F811
  from gbt_t5x import fileio
  model_dir = tmp_path / "run"
  real_makedirs = fileio.makedirs

  def read_only(path):
    if str(path).startswith(str(model_dir)):
      raise OSError(errno.EROFS, "Read-only file system", str(path))
    real_makedirs(path)

  monkeypatch.setattr(fileio, "makedirs", read_only)
  rc, err = cli(model_dir)
  assert_one_line_error(rc, err, f"cannot write: read-only file system ({model_dir})")
  assert not model_dir.exists()
