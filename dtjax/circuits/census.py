"""How a Decision Transformer avoids a ball in front of it: the census's pure classification.

``docs/findings.md`` found two ways a 1-layer DT avoids a ball in front of it: the original
overnight model vetoes "forward" with an attention head (H1 attends to the state and its OV
writes -forward; RTG gates it through H1's QK), while the default dtjax model puts all attention
on the RTG token and vetoes in the MLP. ``mechanism`` classifies one model and ``census_counts``
tallies many; ``dtjax.census`` (the front end of ``analyse.py --census RUN``) reads every seed of
a multi-seed run (``train.py --num_seeds N``), adds each seed's calibration and writes the tables
and the figure.

Probes. Hand-made states of the model's own env (``envs.EnvState``, observed with the env's
``observe``): the agent at every interior cell facing each direction whose front cell is open
floor; "ball" states have one ball in that front cell, "clear" states none (the other balls are
parked on the wall cell (0, 0), which reads as wall). Timestep ``t`` (default 0); with a context
of K > 1 timesteps the probe is the last one and the earlier ones are left padding, as at an
episode's first step. The metric is the mean forward - right logit difference at the last state
token. Three contrasts, each a (clean, corrupted) pair of input batches:

- ``veto``: ball vs clear at RTG +1 (the avoidance: a large negative effect);
- ``gate``: RTG +1 vs -1 in the ball states (how the target return switches the veto);
- ``drive``: RTG +1 vs -1 in the clear states (the RTG's push towards or away from forward).

Shares of a contrast's effect ``d = m(clean) - m(corrupted)``, for each head, each MLP, and the
direct path (the embeddings' direct route to the logits at the state token):

- patching: run the corrupted batch with the component's output (``hook_z`` of the head or
  ``hook_mlp_out``, every position) taken from the clean batch: ``(m_patched - m_corr) / d``
  (sufficiency: 1 = that component alone restores the effect; a head's includes what the MLP
  then makes of it);
- ablation: replace the component's output by its mean over both batches (per position) in
  both runs: ``1 - d_ablated / d`` (necessity: 1 = without it the effect is gone);
- DLA: the difference of its direct contribution to the logits, over ``d`` (``decompose_logits``;
  exact without LayerNorm);
- an MLP's *own* share: the embeddings' difference added to the MLP's input with every head held
  at its corrupted value, minus the same difference added after the MLP: the route
  embeddings -> MLP -> logits that no head takes part in.

In a 1-layer model the MLP is last, so its patching, ablation and DLA shares all equal its
output's change, which includes whatever a head fed it: they cannot tell "the MLP vetoes" from
"a head vetoes and the MLP amplifies". Routes are told apart by where they start: ``carry`` is a
head's patching share, an MLP's own share and the direct path's DLA share (for the direct path,
patching and ablation are path interventions equal to its DLA). A contrast's *carrier* is the
component with the largest ``carry``. The state token's attention is *saturated* on the RTG
token when every head puts >= 0.95 of its attention there, averaged over all probes. The
original's circuit ("head 1 avoids"; any head index, heads are interchangeable) is a model whose
veto and gate carriers are the same attention head. On the original checkpoints: the overnight
model has it (veto: L0H1 0.39, MLP own 0.14; gate: L0H1 0.88); the one-hot overnight model is
mixed (veto: MLP own 0.34, L0H1 0.31, L0H0 0.25; gate L0H1); the default dtjax model vetoes in
the MLP (0.98) with attention saturated on the RTG token.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import envs
from dtjax import hooks as hooks_lib
from dtjax.circuits.act_patching import component_name, components
from dtjax.circuits.attribution import direct_logit_attribution
from dtjax.circuits.graph import last_logit_metric
from dtjax.circuits.core import Inputs, action_vector, run_with_cache, run_with_hooks
from dtjax.config import EnvConfig, ModelConfig
from envs.dynamic_obstacles import PARKED
from envs.minigrid import DIR_TO_VEC

SATURATED = 0.95  # attention to the RTG token above which a head "only reads the RTG"
CONTRASTS = ("veto", "gate", "drive")


def probe_states(env_cfg: EnvConfig):
    """(ball, clear) batched ``envs.EnvState``: the agent at every interior cell and direction
    whose front cell is open interior floor (not the goal), with one ball in front, or none.
    Defined for a task with balls (Dynamic Obstacles); any other task is a one-line error."""
    env, _ = env_cfg.make()
    if "ball" not in env.task.objects:
        raise ValueError(f"the census's ball-ahead veto classification is not defined for this task "
                         f"({env.task.family}: no balls)")
    size, n_obst = env.size, env.n_obstacles
    goal = (size - 2, size - 2)
    ball, clear = [], []
    for x in range(1, size - 1):
        for y in range(1, size - 1):
            for d in range(4):
                fx, fy = x + DIR_TO_VEC[d][0], y + DIR_TO_VEC[d][1]
                if not (1 <= fx <= size - 2 and 1 <= fy <= size - 2) or (fx, fy) == goal or (x, y) == goal:
                    continue
                for balls, out in (([(fx, fy)], ball), ([], clear)):
                    obst = balls + [PARKED] * (n_obst - len(balls))  # parked on a wall cell: never seen
                    out.append(envs.EnvState(agent_pos=jnp.asarray((x, y), jnp.int32), agent_dir=jnp.int32(d),
                                             obstacles=jnp.asarray(obst, jnp.int32).reshape(n_obst, 2), time=jnp.int32(0)))
    stack = lambda xs: jax.tree.map(lambda *a: jnp.stack(a), *xs)  # noqa: E731
    return stack(ball), stack(clear)


def probe_inputs(cfg: ModelConfig, env_cfg: EnvConfig, states, rtg: float, timestep: int = 0) -> Inputs:
    """``Inputs`` (batch, K) for a model with ``cfg.n_timesteps`` = K: each state observed by the
    env as the last timestep (target ``rtg``, timestep ``timestep``), earlier timesteps padded."""
    env, env_params = env_cfg.make()
    obs = jax.vmap(lambda s: env.observe(s, env_params))(states)
    b, K = obs.shape[0], cfg.n_timesteps
    pad = jnp.zeros((b, K - 1) + obs.shape[1:], obs.dtype)
    rtgs = jnp.zeros((b, K), jnp.float32).at[:, -1].set(rtg)
    ts = jnp.zeros((b, K), jnp.int32).at[:, -1].set(timestep)
    actions = None if K == 1 else jnp.full((b, K), cfg.n_actions, jnp.int32)
    return Inputs(obs=jnp.concatenate([pad, obs[:, None]], 1), rtg=rtgs, timesteps=ts, actions=actions)


def _add(x, arg):
    return x + arg


def _site(c: tuple) -> tuple[str, int | None]:
    """The hook holding a component's output, and its head index (None for an MLP)."""
    return (f"blocks.{c[1]}.attn.hook_z", c[2]) if c[0] == "head" else (f"blocks.{c[1]}.hook_mlp_out", None)


