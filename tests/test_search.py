"""Tests of `gbt_t5x.search` and its space spec: parsing, every bad-input error, resume."""
from __future__ import annotations

import csv

import optuna
import pytest

from gbt_t5x import errors, search
from gbt_t5x import search_space

optuna.logging.set_verbosity(optuna.logging.WARNING)
SPACE = "learning_rate=1e-4:1e-1:log,b1=0.5:0.99,label_smoothing=0:0.3"


def test_parse_space_reads_names_ranges_and_log():
  params = search_space.parse_space(SPACE)
  assert [p.name for p in params] == ["learning_rate", "b1", "label_smoothing"]
  assert params[0] == search_space.Param("learning_rate", 1e-4, 1e-1, True)
  assert params[1] == search_space.Param("b1", 0.5, 0.99, False)
  assert search_space.parse_space(search_space.canonical(params)) == params


def test_bindings_hold_values_constant():
  out = search_space.bindings({"learning_rate": 0.01, "b1": 0.7, "label_smoothing": 0.1})
  assert out == ["learning_rate.create_learning_rate_scheduler.base_learning_rate = 0.01",
                 "optimizers.adamw.b1 = 0.7", "LABEL_SMOOTHING = 0.1"]
  assert search_space.bindings({"lr_multiplier": 3.0}, base_learning_rate=0.002) == [
      "learning_rate.create_learning_rate_scheduler.base_learning_rate = 0.006"]


@pytest.mark.parametrize("spec, message", [
    ("momentum=0.1:0.9", "unknown hyper-parameter 'momentum'"),
    ("b1=0.9:0.5", "empty or inverted range for 'b1'"),
    ("b1=0.5:0.5", "empty or inverted range for 'b1'"),
    ("b1=0.5-0.9", "malformed search-space item 'b1=0.5-0.9'"),
    ("learning_rate=1e-4:1e-1:lin", "malformed search-space item"),
    ("", "empty search space"),
    ("b1=0.5:0.9,b1=0.6:0.8", "appears twice"),
    ("b1=0.5:1.5", "outside its valid values"),
    ("label_smoothing=0:0.3:log", "log range of 'label_smoothing' needs LOW > 0"),
])
def test_bad_space_is_one_line_error(spec, message, tmp_path, capsys):
  with pytest.raises(ValueError, match=message.replace("(", r"\(")):
    search_space.parse_space(spec)
  code = search.main(["--gin_file=experiments/demo_nmt.gin", f"--space={spec}",
                      f"--study_dir={tmp_path}"])
  err = capsys.readouterr().err.strip()
  assert code == 2
  assert err.startswith("error: ") and message.split("'")[0] in err and "\n" not in err


def test_study_of_another_space_is_refused(tmp_path, capsys):
  search.open_study(str(tmp_path), search_space.parse_space("b1=0.5:0.99"), "tpe")
  with pytest.raises(ValueError, match="was created with space 'b1=0.5:0.99'"):
    search.open_study(str(tmp_path), search_space.parse_space("b1=0.5:0.9"), "tpe")
  code = search.main(["--gin_file=experiments/demo_nmt.gin", "--space=b1=0.5:0.9",
                      f"--study_dir={tmp_path}"])
  assert code == 2
  assert "was created with space" in capsys.readouterr().err


def test_gp_sampler_without_torch_says_so(monkeypatch):
  monkeypatch.setattr(search.importlib.util, "find_spec", lambda name: None)
  with pytest.raises(ValueError, match="--sampler gp needs torch"):
    search.make_sampler("gp", 0)
  assert isinstance(search.make_sampler("auto", 0), optuna.samplers.TPESampler)


class StubObjective:
  """Scores b1 by (b1 - 0.8)^2 and records which values ran."""

  def __init__(self):
    self.calls: list[dict[str, float]] = []

  def __call__(self, ctx: search.TrialContext):
    self.calls.append(dict(ctx.values))
    return (ctx.values["b1"] - 0.8) ** 2, {"train_steps": 10, "wall_seconds": 0.5}


