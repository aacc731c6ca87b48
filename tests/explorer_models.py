"""Tiny random models for the explorer's tests (no checkpoint needed; a few seconds to compile)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from dtjax.config import EnvConfig, ModelConfig
from dtjax.model import init_params

# One shape for every explorer test (each shape costs a compile of the explore step, of patching and
# of closed-loop episodes): K = 3 timesteps, so the context window and its padding are exercised.
TINY = ModelConfig(d_model=16, n_heads=2, d_head=8, d_mlp=32, max_timestep=40, n_timesteps=3)
ENV = EnvConfig("MiniGrid-Dynamic-Obstacles-8x8-v0", max_steps=30)


def random_params(cfg: ModelConfig, seed: int = 0) -> dict:
    """Params with every entry nonzero (numpy draws: no per-leaf compiles)."""
    shapes = jax.eval_shape(lambda: init_params(jax.random.PRNGKey(0), cfg))
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: jnp.asarray(rng.normal(0, 0.3, s.shape).astype(np.float32)), shapes)


def tiny_model(cfg: ModelConfig = TINY, env: EnvConfig = ENV, seed: int = 0, name: str = "tiny"):
    from dtjax.explorer.session import Model

    return Model(name=name, path="", cfg=cfg, params=random_params(cfg, seed), env_cfg=env.replace(obs_mode=cfg.obs_mode),
                 mean_samples=32)
