"""Guided hyper-parameter specs (validation messages, raw <-> effective) and activations."""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gbt_t5x.guided import activations
from gbt_t5x.guided import specs as specs_lib
from gbt_t5x.guided.specs import GuidedHParam, validate_specs


def _names(optimizer) -> set[str]:
  return set(optimizer.init({"w": jnp.zeros((2, 2))}).hyperparams)


ADAMW = _names(optax.inject_hyperparams(optax.adamw)(learning_rate=0.0))
ADAFACTOR = _names(optax.inject_hyperparams(
    optax.adafactor, static_args=("min_dim_size_to_factor", "dtype_momentum"))(
        learning_rate=0.0, momentum=0.9, weight_decay_rate=0.0))
# T5X's Adafactor: no momentum, no weight decay -> those are not hyper-parameters of it.
ADAFACTOR_T5X = _names(optax.inject_hyperparams(
    optax.adafactor, static_args=("min_dim_size_to_factor", "dtype_momentum"))(
        learning_rate=0.0))


def _raises(spec_list, names, pattern):
  with pytest.raises(ValueError, match=pattern) as info:
    validate_specs(spec_list, names)
  assert "\n" not in str(info.value)
  return str(info.value)


# ----------------------------------------------------------------------------- valid specs
def test_valid_specs_pass():
  validate_specs([
      GuidedHParam("learning_rate", 1.0),
      GuidedHParam("b1", 0.9, "sigmoid", lower=0.0, upper=0.9999),
      GuidedHParam("b2", 0.999, "sigmoid", lower=0.5, upper=0.99999),
      GuidedHParam("eps", 1e-8),
      GuidedHParam("weight_decay", 0.0, "linear", lower=0.0, upper=0.5),
      GuidedHParam("label_smoothing", 0.1, "sigmoid", lower=0.0, upper=0.5),
      GuidedHParam("data_weights", 1.0, shape=(4,)),
  ], ADAMW)
  validate_specs([
      GuidedHParam("learning_rate", (1.0, 2.0), shape=(2,), groups=("encoder", ".*")),
      GuidedHParam("decay_rate", 0.8, "sigmoid", lower=0.1, upper=1.0),
      GuidedHParam("b1", 0.5, "sigmoid", lower=0.0, upper=0.99),  # alias of momentum
      GuidedHParam("clipping_threshold", 1.0, "softplus"),
      GuidedHParam("weight_decay", 0.0, "linear", lower=0.0),  # alias of weight_decay_rate
  ], ADAFACTOR)


def test_lists_from_gin_become_tuples():
  spec = GuidedHParam("learning_rate", [1.0, 2.0], shape=[2], groups=["a", "b"])
  assert spec.init == (1.0, 2.0) and spec.shape == (2,) and spec.groups == ("a", "b")
  hash(spec)


# ----------------------------------------------------------------------------- errors
def test_unknown_name_lists_valid_ones():
  msg = _raises([GuidedHParam("lr", 1.0)], ADAMW, r"unknown guided hyper-parameter 'lr'")
  for name in ("learning_rate", "label_smoothing", "data_weights", "b1", "b2", "eps",
               "weight_decay"):
    assert repr(name) in msg


def test_name_the_optimizer_does_not_have():
  msg = _raises([GuidedHParam("decay_rate", 0.8, "sigmoid", lower=0.1, upper=1.0)], ADAMW,
                r"'decay_rate' is not a hyper-parameter of the chosen optimizer")
  assert "'b2'" in msg and "'weight_decay'" in msg
  _raises([GuidedHParam("b1", 0.5, "sigmoid")], ADAFACTOR_T5X,
          r"'b1' is not a hyper-parameter of the chosen optimizer; its hyper-parameters are "
          r"\[.*'decay_rate'")


def test_duplicates():
  _raises([GuidedHParam("eps", 1e-8), GuidedHParam("eps", 1e-6)], ADAMW,
          r"duplicate guided hyper-parameter 'eps'")
  _raises([GuidedHParam("momentum", 0.5, "sigmoid"), GuidedHParam("b1", 0.5, "sigmoid")],
          ADAFACTOR, r"duplicate guided hyper-parameter 'b1' \(same as 'momentum'\)")


def test_init_outside_range():
  _raises([GuidedHParam("weight_decay", 0.7, "linear", lower=0.0, upper=0.5)], ADAMW,
          r"'weight_decay': init 0.7 is outside \[lower, upper\] = \[0.0, 0.5\]")
  _raises([GuidedHParam("learning_rate", 1e-3, lower=0.01, upper=100.0)], ADAMW,
          r"is outside \[lower, upper\]")


def test_init_on_sigmoid_bound():
  # Weight decay from 0 through a sigmoid can never move (the reference implementation's fault).
  msg = _raises([GuidedHParam("weight_decay", 0.0, "sigmoid", lower=0.0, upper=0.1)], ADAMW,
                r"on a bound of the sigmoid")
  assert ("use activation='linear' (projected) or an init strictly inside the bounds" in msg)
  _raises([GuidedHParam("b1", 1.0, "sigmoid")], ADAMW, r"on a bound of the sigmoid")


