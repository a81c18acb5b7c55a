"""Mixture weights: does a pretraining mixture whose task rates are learned in one guided run beat
the mixtures users pick today, downstream?

    python scripts/experiments/mixture_weights.py [--results_dir results] [--quick] [--seeds 0,1,2]
        [--downstream MODULE:TASK[,MODULE:TASK...]]   # default: demo_cola, demo_mrpc
        [--part all|arms|bo]   # workers side by side: one seed's BO study beside its other arms

Tiny T5 (2+2 layers, as pretrain_downstream) is pretrained with span corruption on the demo
pretraining mixture (`gbt_t5x_tasks.demo_mixture`: the world's source-language text, English-like
target-language text, the source sentences with shuffled words, a second invented language,
web boilerplate), then each pretrained checkpoint is finetuned identically on the downstream
tasks and scored. Pretraining arms (per seed):

* `natural rates`: the mixture at its size-proportional rates (what T5's C4-style mixtures do);
* `stratified rates`: every member at the same rate;
* `oracle`: the source-language text alone (the one corpus the downstream tasks read);
* `GBT, loss weights`: one guided run at the natural rates learning one weight per member
  (gin/guided/mixture_weights.gin) from the guide `demo_span_corruption_guide` — held-out
  source-language text, the downstream tasks' input domain — applied as loss weights;
* `GBT, sampling rates`: the same, the weights applied as online sampling rates (refreshed every
  `RESAMPLE_EVERY` steps);
* `learned rates replayed (unseen seed)` and `natural rates (unseen seed)`: the sampling-rate
  run's time-averaged rates exported as a plain mixture (`export --as_mixture --rates mean`),
  and the natural mixture, on seed s + `UNSEEN_OFFSET`;
* `BO pick ...`: a TPE search over the members' rate multipliers (`mixture_weight_i`, log range
  `BO_RANGE`, the size's `bo_trials` plain runs scored by the guide loss, run after every seed's
  other arms): its pick within the GBT runs' compute and after all trials (only the picks are
  finetuned).

Scores: after pretraining, the span-corruption loss on held-out source-language text (dev, the
primary metric) and on the guide; downstream, each task's SeqIO metrics on its validation split
and their GLUE-style average. Compute in plain pretraining-step equivalents.

Writes RESULTS_DIR/mixture_weights/: report.md, learned_weights.png, downstream.png,
experiment.json, records/ and runs/. Rerunning skips finished runs and resumes an interrupted one;
`--report_only` rebuilds the report from the records.
"""
from __future__ import annotations

import sys

from gbt_t5x import console

if __name__ == "__main__":
  console.configure(sys.argv, import_tensorflow=False)

import dataclasses
import os
from typing import Any, Sequence

import numpy as np

import pretrain_downstream as pd  # the sibling script: finetuning and downstream scoring
from harness import common, report

NAME = "mixture_weights"
MODULE = "gbt_t5x_tasks.demo_mixture"
DEFAULT_DOWNSTREAM = ",".join(f"gbt_t5x_tasks.demo_glue:demo_{t}" for t in ("cola", "mrpc"))
QUICK_DOWNSTREAM = "gbt_t5x_tasks.demo_glue:demo_cola"
RESAMPLE_EVERY = 50
UNSEEN_OFFSET = 100
NATURAL, STRATIFIED, ORACLE = "natural rates", "stratified rates", "oracle (source text only)"
GBT_LW, GBT_SR = "GBT, loss weights", "GBT, sampling rates"
REPLAY, NATURAL_UNSEEN = ("learned rates replayed (unseen seed)", "natural rates (unseen seed)")
DOREMI_PROXY, DOREMI = "DoReMi proxy (Group DRO)", "DoReMi"
BO_STUDY = "BO over the rates"
BO_AT_GBT, BO_FINAL = "BO pick at GBT's compute", "BO pick after all trials"
BO_RANGE = (0.1, 10.0)  # each member's rate multiplier, searched in log scale
PRETRAIN_ARMS = (NATURAL, STRATIFIED, ORACLE, GBT_LW, GBT_SR, DOREMI)
QUICK_ARMS = (NATURAL, GBT_SR, DOREMI)
PARTS = ("all", "arms", "bo")
PRETRAIN_METRICS = (("dev_loss", "source-text dev loss", 3, False),
                    ("guide_loss", "guide loss", 3, False))


