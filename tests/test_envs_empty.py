"""Parity of `envs.empty` with the real `minigrid` package (3.2.0) `EmptyEnv`, and its API.

Plan (as tests/test_envs.py for Dynamic Obstacles; see docs/envs.md): roll the real MiniGrid env
with mixed policies over all 7 actions, snapshot its state before every step, then step our pure
`transition` on all the snapshots at once (one vmapped call per grid size) and compare next state,
reward, terminated, truncated and the three views (image, one-hot, full) with MiniGrid's and its
wrappers'; reset distributions of the Random ids by chi-square homogeneity, with a plausible wrong
reset as a negative control that must fail; every id jits and vmaps; the Task's scenarios are
what their captions say in the real env.
"""

from __future__ import annotations

import functools

import gymnasium as gym
import jax
import jax.numpy as jnp
import minigrid  # noqa: F401  (registers the MiniGrid ids)
import numpy as np
import pytest
from minigrid.core.world_object import Goal, Wall
from minigrid.envs.empty import EmptyEnv
from minigrid.wrappers import FullyObsWrapper, OneHotPartialObsWrapper

import envs
from fixtures import chi2_p, reset_labels
from envs import empty
from envs.empty import EnvState

MG_IDS = [
    "MiniGrid-Empty-5x5-v0",
    "MiniGrid-Empty-Random-5x5-v0",
    "MiniGrid-Empty-6x6-v0",
    "MiniGrid-Empty-Random-6x6-v0",
    "MiniGrid-Empty-8x8-v0",
    "MiniGrid-Empty-16x16-v0",
]
# Random-start 8x8 and 16x16 are dtjax ids; MiniGrid has them only as constructor arguments.
EXTRA_IDS = {
    "MiniGrid-Empty-Random-8x8-v0": {"size": 8, "agent_start_pos": None},
    "MiniGrid-Empty-Random-16x16-v0": {"size": 16, "agent_start_pos": None},
}
ALL_IDS = MG_IDS + list(EXTRA_IDS)
P_MIN = 1e-3
REWARD_RTOL = 1e-6  # float32 reward 1 - 0.9 t/T (values in [0.1, 1]) against Python's float64


def python_env(env_id: str):
    """The real MiniGrid env for an id, unwrapped (no checker overhead)."""
    if env_id in EXTRA_IDS:
        return EmptyEnv(**EXTRA_IDS[env_id])
    return gym.make(env_id).unwrapped


def snapshot(u) -> tuple:
    """MiniGrid's (agent_pos, agent_dir, step_count) as plain ints."""
    return (int(u.agent_pos[0]), int(u.agent_pos[1])), int(u.agent_dir), int(u.step_count)


def stack_states(snaps: list) -> EnvState:
    return EnvState(
        agent_pos=jnp.asarray([s[0] for s in snaps], jnp.int32),
        agent_dir=jnp.asarray([s[1] for s in snaps], jnp.int32),
        time=jnp.asarray([s[2] for s in snaps], jnp.int32),
    )


@functools.cache
def batched_phases(size: int):
    """One jitted, vmapped call per grid size (and batch length): the step, and the three views of
    the state before it and of the new state."""

    def views(state):
        return tuple(empty.observe(state, size, m) for m in empty.OBS_MODES)

    def one(state, action, max_steps):
        st, r, term, trunc, info = empty.transition(state, action, max_steps, size)
        return st, r, term, trunc, info["outcome"], views(state), views(st)

    return jax.jit(jax.vmap(one, in_axes=(0, 0, None)))


# ---------------------------------------------------------------------------------------------
# STATIC FACTS
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("env_id", ALL_IDS)
def test_registration_matches_minigrid(env_id):
    py = python_env(env_id)
    env, params = envs.make(env_id)
    assert isinstance(env, envs.Empty) and env.name == env_id
    assert env.size == py.width == py.height == envs.grid_size(env_id)
    assert env.random_start == (py.agent_start_pos is None)
    assert params.max_steps_in_episode == py.max_steps
    assert py.action_space.n == 7 and env.num_actions == env.action_space(params).n == 3
    assert env.task is envs.task_of(env_id) is empty.TASK


