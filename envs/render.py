"""Rendering outside jit: an RGB frame of a state, and episodes written as GIFs.

A small numpy tile renderer in MiniGrid's palette (grey walls, green goal, blue balls, a red
triangle for the agent, its 7x7 view highlighted), so reports can show what the agent saw.
"""

from __future__ import annotations

import jax
import numpy as np

from envs import minigrid as mg

TILE = 32
_COLORS = {
    "floor": (0, 0, 0),
    "grid": (100, 100, 100),
    "wall": (100, 100, 100),
    "goal": (0, 255, 0),
    "ball": (0, 0, 255),
    "agent": (255, 0, 0),
}


def _tile_masks(tile: int):
    yy, xx = (np.mgrid[0:tile, 0:tile] + 0.5) / tile
    circle = (xx - 0.5) ** 2 + (yy - 0.5) ** 2 <= 0.31**2
    # Agent triangle pointing east (+x); rotated per direction below.
    tri = (xx >= 0.12) & (xx <= 0.88) & (np.abs(yy - 0.5) <= 0.5 * (0.88 - xx) / 0.76 * 0.76)
    return circle, tri


def render(state, env, highlight: bool = True, tile: int = TILE) -> np.ndarray:
    """An RGB uint8 frame (size*tile, size*tile, 3) of one (unbatched) ``EnvState``.

    ``env`` is the env (anything with ``.size``) or the grid size itself; ``EnvParams`` does not
    carry the size. Rows of the frame are y, columns x (a picture, not MiniGrid's [x, y]).
    """
    size = int(getattr(env, "size", env))
    pos = np.asarray(state.agent_pos)
    d = int(state.agent_dir)
    obstacles = {tuple(int(v) for v in o) for o in np.asarray(state.obstacles)}
    img = np.zeros((size * tile, size * tile, 3), np.uint8)
    circle, tri = _tile_masks(tile)
    view = set()
    if highlight:
        offs = mg.VIEW_OFFSETS[d].reshape(-1, 2) + pos
        view = {tuple(int(v) for v in c) for c in offs}
    for x in range(size):
        for y in range(size):
            t = img[y * tile : (y + 1) * tile, x * tile : (x + 1) * tile]
            wall = x == 0 or y == 0 or x == size - 1 or y == size - 1
            if wall:
                t[:] = _COLORS["wall"]
            elif (x, y) == (size - 2, size - 2):
                t[:] = _COLORS["goal"]
            if (x, y) in obstacles:
                t[circle] = _COLORS["ball"]
            if (x, y) == tuple(pos):
                t[np.rot90(tri, k=-d)] = _COLORS["agent"]
            if (x, y) in view:
                t[:] = np.clip(t.astype(np.int32) + 76, 0, 255).astype(np.uint8) if not wall else t
            t[0, :] = _COLORS["grid"]
            t[:, 0] = _COLORS["grid"]
    return img


def _is_state(x) -> bool:
    return hasattr(x, "agent_pos") and hasattr(x, "obstacles")


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
