"""SeqIO registrations of the demo pretraining mixture (`demo_pretrain_mixture`).

What it is for: the closed-world stand-in for a T5 pretraining mixture whose members matter
differently downstream, for guided mixture weights (gin/guided/mixture_weights.gin) and the
mixture_weights experiment. Members (span corruption as `demo_span_corruption`: C4's
preprocessing, demo vocabulary, inputs 64 / targets 14 tokens by default):

* `demo_span_corruption`: the world's source-language text (outside the 2 % guide slice) — the
  language of the demo's GLUE-style tasks and of the translation task's inputs;
* `demo_mix_target_span_corruption`, `demo_mix_shuffled_span_corruption`,
  `demo_mix_other_language_span_corruption`, `demo_mix_boilerplate_span_corruption`: the corpora
  of `gbt_t5x.data.demo_mixture_corpora` (English-like target language; the source sentences
  with shuffled words; a second invented language; web boilerplate).

`demo_pretrain_mixture` mixes them at their natural (size-proportional) rates;
`demo_pretrain_stratified` at equal rates. The guide for learning the rates is
`demo_span_corruption_guide`: held-out source-language text, the domain of the downstream tasks'
inputs (a user knows which text their downstream tasks read, not which corpus helps).

Must not import: jax, flax, or anything of `gbt_t5x.models` / `train` / `guided`.
"""
from __future__ import annotations

import functools
import pathlib
from typing import Optional

import seqio
import tensorflow as tf

from gbt_t5x.data import demo_mixture_corpora as corpora
from gbt_t5x.data import demo_world
from gbt_t5x.data import guide_split  # noqa: F401  (registers the guide splits)
from gbt_t5x_tasks import c4
from gbt_t5x_tasks import demo
from gbt_t5x_tasks import demo_pretrain

MIXTURE = "demo_pretrain_mixture"
STRATIFIED = "demo_pretrain_stratified"
SOURCE_TASK = "demo_span_corruption"
GUIDE_TASK = "demo_span_corruption_guide"


def task_name(corpus: str) -> str:
  """The span-corruption task of `corpus` ('source' or one of `corpora.CORPORA`)."""
  return SOURCE_TASK if corpus == "source" else f"demo_mix_{corpus}_span_corruption"


TASK_NAMES = tuple(task_name(c) for c in ("source", *corpora.CORPORA))


def _world_config() -> demo_world.DemoWorldConfig:
  return demo_world.DemoWorldConfig(**demo_world.config_from_env())


def _mono_outside_guide() -> tuple[str, ...]:
  """The world's source-language sentences outside the pretraining guide slice."""
  world = demo.ensure_world()
  return _mono_outside_guide_of(str(world), (world / "manifest.json").read_text())


@functools.lru_cache(maxsize=4)
def _mono_outside_guide_of(world: str, manifest: str) -> tuple[str, ...]:
  """(cached per world folder and manifest: the online sampling rates rebuild the pipeline)"""
  del manifest
  lines = [l for l in (pathlib.Path(world) / "mono.txt").read_text().splitlines() if l]
  keep = demo_pretrain._in_guide(False, demo_pretrain.GUIDE_PERCENT)  # noqa: SLF001
  mask = [bool(m) for m in tf.data.Dataset.from_tensor_slices(lines).map(keep)
          .as_numpy_iterator()] if lines else []
  return tuple(l for l, m in zip(lines, mask) if m)


def _make_dataset_fn(corpus: str):
  def dataset_fn(split: str, shuffle_files: bool, seed: Optional[int] = None
                 ) -> tf.data.Dataset:
    """{"text": tf.string} examples, one per sentence of the corpus."""
    if split != "train":
      raise ValueError(f"unknown split {split!r} of the demo mixture corpus {corpus}; it has "
                       "'train' only")
    demo.ensure_world()
    mono = _mono_outside_guide() if corpus == "shuffled" else ()
    ds = tf.data.Dataset.from_tensor_slices(list(corpora.corpus_lines(corpus, _world_config(),
                                                                      mono)))
    if shuffle_files:
      ds = ds.shuffle(1 << 17, seed=seed)
    return ds.map(lambda line: {"text": line})
  return dataset_fn


def natural_rates(config: Optional[demo_world.DemoWorldConfig] = None) -> dict[str, float]:
  """{member task: its size in sentences}: the mixture's natural rates (the source corpus
  counted as `num_mono` minus its expected 2 % guide slice)."""
  config = config or _world_config()
  source = config.num_mono * (1.0 - demo_pretrain.GUIDE_PERCENT / 100.0)
  rates = {task_name("source"): source}
  for corpus in corpora.CORPORA:
    size = corpora.size_of(corpus, config.num_mono)
    rates[task_name(corpus)] = source if corpus == "shuffled" else float(size)
  return rates


def register_demo_mixture(vocabulary: Optional[seqio.Vocabulary] = None) -> list[str]:
  """Registers the corpora's tasks and the two mixtures (natural, stratified); returns the
  mixture names. The source-language task is `gbt_t5x_tasks.demo_pretrain`'s."""
  vocabulary = vocabulary if vocabulary is not None else demo.VOCABULARY
  for corpus in corpora.CORPORA:
    name = task_name(corpus)
    seqio.TaskRegistry.remove(name)
    seqio.TaskRegistry.add(
        name, source=seqio.FunctionDataSource(_make_dataset_fn(corpus), splits=("train",)),
        preprocessors=c4.span_corruption_preprocessors(),
        output_features=c4.output_features(vocabulary), metric_fns=[])
  rates = natural_rates()
  for mixture, members in ((MIXTURE, list(rates.items())),
                           (STRATIFIED, [(t, 1.0) for t in rates])):
    seqio.MixtureRegistry.remove(mixture)
    seqio.MixtureRegistry.add(mixture, members)
  return [MIXTURE, STRATIFIED]


register_demo_mixture()
