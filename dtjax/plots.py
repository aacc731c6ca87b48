"""Every figure dtjax draws, from plain data (matplotlib, Agg backend).

Functions named after what they show return a ``matplotlib.figure.Figure`` and never compute an
analysis: they take the arrays, labels and numbers that ``dtjax.analysis``, ``dtjax.evaluate``,
``dtjax.data.store``, ``dtjax.sae`` or ``dtjax.census`` computed. No other module of dtjax (nor
its scripts) imports matplotlib. ``save(fig, path)`` writes one to disk, ``png_bytes(fig)``
encodes one for the HTML report; both close it. ``plot_calibration`` and ``plot_dataset`` are
the one-call versions the training job and the data CLI use.

A leaf module: it imports only numpy and (lazily, so ``import dtjax`` stays light) matplotlib.
Observation maps are (..., 7, 7) arrays indexed [x, y] and drawn as the agent sees them: rows
are view y, the agent (black triangle) at the bottom centre (3, 6) facing up.
"""

from __future__ import annotations

import io
import os
from typing import Sequence

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig, path: str | os.PathLike, dpi: int = 110, tight: bool = False) -> None:
    """Write ``fig`` to ``path`` (png/pdf/svg by extension) and close it."""
    fig.savefig(path, dpi=dpi, **({"bbox_inches": "tight"} if tight else {}))
    _plt().close(fig)


def png_bytes(fig, dpi: int = 90) -> bytes:
    """``fig`` as PNG bytes (tight bounding box), closed afterwards."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    _plt().close(fig)
    return buf.getvalue()


# TRAINING AND DATA ---------------------------------------------------------------------------


def calibration(calib: dict, title: str = "Calibration"):
    """Target vs achieved return with the diagonal, 10-90 / 25-75 percentile bands and +-2
    standard errors of each point's mean.

    ``calib``: ``dtjax.evaluate.calibrate``'s dict (``rows`` with target_rtg, mean_return, p10,
    p25, p75, p90, episodes, se_return; ``se_target`` when the episode counts followed a stated
    standard error).
    """
    plt = _plt()
    rows = calib["rows"]
    x = np.array([r["target_rtg"] for r in rows])
    mean = np.array([r["mean_return"] for r in rows])
    n = [r.get("episodes", calib.get("n_episodes", 1)) for r in rows]
    se = np.array([r.get("se_return", r["std_return"] / np.sqrt(max(k, 1))) for r, k in zip(rows, n)])
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    ax.fill_between(x, [r["p10"] for r in rows], [r["p90"] for r in rows], alpha=0.2, label="10–90th pct")
    ax.fill_between(x, [r["p25"] for r in rows], [r["p75"] for r in rows], alpha=0.3, label="25–75th pct")
    ax.errorbar(x, mean, yerr=2 * se, fmt="o-", ms=4, capsize=2, label="mean achieved return ± 2 SE")
    lo, hi = min(x.min(), -1), max(x.max(), 1)
    ax.plot([lo, hi], [lo, hi], "-.", color="lightseagreen", label="y = x")
    ax.set_xlabel("target RTG")
    ax.set_ylabel("achieved return")
    per_point = f"{min(n)}" if min(n) == max(n) else f"{min(n)}–{max(n)}"
    target = f", SE ≤ {calib['se_target']:g}" if calib.get("se_target") else ""
    ax.set_title(f"{title} ({per_point} episodes per point{target})", fontsize=9)
    ax.set_ylim(-1.1, 1.1)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return fig


def plot_calibration(calib: dict, path: str | os.PathLike, title: str = "Calibration") -> None:
    """``calibration(calib, title)`` saved to ``path`` (what ``train.py`` writes as calibration.png)."""
    save(calibration(calib, title), path, dpi=110)


def calibration_methods(curves: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]], title: str = "Calibration by method"):
    """Achieved against target return of several methods on one axis, each the mean over its seeds
    with a band of +-1 sd across seeds, and the diagonal.

    ``curves``: method -> (targets (R,), mean achieved (R,), sd across seeds (R,)).
    """
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4.8))
    lo, hi = np.inf, -np.inf  # the targets' range: [-1, 1] in Dynamic Obstacles, [0, 1] where returns cannot be negative
    for name, (x, mean, sd) in curves.items():
        x, mean, sd = (np.asarray(v, np.float64) for v in (x, mean, sd))
        (line,) = ax.plot(x, mean, "o-", ms=3.5, label=name)
        ax.fill_between(x, mean - sd, mean + sd, color=line.get_color(), alpha=0.15)
        lo, hi = min(lo, x.min()), max(hi, x.max())
    ax.plot([lo, hi], [lo, hi], "-.", color="grey", label="y = x")
    ax.set_xlabel("target RTG")
    ax.set_ylabel("achieved return (mean over seeds ± sd)")
    ax.set_title(title, fontsize=9)
    ax.set_ylim(lo - 0.1, hi + 0.1)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return fig


def gate_maps(maps: dict[str, np.ndarray], rtgs: np.ndarray, timesteps: np.ndarray, action: int = 2,
              action_name: str = "forward", curve: tuple[np.ndarray, np.ndarray] | None = None):
    """One panel per model: the probability of ``action`` over (timestep, target RTG).

    ``maps``: name -> (len(timesteps), len(rtgs), n_actions) (``dtjax.calibrate.gate_map``);
    ``curve``: an optional (timesteps, rtg) line drawn on every panel (e.g. the best return still
    reachable)."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(maps), figsize=(4.2 * len(maps), 3.6), squeeze=False)
    rtgs, timesteps = np.asarray(rtgs), np.asarray(timesteps)
    for ax, (name, m) in zip(axes[0], maps.items()):
        im = ax.imshow(np.asarray(m)[:, :, action].T, origin="lower", aspect="auto", cmap="viridis", vmin=0, vmax=1,
                       extent=(timesteps[0], timesteps[-1], rtgs[0], rtgs[-1]))
        if curve is not None:
            ax.plot(curve[0], curve[1], "w--", lw=1)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("timestep")
    axes[0, 0].set_ylabel("target RTG")
    fig.colorbar(im, ax=axes[0].tolist(), label=f"P({action_name}) at the start state")
    return fig