def test_search_counts_complete_trials_and_writes_csv(tmp_path):
  space = search_space.parse_space("b1=0.5:0.99")
  study = search.open_study(str(tmp_path), space, "tpe", seed=1)
  stub = StubObjective()
  search.run_search(study, space, 3, stub, print_fn=lambda _l: None,
                    csv_path=str(tmp_path / "trials.csv"))
  assert len(stub.calls) == 3
  rows = list(csv.DictReader(open(tmp_path / "trials.csv")))
  assert [r["state"] for r in rows] == ["COMPLETE"] * 3
  assert all(r["train_steps"] == "10" and float(r["wall_seconds"]) == 0.5 for r in rows)
  assert {float(r["b1"]) for r in rows} == {c["b1"] for c in stub.calls}


def test_killed_search_resumes_without_repeating_finished_trials(tmp_path):
  space = search_space.parse_space("b1=0.5:0.99")
  study = search.open_study(str(tmp_path), space, "tpe", seed=0)
  first = StubObjective()
  search.run_search(study, space, 2, first, print_fn=lambda _l: None)
  # A third trial that the "kill" left RUNNING (asked for, never told).
  running = study.ask({"b1": optuna.distributions.FloatDistribution(0.5, 0.99)})
  killed_b1 = running.params["b1"]
  del study

  resumed_study = search.open_study(str(tmp_path), space, "tpe", seed=0)
  states = [t.state for t in resumed_study.trials]
  assert states.count(optuna.trial.TrialState.COMPLETE) == 2
  assert states.count(optuna.trial.TrialState.RUNNING) == 1
  resumed = StubObjective()
  search.run_search(resumed_study, space, 3, resumed, print_fn=lambda _l: None)
  assert resumed.calls == [{"b1": killed_b1}]  # exactly one more trial: the interrupted one
  assert not {c["b1"] for c in first.calls} & {c["b1"] for c in resumed.calls}
  final = optuna.load_study(study_name=search.STUDY_NAME,
                            storage=f"sqlite:///{tmp_path / search.STUDY_FILE}")
  states = [t.state for t in final.trials]
  assert states.count(optuna.trial.TrialState.COMPLETE) == 3
  assert states.count(optuna.trial.TrialState.FAIL) == 1  # the interrupted one, marked failed
  assert not any(s == optuna.trial.TrialState.RUNNING for s in states)
  # Nothing more to do: a further resume with the same target runs no trial.
  again = StubObjective()
  search.run_search(search.open_study(str(tmp_path), space, "tpe"), space, 3, again,
                    print_fn=lambda _l: None)
  assert again.calls == []


def test_resumed_search_proposes_new_values_not_the_first_ones_again(tmp_path):
  """A search stopped between trials and started again (a new process: the study reloaded, its
  sampler made anew with the same seed) must not replay the proposals of its first trials."""
  space = search_space.parse_space("b1=0.5:0.99")
  first = StubObjective()
  search.run_search(search.open_study(str(tmp_path), space, "tpe", seed=0), space, 3, first,
                    print_fn=lambda _l: None)
  resumed = StubObjective()
  search.run_search(search.open_study(str(tmp_path), space, "tpe", seed=0), space, 6, resumed,
                    print_fn=lambda _l: None)
  values = [c["b1"] for c in first.calls + resumed.calls]
  assert len(values) == 6 and len(set(values)) == 6, values
  # A new study with that seed still starts from the seed's own sequence (reproducible).
  fresh = StubObjective()
  search.run_search(search.open_study(str(tmp_path / "again"), space, "tpe", seed=0), space, 3,
                    fresh, print_fn=lambda _l: None)
  assert fresh.calls == first.calls


def test_non_finite_score_is_recorded_as_diverged(tmp_path):
  space = search_space.parse_space("b1=0.5:0.99")
  study = search.open_study(str(tmp_path), space, "tpe")
  search.run_search(study, space, 1,
                    lambda ctx: (float("nan"), {"train_steps": 1, "wall_seconds": 0.1}),
                    print_fn=lambda _l: None)
  trial = search.complete_trials(study)[0]
  assert trial.value == search.DIVERGED_SCORE and trial.user_attrs["diverged"] is True


