"""What a task family tells the rest of dtjax: the one interface of a task plug-in.

Every front end (evaluation, scenarios, the report, the explorer, the census, the SAE probes)
asks the env's `Task` for what is task-specific (actions and their names, the objects a grid
may hold, how an episode can end, the hand-made scenarios, the default logit direction, and the
presets of a run in this family) instead of spelling it out. A family is a module in `envs/`
that defines its env class, its `Task` and its ids; adding one touches its own file and one line
of `envs/registration.py`.

Outcomes are named: ``env.step_env`` returns ``info["outcome"]``, an int32 index into
``task.outcomes`` (0 is always ``"running"``), decided by the env itself from its own state, and
a boolean for each of ``task.details`` (e.g. Dynamic Obstacles' ``info["hit_wall"]``: the hit
was into a wall). An episode that is truncated without another outcome is ``"timeout"``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

RUNNING = 0  # info["outcome"] of a step that ends nothing, in every family


@dataclasses.dataclass(frozen=True)
class Scenario:
    """A hand-made situation: a (non-batched) env state, a caption, and the family's tags.

    ``actions``: for a task whose model needs the history (Memory), the actions taken from a
    reset state of the same episode (its layout, time 0) to reach ``state``, so a front end
    replays them to build the context window; ``()`` (the default) when the state alone is the
    scenario (Dynamic Obstacles, Empty) or it is a reset state.
    """

    name: str
    state: Any  # the family's EnvState, one episode
    caption: str
    actions: tuple[int, ...] = ()


@dataclasses.dataclass(frozen=True)
class Task:
    """The task-specific facts of one env family (static, hashable: no arrays).

    Fields:
      family: short name (``"dynamic_obstacles"``, ``"empty"``).
      action_names: name of each action index; ``len`` is the env's ``num_actions``.
      action_keys: the explorer's keyboard key for each action (``""`` for none).
      objects: the MiniGrid object names a cell of this family can hold (drawing, grid editing),
        ``"empty"`` and ``"wall"`` first.
      editable: the objects a user may paint into a cell in the explorer.
      outcomes: outcome names by code; ``outcomes[0] == "running"`` and the last is ``"timeout"``.
      success: the outcome that counts as solving the task (``"goal"``).
      failures: outcomes counted as a failure beside timeout (``("hit",)``; ``()`` when none).
      details: names of the boolean ``info`` flags that refine an outcome (``("hit_wall",)``).
      direction: the default logit direction of analyses, ``(a, b)`` action names: logit a - b.
      return_range: (lowest, highest) episode return, for calibration targets.
      scenarios: ``scenarios(env) -> tuple[Scenario, ...]`` hand-made states in ``env``.
      pairs: ``{pair name: (clean scenario, corrupted scenario)}`` for patching.
      edit: optional, the family's own grid edits (the explorer's ``edit`` message):
        ``edit(env, state, op, cell) -> state`` for ``op`` in ``editable`` and ``cell`` an (x, y) or
        None, raising ValueError with a one-line reason; None = the generic ball / agent edits.
      presets: config overrides of a run in this family, as nested dicts keyed like
        ``TrainConfig`` (``{"model": {...}, "data": {...}, ...}``); ``{}`` = dtjax's defaults.
      concepts: optional, the family's own probe concepts (``dtjax.probes``, beside the generic
        ones every family gets): ``concepts(env) -> {name: (class names, fn)}`` with
        ``fn(state, obs) -> int32`` the class of one (non-batched) state, ``-1`` if undefined;
        ``None``: none.
    """

    family: str
    action_names: tuple[str, ...]
    action_keys: tuple[str, ...]
    objects: tuple[str, ...]
    editable: tuple[str, ...]
    outcomes: tuple[str, ...]
    success: str
    failures: tuple[str, ...]
    details: tuple[str, ...]
    direction: tuple[str, str]
    return_range: tuple[float, float]
    scenarios: Callable[[Any], tuple[Scenario, ...]] = dataclasses.field(compare=False)
    pairs: Mapping[str, tuple[str, str]] = dataclasses.field(default_factory=dict, compare=False)
    presets: Mapping[str, Any] = dataclasses.field(default_factory=dict, compare=False)
    edit: Callable[..., Any] | None = dataclasses.field(default=None, compare=False)
    concepts: Callable[[Any], Mapping[str, tuple[tuple[str, ...], Callable]]] | None = dataclasses.field(
        default=None, compare=False)

    def __post_init__(self):
        if self.outcomes[0] != "running" or self.outcomes[-1] != "timeout":
            raise ValueError(f"{self.family}: outcomes must start with 'running' and end with 'timeout'")
        if len(self.action_keys) != len(self.action_names):
            raise ValueError(f"{self.family}: one key per action")
        for name in (self.success, *self.failures):
            if name not in self.outcomes:
                raise ValueError(f"{self.family}: {name!r} is not an outcome")
        for name in self.direction:
            if name not in self.action_names:
                raise ValueError(f"{self.family}: direction names unknown action {name!r}")

    @property
    def num_actions(self) -> int:
        return len(self.action_names)

    def outcome_code(self, name: str) -> int:
        """The ``info["outcome"]`` code of outcome ``name``."""
        try:
            return self.outcomes.index(name)
        except ValueError:
            raise ValueError(f"{self.family} has no outcome {name!r}; outcomes: {', '.join(self.outcomes)}") from None

    def action_index(self, name: str) -> int:
        try:
            return self.action_names.index(name)
        except ValueError:
            raise ValueError(f"{self.family} has no action {name!r}; actions: {', '.join(self.action_names)}") from None
