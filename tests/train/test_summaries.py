"""TensorBoard scalars, the JSON-lines metrics log, the progress line and PNG plots."""
import glob
import json
import math
import os

import numpy as np
import pytest

from gbt_t5x.train import summaries


def test_summary_writer_events_read_back(tmp_path):
  import tensorflow as tf
  logdir = str(tmp_path / "train")
  writer = summaries.SummaryWriter(logdir)
  writer.scalars(10, {"loss": 3.5, "learning_rate": np.float32(1e-3)})
  writer.scalars(20, {"loss": 2.25})
  writer.flush()
  writer.close()
  values = {}
  for path in glob.glob(os.path.join(logdir, "events.out.tfevents.*")):
    for event in tf.compat.v1.train.summary_iterator(path):
      for value in event.summary.value:
        values[(value.tag, event.step)] = float(tf.make_ndarray(value.tensor))
  assert values == {("loss", 10): 3.5, ("learning_rate", 10): pytest.approx(1e-3),
                    ("loss", 20): 2.25}


def test_disabled_writers_write_nothing(tmp_path):
  writer = summaries.SummaryWriter(str(tmp_path / "tb"), enabled=False)
  writer.scalars(1, {"loss": 1.0})
  writer.flush()
  writer.close()
  log = summaries.MetricsLog(str(tmp_path / "m.jsonl"), enabled=False)
  log.log(1, {"loss": 1.0})
  summaries.SummaryWriter("", enabled=False).scalars(1, {"x": 1})
  assert os.listdir(tmp_path) == []
  with pytest.raises(ValueError, match="logdir"):
    summaries.SummaryWriter("")
  with pytest.raises(ValueError, match="not a scalar"):
    summaries.SummaryWriter(str(tmp_path / "tb")).scalars(1, {"x": "abc"})


def test_metrics_log_round_trip(tmp_path):
  path = str(tmp_path / "sub" / "metrics.jsonl")
  log = summaries.MetricsLog(path)
  log.log(1, {"train/loss": np.float32(2.5), "hp/b1": 0.9})
  log.log(2, {"train/loss": float("nan")})
  records = summaries.read_metrics_log(path)
  assert records[0] == {"step": 1, "train/loss": 2.5, "hp/b1": 0.9}
  assert records[1]["step"] == 2 and math.isnan(records[1]["train/loss"])
  with open(path, "a") as f:
    f.write('{"step": 3, "train/lo')  # a write torn by a crash
  assert len(summaries.read_metrics_log(path)) == 2
  with pytest.raises(ValueError, match="reserved key 'step'"):
    log.log(4, {"step": 1})
  # A resumed run (a new log on the same file) cuts the torn line before appending: every line
  # is a whole record again.
  summaries.MetricsLog(path).log(3, {"train/loss": 1.5})
  with open(path) as f:
    lines = f.read().splitlines()
  assert [json.loads(line)["step"] for line in lines] == [1, 2, 3]


class _FakeClock:
  def __init__(self):
    self.now = 100.0

  def __call__(self):
    return self.now


def test_progress_line_format_and_eta():
  clock, lines = _FakeClock(), []
  progress = summaries.ProgressLine(total_steps=1000, start_step=100, log_every=20,
                                    print_fn=lines.append, time_fn=clock)
  clock.now += 1.0
  assert progress.update(110, {"loss": 9.0}, num_tokens=1000) is None  # not due yet
  clock.now += 1.0
  line = progress.update(120, {"hp/b1": 0.8974, "learning_rate": 1e-3, "loss": 3.2101,
                               "timing/seqs_per_second": 5.0}, num_tokens=3500)
  # 20 steps and 4500 tokens in 2 s; 880 steps left at 10 steps/s = 88 s.
  assert line == ("step 120/1000 | 10.0 steps/s | 2.2k tok/s | ETA 1m28s | loss 3.210 | "
                  "lr 1.0e-03 | b1 0.897")
  assert lines == [line]
  # The next window is measured on its own: 40 steps in 8 s -> 5 steps/s, 840 left -> 168 s.
  clock.now += 8.0
  line = progress.update(160, {"loss": 2.0}, num_tokens=800)
  assert line == "step 160/1000 | 5.0 steps/s | 100 tok/s | ETA 2m48s | loss 2.000"
  # The final step always prints.
  clock.now += 1.0
  assert progress.update(1000, {}, 0).startswith("step 1000/1000 | 840.0 steps/s | 0 tok/s | "
                                                 "ETA 0s")


@pytest.mark.parametrize("seconds, text", [(45, "45s"), (70, "1m10s"), (3600 * 2 + 180, "2h03m"),
                                           (86400 * 3 + 3600 * 4, "3d04h"),
                                           (float("nan"), "?")])
def test_format_duration(seconds, text):
  assert summaries.format_duration(seconds) == text


def test_plot_curves_writes_png(tmp_path):
  records = [{"step": s, "train/loss": 5.0 / (s + 1)} for s in range(0, 100, 10)]
  records += [{"step": s, "train_eval/loss": 1.0, "train/loss": None} for s in (50, 100)]
  path = str(tmp_path / "curves.png")
  summaries.plot_curves(records, ["train/loss", "train_eval/loss", "absent"], path, title="run")
  with open(path, "rb") as f:
    data = f.read()
  assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
  assert os.listdir(tmp_path) == ["curves.png"]  # no temporary file left behind
  with pytest.raises(ValueError, match="at least one key"):
    summaries.plot_curves(records, [], path)


def test_loss_curves_plot_the_decoding_metrics_when_present(tmp_path):
  from gbt_t5x.train import train_lib
  records = [{"step": 10, "train/loss": 3.0, "train/accuracy": 0.2, "train/hp/b1": 0.9},
             {"step": 20, "train_eval/loss": 2.9, "train_eval/accuracy": 0.25},
             {"step": 20, "infer_eval/demo_nmt/bleu": 1.5},
             {"step": 40, "infer_eval/demo_nmt/bleu": 4.0, "infer_eval/other/accuracy": 50.0}]
  assert train_lib.loss_curve_keys(records) == [
      "train/loss", "train_eval/loss", "train/accuracy", "train_eval/accuracy",
      "infer_eval/demo_nmt/bleu", "infer_eval/other/accuracy"]
  # Without an infer-eval (or before its first evaluation) only the losses are plotted.
  assert train_lib.loss_curve_keys(records[:2]) == [
      "train/loss", "train_eval/loss", "train/accuracy", "train_eval/accuracy"]
  assert train_lib.loss_curve_keys([]) == []
  # write_plots puts them in loss_curves.png.
  with open(tmp_path / "metrics.jsonl", "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in records)
  plotted = []
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(train_lib.summaries, "plot_curves",
               lambda recs, keys, path, title="": plotted.append((list(keys), path)))
    train_lib.write_plots(str(tmp_path), object())
  ((keys, path),) = plotted
  assert "infer_eval/demo_nmt/bleu" in keys and path.endswith("loss_curves.png")
