"""Gin command-line handling shared by the `train`/`eval`/`infer` entry points (T5X's gin_utils).

Flags mirror T5X: `--gin_file` (repeatable; a relative name is looked up as given, then in each
`--gin_search_paths` folder, then in the gin folder shipped with the package), `--gin_bindings` /
`--gin.NAME=VALUE` (rewritten to a binding
`NAME = VALUE`), `--tfds_data_dir`. Errors in gin files or bindings are turned into one-line
`ValueError`s naming the file or binding.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import pathlib
import re
import sys
import tokenize
from typing import Any, Callable, Sequence

import gin

from gbt_t5x import distributed, errors, fileio



def package_gin_dir() -> pathlib.Path:
  """The gin folder shipped with gbt_t5x: `gbt_t5x/gin/` in an installed wheel, the repository's
  top-level `gin/` in a source checkout (editable install)."""
  here = pathlib.Path(__file__).resolve().parent
  for candidate in (here / "gin", here.parent / "gin"):
    if (candidate / "models").is_dir():
      return candidate
  raise ValueError(f"gbt_t5x's gin folder is missing (looked in {here / 'gin'} and "
                   f"{here.parent / 'gin'}); reinstall the package")


PACKAGE_GIN_DIR = package_gin_dir()


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


_ANY = object()  # Marks a macro whose value is not type-checked.


@dataclasses.dataclass(frozen=True)
class Macro:
  """A gin macro of the shipped gin files, for `--help` and the type check of its value.

  Attributes:
    name: the macro, e.g. 'TRAIN_STEPS' (set with --gin.TRAIN_STEPS=VALUE).
    types: accepted Python types of its value (`type(None)` allows None; `_ANY`: unchecked).
    help: one line, with units.
    entries: the entry points whose gin files use it ('train', 'eval', 'infer').
  """
  name: str
  types: tuple
  help: str
  entries: tuple[str, ...] = ("train",)

  def type_text(self) -> str:
    names = {str: "a string", int: "an int", float: "a number", bool: "True/False",
             dict: "a dict", list: "a list", type(None): "None"}
    shown = [t for t in self.types if not (t is int and float in self.types)]  # int is a number
    return " or ".join(names.get(t, t.__name__) for t in shown)


_TEI = ("train", "eval", "infer")
_NONE = type(None)
# The most used macros of gin/runs/*.gin, gin/guided/*.gin and gin/models/*.gin.
MACROS: tuple[Macro, ...] = (
    Macro("MODEL_DIR", (str,), "run directory: checkpoints/, config.gin, TensorBoard, plots"),
    Macro("MIXTURE_OR_TASK_NAME", (str,), "SeqIO task or mixture to train / score / decode", _TEI),
    Macro("MIXTURE_OR_TASK_MODULE", (str, _NONE), "module that registers the task (imported "
          "first), e.g. 'gbt_t5x_tasks.wmt'", _TEI),
    Macro("TASK_FEATURE_LENGTHS", (dict,), "{'inputs': tokens, 'targets': tokens}", _TEI),
    Macro("TRAIN_STEPS", (int,), "train until this global step (steps)"),
    Macro("BATCH_SIZE", (int,), "global batch size (examples per step, all processes)", _TEI),
    Macro("EVAL_PERIOD", (int,), "steps between evaluations and checkpoints"),
    Macro("EVAL_STEPS", (int, _NONE), "batches per teacher-forced eval (None: whole split)",
          ("train", "eval")),
    Macro("LOG_EVERY", (int,), "steps between progress lines"),
    Macro("PACK", (bool,), "pack several examples per row (train data)"),
    Macro("DROPOUT_RATE", (float, int), "dropout probability"),
    Macro("RANDOM_SEED", (int,), "params init and dropout seed"),
    Macro("INITIAL_CHECKPOINT_PATH", (str,), "finetuning: model dir whose latest checkpoint "
          "initialises the params"),
    Macro("INFER_EVAL_EXAMPLES", (int, _NONE), "decode only the first N examples per task "
          "(None: all)", ("train", "eval")),
    Macro("BEST_CHECKPOINT_METRIC", (str, _NONE), "keep MODEL_DIR/best/ by this metric, e.g. "
          "'infer_eval/demo_nmt/bleu'"),
    Macro("GUIDE_MIXTURE_OR_TASK_NAME", (str,), "guided runs: the guide (tuning) task"),
    Macro("GUIDED_HPARAMS", (_ANY,), "guided runs: list of @NAME/specs.GuidedHParam()"),
    Macro("GUIDE_BATCH_SIZE", (int,), "guided runs: guide examples per guided step"),
    Macro("HYPER_STEP_EVERY", (int,), "guided runs: a guided step every k steps"),
    Macro("META_LEARNING_RATE", (float, int), "guided runs: learning rate of the hyper-parameters"),
    Macro("DATA_ID_NAMES", (list, tuple, _NONE), "guided data weights: one name per data id, e.g. "
          "['clean', 'noisy'] (None: the task's names, else 0, 1, ...)"),
    Macro("NUM_EMBEDDINGS", (int,), "model vocab_size (rows; >= the vocabulary's ids)", _TEI),
    Macro("CHECKPOINT_PATH", (str,), "model dir (its latest checkpoint) to score / decode",
          ("eval", "infer")),
    Macro("EVAL_OUTPUT_DIR", (str,), "where metrics.json and predictions.jsonl go", ("eval",)),
    Macro("EVAL_SPLIT", (str,), "split to score, e.g. 'validation'", ("eval",)),
    Macro("INFER_OUTPUT_DIR", (str,), "where predictions.jsonl goes", ("infer",)),
    Macro("INFER_SPLIT", (str,), "split to decode", ("infer",)),
    Macro("INFER_EXAMPLES", (int, _NONE), "decode only the first N examples (None: all)",
          ("infer",)),
    Macro("DECODER_PARAMS", (dict, _NONE), "e.g. {'method': 'beam', 'beam_size': 4}",
          ("eval", "infer")),
)


def macros_help(entry: str | None) -> str:
  """The `--help` epilog: the macros of `entry` ('train', 'eval', 'infer'; None: all)."""
  rows = [m for m in MACROS if entry is None or entry in m.entries]
  width = max(len(m.name) for m in rows) + 2
  lines = ["most used gin macros (set with --gin.NAME=VALUE, strings quoted: "
           "--gin.MODEL_DIR=\"'/tmp/run'\"):"]
  lines += [f"  {m.name.ljust(width)}{m.help}" for m in rows]
  return "\n".join(lines)


def check_macros(gin_bindings: Sequence[str] = ()) -> None:
  """Raises a one-line ValueError for a bound macro of `MACROS` whose value has the wrong type,
  naming the command-line binding that set it (else the macro, set in a gin file)."""
  for macro in MACROS:
    if _ANY in macro.types:
      continue
    try:
      value = gin.query_parameter(f"%{macro.name}")
    except ValueError:  # Not bound.
      continue
    if not isinstance(value, (str, int, float, bool, dict, list, tuple, _NONE)):
      continue  # A reference (@fn(), %OTHER, REQUIRED): checked where it is used.
    ok = any(isinstance(value, t) and not (isinstance(value, bool) and t in (int, float))
             for t in macro.types)
    if ok:
      continue
    binding = next((b for b in reversed(list(gin_bindings))
                    if b.split("=", 1)[0].strip() == macro.name), None)
    where = f"gin binding {binding!r}" if binding else f"gin macro {macro.name} (in a gin file)"
    raise ValueError(f"{where}: {macro.name} must be {macro.type_text()} ({macro.help}), got "
                     f"{type(value).__name__} {value!r}")


def check_tfds_data_dir(path: str) -> None:
  """Raises a one-line ValueError naming `--tfds_data_dir` when it is not a readable folder."""
  import tensorflow as tf
  try:
    ok = tf.io.gfile.isdir(path)
  except Exception as e:  # pylint: disable=broad-except  (GCS auth, unreachable host, ...)
    raise ValueError(f"--tfds_data_dir {path} cannot be read: {errors.one_line(e)}") from None
  if not ok:
    raise ValueError(f"--tfds_data_dir {path} is not a folder (it should hold the datasets "
                     "prepared with `tfds build ... --data_dir`)")


def make_parser(description: str, entry: str | None = None) -> argparse.ArgumentParser:
  """The common flags of every entry point; `--help` also lists `entry`'s most used macros."""
  parser = argparse.ArgumentParser(description=description, epilog=macros_help(entry),
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--gin_file", action="append", default=[],
                      help="gin config file (repeatable); a relative name is looked up as "
                      "given, then in --gin_search_paths, then in the installed package's gin "
                      "folder")
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
  parser.add_argument("--tfds_data_dir", default=None,
                      help="TFDS data dir (seqio.set_tfds_data_dir_override)")
  parser.add_argument("--verbose", action="store_true",
                      help="also show the libraries' log lines (TensorFlow, XLA, SeqIO notices); "
                      "or set GBT_T5X_VERBOSE=1")
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


