"""Concepts from ground truth: closed-loop rollouts that keep every env state, and the labels read from them.

``collect`` plays ``n_episodes`` episodes of the model in its env for at most ``n_steps`` steps
each (one jitted ``lax.scan``, vmapped over episodes, actions sampled from the model's own policy
at the given target RTGs; an ended episode stays frozen and its later steps are marked invalid),
keeping at every step the context window the model saw, the env state, the action taken and the
env's ``info["outcome"]``. ``concepts(env, rollouts)`` turns them into labels (an int class per
step, ``-1`` where a concept is undefined), pure functions of the states and of the rollout's future:

- ``cell(x,y)``: the object (one of the task's ``objects``) in a cell of the agent's 7x7 view
  (MiniGrid view coordinates: the agent at (3, 6) facing up, (3, 5) the cell ahead); by default
  the cells the agent can step into or be hit from (``CELLS``) and the cell two ahead;
- ``{object}_ahead`` (binary) for each of the task's non-empty objects, and ``blocked_ahead``
  (a ball or wall ahead) in a task with balls;
- ``goal_direction``: where the goal lies in the agent's frame (ahead, right, behind, left: the
  larger of the forward and sideways offsets; undefined on the goal or with no goal);
- ``obstacle_distance`` (a task with balls): Manhattan distance to the nearest ball, 1, 2, 3, >= 4;
- ``collision_within_k``: the episode ends in one of the task's ``failures`` within the next ``k``
  steps (this one included; undefined when the rollout stops before we know);
- ``action``, ``action_next``, ``action_next2``: the action taken now, 1 and 2 steps later
  (undefined past the episode's end);
- ``outcome``: how the episode ends (the task's outcomes but "running"; undefined if it had not
  ended within ``n_steps``);
- the family's own (``Task.concepts``, optional: ``concepts(env) -> {name: (classes, fn(state,
  obs) -> int32 label)}``).

Everything is computed for every step; ``split`` then keeps the played steps, splits them by
episode into training and held-out sets and subsamples them to fixed sizes (static shapes).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from envs import minigrid as mg
from dtjax.config import ModelConfig
from dtjax.evaluate import Window, env_step, push_step
from dtjax.model import forward

FRONT = (3, 5)  # view cell ahead of the agent, [x, y]
CELLS = ((3, 5), (2, 6), (4, 6), (2, 5), (4, 5), (3, 4))  # ahead, left, right, ahead-left, ahead-right, two ahead
DIRECTIONS = ("ahead", "right", "behind", "left")
DISTANCES = ("1", "2", "3", ">=4")


@struct.dataclass
class Rollouts:
    """(B, T) steps of B episodes: ``window`` the model's context (B, T, K, ...), ``state`` the env
    state before the step (leaves (B, T, ...)), ``action`` (B, T) taken, ``outcome`` (B, T) the
    env's ``info["outcome"]`` of the step (0 running), ``valid`` (B, T) the step was played,
    ``target_rtg`` (B,)."""

    window: Window
    state: Any
    action: jax.Array
    outcome: jax.Array
    valid: jax.Array
    target_rtg: jax.Array


@dataclasses.dataclass(frozen=True)
class Concept:
    """A concept's class names and its labels (int32, ``-1`` = undefined), one per step."""

    name: str
    classes: tuple[str, ...]
    labels: np.ndarray

    @property
    def n_classes(self) -> int:
        return len(self.classes)


