"""The adversary search on Memory models and the transfer of its adversaries between them: the
numbers of docs/findings.md §13 ("Adversary search and transfer").

    python scripts/memory_adversary_findings.py --models checkpoints/original/MemoryGatedMLP.pt RUN [...] \\
        [--top_b 32] [--out docs/findings]

Each model (a ``.pt``, a run directory, or a ``--num_seeds`` run's root, which stands for all its
seeds) is searched (`dtjax.circuits.adversary.search`); then every model's decision-flipping edits
(singles and searched pairs, per context) are applied to every other model (`transfer`): the
fraction that still flip, overall and for the edits that leave the instruction cell (s5 (2,6))
alone, beside the target's own rate for a random single edit. Prints markdown tables and writes
``<out>/memory_adversary.json``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from dtjax.circuits import adversary as A
from dtjax.circuits import memory as M
from dtjax.io import jsonable, write_json_atomic
from dtjax.run import Run


def model_paths(paths: list[str]) -> list[Path]:
    out = []
    for p in paths:
        out.extend(Run.open(p).models())
    return out


def correct_at(ld0: np.ndarray, rtg_index: int = 0) -> int:
    """How many of the 4 layouts go to the match at the first RTG (left when the match is on top)."""
    want = np.asarray([1.0 if inst == top else -1.0 for inst, top in M.LAYOUTS])
    return int((np.sign(ld0.reshape(len(M.LAYOUTS), -1)[:, rtg_index]) == want).sum())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", required=True)
    p.add_argument("--names", nargs="*", default=None, help="a short name per model (default: the path's last parts)")
    p.add_argument("--top_b", type=int, default=32)
    p.add_argument("--out", type=Path, default=Path("docs/findings"))
    args = p.parse_args(argv)
    paths = model_paths(args.models)
    names = args.names or ["/".join(q.parts[-2:]) if q.name.startswith("seed_") else q.stem for q in paths]
    models, searches = [], []
    out = {"top_b": args.top_b, "models": {}, "transfer": []}
    for name, path in zip(names, paths):
        run = Run.open(path).require_model()
        cfg, params = run.model_cfg, jax.tree.map(jnp.asarray, run.params)
        t = time.perf_counter()
        s = A.search(params, cfg, top_b=args.top_b)
        secs = time.perf_counter() - t
        models.append((name, cfg, params))
        searches.append(s)
        rates, frames = A.flip_rates(s), A.by_frame(s)
        out["models"][name] = {
            "path": str(path), "seconds": secs, "labels": s.labels, "ld0": s.ld0, "correct_at_0.892": correct_at(s.ld0),
            "singles": len(s.singles_ld), "pairs": len(s.pairs_ld), "flip_rate": rates["decision"],
            "feature_flip_rate": rates["feature"], "pair_flip_rate": rates["pairs"],
            "feature_flip_rate_any_frame": rates["feature_any"],
            "min_edit": [A.size_label(v) for v in s.min_decision],
            "min_edit_other": [A.size_label(v) for v in A.min_decision_without(s)],
            "min_edit_feature": [A.size_label(v) for v in s.min_feature],
            "by_frame_decision": np.nanmean(frames["decision"], 0), "by_frame_feature": np.nanmean(frames["feature"], 0),
            "best": [A.best_edits(s, c, 3) for c in range(len(s.labels))],
        }
        print(f"{name}: {len(s.singles_ld)} singles + {len(s.pairs_ld)} pairs in {secs:.0f} s; correct at 0.892: "
              f"{correct_at(s.ld0)}/4; single flip rate {s.singles_flip.mean():.4f}; min edit "
              f"{out['models'][name]['min_edit']}; other than the instruction {out['models'][name]['min_edit_other']}",
              flush=True)
        print("  by frame (decision):", np.round(out["models"][name]["by_frame_decision"], 4).tolist())
        print("  by frame (feature): ", np.round(out["models"][name]["by_frame_feature"], 4).tolist())
        for c, label in enumerate(s.labels):
            best = A.best_edits(s, c, 2)
            print(f"  {label}: LD {s.ld0[c]:+.2f}; " + "; ".join(f"{e['edit']} {e['ld']:+.2f}" for e in best))

    print("\nFlipping edits of each source that flip each target: all / singles / other than the instruction cell")
    print("\n| source (n all / singles / other) | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    for i, (src, s) in enumerate(zip(names, searches)):
        ctx, edits = A.flipping_edits(s)
        other = ~A.touches(edits, M.INSTRUCTION_FRAME, M.INSTRUCTION_CELL)
        single = edits[:, 1, 0] < 0 if len(edits) else np.zeros(0, bool)
        cells = []
        for j, (dst, cfg, params) in enumerate(models):
            r = A.transfer(params, cfg, ctx, edits)
            flip = r["flip"]
            frac = lambda m: float(flip[m].mean()) if m.any() else None  # noqa: E731
            row = {"source": src, "target": dst, "n": int(len(flip)), "rate": frac(np.ones(len(flip), bool)),
                   "n_singles": int(single.sum()), "rate_singles": frac(single),
                   "n_other": int(other.sum()), "rate_other": frac(other),
                   "target_single_rate": float(searches[j].singles_flip.mean()), "per_context": r["rate"]}
            out["transfer"].append(row)
            fmt = lambda v: "—" if v is None else f"{v:.2f}"  # noqa: E731
            cells.append(f"{fmt(row['rate'])} / {fmt(row['rate_singles'])} / {fmt(row['rate_other'])}")
        print(f"| {src} ({len(ctx)} / {int(single.sum())} / {int(other.sum())}) | " + " | ".join(cells) + " |")
    print("| random single edit | " + " | ".join(f"{s.singles_flip.mean():.4f}" for s in searches) + " |")
    args.out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out / "memory_adversary.json", jsonable(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
