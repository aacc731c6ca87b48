"""A JAX port of MiniGrid Dynamic Obstacles, step for step as the `minigrid` package (gymnax 1.x API).

    import envs
    env, params = envs.make("MiniGrid-Dynamic-Obstacles-8x8-v0", max_steps=300)
    obs, state = env.reset(key, params)
    obs, state, reward, terminated, truncated, info = env.step(key, state, action, params)
"""

from envs.dynamic_obstacles import (
    OBS_MODES,
    DynamicObstacles,
    EnvParams,
    EnvState,
    cell_type,
    move_obstacles,
    observe,
    reset_state,
    transition,
)
from envs.registration import REGISTRY, make, registered_envs
from envs.render import render, save_gif
from envs.task import RUNNING, Scenario, Task

__all__ = [
    "OBS_MODES", "RUNNING", "DynamicObstacles", "Scenario", "Task", "EnvParams", "EnvState", "REGISTRY", "cell_type", "make",
    "move_obstacles", "observe", "registered_envs", "render", "reset_state", "save_gif", "transition",
]
