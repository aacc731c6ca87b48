"""QK and OV circuits from the weights alone, and a small FactoredMatrix.

Transformer-circuits framework (Elhage et al. 2021): head h of layer l scores query token x_q
against key token x_k with the bilinear form ``x_q W_QK x_kᵀ`` (W_QK = W_Q W_Kᵀ, d_model x
d_model, rank <= d_head; biases aside) and moves ``x_k W_OV`` (W_OV = W_V W_O) into the query's
residual stream. Sandwiching them between input embeddings and the unembedding gives "full"
circuits in input and output vocabulary, as the original app did:

    QK_full[h] = W_state · W_QK[h] · w_Rᵀ          (obs_dim,): state query -> RTG key, per unit RTG
    OV_full[h] = W_state · W_OV[h] · W_U           (obs_dim, n_actions): state value -> logits

These are exact for layer 0 of a model without LayerNorm, for the parts of the tokens they
name: the real score adds the time/positional embeddings, the biases and the 1/sqrt(d_head)
scale (``qk_circuit(..., scale=True)`` applies it; the original's maps do not), and the real
output is weighted by the attention pattern. Maps over observation features are reshaped to
(C, 7, 7) in [c, x, y] order; show them with ``imshow(m.T)``. Attention and embedding weights
only: no circuit here passes through an MLP, standard or gated (``ModelConfig.mlp``).

``FactoredMatrix`` keeps ``A @ B`` factored, like TransformerLens's: its SVD costs two small SVDs
and one k x k SVD instead of an SVD of the d_model x d_model product.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from dtjax.circuits.core import action_vector, obs_maps
from dtjax.config import ModelConfig


@struct.dataclass
class FactoredMatrix:
    """The product ``A @ B`` kept factored: A (..., m, k), B (..., k, n); leading axes batch (e.g. heads)."""

    A: jax.Array
    B: jax.Array

    @property
    def AB(self) -> jax.Array:
        """The dense product (..., m, n)."""
        return self.A @ self.B

    @property
    def shape(self) -> tuple[int, ...]:
        return self.A.shape[:-1] + self.B.shape[-1:]

    @property
    def T(self) -> "FactoredMatrix":
        return FactoredMatrix(jnp.swapaxes(self.B, -1, -2), jnp.swapaxes(self.A, -1, -2))

    def __matmul__(self, other: jax.Array) -> "FactoredMatrix":
        return self.rmul(other)

    def rmul(self, other: jax.Array) -> "FactoredMatrix":
        """``(A B) @ other`` = A (B other), still factored."""
        return FactoredMatrix(self.A, self.B @ other)

    def lmul(self, other: jax.Array) -> "FactoredMatrix":
        """``other @ (A B)`` = (other A) B, still factored. (``array @ fm`` does not dispatch here:
        jax arrays do not defer ``@`` to a pytree.)"""
        return FactoredMatrix(other @ self.A, self.B)

    def svd(self) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Thin SVD (U (..., m, r), S (..., r), Vh (..., r, n)) with r = min(m, k, n), unformed.

        A = Ua Sa Vha, B = Ub Sb Vhb; the small core (Sa Vha Ub Sb) = Uc S Vhc; then
        A B = (Ua Uc) S (Vhc Vhb) (TransformerLens FactoredMatrix.svd).
        """
        Ua, Sa, Vha = jnp.linalg.svd(self.A, full_matrices=False)
        Ub, Sb, Vhb = jnp.linalg.svd(self.B, full_matrices=False)
        core = (Sa[..., :, None] * Vha) @ (Ub * Sb[..., None, :])
        Uc, S, Vhc = jnp.linalg.svd(core, full_matrices=False)
        return Ua @ Uc, S, Vhc @ Vhb

    @property
    def S(self) -> jax.Array:
        """Singular values (..., r), largest first."""
        return self.svd()[1]


def W_QK(params: dict, layer: int = 0) -> FactoredMatrix:
    """W_Q[h] @ W_K[h]ᵀ per head: (head, d_model, d_model) factored through d_head."""
    a = params[f"blocks_{layer}"]["attn"]
    return FactoredMatrix(a["W_Q"], jnp.swapaxes(a["W_K"], -1, -2))


def W_OV(params: dict, layer: int = 0) -> FactoredMatrix:
    """W_V[h] @ W_O[h] per head: (head, d_model, d_model) factored through d_head."""
    a = params[f"blocks_{layer}"]["attn"]
    return FactoredMatrix(a["W_V"], a["W_O"])