def _add_flags(parser) -> None:
  parser.add_argument("--downstream", default=None,
                      help=f"comma-separated MODULE:TASK downstream tasks (default "
                      f"{DEFAULT_DOWNSTREAM}; --quick: {QUICK_DOWNSTREAM})")
  parser.add_argument("--part", default="all", choices=PARTS,
                      help="which runs this process makes: all (default), the arms other than "
                      "BO, or the BO study and its picks (which need the seed's natural and GBT "
                      "records); the records are the same whichever way they are split")


def pretrain_arms(quick: bool) -> tuple[str, ...]:
  return QUICK_ARMS if quick else PRETRAIN_ARMS


def pretrain_score(exp: common.Experiment):
  """(model, params) -> {'dev_loss', 'dev_accuracy', 'guide_loss'} (span corruption, per token)."""
  from gbt_t5x import scoring
  from gbt_t5x_tasks import demo_mixture, demo_pretrain
  lengths = dict(demo_pretrain.DEFAULT_SEQUENCE_LENGTH)
  size = exp.size

  def score(model, params) -> dict[str, float]:
    dev = scoring.teacher_forced(model, params, demo_mixture.SOURCE_TASK, "validation", lengths,
                                 size.batch_size, size.eval_batches, MODULE)
    guide = scoring.teacher_forced(model, params, demo_mixture.GUIDE_TASK, "validation",
                                   lengths, size.batch_size, size.eval_batches, MODULE)
    return {"dev_loss": dev["loss"], "dev_accuracy": dev["accuracy"], "guide_loss": guide["loss"]}

  return score


def weights_extra(model_dir: str) -> dict[str, Any]:
  """The learned weights by task name (trajectory) for the record."""
  from gbt_t5x.guided import export
  extra = common.trajectory_extra(model_dir)
  rows = export.read_trajectory(model_dir)
  extra["task_names"] = rows[-1]["entry_names"]["data_weights"]
  return extra


def doremi_proxy_gin(path: str, plain_gin: str, reference_dir: str,
                     domain_names: Sequence[str]) -> str:
  """A gin file: DoReMi's Group-DRO proxy run (`harness.doremi`) on the mixture at
  its natural rates, the natural-rates run of the same seed as reference; `domain_names`: the
  leaf tasks in data-id order (the progress line and summaries name the weights by them)."""
  return common.write_gin(path, [
      "# Generated by gbt_t5x.experiments: DoReMi's proxy run.",
      "from __gin__ import dynamic_registration",
      "import __main__ as train_script",
      "from harness import doremi",
      "from gbt_t5x.train import data",
      "from gbt_t5x.train import learning_rate",
      f"include '{os.path.abspath(plain_gin)}'",
      "train_script.train.trainer_cls = @doremi.DoReMiTrainer",
      f"doremi.DoReMiTrainer.reference_dir = {os.path.abspath(reference_dir)!r}",
      f"doremi.DoReMiTrainer.num_domains = {len(domain_names)}",
      f"doremi.DoReMiTrainer.hyperparam_entry_names = {{'data_weights': {list(domain_names)!r}}}",
      "doremi.DoReMiTrainer.learning_rate_fn = @learning_rate.create_learning_rate_scheduler()",
      "train/data.DatasetConfig.data_id_feature = 'mixture_task'",
  ])


def doremi_extra(model_dir: str) -> dict[str, Any]:
  """The proxy's mean domain weights (by task name) for its record."""
  import json as json_lib
  from gbt_t5x.data import data_ids
  from harness import doremi
  from gbt_t5x_tasks import demo_mixture
  with open(os.path.join(model_dir, doremi.WEIGHTS_FILE)) as f:
    weights = json_lib.load(f)["mean_weights"]
  names = data_ids.data_id_names(demo_mixture.MIXTURE, data_ids.MIXTURE_TASK)
  return {"doremi_weights": dict(zip(names, weights))}


def doremi_gin(path: str, proxy: Any) -> str:
  """A gin file: the mixture with DoReMi's averaged domain weights as its rates."""
  from gbt_t5x.guided import mixture_export
  from gbt_t5x_tasks import demo_mixture
  natural = demo_mixture.natural_rates()
  alpha = proxy.extra["doremi_weights"]
  # learned_mixture multiplies each natural rate by a weight: weight = α / natural rate.
  weights = {k: alpha[k] / natural[k] * sum(natural.values()) for k in alpha}
  return common.write_gin(path, [mixture_export.mixture_gin_text(
      demo_mixture.MIXTURE, MODULE, weights, "DoReMi's proxy", "mean").rstrip("\n")])


