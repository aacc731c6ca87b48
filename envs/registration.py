"""Registered ids, mirroring `minigrid/__init__.py`, and `make(env_id, **overrides)`."""

from __future__ import annotations

import numbers

from envs.dynamic_obstacles import OBS_MODES, DynamicObstacles, EnvParams

# id -> (size, n_obstacles, random_start). The Random-8x8 and Random-16x16 ids are dtjax
# additions: MiniGrid has no such registration (construct DynamicObstaclesEnv(size, agent_start_pos=None)).
REGISTRY: dict[str, tuple[int, int, bool]] = {
    "MiniGrid-Dynamic-Obstacles-5x5-v0": (5, 2, False),
    "MiniGrid-Dynamic-Obstacles-Random-5x5-v0": (5, 2, True),
    "MiniGrid-Dynamic-Obstacles-6x6-v0": (6, 3, False),
    "MiniGrid-Dynamic-Obstacles-Random-6x6-v0": (6, 3, True),
    "MiniGrid-Dynamic-Obstacles-8x8-v0": (8, 4, False),
    "MiniGrid-Dynamic-Obstacles-Random-8x8-v0": (8, 4, True),
    "MiniGrid-Dynamic-Obstacles-16x16-v0": (16, 8, False),
    "MiniGrid-Dynamic-Obstacles-Random-16x16-v0": (16, 8, True),
}
registered_envs = tuple(REGISTRY)
_OVERRIDES = ("max_steps", "obs_mode", "n_obstacles")


def make(env_id: str, **overrides) -> tuple[DynamicObstacles, EnvParams]:
    """Build an env and its default params, gymnax style.

    Overrides: ``max_steps`` (int >= 1, default 4*size**2), ``obs_mode`` ("image", "one_hot",
    "full"), ``n_obstacles`` (clamped as MiniGrid does).
    """
    if env_id not in REGISTRY:
        raise ValueError(f"unknown env id {env_id!r}; valid ids: {', '.join(REGISTRY)}")
    bad = sorted(set(overrides) - set(_OVERRIDES))
    if bad:
        raise ValueError(f"unknown override(s) {', '.join(bad)} for {env_id}; valid: {', '.join(_OVERRIDES)}")
    size, n_obstacles, random_start = REGISTRY[env_id]
    obs_mode = overrides.get("obs_mode", "image")
    if obs_mode not in OBS_MODES:
        raise ValueError(f"obs_mode must be one of {', '.join(OBS_MODES)}; got {obs_mode!r}")
    n_obstacles = overrides.get("n_obstacles", n_obstacles)
    if not _is_int(n_obstacles) or n_obstacles < 1:
        raise ValueError(f"n_obstacles must be a positive integer, got {n_obstacles!r}")
    max_steps = overrides.get("max_steps")
    if max_steps is None:
        max_steps = 4 * size**2
    if not _is_int(max_steps) or max_steps < 1:
        raise ValueError(f"max_steps must be a positive integer, got {max_steps!r}")
    env = DynamicObstacles(size, int(n_obstacles), random_start, obs_mode)
    return env, EnvParams(max_steps_in_episode=int(max_steps))


def _is_int(x) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)
