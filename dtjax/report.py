"""One self-contained HTML report of a Decision Transformer's interpretability analyses.

``build_report(ckpt, out_dir)`` loads a dtjax checkpoint or an original ``.pt``, runs the
``dtjax.circuits`` analyses on hand-made scenarios (``dtjax.scenarios``) and on states from real
rollouts, and writes ``report.html`` (PNG figures inlined as base64, a table of contents, short
captions) and ``summary.json`` (the headline numbers) into ``out_dir``. Matplotlib only (Agg);
everything runs on CPU in a few minutes (``fast=True``: well under one).

Sections: calibration; scenarios (action probabilities, attention patterns, DLA); RTG scans;
state-encoder maps; embeddings; QK circuits; OV circuits; SVD of the circuits; ablations (logits
and closed-loop returns); activation patching.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import io
import json
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from dtjax import circuits as C
from dtjax import scenarios as S
from dtjax.config import ModelConfig

# Observation channels worth showing: raw codes (the state channel is always 0 in this env), and
# the one-hot bits that occur (object empty/wall/ball/goal).
CHANNELS = {"image": {0: "object", 1: "colour"}, "one_hot": {1: "empty", 2: "wall", 6: "ball", 8: "goal"}}
REPORT_SCENARIOS = ["start_seed0", "clear_ahead", "ball_ahead", "ball_two_ahead", "ball_diag_left",
                    "ball_diag_right", "ball_left", "ball_right", "goal_ahead", "wall_ahead"]


@dataclasses.dataclass(frozen=True)
class ReportOptions:
    """What to compute; ``fast`` gives a smoke-test report in well under a minute."""

    direction: str = "forward-right"  # logit difference analysed (the original app's default)
    rtg: float = 0.9  # target RTG of the scenarios (the app's default)
    calib_rtgs: int = 21  # target RTGs in [-1, 1] if calibration must be run
    calib_episodes: int = 100  # episodes per calibration point (original: 100 seeds)
    ablation_rtgs: tuple[float, ...] = (-1.0, 0.0, 1.0)  # targets of the closed-loop ablations
    ablation_episodes: int = 100  # episodes per target and ablation
    mean_samples: int = 512  # rollout states for mean ablation
    scan_points: int = 201  # RTGs in the scan over [-scan_range, scan_range]
    scan_range: float = 2.0  # beyond [-1, 1]: extrapolation
    seed: int = 0
    fast: bool = False

    @staticmethod
    def quick() -> "ReportOptions":
        return ReportOptions(calib_rtgs=3, calib_episodes=4, ablation_rtgs=(-1.0, 1.0), ablation_episodes=4,
                             mean_samples=32, scan_points=21, fast=True)


class _Html:
    """Accumulates sections, figures and tables; renders with a table of contents."""

    def __init__(self, title: str):
        self.title, self.sections, self.body = title, [], []

    def section(self, anchor: str, title: str, intro: str = ""):
        self.sections.append((anchor, title))
        self.body.append(f'<h2 id="{anchor}">{html.escape(title)}</h2>')
        if intro:
            self.body.append(f"<p>{intro}</p>")

    def figure(self, fig, caption: str):
        import matplotlib.pyplot as plt

        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
        plt.close(fig)
        self.png(buf.getvalue(), caption)

    def png(self, data: bytes, caption: str):
        b64 = base64.b64encode(data).decode()
        self.body.append(f'<figure><img src="data:image/png;base64,{b64}"><figcaption>{caption}</figcaption></figure>')

    def table(self, header: list[str], rows: list[list[Any]], caption: str = ""):
        def fmt(x):
            return f"{x:+.3f}" if isinstance(x, (float, np.floating)) else html.escape(str(x))

        head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
        body = "".join("<tr>" + "".join(f"<td>{fmt(x)}</td>" for x in r) + "</tr>" for r in rows)
        cap = f"<caption>{caption}</caption>" if caption else ""
        self.body.append(f"<table>{cap}<tr>{head}</tr>{body}</table>")

    def text(self, s: str):
        self.body.append(f"<p>{s}</p>")

    def render(self) -> str:
        toc = "".join(f'<li><a href="#{a}">{html.escape(t)}</a></li>' for a, t in self.sections)
        style = ("body{font-family:sans-serif;max-width:1100px;margin:auto;padding:1em}"
                 "img{max-width:100%}figure{margin:1em 0}figcaption{font-size:90%;color:#444}"
                 "table{border-collapse:collapse;margin:0.5em 0}td,th{border:1px solid #ccc;padding:2px 6px;"
                 "text-align:right;font-size:90%}caption{text-align:left;font-size:90%;color:#444}")
        return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(self.title)}</title>"
                f"<style>{style}</style></head><body><h1>{html.escape(self.title)}</h1>"
                f"<h3>Contents</h3><ol>{toc}</ol>{''.join(self.body)}</body></html>")


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _show_map(ax, m, title, vmax=None, cmap="RdBu"):
    """A [x, y] map as the agent sees it (rows = view y, agent at the bottom centre)."""
    m = np.asarray(m)
    vmax = vmax or max(float(np.abs(m).max()), 1e-9)
    im = ax.imshow(m.T, cmap=cmap, vmin=-vmax, vmax=vmax)
    ax.plot(3, 6, "^", color="black", ms=6)
    ax.set_title(title, fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])
    return im


def _maps_grid(maps: np.ndarray, row_labels: list[str], col_labels: list[str], suptitle: str):
    """maps (rows, cols, 7, 7) with a shared symmetric colour scale per row."""
    plt = _plt()
    r, c = maps.shape[:2]
    fig, axes = plt.subplots(r, c, figsize=(2.1 * c + 0.6, 2.1 * r), squeeze=False)
    for i in range(r):
        vmax = float(np.abs(maps[i]).max()) or 1e-9
        for j in range(c):
            im = _show_map(axes[i, j], maps[i, j], f"{row_labels[i]} {col_labels[j]}", vmax)
        fig.colorbar(im, ax=axes[i].tolist(), shrink=0.8)
    fig.suptitle(suptitle, fontsize=10)
    return fig


def find_calibration(ckpt: Path) -> dict | None:
    """A dtjax run's saved ``calibration.json`` at or above the checkpoint path (3 levels), else None."""
    p = ckpt.absolute()
    for d in [p] + list(p.parents)[:3]:
        f = d / "calibration.json"
        if d.is_dir() and f.is_file():
            return json.loads(f.read_text())
    return None


