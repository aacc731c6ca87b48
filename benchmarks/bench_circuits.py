"""Attribution patching vs activation patching over every hook, and EAP vs patching every edge.

    python benchmarks/bench_circuits.py [--checkpoint PATH] [--batch 64] [--repeats 5]

On a trained DT (default: the original overnight checkpoint), a batch of clean/corrupted pairs
(real states from random-policy rollouts at RTG 0.9, corrupted to RTG -1). Prints, side by side:

- activation patching of every hook, position and head (one vmapped sweep per hook) against
  attribution patching of the same (one forward per input and one backward pass);
- patching every edge of the graph on its own (one vmap over the edges) against edge attribution
  patching (one backward pass through the edge mask).

Compile time (first call minus a warm call) is reported apart; run time is the median of
``--repeats`` warm calls. Next to the timings, the agreement of the estimate with the exact
values (max abs error, Pearson r), so speed is never bought with silent wrong answers.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import dtjax
from dtjax import circuits as C
from dtjax import scenarios
from dtjax.circuits import graph as G

ROOT = Path(__file__).resolve().parents[1]


def timed(fn, repeats):
    """(first-call seconds, median warm seconds, result); results are blocked on."""
    t = time.perf_counter()
    out = jax.block_until_ready(fn())
    first = time.perf_counter() - t
    runs = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        runs.append(time.perf_counter() - t)
    return first, float(np.median(runs)), out


def flat(effects):
    return np.concatenate([np.asarray(v).ravel() for v in effects.values()])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", default=str(ROOT / "checkpoints" / "original" / "demo_model_overnight_training.pt"))
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    cfg, params = dtjax.load(args.checkpoint)
    if cfg.n_timesteps != 1:
        raise SystemExit("this benchmark builds single-timestep inputs; use a K = 1 checkpoint")
    clean = scenarios.sample_inputs(jax.random.PRNGKey(0), args.batch, rtg=0.9, obs_mode=cfg.obs_mode)
    corr = clean.with_rtg(jnp.full((args.batch,), -1.0))
    print(f"{Path(args.checkpoint).name}: {cfg.n_layers} layer(s), {cfg.n_heads} heads, d_model {cfg.d_model}; "
          f"batch {args.batch} pairs (RTG 0.9 vs -1); jax {jax.__version__} on {jax.devices()[0].platform}")

    a_first, a_run, act = timed(lambda: C.activation_patching(params, cfg, clean, corr)["effects"], args.repeats)
    b_first, b_run, atp = timed(lambda: C.attribution_patching(params, cfg, clean, corr)["effects"], args.repeats)
    n_nodes = sum(int(np.size(v)) for v in act.values())
    x, y = flat(act), flat(atp)
    ok = np.isfinite(x) & np.isfinite(y)
    print(f"\nnode patching over {len(act)} hooks, {n_nodes} (hook, position, head) nodes")
    print(f"  {'':28s}{'compile s':>10s}{'run s':>10s}")
    print(f"  {'activation patching':28s}{a_first - a_run:10.2f}{a_run:10.4f}")
    print(f"  {'attribution patching':28s}{b_first - b_run:10.2f}{b_run:10.4f}")
    print(f"  run-time ratio activation / attribution: {a_run / b_run:.1f}x; compile ratio "
          f"{(a_first - a_run) / max(b_first - b_run, 1e-9):.1f}x")
    print(f"  agreement: max |AtP - ActP| = {np.abs(x - y)[ok].max():.3f} (normalised units), "
          f"Pearson r = {np.corrcoef(x[ok], y[ok])[0, 1]:.3f}")

    g = G.inputs_graph(cfg, clean)
    _, patch_clean = C.sender_outputs(params, cfg, clean)
    idx = np.argwhere(g.allowed)
    masks = np.zeros((len(idx),) + g.allowed.shape, np.float32)
    masks[np.arange(len(idx)), idx[:, 0], idx[:, 1]] = 1.0
    v = C.action_vector("forward-right")
    every_edge = jax.jit(jax.vmap(lambda m: G.last_logit_metric(C.graph_forward(params, cfg, corr, patch_clean, m), v)))
    e_first, e_run, exact = timed(lambda: every_edge(jnp.asarray(masks)), args.repeats)
    f_first, f_run, eap = timed(lambda: C.edge_attribution_patching(params, cfg, clean, corr)["scores"], args.repeats)
    res = C.edge_attribution_patching(params, cfg, clean, corr)
    exact = (np.asarray(exact) - float(res["corrupted"])) / (float(res["clean"]) - float(res["corrupted"]))
    eap = np.asarray(eap)
    print(f"\nedge patching over {len(idx)} edges ({len(g.senders)} senders, {len(g.receivers)} receivers)")
    print(f"  {'every edge patched alone':28s}{e_first - e_run:10.2f}{e_run:10.4f}")
    print(f"  {'edge attribution patching':28s}{f_first - f_run:10.2f}{f_run:10.4f}")
    print(f"  run-time ratio: {e_run / f_run:.1f}x; agreement: max |EAP - exact| = {np.abs(eap - exact).max():.3f}, "
          f"Pearson r = {np.corrcoef(eap, exact)[0, 1]:.3f}")


if __name__ == "__main__":
    main()
