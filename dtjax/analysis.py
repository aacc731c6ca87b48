"""What the report and the explorer show about a batch of states, as plain data, for any model shape.

``dtjax.circuits`` has the primitives (DLA, RTG scans, QK/OV, ablations, patching); this module
composes them into the *panels* a front end draws, so the static HTML report (a batch of
hand-made scenarios) and the interactive explorer (the one state on screen) compute exactly the
same numbers. Every function takes ``(params, cfg, ...)`` and ``circuits.Inputs`` and returns a
dict of arrays; labels (static) come from separate functions. The direction over actions is an
array ``v`` (n_actions,) (``circuits.action_vector("forward-right")``), so a new direction is new
data, not a new compile. Panels are read at the *last* state token (the action being chosen).

- ``state_panels``: one forward pass with cache: logits, probabilities, attention patterns of
  every layer and head, DLA onto ``v`` per component (sums to the logit difference), the state
  encoder's activation projection.
- ``rtg_scan_panel``: the current RTG swept (one vmap): logits, DLA, attention to the RTG token.
- ``weight_panels``: weights only: the state encoder's weight projection, QK (state query -> RTG
  key) and OV (state -> logits) maps per layer and head.
- ``ablation_panel``: probabilities with each head / MLP ablated (zero or mean), one vmap.
- ``patching_panel``: activation patching clean -> corrupted as a (row, position) matrix.
- ``ablation_set_panel``: the model with a *set* of components ablated together (the explorer's
  toggles; which ones, and zero vs mean, are data: one compile); ``closed_loop_panel``: its
  effect on closed-loop episodes.

Shape rules: with K timesteps of context there are 3K-1 tokens ``R_t-k, s_t-k, a_t-k, ..., R_t,
s_t`` (``token_labels``); attn-only models have no MLP component; QK/OV maps of layer l > 0 are
their direct path from the embeddings (composition with earlier layers is not included).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from dtjax import circuits as C
from dtjax import hooks as hooks_lib
from dtjax.circuits.core import Inputs
from dtjax.config import ModelConfig


def n_tokens(inputs: Inputs) -> int:
    """Tokens of one forward pass: R, s per timestep plus the action tokens fed."""
    return 2 * inputs.n_timesteps + (0 if inputs.actions is None else inputs.actions.shape[1])


def token_labels(n_timesteps: int, n_tok: int | None = None) -> list[str]:
    """``["R_t-1", "s_t-1", "a_t-1", "R_t", "s_t"]`` for 2 timesteps (3K-1 tokens by default)."""
    out = []
    for k in range(n_timesteps):
        lag = n_timesteps - 1 - k
        t = "t" if lag == 0 else f"t-{lag}"
        out += [f"R_{t}", f"s_{t}", f"a_{t}"]
    return out[: 3 * n_timesteps - 1 if n_tok is None else n_tok]


def dla_labels(cfg: ModelConfig, inputs: Inputs) -> list[str]:
    """Labels of ``state_panels(...)["dla"]``'s component axis (the last state token)."""
    return C.component_labels(cfg, C.state_pos(inputs.n_timesteps), logits=True)


def ablation_labels(cfg: ModelConfig) -> list[str]:
    """Labels of ``ablation_panel``'s world axis: "none", then each head and MLP."""
    return ["none"] + [C.component_name(c) for c in C.components(cfg)]


@functools.partial(jax.jit, static_argnames=("cfg",))
def state_panels(params: dict, cfg: ModelConfig, inputs: Inputs, v: jax.Array) -> dict:
    """One forward pass with cache, read at the last state token.

    Returns ``logits``, ``probs`` (batch, n_actions); ``pattern`` (layer, batch, head, q, k);
    ``attn_to_rtg`` (layer, batch, head): the last state token's attention to its own RTG token;
    ``dla`` (batch, component) onto ``v`` (labels: ``dla_labels``), summing to ``logit_diff``
    (batch,) = logits @ v; ``state_encoder`` (batch, C, 7, 7): W_state's direct write onto ``v``
    weighted by the last observation (sums to the state embedding's entry of ``dla``, no LN).
    """
    pos = C.state_pos(inputs.n_timesteps)
    logits, cache = C.run_with_cache(params, cfg, inputs)
    last = logits[:, -1]
    pattern = jnp.stack([cache[f"blocks.{l}.attn.hook_pattern"] for l in range(cfg.n_layers)])
    _, dla = C.direct_logit_attribution(params, cfg, cache, v, pos)
    return {"logits": last, "probs": jax.nn.softmax(last, -1), "pattern": pattern,
            "attn_to_rtg": pattern[:, :, :, pos, pos - 1], "dla": dla, "logit_diff": last @ v,
            "state_encoder": C.state_encoder_maps(params, cfg, v, inputs.obs[:, -1])}


