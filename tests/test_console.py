"""The quiet console (`gbt_t5x.console`): which library log records and unraisable exceptions
it drops."""
from __future__ import annotations

import asyncio
import errno
import logging
import sys
import types

from gbt_t5x import console


def _record(message: str, exception: BaseException | None = None) -> logging.LogRecord:
  exc_info = None
  if exception is not None:
    try:
      raise exception
    except type(exception):
      exc_info = sys.exc_info()
  return logging.LogRecord("absl", logging.ERROR, __file__, 1, message, None, exc_info)


def test_drops_a_background_threads_refused_write_and_keeps_other_errors():
  drop = console._DropKnownNotices()  # pylint: disable=protected-access
  # As orbax's writer thread logs a full disk: the entry point reports it in one line instead.
  full = OSError(errno.ENOSPC, "No space left on device")
  assert not drop.filter(_record("_SignalingThread.run() raised an exception", full))
  wrapped = ValueError("RESOURCE_EXHAUSTED: Failed writing: No space left on device")
  assert not drop.filter(_record("_SignalingThread.run() raised an exception", wrapped))
  assert not drop.filter(_record("Using an uncached FunctionDataset for task x"))
  # Anything else still shows.
  assert drop.filter(_record("_SignalingThread.run() raised an exception", KeyError("params")))
  assert drop.filter(_record("a data problem"))


def _unraisable(exc_value: BaseException, exc_traceback=None, obj=None):
  """What Python passes to `sys.unraisablehook`."""
  return types.SimpleNamespace(exc_type=type(exc_value), exc_value=exc_value,
                               exc_traceback=exc_traceback, err_msg=None, object=obj)


def test_unraisablehook_skips_only_a_callbacks_closed_loop_error():
  printed = []
  hook = console._skip_closed_loop_unraisables(  # pylint: disable=protected-access
      lambda unraisable: printed.append(str(unraisable.exc_value)))
  loop = asyncio.new_event_loop()
  loop.close()
  try:  # As TensorStore's thread calls it after a failed write closed orbax's loop.
    loop.call_soon_threadsafe(print)
  except RuntimeError:
    _, value, tb = sys.exc_info()
  # The traceback as Python reports it for a foreign callback starts at call_soon_threadsafe.
  hook(_unraisable(value, tb.tb_next))
  assert printed == []
  hook(_unraisable(value, tb))  # Raised through this program's own frames: shown.
  hook(_unraisable(KeyError("x"), tb.tb_next))
  assert printed == ["Event loop is closed", "'x'"]


def test_unraisablehook_skips_an_abandoned_checkpoint_read():
  printed = []
  hook = console._skip_closed_loop_unraisables(  # pylint: disable=protected-access
      lambda unraisable: printed.append(unraisable.object))

  def coroutine_from(filename: str):
    code = compile("async def read():\n  pass\n", filename, "exec")
    namespace = {}
    exec(code, namespace)  # pylint: disable=exec-used
    return namespace["read"]()

  error = Exception("Encountered error while reading array index")
  for filename, shown in (("/venv/site-packages/orbax/checkpoint/serialization.py", False),
                          ("/work/mine.py", True)):
    coroutine = coroutine_from(filename)
    hook(_unraisable(error, obj=coroutine))
    coroutine.close()
    assert (coroutine in printed) == shown
