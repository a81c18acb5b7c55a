"""T5X's `t5x.models.EncoderDecoderModel` as this project's model class."""
from gbt_t5x.models.encoder_decoder import EncoderDecoderModel

__all__ = ["EncoderDecoderModel"]
