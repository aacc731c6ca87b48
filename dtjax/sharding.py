"""Data-parallel sharding over all local (and, after ``jax.distributed.initialize``, global) devices.

The batch axis is split over a 1-D mesh named ``data``; parameters and optimizer state are
replicated. XLA inserts the gradient all-reduce. With one device everything is a no-op.
"""

from __future__ import annotations

import os

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
    d = mesh.devices.size
    if n % d:
        raise ValueError(f"{what} ({n}) must be divisible by the number of devices ({d})")
