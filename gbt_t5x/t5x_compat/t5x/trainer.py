"""T5X's `t5x.trainer.Trainer` as this project's trainer (`trainer.Trainer.num_microbatches`)."""
from gbt_t5x.train.trainer import Trainer

__all__ = ["Trainer"]
