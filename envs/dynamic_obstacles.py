"""MiniGrid Dynamic Obstacles in JAX, step for step as `minigrid/envs/dynamicobstacles.py` (3.2).

State is compact (agent position and direction, the ordered obstacle list, the step count): there
is no grid array. Every cell query is arithmetic (`cell_type`), so the step and the egocentric
view are gather- and switch-free, which vmaps and compiles well.

Each phase is a module-level pure function a test can call on its own:
- `reset_state`: MiniGrid's `_gen_grid` distribution (agent start, obstacles by rejection sampling),
  reproduced with one uniform draw of N (+2) numbers and sequential sampling without replacement;
- `move_obstacles`: each ball, in list order, moves to a uniform free king-move neighbour
  (seeing earlier balls' new cells), or stays with MiniGrid's probability of 101 failed tries
  (one uniform per ball);
- `transition`: the agent part of the step given the obstacles' new cells (the lock-step parity
  tests force Python's moves through it);
- `observe`: the (7,7,3) `image`, its one-hot (7,7,20) form, or the full (S,S,3) view.

Step order (MiniGrid `DynamicObstaclesEnv.step`): map action >= 3 to 0; read the front cell
BEFORE obstacles move (wall or ball = "not clear"); move obstacles; then the base step (turn, or
move forward if the front cell is now empty/goal; goal gives 1 - 0.9 t/T); finally a forward
action into a not-clear cell gives -1 and terminates, even if the ball has moved away.
"""

from __future__ import annotations


import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from gymnax.environments import spaces

from envs import minigrid as mg
from envs.base import GridEnv
from envs.minigrid import BALL, EMPTY, GOAL, WALL
from envs.task import Scenario, Task

OBS_MODES = ("image", "one_hot", "full")


@struct.dataclass
class EnvState:
    """The whole state of one episode (MiniGrid's agent_pos, agent_dir, obstacles, step_count)."""

    agent_pos: jax.Array  # (2,) int32, MiniGrid (x, y); x right, y down
    agent_dir: jax.Array  # () int32, 0=E 1=S 2=W 3=N
    obstacles: jax.Array  # (N, 2) int32 (x, y), in MiniGrid's `self.obstacles` list order
    time: jax.Array  # () int32, MiniGrid's step_count


@struct.dataclass
class EnvParams:
    max_steps_in_episode: int = 256  # MiniGrid's max_steps (4 * size**2 by default)


# ---------------------------------------------------------------------------------------------
# PHASES (pure functions)
# ---------------------------------------------------------------------------------------------


def cell_type(xy: jax.Array, obstacles: jax.Array, size: int) -> jax.Array:
    """Type (EMPTY, WALL, BALL, GOAL) of world cells ``xy`` (..., 2); off-grid cells are walls."""
    x, y = xy[..., 0], xy[..., 1]
    wall = (x <= 0) | (y <= 0) | (x >= size - 1) | (y >= size - 1)
    goal = (x == size - 2) & (y == size - 2)
    ball = jnp.any(jnp.all(xy[..., None, :] == obstacles, axis=-1), axis=-1)
    return jnp.where(wall, WALL, jnp.where(goal, GOAL, jnp.where(ball, BALL, EMPTY))).astype(jnp.int32)


def _interior_cells(size: int) -> np.ndarray:
    """Interior cells (x, y) in row-major order, shape ((size-2)**2, 2)."""
    ys, xs = np.meshgrid(np.arange(1, size - 1), np.arange(1, size - 1), indexing="ij")
    return np.stack([xs.ravel(), ys.ravel()], -1).astype(np.int32)


def _placement_pool(size: int, random_start: bool) -> np.ndarray:
    """Cells a reset may place things on, row-major: the interior minus the goal, and minus the
    fixed start (1, 1) unless the agent itself is drawn from the pool."""
    cells = _interior_cells(size)
    keep = ~np.all(cells == size - 2, axis=-1)
    if not random_start:
        keep &= ~np.all(cells == 1, axis=-1)
    return cells[keep]


