"""Multi-host training: 2 JAX processes x 2 CPU devices (gloo) equal 1 process x 4 devices.

Premise, checked first and in-process: with unshuffled train and guide data, seqio's per-process
shards (`ShardInfo(index, 2)`: a task with one source shard is split example by example, i.e.
process i reads examples i, i+2, ...) batched at half the global batch size hold, step for step,
exactly the examples of the single-process global batch (in another row order, which does not
change the loss sums up to float reduction order). With shuffling each process shuffles its own
shard, so the global batches differ from a 1-process run; that is T5X's behaviour too, and why the
equality runs below turn shuffling off.

Then a guided tiny-T5 run as 2 processes on 127.0.0.1 is compared (final params, optimizer and
guided state, guided trajectory; tolerances from float32 reduction order, see below) with a
1-process x 4-device run of the same global
batch; only process 0 writes summaries, the trajectory and plots; the 2-process checkpoint is
restored by both processes and the resumed run still matches. Every subprocess has a timeout.
"""
from __future__ import annotations

import dataclasses
import socket
import subprocess

import numpy as np
import pytest

from tests.train.test_cli import checkpoint_steps
from tests.train.test_preemption import (REPO, cli_argv, demo_env, describe, finish, make_world,
                                         saved_state, trajectory)

STEPS = 2
# The demo's LR decays to 0 at TRAIN_STEPS; runs here are extended by raising TRAIN_STEPS, so the
# decay end is pinned to keep one schedule across a resume. Unpacked rows: each process packs its
# own examples, so packed rows (and per-batch data weights) differ between 1 and 2 processes.
# A guided step at every step, so every step's trajectory row carries a guide loss to compare.
# The meta optimizer's epsilon: see the tolerances below.
META_EPS = 1e-3
FLAGS = ("--gin.SHUFFLE_TRAIN_EXAMPLES=False", "--gin.guide/data.DatasetConfig.shuffle=False",
         "--gin.EVAL_PERIOD=2", "--gin.PACK=False", "--gin.HYPER_STEP_EVERY=1",
         "--gin.learning_rate.create_learning_rate_scheduler.total_steps=1000",
         "--gin.META_LEARNING_RATE=3e-3",
         f"--gin.guided_trainer.GuidedTrainer.meta_eps={META_EPS}")
TIMEOUT = 300