def test_overrides_and_errors():
    env, params = envs.make("MiniGrid-Empty-8x8-v0", max_steps=300, obs_mode="one_hot")
    assert params.max_steps_in_episode == 300 and env.observation_shape() == (7, 7, 20)
    assert envs.make("MiniGrid-Empty-16x16-v0", obs_mode="full")[0].observation_shape() == (16, 16, 3)
    with pytest.raises(ValueError, match="unknown override.*valid: max_steps, obs_mode"):
        envs.make("MiniGrid-Empty-8x8-v0", n_obstacles=2)  # a Dynamic Obstacles override
    with pytest.raises(ValueError, match="valid ids: .*MiniGrid-Empty-5x5-v0"):
        envs.make("MiniGrid-Empty-7x7-v0")
    with pytest.raises(ValueError, match="valid ids"):
        envs.task_of("MiniGrid-Empty-7x7-v0")
    with pytest.raises(ValueError, match="max_steps"):
        envs.make("MiniGrid-Empty-8x8-v0", max_steps=0)
    with pytest.raises(ValueError, match="obs_mode"):
        envs.make("MiniGrid-Empty-8x8-v0", obs_mode="rgb")
    with pytest.raises(ValueError, match="size must be at least 4"):
        envs.Empty(size=3)
    # the families do not leak into each other
    assert envs.task_of("MiniGrid-Dynamic-Obstacles-8x8-v0").family == "dynamic_obstacles"
    assert len(envs.registered_envs) == len(set(envs.registered_envs)) == 24  # 8 Dynamic Obstacles + 8 Empty + 8 Memory ids


# ---------------------------------------------------------------------------------------------
# LOCK-STEP PARITY (all 7 actions; image, one-hot and full views)
# ---------------------------------------------------------------------------------------------


def _policy(kind: str, rng: np.random.Generator, py) -> int:
    if kind == "random7":
        return int(rng.integers(0, 7))
    if kind == "random3":
        return int(rng.integers(0, 3))
    # seek: head for the goal (east, then south) 80% of the time, otherwise any of the 7 actions
    if rng.random() < 0.2:
        return int(rng.integers(0, 7))
    g = py.width - 2
    x, y = py.agent_pos
    want = 0 if x < g else 1 if y < g else 2 if x > g else 3
    if py.agent_dir == want:
        return 2
    return 1 if (want - py.agent_dir) % 4 == 1 else 0


def record(env_id: str, n_steps: int, seed: int) -> dict:
    """Exactly ``n_steps`` MiniGrid steps, episode after episode (policies seek, random7, seek,
    seek, random3 in turn; the last episode is cut): the state before each step with the three
    views MiniGrid gave of it (the reset's, or the previous step's), the action, and what MiniGrid
    returned. A fixed length lets the two ids of a size share one compile."""
    py = python_env(env_id)
    oh, full = OneHotPartialObsWrapper(py), FullyObsWrapper(py)
    rng = np.random.default_rng(seed)
    fields = ("before", "action", "after", "reward", "term", "trunc", *empty.OBS_MODES, *(f"{m}_before" for m in empty.OBS_MODES))
    rec = {k: [] for k in fields}
    kinds = ["seek", "random7", "seek", "seek", "random3"]

    def views(obs):
        return {"image": obs["image"], "one_hot": oh.observation(obs)["image"], "full": full.observation(obs)["image"]}

    ep = 0
    while len(rec["action"]) < n_steps:
        seen = views(py.reset(seed=seed * 100_000 + ep)[0])
        kind = kinds[ep % len(kinds)]
        ep += 1
        while True:
            a = _policy(kind, rng, py)
            rec["before"].append(snapshot(py))
            for mode, v in seen.items():
                rec[f"{mode}_before"].append(v)
            obs, r, term, trunc, _ = py.step(a)
            assert obs["direction"] == py.agent_dir
            seen = views(obs)
            rec["action"].append(a)
            rec["after"].append(snapshot(py))
            rec["reward"].append(r)
            rec["term"].append(term)
            rec["trunc"].append(trunc)
            for mode, v in seen.items():
                rec[mode].append(v)
            if term or trunc:
                break
    rec = {k: v[:n_steps] for k, v in rec.items()}
    rec["max_steps"] = py.max_steps
    rec["size"] = py.width
    return rec