def dataset(lengths: np.ndarray, returns: np.ndarray, title: str = ""):
    """Return vs episode length scatter with marginal histograms (the original's
    ``plot_reward_over_time``); ``lengths``, ``returns`` (episodes,) from ``store.episode_index``."""
    plt = _plt()
    lengths, returns = np.asarray(lengths), np.asarray(returns)
    fig = plt.figure(figsize=(7, 6))
    gs = fig.add_gridspec(2, 2, width_ratios=(4, 1), height_ratios=(1, 4), hspace=0.05, wspace=0.05)
    ax = fig.add_subplot(gs[1, 0])
    colors = np.where(returns > 0, "tab:green", np.where(returns < 0, "tab:red", "tab:grey"))
    ax.scatter(lengths, returns, c=colors, s=4, alpha=0.3)
    ax.set_xlabel("episode length (steps)")
    ax.set_ylabel("return")
    axx = fig.add_subplot(gs[0, 0], sharex=ax)
    axx.hist(lengths, bins=60, color="tab:blue")
    axx.set_yscale("log")
    axx.tick_params(labelbottom=False)
    axy = fig.add_subplot(gs[1, 1], sharey=ax)
    axy.hist(returns, bins=40, orientation="horizontal", color="tab:blue")
    axy.set_xscale("log")
    axy.tick_params(labelleft=False)
    fig.suptitle(title or f"{len(lengths)} episodes, {int(lengths.sum())} steps")
    return fig


def plot_dataset(lengths: np.ndarray, returns: np.ndarray, path: str | os.PathLike, title: str = "") -> None:
    """``dataset(lengths, returns, title)`` saved to ``path`` (``python -m dtjax.data ... --plot``)."""
    save(dataset(lengths, returns, title), path, dpi=100, tight=True)


# REPORT FIGURES -------------------------------------------------------------------------------


