"""Causal sections: "ablation" (each head / MLP removed: logits and closed-loop returns) and
"patching" (activation patching between scenario pairs)."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from dtjax import analysis as A
from dtjax import plots
from dtjax.report.base import Context, Page, Section, rounded


def _closed_loop_kinds(o) -> tuple[str, ...]:
    return (("zero",) if o.fast else ("zero", "mean")) if o.closed_loop else ()


def _ablation_returns(ctx: Context, kind: str) -> dict:
    """``analysis.ablation_returns`` of one kind over the report's targets (memoised)."""
    o = ctx.options
    return ctx.memo(f"ablation_returns:{kind}", lambda: A.ablation_returns(
        ctx.params, ctx.cfg, ctx.env, ctx.env_params, ctx.key("ablation"), o.ablation_rtgs, o.ablation_episodes, kind,
        ctx.ablation_means()))


def ablation_prefetch(ctx: Context) -> None:
    for kind in _closed_loop_kinds(ctx.options):
        _ablation_returns(ctx, kind)


def ablation_compute(ctx: Context) -> dict:
    o, cfg = ctx.options, ctx.cfg
    names, inp = ctx.scenarios()
    means = ctx.ablation_means()
    labels = A.ablation_labels(cfg)
    diffs, summary = {}, {}
    for kind in ("zero", "mean"):
        diff = A.ablation_panel(ctx.params, cfg, inp, kind, means)["logits"] @ np.asarray(ctx.v)  # (world, scenario)
        diffs[kind] = np.asarray(diff)
        summary[f"{kind}_logit_diff"] = {lab: dict(zip(names, rounded(diff[i]))) for i, lab in enumerate(labels)}
    closed, notes = {}, []
    kinds = _closed_loop_kinds(o)
    if not o.closed_loop:
        notes.append("Closed-loop ablations not run: rollouts are off (closed_loop=False).")
    for kind in kinds:
        res = closed[kind] = _ablation_returns(ctx, kind)
        summary[f"{kind}_returns"] = {lab: rounded(res["mean_return"][i]) for i, lab in enumerate(res["labels"])}
        for f in ctx.task.failures:  # the task's failure outcomes (Dynamic Obstacles: hit)
            summary[f"{kind}_{f}_rate"] = {lab: rounded(res[f"{f}_rate"][i]) for i, lab in enumerate(res["labels"])}
    return {"names": names, "labels": labels, "logit_diff": diffs, "closed_loop": closed, "rtg": o.rtg,
            "direction": ctx.direction, "mean_samples": o.mean_samples, "n_timesteps": cfg.n_timesteps,
            "ablation_rtgs": list(o.ablation_rtgs), "episodes": o.ablation_episodes, "max_steps": ctx.env_cfg.max_steps,
            "failures": list(ctx.task.failures), "notes": notes, "summary": {"ablation": summary}}


def ablation_render(d: dict, page: Page) -> None:
    window = f"windows of {d['n_timesteps']} timesteps" if d["n_timesteps"] > 1 else "states"
    page.text(f"Each head's hook_z or the MLP's output replaced by zero, or by its mean over {d['mean_samples']} {window} "
              f"from random-policy rollouts (per position). Effect on the scenarios' {d['direction']} logit difference, "
              "and on closed-loop return.")
    for kind, diff in d["logit_diff"].items():
        page.table(["ablation"] + d["names"], [[lab, *map(float, diff[i])] for i, lab in enumerate(d["labels"])],
                   f"{kind} ablation: {d['direction']} logit difference per scenario at RTG {d['rtg']}.")
    for kind, res in d["closed_loop"].items():
        hdr = ["ablation"] + [f"return @{r:g}" for r in d["ablation_rtgs"]] + [f"{f} @{r:g}" for f in d["failures"]
                                                                                for r in d["ablation_rtgs"]]
        page.table(hdr, [[lab, *map(float, res["mean_return"][i]), *(float(x) for f in d["failures"] for x in res[f"{f}_rate"][i])]
                         for i, lab in enumerate(res["labels"])],
                   f"{kind} ablation in closed loop: mean return and failure rates ({', '.join(d['failures']) or 'none'}), "
                   f"{d['episodes']} episodes per target "
                   f"(same episodes in every row), max_steps {d['max_steps']}.")


def patch_names(cfg, fast: bool) -> list[str] | None:
    """Hooks patched: all (None) or, when ``fast``, the embedding, layer 0's heads and MLP (its
    attention output if attention-only), and the final residual stream."""
    if not fast:
        return None
    mid = "blocks.0.hook_attn_out" if cfg.attn_only else "blocks.0.hook_mlp_out"
    return ["hook_embed", "blocks.0.attn.hook_z", mid, f"blocks.{cfg.n_layers - 1}.hook_resid_post"]


def patching_compute(ctx: Context) -> dict:
    cfg = ctx.cfg
    names, inp = ctx.scenarios()

    def one(n):
        return inp.take(slice(names.index(n), names.index(n) + 1))

    pairs = {pair: (one(a), one(b)) for pair, (a, b) in ctx.task.pairs.items()}
    # the RTG pair on the first pair's clean scenario and the start state (ball_ahead, start_seed0)
    for n in dict.fromkeys([a for a, _ in list(ctx.task.pairs.values())[:1]] + names[:1]):
        pairs[f"rtg+1_vs_-1 ({n})"] = (one(n).with_rtg(jnp.ones(1), cfg.n_actions, cfg.pad_rtg),
                                      one(n).with_rtg(-jnp.ones(1), cfg.n_actions, cfg.pad_rtg))
    panels, summary = {}, {}
    for pair, (clean, corrupted) in pairs.items():
        p = A.patching_panel(ctx.params, cfg, clean, corrupted, ctx.v, patch_names(cfg, ctx.options.fast))
        panels[pair] = {k: p[k] for k in ("matrix", "rows", "columns", "clean", "corrupted")}
        summary[pair] = {"clean": p["clean"], "corrupted": p["corrupted"],
                         "effects": {k: rounded(v) for k, v in p["effects"].items()}}
    return {"panels": panels, "direction": ctx.direction, "summary": {"patching": summary}}


def patching_render(d: dict, page: Page) -> None:
    page.text("Clean activations restored one at a time (hook x position x head) into the corrupted run; the value is "
              f"(patched - corrupted) / (clean - corrupted) of the {d['direction']} logit difference at the last state "
              "token: 1 = restores the clean behaviour, 0 = no effect.")
    for pair, p in d["panels"].items():
        page.figure(plots.heatmap(p["matrix"], p["rows"], p["columns"]),
                    f"<b>{pair}</b>: clean {d['direction']} = {p['clean']:+.3f}, corrupted = {p['corrupted']:+.3f}. "
                    "Columns: tokens; per-timestep embed hooks index the timestep (the first columns); attention "
                    "patterns index the query.")


SECTIONS = (
    Section("ablation", "Ablations", ablation_compute, ablation_render, order=100,
            prefetch=ablation_prefetch),
    Section("patching", "Activation patching", patching_compute, patching_render, order=110),
)