def run_all(exp: common.Experiment, downstream: Sequence[tuple[str, str]],
            part: str = "all") -> None:
  """Runs (or resumes) `part` of the experiment (`PARTS`) for `exp.seeds`."""
  from gbt_t5x.data import data_ids
  from gbt_t5x.guided import export, mixture_export
  from gbt_t5x_tasks import demo_mixture, demo_pretrain
  size, out = exp.size, exp.out
  lengths = dict(demo_pretrain.DEFAULT_SEQUENCE_LENGTH)
  plain_gin = common.pretrain_gin(os.path.join(out, "gin", "pretrain.gin"))
  meta_lr = size.meta_learning_rate(steps=size.pretrain_steps)
  guided = {
      mode: common.guided_gin(
          os.path.join(out, "gin", f"pretrain_guided_{mode}.gin"), os.path.abspath(plain_gin),
          ("mixture_weights",), meta_lr, size.hyper_step_every,
          guide_task=demo_mixture.GUIDE_TASK,
          extra=[f"MIXTURE_SAMPLING = {mode!r}", f"MIXTURE_RESAMPLE_EVERY = {RESAMPLE_EVERY}"])
      for mode in ("loss_weights", "sampling_rates")}
  base = [f"TASK_FEATURE_LENGTHS = {lengths!r}", "PACK = False", *pd.layer_bindings(size),
          f"MIXTURE_OR_TASK_MODULE = {MODULE!r}"]
  task = lambda name: [f"MIXTURE_OR_TASK_NAME = {name!r}"]  # noqa: E731
  arms = {NATURAL: ([plain_gin], task(demo_mixture.MIXTURE), None),
          STRATIFIED: ([plain_gin], task(demo_mixture.STRATIFIED), None),
          ORACLE: ([plain_gin], task(demo_mixture.SOURCE_TASK), None),
          GBT_LW: ([guided["loss_weights"]], task(demo_mixture.MIXTURE), weights_extra),
          GBT_SR: ([guided["sampling_rates"]], task(demo_mixture.MIXTURE), weights_extra)}
  score = pretrain_score(exp)
  domain_names = data_ids.data_id_names(demo_mixture.MIXTURE, data_ids.MIXTURE_TASK)
  for seed in (exp.seeds if part in ("all", "arms") else ()):
    done = {}
    for label in pretrain_arms(size.quick):
      if label == DOREMI:
        natural = done[NATURAL]
        if exp.store.get(DOREMI_PROXY, seed) is None:  # The proxy starts from natural's model.
          common.ensure_checkpoint(exp, natural, arms[NATURAL][0],
                                   [*base, *arms[NATURAL][1]], score, steps=size.pretrain_steps)
        proxy_gin = doremi_proxy_gin(os.path.join(out, "gin", f"doremi_proxy_seed{seed}.gin"),
                                     plain_gin, os.path.join(out, natural.model_dir), domain_names)
        proxy = common.run_arm(exp, DOREMI_PROXY, seed, [proxy_gin],
                               [*base, *task(demo_mixture.MIXTURE)], score, doremi_extra,
                               steps=size.pretrain_steps)
        final_gin = doremi_gin(os.path.join(out, "gin", f"doremi_seed{seed}.gin"), proxy)
        arms[DOREMI] = ([plain_gin, os.path.abspath(final_gin)], [], None)
      gin_files, bindings, extra = arms[label]
      done[label] = common.run_arm(exp, label, seed, gin_files, [*base, *bindings], score, extra,
                                   steps=size.pretrain_steps)
    unseen = seed + UNSEEN_OFFSET
    learned = os.path.abspath(os.path.join(out, "gin", f"learned_mixture_seed{seed}.gin"))
    if not os.path.exists(learned):  # The time-averaged rates of this seed's sampling-rate run.
      gbt_dir = os.path.join(out, done[GBT_SR].model_dir)
      mixture_export.export_mixture(gbt_dir, export.read_trajectory(gbt_dir), "mean",
                                    demo_mixture.MIXTURE, MODULE, learned)
    arms[REPLAY] = ([plain_gin, learned], [], lambda _d, s=seed: {"weights_of_seed": s})
    arms[NATURAL_UNSEEN] = arms[NATURAL]
    for label in (REPLAY, NATURAL_UNSEEN):
      gin_files, bindings, extra = arms[label]
      done[label] = common.run_arm(exp, label, unseen, gin_files, [*base, *bindings], score,
                                   extra, steps=size.pretrain_steps)
    for label, record in done.items():
      _finetune_all(exp, downstream, record, arms[label][0], [*base, *arms[label][1]])
  for seed in (exp.seeds if part in ("all", "bo") else ()):  # BO last: cheaper arms first.
    _bo_arms(exp, downstream, seed, plain_gin, base, score)


