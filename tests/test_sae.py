"""dtjax.sae: the dictionary's mechanics (unit-norm decoder, exact TopK / BatchTopK, JumpReLU's
threshold gradient, AuxK reviving a planted dead latent), splicing through the hooks (an identity
dictionary and an MLP-equal transcoder reproduce the model), probes against a reference AUROC,
save/load, and the command line end to end on a tiny run."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from tolerance import assert_close, assert_normalised_close

from dtjax import hooks
from dtjax.checkpoint import manager, save as save_ckpt, write_json_atomic
from dtjax.config import ModelConfig
from dtjax.data import store as data_store
from dtjax.model import run_with_cache, run_with_hooks
from dtjax.sae import metrics, probes
from dtjax.sae.features import active_latents
from dtjax.sae import store as sae_store
from dtjax.sae.__main__ import main
from dtjax.sae.model import SAEConfig, SAEError, apply, init_sae, jumprelu, kth_largest, step, topk_dense
from dtjax.sae.splice import splice
from dtjax.sae.train import (SAETrainConfig, forward_train, init_thresholds, loss_fn, make_optimizer, make_train_chunk,
                             train_dictionary)

from fixtures import random_dataset, random_params

ROOT = Path(__file__).resolve().parents[1]
PT = ROOT / "checkpoints" / "original" / "demo_model_overnight_training.pt"
TINY = ModelConfig(d_model=16, n_heads=2, d_head=8, d_mlp=32, n_timesteps=2, max_timestep=20)
TINY_LN = TINY.replace(layer_norm=True)
TINY_K1 = TINY.replace(n_timesteps=1)


def _params(cfg, seed=0):
    return random_params(cfg, seed, std=0.5)


def _inputs(cfg, b=6, seed=0):
    rng = np.random.default_rng(seed)
    k = cfg.n_timesteps
    return (jnp.asarray(rng.integers(0, 9, (b, k, 7, 7, 3)).astype(np.uint8)),
            jnp.asarray(rng.uniform(-1, 1, (b, k)).astype(np.float32)),
            jnp.asarray(rng.integers(0, cfg.max_timestep, (b, k)).astype(np.int32)),
            jnp.asarray(rng.integers(0, 3, (b, k)).astype(np.int32)) if k > 1 else None)


def _variables(cfg, W_enc, b_enc, W_dec, b_dec, mu=None, scale=1.0):
    v = init_sae(jax.random.PRNGKey(0), cfg)
    d_in, d_out = cfg.d_in, cfg.d_out
    v["params"] = {**v["params"], "W_enc": jnp.asarray(W_enc, jnp.float32), "b_enc": jnp.asarray(b_enc, jnp.float32),
                   "W_dec": jnp.asarray(W_dec, jnp.float32), "b_dec": jnp.asarray(b_dec, jnp.float32)}
    mu = np.zeros(d_in) if mu is None else mu
    v["norm"] = {**v["norm"], "mu_in": jnp.asarray(mu, jnp.float32), "scale_in": jnp.float32(scale),
                 "mu_out": jnp.asarray(mu if d_in == d_out else np.zeros(d_out), jnp.float32), "scale_out": jnp.float32(scale)}
    return v


# ---------------------------------------------------------------------------------------------
# The dictionary's mechanics
# ---------------------------------------------------------------------------------------------


def test_decoder_rows_stay_unit_norm_and_training_forward_matches_the_module():
    cfg = SAEConfig(n_latents=64, k=4, d_in=12, d_out=12)
    x = jax.random.normal(jax.random.PRNGKey(1), (4096, 12)) * jnp.linspace(0.2, 3.0, 12) + 5.0
    v0 = init_sae(jax.random.PRNGKey(0), cfg)
    assert_close(jnp.linalg.norm(v0["params"]["W_dec"], axis=1), np.ones(64))
    assert_close(v0["params"]["W_enc"], v0["params"]["W_dec"].T)  # Gao et al.: encoder = decoder transposed
    tcfg = SAETrainConfig(n_tokens=4096, batch_size=256, num_steps=40, log_every=20, lr=1e-2)
    v, hist, _ = train_dictionary(cfg, tcfg, x, progress=False)
    assert_close(jnp.linalg.norm(v["params"]["W_dec"], axis=1), np.ones(64), rtol=1e-5)
    assert not np.allclose(v["params"]["W_dec"], v0["params"]["W_dec"])  # it did train
    assert hist[-1]["mse"] < hist[0]["mse"]
    # the sparse training forward (gathered columns) equals the module's dense encode/decode
    f = forward_train(v["params"], v["norm"], cfg, x[:64])
    z = apply(v, cfg, x[:64], "encode")
    dense = apply(v, cfg, z, "decode_n")
    assert_close(f["recon_n"], dense, rtol=1e-5)
    assert float(f["l0"]) == pytest.approx(float((z > 0).sum(-1).mean()))


def test_topk_keeps_exactly_the_k_largest():
    rng = np.random.default_rng(0)
    pre = jnp.asarray(rng.normal(size=(50, 40)).astype(np.float32)) + 3.0  # all positive: relu keeps all k
    z = np.asarray(topk_dense(pre, 7))
    assert ((z > 0).sum(1) == 7).all()
    kth = np.sort(np.asarray(pre), 1)[:, -7]
    assert_close(np.where(z > 0, np.asarray(pre), 0.0), np.where(np.asarray(pre) >= kth[:, None], np.asarray(pre), 0.0))
    # negative pre-activations among the top k are dropped by the ReLU: at most k
    z2 = np.asarray(topk_dense(pre - 3.5, 7))
    assert ((z2 > 0).sum(1) <= 7).all() and (z2 >= 0).all()
    # the module at inference: exactly k active latents per token
    cfg = SAEConfig(n_latents=40, k=5, d_in=8, d_out=8)
    v = init_sae(jax.random.PRNGKey(3), cfg)
    v["params"]["b_enc"] = jnp.full((40,), 10.0)
    zz = apply(v, cfg, jax.random.normal(jax.random.PRNGKey(4), (30, 8)), "encode")
    assert (np.asarray((zz > 0).sum(-1)) == 5).all()


def test_kth_largest_and_batchtopk():
    rng = np.random.default_rng(1)
    kth = jax.jit(kth_largest)
    x = rng.normal(size=(64, 33)).astype(np.float32)
    for n in (1, 200, 64 * 33):
        assert float(kth(jnp.asarray(x), n)) == np.sort(x.ravel())[::-1][n - 1]
    ties = jnp.asarray([1.0, 1.0, 1.0, -2.0, 0.0, -0.0])
    assert [float(kth(ties, n)) for n in (1, 3, 4, 6)] == [1.0, 1.0, 0.0, -2.0]
    # BatchTopK in training keeps k * B latents over the whole batch, unevenly per token
    cfg = SAEConfig(arch="batchtopk", n_latents=32, k=4, d_in=8, d_out=8)
    v = init_sae(jax.random.PRNGKey(0), cfg)
    v["params"]["b_enc"] = jnp.full((32,), 5.0)
    x = jax.random.normal(jax.random.PRNGKey(1), (64, 8)) * jnp.linspace(0.1, 4, 64)[:, None]
    z = np.asarray(apply(v, cfg, x, "encode", train=True))
    per_token = (z > 0).sum(1)
    assert per_token.sum() == 4 * 64 and per_token.min() < 4 < per_token.max()
    f = forward_train(v["params"], v["norm"], cfg, x)
    assert float(f["l0"]) == 4.0
    # at inference a single threshold: z = pre where pre > theta
    v["norm"]["threshold"] = f["kept_min"]
    zi = np.asarray(apply(v, cfg, x, "encode"))
    pre = np.asarray(apply(v, cfg, x, "pre_acts"))
    assert_close(zi, np.where(pre > float(f["kept_min"]), pre, 0.0))


def test_jumprelu_threshold_gradient_is_the_kernel_pseudo_derivative():
    eps, theta = 0.1, jnp.asarray([0.5, 1.0, 2.0])
    # column 0: two points inside the kernel window (|x - theta| < eps / 2), one outside; column 1: none inside
    x = jnp.asarray([[0.52, 1.3, 2.01], [0.48, 0.2, 1.5], [0.9, 5.0, 2.04]])
    g_l0 = jax.grad(lambda t: step(x, t, eps).sum())(theta)
    assert_close(g_l0, np.array([-2 / eps, 0.0, -2 / eps]))  # each window point: -(1/eps) K(.) = -1/eps
    w = jnp.asarray([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]])
    g_out = jax.grad(lambda t: (jumprelu(x, t, eps) * w).sum())(theta)
    assert_close(g_out, np.array([-(0.5 / eps) * (1 + 4), 0.0, -(2.0 / eps) * (3 + 9)]))
    g_x = jax.grad(lambda xx: (jumprelu(xx, theta, eps) * w).sum())(x)
    assert_close(g_x, np.asarray(w) * (np.asarray(x) > np.asarray(theta)))  # the ordinary derivative in x
    assert_close(jax.grad(lambda xx: step(xx, theta, eps).sum())(x), np.zeros((3, 3)))
    # in the loss, the L0 term pushes every threshold with a pre-activation in its window upwards
    cfg = SAEConfig(arch="jumprelu", n_latents=32, d_in=8, d_out=8, bandwidth=0.5, init_threshold=0.3)
    v = init_sae(jax.random.PRNGKey(0), cfg)
    data = jax.random.normal(jax.random.PRNGKey(5), (512, 8))
    g = {c: jax.grad(lambda p: loss_fn(p, v["norm"], cfg, SAETrainConfig(l0_coef=c), data, data, None)[0])(
        v["params"])["log_threshold"] for c in (0.0, 1.0)}
    g_l0 = np.asarray(g[1.0] - g[0.0])
    assert (g_l0 <= 0).all() and (g_l0 < 0).mean() > 0.5
    # training starts from thresholds that give an L0 of k on the first tokens
    v4 = init_thresholds(v, dataclasses.replace(cfg, k=4, init_threshold=1e-3), data)
    assert float((apply(v4, cfg, data, "encode") > 0).sum(-1).mean()) == pytest.approx(4.0, abs=0.1)


def _planted(aux_coef):
    """TopK (k = 1) on tokens a e0 or b e1 (a, b in [1, 2]). Latent 1 reads and writes e1; latent 2
    wins every e0 token (pre 0.5 a) but writes e3, so those tokens keep their error; latent 0 reads
    0.05 e0, always loses to latent 2, and so never fires: it is dead. Only latent 0 is trained (the
    optimizer zeroes every other update), so what revives it can only be its own gradient."""
    cfg = SAEConfig(n_latents=3, k=1, d_in=4, d_out=4)
    rng = np.random.default_rng(0)
    e = np.eye(4, dtype=np.float32)
    mag = rng.uniform(1.0, 2.0, 4096).astype(np.float32)[:, None]
    x = jnp.asarray(np.where(rng.random(4096)[:, None] < 0.5, mag * e[0], mag * e[1]))
    dec = np.stack([(e[0] + e[2]) / np.sqrt(2), e[1], e[3]])
    enc = np.stack([0.05 * e[0], e[1], 0.5 * e[0]]).T
    v = _variables(cfg, enc, np.zeros(3), dec, np.zeros(4))
    tcfg = SAETrainConfig(batch_size=256, num_steps=200, log_every=200, lr=2e-2, aux_coef=aux_coef, dead_tokens=256,
                          aux_k=2, warmup_frac=0.0, decay_frac=0.0)
    only0 = {"W_enc": np.array([1.0, 0, 0]), "b_enc": np.array([1.0, 0, 0]), "W_dec": np.array([[1.0], [0], [0]]),
             "b_dec": np.zeros(1)}
    freeze = optax.stateless(lambda u, _: {k: u[k] * only0[k] for k in u})
    tx = optax.chain(make_optimizer(tcfg), freeze)
    state = {"params": v["params"], "opt_state": tx.init(v["params"]), "norm": v["norm"],
             "since_fired": jnp.zeros(3, jnp.int32)}
    state, _ = make_train_chunk(cfg, tcfg, tx)(state, x, x, jax.random.PRNGKey(0), jnp.int32(0))
    v = {"params": state["params"], "norm": state["norm"]}
    return v, apply(v, cfg, x, "encode"), dec, enc


# ---------------------------------------------------------------------------------------------
# Splicing through the hooks
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("hook", ["blocks.0.hook_resid_mid", "hook_state_embed"])
def test_identity_dictionary_spliced_reproduces_the_model(hook):
    d = TINY.d_model
    params, (obs, rtg, ts, act) = _params(TINY), _inputs(TINY)
    cfg = SAEConfig(hook=hook, token="state", n_latents=2 * d, k=2 * d, d_in=d, d_out=d)
    eye = np.eye(d)
    dec = np.concatenate([eye, -eye])  # relu(x) - relu(-x) = x, unit rows
    ident = _variables(cfg, dec.T, np.zeros(2 * d), dec, np.zeros(d), mu=np.linspace(-1, 1, d), scale=0.7)
    clean, cache = run_with_cache(params, TINY, obs, rtg, ts, act)
    spliced = run_with_hooks(params, TINY, obs, rtg, ts, act, interventions=splice(cfg, ident))
    assert_close(spliced, clean, rtol=1e-5)
    # a lossy dictionary (k = d of the 2d latents) changes the logits, and only the state tokens of its site
    lossy = dataclasses.replace(cfg, k=d // 2)
    logits, cache2 = run_with_cache(params, TINY, obs, rtg, ts, act, interventions=splice(lossy, ident))
    assert np.abs(np.asarray(logits - clean)).max() > 1e-3
    if hook.startswith("blocks."):
        changed = np.abs(np.asarray(cache2[hook] - cache[hook])).max(axis=(0, 2)) > 0
        assert changed.tolist() == [p % 3 == 1 for p in range(3 * TINY.n_timesteps)]
        # the explorer's view: the most active latents at the last state token are the largest |x_i|
        idx, val = active_latents(sae_store.Dictionary(cfg, ident, {}), params, TINY, obs, rtg, ts, act, top=3)
        last = np.asarray(cache[hook][:, 3 * TINY.n_timesteps - 2]) - np.linspace(-1, 1, d)
        z = np.concatenate([np.maximum(last, 0), np.maximum(-last, 0)], 1) * 0.7
        assert_close(val, -np.sort(-z, 1)[:, :3], rtol=1e-5)
        assert_close(np.take_along_axis(z, idx, 1), val, rtol=1e-5)


@pytest.mark.parametrize("model_cfg", [TINY, TINY_LN], ids=["noLN", "LN"])
def test_transcoder_equal_to_the_mlp_reproduces_the_model(model_cfg):
    params, (obs, rtg, ts, act) = _params(model_cfg, 1), _inputs(model_cfg, seed=1)
    mlp = params["blocks_0"]["mlp"]
    n = np.linalg.norm(np.asarray(mlp["W_out"]), axis=1)  # unit decoder rows: the norms move into the encoder
    cfg = SAEConfig(hook="blocks.0.hook_mlp_out", token="state", transcoder=True, n_latents=model_cfg.d_mlp,
                    k=model_cfg.d_mlp, d_in=model_cfg.d_model, d_out=model_cfg.d_model)
    v = _variables(cfg, np.asarray(mlp["W_in"]) * n, np.asarray(mlp["b_in"]) * n, np.asarray(mlp["W_out"]) / n[:, None],
                   np.asarray(mlp["b_out"]))
    clean, cache = run_with_cache(params, model_cfg, obs, rtg, ts, act)
    ivs = splice(cfg, v, params, model_cfg)
    logits, spliced_cache = run_with_cache(params, model_cfg, obs, rtg, ts, act, interventions=ivs)
    assert_close(logits, clean, rtol=2e-5)
    assert_close(spliced_cache["blocks.0.hook_resid_post"], cache["blocks.0.hook_resid_post"], rtol=2e-5)
    # a sparser transcoder differs, and only at the state tokens' residual stream
    sparse = splice(dataclasses.replace(cfg, k=4), v, params, model_cfg)
    _, c2 = run_with_cache(params, model_cfg, obs, rtg, ts, act, interventions=sparse)
    diff = np.abs(np.asarray(c2["blocks.0.hook_resid_post"] - cache["blocks.0.hook_resid_post"])).max(axis=(0, 2))
    assert (diff > 1e-4).tolist() == [p % 3 == 1 for p in range(3 * model_cfg.n_timesteps)]


def test_metrics_of_an_identity_dictionary_and_the_ablation_baselines():
    d = TINY.d_model
    params, (obs, rtg, ts, act) = _params(TINY, 3), _inputs(TINY, b=10, seed=3)
    cfg = SAEConfig(hook="blocks.0.hook_resid_mid", token="state", n_latents=2 * d, k=2 * d, d_in=d, d_out=d)
    dec = np.concatenate([np.eye(d), -np.eye(d)])
    ident = _variables(cfg, dec.T, np.zeros(2 * d), dec, np.zeros(d))
    _, cache = run_with_cache(params, TINY, obs, rtg, ts, act)
    x = cache[cfg.hook][:, 1::3].reshape(-1, d)  # the state tokens
    r = metrics.reconstruction(ident, cfg, x, chunk=7)  # a chunk that does not divide the 20 tokens
    assert r["n_tokens"] == 20 and r["explained_variance"] == pytest.approx(1.0, abs=1e-5)
    assert r["l0"] == pytest.approx(float((np.asarray(x) != 0).sum(-1).mean()))
    assert r["cossim"] == pytest.approx(1.0, abs=1e-5) and r["dead_frac"] <= 0.5
    mask = np.ones((10, 2), bool)
    mask[0, 0] = False
    windows = {"obs": obs, "rtg": rtg, "timesteps": ts, "actions": act, "mask": jnp.asarray(mask)}
    mean = x.mean(0)
    out = metrics.downstream(params, TINY, cfg, ident, windows, mean, chunk=4)
    assert out["n_tokens"] == 19
    assert out["ce_sae"] == pytest.approx(out["ce_clean"], rel=1e-5) and out["kl_sae"] == pytest.approx(0.0, abs=1e-5)
    # (CE_zero - CE_sae) / (CE_zero - CE_clean): CE's float32 error scaled by the pair's conditioning
    assert_normalised_close(out["ce_loss_score_zero"], 1.0, out["ce_clean"], out["ce_zero"])

    def ce(ivs):  # the same CE through the hooks' own ablation helpers (position indices, not a token mask)
        logits = run_with_hooks(params, TINY, obs, rtg, ts, act, interventions=ivs)
        logp = jax.nn.log_softmax(logits)
        nll = -np.take_along_axis(np.asarray(logp), np.asarray(act)[..., None], -1)[..., 0]
        return float(nll[mask].mean())

    state_pos = np.arange(1, 3 * TINY.n_timesteps, 3)
    assert out["ce_zero"] == pytest.approx(ce(hooks.zero_ablation(cfg.hook, pos=state_pos)), rel=1e-5)
    assert out["ce_mean"] == pytest.approx(ce(hooks.mean_ablation(cfg.hook, mean, pos=state_pos)), rel=1e-5)
    assert out["ce_clean"] == pytest.approx(ce({}), rel=1e-5)


def test_a_model_of_3k_minus_1_positions_is_fed_k_minus_1_actions():
    """The original MemoryDT's shape (3K - 1 positions, no token for the current action, e.g.
    MemoryGatedMLP.pt's 26): harvesting and the CE / KL splice feed it K - 1 actions
    (``model_actions``, as dtjax.evaluate does; K actions made 3K tokens, more than it has
    positions), so every timestep's state token is read; it has no action token at its last
    timestep, so an action-token dictionary is refused in one line and the evaluation reads rtg
    and state tokens."""
    from dtjax.sae import activations as acts
    from dtjax.sae.features import site_tokens

    mcfg = TINY.replace(n_timesteps=3, n_ctx=8)
    params, (obs, rtg, ts, act) = _params(mcfg, 5), _inputs(mcfg, b=6, seed=5)
    assert acts.model_actions(mcfg, act).shape == (6, 2) and acts.model_actions(TINY, act[:, :2]).shape == (6, 2)
    with pytest.raises(SAEError, match=r"has 8 positions \(3K - 1"):
        acts.check_site(mcfg, "blocks.0.hook_resid_post", "action", False)
    d = mcfg.d_model
    cfg = SAEConfig(hook="blocks.0.hook_resid_mid", token="state", n_latents=2 * d, k=2 * d, d_in=d, d_out=d)
    assert site_tokens(mcfg, cfg) == ("state", "rtg") and site_tokens(TINY, cfg) == ("state", "rtg", "action")
    _, cache = run_with_cache(params, mcfg, obs, rtg, ts, acts.model_actions(mcfg, act), names=(cfg.hook,))  # as _harvest
    x, _ = acts.site_values(params, mcfg, cfg, cache)
    assert cache[cfg.hook].shape == (6, 8, d) and x.shape == (6, 3, d)
    np.testing.assert_array_equal(np.asarray(x), np.asarray(cache[cfg.hook])[:, 1::3])


# ---------------------------------------------------------------------------------------------
# Probes
# ---------------------------------------------------------------------------------------------


def test_auroc_matches_mann_whitney_with_ties():
    from scipy.stats import mannwhitneyu

    rng = np.random.default_rng(0)
    m = 500
    sparse = np.where(rng.random((m, 3)) < 0.8, 0.0, rng.integers(1, 4, (m, 3)).astype(np.float32))  # many ties
    dense = rng.normal(size=(m, 2)).astype(np.float32)
    scores = np.concatenate([sparse, dense], 1)
    labels = rng.random((m, 4)) < np.array([0.1, 0.3, 0.5, 0.02])
    auc = probes.auroc(scores, labels, block=2)
    for i in range(scores.shape[1]):
        for j in range(labels.shape[1]):
            u = mannwhitneyu(scores[labels[:, j], i], scores[~labels[:, j], i]).statistic
            assert auc[i, j] == pytest.approx(u / (labels[:, j].sum() * (~labels[:, j]).sum()), abs=1e-5)
    perfect = probes.auroc(labels[:, :1].astype(np.float32) * 2.0, labels[:, :1])
    assert perfect[0, 0] == pytest.approx(1.0)


def test_probe_labels_on_scenarios():
    from dtjax import scenarios

    names, states = scenarios.scenario_states(["ball_ahead", "clear_ahead", "goal_ahead", "wall_ahead"])
    obs = np.asarray(scenarios.observe_states(states))
    pnames, fams, labels = probes.probe_labels(obs, np.array([1.0, -1.0, 0.0, 0.6]), np.array([0, 7, 12, 60]),
                                               np.asarray(states.agent_pos), np.asarray(states.agent_dir), 8)
    col = {n: labels[:, i] for i, n in enumerate(pnames)}
    assert col["front=ball"].tolist() == [True, False, False, False]
    assert col["front=goal"].tolist() == [False, False, True, False]
    assert col["front=wall"].tolist() == [False, False, False, True]
    assert col["front=ball|wall"].tolist() == [True, False, False, True]
    assert col["ball_adjacent"].tolist() == [True, False, False, False]
    assert col["rtg>0"].tolist() == [True, False, False, True] and col["rtg~0"].tolist() == [False, False, True, False]
    assert col["t in [5,10)"].tolist() == [False, True, False, False] and col["t>=50"].tolist() == [False, False, False, True]
    assert col["dir=E"].all()
    assert col["goal_dist=1"].tolist() == [False, False, True, False]  # goal_ahead: agent (5,6), goal (6,6)
    assert set(fams) == {"cell", "front", "rtg", "time", "dir", "goal_dist"} and labels.shape == (4, len(pnames))
    # a task without balls (objects empty, wall, goal) has no ball probes; the other columns are the same
    p2, _, l2 = probes.probe_labels(obs, np.array([1.0, -1.0, 0.0, 0.6]), np.array([0, 7, 12, 60]),
                                    np.asarray(states.agent_pos), np.asarray(states.agent_dir), 8, ("empty", "wall", "goal"))
    assert not any("ball" in n for n in p2) and set(p2) == {n for n in pnames if "ball" not in n}
    np.testing.assert_array_equal(l2, labels[:, [pnames.index(n) for n in p2]])
    # Memory (objects empty, wall, key, ball; its balls are not obstacles, there is no goal cell):
    # the cell probes for keys and balls, no blocked-front, ball-adjacent or goal-distance probes
    p3, f3, l3 = probes.probe_labels(obs, np.array([1.0, -1.0, 0.0, 0.6]), np.array([0, 7, 12, 60]),
                                     np.asarray(states.agent_pos), np.asarray(states.agent_dir), 8,
                                     ("empty", "wall", "key", "ball"), obstacles=False)
    assert "front=key" in p3 and "front=ball" in p3 and "goal_dist" not in f3
    assert not {"front=ball|wall", "ball_adjacent"} & set(p3)
    np.testing.assert_array_equal(l3[:, p3.index("front=ball")], col["front=ball"])
    with pytest.raises(ValueError, match="no probe for object 'lava'"):
        probes.probe_labels(obs, np.zeros(4), np.zeros(4), np.asarray(states.agent_pos), np.asarray(states.agent_dir), 8,
                            ("empty", "lava"))


# ---------------------------------------------------------------------------------------------
# Directories and the command line
# ---------------------------------------------------------------------------------------------


def test_save_load_round_trip(tmp_path):
    cfg = SAEConfig(arch="jumprelu", n_latents=24, k=3, d_in=16, d_out=16)
    v = init_sae(jax.random.PRNGKey(2), cfg)
    v["norm"]["mu_in"] = jnp.arange(16.0)
    d = sae_store.Dictionary(cfg, v, {"train": SAETrainConfig().to_dict(), "note": "x"})
    path = sae_store.save(tmp_path / "s", d, [{"step": 1, "mse": 0.5}])
    back = sae_store.load(path)
    assert back.cfg == cfg and back.meta["note"] == "x" and back.meta["format"] == sae_store.FORMAT
    assert jax.tree.structure(back.variables) == jax.tree.structure(jax.tree.map(np.asarray, v))
    for a, b in zip(jax.tree.leaves(back.variables), jax.tree.leaves(v)):
        np.testing.assert_array_equal(a, np.asarray(b))
    assert json.loads((path / "metrics.jsonl").read_text())["mse"] == 0.5
    before = sorted(p.name for p in path.rglob("*"))
    with pytest.raises(SAEError, match="already exists"):
        sae_store.save(path, d)
    assert sorted(p.name for p in path.rglob("*")) == before  # nothing overwritten
    assert not list(tmp_path.glob(".s.tmp-*"))
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "ckpt").mkdir()
    (tmp_path / "bad" / "config.json").write_text("{not json")
    with pytest.raises(SAEError, match="unreadable config.json"):
        sae_store.load(tmp_path / "bad")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A dtjax run directory with a 1-timestep tiny model and a random dataset."""
    run = tmp_path_factory.mktemp("runs") / "tiny"
    cfg = TINY_K1
    arrays, meta = random_dataset(np.random.default_rng(0), 300, max_len=20)
    data_store.save(run / "dataset", arrays, meta)
    config = {"model": cfg.to_dict(), "data": {"prob_go_from_end": 0.1}}
    mgr = manager(run)
    save_ckpt(mgr, 0, _params(cfg, 2), {"step": np.int32(0)}, config)
    mgr.wait_until_finished()
    write_json_atomic(run / "config.json", config)
    return run


