"""python analyse.py --ckpt PATH [--out DIR] [--fast]: an HTML interpretability report of a checkpoint.

``python analyse.py --census RUN [RUN ...] [--out DIR]``: the mechanism census of every seed of
multi-seed runs (``dtjax.census``): census.json, census.md, census.png in DIR (default
RUN for one run, reports/census for several).

``--probes`` adds the "probes" section (``dtjax.probes``): linear probes of ground-truth
concepts at every hook and token with their baselines, and probe-directed steering in closed
loop (summary.json keys ``probes`` and ``probe_interventions``).

``python analyse.py --dynamics RUN [--out DIR] [--episodes N]``: the training dynamics of a run
trained with ``--keep_every`` (``dtjax.dynamics``): census, attention, ACDC and calibration at
every kept checkpoint of every seed, and the step each seed commits to its circuit;
dynamics.json and dynamics.html in DIR (default reports/dynamics_<run>).

``--sae SAE_DIR`` (repeatable, or a comma list; a folder of dictionaries such as RUN/sae counts
as all of them) adds the "SAE features" section for those sparse dictionaries (``dtjax.sae``);
with ``--serve`` the explorer shows their active latents at every step.

PATH is a dtjax run / checkpoint directory or an original ``.pt`` file. Writes
``DIR/report.html`` (self-contained) and ``DIR/summary.json``; DIR defaults to
``reports/<checkpoint name>``. The report's sections live in ``dtjax/report/sections/``.

python analyse.py --ckpt PATH --serve [--port 8000] [--host 127.0.0.1] [--models checkpoints]:
the interactive explorer (``dtjax.explorer``) at the printed URL, until Ctrl-C.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dtjax.config import ConfigError
from dtjax.explorer import serve


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", type=Path, help="dtjax checkpoint directory or original .pt file")
    parser.add_argument("--census", type=Path, nargs="+", metavar="RUN", help="census of the seeds of runs (train.py --num_seeds)")
    parser.add_argument("--dynamics", type=Path, metavar="RUN",
                        help="training dynamics of a run's kept checkpoints (train.py --keep_every)")
    parser.add_argument("--out", type=Path, help="output directory (default reports/<checkpoint name>)")
    parser.add_argument("--fast", action="store_true", help="few episodes and samples: a smoke-test report")
    parser.add_argument("--direction", default="",
                        help="logit direction, e.g. forward-right or forward (default: the task's, forward-right)")
    parser.add_argument("--rtg", type=float, default=0.9, help="target RTG of the scenarios")
    parser.add_argument("--episodes", type=int, help="episodes per target for calibration and closed-loop ablations")
    parser.add_argument("--sections", help="comma-separated section keys to include (default: all), e.g. dla,qk")
    parser.add_argument("--no-closed-loop", action="store_true",
                        help="run no episodes (no calibration unless saved, no closed-loop ablations)")
    parser.add_argument("--sae", action="append", default=[], metavar="SAE_DIR",
                        help="sparse dictionary directory of this model (repeatable or comma list): the SAE section, "
                             "and the explorer's active-latents panel")
    parser.add_argument("--probes", action="store_true",
                        help="add the probes section: linear probes of ground-truth concepts at every hook and token "
                             "(with baselines) and probe-directed steering in closed loop")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--serve", action="store_true", help="start the interactive explorer instead of writing a report")
    parser.add_argument("--port", type=int, default=8000, help="explorer port (0: any free port)")
    parser.add_argument("--host", default="127.0.0.1", help="explorer address (default: this machine only)")
    parser.add_argument("--models", type=Path, default=Path("checkpoints"),
                        help="directory of run directories and .pt files the explorer can switch to")
    args = parser.parse_args(argv)
    sae_dirs = tuple(p.strip() for arg in args.sae for p in arg.split(",") if p.strip())
    if sum(x is not None for x in (args.ckpt, args.census, args.dynamics)) != 1:
        parser.error("give one of --ckpt PATH, --census RUN or --dynamics RUN")
    if args.serve and args.ckpt is None:
        parser.error("--serve needs --ckpt PATH")
    if args.probes and args.ckpt is None:
        parser.error("--probes needs --ckpt PATH")
    if sae_dirs and args.ckpt is None:
        parser.error("--sae needs --ckpt PATH (the model the dictionaries belong to)")
    if args.episodes is not None and args.episodes < 1:
        print("error: --episodes must be >= 1", file=sys.stderr)
        return 2

    if args.serve:
        from dtjax.loader import LoadError  # lazy: CLI start-up (jax)

        try:
            return serve(args.ckpt, host=args.host, port=args.port, models_dir=args.models, sae_dirs=sae_dirs,
                         log_fn=(lambda *_: None) if args.quiet else None)
        except (LoadError, ValueError, OSError) as e:
            print(f"error: {str(e).splitlines()[0] if str(e) else type(e).__name__}", file=sys.stderr)
            return 1

    from dtjax.loader import LoadError  # lazy: CLI start-up (jax)
    from dtjax.report import ReportError, ReportOptions, build_report  # lazy: CLI start-up (jax, matplotlib)

    if args.dynamics:
        from dtjax.dynamics import DynamicsOptions, write_dynamics  # lazy: CLI start-up (jax, matplotlib)

        opts = DynamicsOptions(seed=args.seed)
        if args.episodes is not None:
            opts = opts.replace(calib_episodes=args.episodes)
        try:
            print(write_dynamics(args.dynamics, args.out, opts,
                                 log=(lambda *_: None) if args.quiet else (lambda m: print(m, file=sys.stderr))))
        except (LoadError, ConfigError, ValueError, OSError) as e:
            print(f"error: {str(e).splitlines()[0] if str(e) else type(e).__name__}", file=sys.stderr)
            return 1
        return 0
    if args.census:
        from dtjax.census import write_census  # lazy: CLI start-up (jax, matplotlib)

        try:
            print(write_census(args.census, args.out, log=(lambda *_: None) if args.quiet else (lambda m: print(m, file=sys.stderr))))
        except (LoadError, ConfigError, ValueError, OSError) as e:
            print(f"error: {str(e).splitlines()[0] if str(e) else type(e).__name__}", file=sys.stderr)
            return 1
        return 0
    opt = (ReportOptions.quick() if args.fast else ReportOptions()).replace(direction=args.direction, rtg=args.rtg,
                                                                            seed=args.seed)
    if args.episodes is not None:
        opt = opt.replace(calib_episodes=args.episodes, ablation_episodes=args.episodes)
    if args.no_closed_loop:
        opt = opt.replace(closed_loop=False)
    if sae_dirs:
        opt = opt.replace(sae_dirs=sae_dirs)
    if args.probes:
        opt = opt.replace(probes=True)
    if args.sections:
        opt = opt.replace(sections=tuple(s.strip() for s in args.sections.split(",") if s.strip()))
    out = args.out or Path("reports") / (args.ckpt.stem if args.ckpt.suffix == ".pt" else args.ckpt.absolute().name)
    try:
        build_report(args.ckpt, out, opt, log=(lambda *_: None) if args.quiet else (lambda m: print(m, file=sys.stderr)))
    except (LoadError, ConfigError, ReportError, ValueError, OSError) as e:
        print(f"error: {str(e).splitlines()[0] if str(e) else type(e).__name__}", file=sys.stderr)
        return 1
    print(out / "report.html")
    return 0


if __name__ == "__main__":
    sys.exit(main())
