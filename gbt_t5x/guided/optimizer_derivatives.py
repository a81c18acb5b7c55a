"""Closed-form derivatives of the Adam(W) update with respect to its hyper-parameters.

What it is for: step d) of the guided step (`hypergrad`) needs, for every guided optimizer-side
scalar h, the contraction <v, du/dh> of the guide gradient v with the derivative of the
optimizer update u, and with loss-side kinds also d_grads = (du/dg)^T v. The generic path takes
both from `jax.vjp` of the optax update, whose linearisation keeps several parameter-sized
intermediates alive across the guide forward/backward (on XLA:CPU every elementwise intermediate
with more than one consumer is materialised). Adam's update is elementwise per parameter, so each
contraction is one pass per leaf; here all of them are computed in one variadic `lax.reduce` per
leaf, after v is known, from what the model step keeps anyway: the *updated* params and moments
and the gradient g. The old params and moments are not read, so XLA may write the new ones over
them (donation) before the guide pass instead of keeping both. Hand-written because neither optax
nor JAX offers derivatives of an update with respect to its hyper-parameters other than by
autodiff.

The formulas (optax `scale_by_adam` + `add_decayed_weights` + `scale_by_learning_rate`, t =
count after the update, s = the learning rate of the leaf = base_lr * multiplier; m1, n1 the
updated moments, theta1 the updated params, theta the old ones):

    m1 = b1 m + (1 - b1) g        n1 = b2 n + (1 - b2) g^2
    c1 = 1 - b1^t                 c2 = 1 - b2^t
    r = sqrt(n1 / c2 + eps_root)  D = r + eps        a = m1 / c1 / D
    u = -s (a + wd mask theta),   theta1 = theta + u
    so  m - g = (m1 - g) / b1,   n - g^2 = (n1 - g^2) / b2,
        a + wd theta = (a + wd theta1) / (1 - s wd),   theta = (theta1 + s a) / (1 - s wd)

    du/d multiplier = -base_lr (a + wd mask theta)
    du/d b1         = -s (dm1hat/db1) / D,  dm1hat/db1 = (m - g) / c1 + m1 t b1^(t-1) / c1^2
    du/d b2         =  s m1hat / (2 r D^2) dn1hat/db2,  dn1hat/db2 = (n - g^2) / c2
                                                        + n1 t b2^(t-1) / c2^2
    du/d eps        =  s m1hat / D^2
    du/d eps_root   =  s m1hat / (2 r D^2)
    du/d wd         = -s mask theta
    (du/dg)^T v     = -s v ((1 - b1) / (c1 D) - m1hat (1 - b2) g / (c2 r D^2))

Recovering (m - g), (n - g^2) and theta from the updated state is exact algebra; in floating
point it differs from the direct form by rounding only (b1, b2 > 0 and s wd < 1 are required:
a guided b1 or b2 is a sigmoid of its raw value, never 0).

Exact (the same function differentiated by hand); `tests/guided/test_optimizer_derivatives.py`
checks every term against the generic VJP path in float64.

Must not import gin, seqio, tensorflow or anything of `gbt_t5x.models` / `gbt_t5x.train`.
"""
from __future__ import annotations

import dataclasses
import weakref
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

PyTree = Any

ADAMW, ADAFACTOR = "adamw", "adafactor"
FAMILIES = (ADAMW, ADAFACTOR)
# Injectable names (as the optimizer's `hyperparams` spells them) the closed form covers.
SUPPORTED = {ADAMW: ("learning_rate", "b1", "b2", "eps", "eps_root", "weight_decay"),
             ADAFACTOR: ("learning_rate", "decay_rate", "eps", "clipping_threshold",
                         "weight_decay_rate")}


