"""Bad input of every kind ends in one line `error: ...` (exit code 2, no traceback) and leaves
the model dir exactly as it was (names, sizes, mtimes, bytes).

The table extends `tests/train/test_cli.py` (which covers unknown gin parameters/configurables/
files, binding syntax, an unknown train task, zero lengths, a small vocabulary and a checkpoint of
another `emb_dim`) with: multi-process flags, gin flag/file/macro errors, guided hyper-parameter
specs (through gin and directly through `validate_specs`), corrupt or mismatched checkpoints, and
empty or truncated data files.

Runs go through `gin_utils.run` *in this process* (what `python -m gbt_t5x.train` calls), with
stderr captured, because a subprocess start costs ~15 s here: gin files `import __main__ as
train_script`, so the test makes pytest's `__main__.train` the `train` function for the duration.
Gin's global config is cleared around every run.
"""
from __future__ import annotations

import json
import os
import pathlib
import shutil
import sys

import gin
import jax
import numpy as np
import pytest

from gbt_t5x import gin_utils
from gbt_t5x.guided import specs as specs_lib
from gbt_t5x.train import optimizers as optimizers_lib
from gbt_t5x.train import train_lib
from tests.train.test_cli import DEMO_CONFIG, snapshot

BASE_FLAGS = (
    "--gin_file=experiments/demo_nmt.gin", "--gin.TRAIN_STEPS=2", "--gin.BATCH_SIZE=8",
    "--gin.EVAL_PERIOD=1", "--gin.LOG_EVERY=1", "--gin.NUM_EMBEDDINGS=512",
    "--gin.train_script.train.train_eval_dataset_cfg=None",
    "--gin.train_script.train.infer_eval_dataset_cfg=None", "--gin.BEST_CHECKPOINT_METRIC=None")
GUIDED_FLAGS = ("--gin_file=experiments/demo_nmt_guided.gin", "--gin.GUIDE_BATCH_SIZE=8")


# ----------------------------------------------------------------------------------------------
# Harness

@pytest.fixture(scope="module")
def world(tmp_path_factory):
  """The small demo world (shared by this module); returns its folder."""
  from gbt_t5x.data import demo_world
  path = tmp_path_factory.mktemp("bad_input_world")
  demo_world.ensure_demo_world(str(path), **DEMO_CONFIG)
  return path


@pytest.fixture
def cli(world, monkeypatch, capsys):
  """`cli(model_dir, *flags, world=None) -> (rc, stderr)`: one in-process entry-point run."""
  import gbt_t5x.train.__main__ as train_main
  monkeypatch.setattr(sys.modules["__main__"], "train", train_lib.train, raising=False)
  monkeypatch.setenv("GBT_T5X_DEMO_CONFIG", json.dumps(DEMO_CONFIG))
  for name in ("GBT_T5X_COORDINATOR_ADDRESS", "GBT_T5X_NUM_PROCESSES", "GBT_T5X_PROCESS_ID"):
    monkeypatch.delenv(name, raising=False)

  def run(model_dir, *flags, world_dir=None, base=BASE_FLAGS):
    monkeypatch.setenv("GBT_T5X_DEMO_DIR", str(world_dir or world))
    gin.clear_config()
    capsys.readouterr()
    try:
      rc = gin_utils.run(train_main.main, "test",
                         argv=[*base, f"--gin.MODEL_DIR={str(model_dir)!r}", *flags])
    finally:
      gin.clear_config()
    return rc, capsys.readouterr().err

  return run


def assert_one_line_error(rc: int, stderr: str, *fragments: str) -> str:
  detail = f"rc={rc}\nstderr:\n{stderr[-3000:]}"
  assert rc == 2, detail
  assert "Traceback" not in stderr, detail
  last = [line for line in stderr.splitlines() if line.strip()][-1]
  assert last.startswith("error: "), detail
  for fragment in fragments:
    assert fragment in last, f"{fragment!r} not in {last!r}"
  return last


def fresh_dir_with_file(tmp_path: pathlib.Path) -> pathlib.Path:
  """A model dir that already holds something (a refused start must leave it as it is)."""
  model_dir = tmp_path / "run"
  model_dir.mkdir()
  (model_dir / "notes.txt").write_text("an earlier run's notes\n")
  return model_dir


