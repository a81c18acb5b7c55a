"""Every shipped gin file under gin/experiments/ (with real/) and gin/runs/ runs; so do T5X users'
files (T5X's `t5x/...` includes and module names, `gbt_t5x.t5x_compat`), from a T5X checkpoint.

* Fast: the README's "Running on real data" files parse, name registered SeqIO tasks (train and
  guide), configure T5.1.1 small and valid guided hyper-parameters.
* Slow smoke runs, one per file (parametrized by the file's name): the entry point
  (`gin_utils.run` with `train` / `eval` / `infer`'s `main`, in this process, as
  `python -m gbt_t5x.train` calls it) trains 2 steps (guided files: every step guided) and
  evaluates or decodes where the file does, on `tfds.testing.mock_data` for C4 / WMT19 / GLUE.
  The model is shrunk by gin bindings of the network config only, and the vocabulary is the small
  demo-world SentencePiece model: bound for the model, and the real task families re-registered
  with it under their own names for this module (restored to T5's vocabulary afterwards).
  Checkpoint-consuming files (finetune, eval, infer) use the checkpoints of the runs before them,
  as the real pipeline does (C4 -> WMT / GLUE finetune -> GLUE eval).

All runs share one process (the suite runs a file per worker) and one model size, lengths and
batch size, so compiled eval and decode functions come from JAX's cache where shapes repeat.
"""
from __future__ import annotations

import contextlib
import importlib
import io
import json
import pathlib
import sys
import time

import gin
import numpy as np
import pytest
import seqio

from gbt_t5x import gin_utils
from gbt_t5x.guided import specs as specs_lib
from gbt_t5x.train import train_lib
from tests.train.test_cli import DEMO_CONFIG

REPO_GIN = pathlib.Path(__file__).resolve().parents[1] / "gin"
REQUIRED = ["MODEL_DIR = '/tmp/unused'", "INITIAL_CHECKPOINT_PATH = '/tmp/unused_ckpt'",
            "CHECKPOINT_PATH = '/tmp/unused_ckpt'", "EVAL_OUTPUT_DIR = '/tmp/unused_eval'"]
# file -> (train / eval task, guide task or None)
REAL_FILES = {
    "experiments/real/c4_t5_small_guided.gin": ("c4_span_corruption",
                                                "c4_span_corruption_guide"),
    "experiments/real/wmt19_lt_en_guided.gin": ("wmt19_translate_lt_en",
                                                "wmt19_translate_lt_en_guide"),
    "experiments/real/glue_finetune.gin": ("glue_v002_proportional", None),
    "experiments/real/glue_eval.gin": ("glue_v002_proportional", None),
}


def _entry_points(monkeypatch) -> None:
  """`__main__.train/evaluate/infer` as the entry points provide them (gin files bind
  `train_script.train`, `eval_script.evaluate`, `infer_script.infer` via `import __main__`)."""
  import gbt_t5x.eval as eval_main
  import gbt_t5x.infer as infer_main
  monkeypatch.setattr(sys.modules["__main__"], "train", train_lib.train, raising=False)
  monkeypatch.setattr(sys.modules["__main__"], "evaluate", eval_main.evaluate, raising=False)
  monkeypatch.setattr(sys.modules["__main__"], "infer", infer_main.infer, raising=False)


@pytest.fixture
def parsed(monkeypatch):
  """`parsed(file)`: parses `file` (+ the required paths) and imports its task module (as the
  entry points do); clears gin afterwards."""
  _entry_points(monkeypatch)

  def parse(path: str) -> None:
    gin.clear_config()
    gin_utils.parse_gin([path], REQUIRED)  # Unused macros among REQUIRED are harmless.
    gin_utils.import_task_module()

  yield parse
  gin.clear_config()


