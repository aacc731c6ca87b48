"""Parity of `envs.memory` with the real `minigrid` package (3.2.0) `MemoryEnv` and with the
original MemoryDT project's fork of it (`tests/memory_fork.py`, written from the reference), and its API.

Plan (as tests/test_envs.py for Dynamic Obstacles; see docs/envs.md): roll the real envs with
mixed policies over all 7 actions (random, seeking an end cell, fetching and carrying the
instruction object in the fork), with a short time limit on some episodes so truncation happens,
snapshot the state before every step, then step our pure `transition` on all the snapshots of
every id at once (one vmapped call: the grid size and the fork flag are traced) and compare next
state, reward, terminated, truncated, outcome and the image and one-hot views with MiniGrid's
(and the full view, one compile per size); MiniGrid's occlusion (`process_vis`) on random
walls; reset distributions by chi-square homogeneity with a plausible wrong reset as a negative
control that must fail; every id jits and vmaps; the Task's scenarios replay in the real env.
"""

from __future__ import annotations

import functools

import gymnasium as gym
import jax
import jax.numpy as jnp
import minigrid  # noqa: F401  (registers the MiniGrid ids)
import numpy as np
import pytest
from minigrid.core.grid import Grid
from minigrid.core.world_object import Wall
from minigrid.envs.memory import MemoryEnv
from minigrid.wrappers import FullyObsWrapper, OneHotPartialObsWrapper

import envs
from envs import memory
from envs import minigrid as mg
from envs.memory import EnvState
from fixtures import chi2_p, reset_labels
from memory_fork import ForkMemoryEnv

IDS = list(memory.IDS)
FORK_IDS = ("MiniGrid-MemoryS7FixedStart-v0", "MiniGrid-MemoryS7RandomDirection-v0")
P_MIN = 1e-3
REWARD_RTOL = 1e-6  # float32 reward 1 - 0.9 t/T (values in [0.1, 1]) against Python's float64
SHORT_T = 30  # the time limit of every other recorded episode (so truncation is exercised)


def python_env(env_id: str):
    """The real env of an id, unwrapped: minigrid's ``MemoryEnv``, or the fork for the original's ids."""
    if env_id in FORK_IDS:
        return ForkMemoryEnv(random_direction=env_id == FORK_IDS[1])
    return gym.make(env_id).unwrapped


