"""Sections "model" (what was analysed) and "calibration" (achieved return against target RTG)."""

from __future__ import annotations

import html

import numpy as np

from dtjax import plots
from dtjax.evaluate import calibrate
from dtjax.report.base import Context, Page, Section


def model_compute(ctx: Context) -> dict:
    cfg, env = ctx.cfg, ctx.env_cfg
    return {"checkpoint": str(ctx.ckpt), "config": cfg.to_dict(), "env": env.to_dict(), "direction": ctx.direction,
            "actions": list(ctx.task.action_names),
            "obs_shape": list(cfg.obs_shape), "pos_rows": cfg.pos_rows}


def model_render(d: dict, page: Page) -> None:
    c, e = d["config"], d["env"]
    mlp = "attention-only" if c["attn_only"] else f"MLP {c['d_mlp']}"
    page.text(f"{html.escape(d['checkpoint'])}: {c['n_layers']} layer(s), d_model {c['d_model']}, "
              f"{c['n_heads']} heads of {c['d_head']}, {mlp}, LayerNorm {'on' if c['layer_norm'] else 'off'}, "
              f"obs {c['obs_mode']} {tuple(d['obs_shape'])}, context {c['n_timesteps']} timestep(s) ({d['pos_rows']} "
              f"positions), {c['time_embedding']} time embedding, max timestep {c['max_timestep']}. "
              f"Env: {e['env_id']}, max_steps {e['max_steps']}. "
              f"Directions are over actions ({', '.join(d['actions'])}); the default analysed is <b>{d['direction']}</b>. "
              "Observation maps are drawn as the agent sees them: rows are view y, the agent (black triangle) "
              "at the bottom centre facing up, so the cell directly in front is just above it."
              + (" With more than one timestep of context, scenarios are the first step of an episode, left-padded "
                 "as training and evaluation pad it (padding: zero observation, RTG 0, timestep 0, padding action), "
                 "and every panel is read at the last state token." if c["n_timesteps"] > 1 else ""))


def _calibration(ctx: Context) -> tuple[dict, str]:
    """The run's saved calibration (``calibration.json``), else one run now in the model's env (memoised)."""
    def run():
        o = ctx.options
        calib = ctx.calibration()
        if calib is not None:
            return calib, "saved with the checkpoint"
        calib = calibrate(ctx.params, ctx.cfg, ctx.env, ctx.env_params, ctx.key("calibration"),
                          np.linspace(*ctx.task.return_range, o.calib_rtgs), o.calib_episodes)
        return calib, f"run now: {o.calib_episodes} greedy episodes per target, max_steps {ctx.env_cfg.max_steps}"

    return ctx.memo("calibration", run)


def calibration_compute(ctx: Context) -> dict:
    """The run's saved calibration (``calibration.json``), else one run now in the model's env."""
    calib, source = _calibration(ctx)
    rows = calib["rows"]
    rates = [f"{o}_rate" for o in (ctx.task.success, *ctx.task.failures)]  # goal_rate, hit_rate
    return {"calib": calib, "source": source, "title": ctx.ckpt.stem, "outcomes": list(ctx.task.outcomes[1:]),
            "summary": {"calibration": [{k: r[k] for k in ("target_rtg", "mean_return", *rates)} for r in rows]}}


def calibration_render(d: dict, page: Page) -> None:
    page.text("Achieved return against the target RTG fed to the model (the original's black-box "
              f"characterisation); {d['source']}.")
    page.figure(plots.calibration(d["calib"], d["title"]), "Mean achieved return (line), percentile bands, and y = x (dash-dot).")
    outs = d["outcomes"]  # the task's: goal, hit, timeout
    page.table(["target RTG", "mean return", *outs, "mean length"],
               [[r["target_rtg"], r["mean_return"], *(r[f"{o}_rate"] for o in outs), r["mean_length"]]
                for r in d["calib"]["rows"]])


def calibration_undefined(ctx: Context) -> str | None:
    if not ctx.options.closed_loop and ctx.calibration() is None:
        return "no calibration is saved with the checkpoint and rollouts are off (closed_loop=False)"
    return None


SECTIONS = (
    Section("model", "Model", model_compute, model_render, order=0),
    Section("calibration", "Calibration", calibration_compute, calibration_render, order=10, undefined=calibration_undefined,
            prefetch=_calibration),
)
