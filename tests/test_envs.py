"""Parity of `envs` with the real `minigrid` package (3.2.0), and the env API.

Plan (see docs/envs.md): observation parity on snapshotted Python states; lock-step transitions with
Python's obstacle moves forced into `envs.transition` (zero mismatches, every forced move legal
under our rule); chi-square homogeneity of reset placements, random starts and the one-step move
distribution, with a wrong 4-neighbour rule as a negative control; one-hot and full views
against MiniGrid's wrappers.
"""

from __future__ import annotations

import copy
import functools

import gymnasium as gym
import jax
import jax.numpy as jnp
import minigrid  # noqa: F401  (registers the MiniGrid ids)
import numpy as np
import pytest
from minigrid.envs.dynamicobstacles import DynamicObstaclesEnv
from minigrid.wrappers import FullyObsWrapper, OneHotPartialObsWrapper

import envs
from fixtures import chi2_p, reset_labels
from envs.dynamic_obstacles import EnvState

MG_IDS = [
    "MiniGrid-Dynamic-Obstacles-5x5-v0",
    "MiniGrid-Dynamic-Obstacles-Random-5x5-v0",
    "MiniGrid-Dynamic-Obstacles-6x6-v0",
    "MiniGrid-Dynamic-Obstacles-Random-6x6-v0",
    "MiniGrid-Dynamic-Obstacles-8x8-v0",
    "MiniGrid-Dynamic-Obstacles-16x16-v0",
]
P_MIN = 1e-3
# Random-start 8x8 and 16x16 are dtjax ids; MiniGrid has them only as constructor arguments.
EXTRA_IDS = {
    "MiniGrid-Dynamic-Obstacles-Random-8x8-v0": dict(size=8, agent_start_pos=None, n_obstacles=4),
    "MiniGrid-Dynamic-Obstacles-Random-16x16-v0": dict(size=16, agent_start_pos=None, n_obstacles=8),
}


def python_env(env_id: str):
    """The real MiniGrid env for an id, unwrapped (no checker overhead)."""
    if env_id in EXTRA_IDS:
        return DynamicObstaclesEnv(**EXTRA_IDS[env_id])
    return gym.make(env_id).unwrapped


def snapshot(u) -> EnvState:
    return EnvState(
        agent_pos=jnp.array(u.agent_pos, jnp.int32),
        agent_dir=jnp.int32(u.agent_dir),
        obstacles=jnp.array([o.cur_pos for o in u.obstacles], jnp.int32),
        time=jnp.int32(u.step_count),
    )


@functools.lru_cache(maxsize=None)
def jitted(env_id: str, obs_mode: str = "image"):
    env, params = envs.make(env_id, obs_mode=obs_mode)
    obs_fn = jax.jit(lambda s: envs.observe(s, env.size, obs_mode))
    trans_fn = jax.jit(lambda s, a, o, m: envs.transition(s, a, o, m, env.size))
    return env, params, obs_fn, trans_fn


# ---------------------------------------------------------------------------------------------
# STATIC FACTS
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("env_id", MG_IDS)
def test_registration_matches_minigrid(env_id):
    py = gym.make(env_id).unwrapped
    env, params = envs.make(env_id)
    assert env.size == py.width == py.height
    assert env.n_obstacles == py.n_obstacles
    assert env.random_start == (py.agent_start_pos is None)
    assert params.max_steps_in_episode == py.max_steps
    assert env.num_actions == py.action_space.n == 3