def views(images: Sequence[np.ndarray], titles: Sequence[str]):
    """A row of RGB pictures (7, 7, 3) (``scenarios.render_view``), one per scenario."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(images), figsize=(1.5 * len(images), 1.9), squeeze=False)
    for ax, img, t in zip(axes[0], images, titles):
        ax.imshow(img)
        ax.set_title(t.replace("_", " "), fontsize=7)
        ax.axis("off")
    return fig


def attention(patterns: np.ndarray, titles: Sequence[str], tokens: Sequence[str], max_annotated: int = 6):
    """Attention patterns (layer, example, head, q, k): one panel per layer (rows) and example x
    head (columns), queries as rows. Values are written in the cells when there are at most
    ``max_annotated`` tokens."""
    plt = _plt()
    patterns = np.asarray(patterns)
    n_layers, n_ex, n_heads, n_tok = patterns.shape[:4]
    side = 1.8 if n_tok <= 6 else 2.6
    fig, axes = plt.subplots(n_layers, n_ex * n_heads, figsize=(side * n_ex * n_heads, (side + 0.2) * n_layers),
                             squeeze=False)
    fs = 7 if n_tok <= 6 else 5
    for l in range(n_layers):
        for j in range(n_ex):
            for h in range(n_heads):
                ax = axes[l, j * n_heads + h]
                pat = patterns[l, j, h]
                ax.imshow(pat, vmin=0, vmax=1, cmap="viridis")
                if n_tok <= max_annotated:
                    for (q, k), val in np.ndenumerate(pat):
                        ax.text(k, q, f"{val:.2f}", ha="center", va="center", fontsize=7, color="w")
                ax.set_title(f"{titles[j]}\nL{l}H{h}", fontsize=7)
                ax.set_xticks(range(n_tok), tokens, fontsize=fs, rotation=90 if n_tok > 6 else 0)
                ax.set_yticks(range(n_tok), tokens, fontsize=fs)
    return fig


def grouped_bars(values: np.ndarray, labels: Sequence[str], series: Sequence[str], ylabel: str):
    """Bars (series, label): one group per label, one bar per series (e.g. DLA per scenario)."""
    plt = _plt()
    values = np.asarray(values)
    fig, ax = plt.subplots(figsize=(max(8.0, 0.45 * len(labels) + 2), 3.5))
    w = 0.8 / len(series)
    for i, name in enumerate(series):
        ax.bar(np.arange(len(labels)) + i * w, values[i], w, label=name)
    ax.set_xticks(np.arange(len(labels)) + 0.4 - w / 2, labels, fontsize=8, rotation=90 if len(labels) > 14 else 0)
    ax.axhline(0, color="k", lw=0.5)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=6, ncol=5)
    return fig


def rtg_scan(rtg: np.ndarray, logits: np.ndarray, dla: np.ndarray, labels: Sequence[str], attn: np.ndarray,
             actions: Sequence[str], direction: str):
    """One state's RTG scan: logits (n, n_actions); DLA (n, component) of the components that
    vary or are large, and their total; attention of the state to its RTG token (n, layer, head)."""
    plt = _plt()
    rtg, logits, dla, attn = map(np.asarray, (rtg, logits, dla, attn))
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.4))
    for a, name in enumerate(actions):
        axes[0].plot(rtg, logits[:, a], label=name)
    axes[0].set_title("logits")
    for i, lab in enumerate(labels):
        if np.ptp(dla[:, i]) > 1e-6 or abs(dla[0, i]) > 0.05:
            axes[1].plot(rtg, dla[:, i], label=lab)
    axes[1].plot(rtg, dla.sum(1), "k--", label="total")
    axes[1].set_title(f"DLA onto {direction}")
    for l in range(attn.shape[1]):
        for h in range(attn.shape[2]):
            axes[2].plot(rtg, attn[:, l, h], label=f"L{l}H{h}")
    axes[2].set_title("attention state -> RTG (softmax)")
    for ax in axes:
        for x in (-1, 0, 1):
            ax.axvline(x, color="grey", lw=0.5, ls=":")
        ax.set_xlabel("target RTG")
        ax.legend(fontsize=6, ncol=1 + len(ax.get_lines()) // 12)
    return fig


def _show_map(ax, m, title, vmax=None, cmap="RdBu"):
    m = np.asarray(m)
    vmax = vmax or max(float(np.abs(m).max()), 1e-9)
    im = ax.imshow(m.T, cmap=cmap, vmin=-vmax, vmax=vmax)
    ax.plot(3, 6, "^", color="black", ms=6)
    ax.set_title(title, fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])
    return im


def maps_grid(maps: np.ndarray, row_labels: Sequence[str], col_labels: Sequence[str], suptitle: str):
    """Observation maps (rows, cols, 7, 7) [x, y], with a symmetric colour scale shared per row."""
    plt = _plt()
    maps = np.asarray(maps)
    r, c = maps.shape[:2]
    fig, axes = plt.subplots(r, c, figsize=(2.1 * c + 0.6, 2.1 * r), squeeze=False)
    for i in range(r):
        vmax = float(np.abs(maps[i]).max()) or 1e-9
        for j in range(c):
            im = _show_map(axes[i, j], maps[i, j], f"{row_labels[i]} {col_labels[j]}", vmax)
        fig.colorbar(im, ax=axes[i].tolist(), shrink=0.8)
    fig.suptitle(suptitle, fontsize=10)
    return fig


def embeddings(rtg: np.ndarray, rtg_proj: np.ndarray, rtg_proj_dir: np.ndarray, time_proj: np.ndarray,
               qk_time: np.ndarray, actions: Sequence[str], direction: str, linear_time: bool):
    """RTG token's direct path per action and along the direction (n,); time embedding on the
    direction (T,); QK of the time embedding (query) against the RTG key (layer, head, rows)."""
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.2))
    for a, name in enumerate(actions):
        axes[0].plot(rtg, rtg_proj[:, a], label=name)
    axes[0].plot(rtg, rtg_proj_dir, "k--", label=direction)
    axes[0].set_title("(RTG w_R) . W_U")
    axes[0].set_xlabel("RTG")
    axes[1].plot(np.asarray(time_proj), label=direction)
    axes[1].set_title(f"W_time[t] . {direction}" + (" (linear: t w_t)" if linear_time else ""))
    axes[1].set_xlabel("timestep")
    qk_time = np.asarray(qk_time)
    for l in range(qk_time.shape[0]):
        for h in range(qk_time.shape[1]):
            if linear_time:
                axes[2].bar(l * qk_time.shape[1] + h, qk_time[l, h, 0], label=f"L{l}H{h}")
            else:
                axes[2].plot(qk_time[l, h], label=f"L{l}H{h}")
    axes[2].set_title("QK: W_time (query) . w_R (key)" + (", per unit t" if linear_time else ""))
    axes[2].set_xlabel("head" if linear_time else "timestep")
    for ax in axes:
        ax.legend(fontsize=7)
    return fig


def singular_values(qk_S: np.ndarray, ov_S: np.ndarray):
    """Singular values of W_QK and W_OV (layer, head, r) on a log scale, one line per head."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3))
    for ax, S, name in ((axes[0], qk_S, "W_QK"), (axes[1], ov_S, "W_OV")):
        S = np.asarray(S)
        for l in range(S.shape[0]):
            for h in range(S.shape[1]):
                ax.semilogy(S[l, h] + 1e-12, "o-", ms=3, label=f"L{l}H{h}")
        ax.set_title(f"{name} singular values")
        ax.legend(fontsize=7)
    return fig


