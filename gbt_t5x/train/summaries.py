"""Run outputs for people: TensorBoard scalars, a JSON-lines metrics log, a progress line, PNGs.

- `SummaryWriter`: TensorBoard scalar events via `tf.summary` (tensorflow imported lazily, on the
  first write); a disabled writer (processes other than 0) does nothing. For a URL logdir
  (`gs://...`) the events file is written to a local staging folder and copied there through
  `gbt_t5x.fileio` at each flush and on close, so TensorBoard files go through the same file
  layer as everything else.
- `MetricsLog` / `read_metrics_log`: one JSON object `{"step": int, **scalars}` per line, used for
  loss curves and guided hyper-parameter trajectories.
- `ProgressLine`: `step 120/1000 | 12.3 steps/s | 4.5k tok/s | ETA 1m10s | loss 3.210 | ...`.
- `plot_curves`: one matplotlib subplot per key against the step (Agg canvas, no pyplot state).

Must not import gin, seqio, jax-model code or anything from `gbt_t5x.models`.
"""
from __future__ import annotations

import io
import json
import math
import os
import shutil
import tempfile
import time
from typing import Any, Callable, Mapping, Sequence

from gbt_t5x import fileio


def _to_float(key: str, value: Any) -> float:
  try:
    return float(value)
  except (TypeError, ValueError):
    raise ValueError(f"summary value {key!r} is not a scalar number: {value!r}") from None


class SummaryWriter:
  """TensorBoard scalar writer for one run subdirectory (e.g. `MODEL_DIR/train`)."""

  def __init__(self, logdir: str, enabled: bool = True):
    """Args:
      logdir: directory of the events files (created on the first write).
      enabled: False on processes that must not write (then every method is a no-op).
    """
    if enabled and not logdir:
      raise ValueError("an enabled SummaryWriter needs a logdir")
    self.logdir = logdir
    self.enabled = enabled
    self._writer = None
    self._staging: str | None = None  # Local folder mirrored to a URL logdir.

  def scalars(self, step: int, values: Mapping[str, Any]) -> None:
    """Writes each `name: scalar` at global step `step` (int)."""
    if not self.enabled:
      return
    floats = {k: _to_float(k, v) for k, v in values.items()}
    import tensorflow as tf  # Lazy: only the writing process pays for it.
    if self._writer is None:
      target = self.logdir
      if fileio.is_remote(self.logdir):
        self._staging = tempfile.mkdtemp(prefix="gbt_t5x_events_")
        target = self._staging
      self._writer = tf.summary.create_file_writer(target)
    with self._writer.as_default():
      for name, value in floats.items():
        tf.summary.scalar(name, value, step=int(step))

  def flush(self) -> None:
    """Pushes buffered events to disk (and a URL logdir)."""
    if self._writer is not None:
      self._writer.flush()
      self._upload()

  def _upload(self) -> None:
    if self._staging is None:
      return
    fileio.makedirs(self.logdir)
    for name in sorted(os.listdir(self._staging)):
      fileio.copy_file(os.path.join(self._staging, name), fileio.join(self.logdir, name))

  def close(self) -> None:
    """Flushes and closes the events file (a later `scalars` opens a new one)."""
    if self._writer is not None:
      self._writer.close()
      self._writer = None
      self._upload()
      if self._staging is not None:
        shutil.rmtree(self._staging, ignore_errors=True)
        self._staging = None


class MetricsLog:
  """Appends `{"step": step, **scalars}` as one JSON line per `log` call."""

  def __init__(self, path: str, enabled: bool = True):
    """Args:
      path: the `.jsonl` file (its directory is created on the first write).
      enabled: False on processes that must not write (then `log` is a no-op).
    """
    if enabled and not path:
      raise ValueError("an enabled MetricsLog needs a path")
    self.path = path
    self.enabled = enabled
    self._tail_checked = False

  def _drop_torn_tail(self) -> None:
    """Cuts an unterminated last line (a killed run's interrupted write, which holds no whole
    record) before the first append, so that the new records do not glue onto it."""
    self._tail_checked = True
    if not fileio.exists(self.path):
      return
    text = fileio.read_text(self.path)
    if text and not text.endswith("\n"):
      fileio.write_text(self.path, text[:text.rfind("\n") + 1])

  def log(self, step: int, scalars: Mapping[str, Any]) -> None:
    """Appends one line; values are converted to float (NaN/inf are written as JSON extensions)."""
    if not self.enabled:
      return
    if "step" in scalars:
      raise ValueError("metrics must not contain the reserved key 'step'")
    record = {"step": int(step), **{k: _to_float(k, v) for k, v in scalars.items()}}
    directory = fileio.dirname(self.path)
    if directory:
      fileio.makedirs(directory)
    if not self._tail_checked:
      self._drop_torn_tail()
    fileio.append_text(self.path, json.dumps(record) + "\n")


def read_metrics_log(path: str) -> list[dict[str, Any]]:
  """All records of a `MetricsLog` file, in file order (a torn last line is ignored)."""
  records = []
  lines = fileio.read_text(path).split("\n")
  for number, line in enumerate(lines):
    if not line.strip():
      continue
    try:
      records.append(json.loads(line))
    except json.JSONDecodeError:
      if number == len(lines) - 1:  # Unterminated last line: a write was interrupted.
        break
      raise ValueError(f"{path}:{number + 1}: not a JSON line: {line[:80]!r}") from None
  return records


# ------------------------------------------------------------------ progress line
_SHORT_NAMES = {"learning_rate": "lr", "cross_ent_loss": "ce", "accuracy": "acc"}
_FIRST = ("loss", "learning_rate")


