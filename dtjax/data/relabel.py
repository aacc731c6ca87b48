"""What the Decision Transformer is told it will get: the return-to-go label of each step.

A DT trained on *realised* returns-to-go learns pi(a | s, R = what happened). In a stochastic
env the realised return mixes the behaviour's intent with the env's luck: a careful policy that a
ball happens to block is labelled -1 like a policy that crashes on purpose, and a return of -0.5
never happens at all (Dynamic Obstacles pays -1, 0 or the goal reward), so the DT has nothing to
copy at a target of -0.5 (Paster et al. 2022, "You Can't Count on Luck", ESPER).

``RTG_LABELS`` (``DataConfig.rtg_label``):

- ``"realised"``: the undiscounted return-to-go of the step's own episode (the original DT).
- ``"group_mean"``: ESPER-style expected-return relabelling. Episodes are grouped by the
  behaviour that produced them, a label that carries no information about the env's randomness:
  the source and its ``behaviour`` id (``store``: the PPO update whose policy acted; for a mix
  rollout, the policy and the episode's drawn wait or branch step). Each step's RTG is shifted by
  (group mean return - episode return), so with terminal-only rewards every step of a group is
  labelled the group's mean return, an estimate of the behaviour's expected return. ESPER learns
  its clusters with an adversarial objective; here the behaviours are known, so the groups are
  exact.
- ``"hazard_mean"``: group means for the ``hazard`` rollouts only (uniform random play after a
  wait near the time limit; group = the wait), realised labels elsewhere. Their mean returns
  fill (-1, 0): a target of -0.5 asks for "the wait after which random play crashes half the
  time". (Measured: a greedy DT does not reproduce it: it copies no randomness.)
- ``"blind_mean"``: group means for the ``blind`` rollouts only (the final policy, greedy and blind
  to the obstacles, after a wait near the time limit; group = the wait). The behaviour is a
  deterministic function of the state, and its crash rate comes from the balls' moves, the env's
  randomness: greedy play can reproduce it, so its group mean is a return the DT can meet.

Everything is vectorised NumPy over the whole dataset, run once before training.
"""

from __future__ import annotations

import numpy as np

from dtjax.config import RTG_LABELS
from dtjax.data import store, value

__all__ = ["RTG_LABELS", "ONLY_SOURCE", "DRAW_RANGE", "episode_groups", "group_means", "rtg_shift"]
ONLY_SOURCE = {"hazard_mean": "hazard", "blind_mean": "blind"}  # labels that relabel one source's episodes only
DRAW_RANGE = 2**16  # behaviour id of a mix rollout: (param set + 1) * DRAW_RANGE + its episode's wait / branch step


def episode_groups(arrays: dict[str, np.ndarray]) -> np.ndarray:
    """(E,) int group of each episode: one per distinct (source, behaviour at the episode's first step).

    Raises ``store.DatasetError`` if the dataset has no ``behaviour`` field (collected before it existed).
    """
    if "behaviour" not in arrays:
        raise store.DatasetError("rtg_label 'group_mean' needs a dataset with behaviour ids (behaviour.npy); "
                                 "collect a new one")
    _, starts, _, _ = store.episode_index(arrays)
    key = np.stack([np.asarray(arrays["source"])[starts].astype(np.int64),
                    np.asarray(arrays["behaviour"])[starts].astype(np.int64)], axis=1)
    return np.unique(key, axis=0, return_inverse=True)[1].reshape(-1)


def group_means(values: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """(E,) the mean of ``values`` over each element's group (``groups``: (E,) ints)."""
    values = np.asarray(values, np.float64)
    _, inv = np.unique(groups, return_inverse=True)
    inv = inv.reshape(-1)
    return (np.bincount(inv, values) / np.bincount(inv))[inv]


def rtg_shift(arrays: dict[str, np.ndarray], label: str = "realised") -> np.ndarray:
    """(N,) float32 to add to each step's realised return-to-go to get its ``label`` (see the
    module docstring): zeros for ``"realised"``; for ``"group_mean"`` the episode's
    (group mean return - return)."""
    if label not in RTG_LABELS:
        raise ValueError(f"rtg_label must be one of {', '.join(RTG_LABELS)}, got {label!r}")
    if label == "realised":
        return np.zeros(len(arrays["reward"]), np.float32)
    if label in value.LABELS:  # learned-value labels (QDT-style): dtjax.data.value
        return value.rtg_shift(arrays, label)
    ep, starts, _, returns = store.episode_index(arrays)
    if label in ONLY_SOURCE:
        mine = np.asarray(arrays["source"])[starts] == store.SOURCES.index(ONLY_SOURCE[label])
        # Nothing to relabel: no episode of that source, or no behaviour ids (a dataset from before them
        # has no blind or hazard episodes either; a synthetic one's are labelled as they happened).
        if not mine.any() or "behaviour" not in arrays:
            return np.zeros(len(arrays["reward"]), np.float32)
        shift = np.where(mine, group_means(returns, episode_groups(arrays)) - returns, 0.0)
    else:
        shift = group_means(returns, episode_groups(arrays)) - returns
    return shift[ep].astype(np.float32)
