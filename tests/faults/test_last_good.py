"""The last-known-good policy (`train/last_good.py`) on a real checkpointer with a small state:
which windows may save, which checkpoint is protected from rotation, what the stop names."""
from __future__ import annotations

from gbt_t5x.train import checkpoints, last_good
from tests.train.test_checkpoints import METADATA, _make_state


def _policy(tmp_path, printed):
  ckpt = checkpoints.Checkpointer(str(tmp_path / "checkpoints"), keep=2)
  return ckpt, last_good.LastKnownGood(ckpt, divergence_factor=10.0, print_fn=printed.append)


def _two_good_checkpoints(tmp_path, printed):
  """A policy that saw two finite windows, each followed by a save (checkpoints 10 and 20)."""
  ckpt, policy = _policy(tmp_path, printed)
  state = _make_state(0)
  for step in (10, 20):
    assert policy.observe(step - 10, {"loss": 2.0}, None)
    ckpt.save(step, state, METADATA)
  return ckpt, policy, state


def test_diverged_window_protects_the_checkpoint_before_it(tmp_path):
  printed = []
  ckpt, policy = _policy(tmp_path, printed)
  state = _make_state(0)
  for step, loss in ((10, 5.0), (20, 2.0), (30, 1.5)):
    assert policy.observe(step - 10, {"loss": loss}, None)
    ckpt.save(step, state, METADATA)
  # Loss 40x the lowest from the state at step 30 on: diverged (finite, so it still saves). The
  # state at 30 produced those losses (the update before it may be the diverging one, as with a
  # LR of 1e6), so checkpoint 20, the one before it, is protected.
  assert policy.observe(30, {"loss": 60.0}, None)
  assert policy.protected_step == 20 and any("diverging?" in line for line in printed)
  for step in (40, 50, 60):
    ckpt.save(step, state, METADATA)
    assert policy.observe(step, {"loss": 70.0}, None)
  assert ckpt.all_steps() == [20, 50, 60]
  assert policy.newest_text().endswith("; the last before the first non-finite or diverged step "
                                       "is step 20")


def test_non_finite_window_does_not_save_and_protects_the_last_finite_checkpoint(tmp_path):
  printed = []
  ckpt, policy, state = _two_good_checkpoints(tmp_path, printed)
  # State step 23 came after the first skipped step, computed from state 22: checkpoint 20 is
  # the last good one.
  assert not policy.observe(20, {"loss": 2.0, "nonfinite_skipped": 2.0}, 23)
  assert policy.protected_step == 20
  assert policy.skip_notice(30, {"nonfinite_skipped": 2.0}) == (
      "not saving a checkpoint at step 30: 2 recent step(s) had a non-finite loss or gradient; "
      f"the newest checkpoint is step 20 in {ckpt.directory} (saved from finite steps)")
  for step in (40, 50, 60):  # Finite again: saving goes on, 20 stays.
    assert policy.observe(step - 10, {"loss": 1.9}, 23)
    ckpt.save(step, state, METADATA)
  assert ckpt.all_steps() == [20, 50, 60]


def test_state_that_produced_the_first_non_finite_step_is_not_called_good(tmp_path):
  """Checkpoint 20 was saved after a window of finite losses, but the state it holds produced
  the first non-finite loss (state step 21 follows the skipped step): 10 is the last good one."""
  printed = []
  ckpt, policy, state = _two_good_checkpoints(tmp_path, printed)
  assert not policy.observe(20, {"nonfinite_skipped": 10.0}, 21)
  assert policy.protected_step == 10
  assert printed[-1] == ("checkpoint step 10 (the last before step 20) is kept out of rotation "
                         "as the last known good one")
