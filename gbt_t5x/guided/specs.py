"""Guided hyper-parameter specs: what is learned, its range, and how it is validated.

A `GuidedHParam` names one hyper-parameter (scalar, per-parameter-group vector or per-id table)
with its init in the effective space, activation and optional range. Names and meaning:

- optimizer side: `learning_rate` is a *multiplier* on the model's learning-rate schedule (scalar,
  or one entry per parameter group with `groups`); any other optimizer name must be a key of the
  optax `inject_hyperparams` state's `hyperparams` dict (Adam/AdamW `b1`, `b2`, `eps`,
  `weight_decay`; Adafactor `decay_rate`, `momentum`, `clipping_threshold`, `weight_decay_rate`).
  Adafactor aliases: `b1` -> `momentum`, `weight_decay` -> `weight_decay_rate` (resolved against
  the names the optimizer actually has, see `resolve_optimizer_name`).
- loss side: `label_smoothing` (scalar in [0, upper <= 0.5]) and `data_weights` (a positive table
  of shape (num_ids,), indexed by the int ids of batch feature `decoder_data_ids`, which the
  train `DatasetConfig.data_id_feature` fills from a task feature such as the noise bucket).

Raw values (what the meta optimizer moves) are a dict name -> array, see `init_raw`/`effective`.
A vector value may name its entries (`entry_names`: the data-weight table's ids, e.g. the demo's
noise buckets, or the learning-rate groups); summaries then use `NAME/ENTRY` keys with each entry
name made safe for TensorBoard tags (`tag_safe`, `entry_tags`).

Imports only numpy, jax and the standard library (plus `activations`); must not import gin,
seqio, tensorflow, or anything from `gbt_t5x.models` / `gbt_t5x.train`.
"""
from __future__ import annotations

import dataclasses
import math
import re
from typing import Collection, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from gbt_t5x.guided import activations

LEARNING_RATE = "learning_rate"
LABEL_SMOOTHING = "label_smoothing"
DATA_WEIGHTS = "data_weights"
LOSS_NAMES = (LABEL_SMOOTHING, DATA_WEIGHTS)
# Alias -> the Adafactor name it stands for (used when the optimizer lacks the alias itself).
ALIASES = {"b1": "momentum", "weight_decay": "weight_decay_rate"}
# Optimizer hyper-parameter names known from the optimizers we support, to tell "the optimizer
# you chose does not have this" apart from "no such hyper-parameter".
KNOWN_OPTIMIZER_NAMES = ("b1", "b2", "eps", "eps_root", "weight_decay", "decay_rate", "momentum",
                         "clipping_threshold", "weight_decay_rate", "decay_offset")


