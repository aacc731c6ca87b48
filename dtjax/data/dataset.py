"""The offline Decision Transformer dataset: RTGs, context windows, and a jitted sampler.

Follows the original's `TrajectoryLoader.get_batch` (original-project.md §3):
- a window's trajectory is drawn with probability proportional to its length and its start
  uniformly within it, which is the same as drawing a start transition uniformly over all
  (selected) transitions: that is how we sample;
- with probability ``prob_go_from_end`` the window instead ends at the episode's last step;
- the window holds up to K steps from its start, left-padded to K (padding: zero observation,
  RTG 0, timestep 0, the padding action ``n_actions``, mask False);
- RTG is the undiscounted return from that step to the end of its episode;
- timesteps are the env's step counts, clipped to the model's ``max_timestep``;
- ``pct_traj`` keeps the best episodes by return whose cumulative length fits in that fraction
  of all steps (at least one). Unlike the original's strict ``<``, ``pct_traj = 1`` keeps all.

Observations are regenerated from the compact states with the jitted ``env.observe`` inside the
sampler, so a batch is one jitted call over device arrays with no Python loop per example.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from dtjax.data import store


def returns_to_go(reward: np.ndarray, done: np.ndarray) -> np.ndarray:
    """Undiscounted return-to-go per step, restarting at episode ends (vectorised NumPy).

    ``reward``, ``done`` (N,) with ``done`` marking each episode's last step.
    """
    reward = np.asarray(reward, np.float64)
    ends = np.flatnonzero(done)
    if len(ends) == 0 or ends[-1] != len(reward) - 1:
        ends = np.append(ends, len(reward) - 1)
    starts = np.concatenate([[0], ends[:-1] + 1])
    lengths = ends - starts + 1
    total = np.add.reduceat(reward, starts)
    before = np.cumsum(reward) - reward  # sum of rewards strictly before each step
    rtg = np.repeat(total, lengths) - (before - np.repeat(before[starts], lengths))
    return rtg.astype(np.float32)


@dataclasses.dataclass(frozen=True)
class SampleConfig:
    """Static settings of the sampler (hashable, so they can be jit-static)."""

    n_timesteps: int  # K
    max_timestep: int  # clip of the timestep token
    n_actions: int = 3
    prob_go_from_end: float = 0.1


def select_top(returns: np.ndarray, lengths: np.ndarray, pct_traj: float) -> np.ndarray:
    """Indices of the best episodes by return whose cumulative length is <= pct_traj * steps."""
    order = np.argsort(-returns, kind="stable")
    cum = np.cumsum(lengths[order])
    n_keep = max(1, int(np.searchsorted(cum, pct_traj * lengths.sum() + 1e-9, side="right")))
    return np.sort(order[:n_keep])


def device_arrays(arrays: dict[str, np.ndarray], pct_traj: float = 1.0) -> dict[str, jax.Array]:
    """Everything the jitted sampler needs, as device arrays (int32 / float32)."""
    ep, starts, lengths, returns = store.episode_index(arrays)
    done = np.asarray(arrays["terminated"]) | np.asarray(arrays["truncated"])
    keep = select_top(returns, lengths, pct_traj)
    valid_idx = np.concatenate([np.arange(starts[e], starts[e] + lengths[e]) for e in keep]) if len(keep) < len(starts) else np.arange(len(ep))
    i32 = lambda x: jnp.asarray(np.asarray(x, np.int32))  # noqa: E731
    return {
        "agent_pos": i32(arrays["agent_pos"]),
        "agent_dir": i32(arrays["agent_dir"]),
        "obstacles": i32(arrays["obstacles"]),
        "time": i32(arrays["time"]),
        "action": i32(arrays["action"]),
        "rtg": jnp.asarray(returns_to_go(arrays["reward"], done)),
        "episode": i32(ep),
        "ep_start": i32(starts),
        "ep_len": i32(lengths),
        "valid_idx": i32(valid_idx),
    }


def sample_batch(key: jax.Array, data: dict, batch_size: int, *, env, cfg: SampleConfig) -> dict[str, jax.Array]:
    """A batch of K-step windows, jittable.

    Returns dict: obs (B, K, *obs_shape) uint8, rtg (B, K) float32, timesteps (B, K) int32,
    actions (B, K) int32 (padding = n_actions), mask (B, K) bool (False on padding).
    """
    from envs import EnvState

    K = cfg.n_timesteps
    k_idx, k_end = jax.random.split(key)
    pick = jax.random.randint(k_idx, (batch_size,), 0, data["valid_idx"].shape[0])
    idx = data["valid_idx"][pick]
    ep = data["episode"][idx]
    start, length = data["ep_start"][ep], data["ep_len"][ep]
    go_end = jax.random.uniform(k_end, (batch_size,)) < cfg.prob_go_from_end
    si = jnp.where(go_end, start + jnp.maximum(0, length - K), idx)
    tlen = jnp.minimum(K, start + length - si)
    offs = jnp.arange(K)[None, :] - (K - tlen)[:, None]
    valid = offs >= 0
    gi = si[:, None] + jnp.maximum(offs, 0)
    states = EnvState(agent_pos=data["agent_pos"][gi], agent_dir=data["agent_dir"][gi],
                      obstacles=data["obstacles"][gi], time=data["time"][gi])
    obs = jax.vmap(jax.vmap(env.observe))(states)
    obs = jnp.where(valid.reshape(valid.shape + (1,) * (obs.ndim - 2)), obs, 0).astype(jnp.uint8)
    return {
        "obs": obs,
        "rtg": jnp.where(valid, data["rtg"][gi], 0.0),
        "timesteps": jnp.where(valid, jnp.minimum(data["time"][gi], cfg.max_timestep), 0),
        "actions": jnp.where(valid, data["action"][gi], cfg.n_actions),
        "mask": valid,
    }
