"""TransformerLens hook names, the activation cache, and interventions as data.

Every activation of ``dtjax.model`` passes through ``HookPoint.__call__(name, x)``: if the call
asked for a cache, ``x`` is recorded under its TransformerLens name; if an intervention is
registered for that name, ``x`` is replaced first. Interventions are a plain pytree
``{name: Intervention}`` passed into the jitted forward, so:

- ``Replace(mask, value)`` sets ``x = where(mask, value, x)`` (mask and value broadcast to ``x``);
  its arrays are traced, so a new ablation value or mask never retraces;
- ``Apply(fn)`` sets ``x = fn(x)``; ``fn`` is static (a new function retraces once).

Printing the interventions dict shows exactly what was changed (penzai's "interventions as
data"), unlike TransformerLens's stateful hook context.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import struct

# Hook names, with the TransformerLens shape convention (batch, pos, ...).
EMBED_HOOKS = ("hook_state_embed", "hook_rtg_embed", "hook_action_embed", "hook_time_embed", "hook_embed", "hook_pos_embed")
BLOCK_HOOKS = (
    "hook_resid_pre", "ln1.hook_scale", "attn.hook_q", "attn.hook_k", "attn.hook_v", "attn.hook_attn_scores",
    "attn.hook_pattern", "attn.hook_z", "attn.hook_result", "hook_attn_out", "hook_resid_mid", "ln2.hook_scale",
    "mlp.hook_pre", "mlp.hook_post", "hook_mlp_out", "hook_resid_post",
)
FINAL_HOOKS = ("ln_final.hook_scale", "hook_logits")

# TransformerLens get_act_name shorthands -> the full suffix inside a block.
_SHORT = {
    "resid_pre": "hook_resid_pre", "resid_mid": "hook_resid_mid", "resid_post": "hook_resid_post",
    "attn_out": "hook_attn_out", "mlp_out": "hook_mlp_out", "q": "attn.hook_q", "k": "attn.hook_k",
    "v": "attn.hook_v", "z": "attn.hook_z", "result": "attn.hook_result", "attn_scores": "attn.hook_attn_scores",
    "scores": "attn.hook_attn_scores", "pattern": "attn.hook_pattern", "attn": "attn.hook_pattern",
    "pre": "mlp.hook_pre", "post": "mlp.hook_post", "scale1": "ln1.hook_scale", "scale2": "ln2.hook_scale",
}


def act_name(name: str, layer: int | None = None) -> str:
    """Full hook name from a TransformerLens shorthand: ``act_name("pattern", 0)`` ->
    ``"blocks.0.attn.hook_pattern"``; full names pass through unchanged."""
    if layer is None:
        if name in EMBED_HOOKS or name in FINAL_HOOKS or name.startswith("blocks."):
            return name
        for short in ("embed", "pos_embed", "state_embed", "rtg_embed", "action_embed", "time_embed", "logits"):
            if name == short:
                return f"hook_{short}"
        raise KeyError(f"unknown hook name {name!r}; give a layer for block hooks")
    suffix = _SHORT.get(name, name)
    if suffix not in BLOCK_HOOKS:
        raise KeyError(f"unknown block hook {name!r}")
    return f"blocks.{layer}.{suffix}"


def all_hook_names(n_layers: int, layer_norm: bool = False, attn_only: bool = False) -> list[str]:
    """Every name a full cache of a model with this shape holds."""
    names = list(EMBED_HOOKS)
    for layer in range(n_layers):
        for h in BLOCK_HOOKS:
            if h.startswith("ln") and not layer_norm:
                continue
            if attn_only and (h.startswith("mlp.") or h in ("hook_mlp_out", "hook_resid_mid", "ln2.hook_scale")):
                continue
            names.append(f"blocks.{layer}.{h}")
    if layer_norm:
        names.append("ln_final.hook_scale")
    names.append("hook_logits")
    return names


@struct.dataclass
class Replace:
    """``x <- where(mask, value, x)``; ``mask`` and ``value`` broadcast to the activation."""

    mask: Any
    value: Any


@struct.dataclass
class Apply:
    """``x <- fn(x)``; ``fn`` is static (hashable), so each new function compiles once."""

    fn: Callable = struct.field(pytree_node=False)


Intervention = Replace | Apply


def apply_intervention(iv: Intervention, x: jax.Array) -> jax.Array:
    if isinstance(iv, Replace):
        return jnp.where(iv.mask, jnp.asarray(iv.value, x.dtype), x)
    if isinstance(iv, Apply):
        return iv.fn(x)
    raise TypeError(f"not an intervention: {type(iv).__name__}")


class HookPoint:
    """Records and/or overwrites activations by name during one forward pass (trace-time object)."""

    def __init__(self, interventions: dict[str, Intervention] | None = None, cache: bool = False):
        self.interventions = interventions or {}
        self.cache: dict[str, jax.Array] | None = {} if cache else None

    def wants(self, name: str) -> bool:
        """Whether ``name`` must be materialised (cached or intervened on)."""
        return self.cache is not None or name in self.interventions

    def __call__(self, name: str, x: jax.Array) -> jax.Array:
        iv = self.interventions.get(name)
        if iv is not None:
            x = apply_intervention(iv, x)
        if self.cache is not None:
            self.cache[name] = x
        return x


# ---------------------------------------------------------------------------------------------
# Ready-made interventions
# ---------------------------------------------------------------------------------------------


def head_mask(n_heads: int, heads, ndim: int = 4, head_axis: int = 2) -> jax.Array:
    """A boolean mask broadcastable over (batch, pos, head, ...) selecting ``heads``."""
    m = jnp.zeros((n_heads,), bool).at[jnp.asarray(heads)].set(True)
    shape = [1] * ndim
    shape[head_axis] = n_heads
    return m.reshape(shape)


def zero_ablation(name: str, mask: Any = True) -> dict[str, Replace]:
    """Set the activation (or the masked part of it) to zero."""
    return {name: Replace(mask=jnp.asarray(mask), value=jnp.float32(0.0))}


def mean_ablation(name: str, mean: jax.Array, mask: Any = True) -> dict[str, Replace]:
    """Replace the activation by ``mean`` (e.g. a dataset mean from a cache, broadcastable)."""
    return {name: Replace(mask=jnp.asarray(mask), value=jnp.asarray(mean))}


def patch_from_cache(cache: dict[str, jax.Array], name: str, mask: Any = True) -> dict[str, Replace]:
    """Activation patching: take ``cache[name]`` (another run's) where ``mask`` is set."""
    return {name: Replace(mask=jnp.asarray(mask), value=cache[name])}