@dataclasses.dataclass(frozen=True)
class GuidedHParam:
  """One guided hyper-parameter.

  Attributes:
    name: see the module docstring.
    init: initial effective value; a scalar broadcasts to `shape`, a tuple must hold
      prod(shape) values.
    activation: 'exp', 'softplus', 'sigmoid' or 'linear' (see `activations`).
    lower, upper: declared range of the effective value (sigmoid: defaults 0 and 1).
    meta_lr_scale: multiplies this hyper-parameter's meta updates (0 freezes it).
    shape: () for scalars; (len(groups),) for a per-group learning rate; (num_ids,) for
      data_weights.
    groups: learning_rate only: regexes searched in '/'-joined parameter paths, first match wins.
    entry_names: a vector value only: one human-readable name per entry (e.g. 'clean',
      'untranslated copy' for the demo's data weights), used by the progress line, TensorBoard,
      the trajectory file, `hparams.png` and the exported schedule; () names them '0', '1', ...
  """
  name: str
  init: float | tuple[float, ...]
  activation: str = "exp"
  lower: float | None = None
  upper: float | None = None
  meta_lr_scale: float = 1.0
  shape: tuple[int, ...] = ()
  groups: tuple[str, ...] = ()
  entry_names: tuple[str, ...] = ()

  def __post_init__(self):
    # Gin and YAML hand over lists; store tuples so the spec stays hashable.
    if isinstance(self.init, (list, tuple, np.ndarray)):
      object.__setattr__(self, "init", tuple(float(x) for x in np.ravel(self.init)))
    for field in ("shape", "groups", "entry_names"):
      value = getattr(self, field)
      if isinstance(value, (list, np.ndarray)):
        object.__setattr__(self, field, tuple(value))
      elif isinstance(value, (int, str)):
        object.__setattr__(self, field, (value,))
    if self.entry_names is None:  # gin's DATA_ID_NAMES = None: no names.
      object.__setattr__(self, "entry_names", ())
    object.__setattr__(self, "entry_names", tuple(str(n) for n in self.entry_names))

  @property
  def is_loss_side(self) -> bool:
    """True for hyper-parameters that enter the training loss (label smoothing, data weights)."""
    return self.name in LOSS_NAMES

  def init_array(self) -> np.ndarray:
    """The init as a float64 numpy array of shape `shape` (effective units)."""
    values = np.asarray(self.init, dtype=np.float64)
    size = int(np.prod(self.shape, dtype=np.int64))
    if values.ndim == 0:
      return np.broadcast_to(values, self.shape).copy()
    if values.size != size:
      raise ValueError(f"guided hyper-parameter {self.name!r}: init has {values.size} values but "
                       f"shape {self.shape} needs {size}")
    return values.reshape(self.shape)


def tag_safe(name: str) -> str:
  """`name` as one part of a TensorBoard tag: every run of characters other than ASCII letters,
  digits, `_`, `-` and `.` becomes one `_`, leading/trailing `_` are dropped
  (`'untranslated copy'` -> `'untranslated_copy'`); '' if nothing is left."""
  return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(name)).strip("_")


def entry_tags(entry_names: Sequence[str], size: int) -> tuple[str, ...]:
  """The tag-safe names of a vector value's `size` entries: `entry_names` through `tag_safe`, or
  '0' .. 'size-1' when `entry_names` is empty.

  Raises:
    ValueError: one line, when the count differs from `size`, a name is empty after `tag_safe`,
      or two names give the same tag.
  """
  if not entry_names:
    return tuple(str(i) for i in range(size))
  if len(entry_names) != size:
    raise ValueError(f"{len(entry_names)} entry names for a value of {size} entries: give one "
                     f"name per entry, got {list(entry_names)}")
  tags = tuple(tag_safe(n) for n in entry_names)
  for name, tag in zip(entry_names, tags):
    if not tag:
      raise ValueError(f"entry name {name!r} has no letter or digit to use in a TensorBoard tag")
  duplicates = sorted({t for t in tags if tags.count(t) > 1})
  if duplicates:
    raise ValueError(f"entry names {list(entry_names)} give the same tag {duplicates[0]!r} "
                     "twice; make them distinct")
  return tags


def resolve_optimizer_name(name: str, optimizer_hparam_names: Collection[str]) -> str | None:
  """The optimizer's own name for guided name `name` (alias-resolved), or None if it has none."""
  if name in optimizer_hparam_names:
    return name
  alias = ALIASES.get(name)
  if alias is not None and alias in optimizer_hparam_names:
    return alias
  return None


def _fail(spec: GuidedHParam, message: str) -> None:
  raise ValueError(f"guided hyper-parameter {spec.name!r}: {message}")


