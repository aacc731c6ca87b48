"""The trajectory store: one directory per dataset, written atomically, validated on load.

Format (schema version 1)::

    <dataset>/
      metadata.json      schema_version, env_id, max_steps, n_obstacles, obs_mode, seed, the data
                         config (policy mix), counts (steps, episodes, per source), created
      agent_pos.npy      (N, 2)    int8   MiniGrid (x, y) of the state acted in
      agent_dir.npy      (N,)      int8   0=E 1=S 2=W 3=N
      obstacles.npy      (N, n, 2) int8   ball cells, MiniGrid list order
      time.npy           (N,)      int16  step count within the episode (the DT's timestep)
      action.npy         (N,)      int8   0 left, 1 right, 2 forward
      reward.npy         (N,)      float32
      terminated.npy     (N,)      bool
      truncated.npy      (N,)      bool
      source.npy         (N,)      int8   0 PPO training rollouts, 1 uniform random, 2 final policy
                                          with epsilon, 3 earlier PPO snapshots with epsilon

Transitions are grouped by episode, episodes are contiguous and complete (the last transition of
each has terminated or truncated set), so episode boundaries are implied. Observations are not
stored: ``env.observe(state)`` regenerates them exactly (147 bytes/step saved; the compact state
is at most ~20 bytes).

Writes go to ``<dataset>.tmp-<pid>`` and are renamed into place only when complete, so a crash
never leaves a half-written dataset, and an existing dataset is never overwritten.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np

SCHEMA_VERSION = 1
SOURCES = ("ppo", "random", "final_eps", "snapshot_eps")
FIELDS = {
    "agent_pos": (np.int8, 2), "agent_dir": (np.int8, 1), "obstacles": (np.int8, 3), "time": (np.int16, 1),
    "action": (np.int8, 1), "reward": (np.float32, 1), "terminated": (np.bool_, 1), "truncated": (np.bool_, 1),
    "source": (np.int8, 1),
}


class DatasetError(ValueError):
    """A dataset that is missing, corrupt, truncated or does not match; the message is one line."""


def save(path: str | os.PathLike, arrays: dict[str, np.ndarray], metadata: dict) -> Path:
    """Write a dataset directory atomically. Refuses to overwrite an existing path."""
    path = Path(path)
    if path.exists():
        raise DatasetError(f"dataset {path} already exists; choose another path or delete it")
    _check_arrays(arrays, str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        for name, (dtype, _) in FIELDS.items():
            with open(tmp / f"{name}.npy", "wb") as f:
                np.save(f, np.ascontiguousarray(arrays[name], dtype=dtype))
                f.flush()
                os.fsync(f.fileno())
        meta = {**metadata, "schema_version": SCHEMA_VERSION, "counts": counts(arrays), "created": time.time()}
        with open(tmp / "metadata.json", "w") as f:
            json.dump(meta, f, indent=2, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def load(path: str | os.PathLike, expect: dict | None = None) -> tuple[dict[str, np.ndarray], dict]:
    """Read and validate a dataset: (arrays, metadata).

    ``expect``: metadata fields that must match (e.g. env_id, max_steps), else DatasetError.
    """
    path = Path(path)
    if not path.is_dir():
        raise DatasetError(f"dataset not found: {path}")
    meta_path = path / "metadata.json"
    if not meta_path.exists():
        raise DatasetError(f"{path} is not a dtjax dataset (no metadata.json)")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as e:
        raise DatasetError(f"{path}: corrupt metadata.json ({e.msg})") from e
    if meta.get("schema_version") != SCHEMA_VERSION:
        raise DatasetError(f"{path}: schema version {meta.get('schema_version')!r}, this dtjax reads {SCHEMA_VERSION}")
    arrays = {}
    for name in FIELDS:
        f = path / f"{name}.npy"
        if not f.exists():
            raise DatasetError(f"{path}: missing {name}.npy")
        try:
            arrays[name] = np.load(f, allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:
            raise DatasetError(f"{path}: corrupt or truncated {name}.npy ({str(e)[:80]})") from e
    _check_arrays(arrays, str(path))
    if counts(arrays) != meta.get("counts"):
        raise DatasetError(f"{path}: arrays do not match the counts in metadata.json")
    for k, v in (expect or {}).items():
        if meta.get(k) != v:
            raise DatasetError(f"{path}: dataset has {k}={meta.get(k)!r}, expected {v!r}")
    return arrays, meta


def _check_arrays(arrays: dict[str, np.ndarray], where: str) -> None:
    missing = [k for k in FIELDS if k not in arrays]
    if missing:
        raise DatasetError(f"{where}: missing arrays {', '.join(missing)}")
    n = len(arrays["action"])
    for name, (_, ndim) in FIELDS.items():
        a = arrays[name]
        if a.ndim != ndim or len(a) != n:
            raise DatasetError(f"{where}: {name} has shape {a.shape}, expected {ndim} dims and {n} rows")
    if n == 0:
        raise DatasetError(f"{where}: the dataset is empty")
    done = np.asarray(arrays["terminated"]) | np.asarray(arrays["truncated"])
    if not done[-1]:
        raise DatasetError(f"{where}: the last episode is incomplete")


def episode_index(arrays: dict[str, np.ndarray]):
    """(episode id per step (N,), episode starts (E,), lengths (E,), returns (E,))."""
    done = np.asarray(arrays["terminated"]) | np.asarray(arrays["truncated"])
    ends = np.flatnonzero(done)
    starts = np.concatenate([[0], ends[:-1] + 1])
    lengths = ends - starts + 1
    ep = np.repeat(np.arange(len(starts)), lengths)
    returns = np.add.reduceat(np.asarray(arrays["reward"], np.float64), starts)
    return ep, starts, lengths, returns.astype(np.float32)


def counts(arrays: dict[str, np.ndarray]) -> dict:
    """Steps and episodes, in all and per source."""
    ep, starts, lengths, returns = episode_index(arrays)
    src = np.asarray(arrays["source"])[starts]
    return {
        "steps": int(len(arrays["action"])),
        "episodes": int(len(starts)),
        "per_source": {s: {"episodes": int((src == i).sum()), "steps": int(lengths[src == i].sum())}
                       for i, s in enumerate(SOURCES) if (src == i).any()},
    }


def summary(arrays: dict[str, np.ndarray]) -> dict:
    """Episodes, steps, outcome counts (goal/hit/timeout), return histogram and lengths."""
    ep, starts, lengths, returns = episode_index(arrays)
    last = starts + lengths - 1
    reward_last = np.asarray(arrays["reward"])[last]
    goal, hit = reward_last > 0, reward_last <= -1
    hist, edges = np.histogram(returns, bins=20, range=(-1.0, 1.0))
    src = np.asarray(arrays["source"])[starts]
    per_source = {}
    for i, s in enumerate(SOURCES):
        m = src == i
        if m.any():
            per_source[s] = {"episodes": int(m.sum()), "mean_return": float(returns[m].mean()),
                             "goal": float(goal[m].mean()), "hit": float(hit[m].mean())}
    return {
        "episodes": int(len(starts)),
        "steps": int(len(ep)),
        "outcomes": {"goal": int(goal.sum()), "hit": int(hit.sum()), "timeout": int((~goal & ~hit).sum())},
        "mean_return": float(returns.mean()),
        "length": {"mean": float(lengths.mean()), "min": int(lengths.min()), "max": int(lengths.max())},
        "return_histogram": {"counts": hist.tolist(), "edges": np.round(edges, 3).tolist()},
        "per_source": per_source,
    }


def format_summary(s: dict) -> str:
    o = s["outcomes"]
    lines = [
        f"{s['episodes']} episodes, {s['steps']} steps; mean return {s['mean_return']:.3f}; "
        f"goal {o['goal']}, hit {o['hit']}, timeout {o['timeout']}; length mean {s['length']['mean']:.1f} "
        f"(min {s['length']['min']}, max {s['length']['max']})",
    ]
    for name, v in s["per_source"].items():
        lines.append(f"  {name:13s} {v['episodes']:7d} episodes, mean return {v['mean_return']:+.3f}, "
                     f"goal {v['goal']:.1%}, hit {v['hit']:.1%}")
    return "\n".join(lines)


def plot_summary(arrays: dict[str, np.ndarray], path: str) -> None:
    """Return vs episode length scatter with marginal histograms (the original's reward-over-time plot)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    _, _, lengths, returns = episode_index(arrays)
    fig = plt.figure(figsize=(7, 6))
    gs = fig.add_gridspec(2, 2, width_ratios=(4, 1), height_ratios=(1, 4), hspace=0.05, wspace=0.05)
    ax = fig.add_subplot(gs[1, 0])
    colors = np.where(returns > 0, "tab:green", np.where(returns < 0, "tab:red", "tab:grey"))
    ax.scatter(lengths, returns, c=colors, s=4, alpha=0.3)
    ax.set_xlabel("episode length")
    ax.set_ylabel("return")
    axx = fig.add_subplot(gs[0, 0], sharex=ax)
    axx.hist(lengths, bins=60, color="tab:blue")
    axx.tick_params(labelbottom=False)
    axy = fig.add_subplot(gs[1, 1], sharey=ax)
    axy.hist(returns, bins=40, orientation="horizontal", color="tab:blue")
    axy.tick_params(labelleft=False)
    fig.suptitle(f"{len(lengths)} episodes")
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