@pytest.mark.parametrize("path", sorted(REAL_FILES))
def test_real_data_gin_file_parses_and_names_registered_tasks(parsed, path):
  parsed(path)
  # The file's `import __main__ as train_script` did not register a second `train` beside the
  # train entry point's: a command-line binding of train_script.train (parsed as `train.x`)
  # stays unambiguous in a process that has both.
  with gin.unlock_config():
    import gbt_t5x.train.__main__  # noqa: F401  (registers train_script.train)
    gin.parse_config("train.train_eval_dataset_cfg = None")
  task, guide = REAL_FILES[path]
  assert gin.query_parameter("%MIXTURE_OR_TASK_NAME") == task
  seqio.get_mixture_or_task(task)  # Raises if not registered.
  config = gin.query_parameter("network.Transformer.config").scoped_configurable_fn()
  assert (config.emb_dim, config.num_heads, config.head_dim, config.mlp_dim,
          config.num_encoder_layers, config.vocab_size) == (512, 6, 64, 1024, 8, 32128)
  if guide is None:
    return
  assert gin.query_parameter("%GUIDE_MIXTURE_OR_TASK_NAME") == guide
  seqio.get_mixture_or_task(guide)
  hparams = [ref.scoped_configurable_fn() for ref in gin.query_parameter("%GUIDED_HPARAMS")]
  assert all(isinstance(h, specs_lib.GuidedHParam) for h in hparams)
  assert "learning_rate" in {h.name for h in hparams}


# ----------------------------------------------------------------------------------------------
# Smoke runs of every shipped file.

TINY_MODEL = ("emb_dim=32", "num_heads=2", "head_dim=16", "mlp_dim=64", "num_encoder_layers=1",
              "num_decoder_layers=1", "dtype='float32'")
LENGTHS = "{'inputs': 32, 'targets': 16}"
# 8 examples: one per simulated CPU device (tests/conftest.py).
COMMON = ("--gin.TRAIN_STEPS=2", "--gin.BATCH_SIZE=8", "--gin.EVAL_PERIOD=2",
          "--gin.EVAL_STEPS=1", "--gin.LOG_EVERY=1", f"--gin.TASK_FEATURE_LENGTHS={LENGTHS}",
          "--gin.NUM_EMBEDDINGS=512",  # The demo world's 400 pieces + 100 sentinels, padded.
          *(f"--gin.network.T5Config.{b}" for b in TINY_MODEL))
GUIDED = ("--gin.HYPER_STEP_EVERY=1", "--gin.GUIDE_BATCH_SIZE=8")
MOCK_EXAMPLES = 16  # per TFDS split
GUIDE_PERCENT = 25.0  # of 16 mock examples: a guide slice that is not empty


class Runner:
  """Runs entry points in this process and remembers each file's output dir (for its users)."""

  def __init__(self, root: pathlib.Path, spm_model: str):
    self.root = root
    self.vocab_flag = f"--gin.seqio.SentencePieceVocabulary.sentencepiece_model_file={spm_model!r}"
    self.dirs: dict[str, pathlib.Path] = {}
    self.seconds: dict[str, float] = {}

  def __call__(self, name: str, main_module: str, flags: list[str]) -> tuple[int, str, str]:
    """Runs `main_module`'s main with `flags` (+ the shrinking ones); (rc, stdout, stderr)."""
    import tensorflow_datasets as tfds
    main = importlib.import_module(main_module).main
    out, err = io.StringIO(), io.StringIO()
    start = time.time()
    gin.clear_config()
    try:
      with tfds.testing.mock_data(num_examples=MOCK_EXAMPLES,
                                  policy=tfds.testing.MockPolicy.USE_CODE), \
          contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = gin_utils.run(main, "smoke", argv=[*flags, *COMMON, self.vocab_flag])
    finally:
      gin.clear_config()
    self.seconds[name] = time.time() - start
    return rc, out.getvalue(), err.getvalue()

  def train(self, name: str, flags: list[str]) -> pathlib.Path:
    """Trains (once per `name`); returns the model dir."""
    if name not in self.dirs:
      model_dir = self.root / name.replace("/", "_").replace(".gin", "")
      rc, out, err = self(name, "gbt_t5x.train.__main__",
                          [*flags, f"--gin.MODEL_DIR={str(model_dir)!r}"])
      assert rc == 0, f"{name}: rc={rc}\nstdout:\n{out[-3000:]}\nstderr:\n{err[-3000:]}"
      assert "step 2/2" in out, out[-3000:]
      self.dirs[name] = model_dir
    return self.dirs[name]


