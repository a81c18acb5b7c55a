"""Gin command-line handling shared by the `train`/`eval`/`infer` entry points (T5X's gin_utils).

Flags mirror T5X: `--gin_file` (repeatable, searched in `--gin_search_paths` and in this
repository's `gin/` folder), `--gin_bindings` / `--gin.NAME=VALUE` (rewritten to a binding
`NAME = VALUE`), `--tfds_data_dir`. Errors in gin files or bindings are turned into one-line
`ValueError`s naming the file or binding.
"""
from __future__ import annotations

import argparse
import logging
import os
import pathlib
import re
import sys
import tokenize
from typing import Callable, Sequence

import gin

from gbt_t5x import distributed, errors

REPO_GIN_DIR = pathlib.Path(__file__).resolve().parent.parent / "gin"


def rewrite_gin_args(argv: Sequence[str]) -> list[str]:
  """Rewrites `--gin.NAME=VALUE` (or `--gin.NAME VALUE`) into `--gin_bindings=NAME = VALUE`."""
  out: list[str] = []
  args = list(argv)
  i = 0
  while i < len(args):
    arg = args[i]
    if arg.startswith("--gin."):
      body = arg[len("--gin."):]
      if "=" in body:
        name, value = body.split("=", 1)
      elif i + 1 < len(args):
        name, value = body, args[i + 1]
        i += 1
      else:
        raise ValueError(f"gin flag {arg!r} has no value; write --gin.{body}=VALUE")
      out.append(f"--gin_bindings={name} = {value}")
    else:
      out.append(arg)
    i += 1
  return out


def make_parser(description: str) -> argparse.ArgumentParser:
  """The common flags of every entry point."""
  parser = argparse.ArgumentParser(description=description)
  parser.add_argument("--gin_file", action="append", default=[],
                      help="gin config file (repeatable); relative paths are searched in "
                      "--gin_search_paths and the repository's gin/ folder")
  parser.add_argument("--gin_bindings", action="append", default=[],
                      help="a gin binding 'NAME = VALUE' (repeatable); --gin.NAME=VALUE also works")
  parser.add_argument("--gin_search_paths", action="append", default=[],
                      help="comma-separated folders to search for gin files and their includes")
  parser.add_argument("--coordinator_address", default=None,
                      help="host:port of process 0 for a multi-process run (or env "
                      "GBT_T5X_COORDINATOR_ADDRESS)")
  parser.add_argument("--process_count", type=int, default=None,
                      help="number of JAX processes (or env GBT_T5X_NUM_PROCESSES)")
  parser.add_argument("--process_index", type=int, default=None,
                      help="this process's id (or env GBT_T5X_PROCESS_ID)")
  parser.add_argument("--multiprocess", action="store_true",
                      help="let jax.distributed auto-detect the cluster (TPU pods, SLURM, ...)")
  parser.add_argument("--tfds_data_dir", default=None, help="TFDS data dir (seqio.set_tfds_data_dir_override)")
  return parser


def _resolve_gin_file(name: str, search_paths: Sequence[str]) -> str:
  candidates = [pathlib.Path(name)] + [pathlib.Path(p) / name for p in search_paths]
  for path in candidates:
    if path.is_file():
      return str(path)
  raise ValueError(f"gin file {name!r} not found (searched: . {' '.join(search_paths)})")


class _HideGinSearchMisses(logging.Filter):
  """gin logs 'Path not found' for every search path it tries before the one that has the file."""

  def filter(self, record: logging.LogRecord) -> bool:
    return not str(record.getMessage()).startswith("Path not found:")


def _tolerate_namespace_packages() -> None:
  """Makes gin's file-existence checks answer False instead of raising TypeError.

  gin resolves an include such as 'runs/pretrain.gin' also as a *package resource* when the
  first path component is importable; a plain folder named like it in the working directory (e.g.
  the demo's model dir `runs/`) is an importable namespace package without a file, and gin's
  resource reader then crashes on `os.path.dirname(None)`. gin has no public hook for this, so the
  registered checks in `gin.config._FILE_READERS` are wrapped once.
  """
  readers = gin.config._FILE_READERS  # pylint: disable=protected-access
  for i, (reader, check) in enumerate(readers):
    if getattr(check, "_gbt_safe", False):
      continue

    def safe(path, check=check):
      try:
        return check(path)
      except TypeError:
        return False

    safe._gbt_safe = True
    readers[i] = (reader, safe)


