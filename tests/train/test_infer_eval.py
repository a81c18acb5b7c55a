"""Tests of decoding-based evaluation: the infer-eval loop, BLEU through SeqIO, the eval / infer
entry points, infer-eval during training (best checkpoint), and finetuning from a checkpoint.

In-process tests use a tiny random T5 on a small demo world and a 4 x 2 (data x model) CPU mesh;
the CLI tests reuse `test_cli`'s world and helpers (each start costs ~10-15 s).
"""
from __future__ import annotations

import json
import subprocess
import sys

import jax
import numpy as np
import pytest
import sacrebleu
import seqio

from gbt_t5x.models import encoder_decoder, network
from gbt_t5x.train import data as data_lib
from gbt_t5x.train import eval_hooks
from gbt_t5x.train import infer_eval
from gbt_t5x.train import optimizers
from gbt_t5x.train import train_lib
from gbt_t5x.train.partitioning import PjitPartitioner
from tests.train.test_cli import (DEMO_CONFIG, REPO, assert_user_error, checkpoint_steps,
                                  cli_env, metrics, run_cli, saved_state)  # noqa: F401

LENGTHS = {"inputs": 48, "targets": 12}


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
  """The demo tasks on a small world in a tmp dir (same config as the CLI tests)."""
  from gbt_t5x.data import demo_world as dw
  with pytest.MonkeyPatch.context() as mp:
    mp.setenv(dw.ENV_DATA_DIR, str(tmp_path_factory.mktemp("demo_world")))
    mp.setenv(dw.ENV_CONFIG, json.dumps(DEMO_CONFIG))
    from gbt_t5x_tasks import demo as demo_tasks  # pylint: disable=g-import-not-at-top
    yield demo_tasks


@pytest.fixture(scope="module")
def tiny(demo):
  """A tiny random T5 over the demo vocabulary, its params on a data=4 x model=2 mesh."""
  config = network.T5Config(vocab_size=512, emb_dim=16, num_heads=2, head_dim=8, mlp_dim=32,
                            num_encoder_layers=1, num_decoder_layers=1, dropout_rate=0.0,
                            dtype="float32")
  model = encoder_decoder.EncoderDecoderModel(network.Transformer(config), demo.VOCABULARY,
                                              demo.VOCABULARY, optimizer_def=optimizers.adamw())
  partitioner = PjitPartitioner(num_partitions=2)
  cfg = data_lib.DatasetConfig("demo_nmt", LENGTHS, "validation", batch_size=4, shuffle=False)
  state, axes = train_lib.initial_train_state(model, train_lib.input_shapes(cfg), partitioner,
                                              jax.random.PRNGKey(3))
  return model, partitioner, cfg, state.params, axes.params


# ----------------------------------------------------------------------------------------------
# BLEU through SeqIO equals sacrebleu.

def test_demo_bleu_metric_equals_sacrebleu(demo):
  task = seqio.get_mixture_or_task("demo_nmt")
  targets = ["The tall tables wrote the famous hill.", "Some rabbits did not build that doctor.",
             "A dog.", "The weak dogs jump from a kind strange beach."]
  predictions = ["The tall table wrote a famous hill.", "Some rabbits did build the doctor.",
                 "A dog.", "dogs jump beach"]
  fn = task.predict_metric_fns[0]  # BLEU; then exact match and word F1
  got = fn(targets=targets, predictions=predictions)
  want = sacrebleu.corpus_bleu(predictions, [targets]).score
  assert set(got) == {"bleu"} and got["bleu"] == pytest.approx(want, abs=1e-9)
  assert 0.0 < want < 100.0  # A partial match: the comparison is not trivially 0 or 100.
  # bytes (as seqio hands pretokenized targets) give the same score.
  as_bytes = fn(targets=[t.encode() for t in targets], predictions=predictions)
  assert as_bytes["bleu"] == pytest.approx(want, abs=1e-9)


