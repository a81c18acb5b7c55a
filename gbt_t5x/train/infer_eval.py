"""Decoding-based evaluation of a SeqIO task or mixture (T5X's inference evaluator).

What it is for: `InferEvaluator` decodes a task split with `model.predict_batch_with_aux` (jitted
by the partitioner) and scores the decodes with the task's SeqIO metric functions, the way
`seqio.Evaluator` does for predict metrics:
  - examples come from `task.get_dataset(split, shuffle=False, num_epochs=1)` with the task
    feature lengths, optionally capped at the first `num_examples`, and are cached on the host
    once (so the periodic evaluation during training re-reads nothing);
  - `seqio.EncDecFeatureConverter(pack=False)` turns them into model features;
  - predictions are detokenized with the task's `targets` vocabulary (which must be the model's
    output vocabulary), targets are the `targets_pretokenized` strings (else the detokenized
    target tokens), and both go through `task.postprocess_fn(..., example=ex, is_target=...)`;
  - each predict metric fn is called as `fn(targets=..., predictions=...)`, each score metric fn
    as `fn(targets=..., scores=...)` with `model.score_batch` log-likelihoods, each
    predict-with-aux metric fn as `fn(targets=..., predictions=..., aux_values=...)` with the
    ids `{'output_tokens': decodes, 'target_tokens': the examples' targets}` (int
    `[num_examples, targets length]`, padding 0; `gbt_t5x.data.metrics.OUTPUT_TOKENS`, ...).
With `targets_from_tokens` the targets are the detokenized target ids instead of the
pretokenized strings: what the model was trained to emit (a target longer than the targets
length is cut there), as the experiments score.
We use our own small loop rather than `seqio.Evaluator` because that one silently skips tasks
without metrics, goes through CLU metric objects, and cannot hand back the decoded rows.

Every process reads the whole split and builds the same global batches, so decoding works on a
multi-process mesh too; results are replicated. Must not import gin.
"""
from __future__ import annotations

import dataclasses
import inspect
import json
import math
from typing import Any, Callable, Iterable, Mapping, Sequence

import jax
import numpy as np
import seqio

from gbt_t5x import fileio
from gbt_t5x.data import metrics as metrics_lib
from gbt_t5x.models import encoder_decoder
from gbt_t5x.train import data as data_lib
from gbt_t5x.train.partitioning import PjitPartitioner

Row = dict[str, str]


@dataclasses.dataclass
class TaskResult:
  """One task's outcome: `metrics` {name: float} and the decoded `rows` in dataset order,
  each {'input', 'target', 'prediction'} (detokenized strings, before postprocessing)."""
  metrics: dict[str, float]
  rows: list[Row]


@dataclasses.dataclass
class _CachedTask:
  task: seqio.Task
  examples: list[dict[str, Any]]        # task features (numpy), in dataset order
  batches: list[dict[str, np.ndarray]]  # model features [batch, length], last one zero-padded


def _text(value: Any) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _scalar(value: Any) -> float | None:
  """A metric value as float (seqio `Scalar`s unwrapped), or None for non-scalar values."""
  value = getattr(value, "value", value)
  try:
    return float(np.asarray(value))
  except (TypeError, ValueError):
    return None


def eval_tasks(name: str, split: str, require_metrics: bool) -> list[seqio.Task]:
  """The tasks to decode for task-or-mixture `name` on `split`.

  A mixture keeps its subtasks that have `split` (and, with `require_metrics`, a predict or score
  metric fn), as `seqio.Evaluator` does. Raises a one-line ValueError when nothing is left, or
  when a single task lacks the split or (with `require_metrics`) metric fns.
  """
  provider = data_lib.get_mixture_or_task(name)
  tasks = list(seqio.get_subtasks(provider))
  is_task = isinstance(provider, seqio.Task)

  def has_metrics(task: seqio.Task) -> bool:
    return bool(task.predict_metric_fns or task.score_metric_fns
                or task.predict_with_aux_metric_fns)

  if is_task:
    task = tasks[0]
    if split not in task.splits:
      raise ValueError(f"task {name} has no split {split!r}; it has {sorted(task.splits)}")
    if require_metrics and not has_metrics(task):
      raise ValueError(f"task {name} has no metric_fns to score decodes with; give a task with "
                       "metrics, or decode without metrics (python -m gbt_t5x.infer)")
    return tasks
  kept = [t for t in tasks if split in t.splits and (has_metrics(t) or not require_metrics)]
  if not kept:
    what = "split {!r} and metric_fns".format(split) if require_metrics else f"split {split!r}"
    raise ValueError(f"mixture {name} has no task with {what}")
  return kept


