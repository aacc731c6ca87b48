"""The Decision Transformer, as pure functions over a TransformerLens-named parameter dict.

Mirrors the original project's `DecisionTransformer` (DecisionTransformerInterpretability,
`src/decision_transformer/model.py`) running one TransformerLens `HookedTransformer` block stack:

    tokens    R_t + tau_t, s_t + tau_t, a_t + tau_t   for t = 1..K  (the last a_K may be absent)
    R         = rtg * W_rtg                           (no bias)
    s         = flatten_(c,x,y)(obs) @ W_state        (obs cast to float; no bias)
    a         = W_action[a]                            (row n_actions = padding)
    tau       = W_time[t]  or  t * W_time[0]           (learned table or linear)
    x         = tokens + W_pos[:n]
    block     = x + attn(ln1(x));  x + mlp(ln2(x))     (causal; masked scores set to -1e5)
    logits_t  = ln_final(x)[state token t] @ W_U + b_U

Every activation passes through a `HookPoint` under its TransformerLens name (see
`dtjax.hooks`), so the same call can return a cache or apply interventions inside `jit`. There
is no Flax module: parameters are a plain dict (shapes in docs/architecture.md), which keeps
`jit`, `vmap`, `grad` and weight surgery (QK/OV circuits) trivial; the hooks cost nothing when
no cache or intervention is asked for, because nothing extra is traced.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from dtjax.config import ModelConfig
from dtjax.hooks import HookPoint

IGNORE = -1e5  # the original's masked attention score (replaced, not added)


def init_params(key: jax.Array, cfg: ModelConfig) -> dict:
    """Random parameters: weights N(0, cfg.init_std), biases 0, LayerNorm weights 1."""
    d, h, dh = cfg.d_model, cfg.n_heads, cfg.d_head
    keys = iter(jax.random.split(key, 8 + 8 * cfg.n_layers))
    normal = lambda shape: cfg.init_std * jax.random.normal(next(keys), shape, jnp.float32)  # noqa: E731
    time_rows = cfg.max_timestep + 1 if cfg.time_embedding == "learned" else 1
    params = {
        "W_state": normal((cfg.obs_dim, d)),
        "W_rtg": normal((1, d)),
        "W_action": normal((cfg.n_actions + 1, d)),
        "W_time": normal((time_rows, d)),
        "W_pos": normal((cfg.pos_rows, d)),
        "W_U": normal((d, cfg.n_actions)),
        "b_U": jnp.zeros((cfg.n_actions,)),
    }
    for layer in range(cfg.n_layers):
        block = {
            "attn": {
                "W_Q": normal((h, d, dh)), "W_K": normal((h, d, dh)), "W_V": normal((h, d, dh)),
                "W_O": normal((h, dh, d)) / jnp.sqrt(2.0 * cfg.n_layers),
                "b_Q": jnp.zeros((h, dh)), "b_K": jnp.zeros((h, dh)), "b_V": jnp.zeros((h, dh)), "b_O": jnp.zeros((d,)),
            }
        }
        if not cfg.attn_only:
            block["mlp"] = {
                "W_in": normal((d, cfg.d_mlp)), "b_in": jnp.zeros((cfg.d_mlp,)),
                "W_out": normal((cfg.d_mlp, d)) / jnp.sqrt(2.0 * cfg.n_layers), "b_out": jnp.zeros((d,)),
            }
        if cfg.layer_norm:
            block["ln1"] = {"w": jnp.ones((d,)), "b": jnp.zeros((d,))}
            if not cfg.attn_only:
                block["ln2"] = {"w": jnp.ones((d,)), "b": jnp.zeros((d,))}
        params[f"blocks_{layer}"] = block
    if cfg.layer_norm:
        params["ln_final"] = {"w": jnp.ones((d,)), "b": jnp.zeros((d,))}
    return params


def _layer_norm(p: dict, x: jax.Array, name: str, hook: HookPoint) -> jax.Array:
    """TransformerLens LayerNorm: center, divide by hook_scale = sqrt(var + eps), then affine."""
    x = x - x.mean(-1, keepdims=True)
    scale = hook(f"{name}.hook_scale", jnp.sqrt((x**2).mean(-1, keepdims=True) + 1e-5))
    return x / scale * p["w"] + p["b"]


def embed(params: dict, cfg: ModelConfig, obs, rtg, timesteps, actions, hook: HookPoint) -> jax.Array:
    """Token embeddings (batch, pos, d_model), interleaved R, s, a per timestep, time added.

    Args:
      obs: (batch, K, 7, 7, C) raw codes or one-hot; rtg: (batch, K); timesteps: (batch, K) int;
      actions: (batch, K) int, or None (only for K = 1: the 2-token sequence R, s).
    """
    b, k = rtg.shape
    flat = jnp.moveaxis(obs.astype(jnp.float32), -1, -3).reshape(b, k, -1)  # (c, x, y) order
    state = hook("hook_state_embed", flat @ params["W_state"])
    rtg_e = hook("hook_rtg_embed", rtg.astype(jnp.float32)[..., None] * params["W_rtg"][0])
    if cfg.time_embedding == "learned":
        time = params["W_time"][jnp.clip(timesteps, 0, params["W_time"].shape[0] - 1)]
    else:
        time = timesteps.astype(jnp.float32)[..., None] * params["W_time"][0]
    time = hook("hook_time_embed", time)
    if actions is None:
        if k != 1:
            raise ValueError(f"actions may be omitted only for a single timestep, got {k} timesteps")
        tokens = jnp.stack([rtg_e, state], axis=2) + time[:, :, None]
    else:
        act = hook("hook_action_embed", params["W_action"][actions])
        tokens = jnp.stack([rtg_e, state, act], axis=2) + time[:, :, None]
    return hook("hook_embed", tokens.reshape(b, -1, cfg.d_model))


def attention(p: dict, x: jax.Array, layer: int, hook: HookPoint) -> jax.Array:
    """Causal multi-head attention with TransformerLens hooks; returns hook_attn_out."""
    name = f"blocks.{layer}.attn"
    q = hook(f"{name}.hook_q", jnp.einsum("bpd,hde->bphe", x, p["W_Q"]) + p["b_Q"])
    k = hook(f"{name}.hook_k", jnp.einsum("bpd,hde->bphe", x, p["W_K"]) + p["b_K"])
    v = hook(f"{name}.hook_v", jnp.einsum("bpd,hde->bphe", x, p["W_V"]) + p["b_V"])
    scores = jnp.einsum("bqhe,bkhe->bhqk", q, k) / jnp.sqrt(jnp.float32(q.shape[-1]))
    n = x.shape[1]
    causal = jnp.tril(jnp.ones((n, n), bool))
    scores = hook(f"{name}.hook_attn_scores", jnp.where(causal, scores, IGNORE))
    pattern = hook(f"{name}.hook_pattern", jax.nn.softmax(scores, axis=-1))
    z = hook(f"{name}.hook_z", jnp.einsum("bhqk,bkhe->bqhe", pattern, v))
    if hook.wants(f"{name}.hook_result"):
        result = hook(f"{name}.hook_result", jnp.einsum("bqhe,hed->bqhd", z, p["W_O"]))
        out = result.sum(2) + p["b_O"]
    else:
        out = jnp.einsum("bqhe,hed->bqd", z, p["W_O"]) + p["b_O"]
    return hook(f"blocks.{layer}.hook_attn_out", out)


def mlp(p: dict, x: jax.Array, layer: int, hook: HookPoint) -> jax.Array:
    pre = hook(f"blocks.{layer}.mlp.hook_pre", x @ p["W_in"] + p["b_in"])
    post = hook(f"blocks.{layer}.mlp.hook_post", jax.nn.relu(pre))
    return hook(f"blocks.{layer}.hook_mlp_out", post @ p["W_out"] + p["b_out"])


def _forward(params, cfg: ModelConfig, obs, rtg, timesteps, actions, hook: HookPoint) -> jax.Array:
    tokens = embed(params, cfg, obs, rtg, timesteps, actions, hook)
    n = tokens.shape[1]
    if n > params["W_pos"].shape[0]:
        raise ValueError(f"{n} tokens exceed the model's {params['W_pos'].shape[0]} positions")
    pos = hook("hook_pos_embed", jnp.broadcast_to(params["W_pos"][:n], tokens.shape))
    x = tokens + pos
    for layer in range(cfg.n_layers):
        p = params[f"blocks_{layer}"]
        x = hook(f"blocks.{layer}.hook_resid_pre", x)
        a_in = _layer_norm(p["ln1"], x, f"blocks.{layer}.ln1", hook) if cfg.layer_norm else x
        x = x + attention(p["attn"], a_in, layer, hook)
        if not cfg.attn_only:
            x = hook(f"blocks.{layer}.hook_resid_mid", x)
            m_in = _layer_norm(p["ln2"], x, f"blocks.{layer}.ln2", hook) if cfg.layer_norm else x
            x = x + mlp(p["mlp"], m_in, layer, hook)
        x = hook(f"blocks.{layer}.hook_resid_post", x)
    if cfg.layer_norm:
        x = _layer_norm(params["ln_final"], x, "ln_final", hook)
    state_tokens = x[:, 1::3]  # positions 1, 4, 7, ...: the state token of each timestep
    return hook("hook_logits", state_tokens @ params["W_U"] + params["b_U"])


@functools.partial(jax.jit, static_argnames=("cfg",))
def forward(params: dict, cfg: ModelConfig, obs, rtg, timesteps, actions=None) -> jax.Array:
    """Action logits (batch, K, n_actions) read at each state token. No hooks are traced."""
    return _forward(params, cfg, obs, rtg, timesteps, actions, HookPoint())


@functools.partial(jax.jit, static_argnames=("cfg",))
def run_with_cache(params: dict, cfg: ModelConfig, obs, rtg, timesteps, actions=None, interventions=None):
    """(logits, cache): the cache is ``{TransformerLens hook name: array}`` for every hook."""
    hook = HookPoint(interventions, cache=True)
    logits = _forward(params, cfg, obs, rtg, timesteps, actions, hook)
    return logits, hook.cache


@functools.partial(jax.jit, static_argnames=("cfg",))
def run_with_hooks(params: dict, cfg: ModelConfig, obs, rtg, timesteps, actions=None, interventions=None):
    """Logits with ``interventions`` ({hook name: Replace/Apply}) applied inside jit."""
    return _forward(params, cfg, obs, rtg, timesteps, actions, HookPoint(interventions))
