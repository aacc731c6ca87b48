"""Parity of `envs.memory` with the real `minigrid` package (3.2.0) `MemoryEnv` and the original's
fork of it (tests/memory_fork.py), and its API."""

from __future__ import annotations

import jax
import jax.numpy as jnp

import envs
from envs import memory


def test_every_id_jits_and_vmaps():
    for env_id in memory.IDS:
        env, params = envs.make(env_id, obs_mode="one_hot")
        keys = jax.random.split(jax.random.PRNGKey(0), 4)
        obs, state = jax.vmap(env.reset, (0, None))(keys, params)
        obs, state, reward, terminated, truncated, info = jax.vmap(env.step, (0, 0, 0, None))(keys, state, jnp.full(4, 2), params)
        assert obs.shape == (4, 7, 7, 20) and env.name == env_id and env.task.num_actions == 7
