"""Env throughput: the JAX ports (Dynamic Obstacles, Empty, Memory) vs the `minigrid` package, side by side, as a ratio.

    python benchmarks/bench_env.py [--families Dynamic-Obstacles Empty] [--sizes 8 16] [--batches 1 64 256 1024 4096] [--steps 1000]
    python benchmarks/bench_env.py --families --ids MiniGrid-MemoryS7FixedStart-v0   # Memory only
    python benchmarks/bench_env.py --gpu-sweep            # batch 2^10 .. 2^20, sizes 5 8 16

JAX: one jitted ``lax.scan`` over a vmapped batch (B = 1 runs the env unbatched), random actions
drawn inside the scan, auto-reset on (``env.step``; ``--no-autoreset`` adds ``env.step_env`` rows),
and every observation and reward summed into the carry so XLA cannot drop them. Compile time is
measured separately (``lower().compile()``); timings are after a warm-up run, with
``block_until_ready``, best of ``--repeat`` (the median is printed too: a shared CPU skews runs).
MiniGrid: ``gym.make`` (as users run it: ``DynamicObstaclesEnv``, ``EmptyEnv``, ``MemoryEnv``),
random actions (the same ones the JAX run draws: Dynamic Obstacles' and Empty's 3, Memory's 7),
resets included, one process; needs the test extra (``pip install -e .[test]``). The original's
fork ids (``MemoryS7FixedStart``, ``MemoryS7RandomDirection``) are timed against minigrid's
``MiniGrid-MemoryS7-v0``: the same class and grid, with pickup and drop working in the fork.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

import envs


def make_run(env, params, batch: int, steps: int, autoreset: bool = True):
    """A jitted ``run(key) -> int32`` doing ``steps`` steps of ``batch`` envs."""
    step_fn = env.step if autoreset else (lambda k, s, a, p: env.step_env(k, s, a, p)[:3] + (None, None, None))
    if batch == 1:
        reset, step = env.reset, step_fn
    else:
        reset = jax.vmap(env.reset, in_axes=(0, None))
        step = jax.vmap(step_fn, in_axes=(0, 0, 0, None))

    def keys(k):
        return k if batch == 1 else jax.random.split(k, batch)

    def run(key):
        k_reset, k_steps = jax.random.split(key)
        _, state = reset(keys(k_reset), params)

        def body(carry, k):
            state, acc = carry
            k_act, k_env = jax.random.split(k)
            action = jax.random.randint(k_act, () if batch == 1 else (batch,), 0, env.num_actions)
            obs, state, reward = step(keys(k_env), state, action, params)[:3]
            return (state, acc + obs.sum(dtype=jnp.int32) + reward.sum().astype(jnp.int32)), None

        (_, acc), _ = jax.lax.scan(body, (state, jnp.int32(0)), jax.random.split(k_steps, steps))
        return acc

    return jax.jit(run)


def jax_steps_per_second(env_id: str, batch: int, steps: int, repeat: int = 5, autoreset: bool = True):
    """(best steps/s, median steps/s, compile seconds)."""
    env, params = envs.make(env_id)
    run = make_run(env, params, batch, steps, autoreset)
    t = time.perf_counter()
    compiled = run.lower(jax.random.PRNGKey(0)).compile()
    compile_s = time.perf_counter() - t
    compiled(jax.random.PRNGKey(0)).block_until_ready()  # warm-up
    times = []
    for r in range(repeat):
        t = time.perf_counter()
        compiled(jax.random.PRNGKey(r + 1)).block_until_ready()
        times.append(time.perf_counter() - t)
    n = batch * steps
    return n / min(times), n / statistics.median(times), compile_s


# The fork's ids are not minigrid's: their peer is minigrid's MemoryEnv on the same 7x7 grid.
MINIGRID_PEER = {"MiniGrid-MemoryS7FixedStart-v0": "MiniGrid-MemoryS7-v0", "MiniGrid-MemoryS7RandomDirection-v0": "MiniGrid-MemoryS7-v0"}


def minigrid_steps_per_second(env_id: str, steps: int = 20_000, repeat: int = 3) -> float:
    """Best of ``repeat`` runs of ``steps`` random-policy steps of ``gym.make(env_id)`` (or its
    `MINIGRID_PEER`) over the JAX env's actions, resets included."""
    import gymnasium as gym
    import minigrid  # noqa: F401  (registers the ids)

    env = gym.make(MINIGRID_PEER.get(env_id, env_id))
    env.reset(seed=0)
    actions = np.random.default_rng(0).integers(0, envs.make(env_id)[0].num_actions, steps)
    best = 0.0
    for _ in range(repeat):
        t = time.perf_counter()
        for a in actions:
            _, _, term, trunc, _ = env.step(int(a))
            if term or trunc:
                env.reset()
        best = max(best, steps / (time.perf_counter() - t))
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--families", nargs="*", default=["Dynamic-Obstacles", "Empty"], help="MiniGrid-<family>-<size>x<size>-v0")
    p.add_argument("--sizes", type=int, nargs="+", default=[8, 16], help="5, 6, 8 or 16")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 64, 256, 1024, 4096])
    p.add_argument("--steps", type=int, default=500, help="scan length per timed run (x20 for batch 1)")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--no-autoreset", action="store_true", help="also time env.step_env (no reset work)")
    p.add_argument("--gpu-sweep", action="store_true", help="batch 2^10..2^20 and sizes 5 8 16 (for an accelerator)")
    p.add_argument("--ids", nargs="*", default=["MiniGrid-MemoryS7FixedStart-v0", "MiniGrid-MemoryS13Random-v0"],
                   help="whole env ids timed besides the families (default: Memory's fork and a random-length grid)")
    p.add_argument("--minigrid-steps", type=int, default=20_000)
    args = p.parse_args()
    batches, sizes = args.batches, args.sizes
    if args.gpu_sweep:
        batches, sizes = [2**k for k in range(10, 21)], [5, 8, 16]
    print(f"devices: {jax.devices()}  jax {jax.__version__}  cpus {os.cpu_count()}  load avg {os.getloadavg()[0]:.1f}")
    print("(a shared CPU lowers and skews these numbers: rerun if the best and median differ much)")
    head = f"{'env':36s} {'reset':>5s} {'batch':>8s} {'best steps/s':>14s} {'median':>12s} {'compile s':>9s} {'minigrid/s':>10s} {'ratio':>8s}"
    print(head)
    env_ids = [f"MiniGrid-{family}-{size}x{size}-v0" for family in args.families for size in sizes] + list(args.ids)
    for env_id in env_ids:
        try:
            peer = minigrid_steps_per_second(env_id, args.minigrid_steps)
        except ImportError:
            peer = float("nan")
        for b in batches:
            for autoreset in (True, False) if args.no_autoreset else (True,):
                steps = args.steps * 20 if b == 1 else args.steps
                best, med, comp = jax_steps_per_second(env_id, b, steps, args.repeat, autoreset)
                name = env_id.removeprefix("MiniGrid-")
                print(f"{name:36s} {'on' if autoreset else 'off':>5s} {b:8d} {best:14,.0f} {med:12,.0f} {comp:9.1f} "
                      f"{peer:10,.0f} {best / peer:7.0f}x", flush=True)


if __name__ == "__main__":
    main()
