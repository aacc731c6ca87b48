"""The MemoryDT write-up's analyses on a Memory model (`dtjax.circuits.memory`): "memory_features"
(embedding norms, the instruction and target PCA features and their maps) and
"memory_adversaries" (the four adversary scenarios' restored fractions, the feature projection,
the direct intervention's curve and every head's attention from the decision token)."""

from __future__ import annotations

import numpy as np

from dtjax import plots
from dtjax.circuits import memory as M
from dtjax.report.base import Context, Page, Section, rounded

COEFS = (-2.0, -1.0, 0.0, 1.0, 2.0)  # the write-up's Fig. 19 coefficients


def undefined(ctx: Context) -> str | None:
    """The write-up's sections on its 9-timestep contexts (``dtjax.circuits.memory.writeup_undefined``)."""
    return M.writeup_undefined(ctx.cfg, ctx.task)


def _features_undefined(ctx: Context) -> str | None:
    return M.writeup_undefined(ctx.cfg, ctx.task, contexts=False)


def features_compute(ctx: Context) -> dict:
    params = ctx.params
    norms = np.asarray(M.embedding_norms(params))
    top = np.argsort(norms.ravel())[::-1][:6]
    largest = [[M.item_label(*np.unravel_index(i, norms.shape)), float(norms.ravel()[i])] for i in top]
    out = {"largest": largest, "median": float(np.median(norms)), "norms": norms[[M.KEY_CH, M.BALL_CH]]}
    cats = M.cosine_categories(M.key_ball_items())
    rows = []
    for writeup in (False, True):
        cos, n, labels = M.key_ball_cosines(params, writeup)
        cos, keep = np.asarray(cos), np.asarray(n) >= 0.8
        pairs = keep[:, None] & keep[None, :] & ~np.eye(len(keep), dtype=bool)
        rows.append(["write-up preprocessing" if writeup else "raw", int(keep.sum()),
                     *[float(cos[(cats == k) & pairs].mean()) if ((cats == k) & pairs).any() else float("nan")
                       for k in (2, 1, 0)],
                     float(cos[labels.index("key (1,2)"), labels.index("ball (5,2)")])])
        if writeup:
            out["cosines"], out["cosine_labels"] = cos, labels
    out["cosine_rows"] = rows
    summary = {}
    for name, cells in (("instruction", M.INSTRUCTION_CELLS), ("target", M.TARGET_CELLS)):
        p, labels = M.subset_pca(params, cells)
        maps = np.stack([np.asarray(M.feature_map(params, p, k)) for k in range(2)])  # (PC, key/ball, 7, 7)
        out[name] = {"explained": rounded(p.explained), "labels": labels, "scores": np.asarray(p.scores), "maps": maps}
        summary[f"memory.pca.{name}.explained"] = rounded(p.explained)
    out["summary"] = summary
    return out


def features_render(d: dict, page: Page) -> None:
    page.text(f"L2 norm of every vocabulary item's embedding (a row of W_state: channel, view x, y); median "
              f"{d['median']:.3f}. The largest: " + ", ".join(f"{lab} {v:.2f}" for lab, v in d["largest"]) + ".")
    page.figure(plots.maps_grid(d["norms"][None], ["norm"], ["key", "ball"], "embedding norms (x right, y down)"),
                "Embedding norm of the key and ball items per view cell.")
    page.table(["embeddings", "items with norm >= 0.8", "same position, other object", "same object, other position",
                "other object and position", "key (1,2) . ball (5,2)"], d["cosine_rows"],
               "Mean pairwise cosine of the key/ball embeddings by category (items with norm >= 0.8, the write-up's "
               "Fig. 7 filter), raw and after the write-up's preprocessing (each item's mean component removed, each "
               "d_model dimension scaled to unit norm over the 980 items).")
    page.figure(plots.cosine_square(d["cosines"], d["cosine_labels"], "key/ball embedding cosines (write-up preprocessing)"),
                "Cosine similarity of the 98 key/ball embeddings in flatten order (key (0,0), key (0,1), ...).")
    for name, what in (("instruction", "key/ball at (4,2), (2,6), (0,5), (4,3)"),
                       ("target", "key/ball at (1,6), (5,6), (1,2), (5,2)")):
        f = d[name]
        ev = f["explained"]
        page.text(f"PCA of the unit embeddings of {what} (centred on the subset): PC1 {100 * ev[0]:.2f}%, "
                  f"PC2 {100 * ev[1]:.2f}% (sum {100 * (ev[0] + ev[1]):.2f}%). PC1 is oriented so the first key is positive.")
        page.table(["item", "PC1", "PC2"], [[lab, *map(float, s)] for lab, s in zip(f["labels"], f["scores"])])
        page.figure(plots.maps_grid(f["maps"], ["PC1", "PC2"], ["key", "ball"], f"{name} feature maps"),
                    "Each key / ball item's (unit embedding - subset mean) . PC, per view cell (the write-up's feature maps).")