def check_lockstep(rec: dict) -> dict:
    """Our phases on MiniGrid's snapshots: every field equal (the reward to REWARD_RTOL)."""
    size = rec["size"]
    st, r, term, trunc, outcome, views_before, views = batched_phases(size)(
        stack_states(rec["before"]), jnp.asarray(rec["action"], jnp.int32), rec["max_steps"])
    after = stack_states(rec["after"])
    for got, want in zip(jax.tree.leaves(st), jax.tree.leaves(after)):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    want_r = np.asarray(rec["reward"], np.float64)
    np.testing.assert_allclose(np.asarray(r, np.float64), want_r, rtol=REWARD_RTOL, atol=0)
    np.testing.assert_array_equal(np.asarray(term), rec["term"])
    np.testing.assert_array_equal(np.asarray(trunc), rec["trunc"])
    for mode, view, view_before in zip(empty.OBS_MODES, views, views_before):
        np.testing.assert_array_equal(np.asarray(view), np.stack(rec[mode]), err_msg=mode)
        np.testing.assert_array_equal(np.asarray(view_before), np.stack(rec[f"{mode}_before"]), err_msg=f"{mode} before")
    # outcomes: goal where MiniGrid terminated, timeout where it only truncated, else running
    task = empty.TASK
    term_py, trunc_py = np.asarray(rec["term"]), np.asarray(rec["trunc"])
    want_outcome = np.where(term_py, task.outcome_code("goal"), np.where(trunc_py, task.outcome_code("timeout"), 0))
    np.testing.assert_array_equal(np.asarray(outcome), want_outcome)
    actions = np.asarray(rec["action"])
    return {
        "steps": len(actions), "episodes": sum(b[2] == 0 for b in rec["before"]), "goals": int(term_py.sum()),
        "truncations": int(trunc_py.sum()), "moves": int(sum(a[0] != b[0] for a, b in zip(rec["before"], rec["after"]))),
        "actions": np.bincount(actions, minlength=7).tolist(),
    }


LOCKSTEP_STEPS = {
    "MiniGrid-Empty-5x5-v0": 1500,
    "MiniGrid-Empty-Random-5x5-v0": 1500,
    "MiniGrid-Empty-6x6-v0": 1500,
    "MiniGrid-Empty-Random-6x6-v0": 1500,
    "MiniGrid-Empty-8x8-v0": 1500,
    "MiniGrid-Empty-Random-8x8-v0": 1500,
    "MiniGrid-Empty-16x16-v0": 2500,
    "MiniGrid-Empty-Random-16x16-v0": 2500,
}
SEEDS = {env_id: i + 1 for i, env_id in enumerate(LOCKSTEP_STEPS)}


def _check_counts(c: dict) -> None:
    assert c["goals"] >= 3 and c["truncations"] >= 1, c  # both endings are exercised
    assert min(c["actions"]) > 0, c  # every one of the 7 actions is stepped


@pytest.mark.parametrize("env_id,n_steps", list(LOCKSTEP_STEPS.items()))
def test_lockstep_transitions_match_minigrid(env_id, n_steps):
    """14k MiniGrid steps across the eight ids: state, reward, terminated, truncated, outcome
    and the image, one-hot and full views all equal."""
    _check_counts(check_lockstep(record(env_id, n_steps, seed=SEEDS[env_id])))


@pytest.mark.slow
@pytest.mark.parametrize("env_id", list(LOCKSTEP_STEPS))
def test_lockstep_transitions_match_minigrid_long(env_id):
    """25k steps per id (200k in all), other seeds."""
    _check_counts(check_lockstep(record(env_id, 25_000, seed=1000 + SEEDS[env_id])))


