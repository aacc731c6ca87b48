"""Registered ids of every family, mirroring `minigrid/__init__.py`, and `make(env_id, **overrides)`.

A family is a module of `envs/` that defines ``ENV_CLASS`` (a `envs.base.GridEnv`), ``IDS``
(id -> constructor kwargs), ``OVERRIDES`` (what `make` may change: ``max_steps`` goes to the
params, the rest to the constructor) and ``TASK`` (its `envs.task.Task`). Adding a family is one
line in ``FAMILIES``.
"""

from __future__ import annotations

import numbers
from typing import Any, NamedTuple

from envs import dynamic_obstacles, empty, memory
from envs.task import Task

FAMILIES = (dynamic_obstacles, empty, memory)  # the Dynamic Obstacles ids first (dtjax's default family)


class EnvSpec(NamedTuple):
    """One registered id: its family's env class, constructor kwargs, allowed overrides, Task."""

    env_class: type
    kwargs: dict[str, Any]
    overrides: tuple[str, ...]
    task: Task


REGISTRY: dict[str, EnvSpec] = {
    env_id: EnvSpec(family.ENV_CLASS, dict(kwargs), tuple(family.OVERRIDES), family.TASK)
    for family in FAMILIES
    for env_id, kwargs in family.IDS.items()
}
registered_envs = tuple(REGISTRY)
OBS_MODES = ("image", "one_hot", "full")


def spec(env_id: str) -> EnvSpec:
    """The registry entry of ``env_id``; an unknown id is an error listing the valid ones."""
    if env_id not in REGISTRY:
        raise ValueError(f"unknown env id {env_id!r}; valid ids: {', '.join(REGISTRY)}")
    return REGISTRY[env_id]


def grid_size(env_id: str) -> int:
    """Grid side length (walls included) of ``env_id``, without building the env."""
    return int(spec(env_id).kwargs["size"])


def task_of(env_id: str) -> Task:
    """The family's `Task` of ``env_id``, without building the env."""
    return spec(env_id).task


def make(env_id: str, **overrides):
    """Build an env and its default params, gymnax style: ``(env, params)``.

    Overrides (each family lists its own, an unknown one is an error): ``max_steps`` (int >= 1,
    default 4*size**2), ``obs_mode`` ("image", "one_hot", "full"), and family constructor
    arguments such as Dynamic Obstacles' ``n_obstacles`` (a positive int, clamped as MiniGrid does).
    """
    entry = spec(env_id)
    bad = sorted(set(overrides) - set(entry.overrides))
    if bad:
        raise ValueError(f"unknown override(s) {', '.join(bad)} for {env_id}; valid: {', '.join(entry.overrides)}")
    kwargs = dict(entry.kwargs)
    max_steps = None
    for name, value in overrides.items():
        if name == "max_steps" and value is None:  # None = the family's default (4*size**2)
            continue
        if name == "obs_mode":
            if value not in OBS_MODES:
                raise ValueError(f"obs_mode must be one of {', '.join(OBS_MODES)}; got {value!r}")
        elif not _is_int(value) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if name == "max_steps":
            max_steps = int(value)
        else:
            kwargs[name] = value
    env = entry.env_class(**kwargs)
    params = env.default_params
    if max_steps is not None:
        params = params.replace(max_steps_in_episode=max_steps)
    return env, params


def _is_int(x) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)