def _bo_arms(exp: common.Experiment, downstream: Sequence[tuple[str, str]], seed: int,
             plain_gin: str, base: Sequence[str], score) -> None:
  """The TPE study over the mixture's rates for `seed`, then its two picks (at the GBT runs'
  compute and after all trials) recorded as arms (their trial's checkpoint copied) and
  finetuned."""
  import shutil

  from gbt_t5x import runner, search_space
  from harness import bo
  from gbt_t5x.guided import mixture_export
  from gbt_t5x_tasks import demo_mixture
  size, out = exp.size, exp.out
  needed = [a for a in (NATURAL, GBT_LW, GBT_SR) if a in pretrain_arms(size.quick)]
  missing = [a for a in needed if exp.store.get(a, seed) is None]
  if missing:  # BO's picks are taken at these runs' compute: they come first (`--part arms`).
    raise ValueError(f"BO over the rates, seed {seed}: the {', '.join(map(repr, missing))} "
                     f"run(s) of seed {seed} are not finished; run --part arms (or all) first")
  names = sorted(demo_mixture.natural_rates())
  search_gin = common.write_gin(os.path.join(out, "gin", "search_rates.gin"), [
      mixture_export.search_gin_text(demo_mixture.MIXTURE, MODULE, names).rstrip("\n")])
  space = ",".join(f"mixture_weight_{i}={BO_RANGE[0]!r}:{BO_RANGE[1]!r}:log"
                   for i in range(len(names)))
  gin_files = [plain_gin, os.path.abspath(search_gin)]
  trials = bo.run_study(exp, BO_STUDY, space, seed, size.bo_trials, gin_files, base,
                        demo_mixture.GUIDE_TASK, MODULE, score,
                        score_keys=("dev_loss", "dev_accuracy", "guide_loss"),
                        steps=size.pretrain_steps)
  picks = bo_picks(exp, trials, seed)
  for label, (used, trial) in picks.items():
    bindings = [*base, *search_space.bindings(trial.extra["params"])]
    record = exp.store.get(label, seed)
    if record is None:
      trial_dir, run_dir = os.path.join(out, trial.model_dir), exp.run_dir(label, seed)
      if runner.latest_step(trial_dir) >= trial.train_steps and not os.path.exists(run_dir):
        shutil.copytree(trial_dir, run_dir)
      record = dataclasses.replace(
          trial, label=label, model_dir=os.path.relpath(run_dir, out),
          extra={**trial.extra, "trial": trial.label, "bo_compute": used})
      exp.store.put(record)
    _finetune_all(exp, downstream, record, gin_files, bindings)


def bo_picks(exp: common.Experiment, trials: Sequence[Any], seed: int
             ) -> dict[str, tuple[float, Any]]:
  """{BO_AT_GBT: (compute used, trial), BO_FINAL: ...}: BO's pick (lowest guide loss so far)
  within the larger GBT arm's compute on this seed, and after all trials; compute in plain
  pretraining steps."""
  from harness import bo
  plain = common.StepTime.of(common.require_record(exp, NATURAL, seed))
  budget = max(common.step_equivalents(common.require_record(exp, a, seed), plain)
               for a in (GBT_LW, GBT_SR) if a in pretrain_arms(exp.size.quick))
  picked = bo.picks_at_budget(bo.pick_curve(trials, plain), budget)
  return {BO_AT_GBT: (picked.at_budget_compute, picked.at_budget),
          BO_FINAL: (picked.final_compute, picked.final)}


def _finetune_all(exp: common.Experiment, downstream: Sequence[tuple[str, str]], pre: Any,
                  pre_gin: Sequence[str], base: Sequence[str]) -> None:
  """Finetunes `pre`'s checkpoint on every downstream task (as pretrain_downstream does)."""
  size, out = exp.size, exp.out
  if any(exp.store.get(pd.finetune_label(pre.label, t), pre.seed) is None for _, t in downstream):
    if common.ensure_checkpoint(exp, pre, list(pre_gin), list(base), pretrain_score(exp),
                                steps=pre.train_steps):
      for _, t in downstream:
        exp.forget(pd.finetune_label(pre.label, t), pre.seed)
  for module, t in downstream:
    ft_gin = common.finetune_gin(os.path.join(out, "gin", f"finetune_{t}.gin"), t, module)
    lengths = pd.downstream_lengths(module, size)
    common.run_arm(
        exp, pd.finetune_label(pre.label, t), pre.seed, [ft_gin],
        [f"TASK_FEATURE_LENGTHS = {lengths!r}", "PACK = False", *pd.layer_bindings(size),
         f"INITIAL_CHECKPOINT_PATH = {os.path.abspath(os.path.join(out, pre.model_dir))!r}"],
        pd.downstream_scores(size, t, module, lengths), steps=size.finetune_steps)