# How each training file is run: (its flags, the file whose checkpoint it starts from or None).
TRAIN_RUNS = {
    "experiments/demo_nmt.gin": (["--gin_file=experiments/demo_nmt.gin",
                                  "--gin.INFER_EVAL_EXAMPLES=4"], None),
    "experiments/demo_nmt_guided.gin": (["--gin_file=experiments/demo_nmt_guided.gin",
                                         "--gin.INFER_EVAL_EXAMPLES=4", *GUIDED], None),
    "experiments/demo_nmt_guided_all.gin": (["--gin_file=experiments/demo_nmt_guided_all.gin",
                                             "--gin.INFER_EVAL_EXAMPLES=4", *GUIDED], None),
    "experiments/demo_nmt_finetune.gin": (["--gin_file=experiments/demo_nmt.gin",
                                           "--gin_file=experiments/demo_nmt_finetune.gin",
                                           "--gin.INFER_EVAL_EXAMPLES=4"],
                                          "experiments/demo_nmt.gin"),
    # The run files with the tiny model gin on the demo task; the task module only as a binding.
    "runs/pretrain.gin": (["--gin_file=models/t5_1_1_tiny.gin", "--gin_file=runs/pretrain.gin",
                           "--gin.MIXTURE_OR_TASK_NAME='demo_nmt'",
                           "--gin.MIXTURE_OR_TASK_MODULE='gbt_t5x_tasks.demo'"], None),
    "runs/finetune.gin": (["--gin_file=models/t5_1_1_tiny.gin", "--gin_file=runs/finetune.gin",
                           "--gin.MIXTURE_OR_TASK_NAME='demo_nmt'",
                           "--gin.MIXTURE_OR_TASK_MODULE='gbt_t5x_tasks.demo'"],
                          "runs/pretrain.gin"),
    "experiments/real/c4_t5_small_guided.gin": (
        ["--gin_file=experiments/real/c4_t5_small_guided.gin", *GUIDED], None),
    "experiments/real/wmt19_lt_en_guided.gin": (
        ["--gin_file=experiments/real/wmt19_lt_en_guided.gin", "--gin.INFER_EVAL_EXAMPLES=4",
         *GUIDED], "experiments/real/c4_t5_small_guided.gin"),
    "experiments/real/glue_finetune.gin": (
        ["--gin_file=experiments/real/glue_finetune.gin", "--gin.INFER_EVAL_EXAMPLES=1"],
        "experiments/real/c4_t5_small_guided.gin"),
}
# Eval / infer files: (entry point, flags, the training file whose checkpoint they read).
SCORE_RUNS = {
    "experiments/demo_nmt_eval.gin": ("gbt_t5x.eval", ["--gin_file=experiments/demo_nmt_eval.gin",
                                                       "--gin.INFER_EVAL_EXAMPLES=4"],
                                      "experiments/demo_nmt.gin"),
    "experiments/demo_nmt_infer.gin": ("gbt_t5x.infer",
                                       ["--gin_file=experiments/demo_nmt_infer.gin",
                                        "--gin.INFER_EXAMPLES=4"], "experiments/demo_nmt.gin"),
    "runs/eval.gin": ("gbt_t5x.eval", ["--gin_file=models/t5_1_1_tiny.gin",
                                       "--gin_file=runs/eval.gin",
                                       "--gin.MIXTURE_OR_TASK_NAME='demo_nmt'",
                                       "--gin.MIXTURE_OR_TASK_MODULE='gbt_t5x_tasks.demo'",
                                       "--gin.INFER_EVAL_EXAMPLES=4"], "runs/pretrain.gin"),
    "runs/infer.gin": ("gbt_t5x.infer", ["--gin_file=models/t5_1_1_tiny.gin",
                                         "--gin_file=runs/infer.gin",
                                         "--gin.MIXTURE_OR_TASK_NAME='demo_nmt'",
                                         "--gin.MIXTURE_OR_TASK_MODULE='gbt_t5x_tasks.demo'",
                                         "--gin.INFER_EXAMPLES=4"], "runs/pretrain.gin"),
    "experiments/real/glue_eval.gin": ("gbt_t5x.eval",
                                       ["--gin_file=experiments/real/glue_eval.gin",
                                        "--gin.INFER_EVAL_EXAMPLES=1"],
                                       "experiments/real/glue_finetune.gin"),
    # The file's documented SuperGLUE variant (ReCoRD / MultiRC decode and score differently).
    "experiments/real/glue_eval.gin[super_glue]": (
        "gbt_t5x.eval", ["--gin_file=experiments/real/glue_eval.gin",
                         "--gin.MIXTURE_OR_TASK_NAME='super_glue_v102_proportional'",
                         "--gin.INFER_EVAL_EXAMPLES=1"], "experiments/real/glue_finetune.gin"),
}
GUIDED_FILES = {"experiments/demo_nmt_guided.gin", "experiments/demo_nmt_guided_all.gin",
                "experiments/real/c4_t5_small_guided.gin",
                "experiments/real/wmt19_lt_en_guided.gin"}
