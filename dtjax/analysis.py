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
- ``reference_inputs``: the one mean-ablation reference of both front ends (K-timestep
  rollout windows, 3K tokens); ``circuits.ablation_means`` of it feed the ablation panels.
- ``ablation_panel``: probabilities with each head / MLP ablated (zero or mean), one vmap;
  ``ablation_returns``: the same ablations in closed loop.
- ``patching_panel``: activation patching clean -> corrupted as a (row, position) matrix.
- ``ablation_set_panel``: the model with a *set* of components ablated together (the explorer's
  toggles; which ones, and zero vs mean, are data: one compile); ``closed_loop_panel``: its
  effect on closed-loop episodes.
- ``embedding_panels``: weights only: the RTG and time embeddings' direct paths onto the
  logits, their QK scores against the RTG key per layer, cosines with the unembedding.
- ``svd_panels``: weights only: singular values of W_QK and W_OV per layer and head, and the top
  OV directions read in input and output vocabulary.
- ``rtg_scan_stats``: summary numbers of an RTG scan (DLA slopes over [-1, 1], correlations).
- ``attribution_panel``: attribution patching (and AtP-IG) against activation patching over
  every hook, position and head as flat node arrays, with Pearson r and the worst nodes.

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
from dtjax import scenarios as S
from dtjax.circuits.core import Inputs
from dtjax.config import ModelConfig
from dtjax.evaluate import evaluate_worlds


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


def context_labels(n_timesteps: int, n_tok: int | None = None) -> list[str]:
    """The tokens numbered as the original app labels MemoryDT's 26: ``["R1", "s1", "a1", ...,
    "R9", "s9"]`` for 9 timesteps (3K-1 tokens by default); a new episode's first frame is s_K."""
    out = [f"{x}{k + 1}" for k in range(n_timesteps) for x in ("R", "s", "a")]
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


def reference_inputs(key: jax.Array, n: int, cfg: ModelConfig, env_cfg, rtg: float = 0.9) -> Inputs:
    """The mean-ablation reference of the report and the explorer: ``n`` windows of K =
    ``cfg.n_timesteps`` steps from random-policy rollouts of ``env_cfg`` (an ``EnvConfig``), as
    closed-loop evaluation builds them (``scenarios.sample_inputs``: 3K tokens, the current
    step's action slot padded). ``circuits.ablation_means`` of them cover the closed loop's 3K
    positions and, trimmed, a scenario's 3K - 1. A model of 3K - 1 positions (the original
    MemoryDT's 26) is never fed the current action slot: its reference is trimmed to 3K - 1."""
    ref = S.sample_inputs(key, n, rtg=rtg, env=env_cfg, n_timesteps=cfg.n_timesteps,
                          pad_action=cfg.n_actions, pad_rtg=cfg.pad_rtg)
    return S.current_window(ref) if cfg.pos_rows < 3 * cfg.n_timesteps else ref


def ablation_panel(params: dict, cfg: ModelConfig, inputs: Inputs, kind: str = "zero", means: dict | None = None) -> dict:
    """Action probabilities at the last state token with each component ablated, one vmap.

    Returns ``probs``, ``logits`` (world, batch, n_actions); world 0 is the clean model, then each
    head and MLP (``ablation_labels``). ``kind``: "zero", "mean" (``means`` from
    ``circuits.ablation_means`` over windows as long as ``inputs``) or "dhead_mean".
    """
    kind, means = _zero_as_mean(kind, means)
    _, worlds = C.ablate_logits(params, cfg, inputs, kind, means)
    logits = worlds[:, :, -1]
    return {"logits": logits, "probs": jax.nn.softmax(logits, -1)}


# One compile for every hook, position and head (``one_compile``; the per-hook sweeps of
# circuits.activation_patching compile one by one otherwise: ~26 compiles for a 1-layer model).
_activation_patching = jax.jit(C.activation_patching, static_argnames=("cfg", "names"))


def _zero_as_mean(kind: str, means: dict | None) -> tuple[str, dict | None]:
    """Zero ablation with reference means at hand, as a mean ablation by zero means: the same
    values (``where(mask, 0, x)``) through the mean ablation's intervention structure, so the zero
    and mean worlds compile once between them instead of twice."""
    if kind == "zero" and means is not None:
        return "mean", jax.tree.map(jnp.zeros_like, means)
    return kind, means