def write_report(exp: common.Experiment, downstream: Sequence[tuple[str, str]]) -> str:
  size, seeds = exp.size, list(exp.seeds)
  unseen = [s + UNSEEN_OFFSET for s in seeds]
  arms = list(pretrain_arms(size.quick))
  get = lambda label, seed: common.require_record(exp, label, seed)  # noqa: E731
  pre = {a: [get(a, s) for s in seeds] for a in arms}
  pre[REPLAY] = [get(REPLAY, s) for s in unseen]
  pre[NATURAL_UNSEEN] = [get(NATURAL_UNSEEN, s) for s in unseen]
  bo_arms = [a for a in (BO_AT_GBT, BO_FINAL)
             if all(exp.store.get(a, s) is not None for s in seeds)]
  if len(bo_arms) == 2 and all(exp.store.get(pd.finetune_label(a, t), s) is not None
                               for a in bo_arms for _, t in downstream for s in seeds):
    pre.update({a: [get(a, s) for s in seeds] for a in bo_arms})
  else:
    bo_arms = []  # An interim report: the BO study runs after every seed's other arms.
  order = [*arms, *bo_arms, NATURAL_UNSEEN, REPLAY]
  plain_sps = {r.seed: common.StepTime.of(r) for r in pre[NATURAL]}
  plain_sps.update({s + UNSEEN_OFFSET: plain_sps[s] for s in seeds})
  compute = {a: [r.extra["bo_compute"] if a in bo_arms else
                 common.step_equivalents(r, plain_sps[r.seed]) for r in pre[a]] for a in order}
  if DOREMI in compute:  # DoReMi's compute is all three runs: reference, proxy, final.
    proxies = [get(DOREMI_PROXY, s) for s in seeds]
    compute[DOREMI] = [c + n + common.step_equivalents(p, plain_sps[p.seed]) for c, n, p in
                       zip(compute[DOREMI], compute[NATURAL], proxies)]
  pre_table = report.arm_table(order, pre, compute, PRETRAIN_METRICS)
  tasks = [t for _, t in downstream]
  glue = {a: [pd.across_tasks([get(pd.finetune_label(a, t), r.seed) for t in tasks])
              for r in pre[a]] for a in order}
  glue_metrics = [("average", "GLUE-style average", 2, True)]
  glue_table = report.arm_table(order, glue, {a: [r.train_steps for r in glue[a]] for a in order},
                                glue_metrics)
  gbt = [a for a in (GBT_LW, GBT_SR) if a in arms]
  references = [a for a in (NATURAL, STRATIFIED, ORACLE, DOREMI) if a in arms] + bo_arms
  comparisons = [(g, ref, f"{g} vs {ref}") for g in gbt for ref in references]
  comparisons.append((REPLAY, NATURAL_UNSEEN, "learned rates replayed vs natural (unseen seed)"))
  pre_paired, pre_diffs = report.paired_table(comparisons, pre, PRETRAIN_METRICS)
  glue_paired, glue_diffs = report.paired_table(comparisons, glue, glue_metrics)
  verdicts = []
  for a, b, name in comparisons:
    dev, avg = pre_diffs[(a, b)]["dev_loss"], glue_diffs[(a, b)]["average"]
    verdicts.append(f"- **{name}**: source-text dev loss {report.interval_verdict(dev, False)} "
                    f"(Δ {report.fmt_paired(dev, 3)}); GLUE-style average "
                    f"{report.interval_verdict(avg, True)} (Δ {report.fmt_paired(avg)}).")
  verdicts.append(_useless_below_useful(pre, gbt))
  _plot(exp, pre, gbt, glue, order)
  sections = [
      "\n".join(verdicts),
      f"Setup: tiny T5 ({pd.model_layers(size)}+{pd.model_layers(size)} layers) pretrained "
      f"{size.pretrain_steps} steps at batch {size.batch_size} with span corruption, AdamW (base "
      "LR 0.002 after warmup), on the demo pretraining mixture; GBT learns one weight per member "
      f"task from `demo_span_corruption_guide` (meta LR "
      f"{size.meta_learning_rate(steps=size.pretrain_steps):g}, a guided step every "
      f"{size.hyper_step_every} steps; sampling rates refreshed every {RESAMPLE_EVERY} steps). "
      f"Each pretrained checkpoint is finetuned {size.finetune_steps} steps on {tasks} "
      f"(validation splits scored). Seeds {seeds} (unseen: s + {UNSEEN_OFFSET}); mean ± std. "
      "Compute in plain pretraining steps (the natural-rates run's s/step, same seed; "
      f"{common.timing_basis([r for rs in pre.values() for r in rs])}). DoReMi: the "
      "natural-rates run as reference, a Group-DRO proxy run of the same length (η 1, uniform "
      "smoothing 1e-3), then a run at the proxy's averaged domain weights; its compute counts "
      "all three. " + (
          f"BO: optuna TPE over each member's rate multiplier (log range {BO_RANGE}), "
          f"{size.bo_trials} plain pretraining runs per seed scored by the guide loss; its pick "
          "within the larger GBT arm's compute (the first trials that fit, at least one) and "
          "after all trials; compute = the trials run so far." if bo_arms else
          "BO over the rates: not finished yet (it runs after every seed's other arms)."),
      "Pretraining (span-corruption loss per target token):", pre_table,
      "Downstream (GLUE-style average over the tasks; compute = finetuning steps):", glue_table,
      report.PAIRED_NOTE, pre_paired, glue_paired,
      "![learned weights](learned_weights.png)\n\n![downstream](downstream.png)"]
  return report.write_experiment_report(exp.out, "Mixture weights", size.quick, sections,
                                        "mixture_weights.py", exp.results_dir)


