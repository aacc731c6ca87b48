"""Ablations and activation patching, with interventions as data and sweeps as vmaps.

Ablation. A component (one head, or one MLP) is removed by replacing its output: a head's
``hook_z`` slice, or the MLP's ``hook_mlp_out``. ``"zero"`` sets it to 0 (the head's b_O share
stays, as in TransformerLens); ``"mean"`` sets it to its mean over a reference batch (per
position), TL's usual mean ablation; ``"dhead_mean"`` is the original app's quirk, each vector
replaced by the mean of its own entries (over d_head for a head, d_model for the MLP). All
components share one intervention pytree whose boolean masks pick the ablated component, so
"ablate component i" is data: the worlds (no ablation, then each component) are a ``vmap`` over
masks for logits, and one compiled rollout for closed-loop returns.

Activation patching (Meng et al. 2022; TransformerLens ``patching.py``). Run a *corrupted*
input, but restore one activation -- hook, token position, and head where the hook has one --
to its value on the *clean* input. With a metric m (here the mean logit difference along a
direction over actions, at the last state token) the normalised effect

    (m_patched - m_corrupted) / (m_clean - m_corrupted)

is 1 where the patch alone restores clean behaviour, 0 where it does nothing. Position and head
are traced arguments of one ``Replace``, so every (pos, head) of a hook is one vmapped call, not a
Python loop of forward passes.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from dtjax import hooks as hooks_lib
from dtjax.circuits.core import Inputs, action_vector, check_pair, forward, run_with_cache, run_with_hooks
from dtjax.config import ModelConfig
from dtjax.evaluate import evaluate_worlds

ABLATIONS = ("zero", "mean", "dhead_mean")


def components(cfg: ModelConfig) -> list[tuple]:
    """Ablatable components: ("head", layer, head) for every head, ("mlp", layer) for every MLP."""
    out = []
    for l in range(cfg.n_layers):
        out += [("head", l, h) for h in range(cfg.n_heads)]
        if not cfg.attn_only:
            out.append(("mlp", l))
    return out


def component_name(c: tuple) -> str:
    return f"L{c[1]}H{c[2]}" if c[0] == "head" else f"L{c[1]}_mlp"


def _replace_where(x, arg):
    mask, value = arg
    value = value[: x.shape[1]] if value.ndim == x.ndim - 1 else value  # reference means: (pos, ...)
    return jnp.where(mask, value.astype(x.dtype), x)


def _own_mean_where(x, mask):
    return jnp.where(mask, x.mean(-1, keepdims=True), x)


def ablation_masks(cfg: ModelConfig, comps: list[tuple] | None = None) -> dict:
    """Boolean masks of the worlds "nothing ablated" then each component.

    Returns ``{"z": (world, layer, head), "mlp": (world, layer)}`` with world = 1 + len(comps).
    """
    comps = components(cfg) if comps is None else comps
    z = np.zeros((len(comps) + 1, cfg.n_layers, cfg.n_heads), bool)
    m = np.zeros((len(comps) + 1, cfg.n_layers), bool)
    for i, c in enumerate(comps, start=1):
        if c[0] == "head":
            z[i, c[1], c[2]] = True
        else:
            m[i, c[1]] = True
    return {"z": jnp.asarray(z), "mlp": jnp.asarray(m)}


def ablation_means(params: dict, cfg: ModelConfig, reference: Inputs) -> dict:
    """Per-position means over a reference batch of every layer's ``hook_z`` (pos, head, d_head)
    and ``hook_mlp_out`` (pos, d_model), for ``kind="mean"``."""
    names = [("z", l) for l in range(cfg.n_layers)] + ([] if cfg.attn_only else [("mlp_out", l) for l in range(cfg.n_layers)])
    _, cache = run_with_cache(params, cfg, reference, names=names)
    return {k: v.mean(0) for k, v in cache.items()}


def ablation_interventions(cfg: ModelConfig, masks: dict, kind: str = "zero", means: dict | None = None) -> dict:
    """The intervention pytree of one world: ``masks`` {"z": (layer, head), "mlp": (layer,)}.

    ``kind``: "zero", "mean" (needs ``means`` from ``ablation_means``; it must cover at least as
    many positions as the inputs) or "dhead_mean" (the original app's).
    """
    if kind not in ABLATIONS:
        raise ValueError(f"unknown ablation {kind!r}; choose from {', '.join(ABLATIONS)}")
    if kind == "mean" and means is None:
        raise ValueError("mean ablation needs reference means (ablation_means)")
    ivs = {}
    for l in range(cfg.n_layers):
        sites = [(f"blocks.{l}.attn.hook_z", masks["z"][l][:, None])]  # (head, 1) over (.., head, d_head)
        if not cfg.attn_only:
            sites.append((f"blocks.{l}.hook_mlp_out", masks["mlp"][l]))
        for name, mask in sites:
            if kind == "dhead_mean":
                ivs[name] = hooks_lib.Apply(_own_mean_where, mask)
            else:
                value = means[name] if kind == "mean" else jnp.zeros((), jnp.float32)
                ivs[name] = hooks_lib.Apply(_replace_where, (mask, value))
    return ivs


def ablate_logits(params: dict, cfg: ModelConfig, inputs: Inputs, kind: str = "zero", means: dict | None = None,
                  comps: list[tuple] | None = None) -> tuple[list[str], jax.Array]:
    """Logits with each component ablated: (["none", names...], (world, batch, K, n_actions)).

    World 0 is the unablated model; the worlds are one ``vmap`` over the mask pytree.
    """
    comps = components(cfg) if comps is None else comps
    masks = ablation_masks(cfg, comps)

    def world(m):
        return run_with_hooks(params, cfg, inputs, ablation_interventions(cfg, m, kind, means))

    return ["none"] + [component_name(c) for c in comps], jax.vmap(world)(masks)


def ablate_returns(params: dict, cfg: ModelConfig, env, env_params, key: jax.Array, target_rtgs, n_episodes: int,
                   kind: str = "zero", means: dict | None = None, comps: list[tuple] | None = None) -> dict:
    """Closed-loop effect of each ablation (``dtjax.evaluate.evaluate`` with the interventions).

    Every world runs the same episodes (same key). Returns ``labels`` (["none", ...]),
    ``target_rtg`` (R,), and (world, R) arrays ``mean_return``, ``goal_rate``, ``hit_rate``,
    ``timeout_rate`` (and ``{outcome}_rate`` for each other outcome of the task: Memory's
    ``success_rate``, ``wrong_rate``). The worlds are one vmapped rollout (``evaluate_worlds``): one compile, and
    world ``w`` is ``evaluate`` with that world's interventions.
    """
    comps = components(cfg) if comps is None else comps
    masks = ablation_masks(cfg, comps)
    # the worlds share one intervention structure: vmap the per-world builder over the masks
    ivs = jax.vmap(lambda m: ablation_interventions(cfg, m, kind, means))(masks)
    res = evaluate_worlds(params, cfg, env, env_params, key, target_rtgs, n_episodes, ivs)
    return {"labels": ["none"] + [component_name(c) for c in comps], "target_rtg": np.asarray(target_rtgs, np.float32),
            **{f"{o}_rate": (np.asarray(res.outcome) == i).mean(-1) for i, o in enumerate(res.outcomes) if i > 0},
            "mean_return": res.returns.mean(-1), "goal_rate": res.goal.mean(-1), "hit_rate": res.hit.mean(-1),
            "timeout_rate": res.timeout.mean(-1)}


def logit_diff_metric(logits: jax.Array, direction: Any, k: int = -1) -> jax.Array:
    """Mean over the batch of the logits (batch, K, n_actions) at timestep ``k`` along ``direction``."""
    return (logits[:, k] @ action_vector(direction, logits.shape[-1])).mean()


@functools.partial(jax.jit, static_argnames=("cfg", "name", "n_pos", "n_heads"))
def _patch_sweep(params, cfg, corrupted, value, v, name, n_pos, n_heads):
    def one(pos, head):
        iv = {name: hooks_lib.Replace(mask=jnp.bool_(True), value=value, head=head, pos=pos)}
        logits = run_with_hooks(params, cfg, corrupted, iv)
        return (logits[:, -1] @ v).mean()

    positions = jnp.arange(n_pos)
    if n_heads == 0:
        return jax.vmap(lambda p: one(p, None))(positions)
    return jax.vmap(lambda p: jax.vmap(lambda h: one(p, h))(jnp.arange(n_heads)))(positions)


def patchable_hooks(cfg: ModelConfig, cache: dict) -> list[str]:
    """Hook names of a cache that activation patching sweeps (all but the logits), in forward order."""
    order = hooks_lib.hook_names(cfg)
    rank = {n: i for i, n in enumerate(order)}
    return sorted((n for n in cache if n != "hook_logits"), key=lambda n: rank.get(n, len(rank)))


def activation_patching(params: dict, cfg: ModelConfig, clean: Inputs, corrupted: Inputs, direction: Any = "forward-right",
                        names: list[str] | None = None) -> dict:
    """Normalised activation-patching effects, clean -> corrupted, for every hook/position/head.

    ``clean`` and ``corrupted`` have the same shapes (pairs along the batch). The metric is the
    mean logit difference along ``direction`` at the last state token.

    Returns ``{"clean": m_clean, "corrupted": m_corrupted, "effects": {hook name: array}}`` where
    each array is (pos,) or, for hooks with a head axis, (pos, head) of
    (m_patched - m_corrupted) / (m_clean - m_corrupted). ``pos`` is the token position, the
    timestep for the per-timestep embed hooks, and the query position for attention patterns.
    """
    check_pair(clean, corrupted)
    v = action_vector(direction, cfg.n_actions)
    clean_logits, cache = run_with_cache(params, cfg, clean)
    m_clean = logit_diff_metric(clean_logits, v)
    m_corr = logit_diff_metric(forward(params, cfg, corrupted), v)
    denom = jnp.where(jnp.abs(m_clean - m_corr) < 1e-9, jnp.nan, m_clean - m_corr)
    effects = {}
    for name in names or patchable_hooks(cfg, cache):
        name = hooks_lib.act_name(name)
        x = cache[name]
        info = hooks_lib.hook_info(name)
        head_axis, pos_axis = info.head_axis, info.pos_axis
        n_heads = 0 if head_axis is None else x.shape[head_axis]
        vals = _patch_sweep(params, cfg, corrupted, x, v, name, x.shape[pos_axis], n_heads)
        effects[name] = (vals - m_corr) / denom
    return {"clean": m_clean, "corrupted": m_corr, "effects": effects}
