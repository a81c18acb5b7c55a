"""Preemption: SIGTERM/SIGINT ask the run to stop at the next step boundary after a checkpoint.

`PreemptionGuard` installs handlers that only set a flag (a second signal restores the default
behaviour, so a stuck run can still be killed). The trainer polls `should_stop()` after every
step; with several JAX processes the flag is OR-ed across processes every `sync_every` steps so
that all of them stop at the same step. The entry point then saves a checkpoint and exits with
`errors.PREEMPTED_EXIT_CODE` (75, EX_TEMPFAIL: "try again"); rerunning the same command resumes.
Must not import gin, seqio or `gbt_t5x.models`.
"""
from __future__ import annotations

import signal
from types import FrameType

import jax
import numpy as np

from gbt_t5x.errors import PREEMPTED_EXIT_CODE  # noqa: F401  (re-exported)
_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class PreemptionGuard:
  """Context manager turning SIGTERM/SIGINT into a polled stop request."""

  def __init__(self, sync_every: int = 10):
    self.sync_every = max(1, int(sync_every))
    self.requested = False
    self.signal_name: str | None = None
    self._previous: dict[int, object] = {}
    self._polls = 0

  def _handle(self, signum: int, frame: FrameType | None) -> None:
    del frame
    if self.requested:  # Second signal: give up on a clean stop.
      signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))
      signal.raise_signal(signum)
      return
    self.requested = True
    self.signal_name = signal.Signals(signum).name

  def __enter__(self) -> "PreemptionGuard":
    for sig in _SIGNALS:
      try:
        self._previous[sig] = signal.signal(sig, self._handle)
      except ValueError:  # Not the main thread: signals cannot be caught here.
        pass
    return self

  def __exit__(self, *exc) -> None:
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)

  def should_stop(self) -> bool:
    """Whether to stop after this step; agreed by all processes (checked every sync_every)."""
    if jax.process_count() == 1:
      return self.requested
    self._polls += 1
    if self._polls % self.sync_every:
      return False
    from jax.experimental import multihost_utils
    flags = multihost_utils.process_allgather(np.array([self.requested], np.int32))
    self.requested = bool(np.any(flags))
    return self.requested
