"""python analyse.py --ckpt PATH [--out DIR] [--fast]: an HTML interpretability report of a checkpoint.

``python analyse.py --census RUN [RUN ...] [--out DIR]``: the mechanism census of every seed of
multi-seed runs (``dtjax.circuits.census``): census.json, census.md, census.png in DIR (default
RUN for one run, reports/census for several).

PATH is a dtjax run / checkpoint directory or an original ``.pt`` file. Writes
``DIR/report.html`` (self-contained) and ``DIR/summary.json``; DIR defaults to
``reports/<checkpoint name>``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", type=Path, help="dtjax checkpoint directory or original .pt file")
    parser.add_argument("--census", type=Path, nargs="+", metavar="RUN", help="census of the seeds of runs (train.py --num_seeds)")
    parser.add_argument("--out", type=Path, help="output directory (default reports/<checkpoint name>)")
    parser.add_argument("--fast", action="store_true", help="few episodes and samples: a smoke-test report")
    parser.add_argument("--direction", default="forward-right", help="logit direction, e.g. forward-right or forward")
    parser.add_argument("--rtg", type=float, default=0.9, help="target RTG of the scenarios")
    parser.add_argument("--episodes", type=int, help="episodes per target for calibration and closed-loop ablations")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    if (args.ckpt is None) == (args.census is None):
        parser.error("give one of --ckpt PATH or --census RUN")

    from dtjax.config import ConfigError
    from dtjax.loader import LoadError
    from dtjax.report import ReportOptions, build_report

    if args.census:
        from dtjax.circuits.census import write_census

        try:
            print(write_census(args.census, args.out, log=(lambda *_: None) if args.quiet else (lambda m: print(m, file=sys.stderr))))
        except (LoadError, ConfigError, ValueError, OSError) as e:
            print(f"error: {str(e).splitlines()[0] if str(e) else type(e).__name__}", file=sys.stderr)
            return 1
        return 0
    opt = ReportOptions.quick() if args.fast else ReportOptions()
    changes = {"direction": args.direction, "rtg": args.rtg, "seed": args.seed}
    if args.episodes is not None:
        if args.episodes < 1:
            print("error: --episodes must be >= 1", file=sys.stderr)
            return 2
        changes.update(calib_episodes=args.episodes, ablation_episodes=args.episodes)
    opt = opt.__class__(**{**opt.__dict__, **changes})
    out = args.out or Path("reports") / (args.ckpt.stem if args.ckpt.suffix == ".pt" else args.ckpt.absolute().name)
    try:
        build_report(args.ckpt, out, opt, log=(lambda *_: None) if args.quiet else (lambda m: print(m, file=sys.stderr)))
    except (LoadError, ConfigError, ValueError, OSError) as e:
        print(f"error: {str(e).splitlines()[0] if str(e) else type(e).__name__}", file=sys.stderr)
        return 1
    print(out / "report.html")
    return 0


if __name__ == "__main__":
    sys.exit(main())