def _draw_distinct(u: jax.Array, pool_size: int) -> jax.Array:
    """Indices of an ordered tuple of distinct pool cells, uniform over all such tuples.

    ``u`` (n,) uniforms in [0, 1). Draw i picks rank r_i ~ U{0..pool_size-1-i} among the cells not
    yet picked, then converts that rank to a pool index by the fixed point
    ``idx = r_i + #{earlier picks <= idx}`` (monotone, reached from below in at most i rounds):
    sequential sampling without replacement, as MiniGrid's rejection sampling, in O(n^3) scalar
    ops and n random numbers instead of a shuffle or a top-k over the whole grid.
    """
    n = u.shape[0]
    ranks = jnp.minimum((u * (pool_size - np.arange(n))).astype(jnp.int32), pool_size - 1 - np.arange(n))
    picks = []
    for i in range(n):
        idx = ranks[i]
        for _ in range(i):
            idx = ranks[i] + sum((p <= idx).astype(jnp.int32) for p in picks)
        picks.append(idx)
    return jnp.stack(picks)


def reset_state(key: jax.Array, size: int, n_obstacles: int, random_start: bool) -> EnvState:
    """A fresh episode with MiniGrid's reset distribution.

    MiniGrid places the agent (fixed (1,1) facing east, or uniform over interior non-goal cells
    with a uniform direction) and then each ball by rejection sampling over cells that are empty
    and not the agent's. The ordered (agent,) + balls tuple is thus uniform over ordered tuples of
    distinct cells of the pool (interior minus goal, minus (1, 1) for the fixed start), which
    `_draw_distinct` samples from one uniform draw of n_obstacles (+ 2 for a random start) numbers.
    """
    pool = _placement_pool(size, random_start)
    n_draw = n_obstacles + int(random_start)
    u = jax.random.uniform(key, (n_draw + int(random_start),))
    cells = jnp.asarray(pool)[_draw_distinct(u[:n_draw], pool.shape[0])]
    if random_start:
        agent_pos, obstacles = cells[0], cells[1:]
        agent_dir = jnp.minimum((u[n_draw] * 4).astype(jnp.int32), 3)
    else:
        agent_pos, obstacles = jnp.array([1, 1], jnp.int32), cells
        agent_dir = jnp.int32(0)
    return EnvState(agent_pos=agent_pos, agent_dir=agent_dir, obstacles=obstacles, time=jnp.int32(0))


# For the one-uniform neighbour choice: _BEFORE[j, l] = 1 if l < j (rank of neighbour j among free ones).
_BEFORE = np.tril(np.ones((8, 8), np.int32), -1)
# P(all 101 of MiniGrid's tries fail | k free neighbours) = ((9 - k) / 9) ** 101, k = 0..8, as a
# table: written as `((9. - k) / 9.) ** 101` under jit, XLA rewrites it to (9 - k)**101 / 9**101
# = inf / inf = NaN in float32 (found the hard way), which silently disabled the stay rule.
P_STAY = np.array([((9 - k) / 9) ** 101 for k in range(9)], np.float32)


def move_obstacles(key: jax.Array, obstacles: jax.Array, agent_pos: jax.Array, size: int) -> jax.Array:
    """Move each ball in list order to a uniform free king-move neighbour, as MiniGrid does.

    A neighbour is free if it holds no wall, goal or ball (earlier balls at their new cells, later
    ones at their old cells) and is not the agent's (pre-step) cell. MiniGrid tries 101 random
    cells of the 3x3 box (its own cell included, which is occupied) and leaves the ball in place if
    all fail: with k free neighbours that happens with probability q = ((9 - k) / 9) ** 101.

    One uniform u per ball decides both: stay if u < q, otherwise take the free neighbour of rank
    floor(k (u - q) / (1 - q)) (that rescaled number is uniform on [0, 1) given u >= q). Exact up
    to float32 resolution (2**-23 ~ 1e-7 in probability).

    Args:
      key: PRNG key (one uniform draw of shape (N,)).
      obstacles: (N, 2) int32 in list order.
      agent_pos: (2,) int32.
    Returns:
      (N, 2) int32 new positions.
    """
    n = obstacles.shape[0]
    u = jax.random.uniform(key, (n,))
    neigh = jnp.asarray(mg.NEIGH8)
    before = jnp.asarray(_BEFORE)
    for i in range(n):  # sequential by construction: ball i sees balls < i at their new cells
        cand = obstacles[i] + neigh  # (8, 2)
        free = (cell_type(cand, obstacles, size) == EMPTY) & ~jnp.all(cand == agent_pos, axis=-1)
        free_i = free.astype(jnp.int32)
        k = free_i.sum()
        q = jnp.asarray(P_STAY)[k]
        stay = (k == 0) | (u[i] < q)
        rank = jnp.minimum(((u[i] - q) / (1.0 - q) * k).astype(jnp.int32), k - 1)
        j = jnp.argmax(free & ((before * free_i).sum(-1) == rank))  # the free neighbour of that rank
        obstacles = obstacles.at[i].set(jnp.where(stay, obstacles[i], cand[j]))
    return obstacles


