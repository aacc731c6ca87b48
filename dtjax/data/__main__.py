"""python -m dtjax.data {collect,summary}: make a behaviour dataset, or inspect one.

    python -m dtjax.data collect --out data/dyn8 [--env MiniGrid-Dynamic-Obstacles-8x8-v0]
        [--env.max_steps 300] [--seed 0] [--mix random_frac=0.2,branch_frac=0 | --mix original]
        [--data.ppo.total_timesteps 500000 --data.mix.final_eps 0.05 ...] [--store_obs] [--plot p.png]
    python -m dtjax.data summary data/dyn8 [--plot returns.png] [--json]

``--mix`` takes comma-separated DataMixConfig overrides (``key=value``) or a preset name:
``default`` (DataMixConfig's defaults) or ``original`` (only the PPO training rollouts, as the
original project). ``collect`` starts from the env's task presets, as ``python train.py`` does
(Memory: recurrent PPO data at max_steps 50, one-hot), so it collects the dataset train.py would;
flags override them. Every CollectConfig field is also a flag (``--data.mix.random_frac 0.2``),
shown by ``collect --help`` with its default and meaning (the command line is tyro's, from the
dataclasses below: ``dtjax.cli.parse``).
"""

from __future__ import annotations

import dataclasses
import json
import sys
import typing
from pathlib import Path
from typing import Annotated

import tyro

from dtjax import cli
from dtjax.config import CollectConfig, ConfigError
from dtjax.data import store

PRESETS = {"default": {}, "original": {"final_frac": 0.0, "random_frac": 0.0, "branch_frac": 0.0, "snapshot_frac": 0.0,
                                        "wait_frac": 0.0, "hazard_frac": 0.0, "blind_frac": 0.0}}
PROG = "python -m dtjax.data"


@dataclasses.dataclass(frozen=True)
class Collect:
    """run PPO (+ the mix) and write a dataset"""

    out: str
    """dataset directory to create (must not exist)"""
    cfg: Annotated[CollectConfig, tyro.conf.arg(name=""), cli.CONFIG] = dataclasses.field(default_factory=CollectConfig)
    env_id: Annotated[str | None, tyro.conf.arg(name="env", metavar="ENV_ID")] = None
    """shorthand for env.env_id (default MiniGrid-Dynamic-Obstacles-8x8-v0)"""
    mix: str | None = None
    """a preset (default, original) or key=value,... DataMixConfig overrides"""
    store_obs: Annotated[bool, tyro.conf.FlagCreatePairsOff] = False
    """also store the observations (obs.npy)"""
    plot: str | None = None
    """also write a return-vs-length plot to this PNG"""


@dataclasses.dataclass(frozen=True)
class Summary:
    """print a dataset's statistics"""

    path: tyro.conf.Positional[str]
    """the dataset directory"""
    plot: str | None = None
    """write a return-vs-length plot to this PNG"""
    json: Annotated[bool, tyro.conf.FlagCreatePairsOff] = False
    """print the summary as JSON"""


Command = Annotated[Collect, tyro.conf.subcommand("collect")] | Annotated[Summary, tyro.conf.subcommand("summary")]


def parse_mix(spec: str, base):
    """``base`` (a DataMixConfig) with ``spec`` applied: a preset name or ``k=v,k=v`` overrides.

    Values are parsed as the matching ``--data.mix.*`` flag would be (``dtjax.cli.parse_value``):
    a bool is true/false (or yes/no, on/off, 1/0), anything else is a ``ConfigError``."""
    if "=" not in spec:
        if spec not in PRESETS:
            raise ConfigError(f"unknown --mix preset {spec!r}; presets: {', '.join(PRESETS)} (or key=value,...)")
        return dataclasses.replace(base, **PRESETS[spec])
    hints = typing.get_type_hints(type(base))
    changes = {}
    for item in spec.split(","):
        k, _, v = item.partition("=")
        k = k.strip()
        if k not in hints:
            raise ConfigError(f"--mix: unknown field {k!r}; fields: {', '.join(hints)}")
        changes[k] = cli.parse_value(hints[k], v, name=f"--mix: {k}")  # the flags' parser: a typo is an error
    return dataclasses.replace(base, **changes)


