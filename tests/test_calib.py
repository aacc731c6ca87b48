"""Return conditioning (issue 20): ESPER-style group-mean RTG labels, wait rollouts, behaviour ids."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import envs
from dtjax import calibrate, evaluate, plots
from dtjax.config import ConfigError, DataConfig, DataMixConfig, PPOConfig, TrainConfig
from dtjax.data import collect, relabel, store
from dtjax.data.dataset import device_arrays
from dtjax.data.ppo import ActorCritic, blind_state, make_rollout
from fixtures import random_dataset
from tolerance import assert_close

ENV_ID, MAX_STEPS = "MiniGrid-Dynamic-Obstacles-5x5-v0", 50
MIX_E, MIX_T = 8, 120  # the shared mix rollout's envs and steps


def hand_made(seed=0, n_episodes=60):
    """A random dataset whose episodes carry one of 4 behaviour ids (in 2 sources)."""
    rng = np.random.default_rng(seed)
    arrays, meta = random_dataset(rng, n_episodes, max_len=12)
    ep, starts, lengths, _ = store.episode_index(arrays)
    arrays["source"] = np.repeat(rng.integers(0, 2, n_episodes), lengths).astype(np.int8)
    arrays["behaviour"] = np.repeat(rng.integers(0, 2, n_episodes), lengths).astype(np.int32)
    return arrays, meta


def test_group_mean_labels_equal_each_groups_mean_return():
    arrays, _ = hand_made()
    ep, starts, lengths, returns = store.episode_index(arrays)
    rtg = np.asarray(device_arrays(arrays, rtg_label="group_mean")["rtg"])
    src, beh = arrays["source"][starts], arrays["behaviour"][starts]
    checked = 0
    for s in range(2):
        for b in range(2):
            m = (src == s) & (beh == b)
            if not m.any():
                continue
            steps = np.isin(ep, np.flatnonzero(m))
            # terminal-only rewards: every step of every episode of the group is labelled the group's mean return
            assert_close(rtg[steps], np.full(steps.sum(), returns[m].mean()))
            checked += 1
    assert checked == 4
    # the realised label is each episode's own return, and differs from the group mean somewhere
    real = np.asarray(device_arrays(arrays)["rtg"])
    assert_close(real, returns[ep])
    assert np.abs(real - rtg).max() > 0.1


def test_group_mean_keeps_rewards_within_an_episode():
    """With rewards before the end, a step's label is its realised RTG shifted by its episode's
    (group mean - return): differences between steps of an episode survive the relabelling."""
    arrays, _ = hand_made(1)
    ep, starts, _, _ = store.episode_index(arrays)
    arrays["reward"] = arrays["reward"] + np.float32(0.01) * (np.arange(len(ep)) % 3)
    real = np.asarray(device_arrays(arrays)["rtg"])
    grp = np.asarray(device_arrays(arrays, rtg_label="group_mean")["rtg"])
    d = grp - real
    assert_close(d, d[starts][ep])  # one shift per episode
    _, _, _, returns = store.episode_index(arrays)
    assert_close(grp[starts], relabel.group_means(returns, relabel.episode_groups(arrays)))


@pytest.mark.parametrize("label", ["hazard_mean", "blind_mean"])
def test_one_source_labels_relabel_only_their_source(label):
    arrays, _ = hand_made(2, n_episodes=80)
    ep, starts, lengths, returns = store.episode_index(arrays)
    only = store.SOURCES.index(relabel.ONLY_SOURCE[label])
    arrays["source"] = np.where(arrays["source"] == 1, only, arrays["source"]).astype(np.int8)
    rtg = np.asarray(device_arrays(arrays, rtg_label=label)["rtg"])
    real = np.asarray(device_arrays(arrays)["rtg"])
    grp = np.asarray(device_arrays(arrays, rtg_label="group_mean")["rtg"])
    is_h = arrays["source"] == only
    assert 0 < is_h.mean() < 1
    assert_close(rtg[~is_h], real[~is_h])  # realised labels elsewhere
    assert_close(rtg[is_h], grp[is_h])  # group means (group = the wait) in that source
    beh = arrays["behaviour"][starts]
    for b in (0, 1):
        m = (arrays["source"][starts] == only) & (beh == b)
        assert_close(rtg[starts][m], np.full(m.sum(), returns[m].mean()))
    assert np.abs(rtg[is_h] - real[is_h]).max() > 0.1


def test_group_mean_needs_behaviour_ids():
    arrays, _ = random_dataset(np.random.default_rng(0), 10)
    with pytest.raises(store.DatasetError, match="behaviour"):
        device_arrays(arrays, rtg_label="group_mean")
    # the default label relabels only blind episodes: a dataset without any, or without behaviour ids (a
    # synthetic one: blind rollouts are newer than the ids), keeps its realised RTGs
    real = np.asarray(device_arrays(arrays)["rtg"])
    assert DataConfig().rtg_label == "blind_mean" and real.min() < 0 < real.max()
    arrays["source"] = np.full_like(arrays["source"], store.SOURCES.index("blind"))
    assert_close(np.asarray(device_arrays(arrays, rtg_label="blind_mean")["rtg"]), real)
    arrays["behaviour"] = np.zeros(len(real), np.int32)  # one group: every step labelled the mean return
    _, _, _, returns = store.episode_index(arrays)
    assert_close(np.asarray(device_arrays(arrays, rtg_label="blind_mean")["rtg"]), np.full(len(real), returns.mean()))
    with pytest.raises(ConfigError, match="rtg_label"):
        DataConfig(rtg_label="median")
    with pytest.raises(ConfigError, match="wait_frac"):
        DataMixConfig(wait_frac=-0.1)
    with pytest.raises(ConfigError, match="hazard_window"):
        DataMixConfig(hazard_window=0)
    with pytest.raises(ConfigError, match="blind_window"):
        DataMixConfig(blind_window=0)


@pytest.fixture(scope="module")
def mix():
    """One compiled mix rollout (E = 8 envs, T = 120 steps) of a tiny random MLP policy, every
    argument given so that all calls share the compilation: (rollout(key, **changes), env, params, net, p)."""
    env, params = envs.make(ENV_ID, max_steps=MAX_STEPS)
    net = ActorCritic(n_actions=env.num_actions, hidden=8)
    # key 2: a random policy whose greedy action varies with the view (key 0's always turns right)
    p = net.init(jax.random.key(2), jnp.zeros((1, *env.observation_shape()), jnp.uint8))
    compiled = jax.jit(make_rollout(env, params, net, MIX_E, MIX_T))
    z = jnp.zeros(MIX_E, jnp.int32)
    defaults = {"policy": z, "eps": jnp.zeros(MIX_E), "branch_steps": z, "wait_steps": z, "wait_from": z,
                "temperature": jnp.ones(MIX_E), "blind": jnp.zeros(MIX_E, bool)}

    def rollout(key, **changes):
        kw = {k: jnp.asarray(v, defaults[k].dtype) for k, v in {**defaults, **changes}.items()}
        return jax.device_get(compiled(key, jax.tree.map(lambda x: x[None], p), **kw))

    return rollout, env, params, net, p


def test_wait_rollout_turns_in_place_then_acts(mix):
    rollout = mix[0]
    E, W = MIX_E, 20
    wait = jnp.where(jnp.arange(E) < 6, W, 0).astype(jnp.int32)
    rec = rollout(jax.random.key(1), wait_steps=wait)  # wait_from 0
    t, draw, action = rec["state"].time, rec["draw"], rec["action"]
    assert (draw[:, 6:] == 0).all() and (draw < W).all() and (draw >= 0).all()
    waiting = t < draw
    assert waiting.sum() > 100 and (action[waiting] == 0).all()  # turn left while waiting
    # the draw is one value per episode: constant until the episode ends, and drawn afresh
    done = rec["terminated"] | rec["truncated"]
    same = draw[1:] == draw[:-1]
    assert same[~done[:-1]].all() and not same[done[:-1]].all()
    # nothing ends an episode while it waits; a goal after a wait w pays at most 1 - 0.9 (w + 1) / max_steps
    assert not done[waiting].any()
    goal = rec["reward"] > 0
    assert (rec["reward"][goal] <= 1 - 0.9 * (draw[goal] + 1) / MAX_STEPS + 1e-6).all()
    # hazard rollouts: uniform random play after a wait drawn in [wait_from, wait_steps)
    rec = rollout(jax.random.key(2), policy=jnp.full(E, -1), eps=jnp.ones(E), wait_steps=jnp.full(E, MAX_STEPS),
                  wait_from=jnp.full(E, MAX_STEPS - 10))
    t, draw, action = rec["state"].time, rec["draw"], rec["action"]
    assert (draw >= MAX_STEPS - 10).all() and (draw < MAX_STEPS).all() and len(np.unique(draw)) > 5
    assert (action[t < draw] == 0).all() and (action[t >= draw] != 0).any()


def test_blind_rollout_acts_greedily_on_the_grid_without_balls(mix):
    """Blind envs: every action is the policy's argmax on the view with the balls removed (and the
    balls were in view, changing the seeing policy's choice, somewhere); other envs see the balls."""
    rollout, env, params, net, p = mix
    E, T = MIX_E, MIX_T
    rec = rollout(jax.random.key(4), temperature=jnp.full(E, 1e-6), blind=jnp.arange(E) < 4)
    st = jax.tree.map(lambda x: x.reshape((T * E,) + x.shape[2:]), rec["state"])

    @jax.jit  # one compilation (eager vmapped observes cost seconds of op-by-op dispatch)
    def views_and_greedy(st):
        views = [jax.vmap(lambda s: env.observe(f(s), params))(st) for f in (lambda s: s, blind_state)]
        return views, [net.apply(p, v)[0].argmax(-1).reshape(T, E) for v in views]

    (seen, hidden), (greedy_seen, greedy_blind) = jax.device_get(views_and_greedy(st))
    ball = envs.minigrid.OBJECT_TO_IDX["ball"]
    in_view = (seen[..., 0] == ball).any((1, 2)).reshape(T, E)
    assert in_view[:, :4].mean() > 0.3 and not (hidden[..., 0] == ball).any()
    a = rec["action"]
    assert (a[:, :4] == greedy_blind[:, :4]).all() and (a[:, 4:] == greedy_seen[:, 4:]).all()
    assert (greedy_blind[:, :4] != greedy_seen[:, :4]).any()  # the balls matter to this policy, and the blind ones ignored them


