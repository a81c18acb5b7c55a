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

import importlib
import math
from typing import Mapping, Sequence

import seqio

# The `data_id_feature` value that means "the index of each example's leaf task in the train
# mixture" (guided mixture weights, gin/guided/mixture_weights.gin) instead of a task feature.
MIXTURE_TASK = "mixture_task"

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
    `names` if given; with `feature` = `MIXTURE_TASK`, the mixture's leaf task names; else the
    names registered for `feature` of `task_name` (for a mixture: the names all its tasks
    register, if they agree); else () (entries are then numbered).
  """
  if names is not None:
    return tuple(str(n) for n in names)
  if not task_name or not feature:
    return ()
  if feature == MIXTURE_TASK:
    return tuple(t.name for t in mixture_leaf_tasks(task_name))
  if task_name in seqio.MixtureRegistry.names():
    found = {registered_names(t.name, feature)
             for t in seqio.get_subtasks(seqio.get_mixture_or_task(task_name))}
    return found.pop() if len(found) == 1 else ()
  return registered_names(task_name, feature)


def mixture_leaf_tasks(mixture_name: str, module: str | None = None) -> list[seqio.Task]:
  """The leaf tasks of a SeqIO mixture (nested mixtures flattened), in SeqIO's order (by name):
  leaf task i has mixture-task id i.

  Args:
    mixture_name: a registered mixture.
    module: a module to import first that registers it (T5X's MIXTURE_OR_TASK_MODULE).

  Raises:
    ValueError: one line, when `mixture_name` is a task (mixture weights need a mixture) or
      unknown, or a leaf task's rate is not a positive finite number.
  """
  if module:
    importlib.import_module(module)
  if mixture_name not in seqio.MixtureRegistry.names():
    what = "a task" if mixture_name in seqio.TaskRegistry.names() else "not registered"
    raise ValueError(f"mixture weights need a SeqIO mixture as the train task; "
                     f"{mixture_name!r} is {what}")
  mixture = seqio.get_mixture_or_task(mixture_name)
  tasks = list(mixture.tasks)
  for task in tasks:
    rate = mixture.get_rate(task)
    if not (math.isfinite(rate) and rate > 0):
      raise ValueError(f"mixture {mixture_name}: rate of task {task.name} must be a positive "
                       f"number, got {rate}")
  return tasks


def mixture_weights_shape(mixture_name: str, module: str | None = None) -> tuple[int]:
  """(number of leaf tasks,): the shape of a mixture's weight table (gin:
  gin/guided/mixture_weights.gin)."""
  return (len(mixture_leaf_tasks(mixture_name, module)),)


def learned_mixture(name: str, source: str, weights: Mapping[str, float],
                    module: str | None = None) -> str:
  """Registers `name`: the mixture `source` with each leaf task's rate multiplied by its learned
  weight (what `python -m gbt_t5x.guided.export --as_mixture` writes); returns `name`, so gin can
  bind `MIXTURE_OR_TASK_NAME = @data_ids.learned_mixture()` and a plain run trains on it.

  Args:
    name: the new mixture's name (e.g. '<source>_learned'); re-registered on every call.
    source: the mixture the guided run trained on.
    weights: {leaf task name: learned weight > 0}, one per leaf task of `source`.
    module: a module to import first that registers `source` (MIXTURE_OR_TASK_MODULE).

  Raises:
    ValueError: one line, when the weights do not name exactly the leaf tasks of `source` or a
      weight is not a positive number.
  """
  tasks = mixture_leaf_tasks(source, module)
  names = [t.name for t in tasks]
  if sorted(weights) != sorted(names):
    raise ValueError(f"learned mixture {name}: weights name {sorted(weights)} but {source} has "
                     f"the tasks {sorted(names)}")
  bad = {k: w for k, w in weights.items() if not (math.isfinite(float(w)) and float(w) > 0)}
  if bad:
    raise ValueError(f"learned mixture {name}: weights must be positive numbers, got {bad}")
  mixture = seqio.get_mixture_or_task(source)
  rates = [(t.name, mixture.get_rate(t) * float(weights[t.name])) for t in tasks]
  seqio.MixtureRegistry.remove(name)
  seqio.MixtureRegistry.add(name, rates)
  return name