# ----------------------------------------------------------------------------------------------
# The infer-eval loop.

def _direct_decodes(model, params, cfg, n, decoder_params):
  """`predict_batch` on the feature-converted split, detokenized, without the evaluator."""
  ds = data_lib.get_dataset(dataclasses_replace(cfg, num_epochs=1, batch_size=n))
  batch = next(ds.as_numpy_iterator())
  tokens = jax.jit(lambda p, b: model.predict_batch(p, b, decoder_params=decoder_params))(
      params, {"encoder_input_tokens": batch["encoder_input_tokens"],
               "decoder_target_tokens": batch["decoder_target_tokens"]})
  return [model.output_vocabulary.decode(row.tolist()) for row in np.asarray(tokens)]


def dataclasses_replace(cfg, **kw):
  import dataclasses
  return dataclasses.replace(cfg, **kw)


@pytest.mark.parametrize("decoder_params", [None, {"method": "beam", "beam_size": 3, "alpha": 0.6}])
def test_infer_eval_decodes_equal_predict_batch_and_bleu_matches(tiny, decoder_params):
  model, partitioner, cfg, params, param_axes = tiny
  n = 10  # batches of 4 on the mesh: the last is padded with 2 empty rows.
  evaluator = infer_eval.InferEvaluator(model, cfg, partitioner, param_axes,
                                        decoder_params=decoder_params, num_examples=n)
  results = evaluator.evaluate(params)
  assert list(results) == ["demo_nmt"]
  rows = results["demo_nmt"].rows
  assert len(rows) == n
  want = _direct_decodes(model, params, cfg, n, decoder_params)
  assert [r["prediction"] for r in rows] == want  # exact strings, in dataset order
  assert len(set(want)) > 1  # a random model still gives distinct decodes per input
  # Targets/inputs are the task's pretokenized strings, in dataset order.
  examples = list(seqio.get_mixture_or_task("demo_nmt").get_dataset(
      LENGTHS, split="validation", shuffle=False).take(n).as_numpy_iterator())
  assert [r["target"] for r in rows] == [e["targets_pretokenized"].decode() for e in examples]
  assert [r["input"] for r in rows] == [e["inputs_pretokenized"].decode() for e in examples]
  # BLEU is sacrebleu's on exactly these strings.
  bleu = sacrebleu.corpus_bleu(want, [[r["target"] for r in rows]]).score
  assert results["demo_nmt"].metrics["bleu"] == pytest.approx(bleu, abs=1e-9)
  # ... and equals SeqIO's own metric path (LegacyMetric over the raw decode tokens).
  task = seqio.get_mixture_or_task("demo_nmt")
  tokens = evaluator.predict_tokens(params, "demo_nmt")
  assert tokens.shape == (n, LENGTHS["targets"]) and tokens.dtype == np.int32
  fn = task.predict_metric_fns[0]
  metric = seqio.metrics.LegacyMetric.empty(metric_fn=fn, postprocess_fn=task.postprocess_fn)
  seqio_value = metric.from_model_output(examples, tokens, task.output_features).compute()
  assert seqio_value["bleu"] == pytest.approx(bleu, abs=1e-9)


