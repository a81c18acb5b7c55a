"""Stand-in for `t5.data.mixtures` (and, through it, `t5.data.tasks`): registers this project's
SeqIO tasks and mixtures under T5's names (`c4_v220_span_corruption`, `wmt*_translate_*`,
`glue_<name>_v002`, `super_glue_<name>_v102`, `glue_v002_proportional`, ...), so that a T5X
user's `MIXTURE_OR_TASK_MODULE = 't5.data.mixtures'` imports them."""
from gbt_t5x_tasks import c4  # noqa: F401
from gbt_t5x_tasks import glue  # noqa: F401
from gbt_t5x_tasks import wmt  # noqa: F401
