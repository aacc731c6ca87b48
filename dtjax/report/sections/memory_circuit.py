"""The memory circuit of a Memory model (`dtjax.circuits.memory_circuit`): "memory_circuit" --
which heads carry the instruction from its frame (S5) to the junction decision, through which
path, how RTG enters, and how faithful the found circuit is. ``summary.json``: ``memory.circuit.*``.

Pairs: the write-up's 9-timestep junction contexts (`memory_circuit.instruction_pair`,
`memory_circuit.rtg_pair`), the match on top (left is right) as the clean run; the mirrored
layouts (match at the bottom, direction right - left) join the faithfulness rows so that the
decision accuracy is over all four layouts. The padding frames' RTG follows the model's
``pad_rtg`` (the original's: the RTG itself).
"""

from __future__ import annotations

import numpy as np

from dtjax import circuits as C
from dtjax import plots
from dtjax.circuits import graph as G
from dtjax.circuits import memory_circuit as MC
from dtjax.circuits.core import Inputs
from dtjax.report.base import Context, Page, Section, rounded
from dtjax.report.sections import memory as memory_sections

DIRECTION = ("left", "right")


def _faith_rows(params, cfg, circuits: dict, pairs: dict, reference: Inputs) -> dict:
    """{circuit: {ablation: numbers}} pooled over both orientations (per-context logit differences
    along each orientation's own direction, so that the correct turn is always positive)."""
    out = {}
    for name, kept in circuits.items():
        out[name] = {}
        for abl in ("corrupted", "mean"):
            per = []
            for top, (clean, corr) in pairs.items():
                patch = (MC.ablation_patch(params, cfg, clean, corrupted=corr) if abl == "corrupted"
                         else MC.ablation_patch(params, cfg, clean, reference=reference))
                dirn = DIRECTION if top else DIRECTION[::-1]
                per.append(MC.faithfulness(params, cfg, clean, patch, kept, dirn))
            ld = {k: np.concatenate([np.asarray(r[k]) for r in per]) for k in ("clean", "circuit", "empty")}
            out[name][abl] = {"n_edges": per[0]["n_edges"], "clean": float(ld["clean"].mean()),
                              "circuit": float(ld["circuit"].mean()), "empty": float(ld["empty"].mean()),
                              "fraction": float(ld["circuit"].mean() / ld["clean"].mean()),
                              "normalised": float((ld["circuit"].mean() - ld["empty"].mean())
                                                  / (ld["clean"].mean() - ld["empty"].mean())),
                              "accuracy": float((np.sign(ld["circuit"]) == np.sign(ld["clean"])).mean()),
                              "per_context": rounded(ld["circuit"])}
    return out


