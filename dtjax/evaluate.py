"""Closed-loop evaluation of a Decision Transformer in the JAX env, and RTG calibration.

Mirrors the original project's ``evaluate_dt_agent`` and ``calibration_statistics``
(`src/decision_transformer/train.py`, `calibration.py`), but the episodes of every target RTG run
together in one jitted ``lax.while_loop`` over a *pool* of slots (continuous batching): each
slot plays one episode; when it ends, its result is written out and the slot takes the next
episode from the queue. The loop stops when the queue is empty and every slot is idle, so the
cost is the number of steps actually played (plus one last partly empty round per pool), not
(episodes x the longest episode) as when every episode of a batch waits for the slowest one.

Protocol (as the original): the RTG token starts at the target and is decreased by each reward
(rewards are terminal, so it stays constant); the timestep token is the env's step count
(clipped to ``max_timestep``); with a context of K > 1 timesteps the previous actions are fed and
the current action slot holds the padding action (causality means it is never read). Episode
``i`` of every target RTG starts from the same reset key, so targets are compared on the same
layouts. The env is stepped through its own ``step_env`` (``env_step``: ``env.step`` without the
auto-reset) and each episode's outcome is the env's ``info["outcome"]``, named by its task
(``env.task.outcomes``: goal, hit, timeout for Dynamic Obstacles), with the task's detail flags
(``hit_wall``). The context window is a ``Window``, moved by ``push_step`` (as the explorer and
``dtjax.scenarios`` move theirs).

Randomness does not depend on the pool: episode ``i`` of target ``r`` at its step ``t`` draws
the ball moves with ``fold_in(split(fold_in(k_loop, t))[1], r * n + i)``, which is exactly the
key the one-batch-per-sweep loop of dtjax 0.1 gave it (``split(k, B)[b] == fold_in(k, b)`` for
JAX's partitionable threefry), so greedy results match that loop episode for episode.

Calibration with a stated standard error (``calibrate(..., se=0.03)``): the queue is
episode-major (episode 0 of every target, then episode 1, ...) and a target stops taking new
episodes once at least ``min_episodes`` have finished and the standard error of its mean return
(sample std / sqrt(n)) is <= ``se``; episodes already running still count. A point whose
returns barely vary (a reliable crasher at RTG -1) stops after ``min_episodes``; a point near
the switch (std ~0.8) runs until ``(std / se)^2`` episodes or the cap ``n_episodes``.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from dtjax import hooks as hooks_lib
from dtjax.config import ModelConfig
from dtjax.model import forward, run_with_hooks

DEFAULT_POOL = 512  # episodes played at once; see TrainConfig.eval_pool


@dataclasses.dataclass(frozen=True)
class EvalResult:
    """Per-episode outcomes, each of shape (n_rtgs, n_episodes), named by the env's task.

    ``outcome[r, i]`` is the ``info["outcome"]`` code the episode ended with, an index into
    ``outcomes`` (the task's names, e.g. ("running", "goal", "hit", "timeout")); ``details`` holds
    the task's boolean refinements of the final step (e.g. ``hit_wall``). ``goal``, ``hit``,
    ``hit_wall`` and ``timeout`` are kept as properties; an outcome the task does not have is never
    the case (all False).

    With a standard-error target (``calibrate(se=...)``) targets play different numbers of
    episodes: ``played[r, i]`` says whether episode ``i`` of target ``r`` ran (always a prefix
    ``i < n_r``); the other fields are 0 / False there (outcome 0, ``"running"``: never ended).
    Without one every episode is played.
    """

    target_rtg: np.ndarray  # (R,)
    returns: np.ndarray  # final (undiscounted) return
    lengths: np.ndarray  # steps taken until the episode ended
    outcome: np.ndarray  # int32: index into ``outcomes`` of how the episode ended (0 = not played)
    outcomes: tuple[str, ...] = ("running", "goal", "hit", "timeout")  # the task's outcome names
    details: Mapping[str, np.ndarray] = dataclasses.field(default_factory=dict)  # name -> bool (R, n)
    played: np.ndarray | None = None  # bool (R, n_episodes); None = all played

    def ended(self, name: str) -> np.ndarray:
        """bool (R, n): the episode ended as outcome ``name`` (all False if the task has no such outcome)."""
        if name not in self.outcomes:
            return np.zeros(np.shape(self.outcome), bool)
        return np.asarray(self.outcome) == self.outcomes.index(name)

    @property
    def goal(self) -> np.ndarray:  # bool: reached the goal
        return self.ended("goal")

    @property
    def hit(self) -> np.ndarray:  # bool: walked into an obstacle or a wall
        return self.ended("hit")

    @property
    def hit_wall(self) -> np.ndarray:  # bool: the hit was into a wall (a subset of ``hit``)
        return np.asarray(self.details.get("hit_wall", np.zeros(np.shape(self.outcome), bool)))

    @property
    def timeout(self) -> np.ndarray:  # bool: truncated at max_steps without another outcome
        return self.ended("timeout")

    def summary(self) -> list[dict[str, float]]:
        """One row per target RTG: mean, std, standard error and percentiles of the return, the
        rate of each of the task's outcomes (``goal_rate``, ``hit_rate``, ``timeout_rate`` ...) and
        details (``hit_wall_rate``), mean length, episodes played."""
        rows = []
        played = np.ones(self.returns.shape, bool) if self.played is None else self.played
        flags = {**{f"{o}_rate": self.ended(o) for o in self.outcomes[1:]},
                 **{f"{d}_rate": np.asarray(v) for d, v in self.details.items()}}
        for i, r in enumerate(self.target_rtg):
            m = played[i]
            ret = self.returns[i][m]
            n = int(m.sum())
            std = float(ret.std()) if n else float("nan")
            rows.append(
                {
                    "target_rtg": float(r),
                    "mean_return": float(ret.mean()) if n else float("nan"),
                    "std_return": std,
                    "se_return": std / np.sqrt(n) if n else float("nan"),
                    "p10": float(np.percentile(ret, 10)) if n else float("nan"),
                    "p25": float(np.percentile(ret, 25)) if n else float("nan"),
                    "p50": float(np.percentile(ret, 50)) if n else float("nan"),
                    "p75": float(np.percentile(ret, 75)) if n else float("nan"),
                    "p90": float(np.percentile(ret, 90)) if n else float("nan"),
                    **{k: float(f[i][m].mean()) if n else float("nan") for k, f in flags.items()},
                    "mean_length": float(self.lengths[i][m].mean()) if n else float("nan"),
                    "episodes": n,
                }
            )
        return rows

    def seed(self, k: int) -> "EvalResult":
        """Seed ``k`` of a multi-seed result (``evaluate_seeds``: arrays (seed, R, n))."""
        take = lambda x: None if x is None else np.asarray(x)[k]  # noqa: E731
        return EvalResult(np.asarray(self.target_rtg), take(self.returns), take(self.lengths), take(self.outcome),
                          self.outcomes, {d: take(v) for d, v in self.details.items()}, take(self.played))

    def world(self, w: int) -> EvalResult:
        """World ``w`` of an ``evaluate_worlds`` result (arrays (world, R, n))."""
        return self.seed(w)


# ---------------------------------------------------------------------------------------------
# THE CONTEXT WINDOW (shared by closed-loop evaluation, sampled windows and the explorer)
# ---------------------------------------------------------------------------------------------


@struct.dataclass
class Window:
    """A Decision Transformer's context: the last K timesteps of an episode, oldest first.

    obs (..., K, *obs_shape); rtg (..., K) float32; timesteps (..., K) int32; actions (..., K)
    int32: the action taken at each timestep, the padding action at padded slots and at the current
    (last) one, whose action is not chosen yet. Padded slots (an episode's start) hold a zero
    observation, timestep 0 and RTG 0, as ``dtjax.data.dataset`` pads training windows, or the
    episode's initial RTG for a model with ``ModelConfig.pad_rtg == "initial"`` (the original's
    evaluation windows; docs/architecture.md, "Padding").
    """

    obs: jax.Array
    rtg: jax.Array
    timesteps: jax.Array
    actions: jax.Array

    @classmethod
    def start(cls, obs, rtg, timestep, n_timesteps: int, pad_action: int, pad_rtg: str = "zero") -> "Window":
        """The window at an episode's first step: K - 1 padding timesteps, then (obs, rtg, timestep).
        ``rtg`` (...) gives the batch shape; ``obs`` (..., *obs_shape); ``timestep`` broadcasts.
        ``pad_rtg``: the padded timesteps' RTG, "zero" or "initial" (``rtg``), as ``ModelConfig.pad_rtg``."""
        if pad_rtg not in ("zero", "initial"):
            raise ValueError(f"pad_rtg must be 'zero' or 'initial', got {pad_rtg!r}")
        obs = jnp.asarray(obs)
        batch = jnp.shape(rtg)
        rtg_pad = jnp.asarray(rtg, jnp.float32)[..., None] if pad_rtg == "initial" else jnp.float32(0.0)
        pad = cls(obs=jnp.zeros(batch + (n_timesteps,) + obs.shape[len(batch):], obs.dtype),
                  rtg=jnp.broadcast_to(rtg_pad, batch + (n_timesteps,)), timesteps=jnp.zeros(batch + (n_timesteps,), jnp.int32),
                  actions=jnp.full(batch + (n_timesteps,), pad_action, jnp.int32))
        return push_step(pad, pad_action, pad_action, obs=obs, rtg=rtg, timesteps=timestep)


def push_step(window, action, pad_action: int, **newest):
    """The context window after taking ``action`` at its current step and arriving at ``newest``.

    ``window``: a ``flax.struct`` dataclass of (..., K, ...) arrays with an ``actions`` (..., K)
    field (``Window``, or the explorer's window); ``newest``: a value for each of its other fields
    (broadcast to one timestep). The action is recorded in the current slot, the oldest timestep
    is dropped and ``newest`` appended with ``pad_action`` in its action slot. This is the one
    place a context window moves.
    """
    names = {f.name for f in dataclasses.fields(window)} - {"actions"}
    if set(newest) != names:
        raise ValueError(f"push_step needs the fields {sorted(names)}, got {sorted(newest)}")
    acts = jnp.asarray(window.actions)
    ax = acts.ndim - 1  # the time axis of every field

    def shift(buf, x):
        buf = jnp.asarray(buf)
        x = jnp.broadcast_to(jnp.asarray(x, buf.dtype), buf.shape[:ax] + buf.shape[ax + 1:])
        return jnp.concatenate([jax.lax.slice_in_dim(buf, 1, None, axis=ax), jnp.expand_dims(x, ax)], axis=ax)

    acts = acts.at[..., -1].set(jnp.asarray(action, acts.dtype))
    return window.replace(actions=shift(acts, pad_action), **{k: shift(getattr(window, k), v) for k, v in newest.items()})


def _policy_logits(params, cfg: ModelConfig, hist: Window, interventions):
    actions = hist.actions if cfg.n_timesteps > 1 else None
    if actions is not None and cfg.pos_rows < 3 * cfg.n_timesteps:
        actions = actions[:, :-1]  # a model of 3K - 1 positions (the original's MemoryDT) never reads the last slot
    if interventions:
        logits = run_with_hooks(params, cfg, hist.obs, hist.rtg, hist.timesteps, actions, interventions=interventions)
    else:
        logits = forward(params, cfg, hist.obs, hist.rtg, hist.timesteps, actions)
    return logits[:, -1]


def env_step(env, key, state, action, env_params):
    """``env.step`` for one episode without its auto-reset (the pool refills slots itself):
    (obs, state, reward, terminated, truncated, info) of ``env.step_env``, with ``env.step``'s key
    split (the step key first, the reset key second), so the same key gives the same step."""
    key_step, _ = jax.random.split(key)
    obs, state, reward, term, info = env.step_env(key_step, state, action, env_params)
    return obs, state, reward, term, env.is_truncated(state, env_params), info


def _rollout_core(params, cfg, env, env_params, key, target_rtgs, n_rtg, n_episodes, max_episodes, pool, greedy,
                  temperature, interventions, se, min_episodes):
    """The pooled rollout of one model: (ret, length, outcome, details) arrays, (len(target_rtgs) * max_episodes,)
    and details (..., len(env.task.details)).

    Shapes are static at their capacity, counts are traced, so one compilation serves every
    evaluation of a run (in-training, final, calibration): ``target_rtgs`` (R_cap,) of which the
    first ``n_rtg`` are used, ``n_episodes`` <= ``max_episodes`` (static) per target. Episode
    ``i`` of target ``r`` is entry ``r * n_episodes + i``. ``outcome``: the env's ``info["outcome"]``
    at the episode's last step, an index into ``env.task.outcomes`` (0, "running": not played);
    ``details``: its ``info`` flags named by ``env.task.details``. ``se`` (<= 0: off) and ``min_episodes`` are the
    standard-error stopping rule.
    """
    R = target_rtgs.shape[0]  # capacity; n_rtg of them are used
    total = n_rtg * n_episodes
    capacity = R * max_episodes
    P = pool
    K = cfg.n_timesteps
    pad_action = cfg.n_actions
    max_t = cfg.max_timestep
    task = env.task
    k_reset, k_loop = jax.random.split(key)
    # Same reset key for episode i of every target RTG (common random numbers): split(k, n)[i].
    reset_keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(k_reset, jnp.arange(max_episodes))
    obs0_all, state0_all = jax.vmap(env.reset, in_axes=(0, None))(reset_keys, env_params)
    rtgs = target_rtgs.astype(jnp.float32)
    adaptive = se > 0
    # Queue order q = i * n_rtg + r (episode-major): every target gets its episode i before any its i+1.
    window = P * R  # enough queue entries to find P open ones while any target is open

    def fresh_hist(obs0, rtg0):
        return Window.start(obs0, rtg0, 0, K, pad_action, cfg.pad_rtg)

    def refill(c):
        """Give every idle slot the next queue entry of a target still open (or leave it idle)."""
        free = c["ep"] < 0
        n_free = free.sum()
        cand = c["ptr"] + jnp.arange(window, dtype=jnp.int32)
        open_ = (cand < total) & ~c["closed"][cand % n_rtg]
        rank = jnp.cumsum(open_) - 1
        take = open_ & (rank < n_free)
        by_rank = jnp.full((P,), -1, jnp.int32).at[jnp.where(take, rank, P)].set(cand, mode="drop")
        slot_rank = jnp.cumsum(free) - 1
        new_q = jnp.where(free, by_rank[jnp.clip(slot_rank, 0, P - 1)], -1)
        got = new_q >= 0
        first_left = jnp.min(jnp.where(open_ & ~take, cand, jnp.int32(2**30)))
        ptr = jnp.minimum(first_left, c["ptr"] + window).astype(jnp.int32)
        i_new, r_new = jnp.where(got, new_q // n_rtg, 0), jnp.where(got, new_q % n_rtg, 0)
        s0 = jax.tree.map(lambda a: a[i_new], state0_all)
        h0 = fresh_hist(obs0_all[i_new], rtgs[r_new])
        sel = lambda new, old: jnp.where(got.reshape((P,) + (1,) * (old.ndim - 1)), new, old)  # noqa: E731
        return {**c, "ptr": ptr, "ep": jnp.where(got, new_q, c["ep"]),
                "state": jax.tree.map(sel, s0, c["state"]), "hist": jax.tree.map(sel, h0, c["hist"]),
                "t": jnp.where(got, 0, c["t"]), "ret": jnp.where(got, 0.0, c["ret"])}

    def cond(c):
        return jnp.any(c["ep"] >= 0)

    def body(c):
        state, hist, ep, t = c["state"], c["hist"], c["ep"], c["t"]
        live = ep >= 0
        i_ep, r_ep = jnp.where(live, ep // n_rtg, 0), jnp.where(live, ep % n_rtg, 0)
        b = r_ep * n_episodes + i_ep  # the episode's entry in the (R, n) layout, and its key index
        logits = _policy_logits(params, cfg, hist, interventions)
        k_step = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(k_loop, t)
        k_act, k_env = jax.vmap(jax.random.split, out_axes=1)(k_step)
        env_keys = jax.vmap(jax.random.fold_in)(k_env, b)

        def sample(_):
            act_keys = jax.vmap(jax.random.fold_in)(k_act, b)
            return jax.vmap(jax.random.categorical)(act_keys, logits / temperature).astype(jnp.int32)

        # greedy is traced (one compilation for greedy and sampled runs); the cond runs one branch,
        # so greedy runs draw no action noise
        action = jax.lax.cond(greedy, lambda _: jnp.argmax(logits, -1).astype(jnp.int32), sample, None)
        obs, state, reward, term, trunc, info = jax.vmap(functools.partial(env_step, env), in_axes=(0, 0, 0, None))(
            env_keys, state, action, env_params)
        ended = live & (term | trunc)
        ret = c["ret"] + jnp.where(live, reward, 0.0)
        # the env's own outcome (an index into task.outcomes, never 0 once ended) and detail flags
        details = jnp.stack([info[d] for d in task.details], -1).astype(bool) if task.details else jnp.zeros((P, 0), bool)
        out_idx = jnp.where(ended, b, capacity)
        res = {"ret": c["res"]["ret"].at[out_idx].set(ret, mode="drop"),
               "len": c["res"]["len"].at[out_idx].set(t + 1, mode="drop"),
               "out": c["res"]["out"].at[out_idx].set(info["outcome"].astype(jnp.int32), mode="drop"),
               "det": c["res"]["det"].at[out_idx].set(details, mode="drop")}
        # running count, sum and sum of squares of finished returns per target: the stopping rule
        r_end = jnp.where(ended, r_ep, R)
        fin = c["fin"] + jnp.zeros((R,), jnp.int32).at[r_end].add(1, mode="drop")
        s1 = c["s1"] + jnp.zeros((R,), jnp.float32).at[r_end].add(ret, mode="drop")
        s2 = c["s2"] + jnp.zeros((R,), jnp.float32).at[r_end].add(ret * ret, mode="drop")
        nf = jnp.maximum(fin, 1).astype(jnp.float32)
        var = jnp.maximum(s2 / nf - (s1 / nf) ** 2, 0.0)
        met = adaptive & (fin >= min_episodes) & (jnp.sqrt(var / nf) <= se)
        hist = push_step(hist, action, pad_action, obs=obs, rtg=hist.rtg[:, -1] - reward,
                         timesteps=jnp.minimum(state.time, max_t).astype(jnp.int32))
        c = {**c, "state": state, "hist": hist, "ep": jnp.where(ended, -1, ep), "t": t + 1, "ret": ret, "res": res,
             "fin": fin, "s1": s1, "s2": s2, "closed": c["closed"] | met}
        return refill(c)

    state_init = jax.tree.map(lambda a: jnp.zeros((P,) + a.shape[1:], a.dtype), state0_all)
    zi = lambda m: jnp.zeros((m,), jnp.int32)  # noqa: E731
    c0 = {"ptr": jnp.int32(0), "closed": jnp.zeros((R,), bool), "ep": jnp.full((P,), -1, jnp.int32),
          "state": state_init, "hist": fresh_hist(jnp.zeros((P,) + obs0_all.shape[1:], obs0_all.dtype), jnp.zeros((P,))),
          "t": zi(P), "ret": jnp.zeros((P,), jnp.float32),
          "res": {"ret": jnp.zeros((capacity,), jnp.float32), "len": zi(capacity), "out": zi(capacity),
                  "det": jnp.zeros((capacity, len(task.details)), bool)},
          "fin": zi(R), "s1": jnp.zeros((R,), jnp.float32), "s2": jnp.zeros((R,), jnp.float32)}
    c = jax.lax.while_loop(cond, body, refill(c0))
    return c["res"]["ret"], c["res"]["len"], c["res"]["out"], c["res"]["det"]


_STATIC = ("cfg", "env", "max_episodes", "pool")
_rollout = jax.jit(_rollout_core, static_argnames=_STATIC)


@functools.partial(jax.jit, static_argnames=_STATIC)
def _rollout_seeds(params, cfg, env, env_params, keys, target_rtgs, n_rtg, n_episodes, max_episodes, pool, greedy,
                   temperature, interventions, se, min_episodes):
    """``_rollout_core`` vmapped over seeds: params (seed, ...) and keys (seed, 2)."""
    def one(p, k):
        return _rollout_core(p, cfg, env, env_params, k, target_rtgs, n_rtg, n_episodes, max_episodes, pool, greedy,
                             temperature, interventions, se, min_episodes)

    return jax.vmap(one)(params, keys)


@functools.partial(jax.jit, static_argnames=_STATIC)
def _rollout_worlds(params, cfg, env, env_params, key, target_rtgs, n_rtg, n_episodes, max_episodes, pool, greedy,
                    temperature, interventions, se, min_episodes):
    """``_rollout_core`` vmapped over worlds: every leaf of ``interventions`` has a leading world
    axis; params, key and the episodes are shared, so episode ``i`` of every world draws the same keys."""
    def one(ivs):
        return _rollout_core(params, cfg, env, env_params, key, target_rtgs, n_rtg, n_episodes, max_episodes, pool,
                             greedy, temperature, ivs, se, min_episodes)

    return jax.vmap(one)(interventions)


@dataclasses.dataclass(frozen=True)
class Capacity:
    """Static sizes of the compiled rollout: at most ``rtgs`` targets x ``episodes`` episodes,
    ``pool`` played at once. Evaluations with the same capacity share one compilation (a run
    passes one capacity to its in-training, final and calibration evaluations)."""

    rtgs: int
    episodes: int
    pool: int = DEFAULT_POOL


def _args(target_rtgs, n_episodes, capacity, pool, se, min_episodes):
    rtgs = np.asarray(target_rtgs, np.float32).reshape(-1)
    n_episodes = int(n_episodes)
    if n_episodes < 1 or len(rtgs) < 1:
        raise ValueError(f"need at least one target RTG and one episode, got {len(rtgs)} and {n_episodes}")
    if capacity is None:
        capacity = Capacity(len(rtgs), n_episodes, int(pool or DEFAULT_POOL))
    if len(rtgs) > capacity.rtgs or n_episodes > capacity.episodes:
        raise ValueError(f"{len(rtgs)} targets x {n_episodes} episodes exceed the capacity {capacity}")
    pool = max(1, min(capacity.pool, capacity.rtgs * capacity.episodes))
    padded = jnp.asarray(np.pad(rtgs, (0, capacity.rtgs - len(rtgs))))
    se = 0.0 if se is None else float(se)
    counts = (jnp.int32(len(rtgs)), jnp.int32(n_episodes), capacity.episodes, pool)
    return rtgs, padded, counts, jnp.float32(se), jnp.int32(min(int(min_episodes), n_episodes)), se > 0


def _result(task, target_rtgs, ret, length, outcome, details, adaptive: bool) -> EvalResult:
    outcome = np.asarray(outcome)
    details = np.asarray(details)
    return EvalResult(
        target_rtg=np.asarray(target_rtgs),
        returns=np.asarray(ret),
        lengths=np.asarray(length),
        outcome=outcome,
        outcomes=task.outcomes,
        details={d: details[..., j] for j, d in enumerate(task.details)},
        played=(outcome > 0) if adaptive else None,
    )


def _unpad(x, n_rtg: int, n_episodes: int, lead: int = 0):
    """(..., capacity, *rest) -> (..., n_rtg, n_episodes, *rest); ``lead`` leading axes (seeds) kept."""
    x = np.asarray(x)
    return x[(slice(None),) * lead + (slice(0, n_rtg * n_episodes),)].reshape(
        x.shape[:lead] + (n_rtg, n_episodes) + x.shape[lead + 1:])


def evaluate(
    params: Any,
    cfg: ModelConfig,
    env,
    env_params,
    key: jax.Array,
    target_rtgs,
    n_episodes: int,
    *,
    greedy: bool = True,
    temperature: float = 1.0,
    interventions: dict | None = None,
    pool: int | None = None,
    se: float | None = None,
    min_episodes: int = 100,
    capacity: Capacity | None = None,
) -> EvalResult:
    """Run ``n_episodes`` closed-loop episodes for each target RTG, all in one jitted loop.

    Args:
      params, cfg: the DT.
      env, env_params: from ``envs.make`` (the observation mode must match ``cfg``).
      key: PRNG key; the same key gives the same episodes (whatever the pool or capacity).
      target_rtgs: (R,) initial RTGs.
      n_episodes: episodes per target RTG (with ``se``: the most per target).
      greedy: argmax actions; otherwise sample from softmax(logits / temperature).
      interventions: optional hook interventions applied at every step (see ``dtjax.hooks``).
      pool: episodes played at once (default ``DEFAULT_POOL``); speed and memory, never results.
      se: stop a target once the standard error of its mean return is <= ``se`` (after at least
        ``min_episodes``); None plays every episode.
      capacity: compile for this many targets x episodes (and its pool) so that evaluations of
        different sizes share one compilation; default: exactly this call's sizes.

    Returns:
      EvalResult with (R, n_episodes) arrays (``played`` marks the episodes run when ``se`` is set).
    """
    rtgs, padded, counts, se_, min_ep, adaptive = _args(target_rtgs, n_episodes, capacity, pool, se, min_episodes)
    out = _rollout(params, cfg, env, env_params, key, padded, *counts, jnp.bool_(greedy), jnp.float32(temperature),
                   interventions or {}, se_, min_ep)
    return _result(env.task, rtgs, *(_unpad(x, len(rtgs), int(n_episodes)) for x in out), adaptive)


def evaluate_seeds(params: Any, cfg: ModelConfig, env, env_params, keys: jax.Array, target_rtgs, n_episodes: int,
                   *, greedy: bool = True, temperature: float = 1.0, pool: int | None = None, se: float | None = None,
                   min_episodes: int = 100, capacity: Capacity | None = None) -> list[EvalResult]:
    """``evaluate`` for N models of one shape at once: ``params`` stacked on a leading seed axis,
    ``keys`` (N, 2). One jitted, vmapped loop (sharded as ``params`` is); returns N results,
    each the same as ``evaluate`` of that seed with its key."""
    rtgs, padded, counts, se_, min_ep, adaptive = _args(target_rtgs, n_episodes, capacity, pool, se, min_episodes)
    out = _rollout_seeds(params, cfg, env, env_params, keys, padded, *counts, jnp.bool_(greedy), jnp.float32(temperature),
                         {}, se_, min_ep)
    ret, length, outcome, details = (_unpad(x, len(rtgs), int(n_episodes), lead=1) for x in jax.device_get(out))
    return [_result(env.task, rtgs, ret[k], length[k], outcome[k], details[k], adaptive) for k in range(ret.shape[0])]


def stack_worlds(worlds: list[dict]) -> dict:
    """Stack per-world intervention dicts (``dtjax.hooks``) into one with a leading world axis.

    Every world must have the same structure (the same hooks, intervention types and ``Apply``
    functions, arrays of the same shapes), except that a hook some worlds leave alone may be a
    ``Replace`` in the others: there those worlds get the same ``Replace`` with an all-False mask
    (it selects nothing; the mask is traced data), so "which hooks" becomes data too.
    """
    if not worlds:
        raise ValueError("need at least one world")
    worlds = [hooks_lib.normalize(w) for w in worlds]
    names = sorted(set().union(*worlds))
    filled = [dict(w) for w in worlds]
    for name in names:
        having = [w[name] for w in worlds if name in w]
        if len(having) == len(worlds):
            continue
        tmpl = having[0]
        if not isinstance(tmpl, hooks_lib.Replace):
            raise TypeError(f"{name}: only a Replace can be left out of some worlds (a no-op is a mask of False), "
                             f"not an {type(tmpl).__name__}")
        noop = tmpl.replace(mask=jnp.zeros(jnp.shape(tmpl.mask), bool))
        for w in filled:
            w.setdefault(name, noop)
    structs = {jax.tree.structure(w) for w in filled}
    if len(structs) > 1:
        raise ValueError(f"worlds have different intervention structures: {sorted(map(str, structs))[:2]}")
    try:
        return jax.tree.map(lambda *xs: jnp.stack([jnp.asarray(x) for x in xs]), *filled)
    except ValueError as e:
        raise ValueError(f"worlds' intervention arrays differ in shape: {e}") from None


def n_worlds(interventions: dict) -> int:
    """The leading world axis of stacked interventions (``stack_worlds``); a clear error otherwise."""
    sizes = {int(jnp.shape(x)[0]) if jnp.ndim(x) else -1 for x in jax.tree.leaves(interventions)}
    if not sizes or len(sizes) != 1 or -1 in sizes:
        raise ValueError(f"interventions need one leading world axis on every array, got leading sizes {sorted(sizes)}")
    return sizes.pop()


def evaluate_worlds(params: Any, cfg: ModelConfig, env, env_params, key: jax.Array, target_rtgs, n_episodes: int,
                    interventions: dict, *, greedy: bool = True, temperature: float = 1.0, pool: int | None = None,
                    se: float | None = None, min_episodes: int = 100, capacity: Capacity | None = None) -> EvalResult:
    """``evaluate`` under W interventions ("worlds") at once: one compiled, vmapped rollout.

    ``interventions``: hook interventions whose every array has a leading world axis (W, ...)
    (``stack_worlds`` builds it from per-world dicts). Every world plays the same episodes
    (the same ``key``): world ``w`` equals ``evaluate(..., interventions=<world w>)``, greedy
    outcomes episode for episode and returns up to float rounding.

    Returns:
      EvalResult with (W, R, n_episodes) arrays (``EvalResult.world(w)`` is world ``w``).
    """
    n_worlds(interventions)
    rtgs, padded, counts, se_, min_ep, adaptive = _args(target_rtgs, n_episodes, capacity, pool, se, min_episodes)
    out = _rollout_worlds(params, cfg, env, env_params, key, padded, *counts, jnp.bool_(greedy), jnp.float32(temperature),
                          interventions, se_, min_ep)
    ret, length, outcome, details = (_unpad(x, len(rtgs), int(n_episodes), lead=1) for x in jax.device_get(out))
    return _result(env.task, rtgs, ret, length, outcome, details, adaptive)


def calibration_stats(res: EvalResult, greedy: bool = True, se: float | None = None) -> dict:
    """The JSON-able calibration dict of an ``EvalResult`` over a sweep of targets (see ``calibrate``)."""
    rows = res.summary()
    means = np.array([r["mean_return"] for r in rows])
    ses = np.array([r["se_return"] for r in rows])
    diffs = np.diff(means)
    noise = 2.0 * np.sqrt(ses[1:] ** 2 + ses[:-1] ** 2)  # 2 standard errors of each difference
    n = [r["episodes"] for r in rows]
    return {
        "rows": rows,
        "n_episodes": int(max(n)),  # the most episodes of any point (each row has its own "episodes")
        "episodes_total": int(sum(n)),
        "se_target": None if not se else float(se),
        "greedy": bool(greedy),
        # never decreases along the sweep
        "strictly_monotonic": bool(np.all(diffs >= 0)),
        # no decrease larger than sampling noise (2 standard errors of the difference)
        "monotonic": bool(np.all(diffs >= -noise)),
        "largest_decrease": float(max(0.0, -diffs.min())) if len(diffs) else 0.0,
        "strictly_rising_ends": bool(means[-1] > means[0]),
        # mean |achieved - target| over the sweep: how far the model is from y = x
        "calibration_error": float(np.mean(np.abs(means - res.target_rtg))),
    }


def calibrate(params, cfg, env, env_params, key, rtgs=None, n_episodes: int = 200, *, se: float | None = None,
              min_episodes: int = 100, **kw) -> dict:
    """The original's "black box characterisation": achieved return as the target RTG sweeps.

    ``n_episodes``: episodes per target, or with ``se`` the cap; ``se``: play each target until
    the standard error of its mean return is <= ``se`` (at least ``min_episodes``).

    Returns a JSON-able dict: ``rows`` (one summary row per target, see ``EvalResult.summary``,
    each with its ``episodes`` and ``se_return``), ``strictly_monotonic`` (the mean return never
    decreases along the sweep), ``monotonic`` (no decrease exceeds two standard errors of the
    difference: monotonic up to sampling noise), ``largest_decrease`` and ``calibration_error``
    (mean |achieved - target|).
    """
    rtgs = np.linspace(*env.task.return_range, 21) if rtgs is None else np.asarray(rtgs, np.float32)
    res = evaluate(params, cfg, env, env_params, key, rtgs, n_episodes, se=se, min_episodes=min_episodes, **kw)
    return calibration_stats(res, kw.get("greedy", True), se)
