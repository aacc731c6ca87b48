"""A full analyse.py report for every model shape of the matrix: does each one work, and how long does it take?

    python benchmarks/report_matrix.py [--design slow|ci] [--steps 40] [--out /tmp/report_matrix] [--rows 0,3]

For each row of the covering design of ``tests/test_report_shapes.py`` (``slow``: layers 1-4 x
timesteps {1, 3, 10} x LayerNorm x attention-only x obs mode x time embedding, 12 rows, every
pair of factor values together; ``ci``: its 7-row CI design) this trains a tiny model with
``dtjax.train.train_and_evaluate`` on the 5x5 env (d_model 16, ``--steps`` optimizer steps; the
first row collects the dataset, the others train on it), then builds a *full* report (not
``--fast``: every hook patched, closed-loop zero and mean ablations, 100 episodes per target,
512 rollout windows, a 201-point RTG scan) and prints the row's shape, its sections' status,
the training time and the report's wall time. A report's time includes its compiles (each shape
is new to XLA), which is what a user waits for; the slowest sections are named.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # this checkout, and the test designs

from dtjax.report import ReportOptions, build_report  # noqa: E402
from dtjax.train import train_and_evaluate  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--design", choices=("slow", "ci"), default="slow")
    parser.add_argument("--steps", type=int, default=40, help="DT optimizer steps per model (multiple of 10)")
    parser.add_argument("--out", type=Path, default=Path("/tmp/report_matrix"))
    parser.add_argument("--rows", help="comma-separated row indices (default: all)")
    args = parser.parse_args(argv)

    from test_report_shapes import DESIGN, FACTORS, SLOW_DESIGN
    from test_train import tiny_cfg

    design = SLOW_DESIGN if args.design == "slow" else DESIGN
    rows = [int(i) for i in args.rows.split(",")] if args.rows else list(range(len(design)))
    args.out.mkdir(parents=True, exist_ok=True)
    names = list(FACTORS)
    print(f"{len(rows)} rows of the {args.design} design; 5x5 env, d_model 16, {args.steps} DT steps; full reports")
    print(f"{'row':>3}  " + "  ".join(f"{n:>14}" for n in names) + f"  {'train s':>8}  {'report s':>9}  sections  slowest")
    dataset, total = "", 0.0
    for i in rows:
        row = dict(zip(names, design[i]))
        base = tiny_cfg(args.out)
        run_name = f"row{i:02d}"
        cfg = tiny_cfg(args.out, run_name=run_name, dataset=dataset, model=base.model.replace(**row),
                       env=base.env.replace(obs_mode=row["obs_mode"]), num_steps=args.steps, eval_every=0,
                       ckpt_every=args.steps, calib_points=5, calib_episodes=20, final_eval_episodes=20)
        run = args.out / run_name
        t = time.perf_counter()
        if not (run / "summary.json").exists():
            train_and_evaluate(cfg, progress=False)
        t_train = time.perf_counter() - t
        dataset = dataset or str(run / "dataset")
        t = time.perf_counter()
        err = ""
        try:
            build_report(run, args.out / f"report_{run_name}", ReportOptions(), log=lambda m: None)
        except Exception as e:  # noqa: BLE001 (a benchmark row reports its failure and goes on)
            err = f"{type(e).__name__}: {str(e).splitlines()[0]}"
        t_report = time.perf_counter() - t
        total += t_report
        status = json.loads((args.out / f"report_{run_name}" / "summary.json").read_text())["sections"] \
            if (args.out / f"report_{run_name}" / "summary.json").exists() else {}
        ok = sum(s["status"] == "ok" for s in status.values())
        slow = sorted(status.items(), key=lambda kv: -kv[1]["seconds"])[:3]
        print(f"{i:>3}  " + "  ".join(f"{str(v):>14}" for v in row.values())
              + f"  {t_train:8.1f}  {t_report:9.1f}  {ok:>2}/{len(status):<2}     "
              + ", ".join(f"{k} {s['seconds']:.0f}s" for k, s in slow) + (f"  ERROR {err}" if err else ""), flush=True)
    print(f"total report wall time {total:.0f} s over {len(rows)} rows (shared CPU: timings are noisy)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
