"""Section "rtg_time": the RTG gate against time (issue 20).

A model that meets a middling target by *waiting* (``data.mix.wait_frac``) must compare the target
with the return still reachable, which falls with time (the goal pays 1 - 0.9 t / max_steps); a
model that only switches a behaviour on at RTG ~ 0 (the baseline's ball veto) has a gate that does
not move. The section sweeps the current timestep and RTG of the scanned scenarios together
(``analysis.rtg_time_panel``), finds the gate at each timestep (``analysis.rtg_gate_stats``:
"switch", "graded" or "none") and draws each component's DLA against the timestep at a few RTGs.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from dtjax import analysis as A
from dtjax import plots
from dtjax.report.base import Context, Page, Section, rounded
from dtjax.report.sections.states import scanned

N_TIMES, N_RTGS = 26, 41  # the grid: timesteps 0..max_steps - 1, RTGs over the task's return range (fast: 6 x 11)
DLA_AT = (0.65, 0.8, 0.95)  # fractions of the return range where DLA is drawn against time (Dynamic Obstacles: 0.3, 0.6, 0.9)


def rtg_time_compute(ctx: Context) -> dict:
    names, inp = ctx.scenarios()
    scan_names = scanned(ctx)
    lo, hi = ctx.task.return_range
    fast = ctx.options.fast
    rtgs = np.linspace(lo, hi, 11 if fast else N_RTGS)
    last = min(ctx.env_cfg.max_steps - 1, ctx.cfg.max_timestep)  # the last timestep an episode reaches (trained rows only)
    ts = np.unique(np.linspace(0, last, 6 if fast else N_TIMES).round().astype(int))
    at = [int(np.argmin(np.abs(rtgs - (lo + f * (hi - lo))))) for f in DLA_AT]
    panel = A.rtg_time_panel(ctx.params, ctx.cfg, inp.take(jnp.asarray([names.index(n) for n in scan_names])),
                             jnp.asarray(rtgs), jnp.asarray(ts), ctx.v)
    probs, dla = np.asarray(panel["probs"]), np.asarray(panel["dla"])
    labels = A.dla_labels(ctx.cfg, inp)
    actions = list(ctx.task.action_names)
    summary, gates = {}, []
    for j, n in enumerate(scan_names):
        st = A.rtg_gate_stats(rtgs, ts, probs[j])
        gates.append(np.stack([st["gate_rtg"], st["gate_low_rtg"]]))
        slopes = {}
        for i in at:
            fit = np.polyfit(ts.astype(np.float64), dla[j, :, i].astype(np.float64), 1)[0] * 100
            slopes[f"{rtgs[i]:+.2f}"] = dict(zip(labels, rounded(fit)))
        num = lambda x: None if not np.isfinite(x) else round(float(x), 4)  # noqa: E731
        summary[n] = {
            "timesteps": ts.tolist(), "gate_rtg": [num(g) for g in st["gate_rtg"]],
            "gate_low_rtg": [num(g) for g in st["gate_low_rtg"]],
            "kind": st["kind"], "gate_trend": num(st["gate_trend"]), "gate_slope_per_100_steps": num(st["gate_slope_per_100_steps"]),
            "kind_low": st["kind_low"], "gate_low_trend": num(st["gate_low_trend"]),
            "gate_low_slope_per_100_steps": num(st["gate_low_slope_per_100_steps"]),
            "greedy_at_t0": {"lowest_rtg": actions[int(st["action_low"][0])], "highest_rtg": actions[int(st["action_high"][0])]},
            "dla_slope_per_100_steps": slopes,
        }
    return {"names": scan_names, "rtg": rtgs, "timesteps": ts, "probs": probs, "dla": dla, "gate": np.stack(gates),
            "labels": labels, "at": at, "actions": actions, "direction": ctx.direction,
            "summary": {"rtg_time": summary}}


def rtg_time_render(d: dict, page: Page) -> None:
    page.text("The current timestep and target RTG swept together (everything else fixed). The gate is the lowest RTG "
              "from which the greedy action is the one at the highest RTG; the low gate, the lowest RTG whose action is no "
              "longer the one at the lowest RTG. A <b>switch</b> stays at one RTG at every timestep (its trend, the median "
              "over the last third of the timesteps minus the first third's, is within 0.2), a <b>graded</b> gate "
              "moves with time (the model compares the target with the return still reachable, e.g. it waits until that "
              "falls to the target).")
    s = d["summary"]["rtg_time"]
    page.table(["scenario", "gate (top action from)", "trend (RTG, last third - first)", "slope per 100 steps",
                "low gate (bottom action up to)", "trend", "slope", "greedy at t=0, lowest RTG", "highest RTG"],
               [[n, s[n]["kind"], s[n]["gate_trend"], s[n]["gate_slope_per_100_steps"], s[n]["kind_low"], s[n]["gate_low_trend"],
                 s[n]["gate_low_slope_per_100_steps"], s[n]["greedy_at_t0"]["lowest_rtg"], s[n]["greedy_at_t0"]["highest_rtg"]]
                for n in d["names"]])
    for j, n in enumerate(d["names"]):
        page.figure(plots.rtg_time(d["rtg"], d["timesteps"], d["probs"][j], d["gate"][j], d["dla"][j], d["labels"], d["at"],
                                   d["actions"], d["direction"]),
                    f"<b>{n}</b>: the greedy action over (timestep, target RTG) with its gates (dashed: top, dotted: low), and each "
                    "component's DLA against the timestep at three targets.")


SECTIONS = (Section("rtg_time", "RTG gate against time", rtg_time_compute, rtg_time_render, order=42),)