# ----------------------------------------------------------------------------------------------
# Flags and gin: fail before anything heavy.

def _gin_file_with_syntax_error(tmp_path):
  path = tmp_path / "broken.gin"
  path.write_text("include 'experiments/demo_nmt.gin'\nTRAIN_STEPS = (3\n")
  return [f"--gin_file={path}"], [f"gin file {path}", "syntax error"]


FLAG_CASES = {
    "multiprocess_without_coordinator": (
        lambda tmp: (["--process_count=2", "--process_index=0"],
                     ["a multi-process run needs the coordinator address, the process count and "
                      "this process's id (got address=None, count=2, id=0)"])),
    "multiprocess_without_process_index": (
        lambda tmp: (["--coordinator_address=127.0.0.1:1", "--process_count=2"],
                     ["(got address=127.0.0.1:1, count=2, id=None)"])),
    "process_index_out_of_range": (
        lambda tmp: (["--coordinator_address=127.0.0.1:1", "--process_count=2",
                      "--process_index=2"], ["process id 2 is not in [0, 2)"])),
    "gin_flag_without_value": (
        lambda tmp: (["--gin.TRAIN_STEPS"],
                     ["gin flag '--gin.TRAIN_STEPS' has no value; write --gin.TRAIN_STEPS=VALUE"])),
    "gin_file_syntax_error": _gin_file_with_syntax_error,
    "unknown_macro": (
        lambda tmp: (["--gin.TRAIN_STEPS=%NO_SUCH_MACRO"], ["NO_SUCH_MACRO"])),
    "total_steps_zero": (
        lambda tmp: (["--gin.TRAIN_STEPS=0"], ["total_steps must be > 0, got 0"])),
}


@pytest.mark.parametrize("case", sorted(FLAG_CASES))
def test_bad_flags_and_gin(case, cli, tmp_path):
  flags, fragments = FLAG_CASES[case](tmp_path)
  model_dir = fresh_dir_with_file(tmp_path)
  before = snapshot(model_dir)
  rc, err = cli(model_dir, *flags)
  assert_one_line_error(rc, err, *fragments)
  assert snapshot(model_dir) == before


def test_process_count_from_environment_must_be_an_integer(cli, tmp_path, monkeypatch):
  model_dir = fresh_dir_with_file(tmp_path)
  before = snapshot(model_dir)
  monkeypatch.setenv("GBT_T5X_COORDINATOR_ADDRESS", "127.0.0.1:1")
  monkeypatch.setenv("GBT_T5X_NUM_PROCESSES", "two")
  monkeypatch.setenv("GBT_T5X_PROCESS_ID", "0")
  rc, err = cli(model_dir)
  assert_one_line_error(rc, err, "GBT_T5X_NUM_PROCESSES='two' is not an integer")
  assert snapshot(model_dir) == before
  assert not jax.distributed.is_initialized()


# ----------------------------------------------------------------------------------------------
# Guided hyper-parameter specs: directly (instant), and two through the whole entry point.

def _adamw_names():
  params = {"dense": {"kernel": np.zeros((4, 4), np.float32)}}
  return optimizers_lib.hyperparam_names(optimizers_lib.adamw(), params)


SPEC_CASES = {
    "unknown_name": (
        [specs_lib.GuidedHParam("learning_rat", 1.0)],
        "unknown guided hyper-parameter 'learning_rat'; valid names: ['learning_rate'"),
    "init_below_range": (
        [specs_lib.GuidedHParam("learning_rate", 0.001, "exp", lower=0.01, upper=100.0)],
        "guided hyper-parameter 'learning_rate': init 0.001 is outside [lower, upper] = "
        "[0.01, 100.0]"),
    "init_on_sigmoid_bound": (
        [specs_lib.GuidedHParam("label_smoothing", 0.0, "sigmoid", lower=0.0, upper=0.5)],
        "init 0.0 is on a bound of the sigmoid range [0.0, 0.5], where it can never move"),
    "decay_rate_with_adamw": (
        [specs_lib.GuidedHParam("decay_rate", 0.8, "sigmoid", lower=0.5, upper=0.99)],
        "guided hyper-parameter 'decay_rate' is not a hyper-parameter of the chosen optimizer; "
        "its hyper-parameters are ['b1', 'b2'"),
    "label_smoothing_upper_above_half": (
        [specs_lib.GuidedHParam("label_smoothing", 0.1, "sigmoid", lower=0.0, upper=0.9)],
        "guided hyper-parameter 'label_smoothing': needs an upper bound <= 0.5, got upper=0.9"),
    "duplicate_name": (
        [specs_lib.GuidedHParam("learning_rate", 1.0), specs_lib.GuidedHParam("b1", 0.9,
                                                                              "sigmoid"),
         specs_lib.GuidedHParam("learning_rate", 2.0)],
        "duplicate guided hyper-parameter 'learning_rate'"),
}


