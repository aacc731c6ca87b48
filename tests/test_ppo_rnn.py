"""dtjax.data.ppo_rnn: the GRU's carry resets at episode starts (in the network and in rollouts),
a few updates on a tiny Memory config record a valid dataset (Memory's own state fields, 7 actions,
K = 9 windows regenerated exactly), snapshots, sampling temperature, and the store keeping a
family's own state fields. The tests that compile the PPO or Memory rollouts are ``slow``."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import envs
from dtjax.cli import preset_config
from dtjax.config import ConfigError, DataConfig, DataMixConfig, PPOConfig
from dtjax.data import collect, ppo_rnn, store
from dtjax.data.dataset import SampleConfig, device_arrays, env_state, sample_batch, windows
from tolerance import assert_close

ENV_ID, MAX_STEPS = "MiniGrid-MemoryS7FixedStart-v0", 12  # short episodes: several per env in a rollout
TINY = DataConfig(
    ppo=PPOConfig(arch="gru", total_timesteps=16 * 24 * 3, num_envs=16, num_steps=24, num_minibatches=2, hidden=16,
                  n_snapshots=2, lr=3e-3),
    # the final policy at temperature ~0 acts greedily: test_final_rollouts_replay_episode_by_episode
    mix=DataMixConfig(final_frac=0.5, random_frac=0.2, tempered_frac=0.3, final_temp=1e-6, envs=12),
)


@pytest.fixture(scope="module")
def collected():
    env, params = envs.make(ENV_ID, max_steps=MAX_STEPS)
    return env, params, collect.collect(TINY, env, params, jax.random.key(0), log=lambda m: None)


def test_config_checks_arch_and_sequence_minibatches():
    with pytest.raises(ConfigError, match="ppo.arch must be one of mlp, gru"):
        PPOConfig(arch="lstm")
    with pytest.raises(ConfigError, match="num_envs .* divisible by ppo.num_minibatches .* arch gru"):
        PPOConfig(arch="gru", num_envs=6, num_steps=4, num_minibatches=4, total_timesteps=24)
    with pytest.raises(ConfigError, match="tempered_temp must be > 0"):
        DataMixConfig(tempered_temp=0.0)
    with pytest.raises(ConfigError, match="ppo.population must be >= 1, and 1 unless ppo.arch is gru"):
        PPOConfig(population=2)
    with pytest.raises(ConfigError, match="ppo.population must be >= 1"):
        PPOConfig(arch="gru", num_minibatches=4, population=0)


def test_gru_carry_resets_at_episode_starts():
    """A reset at step t makes the outputs from t on exactly those of a fresh run from t; without
    it they differ (the carry matters), so the check can fail."""
    net = ppo_rnn.ActorCriticRNN(n_actions=3, hidden=8)
    rng = np.random.default_rng(0)
    T, E = 7, 3
    obs = jnp.asarray(rng.integers(0, 11, (T, E, 7, 7, 3)), jnp.uint8)
    resets = np.zeros((T, E), bool)
    resets[0] = True
    resets[4, 0] = True  # env 0 starts a new episode at t = 4
    params = net.init(jax.random.key(1), net.initial_state(E), obs, jnp.asarray(resets))
    h0 = jnp.asarray(rng.normal(size=(E, 8)), jnp.float32)  # a stale carry: the reset at t = 0 must drop it
    _, logits, value = net.apply(params, h0, obs, jnp.asarray(resets))
    fresh = np.zeros((T - 4, E), bool)
    fresh[0] = True
    _, fresh_logits, fresh_value = net.apply(params, net.initial_state(E), obs[4:], jnp.asarray(fresh))
    assert_close(logits[4:, 0], fresh_logits[:, 0])
    assert_close(value[4:, 0], fresh_value[:, 0])
    _, zero_logits, _ = net.apply(params, net.initial_state(E), obs, jnp.asarray(resets))
    assert_close(logits, zero_logits)  # the stale h0 was reset away at t = 0
    _, cont_logits, _ = net.apply(params, h0, obs, jnp.zeros((T, E), bool))
    assert np.abs(np.asarray(cont_logits[4:, 0] - fresh_logits[:, 0])).max() > 1e-4  # without resets: another output


@pytest.mark.slow  # compiles the GRU PPO and Memory rollouts (~80 s of CPU together)
def test_final_rollouts_replay_episode_by_episode(collected):
    """The mix's final-policy rollouts (greedy here) act as the network run on each episode alone,
    from a zero carry: the rollout resets the carry at every episode start. The negative control
    (one carry continued across all episodes) acts otherwise, so the check can fail."""
    env, _, col = collected
    a = col.arrays
    rows = np.flatnonzero(a["source"] == store.SOURCES.index("final"))
    state = env_state(env, device_arrays({k: v[rows] for k, v in a.items()}))
    obs = jax.vmap(env.observe)(state)[:, None]  # (N, 1, ...)
    done = (a["terminated"] | a["truncated"])[rows]
    first = np.concatenate([[True], done[:-1]])[:, None]
    net, h = col.network, col.network.initial_state(1)
    logits = np.asarray(net.apply(col.params, h, obs, jnp.asarray(first))[1][:, 0])
    only_start = np.zeros_like(first)
    only_start[0] = True
    logits_cont = np.asarray(net.apply(col.params, h, obs, jnp.asarray(only_start))[1][:, 0])
    top2 = np.sort(logits, -1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > 1e-3  # no near-ties (float noise could flip an argmax)
    assert first.sum() >= 10 and clear.mean() > 0.8  # many episodes; the check bites
    np.testing.assert_array_equal(a["action"][rows][clear], logits.argmax(-1)[clear])
    later = np.cumsum(first[:, 0]) > 1  # after the first episode
    assert np.abs(logits_cont[later] - logits[later]).max() > 1e-3  # a carry across episodes would act otherwise


@pytest.mark.slow  # compiles the GRU PPO and Memory rollouts (~80 s of CPU together)
def test_tiny_run_records_a_valid_dataset(collected, tmp_path):
    env, env_params, col = collected
    a = col.arrays
    meta = collect.dataset_metadata(TINY, env, env_params, ENV_ID, 0)
    assert meta["n_actions"] == env.num_actions
    store.save(tmp_path / "d", a, meta)  # validates the schema, ranges and episode structure
    arrays, m = store.load(tmp_path / "d", expect={"env_id": ENV_ID, "max_steps": MAX_STEPS})
    assert set(m["counts"]["per_source"]) == {"ppo", "final", "random", "tempered"}
    assert TINY.ppo.total_timesteps - m["counts"]["per_source"]["ppo"]["steps"] < TINY.ppo.num_envs * MAX_STEPS
    # Memory's own state (its objects, what is carried) is kept beside the standard fields
    assert m["state_fields"] == {"instruction": "int16", "top": "int16", "obj_pos": "int16", "carrying": "bool",
                                 "hallway_end": "int16"}
    assert set(np.unique(arrays["instruction"])) == {0, 1} and set(np.unique(arrays["top"])) == {0, 1}
    assert len(col.info["ppo_mean_return_per_update"]) == TINY.ppo.num_updates
    # the sampler regenerates each window's views from the stored states exactly
    K = 9
    data = device_arrays(arrays)
    batch = sample_batch(jax.random.key(0), data, 32, env=env, cfg=SampleConfig(K, MAX_STEPS, n_actions=7))
    assert batch["obs"].shape == (32, K) + env.observation_shape() and batch["mask"][:, -1].all()
    assert (np.asarray(batch["actions"])[~np.asarray(batch["mask"])] == 7).all()  # padding action = n_actions
    si = jnp.asarray(np.random.default_rng(0).integers(0, len(arrays["action"]), 16))
    win = windows(data, si, env=env, cfg=SampleConfig(K, MAX_STEPS, n_actions=7))
    first_real = np.asarray(win["mask"]).argmax(1)  # the window's first real step is row si
    want = jax.vmap(env.observe)(env_state(env, {k: v[si] for k, v in data.items()}))
    np.testing.assert_array_equal(np.asarray(win["obs"])[np.arange(16), first_real], np.asarray(want))


@pytest.mark.slow  # compiles the GRU PPO and Memory rollouts (~80 s of CPU together)
def test_snapshots_end_with_the_final_policy(collected):
    *_, col = collected
    leaves, snaps = jax.tree.leaves(col.params), jax.tree.leaves(col.snapshots)
    assert all(s.shape == (TINY.ppo.n_snapshots,) + p.shape for p, s in zip(leaves, snaps))
    for p, s in zip(leaves, snaps):
        np.testing.assert_array_equal(s[-1], p)
    assert any(np.abs(s[0] - p).max() > 0 for p, s in zip(leaves, snaps))  # the first is an earlier policy
    np.testing.assert_array_equal(ppo_rnn.snapshot_updates(TINY.ppo), [0, TINY.ppo.num_updates - 1])


@pytest.mark.slow  # compiles the GRU PPO and Memory rollouts (~80 s of CPU together)
def test_rollout_samples_at_the_temperature():
    """A policy whose logits are (0, 0, 3, 0, ...) everywhere acts with softmax(logits / T) at each
    temperature T (4 standard errors), i.e. the tempered source holds the original's T5 choices."""
    env, env_params = envs.make(ENV_ID, max_steps=MAX_STEPS)
    net = ppo_rnn.ActorCriticRNN(n_actions=env.num_actions, hidden=4)
    E, T = 64, 50
    params = net.init(jax.random.key(0), net.initial_state(E), jnp.zeros((1, E) + env.observation_shape(), jnp.uint8),
                      jnp.zeros((1, E), bool))
    head = params["params"]["Dense_2"]  # the logits layer
    bias = jnp.zeros(env.num_actions).at[2].set(3.0)
    params = {"params": {**params["params"], "Dense_2": {"kernel": jnp.zeros_like(head["kernel"]), "bias": bias}}}
    temps = np.repeat([1.0, 5.0], E // 2).astype(np.float32)
    rollout = jax.jit(ppo_rnn.make_rollout(env, env_params, net, E, T))
    rec = rollout(jax.random.key(1), jax.tree.map(lambda x: x[None], params), jnp.zeros(E, jnp.int32), jnp.zeros(E),
                  jnp.zeros(E, jnp.int32), temperature=jnp.asarray(temps))
    forward = np.asarray(rec["action"]) == 2  # (T, E)
    for temp, cols in ((1.0, slice(0, E // 2)), (5.0, slice(E // 2, E))):
        p = np.exp(3 / temp) / (env.num_actions - 1 + np.exp(3 / temp))
        n = forward[:, cols].size
        assert abs(forward[:, cols].mean() - p) < 4 * np.sqrt(p * (1 - p) / n), (temp, forward[:, cols].mean(), p)


def test_store_keeps_a_familys_state_fields(tmp_path):
    """Extra state fields (Memory's objects) round-trip through the store, are listed in the
    metadata, and reach the sampler's device arrays; a bad one is a one-line error."""
    from fixtures import random_dataset

    arrays, meta = random_dataset(np.random.default_rng(0), 20, n_obstacles=0)
    n = len(arrays["action"])
    rng = np.random.default_rng(1)
    extra = {"carrying": rng.random(n) < 0.5, "obj_pos": rng.integers(-1, 7, (n, 2)).astype(np.int32)}
    store.save(tmp_path / "d", {**arrays, **extra}, {**meta, "n_actions": 7})
    got, m = store.load(tmp_path / "d")
    assert m["state_fields"] == {"carrying": "bool", "obj_pos": "int16"}
    np.testing.assert_array_equal(got["carrying"], extra["carrying"])
    np.testing.assert_array_equal(got["obj_pos"], extra["obj_pos"])
    dev = device_arrays(got)
    assert dev["carrying"].dtype == jnp.bool_ and dev["obj_pos"].dtype == jnp.int32
    with pytest.raises(store.DatasetError, match="state field 'x' must be bool or small integers"):
        store.save(tmp_path / "e", {**arrays, "x": np.zeros(n, np.float32)}, meta)
    bad = {**arrays, "action": np.full(n, 5, np.int8)}
    with pytest.raises(store.DatasetError, match=r"action values outside \[0, 2\]"):
        store.save(tmp_path / "f", bad, meta)  # 3 actions unless the metadata says otherwise
    store.save(tmp_path / "g", bad, {**meta, "n_actions": 7})



@pytest.mark.slow  # compiles a tiny GRU PPO and the greedy rollouts, runs 3 (~10 s on 2 busy cores)
def test_population_keeps_its_best_run():
    """A population of 3 returns the run with the best greedy score, and that run is exactly the
    single run trained from its member key, its score recomputed; the runs differ, so the
    selection could pick another."""
    env, env_params = envs.make(ENV_ID, max_steps=MAX_STEPS)
    cfg = TINY.ppo.replace(population=3)
    key = jax.random.key(3)
    out, net = ppo_rnn.train_best_of(cfg, env, env_params, key)
    score, success = np.asarray(out["population_score"]), np.asarray(out["population_success"])
    assert score.shape == success.shape == (3,) and ((success >= 0) & (success <= 1)).all()
    best = int(np.argmax(score))
    one, _ = ppo_rnn.make_train(cfg, env, env_params)
    members = jax.random.split(jax.random.split(key)[0], 3)
    single = jax.jit(one)(members[best])
    for a, b in zip(jax.tree.leaves(out["params"]), jax.tree.leaves(single["params"])):
        assert_close(a, b)
    rollout = ppo_rnn.make_rollout(env, env_params, net, ppo_rnn.SELECT_ENVS, ppo_rnn.SELECT_STEPS)
    s, _ = jax.jit(ppo_rnn.greedy_score, static_argnums=0)(rollout, single["params"], jax.random.split(key)[1])
    assert_close(s, score[best])
    other = jax.jit(one)(members[(best + 1) % 3])
    assert max(np.abs(np.asarray(a) - np.asarray(b)).max()
               for a, b in zip(jax.tree.leaves(other["params"]), jax.tree.leaves(single["params"]))) > 1e-3


@pytest.mark.slow  # the Memory preset's recurrent PPO at full size (3 x 1M steps: ~3 min on 2 idle cores)
def test_preset_ppo_solves_fixed_start():
    """The FixedStart preset's PPO (its population, best kept) goes greedily to the matching
    object in >= 0.95 of held-out episodes: the behaviour data carries the memory."""
    cfg = preset_config(ENV_ID)
    env, env_params = cfg.env.make()
    out, net = ppo_rnn.train_best_of(cfg.data.ppo, env, env_params, jax.random.key(0))
    rollout = jax.jit(ppo_rnn.make_rollout(env, env_params, net, ppo_rnn.SELECT_ENVS, ppo_rnn.SELECT_STEPS))
    _, success = ppo_rnn.greedy_score(rollout, out["params"], jax.random.key(123))
    assert float(success) >= 0.95, float(success)
