"""Collect a behaviour dataset on device: PPO training rollouts plus the configured mix.

``collect(cfg, env, env_params, key)`` runs the jitted PPO (every transition recorded), then the
extra rollouts of the mix (uniform random; the final policy with epsilon-random actions; earlier
snapshots with epsilon), and returns store-ready arrays of complete episodes, env-major (each
env's timeline in order, as the original's loader flattened them). Each env's trailing,
unfinished episode is dropped: its return (hence its RTG) is unknown. (The original instead
marked it truncated, which labels it with a wrong return-to-go.)
"""

from __future__ import annotations

import time

import jax
import numpy as np

from dtjax.config import DataConfig
from dtjax.data import store
from dtjax.data.ppo import make_rollout, make_train


def _episodes_env_major(rec: dict, source: int) -> dict[str, np.ndarray]:
    """(T, E, ...) time-major records -> complete episodes, env-major, flattened to (N, ...)."""
    rec = jax.tree.map(np.asarray, rec)
    done = rec["terminated"] | rec["truncated"]  # (T, E)
    T, E = done.shape
    last_done = np.where(done.any(0), T - 1 - np.argmax(done[::-1], axis=0), -1)  # (E,)
    keep = (np.arange(T)[:, None] <= last_done[None, :]).T.reshape(-1)  # env-major order

    def em(x):  # (T, E, ...) -> (E*T, ...) env-major, then keep complete episodes
        return np.swapaxes(x, 0, 1).reshape((E * T,) + x.shape[2:])[keep]

    st = rec["state"]
    return {
        "agent_pos": em(st.agent_pos), "agent_dir": em(st.agent_dir), "obstacles": em(st.obstacles), "time": em(st.time),
        "action": em(rec["action"]), "reward": em(rec["reward"]), "terminated": em(rec["terminated"]),
        "truncated": em(rec["truncated"]), "source": np.full(int(keep.sum()), source, np.int8),
    }


def collect(cfg: DataConfig, env, env_params, key: jax.Array, log=print) -> tuple[dict[str, np.ndarray], dict]:
    """Run PPO and the mix; return (arrays, info) with info holding PPO metrics and timings."""
    k_ppo, k_rand, k_eps, k_snap = jax.random.split(key, 4)
    t0 = time.time()
    train, network = make_train(cfg.ppo, env, env_params)
    out = jax.jit(train)(k_ppo)
    ppo_metrics = jax.tree.map(np.asarray, out["metrics"])
    t_ppo = time.time() - t0
    rec = out["transitions"]
    # (U, T, E, ...) -> (U*T, E, ...): each env's timeline continues across updates
    rec = jax.tree.map(lambda x: x.reshape((-1,) + x.shape[2:]), rec)
    parts = [_episodes_env_major(rec, 0)]
    last = ppo_metrics["mean_return"][-5:]
    log(f"PPO: {cfg.ppo.num_updates * cfg.ppo.num_envs * cfg.ppo.num_steps} steps in {t_ppo:.1f}s, "
        f"mean return of the last 5 updates {np.nanmean(last):.3f}")

    def extra(n_steps, k, params, eps, source):
        n_envs = min(cfg.rollout_envs, max(1, n_steps))
        steps = max(1, n_steps // n_envs)
        rollout = jax.jit(make_rollout(env, env_params, network, n_envs, steps), static_argnums=())
        parts.append(_episodes_env_major(rollout(k, params, eps), source))

    t1 = time.time()
    if cfg.random_steps:
        extra(cfg.random_steps, k_rand, None, 1.0, 1)
    if cfg.eps_steps:
        extra(cfg.eps_steps, k_eps, out["params"], cfg.eps, 2)
    if cfg.snapshot_steps:
        n_snap = jax.tree.leaves(out["snapshots"])[0].shape[0]
        for i in range(n_snap - 1):  # the last snapshot is the final policy
            snap = jax.tree.map(lambda x: x[i], out["snapshots"])
            extra(cfg.snapshot_steps, jax.random.fold_in(k_snap, i), snap, cfg.eps, 3)
    arrays = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    info = {
        "ppo_seconds": t_ppo,
        "mix_seconds": time.time() - t1,
        "ppo_final_mean_return": float(np.nanmean(last)),
        "ppo_mean_return_per_update": [None if np.isnan(x) else float(x) for x in ppo_metrics["mean_return"]],
    }
    return arrays, info, out["params"], network


def evaluate_policy(network, params, env, env_params, key, n_episodes: int = 200, greedy: bool = False) -> dict:
    """Mean return of a PPO policy over ``n_episodes`` complete episodes (sampled or greedy)."""
    import jax.numpy as jnp

    max_steps = int(env_params.max_steps_in_episode)
    vstep = jax.vmap(env.step, in_axes=(0, 0, 0, None))

    @jax.jit
    def run(key):
        k_reset, k_run = jax.random.split(key)
        obs, state = jax.vmap(env.reset, in_axes=(0, None))(jax.random.split(k_reset, n_episodes), env_params)

        def step(c, k):
            obs, state, done, ret = c
            k_a, k_e = jax.random.split(k)
            logits, _ = network.apply(params, obs)
            a = jnp.argmax(logits, -1) if greedy else jax.random.categorical(k_a, logits)
            obs, state, r, te, tr, _ = vstep(jax.random.split(k_e, n_episodes), state, a, env_params)
            ret = jnp.where(done, ret, ret + r)
            return (obs, state, done | te | tr, ret), None

        (_, _, done, ret), _ = jax.lax.scan(step, (obs, state, jnp.zeros(n_episodes, bool), jnp.zeros(n_episodes)),
                                            jax.random.split(k_run, max_steps))
        return ret

    ret = np.asarray(run(key))
    return {"mean_return": float(ret.mean()), "goal": float((ret > 0).mean()), "hit": float((ret <= -1).mean())}


def dataset_metadata(cfg: DataConfig, env, env_params, env_id: str, seed: int) -> dict:
    return {
        "env_id": env_id,
        "max_steps": int(env_params.max_steps_in_episode),
        "n_obstacles": env.n_obstacles,
        "obs_mode": env.obs_mode,
        "seed": int(seed),
        "data_config": cfg.to_dict(),
        "sources": list(store.SOURCES),
    }