def parse_gin(gin_files: Sequence[str], gin_bindings: Sequence[str],
              gin_search_paths: Sequence[str] = ()) -> None:
  """Parses gin files then bindings; raises a one-line ValueError on any gin problem."""
  logging.getLogger().addFilter(_HideGinSearchMisses())
  _tolerate_namespace_packages()
  paths = [p for group in gin_search_paths for p in group.split(",") if p]
  paths.append(str(REPO_GIN_DIR))
  for path in paths:
    gin.add_config_file_search_path(path)
  files = [_resolve_gin_file(f, paths) for f in gin_files]
  for f in files:
    try:
      gin.parse_config_file(f)
    except Exception as e:  # gin raises several types, with multi-line messages.
      raise ValueError(f"gin file {f}: {_gin_error_text(e)}") from None
  for binding in gin_bindings:
    try:
      gin.parse_config(_strip_train_script_alias(binding))
    except Exception as e:
      raise ValueError(f"gin binding {binding!r}: {_gin_error_text(e)}") from None
  try:
    gin.finalize()
  except Exception as e:
    raise ValueError(f"gin config: {_first_line(e)}") from None


# `train_script.train.x = ...` as written in gin files (after `import __main__ as train_script`).
# A command-line binding is parsed on its own, without the files' imports, so the alias is unknown
# there; the configurable itself is registered as `...train_lib.train` and matches plain `train`.
_TRAIN_SCRIPT_ALIAS = re.compile(r"^(\s*(?:[\w.]+/)*)train_script\.")


def _strip_train_script_alias(binding: str) -> str:
  return _TRAIN_SCRIPT_ALIAS.sub(r"\1", binding, count=1)


def _gin_error_text(e: BaseException) -> str:
  """One line for a gin parse error; syntax errors say so (gin's tokenizer errors are tuples)."""
  if isinstance(e, tokenize.TokenError):
    msg = e.args[0] if e.args else "tokenizer error"
    return f"syntax error: {msg} (unbalanced brackets or quotes?)"
  if isinstance(e, SyntaxError):
    return f"syntax error: {_first_line(e)}"
  return _first_line(e)


def _first_line(e: BaseException) -> str:
  text = str(e).strip() or type(e).__name__
  lines = [l.strip() for l in text.splitlines() if l.strip()]
  head = lines[0]
  # gin appends "In file ..., line N" context lines; keep the location when present.
  where = next((l for l in lines[1:] if l.startswith("In file") or l.startswith("In bindings")), "")
  return f"{head} ({where})" if where else head


def import_task_module() -> str | None:
  """Imports the module named by the `MIXTURE_OR_TASK_MODULE` macro, if bound (T5X's habit).

  Called after gin is parsed and before any task lookup, so that a module given only as a binding
  (`--gin.MIXTURE_OR_TASK_MODULE="'gbt_t5x_tasks.wmt'"`) or only in a gin file registers its
  tasks. Returns the module name (None when unbound or None); a module that cannot be imported is
  a one-line ValueError naming it.
  """
  try:
    name = gin.query_parameter("%MIXTURE_OR_TASK_MODULE")
  except ValueError:  # Not bound by any file or binding.
    return None
  if name is None:
    return None
  if not isinstance(name, str) or not name:
    raise ValueError(f"MIXTURE_OR_TASK_MODULE must be a module name (a string), got {name!r}")
  import importlib
  try:
    importlib.import_module(name)
  except ImportError as e:
    raise ValueError(f"MIXTURE_OR_TASK_MODULE {name!r} cannot be imported: {_first_line(e)}"
                     ) from None
  return name


def run(main: Callable[[argparse.Namespace], int | None], description: str,
        argv: Sequence[str] | None = None) -> int:
  """Parses flags and gin, runs `main`, and turns user errors into a one-line message (exit 2)."""
  parser = make_parser(description)
  try:
    args = parser.parse_args(rewrite_gin_args(sys.argv[1:] if argv is None else argv))
    distributed.maybe_initialize(
        distributed.spec_from(args.coordinator_address, args.process_count, args.process_index),
        auto=args.multiprocess)
    if args.tfds_data_dir:
      import seqio
      seqio.set_tfds_data_dir_override(args.tfds_data_dir)
    parse_gin(args.gin_file, args.gin_bindings, args.gin_search_paths)
    import_task_module()
    return int(main(args) or 0)
  except errors.Preempted as e:
    print(f"preempted: {_first_line(e)}", file=sys.stderr)
    return errors.PREEMPTED_EXIT_CODE
  except (ValueError, FileNotFoundError, NotADirectoryError, errors.TrainingStopped) as e:
    print(f"error: {_first_line(e)}", file=sys.stderr)
    return 2


def config_str() -> str:
  """The operative gin config (what was actually used), for MODEL_DIR/config.gin."""
  return gin.operative_config_str()


def write_config_gin(model_dir: str) -> None:
  """T5X's summarize_config_fn: writes the operative gin config to MODEL_DIR/config.gin."""
  with open(os.path.join(model_dir, "config.gin"), "w") as f:
    f.write(config_str())


def quiet_tensorflow() -> None:
  """Keeps TensorFlow off the GPU/TPU and quiet: it only feeds data here."""
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  import tensorflow as tf
  tf.config.set_visible_devices([], "GPU")
