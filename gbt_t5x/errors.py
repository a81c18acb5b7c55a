"""Exceptions that the entry points turn into a one-line `error: ...` message (exit code 2), the
entry points' exit codes, and the one place that maps them (`exit_code_of`). Imports nothing of
gbt_t5x (every layer may import it).
"""
from __future__ import annotations

import errno
import sys
from typing import Callable

# Exit code of a run stopped by SIGTERM/SIGINT after saving a checkpoint (EX_TEMPFAIL: "try
# again"; rerunning the same command resumes). User errors exit with 2.
PREEMPTED_EXIT_CODE = 75


def one_line(e: BaseException) -> str:
  """The first line of an error's message (the entry points print nothing more); gin appends
  "In file ..., line N" context lines, whose location is kept in parentheses."""
  text = str(e).strip() or type(e).__name__
  lines = [l.strip() for l in text.splitlines() if l.strip()]
  head = lines[0]
  where = next((l for l in lines[1:] if l.startswith("In file") or l.startswith("In bindings")), "")
  return f"{head} ({where})" if where else head


def exit_code_of(body: Callable[[], int | None],
                 user_errors: tuple[type[BaseException], ...] = (ValueError,)) -> int:
  """Runs an entry point's `body` and returns its exit code: 0 (or what it returns); a user
  error (`user_errors`) becomes one `error: ...` line on stderr and 2; a run stopped by
  SIGTERM/SIGINT (checkpoint saved; rerunning continues) one `preempted: ...` line and
  `PREEMPTED_EXIT_CODE`. Anything else propagates with its traceback (a bug, not bad input)."""
  try:
    return int(body() or 0)
  except Preempted as e:
    print(f"preempted: {one_line(e)}", file=sys.stderr)
    return PREEMPTED_EXIT_CODE
  except user_errors as e:
    print(f"error: {one_line(e)}", file=sys.stderr)
    return 2
  except Exception as e:  # pylint: disable=broad-except
    reason = write_failure(e)
    if reason is None:
      raise
    print(f"error: cannot write: {reason}; free space or make the output folder writable, then "
          "rerun the same command (completed checkpoints are intact)", file=sys.stderr)
    return 2


# errno of a write refused by the filesystem (full, read-only, not permitted): the user's to fix.
_WRITE_ERRNOS = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
                 errno.EROFS: "read-only file system", errno.EACCES: "permission denied",
                 errno.EPERM: "operation not permitted"}


def write_failure(e: BaseException) -> str | None:
  """What stopped a write, when `e` (or an exception it was raised from) is the filesystem
  refusing it (full, read-only, not permitted): e.g. 'no space left on device (/run/x)';
  else None. Libraries that wrap the OSError (orbax, tensorstore) are matched by its text."""
  chain: list[BaseException] = []
  while e is not None and all(e is not seen for seen in chain):
    chain.append(e)
    e = e.__cause__ or e.__context__
  for link in chain:
    if isinstance(link, OSError) and link.errno in _WRITE_ERRNOS:
      return _WRITE_ERRNOS[link.errno] + (f" ({link.filename})" if link.filename else "")
  for link in chain:
    text = str(link).lower()
    for reason in _WRITE_ERRNOS.values():
      if reason in text:
        return reason
  return None


class TrainingStopped(RuntimeError):
  """Training cannot safely continue (e.g. too many non-finite losses); checkpoints are intact."""


class Preempted(Exception):
  """The run stopped at a step boundary on SIGTERM/SIGINT after saving a checkpoint."""

  def __init__(self, step: int, signal_name: str | None):
    super().__init__(f"stopped by {signal_name or 'a signal'} at step {step} after saving a "
                     "checkpoint; rerun the same command to continue")
    self.step = step


class ModelDirInUse(ValueError):
  """Another live run holds MODEL_DIR's run lock (the message names its host, pid, start time)."""


class CorruptCheckpoint(ValueError):
  """A listed checkpoint cannot be read or fails verification (a checksum differs, a restored
  array is non-finite, an item is missing or cut short). The message is one line naming the step
  and, where known, the failing array; the training entry falls back to an older checkpoint."""

  def __init__(self, step: int, reason: str, hint: str = ""):
    """`reason`: what is wrong (one line); `hint`: what to do, appended to the message."""
    super().__init__(reason + hint)
    self.step = int(step)
    self.reason = reason


class WriteFailed(ValueError):
  """The filesystem refused a write (full, read-only, not permitted); one line naming what was
  being written and what is still intact."""
