"""The train state: step, params, optax state and (for guided runs) the guided state.

Everything in it is checkpointed together, so a restored run continues exactly. Params are stored
unboxed (plain arrays); their shardings (from the logical axis names) and every restore mode are
owned by `state_init.TrainStateInitializer`. Must not import gin, seqio or `gbt_t5x.models`.
"""
from __future__ import annotations

from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from gbt_t5x.guided import hypergrad


@flax.struct.dataclass
class TrainState:
  """Model step, params, optimizer state and optional guided state.

  Attributes:
    step: int32 scalar, number of model updates applied so far.
    params: pytree of float arrays (unboxed).
    opt_state: the optax state of an `optax.inject_hyperparams` optimizer.
    guided: the guided hyper-parameter state (`gbt_t5x.guided.meta.GuidedState`) or None.
    num_nonfinite: int32 scalar, steps whose update was skipped for a non-finite loss/gradient.
    tangents: long-horizon hypergradient tangents (`gbt_t5x.guided.forward.Tangents`: per guided
      scalar, a params-shaped tangent and the float optimizer-state leaves' tangents) or None.
  """
  step: jax.Array
  params: Any
  opt_state: Any
  guided: Any = None
  num_nonfinite: Any = None
  tangents: Any = None


def create_train_state(params: Any, optimizer: optax.GradientTransformation,
                       guided: Any = None) -> TrainState:
  """A step-0 state for `params` (unboxed) with a freshly initialised optimizer state."""
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    opt_state=optimizer.init(params), guided=guided,
                    num_nonfinite=jnp.zeros((), jnp.int32))


def keep_finite_update(old: TrainState, new: TrainState, loss: jax.Array,
                       update_ok: jax.Array | None = None) -> tuple[TrainState, jax.Array]:
  """Guards a step: if the loss or any new param is non-finite, keep `old`'s params, optimizer
  state, guided state and tangents (the step counter still advances, so the data moves on) and
  count the skip.

  Args:
    old, new: the state before and after the step.
    loss: the step's train loss (scalar).
    update_ok: the test (`hypergrad.update_is_finite`), when the guided step has already applied
      it to `new`'s params and optimizer state (before its guide pass, so that the old ones need
      not outlive the update); then only the rest of the state is picked here.

  Returns:
    (guarded state, skipped: float32 scalar 1.0 if the update was dropped).
  """
  if update_ok is None:
    ok = hypergrad.update_is_finite(loss, new.params)
    params, opt_state = hypergrad.keep_if(ok, (new.params, new.opt_state),
                                          (old.params, old.opt_state))
  else:
    ok, params, opt_state = update_ok, new.params, new.opt_state
  guarded = new.replace(params=params, opt_state=opt_state,
                        guided=hypergrad.keep_if(ok, new.guided, old.guided),
                        tangents=hypergrad.keep_if(ok, new.tangents, old.tangents),
                        num_nonfinite=old.num_nonfinite + (~ok).astype(jnp.int32))
  return guarded, (~ok).astype(jnp.float32)


def param_count(params: Any) -> int:
  """Total number of scalar parameters in a pytree."""
  return int(sum(x.size for x in jax.tree.leaves(params)))


def init_fn_for(model: Any, optimizer: optax.GradientTransformation,
                input_shapes: dict[str, tuple[int, ...]]) -> Callable[[jax.Array], TrainState]:
  """Returns `rng -> TrainState` that initialises the model's params and the optimizer state."""

  def init(rng: jax.Array) -> TrainState:
    variables = model.get_initial_variables(rng, input_shapes)
    params = nn.meta.unbox(variables["params"])
    return create_train_state(params, optimizer)

  return init
