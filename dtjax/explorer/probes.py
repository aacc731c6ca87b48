"""Linear probes in the explorer: each probe's readout at the step on screen, and a probe direction added live.

On the first ``probes`` message of a model, ``fit`` runs ``dtjax.probes.probe_table`` off the
key-press path (a ``Deferred``: closed-loop episodes of the model, every concept at the state
token of each layer's residual stream, no baselines) and keeps the probes on the ``Model``. Then
every ``probes`` message is one jitted call (``readout``): the model on the current context with
``alpha * scale * direction`` of the chosen binary concept added at the chosen site's state token
(``dtjax.probes.steer.add_direction``, traced: a new alpha never recompiles), each probe's class
probabilities there, and the action probabilities with and without the push. ``act: true`` then
plays the steered model's greedy action (an ordinary ``act`` with that action).
"""

from __future__ import annotations

import dataclasses
import functools
import time

import jax
import jax.numpy as jnp
import numpy as np

from dtjax import circuits as C
from dtjax import hooks as hooks_lib
from dtjax.config import ModelConfig
from dtjax.model import run_with_cache
from dtjax.probes import probe_table
from dtjax.probes import steer as steer_lib

N_EPISODES = 256  # the fit's closed-loop episodes (a few seconds once compiled)
ALPHA_RANGE = 4.0  # the slider's |alpha|


def sites(cfg: ModelConfig) -> list[tuple[str, str]]:
    """The state token of each layer's residual stream (the report's steering sites)."""
    hooks = [f"blocks.{layer}.hook_resid_pre" for layer in range(cfg.n_layers)]
    return [(h, "state") for h in hooks + [f"blocks.{cfg.n_layers - 1}.hook_resid_post"]]


@dataclasses.dataclass
class ExplorerProbes:
    """Probes fitted for one model: ``sites``, ``concepts`` (names, classes, F1 per site), the
    stacked probes (traced arrays: ``arrays["probes"]`` leaves (site, concept, ...)) and, per site,
    the unit direction and scale of each binary concept (``arrays["dirs"]`` (site, concept, width),
    zero for a concept that is not binary)."""

    sites: list[tuple[str, str]]
    concepts: list[str]
    classes: list[tuple[str, ...]]
    f1: np.ndarray  # (site, concept)
    binary: list[str]
    arrays: dict
    scales: np.ndarray  # (site, concept)
    seconds: float

    def describe(self) -> dict:
        return {"sites": [h for h, _ in self.sites], "concepts": self.concepts, "classes": [list(c) for c in self.classes],
                "f1": np.round(self.f1, 3).tolist(), "binary": self.binary, "alpha_range": ALPHA_RANGE,
                "seconds": round(self.seconds, 1)}


def fit(params, cfg: ModelConfig, env, env_params, key) -> ExplorerProbes:
    """Fit every concept's probe at ``sites(cfg)`` on the model's own episodes (seconds to minutes)."""
    t0 = time.perf_counter()
    tab = probe_table(params, cfg, env, env_params, key, sites=sites(cfg), n_episodes=N_EPISODES, n_train=2048,
                      n_test=1024, baselines=False)
    width = tab.train_features[0].shape[1]
    dirs = np.zeros((len(tab.sites), len(tab.concepts), width), np.float32)
    scales = np.zeros((len(tab.sites), len(tab.concepts)), np.float32)
    binary = [c for c, cl in zip(tab.concepts, tab.classes) if len(cl) == 2]
    for s, (hook, token) in enumerate(tab.sites):
        for c in binary:
            j = tab.concepts.index(c)
            dirs[s, j], scales[s, j] = steer_lib.probe_direction(tab, c, hook, token)
    ok = np.isfinite(scales).all(0)  # a concept with a class never seen in the episodes has no direction
    binary = [c for c in binary if ok[tab.concepts.index(c)]]
    scales = np.where(np.isfinite(scales), scales, 0.0)
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *tab.probes)  # (site, concept, ...)
    return ExplorerProbes(sites=tab.sites, concepts=list(tab.concepts), classes=list(tab.classes), f1=tab.f1,
                          binary=binary, arrays={"probes": stacked, "dirs": jnp.asarray(dirs)}, scales=scales,
                          seconds=time.perf_counter() - t0)


