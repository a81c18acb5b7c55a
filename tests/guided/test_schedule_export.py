"""Schedule export/replay: knots from a trajectory, piecewise-linear replay, the gin file."""
import json

import gin
import numpy as np
import pytest

from gbt_t5x.guided import export, schedule


def test_piecewise_linear_interpolates_and_clamps():
  f = schedule.piecewise_linear([0, 10, 20], [1.0, 2.0, 0.0])
  assert [float(f(s)) for s in (-5, 0, 5, 10, 15, 20, 99)] == [1.0, 1.0, 1.5, 2.0, 1.0, 0.0, 0.0]
  g = schedule.piecewise_linear([0, 10], [[1.0, 0.0], [3.0, 1.0]])
  np.testing.assert_allclose(np.asarray(g(5)), [2.0, 0.5])


@pytest.mark.parametrize("steps,values,match", [
    ([0, 0], [1, 2], "strictly increasing"), ([], [], "K >= 1"), ([0, 1], [1.0, np.nan], "finite")])
def test_piecewise_linear_rejects_bad_knots(steps, values, match):
  with pytest.raises(ValueError, match=match):
    schedule.piecewise_linear(steps, values)


def test_knots_are_window_means():
  steps, values = schedule.knots_from_trajectory([0, 1, 2, 3], np.array([1.0, 3.0, 5.0, 7.0]), 2)
  assert steps == [0.5, 2.5] and values == [2.0, 6.0]


def _write_trajectory(model_dir, n=30, entry_names=None):
  with open(model_dir / export.TRAJECTORY_FILE, "w") as f:
    for i in range(n):
      row = {"step": i + 1, "applied_learning_rate": 1e-3,
             "values": {"learning_rate": 1.0 + 0.1 * i, "b1": 0.9 - 0.001 * i,
                        "data_weights": [1.0, 1.0 - 0.01 * i]}}
      if entry_names:
        row["entry_names"] = entry_names
      f.write(json.dumps(row) + "\n")
    f.write('{"step": 31, "valu')  # a torn last line from a killed run is ignored


def test_export_writes_gin_that_replays_the_trajectory(tmp_path):
  _write_trajectory(tmp_path)
  path = export.export(str(tmp_path), num_knots=30)
  gin.clear_config()
  try:
    gin.parse_config_file(path)
    from gbt_t5x.train import trainer  # noqa: F401  (registers trainer.Trainer)
    schedules = gin.query_parameter("trainer.Trainer.hyperparam_schedules")
    assert set(schedules) == {"learning_rate", "b1", "data_weights"}
    # With one knot per step, the schedule at model step s is the value used at step s.
    lr = schedule.piecewise_linear(
        gin.query_parameter("learning_rate/schedule.piecewise_linear.steps"),
        gin.query_parameter("learning_rate/schedule.piecewise_linear.values"))
    assert float(lr(0)) == pytest.approx(1.0) and float(lr(29)) == pytest.approx(3.9)
    dw = gin.query_parameter("data_weights/schedule.piecewise_linear.values")
    assert dw[10] == pytest.approx([1.0, 0.9])
    # A trajectory without entry names (as written before names existed) binds none.
    with pytest.raises(ValueError):
      gin.query_parameter("trainer.Trainer.hyperparam_entry_names")
    assert "entries" not in open(path).read()
  finally:
    gin.clear_config()


def test_export_names_the_components_of_vector_values(tmp_path):
  _write_trajectory(tmp_path, entry_names={"data_weights": ["clean", "untranslated copy"]})
  path = export.export(str(tmp_path), num_knots=30)
  text = open(path).read()
  assert "# data_weights = [clean, untranslated copy] (its entries, in this order)" in text
  gin.clear_config()
  try:
    gin.parse_config_file(path)
    from gbt_t5x.train import trainer  # noqa: F401
    assert gin.query_parameter("trainer.Trainer.hyperparam_entry_names") == {
        "data_weights": ["clean", "untranslated copy"]}
    assert gin.query_parameter("data_weights/schedule.piecewise_linear.values")[10] == (
        pytest.approx([1.0, 0.9]))
  finally:
    gin.clear_config()


def test_export_errors_name_the_problem(tmp_path):
  with pytest.raises(ValueError, match="guided_trajectory.jsonl not found"):
    export.export(str(tmp_path))
  (tmp_path / export.TRAJECTORY_FILE).write_text("")
  with pytest.raises(ValueError, match="no trajectory rows"):
    export.export(str(tmp_path))
  assert export.main([str(tmp_path)]) == 2