def collect_config(args: Collect) -> CollectConfig:
    """The CollectConfig of a ``collect`` command line: its flags, then ``--env`` and ``--mix``."""
    cfg = args.cfg
    if args.env_id:
        cfg = cfg.replace(env=cfg.env.replace(env_id=args.env_id))
    if args.mix:
        cfg = cfg.replace(data=cfg.data.replace(mix=parse_mix(args.mix, cfg.data.mix)))
    return cfg


def parse_args(argv: list[str]) -> Collect | Summary:
    """The command line. ``collect`` starts from the task presets of its env (``--env`` or
    ``--env.env_id``, else the default), as ``python train.py`` does (``cli.preset_collect_config``):
    the flags override them."""
    if argv[:1] != ["collect"] or any(a in ("-h", "--help") for a in argv):
        return cli.parse(Command, argv, PROG, description=__doc__.splitlines()[0])
    env_id = cli.flag_value(argv, "--env") or cli.flag_value(argv, "--env.env_id") or CollectConfig().env.env_id
    try:
        base = cli.preset_collect_config(env_id)
    except (ConfigError, TypeError) as e:
        print(f"{PROG}: error: presets of {env_id}: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    return cli.parse(Collect, argv[1:], PROG, default=Collect(out=tyro.MISSING, cfg=base),
                     description=Collect.__doc__)


def main(argv=None) -> int:
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        if isinstance(args, Collect):
            try:
                cfg = collect_config(args)
            except ConfigError as e:
                print(f"{PROG}: error: {e}", file=sys.stderr)
                raise SystemExit(2) from None
            if Path(args.out).exists():
                raise store.DatasetError(f"dataset {args.out} already exists; choose another path or delete it")
            import jax  # saves CLI start-up: summary and --help answer without importing jax

            from dtjax.data.collect import collect_dataset  # lazy: CLI start-up (jax)

            arrays, meta = collect_dataset(cfg, jax.random.PRNGKey(cfg.seed))
            if args.store_obs:
                arrays = {**arrays, "obs": observations(arrays, cfg)}
            store.save(args.out, arrays, meta)
            print(store.format_summary(store.summary(arrays, words=summary_words(meta))))
            print(f"wrote {args.out}")
        else:
            arrays, meta = store.load(args.path, mmap=True)
            summ = store.summary(arrays, words=summary_words(meta))
            print(json.dumps(summ, indent=1) if args.json else store.format_summary(summ))
        if args.plot:
            from dtjax import plots  # lazy: CLI start-up (matplotlib)

            _, _, lengths, returns = store.episode_index(arrays)
            plots.plot_dataset(lengths, returns, args.plot)
            print(f"wrote {args.plot}")
    except store.DatasetError as e:
        print(f"dtjax.data: error: {e}", file=sys.stderr)
        return 1
    return 0


def summary_words(meta: dict) -> tuple[str, str]:
    """The task's names of success and failure for a dataset's summary (Memory: success / wrong):
    from its metadata, or (a dataset of an older dtjax) its env's task."""
    if "outcome_words" in meta:
        return tuple(meta["outcome_words"])
    from envs.registration import REGISTRY, task_of  # lazy: CLI start-up (jax), older datasets only

    return store.outcome_words(task_of(meta["env_id"]) if meta.get("env_id") in REGISTRY else None)


def observations(arrays, cfg, chunk: int = 65536):
    """(N, H, W, C) uint8 observations of the stored states, in ``cfg.env.obs_mode``."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from dtjax.data.dataset import env_state  # lazy: CLI start-up (jax), as the imports above

    env, _ = cfg.env.make()
    observe = jax.jit(jax.vmap(env.observe))
    n = len(arrays["action"])
    out = np.empty((n,) + env.observation_shape(), np.uint8)
    for i in range(0, n, chunk):
        j = min(n, i + chunk)
        names = ("agent_pos", "agent_dir", "obstacles", "time", *store.state_fields(arrays))
        st = env_state(env, {k: jnp.asarray(np.pad(arrays[k][i:j], [(0, chunk - (j - i))] + [(0, 0)] * (arrays[k].ndim - 1)),
                                            bool if arrays[k].dtype == np.bool_ else jnp.int32) for k in names})
        out[i:j] = np.asarray(observe(st))[: j - i]
    return out


if __name__ == "__main__":
    sys.exit(main())
