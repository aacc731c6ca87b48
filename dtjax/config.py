"""Frozen configuration dataclasses for dtjax: model, data and training.

Every field carries a comment with its unit and the reason for its default. Derived sizes are
properties, never written back. Validation raises `ConfigError` with a one-line message, and
every config round-trips through JSON (`to_dict` / `from_dict`).

Sections (each owned by the module that consumes it):
- ModelConfig: dtjax.model
- PPOConfig, DataMixConfig, DatasetConfig: dtjax.data
- TrainConfig: dtjax.train
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, TypeVar

T = TypeVar("T", bound="ConfigBase")


class ConfigError(ValueError):
    """An impossible or malformed configuration; the message is one line for the user."""


@dataclasses.dataclass(frozen=True)
class ConfigBase:
    """Shared JSON round-trip and validation hooks for config dataclasses."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:  # overridden by subclasses
        pass

    def to_dict(self) -> dict[str, Any]:
        out = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, ConfigBase):
                v = v.to_dict()
            elif isinstance(v, tuple):
                v = list(v)
            out[f.name] = v
        return out

    @classmethod
    def from_dict(cls: type[T], d: dict[str, Any]) -> T:
        names = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - set(names))
        if unknown:
            raise ConfigError(f"{cls.__name__}: unknown field(s) {', '.join(unknown)}")
        kwargs = {}
        hints = {f.name: f.type for f in dataclasses.fields(cls)}
        for k, v in d.items():
            sub = _SUBCONFIGS.get((cls.__name__, k))
            if sub is not None and isinstance(v, dict):
                v = sub.from_dict(v)
            elif isinstance(v, list):
                v = tuple(v)
            kwargs[k] = v
        del hints
        return cls(**kwargs)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls: type[T], text: str) -> T:
        return cls.from_dict(json.loads(text))

    def replace(self: T, **changes: Any) -> T:
        return dataclasses.replace(self, **changes)


# (owner class name, field name) -> nested config class, for from_dict of nested configs.
# Each section registers its nested fields here.
_SUBCONFIGS: dict[tuple[str, str], type[ConfigBase]] = {}


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


# ---------------------------------------------------------------------------------------------
# MODEL (dtjax.model)
# ---------------------------------------------------------------------------------------------

# ---------------------------------------------------------------------------------------------
# DATA (dtjax.data)
# ---------------------------------------------------------------------------------------------

# ---------------------------------------------------------------------------------------------
# TRAINING (dtjax.train)
# ---------------------------------------------------------------------------------------------
