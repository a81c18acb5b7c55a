"""What the training loop does at each evaluation: decode-and-score, and keep the best checkpoint.

- `PeriodicInferEval`: runs an `InferEvaluator` on the current params and reports its metrics to
  TensorBoard (`MODEL_DIR/infer_eval/`, scalars named `TASK/METRIC`), to `metrics.jsonl`
  (`infer_eval/TASK/METRIC`) and as one progress line.
- `BestCheckpointKeeper`: after each evaluation, saves the whole train state under
  `MODEL_DIR/best/<step>/` when a chosen metric (e.g. `infer_eval/demo_nmt/bleu`, mode max, or
  `train_eval/loss`, mode min) improves, with `MODEL_DIR/best/best.json` = {metric, mode, step,
  value}. Only the best step is kept there; the regular checkpoints are never touched. A resumed
  run reads best.json, so it only replaces the best with a better one.

Must not import gin.
"""
from __future__ import annotations

import json
import math
import time
from typing import Any, Callable, Mapping

import jax

from gbt_t5x import fileio
from gbt_t5x.train import checkpoints as checkpoints_lib
from gbt_t5x.train import infer_eval
from gbt_t5x.train import summaries

INFER_EVAL = "infer_eval"
BEST_DIR = "best"
BEST_JSON = "best.json"
_MODES = ("max", "min")


class PeriodicInferEval:
  """Decodes the infer-eval task(s) with the current params and logs the metrics.

  Args:
    evaluator: an `infer_eval.InferEvaluator` (or anything with its `evaluate(params)`).
    model_dir: the run directory (None: log nothing to disk).
    print_fn: receives the progress line.
  """

  def __init__(self, evaluator: Any, model_dir: str | None,
               print_fn: Callable[[str], None] = print):
    self.evaluator = evaluator
    chief = jax.process_index() == 0 and model_dir is not None
    self._writer = summaries.SummaryWriter(
        fileio.join(model_dir, INFER_EVAL) if model_dir else "", enabled=chief)
    self._log = summaries.MetricsLog(
        fileio.join(model_dir, "metrics.jsonl") if model_dir else "", enabled=chief)
    self._print = print_fn

  def __call__(self, step: int, params: Any) -> dict[str, float]:
    """Evaluates; returns {'infer_eval/TASK/METRIC': value}."""
    start = time.monotonic()
    results = self.evaluator.evaluate(params)
    seconds = time.monotonic() - start
    scalars = infer_eval.flat_metrics(results)
    self._writer.scalars(step, scalars)
    self._writer.flush()
    self._log.log(step, {f"{INFER_EVAL}/{k}": v for k, v in scalars.items()})
    examples = sum(len(r.rows) for r in results.values())
    self._print(f"infer_eval at step {step}: {infer_eval.format_metrics(results)} "
                f"({examples} examples decoded in {seconds:.1f}s)")
    return {f"{INFER_EVAL}/{k}": v for k, v in scalars.items()}

  def close(self) -> None:
    self._writer.close()


def check_best_metric(metric: str, mode: str, has_train_eval: bool,
                      infer_eval_tasks: list[str] | None) -> None:
  """Raises a one-line ValueError when `metric` cannot come out of this run's evaluations.

  Args:
    metric: 'train_eval/NAME' or 'infer_eval/TASK/NAME'.
    mode: 'max' or 'min'.
    has_train_eval: whether the run has a train_eval dataset.
    infer_eval_tasks: the infer-eval task names, or None without infer-eval.
  """
  if mode not in _MODES:
    raise ValueError(f"best_checkpoint_mode must be one of {_MODES}, got {mode!r}")
  parts = metric.split("/")
  if parts[0] == "train_eval" and len(parts) == 2:
    if not has_train_eval:
      raise ValueError(f"best_checkpoint_metric {metric!r} needs train_eval_dataset_cfg")
    return
  if parts[0] == INFER_EVAL and len(parts) == 3:
    if infer_eval_tasks is None:
      raise ValueError(f"best_checkpoint_metric {metric!r} needs infer_eval_dataset_cfg")
    if parts[1] not in infer_eval_tasks:
      raise ValueError(f"best_checkpoint_metric {metric!r}: task {parts[1]!r} is not "
                       f"infer-evaluated; tasks: {', '.join(infer_eval_tasks)}")
    return
  raise ValueError(f"best_checkpoint_metric {metric!r} must look like 'train_eval/loss' or "
                   "'infer_eval/TASK/METRIC'")


class BestCheckpointKeeper:
  """Keeps the train state of the best evaluation so far under `MODEL_DIR/best/`.

  Args:
    model_dir: the run directory.
    metric: the metric's full name as logged (e.g. 'infer_eval/demo_nmt/bleu').
    mode: 'max' (higher is better) or 'min'.
  """

  def __init__(self, model_dir: str, metric: str, mode: str = "max"):
    if mode not in _MODES:
      raise ValueError(f"best_checkpoint_mode must be one of {_MODES}, got {mode!r}")
    self.metric = metric
    self.mode = mode
    self.directory = fileio.join(model_dir, BEST_DIR)
    self.json_path = fileio.join(self.directory, BEST_JSON)
    self.best = self._read()

  def _read(self) -> dict[str, Any] | None:
    """The recorded best (if it is for this metric and mode)."""
    if not fileio.exists(self.json_path):
      return None
    try:
      record = json.loads(fileio.read_text(self.json_path))
    except json.JSONDecodeError as e:
      raise ValueError(f"{self.json_path} is not valid JSON ({e}); restore it, or remove it to "
                       "start the best-checkpoint record afresh") from None
    if not isinstance(record, dict):
      raise ValueError(f"{self.json_path} does not hold a JSON object; restore or remove it")
    if record.get("metric") != self.metric or record.get("mode") != self.mode:
      return None
    return record

  def improves(self, value: float) -> bool:
    """Whether `value` beats the recorded best (any finite value beats none)."""
    if not math.isfinite(value):
      return False
    if self.best is None:
      return True
    best = float(self.best["value"])
    return value > best if self.mode == "max" else value < best

  def update(self, step: int, metrics: Mapping[str, float], state: Any,
             metadata: Mapping[str, Any] | None = None) -> bool:
    """Saves `state` as the new best when `metrics[self.metric]` improves; returns whether saved.

    Raises:
      ValueError: `metrics` lacks the metric (names the ones it has).
    """
    if self.metric not in metrics:
      raise ValueError(f"best_checkpoint_metric {self.metric!r} is not among the evaluation "
                       f"metrics: {', '.join(sorted(metrics)) or 'none'}")
    value = float(metrics[self.metric])
    if not self.improves(value):
      return False
    checkpointer = checkpoints_lib.make_checkpointer(self.directory, keep=1)
    checkpointer.save(step, state, dict(metadata or {}))
    checkpointer.close()
    record = {"metric": self.metric, "mode": self.mode, "step": int(step), "value": value}
    if jax.process_index() == 0:
      fileio.write_text(self.json_path, json.dumps(record, indent=2))
    self.best = record
    return True