def heatmap(matrix: np.ndarray, rows: Sequence[str], columns: Sequence[str], max_annotated: int = 600):
    """A (row, column) matrix on a symmetric colour scale (at least [-1, 1]), NaN blank; values
    written in the cells when there are at most ``max_annotated`` of them."""
    plt = _plt()
    mat = np.asarray(matrix, np.float64)
    n_r, n_c = mat.shape
    fig, ax = plt.subplots(figsize=(4 + 0.6 * n_c, 0.22 * n_r + 1))
    lim = max(1.0, float(np.nanmax(np.abs(mat))) if np.isfinite(mat).any() else 1.0)
    im = ax.imshow(mat, cmap="RdBu", vmin=-lim, vmax=lim, aspect="auto")
    if mat.size <= max_annotated:
        for (i, j), x in np.ndenumerate(mat):
            if np.isfinite(x):
                ax.text(j, i, f"{x:.2f}", ha="center", va="center", fontsize=6)
    ax.set_yticks(range(n_r), rows, fontsize=7)
    ax.set_xticks(range(n_c), columns, fontsize=7, rotation=90 if n_c > 8 else 0)
    fig.colorbar(im, ax=ax)
    return fig


def cosine_square(matrix: np.ndarray, labels: Sequence[str], title: str):
    """A large square similarity matrix (n, n) in [-1, 1], RdBu, every label at a small size
    (the MemoryDT write-up's key/ball cosine heatmap)."""
    plt = _plt()
    mat = np.asarray(matrix, np.float64)
    fig, ax = plt.subplots(figsize=(9, 8))
    im = ax.imshow(mat, cmap="RdBu", vmin=-1, vmax=1)
    ax.set_xticks(range(len(labels)), labels, fontsize=3.5, rotation=90)
    ax.set_yticks(range(len(labels)), labels, fontsize=3.5)
    ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=ax, shrink=0.8)
    return fig


# CIRCUITS (dtjax.report.sections.circuits) ---------------------------------------------------

_KIND_COLOURS = (("component", "tab:blue"), ("residual", "tab:green"), ("attention", "tab:red"))


