"""T5X's minimal T5 network (`t5x.examples.t5.network`) as this project's (same parameter names)."""
from gbt_t5x.models.network import T5Config, Transformer

__all__ = ["T5Config", "Transformer"]
