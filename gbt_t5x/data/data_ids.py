"""Names of the values of an integer task feature (e.g. the demo's noise buckets), kept by task.

What it is for: guided data weights learn one weight per value of an integer per-example feature
(`DatasetConfig.data_id_feature`, copied onto the target tokens as `decoder_data_ids`). A SeqIO
task has no place for what those values mean, so the module that registers a task also registers
their names here (`register_names('demo_nmt', 'noise_bucket', NOISE_BUCKET_NAMES)`), and
`data_id_names` hands them to the data-weights spec (gin: `DATA_ID_NAMES` in
`gin/guided/data_weights.gin`, None = the task's names). The progress line, TensorBoard, the
trajectory file, `hparams.png` and the exported schedule then say 'clean', 'misaligned', ...
instead of 0, 1, ...

Must not import: jax, flax, or anything of `gbt_t5x.models` / `train` / `guided`.
"""
from __future__ import annotations

from typing import Sequence

import seqio

# (task name, feature) -> names of the feature's values 0, 1, ..., in order.
_NAMES: dict[tuple[str, str], tuple[str, ...]] = {}


def register_names(task_name: str, feature: str, names: Sequence[str]) -> None:
  """Records that value i of `feature` in task `task_name` is called `names[i]`.

  Raises:
    ValueError: one line, when `names` is empty or holds anything but non-empty strings.
  """
  names = tuple(names)
  if not names or not all(isinstance(n, str) and n.strip() for n in names):
    raise ValueError(f"names of {task_name} feature {feature!r} must be non-empty strings, got "
                     f"{list(names)}")
  _NAMES[(task_name, feature)] = names


def registered_names(task_name: str, feature: str) -> tuple[str, ...]:
  """The names registered for `feature` of task `task_name`, or () if none."""
  return _NAMES.get((task_name, feature), ())


def data_id_names(task_name: str | None = None, feature: str | None = None,
                  names: Sequence[str] | None = None) -> tuple[str, ...]:
  """The names of the data ids of a run's train data (gin: `DATA_ID_NAMES`).

  Args:
    task_name: the train task or mixture (`MIXTURE_OR_TASK_NAME`).
    feature: the integer feature the data ids come from (`DATA_ID_FEATURE`).
    names: explicit names, returned as given (they win over the task's).

  Returns:
    `names` if given; else the names registered for `feature` of `task_name` (for a mixture:
    the names all its tasks register, if they agree); else () (entries are then numbered).
  """
  if names is not None:
    return tuple(str(n) for n in names)
  if not task_name or not feature:
    return ()
  if task_name in seqio.MixtureRegistry.names():
    found = {registered_names(t.name, feature)
             for t in seqio.get_subtasks(seqio.get_mixture_or_task(task_name))}
    return found.pop() if len(found) == 1 else ()
  return registered_names(task_name, feature)
