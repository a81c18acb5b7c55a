"""The last-known-good checkpoint policy of a training run (what `train_lib.train` saves and
keeps when training goes wrong).

* A checkpoint is saved only from a state whose recent window of steps (those since the previous
  save or evaluation stop) had no step skipped for a non-finite loss or gradient: a run that is
  failing does not save -- and so does not rotate out older checkpoints -- while it fails.
* The newest checkpoint saved before the state that produced the first non-finite step, or
  before the state that started the first diverged window (train loss above
  `divergence_factor` times the lowest window loss of this process), is protected from
  rotation (`keep`) for the rest of the run.
* When the run stops for too many non-finite steps, the message names the checkpoints truthfully.
Must not import gin.
"""
from __future__ import annotations

import math
from typing import Callable, Mapping

from gbt_t5x.train import checkpoints as checkpoints_lib


class LastKnownGood:
  """Decides whether to save after each training window and which checkpoint to protect.

  Args:
    checkpointer: the run's checkpointer (`protect` is called on it).
    divergence_factor: a window whose mean train loss exceeds this times the lowest window loss
      seen so far counts as diverged (for protection only; saving goes on), or None to ignore
      finite losses.
    print_fn: receives the one-line notices.
  """

  def __init__(self, checkpointer: checkpoints_lib.Checkpointer,
               divergence_factor: float | None = 10.0,
               print_fn: Callable[[str], None] = print):
    if divergence_factor is not None and not divergence_factor > 1:
      raise ValueError(f"divergence_factor must be None or > 1, got {divergence_factor}")
    self.checkpointer = checkpointer
    self.divergence_factor = divergence_factor
    self._print = print_fn
    self.protected_step: int | None = None
    self._first_bad_step: int | None = None  # Steps > this may be bad; checkpoints <= it good.
    self._lowest_loss = math.inf

  def observe(self, window_start: int, window: Mapping[str, float],
              first_nonfinite_step: int | None) -> bool:
    """Takes a finished training window; returns whether its final state may be saved.

    Args:
      window_start: the step the window started at.
      window: the window's finalized train metrics (`Trainer.train`'s return).
      first_nonfinite_step: `Trainer.first_nonfinite_step` (the state step after the first
        skipped step of this process), or None.
    """
    skipped = int(round(window.get("nonfinite_skipped", 0.0)))
    loss = window.get("loss")
    diverged = (self.divergence_factor is not None and loss is not None
                and math.isfinite(self._lowest_loss)
                and loss > self.divergence_factor * self._lowest_loss)
    if loss is not None and math.isfinite(loss) and not skipped:
      self._lowest_loss = min(self._lowest_loss, loss)
    if first_nonfinite_step is not None:
      # The skipped step's loss was computed from the state one step before it: that state may
      # itself be the broken one (an LR of 1e6 makes one finite-looking update, then NaNs), so
      # the last known good checkpoint is one saved before that state.
      self._mark_bad(first_nonfinite_step - 2)
    if diverged and self._first_bad_step is None:
      self._print(f"warning: train loss {loss:.4g} of the steps after {window_start} is over "
                  f"{self.divergence_factor:g} times the lowest so far ({self._lowest_loss:.4g}): "
                  "diverging?")
      # The window's losses were computed from the states from `window_start` on, so the state
      # at `window_start` (made by the update before it) may already be diverged: the last known
      # good checkpoint is one saved before it.
      self._mark_bad(window_start - 1)
    return skipped == 0

  def _mark_bad(self, last_good_step: int) -> None:
    """Protects the newest checkpoint at or before `last_good_step`, once per run."""
    if self._first_bad_step is not None and self._first_bad_step <= last_good_step:
      return
    self._first_bad_step = last_good_step
    good = [s for s in self.checkpointer.all_steps() if s <= last_good_step]
    if good and self.protected_step is None:
      self.protected_step = good[-1]
      self.checkpointer.protect(good[-1])
      self._print(f"checkpoint step {good[-1]} (the last before step {last_good_step + 1}) is "
                  "kept out of rotation as the last known good one")

  def skip_notice(self, step: int, window: Mapping[str, float]) -> str:
    """The one line printed instead of saving a checkpoint at `step`."""
    skipped = int(round(window.get("nonfinite_skipped", 0.0)))
    return (f"not saving a checkpoint at step {step}: {skipped} recent step(s) had a non-finite "
            f"loss or gradient; {self.newest_text()}")

  def newest_text(self) -> str:
    """Names the checkpoints a rerun would use (newest, and the protected one if older)."""
    steps = self.checkpointer.all_steps()
    if not steps:
      return f"no checkpoint has been saved in {self.checkpointer.directory}"
    text = (f"the newest checkpoint is step {steps[-1]} in {self.checkpointer.directory} (saved "
            "from finite steps)")
    if self.protected_step is not None and self.protected_step != steps[-1]:
      text += (f"; the last before the first non-finite or diverged step is step "
               f"{self.protected_step}")
    return text
