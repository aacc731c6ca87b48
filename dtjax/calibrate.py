"""Return conditioning by method: ``python -m dtjax.calibrate`` (issue 20).

Trains every method of ``METHODS`` (a set of config changes on top of a base ``TrainConfig``)
with ``--num_seeds`` vmapped seeds through ``dtjax.train.train_and_evaluate``, reads each seed's
``calibration.json`` (21 targets over the task's return range, each played until its mean return
has standard error ``calib_se``: the JAX env, greedy) and writes, under ``--out``:

- ``calibration_methods.md`` / ``.json``: per method, mean ± sd over seeds of the calibration
  error (mean |achieved - target| over the targets below the best return, [-1, 0.9] in Dynamic
  Obstacles; and over all targets), the Spearman rank correlation of achieved with target, the
  returns at the lowest, middle and highest target, the monotonic seeds, and the training time;
- ``calibration_methods.png``: every method's mean calibration curve (± sd over seeds) on one axis
  (``dtjax.plots.calibration_methods``).

A method whose run directory already has a ``summary.json`` is read, not retrained, so an
interrupted comparison resumes where it stopped.

    python -m dtjax.calibrate --out runs/calib --methods baseline,wait,wait_blind_r2 --num_seeds 4
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from dtjax import io, plots
from dtjax.config import ConfigError, ModelConfig, TrainConfig
from dtjax.evaluate import Window, spearman
from dtjax.model import forward
from dtjax.train import RunError, train_and_evaluate

# method -> (config changes as "section.field" paths, where it comes from). Each method sets the mix
# sources and the label it is about, so it stays the same method when the defaults change.
METHODS: dict[str, tuple[dict, str]] = {
    "baseline": ({"data.mix.wait_frac": 0.0, "data.mix.blind_frac": 0.0, "data.mix.random_frac": 0.1, "data.rtg_label": "realised"},
                 "realised returns-to-go on PPO + final + random rollouts (the default before issue 20)"),
    "esper": ({"data.mix.wait_frac": 0.0, "data.mix.blind_frac": 0.0, "data.mix.random_frac": 0.1, "data.rtg_label": "group_mean"},
              "ESPER-style expected-return labels: each behaviour group's mean return (Paster et al. 2022)"),
    "wait": ({"data.mix.wait_frac": 0.3, "data.mix.blind_frac": 0.0, "data.mix.random_frac": 0.1, "data.rtg_label": "realised"},
             "data coverage: + wait rollouts (turn in place for w ~ U{0..max_steps-1} steps, then the final policy)"),
    "wait_esper": ({"data.mix.wait_frac": 0.3, "data.mix.blind_frac": 0.0, "data.mix.random_frac": 0.1, "data.rtg_label": "group_mean"},
                   "wait rollouts and ESPER-style group-mean labels together"),
    "wait_hazard": ({"data.mix.wait_frac": 0.3, "data.mix.blind_frac": 0.0, "data.mix.random_frac": 0.1, "data.mix.hazard_frac": 0.2, "data.rtg_label": "hazard_mean"},
                    "wait rollouts + hazard rollouts (random play after a wait near the time limit) labelled "
                    "with each wait's mean return (ESPER-style, only there)"),
    "wait_hazard20": ({"data.mix.wait_frac": 0.3, "data.mix.blind_frac": 0.0, "data.mix.random_frac": 0.1, "data.mix.hazard_frac": 0.3, "data.mix.hazard_window": 20,
                       "data.rtg_label": "hazard_mean"},
                      "wait_hazard with the waits in the last 20 steps (crash rates that fill (0, 1) more evenly)"),
    "wait_blind": ({"data.mix.wait_frac": 0.3, "data.mix.blind_frac": 0.3, "data.mix.blind_window": 20,
                    "data.mix.random_frac": 0.1, "data.rtg_label": "blind_mean"},
                   "wait rollouts + blind rollouts (the final policy, greedy and blind to the balls, after a wait in the "
                   "last 20 steps) labelled with each wait's mean return: crash rates from the env's randomness "
                   "(ESPER)"),
    "wait_blind12": ({"data.mix.wait_frac": 0.3, "data.mix.blind_frac": 0.3, "data.mix.blind_window": 12,
                      "data.mix.random_frac": 0.1, "data.rtg_label": "blind_mean"},
                     "wait_blind with the waits in the last 12 steps (fewer blind goals, group means in (-0.8, 0): "
                     "further from the crash data's -1)"),
    "wait_blind_r2": ({"data.mix.wait_frac": 0.3, "data.mix.blind_frac": 0.3, "data.mix.blind_window": 20,
                       "data.mix.random_frac": 0.2, "data.rtg_label": "blind_mean"},
                      "wait_blind with twice the random episodes (crashes from the start states: the RTG -1 end); "
                      "the default since issue 20"),
    "value_critic": ({"data.mix.wait_frac": 0.0, "data.mix.blind_frac": 0.0, "data.mix.random_frac": 0.1,
                      "data.rtg_label": "value_critic"},
                     "QDT-style value relabelling (Yamagata et al. 2023) with the final PPO critic: max(V(s_t), r_t + R_t+1)"),
    "value_fitted": ({"data.mix.wait_frac": 0.0, "data.mix.blind_frac": 0.0, "data.mix.random_frac": 0.1,
                      "data.rtg_label": "value_fitted"},
                     "QDT-style value relabelling with V = max_a Q(s, t, a) fitted offline (Monte-Carlo regression)"),
    "q_fitted": ({"data.mix.wait_frac": 0.0, "data.mix.blind_frac": 0.0, "data.mix.random_frac": 0.1,
                  "data.rtg_label": "q_fitted"},
                 "expected return-to-go labels: each step's RTG replaced by Q(s_t, t, a_t) fitted offline (dtjax.data.value)"),
}


def with_changes(cfg, changes: dict):
    """``cfg`` (a nested frozen config) with ``{"a.b.c": value}`` changes applied."""
    by_head: dict[str, dict] = {}
    direct = {}
    for path, v in changes.items():
        head, _, rest = path.partition(".")
        if rest:
            by_head.setdefault(head, {})[rest] = v
        else:
            direct[head] = v
    for head, sub in by_head.items():
        direct[head] = with_changes(getattr(cfg, head), sub)
    return cfg.replace(**direct)


def method_config(base: TrainConfig, method: str, out: str | Path) -> TrainConfig:
    """The config of ``method``'s run: ``base`` with the method's changes, in ``out/<method>``."""
    if method not in METHODS:
        raise ConfigError(f"unknown method {method!r}; methods: {', '.join(METHODS)}")
    return with_changes(base, METHODS[method][0]).replace(run_name=method, checkpoint_dir=str(out))


def gate_map(params: dict, cfg: ModelConfig, env, env_params, key: jax.Array, rtgs, timesteps, n_starts: int = 64) -> np.ndarray:
    """Where the RTG gate sits: the policy at the env's start states (``n_starts`` resets) as the
    target RTG and the timestep vary, everything else fixed (a one-step context, as at an
    episode's first step).

    Returns (len(timesteps), len(rtgs), n_actions): the mean action probabilities over the starts.
    A model with a switch at RTG ~ 0 has the same column boundary at every timestep; one that has
    learnt to wait moves its forward boundary to lower RTGs as time runs out (the goal pays
    1 - 0.9 t / max_steps).
    """
    obs, _ = jax.vmap(env.reset, in_axes=(0, None))(jax.random.split(key, n_starts), env_params)
    r = jnp.asarray(rtgs, jnp.float32)
    t = jnp.minimum(jnp.asarray(timesteps, jnp.int32), cfg.max_timestep)
    grid_r = jnp.broadcast_to(r[None, :, None], (len(t), len(r), n_starts))
    grid_t = jnp.broadcast_to(t[:, None, None], grid_r.shape)
    o = jnp.broadcast_to(obs, grid_r.shape + obs.shape[1:])
    w = Window.start(o, grid_r, grid_t, cfg.n_timesteps, cfg.n_actions)
    flat = lambda x: x.reshape((-1,) + x.shape[3:])  # noqa: E731
    logits = forward(params, cfg, flat(w.obs), flat(w.rtg), flat(w.timesteps), flat(w.actions) if cfg.n_timesteps > 1 else None)
    probs = jax.nn.softmax(logits[:, -1], -1).reshape(grid_r.shape + (-1,))
    return np.asarray(probs.mean(2))


def seed_calibrations(run_dir: Path) -> list[dict]:
    """Every seed's ``calibration.json`` of a run directory (one seed: the run's own)."""
    seeds = sorted(run_dir.glob("seed_*/calibration.json"), key=lambda p: int(p.parent.name.split("_")[1]))
    paths = seeds or [run_dir / "calibration.json"]
    return [json.loads(p.read_text()) for p in paths]


def _curve(calib: dict) -> tuple[np.ndarray, np.ndarray]:
    rows = calib["rows"]
    return np.array([r["target_rtg"] for r in rows], np.float64), np.array([r["mean_return"] for r in rows], np.float64)


def method_row(calibs: list[dict], train_seconds: float | None = None) -> dict:
    """One method's numbers over its seeds (each ``[mean, sd]`` over seeds; sd 0 with one seed)."""
    curves = [_curve(c) for c in calibs]
    x = curves[0][0]
    y = np.stack([c[1] for c in curves])  # (seeds, targets)
    err = np.abs(y - x).mean(1)
    err_reach = np.abs(y - x)[:, :-1].mean(1)
    rho = np.array([spearman(x, yi) for yi in y])
    ms = lambda v: [float(np.mean(v)), float(np.std(v))]  # noqa: E731
    mid = int(np.argmin(np.abs(x - (x[0] + x[-1]) / 2)))
    return {
        "seeds": len(calibs),
        "calibration_error_reachable": ms(err_reach),
        "calibration_error": ms(err),
        "spearman": ms(rho),
        "return_low": ms(y[:, 0]), "return_mid": ms(y[:, mid]), "return_high": ms(y[:, -1]),
        "targets": [float(x[0]), float(x[mid]), float(x[-1])],
        "monotonic_seeds": int(sum(bool(c["monotonic"]) for c in calibs)),
        "train_seconds": train_seconds,
        "curve": {"target": x.tolist(), "mean": y.mean(0).tolist(), "sd": y.std(0).tolist()},
    }


