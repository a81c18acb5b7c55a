"""Stand-in for `t5.data.tasks`: the same registrations as the `mixtures` stand-in."""
from gbt_t5x.t5x_compat.t5.data import mixtures  # noqa: F401
