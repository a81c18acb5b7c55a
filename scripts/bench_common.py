"""Shared helpers of the `scripts/bench_*.py` benchmarks (not a test, not part of the package).

What is here: the T5 v1.1 tiny/small configurations (hard-coded copies of
`gin/models/t5_1_1_{tiny,small}.gin`, no gin parsing), a model + 1-device train state built from
them, synthetic full-length batches (no SeqIO), wall-clock timing (warm-up, then the median of N
calls, each ended by `jax.block_until_ready`), the measured matmul rate of this machine, compiled
memory sizes (`memory_analysis`) and XLA's own FLOP count (`cost_analysis`).

Import this module *before* jax anywhere else in a script: `setup_xla_flags()` runs at import and
must see the environment before the backend starts.
"""
from __future__ import annotations

import os
import re
import statistics
import time
from typing import Any, Callable, Sequence


def setup_xla_flags() -> None:
  """One host device, all cores to XLA's intra-op thread pool.

  Drops any inherited `--xla_force_host_platform_device_count` (the tests ask for 8 simulated
  devices, which would split the cores between them) and asks for Eigen's multi-threaded CPU
  kernels with one intra-op thread per core.
  """
  flags = os.environ.get("XLA_FLAGS", "")
  flags = re.sub(r"--xla_force_host_platform_device_count=\S+", "", flags)
  threads = os.cpu_count() or 1
  if "xla_cpu_multi_thread_eigen" not in flags:
    flags += " --xla_cpu_multi_thread_eigen=true"
  if "intra_op_parallelism_threads" not in flags:
    flags += f" intra_op_parallelism_threads={threads}"
  os.environ["XLA_FLAGS"] = flags.strip()
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  os.environ.setdefault("JAX_PLATFORMS", "cpu")


setup_xla_flags()

import jax  # noqa: E402  (after the flags)
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import seqio  # noqa: E402

from gbt_t5x.models import encoder_decoder, network  # noqa: E402
from gbt_t5x.train import optimizers, train_lib  # noqa: E402
from gbt_t5x.train.partitioning import PjitPartitioner  # noqa: E402

# T5 v1.1 sizes, copied from gin/models/t5_1_1_{tiny,small,base}.gin. Small's gin dtype is bfloat16;
# the benchmarks default to float32 (bfloat16 matmuls are emulated slowly on most CPUs) and take
# --dtype to override. Tiny's vocab is the demo-sized 1152 (the gin default 32128 is for real
# SentencePiece runs and would make the tiny model's logits dominate everything).
SIZES: dict[str, dict[str, Any]] = {
    "tiny": dict(vocab_size=1152, emb_dim=128, num_heads=4, head_dim=32, mlp_dim=256,
                 num_encoder_layers=2, num_decoder_layers=2),
    "small": dict(vocab_size=32128, emb_dim=512, num_heads=6, head_dim=64, mlp_dim=1024,
                  num_encoder_layers=8, num_decoder_layers=8),
    "base": dict(vocab_size=32128, emb_dim=768, num_heads=12, head_dim=64, mlp_dim=2048,
                 num_encoder_layers=12, num_decoder_layers=12),
}
# Default (batch, inputs length, targets length) per size for the benchmarks.
DEFAULT_SHAPES = {"tiny": (32, 64, 40), "small": (8, 128, 64), "base": (8, 128, 64)}
QUICK_SHAPES = {"tiny": (8, 32, 16), "small": (2, 32, 16), "base": (2, 32, 16)}


def t5_config(size: str, dtype: str = "float32", layers: int | None = None) -> network.T5Config:
  """The T5 v1.1 `size` network config, dropout off (deterministic timings).

  `layers` overrides both stack depths (the --quick runs use 1 to cut compile time).
  """
  if size not in SIZES:
    raise ValueError(f"unknown size {size!r}; known: {sorted(SIZES)}")
  kwargs = dict(SIZES[size])
  if layers:
    kwargs.update(num_encoder_layers=layers, num_decoder_layers=layers)
  return network.T5Config(**kwargs, dropout_rate=0.0, dtype=dtype,
                          mlp_activations=("gelu", "linear"), logits_via_embedding=False)


def make_model(size: str, dtype: str = "float32", optimizer=None, label_smoothing: float = 0.0,
               layers: int | None = None) -> encoder_decoder.EncoderDecoderModel:
  """An `EncoderDecoderModel` of `size` with a pass-through vocabulary and AdamW (default)."""
  config = t5_config(size, dtype, layers)
  vocab = seqio.PassThroughVocabulary(size=config.vocab_size)
  return encoder_decoder.EncoderDecoderModel(
      network.Transformer(config), vocab, vocab, label_smoothing=label_smoothing, z_loss=1e-4,
      optimizer_def=optimizer if optimizer is not None else optimizers.adamw())


