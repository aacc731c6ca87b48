"""Probe-directed interventions in closed loop: add alpha * (a probe's direction) at a hook, every step.

The intervention is data (``dtjax.hooks.Apply`` of the module-level ``add_at_position`` with a
traced ``{"vec", "pos"}``): at hook ``h`` the current timestep's token (``suite.token_pos``) gets
``vec`` added at every step of every episode inside the jitted rollout. A sweep over alpha, and
the random controls, are "worlds" of ``dtjax.evaluate.evaluate_worlds``: one compiled, vmapped
rollout in which every world plays the same episodes (the same reset and step keys), so a world's
episode ``i`` differs from the plain one only by the intervention.

Units: the direction is the probe's positive direction in the hook's own units
(``Probe.raw_direction``), normalised to unit length; alpha is in units of ``scale``, the distance
between the two classes' mean activations along it (on the probe's training data), so alpha = 1
moves a negative example's projection, on average, onto the positives'. A control adds a random
unit direction (Gaussian, normalised) times the same ``alpha * scale``: the same norm.

Success is per episode, on the same episodes: an episode "changed as targeted" when its world's
outcome is ``target`` (e.g. ``"timeout"`` for "blocked ahead" added: an agent that no longer steps
forward never reaches the goal nor hits anything) while the plain rollout's is not; ``success`` is
the fraction of the episodes whose plain outcome is not ``target`` that the intervention turns
into ``target``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from dtjax import hooks as hooks_lib
from dtjax.config import ModelConfig
from dtjax.evaluate import EvalResult, evaluate, evaluate_worlds
from dtjax.probes.suite import check_site, token_pos


def add_at_position(x: jax.Array, arg: dict) -> jax.Array:
    """``x`` (batch, pos, ...) with ``arg["vec"]`` (trailing shape) added at position ``arg["pos"]``."""
    sel = (jnp.arange(x.shape[1]) == arg["pos"]).reshape((1, x.shape[1]) + (1,) * (x.ndim - 2))
    return x + jnp.where(sel, jnp.asarray(arg["vec"], x.dtype).reshape(x.shape[2:]), jnp.zeros((), x.dtype))


def add_direction(cfg: ModelConfig, hook: str, token: str, vec) -> dict:
    """``{hook: Apply}`` adding ``vec`` (width,) at the current ``token`` of ``hook`` at every step."""
    full = check_site(cfg, hook, token)
    info = hooks_lib.hook_info(full)
    pos = cfg.n_timesteps - 1 if info.per_timestep else token_pos(cfg, token)
    return {full: hooks_lib.Apply(add_at_position, {"vec": jnp.asarray(vec, jnp.float32), "pos": jnp.int32(pos)})}


def separation(x: np.ndarray, y: np.ndarray, direction: np.ndarray) -> float:
    """Mean projection of class 1 minus class 0 of features ``x`` (N, D) on unit ``direction``."""
    x, y = np.asarray(x), np.asarray(y)
    proj = x @ np.asarray(direction)
    return float(proj[y == 1].mean() - proj[y == 0].mean())


def random_directions(key, n: int, width: int) -> np.ndarray:
    """(n, width) random unit directions (isotropic Gaussian, normalised)."""
    r = np.asarray(jax.random.normal(key, (n, width)))
    return r / np.linalg.norm(r, axis=1, keepdims=True)


def changed(res: EvalResult, plain: EvalResult, target: str) -> tuple[np.ndarray, np.ndarray]:
    """(hit, eligible) bool (W, R, n): the world's episode ended as ``target`` while the plain one
    (same episode) did not, and the plain episodes that did not end as ``target``."""
    eligible = ~plain.ended(target)
    return res.ended(target) & eligible[None], np.broadcast_to(eligible[None], res.outcome.shape)


def steer(params, cfg: ModelConfig, env, env_params, key, hook: str, token: str, direction, scale: float, alphas,
          target: str, *, n_episodes: int = 1000, rtg: float = 0.9, n_random: int = 2, pool: int | None = None,
          random_key=None) -> dict:
    """The dose-response of adding ``alpha * scale * direction`` at ``hook``/``token``, against
    ``n_random`` random directions of the same norm, over ``n_episodes`` closed-loop episodes at
    target RTG ``rtg`` (greedy). Returns plain data: ``alphas``, ``success`` (A,) and
    ``control_success`` (A,) (the mean over the random directions; ``control_each`` (A, n_random)),
    ``outcome_rates`` {outcome: (A,)} of the probe worlds, ``plain_rates`` {outcome: float},
    ``episodes`` (the eligible count), ``target``."""
    alphas = np.asarray(alphas, np.float32).reshape(-1)
    d = np.asarray(direction, np.float32)
    d = d / np.linalg.norm(d)
    rand = random_directions(random_key if random_key is not None else jax.random.fold_in(key, 1), n_random, d.size)
    dirs = np.concatenate([d[None], rand])  # (1 + n_random, D)
    vecs = (alphas[:, None, None] * scale * dirs[None]).reshape(-1, d.size)  # world = (alpha, direction)
    ivs = add_direction(cfg, hook, token, np.zeros(d.size, np.float32))
    full = next(iter(ivs))
    worlds = {full: hooks_lib.Apply(add_at_position, {"vec": jnp.asarray(vecs),
                                                      "pos": jnp.full((len(vecs),), ivs[full].arg["pos"])})}
    plain = evaluate(params, cfg, env, env_params, key, [rtg], n_episodes, pool=pool)
    res = evaluate_worlds(params, cfg, env, env_params, key, [rtg], n_episodes, worlds, pool=pool)
    hit, eligible = changed(res, plain, target)
    rate = hit.reshape(len(alphas), len(dirs), -1).sum(-1) / np.maximum(eligible.reshape(len(alphas), len(dirs), -1).sum(-1), 1)
    outcomes = {o: res.ended(o).reshape(len(alphas), len(dirs), -1)[:, 0].mean(-1) for o in res.outcomes[1:]}
    return {"alphas": alphas.tolist(), "success": rate[:, 0], "control_success": rate[:, 1:].mean(1),
            "control_each": rate[:, 1:], "outcome_rates": outcomes,
            "plain_rates": {o: float(plain.ended(o).mean()) for o in plain.outcomes[1:]},
            "episodes": int(eligible[0].sum()), "n_episodes": int(n_episodes), "target": target, "scale": float(scale),
            "hook": full, "token": token, "rtg": float(rtg)}
