"""Markdown reports with mean ± std tables and PNG line plots, and a table parser for tests.

Must not import jax or gin.
"""
from __future__ import annotations

import math
import os
import re
from typing import Mapping, Sequence

import numpy as np

QUICK_NOTE = ("**Quick mode (CI size): a one-layer model, a few steps per run, few seeds and BO "
              "trials — the numbers below only show that the pipeline runs; they are not "
              "meaningful evidence.**")


def mean_std(values: Sequence[float]) -> tuple[float, float]:
  """Mean and (population) standard deviation; NaN for no values."""
  arr = np.asarray([float(v) for v in values], np.float64)
  if arr.size == 0:
    return math.nan, math.nan
  return float(arr.mean()), float(arr.std())


def fmt(values: Sequence[float], digits: int = 3) -> str:
  """'mean ± std' of `values` with `digits` decimals."""
  mean, std = mean_std(values)
  return f"{mean:.{digits}f} ± {std:.{digits}f}"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
  lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
  lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
  return "\n".join(lines)


_MEAN_STD = re.compile(r"^\s*([-+]?(?:\d+\.?\d*|\.\d+|nan|inf)(?:[eE][-+]?\d+)?)\s*±\s*"
                       r"([-+]?(?:\d+\.?\d*|\.\d+|nan|inf)(?:[eE][-+]?\d+)?)\s*$")


def parse_tables(text: str) -> list[list[dict[str, str]]]:
  """Every markdown table in `text` as a list of {header: cell} rows."""
  tables, lines = [], text.splitlines()
  i = 0
  while i < len(lines):
    if lines[i].startswith("|") and i + 1 < len(lines) and lines[i + 1].startswith("|---"):
      headers = [c.strip() for c in lines[i].strip().strip("|").split("|")]
      rows = []
      i += 2
      while i < len(lines) and lines[i].startswith("|"):
        cells = [c.strip() for c in lines[i].strip().strip("|").split("|")]
        rows.append(dict(zip(headers, cells)))
        i += 1
      tables.append(rows)
    else:
      i += 1
  return tables


def parse_mean_std(cell: str) -> tuple[float, float]:
  """(mean, std) of a 'mean ± std' cell (ValueError otherwise)."""
  match = _MEAN_STD.match(cell)
  if not match:
    raise ValueError(f"not a 'mean ± std' cell: {cell!r}")
  return float(match.group(1)), float(match.group(2))


def plot_lines(path: str, series: Mapping[str, tuple[Sequence[float], Sequence[float]]],
               xlabel: str, ylabel: str, title: str) -> None:
  """One PNG with a line (with markers) per series {label: (xs, ys)}."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(6.4, 4.2))
  for label, (xs, ys) in series.items():
    ax.plot(list(xs), list(ys), marker="o", label=label)
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  ax.set_title(title)
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def plot_bars(path: str, labels: Sequence[str], values: Sequence[Sequence[float]], ylabel: str,
              title: str) -> None:
  """One PNG of bars (mean) with error bars (std) per label."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  stats = [mean_std(v) for v in values]
  fig, ax = plt.subplots(figsize=(6.4, 4.2))
  ax.bar(range(len(labels)), [m for m, _ in stats], yerr=[s for _, s in stats], capsize=4)
  ax.set_xticks(range(len(labels)))
  ax.set_xticklabels(labels, rotation=20, ha="right")
  ax.set_ylabel(ylabel)
  ax.set_title(title)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def write_report(path: str, text: str) -> None:
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  with open(path, "w") as f:
    f.write(text.rstrip() + "\n")


def write_experiment_report(out: str, title: str, quick: bool, sections: Sequence[str],
                            script: str, results_dir: str) -> str:
  """Writes `out`/report.md: `title` as a heading, the quick-mode warning when `quick`, the
  non-empty `sections`, then the command reproducing it; prints and returns the path."""
  command = f"python scripts/experiments/{script}" + (" --quick" if quick else "")
  text = "\n\n".join(filter(None, [f"# {title}", QUICK_NOTE if quick else "", *sections,
                                     f"Reproduce: `{command} --results_dir {results_dir}`"]))
  path = os.path.join(out, "report.md")
  write_report(path, text)
  print(f"wrote {path}")
  return path


def paired_difference(treated: Sequence[float], control: Sequence[float],
                      num_resamples: int = 10_000, seed: int = 0) -> dict[str, float]:
  """Per-seed paired differences `treated[i] - control[i]` (same seed i in both arms).

  Returns:
    {'mean': mean difference, 'low', 'high': bootstrap 95 % interval of the mean (seeds
    resampled with replacement; with 3 seeds it is coarse: it spans the per-seed differences'
    range at most), 'positive', 'negative': how many seeds differ in each direction, 'n'}.
  """
  diffs = np.asarray(treated, np.float64) - np.asarray(control, np.float64)
  if diffs.size == 0 or len(treated) != len(control):
    raise ValueError(f"paired difference needs equally many values per arm, got "
                     f"{len(treated)} and {len(control)}")
  rng = np.random.default_rng(seed)
  means = diffs[rng.integers(0, diffs.size, (num_resamples, diffs.size))].mean(axis=1)
  return {"mean": float(diffs.mean()), "low": float(np.percentile(means, 2.5)),
          "high": float(np.percentile(means, 97.5)), "positive": int((diffs > 0).sum()),
          "negative": int((diffs < 0).sum()), "n": int(diffs.size)}