def test_obstacle_clamp_and_overrides():
    for size in (5, 6, 7, 8, 16):
        for n in range(1, 13):
            assert envs.DynamicObstacles(size, n).n_obstacles == DynamicObstaclesEnv(size=size, n_obstacles=n).n_obstacles
    assert envs.make("MiniGrid-Dynamic-Obstacles-8x8-v0", n_obstacles=9)[0].n_obstacles == 4
    assert envs.make("MiniGrid-Dynamic-Obstacles-8x8-v0", n_obstacles=5)[0].n_obstacles == 5
    env, params = envs.make("MiniGrid-Dynamic-Obstacles-8x8-v0", max_steps=300, obs_mode="one_hot")
    assert params.max_steps_in_episode == 300 and env.observation_shape() == (7, 7, 20)
    assert envs.make("MiniGrid-Dynamic-Obstacles-16x16-v0", obs_mode="full")[0].observation_shape() == (16, 16, 3)
    for env_id, kw in EXTRA_IDS.items():
        env, params = envs.make(env_id)
        py = DynamicObstaclesEnv(**kw)
        assert (env.size, env.n_obstacles, env.random_start, params.max_steps_in_episode) == (py.width, py.n_obstacles, True, py.max_steps)


def test_unknown_id_and_bad_overrides_are_clear_errors():
    with pytest.raises(ValueError, match="valid ids: MiniGrid-Dynamic-Obstacles-5x5-v0"):
        envs.make("MiniGrid-Dynamic-Obstacles-7x7-v0")
    with pytest.raises(ValueError, match="obs_mode"):
        envs.make("MiniGrid-Dynamic-Obstacles-8x8-v0", obs_mode="rgb")
    with pytest.raises(ValueError, match="max_steps"):
        envs.make("MiniGrid-Dynamic-Obstacles-8x8-v0", max_steps=0)
    with pytest.raises(ValueError, match="unknown override"):
        envs.make("MiniGrid-Dynamic-Obstacles-8x8-v0", view_size=5)
    with pytest.raises(ValueError, match="n_obstacles"):
        envs.make("MiniGrid-Dynamic-Obstacles-8x8-v0", n_obstacles="4")
    with pytest.raises(ValueError, match="max_steps"):
        envs.make("MiniGrid-Dynamic-Obstacles-8x8-v0", max_steps=2.5)


# ---------------------------------------------------------------------------------------------
# LOCK-STEP PARITY (observations, transitions, forced obstacle moves)
# ---------------------------------------------------------------------------------------------


def _legal_moves(old: np.ndarray, new: np.ndarray, agent_pos: np.ndarray, size: int) -> bool:
    """Each ball moved by one king move (or stayed) to a cell free at its turn, not the agent's."""
    cur = old.copy()
    for i in range(len(cur)):
        if (new[i] == cur[i]).all():
            continue
        d = np.abs(new[i] - cur[i])
        if d.max() != 1:
            return False
        x, y = new[i]
        if x <= 0 or y <= 0 or x >= size - 1 or y >= size - 1 or (x == size - 2 and y == size - 2):
            return False
        if (new[i] == agent_pos).all() or any((new[i] == cur[j]).all() for j in range(len(cur)) if j != i):
            return False
        cur[i] = new[i]
    return True


def _policy(kind: str, rng: np.random.Generator, obs: np.ndarray) -> int:
    if kind == "random":
        return int(rng.integers(0, 3))
    if kind == "turn":
        return int(rng.integers(0, 2))
    if kind == "invalid":
        return int(rng.integers(0, 7))
    # cautious: go forward when the front cell is empty or the goal, otherwise turn
    front = obs[3, 5, 0]
    if front in (1, 8) and rng.random() < 0.85:
        return 2
    return int(rng.integers(0, 2))


