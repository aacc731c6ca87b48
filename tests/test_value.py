"""Value relabelling (dtjax.data.value): QDT's backward rule, the offline Q fit on a tiny MDP with a
known answer, and the PPO critic's values on stored states."""

import jax
import numpy as np
import pytest

import envs
from dtjax import calibrate
from dtjax.config import DataConfig
from dtjax.data import store, value
from dtjax.data.dataset import device_arrays, env_state, returns_to_go
from dtjax.data.ppo import ActorCritic
from fixtures import random_dataset
from tolerance import assert_close

START, AHEAD = (1, 1), (2, 1)  # the chain's two cells (agent facing east)
LEFT, RIGHT, FORWARD = 0, 1, 2


def chain(n_win=30, n_crash=10, n_stop=20):
    """A two-state chain with a known expected return-to-go (terminal rewards only):

    s0 = (START, t 0) --forward--> s1 = (AHEAD, t 1) --forward--> goal +1 (n_win episodes) or a crash -1 (n_crash);
    s0 --right--> the episode ends with 0 (n_stop episodes).

    Q(s1, forward) = Q(s0, forward) = (n_win - n_crash) / (n_win + n_crash) = 0.5, Q(s0, right) = 0.
    """
    rows = []
    for kind in ["win"] * n_win + ["crash"] * n_crash + ["stop"] * n_stop:
        if kind == "stop":
            rows.append((START, 0, RIGHT, 0.0, True))
        else:
            rows.append((START, 0, FORWARD, 0.0, False))
            rows.append((AHEAD, 1, FORWARD, 1.0 if kind == "win" else -1.0, True))
    n = len(rows)
    arrays = {
        "agent_pos": np.array([r[0] for r in rows], np.int8), "agent_dir": np.zeros(n, np.int8),
        "obstacles": np.full((n, 1, 2), 4, np.int8), "time": np.array([r[1] for r in rows], np.int16),
        "action": np.array([r[2] for r in rows], np.int8), "reward": np.array([r[3] for r in rows], np.float32),
        "terminated": np.array([r[4] for r in rows]), "truncated": np.zeros(n, bool), "source": np.zeros(n, np.int8),
    }
    store._check_arrays(arrays, "chain")  # a valid dataset
    return arrays


@pytest.fixture(scope="module")
def fitted():
    arrays = chain()
    return arrays, value.fit_q(arrays, 3, value.FitConfig(steps=300, batch_size=1024, hidden=32))


def test_fit_q_recovers_the_expected_return_to_go_of_a_chain(fitted):
    arrays, (q, support) = fitted
    s0f = (arrays["time"] == 0) & (arrays["action"] == FORWARD)
    s0r = (arrays["time"] == 0) & (arrays["action"] == RIGHT)
    s1 = arrays["time"] == 1
    # Monte-Carlo regression converges to the conditional mean (the realised labels are +-1 there): 1% of the return range
    assert_close(q[s1, FORWARD], np.full(s1.sum(), 0.5), rtol=0.01, floor=1.0)
    assert_close(q[s0f, FORWARD], np.full(s0f.sum(), 0.5), rtol=0.01, floor=1.0)
    assert_close(q[s0r, RIGHT], np.zeros(s0r.sum()), rtol=0.01, floor=1.0)
    # the behaviour's support: s0 takes forward (2/3) and right (1/3), never left; s1 only forward
    assert support[s0f][:, [FORWARD, RIGHT]].all() and not support[s0f][:, LEFT].any()
    assert (support[s1] == [False, False, True]).all()


def test_q_fitted_and_value_fitted_labels_on_the_chain(fitted, monkeypatch):
    arrays, q_sup = fitted
    monkeypatch.setattr(value, "fit_q", lambda *a, **k: q_sup)  # the module fixture's fit, not a second one
    ep, starts, _, returns = store.episode_index(arrays)
    win, crash, stop = returns[ep] == 1, returns[ep] == -1, returns[ep] == 0
    # q_fitted: every forward step is labelled Q = 0.5 whatever happened; the stop step 0
    q_lab = np.asarray(device_arrays(arrays, rtg_label="q_fitted")["rtg"])
    assert_close(q_lab[win | crash], np.full((win | crash).sum(), 0.5), rtol=0.01, floor=1.0)
    assert_close(q_lab[stop], np.zeros(stop.sum()), rtol=0.01, floor=1.0)
    # value_fitted (QDT): R_t = max(V(s_t), r_t + R_t+1), V = max over the support: wins keep 1, crashes and stops
    # are raised to V = 0.5 (s0's best in-support action, forward; left's unfitted Q is ignored)
    v_lab = np.asarray(device_arrays(arrays, rtg_label="value_fitted")["rtg"])
    assert_close(v_lab[win], np.ones(win.sum()), rtol=0.01, floor=1.0)
    assert_close(v_lab[crash | stop], np.full((crash | stop).sum(), 0.5), rtol=0.01, floor=1.0)


