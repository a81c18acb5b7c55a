"""Guided (gradient-based) hyper-parameter tuning core: pure JAX + optax.

Submodules: `activations` (raw <-> effective maps), `specs` (`GuidedHParam`, validation),
`meta` (meta optimizer, `GuidedState`, non-finite skip, projection), `hypergrad` (the fused model
step + one-step-lookahead hypergradient). This package must not import gin, seqio, tensorflow,
or anything from `gbt_t5x.models` / `gbt_t5x.train`.
"""
from gbt_t5x.guided.specs import GuidedHParam, validate_specs

__all__ = ["GuidedHParam", "validate_specs"]
