"""A census of the mechanisms many trained Decision Transformers use (``analyse.py --census RUN``).

``docs/findings.md`` found two ways a 1-layer DT avoids a ball in front of it: the original
overnight model vetoes "forward" with an attention head (H1 attends to the state and its OV
writes -forward; RTG gates it through H1's QK), while the default dtjax model puts all attention
on the RTG token and vetoes in the MLP. ``mechanism`` classifies one model; ``census`` runs it
over every seed of a multi-seed run (``train.py --num_seeds N``) and adds each seed's
calibration.

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

import json
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from dtjax import hooks as hooks_lib
from dtjax.circuits.attribution import direct_logit_attribution
from dtjax.circuits.causal import component_name, components
from dtjax.circuits.core import Inputs, action_vector, run_with_cache, run_with_hooks
from dtjax.config import EnvConfig, ModelConfig
from envs.dynamic_obstacles import PARKED
from dtjax.run import Run

SATURATED = 0.95  # attention to the RTG token above which a head "only reads the RTG"
CONTRASTS = ("veto", "gate", "drive")


def probe_states(env_cfg: EnvConfig):
    """(ball, clear) batched ``envs.EnvState``: the agent at every interior cell and direction
    whose front cell is open interior floor (not the goal), with one ball in front, or none.
    Defined for a task with balls (Dynamic Obstacles); any other task is a one-line error."""
    import envs
    from envs.minigrid import DIR_TO_VEC

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


def _metric(logits, v) -> jax.Array:
    return (logits[:, -1] @ v).mean()


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
    m_c, m_k = _metric(lc, v), _metric(lk, v)
    d = m_c - m_k
    patch, ablate = [], []
    for c in comps:
        name, head = _site(c)
        h = None if head is None else jnp.int32(head)
        iv = {name: hooks_lib.Replace(mask=jnp.bool_(True), value=cache_c[name], head=h)}
        patch.append((_metric(run_with_hooks(params, cfg, corrupted, iv), v) - m_k) / d)
        mean = jnp.concatenate([cache_c[name], cache_k[name]]).mean(0)  # (pos, ...) per position
        iv = {name: hooks_lib.Replace(mask=jnp.bool_(True), value=mean, head=h)}
        d_abl = _metric(run_with_hooks(params, cfg, clean, iv), v) - _metric(run_with_hooks(params, cfg, corrupted, iv), v)
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
        own[f"L{l}_mlp"] = float((_metric(run_with_hooks(params, cfg, corrupted, before), v)
                                  - _metric(run_with_hooks(params, cfg, corrupted, after), v)) / d)
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


def _calibration_of(calib: dict | None) -> dict | None:
    """The census's digest of a run's calibration (``Run.calibration``), or None."""
    if calib is None:
        return None
    rows = calib["rows"]
    x = np.array([r["target_rtg"] for r in rows])
    y = np.array([r["mean_return"] for r in rows])
    return {"calibration_error": float(calib.get("calibration_error", np.mean(np.abs(y - x)))),
            "return_at_low": float(y[np.argmin(x)]), "return_at_high": float(y[np.argmax(x)]),
            "monotonic": bool(calib.get("monotonic", False)), "episodes": int(sum(r["episodes"] for r in rows))}


def checkpoints_of(run: str | Path) -> list[Path]:
    """The model paths of a run: its ``seed_k`` directories (in k order), or the run itself."""
    return Run.open(run).models()


def census(run: str | Path | list, log=lambda msg: None, **kw) -> dict:
    """``mechanism`` and calibration of every model of ``run`` (a multi-seed run directory, one
    run or checkpoint, or a list of them). Returns ``{"models": [row per model], "counts": ...}``.
    """
    paths = [Path(p) for p in run] if isinstance(run, (list, tuple)) else checkpoints_of(run)
    rows = []
    for p in paths:
        log(f"census: {p}")
        r = Run.open(p).require_model()
        cfg = r.model_cfg
        rows.append({"model": str(p), "config": {"n_layers": cfg.n_layers, "obs_mode": cfg.obs_mode,
                                                 "n_timesteps": cfg.n_timesteps},
                     **mechanism(r.params, cfg, r.env_cfg, **kw), "calibration": _calibration_of(r.calibration())})
    return {"models": rows, "counts": census_counts(rows)}


def census_counts(rows: list[dict]) -> dict:
    """How many models have each veto / gate carrier, saturated attention, and the head circuit."""
    def tally(key):
        out: dict[str, int] = {}
        for r in rows:
            out[r["carriers"][key]] = out.get(r["carriers"][key], 0) + 1
        return dict(sorted(out.items()))

    return {"models": len(rows), "veto": tally("veto"), "gate": tally("gate"),
            "saturated": sum(r["saturated"] for r in rows), "head_circuit": sum(r["head_circuit"] for r in rows)}


def _carrier_cell(r: dict, key: str) -> str:
    """``carrier share`` and the runner-up, e.g. ``L0H1 0.39 (L0_mlp 0.14)``."""
    carry = r["contrasts"][key]["carry"]
    order = sorted(carry, key=carry.get, reverse=True)
    return f"{order[0]} {carry[order[0]]:.2f} ({order[1]} {carry[order[1]]:.2f})"


def census_table(result: dict) -> str:
    """A markdown table, one line per model: veto and gate carriers with their shares (runner-up
    in brackets), the veto effect, attention to RTG, calibration error and the sweep's ends."""
    lines = ["| model | veto carrier (runner-up) | veto effect | gate carrier (runner-up) | attn→RTG min | saturated | "
             "head circuit | calib. error | return @−1 / @+1 |", "|---|---|---|---|---|---|---|---|---|"]
    for r in result["models"]:
        cal = r["calibration"]
        cal_s = f"{cal['calibration_error']:.3f} | {cal['return_at_low']:+.2f} / {cal['return_at_high']:+.2f}" if cal else "– | –"
        lines.append(f"| {Path(r['model']).name} | {_carrier_cell(r, 'veto')} | {r['contrasts']['veto']['effect']:+.1f} | "
                     f"{_carrier_cell(r, 'gate')} | {np.min(r['attn_to_rtg']):.2f} | {'yes' if r['saturated'] else 'no'} | "
                     f"{'yes' if r['head_circuit'] else 'no'} | {cal_s} |")
    n = result["counts"]
    lines += ["", f"{n['models']} models; veto carriers {n['veto']}; gate carriers {n['gate']}; attention saturated on "
              f"the RTG token in {n['saturated']}; the original's head circuit (veto and gate in one head) in {n['head_circuit']}."]
    return "\n".join(lines)


