"""A tiny T5 + synthetic batches shared by the train tests (one compile per configuration)."""
from __future__ import annotations

import jax
import numpy as np
import seqio

from gbt_t5x.models import encoder_decoder, network
from gbt_t5x.train import optimizers

VOCAB = 40
LENGTH = 8


def tiny_config(**overrides) -> network.T5Config:
  kwargs = dict(vocab_size=VOCAB, emb_dim=16, num_heads=2, head_dim=8, mlp_dim=32,
                num_encoder_layers=1, num_decoder_layers=1, dropout_rate=0.0, dtype="float32")
  kwargs.update(overrides)
  return network.T5Config(**kwargs)


def tiny_model(optimizer=None, **config_overrides) -> encoder_decoder.EncoderDecoderModel:
  vocab = seqio.PassThroughVocabulary(size=VOCAB)
  model = encoder_decoder.EncoderDecoderModel(
      network.Transformer(tiny_config(**config_overrides)), vocab, vocab, z_loss=1e-4,
      optimizer_def=optimizer or optimizers.adamw())
  return model


def random_batch(seed: int, batch_size: int = 8, length: int = LENGTH,
                 with_data_ids: int | None = None) -> dict[str, np.ndarray]:
  """An encoder-decoder batch with EOS-terminated, right-padded rows (T5 ids: pad 0, EOS 1)."""
  rng = np.random.RandomState(seed)
  def rows():
    toks = rng.randint(3, VOCAB, size=(batch_size, length)).astype(np.int32)
    lens = rng.randint(2, length + 1, size=batch_size)
    for i, n in enumerate(lens):
      toks[i, n - 1] = 1
      toks[i, n:] = 0
    return toks
  inputs, targets = rows(), rows()
  dec_in = np.concatenate([np.zeros((batch_size, 1), np.int32), targets[:, :-1]], axis=1)
  batch = {"encoder_input_tokens": inputs, "decoder_target_tokens": targets,
           "decoder_input_tokens": dec_in,
           "decoder_loss_weights": (targets > 0).astype(np.int32)}
  if with_data_ids:
    ids = rng.randint(0, with_data_ids, size=(batch_size, 1)).astype(np.int32)
    batch["decoder_data_ids"] = np.broadcast_to(ids, targets.shape).copy()
  return batch


INPUT_SHAPES = {"encoder_input_tokens": (1, LENGTH), "decoder_input_tokens": (1, LENGTH),
                "decoder_target_tokens": (1, LENGTH)}


def params_close(a, b, atol=1e-5, rtol=1e-5) -> bool:
  return all(np.allclose(np.asarray(x), np.asarray(y), atol=atol, rtol=rtol)
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
