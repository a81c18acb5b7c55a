"""Multi-process (multi-host) start-up: `jax.distributed.initialize` from flags or environment.

Every entry point calls `maybe_initialize` before touching any device, as T5X's train.py does with
its `--multiprocess_gpu`, `--coordinator_address`, `--process_count`, `--process_index` flags.
Sources, first match wins:
  1. explicit arguments (the entry points' flags);
  2. environment: GBT_T5X_COORDINATOR_ADDRESS, GBT_T5X_NUM_PROCESSES, GBT_T5X_PROCESS_ID
     (and optionally GBT_T5X_LOCAL_DEVICE_IDS, comma separated);
  3. `auto=True`: JAX's own cluster auto-detection (TPU pods, SLURM, Open MPI, ...).
On CPU, cross-process collectives use gloo (`jax_cpu_collectives_implementation`), which is how
several processes on 127.0.0.1 are tested here. Must not import gin, seqio or tensorflow.
"""
from __future__ import annotations

import dataclasses
import os

import jax

ENV_COORDINATOR = "GBT_T5X_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "GBT_T5X_NUM_PROCESSES"
ENV_PROCESS_ID = "GBT_T5X_PROCESS_ID"
ENV_LOCAL_DEVICE_IDS = "GBT_T5X_LOCAL_DEVICE_IDS"


@dataclasses.dataclass(frozen=True)
class ProcessSpec:
  """Where this process sits in a multi-process run."""
  coordinator_address: str
  num_processes: int
  process_id: int
  local_device_ids: tuple[int, ...] | None = None


def spec_from(coordinator_address: str | None = None, num_processes: int | None = None,
              process_id: int | None = None, environ: dict[str, str] | None = None
              ) -> ProcessSpec | None:
  """The process spec from explicit values, else from the environment; None for one process.

  Raises:
    ValueError: an incomplete or inconsistent spec (e.g. a coordinator without a process id).
  """
  env = os.environ if environ is None else environ
  address = coordinator_address or env.get(ENV_COORDINATOR)
  count = num_processes if num_processes is not None else _int(env.get(ENV_NUM_PROCESSES),
                                                               ENV_NUM_PROCESSES)
  index = process_id if process_id is not None else _int(env.get(ENV_PROCESS_ID), ENV_PROCESS_ID)
  if address is None and count is None and index is None:
    return None
  if address is None or count is None or index is None:
    raise ValueError("a multi-process run needs the coordinator address, the process count and "
                     f"this process's id (got address={address}, count={count}, id={index}); set "
                     f"all three flags or {ENV_COORDINATOR}/{ENV_NUM_PROCESSES}/{ENV_PROCESS_ID}")
  if count < 1 or not 0 <= index < count:
    raise ValueError(f"process id {index} is not in [0, {count})")
  local = env.get(ENV_LOCAL_DEVICE_IDS)
  local_ids = tuple(int(x) for x in local.split(",")) if local else None
  return ProcessSpec(address, count, index, local_ids)


def _int(value: str | None, name: str) -> int | None:
  if value is None or value == "":
    return None
  try:
    return int(value)
  except ValueError:
    raise ValueError(f"{name}={value!r} is not an integer") from None


def maybe_initialize(spec: ProcessSpec | None, auto: bool = False) -> None:
  """Initialises `jax.distributed` for `spec` (or by auto-detection); no-op for one process."""
  if spec is None and not auto:
    return
  # Only affects the CPU backend's cross-process collectives; harmless on accelerators.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  if spec is None:
    jax.distributed.initialize()
    return
  jax.distributed.initialize(coordinator_address=spec.coordinator_address,
                             num_processes=spec.num_processes, process_id=spec.process_id,
                             local_device_ids=list(spec.local_device_ids)
                             if spec.local_device_ids is not None else None)