@pytest.mark.parametrize("case", sorted(SPEC_CASES))
def test_bad_guided_specs(case):
  specs, fragment = SPEC_CASES[case]
  with pytest.raises(ValueError) as info:
    specs_lib.validate_specs(specs, _adamw_names())
  message = str(info.value)
  assert "\n" not in message, message
  assert fragment in message, message


@pytest.mark.slow
@pytest.mark.parametrize("case", ["b1_init_on_sigmoid_bound", "unknown_guide_task"])
def test_bad_guided_config_through_the_entry_point(case, cli, tmp_path):
  flags, fragments = {
      "b1_init_on_sigmoid_bound": (
          ["--gin_file=experiments/demo_nmt_guided_all.gin",
           "--gin.b1/specs.GuidedHParam.init=0.9999"],
          ["guided hyper-parameter 'b1': init 0.9999 is on a bound of the sigmoid range "
           "[0.0, 0.9999]"]),
      "unknown_guide_task": (
          ["--gin.GUIDE_MIXTURE_OR_TASK_NAME='demo_nmt_guid'"],
          ["unknown SeqIO task or mixture 'demo_nmt_guid'; did you mean demo_nmt_guide"]),
  }[case]
  model_dir = fresh_dir_with_file(tmp_path)
  before = snapshot(model_dir)
  rc, err = cli(model_dir, *GUIDED_FLAGS, *flags)
  assert_one_line_error(rc, err, *fragments)
  assert snapshot(model_dir) == before


# ----------------------------------------------------------------------------------------------
# Checkpoints: corrupt or of another model. One good plain run (checkpoints 1 and 2) is copied.

@pytest.fixture(scope="module")
def good_run(world, tmp_path_factory):
  import gbt_t5x.train.__main__ as train_main
  model_dir = tmp_path_factory.mktemp("good") / "run"
  saved = {k: os.environ.get(k) for k in ("GBT_T5X_DEMO_DIR", "GBT_T5X_DEMO_CONFIG")}
  main_module = sys.modules["__main__"]
  had_train = hasattr(main_module, "train")
  old_train = getattr(main_module, "train", None)
  os.environ.update(GBT_T5X_DEMO_DIR=str(world), GBT_T5X_DEMO_CONFIG=json.dumps(DEMO_CONFIG))
  main_module.train = train_lib.train
  gin.clear_config()
  try:
    rc = gin_utils.run(train_main.main, "test",
                       argv=[*BASE_FLAGS, f"--gin.MODEL_DIR={str(model_dir)!r}"])
  finally:
    gin.clear_config()
    for k, v in saved.items():
      if v is None:
        os.environ.pop(k, None)
      else:
        os.environ[k] = v
    if had_train:
      main_module.train = old_train
    else:
      del main_module.train
  assert rc == 0
  assert sorted(p.name for p in (model_dir / "checkpoints").iterdir()) == ["1", "2"]
  return model_dir


def _truncate_arrays(step_dir: pathlib.Path) -> None:
  files = [p for p in (step_dir / "state").rglob("*") if p.is_file() and p.parent.name == "d"]
  assert files
  for path in files:
    os.truncate(path, path.stat().st_size // 2)


def _corrupt_manifest(step_dir: pathlib.Path) -> None:
  path = step_dir / "manifest" / "metadata"
  path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])


