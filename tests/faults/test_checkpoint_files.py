"""Damaged checkpoint files, at the checkpointer: every kind is caught in one line naming the
step (and the array or item where one is known), the newest checkpoint that verifies is restored
bit for bit, none verifying is one line, and nothing is written or deleted on the way.

Small states (tests/train/test_checkpoints.py's `_State`): each case takes well under a second.
"""
from __future__ import annotations

import os
import pathlib

import jax.numpy as jnp
import pytest

from gbt_t5x import errors
from gbt_t5x.train import checkpoints
from tests.train.test_checkpoints import METADATA, _abstract, _assert_bit_equal, _make_state
from tests.train.test_checkpoints import _snapshot


def _data_files(step_dir: pathlib.Path) -> list[pathlib.Path]:
  """The array data files of a checkpoint's state item (orbax's OCDBT `d/` folders)."""
  return sorted((p for p in (step_dir / "state").rglob("*")
                 if p.is_file() and p.parent.name == "d"), key=lambda p: -p.stat().st_size)


def _flip(path: pathlib.Path, offset: int, count: int = 1) -> None:
  """Inverts `count` bytes of `path` from `offset` (negative: from the end)."""
  data = bytearray(path.read_bytes())
  start = offset % len(data)
  for i in range(start, min(start + count, len(data))):
    data[i] ^= 0xFF
  path.write_bytes(bytes(data))


