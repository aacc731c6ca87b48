"""Command lines generated from the config dataclasses themselves.

``parse`` (tyro): each field of a (possibly nested) frozen config is one flag, with its default
and the docstring under the field as its help: ``--lr 3e-4``, ``--model.d_model 64``,
``--data.mix.random_frac 0.2``. Tuples take space-separated values (``--eval_rtgs -1 0 1``);
booleans take a value, ``true``/``false`` (or yes/no, on/off, 1/0). ``TrainArgs`` is
``python train.py``'s command line: every TrainConfig flag, plus ``--config FILE.json`` (a base
that the flags override), ``--resume RUN`` and ``--quiet``.

Errors are one line and exit status 2, as argparse's are: tyro draws a multi-line box, so
``parse`` keeps the box's first line (what went wrong) and prints it as ``prog: error: ...``; a
config that fails validation (``ConfigError``) is reported the same way.

``add_config_args`` / ``apply_args`` (argparse) remain for ``python -m dtjax.sae``, whose
command line mixes SAETrainConfig's flags with settings that are no config's fields, under
subcommands; ``parse_value`` parses one flag's text (``python -m dtjax.data collect --mix``).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import os
import re
import sys
import typing
from pathlib import Path
from typing import Annotated, Any, TypeVar

import tyro

from dtjax.config import CollectConfig, ConfigBase, ConfigError, TrainConfig

T = TypeVar("T")

TRUE_WORDS = ("true", "yes", "on", "1")
FALSE_WORDS = ("false", "no", "off", "0")


def parse_bool(s: str) -> bool:
    """``true``/``false`` in any case, or yes/no, on/off, 1/0; else a one-line ``ValueError``."""
    v = s.strip().lower()
    if v in TRUE_WORDS:
        return True
    if v in FALSE_WORDS:
        return False
    raise ValueError(f"expected true/false, got {s!r}")


# tyro's own booleans are "--flag / --no-flag" switches, or the words True/False under
# FlagConversionOff. A config's booleans (marked ``CONFIG``) take a value in any of the spellings
# above, as the flags always have; other booleans (``--quiet``) stay switches.
_REGISTRY = tyro.constructors.ConstructorRegistry()
CONFIG = tyro.conf.FlagConversionOff
"""Mark a config field of a command-line dataclass: ``Annotated[TrainConfig, cli.CONFIG]``."""


@_REGISTRY.primitive_rule
def _bool_rule(type_info: tyro.constructors.PrimitiveTypeInfo) -> tyro.constructors.PrimitiveConstructorSpec | None:
    if type_info.type is not bool or CONFIG not in type_info.markers:
        return None
    return tyro.constructors.PrimitiveConstructorSpec(
        nargs=1, metavar="{true,false}", instance_from_str=lambda args: parse_bool(args[0]),
        is_instance=lambda x: isinstance(x, bool), str_from_instance=lambda b: ["true" if b else "false"])


@dataclasses.dataclass(frozen=True)
class TrainArgs:
    """python train.py: collect data, train a Decision Transformer, evaluate, calibrate, save."""

    cfg: Annotated[TrainConfig, tyro.conf.arg(name=""), CONFIG] = dataclasses.field(default_factory=TrainConfig)
    config: Path | None = None
    """a JSON TrainConfig to start from: its settings replace the defaults, and flags override them"""
    resume: str | None = None
    """continue the run <checkpoint_dir>/RUN from its latest checkpoint, with its saved config"""
    quiet: Annotated[bool, tyro.conf.FlagCreatePairsOff] = False
    """no progress bar"""


def flag_value(argv: list[str], flag: str) -> str | None:
    """The last value given to ``flag`` (``--flag v`` or ``--flag=v``), or None."""
    out = None
    for i, a in enumerate(argv):
        if a == flag and i + 1 < len(argv):
            out = argv[i + 1]
        elif a.startswith(flag + "="):
            out = a.split("=", 1)[1]
    return out


def _box_message(text: str) -> str:
    """What tyro's error box says first: its content lines up to the first rule, joined. With
    UTF-8 box drawing the title sits on the top border; in ASCII it is a first section of its own."""
    sections, lines, titled = [], [], False
    for raw in text.splitlines():
        s = raw.strip()
        if s.startswith(("╭", "╰")):  # UTF-8 borders (the title is on the top one)
            titled = True
            continue
        s = s.strip("│|").strip()
        if s and set(s) <= set("─-"):  # a rule between sections
            sections.append(lines)
            lines = []
        elif s:
            lines.append(s)
    sections = [x for x in [*sections, lines] if x]
    first = sections[1] if len(sections) > 1 and not titled else (sections[0] if sections else [])
    msg = re.sub(r"\s+", " ", " ".join(first)).strip()
    msg = re.sub(r"^Error parsing [\w.]+: ", "", msg)  # a config's validation: its own message names the field
    return msg or "invalid arguments (see --help)"


def _error(prog: str, msg: str) -> typing.NoReturn:
    print(f"{prog}: error: {msg}", file=sys.stderr)
    raise SystemExit(2)


def parse(cls: type[T], argv: list[str] | None, prog: str, default: T | None = None, description: str | None = None) -> T:
    """``cls`` (a dataclass) from the command line ``argv`` with tyro; ``default``: the values of
    flags not given. Bad flags and values, and configs failing validation, exit with status 2
    after one line ``prog: error: ...`` on stderr; ``--help`` prints every flag and exits 0."""
    argv = list(sys.argv[1:] if argv is None else argv)
    err = io.StringIO()
    old_columns = os.environ.get("COLUMNS")
    if not any(a in ("-h", "--help") for a in argv):
        os.environ["COLUMNS"] = "1000"  # tyro wraps its error box at the terminal's width: keep the message on one line
    try:
        with contextlib.redirect_stderr(err):
            out = tyro.cli(cls, args=argv, prog=prog, description=description,
                           default=default if default is not None else tyro.MISSING_NONPROP,
                           registry=_REGISTRY, use_underscores=True)
    except SystemExit as e:
        if e.code in (0, None):
            sys.stderr.write(err.getvalue())
            raise
        _error(prog, _box_message(err.getvalue()))
    except ConfigError as e:
        _error(prog, str(e))
    finally:
        if old_columns is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = old_columns
    sys.stderr.write(err.getvalue())  # warnings of a successful parse
    return out


def merge(base: dict, over: dict) -> dict:
    """``base`` with ``over`` laid on top, nested dicts merged key by key (neither is modified)."""
    out = dict(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def preset_config(env_id: str, overrides: dict | None = None) -> TrainConfig:
    """The TrainConfig of a run in ``env_id``: dtjax's defaults, then the task family's presets
    (``envs.task_of(env_id).presets``, e.g. Memory's recurrent PPO data, one-hot views and a
    9-step context), then ``overrides`` (a TrainConfig dict as a ``--config`` file holds it:
    only the fields it sets replace the presets'), with
    ``env.env_id`` set. A family without presets gets the defaults. ``ConfigError`` on bad values."""
    from envs.registration import REGISTRY, task_of  # noqa: PLC0415  # lazy: CLI start-up (envs pulls in jax)

    presets = dict(task_of(env_id).presets) if env_id in REGISTRY else {}  # an unknown id: EnvConfig says so
    d = merge(merge(presets, overrides or {}), {"env": {"env_id": env_id}})
    return TrainConfig.from_dict(d)


def preset_collect_config(env_id: str) -> CollectConfig:
    """The CollectConfig of ``env_id``'s task presets: the env, seed and data of
    ``preset_config(env_id)``, so ``python -m dtjax.data collect --env ENV_ID`` collects the dataset
    ``python train.py --env.env_id ENV_ID`` would (Memory: the recurrent PPO's tempered rollouts at
    max_steps 50). ``ConfigError`` on bad values."""
    cfg = preset_config(env_id)
    return CollectConfig(env=cfg.env, seed=cfg.seed, data=cfg.data)


def parse_train_args(argv: list[str] | None = None, prog: str = "train.py") -> TrainArgs:
    """``python train.py``'s command line: the env's task presets (``preset_config``: the env of
    ``--env.env_id``, else of the config file, else the default) are the base; ``--config FILE``
    (when given) is laid over them; the other flags override both. ``--model.obs_mode`` alone
    sets ``env.obs_mode`` too (the DT reads what the env shows); ``--resume RUN`` names the run."""
    argv = list(sys.argv[1:] if argv is None else argv)
    path = flag_value(argv, "--config")
    raw: dict = {}
    if path is not None and not any(a in ("-h", "--help") for a in argv):
        try:
            raw = json.loads(Path(path).read_text())
        except FileNotFoundError:
            _error(prog, f"config file not found: {path}")
        except json.JSONDecodeError as e:
            _error(prog, f"config file {path} is not valid JSON: {e.msg} (line {e.lineno})")
        if not isinstance(raw, dict):
            _error(prog, f"config file {path} is not a JSON object")
    file_env = raw.get("env") if isinstance(raw.get("env"), dict) else {}
    env_id = flag_value(argv, "--env.env_id") or file_env.get("env_id") or raw.get("env_id") or TrainConfig().env.env_id
    try:
        base = preset_config(env_id, raw)  # the file's own settings only: the presets fill the rest
    except (ConfigError, TypeError) as e:
        _error(prog, f"config file {path}: {e}" if raw else f"presets of {env_id}: {e}")
    obs_mode = flag_value(argv, "--model.obs_mode")
    if obs_mode is not None and flag_value(argv, "--env.obs_mode") is None:
        argv += ["--env.obs_mode", obs_mode]
    args = parse(TrainArgs, argv, prog, default=TrainArgs(cfg=base), description=TrainArgs.__doc__)
    if args.resume:
        args = dataclasses.replace(args, cfg=args.cfg.replace(run_name=args.resume))
    return args


# ---------------------------------------------------------------------------------------------
# ARGPARSE HELPERS (python -m dtjax.sae)
# ---------------------------------------------------------------------------------------------


def _parse_bool(s: str) -> bool:
    try:
        return parse_bool(s)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


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