def contrast_shares(params: dict, cfg: ModelConfig, clean: Inputs, corrupted: Inputs, direction: Any = "forward-right") -> dict:
    """Shares of the effect ``m(clean) - m(corrupted)`` carried by each component (see module doc).

    Returns ``{"clean", "corrupted", "effect": floats, "labels": [L0H0, ..., L0_mlp, ..., direct],
    "patch", "ablate", "dla": (n_components + 1,) arrays}``.
    """
    v = action_vector(direction, cfg.n_actions)
    comps = components(cfg)
    lc, cache_c = run_with_cache(params, cfg, clean)
    lk, cache_k = run_with_cache(params, cfg, corrupted)
    m_c, m_k = last_logit_metric(lc, v), last_logit_metric(lk, v)
    d = m_c - m_k
    patch, ablate = [], []
    for c in comps:
        name, head = _site(c)
        h = None if head is None else jnp.int32(head)
        iv = {name: hooks_lib.Replace(mask=jnp.bool_(True), value=cache_c[name], head=h)}
        patch.append((last_logit_metric(run_with_hooks(params, cfg, corrupted, iv), v) - m_k) / d)
        mean = jnp.concatenate([cache_c[name], cache_k[name]]).mean(0)  # (pos, ...) per position
        iv = {name: hooks_lib.Replace(mask=jnp.bool_(True), value=mean, head=h)}
        d_abl = last_logit_metric(run_with_hooks(params, cfg, clean, iv), v) - last_logit_metric(run_with_hooks(params, cfg, corrupted, iv), v)
        ablate.append(1.0 - d_abl / d)
    # the MLPs' own route: the embeddings' difference added to the MLP input (heads held at
    # corrupted), minus the same difference added after the MLP (the route that skips it)
    d_embed = (cache_c["hook_embed"] + cache_c["hook_pos_embed"]) - (cache_k["hook_embed"] + cache_k["hook_pos_embed"])
    own = {}
    for l in range(cfg.n_layers):
        if cfg.attn_only:
            break
        before = {f"blocks.{l}.hook_resid_mid": hooks_lib.Apply(_add, d_embed)}
        after = {f"blocks.{l}.hook_resid_post": hooks_lib.Apply(_add, d_embed)}
        own[f"L{l}_mlp"] = float((last_logit_metric(run_with_hooks(params, cfg, corrupted, before), v)
                                  - last_logit_metric(run_with_hooks(params, cfg, corrupted, after), v)) / d)
    labels, dla_c = direct_logit_attribution(params, cfg, cache_c, v)
    _, dla_k = direct_logit_attribution(params, cfg, cache_k, v)
    diff = dict(zip(labels, np.asarray((dla_c - dla_k).mean(0) / d)))
    direct = float(sum(diff[lab] for lab in labels if lab.startswith("embed_")))
    dla = [float(diff[component_name(c)]) for c in comps] + [direct]
    names = [component_name(c) for c in comps]
    patch = [float(x) for x in patch]
    # the route each share starts on: a head (its patch share, downstream effects included), an
    # MLP on its own (embeddings -> MLP, heads held), or the direct path
    carry = [own[n] if n in own else patch[i] for i, n in enumerate(names)] + [direct]
    return {"clean": float(m_c), "corrupted": float(m_k), "effect": float(d), "labels": names + ["direct"],
            "patch": np.asarray(patch + [direct]), "ablate": np.asarray([float(x) for x in ablate] + [direct]),
            "dla": np.asarray(dla), "carry": np.asarray(carry)}