def train_configurable() -> Callable[..., Any]:
  """`train_lib.train` as a gin configurable, registered under its own module path once per
  process (the train entry point and the experiments' runner both call it).

  Registered before any gin file is parsed: a file's `import __main__ as train_script` then finds
  it registered instead of registering a second name `train_script.train`, which would make a
  command-line binding `train_script.train.x` (parsed as `train.x`) ambiguous.
  """
  from gbt_t5x.train import train_lib
  try:
    return gin.configurable(train_lib.train)
  except ValueError:  # Registered already.
    return gin.get_configurable(train_lib.train)


def parse_gin(gin_files: Sequence[str], gin_bindings: Sequence[str],
              gin_search_paths: Sequence[str] = (), check_macro_typos: bool = False) -> None:
  """Parses gin files then bindings; raises a one-line ValueError on any gin problem.

  T5X users' files run as written: `t5x_compat.activate()` makes `from t5x import ...` and
  `include 't5x/...gin'` resolve to this project's equivalents when T5X is not installed. With
  `check_macro_typos` (the entry points' command lines), a binding of a macro that no gin file
  binds and nothing references (`--gin.TRAIN_STEP=20`) is refused, naming close matches; a gin
  file's own unused macros stay allowed."""
  from gbt_t5x import t5x_compat
  t5x_compat.activate()
  train_configurable()
  logging.getLogger().addFilter(_HideGinSearchMisses())
  _tolerate_namespace_packages()
  paths = [p for group in gin_search_paths for p in group.split(",") if p]
  paths.append(str(PACKAGE_GIN_DIR))
  for path in paths:
    gin.add_config_file_search_path(path)
  files = [_resolve_gin_file(f, paths) for f in gin_files]
  for f in files:
    try:
      gin.parse_config_file(f)
    except Exception as e:  # gin raises several types, with multi-line messages.
      raise ValueError(f"gin file {f}: {_gin_error_text(e)}") from None
  file_macros = bound_macros()
  for binding in gin_bindings:
    try:
      gin.parse_config(_strip_train_script_alias(binding))
    except Exception as e:
      raise ValueError(f"gin binding {binding!r}: {_gin_error_text(e)}{_value_hint(binding)}"
                       ) from None
  if check_macro_typos:
    check_unused_macro_bindings(gin_bindings, file_macros)
  try:
    gin.finalize()
  except Exception as e:
    raise ValueError(f"gin config: {errors.one_line(e)}") from None


