"""Training a sparse dictionary: one jitted ``lax.scan`` chunk of optimizer steps over a buffer of
activations harvested on device (``dtjax.sae.activations.harvest``), a progress bar between chunks.

Losses, in normalised units (``dtjax.sae.model``: E||y_n||^2 = d_out, so the MSE below is about
the fraction of variance unexplained):

- ``mse`` = mean_b ||y_n - y_hat_n||^2 / d_out.
- TopK / BatchTopK: + ``aux_coef`` * AuxK (Gao et al. 2024): the residual error e = y_n - y_hat_n
  (no gradient through it) is reconstructed from the ``aux_k`` largest pre-activations of the
  *dead* latents only (those that have not fired for ``dead_tokens`` training tokens), which gives
  dead latents a gradient towards what the live ones miss. aux_coef = 1/32 as in the paper; at
  most 4 aux_k dead latents (the longest dead) take part in one step (see ``aux_loss``).
- JumpReLU: + ``l0_coef`` * mean L0, through the straight-through ``step`` (its threshold gets a
  kernel-density pseudo-gradient; the paper's recipe, arXiv 2407.14435).

Every step keeps the decoder rows unit-norm: the gradient component parallel to each row is
removed before Adam, and the rows are renormalised after the update (Gao et al.). TopK trains
through a sparse forward (the top-k indices are chosen without gradient, then only those k
encoder columns and decoder rows are gathered), so a step costs one dense encoder matmul instead
of three dense matmuls each way. Step ``s`` draws its batch with ``fold_in(key, s)``: a run is a
pure function of its seed.
"""

from __future__ import annotations

import dataclasses
import functools
import time

import jax
import jax.numpy as jnp
import optax

from dtjax.config import ConfigBase, ConfigError
from dtjax.sae.model import SAEConfig, apply, init_sae, jumprelu, kth_largest, norm_stats, normalise_rows, step


@dataclasses.dataclass(frozen=True)
class SAETrainConfig(ConfigBase):
    """How a dictionary is trained (defaults: 1024 latents on a d_model-128 DT in ~1-2 min of CPU)."""

    seed: int = 0  # one seed for harvesting, initialisation and batches
    n_tokens: int = 262_144  # training activations harvested (one per window with K = 1; 128 MiB at d 128)
    batch_size: int = 2048  # tokens per step
    num_steps: int = 1000  # optimizer steps (2M tokens: ~8 passes over the buffer)
    lr: float = 1e-3  # Adam peak learning rate (Gao et al.: 2e-4 / sqrt(n_latents / 2^14) = 8e-4 at 1024)
    warmup_frac: float = 0.05  # linear warm-up over this fraction of the steps
    decay_frac: float = 0.2  # linear decay to 0 over the last fraction of the steps
    log_every: int = 250  # steps per jitted chunk (and per progress update)
    aux_coef: float = 1 / 32  # AuxK coefficient (Gao et al.)
    aux_k: int = 0  # latents in the AuxK reconstruction; 0 = d_out // 2
    dead_tokens: int = 262_144  # a latent that has not fired for this many training tokens is dead (AuxK)
    l0_coef: float = 2e-3  # JumpReLU sparsity coefficient on the mean L0 (normalised MSE is ~FVU)
    threshold_momentum: float = 0.99  # BatchTopK: EMA of the batch's smallest kept activation

    def validate(self) -> None:
        for n in ("n_tokens", "batch_size", "num_steps", "log_every", "dead_tokens"):
            v = getattr(self, n)
            if not (isinstance(v, int) and not isinstance(v, bool) and v >= 1):
                raise ConfigError(f"{n} must be an integer >= 1, got {v!r}")
        if self.num_steps % self.log_every:
            raise ConfigError(f"num_steps ({self.num_steps}) must be a multiple of log_every ({self.log_every})")
        if not (self.lr > 0 and 0 <= self.warmup_frac < 1 and 0 <= self.decay_frac <= 1 and self.warmup_frac + self.decay_frac <= 1):
            raise ConfigError("lr must be > 0 and warmup_frac, decay_frac in [0, 1] with warmup_frac + decay_frac <= 1")
        if self.aux_coef < 0 or self.aux_k < 0 or self.l0_coef < 0 or not 0 <= self.threshold_momentum < 1:
            raise ConfigError("aux_coef, aux_k, l0_coef must be >= 0 and threshold_momentum in [0, 1)")


