"""JAX ports of MiniGrid families (Dynamic Obstacles, Empty, Memory), step for step as the
`minigrid` package (gymnax 1.x API). `EnvState`, `EnvParams` and the phases below are Dynamic
Obstacles'; Empty's are in `envs.empty`, Memory's in `envs.memory`.

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
from envs.empty import Empty
from envs.memory import Memory
from envs.registration import REGISTRY, grid_size, make, registered_envs, task_of
from envs.render import render, save_gif
from envs.task import RUNNING, Scenario, Task

__all__ = [
    "OBS_MODES", "RUNNING", "DynamicObstacles", "Empty", "Memory", "Scenario", "Task", "EnvParams", "EnvState", "REGISTRY", "cell_type", "make",
    "move_obstacles", "observe", "grid_size", "registered_envs", "render", "reset_state", "save_gif", "task_of", "transition",
]
