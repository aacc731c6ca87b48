"""Linear (softmax) probes: fit, predict, score; one probe or many (feature sets x concepts) at once.

A probe reads a concept (an integer class per sample, ``-1`` where the concept is undefined) from
features ``x`` (N, D) with ``softmax(((x - mu) / sigma) @ W + b)``: features are standardised with
the training set's mean and standard deviation, the weights start from the closed-form ridge
solution on the one-hot targets (one linear solve per feature set, shared by all its concepts) and
are refined by ``steps`` full-batch Adam steps on the L2-regularised cross-entropy. Concepts of
fewer classes than the widest are padded: the padding classes' logits are masked to -inf.

``fit_many(xs (H, N, D), ys (P, N), n_classes (P,))`` fits every (feature set, concept) pair in
one jitted program, vmapped over concepts (the features shared, so the logits of all concepts of
one feature set are one matrix product) and over feature sets. Feature sets of different widths
are zero-padded to one width (a zero column standardises to zero and gets no weight).

Held-out metrics (``evaluate``; host-side numpy, exact): accuracy, macro-F1 over the classes
present in the true labels, and AUROC (binary: of the positive class's probability; more classes:
the mean one-vs-rest AUROC over classes with both positives and negatives), computed from
mid-ranks (the Mann-Whitney statistic, ties counting half). ``dtjax.sae.probes`` scores single
SAE latents with the same ``auroc``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

L2 = 1e-3  # weight decay on standardised features: keeps separable concepts' weights finite
STEPS = 100  # full-batch Adam steps after the ridge start
LR = 0.05
RIDGE = 1.0  # ridge penalty of the closed-form start (in units of samples: standardised features)
MIN_COUNT = 20  # a concept is scored only with this many valid held-out samples (and two classes)


@struct.dataclass
class Probe:
    """A fitted linear probe (or a stack of them: leading axes on every field).

    ``w`` (..., D, C) and ``b`` (..., C) act on standardised features ``(x - mu) / sigma`` with
    ``mu``, ``sigma`` (..., D); ``class_mask`` (..., C) bool marks the concept's real classes.
    """

    w: jax.Array
    b: jax.Array
    mu: jax.Array
    sigma: jax.Array
    class_mask: jax.Array

    def logits(self, x: jax.Array) -> jax.Array:
        """(N, C) logits of one probe on features x (N, D); padding classes at -inf."""
        z = ((x - self.mu) / self.sigma) @ self.w + self.b
        return jnp.where(self.class_mask, z, -jnp.inf)

    def raw_direction(self, c: int = 1, against: int = 0) -> jax.Array:
        """(D,) the direction in the features' own units along which logit ``c`` - logit
        ``against`` grows (for a binary probe, the "positive" direction)."""
        return (self.w[..., :, c] - self.w[..., :, against]) / self.sigma


def _standardise(x, valid):
    n = jnp.maximum(valid.sum(), 1)
    mu = (x * valid[:, None]).sum(0) / n
    var = (((x - mu) ** 2) * valid[:, None]).sum(0) / n
    sigma = jnp.where(var > 1e-12, jnp.sqrt(var), 1.0)
    return mu, sigma


def _fit_core(x, ys, class_mask, l2, steps):
    """Probes of every concept ``ys`` (P, N) on one feature set ``x`` (N, D): a Probe with a (P,) axis."""
    C = class_mask.shape[-1]
    valid_any = (ys >= 0).any(0)
    mu, sigma = _standardise(x, valid_any)
    xs = (x - mu) / sigma  # (N, D)

    # ridge start: one solve per feature set, every concept's centred one-hot targets at once
    onehot = jax.nn.one_hot(ys, C) * (ys >= 0)[..., None]  # (P, N, C); undefined rows are zero
    wts = (ys >= 0).astype(x.dtype)  # (P, N)
    n_p = jnp.maximum(wts.sum(1), 1.0)  # (P,)
    prior = onehot.sum(1) / n_p[:, None]  # (P, C)
    G = xs.T @ xs + RIDGE * jnp.eye(xs.shape[1], dtype=x.dtype)
    rhs = jnp.einsum("nd,pnc->dpc", xs, onehot - prior[:, None, :] * wts[..., None])
    w0 = jnp.linalg.solve(G, rhs.reshape(xs.shape[1], -1)).reshape(xs.shape[1], *prior.shape)
    w0 = jnp.moveaxis(w0, 1, 0)  # (P, D, C)
    b0 = jnp.log(jnp.clip(prior, 1e-3, 1.0))

    def loss(wb, y, wt, cm, n):
        w, b = wb
        z = jnp.where(cm, xs @ w + b, -1e9)
        ce = -(jax.nn.log_softmax(z) * jax.nn.one_hot(y, C)).sum(-1)
        return (ce * wt).sum() / n + l2 * (w ** 2).sum()

    grad = jax.vmap(jax.grad(loss), in_axes=(0, 0, 0, 0, 0))

    def adam(carry, i):
        wb, m, v = carry
        g = grad(wb, ys, wts, class_mask[:, None, :], n_p)
        m = jax.tree.map(lambda m_, g_: 0.9 * m_ + 0.1 * g_, m, g)
        v = jax.tree.map(lambda v_, g_: 0.999 * v_ + 0.001 * g_ ** 2, v, g)
        t = i + 1.0
        step = lambda p, m_, v_: p - LR * (m_ / (1 - 0.9 ** t)) / (jnp.sqrt(v_ / (1 - 0.999 ** t)) + 1e-8)  # noqa: E731
        return (jax.tree.map(step, wb, m, v), m, v), None

    zeros = jax.tree.map(jnp.zeros_like, (w0, b0))
    ((w, b), _, _), _ = jax.lax.scan(adam, ((w0, b0), zeros, zeros), jnp.arange(steps, dtype=x.dtype))
    P = ys.shape[0]
    return Probe(w=w, b=b, mu=jnp.broadcast_to(mu, (P,) + mu.shape), sigma=jnp.broadcast_to(sigma, (P,) + sigma.shape),
                 class_mask=class_mask)


@functools.partial(jax.jit, static_argnames=("n_classes_max", "steps"))
def _fit_many(xs, ys, n_classes, n_classes_max, l2, steps):
    class_mask = jnp.arange(n_classes_max)[None, :] < n_classes[:, None]  # (P, C)
    return jax.vmap(lambda x: _fit_core(x.astype(jnp.float32), ys, class_mask, l2, steps))(xs)


def fit_many(xs, ys, n_classes, *, l2: float = L2, steps: int = STEPS) -> Probe:
    """Probes of every concept on every feature set, in one jitted, vmapped program.

    Args:
      xs: (H, N, D) features (H feature sets of the same N samples; zero-pad narrower ones).
      ys: (P, N) int class labels, ``-1`` where a concept is undefined (ignored).
      n_classes: (P,) the number of classes of each concept (labels lie in [0, n_classes)).

    Returns:
      a ``Probe`` whose fields have leading axes (H, P).
    """
    xs, ys = jnp.asarray(xs), jnp.asarray(ys, jnp.int32)
    n_classes = np.asarray(n_classes, np.int32).reshape(-1)
    if xs.ndim != 3 or ys.ndim != 2 or ys.shape[1] != xs.shape[1] or len(n_classes) != ys.shape[0]:
        raise ValueError(f"fit_many needs xs (H, N, D), ys (P, N) and n_classes (P,), got {xs.shape}, {ys.shape}, "
                         f"{n_classes.shape}")
    if np.any(n_classes < 2):
        raise ValueError(f"every concept needs at least 2 classes, got {n_classes.tolist()}")
    if int(np.asarray(ys).max(initial=-1)) >= int(n_classes.max()):
        raise ValueError("a label is >= its concept's number of classes")
    return _fit_many(xs, ys, jnp.asarray(n_classes), int(n_classes.max()), jnp.float32(l2), int(steps))


def fit(x, y, n_classes: int | None = None, *, l2: float = L2, steps: int = STEPS) -> Probe:
    """One probe: features ``x`` (N, D), labels ``y`` (N,) int (``-1``: ignored); ``n_classes``
    defaults to max(y) + 1. Returns an unbatched ``Probe`` (``w`` (D, C))."""
    y = np.asarray(y, np.int32).reshape(-1)
    n = int(n_classes if n_classes is not None else max(int(y.max(initial=-1)) + 1, 2))
    probe = fit_many(jnp.asarray(x)[None], y[None], [n], l2=l2, steps=steps)
    return jax.tree.map(lambda a: a[0, 0], probe)


@jax.jit
def _proba(probe: Probe, x):
    return jax.nn.softmax(probe.logits(x.astype(jnp.float32)), -1)


def predict_proba(probe: Probe, x) -> jax.Array:
    """(N, C) class probabilities of one probe on features x (N, D) (padding classes get 0)."""
    return _proba(probe, jnp.asarray(x))


@jax.jit
def _proba_many(probe: Probe, xs):
    return jax.vmap(lambda p_h, x: jax.vmap(lambda p: jax.nn.softmax(p.logits(x.astype(jnp.float32)), -1))(p_h))(probe, xs)


def predict_proba_many(probe: Probe, xs) -> jax.Array:
    """(H, P, N, C) probabilities of ``fit_many``'s probes on held-out features xs (H, N, D)."""
    return _proba_many(probe, jnp.asarray(xs))


