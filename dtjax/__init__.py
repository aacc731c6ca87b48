"""dtjax: Decision Transformers on MiniGrid Dynamic Obstacles in JAX/Flax, built for interpretability."""

__version__ = "0.1.0"


def load(path, with_env: bool = False):
    """A ready model ``(cfg, params)`` from a dtjax checkpoint or an original PyTorch `.pt` file;
    with ``with_env=True``, ``(cfg, params, env_cfg)``: the ``EnvConfig`` it was trained in.

    See `dtjax.run.Run`, which this opens; imported lazily so `import dtjax` stays light.
    """
    from dtjax.run import load as _load  # lazy: keeps `import dtjax` free of jax

    return _load(path, with_env=with_env)
