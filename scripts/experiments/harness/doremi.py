"""DoReMi's proxy run (Xie et al., NeurIPS 2023), the mixture-weights experiment's baseline.

DoReMi picks a mixture's domain weights with two extra models: (1) a reference model trained at
the natural rates (the experiment's natural-rates run), (2) a proxy model trained with Group DRO
over domains, whose domain weights averaged over its run are (3) the final run's mixture rates.
`DoReMiTrainer` is step (2): on every batch (drawn at the natural rates, each token tagged with
its domain's id: `DATA_ID_FEATURE = 'mixture_task'`) it computes each domain's mean loss under
the proxy and the reference, the excess loss λ_i = max(ℓ_proxy,i − ℓ_ref,i, 0) (0 for a domain
absent from the batch), updates α ← normalise(α · exp(η λ)), smooths it with the uniform weights
(α' = (1 − c) α + c / k), and takes the proxy's step with the tokens of domain i weighted by α'_i
(the data-weights path of the one model step, normalised to mean 1 per batch). The running mean
of α' is written to MODEL_DIR/doremi_weights.json.

Hand-written because no maintained library implements it for JAX; it reuses the model step
(`step.model_step` with the per-token data weights) and adds only the domain losses and the
exponentiated-gradient update of α (host side, k floats per step).
"""
from __future__ import annotations

import functools
import json
from typing import Any, Iterator, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from gbt_t5x import fileio
from gbt_t5x.train import step as step_lib
from gbt_t5x.train import state_init
from gbt_t5x.train.data_weights import DATA_IDS
from gbt_t5x.train.trainer import Trainer

WEIGHTS_FILE = "doremi_weights.json"
HISTORY_FILE = "doremi_alpha.jsonl"


def domain_losses(logits: jax.Array, batch: Mapping[str, jax.Array], num_domains: int
                  ) -> tuple[jax.Array, jax.Array]:
  """(summed cross-entropy [k], real target tokens [k]) per domain of a batch.

  Args:
    logits: [B, T, V] teacher-forced logits.
    batch: with `decoder_target_tokens`, `decoder_loss_weights` and `decoder_data_ids` [B, T].
    num_domains: k, the number of domain ids.
  """
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  targets = batch["decoder_target_tokens"]
  ce = -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
  mask = batch["decoder_loss_weights"].astype(jnp.float32)
  ids = batch[DATA_IDS].reshape(-1)
  sums = jax.ops.segment_sum((ce * mask).reshape(-1), ids, num_segments=num_domains)
  counts = jax.ops.segment_sum(mask.reshape(-1), ids, num_segments=num_domains)
  return sums, counts


def update_alpha(alpha: np.ndarray, proxy: np.ndarray, reference: np.ndarray,
                 present: np.ndarray, eta: float) -> np.ndarray:
  """One Group-DRO step on the domain weights: α ← normalise(α · exp(η · max(ℓ_proxy − ℓ_ref, 0)))
  with λ = 0 for domains absent from the batch (`present` False). All arrays [k]."""
  excess = np.where(present, np.maximum(proxy - reference, 0.0), 0.0)
  logits = np.log(alpha) + eta * excess
  weights = np.exp(logits - logits.max())
  return weights / weights.sum()


