"""T5X's `t5x.gin_utils` as imported by T5X's run files (`from t5x import gin_utils`); the entry
points here write MODEL_DIR/config.gin themselves."""
from gbt_t5x.gin_utils import write_config_gin

__all__ = ["write_config_gin"]
