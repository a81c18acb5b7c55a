"""Exceptions that the entry points turn into a one-line `error: ...` message (exit code 2), and
the entry points' exit codes. Imports nothing of gbt_t5x (every layer may import it).
"""

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
