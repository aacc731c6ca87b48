"""The probe table of a model: every (hook, token) x concept, with three baselines beside each.

``features(params, cfg, window, sites)`` reads each site's activation (a hook at one token type of
the current timestep: ``"rtg"``, ``"state"`` or ``"action"``) from one cached forward pass of the
model's own contexts. ``probe_table`` fits, on held-out episodes:

- the probe of each concept on each site of the trained model;
- ``baseline_obs``: the same probe on the raw observation the model saw (its flattened current
  view, as the state embedding reads it): what is linearly decodable without the model;
- ``baseline_random``: on the same site of a randomly initialised model of the same shape
  (``init_params`` with another key): what the architecture alone makes decodable;
- ``baseline_shuffled``: on the trained site with the training labels shuffled among the valid
  samples (the held-out labels true): chance, the floor a probe's F1 must clear.

Feature sets of one width are fitted in one jitted vmapped program (``linear.fit_many``), every
concept at once; the trained sites' real and shuffled labels share one.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from dtjax import hooks as hooks_lib
from dtjax.config import ModelConfig
from dtjax.evaluate import Window
from dtjax.model import init_params, run_with_cache
from dtjax.probes import ground_truth as concepts_lib
from dtjax.probes import linear

TOKENS = ("rtg", "state", "action")
SITE_HOOKS = ("hook_resid_pre", "hook_attn_out", "hook_resid_mid", "mlp.hook_post", "hook_mlp_out", "hook_resid_post")


def token_pos(cfg: ModelConfig, token: str) -> int:
    """Position of the current timestep's ``token`` in the closed loop's context (3K tokens for
    K > 1, the current action slot holding padding; 2 tokens (R, s) for K = 1)."""
    if token not in TOKENS:
        raise ValueError(f"unknown token {token!r}; tokens: {', '.join(TOKENS)}")
    if token == "action" and cfg.n_timesteps == 1:
        raise ValueError("a one-timestep model is fed no action token (tokens R, s)")
    return 3 * (cfg.n_timesteps - 1) + TOKENS.index(token)


def default_sites(cfg: ModelConfig, tokens=("rtg", "state")) -> list[tuple[str, str]]:
    """(hook, token) of every layer's residual-stream and component outputs (``SITE_HOOKS``)."""
    names = set(hooks_lib.hook_names(cfg))
    hooks = [f"blocks.{layer}.{h}" for layer in range(cfg.n_layers) for h in SITE_HOOKS]
    return [(h, t) for h in hooks if h in names for t in tokens]


def check_site(cfg: ModelConfig, hook: str, token: str) -> str:
    """The full hook name of a probe site, or a one-line ValueError."""
    full = hooks_lib.act_name(hook)
    if full not in hooks_lib.hook_names(cfg):
        raise ValueError(f"this model has no hook {full}")
    info = hooks_lib.hook_info(full)
    if info.head_axis is not None and info.pos_axis != 1:
        raise ValueError(f"{full} has no token axis to probe (attention scores / patterns)")
    if info.per_timestep and full != "hook_logits" and not full.startswith(f"hook_{token}"):
        raise ValueError(f"{full} holds no {token} token")
    token_pos(cfg, token)
    return full


def _site_slice(cfg, full, token, x):
    info = hooks_lib.hook_info(full)
    idx = cfg.n_timesteps - 1 if info.per_timestep else token_pos(cfg, token)
    x = x[:, idx]
    return x.reshape(x.shape[0], -1)


def features(params, cfg: ModelConfig, window: Window, sites) -> list[np.ndarray]:
    """Each site's activation (N, width) on contexts ``window`` (N, K, ...), float32."""
    fulls = [check_site(cfg, h, t) for h, t in sites]
    actions = window.actions if cfg.n_timesteps > 1 else None
    _, cache = run_with_cache(params, cfg, window.obs, window.rtg, window.timesteps, actions,
                              names=tuple(dict.fromkeys(fulls)))
    return [np.asarray(_site_slice(cfg, f, t, cache[f]), np.float32) for f, (_, t) in zip(fulls, sites)]