def attention_to_rtg(params: dict, cfg: ModelConfig, inputs: Inputs) -> np.ndarray:
    """(n_layers, n_heads): mean attention of the last state token to its own RTG token."""
    K = cfg.n_timesteps
    q, k = 3 * (K - 1) + 1, 3 * (K - 1)
    _, cache = run_with_cache(params, cfg, inputs, names=[("pattern", l) for l in range(cfg.n_layers)])
    return np.stack([np.asarray(cache[f"blocks.{l}.attn.hook_pattern"][:, :, q, k].mean(0)) for l in range(cfg.n_layers)])


def mechanism(params: dict, cfg: ModelConfig, env_cfg: EnvConfig, *, rtg_high: float = 1.0, rtg_low: float = -1.0,
              timestep: int = 0, direction: Any = None) -> dict:
    """Classify one model's avoidance mechanism (JSON-able dict; see the module docstring).

    Returns ``contrasts`` ({veto, gate, drive}: effect and per-component patch / ablate / dla
    shares), ``carriers`` ({veto, gate, drive}: label of the largest ablation share),
    ``attn_to_rtg`` (layer x head), ``saturated``, ``head_circuit`` (veto and gate carried by the
    same head), and ``n_probes``. ``direction``: the logit direction (default: the task's, forward-right).
    """
    params = jax.tree.map(jnp.asarray, params)
    if direction is None:
        direction = "-".join(env_cfg.make()[0].task.direction)
    ball_s, clear_s = probe_states(env_cfg)
    mk = lambda s, r: probe_inputs(cfg, env_cfg, s, r, timestep)  # noqa: E731
    ball_hi, ball_lo, clear_hi, clear_lo = mk(ball_s, rtg_high), mk(ball_s, rtg_low), mk(clear_s, rtg_high), mk(clear_s, rtg_low)
    pairs = {"veto": (ball_hi, clear_hi), "gate": (ball_hi, ball_lo), "drive": (clear_hi, clear_lo)}
    out, carriers = {}, {}
    for name, (a, b) in pairs.items():
        s = contrast_shares(params, cfg, a, b, direction)
        out[name] = {"effect": s["effect"], "clean": s["clean"], "corrupted": s["corrupted"],
                     **{k: dict(zip(s["labels"], np.round(s[k], 4).tolist())) for k in ("carry", "patch", "ablate", "dla")}}
        carriers[name] = s["labels"][int(np.argmax(s["carry"]))]
    attn = attention_to_rtg(params, cfg, Inputs.concat([ball_hi, ball_lo, clear_hi, clear_lo]))
    veto = carriers["veto"]
    return {"contrasts": out, "carriers": carriers, "attn_to_rtg": np.round(attn, 4).tolist(),
            "saturated": bool(attn.min() >= SATURATED), "head_circuit": bool(veto.startswith("L") and "H" in veto
                                                                             and carriers["gate"] == veto),
            "n_probes": int(ball_hi.batch), "rtgs": [rtg_high, rtg_low], "timestep": timestep,
            "direction": direction if isinstance(direction, str) else "custom"}


