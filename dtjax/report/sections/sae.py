"""The "sae" section (opt-in: ``analyse.py --sae SAE_DIR``): sparse dictionaries of the model.

For each dictionary of ``ReportOptions.sae_dirs`` (a directory written by ``python -m dtjax.sae
train``, or a folder of them such as ``RUN/sae``), ``dtjax.sae.analyse`` on held-out windows of
the dataset it was trained on: its configuration and quality (L0, explained variance, dead and
dense fractions, action CE / KL recovered with it spliced in against zero- and mean-ablation of
its hook; closed-loop returns with it spliced into every step when ``options.closed_loop``), the
top latents by activation frequency and by |DLA| (each with its decoder's direct logit effect,
its encoder direction through ``W_state`` as 7x7 maps, its best ground-truth probe and AUROC, its
top-activating views), and the fraction of probes some latent recovers (AUROC >= 0.9) against two
baselines. A dictionary of another model's width or hook fails ``check``: one line, nothing written.

``eval_page`` renders one dictionary the same way on a page of its own: ``python -m dtjax.sae
eval``'s ``eval/report.html``.
"""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np

from dtjax import analysis as A
from dtjax import circuits as C
from dtjax import plots, sae
from dtjax import scenarios as S
from dtjax.config import ModelConfig
from dtjax.report.base import CHANNELS, Context, Page, ReportError, ReportOptions, Section, rounded
from dtjax.sae import SAEError, store
from dtjax.sae.activations import check_site

N_VIEWS = 6  # top-activating views per latent card


def _paths(opt: ReportOptions) -> list[Path]:
    """The dictionary directories named by ``sae_dirs`` (a folder of dictionaries expands to all)."""
    out = []
    for p in opt.sae_dirs:
        found = store.find(p)
        if not found:
            raise ReportError(f"--sae {p}: no dtjax SAE directory there (needs config.json and ckpt/, or sub-directories that have them)")
        out += [f for f in found if f not in out]
    return out


def _open(ctx: Context, path: Path):
    """(dictionary, dataset path, notes) of one directory, checked against the report's model."""
    def load():
        notes = []
        try:
            d = store.load(path)
            _, d_in, d_out = check_site(ctx.cfg, d.cfg.hook, d.cfg.token, d.cfg.transcoder)
            if (d_in, d_out) != (d.cfg.d_in, d.cfg.d_out):
                raise SAEError(f"the dictionary reads width {d.cfg.d_in} at {d.cfg.hook}; this model's is {d_in} "
                               f"(a dictionary of another model)")
            try:
                dataset = store.resolve_recorded(d.meta.get("dataset", {}), path)
            except SAEError:
                try:
                    dataset = store.resolve_dataset(ctx.run, None)  # the report model's own, if it is a run
                except SAEError:
                    raise SAEError(f"its dataset {d.meta.get('dataset', {}).get('path')} is gone and {ctx.ckpt} has "
                                   f"none of its own to analyse it on") from None
                notes.append(f"its training dataset is gone; analysed on {dataset}")
        except SAEError as e:
            raise ReportError(f"--sae {path}: {e}") from None
        recorded = d.meta.get("model", {}).get("path")
        if recorded and not _same_model(Path(recorded), ctx.ckpt):
            notes.append(f"trained on {recorded}, analysed on {ctx.ckpt} (same width)")
        return d, Path(dataset).resolve(), notes

    return ctx.memo(f"sae:{path}", load)


def _same_model(a: Path, b: Path) -> bool:
    """The same checkpoint, or a copy of it (a ``.pt`` of the same name and size, a run of the same name)."""
    if a.exists() and a.resolve() == b.resolve():
        return True
    if a.name != b.name or a.is_file() != b.is_file():
        return False
    return not a.is_file() or a.stat().st_size == b.stat().st_size


def sae_enabled(opt: ReportOptions) -> bool:
    return bool(opt.sae_dirs)


def sae_check(ctx: Context) -> None:
    for p in _paths(ctx.options):
        _open(ctx, p)


