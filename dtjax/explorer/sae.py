"""Sparse dictionaries in the explorer: the most active latents at the step on screen.

A model's dictionaries are those given (``analyse.py --serve --sae DIR``) and those found under
its run's ``sae/`` folder (``dtjax.run.sae_root_of``: ``RUN/sae`` for a run,
``checkpoints/<pt stem>/sae`` for an original ``.pt``). Each is checked against the model
(hook, width); a given one that does not fit is an error, a found one is skipped with a log line.

Per step, inside ``session.explore_step`` (one jitted call per message, nothing extra):
``latents_panel`` runs the model once more with only the dictionaries' hooks sown, encodes the
activation at the last token of each dictionary's type (the current state token for a
state-token SAE; the latest action token present for an action-token one) and keeps the ``TOP``
largest latents with the DLA of their decoder rows onto the chosen logit direction. Labels come
from the dictionary's ``eval/analysis.npz`` (``python -m dtjax.sae eval``): each latent's best
ground-truth probe and its AUROC; without it the panel shows no labels.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from dtjax.config import ModelConfig
from dtjax.model import run_with_cache
from dtjax.run import Run, find_dictionaries, sae_root_of
from dtjax.sae import SAEError, store
from dtjax.sae import activations as acts
from dtjax.sae.activations import check_site
from dtjax.sae.features import direct_logit_effects, residual_directions
from dtjax.sae.model import apply

TOP = 8  # latents listed per dictionary and step


@dataclasses.dataclass
class ExplorerSAE:
    """One dictionary ready for the explore step: its config (static), arrays (traced), labels."""

    name: str
    path: str
    cfg: Any  # dtjax.sae.SAEConfig (frozen, hashable: a static argument of the step)
    arrays: dict  # {"variables": {...}, "dla": (n_latents, n_actions)} device arrays
    has_dla: bool  # False where the site has no direct linear path to the logits (mlp.hook_pre)
    probe: list[str] | None  # best ground-truth probe per latent (eval/analysis.npz), or None
    auc: np.ndarray | None  # its AUROC per latent

    def describe(self) -> dict:
        c = self.cfg
        return {"name": self.name, "path": self.path, "hook": c.hook, "token": c.token, "arch": c.arch,
                "transcoder": c.transcoder, "n_latents": c.n_latents, "k": c.k, "has_dla": self.has_dla,
                "has_probes": self.probe is not None}


def candidates(model: Run | str | Path | None, sae_dirs=()) -> tuple[list[Path], list[Path]]:
    """(given, found): the dictionaries named by ``sae_dirs`` (folders expand) and those under the
    model's own ``sae/`` folder (``Run.sae_root``; ``model`` a Run or its path) that were not given."""
    given = []
    for p in sae_dirs:
        found = find_dictionaries(p)
        if not found:
            raise SAEError(f"--sae {p}: no dtjax SAE directory there (needs config.json and ckpt/)")
        given += [f.resolve() for f in found if f.resolve() not in given]
    auto = []
    if model:
        root = model.sae_root if isinstance(model, Run) else sae_root_of(model)
        auto = [f.resolve() for f in find_dictionaries(root) if f.resolve() not in given]
    return given, auto


def prepare(path: Path, cfg: ModelConfig, params: dict) -> ExplorerSAE:
    """Load one dictionary for this model (``SAEError`` if it does not fit)."""
    d = store.load(path)
    _, d_in, d_out = check_site(cfg, d.cfg.hook, d.cfg.token, d.cfg.transcoder)
    if (d_in, d_out) != (d.cfg.d_in, d.cfg.d_out):
        raise SAEError(f"{path}: the dictionary reads width {d.cfg.d_in} at {d.cfg.hook}; this model's is {d_in}")
    host = jax.tree.map(np.asarray, params)
    dec = np.asarray(d.variables["params"]["W_dec"]) / float(d.variables["norm"]["scale_out"])
    resid = residual_directions(host, cfg, d.cfg, dec)
    dla = np.zeros((d.cfg.n_latents, cfg.n_actions), np.float32) if resid is None else \
        direct_logit_effects(host, cfg, resid).astype(np.float32)
    probe = auc = None
    npz = Path(path) / "eval" / "analysis.npz"
    if npz.is_file():
        with np.load(npz) as z:
            if "latents/best_probe" in z and len(z["latents/best_probe"]) == d.cfg.n_latents:
                probe = [str(s) for s in z["latents/best_probe"]]
                auc = np.asarray(z["probes/latent_best_auc"], np.float32)
    return ExplorerSAE(name=Path(path).name, path=str(path), cfg=d.cfg,
                       arrays=jax.tree.map(jnp.asarray, {"variables": d.variables, "dla": dla}),
                       has_dla=resid is not None, probe=probe, auc=auc)


def load_all(model: Run | str | Path | None, cfg: ModelConfig, params: dict, sae_dirs=(),
             log: Callable[[str], Any] | None = None) -> list[ExplorerSAE]:
    """The model's dictionaries (given ones must fit: ``SAEError``; found ones that do not are skipped)."""
    given, auto = candidates(model, sae_dirs)
    out = [prepare(p, cfg, params) for p in given]
    for p in auto:
        try:
            out.append(prepare(p, cfg, params))
        except SAEError as e:
            if log:
                log(f"skipping the dictionary {p}: {e}")
    names = [s.name for s in out]
    for s in out:  # two folders may hold dictionaries of the same name: keep names unique
        if names.count(s.name) > 1:
            s.name = f"{Path(s.path).parent.name}/{s.name}"
    return out


def latents_panel(params, cfg: ModelConfig, inp, sae_cfgs: tuple, sae_arrays: tuple, v) -> list[dict]:
    """Per dictionary: ``index`` (TOP,) of the largest latents at the last token of its type,
    ``act`` (TOP,) their activations (0: fewer were active), ``dla`` (TOP,) their decoder rows'
    direct effect on the direction ``v``, and ``l0`` (), the number active. Jittable; one forward."""
    if not sae_cfgs:
        return []
    names = tuple(dict.fromkeys(n for c in sae_cfgs for n in acts.cache_names(c)))
    _, cache = run_with_cache(params, cfg, inp.obs, inp.rtg, inp.timesteps, inp.actions, names=names)
    out = []
    for c, a in zip(sae_cfgs, sae_arrays):
        x, _ = acts.site_values(params, cfg, c, cache)
        z = apply(a["variables"], c, x[0, -1], "encode")  # (n_latents,)
        act, idx = jax.lax.top_k(z, min(TOP, c.n_latents))
        out.append({"index": idx, "act": act, "dla": a["dla"][idx] @ v, "l0": (z > 0).sum()})
    return out
