"""python train.py [flags]: collect data, train a Decision Transformer, evaluate, calibrate, save.

Every TrainConfig field is a flag (``--lr 3e-4``, ``--model.d_model 64``,
``--data.ppo.total_timesteps 500000``); ``--config FILE.json`` sets a base that flags override;
``--resume RUN`` continues ``checkpoints/RUN`` from its latest checkpoint with its saved config;
``--num_seeds N`` trains N DTs together (seeds seed .. seed+N-1) in ``checkpoints/RUN/seed_k/``.
Outputs go to ``checkpoints/<run_name>/`` (see README).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(argv=None) -> int:
    from dtjax.cli import add_config_args, apply_args
    from dtjax.config import ConfigError, TrainConfig

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--config", type=Path, help="a JSON TrainConfig to start from")
    parser.add_argument("--resume", metavar="RUN", help="continue checkpoints/RUN (its saved config wins)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    add_config_args(parser, TrainConfig)
    args = parser.parse_args(argv)
    try:
        base = TrainConfig()
        if args.config:
            try:
                base = TrainConfig.from_json(args.config.read_text())
            except FileNotFoundError:
                parser.error(f"config file not found: {args.config}")
            except json.JSONDecodeError as e:
                parser.error(f"config file {args.config} is not valid JSON: {e.msg} (line {e.lineno})")
        if getattr(args, "model.obs_mode") is not None and getattr(args, "env.obs_mode") is None:
            setattr(args, "env.obs_mode", getattr(args, "model.obs_mode"))  # the DT reads what the env shows
        cfg = apply_args(base, args)
        if args.resume:
            cfg = cfg.replace(run_name=args.resume)
    except ConfigError as e:
        parser.error(str(e))

    from dtjax.checkpoint import CheckpointError
    from dtjax.data.store import DatasetError
    from dtjax.sharding import maybe_initialize_distributed
    from dtjax.train import RunError, train_and_evaluate

    maybe_initialize_distributed()
    try:
        summary = train_and_evaluate(cfg, resume=bool(args.resume), progress=not args.quiet)
    except (RunError, DatasetError, CheckpointError, ConfigError) as e:
        print(f"train.py: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("train.py: interrupted; resume with --resume " + cfg.run_name, file=sys.stderr)
        return 130
    def brief(s):
        return {"final_eval": [{k: round(r[k], 3) for k in ("target_rtg", "mean_return", "goal_rate", "hit_rate", "mean_length")}
                               for r in s["final_eval"]], "calibration_monotonic": s["calibration_monotonic"]}

    def returns(s):  # one line per seed: final mean return per target RTG
        return {f"{r['target_rtg']:+g}": round(r["mean_return"], 3) for r in s["final_eval"]} | {
            "calibration_monotonic": s["calibration_monotonic"]}

    seeds = summary.get("seeds")
    out = {"run_dir": summary["run_dir"], **(brief(summary) if seeds is None else {"seeds": {
        Path(s["run_dir"]).name: returns(s) for s in seeds}}), "seconds": {k: round(v, 1) for k, v in summary["seconds"].items()}}
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