# Training files that decode and score (infer_eval) every EVAL_PERIOD steps.
DECODING_FILES = {"experiments/demo_nmt.gin", "experiments/demo_nmt_guided.gin",
                  "experiments/demo_nmt_guided_all.gin",
                  "experiments/demo_nmt_finetune.gin", "experiments/real/wmt19_lt_en_guided.gin",
                  "experiments/real/glue_finetune.gin"}


def test_every_shipped_run_and_experiment_file_has_a_smoke_run():
  shipped = {str(p.relative_to(REPO_GIN)) for sub in ("experiments", "runs")
             for p in (REPO_GIN / sub).rglob("*.gin")}
  assert shipped == set(TRAIN_RUNS) | {name.split("[")[0] for name in SCORE_RUNS}


@pytest.fixture(scope="module")
def runner(tmp_path_factory):
  """One demo world (its SentencePiece model is the vocabulary of every run), the real task
  families re-registered with it, and a `Runner`; T5's registrations are restored afterwards."""
  from gbt_t5x.data import demo_world
  from gbt_t5x_tasks import c4, glue, wmt
  lt_en = [c for c in wmt.WMT_CONFIGS if c.family == "wmt19_translate" and c.pair == ("lt", "en")]
  with pytest.MonkeyPatch.context() as mp:
    world_dir = tmp_path_factory.mktemp("smoke_world")
    mp.setenv("GBT_T5X_DEMO_DIR", str(world_dir))
    mp.setenv("GBT_T5X_DEMO_CONFIG", json.dumps(DEMO_CONFIG))
    for name in ("GBT_T5X_COORDINATOR_ADDRESS", "GBT_T5X_NUM_PROCESSES", "GBT_T5X_PROCESS_ID"):
      mp.delenv(name, raising=False)
    _entry_points(mp)
    spm_model = str(demo_world.ensure_demo_world(str(world_dir), **DEMO_CONFIG) / "spm.model")
    vocab = seqio.SentencePieceVocabulary(spm_model, extra_ids=100)
    c4.register_c4_tasks(vocab, guide_percent=GUIDE_PERCENT)
    wmt.register_wmt_tasks(vocab, configs=lt_en, guide_percent=GUIDE_PERCENT)
    glue.register_tasks(vocab, guide_percent=GUIDE_PERCENT)
    run = Runner(tmp_path_factory.mktemp("smoke_runs"), spm_model)
    try:
      yield run  # The runs share the session's JAX compilation cache (tests/conftest.py).
    finally:
      c4.register_c4_tasks()
      wmt.register_wmt_tasks(configs=lt_en)
      glue.register_tasks(glue.T5_VOCABULARY)
      print("smoke run seconds:", json.dumps({k: round(v, 1) for k, v in run.seconds.items()}))