def test_positive_activation_needs_positive_init():
  _raises([GuidedHParam("weight_decay", 0.0, "exp")], ADAMW,
          r"init 0.0 must be > 0 for activation 'exp'")
  _raises([GuidedHParam("data_weights", (1.0, -1.0), "softplus", shape=(2,))], ADAMW,
          r"must be > 0 for activation 'softplus'")


def test_lower_not_below_upper():
  _raises([GuidedHParam("eps", 1e-8, "linear", lower=1.0, upper=0.5)], ADAMW,
          r"lower \(1.0\) must be < upper \(0.5\)")
  _raises([GuidedHParam("b1", 0.5, "sigmoid", lower=0.9, upper=0.9)], ADAMW,
          r"lower \(0.9\) must be < upper \(0.9\)")


def test_unknown_activation():
  _raises([GuidedHParam("eps", 1e-8, "relu")], ADAMW, r"unknown activation 'relu'")


@pytest.mark.parametrize("spec,pattern", [
    (GuidedHParam("learning_rate", 1.0, shape=(3,)), r"needs one regex per entry in groups"),
    (GuidedHParam("learning_rate", 1.0, shape=(3,), groups=("a", "b")),
     r"shape \(3,\) must be \(len\(groups\),\) = \(2,\)"),
    (GuidedHParam("learning_rate", 1.0, shape=(1,), groups=("(",)), r"does not compile"),
    (GuidedHParam("eps", 1e-8, shape=(2,)), r"'eps': must be a scalar"),
    (GuidedHParam("eps", 1e-8, groups=("a",)), r"groups are only allowed for 'learning_rate'"),
    (GuidedHParam("data_weights", 1.0, shape=(2, 2)), r"shape must be \(num_ids,\)"),
    (GuidedHParam("data_weights", 1.0), r"shape must be \(num_ids,\)"),
    (GuidedHParam("data_weights", 1.0, shape=(0,)), r"shape must be a tuple of positive ints"),
    (GuidedHParam("data_weights", (1.0, 2.0), shape=(3,)), r"init has 2 values but shape"),
])
def test_bad_shape_or_groups(spec, pattern):
  _raises([spec], ADAMW, pattern)


def test_label_smoothing_needs_a_bound():
  _raises([GuidedHParam("label_smoothing", 0.1, "sigmoid", lower=0.0, upper=0.9)], ADAMW,
          r"needs an upper bound <= 0.5, got upper=0.9")
  _raises([GuidedHParam("label_smoothing", 0.1, "linear", lower=0.0)], ADAMW,
          r"needs an upper bound <= 0.5, got upper=None")
  _raises([GuidedHParam("label_smoothing", 0.1, "exp", upper=0.5)], ADAMW,
          r"activation must be 'sigmoid' or 'linear'")
  _raises([GuidedHParam("label_smoothing", 0.1, "linear", upper=0.5)], ADAMW,
          r"needs lower >= 0")


def test_data_weights_need_positive_activation():
  _raises([GuidedHParam("data_weights", 0.5, "sigmoid", shape=(2,))], ADAMW,
          r"activation must be positive \('exp' or 'softplus'\)")


def test_meta_lr_scale_must_be_non_negative():
  _raises([GuidedHParam("eps", 1e-8, meta_lr_scale=-1.0)], ADAMW, r"meta_lr_scale")


# ----------------------------------------------------------------------------- entry names
def test_entry_names_become_tag_safe_tags():
  spec = GuidedHParam("data_weights", 1.0, shape=(4,),
                      entry_names=["clean", "misaligned", "truncated", "untranslated copy"])
  validate_specs([spec], ADAMW)
  assert spec.entry_names == ("clean", "misaligned", "truncated", "untranslated copy")
  hash(spec)
  assert specs_lib.entry_tags(spec.entry_names, 4) == ("clean", "misaligned", "truncated",
                                                       "untranslated_copy")
  assert specs_lib.entry_tags((), 3) == ("0", "1", "2")
  assert specs_lib.tag_safe(" Noisy / copy (v2)! ") == "Noisy_copy_v2"
  assert GuidedHParam("data_weights", 1.0, shape=(2,), entry_names=None).entry_names == ()


@pytest.mark.parametrize("spec,pattern", [
    (GuidedHParam("data_weights", 1.0, shape=(4,), entry_names=("clean", "noisy", "copy")),
     r"'data_weights': 3 entry names for a data-weight table of 4 entries \(shape \(4,\)\)"),
    (GuidedHParam("data_weights", 1.0, shape=(2,), entry_names=("clean", "noisy", "copy")),
     r"3 entry names for a data-weight table of 2 entries"),
    (GuidedHParam("learning_rate", 1.0, shape=(2,), groups=("a", "b"), entry_names=("a",)),
     r"1 entry names for a vector of 2 entries"),
    (GuidedHParam("data_weights", 1.0, shape=(2,), entry_names=("a copy", "a  copy!")),
     r"give the same tag"),
    (GuidedHParam("data_weights", 1.0, shape=(2,), entry_names=("clean", "?!")),
     r"entry name '\?!' has no letter or digit"),
    (GuidedHParam("eps", 1e-8, entry_names=("x",)), r"entry_names \['x'\] are for vector values"),
])
def test_bad_entry_names(spec, pattern):
  _raises([spec], ADAMW, pattern)