def circuit_compute(ctx: Context) -> dict:
    params, cfg, o = ctx.params, ctx.cfg, ctx.options
    d = "-".join(DIRECTION)
    pad = cfg.pad_rtg  # the padding frames' RTG as the model was trained
    clean, corr = MC.instruction_pair(pad_rtg=pad)
    g = G.inputs_graph(cfg, clean)
    n_pos = MC.n_positions(clean)
    labels = [MC.token_label(p) for p in range(n_pos)]
    heads = [f"L{l}H{h}" for l in range(cfg.n_layers) for h in range(cfg.n_heads)]
    # WHERE THE INSTRUCTION IS READ, AND THE PATH
    hip = MC.head_input_patching(params, cfg, clean, corr, d)
    path = MC.circuit_path(params, cfg, clean, corr, d, hip)
    first = MC.source_edge_patching(params, cfg, clean, corr, "embed_state", path["pos"], d)
    # COMPOSITION BY PATCHING: each head and MLP -> every later receiver (MLPs frozen: direct edges)
    senders = [s for s in g.senders if not s.startswith("embed_")]
    comp = np.asarray(G.path_patching_matrix(params, cfg, clean, corr, senders, list(g.receivers), d)["effects"])
    to_logits = np.asarray(G.path_patching_matrix(params, cfg, clean, corr, senders, ["logits"], d,
                                                  freeze_mlps=False)["effects"])[:, 0]
    att = np.asarray(MC.decision_attention(params, cfg, clean)).mean(0)  # (layer, head, pos)
    v = MC.decision_direction(True, cfg.n_actions)
    dla = np.asarray(MC.head_source_dla(params, cfg, clean, v)).mean(0)
    dla_corr = np.asarray(MC.head_source_dla(params, cfg, corr, v)).mean(0)
    # CIRCUIT DISCOVERY ON THE PAIR
    acdc = C.acdc(params, cfg, clean, corr, o.acdc_tau, d)
    ig = 0 if o.fast else o.ig_steps
    sizes = sorted({1, 2, 4, 8, 16, 32, 64, len(g.edges)} & set(range(1, len(g.edges) + 1)))
    prune = C.prune_by_attribution(params, cfg, clean, corr, sizes, d, ig_steps=ig)
    # FAITHFULNESS
    pairs = {True: (clean, corr), False: MC.instruction_pair(match_top=False, pad_rtg=pad)}
    reference = Inputs.concat([clean, corr])  # the four layouts at RTG 0.892
    full = np.ones(g.allowed.shape + (n_pos,), bool)
    acdc_kept = np.repeat(np.asarray(acdc["kept"])[..., None], n_pos, -1)
    circuits = {"full graph": full, "empty graph": ~full, "path": path["kept"],
                "path + current view": MC.with_view(cfg, clean, path["kept"]), f"ACDC (tau {o.acdc_tau:g})": acdc_kept}
    faith = _faith_rows(params, cfg, circuits, pairs, reference)
    # HOW RTG ENTERS
    rc, rk = MC.rtg_pair(pad_rtg=pad)
    rhip = MC.head_input_patching(params, cfg, rc, rk, d)
    rpath = MC.circuit_path(params, cfg, rc, rk, d, rhip)
    rtg_recv = np.asarray(G.path_patching_matrix(params, cfg, rc, rk, ["embed_rtg"], list(g.receivers), d,
                                                 freeze_mlps=False)["effects"])[0]
    rtg_logits = np.asarray(G.path_patching_matrix(params, cfg, rc, rk, senders, ["logits"], d,
                                                   freeze_mlps=False)["effects"])[:, 0]
    r_pos = np.arange(0, n_pos, 3)
    r_att = {rtg: np.asarray(MC.decision_attention(params, cfg, x))[..., r_pos].sum(-1).mean(0).ravel()
             for rtg, x in ((MC.RTG, rc), (0.0, rk))}
    r_dla = {rtg: np.asarray(MC.head_source_dla(params, cfg, x, v))[..., r_pos].sum(-1).mean(0).ravel()
             for rtg, x in ((MC.RTG, rc), (0.0, rk))}
    hmax = np.nanmax(np.asarray(hip["effects"]), axis=-1)  # (qkv, layer, head)
    readers = [{"head": f"L{l}H{h}", "input": MC.QKV[c], "token": labels[int(np.nanargmax(hip["effects"][c, l, h]))],
                "effect": round(float(hmax[c, l, h]), 4)}
               for c, l, h in zip(*np.nonzero(hmax > MC.THRESHOLD))]
    rmax = np.nanmax(np.asarray(rhip["effects"]), axis=-1)
    r_readers = [{"head": f"L{l}H{h}", "input": MC.QKV[c],
                  "tokens": [labels[p] for p in np.nonzero(np.asarray(rhip["effects"][c, l, h]) > 0.05)[0]],
                  "effect": round(float(rmax[c, l, h]), 4)}
                 for c, l, h in zip(*np.nonzero(rmax > 0.05))]
    summary = {
        "memory.circuit.heads": readers,
        "memory.circuit.path": path["line"],
        "memory.circuit.path_edges": path["edges"],
        "memory.circuit.pair": {"clean": round(float(hip["clean"]), 4), "corrupted": round(float(hip["corrupted"]), 4)},
        "memory.circuit.attention_s5": dict(zip(heads, rounded(att[..., path["pos"]].ravel()))),
        "memory.circuit.composition": {s: {r: round(float(x), 4) for r, x in zip(g.receivers, row)
                                           if np.isfinite(x) and abs(x) > 0.05} for s, row in zip(senders, comp)},
        "memory.circuit.to_logits": dict(zip(senders, rounded(to_logits))),
        "memory.circuit.acdc": {"tau": o.acdc_tau, "n_edges": acdc["n_edges"], "n_total": acdc["n_total"],
                                "edges": [list(e) for e in acdc["edges"]]},
        "memory.circuit.faithfulness": {k: {a: {x: (round(y, 4) if isinstance(y, float) else y) for x, y in r.items()}
                                            for a, r in v.items()} for k, v in faith.items()},
        "memory.circuit.rtg": {"clean": round(float(rhip["clean"]), 4), "corrupted": round(float(rhip["corrupted"]), 4),
                               "path": rpath["line"], "readers": r_readers,
                               "embed_rtg_to": {r: round(float(x), 4) for r, x in zip(g.receivers, rtg_recv)
                                                if np.isfinite(x) and abs(x) > 0.02},
                               "to_logits": dict(zip(senders, rounded(rtg_logits))),
                               "attention_to_R": {str(k): dict(zip(heads, rounded(x))) for k, x in r_att.items()},
                               "dla_from_R": {str(k): dict(zip(heads, rounded(x))) for k, x in r_dla.items()}},
    }
    return {"labels": labels, "heads": heads, "hip": np.asarray(hip["effects"]), "rhip": np.asarray(rhip["effects"]),
            "path": {k: path[k] for k in ("line", "edges", "head", "input", "source", "reader_effect")},
            "first": dict(zip(first["receivers"], map(float, np.asarray(first["effects"])))),
            "senders": senders, "receivers": list(g.receivers), "comp": comp, "to_logits": to_logits, "att": att,
            "dla": dla, "dla_corr": dla_corr, "acdc": acdc, "prune": (np.asarray(prune["n_edges"]),
                                                                      np.asarray(prune["faithfulness"])),
            "ig": ig, "faith": faith, "rtg": summary["memory.circuit.rtg"], "r_att": r_att, "r_dla": r_dla,
            "n_layers": cfg.n_layers, "send_stage": list(g.send_stage), "all_senders": list(g.senders),
            "summary": summary}