@dataclasses.dataclass(frozen=True)
class ClosedForm:
  """What the closed form must know about an optimizer beyond its state.

  family: 'adamw' (optax Adam with optional decoupled weight decay, built by
    `optax.inject_hyperparams` around `optax.adamw` / `optax.adam`, no Nesterov, mu in the
    gradient's dtype) or 'adafactor' (`gbt_t5x.train.optimizers.adafactor` without momentum).
  weight_decay_mask: the `mask` given to `optax.adamw` (None: every leaf decays; a pytree of
    bools or a callable params -> pytree of bools); ignored when the optimizer has no decay.
  adafactor: the static Adafactor options (family 'adafactor' only).
  """
  family: str
  weight_decay_mask: Any = None
  adafactor: "AdafactorOptions | None" = None


_REGISTRY: "weakref.WeakKeyDictionary[Callable, ClosedForm]" = weakref.WeakKeyDictionary()


def register(optimizer: optax.GradientTransformation, closed_form: ClosedForm
             ) -> optax.GradientTransformation:
  """Marks `optimizer` (returned unchanged) as one whose update has `closed_form`."""
  if closed_form.family not in FAMILIES:
    raise ValueError(f"unknown closed-form family {closed_form.family!r}; expected one of "
                     f"{FAMILIES}")
  _REGISTRY[optimizer.update] = closed_form
  return optimizer


def closed_form_of(optimizer: optax.GradientTransformation) -> ClosedForm | None:
  """The registered closed form of `optimizer`, or None."""
  try:
    return _REGISTRY.get(optimizer.update)
  except TypeError:  # an update fn that cannot be weakly referenced
    return None


def _inner_state(opt_state: Any, state_type: type, family: str) -> Any:
  """The `state_type` part (e.g. `optax.ScaleByAdamState`) of an inject_hyperparams state's
  chain; `family` names the closed form in the error."""
  inner = getattr(opt_state, "inner_state", None)
  for part in (inner if isinstance(inner, tuple) else (inner,)):
    if isinstance(part, state_type):
      return part
  raise ValueError(f"closed-form {family} derivative: the optimizer state holds no "
                   f"optax.{state_type.__name__}")


def _mask_tree(mask: Any, params: PyTree) -> PyTree:
  if mask is None:
    return jax.tree.map(lambda _: True, params)
  return mask(params) if callable(mask) else mask


def _new_totals(names: Sequence[str], num_groups: int) -> dict[str, list[Any]]:
  """Running sums of <v, du/dh> per name ([num_groups] entries for the LR multiplier)."""
  return {n: [0.0] * (num_groups if n == "learning_rate" else 1) for n in names}


def _add_leaf(totals: dict[str, list[Any]], names: Sequence[str], terms: Sequence[jax.Array],
              v_leaf: jax.Array, gid: int) -> None:
  """Adds one leaf's contractions <v_leaf, term> (one variadic reduction over the leaf)."""
  if not terms:
    return
  dt = v_leaf.dtype
  sums = jax.lax.reduce(tuple(v_leaf * term for term in terms),
                        tuple(jnp.zeros((), dt) for _ in terms),
                        lambda a, b: tuple(x + y for x, y in zip(a, b)),
                        tuple(range(v_leaf.ndim)))
  for name, total in zip(names, sums):
    k = gid if name == "learning_rate" else 0
    totals[name][k] = totals[name][k] + total


def _finish(totals: dict[str, list[Any]], names: Sequence[str], vector_lr: bool
            ) -> dict[str, jax.Array]:
  return {n: (jnp.stack([jnp.asarray(x) for x in totals[n]])
              if n == "learning_rate" and vector_lr else jnp.asarray(totals[n][0]))
          for n in names}


