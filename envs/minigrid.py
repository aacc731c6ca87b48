"""MiniGrid constants and observation encoders, as in `minigrid/core/constants.py` (minigrid 3.2).

The cell codes the ported families use: empty (1,0,0), wall (2,5,0), blue ball (6,2,0) and goal
(8,1,0) (Dynamic Obstacles, Empty); green key (5,1,0), green ball (6,1,0) and unseen (0,0,0)
(Memory, whose view is occluded). Cell *types* below are small ints local to this port; the
encoders map them to MiniGrid's (object, colour, state) codes. `process_vis` is MiniGrid's
occlusion (walls block sight) as a pure function, for any family that does not see through walls.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

OBJECT_TO_IDX = {"unseen": 0, "empty": 1, "wall": 2, "floor": 3, "door": 4, "key": 5, "ball": 6, "box": 7, "goal": 8, "lava": 9, "agent": 10}
COLOR_TO_IDX = {"red": 0, "green": 1, "blue": 2, "purple": 3, "yellow": 4, "grey": 5}
STATE_TO_IDX = {"open": 0, "closed": 1, "locked": 2}

# Cell types of this port (indices into the lookup tables below). BALL is Dynamic Obstacles' blue
# ball; KEY and GREEN_BALL are Memory's green objects; UNSEEN is a cell the agent cannot see.
EMPTY, WALL, BALL, GOAL, KEY, GREEN_BALL, UNSEEN = 0, 1, 2, 3, 4, 5, 6
# (object, colour, state) code of each cell type, MiniGrid's `WorldObj.encode()` (unseen: the
# zeros `Grid.encode` leaves in a cell its visibility mask hides).
CELL_CODES = np.array([[1, 0, 0], [2, 5, 0], [6, 2, 0], [8, 1, 0], [5, 1, 0], [6, 1, 0], [0, 0, 0]], dtype=np.uint8)
# One-hot (20 = 11 object + 6 colour + 3 state bits) of each cell type, as OneHotPartialObsWrapper.
N_ONE_HOT = len(OBJECT_TO_IDX) + len(COLOR_TO_IDX) + len(STATE_TO_IDX)
CELL_ONE_HOT = np.zeros((len(CELL_CODES), N_ONE_HOT), dtype=np.uint8)
for _t, (_o, _c, _s) in enumerate(CELL_CODES):
    CELL_ONE_HOT[_t, _o] = 1
    CELL_ONE_HOT[_t, len(OBJECT_TO_IDX) + _c] = 1
    CELL_ONE_HOT[_t, len(OBJECT_TO_IDX) + len(COLOR_TO_IDX) + _s] = 1
AGENT_CODE = (OBJECT_TO_IDX["agent"], COLOR_TO_IDX["red"])  # FullyObsWrapper: (10, 0, dir)

# DIR_TO_VEC: 0 = east, 1 = south, 2 = west, 3 = north (y points down).
DIR_TO_VEC = np.array([[1, 0], [0, 1], [-1, 0], [0, -1]], dtype=np.int32)
VIEW_SIZE = 7  # agent_view_size

# OFFS[d, i, j] = f_d * (6 - j) + r_d * (i - 3): the world offset of view cell image[i, j]
# for direction d, where f = DIR_TO_VEC[d] and r = (-f_y, f_x) is the agent's right.
_i, _j = np.meshgrid(np.arange(VIEW_SIZE), np.arange(VIEW_SIZE), indexing="ij")
VIEW_OFFSETS = np.stack(
    [
        DIR_TO_VEC[d][None, None, :] * (VIEW_SIZE - 1 - _j)[..., None]
        + np.array([-DIR_TO_VEC[d][1], DIR_TO_VEC[d][0]])[None, None, :] * (_i - VIEW_SIZE // 2)[..., None]
        for d in range(4)
    ]
).astype(np.int32)  # (4, 7, 7, 2)

# King moves, in a fixed order (the choice among them is uniform, so the order is irrelevant).
NEIGH8 = np.array([[-1, -1], [0, -1], [1, -1], [-1, 0], [1, 0], [-1, 1], [0, 1], [1, 1]], dtype=np.int32)


def grid_coords(size: int) -> np.ndarray:
    """World coordinates (size, size, 2) int32 of every cell, indexed [x, y] like MiniGrid's grid."""
    xs, ys = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    return np.stack([xs, ys], -1).astype(np.int32)


def encode_image(types: jnp.ndarray) -> jnp.ndarray:
    """Cell types (..., ) int -> MiniGrid codes (..., 3) uint8."""
    return jnp.asarray(CELL_CODES)[types]


