"""notebooks/quickstart.ipynb: stored without outputs, and (slow) runs end to end at a small size.

The slow test executes the notebook with nbclient in a fresh kernel, sized through the
environment variables it documents (a small demo world in a temporary folder, a few steps of a
1+1-layer model), so that the notebook cannot silently rot as the API changes.
"""
from __future__ import annotations

import json
import os
import pathlib
import time

import nbformat
import pytest

NOTEBOOK = pathlib.Path(__file__).resolve().parent.parent / "notebooks" / "quickstart.ipynb"

WORLD_CONFIG = {"num_train": 3000, "num_guide": 200, "num_dev": 40, "num_test": 20,
                "num_mono": 100, "max_target_words": 12}
BINDINGS = ["BATCH_SIZE = 8", "GUIDE_BATCH_SIZE = 8", "HYPER_STEP_EVERY = 1",
            "TASK_FEATURE_LENGTHS = {'inputs': 32, 'targets': 24}",
            "network.T5Config.num_encoder_layers = 1", "network.T5Config.num_decoder_layers = 1",
            "EVAL_STEPS = 1", "INFER_EVAL_EXAMPLES = 8"]
STEPS = 8


def test_notebook_is_stored_without_outputs():
  nb = nbformat.read(NOTEBOOK, as_version=4)
  nbformat.validate(nb)
  code = [c for c in nb.cells if c.cell_type == "code"]
  assert code and all(c.outputs == [] and c.execution_count is None for c in code)
  assert nb.metadata["kernelspec"]["name"] == "python3"


def _text(nb) -> str:
  """All stream and plain-text outputs of the executed notebook, in order."""
  parts = []
  for cell in nb.cells:
    for out in cell.get("outputs", []):
      if out.output_type == "stream":
        parts.append(out.text)
      elif "data" in out and "text/plain" in out.data:
        parts.append(out.data["text/plain"])
  return "\n".join(parts)


@pytest.mark.slow
def test_quickstart_notebook_runs_end_to_end(tmp_path, monkeypatch):
  from nbclient import NotebookClient
  runs = tmp_path / "runs"
  monkeypatch.setenv("GBT_T5X_NOTEBOOK_STEPS", str(STEPS))
  monkeypatch.setenv("GBT_T5X_NOTEBOOK_DIR", str(runs))
  monkeypatch.setenv("GBT_T5X_NOTEBOOK_BINDINGS", "\n".join(BINDINGS))
  monkeypatch.setenv("GBT_T5X_DEMO_DIR", str(tmp_path / "world"))
  monkeypatch.setenv("GBT_T5X_DEMO_CONFIG", json.dumps(WORLD_CONFIG))
  monkeypatch.setenv("XLA_FLAGS", "")  # one CPU device in the kernel (conftest asks for 8 here)
  nb = nbformat.read(NOTEBOOK, as_version=4)
  client = NotebookClient(nb, timeout=600, kernel_name="python3",
                          resources={"metadata": {"path": str(tmp_path)}})
  start = time.monotonic()
  client.execute()
  seconds = time.monotonic() - start
  print(f"quickstart notebook ran in {seconds:.0f} s at {STEPS} steps per run")
  text = _text(nb)
  # The guided run's progress line and the learned values name the noise buckets.
  assert "data_weights/untranslated_copy" in text, text[-3000:]
  assert "untranslated copy" in text and "data_weights: clean" in text
  assert f"trained {STEPS} steps" in text
  assert "replayed run: {'dev loss'" in text and "test BLEU on 8 sentences" in text
  assert text.count("prediction: ") == 4
  images = [o for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
  assert len(images) == 2  # hparams.png and loss_curves.png, inline
  for path in ("guided/hparams.png", "guided/loss_curves.png", "guided/learned_schedule.gin",
               "replay/metrics.jsonl"):
    assert (runs / path).exists(), path
  schedule = (runs / "guided" / "learned_schedule.gin").read_text()
  assert "# data_weights = [clean, misaligned, truncated, untranslated copy]" in schedule
  assert os.path.exists(runs / "replay" / "config.gin")
