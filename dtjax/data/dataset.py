"""The offline Decision Transformer dataset: RTGs, context windows, and a jitted sampler.

Usage (what ``dtjax.train`` does)::

    arrays, meta = store.load(path)                        # or collect.collect_dataset(cfg, key)
    data = device_arrays(arrays, pct_traj=1.0)             # dict of device arrays
    sample = make_sampler(env, SampleConfig(n_timesteps=K, max_timestep=300))
    batch = jax.jit(sample, static_argnums=2)(key, data, 128)   # or call it inside a jitted step

Sampling follows the original's ``TrajectoryLoader.get_batch`` (original-project.md §3):
- a window's trajectory is drawn with probability proportional to its length and its start
  uniformly within it, which is the same as drawing a start transition uniformly over all
  (selected) transitions: that is how we sample;
- with probability ``prob_go_from_end`` the window instead starts at ``max(0, len - K)``, so it
  ends at the episode's last step;
- the window holds up to K steps from its start, left-padded to K (padding: zero observation,
  RTG 0, timestep 0, the padding action ``n_actions``, mask False), so real steps are always
  right-aligned and the last position is always real;
- RTG is the undiscounted return from that step to the end of its episode (rewards are
  terminal-only here, so it equals the episode's final reward at every step);
- timesteps are the env's step counts (the state's ``time``), clipped to ``max_timestep``.

``pct_traj`` keeps the best episodes by return whose cumulative length is <= that fraction of
all steps (at least one episode). The original adds episodes while the total stays *strictly
below* the fraction, so ``pct_traj = 1`` silently drops the single worst episode; we use
``<=`` so that ``pct_traj = 1`` means all the data (original-project.md §12, quirk 11).

Observations are regenerated from the compact states with the jitted ``env.observe`` (vmapped)
inside the sampler, or gathered from stored ``obs`` when the dataset has them, so a batch is one
jitted call over device arrays with no Python loop per example.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from dtjax.data import relabel, store


def returns_to_go(reward: np.ndarray, done: np.ndarray) -> np.ndarray:
    """Undiscounted return-to-go per step, restarting at episode ends (vectorised NumPy).

    ``reward``, ``done`` (N,) with ``done`` marking each episode's last step (a trailing
    unfinished episode counts as ending at N-1). Returns (N,) float32.
    """
    reward = np.asarray(reward, np.float64)
    if len(reward) == 0:
        return np.zeros(0, np.float32)
    ends = np.flatnonzero(done)
    if len(ends) == 0 or ends[-1] != len(reward) - 1:
        ends = np.append(ends, len(reward) - 1)
    starts = np.concatenate([[0], ends[:-1] + 1])
    lengths = ends - starts + 1
    total = np.add.reduceat(reward, starts)
    before = np.cumsum(reward) - reward  # sum of rewards strictly before each step
    rtg = np.repeat(total, lengths) - (before - np.repeat(before[starts], lengths))
    return rtg.astype(np.float32)


def returns_to_go_scan(reward: jax.Array, done: jax.Array) -> jax.Array:
    """The same as ``returns_to_go`` as a reverse ``lax.scan`` (jittable; float32 sums)."""

    def step(acc, x):
        r, d = x
        acc = r + jnp.where(d, 0.0, acc)
        return acc, acc

    _, rtg = jax.lax.scan(step, jnp.float32(0), (jnp.asarray(reward, jnp.float32), jnp.asarray(done, bool)), reverse=True)
    return rtg


@dataclasses.dataclass(frozen=True)
class SampleConfig:
    """Static settings of the sampler (hashable, so they can be jit-static)."""

    n_timesteps: int  # K, the context length in timesteps
    max_timestep: int  # timesteps are clipped to this (the model's last time-embedding row)
    n_actions: int = 3  # the padding action index
    prob_go_from_end: float = 0.1  # probability a window ends at its episode's last step
    window_end: bool = False  # the uniform transition ends its window (else starts it): see draw_starts


def select_top(returns: np.ndarray, lengths: np.ndarray, pct_traj: float) -> np.ndarray:
    """Sorted indices of the best episodes by return whose cumulative length is <= pct_traj * steps
    (ties keep the earlier episode; at least one episode)."""
    order = np.argsort(-np.asarray(returns), kind="stable")
    cum = np.cumsum(np.asarray(lengths)[order])
    n_keep = max(1, int(np.searchsorted(cum, pct_traj * cum[-1] + 1e-9, side="right")))
    return np.sort(order[:n_keep])


def device_arrays(arrays: dict[str, np.ndarray], pct_traj: float = 1.0, rtg_label: str = "realised") -> dict[str, jax.Array]:
    """Everything the jitted sampler needs, as device arrays (N = all steps, E = episodes).

    ``rtg_label``: what each step's RTG says (``dtjax.data.relabel.RTG_LABELS``): the realised
    return-to-go, or ESPER-style the mean return of the episode's behaviour group.

    Returns dict: agent_pos (N, 2), agent_dir (N,), obstacles (N, n, 2), time (N,), action (N,)
    int32; rtg (N,) float32; episode (N,), ep_start (E,), ep_len (E,) int32; valid_idx (M,) int32
    (the steps of the episodes kept by ``pct_traj``); obs (N, H, W, C) uint8 if stored; and the
    family's other state fields (``store.state_fields``: int32, or bool).
    """
    ep, starts, lengths, returns = store.episode_index(arrays)
    done = np.asarray(arrays["terminated"]) | np.asarray(arrays["truncated"])
    keep = np.zeros(len(starts), bool)
    keep[select_top(returns, lengths, pct_traj)] = True
    valid_idx = np.flatnonzero(keep[ep])
    i32 = lambda x: jnp.asarray(np.asarray(x, np.int32))  # noqa: E731
    out = {
        "agent_pos": i32(arrays["agent_pos"]),
        "agent_dir": i32(arrays["agent_dir"]),
        "obstacles": i32(arrays["obstacles"]),
        "time": i32(arrays["time"]),
        "action": i32(arrays["action"]),
        "rtg": jnp.asarray(returns_to_go(arrays["reward"], done) + relabel.rtg_shift(arrays, rtg_label)),
        "episode": i32(ep),
        "ep_start": i32(starts),
        "ep_len": i32(lengths),
        "valid_idx": i32(valid_idx),
    }
    for name, dtype in store.state_fields(arrays).items():
        out[name] = jnp.asarray(arrays[name]) if dtype == "bool" else i32(arrays[name])
    if "obs" in arrays:
        out["obs"] = jnp.asarray(np.asarray(arrays["obs"], np.uint8))
    return out


def draw_starts(key: jax.Array, data: dict, batch_size: int, K: int, prob_go_from_end: float,
                window_end: bool = False) -> jax.Array:
    """(B,) window start rows: a uniform kept transition, or with probability ``prob_go_from_end``
    the start ``max(0, len - K)`` of that transition's episode (the window then ends it).

    ``window_end``: the uniform transition is the window's last step instead (its start is K - 1
    rows earlier, or its episode's start), as the evaluation's window ends at the current step:
    each step is then a last token as often, seeing the same history it sees in a rollout. For a
    task whose decision needs an early frame (Memory's junction needs the start room) a
    start-aligned window mostly cuts that frame off the decision."""
    k_idx, k_end = jax.random.split(key)
    # "n_valid": the real length of a padded valid_idx (datasets of several seeds stacked, see dtjax.train)
    n_valid = data["n_valid"] if "n_valid" in data else data["valid_idx"].shape[0]
    pick = jax.random.randint(k_idx, (batch_size,), 0, n_valid)
    idx = data["valid_idx"][pick]  # a uniform transition = length-weighted episode, uniform start
    ep = data["episode"][idx]
    start, length = data["ep_start"][ep], data["ep_len"][ep]
    go_end = jax.random.uniform(k_end, (batch_size,)) < prob_go_from_end
    first = jnp.maximum(start, idx - (K - 1)) if window_end else idx
    return jnp.where(go_end, start + jnp.maximum(0, length - K), first)


def state_class(env):
    """The env's own state class (its family's ``EnvState``)."""
    return type(jax.eval_shape(env.reset_env, jax.random.PRNGKey(0), env.default_params)[1])


def env_state(env, fields: dict):
    """The env's own state (its family's ``EnvState``) from stored fields: the ones it has (a
    family without balls has no ``obstacles``; Memory has its objects)."""
    cls = state_class(env)
    missing = [f.name for f in dataclasses.fields(cls) if f.name not in fields]
    if missing:
        raise ValueError(f"the dataset lacks the state field(s) {', '.join(missing)} of {env.name}: collected in another family?")
    return cls(**{f.name: fields[f.name] for f in dataclasses.fields(cls)})


def windows(data: dict, si: jax.Array, *, env, cfg: SampleConfig) -> dict[str, jax.Array]:
    """The K-step windows starting at rows ``si`` (B,), left-padded (see ``sample_batch``)."""
    K = cfg.n_timesteps
    ep = data["episode"][si]
    end = data["ep_start"][ep] + data["ep_len"][ep]  # one past the episode's last row
    tlen = jnp.minimum(K, end - si)  # real steps in the window
    offs = jnp.arange(K)[None, :] - (K - tlen)[:, None]  # left padding: real steps right-aligned
    valid = offs >= 0
    gi = si[:, None] + jnp.maximum(offs, 0)  # (B, K) rows; padding repeats row si (masked below)
    if "obs" in data:
        obs = data["obs"][gi]
        if obs.shape[2:] != tuple(env.observation_shape()):
            raise ValueError(f"stored obs have shape {obs.shape[2:]}, the env observes {env.observation_shape()}")
    else:
        names = [f.name for f in dataclasses.fields(state_class(env))]
        states = env_state(env, {k: data[k][gi] for k in names if k in data})
        obs = jax.vmap(jax.vmap(env.observe))(states)
    obs = jnp.where(valid.reshape(valid.shape + (1,) * (obs.ndim - 2)), obs, 0).astype(jnp.uint8)
    return {
        "obs": obs,
        "rtg": jnp.where(valid, data["rtg"][gi], 0.0).astype(jnp.float32),
        "timesteps": jnp.where(valid, jnp.minimum(data["time"][gi], cfg.max_timestep), 0).astype(jnp.int32),
        "actions": jnp.where(valid, data["action"][gi], cfg.n_actions).astype(jnp.int32),
        "mask": valid,
    }


def sample_batch(key: jax.Array, data: dict, batch_size: int, *, env, cfg: SampleConfig) -> dict[str, jax.Array]:
    """A batch of K-step windows (jittable; ``batch_size``, ``env`` and ``cfg`` are static).

    ``data``: from ``device_arrays``. ``env``: the env whose ``observe`` (and obs mode) the
    model uses. Returns dict: obs (B, K, *obs_shape) uint8, rtg (B, K) float32, timesteps (B, K)
    int32, actions (B, K) int32 (padding = n_actions), mask (B, K) bool (False on padding).
    """
    si = draw_starts(key, data, batch_size, cfg.n_timesteps, cfg.prob_go_from_end, cfg.window_end)
    return windows(data, si, env=env, cfg=cfg)


def make_sampler(env, cfg: SampleConfig):
    """``sample(key, data, batch_size) -> batch``: ``sample_batch`` with the env and config bound."""
    return functools.partial(sample_batch, env=env, cfg=cfg)
