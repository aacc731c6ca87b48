"""Shared vocabulary of the analyses: model inputs as one pytree, token positions, logit directions.

An analysis reads the action logits along a *direction over actions* ``v`` (n_actions,): one
action (``"forward"`` -> (0, 0, 1)), a logit difference (``"forward-right"`` -> (0, -1, 1), the
original app's default comparison), or any vector. In the residual stream that direction is
``W_U @ v`` (d_model,), and its bias is ``b_U @ v``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from dtjax import model as model_lib
from dtjax.config import ModelConfig

ACTIONS = ("left", "right", "forward")  # env action indices 0, 1, 2


@struct.dataclass
class Inputs:
    """One batch of model inputs (the arguments of ``dtjax.model.forward``) as a pytree.

    obs: (batch, K, 7, 7, C) raw codes or one-hot; rtg: (batch, K) float; timesteps: (batch, K)
    int; actions: (batch, K) or (batch, K-1) int, or None (K = 1: tokens R, s only).
    """

    obs: Any
    rtg: Any
    timesteps: Any
    actions: Any = None

    @property
    def batch(self) -> int:
        return self.rtg.shape[0]

    @property
    def n_timesteps(self) -> int:
        return self.rtg.shape[1]

    def take(self, idx) -> "Inputs":
        """The sub-batch ``idx`` (int array or slice) of every field."""
        return jax.tree.map(lambda x: x[idx], self)

    @staticmethod
    def concat(parts: list["Inputs"]) -> "Inputs":
        return jax.tree.map(lambda *xs: jnp.concatenate(xs, 0), *parts)

    def left_pad(self, n_timesteps: int, pad_action: int = 3, pad_rtg: str = "zero") -> "Inputs":
        """``n_timesteps`` of context, the real ones right-aligned after padding timesteps, as
        training windows and closed-loop evaluation pad the start of an episode: zero observation,
        RTG 0 (``pad_rtg="initial"``: the first real RTG, ``ModelConfig.pad_rtg``), timestep 0, the
        padding action; actions (batch, n_timesteps - 1) (None for 1).
        """
        k = self.n_timesteps
        if k > n_timesteps:
            raise ValueError(f"cannot pad {k} timesteps to {n_timesteps}")
        b, pad = self.batch, n_timesteps - k

        def lpad(x, value=0):
            x = jnp.asarray(x)
            return jnp.concatenate([jnp.full((b, pad) + x.shape[2:], value, x.dtype), x], axis=1)

        acts = self.actions if self.actions is not None else jnp.zeros((b, 0), jnp.int32)
        acts = jnp.concatenate([acts, jnp.full((b, k - 1 - acts.shape[1]), pad_action, jnp.int32)], 1)[:, : k - 1]
        acts = lpad(acts, pad_action) if n_timesteps > 1 else None
        rtg = jnp.asarray(self.rtg, jnp.float32)
        rtg_pad = jnp.broadcast_to(rtg[:, :1], (b, pad)) if pad_rtg == "initial" else jnp.zeros((b, pad), jnp.float32)
        return Inputs(obs=lpad(self.obs), rtg=jnp.concatenate([rtg_pad, rtg], 1), timesteps=lpad(self.timesteps),
                      actions=acts)

    def with_rtg(self, rtg, pad_action: int = 3, pad_rtg: str = "zero") -> "Inputs":
        """Shift every RTG of each row so that its last (current) RTG is ``rtg`` (batch,) or ().

        Rewards between timesteps (RTG differences) are preserved; for K = 1 this just sets it.
        Padding timesteps keep their RTG 0 (the model never saw padding with another RTG): those
        before the last that are padding by the convention of ``left_pad``, training windows and
        closed-loop evaluation (action ``pad_action``, RTG 0, timestep 0, zero observation).
        ``pad_rtg="initial"`` (``ModelConfig.pad_rtg``): padding holds the episode's initial RTG,
        so it shifts with the real timesteps.
        """
        r = jnp.asarray(self.rtg, jnp.float32)
        new = r - r[:, -1:] + jnp.reshape(jnp.asarray(rtg, jnp.float32), (-1, 1))
        k = self.n_timesteps
        if self.actions is not None and k > 1 and pad_rtg == "zero":
            obs = jnp.asarray(self.obs)[:, : k - 1]
            pad = ((jnp.asarray(self.actions)[:, : k - 1] == pad_action) & (r[:, : k - 1] == 0)
                   & (jnp.asarray(self.timesteps)[:, : k - 1] == 0) & ~jnp.any(obs != 0, axis=tuple(range(2, obs.ndim))))
            new = jnp.where(jnp.concatenate([pad, jnp.zeros_like(pad[:, :1])], 1), r, new)
        return self.replace(rtg=new)


def check_pair(clean: Inputs, corrupted: Inputs) -> None:
    """A clean/corrupted pair must match field by field (pairs along the batch): else ValueError."""
    a, b = jax.tree.leaves(clean), jax.tree.leaves(corrupted)
    if jax.tree.structure(clean) != jax.tree.structure(corrupted) or any(x.shape != y.shape for x, y in zip(a, b)):
        shapes = lambda t: {k: getattr(getattr(t, k), "shape", None) for k in ("obs", "rtg", "timesteps", "actions")}  # noqa: E731
        raise ValueError(f"clean and corrupted inputs must have the same shapes, got {shapes(clean)} and {shapes(corrupted)}")


def state_pos(n_timesteps: int, k: int = -1) -> int:
    """Token index of timestep ``k``'s state token (tokens are R, s, a per timestep)."""
    k = k % n_timesteps
    return 3 * k + 1


