"""How good a dictionary is: SAELens's metrics, for a Decision Transformer.

Reconstruction, at each token type (``reconstruction``): ``l0`` (mean active latents per token),
``explained_variance`` = 1 - FVU with FVU = sum ||y - y_hat||^2 / sum ||y - mean(y)||^2 over the
tokens, ``mse`` (mean ||y - y_hat||^2 per token), ``cossim`` (mean cosine of y and y_hat),
``l2_ratio`` (mean ||y_hat|| / ||y||), and from each latent's firing rate (``density``) the
fractions of ``dead`` (never fired on these tokens) and ``dense`` (fired on more than
``DENSE`` of them) latents.

Behaviour, with the dictionary spliced in through the hooks at its token type
(``downstream``): the action cross-entropy on the dataset's actions (the DT's training loss)
clean, with the dictionary, and with the site zero- or mean-ablated at those tokens;
``ce_loss_score`` = (CE_ablated - CE_sae) / (CE_ablated - CE_clean) (1 = as good as the model,
0 = no better than ablating) and the same for ``kl_div_score`` = (KL_ablated - KL_sae) /
KL_ablated with KL(clean || spliced) of the action distributions. Closed loop
(``closed_loop``): mean return at each target RTG with the dictionary spliced into every step
of the rollout, on the same episodes as the model alone.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from dtjax.config import ModelConfig
from dtjax.evaluate import evaluate
from dtjax.model import forward, run_with_hooks
from dtjax.sae.activations import model_actions
from dtjax.sae.model import SAEConfig, SparseDictionary
from dtjax.sae.splice import ablation, splice

DENSE = 0.1  # a latent firing on more than 10% of tokens is "dense"


def _chunks(n: int, chunk: int) -> tuple[int, int]:
    chunk = max(1, min(chunk, n))
    return chunk, -(-n // chunk)


def _pad(a, n_total):
    return jnp.concatenate([a, jnp.zeros((n_total - a.shape[0],) + a.shape[1:], a.dtype)]) if n_total > a.shape[0] else a


@functools.partial(jax.jit, static_argnames=("cfg", "chunk"))
def _recon_sums(variables, x, y, valid, cfg: SAEConfig, chunk: int):
    model = SparseDictionary(cfg)
    n_chunks = x.shape[0] // chunk
    shaped = [a.reshape((n_chunks, chunk) + a.shape[1:]) for a in (x, y, valid)]

    def one(args):
        xc, yc, vc = args
        z = model.apply(variables, xc, method=SparseDictionary.encode)
        yh = model.apply(variables, z, method=SparseDictionary.decode)
        v = vc.astype(jnp.float32)
        err = ((yc - yh) ** 2).sum(-1)
        ny, nh = jnp.linalg.norm(yc, axis=-1), jnp.linalg.norm(yh, axis=-1)
        cos = (yc * yh).sum(-1) / jnp.maximum(ny * nh, 1e-12)
        return {"n": v.sum(), "l0": ((z > 0).sum(-1) * v).sum(), "sse": (err * v).sum(), "cos": (cos * v).sum(),
                "l2_ratio": (nh / jnp.maximum(ny, 1e-12) * v).sum(), "fires": ((z > 0) * v[:, None]).sum(0),
                "y_sum": (yc * v[:, None]).sum(0), "y_sq": ((yc**2).sum(-1) * v).sum()}

    return jax.tree.map(lambda a: a.sum(0), jax.lax.map(one, shaped))


def reconstruction(variables: dict, cfg: SAEConfig, x: jax.Array, y: jax.Array | None = None, chunk: int = 8192) -> dict:
    """Reconstruction metrics of the dictionary on tokens x (M, d_in) (targets y (M, d_out), default x).

    Returns floats ``n_tokens``, ``l0``, ``explained_variance``, ``fvu``, ``mse``, ``cossim``,
    ``l2_ratio``, ``dead_frac``, ``dense_frac`` and the array ``density`` (n_latents,).
    """
    y = x if y is None else y
    m = x.shape[0]
    chunk, n_chunks = _chunks(m, chunk)
    total = chunk * n_chunks
    valid = jnp.arange(total) < m
    s = jax.device_get(_recon_sums(variables, _pad(x, total), _pad(y, total), valid, cfg, chunk))
    n = float(s["n"])
    mean = s["y_sum"] / n
    sst = float(s["y_sq"] - n * (mean**2).sum())
    fvu = float(s["sse"]) / max(sst, 1e-12)
    density = np.asarray(s["fires"]) / n
    return {"n_tokens": int(n), "l0": float(s["l0"]) / n, "explained_variance": 1.0 - fvu, "fvu": fvu,
            "mse": float(s["sse"]) / n, "cossim": float(s["cos"]) / n, "l2_ratio": float(s["l2_ratio"]) / n,
            "dead_frac": float((density == 0).mean()), "dense_frac": float((density > DENSE).mean()),
            "density": density}


@functools.partial(jax.jit, static_argnames=("model_cfg", "chunk"))
def _logit_sums(params, windows, worlds, model_cfg: ModelConfig, chunk: int):
    n_chunks = windows["rtg"].shape[0] // chunk
    w = jax.tree.map(lambda a: a.reshape((n_chunks, chunk) + a.shape[1:]), windows)

    def one(wc):
        acts_in = model_actions(model_cfg, wc["actions"])
        clean = forward(params, model_cfg, wc["obs"], wc["rtg"], wc["timesteps"], acts_in)
        logp_clean = jax.nn.log_softmax(clean)
        labels = jnp.clip(wc["actions"], 0, model_cfg.n_actions - 1)
        mask = wc["mask"].astype(jnp.float32)

        def stats(logits):
            logp = jax.nn.log_softmax(logits)
            ce = -jnp.take_along_axis(logp, labels[..., None], -1)[..., 0]
            kl = (jnp.exp(logp_clean) * (logp_clean - logp)).sum(-1)
            return jnp.stack([(ce * mask).sum(), (kl * mask).sum()])

        out = [stats(clean)]
        for ivs in worlds:
            out.append(stats(run_with_hooks(params, model_cfg, wc["obs"], wc["rtg"], wc["timesteps"], acts_in, interventions=ivs)))
        return jnp.stack(out), mask.sum()

    sums, n = jax.lax.map(one, w)
    return sums.sum(0), n.sum()


def downstream(params: dict, model_cfg: ModelConfig, cfg: SAEConfig, variables: dict, windows: dict,
               mean_out: jax.Array, chunk: int = 4096) -> dict:
    """CE and KL with the dictionary spliced in, against zero- and mean-ablation of its site.

    ``windows``: model inputs with ``mask`` (N, K) (``activations.harvest(keep_windows=True)``);
    ``mean_out`` (d_out,): the site's mean at the dictionary's token type (the mean-ablation value).
    """
    n = windows["rtg"].shape[0]
    chunk, n_chunks = _chunks(n, chunk)
    total = chunk * n_chunks
    windows = {k: _pad(v, total) for k, v in windows.items()}  # padded rows have mask False
    worlds = (splice(cfg, variables, params, model_cfg), ablation(cfg, "zero"), ablation(cfg, "mean", mean_out))
    sums, count = jax.device_get(_logit_sums(params, windows, worlds, model_cfg, chunk))
    ce, kl = sums[:, 0] / count, sums[:, 1] / count
    out = {"n_tokens": int(count), "ce_clean": float(ce[0]), "ce_sae": float(ce[1]), "ce_zero": float(ce[2]),
           "ce_mean": float(ce[3]), "kl_sae": float(kl[1]), "kl_zero": float(kl[2]), "kl_mean": float(kl[3])}
    for base in ("zero", "mean"):
        d_ce = out[f"ce_{base}"] - out["ce_clean"]
        out[f"ce_loss_score_{base}"] = (out[f"ce_{base}"] - out["ce_sae"]) / d_ce if abs(d_ce) > 1e-9 else float("nan")
        kb = out[f"kl_{base}"]
        out[f"kl_div_score_{base}"] = (kb - out["kl_sae"]) / kb if kb > 1e-12 else float("nan")
    return out


def closed_loop(params: dict, model_cfg: ModelConfig, cfg: SAEConfig, variables: dict, env, env_params, key: jax.Array,
                target_rtgs=(-1.0, 0.0, 1.0), n_episodes: int = 500) -> dict:
    """Mean return and the rate of each of the task's outcomes at each target RTG, the model alone
    and with the dictionary spliced into every step; both on the same episodes (same key). Greedy
    actions, as dtjax.evaluate. Rates: ``model_{outcome}`` / ``sae_{outcome}`` for every outcome but
    running (Dynamic Obstacles ``goal``, ``hit``, ``timeout``; Memory ``success``, ``wrong``,
    ``timeout``), named in ``outcomes``."""
    base = evaluate(params, model_cfg, env, env_params, key, target_rtgs, n_episodes)
    spliced = evaluate(params, model_cfg, env, env_params, key, target_rtgs, n_episodes,
                       interventions=splice(cfg, variables, params, model_cfg))
    se = np.sqrt(spliced.returns.var(1) / n_episodes + base.returns.var(1) / n_episodes)
    return {"target_rtg": [float(r) for r in base.target_rtg], "n_episodes": int(n_episodes),
            "model_return": base.returns.mean(1).tolist(), "sae_return": spliced.returns.mean(1).tolist(),
            "return_diff": (spliced.returns.mean(1) - base.returns.mean(1)).tolist(), "diff_se": se.tolist(),
            "outcomes": list(base.outcomes[1:]),
            **{f"{who}_{o}": res.ended(o).mean(1).tolist() for o in base.outcomes[1:]
               for who, res in (("model", base), ("sae", spliced))}}
