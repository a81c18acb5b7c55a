"""Tests of `python -m gbt_t5x.tasks_inspect` on the demo task (tiny world in a tmp dir)."""
import json
import os
import subprocess
import sys

import pytest
import seqio

from gbt_t5x import tasks_inspect
from gbt_t5x.data import demo_world as dw
from gbt_t5x_tasks import wmt

TINY = dict(seed=7, num_train=300, num_guide=40, num_dev=30, num_test=20, num_mono=100,
            vocab_size=300)


@pytest.fixture(scope="module")
def demo_env(tmp_path_factory):
  """Points the demo tasks at a tiny world in a tmp dir (generated on first use)."""
  data_dir = tmp_path_factory.mktemp("inspect_world")
  with pytest.MonkeyPatch.context() as mp:
    mp.setenv(dw.ENV_DATA_DIR, str(data_dir))
    mp.setenv(dw.ENV_CONFIG, json.dumps(TINY))
    yield data_dir


def test_prints_tokens_and_decoded_text_of_demo_examples(demo_env, capsys):
  rc = tasks_inspect.main(["demo_nmt", "--num", "2", "--module", "gbt_t5x_tasks.demo"])
  out, err = capsys.readouterr()
  assert rc == 0 and not err
  rows = dw.read_tsv(demo_env / "train.tsv")[:2]
  assert out.splitlines()[0] == "task demo_nmt, split train, lengths: untrimmed"
  assert out.count("--- example ") == 2
  for row in rows:
    # the pretokenized strings, and the (untrimmed) tokens decoded back to the same text
    assert f"inputs_pretokenized: {dw.TASK_PREFIX + row['source']!r}" in out
    assert f"  decoded: {dw.TASK_PREFIX + row['source']!r}" in out
    assert f"  decoded: {row['target']!r}" in out
    assert f"noise_bucket (int32, shape []): {row['noise_bucket']}" in out
  token_lines = [line for line in out.splitlines() if line.startswith("targets (int32, length ")]
  assert len(token_lines) == 2 and all(line.endswith(", 1]") for line in token_lines)  # EOS


def test_lengths_trim_the_tokens(demo_env, capsys):
  assert tasks_inspect.main(["demo_nmt", "--num", "1", "--module", "gbt_t5x_tasks.demo",
                             "--lengths", "inputs=5,targets=4"]) == 0
  out = capsys.readouterr().out
  assert "inputs (int32, length 5): " in out and "targets (int32, length 4): " in out


@pytest.mark.parametrize("argv, message", [
    (["demo_nmt", "--split", "dev"], "task demo_nmt has no split 'dev'; its splits are test, "
                                     "train, validation"),
    (["demo_nmt", "--lengths", "inputs=64,targets"], "--lengths wants FEATURE=POSITIVE_INT"),
    (["demo_nmt", "--num", "0"], "--num must be a positive int, got 0"),
    (["demo_nmt", "--module", "gbt_t5x_tasks.no_such_module"],
     "cannot import task module 'gbt_t5x_tasks.no_such_module'"),
    (["demo_nmt_gide"], "unknown SeqIO task or mixture 'demo_nmt_gide'; did you mean "
                        "demo_nmt_guide"),
])
def test_bad_input_is_one_error_line_and_exit_2(demo_env, capsys, argv, message):
  assert tasks_inspect.main(argv + ["--module", "gbt_t5x_tasks.demo"]) == 2
  out, err = capsys.readouterr()
  assert not out
  assert err.count("\n") == 1 and err.startswith("error: ") and message in err


def test_unprepared_tfds_dataset_names_the_build_command(tmp_path, capsys):
  (name, *_) = wmt.register_wmt_tasks(
      seqio.ByteVocabulary(), configs=[c for c in wmt.WMT_CONFIGS if c.pair == ("lt", "en")],
      name_suffix="_inspect", tfds_data_dir=str(tmp_path))
  try:
    assert tasks_inspect.main([name, "--module", "gbt_t5x_tasks.wmt"]) == 2
  finally:
    for task in list(seqio.TaskRegistry.names()):
      if task.endswith("_inspect") or task.endswith("_inspect_guide"):
        seqio.TaskRegistry.remove(task)
  err = capsys.readouterr().err
  assert err.count("\n") == 1
  assert "TFDS dataset wmt19_translate/lt-en:1.0.0 of task wmt19_translate_lt_en_inspect" in err
  assert f"not prepared at {tmp_path}/wmt19_translate/lt-en/1.0.0" in err
  assert "`tfds build wmt19_translate --config lt-en --data_dir DIR`" in err
  assert "--tfds_data_dir DIR" in err


def test_module_entry_point_lists_close_matches_and_exits_2():
  env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
  proc = subprocess.run(
      [sys.executable, "-m", "gbt_t5x.tasks_inspect", "wmt19_translate_lt_enn",
       "--module", "gbt_t5x_tasks.wmt"],
      capture_output=True, text=True, env=env, timeout=600, check=False)
  assert proc.returncode == 2 and not proc.stdout
  errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
  assert errors == [errors[0]] and proc.stderr.rstrip().endswith(errors[0])
  assert errors[0].startswith("error: unknown SeqIO task or mixture 'wmt19_translate_lt_enn'; "
                              "did you mean wmt19_translate_lt_en")