def test_scoring_decode_scores_equal_a_direct_computation(demo, tiny):
  """`gbt_t5x.scoring.decode_scores` (the evaluator and the demo task's metric fns) gives the
  numbers of decoding with `predict_batch` and scoring by hand against the detokenized target
  ids (cut at the targets length: many are, at 12 tokens)."""
  from gbt_t5x import scoring
  from gbt_t5x.data import metrics as metrics_lib
  model, _, cfg, _, _ = tiny
  state, _ = train_lib.initial_train_state(model, train_lib.input_shapes(cfg), PjitPartitioner(),
                                           jax.random.PRNGKey(5))
  n, vocab = 10, model.output_vocabulary
  got = scoring.decode_scores(model, state.params, "demo_nmt", "validation", LENGTHS, 8, n,
                              "gbt_t5x_tasks.demo")
  direct_cfg = dataclasses_replace(cfg, num_epochs=1, batch_size=n, seed=scoring.EVAL_SEED)
  batch = next(data_lib.get_dataset(direct_cfg).as_numpy_iterator())
  decoded = np.asarray(jax.jit(model.predict_batch)(state.params, batch))
  targets = batch["decoder_target_tokens"]
  predictions = [vocab.decode(row.tolist()) for row in decoded]
  references = [vocab.decode(row.tolist()) for row in targets]
  lengths = (targets > 0).sum(axis=1)
  correct = sum(int((d[:k] == t[:k]).sum()) for d, t, k in zip(decoded, targets, lengths))
  want = {"bleu": sacrebleu.corpus_bleu(predictions, [references]).score,
          "exact_match": float(np.mean([p == r for p, r in zip(predictions, references)])),
          "token_accuracy": correct / int(lengths.sum()),
          "word_f1": metrics_lib.squad_em_f1([[r] for r in references], predictions)["f1"] / 100,
          "num_examples": float(n)}
  assert got == want


def test_infer_eval_bad_input_is_a_one_line_error(tiny):
  model, partitioner, cfg, _, param_axes = tiny
  with pytest.raises(ValueError, match=r"^beam_size must be an int >= 1, got 0$"):
    infer_eval.InferEvaluator(model, cfg, partitioner, param_axes,
                              decoder_params={"method": "beam", "beam_size": 0})
  import gbt_t5x_tasks.demo_pretrain  # noqa: F401  (registers a task without metric fns)
  no_metric = dataclasses_replace(cfg, mixture_or_task_name="demo_span_corruption")
  with pytest.raises(ValueError, match=r"^task demo_span_corruption has no metric_fns"):
    infer_eval.InferEvaluator(model, no_metric, partitioner, param_axes)
  # Decoding without metrics is fine for such a task.
  evaluator = infer_eval.InferEvaluator(model, no_metric, partitioner, param_axes,
                                        require_metrics=False)
  assert [t.name for t in evaluator.tasks] == ["demo_span_corruption"]
  with pytest.raises(ValueError, match=r"^task demo_nmt has no split 'dev'"):
    infer_eval.InferEvaluator(model, dataclasses_replace(cfg, split="dev"), partitioner,
                              param_axes)


def test_best_checkpoint_keeper_keeps_only_improvements(tmp_path):
  state = {"w": jax.numpy.arange(3.0)}
  keeper = eval_hooks.BestCheckpointKeeper(str(tmp_path), "infer_eval/t/bleu", "max")
  assert keeper.update(2, {"infer_eval/t/bleu": 5.0}, state)
  assert not keeper.update(4, {"infer_eval/t/bleu": 4.0}, state)
  assert not keeper.update(5, {"infer_eval/t/bleu": float("nan")}, state)
  assert keeper.update(6, {"infer_eval/t/bleu": 7.5}, state)
  record = json.loads((tmp_path / "best" / "best.json").read_text())
  assert record == {"metric": "infer_eval/t/bleu", "mode": "max", "step": 6, "value": 7.5}
  assert sorted(p.name for p in (tmp_path / "best").iterdir()) == ["6", "best.json"]
  # A resumed run continues from the recorded best; min mode inverts the comparison.
  again = eval_hooks.BestCheckpointKeeper(str(tmp_path), "infer_eval/t/bleu", "max")
  assert not again.improves(7.0) and again.improves(8.0)
  low = eval_hooks.BestCheckpointKeeper(str(tmp_path / "b"), "train_eval/loss", "min")
  assert low.update(1, {"train_eval/loss": 3.0}, state)
  assert low.update(2, {"train_eval/loss": 2.0}, state)
  with pytest.raises(ValueError, match="is not among the evaluation metrics: train_eval/acc"):
    low.update(3, {"train_eval/acc": 1.0}, state)
  with pytest.raises(ValueError, match="needs infer_eval_dataset_cfg"):
    eval_hooks.check_best_metric("infer_eval/t/bleu", "max", True, None)
  with pytest.raises(ValueError, match="must be one of"):
    eval_hooks.check_best_metric("train_eval/loss", "maximum", True, None)


