"""python train.py [flags]: collect data, train a Decision Transformer, evaluate, calibrate, save.

Every TrainConfig field is a flag, shown by ``--help`` with its default and meaning
(``--lr 3e-4``, ``--model.d_model 64``, ``--data.ppo.total_timesteps 500000``);
``--config FILE.json`` sets a base that flags override; ``--resume RUN`` continues
``checkpoints/RUN`` from its latest checkpoint with its saved config; ``--num_seeds N`` trains N
DTs together (seeds seed .. seed+N-1) in ``checkpoints/RUN/seed_k/``. Outputs go to
``checkpoints/<run_name>/`` (see README).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from dtjax.cli import parse_train_args
from dtjax.config import ConfigError
from dtjax.data.store import DatasetError


def main(argv=None) -> int:
    args = parse_train_args(argv, prog="train.py")
    cfg = args.cfg
    # saves CLI start-up: --help and flag errors answer without importing jax
    import dtjax.train as train_lib  # lazy: CLI start-up (jax)
    from dtjax.checkpoint import CheckpointError  # lazy: CLI start-up (jax, orbax)
    from dtjax.sharding import maybe_initialize_distributed  # lazy: CLI start-up (jax)

    maybe_initialize_distributed()
    try:
        summary = train_lib.train_and_evaluate(cfg, resume=bool(args.resume), progress=not args.quiet)
    except (train_lib.RunError, DatasetError, CheckpointError, ConfigError) as e:
        print(f"train.py: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("train.py: interrupted; resume with --resume " + cfg.run_name, file=sys.stderr)
        return 130
    print(json.dumps(brief(summary), indent=1))
    return 0


def brief(summary: dict) -> dict:
    """What the terminal shows: final returns per target (one line per seed with N seeds)."""
    def one(s):
        keys = ("target_rtg", "mean_return", "goal_rate", "hit_rate", "mean_length")  # hit_rate: where the task has hits
        return {"final_eval": [{k: round(r[k], 3) for k in keys if k in r} for r in s["final_eval"]],
                "calibration_monotonic": s["calibration_monotonic"]}

    def returns(s):  # one line per seed: final mean return per target RTG
        return {f"{r['target_rtg']:+g}": round(r["mean_return"], 3) for r in s["final_eval"]} | {
            "calibration_monotonic": s["calibration_monotonic"]}

    seeds = summary.get("seeds")
    body = one(summary) if seeds is None else {"seeds": {Path(s["run_dir"]).name: returns(s) for s in seeds}}
    return {"run_dir": summary["run_dir"], **body, "seconds": {k: round(v, 1) for k, v in summary["seconds"].items()}}


if __name__ == "__main__":
    sys.exit(main())