# ---------------------------------------------------------------------------------------------
# METRICS (numpy, exact)
# ---------------------------------------------------------------------------------------------


def midranks(v: np.ndarray) -> np.ndarray:
    """1-based ranks of v (M,), ties sharing their mean rank; fast when most entries are 0 and none < 0."""
    v = np.asarray(v)
    if v.size and v.min() >= 0:
        nz = np.flatnonzero(v > 0)
        n0 = v.size - nz.size
        r = np.full(v.size, (n0 + 1) / 2.0)
        if nz.size:
            r[nz] = n0 + _midranks_dense(v[nz])
        return r
    return _midranks_dense(v)


def _midranks_dense(v):
    order = np.argsort(v, kind="stable")
    sv = v[order]
    first = np.r_[True, sv[1:] != sv[:-1]]
    starts = np.flatnonzero(first)
    ends = np.r_[starts[1:], v.size]
    group = np.cumsum(first) - 1
    r = np.empty(v.size)
    r[order] = ((starts + ends - 1) / 2.0 + 1.0)[group]
    return r


def auroc(scores: np.ndarray, labels: np.ndarray, block: int = 128) -> np.ndarray:
    """AUROC (n_scores, P) of each score column (M, n_scores) for each binary label column (M, P).

    NaN where a label has no positives or no negatives.
    """
    scores, labels = np.asarray(scores, np.float32), np.asarray(labels, bool)
    m = scores.shape[0]
    n_pos = labels.sum(0).astype(np.float64)
    n_neg = m - n_pos
    Y = labels.astype(np.float64)
    out = np.empty((scores.shape[1], labels.shape[1]))
    centre = (m + 1) / 2.0  # ranks centred for a better-conditioned product
    for i in range(0, scores.shape[1], block):
        R = np.stack([midranks(scores[:, j]) for j in range(i, min(i + block, scores.shape[1]))], 1) - centre
        pos_rank_sum = Y.T @ R + n_pos[:, None] * centre  # (P, b)
        out[i: i + R.shape[1]] = ((pos_rank_sum - n_pos[:, None] * (n_pos[:, None] + 1) / 2)
                                  / np.maximum(n_pos[:, None] * n_neg[:, None], 1)).T
    with np.errstate(invalid="ignore"):
        out[:, (n_pos == 0) | (n_neg == 0)] = np.nan
    return out.astype(np.float32)


