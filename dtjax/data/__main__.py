"""python -m dtjax.data {collect,summary}: make a behaviour dataset, or inspect one.

    python -m dtjax.data collect --out data/dyn8 [--env MiniGrid-Dynamic-Obstacles-8x8-v0]
        [--env.max_steps 300] [--seed 0] [--mix random_frac=0.2,branch_frac=0 | --mix original]
        [--data.ppo.total_timesteps 500000 --data.mix.final_eps 0.05 ...] [--store_obs] [--plot p.png]
    python -m dtjax.data summary data/dyn8 [--plot returns.png] [--json]

``--mix`` takes comma-separated DataMixConfig overrides (``key=value``) or a preset name:
``default`` (DataMixConfig's defaults) or ``original`` (only the PPO training rollouts, as the
original project). Every CollectConfig field is also a flag (``--data.mix.random_frac 0.2``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import typing

PRESETS = {"default": {}, "original": {"final_frac": 0.0, "random_frac": 0.0, "branch_frac": 0.0, "snapshot_frac": 0.0}}


def parse_mix(spec: str, base):
    """``base`` (a DataMixConfig) with ``spec`` applied: a preset name or ``k=v,k=v`` overrides.

    Values are parsed as the matching ``--data.mix.*`` flag would be (``dtjax.cli.parse_value``):
    a bool is true/false (or yes/no, on/off, 1/0), anything else is a ``ConfigError``."""
    from dtjax.cli import parse_value
    from dtjax.config import ConfigError

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
        changes[k] = parse_value(hints[k], v, name=f"--mix: {k}")  # the flags' parser: a typo is an error
    return dataclasses.replace(base, **changes)


def main(argv=None) -> int:
    from dtjax.cli import add_config_args, apply_args
    from dtjax.config import CollectConfig, ConfigError
    from dtjax.data import store

    parser = argparse.ArgumentParser(prog="python -m dtjax.data", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n", 2)[2])
    sub = parser.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("collect", help="run PPO (+ the mix) and write a dataset")
    c.add_argument("--out", required=True, help="dataset directory to create (must not exist)")
    c.add_argument("--env", dest="env_shorthand", metavar="ENV_ID", default=None,
                   help="env id (default MiniGrid-Dynamic-Obstacles-8x8-v0); same as --env.env_id")
    c.add_argument("--mix", default=None, help="a preset (default, original) or key=value,... DataMixConfig overrides")
    c.add_argument("--store_obs", action="store_true", help="also store the observations (obs.npy)")
    c.add_argument("--plot", help="also write a return-vs-length plot to this PNG")
    add_config_args(c, CollectConfig)
    s = sub.add_parser("summary", help="print a dataset's statistics")
    s.add_argument("path")
    s.add_argument("--plot", help="write a return-vs-length plot to this PNG")
    s.add_argument("--json", action="store_true", help="print the summary as JSON")
    args = parser.parse_args(argv)

    try:
        if args.cmd == "collect":
            from pathlib import Path

            try:
                cfg = apply_args(CollectConfig(), args)
                if args.env_shorthand:
                    cfg = cfg.replace(env=cfg.env.replace(env_id=args.env_shorthand))
                if args.mix:
                    cfg = cfg.replace(data=cfg.data.replace(mix=parse_mix(args.mix, cfg.data.mix)))
            except (ConfigError, TypeError) as e:
                parser.error(str(e))
            if Path(args.out).exists():
                raise store.DatasetError(f"dataset {args.out} already exists; choose another path or delete it")
            import jax

            from dtjax.data.collect import collect_dataset

            arrays, meta = collect_dataset(cfg, jax.random.PRNGKey(cfg.seed))
            if args.store_obs:
                arrays = {**arrays, "obs": observations(arrays, cfg)}
            store.save(args.out, arrays, meta)
            print(store.format_summary(store.summary(arrays)))
            print(f"wrote {args.out}")
        else:
            arrays, meta = store.load(args.path, mmap=True)
            summ = store.summary(arrays)
            print(json.dumps(summ, indent=1) if args.json else store.format_summary(summ))
        if args.plot:
            from dtjax import plots

            _, _, lengths, returns = store.episode_index(arrays)
            plots.plot_dataset(lengths, returns, args.plot)
            print(f"wrote {args.plot}")
    except store.DatasetError as e:
        print(f"dtjax.data: error: {e}", file=sys.stderr)
        return 1
    return 0


def observations(arrays, cfg, chunk: int = 65536):
    """(N, H, W, C) uint8 observations of the stored states, in ``cfg.env.obs_mode``."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from dtjax.data.dataset import env_state  # lazy, as the imports above: CLI start-up

    env, _ = cfg.env.make()
    observe = jax.jit(jax.vmap(env.observe))
    n = len(arrays["action"])
    out = np.empty((n,) + env.observation_shape(), np.uint8)
    for i in range(0, n, chunk):
        j = min(n, i + chunk)
        st = env_state(env, {k: jnp.asarray(np.pad(arrays[k][i:j], [(0, chunk - (j - i))] + [(0, 0)] * (arrays[k].ndim - 1)),
                                            jnp.int32) for k in ("agent_pos", "agent_dir", "obstacles", "time")})
        out[i:j] = np.asarray(observe(st))[: j - i]
    return out


if __name__ == "__main__":
    sys.exit(main())
