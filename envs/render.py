"""Rendering outside jit: an RGB frame of a state, and episodes written as GIFs.

A small numpy tile renderer in MiniGrid's palette (grey walls, green goal, blue balls, green keys
and balls, a red triangle for the agent with what it carries, its 7x7 view highlighted), so
reports can show what the agent saw. It asks the env for the cells (``env.grid(state)``) and, if
the env has one, for the carried object (``env.carried(state)``), so it draws any family.
"""

from __future__ import annotations

import jax
import numpy as np

from envs import minigrid as mg
from envs.registration import FAMILIES

TILE = 32
_COLORS = {
    "floor": (0, 0, 0),
    "grid": (100, 100, 100),
    "wall": (100, 100, 100),
    "goal": (0, 255, 0),
    "ball": (0, 0, 255),
    "green": (0, 255, 0),
    "agent": (255, 0, 0),
}


def _tile_masks(tile: int):
    yy, xx = (np.mgrid[0:tile, 0:tile] + 0.5) / tile
    circle = (xx - 0.5) ** 2 + (yy - 0.5) ** 2 <= 0.31**2
    # Agent triangle pointing east (+x); rotated per direction below.
    tri = (xx >= 0.12) & (xx <= 0.88) & (np.abs(yy - 0.5) <= 0.5 * (0.88 - xx) / 0.76 * 0.76)
    # MiniGrid's key: a ring on top, a shaft, two teeth.
    ring = (xx - 0.56) ** 2 + (yy - 0.28) ** 2
    key = ((ring <= 0.19**2) & (ring > 0.064**2)) | ((xx >= 0.50) & (xx <= 0.63) & (yy >= 0.31) & (yy <= 0.88))
    key |= (xx >= 0.38) & (xx < 0.50) & (((yy >= 0.59) & (yy <= 0.66)) | ((yy >= 0.81) & (yy <= 0.88)))
    return circle, tri, key


def _shrink(mask: np.ndarray) -> np.ndarray:
    """``mask`` at half size in the tile's lower-right quarter (a carried object on the agent's cell)."""
    n = mask.shape[0]
    out = np.zeros_like(mask)
    out[n - n // 2:, n - n // 2:] = mask[::2, ::2][: n // 2, : n // 2]
    return out


def render(state, env, highlight: bool = True, tile: int = TILE) -> np.ndarray:
    """An RGB uint8 frame (size*tile, size*tile, 3) of one (unbatched) family ``EnvState``.

    ``env`` is the env, or the grid size itself or anything with a ``.size`` (then the family is
    the one whose ``EnvState`` ``state`` is); ``EnvParams`` does not carry the size. The cells
    come from the env's ``grid(state)`` (cell types, [x, y]), so any family draws: walls, the
    goal, balls, keys, the agent (and, small on its cell, what ``env.carried(state)`` says it carries).
    Rows of the frame are y, columns x (a picture, not MiniGrid's [x, y]).
    """
    if not hasattr(env, "grid"):  # a size, or anything with a .size
        env = _env_for_state(state, int(getattr(env, "size", env)))
    size = int(env.size)
    types = np.asarray(env.grid(state))
    pos = np.asarray(state.agent_pos)
    d = int(state.agent_dir)
    carried = int(env.carried(state)) if hasattr(env, "carried") else mg.EMPTY
    img = np.zeros((size * tile, size * tile, 3), np.uint8)
    circle, tri, key = _tile_masks(tile)
    shapes = {mg.BALL: (circle, _COLORS["ball"]), mg.GREEN_BALL: (circle, _COLORS["green"]), mg.KEY: (key, _COLORS["green"])}
    view = set()
    if highlight:
        offs = mg.VIEW_OFFSETS[d].reshape(-1, 2) + pos
        view = {tuple(int(v) for v in c) for c in offs}
    for x in range(size):
        for y in range(size):
            t = img[y * tile : (y + 1) * tile, x * tile : (x + 1) * tile]
            wall = types[x, y] == mg.WALL
            if wall:
                t[:] = _COLORS["wall"]
            elif types[x, y] == mg.GOAL:
                t[:] = _COLORS["goal"]
            elif types[x, y] in shapes:
                mask, color = shapes[types[x, y]]
                t[mask] = color
            if (x, y) == tuple(pos):
                t[np.rot90(tri, k=-d)] = _COLORS["agent"]
                if carried in shapes:
                    mask, color = shapes[carried]
                    t[_shrink(mask)] = color
            if (x, y) in view:
                t[:] = np.clip(t.astype(np.int32) + 76, 0, 255).astype(np.uint8) if not wall else t
            t[0, :] = _COLORS["grid"]
            t[:, 0] = _COLORS["grid"]
    return img


def _env_for_state(state, size: int):
    """An env of ``state``'s family and side ``size`` (for `render` given a size, not an env)."""
    for family in FAMILIES:
        if isinstance(state, family.EnvState):
            return family.ENV_CLASS(size=size)
    raise ValueError(f"render: no registered family has states of type {type(state).__name__}; pass env=")


def _is_state(x) -> bool:
    return hasattr(x, "agent_pos") and hasattr(x, "agent_dir")


def save_gif(frames, path: str, env=None, fps: int = 4, **render_kwargs) -> None:
    """Write an episode to an animated GIF (Pillow, which ships with matplotlib).

    ``frames``: a list of RGB (H, W, 3) uint8 arrays, or of ``EnvState``s, or one ``EnvState``
    with a leading time axis (e.g. the states a ``lax.scan`` collected). States are drawn with
    `render`, which needs ``env`` (or the grid size).
    """
    from PIL import Image

    if _is_state(frames):  # one state, or states stacked along a leading time axis
        stacked = jax.tree.map(np.asarray, frames)
        n = stacked.agent_pos.shape[0] if stacked.agent_pos.ndim == 2 else None
        frames = [stacked] if n is None else [jax.tree.map(lambda v: v[t], stacked) for t in range(n)]
    frames = list(frames)
    if not frames:
        raise ValueError("save_gif needs at least one frame")
    if _is_state(frames[0]):
        if env is None:
            raise ValueError("save_gif got states: pass env= (or the grid size) to render them")
        frames = [render(f, env, **render_kwargs) for f in frames]
    images = [Image.fromarray(np.asarray(f, np.uint8)) for f in frames]
    images[0].save(path, save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)
