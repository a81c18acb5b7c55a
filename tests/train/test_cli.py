"""End-to-end tests of `python -m gbt_t5x.train` as a subprocess.

Bad input (gin names, files, syntax, tasks, lengths, vocabulary, checkpoint shape) must end with
exit code 2 and a one-line `error: ...` naming the problem, no traceback, and nothing written to
the model dir; a good run writes checkpoints, config.gin, TensorBoard events and plots, resumes,
and a resumed run is bit-identical to an uninterrupted one.

Each start pays ~6-15 s of imports and compiles on a small CPU, so every subprocess checks as much
as it can. All runs share one small demo world (`GBT_T5X_DEMO_DIR` / `GBT_T5X_DEMO_CONFIG`).
"""
from __future__ import annotations

import hashlib
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
# vocab_size 400 (500 ids with the 100 sentinels): SentencePiece cannot learn the default 1000
# pieces from a world this small.
DEMO_CONFIG = {"num_train": 400, "num_guide": 100, "num_dev": 64, "num_test": 64, "num_mono": 50,
               "vocab_size": 400}
DEMO_VOCAB_IDS = 500
# The demo's LR decays to 0 at TRAIN_STEPS; runs here are extended by raising TRAIN_STEPS, so the
# decay end is pinned to keep one schedule across a resume (as a real run extension would).
FAST_FLAGS = ("--gin_file=experiments/demo_nmt.gin", "--gin.TRAIN_STEPS=4", "--gin.BATCH_SIZE=8",
              "--gin.EVAL_STEPS=1", "--gin.EVAL_PERIOD=2", "--gin.LOG_EVERY=1",
              "--gin.learning_rate.create_learning_rate_scheduler.total_steps=1000")


@pytest.fixture(scope="module")
def cli_env(tmp_path_factory):
  env = dict(os.environ)
  env.pop("XLA_FLAGS", None)  # One CPU device: the default mesh is data=1.
  env.update({
      "GBT_T5X_DEMO_DIR": str(tmp_path_factory.mktemp("demo_world")),
      "GBT_T5X_DEMO_CONFIG": json.dumps(DEMO_CONFIG),
      "TF_CPP_MIN_LOG_LEVEL": "3",
      "CUDA_VISIBLE_DEVICES": "",
      "JAX_PLATFORMS": "cpu",
  })
  return env


def run_cli(env, model_dir, *flags, timeout=400) -> subprocess.CompletedProcess:
  argv = [sys.executable, "-m", "gbt_t5x.train", *FAST_FLAGS,
          f"--gin.MODEL_DIR={str(model_dir)!r}", *flags]
  return subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def assert_user_error(proc: subprocess.CompletedProcess, *fragments: str) -> str:
  """Exit 2, no traceback, stderr's last line is `error: ...` containing every fragment."""
  detail = f"rc={proc.returncode}\nstdout:\n{proc.stdout[-2000:]}\nstderr:\n{proc.stderr[-4000:]}"
  assert proc.returncode == 2, detail
  assert "Traceback" not in proc.stderr, detail
  last = [l for l in proc.stderr.splitlines() if l.strip()][-1]
  assert last.startswith("error: "), detail
  for fragment in fragments:
    assert fragment in last, f"{fragment!r} not in {last!r}"
  return last


def snapshot(root: pathlib.Path) -> dict[str, tuple[int, int, str]]:
  """{relative path: (size, mtime_ns, sha256)} of every file under `root`, plus the folders."""
  out = {}
  for path in sorted(root.rglob("*")):
    rel = str(path.relative_to(root))
    if path.is_dir():
      out[rel + "/"] = (0, path.stat().st_mtime_ns, "")
    else:
      st = path.stat()
      out[rel] = (st.st_size, st.st_mtime_ns, hashlib.sha256(path.read_bytes()).hexdigest())
  return out