def _trained(runner: Runner, name: str) -> pathlib.Path:
  flags, source = TRAIN_RUNS[name]
  if source is not None:
    flags = [*flags, f"--gin.INITIAL_CHECKPOINT_PATH={str(_trained(runner, source))!r}"]
  return runner.train(name, flags)


def _jsonl(path: pathlib.Path) -> list[dict]:
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(TRAIN_RUNS))
def test_training_file_runs(runner, name):
  model_dir = _trained(runner, name)
  assert sorted(p.name for p in (model_dir / "checkpoints").iterdir() if p.name.isdigit()) == ["2"]
  assert "TRAIN_STEPS = 2" in (model_dir / "config.gin").read_text()
  records = _jsonl(model_dir / "metrics.jsonl")
  assert sorted(r["step"] for r in records if "train/loss" in r) == [1, 2]
  assert any("train_eval/loss" in r for r in records)
  if name in GUIDED_FILES:
    rows = _jsonl(model_dir / "guided_trajectory.jsonl")
    # A guided step ran (it may have been skipped for a non-finite hyper-gradient: the run must
    # still complete its steps).
    assert [r["step"] for r in rows] == [1, 2] and "skipped" in rows[0], rows
  if name in DECODING_FILES:
    assert any(k.startswith("infer_eval/") for r in records for k in r), records


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SCORE_RUNS))
def test_eval_and_infer_file_runs(runner, name, tmp_path):
  main_module, flags, source = SCORE_RUNS[name]
  checkpoint = _trained(runner, source)
  out_dir = tmp_path / "out"
  macro = "EVAL_OUTPUT_DIR" if main_module == "gbt_t5x.eval" else "INFER_OUTPUT_DIR"
  rc, out, err = runner(name, main_module, [*flags, f"--gin.CHECKPOINT_PATH={str(checkpoint)!r}",
                                            f"--gin.{macro}={str(out_dir)!r}"])
  assert rc == 0, f"{name}: rc={rc}\nstdout:\n{out[-3000:]}\nstderr:\n{err[-3000:]}"
  predictions = _jsonl(out_dir / "predictions.jsonl")
  assert predictions and {"task", "input", "target", "prediction"} <= set(predictions[0])
  if main_module == "gbt_t5x.eval":
    report = json.loads((out_dir / "metrics.json").read_text())
    assert report["step"] == 2 and report["infer_eval"], report


# ----------------------------------------------------------------------------------------------
# T5X users' gin files, unmodified (gbt_t5x.t5x_compat), and T5X checkpoints in.

T5X_PRETRAIN = """\
from __gin__ import dynamic_registration

import __main__ as train_script
from t5x import partitioning
from t5x import utils

include 't5x/examples/t5/t5_1_1/small.gin'
include 't5x/configs/runs/pretrain.gin'

MIXTURE_OR_TASK_NAME = 'c4_span_corruption'
MIXTURE_OR_TASK_MODULE = 't5.data.mixtures'
TASK_FEATURE_LENGTHS = {'inputs': 512, 'targets': 114}
TRAIN_STEPS = 524288
DROPOUT_RATE = 0.0
BATCH_SIZE = 256

utils.SaveCheckpointConfig.period = 2000
partitioning.PjitPartitioner.num_partitions = 1
"""
# As T5X's docs finetune (examples/t5/t5_1_1/examples/base_wmt_finetune.gin: run file first).
T5X_FINETUNE = """\
from __gin__ import dynamic_registration

import __main__ as train_script
from t5x import utils
from t5x import models

include 't5x/configs/runs/finetune.gin'
include 't5x/examples/t5/t5_1_1/small.gin'

BATCH_SIZE = 128
MIXTURE_OR_TASK_NAME = 'c4_span_corruption'
MIXTURE_OR_TASK_MODULE = 't5.data.mixtures'
TASK_FEATURE_LENGTHS = {'inputs': 256, 'targets': 256}
DROPOUT_RATE = 0.1
TRAIN_STEPS = 1_020_000
LOSS_NORMALIZING_FACTOR = 233472
INITIAL_CHECKPOINT_PATH = %(checkpoint)r
"""