def encode_one_hot(types: jnp.ndarray) -> jnp.ndarray:
    """Cell types (...,) int -> OneHotPartialObsWrapper bits (..., 20) uint8."""
    return jnp.asarray(CELL_ONE_HOT)[types]


def _sweep_rows(mask_row, clear):
    """One row of `process_vis`: the left-to-right then right-to-left passes over ``mask_row``
    (7,) bool given which cells let sight through (``clear``); returns (row, marks on the row above).

    Left to right, a visible clear cell i < 6 marks i+1 (so visibility runs right until a wall,
    which is marked but stops it); right to left, a visible clear cell i > 0 marks i-1. Each
    processed visible clear cell marks the cells above it and above its pass's next cell.
    """
    n = mask_row.shape[0]
    idx = np.arange(n)
    blocked = (~clear).astype(jnp.int32)
    # Left to right: v[i] = any k <= i with m[k] and clear[k..i-1] (no wall strictly between).
    before = jnp.cumsum(blocked) - blocked  # walls among cells 0..i-1
    reach = (idx[None, :] <= idx[:, None]) & (before[None, :] == before[:, None])
    v = jnp.any(reach & mask_row[None, :], axis=1)
    # Right to left: w[i] = any k >= i with v[k] and clear[i+1..k].
    upto = jnp.cumsum(blocked)  # walls among cells 0..i
    reach = (idx[None, :] >= idx[:, None]) & (upto[None, :] == upto[:, None])
    w = jnp.any(reach & v[None, :], axis=1)
    a = (v & clear).at[n - 1].set(False)  # left-to-right pass processes i = 0..n-2
    b = (w & clear).at[0].set(False)  # right-to-left pass processes i = n-1..1
    up = a | jnp.roll(a, 1).at[0].set(False) | b | jnp.roll(b, -1).at[n - 1].set(False)
    return w, up


def process_vis(clear: jnp.ndarray) -> jnp.ndarray:
    """MiniGrid's ``Grid.process_vis`` on the agent's rotated (7, 7) view, a pure function.

    ``clear`` (7, 7) bool, [i, j]: the cells that do not block sight (``see_behind``: everything
    but walls, cells off the grid included as walls). Returns the visibility mask (7, 7) bool: the
    agent's cell [3, 6] is visible; rows are swept from j = 6 up to 0, each by `_sweep_rows`,
    whose marks on the row above seed the next row.
    """
    rows = []
    seed = jnp.zeros((VIEW_SIZE,), bool).at[VIEW_SIZE // 2].set(True)
    for j in reversed(range(VIEW_SIZE)):
        row, up = _sweep_rows(seed, clear[:, j])
        rows.append(row)
        seed = up
    return jnp.stack(rows[::-1], axis=1)


def observe_grid(cell_type, agent_pos, agent_dir, size: int, obs_mode: str = "image", occlude: bool = False,
                 carried=EMPTY) -> jnp.ndarray:
    """An observation of a grid world whose cells ``cell_type(xy (..., 2)) -> types`` answers, the
    agent at ``agent_pos`` facing ``agent_dir``; every family's ``observe``.

    ``occlude`` (static): walls block sight as MiniGrid's ``see_through_walls=False`` does
    (`process_vis`; hidden cells read unseen); Dynamic Obstacles and Empty see through walls
    (False). ``carried``: the cell type the agent's own view cell shows (MiniGrid puts the carried
    object there; ``EMPTY`` when it carries nothing).

    - "image": (7, 7, 3) uint8, MiniGrid's ``obs["image"]``, indexed [view_x, view_y]; the agent
      is at [3, 6] facing towards j = 0; cells off the grid read as walls; the agent's own cell
      reads ``carried``.
    - "one_hot": (7, 7, 20) uint8, as ``OneHotPartialObsWrapper``.
    - "full": (size, size, 3) uint8, as ``FullyObsWrapper`` ([x, y], agent as (10, 0, dir)).
    """
    if obs_mode == "full":
        img = encode_image(cell_type(jnp.asarray(grid_coords(size))))
        agent = jnp.stack([jnp.uint8(AGENT_CODE[0]), jnp.uint8(AGENT_CODE[1]), agent_dir.astype(jnp.uint8)])
        return img.at[agent_pos[0], agent_pos[1]].set(agent)
    world = agent_pos + jnp.asarray(VIEW_OFFSETS)[agent_dir]  # (7, 7, 2)
    types = cell_type(world)
    if occlude:
        types = jnp.where(process_vis(types != WALL), types, UNSEEN)
    types = types.at[VIEW_SIZE // 2, VIEW_SIZE - 1].set(carried)  # the agent's own cell
    if obs_mode == "one_hot":
        return encode_one_hot(types)
    return encode_image(types)