def qk_circuit(params: dict, query: jax.Array, key: jax.Array, layer: int = 0, scale: bool = False) -> jax.Array:
    """Attention-score contributions ``query W_QK[h] keyᵀ``: (head, n_q, n_k).

    query (n_q, d_model), key (n_k, d_model): embedding vectors (rows of W_state, w_R, W_time,
    W_pos, or whole residual vectors). ``scale`` divides by sqrt(d_head) as the forward pass does.
    """
    qk = W_QK(params, layer)
    out = qk.lmul(query).rmul(key.T).AB
    if scale:
        out = out / jnp.sqrt(jnp.float32(params[f"blocks_{layer}"]["attn"]["W_Q"].shape[-1]))
    return out


def ov_circuit(params: dict, source: jax.Array, layer: int = 0, direction: Any = None) -> jax.Array:
    """What a head writes to the logits when it attends to ``source`` (n, d_model) with weight 1.

    Returns (head, n, n_actions) = source W_OV[h] W_U, or (head, n) along a direction over actions.
    """
    out = W_OV(params, layer).lmul(source).rmul(params["W_U"]).AB
    return out if direction is None else out @ action_vector(direction, params["W_U"].shape[1])


def qk_state_rtg(params: dict, cfg: ModelConfig, layer: int = 0, scale: bool = False) -> jax.Array:
    """QK_full = W_state W_QK w_Rᵀ as maps (head, C, 7, 7): how a unit of each observation feature
    in the state (query) token raises its attention score to the RTG (key) token, per unit RTG.
    """
    return obs_maps(qk_circuit(params, params["W_state"], params["W_rtg"], layer, scale)[..., 0], cfg)


def qk_embeddings_rtg(params: dict, cfg: ModelConfig, layer: int = 0, scale: bool = False) -> dict:
    """The non-observation query-side sources of the state -> RTG score, per unit RTG as key.

    ``time`` (head, T): W_time[t] (added to the state token) as query, each row of a learned
    table ((head, 1), per unit t, if linear); ``pos`` (head,): W_pos[1], the state token's
    positional embedding, as query.
    """
    key = params["W_rtg"]
    return {"time": qk_circuit(params, params["W_time"], key, layer, scale)[..., 0],
            "pos": qk_circuit(params, params["W_pos"][1:2], key, layer, scale)[:, 0, 0]}


def ov_state(params: dict, cfg: ModelConfig, layer: int = 0) -> jax.Array:
    """OV_full = W_state W_OV W_U as maps (head, C, 7, 7, n_actions): each observation feature's
    effect on each action logit when the state token attends to itself with weight 1.
    """
    ov = ov_circuit(params, params["W_state"], layer)  # (head, obs_dim, n_actions)
    return obs_maps(jnp.swapaxes(ov, -1, -2), cfg).transpose(0, 2, 3, 4, 1)


def ov_rtg(params: dict, layer: int = 0) -> jax.Array:
    """w_R W_OV W_U: (head, n_actions), what each head writes to the logits per unit RTG attended."""
    return ov_circuit(params, params["W_rtg"], layer)[:, 0]


def circuit_svd(params: dict, cfg: ModelConfig, layer: int = 0, k: int = 3) -> dict:
    """Top-``k`` singular directions of W_QK and W_OV per head, read in input/output vocabulary.

    Returns ``qk_S``, ``ov_S`` (head, d_head) singular values, and for the top ``k`` directions:
    ``qk_query_maps`` (head, k, C, 7, 7) = W_state @ U (which observation features write the query
    direction), ``qk_key_rtg`` (head, k) = w_R @ Vhᵀ (how much the RTG embedding reads as key),
    ``ov_input_maps`` (head, k, C, 7, 7) = W_state @ U, ``ov_output_logits`` (head, k, n_actions)
    = Vh @ W_U (what each output direction does to the logits). Signs of (U, Vh) pairs are arbitrary.
    """
    out = {}
    for name, fm in (("qk", W_QK(params, layer)), ("ov", W_OV(params, layer))):
        U, S, Vh = fm.svd()
        out[f"{name}_S"] = S
        U, Vh = U[..., :k], Vh[..., :k, :]
        maps = obs_maps(jnp.einsum("fd,hdk->hkf", params["W_state"], U), cfg)
        if name == "qk":
            out["qk_query_maps"] = maps
            out["qk_key_rtg"] = jnp.einsum("d,hkd->hk", params["W_rtg"][0], Vh)
        else:
            out["ov_input_maps"] = maps
            out["ov_output_logits"] = jnp.einsum("hkd,da->hka", Vh, params["W_U"])
    return out
