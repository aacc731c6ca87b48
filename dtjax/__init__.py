"""dtjax: Decision Transformers on MiniGrid Dynamic Obstacles in JAX/Flax, built for interpretability."""

__version__ = "0.1.0"