def test_qdt_relabel_by_hand():
    # two episodes; rewards on the way (0.1 at every step), V given: R_t = max(V_t, r_t + R_t+1) backwards
    reward = np.array([0.1, 0.1, 0.5, 0.1, -1.0], np.float32)
    done = np.array([False, False, True, False, True])
    v = np.array([0.2, 0.9, 0.0, 0.3, -2.0], np.float32)
    rtg = returns_to_go(reward, done)
    # episode 1: R2 = max(0, 0.5) = 0.5; R1 = max(0.9, 0.6) = 0.9; R0 = max(0.2, 1.0) = 1.0
    # episode 2: R4 = max(-2, -1) = -1; R3 = max(0.3, -0.9) = 0.3
    assert_close(value.qdt_relabel(rtg, v, reward, done), [1.0, 0.9, 0.5, 0.3, -1.0])
    # a value below every realised return changes nothing
    assert_close(value.qdt_relabel(rtg, np.full(5, -9.0), reward, done), rtg)
    with pytest.raises(ValueError, match="lengths differ"):
        value.qdt_relabel(rtg, v[:3], reward, done)


def test_returns_to_go_matches_the_dataset_module():
    arrays, _ = random_dataset(np.random.default_rng(0), 40, max_len=15)
    arrays["reward"] = arrays["reward"] + np.float32(0.01) * (np.arange(len(arrays["reward"])) % 4)
    done = arrays["terminated"] | arrays["truncated"]
    assert_close(value.returns_to_go(arrays), returns_to_go(arrays["reward"], done))


def test_critic_values_are_the_critic_on_each_stored_state():
    env, _ = envs.make("MiniGrid-Dynamic-Obstacles-5x5-v0")
    arrays, _ = random_dataset(np.random.default_rng(1), 12, size=5, n_obstacles=2, max_len=10)
    net = ActorCritic(n_actions=3)
    params = net.init(jax.random.PRNGKey(0), np.zeros((1,) + env.observation_shape(), np.uint8))
    got = value.critic_values(net, params, env, arrays, chunk=16)  # several chunks, the last padded
    rows = np.array([0, 7, len(got) - 1])
    state = env_state(env, {k: np.asarray(arrays[k][rows], np.int32) for k in ("agent_pos", "agent_dir", "obstacles", "time")})
    want = jax.jit(lambda s: net.apply(params, jax.vmap(env.observe)(s))[1])(state)
    assert_close(got[rows], want)
    assert got.shape == (len(arrays["time"]),) and np.ptp(got) > 0


def test_value_critic_needs_stored_values_and_configs_name_the_labels():
    with pytest.raises(store.DatasetError, match="value.npy"):
        value.rtg_shift(chain(), "value_critic")
    arrays = chain()
    arrays["value"] = np.full(len(arrays["time"]), 0.25, np.float32)  # a constant critic: crashes and stops rise to it
    rtg = np.asarray(device_arrays(arrays, rtg_label="value_critic")["rtg"])
    realised = value.returns_to_go(arrays)
    assert_close(rtg, np.maximum(realised, 0.25))
    for label in value.LABELS:
        DataConfig(rtg_label=label).validate()
        assert calibrate.METHODS[label][0]["data.rtg_label"] == label


@pytest.mark.slow  # a PPO compile: ~80 s on a busy 2-core CPU
def test_collect_stores_the_final_critics_values_for_value_critic(tmp_path):
    from dtjax.config import DataMixConfig, PPOConfig
    from dtjax.data import collect

    cfg = DataConfig(ppo=PPOConfig(total_timesteps=32 * 16 * 4, num_envs=32, num_steps=16, num_minibatches=2, n_snapshots=2),
                     mix=DataMixConfig(final_frac=0.3, random_frac=0.3, envs=16), rtg_label="value_critic")
    env, env_params = envs.make("MiniGrid-Dynamic-Obstacles-5x5-v0", max_steps=50)
    col = collect.collect(cfg, env, env_params, jax.random.key(0), log=lambda m: None)
    assert "value" not in collect.collect(cfg.replace(rtg_label="realised"), env, env_params, jax.random.key(0),
                                          log=lambda m: None).arrays  # only when the label needs it
    store.save(tmp_path / "d", col.arrays, collect.dataset_metadata(cfg, env, env_params, "MiniGrid-Dynamic-Obstacles-5x5-v0", 0))
    arrays, _ = store.load(tmp_path / "d")
    assert_close(arrays["value"], value.critic_values(col.network, col.params, env, arrays))  # the final critic
    rtg = np.asarray(device_arrays(arrays, rtg_label="value_critic")["rtg"])
    assert (rtg >= value.returns_to_go(arrays) - 1e-6).all() and (rtg >= arrays["value"] - 1e-6).all()  # QDT: never below either
