"""Attention patterns, residual-stream decomposition, direct logit attribution, RTG scans.

Direct logit attribution (DLA). The residual stream at the final layer is a sum of component
outputs (TransformerLens's ``decompose_resid`` / ``get_full_resid_decomposition``):

    resid_post[pos] = token embedding (R, s or a) + time embedding + W_pos[pos]
                      + sum_l ( sum_h z[pos, h] @ W_O[l, h]  +  b_O[l]  +  mlp_out[l][pos] )

The logits are linear in it (no LayerNorm): ``logits = resid_post[pos] @ W_U + b_U``, so each
component's contribution to a direction over actions ``v`` is ``component @ W_U @ v``, and the
contributions plus ``b_U @ v`` sum exactly to the logit along ``v``. With LayerNorm the final
``ln_final`` is linear once its scale is frozen at the cached ``ln_final.hook_scale`` (TL's
``apply_ln_to_stack``): each component is centred and divided by that scale, and the LN bias
becomes one more constant component. Only the *direct* path is attributed: a component's effect
through later layers (e.g. the state embedding through attention) belongs to those layers.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from dtjax.circuits.core import (
    Inputs, action_vector, obs_maps, obs_to_chw, run_with_cache, state_pos,
)
from dtjax.config import ModelConfig

_TOKEN_TYPES = ("rtg", "state", "action")


def attention_patterns(params: dict, cfg: ModelConfig, inputs: Inputs, scores: bool = False) -> jax.Array:
    """Attention patterns (n_layers, batch, head, query_pos, key_pos); pre-softmax if ``scores``."""
    name = "attn_scores" if scores else "pattern"
    _, cache = run_with_cache(params, cfg, inputs, names=[(name, l) for l in range(cfg.n_layers)])
    return jnp.stack([cache[f"blocks.{l}.attn.hook_{name}"] for l in range(cfg.n_layers)])


def component_labels(cfg: ModelConfig, pos: int, logits: bool = False) -> list[str]:
    """Labels of ``decompose_resid`` (and with ``logits``, of ``decompose_logits``) at ``pos``."""
    labels = [f"embed_{_TOKEN_TYPES[pos % 3]}", "embed_time", "embed_pos"]
    for l in range(cfg.n_layers):
        labels += [f"L{l}H{h}" for h in range(cfg.n_heads)] + [f"L{l}_b_O"]
        if not cfg.attn_only:
            labels.append(f"L{l}_mlp")
    if logits:
        labels += (["ln_final_b"] if cfg.layer_norm else []) + ["b_U"]
    return labels


def decompose_resid(params: dict, cfg: ModelConfig, cache: dict, pos: int | None = None) -> tuple[list[str], jax.Array]:
    """The final ``resid_post`` at token ``pos`` split into its components.

    Args:
      cache: a full cache of ``run_with_cache`` (needs the embed hooks, ``hook_z``, ``hook_mlp_out``).
      pos: token index (static int); default the last timestep's state token.
    Returns:
      (labels, stack (batch, component, d_model)); the stack sums over components to
      ``cache[f"blocks.{L-1}.hook_resid_post"][:, pos]``.
    """
    pos = token_pos(cache, pos)
    k = pos // 3
    token = cache[f"hook_{_TOKEN_TYPES[pos % 3]}_embed"][:, k]
    parts = [token, cache["hook_time_embed"][:, k], cache["hook_pos_embed"][:, pos]]
    for l in range(cfg.n_layers):
        a = params[f"blocks_{l}"]["attn"]
        z = cache[f"blocks.{l}.attn.hook_z"][:, pos]  # (batch, head, d_head)
        heads = jnp.einsum("bhe,hed->bhd", z, a["W_O"])
        parts += [heads[:, h] for h in range(cfg.n_heads)]
        parts.append(jnp.broadcast_to(a["b_O"], token.shape))
        if not cfg.attn_only:
            parts.append(cache[f"blocks.{l}.hook_mlp_out"][:, pos])
    return component_labels(cfg, pos), jnp.stack(parts, axis=1)


def decompose_logits(params: dict, cfg: ModelConfig, cache: dict, pos: int | None = None) -> tuple[list[str], jax.Array]:
    """Every component's direct contribution to each action logit at state token ``pos``.

    Returns (labels, (batch, component, n_actions)): the components of ``decompose_resid``
    through the (frozen-scale) final LayerNorm and W_U, then ``ln_final_b`` (LN only) and
    ``b_U``. Sums over components to ``cache["hook_logits"][:, pos // 3]``.
    """
    pos = token_pos(cache, pos)
    labels, stack = decompose_resid(params, cfg, cache, pos)
    W_U = params["W_U"]
    if cfg.layer_norm:
        scale = cache["ln_final.hook_scale"][:, pos]  # (batch, 1)
        stack = (stack - stack.mean(-1, keepdims=True)) / scale[:, None]
        W_U = params["ln_final"]["w"][:, None] * W_U
    out = jnp.einsum("bcd,da->bca", stack, W_U)
    consts = []
    if cfg.layer_norm:
        consts.append(params["ln_final"]["b"] @ params["W_U"])
    consts.append(params["b_U"])
    consts = jnp.broadcast_to(jnp.stack(consts), (out.shape[0], len(consts), out.shape[-1]))
    labels = labels + (["ln_final_b"] if cfg.layer_norm else []) + ["b_U"]
    return labels, jnp.concatenate([out, consts], axis=1)


def token_pos(cache: dict, pos: int | None) -> int:
    """Static token index: ``pos`` modulo the sequence, default the last timestep's state token."""
    n_tok = cache["hook_embed"].shape[1]
    return state_pos((n_tok + 1) // 3) if pos is None else pos % n_tok


def direct_logit_attribution(params: dict, cfg: ModelConfig, cache: dict, direction: Any,
                             pos: int | None = None, include_bias: bool = True) -> tuple[list[str], jax.Array]:
    """DLA onto a direction over actions (``"forward-right"``, ``2``, or an (n_actions,) array).

    Returns (labels, (batch, component)). With ``include_bias`` the constants ``b_U @ v`` (and
    the LN bias) are components and the row sums to the logit along ``v``; without them it sums
    to ``resid_post[pos] @ W_U @ v`` (the original app's "Total Dir", no LN).
    """
    labels, per_action = decompose_logits(params, cfg, cache, pos)
    dla = per_action @ action_vector(direction, cfg.n_actions)
    if not include_bias:
        keep = [i for i, lab in enumerate(labels) if lab not in ("b_U", "ln_final_b")]
        labels, dla = [labels[i] for i in keep], dla[:, jnp.asarray(keep)]
    return labels, dla


def state_encoder_maps(params: dict, cfg: ModelConfig, direction: Any, obs: jax.Array | None = None,
                       normalise: bool = False) -> jax.Array:
    """How each observation cell and channel writes to a logit direction through W_state.

    The *weight projection* ``(W_state @ W_U @ v)`` reshaped to (C, 7, 7) [c, x, y] (original app:
    "weight projection"); with ``obs`` (batch, 7, 7, C) the *activation projection*, weights ⊙ obs,
    (batch, C, 7, 7), whose sum is the state embedding's direct logit contribution (no LN).
    ``normalise`` divides each channel's map by its largest absolute value.
    ``direction`` may also be a residual vector (d_model,).
    """
    d = jnp.asarray(direction, jnp.float32) if _is_resid_vector(direction, cfg) else \
        params["W_U"] @ action_vector(direction, cfg.n_actions)
    maps = obs_maps(params["W_state"] @ d, cfg)  # (C, 7, 7)
    if obs is not None:
        maps = maps * obs_to_chw(obs)
    if normalise:
        maps = maps / jnp.maximum(jnp.abs(maps).max(axis=(-1, -2), keepdims=True), 1e-12)
    return maps


def _is_resid_vector(direction, cfg) -> bool:
    return hasattr(direction, "shape") and getattr(direction, "shape", ()) == (cfg.d_model,)


def rtg_scan(params: dict, cfg: ModelConfig, inputs: Inputs, rtgs: jax.Array, direction: Any = "forward-right",
             pos: int | None = None) -> dict:
    """Sweep the current RTG of one input over ``rtgs`` (n,) (any range: extrapolation included).

    ``inputs`` has batch 1; each RTG row keeps its reward steps (``Inputs.with_rtg``). The sweep
    is a ``vmap`` over the RTG. Returns a dict of arrays:
      ``rtg`` (n,); ``logits``, ``probs`` (n, n_actions) at the state token ``pos``;
      ``dla`` (n, component) onto ``direction`` with the biases, ``labels`` (list);
      ``pattern``, ``scores`` (n, n_layers, head, query_pos, key_pos).
    """
    rtgs = jnp.asarray(rtgs, jnp.float32)
    n_tok = 2 * inputs.n_timesteps + (0 if inputs.actions is None else inputs.actions.shape[1])
    pos = state_pos(inputs.n_timesteps) if pos is None else pos % n_tok
    v = action_vector(direction, cfg.n_actions)

    def one(r):
        logits, cache = run_with_cache(params, cfg, inputs.with_rtg(r[None], cfg.n_actions, cfg.pad_rtg))
        _, per_action = decompose_logits(params, cfg, cache, pos)
        pat = jnp.stack([cache[f"blocks.{l}.attn.hook_pattern"][0] for l in range(cfg.n_layers)])
        sc = jnp.stack([cache[f"blocks.{l}.attn.hook_attn_scores"][0] for l in range(cfg.n_layers)])
        lg = logits[0, pos // 3]
        return lg, jax.nn.softmax(lg), per_action[0] @ v, pat, sc

    logits, probs, dla, pattern, scores = jax.vmap(one)(rtgs)
    return {"rtg": rtgs, "logits": logits, "probs": probs, "dla": dla,
            "labels": component_labels(cfg, pos, logits=True), "pattern": pattern, "scores": scores}


def rtg_embedding_projection(params: dict, rtgs: jax.Array, direction: Any = "forward-right") -> jax.Array:
    """(RTG * W_rtg) @ W_U @ v for each RTG (n,): the RTG token's direct path (a line through 0)."""
    d = params["W_U"] @ action_vector(direction, params["W_U"].shape[1])
    return jnp.asarray(rtgs, jnp.float32) * (params["W_rtg"][0] @ d)


def time_embedding_projection(params: dict, cfg: ModelConfig, direction: Any = "forward-right",
                              timesteps: jax.Array | None = None) -> jax.Array:
    """W_time[t] @ W_U @ v for each timestep (T,) (t = 0..max_timestep unless given)."""
    d = params["W_U"] @ action_vector(direction, cfg.n_actions)
    t = jnp.arange(cfg.max_timestep + 1) if timesteps is None else jnp.asarray(timesteps)
    if cfg.time_embedding == "learned":
        rows = params["W_time"][jnp.clip(t, 0, params["W_time"].shape[0] - 1)]
    else:
        rows = t[:, None].astype(jnp.float32) * params["W_time"][0]
    return rows @ d


def embedding_cosines(params: dict, cfg: ModelConfig) -> dict:
    """Cosine similarities of the embeddings with each action's unembedding W_U[:, a].

    Returns ``rtg`` (n_actions,) for W_rtg, ``time`` (T, n_actions) for each W_time row,
    ``pos`` (n_pos, n_actions) for W_pos, and ``state_channel`` (C, n_actions) for the mean
    W_state row of each channel.
    """
    U = params["W_U"] / jnp.linalg.norm(params["W_U"], axis=0, keepdims=True)

    def cos(x):
        return (x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)) @ U

    ws = obs_maps(params["W_state"].T, cfg).mean((-1, -2)).T  # (C, d_model)
    return {"rtg": cos(params["W_rtg"][0]), "time": cos(params["W_time"]), "pos": cos(params["W_pos"]),
            "state_channel": cos(ws)}
