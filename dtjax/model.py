"""The Decision Transformer, as pure functions over a TransformerLens-named parameter dict.

Mirrors the original project's `DecisionTransformer` (DecisionTransformerInterpretability @
2a111bd, `src/decision_transformer/model.py`) running a TransformerLens `HookedTransformer`
block stack (TL @ 25b9e076, `components.py`: Attention, MLP, LayerNorm):

    tokens    R_t + tau_t, s_t + tau_t, a_t + tau_t   for t = 1..K  (the last a_K may be absent)
    R         = rtg * W_rtg                           (no bias)
    s         = flatten_(c,x,y)(obs) @ W_state        (obs cast to float; no bias)
    a         = W_action[a]                           (row n_actions = padding)
    tau       = W_time[t]  or  t * W_time[0]          (learned table or linear)
    x         = tokens + W_pos[:n]
    block     = x + attn(ln1(x));  x + mlp(ln2(x))    (causal; masked scores set to -1e5)
    logits_t  = ln_final(x)[state token t] @ W_U + b_U

Every activation passes through a `HookPoint` under its TransformerLens name (see
`dtjax.hooks`), so the same call can return a cache or apply interventions inside `jit`. There
is no Flax module: parameters are a plain dict (shapes in docs/architecture.md), which keeps
`jit`, `vmap`, `grad` and weight surgery (QK/OV circuits) trivial; the hooks cost nothing when
no cache or intervention is asked for, because nothing extra is traced.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from dtjax import hooks as hooks_lib
from dtjax.config import ModelConfig
from dtjax.hooks import HookPoint

IGNORE = -1e5  # the original's masked attention score (replaced, not added)


@functools.partial(jax.jit, static_argnames=("cfg",))
def init_params(key: jax.Array, cfg: ModelConfig) -> dict:
    """Random parameters with the shapes of docs/architecture.md.

    ``cfg.init == "normal"``: weights N(0, cfg.init_std) (GPT-2), the residual-writing W_O and
    W_out scaled by 1/sqrt(2 n_layers), biases 0, LayerNorm weights 1.
    ``cfg.init == "transformer_lens"``: the original's init (original-project.md 4.2-4.3):
    block weights N(0, 0.8/sqrt(d_model)), W_pos N(mean 0.8/sqrt(d_model), std 1) (its
    `nn.init.normal_` slip), W_state N(0, 0.02), W_rtg N(0, 1/d_model), W_action
    N(0, 1/((n_actions+1) d_model)), W_time N(0, 1) (learned) or U(-1, 1) (linear), and
    W_U, b_U U(-1/sqrt(d_model), 1/sqrt(d_model)) as torch's nn.Linear.
    """
    d, h, dh, n_act = cfg.d_model, cfg.n_heads, cfg.d_head, cfg.n_actions
    # Random leaves are placeholders, filled from one flat draw at the end: one RNG call per
    # distribution instead of one per array, which keeps compile time small.
    draws: list[tuple[str, tuple, float, float]] = []

    def normal(shape, std, mean=0.0):
        draws.append(("normal", shape, std, mean))
        return _Draw(len(draws) - 1)

    def uniform(shape, bound):
        draws.append(("uniform", shape, bound, 0.0))
        return _Draw(len(draws) - 1)

    time_rows = cfg.max_timestep + 1 if cfg.time_embedding == "learned" else 1
    if cfg.init == "transformer_lens":
        std = resid_std = 0.8 / math.sqrt(d)
        params = {
            "W_state": normal((cfg.obs_dim, d), 0.02), "W_rtg": normal((1, d), 1 / d),
            "W_action": normal((n_act + 1, d), 1 / ((n_act + 1) * d)),
            "W_time": normal((time_rows, d), 1.0) if time_rows > 1 else uniform((1, d), 1.0),
            "W_pos": normal((cfg.pos_rows, d), 1.0, mean=std),
            "W_U": uniform((d, n_act), 1 / math.sqrt(d)), "b_U": uniform((n_act,), 1 / math.sqrt(d)),
        }
    else:
        std, resid_std = cfg.init_std, cfg.init_std / math.sqrt(2.0 * cfg.n_layers)
        params = {
            "W_state": normal((cfg.obs_dim, d), std), "W_rtg": normal((1, d), std),
            "W_action": normal((n_act + 1, d), std), "W_time": normal((time_rows, d), std),
            "W_pos": normal((cfg.pos_rows, d), std), "W_U": normal((d, n_act), std), "b_U": jnp.zeros((n_act,)),
        }
    zeros, ones = jnp.zeros, jnp.ones
    for layer in range(cfg.n_layers):
        block = {"attn": {
            "W_Q": normal((h, d, dh), std), "W_K": normal((h, d, dh), std), "W_V": normal((h, d, dh), std),
            "W_O": normal((h, dh, d), resid_std),
            "b_Q": zeros((h, dh)), "b_K": zeros((h, dh)), "b_V": zeros((h, dh)), "b_O": zeros((d,)),
        }}
        if not cfg.attn_only:
            block["mlp"] = {"W_in": normal((d, cfg.d_mlp), std), "b_in": zeros((cfg.d_mlp,)),
                            "W_out": normal((cfg.d_mlp, d), resid_std), "b_out": zeros((d,))}
        if cfg.layer_norm:
            block["ln1"] = {"w": ones((d,)), "b": zeros((d,))}
            if not cfg.attn_only:
                block["ln2"] = {"w": ones((d,)), "b": zeros((d,))}
        params[f"blocks_{layer}"] = block
    if cfg.layer_norm:
        params["ln_final"] = {"w": ones((d,)), "b": zeros((d,))}
    sizes = [math.prod(shape) for _, shape, _, _ in draws]
    offsets = [sum(sizes[:i]) for i in range(len(sizes))]
    k_normal, k_uniform = jax.random.split(key)
    flat = {"normal": jax.random.normal(k_normal, (sum(sizes),)),
            "uniform": jax.random.uniform(k_uniform, (sum(sizes),), minval=-1.0, maxval=1.0)}

    def fill(leaf):
        if not isinstance(leaf, _Draw):
            return leaf
        kind, shape, scale, mean = draws[leaf.i]
        return mean + scale * flat[kind][offsets[leaf.i]: offsets[leaf.i] + sizes[leaf.i]].reshape(shape)

    return jax.tree.map(fill, params, is_leaf=lambda x: isinstance(x, _Draw))


class _Draw:
    """Placeholder for the i-th random array of init_params."""

    def __init__(self, i: int):
        self.i = i


def _layer_norm(p: dict, x: jax.Array, name: str, hook: HookPoint) -> jax.Array:
    """TransformerLens LayerNorm: center, divide by hook_scale = sqrt(var + eps), then affine."""
    x = x - x.mean(-1, keepdims=True)
    scale = hook(f"{name}.hook_scale", jnp.sqrt((x**2).mean(-1, keepdims=True) + 1e-5))
    return x / scale * p["w"] + p["b"]


def _check_inputs(cfg: ModelConfig, obs, rtg, timesteps, actions) -> None:
    if rtg.ndim != 2:
        raise ValueError(f"rtg must be (batch, K), got shape {rtg.shape}")
    b, k = rtg.shape
    if obs.shape != (b, k) + cfg.obs_shape:
        raise ValueError(f"obs must be (batch, K) + {cfg.obs_shape} = {(b, k) + cfg.obs_shape}, got {obs.shape}")
    if timesteps.shape != (b, k):
        raise ValueError(f"timesteps must be (batch, K) = {(b, k)}, got {timesteps.shape}")
    if actions is None and k != 1:
        raise ValueError(f"actions may be omitted only for a single timestep, got {k}; pass (batch, K-1) actions")
    if actions is not None and actions.shape not in ((b, k), (b, k - 1)):
        raise ValueError(f"actions must be (batch, K) or (batch, K-1) = {(b, k - 1)}, got {actions.shape}")


def embed(params: dict, cfg: ModelConfig, obs, rtg, timesteps, actions, hook: HookPoint) -> jax.Array:
    """Token embeddings (batch, pos, d_model), interleaved R, s, a per timestep, time added.

    Args:
      obs: (batch, K, 7, 7, C) raw codes or one-hot; rtg: (batch, K); timesteps: (batch, K) int
        (learned tables clip t to max_timestep); actions: (batch, K) int -> 3K tokens, or
        (batch, K-1) / None (K = 1 only) -> 3K-1 tokens, without the last action token.
    """
    _check_inputs(cfg, obs, rtg, timesteps, actions)
    b, k = rtg.shape
    flat = jnp.moveaxis(obs.astype(jnp.float32), -1, -3).reshape(b, k, -1)  # (c, x, y) order
    state = hook("hook_state_embed", flat @ params["W_state"])
    rtg_e = hook("hook_rtg_embed", rtg.astype(jnp.float32)[..., None] * params["W_rtg"][0])
    if cfg.time_embedding == "learned":
        time = params["W_time"][jnp.clip(timesteps, 0, params["W_time"].shape[0] - 1)]
    else:
        time = timesteps.astype(jnp.float32)[..., None] * params["W_time"][0]
    time = hook("hook_time_embed", time)
    n_act = 0 if actions is None else actions.shape[1]
    act = jnp.zeros((b, 0, cfg.d_model)) if n_act == 0 else hook("hook_action_embed", params["W_action"][actions])
    act = jnp.concatenate([act, jnp.zeros((b, k - n_act, cfg.d_model), act.dtype)], axis=1)
    tokens = (jnp.stack([rtg_e, state, act], axis=2) + time[:, :, None]).reshape(b, 3 * k, cfg.d_model)
    return hook("hook_embed", tokens[:, : 3 * k - (k - n_act)])  # drop the missing last action token


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
    if hook.wants(f"{name}.hook_result"):  # per-head outputs only when asked: (batch, pos, head, d_model)
        result = hook(f"{name}.hook_result", jnp.einsum("bqhe,hed->bqhd", z, p["W_O"]))
        out = result.sum(2) + p["b_O"]
    else:
        out = jnp.einsum("bqhe,hed->bqd", z, p["W_O"]) + p["b_O"]
    return hook(f"blocks.{layer}.hook_attn_out", out)


def mlp(p: dict, x: jax.Array, layer: int, hook: HookPoint) -> jax.Array:
    """ReLU MLP with TransformerLens hooks; returns hook_mlp_out."""
    pre = hook(f"blocks.{layer}.mlp.hook_pre", x @ p["W_in"] + p["b_in"])
    post = hook(f"blocks.{layer}.mlp.hook_post", jax.nn.relu(pre))
    return hook(f"blocks.{layer}.hook_mlp_out", post @ p["W_out"] + p["b_out"])


def _forward(params, cfg: ModelConfig, obs, rtg, timesteps, actions, hook: HookPoint) -> jax.Array:
    tokens = embed(params, cfg, obs, rtg, timesteps, actions, hook)
    n = tokens.shape[1]
    if n > params["W_pos"].shape[0]:
        raise ValueError(f"{n} tokens exceed the model's {params['W_pos'].shape[0]} positions (W_pos rows)")
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
    logits = hook("hook_logits", state_tokens @ params["W_U"] + params["b_U"])
    hook.check()
    return logits


@functools.partial(jax.jit, static_argnames=("cfg",))
def forward(params: dict, cfg: ModelConfig, obs, rtg, timesteps, actions=None) -> jax.Array:
    """Action logits (batch, K, n_actions) read at each state token. No hooks are traced.

    Args:
      params: the parameter dict (docs/architecture.md); cfg: static ModelConfig.
      obs: (batch, K, 7, 7, C) uint8 or float; rtg: (batch, K) float; timesteps: (batch, K) int;
      actions: (batch, K) int (3K tokens), (batch, K-1) or None (K = 1) for 3K-1 tokens.
    """
    return _forward(params, cfg, obs, rtg, timesteps, actions, HookPoint())


@functools.partial(jax.jit, static_argnames=("cfg", "names"))
def _run_with_cache(params, cfg, obs, rtg, timesteps, actions, interventions, names):
    hook = HookPoint(interventions, cache=True if names is None else names)
    logits = _forward(params, cfg, obs, rtg, timesteps, actions, hook)
    return logits, hook.cache


@functools.partial(jax.jit, static_argnames=("cfg",))
def _run_with_hooks(params, cfg, obs, rtg, timesteps, actions, interventions):
    return _forward(params, cfg, obs, rtg, timesteps, actions, HookPoint(interventions))


def run_with_cache(params: dict, cfg: ModelConfig, obs, rtg, timesteps, actions=None, interventions=None,
                   names=None) -> tuple[jax.Array, dict]:
    """(logits, cache): ``cache`` is ``{TransformerLens hook name: array}``.

    ``names``: None for every hook, or an iterable of (shorthand) names to keep, like TL's
    ``names_filter`` (XLA then skips what nothing needs). ``interventions`` as in
    ``run_with_hooks``; the cache holds the activations after intervention.
    """
    names = None if names is None else tuple(sorted({hooks_lib.act_name(n) for n in names}))
    return _run_with_cache(params, cfg, obs, rtg, timesteps, actions, hooks_lib.normalize(interventions), names)


def run_with_hooks(params: dict, cfg: ModelConfig, obs, rtg, timesteps, actions=None,
                   interventions=None) -> jax.Array:
    """Logits (batch, K, n_actions) with ``interventions`` applied inside jit.

    ``interventions``: ``{hook name or TL shorthand: hooks.Replace | hooks.Apply}``; arrays in
    them are traced, so a new ablation value, mask, head or position never retraces.
    """
    return _run_with_hooks(params, cfg, obs, rtg, timesteps, actions, hooks_lib.normalize(interventions))
