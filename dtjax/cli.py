"""Command-line flags generated from the config dataclasses themselves (argparse, stdlib).

Each field of a (possibly nested) frozen config becomes one flag: ``--lr 3e-4``,
``--model.d_model 64``, ``--data.mix.random_frac 0.2``. Tuples take space-separated values
(``--eval_rtgs -1 0 1``); booleans take ``true``/``false``. A JSON config file may set a base
(``--config run.json``) that flags then override. Unknown flags and bad values are argparse
errors: one line and exit status 2.

We use argparse rather than a CLI library (tyro, simple-parsing) because their error output is
multi-line rich text, while our scripts promise one-line errors.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from typing import Any

from dtjax.config import ConfigBase, ConfigError


def _parse_bool(s: str) -> bool:
    v = s.strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {s!r}")


def _field_types(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _is_config(tp) -> bool:
    return isinstance(tp, type) and issubclass(tp, ConfigBase)


def _scalar_parser(tp):
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        choices = typing.get_args(tp)
        return type(choices[0]), choices
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _scalar_parser(args[0])
    if tp is bool:
        return _parse_bool, None
    if tp in (int, float, str):
        return tp, None
    return str, None


def parse_value(tp, text: str, name: str = "value"):
    """``text`` converted to the field type ``tp`` exactly as its flag would be (bool: true/false,
    yes/no, on/off, 1/0; Literal: one of its choices; tuple: space-separated elements).
    A bad value raises ``ConfigError`` with a one-line message naming ``name``."""
    if typing.get_origin(tp) is tuple:
        elem = typing.get_args(tp)[0] if typing.get_args(tp) else str
        return tuple(parse_value(elem, t, name) for t in text.split())
    conv, choices = _scalar_parser(tp)
    try:
        v = conv(text.strip())
    except (ValueError, argparse.ArgumentTypeError):
        kind = {_parse_bool: "true or false", int: "an integer", float: "a number"}.get(conv, "a value")
        raise ConfigError(f"{name} needs {kind}, got {text!r}") from None
    if choices is not None and v not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(map(str, choices))}, got {text!r}")
    return v


def add_config_args(parser: argparse.ArgumentParser, cls: type[ConfigBase], prefix: str = "") -> None:
    """Add one ``--prefix.field`` flag per leaf field of ``cls`` (defaults: None = unset)."""
    hints = _field_types(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        name = f"{prefix}{f.name}"
        if _is_config(tp):
            add_config_args(parser, tp, prefix=f"{name}.")
            continue
        help_text = f.metadata.get("help", "") if f.metadata else ""
        if typing.get_origin(tp) is tuple:
            elem = typing.get_args(tp)[0] if typing.get_args(tp) else str
            conv, _ = _scalar_parser(elem)
            parser.add_argument(f"--{name}", type=conv, nargs="+", default=None, metavar=name.split(".")[-1].upper(), help=help_text)
        else:
            conv, choices = _scalar_parser(tp)
            parser.add_argument(f"--{name}", type=conv, choices=choices, default=None, metavar=None if choices else name.split(".")[-1].upper(), help=help_text)


def apply_args(base: ConfigBase, args: argparse.Namespace, prefix: str = "") -> ConfigBase:
    """Return ``base`` with every flag that was given on the command line applied."""
    hints = _field_types(type(base))
    changes = {}
    for f in dataclasses.fields(base):
        name = f"{prefix}{f.name}"
        tp = hints[f.name]
        if _is_config(tp):
            sub = apply_args(getattr(base, f.name), args, prefix=f"{name}.")
            if sub is not getattr(base, f.name):
                changes[f.name] = sub
            continue
        v = getattr(args, name, None)
        if v is not None:
            changes[f.name] = tuple(v) if isinstance(v, list) else v
    if not changes:
        return base
    try:
        return dataclasses.replace(base, **changes)
    except TypeError as e:  # pragma: no cover - argparse types prevent this
        raise ConfigError(str(e)) from e
