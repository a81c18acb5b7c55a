"""SeqIO task registrations of gbt_t5x (installed as `gbt_t5x_tasks`; gin's
MIXTURE_OR_TASK_MODULE may name this package or one of its modules).

Importing registers the tasks; it must stay cheap (no data is read or generated at import).
"""
from gbt_t5x_tasks import c4  # noqa: F401  (c4_span_corruption[_guide], c4_v220_span_corruption)
from gbt_t5x_tasks import demo  # noqa: F401  (demo_nmt, demo_nmt_guide)
from gbt_t5x_tasks import demo_glue  # noqa: F401  (demo_cola, demo_mrpc, demo_sst2, + _guide, mixtures)
from gbt_t5x_tasks import demo_pretrain  # noqa: F401  (demo_span_corruption[_guide])
from gbt_t5x_tasks import glue  # noqa: F401  (glue_*_v002, super_glue_*_v102, mixtures, + _guide)
from gbt_t5x_tasks import wmt  # noqa: F401  (wmt19/wmt14/wmt16 pairs, both directions, + _guide)