def transition(state: EnvState, action: jax.Array, new_obstacles: jax.Array, max_steps, size: int):
    """The step given the obstacles' new cells: (state', reward, terminated, truncated, info).

    Mirrors MiniGrid's order exactly: the front cell is checked against the OLD obstacles for the
    collision penalty and against the NEW ones for whether the agent can move. ``info``:
    ``outcome`` (an index into ``TASK.outcomes``) and ``hit_wall`` (the hit was into a wall).
    """
    action = jnp.where(action >= 3, 0, action).astype(jnp.int32)
    fwd = state.agent_pos + jnp.asarray(mg.DIR_TO_VEC)[state.agent_dir]
    before = cell_type(fwd, state.obstacles, size)
    not_clear = (before == WALL) | (before == BALL)
    after = cell_type(fwd, new_obstacles, size)
    time = state.time + 1
    forward = action == 2
    agent_dir = jnp.where(action == 0, (state.agent_dir - 1) % 4, jnp.where(action == 1, (state.agent_dir + 1) % 4, state.agent_dir))
    can_move = forward & ((after == EMPTY) | (after == GOAL))
    agent_pos = jnp.where(can_move, fwd, state.agent_pos)
    goal = forward & (after == GOAL)
    reward = jnp.where(goal, 1.0 - 0.9 * (time / max_steps), 0.0)
    hit = forward & not_clear
    reward = jnp.where(hit, -1.0, reward).astype(jnp.float32)
    terminated = goal | hit
    truncated = time >= max_steps
    new_state = EnvState(agent_pos=agent_pos, agent_dir=agent_dir.astype(jnp.int32), obstacles=new_obstacles, time=time)
    outcome = jnp.where(goal, GOAL_OUTCOME, jnp.where(hit, HIT_OUTCOME, jnp.where(truncated, TIMEOUT_OUTCOME, 0)))
    info = {"outcome": outcome.astype(jnp.int32), "hit_wall": hit & (before == WALL)}
    return new_state, reward, terminated, truncated, info


def observe(state: EnvState, size: int, obs_mode: str = "image") -> jax.Array:
    """The agent's observation of ``state``.

    - "image": (7, 7, 3) uint8, MiniGrid's ``obs["image"]``, indexed [view_x, view_y]; the agent
      is at [3, 6] facing towards j = 0; cells off the grid read as walls; nothing is occluded.
    - "one_hot": (7, 7, 20) uint8, as ``OneHotPartialObsWrapper``.
    - "full": (size, size, 3) uint8, as ``FullyObsWrapper`` ([x, y], agent as (10, 0, dir)).
    """
    return mg.observe_grid(lambda xy: cell_type(xy, state.obstacles, size), state.agent_pos, state.agent_dir, size, obs_mode)


# ---------------------------------------------------------------------------------------------
# THE ENVIRONMENT (gymnax 1.x API)
# ---------------------------------------------------------------------------------------------