def format_table(rows: dict[str, dict]) -> str:
    """Markdown table of ``method_row``s (mean ± sd over seeds)."""
    f = lambda v, d=3: f"{v[0]:.{d}f} ± {v[1]:.{d}f}"  # noqa: E731
    any_row = next(iter(rows.values()))
    lo, mid, hi = any_row["targets"]
    lines = [f"| method | seeds | calib. error (targets < {hi:g}) | calib. error (all) | Spearman | return @{lo:g} | "
             f"return @{mid:g} | return @{hi:g} | monotonic | train s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        t = "–" if r["train_seconds"] is None else f"{r['train_seconds']:.0f}"
        lines.append(f"| {name} | {r['seeds']} | {f(r['calibration_error_reachable'])} | {f(r['calibration_error'])} | "
                     f"{f(r['spearman'])} | {f(r['return_low'])} | {f(r['return_mid'])} | {f(r['return_high'])} | "
                     f"{r['monotonic_seeds']}/{r['seeds']} | {t} |")
    return "\n".join(lines)


def compare(base: TrainConfig, methods: list[str], out: str | Path, progress: bool = True) -> dict[str, dict]:
    """Train (or read) every method and write the table and figure under ``out``; returns the rows."""
    out = Path(out)
    rows = {}
    for m in methods:
        cfg = method_config(base, m, out)
        run_dir = out / m
        if (run_dir / "summary.json").exists():
            summary = json.loads((run_dir / "summary.json").read_text())
        else:
            summary = train_and_evaluate(cfg, progress=progress)
        rows[m] = method_row(seed_calibrations(run_dir), summary.get("seconds", {}).get("train"))
        rows[m]["config"] = METHODS[m][0]
        rows[m]["about"] = METHODS[m][1]
    table = format_table(rows)
    io.write_text_atomic(out / "calibration_methods.md", table + "\n")
    io.write_json_atomic(out / "calibration_methods.json", rows)
    curves = {m: (r["curve"]["target"], r["curve"]["mean"], r["curve"]["sd"]) for m, r in rows.items()}
    n = {r["seeds"] for r in rows.values()}
    plots.save(plots.calibration_methods(curves, f"{base.env.env_id}: calibration by method "
                                                 f"({'/'.join(map(str, sorted(n)))} seeds each)"),
               out / "calibration_methods.png", dpi=110)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m dtjax.calibrate", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="directory of the method runs, the table and the figure")
    p.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated, of: {', '.join(METHODS)}")
    p.add_argument("--num_seeds", type=int, default=4, help="seeds per method, trained together (vmapped)")
    p.add_argument("--num_steps", type=int, default=TrainConfig.num_steps, help="DT optimizer steps per run")
    p.add_argument("--env", default=TrainConfig().env.env_id, help="env id (any registered family)")
    p.add_argument("--calib_se", type=float, default=TrainConfig.calib_se, help="standard error of each calibration point")
    p.add_argument("--seed", type=int, default=0, help="first seed")
    a = p.parse_args(argv)
    try:
        base = TrainConfig(num_seeds=a.num_seeds, num_steps=a.num_steps, seed=a.seed, calib_se=a.calib_se,
                           eval_every=0, env=TrainConfig().env.replace(env_id=a.env))
        rows = compare(base, [m.strip() for m in a.methods.split(",") if m.strip()], a.out)
    except (ConfigError, RunError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
