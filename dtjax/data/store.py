"""The trajectory store: one directory per dataset, written atomically, validated on load.

Format (schema version 1)::

    <dataset>/
      metadata.json      schema_version, env_id, max_steps, size, n_obstacles, obs_mode (what
                         the PPO saw), seed, data_config (PPO settings and policy mix),
                         collection (timings, PPO return per update), counts (steps, episodes,
                         per source), created (unix time), outcome_words (the task's
                         names of success and failure, e.g. ["success", "wrong"]: the summary's)
      agent_pos.npy      (N, 2)    int8    MiniGrid (x, y) of the state acted in
      agent_dir.npy      (N,)      int8    0=E 1=S 2=W 3=N
      obstacles.npy      (N, n, 2) int8    ball cells (x, y), MiniGrid list order
      time.npy           (N,)      int16   step count of that state (the DT's timestep)
      action.npy         (N,)      int8    0 left, 1 right, 2 forward
      reward.npy         (N,)      float32 reward of the step
      terminated.npy     (N,)      bool    goal or crash on this step
      truncated.npy      (N,)      bool    time limit on this step
      source.npy         (N,)      int8    index into SOURCES: the policy that acted
      obs.npy            (N, H, W, C) uint8  optional: the observations (metadata obs_mode)
      behaviour.npy      (N,)      int32   optional: which behaviour acted, within its source (the
                                           PPO update; a mix policy and its episode's wait or
                                           branch step): ESPER-style groups, dtjax.data.relabel
      value.npy          (N,)      float32 optional: the final PPO critic's value of the state (rtg_label
                                           "value_critic", dtjax.data.value)
      <field>.npy        (N, ...)  int16 or bool  the family's other state fields (Memory: its
                         objects and what the agent carries), listed in metadata
                         ``state_fields`` {name: dtype}; none for Dynamic Obstacles and Empty

``metadata.json`` may also say ``n_actions`` (the family's; actions are checked against it,
default 3). A dataset without ``state_fields`` or ``n_actions`` (older dtjax) reads as before.

Rows are transitions grouped by episode: episodes are contiguous and complete (the last row of
each has terminated or truncated set), so boundaries are implied, and within an episode
``time`` rises by one per row. Most episodes start at time 0; branch episodes (see
DataMixConfig) start where they were recorded. Observations need not be stored:
``env.observe(EnvState(agent_pos, agent_dir, obstacles, time, <state_fields>))`` (the fields the
family's ``EnvState`` has) regenerates them exactly, in any obs mode (147 bytes/step for
"image", 980 for "one_hot", against ~17 bytes of state).

Writes go to a hidden sibling ``.<name>.tmp-<pid>-<rand>`` (``dtjax.io.atomic_dir``), every file is fsynced, and the
directory is renamed into place only when complete (then the parent is fsynced), so a crash
never leaves a half-written dataset, and an existing path is never overwritten. ``load``
checks everything it reads and raises ``DatasetError`` with a one-line message.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np

from dtjax import io

SCHEMA_VERSION = 1
SOURCES = ("ppo", "random", "final", "snapshot", "branch", "wait", "hazard", "tempered", "blind")  # append only: stored as indices
# name -> (dtype on disk, ndim)
FIELDS = {
    "agent_pos": (np.int8, 2), "agent_dir": (np.int8, 1), "obstacles": (np.int8, 3), "time": (np.int16, 1),
    "action": (np.int8, 1), "reward": (np.float32, 1), "terminated": (np.bool_, 1), "truncated": (np.bool_, 1),
    "source": (np.int8, 1),
}
OPTIONAL = {"obs": (np.uint8, 4), "behaviour": (np.int32, 1), "value": (np.float32, 1)}
N_ACTIONS = 3  # actions of a dataset whose metadata has no n_actions (Dynamic Obstacles, Empty)
STATE_DTYPES = {"bool": np.bool_, "int16": np.int16}  # a state field's dtype on disk


def state_fields(arrays: dict[str, np.ndarray]) -> dict[str, str]:
    """The family's extra state fields among ``arrays`` (neither FIELDS nor OPTIONAL): name -> dtype on disk."""
    out = {}
    for name, a in arrays.items():
        if name in FIELDS or name in OPTIONAL:
            continue
        a = np.asarray(a)
        if a.dtype == np.bool_:
            out[name] = "bool"
        elif np.issubdtype(a.dtype, np.integer) and (a.size == 0 or (a.min() >= -(2**15) and a.max() < 2**15)):
            out[name] = "int16"
        else:
            raise DatasetError(f"state field {name!r} must be bool or small integers, got {a.dtype}")
    return out


