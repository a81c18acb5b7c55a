"""T5X's `t5x.utils` names used in gin files, as this project's objects (same objects, so that
T5X-named and gbt_t5x-named gin bindings configure the same thing)."""
from gbt_t5x.train.data import DatasetConfig
from gbt_t5x.train.learning_rate import create_learning_rate_scheduler
from gbt_t5x.train.train_lib import CheckpointConfig, RestoreCheckpointConfig, SaveCheckpointConfig

__all__ = ["CheckpointConfig", "DatasetConfig", "RestoreCheckpointConfig", "SaveCheckpointConfig",
           "create_learning_rate_scheduler"]
