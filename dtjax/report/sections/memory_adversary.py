"""The automatic adversary search on a Memory model (`dtjax.circuits.adversary`):
"memory_adversary_search" (the one- and two-cell edits of any frame of the write-up's contexts
that flip the decision or the instruction feature: flip rates, minimal edit sizes, where the
flipping edits sit, the best edits)."""

from __future__ import annotations

import numpy as np

from dtjax import plots
from dtjax.circuits import adversary as A
from dtjax.circuits import memory as M
from dtjax.report.base import Context, Page, Section, rounded
from dtjax.report.sections import memory as memory_sections

TOP_B = 32  # pairs among the best 32 non-flipping single edits of each context (496 forwards each)
TOP_B_FAST = 8  # ReportOptions.fast (tests, --fast): 28 pairs each
N_BEST = 3  # best edits listed per context
MAP_FRAMES = (M.INSTRUCTION_FRAME, M.N_PAD + 4)  # S5 (the instruction frame) and S9 (the junction, the decision)


def compute(ctx: Context) -> dict:
    params, cfg = ctx.params, ctx.cfg
    top_b = TOP_B_FAST if ctx.options.fast else TOP_B
    s = A.search(params, cfg, top_b=top_b)
    rates, frames = A.flip_rates(s), A.by_frame(s)
    other = A.min_decision_without(s)
    layouts = [M.layout_label(*lay) for lay in M.LAYOUTS for _ in M.RTGS]
    rtgs = [r for _ in M.LAYOUTS for r in M.RTGS]
    rows = []
    for c, label in enumerate(s.labels):
        rows.append({"scenario": label, "instruction": layouts[c][0], "targets": layouts[c][1], "rtg": float(rtgs[c]),
                     "ld": round(float(s.ld0[c]), 4), "flip_rate": round(float(rates["decision"][c]), 4),
                     "feature_flip_rate": round(float(rates["feature"][c]), 4),
                     "pair_flip_rate": round(float(rates["pairs"][c]), 4),
                     "min_edit": A.size_label(s.min_decision[c]),
                     "min_edit_other": A.size_label(other[c]),
                     "min_edit_feature": A.size_label(s.min_feature[c]),
                     "top_edits": [{"edit": e["edit"], "ld": round(e["ld"], 4), "flips": e["flips"]}
                                   for e in A.best_edits(s, c, N_BEST)]})
    n1 = len(s.singles_ld)
    summary = {
        "memory.adversary_search.flip_rate": {"decision": round(float(s.singles_flip.mean()), 4) if n1 else None,
                                              "feature": round(float(np.nanmean(rates["feature"])), 4) if n1 else None,
                                              "pairs": round(float(s.pairs_flip.mean()), 4) if len(s.pairs_ld) else None},
        "memory.adversary_search.min_edit": {r["scenario"]: r["min_edit"] for r in rows},
        "memory.adversary_search.by_frame": {k: rounded(np.nanmean(frames[k], 0)) for k in ("decision", "feature")},
        "memory.adversary_search.scenarios": rows,
        "memory.adversary_search.candidates": {"singles": n1, "pairs": int(len(s.pairs_ld)), "top_b": top_b},
    }
    return {"rows": rows, "by_frame": frames, "maps": A.cell_flip_maps(s, MAP_FRAMES), "top_b": top_b,
            "n_singles": n1, "n_pairs": int(len(s.pairs_ld)), "summary": summary}


def render(d: dict, page: Page) -> None:
    page.text(
        "Every single-cell edit of every frame of the write-up's contexts (the 4 layouts at the junction, 4 zero frames "
        "then the start view and 4 forwards, RTG 0.892 and 0): one view cell of one frame set to empty, key or ball as "
        f"the env encodes them ({d['n_singles']} edits); then pairs among the {d['top_b']} non-flipping single edits "
        f"of each context that move the decision furthest toward a flip ({d['n_pairs']} pairs). The decision flips when "
        "LD = logit(left) - logit(right) at the decision token changes sign; the instruction feature flips when the "
        "instruction frame s5's token (state + time embedding) changes sign on the instruction PC1 (keys positive; its "
        "flip rate is over the edits of s5). Minimal edit size: 1, 2 or none; 'other than the instruction' leaves the "
        "instruction cell (2,6) of s5 alone; the feature's pairs are exact (its projection is linear in the frame).")
    page.table(["scenario", "LD", "flip rate", "pair flip rate", "min edit", "min edit, other than the instruction",
                "feature flip rate", "min feature edit", "best edit (LD)"],
               [[r["scenario"], r["ld"], r["flip_rate"], r["pair_flip_rate"], r["min_edit"], r["min_edit_other"],
                 r["feature_flip_rate"], r["min_edit_feature"],
                 "; ".join(f"{e['edit']} ({e['ld']:+.2f})" for e in r["top_edits"][:2])] for r in d["rows"]],
               "Per context: the fraction of single edits (and of the searched pairs) that flip the decision, and the "
               "smallest flipping edit.")
    tokens = [f"s{k + 1}" for k in range(d["by_frame"]["decision"].shape[1])]
    labels = [r["scenario"] for r in d["rows"]]
    page.figure(plots.heatmap(d["by_frame"]["decision"], labels, tokens),
                "Fraction of the single edits at each frame (s1..s9; s5 holds the instruction, s9 is the junction) that "
                "flip the decision, per context.")
    page.figure(plots.heatmap(d["by_frame"]["feature"], labels, tokens),
                "Fraction of the single edits at each frame that flip that frame's projection on the instruction feature "
                "(s1..s4 are zero padding: their projection is W_time[0]'s alone, small, so almost any edit flips it).")
    page.figure(plots.maps_grid(np.nan_to_num(d["maps"]), [f"s{f + 1}" for f in MAP_FRAMES], list(A.KINDS),
                                "where single edits flip the decision (fraction of contexts)"),
                "For each view cell (x right, y down; the agent at (3,6)) and kind painted, the fraction of the 8 "
                "contexts in which that single edit flips the decision, on the instruction frame s5 and the junction "
                "frame s9.")


SECTIONS = (
    Section("memory_adversary_search", "MemoryDT: automatic adversary search (one- and two-cell edits of any frame)",
            compute, render, order=138, undefined=memory_sections.undefined),
)