@dataclasses.dataclass(frozen=True)
class MetricFns:
  """Seqio metric fns by kind, as `seqio.Task` sorts them by their parameters without defaults:
  `predict` (targets, predictions), `score` (targets, scores), `predict_with_aux` (targets,
  predictions, aux_values)."""
  predict: tuple[Callable[..., Mapping[str, Any]], ...] = ()
  score: tuple[Callable[..., Mapping[str, Any]], ...] = ()
  predict_with_aux: tuple[Callable[..., Mapping[str, Any]], ...] = ()

  @classmethod
  def of_task(cls, task: seqio.Task) -> "MetricFns":
    return cls(tuple(task.predict_metric_fns), tuple(task.score_metric_fns),
               tuple(task.predict_with_aux_metric_fns))

  @classmethod
  def sort(cls, fns: Sequence[Callable[..., Mapping[str, Any]]]) -> "MetricFns":
    """Sorts `fns` by kind (seqio's rule); a ValueError for any other signature."""
    kinds: dict[tuple[str, ...], list[Callable[..., Mapping[str, Any]]]] = {
        ("targets", "predictions"): [], ("targets", "scores"): [],
        ("targets", "predictions", "aux_values"): []}
    for fn in fns:
      required = tuple(name for name, p in inspect.signature(fn).parameters.items()
                       if p.default is inspect.Parameter.empty
                       and p.kind == inspect.Parameter.POSITIONAL_OR_KEYWORD)
      if required not in kinds:
        raise ValueError(f"metric fn {fn!r} takes {required}; expected (targets, predictions), "
                         "(targets, scores) or (targets, predictions, aux_values)")
      kinds[required].append(fn)
    return cls(*(tuple(v) for v in kinds.values()))


def validate_decoder_params(model: Any, decoder_params: Mapping[str, Any] | None) -> None:
  """Raises a one-line ValueError for bad decoder options (e.g. beam_size < 1) before decoding."""
  merged = {**getattr(model, "default_decoder_params", {}), **(decoder_params or {})}
  encoder_decoder._resolve_decoder_params(merged, 1, None, check_rng=False)  # pylint: disable=protected-access


def global_batch(batch: Mapping[str, np.ndarray], sharding: Any) -> dict[str, jax.Array]:
  """Global arrays sharded by `sharding` from a batch that every process holds in full."""
  return {k: jax.make_array_from_callback(v.shape, sharding, lambda idx, v=v: v[idx])
          for k, v in batch.items()}


