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
    from envs.registration import task_of  # lazy: CLI start-up (jax)

    task = task_of(json.loads((Path(summary["run_dir"]) / "env.json").read_text())["env_id"])  # a resumed run's own env
    print("\n".join(outcome_lines(summary, task)))
    print(json.dumps(brief(summary, task), indent=1))
    return 0


def outcome_lines(summary: dict, task) -> list[str]:
    """The final greedy evaluation in the task's words, one line per target RTG (and seed):
    ``RTG +0: return 0.000, success 0.000 wrong 1.000 timeout 0.000, length 6.0`` (Memory: at
    RTG 0 its model should walk to the wrong object)."""
    names = (task.success, *task.failures, "timeout")
    seeds = summary.get("seeds")
    out = []
    for s in [summary] if seeds is None else seeds:
        who = "" if seeds is None else f"{Path(s['run_dir']).name} "
        for r in s["final_eval"]:
            rates = " ".join(f"{o} {r[f'{o}_rate']:.3f}" for o in names)
            out.append(f"{who}RTG {r['target_rtg']:+g}: return {r['mean_return']:.3f}, {rates}, length {r['mean_length']:.1f}")
    return out


def brief(summary: dict, task=None) -> dict:
    """What the terminal shows as JSON: final returns and the rates of the task's success and
    failures (``task``; default Dynamic Obstacles' goal and hit) per target (with N seeds one
    line of returns per seed)."""
    rates = ("goal", "hit") if task is None else (task.success, *task.failures)

    def one(s):
        keys = ("target_rtg", "mean_return", *(f"{o}_rate" for o in rates), "mean_length")
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
