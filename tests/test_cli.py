"""dtjax.cli and train.py's command line (tyro): flags of every type land in the TrainConfig,
``--config FILE`` is a base that flags override, ``--resume`` names the run, bad input is one
line and exit status 2, and ``--help`` shows every field with its default and meaning.

Nothing is trained: train.py's ``main`` runs as on the command line up to its call of
``dtjax.train.train_and_evaluate``, which is replaced by a stub that records what it was given.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import json
import re
import typing
from pathlib import Path

import pytest

import dtjax.train
from dtjax import cli
from dtjax.config import ConfigBase, ConfigError, DataMixConfig, TrainConfig

ROOT = Path(__file__).resolve().parents[1]


class _Called(Exception):
    """Raised by the stub in place of training."""


@pytest.fixture
def train_cli(monkeypatch):
    """``run(*argv) -> (TrainConfig, call kwargs)``: what ``python train.py *argv`` would train."""
    spec = importlib.util.spec_from_file_location("train_script", ROOT / "train.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    seen = {}

    def stub(cfg, **kw):
        seen.clear()
        seen.update(kw, cfg=cfg)
        raise _Called

    monkeypatch.setattr(dtjax.train, "train_and_evaluate", stub)

    def run(*argv):
        with pytest.raises(_Called):
            script.main(list(argv))
        kw = dict(seen)
        return kw.pop("cfg"), kw

    return run


def test_no_flags_give_the_defaults(train_cli):
    cfg, kw = train_cli()
    assert cfg == TrainConfig() and kw == {"resume": False, "progress": True}


def test_flags_of_every_type_land_in_the_config(train_cli):
    cfg, kw = train_cli(
        "--lr", "3e-4", "--num_steps", "2000", "--optimizer", "adam_l2", "--eval_rtgs", "-1", "-0.5", "1",
        "--model.d_model", "64", "--model.n_heads", "4", "--model.layer_norm", "true", "--model.attn_only", "yes",
        "--model.time_embedding", "linear", "--data.mix.random_frac", "0.25", "--data.ppo.anneal_lr", "false",
        "--quiet",
    )
    d = TrainConfig()
    want = d.replace(
        lr=3e-4, num_steps=2000, optimizer="adam_l2", eval_rtgs=(-1.0, -0.5, 1.0),
        model=d.model.replace(d_model=64, n_heads=4, layer_norm=True, attn_only=True, time_embedding="linear"),
        data=d.data.replace(mix=d.data.mix.replace(random_frac=0.25), ppo=d.data.ppo.replace(anneal_lr=False)),
    )
    assert cfg == want
    assert type(cfg.model.d_model) is int and type(cfg.lr) is float and type(cfg.eval_rtgs) is tuple
    assert kw == {"resume": False, "progress": False}


@pytest.mark.parametrize("text,value", [("true", True), ("False", False), ("1", True), ("0", False), ("on", True), ("no", False)])
def test_boolean_spellings(train_cli, text, value):
    assert train_cli("--model.layer_norm", text)[0].model.layer_norm is value


@pytest.mark.parametrize("argv,msg", [
    (["--model.layer_norm", "ture"], "--model.layer_norm: expected true/false, got 'ture'"),
    (["--model.d_model", "6.5"], "--model.d_model: invalid literal for int() with base 10: '6.5'"),
    (["--eval_rtgs"], "eval_rtgs must not be empty"),
    (["--eval_rtgs", "-1", "x"], "--eval_rtgs"),
    (["--model.time_embedding", "cubic"], "model.time_embedding must be 'learned' or 'linear'"),
    (["--no_such_flag", "1"], "Unrecognized options: --no_such_flag, 1"),
    (["--quiet", "true"], "Unrecognized options: true"),  # --quiet is a switch, config booleans take a value
])
def test_bad_values_are_one_line_errors(train_cli, capsys, argv, msg):
    with pytest.raises(SystemExit) as e:
        train_cli(*argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and err[0].startswith("train.py: error: ") and msg in err[0]


def test_box_message_utf8_and_ascii():
    """The message is taken from tyro's box whichever drawing characters it uses."""
    utf8 = ("╭─ Value error ─────╮\n│ Error parsing --lr: could not │\n│ parse 'x'      │\n│ ──────── │\n"
            "│ Argument helptext: │\n╰──────────────╯")
    ascii_ = " Value error   \n ----------- \n  Error parsing --lr: could not \n  parse 'x' \n  ------ \n  Argument helptext:"
    for text in (utf8, ascii_):
        assert cli._box_message(text) == "Error parsing --lr: could not parse 'x'"
    assert cli._box_message("╭─ Value error ─╮\n│ Error parsing cfg.model: model.d_model must be >= 1 │\n╰─╯") == (
        "model.d_model must be >= 1")


