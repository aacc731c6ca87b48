"""Ground-truth probes the env gives for free, and how well single latents recover them (AUROC).

Every token of the evaluation set comes from a dataset state, so we know what the agent saw and
where it was. Binary probes, by family:

- ``cell``: the object (each of the task's: empty, wall, ball, goal) in each of the 49 view cells,
  named by view coordinate, ``cell(x,y)=ball``; the agent sits at (3, 6) facing up, so (3, 5) is
  the cell in front.
- ``front``: the object in front (the cell (3, 5) probes under their own name, ``front=ball`` is
  the "ball in front" of docs/findings.md); in a task with balls to avoid (Dynamic Obstacles) also
  ``front=ball|wall`` (the front cell is blocked: what vetoes "forward" at positive RTG), and
  ``ball_adjacent`` (a ball in one of the five view cells the agent could step or be hit from:
  left, right, front and the front diagonals).
- ``rtg``: the RTG token's value (the return the episode had from there): ``rtg<-0.5`` (a crash),
  ``rtg~0`` (|rtg| < 0.05: a timeout), ``rtg>0.5``, and its sign ``rtg>0``.
- ``time``: timestep buckets [0,5), [5,10), [10,20), [20,50), [50, inf).
- ``dir``: the agent's direction (E, S, W, N), invisible in the egocentric view.
- ``goal_dist``: Manhattan distance from the agent to the goal (at (size-2, size-2)): 1, 2-3, 4-5, 6-7, >= 8;
  only in a task with a goal cell (not Memory, whose targets are its key and ball).

A latent "recovers" a probe when its activation, used as a score, separates the probe's
positives from its negatives with AUROC >= ``THRESHOLD`` (0.9). Probes with fewer than
``MIN_COUNT`` positives or negatives in the evaluation set are not scored. AUROC is computed
from mid-ranks (ties, most of all the many zeros of a sparse latent, count half), the
Mann-Whitney statistic: AUROC = (sum of positive ranks - P(P+1)/2) / (P N); ``auroc`` and
``midranks`` are ``dtjax.probes``' (re-exported here).
"""

from __future__ import annotations

import numpy as np

from dtjax.probes.linear import auroc, midranks  # the one rank-based AUROC (dtjax.probes)

__all__ = ["auroc", "match", "midranks", "object_codes", "probe_labels"]

THRESHOLD = 0.9
MIN_COUNT = 20
OBJECTS = {"empty": 1, "wall": 2, "key": 5, "ball": 6, "goal": 8}  # MiniGrid object codes
DIRS = ("E", "S", "W", "N")
FRONT = (3, 5)
ADJACENT = ((2, 6), (4, 6), (3, 5), (2, 5), (4, 5))  # left, right, front, front-left, front-right
TIME_EDGES = (0, 5, 10, 20, 50)
DIST_BUCKETS = ((1, 1), (2, 3), (4, 5), (6, 7), (8, 10**6))


def object_codes(obs: np.ndarray) -> np.ndarray:
    """(M, 7, 7) MiniGrid object codes of raw (7, 7, 3) or one-hot (7, 7, 20) views."""
    obs = np.asarray(obs)
    return obs[..., :11].argmax(-1) if obs.shape[-1] == 20 else obs[..., 0]