def make_optimizer(tcfg: SAETrainConfig) -> optax.GradientTransformation:
    n = tcfg.num_steps
    warm, decay = int(tcfg.warmup_frac * n), int(tcfg.decay_frac * n)
    sched = optax.join_schedules(
        [optax.linear_schedule(0.0, tcfg.lr, max(warm, 1)), optax.constant_schedule(tcfg.lr),
         optax.linear_schedule(tcfg.lr, 0.0, max(decay, 1))],
        [warm, n - decay])
    return optax.adam(sched)


# ---------------------------------------------------------------------------------------------
# THE TRAINING FORWARD AND LOSS
# ---------------------------------------------------------------------------------------------


def _gather_acts(p, x_n, idx):
    """Pre-activations of latents ``idx`` (B, k) only: x_n (B, d) . W_enc[:, idx] + b_enc[idx]."""
    return jnp.einsum("bd,bkd->bk", x_n, p["W_enc"].T[idx]) + p["b_enc"][idx]


def _gather_decode(p, z, idx):
    return jnp.einsum("bk,bkd->bd", z, p["W_dec"][idx])


def forward_train(p: dict, norm: dict, cfg: SAEConfig, x: jax.Array) -> dict:
    """The training forward of a batch x (B, d_in) in normalised units.

    Returns ``recon_n`` (B, d_out) (with b_dec), ``x_n``, ``fired`` (L,) bool, ``l0`` (), and for JumpReLU ``l0_ste`` (the differentiable L0),
    for BatchTopK ``kept_min`` (the batch threshold).
    """
    x_n = (x - norm["mu_in"]) * norm["scale_in"]
    out = {"x_n": x_n}
    if cfg.arch == "topk":
        _, idx = jax.lax.top_k(jax.lax.stop_gradient(x_n @ p["W_enc"] + p["b_enc"]), cfg.k)
        z = jax.nn.relu(_gather_acts(p, x_n, idx))
        out["recon_n"] = _gather_decode(p, z, idx) + p["b_dec"]
        out["fired"] = jnp.zeros(cfg.n_latents, bool).at[idx.reshape(-1)].max((z > 0).reshape(-1))
        out["l0"] = (z > 0).sum(-1).mean()
    else:
        pre_g = x_n @ p["W_enc"] + p["b_enc"]
        pre = jax.lax.stop_gradient(pre_g)
        if cfg.arch == "batchtopk":
            t = kth_largest(pre, cfg.k * x.shape[0])
            z = jnp.where((pre >= t) & (pre > 0), pre_g, 0.0)
            out["kept_min"] = jnp.maximum(t, 0.0)
        else:
            theta = jnp.exp(p["log_threshold"])
            z = jumprelu(pre_g, theta, cfg.bandwidth)
            out["l0_ste"] = step(pre_g, theta, cfg.bandwidth).sum(-1).mean()
        out["recon_n"] = z @ p["W_dec"] + p["b_dec"]
        out["fired"] = (z > 0).any(0)
        out["l0"] = (z > 0).sum(-1).mean()
    return out


def aux_loss(p: dict, x_n, err, since, dead_tokens: int, k_aux: int) -> jax.Array:
    """AuxK: ||err - e_hat||^2 / d, e_hat decoded from each token's ``k_aux`` largest dead pre-activations.

    Dead = not fired for ``dead_tokens`` tokens (``since`` (L,) counts them). The dead latents'
    encoder columns are gathered once for the whole batch: at most ``4 k_aux`` of them, the
    longest dead, so when more than 4 k_aux latents are dead the others wait their turn (exact
    whenever at most 4 k_aux are dead). With at most ``k_aux`` dead every dead latent is in each
    token's top k_aux, and the per-token selection is skipped. No b_dec: e_hat models the error only.
    """
    L = p["b_enc"].shape[0]
    n_cand = min(4 * k_aux, L)
    dead = since >= dead_tokens
    _, cand = jax.lax.top_k(jnp.where(dead, since, -1), n_cand)  # (n_cand,) longest-dead first
    ok = dead[cand]
    pre = x_n @ p["W_enc"][:, cand] + p["b_enc"][cand]  # (B, n_cand)
    pre = jnp.where(ok, pre, -jnp.inf)

    def all_dead(pre):
        return jnp.ones(pre.shape, bool)

    def top_dead(pre):
        kth = jax.lax.top_k(jax.lax.stop_gradient(pre), k_aux)[0][:, -1:]
        return pre >= kth

    keep = all_dead(pre) if n_cand <= k_aux else jax.lax.cond(dead.sum() <= k_aux, all_dead, top_dead, pre)
    z = jnp.where(keep & ok, jax.nn.relu(pre), 0.0)
    e_hat = z @ p["W_dec"][cand]
    return ((err - e_hat) ** 2).sum(-1).mean() / err.shape[-1]


