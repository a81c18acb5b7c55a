"""One file layer for everything written to or read from a model dir or an output dir.

Paths are strings: local paths (`runs/x`, `/tmp/x`) or URLs of a remote filesystem
(`gs://bucket/run`). Every operation goes through `etils.epath` -- the library orbax itself uses
for its checkpoint folders -- so a `gs://` MODEL_DIR holds the checkpoints, metrics.jsonl,
guided_trajectory.jsonl, PNGs, config.gin, the run lock and the exported schedule alike.
(epath serves `gs://` through `tf.io.gfile` by default, or through gcsfs with
`EPATH_USE_TF=false`, which is what the GCS-emulator tests use; orbax writes the arrays through
tensorstore's own GCS driver.)

Object stores cannot append: `append_text` on a remote path rewrites the object (cost grows with
the file's size, fine for the per-flush logs written here). Writes of whole files are atomic on
object stores and done through a temporary file + rename locally. Must not import gin, jax,
seqio or other `gbt_t5x` modules.
"""
from __future__ import annotations

import glob as _glob
import os
import posixpath
from typing import Iterable

from etils import epath


def is_remote(path: str) -> bool:
  """True for a URL path (`gs://...`, `s3://...`), False for a local path."""
  return "://" in str(path)


def _p(path: str) -> epath.Path:
  return epath.Path(str(path))


def join(path: str, *parts: str) -> str:
  """`os.path.join` for local paths; `/`-joined for URLs (never turned into a local path)."""
  path = str(path)
  if not is_remote(path):
    return os.path.join(path, *parts)
  for part in parts:
    path = path.rstrip("/") + "/" + str(part).lstrip("/")
  return path


def dirname(path: str) -> str:
  """The parent folder of `path` (a URL keeps its scheme)."""
  path = str(path)
  if not is_remote(path):
    return os.path.dirname(path)
  scheme, rest = path.split("://", 1)
  return f"{scheme}://{posixpath.dirname(rest.rstrip('/'))}"


def basename(path: str) -> str:
  """The last component of `path`, ignoring a trailing `/`."""
  return posixpath.basename(str(path).rstrip("/")) if is_remote(path) else \
      os.path.basename(os.path.normpath(str(path)))


def absolute(path: str) -> str:
  """`os.path.abspath` for local paths; URLs are returned unchanged (minus a trailing `/`)."""
  return str(path).rstrip("/") if is_remote(path) else os.path.abspath(str(path))


def exists(path: str) -> bool:
  """Whether a file or folder exists at `path`."""
  return _p(path).exists()


def isdir(path: str) -> bool:
  """Whether `path` is a folder (on object stores: a prefix with objects under it)."""
  return _p(path).is_dir()


def makedirs(path: str) -> None:
  """Creates folder `path` and its parents; no error if it exists.

  Raises:
    ValueError: one line, when `path` or one of its parents is a file (e.g. a MODEL_DIR given
      as the path of an existing file).
  """
  try:
    _p(path).mkdir(parents=True, exist_ok=True)
  except (FileExistsError, NotADirectoryError) as e:
    raise ValueError(f"cannot create the folder {path}: {e.filename or path} is a file, not a "
                     "folder (give a folder path, e.g. for MODEL_DIR)") from None


def listdir(path: str) -> list[str]:
  """Sorted names (not paths) of the entries of folder `path`; [] if it does not exist."""
  p = _p(path)
  if not p.exists():
    return []
  return sorted(child.name for child in p.iterdir())


def glob(pattern: str) -> list[str]:
  """Sorted paths matching `pattern` (`*` and `?` in the last components; no `**`)."""
  if not is_remote(pattern):
    return sorted(_glob.glob(pattern))
  scheme = pattern.split("://", 1)[0]
  # Split the pattern into the longest wildcard-free folder and the rest.
  parts = pattern.split("://", 1)[1].split("/")
  fixed = 0
  while fixed < len(parts) and not any(c in parts[fixed] for c in "*?["):
    fixed += 1
  base = f"{scheme}://" + "/".join(parts[:fixed])
  rest = "/".join(parts[fixed:])
  if not rest:
    return [base] if exists(base) else []
  return sorted(str(p) for p in _p(base).glob(rest))


