"""The one table of train metric kinds: how each step metric is reduced over steps, whether the
model step zeroes it on a step the non-finite guard dropped, and how the progress line shows it.

Read by `step.model_step` (zeroing), `trainer.finalize_metrics` (reduction) and
`Trainer.progress_view` (display); `hp_key` builds every hyper-parameter value key.

Must not import gin or seqio.
"""
from __future__ import annotations

import dataclasses

# Reductions over the steps of a window (`trainer.finalize_metrics`).
PER_TOKEN = "per_token"  # summed, then divided by the summed `num_tokens`
COUNT = "count"  # summed (tokens, examples, skipped steps)
MEAN = "mean"  # summed, then divided by the number of kept steps

# Progress-line display (`Trainer.progress_view`).
SHOWN = "shown"
HIDDEN = "hidden"  # TensorBoard and the metrics log only
NONZERO = "nonzero"  # shown only when non-zero
NONZERO_COUNT = "nonzero_count"  # shown only when non-zero, as an int

HP_PREFIX = "hp/"


@dataclasses.dataclass(frozen=True)
class MetricKind:
  """How one step metric is treated.

  Attributes:
    reduce: PER_TOKEN, COUNT or MEAN.
    zero_on_skip: the model step reports 0 for it on a step the non-finite guard dropped (the
      loss head's sums and the step's own counts; not what describes the values or the guide).
    progress: SHOWN, HIDDEN, NONZERO or NONZERO_COUNT.
  """
  reduce: str
  zero_on_skip: bool
  progress: str = SHOWN


_EXACT = {
    "loss": MetricKind(PER_TOKEN, True),
    "accuracy": MetricKind(PER_TOKEN, True),
    "cross_ent_loss": MetricKind(PER_TOKEN, True, HIDDEN),
    "z_loss": MetricKind(PER_TOKEN, True, HIDDEN),
    "num_tokens": MetricKind(COUNT, True, HIDDEN),
    "num_examples": MetricKind(COUNT, True, HIDDEN),
    "train_loss": MetricKind(MEAN, True, HIDDEN),
    "tangent_resets": MetricKind(COUNT, True, NONZERO_COUNT),
    "learning_rate": MetricKind(MEAN, False),
    "guide_loss_per_token": MetricKind(MEAN, False),
    "nonfinite_skipped": MetricKind(COUNT, False, NONZERO),
    "skipped": MetricKind(COUNT, False, HIDDEN),
}
# (key prefix, kind), tried in order after the exact keys.
_PREFIXES = (
    ("skipped/", MetricKind(COUNT, False, NONZERO_COUNT)),
    (HP_PREFIX, MetricKind(MEAN, False)),
    ("hypergrad_norm/", MetricKind(MEAN, False, HIDDEN)),
    ("hypergrad/", MetricKind(MEAN, False, HIDDEN)),
    ("guide_loss", MetricKind(MEAN, False)),
)
# Any other key: another sum of the loss head (or a timing added to a report).
DEFAULT = MetricKind(MEAN, True)


def kind_of(key: str) -> MetricKind:
  """The `MetricKind` of a step metric key (`DEFAULT` for keys not in the table)."""
  if key in _EXACT:
    return _EXACT[key]
  for prefix, kind in _PREFIXES:
    if key.startswith(prefix):
      return kind
  return DEFAULT


def hp_key(name: str, entry: str | None = None) -> str:
  """The metric key of a hyper-parameter value: `hp/NAME`, or `hp/NAME/ENTRY` for a vector
  entry (ENTRY a tag-safe entry name or an index, `specs.entry_tags`)."""
  return f"{HP_PREFIX}{name}" if entry is None else f"{HP_PREFIX}{name}/{entry}"
