"""SeqIO task registrations of gbt_t5x (installed as `gbt_t5x_tasks`; gin's
MIXTURE_OR_TASK_MODULE may name this package or one of its modules).

Importing registers the tasks; it must stay cheap (no data is read or generated at import).
"""
from gbt_t5x_tasks import demo  # noqa: F401  (registers demo_nmt, demo_nmt_guide)