def one_device_partitioner() -> PjitPartitioner:
  """A 1x1 mesh on the first device."""
  return PjitPartitioner(devices=jax.devices()[:1])


def input_shapes(inputs_length: int, targets_length: int) -> dict[str, tuple[int, int]]:
  return {"encoder_input_tokens": (1, inputs_length), "decoder_input_tokens": (1, targets_length),
          "decoder_target_tokens": (1, targets_length)}


def initial_state(model, partitioner: PjitPartitioner, inputs_length: int, targets_length: int,
                  seed: int = 0):
  """(TrainState, its shardings) freshly initialised on the 1-device mesh."""
  return train_lib.initial_train_state(model, input_shapes(inputs_length, targets_length),
                                       partitioner, jax.random.PRNGKey(seed))


def synthetic_batch(seed: int, batch_size: int, inputs_length: int, targets_length: int,
                    vocab_size: int, num_data_ids: int | None = None,
                    sharding: Any = None) -> dict[str, jax.Array]:
  """A full-length encoder-decoder batch (no padding; EOS=1 last), int32 `[B, L]` features.

  Every position is a real token, so tokens/s counts B * (inputs + targets) real tokens.
  With `num_data_ids`, adds `decoder_data_ids` (one random id per row, copied to its tokens).
  """
  rng = np.random.RandomState(seed)
  def rows(length):
    toks = rng.randint(3, vocab_size, size=(batch_size, length)).astype(np.int32)
    toks[:, -1] = 1
    return toks
  inputs, targets = rows(inputs_length), rows(targets_length)
  dec_in = np.concatenate([np.zeros((batch_size, 1), np.int32), targets[:, :-1]], axis=1)
  batch = {"encoder_input_tokens": inputs, "decoder_target_tokens": targets,
           "decoder_input_tokens": dec_in,
           "decoder_loss_weights": np.ones_like(targets)}
  if num_data_ids:
    ids = rng.randint(0, num_data_ids, size=(batch_size, 1)).astype(np.int32)
    batch["decoder_data_ids"] = np.broadcast_to(ids, targets.shape).copy()
  if sharding is not None:
    return {k: jax.device_put(v, sharding) for k, v in batch.items()}
  return {k: jnp.asarray(v) for k, v in batch.items()}


# ----------------------------------------------------------------------------- timing
def time_fn(fn: Callable[[], Any], iters: int, warmup: int = 1) -> float:
  """Median wall-clock seconds of `fn()` over `iters` calls after `warmup` calls.

  Each call is ended by `jax.block_until_ready` on its result, so the time is device work plus
  dispatch, not just the asynchronous launch. The first warm-up call includes compilation.
  """
  for _ in range(max(warmup, 0)):
    jax.block_until_ready(fn())
  times = []
  for _ in range(max(iters, 1)):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return statistics.median(times)


class Stepper:
  """Calls a state-donating step `state, *args -> (state, metrics)` repeatedly for `time_fn`.

  The state is threaded through (it is donated, so the old one cannot be reused).
  """

  def __init__(self, step: Callable, state: Any, *args: Any):
    self.step, self.state, self.args = step, state, args

  def __call__(self):
    self.state, metrics = self.step(self.state, *self.args)
    return self.state, metrics


def matmul_flops_per_s(n: int = 2048, iters: int = 5, dtype=jnp.float32) -> float:
  """This machine's measured float32 matmul rate: a jitted n x n x n `jnp.dot`, median of N.

  FLOPs per call = 2 n^3.
  """
  key_a, key_b = jax.random.split(jax.random.PRNGKey(0))
  a = jax.random.normal(key_a, (n, n), dtype)
  b = jax.random.normal(key_b, (n, n), dtype)
  dot = jax.jit(jnp.dot)
  seconds = time_fn(lambda: dot(a, b), iters, warmup=2)
  return 2.0 * n ** 3 / seconds


# ----------------------------------------------------------------------------- compiled stats
def compiled(jitted: Any, *args: Any):
  """`jitted.lower(*args).compile()` (works for plain `jax.jit` and `PjitPartitioner.partition`)."""
  return jitted.lower(*args).compile()


def memory_bytes(compiled_fn: Any) -> int | None:
  """Deterministic peak estimate of a compiled function from XLA's buffer assignment.

  argument + output + temp − alias bytes of `compiled.memory_analysis()` (alias: outputs that
  reuse donated argument buffers, so they are not counted twice). None where unavailable.
  """
  try:
    m = compiled_fn.memory_analysis()
  except Exception:  # pragma: no cover - backend without memory stats
    return None
  if m is None:
    return None
  return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
             - m.alias_size_in_bytes)