def metrics(proba, y, min_count: int = MIN_COUNT) -> dict[str, float]:
    """Held-out ``accuracy``, ``f1`` (macro over the classes present in ``y``) and ``auroc`` of
    class probabilities ``proba`` (N, C) against labels ``y`` (N,) (``-1``: ignored); ``n`` the
    samples scored. NaN metrics when fewer than ``min_count`` samples or one class only."""
    proba, y = np.asarray(proba, np.float64), np.asarray(y).reshape(-1)
    keep = y >= 0
    proba, y = proba[keep], y[keep]
    present = np.unique(y)
    nan = {"accuracy": float("nan"), "f1": float("nan"), "auroc": float("nan"), "n": int(len(y))}
    if len(y) < min_count or len(present) < 2:
        return nan
    pred = proba.argmax(-1)
    f1s = []
    for c in present:
        tp = np.sum((pred == c) & (y == c))
        fp = np.sum((pred == c) & (y != c))
        fn = np.sum((pred != c) & (y == c))
        f1s.append(2 * tp / max(2 * tp + fp + fn, 1))
    if proba.shape[1] == 2:
        auc = float(auroc(proba[:, 1:2], (y == 1)[:, None])[0, 0])
    else:
        aucs = auroc(proba[:, present], np.stack([y == c for c in present], 1))  # (n_present, n_present)
        auc = float(np.nanmean(np.diag(aucs)))
    return {"accuracy": float(np.mean(pred == y)), "f1": float(np.mean(f1s)), "auroc": auc, "n": int(len(y))}


def evaluate(probe: Probe, x, y, min_count: int = MIN_COUNT) -> dict[str, float]:
    """``metrics`` of one probe on held-out features x (N, D) and labels y (N,)."""
    return metrics(predict_proba(probe, x), y, min_count)
