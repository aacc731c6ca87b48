"""Probe a trained DT and steer it along its probes: the numbers and figures of docs/findings.md §11.

    python scripts/probes_findings.py --checkpoint checkpoints/probes_default --name default [--out docs/findings]

``dtjax.probes.probe_table`` (every concept at every residual / component site of the rtg and
state tokens, with the raw-observation, random-model and shuffled-label baselines), then
``dtjax.probes.steer`` of the task's steering concept (``steer.plan``: "blocked ahead") at the
state token of each layer's residual stream over ``--episodes`` greedy episodes per alpha, against
random directions of the same norm. Writes ``<out>/probes_<name>.json``, the F1 heat map
``<out>/probes_<name>_f1.png`` and the dose-response ``<out>/probes_<name>_steering.png``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import jax
import numpy as np

from dtjax import plots
from dtjax.io import jsonable, write_json_atomic
from dtjax.probes import probe_table
from dtjax.probes import steer as steer_lib
from dtjax.run import Run


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--out", type=Path, default=Path("docs/findings"))
    p.add_argument("--episodes", type=int, default=1000, help="greedy episodes per steering world")
    p.add_argument("--alphas", default="-2,-1,0.5,1,2")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    run = Run.open(args.checkpoint).require_model()
    cfg, params = run.model_cfg, run.params
    env, env_params = run.env_cfg.make()
    t0 = time.perf_counter()
    tab = probe_table(params, cfg, env, env_params, jax.random.PRNGKey(args.seed))
    out = {"table_seconds": time.perf_counter() - t0, "rows": tab.rows, "sites": tab.sites, "concepts": tab.concepts,
           "f1": tab.f1, "steer": []}
    print(f"probe table: {out['table_seconds']:.0f} s", flush=True)
    concept, pos, neg = steer_lib.plan(env.task)
    alphas = [float(a) for a in args.alphas.split(",") if float(a) > 0 or neg is not None]
    targets = [pos if a > 0 else neg for a in alphas]
    hooks = [f"blocks.{layer}.hook_resid_pre" for layer in range(cfg.n_layers)] + [f"blocks.{cfg.n_layers - 1}.hook_resid_post"]
    for hook in hooks:
        direction, scale = steer_lib.probe_direction(tab, concept, hook, "state")
        t = time.perf_counter()
        r = steer_lib.steer(params, cfg, env, env_params, jax.random.PRNGKey(args.seed + 1), hook, "state", direction, scale,
                            alphas, targets, n_episodes=args.episodes)
        r["seconds"] = time.perf_counter() - t
        print(f"{hook}: success {np.round(r['success'], 3)}, control {np.round(r['control_success'], 3)} "
              f"({r['seconds']:.0f} s)", flush=True)
        out["steer"].append(r)
    args.out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out / f"probes_{args.name}.json", jsonable(out))
    sites = [f"{h} @{t}" for h, t in tab.sites]
    plots.save(plots.heatmap(tab.f1, sites, list(tab.concepts)), args.out / f"probes_{args.name}_f1.png", tight=True)
    series = {}
    for r in out["steer"]:
        series[f"{r['hook']}: probe"] = r["success"]
        series[f"{r['hook']}: random"] = r["control_success"]
    plots.save(plots.lines([f"{a:g}" for a in alphas], series, "episodes changed as targeted",
                           f"{concept} added at the state token ({', '.join(sorted(set(targets)))})"),
               args.out / f"probes_{args.name}_steering.png", tight=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