def fmt_paired(diff: Mapping[str, float], digits: int = 2) -> str:
  """'+1.23 [+0.40, +2.10] (3/3 seeds >0)'."""
  return (f"{diff['mean']:+.{digits}f} [{diff['low']:+.{digits}f}, {diff['high']:+.{digits}f}] "
          f"({int(diff['positive'])}/{int(diff['n'])} seeds >0)")


def interval_verdict(diff: Mapping[str, float], higher_is_better: bool) -> str:
  """'better' / 'worse' when the 95 % interval excludes 0 in that direction, else 'no clear
  difference'."""
  low, high = diff["low"], diff["high"]
  if low > 0 or high < 0:
    return "better" if (low > 0) == higher_is_better else "worse"
  return "no clear difference"


def plot_panels(path: str, panels: Mapping[str, Mapping[str, tuple[Sequence[float],
                                                                    Sequence[float]]]],
                xlabel: str, title: str, markers: bool = False) -> None:
  """One PNG with a subplot per panel {panel title: {line label: (xs, ys)}}, stacked; a series
  of one point is drawn as a point (`markers`: every point gets a marker)."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(len(panels), 1, figsize=(6.4, 2.3 * len(panels) + 0.6), sharex=True,
                           squeeze=False)
  for ax, (panel, series) in zip(axes[:, 0], panels.items()):
    for label, (xs, ys) in series.items():
      ax.plot(list(xs), list(ys), label=label,
              marker="o" if markers or len(list(xs)) == 1 else None)
    ax.set_ylabel(panel)
    ax.grid(alpha=0.3)
    if len(series) > 1:
      ax.legend(fontsize=7)
  axes[-1, 0].set_xlabel(xlabel)
  fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def plot_points(path: str, points: Mapping[str, tuple[Sequence[float], Sequence[float]]],
                xlabel: str, ylabel: str, title: str) -> None:
  """One PNG with a labelled point (mean, with std error bars on both axes) per
  {label: (x values over seeds, y values over seeds)}."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(6.4, 4.2))
  for label, (xs, ys) in points.items():
    (mx, sx), (my, sy) = mean_std(xs), mean_std(ys)
    ax.errorbar([mx], [my], xerr=[sx], yerr=[sy], marker="o", capsize=3, label=label)
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  ax.set_title(title)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


# (score key, column title, decimals, higher is better) of the translation experiments' tables.
TRANSLATION_METRICS = (("bleu", "test BLEU", 2, True), ("word_f1", "test word F1", 3, True),
                       ("dev_loss", "dev loss", 3, False))


def arm_table(arms: Sequence[str], runs: Mapping[str, Sequence], compute: Mapping[str, Sequence],
              metrics: Sequence[tuple] = TRANSLATION_METRICS) -> str:
  """Mean ± std per arm of each metric, model steps, compute (plain steps) and wall seconds.

  Args:
    arms: row order.
    runs: arm -> its `RunRecord`s (one per seed).
    compute: arm -> each run's compute in plain train-step equivalents.
    metrics: (score key, column title, decimals, higher is better) per column.
  """
  return markdown_table(
      ["arm", *[title for _, title, _, _ in metrics], "model steps", "compute (plain steps)",
       "wall s"],
      [[arm, *[fmt([r.scores[key] for r in runs[arm]], d) for key, _, d, _ in metrics],
        fmt([r.train_steps for r in runs[arm]], 0), fmt(compute[arm], 0),
        fmt([r.wall_seconds for r in runs[arm]], 0)] for arm in arms])


def paired_table(comparisons: Sequence[tuple[str, str, str]], runs: Mapping[str, Sequence],
                 metrics: Sequence[tuple] = TRANSLATION_METRICS
                 ) -> tuple[str, dict[tuple[str, str], dict[str, dict[str, float]]]]:
  """Per-seed paired differences for each (treated arm, reference arm, row name).

  `runs[arm]` must list the same seeds in the same order for both arms of a comparison.

  Returns:
    (the markdown table, {(treated, reference): {score key: `paired_difference`}}).
  """
  diffs = {}
  for a, b, _ in comparisons:
    if [r.seed for r in runs[a]] != [r.seed for r in runs[b]]:
      raise ValueError(f"arms {a!r} and {b!r} are not paired by seed")
    diffs[(a, b)] = {key: paired_difference([r.scores[key] for r in runs[a]],
                                            [r.scores[key] for r in runs[b]])
                     for key, *_ in metrics}
  table = markdown_table(
      ["comparison", *[f"Δ {title} [95 % CI] (seeds >0)" for _, title, _, _ in metrics]],
      [[name, *[fmt_paired(diffs[(a, b)][key], d) for key, _, d, _ in metrics]]
       for a, b, name in comparisons])
  return table, diffs


def paired_summary(diff: Mapping[str, Mapping[str, float]]) -> str:
  """'test BLEU: better, dev loss: no clear difference (ΔBLEU ..., Δdev loss ...)'."""
  return (f"test BLEU: {interval_verdict(diff['bleu'], True)}, dev loss: "
          f"{interval_verdict(diff['dev_loss'], False)} (ΔBLEU {fmt_paired(diff['bleu'])}, "
          f"Δdev loss {fmt_paired(diff['dev_loss'], 3)})")


PAIRED_NOTE = ("Per-seed paired differences (arm − reference, same seed), mean with a bootstrap "
               "95 % interval, and how many seeds are above 0. \"better\" / \"worse\" below means "
               "the interval excludes 0 (with 3 seeds: every seed agrees); otherwise \"no clear "
               "difference\".")
