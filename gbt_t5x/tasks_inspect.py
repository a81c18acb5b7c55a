"""`python -m gbt_t5x.tasks_inspect TASK`: print a few preprocessed examples of a SeqIO task.

What it is for: checking a task or mixture the way a user would before training on it. For each
example it prints every feature: token features as their int32 ids followed by the text the
feature's vocabulary decodes them to, string features as text, other arrays as values.

    python -m gbt_t5x.tasks_inspect wmt19_translate_lt_en --split validation --num 2 \\
        --module gbt_t5x_tasks.wmt --lengths inputs=64,targets=64 --tfds_data_dir ~/tfds

Bad input exits with status 2 and one line on stderr (`error: ...`): an unknown task lists the
close matches, an unknown split lists the task's splits, and a TFDS dataset that is not prepared
says which `tfds build` command and `--tfds_data_dir` are expected.

Must not import: flax, or anything of `gbt_t5x.models` / `guided`.
"""
from __future__ import annotations

import sys

from gbt_t5x import console, errors

if __name__ == "__main__":
  console.configure(sys.argv)  # Before TensorFlow and JAX load (they log when imported).

import argparse
import importlib
from typing import Any, Mapping, Optional, Sequence, TextIO, Union

import numpy as np
import seqio

from gbt_t5x.train import data as train_data

DEFAULT_MODULE = "gbt_t5x_tasks"
TaskOrMixture = Union[seqio.Task, seqio.Mixture]


def parse_lengths(text: Optional[str]) -> Optional[dict[str, int]]:
  """"inputs=64,targets=32" -> {"inputs": 64, "targets": 32} (tokens); None or "" -> None."""
  if not text:
    return None
  lengths = {}
  for item in text.split(","):
    name, sep, value = item.partition("=")
    if not sep or not name.strip() or not value.strip().isdigit() or int(value) <= 0:
      raise ValueError(f"--lengths wants FEATURE=POSITIVE_INT pairs like inputs=64,targets=64, "
                       f"got {item!r}")
    lengths[name.strip()] = int(value)
  return lengths


def _leaf_tasks(task: TaskOrMixture) -> list[seqio.Task]:
  return list(task.tasks) if isinstance(task, seqio.Mixture) else [task]


def check_split(task: TaskOrMixture, split: str) -> None:
  """Raises ValueError (one line) if `split` is not a split of `task` (every task of a mixture)."""
  for leaf in _leaf_tasks(task):
    splits = list(leaf.splits)
    if split not in splits:
      raise ValueError(f"task {leaf.name} has no split {split!r}; its splits are "
                       f"{', '.join(sorted(map(str, splits)))}")


def check_tfds_prepared(task: TaskOrMixture) -> None:
  """Raises ValueError (one line) if a TFDS dataset that `task` reads is not prepared.

  The message names the expected folder, the `tfds build` command that prepares it, and the
  `--tfds_data_dir` flag that points the task at a prepared copy."""
  for leaf in _leaf_tasks(task):
    source = leaf.source
    if not isinstance(source, seqio.TfdsDataSource) or source.tfds_dataset.name is None:
      continue  # not TFDS, or per-split TFDS datasets (checked by TFDS when read)
    builder = source.tfds_dataset.builder
    if builder.is_prepared():
      continue
    config = builder.builder_config.name if builder.builder_config else None
    build = f"tfds build {builder.name}" + (f" --config {config}" if config else "")
    raise ValueError(
        f"TFDS dataset {source.tfds_dataset.name} of task {leaf.name} is not prepared at "
        f"{builder.data_dir}; run `{build} --data_dir DIR` (WMT subsets may need manual "
        f"downloads) and pass --tfds_data_dir DIR")


def _format_value(name: str, value: Any, features: Mapping[str, seqio.Feature]) -> list[str]:
  """Lines describing one feature of one example."""
  if isinstance(value, bytes):
    return [f"{name}: {value.decode('utf-8', errors='replace')!r}"]
  array = np.asarray(value)
  if array.dtype.kind in "iu" and array.ndim == 1:
    lines = [f"{name} ({array.dtype.name}, length {array.shape[0]}): {array.tolist()}"]
    if name in features:
      decoded = features[name].vocabulary.decode(array.tolist())
      lines.append(f"  decoded: {decoded!r}")
    return lines
  return [f"{name} ({array.dtype.name}, shape {list(array.shape)}): {array.tolist()}"]


def inspect_task(task: TaskOrMixture, split: str = "train", num: int = 3,
                 lengths: Optional[Mapping[str, int]] = None, seed: int = 0,
                 out: Optional[TextIO] = None) -> int:
  """Prints the first `num` preprocessed examples of `split` (unshuffled); returns how many.

  `lengths` ({feature: tokens}) trims token features as training would; None leaves them whole.
  `out` defaults to the current `sys.stdout`."""
  out = out if out is not None else sys.stdout
  if isinstance(num, bool) or not isinstance(num, int) or num < 1:
    raise ValueError(f"--num must be a positive int, got {num!r}")
  check_split(task, split)
  check_tfds_prepared(task)
  ds = task.get_dataset(sequence_length=dict(lengths) if lengths else None, split=split,
                        shuffle=False, seed=seed, num_epochs=1)
  features = task.output_features
  length_text = ", ".join(f"{k}={v}" for k, v in lengths.items()) if lengths else "untrimmed"
  print(f"task {task.name}, split {split}, lengths: {length_text}", file=out)
  count = 0
  for ex in ds.take(num).as_numpy_iterator():
    print(f"--- example {count}", file=out)
    for name in sorted(ex):
      for line in _format_value(name, ex[name], features):
        print(line, file=out)
    count += 1
  if count < num:
    print(f"({count} example{'s' if count != 1 else ''} in split {split})", file=out)
  return count


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="python -m gbt_t5x.tasks_inspect",
                              description="Print preprocessed examples of a SeqIO task.")
  p.add_argument("task", help="registered SeqIO task or mixture name")
  p.add_argument("--split", default="train")
  p.add_argument("--verbose", action="store_true",
                  help="also show the libraries' log lines (or GBT_T5X_VERBOSE=1)")
  p.add_argument("--num", type=int, default=3, help="number of examples to print")
  p.add_argument("--module", action="append", default=None,
                 help=f"module that registers the task (repeatable; default {DEFAULT_MODULE})")
  p.add_argument("--lengths", default=None,
                 help="feature lengths in tokens, e.g. inputs=64,targets=64 (default untrimmed)")
  p.add_argument("--tfds_data_dir", default=None, help="folder of prepared TFDS datasets")
  p.add_argument("--seed", type=int, default=0)
  return p


def main(argv: Optional[Sequence[str]] = None) -> int:
  """CLI entry point; returns the exit status (0, or 2 with one `error:` line on stderr)."""
  args = _parser().parse_args(argv)

  def body() -> None:
    for module in args.module or [DEFAULT_MODULE]:
      try:
        importlib.import_module(module)
      except ImportError as e:
        raise ValueError(f"cannot import task module {module!r}: {e}") from None
    if args.tfds_data_dir:
      seqio.set_tfds_data_dir_override(args.tfds_data_dir)
    task = train_data.get_mixture_or_task(args.task)
    inspect_task(task, split=args.split, num=args.num, lengths=parse_lengths(args.lengths),
                 seed=args.seed)

  return errors.exit_code_of(body)


if __name__ == "__main__":
  sys.exit(main())