def ablation_returns(params: dict, cfg: ModelConfig, env, env_params, key: jax.Array, target_rtgs, n_episodes: int,
                     kind: str = "zero", means: dict | None = None) -> dict:
    """Closed-loop returns with each head / MLP ablated (``circuits.ablate_returns``: labels,
    target_rtg, and (world, R) mean_return, goal_rate, hit_rate, timeout_rate as numpy arrays);
    every world runs the same episodes. ``means`` must cover the closed loop's 3K tokens
    (``scenarios.sample_inputs(n_timesteps=K)`` windows do); zero and mean share one compile."""
    kind, means = _zero_as_mean(kind, means)
    res = C.ablate_returns(params, cfg, env, env_params, key, target_rtgs, n_episodes, kind, means)
    return {k: (v if k == "labels" else np.asarray(v)) for k, v in res.items()}


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
    (``dtjax.evaluate.evaluate_worlds``: both worlds run the same episodes in one vmapped rollout).

    Returns ``labels`` (["clean", "ablated"]) and (2,) arrays ``mean_return``, ``mean_length``
    and ``{outcome}_rate`` for each of the task's outcomes but "running" (Dynamic Obstacles:
    ``goal_rate``, ``hit_rate``, ``timeout_rate``; Memory: ``success_rate``, ``wrong_rate``, ...).
    """
    values = ablation_values(means, use_mean)
    both = jax.tree.map(lambda m: jnp.stack([jnp.zeros_like(m), jnp.asarray(m)]), masks)  # world 0 clean, 1 ablated
    ivs = jax.vmap(lambda m: C.ablation_interventions(cfg, m, "mean", values))(both)
    res = evaluate_worlds(params, cfg, env, env_params, key, [rtg], n_episodes, ivs, greedy=greedy,
                          temperature=temperature)
    mean = lambda x: np.asarray(x, np.float64).reshape(2, -1).mean(-1)  # noqa: E731
    outcome = np.asarray(res.outcome)
    rates = {f"{o}_rate": mean(outcome == i) for i, o in enumerate(env.task.outcomes) if i > 0}
    return {"labels": ["clean", "ablated"], "mean_return": mean(res.returns), **rates, "mean_length": mean(res.lengths)}


@functools.partial(jax.jit, static_argnames=("cfg",))
def embedding_panels(params: dict, cfg: ModelConfig, v: jax.Array, rtgs: jax.Array) -> dict:
    """The RTG and time embeddings read through the unembedding and the QK circuits (weights only).

    Returns ``rtg`` (n,); ``rtg_proj`` (n, n_actions) = (RTG w_R) @ W_U per action and
    ``rtg_proj_dir`` (n,) along ``v`` (the RTG token's direct path: lines through 0);
    ``time_proj`` (max_timestep + 1,) = W_time[t] @ W_U @ v (a linear embedding: t w_t);
    ``qk_time`` (layer, head, rows): each W_time row (the state token's time embedding) as query
    against w_R as key, per unit RTG (rows = max_timestep + 1, or 1 per unit t if linear);
    ``qk_pos`` (layer, head): the last state token's positional embedding as query against w_R;
    cosines with each W_U column: ``cos_rtg`` (n_actions,), ``cos_pos`` (pos_rows, n_actions),
    ``cos_state_channel`` (C, n_actions) for each channel's mean W_state row, ``cos_time``.
    Layers > 0 read the embeddings directly (no composition with earlier layers).
    """
    rtgs = jnp.asarray(rtgs, jnp.float32)
    pos = C.state_pos(cfg.n_timesteps)
    eye = jnp.eye(cfg.n_actions, dtype=jnp.float32)
    key = params["W_rtg"]
    qk_time = jnp.stack([C.qk_embeddings_rtg(params, cfg, l)["time"] for l in range(cfg.n_layers)])
    qk_pos = jnp.stack([C.qk_circuit(params, params["W_pos"][pos:pos + 1], key, l)[:, 0, 0] for l in range(cfg.n_layers)])
    cos = C.embedding_cosines(params, cfg)
    return {"rtg": rtgs, "rtg_proj": jnp.stack([C.rtg_embedding_projection(params, rtgs, e) for e in eye], -1),
            "rtg_proj_dir": C.rtg_embedding_projection(params, rtgs, v),
            "time_proj": C.time_embedding_projection(params, cfg, v), "qk_time": qk_time, "qk_pos": qk_pos,
            "cos_rtg": cos["rtg"], "cos_pos": cos["pos"], "cos_state_channel": cos["state_channel"], "cos_time": cos["time"]}


@functools.partial(jax.jit, static_argnames=("cfg", "k"))
def svd_panels(params: dict, cfg: ModelConfig, k: int = 2) -> dict:
    """``circuits.circuit_svd`` of every layer, stacked: the arrays of its dict with a leading
    layer axis (``qk_S``, ``ov_S`` (layer, head, d_head); ``ov_input_maps``, ``qk_query_maps``
    (layer, head, k, C, 7, 7); ``ov_output_logits`` (layer, head, k, n_actions); ``qk_key_rtg``
    (layer, head, k)). ``k`` is capped at d_head. Layers > 0: direct path from the embeddings.
    """
    k = min(k, cfg.d_head)
    per_layer = [C.circuit_svd(params, cfg, l, k) for l in range(cfg.n_layers)]
    return jax.tree.map(lambda *xs: jnp.stack(xs), *per_layer)


def rtg_scan_stats(rtg: np.ndarray, dla: np.ndarray, labels: list[str], points=(-1.0, 0.0, 1.0)) -> dict:
    """Summary numbers of one state's RTG scan (``rtg_scan_panel`` for one batch row).

    Args: ``rtg`` (n,), ``dla`` (n, component) with ``labels``. Returns ``slope``
    {label: d DLA / d RTG}, a least-squares line over the scanned RTGs in [-1, 1] (the trained
    range); ``corr_labels`` and ``corr`` (m, m): correlations over the scan between the
    components that vary (constant ones, the positional embedding and the biases, are left out);
    ``at`` (len(points),) the scan indices nearest ``points``.
    """
    rtg, dla = np.asarray(rtg, np.float64), np.asarray(dla, np.float64)
    inside = np.abs(rtg) <= 1 + 1e-6
    if inside.sum() >= 2:
        slope = np.polyfit(rtg[inside], dla[inside], 1)[0]
    else:
        slope = np.full(dla.shape[1], np.nan)
    cand = [i for i, lab in enumerate(labels) if lab not in ("b_U", "embed_pos", "ln_final_b") and "b_O" not in lab]
    keep = [i for i in cand if dla[:, i].std() > 1e-6]
    corr = np.corrcoef(dla[:, keep].T).reshape(len(keep), len(keep)) if len(keep) > 1 else np.ones((len(keep), len(keep)))
    return {"slope": dict(zip(labels, slope.tolist())), "corr_labels": [labels[i] for i in keep], "corr": corr,
            "at": [int(np.argmin(np.abs(rtg - r))) for r in points]}


# ---------------------------------------------------------------------------------------------
# ATTRIBUTION VS ACTIVATION PATCHING (every hook, position and head as one node)
# ---------------------------------------------------------------------------------------------


def hook_kind(name: str) -> str:
    """How a hook reaches the metric, for colouring patching nodes: "attention" (queries, keys,
    scores, patterns: through a softmax), "residual" (the residual stream and the embeddings'
    sum) or "component" (a component's output or inputs): ``dtjax.hooks.HOOKS``' ``kind``."""
    return hooks_lib.hook_info(name).kind


def attribution_panel(params: dict, cfg: ModelConfig, clean: Inputs, corrupted: Inputs, v: jax.Array,
                      ig_steps: int = 16, n_worst: int = 8, names: list[str] | None = None) -> dict:
    """Attribution patching (AtP) and AtP with integrated gradients against activation patching,
    clean -> corrupted, over every hook, position and head (``circuits.attribution_patching``,
    ``circuits.activation_patching``; normalised effects, 1 = the clean behaviour restored).

    Returns ``nodes`` (labels "hook[pos]" / "hook[pos, H h]", forward order), ``kinds``
    (``hook_kind`` per node) and (node,) arrays ``actp``, ``atp``, ``ig`` (NaN where the pair's
    metrics coincide; ``ig`` is None when ``ig_steps`` is 0); ``pearson_atp`` / ``pearson_ig``
    over the finite nodes; ``worst``: the ``n_worst`` nodes with the largest |ActP - AtP| as
    dicts (node, actp, atp, ig); ``hooks``: per hook (name, max |ActP|, max |ActP - AtP|,
    max |ActP - IG|); ``clean``, ``corrupted`` (metrics); ``ig_steps``. ``names``: only these
    hooks (TL shorthand allowed; default every hook but the logits).
    """
    names = None if names is None else tuple(hooks_lib.act_name(n) for n in names)
    act = _activation_patching(params, cfg, clean, corrupted, v, names)
    est = {"atp": C.attribution_patching(params, cfg, clean, corrupted, v, names)}
    if ig_steps:
        est["ig"] = C.attribution_patching(params, cfg, clean, corrupted, v, names, ig_steps=int(ig_steps))
    order = list(names) if names else C.patchable_hooks(cfg, act["effects"])
    tok = token_labels(clean.n_timesteps, n_tokens(clean))
    nodes, flat = [], {k: [] for k in ("actp", *est)}
    hooks = []
    for name in order:
        a = np.asarray(act["effects"][name], np.float64)
        K = clean.n_timesteps
        per_t = hooks_lib.hook_info(name).per_timestep  # indexed by timestep, the earliest first
        cols = [f"t-{K - 1 - i}" if K - 1 - i else "t" for i in range(a.shape[0])] if per_t else tok
        for idx in np.ndindex(a.shape):
            pos = cols[idx[0]] if idx[0] < len(cols) else str(idx[0])
            nodes.append(f"{name}[{pos}" + (f", H{idx[1]}]" if len(idx) > 1 else "]"))
        flat["actp"].append(a.ravel())
        row = [name, float(np.nanmax(np.abs(a))) if np.isfinite(a).any() else float("nan")]
        for k, res in est.items():
            b = np.asarray(res["effects"][name], np.float64)
            flat[k].append(b.ravel())
            row.append(float(np.nanmax(np.abs(a - b))) if np.isfinite(a - b).any() else float("nan"))
        hooks.append(row)
    arr = {k: np.concatenate(x) if x else np.zeros(0) for k, x in flat.items()}
    kinds = [hook_kind(n.split("[")[0]) for n in nodes]

    def pearson(x, y):
        ok = np.isfinite(x) & np.isfinite(y)
        return float(np.corrcoef(x[ok], y[ok])[0, 1]) if ok.sum() > 1 and x[ok].std() > 0 and y[ok].std() > 0 else float("nan")

    err = np.nan_to_num(np.abs(arr["actp"] - arr["atp"]), nan=-1.0)
    worst = [{"node": nodes[i], "actp": float(arr["actp"][i]), "atp": float(arr["atp"][i]),
              "ig": float(arr["ig"][i]) if "ig" in arr else None} for i in np.argsort(-err, kind="stable")[:n_worst]]
    return {"nodes": nodes, "kinds": kinds, "actp": arr["actp"], "atp": arr["atp"], "ig": arr.get("ig"),
            "pearson_atp": pearson(arr["actp"], arr["atp"]),
            "pearson_ig": pearson(arr["actp"], arr["ig"]) if "ig" in arr else float("nan"),
            "worst": worst, "hooks": hooks, "clean": float(act["clean"]), "corrupted": float(act["corrupted"]),
            "ig_steps": int(ig_steps)}


# ---------------------------------------------------------------------------------------------
# THE RTG GATE AGAINST TIME (issue 20: a switch at RTG ~ 0, or a graded code that waits)
# ---------------------------------------------------------------------------------------------


def with_timestep(inputs: Inputs, t, max_timestep: int, pad_action: int = 3) -> Inputs:
    """``inputs`` with each row's current (last) timestep set to ``t`` (scalar), the earlier real
    timesteps shifted with it (clipped at 0 and ``max_timestep``); padding timesteps (``with_rtg``'s
    convention: pad action, RTG 0, timestep 0, zero observation) keep timestep 0."""
    ts = jnp.asarray(inputs.timesteps, jnp.int32)
    new = jnp.clip(ts - ts[:, -1:] + jnp.asarray(t, jnp.int32), 0, max_timestep)
    k = inputs.n_timesteps
    if inputs.actions is not None and k > 1:
        obs = jnp.asarray(inputs.obs)[:, : k - 1]
        pad = ((jnp.asarray(inputs.actions)[:, : k - 1] == pad_action) & (jnp.asarray(inputs.rtg)[:, : k - 1] == 0)
               & (ts[:, : k - 1] == 0) & ~jnp.any(obs != 0, axis=tuple(range(2, obs.ndim))))
        new = jnp.where(jnp.concatenate([pad, jnp.zeros_like(pad[:, :1])], 1), ts, new)
    return inputs.replace(timesteps=new)


@functools.partial(jax.jit, static_argnames=("cfg",))
def rtg_time_panel(params: dict, cfg: ModelConfig, inputs: Inputs, rtgs: jax.Array, timesteps: jax.Array, v: jax.Array) -> dict:
    """Each state's current RTG and timestep swept together over ``timesteps`` (T,) x ``rtgs`` (R,),
    everything else fixed (one vmap over the grid): where the RTG gate sits as time runs out (the
    goal reward falls with time, so a model that meets middling targets by waiting must compare the
    RTG with the time left).

    Returns ``rtg`` (R,), ``timesteps`` (T,); ``probs`` (batch, T, R, n_actions); ``dla`` (batch, T,
    R, component) onto ``v`` at the last state token (labels: ``dla_labels``).
    """
    pos = C.state_pos(inputs.n_timesteps)
    rtgs, ts = jnp.asarray(rtgs, jnp.float32), jnp.asarray(timesteps, jnp.int32)

    def one(t, r):
        x = with_timestep(inputs, t, cfg.max_timestep, cfg.n_actions).with_rtg(r, cfg.n_actions, cfg.pad_rtg)
        logits, cache = C.run_with_cache(params, cfg, x)
        _, dla = C.direct_logit_attribution(params, cfg, cache, v, pos)
        return jax.nn.softmax(logits[:, -1], -1), dla

    probs, dla = jax.vmap(lambda t: jax.vmap(lambda r: one(t, r))(rtgs))(ts)  # (T, R, batch, ...)
    return {"rtg": rtgs, "timesteps": ts, "probs": jnp.moveaxis(probs, 2, 0), "dla": jnp.moveaxis(dla, 2, 0)}


def _gate_kind(gate: np.ndarray, timesteps: np.ndarray, switch_spread: float) -> tuple[str, float, float]:
    """(kind, trend, slope per 100 steps) of a gate (T,) with NaN where there is none. The trend is
    the median gate over the last third of the timesteps minus that over the first third (robust to
    single timesteps where two near-tied actions swap); "switch" if it is at most ``switch_spread``."""
    has = np.isfinite(gate)
    if not has.any():
        return "none", float("nan"), float("nan")
    third = max(1, len(gate) // 3)
    first, last = gate[:third][has[:third]], gate[-third:][has[-third:]]
    trend = float(np.median(last) - np.median(first)) if len(first) and len(last) else float(np.ptp(gate[has]))
    slope = float(np.polyfit(timesteps[has], gate[has], 1)[0] * 100) if has.sum() >= 2 and np.ptp(timesteps[has]) > 0 else 0.0
    return ("switch" if abs(trend) <= switch_spread else "graded"), trend, slope


def rtg_gate_stats(rtg: np.ndarray, timesteps: np.ndarray, probs: np.ndarray, switch_spread: float = 0.2) -> dict:
    """Where one state's greedy action changes with the RTG, at each timestep (``rtg_time_panel`` for one row).

    Args: ``rtg`` (R,) ascending, ``timesteps`` (T,), ``probs`` (T, R, n_actions). At each timestep:
    the *gate* is the lowest scanned RTG from which the greedy action is the one at the highest RTG
    all the way up (where the top behaviour, e.g. going for the goal, starts); the *low gate* the
    lowest RTG whose greedy action differs from the one at the lowest RTG (where the bottom
    behaviour, e.g. the crash, stops); NaN where the action is the same at every RTG. Returns
    ``gate_rtg``, ``gate_low_rtg``, ``action_low`` / ``action_high`` (all (T,)), and for each gate
    its ``kind`` / ``kind_low``: "none" (no gate at any timestep), "switch" (its trend, the median
    over the last third of the timesteps minus that over the first third, is at most
    ``switch_spread``: a fixed RTG threshold, as the baseline's ball veto) or "graded" (it moves with
    time: the RTG is compared with the return still reachable), with that trend
    (``gate_trend``, ``gate_low_trend``) and a least-squares slope per 100 steps.
    """
    rtg, timesteps, probs = np.asarray(rtg, np.float64), np.asarray(timesteps, np.float64), np.asarray(probs)
    greedy = probs.argmax(-1)  # (T, R)
    idx = np.arange(len(rtg))[None, :]
    last_bad = np.where(greedy != greedy[:, -1:], idx, -1).max(1)  # one below the top behaviour's start
    gate = np.where(last_bad >= 0, rtg[np.minimum(last_bad + 1, len(rtg) - 1)], np.nan)
    first_off = np.where(greedy != greedy[:, :1], idx, len(rtg)).min(1)
    gate_low = np.where(first_off < len(rtg), rtg[np.minimum(first_off, len(rtg) - 1)], np.nan)
    kind, trend, slope = _gate_kind(gate, timesteps, switch_spread)
    kind_low, trend_low, slope_low = _gate_kind(gate_low, timesteps, switch_spread)
    return {"gate_rtg": gate, "gate_low_rtg": gate_low, "action_low": greedy[:, 0], "action_high": greedy[:, -1],
            "kind": kind, "gate_trend": trend, "gate_slope_per_100_steps": slope,
            "kind_low": kind_low, "gate_low_trend": trend_low, "gate_low_slope_per_100_steps": slope_low}