def census_counts(rows: list[dict]) -> dict:
    """How many models have each veto / gate carrier, saturated attention, and the head circuit."""
    def tally(key):
        out: dict[str, int] = {}
        for r in rows:
            out[r["carriers"][key]] = out.get(r["carriers"][key], 0) + 1
        return dict(sorted(out.items()))

    return {"models": len(rows), "veto": tally("veto"), "gate": tally("gate"),
            "saturated": sum(r["saturated"] for r in rows), "head_circuit": sum(r["head_circuit"] for r in rows)}


# ---------------------------------------------------------------------------------------------
# THE SAME CLASSIFICATION AS ARRAYS: jittable, vmappable over a leading axis of params (seeds,
# checkpoints), for the training dynamics (``dtjax.dynamics``)
# ---------------------------------------------------------------------------------------------


def share_labels(cfg: ModelConfig) -> list[str]:
    """The labels of ``carry_shares``' entries: every head, every MLP, then ``direct``."""
    return [component_name(c) for c in components(cfg)] + ["direct"]


def carry_shares(params: dict, cfg: ModelConfig, clean: Inputs, corrupted: Inputs, v: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(effect, carry)``: ``contrast_shares``' effect ``m(clean) - m(corrupted)`` and its ``carry``
    shares ((n_components + 1,), labels ``share_labels``) as arrays of one traceable computation
    (a head's patching share, an MLP's own share, the direct path's DLA share; see the module doc).
    ``v``: the (n_actions,) logit direction."""
    lc, cache_c = run_with_cache(params, cfg, clean)
    lk, cache_k = run_with_cache(params, cfg, corrupted)
    m_k = last_logit_metric(lk, v)
    d = last_logit_metric(lc, v) - m_k
    d_embed = (cache_c["hook_embed"] + cache_c["hook_pos_embed"]) - (cache_k["hook_embed"] + cache_k["hook_pos_embed"])
    carry = []
    for c in components(cfg):
        if c[0] == "head":
            name, head = _site(c)
            iv = {name: hooks_lib.Replace(mask=jnp.bool_(True), value=cache_c[name], head=jnp.int32(head))}
            carry.append((last_logit_metric(run_with_hooks(params, cfg, corrupted, iv), v) - m_k) / d)
        else:
            before = {f"blocks.{c[1]}.hook_resid_mid": hooks_lib.Apply(_add, d_embed)}
            after = {f"blocks.{c[1]}.hook_resid_post": hooks_lib.Apply(_add, d_embed)}
            carry.append((last_logit_metric(run_with_hooks(params, cfg, corrupted, before), v)
                          - last_logit_metric(run_with_hooks(params, cfg, corrupted, after), v)) / d)
    labels, dla_c = direct_logit_attribution(params, cfg, cache_c, v)
    _, dla_k = direct_logit_attribution(params, cfg, cache_k, v)
    embed = jnp.asarray([lab.startswith("embed_") for lab in labels])
    carry.append(jnp.sum(jnp.where(embed, (dla_c - dla_k).mean(0), 0.0)) / d)
    return d, jnp.stack(carry)


def rtg_attention(params: dict, cfg: ModelConfig, inputs: Inputs) -> jax.Array:
    """``attention_to_rtg`` as a traceable array: (n_layers, n_heads) mean attention of the last
    state token to its own RTG token."""
    K = cfg.n_timesteps
    q, k = 3 * (K - 1) + 1, 3 * (K - 1)
    _, cache = run_with_cache(params, cfg, inputs, names=[("pattern", l) for l in range(cfg.n_layers)])
    return jnp.stack([cache[f"blocks.{l}.attn.hook_pattern"][:, :, q, k].mean(0) for l in range(cfg.n_layers)])


def census_probes(cfg: ModelConfig, env_cfg: EnvConfig, *, rtg_high: float = 1.0, rtg_low: float = -1.0,
                  timestep: int = 0) -> dict[str, Inputs]:
    """``mechanism``'s four probe batches: ``ball_hi``, ``ball_lo``, ``clear_hi``, ``clear_lo``."""
    ball_s, clear_s = probe_states(env_cfg)
    return {f"{n}_{h}": probe_inputs(cfg, env_cfg, s, r, timestep) for n, s in (("ball", ball_s), ("clear", clear_s))
            for h, r in (("hi", rtg_high), ("lo", rtg_low))}


def census_arrays(params: dict, cfg: ModelConfig, probes: dict[str, Inputs], v: jax.Array) -> dict[str, jax.Array]:
    """``mechanism``'s numbers for one model as arrays (traceable; vmap it over stacked params):
    ``{contrast}_effect`` () and ``{contrast}_carry`` (n_components + 1,) for the three contrasts,
    and ``attn_to_rtg`` (n_layers, n_heads). ``probes``: ``census_probes``; ``v``: the direction.
    ``census_class`` turns them into ``mechanism``'s carriers."""
    pairs = {"veto": ("ball_hi", "clear_hi"), "gate": ("ball_hi", "ball_lo"), "drive": ("clear_hi", "clear_lo")}
    out = {}
    for name, (a, b) in pairs.items():
        out[f"{name}_effect"], out[f"{name}_carry"] = carry_shares(params, cfg, probes[a], probes[b], v)
    out["attn_to_rtg"] = rtg_attention(params, cfg, Inputs.concat([probes[k] for k in ("ball_hi", "ball_lo", "clear_hi",
                                                                                       "clear_lo")]))
    return out


def census_class(labels: list[str], veto_carry, gate_carry, attn_to_rtg) -> dict:
    """``mechanism``'s classification from ``census_arrays`` of one model: ``carriers`` (veto, gate:
    the label of the largest carry share), ``head_circuit`` (both the same head) and ``saturated``."""
    veto, gate = labels[int(np.argmax(veto_carry))], labels[int(np.argmax(gate_carry))]
    return {"carriers": {"veto": veto, "gate": gate}, "head_circuit": bool("H" in veto and gate == veto),
            "saturated": bool(np.min(attn_to_rtg) >= SATURATED)}
