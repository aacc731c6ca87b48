"""The mechanism census of many trained Decision Transformers: ``analyse.py --census RUN [RUN ...]``.

The front end of ``dtjax.circuits.census`` (which classifies one model's avoidance mechanism as
pure functions; its docstring explains the probes, contrasts and shares): ``census`` reads every
model of a multi-seed run (``train.py --num_seeds N``: its ``seed_k/`` directories), or of a list
of runs and original ``.pt`` files, runs ``mechanism`` on each and adds its saved calibration;
``census_table`` and ``summary_table`` format the results as markdown, ``plots.census_shares``
draws them, and ``write_census`` writes ``census.json``, ``census.md`` and ``census.png``
(atomically, through ``dtjax.io``).

``read_model`` is the one place the census reads a run from disk.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from dtjax import io, plots
from dtjax import scenarios as S
from dtjax.circuits.census import census_counts, mechanism
from dtjax.config import EnvConfig, ModelConfig
from dtjax.run import Run


def read_model(path: Path) -> tuple[ModelConfig, dict, EnvConfig, dict | None]:
    """(cfg, params, env_cfg, calibration) of one model: a dtjax run directory (its saved
    ``calibration.json``, or None) or an original ``.pt`` file (no calibration)."""
    run = Run.open(path).require_model()
    return run.model_cfg, run.params, run.env_cfg, run.calibration()


def calibration_summary(calib: dict | None) -> dict | None:
    """The census's view of a run's ``calibration.json``: its error, the mean returns at the lowest
    and highest target, whether it is monotonic, and the number of episodes (None without one)."""
    if calib is None:
        return None
    rows = calib["rows"]
    x = np.array([r["target_rtg"] for r in rows])
    y = np.array([r["mean_return"] for r in rows])
    return {"calibration_error": float(calib.get("calibration_error", np.mean(np.abs(y - x)))),
            "return_at_low": float(y[np.argmin(x)]), "return_at_high": float(y[np.argmax(x)]),
            "monotonic": bool(calib.get("monotonic", False)), "episodes": int(sum(r["episodes"] for r in rows))}


def checkpoints_of(run: str | Path) -> list[Path]:
    """The model paths of a run: its ``seed_k`` directories (in k order), or the run itself."""
    return Run.open(run).models()


def census(run: str | Path | list, log: Callable[[str], object] = lambda msg: None, **kw) -> dict:
    """``mechanism`` (``**kw`` passed on) and calibration of every model of ``run`` (a multi-seed
    run directory, one run or checkpoint, or a list of them). Returns ``{"models": [row per
    model], "counts": census_counts(rows)}``."""
    paths = [Path(p) for p in run] if isinstance(run, (list, tuple)) else checkpoints_of(run)
    rows = []
    for p in paths:
        log(f"census: {p}")
        cfg, params, env_cfg, calib = read_model(p)
        # its questions (the ball-ahead veto and its RTG gate) are a task with balls to avoid's:
        # any other (Empty, Memory) is a one-line "not defined for this task"
        S.require_balls(env_cfg.make()[0].task, "the census (the ball-ahead veto and its RTG gate)")
        rows.append({"model": str(p), "config": {"n_layers": cfg.n_layers, "obs_mode": cfg.obs_mode,
                                                 "n_timesteps": cfg.n_timesteps},
                     **mechanism(params, cfg, env_cfg, **kw), "calibration": calibration_summary(calib)})
    return {"models": rows, "counts": census_counts(rows)}


def _carrier_cell(r: dict, key: str) -> str:
    """``carrier share`` and the runner-up, e.g. ``L0H1 0.39 (L0_mlp 0.14)``."""
    carry = r["contrasts"][key]["carry"]
    order = sorted(carry, key=carry.get, reverse=True)
    return f"{order[0]} {carry[order[0]]:.2f} ({order[1]} {carry[order[1]]:.2f})"


def census_table(result: dict) -> str:
    """A markdown table, one line per model: veto and gate carriers with their shares (runner-up
    in brackets), the veto effect, attention to RTG, calibration error and the sweep's ends."""
    lines = ["| model | veto carrier (runner-up) | veto effect | gate carrier (runner-up) | attn→RTG min | saturated | "
             "head circuit | calib. error | return @−1 / @+1 |", "|---|---|---|---|---|---|---|---|---|"]
    for r in result["models"]:
        cal = r["calibration"]
        cal_s = f"{cal['calibration_error']:.3f} | {cal['return_at_low']:+.2f} / {cal['return_at_high']:+.2f}" if cal else "– | –"
        lines.append(f"| {Path(r['model']).name} | {_carrier_cell(r, 'veto')} | {r['contrasts']['veto']['effect']:+.1f} | "
                     f"{_carrier_cell(r, 'gate')} | {np.min(r['attn_to_rtg']):.2f} | {'yes' if r['saturated'] else 'no'} | "
                     f"{'yes' if r['head_circuit'] else 'no'} | {cal_s} |")
    n = result["counts"]
    lines += ["", f"{n['models']} models; veto carriers {n['veto']}; gate carriers {n['gate']}; attention saturated on "
              f"the RTG token in {n['saturated']}; the original's head circuit (veto and gate in one head) in {n['head_circuit']}."]
    return "\n".join(lines)