class DatasetError(ValueError):
    """A dataset that is missing, corrupt, truncated or does not match; the message is one line."""


def _exists(path: Path) -> DatasetError:
    return DatasetError(f"dataset {path} already exists; choose another path or delete it")


def save(path: str | os.PathLike, arrays: dict[str, np.ndarray], metadata: dict) -> Path:
    """Write a dataset directory atomically; refuses to overwrite an existing path.

    ``arrays``: every FIELDS entry, plus optionally ``obs``, plus the family's other state fields
    (any other name: bool or small integers, recorded in ``state_fields``). ``metadata``:
    JSON-able dict (at least env_id and max_steps); ``schema_version``, ``state_fields``,
    ``counts`` and ``created`` are added.
    """
    path = Path(path)
    if path.exists():
        raise _exists(path)
    extra = state_fields(arrays)
    metadata = {**metadata, "state_fields": extra}
    _check_arrays(arrays, str(path), metadata)
    with io.atomic_dir(path, _exists) as tmp:
        names = {**FIELDS, **{k: v for k, v in OPTIONAL.items() if k in arrays},
                 **{k: (STATE_DTYPES[d], None) for k, d in extra.items()}}
        for name, (dtype, _) in names.items():
            with open(tmp / f"{name}.npy", "wb") as f:
                np.save(f, np.ascontiguousarray(arrays[name], dtype=dtype))
                io.fsync_file(f)
        meta = {**metadata, "schema_version": SCHEMA_VERSION, "counts": counts(arrays), "created": time.time()}
        with open(tmp / "metadata.json", "w") as f:
            json.dump(meta, f, indent=2, sort_keys=True)
            io.fsync_file(f)
    return path


def load(path: str | os.PathLike, expect: dict | None = None, mmap: bool = False) -> tuple[dict[str, np.ndarray], dict]:
    """Read and validate a dataset: (arrays, metadata).

    ``expect``: metadata fields that must match (e.g. env_id, max_steps), else DatasetError.
    ``mmap``: memory-map the arrays instead of reading them.
    """
    path = Path(path)
    if not path.is_dir():
        raise DatasetError(f"dataset not found: {path}")
    meta_path = path / "metadata.json"
    if not meta_path.exists():
        raise DatasetError(f"{path} is not a dtjax dataset (no metadata.json)")
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DatasetError(f"{path}: corrupt metadata.json ({getattr(e, 'msg', e.__class__.__name__)})") from e
    if not isinstance(meta, dict):
        raise DatasetError(f"{path}: corrupt metadata.json (not an object)")
    if meta.get("schema_version") != SCHEMA_VERSION:
        raise DatasetError(f"{path}: schema version {meta.get('schema_version')!r}, this dtjax reads {SCHEMA_VERSION}")
    missing = [k for k in ("env_id", "max_steps", "counts") if k not in meta]
    if missing:
        raise DatasetError(f"{path}: metadata.json lacks {', '.join(missing)}")
    extra = meta.get("state_fields") or {}
    if not isinstance(extra, dict) or any(d not in STATE_DTYPES or k in FIELDS or k in OPTIONAL for k, d in extra.items()):
        raise DatasetError(f"{path}: metadata.json has a malformed state_fields {extra!r}")
    arrays = {}
    for name, (dtype, _) in {**FIELDS, **OPTIONAL, **{k: (STATE_DTYPES[d], None) for k, d in extra.items()}}.items():
        f = path / f"{name}.npy"
        if not f.exists():
            if name in OPTIONAL:
                continue
            raise DatasetError(f"{path}: missing {name}.npy")
        try:
            arrays[name] = np.load(f, allow_pickle=False, mmap_mode="r" if mmap else None)
        except (ValueError, OSError, EOFError) as e:
            raise DatasetError(f"{path}: corrupt or truncated {name}.npy ({str(e).splitlines()[0][:80]})") from e
        if arrays[name].dtype != dtype:
            raise DatasetError(f"{path}: {name}.npy has dtype {arrays[name].dtype}, expected {np.dtype(dtype)}")
    _check_arrays(arrays, str(path), meta)
    if counts(arrays) != meta.get("counts"):
        raise DatasetError(f"{path}: arrays do not match the counts in metadata.json")
    for k, v in (expect or {}).items():
        if meta.get(k) != v:
            raise DatasetError(f"{path}: dataset has {k}={meta.get(k)!r}, expected {v!r}")
    return arrays, meta


