"""PPO behaviour-data throughput: env steps/s of jitted PPO training, and of data collection.

    python benchmarks/bench_ppo.py [--env MiniGrid-Dynamic-Obstacles-8x8-v0] [--total_timesteps 1000000]
        [--num_envs 64] [--rollout_envs 256] [--rollout_steps 1000] [--repeat 2] [--quick]
    python benchmarks/bench_ppo.py --env MiniGrid-MemoryS7FixedStart-v0 --repeat 1   # the recurrent PPO

The env's task presets (``envs.task_of(env).presets``: Memory's GRU PPO, max_steps 50, one-hot
views) are the base of the PPO config, the env's max_steps and obs mode; flags override them.

Reports, each with compile time separate and timings after a warm-up with
``block_until_ready`` (best of ``--repeat``):
- the bare env (vmapped random steps in a scan, the peer to compare against);
- PPO training (rollouts + GAE + 4 epochs of minibatch updates), in env steps/s, with the final
  policy's mean return next to it (asserted >= 0.9 for the default 8x8 budget, as the data
  contract promises);
- mix collection (``make_rollout``: policy forward + epsilon + branching per env), in env steps/s;
- for the GRU PPO (``--arch gru``, Memory's preset) also the final policy's greedy success rate
  over 512 episodes (asserted >= 0.95 on MemoryS7FixedStart at the preset budget).
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

import envs
from dtjax.config import PPOConfig
from dtjax.data.collect import TRAINERS


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
    p.add_argument("--max_steps", type=int, default=None, help="default: the task preset's, else 300")
    p.add_argument("--obs_mode", default=None, help="default: the task preset's, else image")
    p.add_argument("--arch", default=None, choices=("mlp", "gru"), help="default: the task preset's, else mlp")
    p.add_argument("--total_timesteps", type=int, default=None)
    p.add_argument("--num_envs", type=int, default=None)
    p.add_argument("--rollout_envs", type=int, default=256)
    p.add_argument("--rollout_steps", type=int, default=1000)
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="a 200k-step PPO and no quality check")
    a = p.parse_args(argv)
    presets = envs.task_of(a.env).presets
    preset_env = presets.get("env", {})
    max_steps = a.max_steps or preset_env.get("max_steps", 300)
    obs_mode = a.obs_mode or preset_env.get("obs_mode", "image")
    ppo_over = {k: v for k, v in (("arch", a.arch), ("total_timesteps", a.total_timesteps), ("num_envs", a.num_envs))
                if v is not None}
    preset_cfg = PPOConfig.from_dict(dict(presets.get("data", {}).get("ppo", {})))
    cfg = preset_cfg.replace(**ppo_over)
    if a.quick:
        cfg = cfg.replace(total_timesteps=200_000)
    env, params = envs.make(a.env, max_steps=max_steps, obs_mode=obs_mode)
    trainer = TRAINERS[cfg.arch]
    print(f"{jax.devices()[0].platform}: {jax.device_count()} device(s); {a.env}, max_steps {max_steps}, {obs_mode}, "
          f"PPO {cfg.arch}")

    # ENV: the peer, random actions in a vmapped scan
    E, T = a.rollout_envs, a.rollout_steps
    vstep = jax.vmap(env.step, in_axes=(0, 0, 0, None))

    def bare(key):
        obs, state = jax.vmap(env.reset, in_axes=(0, None))(jax.random.split(key, E), params)

        def body(c, k):
            state, acc = c
            k_a, k_e = jax.random.split(k)
            o, state, r, te, tr, _ = vstep(jax.random.split(k_e, E), state, jax.random.randint(k_a, (E,), 0, env.num_actions), params)
            return (state, acc + r.sum() + o.sum()), None

        return jax.lax.scan(body, (state, 0.0), jax.random.split(key, T))[0][1]

    c_env, t_env, _ = timed(bare, jax.random.key(0), repeat=a.repeat)
    env_sps = E * T / t_env
    print(f"env (peer)     {E:5d} envs x {T} steps: {env_sps:12,.0f} steps/s   (compile {c_env:.1f}s)")

    # PPO: the whole training run
    train, network = trainer.make_train(cfg, env, params)
    c_ppo, t_ppo, out = timed(train, jax.random.key(0), repeat=a.repeat)
    n = cfg.num_updates * cfg.num_envs * cfg.num_steps
    ret = np.asarray(out["metrics"]["mean_return"])
    final = float(np.nanmean(ret[-max(1, len(ret) // 20):]))
    print(f"PPO training   {cfg.num_envs:5d} envs, {n} steps: {n / t_ppo:12,.0f} steps/s   (compile {c_ppo:.1f}s, "
          f"run {t_ppo:.1f}s, {n / t_ppo / env_sps:.2f}x the bare env); final mean return {final:.3f}")

    # COLLECTION: the mix rollout (final policy, eps 0.02, a third of the envs branching)
    rollout = trainer.make_rollout(env, params, network, E, T)
    stack = jax.tree.map(lambda x: x[None], out["params"])
    policy = jnp.where(jnp.arange(E) % 5 == 0, -1, 0).astype(jnp.int32)
    branch = jnp.where(jnp.arange(E) % 3 == 0, 32, 0).astype(jnp.int32)
    c_col, t_col, _ = timed(lambda k: rollout(k, stack, policy, jnp.full(E, 0.02), branch), jax.random.key(1), repeat=a.repeat)
    print(f"collection     {E:5d} envs x {T} steps: {E * T / t_col:12,.0f} steps/s   (compile {c_col:.1f}s, "
          f"{E * T / t_col / env_sps:.2f}x the bare env)")
    if not a.quick and a.env == "MiniGrid-Dynamic-Obstacles-8x8-v0" and cfg == PPOConfig():
        assert final >= 0.9, f"PPO final mean return {final:.3f} < 0.9"
    if cfg.arch == "gru":  # the final policy's greedy success over the first episode of 512 envs
        n_eval = 512
        greedy = jax.jit(trainer.make_rollout(env, params, network, n_eval, max_steps))
        rec = greedy(jax.random.key(2), stack, jnp.zeros(n_eval, jnp.int32), jnp.zeros(n_eval), jnp.zeros(n_eval, jnp.int32),
                     jnp.full(n_eval, 1e-6, jnp.float32))  # temperature ~0: the argmax
        done = np.asarray(rec["terminated"] | rec["truncated"])
        end = done.argmax(0)
        success = float((np.asarray(rec["reward"])[end, np.arange(n_eval)] > 0).mean())
        print(f"greedy success of the final policy: {success:.3f} (512 episodes)")
        if not a.quick and a.env == "MiniGrid-MemoryS7FixedStart-v0" and cfg == preset_cfg:
            assert success >= 0.95, f"greedy success {success:.3f} < 0.95"


if __name__ == "__main__":
    main()
