"""The bad-input and fault table of issue 40, re-run as a new user would meet each case.

    python scripts/fault_cases.py [--out FILE] [--only SUBSTRING[,SUBSTRING...]] [--jobs 2]
                                  [--work_dir DIR] [--keep] [--show_output]

What: 46 cases a new user tries on tiny demo runs -- SIGTERM, Ctrl-C, SIGKILL, a kill during a
checkpoint write, a full disk and a read-only model dir (real ones: a size-limited tmpfs and a
read-only bind mount in a private mount namespace, `unshare -m`), damaged checkpoint files (4096
flipped bytes in the newest checkpoint's array file, its truncated array / manifest / metadata /
orbax metadata file, its state item removed, every checkpoint damaged; and eval on a damaged
checkpoint), a diverging and a non-finite continuation, typos and impossible values
(`--gin.TRAIN_STEP=20`, META_LEARNING_RATE -0.01 / 1e999 / nan, BATCH_SIZE 0, TRAIN_STEPS below the
checkpoint's step, 0, -5, 'abc'), gin mistakes (missing or broken gin file, unknown parameter,
unquoted string, no MODEL_DIR), a bad task name or module, a missing data dir, a truncated
best/best.json, broken metrics.jsonl lines, run locks, a checkpoint of another model shape, eval /
infer with a bad CHECKPOINT_PATH, and crafted guided_trajectory.jsonl names given to `python -m
gbt_t5x.guided.export`.

Each case runs the real CLIs in subprocesses (`python -m gbt_t5x.train ...`) on a copy of one
tiny plain base run (the small demo world of the tests, batch 8, checkpoints every 5 steps, keep
= 3: checkpoints 5, 10, 15 and best/), and records: the exit code; the number of output lines of
the final error (and whether a traceback is present); the checkpoint steps before and after, each
checked independently of the product (every array read back with orbax and compared with the
CRC-32s saved beside it, every float array finite); the step the run restored; for interrupted
runs, whether the resumed run's train losses equal those of an uninterrupted continuation, bit
for bit. The verdict:
  - `ok`: what a user should see (a clean run, or one line `error: ...` that leaves the model dir
    as it was where the case refuses);
  - `LOST CHECKPOINT`: a checkpoint that verified before the case is gone or broken, and not
    replaced by enough newer good ones (a diverging run must keep its newest good checkpoint);
  - `SILENT WRONG`: exit 0 where the input is wrong, a wrong restore step, different losses after
    a resume, a refused run that changed the model dir, a saved checkpoint that does not verify,
    skipped steps logged as losses, or a case check that failed (see the note);
  - `TRACEBACK WALL`: a traceback, or a failure whose last line is not an `error:` line;
  - `UNEXPECTED ERROR`: a clean one-line refusal of a case that should run, or a refusal that
    does not name its cause (each case's `says`).
The table goes to stdout and to `--out` (default `fault_cases.md` in the work dir); the exit code
is 1 when any verdict is not `ok`.

Why: issue 40's closing note re-runs "the same 46-case table"; this script is that table, so it
can be re-run after any change to checkpointing, resume or input validation.

How long: 11 minutes with `--jobs 2` on a 2-core machine shared with other work (load ~11; 35 with
`--jobs 3` at load ~16): the base run and the reference continuation first, then the cases (a
subprocess start is 15-60 s there; training cases up to a minute or two, the signal and disk
cases run twice). Less on a quiet machine.
Needs Linux; the full-disk and read-only cases need `unshare -m` and `mount` (root), otherwise they
are reported `skipped`. The work dir is a temporary folder, removed at the end unless `--keep` or
`--work_dir` is given; a `--work_dir` that already holds a finished base run (and reference) reuses
them.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import hashlib
import json
import os
import pathlib
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import warnings
import zlib
from typing import Any, Callable

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
# The tests' small demo world (tests/train/test_cli.py): seconds to generate.
DEMO_CONFIG = {"num_train": 400, "num_guide": 100, "num_dev": 64, "num_test": 64, "num_mono": 50,
               "vocab_size": 400}
# Every train run: the demo config made tiny; the learning-rate decay end is pinned so that a
# continuation keeps the schedule; a checkpoint (and a 1-batch eval) every 5 steps, keep = 3.
TRAIN_FLAGS = ("--gin_file=experiments/demo_nmt.gin", "--gin.BATCH_SIZE=8",
               "--gin.NUM_EMBEDDINGS=512", "--gin.EVAL_PERIOD=5", "--gin.EVAL_STEPS=1",
               "--gin.LOG_EVERY=1", "--gin.train_script.train.infer_eval_dataset_cfg=None",
               "--gin.BEST_CHECKPOINT_METRIC='train_eval/loss'",
               "--gin.BEST_CHECKPOINT_MODE='min'",
               "--gin.learning_rate.create_learning_rate_scheduler.total_steps=1000")
GUIDED_FLAGS = ("--gin_file=experiments/demo_nmt_guided.gin", "--gin.GUIDE_BATCH_SIZE=8")
EVAL_FLAGS = ("--gin_file=experiments/demo_nmt_eval.gin", "--gin.NUM_EMBEDDINGS=512",
              "--gin.BATCH_SIZE=8", "--gin.INFER_EVAL_EXAMPLES=8")
INFER_FLAGS = ("--gin_file=experiments/demo_nmt_infer.gin", "--gin.NUM_EMBEDDINGS=512",
               "--gin.BATCH_SIZE=8")
BASE_STEPS, NEXT_STEPS, KEEP = 15, 25, 3
BASE_CHECKPOINTS = [5, 10, 15]
TIMEOUT_S = 900
VERDICTS = ("LOST CHECKPOINT", "SILENT WRONG", "TRACEBACK WALL", "UNEXPECTED ERROR")
# A case the script itself failed on (its exception is the note) is reported "HARNESS ERROR".


# ----------------------------------------------------------------------------------------------
# Running the CLIs

@dataclasses.dataclass
class Run:
  """One finished CLI call: its exit code and its output (stdout and stderr together)."""
  rc: int
  output: str
  seconds: float


class Work:
  """The shared pieces: work dir, environment, demo world, base run and reference losses."""

  def __init__(self, root: pathlib.Path):
    self.root = root
    self.env = dict(os.environ)
    self.env.update({
        "GBT_T5X_DEMO_DIR": str(root / "world"), "GBT_T5X_DEMO_CONFIG": json.dumps(DEMO_CONFIG),
        "JAX_COMPILATION_CACHE_DIR": str(root / "jax_cache"), "TF_CPP_MIN_LOG_LEVEL": "3",
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0.5", "CUDA_VISIBLE_DEVICES": "",
        "JAX_PLATFORMS": "cpu", "PYTHONUNBUFFERED": "1"})
    for name in ("GBT_T5X_COORDINATOR_ADDRESS", "GBT_T5X_NUM_PROCESSES", "GBT_T5X_PROCESS_ID",
                 "GBT_T5X_VERBOSE", "XLA_FLAGS"):
      self.env.pop(name, None)
    self._lock = threading.Lock()
    self._base: pathlib.Path | None = None
    self._reference: dict[int, float] | None = None

  def argv(self, module: str, *flags: str) -> list[str]:
    return [sys.executable, "-m", module, *flags]

  def run(self, argv: list[str]) -> Run:
    """Runs `argv` in the work dir (exit 124 after TIMEOUT_S)."""
    start = time.monotonic()
    try:
      proc = subprocess.run(argv, cwd=self.root, env=self.env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, timeout=TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired as e:
      output = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else e.stdout
      return Run(124, (output or "") + f"\n(timed out after {TIMEOUT_S} s)", TIMEOUT_S)
    return Run(proc.returncode, proc.stdout, time.monotonic() - start)

  def train(self, model_dir: pathlib.Path, *flags: str, base: tuple[str, ...] = TRAIN_FLAGS
            ) -> Run:
    return self.run(self.argv("gbt_t5x.train", *train_flags(model_dir, *flags, base=base)))

  def world(self) -> None:
    with self._lock:
      if not (self.root / "world" / "manifest.json").exists():
        from gbt_t5x.data import demo_world
        demo_world.ensure_demo_world(str(self.root / "world"), **DEMO_CONFIG)

  def base(self) -> pathlib.Path:
    """The base run: BASE_STEPS plain steps, checkpoints BASE_CHECKPOINTS and best/."""
    self.world()
    with self._lock:
      model_dir = self.root / "base" / "run"
      if self._base is None and not (self.root / "base" / "done").exists():
        shutil.rmtree(model_dir.parent, ignore_errors=True)
        run = self.train(model_dir, f"--gin.TRAIN_STEPS={BASE_STEPS}")
        if run.rc != 0 or checkpoint_steps(model_dir) != BASE_CHECKPOINTS:
          raise SystemExit(f"the base run failed (exit {run.rc}, checkpoints "
                           f"{checkpoint_steps(model_dir)}):\n{run.output[-3000:]}")
        (self.root / "base" / "done").write_text("")
      self._base = model_dir
      return self._base

  def reference(self) -> dict[int, float]:
    """Train losses of the base run continued to NEXT_STEPS without interruption."""
    base = self.base()
    with self._lock:
      model_dir = self.root / "reference" / "run"
      if self._reference is None and not (self.root / "reference" / "done").exists():
        shutil.rmtree(model_dir.parent, ignore_errors=True)
        shutil.copytree(base, model_dir, symlinks=True)
        run = self.train(model_dir, f"--gin.TRAIN_STEPS={NEXT_STEPS}")
        if run.rc != 0:
          raise SystemExit(f"the reference continuation failed (exit {run.rc}):\n"
                           f"{run.output[-3000:]}")
        (self.root / "reference" / "done").write_text("")
      self._reference = train_losses(model_dir)
      return self._reference


def train_flags(model_dir: pathlib.Path, *flags: str, base: tuple[str, ...] = TRAIN_FLAGS
                ) -> list[str]:
  return [*base, f"--gin.MODEL_DIR={str(model_dir)!r}", *flags]


def run_with_trigger(work: Work, argv: list[str], fire: Callable[[list[str]], bool],
                     sig: int, poll_s: float = 0.002) -> tuple[Run, bool]:
  """Runs `argv`, sending `sig` once `fire(output lines so far)` is true (polled every
  `poll_s`); returns the run and whether the signal was sent."""
  start = time.monotonic()
  proc = subprocess.Popen(argv, cwd=work.root, env=work.env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
  lines: list[str] = []
  reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
  reader.start()
  sent = False
  while proc.poll() is None and time.monotonic() - start < TIMEOUT_S:
    if not sent and fire(lines):
      proc.send_signal(sig)
      sent = True
    time.sleep(poll_s)
  if proc.poll() is None:
    proc.kill()
  proc.wait()
  reader.join(timeout=10)
  return Run(proc.returncode, "".join(lines), time.monotonic() - start), sent


def in_mount_namespace(work: Work, setup: str, argv: list[str], after: str = "") -> Run:
  """Runs `argv` in a private mount namespace after the shell lines `setup` (mounts), then
  `after` (still inside); the exit code is argv's."""
  script = (f"set -e\n{setup}\nset +e\n{shlex.join(argv)}\nrc=$?\n{after}\nexit $rc\n")
  return work.run(["unshare", "-m", "sh", "-c", script])