class DynamicObstacles(GridEnv):
    """`MiniGrid-Dynamic-Obstacles-*`: reach the goal at (S-2, S-2) avoiding moving balls.

    Static attributes (they fix shapes or control flow, so changing one recompiles): ``size``,
    ``n_obstacles``, ``random_start`` and ``obs_mode``. ``EnvParams.max_steps_in_episode`` is
    traced. Actions: 0 = left, 1 = right, 2 = forward; any action >= 3 acts as 0, as in MiniGrid.
    ``step`` (auto-reset), ``reset`` and ``is_truncated`` come from `envs.base.GridEnv`.
    """

    ID_PREFIX = "MiniGrid-Dynamic-Obstacles-"

    def __init__(self, size: int = 8, n_obstacles: int = 4, random_start: bool = False, obs_mode: str = "image"):
        super().__init__()
        if obs_mode not in OBS_MODES:
            raise ValueError(f"obs_mode must be one of {', '.join(OBS_MODES)}; got {obs_mode!r}")
        if size < 5:
            raise ValueError(f"size must be at least 5, got {size}")
        # MiniGrid's clamp: keep n if n <= size/2 + 1, else use size/2.
        n = int(n_obstacles) if n_obstacles <= size / 2 + 1 else int(size / 2)
        if n < 1:
            raise ValueError(f"n_obstacles must be at least 1, got {n_obstacles}")
        self.size = int(size)
        self.n_obstacles = n
        self.random_start = bool(random_start)
        self.obs_mode = obs_mode

    @property
    def static(self) -> tuple:
        return (self.size, self.n_obstacles, self.random_start, self.obs_mode)

    @property
    def default_params(self) -> EnvParams:
        return EnvParams(max_steps_in_episode=4 * self.size**2)

    def state_space(self, params: EnvParams | None = None) -> spaces.Dict:
        return spaces.Dict(
            {
                "agent_pos": spaces.Box(0, self.size - 1, (2,), jnp.int32),
                "agent_dir": spaces.Discrete(4),
                "obstacles": spaces.Box(0, self.size - 1, (self.n_obstacles, 2), jnp.int32),
                "time": spaces.Discrete((params or self.default_params).max_steps_in_episode + 1),
            }
        )

    def observe(self, state: EnvState, params: EnvParams | None = None) -> jax.Array:
        """The observation of ``state`` in this env's ``obs_mode`` (a pure function of the state)."""
        return observe(state, self.size, self.obs_mode)

    def reset_env(self, key: jax.Array, params: EnvParams) -> tuple[jax.Array, EnvState]:
        state = reset_state(key, self.size, self.n_obstacles, self.random_start)
        return self.observe(state), state

    def step_env(self, key, state, action, params):
        """One step without auto-reset (gymnax's ``step_env``): (obs, state, reward, terminated, info).

        The obstacles move (``key``), then the agent acts (``transition``); ``info``: ``truncated``,
        ``outcome`` (index into ``TASK.outcomes``) and ``hit_wall``.
        ``step`` is this plus the auto-reset select: the step is assembled here only.
        """
        new_obst = move_obstacles(key, state.obstacles, state.agent_pos, self.size)
        state, reward, terminated, truncated, info = transition(state, jnp.asarray(action), new_obst,
                                                                params.max_steps_in_episode, self.size)
        return self.observe(state), state, reward, terminated, {"truncated": truncated, **info}

    def grid(self, state: EnvState) -> jax.Array:
        """Cell types (size, size), indexed [x, y], of ``state`` (the agent is not a cell type)."""
        return cell_type(jnp.asarray(mg.grid_coords(self.size)), state.obstacles, self.size)

    @property
    def task(self) -> Task:
        return TASK


# ---------------------------------------------------------------------------------------------
# THE TASK (what front ends ask of this family; envs/task.py)
# ---------------------------------------------------------------------------------------------

PARKED = (0, 0)  # a wall cell: a ball parked here is never seen (cell_type reads walls first)


def make_state(agent_pos, agent_dir: int, balls=(), n_obstacles: int = 4, time: int = 0) -> EnvState:
    """An ``EnvState`` with the agent at ``agent_pos`` (x, y) facing ``agent_dir`` (0=E 1=S 2=W 3=N)
    and balls at ``balls`` (a list of (x, y)); the remaining obstacles are parked out of sight
    (such states are for observing, not for stepping)."""
    balls = list(balls)
    if len(balls) > n_obstacles:
        raise ValueError(f"{len(balls)} balls but the env has {n_obstacles} obstacles")
    obst = balls + [PARKED] * (n_obstacles - len(balls))
    return EnvState(agent_pos=jnp.asarray(agent_pos, jnp.int32), agent_dir=jnp.int32(agent_dir),
                    obstacles=jnp.asarray(obst, jnp.int32).reshape(n_obstacles, 2), time=jnp.int32(time))


def scenario_specs(size: int = 8) -> dict[str, tuple]:
    """name -> (agent_pos, agent_dir, balls, caption) for a grid of side ``size`` (walls included).

    Facing east from (x0, y0) = (2, 3) (grids >= 6; (1, 2) in 5x5, whose goal is at (3, 3)); the
    goal and wall scenarios sit next to the goal (size-2, size-2) and the east wall. For 8x8 these
    are the states the write-up's numbers and docs/findings.md use.
    """
    x0, y0 = (2, 3) if size >= 6 else (1, 2)
    return {
        "clear_ahead": ((x0, y0), 0, [], "no ball in view, open floor ahead"),
        "ball_ahead": ((x0, y0), 0, [(x0 + 1, y0)], "ball in the cell directly in front"),
        "ball_two_ahead": ((x0, y0), 0, [(x0 + 2, y0)], "ball two cells ahead"),
        "ball_diag_left": ((x0, y0), 0, [(x0 + 1, y0 - 1)], "ball diagonally ahead-left"),
        "ball_diag_right": ((x0, y0), 0, [(x0 + 1, y0 + 1)], "ball diagonally ahead-right"),
        "ball_left": ((x0, y0), 0, [(x0, y0 - 1)], "ball directly to the left"),
        "ball_right": ((x0, y0), 0, [(x0, y0 + 1)], "ball directly to the right"),
        "goal_ahead": ((size - 3, size - 2), 0, [], "goal in the cell directly in front"),
        "wall_ahead": ((size - 2, y0), 0, [], "wall directly in front"),
    }