def _check_shape(spec: GuidedHParam) -> None:
  shape = spec.shape
  if not all(isinstance(d, (int, np.integer)) and not isinstance(d, bool) and d > 0
             for d in shape):
    _fail(spec, f"shape must be a tuple of positive ints, got {shape}")
  if spec.groups and spec.name != LEARNING_RATE:
    _fail(spec, "groups are only allowed for 'learning_rate'")
  if spec.name == LEARNING_RATE:
    if spec.groups:
      if shape != (len(spec.groups),):
        _fail(spec, f"shape {shape} must be (len(groups),) = ({len(spec.groups)},)")
      for pattern in spec.groups:
        if not isinstance(pattern, str):
          _fail(spec, f"groups must be regex strings, got {pattern!r}")
        try:
          re.compile(pattern)
        except re.error as e:
          _fail(spec, f"group regex {pattern!r} does not compile ({e})")
    elif shape != ():
      _fail(spec, f"a vector learning_rate (shape {shape}) needs one regex per entry in groups")
  elif spec.name == DATA_WEIGHTS:
    if len(shape) != 1:
      _fail(spec, f"shape must be (num_ids,), got {shape}")
  elif shape != ():
    _fail(spec, f"must be a scalar (shape ()), got shape {shape}")
  if spec.entry_names:
    size = int(np.prod(shape, dtype=np.int64))
    if shape == ():
      _fail(spec, f"entry_names {list(spec.entry_names)} are for vector values; this one is a "
            "scalar")
    if len(spec.entry_names) != size:
      what = "data-weight table" if spec.name == DATA_WEIGHTS else "vector"
      _fail(spec, f"{len(spec.entry_names)} entry names for a {what} of {size} entries (shape "
            f"{shape}); give one name per entry (data weights: DATA_ID_NAMES), got "
            f"{list(spec.entry_names)}")
    try:
      entry_tags(spec.entry_names, size)
    except ValueError as e:
      _fail(spec, str(e))


def _check_range_and_init(spec: GuidedHParam) -> None:
  if spec.activation not in activations.ACTIVATIONS:
    _fail(spec, f"unknown activation {spec.activation!r}; valid: {list(activations.ACTIVATIONS)}")
  for bound in ("lower", "upper"):
    value = getattr(spec, bound)
    if value is not None and not math.isfinite(float(value)):
      _fail(spec, f"{bound} must be a finite number or None, got {value}")
  if not (math.isfinite(float(spec.meta_lr_scale)) and spec.meta_lr_scale >= 0):
    _fail(spec, f"meta_lr_scale must be finite and >= 0, got {spec.meta_lr_scale}")
  lower, upper = spec.lower, spec.upper
  if spec.activation == "sigmoid":
    lower, upper = activations.sigmoid_range(lower, upper)
  if lower is not None and upper is not None and lower >= upper:
    _fail(spec, f"lower ({lower}) must be < upper ({upper})")
  init = spec.init_array()
  if not np.all(np.isfinite(init)):
    _fail(spec, f"init must be finite, got {spec.init}")
  if lower is not None and np.any(init < lower) or upper is not None and np.any(init > upper):
    _fail(spec, f"init {spec.init} is outside [lower, upper] = [{lower}, {upper}]")
  if spec.activation == "sigmoid" and (np.any(init <= lower) or np.any(init >= upper)):
    _fail(spec, f"init {spec.init} is on a bound of the sigmoid range [{lower}, {upper}], where "
          "it can never move; use activation='linear' (projected) or an init strictly inside "
          "the bounds")
  if spec.activation in activations.POSITIVE_ACTIVATIONS and np.any(init <= 0):
    _fail(spec, f"init {spec.init} must be > 0 for activation {spec.activation!r} (use "
          "activation='linear' with lower=0 to start from 0)")
  if spec.activation in activations.POSITIVE_ACTIVATIONS and upper is not None and upper <= 0:
    _fail(spec, f"upper ({upper}) must be > 0 for activation {spec.activation!r}")