def test_config_file_is_a_base_that_flags_override(train_cli, tmp_path):
    d = TrainConfig()
    base = d.replace(lr=5e-4, num_steps=2000, eval_rtgs=(0.5,), model=d.model.replace(d_model=32, n_layers=2, layer_norm=True))
    (tmp_path / "full.json").write_text(base.to_json())
    cfg, _ = train_cli("--config", str(tmp_path / "full.json"))
    assert cfg == base
    cfg, _ = train_cli("--config", str(tmp_path / "full.json"), "--lr", "1e-3", "--model.d_model", "48",
                       "--model.layer_norm", "false")
    assert cfg == base.replace(lr=1e-3, model=base.model.replace(d_model=48, layer_norm=False))
    # a partial file: what it leaves out keeps the defaults, nested sections included
    (tmp_path / "part.json").write_text(json.dumps({"lr": 2e-4, "model": {"n_layers": 3}}))
    cfg, _ = train_cli("--config", str(tmp_path / "part.json"), "--model.d_head", "16")
    assert cfg == d.replace(lr=2e-4, model=d.model.replace(n_layers=3, d_head=16))


def test_resume_names_the_run(train_cli):
    cfg, kw = train_cli("--resume", "night1", "--run_name", "other")
    assert cfg.run_name == "night1" and kw["resume"] is True