def summary_table(results: dict[str, dict]) -> str:
    """One markdown line per census (name -> ``census`` result): how many models have each veto
    and gate carrier, saturated attention and the head circuit, and their calibration."""
    lines = ["| run | models | veto carrier | gate carrier | attention saturated on RTG | head circuit | "
             "calib. error (mean ± sd) | return @−1 / @+1 (mean) |", "|---|---|---|---|---|---|---|---|"]
    for name, res in results.items():
        n = res["counts"]
        cals = [r["calibration"] for r in res["models"] if r["calibration"]]
        err = np.array([c["calibration_error"] for c in cals])
        fmt = lambda d: ", ".join(f"{k} {v}" for k, v in d.items())  # noqa: E731
        cal_s = (f"{err.mean():.3f} ± {err.std():.3f} | {np.mean([c['return_at_low'] for c in cals]):+.2f} / "
                 f"{np.mean([c['return_at_high'] for c in cals]):+.2f}") if cals else "– | –"
        lines.append(f"| {name} | {n['models']} | {fmt(n['veto'])} | {fmt(n['gate'])} | {n['saturated']} | "
                     f"{n['head_circuit']} | {cal_s} |")
    return "\n".join(lines)


def write_census(runs, out_dir: str | Path | None = None, log: Callable[[str], object] = print) -> Path:
    """``census`` of one run (or of several) written as ``census.json``, ``census.md`` and
    ``census.png`` in ``out_dir`` (default: the run directory, ``reports/<stem>`` for an original
    ``.pt``; for several runs ``reports/census``,
    with one ``census_<run>.json`` each and the summary table first). Returns the markdown path.
    What ``analyse.py --census RUN [RUN ...]`` calls."""
    runs = [Path(r) for r in (runs if isinstance(runs, (list, tuple)) else [runs])]
    for r in runs:
        if not r.exists():
            raise FileNotFoundError(f"no run at {r}")
    results = {r.name: census(r, log=log) for r in runs}  # first: a task it is not defined for writes nothing
    one = runs[0] if runs[0].is_dir() else Path("reports") / runs[0].stem  # an original .pt: beside its report
    out = Path(out_dir) if out_dir else (one if len(runs) == 1 else Path("reports") / "census")
    out.mkdir(parents=True, exist_ok=True)
    if len(runs) == 1:
        io.write_json_atomic(out / "census.json", io.jsonable(results[runs[0].name]), indent=1, sort_keys=False)
        text = census_table(results[runs[0].name])
    else:
        for name, res in results.items():
            io.write_json_atomic(out / f"census_{name}.json", io.jsonable(res), indent=1, sort_keys=False)
        text = summary_table(results) + "\n\n" + "\n\n".join(f"### {k}\n\n{census_table(v)}" for k, v in results.items())
    io.write_text_atomic(out / "census.md", text + "\n")
    io.write_bytes_atomic(out / "census.png", plots.png_bytes(plots.census_shares(results), dpi=110))
    return out / "census.md"