def has_mount_namespace() -> bool:
  try:
    probe = subprocess.run(["unshare", "-m", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"],
                           capture_output=True, timeout=30, check=False)
  except (OSError, subprocess.SubprocessError):
    return False
  return probe.returncode == 0


# ----------------------------------------------------------------------------------------------
# Reading a model dir (independently of the product's checkpoint code)

def checkpoint_steps(model_dir: pathlib.Path) -> list[int]:
  ckpt = model_dir / "checkpoints"
  return sorted(int(p.name) for p in ckpt.iterdir() if p.name.isdigit()) if ckpt.is_dir() else []


def _crc32(array: np.ndarray) -> str:
  data = np.ascontiguousarray(array).reshape(-1).view(np.uint8)
  return f"{zlib.crc32(memoryview(data)) & 0xFFFFFFFF:08x}"


def _json_crc32(obj: Any) -> str:
  text = json.dumps(obj, sort_keys=True, separators=(",", ":"))
  return f"{zlib.crc32(text.encode()) & 0xFFFFFFFF:08x}"


def verify_checkpoint(step_dir: pathlib.Path) -> str | None:
  """None when checkpoint `step_dir` reads back whole: every saved array matches a CRC-32 saved
  beside it (as a multiset: no leaf names needed), every float array is finite, and the metadata
  and manifest match theirs; else a short reason."""
  import jax
  import orbax.checkpoint as ocp
  warnings.filterwarnings("ignore", message="Sharding info not provided")
  try:
    sums = json.loads((step_dir / "checksums" / "metadata").read_text())
    for item in ("metadata", "manifest"):
      if _json_crc32(json.loads((step_dir / item / "metadata").read_text())) != sums[item]:
        return f"{item} checksum"
    tree = ocp.PyTreeCheckpointer().restore(str(step_dir / "state"))
  except Exception as e:  # pylint: disable=broad-except
    return f"unreadable ({type(e).__name__})"
  leaves = [np.asarray(x) for x in jax.tree_util.tree_leaves(tree)]
  got: dict[str, int] = {}
  for leaf in leaves:
    got[_crc32(leaf)] = got.get(_crc32(leaf), 0) + 1
    if np.issubdtype(leaf.dtype, np.inexact) and not np.isfinite(leaf).all():
      return "non-finite values"
  for crc in sums["arrays"].values():
    if not got.get(crc):
      return "array checksum"
    got[crc] -= 1
  return None


def params_intact(step_dir: pathlib.Path) -> bool:
  """Whether the params of checkpoint `step_dir` read back equal to their saved CRC-32s (a
  damaged checkpoint may have only its optimizer state damaged, which eval does not read)."""
  import jax
  import orbax.checkpoint as ocp
  warnings.filterwarnings("ignore", message="Sharding info not provided")
  try:
    sums = json.loads((step_dir / "checksums" / "metadata").read_text())
    tree = ocp.PyTreeCheckpointer().restore(str(step_dir / "state"))
  except Exception:  # pylint: disable=broad-except
    return False
  got = sorted(_crc32(np.asarray(x)) for x in jax.tree_util.tree_leaves(tree["params"]))
  return got == sorted(v for k, v in sums["arrays"].items() if k.startswith(".params"))


def checkpoint_health(model_dir: pathlib.Path) -> dict[int, str | None]:
  """{step: None if it verifies, else why not} for every checkpoint step folder."""
  return {s: verify_checkpoint(model_dir / "checkpoints" / str(s))
          for s in checkpoint_steps(model_dir)}


def snapshot(root: pathlib.Path) -> dict[str, tuple[int, str]]:
  """{relative path: (size, sha256)} of every file under `root` (folders with size -1)."""
  if not root.exists():
    return {}
  if root.is_file():
    return {".": (root.stat().st_size, hashlib.sha256(root.read_bytes()).hexdigest())}
  out = {}
  for path in sorted(root.rglob("*")):
    rel = str(path.relative_to(root))
    if path.is_dir():
      out[rel + "/"] = (-1, "")
    elif path.is_file():
      out[rel] = (path.stat().st_size, hashlib.sha256(path.read_bytes()).hexdigest())
  return out


def metrics_records(model_dir: pathlib.Path) -> list[dict[str, Any]]:
  path = model_dir / "metrics.jsonl"
  records = []
  if path.exists():
    for line in path.read_text(errors="replace").splitlines():
      try:
        records.append(json.loads(line))
      except json.JSONDecodeError:
        continue
  return [r for r in records if isinstance(r, dict) and "step" in r]


def train_losses(model_dir: pathlib.Path) -> dict[int, float]:
  """{step: train/loss}, the last record of each step winning (a resumed run repeats steps)."""
  return {int(r["step"]): r["train/loss"] for r in metrics_records(model_dir)
          if "train/loss" in r}


def restored_step(output: str) -> int | None:
  found = re.findall(r"restored checkpoint step (\d+)", output)
  return int(found[-1]) if found else None


def progress_step(lines: list[str]) -> int:
  """The highest step named by a progress line so far (0 if none)."""
  steps = [int(m.group(1)) for line in lines for m in [re.match(r"\s*step (\d+)\b", line)] if m]
  return max(steps, default=0)


# ----------------------------------------------------------------------------------------------
# Damage

def data_files(step_dir: pathlib.Path) -> list[pathlib.Path]:
  """The array data files of a checkpoint's state item (orbax OCDBT `d/` folders), largest
  first."""
  return sorted((p for p in (step_dir / "state").rglob("*") if p.is_file()
                 and p.parent.name == "d"), key=lambda p: -p.stat().st_size)


def flip(path: pathlib.Path, count: int = 4096) -> None:
  """Inverts `count` bytes in the middle of `path`."""
  data = bytearray(path.read_bytes())
  start = max(0, len(data) // 2 - count // 2)
  for i in range(start, min(start + count, len(data))):
    data[i] ^= 0xFF
  path.write_bytes(bytes(data))


def truncate(path: pathlib.Path) -> None:
  os.truncate(path, path.stat().st_size // 2)


def newest(model_dir: pathlib.Path) -> pathlib.Path:
  return model_dir / "checkpoints" / str(checkpoint_steps(model_dir)[-1])


# ----------------------------------------------------------------------------------------------
# Cases

@dataclasses.dataclass
class Outcome:
  """What a case's actions produced."""
  runs: list[Run]
  resume: int | None = None  # The step the final run must restore (None: not checked).
  notes: list[str] = dataclasses.field(default_factory=list)  # Problems found by the case.
  skipped: str = ""


@dataclasses.dataclass
class Case:
  """One row of the table.

  Attributes:
    name: the case's name (`--only` matches it).
    command: what the user typed, in short.
    act: runs the case on `model_dir` (a copy of the base run when `base`).
    expect: 'ok' (exit 0), 'error' (one line, exit 2), 'either' (one of those), 'preempt'
      (exit 75, then the rerun exit 0), 'killed' (killed, then the rerun exit 0) or 'error then
      ok' (one line, then the rerun with the cause removed exit 0).
    base: start from a copy of the base run (else from nothing).
    prepare: changes the model dir before the 'before' snapshot (damages the copy, writes a
      file); returns the checkpoint steps it damaged, which no longer count as good.
    resume: the step the final run must restore.
    keep_newest: the newest good checkpoint must survive (a diverging run saves nothing good).
    same_losses: the final losses must equal the uninterrupted reference continuation's.
    unchanged: a refusal must leave the model dir as it was (default: when expect is 'error').
    world: the case needs the demo world (every case but the export ones).
    says: text the output must hold (the refusal names the cause), if any.
  """
  name: str
  command: str
  act: Callable[[Work, pathlib.Path], Outcome]
  expect: str = "ok"
  base: bool = True
  prepare: Callable[[pathlib.Path], list[int]] | None = None
  resume: int | None = None
  keep_newest: bool = False
  same_losses: bool = False
  unchanged: bool | None = None
  world: bool = True
  says: str = ""


def train_case(*flags: str, base: tuple[str, ...] = TRAIN_FLAGS
               ) -> Callable[[Work, pathlib.Path], Outcome]:
  return lambda work, model_dir: Outcome([work.train(model_dir, *flags, base=base)])


def damage_newest(fn: Callable[[pathlib.Path], None]) -> Callable[[pathlib.Path], list[int]]:
  def damage(model_dir: pathlib.Path) -> list[int]:
    fn(newest(model_dir))
    return [checkpoint_steps(model_dir)[-1]]
  return damage


def damage_all(model_dir: pathlib.Path) -> list[int]:
  for step in checkpoint_steps(model_dir):
    flip(data_files(model_dir / "checkpoints" / str(step))[0])
  return checkpoint_steps(model_dir)


def signal_case(sig: int, when: str) -> Callable[[Work, pathlib.Path], Outcome]:
  """Continues the base run to NEXT_STEPS, sends `sig` (`when`: 'running' -- at step 17; 'after
  20' -- once checkpoint 20 is saved and step 22 done; 'writing' -- while a checkpoint's
  temporary folder exists), then reruns the same command."""
  def act(work: Work, model_dir: pathlib.Path) -> Outcome:
    work.reference()
    ckpt = model_dir / "checkpoints"

    def fire(lines: list[str]) -> bool:
      if when == "running":
        return progress_step(lines) >= BASE_STEPS + 2
      if when == "after 20":
        return progress_step(lines) >= 22 and (ckpt / "20").is_dir()
      return ckpt.is_dir() and any("tmp" in p for p in os.listdir(ckpt))

    argv = work.argv("gbt_t5x.train", *train_flags(model_dir, f"--gin.TRAIN_STEPS={NEXT_STEPS}"))
    first, sent = run_with_trigger(work, argv, fire, sig)
    notes = [] if sent else [f"the signal was never sent ({when})"]
    health = checkpoint_health(model_dir)
    good = [s for s, why in health.items() if why is None]
    second = work.train(model_dir, f"--gin.TRAIN_STEPS={NEXT_STEPS}")
    return Outcome([first, second], resume=good[-1] if good else None, notes=notes)
  return act


def full_disk_act(work: Work, model_dir: pathlib.Path) -> Outcome:
  """A tmpfs just larger than the base run (half a checkpoint free) mounted on the model dir's
  folder; the continuation fills it. The files left are copied out and the same command is
  rerun with space (the same MODEL_DIR path)."""
  work.reference()
  disk, stage = model_dir.parent, model_dir.parent.parent / "stage"
  shutil.copytree(model_dir, stage / "run", symlinks=True)
  used = sum(p.stat().st_size for p in model_dir.rglob("*") if p.is_file())
  ckpt_size = sum(p.stat().st_size for p in newest(model_dir).rglob("*") if p.is_file())
  size_k = (used + len(list(model_dir.rglob("*"))) * 4096 + ckpt_size // 2) // 1024 + 64
  argv = work.argv("gbt_t5x.train", *train_flags(model_dir, f"--gin.TRAIN_STEPS={NEXT_STEPS}"))
  setup = (f"mount -t tmpfs -o size={size_k}k tmpfs {shlex.quote(str(disk))}\n"
           f"cp -a {shlex.quote(str(stage / 'run'))} {shlex.quote(str(disk))}/")
  after = (f"rm -rf {shlex.quote(str(stage / 'run'))}\n"
           f"cp -a {shlex.quote(str(model_dir))} {shlex.quote(str(stage))}/")
  first = in_mount_namespace(work, setup, argv, after)
  shutil.rmtree(model_dir)
  shutil.copytree(stage / "run", model_dir, symlinks=True)
  notes = []
  if first.rc == 0:
    notes.append(f"the continuation did not fill the {size_k} KiB disk")
  health = checkpoint_health(model_dir)
  good = [s for s, why in health.items() if why is None]
  if good[-1:] != [BASE_STEPS] and first.rc != 0:
    notes.append(f"after the full disk the checkpoints are {health}")
  second = work.train(model_dir, f"--gin.TRAIN_STEPS={NEXT_STEPS}")
  return Outcome([first, second], resume=good[-1] if good else None, notes=notes)


def read_only_act(work: Work, model_dir: pathlib.Path) -> Outcome:
  """The copied run continued on a read-only bind mount of its model dir."""
  argv = work.argv("gbt_t5x.train", *train_flags(model_dir, f"--gin.TRAIN_STEPS={NEXT_STEPS}"))
  q = shlex.quote(str(model_dir))
  return Outcome([in_mount_namespace(work, f"mount --bind {q} {q}\n"
                                     f"mount -o remount,bind,ro {q}", argv)])


def diverging_act(work: Work, model_dir: pathlib.Path) -> Outcome:
  """LR 1e6 with a checkpoint and eval every 2 steps (the issue's LR 1e6, EVAL_PERIOD 20 on
  checkpoints every 100): the newest checkpoint before the divergence (15) must stay, and no
  skipped step may be logged as a loss."""
  run = work.train(model_dir, f"--gin.TRAIN_STEPS={NEXT_STEPS}", "--gin.EVAL_PERIOD=2",
                   "--gin.learning_rate.create_learning_rate_scheduler.base_learning_rate=1e6")
  notes = [f"step {r['step']} logged train/loss {r['train/loss']} (a skipped step?)"
           for r in metrics_records(model_dir)
           if r["step"] > BASE_STEPS and r.get("train/loss") == 0.0][:1]
  if run.rc == 0 and "warning" not in run.output:
    notes.append("exit 0 without a warning after training at LR 1e6")
  # The checkpoint the run calls good must be of the model before the divergence: its eval
  # accuracy (the eval at the same step) is not 0.
  kept = re.findall(r"checkpoint step (\d+) \(the last before step \d+\) is kept", run.output)
  accuracy = {int(m[0]): float(m[1])
              for m in re.findall(r"eval step (\d+): loss \S+ accuracy (\S+)", run.output)}
  for step in map(int, kept):
    if accuracy.get(step) == 0.0:
      notes.append(f"checkpoint {step}, saved after the first LR-1e6 update (eval accuracy 0.0), "
                   "is kept and named as the last known good one")
  return Outcome([run], resume=BASE_STEPS, notes=notes)


def nonfinite_act(work: Work, model_dir: pathlib.Path) -> Outcome:
  run = work.train(model_dir, f"--gin.TRAIN_STEPS={NEXT_STEPS}",
                   "--gin.trainer.Trainer.max_nonfinite_steps=3",
                   "--gin.learning_rate.create_learning_rate_scheduler.base_learning_rate=1e30")
  notes = []
  if f"newest checkpoint is step {BASE_STEPS}" not in run.output:
    notes.append(f"the stop message does not name checkpoint {BASE_STEPS} as the newest good one")
  if any(r["step"] > BASE_STEPS and "train/loss" in r for r in metrics_records(model_dir)):
    notes.append("skipped steps logged with a train/loss")
  return Outcome([run], resume=BASE_STEPS, notes=notes)


def corrupt_fallback_act(work: Work, model_dir: pathlib.Path) -> Outcome:
  """The continuation after the newest checkpoint was damaged: it must say so, fall back to the
  previous one, keep the damaged one aside and reach the reference's losses."""
  work.reference()
  run = work.train(model_dir, f"--gin.TRAIN_STEPS={NEXT_STEPS}")
  notes = []
  if run.rc == 0 and "warning" not in run.output:
    notes.append("no warning about the damaged checkpoint")
  if run.rc == 0 and not (model_dir / "corrupt_checkpoints").is_dir():
    notes.append("the damaged checkpoint was not kept in corrupt_checkpoints/")
  return Outcome([run], resume=BASE_CHECKPOINTS[-2], notes=notes)


def truncate_best_json(model_dir: pathlib.Path) -> list[int]:
  truncate(model_dir / "best" / "best.json")
  return []


def best_json_act(work: Work, model_dir: pathlib.Path) -> Outcome:
  run = work.train(model_dir, f"--gin.TRAIN_STEPS={NEXT_STEPS}")
  notes = [] if run.rc == 0 or "best.json" in last_line(run.output) else [
      "the error does not name best/best.json"]
  return Outcome([run], notes=notes)


def break_metrics(kind: str) -> Callable[[pathlib.Path], list[int]]:
  """Cuts metrics.jsonl's first line short ('first'), or tears its last line as a killed run
  leaves it ('last')."""
  def prepare(model_dir: pathlib.Path) -> list[int]:
    path = model_dir / "metrics.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    if kind == "first":
      lines[0] = lines[0][:10] + "\n"
    else:
      lines[-1] = lines[-1][:10]
    path.write_text("".join(lines))
    return []
  return prepare


def metrics_act(kind: str) -> Callable[[Work, pathlib.Path], Outcome]:
  def act(work: Work, model_dir: pathlib.Path) -> Outcome:
    run = work.train(model_dir, f"--gin.TRAIN_STEPS={NEXT_STEPS - 5}")
    notes = []
    if run.rc == 0 and kind == "first":
      notes.append("a broken metrics.jsonl line was accepted")
    lines = (model_dir / "metrics.jsonl").read_text().splitlines()
    glued = [i + 1 for i, line in enumerate(lines) if line.count('{"step"') > 1]
    if glued:
      notes.append(f"metrics.jsonl line {glued[0]}: a new record was appended to the torn line")
    return Outcome([run], notes=notes)
  return act


def write_lock(live: bool) -> Callable[[pathlib.Path], list[int]]:
  """A run.lock of a live process on this host (this script), or of one that has exited."""
  def prepare(model_dir: pathlib.Path) -> list[int]:
    if live:
      pid = os.getpid()
    else:
      dead = subprocess.Popen(["true"])
      dead.wait()
      pid = dead.pid
    now = time.time()
    (model_dir / "run.lock").write_text(json.dumps({
        "host": socket.gethostname(), "pid": pid, "start_time": now - 60, "heartbeat_time": now,
        "token": "f" * 32}))
    return []
  return prepare


def lock_act(live: bool) -> Callable[[Work, pathlib.Path], Outcome]:
  def act(work: Work, model_dir: pathlib.Path) -> Outcome:
    run = work.train(model_dir, f"--gin.TRAIN_STEPS={BASE_STEPS}")
    notes = []
    if not live and run.rc == 0 and "taking over" not in run.output:
      notes.append("the stale lock was taken over without a line")
    return Outcome([run], resume=BASE_STEPS if not live else None, notes=notes)
  return act


def meta_lr_case(value: str) -> Callable[[Work, pathlib.Path], Outcome]:
  return train_case(f"--gin.META_LEARNING_RATE={value}", "--gin.TRAIN_STEPS=4",
                    base=TRAIN_FLAGS + GUIDED_FLAGS)


def _trajectory(names: list[str], entry_names: dict[str, list[str]] | None = None) -> str:
  rows = []
  for step in range(1, 9):
    row: dict[str, Any] = {"step": step, "values": {n: 1.0 + 0.01 * step for n in names}}
    if entry_names:
      row["values"] = {n: [1.0, 0.5] for n in names}
      row["entry_names"] = entry_names
    rows.append(json.dumps(row))
  return "\n".join(rows) + "\n"


INJECTED = "include '/tmp/evil.gin'"


def write_trajectory(trajectory: str) -> Callable[[pathlib.Path], list[int]]:
  def prepare(model_dir: pathlib.Path) -> list[int]:
    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / "guided_trajectory.jsonl").write_text(trajectory)
    return []
  return prepare


def export_act(work: Work, model_dir: pathlib.Path) -> Outcome:
  """`python -m gbt_t5x.guided.export MODEL_DIR`; a gin line injected into the schedule is a
  problem."""
  run = work.run(work.argv("gbt_t5x.guided.export", str(model_dir)))
  notes = []
  out = model_dir / "learned_schedule.gin"
  if out.exists():
    bad = [l for l in out.read_text().splitlines()
           if l.strip().startswith("include")]
    if bad:
      notes.append(f"injected gin line written: {bad[0][:80]!r}")
  return Outcome([run], notes=notes)


def eval_case(path: Callable[[pathlib.Path], str], module: str = "gbt_t5x.eval"
              ) -> Callable[[Work, pathlib.Path], Outcome]:
  def act(work: Work, model_dir: pathlib.Path) -> Outcome:
    flags = EVAL_FLAGS if module == "gbt_t5x.eval" else INFER_FLAGS
    out_macro = "EVAL_OUTPUT_DIR" if module == "gbt_t5x.eval" else "INFER_OUTPUT_DIR"
    out_dir = model_dir.parent / "out"
    run = work.run(work.argv(module, *flags, f"--gin.CHECKPOINT_PATH={path(model_dir)!r}",
                             f"--gin.{out_macro}={str(out_dir)!r}"))
    notes = []
    steps = checkpoint_steps(model_dir) if model_dir.is_dir() else []
    if (run.rc == 0 and steps and "warning" not in run.output
        and not params_intact(model_dir / "checkpoints" / str(steps[-1]))):
      notes.append("scored damaged params without a word")
    return Outcome([run], notes=notes)
  return act


def shape_case(work: Work, model_dir: pathlib.Path) -> Outcome:
  return Outcome([work.train(model_dir, f"--gin.TRAIN_STEPS={NEXT_STEPS}",
                             "--gin.NUM_EMBEDDINGS=640")])


def gin_file_case(text: str | None, name: str) -> Callable[[Work, pathlib.Path], Outcome]:
  """A train run with a user gin file `name` holding `text` (None: the file does not exist)."""
  def act(work: Work, model_dir: pathlib.Path) -> Outcome:
    path = model_dir.parent / name
    if text is not None:
      path.write_text(text)
    return Outcome([work.train(model_dir, f"--gin_file={path}", "--gin.TRAIN_STEPS=4")])
  return act


def no_model_dir_case(work: Work, model_dir: pathlib.Path) -> Outcome:
  return Outcome([work.run(work.argv("gbt_t5x.train", *TRAIN_FLAGS, "--gin.TRAIN_STEPS=4"))])


def write_file(model_dir: pathlib.Path) -> list[int]:
  model_dir.write_text("not a folder\n")
  return []


def model_dir_is_file_case(work: Work, model_dir: pathlib.Path) -> Outcome:
  return Outcome([work.train(model_dir, "--gin.TRAIN_STEPS=4")])


def missing_data_dir_case(work: Work, model_dir: pathlib.Path) -> Outcome:
  return Outcome([work.train(model_dir, "--gin.TRAIN_STEPS=4",
                             f"--tfds_data_dir={model_dir.parent / 'no_such_tfds'}")])


def flip_newest_array(step_dir: pathlib.Path) -> None:
  flip(data_files(step_dir)[0])


def truncate_item(relative: str) -> Callable[[pathlib.Path], None]:
  return lambda step_dir: truncate(step_dir / relative)


def remove_state(step_dir: pathlib.Path) -> None:
  shutil.rmtree(step_dir / "state")


def truncate_newest_array(step_dir: pathlib.Path) -> None:
  truncate(data_files(step_dir)[0])


S = f"--gin.TRAIN_STEPS={NEXT_STEPS}"
CASES = [
    # Interruptions and the disk: resume from the right step, equal losses.
    Case("plain_continuation", f"train {S} (the control)", train_case(S), resume=BASE_STEPS,
         same_losses=True),
    Case("sigterm", f"train {S}; SIGTERM at step 17; rerun", signal_case(signal.SIGTERM,
         "running"), expect="preempt", same_losses=True),
    Case("ctrl_c", f"train {S}; SIGINT at step 17; rerun", signal_case(signal.SIGINT, "running"),
         expect="preempt", same_losses=True),
    Case("sigkill", f"train {S}; SIGKILL at step 22; rerun",
         signal_case(signal.SIGKILL, "after 20"), expect="killed", same_losses=True),
    Case("kill_during_checkpoint_write", f"train {S}; SIGKILL while a checkpoint is written; rerun",
         signal_case(signal.SIGKILL, "writing"), expect="killed", same_losses=True),
    Case("full_disk", f"train {S} on a full tmpfs; rerun with space", full_disk_act,
         expect="error then ok", same_losses=True, says='no space'),
    Case("read_only_model_dir", f"train {S} on a read-only mount", read_only_act, expect="error",
         says='read-only'),
    Case("model_dir_is_a_file", "train MODEL_DIR=<a file>", model_dir_is_file_case,
         expect="error", base=False, prepare=write_file),
    # Damaged checkpoints: fall back to the newest that verifies, keep the damaged one aside.
    Case("flip_4096_bytes_newest_array", f"flip 4096 bytes of ckpt 15's array file; train {S}",
         corrupt_fallback_act, prepare=damage_newest(flip_newest_array), same_losses=True),
    Case("truncate_newest_array", f"truncate ckpt 15's array file; train {S}",
         corrupt_fallback_act, prepare=damage_newest(truncate_newest_array), same_losses=True),
    Case("truncate_newest_manifest", f"truncate ckpt 15's manifest; train {S}",
         corrupt_fallback_act, prepare=damage_newest(truncate_item("manifest/metadata")),
         same_losses=True),
    Case("truncate_newest_metadata", f"truncate ckpt 15's metadata; train {S}",
         corrupt_fallback_act, prepare=damage_newest(truncate_item("metadata/metadata")),
         same_losses=True),
    Case("truncate_newest_orbax_metadata", f"truncate ckpt 15's state/_METADATA; train {S}",
         corrupt_fallback_act, prepare=damage_newest(truncate_item("state/_METADATA")),
         same_losses=True),
    Case("remove_newest_state", f"rm -r ckpt 15's state/; train {S}", corrupt_fallback_act,
         prepare=damage_newest(remove_state), same_losses=True),
    Case("every_checkpoint_flipped", f"flip 4096 bytes in every checkpoint; train {S}",
         train_case(S), expect="error", prepare=damage_all, says='verifies'),
    # Divergence and non-finite steps: the last good checkpoint stays.
    Case("diverging_lr_1e6", f"train {S} EVAL_PERIOD=2 LR 1e6 (keep=3)", diverging_act,
         expect="either", keep_newest=True, unchanged=False),
    Case("nonfinite_lr_1e30", f"train {S} LR 1e30 max_nonfinite_steps=3", nonfinite_act,
         expect="error", keep_newest=True, unchanged=False),
    # Typos and impossible values.
    Case("misspelled_macro", "train --gin.TRAIN_STEP=20", train_case("--gin.TRAIN_STEP=20"),
         expect="error", says='TRAIN_STEP'),
    Case("train_steps_below_checkpoint", "train TRAIN_STEPS=10 on a run at 15",
         train_case("--gin.TRAIN_STEPS=10"), expect="error", says='below'),
    Case("train_steps_zero", "train TRAIN_STEPS=0", train_case("--gin.TRAIN_STEPS=0"),
         expect="error", base=False),
    Case("train_steps_negative", "train TRAIN_STEPS=-5", train_case("--gin.TRAIN_STEPS=-5"),
         expect="error", base=False),
    Case("train_steps_string", "train TRAIN_STEPS='abc'",
         train_case("--gin.TRAIN_STEPS='abc'"), expect="error", base=False),
    Case("batch_size_zero", "train BATCH_SIZE=0", train_case("--gin.TRAIN_STEPS=4",
         "--gin.BATCH_SIZE=0"), expect="error", base=False, says='BATCH_SIZE'),
    Case("meta_lr_negative", "guided train META_LEARNING_RATE=-0.01", meta_lr_case("-0.01"),
         expect="error", base=False, says='META_LEARNING_RATE'),
    Case("meta_lr_1e999", "guided train META_LEARNING_RATE=1e999", meta_lr_case("1e999"),
         expect="error", base=False, says='META_LEARNING_RATE'),
    Case("meta_lr_nan", "guided train META_LEARNING_RATE=nan", meta_lr_case("nan"),
         expect="error", base=False, says='META_LEARNING_RATE'),
    Case("guide_task_is_train_task", "guided train GUIDE_MIXTURE_OR_TASK_NAME='demo_nmt'",
         train_case("--gin.TRAIN_STEPS=4", "--gin.GUIDE_MIXTURE_OR_TASK_NAME='demo_nmt'",
                    "--gin.GUIDE_SPLIT='train'", base=TRAIN_FLAGS + GUIDED_FLAGS),
         expect="error", base=False, says='guide'),
    # Gin and flag mistakes.
    Case("unknown_gin_parameter", "train --gin.train_script.train.total_step=4",
         train_case("--gin.train_script.train.total_step=4"), expect="error", base=False,
         says='total_step'),
    Case("missing_gin_file", "train --gin_file=my_experiment.gin (absent)",
         gin_file_case(None, "my_experiment.gin"), expect="error", base=False,
         says='my_experiment.gin'),
    Case("gin_file_syntax_error", "train --gin_file=broken.gin (unclosed paren)",
         gin_file_case("TRAIN_STEPS = (3\n", "broken.gin"), expect="error", base=False,
         says='broken.gin'),
    Case("unquoted_string", "train --gin.MIXTURE_OR_TASK_NAME=demo_nmt (no quotes)",
         train_case("--gin.TRAIN_STEPS=4", "--gin.MIXTURE_OR_TASK_NAME=demo_nmt"),
         expect="error", base=False, says='demo_nmt'),
    Case("no_model_dir", "train without MODEL_DIR", no_model_dir_case, expect="error",
         base=False, says='MODEL_DIR'),
    Case("bad_task_name", "train MIXTURE_OR_TASK_NAME='demo_nmtt'",
         train_case("--gin.TRAIN_STEPS=4", "--gin.MIXTURE_OR_TASK_NAME='demo_nmtt'"),
         expect="error", base=False, says='demo_nmtt'),
    Case("bad_task_module", "train MIXTURE_OR_TASK_MODULE='gbt_t5x_tasks.demoo'",
         train_case("--gin.TRAIN_STEPS=4", "--gin.MIXTURE_OR_TASK_MODULE='gbt_t5x_tasks.demoo'"),
         expect="error", base=False, says='demoo'),
    Case("missing_data_dir", "train --tfds_data_dir=<absent>", missing_data_dir_case,
         expect="error", base=False, says='no_such_tfds'),
    # Files of an existing run.
    Case("other_model_shape", f"train {S} NUM_EMBEDDINGS=640 on the run", shape_case,
         expect="error", says='shape'),
    Case("best_json_truncated", f"truncate best/best.json; train {S}", best_json_act,
         expect="error", prepare=truncate_best_json),
    Case("metrics_first_line_broken", "break metrics.jsonl line 1; train TRAIN_STEPS=20",
         metrics_act("first"), expect="error", prepare=break_metrics("first")),
    Case("metrics_last_line_torn", "tear metrics.jsonl's last line; train TRAIN_STEPS=20",
         metrics_act("last"), resume=BASE_STEPS, prepare=break_metrics("last")),
    Case("live_run_lock", f"train TRAIN_STEPS={BASE_STEPS} while a live run holds run.lock",
         lock_act(live=True), expect="error", prepare=write_lock(live=True), says='in use'),
    Case("stale_run_lock", f"train TRAIN_STEPS={BASE_STEPS} after a killed run's lock",
         lock_act(live=False), unchanged=False, prepare=write_lock(live=False)),
    # Export, eval, infer.
    Case("export_crafted_name", "export a trajectory naming \"x = 1\\ninclude '/tmp/evil.gin'\"",
         export_act, expect="error", base=False, world=False,
         prepare=write_trajectory(_trajectory([f"learning_rate = 1\n{INJECTED}\n#"])),
         says='unknown hyper-parameter'),
    Case("export_crafted_entry_name", "export a trajectory whose entry name holds a gin line",
         export_act, expect="either", base=False, unchanged=False, world=False,
         prepare=write_trajectory(_trajectory(["data_weights"],
                                              {"data_weights": [f"a'\n{INJECTED}\n#", "b"]}))),
    Case("eval_missing_checkpoint", "eval CHECKPOINT_PATH=<absent>",
         eval_case(lambda d: str(d / "no_such_run")), expect="error", base=False,
         says='no_such_run'),
    Case("eval_corrupt_newest", "flip ckpt 15's array file; eval CHECKPOINT_PATH=<run>",
         eval_case(str), expect="either", prepare=damage_newest(flip_newest_array),
         unchanged=False),
    Case("infer_missing_step", "infer CHECKPOINT_PATH=<run>/checkpoints/999",
         eval_case(lambda d: str(d / "checkpoints" / "999"), "gbt_t5x.infer"), expect="error",
         says='999'),
]


# ----------------------------------------------------------------------------------------------
# Judging

ERROR_LINE = re.compile(r"^(\S+: )?error: ")


def nonempty_lines(output: str) -> list[str]:
  return [l for l in output.splitlines() if l.strip()]


def last_line(output: str) -> str:
  lines = nonempty_lines(output)
  return lines[-1] if lines else ""


def failure_lines(output: str) -> int:
  """Lines of a failure: from its first traceback or `error:`/`usage:` line to the end."""
  lines = nonempty_lines(output)
  for i, line in enumerate(lines):
    if (line.startswith(("Traceback", "usage:")) or ERROR_LINE.match(line)
        or re.match(r"^\w+(Error|Exception)\b", line)):
      return len(lines) - i
  return 0


@dataclasses.dataclass
class Row:
  case: Case
  exits: str
  lines: str
  before: str
  after: str
  verdict: str
  note: str
  output: str
  seconds: float


def steps_text(health: dict[int, str | None], damaged: list[int]) -> str:
  parts = []
  for step, why in health.items():
    parts.append(f"{step}" + ("" if why is None else "!" if step in damaged else f"!({why})"))
  return "[" + " ".join(parts) + "]" if parts else "[]"


def judge(case: Case, outcome: Outcome, steps_before: list[int], good_before: list[int],
          health_after: dict[int, str | None], changed: bool,
          reference: dict[int, float] | None, model_dir: pathlib.Path) -> tuple[str, list[str]]:
  """The verdict and the notes explaining it."""
  final = outcome.runs[-1]
  problems: dict[str, list[str]] = {v: [] for v in VERDICTS}
  good_after = [s for s, why in health_after.items() if why is None]
  # Lost checkpoints.
  for step in good_before:
    if step not in good_after:
      newer = [s for s in good_after if s > step]
      if len(newer) < KEEP or (case.keep_newest and step == good_before[-1]):
        problems["LOST CHECKPOINT"].append(f"good checkpoint {step} is gone or broken")
  if case.keep_newest and good_before and good_before[-1] not in good_after:
    if not problems["LOST CHECKPOINT"]:
      problems["LOST CHECKPOINT"].append(f"the last good checkpoint {good_before[-1]} is gone")
  # Exit codes.
  codes = [r.rc for r in outcome.runs]
  expect = case.expect
  if expect == "error" and final.rc == 0:
    problems["SILENT WRONG"].append("exit 0 on input that is wrong")
  if expect in ("ok", "preempt", "killed", "error then ok") and final.rc not in (0,):
    (problems["UNEXPECTED ERROR"] if ERROR_LINE.match(last_line(final.output))
     else problems["TRACEBACK WALL"]).append(f"the final run exited {final.rc}")
  if expect == "preempt" and codes[0] != 75:
    problems["SILENT WRONG"].append(f"the interrupted run exited {codes[0]}, not 75")
  if expect == "error then ok" and codes[0] == 0:
    problems["SILENT WRONG"].append("the first run did not fail")
  # Messages: every failing run (but the killed one) ends in one `error:` line.
  for i, run in enumerate(outcome.runs):
    if expect == "killed" and i == 0:
      continue
    if "Traceback" in run.output:
      problems["TRACEBACK WALL"].append(f"run {i + 1}: a traceback ({failure_lines(run.output)} "
                                        "lines)")
    elif run.rc not in (0, 75) and not ERROR_LINE.match(last_line(run.output)):
      problems["TRACEBACK WALL"].append(f"run {i + 1}: last line {last_line(run.output)[:80]!r}")
  # Silent wrong: the restore step, the losses, a changed dir, saved broken checkpoints.
  resume = outcome.resume if outcome.resume is not None else case.resume
  if resume is not None and final.rc == 0 and restored_step(final.output) != resume:
    problems["SILENT WRONG"].append(f"restored step {restored_step(final.output)}, not {resume}")
  if case.same_losses and final.rc == 0 and reference is not None:
    losses = train_losses(model_dir)
    diff = [s for s in range(BASE_STEPS + 1, NEXT_STEPS + 1)
            if losses.get(s) != reference.get(s)]
    if diff:
      problems["SILENT WRONG"].append(f"train losses differ from the uninterrupted run at steps "
                                      f"{diff[:5]}")
  unchanged = case.unchanged if case.unchanged is not None else expect == "error"
  if unchanged and final.rc != 0 and changed:
    problems["SILENT WRONG"].append("the refused run changed the model dir")
  saved_bad = [s for s, why in health_after.items() if why is not None and s not in steps_before]
  if saved_bad:
    problems["SILENT WRONG"].append(f"saved checkpoints that do not verify: {saved_bad}")
  problems["SILENT WRONG"].extend(outcome.notes)
  if case.says and not any(case.says in r.output for r in outcome.runs):
    problems["UNEXPECTED ERROR"].append(f"the output does not say {case.says!r}")
  notes = [f"{v}: {p}" for v in VERDICTS for p in problems[v]]
  verdict = next((v for v in VERDICTS if problems[v]), "ok")
  return verdict, notes


def run_case(work: Work, case: Case) -> Row:
  start = time.monotonic()
  case_dir = work.root / "cases" / case.name
  shutil.rmtree(case_dir, ignore_errors=True)
  model_dir = case_dir / "disk" / "run"
  model_dir.parent.mkdir(parents=True)
  if case.world:
    work.world()
  damaged: list[int] = []
  if case.base:
    shutil.copytree(work.base(), model_dir, symlinks=True)
  if case.prepare is not None:
    damaged = case.prepare(model_dir)
  health_before = checkpoint_health(model_dir)
  good_before = [s for s, why in health_before.items() if why is None and s not in damaged]
  reference = work.reference() if case.same_losses else None
  before = snapshot(model_dir)
  needs_mounts = case.act in (full_disk_act, read_only_act)
  if needs_mounts and not has_mount_namespace():
    outcome = Outcome([], skipped="no mount namespace (unshare -m) here")
  else:
    outcome = case.act(work, model_dir)
  if outcome.skipped:
    return Row(case, "-", "-", steps_text(health_before, damaged), "-", "skipped",
               outcome.skipped, "", time.monotonic() - start)
  health_after = checkpoint_health(model_dir) if model_dir.is_dir() else {}
  changed = snapshot(model_dir) != before
  verdict, notes = judge(case, outcome, list(health_before), good_before, health_after, changed,
                         reference, model_dir)
  final = outcome.runs[-1]
  for i, run in enumerate(outcome.runs):
    (case_dir / f"output_{i + 1}.txt").write_text(run.output)
  lines = failure_lines(final.output)
  traceback = " +traceback" if any("Traceback" in r.output for r in outcome.runs) else ""
  return Row(case, ", ".join(str(r.rc) for r in outcome.runs), f"{lines}{traceback}",
             steps_text(health_before, damaged), steps_text(health_after, []), verdict,
             "; ".join(notes), "\n".join(f"--- run {i + 1} (exit {r.rc}, {r.seconds:.0f} s)\n"
                                         f"{r.output}" for i, r in enumerate(outcome.runs)),
             time.monotonic() - start)


def markdown(rows: list[Row], seconds: float, root: pathlib.Path) -> str:
  """The table; paths under a case's folder are shown from it (`run/...`)."""
  def cell(text: str) -> str:
    text = re.sub(re.escape(str(root)) + r"/cases/[^/]+/(disk/)?", "", text)
    return text.replace("|", "\\|").replace("\n", " ")
  out = ["| # | case | command | exit | error lines | checkpoints before → after | verdict | "
         "note / last line |", "|---|---|---|---|---|---|---|---|"]
  for i, row in enumerate(rows, 1):
    note = cell(row.note or last_line(row.output.rsplit("--- run", 1)[-1]))[:200]
    out.append(f"| {i} | {row.case.name} | {cell(row.case.command)} | {row.exits} | {row.lines} | "
               f"{row.before} → {row.after} | {row.verdict} | {note} |")
  bad = [r for r in rows if r.verdict != "ok"]
  out += ["", f"{len(rows)} cases, {len(rows) - len(bad)} ok, {len(bad)} not ok; "
          f"{seconds / 60:.1f} minutes. Checkpoints: `!` damaged by the case, `!(why)` fails "
          "verification; error lines: lines from the first error or traceback line to the end."]
  return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", default=None, help="the Markdown table (default: "
                      "fault_cases.md in the work dir)")
  parser.add_argument("--only", default=None, help="run the cases whose name holds this (or "
                      "one of several, comma-separated)")
  parser.add_argument("--work_dir", default=None, help="where runs go (default: a temporary "
                      "folder, removed at the end unless --keep)")
  parser.add_argument("--keep", action="store_true", help="keep the temporary work dir")
  parser.add_argument("--jobs", type=int, default=1, help="cases run at once (each is one "
                      "process at a time; 2 shortens the table on 2 idle cores)")
  parser.add_argument("--show_output", action="store_true",
                      help="print every case's full output after the table")
  args = parser.parse_args(argv)
  only = args.only.split(",") if args.only else None
  cases = [c for c in CASES if only is None or any(part in c.name for part in only)]
  if not cases:
    parser.error(f"no case name holds {args.only!r}")
  root = pathlib.Path(args.work_dir or tempfile.mkdtemp(prefix="fault_cases_")).resolve()
  root.mkdir(parents=True, exist_ok=True)
  out = pathlib.Path(args.out) if args.out else root / "fault_cases.md"
  work = Work(root)
  start = time.monotonic()
  rows = []
  def one(case: Case) -> Row:
    try:
      row = run_case(work, case)
    except Exception as e:  # pylint: disable=broad-except
      row = Row(case, "-", "-", "-", "-", "HARNESS ERROR", f"{type(e).__name__}: {e}", "", 0.0)
    print(f"{case.name}: {row.verdict} (exit {row.exits}, {row.seconds:.0f} s)"
          f"{': ' + row.note if row.note else ''}", file=sys.stderr, flush=True)
    return row

  try:
    if any(c.base for c in cases):
      work.base()
    if any(c.same_losses for c in cases):
      work.reference()
    with concurrent.futures.ThreadPoolExecutor(max_workers=args.jobs) as pool:
      rows = list(pool.map(one, cases))
    table = markdown(rows, time.monotonic() - start, root)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(table)
    print(table)
    for row in rows:
      if row.verdict not in ("ok", "skipped") or args.show_output:
        print(f"\n### {row.case.name}: {row.verdict}\n\n```\n{row.output[-4000:]}\n```")
    print(f"table written to {out}", file=sys.stderr)
  finally:
    if not (args.keep or args.work_dir):
      shutil.rmtree(root / "cases", ignore_errors=True)
      for name in ("base", "reference", "world", "jax_cache"):
        shutil.rmtree(root / name, ignore_errors=True)
  return 1 if any(r.verdict not in ("ok", "skipped") for r in rows) else 0


if __name__ == "__main__":
  sys.exit(main())
