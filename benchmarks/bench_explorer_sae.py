"""The explorer's per-step latency with and without the active-latents panel of sparse dictionaries.

    python benchmarks/bench_explorer_sae.py [--ckpt checkpoints/default] [--sae DIR ...] [--steps 200]

Builds two explorer sessions on the same model (``dtjax.explorer.session``): one without
dictionaries, one with the given ones (default: those under the run's ``sae/``), compiles each
explore step (compile time printed apart), then times ``steps`` key presses (alternating left /
right turns, so the episode never ends; each is ``Session.handle``: one jitted step, the replies
built) and prints the median and 90th percentile side by side with their ratio. Timings on a
shared machine are noisy: the load average is printed next to them.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's dtjax, not an installed one

import dtjax  # noqa: E402
from dtjax.explorer import sae as es  # noqa: E402
from dtjax.explorer.session import Model, Session  # noqa: E402


def compiled_session(model):
    """(session, seconds to its first reply: compile included)."""
    t0 = time.perf_counter()
    s = Session(model)
    s.start()
    s.handle({"type": "act", "action": 0})
    return s, time.perf_counter() - t0


def press(s, i: int) -> float:
    """One key press (a turn: the episode never ends), in ms."""
    t = time.perf_counter()
    replies = s.handle({"type": "act", "action": i % 2})
    assert replies[-1]["type"] == "panels", replies[-1]
    return 1e3 * (time.perf_counter() - t)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ckpt", default="checkpoints/default")
    ap.add_argument("--sae", action="append", default=[], help="dictionary directory (default: the run's sae/)")
    ap.add_argument("--steps", type=int, default=200)
    args = ap.parse_args(argv)

    cfg, params, env_cfg = dtjax.load(args.ckpt, with_env=True)
    saes = es.load_all(args.ckpt, cfg, params, args.sae, log=lambda m: print(m, file=sys.stderr))
    if not saes:
        print(f"error: no dictionary for {args.ckpt} (pass --sae DIR)", file=sys.stderr)
        return 1
    sessions = []
    for label, with_saes in (("no SAE", []), (f"{len(saes)} SAE(s)", saes)):
        model = Model(name="bench", path=str(args.ckpt), cfg=cfg, params=params, env_cfg=env_cfg, saes=list(with_saes))
        sessions.append((label, *compiled_session(model)))
    ms = [[], []]
    for r in range(0, args.steps, 20):  # interleaved rounds of 20 presses: the machine's load drifts alike for both
        for j, (_, s, _) in enumerate(sessions):
            s.handle({"type": "reset", "seed": r})  # untimed: a new episode, far from its time limit
            ms[j] += [press(s, r + i) for i in range(20)]
    rows = [(label, c, float(np.median(m)), float(np.percentile(m, 90))) for (label, _, c), m in zip(sessions, ms)]
    print(f"model {args.ckpt} (d_model {cfg.d_model}, {cfg.n_layers} layer(s), K={cfg.n_timesteps}); dictionaries: "
          + ", ".join(f"{s.name} ({s.cfg.hook} {s.cfg.token}, {s.cfg.n_latents} latents)" for s in saes))
    print(f"{args.steps} key presses per session; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(f"{'':12s} {'compile s':>10s} {'median ms':>10s} {'p90 ms':>8s}")
    print("(compile s: the first session also compiles what both share, e.g. the weight maps)")
    for label, c, med, p90 in rows:
        print(f"{label:12s} {c:10.1f} {med:10.2f} {p90:8.2f}")
    print(f"added per step: median {rows[1][2] - rows[0][2]:+.2f} ms (ratio {rows[1][2] / rows[0][2]:.2f}x), "
          f"p90 {rows[1][3] - rows[0][3]:+.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
