"""TransformerLens hook names, the activation cache, and interventions as data.

Every activation of ``dtjax.model.DecisionTransformer`` passes through one helper
(``_Hooked.hook``): if an intervention is registered for its full TransformerLens name, ``x`` is
replaced first; then it is ``sow``-n into the "intermediates" collection under that name (a
no-op unless the call makes the collection mutable), so training pays nothing for hooks.
The sown tree follows the module tree (``state["intermediates"]["blocks_0"]["attn"]["hook_pattern"]``);
``flatten_intermediates`` turns it into the flat TL cache ``{"blocks.0.attn.hook_pattern": array}``.

Interventions are a plain pytree ``{hook name: Intervention}`` passed into the jitted forward,
so printing them shows exactly what was changed (penzai's "interventions as data"), and:

- ``Replace(mask, value, head=None, pos=None)`` sets ``x = where(sel, value, x)`` where
  ``sel = mask & (head axis in head) & (position axis in pos)``. ``mask`` and ``value`` broadcast
  to ``x``; ``head`` / ``pos`` are integer indices resolved against the hook's axes (see
  ``HOOKS``). All four are traced, so a new value, mask, head or position never retraces
  (only a new *shape* does).
- ``Apply(fn, arg=None)`` sets ``x = fn(x)`` (or ``fn(x, arg)``): ``fn`` is static (a new
  function compiles once), ``arg`` is a traced pytree (a new value does not retrace).

Names accept TransformerLens shorthand through ``act_name`` (``("pattern", 0)`` ->
``"blocks.0.attn.hook_pattern"``), like TL's ``get_act_name``. An intervention on a name that
the forward pass never reaches is an error, so a typo cannot silently do nothing.

Not like TransformerLens's stateful hook context (``HookedRootModule.hooks``): nothing here is
registered on a model, and ``nn.intercept_methods`` is avoided because it is silently ignored
once a function is compiled.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
from flax import struct

class HookInfo(NamedTuple):
    """What one hook holds (a row of ``HOOKS``).

    ``axes``: the activation's axes (TransformerLens vocabulary; ``timestep`` = K, ``pos`` = tokens);
    ``width``: the ``ModelConfig`` field that sizes the last axis (None: scale's 1, scores' key_pos);
    ``per_timestep``: axis 1 counts timesteps, not tokens; ``kind``: how it reaches the logits
    ("attention": queries, keys, scores, patterns, through a softmax; "residual": the residual
    stream and the embeddings' sum; "component": a component's output or inputs); ``head_axis`` /
    ``pos_axis``: the axes ``Replace``'s ``head`` / ``pos`` index (for scores / patterns ``pos`` is
    the query position); ``scope``: "embed", "block" (named ``blocks.L.<suffix>``) or "final".
    """

    axes: tuple[str, ...]
    width: str | None
    per_timestep: bool
    kind: str
    head_axis: int | None
    pos_axis: int
    scope: str


def _row(scope, axes, width, kind="component", head_axis=None, pos_axis=1) -> HookInfo:
    return HookInfo(tuple(axes.split()), width, axes.split()[1] == "timestep", kind, head_axis, pos_axis, scope)


# Every hook, by suffix (a block hook's name without ``blocks.L.``), in forward order. Notes:
# hook_action_embed has K or K-1 timesteps and is absent when no action token is fed; ln*.hook_scale
# only with layer_norm; hook_resid_mid, ln2 and mlp.* are absent when attn_only; attn.hook_result is
# each head's output before summing; hook_logits is read at the state tokens. A gated MLP (TL's
# gated_mlp) has hook_pre = x W_gate (the ReLU's input, as in TL), hook_pre_linear = x W_in (only
# there) and hook_post = relu(hook_pre) * hook_pre_linear + b_in.
HOOKS: dict[str, HookInfo] = {
    "hook_state_embed": _row("embed", "batch timestep d_model", "d_model"),
    "hook_rtg_embed": _row("embed", "batch timestep d_model", "d_model"),
    "hook_action_embed": _row("embed", "batch timestep d_model", "d_model"),
    "hook_time_embed": _row("embed", "batch timestep d_model", "d_model"),
    "hook_embed": _row("embed", "batch pos d_model", "d_model", "residual"),  # interleaved tokens + time
    "hook_pos_embed": _row("embed", "batch pos d_model", "d_model", "residual"),
    "hook_resid_pre": _row("block", "batch pos d_model", "d_model", "residual"),
    "ln1.hook_scale": _row("block", "batch pos 1", None),
    "attn.hook_q": _row("block", "batch pos head d_head", "d_head", "attention", 2, 1),
    "attn.hook_k": _row("block", "batch pos head d_head", "d_head", "attention", 2, 1),
    "attn.hook_v": _row("block", "batch pos head d_head", "d_head", "component", 2, 1),
    "attn.hook_z": _row("block", "batch pos head d_head", "d_head", "component", 2, 1),
    "attn.hook_attn_scores": _row("block", "batch head query_pos key_pos", None, "attention", 1, 2),
    "attn.hook_pattern": _row("block", "batch head query_pos key_pos", None, "attention", 1, 2),
    "attn.hook_result": _row("block", "batch pos head d_model", "d_model", "component", 2, 1),
    "hook_attn_out": _row("block", "batch pos d_model", "d_model"),
    "hook_resid_mid": _row("block", "batch pos d_model", "d_model", "residual"),
    "ln2.hook_scale": _row("block", "batch pos 1", None),
    "mlp.hook_pre": _row("block", "batch pos d_mlp", "d_mlp"),
    "mlp.hook_pre_linear": _row("block", "batch pos d_mlp", "d_mlp"),
    "mlp.hook_post": _row("block", "batch pos d_mlp", "d_mlp"),
    "hook_mlp_out": _row("block", "batch pos d_model", "d_model"),
    "hook_resid_post": _row("block", "batch pos d_model", "d_model", "residual"),
    "ln_final.hook_scale": _row("final", "batch pos 1", None),
    "hook_logits": _row("final", "batch timestep n_actions", "n_actions"),
}

# Views of ``HOOKS`` (docs/architecture.md names them): the suffixes of each scope, in forward
# order, and ``{suffix: (head_axis, pos_axis)}`` of the hooks with a head axis.
EMBED_HOOKS = tuple(k for k, h in HOOKS.items() if h.scope == "embed")
BLOCK_HOOKS = tuple(k for k, h in HOOKS.items() if h.scope == "block")
FINAL_HOOKS = tuple(k for k, h in HOOKS.items() if h.scope == "final")
LAYOUT = {k: (h.head_axis, h.pos_axis) for k, h in HOOKS.items() if h.head_axis is not None}

# TransformerLens get_act_name shorthands -> the full suffix inside a block.
_SHORT = {
    "resid_pre": "hook_resid_pre", "resid_mid": "hook_resid_mid", "resid_post": "hook_resid_post",
    "attn_out": "hook_attn_out", "mlp_out": "hook_mlp_out", "q": "attn.hook_q", "k": "attn.hook_k",
    "v": "attn.hook_v", "z": "attn.hook_z", "result": "attn.hook_result", "attn_scores": "attn.hook_attn_scores",
    "scores": "attn.hook_attn_scores", "pattern": "attn.hook_pattern", "attn": "attn.hook_pattern",
    "pre": "mlp.hook_pre", "pre_linear": "mlp.hook_pre_linear", "post": "mlp.hook_post", "scale1": "ln1.hook_scale", "scale2": "ln2.hook_scale",
}
_GLOBAL_SHORT = {
    "embed": "hook_embed", "pos_embed": "hook_pos_embed", "state_embed": "hook_state_embed",
    "rtg_embed": "hook_rtg_embed", "action_embed": "hook_action_embed", "time_embed": "hook_time_embed",
    "logits": "hook_logits", "scale": "ln_final.hook_scale",
}


def act_name(name: str | tuple, layer: int | None = None) -> str:
    """Full hook name from a TransformerLens shorthand.

    ``act_name("pattern", 0)`` and ``act_name(("pattern", 0))`` give ``"blocks.0.attn.hook_pattern"``;
    ``act_name("embed")`` gives ``"hook_embed"``; full names pass through unchanged. Unknown
    names raise ``KeyError``.
    """
    if isinstance(name, tuple):
        if layer is not None or not 1 <= len(name) <= 2:
            raise KeyError(f"hook name tuples are (name,) or (name, layer), got {name!r}")
        name, layer = name if len(name) == 2 else (name[0], None)
    if not isinstance(name, str):
        raise KeyError(f"hook names are strings, got {name!r}")
    if layer is None:
        if name in EMBED_HOOKS or name in FINAL_HOOKS:
            return name
        if name.startswith("blocks."):
            parts = name.split(".", 2)
            if len(parts) == 3 and parts[1].isdigit() and parts[2] in BLOCK_HOOKS:
                return name
            raise KeyError(f"unknown hook name {name!r}")
        if name in _GLOBAL_SHORT:
            return _GLOBAL_SHORT[name]
        raise KeyError(f"unknown hook name {name!r} (block hooks need a layer, e.g. act_name({name!r}, 0))")
    suffix = _SHORT.get(name, name)
    if suffix not in BLOCK_HOOKS:
        raise KeyError(f"unknown block hook {name!r}")
    return f"blocks.{int(layer)}.{suffix}"


def all_hook_names(n_layers: int, layer_norm: bool = False, attn_only: bool = False, gated: bool = False) -> list[str]:
    """Every name a full cache of a model of this shape holds (with an action token fed);
    ``gated``: a gated MLP (``ModelConfig.mlp == "gated"``), which adds ``mlp.hook_pre_linear``."""
    names = list(EMBED_HOOKS)
    for layer in range(n_layers):
        for h in BLOCK_HOOKS:
            if h.startswith("ln") and not layer_norm:
                continue
            if attn_only and (h.startswith(("mlp.", "ln2.")) or h in ("hook_mlp_out", "hook_resid_mid")):
                continue
            if h == "mlp.hook_pre_linear" and not gated:
                continue
            names.append(f"blocks.{layer}.{h}")
    if layer_norm:
        names.append("ln_final.hook_scale")
    names.append("hook_logits")
    return names


def hook_names(cfg, with_actions: bool = True) -> list[str]:
    """Every hook a forward pass of a model with ModelConfig ``cfg`` reaches (in forward order);
    without an action token fed (``with_actions=False``) there is no ``hook_action_embed``."""
    names = all_hook_names(cfg.n_layers, cfg.layer_norm, cfg.attn_only, cfg.mlp == "gated")
    return names if with_actions else [n for n in names if n != "hook_action_embed"]


def flatten_intermediates(tree: dict) -> dict[str, Any]:
    """The sown "intermediates" tree as a flat TL cache: ``{"blocks.0.attn.hook_pattern": array}``.

    Module names map to TL names (``blocks_0`` -> ``blocks.0``); entries that are not hooks (e.g.
    ``__call__`` outputs of ``capture_intermediates``) are skipped.
    """
    out: dict[str, Any] = {}

    def walk(node, prefix):
        for key, val in node.items():
            name = f"{prefix}{key.replace('blocks_', 'blocks.')}"
            if isinstance(val, Mapping):
                walk(val, name + ".")
            elif key.startswith("hook_"):
                out[name] = val

    walk(tree, "")
    return out


def suffix(name: str) -> str:
    """A full hook name without its ``blocks.L.`` prefix (the key of ``HOOKS``); others unchanged."""
    return name.split(".", 2)[2] if name.startswith("blocks.") else name


def hook_info(name: str | tuple, layer: int | None = None) -> HookInfo:
    """The ``HOOKS`` row of a hook (a full name or a shorthand, as ``act_name``); KeyError if unknown."""
    return HOOKS[suffix(act_name(name, layer))]


@struct.dataclass
class Replace:
    """``x <- where(mask & head-selection & position-selection, value, x)``.

    ``mask`` and ``value`` broadcast to the activation; ``head`` and ``pos`` are ``None`` (all)
    or int indices (scalar or 1-D) on the hook's head / position axis (see ``HOOKS``).
    """

    mask: Any
    value: Any
    head: Any = None
    pos: Any = None


@struct.dataclass
class Apply:
    """``x <- fn(x)``, or ``fn(x, arg)`` when ``arg`` is given.

    ``fn`` is static (hashable), so each new function compiles once; ``arg`` is traced.
    """

    fn: Callable = struct.field(pytree_node=False)
    arg: Any = None


Intervention = Replace | Apply


def _index_mask(size: int, idx: Any, axis: int, ndim: int) -> jax.Array:
    sel = (jnp.arange(size)[:, None] == jnp.atleast_1d(jnp.asarray(idx))[None, :]).any(-1)
    shape = [1] * ndim
    shape[axis] = size
    return sel.reshape(shape)


def selection(name: str, x: jax.Array, mask: Any = True, head: Any = None, pos: Any = None) -> jax.Array:
    """The boolean selection of ``Replace`` on activation ``x`` of hook ``name`` (broadcastable)."""
    sel = jnp.asarray(mask, bool)
    h = HOOKS.get(suffix(name))
    head_axis, pos_axis = (h.head_axis, h.pos_axis) if h else (None, 1)
    if head is not None:
        if head_axis is None:
            raise ValueError(f"{name} has no head axis; use head=None")
        sel = sel & _index_mask(x.shape[head_axis], head, head_axis, x.ndim)
    if pos is not None:
        sel = sel & _index_mask(x.shape[pos_axis], pos, pos_axis, x.ndim)
    return sel


def apply_intervention(name: str, iv: Intervention, x: jax.Array) -> jax.Array:
    """``x`` after intervention ``iv`` on hook ``name``."""
    if isinstance(iv, Replace):
        sel = selection(name, x, iv.mask, iv.head, iv.pos)
        return jnp.where(sel, jnp.asarray(iv.value, x.dtype), x)
    if isinstance(iv, Apply):
        return iv.fn(x) if iv.arg is None else iv.fn(x, iv.arg)
    raise TypeError(f"intervention on {name} is a {type(iv).__name__}, not Replace or Apply")


def normalize(interventions: dict | None) -> dict[str, Intervention]:
    """Interventions keyed by full hook names (keys may be TL shorthand, see ``act_name``)."""
    out: dict[str, Intervention] = {}
    for key, iv in (interventions or {}).items():
        full = act_name(key)
        if full in out:
            raise KeyError(f"two interventions on {full}")
        if not isinstance(iv, (Replace, Apply)):
            raise TypeError(f"intervention on {full} is a {type(iv).__name__}, not Replace or Apply")
        out[full] = iv
    return out


# ---------------------------------------------------------------------------------------------
# Ready-made interventions. Names may be TL shorthand; head / pos select along the hook's axes.
# ---------------------------------------------------------------------------------------------


def head_mask(n_heads: int, heads, ndim: int = 4, head_axis: int = 2) -> jax.Array:
    """A boolean mask broadcastable over (batch, pos, head, ...) selecting ``heads``."""
    m = jnp.zeros((n_heads,), bool).at[jnp.asarray(heads)].set(True)
    shape = [1] * ndim
    shape[head_axis] = n_heads
    return m.reshape(shape)


def zero_ablation(name, mask: Any = True, *, head: Any = None, pos: Any = None) -> dict[str, Replace]:
    """Set the activation (or its selected part) to zero.

    ``zero_ablation("blocks.0.attn.hook_z", head=1)`` removes head 1 of layer 0.
    """
    return {act_name(name): Replace(mask=jnp.asarray(mask), value=jnp.float32(0.0), head=_idx(head), pos=_idx(pos))}


def mean_ablation(name, mean: jax.Array, mask: Any = True, *, head: Any = None, pos: Any = None) -> dict[str, Replace]:
    """Replace the activation (or its selected part) by ``mean``, broadcastable to it.

    Typically ``mean = cache[name].mean(0)``, a dataset mean over the batch of another run.
    """
    return {act_name(name): Replace(mask=jnp.asarray(mask), value=jnp.asarray(mean), head=_idx(head), pos=_idx(pos))}


def patch_from_cache(cache: dict[str, jax.Array], name, mask: Any = True, *, head: Any = None,
                     pos: Any = None) -> dict[str, Replace]:
    """Activation patching: take ``cache[name]`` (another run's) where selected."""
    full = act_name(name)
    return {full: Replace(mask=jnp.asarray(mask), value=cache[full], head=_idx(head), pos=_idx(pos))}


def _idx(i: Any) -> Any:
    return None if i is None else jnp.asarray(i, jnp.int32)
