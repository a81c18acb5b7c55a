"""Exceptions that the entry points turn into a one-line `error: ...` message (exit code 2), and
the entry points' exit codes. Imports nothing of gbt_t5x (every layer may import it).
"""

# Exit code of a run stopped by SIGTERM/SIGINT after saving a checkpoint (EX_TEMPFAIL: "try
# again"; rerunning the same command resumes). User errors exit with 2.
PREEMPTED_EXIT_CODE = 75


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
