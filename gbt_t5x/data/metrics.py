"""SeqIO metric functions for the downstream tasks: `fn(targets, predictions) -> {name: score}`.

What it is for: the official score of every GLUE / SuperGLUE task, translation BLEU, and the
benchmark average, in the shape `seqio.Task(metric_fns=...)` expects. Every score is a plain
Python float scaled to 0-100 as T5 reports it (correlations and MCC: -100..100).

Inputs are equal-length sequences with one entry per evaluated example, already postprocessed
(class ids as ints, -1 for text the postprocessor could not map; floats for regression; dicts
for the grouped SuperGLUE tasks, see `multirc_*` and `record_*`). Degenerate inputs never produce
NaN or warnings: a correlation (Pearson, Spearman, MCC) with a constant side is 0.

Must not import: jax, flax, tensorflow, or anything of `gbt_t5x.models` / `train` / `guided`.
"""
from __future__ import annotations

import collections
import re
import string
from typing import Any, Callable, Hashable, Mapping, Sequence, Union

import numpy as np
import sacrebleu
import scipy.stats
import sklearn.metrics

MetricFn = Callable[[Sequence[Any], Sequence[Any]], dict[str, float]]
Text = Union[str, bytes]


def _check_pair(targets: Sequence[Any], predictions: Sequence[Any], name: str) -> None:
  if len(targets) != len(predictions):
    raise ValueError(f"{name} needs one prediction per target, got {len(predictions)} "
                     f"predictions for {len(targets)} targets")
  if not len(targets):  # pylint: disable=g-explicit-length-test
    raise ValueError(f"{name} needs at least one example, got none")


def _as_text(s: Text) -> str:
  return s.decode("utf-8") if isinstance(s, bytes) else str(s)


def _is_constant(x: np.ndarray) -> bool:
  return bool(np.all(x == x[0]))


# ----------------------------------------------------------------------------- classification


def accuracy(targets: Sequence[Any], predictions: Sequence[Any]) -> dict[str, float]:
  """{"accuracy": 100 * fraction of predictions equal to their target}."""
  _check_pair(targets, predictions, "accuracy")
  hits = sum(1 for t, p in zip(targets, predictions) if t == p)
  return {"accuracy": 100.0 * hits / len(targets)}


def f1(targets: Sequence[int], predictions: Sequence[int]) -> dict[str, float]:
  """{"f1": 100 * binary F1 of class 1}; targets in {0, 1}.

  A prediction outside {0, 1} (e.g. -1, unparseable text) counts as wrong: it is scored as the
  opposite of its target, as T5 does."""
  _check_pair(targets, predictions, "f1")
  t = np.asarray(targets, dtype=np.int64)
  p = np.asarray(predictions, dtype=np.int64)
  if not np.isin(t, (0, 1)).all():
    raise ValueError(f"f1 needs binary targets in {{0, 1}}, got {sorted(set(t.tolist()))}")
  p = np.where(np.isin(p, (0, 1)), p, 1 - t)
  return {"f1": 100.0 * float(sklearn.metrics.f1_score(t, p, zero_division=0.0))}


def f1_and_accuracy(targets: Sequence[int], predictions: Sequence[int]) -> dict[str, float]:
  """{"f1", "accuracy"} (MRPC, QQP): binary F1 of class 1 (see `f1`) and accuracy, both ×100."""
  return {**f1(targets, predictions), **accuracy(targets, predictions)}


def mean_multiclass_f1(num_classes: int) -> MetricFn:
  """Metric fn for {f"mean_{num_classes}class_f1": 100 * macro F1 over classes 0..n-1} (CB).

  A prediction outside 0..n-1 (e.g. -1) is a miss for its target's class and no class's hit."""
  if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
    raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}")

  def metric(targets: Sequence[int], predictions: Sequence[int]) -> dict[str, float]:
    _check_pair(targets, predictions, "mean_multiclass_f1")
    score = sklearn.metrics.f1_score(np.asarray(targets), np.asarray(predictions),
                                     labels=list(range(num_classes)), average="macro",
                                     zero_division=0.0)
    return {f"mean_{num_classes}class_f1": 100.0 * float(score)}

  metric.__name__ = f"mean_{num_classes}class_f1"
  return metric