@functools.partial(jax.jit, static_argnames=("cfg", "env", "n_episodes", "n_steps"))
def _collect(params, cfg: ModelConfig, env, env_params, key, rtgs, temperature, n_episodes: int, n_steps: int):
    K, pad, max_t = cfg.n_timesteps, cfg.n_actions, cfg.max_timestep
    k_reset, k_loop = jax.random.split(key)
    idx = jnp.arange(n_episodes)
    obs0, state0 = jax.vmap(lambda i: env.reset(jax.random.fold_in(k_reset, i), env_params))(idx)
    target = rtgs[idx % rtgs.shape[0]]
    win0 = Window.start(obs0, target, 0, K, pad)

    def step(carry, t):
        state, win, alive = carry
        logits = forward(params, cfg, win.obs, win.rtg, win.timesteps, win.actions if K > 1 else None)[:, -1]
        k_t = jax.random.fold_in(k_loop, t)
        k_act, k_env = jax.random.split(k_t)
        keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(k_act, idx)
        action = jax.vmap(jax.random.categorical)(keys, logits / temperature).astype(jnp.int32)
        env_keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(k_env, idx)
        obs, nxt, reward, term, trunc, info = jax.vmap(functools.partial(env_step, env), in_axes=(0, 0, 0, None))(
            env_keys, state, action, env_params)
        out = (win, state, action, jnp.where(alive, info["outcome"].astype(jnp.int32), 0), alive)
        ended = term | trunc
        keep = lambda new, old: jnp.where(alive.reshape((-1,) + (1,) * (old.ndim - 1)), new, old)  # noqa: E731
        new_win = push_step(win, action, pad, obs=obs, rtg=win.rtg[:, -1] - reward,
                            timesteps=jnp.minimum(nxt.time, max_t).astype(jnp.int32))
        return (jax.tree.map(keep, nxt, state), jax.tree.map(keep, new_win, win), alive & ~ended), out

    _, (win, state, action, outcome, valid) = jax.lax.scan(step, (state0, win0, jnp.ones(n_episodes, bool)),
                                                           jnp.arange(n_steps))
    bt = lambda x: jnp.swapaxes(x, 0, 1)  # noqa: E731  (T, B, ...) -> (B, T, ...)
    return Rollouts(window=jax.tree.map(bt, win), state=jax.tree.map(bt, state), action=bt(action),
                    outcome=bt(outcome), valid=bt(valid), target_rtg=target)


def collect(params, cfg: ModelConfig, env, env_params, key, n_episodes: int = 1024, n_steps: int = 64,
            rtgs=(0.9,), temperature: float = 1.0) -> Rollouts:
    """``n_episodes`` closed-loop episodes of the model (actions sampled at ``temperature``;
    episode ``i`` at target ``rtgs[i % len(rtgs)]``), at most ``n_steps`` steps each."""
    if n_episodes < 1 or n_steps < 1:
        raise ValueError(f"need at least one episode and one step, got {n_episodes} and {n_steps}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    return _collect(params, cfg, env, env_params, key, jnp.asarray(rtgs, jnp.float32).reshape(-1),
                    jnp.float32(temperature), int(n_episodes), int(n_steps))


# ---------------------------------------------------------------------------------------------
# LABELS (numpy over (B, T) steps)
# ---------------------------------------------------------------------------------------------


def object_codes(obs) -> np.ndarray:
    """(..., 7, 7) MiniGrid object codes of raw (..., 7, 7, 3) or one-hot (..., 7, 7, 20) views."""
    obs = np.asarray(obs)
    return obs[..., : len(mg.OBJECT_TO_IDX)].argmax(-1) if obs.shape[-1] == mg.N_ONE_HOT else obs[..., 0]


def object_classes(codes: np.ndarray, objects: tuple[str, ...]) -> np.ndarray:
    """MiniGrid object codes -> indices into ``objects`` (-1 for an object not in the list)."""
    lut = np.full(len(mg.OBJECT_TO_IDX), -1, np.int32)
    for i, o in enumerate(objects):
        lut[mg.OBJECT_TO_IDX[o]] = i
    return lut[np.asarray(codes)]


def goal_direction(agent_pos, agent_dir, goal) -> np.ndarray:
    """Index into ``DIRECTIONS`` of ``goal`` (..., 2) seen from ``agent_pos`` (..., 2) facing
    ``agent_dir`` (...,) (0 E, 1 S, 2 W, 3 N; y down): ahead / behind when the forward offset is at
    least the sideways one, else right / left; -1 on the goal."""
    rel = np.asarray(goal) - np.asarray(agent_pos)
    f = mg.DIR_TO_VEC[np.asarray(agent_dir)]
    ahead = (rel * f).sum(-1)
    right = rel[..., 0] * -f[..., 1] + rel[..., 1] * f[..., 0]  # r = (-f_y, f_x)
    lab = np.where(np.abs(ahead) >= np.abs(right), np.where(ahead > 0, 0, 2), np.where(right > 0, 1, 3))
    return np.where((rel == 0).all(-1), -1, lab).astype(np.int32)


