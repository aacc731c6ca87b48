"""Shared test fixtures (imported by the tests as ``from fixtures import ...``)."""

from __future__ import annotations

import numpy as np

from dtjax.data import store


def random_dataset(rng: np.random.Generator, n_episodes: int, size: int = 8, n_obstacles: int = 4, max_steps: int = 300,
                   max_len: int = 40) -> tuple[dict[str, np.ndarray], dict]:
    """A valid dataset of random episodes (random states, actions and outcomes): (arrays, metadata)
    in ``dtjax.data.store``'s format. Lengths are U{1..max_len}; a quarter start at t > 0. States
    are not reachable from each other (balls may overlap): for format, sampler and summary tests."""
    lengths = rng.integers(1, max_len + 1, n_episodes)
    n = int(lengths.sum())
    t0 = np.where(rng.random(n_episodes) < 0.25, rng.integers(0, max_steps - max_len + 1, n_episodes), 0)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    ep = np.repeat(np.arange(n_episodes), lengths)
    t = (np.arange(n) - starts[ep] + t0[ep]).astype(np.int16)
    last = starts + lengths - 1
    outcome = rng.integers(0, 3, n_episodes)  # 0 goal, 1 hit, 2 timeout
    reward = np.zeros(n, np.float32)
    reward[last] = np.where(outcome == 0, 1 - 0.9 * (t[last] + 1) / max_steps, np.where(outcome == 1, -1.0, 0.0))
    terminated = np.zeros(n, bool)
    truncated = np.zeros(n, bool)
    terminated[last] = outcome < 2
    truncated[last] = outcome == 2
    arrays = {
        "agent_pos": rng.integers(1, size - 1, (n, 2)).astype(np.int8),
        "agent_dir": rng.integers(0, 4, n).astype(np.int8),
        "obstacles": rng.integers(1, size - 1, (n, n_obstacles, 2)).astype(np.int8),
        "time": t,
        "action": rng.integers(0, store.N_ACTIONS, n).astype(np.int8),
        "reward": reward,
        "terminated": terminated,
        "truncated": truncated,
        "source": rng.integers(0, len(store.SOURCES), n_episodes).astype(np.int8)[ep],
    }
    meta = {"env_id": f"MiniGrid-Dynamic-Obstacles-{size}x{size}-v0", "max_steps": max_steps, "size": size,
            "n_obstacles": n_obstacles, "obs_mode": "image", "seed": 0}
    return arrays, meta