def _flip_array_data(step_dir):
  for path in _data_files(step_dir):
    _flip(path, len(path.read_bytes()) // 2, 16)


def _flip_json_digit(item, after=""):
  """Changes the first digit (after the text `after`) of a JSON item: the file stays valid JSON,
  only its content differs."""
  def damage(step_dir):
    path = step_dir / item / "metadata"
    text = path.read_text()
    i = next(i for i, ch in enumerate(text)
             if i > text.index(after) and ch.isdigit() and ch != "9")
    path.write_text(text[:i] + str(int(text[i]) + 1) + text[i + 1:])
  return damage


def _truncate(relative):
  def damage(step_dir):
    for path in ([step_dir / relative] if relative else _data_files(step_dir)):
      os.truncate(path, path.stat().st_size // 2)
  return damage


DAMAGE = {
    "array_data_bit_flips": (_flip_array_data, ""),
    "metadata_digit": (_flip_json_digit("metadata"), "metadata item does not match its checksum"),
    "manifest_digit": (_flip_json_digit("manifest"), "manifest item does not match its checksum"),
    "checksums_digit": (_flip_json_digit("checksums", after='"arrays"'),
                        "array .step does not match its checksum"),
    "truncated_array_files": (_truncate(None), ""),
    "truncated_metadata_json": (_truncate("metadata/metadata"), "unreadable"),
    "truncated_orbax_metadata": (_truncate("state/_METADATA"), ""),
}


@pytest.fixture
def two_checkpoints(tmp_path):
  """Checkpoints 1 and 2 of two different states: (checkpointer, state 1, state 2)."""
  ckpt = checkpoints.Checkpointer(str(tmp_path / "checkpoints"))
  s1, s2 = _make_state(0), _make_state(1)
  ckpt.save(1, s1, METADATA)
  ckpt.save(2, s2, METADATA)
  return ckpt, s1, s2


def _assert_one_line(e: BaseException, *fragments: str) -> None:
  text = str(e)
  assert "\n" not in text and text, text
  for fragment in fragments:
    assert fragment in text, (fragment, text)


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_damaged_newest_falls_back_to_the_older_one_and_writes_nothing(case, two_checkpoints):
  ckpt, s1, _ = two_checkpoints
  damage, fragment = DAMAGE[case]
  damage(pathlib.Path(ckpt.directory) / "2")
  before = _snapshot(ckpt.directory)
  with pytest.raises(errors.CorruptCheckpoint) as info:
    ckpt.restore(2, _abstract(s1))
  _assert_one_line(info.value, "checkpoint step 2 in", fragment,
                   "move it out of the way to resume from step 1")
  printed = []
  step, state, metadata, failed = ckpt.restore_newest_valid(_abstract(s1), printed.append)
  assert (step, failed, metadata) == (1, [2], METADATA)
  _assert_bit_equal(state, s1)
  assert len(printed) == 1 and printed[0].startswith("warning: checkpoint step 2 in ")
  assert printed[0].endswith("; trying an older checkpoint"), printed
  assert _snapshot(ckpt.directory) == before  # Nothing written, nothing deleted.


def test_array_checksum_names_the_array_orbax_reads_without_complaint(two_checkpoints, tmp_path):
  """A bit flip orbax cannot see (the checkpoint's arrays replaced by another state's bytes of
  the same shapes) is caught by the checksum of the first differing array."""
  ckpt, s1, s2 = two_checkpoints
  other = checkpoints.Checkpointer(str(tmp_path / "other"))
  s3 = s2.replace(params={**s2.params, "pair": (s2.params["pair"][0] + 1, s2.params["pair"][1])})
  other.save(2, s3, METADATA)
  state_dir = pathlib.Path(ckpt.directory) / "2" / "state"
  for name in ("ocdbt.process_0", "manifest.ocdbt", "d", "_METADATA", "array_metadatas"):
    src, dst = pathlib.Path(other.directory) / "2" / "state" / name, state_dir / name
    if dst.is_dir():
      import shutil
      shutil.rmtree(dst)
      shutil.copytree(src, dst)
    elif src.exists():
      dst.write_bytes(src.read_bytes())
  with pytest.raises(errors.CorruptCheckpoint) as info:
    ckpt.restore(2, _abstract(s1))
  _assert_one_line(info.value, "checkpoint step 2 in", "fails verification: array "
                   ".params['pair'][0] does not match its checksum")


def test_non_finite_array_fails_verification(tmp_path):
  ckpt = checkpoints.Checkpointer(str(tmp_path / "checkpoints"))
  s = _make_state(0)
  bad = s.replace(params={**s.params, "pair": (s.params["pair"][0].at[0, 1].set(jnp.inf),
                                               s.params["pair"][1])})
  ckpt.save(3, bad, METADATA)
  with pytest.raises(errors.CorruptCheckpoint) as info:
    ckpt.restore(3, _abstract(s))
  _assert_one_line(info.value, "checkpoint step 3 in", "fails verification: array "
                   ".params['pair'][0] holds non-finite values")


def test_none_verifies_is_one_line_naming_every_step(two_checkpoints):
  ckpt, s1, _ = two_checkpoints
  for step in ("1", "2"):
    _flip_json_digit("metadata")(pathlib.Path(ckpt.directory) / step)
  before = _snapshot(ckpt.directory)
  with pytest.raises(ValueError) as info:
    ckpt.restore_newest_valid(_abstract(s1), lambda line: None)
  _assert_one_line(info.value, f"no checkpoint in {ckpt.directory} verifies (steps 2, 1); the "
                   "newest: checkpoint step 2 in")
  assert _snapshot(ckpt.directory) == before


def test_quarantine_moves_the_step_aside_and_it_can_be_saved_anew(two_checkpoints):
  ckpt, s1, s2 = two_checkpoints
  _flip_json_digit("manifest")(pathlib.Path(ckpt.directory) / "2")
  moved = ckpt.quarantine(2)
  assert moved == os.path.join(os.path.dirname(ckpt.directory), "corrupt_checkpoints", "2")
  assert (pathlib.Path(moved) / "state").is_dir() and ckpt.all_steps() == [1]
  assert ckpt.save(2, s2, METADATA)
  _assert_bit_equal(ckpt.restore(2, _abstract(s2))[0], s2)
  assert ckpt.quarantine(2).endswith(os.path.join("corrupt_checkpoints", "2.1"))


def test_rotation_keeps_the_protected_step(tmp_path):
  ckpt = checkpoints.Checkpointer(str(tmp_path / "checkpoints"), keep=2)
  s = _make_state(0)
  for step in (1, 2):
    ckpt.save(step, s, METADATA)
  ckpt.protect(2)
  for step in (3, 4, 5):
    ckpt.save(step, s, METADATA)
  assert ckpt.all_steps() == [2, 4, 5]


def test_checkpoint_without_checksums_is_still_restored_and_checked_for_finiteness(
    two_checkpoints):
  """Checkpoints written before checksums existed restore as before (finiteness only)."""
  import shutil
  ckpt, _, s2 = two_checkpoints
  shutil.rmtree(pathlib.Path(ckpt.directory) / "2" / "checksums")
  _assert_bit_equal(ckpt.restore(2, _abstract(s2))[0], s2)


def test_export_refuses_a_trajectory_with_an_unknown_name(tmp_path):
  """A crafted name (a newline and a gin binding) is refused in one line; nothing is written."""
  import json
  from gbt_t5x.guided import export
  crafted = "b1/schedule.piecewise_linear()}\ntrain.total_steps = 1\n#"
  with open(tmp_path / export.TRAJECTORY_FILE, "w") as f:
    for i in range(4):
      f.write(json.dumps({"step": i + 1, "values": {"learning_rate": 1.0, crafted: 0.5}}) + "\n")
  with pytest.raises(ValueError) as info:
    export.export(str(tmp_path), num_knots=2)
  _assert_one_line(info.value, "the trajectory names an unknown hyper-parameter 'b1/schedule.",
                   "refusing to write it into gin (known: b1, b2,")
  assert not (tmp_path / export.SCHEDULE_FILE).exists()


def test_truncated_best_json_is_one_line_naming_the_file(tmp_path):
  from gbt_t5x.train import eval_hooks
  best = tmp_path / "best"
  best.mkdir()
  (best / "best.json").write_text('{"metric": "train_eval/lo')
  with pytest.raises(ValueError) as info:
    eval_hooks.BestCheckpointKeeper(str(tmp_path), "train_eval/loss", "min")
  _assert_one_line(info.value, f"{best / 'best.json'} is not valid JSON (Unterminated string")