def _rank(lat: dict, n: int) -> tuple[list[int], list[int]]:
    """(by activation frequency, by largest |DLA|) latent indices, among the latents that fire on
    the analysis tokens (those with top-activating views)."""
    density = np.asarray(lat["density"])
    alive = np.flatnonzero((density > 0) & (np.asarray(lat["top_index"])[:, 0] >= 0))
    freq = alive[np.argsort(-density[alive], kind="stable")][:n]
    if lat["dla"] is None:
        return [int(j) for j in freq], []
    score = np.abs(np.asarray(lat["dla"])[alive]).max(1)
    return [int(j) for j in freq], [int(j) for j in alive[np.argsort(-score, kind="stable")][:n]]


def dictionary_data(ctx: Context, path: Path) -> dict:
    """One dictionary's plain data for the section (and its summary entry)."""
    o = ctx.options
    d, dataset, notes = _open(ctx, path)
    sctx = sae.open_context(ctx.ckpt, dataset)
    a = sae.analyse(sctx, d, n_tokens=o.sae_tokens, n_analysis=o.sae_analysis_tokens, episodes=o.ablation_episodes,
                    rtgs=o.ablation_rtgs, closed_loop=o.closed_loop, n_top=N_VIEWS)
    return entry_data(a, sae.summary(a), path, dataset, notes, ctx.cfg, ctx.direction_spec, o.sae_latents)


def entry_data(a: dict, s: dict, path: Path, dataset: Path, notes: list[str], cfg: ModelConfig,
               direction: str = "forward-right", n_latents: int = 6) -> dict:
    """What ``render_dictionary`` draws of one dictionary, from ``sae.analyse``'s result ``a`` and
    its ``sae.summary`` ``s``: the top ``n_latents`` latents by activation frequency and by |DLA|
    (their DLA read along ``direction``), the probe curves and tables, and the summary entry."""
    lat, pr, base = a["latents"], a["probes"], a["baselines"]
    by_freq, by_dla = _rank(lat, n_latents)
    shown = list(dict.fromkeys(by_freq + by_dla))
    v = np.asarray(A.direction(direction, cfg))
    channels = CHANNELS[cfg.obs_mode]
    latents = []
    for j in shown:
        n_act = int((lat["top_index"][j] >= 0).sum())
        latents.append({
            "index": j, "ranked": ("frequency" if j in by_freq else "") + (" |DLA|" if j in by_dla else ""),
            "density": float(lat["density"][j]), "mean_act": float(lat["mean_act"][j]),
            "dla": None if lat["dla"] is None else np.asarray(lat["dla"][j]),
            "dla_direction": None if lat["dla"] is None else float(np.asarray(lat["dla"][j]) @ v),
            "best_probe": lat["best_probe"][j], "best_auc": float(lat["best_probe_auc"][j]),
            "views": np.stack([S.render_view(x) for x in lat["top_obs"][j]]),
            "view_titles": [f"{lat['top_act'][j, c]:.2f} R{lat['top_rtg'][j, c]:+.1f} t{lat['top_timestep'][j, c]}"
                            if c < n_act else "" for c in range(lat["top_obs"].shape[1])],
            "object_maps": None if lat["object_maps"] is None else np.asarray(lat["object_maps"][j]),
            "channel_maps": None if lat["encoder_maps"] is None else np.asarray(lat["encoder_maps"][j])[list(channels)],
        })
    valid = np.flatnonzero(pr["valid"])
    probe_rows = [[pr["names"][i], int(pr["n_pos"][i]), int(pr["best_latent"][i]), float(pr["best_auc"][i]),
                   float(base["random_init"]["best_auc"][i]), float(base["basis"]["best_auc"][i])]
                  for i in valid if pr["families"][i] != "cell"]
    token = s["sae"]["token"]
    summary = {"path": str(path), "sae": s["sae"], "train": s["train"], "reconstruction": s["reconstruction"],
               "downstream": s["downstream"], "closed_loop": s["closed_loop"],
               "probes": {k: v for k, v in s["probes"].items() if k != "table"},
               "latents_shown": [{"latent": e["index"], "ranked": e["ranked"].strip(), "density": round(e["density"], 5),
                                  "best_probe": e["best_probe"], "auroc": round(e["best_auc"], 4),
                                  **({"dla": rounded(e["dla"], 3)} if e["dla"] is not None else {})} for e in latents]}
    return {
        "path": str(path), "name": Path(path).name, "sae": s["sae"], "train": s["train"], "dataset": str(dataset),
        "notes": notes, "reconstruction": s["reconstruction"], "own": s["reconstruction"][token], "downstream": s["downstream"],
        "closed_loop": s["closed_loop"], "latents": latents, "action_labels": lat["action_labels"],
        "object_labels": lat["object_labels"], "channel_names": list(channels.values()), "direction": C.direction_label(direction),
        "probe_curves": {"dictionary": pr["best_auc"][valid],
                         f"random init ({base['random_init']['recovered_frac']:.0%})": base["random_init"]["best_auc"][valid],
                         f"basis ({base['basis']['recovered_frac']:.0%})": base["basis"]["best_auc"][valid]},
        "probes": {"threshold": pr["threshold"], "n_valid": pr["n_valid"], "recovered_frac": pr["recovered_frac"],
                   "recovered_by_family": pr["recovered_by_family"],
                   "baseline_recovered_frac": {k: base[k]["recovered_frac"] for k in ("random_init", "basis")},
                   "baseline_labels": base["labels"], "rows": probe_rows},
        "summary": summary,
    }