class InferEvaluator:
  """Decodes a task split and computes its SeqIO metrics (T5X's `inference_evaluator_cls`).

  Args:
    model: an `EncoderDecoderModel`.
    dataset_cfg: task or mixture, split, `task_feature_lengths` (decodes are at most
      `targets` tokens long) and the global `batch_size`; `shuffle`/`pack` are ignored.
    partitioner: the mesh partitioner.
    param_axes: the params' shardings (`train_state_axes.params`).
    decoder_params: overrides of `model.default_decoder_params`, e.g.
      `{'method': 'beam', 'beam_size': 4, 'alpha': 0.6}` (default: the model's, i.e. greedy).
    num_examples: decode only the first N examples of each task (None: the whole split).
    require_metrics: raise for a task without metric fns (False: decode only, `metrics` empty).
    seed: PRNG seed for sampling (`decoder_params['method'] == 'sample'`).
    targets_from_tokens: score against the detokenized target ids (cut at the targets length)
      rather than the pretokenized target strings.
    metric_fns: seqio metric fns to score every task with instead of its own `metric_fns`
      (None: each task's own); tasks then need none of their own.
  """

  def __init__(self, model: Any, dataset_cfg: data_lib.DatasetConfig,
               partitioner: PjitPartitioner, param_axes: Any,
               decoder_params: Mapping[str, Any] | None = None, num_examples: int | None = None,
               require_metrics: bool = True, seed: int = 0, targets_from_tokens: bool = False,
               metric_fns: Sequence[Callable[..., Mapping[str, Any]]] | None = None):
    if num_examples is not None and int(num_examples) < 1:
      raise ValueError(f"num_examples must be None or >= 1, got {num_examples}")
    if dataset_cfg.batch_size < 1:
      raise ValueError(f"batch_size must be >= 1, got {dataset_cfg.batch_size}")
    if dataset_cfg.module:
      import importlib
      importlib.import_module(dataset_cfg.module)
    data_lib.validate_feature_lengths(dataset_cfg)
    validate_decoder_params(model, decoder_params)
    self.model = model
    self.cfg = dataset_cfg
    self.decoder_params = dict(decoder_params or {})
    self.num_examples = None if num_examples is None else int(num_examples)
    self._partitioner = partitioner
    self._param_axes = param_axes
    self._rng = jax.random.PRNGKey(seed)
    self._metric_fns = None if metric_fns is None else MetricFns.sort(metric_fns)
    self.tasks = eval_tasks(dataset_cfg.mixture_or_task_name, dataset_cfg.split,
                            require_metrics and metric_fns is None)
    self._require_metrics = require_metrics
    self.targets_from_tokens = bool(targets_from_tokens)
    self._cache: dict[str, _CachedTask] = {}

  # ------------------------------------------------------------------ data (read once)
  def _batch_size(self, n: int) -> int:
    """The configured batch size, shrunk to fit `n` examples (a multiple of the data shards)."""
    shards = self._partitioner.data_shards
    size = min(int(self.cfg.batch_size), shards * math.ceil(max(n, 1) / shards))
    if size % shards:
      raise ValueError(f"infer-eval batch_size {self.cfg.batch_size} is not divisible by the "
                       f"{shards} data shards of the mesh")
    return size

  def _cached(self, task: seqio.Task) -> _CachedTask:
    if task.name in self._cache:
      return self._cache[task.name]
    lengths = {k: int(v) for k, v in self.cfg.task_feature_lengths.items()}
    ds = task.get_dataset(sequence_length=lengths, split=self.cfg.split, shuffle=False,
                          num_epochs=1, seed=self.cfg.seed, use_cached=self.cfg.use_cached)
    if self.num_examples:
      ds = ds.take(self.num_examples)
    ds = ds.cache()
    examples = list(ds.as_numpy_iterator())
    if not examples:
      raise ValueError(f"task {task.name} split {self.cfg.split!r} yields no examples")
    converted = seqio.EncDecFeatureConverter(pack=False)(ds, lengths)
    size = self._batch_size(len(examples))
    batches = [data_lib.pad_batch(b, size)
               for b in converted.batch(size).as_numpy_iterator()]
    self._cache[task.name] = _CachedTask(task, examples, batches)
    return self._cache[task.name]

  def prepare(self) -> None:
    """Reads and caches every task's examples now (surfacing data errors before training)."""
    for task in self.tasks:
      self._cached(task)

  # ------------------------------------------------------------------ compiled functions
  def _uses_rng(self) -> bool:
    method = {**self.model.default_decoder_params, **self.decoder_params}.get("method")
    return method == "sample"

  @property
  def _predict_fn(self) -> Callable[..., tuple[jax.Array, jax.Array]]:
    if not hasattr(self, "_predict_jit"):
      uses_rng = self._uses_rng()
      length = int(self.cfg.task_feature_lengths["targets"])

      def predict(params, encoder_input_tokens, rng):
        decodes, aux = self.model.predict_batch_with_aux(
            params, {"encoder_input_tokens": encoder_input_tokens},
            rng=rng if uses_rng else None, decoder_params=self.decoder_params,
            max_decode_length=length)
        return decodes, aux["scores"]

      p = self._partitioner
      self._predict_jit = p.partition(
          predict, in_shardings=(self._param_axes, p.data_sharding, p.replicated),
          out_shardings=p.replicated)
    return self._predict_jit

  @property
  def _score_fn(self) -> Callable[..., jax.Array]:
    if not hasattr(self, "_score_jit"):
      p = self._partitioner
      self._score_jit = p.partition(
          lambda params, batch: self.model.score_batch(params, batch),
          in_shardings=(self._param_axes, p.data_sharding), out_shardings=p.replicated)
    return self._score_jit

  # ------------------------------------------------------------------ evaluation
  def predict_tokens(self, params: Any, task_name: str) -> np.ndarray:
    """Decoded token ids int32 `[num_examples, targets_length]` (EOS then zeros) for one task."""
    cached = self._cached(self._task(task_name))
    outs = []
    for i, batch in enumerate(cached.batches):
      enc = global_batch({"x": batch["encoder_input_tokens"]}, self._partitioner.data_sharding)
      decodes, _ = self._predict_fn(params, enc["x"], jax.random.fold_in(self._rng, i))
      outs.append(np.asarray(jax.device_get(decodes)))
    return np.concatenate(outs)[:len(cached.examples)]

  def scores(self, params: Any, task_name: str) -> np.ndarray:
    """Log-likelihood (nats) of each example's targets, float32 `[num_examples]`."""
    cached = self._cached(self._task(task_name))
    outs = []
    for batch in cached.batches:
      sharded = global_batch(batch, self._partitioner.data_sharding)
      outs.append(np.asarray(jax.device_get(self._score_fn(params, sharded))))
    return np.concatenate(outs)[:len(cached.examples)]

  def _task(self, name: str) -> seqio.Task:
    for task in self.tasks:
      if task.name == name:
        return task
    raise ValueError(f"task {name} is not among the evaluated tasks "
                     f"{[t.name for t in self.tasks]}")

  def evaluate_task(self, params: Any, task: seqio.Task, with_metrics: bool = True) -> TaskResult:
    """Decodes one task and (if `with_metrics`) runs its metric fns; see the module docstring."""
    cached = self._cached(task)
    vocab = task.output_features["targets"].vocabulary
    tokens = self.predict_tokens(params, task.name)
    rows, targets, predictions = [], [], []
    for ex, pred_tokens in zip(cached.examples, tokens):
      prediction = vocab.decode([int(t) for t in pred_tokens])
      if "targets_pretokenized" in ex and not self.targets_from_tokens:
        target = _text(ex["targets_pretokenized"])
      else:
        target = _text(vocab.decode([int(t) for t in ex["targets"]]))
      if "inputs_pretokenized" in ex:
        inputs = _text(ex["inputs_pretokenized"])
      else:
        inputs = task.output_features["inputs"].vocabulary.decode([int(t) for t in ex["inputs"]])
      rows.append({"input": inputs, "target": target, "prediction": _text(prediction)})
      targets.append(task.postprocess_fn(target, example=ex, is_target=True))
      predictions.append(task.postprocess_fn(_text(prediction), example=ex, is_target=False))
    metrics: dict[str, float] = {}
    raw: dict[str, Any] = {}
    if not with_metrics:
      return TaskResult(metrics=metrics, rows=rows)
    fns = self._metric_fns or MetricFns.of_task(task)
    for fn in fns.predict:
      raw.update(fn(targets=targets, predictions=predictions))
    if fns.score:
      scores = self.scores(params, task.name)
      for fn in fns.score:
        raw.update(fn(targets=targets, scores=scores))
    if fns.predict_with_aux:
      target_tokens = np.zeros_like(tokens)
      for i, ex in enumerate(cached.examples):
        ids = np.asarray(ex["targets"])[:tokens.shape[1]]
        target_tokens[i, :len(ids)] = ids
      aux_values = {metrics_lib.OUTPUT_TOKENS: tokens, metrics_lib.TARGET_TOKENS: target_tokens}
      for fn in fns.predict_with_aux:
        raw.update(fn(targets=targets, predictions=predictions, aux_values=aux_values))
    for key, value in raw.items():
      number = _scalar(value)
      if number is not None:
        metrics[key] = number
    return TaskResult(metrics=metrics, rows=rows)

  def evaluate(self, params: Any, with_metrics: bool = True) -> dict[str, TaskResult]:
    """{task name: TaskResult} for every evaluated task, in the mixture's order."""
    return {task.name: self.evaluate_task(params, task, with_metrics) for task in self.tasks}


