"""Data-parallel sharding over all local (and, after ``jax.distributed.initialize``, global) devices.

One model: the batch axis is split over a 1-D mesh named ``data``; parameters and optimizer
state are replicated. XLA inserts the gradient all-reduce. With one device everything is a no-op.

N models trained together (``TrainConfig.num_seeds``): a 2-D mesh ``(seed, data)`` with
``gcd(N, devices)`` rows. Stacked parameters (leading seed axis) are split over ``seed`` and
replicated over ``data``; each seed's batch is split over ``data``. N = 4 on 4 devices is pure
seed parallelism (no all-reduce); N = 2 on 4 devices splits each seed's batch two ways.
"""

from __future__ import annotations

import math
import os

import numpy as np

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

# Environment variables that mean "this is one process of a multi-host job".
_DISTRIBUTED_VARS = ("JAX_COORDINATOR_ADDRESS", "COORDINATOR_ADDRESS", "SLURM_JOB_ID", "TPU_WORKER_HOSTNAMES")


def maybe_initialize_distributed() -> bool:
    """Call ``jax.distributed.initialize()`` when a multi-host environment is detected.

    JAX reads the coordinator address, process count and id from its standard variables
    (``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``) or from the
    cluster (SLURM, Cloud TPU). Returns True when it initialised.
    """
    if not any(os.environ.get(v) for v in _DISTRIBUTED_VARS):
        return False
    ntasks = os.environ.get("SLURM_NTASKS", "1")
    if os.environ.get("SLURM_JOB_ID") and (not ntasks.isdigit() or int(ntasks) <= 1):
        return False  # a single-task SLURM job is not a multi-host run
    jax.distributed.initialize()
    return True


def data_mesh() -> Mesh:
    """A 1-D mesh over every device, axis name ``data``."""
    return Mesh(jax.devices(), ("data",))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Shard the leading (batch) axis over the mesh."""
    return NamedSharding(mesh, P("data"))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def check_divisible(n: int, mesh: Mesh, what: str) -> None:
    d = data_size(mesh)
    if n % d:
        raise ValueError(f"{what} ({n}) must be divisible by the number of devices one batch is split over ({d})")


def seed_mesh(n_seeds: int) -> Mesh:
    """A 2-D mesh ``(seed, data)`` over every device: ``gcd(n_seeds, devices)`` seed rows."""
    devices = jax.devices()
    rows = math.gcd(n_seeds, len(devices))
    return Mesh(np.asarray(devices).reshape(rows, len(devices) // rows), ("seed", "data"))


def seed_sharding(mesh: Mesh) -> NamedSharding:
    """Split the leading (seed) axis over the mesh's ``seed`` axis, replicate the rest."""
    return NamedSharding(mesh, P("seed"))


def data_size(mesh: Mesh) -> int:
    """Devices one batch is split over: the ``data`` axis."""
    return mesh.shape["data"]
