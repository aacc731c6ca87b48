"""Closed-loop evaluation against an independent re-simulation, and the original models in our env.

The reference, ``replay``, plays the episodes of ``dtjax.evaluate.evaluate`` again one at a time in
plain Python: it keeps each episode's history, builds the DT's context window by hand in the
layout of the training windows (``dtjax.data.dataset``: the last K timesteps, left-padded with a
zero observation, RTG 0, timestep 0 and the padding action; the current timestep's action slot
holds the padding action), calls ``dtjax.model.forward`` (or ``run_with_hooks``) on that window,
steps ``envs`` with the argmax action, and classifies the outcome from the env's reward and the
front cell. The one thing it shares with ``evaluate`` is the documented random-number schedule,
so that both play the same episodes.
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dtjax
import envs
from dtjax import circuits as C
from dtjax import hooks
from dtjax.config import ModelConfig
from dtjax.evaluate import calibrate, evaluate, evaluate_worlds, n_worlds, stack_worlds
from dtjax.model import forward, init_params, run_with_hooks
from tolerance import assert_close

ORIG = Path(__file__).resolve().parents[1] / "checkpoints" / "original"
DIRS = np.array([[1, 0], [0, 1], [-1, 0], [0, -1]])  # MiniGrid's DIR_TO_VEC: E, S, W, N


def replay(params, cfg, env, env_params, key, target_rtgs, n_episodes, rows, interventions=None):
    """Re-simulate rows ``rows`` (index ``r * n_episodes + i``: target r, episode i) of
    ``evaluate(..., greedy=True)`` in Python. Returns per row: return, length, outcome
    ("goal", "hit", "wall", "timeout") and the actions taken.

    Random numbers (``evaluate``'s schedule): ``k_reset, k_loop = split(key)``; episode i of every
    target resets with ``split(k_reset, n_episodes)[i]``; step s of row j steps the env with
    ``split(split(fold_in(k_loop, s))[1], n_rtg * n_episodes)[j]``.
    """
    K, pad_action, size = cfg.n_timesteps, cfg.n_actions, env.size
    batch = len(target_rtgs) * n_episodes
    k_reset, k_loop = jax.random.split(key)
    reset_keys = jax.random.split(k_reset, n_episodes)
    step_keys = {}
    out = []
    for j in rows:
        obs, state = env.reset(reset_keys[j % n_episodes], env_params)
        rtg, ret, history, actions = float(target_rtgs[j // n_episodes]), 0.0, [], []
        for s in range(int(env_params.max_steps_in_episode)):
            t = min(int(state.time), cfg.max_timestep)
            window = (history + [(np.asarray(obs), rtg, t, pad_action)])[-K:]
            window = [(np.zeros_like(window[0][0]), 0.0, 0, pad_action)] * (K - len(window)) + window
            o, r, ts, a = (np.stack([w[i] for w in window])[None] for i in range(4))
            acts = a.astype(np.int32) if K > 1 else None
            if interventions:
                logits = run_with_hooks(params, cfg, o, r.astype(np.float32), ts.astype(np.int32), acts, interventions)
            else:
                logits = forward(params, cfg, o, r.astype(np.float32), ts.astype(np.int32), acts)
            action = int(np.argmax(np.asarray(logits)[0, -1]))
            fx, fy = np.asarray(state.agent_pos) + DIRS[int(state.agent_dir)]
            front_is_wall = min(fx, fy) == 0 or max(fx, fy) == size - 1
            if s not in step_keys:
                step_keys[s] = jax.random.split(jax.random.split(jax.random.fold_in(k_loop, s))[1], batch)
            history.append((np.asarray(obs), rtg, t, action))
            actions.append(action)
            obs, state, reward, term, trunc, _ = env.step(step_keys[s][j], state, action, env_params)
            reward = float(reward)
            ret += reward
            rtg -= reward
            if term or trunc:
                break
        outcome = "goal" if reward > 0 else ("wall" if front_is_wall else "hit") if reward == -1 else "timeout"
        out.append({"return": ret, "length": s + 1, "outcome": outcome, "actions": actions})
    return out


def outcomes(res) -> np.ndarray:
    """evaluate's per-episode outcomes as the names ``replay`` uses, flattened (row order)."""
    names = np.full(res.goal.shape, "", dtype=object)
    for name, m in (("goal", res.goal), ("hit", res.hit & ~res.hit_wall), ("wall", res.hit_wall), ("timeout", res.timeout)):
        names[m] = names[m] + name
    return names.ravel()


def assert_same_episodes(res, ref, rows):
    """evaluate's episodes ``rows`` equal the re-simulated ones: outcome, length and return."""
    got = outcomes(res)
    for j, r in zip(rows, ref):
        ep = f"row {j}"
        assert got[j] == r["outcome"], (ep, got[j], r)
        assert res.lengths.ravel()[j] == r["length"], (ep, res.lengths.ravel()[j], r)
        assert_close(res.returns.ravel()[j], r["return"], floor=1.0, err_msg=ep)


def assert_returns_follow_outcomes(res, max_steps):
    """Every episode's return is its outcome's reward: 1 - 0.9 t/T at the goal (t = its length),
    -1 for a hit, 0 for a timeout (which lasts max_steps)."""
    assert_close(res.returns[res.goal], 1 - 0.9 * res.lengths[res.goal] / max_steps)
    assert (res.returns[res.hit] == -1).all() and (res.returns[res.timeout] == 0).all()
    assert (res.lengths[res.timeout] == max_steps).all()


# ---------------------------------------------------------------------------------------------
# A context of K = 3 timesteps: history shift and the action slot, on a tiny random model
# ---------------------------------------------------------------------------------------------

CTX = ModelConfig(n_layers=1, d_model=16, n_heads=2, d_head=8, d_mlp=32, n_timesteps=3, max_timestep=30,
                  init="transformer_lens")


def test_rollout_with_context_matches_a_python_loop():
    """The jitted rollout with K = 3 equals the Python loop that builds each window by hand.

    The random model turns more often than it walks (a bias on the turn logits), so episodes
    last longer than the context and every part of the window (shifted observations, RTGs,
    timesteps and previous actions) is in use. (Checked by breaking each in ``evaluate``: the
    previous actions not recorded, the padding action replaced by 0, the timestep token off by
    one, the observation not shifted: each fails this test.)"""
    env, env_params = envs.make("MiniGrid-Dynamic-Obstacles-Random-6x6-v0", max_steps=30)
    p = init_params(jax.random.PRNGKey(0), CTX)
    # large action and RTG embeddings, so that previous (and padding) actions and the RTG move the logits
    k_act, k_rtg = jax.random.split(jax.random.PRNGKey(1))
    p = dict(p, W_action=3 * jax.random.normal(k_act, p["W_action"].shape), W_rtg=jax.random.normal(k_rtg, p["W_rtg"].shape),
             b_U=jnp.array([1.0, 1.0, 0.0]))
    key, rtgs, n = jax.random.PRNGKey(1), [-1.0, 1.0], 8
    res = evaluate(p, CTX, env, env_params, key, rtgs, n)
    rows = list(range(2 * n))
    ref = replay(p, CTX, env, env_params, key, rtgs, n, rows)
    # the episodes exercise what is tested: long enough for a full window, every action, several outcomes
    assert np.mean([r["length"] > CTX.n_timesteps for r in ref]) > 0.5
    assert {a for r in ref for a in r["actions"]} == {0, 1, 2}
    assert len({r["outcome"] for r in ref}) >= 2
    assert_same_episodes(res, ref, rows)
    assert_returns_follow_outcomes(res, 30)


def test_worlds_equal_their_one_world_evaluations():
    """``evaluate_worlds`` over interventions of different structure per world (no intervention,
    head 0 zero-ablated, the MLP zero-ablated, both, and a mean-replaced residual stream at one
    position) equals ``evaluate`` of each world alone: greedy outcomes and lengths episode for
    episode, returns up to float rounding; and the worlds differ from each other."""
    env, env_params = envs.make("MiniGrid-Dynamic-Obstacles-Random-6x6-v0", max_steps=30)
    p = init_params(jax.random.PRNGKey(0), CTX)
    k_act, k_rtg = jax.random.split(jax.random.PRNGKey(1))
    p = dict(p, W_action=3 * jax.random.normal(k_act, p["W_action"].shape), W_rtg=jax.random.normal(k_rtg, p["W_rtg"].shape),
             b_U=jnp.array([1.0, 1.0, 0.0]))
    head0 = hooks.zero_ablation(("z", 0), head=0)
    mlp = hooks.zero_ablation(("mlp_out", 0))
    resid = hooks.mean_ablation(("resid_mid", 0), jnp.linspace(-2.0, 2.0, CTX.d_model), pos=jnp.int32(4))
    worlds = [{}, head0, mlp, {**head0, **mlp}, resid]
    stacked = stack_worlds(worlds)
    assert n_worlds(stacked) == len(worlds)
    key, rtgs, n = jax.random.PRNGKey(4), [-1.0, 1.0], 12
    res = evaluate_worlds(p, CTX, env, env_params, key, rtgs, n, stacked)
    assert res.returns.shape == (len(worlds), 2, n)
    for w, ivs in enumerate(worlds):
        one, got = evaluate(p, CTX, env, env_params, key, rtgs, n, interventions=ivs), res.world(w)
        np.testing.assert_array_equal(outcomes(got), outcomes(one), err_msg=f"world {w}")
        np.testing.assert_array_equal(got.lengths, one.lengths, err_msg=f"world {w}")
        assert_close(got.returns, one.returns, floor=1.0, err_msg=f"world {w}")
    # the interventions matter, so equality per world is not equality of identical runs
    assert len({outcomes(res.world(w)).tobytes() + res.lengths[w].tobytes() for w in range(len(worlds))}) >= 3
    # sampled actions: world w draws the same action keys as its one-world run
    samp = evaluate_worlds(p, CTX, env, env_params, key, rtgs, n, stacked, greedy=False)
    for w in (0, 3):
        one = evaluate(p, CTX, env, env_params, key, rtgs, n, interventions=worlds[w], greedy=False)
        np.testing.assert_array_equal(samp.lengths[w], one.lengths, err_msg=f"world {w}")


def test_worlds_bad_interventions_are_one_line_errors():
    with pytest.raises(TypeError, match="only a Replace"):
        stack_worlds([{}, {("z", 0): hooks.Apply(jnp.negative)}])
    with pytest.raises(ValueError, match="different intervention structures"):
        stack_worlds([{("z", 0): hooks.Apply(jnp.negative)}, {("z", 0): hooks.Apply(jnp.abs)}])
    with pytest.raises(ValueError, match="leading world axis"):
        n_worlds(hooks.zero_ablation(("z", 0), head=0))
    with pytest.raises(ValueError, match="at least one world"):
        stack_worlds([])


# ---------------------------------------------------------------------------------------------
# The original project's models (reference numbers: real MiniGrid, original-project.md 13.2)
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def overnight():
    cfg, params = dtjax.load(ORIG / "demo_model_overnight_training.pt")
    env, env_params = envs.make("MiniGrid-Dynamic-Obstacles-8x8-v0", max_steps=300)
    res = evaluate(params, cfg, env, env_params, jax.random.PRNGKey(0), [-1.0, 1.0], 100)
    return cfg, params, env, env_params, res


def test_original_overnight_model_behaves_as_reported(overnight):
    """Reference (real MiniGrid, 100 seeds, greedy, max_steps 300): 0.945 at RTG 1, -1.000 at RTG -1."""
    cfg, params, env, env_params, res = overnight
    low, high = res.summary()
    assert low["mean_return"] <= -0.98 and low["hit_rate"] >= 0.98
    assert high["mean_return"] >= 0.92 and high["goal_rate"] >= 0.98
    assert 11 <= high["mean_length"] <= 30
    assert_returns_follow_outcomes(res, 300)
    # a few of the episodes of each target, re-simulated step by step in Python
    rows = [0, 1, 2, 3, 100, 101, 102, 103]
    assert_same_episodes(res, replay(params, cfg, env, env_params, jax.random.PRNGKey(0), [-1.0, 1.0], 100, rows), rows)
    # the same key gives the same episodes
    again = evaluate(params, cfg, env, env_params, jax.random.PRNGKey(0), [-1.0, 1.0], 100)
    np.testing.assert_array_equal(res.returns, again.returns)
    np.testing.assert_array_equal(res.lengths, again.lengths)


def test_interventions_in_closed_loop(overnight):
    """World "none" of ``ablate_returns`` is the plain run, episode for episode; zero-ablating
    head L0H1 (the write-up's RTG-reading head) changes the returns, and the ablated rollout
    equals the Python loop calling ``run_with_hooks`` with the same intervention."""
    cfg, params, env, env_params, res = overnight
    key, rtgs, n = jax.random.PRNGKey(0), [-1.0, 1.0], 100
    comps = [("head", 0, 1)]
    masks = C.ablation_masks(cfg, comps)
    world = [C.ablation_interventions(cfg, jax.tree.map(lambda m: m[i], masks), "zero") for i in (0, 1)]
    none = evaluate(params, cfg, env, env_params, key, rtgs, n, interventions=world[0])
    for a, b in ((none.returns, res.returns), (none.lengths, res.lengths), (none.hit_wall, res.hit_wall)):
        np.testing.assert_array_equal(a, b)
    ablated = evaluate(params, cfg, env, env_params, key, rtgs, n, interventions=world[1])
    assert (ablated.returns != res.returns).mean() > 0.1
    assert abs(ablated.returns.mean() - res.returns.mean()) > 0.1
    rows = [0, 1, 100, 101]
    assert_same_episodes(ablated, replay(params, cfg, env, env_params, key, rtgs, n, rows, world[1]), rows)
    table = C.ablate_returns(params, cfg, env, env_params, key, rtgs, n, comps=comps)
    assert table["labels"] == ["none", "L0H1"]
    assert_close(table["mean_return"], np.stack([res.returns.mean(1), ablated.returns.mean(1)]))
    assert_close(table["goal_rate"], np.stack([res.goal.mean(1), ablated.goal.mean(1)]))


def test_one_hot_model_in_closed_loop():
    """The one-hot demo model (7x7x20 inputs, max_timestep 50) in the one-hot env with max_steps 50.
    Reference (real MiniGrid, 100 seeds): RTG 1 -> 0.641, 98% goal; RTG -1 -> -0.390, 0% goal,
    39% hit, 61% timeout."""
    cfg, params = dtjax.load(ORIG / "demo_model_one_hot_overnight.pt")
    assert cfg.obs_mode == "one_hot" and cfg.max_timestep == 50
    env, env_params = envs.make("MiniGrid-Dynamic-Obstacles-8x8-v0", max_steps=50, obs_mode="one_hot")
    key = jax.random.PRNGKey(2)
    res = evaluate(params, cfg, env, env_params, key, [-1.0, 1.0], 100)
    low, high = res.summary()
    assert high["goal_rate"] >= 0.9 and high["mean_return"] >= 0.55
    assert low["goal_rate"] <= 0.1 and low["mean_return"] <= -0.15 and low["timeout_rate"] >= 0.3
    assert_returns_follow_outcomes(res, 50)
    rows = [0, 1, 2, 100, 101, 102]
    assert_same_episodes(res, replay(params, cfg, env, env_params, key, [-1.0, 1.0], 100, rows), rows)


def test_calibration_rows_and_sampling():
    cfg, params = dtjax.load(ORIG / "demo_model_overnight_training.pt")
    env, env_params = envs.make("MiniGrid-Dynamic-Obstacles-8x8-v0", max_steps=300)
    cal = calibrate(params, cfg, env, env_params, jax.random.PRNGKey(1), [-1.0, 1.0], 20, greedy=False, temperature=1.0)
    assert [round(r["target_rtg"]) for r in cal["rows"]] == [-1, 1]
    assert cal["rows"][0]["mean_return"] < cal["rows"][1]["mean_return"]
    assert cal["strictly_rising_ends"] and not cal["greedy"]


# ---------------------------------------------------------------------------------------------
# The context window and named outcomes
# ---------------------------------------------------------------------------------------------


def test_push_step_moves_every_field_one_timestep():
    """``push_step`` drops the oldest timestep, records the action taken in the current slot and
    appends the new step with the padding action, for a batched ``Window`` and for the explorer's
    unbatched window alike; a missing field is an error."""
    from dtjax.evaluate import Window, push_step
    from dtjax.explorer.session import Window as ExplorerWindow

    rng = np.random.default_rng(0)
    w = Window(obs=jnp.asarray(rng.integers(0, 9, (2, 3, 7, 7, 3)), jnp.uint8), rtg=jnp.asarray(rng.normal(size=(2, 3)), jnp.float32),
               timesteps=jnp.asarray([[0, 1, 2], [4, 5, 6]], jnp.int32), actions=jnp.asarray([[0, 1, 3], [2, 2, 3]], jnp.int32))
    obs = jnp.asarray(rng.integers(0, 9, (2, 7, 7, 3)), jnp.uint8)
    new = push_step(w, jnp.asarray([1, 0]), 3, obs=obs, rtg=jnp.asarray([0.5, -0.5]), timesteps=jnp.asarray([3, 7]))
    np.testing.assert_array_equal(new.obs[:, :2], w.obs[:, 1:])
    np.testing.assert_array_equal(new.obs[:, 2], obs)
    np.testing.assert_array_equal(new.rtg, np.float32([[w.rtg[0, 1], w.rtg[0, 2], 0.5], [w.rtg[1, 1], w.rtg[1, 2], -0.5]]))
    np.testing.assert_array_equal(new.timesteps, [[1, 2, 3], [5, 6, 7]])
    np.testing.assert_array_equal(new.actions, [[1, 1, 3], [2, 0, 3]])
    one = ExplorerWindow(obs=np.zeros((2, 7, 7, 3), np.uint8), cumrew=np.float32([0, 0]), time=np.int32([0, 1]),
                         actions=np.int32([2, 3]), valid=np.array([False, True]))
    got = push_step(one, 0, 3, obs=obs[0], cumrew=1.0, time=2, valid=True)
    np.testing.assert_array_equal(got.actions, [0, 3])
    np.testing.assert_array_equal(got.time, [1, 2])
    assert np.asarray(got.valid).all() and float(got.cumrew[-1]) == 1.0
    with pytest.raises(ValueError, match="push_step needs the fields"):
        push_step(w, 0, 3, obs=obs, rtg=0.0)


def test_eval_result_names_outcomes_by_the_task():
    """Outcome codes read through the task's names: Dynamic Obstacles keeps goal/hit/timeout and
    hit_wall (summary keys unchanged); a task without "hit" has no hit_rate and never hits."""
    from dtjax.evaluate import EvalResult

    out = np.array([[1, 2, 2, 3]])
    wall = np.array([[False, False, True, False]])
    res = EvalResult(np.float32([0.5]), np.float32([[0.9, -1, -1, 0]]), np.array([[5, 3, 2, 9]]), out,
                     envs.dynamic_obstacles.TASK.outcomes, {"hit_wall": wall})
    assert res.goal.tolist() == [[True, False, False, False]] and res.hit.tolist() == [[False, True, True, False]]
    assert res.timeout.tolist() == [[False, False, False, True]] and res.hit_wall.tolist() == wall.tolist()
    row = res.summary()[0]
    assert (row["goal_rate"], row["hit_rate"], row["hit_wall_rate"], row["timeout_rate"]) == (0.25, 0.5, 0.25, 0.25)
    empty = EvalResult(np.float32([0.5]), np.float32([[0.9, 0, 0.8, 0]]), np.array([[5, 9, 4, 9]]), np.array([[1, 2, 1, 2]]),
                       ("running", "goal", "timeout"))
    row = empty.summary()[0]
    assert "hit_rate" not in row and (row["goal_rate"], row["timeout_rate"]) == (0.5, 0.5)
    assert not empty.hit.any() and not empty.hit_wall.any() and empty.goal.sum() == 2
