"""PPO behaviour-data throughput: env steps/s of jitted PPO training, and of data collection.

    python benchmarks/bench_ppo.py [--env MiniGrid-Dynamic-Obstacles-8x8-v0] [--total_timesteps 1000000]
        [--num_envs 64] [--rollout_envs 256] [--rollout_steps 1000] [--repeat 2] [--quick]

Reports, each with compile time separate and timings after a warm-up with
``block_until_ready`` (best of ``--repeat``):
- the bare env (vmapped random steps in a scan, the peer to compare against);
- PPO training (rollouts + GAE + 4 epochs of minibatch updates), in env steps/s, with the final
  policy's mean return next to it (asserted >= 0.9 for the default 8x8 budget, as the data
  contract promises);
- mix collection (``make_rollout``: policy forward + epsilon + branching per env), in env steps/s.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

import envs
from dtjax.config import PPOConfig
from dtjax.data.ppo import make_rollout, make_train


def timed(fn, *args, repeat=2):
    t = time.perf_counter()
    c = jax.jit(fn).lower(*args).compile()
    compile_s = time.perf_counter() - t
    out = jax.block_until_ready(c(*args))  # warm-up
    best = np.inf
    for _ in range(repeat):
        t = time.perf_counter()
        out = jax.block_until_ready(c(*args))
        best = min(best, time.perf_counter() - t)
    return compile_s, best, out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--env", default="MiniGrid-Dynamic-Obstacles-8x8-v0")
    p.add_argument("--max_steps", type=int, default=300)
    p.add_argument("--total_timesteps", type=int, default=PPOConfig().total_timesteps)
    p.add_argument("--num_envs", type=int, default=PPOConfig().num_envs)
    p.add_argument("--rollout_envs", type=int, default=256)
    p.add_argument("--rollout_steps", type=int, default=1000)
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="a 200k-step PPO and no quality check")
    a = p.parse_args(argv)
    total = 200_000 if a.quick else a.total_timesteps
    env, params = envs.make(a.env, max_steps=a.max_steps)
    print(f"{jax.devices()[0].platform}: {jax.device_count()} device(s); {a.env}, max_steps {a.max_steps}")

    # ENV: the peer, random actions in a vmapped scan
    E, T = a.rollout_envs, a.rollout_steps
    vstep = jax.vmap(env.step, in_axes=(0, 0, 0, None))

    def bare(key):
        obs, state = jax.vmap(env.reset, in_axes=(0, None))(jax.random.split(key, E), params)

        def body(c, k):
            state, acc = c
            k_a, k_e = jax.random.split(k)
            o, state, r, te, tr, _ = vstep(jax.random.split(k_e, E), state, jax.random.randint(k_a, (E,), 0, 3), params)
            return (state, acc + r.sum() + o.sum()), None

        return jax.lax.scan(body, (state, 0.0), jax.random.split(key, T))[0][1]

    c_env, t_env, _ = timed(bare, jax.random.key(0), repeat=a.repeat)
    env_sps = E * T / t_env
    print(f"env (peer)     {E:5d} envs x {T} steps: {env_sps:12,.0f} steps/s   (compile {c_env:.1f}s)")

    # PPO: the whole training run
    cfg = PPOConfig(total_timesteps=total, num_envs=a.num_envs)
    train, network = make_train(cfg, env, params)
    c_ppo, t_ppo, out = timed(train, jax.random.key(0), repeat=a.repeat)
    n = cfg.num_updates * cfg.num_envs * cfg.num_steps
    ret = np.asarray(out["metrics"]["mean_return"])
    final = float(np.nanmean(ret[-max(1, len(ret) // 20):]))
    print(f"PPO training   {cfg.num_envs:5d} envs, {n} steps: {n / t_ppo:12,.0f} steps/s   (compile {c_ppo:.1f}s, "
          f"run {t_ppo:.1f}s, {n / t_ppo / env_sps:.2f}x the bare env); final mean return {final:.3f}")

    # COLLECTION: the mix rollout (final policy, eps 0.02, a third of the envs branching)
    rollout = make_rollout(env, params, network, E, T)
    stack = jax.tree.map(lambda x: x[None], out["params"])
    policy = jnp.where(jnp.arange(E) % 5 == 0, -1, 0).astype(jnp.int32)
    branch = jnp.where(jnp.arange(E) % 3 == 0, 32, 0).astype(jnp.int32)
    c_col, t_col, _ = timed(lambda k: rollout(k, stack, policy, jnp.full(E, 0.02), branch), jax.random.key(1), repeat=a.repeat)
    print(f"collection     {E:5d} envs x {T} steps: {E * T / t_col:12,.0f} steps/s   (compile {c_col:.1f}s, "
          f"{E * T / t_col / env_sps:.2f}x the bare env)")
    if not a.quick and a.env == "MiniGrid-Dynamic-Obstacles-8x8-v0" and total == PPOConfig().total_timesteps:
        assert final >= 0.9, f"PPO final mean return {final:.3f} < 0.9"


if __name__ == "__main__":
    main()