def run_lockstep(env_id: str, n_steps: int, seed: int) -> dict:
    env, params, obs_fn, trans_fn = jitted(env_id)
    py = python_env(env_id)
    rng = np.random.default_rng(seed)
    counts = dict(steps=0, mismatches=0, illegal=0, goals=0, hits=0, truncations=0, episodes=0)
    kinds = ["random", "turn", "cautious", "invalid"]
    ep = 0
    while counts["steps"] < n_steps:
        kind = kinds[ep % len(kinds)]
        obs_py, _ = py.reset(seed=seed * 100_000 + ep)
        state = snapshot(py)
        assert (np.asarray(obs_fn(state)) == obs_py["image"]).all()
        ep += 1
        while True:
            a = _policy(kind, rng, obs_py["image"])
            old = np.array([o.cur_pos for o in py.obstacles])
            agent_before = np.array(py.agent_pos)
            obs_py, r, term, trunc, _ = py.step(a)
            new = np.array([o.cur_pos for o in py.obstacles], np.int32)
            if not _legal_moves(old, new, agent_before, env.size):
                counts["illegal"] += 1
            state, rj, tj, trj, _ = trans_fn(state, jnp.int32(a), jnp.asarray(new), params.max_steps_in_episode)
            ok = (
                (np.asarray(obs_fn(state)) == obs_py["image"]).all()
                and abs(float(rj) - r) <= 1e-6
                and bool(tj) == term
                and bool(trj) == trunc
                and tuple(np.asarray(state.agent_pos)) == tuple(py.agent_pos)
                and int(state.agent_dir) == py.agent_dir == obs_py["direction"]
                and int(state.time) == py.step_count
            )
            counts["mismatches"] += not ok
            counts["steps"] += 1
            counts["goals"] += r > 0
            counts["hits"] += r == -1
            counts["truncations"] += trunc
            if term or trunc:
                counts["episodes"] += 1
                break
    return counts


LOCKSTEP_STEPS = {
    "MiniGrid-Dynamic-Obstacles-5x5-v0": 3000,
    "MiniGrid-Dynamic-Obstacles-Random-5x5-v0": 3000,
    "MiniGrid-Dynamic-Obstacles-6x6-v0": 3000,
    "MiniGrid-Dynamic-Obstacles-Random-6x6-v0": 3000,
    "MiniGrid-Dynamic-Obstacles-8x8-v0": 5000,
    "MiniGrid-Dynamic-Obstacles-Random-8x8-v0": 1500,
    "MiniGrid-Dynamic-Obstacles-16x16-v0": 4000,
    "MiniGrid-Dynamic-Obstacles-Random-16x16-v0": 1500,
}
SEEDS = {env_id: i + 1 for i, env_id in enumerate(LOCKSTEP_STEPS)}


def _check_lockstep(env_id: str, c: dict) -> None:
    assert c["mismatches"] == 0, c
    assert c["illegal"] == 0, c
    assert c["hits"] > 0 and c["episodes"] > 5, c
    if "16x16" not in env_id:  # 16x16 episodes are long (1024 steps); goals and truncations are rare
        assert c["goals"] > 0, c
        assert c["truncations"] > 0, c


@pytest.mark.parametrize("env_id,n_steps", list(LOCKSTEP_STEPS.items()))
def test_lockstep_transitions_match_minigrid(env_id, n_steps):
    """24k steps in all across the eight variants: zero mismatches, all forced moves legal."""
    _check_lockstep(env_id, run_lockstep(env_id, n_steps, seed=SEEDS[env_id]))


@pytest.mark.slow
@pytest.mark.parametrize("env_id", list(LOCKSTEP_STEPS))
def test_lockstep_transitions_match_minigrid_long(env_id):
    """The nightly version: 25k steps per variant (200k in all), other seeds."""
    c = run_lockstep(env_id, 25_000, seed=1000 + SEEDS[env_id])
    _check_lockstep(env_id, c)
    assert c["goals"] > 0 and c["truncations"] > 0, c