def atp_scatter(panels: dict, ig_steps: int = 0):
    """Attribution-patching estimates against activation patching, one panel per pair.

    ``panels``: {pair: dict with (node,) ``actp``, ``atp``, ``ig`` (or None), ``kinds`` (node
    colours: "component", "residual", "attention") and ``pearson_atp`` / ``pearson_ig``}
    (``analysis.attribution_panel``).
    """
    plt = _plt()
    fig, axes = plt.subplots(1, len(panels), figsize=(4.8 * len(panels), 4.4), squeeze=False)
    for ax, (pair, p) in zip(axes[0], panels.items()):
        x, y = np.asarray(p["actp"], np.float64), np.asarray(p["atp"], np.float64)
        z = None if p.get("ig") is None else np.asarray(p["ig"], np.float64)
        kinds = np.asarray(p["kinds"])
        vals = np.concatenate([x, y] + ([z] if z is not None else []))
        lim = float(np.nanmax(np.abs(vals))) * 1.05 if np.isfinite(vals).any() else 1.0
        ax.plot([-lim, lim], [-lim, lim], color="grey", lw=0.8)
        for kind, colour in _KIND_COLOURS:
            m = kinds == kind
            if m.any():
                ax.scatter(x[m], y[m], s=14, color=colour, alpha=0.7, label=f"AtP, {kind} hooks")
        if z is not None:
            ax.scatter(x, z, s=10, facecolors="none", edgecolors="black", lw=0.5, alpha=0.5,
                       label=f"AtP-IG ({ig_steps} steps)")
        ax.set_xlabel("activation patching (normalised)")
        ax.set_ylabel("attribution estimate")
        ig = f" (IG {p['pearson_ig']:.3f})" if z is not None else ""
        ax.set_title(f"{pair}: r = {p['pearson_atp']:.3f}{ig}", fontsize=9)
        ax.legend(fontsize=6, loc="upper left")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def circuit_graph(senders: Sequence[str], send_stage: Sequence[int], n_layers: int, edges, scores: dict | None = None,
                  title: str = ""):
    """A circuit's kept edges on a layered layout (``circuits.Graph``'s nodes as plain data).

    Senders sit in columns by stage (embeddings 0, layer l's heads 2l+1, its MLP 2l+2; the MLPs
    below the heads so that no edge runs through a node), the logits last; ``edges`` (sender,
    receiver) with receivers "L1H0.q|k|v", "L0_mlp" or "logits", coloured by the head input they
    feed; ``scores`` {edge: value} sets the line widths (|value|, e.g. EAP scores).
    """
    plt = _plt()
    from matplotlib.patches import FancyArrowPatch

    scores = scores or {}
    col = dict(zip(senders, send_stage))
    col["logits"] = 2 * n_layers + 1
    by_col: dict = {}
    for s in list(senders) + ["logits"]:
        by_col.setdefault(col[s], []).append(s)
    pos = {}
    for c, nodes in by_col.items():
        for i, s in enumerate(nodes):
            pos[s] = (c, (len(nodes) - 1) / 2 - i)
    low = min(y for _, y in pos.values())
    for s in pos:
        if s.endswith("_mlp"):
            pos[s] = (pos[s][0], low - 1.0)
    fig, ax = plt.subplots(figsize=(2.2 * (2 * n_layers + 2), 4.8))
    smax = max([abs(scores.get(tuple(e), 0.0)) for e in edges] + [1e-9])
    styles = {"q": "tab:blue", "k": "tab:orange", "v": "tab:green", "": "black"}
    for s, r in edges:
        tgt, part = (r.split(".") + [""])[:2]
        w = 0.6 + 3.5 * abs(scores.get((s, r), 0.0)) / smax if scores else 1.5
        rad = {"q": -0.12, "k": 0.12, "v": 0.24}.get(part, 0.0)
        if pos[tgt][0] - pos[s][0] > 1:  # edges that skip a column bend around the nodes in between
            rad = rad - 0.3 if part == "q" else rad + 0.25
        ax.add_patch(FancyArrowPatch(pos[s], pos[tgt], arrowstyle="-|>", mutation_scale=10, lw=w, color=styles[part],
                                     alpha=0.8, connectionstyle=f"arc3,rad={rad}", shrinkA=14, shrinkB=14))
    used = {x for s, r in edges for x in (s, r.split(".")[0])}
    for s, (x, y) in pos.items():
        ax.scatter([x], [y], s=900, color="#ffe9b0" if s in used else "white", edgecolors="black", zorder=3)
        ax.text(x, y, s.replace("embed_", "").replace("_mlp", "\nMLP"), ha="center", va="center", fontsize=8, zorder=4)
    for part, colour in styles.items():
        ax.plot([], [], color=colour, label="into MLP / logits" if not part else f"into {part}")
    ax.legend(fontsize=7, loc="lower right")
    ax.set_xlim(-0.6, 2 * n_layers + 1.6)
    ys = [y for _, y in pos.values()]
    ax.set_ylim(min(ys) - 0.8, max(ys) + 0.8)
    ax.axis("off")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


