"""gbt_t5x's stand-in for T5X's `t5x` package (see `gbt_t5x.t5x_compat`): importable only when the
real `t5x` is not installed, and only after the entry points call `t5x_compat.activate()`."""