def _check_arrays(arrays: dict[str, np.ndarray], where: str, meta: dict | None = None) -> None:
    """Shapes, value ranges and episode structure; raises DatasetError."""
    missing = [k for k in FIELDS if k not in arrays]
    if missing:
        raise DatasetError(f"{where}: missing arrays {', '.join(missing)}")
    n = len(arrays["action"])
    for name, (_, ndim) in {**FIELDS, **OPTIONAL}.items():
        if name not in arrays:
            continue
        a = np.asarray(arrays[name])
        if a.ndim != ndim or len(a) != n:
            raise DatasetError(f"{where}: {name} has shape {a.shape}, expected {ndim} dims and {n} rows")
    for name in state_fields(arrays):
        a = np.asarray(arrays[name])
        if a.ndim < 1 or len(a) != n:
            raise DatasetError(f"{where}: state field {name} has shape {a.shape}, expected {n} rows")
    if n == 0:
        raise DatasetError(f"{where}: the dataset is empty")
    meta = meta or {}
    pos, obst = np.asarray(arrays["agent_pos"]), np.asarray(arrays["obstacles"])
    if pos.shape[1] != 2 or obst.shape[2] != 2:
        raise DatasetError(f"{where}: positions must be (x, y) pairs, got agent_pos {pos.shape}, obstacles {obst.shape}")
    if "n_obstacles" in meta and obst.shape[1] != meta["n_obstacles"]:
        raise DatasetError(f"{where}: obstacles has {obst.shape[1]} balls, metadata says {meta['n_obstacles']}")
    size = meta.get("size")
    hi = size if size is not None else 128
    n_actions = meta.get("n_actions", N_ACTIONS)
    for name, lo_, hi_ in (("action", 0, n_actions), ("agent_dir", 0, 4), ("agent_pos", 0, hi), ("obstacles", 0, hi),
                           ("source", 0, len(SOURCES))):
        a = np.asarray(arrays[name])
        if a.size and (a.min() < lo_ or a.max() >= hi_):  # obstacles are (N, 0, 2) in a family without balls
            raise DatasetError(f"{where}: {name} values outside [{lo_}, {hi_ - 1}] (found {a.min()}..{a.max()})")
    t = np.asarray(arrays["time"]).astype(np.int64)
    max_steps = meta.get("max_steps")
    if t.min() < 0 or (max_steps is not None and t.max() >= max_steps):
        raise DatasetError(f"{where}: time values outside [0, max_steps-1] (found {t.min()}..{t.max()})")
    if not np.isfinite(np.asarray(arrays["reward"])).all():
        raise DatasetError(f"{where}: reward has non-finite values")
    done = np.asarray(arrays["terminated"]) | np.asarray(arrays["truncated"])
    if not done[-1]:
        raise DatasetError(f"{where}: the last episode is incomplete (no terminated/truncated on the last row)")
    bad = np.flatnonzero(~done[:-1] & (t[1:] != t[:-1] + 1))
    if len(bad):
        raise DatasetError(f"{where}: time does not rise by one within an episode at row {bad[0] + 1}")


def episode_index(arrays: dict[str, np.ndarray]):
    """(episode id per step (N,), episode starts (E,), lengths (E,), returns (E,) float32)."""
    done = np.asarray(arrays["terminated"]) | np.asarray(arrays["truncated"])
    ends = np.flatnonzero(done)
    if len(ends) == 0 or ends[-1] != len(done) - 1:
        ends = np.append(ends, len(done) - 1)
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


