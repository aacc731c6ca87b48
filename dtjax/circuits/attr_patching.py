"""Attribution patching (a gradient estimate of activation patching) and steering by activation
differences (algebraic value editing).

Attribution patching (Nanda 2023, "Attribution Patching: Activation Patching At Industrial
Scale"; Kramar et al. 2024, arXiv 2403.00745, AtP). Activation patching restores one activation
a (hook, position, head) from its clean value in the corrupted run; to first order in
Delta = a_clean - a_corr its effect on the metric m is

    m(a_corr + Delta) - m(a_corr)  ~  Delta . dm/da |_corrupted

so one forward pass on each input and *one* backward pass on the corrupted run estimate every
activation-patching effect at once. The gradient comes from ``jax.grad`` through the model's own
interventions: every hook gets ``hooks.Apply(x + d)`` with d = 0, and the gradient with respect
to d is dm/da at that hook (a later hook's d only shifts its activation, so gradients flow through
it). The estimate is exact where the path from a to the metric is affine (no LayerNorm: the final
``resid_post`` and the last ``mlp_out``; a last-layer head's ``hook_z`` / ``hook_v`` in an
attention-only model) and wrong where it is not, chiefly a saturated softmax (Kramar et al.'s
"attention saturation"): a patch that moves attention a lot has almost no gradient.
``ig_steps`` > 0 replaces the gradient at a_corr by its average over a_corr + alpha Delta,
alpha at ``ig_steps`` midpoints in (0, 1), taken for one hook at a time (the whole hook moved
together, every other activation recomputed: Marks et al. 2024, arXiv 2403.19647, eq. 3). By
the fundamental theorem of calculus the sum over a hook's nodes then converges to patching the
whole hook, and a node's estimate to its activation-patching effect when it is the only node of
its hook that differs.

Steering / algebraic value editing (Turner et al. 2023, arXiv 2308.10248; the original app's
"Algebraic Value Editing"): run the clean input with ``coeff * (a_corr - a_clean)`` added at one
hook. ``coeff = 0`` is the clean run and ``coeff = 1`` makes that hook's activation the corrupted
one (everything after it recomputed). In closed loop the batch-mean difference is added at every
step of every episode.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from dtjax import hooks as hooks_lib
from dtjax.circuits.act_patching import logit_diff_metric
from dtjax.circuits.core import Inputs, action_vector, check_pair, run_with_cache, run_with_hooks
from dtjax.config import ModelConfig
from dtjax.evaluate import evaluate_worlds


def _shift(x, d):
    return x + d


def _reduce(name: str, contrib: jax.Array) -> jax.Array:
    """Sum an elementwise contribution (batch, ...) of hook ``name`` to (pos,) or (pos, head)."""
    info = hooks_lib.hook_info(name)
    head_axis, pos_axis = info.head_axis, info.pos_axis
    keep = (pos_axis,) if head_axis is None else (pos_axis, head_axis)
    out = contrib.sum(tuple(i for i in range(contrib.ndim) if i not in keep))
    return out if head_axis is None or pos_axis < head_axis else out.T


@functools.partial(jax.jit, static_argnames=("cfg",))
def _grads_at_corrupted(params, cfg, corrupted, v):
    """(metric, corrupted cache {name: act}, {name: dm/d act}) for every hook but the logits, from
    one forward and one backward pass (one compile per model and input shape, whatever is asked)."""
    shapes = jax.eval_shape(lambda: run_with_cache(params, cfg, corrupted)[1])
    zeros = {n: jnp.zeros(s.shape, s.dtype) for n, s in shapes.items() if n != "hook_logits"}

    def metric(deltas):
        ivs = {n: hooks_lib.Apply(_shift, d) for n, d in deltas.items()}
        logits, cache = run_with_cache(params, cfg, corrupted, interventions=ivs)
        return logit_diff_metric(logits, v), cache

    (m, cache), grads = jax.value_and_grad(metric, has_aux=True)(zeros)
    return m, cache, grads


@functools.partial(jax.jit, static_argnames=("cfg", "ig_steps"))
def _integrated_grads(params, cfg, corrupted, deltas, v, ig_steps):
    """{name: mean of dm/da over a = a_corr + alpha delta}, alpha at ``ig_steps`` midpoints, one hook at a time."""

    def grad_at(name, alpha):
        def metric(d):
            ivs = {name: hooks_lib.Apply(_shift, alpha * deltas[name] + d)}
            return logit_diff_metric(run_with_hooks(params, cfg, corrupted, ivs), v)

        return jax.grad(metric)(jnp.zeros_like(deltas[name]))

    alphas = (jnp.arange(ig_steps) + 0.5) / ig_steps
    return {n: jax.lax.map(functools.partial(grad_at, n), alphas).mean(0) for n in deltas}


def attribution_patching(params: dict, cfg: ModelConfig, clean: Inputs, corrupted: Inputs,
                         direction: Any = "forward-right", names: list[str] | None = None, ig_steps: int = 0,
                         normalise: bool = True) -> dict:
    """Attribution-patching estimates of ``activation_patching``, clean -> corrupted, every hook at once.

    Same arguments and return structure as ``circuits.activation_patching``: ``{"clean": m_clean,
    "corrupted": m_corr, "effects": {hook name: (pos,) or (pos, head)}}``, each entry the estimate
    of (m_patched - m_corr) / (m_clean - m_corr) for restoring that position (and head) from the
    clean run: sum over the other axes and the batch of (a_clean - a_corr) * dm/da on the corrupted
    run. ``names``: hooks (TL shorthand allowed), default every hook but the logits.
    ``ig_steps`` > 0: integrated gradients per hook (module docstring), ``ig_steps`` forward and
    backward passes per hook. ``normalise=False`` gives raw metric changes (no division; defined
    when clean and corrupted give the same metric).
    """
    check_pair(clean, corrupted)
    v = action_vector(direction, cfg.n_actions)
    reached = [n for n in hooks_lib.hook_names(cfg, with_actions=clean.actions is not None) if n != "hook_logits"]
    names = tuple(hooks_lib.act_name(n) for n in names) if names else tuple(reached)
    if "hook_logits" in names:
        raise ValueError("hook_logits is the metric's input, not a patchable activation")
    missing = [n for n in names if n not in reached]
    if missing:
        raise KeyError(f"no activation named {missing[0]} in this forward pass (model or input lacks it)")
    clean_logits, clean_cache = run_with_cache(params, cfg, clean)
    m_clean = logit_diff_metric(clean_logits, v)
    if ig_steps == 0:
        m_corr, corr_cache, grads = _grads_at_corrupted(params, cfg, corrupted, v)
    else:
        corr_logits, corr_cache = run_with_cache(params, cfg, corrupted)
        m_corr = logit_diff_metric(corr_logits, v)
        deltas = {n: clean_cache[n] - corr_cache[n] for n in names}
        grads = _integrated_grads(params, cfg, corrupted, deltas, v, int(ig_steps))
    denom = jnp.where(jnp.abs(m_clean - m_corr) < 1e-9, jnp.nan, m_clean - m_corr) if normalise else 1.0
    effects = {n: _reduce(n, (clean_cache[n] - corr_cache[n]) * grads[n]) / denom for n in names}
    return {"clean": m_clean, "corrupted": m_corr, "effects": effects}


# ---------------------------------------------------------------------------------------------
# STEERING (algebraic value editing)
# ---------------------------------------------------------------------------------------------


def _add_scaled(x, arg):
    """x + coeff * vec, ``vec`` (batch or 1, ...) cut or zero-padded at the end of each axis to x's
    shape (the evaluation context may hold fewer or more tokens than the inputs it came from)."""
    coeff, vec = arg
    vec = vec[(slice(None),) + tuple(slice(0, s) for s in x.shape[1:])]
    vec = jnp.pad(vec, [(0, 0)] + [(0, s - t) for s, t in zip(x.shape[1:], vec.shape[1:])])
    return x + coeff * vec.astype(x.dtype)


def steering_vector(params: dict, cfg: ModelConfig, clean: Inputs, corrupted: Inputs, hook) -> jax.Array:
    """The batch-mean activation difference a_corr - a_clean at ``hook`` (the hook's shape without batch)."""
    name = hooks_lib.act_name(hook)
    _, c = run_with_cache(params, cfg, clean)  # the full cache: one compile shared with the other analyses
    _, k = run_with_cache(params, cfg, corrupted)
    return (k[name] - c[name]).mean(0)


@functools.partial(jax.jit, static_argnames=("cfg", "name"))
def _steer(params, cfg, inputs, diff, coeffs, name):
    return jax.vmap(lambda c: run_with_hooks(params, cfg, inputs, {name: hooks_lib.Apply(_add_scaled, (c, diff))}))(coeffs)


def steer_logits(params: dict, cfg: ModelConfig, clean: Inputs, corrupted: Inputs, hook, coeffs,
                 direction: Any = "forward-right") -> dict:
    """Logits of the clean inputs with ``coeff * (a_corr - a_clean)`` added at ``hook``, per pair.

    Returns ``coeff`` (n,), ``logits`` (n, batch, n_actions) and ``probs`` at the last state token,
    ``metric`` (n,) the mean logit difference along ``direction``, and the ``clean`` / ``corrupted``
    metrics (``coeff`` 0 and 1 reproduce them when ``hook`` cuts the whole residual stream).
    One ``vmap`` over the coefficients.
    """
    check_pair(clean, corrupted)
    name = hooks_lib.act_name(hook)
    v = action_vector(direction, cfg.n_actions)
    clean_logits, c = run_with_cache(params, cfg, clean)
    corr_logits, k = run_with_cache(params, cfg, corrupted)
    coeffs = jnp.asarray(coeffs, jnp.float32).reshape(-1)
    logits = _steer(params, cfg, clean, k[name] - c[name], coeffs, name)[:, :, -1]
    return {"coeff": coeffs, "logits": logits, "probs": jax.nn.softmax(logits, -1), "metric": (logits @ v).mean(1),
            "clean": logit_diff_metric(clean_logits, v), "corrupted": logit_diff_metric(corr_logits, v)}


def steer_returns(params: dict, cfg: ModelConfig, env, env_params, key: jax.Array, target_rtgs, n_episodes: int,
                  vector: jax.Array, hook, coeffs) -> dict:
    """Closed-loop returns with ``coeff * vector`` added at ``hook`` at every step of every episode.

    ``vector``: e.g. ``steering_vector`` (the hook's shape without batch; positions past the
    evaluation context are dropped, missing ones are zero: the evaluation context of a K > 1
    model holds 3K tokens, the current action slot being padding). Every coefficient runs the same episodes (same ``key``) and
    compiles once: the coefficients are the world axis of one
    vmapped rollout (``evaluate_worlds``). Returns ``coeff`` (n,), ``target_rtg`` (R,) and
    (n, R) arrays ``mean_return``, ``goal_rate``, ``hit_rate``, ``timeout_rate`` and
    ``{outcome}_rate`` for each other outcome of the env's task (Memory: ``success_rate``, ``wrong_rate``).
    """
    name = hooks_lib.act_name(hook)
    coeffs = np.asarray(coeffs, np.float32).reshape(-1)
    vec = jnp.asarray(vector)[None]
    # one world per coefficient: the coefficient is the world axis, the vector is shared
    ivs = {name: hooks_lib.Apply(_add_scaled, (jnp.asarray(coeffs), jnp.broadcast_to(vec, (len(coeffs),) + vec.shape)))}
    res = evaluate_worlds(params, cfg, env, env_params, key, target_rtgs, n_episodes, ivs)
    return {"coeff": coeffs, "target_rtg": np.asarray(target_rtgs, np.float32).reshape(-1),
            **{f"{o}_rate": (np.asarray(res.outcome) == i).mean(-1) for i, o in enumerate(res.outcomes) if i > 0},
            "mean_return": res.returns.mean(-1), "goal_rate": res.goal.mean(-1), "hit_rate": res.hit.mean(-1),
            "timeout_rate": res.timeout.mean(-1)}
