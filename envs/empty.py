"""MiniGrid Empty in JAX, step for step as `minigrid/envs/empty.py` and `minigrid/minigrid_env.py` (3.2).

An empty room walled round, the goal at (size-2, size-2); the agent starts at (1, 1) facing east,
or (the Random ids) on a uniform empty interior cell with a uniform direction. Reaching the goal
gives ``1 - 0.9 * step_count / max_steps`` and ends the episode; nothing else gives reward.

State is compact (agent position and direction, the step count): there is no grid array, since
the grid never changes. Every cell query is arithmetic (`cell_type`). Phases, each a pure
module-level function a test can call on its own:
- `reset_state`: MiniGrid's `_gen_grid` distribution (`place_agent`: rejection sampling over the
  grid, i.e. uniform over the interior minus the goal, then a uniform direction);
- `transition`: the whole step (Empty has no randomness after the reset);
- `observe`: the (7,7,3) ``image``, its one-hot (7,7,20) form, or the full (S,S,3) view.

Actions: MiniGrid's Empty has 7 (left, right, forward, pickup, drop, toggle, done). All 7 are
stepped faithfully: pickup, drop, toggle and done change nothing in an empty room (walls and the
goal cannot be picked up or toggled, nothing is carried) but spend a step, so the lock-step parity
holds for every action. The policy space a DT or PPO acts in is the first three: the family's
``Task.action_names`` is ("left", "right", "forward"), ``num_actions`` and ``action_space`` are 3,
as Dynamic Obstacles restricts to 3. An action outside 0..6 (MiniGrid raises) also does nothing.

Ids: ``MiniGrid-Empty-{5x5,Random-5x5,6x6,Random-6x6,8x8,16x16}-v0`` as MiniGrid registers them;
``-Random-8x8-v0`` and ``-Random-16x16-v0`` are dtjax additions (MiniGrid has them only as
``EmptyEnv(size, agent_start_pos=None)``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from gymnax.environments import spaces

from envs import minigrid as mg
from envs.base import GridEnv
from envs.minigrid import EMPTY, GOAL, WALL
from envs.task import Scenario, Task

OBS_MODES = ("image", "one_hot", "full")


@struct.dataclass
class EnvState:
    """The whole state of one episode (MiniGrid's agent_pos, agent_dir, step_count)."""

    agent_pos: jax.Array  # (2,) int32, MiniGrid (x, y); x right, y down
    agent_dir: jax.Array  # () int32, 0=E 1=S 2=W 3=N
    time: jax.Array  # () int32, MiniGrid's step_count


@struct.dataclass
class EnvParams:
    max_steps_in_episode: int = 256  # MiniGrid's max_steps (4 * size**2 by default)


# ---------------------------------------------------------------------------------------------
# PHASES (pure functions)
# ---------------------------------------------------------------------------------------------


def cell_type(xy: jax.Array, size: int) -> jax.Array:
    """Type (EMPTY, WALL, GOAL) of world cells ``xy`` (..., 2); off-grid cells are walls."""
    x, y = xy[..., 0], xy[..., 1]
    wall = (x <= 0) | (y <= 0) | (x >= size - 1) | (y >= size - 1)
    goal = (x == size - 2) & (y == size - 2)
    return jnp.where(wall, WALL, jnp.where(goal, GOAL, EMPTY)).astype(jnp.int32)


def start_cells(size: int) -> np.ndarray:
    """The cells a random start is drawn from, row-major: the interior minus the goal, (size-2)**2 - 1."""
    ys, xs = np.meshgrid(np.arange(1, size - 1), np.arange(1, size - 1), indexing="ij")
    cells = np.stack([xs.ravel(), ys.ravel()], -1).astype(np.int32)
    return cells[~np.all(cells == size - 2, axis=-1)]


def reset_state(key: jax.Array, size: int, random_start: bool) -> EnvState:
    """A fresh episode with MiniGrid's reset distribution.

    Fixed start: (1, 1) facing east. Random start: MiniGrid's ``place_agent`` draws cells of the
    whole grid until one is empty (not a wall, not the goal), so the cell is uniform over
    `start_cells`; then a uniform direction. The key is split by purpose (cell, direction).
    """
    if not random_start:
        return EnvState(agent_pos=jnp.array([1, 1], jnp.int32), agent_dir=jnp.int32(0), time=jnp.int32(0))
    pool = start_cells(size)
    key_cell, key_dir = jax.random.split(key)
    cell = jax.random.randint(key_cell, (), 0, pool.shape[0])
    agent_dir = jax.random.randint(key_dir, (), 0, 4)
    return EnvState(agent_pos=jnp.asarray(pool)[cell], agent_dir=agent_dir.astype(jnp.int32), time=jnp.int32(0))


def transition(state: EnvState, action: jax.Array, max_steps, size: int):
    """The step: (state', reward, terminated, truncated, info), as ``MiniGridEnv.step``.

    Left/right turn; forward moves onto an empty cell or the goal (a wall blocks), and the goal
    gives ``1 - 0.9 * t / T`` and terminates; actions 3..6 (and any other) only spend the step.
    ``info["outcome"]`` is an index into ``TASK.outcomes``: goal, timeout (truncated without
    reaching the goal) or running.
    """
    action = jnp.asarray(action).astype(jnp.int32)
    fwd = state.agent_pos + jnp.asarray(mg.DIR_TO_VEC)[state.agent_dir]
    front = cell_type(fwd, size)
    time = state.time + 1
    forward = action == 2
    agent_dir = jnp.where(action == 0, (state.agent_dir - 1) % 4, jnp.where(action == 1, (state.agent_dir + 1) % 4, state.agent_dir))
    agent_pos = jnp.where(forward & (front != WALL), fwd, state.agent_pos)
    goal = forward & (front == GOAL)
    reward = jnp.where(goal, 1.0 - 0.9 * (time / max_steps), 0.0).astype(jnp.float32)
    truncated = time >= max_steps
    new_state = EnvState(agent_pos=agent_pos, agent_dir=agent_dir.astype(jnp.int32), time=time)
    outcome = jnp.where(goal, GOAL_OUTCOME, jnp.where(truncated, TIMEOUT_OUTCOME, 0)).astype(jnp.int32)
    return new_state, reward, goal, truncated, {"outcome": outcome}


def observe(state: EnvState, size: int, obs_mode: str = "image") -> jax.Array:
    """The agent's observation of ``state``.

    - "image": (7, 7, 3) uint8, MiniGrid's ``obs["image"]``, indexed [view_x, view_y]; the agent
      is at [3, 6] facing towards j = 0; cells off the grid read as walls; nothing is occluded
      (Empty sets ``see_through_walls=True``); the agent's own cell reads empty.
    - "one_hot": (7, 7, 20) uint8, as ``OneHotPartialObsWrapper``.
    - "full": (size, size, 3) uint8, as ``FullyObsWrapper`` ([x, y], agent as (10, 0, dir)).
    """
    return mg.observe_grid(lambda xy: cell_type(xy, size), state.agent_pos, state.agent_dir, size, obs_mode)


# ---------------------------------------------------------------------------------------------
# THE ENVIRONMENT (gymnax 1.x API)
# ---------------------------------------------------------------------------------------------


class Empty(GridEnv):
    """`MiniGrid-Empty-*`: reach the goal at (S-2, S-2) in an empty room.

    Static attributes (they fix shapes or control flow, so changing one recompiles): ``size``,
    ``random_start`` and ``obs_mode``. ``EnvParams.max_steps_in_episode`` is traced. Actions
    0 = left, 1 = right, 2 = forward; 3..6 (pickup, drop, toggle, done) step but do nothing (see
    the module docstring). ``step`` (auto-reset), ``reset`` and ``is_truncated`` come from
    `envs.base.GridEnv`.
    """

    ID_PREFIX = "MiniGrid-Empty-"

    def __init__(self, size: int = 8, random_start: bool = False, obs_mode: str = "image"):
        super().__init__()
        if obs_mode not in OBS_MODES:
            raise ValueError(f"obs_mode must be one of {', '.join(OBS_MODES)}; got {obs_mode!r}")
        if size < 4:  # below 4 the fixed start (1, 1) is the goal
            raise ValueError(f"size must be at least 4, got {size}")
        self.size = int(size)
        self.random_start = bool(random_start)
        self.obs_mode = obs_mode

    @property
    def static(self) -> tuple:
        return (self.size, self.random_start, self.obs_mode)

    @property
    def default_params(self) -> EnvParams:
        return EnvParams(max_steps_in_episode=4 * self.size**2)

    def state_space(self, params: EnvParams | None = None) -> spaces.Dict:
        return spaces.Dict(
            {
                "agent_pos": spaces.Box(0, self.size - 1, (2,), jnp.int32),
                "agent_dir": spaces.Discrete(4),
                "time": spaces.Discrete((params or self.default_params).max_steps_in_episode + 1),
            }
        )

    def observe(self, state: EnvState, params: EnvParams | None = None) -> jax.Array:
        """The observation of ``state`` in this env's ``obs_mode`` (a pure function of the state)."""
        return observe(state, self.size, self.obs_mode)

    def grid(self, state: EnvState) -> jax.Array:
        """Cell types (size, size), indexed [x, y] (the same for every state of this family)."""
        return cell_type(jnp.asarray(mg.grid_coords(self.size)), self.size)

    def reset_env(self, key: jax.Array, params: EnvParams) -> tuple[jax.Array, EnvState]:
        state = reset_state(key, self.size, self.random_start)
        return self.observe(state), state

    def step_env(self, key, state, action, params):
        """One step without auto-reset (gymnax's ``step_env``): (obs, state, reward, terminated, info).

        ``key`` is unused (Empty's step is deterministic); ``info``: ``truncated`` and ``outcome``.
        """
        state, reward, terminated, truncated, info = transition(state, action, params.max_steps_in_episode, self.size)
        return self.observe(state), state, reward, terminated, {"truncated": truncated, **info}

    @property
    def task(self) -> Task:
        return TASK


# ---------------------------------------------------------------------------------------------
# THE TASK (what front ends ask of this family; envs/task.py)
# ---------------------------------------------------------------------------------------------


def make_state(agent_pos, agent_dir: int, time: int = 0) -> EnvState:
    """An ``EnvState`` with the agent at ``agent_pos`` (x, y) facing ``agent_dir`` (0=E 1=S 2=W 3=N)."""
    return EnvState(agent_pos=jnp.asarray(agent_pos, jnp.int32), agent_dir=jnp.int32(agent_dir), time=jnp.int32(time))


def scenario_specs(size: int = 8) -> dict[str, tuple]:
    """name -> (agent_pos, agent_dir, caption) for a grid of side ``size`` (walls included).

    All sit next to the goal g = (size-2, size-2), so every grid (5x5 up) has them; goal_ahead,
    wall_ahead, goal_right and facing_away share one cell and differ only in the direction.
    """
    g = size - 2
    return {
        "goal_ahead": ((g - 1, g), 0, "goal in the cell directly in front"),
        "wall_ahead": ((g - 1, g), 1, "wall directly in front, goal to the left"),
        "goal_left": ((g, g - 1), 2, "goal directly to the left, open floor ahead"),
        "goal_right": ((g - 1, g), 3, "goal directly to the right, open floor ahead"),
        "facing_away": ((g - 1, g), 2, "goal directly behind, open floor ahead"),
    }


def scenarios(env: Empty) -> tuple[Scenario, ...]:
    """The hand-made states of ``env``: the env's own ``reset(PRNGKey(0))`` first (the fixed
    start (1, 1) facing east, or one random start), then ``scenario_specs(env.size)``."""
    start = Scenario("start", reset_state(jax.random.PRNGKey(0), env.size, env.random_start), f"{env.name} reset(PRNGKey(0))")
    rest = [Scenario(name, make_state(pos, d), caption) for name, (pos, d, caption) in scenario_specs(env.size).items()]
    return (start, *rest)


OUTCOMES = ("running", "goal", "timeout")
GOAL_OUTCOME, TIMEOUT_OUTCOME = 1, 2

TASK = Task(
    family="empty",
    action_names=("left", "right", "forward"),
    action_keys=("ArrowLeft", "ArrowRight", "ArrowUp"),
    objects=("empty", "wall", "goal"),
    # The compact state has no grid to edit (walls and goal are fixed by the size).
    editable=("empty",),
    outcomes=OUTCOMES,
    success="goal",
    failures=(),
    details=(),
    direction=("forward", "right"),
    return_range=(0.0, 1.0),
    scenarios=scenarios,
    # Same cell, only the direction differs: the goal in front vs a wall in front (goal to the
    # left), and vs the goal behind.
    pairs={"goal_ahead_vs_wall_ahead": ("goal_ahead", "wall_ahead"), "goal_ahead_vs_facing_away": ("goal_ahead", "facing_away")},
    presets={},
)

# id -> constructor kwargs, as `minigrid/__init__.py` registers them; Random-8x8 and Random-16x16
# are dtjax additions (EmptyEnv(size, agent_start_pos=None)).
IDS = {
    "MiniGrid-Empty-5x5-v0": {"size": 5, "random_start": False},
    "MiniGrid-Empty-Random-5x5-v0": {"size": 5, "random_start": True},
    "MiniGrid-Empty-6x6-v0": {"size": 6, "random_start": False},
    "MiniGrid-Empty-Random-6x6-v0": {"size": 6, "random_start": True},
    "MiniGrid-Empty-8x8-v0": {"size": 8, "random_start": False},
    "MiniGrid-Empty-Random-8x8-v0": {"size": 8, "random_start": True},
    "MiniGrid-Empty-16x16-v0": {"size": 16, "random_start": False},
    "MiniGrid-Empty-Random-16x16-v0": {"size": 16, "random_start": True},
}
# What `envs.make` may override: max_steps (EnvParams) and obs_mode (constructor).
OVERRIDES = ("max_steps", "obs_mode")
ENV_CLASS = Empty
