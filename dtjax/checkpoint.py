"""Orbax checkpoints for dtjax runs: params, optimizer state and config, kept together per step.

Layout of a run directory (``checkpoints/<run>/``)::

    config.json          the full TrainConfig of the run (also stored inside every step)
    env.json             its EnvConfig again (written for readers older than ``dtjax.run``; dtjax
                         itself reads the env from the config's ``env``)
    metrics.jsonl        one JSON object per log line (loss, accuracy, eval returns)
    calibration.json     target RTG sweep results, and calibration.png
    summary.json         the final evaluation and calibration summary
    dataset/             the dataset trained on (``dtjax.data.store``), unless it was given
    ckpt/<step>/         orbax steps: items ``params``, ``train_state`` (the optimizer state) and
                         ``config``; the step is the directory's name. The last ``keep_checkpoints``
                         are kept, and with ``keep_every`` every multiple of it and step 0 too
                         (``step_dirs`` lists them; ``dtjax.dynamics`` reads them)
    seed_<k>/            with ``num_seeds`` > 1: one such run directory per seed (the dataset
                         shared in the parent unless ``seed_datasets``)

No PRNG key is saved: every key of a run is derived from its config's seed by ``fold_in(key,
step)`` (house style), so a resumed run draws the same numbers from the config and the step.

Orbax writes each step to a temporary directory and renames it when complete, so a crash
never leaves a half-written step that restore would pick up. ``max_to_keep`` prunes old steps.

Reading a run is ``dtjax.run.Run.open``'s job (it calls ``find_step_dir``, ``restore_config`` and
``restore_params`` here); ``path`` may be the run directory, its ``ckpt`` directory or one step
directory.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from dtjax.io import write_json_atomic  # noqa: F401  (re-exported: train.py writes run files through it)

CKPT_DIR = "ckpt"
ENV_FILE = "env.json"  # written by dtjax.train for readers older than dtjax.run; never read by dtjax


class CheckpointError(ValueError):
    """A checkpoint path that does not exist or cannot be read; the message is one line."""


def manager(run_dir: str | os.PathLike, max_to_keep: int = 3, create: bool = True,
            keep_every: int = 0) -> ocp.CheckpointManager:
    """An orbax CheckpointManager over ``run_dir/ckpt`` keeping the last ``max_to_keep`` steps and,
    with ``keep_every`` > 0, every step that is a multiple of it (step 0 included) for good."""
    path = Path(run_dir).absolute() / CKPT_DIR
    policy = ocp.checkpoint_managers.LatestN(max_to_keep)
    if keep_every:
        policy = ocp.checkpoint_managers.AnyPreservationPolicy([policy, ocp.checkpoint_managers.EveryNSteps(keep_every)])
    opts = ocp.CheckpointManagerOptions(preservation_policy=policy, create=create)
    return ocp.CheckpointManager(path, options=opts)


def save(mgr: ocp.CheckpointManager, step: int, params: Any, train_state: Any, config: dict) -> None:
    """Write one step (asynchronously finalised; call ``mgr.wait_until_finished()`` before exit).

    Args:
      params: the model parameter pytree.
      train_state: everything else needed to resume exactly: the optimizer state (the step is the
        directory's name, and PRNG keys are derived from the config's seed and the step).
      config: the run's config as a JSON-able dict.

    Arrays are written as host (numpy) arrays: parameters are replicated in data-parallel
    training, and a checkpoint without device layout opens on any topology (a run trained on 4
    devices loads in a 1-device notebook).
    """
    params, train_state = jax.device_get((params, train_state))
    mgr.save(
        step,
        args=ocp.args.Composite(
            params=ocp.args.StandardSave(params),
            train_state=ocp.args.StandardSave(train_state),
            config=ocp.args.JsonSave(config),
        ),
    )


def restore_train(mgr: ocp.CheckpointManager, params_like: Any, train_state_like: Any, step: int | None = None):
    """Restore (step, params, train_state) with the structure of the given templates."""
    step = mgr.latest_step() if step is None else step
    if step is None:
        raise CheckpointError(f"no checkpoint steps under {mgr.directory}")
    abstract = lambda t: jax.tree.map(ocp.utils.to_shape_dtype_struct, t)  # noqa: E731
    out = mgr.restore(
        step,
        args=ocp.args.Composite(
            params=ocp.args.StandardRestore(abstract(params_like)),
            train_state=ocp.args.StandardRestore(abstract(train_state_like)),
        ),
    )
    return step, out["params"], out["train_state"]


def find_step_dir(path: Path) -> Path:
    """Resolve a run dir, its ckpt dir or a step dir to the (latest) step directory to read."""
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if not path.is_dir():
        raise CheckpointError(f"not a dtjax checkpoint directory: {path}")
    if is_step_dir(path):
        return path
    steps = step_dirs(path)
    if not steps:
        raise CheckpointError(f"no dtjax checkpoint steps found in {path}")
    return steps[-1]


def step_dirs(path: Path) -> list[Path]:
    """Every complete step directory of a run dir or its ckpt dir, in step order ([] if none)."""
    ckpt = path / CKPT_DIR if (path / CKPT_DIR).is_dir() else path
    if not ckpt.is_dir():
        return []
    return sorted((p for p in ckpt.iterdir() if p.name.isdigit() and is_step_dir(p)), key=lambda p: int(p.name))


def is_step_dir(path: Path) -> bool:
    """Whether ``path`` is one complete orbax step of a dtjax run (items ``params`` and ``config``)."""
    return path.is_dir() and (path / "params").is_dir() and (path / "config").exists()


def _restore(step_dir: Path, **items):
    try:
        ckptr = ocp.Checkpointer(ocp.CompositeCheckpointHandler())
        return ckptr.restore(Path(step_dir).absolute(), args=ocp.args.Composite(**items))
    except Exception as e:  # orbax raises many types; the user needs one line
        raise CheckpointError(f"cannot read dtjax checkpoint {step_dir}: {type(e).__name__}: {str(e)[:200]}") from e


def restore_config(step_dir: Path) -> dict:
    """The config dict stored in one step directory (cheap: no arrays are read)."""
    return _restore(step_dir, config=ocp.args.JsonRestore())["config"]


def restore_params(step_dir: Path) -> dict:
    """The params of one step directory, as numpy arrays (whatever device layout they were saved from)."""
    return jax.tree.map(np.asarray, _restore(step_dir, params=ocp.args.StandardRestore())["params"])

