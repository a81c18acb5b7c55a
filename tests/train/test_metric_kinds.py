"""The one table of metric kinds (`metric_kinds`) and what reads it."""
from __future__ import annotations

import pytest

from gbt_t5x.train import metric_kinds
from gbt_t5x.train import trainer as trainer_lib


@pytest.mark.parametrize("key,reduce,zero_on_skip", [
    ("loss", metric_kinds.PER_TOKEN, True),
    ("accuracy", metric_kinds.PER_TOKEN, True),
    ("num_tokens", metric_kinds.COUNT, True),
    ("train_loss", metric_kinds.MEAN, True),
    ("tangent_resets", metric_kinds.COUNT, True),
    ("nonfinite_skipped", metric_kinds.COUNT, False),
    ("skipped", metric_kinds.COUNT, False),
    ("skipped/b1", metric_kinds.COUNT, False),
    ("hp/data_weights/clean", metric_kinds.MEAN, False),
    ("hypergrad_norm/b1", metric_kinds.MEAN, False),
    ("hypergrad/b1", metric_kinds.MEAN, False),
    ("guide_loss_per_token", metric_kinds.MEAN, False),
    ("learning_rate", metric_kinds.MEAN, False),
    ("some_other_loss_sum", metric_kinds.MEAN, True),
])
def test_kinds(key, reduce, zero_on_skip):
  kind = metric_kinds.kind_of(key)
  assert (kind.reduce, kind.zero_on_skip) == (reduce, zero_on_skip)


def test_finalize_metrics_reduces_by_kind():
  sums = {"loss": 20.0, "num_tokens": 10.0, "nonfinite_skipped": 1.0, "skipped/b1": 2.0,
          "hp/b1": 1.8, "learning_rate": 0.2}
  assert trainer_lib.finalize_metrics(sums, 2) == {
      "loss": 2.0, "num_tokens": 10.0, "nonfinite_skipped": 1.0, "skipped/b1": 2.0,
      "hp/b1": 0.9, "learning_rate": 0.1}


def test_progress_view_by_kind():
  report = {"loss": 2.0, "num_tokens": 10.0, "train_loss": 2.0, "nonfinite_skipped": 0.0,
            "skipped": 1.0, "skipped/b1": 2.0, "skipped/lr": 0.0, "tangent_resets": 0.0,
            "hypergrad_norm/b1": 0.3, "hp/learning_rate": 1.5, "hp/b1": 0.9}
  view = trainer_lib.Trainer.progress_view(None, report)
  assert view == {"loss": 2.0, "skipped/b1": 2, "lr_mult": 1.5, "hp/b1": 0.9}
  assert isinstance(view["skipped/b1"], int)


def test_hp_key():
  assert metric_kinds.hp_key("b1") == "hp/b1"
  assert metric_kinds.hp_key("data_weights", "clean") == "hp/data_weights/clean"
