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
drops those known Python notices. A library's background thread that logs a refused write (orbax's
checkpoint writer on a full disk logs each thread's traceback) is dropped too: the entry point
reports that failure itself, in one line (`errors.exit_code_of`); so are the "Event loop is
closed" tracebacks that the failed write's late I/O callbacks print (each raised in asyncio's
`call_soon_threadsafe`, called from TensorStore's threads after orbax closed its loop; Python
reports such exceptions through `sys.unraisablehook`), and the exceptions of orbax's read
coroutines abandoned after one shard of a damaged checkpoint failed to read (the entry point's
warning names the checkpoint). Everything else
still shows: the project's progress, eval and report lines, and warnings that matter (a skipped
non-finite step, a data problem). `--verbose` or `GBT_T5X_VERBOSE=1` keeps every library line.

Imports only the standard library and `gbt_t5x.errors` (it runs before TensorFlow and JAX are
imported).
"""
from __future__ import annotations

import logging
import os
import sys
import tempfile
from typing import Any, Callable, Sequence

from gbt_t5x import errors

VERBOSE_FLAG = "--verbose"
VERBOSE_ENV = "GBT_T5X_VERBOSE"

# Python-logged library notices dropped unless verbose (matched at the start of the message).
KNOWN_NOTICES = (
    "Using an uncached FunctionDataset",
    "Features not in `features_length` will be removed during packing",
)


class _DropKnownNotices(logging.Filter):
  """Drops the `KNOWN_NOTICES`, and error records whose exception is the filesystem refusing a
  write (the entry point's own one-line error names it)."""

  def filter(self, record: logging.LogRecord) -> bool:
    if str(record.getMessage()).startswith(KNOWN_NOTICES):
      return False
    exception = record.exc_info[1] if record.exc_info else None
    return exception is None or errors.write_failure(exception) is None


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
  sys.unraisablehook = _skip_closed_loop_unraisables(sys.unraisablehook)
  return False


def _is_closed_loop_callback(kind: type, value: BaseException, traceback) -> bool:
  """Whether an exception is a library callback's "Event loop is closed": its outermost frame is
  asyncio's own `call_soon_threadsafe`, i.e. it was raised in a foreign thread's callback, never
  in the main program."""
  outermost = traceback.tb_frame.f_code if traceback is not None else None
  return (kind is RuntimeError and str(value) == "Event loop is closed" and outermost is not None
          and outermost.co_name == "call_soon_threadsafe"
          and os.path.basename(os.path.dirname(outermost.co_filename)) == "asyncio")


# Packages whose abandoned I/O coroutines may report an exception after the read or write they
# served failed (and was reported by the entry point).
_CHECKPOINT_IO_PACKAGES = ("orbax", "tensorstore")


def _is_abandoned_checkpoint_io(unraisable: Any) -> bool:
  """Whether an unraisable exception comes from a checkpoint library's coroutine that was
  garbage-collected with its exception unread (orbax reads an array's shards concurrently; when
  one fails, the others' errors are never awaited)."""
  code = getattr(unraisable.object, "cr_code", None)
  parts = code.co_filename.split(os.sep) if code is not None else []
  return any(package in parts for package in _CHECKPOINT_IO_PACKAGES)


def _skip_closed_loop_unraisables(hook: Callable[..., None]) -> Callable[..., None]:
  """`sys.unraisablehook` `hook` (how TensorStore reports a callback's exception, and Python an
  abandoned coroutine's), printing nothing for `_is_closed_loop_callback` exceptions and
  `_is_abandoned_checkpoint_io` ones: no code can act on them; the failed read or write itself
  reaches the entry point, which reports it in one line."""

  def unraisablehook(unraisable) -> None:
    if not (_is_closed_loop_callback(unraisable.exc_type, unraisable.exc_value,
                                     unraisable.exc_traceback)
            or _is_abandoned_checkpoint_io(unraisable)):
      hook(unraisable)

  return unraisablehook


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
