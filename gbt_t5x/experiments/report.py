"""Markdown reports with mean ± std tables and PNG line plots, and a table parser for tests.

Must not import jax or gin.
"""
from __future__ import annotations

import math
import os
import re
from typing import Mapping, Sequence

import numpy as np

QUICK_NOTE = ("**Quick mode (CI size): tiny model, tens of steps, 2 seeds, 2 BO trials — the numbers "
              "below only show that the pipeline runs; they are not meaningful evidence.**")


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
