"""dtjax.data.ppo / collect: GAE against a NumPy loop, PPO learning on 5x5, the recorded mix."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import envs
from dtjax.config import DataConfig, DataMixConfig, PPOConfig
from dtjax.data import collect, store
from dtjax.data.ppo import Transition, gae
from tolerance import assert_close

ENV_ID, MAX_STEPS = "MiniGrid-Dynamic-Obstacles-5x5-v0", 50


def gae_reference(reward, value, next_value, term, trunc, last_value, gamma, lam):
    T, E = reward.shape
    adv = np.zeros((T, E))
    for e in range(E):
        a = 0.0
        for t in range(T - 1, -1, -1):
            if term[t, e]:
                delta, a = reward[t, e] - value[t, e], 0.0
            elif trunc[t, e]:
                delta, a = reward[t, e] + gamma * next_value[t, e] - value[t, e], 0.0
            else:
                v_next = value[t + 1, e] if t + 1 < T else last_value[e]
                delta = reward[t, e] + gamma * v_next - value[t, e]
            a = delta + gamma * lam * a
            adv[t, e] = a
    return adv


_gae = jax.jit(gae)  # gamma and lam traced: one compilation for every example


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**31 - 1), st.sampled_from([0.9, 0.99]), st.sampled_from([0.0, 0.95, 1.0]))
def test_gae_matches_loop(seed, gamma, lam):
    rng = np.random.default_rng(seed)
    T, E = 12, 3
    term = rng.random((T, E)) < 0.15
    trunc = rng.random((T, E)) < 0.1  # both may be set: terminated wins
    f = lambda *s: rng.normal(size=s).astype(np.float32)  # noqa: E731
    reward, value, next_value, last = f(T, E), f(T, E), f(T, E), f(E)
    traj = Transition(None, None, jnp.asarray(reward), jnp.asarray(term), jnp.asarray(trunc), jnp.asarray(value), None, None,
                      jnp.asarray(next_value))
    adv, targets = _gae(traj, jnp.asarray(last), jnp.float32(gamma), jnp.float32(lam))
    ref = gae_reference(reward, value, next_value, term, trunc, last, gamma, lam)
    assert_close(adv, ref)
    assert_close(targets, ref + value)


FAST = DataConfig(
    ppo=PPOConfig(total_timesteps=64 * 32 * 24, num_envs=64, num_steps=32, num_minibatches=4, lr=3e-3, ent_coef=0.05, n_snapshots=3),
    mix=DataMixConfig(final_frac=0.3, random_frac=0.2, branch_frac=0.3, snapshot_frac=0.2, envs=40),
)


@pytest.fixture(scope="module")
def collected():
    env, params = envs.make(ENV_ID, max_steps=MAX_STEPS)
    return env, params, collect.collect(FAST, env, params, jax.random.key(0), log=lambda m: None)


def test_ppo_learns_on_5x5(collected):
    *_, col = collected
    r = np.array([np.nan if x is None else x for x in col.info["ppo_mean_return_per_update"]])
    assert len(r) == FAST.ppo.num_updates
    assert np.nanmean(r[:3]) < -0.6  # the initial policy crashes
    assert np.nanmean(r[-3:]) > 0.3 and np.nanmean(r[-3:]) > np.nanmean(r[:3]) + 1.0


def test_recorded_data_is_a_valid_dataset(collected, tmp_path):
    env, params, col = collected
    meta = collect.dataset_metadata(FAST, env, params, ENV_ID, 0)
    store.save(tmp_path / "d", col.arrays, meta)  # validates shapes, ranges and episode structure
    arrays, m = store.load(tmp_path / "d", expect={"env_id": ENV_ID, "max_steps": MAX_STEPS})
    per = m["counts"]["per_source"]
    assert set(per) == {"ppo", "final", "random", "branch", "snapshot"}
    # every PPO transition of a complete episode is kept: at most one unfinished episode per env dropped
    assert FAST.ppo.total_timesteps - per["ppo"]["steps"] < FAST.ppo.num_envs * MAX_STEPS
    _, starts, lengths, _ = store.episode_index(arrays)
    src = arrays["source"][starts]
    t0 = arrays["time"][starts]
    assert (t0[src != store.SOURCES.index("branch")] == 0).all()
    assert (t0[src == store.SOURCES.index("branch")] > 0).mean() > 0.3  # recorded from the branch point


def test_recorded_state_is_the_state_acted_in(collected):
    """The recorded state is the one acted in: replaying its stored action through the env's
    transition gives the next stored state (up to the random obstacle moves)."""
    env, params, col = collected
    a = col.arrays
    done = a["terminated"] | a["truncated"]
    i = np.flatnonzero(~done[:-1] & (a["action"][:-1] != 2))[:200]  # turns: the agent does not move
    turn = np.where(a["action"][i] == 0, -1, 1)
    np.testing.assert_array_equal(a["agent_dir"][i + 1], (a["agent_dir"][i] + turn) % 4)
    np.testing.assert_array_equal(a["agent_pos"][i + 1], a["agent_pos"][i])


def test_random_source_acts_uniformly(collected):
    *_, col = collected
    a = col.arrays
    acts = a["action"][a["source"] == store.SOURCES.index("random")]
    freq = np.bincount(acts, minlength=3) / len(acts)
    assert np.abs(freq - 1 / 3).max() < 0.05


@pytest.mark.parametrize("weights,n", [([0.5, 0.1, 0.3], 256), ([1, 0, 1e-6], 4), ([0.2] * 5, 5)])
def test_allocate_envs(weights, n):
    got = collect.allocate_envs(weights, n)
    assert sum(got) == n
    assert all((g >= 1) == (w > 0) for g, w in zip(got, weights))
    if n >= 100:
        assert all(abs(g - w / sum(weights) * n) <= 1 for g, w in zip(got, weights))