def matthews_corrcoef(targets: Sequence[int], predictions: Sequence[int]) -> dict[str, float]:
  """{"matthews_corrcoef": 100 * MCC} (CoLA, AX-b; multi-class MCC for more classes).

  If the targets or the predictions are all one class the coefficient is undefined; it is
  reported as 0 (sklearn's convention) without a warning."""
  _check_pair(targets, predictions, "matthews_corrcoef")
  t, p = np.asarray(targets), np.asarray(predictions)
  if _is_constant(t) or _is_constant(p):
    return {"matthews_corrcoef": 0.0}
  return {"matthews_corrcoef": 100.0 * float(sklearn.metrics.matthews_corrcoef(t, p))}


# ----------------------------------------------------------------------------- regression


def _correlation(targets: Sequence[float], predictions: Sequence[float], name: str,
                 fn: Callable[[np.ndarray, np.ndarray], Any]) -> dict[str, float]:
  _check_pair(targets, predictions, name)
  t = np.asarray(targets, dtype=np.float64)
  p = np.asarray(predictions, dtype=np.float64)
  if len(t) < 2 or _is_constant(t) or _is_constant(p):
    return {name: 0.0}  # Undefined (zero variance): reported as no correlation, not NaN.
  return {name: 100.0 * float(fn(t, p)[0])}


def pearson_corrcoef(targets: Sequence[float], predictions: Sequence[float]) -> dict[str, float]:
  """{"pearson_corrcoef": 100 * Pearson r} (STS-B); 0 when either side is constant or n < 2."""
  return _correlation(targets, predictions, "pearson_corrcoef", scipy.stats.pearsonr)


def spearman_corrcoef(targets: Sequence[float], predictions: Sequence[float]) -> dict[str, float]:
  """{"spearman_corrcoef": 100 * Spearman rho} (STS-B); 0 when either side is constant or n < 2."""
  return _correlation(targets, predictions, "spearman_corrcoef", scipy.stats.spearmanr)


def pearson_and_spearman(targets: Sequence[float],
                         predictions: Sequence[float]) -> dict[str, float]:
  """Both STS-B correlations ×100 (see `pearson_corrcoef`, `spearman_corrcoef`)."""
  return {**pearson_corrcoef(targets, predictions), **spearman_corrcoef(targets, predictions)}


# ----------------------------------------------------------------------------- grouped tasks


def _group_of(target: Mapping[str, Any]) -> Hashable:
  if not isinstance(target, Mapping) or "group" not in target or "value" not in target:
    raise ValueError(f"grouped metrics need targets like {{'value': ..., 'group': ...}}, "
                     f"got {target!r}")
  group = target["group"]
  return tuple(group) if isinstance(group, (list, np.ndarray)) else group


def _value_of(prediction: Any) -> Any:
  return prediction["value"] if isinstance(prediction, Mapping) else prediction


def multirc_f1a(targets: Sequence[Mapping[str, Any]],
                predictions: Sequence[Any]) -> dict[str, float]:
  """{"f1a": 100 * binary F1 over all answer options} (MultiRC).

  Targets are {"value": 0/1, "group": question key}; predictions {"value": 0/1/-1} or ints."""
  _check_pair(targets, predictions, "multirc_f1a")
  score = f1([_value_of(t) for t in targets], [_value_of(p) for p in predictions])
  return {"f1a": score["f1"]}