@pytest.mark.slow  # the library path (sae.train, sae.analyse) runs in tests/fixtures.py's tiny_sae; the argv errors below
def test_cli_train_then_eval(tiny_run, capsys):
    args = ["train", "--ckpt", str(tiny_run), "--latents", "32", "--k", "4", "--num_steps", "20", "--log_every", "10",
            "--n_tokens", "2048", "--batch_size", "256", "--quiet", "--name", "t"]
    assert main(args) == 0
    path = tiny_run / "sae" / "t"
    assert json.loads(capsys.readouterr().out)["sae"] == str(path)
    d = sae_store.load(path)
    assert d.cfg.hook == "blocks.0.hook_resid_post" and d.cfg.d_in == 16 and d.meta["n_train_tokens"] == 2048
    assert main(args) == 1 and "already exists" in capsys.readouterr().err  # nothing overwritten
    assert main(["eval", "--sae", str(path), "--tokens", "2048", "--analysis_tokens", "1024", "--episodes", "2",
                 "--quiet"]) == 0
    s = json.loads((path / "eval.json").read_text())
    assert set(s["reconstruction"]) == {"state", "rtg"}
    r = s["reconstruction"]["state"]
    assert r["l0"] <= 4 and 0 <= r["dead_frac"] <= 1 and r["n_tokens"] == 2048 and s["downstream"]["n_tokens"] == 1024
    assert all(np.isfinite(s["downstream"][k]) for k in ("ce_clean", "ce_sae", "ce_zero", "ce_mean"))
    assert min(s["downstream"][k] for k in ("kl_sae", "kl_zero", "kl_mean")) >= 0
    assert len(s["closed_loop"]["sae_return"]) == 3
    assert s["probes"]["n_valid"] > 0 and 0 <= s["probes"]["recovered_frac"] <= 1
    with np.load(path / "eval" / "analysis.npz") as z:
        assert z["latents/dla"].shape == (32, 3) and z["latents/encoder_maps"].shape == (32, 3, 7, 7)
    # eval/report.html: the report's SAE section for this dictionary alone (the report's Page and plots)
    page = (path / "eval" / "report.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and 'href="#sae"' in page and "blocks.0.hook_resid_post" in page
    assert page.count('<img src="data:image/png;base64,') == 3  # latent cards, encoder maps, probe recovery
    assert f"{s['probes']['recovered_frac']:.1%}" in page and "Closed-loop mean return" in page
    assert sorted(p.name for p in (path / "eval").iterdir()) == ["analysis.npz", "report.html"]


def test_cli_errors_are_one_line(tiny_run, tmp_path, capsys):
    cases = [
        (["train", "--ckpt", str(tmp_path / "nope")], 1, "no model at"),
        (["train", "--ckpt", str(PT)], 1, "--dataset"),
        (["train", "--ckpt", str(tiny_run), "--hook", "blocks.3.hook_resid_post"], 1, "no hook blocks.3"),
        (["train", "--ckpt", str(tiny_run), "--hook", "blocks.0.attn.hook_pattern"], 1, "is not one"),
        (["train", "--ckpt", str(tiny_run), "--token", "action"], 1, "no action token"),
        (["train", "--ckpt", str(tiny_run), "--transcoder", "--hook", "blocks.0.hook_resid_post"], 1, "hook_mlp_out"),
        (["train", "--ckpt", str(tiny_run), "--dataset", str(tmp_path / "nope")], 1, "dataset not found"),
        (["train", "--ckpt", str(tiny_run), "--k", "64", "--latents", "32"], 2, "must not exceed"),
        (["train", "--ckpt", str(tiny_run), "--latents", "0"], 2, "must be >= 1"),
        (["train", "--ckpt", str(tiny_run), "--num_steps", "25", "--log_every", "10"], 2, "multiple of log_every"),
        (["eval", "--sae", str(tmp_path / "nope")], 1, "no dictionary at"),
    ]
    for argv, code, msg in cases:
        try:
            rc = main(argv)
        except SystemExit as e:  # argparse errors
            rc = e.code
        err = capsys.readouterr().err.strip()
        assert rc == code, (argv, err)
        last = err.splitlines()[-1]  # argparse (code 2) prints its usage first, then one error line
        assert msg in last and "error:" in last and "Traceback" not in err, (argv, err)
        if code == 1:
            assert len(err.splitlines()) == 1, err
    assert not (tiny_run / "sae" / "blocks.0.hook_resid_post-state-sae-topk-32-k64").exists()
