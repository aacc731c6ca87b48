"""Closed-loop evaluation of a Decision Transformer in the JAX env, and RTG calibration.

Mirrors the original project's ``evaluate_dt_agent`` and ``calibration_statistics``
(`src/decision_transformer/train.py`, `calibration.py`), but every episode of every target RTG
runs at once: the batch is (target RTG x episode), vmapped through ``env.step`` and the DT, in
one ``lax.while_loop`` that stops when every episode has ended.

Protocol (as the original): the RTG token starts at the target and is decreased by each reward
(rewards are terminal, so it stays constant); the timestep token is the env's step count
(clipped to ``max_timestep``); with a context of K > 1 timesteps the previous actions are fed and
the current action slot holds the padding action (causality means it is never read). Episode
``i`` of every target RTG starts from the same reset key, so targets are compared on the same
layouts. Outcomes: goal (reward > 0), hit (reward == -1: obstacle or wall), timeout.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from dtjax.config import ModelConfig
from envs.dynamic_obstacles import cell_type
from envs.minigrid import DIR_TO_VEC, WALL
from dtjax.model import forward


@dataclasses.dataclass(frozen=True)
class EvalResult:
    """Per-episode outcomes, each of shape (n_rtgs, n_episodes)."""

    target_rtg: np.ndarray  # (R,)
    returns: np.ndarray  # final (undiscounted) return
    lengths: np.ndarray  # steps taken until the episode ended
    goal: np.ndarray  # bool: reached the goal
    hit: np.ndarray  # bool: walked into an obstacle or a wall
    hit_wall: np.ndarray  # bool: the hit was into a wall (a subset of ``hit``)
    timeout: np.ndarray  # bool: truncated at max_steps without goal or hit

    def summary(self) -> list[dict[str, float]]:
        """One row per target RTG: mean/std/percentiles of return, rates, mean length."""
        rows = []
        for i, r in enumerate(self.target_rtg):
            ret = self.returns[i]
            rows.append(
                {
                    "target_rtg": float(r),
                    "mean_return": float(ret.mean()),
                    "std_return": float(ret.std()),
                    "p10": float(np.percentile(ret, 10)),
                    "p25": float(np.percentile(ret, 25)),
                    "p50": float(np.percentile(ret, 50)),
                    "p75": float(np.percentile(ret, 75)),
                    "p90": float(np.percentile(ret, 90)),
                    "goal_rate": float(self.goal[i].mean()),
                    "hit_rate": float(self.hit[i].mean()),
                    "hit_wall_rate": float(self.hit_wall[i].mean()),
                    "timeout_rate": float(self.timeout[i].mean()),
                    "mean_length": float(self.lengths[i].mean()),
                    "episodes": int(ret.shape[0]),
                }
            )
        return rows


def _policy_logits(params, cfg: ModelConfig, hist, interventions):
    obs, rtg, ts, act = hist
    actions = act if cfg.n_timesteps > 1 else None
    if interventions:
        from dtjax.model import run_with_hooks

        logits = run_with_hooks(params, cfg, obs, rtg, ts, actions, interventions=interventions)
    else:
        logits = forward(params, cfg, obs, rtg, ts, actions)
    return logits[:, -1]


@functools.partial(jax.jit, static_argnames=("cfg", "env", "n_episodes", "greedy"))
def _rollout(params, cfg, env, env_params, key, target_rtgs, n_episodes, greedy, temperature, interventions):
    n_rtg = target_rtgs.shape[0]
    batch = n_rtg * n_episodes
    k_reset, k_loop = jax.random.split(key)
    # Same reset key for episode i of every target RTG (common random numbers).
    reset_keys = jnp.tile(jax.random.split(k_reset, n_episodes), (n_rtg, 1))
    obs0, state0 = jax.vmap(env.reset, in_axes=(0, None))(reset_keys, env_params)
    rtg0 = jnp.repeat(target_rtgs.astype(jnp.float32), n_episodes)
    K = cfg.n_timesteps
    pad_action = cfg.n_actions
    max_t = cfg.max_timestep

    def push(buf, x):  # shift the context window left and append x as the newest timestep
        return jnp.concatenate([buf[:, 1:], x[:, None]], axis=1)

    hist0 = (
        push(jnp.zeros((batch, K) + obs0.shape[1:], obs0.dtype), obs0),
        push(jnp.zeros((batch, K), jnp.float32), rtg0),
        push(jnp.zeros((batch, K), jnp.int32), jnp.zeros((batch,), jnp.int32)),
        jnp.full((batch, K), pad_action, jnp.int32),
    )
    max_steps = env_params.max_steps_in_episode

    def cond(c):
        step, done = c[0], c[3]
        return (step < max_steps) & ~jnp.all(done)

    def body(c):
        step, state, hist, done, ret, length, outcome = c
        logits = _policy_logits(params, cfg, hist, interventions)
        k_act, k_env = jax.random.split(jax.random.fold_in(k_loop, step))
        front = state.agent_pos + jnp.asarray(DIR_TO_VEC)[state.agent_dir]
        front_wall = jax.vmap(lambda xy, o: cell_type(xy, o, env.size))(front, state.obstacles) == WALL
        if greedy:  # static: greedy runs draw no action noise
            action = jnp.argmax(logits, -1).astype(jnp.int32)
        else:
            action = jax.random.categorical(k_act, logits / temperature, axis=-1).astype(jnp.int32)
        env_keys = jax.random.split(k_env, batch)
        obs, state, reward, term, trunc, _ = jax.vmap(env.step, in_axes=(0, 0, 0, None))(
            env_keys, state, action, env_params
        )
        ended = (term | trunc) & ~done
        ret = jnp.where(done, ret, ret + reward)
        length = jnp.where(done, length, length + 1)
        # outcome: 0 running, 1 goal, 2 hit a ball, 3 timeout, 4 hit a wall
        new_out = jnp.where(reward > 0, 1, jnp.where(reward <= -1, jnp.where(front_wall, 4, 2), 3))
        outcome = jnp.where(ended, new_out, outcome)
        done = done | term | trunc
        rtg_next = hist[1][:, -1] - reward
        t_next = jnp.minimum(state.time, max_t).astype(jnp.int32)
        acts = hist[3].at[:, -1].set(action)
        hist = (
            push(hist[0], obs),
            push(hist[1], rtg_next),
            push(hist[2], t_next),
            push(acts, jnp.full((batch,), pad_action, jnp.int32)),
        )
        return step + 1, state, hist, done, ret, length, outcome

    zeros_f = jnp.zeros((batch,), jnp.float32)
    carry = (
        jnp.int32(0),
        state0,
        hist0,
        jnp.zeros((batch,), bool),
        zeros_f,
        jnp.zeros((batch,), jnp.int32),
        jnp.zeros((batch,), jnp.int32),
    )
    _, _, _, _, ret, length, outcome = jax.lax.while_loop(cond, body, carry)
    shape = (n_rtg, n_episodes)
    return ret.reshape(shape), length.reshape(shape), outcome.reshape(shape)


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
) -> EvalResult:
    """Run ``n_episodes`` closed-loop episodes for each target RTG, all in one jitted loop.

    Args:
      params, cfg: the DT.
      env, env_params: from ``envs.make`` (the observation mode must match ``cfg``).
      key: PRNG key; the same key gives the same episodes.
      target_rtgs: (R,) initial RTGs.
      n_episodes: episodes per target RTG.
      greedy: argmax actions; otherwise sample from softmax(logits / temperature).
      interventions: optional hook interventions applied at every step (see ``dtjax.hooks``).

    Returns:
      EvalResult with (R, n_episodes) arrays.
    """
    target_rtgs = jnp.asarray(np.asarray(target_rtgs, np.float32).reshape(-1))
    ret, length, outcome = _rollout(
        params, cfg, env, env_params, key, target_rtgs, int(n_episodes), bool(greedy),
        jnp.float32(temperature), interventions or {},
    )
    outcome = np.asarray(outcome)
    return EvalResult(
        target_rtg=np.asarray(target_rtgs),
        returns=np.asarray(ret),
        lengths=np.asarray(length),
        goal=outcome == 1,
        hit=(outcome == 2) | (outcome == 4),
        hit_wall=outcome == 4,
        timeout=(outcome == 3) | (outcome == 0),
    )


def calibrate(params, cfg, env, env_params, key, rtgs=None, n_episodes: int = 200, **kw) -> dict:
    """The original's "black box characterisation": achieved return as the target RTG sweeps.

    Returns a JSON-able dict: ``rows`` (one summary row per target, see ``EvalResult.summary``),
    ``strictly_monotonic`` (the mean return never decreases along the sweep), ``monotonic`` (no
    decrease exceeds two standard errors of the difference: monotonic up to sampling noise), and
    ``largest_decrease``.
    """
    rtgs = np.linspace(-1.0, 1.0, 21) if rtgs is None else np.asarray(rtgs, np.float32)
    res = evaluate(params, cfg, env, env_params, key, rtgs, n_episodes, **kw)
    rows = res.summary()
    means = np.array([r["mean_return"] for r in rows])
    se = np.array([r["std_return"] for r in rows]) / np.sqrt(n_episodes)
    diffs = np.diff(means)
    noise = 2.0 * np.sqrt(se[1:] ** 2 + se[:-1] ** 2)  # 2 standard errors of each difference
    return {
        "rows": rows,
        "n_episodes": int(n_episodes),
        "greedy": bool(kw.get("greedy", True)),
        # never decreases along the sweep
        "strictly_monotonic": bool(np.all(diffs >= 0)),
        # no decrease larger than sampling noise (2 standard errors of the difference)
        "monotonic": bool(np.all(diffs >= -noise)),
        "largest_decrease": float(max(0.0, -diffs.min())),
        "strictly_rising_ends": bool(means[-1] > means[0]),
    }

