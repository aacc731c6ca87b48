"""dtjax.data.dataset: RTG, top-pct selection and windows against plain NumPy/Python references."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import envs
from dtjax.data import dataset, store
from dtjax.data.dataset import SampleConfig
from fixtures import random_dataset
from tolerance import assert_close

SIZE, N_OBST, MAX_STEPS = 8, 4, 300


def rtg_reference(reward, done):
    out, acc = np.zeros(len(reward)), 0.0
    for i in range(len(reward) - 1, -1, -1):
        if done[i]:
            acc = 0.0
        acc += float(reward[i])
        out[i] = acc
    return out


episodes = st.lists(st.tuples(st.integers(1, 12), st.floats(-1, 1, width=32), st.booleans()), min_size=1, max_size=20)


@settings(max_examples=40, deadline=None)
@given(episodes, st.booleans())
def test_rtg_matches_loop(eps, dense):
    rng = np.random.default_rng(len(eps))
    reward, done = [], []
    for length, final, _ in eps:
        r = rng.uniform(-1, 1, length).astype(np.float32) if dense else np.zeros(length, np.float32)
        r[-1] = final
        reward.append(r)
        done.append(np.arange(length) == length - 1)
    reward, done = np.concatenate(reward), np.concatenate(done)
    ref = rtg_reference(reward, done)
    assert_close(dataset.returns_to_go(reward, done), ref)


def test_rtg_scan_matches_numpy():
    arrays, _ = random_dataset(np.random.default_rng(0), 100)
    reward = arrays["reward"] + np.random.default_rng(1).uniform(-0.1, 0.1, len(arrays["reward"])).astype(np.float32)
    done = arrays["terminated"] | arrays["truncated"]
    ref = dataset.returns_to_go(reward, done)
    assert_close(rtg_reference(reward, done), ref)
    assert_close(jax.jit(dataset.returns_to_go_scan)(reward, done), ref, rtol=1e-4)  # float32 running sums of <= 40 terms


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(-3, 3), st.integers(1, 9)), min_size=1, max_size=25), st.floats(0.01, 1.0))
def test_select_top_matches_greedy_loop(eps, pct):
    returns = np.array([r / 3 for r, _ in eps], np.float32)
    lengths = np.array([n for _, n in eps])
    chosen, total = [], 0
    for i in sorted(range(len(eps)), key=lambda i: (-returns[i], i)):  # best first, stable
        if total + lengths[i] > pct * lengths.sum() + 1e-9:
            break
        chosen.append(i)
        total += lengths[i]
    expect = sorted(chosen) or [int(np.argsort(-returns, kind="stable")[0])]
    assert dataset.select_top(returns, lengths, pct).tolist() == expect
    assert len(dataset.select_top(returns, lengths, 1.0)) == len(eps)  # no strict-< quirk at 1.0


@pytest.fixture(scope="module")
def env():
    return envs.make("MiniGrid-Dynamic-Obstacles-8x8-v0", max_steps=MAX_STEPS)[0]


@pytest.fixture(scope="module")
def small(env):
    """A fixed dataset of short random episodes, its device arrays, and a jitted observe."""
    arrays, _ = random_dataset(np.random.default_rng(7), 12, SIZE, N_OBST, MAX_STEPS, max_len=10)
    return arrays, dataset.device_arrays(arrays), jax.jit(env.observe)


def window_reference(arrays, si, K, max_timestep, observe):
    """Plain-Python window starting at row si: left-padded to K."""
    done = arrays["terminated"] | arrays["truncated"]
    end = si
    while not done[end]:
        end += 1
    rows = list(range(si, min(si + K, end + 1)))
    pad = K - len(rows)
    rtg = rtg_reference(arrays["reward"], done)
    obs = np.zeros((K, 7, 7, 3), np.uint8)
    for j, r in enumerate(rows):
        state = envs.EnvState(*(jnp.asarray(arrays[k][r], jnp.int32) for k in ("agent_pos", "agent_dir", "obstacles", "time")))
        obs[pad + j] = np.asarray(observe(state))
    return {
        "obs": obs,
        "rtg": np.array([0.0] * pad + [rtg[r] for r in rows], np.float32),
        "timesteps": np.array([0] * pad + [min(int(arrays["time"][r]), max_timestep) for r in rows]),
        "actions": np.array([3] * pad + [int(arrays["action"][r]) for r in rows]),
        "mask": np.array([False] * pad + [True] * len(rows)),
    }


@functools.lru_cache(maxsize=None)
def _jitted_windows(env, K, max_timestep):
    return jax.jit(functools.partial(dataset.windows, env=env, cfg=SampleConfig(K, max_timestep)))


@settings(max_examples=15, deadline=None)
@given(st.lists(st.integers(0, 10**6), min_size=4, max_size=4), st.sampled_from([1, 4]), st.sampled_from([5, 300]))
def test_windows_match_reference(env, small, rows, K, max_timestep):
    arrays, data, observe = small
    si = np.array(rows) % len(arrays["action"])
    got = jax.tree.map(np.asarray, _jitted_windows(env, K, max_timestep)(data, jnp.asarray(si, jnp.int32)))
    for b, s in enumerate(si):
        ref = window_reference(arrays, int(s), K, max_timestep, observe)
        for k, v in ref.items():
            assert_close(got[k][b], v, err_msg=k)


@pytest.fixture(scope="module")
def sampled(env):
    arrays, _ = random_dataset(np.random.default_rng(3), 200, SIZE, N_OBST, MAX_STEPS)
    data = dataset.device_arrays(arrays, pct_traj=0.5)
    sample = jax.jit(dataset.make_sampler(env, SampleConfig(4, 300, prob_go_from_end=0.0)), static_argnums=2)
    return arrays, data, sample


def test_batch_shapes_dtypes_and_padding(sampled):
    arrays, data, sample = sampled
    b = jax.tree.map(np.asarray, sample(jax.random.key(0), data, 512))
    assert b["obs"].shape == (512, 4, 7, 7, 3) and b["obs"].dtype == np.uint8
    assert b["rtg"].dtype == np.float32 and b["timesteps"].dtype == np.int32
    assert b["actions"].dtype == np.int32 and b["mask"].dtype == np.bool_
    m = b["mask"]
    assert m[:, -1].all()  # the last position is always real
    assert (np.diff(m.astype(int), axis=1) >= 0).all()  # padding only on the left
    assert ((b["actions"] == 3) == ~m).all()
    assert (b["obs"][~m] == 0).all() and (b["rtg"][~m] == 0).all() and (b["timesteps"][~m] == 0).all()
    assert (b["obs"][m].reshape(m.sum(), -1).max(1) > 0).all()  # real observations are never blank
    assert (~m).any()  # padding does occur with K = 4


def test_pct_traj_samples_only_the_best_episodes(sampled):
    arrays, data, sample = sampled
    _, starts, lengths, returns = store.episode_index(arrays)
    kept = dataset.select_top(returns, lengths, 0.5)
    assert lengths[kept].sum() <= 0.5 * lengths.sum()
    sample(jax.random.key(1), data, 1024)  # compiles and runs on a real dataset
    si = np.asarray(dataset.draw_starts(jax.random.key(1), data, 1024, 4, 0.0))
    ep = np.searchsorted(starts, si, side="right") - 1
    assert np.isin(ep, kept).all()


def test_starts_are_uniform_over_transitions_and_go_from_end(env):
    arrays, _ = random_dataset(np.random.default_rng(4), 5, SIZE, N_OBST, MAX_STEPS, max_len=8)
    data = dataset.device_arrays(arrays)
    n = len(arrays["action"])
    si = np.asarray(dataset.draw_starts(jax.random.key(2), data, 20_000, 3, 0.0))
    freq = np.bincount(si, minlength=n) / len(si)
    assert np.abs(freq - 1 / n).max() < 4 * np.sqrt(1 / n / len(si)) + 1e-3
    _, starts, lengths, _ = store.episode_index(arrays)
    si = np.asarray(dataset.draw_starts(jax.random.key(3), data, 2000, 3, 1.0))
    assert set(si.tolist()) <= set((starts + np.maximum(0, lengths - 3)).tolist())


def test_end_aligned_windows_end_at_a_uniform_transition(env):
    """With window_end, the window that holds a drawn row r ends at r (starts K - 1 rows earlier)
    or starts at r's episode start: every row is a window's last step equally often (K = 3); the
    start-aligned draw (the default) differs, so the check can fail."""
    arrays, _ = random_dataset(np.random.default_rng(4), 5, SIZE, N_OBST, MAX_STEPS, max_len=8)
    data = dataset.device_arrays(arrays)
    _, starts, lengths, _ = store.episode_index(arrays)
    ep_of = np.repeat(np.arange(len(starts)), lengths)
    n, K, B = len(arrays["action"]), 3, 20_000
    si = np.asarray(dataset.draw_starts(jax.random.key(2), data, B, K, 0.0, window_end=True))
    assert (si >= starts[ep_of[si]]).all()
    # a window starting at s has its last real row at min(s + K, episode end) - 1
    last = np.minimum(si + K, starts[ep_of[si]] + lengths[ep_of[si]]) - 1
    at_start = si == starts[ep_of[si]]
    assert ((si + K - 1 == last) | at_start).all()
    # rows K or more into their episode (whose windows never start at the episode's start) each
    # end a window as often as a uniform draw picks them
    deep = np.arange(n) - starts[ep_of] >= K
    freq = np.bincount(si[~at_start] + K - 1, minlength=n) / B
    assert np.abs(freq[deep] - 1 / n).max() < 4 * np.sqrt(1 / n / B) + 1e-3
    assert not (np.asarray(dataset.draw_starts(jax.random.key(2), data, B, K, 0.0)) == si).all()


def test_stored_obs_give_the_same_batch(env):
    arrays, _ = random_dataset(np.random.default_rng(5), 20, SIZE, N_OBST, MAX_STEPS)
    states = envs.EnvState(*(jnp.asarray(arrays[k], jnp.int32) for k in ("agent_pos", "agent_dir", "obstacles", "time")))
    obs = np.asarray(jax.jit(jax.vmap(env.observe))(states))
    sample = jax.jit(dataset.make_sampler(env, SampleConfig(2, 300)), static_argnums=2)
    a = sample(jax.random.key(0), dataset.device_arrays(arrays), 64)
    b = sample(jax.random.key(0), dataset.device_arrays({**arrays, "obs": obs}), 64)
    for k in a:
        np.testing.assert_array_equal(np.asarray(a[k]), np.asarray(b[k]))