def raw_obs(window: Window) -> np.ndarray:
    """(N, obs size) the flattened current observation, float32."""
    obs = np.asarray(window.obs)[:, -1]
    return obs.reshape(obs.shape[0], -1).astype(np.float32)


def shuffled(labels: np.ndarray, key) -> np.ndarray:
    """``labels`` (P, N) with each row's valid entries permuted among themselves."""
    out = np.array(labels)
    for p, k in enumerate(jax.random.split(key, labels.shape[0])):
        v = np.flatnonzero(labels[p] >= 0)
        out[p, v] = labels[p, v][np.asarray(jax.random.permutation(k, len(v)))]
    return out


def fit_sets(train_x: list[np.ndarray], test_x: list[np.ndarray], train_y, test_y, n_classes, *, steps=linear.STEPS):
    """Probes of every concept on every feature set (grouped by width: one ``fit_many`` per width).

    Returns (probes, metrics): ``probes[i]`` a Probe with a leading (P,) axis for feature set i;
    ``metrics[i][p]`` the held-out ``linear.metrics`` dict."""
    widths = [x.shape[1] for x in train_x]
    probes: list = [None] * len(train_x)
    scores: list = [None] * len(train_x)
    for w in dict.fromkeys(widths):
        idx = [i for i, wi in enumerate(widths) if wi == w]
        pr = linear.fit_many(np.stack([train_x[i] for i in idx]), train_y, n_classes, steps=steps)
        proba = np.asarray(linear.predict_proba_many(pr, np.stack([test_x[i] for i in idx])))
        for j, i in enumerate(idx):
            probes[i] = jax.tree.map(lambda a: a[j], pr)
            scores[i] = [linear.metrics(proba[j, p][:, :n_classes[p]], test_y[p]) for p in range(len(n_classes))]
    return probes, scores


@dataclasses.dataclass(frozen=True)
class ProbeTable:
    """``rows``: one dict per (concept, hook, token) (the summary's ``probes`` entries, with
    accuracy and the baselines' metrics); ``f1`` (sites, concepts) held-out macro-F1 (the heat
    map); ``probes[s]`` the fitted probes of site s (a (P,) axis); ``train`` / ``test`` the data;
    ``sites``, ``concepts``; ``obs_f1`` (concepts,) the raw-observation baseline."""

    rows: list[dict]
    f1: np.ndarray
    auroc: np.ndarray
    probes: list
    sites: list[tuple[str, str]]
    concepts: tuple[str, ...]
    classes: tuple[tuple[str, ...], ...]
    obs_f1: np.ndarray
    train: concepts_lib.ProbeData
    test: concepts_lib.ProbeData
    train_features: list[np.ndarray]

    def probe(self, concept: str, hook: str, token: str = "state") -> linear.Probe:
        s = self.sites.index((hooks_lib.act_name(hook), token))
        return jax.tree.map(lambda a: a[self.concepts.index(concept)], self.probes[s])

    def best(self, concept: str) -> dict:
        """The row of ``concept`` with the highest F1."""
        rows = [r for r in self.rows if r["concept"] == concept and np.isfinite(r["f1"])]
        if not rows:
            raise KeyError(f"no scored probe of {concept!r}")
        return max(rows, key=lambda r: r["f1"])