def nearest_distance(agent_pos, cells_mask) -> np.ndarray:
    """Manhattan distance (...,) from ``agent_pos`` (..., 2) to the nearest True cell of
    ``cells_mask`` (..., S, S) indexed [x, y]; a large number when there is none."""
    S = cells_mask.shape[-1]
    coords = mg.grid_coords(S)  # (S, S, 2)
    d = np.abs(coords - np.asarray(agent_pos)[..., None, None, :]).sum(-1)
    return np.where(cells_mask, d, 10**6).min((-2, -1))


def future(x: np.ndarray, valid: np.ndarray, k: int) -> np.ndarray:
    """x shifted k steps earlier along time (x[:, t + k] at t), -1 where t + k is not a played step."""
    out = np.full_like(x, -1)
    if k < x.shape[1]:
        out[:, : x.shape[1] - k] = np.where(valid[:, k:], x[:, k:], -1)
    return out


def _grids(env, state) -> np.ndarray:
    B, T = np.shape(state.agent_dir)[:2]
    flat = jax.tree.map(lambda a: jnp.reshape(a, (B * T,) + a.shape[2:]), state)
    return np.asarray(jax.jit(jax.vmap(env.grid))(flat)).reshape(B, T, env.size, env.size)


def concepts(env, roll: Rollouts, cells=CELLS, k: int = 3) -> dict[str, Concept]:
    """Every concept's labels (B, T) for rollouts of ``env`` (see the module docstring)."""
    task = env.task
    valid = np.asarray(roll.valid)
    obs = np.asarray(roll.window.obs[:, :, -1])  # (B, T, 7, 7, C): the current view
    if obs.shape[-3:-1] != (mg.VIEW_SIZE, mg.VIEW_SIZE):
        raise ValueError(f"concepts need the agent's 7x7 view (obs_mode image or one_hot), got obs {obs.shape[-3:]}")
    codes = object_codes(obs)
    pos, direction = np.asarray(roll.state.agent_pos), np.asarray(roll.state.agent_dir)
    grid = _grids(env, roll.state)
    out: dict[str, Concept] = {}

    def add(name, classes, labels):
        out[name] = Concept(name, tuple(classes), np.where(valid, labels, -1).astype(np.int32))

    for x, y in cells:
        add(f"cell({x},{y})", task.objects, object_classes(codes[..., x, y], task.objects))
    front = codes[..., FRONT[0], FRONT[1]]
    for o in task.objects:
        if o != "empty":
            add(f"{o}_ahead", ("no", "yes"), front == mg.OBJECT_TO_IDX[o])
    balls = "ball" in task.objects
    if balls:
        add("blocked_ahead", ("no", "yes"), np.isin(front, (mg.OBJECT_TO_IDX["ball"], mg.OBJECT_TO_IDX["wall"])))
    goal_cells = grid == mg.GOAL
    flat = goal_cells.reshape(goal_cells.shape[:2] + (-1,))
    goal = np.stack(np.divmod(flat.argmax(-1), env.size), -1)  # grid is [x, y]: flat index x * S + y
    add("goal_direction", DIRECTIONS, np.where(flat.any(-1), goal_direction(pos, direction, goal), -1))
    if balls:
        dist = nearest_distance(pos, grid == mg.BALL)
        add("obstacle_distance", DISTANCES, np.where(dist < 10**6, np.clip(dist, 1, 4) - 1, -1))
    outcome = np.asarray(roll.outcome)
    if task.failures:
        fail = (np.isin(outcome, [task.outcome_code(f) for f in task.failures]) & valid).astype(np.int32)
        ended = ((outcome > 0) & valid).astype(np.int32)
        soon = np.any([future(fail, valid, j) == 1 for j in range(k)], 0)
        ends_soon = np.any([future(ended, valid, j) == 1 for j in range(k)], 0)
        known = ends_soon | (future(valid.astype(np.int32), valid, k - 1) == 1)  # or the rollout lasted k more steps
        add(f"collision_within_{k}", ("no", "yes"), np.where(known, soon, -1))
    action = np.asarray(roll.action)
    add("action", task.action_names, action)
    add("action_next", task.action_names, future(action, valid, 1))
    add("action_next2", task.action_names, future(action, valid, 2))
    final = np.where(valid & (outcome > 0), outcome, 0).max(1)  # (B,) the outcome code of the last step
    add("outcome", task.outcomes[1:], np.broadcast_to(np.where(final > 0, final - 1, -1)[:, None], valid.shape))
    family = task.concepts(env) if task.concepts is not None else {}
    if family:
        B, T = valid.shape
        flat_state = jax.tree.map(lambda a: jnp.reshape(a, (B * T,) + a.shape[2:]), roll.state)
        flat_obs = jnp.reshape(roll.window.obs[:, :, -1], (B * T,) + obs.shape[2:])
        for name, (classes, fn) in family.items():
            add(name, classes, np.asarray(jax.jit(jax.vmap(fn))(flat_state, flat_obs)).reshape(B, T))
    return out