def checkpoint_steps(model_dir: pathlib.Path) -> list[int]:
  ckpt = model_dir / "checkpoints"
  return sorted(int(p.name) for p in ckpt.iterdir() if p.name.isdigit()) if ckpt.is_dir() else []


def metrics(model_dir: pathlib.Path) -> list[dict]:
  with open(model_dir / "metrics.jsonl") as f:
    return [json.loads(line) for line in f if line.strip()]


def train_losses(model_dir: pathlib.Path) -> dict[int, float]:
  return {r["step"]: r["train/loss"] for r in metrics(model_dir) if "train/loss" in r}


def saved_state(model_dir: pathlib.Path, step: int) -> dict[str, np.ndarray]:
  """Every leaf of the saved train state (params, optimizer state, step) as numpy, by path."""
  import jax
  import orbax.checkpoint as ocp
  tree = ocp.StandardCheckpointer().restore(str(model_dir / "checkpoints" / str(step) / "state"))
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in flat}


# ----------------------------------------------------------------------------------------------
# --help (in-process: argparse prints and exits before anything heavy).

@pytest.mark.parametrize("entry,macros", [
    ("train", ["MODEL_DIR", "TRAIN_STEPS", "MIXTURE_OR_TASK_NAME", "MIXTURE_OR_TASK_MODULE",
               "GUIDE_MIXTURE_OR_TASK_NAME", "BATCH_SIZE", "TASK_FEATURE_LENGTHS",
               "INITIAL_CHECKPOINT_PATH", "HYPER_STEP_EVERY"]),
    ("eval", ["CHECKPOINT_PATH", "EVAL_OUTPUT_DIR", "EVAL_SPLIT", "DECODER_PARAMS"]),
    ("infer", ["CHECKPOINT_PATH", "INFER_OUTPUT_DIR", "INFER_SPLIT"]),
])
def test_help_lists_the_flags_and_the_most_used_macros(entry, macros, capsys):
  from gbt_t5x import gin_utils
  with pytest.raises(SystemExit) as info:
    gin_utils.run(lambda args: 0, "test", argv=["--help"], entry=entry)
  assert info.value.code == 0
  out = capsys.readouterr().out
  for flag in ("--gin_file", "--gin_bindings", "--gin_search_paths", "--tfds_data_dir",
               "--gin.NAME=VALUE"):
    assert flag in out, out
  listed = [line.split()[0] for line in out.split("most used gin macros")[1].splitlines()[1:]
            if line.strip()]
  assert set(macros) <= set(listed), listed
  if entry != "train":
    assert "TRAIN_STEPS" not in listed and "MODEL_DIR" not in listed


def test_every_listed_macro_is_used_by_a_shipped_gin_file():
  from gbt_t5x import gin_utils
  text = "\n".join(p.read_text() for p in (REPO / "gin").rglob("*.gin"))
  for macro in gin_utils.MACROS:
    assert f"%{macro.name}" in text, macro.name


# ----------------------------------------------------------------------------------------------
# Bad input: one-line errors, nothing written.