def probe_labels(obs, rtg, timestep, agent_pos, agent_dir, size: int,
                 objects: tuple[str, ...] = ("empty", "wall", "ball", "goal"),
                 obstacles: bool | None = None) -> tuple[list[str], list[str], np.ndarray]:
    """(names, families, labels (M, P) bool) of every probe on M tokens.

    ``obs`` (M, 7, 7, C) views; ``rtg`` (M,) the RTG token's value; ``timestep`` (M,);
    ``agent_pos`` (M, 2) world (x, y); ``agent_dir`` (M,) 0=E 1=S 2=W 3=N; ``size`` the grid;
    ``objects``: the task's objects (``env.task.objects``; default Dynamic Obstacles'): the cell
    probes (Memory's key too), and the goal distance only where there is a goal; ``obstacles``:
    whether the balls are obstacles (``dtjax.scenarios.has_balls``; default: a ball is among
    ``objects``), which adds the blocked-front and ball-adjacent probes (not Memory's balls, an
    object to remember and walk to).
    """
    unknown = [o for o in objects if o not in OBJECTS]
    if unknown:
        raise ValueError(f"no probe for object {unknown[0]!r}; objects: {', '.join(OBJECTS)}")
    obj = object_codes(obs)
    rtg, t = np.asarray(rtg, np.float32), np.asarray(timestep)
    names, fams, cols = [], [], []

    def add(name, fam, col):
        names.append(name)
        fams.append(fam)
        cols.append(np.asarray(col, bool))

    for x in range(7):
        for y in range(7):
            for o in objects:
                code = OBJECTS[o]
                if (x, y) == FRONT:
                    add(f"front={o}", "front", obj[:, x, y] == code)
                else:
                    add(f"cell({x},{y})={o}", "cell", obj[:, x, y] == code)
    if ("ball" in objects) if obstacles is None else obstacles:  # Dynamic Obstacles': a blocked front, a ball within a step
        add("front=ball|wall", "front", np.isin(obj[:, FRONT[0], FRONT[1]], (OBJECTS["ball"], OBJECTS["wall"])))
        add("ball_adjacent", "front", np.any([obj[:, x, y] == OBJECTS["ball"] for x, y in ADJACENT], axis=0))
    add("rtg<-0.5", "rtg", rtg < -0.5)
    add("rtg~0", "rtg", np.abs(rtg) < 0.05)
    add("rtg>0.5", "rtg", rtg > 0.5)
    add("rtg>0", "rtg", rtg > 0)
    edges = TIME_EDGES + (np.inf,)
    for lo, hi in zip(edges[:-1], edges[1:]):
        add(f"t in [{lo},{hi})" if np.isfinite(hi) else f"t>={lo}", "time", (t >= lo) & (t < hi))
    for d, name in enumerate(DIRS):
        add(f"dir={name}", "dir", np.asarray(agent_dir) == d)
    if "goal" in objects:
        goal = np.array([size - 2, size - 2])
        dist = np.abs(np.asarray(agent_pos) - goal).sum(-1)
        for lo, hi in DIST_BUCKETS:
            add(f"goal_dist={lo}" if lo == hi else (f"goal_dist>={lo}" if hi > 100 else f"goal_dist={lo}-{hi}"),
                "goal_dist", (dist >= lo) & (dist <= hi))
    return names, fams, np.stack(cols, 1)


def match(auc: np.ndarray, labels: np.ndarray, names: list[str], families: list[str],
          threshold: float = THRESHOLD, min_count: int = MIN_COUNT) -> dict:
    """Best latent per probe and best probe per latent, from an AUROC matrix (n_latents, P).

    Returns: ``valid`` (P,) bool (enough positives and negatives), ``n_pos`` (P,), ``best_latent``
    (P,) and ``best_auc`` (P,), ``recovered`` (P,) bool (best_auc >= threshold), ``recovered_frac``
    over the valid probes and per family (``recovered_by_family``), and per latent
    ``latent_best_probe`` (index) and ``latent_best_auc``.
    """
    labels = np.asarray(labels, bool)
    n_pos = labels.sum(0)
    valid = (n_pos >= min_count) & (labels.shape[0] - n_pos >= min_count)
    a = np.where(np.isnan(auc), -np.inf, auc)
    best_latent = a.argmax(0)
    best_auc = a.max(0)
    recovered = valid & (best_auc >= threshold)
    a_valid = np.where(valid[None, :], a, -np.inf)
    by_family = {}
    for fam in dict.fromkeys(families):
        sel = valid & (np.asarray(families) == fam)
        by_family[fam] = {"valid": int(sel.sum()), "recovered": int((recovered & sel).sum())}
    return {"names": list(names), "families": list(families), "n_pos": n_pos, "valid": valid,
            "best_latent": best_latent, "best_auc": np.where(valid, best_auc, np.nan).astype(np.float32),
            "recovered": recovered, "recovered_frac": float(recovered.sum() / max(valid.sum(), 1)),
            "n_valid": int(valid.sum()), "recovered_by_family": by_family, "threshold": threshold,
            "min_count": min_count, "latent_best_probe": a_valid.argmax(1),
            "latent_best_auc": np.where(np.isfinite(a_valid.max(1)), a_valid.max(1), np.nan).astype(np.float32)}