def faithfulness_curve(curves: dict, points: dict | None = None, styles: dict | None = None):
    """Circuit faithfulness against edges kept.

    ``curves``: {label: (n_edges (m,), faithfulness (m,))} drawn as lines (e.g. the top-n edges
    by |EAP| and by |EAP-IG|); ``points``: {label: (n_edges, faithfulness)}, scalars or arrays,
    drawn as crosses (e.g. ACDC's circuit, or its circuits at several thresholds); ``styles``:
    {label: matplotlib keyword arguments} overriding a curve's or points' defaults (e.g. one
    colour per pair).
    """
    plt = _plt()
    styles = styles or {}
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for (label, (n, f)), ls in zip(curves.items(), ("-", ":", "--", "-.") * 4):
        ax.plot(np.asarray(n), np.asarray(f, np.float64), **{"ls": ls, "marker": ".", "label": label, **styles.get(label, {})})
    for label, (n, f) in (points or {}).items():
        ax.scatter(np.atleast_1d(n), np.atleast_1d(np.asarray(f, np.float64)),
                   **{"marker": "x", "s": 60, "color": "black", "zorder": 3, "label": label, **styles.get(label, {})})
    ax.set_xscale("symlog", linthresh=1)
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.axhline(0.0, color="grey", lw=0.5)
    ax.set_xlabel("edges kept")
    ax.set_ylabel("faithfulness (metric recovered)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def lines(x_labels: Sequence[str], series: dict, ylabel: str, title: str = ""):
    """One line per series over categorical x (e.g. the logit lens over accumulated residuals)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(5.0, 0.6 * len(x_labels) + 2), 3.6))
    for name, y in series.items():
        ax.plot(range(len(x_labels)), np.asarray(y, np.float64), "o-", ms=4, label=name)
    ax.set_xticks(range(len(x_labels)), x_labels, fontsize=8, rotation=45 if len(x_labels) > 6 else 0)
    ax.axhline(0, color="k", lw=0.5)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def composition(scores: dict, labels: Sequence[str], chance: float | None = None):
    """Q, K and V composition scores, sender head rows, receiver head columns ({mode: (n, n)},
    NaN where the receiver is not in a later layer); ``chance`` (e.g. 1/sqrt(d_model)) in the titles."""
    plt = _plt()
    mats = {m: np.asarray(s, np.float64) for m, s in scores.items()}
    vmax = max([float(np.nanmax(m)) for m in mats.values() if np.isfinite(m).any()] + [1e-6])
    n = len(labels)
    fig, axes = plt.subplots(1, len(mats), figsize=(1.2 + 3.6 * len(mats), 0.3 * n + 2), squeeze=False)
    for ax, (mode, m) in zip(axes[0], mats.items()):
        im = ax.imshow(m, cmap="viridis", vmin=0, vmax=vmax)
        if m.size <= 400:
            for (i, j), x in np.ndenumerate(m):
                if np.isfinite(x):
                    ax.text(j, i, f"{x:.2f}", ha="center", va="center", fontsize=6, color="w")
        ax.set_xticks(range(n), labels, fontsize=7, rotation=90)
        ax.set_yticks(range(n), labels, fontsize=7)
        ax.set_xlabel("receiver")
        if ax is axes[0, 0]:
            ax.set_ylabel("sender")
        ax.set_title(f"{mode}-composition" + (f" (chance ~{chance:.3f})" if chance else ""), fontsize=9)
    fig.colorbar(im, ax=axes[0].tolist())
    return fig


def steering(coeff: np.ndarray, metric: np.ndarray, clean: float, corrupted: float, p_forward: np.ndarray,
             ylabel: str, returns: dict | None = None):
    """A coefficient scan of steering: the metric (with the clean and corrupted levels) and
    P(forward) against the coefficient; ``returns`` {name: (coeff (m,), values (m,))} a second
    panel of closed-loop numbers (mean return, goal and collision rates)."""
    plt = _plt()
    n = 2 if returns else 1
    fig, axes = plt.subplots(1, n, figsize=(5.2 * n, 3.8), squeeze=False)
    ax = axes[0, 0]
    ax.plot(coeff, metric, "o-", label=ylabel)
    ax.axhline(clean, color="tab:green", ls="--", lw=0.8, label="clean")
    ax.axhline(corrupted, color="tab:red", ls="--", lw=0.8, label="corrupted")
    ax.set_xlabel("coefficient")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    tw = ax.twinx()
    tw.plot(coeff, p_forward, "s:", color="tab:purple", ms=3, label="P(forward)")
    tw.set_ylim(-0.02, 1.02)
    tw.set_ylabel("P(forward)")
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = tw.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, fontsize=7)
    if returns:
        ax = axes[0, 1]
        for name, (c, y) in returns.items():
            ax.plot(c, y, "o-", label=name)
        ax.set_xlabel("coefficient")
        ax.set_ylim(-1.05, 1.05)
        ax.axhline(0, color="k", lw=0.5)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        ax.set_title("closed loop", fontsize=9)
    fig.tight_layout()
    return fig


# SPARSE DICTIONARIES ------------------------------------------------------------------------


def latent_cards(views: np.ndarray, titles: Sequence[Sequence[str]], labels: Sequence[str], dla: np.ndarray | None,
                 action_labels: Sequence[str]):
    """One row per latent: its top-activating views and the direct logit effect of its decoder
    direction on each action.

    ``views`` (latents, n, 7, 7, 3) RGB (``scenarios.render_view``); ``titles`` (latents, n), an
    empty title leaves that cell blank (the latent fired on fewer tokens); ``labels`` (latents,)
    the row labels; ``dla`` (latents, n_actions) or None (no direct path to the logits).
    """
    plt = _plt()
    views = np.asarray(views)
    n_lat, n = views.shape[:2]
    n_cols = n + int(dla is not None)
    fig, axes = plt.subplots(n_lat, n_cols, figsize=(1.25 * n_cols + 1.4, 1.45 * n_lat), squeeze=False)
    for r in range(n_lat):
        for c in range(n):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if titles[r][c]:
                ax.imshow(views[r, c])
                ax.set_title(titles[r][c], fontsize=6)
            else:  # blank, but keep the axes: the row label lives on the first one
                for side in ax.spines.values():
                    side.set_visible(False)
        axes[r, 0].set_ylabel(labels[r], fontsize=6, rotation=0, ha="right", va="center")
        if dla is not None:
            ax = axes[r, n]
            ax.bar(range(len(action_labels)), np.asarray(dla)[r], color=["tab:blue", "tab:orange", "tab:green"])
            ax.set_xticks(range(len(action_labels)), [s[0].upper() for s in action_labels], fontsize=6)
            ax.tick_params(labelsize=5)
            ax.axhline(0, color="k", lw=0.5)
            ax.set_title("DLA / unit", fontsize=6)
    fig.tight_layout()
    return fig


def probe_recovery(curves: dict, threshold: float, n_probes: int):
    """Best single-latent AUROC per probe, each curve sorted in decreasing order.

    ``curves``: {label: (n_probes,) AUROCs} (the dictionary, then baselines); ``threshold`` the
    AUROC a probe counts as recovered at (a dashed line).
    """
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(6.0, 0.05 * n_probes + 2), 3.2))
    for i, (label, auc) in enumerate(curves.items()):
        auc = np.sort(np.nan_to_num(np.asarray(auc, np.float64), nan=0.5))[::-1]
        ax.plot(np.arange(len(auc)), auc, "-" if i == 0 else "--", lw=1.5 if i == 0 else 1, label=label)
    ax.axhline(threshold, color="k", lw=0.5, ls=":")
    ax.set_ylabel("best single-latent AUROC")
    ax.set_xlabel(f"{n_probes} probes, each curve sorted")
    ax.set_ylim(0.45, 1.01)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    return fig


# MECHANISM CENSUS ---------------------------------------------------------------------------


def census_shares(results: dict[str, dict]):
    """One panel per census (name -> ``dtjax.census.census`` result): each model's share of the
    ball-ahead veto carried by each component (one line per model), blue where the model has the
    head circuit (veto and gate carried by one head), orange where it does not."""
    plt = _plt()
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
    return fig


def dynamics_curves(steps: np.ndarray, series: dict[str, np.ndarray], commit_steps: np.ndarray | None = None,
                    title: str = ""):
    """Training dynamics: one panel per metric (``series``: name -> (seeds, checkpoints)), one line
    per seed over the checkpoint ``steps``, each seed's commit step (``dtjax.dynamics``) marked
    as a dot on its line (``commit_steps`` (seeds,))."""
    plt = _plt()
    n = len(series)
    cols = min(n, 3)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False)
    steps = np.asarray(steps)
    colours = plt.cm.tab20(np.linspace(0, 1, 20))
    for ax, (name, y) in zip(axes.flat, series.items()):
        y = np.asarray(y, np.float64)
        for s in range(y.shape[0]):
            ax.plot(steps, y[s], "-", lw=1, color=colours[s % 20], alpha=0.85)
            if commit_steps is not None:
                i = int(np.searchsorted(steps, commit_steps[s]))
                ax.plot(steps[i], y[s, i], "o", ms=3, color=colours[s % 20])
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def class_timeline(steps: np.ndarray, classes: np.ndarray, names: Sequence[str], commit_steps: np.ndarray | None = None,
                   seed_labels: Sequence[str] | None = None, title: str = ""):
    """A class per seed (rows) and checkpoint (columns): ``classes`` (seeds, checkpoints) indexes
    ``names``; each seed's commit step outlined in black."""
    plt = _plt()
    classes = np.asarray(classes)
    S, C = classes.shape
    fig, ax = plt.subplots(figsize=(max(6.0, 0.3 * C + 3.5), 0.28 * S + 1.6))
    cmap = plt.get_cmap("tab10", max(len(names), 1))
    ax.imshow(classes, cmap=cmap, vmin=-0.5, vmax=len(names) - 0.5, aspect="auto", interpolation="nearest")
    if commit_steps is not None:
        for s in range(S):
            i = int(np.searchsorted(np.asarray(steps), commit_steps[s]))
            ax.add_patch(plt.Rectangle((i - 0.5, s - 0.5), 1, 1, fill=False, lw=1.5, ec="k"))
    ticks = np.unique(np.linspace(0, C - 1, min(C, 11)).astype(int))
    ax.set_xticks(ticks, [str(int(steps[i])) for i in ticks], fontsize=7)
    ax.set_yticks(range(S), seed_labels if seed_labels is not None else [str(s) for s in range(S)], fontsize=7)
    ax.set_xlabel("step")
    handles = [plt.Rectangle((0, 0), 1, 1, color=cmap(k)) for k in range(len(names))]
    ax.legend(handles, names, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def rtg_time(rtg: np.ndarray, timesteps: np.ndarray, probs: np.ndarray, gate: np.ndarray, dla: np.ndarray,
             labels: Sequence[str], at: Sequence[int], actions: Sequence[str], direction: str):
    """One state's RTG gate against time: the greedy action over (timestep, target RTG) with the gate
    (``analysis.rtg_gate_stats``) drawn on it, then per chosen RTG (indices ``at``) each varying
    component's DLA onto ``direction`` against the timestep. ``probs`` (T, R, n_actions), ``gate``
    (T,) or (2, T) (the gate, then the low gate), ``dla`` (T, R, component)."""
    plt = _plt()
    rtg, timesteps, probs, gate, dla = map(np.asarray, (rtg, timesteps, probs, gate, dla))
    fig, axes = plt.subplots(1, 1 + len(at), figsize=(4.4 * (1 + len(at)), 3.4), squeeze=False)
    ax = axes[0, 0]
    cmap = plt.get_cmap("tab10", len(actions))
    im = ax.imshow(probs.argmax(-1).T, origin="lower", aspect="auto", cmap=cmap, vmin=-0.5, vmax=len(actions) - 0.5,
                   extent=(timesteps[0], timesteps[-1], rtg[0], rtg[-1]), interpolation="nearest")
    gate = gate.reshape(-1, len(timesteps))
    ax.plot(timesteps, gate[0], "k--", lw=1.2, label="gate")
    if len(gate) > 1:
        ax.plot(timesteps, gate[1], "k:", lw=1.2, label="low gate")
    ax.set_xlabel("timestep")
    ax.set_ylabel("target RTG")
    ax.set_title("greedy action", fontsize=9)
    bar = fig.colorbar(im, ax=ax, ticks=range(len(actions)))
    bar.ax.set_yticklabels(list(actions), fontsize=7)
    for ax, j in zip(axes[0, 1:], at):
        for i, lab in enumerate(labels):
            if np.ptp(dla[:, j, i]) > 0.05:
                ax.plot(timesteps, dla[:, j, i], label=lab)
        ax.plot(timesteps, dla[:, j].sum(-1), "k--", label="total")
        ax.axhline(0, color="grey", lw=0.5, ls=":")
        ax.set_title(f"DLA onto {direction} at RTG {rtg[j]:+.2f}", fontsize=9)
        ax.set_xlabel("timestep")
        ax.legend(fontsize=6)
    fig.tight_layout()
    return fig