def test_wrappers_one_hot_and_full_views():
    for env_id in ("MiniGrid-Dynamic-Obstacles-8x8-v0", "MiniGrid-Dynamic-Obstacles-Random-6x6-v0"):
        _, _, oh_fn, _ = jitted(env_id, "one_hot")
        _, _, full_fn, _ = jitted(env_id, "full")
        w_oh = OneHotPartialObsWrapper(gym.make(env_id))
        w_full = FullyObsWrapper(gym.make(env_id))
        rng = np.random.default_rng(0)
        for wrapped, fn in ((w_oh, oh_fn), (w_full, full_fn)):
            obs, _ = wrapped.reset(seed=3)
            for _ in range(300):
                assert (np.asarray(fn(snapshot(wrapped.unwrapped))) == obs["image"]).all()
                obs, _, term, trunc, _ = wrapped.step(int(rng.integers(0, 3)))
                if term or trunc:
                    obs, _ = wrapped.reset()


# ---------------------------------------------------------------------------------------------
# DISTRIBUTIONS (chi-square homogeneity, Python vs JAX)
# ---------------------------------------------------------------------------------------------


def _python_resets(env_id: str, n: int, seed: int) -> list:
    return reset_labels(python_env(env_id), lambda py: (tuple(int(v) for v in py.agent_pos), int(py.agent_dir),
                                                        tuple(tuple(int(v) for v in o.cur_pos) for o in py.obstacles)), n, seed)


def _jax_resets(env_id: str, n: int, seed: int) -> list:
    env, params = envs.make(env_id)
    _, s = jax.jit(jax.vmap(env.reset, in_axes=(0, None)))(jax.random.split(jax.random.PRNGKey(seed), n), params)
    return [
        (tuple(p), d, tuple(map(tuple, o)))
        for p, d, o in zip(np.asarray(s.agent_pos).tolist(), np.asarray(s.agent_dir).tolist(), np.asarray(s.obstacles).tolist())
    ]


def reset_placement_p(n: int, seed: int = 0) -> float:
    """5x5 fixed start: the ordered pair of balls over the 7 free cells, 42 outcomes."""
    env_id = "MiniGrid-Dynamic-Obstacles-5x5-v0"
    a = [x[2] for x in _python_resets(env_id, n, 123 + seed)]
    b = [x[2] for x in _jax_resets(env_id, n, 7 + seed)]
    assert len(set(a)) == len(set(b)) == 42
    return chi2_p(a, b)


def random_start_ps(n: int, seed: int = 0) -> dict:
    """Random 5x5 (agent cell, first ball: 8 x 7 outcomes; direction) and Random 6x6 (agent cell x
    direction: 15 x 4; second ball: 14)."""
    ps = {}
    a, b = _python_resets("MiniGrid-Dynamic-Obstacles-Random-5x5-v0", n, 5 + seed), _jax_resets("MiniGrid-Dynamic-Obstacles-Random-5x5-v0", n, 9 + seed)
    assert len({(x[0], x[2][0]) for x in b}) == 8 * 7
    ps["5x5 agent x ball0"] = chi2_p([(x[0], x[2][0]) for x in a], [(x[0], x[2][0]) for x in b])
    ps["5x5 dir"] = chi2_p([x[1] for x in a], [x[1] for x in b])
    a, b = _python_resets("MiniGrid-Dynamic-Obstacles-Random-6x6-v0", n, 6 + seed), _jax_resets("MiniGrid-Dynamic-Obstacles-Random-6x6-v0", n, 10 + seed)
    ps["6x6 agent x dir"] = chi2_p([x[:2] for x in a], [x[:2] for x in b])
    ps["6x6 ball1"] = chi2_p([x[2][1] for x in a], [x[2][1] for x in b])
    return ps


def test_reset_placement_distribution_5x5():
    assert reset_placement_p(12_000) > P_MIN


def test_random_start_distribution():
    ps = random_start_ps(6_000)
    assert min(ps.values()) > P_MIN, ps


@pytest.mark.slow
def test_reset_distributions_large():
    assert reset_placement_p(60_000, seed=1) > P_MIN
    ps = random_start_ps(40_000, seed=1)
    assert min(ps.values()) > P_MIN, ps


