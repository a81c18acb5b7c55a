"""T5X's `t5x.adafactor.Adafactor` as this project's optax Adafactor (`optimizers.adafactor`:
decay_rate, clipping_threshold, multiply_by_parameter_scale, min_dim_size_to_factor, ...)."""
from gbt_t5x.train.optimizers import adafactor as Adafactor

__all__ = ["Adafactor"]
