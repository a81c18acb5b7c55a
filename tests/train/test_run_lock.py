"""One writer per model dir (`MODEL_DIR/run.lock`) and the guide==train refusal.

Unit tests of `run_lock.RunLock` (refusal naming the holder, stale takeover by dead pid or old
heartbeat, heartbeat refresh, release), then CLI runs: a second run on a live run's dir is
refused with one line and changes none of the first run's files (the first is paused with
SIGSTOP while the second tries); a run killed with SIGKILL leaves a stale lock that the restart
takes over, resuming from its checkpoint.
"""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import types

import pytest

from gbt_t5x import errors
from gbt_t5x.train import run_lock
from gbt_t5x.train import train_lib
from tests.train import test_preemption as tp


def _write_lock(model_dir, **fields) -> None:
  now = time.time()
  record = {"host": socket.gethostname(), "pid": os.getpid(), "start_time": now,
            "heartbeat_time": now, "token": "other"}
  record.update(fields)
  os.makedirs(model_dir, exist_ok=True)
  with open(os.path.join(model_dir, run_lock.LOCK_FILE), "w") as f:
    json.dump(record, f)


def _dead_pid() -> int:
  proc = subprocess.Popen([sys.executable, "-c", "pass"])
  proc.wait()
  return proc.pid


def test_lock_records_holder_and_refuses_a_second_run(tmp_path):
  model_dir = str(tmp_path / "run")
  with run_lock.RunLock(model_dir, print_fn=lambda _: None) as lock:
    holder = run_lock.read_holder(model_dir)
    assert holder["host"] == socket.gethostname() and holder["pid"] == os.getpid()
    assert abs(holder["start_time"] - time.time()) < 60 and holder["heartbeat_time"] > 0
    before = open(lock.path).read()
    with pytest.raises(errors.ModelDirInUse) as e:
      run_lock.RunLock(model_dir, print_fn=lambda _: None).acquire()
    message = str(e.value)
    assert "\n" not in message
    assert f"host {socket.gethostname()} pid {os.getpid()} (started " in message
    assert open(lock.path).read() == before
    with pytest.raises(errors.ModelDirInUse):
      run_lock.check_free(model_dir, 600)
  assert not os.path.exists(os.path.join(model_dir, run_lock.LOCK_FILE))  # Released.
  run_lock.check_free(model_dir, 600)


def test_stale_lock_of_a_dead_process_is_taken_over_with_a_line(tmp_path):
  model_dir = str(tmp_path / "run")
  pid = _dead_pid()
  _write_lock(model_dir, pid=pid)
  lines = []
  lock = run_lock.RunLock(model_dir, print_fn=lines.append)
  lock.acquire()
  try:
    assert run_lock.read_holder(model_dir)["pid"] == os.getpid()
    assert len(lines) == 1 and f"pid {pid}" in lines[0] and "is gone" in lines[0], lines
  finally:
    lock.release()


def test_heartbeat_age_decides_for_other_hosts(tmp_path):
  model_dir = str(tmp_path / "run")
  _write_lock(model_dir, host="elsewhere", pid=1, heartbeat_time=time.time() - 5)
  with pytest.raises(errors.ModelDirInUse, match="in use by another run: host elsewhere pid 1"):
    run_lock.RunLock(model_dir, heartbeat_s=1, stale_after_s=60).acquire()
  _write_lock(model_dir, host="elsewhere", pid=1, heartbeat_time=time.time() - 120)
  lines = []
  with run_lock.RunLock(model_dir, heartbeat_s=1, stale_after_s=60, print_fn=lines.append):
    assert "heartbeat is 120s old" in lines[0] or "heartbeat is 121s old" in lines[0], lines


def test_heartbeat_is_refreshed_and_release_keeps_a_lock_taken_by_another(tmp_path):
  model_dir = str(tmp_path / "run")
  lock = run_lock.RunLock(model_dir, heartbeat_s=0.05, stale_after_s=10, print_fn=lambda _: None)
  lock.acquire()
  first = run_lock.read_holder(model_dir)["heartbeat_time"]
  deadline = time.monotonic() + 10
  while run_lock.read_holder(model_dir)["heartbeat_time"] == first:
    assert time.monotonic() < deadline, "heartbeat never refreshed"
    time.sleep(0.02)
  lock._stop.set()  # pylint: disable=protected-access -- freeze the heartbeat thread.
  lock._thread.join()  # pylint: disable=protected-access
  _write_lock(model_dir, host="elsewhere", token="theirs")  # Someone took it over.
  lock.release()
  assert run_lock.read_holder(model_dir)["token"] == "theirs"