# ----------------------------------------------------------------------------- raw values
def test_init_raw_and_effective_round_trip():
  specs = [GuidedHParam("learning_rate", (0.5, 2.0, 3.0), shape=(3,), groups=("a", "b", "c")),
           GuidedHParam("b2", 0.999, "sigmoid", lower=0.5, upper=0.99999),
           GuidedHParam("clipping_threshold", 1.0, "softplus"),
           GuidedHParam("weight_decay", 0.0, "linear", lower=0.0),
           GuidedHParam("data_weights", 2.0, shape=(4,))]
  raw = specs_lib.init_raw(specs)
  assert raw["learning_rate"].shape == (3,) and raw["data_weights"].shape == (4,)
  assert raw["b2"].shape == () and raw["b2"].dtype == jnp.float32
  np.testing.assert_allclose(raw["learning_rate"], np.log([0.5, 2.0, 3.0]), rtol=1e-6)
  values = specs_lib.effective(specs, raw)
  np.testing.assert_allclose(values["learning_rate"], [0.5, 2.0, 3.0], rtol=1e-6)
  np.testing.assert_allclose(values["b2"], 0.999, rtol=1e-6)
  np.testing.assert_allclose(values["clipping_threshold"], 1.0, rtol=1e-6)
  assert float(values["weight_decay"]) == 0.0
  np.testing.assert_allclose(values["data_weights"], [2.0] * 4, rtol=1e-6)
  with pytest.raises(ValueError, match=r"missing guided hyper-parameters \['b2'\]"):
    specs_lib.effective(specs, {k: v for k, v in raw.items() if k != "b2"})


# ----------------------------------------------------------------------------- activations
@pytest.mark.parametrize("name,lower,upper,values", [
    ("exp", None, None, [1e-30, 1e-8, 0.3, 1.0, 7.0, 1e20]),
    ("softplus", None, None, [1e-30, 1e-8, 0.3, 1.0, 7.0, 80.0, 1e20]),
    ("sigmoid", 0.5, 0.99999, [0.5 + 1e-6, 0.6, 0.9, 0.999, 0.99998]),
    ("sigmoid", None, None, [1e-6, 0.1, 0.5, 0.999]),
    ("linear", 0.0, 1.0, [-3.0, 0.0, 0.25, 1e6]),
])
def test_activation_inverse_is_exact(name, lower, upper, values):
  with jax.enable_x64(True):
    y = jnp.asarray(values, jnp.float64)
    raw = activations.inverse(name, y, lower, upper)
    assert np.all(np.isfinite(raw))
    np.testing.assert_allclose(activations.activate(name, raw, lower, upper), y, rtol=1e-9)


def test_softplus_inverse_is_stable_in_float32():
  y = jnp.asarray([1e-30, 1e-10, 1e-3, 1.0, 30.0, 1e4], jnp.float32)
  raw = activations.inverse("softplus", y)
  assert raw.dtype == jnp.float32 and np.all(np.isfinite(raw))
  np.testing.assert_allclose(raw[0], math.log(1e-30), rtol=1e-6)  # log(expm1(y)) ~ log(y)
  np.testing.assert_allclose(raw[-1], 1e4, rtol=1e-6)  # ~ y for large y
  np.testing.assert_allclose(activations.activate("softplus", raw), y, rtol=1e-5)


def test_sigmoid_is_scaled_to_range_and_monotone():
  raw = jnp.linspace(-30.0, 30.0, 101)
  h = activations.activate("sigmoid", raw, 0.1, 0.5)
  assert np.all(h >= 0.1) and np.all(h <= 0.5) and np.all(np.diff(h) >= 0)
  assert float(activations.activate("sigmoid", 0.0, 0.1, 0.5)) == pytest.approx(0.3)


def test_raw_bounds_and_projection():
  assert activations.raw_bounds("exp", 0.01, 100.0) == pytest.approx((math.log(0.01),
                                                                     math.log(100.0)))
  assert activations.raw_bounds("sigmoid", 0.0, 1.0) == (-math.inf, math.inf)
  assert activations.raw_bounds("linear", 0.0, None) == (0.0, math.inf)
  lo, hi = activations.raw_bounds("softplus", 0.5, 3.0)
  assert float(activations.activate("softplus", lo)) == pytest.approx(0.5)
  assert float(activations.activate("softplus", hi)) == pytest.approx(3.0)
  assert activations.raw_bounds("exp", 0.0, None) == (-math.inf, math.inf)  # 0 is no bound
  np.testing.assert_array_equal(activations.project("linear", jnp.array([-1.0, 0.3, 2.0]),
                                                    0.0, 1.0), np.float32([0.0, 0.3, 1.0]))
  with pytest.raises(ValueError, match="unknown activation 'tanh'"):
    activations.activate("tanh", 0.0)
