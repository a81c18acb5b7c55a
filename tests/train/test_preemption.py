"""Preemption and exact resume of a guided run, as subprocesses of `python -m gbt_t5x.train`.

* SIGTERM mid-run: the run stops at the next step boundary, saves, exits 75 with a one-line
  `preempted: ...`; rerunning the same command finishes, and the final train state (params,
  optimizer, guided state, counters) and the guided trajectory equal an uninterrupted run bit for
  bit (float32, CPU, shuffled train and guide data).
* kill -9 while a checkpoint is being written (the test watches for orbax's
  `<step>.orbax-checkpoint-tmp` folder and kills the moment it appears), plus a simulated
  cut-short write (a stale tmp folder with partial files next to the good checkpoints): the rerun
  resumes from the last complete checkpoint, redoes the lost steps identically, and ends equal
  to the uninterrupted run.

* MODEL_DIR on `gs://` (a local GCS emulator, `tests/gcs_emulator.py`): SIGTERM, resume and the
  schedule export all on the bucket; the copied-down result equals the uninterrupted local run
  bit for bit.

Every subprocess is bounded by a timeout. All runs share one small demo world.
"""
from __future__ import annotations

import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tests import gcs_emulator
from tests.train.test_cli import DEMO_CONFIG, checkpoint_steps

REPO = pathlib.Path(__file__).resolve().parents[2]
TOTAL = 10
GUIDED_FLAGS = (
    "--gin_file=experiments/demo_nmt_guided_all.gin", f"--gin.TRAIN_STEPS={TOTAL}",
    "--gin.BATCH_SIZE=8", "--gin.GUIDE_BATCH_SIZE=8", "--gin.LOG_EVERY=1",
    "--gin.NUM_EMBEDDINGS=512", "--gin.train_script.train.train_eval_dataset_cfg=None",
    "--gin.train_script.train.infer_eval_dataset_cfg=None", "--gin.BEST_CHECKPOINT_METRIC=None")
TIMEOUT = 300
_STEP_LINE = re.compile(r"^step (\d+)/(\d+) ")


def demo_env(world: pathlib.Path, num_devices: int | None = None) -> dict[str, str]:
  """Environment of a CLI subprocess on `world`, with `num_devices` simulated CPU devices."""
  env = dict(os.environ)
  env.pop("XLA_FLAGS", None)
  for name in ("GBT_T5X_COORDINATOR_ADDRESS", "GBT_T5X_NUM_PROCESSES", "GBT_T5X_PROCESS_ID"):
    env.pop(name, None)
  if num_devices:
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={num_devices}"
  env.update({"GBT_T5X_DEMO_DIR": str(world), "GBT_T5X_DEMO_CONFIG": json.dumps(DEMO_CONFIG),
              "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": "", "JAX_PLATFORMS": "cpu",
              "PYTHONUNBUFFERED": "1"})
  return env


def make_world(tmp_path_factory) -> pathlib.Path:
  """Creates the small demo world once per session (before any subprocess reads it)."""
  from gbt_t5x.data import demo_world
  path = tmp_path_factory.getbasetemp() / "gbt_t5x_small_world"
  demo_world.ensure_demo_world(str(path), **DEMO_CONFIG)
  return path


def cli_argv(model_dir: pathlib.Path, *flags: str) -> list[str]:
  return [sys.executable, "-m", "gbt_t5x.train", *GUIDED_FLAGS,
          f"--gin.MODEL_DIR={str(model_dir)!r}", *flags]


def run(env, model_dir, *flags, timeout=TIMEOUT) -> subprocess.CompletedProcess:
  return subprocess.run(cli_argv(model_dir, *flags), cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=timeout)


def describe(proc) -> str:
  return f"rc={proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"


def saved_state(model_dir: pathlib.Path, step: int) -> dict[str, np.ndarray]:
  """Every leaf of checkpoint `step`'s train state as host numpy, by key path.

  Reads without a target (numpy restore types), so checkpoints written by other device counts or
  by several processes can be compared in this process.
  """
  import jax
  import orbax.checkpoint as ocp
  path = model_dir / "checkpoints" / str(step) / "state"
  ckptr = ocp.PyTreeCheckpointer()
  meta = ckptr.metadata(str(path))
  tree = getattr(meta, "item_metadata", meta)
  tree = getattr(tree, "tree", tree)
  restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
  state = ckptr.restore(str(path), args=ocp.args.PyTreeRestore(restore_args=restore_args))
  flat = jax.tree_util.tree_flatten_with_path(state)[0]
  return {jax.tree_util.keystr(p): np.asarray(leaf) for p, leaf in flat}


