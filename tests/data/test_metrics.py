"""Tests of gbt_t5x.data.metrics against hand-computed values, degenerate inputs and bad input."""
import math
import warnings

import numpy as np
import pytest

from gbt_t5x.data import metrics


def _no_warnings(fn, *args):
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    return fn(*args)


def test_accuracy():
  assert metrics.accuracy([0, 1, 1, 0], [0, 1, 0, 0]) == {"accuracy": 75.0}
  assert metrics.accuracy(["a", "b"], ["a", "c"]) == {"accuracy": 50.0}


def test_f1_binary_and_invalid_predictions_count_as_wrong():
  # tp=1 fp=1 fn=1 -> P = R = 0.5 -> F1 = 0.5.
  assert metrics.f1([1, 1, 0, 0], [1, 0, 1, 0]) == pytest.approx({"f1": 50.0})
  # -1 on a negative target is scored as a false positive: tp=2 fp=1 -> P=2/3 R=1 -> F1=0.8.
  got = metrics.f1_and_accuracy([1, 0, 1], [1, -1, 1])
  assert got == pytest.approx({"f1": 80.0, "accuracy": 200.0 / 3})
  # -1 on a positive target is a false negative: tp=0 -> F1 = 0.
  assert metrics.f1([1, 0], [-1, 0]) == {"f1": 0.0}


def test_mean_multiclass_f1():
  # class 0: F1 1; class 1: missed -> 0; class 2: tp 1, fp 1, fn 1 -> 0.5. Macro: 0.5.
  fn = metrics.mean_multiclass_f1(3)
  assert fn([0, 1, 2, 2], [0, 2, 2, -1]) == pytest.approx({"mean_3class_f1": 50.0})


def test_matthews_corrcoef():
  # TP=1 TN=2 FP=0 FN=1: (1*2 - 0*1) / sqrt(1*2*2*3) = 2/sqrt(12).
  got = metrics.matthews_corrcoef([1, 1, 0, 0], [1, 0, 0, 0])
  assert got["matthews_corrcoef"] == pytest.approx(100 * 2 / math.sqrt(12))
  assert metrics.matthews_corrcoef([1, 0, 1, 0], [1, 0, 1, 0]) == {"matthews_corrcoef": 100.0}


@pytest.mark.parametrize("targets, predictions", [
    ([1, 0, 1, 0], [1, 1, 1, 1]),   # predictions all one class
    ([1, 1, 1, 1], [1, 0, 1, 0]),   # targets all one class
    ([0, 0, 0], [0, 0, 0]),         # both constant (and equal)
])
def test_matthews_corrcoef_degenerate_is_zero_without_warnings(targets, predictions):
  assert _no_warnings(metrics.matthews_corrcoef, targets, predictions) == {
      "matthews_corrcoef": 0.0}


def test_pearson_and_spearman():
  # t = [1,2,3], p = [1,2,4]: cov = 3, var_t = 2, var_p = 42/9 -> r = 9/sqrt(84).
  got = metrics.pearson_and_spearman([1.0, 2.0, 3.0], [1.0, 2.0, 4.0])
  assert got == pytest.approx({"pearson_corrcoef": 100 * 9 / math.sqrt(84),
                               "spearman_corrcoef": 100.0})
  # Ranks differ by [0, 1, -1, 0]: rho = 1 - 6*2 / (4*15) = 0.8.
  got = metrics.spearman_corrcoef([1.0, 2.0, 3.0, 4.0], [1.0, 3.0, 2.0, 4.0])
  assert got == pytest.approx({"spearman_corrcoef": 80.0})


@pytest.mark.parametrize("targets, predictions", [
    ([1.0, 2.0, 3.0], [2.0, 2.0, 2.0]),  # constant predictions
    ([2.5, 2.5], [1.0, 4.0]),            # constant targets
    ([1.0], [3.0]),                      # a single example
])
def test_correlations_degenerate_are_zero_not_nan(targets, predictions):
  got = _no_warnings(metrics.pearson_and_spearman, targets, predictions)
  assert got == {"pearson_corrcoef": 0.0, "spearman_corrcoef": 0.0}


def test_multirc_f1a_over_answers_and_exact_match_per_question():
  targets = [{"value": 1, "group": (0, 1)}, {"value": 0, "group": (0, 1)},
             {"value": 1, "group": (0, 2)}, {"value": 1, "group": (0, 2)}]
  predictions = [{"value": 1}, {"value": 0}, {"value": 1}, {"value": 0}]
  # All answers: tp=2 fp=0 fn=1 -> F1 = 0.8. Questions: (0,1) all right, (0,2) not -> 50.
  assert metrics.multirc_f1a_and_exact_match(targets, predictions) == pytest.approx(
      {"f1a": 80.0, "exact_match": 50.0})