def _crowded_state():
    py = gym.make("MiniGrid-Dynamic-Obstacles-8x8-v0").unwrapped
    py.reset(seed=0)
    # Put the four balls close together around the agent so moves interact.
    from minigrid.core.world_object import Ball

    for o in py.obstacles:
        py.grid.set(*o.cur_pos, None)
    py.agent_pos = (3, 3)
    py.agent_dir = 0
    cells = [(2, 2), (3, 2), (4, 3), (3, 4)]
    py.obstacles = []
    for c in cells:
        b = Ball()
        py.grid.set(*c, b)
        b.cur_pos = c
        py.obstacles.append(b)
    return py


def _four_neighbour_moves(key, obstacles, agent_pos, size):
    """A deliberately wrong rule (NAVIX-style 4-neighbour moves) for the negative control."""
    neigh = jnp.array([[0, -1], [-1, 0], [1, 0], [0, 1]])
    u = jax.random.uniform(key, (obstacles.shape[0], 4))
    for i in range(obstacles.shape[0]):
        cand = obstacles[i] + neigh
        free = (envs.cell_type(cand, obstacles, size) == 0) & ~jnp.all(cand == agent_pos, -1)
        j = jnp.argmax(jnp.where(free, u[i], -1.0))
        obstacles = obstacles.at[i].set(jnp.where(free.any(), cand[j], obstacles[i]))
    return obstacles


def move_distribution_ps(n: int, seed: int = 0) -> dict:
    """One step of the four balls of `_crowded_state`, Python (deepcopy + fresh rng) vs JAX."""
    py = _crowded_state()
    a = []
    for i in range(n):
        e = copy.deepcopy(py)
        e.np_random = np.random.default_rng(seed * 1_000_000 + i)
        e.step(0)  # a turn: only the obstacle moves matter
        a.append(tuple(tuple(int(v) for v in o.cur_pos) for o in e.obstacles))
    state = snapshot(py)
    keys = jax.random.split(jax.random.PRNGKey(11 + seed), n)
    moved = jax.jit(jax.vmap(lambda k: envs.move_obstacles(k, state.obstacles, state.agent_pos, 8)))(keys)
    b = [tuple(map(tuple, o)) for o in np.asarray(moved).tolist()]
    ps = {"joint": chi2_p(a, b)}
    for i in range(4):
        ps[f"ball{i}"] = chi2_p([x[i] for x in a], [x[i] for x in b])
    wrong = jax.jit(jax.vmap(lambda k: _four_neighbour_moves(k, state.obstacles, state.agent_pos, 8)))(keys)
    ps["negative control (4-neighbour)"] = chi2_p(a, [tuple(map(tuple, o)) for o in np.asarray(wrong).tolist()])
    ps["outcomes"] = len(set(a) | set(b))
    return ps


def test_obstacle_move_distribution_and_negative_control():
    ps = move_distribution_ps(8_000)
    assert min(ps["joint"], *(ps[f"ball{i}"] for i in range(4))) > P_MIN, ps
    assert ps["negative control (4-neighbour)"] < 1e-6, ps


@pytest.mark.slow
def test_obstacle_move_distribution_large():
    ps = move_distribution_ps(60_000, seed=1)
    assert min(ps["joint"], *(ps[f"ball{i}"] for i in range(4))) > P_MIN, ps
    assert ps["negative control (4-neighbour)"] < 1e-12, ps