def bound_macros() -> set[str]:
  """The names of the macros bound so far (gin's parsed config)."""
  return {name for (name, selector) in gin.config._CONFIG  # pylint: disable=protected-access
          if selector == "gin.macro"}


def referenced_macros() -> set[str]:
  """The names of the macros that some parsed binding references as `%NAME`."""
  found: set[str] = set()

  def walk(value: Any) -> None:
    if isinstance(value, gin.config.ConfigurableReference):
      text = repr(value)
      if text.startswith("%"):
        found.add(text[1:])
    elif isinstance(value, dict):
      for v in value.values():
        walk(v)
    elif isinstance(value, (list, tuple, set)):
      for v in value:
        walk(v)

  for params in gin.config._CONFIG.values():  # pylint: disable=protected-access
    for value in params.values():
      walk(value)
  return found


_MACRO_BINDING = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*=")


def check_unused_macro_bindings(gin_bindings: Sequence[str], file_macros: set[str]) -> None:
  """Refuses (one line, with close matches) a command-line macro binding whose macro no gin file
  binds and nothing references: a misspelled `--gin.TRAIN_STEP=20` would otherwise be ignored."""
  import difflib
  referenced = referenced_macros()
  for binding in gin_bindings:
    match = _MACRO_BINDING.match(binding)
    if match is None:
      continue
    name = match.group(1)
    documented = {m.name for m in MACROS}
    # A documented macro this configuration does not use (TRAIN_STEPS given to eval, as a flag
    # set shared between entry points does) is not a typo: it has no effect, as in T5X.
    if name in file_macros or name in referenced or name in documented:
      continue
    known = sorted(file_macros | referenced | documented)
    close = difflib.get_close_matches(name, known, n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise ValueError(f"gin binding {binding!r}: no gin file binds or uses the macro {name} "
                     f"(a typo?){hint}")


def _value_hint(binding: str) -> str:
  """A hint for a binding whose value is a bare nan/inf (no gin literal)."""
  value = binding.split("=", 1)[-1].strip().lower().lstrip("+-")
  if value in ("nan", "inf", "infinity"):
    return (f" (gin values are Python literals: {value} is not one, and no hyper-parameter may be "
            "non-finite)")
  return ""


# `train_script.train.x = ...` as written in gin files (after `import __main__ as train_script`).
# A command-line binding is parsed on its own, without the files' imports, so the alias is unknown
# there; the configurable itself is registered as `...train_lib.train` and matches plain `train`.
_TRAIN_SCRIPT_ALIAS = re.compile(r"^(\s*(?:[\w.]+/)*)train_script\.")


def _strip_train_script_alias(binding: str) -> str:
  return _TRAIN_SCRIPT_ALIAS.sub(r"\1", binding, count=1)


def _gin_error_text(e: BaseException) -> str:
  """One line for a gin parse error; syntax errors say so (gin's tokenizer errors are tuples);
  a T5X binding without an equivalent here is named as such (`t5x_compat`)."""
  from gbt_t5x import t5x_compat
  unsupported = t5x_compat.unsupported_message(str(e))
  if unsupported is not None:
    return unsupported
  if isinstance(e, tokenize.TokenError):
    msg = e.args[0] if e.args else "tokenizer error"
    return f"syntax error: {msg} (unbalanced brackets or quotes?)"
  if isinstance(e, SyntaxError):
    return f"syntax error: {errors.one_line(e)}"
  return errors.one_line(e)


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
    raise ValueError(f"MIXTURE_OR_TASK_MODULE {name!r} cannot be imported: {errors.one_line(e)}"
                     ) from None
  return name


def run(main: Callable[[argparse.Namespace], int | None], description: str,
        argv: Sequence[str] | None = None, entry: str | None = None) -> int:
  """Parses flags and gin, runs `main`, and turns user errors into a one-line message (exit 2).

  `entry` ('train', 'eval', 'infer') selects the macros that `--help` lists."""
  parser = make_parser(description, entry)

  def body() -> int | None:
    args = parser.parse_args(rewrite_gin_args(sys.argv[1:] if argv is None else argv))
    distributed.maybe_initialize(
        distributed.spec_from(args.coordinator_address, args.process_count, args.process_index),
        auto=args.multiprocess)
    if args.tfds_data_dir:
      check_tfds_data_dir(args.tfds_data_dir)
      import seqio
      seqio.set_tfds_data_dir_override(args.tfds_data_dir)
    parse_gin(args.gin_file, args.gin_bindings, args.gin_search_paths, check_macro_typos=True)
    check_macros(args.gin_bindings)
    import_task_module()
    return main(args)

  return errors.exit_code_of(body, user_errors=(ValueError, FileNotFoundError, NotADirectoryError,
                                                errors.TrainingStopped))


def config_str() -> str:
  """The operative gin config (what was actually used), for MODEL_DIR/config.gin."""
  return gin.operative_config_str()


def write_config_gin(model_dir: str) -> None:
  """T5X's summarize_config_fn: writes the operative gin config to MODEL_DIR/config.gin."""
  fileio.write_text(fileio.join(model_dir, "config.gin"), config_str())


def quiet_tensorflow() -> None:
  """Keeps TensorFlow off the GPU/TPU: it only feeds data here (console.py keeps it quiet)."""
  import tensorflow as tf
  tf.config.set_visible_devices([], "GPU")