def snapshot(py, obj) -> tuple:
    """The real env's state as our fields: (agent_pos, agent_dir, time, instruction, top, obj_pos,
    carrying, hallway_end). ``obj`` is the episode's start-room object (found on the grid by identity)."""
    size, h = py.width, py.width // 2
    e = py.success_pos[0] - 1
    top = py.grid.get(e + 1, h - 2)
    carrying = py.carrying is not None
    assert not carrying or py.carrying is obj
    obj_pos = memory.CARRIED_POS
    if not carrying:
        k = next(i for i, c in enumerate(py.grid.grid) if c is obj)
        obj_pos = (k % size, k // size)
    kind = {"key": 0, "ball": 1}
    return ((int(py.agent_pos[0]), int(py.agent_pos[1])), int(py.agent_dir), int(py.step_count), kind[obj.type],
            kind[top.type], obj_pos, carrying, e)


def stack_states(snaps: list) -> EnvState:
    cols = list(zip(*snaps))
    return EnvState(
        agent_pos=jnp.asarray(cols[0], jnp.int32), agent_dir=jnp.asarray(cols[1], jnp.int32),
        time=jnp.asarray(cols[2], jnp.int32), instruction=jnp.asarray(cols[3], jnp.int32), top=jnp.asarray(cols[4], jnp.int32),
        obj_pos=jnp.asarray(cols[5], jnp.int32), carrying=jnp.asarray(cols[6], bool), hallway_end=jnp.asarray(cols[7], jnp.int32),
    )


@functools.cache
def batched_step(size: int):
    """One compile per grid size (the fork flag is traced): the step, and the views (image,
    one-hot, full) before and after it."""

    def one(state, action, max_steps, fork):
        st, r, term, trunc, info = memory.transition(state, action, max_steps, size, fork)
        views = [memory.observe(s, size, m) for s in (state, st) for m in memory.OBS_MODES]
        return st, r, term, trunc, info["outcome"], views

    return jax.jit(jax.vmap(one))


# ---------------------------------------------------------------------------------------------
# STATIC FACTS
# ---------------------------------------------------------------------------------------------


def test_registration_matches_minigrid():
    for env_id in IDS:
        py = python_env(env_id)
        env, params = envs.make(env_id)
        assert isinstance(env, memory.Memory) and env.name == env_id and env.task is envs.task_of(env_id) is memory.TASK
        assert env.size == py.width == py.height == envs.grid_size(env_id)
        assert params.max_steps_in_episode == py.max_steps == (1000 if env_id in FORK_IDS else 5 * env.size**2)
        assert env.random_length == py.random_length and env.fork == (env_id in FORK_IDS)
        assert py.action_space.n == env.num_actions == env.action_space(params).n == 7
        assert not py.see_through_walls
    with pytest.raises(ValueError, match="size must be odd"):
        memory.Memory(size=8)
    with pytest.raises(ValueError, match="start must be one of"):
        memory.Memory(start="anywhere")
    with pytest.raises(ValueError, match="unknown override"):
        envs.make(IDS[0], n_obstacles=2)


def test_layouts_match_minigrid_grids():
    """``cell_type`` gives the real grid, cell for cell, for every hallway length of every size
    (one call: the size is traced, the coordinates are those of the largest grid)."""
    cases, wants = [], []
    for size in (7, 9, 11, 13, 17):
        py = MemoryEnv(size=size, random_length=size >= 13)
        for e in (range(4, size - 2) if size >= 13 else (size - 3,)):
            for instruction in (0, 1):
                for top in (0, 1):
                    py_grid = forced_layout(py, e, instruction, top)
                    cases.append((size, memory.make_state((1, size // 2), 0, instruction, top, size, hallway_end=e)))
                    wants.append(np.array([[_type(py_grid.get(x, y)) for y in range(size)] for x in range(size)]))
    states = jax.tree.map(lambda *v: jnp.stack(v), *(st for _, st in cases))
    sizes = jnp.asarray([size for size, _ in cases])
    coords = jnp.asarray(mg.grid_coords(17))
    ours = np.asarray(jax.jit(jax.vmap(memory.cell_type, in_axes=(None, 0, 0)))(coords, states, sizes))
    for (size, st), want, got in zip(cases, wants, ours):
        np.testing.assert_array_equal(got[:size, :size], want, err_msg=f"size {size} hallway end {int(st.hallway_end)}")
    assert len(cases) == 4 * (1 + 1 + 1 + 7 + 11)


def forced_layout(py, e: int, instruction: int, top: int) -> Grid:
    """The real ``_gen_grid`` with its draws forced: hallway end ``e`` (random-length envs), start
    (1, h) east (the fork's FixedStart draws nothing), the instruction and the top object."""
    fork = isinstance(py, ForkMemoryEnv)
    start = [] if fork and not py.random_direction else [1, 0] if fork else [1]
    draws = iter(([e] if py.random_length else []) + start + [instruction, 1 - top])
    py._rand_int = lambda lo, hi: next(draws)  # _rand_elem draws through _rand_int
    try:
        py.reset(seed=0)
    finally:
        del py._rand_int
    assert next(draws, None) is None
    return py.grid


def _type(cell) -> int:
    if cell is None:
        return mg.EMPTY
    return {"wall": mg.WALL, "key": mg.KEY, "ball": mg.GREEN_BALL}[cell.type]


# ---------------------------------------------------------------------------------------------
# OCCLUSION: envs.minigrid.process_vis against minigrid's Grid.process_vis
# ---------------------------------------------------------------------------------------------


def test_process_vis_matches_minigrid_on_random_walls():
    rng = np.random.default_rng(0)
    n = 1000
    density = rng.uniform(0.05, 0.6, n)
    walls = rng.random((n, 7, 7)) < density[:, None, None]
    walls[:, 3, 6] = False  # the agent's cell
    ours = np.asarray(jax.jit(jax.vmap(mg.process_vis))(jnp.asarray(~walls)))
    for k in range(n):
        g = Grid(7, 7)
        for i, j in zip(*np.nonzero(walls[k])):
            g.set(int(i), int(j), Wall())
        np.testing.assert_array_equal(ours[k], g.process_vis((3, 6)), err_msg=f"pattern {k}")
    assert 0.1 < (~ours).mean() < 0.9  # the patterns occlude (not all seen, not all hidden)


# ---------------------------------------------------------------------------------------------
# LOCK-STEP PARITY (all 7 actions; image, one-hot and full views)
# ---------------------------------------------------------------------------------------------


def _toward(py, want: int) -> int:
    if py.agent_dir == want:
        return 2
    return 1 if (want - py.agent_dir) % 4 == 1 else 0


def _policy(kind: str, rng: np.random.Generator, py, target_up: bool, obj) -> int:
    """random7: uniform over the 7 actions. seek: 80% of the time walk to an end cell (up or
    down), else any action. fetch (the fork): first pick up the instruction object, then seek."""
    if kind == "random7" or rng.random() < 0.2:
        return int(rng.integers(0, 7))
    h, e = py.width // 2, py.success_pos[0] - 1
    x, y = (int(v) for v in py.agent_pos)
    if kind == "fetch" and py.carrying is None and py.grid.get(1, h - 1) is obj:
        if (x, y) == (1, h):
            return 3 if py.agent_dir == 3 else _toward(py, 3)
        return _toward(py, 2 if y == h else (3 if y > h else 1))
    if x <= e and y != h:
        return _toward(py, 3 if y > h else 1)
    if x <= e:
        return _toward(py, 0)
    return _toward(py, 3 if target_up else 1)


def record(env_id: str, n_steps: int, seed: int) -> dict:
    """Exactly ``n_steps`` real steps, episode after episode (policies seek, random7, fetch in
    turn; every other episode has the time limit SHORT_T; the last episode is cut): the state
    before and after each step, the action and what the env returned, its views."""
    py = python_env(env_id)
    oh, full = OneHotPartialObsWrapper(py), FullyObsWrapper(py)
    rng = np.random.default_rng(seed)
    T = py.max_steps
    rec = {k: [] for k in ("before", "after", "action", "reward", "term", "trunc", "max_steps", "image", "one_hot", "full",
                           "reset_image", "reset_index")}
    kinds = ["seek", "random7", "fetch" if env_id in FORK_IDS else "seek"]
    ep = 0
    while len(rec["action"]) < n_steps:
        py.max_steps = SHORT_T if ep % 2 else T
        obs = py.reset(seed=seed * 100_000 + ep)[0]
        rec["reset_image"].append(obs["image"])
        rec["reset_index"].append(len(rec["action"]))
        obj = py.grid.get(1, py.width // 2 - 1)
        kind, target_up = kinds[ep % len(kinds)], bool(rng.integers(0, 2))
        ep += 1
        while len(rec["action"]) < n_steps:
            a = _policy(kind, rng, py, target_up, obj)
            rec["before"].append(snapshot(py, obj))
            obs, r, term, trunc, _ = py.step(a)
            rec["action"].append(a)
            rec["after"].append(snapshot(py, obj))
            rec["reward"].append(r)
            rec["term"].append(term)
            rec["trunc"].append(trunc)
            rec["max_steps"].append(py.max_steps)
            rec["image"].append(obs["image"])
            rec["one_hot"].append(oh.observation(obs)["image"])
            rec["full"].append(full.observation(obs)["image"])
            if term or trunc:
                break
    rec["size"] = py.width
    rec["fork"] = env_id in FORK_IDS
    return rec


def check_lockstep(recs: list[dict]) -> dict:
    """Our phases on the real envs' snapshots, the ids of one grid size in one call each: every
    field equal (the reward to REWARD_RTOL); returns counts of what the records exercised."""
    counts = []
    for size in sorted({rec["size"] for rec in recs}):
        group = [rec for rec in recs if rec["size"] == size]
        counts.append(_check_group(size, group))
    out = {k: sum(c[k] for c in counts) for k in counts[0] if k != "actions"}
    out["actions"] = np.sum([c["actions"] for c in counts], axis=0).tolist()
    return out


def _check_group(size: int, recs: list[dict]) -> dict:
    cat = {k: [v for rec in recs for v in rec[k]] for k in ("before", "after", "action", "reward", "term", "trunc", "max_steps")}
    lens = [len(rec["action"]) for rec in recs]
    fork = np.repeat([rec["fork"] for rec in recs], lens)
    st, r, term, trunc, outcome, views = batched_step(size)(
        stack_states(cat["before"]), jnp.asarray(cat["action"], jnp.int32), jnp.asarray(cat["max_steps"], jnp.int32),
        jnp.asarray(fork))
    for name, got, want in zip(EnvState.__dataclass_fields__, jax.tree.leaves(st), jax.tree.leaves(stack_states(cat["after"]))):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want), err_msg=name)
    np.testing.assert_allclose(np.asarray(r, np.float64), np.asarray(cat["reward"], np.float64), rtol=REWARD_RTOL, atol=0)
    term_py, trunc_py = np.asarray(cat["term"]), np.asarray(cat["trunc"])
    np.testing.assert_array_equal(np.asarray(term), term_py)
    np.testing.assert_array_equal(np.asarray(trunc), trunc_py)
    success = term_py & (np.asarray(cat["reward"]) > 0)
    task = memory.TASK
    want_outcome = np.where(success, task.outcome_code("success"), np.where(term_py, task.outcome_code("wrong"),
                            np.where(trunc_py, task.outcome_code("timeout"), 0)))
    np.testing.assert_array_equal(np.asarray(outcome), want_outcome)
    views = [np.asarray(v) for v in views]
    for mode, view in zip(memory.OBS_MODES, views[3:]):
        np.testing.assert_array_equal(view, np.concatenate([rec[mode] for rec in recs]), err_msg=f"{mode} S{size}")
    # the view of each reset state (the "before" image of each episode's first step)
    starts = np.concatenate([np.asarray(rec["reset_index"]) + off for rec, off in zip(recs, np.cumsum([0, *lens[:-1]]))])
    resets = np.concatenate([np.stack(rec["reset_image"]) for rec in recs])
    np.testing.assert_array_equal(views[0][starts], resets, err_msg=f"reset image S{size}")
    actions = np.asarray(cat["action"])
    return {
        "steps": len(actions), "success": int(success.sum()), "wrong": int((term_py & ~success).sum()),
        "truncations": int(trunc_py.sum()), "actions": np.bincount(actions, minlength=7).tolist(),
        "carried_steps": int(sum(b[6] for b in cat["before"])),
        "picks": int(sum(not b[6] and a[6] for b, a in zip(cat["before"], cat["after"]))),
        "drops": int(sum(b[6] and not a[6] for b, a in zip(cat["before"], cat["after"]))),
        "unseen_cells": int((views[3][..., 0] == 0).sum()),
    }


def _check_counts(c: dict) -> None:
    assert c["success"] >= 5 and c["wrong"] >= 5 and c["truncations"] >= 2, c  # every ending is exercised
    assert min(c["actions"]) > 0, c  # every one of the 7 actions is stepped
    assert c["picks"] >= 3 and c["drops"] >= 3 and c["carried_steps"] >= 20, c  # the fork's pickup and drop
    assert c["unseen_cells"] > 0, c


# The default run: the 7x7 ids (the fork's two, more steps: pickup and drop work) and the 13x13
# ones (fixed and random hallway); one compile per size. The slow test runs every id.
LOCKSTEP_STEPS = {
    "MiniGrid-MemoryS7FixedStart-v0": 600,
    "MiniGrid-MemoryS7RandomDirection-v0": 600,
    "MiniGrid-MemoryS7-v0": 250,
    "MiniGrid-MemoryS13-v0": 250,
    "MiniGrid-MemoryS13Random-v0": 400,
}


@pytest.fixture(scope="module")
def lockstep_records():
    return [record(env_id, n, seed=i + 1) for i, (env_id, n) in enumerate(LOCKSTEP_STEPS.items())]


def test_lockstep_transitions_match_minigrid(lockstep_records):
    """~2.1k real steps on five ids (S9, S11, S17Random in the slow test): state, reward,
    terminated, truncated, outcome and the image, one-hot and full views all equal. The real
    images hold unseen cells, so a port that saw through walls would fail."""
    _check_counts(check_lockstep(lockstep_records))


@pytest.mark.slow
def test_lockstep_transitions_match_minigrid_long():
    """10k steps per id (80k in all), other seeds; each id's own counts checked."""
    recs = [record(env_id, 10_000, seed=1000 + i) for i, env_id in enumerate(IDS)]
    check_lockstep(recs)
    for env_id, rec in zip(IDS, recs):
        term, reward = np.asarray(rec["term"]), np.asarray(rec["reward"])
        c = {"success": int((term & (reward > 0)).sum()), "wrong": int((term & (reward == 0)).sum()),
             "truncations": int(np.sum(rec["trunc"])), "actions": np.bincount(rec["action"], minlength=7).tolist(),
             "picks": sum(not b[6] and a[6] for b, a in zip(rec["before"], rec["after"])),
             "drops": sum(b[6] and not a[6] for b, a in zip(rec["before"], rec["after"]))}
        assert c["success"] >= 5 and c["wrong"] >= 5 and c["truncations"] >= 2 and min(c["actions"]) > 0, (env_id, c)
        if env_id in FORK_IDS:
            assert c["picks"] >= 3 and c["drops"] >= 3, (env_id, c)


def test_lockstep_detects_a_wrong_step(lockstep_records):
    """The comparison is not vacuous: MiniGrid's own step (pickup turned into toggle) on the
    fork's records misses their pickups and drops (the same compiled call, fork off)."""
    recs = [rec for rec in lockstep_records if rec["size"] == 7]
    cat = {k: [v for rec in recs for v in rec[k]] for k in ("before", "after", "action", "max_steps")}
    st = batched_step(7)(stack_states(cat["before"]), jnp.asarray(cat["action"], jnp.int32),
                         jnp.asarray(cat["max_steps"], jnp.int32), jnp.zeros(len(cat["action"]), bool))[0]
    wrong = np.asarray(st.carrying) != np.asarray(stack_states(cat["after"]).carrying)
    assert wrong.sum() >= 6, wrong.sum()


# ---------------------------------------------------------------------------------------------
# RESET DISTRIBUTION (chi-square homogeneity, Python vs JAX, and a negative control)
# ---------------------------------------------------------------------------------------------


def _reset_label(s) -> tuple:
    return s[0][0], s[1], s[3], s[4], s[7]  # start x, direction, instruction, top, hallway end


def python_resets(env_id: str, n: int, seed: int) -> list:
    return reset_labels(python_env(env_id), lambda py: _reset_label(snapshot(py, py.grid.get(1, py.width // 2 - 1))), n, seed)


def _labels(s: EnvState) -> list:
    cols = [np.asarray(s.agent_pos[:, 0]), np.asarray(s.agent_dir), np.asarray(s.instruction), np.asarray(s.top),
            np.asarray(s.hallway_end)]
    return [tuple(int(v) for v in row) for row in zip(*cols)]


def jax_resets(env_id: str, n: int, seed: int) -> list:
    env, params = envs.make(env_id)
    _, s = jax.jit(jax.vmap(env.reset, in_axes=(0, None)))(jax.random.split(jax.random.PRNGKey(seed), n), params)
    return _labels(s)


def _uniform_pairs_reset(key, size: int) -> EnvState:
    """A plausible wrong reset (negative control): (hallway end, start x) uniform over the valid
    pairs, i.e. rejection sampling, instead of the end first and then x, which favours long hallways."""
    k_pair, k_rest = jax.random.split(key)
    pairs = np.array([(e, x) for e in range(4, size - 2) for x in range(1, e + 1)], np.int32)
    e, x = jnp.asarray(pairs)[jax.random.randint(k_pair, (), 0, len(pairs))]
    s = memory.reset_state(k_rest, size, "random_x", True)
    return s.replace(hallway_end=e, agent_pos=s.agent_pos.at[0].set(x))


RESET_IDS = ("MiniGrid-MemoryS7RandomDirection-v0", "MiniGrid-MemoryS13Random-v0")


def reset_ps(n: int, seed: int = 0, ids=RESET_IDS) -> dict:
    """RandomDirection (4 x 4 directions x 2 x 2 = 64 outcomes) and S13Random (hallway end 4..10
    x start x 1..end x 4 = 196) (and the slow test's others): ours against the real env's; the
    wrong reset against S13Random's."""
    ps = {}
    for k, env_id in enumerate(ids):
        a, b = python_resets(env_id, n, 5 + k + seed), jax_resets(env_id, n, 9 + k + seed)
        ps[env_id] = chi2_p(a, b)
        if env_id == FORK_IDS[1]:
            assert len(set(a)) == len(set(b)) == 64
        if env_id.endswith("S13Random-v0"):  # the hallway end alone: ours, and the wrong reset's
            keys = jax.random.split(jax.random.PRNGKey(11 + seed), n)
            wrong = _labels(jax.jit(jax.vmap(lambda key: _uniform_pairs_reset(key, 13)))(keys))
            ps[f"{env_id} hallway end"] = chi2_p([lab[4] for lab in a], [lab[4] for lab in b])
            ps["negative control (uniform pairs)"] = chi2_p([lab[4] for lab in a], [lab[4] for lab in wrong])
    return ps


def test_reset_distribution_and_negative_control():
    ps = reset_ps(2_000)
    assert min(p for k, p in ps.items() if "negative" not in k) > P_MIN, ps
    assert ps["negative control (uniform pairs)"] < 1e-9, ps


@pytest.mark.slow
def test_reset_distribution_large():
    ps = reset_ps(25_000, seed=1, ids=RESET_IDS + ("MiniGrid-MemoryS7-v0", "MiniGrid-MemoryS17Random-v0"))
    assert min(p for k, p in ps.items() if "negative" not in k) > P_MIN, ps
    assert ps["negative control (uniform pairs)"] < 1e-12, ps


# ---------------------------------------------------------------------------------------------
# API
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("env_id", IDS)
def test_every_id_jits_and_vmaps(env_id):
    env, params = envs.make(env_id, obs_mode="one_hot")
    b = 4
    keys = jax.random.split(jax.random.PRNGKey(0), b)

    @jax.jit
    def reset_then_step(keys, action, params):
        _, state = jax.vmap(env.reset, in_axes=(0, None))(keys, params)
        return jax.vmap(env.step, in_axes=(0, 0, 0, None))(keys, state, action, params)

    obs, state, r, term, trunc, info = reset_then_step(keys, jnp.array([0, 1, 2, 3]), params)
    assert obs.shape == (b, 7, 7, 20) and obs.dtype == jnp.uint8 and env.observation_space(params).shape == obs.shape[1:]
    assert r.dtype == jnp.float32 and term.dtype == trunc.dtype == jnp.bool_ and info["outcome"].dtype == jnp.int32
    assert (np.asarray(obs) == np.asarray(jax.vmap(env.observe)(state))).all()


def test_step_autoreset():
    """env.reset and env.step, jitted and vmapped (one-hot views): FixedStart resets to (1, 3)
    east in each of the 4 layouts; the optimal episodes end with success at step 6 and start
    again; the final observation is the pre-reset view."""
    env, params = envs.make(FORK_IDS[0], max_steps=50, obs_mode="one_hot")
    b = 32
    obs, state = jax.jit(jax.vmap(env.reset, in_axes=(0, None)))(jax.random.split(jax.random.PRNGKey(0), b), params)
    assert obs.shape == (b, 7, 7, 20) and obs.dtype == jnp.uint8 and env.observation_space(params).shape == obs.shape[1:]
    assert (np.asarray(state.agent_pos) == (1, 3)).all() and (np.asarray(state.agent_dir) == 0).all()
    assert len(set(zip(np.asarray(state.instruction).tolist(), np.asarray(state.top).tolist()))) == 4
    step = jax.jit(jax.vmap(env.step, in_axes=(0, 0, 0, None)))
    for t in range(6):
        turn = np.where(np.asarray(state.instruction == state.top), 0, 1)
        action = jnp.asarray(np.full(b, 2) if t != 4 else turn, jnp.int32)
        obs, state, r, term, trunc, info = step(jax.random.split(jax.random.PRNGKey(t), b), state, action, params)
    assert r.dtype == jnp.float32 and term.dtype == trunc.dtype == jnp.bool_ and info["outcome"].dtype == jnp.int32
    assert np.asarray(term).all() and not np.asarray(trunc).any()
    np.testing.assert_allclose(np.asarray(r), 1 - 0.9 * 6 / 50, rtol=1e-6)
    assert (np.asarray(info["outcome"]) == memory.SUCCESS_OUTCOME).all()
    assert (np.asarray(state.time) == 0).all() and (np.asarray(state.agent_pos) == (1, 3)).all()
    assert (np.asarray(info["final_observation"]) != np.asarray(obs)).any()


# ---------------------------------------------------------------------------------------------
# TASK (scenarios replay in the real env) AND RENDER
# ---------------------------------------------------------------------------------------------


def test_scenarios_replay_in_the_real_fork():
    """Each scenario's state is what its actions give from its layout's reset state, in the real
    fork and in ours; the junction pairs share the last view and differ in the instruction."""
    env, params = envs.make(FORK_IDS[0])
    scs = memory.TASK.scenarios(env)
    assert len(scs) == 4 * 7 and len({s.name for s in scs}) == len(scs)
    py = python_env(FORK_IDS[0])
    for sc in scs:
        instruction, top = int(sc.state.instruction), int(sc.state.top)
        forced_layout(py, 4, instruction, top)
        obj = py.grid.get(1, 2)
        for a in sc.actions:
            py.step(a)
        got = stack_states([snapshot(py, obj)])
        for name, a, b in zip(EnvState.__dataclass_fields__, jax.tree.leaves(got), jax.tree.leaves(sc.state)):
            np.testing.assert_array_equal(np.asarray(a)[0], np.asarray(b), err_msg=f"{sc.name}: {name}")
    by = {s.name: s for s in scs}
    pairs = [(by[clean], by[corrupt]) for clean, corrupt in memory.TASK.pairs.values()]
    states = jax.tree.map(lambda *v: jnp.stack(v), *(sc.state for pair in pairs for sc in pair))
    views = np.asarray(jax.jit(jax.vmap(env.observe))(states)).reshape(len(pairs), 2, 7, 7, 3)
    for (a, b), view in zip(pairs, views):
        assert int(a.state.instruction) != int(b.state.instruction) and a.actions == b.actions
        np.testing.assert_array_equal(view[0], view[1], err_msg=a.name)


def test_reference_start_view():
    """The reference's start view (instruction key, key on top, at (1, 3) facing east)."""
    rows = ["???????", "WWWWWWW", "WK...BW", "?WW.WW?", "?W...W?", "?W...W?", "?WK..W?"]
    code = {"?": 0, "W": 2, ".": 1, "K": 5, "B": 6}
    want = np.array([[code[c] for c in row] for row in rows]).T  # [i, j]
    state = memory.make_state((1, 3), 0, 0, 0)
    view = jax.jit(memory.observe, static_argnums=(1, 2))(state, 7, "image")
    np.testing.assert_array_equal(np.asarray(view)[..., 0], want)
    # the same view through the generic occluding observer (process_vis each call, no table)
    generic = jax.jit(lambda s: mg.observe_grid(lambda xy: memory.cell_type(xy, s, 7), s.agent_pos, s.agent_dir, 7,
                                                occlude=True))(state)
    np.testing.assert_array_equal(np.asarray(generic), np.asarray(view))


def test_render_draws_objects_and_the_carried_one():
    env, _ = envs.make(FORK_IDS[0])
    tile = 16
    state = memory.make_state((2, 3), 2, 1, 0, obj_pos=(3, 2))  # ball instruction moved to (3, 2)
    img = envs.render(state, env, highlight=False, tile=tile)
    assert img.shape == (7 * tile, 7 * tile, 3)

    def cell(x, y):
        return img[y * tile:(y + 1) * tile, x * tile:(x + 1) * tile].reshape(-1, 3)

    green = np.array([0, 255, 0])
    for x, y in ((3, 2), (5, 1), (5, 5)):  # the instruction ball, the top key, the bottom ball
        assert (cell(x, y) == green).all(-1).sum() > 10, (x, y)
    assert not (cell(1, 2) == green).all(-1).any()  # the object left its start cell
    assert (cell(5, 1) != cell(5, 5)).any()  # a key is not drawn as a ball
    carried = envs.render(memory.make_state((2, 3), 2, 1, 0, carrying=True), env, highlight=False, tile=tile)
    assert (carried[3 * tile:4 * tile, 2 * tile:3 * tile].reshape(-1, 3) == green).all(-1).sum() > 5