def trajectory(model_dir: pathlib.Path) -> dict[int, dict]:
  """guided_trajectory.jsonl by step; rows repeated by a resume must be identical."""
  rows: dict[int, dict] = {}
  with open(model_dir / "guided_trajectory.jsonl") as f:
    for line in f:
      row = json.loads(line)
      if row["step"] in rows:
        assert rows[row["step"]] == row, f"step {row['step']} was redone differently"
      rows[row["step"]] = row
  return rows


def train_losses(model_dir: pathlib.Path) -> dict[int, float]:
  out: dict[int, float] = {}
  with open(model_dir / "metrics.jsonl") as f:
    for line in f:
      rec = json.loads(line)
      if "train/loss" in rec:
        assert out.get(rec["step"], rec["train/loss"]) == rec["train/loss"], rec["step"]
        out[rec["step"]] = rec["train/loss"]
  return out


def assert_states_equal(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
  assert sorted(a) == sorted(b)
  assert any(k.startswith("['guided']") for k in a) and any("params" in k for k in a)
  for key in a:
    assert a[key].dtype == b[key].dtype and a[key].shape == b[key].shape, key
    np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def start(env, model_dir, *flags) -> subprocess.Popen:
  return subprocess.Popen(cli_argv(model_dir, *flags), cwd=REPO, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen, timeout=TIMEOUT) -> tuple[str, str]:
  try:
    return proc.communicate(timeout=timeout)
  except subprocess.TimeoutExpired:
    proc.kill()
    out, err = proc.communicate()
    pytest.fail(f"subprocess hung; killed.\nstdout:\n{out[-3000:]}\nstderr:\n{err[-3000:]}")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
  return demo_env(make_world(tmp_path_factory))


@pytest.fixture(scope="module")
def reference(env, tmp_path_factory):
  """The uninterrupted run (saving every 5 steps)."""
  model_dir = tmp_path_factory.mktemp("reference") / "run"
  proc = run(env, model_dir, "--gin.EVAL_PERIOD=5")
  assert proc.returncode == 0, describe(proc)
  assert checkpoint_steps(model_dir) == [5, TOTAL]
  rows = trajectory(model_dir)
  assert sorted(rows) == list(range(1, TOTAL + 1))
  # The guided values really moved (equality below is not of constants).
  assert rows[TOTAL]["values"]["learning_rate"] != rows[1]["values"]["learning_rate"]
  return model_dir


def assert_equals_reference(model_dir: pathlib.Path, reference: pathlib.Path) -> None:
  assert_states_equal(saved_state(model_dir, TOTAL), saved_state(reference, TOTAL))
  assert trajectory(model_dir) == trajectory(reference)
  assert train_losses(model_dir) == train_losses(reference)


@pytest.mark.slow
def test_sigterm_saves_exits_75_and_resume_equals_uninterrupted(env, reference, tmp_path):
  model_dir = tmp_path / "run"
  proc = start(env, model_dir, "--gin.EVAL_PERIOD=5")
  seen = []
  for line in proc.stdout:  # Unbuffered child: one progress line per step.
    m = _STEP_LINE.match(line)
    if m:
      seen.append(int(m.group(1)))
      proc.send_signal(signal.SIGTERM)
      break
  out, err = finish(proc)
  assert seen, describe(subprocess.CompletedProcess([], proc.returncode, out, err))
  done = subprocess.CompletedProcess([], proc.returncode, out, err)
  assert proc.returncode == 75, describe(done)
  last = [l for l in err.splitlines() if l.strip()][-1]
  m = re.fullmatch(r"preempted: stopped by SIGTERM at step (\d+) after saving a checkpoint; "
                   r"rerun the same command to continue", last)
  assert m, describe(done)
  stopped = int(m.group(1))
  assert seen[0] <= stopped < TOTAL  # Stopped mid-run, at a step boundary after the signal.
  assert "Traceback" not in err
  assert f"preempted (SIGTERM) at step {stopped}: checkpoint saved" in out
  assert checkpoint_steps(model_dir)[-1] == stopped
  assert max(trajectory(model_dir)) == stopped

  again = run(env, model_dir, "--gin.EVAL_PERIOD=5")
  assert again.returncode == 0, describe(again)
  assert f"restored checkpoint step {stopped}" in again.stdout
  assert f"training steps {stopped} -> {TOTAL}" in again.stdout
  assert_equals_reference(model_dir, reference)


@pytest.mark.slow
def test_sigkill_during_checkpoint_write_resumes_from_last_complete(env, reference, tmp_path):
  model_dir = tmp_path / "run"
  ckpt_dir = model_dir / "checkpoints"
  flags = ("--gin.EVAL_PERIOD=2",)  # Saves at 2, 4, 6, 8, 10 (keep=3).
  proc = start(env, model_dir, *flags)
  killed_tmp = None
  deadline = time.monotonic() + TIMEOUT
  # Kill the moment the 2nd save (step 4) has its tmp folder: a write is in progress.
  while proc.poll() is None and time.monotonic() < deadline:
    names = os.listdir(ckpt_dir) if ckpt_dir.is_dir() else []
    tmp = [n for n in names if ".orbax-checkpoint-tmp" in n and not n.startswith("2.")]
    if tmp:
      proc.kill()
      killed_tmp = tmp[0]
      break
    time.sleep(0.0005)
  out, err = finish(proc)
  assert killed_tmp is not None, describe(subprocess.CompletedProcess([], proc.returncode, out,
                                                                      err))
  assert proc.returncode == -signal.SIGKILL
  complete = checkpoint_steps(model_dir)
  assert complete and complete[-1] >= 2
  cut_short = (ckpt_dir / killed_tmp).exists()
  if cut_short:  # The kill landed inside the write: the partial folder is not a checkpoint.
    assert int(killed_tmp.split(".")[0]) not in complete
  # In any case, simulate a write cut short at a later step: partial files, no commit marker.
  stale = ckpt_dir / f"{TOTAL}.orbax-checkpoint-tmp"
  (stale / "state" / "d").mkdir(parents=True, exist_ok=True)
  (stale / "state" / "d" / "partial").write_bytes(b"\x00" * 100)
  resume_from = complete[-1]

  again = run(env, model_dir, *flags)
  assert again.returncode == 0, describe(again)
  assert f"restored checkpoint step {resume_from}" in again.stdout, (cut_short, describe(again))
  assert checkpoint_steps(model_dir)[-1] == TOTAL
  assert not stale.exists()  # orbax replaced the stale partial folder when it saved step 10.
  assert_equals_reference(model_dir, reference)
  print(f"killed during the write of {killed_tmp} (still there after the kill: {cut_short}); "
        f"resumed from step {resume_from}")


@pytest.mark.slow
def test_gcs_model_dir_preempt_resume_and_export_on_the_bucket(env, reference, tmp_path):
  """The whole life of a guided run with MODEL_DIR = gs://BUCKET/run (GCS emulator on 127.0.0.1).

  Orbax's arrays go through tensorstore's GCS driver, everything else (metrics.jsonl, the
  trajectory, PNGs, config.gin, TensorBoard events, run.lock, learned_schedule.gin) through
  `gbt_t5x.fileio` (etils.epath over gcsfs); nothing is written locally.
  """
  with gcs_emulator.running_emulator() as endpoint:
    genv = {**env, **gcs_emulator.env_for(endpoint)}
    model_dir = f"gs://{gcs_emulator.BUCKET}/run"
    proc = start(genv, model_dir, "--gin.EVAL_PERIOD=5")
    for line in proc.stdout:
      if _STEP_LINE.match(line):
        proc.send_signal(signal.SIGTERM)
        break
    out, err = finish(proc)
    done = subprocess.CompletedProcess([], proc.returncode, out, err)
    assert proc.returncode == 75, describe(done)
    stopped = int(re.search(r"preempted \(SIGTERM\) at step (\d+)", out).group(1))
    assert stopped < TOTAL
    fs = gcs_emulator.filesystem(endpoint)
    root = f"{gcs_emulator.BUCKET}/run"
    assert fs.exists(f"{root}/checkpoints/{stopped}/commit_success.txt"), fs.find(root)
    assert not fs.exists(f"{root}/run.lock")  # Released on the preemption exit.

    again = run(genv, model_dir, "--gin.EVAL_PERIOD=5")
    assert again.returncode == 0, describe(again)
    assert f"restored checkpoint step {stopped}" in again.stdout
    exported = subprocess.run([sys.executable, "-m", "gbt_t5x.guided.export", model_dir,
                               "--num_knots=4"], cwd=REPO, env=genv, capture_output=True,
                              text=True, timeout=TIMEOUT)
    assert exported.returncode == 0, describe(exported)
    assert f"wrote {model_dir}/learned_schedule.gin" in exported.stdout
    local = tmp_path / "copy"
    keys = gcs_emulator.download(endpoint, "run", local)

  names = {k.split("/", 2)[2] for k in keys}
  assert {"config.gin", "metrics.jsonl", "guided_trajectory.jsonl", "hparams.png",
          "loss_curves.png", "learned_schedule.gin"} <= names, names
  assert "run.lock" not in names
  assert any(n.startswith("train/events.out.tfevents") for n in names), names
  assert checkpoint_steps(local) == sorted({stopped, 5, TOTAL})
  assert_equals_reference(local, reference)
  from gbt_t5x.guided import export as export_lib
  want = export_lib.export(str(reference), 4, out=str(tmp_path / "reference_schedule.gin"))
  body = lambda path: pathlib.Path(path).read_text().split("\n", 1)[1]  # noqa: E731
  assert body(local / "learned_schedule.gin") == body(want)  # Line 1 names the source dir.