def _check_loss_side(spec: GuidedHParam) -> None:
  if spec.name == LABEL_SMOOTHING:
    if spec.activation not in ("sigmoid", "linear"):
      _fail(spec, f"activation must be 'sigmoid' or 'linear' (bounded), got {spec.activation!r}")
    if spec.upper is None or spec.upper > 0.5:
      _fail(spec, f"needs an upper bound <= 0.5, got upper={spec.upper}")
    if spec.activation == "linear" and (spec.lower is None or spec.lower < 0):
      _fail(spec, f"needs lower >= 0 with activation='linear', got lower={spec.lower}")
    if spec.lower is not None and spec.lower < 0:
      _fail(spec, f"lower must be >= 0, got {spec.lower}")
  elif spec.name == DATA_WEIGHTS:
    if spec.activation not in activations.POSITIVE_ACTIVATIONS:
      _fail(spec, f"activation must be positive ('exp' or 'softplus'), got {spec.activation!r}")


def validate_specs(specs: Sequence[GuidedHParam], optimizer_hparam_names: Collection[str]) -> None:
  """Raises ValueError (one line naming the problem) unless `specs` are usable together.

  Args:
    specs: the guided hyper-parameters.
    optimizer_hparam_names: the keys of the model optimizer's `inject_hyperparams` state
      `hyperparams` dict (e.g. {'learning_rate', 'b1', 'b2', 'eps', 'eps_root', 'weight_decay'}).
  """
  optimizer_hparam_names = set(optimizer_hparam_names)
  direct = sorted(n for n in optimizer_hparam_names if n != LEARNING_RATE)
  aliases = sorted(a for a, target in ALIASES.items()
                   if target in optimizer_hparam_names and a not in optimizer_hparam_names)
  valid = [LEARNING_RATE, *LOSS_NAMES, *direct, *aliases]
  seen: dict[str, str] = {}
  for spec in specs:
    if not isinstance(spec, GuidedHParam):
      raise ValueError(f"guided hyper-parameters must be GuidedHParam, got {type(spec).__name__}")
    if spec.name in (LEARNING_RATE, *LOSS_NAMES):
      key = spec.name
    else:
      key = resolve_optimizer_name(spec.name, optimizer_hparam_names)
      if key is None:
        if spec.name in KNOWN_OPTIMIZER_NAMES or spec.name in ALIASES:
          raise ValueError(f"guided hyper-parameter {spec.name!r} is not a hyper-parameter of "
                           f"the chosen optimizer; its hyper-parameters are {direct}"
                           + (f" (aliases: {aliases})" if aliases else ""))
        raise ValueError(f"unknown guided hyper-parameter {spec.name!r}; valid names: {valid}")
    if key in seen:
      raise ValueError(f"duplicate guided hyper-parameter {spec.name!r} (same as "
                       f"{seen[key]!r}); each name may be guided once")
    seen[key] = spec.name
    _check_range_and_init(spec)
    _check_shape(spec)
    _check_loss_side(spec)


def init_raw(specs: Sequence[GuidedHParam]) -> dict[str, jax.Array]:
  """Raw initial values: name -> array of shape `spec.shape` (default float dtype)."""
  dtype = jnp.result_type(float)
  return {s.name: activations.inverse(s.activation, jnp.asarray(s.init_array(), dtype),
                                      s.lower, s.upper).astype(dtype)
          for s in specs}


def effective(specs: Sequence[GuidedHParam],
              raw: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
  """Effective values: name -> activation(raw[name]), same shapes. Differentiable in `raw`."""
  missing = [s.name for s in specs if s.name not in raw]
  if missing:
    raise ValueError(f"raw values are missing guided hyper-parameters {missing}")
  return {s.name: activations.activate(s.activation, raw[s.name], s.lower, s.upper)
          for s in specs}


def split_effective(specs: Sequence[GuidedHParam], values: Mapping[str, jax.Array]
                    ) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
  """Splits effective values into (optimizer-side, loss-side) dicts keyed by spec name."""
  opt = {s.name: values[s.name] for s in specs if not s.is_loss_side}
  loss = {s.name: values[s.name] for s in specs if s.is_loss_side}
  return opt, loss