def test_stay_rule_survives_jit():
    """A ball with k free neighbours stays with probability ((9-k)/9)**101 (MiniGrid's 101 failed
    tries). Regression: written as a power under jit, XLA rewrote it to inf/inf = NaN, which
    silently disabled the rule. Jitted and eager moves must agree, and a draw below P_STAY[1]
    must keep a ball with one free neighbour in place."""
    from envs.dynamic_obstacles import P_STAY

    np.testing.assert_allclose(P_STAY, [((9 - k) / 9) ** 101 for k in range(9)], rtol=1e-6, atol=1e-38)
    # ball 0 at (1, 1): walls around, ball 1 at (2, 1), the agent at (1, 2): only (2, 2) is free
    obstacles, agent = jnp.array([[1, 1], [2, 1]], jnp.int32), jnp.array([1, 2], jnp.int32)
    keys = jax.random.split(jax.random.PRNGKey(0), 2_000_000)
    u0 = np.asarray(jax.jit(jax.vmap(lambda k: jax.random.uniform(k, (2,))[0]))(keys))  # move_obstacles' draw
    stay_key, move_key = keys[np.argmax(u0 < P_STAY[1])], keys[np.argmax(u0 > 0.5)]
    assert u0.min() < P_STAY[1]
    move = jax.jit(lambda k: envs.move_obstacles(k, obstacles, agent, 8))
    assert np.asarray(move(stay_key))[0].tolist() == [1, 1]
    assert np.asarray(move(move_key))[0].tolist() == [2, 2]
    state = snapshot(_crowded_state())
    for k in jax.random.split(jax.random.PRNGKey(1), 20):
        eager = envs.move_obstacles(k, state.obstacles, state.agent_pos, 8)
        assert (np.asarray(eager) == np.asarray(jax.jit(envs.move_obstacles, static_argnums=3)(k, state.obstacles, state.agent_pos, 8))).all()


# ---------------------------------------------------------------------------------------------
# API
# ---------------------------------------------------------------------------------------------


ALL_IDS = [i for i in envs.registered_envs if envs.task_of(i).family == "dynamic_obstacles"]  # Empty: test_envs_empty.py


@pytest.mark.parametrize("env_id", ALL_IDS)
def test_every_id_jits_and_vmaps(env_id):
    env, params = envs.make(env_id)
    b = 4
    keys = jax.random.split(jax.random.PRNGKey(0), b)
    obs, state = jax.jit(jax.vmap(env.reset, in_axes=(0, None)))(keys, params)
    step = jax.jit(jax.vmap(env.step, in_axes=(0, 0, 0, None)))
    obs, state, r, term, trunc, info = step(keys, state, jnp.array([0, 1, 2, 2]), params)
    assert obs.shape == (b, 7, 7, 3) and obs.dtype == jnp.uint8
    assert all(x.dtype == jnp.int32 for x in jax.tree.leaves(state))
    assert state.obstacles.shape == (b, env.n_obstacles, 2)
    assert r.dtype == jnp.float32 and term.dtype == trunc.dtype == jnp.bool_
    assert env.observation_space(params).shape == obs.shape[1:] and env.action_space(params).n == env.num_actions == 3
    assert (np.asarray(obs) == np.asarray(jax.vmap(env.observe)(state))).all()


