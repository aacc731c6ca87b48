"""Shared test fixtures (imported by the tests as ``from fixtures import ...``)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from scipy.stats import chi2_contingency

from dtjax.data import store
from dtjax.model import init_params


def random_params(cfg, seed: int = 0, std: float | None = None) -> dict:
    """Random params of the model's shapes (numpy draws: no per-leaf compiles), every entry
    (biases, LN weights included) nonzero, so no path or term of a decomposition is trivially zero.
    ``std``: one standard deviation for every leaf, or None for 1/sqrt(fan_in) on matrices whose
    fan-in exceeds 4 and 0.3 elsewhere."""
    shapes = jax.eval_shape(lambda: init_params(jax.random.PRNGKey(0), cfg))
    rng = np.random.default_rng(seed)

    def scale(s):
        if std is not None:
            return std
        return 1.0 / np.sqrt(s.shape[-2]) if len(s.shape) >= 2 and s.shape[-2] > 4 else 0.3

    return jax.tree.map(lambda s: jnp.asarray(rng.normal(0, scale(s), s.shape).astype(np.float32)), shapes)


def random_dataset(rng: np.random.Generator, n_episodes: int, size: int = 8, n_obstacles: int = 4, max_steps: int = 300,
                   max_len: int = 40) -> tuple[dict[str, np.ndarray], dict]:
    """A valid dataset of random episodes (random states, actions and outcomes): (arrays, metadata)
    in ``dtjax.data.store``'s format. Lengths are U{1..max_len}; a quarter start at t > 0. States
    are not reachable from each other (balls may overlap): for format, sampler and summary tests."""
    lengths = rng.integers(1, max_len + 1, n_episodes)
    n = int(lengths.sum())
    t0 = np.where(rng.random(n_episodes) < 0.25, rng.integers(0, max_steps - max_len + 1, n_episodes), 0)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    ep = np.repeat(np.arange(n_episodes), lengths)
    t = (np.arange(n) - starts[ep] + t0[ep]).astype(np.int16)
    last = starts + lengths - 1
    outcome = rng.integers(0, 3, n_episodes)  # 0 goal, 1 hit, 2 timeout
    reward = np.zeros(n, np.float32)
    reward[last] = np.where(outcome == 0, 1 - 0.9 * (t[last] + 1) / max_steps, np.where(outcome == 1, -1.0, 0.0))
    terminated = np.zeros(n, bool)
    truncated = np.zeros(n, bool)
    terminated[last] = outcome < 2
    truncated[last] = outcome == 2
    arrays = {
        "agent_pos": rng.integers(1, size - 1, (n, 2)).astype(np.int8),
        "agent_dir": rng.integers(0, 4, n).astype(np.int8),
        "obstacles": rng.integers(1, size - 1, (n, n_obstacles, 2)).astype(np.int8),
        "time": t,
        "action": rng.integers(0, store.N_ACTIONS, n).astype(np.int8),
        "reward": reward,
        "terminated": terminated,
        "truncated": truncated,
        "source": rng.integers(0, len(store.SOURCES), n_episodes).astype(np.int8)[ep],
    }
    meta = {"env_id": f"MiniGrid-Dynamic-Obstacles-{size}x{size}-v0", "max_steps": max_steps, "size": size,
            "n_obstacles": n_obstacles, "obs_mode": "image", "seed": 0}
    return arrays, meta


def tiny_run(run, cfg, seed: int = 0, n_episodes: int = 300, max_len: int = 20):
    """A dtjax run directory at ``run``: a model of ``cfg`` with random params (every entry
    nonzero), a random dataset (``random_dataset``) and a config.json; returns (run, params)."""
    from pathlib import Path

    import jax
    import jax.numpy as jnp

    from dtjax.checkpoint import manager, save as save_ckpt, write_json_atomic
    from dtjax.model import init_params

    run = Path(run)
    arrays, meta = random_dataset(np.random.default_rng(seed), n_episodes, max_len=max_len)
    store.save(run / "dataset", arrays, meta)
    shapes = jax.eval_shape(lambda: init_params(jax.random.PRNGKey(0), cfg))
    rng = np.random.default_rng(seed + 1)
    params = jax.tree.map(lambda s: jnp.asarray(rng.normal(0, 0.5, s.shape).astype(np.float32)), shapes)
    config = {"model": cfg.to_dict(), "data": {"prob_go_from_end": 0.1}}
    mgr = manager(run)
    save_ckpt(mgr, 0, params, {"step": np.int32(0)}, config)
    mgr.wait_until_finished()
    write_json_atomic(run / "config.json", config)
    return run, params


def tiny_sae(run, n_latents: int = 32, k: int = 4, name: str = "sae", hook: str = "blocks.0.hook_resid_post",
             token: str = "state", eval_arrays: bool = True, dataset=None, out=None):
    """A small TopK SAE trained on the model ``run`` (a run directory, or a ``.pt`` with ``dataset``;
    20 steps on 2048 tokens) at ``out`` (default ``run/sae/<name>``); with ``eval_arrays`` also its
    ``eval/analysis.npz`` (what ``python -m dtjax.sae eval`` writes: the explorer's probe labels)."""
    from pathlib import Path

    from dtjax import io, sae

    ctx = sae.open_context(run, dataset)
    cfg = sae.make_config(ctx, hook, token, n_latents=n_latents, k=k)
    tcfg = sae.SAETrainConfig(n_tokens=2048, batch_size=256, num_steps=20, log_every=10)
    path, d = sae.train(ctx, cfg, tcfg, out or Path(run) / "sae" / name, progress=False, log=lambda *_: None)
    if eval_arrays:
        a = sae.analyse(ctx, d, n_tokens=2048, n_analysis=1024, closed_loop=False)
        (path / "eval").mkdir()
        io.save_arrays_atomic(path / "eval" / "analysis.npz", sae.eval_arrays(a))
    return path


def reset_labels(py, label, n: int, seed: int) -> list:
    """``label(py)`` after each of ``n`` resets of a real minigrid env ``py``, seeded once with ``seed``
    (its later resets draw on from there, as a user's would): one side of a reset-distribution test."""
    py.reset(seed=seed)
    out = []
    for _ in range(n):
        py.reset()
        out.append(label(py))
    return out


def chi2_p(a_labels, b_labels) -> float:
    """Chi-square homogeneity p-value of two samples of hashable outcomes. Outcomes seen fewer
    than 10 times in both samples together are pooled into one column, so every expected count is
    at least ~5 and the chi-square approximation holds."""
    keys = sorted(set(a_labels) | set(b_labels))
    idx = {k: i for i, k in enumerate(keys)}
    table = np.zeros((2, len(keys)))
    for row, labels in enumerate((a_labels, b_labels)):
        for lab in labels:
            table[row, idx[lab]] += 1
    rare = table.sum(0) < 10
    if rare.any():
        table = np.concatenate([table[:, ~rare], table[:, rare].sum(1, keepdims=True)], axis=1)
    return chi2_contingency(table)[1]


def quick_compiles():
    """Most XLA optimisations off while a module compiles dozens of tiny programs (flax's
    examples/lm1b/train_test.py does the same); restored afterwards. A module makes it its own
    fixture: ``pytest.fixture(scope="module", autouse=True, name="_quick_compiles")(quick_compiles)``."""
    old = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", old)