def forward(params: dict, cfg: ModelConfig, inputs: Inputs) -> jax.Array:
    """Logits (batch, K, n_actions)."""
    return model_lib.forward(params, cfg, inputs.obs, inputs.rtg, inputs.timesteps, inputs.actions)


def run_with_cache(params: dict, cfg: ModelConfig, inputs: Inputs, **kw) -> tuple[jax.Array, dict]:
    """(logits (batch, K, n_actions), cache {TL hook name: array}); ``kw`` as the model's."""
    return model_lib.run_with_cache(params, cfg, inputs.obs, inputs.rtg, inputs.timesteps, inputs.actions, **kw)


def run_with_hooks(params: dict, cfg: ModelConfig, inputs: Inputs, interventions: dict) -> jax.Array:
    """Logits (batch, K, n_actions) with ``interventions`` (see ``dtjax.hooks``)."""
    return model_lib.run_with_hooks(params, cfg, inputs.obs, inputs.rtg, inputs.timesteps, inputs.actions,
                                    interventions=interventions)


def layer_norm(params: dict, cfg: ModelConfig, name: str, x: jax.Array) -> jax.Array:
    """The model's LayerNorm ``name`` ("blocks.0.ln1", "ln_final") applied to ``x`` (..., d_model);
    the identity for a model without LayerNorm."""
    if not cfg.layer_norm:
        return x
    node = params
    for key in name.replace("blocks.", "blocks_").split("."):
        node = node[key]
    return model_lib.LayerNorm(cfg, prefix=name).apply({"params": node}, x, {})


def action_index(a: int | str) -> int:
    if isinstance(a, str):
        if a not in ACTIONS:
            raise ValueError(f"unknown action {a!r}; actions are {', '.join(ACTIONS)}")
        return ACTIONS.index(a)
    return int(a)


def action_vector(spec: Any, n_actions: int = 3) -> jax.Array:
    """A direction over actions (n_actions,) float32.

    ``spec``: an action (int or name: ``"forward"``), a difference (``"forward-right"`` or a
    pair ``(pos, neg)``), or an (n_actions,) array returned as is.
    """
    if isinstance(spec, str) and "-" in spec:
        spec = tuple(spec.split("-", 1))
    if isinstance(spec, tuple):
        pos, neg = (action_index(a) for a in spec)
        return jnp.zeros(n_actions, jnp.float32).at[pos].add(1.0).at[neg].add(-1.0)
    if isinstance(spec, (int, np.integer, str)):
        return jnp.zeros(n_actions, jnp.float32).at[action_index(spec)].set(1.0)
    v = jnp.asarray(spec, jnp.float32)
    if v.shape != (n_actions,):
        raise ValueError(f"a direction over actions has shape ({n_actions},), got {v.shape}")
    return v


def direction_label(spec: Any) -> str:
    if isinstance(spec, tuple):
        spec = "-".join(ACTIONS[action_index(a)] for a in spec)
    if isinstance(spec, (int, np.integer)):
        spec = ACTIONS[int(spec)]
    return spec if isinstance(spec, str) else "custom direction"


def logit_direction(params: dict, spec: Any) -> jax.Array:
    """The residual-stream direction (d_model,) = W_U @ v of a direction over actions."""
    return params["W_U"] @ action_vector(spec, params["W_U"].shape[1])


def obs_maps(flat: jax.Array, cfg: ModelConfig) -> jax.Array:
    """Rows in W_state's (c, x, y) flatten order (..., obs_dim) -> maps (..., C, 7, 7) indexed [c, x, y].

    Display a map with ``imshow(m.T)`` (rows = view y, the agent at the bottom centre (3, 6)).
    """
    c = cfg.obs_shape[-1]
    return flat.reshape(flat.shape[:-1] + (c, 7, 7))


def obs_to_chw(obs: jax.Array) -> jax.Array:
    """Observations (..., 7, 7, C) [x, y, c] -> (..., C, 7, 7) [c, x, y], as float32."""
    return jnp.moveaxis(jnp.asarray(obs, jnp.float32), -1, -3)
