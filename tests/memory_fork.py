"""The original MemoryDT project's fork of minigrid's ``MemoryEnv``, for the parity tests only.

Written from the reference's description of ``src/environments/memory.py`` (DecisionTransformer-
Interpretability at ee55df3; §1-4 of the Memory reference): size 7 with the fixed hallway,
max_steps 1000; the start is (1, 3) facing east without a draw (FixedStart), or ``integers(1, 5)``
for x then ``integers(0, 4)`` for the direction (RandomDirection); then the start-room object
and the end objects as minigrid draws them. ``step`` is ``MiniGridEnv.step`` (pickup and drop NOT
turned into toggle: the fork has those lines commented out) followed by the success / failure
check on the agent's position.
"""

from __future__ import annotations

import numpy as np
from minigrid.core.grid import Grid
from minigrid.core.world_object import Ball, Key, Wall
from minigrid.envs.memory import MemoryEnv
from minigrid.minigrid_env import MiniGridEnv


class ForkMemoryEnv(MemoryEnv):
    """``MiniGrid-MemoryS7FixedStart-v0`` (``random_direction=False``) or
    ``MiniGrid-MemoryS7RandomDirection-v0`` (``random_direction=True``)."""

    def __init__(self, random_direction: bool = False, max_steps: int = 1000, **kwargs):
        self.random_direction = random_direction
        super().__init__(size=7, random_length=False, max_steps=max_steps, **kwargs)

    def _gen_grid(self, width, height):
        self.grid = Grid(width, height)
        self.grid.horz_wall(0, 0)
        self.grid.horz_wall(0, height - 1)
        self.grid.vert_wall(0, 0)
        self.grid.vert_wall(width - 1, 0)
        upper_room_wall = height // 2 - 2
        lower_room_wall = height // 2 + 2
        hallway_end = width - 3
        for i in range(1, 5):
            self.grid.set(i, upper_room_wall, Wall())
            self.grid.set(i, lower_room_wall, Wall())
        self.grid.set(4, upper_room_wall + 1, Wall())
        self.grid.set(4, lower_room_wall - 1, Wall())
        for i in range(5, hallway_end):
            self.grid.set(i, upper_room_wall + 1, Wall())
            self.grid.set(i, lower_room_wall - 1, Wall())
        for j in range(0, height):
            if j != height // 2:
                self.grid.set(hallway_end, j, Wall())
            self.grid.set(hallway_end + 2, j, Wall())

        if self.random_direction:  # random_start_pos stays True in the original's registration
            self.agent_pos = np.array((self._rand_int(1, hallway_end + 1), height // 2))
            self.agent_dir = self._rand_int(0, 4)
        else:
            self.agent_pos = np.array((1, height // 2))
            self.agent_dir = 0

        start_room_obj = self._rand_elem([Key, Ball])
        self.grid.set(1, height // 2 - 1, start_room_obj("green"))
        other_objs = self._rand_elem([[Ball, Key], [Key, Ball]])
        pos0 = (hallway_end + 1, height // 2 - 2)
        pos1 = (hallway_end + 1, height // 2 + 2)
        self.grid.set(*pos0, other_objs[0]("green"))
        self.grid.set(*pos1, other_objs[1]("green"))
        if start_room_obj == other_objs[0]:
            self.success_pos = (pos0[0], pos0[1] + 1)
            self.failure_pos = (pos1[0], pos1[1] - 1)
        else:
            self.success_pos = (pos1[0], pos1[1] - 1)
            self.failure_pos = (pos0[0], pos0[1] + 1)
        self.mission = "go to the matching object at the end of the hallway"

    def step(self, action):
        obs, reward, terminated, truncated, info = MiniGridEnv.step(self, action)
        if tuple(self.agent_pos) == self.success_pos:
            reward = self._reward()
            terminated = True
        if tuple(self.agent_pos) == self.failure_pos:
            reward = 0
            terminated = True
        return obs, reward, terminated, truncated, info