@functools.partial(jax.jit, static_argnames=("cfg",))
def rtg_scan_panel(params: dict, cfg: ModelConfig, inputs: Inputs, rtgs: jax.Array, v: jax.Array) -> dict:
    """The current RTG of each state swept over ``rtgs`` (n,), everything else fixed.

    Returns ``rtg`` (n,); ``logits``, ``probs`` (batch, n, n_actions); ``dla`` (batch, n,
    component) onto ``v`` (labels: ``dla_labels``); ``attn_to_rtg`` (batch, n, layer, head).
    """
    pos = C.state_pos(inputs.n_timesteps)

    def one(i):
        scan = C.rtg_scan(params, cfg, jax.tree.map(lambda x: x[i][None], inputs), rtgs, v, pos)
        return scan["logits"], scan["probs"], scan["dla"], scan["pattern"][:, :, :, pos, pos - 1]

    logits, probs, dla, attn = jax.vmap(one)(jnp.arange(inputs.batch))
    return {"rtg": jnp.asarray(rtgs, jnp.float32), "logits": logits, "probs": probs, "dla": dla, "attn_to_rtg": attn}


@functools.partial(jax.jit, static_argnames=("cfg",))
def weight_panels(params: dict, cfg: ModelConfig, v: jax.Array) -> dict:
    """Weights-only maps over the 7x7 view, [c, x, y] (draw with ``imshow(m.T)``).

    Returns ``state_encoder`` (C, 7, 7): W_state @ W_U @ v; ``qk`` (layer, head, C, 7, 7):
    W_state W_QK w_Rᵀ, how a unit of each observation feature in the state query raises its score
    to the RTG key per unit RTG (unscaled, as the original app); ``ov`` (layer, head, C, 7, 7,
    n_actions): W_state W_OV W_U, what attending to a state feature writes to each logit;
    ``ov_dir`` (layer, head, C, 7, 7): ``ov`` @ v; ``ov_rtg`` (layer, head, n_actions): w_R W_OV W_U.
    """
    qk = jnp.stack([C.qk_state_rtg(params, cfg, l) for l in range(cfg.n_layers)])
    ov = jnp.stack([C.ov_state(params, cfg, l) for l in range(cfg.n_layers)])
    return {"state_encoder": C.state_encoder_maps(params, cfg, v), "qk": qk, "ov": ov, "ov_dir": ov @ v,
            "ov_rtg": jnp.stack([C.ov_rtg(params, l) for l in range(cfg.n_layers)])}


def ablation_panel(params: dict, cfg: ModelConfig, inputs: Inputs, kind: str = "zero", means: dict | None = None) -> dict:
    """Action probabilities at the last state token with each component ablated, one vmap.

    Returns ``probs``, ``logits`` (world, batch, n_actions); world 0 is the clean model, then each
    head and MLP (``ablation_labels``). ``kind``: "zero", "mean" (``means`` from
    ``circuits.ablation_means`` over windows as long as ``inputs``) or "dhead_mean".
    """
    _, worlds = C.ablate_logits(params, cfg, inputs, kind, means)
    logits = worlds[:, :, -1]
    return {"logits": logits, "probs": jax.nn.softmax(logits, -1)}


# One compile for every hook, position and head (``one_compile``; the per-hook sweeps of
# circuits.activation_patching compile one by one otherwise: ~26 compiles for a 1-layer model).
_activation_patching = jax.jit(C.activation_patching, static_argnames=("cfg", "names"))


def patching_panel(params: dict, cfg: ModelConfig, clean: Inputs, corrupted: Inputs, v: jax.Array,
                   names: list[str] | None = None, one_compile: bool = False) -> dict:
    """Activation patching clean -> corrupted (``circuits.activation_patching``) as one matrix.

    Returns ``matrix`` (row, position) of normalised effects (NaN where a hook has fewer
    positions), ``rows`` (hook name, with ``[H h]`` per head), ``columns`` (token labels, or
    timestep labels for the per-timestep hooks), ``clean``, ``corrupted`` (the metric: logit @ v
    at the last state token, mean over the batch) and ``effects`` (the per-hook arrays).
    ``one_compile``: compile every hook's sweep as one program (the explorer's: about 5x faster
    to compile than one program per hook; float32 rounding may differ from the per-hook programs,
    e.g. ~1e-4 where clean and corrupted metrics are close).
    """
    if one_compile:
        res = _activation_patching(params, cfg, clean, corrupted, v, None if names is None else tuple(names))
    else:
        res = C.activation_patching(params, cfg, clean, corrupted, v, names)
    # a jitted dict comes back in sorted key order: put the hooks back in forward order
    order = [hooks_lib.act_name(n) for n in names] if names else C.patchable_hooks(cfg, res["effects"])
    effects = {k: np.asarray(res["effects"][k]) for k in order}
    width = max(val.shape[0] for val in effects.values())
    rows, mat = [], []
    for name, val in effects.items():
        cols = [val] if val.ndim == 1 else [val[:, h] for h in range(val.shape[1])]
        for h, col in enumerate(cols):
            rows.append(name + ("" if val.ndim == 1 else f" [H{h}]"))
            mat.append(np.pad(col.astype(np.float64), (0, width - col.shape[0]), constant_values=np.nan))
    return {"matrix": np.array(mat), "rows": rows, "columns": token_labels(clean.n_timesteps, width),
            "clean": float(res["clean"]), "corrupted": float(res["corrupted"]), "effects": effects}


