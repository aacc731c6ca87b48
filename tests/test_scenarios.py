"""dtjax.scenarios for longer contexts: rollout windows and RTG shifts keep the padding convention
of training and closed-loop evaluation (zero observation, RTG 0, timestep 0, padding action)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dtjax import scenarios
from dtjax.circuits import Inputs
from dtjax.config import EnvConfig

ENV = EnvConfig("MiniGrid-Dynamic-Obstacles-5x5-v0", max_steps=6)
PAD = 3


def _policy(k, obs, t):  # deterministic, so the action at any step is known from its timestep
    return (t % 3).astype(jnp.int32)


def test_sample_windows_are_the_rollout_history():
    """K-timestep windows equal the last K steps of each env's own episode, rebuilt in Python
    from the one-step samples of the same rollout (same key, same policy)."""
    n_envs, steps, K = 4, 16, 4
    key = jax.random.PRNGKey(3)
    one = scenarios.sample_inputs(key, n_envs * steps, rtg=0.5, env=ENV, n_envs=n_envs, policy=_policy)
    win = scenarios.sample_inputs(key, n_envs * steps, rtg=0.5, env=ENV, n_envs=n_envs, policy=_policy, n_timesteps=K,
                                  pad_action=PAD)
    assert one.actions is None and win.actions.shape == (n_envs * steps, K)
    obs1 = np.asarray(one.obs[:, 0]).reshape((steps, n_envs) + one.obs.shape[2:])
    t1 = np.asarray(one.timesteps[:, 0]).reshape(steps, n_envs)
    assert (t1 == 0).sum() > n_envs  # episodes end and restart inside the rollout (max_steps 6)
    obs, rtg, ts, acts = (np.asarray(x) for x in (win.obs, win.rtg, win.timesteps, win.actions))
    for s in range(steps):
        for e in range(n_envs):
            i, start = s * n_envs + e, s - t1[s, e]  # the env's step count: steps since its episode began
            for j in range(K):
                src = s - (K - 1 - j)
                if src >= start:
                    np.testing.assert_array_equal(obs[i, j], obs1[src, e])
                    assert ts[i, j] == t1[src, e] and rtg[i, j] == np.float32(0.5)
                    assert acts[i, j] == (PAD if j == K - 1 else t1[src, e] % 3)  # current slot: padding
                else:
                    assert not obs[i, j].any() and ts[i, j] == 0 and rtg[i, j] == 0 and acts[i, j] == PAD


def test_with_rtg_shifts_real_timesteps_and_keeps_padding_at_zero():
    """Row 0: an episode's first step left-padded to K = 3; row 1: its second step (one padding
    timestep). Padding keeps RTG 0; a real timestep that merely has RTG 0 and action 3 is shifted."""
    obs = np.ones((3, 3, 7, 7, 3), np.uint8)
    obs[0, :2] = 0
    obs[1, :1] = 0
    inp = Inputs(obs=jnp.asarray(obs), rtg=jnp.asarray([[0.0, 0.0, 0.9], [0.0, 0.9, 0.9], [0.0, 0.9, 0.9]]),
                           timesteps=jnp.asarray([[0, 0, 0], [0, 0, 1], [3, 4, 5]]),
                           actions=jnp.asarray([[PAD, PAD], [PAD, 2], [PAD, 1]]))
    out = np.asarray(inp.with_rtg(jnp.asarray([-1.0, 0.25, 0.5]), PAD).rtg)
    np.testing.assert_allclose(out, [[0.0, 0.0, -1.0], [0.0, 0.25, 0.25], [-0.4, 0.5, 0.5]], atol=1e-6)
    k1 = inp.take(slice(0, 1)).replace(obs=inp.obs[:1, -1:], rtg=inp.rtg[:1, -1:], timesteps=inp.timesteps[:1, -1:],
                                       actions=None)
    np.testing.assert_allclose(np.asarray(k1.with_rtg(-0.5).rtg), [[-0.5]])


@pytest.mark.parametrize("obs_mode", ["image", "one_hot"])
def test_ball_pair_empties_the_cell_ahead_as_the_env_observes_it(obs_mode):
    """ball_pair keeps the states with a ball ahead, and emptying that cell gives what the env's
    own observe gives without the ball (clear_ahead is ball_ahead minus its ball)."""
    env = EnvConfig(obs_mode=obs_mode)
    names, inp = scenarios.scenario_inputs(["clear_ahead", "ball_left", "ball_ahead"], rtg=0.5, env=env, n_timesteps=3)
    assert np.asarray(scenarios.front_is_ball(inp.obs[:, -1])).tolist() == [False, False, True]
    clean, corrupted = scenarios.ball_pair(inp, None, rtg=0.9)
    assert clean.batch == 1 and clean.actions.shape == (1, 2)
    np.testing.assert_array_equal(np.asarray(clean.obs), np.asarray(inp.obs[2:]))
    np.testing.assert_array_equal(np.asarray(corrupted.obs), np.asarray(inp.obs[:1]))  # clear_ahead
    np.testing.assert_array_equal(np.asarray(clean.rtg), np.float32([[0.0, 0.0, 0.9]]))  # left padding keeps RTG 0
    clean, corrupted = scenarios.rtg_pair(inp, 0.9, -1.0)
    np.testing.assert_array_equal(np.asarray(corrupted.rtg)[:, -1], np.float32([-1.0] * 3))
    np.testing.assert_array_equal(np.asarray(clean.rtg)[:, -1], np.float32([0.9] * 3))
    np.testing.assert_array_equal(np.asarray(clean.obs), np.asarray(corrupted.obs))