@dataclasses.dataclass(frozen=True)
class ProbeData:
    """Played steps as probe inputs: ``window`` (N, K, ...) the model's contexts, ``labels`` (P, N)
    int32 (``-1`` undefined or padding), ``names`` / ``classes`` per concept, ``episode`` (N,)."""

    window: Window
    labels: np.ndarray
    names: tuple[str, ...]
    classes: tuple[tuple[str, ...], ...]
    episode: np.ndarray

    @property
    def n_classes(self) -> np.ndarray:
        return np.array([len(c) for c in self.classes], np.int32)

    def labels_of(self, name: str) -> np.ndarray:
        if name not in self.names:
            raise KeyError(f"no concept {name!r}; concepts: {', '.join(self.names)}")
        return self.labels[self.names.index(name)]


def split(roll: Rollouts, cs: dict[str, Concept], key, n_train: int = 4096, n_test: int = 2048,
          train_frac: float = 0.7) -> tuple[ProbeData, ProbeData]:
    """(train, test): the played steps of disjoint episodes (``train_frac`` of the episodes train),
    each a random subset of at most ``n_train`` / ``n_test`` steps, padded to exactly that many
    (padding rows repeat a step with every label -1), so shapes are static."""
    valid = np.asarray(roll.valid)
    B = valid.shape[0]
    k_ep, k_tr, k_te = jax.random.split(key, 3)
    perm = np.asarray(jax.random.permutation(k_ep, B))
    cut = max(1, min(B - 1, int(round(train_frac * B))))
    names = tuple(cs)
    labels = np.stack([cs[n].labels for n in names])  # (P, B, T)

    def take(eps, n, k):
        b, t = np.nonzero(valid)
        keep = np.isin(b, eps)
        b, t = b[keep], t[keep]
        if len(b) == 0:
            raise ValueError("no played steps to probe")
        sel = np.asarray(jax.random.permutation(k, len(b)))[:n]
        pad = n - len(sel)
        lab = labels[:, b[sel], t[sel]]
        if pad:
            sel = np.concatenate([sel, np.zeros(pad, sel.dtype)])
            lab = np.concatenate([lab, np.full((len(names), pad), -1, np.int32)], 1)
        bb, tt = b[sel], t[sel]
        win = jax.tree.map(lambda a: np.asarray(a)[bb, tt], roll.window)
        return ProbeData(window=win, labels=lab, names=names, classes=tuple(cs[n].classes for n in names), episode=bb)

    return take(perm[:cut], int(n_train), k_tr), take(perm[cut:], int(n_test), k_te)