def multirc_exact_match(targets: Sequence[Mapping[str, Any]],
                        predictions: Sequence[Any]) -> dict[str, float]:
  """{"exact_match": 100 * fraction of questions whose answer options are all right} (MultiRC).

  Examples are grouped by the target's "group" (the question); each group scores 1 if every
  prediction in it equals its target, and the groups are averaged with equal weight."""
  _check_pair(targets, predictions, "multirc_exact_match")
  group_ok: dict[Hashable, bool] = {}
  for t, p in zip(targets, predictions):
    g = _group_of(t)
    group_ok[g] = group_ok.get(g, True) and _value_of(t) == _value_of(p)
  return {"exact_match": 100.0 * sum(group_ok.values()) / len(group_ok)}


def multirc_f1a_and_exact_match(targets: Sequence[Mapping[str, Any]],
                                predictions: Sequence[Any]) -> dict[str, float]:
  """MultiRC's official pair {"f1a", "exact_match"} (see the two functions above)."""
  return {**multirc_f1a(targets, predictions), **multirc_exact_match(targets, predictions)}


_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = frozenset(string.punctuation)


def normalize_answer(text: Text) -> str:
  """SQuAD answer normalisation: lower case, drop punctuation and the articles a/an/the,
  collapse whitespace. E.g. "The  Eiffel-Tower!" -> "eiffeltower"."""
  text = "".join(ch for ch in _as_text(text).lower() if ch not in _PUNCTUATION)
  return " ".join(_ARTICLES.sub(" ", text).split())


def _token_f1(reference: str, prediction: str) -> float:
  ref, pred = reference.split(), prediction.split()
  common = sum((collections.Counter(ref) & collections.Counter(pred)).values())
  if not ref or not pred:
    return float(ref == pred)
  if common == 0:
    return 0.0
  precision, recall = common / len(pred), common / len(ref)
  return 2 * precision * recall / (precision + recall)


def squad_em_f1(targets: Sequence[Sequence[Text]], predictions: Sequence[Text]) -> dict[str, float]:
  """{"em", "f1"}: mean over examples of the max over each example's reference answers of the
  exact match / token F1 of the normalised strings (`normalize_answer`), ×100."""
  _check_pair(targets, predictions, "squad_em_f1")
  em_sum = f1_sum = 0.0
  for refs, pred in zip(targets, predictions):
    if isinstance(refs, (str, bytes)) or not len(refs):  # pylint: disable=g-explicit-length-test
      raise ValueError(f"squad_em_f1 needs a non-empty list of answers per target, got {refs!r}")
    p = normalize_answer(pred)
    normed = [normalize_answer(r) for r in refs]
    em_sum += max(float(r == p) for r in normed)
    f1_sum += max(_token_f1(r, p) for r in normed)
  n = len(targets)
  return {"em": 100.0 * em_sum / n, "f1": 100.0 * f1_sum / n}


def record_em_f1(targets: Sequence[Mapping[str, Any]],
                 predictions: Sequence[Any]) -> dict[str, float]:
  """ReCoRD's {"em", "f1"} (see `squad_em_f1`) with one score per query.

  Targets are {"value": [answers], "group": (passage idx, query idx)}; the task yields one
  example per reference answer, so only the first example of each group is scored."""
  _check_pair(targets, predictions, "record_em_f1")
  seen: set[Hashable] = set()
  refs, preds = [], []
  for t, p in zip(targets, predictions):
    g = _group_of(t)
    if g not in seen:
      seen.add(g)
      refs.append(t["value"])
      preds.append(_value_of(p))
  return squad_em_f1(refs, preds)


# ----------------------------------------------------------------------------- text and averages


DEFAULT_BLEU_TOKENIZER = "13a"