def format_duration(seconds: float) -> str:
  """`45s`, `1m10s`, `2h03m`, `3d04h`; `?` for an unknown (non-finite or negative) duration."""
  if not math.isfinite(seconds) or seconds < 0:
    return "?"
  s = int(round(seconds))
  if s < 60:
    return f"{s}s"
  if s < 3600:
    return f"{s // 60}m{s % 60:02d}s"
  if s < 86400:
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"
  return f"{s // 86400}d{(s % 86400) // 3600:02d}h"


def format_count(value: float) -> str:
  """Compact count: `850`, `4.5k`, `12.3M`, `1.2G`."""
  for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
    if abs(value) >= scale:
      return f"{value / scale:.1f}{unit}"
  return f"{value:.0f}"


def format_value(name: str, value: float) -> str:
  """`3.210` for ordinary magnitudes, `1.0e-03` for learning rates and tiny/huge values."""
  if not math.isfinite(value):
    return str(value)
  if name == "learning_rate" or name.endswith("/learning_rate"):
    return f"{value:.1e}"
  if value == 0:
    return "0"
  if 1e-2 <= abs(value) < 1e4:
    return f"{value:.3f}"
  return f"{value:.1e}"


def _short(name: str) -> str:
  if name.startswith("hp/"):
    name = name[3:]
  return _SHORT_NAMES.get(name, name)


class ProgressLine:
  """Prints one human-readable progress line every `log_every` steps.

  Rates are measured over the window since the previous printed line (the first window starts at
  construction); ETA = remaining steps / that window's steps per second.
  """

  def __init__(self, total_steps: int, start_step: int, log_every: int,
               print_fn: Callable[[str], None] = print,
               time_fn: Callable[[], float] = time.monotonic):
    """Args:
      total_steps: the step the run ends at.
      start_step: the step the run (re)starts from.
      log_every: print when the step is a multiple of this, at least this many steps after the
        previous line, or at `total_steps` (>= 1).
      print_fn: receives each line.
      time_fn: clock in seconds (monotonic).
    """
    if log_every < 1:
      raise ValueError(f"log_every must be >= 1, got {log_every}")
    self.total_steps = int(total_steps)
    self.log_every = int(log_every)
    self._print = print_fn
    self._time = time_fn
    self._last_step = int(start_step)
    self._last_time = time_fn()
    self._tokens = 0

  def update(self, step: int, metrics: Mapping[str, float], num_tokens: int = 0) -> str | None:
    """Records that training reached `step`; prints (and returns) a line when one is due.

    Args:
      step: the global step just completed.
      metrics: name -> float shown after the rates (`loss` and `learning_rate` first; keys under
        `timing/` are skipped; `learning_rate` is shown as `lr`, `hp/x` as `x`).
      num_tokens: target tokens processed since the previous `update` call.
    """
    self._tokens += int(num_tokens)
    due = (step % self.log_every == 0 or step >= self.total_steps
           or step - self._last_step >= self.log_every)
    if not due or step <= self._last_step:
      return None
    now = self._time()
    elapsed = now - self._last_time
    steps = step - self._last_step
    steps_per_s = steps / elapsed if elapsed > 0 else float("nan")
    tokens_per_s = self._tokens / elapsed if elapsed > 0 else float("nan")
    remaining = max(0, self.total_steps - step)
    eta = remaining / steps_per_s if steps_per_s > 0 else (0.0 if remaining == 0 else math.nan)
    parts = [f"step {step}/{self.total_steps}",
             f"{steps_per_s:.1f} steps/s" if math.isfinite(steps_per_s) else "? steps/s",
             f"{format_count(tokens_per_s)} tok/s" if math.isfinite(tokens_per_s) else "? tok/s",
             f"ETA {format_duration(eta)}"]
    names = [k for k in _FIRST if k in metrics]
    names += [k for k in metrics if k not in _FIRST and not k.startswith("timing/")]
    parts += [f"{_short(k)} {format_value(k, float(metrics[k]))}" for k in names]
    line = " | ".join(parts)
    self._print(line)
    self._last_step, self._last_time, self._tokens = step, now, 0
    return line


# ------------------------------------------------------------------ plots
def plot_curves(records: Sequence[Mapping[str, Any]], keys: Sequence[str], path_png: str,
                title: str = "") -> None:
  """Writes a PNG with one subplot per key (value against `step`), stacked vertically.

  Records missing a key (or holding None for it) are skipped for that key; a key with no values
  gets an empty subplot saying so. The file is replaced atomically.

  Args:
    records: dicts with an int `step` and float values (e.g. `read_metrics_log`).
    keys: the keys to plot, one subplot each (non-empty).
    path_png: output file (its directory must exist).
    title: figure title.
  """
  if not keys:
    raise ValueError("plot_curves needs at least one key")
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  fig = Figure(figsize=(7, 2.2 * len(keys) + 0.6))
  FigureCanvasAgg(fig)
  axes = fig.subplots(len(keys), 1, sharex=True, squeeze=False)[:, 0]
  for ax, key in zip(axes, keys):
    points = [(r["step"], float(r[key])) for r in records
              if "step" in r and r.get(key) is not None]
    if points:
      steps, values = zip(*sorted(points))
      ax.plot(steps, values, linewidth=1.2, marker="." if len(points) < 50 else None)
    else:
      ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
    ax.set_ylabel(key)
    ax.grid(True, alpha=0.3)
  axes[-1].set_xlabel("step")
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  buffer = io.BytesIO()
  fig.savefig(buffer, format="png", dpi=100)
  fileio.write_bytes(path_png, buffer.getvalue())
