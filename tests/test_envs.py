"""Parity of `envs` with the real `minigrid` package (3.2.0), and the env API.

Plan (docs/envs.md): observation parity on snapshotted Python states; lock-step transitions with
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
from scipy.stats import chi2_contingency

import envs
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
    for size, n in [(5, 10), (8, 6), (8, 5), (16, 9)]:
        py = DynamicObstaclesEnv(size=size, n_obstacles=n)
        env, _ = envs.make("MiniGrid-Dynamic-Obstacles-8x8-v0", n_obstacles=n) if size == 8 else (None, None)
        if env is not None:
            assert env.n_obstacles == py.n_obstacles
    env, params = envs.make("MiniGrid-Dynamic-Obstacles-8x8-v0", max_steps=300, obs_mode="one_hot")
    assert params.max_steps_in_episode == 300 and env.observation_shape() == (7, 7, 20)
    assert envs.make("MiniGrid-Dynamic-Obstacles-16x16-v0", obs_mode="full")[0].observation_shape() == (16, 16, 3)


def test_unknown_id_and_bad_overrides_are_clear_errors():
    with pytest.raises(ValueError, match="valid ids: MiniGrid-Dynamic-Obstacles-5x5-v0"):
        envs.make("MiniGrid-Dynamic-Obstacles-7x7-v0")
    with pytest.raises(ValueError, match="obs_mode"):
        envs.make("MiniGrid-Dynamic-Obstacles-8x8-v0", obs_mode="rgb")
    with pytest.raises(ValueError, match="max_steps"):
        envs.make("MiniGrid-Dynamic-Obstacles-8x8-v0", max_steps=0)
    with pytest.raises(ValueError, match="unknown override"):
        envs.make("MiniGrid-Dynamic-Obstacles-8x8-v0", view_size=5)


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
    py = gym.make(env_id).unwrapped
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
            state, rj, tj, trj = trans_fn(state, jnp.int32(a), jnp.asarray(new), params.max_steps_in_episode)
            ok = (
                (np.asarray(obs_fn(state)) == obs_py["image"]).all()
                and abs(float(rj) - r) <= 1e-6
                and bool(tj) == term
                and bool(trj) == trunc
                and tuple(np.asarray(state.agent_pos)) == tuple(py.agent_pos)
                and int(state.agent_dir) == py.agent_dir
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


@pytest.mark.parametrize(
    "env_id,n_steps",
    [
        ("MiniGrid-Dynamic-Obstacles-5x5-v0", 3000),
        ("MiniGrid-Dynamic-Obstacles-Random-5x5-v0", 3000),
        ("MiniGrid-Dynamic-Obstacles-6x6-v0", 3000),
        ("MiniGrid-Dynamic-Obstacles-Random-6x6-v0", 3000),
        ("MiniGrid-Dynamic-Obstacles-8x8-v0", 5000),
        ("MiniGrid-Dynamic-Obstacles-16x16-v0", 4000),
    ],
)
def test_lockstep_transitions_match_minigrid(env_id, n_steps):
    """21k steps in all across the variants: zero mismatches, all forced moves legal."""
    c = run_lockstep(env_id, n_steps, seed=MG_IDS.index(env_id) + 1)
    assert c["mismatches"] == 0, c
    assert c["illegal"] == 0, c
    assert c["hits"] > 0 and c["episodes"] > 5, c
    if "16x16" not in env_id:  # 16x16 episodes are long (1024 steps); goals and truncations are rare
        assert c["goals"] > 0, c
    assert c["truncations"] > 0 or "16x16" in env_id, c


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


def _chi2_p(a_labels, b_labels) -> float:
    keys = sorted(set(a_labels) | set(b_labels))
    idx = {k: i for i, k in enumerate(keys)}
    table = np.zeros((2, len(keys)))
    for row, labels in enumerate((a_labels, b_labels)):
        for lab in labels:
            table[row, idx[lab]] += 1
    return chi2_contingency(table)[1]


def test_reset_placement_distribution_5x5():
    n = 12000
    py = gym.make("MiniGrid-Dynamic-Obstacles-5x5-v0").unwrapped
    py.reset(seed=123)
    a = []
    for _ in range(n):
        py.reset()
        a.append(tuple(tuple(o.cur_pos) for o in py.obstacles))
    env, params = envs.make("MiniGrid-Dynamic-Obstacles-5x5-v0")
    _, states = jax.vmap(env.reset, in_axes=(0, None))(jax.random.split(jax.random.PRNGKey(7), n), params)
    b = [tuple(map(tuple, o)) for o in np.asarray(states.obstacles).tolist()]
    assert len(set(a)) == len(set(b)) == 42
    assert _chi2_p(a, b) > P_MIN


def test_random_start_distribution():
    n = 12000
    py = gym.make("MiniGrid-Dynamic-Obstacles-Random-6x6-v0").unwrapped
    py.reset(seed=5)
    a = []
    for _ in range(n):
        py.reset()
        a.append((tuple(py.agent_pos), py.agent_dir, tuple(py.obstacles[0].cur_pos)))
    env, params = envs.make("MiniGrid-Dynamic-Obstacles-Random-6x6-v0")
    _, s = jax.vmap(env.reset, in_axes=(0, None))(jax.random.split(jax.random.PRNGKey(9), n), params)
    b = [(tuple(p), d, tuple(o[0])) for p, d, o in zip(np.asarray(s.agent_pos).tolist(), np.asarray(s.agent_dir).tolist(), np.asarray(s.obstacles).tolist())]
    assert _chi2_p([x[:2] for x in a], [x[:2] for x in b]) > P_MIN  # agent cell x direction
    assert _chi2_p([x[2] for x in a], [x[2] for x in b]) > P_MIN  # first ball given the agent


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


def test_obstacle_move_distribution_and_negative_control():
    n = 8000
    py = _crowded_state()
    a = []
    for i in range(n):
        e = copy.deepcopy(py)
        e.np_random = np.random.default_rng(i)
        e.step(0)  # a turn: only the obstacle moves matter
        a.append(tuple(tuple(o.cur_pos) for o in e.obstacles))
    state = snapshot(py)
    keys = jax.random.split(jax.random.PRNGKey(11), n)
    moved = jax.jit(jax.vmap(lambda k: envs.move_obstacles(k, state.obstacles, state.agent_pos, 8)))(keys)
    b = [tuple(map(tuple, o)) for o in np.asarray(moved).tolist()]
    assert _chi2_p(a, b) > P_MIN  # joint outcome
    for i in range(4):
        assert _chi2_p([x[i] for x in a], [x[i] for x in b]) > P_MIN  # each ball's marginal
    wrong = jax.jit(jax.vmap(lambda k: _four_neighbour_moves(k, state.obstacles, state.agent_pos, 8)))(keys)
    c = [tuple(map(tuple, o)) for o in np.asarray(wrong).tolist()]
    assert _chi2_p(a, c) < 1e-6


# ---------------------------------------------------------------------------------------------
# API
# ---------------------------------------------------------------------------------------------


def test_jit_vmap_autoreset_and_final_observation():
    env, params = envs.make("MiniGrid-Dynamic-Obstacles-5x5-v0", max_steps=5)
    b = 16
    obs, state = jax.vmap(env.reset, in_axes=(0, None))(jax.random.split(jax.random.PRNGKey(0), b), params)
    assert obs.shape == (b, 7, 7, 3) and obs.dtype == jnp.uint8
    step = jax.jit(jax.vmap(env.step, in_axes=(0, 0, 0, None)))
    seen_done = False
    for t in range(5):
        keys = jax.random.split(jax.random.PRNGKey(t + 1), b)
        obs, nstate, r, term, trunc, info = step(keys, state, jnp.zeros(b, jnp.int32), params)  # turning only
        done = np.asarray(term | trunc)
        if done.any():
            seen_done = True
            assert (np.asarray(nstate.time)[done] == 0).all()  # auto-reset
            fin = np.asarray(info["final_observation"])
            assert (fin[done] == np.asarray(jax.vmap(env.observe)(info["final_state"]))[done]).all()
        state = nstate
    assert seen_done and np.asarray(trunc).all()


def test_invalid_action_acts_as_left():
    env, params = envs.make("MiniGrid-Dynamic-Obstacles-8x8-v0")
    _, s = env.reset(jax.random.PRNGKey(0), params)
    k = jax.random.PRNGKey(1)
    for a in (3, 4, 6):
        _, s1, r1, *_ = env.step(k, s, a, params)
        _, s0, r0, *_ = env.step(k, s, 0, params)
        assert int(s1.agent_dir) == int(s0.agent_dir) == 3 and float(r1) == float(r0) == 0.0


def test_render_and_gif(tmp_path):
    env, params = envs.make("MiniGrid-Dynamic-Obstacles-8x8-v0")
    _, s = env.reset(jax.random.PRNGKey(0), params)
    frame = envs.render(s, env)
    assert frame.shape == (256, 256, 3) and frame.dtype == np.uint8
    # agent (red) drawn in its cell, goal (green) in its cell
    agent = frame[32:64, 32:64].astype(int)
    assert ((agent[..., 0] == 255) & (agent[..., 1] < 100)).any()
    assert (frame[6 * 32 + 5, 6 * 32 + 5] == [0, 255, 0]).all()
    envs.save_gif([frame, frame], str(tmp_path / "ep.gif"))
    assert (tmp_path / "ep.gif").stat().st_size > 0
