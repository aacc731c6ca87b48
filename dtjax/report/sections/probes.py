"""The "probes" section (opt-in: ``analyse.py --probes``): what is linearly decodable where, and does adding it steer.

``dtjax.probes.probe_table`` on the model's own closed-loop episodes (actions sampled at targets
-1, 0, 0.5, 0.9; training and held-out steps from disjoint episodes): a softmax probe of every
ground-truth concept at every (hook, token) site, with held-out macro-F1 and AUROC beside three
baselines (the raw observation, a randomly initialised model, shuffled labels). Then, when
``options.closed_loop``, ``dtjax.probes.steer``: the task's steering concept ("blocked ahead")
added along its probe direction at the state token of each layer's residual stream, at every
step of ``steer_episodes`` greedy episodes per alpha, against random directions of the same norm.

``summary.json``: ``probes`` (one entry per concept, hook and token: ``concept, hook, token, f1,
auroc, baseline_obs_f1, baseline_random_f1, baseline_shuffled_f1``) and ``probe_interventions``
(one per site and alpha: ``concept, hook, alpha, success, control_success, episodes``).
"""

from __future__ import annotations

import numpy as np

from dtjax import plots
from dtjax import probes as P
from dtjax.probes import steer as steer_lib
from dtjax.report.base import Context, Page, ReportOptions, Section

PROBE_KEYS = ("concept", "hook", "token", "f1", "auroc", "baseline_obs_f1", "baseline_random_f1", "baseline_shuffled_f1")


def probes_enabled(opt: ReportOptions) -> bool:
    return opt.probes


def table(ctx: Context) -> P.ProbeTable:
    """The probe table of the report's model (memoised: the explorer-style panels may share it)."""
    o = ctx.options
    return ctx.memo("probe_table", lambda: P.probe_table(ctx.params, ctx.cfg, ctx.env, ctx.env_params, ctx.key("probes"),
                                                         n_episodes=o.probe_episodes, n_train=o.probe_train,
                                                         n_test=o.probe_test))


def steer_sites(cfg) -> list[str]:
    """The residual stream of every layer at the state token: each block's input and the last output."""
    return [f"blocks.{layer}.hook_resid_pre" for layer in range(cfg.n_layers)] + [f"blocks.{cfg.n_layers - 1}.hook_resid_post"]


def _r(x, d=4):
    return None if x is None or not np.isfinite(x) else round(float(x), d)


def probes_compute(ctx: Context) -> dict:
    o = ctx.options
    tab = table(ctx)
    rows = [{k: (_r(r[k]) if isinstance(r[k], float) else r[k]) for k in PROBE_KEYS} for r in tab.rows]
    best = []
    for c in tab.concepts:
        try:
            best.append(tab.best(c))
        except KeyError:
            continue
    notes = []
    unscored = [c for c in tab.concepts if not any(r["concept"] == c and np.isfinite(r["f1"]) for r in tab.rows)]
    if unscored:
        notes.append(f"Not scored (fewer than {P.MIN_COUNT} held-out steps or one class only): {', '.join(unscored)}.")
    steering, interventions = [], []
    concept, pos_target, neg_target = steer_lib.plan(ctx.task)
    alphas = [a for a in o.steer_alphas if a > 0 or (a < 0 and neg_target is not None)]
    if not o.closed_loop:
        notes.append("No closed loop (--no-closed-loop): no probe-directed interventions.")
    elif concept not in tab.concepts:
        notes.append(f"No steering: the concept {concept} is not among the probes.")
    elif alphas:
        targets = [pos_target if a > 0 else neg_target for a in alphas]
        for hook in steer_sites(ctx.cfg):
            direction, scale = steer_lib.probe_direction(tab, concept, hook, "state")
            r = steer_lib.steer(ctx.params, ctx.cfg, ctx.env, ctx.env_params, ctx.key("probe_steer"), hook, "state",
                                direction, scale, alphas, targets, n_episodes=o.steer_episodes, rtg=o.rtg,
                                n_random=o.steer_random, random_key=ctx.key("probe_steer_random"))
            steering.append(r)
            for a, tgt, s, c, n in zip(alphas, targets, r["success"], r["control_success"], r["episodes"]):
                interventions.append({"concept": concept, "hook": r["hook"], "alpha": float(a), "success": _r(s),
                                      "control_success": _r(c), "episodes": int(n), "token": "state", "target": tgt})
    return {"sites": [f"{h} @{t}" for h, t in tab.sites], "concepts": list(tab.concepts), "f1": tab.f1,
            "obs_f1": tab.obs_f1, "best": best, "steering": steering, "steer_concept": concept,
            "n_train": int((tab.train.labels >= 0).any(0).sum()), "n_test": int((tab.test.labels >= 0).any(0).sum()),
            "notes": notes, "summary": {"probes": rows, "probe_interventions": interventions}}


def probes_render(d: dict, page: Page) -> None:
    page.text(f"Softmax probes of ground-truth concepts at every (hook, token) site, fitted on "
              f"{d['n_train']} steps of the model's own episodes and scored on {d['n_test']} steps of other "
              f"episodes. A concept is worth a mechanism only where the probe beats its baselines: the raw "
              f"observation (what the input gives linearly), a randomly initialised model, shuffled labels (chance).")
    page.figure(plots.heatmap(np.asarray(d["f1"], np.float64), d["sites"], d["concepts"]),
                "Held-out macro-F1 of each concept (columns) at each site (rows); blank: not scored.")
    rows = [[r["concept"], f"{r['hook']} @{r['token']}", r["f1"], r["auroc"], r["baseline_obs_f1"],
             r["baseline_random_f1"], r["baseline_shuffled_f1"]] for r in d["best"]]
    page.table(["concept", "best site", "F1", "AUROC", "F1 raw obs", "F1 random model", "F1 shuffled"], rows,
               "The best site of each concept, with its three baselines (macro-F1 on held-out episodes).")
    for r in d["steering"]:
        alphas = [f"{a:g}" for a in r["alphas"]]
        series = {"probe direction": r["success"], "random directions (mean)": r["control_success"]}
        page.figure(plots.lines(alphas, series, "episodes changed as targeted",
                                f"{d['steer_concept']} added at {r['hook']} @state (alpha x {r['scale']:.2f})"),
                    f"Dose-response over {r['n_episodes']} greedy episodes at RTG {r['rtg']:g}: the share of episodes "
                    f"whose outcome becomes the target ({', '.join(f'{a}: {t}' for a, t in zip(alphas, r['targets']))}) "
                    f"where the plain rollout's was not; alpha in units of the class separation along the probe.")
        page.table(["alpha", "target", "success", "control", "eligible episodes"],
                   [[a, t, float(s), float(c), int(n)] for a, t, s, c, n in
                    zip(r["alphas"], r["targets"], r["success"], r["control_success"], r["episodes"])],
                   f"{r['hook']}: plain rollout outcomes {', '.join(f'{k} {v:.3f}' for k, v in r['plain_rates'].items())}.")


SECTIONS = (
    Section("probes", "Linear probes and probe-directed steering", probes_compute, probes_render, order=150,
            enabled=probes_enabled),
)