def _t5x_file(tmp_path: pathlib.Path, name: str, text: str) -> str:
  path = tmp_path / name
  path.write_text(text)
  return f"--gin_file={path}"


@pytest.fixture(scope="module")
def t5x_runs(runner, tmp_path_factory):
  """A T5X users' pretraining file run for 2 steps, and its params as T5X checkpoint_0."""
  from gbt_t5x.train import checkpoints, t5x_checkpoints
  root = tmp_path_factory.mktemp("t5x_user")
  model_dir = runner.train("t5x_user_pretrain", [_t5x_file(root, "pretrain.gin", T5X_PRETRAIN)])
  params = checkpoints.Checkpointer(str(model_dir / "checkpoints")).saved_params(2)
  return model_dir, pathlib.Path(t5x_checkpoints.write(params, 0, str(root / "t5x")))


@pytest.mark.slow
def test_t5x_users_pretraining_and_finetuning_files_run_unmodified(runner, t5x_runs, tmp_path):
  model_dir, t5x_checkpoint = t5x_runs
  config = (model_dir / "config.gin").read_text()
  assert "period = 2000" in config and "TRAIN_STEPS = 2" in config
  finetune = T5X_FINETUNE % {"checkpoint": str(t5x_checkpoint)}
  finetuned = runner.train("t5x_user_finetune", [_t5x_file(tmp_path, "ft.gin", finetune)])
  assert "keep_step = True" in (finetuned / "config.gin").read_text()
  assert sorted(p.name for p in (finetuned / "checkpoints").iterdir()) == ["2"]


def _other_architecture(step_dir: pathlib.Path, tmp_path: pathlib.Path) -> pathlib.Path:
  from gbt_t5x.train import t5x_checkpoints
  import numpy as np
  del step_dir  # A checkpoint of another (one-parameter) network.
  params = {"encoder": {"layers_0": {"attention": {"query": {"kernel": np.zeros((8, 8))}}}}}
  return pathlib.Path(t5x_checkpoints.write(params, 0, str(tmp_path / "other")))


def _truncated_array(step_dir: pathlib.Path, tmp_path: pathlib.Path) -> pathlib.Path:
  import shutil
  copy = tmp_path / "checkpoint_0"
  shutil.copytree(step_dir, copy)
  chunk = copy / "target.token_embedder.embedding" / "0.0"
  chunk.write_bytes(chunk.read_bytes()[:100])
  return copy


def _no_checkpoint_file(step_dir: pathlib.Path, tmp_path: pathlib.Path) -> pathlib.Path:
  import shutil
  copy = tmp_path / "checkpoint_0"
  shutil.copytree(step_dir, copy)
  (copy / "checkpoint").unlink()
  return copy


BAD_T5X_CHECKPOINTS = {
    "other_architecture": (_other_architecture, "does not fit the model: model parameter "
                           "decoder/decoder_norm/scale (shape (32,)) is not in the checkpoint"),
    "truncated_array_file": (_truncated_array, "parameter token_embedder/embedding cannot be "
                             "read (corrupt or incomplete"),
    "no_checkpoint_file": (_no_checkpoint_file, "has no `checkpoint` file"),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(BAD_T5X_CHECKPOINTS))
def test_bad_t5x_checkpoint_is_one_line_and_writes_nothing(runner, t5x_runs, tmp_path, case):
  damage, fragment = BAD_T5X_CHECKPOINTS[case]
  checkpoint = damage(t5x_runs[1], tmp_path)
  model_dir = tmp_path / "run"
  finetune = T5X_FINETUNE % {"checkpoint": str(checkpoint)}
  rc, out, err = runner(f"t5x_bad_{case}", "gbt_t5x.train.__main__",
                        [_t5x_file(tmp_path, "ft.gin", finetune),
                         f"--gin.MODEL_DIR={str(model_dir)!r}"])
  last = [line for line in err.splitlines() if line.strip()][-1]
  assert rc == 2 and "Traceback" not in err and last.startswith("error: "), err[-3000:]
  assert fragment in last, last
  assert not model_dir.exists()