def test_normalize_answer():
  assert metrics.normalize_answer("The  Eiffel-Tower!") == "eiffeltower"
  assert metrics.normalize_answer(b"An apple, a pear") == "apple pear"


def test_squad_em_f1_takes_the_best_reference():
  # Ex. 1: "cat sat" vs "cat sat down": P=2/3, R=1 -> F1 0.8 (the "dog" reference scores 0);
  # no exact match. Ex. 2: "Paris" vs "paris." normalise equal -> EM 1, F1 1.
  got = metrics.squad_em_f1([["the cat sat", "a dog"], ["Paris"]], ["cat sat down", "paris."])
  assert got == pytest.approx({"em": 50.0, "f1": 90.0})


def test_record_scores_each_query_once():
  targets = [{"value": ["Rome", "Roma"], "group": (3, 9)},
             {"value": ["Rome", "Roma"], "group": (3, 9)},  # same query, second answer copy
             {"value": ["Oslo"], "group": (4, 1)}]
  predictions = [{"value": "roma"}, {"value": "wrong"}, {"value": "Bergen"}]
  assert metrics.record_em_f1(targets, predictions) == pytest.approx({"em": 50.0, "f1": 50.0})


def test_bleu_bounds():
  refs = ["the cat sat on the mat today", "a dog ran in the big park"]
  assert metrics.bleu(refs, list(refs)) == pytest.approx({"bleu": 100.0})
  assert metrics.bleu([b"aaa bbb ccc ddd"], [b"xxx yyy zzz www"]) == pytest.approx({"bleu": 0.0})


def test_average_score_means_within_then_across_tasks():
  scores = {"cola": {"matthews_corrcoef": 40.0}, "mrpc": {"f1": 80.0, "accuracy": 70.0}}
  assert metrics.average_score(scores) == pytest.approx(57.5)


@pytest.mark.parametrize("fn, targets, predictions, match", [
    (metrics.accuracy, [0, 1], [0], "one prediction per target"),
    (metrics.pearson_corrcoef, [], [], "at least one example"),
    (metrics.f1, [0, 2], [0, 1], "binary targets"),
    (metrics.squad_em_f1, ["Paris"], ["Paris"], "list of answers"),
    (metrics.multirc_exact_match, [1], [1], "'group'"),
])
def test_bad_input_raises_value_error(fn, targets, predictions, match):
  with pytest.raises(ValueError, match=match):
    fn(targets, predictions)


def test_bad_arguments_raise():
  with pytest.raises(ValueError, match="num_classes"):
    metrics.mean_multiclass_f1(1)
  with pytest.raises(ValueError, match="no metrics"):
    metrics.average_score({"cola": {}})


def test_demo_translation_diagnostics_by_hand():
  """exact match, word F1 and token accuracy (fractions 0-1) on hand-counted examples."""
  targets = ["The cat sat.", "A dog ran home", "big red car"]
  predictions = ["The cat sat.", "dog ran", "small blue bus"]
  assert metrics.exact_match(targets, predictions) == {"exact_match": pytest.approx(1 / 3)}
  # Normalised (no articles, punctuation): F1 1; "dog ran home" vs "dog ran": P 1, R 2/3; 0.
  assert metrics.word_f1(targets, predictions) == {"word_f1": pytest.approx((1 + 0.8 + 0) / 3)}
  aux = {metrics.TARGET_TOKENS: np.array([[5, 6, 1, 0], [7, 8, 9, 1]]),
         metrics.OUTPUT_TOKENS: np.array([[5, 6, 1, 0], [7, 9, 9, 4]])}
  # Target tokens (EOS included): 3 + 4, of which 3 + 2 are at their position in the decode.
  got = metrics.token_accuracy(["a", "b"], ["a", "c"], aux)
  assert got == {"token_accuracy": pytest.approx(5 / 7)}
  with pytest.raises(ValueError, match="one shape"):
    metrics.token_accuracy(["a"], ["a"], aux)


def test_bleu_with_a_tokenizer_is_sacrebleus():
  import sacrebleu
  targets, predictions = ["我们明天见面。"], ["我们明天见。"]
  want = sacrebleu.corpus_bleu(predictions, [targets], tokenize="zh").score
  assert metrics.bleu(targets, predictions, tokenize="zh") == {"bleu": pytest.approx(want)}