def test_pruning_stops_a_bad_trial_and_it_does_not_count(tmp_path):
  space = search_space.parse_space("b1=0.5:0.99")
  study = search.open_study(str(tmp_path), space, "tpe", prune=True)
  calls = []

  def objective(ctx):
    calls.append(ctx.trial.number)
    for step in range(1, 6):
      ctx.report(step, 10.0 if len(calls) == 6 else 1.0)  # the 6th trial is far worse
    return 1.0, {"train_steps": 5, "wall_seconds": 0.1}

  search.run_search(study, space, 6, objective, print_fn=lambda _l: None)
  states = [t.state for t in study.trials]
  assert states == [optuna.trial.TrialState.COMPLETE] * 5 + [optuna.trial.TrialState.PRUNED] + [
      optuna.trial.TrialState.COMPLETE]  # the pruned trial did not count: a 7th trial ran


def test_data_weight_constants_reach_the_plain_run_config():
  """BO over per-bucket data weights: the sampled weights become the plain run's constant
  data-weight schedule, and its train batches carry the bucket id."""
  import gin
  import numpy as np

  from gbt_t5x import runner
  from gbt_t5x.guided import schedule
  from gbt_t5x.train import data
  values = {"lr_multiplier": 2.0, "data_weight_0": 1.5, "data_weight_1": 0.25,
            "data_weight_2": 0.5, "data_weight_3": 0.125}
  space = search_space.parse_space(
      "lr_multiplier=0.1:10:log," + ",".join(f"data_weight_{i}=0.01:10:log" for i in range(4)))
  assert [p.name for p in space][1:] == [f"data_weight_{i}" for i in range(4)]
  files = ["experiments/demo_nmt.gin", *search_space.gin_files(list(values))]
  assert files[1:] == [search_space.DATA_WEIGHTS_GIN]
  assert search_space.gin_files(["b1"]) == []
  runner.parse(files, ["MODEL_DIR = '/nonexistent'",
                       *search_space.bindings(values, base_learning_rate=0.002)])
  with gin.config_scope("data_weights"):
    weights = gin.get_configurable(schedule.piecewise_linear)()
  np.testing.assert_allclose(np.asarray(weights(123)), [1.5, 0.25, 0.5, 0.125])
  with gin.config_scope("train"):
    config = gin.get_configurable(data.DatasetConfig)("t", {}, "train", 1)
  assert config.data_id_feature == "noise_bucket"
  # The trial's summaries name the buckets as the demo task does.
  from gbt_t5x.data import data_ids, demo_world
  assert "data_ids.data_id_names" in str(
      gin.query_parameter("trainer.Trainer.hyperparam_entry_names")["data_weights"])
  with gin.config_scope("data_weights"):
    names = gin.get_configurable(data_ids.data_id_names)()
  assert names == demo_world.NOISE_BUCKET_NAMES
  gin.clear_config()


def test_noisy_data_weight_is_one_weight_for_the_three_noisy_buckets():
  assert search_space.bindings({"noisy_data_weight": 0.25}) == [
      "DATA_WEIGHT_1 = 0.25", "DATA_WEIGHT_2 = 0.25", "DATA_WEIGHT_3 = 0.25"]
  assert search_space.gin_files(["noisy_data_weight"]) == [search_space.DATA_WEIGHTS_GIN]
  with pytest.raises(ValueError, match="either noisy_data_weight or data_weight_1..3"):
    search_space.parse_space("noisy_data_weight=0.01:1:log,data_weight_2=0.01:1:log")


def test_preempted_trial_runs_again_first_when_the_search_resumes(tmp_path):
  space = search_space.parse_space("b1=0.5:0.99")
  study = search.open_study(str(tmp_path), space, "tpe", seed=0)
  search.run_search(study, space, 1, StubObjective(), print_fn=lambda _l: None)
  stopped: list[float] = []

  def preempted(ctx: search.TrialContext):
    stopped.append(ctx.values["b1"])
    raise errors.Preempted(3, "SIGTERM")

  with pytest.raises(errors.Preempted):
    search.run_search(study, space, 2, preempted, print_fn=lambda _l: None)
  resumed = StubObjective()
  search.run_search(search.open_study(str(tmp_path), space, "tpe", seed=0), space, 2, resumed,
                    print_fn=lambda _l: None)
  assert resumed.calls == [{"b1": stopped[0]}]
  states = [t.state for t in study.trials]
  assert states.count(optuna.trial.TrialState.FAIL) == 1
  assert states.count(optuna.trial.TrialState.COMPLETE) == 2