def probe_table(params, cfg: ModelConfig, env, env_params, key, *, sites=None, n_episodes: int = 1024,
                n_steps: int = 64, rtgs=(-1.0, 0.0, 0.5, 0.9), n_train: int = 4096, n_test: int = 2048,
                concept_names=None, steps: int = linear.STEPS, baselines: bool = True) -> ProbeTable:
    """Collect rollouts, label them, fit every site x concept and the baselines (module docstring).

    ``concept_names``: only these concepts (default all of ``concepts_lib.concepts``); ``sites``
    default ``default_sites(cfg)``; ``baselines=False`` leaves the baseline columns NaN (faster:
    what a per-checkpoint curve needs)."""
    k_roll, k_split, k_rand, k_shuf = jax.random.split(key, 4)
    sites = [(hooks_lib.act_name(h), t) for h, t in (sites or default_sites(cfg))]
    roll = concepts_lib.collect(params, cfg, env, env_params, k_roll, n_episodes, n_steps, rtgs)
    cs = concepts_lib.concepts(env, roll)
    if concept_names is not None:
        unknown = [c for c in concept_names if c not in cs]
        if unknown:
            raise ValueError(f"unknown concept {unknown[0]!r}; concepts: {', '.join(cs)}")
        cs = {c: cs[c] for c in concept_names}
    train, test = concepts_lib.split(roll, cs, k_split, n_train, n_test)
    ncls = train.n_classes
    P = len(train.names)
    tr_x, te_x = features(params, cfg, train.window, sites), features(params, cfg, test.window, sites)
    H = len(sites)
    nan = {"f1": float("nan"), "auroc": float("nan")}
    # the trained sites: real and shuffled training labels in one program
    y_tr = np.concatenate([train.labels, shuffled(train.labels, k_shuf)]) if baselines else train.labels
    probes2, scores2 = fit_sets(tr_x, te_x, y_tr, np.concatenate([test.labels] * (2 if baselines else 1)),
                                np.concatenate([ncls] * (2 if baselines else 1)), steps=steps)
    probes = [jax.tree.map(lambda a: a[:P], p) for p in probes2]
    main = [s[:P] for s in scores2]
    shuf = [s[P:] for s in scores2] if baselines else [[nan] * P] * H
    if baselines:
        rparams = init_params(k_rand, cfg)
        base_tr = [raw_obs(train.window)] + features(rparams, cfg, train.window, sites)
        base_te = [raw_obs(test.window)] + features(rparams, cfg, test.window, sites)
        _, base = fit_sets(base_tr, base_te, train.labels, test.labels, ncls, steps=steps)
        obs_s, rand = base[0], base[1:]
    else:
        obs_s, rand = [nan] * P, [[nan] * P] * H
    rows = []
    for s, (hook, token) in enumerate(sites):
        for p, name in enumerate(train.names):
            m = main[s][p]
            rows.append({"concept": name, "hook": hook, "token": token, "f1": m["f1"], "auroc": m["auroc"],
                         "accuracy": m["accuracy"], "n_test": m["n"], "baseline_obs_f1": obs_s[p]["f1"],
                         "baseline_random_f1": rand[s][p]["f1"], "baseline_shuffled_f1": shuf[s][p]["f1"],
                         "baseline_obs_auroc": obs_s[p]["auroc"]})
    f1 = np.array([[main[s][p]["f1"] for p in range(P)] for s in range(H)])
    auc = np.array([[main[s][p]["auroc"] for p in range(P)] for s in range(H)])
    return ProbeTable(rows=rows, f1=f1, auroc=auc, probes=probes, sites=sites, concepts=train.names,
                      classes=train.classes, obs_f1=np.array([obs_s[p]["f1"] for p in range(P)]), train=train,
                      test=test, train_features=tr_x)


def concept_f1(params, cfg: ModelConfig, env, env_params, key, concept_names, sites=None, **kw) -> dict:
    """``{(concept, hook, token): held-out F1}`` without baselines: the per-checkpoint number a
    training-dynamics curve needs (``probe_table(..., baselines=False)``)."""
    t = probe_table(params, cfg, env, env_params, key, sites=sites, concept_names=concept_names, baselines=False, **kw)
    return {(r["concept"], r["hook"], r["token"]): r["f1"] for r in t.rows}