# ----------------------------------------------------------------------------------------------
# Entry points and training with infer-eval, end to end (subprocesses).

def run_entry(env, module, gin_file, *flags, timeout=400) -> subprocess.CompletedProcess:
  argv = [sys.executable, "-m", module, f"--gin_file={gin_file}", "--gin.BATCH_SIZE=8", *flags]
  return subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_train_with_infer_eval_then_eval_and_infer_entries(cli_env, tmp_path):
  model_dir = tmp_path / "run"
  proc = run_cli(cli_env, model_dir, "--gin.INFER_EVAL_EXAMPLES=12")
  assert proc.returncode == 0, proc.stderr[-4000:]
  # infer-eval every EVAL_PERIOD=2 steps: progress line, metrics.jsonl, TensorBoard, best/.
  assert "infer_eval at step 2: demo_nmt/bleu" in proc.stdout and "(12 examples" in proc.stdout
  bleus = {r["step"]: r["infer_eval/demo_nmt/bleu"] for r in metrics(model_dir)
           if "infer_eval/demo_nmt/bleu" in r}
  assert sorted(bleus) == [2, 4]
  assert list((model_dir / "infer_eval").glob("events.out.tfevents.*"))
  best = json.loads((model_dir / "best" / "best.json").read_text())
  assert best["metric"] == "infer_eval/demo_nmt/bleu" and best["mode"] == "max"
  assert best["value"] == max(bleus.values()) and bleus[best["step"]] == best["value"]
  assert checkpoint_steps(model_dir) == [2, 4]  # regular checkpoints untouched by best/

  out = tmp_path / "eval"
  proc = run_entry(cli_env, "gbt_t5x.eval", "experiments/demo_nmt_eval.gin",
                   f"--gin.CHECKPOINT_PATH={str(model_dir)!r}",
                   f"--gin.EVAL_OUTPUT_DIR={str(out)!r}", "--gin.EVAL_SPLIT='validation'",
                   "--gin.INFER_EVAL_EXAMPLES=12")
  assert proc.returncode == 0, proc.stderr[-4000:]
  report = json.loads((out / "metrics.json").read_text())
  assert report["step"] == 4 and report["split"] == "validation"
  assert 0.0 <= report["accuracy"] <= 1.0 and report["loss"] > 0
  rows = [json.loads(l) for l in (out / "predictions.jsonl").read_text().splitlines()]
  assert len(rows) == 12 and set(rows[0]) == {"task", "input", "target", "prediction"}
  bleu = sacrebleu.corpus_bleu([r["prediction"] for r in rows],
                               [[r["target"] for r in rows]]).score
  assert report["infer_eval"]["demo_nmt"]["bleu"] == pytest.approx(bleu, abs=1e-9)
  # The training run's step-4 infer-eval decoded the same 12 dev examples with the same params.
  assert bleus[4] == pytest.approx(bleu, abs=1e-6)

  out = tmp_path / "infer"
  proc = run_entry(cli_env, "gbt_t5x.infer", "experiments/demo_nmt_infer.gin",
                   f"--gin.CHECKPOINT_PATH={str(model_dir / 'best')!r}",
                   f"--gin.INFER_OUTPUT_DIR={str(out)!r}", "--gin.INFER_EXAMPLES=5",
                   "--gin.DECODER_PARAMS={'method': 'beam', 'beam_size': 2, 'alpha': 0.6}")
  assert proc.returncode == 0, proc.stderr[-4000:]
  rows = [json.loads(l) for l in (out / "predictions.jsonl").read_text().splitlines()]
  assert len(rows) == 5 and all(r["task"] == "demo_nmt" for r in rows)
  assert f"checkpoint step {best['step']}" in proc.stdout