def test_lockstep_detects_a_wrong_step():
    """The comparison is not vacuous: a step that lets the agent walk into walls is caught."""
    n = LOCKSTEP_STEPS["MiniGrid-Empty-5x5-v0"]  # the length the 5x5 lock-step compiled for
    rec = record("MiniGrid-Empty-5x5-v0", n, seed=99)
    st = stack_states(rec["before"])
    ours = batched_phases(rec["size"])(st, jnp.asarray(rec["action"], jnp.int32), rec["max_steps"])[0]
    want = np.asarray(stack_states(rec["after"]).agent_pos)
    assert (np.asarray(ours.agent_pos) == want).all()
    pos, d = np.asarray(st.agent_pos), np.asarray(st.agent_dir)
    wrong = np.where((np.asarray(rec["action"]) == 2)[:, None], pos + envs.minigrid.DIR_TO_VEC[d], pos)  # ignores walls
    assert (wrong != want).any(axis=-1).sum() > 10


# ---------------------------------------------------------------------------------------------
# RESET DISTRIBUTION (chi-square homogeneity, Python vs JAX, and a negative control)
# ---------------------------------------------------------------------------------------------


def python_resets(env_id: str, n: int, seed: int) -> list:
    return reset_labels(python_env(env_id), lambda py: snapshot(py)[:2], n, seed)


def _labels(state: EnvState) -> list:
    return [(tuple(p), d) for p, d in zip(np.asarray(state.agent_pos).tolist(), np.asarray(state.agent_dir).tolist())]


def jax_resets(env_id: str, n: int, seed: int) -> list:
    env, params = envs.make(env_id)
    _, s = jax.jit(jax.vmap(env.reset, in_axes=(0, None)))(jax.random.split(jax.random.PRNGKey(seed), n), params)
    return _labels(s)


def _goal_to_corner_reset(key, size: int) -> EnvState:
    """A plausible wrong reset (negative control): x and y uniform over the interior, and a draw
    of the goal cell moved to the corner (1, 1), which then has twice the probability."""
    k_xy, k_dir = jax.random.split(key)
    xy = jax.random.randint(k_xy, (2,), 1, size - 1)
    xy = jnp.where(jnp.all(xy == size - 2), jnp.array([1, 1]), xy)
    return EnvState(agent_pos=xy.astype(jnp.int32), agent_dir=jax.random.randint(k_dir, (), 0, 4), time=jnp.int32(0))


def reset_ps(n: int, seed: int = 0) -> dict:
    """Random-5x5 (8 cells x 4 directions = 32 outcomes) and Random-6x6 (15 x 4 = 60): our resets
    against MiniGrid's, and the wrong reset against MiniGrid's on 5x5."""
    ps = {}
    a5, b5 = python_resets("MiniGrid-Empty-Random-5x5-v0", n, 5 + seed), jax_resets("MiniGrid-Empty-Random-5x5-v0", n, 9 + seed)
    assert len(set(b5)) == len(set(a5)) == 8 * 4
    ps["5x5 cell x dir"] = chi2_p(a5, b5)
    a6, b6 = python_resets("MiniGrid-Empty-Random-6x6-v0", n, 6 + seed), jax_resets("MiniGrid-Empty-Random-6x6-v0", n, 10 + seed)
    ps["6x6 cell x dir"] = chi2_p(a6, b6)
    keys = jax.random.split(jax.random.PRNGKey(11 + seed), n)
    wrong = _labels(jax.jit(jax.vmap(lambda k: _goal_to_corner_reset(k, 5)))(keys))
    ps["negative control (goal -> corner)"] = chi2_p(a5, wrong)
    return ps


def test_random_start_distribution_and_negative_control():
    ps = reset_ps(4_000)
    assert min(ps["5x5 cell x dir"], ps["6x6 cell x dir"]) > P_MIN, ps
    assert ps["negative control (goal -> corner)"] < 1e-6, ps