class DoReMiTrainer(Trainer):
  """A `Trainer` that trains DoReMi's Group-DRO proxy (gin: `train.trainer_cls`).

  Extra args:
    reference_dir: the reference run's model dir (same model, natural rates).
    num_domains: k, the mixture's leaf tasks.
    eta: step size of the domain-weight update (DoReMi: 1).
    smoothing: c, the uniform share mixed into α' (DoReMi: 1e-3).
  """

  def __init__(self, *args: Any, reference_dir: str, num_domains: int, eta: float = 1.0,
               smoothing: float = 1e-3, **kwargs: Any):
    super().__init__(*args, **kwargs)
    if num_domains < 2:
      raise ValueError(f"DoReMi needs at least 2 domains, got {num_domains}")
    self.num_domains, self.eta, self.smoothing = int(num_domains), float(eta), float(smoothing)
    self._reference = state_init.load_params(reference_dir, self.train_state.params,
                                             self.train_state_axes.params)
    self._alpha = np.full(self.num_domains, 1.0 / self.num_domains)
    self._alpha_sum = np.zeros(self.num_domains)
    self._steps = 0
    self._pending_rows: list[str] = []
    self._resume_alpha()

  def _history_path(self) -> str:
    return fileio.join(self.summary_dir, HISTORY_FILE)

  def _resume_alpha(self) -> None:
    """A resumed proxy run continues α and its running sum from `HISTORY_FILE` (one row per
    step: α after the step's update and the smoothed α' it trained with), up to the restored
    step; rows of later steps (written after the last checkpoint) are ignored."""
    if not self.summary_dir or not fileio.exists(self._history_path()):
      return
    restored = int(jax.device_get(self.train_state.step))
    rows = {}
    for line in fileio.read_text(self._history_path()).splitlines():
      try:
        row = json.loads(line)
      except json.JSONDecodeError:
        continue  # a torn last line of a killed run
      if row["step"] <= restored:
        rows[row["step"]] = row
    if rows:
      self._alpha = np.asarray(rows[max(rows)]["alpha"], np.float64)
      self._alpha_sum = np.sum([r["weights"] for r in rows.values()], axis=0)
      self._steps = len(rows)

  @functools.cached_property
  def _losses(self):
    def losses(params, batch):
      return domain_losses(self.model.logits_fn(params, batch), batch, self.num_domains)
    return jax.jit(losses)

  @functools.cached_property
  def _weighted_step(self):
    def weighted_step(state, batch, weights):
      return step_lib.model_step(state, batch, fns=self._step_fns,
                                 values_fn=lambda _state: {"data_weights": weights})
    return self._partitioner.partition(
        weighted_step, in_shardings=(self.train_state_axes, self._partitioner.data_sharding,
                                     self._partitioner.replicated),
        out_shardings=(self.train_state_axes, self._partitioner.replicated), donate_argnums=(0,))

  def _run_one_step(self, batch_iter: Iterator[Any]) -> Any:
    batch = next(batch_iter)
    proxy_sum, counts = jax.device_get(self._losses(self.train_state.params, batch))
    ref_sum, _ = jax.device_get(self._losses(self._reference, batch))
    present = counts > 0
    safe = np.maximum(counts, 1.0)
    self._alpha = update_alpha(self._alpha, proxy_sum / safe, ref_sum / safe, present, self.eta)
    weights = (1.0 - self.smoothing) * self._alpha + self.smoothing / self.num_domains
    self._alpha_sum += weights
    self._steps += 1
    self._pending_rows.append(json.dumps({
        "step": int(self._host_steps_done()), "alpha": self._alpha.tolist(),
        "weights": weights.tolist()}))
    self.train_state, metrics = self._weighted_step(self.train_state, batch,
                                                    jnp.asarray(weights, jnp.float32))
    return metrics

  def _host_steps_done(self) -> int:
    """The model step this update trains (the state's step after it)."""
    return int(jax.device_get(self.train_state.step)) + 1

  def record_steps(self, steps: list[int], host_metrics: list[dict[str, Any]]) -> None:
    """Appends the window's α rows to `HISTORY_FILE` (with the metrics, so they stay in step
    with what the checkpoints hold)."""
    del steps, host_metrics
    if self._pending_rows and self.summary_dir and jax.process_index() == 0:
      fileio.append_lines(self._history_path(), self._pending_rows)
    self._pending_rows = []

  def mean_weights(self) -> list[float]:
    """The running mean of the smoothed domain weights α' over the steps so far."""
    return (self._alpha_sum / max(self._steps, 1)).tolist()

  def close(self) -> None:
    if self.summary_dir and jax.process_index() == 0:
      fileio.write_text(fileio.join(self.summary_dir, WEIGHTS_FILE),
                        json.dumps({"mean_weights": self.mean_weights(), "steps": self._steps}))
    super().close()
