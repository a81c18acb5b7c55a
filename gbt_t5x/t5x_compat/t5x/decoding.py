"""T5X's `t5x.decoding` search functions as this project's (`gbt_t5x.models.decoding`)."""
from gbt_t5x.models.decoding import beam_search, brevity_penalty, temperature_sample

__all__ = ["beam_search", "brevity_penalty", "temperature_sample"]