def xla_cost(compiled_fn: Any) -> tuple[float, float]:
  """(FLOPs, bytes accessed) of a compiled function by XLA's `cost_analysis()` (nan where the
  backend gives none). Static counts of the optimized HLO, per call: what each pass costs on
  any machine, unlike a timing; bytes are operand + output bytes summed over HLO ops (fusion
  internals excluded), i.e. memory traffic, not peak memory."""
  try:
    cost = compiled_fn.cost_analysis()
  except Exception:  # pragma: no cover
    return float("nan"), float("nan")
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  cost = cost or {}
  return float(cost.get("flops", float("nan"))), float(cost.get("bytes accessed", float("nan")))


def xla_flops(compiled_fn: Any) -> float | None:
  """XLA's own FLOP count of a compiled function (`cost_analysis()['flops']`), or None."""
  try:
    cost = compiled_fn.cost_analysis()
  except Exception:  # pragma: no cover
    return None
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  if not cost or "flops" not in cost:
    return None
  return float(cost["flops"])


# ----------------------------------------------------------------------------- analytic FLOPs
def matmul_param_counts(config: network.T5Config) -> dict[str, int]:
  """Parameters used in matmuls, split by which tokens they act on.

  Returns `enc` (per encoder token: self-attention q,k,v,o and the gated MLP of every encoder
  layer), `dec` (per decoder token: self-attention q,k,v,o, cross-attention q,o, MLP, and the
  output projection `logits_dense`) and `cross_kv` (per *encoder* token: the cross-attention
  k,v projections of every decoder layer). The embedding lookup, norms and relative-position
  tables are not matmuls and are excluded.
  """
  d, hd, m = config.emb_dim, config.num_heads * config.head_dim, config.mlp_dim
  n_in = len(config.mlp_activations)
  attn = 4 * d * hd
  mlp = n_in * d * m + m * d
  enc = config.num_encoder_layers * (attn + mlp)
  dec = config.num_decoder_layers * (attn + 2 * d * hd + mlp) + d * config.vocab_size
  cross_kv = config.num_decoder_layers * 2 * d * hd
  return {"enc": enc, "dec": dec, "cross_kv": cross_kv}


def count_params(params: Any) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))


def params_bytes(params: Any) -> int:
  """Bytes of one copy of `params` (each leaf's size × its dtype's item size)."""
  return int(sum(np.prod(x.shape) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(params)))


def train_step_flops(config: network.T5Config, batch_size: int, inputs_length: int,
                     targets_length: int) -> float:
  """Analytic model FLOPs of one forward+backward train step (the optimizer is not counted).

      F = 6 * B * (Le * (P_enc + P_cross_kv) + Ld * P_dec)
        + 3 * 4 * B * h * dk * (Ne * Le^2 + Nd * (Ld^2 + Ld * Le))

  with P_* from `matmul_param_counts` (2 FLOPs per multiply-add, x3 for forward + backward),
  and the attention score (QK^T) and value (AV) matmuls of every encoder self-, decoder self- and
  decoder cross-attention layer (2 matmuls x 2 FLOPs per multiply-add, full (unmasked) score
  matrices since the kernels compute them in full, x3 for forward + backward).
  """
  p = matmul_param_counts(config)
  b, le, ld = batch_size, inputs_length, targets_length
  dense = 6.0 * b * (le * (p["enc"] + p["cross_kv"]) + ld * p["dec"])
  hdk = config.num_heads * config.head_dim
  attention = 12.0 * b * hdk * (config.num_encoder_layers * le * le
                                + config.num_decoder_layers * (ld * ld + ld * le))
  return dense + attention


def parse_sizes(text: str) -> list[str]:
  sizes = [s.strip() for s in text.split(",") if s.strip()]
  for s in sizes:
    if s not in SIZES:
      raise SystemExit(f"unknown size {s!r}; known: {','.join(SIZES)}")
  return sizes


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
  """A plain fixed-width text table."""
  cells = [[str(h) for h in headers]] + [[_fmt(c) for c in r] for r in rows]
  widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
  for i, row in enumerate(cells):
    print("  ".join(c.rjust(w) for c, w in zip(row, widths)))
    if i == 0:
      print("  ".join("-" * w for w in widths))


def _fmt(value: Any) -> str:
  if isinstance(value, float):
    if value == 0 or 1e-3 <= abs(value) < 1e5:
      return f"{value:.3g}" if abs(value) < 10 else f"{value:.1f}"
    return f"{value:.3g}"
  return str(value)


def device_line() -> str:
  dev = jax.devices()[0]
  return (f"device: {dev.platform} {getattr(dev, 'device_kind', '')} x1 of {jax.device_count()}; "
          f"cpus {os.cpu_count()}; XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")