BAD_STARTS = {
    # Unknown parameter of a known configurable, written as in gin files (train_script alias).
    "unknown_parameter": (
        ["--gin.train_script.train.nonexistent=1"],
        ["gin binding 'train_script.train.nonexistent = 1'",
         "Configurable 'train' doesn't have a parameter named 'nonexistent'"]),
    "misspelled_configurable": (
        ["--gin.network.T5Confg.emb_dim=64"],
        ["gin binding 'network.T5Confg.emb_dim = 64'",
         "No configurable matching 'network.T5Confg'"]),
    "unknown_gin_file": (
        ["--gin_file=runs/no_such_run.gin"],
        ["gin file 'runs/no_such_run.gin' not found"]),
    "binding_syntax": (
        ["--gin.TRAIN_STEPS=(4"],
        ["gin binding 'TRAIN_STEPS = (4'", "syntax error"]),
    "unknown_task": (
        ["--gin.MIXTURE_OR_TASK_NAME='demo_nmtt'"],
        ["unknown SeqIO task or mixture 'demo_nmtt'", "did you mean demo_nmt"]),
    "inputs_length_0": (
        ["--gin.TASK_FEATURE_LENGTHS={'inputs': 0, 'targets': 8}"],
        ["demo_nmt: sequence length inputs=0 must be > 0"]),
    "targets_length_0": (
        ["--gin.TASK_FEATURE_LENGTHS={'inputs': 8, 'targets': 0}"],
        ["demo_nmt: sequence length targets=0 must be > 0"]),
    "vocabulary_bigger_than_model": (
        ["--gin.NUM_EMBEDDINGS=256"],
        [f"task demo_nmt inputs vocabulary has {DEMO_VOCAB_IDS} ids but the model's vocab_size "
         "is 256"]),
}


@pytest.mark.parametrize("case", sorted(BAD_STARTS))
def test_bad_input_is_a_one_line_error_and_writes_nothing(case, cli_env, tmp_path):
  flags, fragments = BAD_STARTS[case]
  model_dir = tmp_path / "run"
  proc = run_cli(cli_env, model_dir, *flags)
  assert_user_error(proc, *fragments)
  assert not model_dir.exists(), sorted(str(p) for p in model_dir.rglob("*"))
  assert "training steps" not in proc.stdout  # Failed before the training loop.


def test_checkpoint_of_another_shape_is_refused_and_left_unchanged(cli_env, tmp_path):
  model_dir = tmp_path / "run"
  no_eval = "--gin.train_script.train.train_eval_dataset_cfg=None"  # Saves a compile per start.
  first = run_cli(cli_env, model_dir, "--gin.TRAIN_STEPS=2", no_eval)
  assert first.returncode == 0, first.stderr[-4000:]
  assert checkpoint_steps(model_dir) == [2]
  # The gin-file spelling `train_script.train.*` works as a command-line binding too.
  assert "eval step" not in first.stdout and not (model_dir / "train_eval").exists()
  before = snapshot(model_dir)
  assert "config.gin" in before and "metrics.jsonl" in before

  proc = run_cli(cli_env, model_dir, "--gin.network.T5Config.emb_dim=64", no_eval)
  # Names the first mismatching parameter (in the train state's order) and both shapes.
  assert_user_error(proc, f"checkpoint step 2 in {model_dir / 'checkpoints'} does not fit the "
                    "target: leaf .params['decoder']['decoder_norm']['scale']: checkpoint shape "
                    "(128,) != target shape (64,)")
  assert snapshot(model_dir) == before  # Names, sizes, mtimes and bytes all unchanged.

  # The refused start left nothing behind that stops the right model from resuming.
  again = run_cli(cli_env, model_dir, "--gin.TRAIN_STEPS=4", no_eval)
  assert again.returncode == 0, again.stderr[-4000:]
  assert f"restored checkpoint step 2 from {model_dir / 'checkpoints'}" in again.stdout
  assert checkpoint_steps(model_dir) == [2, 4]
  assert sorted(train_losses(model_dir)) == [1, 2, 3, 4]


# ----------------------------------------------------------------------------------------------
# A quiet console: the project's lines only, unless --verbose.
LIBRARY_NOTICES = ("oneDNN", "cuda drivers", "cuInit", "absl::InitializeLog",
                   "uncached FunctionDataset", "will be removed during packing")


def assert_no_library_notices(stderr: str) -> None:
  found = [n for n in LIBRARY_NOTICES if n in stderr]
  assert not found, (found, stderr[-3000:])