def _after(v_leaf: jax.Array, *leaves: jax.Array) -> tuple[jax.Array, ...]:
  """`leaves` made data-dependent on `v_leaf` (x + 0 * v: the same values for a finite v).

  An AdamW leaf's direction, r and D feed several terms of the reduction (and (du/dg)^T v with
  loss-side values; Adafactor's y and its tangents: the clipping RMS and the terms), so XLA
  materialises them (params-sized) and, as they do not depend on v, may compute them right after
  the model update: they then live through the whole guide pass (at T5-small: +651 MiB AdamW
  with loss-side values, +587 MiB AdamW LR + b1 + b2, +294 MiB Adafactor;
  `scripts/xla_peak_buffers.py`). Depending on v, they are computed when the leaf's v is and
  die with its reduction. XLA:CPU removes `optimization_barrier` before scheduling, so a barrier
  cannot order them; its simplifier keeps 0 * v for floats (0 * inf is NaN), so this stays.
  """
  zero = jnp.zeros((), v_leaf.dtype) * v_leaf
  return tuple(x + zero for x in leaves)


def _adamw_direction(m1: jax.Array, n1: jax.Array, c: Mapping[str, jax.Array]
                     ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(a = m1hat / D, r, D) of one leaf from its updated moments (module docstring); `c` as in
  `_adamw_leaf_terms`."""
  r = jnp.sqrt(n1 / c["c2"] + c["eps_root"])
  den = r + c["eps"]
  return m1 / c["c1"] / den, r, den


def _adamw_leaf_terms(names: Sequence[str], theta1, g, m1, n1, s, wd_leaf, decays: bool,
                      coef: Mapping[str, jax.Array]) -> tuple[list[jax.Array], jax.Array,
                                                             jax.Array, jax.Array]:
  """One leaf's du/dh per name (the formulas of the module docstring), and (direction, r, D).
  `coef`: b1, b2, c1, c2, dc1, dc2, eps, eps_root, base_lr cast to the leaf's dtype."""
  c = coef
  direction, r, den = _adamw_direction(m1, n1, c)
  keep = 1 - s * wd_leaf  # theta1 = keep * theta - s * direction
  terms = []
  for name in names:
    if name == "learning_rate":
      terms.append(-c["base_lr"] * (direction + wd_leaf * theta1) / keep)
    elif name == "b1":
      dm_hat = (m1 - g) / c["b1"] / c["c1"] - m1 * c["dc1"] / c["c1"] ** 2
      terms.append(-s * dm_hat / den)
    elif name == "b2":
      dn_hat = (n1 - g * g) / c["b2"] / c["c2"] - n1 * c["dc2"] / c["c2"] ** 2
      terms.append(s * direction / den / (2 * r) * dn_hat)
    elif name == "eps":
      terms.append(s * direction / den)
    elif name == "eps_root":
      terms.append(s * direction / den / (2 * r))
    else:  # weight_decay
      terms.append(-s * (theta1 + s * direction) / keep if decays else jnp.zeros_like(theta1))
  return terms, direction, r, den


def _leaf_layout(new_params: PyTree, closed_form: ClosedForm, multiplier: jax.Array | None,
                 lr_group_ids: PyTree | None) -> tuple[list[jax.Array], Any, list[bool],
                                                       list[int], bool]:
  """(the leaves of `new_params`, their treedef, each leaf's weight-decay mask entry, each leaf's
  LR group (0 unless the multiplier is a vector), whether it is)."""
  vector_lr = multiplier is not None and jnp.ndim(multiplier) > 0
  leaves, treedef = jax.tree.flatten(new_params)
  mask = treedef.flatten_up_to(_mask_tree(closed_form.weight_decay_mask, new_params))
  groups = treedef.flatten_up_to(lr_group_ids) if vector_lr else [0] * len(leaves)
  return leaves, treedef, mask, groups, vector_lr


def _adamw_coefficients(new_opt_state: Any, hyperparams: Mapping[str, jax.Array],
                        base_lr: jax.Array) -> tuple[Any, dict[str, jax.Array], jax.Array]:
  """(the updated `ScaleByAdamState`, the scalar coefficients `_adamw_leaf_terms` reads, the
  weight decay) of an AdamW update that used `hyperparams` (t = the updated count)."""
  adam = _inner_state(new_opt_state, optax.ScaleByAdamState, "AdamW")
  hp = {k: jnp.asarray(val) for k, val in hyperparams.items()}
  b1, b2 = hp["b1"], hp["b2"]
  t = adam.count.astype(jnp.float32)
  coef = {"b1": b1, "b2": b2, "c1": 1 - b1 ** t, "c2": 1 - b2 ** t,
          "dc1": -t * b1 ** (t - 1), "dc2": -t * b2 ** (t - 1),  # d c1 / d b1, d c2 / d b2
          "eps": hp["eps"], "eps_root": hp["eps_root"], "base_lr": base_lr}
  return adam, coef, hp.get("weight_decay", jnp.zeros((), jnp.float32))


def _leaf_coefficients(dt: Any, coef: Mapping[str, jax.Array], wd: jax.Array, decays: bool,
                       base_lr: jax.Array, multiplier: jax.Array | None, gid: int
                       ) -> tuple[jax.Array, jax.Array, dict[str, jax.Array]]:
  """(s, the leaf's weight decay, `coef`), cast to the leaf's dtype `dt`; s = base_lr times the
  leaf's multiplier (`multiplier[gid]` for a vector one)."""
  cast = lambda x: jnp.asarray(x).astype(dt)  # noqa: E731
  vector_lr = multiplier is not None and jnp.ndim(multiplier) > 0
  s = cast(base_lr * (multiplier[gid] if vector_lr else
                      (multiplier if multiplier is not None else 1.0)))
  wd_leaf = cast(wd) if decays else jnp.zeros((), dt)
  return s, wd_leaf, {k: cast(x) for k, x in coef.items()}


def adamw_params_before(new_params: PyTree, new_opt_state: Any, d_grads: PyTree,
                        hyperparams: Mapping[str, jax.Array], base_lr: jax.Array,
                        closed_form: ClosedForm, multiplier: jax.Array | None = None,
                        lr_group_ids: PyTree | None = None) -> PyTree:
  """theta, the params before an AdamW update, from theta1 and the updated moments:
  theta = (theta1 + s a) / (1 - s wd) (module docstring); equal to the old params up to
  rounding (about one float32 ulp of theta1).

  What it is for: step e) with a re-run forward needs the old params after the guide pass;
  keeping them costs a params-sized copy for the whole guided step (the updated params are
  written over them), recovering them costs one elementwise pass. Each leaf is made dependent on
  its `d_grads` leaf (`_after`), so XLA computes it after d), when it is needed.

  Args: as `adamw_derivatives`; `d_grads`: (du/dg)^T v (structure of the params).
  """
  adam, coef, wd = _adamw_coefficients(new_opt_state, hyperparams, base_lr)
  leaves, treedef, mask, groups, _ = _leaf_layout(new_params, closed_form, multiplier,
                                                  lr_group_ids)
  before = []
  for theta1, m1, n1, dg, decays, gid in zip(
      leaves, treedef.flatten_up_to(adam.mu), treedef.flatten_up_to(adam.nu),
      treedef.flatten_up_to(d_grads), mask, groups):
    s, wd_leaf, c = _leaf_coefficients(theta1.dtype, coef, wd, decays, base_lr, multiplier, gid)
    theta1, m1, n1 = _after(dg, theta1, m1, n1)
    direction, _, _ = _adamw_direction(m1, n1, c)
    before.append((theta1 + s * direction) / (1 - s * wd_leaf))
  return jax.tree.unflatten(treedef, before)


def adamw_derivatives(grads: PyTree, new_opt_state: Any, new_params: PyTree, v: PyTree,
                      hyperparams: Mapping[str, jax.Array], base_lr: jax.Array,
                      names: Sequence[str], closed_form: ClosedForm,
                      multiplier: jax.Array | None = None, lr_group_ids: PyTree | None = None,
                      need_d_grads: bool = False
                      ) -> tuple[dict[str, jax.Array], PyTree | None]:
  """<v, du/dh> for each h in `names`, and optionally (du/dg)^T v, for AdamW / Adam.

  Args:
    grads: g, the gradients the update consumed (structure of `params`).
    new_opt_state: the optimizer state *after* the update (its `ScaleByAdamState` m1, n1 and
      count t).
    new_params: theta1, the params after the update.
    v: the guide-loss gradient at `new_params` (structure of `params`).
    hyperparams: the values the update used, by the optimizer's own names (`learning_rate` the
      absolute rate base_lr * multiplier for a scalar multiplier, base_lr for a vector one).
    base_lr: the schedule's rate (scalar).
    names: the guided optimizer-side names, spelled as in `hyperparams`; `learning_rate`
      means the multiplier.
    closed_form: from `closed_form_of(optimizer)` (family 'adamw').
    multiplier: the multiplier; a vector [num_groups] needs `lr_group_ids`.
    lr_group_ids: group index (Python int) per leaf, from `hypergrad.param_group_ids`.
    need_d_grads: also return (du/dg)^T v (for loss-side hyper-parameters).

  Returns:
    ({name: derivative}, d_grads or None): scalars, or [num_groups] for a vector multiplier.
  """
  unsupported = sorted(set(names) - set(SUPPORTED[ADAMW]))
  if unsupported:
    raise ValueError(f"closed-form AdamW derivative: unsupported hyper-parameter(s) "
                     f"{unsupported}; supported: {list(SUPPORTED[ADAMW])}")
  adam, coef, wd = _adamw_coefficients(new_opt_state, hyperparams, base_lr)
  ordered = list(names)
  leaves, treedef, mask, groups, vector_lr = _leaf_layout(new_params, closed_form, multiplier,
                                                          lr_group_ids)
  totals = _new_totals(ordered, multiplier.shape[0] if vector_lr else 1)
  d_grads = []
  for theta1, g, m1, n1, vv, decays, gid in zip(
      leaves, treedef.flatten_up_to(grads), treedef.flatten_up_to(adam.mu),
      treedef.flatten_up_to(adam.nu), treedef.flatten_up_to(v), mask, groups):
    s, wd_leaf, c = _leaf_coefficients(g.dtype, coef, wd, decays, base_lr, multiplier, gid)
    m1, n1 = _after(vv, m1, n1)  # direction, r and D feed several consumers: see `_after`
    terms, direction, r, den = _adamw_leaf_terms(ordered, theta1, g, m1, n1, s, wd_leaf, decays, c)
    _add_leaf(totals, ordered, terms, vv, gid)
    if need_d_grads:
      d_grads.append(-s * vv * ((1 - c["b1"]) / (c["c1"] * den)
                                - direction * (1 - c["b2"]) * g / (c["c2"] * r * den)))
  return (_finish(totals, ordered, vector_lr),
          jax.tree.unflatten(treedef, d_grads) if need_d_grads else None)


# ---------------------------------------------------------------------------- Adafactor
MIN_PARAM_SCALE = 1e-3  # optax.scale_by_param_block_rms's min_scale (T5X's epsilon2)


@dataclasses.dataclass(frozen=True)
class AdafactorOptions:
  """The static configuration of `gbt_t5x.train.optimizers.adafactor` the derivative needs
  (momentum must be None: with a first moment there is no closed form here, the VJP is used)."""
  factored: bool
  min_dim_size_to_factor: int
  multiply_by_parameter_scale: bool
  clipping: bool
  weight_decay: bool


def factored_dims(shape: tuple[int, ...], factored: bool,
                  min_dim_size_to_factor: int) -> tuple[int, int] | None:
  """Adafactor's factored axes of a param of `shape`: (second largest, largest), or None when
  its second moment is kept whole (not factored, fewer than 2 dims, or too small)."""
  if not factored or len(shape) < 2:
    return None
  order = np.argsort(shape)
  if shape[order[-2]] < min_dim_size_to_factor:
    return None
  return int(order[-2]), int(order[-1])


def param_scales(params: PyTree, options: AdafactorOptions) -> PyTree:
  """Per leaf, the relative step size max(rms(param), 1e-3) the update multiplies by (1 without
  `multiply_by_parameter_scale`): scalars computed from the params *before* the update, the only
  thing of them `adafactor_derivatives` needs (so the old params need not be kept)."""
  def scale(p):
    if not options.multiply_by_parameter_scale:
      return jnp.ones((), p.dtype)
    return jnp.maximum(jnp.sqrt(jnp.mean(jnp.square(p))), jnp.asarray(MIN_PARAM_SCALE, p.dtype))
  return jax.tree.map(scale, params)


def _direction_and_tangents(g, second, dims, beta, eps, threshold, tangents):
  """y (the clipped, rescaled gradient of one leaf) and, per tangent direction (dβ, dε, dthr),
  dy. `second` is the updated (row, col) or (v,) second moment; the old one is recovered from it
  (β > 0; at β = 0, the first step, the old moment is the zero init)."""
  gs = g * g + eps
  safe_beta = jnp.where(beta > 0, beta, 1.0)
  if dims is not None:
    d1, d0 = dims
    reduced_d1 = d1 - 1 if d1 > d0 else d1
    row1, col1 = second
    means = (jnp.mean(gs, axis=d0), jnp.mean(gs, axis=d1))
    olds = [jnp.where(beta > 0, (new - (1 - beta) * m) / safe_beta, 0.0)
            for new, m in zip((row1, col1), means)]
    row_mean = jnp.mean(row1, axis=reduced_d1, keepdims=True)
    x = g * jnp.expand_dims((row1 / row_mean) ** -0.5, d0) * jnp.expand_dims(col1 ** -0.5, d1)

    def dx_of(d_beta, d_eps):
      d_row, d_col = [d_beta * (old - m) + (1 - beta) * d_eps
                      for old, m in zip(olds, means)]
      rel = (jnp.expand_dims(d_row / row1 - jnp.mean(d_row, axis=reduced_d1, keepdims=True)
                             / row_mean, d0) + jnp.expand_dims(d_col / col1, d1))
      return -0.5 * x * rel
  else:
    (v1,) = second
    old = jnp.where(beta > 0, (v1 - (1 - beta) * gs) / safe_beta, 0.0)
    x = g * v1 ** -0.5

    def dx_of(d_beta, d_eps):
      return -0.5 * x * (d_beta * (old - gs) + (1 - beta) * d_eps) / v1
  if threshold is None:
    return x, [dx_of(db, de) for db, de, _ in tangents]
  rms = jnp.sqrt(jnp.mean(x * x))
  clipped = rms > threshold
  denom = jnp.where(clipped, rms / threshold, 1.0)
  y = x / denom
  out = []
  for db, de, dthr in tangents:
    dx = dx_of(db, de)
    d_rms = jnp.mean(x * dx) / rms
    dy_clipped = dx / denom - y * (d_rms / rms - dthr / threshold)
    out.append(jnp.where(clipped, dy_clipped, dx))
  return y, out


def adafactor_derivatives(grads: PyTree, new_opt_state: Any, new_params: PyTree, v: PyTree,
                          scales: PyTree, hyperparams: Mapping[str, jax.Array],
                          base_lr: jax.Array, names: Sequence[str], closed_form: ClosedForm,
                          multiplier: jax.Array | None = None, lr_group_ids: PyTree | None = None
                          ) -> dict[str, jax.Array]:
  """<v, du/dh> for each h in `names`, for `gbt_t5x.train.optimizers.adafactor` (momentum None).

  Per leaf (t = the updated count, β = 1 - t^-decay_rate, y = the clipped g / sqrt(v̂), s its
  `param_scales` entry, a = the leaf's group multiplier for a vector LR multiplier, else 1, lr =
  the absolute rate for a scalar multiplier, else base_lr):
      u = -a (lr s y + wd θ),   θ = (θ1 + a lr s y) / (1 - a wd)
      du/dmultiplier = -base_lr s y (scalar), -(lr s y + wd θ) (group)
      du/d(decay_rate, eps, clipping_threshold) = -a lr s dy,  dβ/d decay_rate = t^-decay_rate ln t
      du/d weight_decay_rate = -a mask θ
  dy is the hand-written tangent of the factored rescaling and the RMS clipping, from the
  updated second moments (the old ones recovered by exact algebra) and g: nothing of the state
  before the update is read but the per-leaf scalars `scales`.

  Args:
    grads: g (structure of params).
    new_opt_state: the state after the update (its `FactoredState`).
    new_params: θ1.
    v: the guide-loss gradient at θ1.
    scales: `param_scales(params_before_the_update, options)`.
    hyperparams / base_lr / names / multiplier / lr_group_ids: as `adamw_derivatives`.
    closed_form: family 'adafactor' with `adafactor` options.

  Returns:
    {name: derivative}: scalars, or [num_groups] for a vector multiplier.
  """
  options = closed_form.adafactor
  unsupported = sorted(set(names) - set(SUPPORTED[ADAFACTOR]))
  if unsupported or options is None:
    raise ValueError(f"closed-form Adafactor derivative: unsupported hyper-parameter(s) "
                     f"{unsupported}; supported: {list(SUPPORTED[ADAFACTOR])}")
  state = _inner_state(new_opt_state, optax.FactoredState, "Adafactor")
  hp = {k: jnp.asarray(val) for k, val in hyperparams.items()}
  t = jnp.asarray(state.count, jnp.float32)
  decay = hp["decay_rate"]
  beta = 1.0 - t ** (-decay)
  d_beta_d_decay = t ** (-decay) * jnp.log(t)
  wd = hp["weight_decay_rate"] if options.weight_decay else jnp.zeros((), jnp.float32)
  threshold = hp["clipping_threshold"] if options.clipping else None
  # Tangent directions (dβ, dε, dthreshold) of the names that act through y.
  directions = {"decay_rate": (d_beta_d_decay, 0.0, 0.0), "eps": (0.0, 1.0, 0.0),
                "clipping_threshold": (0.0, 0.0, 1.0)}
  through_y = [n for n in names if n in directions]
  leaves, treedef, mask, groups, vector_lr = _leaf_layout(new_params, closed_form, multiplier,
                                                          lr_group_ids)
  num_groups = multiplier.shape[0] if vector_lr else 1
  totals = _new_totals(names, num_groups)
  flat = [treedef.flatten_up_to(tree) for tree in (grads, state.v_row, state.v_col, state.v, v,
                                                     scales)]
  for theta1, g, v_row, v_col, v_full, vv, s, decays, gid in zip(leaves, *flat, mask, groups):
    dt = g.dtype
    cast = lambda x: jnp.asarray(x).astype(dt)  # noqa: E731
    g, theta1 = _after(vv, g, theta1)  # y and its tangents feed several consumers: see `_after`
    dims = factored_dims(theta1.shape, options.factored, options.min_dim_size_to_factor)
    second = (v_row, v_col) if dims is not None else (v_full,)
    y, dys = _direction_and_tangents(
        g, second, dims, cast(beta), cast(hp["eps"]),
        None if threshold is None else cast(threshold),
        [tuple(cast(x) for x in directions[n]) for n in through_y])
    a = cast(multiplier[gid]) if vector_lr else jnp.ones((), dt)
    lr = cast(base_lr * (multiplier if multiplier is not None and not vector_lr else 1.0))
    wd_leaf = cast(wd) if decays else jnp.zeros((), dt)
    theta = (theta1 + a * lr * s * y) / (1 - a * wd_leaf)
    terms = []
    for name in names:
      if name == "learning_rate":
        terms.append(-(lr * s * y + wd_leaf * theta) if vector_lr else -cast(base_lr) * s * y)
      elif name == "weight_decay_rate":
        terms.append(-a * theta if decays else jnp.zeros_like(theta1))
      else:
        terms.append(-a * lr * s * dys[through_y.index(name)])
    _add_leaf(totals, names, terms, vv, gid)
  return _finish(totals, names, vector_lr)
