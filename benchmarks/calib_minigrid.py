"""A few calibration points of a trained DT in the real ``minigrid`` env, beside its JAX-env calibration.

The JAX env is a port of MiniGrid's (tests/test_envs.py checks transitions in lockstep), so the
achieved return at a target should agree within sampling noise. This plays a one-timestep-context
DT (``model.n_timesteps == 1``) greedily in ``gymnasium.make(env_id, max_steps=...)``, one Python
step at a time (minigrid is a test extra), and prints, per target, the minigrid mean return ± SE
beside the JAX env's ``calibration.json`` row.

    python benchmarks/calib_minigrid.py RUN_DIR [--targets -0.5,0.3,0.6] [--episodes 200]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's dtjax, not an installed one

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from dtjax.model import forward  # noqa: E402
from dtjax.run import Run  # noqa: E402


def play(run: Run, targets: list[float], episodes: int) -> dict[float, np.ndarray]:
    """Returns of ``episodes`` greedy episodes (reset seeds 0..) per target in the real minigrid env."""
    import gymnasium as gym
    import minigrid  # noqa: F401  (registers the envs)

    cfg, params, env_cfg = run.model_cfg, run.params, run.env_cfg
    if cfg.n_timesteps != 1 or cfg.obs_mode != "image":
        raise SystemExit("this check plays one-timestep-context, raw-image models only")
    act = jax.jit(lambda o, r, t: forward(params, cfg, o, r, t)[0, -1].argmax())
    genv = gym.make(env_cfg.env_id, max_steps=env_cfg.max_steps)
    out = {}
    for target in targets:
        rets = []
        for seed in range(episodes):
            obs, _ = genv.reset(seed=seed)
            rtg, t, done, ret = float(target), 0, False, 0.0
            while not done:
                o = jnp.asarray(np.asarray(obs["image"], np.uint8)[None, None])
                a = int(act(o, jnp.asarray([[rtg]], jnp.float32), jnp.asarray([[min(t, cfg.max_timestep)]], jnp.int32)))
                obs, reward, term, trunc, _ = genv.step(a)
                rtg -= reward
                ret += reward
                t += 1
                done = term or trunc
            rets.append(ret)
        out[target] = np.asarray(rets)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", help="a dtjax run directory (one seed) with calibration.json")
    p.add_argument("--targets", default="-0.5,0.3,0.6")
    p.add_argument("--episodes", type=int, default=200)
    a = p.parse_args()
    run = Run.open(a.run).require_model()
    targets = [float(x) for x in a.targets.split(",")]
    calib = json.loads((Path(a.run) / "calibration.json").read_text())
    rows = {round(r["target_rtg"], 6): r for r in calib["rows"]}
    for t, rets in play(run, targets, a.episodes).items():
        r = rows.get(round(t, 6))
        jax_part = f"JAX env {r['mean_return']:+.3f} ± {r['se_return']:.3f} ({r['episodes']} episodes)" if r else "not in the sweep"
        print(f"target {t:+.2f}: minigrid {rets.mean():+.3f} ± {rets.std() / np.sqrt(len(rets)):.3f} ({len(rets)} episodes); {jax_part}")


if __name__ == "__main__":
    main()
