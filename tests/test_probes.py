"""dtjax.probes: concepts on hand-made states, a probe recovers a planted direction, alpha = 0 is a plain rollout."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from fixtures import random_params

import envs
from envs import dynamic_obstacles as do
from envs import empty
from dtjax import probes
from dtjax.config import ModelConfig
from dtjax.evaluate import Window, evaluate, evaluate_worlds
from dtjax.probes import ground_truth as gt
from dtjax.probes import steer

# ---------------------------------------------------------------------------------------------
# CONCEPTS ON HAND-MADE STATES
# ---------------------------------------------------------------------------------------------


def test_goal_direction_in_the_agents_frame():
    goal = np.array([6, 6])
    # east from (2, 6): goal 4 ahead; south from (6, 2): 4 ahead; north from (6, 2): behind;
    # east from (6, 2): the goal is 4 to the right (y down); west from (6, 2): 4 to the left; on it: -1
    pos = np.array([[2, 6], [6, 2], [6, 2], [6, 2], [6, 2], [6, 6]])
    dirs = np.array([0, 1, 3, 0, 2, 0])
    got = gt.goal_direction(pos, dirs, np.broadcast_to(goal, pos.shape))
    assert [gt.DIRECTIONS[i] if i >= 0 else None for i in got] == ["ahead", "ahead", "behind", "right", "left", None]


def _hand_rollout(env, params, states, actions, outcomes):
    """Rollouts of one episode (B = 1) through hand-made states, with the given actions / outcomes."""
    obs = jnp.stack([env.observe(s, params) for s in states])  # (T, 7, 7, 3)
    T = len(states)
    state = jax.tree.map(lambda *xs: jnp.stack(xs)[None], *states)
    win = Window(obs=obs[None, :, None], rtg=jnp.full((1, T, 1), 0.9), timesteps=jnp.arange(T)[None, :, None],
                 actions=jnp.full((1, T, 1), 3))
    return gt.Rollouts(window=win, state=state, action=jnp.asarray([actions], jnp.int32),
                       outcome=jnp.asarray([outcomes], jnp.int32), valid=jnp.ones((1, T), bool),
                       target_rtg=jnp.asarray([0.9]))


def test_concepts_on_hand_made_states():
    env, params = envs.make("MiniGrid-Dynamic-Obstacles-8x8-v0")
    states = [do.make_state((2, 3), 0, balls=[(3, 3)]),  # ball ahead, goal (6, 6) ahead (4 vs 3 right)
              do.make_state((2, 3), 3, balls=[(3, 3)]),  # facing north: (2, 2) empty ahead, the ball and goal right
              do.make_state((1, 3), 2, balls=[(5, 5)]),  # facing the west wall; nearest ball 6 away
              do.make_state((5, 6), 0, balls=[(2, 2)])]  # goal ahead
    roll = _hand_rollout(env, params, states, [0, 1, 2, 2], [0, 0, 0, 2])  # the last step hits (a hand-made outcome)
    cs = gt.concepts(env, roll, k=2)

    def lab(name):
        c = cs[name]
        return [c.classes[i] if i >= 0 else None for i in c.labels[0]]

    assert lab("ball_ahead") == ["yes", "no", "no", "no"]
    assert lab("wall_ahead") == ["no", "no", "yes", "no"]
    assert lab("goal_ahead") == ["no", "no", "no", "yes"]
    assert lab("blocked_ahead") == ["yes", "no", "yes", "no"]
    assert lab("cell(3,5)") == ["ball", "empty", "wall", "goal"]
    assert lab("cell(4,6)") == ["empty", "ball", "empty", "wall"]  # the cell to the right: (2,4) (3,3) (1,2) (5,7)
    assert lab("goal_direction") == ["ahead", "right", "behind", "ahead"]
    assert lab("obstacle_distance") == ["1", "1", ">=4", ">=4"]
    assert lab("action") == ["left", "right", "forward", "forward"]
    assert lab("action_next") == ["right", "forward", "forward", None]
    assert lab("action_next2") == ["forward", "forward", None, None]
    assert lab("collision_within_2") == ["no", "no", "yes", "yes"]
    assert lab("outcome") == ["hit"] * 4


def test_concepts_undefined_past_the_end_and_without_an_ending():
    env, params = envs.make("MiniGrid-Dynamic-Obstacles-8x8-v0")
    states = [do.make_state((2, 3), 0)] * 3
    roll = _hand_rollout(env, params, states, [2, 2, 2], [0, 0, 0])
    roll = roll.replace(valid=jnp.asarray([[True, True, False]]))
    cs = gt.concepts(env, roll, k=2)
    assert cs["outcome"].labels.tolist() == [[-1, -1, -1]]  # never ended within the rollout
    assert cs["collision_within_2"].labels.tolist() == [[0, -1, -1]]  # step 1's next step was not seen
    assert cs["action"].labels.tolist() == [[2, 2, -1]]


def test_concepts_of_a_task_without_balls():
    env, params = envs.make("MiniGrid-Empty-8x8-v0")
    roll = _hand_rollout(env, params, [empty.make_state((5, 6), 0), empty.make_state((1, 1), 1)], [2, 0], [1, 0])
    cs = gt.concepts(env, roll)
    assert "ball_ahead" not in cs and "obstacle_distance" not in cs and "blocked_ahead" not in cs
    assert "collision_within_3" not in cs  # Empty has no failure outcome
    assert cs["goal_ahead"].labels.tolist() == [[1, 0]] and cs["outcome"].labels[0, 0] == 0  # "goal"
    assert cs["goal_direction"].labels.tolist() == [[0, 0]]  # (1, 1) facing south: 5 ahead, 5 to the left


# ---------------------------------------------------------------------------------------------
# LINEAR PROBES
# ---------------------------------------------------------------------------------------------


def _planted(seed=0, n=900, d=12):
    rng = np.random.default_rng(seed)
    x = (rng.normal(size=(n, d)) * rng.uniform(0.5, 3.0, d) + rng.normal(size=d)).astype(np.float32)
    direction = rng.normal(size=d)
    direction /= np.linalg.norm(direction)
    proj = x @ direction
    y = (proj > np.median(proj)).astype(np.int32)
    y[:40] = -1  # undefined samples are ignored
    return x, y, direction


def test_probe_recovers_a_planted_direction():
    x, y, direction = _planted()
    probe = probes.fit(x[:600], y[:600])
    m = probes.evaluate(probe, x[600:], y[600:])
    assert m["f1"] > 0.95 and m["auroc"] > 0.99 and m["n"] == 300
    r = np.asarray(probe.raw_direction())
    assert abs(r @ direction) / np.linalg.norm(r) > 0.98  # the direction in the features' own units
    # shuffled training labels (the baseline) decode nothing
    rng = np.random.default_rng(1)
    shuf = y[:600].copy()
    shuf[y[:600] >= 0] = rng.permutation(shuf[y[:600] >= 0])
    assert probes.evaluate(probes.fit(x[:600], shuf), x[600:], y[600:])["f1"] < 0.65


def test_fit_many_pads_classes_and_matches_a_single_fit():
    x, y, _ = _planted(seed=2)
    noise = np.random.default_rng(3).normal(size=x.shape).astype(np.float32)
    y3 = np.digitize(x[:, 0], np.quantile(x[:, 0], [1 / 3, 2 / 3])).astype(np.int32)  # 3 classes from one feature
    y3[:40] = -1  # the same undefined rows as y: one standardisation for both concepts
    many = probes.fit_many(np.stack([x, noise])[:, :600], np.stack([y, y3])[:, :600], [2, 3])
    assert many.w.shape == (2, 2, x.shape[1], 3)
    proba = np.asarray(probes.predict_proba_many(many, np.stack([x, noise])[:, 600:]))
    assert np.all(proba[:, 0, :, 2] == 0)  # the binary concept's padding class gets no mass
    f1 = [[probes.metrics(proba[h, p][:, : [2, 3][p]], [y, y3][p][600:])["f1"] for p in range(2)] for h in range(2)]
    assert f1[0][0] > 0.95 and f1[0][1] > 0.9  # the real features
    assert f1[1][0] < 0.65 and f1[1][1] < 0.5  # noise: chance (1/2, 1/3)
    one = probes.fit(x[:600], y[:600])
    np.testing.assert_allclose(np.asarray(one.w)[:, :2], np.asarray(many.w[0, 0])[:, :2], rtol=1e-3,
                               atol=1e-3 * float(np.abs(one.w).max()))


def test_metrics_known_values():
    y = np.array([0, 1] * 20)
    perfect = np.eye(2)[y]
    assert probes.metrics(perfect, y) == {"accuracy": 1.0, "f1": 1.0, "auroc": 1.0, "n": 40}
    assert probes.metrics(perfect[:, ::-1], y)["auroc"] == 0.0
    assert np.isnan(probes.metrics(perfect[:10], y[:10])["f1"])  # too few samples
    with pytest.raises(ValueError, match="2 classes"):
        probes.fit_many(np.zeros((1, 4, 2)), np.zeros((1, 4), np.int32), [1])


# ---------------------------------------------------------------------------------------------
# STEERING
# ---------------------------------------------------------------------------------------------


def _tiny():
    return ModelConfig(n_layers=1, d_model=16, n_heads=2, d_head=8, d_mlp=32, n_timesteps=1, max_timestep=30)


def test_alpha_zero_equals_a_plain_rollout():
    cfg = _tiny()
    params = random_params(cfg, seed=4)
    env, env_params = envs.make("MiniGrid-Dynamic-Obstacles-8x8-v0", max_steps=30)
    key = jax.random.PRNGKey(5)
    plain = evaluate(params, cfg, env, env_params, key, [0.9], 16, pool=8)
    # two worlds in one rollout: alpha = 0, and a large push along the unembedding's "forward"
    # direction (the residual stream reaches the logits through W_U: the push is live)
    forward = np.asarray(params["W_U"][:, 2] - params["W_U"][:, :2].mean(1))
    vecs = jnp.stack([jnp.zeros(16), 100.0 * forward / np.linalg.norm(forward)])
    iv = steer.add_direction(cfg, "blocks.0.hook_resid_pre", "state", np.zeros(16))["blocks.0.hook_resid_pre"]
    res = evaluate_worlds(params, cfg, env, env_params, key, [0.9], 16, pool=8,
                          interventions={"blocks.0.hook_resid_pre": iv.replace(arg={"vec": vecs, "pos": jnp.array([1, 1])})})
    np.testing.assert_array_equal(res.outcome[0], plain.outcome)
    np.testing.assert_array_equal(res.lengths[0], plain.lengths)
    np.testing.assert_allclose(res.returns[0], plain.returns, rtol=1e-6)
    assert np.all(res.ended("hit")[1])  # always forward: into a ball or the wall


def test_add_direction_checks_its_site():
    cfg = _tiny()
    with pytest.raises(ValueError, match="no action token"):
        steer.add_direction(cfg, "blocks.0.hook_resid_pre", "action", np.zeros(16))
    with pytest.raises(ValueError, match="no token axis"):
        steer.add_direction(cfg, "blocks.0.attn.hook_pattern", "state", np.zeros(16))
    x = jnp.zeros((2, 2, 3))
    out = steer.add_at_position(x, {"vec": jnp.array([1.0, 2.0, 3.0]), "pos": jnp.int32(1)})
    np.testing.assert_array_equal(np.asarray(out), np.stack([np.zeros((2, 3)), np.broadcast_to([1, 2, 3], (2, 3))], 1))
