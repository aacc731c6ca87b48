"""Sections on the hand-made scenarios: "scenarios" (views, action probabilities, attention),
"dla" (direct logit attribution) and "rtg_scan" (the target RTG swept)."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from dtjax import analysis as A
from dtjax import plots
from dtjax import scenarios as S
from dtjax.report.base import Context, Page, Section, rounded


def shown(ctx: Context) -> list[str]:
    """Scenarios whose attention patterns are drawn: the task's first (its start state) and its first
    patching pair (Dynamic Obstacles: start_seed0, ball_ahead, clear_ahead)."""
    names = list(S.task_scenarios(ctx.env_cfg))
    pair = next(iter(ctx.task.pairs.values()), ())
    return list(dict.fromkeys([names[0], *pair]))


def scanned(ctx: Context) -> list[str]:
    """Scenarios whose RTG is swept: the start state and the first pair's clean one (start_seed0, ball_ahead)."""
    return shown(ctx)[:2]


def scenarios_compute(ctx: Context) -> dict:
    names, inp = ctx.scenarios()
    p, p_neg = ctx.scenario_panels(), ctx.scenario_panels(-1.0)
    show = [names.index(n) for n in shown(ctx)]
    attn = p["attn_to_rtg"]  # (layer, batch, head)
    return {
        "names": names, "captions": [S.scenario_caption(n, ctx.env_cfg) for n in names], "rtg": ctx.options.rtg,
        "actions": list(ctx.task.action_names), "objects": list(ctx.task.objects),
        "views": [S.render_view(o) for o in np.asarray(inp.obs[:, -1])],
        "probs": p["probs"], "probs_neg": p_neg["probs"],
        "pattern": p["pattern"][:, show], "pattern_names": [names[b] for b in show],
        "tokens": A.token_labels(inp.n_timesteps, A.n_tokens(inp)), "n_timesteps": inp.n_timesteps,
        "summary": {
            "scenario_probs": {n: {"rtg": rounded(p["probs"][i]), "rtg_neg1": rounded(p_neg["probs"][i])}
                               for i, n in enumerate(names)},
            "attn_state_to_rtg": {n: rounded(attn[0, b]) for b, n in enumerate(names)},
            "attn_state_to_rtg_by_layer": {n: rounded(attn[:, b]) for b, n in enumerate(names)},
        },
    }


def scenarios_render(d: dict, page: Page) -> None:
    k = d["n_timesteps"]
    page.text(f"Hand-made states observed through the env (t = 0{', left-padded to the context' if k > 1 else ''}), "
              f"at target RTG {d['rtg']} and -1.")
    colour = {"wall": "grey", "key": "yellow", "ball": "blue", "goal": "green"}  # scenarios.render_view's palette
    legend = ", ".join(f"{colour[o]} {o}" for o in d.get("objects", colour) if o in colour)
    page.figure(plots.views(d["views"], d["names"]), f"The scenarios' 7x7 views ({legend}, red agent).")
    initials = [a[0].upper() for a in d["actions"]]
    short = [f"P({i})" if initials.count(i) == 1 else f"P({a})" for i, a in zip(initials, d["actions"])]  # P(L), P(R), P(F)
    page.table(["scenario", "caption", f"{short[0]} @{d['rtg']}", *short[1:], f"{short[0]} @-1", *short[1:]],
               [[n, d["captions"][i], *map(float, d["probs"][i]), *map(float, d["probs_neg"][i])]
                for i, n in enumerate(d["names"])],
               "Greedy action probabilities (softmax of the logits at the last state token).")
    page.figure(plots.attention(d["pattern"], d["pattern_names"], d["tokens"]),
                f"Attention patterns (query rows, key columns) at RTG {d['rtg']}, every layer. The last state token "
                f"({d['tokens'][-1]}) attending to its RTG token ({d['tokens'][-2]}) is the bottom row's second-to-last cell.")


def dla_compute(ctx: Context) -> dict:
    names, inp = ctx.scenarios()
    labels, dla = A.dla_labels(ctx.cfg, inp), ctx.scenario_panels()["dla"]
    notes = []
    if ctx.cfg.layer_norm:
        notes.append("LayerNorm on: each component goes through ln_final with its scale frozen from the cache "
                     "(TransformerLens's apply_ln_to_stack); ln_final_b is the LN bias.")
    return {"names": names, "labels": labels, "dla": dla, "rtg": ctx.options.rtg, "direction": ctx.direction, "notes": notes,
            "summary": {"dla": {n: dict(zip(labels, rounded(dla[i]))) for i, n in enumerate(names)}}}


def dla_render(d: dict, page: Page) -> None:
    page.text(f"Each residual-stream component's direct contribution to the {d['direction']} logit difference at the "
              "last state token (components + biases sum exactly to the logit difference).")
    page.figure(plots.grouped_bars(d["dla"], d["labels"], d["names"], f"DLA onto {d['direction']}"),
                f"DLA per scenario at RTG {d['rtg']}.")
    page.table(["scenario"] + d["labels"] + ["sum"],
               [[n, *map(float, d["dla"][i]), float(d["dla"][i].sum())] for i, n in enumerate(d["names"])])


