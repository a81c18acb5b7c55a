"""T5's text-to-text form of GLUE / SuperGLUE style classification examples, and its inverse.

What it is for: the pure pieces the GLUE and SuperGLUE task registrations (`gbt_t5x_tasks.glue`)
are made of, reusable by any classification-like task family (the demo's downstream tasks):

* formatters: one raw example (dict of scalar tf tensors, TFDS feature names) -> a dict with
  `inputs` / `targets` (scalar tf.string) plus pass-through ids. The text is
  "<benchmark> <key1>: <text1> <key2>: <text2> ..." and the target is the label's name
  (`"<unk>"` for the hidden label -1 of test splits), e.g. "cola sentence: It rains." ->
  "acceptable". STS-B targets are the score rounded to the nearest 0.2 ("3.8"); WSC marks its
  two spans with `*` and `#`; ReCoRD expands to one example per reference answer.
* postprocessors with seqio's signature `fn(text, example=None, is_target=False)` mapping
  generated text back to a label id (-1 for text that is no label), a float (STS-B), or the
  grouped dicts `gbt_t5x.data.metrics` expects for MultiRC and ReCoRD.
* guide keys: the scalar string that decides guide-split membership of a raw example
  (`gbt_t5x.data.guide_split`), built from the example's TFDS `idx` so answers of one MultiRC
  question / one ReCoRD query stay on the same side.

Must not import: jax, flax, seqio, or anything of `gbt_t5x.models` / `train` / `guided`.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Optional, Sequence, Union

import numpy as np
import tensorflow as tf

UNKNOWN_LABEL = "<unk>"
Example = dict[str, Any]


def _check_names(names: Sequence[str], what: str) -> tuple[str, ...]:
  names = tuple(names)
  if not names or not all(isinstance(n, str) and n for n in names):
    raise ValueError(f"{what} must be a non-empty sequence of non-empty strings, got {names!r}")
  return names


def label_name(label: tf.Tensor, label_names: Sequence[str]) -> tf.Tensor:
  """The name (scalar tf.string) of the integer class `label`; "<unk>" for -1 (hidden label)."""
  names = tf.constant(_check_names(label_names, "label_names"))
  label = tf.cast(label, tf.int32)
  return tf.where(label < 0, tf.constant(UNKNOWN_LABEL),
                  tf.gather(names, tf.maximum(label, 0)))


def join_fields(benchmark: str, ex: Mapping[str, tf.Tensor],
                feature_names: Sequence[str]) -> tf.Tensor:
  """"<benchmark> <f1>: <ex[f1]> <f2>: <ex[f2]> ..." as a scalar tf.string."""
  parts = [tf.constant(benchmark)]
  for name in _check_names(feature_names, "feature_names"):
    parts += [tf.constant(f"{name}:"), ex[name]]
  return tf.strings.join(parts, separator=" ")


def _passthrough_idx(ex: Mapping[str, Any]) -> Example:
  """The TFDS `idx` as flat int32 features: `idx`, or `idx/<part>` for a nested idx."""
  idx = ex["idx"]
  if isinstance(idx, Mapping):
    return {f"idx/{k}": tf.cast(v, tf.int32) for k, v in idx.items()}
  return {"idx": tf.cast(idx, tf.int32)}


def text_to_text(ex: Mapping[str, Any], benchmark: str, feature_names: Sequence[str],
                 label_names: Sequence[str]) -> Example:
  """A labelled example -> {"inputs", "targets": scalar tf.string, "idx"[/part]: int32}.

  `feature_names` fixes the order of the text fields (T5 sorts them alphabetically for most
  tasks); `benchmark` is the prefix word, e.g. "mnli" (also used for GLUE's AX)."""
  return {"inputs": join_fields(benchmark, ex, feature_names),
          "targets": label_name(ex["label"], label_names),
          **_passthrough_idx(ex)}


def multirc_text_to_text(ex: Mapping[str, Any]) -> Example:
  """MultiRC: drops the paragraph's `<br>`/`<b>` markup, then "multirc question: ... answer:
  ... paragraph: ..." -> "False"/"True", with `idx/paragraph`, `idx/question`, `idx/answer`."""
  paragraph = tf.strings.regex_replace(ex["paragraph"], "<br>", " ")
  paragraph = tf.strings.regex_replace(paragraph, "</?b>", "")
  return text_to_text({**ex, "paragraph": paragraph}, "multirc",
                      ("question", "answer", "paragraph"), ("False", "True"))


def stsb_target(score: tf.Tensor) -> tf.Tensor:
  """An STS-B similarity in [0, 5] -> its nearest multiple of 0.2 with one decimal ("3.8")."""
  rounded = tf.round(tf.cast(score, tf.float32) * 5.0) / 5.0
  return tf.strings.as_string(rounded, precision=1)


def stsb_text_to_text(ex: Mapping[str, Any]) -> Example:
  """STS-B: "stsb sentence1: ... sentence2: ..." -> the score rounded to 0.2, e.g. "2.4"."""
  return {"inputs": join_fields("stsb", ex, ("sentence1", "sentence2")),
          "targets": stsb_target(ex["label"]), **_passthrough_idx(ex)}


def mark_spans(text: tf.Tensor, span1_index: tf.Tensor, span1_text: tf.Tensor,
               span2_index: tf.Tensor, span2_text: tf.Tensor) -> tf.Tensor:
  """Surrounds word span 1 with "* ... *" and span 2 with "# ... #" (scalar tf.string).

  Spans are given by their first word's index in the whitespace-split `text` and their text
  (its word count sets the span length). Words are re-joined with single spaces; an index
  outside the text leaves that span unmarked."""
  words = tf.strings.split(text)
  pos = tf.range(tf.size(words))
  prefix = tf.fill(tf.shape(words), "")
  suffix = tf.fill(tf.shape(words), "")
  for index, span, mark in ((span1_index, span1_text, "*"), (span2_index, span2_text, "#")):
    start = tf.cast(index, tf.int32)
    end = tf.minimum(start + tf.maximum(tf.size(tf.strings.split(span)), 1) - 1,
                     tf.size(words) - 1)
    valid = tf.logical_and(start >= 0, start < tf.size(words))
    prefix = tf.where(pos == start, tf.strings.join([prefix, mark + " "]), prefix)
    suffix = tf.where(tf.logical_and(valid, pos == end),
                      tf.strings.join([suffix, " " + mark]), suffix)
  return tf.strings.reduce_join(tf.strings.join([prefix, words, suffix]), separator=" ")


def wsc_text_to_text(ex: Mapping[str, Any]) -> Example:
  """WSC (classification form): "wsc text: The * cat * ate because # it # ..." -> "False"/"True"
  (does the pronoun `#` refer to the `*` noun phrase)."""
  marked = mark_spans(ex["text"], ex["span1_index"], ex["span1_text"], ex["span2_index"],
                      ex["span2_text"])
  return {"inputs": tf.strings.join([tf.constant("wsc text:"), marked], separator=" "),
          "targets": label_name(ex["label"], ("False", "True")), **_passthrough_idx(ex)}


def record_passage(passage: tf.Tensor) -> tf.Tensor:
  """ReCoRD passage with its "\\n@highlight\\n" bullet separators turned into sentence breaks."""
  passage = tf.strings.regex_replace(passage, r"([.?!\"'])\n@highlight\n", r"\1 ")
  return tf.strings.regex_replace(passage, r"\n@highlight\n", ". ")


def record_expand(ds: tf.data.Dataset) -> tf.data.Dataset:
  """ReCoRD -> one example per reference answer (one "<unk>" example when there is none).

  Each output: `inputs` "record query: <query> entities: <e1>, <e2> passage: <passage>",
  `targets` one answer, `answers` [n] tf.string (all references, for the metric),
  `idx/passage`, `idx/query` int32."""

  def expand(ex: Mapping[str, Any]) -> tf.data.Dataset:
    inputs = tf.strings.join([
        tf.constant("record query:"), ex["query"], tf.constant("entities:"),
        tf.strings.reduce_join(ex["entities"], separator=", "), tf.constant("passage:"),
        record_passage(ex["passage"])], separator=" ")
    answers = ex["answers"]
    targets = tf.cond(tf.size(answers) > 0, lambda: answers,
                      lambda: tf.constant([UNKNOWN_LABEL]))
    shared = {"inputs": inputs, "answers": answers, **_passthrough_idx(ex)}
    return tf.data.Dataset.zip((
        tf.data.Dataset.from_tensors(shared).repeat(tf.cast(tf.size(targets), tf.int64)),
        tf.data.Dataset.from_tensor_slices(targets),
    )).map(lambda s, t: {**s, "targets": t})

  return ds.flat_map(expand)


# ----------------------------------------------------------------------------- guide keys


def guide_key(ex: Mapping[str, Any], dataset_name: str) -> tf.Tensor:
  """Scalar tf.string "<dataset_name>:<idx>" deciding guide membership of a raw TFDS example.

  Nested ids use their grouping parts only: MultiRC "paragraph/question" (all answer options of
  a question together), ReCoRD "passage/query"."""
  idx = ex["idx"]
  if isinstance(idx, Mapping):
    parts = [p for p in ("paragraph", "question", "passage", "query") if p in idx]
    if not parts:
      raise ValueError(f"guide_key: nested idx has none of the grouping keys, got {sorted(idx)}")
    ids = [tf.strings.as_string(tf.cast(idx[p], tf.int64)) for p in parts]
    key = tf.strings.join(ids, separator="/")
  else:
    key = tf.strings.as_string(tf.cast(idx, tf.int64))
  return tf.strings.join([tf.constant(f"{dataset_name}:"), key])


# ----------------------------------------------------------------------------- postprocessors


def _text(s: Union[str, bytes]) -> str:
  return s.decode("utf-8") if isinstance(s, bytes) else str(s)


def string_label_to_class_id(label_names: Sequence[str],
                             default: int = -1) -> Callable[..., int]:
  """Postprocessor: generated text -> index of the exactly matching label name, else `default`.

  The returned fn has seqio's signature `fn(text, example=None, is_target=False) -> int`; text
  is compared after stripping surrounding whitespace."""
  names = _check_names(label_names, "label_names")
  lookup = {n: i for i, n in enumerate(names)}

  def postprocess(text: Union[str, bytes], example: Optional[Mapping[str, Any]] = None,
                  is_target: bool = False) -> int:
    del example, is_target
    return lookup.get(_text(text).strip(), default)

  return postprocess


def string_to_float(text: Union[str, bytes], example: Optional[Mapping[str, Any]] = None,
                    is_target: bool = False, default: float = -1.0) -> float:
  """Postprocessor (STS-B): generated text -> float, `default` (-1) if it is not a finite number."""
  del example, is_target
  try:
    value = float(_text(text).strip())
  except ValueError:
    return default
  return value if np.isfinite(value) else default


def _example_int(example: Optional[Mapping[str, Any]], key: str) -> int:
  if example is None or key not in example:
    raise ValueError(f"postprocessing a target needs the example's {key!r} feature")
  return int(example[key])


def multirc_postprocess(text: Union[str, bytes], example: Optional[Mapping[str, Any]] = None,
                        is_target: bool = False) -> dict[str, Any]:
  """MultiRC: {"value": 0/1/-1} and, for targets, "group": (paragraph idx, question idx)."""
  out: dict[str, Any] = {"value": string_label_to_class_id(("False", "True"))(text)}
  if is_target:
    out["group"] = (_example_int(example, "idx/paragraph"), _example_int(example, "idx/question"))
  return out


def record_postprocess(text: Union[str, bytes], example: Optional[Mapping[str, Any]] = None,
                       is_target: bool = False) -> dict[str, Any]:
  """ReCoRD: predictions {"value": text}; targets {"value": [all reference answers] (the
  example's `answers`, or [text] when it has none), "group": (passage idx, query idx)}."""
  if not is_target:
    return {"value": _text(text)}
  if example is None:
    raise ValueError("postprocessing a ReCoRD target needs the example (its 'answers')")
  answers = [_text(a) for a in np.asarray(example.get("answers", [])).reshape(-1)]
  return {"value": answers or [_text(text)],
          "group": (_example_int(example, "idx/passage"), _example_int(example, "idx/query"))}