def bleu(targets: Sequence[Text], predictions: Sequence[Text],
         tokenize: str = DEFAULT_BLEU_TOKENIZER) -> dict[str, float]:
  """{"bleu": sacrebleu corpus BLEU (0-100)} of detokenized predictions against one detokenized
  reference each: the one BLEU of the package (tasks, scoring, demo).

  `tokenize` is sacrebleu's tokenizer ("13a" by default, "zh" for Chinese, see
  `translation.bleu_tokenizer`); everything else is sacrebleu's default (exponential smoothing,
  case-sensitive)."""
  _check_pair(targets, predictions, "bleu")
  refs = [_as_text(t) for t in targets]
  hyps = [_as_text(p) for p in predictions]
  return {"bleu": float(sacrebleu.corpus_bleu(hyps, [refs], tokenize=tokenize).score)}


# Diagnostics of short translations (the demo task's; fractions 0-1, not x100 like the scores
# above, as the demo report and the experiments' records hold them).


def exact_match(targets: Sequence[Text], predictions: Sequence[Text]) -> dict[str, float]:
  """{"exact_match": fraction 0-1 of predictions equal to their target string}."""
  _check_pair(targets, predictions, "exact_match")
  return {"exact_match": float(np.mean([_as_text(p) == _as_text(t)
                                        for t, p in zip(targets, predictions)]))}


def word_f1(targets: Sequence[Text], predictions: Sequence[Text]) -> dict[str, float]:
  """{"word_f1": SQuAD's token F1 as a fraction 0-1}: bag-of-words F1 of the normalised strings
  (lower-cased, without articles and punctuation, see `squad_em_f1`), averaged over examples:
  how many of a sentence's words are right, wherever they stand."""
  _check_pair(targets, predictions, "word_f1")
  return {"word_f1": squad_em_f1([[t] for t in targets], predictions)["f1"] / 100.0}


# The `aux_values` keys of a predict-with-aux metric fn (`train.infer_eval.InferEvaluator`).
OUTPUT_TOKENS = "output_tokens"  # decoded ids int [num_examples, L]: EOS, then padding (0)
TARGET_TOKENS = "target_tokens"  # the examples' target ids int [num_examples, L], trimmed as the
                                 # task does (EOS last), then padding (0)


def token_accuracy(targets: Sequence[Text], predictions: Sequence[Text],
                   aux_values: Mapping[str, Any]) -> dict[str, float]:
  """{"token_accuracy": fraction 0-1 of target tokens (EOS included) whose position holds the
  same token in the decode}, a seqio predict-with-aux metric fn.

  Reads the ids, not the strings: `aux_values[TARGET_TOKENS]` and `aux_values[OUTPUT_TOKENS]`
  (both int `[num_examples, L]`, padding 0); re-tokenizing the decoded strings could differ from
  the ids the model emitted."""
  _check_pair(targets, predictions, "token_accuracy")
  target_tokens = np.asarray(aux_values[TARGET_TOKENS])
  output_tokens = np.asarray(aux_values[OUTPUT_TOKENS])
  if target_tokens.shape != output_tokens.shape or len(target_tokens) != len(targets):
    raise ValueError(f"token_accuracy needs aux_values {TARGET_TOKENS!r} and {OUTPUT_TOKENS!r} of "
                     f"one shape [{len(targets)}, length], got {target_tokens.shape} and "
                     f"{output_tokens.shape}")
  correct = total = 0
  for target, decoded in zip(target_tokens, output_tokens):
    n = int((target > 0).sum())
    correct += int((decoded[:n] == target[:n]).sum())
    total += n
  return {"token_accuracy": correct / max(total, 1)}


def average_score(task_scores: Mapping[str, Mapping[str, float]]) -> float:
  """The GLUE / SuperGLUE headline number: the mean over tasks of the mean of each task's
  metrics (so F1 and accuracy of MRPC count half each). Scores in, score out, both 0-100."""
  if not task_scores:
    raise ValueError("average_score needs at least one task's scores, got none")
  means = []
  for name, scores in task_scores.items():
    if not scores:
      raise ValueError(f"average_score: task {name!r} has no metrics")
    means.append(float(np.mean([float(v) for v in scores.values()])))
  return float(np.mean(means))