def test_step_autoreset_and_final_observation():
    """env.step = move, transition, then a tree-wide select with a fresh reset where done;
    final_observation is the pre-reset observation; env.step_env is the step without the reset.
    Checked against the phases called directly."""
    env, params = envs.make("MiniGrid-Dynamic-Obstacles-5x5-v0", max_steps=5)
    b = 64
    _, state = jax.vmap(env.reset, in_axes=(0, None))(jax.random.split(jax.random.PRNGKey(0), b), params)
    step = jax.jit(jax.vmap(env.step, in_axes=(0, 0, 0, None)))

    @jax.jit
    @jax.vmap
    def phases(key, state, action):
        k_move, k_reset = jax.random.split(key)
        moved = envs.move_obstacles(k_move, state.obstacles, state.agent_pos, env.size)
        st, r, term, trunc, _ = envs.transition(state, action, moved, 5, env.size)
        return st, r, term, trunc, envs.reset_state(k_reset, env.size, env.n_obstacles, env.random_start), env.observe(st), \
            env.step_env(k_move, state, action, params)

    rng = np.random.default_rng(0)
    seen = dict(term=0, trunc=0)
    for t in range(12):
        keys = jax.random.split(jax.random.PRNGKey(t + 1), b)
        action = jnp.asarray(rng.integers(0, 3, b), jnp.int32)
        obs, nstate, r, term, trunc, info = step(keys, state, action, params)
        st, r2, term2, trunc2, re, obs_st, (obs_se, st_se, r_se, term_se, info_se) = phases(keys, state, action)
        # step_env (no reset) is the phases too: the pre-reset half of env.step
        for got, want in zip(jax.tree.leaves((obs_se, st_se, r_se, term_se, info_se["truncated"])),
                             jax.tree.leaves((obs_st, st, r2, term2, trunc2))):
            assert (np.asarray(got) == np.asarray(want)).all()
        done = np.asarray(term | trunc)
        for got, a, b_ in zip(jax.tree.leaves(nstate), jax.tree.leaves(re), jax.tree.leaves(st)):
            want = np.where(done.reshape((-1,) + (1,) * (a.ndim - 1)), np.asarray(a), np.asarray(b_))
            assert (np.asarray(got) == want).all()
        assert (np.asarray(r) == np.asarray(r2)).all() and (np.asarray(term) == np.asarray(term2)).all()
        assert (np.asarray(trunc) == np.asarray(trunc2)).all()
        assert (np.asarray(info["final_observation"]) == np.asarray(obs_st)).all()
        assert (np.asarray(obs) == np.asarray(jax.vmap(env.observe)(nstate))).all()
        assert (np.asarray(nstate.time)[done] == 0).all()
        seen["term"] += int(np.asarray(term).sum())
        seen["trunc"] += int(np.asarray(trunc).sum())
        state = nstate
    assert seen["term"] > 0 and seen["trunc"] > 0, seen


def test_invalid_action_acts_as_left():
    env, params = envs.make("MiniGrid-Dynamic-Obstacles-8x8-v0")
    _, s = env.reset(jax.random.PRNGKey(0), params)
    k = jax.random.PRNGKey(1)
    _, s0, r0, *_ = env.step(k, s, 0, params)
    for a in (3, 4, 5, 6, 100):
        _, s1, r1, *_ = env.step(k, s, a, params)
        assert int(s1.agent_dir) == int(s0.agent_dir) == 3 and float(r1) == float(r0) == 0.0


def test_render_and_gif(tmp_path):
    from PIL import Image

    env, params = envs.make("MiniGrid-Dynamic-Obstacles-8x8-v0")
    _, s = env.reset(jax.random.PRNGKey(0), params)
    frame = envs.render(s, env)
    assert frame.shape == (256, 256, 3) and frame.dtype == np.uint8
    assert (envs.render(s, 8) == frame).all()
    # agent (red) drawn in its cell, goal (green) in its cell, a ball (blue) at each ball's centre
    agent = frame[32:64, 32:64].astype(int)
    assert ((agent[..., 0] == 255) & (agent[..., 1] < 100)).any()
    assert (frame[6 * 32 + 5, 6 * 32 + 5] == [0, 255, 0]).all()
    for x, y in np.asarray(s.obstacles).tolist():
        px = frame[y * 32 + 16, x * 32 + 16].astype(int)  # blue, lightened if inside the view
        assert px[2] == 255 and px[0] == px[1] < 128
    envs.save_gif([frame, 255 - frame], str(tmp_path / "frames.gif"))  # (Pillow merges equal frames)
    assert Image.open(tmp_path / "frames.gif").n_frames == 2

    def body(state, key):
        _, state, *_ = env.step(key, state, 2, params)
        return state, state

    _, traj = jax.lax.scan(body, s, jax.random.split(jax.random.PRNGKey(1), 3))
    envs.save_gif(traj, str(tmp_path / "states.gif"), env=env)
    assert Image.open(tmp_path / "states.gif").n_frames == 3
    with pytest.raises(ValueError, match="env="):
        envs.save_gif(traj, str(tmp_path / "x.gif"))