def metrics_of(results: Mapping[str, TaskResult]) -> dict[str, dict[str, float]]:
  """{task: {metric: value}} from `InferEvaluator.evaluate`'s results."""
  return {name: dict(r.metrics) for name, r in results.items()}


def flat_metrics(results: Mapping[str, TaskResult], prefix: str = "") -> dict[str, float]:
  """{f'{prefix}{task}/{metric}': value}, e.g. {'infer_eval/demo_nmt/bleu': 12.3}."""
  return {f"{prefix}{name}/{key}": value
          for name, r in results.items() for key, value in r.metrics.items()}


def write_predictions(path: str, results: Mapping[str, TaskResult]) -> int:
  """Writes one JSON line {'task', 'input', 'target', 'prediction'} per decoded example.

  Returns the number of lines written. The directory is created if needed.
  """
  directory = fileio.dirname(fileio.absolute(path))
  fileio.makedirs(directory)
  lines = [json.dumps({"task": name, **row}, ensure_ascii=False)
           for name, result in results.items() for row in result.rows]
  fileio.write_text(path, "".join(f"{line}\n" for line in lines))
  return len(lines)


def format_metrics(results: Mapping[str, TaskResult]) -> str:
  """`demo_nmt/bleu 12.30, ...` for progress lines (or 'no metrics')."""
  flat = flat_metrics(results)
  return ", ".join(f"{k} {v:.2f}" for k, v in flat.items()) or "no metrics"


def read_rows(path: str) -> Iterable[dict[str, str]]:
  """The rows of a predictions JSONL file written by `write_predictions`."""
  return [json.loads(line) for line in fileio.read_text(path).splitlines() if line.strip()]


__all__: Sequence[str] = ("InferEvaluator", "MetricFns", "TaskResult", "eval_tasks", "flat_metrics",
                          "format_metrics", "metrics_of", "read_rows", "validate_decoder_params",
                          "write_predictions")