@pytest.mark.slow
def test_random_start_distribution_large():
    ps = reset_ps(40_000, seed=1)
    assert min(ps["5x5 cell x dir"], ps["6x6 cell x dir"]) > P_MIN, ps
    assert ps["negative control (goal -> corner)"] < 1e-12, ps


def test_fixed_start_is_minigrids():
    for env_id in ("MiniGrid-Empty-5x5-v0", "MiniGrid-Empty-16x16-v0"):
        assert set(jax_resets(env_id, 8, 0)) == {((1, 1), 0)} == set(python_resets(env_id, 8, 0))


# ---------------------------------------------------------------------------------------------
# API
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("env_id", ALL_IDS)
def test_every_id_jits_and_vmaps(env_id):
    env, params = envs.make(env_id)
    b = 4
    keys = jax.random.split(jax.random.PRNGKey(0), b)

    @jax.jit  # one compile per id: a vmapped reset, then a vmapped auto-reset step
    def reset_then_step(keys, action, params):
        _, state = jax.vmap(env.reset, in_axes=(0, None))(keys, params)
        return jax.vmap(env.step, in_axes=(0, 0, 0, None))(keys, state, action, params)

    obs, state, r, term, trunc, info = reset_then_step(keys, jnp.array([0, 1, 2, 6]), params)
    assert obs.shape == (b, 7, 7, 3) and obs.dtype == jnp.uint8
    assert all(x.dtype == jnp.int32 for x in jax.tree.leaves(state))
    assert r.dtype == jnp.float32 and term.dtype == trunc.dtype == jnp.bool_
    assert info["outcome"].dtype == jnp.int32 and info["final_observation"].shape == obs.shape
    assert env.observation_space(params).shape == obs.shape[1:]
    assert (np.asarray(obs) == np.asarray(jax.vmap(env.observe)(state))).all()


def test_step_autoreset_and_final_observation():
    """env.step = step_env, then a tree-wide select with a fresh reset where done (gymnax's key
    split); final_observation is the pre-reset view. Checked against the phases called directly."""
    env, params = envs.make("MiniGrid-Empty-Random-5x5-v0", max_steps=6)
    b = 64
    _, state = jax.vmap(env.reset, in_axes=(0, None))(jax.random.split(jax.random.PRNGKey(0), b), params)
    step = jax.jit(jax.vmap(env.step, in_axes=(0, 0, 0, None)))

    @jax.jit
    @functools.partial(jax.vmap, in_axes=(0, 0, 0, None))
    def phases(key, state, action, max_steps):
        _, k_reset = jax.random.split(key)
        st, r, term, trunc, _ = empty.transition(state, action, max_steps, env.size)
        return st, r, term, trunc, empty.reset_state(k_reset, env.size, True), env.observe(st)

    observe = jax.jit(jax.vmap(env.observe))
    rng = np.random.default_rng(0)
    seen = {"term": 0, "trunc": 0}
    for t in range(10):
        keys = jax.random.split(jax.random.PRNGKey(t + 1), b)
        action = jnp.asarray(rng.choice([0, 1, 2, 2, 2, 5], b), jnp.int32)
        obs, nstate, r, term, trunc, info = step(keys, state, action, params)
        st, r2, term2, trunc2, re, obs_st = phases(keys, state, action, params.max_steps_in_episode)
        done = np.asarray(term | trunc)
        for got, a, b_ in zip(jax.tree.leaves(nstate), jax.tree.leaves(re), jax.tree.leaves(st)):
            want = np.where(done.reshape((-1,) + (1,) * (a.ndim - 1)), np.asarray(a), np.asarray(b_))
            np.testing.assert_array_equal(np.asarray(got), want)
        np.testing.assert_array_equal(np.asarray(r), np.asarray(r2))
        np.testing.assert_array_equal(np.asarray(term), np.asarray(term2))
        np.testing.assert_array_equal(np.asarray(trunc), np.asarray(trunc2))
        np.testing.assert_array_equal(np.asarray(info["final_observation"]), np.asarray(obs_st))
        np.testing.assert_array_equal(np.asarray(obs), np.asarray(observe(nstate)))
        assert (np.asarray(nstate.time)[done] == 0).all()
        seen["term"] += int(np.asarray(term).sum())
        seen["trunc"] += int(np.asarray(trunc).sum())
        state = nstate
    assert seen["term"] > 0 and seen["trunc"] > 0, seen


