"""A quiet console for the entry points: the project's own lines, not the libraries' notices.

TensorFlow (which only feeds data here) and XLA print C++ log lines when they load (oneDNN
notices, "Could not find cuda drivers", a `cuInit` error on machines without a GPU, the absl
"log messages before InitializeLog" banner), and SeqIO logs the same Python warnings for every
pipeline it builds ("uncached FunctionDataset", "Features not in `features_length` will be
removed during packing"). None of them tells a user of this project anything they can act on, so
by default `configure` silences the C++ logs below FATAL (`TF_CPP_MIN_LOG_LEVEL=3`, which must be
set before TensorFlow or JAX are imported), imports TensorFlow with the process's stderr (file
descriptor 2) sent to a temporary file — TensorFlow 2.21 writes its load-time lines before its
log level applies, and no setting reaches them; the file is replayed if the import fails — and
drops those known Python notices. Everything else
still shows: the project's progress, eval and report lines, and warnings that matter (a skipped
non-finite step, a data problem). `--verbose` or `GBT_T5X_VERBOSE=1` keeps every library line.

Imports only the standard library (it runs before TensorFlow and JAX are imported).
"""
from __future__ import annotations

import logging
import os
import sys
import tempfile
from typing import Sequence

VERBOSE_FLAG = "--verbose"
VERBOSE_ENV = "GBT_T5X_VERBOSE"

# Python-logged library notices dropped unless verbose (matched at the start of the message).
KNOWN_NOTICES = (
    "Using an uncached FunctionDataset",
    "Features not in `features_length` will be removed during packing",
)


class _DropKnownNotices(logging.Filter):
  def filter(self, record: logging.LogRecord) -> bool:
    return not str(record.getMessage()).startswith(KNOWN_NOTICES)


def is_verbose(argv: Sequence[str] = ()) -> bool:
  """True if `--verbose` is among `argv` or `GBT_T5X_VERBOSE` is set to a true value."""
  return VERBOSE_FLAG in argv or os.environ.get(VERBOSE_ENV, "").lower() in ("1", "true", "yes")


def configure(argv: Sequence[str] = (), import_tensorflow: bool = True) -> bool:
  """Quiets the libraries' console output unless verbose; returns whether it is verbose.

  Call at the top of an entry point, before TensorFlow or JAX are imported (their C++ logging
  reads `TF_CPP_MIN_LOG_LEVEL` once, at load). A level the user set in the environment is kept.
  `import_tensorflow=False` leaves the (quiet) TensorFlow import to a later
  `import_tensorflow_quietly()`, for entry points that check their flags first: importing
  TensorFlow takes seconds, a one-line error about a flag should not.
  """
  verbose = is_verbose(argv)
  if verbose:
    return True
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  if import_tensorflow:
    import_tensorflow_quietly()
  drop = _DropKnownNotices()
  for name in ("absl", ""):  # SeqIO logs through absl's logger; filters apply where records start.
    logging.getLogger(name).addFilter(drop)
  return False


def import_tensorflow_quietly() -> None:
  """Imports TensorFlow with fd 2 redirected; on failure the captured output is shown. (Does
  nothing more once TensorFlow is loaded.)"""
  if "tensorflow" in sys.modules:
    return
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile() as captured:
    os.dup2(captured.fileno(), 2)
    try:
      import tensorflow  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
    except BaseException:
      os.dup2(saved, 2)
      captured.seek(0)
      sys.stderr.write(captured.read().decode("utf-8", errors="replace"))
      raise
    finally:
      sys.stderr.flush()
      os.dup2(saved, 2)
      os.close(saved)
