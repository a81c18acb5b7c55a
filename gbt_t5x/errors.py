"""Exceptions that the entry points turn into a one-line `error: ...` message (exit code 2)."""


class TrainingStopped(RuntimeError):
  """Training cannot safely continue (e.g. too many non-finite losses); checkpoints are intact."""
