"""MiniGrid Memory in JAX, step for step as `minigrid/envs/memory.py` (3.2) and the original
MemoryDT project's fork of it (see docs/envs.md).

The agent starts in a small room holding one green object, the *instruction* (a key or a ball, at
(1, h-1) with h = size // 2), walks a hallway to a junction where a key and a ball lie at the ends
of a vertical corridor, and must step onto the cell next to the object matching the instruction:
success gives ``1 - 0.9 * step_count / max_steps`` and ends the episode; the cell next to the
other object ends it with 0. Walls block sight (MiniGrid's ``see_through_walls=False``).

Two kinds of ids:
- MiniGrid's own (``MiniGrid-MemoryS{7,9,11,13}-v0``, ``-S13Random-v0``, ``-S17Random-v0``):
  the start is (x, h) facing east with x uniform in 1..hallway_end; the Random ids first draw the
  hallway's end uniformly in 4..size-3 (else it is size-3); pickup is turned into toggle, so
  nothing is ever carried. ``max_steps`` 5 * size**2.
- The original's fork (``MiniGrid-MemoryS7FixedStart-v0``, ``-S7RandomDirection-v0``): size 7,
  pickup and drop work (the instruction object can be carried: it is then shown on the agent's
  own view cell, and dropped on an empty cell in front), the start is (1, 3) east, or (x in 1..4,
  3) with a uniform direction. ``max_steps`` 1000.

State is compact: the agent, the step count, the layout draws (instruction, top object, hallway
end) and where the instruction object is (or that it is carried). There is no grid array: every
cell query is arithmetic (`cell_type`). Phases, each a pure module-level function:
- `reset_state`: the reset distribution (hallway end, start, instruction, end objects);
- `transition`: the whole step (Memory has no randomness after the reset);
- `observe`: the (7,7,3) ``image`` with MiniGrid's occlusion, its one-hot (7,7,20) form, or the
  full (S,S,3) view (``FullyObsWrapper``: no occlusion, the carried object not shown).

Only the instruction object can be picked up: the end objects border only the two terminal
cells, walls and (on grids above 7) the unreachable ends of the vertical corridor.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from gymnax.environments import spaces

from envs import minigrid as mg
from envs.base import GridEnv
from envs.minigrid import EMPTY, KEY, WALL
from envs.task import Scenario, Task

OBS_MODES = ("image", "one_hot", "full")
STARTS = ("fixed", "random_x", "random_x_dir")  # (1, h) east | x in 1..hallway_end east | x in 1..4, any dir
OBJECT_KINDS = ("key", "ball")  # the kind codes of EnvState.instruction / .top (cell type KEY + kind)
CARRIED_POS = (-1, -1)  # obj_pos while the instruction object is carried (off the grid, as MiniGrid's cur_pos)


@struct.dataclass
class EnvState:
    """The whole state of one episode.

    The layout draws are ``instruction`` (the start-room object), ``top`` (the object at the top
    end of the vertical corridor; the bottom one is the other kind) and ``hallway_end`` (x of the
    wall column with the doorway to the junction; size-3 except on the random-length ids). The
    instruction object lies at ``obj_pos`` unless ``carrying`` (then obj_pos is ``CARRIED_POS``).
    """

    agent_pos: jax.Array  # (2,) int32, MiniGrid (x, y); x right, y down
    agent_dir: jax.Array  # () int32, 0=E 1=S 2=W 3=N
    time: jax.Array  # () int32, MiniGrid's step_count
    instruction: jax.Array  # () int32, 0 key, 1 ball (OBJECT_KINDS)
    top: jax.Array  # () int32, kind of the top end object, 0 key, 1 ball
    obj_pos: jax.Array  # (2,) int32, cell of the instruction object; CARRIED_POS while carried
    carrying: jax.Array  # () bool, the agent carries the instruction object (the fork only)
    hallway_end: jax.Array  # () int32


@struct.dataclass
class EnvParams:
    max_steps_in_episode: int = 1000  # 1000 for the fork's ids, 5 * size**2 for MiniGrid's


# ---------------------------------------------------------------------------------------------
# PHASES (pure functions)
# ---------------------------------------------------------------------------------------------


def _is(xy, cell) -> jax.Array:
    return (xy[..., 0] == cell[0]) & (xy[..., 1] == cell[1])


def end_cells(state: EnvState, size: int) -> tuple[jax.Array, jax.Array]:
    """(success cell, failure cell) (2,) int32: the cell below the top object if it matches the
    instruction, else the cell above the bottom object; the other one fails."""
    h = size // 2
    x = state.hallway_end + 1
    upper = jnp.stack([x, jnp.asarray(h - 1, x.dtype)])
    lower = jnp.stack([x, jnp.asarray(h + 1, x.dtype)])
    match_top = state.instruction == state.top
    return jnp.where(match_top, upper, lower), jnp.where(match_top, lower, upper)


def is_wall(x, y, size: int, e):
    """Whether world cell (x, y) is a wall, hallway end ``e`` (numpy or jnp; off-grid cells are walls).

    MiniGrid's ``_gen_grid`` (h = size // 2): the border; the start room's walls at x 1..4 on rows
    h-2 and h+2 and at (4, h-1), (4, h+1); the hallway's walls at x 5..e-1 on rows h-1 and h+1;
    the column x = e except the doorway (e, h), and the column x = e+2.
    """
    h = size // 2
    return (
        (x <= 0) | (y <= 0) | (x >= size - 1) | (y >= size - 1)
        | ((x >= 1) & (x <= 4) & ((y == h - 2) | (y == h + 2)))
        | ((x == 4) & ((y == h - 1) | (y == h + 1)))
        | ((x >= 5) & (x < e) & ((y == h - 1) | (y == h + 1)))
        | ((x == e) & (y != h))
        | (x == e + 2)
    )


def cell_type(xy: jax.Array, state: EnvState, size: int) -> jax.Array:
    """Type (EMPTY, WALL, KEY, GREEN_BALL) of world cells ``xy`` (..., 2); off-grid cells are walls.

    The walls (`is_wall`), then the objects at (e+1, h-2) (top), (e+1, h+2) (bottom) and
    ``obj_pos`` (the instruction, unless carried). ``size`` may be traced.
    """
    x, y = xy[..., 0], xy[..., 1]
    h, e = size // 2, state.hallway_end
    wall = is_wall(x, y, size, e)
    top = (x == e + 1) & (y == h - 2)
    bottom = (x == e + 1) & (y == h + 2)
    instr = _is(xy, state.obj_pos) & ~state.carrying
    obj = jnp.where(top, KEY + state.top, jnp.where(bottom, KEY + 1 - state.top, KEY + state.instruction))
    return jnp.where(wall, WALL, jnp.where(top | bottom | instr, obj, EMPTY)).astype(jnp.int32)


_VIS_CHUNK = 4096  # one compile of the vmapped process_vis serves every size's table


@functools.cache
def visibility_table(size: int) -> np.ndarray:
    """What the agent sees, (hallway end - 4, x, y, dir, 7, 7) bool: `envs.minigrid.process_vis`
    of the view of every cell and direction of every layout of side ``size``.

    Memory's walls are fixed by the size and the hallway end, and keys and balls never block
    sight, so the visibility mask is a function of (hallway end, agent cell, direction): the
    observation gathers it instead of sweeping the view each step (7x faster on CPU).
    """
    ends = np.arange(4, size - 2)
    e, x, y, d = (a.ravel() for a in np.meshgrid(ends, np.arange(size), np.arange(size), np.arange(4), indexing="ij"))
    world = np.stack([x, y], -1)[:, None, None, :] + mg.VIEW_OFFSETS[d]  # (N, 7, 7, 2)
    clear = ~is_wall(world[..., 0], world[..., 1], size, e[:, None, None])
    n = len(clear)
    padded = np.concatenate([clear, np.ones((-n % _VIS_CHUNK, 7, 7), bool)])
    with jax.ensure_compile_time_eval():  # computed now even when first asked inside a jit trace
        vis = np.concatenate([np.asarray(_process_vis_batch(c)) for c in np.split(padded, len(padded) // _VIS_CHUNK)])
    return vis[:n].reshape(len(ends), size, size, 4, mg.VIEW_SIZE, mg.VIEW_SIZE)


_process_vis_batch = jax.jit(jax.vmap(mg.process_vis))


@functools.cache
def view_table(size: int) -> np.ndarray:
    """The static part of every view, (hallway end - 4, x, y, dir, 7, 7) int8 cell types: WALL or
    EMPTY where `visibility_table` sees the cell, else UNSEEN (`observe` then puts the objects)."""
    ends = np.arange(4, size - 2)
    e, x, y, d = np.meshgrid(ends, np.arange(size), np.arange(size), np.arange(4), indexing="ij")
    world = np.stack([x, y], -1)[..., None, None, :] + mg.VIEW_OFFSETS[d]  # (E, S, S, 4, 7, 7, 2)
    wall = is_wall(world[..., 0], world[..., 1], size, e[..., None, None])
    return np.where(visibility_table(size), np.where(wall, mg.WALL, mg.EMPTY), mg.UNSEEN).astype(np.int8)


def make_state(agent_pos, agent_dir: int, instruction: int, top: int, size: int = 7, time: int = 0,
               hallway_end: int | None = None, obj_pos=None, carrying: bool = False) -> EnvState:
    """An ``EnvState``: the agent at ``agent_pos`` facing ``agent_dir`` (0=E 1=S 2=W 3=N), the
    instruction and top object kinds (0 key, 1 ball), the hallway end (default size-3), the
    instruction object at ``obj_pos`` (default its start (1, size//2 - 1)) or carried."""
    h = size // 2
    if carrying:
        obj_pos = CARRIED_POS
    elif obj_pos is None:
        obj_pos = (1, h - 1)
    return EnvState(
        agent_pos=jnp.asarray(agent_pos, jnp.int32), agent_dir=jnp.int32(agent_dir), time=jnp.int32(time),
        instruction=jnp.int32(instruction), top=jnp.int32(top), obj_pos=jnp.asarray(obj_pos, jnp.int32),
        carrying=jnp.asarray(carrying, bool), hallway_end=jnp.int32(size - 3 if hallway_end is None else hallway_end),
    )


def _below(u: jax.Array, n) -> jax.Array:
    """floor(u * n / 2**32) for uint32 ``u`` and 1 <= n < 2**16: a draw uniform on 0..n-1 from 32
    random bits (multiply-high, in 16-bit halves so nothing overflows; bias below n / 2**32)."""
    n = jnp.asarray(n).astype(jnp.uint32)
    hi, lo = u >> 16, u & 0xFFFF
    return ((hi * n + ((lo * n) >> 16)) >> 16).astype(jnp.int32)


def reset_state(key: jax.Array, size: int, start: str, random_length: bool) -> EnvState:
    """A fresh episode with the reset distribution of MiniGrid's ``_gen_grid`` (or the fork's).

    In MiniGrid's order: the hallway end (random-length ids: uniform in 4..size-3, else size-3),
    the start (``start``: see `STARTS`), the instruction (key or ball), the end objects ((top,
    bottom) = (ball, key) or (key, ball)), each uniform, from one draw of 5 random words.
    """
    u = jax.random.bits(key, (5,), jnp.uint32)
    h = size // 2
    e = 4 + _below(u[0], size - 6) if random_length else jnp.int32(size - 3)
    x, d = jnp.int32(1), jnp.int32(0)
    if start == "random_x":
        x = 1 + _below(u[1], e)
    elif start == "random_x_dir":
        x = 1 + _below(u[1], 4)
        d = _below(u[2], 4)
    return EnvState(
        agent_pos=jnp.stack([x, jnp.int32(h)]).astype(jnp.int32), agent_dir=d, time=jnp.int32(0),
        instruction=_below(u[3], 2), top=1 - _below(u[4], 2),  # the end-objects draw 0 = (ball, key)
        obj_pos=jnp.asarray((1, h - 1), jnp.int32), carrying=jnp.asarray(False), hallway_end=jnp.asarray(e, jnp.int32),
    )


def transition(state: EnvState, action: jax.Array, max_steps, size: int, fork: bool):
    """The step: (state', reward, terminated, truncated, info), as ``MemoryEnv.step``.

    ``MiniGridEnv.step``: left/right turn; forward moves onto an empty cell (walls and objects
    block); with ``fork`` (a bool, static or traced), pickup takes the instruction object in front if nothing is
    carried, and drop puts the carried object on the empty cell in front; without it (MiniGrid's
    own ids) pickup is toggle and, nothing being carried, drop, toggle and done only spend the
    step (as does any action outside 0..6). Then the position: on the success cell reward
    ``1 - 0.9 * t / T`` and terminated, on the failure cell 0 and terminated; truncated when
    ``t >= T``. ``info["outcome"]``: an index into ``TASK.outcomes`` (success, wrong, else timeout
    when truncated, else running).
    """
    action = jnp.asarray(action).astype(jnp.int32)
    fwd = state.agent_pos + jnp.asarray(mg.DIR_TO_VEC)[state.agent_dir]
    front = cell_type(fwd, state, size)
    time = state.time + 1
    agent_dir = jnp.where(action == 0, (state.agent_dir - 1) % 4, jnp.where(action == 1, (state.agent_dir + 1) % 4, state.agent_dir))
    agent_pos = jnp.where((action == 2) & (front == EMPTY), fwd, state.agent_pos)
    obj_pos, carrying = state.obj_pos, state.carrying
    pick = fork & (action == 3) & ~carrying & _is(fwd, obj_pos)
    drop = fork & (action == 4) & carrying & (front == EMPTY)
    obj_pos = jnp.where(pick, jnp.asarray(CARRIED_POS, jnp.int32), jnp.where(drop, fwd, obj_pos))
    carrying = (carrying | pick) & ~drop
    new_state = state.replace(agent_pos=agent_pos, agent_dir=agent_dir.astype(jnp.int32), time=time, obj_pos=obj_pos,
                              carrying=carrying)
    success_cell, failure_cell = end_cells(state, size)
    success = _is(agent_pos, success_cell)
    wrong = _is(agent_pos, failure_cell)
    reward = jnp.where(success, 1.0 - 0.9 * (time / max_steps), 0.0).astype(jnp.float32)
    truncated = time >= max_steps
    outcome = jnp.where(success, SUCCESS_OUTCOME, jnp.where(wrong, WRONG_OUTCOME, jnp.where(truncated, TIMEOUT_OUTCOME, 0)))
    return new_state, reward, success | wrong, truncated, {"outcome": outcome.astype(jnp.int32)}


def observe(state: EnvState, size: int, obs_mode: str = "image") -> jax.Array:
    """The agent's observation of ``state``.

    - "image": (7, 7, 3) uint8, MiniGrid's ``obs["image"]``, indexed [view_x, view_y]; the agent
      is at [3, 6] facing towards j = 0; cells off the grid read as walls; cells hidden behind
      walls (`envs.minigrid.process_vis`) read unseen (0, 0, 0); the agent's own cell shows the
      carried object, else empty. The walls and what is hidden are looked up (`view_table`),
      then the three objects are put where they are seen.
    - "one_hot": (7, 7, 20) uint8, as ``OneHotPartialObsWrapper``.
    - "full": (size, size, 3) uint8, as ``FullyObsWrapper`` ([x, y], agent as (10, 0, dir)).
    """
    carried = jnp.where(state.carrying, KEY + state.instruction, EMPTY)
    if obs_mode == "full":
        return mg.observe_grid(lambda xy: cell_type(xy, state, size), state.agent_pos, state.agent_dir, size, obs_mode)
    pos, d, h, e = state.agent_pos, state.agent_dir, size // 2, state.hallway_end
    types = jnp.asarray(view_table(size))[e - 4, pos[0], pos[1], d].astype(jnp.int32)
    f = jnp.asarray(mg.DIR_TO_VEC)[d]
    right = jnp.stack([-f[1], f[0]])
    objects = ((jnp.stack([e + 1, jnp.int32(h - 2)]), KEY + state.top, True),
               (jnp.stack([e + 1, jnp.int32(h + 2)]), KEY + 1 - state.top, True),
               (state.obj_pos, KEY + state.instruction, ~state.carrying))
    for cell, kind, present in objects:  # the world cell -> view [i, j] (VIEW_OFFSETS inverted)
        rel = cell - pos
        i, j = mg.VIEW_SIZE // 2 + rel @ right, mg.VIEW_SIZE - 1 - rel @ f
        inside = present & (i >= 0) & (i < mg.VIEW_SIZE) & (j >= 0) & (j < mg.VIEW_SIZE)
        i, j = jnp.clip(i, 0, mg.VIEW_SIZE - 1), jnp.clip(j, 0, mg.VIEW_SIZE - 1)
        types = types.at[i, j].set(jnp.where(inside & (types[i, j] != mg.UNSEEN), kind, types[i, j]))
    types = types.at[mg.VIEW_SIZE // 2, mg.VIEW_SIZE - 1].set(carried)  # the agent's own cell
    return mg.encode_one_hot(types) if obs_mode == "one_hot" else mg.encode_image(types)


# ---------------------------------------------------------------------------------------------
# THE ENVIRONMENT (gymnax 1.x API)
# ---------------------------------------------------------------------------------------------


class Memory(GridEnv):
    """`MiniGrid-Memory*`: remember the start room's object, go to its match at the junction.

    Static attributes (they fix shapes or control flow, so changing one recompiles): ``size``
    (odd, >= 7), ``start`` (`STARTS`), ``random_length``, ``fork`` (pickup and drop work, as the
    original's fork) and ``obs_mode``. ``EnvParams.max_steps_in_episode`` is traced. Actions
    0 left, 1 right, 2 forward, 3 pickup, 4 drop, 5 toggle, 6 done. ``step`` (auto-reset),
    ``reset`` and ``is_truncated`` come from `envs.base.GridEnv`.
    """

    ID_PREFIX = "MiniGrid-Memory"
    OBSERVE_SELECTED = True  # a Memory view costs as much after a reset as after a step

    def __init__(self, size: int = 7, start: str = "random_x", random_length: bool = False, fork: bool = False,
                 obs_mode: str = "image"):
        super().__init__()
        if obs_mode not in OBS_MODES:
            raise ValueError(f"obs_mode must be one of {', '.join(OBS_MODES)}; got {obs_mode!r}")
        if start not in STARTS:
            raise ValueError(f"start must be one of {', '.join(STARTS)}; got {start!r}")
        if size < 7 or size % 2 == 0:
            raise ValueError(f"size must be odd and at least 7, got {size}")
        if start == "random_x_dir" and random_length:
            raise ValueError("start 'random_x_dir' (x in 1..4) needs a fixed hallway (random_length=False)")
        self.size = int(size)
        self.start = start
        self.random_length = bool(random_length)
        self.fork = bool(fork)
        self.obs_mode = obs_mode

    @property
    def random_start(self) -> bool:
        return self.start != "fixed"

    @property
    def static(self) -> tuple:
        return (self.size, self.start, self.random_length, self.fork, self.obs_mode)

    @property
    def name(self) -> str:
        for env_id, kwargs in IDS.items():
            if kwargs == {"size": self.size, "start": self.start, "random_length": self.random_length, "fork": self.fork}:
                return env_id
        return f"MiniGrid-MemoryS{self.size}-custom"

    @property
    def default_params(self) -> EnvParams:
        return EnvParams(max_steps_in_episode=1000 if self.fork else 5 * self.size**2)

    def state_space(self, params: EnvParams | None = None) -> spaces.Dict:
        return spaces.Dict(
            {
                "agent_pos": spaces.Box(0, self.size - 1, (2,), jnp.int32),
                "agent_dir": spaces.Discrete(4),
                "time": spaces.Discrete((params or self.default_params).max_steps_in_episode + 1),
                "instruction": spaces.Discrete(2),
                "top": spaces.Discrete(2),
                "obj_pos": spaces.Box(-1, self.size - 1, (2,), jnp.int32),
                "carrying": spaces.Discrete(2),
                "hallway_end": spaces.Discrete(self.size - 2),
            }
        )

    def observe(self, state: EnvState, params: EnvParams | None = None) -> jax.Array:
        """The observation of ``state`` in this env's ``obs_mode`` (a pure function of the state)."""
        return observe(state, self.size, self.obs_mode)

    def grid(self, state: EnvState) -> jax.Array:
        """Cell types (size, size), indexed [x, y] (the carried object is not on the grid)."""
        return cell_type(jnp.asarray(mg.grid_coords(self.size)), state, self.size)

    def carried(self, state: EnvState) -> jax.Array:
        """The cell type the agent carries (KEY or GREEN_BALL), EMPTY when none (drawn on its cell)."""
        return jnp.where(state.carrying, KEY + state.instruction, EMPTY)

    def reset_env(self, key: jax.Array, params: EnvParams) -> tuple[jax.Array, EnvState]:
        state = reset_state(key, self.size, self.start, self.random_length)
        return self.observe(state), state

    def step_env(self, key, state, action, params):
        """One step without auto-reset (gymnax's ``step_env``): (obs, state, reward, terminated, info).

        ``key`` is unused (Memory's step is deterministic); ``info``: ``truncated`` and ``outcome``.
        """
        state, reward, terminated, truncated, info = transition(state, action, params.max_steps_in_episode, self.size,
                                                                self.fork)
        return self.observe(state), state, reward, terminated, {"truncated": truncated, **info}

    @property
    def task(self) -> Task:
        return TASK


# ---------------------------------------------------------------------------------------------
# THE TASK (what front ends ask of this family; envs/task.py)
# ---------------------------------------------------------------------------------------------

LEFT, RIGHT, FORWARD = 0, 1, 2


def layout_name(instruction: int, top: int) -> str:
    """"key_key-ball": the instruction, then the end objects top-bottom (the write-up's labels)."""
    kinds = OBJECT_KINDS
    return f"{kinds[instruction]}_{kinds[top]}-{kinds[1 - top]}"


def scenarios(env: Memory) -> tuple[Scenario, ...]:
    """The hand-made states of ``env``, with the actions that reach each from its reset state.

    For each of the 4 layouts (instruction key/ball x top object key/ball; name
    `layout_name`), the reset state at (1, h) facing east (a possible start of every id) with the
    hallway at its full length (size-3), then the optimal path: ``{layout}_t{k}`` after k forwards
    for k = 0..size-4, then ``{layout}_junction`` (k = size-3: at the junction facing east, the
    decision step), and
    ``{layout}_turn``, turned toward the matching object (left = north when it is on top);
    then ``{layout}_look_back``: in the doorway facing back west at the start room. Each
    Scenario's ``actions`` are the actions taken from the layout's reset state (`Scenario`), so a
    front end replays them to build the model's context window.
    """
    size, h, e = env.size, env.size // 2, env.size - 3
    out = []
    for instruction in (0, 1):
        for top in (0, 1):
            lay = layout_name(instruction, top)
            what = f"instruction {OBJECT_KINDS[instruction]}, {OBJECT_KINDS[top]} on top"
            for k in range(e + 1):
                where = "at the start" if k == 0 else ("at the junction, the decision step" if k == e else "in the hallway")
                out.append(Scenario(f"{lay}_junction" if k == e else f"{lay}_t{k}",
                                    make_state((1 + k, h), 0, instruction, top, size, time=k),
                                    f"{what}: {where} after {k} forwards, facing east", actions=(FORWARD,) * k))
            match_top = instruction == top
            turn = LEFT if match_top else RIGHT
            out.append(Scenario(f"{lay}_turn", make_state((e + 1, h), 3 if match_top else 1, instruction, top, size, time=e + 1),
                                f"{what}: at the junction turned toward the match ({'north' if match_top else 'south'})",
                                actions=(FORWARD,) * e + (turn,)))
            out.append(Scenario(f"{lay}_look_back", make_state((e, h), 2, instruction, top, size, time=e + 1),
                                f"{what}: in the doorway facing west, back at the start room",
                                actions=(FORWARD,) * (e - 1) + (LEFT, LEFT)))
    return tuple(out)


def _pairs() -> dict[str, tuple[str, str]]:
    """Same junction state (same last frame), other instruction: only the history differs."""
    return {f"instruction_{OBJECT_KINDS[top]}_top": (f"{layout_name(top, top)}_junction", f"{layout_name(1 - top, top)}_junction")
            for top in (0, 1)}


def edit(env: Memory, state: EnvState, op: str, cell) -> EnvState:
    """Memory's grid edits (``Task.edit``; ``op`` in ``TASK.editable``): painting a key or a ball onto
    an end object sets the kinds of both ends (they are one of each), onto the start-room object (the
    instruction) sets its kind, onto free floor moves the instruction object there as that kind;
    "empty" on the instruction object takes it into the agent's hands (the fork, which can carry;
    drop puts it down again). A refused edit is a ValueError with its reason."""
    if cell is None:
        raise ValueError(f"edit {op} needs a cell [x, y]")
    x, y = cell
    h, e = env.size // 2, int(state.hallway_end)
    agent = tuple(int(v) for v in state.agent_pos)
    on_instr = not bool(state.carrying) and (x, y) == tuple(int(v) for v in state.obj_pos)
    if op == "empty":
        if on_instr:
            if not env.fork:
                raise ValueError("this env cannot carry (MiniGrid's own Memory turns pickup into toggle)")
            return state.replace(carrying=np.bool_(True), obj_pos=np.asarray((-1, -1), np.int32))
        raise ValueError(f"cell ({x}, {y}) holds no object that can be taken away (the end objects stay)")
    if op not in OBJECT_KINDS:
        raise ValueError(f"unknown edit op {op!r}; ops: {', '.join(TASK.editable)}")
    kind = np.int32(OBJECT_KINDS.index(op))
    if (x, y) == (e + 1, h - 2):
        return state.replace(top=kind)
    if (x, y) == (e + 1, h + 2):
        return state.replace(top=np.int32(1 - kind))
    if on_instr:
        return state.replace(instruction=kind)
    if (x, y) == agent:
        raise ValueError(f"cell ({x}, {y}) holds the agent")
    return state.replace(instruction=kind, obj_pos=np.asarray((x, y), np.int32), carrying=np.bool_(False))


OUTCOMES = ("running", "success", "wrong", "timeout")
SUCCESS_OUTCOME, WRONG_OUTCOME, TIMEOUT_OUTCOME = 1, 2, 3

TASK = Task(
    family="memory",
    action_names=("left", "right", "forward", "pickup", "drop", "toggle", "done"),
    action_keys=("ArrowLeft", "ArrowRight", "ArrowUp", "p", "d", "t", "x"),
    objects=("empty", "wall", "key", "ball"),
    # What a user may paint: the kinds of the instruction and end objects (key <-> ball), and
    # "empty" (move the instruction object, or take it away into the agent's hands in the fork);
    # walls are fixed by the size and the hallway end.
    editable=("empty", "key", "ball"),
    outcomes=OUTCOMES,
    success="success",
    failures=("wrong",),
    details=(),
    direction=("left", "right"),  # the junction decision (left = north when facing east)
    return_range=(0.0, 1.0),
    scenarios=scenarios,
    pairs=_pairs(),
    edit=edit,
    # A run as the original's MemoryDT (reference doc section 6): data at max_steps 50 from a
    # recurrent PPO's final policy sampled at temperature 1 and 5 (1:2, as its T1 10k / T5 20k
    # steps per env), one-hot views, a 9-step context, LayerNorm, 2 layers of 4 heads; evaluated at
    # RTG 0 (the wrong object) and 1. Measured in docs/data.md.
    presets={
        "env": {"max_steps": 50, "obs_mode": "one_hot"},
        "model": {"obs_mode": "one_hot", "n_actions": 7, "n_timesteps": 9, "max_timestep": 50, "layer_norm": True,
                  "n_layers": 2, "n_heads": 4, "d_head": 32},
        "data": {
            # lambda 0.99 (the original's) and 1M steps: 3 of 4 seeds find the memory, the 4th stays a
            # coin flip at the junction, so 3 runs train one after another and the best is kept (docs/data.md)
            "ppo": {"arch": "gru", "total_timesteps": 1_000_000, "num_envs": 64, "num_steps": 64, "num_minibatches": 4,
                    "lr": 1e-3, "gae_lambda": 0.99, "ent_coef": 0.2, "ent_coef_end": 0.0, "n_snapshots": 2, "population": 3},
            # 160k T1 + 320k T5 steps, the original's 480k
            "mix": {"ppo_rollouts": False, "final_frac": 0.16, "tempered_frac": 0.32, "tempered_temp": 5.0,
                    "random_frac": 0.0, "envs": 256},
            # windows end at a uniform step, as at evaluation: the junction decision sees the start room
            "window_end": True,
        },
        "num_steps": 4_000, "warmup_steps": 400, "log_every": 500, "eval_every": 1_000, "ckpt_every": 1_000,
        "eval_rtgs": [0.0, 1.0], "calib_points": 11,
    },
)

# id -> constructor kwargs: the original's fork (size 7, max_steps 1000) and MiniGrid 3.2's own ids.
IDS = {
    "MiniGrid-MemoryS7FixedStart-v0": {"size": 7, "start": "fixed", "random_length": False, "fork": True},
    "MiniGrid-MemoryS7RandomDirection-v0": {"size": 7, "start": "random_x_dir", "random_length": False, "fork": True},
    "MiniGrid-MemoryS7-v0": {"size": 7, "start": "random_x", "random_length": False, "fork": False},
    "MiniGrid-MemoryS9-v0": {"size": 9, "start": "random_x", "random_length": False, "fork": False},
    "MiniGrid-MemoryS11-v0": {"size": 11, "start": "random_x", "random_length": False, "fork": False},
    "MiniGrid-MemoryS13-v0": {"size": 13, "start": "random_x", "random_length": False, "fork": False},
    "MiniGrid-MemoryS13Random-v0": {"size": 13, "start": "random_x", "random_length": True, "fork": False},
    "MiniGrid-MemoryS17Random-v0": {"size": 17, "start": "random_x", "random_length": True, "fork": False},
}
# What `envs.make` may override: max_steps (EnvParams) and obs_mode (constructor).
OVERRIDES = ("max_steps", "obs_mode")
ENV_CLASS = Memory
