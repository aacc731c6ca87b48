"""Figures and a small HTML page of one dictionary's analysis (``dtjax.sae.analysis.analyse``).

``latent_cards`` draws, for chosen latents, the top-activating views (``scenarios.render_view``:
empty black, wall grey, ball blue, goal green, the agent red at the bottom centre), the encoder's
ball-vs-empty map through ``W_state`` (drawn as the agent sees it), and the direct logit effect
on (left, right, forward). ``write_html`` puts them with the metric and probe tables in one file.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import numpy as np


def choose_latents(a: dict, n: int = 16) -> list[int]:
    """The best latent of each recovered probe (strongest first), then the most frequent latents."""
    p = a["probes"]
    order = np.argsort(-np.nan_to_num(p["best_auc"], nan=-1))
    chosen = []
    for i in order:
        if p["recovered"][i] and int(p["best_latent"][i]) not in chosen:
            chosen.append(int(p["best_latent"][i]))
    for j in np.argsort(-a["latents"]["density"]):
        if len(chosen) >= n:
            break
        if int(j) not in chosen:
            chosen.append(int(j))
    return chosen[:n]


def latent_cards(a: dict, path, latents: list[int] | None = None, n_views: int = 6) -> None:
    """A PNG with one row per latent: top views, ball-vs-empty encoder map, direct logit effect."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from dtjax.scenarios import render_view

    lat = a["latents"]
    latents = choose_latents(a) if latents is None else latents
    has_map, has_dla = lat["object_maps"] is not None, lat["dla"] is not None
    n_cols = n_views + int(has_map) + int(has_dla)
    fig, axes = plt.subplots(len(latents), n_cols, figsize=(1.25 * n_cols + 1.2, 1.45 * len(latents)), squeeze=False)
    for r, j in enumerate(latents):
        for c in range(n_views):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if lat["top_index"][j, c] >= 0:
                ax.imshow(render_view(lat["top_obs"][j, c]))
                ax.set_title(f"{lat['top_act'][j, c]:.2f} R{lat['top_rtg'][j, c]:+.1f} t{lat['top_timestep'][j, c]}",
                             fontsize=6)
            else:
                ax.axis("off")
        axes[r, 0].set_ylabel(f"#{j}\n{lat['density'][j]:.2%}\n{lat['best_probe'][j]}\n{lat['best_probe_auc'][j]:.2f}",
                              fontsize=6, rotation=0, ha="right", va="center")
        c = n_views
        if has_map:
            m = lat["object_maps"][j, 1].T  # ball vs empty, rows = view y
            v = max(np.abs(m).max(), 1e-9)
            axes[r, c].imshow(m, cmap="RdBu_r", vmin=-v, vmax=v)
            axes[r, c].set_title("enc: ball-empty", fontsize=6)
            axes[r, c].set_xticks([])
            axes[r, c].set_yticks([])
            c += 1
        if has_dla:
            axes[r, c].bar(range(len(lat["action_labels"])), lat["dla"][j], color=["tab:blue", "tab:orange", "tab:green"])
            axes[r, c].set_xticks(range(len(lat["action_labels"])), [s[0].upper() for s in lat["action_labels"]], fontsize=6)
            axes[r, c].tick_params(labelsize=5)
            axes[r, c].axhline(0, color="k", lw=0.5)
            axes[r, c].set_title("DLA / unit", fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def probe_figure(a: dict, path) -> None:
    """Best AUROC per valid probe: the dictionary against its random initialisation and the basis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    p, b = a["probes"], a["baselines"]
    v = np.flatnonzero(p["valid"])
    order = v[np.argsort(-np.nan_to_num(p["best_auc"][v]))]
    fig, ax = plt.subplots(figsize=(max(6, 0.06 * len(order) + 2), 3.2))
    x = np.arange(len(order))
    ax.plot(x, p["best_auc"][order], ".", ms=4, label=f"dictionary ({p['recovered_frac']:.0%} >= {p['threshold']})")
    ax.plot(x, b["random_init"]["best_auc"][order], ".", ms=3, alpha=0.6,
            label=f"random init ({b['random_init']['recovered_frac']:.0%})")
    ax.plot(x, b["basis"]["best_auc"][order], ".", ms=3, alpha=0.6, label=f"basis ({b['basis']['recovered_frac']:.0%})")
    ax.axhline(p["threshold"], color="k", lw=0.5, ls="--")
    ax.set_ylabel("best single-latent AUROC")
    ax.set_xlabel(f"{len(order)} probes (sorted by the dictionary's AUROC)")
    ax.set_ylim(0.45, 1.01)
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _img(path) -> str:
    return f'<img src="data:image/png;base64,{base64.b64encode(Path(path).read_bytes()).decode()}">'


def _table(rows: list[dict]) -> str:
    if not rows:
        return "<p>(none)</p>"
    head = "".join(f"<th>{html.escape(str(k))}</th>" for k in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in r.values()) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, list):
        return ", ".join(_fmt(x) for x in v)
    return str(v)


def write_html(a: dict, s: dict, out_dir) -> Path:
    """``out_dir/report.html`` (self-contained) with ``latents.png`` and ``probes.png`` beside it."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    latent_cards(a, out_dir / "latents.png")
    probe_figure(a, out_dir / "probes.png")
    recon = [{"token": t, **{k: m[k] for k in ("n_tokens", "l0", "explained_variance", "mse", "cossim", "dead_frac",
                                               "dense_frac")}} for t, m in s["reconstruction"].items()]
    down = [{k: v for k, v in s["downstream"].items()}]
    cl = s.get("closed_loop")
    cl_rows = [] if not cl else [{"target RTG": r, "model": m, "with dictionary": x, "diff": d, "se": e}
                                 for r, m, x, d, e in zip(cl["target_rtg"], cl["model_return"], cl["sae_return"],
                                                          cl["return_diff"], cl["diff_se"])]
    pr = s["probes"]
    fam = [{"family": f, **c} for f, c in pr["recovered_by_family"].items()]
    parts = [
        "<html><head><meta charset='utf-8'><title>dtjax.sae</title><style>body{font-family:sans-serif;max-width:1200px}"
        "table{border-collapse:collapse;font-size:12px}td,th{border:1px solid #ccc;padding:2px 6px}img{max-width:100%}</style>"
        "</head><body>",
        f"<h1>{html.escape(s['sae']['hook'])} @ {html.escape(s['sae']['token'])} tokens: "
        f"{html.escape(s['sae']['arch'])} {'transcoder' if s['sae']['transcoder'] else 'SAE'}, "
        f"{s['sae']['n_latents']} latents</h1><p>model {html.escape(s['model'])}; dataset {html.escape(s['dataset'])}</p>",
        "<h2>Reconstruction (per token type)</h2>", _table(recon),
        "<h2>Spliced in (action CE / KL on the dataset's windows)</h2>", _table(down),
        "<h2>Closed loop (mean return, same episodes)</h2>", _table(cl_rows),
        f"<h2>Ground-truth probes: {pr['recovered_frac']:.1%} of {pr['n_valid']} recovered (AUROC >= {pr['threshold']})</h2>",
        f"<p>baselines: {html.escape(str(pr['baseline_recovered_frac']))}</p>", _table(fam), _img(out_dir / "probes.png"),
        "<h2>Latents</h2><p>Rows: latent id, firing rate, best probe and its AUROC; top-activating views "
        "(activation, RTG, timestep); the encoder's ball-vs-empty map through W_state; direct logit effect per unit.</p>",
        _img(out_dir / "latents.png"),
        "<h2>Probe table</h2>", _table(pr["table"]), "</body></html>",
    ]
    path = out_dir / "report.html"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("\n".join(parts))
    tmp.replace(path)
    return path


def save_arrays(a: dict, path) -> None:
    """The analysis's arrays in one ``.npz`` (for an explorer): latents/*, probes/*, reconstruction/<token>/density."""
    flat = {}
    for k, v in a["latents"].items():
        if isinstance(v, np.ndarray):
            flat[f"latents/{k}"] = v
    for k in ("n_pos", "valid", "best_latent", "best_auc", "recovered", "latent_best_probe", "latent_best_auc"):
        flat[f"probes/{k}"] = np.asarray(a["probes"][k])
    flat["probes/names"] = np.asarray(a["probes"]["names"])
    flat["latents/best_probe"] = np.asarray(a["latents"]["best_probe"])
    for t, m in a["reconstruction"].items():
        flat[f"reconstruction/{t}/density"] = m["density"]
    buf = io.BytesIO()
    np.savez_compressed(buf, **flat)
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(buf.getvalue())
    tmp.replace(path)