def plot_census(results: dict[str, dict], path: str | Path) -> None:
    """One panel per census (name -> ``census`` result): each model's share of the ball-ahead veto
    carried by each component (one line per model), blue where the model has the head circuit."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(4.2 * len(results), 3.6), squeeze=False, sharey=True)
    for ax, (title, res) in zip(axes[0], results.items()):
        labels = list(res["models"][0]["contrasts"]["veto"]["carry"])
        for i, r in enumerate(res["models"]):
            shares = [r["contrasts"]["veto"]["carry"][lab] for lab in labels]
            jitter = (i - len(res["models"]) / 2) * 0.01
            ax.plot(np.arange(len(labels)) + jitter, shares, "o-", ms=3, lw=0.6, alpha=0.6,
                    color="C0" if r["head_circuit"] else "C1")
        ax.set_xticks(range(len(labels)), labels, fontsize=8)
        ax.axhline(0, color="grey", lw=0.5)
        n = res["counts"]
        ax.set_title(f"{title}: head circuit in {n['head_circuit']}/{n['models']},\nattention saturated in {n['saturated']}",
                     fontsize=9)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("share of the ball-ahead veto\n(forward − right) carried")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def summary_table(results: dict[str, dict]) -> str:
    """One markdown line per census (name -> ``census`` result): how many models have each veto
    and gate carrier, saturated attention and the head circuit, and their calibration."""
    lines = ["| run | models | veto carrier | gate carrier | attention saturated on RTG | head circuit | "
             "calib. error (mean ± sd) | return @−1 / @+1 (mean) |", "|---|---|---|---|---|---|---|---|"]
    for name, res in results.items():
        n = res["counts"]
        cals = [r["calibration"] for r in res["models"] if r["calibration"]]
        err = np.array([c["calibration_error"] for c in cals])
        fmt = lambda d: ", ".join(f"{k} {v}" for k, v in d.items())  # noqa: E731
        cal_s = (f"{err.mean():.3f} ± {err.std():.3f} | {np.mean([c['return_at_low'] for c in cals]):+.2f} / "
                 f"{np.mean([c['return_at_high'] for c in cals]):+.2f}") if cals else "– | –"
        lines.append(f"| {name} | {n['models']} | {fmt(n['veto'])} | {fmt(n['gate'])} | {n['saturated']} | "
                     f"{n['head_circuit']} | {cal_s} |")
    return "\n".join(lines)


def write_census(runs, out_dir: str | Path | None = None, log=print) -> Path:
    """``census`` of one run (or of several) written as ``census.json``, ``census.md`` and
    ``census.png`` in ``out_dir`` (default: the run directory; for several runs ``reports/census``,
    with one ``census_<run>.json`` each and the summary table first). Returns the markdown path.
    What ``analyse.py --census RUN [RUN ...]`` calls."""
    runs = [Path(r) for r in (runs if isinstance(runs, (list, tuple)) else [runs])]
    for r in runs:
        if not r.exists():
            raise FileNotFoundError(f"no run at {r}")
    out = Path(out_dir) if out_dir else (runs[0] if len(runs) == 1 else Path("reports") / "census")
    out.mkdir(parents=True, exist_ok=True)
    results = {r.name: census(r, log=log) for r in runs}
    if len(runs) == 1:
        (out / "census.json").write_text(json.dumps(results[runs[0].name], indent=1))
        text = census_table(results[runs[0].name])
    else:
        for name, res in results.items():
            (out / f"census_{name}.json").write_text(json.dumps(res, indent=1))
        text = summary_table(results) + "\n\n" + "\n\n".join(f"### {k}\n\n{census_table(v)}" for k, v in results.items())
    (out / "census.md").write_text(text + "\n")
    plot_census(results, out / "census.png")
    return out / "census.md"
