"""Logit lens, accumulated residual and layer-wise decomposition of the residual stream.

Logit lens (nostalgebraist 2020; TransformerLens ``ActivationCache.accumulated_resid`` and
``decompose_resid``). Without LayerNorm the logits are linear in the final residual stream, and
the residual stream is a running sum, so reading the logit direction ``W_U @ v`` off the residual
*before* each layer shows what the model "would say" if it stopped there, and reading it off each
layer's output shows what that layer adds:

    accumulated:  resid_pre[0], resid_mid[0], resid_pre[1], ..., resid_post[L-1]   ("0_pre", ..., "final_post")
    layer-wise:   embed, pos_embed, 0_attn_out, 0_mlp_out, 1_attn_out, ...        (sums to resid_post[L-1])

With LayerNorm the two differ, as in TransformerLens 3.x: the accumulated residuals go through
the real final LayerNorm, its statistics recomputed for each (``apply_ln=True``, TL's
``recompute_ln`` for the unembed: what the model would output if it stopped there), while the
layer outputs are centred and divided by the cached final scale (``ln_final.hook_scale``, TL's
``apply_ln_to_stack``) so that they still add up; the LN weight is then folded into the
direction and its bias is a constant, like ``b_U``. Every stack is read from the cache
(``hook_mlp_out`` for an MLP), so a gated MLP (``ModelConfig.mlp``) needs nothing different.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from dtjax.circuits.attribution import component_labels, direct_logit_attribution, token_pos
from dtjax.circuits.core import Inputs, action_vector, layer_norm, run_with_cache, state_pos
from dtjax.config import ModelConfig


def _apply_ln(cfg: ModelConfig, cache: dict, stack: jax.Array, pos: int) -> jax.Array:
    """TL ``apply_ln_to_stack``: (batch, n, d_model) centred and divided by the cached final LN scale."""
    if not cfg.layer_norm:
        return stack
    return (stack - stack.mean(-1, keepdims=True)) / cache["ln_final.hook_scale"][:, pos][:, None]


def _accumulated_labels(cfg: ModelConfig, incl_mid: bool) -> list[str]:
    labels = []
    for l in range(cfg.n_layers):
        labels += [f"{l}_pre"] + ([f"{l}_mid"] if incl_mid and not cfg.attn_only else [])
    return labels + ["final_post"]


def _layer_labels(cfg: ModelConfig) -> list[str]:
    labels = ["embed", "pos_embed"]
    for l in range(cfg.n_layers):
        labels += [f"{l}_attn_out"] + ([] if cfg.attn_only else [f"{l}_mlp_out"])
    return labels


def accumulated_resid(params: dict, cfg: ModelConfig, cache: dict, pos: int | None = None, incl_mid: bool = False,
                      apply_ln: bool = False) -> tuple[list[str], jax.Array]:
    """The residual stream at token ``pos`` before each layer (and its middle), then at the end.

    Returns (labels, (batch, n, d_model)) with labels "0_pre", ("0_mid"), "1_pre", ...,
    "final_post", as TL's ``accumulated_resid(incl_mid=...)``. ``pos`` defaults to the last state
    token. ``apply_ln``: each through the final LayerNorm with its statistics recomputed (TL 3.x;
    the identity without LN).
    """
    pos = token_pos(cache, pos)
    parts = []
    for l in range(cfg.n_layers):
        parts.append(cache[f"blocks.{l}.hook_resid_pre"][:, pos])
        if incl_mid and not cfg.attn_only:
            parts.append(cache[f"blocks.{l}.hook_resid_mid"][:, pos])
    parts.append(cache[f"blocks.{cfg.n_layers - 1}.hook_resid_post"][:, pos])
    stack = jnp.stack(parts, 1)
    return _accumulated_labels(cfg, incl_mid), layer_norm(params, cfg, "ln_final", stack) if apply_ln else stack


def decompose_resid_layers(params: dict, cfg: ModelConfig, cache: dict, pos: int | None = None,
                           apply_ln: bool = False) -> tuple[list[str], jax.Array]:
    """The final residual at ``pos`` split by layer, as TL's ``decompose_resid(mode="all")``.

    Returns (labels, (batch, n, d_model)): "embed" (``hook_embed``: token + time embedding),
    "pos_embed", then "{l}_attn_out" and "{l}_mlp_out" per layer; the stack sums to
    ``blocks.{L-1}.hook_resid_post[:, pos]``. (Per head and per token type: ``decompose_resid``.)
    ``apply_ln``: centred and divided by the cached final LN scale (TL ``apply_ln_to_stack``).
    """
    pos = token_pos(cache, pos)
    parts = [cache["hook_embed"][:, pos], cache["hook_pos_embed"][:, pos]]
    for l in range(cfg.n_layers):
        parts.append(cache[f"blocks.{l}.hook_attn_out"][:, pos])
        if not cfg.attn_only:
            parts.append(cache[f"blocks.{l}.hook_mlp_out"][:, pos])
    stack = jnp.stack(parts, 1)
    return _layer_labels(cfg), _apply_ln(cfg, cache, stack, pos) if apply_ln else stack


def logit_lens(params: dict, cfg: ModelConfig, inputs: Inputs, direction: Any = "forward-right",
               pos: int | None = None) -> dict:
    """Logit lens at state token ``pos`` (default the last) onto a direction over actions ``v``.

    Returns a dict of arrays and labels:
      ``accumulated`` (batch, n) and ``accumulated_labels``: each accumulated residual (with the
        middles) through the final LN (recomputed) onto W_U @ v;
      ``accumulated_logits`` (batch, n, n_actions): the same through the whole unembedding
        (+ b_U): the action logits the model would give from there (the last row is its output);
      ``layers`` (batch, n) and ``layer_labels``: each layer's output through the cached-scale
        final LN onto (w_ln * W_U) @ v;
      ``components`` (batch, n) and ``component_labels``: per head, MLP bias and token type (DLA);
      ``bias`` (batch,): (b_ln @ W_U + b_U) @ v, so ``layers`` (or ``components``) sum plus ``bias``
        is the logit along v, as is ``accumulated[:, -1] + b_U @ v``;
      ``logits`` (batch, n_actions): the model's logits at ``pos``.
    """
    n_tok = 2 * inputs.n_timesteps + (0 if inputs.actions is None else inputs.actions.shape[1])
    pos = state_pos(inputs.n_timesteps) if pos is None else pos % n_tok
    out = _logit_lens(params, cfg, inputs, action_vector(direction, cfg.n_actions), pos)
    labels = {"accumulated_labels": _accumulated_labels(cfg, True), "layer_labels": _layer_labels(cfg),
              "component_labels": component_labels(cfg, pos)}
    return {**out, **labels}


@functools.partial(jax.jit, static_argnames=("cfg", "pos"))
def _logit_lens(params, cfg, inputs, v, pos):
    logits, cache = run_with_cache(params, cfg, inputs)
    d = params["W_U"] @ v
    _, acc = accumulated_resid(params, cfg, cache, pos, incl_mid=True, apply_ln=True)
    _, lay = decompose_resid_layers(params, cfg, cache, pos, apply_ln=True)
    d_ln = params["ln_final"]["w"] * d if cfg.layer_norm else d
    bias = params["b_U"] @ v + (params["ln_final"]["b"] @ d if cfg.layer_norm else 0.0)
    _, comp = direct_logit_attribution(params, cfg, cache, v, pos, include_bias=False)
    return {"accumulated": acc @ d, "accumulated_logits": acc @ params["W_U"] + params["b_U"], "layers": lay @ d_ln,
            "components": comp, "bias": jnp.broadcast_to(bias, acc.shape[:1]), "logits": logits[:, pos // 3]}
