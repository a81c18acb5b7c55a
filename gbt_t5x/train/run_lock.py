"""One writer per model dir: `MODEL_DIR/run.lock`, held by the run that trains there.

The lock file is JSON {host, pid, start_time, heartbeat_time, token} (times in Unix seconds),
written through `gbt_t5x.fileio`, so it works on `gs://` model dirs too. A background thread
refreshes `heartbeat_time` every `heartbeat_s` seconds. A second run on the same dir is refused
with `errors.ModelDirInUse` (one line naming the holder) before it writes anything. A lock left
by a killed run is *stale* -- same host and its pid is gone, or its heartbeat is older than
`stale_after_s` -- and is taken over with a logged line, so a preempted or killed run restarts
unattended. Only process 0 of a multi-process job takes the lock.

Taking the lock is create-exclusive on local disks; on object stores (no exclusive create
through epath) it is write-then-read-back of a random token, which catches all but two starts
within the same fraction of a second.
"""
from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from typing import Any, Callable

from gbt_t5x import errors
from gbt_t5x import fileio

LOCK_FILE = "run.lock"


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # Exists, owned by someone else.
    return True
  return True


def _fmt_time(t: float) -> str:
  return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def read_holder(model_dir: str) -> dict[str, Any] | None:
  """The lock file's content, or None when there is no lock (or it is unreadable/torn)."""
  path = fileio.join(model_dir, LOCK_FILE)
  try:
    holder = json.loads(fileio.read_text(path))
  except (FileNotFoundError, ValueError):
    return None
  except Exception:  # pylint: disable=broad-except -- remote backends raise their own types.
    if not fileio.exists(path):
      return None
    raise
  return holder if isinstance(holder, dict) else None


def stale_reason(holder: dict[str, Any], stale_after_s: float,
                 now: float | None = None) -> str | None:
  """Why `holder`'s lock is stale (its process is gone / heartbeat too old), or None if live."""
  now = time.time() if now is None else now
  try:
    host, pid = str(holder["host"]), int(holder["pid"])
    heartbeat = float(holder["heartbeat_time"])
  except (KeyError, TypeError, ValueError):
    return "the lock file is malformed"
  if host == socket.gethostname() and pid != os.getpid() and not _pid_alive(pid):
    return f"process {pid} on {host} is gone"
  if now - heartbeat > stale_after_s:
    return f"its heartbeat is {now - heartbeat:.0f}s old (> {stale_after_s:g}s)"
  return None


def describe(holder: dict[str, Any]) -> str:
  """`host H pid P (started T, heartbeat Ns ago)`."""
  try:
    age = f", heartbeat {time.time() - float(holder['heartbeat_time']):.0f}s ago"
  except (KeyError, TypeError, ValueError):
    age = ""
  started = holder.get("start_time")
  started = _fmt_time(float(started)) if isinstance(started, (int, float)) else "?"
  return f"host {holder.get('host', '?')} pid {holder.get('pid', '?')} (started {started}{age})"


def check_free(model_dir: str, stale_after_s: float) -> None:
  """Raises `errors.ModelDirInUse` when a live run holds `model_dir`'s lock; writes nothing."""
  holder = read_holder(model_dir)
  if holder is not None and stale_reason(holder, stale_after_s) is None:
    raise errors.ModelDirInUse(
        f"model dir {model_dir} is in use by another run: {describe(holder)}; wait for it to "
        f"end, or remove {fileio.join(model_dir, LOCK_FILE)} if that run is gone")


