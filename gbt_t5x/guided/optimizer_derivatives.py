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
import optax

PyTree = Any

ADAMW = "adamw"
FAMILIES = (ADAMW,)
# Injectable names (as the optimizer's `hyperparams` spells them) the closed form covers.
SUPPORTED = {ADAMW: ("learning_rate", "b1", "b2", "eps", "eps_root", "weight_decay")}


@dataclasses.dataclass(frozen=True)
class ClosedForm:
  """What the closed form must know about an optimizer beyond its state.

  family: 'adamw' (optax Adam with optional decoupled weight decay, built by
    `optax.inject_hyperparams` around `optax.adamw` / `optax.adam`, no Nesterov, mu in the
    gradient's dtype).
  weight_decay_mask: the `mask` given to `optax.adamw` (None: every leaf decays; a pytree of
    bools or a callable params -> pytree of bools); ignored when the optimizer has no decay.
  """
  family: str
  weight_decay_mask: Any = None


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


def _adam_state(opt_state: Any) -> Any:
  """The `ScaleByAdamState` inside an inject_hyperparams(adamw/adam) state."""
  inner = getattr(opt_state, "inner_state", None)
  for part in (inner if isinstance(inner, tuple) else (inner,)):
    if isinstance(part, optax.ScaleByAdamState):
      return part
  raise ValueError("closed-form AdamW derivative: the optimizer state holds no "
                   "optax.ScaleByAdamState")


def _mask_tree(mask: Any, params: PyTree) -> PyTree:
  if mask is None:
    return jax.tree.map(lambda _: True, params)
  return mask(params) if callable(mask) else mask


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
  adam = _adam_state(new_opt_state)
  vector_lr = multiplier is not None and jnp.ndim(multiplier) > 0
  hp = {k: jnp.asarray(val) for k, val in hyperparams.items()}
  b1, b2, eps, eps_root = hp["b1"], hp["b2"], hp["eps"], hp["eps_root"]
  wd = hp.get("weight_decay", jnp.zeros((), jnp.float32))
  t = adam.count.astype(jnp.float32)
  c1, c2 = 1 - b1 ** t, 1 - b2 ** t
  dc1 = -t * b1 ** (t - 1)  # d c1 / d b1
  dc2 = -t * b2 ** (t - 1)
  ordered = list(names)
  leaves, treedef = jax.tree.flatten(new_params)
  mask = treedef.flatten_up_to(_mask_tree(closed_form.weight_decay_mask, new_params))
  groups = treedef.flatten_up_to(lr_group_ids) if vector_lr else [0] * len(leaves)
  num_groups = multiplier.shape[0] if vector_lr else 1
  totals: dict[str, list[Any]] = {
      n: [0.0] * (num_groups if n == "learning_rate" else 1) for n in ordered}
  d_grads = []
  for theta1, g, m1, n1, vv, decays, gid in zip(
      leaves, treedef.flatten_up_to(grads), treedef.flatten_up_to(adam.mu),
      treedef.flatten_up_to(adam.nu), treedef.flatten_up_to(v), mask, groups):
    dt = g.dtype
    cast = lambda x: jnp.asarray(x).astype(dt)  # noqa: E731
    s = cast(base_lr * (multiplier[gid] if vector_lr else
                        (multiplier if multiplier is not None else 1.0)))
    wd_leaf = cast(wd) if decays else jnp.zeros((), dt)
    m_hat, n_hat = m1 / cast(c1), n1 / cast(c2)
    r = jnp.sqrt(n_hat + cast(eps_root))
    den = r + cast(eps)
    direction = m_hat / den
    keep = 1 - s * wd_leaf  # theta1 = keep * theta - s * direction
    terms = []
    for name in ordered:
      if name == "learning_rate":
        terms.append(-cast(base_lr) * (direction + wd_leaf * theta1) / keep)
      elif name == "b1":
        m_minus_g = (m1 - g) / cast(b1)
        dm_hat = m_minus_g / cast(c1) - m1 * cast(dc1) / cast(c1) ** 2
        terms.append(-s * dm_hat / den)
      elif name == "b2":
        n_minus_g2 = (n1 - g * g) / cast(b2)
        dn_hat = n_minus_g2 / cast(c2) - n1 * cast(dc2) / cast(c2) ** 2
        terms.append(s * direction / den / (2 * r) * dn_hat)
      elif name == "eps":
        terms.append(s * direction / den)
      elif name == "eps_root":
        terms.append(s * direction / den / (2 * r))
      else:  # weight_decay
        terms.append(-s * (theta1 + s * direction) / keep if decays
                     else jnp.zeros_like(theta1))
    if terms:
      sums = jax.lax.reduce(tuple(vv * term for term in terms),
                            tuple(jnp.zeros((), dt) for _ in terms),
                            lambda a, b: tuple(x + y for x, y in zip(a, b)),
                            tuple(range(theta1.ndim)))
      for name, total in zip(ordered, sums):
        k = gid if name == "learning_rate" else 0
        totals[name][k] = totals[name][k] + total
    if need_d_grads:
      d_grads.append(-s * vv * ((1 - cast(b1)) / (cast(c1) * den)
                                - direction * (1 - cast(b2)) * g / (cast(c2) * r * den)))
  out = {n: (jnp.stack([jnp.asarray(x) for x in totals[n]])
             if n == "learning_rate" and vector_lr else jnp.asarray(totals[n][0]))
         for n in ordered}
  return out, (jax.tree.unflatten(treedef, d_grads) if need_d_grads else None)