USEFUL = ("demo_span_corruption",)
USELESS = ("demo_mix_other_language_span_corruption", "demo_mix_boilerplate_span_corruption")


def final_weights(record: Any) -> dict[str, float]:
  traj = record.extra["trajectory"]
  return dict(zip(record.extra["task_names"], traj["data_weights"][-1]))


def _useless_below_useful(pre: dict[str, list], gbt: Sequence[str]) -> str:
  """One line per GBT arm: whether every useless member's final weight is below every useful
  member's, seed by seed."""
  lines = []
  for arm in gbt:
    ok = []
    for r in pre[arm]:
      w = final_weights(r)
      ok.append(max(w[u] for u in USELESS if u in w) < min(w[u] for u in USEFUL if u in w))
    lines.append(f"- {arm}: the useless members' final weights ({', '.join(USELESS)}) are below "
                 f"the source text's on {sum(ok)}/{len(ok)} seeds"
                 + ("." if all(ok) else " — not on every seed."))
  return "\n".join(lines)


def _plot(exp, pre, gbt, glue, order) -> None:
  panels = {}
  for arm in gbt:
    for r in pre[arm]:
      traj = r.extra["trajectory"]
      values = np.asarray(traj["data_weights"])
      panels[f"{arm}, seed {r.seed}"] = {
          name: (traj["steps"], values[:, i].tolist())
          for i, name in enumerate(r.extra["task_names"])}
  if panels:
    report.plot_panels(os.path.join(exp.out, "learned_weights.png"), panels, "pretraining step",
                       "learned mixture weights by member task")
  report.plot_bars(os.path.join(exp.out, "downstream.png"), order,
                   [[r.scores["average"] for r in glue[a]] for a in order],
                   "GLUE-style average (validation)", "downstream score by pretraining mixture")


def main(argv: Sequence[str] | None = None) -> int:
  args = common.parse_args(__doc__.splitlines()[0], argv, _add_flags)
  from harness import sizes as sizes_lib
  size = sizes_lib.get_size(args.quick)
  downstream = pd.parse_downstream(args.downstream or (QUICK_DOWNSTREAM if size.quick
                                                       else DEFAULT_DOWNSTREAM))
  exp = common.setup(args, NAME, {"downstream": [f"{m}:{t}" for m, t in downstream],
                                  "layers": pd.model_layers(size),
                                  "resample_every": RESAMPLE_EVERY,
                                  "unseen_offset": UNSEEN_OFFSET})
  if args.part != "all" and not exp.report_only:
    run_all(exp, downstream, args.part)  # a worker's share; the full run writes the report.
    return 0
  return common.run_and_report(exp, run_all, write_report, downstream)


if __name__ == "__main__":
  sys.exit(common.main_with_one_line_errors(main))