class RunLock:
  """Holds `MODEL_DIR/run.lock` from `acquire()` until `release()` (also a context manager)."""

  def __init__(self, model_dir: str, heartbeat_s: float = 60.0, stale_after_s: float = 600.0,
               print_fn: Callable[[str], None] = print, enabled: bool = True):
    """Args:
      model_dir: the run directory (local or URL); created by `acquire`.
      heartbeat_s: seconds between heartbeat refreshes (> 0).
      stale_after_s: a lock whose heartbeat is older than this many seconds is stale
        (> heartbeat_s).
      print_fn: receives the takeover line.
      enabled: False on processes other than 0 (then nothing is read or written).
    """
    if heartbeat_s <= 0 or stale_after_s <= heartbeat_s:
      raise ValueError(f"run lock needs 0 < heartbeat_s < stale_after_s, got heartbeat_s="
                       f"{heartbeat_s} stale_after_s={stale_after_s}")
    self.model_dir = model_dir
    self.path = fileio.join(model_dir, LOCK_FILE)
    self.heartbeat_s = float(heartbeat_s)
    self.stale_after_s = float(stale_after_s)
    self.enabled = enabled
    self._print = print_fn
    self._record: dict[str, Any] | None = None
    self._stop = threading.Event()
    self._thread: threading.Thread | None = None

  @property
  def held(self) -> bool:
    return self._record is not None

  def _write(self, exclusive: bool) -> bool:
    text = json.dumps(self._record)
    if exclusive:
      return fileio.create_exclusive(self.path, text)
    fileio.write_text(self.path, text)
    return True

  def acquire(self) -> None:
    """Takes the lock (taking over a stale one, with a logged line) and starts the heartbeat.

    Raises:
      errors.ModelDirInUse: a live run holds the lock (nothing is written then).
    """
    if not self.enabled or self.held:
      return
    now = time.time()
    self._record = {"host": socket.gethostname(), "pid": os.getpid(), "start_time": now,
                    "heartbeat_time": now, "token": uuid.uuid4().hex}
    for _ in range(3):
      holder = read_holder(self.model_dir)
      if holder is not None:
        reason = stale_reason(holder, self.stale_after_s)
        if reason is None:
          self._record = None
          check_free(self.model_dir, self.stale_after_s)  # Raises with the holder named.
        self._print(f"taking over the stale run lock of {describe(holder)} in {self.model_dir}: "
                    f"{reason}")
        fileio.remove(self.path)
      fileio.makedirs(self.model_dir)
      if not self._write(exclusive=True):
        continue  # Another run created it between our read and write: look again.
      if fileio.is_remote(self.path):
        time.sleep(0.2)  # Let a racing writer's object land, then check who won.
      current = read_holder(self.model_dir)
      if current is not None and current.get("token") == self._record["token"]:
        break
    else:
      self._record = None
      check_free(self.model_dir, self.stale_after_s)
      raise errors.ModelDirInUse(f"could not take the run lock {self.path} (another run keeps "
                                 "taking it)")
    self._stop.clear()
    self._thread = threading.Thread(target=self._heartbeat_loop, name="run-lock-heartbeat",
                                    daemon=True)
    self._thread.start()

  def heartbeat(self) -> None:
    """Refreshes `heartbeat_time` now (the background thread calls this every heartbeat_s)."""
    if self._record is None:
      return
    current = read_holder(self.model_dir)
    if current is None or current.get("token") != self._record["token"]:
      self._print(f"warning: the run lock {self.path} was taken by "
                  f"{describe(current) if current else 'nobody (removed)'}; no longer refreshed")
      self._record = None
      return
    self._record["heartbeat_time"] = time.time()
    self._write(exclusive=False)

  def _heartbeat_loop(self) -> None:
    while not self._stop.wait(self.heartbeat_s):
      try:
        self.heartbeat()
      except Exception as e:  # pylint: disable=broad-except -- never kill training over this.
        self._print(f"warning: run lock heartbeat failed: {type(e).__name__}: {e}")
      if self._record is None:
        return

  def release(self) -> None:
    """Stops the heartbeat and deletes the lock file if this run still holds it."""
    self._stop.set()
    if self._thread is not None:
      self._thread.join(timeout=30)
      self._thread = None
    if self._record is None:
      return
    current = read_holder(self.model_dir)
    if current is not None and current.get("token") == self._record["token"]:
      fileio.remove(self.path)
    self._record = None

  def __enter__(self) -> "RunLock":
    self.acquire()
    return self

  def __exit__(self, *exc: Any) -> None:
    self.release()
