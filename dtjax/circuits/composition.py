"""Composition scores between attention heads of different layers.

Elhage et al. 2021, "A Mathematical Framework for Transformer Circuits"; TransformerLens
``HookedTransformer.all_composition_scores``. How much head h2 of a later layer reads what head
h1 writes: ||W_OV^{h1} M^{h2}||_F / (||W_OV^{h1}||_F ||M^{h2}||_F) with M = W_QK
(Q-composition: h1 writes into h2's queries), W_QKᵀ (K-composition: into its keys) or W_OV
(V-composition: into its values). Raw weights, as TL computes them (no LayerNorm folding). The
products stay factored through d_head, so the cost is d_head x d_head Gram matrices rather than
d_model x d_model products. For independent random matrices ||L R||_F^2 is about
||L||_F^2 ||R||_F^2 / d_model, so a score is about 1/sqrt(d_model) by chance (0.088 for d_model
128, as the untrained model's scores are): compare with that, or with an untrained model.
Attention weights only: MLPs (standard or gated) take no part.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from dtjax.config import ModelConfig


def _factors(params: dict, cfg: ModelConfig, kind: str) -> tuple[jax.Array, jax.Array]:
    """(A (L, H, d_model, d_head), B (L, H, d_head, d_model)) with W_kind = A @ B per layer and head."""
    a = [params[f"blocks_{l}"]["attn"] for l in range(cfg.n_layers)]
    if kind == "OV":
        return jnp.stack([x["W_V"] for x in a]), jnp.stack([x["W_O"] for x in a])
    if kind == "QK":
        return jnp.stack([x["W_Q"] for x in a]), jnp.stack([jnp.swapaxes(x["W_K"], -1, -2) for x in a])
    return jnp.stack([x["W_K"] for x in a]), jnp.stack([jnp.swapaxes(x["W_Q"], -1, -2) for x in a])  # QK transposed


def composition_scores(params: dict, cfg: ModelConfig, mode: str) -> jax.Array:
    """TL ``all_composition_scores(mode)``: (L, H, L, H), [l1, h1, l2, h2] = composition of head
    (l1, h1) into head (l2, h2) by ``mode`` "Q", "K" or "V"; zero unless l1 < l2.

    Frobenius norms of factored products: ||A C B||_F^2 = tr(AᵀA C BBᵀ Cᵀ), with C (d_head, d_head).
    """
    if mode not in ("Q", "K", "V"):
        raise ValueError(f"composition mode must be 'Q', 'K' or 'V', got {mode!r}")
    A1, B1 = _factors(params, cfg, "OV")
    A2, B2 = _factors(params, cfg, {"Q": "QK", "K": "KQ", "V": "OV"}[mode])

    def gram(A, B):  # (A^T A, B B^T)
        return jnp.einsum("lhde,lhdf->lhef", A, A), jnp.einsum("lhed,lhfd->lhef", B, B)

    GA1, GB1 = gram(A1, B1)
    GA2, GB2 = gram(A2, B2)
    n1 = jnp.sqrt(jnp.einsum("lhef,lhef->lh", GA1, GB1))
    n2 = jnp.sqrt(jnp.einsum("lhef,lhef->lh", GA2, GB2))
    C = jnp.einsum("lhed,mgdf->lhmgef", B1, A2)  # (L, H, L, H, d_head, d_head): B1 A2 for every pair
    XC = jnp.einsum("lhef,lhmgfk->lhmgek", GA1, C)
    CY = jnp.einsum("lhmgef,mgfk->lhmgek", C, GB2)
    prod = jnp.sqrt(jnp.maximum(jnp.einsum("lhmgek,lhmgek->lhmg", XC, CY), 0.0))
    scores = prod / (n1[:, :, None, None] * n2[None, None])
    later = jnp.arange(cfg.n_layers)[:, None, None, None] < jnp.arange(cfg.n_layers)[None, None, :, None]
    return jnp.where(later, scores, 0.0)


def all_composition_scores(params: dict, cfg: ModelConfig) -> dict:
    """Q, K and V composition scores (L, H, L, H) each, and ``labels`` ["L0H0", ...] of the flattened
    (layer, head) axes (``scores.reshape(L * H, L * H)`` reads sender row, receiver column)."""
    out = {m: composition_scores(params, cfg, m) for m in ("Q", "K", "V")}
    out["labels"] = [f"L{l}H{h}" for l in range(cfg.n_layers) for h in range(cfg.n_heads)]
    return out
