"""T5X learning-rate schedules vs hand-computed values."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gbt_t5x.train.learning_rate import VALID_FACTORS, create_learning_rate_scheduler


def _values(fn, steps):
  # One jitted evaluation over all steps (also checks the function traces and vectorises).
  return np.asarray(jax.jit(jax.vmap(fn))(jnp.asarray(steps, jnp.int32)))


def test_pretrain_rsqrt_decay():
  fn = create_learning_rate_scheduler("constant * rsqrt_decay", base_learning_rate=1.0,
                                      warmup_steps=10000)
  np.testing.assert_allclose(_values(fn, [0, 5000, 10000, 40000]),
                             [0.01, 0.01, 0.01, 0.005], rtol=1e-6)
  assert fn(40000).dtype == jnp.float32


def test_default_warmup_then_rsqrt():
  fn = create_learning_rate_scheduler()  # 0.5 * linear_warmup(1000) * rsqrt_decay
  want = [1e-8,  # step 0: 0, floored at min_learning_rate
          0.5 * 0.25 / math.sqrt(1000), 0.5 / math.sqrt(1000), 0.5 / math.sqrt(4000)]
  np.testing.assert_allclose(_values(fn, [0, 250, 1000, 4000]), want, rtol=1e-6)


def test_rsqrt_normalized_decay_and_step_offset():
  fn = create_learning_rate_scheduler("constant * rsqrt_normalized_decay", base_learning_rate=2.0,
                                      warmup_steps=100, step_offset=50)
  # Effective steps: max(0, s - 50) = 0, 50, 350.
  np.testing.assert_allclose(_values(fn, [10, 100, 400]),
                             [2.0, 2.0, 2.0 * math.sqrt(100 / 350)], rtol=1e-6)


def test_decay_every():
  fn = create_learning_rate_scheduler("constant * decay_every", base_learning_rate=1.0,
                                      decay_factor=0.5, steps_per_decay=100)
  np.testing.assert_allclose(_values(fn, [0, 99, 100, 250, 399]),
                             [1.0, 1.0, 0.5, 0.25, 0.125], rtol=1e-6)


def test_cosine_decay_cycles():
  fn = create_learning_rate_scheduler("constant * cosine_decay", base_learning_rate=1.0,
                                      warmup_steps=10, steps_per_cycle=100)
  # Progress (s - 10) / 100; at step 110 the first cycle ends and (T5X) the next restarts at 1.
  want = [1.0, 1.0, 0.5 * (1 + math.cos(math.pi * 0.25)), 0.5, 1.0, 1.0]
  np.testing.assert_allclose(_values(fn, [0, 10, 35, 60, 110, 210]), want, rtol=1e-5)
  np.testing.assert_allclose(float(fn(109)), 0.5 * (1 + math.cos(math.pi * 0.99)), rtol=1e-3)


def test_linear_decay_to_zero_at_total_steps():
  fn = create_learning_rate_scheduler("constant * linear_warmup * linear_decay",
                                      base_learning_rate=1e-3, warmup_steps=100,
                                      total_steps=1100, min_learning_rate=0.0)
  np.testing.assert_allclose(_values(fn, [50, 100, 600, 1100, 2000]),
                             [5e-4, 1e-3, 5e-4, 0.0, 0.0], rtol=1e-5, atol=1e-12)


def test_min_learning_rate_floor():
  fn = create_learning_rate_scheduler("constant", base_learning_rate=1e-9,
                                      min_learning_rate=1e-6)
  assert float(fn(3)) == pytest.approx(1e-6)


def test_unknown_factor_lists_valid_ones():
  with pytest.raises(ValueError) as err:
    create_learning_rate_scheduler("constant * rsqrt_decy")
  message = str(err.value)
  assert "'rsqrt_decy'" in message
  assert all(name in message for name in VALID_FACTORS)


@pytest.mark.parametrize("kwargs, message", [
    ({"factors": "constant * linear_decay"}, "total_steps"),
    ({"factors": "constant * linear_decay", "total_steps": 0}, "total_steps >= 1"),
    ({"factors": "constant * linear_warmup", "warmup_steps": 0}, "warmup_steps"),
])
def test_bad_configuration_raises(kwargs, message):
  with pytest.raises(ValueError, match=message):
    create_learning_rate_scheduler(**kwargs)


def test_linear_decay_of_a_run_shorter_than_its_warmup_spans_the_whole_run(caplog):
  with caplog.at_level("WARNING"):
    fn = create_learning_rate_scheduler("constant * linear_decay", base_learning_rate=1e-3,
                                        warmup_steps=100, total_steps=10)
  assert "warmup never ends" in caplog.text
  np.testing.assert_allclose(_values(fn, [0, 5, 10, 20]), [1e-3, 5e-4, 0.0, 0.0], atol=1e-7)


def test_constant_needs_no_warmup():
  fn = create_learning_rate_scheduler("constant", base_learning_rate=0.001, warmup_steps=0)
  assert float(fn(0)) == pytest.approx(0.001)