def rtg_scan_compute(ctx: Context) -> dict:
    o = ctx.options
    names, inp = ctx.scenarios()
    scan_names = scanned(ctx)
    idx = [names.index(n) for n in scan_names]
    rtgs = jnp.linspace(-o.scan_range, o.scan_range, o.scan_points)
    scan = {k: np.asarray(v) for k, v in A.rtg_scan_panel(ctx.params, ctx.cfg, inp.take(jnp.asarray(idx)), rtgs, ctx.v).items()}
    labels = A.dla_labels(ctx.cfg, inp)
    summary = {}
    for j, n in enumerate(scan_names):
        st = A.rtg_scan_stats(scan["rtg"], scan["dla"][j], labels)
        summary[n] = {
            "rtg": [-1.0, 0.0, 1.0],
            "logits": [rounded(scan["logits"][j, i]) for i in st["at"]],
            "dla_slope_per_unit_rtg_in_[-1,1]": dict(zip(labels, rounded(list(st["slope"].values())))),
            "component_correlation": {"labels": st["corr_labels"], "matrix": rounded(st["corr"], 3)},
        }
    return {"names": scan_names, "scan": scan, "labels": labels, "direction": ctx.direction, "range": o.scan_range,
            "actions": list(ctx.task.action_names),
            "summary": {"rtg_scan": summary}}


def rtg_scan_render(d: dict, page: Page) -> None:
    page.text(f"The target RTG swept over [-{d['range']}, {d['range']}] (beyond [-1, 1] is extrapolation) with "
              "everything else fixed (one vmapped pass; padding timesteps keep RTG 0).")
    s = d["scan"]
    for j, n in enumerate(d["names"]):
        page.figure(plots.rtg_scan(s["rtg"], s["logits"][j], s["dla"][j], d["labels"], s["attn_to_rtg"][j], d["actions"],
                                   d["direction"]),
                    f"RTG scan of <b>{n}</b>: logits, per-component DLA (constant components only if large), and each "
                    "head's attention from the last state token to its RTG token.")


def context_undefined(ctx: Context) -> str | None:
    if ctx.cfg.n_timesteps == 1:
        return "one timestep of context: the decision token sees only its own RTG token (the scenarios section)"
    return None


def context_compute(ctx: Context) -> dict:
    """Every head's attention from the decision token (the last state token) to every token of the
    context, for each scenario (a Memory scenario holds its history: the start-room object is in
    an earlier frame, so which head reads which frame is the memory)."""
    names, inp = ctx.scenarios()
    pattern = ctx.scenario_panels()["pattern"]  # (layer, batch, head, q, k)
    q = A.n_tokens(inp) - 1  # the decision token
    attn = pattern[:, :, :, q, : q + 1]  # (layer, batch, head, key)
    tokens = A.context_labels(inp.n_timesteps, q + 1)
    heads = [f"L{l}H{h}" for l in range(ctx.cfg.n_layers) for h in range(ctx.cfg.n_heads)]
    real = np.asarray(inp.actions != ctx.cfg.n_actions) if inp.actions is not None else np.ones((inp.batch, 0), bool)
    first = inp.n_timesteps - 1 - real.sum(1)  # the timestep index of each scenario's first real frame
    return {"names": names, "tokens": tokens, "heads": heads, "rtg": ctx.options.rtg,
            "attn": np.asarray(attn).transpose(0, 2, 1, 3).reshape(len(heads), len(names), q + 1),
            "first_frame": [tokens[3 * int(k) + 1] for k in first],
            "summary": {"context_attention": {"tokens": tokens, "heads": {
                hd: {n: rounded(attn[i // ctx.cfg.n_heads, b, i % ctx.cfg.n_heads], 3) for b, n in enumerate(names)}
                for i, hd in enumerate(heads)}}}}


def context_render(d: dict, page: Page) -> None:
    page.text(f"Attention from the decision token ({d['tokens'][-1]}, the last state token) to every token of the "
              f"context, tokens numbered as the original app's (R1 s1 a1 ... ; a new episode's first frame is the last "
              f"s), at RTG {d['rtg']}. Padding timesteps before a scenario's first frame hold a zero observation.")
    rows = [f"{n} (from {f})" for n, f in zip(d["names"], d["first_frame"])]
    for i, hd in enumerate(d["heads"]):
        page.figure(plots.heatmap(d["attn"][i], rows, d["tokens"], max_annotated=0),
                    f"<b>{hd}</b>: attention of the decision token (rows: scenarios, with their first real frame; "
                    "columns: context tokens).")


SECTIONS = (
    Section("scenarios", "Scenarios", scenarios_compute, scenarios_render, order=20),
    Section("dla", "Direct logit attribution", dla_compute, dla_render, order=30),
    Section("rtg_scan", "RTG scan", rtg_scan_compute, rtg_scan_render, order=40),
    Section("context_attention", "Attention over the context", context_compute, context_render, order=45,
            undefined=context_undefined),
)