def test_console_is_quiet_unless_verbose(cli_env):
  env = {k: v for k, v in cli_env.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
  quiet = subprocess.run([sys.executable, "-m", "gbt_t5x.train", "--help"], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=120)
  assert quiet.returncode == 0 and "--verbose" in quiet.stdout
  assert_no_library_notices(quiet.stderr)
  loud = subprocess.run([sys.executable, "-m", "gbt_t5x.train", "--help", "--verbose"],
                        cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
  assert loud.returncode == 0 and "absl::InitializeLog" in loud.stderr, loud.stderr[-2000:]


# ----------------------------------------------------------------------------------------------
# A good run: outputs, resume, and resume == uninterrupted.

@pytest.mark.slow
def test_train_resume_and_resume_equals_uninterrupted(cli_env, tmp_path):
  resumed = tmp_path / "resumed"
  proc = run_cli(cli_env, resumed, "--gin.TRAIN_STEPS=6", "--gin.EVAL_PERIOD=3")
  assert proc.returncode == 0, proc.stderr[-4000:]
  assert "restored checkpoint" not in proc.stdout
  assert_no_library_notices(proc.stderr)
  assert checkpoint_steps(resumed) == [3, 6]
  config = (resumed / "config.gin").read_text()
  assert "TRAIN_STEPS = 6" in config and "train_lib.train.total_steps = %TRAIN_STEPS" in config
  assert "EVAL_PERIOD = 3" in config
  for sub in ("train", "train_eval"):
    assert list((resumed / sub).glob("events.out.tfevents.*")), f"no TensorBoard events in {sub}/"
  assert (resumed / "loss_curves.png").stat().st_size > 0
  assert sorted(train_losses(resumed)) == [1, 2, 3, 4, 5, 6]
  assert sorted(r["step"] for r in metrics(resumed) if "train_eval/loss" in r) == [3, 6]
  ckpt3_before = snapshot(resumed / "checkpoints" / "3")

  proc = run_cli(cli_env, resumed, "--gin.TRAIN_STEPS=8", "--gin.EVAL_PERIOD=3")
  assert proc.returncode == 0, proc.stderr[-4000:]
  assert "restored checkpoint step 6" in proc.stdout
  assert "training steps 6 -> 8" in proc.stdout and "step 8/8" in proc.stdout
  assert checkpoint_steps(resumed) == [3, 6, 8]  # 8 = total_steps, saved although 8 % 3 != 0.
  assert snapshot(resumed / "checkpoints" / "3") == ckpt3_before
  assert "TRAIN_STEPS = 8" in (resumed / "config.gin").read_text()

  # Uninterrupted 8 steps, evaluating every 4 and saving every 2 (so even the chunking of steps
  # differs): a save period shorter than the eval period still saves at each of its steps.
  straight = tmp_path / "straight"
  proc = run_cli(cli_env, straight, "--gin.TRAIN_STEPS=8", "--gin.EVAL_PERIOD=4",
                 "--gin.train_lib.SaveCheckpointConfig.period=2",
                 "--gin.train_lib.SaveCheckpointConfig.keep=None")
  assert proc.returncode == 0, proc.stderr[-4000:]
  assert checkpoint_steps(straight) == [2, 4, 6, 8]
  assert sorted(r["step"] for r in metrics(straight) if "train_eval/loss" in r) == [4, 8]

  losses_resumed, losses_straight = train_losses(resumed), train_losses(straight)
  assert sorted(losses_resumed) == sorted(losses_straight) == list(range(1, 9))
  assert losses_resumed == losses_straight  # Exactly equal floats, step by step.
  a, b = saved_state(resumed, 8), saved_state(straight, 8)
  assert sorted(a) == sorted(b)
  assert any("params" in k for k in a)
  for key in a:
    assert a[key].dtype == b[key].dtype and a[key].shape == b[key].shape, key
    np.testing.assert_array_equal(a[key], b[key], err_msg=key)
  # The run actually moved the params (so equality is not trivially of two inits).
  first = saved_state(straight, 4)
  assert any(not np.array_equal(first[k], b[k]) for k in b if "params" in k)