def build_report(ckpt: str | Path, out_dir: str | Path, options: ReportOptions | None = None, log=print) -> Path:
    """Analyse checkpoint ``ckpt`` and write ``out_dir/report.html`` and ``summary.json``; returns the HTML path."""
    import dtjax
    from dtjax.evaluate import calibrate, plot_calibration

    opt = options or ReportOptions()
    ckpt, out_dir = Path(ckpt), Path(out_dir)
    cfg, params, env_cfg = dtjax.load(ckpt, with_env=True)
    params = jax.tree.map(jnp.asarray, params)
    out_dir.mkdir(parents=True, exist_ok=True)
    plt = _plt()
    t0 = time.time()
    key = jax.random.PRNGKey(opt.seed)
    k_calib, k_sample, k_abl = jax.random.split(key, 3)
    doc = _Html(f"dtjax report: {ckpt.name}")
    summary: dict[str, Any] = {"checkpoint": str(ckpt), "config": cfg.to_dict(), "env": env_cfg.to_dict(),
                               "direction": opt.direction, "fast": opt.fast}
    d_lab = C.direction_label(opt.direction)
    chans = CHANNELS[cfg.obs_mode]
    ch_idx, ch_names = list(chans), list(chans.values())
    max_steps = env_cfg.max_steps
    env, env_params = env_cfg.make()  # the env the model was trained in (stored with the run)

    doc.section("model", "Model", f"{html.escape(str(ckpt))}: {cfg.n_layers} layer(s), d_model {cfg.d_model}, "
                f"{cfg.n_heads} heads of {cfg.d_head}, {'attention-only' if cfg.attn_only else f'MLP {cfg.d_mlp}'}, "
                f"LayerNorm {'on' if cfg.layer_norm else 'off'}, obs {cfg.obs_mode} {cfg.obs_shape}, "
                f"context {cfg.n_timesteps} timestep(s) ({cfg.pos_rows} positions), max timestep {cfg.max_timestep}. "
                f"Env: {env_cfg.env_id}, max_steps {env_cfg.max_steps}. "
                f"Directions are over actions (left, right, forward); the default analysed is <b>{d_lab}</b>. "
                "Observation maps are drawn as the agent sees them: rows are view y, the agent (black triangle) "
                "at the bottom centre facing up, so the cell directly in front is just above it.")

    # CALIBRATION ------------------------------------------------------------------------------
    log("calibration")
    calib = find_calibration(ckpt)
    source = "saved with the checkpoint"
    if calib is None:
        calib = calibrate(params, cfg, env, env_params, k_calib, np.linspace(-1, 1, opt.calib_rtgs), opt.calib_episodes)
        source = f"run now: {opt.calib_episodes} greedy episodes per target, max_steps {max_steps}"
    png = out_dir / "calibration.png"
    plot_calibration(calib, str(png), title=ckpt.stem)
    doc.section("calibration", "Calibration", "Achieved return against the target RTG fed to the model "
                f"(the original's black-box characterisation); {source}.")
    doc.png(png.read_bytes(), "Mean achieved return (line), percentile bands, and y = x (dash-dot).")
    png.unlink()
    rows = calib["rows"]
    doc.table(["target RTG", "mean return", "goal", "hit", "timeout", "mean length"],
              [[r["target_rtg"], r["mean_return"], r["goal_rate"], r["hit_rate"], r["timeout_rate"], r["mean_length"]]
               for r in rows])
    summary["calibration"] = [{k: r[k] for k in ("target_rtg", "mean_return", "goal_rate", "hit_rate")} for r in rows]

    # SCENARIOS: probabilities, attention, DLA -------------------------------------------------
    log("scenarios")
    names, inp = S.scenario_inputs(REPORT_SCENARIOS, rtg=opt.rtg, env=env_cfg)
    _, inp_neg = S.scenario_inputs(REPORT_SCENARIOS, rtg=-1.0, env=env_cfg)
    logits, cache = C.run_with_cache(params, cfg, inp)
    logits_neg = C.forward(params, cfg, inp_neg)
    probs, probs_neg = np.asarray(jax.nn.softmax(logits[:, 0])), np.asarray(jax.nn.softmax(logits_neg[:, 0]))
    doc.section("scenarios", "Scenarios", "Hand-made states observed through the env (one timestep, t = 0), "
                f"at target RTG {opt.rtg} and -1.")
    fig, axes = plt.subplots(1, len(names), figsize=(1.5 * len(names), 1.9))
    for ax, n, o in zip(axes, names, np.asarray(inp.obs[:, 0])):
        ax.imshow(S.render_view(o))
        ax.set_title(n.replace("_", " "), fontsize=7)
        ax.axis("off")
    doc.figure(fig, "The scenarios' 7x7 views (grey wall, blue ball, green goal, red agent).")
    doc.table(["scenario", "caption", f"P(L) @{opt.rtg}", "P(R)", "P(F)", "P(L) @-1", "P(R)", "P(F)"],
              [[n, S.scenario_caption(n, env_cfg), *map(float, probs[i]), *map(float, probs_neg[i])] for i, n in enumerate(names)],
              "Greedy action probabilities (softmax of the logits at the state token).")
    summary["scenario_probs"] = {n: {"rtg": probs[i].round(4).tolist(), "rtg_neg1": probs_neg[i].round(4).tolist()}
                                 for i, n in enumerate(names)}

    pat = np.asarray(C.attention_patterns(params, cfg, inp))  # (layer, batch, head, q, k)
    show = [names.index(n) for n in ("start_seed0", "ball_ahead", "clear_ahead")]
    fig, axes = plt.subplots(cfg.n_layers, len(show) * cfg.n_heads, figsize=(1.8 * len(show) * cfg.n_heads, 2.0 * cfg.n_layers),
                             squeeze=False)
    for l in range(cfg.n_layers):
        for j, b in enumerate(show):
            for h in range(cfg.n_heads):
                ax = axes[l, j * cfg.n_heads + h]
                ax.imshow(pat[l, b, h], vmin=0, vmax=1, cmap="viridis")
                for (q, k), val in np.ndenumerate(pat[l, b, h]):
                    ax.text(k, q, f"{val:.2f}", ha="center", va="center", fontsize=7, color="w")
                ax.set_title(f"{names[b]}\nL{l}H{h}", fontsize=7)
                ax.set_xticks(range(2), ["R", "s"], fontsize=7)
                ax.set_yticks(range(2), ["R", "s"], fontsize=7)
    doc.figure(fig, f"Attention patterns (query rows, key columns) at RTG {opt.rtg}. The state token's attention "
               "to the RTG token is the bottom-left cell.")
    summary["attn_state_to_rtg"] = {names[b]: pat[0, b, :, 1, 0].round(4).tolist() for b in range(len(names))}

    labels, dla = C.direct_logit_attribution(params, cfg, cache, opt.direction)
    dla = np.asarray(dla)
    fig, ax = plt.subplots(figsize=(11, 3.5))
    w = 0.8 / len(names)
    for i, n in enumerate(names):
        ax.bar(np.arange(len(labels)) + i * w, dla[i], w, label=n)
    ax.set_xticks(np.arange(len(labels)) + 0.4 - w / 2, labels, fontsize=8)
    ax.axhline(0, color="k", lw=0.5)
    ax.set_ylabel(f"DLA onto {d_lab}")
    ax.legend(fontsize=6, ncol=5)
    doc.section("dla", "Direct logit attribution", "Each residual-stream component's direct contribution to the "
                f"{d_lab} logit difference at the state token (components + biases sum exactly to the logit "
                "difference; with LayerNorm its scale is frozen from the cache).")
    doc.figure(fig, f"DLA per scenario at RTG {opt.rtg}.")
    doc.table(["scenario"] + labels + ["sum"], [[n, *map(float, dla[i]), float(dla[i].sum())] for i, n in enumerate(names)])
    summary["dla"] = {n: dict(zip(labels, dla[i].round(4).tolist())) for i, n in enumerate(names)}

    # RTG SCAN ---------------------------------------------------------------------------------
    log("rtg scan")
    doc.section("rtg_scan", "RTG scan", f"The target RTG swept over [-{opt.scan_range}, {opt.scan_range}] "
                "(beyond [-1, 1] is extrapolation) with everything else fixed (one vmapped pass).")
    rtgs = jnp.linspace(-opt.scan_range, opt.scan_range, opt.scan_points)
    summary["rtg_scan"] = {}
    for sc_name in ("start_seed0", "ball_ahead"):
        b = names.index(sc_name)
        scan = C.rtg_scan(params, cfg, inp.take(slice(b, b + 1)), rtgs, opt.direction)
        scan = {k: (v if k == "labels" else np.asarray(v)) for k, v in scan.items()}
        fig, axes = plt.subplots(1, 3, figsize=(14, 3.4))
        for a, name in enumerate(C.ACTIONS):
            axes[0].plot(scan["rtg"], scan["logits"][:, a], label=name)
        axes[0].set_title("logits")
        for i, lab in enumerate(scan["labels"]):
            if np.ptp(scan["dla"][:, i]) > 1e-6 or abs(scan["dla"][0, i]) > 0.05:
                axes[1].plot(scan["rtg"], scan["dla"][:, i], label=lab)
        axes[1].plot(scan["rtg"], scan["dla"].sum(1), "k--", label="total")
        axes[1].set_title(f"DLA onto {d_lab}")
        for l in range(cfg.n_layers):
            for h in range(cfg.n_heads):
                axes[2].plot(scan["rtg"], scan["pattern"][:, l, h, 1, 0], label=f"L{l}H{h}")
        axes[2].set_title("attention state -> RTG (softmax)")
        for ax in axes:
            for x in (-1, 0, 1):
                ax.axvline(x, color="grey", lw=0.5, ls=":")
            ax.set_xlabel("target RTG")
            ax.legend(fontsize=7)
        doc.figure(fig, f"RTG scan of <b>{sc_name}</b>: logits, per-component DLA (constant components only if large), "
                   "and each head's attention from the state to the RTG token.")
        comps = scan["dla"][:, [i for i, lab in enumerate(scan["labels"]) if lab not in ("b_U", "embed_pos") and "b_O" not in lab]]
        corr_labels = [lab for lab in scan["labels"] if lab not in ("b_U", "embed_pos") and "b_O" not in lab]
        sd = comps.std(0)
        keep = sd > 1e-6
        corr = np.corrcoef(comps[:, keep].T) if keep.sum() > 1 else np.ones((1, 1))
        inside = np.abs(scan["rtg"]) <= 1 + 1e-6
        summary["rtg_scan"][sc_name] = {
            "rtg": [-1.0, 0.0, 1.0],
            "logits": [scan["logits"][np.argmin(np.abs(scan["rtg"] - r))].round(4).tolist() for r in (-1, 0, 1)],
            "dla_slope_per_unit_rtg_in_[-1,1]": dict(zip(scan["labels"], np.polyfit(
                scan["rtg"][inside], scan["dla"][inside], 1)[0].round(4).tolist())),
            "component_correlation": {"labels": [l for l, k in zip(corr_labels, keep) if k], "matrix": corr.round(3).tolist()},
        }

    # STATE ENCODER ----------------------------------------------------------------------------
    log("state encoder")
    doc.section("state_encoder", "State encoder", f"W_state's direct write onto the {d_lab} direction, per "
                "observation cell and channel: the weight projection (W_state @ W_U @ v as a 7x7 map per channel) and "
                "the activation projection (weights x observation) for two scenarios. Only the direct path: the "
                "state embedding also acts through attention and the MLP.")
    wmap = np.asarray(C.state_encoder_maps(params, cfg, opt.direction))[ch_idx]
    amaps = np.asarray(C.state_encoder_maps(params, cfg, opt.direction, inp.obs[jnp.array(show[:2]), 0]))[:, ch_idx]
    grid = np.concatenate([wmap[None], amaps], 0)
    doc.figure(_maps_grid(grid, ["weights"] + [f"{names[b]}" for b in show[:2]], ch_names, "state encoder -> " + d_lab),
               "Rows: weight projection, then activation projections. Columns: channels.")
    summary["state_encoder_front_cell"] = {ch: float(wmap[i, 3, 5]) for i, ch in enumerate(ch_names)}

    # EMBEDDINGS -------------------------------------------------------------------------------
    log("embeddings")
    doc.section("embeddings", "RTG and time embeddings", "Direct projections of the RTG embedding (RTG x w_R) "
                "and each time-embedding row onto the logit directions, and the QK score they contribute.")
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.2))
    rr = jnp.linspace(-opt.scan_range, opt.scan_range, 50)
    for a in C.ACTIONS:
        axes[0].plot(rr, C.rtg_embedding_projection(params, rr, a), label=a)
    axes[0].plot(rr, C.rtg_embedding_projection(params, rr, opt.direction), "k--", label=d_lab)
    axes[0].set_title("(RTG w_R) . W_U")
    axes[0].set_xlabel("RTG")
    tp = np.asarray(C.time_embedding_projection(params, cfg, opt.direction))
    axes[1].plot(tp, label=d_lab)
    axes[1].set_title(f"W_time[t] . {d_lab}")
    axes[1].set_xlabel("timestep")
    qt = np.asarray(C.qk_embeddings_rtg(params, cfg)["time"])
    for h in range(cfg.n_heads):
        axes[2].plot(qt[h], label=f"L0H{h}")
    axes[2].set_title("QK: W_time[t] (query) . w_R (key)")
    axes[2].set_xlabel("timestep")
    for ax in axes:
        ax.legend(fontsize=7)
    doc.figure(fig, "Left: the RTG token's direct path is a line through 0. Middle: time embeddings on the "
               "logit difference (rows never seen in training keep their init). Right: how the time embedding of "
               "the state token changes its score to the RTG token (per unit RTG).")
    cos = jax.tree.map(np.asarray, C.embedding_cosines(params, cfg))
    doc.table(["embedding", "cos W_U[left]", "cos W_U[right]", "cos W_U[forward]"],
              [["w_R (RTG)", *map(float, cos["rtg"])]] + [[f"W_pos[{i}]", *map(float, r)] for i, r in enumerate(cos["pos"])]
              + [[f"mean W_state, channel {n}", *map(float, cos["state_channel"][c])] for c, n in chans.items()],
              "Cosine similarity of embeddings with the unembedding columns.")
    summary["rtg_direct_per_unit"] = float(C.rtg_embedding_projection(params, jnp.ones(1), opt.direction)[0])

    # QK / OV ----------------------------------------------------------------------------------
    log("circuits")
    qk = np.asarray(C.qk_state_rtg(params, cfg))[:, ch_idx]  # (head, ch, 7, 7)
    doc.section("qk", "QK circuit: state query -> RTG key", "QK_full[h] = W_state W_Q[h] W_K[h]ᵀ w_Rᵀ (the "
                "original app's, unscaled by 1/sqrt(d_head)): how much a unit of each observation feature raises the "
                "state token's attention score to the RTG token, per unit RTG. Positive: attends more to RTG when "
                "RTG > 0. Layer 0 only, biases and time/position embeddings excluded.")
    doc.figure(_maps_grid(qk, [f"L0H{h}" for h in range(cfg.n_heads)], ch_names, "QK state -> RTG"), "Per head and channel.")
    qe = C.qk_embeddings_rtg(params, cfg)
    doc.text("Positional query W_pos[1] against the RTG key, per head: "
             + ", ".join(f"H{h} {float(v):+.3f}" for h, v in enumerate(np.asarray(qe["pos"]))))
    ov = np.asarray(C.ov_state(params, cfg))[:, ch_idx]  # (head, ch, 7, 7, A)
    v = np.asarray(C.action_vector(opt.direction))
    doc.section("ov", "OV circuit: what each input writes to the logits", "OV_full[h] = W_state W_V[h] W_O[h] W_U: "
                "the change in each action logit per unit of an observation feature, if the state token attends "
                "to itself with weight 1; and w_R W_OV W_U per unit RTG if it attends to the RTG token.")
    ov_rows = np.concatenate([ov[..., 2], ov @ v], 0)
    doc.figure(_maps_grid(ov_rows, [f"L0H{h} forward" for h in range(cfg.n_heads)] + [f"L0H{h} {d_lab}" for h in range(cfg.n_heads)],
                          ch_names, "OV state -> logits"), "Rows: head x (forward logit, analysed direction).")
    ovr = np.asarray(C.ov_rtg(params))
    doc.table(["head", "left", "right", "forward"], [[f"L0H{h}", *map(float, ovr[h])] for h in range(cfg.n_heads)],
              "OV of the RTG embedding (per unit RTG attended).")
    summary["qk_front_cell_object"] = qk[:, 0, 3, 5].round(4).tolist()
    summary["ov_front_cell_object_forward"] = ov[:, 0, 3, 5, 2].round(4).tolist()
    summary["ov_rtg"] = ovr.round(4).tolist()

    svd = jax.tree.map(np.asarray, C.circuit_svd(params, cfg, k=2))
    doc.section("svd", "SVD of the QK and OV circuits", "Singular values of W_QK and W_OV per head (factored, "
                "never forming the d_model x d_model product), and the top OV direction read in input and output "
                "vocabulary: which observation features write it (W_state @ U) and what it does to the logits (Vh @ W_U).")
    fig, axes = plt.subplots(1, 2, figsize=(9, 3))
    for h in range(cfg.n_heads):
        axes[0].semilogy(svd["qk_S"][h] + 1e-12, "o-", ms=3, label=f"H{h}")
        axes[1].semilogy(svd["ov_S"][h] + 1e-12, "o-", ms=3, label=f"H{h}")
    axes[0].set_title("W_QK singular values")
    axes[1].set_title("W_OV singular values")
    for ax in axes:
        ax.legend(fontsize=7)
    doc.figure(fig, "A sharp drop means the head reads/writes few directions.")
    top = svd["ov_input_maps"][:, 0][:, ch_idx]  # (head, ch, 7, 7)
    doc.figure(_maps_grid(top, [f"H{h} top OV input" for h in range(cfg.n_heads)], ch_names, "top OV singular direction"),
               "Top OV input direction per head as observation maps; its output moves the logits by "
               + "; ".join(f"H{h}: (L, R, F) = ({', '.join(f'{x:+.2f}' for x in svd['ov_output_logits'][h, 0])})"
                           for h in range(cfg.n_heads)) + " (sign of each pair arbitrary).")
    summary["ov_singular_values_top3"] = svd["ov_S"][:, :3].round(4).tolist()

    # ABLATIONS --------------------------------------------------------------------------------
    log("ablations")
    sample = S.sample_inputs(k_sample, opt.mean_samples, rtg=opt.rtg, env=env_cfg)
    means = C.ablation_means(params, cfg, sample)
    doc.section("ablation", "Ablations", "Each head's hook_z or the MLP's output replaced by zero, or by its mean over "
                f"{opt.mean_samples} states from random-policy rollouts (per position). Effect on the scenarios' "
                f"{d_lab} logit difference, and on closed-loop return.")
    summary["ablation"] = {}
    for kind in ("zero", "mean"):
        ab_labels, worlds = C.ablate_logits(params, cfg, inp, kind, means)
        diff = np.asarray(worlds[:, :, 0] @ C.action_vector(opt.direction))  # (world, scenario)
        doc.table(["ablation"] + names, [[lab, *map(float, diff[i])] for i, lab in enumerate(ab_labels)],
                  f"{kind} ablation: {d_lab} logit difference per scenario at RTG {opt.rtg}.")
        summary["ablation"][f"{kind}_logit_diff"] = {lab: dict(zip(names, diff[i].round(4).tolist())) for i, lab in enumerate(ab_labels)}
    for kind in ("zero",) if opt.fast else ("zero", "mean"):
        res = C.ablate_returns(params, cfg, env, env_params, k_abl, opt.ablation_rtgs, opt.ablation_episodes, kind, means)
        hdr = ["ablation"] + [f"return @{r:g}" for r in opt.ablation_rtgs] + [f"hit @{r:g}" for r in opt.ablation_rtgs]
        doc.table(hdr, [[lab, *map(float, res["mean_return"][i]), *map(float, res["hit_rate"][i])]
                        for i, lab in enumerate(res["labels"])],
                  f"{kind} ablation in closed loop: mean return and collision rate, {opt.ablation_episodes} episodes per "
                  f"target (same episodes in every row), max_steps {max_steps}.")
        summary["ablation"][f"{kind}_returns"] = {lab: res["mean_return"][i].round(4).tolist() for i, lab in enumerate(res["labels"])}
        summary["ablation"][f"{kind}_hit_rate"] = {lab: res["hit_rate"][i].round(4).tolist() for i, lab in enumerate(res["labels"])}

    # ACTIVATION PATCHING ----------------------------------------------------------------------
    log("patching")
    doc.section("patching", "Activation patching", "Clean activations restored one at a time (hook x position x "
                f"head) into the corrupted run; the value is (patched - corrupted) / (clean - corrupted) of the {d_lab} "
                "logit difference at the state token: 1 = restores the clean behaviour, 0 = no effect.")
    pnames = None
    if opt.fast:
        pnames = ["hook_embed", "blocks.0.attn.hook_z", "blocks.0.hook_mlp_out", f"blocks.{cfg.n_layers - 1}.hook_resid_post"]
    pairs = {pair: (S.scenario_inputs([a], rtg=opt.rtg, env=env_cfg)[1],
                    S.scenario_inputs([b], rtg=opt.rtg, env=env_cfg)[1]) for pair, (a, b) in S.PATCH_PAIRS.items()}
    b0 = names.index("ball_ahead")
    pairs["rtg+1_vs_-1 (ball_ahead)"] = (inp.take(slice(b0, b0 + 1)).with_rtg(jnp.ones(1)),
                                          inp.take(slice(b0, b0 + 1)).with_rtg(-jnp.ones(1)))
    s0 = names.index("start_seed0")
    pairs["rtg+1_vs_-1 (start_seed0)"] = (inp.take(slice(s0, s0 + 1)).with_rtg(jnp.ones(1)),
                                           inp.take(slice(s0, s0 + 1)).with_rtg(-jnp.ones(1)))
    summary["patching"] = {}
    for pair, (clean, corrupted) in pairs.items():
        res = C.activation_patching(params, cfg, clean, corrupted, opt.direction, pnames)
        eff = {k: np.asarray(v) for k, v in res["effects"].items()}
        rows_lab, mat = [], []
        width = max(v.shape[0] for v in eff.values())
        for name, val in eff.items():
            cols = [val] if val.ndim == 1 else [val[:, h] for h in range(val.shape[1])]
            for h, col in enumerate(cols):
                rows_lab.append(name + ("" if val.ndim == 1 else f" [H{h}]"))
                mat.append(np.pad(col, (0, width - col.shape[0]), constant_values=np.nan))
        mat = np.array(mat)
        fig, ax = plt.subplots(figsize=(4 + width, 0.22 * len(rows_lab) + 1))
        lim = max(1.0, float(np.nanmax(np.abs(mat))) if np.isfinite(mat).any() else 1.0)
        im = ax.imshow(mat, cmap="RdBu", vmin=-lim, vmax=lim, aspect="auto")
        for (i, j), x in np.ndenumerate(mat):
            if np.isfinite(x):
                ax.text(j, i, f"{x:.2f}", ha="center", va="center", fontsize=6)
        ax.set_yticks(range(len(rows_lab)), rows_lab, fontsize=7)
        ax.set_xticks(range(width), [f"pos {j}" for j in range(width)], fontsize=7)
        fig.colorbar(im, ax=ax)
        doc.figure(fig, f"<b>{pair}</b>: clean {d_lab} = {float(res['clean']):+.3f}, corrupted = "
                   f"{float(res['corrupted']):+.3f}. Positions: tokens (R=0, s=1); per-timestep embed hooks index the "
                   "timestep; attention patterns index the query.")
        summary["patching"][pair] = {"clean": float(res["clean"]), "corrupted": float(res["corrupted"]),
                                     "effects": {k: np.round(v, 4).tolist() for k, v in eff.items()}}

    summary["seconds"] = round(time.time() - t0, 1)
    doc.text(f"Generated in {summary['seconds']} s by dtjax.report.")
    path = out_dir / "report.html"
    path.write_text(doc.render())
    (out_dir / "summary.json").write_text(json.dumps(_jsonable(summary), indent=1, allow_nan=True))
    log(f"wrote {path}")
    return path


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    if isinstance(x, float) and not np.isfinite(x):
        return None
    return x
