"""Dictionary directories: orbax arrays and a JSON config, written atomically beside the model's run.

Layout (default ``checkpoints/<run>/sae/<name>/``; for an original ``.pt`` model
``checkpoints/<pt stem>/sae/<name>/``)::

    config.json      format, the SAEConfig ("sae"), the SAETrainConfig ("train"), the model and
                     dataset it was trained on (path, and path relative to this directory),
                     env_id / max_steps, training tokens, times, the last training metrics
    ckpt/            orbax: items ``params``, ``norm`` (numpy arrays) and ``config`` (the same JSON)
    metrics.jsonl    one row per training chunk (loss, FVU, L0, dead fraction, AuxK)
    eval.json        written by ``python -m dtjax.sae eval`` (and eval/: report.html, analysis.npz)

A directory is written to a hidden sibling and renamed into place when complete; an existing one
is never overwritten. ``load`` checks what it reads and raises ``SAEError`` with one line.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import NamedTuple

import jax
import numpy as np

from dtjax import run as run_lib
from dtjax import io
from dtjax.config import ConfigError
from dtjax.run import Run
from dtjax.sae.model import SAEConfig, SAEError
from dtjax.sae.train import SAETrainConfig

FORMAT = 1


class Dictionary(NamedTuple):
    cfg: SAEConfig
    variables: dict  # {"params", "norm"}
    meta: dict  # config.json


def default_name(cfg: SAEConfig, tcfg: SAETrainConfig) -> str:
    kind = "transcoder" if cfg.transcoder else "sae"
    sparsity = f"l0c{tcfg.l0_coef:g}" if cfg.arch == "jumprelu" else f"k{cfg.k}"
    return f"{cfg.hook}-{cfg.token}-{kind}-{cfg.arch}-{cfg.n_latents}-{sparsity}"


def resolve_model(ckpt: str | os.PathLike) -> Path:
    """A model path from ``--ckpt``: an existing path, else ``checkpoints/<ckpt>`` (a run name)."""
    p = Path(ckpt)
    if p.exists():
        return p
    run = Path("checkpoints") / str(ckpt)
    if not p.is_absolute() and run.exists():
        return run
    raise SAEError(f"no model at {ckpt} (neither a path nor a run in checkpoints/)")


def resolve_dataset(run: Run | None, dataset: str | os.PathLike | None) -> Path:
    """The dataset to harvest from: ``dataset`` if given, else the run's own (``Run.dataset_path``).
    Original ``.pt`` models have none: pass one."""
    if dataset:
        p = Path(dataset)
        if not p.exists():
            raise SAEError(f"dataset not found: {p}")
        return p
    if run is not None and run.kind == "pt":
        raise SAEError(f"{run.path} has no stored dataset (an original .pt model): pass --dataset DIR, "
                       f"e.g. --dataset checkpoints/default/dataset")
    found = run.dataset_path if run is not None else None
    if found is None:
        where = f"{run.path} (no {run.root / 'dataset'})" if run is not None else "a model outside a run"
        raise SAEError(f"no dataset found for {where}: pass --dataset DIR")
    return found


def default_out(run: Run, name: str) -> Path:
    """Where a dictionary of this model is saved by default: ``Run.sae_root / name``."""
    return run.sae_root / name


def recorded_paths(target: Path, out_dir: Path) -> dict:
    """How config.json records a model or dataset: ``{"path": absolute, "relpath": relative to out_dir}``
    (read back by `resolve_recorded`)."""
    target = Path(target).absolute()
    return {"path": str(target), "relpath": os.path.relpath(target, Path(out_dir).absolute())}


def resolve_recorded(meta_entry: dict, sae_dir: Path) -> Path:
    """A model / dataset recorded in config.json: relative to the SAE directory first (the tree
    may have moved), else the absolute path."""
    rel = Path(sae_dir) / meta_entry.get("relpath", "")
    if meta_entry.get("relpath") and rel.exists():
        return rel
    p = Path(meta_entry.get("path", ""))
    if p.exists():
        return p
    raise SAEError(f"the dictionary's {meta_entry.get('kind', 'source')} is gone: {meta_entry.get('path')} "
                   f"(pass --ckpt / --dataset)")


# A dictionary directory and a folder of them are recognised by dtjax.run (a run lists its sae/).
is_dictionary = run_lib.is_dictionary
find = run_lib.find_dictionaries


def _exists(path: Path) -> SAEError:
    return SAEError(f"{path} already exists; choose another --name / --out or delete it")


def save(path: str | os.PathLike, d: Dictionary, history: list[dict] | None = None) -> Path:
    """Write a dictionary directory atomically (refuses an existing path)."""
    import orbax.checkpoint as ocp

    path = Path(path)
    with io.atomic_dir(path, _exists) as tmp:
        meta = {**d.meta, "format": FORMAT, "sae": d.cfg.to_dict(), "created": time.time()}
        host = jax.tree.map(np.asarray, jax.device_get(d.variables))
        ckptr = ocp.Checkpointer(ocp.CompositeCheckpointHandler())
        ckptr.save(tmp / "ckpt", args=ocp.args.Composite(params=ocp.args.StandardSave(host["params"]),
                                                         norm=ocp.args.StandardSave(host["norm"]),
                                                         config=ocp.args.JsonSave(meta)))
        with open(tmp / "metrics.jsonl", "w") as f:
            for row in history or []:
                f.write(json.dumps(row) + "\n")
        with open(tmp / "config.json", "w") as f:
            json.dump(meta, f, indent=2, sort_keys=True)
            io.fsync_file(f)
    return path


def load(path: str | os.PathLike) -> Dictionary:
    """Read a dictionary directory: (cfg, variables as numpy arrays, config.json)."""
    import orbax.checkpoint as ocp

    path = Path(path)
    if not path.is_dir():
        raise SAEError(f"no dictionary at {path}")
    if not (path / "config.json").exists() or not (path / "ckpt").is_dir():
        raise SAEError(f"{path} is not a dtjax SAE directory (needs config.json and ckpt/)")
    try:
        meta = json.loads((path / "config.json").read_text())
        cfg = SAEConfig.from_dict(meta["sae"])
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ConfigError) as e:
        raise SAEError(f"{path}: unreadable config.json ({type(e).__name__}: {str(e)[:120]})") from e
    if meta.get("format") != FORMAT:
        raise SAEError(f"{path}: format {meta.get('format')!r}, this dtjax reads {FORMAT}")
    try:
        ckptr = ocp.Checkpointer(ocp.CompositeCheckpointHandler())
        out = ckptr.restore((path / "ckpt").absolute(), args=ocp.args.Composite(
            params=ocp.args.StandardRestore(), norm=ocp.args.StandardRestore()))
    except Exception as e:  # orbax raises many types; the user needs one line
        raise SAEError(f"cannot read {path / 'ckpt'}: {type(e).__name__}: {str(e)[:160]}") from e
    variables = {"params": jax.tree.map(np.asarray, dict(out["params"])), "norm": jax.tree.map(np.asarray, dict(out["norm"]))}
    want = {"W_enc": (cfg.d_in, cfg.n_latents), "W_dec": (cfg.n_latents, cfg.d_out)}
    for k, shape in want.items():
        got = variables["params"].get(k)
        if got is None or tuple(got.shape) != shape:
            raise SAEError(f"{path}: {k} has shape {None if got is None else tuple(got.shape)}, config says {shape}")
    return Dictionary(cfg, variables, meta)