def test_unsupported_t5x_binding_is_one_line_naming_it(tmp_path, monkeypatch):
  _entry_points(monkeypatch)
  path = tmp_path / "pretrain.gin"
  path.write_text(T5X_PRETRAIN + "train_script.train.stats_period = 100\n")
  gin.clear_config()
  try:
    with pytest.raises(ValueError) as excinfo:
      gin_utils.parse_gin([str(path)], REQUIRED)
  finally:
    gin.clear_config()
  assert "train.stats_period is not supported by gbt_t5x" in str(excinfo.value)
  assert "\n" not in str(excinfo.value)


SMOKE_MIXTURE = "gbt_t5x_smoke_c4_and_wmt"


@pytest.mark.slow
@pytest.mark.parametrize("sampling", ["loss_weights", "sampling_rates"])
def test_mixture_weights_file_runs_on_a_mixture_of_mock_c4_and_wmt(runner, sampling):
  """gin/guided/mixture_weights.gin on a SeqIO mixture of the mock C4 and WMT tasks: one guided
  weight per member task, named by task in the trajectory, both ways of applying them; the
  learned weights export as a mixture (`--as_mixture`) that a plain run trains on."""
  from gbt_t5x.guided import export
  seqio.MixtureRegistry.remove(SMOKE_MIXTURE)
  seqio.MixtureRegistry.add(SMOKE_MIXTURE, [("c4_span_corruption", 2.0),
                                            ("wmt19_translate_lt_en", 1.0)])
  try:
    model_dir = runner.train(f"guided/mixture_weights.gin[{sampling}]", [
        "--gin_file=experiments/real/c4_t5_small_guided.gin",
        "--gin_file=guided/mixture_weights.gin", f"--gin.MIXTURE_OR_TASK_NAME={SMOKE_MIXTURE!r}",
        "--gin.GUIDE_MIXTURE_OR_TASK_NAME='c4_span_corruption_guide'",
        f"--gin.MIXTURE_SAMPLING={sampling!r}", "--gin.MIXTURE_RESAMPLE_EVERY=1", *GUIDED])
    rows = _jsonl(model_dir / "guided_trajectory.jsonl")
    assert [r["step"] for r in rows] == [1, 2], rows
    assert rows[0]["entry_names"] == {"data_weights": ["c4_span_corruption",
                                                       "wmt19_translate_lt_en"]}
    assert list(rows[-1]["values"]) == ["data_weights"]
    if sampling == "sampling_rates":
      return
    assert export.main([str(model_dir), "--as_mixture", "--rates", "mean"]) == 0
    exported = model_dir / "learned_mixture.gin"
    assert f"name = '{SMOKE_MIXTURE}_learned'" in exported.read_text()
    replay = runner.train("learned mixture replay", [
        "--gin_file=models/t5_1_1_tiny.gin", "--gin_file=runs/pretrain.gin",
        f"--gin_file={exported}"])
    weights = dict(zip(rows[0]["entry_names"]["data_weights"],
                       np.mean([r["values"]["data_weights"] for r in rows], axis=0)))
    learned = seqio.get_mixture_or_task(f"{SMOKE_MIXTURE}_learned")
    assert {t.name: learned.get_rate(t) for t in learned.tasks} == pytest.approx(
        {"c4_span_corruption": 2.0 * weights["c4_span_corruption"],
         "wmt19_translate_lt_en": 1.0 * weights["wmt19_translate_lt_en"]})
    config = (replay / "config.gin").read_text()
    assert "MIXTURE_OR_TASK_NAME = @data_ids.learned_mixture()" in config
    assert f"'{SMOKE_MIXTURE}_learned'" in config
  finally:
    seqio.MixtureRegistry.remove(SMOKE_MIXTURE)
    seqio.MixtureRegistry.remove(f"{SMOKE_MIXTURE}_learned")
