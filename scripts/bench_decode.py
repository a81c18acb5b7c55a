"""Benchmark: decoding throughput (sentences/s) of greedy and beam-4 search on the tiny T5.

Times the jitted `EncoderDecoderModel.predict_batch_with_aux` (encoder + the `lax.while_loop`
decoder with the key/value cache) on the T5 v1.1 tiny network (emb 128, 4 x 32 heads, mlp 256,
2 + 2 layers, vocab 1152; randomly initialised, float32, 1 device) at batch 32, input length 64,
decode length 40, and, for reference, greedy without the cache (the decoder re-run on the whole
prefix each step). Sentences/s = batch / median seconds per call. A random network rarely emits
EOS, so every row usually runs the full decode length; the table shows the mean decoded length.

Usage:
  .venv/bin/python scripts/bench_decode.py            # B32, inputs 64, decode 40
  .venv/bin/python scripts/bench_decode.py --quick    # B8, inputs 32, decode 16
  .venv/bin/python scripts/bench_decode.py --batch 64 --iters 5 --no_uncached

Not a test; prints a table and a final `ratio:` line (beam 4 time / greedy time).
"""
from __future__ import annotations

import argparse
import functools
import time

import bench_common as bc  # first: sets XLA_FLAGS before jax starts

import flax.linen as nn
import jax
import numpy as np

from gbt_t5x.models import encoder_decoder
from gbt_t5x.models import network


class _Uncached:
  """Wraps a `Transformer` so that `predict_batch` sees no cached `decode` (reference path)."""

  def __init__(self, module: network.Transformer):
    self.module = module

  def apply(self, *args, **kwargs):
    return self.module.apply(*args, **kwargs)

  def decode(self, encoded, encoder_input_tokens, decoder_input_tokens, decoder_target_tokens,
             *, enable_dropout=False):
    """Signature only (no `decode` flag): `predict_batch` then uses `apply(method='decode')`."""
    raise NotImplementedError


def _mean_length(tokens: np.ndarray) -> float:
  """Mean decoded length (tokens up to and including EOS, else the full length) of `[B, T]`."""
  is_eos = tokens == encoder_decoder.EOS_ID
  return float(np.where(is_eos.any(1), is_eos.argmax(1) + 1, tokens.shape[1]).mean())


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="B8, inputs 32, decode 16")
  parser.add_argument("--batch", type=int, default=None)
  parser.add_argument("--inputs_length", type=int, default=None)
  parser.add_argument("--decode_length", type=int, default=None)
  parser.add_argument("--beam_size", type=int, default=4)
  parser.add_argument("--alpha", type=float, default=0.6)
  parser.add_argument("--iters", type=int, default=3, help="timed calls per row (median)")
  parser.add_argument("--no_uncached", action="store_true", help="skip the uncached greedy row")
  args = parser.parse_args()
  batch_size, inputs_length, decode_length = (8, 32, 16) if args.quick else (32, 64, 40)
  batch_size = args.batch or batch_size
  inputs_length = args.inputs_length or inputs_length
  decode_length = args.decode_length or decode_length

  config = bc.t5_config("tiny")
  model = encoder_decoder.EncoderDecoderModel(network.Transformer(config), None, None)
  shapes = {"encoder_input_tokens": (1, inputs_length), "decoder_input_tokens": (1, decode_length)}
  params = nn.meta.unbox(jax.jit(lambda rng: model.get_initial_variables(rng, shapes))(
      jax.random.PRNGKey(0))["params"])
  data = bc.synthetic_batch(0, batch_size, inputs_length, decode_length, config.vocab_size)
  batch = {"encoder_input_tokens": data["encoder_input_tokens"]}

  runs = [("greedy", model, {"method": "greedy"}),
          (f"beam {args.beam_size}", model,
           {"method": "beam", "beam_size": args.beam_size, "alpha": args.alpha})]
  if not args.no_uncached:
    uncached = encoder_decoder.EncoderDecoderModel(_Uncached(model.module), None, None)
    runs.append(("greedy, no cache", uncached, {"method": "greedy"}))

  print(bc.device_line())
  print(f"tiny T5 ({bc.count_params(params):,} params, float32); batch {batch_size}, inputs "
        f"{inputs_length}, decode length {decode_length}; 1 warm-up call, median of "
        f"{args.iters}")
  rows, seconds = [], {}
  for name, m, decoder_params in runs:
    predict = jax.jit(functools.partial(m.predict_batch_with_aux, decoder_params=decoder_params,
                                        max_decode_length=decode_length))
    start = time.perf_counter()
    tokens, _ = jax.block_until_ready(predict(params, batch))
    compile_s = time.perf_counter() - start
    t = bc.time_fn(lambda: predict(params, batch), args.iters, warmup=0)
    seconds[name] = t
    rows.append([name, t * 1e3, batch_size / t, _mean_length(np.asarray(tokens)), compile_s])
  print()
  bc.print_table(["decoder", "ms/batch", "sentences/s", "mean len", "1st call s"], rows)
  print()
  beam = f"beam {args.beam_size}"
  print(f"ratio: {beam} time / greedy time = {seconds[beam] / seconds['greedy']:.2f}")


if __name__ == "__main__":
  main()
