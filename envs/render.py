"""Rendering outside jit: an RGB frame of a state, and episodes written as GIFs.

A small numpy tile renderer in MiniGrid's palette (grey walls, green goal, blue balls, a red
triangle for the agent, its 7x7 view highlighted), so reports can show what the agent saw.
"""

from __future__ import annotations

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
    """An RGB uint8 frame (size*tile, size*tile, 3) of one (unbatched) ``EnvState``."""
    size = env.size
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


def save_gif(frames, path: str, fps: int = 4) -> None:
    """Write RGB frames (a list of (H, W, 3) uint8 arrays) to an animated GIF."""
    from PIL import Image

    frames = [Image.fromarray(np.asarray(f, np.uint8)) for f in frames]
    if not frames:
        raise ValueError("save_gif needs at least one frame")
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=int(1000 / fps), loop=0)