# ---------------------------------------------------------------------------------------------
# TASK (scenarios are what their captions say, in the real MiniGrid env) AND RENDER
# ---------------------------------------------------------------------------------------------


def _py_at(size: int, pos, d: int):
    py = EmptyEnv(size=size)
    py.reset(seed=0)
    py.agent_pos, py.agent_dir = tuple(pos), d
    return py


@pytest.mark.parametrize("size", [5, 8, 16])
def test_scenarios_match_their_captions(size):
    env, _ = envs.make(f"MiniGrid-Empty-{size}x{size}-v0")
    task = env.task
    scen = {s.name: s for s in task.scenarios(env)}
    assert list(scen) == ["start", "goal_ahead", "wall_ahead", "goal_left", "goal_right", "facing_away"]
    for clean, corrupt in task.pairs.values():
        assert clean in scen and corrupt in scen
    assert scen["start"].state.agent_pos.tolist() == [1, 1] and int(scen["start"].state.agent_dir) == 0

    def cells(name):  # MiniGrid's objects ahead, left, right, behind the scenario's agent
        s = scen[name].state
        py = _py_at(size, np.asarray(s.agent_pos), int(s.agent_dir))
        f, r = np.asarray(py.dir_vec), np.asarray(py.right_vec)
        p = np.asarray(py.agent_pos)
        return {k: type(py.grid.get(*(p + v))).__name__ for k, v in (("ahead", f), ("left", -r), ("right", r), ("behind", -f))}

    assert cells("goal_ahead")["ahead"] == Goal.__name__
    assert cells("wall_ahead")["ahead"] == Wall.__name__ and cells("wall_ahead")["left"] == Goal.__name__
    assert cells("goal_left")["left"] == Goal.__name__ and cells("goal_left")["ahead"] == "NoneType"
    assert cells("goal_right")["right"] == Goal.__name__ and cells("goal_right")["ahead"] == "NoneType"
    assert cells("facing_away")["behind"] == Goal.__name__ and cells("facing_away")["ahead"] == "NoneType"
    # in MiniGrid, forward from goal_ahead reaches the goal; from wall_ahead it stays put
    fwd = task.action_index("forward")
    for name, reaches in (("goal_ahead", True), ("wall_ahead", False)):
        s = scen[name].state
        py = _py_at(size, np.asarray(s.agent_pos), int(s.agent_dir))
        _, r, term, _, _ = py.step(fwd)
        assert term == reaches and (r > 0) == reaches
        assert (tuple(py.agent_pos) == tuple(np.asarray(s.agent_pos).tolist())) == (not reaches)


def test_render_draws_empty_states():
    env, params = envs.make("MiniGrid-Empty-8x8-v0")
    _, s = env.reset(jax.random.PRNGKey(0), params)
    frame = envs.render(s, env, highlight=False)
    assert frame.shape == (256, 256, 3) and frame.dtype == np.uint8
    assert (envs.render(s, 8, highlight=False) == frame).all()  # a size picks the state's family
    assert (frame[6 * 32 + 5, 6 * 32 + 5] == [0, 255, 0]).all()  # goal
    assert (frame[5, 5] == [100, 100, 100]).all() and (frame[7 * 32 + 5, 3 * 32 + 5] == [100, 100, 100]).all()  # walls
    assert (frame[3 * 32 + 16, 3 * 32 + 16] == 0).all()  # floor
    agent = frame[32:64, 32:64].astype(int)
    assert ((agent[..., 0] == 255) & (agent[..., 1] < 100)).any()
    assert not (frame[..., 2] == 255).any()  # no balls in an empty room