def _leaves(cfg: ConfigBase, prefix: str = ""):
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        if isinstance(v, ConfigBase):
            yield from _leaves(v, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", v


def _as_text(v) -> list[str]:
    if isinstance(v, bool):
        return ["true" if v else "false"]
    if isinstance(v, tuple):
        return [str(x) for x in v]
    return [str(v)]


def test_every_leaf_field_is_a_flag_that_round_trips(train_cli, tmp_path):
    """Each leaf of TrainConfig is a flag, and giving every one its default value as text over a
    changed ``--config`` base rebuilds the default config (every field type parses back to itself)."""
    leaves = dict(_leaves(TrainConfig()))
    argv = [t for name, v in leaves.items() for t in (f"--{name}", *_as_text(v))]
    # a changed base shows that every given flag is applied, not just left at its default
    changed = TrainConfig().replace(lr=0.5, eval_rtgs=(0.5,), model=TrainConfig().model.replace(d_model=7, layer_norm=True))
    (tmp_path / "changed.json").write_text(changed.to_json())
    assert train_cli("--config", str(tmp_path / "changed.json"), *argv)[0] == TrainConfig()
    assert train_cli("--config", str(tmp_path / "changed.json"))[0] == changed


def _field_docs() -> dict[tuple[str, str], str]:
    """{(config class, field): the docstring under the field}, read from dtjax/config.py's source."""
    tree = ast.parse((ROOT / "dtjax" / "config.py").read_text())
    docs = {}
    for cls in (n for n in tree.body if isinstance(n, ast.ClassDef)):
        for a, b in zip(cls.body, cls.body[1:]):
            if isinstance(a, ast.AnnAssign) and isinstance(b, ast.Expr) and isinstance(b.value, ast.Constant):
                docs[(cls.name, a.target.id)] = " ".join(b.value.value.split())
    return docs


def _leaf_owners(cls=TrainConfig, prefix="", default=None):
    """(flag name, owning config class name, field name, default) of every leaf field; the default
    is the top config's (a section's default may differ from its class's: DataConfig's mix)."""
    hints = typing.get_type_hints(cls)
    default = cls() if default is None else default
    for f in dataclasses.fields(cls):
        if isinstance(hints[f.name], type) and issubclass(hints[f.name], ConfigBase):
            yield from _leaf_owners(hints[f.name], f"{prefix}{f.name}.", getattr(default, f.name))
        else:
            yield f"{prefix}{f.name}", cls.__name__, f.name, getattr(default, f.name)


def _help_text(capsys, call) -> str:
    """The ``--help`` output of ``call()`` as one line of words (box drawing removed)."""
    with pytest.raises(SystemExit) as e:
        call()
    assert e.value.code == 0
    text = " ".join(line.strip().strip("│|").strip() for line in capsys.readouterr().out.splitlines())
    return " ".join(text.split())


def _assert_every_field_documented(text: str, cls) -> None:
    """Every leaf field of ``cls`` appears in ``text`` as ``--name``, with the docstring under the
    field (every field has one) followed by ``(default: value)``."""
    docs = _field_docs()
    leaves = list(_leaf_owners(cls))
    assert len(leaves) == len(dict(_leaves(cls()))) > 30
    for flag, owner, name, default in leaves:
        doc = docs.get((owner, name))
        assert doc, f"{owner}.{name} has no docstring"
        start = text.index(f" --{flag} ")
        nxt = re.search(r" --[a-z][a-z0-9_.]* ", text[start + 1:])
        entry = text[start: start + 1 + nxt.start()] if nxt else text[start:]
        shown = {bool: lambda v: "true" if v else "false", tuple: lambda v: " ".join(map(str, v)),
                 str: lambda v: v or "''"}.get(type(default), str)(default)
        assert f"{doc} (default: {shown})" in entry, (flag, entry)


def test_help_shows_every_flag_with_its_default_and_meaning(train_cli, capsys, monkeypatch):
    """``python train.py --help`` lists every leaf field of TrainConfig with its meaning and default."""
    monkeypatch.setenv("COLUMNS", "100")  # one column of options; the words of a line wrap intact
    text = _help_text(capsys, lambda: train_cli("--help"))
    assert len(list(_leaf_owners(TrainConfig))) > 60
    _assert_every_field_documented(text, TrainConfig)
    for flag in ("--config", "--resume", "--quiet"):
        assert f" {flag} " in text


def test_data_collect_command_line(capsys, monkeypatch):
    """``python -m dtjax.data collect``: every CollectConfig field is a flag with its meaning and
    default in ``--help``; flags, ``--env`` and ``--mix`` land in the CollectConfig."""
    from dtjax.config import CollectConfig
    from dtjax.data import __main__ as data_cli

    monkeypatch.setenv("COLUMNS", "100")
    text = _help_text(capsys, lambda: data_cli.main(["collect", "--help"]))
    _assert_every_field_documented(text, CollectConfig)
    args = cli.parse(data_cli.Command, ["collect", "--out", "d", "--env", "MiniGrid-Dynamic-Obstacles-5x5-v0",
                                        "--env.max_steps", "50", "--mix", "original", "--data.ppo.anneal_lr", "off",
                                        "--store_obs"], "prog")
    d = CollectConfig()
    want = d.replace(env=d.env.replace(env_id="MiniGrid-Dynamic-Obstacles-5x5-v0", max_steps=50),
                     data=d.data.replace(ppo=d.data.ppo.replace(anneal_lr=False),
                                         mix=data_cli.parse_mix("original", d.data.mix)))
    assert isinstance(args, data_cli.Collect) and args.store_obs and args.out == "d"
    assert data_cli.collect_config(args) == want
    summ = cli.parse(data_cli.Command, ["summary", "some/dir", "--json"], "prog")
    assert isinstance(summ, data_cli.Summary) and (summ.path, summ.json, summ.plot) == ("some/dir", True, None)
    with pytest.raises(SystemExit) as e:
        data_cli.main(["collect", "--out", "d", "--data.ppo.num_envs", "0"])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and err == "python -m dtjax.data: error: ppo.num_envs must be >= 1, got 0"


def test_parse_value_types():
    hints = typing.get_type_hints(DataMixConfig)
    assert cli.parse_value(hints["ppo_rollouts"], "Off") is False
    assert cli.parse_value(hints["envs"], " 12 ") == 12 and cli.parse_value(hints["random_frac"], "0.5") == 0.5
    assert cli.parse_value(typing.get_type_hints(TrainConfig)["eval_rtgs"], "-1 0 1") == (-1.0, 0.0, 1.0)
    for tp, text in ((bool, "maybe"), (int, "1.5"), (float, "x")):
        with pytest.raises(ConfigError, match="needs"):
            cli.parse_value(tp, text, name="f")