def circuit_render(d: dict, page: Page) -> None:
    s = d["summary"]
    pair = s["memory.circuit.pair"]
    page.text("The instruction pair: the write-up's junction contexts whose match is on top (clean: key, key-ball and "
              "ball, ball-key at RTG 0.892; left is right) against the same targets with the other instruction "
              "(corrupted); they differ only in S5, the instruction frame (token 13). Metric: left - right logit at the "
              f"decision token (the last state token), batch mean: clean {pair['clean']:+.2f}, corrupted "
              f"{pair['corrupted']:+.2f}; effects are denoising, (patched - corrupted) / (clean - corrupted).")
    page.text(f"<b>The circuit:</b> {s['memory.circuit.path']}")
    L, H = d["hip"].shape[1:3]
    inputs = [f"L{l}H{h}.{c}" for c in MC.QKV for l in range(L) for h in range(H)]
    page.figure(plots.heatmap(d["hip"].reshape(len(inputs), -1), inputs, d["labels"]),
                "Head input patching: one head's query, key or value input restored to clean at one token (every "
                "sender at once), the rest of the corrupted run recomputed. The instruction is read where k/v light up.")
    page.table(["receiver", "effect"], [[r, x] for r, x in d["first"].items() if np.isfinite(x) and abs(x) > 0.005],
               f"First hop: the S5 state embedding alone restored on its edge into each receiver at token "
               f"{d['path']['source']}.")
    comp = np.where(np.isfinite(d["comp"]), d["comp"], np.nan)
    page.figure(plots.heatmap(comp, d["senders"], d["receivers"]),
                "Composition by path patching (MLPs frozen: each edge alone): each head or MLP's clean output into one "
                "later receiver (a later head's q, k or v, an MLP, the logits).")
    page.table(["sender", "path patching -> logits (MLPs recomputed)"],
               [[snd, float(x)] for snd, x in zip(d["senders"], d["to_logits"])])
    page.figure(plots.heatmap(d["att"].reshape(len(d["heads"]), -1), d["heads"], d["labels"]),
                "Attention of every head from the decision token over the 26 tokens (clean contexts, mean).")
    page.figure(plots.heatmap(np.concatenate([d["dla"], d["dla_corr"]]).reshape(2 * len(d["heads"]), -1),
                              [f"{h} clean" for h in d["heads"]] + [f"{h} corrupted" for h in d["heads"]], d["labels"]),
                "Direct logit attribution of each head at the decision token by source token (attention x value x W_O, "
                "through the final LayerNorm), left - right.")
    a = d["acdc"]
    page.figure(plots.circuit_graph(d["all_senders"], d["send_stage"], d["n_layers"], [tuple(e) for e in a["edges"]], {},
                                    f"ACDC on the instruction pair: {a['n_edges']}/{a['n_total']} edges, faithfulness "
                                    f"{float(a['faithfulness']):.2f}"),
                "ACDC's kept edges (KL threshold tau) on the instruction pair, over all positions.")
    tag = f"EAP-IG ({d['ig']})" if d["ig"] else "EAP"
    page.figure(plots.faithfulness_curve({f"instruction: top-n by |{tag}|": d["prune"]},
                                         {"ACDC": (a["n_edges"], float(a["faithfulness"]))}),
                "Faithfulness (normalised, everything else corrupted) of the top-n edges by edge attribution.")
    rows = []
    for name, r in d["faith"].items():
        for abl, x in r.items():
            rows.append([name, abl, str(x["n_edges"]), x["clean"], x["circuit"], x["empty"], x["fraction"],
                         x["normalised"], x["accuracy"]])
    page.table(["circuit", "outside ablated by", "edges (x pos)", "LD clean", "LD circuit", "LD empty",
                "fraction of clean", "normalised", "decision accuracy"], rows,
               "Faithfulness over the 4 layouts (both orientations; LD along each one's correct turn, so positive = the "
               "model's choice): every edge outside the circuit patched from the corrupted run (the other instruction) or "
               "mean-ablated (mean over the 4 layouts at RTG 0.892, per position). Fractions amplify errors; read the "
               "logit differences beside them.")
    r = d["rtg"]
    page.text(f"<b>How RTG enters</b> (rtg pair: the clean contexts at RTG 0.892 vs 0): left - right {r['clean']:+.2f} vs "
              f"{r['corrupted']:+.2f}. Path: {r['path']}. embed_rtg -> receivers (MLPs recomputed): "
              + ", ".join(f"{k} {x:+.2f}" for k, x in r["embed_rtg_to"].items()) + ".")
    page.figure(plots.heatmap(d["rhip"].reshape(len(inputs), -1), inputs, d["labels"]),
                "Head input patching on the rtg pair: where the RTG is read.")
    page.table(["head", "attention to R (0.892)", "attention to R (0)", "DLA from R (0.892)", "DLA from R (0)",
                "path -> logits"],
               [[h, float(d["r_att"][MC.RTG][i]), float(d["r_att"][0.0][i]), float(d["r_dla"][MC.RTG][i]),
                 float(d["r_dla"][0.0][i]), float(r["to_logits"].get(h, np.nan))] for i, h in enumerate(d["heads"])],
               "Per head, from the decision token: total attention on the 9 R tokens and the direct left - right "
               "contribution from them, at both RTGs; and each head's path-patching effect to the logits (MLPs "
               "recomputed) on the rtg pair.")


SECTIONS = (
    Section("memory_circuit", "The memory circuit: instruction path, RTG entry, faithfulness", circuit_compute,
            circuit_render, order=136, undefined=memory_sections.undefined),
)