def read_text(path: str) -> str:
  """The whole file at `path` as UTF-8 text."""
  return _p(path).read_text()


def read_bytes(path: str) -> bytes:
  """The whole file at `path` as bytes."""
  return _p(path).read_bytes()


def write_bytes(path: str, data: bytes) -> None:
  """Replaces the file at `path` with `data` atomically (readers see the old or new file)."""
  if is_remote(path):
    _p(path).write_bytes(data)  # One object upload: atomic.
    return
  tmp = f"{path}.tmp-{os.getpid()}"
  with open(tmp, "wb") as f:
    f.write(data)
  os.replace(tmp, path)


def write_text(path: str, text: str) -> None:
  """Replaces the file at `path` with UTF-8 `text` atomically."""
  write_bytes(path, text.encode("utf-8"))


def create_exclusive(path: str, text: str) -> bool:
  """Creates the file at `path` holding `text` only if it does not exist; returns whether it did.

  Atomic (O_EXCL) on local disks. Object stores have no exclusive create through epath: there
  the file is written when absent (check-then-write), and callers must read it back to learn
  who won a race.
  """
  if not is_remote(path):
    try:
      fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
      return False
    with os.fdopen(fd, "w") as f:
      f.write(text)
    return True
  if exists(path):
    return False
  write_text(path, text)
  return True


def append_text(path: str, text: str) -> None:
  """Appends `text` to the file at `path` (created if missing).

  Locally this is one `write` in append mode; on object stores the object is rewritten with the
  old content plus `text` (there is no append), so a concurrent writer's lines could be lost --
  only one process writes each log here.
  """
  if not is_remote(path):
    with open(path, "a") as f:
      f.write(text)
    return
  p = _p(path)
  old = p.read_bytes() if p.exists() else b""
  p.write_bytes(old + text.encode("utf-8"))


def append_lines(path: str, lines: Iterable[str]) -> None:
  """Appends each of `lines` plus a newline (one `append_text` call)."""
  text = "".join(f"{line}\n" for line in lines)
  if text:
    append_text(path, text)


def remove(path: str) -> None:
  """Deletes the file at `path`; no error if it is already gone."""
  p = _p(path)
  try:
    p.unlink()
  except FileNotFoundError:
    pass


def rmtree(path: str) -> None:
  """Deletes folder `path` and everything under it; no error if it does not exist."""
  p = _p(path)
  if p.exists():
    p.rmtree()


def copy_file(src: str, dst: str) -> None:
  """Copies one file (any filesystem to any other), replacing `dst` atomically."""
  write_bytes(dst, read_bytes(src))


def rename(src: str, dst: str) -> None:
  """Moves file or folder `src` to `dst` (same filesystem; `dst` must not exist), creating
  `dst`'s parent folder."""
  makedirs(dirname(dst))
  _p(src).rename(_p(dst))


def tensorstore_kvstore(path: str) -> dict:
  """The tensorstore kvstore spec of `path` (a local path or `gs://bucket/...`), for zarr arrays
  that tensorstore reads and writes itself (T5X's checkpoint layout): `file` locally, `gcs` for
  `gs://` (pointed at an emulator by `TENSORSTORE_GCS_HTTP_URL`)."""
  path = str(path)
  if not is_remote(path):
    return {"driver": "file", "path": os.path.abspath(path)}
  scheme, rest = path.split("://", 1)
  if scheme != "gs":
    raise ValueError(f"tensorstore arrays on {scheme}:// are not supported (only local and gs://)")
  bucket, _, key = rest.partition("/")
  return {"driver": "gcs", "bucket": bucket, "path": key}