def test_disabled_lock_touches_nothing(tmp_path):
  model_dir = tmp_path / "run"
  with run_lock.RunLock(str(model_dir), enabled=False):
    pass
  assert not model_dir.exists()


def test_guide_equal_to_train_is_refused_unless_allowed():
  from gbt_t5x.train import data as data_lib
  train_cfg = data_lib.DatasetConfig(mixture_or_task_name="demo_nmt", split="train",
                                     task_feature_lengths={"inputs": 8, "targets": 8},
                                     batch_size=2, shuffle=False)
  same = types.SimpleNamespace(guide_dataset_cfg=train_cfg)
  with pytest.raises(ValueError) as e:
    train_lib.check_guide_is_not_train(same, train_cfg, allow=False)
  assert "\n" not in str(e.value) and "allow_guide_equals_train" in str(e.value)
  train_lib.check_guide_is_not_train(same, train_cfg, allow=True)
  other_split = types.SimpleNamespace(
      guide_dataset_cfg=data_lib.DatasetConfig(
          mixture_or_task_name="demo_nmt", split="validation",
          task_feature_lengths={"inputs": 8, "targets": 8}, batch_size=2, shuffle=False))
  train_lib.check_guide_is_not_train(other_split, train_cfg, allow=False)
  train_lib.check_guide_is_not_train(types.SimpleNamespace(), train_cfg, allow=False)


# ------------------------------------------------------------------ CLI runs
@pytest.fixture(scope="module")
def env(tmp_path_factory):
  return tp.demo_env(tp.make_world(tmp_path_factory))


def _snapshot(model_dir) -> dict[str, bytes]:
  out = {}
  for root, _, files in os.walk(model_dir):
    for name in files:
      path = os.path.join(root, name)
      with open(path, "rb") as f:
        out[os.path.relpath(path, model_dir)] = f.read()
  return out


@pytest.mark.slow
def test_second_run_on_a_live_dir_is_refused_and_touches_nothing(env, tmp_path):
  model_dir = tmp_path / "run"
  first = tp.start(env, model_dir, "--gin.EVAL_PERIOD=2")
  try:
    for line in first.stdout:  # After step 3, checkpoint 2, metrics and config.gin exist.
      m = tp._STEP_LINE.match(line)  # pylint: disable=protected-access
      if m and int(m.group(1)) >= 3:
        first.send_signal(signal.SIGSTOP)  # Hold it still while the second run tries.
        break
    time.sleep(0.5)
    before = _snapshot(model_dir)
    assert "run.lock" in before and "config.gin" in before and "metrics.jsonl" in before
    second = tp.run(env, model_dir, "--gin.EVAL_PERIOD=2")
    after = _snapshot(model_dir)
  finally:
    first.send_signal(signal.SIGCONT)
  assert second.returncode == 2, tp.describe(second)
  last = [l for l in second.stderr.splitlines() if l.strip()][-1]
  assert re.fullmatch(rf"error: model dir {re.escape(str(model_dir))} is in use by another run: "
                      rf"host {re.escape(socket.gethostname())} pid {first.pid} \(started "
                      r"[-0-9]+ [0-9:]+, heartbeat \d+s ago\); .*", last), last
  assert "Traceback" not in second.stderr
  assert after == before
  out, err = tp.finish(first)
  assert first.returncode == 0, tp.describe(subprocess.CompletedProcess([], first.returncode,
                                                                         out, err))
  assert not (model_dir / "run.lock").exists()


@pytest.mark.slow
def test_killed_run_leaves_a_stale_lock_that_the_restart_takes_over(env, tmp_path):
  model_dir = tmp_path / "run"
  proc = tp.start(env, model_dir, "--gin.EVAL_PERIOD=2")
  for line in proc.stdout:
    m = tp._STEP_LINE.match(line)  # pylint: disable=protected-access
    if m and int(m.group(1)) >= 3:
      proc.kill()
      break
  tp.finish(proc)
  assert proc.returncode == -signal.SIGKILL
  holder = json.loads((model_dir / "run.lock").read_text())
  assert holder["pid"] == proc.pid
  saved = tp.checkpoint_steps(model_dir)
  assert saved and saved[-1] >= 2
  again = tp.run(env, model_dir, "--gin.EVAL_PERIOD=2")
  assert again.returncode == 0, tp.describe(again)
  assert f"taking over the stale run lock of host {socket.gethostname()} pid {proc.pid}" \
      in again.stdout
  assert f"restored checkpoint step {saved[-1]}" in again.stdout
  assert tp.checkpoint_steps(model_dir)[-1] == tp.TOTAL
  assert not (model_dir / "run.lock").exists()