def loss_fn(p, norm, cfg: SAEConfig, tcfg: SAETrainConfig, x, y, since):
    """(loss, aux) of one batch; ``since`` (L,) counts the tokens since each latent last fired."""
    f = forward_train(p, norm, cfg, x)
    y_n = f["x_n"] if not cfg.transcoder else (y - norm["mu_out"]) * norm["scale_out"]
    d = y_n.shape[-1]
    mse = ((y_n - f["recon_n"]) ** 2).sum(-1).mean() / d
    metrics = {"mse": mse, "l0": f["l0"]}
    loss = mse
    if cfg.arch in ("topk", "batchtopk") and tcfg.aux_coef > 0:
        err = jax.lax.stop_gradient(y_n - f["recon_n"])
        k_aux = min(tcfg.aux_k or max(d // 2, 1), cfg.n_latents)
        dead_any = (since >= tcfg.dead_tokens).any()
        aux = jax.lax.cond(dead_any, lambda: aux_loss(p, f["x_n"], err, since, tcfg.dead_tokens, k_aux),
                           lambda: (err**2).sum(-1).mean() / d)
        loss = loss + tcfg.aux_coef * aux
        metrics["aux"] = aux
    if cfg.arch == "jumprelu":
        loss = loss + tcfg.l0_coef * f["l0_ste"]
    metrics["loss"] = loss
    return loss, (metrics, f["fired"], f.get("kept_min", jnp.float32(0)))


def _project_out_parallel(g, w):
    """Remove from the gradient of each unit-norm decoder row its component along the row."""
    return g - (g * w).sum(-1, keepdims=True) * w


def make_train_chunk(cfg: SAEConfig, tcfg: SAETrainConfig, tx):
    """``chunk(state, X, Y, key, start) -> (state, metrics)``: ``tcfg.log_every`` steps in a ``lax.scan``.

    ``state`` = {params, opt_state, norm, since_fired (L,) int32}; X (M, d_in) and Y (M, d_out)
    (an SAE passes X twice) are the activation buffer, closed over by the scan body, not carried.
    """
    B = tcfg.batch_size

    def one_step(state, s, X, Y, key):
        idx = jax.random.randint(jax.random.fold_in(key, s), (B,), 0, X.shape[0])
        dead = state["since_fired"] >= tcfg.dead_tokens
        (_, (metrics, fired, kept_min)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state["params"], state["norm"], cfg, tcfg, X[idx], Y[idx], state["since_fired"])
        grads = {**grads, "W_dec": _project_out_parallel(grads["W_dec"], state["params"]["W_dec"])}
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        params = {**params, "W_dec": normalise_rows(params["W_dec"])}
        norm = state["norm"]
        if cfg.arch == "batchtopk":
            m = tcfg.threshold_momentum
            th = jnp.where(s == 0, kept_min, m * norm["threshold"] + (1 - m) * kept_min)
            norm = {**norm, "threshold": th}
        since = jnp.where(fired, 0, jnp.minimum(state["since_fired"] + B, 2**30))
        metrics = {**metrics, "dead_frac": dead.mean()}
        return {"params": params, "opt_state": opt_state, "norm": norm, "since_fired": since}, metrics

    @jax.jit
    def chunk(state, X, Y, key, start):
        steps = start + jnp.arange(tcfg.log_every, dtype=jnp.int32)
        body = functools.partial(one_step, X=X, Y=Y, key=key)
        state, metrics = jax.lax.scan(lambda c, s: body(c, s), state, steps)
        last = {k: v[-1] for k, v in metrics.items()}
        return state, {**jax.tree.map(jnp.mean, metrics), "dead_frac": last["dead_frac"]}

    return chunk


def init_thresholds(variables: dict, cfg: SAEConfig, x: jax.Array) -> dict:
    """JumpReLU thresholds set so that each latent fires on a fraction k / n_latents of the tokens ``x``
    (an initial L0 of ``cfg.k``), at least ``cfg.init_threshold``.

    The thresholds' straight-through gradient only sees pre-activations within ``bandwidth / 2`` of
    them, so thresholds started far from the pre-activations barely move in a short run.
    """
    pre = apply(variables, cfg, x, "pre_acts")
    q = jnp.quantile(pre, 1.0 - cfg.k / cfg.n_latents, axis=0)
    theta = jnp.maximum(q, cfg.init_threshold)
    return {**variables, "params": {**variables["params"], "log_threshold": jnp.log(theta)}}


# Purpose tags for fold_in: each consumer of randomness has its own stream.
KEY_HARVEST, KEY_INIT, KEY_BATCH, KEY_EVAL, KEY_ROLLOUT = range(5)


def train_dictionary(cfg: SAEConfig, tcfg: SAETrainConfig, X: jax.Array, Y: jax.Array | None = None, *,
                     progress: bool = True, log=None) -> tuple[dict, list[dict], dict]:
    """Train on the buffer X (M, d_in) (Y (M, d_out) for a transcoder). Returns (variables, history, seconds).

    ``variables`` = {"params", "norm"} (``dtjax.sae.model``); ``history`` one row per chunk;
    ``seconds`` = {"compile": compiling the chunk, "train": running every step (wall), "train_cpu": the
    same in CPU seconds of this process (all threads: a load-independent measure on a shared machine),
    "steps_per_s"}.
    """
    from tqdm.auto import tqdm

    if cfg.transcoder and Y is None:
        raise ValueError("a transcoder trains on (input, output) pairs: pass Y")
    root = jax.random.PRNGKey(tcfg.seed)
    variables = init_sae(jax.random.fold_in(root, KEY_INIT), cfg, norm_stats(X, Y if cfg.transcoder else None))
    if cfg.arch == "jumprelu":
        variables = init_thresholds(variables, cfg, X[: 8192])
    tx = make_optimizer(tcfg)
    state = {"params": variables["params"], "opt_state": tx.init(variables["params"]), "norm": variables["norm"],
             "since_fired": jnp.zeros(cfg.n_latents, jnp.int32)}
    chunk = make_train_chunk(cfg, tcfg, tx)
    Y = X if Y is None else Y
    key = jax.random.fold_in(root, KEY_BATCH)
    t = time.perf_counter()
    compiled = chunk.lower(state, X, Y, key, jnp.int32(0)).compile()  # compile apart from the timing of steps
    t_compile = time.perf_counter() - t
    bar = tqdm(total=tcfg.num_steps, disable=not progress, desc="sae", dynamic_ncols=True)
    history, t0, cpu0 = [], time.perf_counter(), time.process_time()
    for start in range(0, tcfg.num_steps, tcfg.log_every):
        state, m = compiled(state, X, Y, key, jnp.int32(start))
        m = {k: float(v) for k, v in m.items()}
        row = {"step": start + tcfg.log_every, **m}
        history.append(row)
        bar.set_postfix({"fvu": f"{m['mse']:.3f}", "L0": f"{m['l0']:.1f}", "dead": f"{m['dead_frac']:.2f}"})
        bar.update(tcfg.log_every)
        if log is not None and not progress:
            log(" ".join(f"{k} {v:.4g}" for k, v in row.items()))
    bar.close()
    t_train, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    seconds = {"compile": t_compile, "train": t_train, "train_cpu": cpu, "steps_per_s": tcfg.num_steps / max(t_train, 1e-9)}
    return {"params": state["params"], "norm": state["norm"]}, history, seconds