# MiniGrid-Dynamic-Obstacles-8x8-v0 reset(seed=0), the write-up's example state.
START_SEED0_8X8 = ((1, 1), 0, [(6, 5), (4, 2), (1, 6), (4, 4)], "MiniGrid reset(seed=0), the write-up's example")


def scenarios(env: DynamicObstacles) -> tuple[Scenario, ...]:
    """The hand-made states of ``env``: the write-up's start state first (MiniGrid's reset(seed=0)
    in the original's fixed-start 8x8 env, the env's own ``reset(PRNGKey(0))`` in any other),
    then ``scenario_specs(env.size)``."""
    if env.size == 8 and not env.random_start and env.n_obstacles == 4:
        start = Scenario("start_seed0", make_state(*START_SEED0_8X8[:3], n_obstacles=env.n_obstacles), START_SEED0_8X8[3])
    else:
        state = reset_state(jax.random.PRNGKey(0), env.size, env.n_obstacles, env.random_start)
        start = Scenario("start_seed0", state, f"{env.name} reset(PRNGKey(0))")
    rest = [Scenario(name, make_state(pos, d, balls, n_obstacles=env.n_obstacles), caption)
            for name, (pos, d, balls, caption) in scenario_specs(env.size).items()]
    return (start, *rest)


OUTCOMES = ("running", "goal", "hit", "timeout")
GOAL_OUTCOME, HIT_OUTCOME, TIMEOUT_OUTCOME = 1, 2, 3

TASK = Task(
    family="dynamic_obstacles",
    action_names=("left", "right", "forward"),
    action_keys=("ArrowLeft", "ArrowRight", "ArrowUp"),
    objects=("empty", "wall", "ball", "goal"),
    editable=("empty", "ball"),
    outcomes=OUTCOMES,
    success="goal",
    failures=("hit",),
    details=("hit_wall",),
    direction=("forward", "right"),
    return_range=(-1.0, 1.0),
    scenarios=scenarios,
    pairs={"ball_ahead_vs_clear": ("ball_ahead", "clear_ahead"), "wall_ahead_vs_clear": ("wall_ahead", "clear_ahead")},
    presets={},
)

# id -> constructor kwargs, as `minigrid/__init__.py` registers them. The Random-8x8 and
# Random-16x16 ids are dtjax additions: MiniGrid has no such registration (construct
# DynamicObstaclesEnv(size, agent_start_pos=None)).
IDS = {
    "MiniGrid-Dynamic-Obstacles-5x5-v0": {"size": 5, "n_obstacles": 2, "random_start": False},
    "MiniGrid-Dynamic-Obstacles-Random-5x5-v0": {"size": 5, "n_obstacles": 2, "random_start": True},
    "MiniGrid-Dynamic-Obstacles-6x6-v0": {"size": 6, "n_obstacles": 3, "random_start": False},
    "MiniGrid-Dynamic-Obstacles-Random-6x6-v0": {"size": 6, "n_obstacles": 3, "random_start": True},
    "MiniGrid-Dynamic-Obstacles-8x8-v0": {"size": 8, "n_obstacles": 4, "random_start": False},
    "MiniGrid-Dynamic-Obstacles-Random-8x8-v0": {"size": 8, "n_obstacles": 4, "random_start": True},
    "MiniGrid-Dynamic-Obstacles-16x16-v0": {"size": 16, "n_obstacles": 8, "random_start": False},
    "MiniGrid-Dynamic-Obstacles-Random-16x16-v0": {"size": 16, "n_obstacles": 8, "random_start": True},
}
# What `envs.make` may override: max_steps (EnvParams), obs_mode and n_obstacles (constructor).
OVERRIDES = ("max_steps", "obs_mode", "n_obstacles")
ENV_CLASS = DynamicObstacles