TINY = DataConfig(
    ppo=PPOConfig(total_timesteps=32 * 16 * 6, num_envs=32, num_steps=16, num_minibatches=2, n_snapshots=2),
    mix=DataMixConfig(final_frac=0.2, random_frac=0.2, wait_frac=0.6, blind_frac=0.6, blind_window=10, envs=24),
)


@pytest.mark.slow  # a PPO compile: ~80 s on a busy 2-core CPU
def test_collect_records_behaviour_ids(tmp_path):
    env, params = envs.make(ENV_ID, max_steps=MAX_STEPS)
    col = collect.collect(TINY, env, params, jax.random.key(0), log=lambda m: None)
    store.save(tmp_path / "d", col.arrays, collect.dataset_metadata(TINY, env, params, ENV_ID, 0))
    a, meta = store.load(tmp_path / "d")
    assert "wait" in meta["counts"]["per_source"]
    _, starts, lengths, _ = store.episode_index(a)
    src, beh = a["source"][starts], a["behaviour"][starts]
    ppo, wait = src == store.SOURCES.index("ppo"), src == store.SOURCES.index("wait")
    # PPO episodes: the update their first step was played in (updates run in order within an env)
    assert beh[ppo].min() == 0 and beh[ppo].max() <= TINY.ppo.num_updates - 1 and len(np.unique(beh[ppo])) > 1
    # wait episodes: the final policy (param set n_snapshots - 1) and the wait, which the leading turns show
    assert (beh[wait] // relabel.DRAW_RANGE == TINY.ppo.n_snapshots).all()
    w = beh[wait] % relabel.DRAW_RANGE
    assert w.max() > MAX_STEPS // 2 and (w < MAX_STEPS).all()
    for s, n, k in zip(starts[wait][:20], lengths[wait][:20], w[:20]):
        assert (a["action"][s:s + min(k, n)] == 0).all()
    # random episodes: param set -1 -> behaviour 0
    assert (beh[src == store.SOURCES.index("random")] == 0).all()
    # blind episodes: the final policy and a wait in the last blind_window steps, turning until then
    blind = src == store.SOURCES.index("blind")
    assert blind.sum() > 10 and (beh[blind] // relabel.DRAW_RANGE == TINY.ppo.n_snapshots).all()
    w = beh[blind] % relabel.DRAW_RANGE
    assert (w >= MAX_STEPS - 10).all() and (w < MAX_STEPS).all() and len(np.unique(w)) > 3
    for s, n, k in zip(starts[blind], lengths[blind], w):
        assert (a["action"][s:s + min(k, n)] == 0).all()


def test_spearman_matches_scipy():
    from scipy.stats import spearmanr

    rng = np.random.default_rng(0)
    x = np.linspace(-1, 1, 21)
    for y in (rng.normal(size=21), np.round(rng.normal(size=21), 0), np.where(x < 0, -1.0, x)):  # ties too
        assert_close(evaluate.spearman(x, y), spearmanr(x, y).statistic)
    assert evaluate.spearman(x, x ** 3) == pytest.approx(1.0)
    assert np.isnan(evaluate.spearman(x, np.ones(21)))


def fake_calibration(means):
    x = np.linspace(-1, 1, len(means))
    return {"rows": [{"target_rtg": float(t), "mean_return": float(m)} for t, m in zip(x, means)], "monotonic": True}


def test_method_row_and_table(tmp_path):
    x = np.linspace(-1, 1, 21)
    perfect = np.minimum(x, 0.95)  # y = x up to the best return
    step = np.where(x < 0, -1.0, 0.95)  # a switch at RTG 0
    row = calibrate.method_row([fake_calibration(perfect), fake_calibration(step)], train_seconds=12.0)
    err_step = np.abs(step - x)[:-1].mean()
    assert_close(row["calibration_error_reachable"], [err_step / 2, err_step / 2])  # mean, sd of (0, err_step)
    assert_close(row["return_low"][0], -1.0) and assert_close(row["return_high"][0], 0.95)
    assert row["spearman"][0] < 1.0 and row["seeds"] == 2 and row["targets"] == [-1.0, 0.0, 1.0]
    table = calibrate.format_table({"a": row})
    assert "| a | 2 | 0." in table and table.count("\n") == 2
    fig = plots.calibration_methods({"a": (x, perfect, 0 * x), "b": (x, step, 0.1 + 0 * x)})
    assert len(fig.axes[0].lines) == 3  # two methods and the diagonal


def test_method_configs():
    base = TrainConfig()
    cfg = calibrate.method_config(base, "wait_esper", tmp := "out")
    assert cfg.data.mix.wait_frac > 0 and cfg.data.rtg_label == "group_mean" and cfg.run_name == "wait_esper"
    assert cfg.checkpoint_dir == tmp and cfg.data.mix.final_frac == base.data.mix.final_frac
    old = calibrate.method_config(base, "baseline", "o").data
    assert old.mix.wait_frac == old.mix.blind_frac == 0 and old.rtg_label == "realised"  # the default before issue 20
    assert old.mix == DataMixConfig()  # ... which DataMixConfig's fields still are
    assert calibrate.method_config(base, "wait_blind_r2", "o").data == base.data  # today's default
    with pytest.raises(ConfigError, match="unknown method"):
        calibrate.method_config(base, "magic", "o")


def test_gate_map_is_the_policy_at_the_start_states():
    from fixtures import random_params

    from dtjax.config import ModelConfig
    from dtjax.model import forward

    cfg = ModelConfig(d_model=16, n_heads=2, d_head=8, d_mlp=16, max_timestep=MAX_STEPS)
    params = random_params(cfg, std=0.3)
    env, env_params = envs.make(ENV_ID, max_steps=MAX_STEPS)
    rtgs, ts = np.array([-1.0, 0.0, 0.5]), np.array([0, 7])
    m = calibrate.gate_map(params, cfg, env, env_params, jax.random.key(0), rtgs, ts, n_starts=4)
    assert m.shape == (2, 3, 3) and np.allclose(m.sum(-1), 1, rtol=1e-5)
    obs, _ = jax.vmap(env.reset, in_axes=(0, None))(jax.random.split(jax.random.key(0), 4), env_params)
    logits = forward(params, cfg, obs[:, None], jnp.full((4, 1), 0.5), jnp.full((4, 1), 7))
    assert_close(m[1, 2], np.asarray(jax.nn.softmax(logits[:, -1], -1).mean(0)))
    assert np.abs(m[0] - m[1]).max() > 1e-4  # the timestep reaches the policy


def test_rtg_gate_stats_tells_a_switch_from_a_graded_gate():
    from dtjax import analysis as A

    rtg, ts = np.linspace(-1, 1, 21), np.array([0, 100, 200, 300])
    onehot = lambda a: np.eye(3)[a]  # noqa: E731

    def probs(gate_at):  # greedy action 0 below each timestep's gate RTG, 2 from it on
        return np.stack([onehot(np.where(rtg >= g - 1e-9, 2, 0)) for g in gate_at])

    sw = A.rtg_gate_stats(rtg, ts, probs([0.0, 0.0, 0.1, 0.0]))
    assert sw["kind"] == sw["kind_low"] == "switch"  # two actions: the low gate is the gate
    assert_close(sw["gate_rtg"], [0.0, 0.0, 0.1, 0.0], floor=1.0)
    assert_close(sw["gate_low_rtg"], sw["gate_rtg"], floor=1.0)
    # three behaviours: crash (2) up to a fixed -0.5, wait (0) in between, go (1) from a gate that falls with time
    three = np.stack([onehot(np.where(rtg < -0.5 - 1e-9, 2, np.where(rtg < g - 1e-9, 0, 1))) for g in (0.9, 0.6, 0.3, 0.0)])
    st = A.rtg_gate_stats(rtg, ts, three)
    assert (st["kind"], st["kind_low"]) == ("graded", "switch")
    assert_close(st["gate_low_rtg"], np.full(4, -0.5), floor=1.0)
    assert_close(st["gate_rtg"], [0.9, 0.6, 0.3, 0.0], floor=1.0)
    gr = A.rtg_gate_stats(rtg, ts, probs([0.9, 0.6, 0.3, 0.0]))  # the gate falls 0.3 per 100 steps
    assert gr["kind"] == "graded" and abs(gr["gate_slope_per_100_steps"] + 0.3) < 1e-9
    assert (gr["action_low"] == 0).all() and (gr["action_high"] == 2).all()
    assert abs(st["gate_trend"] + 0.9) < 1e-9 and abs(st["gate_low_trend"]) < 1e-9
    # one timestep where two near-tied actions swap does not make a switch graded
    blip = A.rtg_gate_stats(rtg, np.arange(6) * 50, probs([0.0, 0.0, 0.8, 0.0, 0.0, 0.0]))
    assert blip["kind"] == "switch" and blip["gate_trend"] == 0
    none = A.rtg_gate_stats(rtg, ts, np.broadcast_to(onehot(1), (4, 21, 3)))
    assert none["kind"] == "none" and np.isnan(none["gate_rtg"]).all()


@pytest.mark.slow  # a compile of the vmapped grid (~5 s idle); the rtg_time section runs in test_report(_shapes) by default
def test_rtg_time_panel_is_the_policy_at_each_timestep_and_rtg():
    from fixtures import random_params

    from dtjax import analysis as A
    from dtjax import scenarios as S
    from dtjax.circuits import action_vector
    from dtjax.config import ModelConfig

    cfg = ModelConfig(d_model=16, n_heads=2, d_head=8, d_mlp=16, max_timestep=MAX_STEPS)
    params = random_params(cfg, std=0.3)
    names, inp = S.scenario_inputs(None, rtg=0.9)
    inp = inp.take(jnp.arange(2))
    rtgs, ts = jnp.array([-1.0, 0.5]), jnp.array([0, 7, MAX_STEPS + 5])  # the last is clipped to max_timestep
    v = action_vector("forward-right", 3)
    p = A.rtg_time_panel(params, cfg, inp, rtgs, ts, v)
    assert p["probs"].shape == (2, 3, 2, 3) and p["dla"].shape[:3] == (2, 3, 2)
    # the grid point (t, r) is the state panel of the scenarios at timestep t and RTG r
    want = A.state_panels(params, cfg, inp.replace(timesteps=jnp.full_like(inp.timesteps, 7)).with_rtg(0.5), v)
    assert_close(p["probs"][:, 1, 1], want["probs"])
    assert_close(p["dla"][:, 1, 1], want["dla"])
    top = A.state_panels(params, cfg, inp.replace(timesteps=jnp.full_like(inp.timesteps, MAX_STEPS)).with_rtg(-1.0), v)
    assert_close(p["probs"][:, 2, 0], top["probs"])
    assert np.abs(np.asarray(p["probs"][:, 0] - p["probs"][:, 1])).max() > 1e-4  # the timestep reaches the policy


def test_calibration_table_and_figure_for_a_family_without_negative_returns():
    """Empty's returns lie in [0, 1] (its Task.return_range): the table's columns and the figure follow the targets."""
    x = np.linspace(0, 1, 21)
    flat = np.full(21, 0.98)  # a model that always goes straight to the goal
    calib = {"rows": [{"target_rtg": float(t), "mean_return": float(m)} for t, m in zip(x, flat)], "monotonic": False}
    row = calibrate.method_row([calib])
    assert row["targets"] == [0.0, 0.5, 1.0]
    assert_close(row["calibration_error_reachable"][0], np.abs(flat - x)[:-1].mean())
    assert "return @0 | return @0.5 | return @1" in calibrate.format_table({"baseline": row})
    ax = plots.calibration_methods({"baseline": (x, flat, 0 * x)}).axes[0]
    assert ax.get_ylim() == pytest.approx((-0.1, 1.1)) and ax.lines[-1].get_xdata().tolist() == [0.0, 1.0]  # the diagonal