def outcomes(arrays: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Per episode (goal (E,) bool, hit (E,) bool); neither = timeout (architecture.md). In a
    task's own words (``outcome_words``): success and failure.

    goal: the last reward is positive; hit: the episode terminated otherwise, i.e. a failure of
    the task (Dynamic Obstacles: a crash, reward -1; Memory: the wrong object, reward 0)."""
    _, starts, lengths, _ = episode_index(arrays)
    last = starts + lengths - 1
    goal = np.asarray(arrays["reward"])[last] > 0
    return goal, np.asarray(arrays["terminated"])[last] & ~goal


def outcome_words(task=None) -> tuple[str, str]:
    """The names ``summary`` gives the two ways an episode ends before timeout: the task's success
    and its failure (``envs.task.Task``: Dynamic Obstacles goal / hit, Memory success / wrong,
    several failures joined by "/", "failure" for a task without one); no task: goal / hit."""
    if task is None:
        return "goal", "hit"
    return task.success, "/".join(task.failures) or "failure"


def summary(arrays: dict[str, np.ndarray], bins: int = 10, words: tuple[str, str] = ("goal", "hit")) -> dict:
    """Episodes, steps, outcome counts, return histogram, lengths, per source.

    ``words``: the task's names of success and failure (``outcome_words(task)``): the keys of
    ``outcomes`` (``{success: n, failure: n, "timeout": n}``) and of each source's rates."""
    ep, starts, lengths, returns = episode_index(arrays)
    goal, hit = outcomes(arrays)
    win, lose = words
    hist, edges = np.histogram(returns, bins=bins, range=(-1.0, 1.0))
    src = np.asarray(arrays["source"])[starts]
    per_source = {}
    for i, s in enumerate(SOURCES):
        m = src == i
        if m.any():
            per_source[s] = {"episodes": int(m.sum()), "steps": int(lengths[m].sum()), "mean_return": float(returns[m].mean()),
                             win: float(goal[m].mean()), lose: float(hit[m].mean()), "mean_length": float(lengths[m].mean())}
    return {
        "episodes": int(len(starts)),
        "steps": int(len(ep)),
        "outcomes": {win: int(goal.sum()), lose: int(hit.sum()), "timeout": int((~goal & ~hit).sum())},
        "mean_return": float(returns.mean()),
        "length": {"mean": float(lengths.mean()), "min": int(lengths.min()), "median": float(np.median(lengths)),
                   "max": int(lengths.max())},
        "return_histogram": {"counts": hist.tolist(), "edges": np.round(edges, 3).tolist()},
        "per_source": per_source,
    }


def format_summary(s: dict) -> str:
    """A few printable lines of ``summary``: totals, outcomes (in the task's words), return
    histogram, per source."""
    o, n = s["outcomes"], max(s["episodes"], 1)
    win, lose = [k for k in o if k != "timeout"]
    L = s["length"]
    lines = [
        f"{s['episodes']} episodes, {s['steps']} steps; mean return {s['mean_return']:+.3f}; "
        f"{win} {o[win]} ({o[win] / n:.1%}), {lose} {o[lose]} ({o[lose] / n:.1%}), "
        f"timeout {o['timeout']} ({o['timeout'] / n:.1%}); length mean {L['mean']:.1f}, "
        f"median {L['median']:.0f}, min {L['min']}, max {L['max']}",
        "return histogram:",
    ]
    counts_, edges = s["return_histogram"]["counts"], s["return_histogram"]["edges"]
    top = max(max(counts_), 1)
    for c, lo, hi in zip(counts_, edges[:-1], edges[1:]):
        lines.append(f"  [{lo:+.1f}, {hi:+.1f}{']' if hi >= 1 else ')'} {c:8d} {'#' * round(40 * c / top)}")
    for name, v in s["per_source"].items():
        lines.append(f"  {name:9s} {v['episodes']:7d} episodes {v['steps']:9d} steps, mean return {v['mean_return']:+.3f}, "
                     f"{win} {v[win]:.1%}, {lose} {v[lose]:.1%}, mean length {v['mean_length']:.1f}")
    return "\n".join(lines)