@functools.partial(jax.jit, static_argnames=("cfg", "site_hooks"))
def _readout(params, cfg: ModelConfig, site_hooks: tuple[str, ...], inputs: C.Inputs, arrays: dict, site, concept,
             vec_scale):
    """(probe probabilities (site, concept, C), steered logits (n_actions,), plain logits) at the
    last state token, with ``vec_scale * dirs[site, concept]`` added at ``site_hooks[site]``."""
    pos = inputs.obs.shape[1] * 3 - 2  # the last state token of the explorer's 3K-1 tokens
    vec = vec_scale * arrays["dirs"][site, concept]
    ivs = {h: hooks_lib.Apply(steer_lib.add_at_position, {"vec": jnp.where(i == site, vec, 0.0), "pos": jnp.int32(pos)})
           for i, h in enumerate(site_hooks)}
    logits, cache = run_with_cache(params, cfg, inputs.obs, inputs.rtg, inputs.timesteps, inputs.actions,
                                   interventions=ivs, names=site_hooks)
    plain = run_with_cache(params, cfg, inputs.obs, inputs.rtg, inputs.timesteps, inputs.actions, names=site_hooks)[0]

    def probs(p_site, h):
        x = cache[h][:, pos]  # (1, width)
        return jax.vmap(lambda p: jax.nn.softmax(p.logits(x)[0]))(p_site)  # (concept, C)

    site_probs = jnp.stack([probs(jax.tree.map(lambda a: a[i], arrays["probes"]), h) for i, h in enumerate(site_hooks)])
    return site_probs, logits[0, -1], plain[0, -1]


def readout(probes: ExplorerProbes, params, cfg: ModelConfig, inputs: C.Inputs, site: int, concept: str | None,
            alpha: float) -> dict:
    """The ``probes`` reply's numbers: per site and concept the predicted class and its probability
    (with the push applied), and the action probabilities with and without it."""
    j = probes.concepts.index(concept) if concept else 0
    scale = float(probes.scales[site, j]) * float(alpha) if concept else 0.0
    pr, steered, plain = jax.device_get(_readout(params, cfg, tuple(h for h, _ in probes.sites), inputs, probes.arrays,
                                                 jnp.int32(site), jnp.int32(j), jnp.float32(scale)))
    pr = np.asarray(pr)
    rows = []
    for c, (name, classes) in enumerate(zip(probes.concepts, probes.classes)):
        p = pr[:, c, : len(classes)]  # (site, classes)
        rows.append({"concept": name, "classes": list(classes), "probs": np.round(p, 4).tolist(),
                     "pred": [classes[int(k)] for k in p.argmax(-1)]})
    soft = lambda z: np.exp(z - z.max()) / np.exp(z - z.max()).sum()  # noqa: E731
    return {"readouts": rows, "steered_probs": soft(np.asarray(steered, np.float64)).round(4).tolist(),
            "plain_probs": soft(np.asarray(plain, np.float64)).round(4).tolist(),
            "steered_action": int(np.argmax(steered)), "site": site, "concept": concept, "alpha": float(alpha)}


def parse(msg: dict, probes: ExplorerProbes | None) -> tuple[int, str | None, float]:
    """(site, concept, alpha) of a ``probes`` message; ValueError (one line) for a bad one."""
    site, concept, alpha = msg.get("site", 0), msg.get("concept"), msg.get("alpha", 0.0)
    if isinstance(site, bool) or not isinstance(site, int) or (probes is not None and not 0 <= site < len(probes.sites)):
        raise ValueError(f"site must be an index into the probe sites, got {site!r}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not abs(alpha) <= ALPHA_RANGE:
        raise ValueError(f"alpha must be a number in [-{ALPHA_RANGE:g}, {ALPHA_RANGE:g}], got {alpha!r}")
    if concept is not None and probes is not None and concept not in probes.binary:
        raise ValueError(f"concept must be a binary concept to steer along ({', '.join(probes.binary)}), got {concept!r}")
    return site, concept, float(alpha)

