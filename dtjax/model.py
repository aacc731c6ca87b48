"""The Decision Transformer as a Flax linen module that sows every activation under its TransformerLens name.

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
    mlp(h)    = relu(h W_in + b_in) W_out + b_out, or gated (cfg.mlp, TL's gated_mlp, the
                original's MemoryDT): (relu(h W_gate) * (h W_in) + b_in) W_out + b_out
    logits_t  = ln_final(x)[state token t] @ W_U + b_U

``DecisionTransformer(cfg)`` is a ``flax.linen.Module`` whose ``variables["params"]`` is the
TransformerLens-named tree of docs/architecture.md (``W_state``, ``blocks_0/attn/W_Q``, ...):

    model = DecisionTransformer(cfg)
    variables = model.init(key, obs, rtg, timesteps, actions)                 # {"params": ...}
    logits, state = model.apply(variables, obs, rtg, timesteps, actions, mutable=["intermediates"])
    state["intermediates"]["blocks_0"]["attn"]["hook_pattern"]                # (batch, head, q, k)

Every activation passes through ``_Hooked.hook``: apply the intervention registered for its full
name (``dtjax.hooks``: ``Replace`` / ``Apply``, passed to ``__call__`` as data, so their arrays are
traced), then ``self.sow("intermediates", name, x)``. Sowing happens only when the call makes
"intermediates" mutable, and an empty intervention dict adds nothing, so ``apply`` without either
(the training path, ``forward``) traces no hook at all. A sown value is the array itself (each hook
fires once per call), not Flax's default one-element tuple.

``forward``, ``run_with_cache`` (a flat ``{"blocks.0.attn.hook_pattern": array}`` cache, like TL's)
and ``run_with_hooks`` are jitted functional wrappers over ``apply`` for code that holds a params
dict. ``init_params(key, cfg)`` draws dtjax's seeded initial values (one flat draw per
distribution, unchanged since v0.1); ``model.init`` draws each leaf from the same distribution
with Flax's per-parameter keys, so its values differ from ``init_params`` for the same key.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from dtjax import hooks as hooks_lib
from dtjax.config import ModelConfig

IGNORE = -1e5  # the original's masked attention score (replaced, not added)

# ---------------------------------------------------------------------------------------------
# PARAMETERS: one table of shapes and initial distributions, used by the module and init_params
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Init:
    """A Flax initializer ``(key, shape, dtype) -> array``: ``mean + scale * N(0, 1)`` ("normal"),
    ``mean + scale * U(-1, 1)`` ("uniform"), or constant "zeros" / "ones"."""

    kind: str
    scale: float = 1.0
    mean: float = 0.0

    def __call__(self, key, shape, dtype=jnp.float32) -> jax.Array:
        if self.kind in ("zeros", "ones"):
            return (jnp.zeros if self.kind == "zeros" else jnp.ones)(shape, dtype)
        if self.kind == "normal":
            return self.mean + self.scale * jax.random.normal(key, shape, dtype)
        return self.mean + self.scale * jax.random.uniform(key, shape, dtype, minval=-1.0, maxval=1.0)


@functools.lru_cache(maxsize=64)
def param_specs(cfg: ModelConfig) -> dict[tuple[str, ...], tuple[tuple[int, ...], Init]]:
    """``{param path: (shape, Init)}`` in draw order: every parameter of a model of this shape.

    ``cfg.init == "normal"``: weights N(0, cfg.init_std) (GPT-2), the residual-writing W_O and
    W_out scaled by 1/sqrt(2 n_layers), biases 0, LayerNorm weights 1.
    ``cfg.init == "transformer_lens"``: the original's init (original-project.md 4.2-4.3):
    block weights N(0, 0.8/sqrt(d_model)), W_pos N(mean 0.8/sqrt(d_model), std 1) (its
    `nn.init.normal_` slip), W_state N(0, 0.02), W_rtg N(0, 1/d_model), W_action
    N(0, 1/((n_actions+1) d_model)), W_time N(0, 1) (learned) or U(-1, 1) (linear), and
    W_U, b_U U(-1/sqrt(d_model), 1/sqrt(d_model)) as torch's nn.Linear.
    """
    d, h, dh, n_act = cfg.d_model, cfg.n_heads, cfg.d_head, cfg.n_actions
    normal, uniform = (lambda s, m=0.0: Init("normal", s, m)), (lambda s: Init("uniform", s))
    zeros, ones = Init("zeros"), Init("ones")
    time_rows = cfg.max_timestep + 1 if cfg.time_embedding == "learned" else 1
    if cfg.init == "transformer_lens":
        std = resid_std = 0.8 / math.sqrt(d)
        top = {"W_state": normal(0.02), "W_rtg": normal(1 / d), "W_action": normal(1 / ((n_act + 1) * d)),
               "W_time": normal(1.0) if time_rows > 1 else uniform(1.0), "W_pos": normal(1.0, std),
               "W_U": uniform(1 / math.sqrt(d)), "b_U": uniform(1 / math.sqrt(d))}
    else:
        std, resid_std = cfg.init_std, cfg.init_std / math.sqrt(2.0 * cfg.n_layers)
        top = {"W_state": normal(std), "W_rtg": normal(std), "W_action": normal(std), "W_time": normal(std),
               "W_pos": normal(std), "W_U": normal(std), "b_U": zeros}
    shapes = {"W_state": (cfg.obs_dim, d), "W_rtg": (1, d), "W_action": (n_act + 1, d), "W_time": (time_rows, d),
              "W_pos": (cfg.pos_rows, d), "W_U": (d, n_act), "b_U": (n_act,)}
    specs = {(k,): (shapes[k], top[k]) for k in shapes}
    ln = {"w": ((d,), ones), "b": ((d,), zeros)}
    for layer in range(cfg.n_layers):
        b = f"blocks_{layer}"
        for name, shape, init in (("W_Q", (h, d, dh), normal(std)), ("W_K", (h, d, dh), normal(std)),
                                  ("W_V", (h, d, dh), normal(std)), ("W_O", (h, dh, d), normal(resid_std)),
                                  ("b_Q", (h, dh), zeros), ("b_K", (h, dh), zeros), ("b_V", (h, dh), zeros),
                                  ("b_O", (d,), zeros)):
            specs[(b, "attn", name)] = (shape, init)
        if not cfg.attn_only:
            for name, shape, init in (("W_in", (d, cfg.d_mlp), normal(std)), ("b_in", (cfg.d_mlp,), zeros),
                                      ("W_out", (cfg.d_mlp, d), normal(resid_std)), ("b_out", (d,), zeros)):
                specs[(b, "mlp", name)] = (shape, init)
            if cfg.mlp == "gated":  # drawn after the others, so a standard MLP's draws are unchanged
                specs[(b, "mlp", "W_gate")] = ((d, cfg.d_mlp), normal(std))
        for ln_name in ("ln1",) + (() if cfg.attn_only else ("ln2",)):
            if cfg.layer_norm:
                specs.update({(b, ln_name, k): v for k, v in ln.items()})
    if cfg.layer_norm:
        specs.update({("ln_final", k): v for k, v in ln.items()})
    return specs


@functools.partial(jax.jit, static_argnames=("cfg",))
def init_params(key: jax.Array, cfg: ModelConfig) -> dict:
    """dtjax's seeded initial parameters (the distributions of ``param_specs``).

    One flat normal and one flat uniform draw, sliced in ``param_specs`` order: one RNG call per
    distribution instead of one per array, which keeps compile time small, and the values for a
    seed are those of every dtjax release so far (train.py reproduces its earlier checkpoints).
    """
    specs = param_specs(cfg)
    drawn = [(p, s, i) for p, (s, i) in specs.items() if i.kind in ("normal", "uniform")]
    sizes = [math.prod(s) for _, s, _ in drawn]
    offsets = dict(zip([p for p, _, _ in drawn], [sum(sizes[:i]) for i in range(len(sizes))]))
    k_normal, k_uniform = jax.random.split(key)
    flat = {"normal": jax.random.normal(k_normal, (sum(sizes),)),
            "uniform": jax.random.uniform(k_uniform, (sum(sizes),), minval=-1.0, maxval=1.0)}
    params: dict = {}
    for path, (shape, init) in specs.items():
        if path in offsets:
            o = offsets[path]
            value = init.mean + init.scale * flat[init.kind][o: o + math.prod(shape)].reshape(shape)
        else:
            value = init(None, shape)
        node = params
        for k in path[:-1]:
            node = node.setdefault(k, {})
        node[path[-1]] = value
    return params


# ---------------------------------------------------------------------------------------------
# THE MODULE
# ---------------------------------------------------------------------------------------------


def _keep(_, x):
    return x  # sow reduce_fn: store the activation itself


class _Hooked(nn.Module):
    """Shared fields and the one hook helper of every DT module.

    ``prefix``: this module's TransformerLens name ("blocks.0.attn"); ``names``: full hook names
    to sow when "intermediates" is mutable (None = every hook).
    """

    cfg: ModelConfig
    prefix: str = ""
    names: tuple[str, ...] | None = None

    def hook(self, name: str, x: jax.Array, ivs: dict) -> jax.Array:
        """Intervene on ``x`` if ``ivs`` names it, then sow it under ``name``; returns the new ``x``."""
        full = self.full(name)
        if full in ivs:
            x = hooks_lib.apply_intervention(full, ivs[full], x)
        if self.sows(full):
            self.sow("intermediates", name, x, init_fn=tuple, reduce_fn=_keep)
        return x

    def full(self, name: str) -> str:
        return f"{self.prefix}.{name}" if self.prefix else name

    def sows(self, full: str) -> bool:
        return self.is_mutable_collection("intermediates") and (self.names is None or full in self.names)

    def p(self, name: str) -> jax.Array:
        """The parameter ``name`` of this module, declared with its shape and init from ``param_specs``."""
        path = tuple(self.prefix.replace("blocks.", "blocks_").split(".")) if self.prefix else ()
        shape, init = param_specs(self.cfg)[path + (name,)]
        return self.param(name, init, shape)

    def child(self, cls, name: str, **kw):
        """A submodule named ``name`` (its param/sow subtree) with the TL prefix that goes with it."""
        tl = name.replace("blocks_", "blocks.")
        return cls(self.cfg, prefix=f"{self.prefix}.{tl}" if self.prefix else tl, names=self.names, name=name, **kw)


class LayerNorm(_Hooked):
    """TransformerLens LayerNorm: centre, divide by hook_scale = sqrt(var + 1e-5), then affine."""

    @nn.compact
    def __call__(self, x, ivs):
        x = x - x.mean(-1, keepdims=True)
        scale = self.hook("hook_scale", jnp.sqrt((x**2).mean(-1, keepdims=True) + 1e-5), ivs)
        return x / scale * self.p("w") + self.p("b")


class Attention(_Hooked):
    """Causal multi-head attention, heads as an axis: weights (head, d_model, d_head)."""

    @nn.compact
    def __call__(self, x, ivs):
        q = self.hook("hook_q", jnp.einsum("bpd,hde->bphe", x, self.p("W_Q")) + self.p("b_Q"), ivs)
        k = self.hook("hook_k", jnp.einsum("bpd,hde->bphe", x, self.p("W_K")) + self.p("b_K"), ivs)
        v = self.hook("hook_v", jnp.einsum("bpd,hde->bphe", x, self.p("W_V")) + self.p("b_V"), ivs)
        scores = jnp.einsum("bqhe,bkhe->bhqk", q, k) / jnp.sqrt(jnp.float32(q.shape[-1]))
        causal = jnp.tril(jnp.ones((x.shape[1], x.shape[1]), bool))
        scores = self.hook("hook_attn_scores", jnp.where(causal, scores, IGNORE), ivs)
        pattern = self.hook("hook_pattern", jax.nn.softmax(scores, axis=-1), ivs)
        z = self.hook("hook_z", jnp.einsum("bhqk,bkhe->bqhe", pattern, v), ivs)
        W_O = self.p("W_O")
        if self.sows(self.full("hook_result")) or self.full("hook_result") in ivs:
            # per-head outputs (batch, pos, head, d_model) only when asked: they cost a d_model x head tensor
            return self.hook("hook_result", jnp.einsum("bqhe,hed->bqhd", z, W_O), ivs).sum(2) + self.p("b_O")
        return jnp.einsum("bqhe,hed->bqd", z, W_O) + self.p("b_O")


class MLP(_Hooked):
    """ReLU MLP: W_in (d_model, d_mlp), W_out (d_mlp, d_model).

    ``cfg.mlp == "gated"``: TransformerLens's gated MLP (``components/mlps/gated_mlp.py``) with
    W_gate (d_model, d_mlp): hook_pre = x W_gate, hook_pre_linear = x W_in, hook_post =
    relu(hook_pre) * hook_pre_linear + b_in -- b_in is added *after* the product, as TL does.
    """

    @nn.compact
    def __call__(self, x, ivs):
        if self.cfg.mlp == "gated":
            pre = self.hook("hook_pre", x @ self.p("W_gate"), ivs)
            linear = self.hook("hook_pre_linear", x @ self.p("W_in"), ivs)
            post = self.hook("hook_post", jax.nn.relu(pre) * linear + self.p("b_in"), ivs)
        else:
            pre = self.hook("hook_pre", x @ self.p("W_in") + self.p("b_in"), ivs)
            post = self.hook("hook_post", jax.nn.relu(pre), ivs)
        return post @ self.p("W_out") + self.p("b_out")


class Block(_Hooked):
    """x + attn(ln1(x)), then x + mlp(ln2(x)) (no MLP when attn_only)."""

    @nn.compact
    def __call__(self, x, ivs):
        cfg = self.cfg
        x = self.hook("hook_resid_pre", x, ivs)
        a_in = self.child(LayerNorm, "ln1")(x, ivs) if cfg.layer_norm else x
        x = x + self.hook("hook_attn_out", self.child(Attention, "attn")(a_in, ivs), ivs)
        if not cfg.attn_only:
            x = self.hook("hook_resid_mid", x, ivs)
            m_in = self.child(LayerNorm, "ln2")(x, ivs) if cfg.layer_norm else x
            x = x + self.hook("hook_mlp_out", self.child(MLP, "mlp")(m_in, ivs), ivs)
        return self.hook("hook_resid_post", x, ivs)


class DecisionTransformer(_Hooked):
    """The DT over (R, s, a) tokens. ``__call__(obs, rtg, timesteps, actions=None, interventions=None)``.

    Args:
      obs: (batch, K, 7, 7, C) raw codes or one-hot; rtg: (batch, K) float; timesteps: (batch, K)
        int (a learned table clips t to max_timestep); actions: (batch, K) int -> 3K tokens, or
        (batch, K-1) / None (K = 1 only) -> 3K-1 tokens, without the last action token.
      interventions: ``{hook name or TL shorthand: hooks.Replace | hooks.Apply}``, applied inside
        the trace; a name this call never reaches (a typo, a missing layer) is a ``KeyError``.
    Returns:
      logits (batch, K, n_actions), read at each state token (positions 1, 4, 7, ...).
    """

    @nn.compact
    def __call__(self, obs, rtg, timesteps, actions=None, interventions=None):
        cfg = self.cfg
        ivs = hooks_lib.normalize(interventions)
        _check_inputs(cfg, obs, rtg, timesteps, actions)
        b, k = rtg.shape
        n_act = 0 if actions is None else actions.shape[1]
        reached = hooks_lib.hook_names(cfg, with_actions=n_act > 0)
        missing = sorted(set(ivs) - set(reached)) + sorted(set(self.names or ()) - set(reached))
        if missing:
            raise KeyError(f"no activation named {missing[0]} in this forward pass (model or input lacks it)")

        # EMBEDDINGS
        flat = jnp.moveaxis(jnp.asarray(obs).astype(jnp.float32), -1, -3).reshape(b, k, -1)  # (c, x, y) order
        state = self.hook("hook_state_embed", flat @ self.p("W_state"), ivs)
        rtg_e = self.hook("hook_rtg_embed", jnp.asarray(rtg, jnp.float32)[..., None] * self.p("W_rtg")[0], ivs)
        W_time = self.p("W_time")
        if cfg.time_embedding == "learned":
            time = W_time[jnp.clip(timesteps, 0, W_time.shape[0] - 1)]
        else:
            time = jnp.asarray(timesteps).astype(jnp.float32)[..., None] * W_time[0]
        time = self.hook("hook_time_embed", time, ivs)
        W_action = self.p("W_action")
        act = jnp.zeros((b, 0, cfg.d_model)) if n_act == 0 else self.hook("hook_action_embed", W_action[actions], ivs)
        if n_act < k:  # pad the missing last action token (dropped again below)
            act = jnp.concatenate([act, jnp.zeros((b, k - n_act, cfg.d_model), act.dtype)], axis=1)
        tokens = (jnp.stack([rtg_e, state, act], axis=2) + time[:, :, None]).reshape(b, 3 * k, cfg.d_model)
        tokens = self.hook("hook_embed", tokens[:, : 3 * k - (k - n_act)], ivs)  # drop the missing last action
        n = tokens.shape[1]
        W_pos = self.p("W_pos")
        if n > W_pos.shape[0]:
            raise ValueError(f"{n} tokens exceed the model's {W_pos.shape[0]} positions (W_pos rows)")
        x = tokens + self.hook("hook_pos_embed", jnp.broadcast_to(W_pos[:n], tokens.shape), ivs)

        # BLOCKS AND UNEMBED
        for layer in range(cfg.n_layers):
            x = self.child(Block, f"blocks_{layer}")(x, ivs)
        if cfg.layer_norm:
            x = self.child(LayerNorm, "ln_final")(x, ivs)
        return self.hook("hook_logits", x[:, 1::3] @ self.p("W_U") + self.p("b_U"), ivs)


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


# ---------------------------------------------------------------------------------------------
# FUNCTIONAL WRAPPERS over apply, for code that holds a params dict
# ---------------------------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("cfg",))
def forward(params: dict, cfg: ModelConfig, obs, rtg, timesteps, actions=None) -> jax.Array:
    """Action logits (batch, K, n_actions) read at each state token. No hooks are traced.

    Args:
      params: the parameter dict (docs/architecture.md); cfg: static ModelConfig.
      obs: (batch, K, 7, 7, C) uint8 or float; rtg: (batch, K) float; timesteps: (batch, K) int;
      actions: (batch, K) int (3K tokens), (batch, K-1) or None (K = 1) for 3K-1 tokens.
    """
    return DecisionTransformer(cfg).apply({"params": params}, obs, rtg, timesteps, actions)


@functools.partial(jax.jit, static_argnames=("cfg", "names"))
def _run_with_cache(params, cfg, obs, rtg, timesteps, actions, interventions, names):
    logits, state = DecisionTransformer(cfg, names=names).apply(
        {"params": params}, obs, rtg, timesteps, actions, interventions, mutable=["intermediates"])
    return logits, hooks_lib.flatten_intermediates(state.get("intermediates", {}))


@functools.partial(jax.jit, static_argnames=("cfg",))
def _run_with_hooks(params, cfg, obs, rtg, timesteps, actions, interventions):
    return DecisionTransformer(cfg).apply({"params": params}, obs, rtg, timesteps, actions, interventions)


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
