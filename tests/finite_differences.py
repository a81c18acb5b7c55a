"""Central finite differences of a scalar function of a dict of raw hyper-parameter values."""
from __future__ import annotations

from typing import Any, Callable, Mapping

import jax.numpy as jnp
import numpy as np


def central_differences(fn: Callable[[dict[str, Any]], Any], raw: Mapping[str, Any], name: str,
                        step: float) -> np.ndarray:
  """d fn / d raw[name] by central differences, entry by entry (float64, shape of raw[name])."""
  base = np.asarray(raw[name], np.float64)
  fd = np.zeros(base.shape)
  for idx in np.ndindex(base.shape):
    values = []
    for sign in (1.0, -1.0):
      shifted = base.copy()
      shifted[idx] += sign * step
      values.append(float(fn(dict(raw, **{name: jnp.asarray(shifted)}))))
    fd[idx] = (values[0] - values[1]) / (2 * step)
  return fd