def _drop_state_item(step_dir: pathlib.Path) -> None:
  shutil.rmtree(step_dir / "state")


# A damaged checkpoint with a good older one is a fallback, not an error (tests/faults/): the
# damage cases here damage every checkpoint.
_NONE_VERIFIES = "no checkpoint in {ckpt} verifies (steps 2, 1); the newest: "
CHECKPOINT_CASES = {
    "truncated_array_files": (
        _truncate_arrays, [],
        [_NONE_VERIFIES + "checkpoint step 2 in {ckpt} is unreadable (corrupt or incomplete: "]),
    "corrupt_manifest_json": (
        _corrupt_manifest, [],
        [_NONE_VERIFIES + "checkpoint step 2 in {ckpt} is unreadable (corrupt or incomplete: "
         "JSONDecodeError"]),
    "state_item_missing": (
        _drop_state_item, [],
        [_NONE_VERIFIES + "checkpoint step 2 in {ckpt} is unreadable (corrupt or incomplete: "
         "KeyError"]),
    "other_vocab_size": (
        None, ["--gin.NUM_EMBEDDINGS=640"],
        ["checkpoint step 2 in {ckpt} does not fit the target: leaf "
         ".params['decoder']['logits_dense']['kernel']: checkpoint shape (128, 512) != target "
         "shape (128, 640)"]),
    "plain_checkpoint_resumed_guided": (
        None, list(GUIDED_FLAGS),
        ["checkpoint step 2 in {ckpt} does not fit the target: target leaf .guided",
         "is not in the checkpoint"]),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(CHECKPOINT_CASES))
def test_bad_checkpoint(case, cli, good_run, tmp_path):
  damage, flags, fragments = CHECKPOINT_CASES[case]
  model_dir = tmp_path / "run"
  shutil.copytree(good_run, model_dir)
  if damage is not None:
    for step in ("1", "2"):
      damage(model_dir / "checkpoints" / step)
  before = snapshot(model_dir)
  ckpt = model_dir / "checkpoints"
  rc, err = cli(model_dir, *flags)
  assert_one_line_error(rc, err, *[f.format(ckpt=ckpt) for f in fragments])
  assert snapshot(model_dir) == before


# ----------------------------------------------------------------------------------------------
# Data files: an empty train split, a truncated TSV line, an empty guide split.

def _damaged_world(world: pathlib.Path, dest: pathlib.Path, file: str, how: str) -> pathlib.Path:
  shutil.copytree(world, dest)
  path = dest / file
  lines = path.read_text().splitlines(keepends=True)
  if how == "empty":
    path.write_text(lines[0])  # Header only.
  elif how == "truncated_line":
    first = lines[1].split("\t")
    path.write_text("".join([lines[0], "\t".join(first[:2]) + "\n", *lines[2:]]))
  return dest


DATA_CASES = {
    "empty_train_tsv": ("train.tsv", "empty", (),
                        ["task demo_nmt split 'train' yields no examples (batch_size 8"]),
    "truncated_train_line": ("train.tsv", "truncated_line", (),
                             ["task demo_nmt split 'train': malformed input data near batch 0: "
                              "InvalidArgumentError", "Expect 4 fields but have 2"]),
    "empty_guide_tsv": ("guide.tsv", "empty", GUIDED_FLAGS,
                        ["task demo_nmt_guide split 'train' yields no examples"]),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(DATA_CASES))
def test_bad_data_files(case, cli, world, tmp_path):
  file, how, flags, fragments = DATA_CASES[case]
  bad_world = _damaged_world(world, tmp_path / "world", file, how)
  model_dir = fresh_dir_with_file(tmp_path)
  before = snapshot(model_dir)
  rc, err = cli(model_dir, *flags, world_dir=bad_world)
  assert_one_line_error(rc, err, *fragments)
  assert snapshot(model_dir) == before


# ----------------------------------------------------------------------------------------------
# T5X users' habits: the task module as a binding, unreadable vocabulary / data dir, wrong types.

_MODULE_WITH_MIXTURE = '''
import seqio
from gbt_t5x_tasks import demo  # noqa: F401
if "binding_only_mixture" not in seqio.MixtureRegistry.names():
  seqio.MixtureRegistry.add("binding_only_mixture", [("demo_nmt", 1.0)])
'''


