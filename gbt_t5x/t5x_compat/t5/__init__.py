"""gbt_t5x's stand-in for T5's `t5` package, as far as T5X users' gin files and flags name it
(`MIXTURE_OR_TASK_MODULE = 't5.data.mixtures'`): importable only after the entry points call
`gbt_t5x.t5x_compat.activate()`, and never in front of a real installed `t5`."""