def sae_compute(ctx: Context) -> dict:
    entries = [dictionary_data(ctx, p) for p in _paths(ctx.options)]
    notes = [f"{e['name']}: {n}" for e in entries for n in e["notes"]]
    if ctx.options.sae_tokens < 262_144:
        notes.append(f"dead and dense fractions over {ctx.options.sae_tokens} held-out tokens: a latent that fires "
                     "rarely counts as dead on fewer tokens (python -m dtjax.sae eval uses 262,144)")
    if not ctx.options.closed_loop:
        notes.append("no closed-loop returns with the dictionaries spliced in (--no-closed-loop)")
    return {"dictionaries": entries, "notes": notes, "summary": {"sae": [e["summary"] for e in entries]}}


def render_dictionary(e: dict, page: Page) -> None:
    """One dictionary's part of a page (``entry_data``'s result): tables, latent cards, encoder maps, probes."""
    c, tr = e["sae"], e["train"] or {}
    kind = "transcoder" if c["transcoder"] else "SAE"
    sparsity = f"k = {c['k']}" if c["arch"] != "jumprelu" else "JumpReLU thresholds"
    page.text(f"<b>{e['name']}</b>: a {c['arch']} {kind} of {c['n_latents']} latents ({sparsity}) at "
              f"<code>{c['hook']}</code>, {c['token']} tokens (d_in {c['d_in']}), trained on "
              f"{tr.get('n_train_tokens') or '?'} tokens; evaluated on held-out windows of <code>{e['dataset']}</code>.")
    page.table(["token", "tokens", "L0", "explained var", "cos sim", "dead", "dense"],
               [[t, int(m["n_tokens"]), f"{m['l0']:.1f}", f"{m['explained_variance']:.3f}", f"{m['cossim']:.3f}",
                 f"{m['dead_frac']:.1%}", f"{m['dense_frac']:.1%}"] for t, m in e["reconstruction"].items()],
               "Reconstruction per token type at the hook (the dictionary's own type first; the others show how "
               "specific it is). Dead: never active on these tokens; dense: active on more than 10% of them.")
    ds = e["downstream"]
    page.table(["CE clean", "CE spliced", "CE zero-abl", "CE mean-abl", "CE rec. vs zero", "CE rec. vs mean", "KL spliced",
                "KL rec. vs zero", "KL rec. vs mean"],
               [[float(ds[k]) for k in ("ce_clean", "ce_sae", "ce_zero", "ce_mean", "ce_loss_score_zero",
                                        "ce_loss_score_mean", "kl_sae", "kl_div_score_zero", "kl_div_score_mean")]],
               f"Action cross-entropy (against the dataset's actions) and KL to the clean model over {ds['n_tokens']} "
               "tokens with the dictionary spliced in at its tokens; recovered = (ablated - spliced) / (ablated - clean).")
    cl = e["closed_loop"]
    if cl:
        ends = [o for o in cl.get("outcomes", []) if o != "timeout"]  # the task's outcomes (goal, hit; success, wrong)
        page.table(["target RTG", "model return", "spliced return", "difference", "SE of the difference"]
                   + [f"{who} {o}" for o in ends for who in ("model", "spliced")],
                   [[float(r), float(m), float(x), float(dd), float(se)]
                    + [float(cl[f"{who}_{o}"][i]) for o in ends for who in ("model", "sae")]
                    for i, (r, m, x, dd, se) in enumerate(zip(cl["target_rtg"], cl["model_return"], cl["sae_return"],
                                                              cl["return_diff"], cl["diff_se"]))],
                   f"Closed-loop mean return and outcome rates over {cl['n_episodes']} episodes per target (the same "
                   "episodes), the dictionary spliced into every step.")
    lats = e["latents"]
    if lats:
        dla = None if lats[0]["dla"] is None else np.stack([x["dla"] for x in lats])
        labels = [f"#{x['index']} ({x['ranked'].strip()})\n{x['density']:.2%} active\n{x['best_probe']}\nAUROC {x['best_auc']:.2f}"
                  + ("" if x["dla_direction"] is None else f"\nDLA {e['direction']} {x['dla_direction']:+.2f}") for x in lats]
        page.figure(plots.latent_cards(np.stack([x["views"] for x in lats]), [x["view_titles"] for x in lats], labels, dla,
                                       e["action_labels"]),
                    "Top latents by activation frequency and by largest |DLA|: each row gives the latent's firing "
                    "rate, its best ground-truth probe and AUROC, its top-activating held-out views (activation, RTG "
                    "token, timestep; grey wall, yellow key, blue ball, green goal, red agent) and the direct logit effect of one "
                    "unit of it (its decoder row through W_U; later layers not included).")
        if lats[0]["object_maps"] is not None:
            maps = np.stack([np.concatenate([x["object_maps"], x["channel_maps"]]) for x in lats])
            cols = [f"{o}-empty" for o in e["object_labels"]] + e["channel_names"]
            page.figure(plots.maps_grid(maps, [f"#{x['index']}" for x in lats], cols, "encoder direction through W_state"),
                        "Each latent's encoder direction read through W_state (the observation's direct path into its "
                        "pre-activation, per unit of code), as seen by the agent (bottom centre, facing up): the "
                        f"change when a view cell holds a {' / '.join(e['object_labels'])} instead of empty floor, then per channel.")
        else:
            page.note("The dictionary's input does not contain the state embedding directly: no encoder maps.")
    p = e["probes"]
    fam = ", ".join(f"{f} {c['recovered']}/{c['valid']}" for f, c in p["recovered_by_family"].items())
    bl = p["baseline_recovered_frac"]
    page.text(f"Ground-truth probes: <b>{p['recovered_frac']:.1%}</b> of {p['n_valid']} recovered by some latent "
              f"(AUROC &ge; {p['threshold']}): {fam}. Baselines: {bl['random_init']:.1%} for "
              f"{p['baseline_labels']['random_init']}, {bl['basis']:.1%} for {p['baseline_labels']['basis']}.")
    page.figure(plots.probe_recovery(e["probe_curves"], p["threshold"], p["n_valid"]),
                "Best single-latent AUROC per valid probe for the dictionary and the baselines (each sorted).")
    page.table(["probe", "positives", "best latent", "AUROC", "random init", "basis"],
               [[n, k, j, *(f"{x:.3f}" for x in aucs)] for n, k, j, *aucs in p["rows"]],
               "The probes other than the view-cell ones: best latent and AUROC, and the baselines' best.")


def sae_render(data: dict, page: Page) -> None:
    for e in data["dictionaries"]:
        render_dictionary(e, page)


def eval_page(a: dict, s: dict, path: Path, dataset: Path, cfg: ModelConfig, direction: str = "forward-right",
              n_latents: int = 8, dpi: int = 90) -> str:
    """``python -m dtjax.sae eval``'s ``report.html`` (self-contained): one dictionary's part of the
    report's "SAE features" section on its own page, from ``sae.analyse``'s result ``a``, its
    ``sae.summary`` ``s`` and the model's ``cfg``."""
    e = entry_data(a, s, Path(path), dataset, [], cfg, direction, n_latents)
    page = Page(f"dtjax.sae eval: {e['name']}", dpi)
    page.section("sae", f"SAE features: {s['sae']['hook']} @ {s['sae']['token']} tokens")
    page.text(f"Model <code>{html.escape(str(Path(s['model']).resolve()))}</code>.")
    render_dictionary(e, page)
    return page.render()


SECTIONS = (
    Section("sae", "SAE features", sae_compute, sae_render, order=140, enabled=sae_enabled, check=sae_check),
)