def _task_module(tmp, monkeypatch):
  """A module, importable only by name, that registers `binding_only_mixture`."""
  (tmp / "gbt_smoke_binding_module.py").write_text(_MODULE_WITH_MIXTURE)
  monkeypatch.syspath_prepend(str(tmp))
  return (["--gin.MIXTURE_OR_TASK_NAME='binding_only_mixture'",
           "--gin.MIXTURE_OR_TASK_MODULE='gbt_smoke_binding_module'", "--gin.NUM_EMBEDDINGS=256"],
          # Found (the module was imported before the lookup): fails at the vocabulary check.
          ["task binding_only_mixture inputs vocabulary has 500 ids but the model's vocab_size "
           "is 256"])


HABIT_CASES = {
    "task_module_only_as_a_binding": _task_module,
    "task_module_not_importable": lambda tmp, mp: (
        ["--gin.MIXTURE_OR_TASK_MODULE='no_such_tasks_module'"],
        ["MIXTURE_OR_TASK_MODULE 'no_such_tasks_module' cannot be imported: No module named "
         "'no_such_tasks_module'"]),
    "vocabulary_file_missing": lambda tmp, mp: (
        ["--gin.VOCABULARY=@seqio.SentencePieceVocabulary()",
         f"--gin.seqio.SentencePieceVocabulary.sentencepiece_model_file='{tmp}/no/spm.model'"],
        [f"the model's output vocabulary: cannot read the SentencePiece model {tmp}/no/spm.model "
         "(NotFoundError"]),
    "tfds_data_dir_missing": lambda tmp, mp: (
        [f"--tfds_data_dir={tmp}/no_tfds"],
        [f"--tfds_data_dir {tmp}/no_tfds is not a folder"]),
    "train_steps_a_string": lambda tmp, mp: (
        ["--gin.TRAIN_STEPS='abc'"],
        ["gin binding \"TRAIN_STEPS = 'abc'\": TRAIN_STEPS must be an int (train until this "
         "global step (steps)), got str 'abc'"]),
    "pack_an_int": lambda tmp, mp: (
        ["--gin.PACK=1"], ["gin binding 'PACK = 1': PACK must be True/False"]),
    "batch_size_a_bool": lambda tmp, mp: (
        ["--gin.BATCH_SIZE=True"], ["gin binding 'BATCH_SIZE = True': BATCH_SIZE must be an int"]),
}


@pytest.mark.parametrize("case", sorted(HABIT_CASES))
def test_t5x_habits(case, cli, tmp_path, monkeypatch):
  flags, fragments = HABIT_CASES[case](tmp_path, monkeypatch)
  model_dir = fresh_dir_with_file(tmp_path)
  before = snapshot(model_dir)
  rc, err = cli(model_dir, *flags)
  assert_one_line_error(rc, err, *fragments)
  assert snapshot(model_dir) == before


def test_wrong_type_in_a_gin_file_names_the_macro(cli, tmp_path):
  path = tmp_path / "typo.gin"
  path.write_text("RANDOM_SEED = '0'\n")  # Parsed after experiments/demo_nmt.gin.
  rc, err = cli(fresh_dir_with_file(tmp_path), f"--gin_file={path}")
  assert_one_line_error(rc, err, "gin macro RANDOM_SEED (in a gin file): RANDOM_SEED must be an "
                        "int (params init and dropout seed), got str '0'")


def test_unreadable_sentencepiece_model_is_one_line_naming_the_path(tmp_path):
  from gbt_t5x.data import vocabularies
  missing = tmp_path / "vocab" / "spm.model"
  vocab = vocabularies.sentencepiece_vocabulary(missing)
  with pytest.raises(ValueError) as info:
    vocabularies.readable_vocab_size(vocab, "task wmt19_translate_lt_en inputs vocabulary")
  message = str(info.value)
  assert "\n" not in message, message
  assert message.startswith("task wmt19_translate_lt_en inputs vocabulary: cannot read the "
                            f"SentencePiece model {missing} (NotFoundError"), message