def direction(spec: Any, cfg: ModelConfig) -> jax.Array:
    """The (n_actions,) array of a direction spec (``"forward-right"``, ``"forward"``, ``(2, 1)``)."""
    return C.action_vector(spec, cfg.n_actions)


# ---------------------------------------------------------------------------------------------
# ABLATION SETS (the explorer's toggles): which components are ablated, and zero vs mean, are data
# ---------------------------------------------------------------------------------------------


def ablation_set_masks(cfg: ModelConfig, names=()) -> dict:
    """Masks ``{"z": (layer, head), "mlp": (layer,)}`` (bool numpy) of the components ``names``
    ("L0H1", "L0_mlp"; ``ablation_labels``) ablated together; an unknown name raises ValueError."""
    comps = {C.component_name(c): c for c in C.components(cfg)}
    z, m = np.zeros((cfg.n_layers, cfg.n_heads), bool), np.zeros((cfg.n_layers,), bool)
    for n in names:
        if n not in comps:
            raise ValueError(f"unknown component {n!r}; components: {', '.join(comps)}")
        c = comps[n]
        if c[0] == "head":
            z[c[1], c[2]] = True
        else:
            m[c[1]] = True
    return {"z": z, "mlp": m}


def ablation_values(means: dict, use_mean) -> dict:
    """Replacement values of a ``"mean"`` ablation that is a zero ablation where ``use_mean`` is
    False: ``means`` (``circuits.ablation_means``) times ``use_mean`` (a traced bool), so zero and
    mean ablation share one intervention structure (one compile)."""
    return jax.tree.map(lambda x: x * jnp.asarray(use_mean, x.dtype), means)


@functools.partial(jax.jit, static_argnames=("cfg",))
def ablation_set_panel(params: dict, cfg: ModelConfig, inputs: Inputs, v: jax.Array, masks: dict, means: dict,
                       use_mean) -> dict:
    """The model with the components in ``masks`` (``ablation_set_masks``) ablated together, read at
    the last state token: ``logits``, ``probs`` (batch, n_actions), ``dla`` (batch, component) onto
    ``v`` (labels ``dla_labels``; ablated heads contribute 0 under zero ablation) and
    ``logit_diff`` (batch,). Zero ablation where ``use_mean`` is False, else the reference
    ``means``; all-False masks give the clean model."""
    ivs = C.ablation_interventions(cfg, masks, "mean", ablation_values(means, use_mean))
    logits, cache = C.run_with_cache(params, cfg, inputs, interventions=ivs)
    _, dla = C.direct_logit_attribution(params, cfg, cache, v, C.state_pos(inputs.n_timesteps))
    last = logits[:, -1]
    return {"logits": last, "probs": jax.nn.softmax(last, -1), "dla": dla, "logit_diff": last @ v}


def closed_loop_panel(params: dict, cfg: ModelConfig, env, env_params, key: jax.Array, rtg: float, n_episodes: int,
                      masks: dict, means: dict, use_mean: bool, greedy: bool = True, temperature: float = 1.0) -> dict:
    """``n_episodes`` closed-loop episodes at target ``rtg`` without and with the ablation set
    (``dtjax.evaluate.evaluate``; both worlds run the same episodes and share one compile).

    Returns ``labels`` (["clean", "ablated"]) and (2,) arrays ``mean_return``, ``goal_rate``,
    ``hit_rate``, ``timeout_rate``, ``mean_length``.
    """
    from dtjax.evaluate import evaluate

    values = ablation_values(means, use_mean)
    rows = []
    for m in (jax.tree.map(np.zeros_like, masks), masks):
        ivs = C.ablation_interventions(cfg, jax.tree.map(jnp.asarray, m), "mean", values)
        res = evaluate(params, cfg, env, env_params, key, [rtg], n_episodes, greedy=greedy, temperature=temperature,
                       interventions=ivs)
        rows.append([res.returns.mean(), res.goal.mean(), res.hit.mean(), res.timeout.mean(), res.lengths.mean()])
    out = np.asarray(rows, np.float64).T
    return {"labels": ["clean", "ablated"], "mean_return": out[0], "goal_rate": out[1], "hit_rate": out[2],
            "timeout_rate": out[3], "mean_length": out[4]}
