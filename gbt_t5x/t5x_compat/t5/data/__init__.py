"""Stand-in for `t5.data`: see `gbt_t5x.t5x_compat`."""