def adversaries_compute(ctx: Context) -> dict:
    params, cfg = ctx.params, ctx.cfg
    adv = M.adversary_inputs()
    ld, tokens = M.adversary_logit_diffs(params, cfg, adv)
    rf = np.asarray(M.restored_fractions(ld))
    p, _ = M.subset_pca(params)
    pc = p.components[0]
    proj = np.asarray(M.feature_projection(tokens, pc)).reshape(adv.shape)
    orig = adv.edits.index("original")
    idx = np.arange(adv.inputs.batch).reshape(adv.shape)[..., orig].ravel()  # (layout, rtg) originals
    curve = np.asarray(M.intervention_curve(params, cfg, adv.inputs.take(idx), pc, COEFS))
    att = np.asarray(M.decision_attention(params, cfg, adv.inputs))  # (layer, batch, head, 26)
    labels = M.adversary_labels()
    rows = [{"instruction": labels[i][0], "targets": labels[i][1], "rtg": float(r), "edit": e,
             "restored": round(float(rf[i, j, k]), 4)}
            for i in range(len(labels)) for j, r in enumerate(adv.rtgs) for k, e in enumerate(adv.edits)]
    s5 = att[..., M.INSTRUCTION_POS]  # (layer, batch, head)
    heads = [f"L{l}H{h}" for l in range(cfg.n_layers) for h in range(cfg.n_heads)]
    return {"labels": labels, "rtgs": list(adv.rtgs), "edits": list(adv.edits), "ld": np.asarray(ld), "restored": rf,
            "projection": proj, "coefs": list(COEFS), "curve": curve.reshape(len(labels), len(adv.rtgs), len(COEFS)),
            "heads": heads, "s5_min": s5.min(1).ravel(), "s5_max": s5.max(1).ravel(),
            "attention": att[:, idx].mean(1).reshape(len(heads), -1),
            "summary": {"memory.adversaries": rows}}


def adversaries_render(d: dict, page: Page) -> None:
    page.text("The write-up's adversaries: per layout (instruction, targets top-bottom) 4 zero frames then the start "
              "view and 4 forwards (9 timesteps, RTG constant); each edit paints the instruction's complement on the "
              "first real frame (S5). LD = logit(left) - logit(right) at the last state token; restored fraction = "
              "(LD(edit) - LD(original)) / (LD(instruction flipped) - LD(original)).")
    rows = []
    for i, (inst, targ) in enumerate(d["labels"]):
        for j, r in enumerate(d["rtgs"]):
            rows.append([f"{inst}, {targ}", r, float(d["ld"][i, j, 0]), *map(float, d["restored"][i, j, 2:])])
    page.table(["layout", "RTG", "LD original", "(0,5)", "(4,2)", "(0,5)+(4,2)"], rows,
               "Restored fraction of each edit (instruction flipped = 1).")
    page.table(["layout", "RTG", *d["edits"]],
               [[f"{inst}, {targ}", r, *map(float, d["projection"][i, j])] for i, (inst, targ) in enumerate(d["labels"])
                for j, r in enumerate(d["rtgs"])],
               "Instruction feature (PC1, keys positive) . the S5 token (state + time embedding, without W_pos), per edit.")
    series = {f"{inst}, {targ}, RTG {r}": d["curve"][i, j] for i, (inst, targ) in enumerate(d["labels"])
              for j, r in enumerate(d["rtgs"])}
    page.figure(plots.lines([f"{c:g}" for c in d["coefs"]], series, "left - right logit",
                            "feature coefficient set at blocks.0.hook_resid_pre, S5"),
                "Direct intervention: the S5 token's component on the instruction feature set to c (the original contexts).")
    page.table(["head", "min on S5", "max on S5"],
               [[h, float(a), float(b)] for h, a, b in zip(d["heads"], d["s5_min"], d["s5_max"])],
               "Attention of each head from the decision token (the last state token) to S5, the instruction frame, "
               "over all 40 adversary contexts.")
    page.figure(plots.heatmap(d["attention"], d["heads"], [f"{i}" for i in range(d["attention"].shape[1])]),
                "Mean attention of every head from the decision token over the 26 tokens (original contexts; "
                "tokens R, s, a per timestep, S5 = token 13).")


SECTIONS = (
    Section("memory_features", "MemoryDT write-up: embedding norms and PCA features", features_compute, features_render,
            order=134, undefined=_features_undefined),
    Section("memory_adversaries", "MemoryDT write-up: instruction adversaries, feature intervention, attention",
            adversaries_compute, adversaries_render, order=135, undefined=undefined),
)
