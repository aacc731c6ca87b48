"""Sparse dictionaries as Flax modules: TopK, BatchTopK and JumpReLU SAEs, and MLP transcoders.

A dictionary reads an activation ``x`` (d_in) of the DT at one hook and token type and writes a
reconstruction (an SAE: ``x`` itself) or a prediction (a transcoder: the MLP's output ``y`` from
its input) as a sparse, non-negative combination of ``n_latents`` decoder rows:

    x_n   = (x - mu_in) * scale_in                     mean-centred, E||x_n||^2 = d_in
    pre   = x_n @ W_enc + b_enc                        (n_latents,)
    z     = act(pre)                                   sparse, >= 0
    y_hat = (z @ W_dec + b_dec) / scale_out + mu_out   (SAE: mu_out = mu_in, scale_out = scale_in)

``act`` is one of

- ``topk`` (Gao et al. 2024, arXiv 2406.04093): ReLU of the k largest pre-activations, the rest 0,
  so every token has at most k active latents. Decoder rows have unit norm, the encoder starts as
  the decoder's transpose, and training adds the AuxK loss (dtjax.sae.train).
- ``batchtopk`` (Bussmann et al. 2024, arXiv 2412.06410): in training, the k*B largest
  pre-activations over a batch of B tokens (L0 = k on average, varying per token); at inference a
  single threshold ``theta`` (a running mean of the smallest kept activation), z = pre * (pre > theta).
- ``jumprelu`` (Rajamanoharan et al. 2024, arXiv 2407.14435): z = pre * H(pre - theta_i) with a
  learned threshold per latent, trained with an L0 penalty through straight-through estimators
  whose pseudo-derivative is a rectangle kernel of width ``bandwidth`` (``jumprelu``, ``step``).

Inputs are mean-centred (mean-offset activations predict dead latents: arXiv 2605.31518) and
scaled to E||x_n||^2 = d_in, so one learning rate suits every hook and model. Those statistics
are not trained: they live in the ``"norm"`` collection (with the BatchTopK threshold), the
trained arrays in ``"params"``. Variables: ``{"params": {W_enc (d_in, L), b_enc (L,), W_dec (L,
d_out), b_dec (d_out,)[, log_threshold (L,)]}, "norm": {mu_in, scale_in, mu_out, scale_out,
threshold}}``.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from dtjax.config import ConfigBase, ConfigError

ARCHS = ("topk", "batchtopk", "jumprelu")
TOKENS = ("rtg", "state", "action")  # token types, in their order within a timestep (R, s, a)


class SAEError(ValueError):
    """A dictionary, site or directory that cannot be used; the message is one line."""


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


@dataclasses.dataclass(frozen=True)
class SAEConfig(ConfigBase):
    """What a dictionary reads and its shape. Static and hashable (a jit-static argument)."""

    hook: str = "blocks.0.hook_resid_post"  # TL hook read; a transcoder: the blocks.L.hook_mlp_out it predicts
    token: str = "state"  # token type read and spliced: rtg, state or action
    arch: str = "topk"  # topk, batchtopk or jumprelu
    transcoder: bool = False  # read the MLP input of the hook's block, predict its hook_mlp_out
    n_latents: int = 1024  # dictionary size (8x d_model for the default DT)
    k: int = 16  # active latents per token (topk), on average over a batch (batchtopk); jumprelu: the initial L0
    d_in: int = 128  # width of what is read (d_model, or d_mlp for mlp.hook_pre/post)
    d_out: int = 128  # width of what is written (= d_in for an SAE)
    bandwidth: float = 0.05  # jumprelu: width of the STE kernel, in normalised units (pre-activations are O(1))
    init_threshold: float = 0.1  # jumprelu: smallest initial theta (normalised units); training sets them for an L0 of k

    def validate(self) -> None:
        _check(self.arch in ARCHS, f"sae.arch must be one of {', '.join(ARCHS)}, got {self.arch!r}")
        _check(self.token in TOKENS, f"sae.token must be one of {', '.join(TOKENS)}, got {self.token!r}")
        for n in ("n_latents", "k", "d_in", "d_out"):
            v = getattr(self, n)
            _check(isinstance(v, int) and not isinstance(v, bool) and v >= 1, f"sae.{n} must be an integer >= 1, got {v!r}")
        _check(self.k <= self.n_latents, f"sae.k ({self.k}) must not exceed sae.n_latents ({self.n_latents})")
        _check(self.transcoder or self.d_in == self.d_out, f"an SAE reconstructs its input: d_in ({self.d_in}) must equal d_out ({self.d_out})")
        _check(self.bandwidth > 0 and self.init_threshold > 0, "sae.bandwidth and sae.init_threshold must be > 0")


# ---------------------------------------------------------------------------------------------
# ACTIVATIONS
# ---------------------------------------------------------------------------------------------


def _rect(u):
    return (jnp.abs(u) < 0.5).astype(u.dtype)  # the rectangle kernel K(u) = 1{|u| < 1/2}


def _sum_to(g, shape):
    return g.reshape((-1,) + tuple(shape)).sum(0)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def jumprelu(x, threshold, bandwidth):
    """x * H(x - threshold); d/dx = H(x - threshold), d/dthreshold = -(threshold / eps) K((x - threshold) / eps).

    ``threshold`` has the shape of ``x``'s last axes (one per latent); eps = ``bandwidth``.
    """
    return x * (x > threshold)


def _jumprelu_fwd(x, threshold, bandwidth):
    return jumprelu(x, threshold, bandwidth), (x, threshold)


def _jumprelu_bwd(bandwidth, res, g):
    x, threshold = res
    dth = -(threshold / bandwidth) * _rect((x - threshold) / bandwidth) * g
    return g * (x > threshold), _sum_to(dth, threshold.shape)


jumprelu.defvjp(_jumprelu_fwd, _jumprelu_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def step(x, threshold, bandwidth):
    """H(x - threshold) (the L0 of a JumpReLU); d/dx = 0, d/dthreshold = -(1 / eps) K((x - threshold) / eps)."""
    return (x > threshold).astype(x.dtype)


def _step_fwd(x, threshold, bandwidth):
    return step(x, threshold, bandwidth), (x, threshold)


def _step_bwd(bandwidth, res, g):
    x, threshold = res
    dth = -(1.0 / bandwidth) * _rect((x - threshold) / bandwidth) * g
    return jnp.zeros_like(x), _sum_to(dth, threshold.shape)


step.defvjp(_step_fwd, _step_bwd)


def topk_dense(pre: jax.Array, k: int) -> jax.Array:
    """ReLU of the k largest entries of each row of ``pre`` (..., L), zeros elsewhere (exactly k kept)."""
    vals, idx = jax.lax.top_k(pre, k)
    flat_pre, flat_idx = pre.reshape(-1, pre.shape[-1]), idx.reshape(-1, k)
    z = jnp.zeros_like(flat_pre).at[jnp.arange(flat_pre.shape[0])[:, None], flat_idx].set(
        jax.nn.relu(vals.reshape(-1, k)))
    return z.reshape(pre.shape)


_SIGN = 0x80000000


def _to_ordered(x: jax.Array) -> jax.Array:
    """float32 -> uint32 with the same order (negatives: all bits flipped; positives: sign bit set)."""
    i = jax.lax.bitcast_convert_type(x.astype(jnp.float32), jnp.uint32)
    return jnp.where(i >= jnp.uint32(_SIGN), ~i, i | jnp.uint32(_SIGN))


def _from_ordered(u: jax.Array) -> jax.Array:
    i = jnp.where(u >= jnp.uint32(_SIGN), u ^ jnp.uint32(_SIGN), ~u)
    return jax.lax.bitcast_convert_type(i, jnp.float32)


def kth_largest(x: jax.Array, n) -> jax.Array:
    """The n-th largest entry of ``x`` (any shape; 1 <= n <= x.size), exactly.

    Bisection over the float32 bit order: 32 passes of compare-and-count over ``x``. On CPU this
    is much cheaper than sorting, or ``top_k``, of a flattened batch (BatchTopK needs the
    k*B-th largest of B x n_latents pre-activations).
    """
    u = _to_ordered(x).reshape(-1)
    n = jnp.asarray(n, jnp.int32)

    def body(_, lohi):  # invariant: count(u >= lo) >= n
        lo, hi = lohi
        mid = lo + (hi - lo) // 2
        ok = (u >= mid).sum(dtype=jnp.int32) >= n
        return jnp.where(ok, mid, lo), jnp.where(ok, hi, mid)

    lo, hi = jax.lax.fori_loop(0, 32, body, (u.min(), u.max()))
    best = jnp.where((u >= hi).sum(dtype=jnp.int32) >= n, hi, lo)
    return _from_ordered(best)


# ---------------------------------------------------------------------------------------------
# THE MODULE
# ---------------------------------------------------------------------------------------------


def unit_rows(key, shape, dtype=jnp.float32):
    """Gaussian rows scaled to unit norm (the decoder's initialisation and constraint)."""
    w = jax.random.normal(key, shape, dtype)
    return w / jnp.linalg.norm(w, axis=-1, keepdims=True)


def normalise_rows(w: jax.Array) -> jax.Array:
    return w / jnp.maximum(jnp.linalg.norm(w, axis=-1, keepdims=True), 1e-12)


class SparseDictionary(nn.Module):
    """An SAE or transcoder (``cfg.transcoder``) of architecture ``cfg.arch``; see the module docstring.

    ``__call__(x)``: the reconstruction / prediction in the model's units, shape (..., d_out).
    ``encode(x, train=False)``: latents z (..., n_latents) >= 0; ``decode(z)``: (..., d_out).
    With ``train=True`` BatchTopK selects over all leading axes of ``x`` (the batch).
    """

    cfg: SAEConfig

    def setup(self):
        c = self.cfg
        self.W_dec = self.param("W_dec", unit_rows, (c.n_latents, c.d_out))
        if c.transcoder:  # input and output spaces differ: an independent encoder
            self.W_enc = self.param("W_enc", lambda key, shape: unit_rows(key, shape[::-1]).T, (c.d_in, c.n_latents))
        else:  # Gao et al.: the encoder starts as the decoder's transpose
            self.W_enc = self.param("W_enc", lambda key, shape: self.W_dec.T, (c.d_in, c.n_latents))
        self.b_enc = self.param("b_enc", nn.initializers.zeros, (c.n_latents,))
        self.b_dec = self.param("b_dec", nn.initializers.zeros, (c.d_out,))
        if c.arch == "jumprelu":
            self.log_threshold = self.param("log_threshold", nn.initializers.constant(math.log(c.init_threshold)),
                                            (c.n_latents,))
        self.mu_in = self.variable("norm", "mu_in", jnp.zeros, (c.d_in,))
        self.scale_in = self.variable("norm", "scale_in", jnp.ones, ())
        self.mu_out = self.variable("norm", "mu_out", jnp.zeros, (c.d_out,))
        self.scale_out = self.variable("norm", "scale_out", jnp.ones, ())
        self.threshold = self.variable("norm", "threshold", jnp.zeros, ())  # BatchTopK inference threshold

    def normalise_in(self, x):
        return (x - self.mu_in.value) * self.scale_in.value

    def normalise_out(self, y):
        return (y - self.mu_out.value) * self.scale_out.value

    def pre_acts(self, x):
        """Encoder pre-activations (..., n_latents) of raw inputs ``x`` (..., d_in)."""
        return self.normalise_in(x) @ self.W_enc + self.b_enc

    def theta(self):
        """JumpReLU thresholds (n_latents,), normalised units."""
        return jnp.exp(self.log_threshold)

    def activate(self, pre, train: bool = False):
        """Latents from pre-activations (see the module docstring)."""
        c = self.cfg
        if c.arch == "topk":
            return topk_dense(pre, c.k)
        if c.arch == "batchtopk":
            if train:
                t = kth_largest(pre, c.k * math.prod(pre.shape[:-1]))
                return jnp.where((pre >= t) & (pre > 0), pre, 0.0)
            return jnp.where(pre > self.threshold.value, jax.nn.relu(pre), 0.0)
        return jumprelu(pre, self.theta(), c.bandwidth)

    def encode(self, x, train: bool = False):
        return self.activate(self.pre_acts(x), train)

    def decode_n(self, z):
        """Decoder output in normalised units."""
        return z @ self.W_dec + self.b_dec

    def decode(self, z):
        return self.decode_n(z) / self.scale_out.value + self.mu_out.value

    def __call__(self, x):
        return self.decode(self.encode(x))


def init_sae(key: jax.Array, cfg: SAEConfig, stats: dict | None = None) -> dict:
    """Initial variables ``{"params", "norm"}``; ``stats`` (from ``norm_stats``) sets the "norm" collection."""
    variables = SparseDictionary(cfg).init(key, jnp.zeros((1, cfg.d_in)))
    variables = jax.tree.map(lambda x: x, dict(variables))
    if stats is not None:
        variables["norm"] = {**variables["norm"], **{k: jnp.asarray(v, jnp.float32) for k, v in stats.items()}}
    return {"params": dict(variables["params"]), "norm": dict(variables["norm"])}


def norm_stats(x: jax.Array, y: jax.Array | None = None) -> dict:
    """Mean and scale (E||(x - mu) * scale||^2 = d) of activations (N, d); ``y`` for a transcoder's output."""

    def one(a):
        a = jnp.asarray(a, jnp.float32)
        mu = a.mean(0)
        ms = ((a - mu) ** 2).sum(-1).mean()
        return mu, jnp.sqrt(a.shape[-1] / jnp.maximum(ms, 1e-12))

    mu_in, s_in = one(x)
    mu_out, s_out = (mu_in, s_in) if y is None else one(y)
    return {"mu_in": mu_in, "scale_in": s_in, "mu_out": mu_out, "scale_out": s_out}


def apply(variables: dict, cfg: SAEConfig, x: jax.Array, method: str = "__call__", **kw):
    """``SparseDictionary(cfg).apply(variables, x, method=...)`` by method name."""
    return SparseDictionary(cfg).apply(variables, x, method=getattr(SparseDictionary, method), **kw)
