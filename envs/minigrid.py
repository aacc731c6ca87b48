"""MiniGrid constants and observation encoders, as in `minigrid/core/constants.py` (minigrid 3.2).

Only four cell codes occur in Dynamic Obstacles: empty (1,0,0), wall (2,5,0), ball (6,2,0),
goal (8,1,0). Cell *types* below are small ints local to this port; the encoders map them to
MiniGrid's (object, colour, state) codes.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

OBJECT_TO_IDX = {"unseen": 0, "empty": 1, "wall": 2, "floor": 3, "door": 4, "key": 5, "ball": 6, "box": 7, "goal": 8, "lava": 9, "agent": 10}
COLOR_TO_IDX = {"red": 0, "green": 1, "blue": 2, "purple": 3, "yellow": 4, "grey": 5}
STATE_TO_IDX = {"open": 0, "closed": 1, "locked": 2}

# Cell types of this port (indices into the lookup tables below).
EMPTY, WALL, BALL, GOAL = 0, 1, 2, 3
# (object, colour, state) code of each cell type, MiniGrid's `WorldObj.encode()`.
CELL_CODES = np.array([[1, 0, 0], [2, 5, 0], [6, 2, 0], [8, 1, 0]], dtype=np.uint8)
# One-hot (20 = 11 object + 6 colour + 3 state bits) of each cell type, as OneHotPartialObsWrapper.
N_ONE_HOT = len(OBJECT_TO_IDX) + len(COLOR_TO_IDX) + len(STATE_TO_IDX)
CELL_ONE_HOT = np.zeros((4, N_ONE_HOT), dtype=np.uint8)
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


def observe_grid(cell_type, agent_pos, agent_dir, size: int, obs_mode: str = "image") -> jnp.ndarray:
    """An observation of a grid world whose cells ``cell_type(xy (..., 2)) -> types`` answers, the
    agent at ``agent_pos`` facing ``agent_dir``; every family's ``observe`` (nothing is occluded:
    the ported families see through walls).

    - "image": (7, 7, 3) uint8, MiniGrid's ``obs["image"]``, indexed [view_x, view_y]; the agent
      is at [3, 6] facing towards j = 0; cells off the grid read as walls; the agent's own cell
      reads empty.
    - "one_hot": (7, 7, 20) uint8, as ``OneHotPartialObsWrapper``.
    - "full": (size, size, 3) uint8, as ``FullyObsWrapper`` ([x, y], agent as (10, 0, dir)).
    """
    if obs_mode == "full":
        img = encode_image(cell_type(jnp.asarray(grid_coords(size))))
        agent = jnp.stack([jnp.uint8(AGENT_CODE[0]), jnp.uint8(AGENT_CODE[1]), agent_dir.astype(jnp.uint8)])
        return img.at[agent_pos[0], agent_pos[1]].set(agent)
    world = agent_pos + jnp.asarray(VIEW_OFFSETS)[agent_dir]  # (7, 7, 2)
    types = cell_type(world).at[VIEW_SIZE // 2, VIEW_SIZE - 1].set(EMPTY)  # the agent's own cell
    if obs_mode == "one_hot":
        return encode_one_hot(types)
    return encode_image(types)