@pytest.fixture(scope="module")
def world(tmp_path_factory):
  return make_world(tmp_path_factory)


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def run_two_processes(world, model_dir, *flags) -> list[subprocess.CompletedProcess]:
  """Runs the CLI as processes 0 and 1 of a 2-process job (2 CPU devices each)."""
  port = free_port()
  procs = [subprocess.Popen(
      cli_argv(model_dir, *FLAGS, *flags, f"--coordinator_address=127.0.0.1:{port}",
               "--process_count=2", f"--process_index={i}"),
      cwd=REPO, env=demo_env(world, num_devices=2), stdout=subprocess.PIPE,
      stderr=subprocess.PIPE, text=True) for i in range(2)]
  try:
    results = [finish(p, TIMEOUT) for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.communicate()
  return [subprocess.CompletedProcess([], p.returncode, out, err)
          for p, (out, err) in zip(procs, results)]


def run_one_process(world, model_dir, *flags) -> subprocess.CompletedProcess:
  return subprocess.run(cli_argv(model_dir, *FLAGS, *flags), cwd=REPO,
                        env=demo_env(world, num_devices=4), capture_output=True, text=True,
                        timeout=TIMEOUT)


# ----------------------------------------------------------------------------------------------
# The premise: the same global batch content.

def _rows(batch) -> list[bytes]:
  keys = sorted(batch)
  n = len(batch[keys[0]])
  return sorted(b"".join(np.ascontiguousarray(batch[k][i]).tobytes() for k in keys)
                for i in range(n))


@pytest.mark.parametrize("task", ["demo_nmt", "demo_nmt_guide"])
def test_process_shards_make_the_single_process_global_batch(world, task, monkeypatch):
  import json
  from gbt_t5x.train import data as data_lib
  import gbt_t5x_tasks.demo  # noqa: F401  (registers the tasks)
  from tests.train.test_cli import DEMO_CONFIG
  monkeypatch.setenv("GBT_T5X_DEMO_DIR", str(world))
  monkeypatch.setenv("GBT_T5X_DEMO_CONFIG", json.dumps(DEMO_CONFIG))
  cfg = data_lib.DatasetConfig(task, {"inputs": 64, "targets": 40}, "train", batch_size=8,
                               shuffle=False, seed=0, data_id_feature="noise_bucket")

  def batches(c, shard, shards, n):
    return list(data_lib.get_dataset(c, shard, shards).take(n).as_numpy_iterator())

  # 15 steps: more than one pass over the 100-example guide split (epoch boundary included).
  whole = batches(cfg, 0, 1, 15)
  half = dataclasses.replace(cfg, batch_size=4)  # Each of 2 processes reads half the batch.
  parts = [batches(half, i, 2, 15) for i in range(2)]
  for step in range(15):
    joined = {k: np.concatenate([parts[0][step][k], parts[1][step][k]]) for k in whole[step]}
    assert _rows(joined) == _rows(whole[step]), f"{task} step {step}"
  # Not trivially equal: consecutive global batches differ.
  assert _rows(whole[0]) != _rows(whole[1])

  # With shuffling (same seed on each process) the 2-process global batch is another sample.
  shuffled = dataclasses.replace(cfg, shuffle=True)
  whole = batches(shuffled, 0, 1, 1)[0]
  parts = [batches(dataclasses.replace(shuffled, batch_size=4), i, 2, 1)[0] for i in range(2)]
  joined = {k: np.concatenate([parts[0][k], parts[1][k]]) for k in whole}
  assert _rows(joined) != _rows(whole)


# ----------------------------------------------------------------------------------------------
# 2 processes x 2 devices == 1 process x 4 devices.

@pytest.fixture(scope="module")
def single(world, tmp_path_factory):
  """1 process x 4 devices, 2 * STEPS steps (checkpoints at STEPS and 2 * STEPS)."""
  model_dir = tmp_path_factory.mktemp("single") / "run"
  proc = run_one_process(world, model_dir, f"--gin.TRAIN_STEPS={2 * STEPS}")
  assert proc.returncode == 0, describe(proc)
  assert "mesh {'data': 4, 'model': 1}" in proc.stdout
  assert checkpoint_steps(model_dir) == [STEPS, 2 * STEPS]
  return model_dir


@pytest.fixture(scope="module")
def double(world, tmp_path_factory):
  """2 processes x 2 devices, STEPS steps."""
  model_dir = tmp_path_factory.mktemp("double") / "run"
  results = run_two_processes(world, model_dir, f"--gin.TRAIN_STEPS={STEPS}")
  for r in results:
    assert r.returncode == 0, describe(r)
    assert "mesh {'data': 4, 'model': 1}" in r.stdout  # One global mesh over both processes.
  return model_dir, results


# Tolerances. 1 and 2 processes sum the same float32 terms in another order. Params and the
# optimizer's moments are compared element by element. Hypergradients are sums over every
# parameter entry whose float32 error (~ sqrt(N) 2^-24 of the sum of magnitudes) can be large
# against a component that nearly cancels (a data weight whose bucket barely matters), so they
# are compared through the meta optimizer's moments (mu = sum (1 - b1) b1^k g_k, nu likewise)
# relative to each hyper-parameter's norm. The raw values themselves went through Adam's
# normalised step, META_LR * g / (|g| + META_EPS) per guided step: with Adam's usual 1e-8 a
# hypergradient that is nearly zero (label smoothing at init: its first one is reduction noise)
# moves by anything in (-META_LR, META_LR). With META_EPS = 1e-3 such a component moves by at
# most META_LR * |error| / META_EPS (~ META_LR * 1e-2 here, errors ~ 1e-5), while hypergradients
# of 1e-2 and more still take near-full steps: raw values must agree to 5 % of the meta steps.
META_LR = 3e-3
RAW_TOL_PER_GUIDED_STEP = 0.05 * META_LR
HYPERGRAD_RTOL = 1e-3


def _norm_close(a: np.ndarray, b: np.ndarray, rtol: float, what: str) -> None:
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  assert np.linalg.norm(a - b) <= rtol * np.linalg.norm(b) + 1e-12, (what, a, b)


def assert_close_states(a, b, step):
  assert sorted(a) == sorted(b)
  for key in a:
    assert a[key].shape == b[key].shape and a[key].dtype == b[key].dtype, key
    if key.startswith("['params']"):
      np.testing.assert_allclose(a[key], b[key], rtol=1e-4, atol=1e-5, err_msg=f"{step} {key}")
    elif key.startswith("['guided']['raw']"):
      np.testing.assert_allclose(a[key], b[key], rtol=0, atol=RAW_TOL_PER_GUIDED_STEP * step,
                                 err_msg=f"{step} {key}")
    elif key.startswith("['guided']['meta_opt_state']") and a[key].dtype.kind == "f":
      # nu sums squared hypergradients: a relative error e of g is about 2e of nu.
      rtol = 2 * HYPERGRAD_RTOL if "['nu']" in key else HYPERGRAD_RTOL
      _norm_close(a[key], b[key], rtol, f"{step} {key}")
    elif a[key].dtype.kind in "iu":  # Step and skip counters: exact.
      np.testing.assert_array_equal(a[key], b[key], err_msg=f"{step} {key}")
    else:  # Optimizer moments of summed (not averaged) losses: larger magnitudes.
      # Reordering error of a gradient entry scales with the magnitudes summed into it, not with
      # the entry, so the absolute tolerance scales with the array's largest entry (measured after
      # 2 + 2 steps on a 2-core CPU: up to 8e-5 of it, e.g. 2.9e-4 against 3.5).
      scale = float(np.max(np.abs(b[key]))) if b[key].size else 0.0
      np.testing.assert_allclose(a[key], b[key], rtol=1e-3, atol=5e-4 * max(scale, 0.2),
                                 err_msg=f"{step} {key}")


def assert_close_trajectories(a: dict, b: dict, steps):
  """`a` holds exactly `steps`; `b` (the longer reference) is compared on those steps.

  Row `step` holds the values used by model step `step` (after `step - 1` guided steps) and the
  guide loss at its params (deterministic up to reduction order, like the params).
  """
  assert sorted(a) == list(steps)
  b = {s: r for s, r in b.items() if s in a}
  assert sorted(b) == list(steps)
  for step in steps:
    ra, rb = a[step], b[step]
    assert sorted(ra["values"]) == sorted(rb["values"])
    tol = RAW_TOL_PER_GUIDED_STEP * (step - 1)  # |d value / d raw| <= |value| here (exp, sigmoid)
    for name in ra["values"]:
      np.testing.assert_allclose(ra["values"][name], rb["values"][name], rtol=tol, atol=tol,
                                 err_msg=f"step {step} {name}")
    np.testing.assert_allclose(ra["guide_loss_per_token"], rb["guide_loss_per_token"],
                               rtol=1e-5, err_msg=f"step {step}")


@pytest.mark.slow
def test_two_processes_equal_one_process(single, double):
  model_dir, results = double
  assert checkpoint_steps(model_dir) == [STEPS]
  a, b = saved_state(model_dir, STEPS), saved_state(single, STEPS)
  assert_close_states(a, b, STEPS)
  assert int(a["['step']"]) == STEPS
  # The comparison is not of two inits: the params moved.
  later = saved_state(single, 2 * STEPS)
  assert any(not np.array_equal(b[k], later[k]) for k in b if k.startswith("['params']"))
  assert_close_trajectories(trajectory(model_dir), trajectory(single), range(1, STEPS + 1))

  # Only process 0 wrote summaries, the trajectory and plots (both share the model dir).
  events = list((model_dir / "train").glob("events.out.tfevents.*"))
  assert len(events) == 1, events
  with open(model_dir / "metrics.jsonl") as f:
    steps = [__import__("json").loads(line)["step"] for line in f]
  assert steps == list(range(1, STEPS + 1))  # One line per step, not one per process.
  with open(model_dir / "guided_trajectory.jsonl") as f:
    assert len(f.readlines()) == STEPS
  assert (model_dir / "hparams.png").stat().st_size > 0
  assert (model_dir / "config.gin").is_file()


@pytest.mark.slow
def test_two_process_checkpoint_resumes_across_processes(world, single, double):
  model_dir, _ = double
  results = run_two_processes(world, model_dir, f"--gin.TRAIN_STEPS={2 * STEPS}")
  for r in results:
    assert r.returncode == 0, describe(r)
    assert f"restored checkpoint step {STEPS}" in r.stdout  # Each process read its shards.
    assert f"training steps {STEPS} -> {2 * STEPS}" in r.stdout
  assert checkpoint_steps(model_dir) == [STEPS, 2 * STEPS]
  assert_close_states(saved_state(model_dir, 2 * STEPS), saved_state(single, 2 * STEPS),
                      2 * STEPS)
  assert_close_trajectories(trajectory(model_dir), trajectory(single), range(1, 2 * STEPS + 1))