BAD_EVALS = {
    "no_checkpoint": ([], ["holds no checkpoint"]),
    "task_without_metric": (
        ["--gin.MIXTURE_OR_TASK_NAME='demo_span_corruption'",
         "--gin.MIXTURE_OR_TASK_MODULE='gbt_t5x_tasks.demo_pretrain'",
         "--gin.EVAL_SPLIT='validation'"],
        ["task demo_span_corruption has no metric_fns"]),
    "beam_size_0": (["--gin.DECODER_PARAMS={'method': 'beam', 'beam_size': 0}"],
                    ["beam_size must be an int >= 1, got 0"]),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(BAD_EVALS))
def test_eval_bad_input_is_a_one_line_error(case, cli_env, tmp_path):
  flags, fragments = BAD_EVALS[case]
  empty = tmp_path / "empty_model_dir"
  empty.mkdir()
  out = tmp_path / "out"
  proc = run_entry(cli_env, "gbt_t5x.eval", "experiments/demo_nmt_eval.gin",
                   f"--gin.CHECKPOINT_PATH={str(empty)!r}", f"--gin.EVAL_OUTPUT_DIR={str(out)!r}",
                   *flags)
  assert_user_error(proc, *fragments)
  assert not out.exists()


# ----------------------------------------------------------------------------------------------
# Finetuning from a checkpoint (gin/experiments/demo_nmt_finetune.gin on top of an experiment).

@pytest.mark.slow
def test_finetune_plain_and_guided_from_a_checkpoint(cli_env, tmp_path):
  source = tmp_path / "pretrained"
  no_infer = ("--gin.train_script.train.infer_eval_dataset_cfg=None",
              "--gin.BEST_CHECKPOINT_METRIC=None")
  proc = run_cli(cli_env, source, "--gin.TRAIN_STEPS=2", *no_infer)
  assert proc.returncode == 0, proc.stderr[-4000:]
  finetune = ("--gin_file=experiments/demo_nmt_finetune.gin",
              f"--gin.INITIAL_CHECKPOINT_PATH={str(source)!r}", "--gin.INFER_EVAL_EXAMPLES=4")

  # Plain, keeping the optimizer: continues from step 2 with the source's Adam state.
  plain = tmp_path / "plain"
  proc = run_cli(cli_env, plain, *finetune, "--gin.RESET_OPTIMIZER=False")
  assert proc.returncode == 0, proc.stderr[-4000:]
  assert f"initialised params, optimizer state and step 2 from {source}" in proc.stdout
  assert "training steps 2 -> 4" in proc.stdout and checkpoint_steps(plain) == [4]

  # Guided, params only: step 0, guided hyper-parameters on the progress line.
  guided = tmp_path / "guided"
  proc = run_cli(cli_env, guided, "--gin_file=experiments/demo_nmt_guided_all.gin", *finetune,
                 "--gin.GUIDE_BATCH_SIZE=8", "--gin.TRAIN_STEPS=2")
  assert proc.returncode == 0, proc.stderr[-4000:]
  assert f"initialised params from {source}" in proc.stdout
  assert "training steps 0 -> 2" in proc.stdout and "lr_mult" in proc.stdout
  a, b = saved_state(source, 2), saved_state(guided, 2)
  moved = [k for k in b if "params" in k and not np.array_equal(a[k], b[k])]
  assert moved  # trained on from the source's params ...
  assert all(np.abs(a[k] - b[k]).max() < 0.1 for k in moved)  # ... not from a random init.

  # Another optimizer's state does not fit: a one-line error, nothing written.
  other = tmp_path / "other"
  proc = run_cli(cli_env, other, *finetune, "--gin.RESET_OPTIMIZER=False",
                 "--gin.OPTIMIZER=@optimizers.adafactor()")
  assert_user_error(proc, "cannot restore params and optimizer state (reset_optimizer=False)")
  assert not other.exists()
