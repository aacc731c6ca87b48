"""dtjax.circuits: exact decompositions, circuits against the forward pass, ablations and patching
through the model's hooks, and the write-up's reference numbers on the original overnight model."""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dtjax
from dtjax import circuits as C
from dtjax import hooks, scenarios
from dtjax.config import EnvConfig, ModelConfig
from fixtures import random_params
from tolerance import assert_close, assert_normalised_close


ROOT = Path(__file__).resolve().parents[1]
OVERNIGHT = ROOT / "checkpoints" / "original" / "demo_model_overnight_training.pt"

TINY = ModelConfig(n_layers=2, d_model=16, n_heads=2, d_head=8, d_mlp=32, n_timesteps=2, max_timestep=20)
TINY_LN = TINY.replace(layer_norm=True)
TINY_1L = TINY.replace(n_layers=1, n_timesteps=1, n_ctx=3)


def _mag(x) -> float:
    """The largest magnitude in ``x``: float32 errors of a sum scale with its largest terms."""
    return float(np.abs(np.asarray(x)).max())


def _noisy_params(cfg, seed=0):
    return random_params(cfg, seed)


def _inputs(cfg, b=5, seed=0, actions="full"):
    rng = np.random.default_rng(seed)
    k = cfg.n_timesteps
    acts = {"full": rng.integers(0, 4, (b, k)), "none": None}[actions] if k > 1 or actions == "none" else \
        rng.integers(0, 4, (b, k))
    return C.Inputs(
        obs=jnp.asarray(rng.integers(0, 9, (b, k) + cfg.obs_shape).astype(np.uint8)),
        rtg=jnp.asarray(rng.uniform(-1, 1, (b, k)).astype(np.float32)),
        timesteps=jnp.asarray(rng.integers(0, cfg.max_timestep, (b, k)).astype(np.int32)),
        actions=None if acts is None else jnp.asarray(acts.astype(np.int32)),
    )


@pytest.fixture(scope="module")
def tiny():
    return {cfg: _noisy_params(cfg, i) for i, cfg in enumerate((TINY, TINY_LN, TINY_1L))}


@pytest.fixture(scope="module")
def overnight():
    cfg, params = dtjax.load(OVERNIGHT)
    names, inp = scenarios.scenario_inputs(["start_seed0"], rtg=0.9)
    return cfg, params, inp


# ---------------------------------------------------------------------------------------------
# Decomposition and DLA
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cfg", [TINY, TINY_LN], ids=["noLN", "LN"])
def test_decomposition_sums_to_resid_and_logits(tiny, cfg):
    params, inp = tiny[cfg], _inputs(cfg)
    logits, cache = C.run_with_cache(params, cfg, inp)
    for k in range(cfg.n_timesteps):
        pos = C.state_pos(cfg.n_timesteps, k)
        labels, stack = C.decompose_resid(params, cfg, cache, pos)
        assert labels[:3] == ["embed_state", "embed_time", "embed_pos"] and stack.shape[1] == len(labels)
        resid = cache[f"blocks.{cfg.n_layers - 1}.hook_resid_post"][:, pos]
        assert_close(stack.sum(1), resid, floor=_mag(stack))
        labels, per_action = C.decompose_logits(params, cfg, cache, pos)
        assert labels[-1] == "b_U" and ("ln_final_b" in labels) == cfg.layer_norm
        assert_close(per_action.sum(1), logits[:, k], floor=_mag(per_action))
    # other token types decompose too (the RTG token of the last timestep)
    labels, stack = C.decompose_resid(params, cfg, cache, 3 * (cfg.n_timesteps - 1))
    assert labels[0] == "embed_rtg"
    assert_close(stack.sum(1), cache[f"blocks.{cfg.n_layers - 1}.hook_resid_post"][:, -3], floor=_mag(stack))


@pytest.mark.parametrize("cfg", [TINY, TINY_LN], ids=["noLN", "LN"])
def test_head_dla_equals_removing_its_output_from_the_residual(tiny, cfg):
    """DLA of each head = the logit change when only that head's output is subtracted from the final
    residual stream (through the hooks; with LN the final scale is frozen by patching hook_scale)."""
    params, inp = tiny[cfg], _inputs(cfg)
    logits, cache = C.run_with_cache(params, cfg, inp)
    pos, last = C.state_pos(cfg.n_timesteps), f"blocks.{cfg.n_layers - 1}.hook_resid_post"
    v = C.action_vector("forward-left")
    labels, dla = C.direct_logit_attribution(params, cfg, cache, "forward-left", pos)
    assert_close(dla.sum(1), logits[:, -1] @ v, floor=_mag(dla))
    _, stack = C.decompose_resid(params, cfg, cache, pos)
    for i, lab in enumerate(labels[: stack.shape[1]]):
        ivs = hooks.patch_from_cache({last: cache[last].at[:, pos].add(-stack[:, i])}, last)
        if cfg.layer_norm:
            ivs.update(hooks.patch_from_cache(cache, "ln_final.hook_scale"))
        removed = C.run_with_hooks(params, cfg, inp, ivs)
        assert_close((logits - removed)[:, -1] @ v, dla[:, i], floor=_mag(logits), err_msg=lab)


def test_dla_without_bias_is_the_apps_total_dir(tiny):
    cfg = TINY
    params, inp = tiny[cfg], _inputs(cfg)
    _, cache = C.run_with_cache(params, cfg, inp)
    labels, dla = C.direct_logit_attribution(params, cfg, cache, "forward-right", include_bias=False)
    assert "b_U" not in labels
    resid = cache[f"blocks.{cfg.n_layers - 1}.hook_resid_post"][:, C.state_pos(cfg.n_timesteps)]
    assert_close(dla.sum(1), resid @ C.logit_direction(params, "forward-right"), floor=_mag(dla))


def test_state_encoder_activation_maps_sum_to_the_state_embedding_projection(tiny):
    cfg = TINY
    params, inp = tiny[cfg], _inputs(cfg)
    _, cache = C.run_with_cache(params, cfg, inp)
    d = C.logit_direction(params, ("forward", "right"))
    maps = C.state_encoder_maps(params, cfg, ("forward", "right"), inp.obs[:, -1])
    assert maps.shape == (inp.batch, 3, 7, 7)
    assert_close(maps.sum((-1, -2, -3)), cache["hook_state_embed"][:, -1] @ d, floor=_mag(jnp.abs(maps).sum((-1, -2, -3))))
    # the map is in [c, x, y]: a single feature at obs[x=2, y=5, c=1] lands at map[1, 2, 5]
    one = jnp.zeros((1, 7, 7, 3)).at[0, 2, 5, 1].set(1.0)
    m = C.state_encoder_maps(params, cfg, ("forward", "right"), one)
    row = params["W_state"][1 * 49 + 2 * 7 + 5]
    assert_close(m[0, 1, 2, 5], row @ d, floor=float(jnp.abs(row) @ jnp.abs(d)))
    norm = C.state_encoder_maps(params, cfg, "forward", normalise=True)
    np.testing.assert_allclose(jnp.abs(norm).max((-1, -2)), 1.0, rtol=1e-6)


def test_rtg_scan_matches_forward_passes(tiny):
    cfg = TINY
    params, inp = tiny[cfg], _inputs(cfg, b=1)
    rtgs = jnp.array([-3.0, -1.0, 0.0, 0.5, 4.0])  # extrapolation included
    scan = C.rtg_scan(params, cfg, inp, rtgs, "forward-right")
    for i, r in enumerate(rtgs):
        x = inp.with_rtg(r[None])
        assert float(x.rtg[0, -1]) == float(r)
        assert_close(x.rtg[0, 0] - x.rtg[0, -1], inp.rtg[0, 0] - inp.rtg[0, -1], floor=_mag(x.rtg))
        logits, cache = C.run_with_cache(params, cfg, x)
        assert_close(scan["logits"][i], logits[0, -1])
        assert_close(scan["pattern"][i, 0], cache["blocks.0.attn.hook_pattern"][0])
    assert_close(scan["dla"].sum(1), scan["logits"] @ C.action_vector("forward-right"), floor=_mag(scan["dla"]))
    np.testing.assert_allclose(scan["probs"].sum(1), 1.0, atol=1e-6)
    assert len(scan["labels"]) == scan["dla"].shape[1]


# ---------------------------------------------------------------------------------------------
# QK / OV circuits against the forward pass
# ---------------------------------------------------------------------------------------------


def _no_bias_no_pos(params):
    """Layer-0 biases b_Q, b_K, b_V and the position/time embeddings zeroed, so the tokens are pure
    state / RTG embeddings and the circuits are exact for them."""
    a = dict(params["blocks_0"]["attn"], b_Q=0 * params["blocks_0"]["attn"]["b_Q"],
             b_K=0 * params["blocks_0"]["attn"]["b_K"], b_V=0 * params["blocks_0"]["attn"]["b_V"])
    return dict(params, W_pos=0 * params["W_pos"], W_time=0 * params["W_time"],
                blocks_0=dict(params["blocks_0"], attn=a))


def test_qk_circuit_equals_the_attention_scores(tiny):
    cfg = TINY_1L
    params = _no_bias_no_pos(tiny[cfg])
    inp = _inputs(cfg, actions="none")
    _, cache = C.run_with_cache(params, cfg, inp)
    scores = cache["blocks.0.attn.hook_attn_scores"]  # (batch, head, q, k)
    resid = cache["blocks.0.hook_resid_pre"]
    for b in range(inp.batch):  # general form on residual vectors
        qk = C.qk_circuit(params, resid[b], resid[b], scale=True)  # (head, q, k)
        assert_close(jnp.tril(qk[:, 1:2, :2]), jnp.tril(scores[b, :, 1:2, :2]))
    # the 7x7 maps: score(state -> RTG) = sum_f obs_f QK_full[f] * rtg / sqrt(d_head)
    maps = C.qk_state_rtg(params, cfg)  # (head, C, 7, 7)
    pred = jnp.einsum("bcxy,hcxy->bh", C.obs_to_chw(inp.obs[:, 0]), maps) * inp.rtg[:, :1] / jnp.sqrt(8.0)
    assert_close(pred, scores[:, :, 1, 0], rtol=1e-4)  # a 147-term sum in another order
    assert_close(C.qk_state_rtg(params, cfg, scale=True) * jnp.sqrt(8.0), maps)


def test_ov_circuit_equals_head_outputs_under_forced_attention(tiny):
    cfg = TINY_1L
    params = _no_bias_no_pos(tiny[cfg])
    inp = _inputs(cfg, actions="none")
    ov_maps, ov_r = C.ov_state(params, cfg), C.ov_rtg(params)  # (head, C, 7, 7, A), (head, A)
    obs = C.obs_to_chw(inp.obs[:, 0])
    for key_pos in (0, 1):  # the state token attends only to the RTG token, or only to itself
        forced = jnp.zeros((1, 2, 2, 2)).at[..., 0, 0].set(1.0).at[..., 1, key_pos].set(1.0)
        _, cache = C.run_with_cache(params, cfg, inp, interventions={("pattern", 0): hooks.Replace(True, forced)})
        out = jnp.einsum("bhd,da->bha", cache["blocks.0.attn.hook_result"][:, 1], params["W_U"])
        pred = inp.rtg[:, :1, None] * ov_r[None] if key_pos == 0 else jnp.einsum("bcxy,hcxya->bha", obs, ov_maps)
        assert_close(out, pred, rtol=1e-4)  # 147-term sums in another order
    assert_close(C.ov_circuit(params, params["W_rtg"], direction="forward")[:, 0], ov_r[:, 2])


def test_factored_matrix_svd_matches_dense(tiny):
    params = tiny[TINY]
    for fm in (C.W_QK(params, 1), C.W_OV(params, 0)):
        dense = fm.AB
        assert fm.shape == dense.shape == (2, 16, 16)
        U, S, Vh = fm.svd()
        assert_close(S, jnp.linalg.svd(dense, compute_uv=False)[:, :8], rtol=1e-4)  # two SVD algorithms
        assert_close((U * S[:, None, :]) @ Vh, dense, rtol=1e-4)
        assert_close(fm.T.AB, jnp.swapaxes(dense, -1, -2))
        x = jnp.ones((3, 16))
        assert_close(fm.lmul(x).rmul(x.T).AB, x @ dense @ x.T, floor=16 * _mag(dense))
    svd = C.circuit_svd(tiny[TINY_1L], TINY_1L, k=2)
    assert svd["qk_query_maps"].shape == (2, 2, 3, 7, 7) and svd["ov_output_logits"].shape == (2, 2, 3)


# ---------------------------------------------------------------------------------------------
# Ablation and patching through the model's hooks
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["zero", "mean", "dhead_mean"])
def test_ablations_equal_the_hooks(tiny, kind):
    cfg = TINY
    params, inp = tiny[cfg], _inputs(cfg, seed=1)
    means = C.ablation_means(params, cfg, _inputs(cfg, b=16, seed=2)) if kind == "mean" else None
    labels, worlds = C.ablate_logits(params, cfg, inp, kind, means)
    assert labels == ["none", "L0H0", "L0H1", "L0_mlp", "L1H0", "L1H1", "L1_mlp"]
    assert_close(worlds[0], C.forward(params, cfg, inp))
    for i, comp in enumerate(C.components(cfg), start=1):
        name = f"blocks.{comp[1]}.attn.hook_z" if comp[0] == "head" else f"blocks.{comp[1]}.hook_mlp_out"
        head = comp[2] if comp[0] == "head" else None
        if kind == "zero":
            ivs = hooks.zero_ablation(name, head=head)
        elif kind == "mean":
            ivs = hooks.mean_ablation(name, means[name], head=head)
        else:
            ivs = {name: hooks.Apply(lambda x, h=head: x.at[:, :, h].set(x[:, :, h].mean(-1, keepdims=True))
                                     if h is not None else jnp.broadcast_to(x.mean(-1, keepdims=True), x.shape))}
        expected = C.run_with_hooks(params, cfg, inp, ivs)
        assert_close(worlds[i], expected, err_msg=f"{kind} {comp}")
        assert not np.allclose(worlds[i], worlds[0])


def test_activation_patching(tiny):
    cfg = TINY
    params = tiny[cfg]
    clean, corrupted = _inputs(cfg, seed=3), _inputs(cfg, seed=4)
    names = ["blocks.1.hook_resid_post", "blocks.0.attn.hook_z", "blocks.1.attn.hook_pattern", "hook_state_embed"]
    res = C.activation_patching(params, cfg, clean, corrupted, "forward-right", names=names)
    eff = res["effects"]
    last = C.state_pos(cfg.n_timesteps)
    n_pos = 3 * cfg.n_timesteps
    assert eff["blocks.1.hook_resid_post"].shape == (n_pos,)
    assert eff["blocks.0.attn.hook_z"].shape == (n_pos, 2) and eff["blocks.1.attn.hook_pattern"].shape == (n_pos, 2)
    assert eff["hook_state_embed"].shape == (cfg.n_timesteps,)
    # normalised effects: tolerances scaled by the pair's conditioning (per-example metrics)
    v = C.action_vector("forward-right")
    m_clean, m_corr = (np.asarray(C.forward(params, cfg, x)[:, -1] @ v) for x in (clean, corrupted))
    # the final residual at the read-out position restores everything; at other positions nothing
    assert_normalised_close(eff["blocks.1.hook_resid_post"][last], 1.0, m_clean, m_corr)
    assert_normalised_close(np.delete(np.asarray(eff["blocks.1.hook_resid_post"]), last), np.zeros(n_pos - 1), m_clean, m_corr)
    # causality: patching positions after the read-out does nothing
    assert_normalised_close(eff["blocks.0.attn.hook_z"][last + 1:], np.zeros((n_pos - last - 1, 2)), m_clean, m_corr)
    # one entry recomputed with an explicit patch through the hooks
    _, cache = C.run_with_cache(params, cfg, clean)
    patched = C.run_with_hooks(params, cfg, corrupted, hooks.patch_from_cache(cache, ("z", 0), head=1, pos=2))
    m = C.logit_diff_metric(patched, "forward-right")
    assert_normalised_close(eff["blocks.0.attn.hook_z"][2, 1], (m - res["corrupted"]) / (res["clean"] - res["corrupted"]),
                            m_clean, m_corr)


# ---------------------------------------------------------------------------------------------
# The write-up's model: reference numbers (original-project.md 10.2, 13.1)
# ---------------------------------------------------------------------------------------------


def test_reference_dla_at_rtg_0_9(overnight):
    cfg, params, inp = overnight
    logits, cache = C.run_with_cache(params, cfg, inp)
    np.testing.assert_allclose(logits[0, 0], [-0.0164, -0.0776, 0.1884], atol=1e-4)
    labels, dla = C.direct_logit_attribution(params, cfg, cache, "forward-right", include_bias=False)
    got = dict(zip(labels, np.asarray(dla[0])))
    ref = {"L0H0": 0.963, "L0H1": -3.370, "L0_b_O": 0.083, "L0_mlp": -0.509, "embed_pos": 0.075}
    for k, v in ref.items():
        assert abs(got[k] - v) < 1e-3, (k, got[k], v)
    assert abs(got["embed_state"] + got["embed_time"] - 2.959) < 1e-3  # the app's "Input Tokens"
    assert abs(sum(got.values()) - 0.200) < 1e-3
    _, with_bias = C.direct_logit_attribution(params, cfg, cache, "forward-right")
    assert abs(float(with_bias.sum()) - 0.266) < 1e-3


def test_reference_attention_vs_rtg(overnight):
    cfg, params, inp = overnight
    scan = C.rtg_scan(params, cfg, inp, jnp.array([-1.0, 0.0, 0.9, 1.0]))
    state_to_rtg = scan["pattern"][:, 0, :, 1, 0]  # (rtg, head)
    ref = [[0.504, 0.552], [0.653, 0.544], [0.767, 0.537], [0.778, 0.537]]
    np.testing.assert_allclose(state_to_rtg, ref, atol=1e-3)
    np.testing.assert_allclose(scan["probs"][0], [0.306, 0.343, 0.351], atol=1e-3)


def test_reference_qk_ov_numbers(overnight):
    cfg, params, _ = overnight
    qk = C.qk_state_rtg(params, cfg)  # (head, C, 7, 7)
    np.testing.assert_allclose(qk[:, 0, 3, 5], [0.21, -0.24], atol=5e-3)  # front cell, object channel
    assert tuple(np.unravel_index(np.abs(qk[0, 0]).argmax(), (7, 7))) == (3, 5)
    ov = C.ov_state(params, cfg)  # (head, C, 7, 7, A)
    np.testing.assert_allclose(ov[:, 0, 3, 5, 2], [-0.26, -0.86], atol=5e-3)
    assert tuple(np.unravel_index(np.abs(ov[1, 0, ..., 2]).argmax(), (7, 7))) == (3, 5)
    np.testing.assert_allclose(C.ov_rtg(params), [[-0.27, -0.36, 0.79], [0.59, 0.30, -1.14]], atol=5e-3)
    np.testing.assert_allclose(C.rtg_embedding_projection(params, jnp.ones(1))[0], 1.13, atol=5e-3)


# ---------------------------------------------------------------------------------------------
# Scenarios
# ---------------------------------------------------------------------------------------------


def test_scenarios_place_objects_where_the_agent_sees_them():
    names, inp = scenarios.scenario_inputs(["ball_ahead", "ball_diag_left", "ball_right", "goal_ahead", "wall_ahead",
                                            "clear_ahead", "start_seed0"], rtg=jnp.arange(7.0))
    obj = np.asarray(inp.obs[:, 0, :, :, 0])  # [x, y]
    assert obj[0, 3, 5] == 6 and obj[1, 2, 5] == 6 and obj[2, 4, 6] == 6
    assert obj[3, 3, 5] == 8 and obj[4, 3, 5] == 2 and (obj[5] != 6).all()
    seed0 = np.array([[2] * 7] + [[2, 2, 2, 1, 1, 1, 1]] * 2 + [[2, 2, 2, 1, 6, 1, 6]] + [[2, 2, 2, 1, 1, 1, 1]] * 3)
    np.testing.assert_array_equal(obj[6].T, seed0)  # original-project.md 1.2, reset(seed=0)
    np.testing.assert_array_equal(inp.rtg[:, 0], np.arange(7.0))
    sampled = scenarios.sample_inputs(jax.random.PRNGKey(0), 20, n_envs=4)
    assert sampled.obs.shape == (20, 1, 7, 7, 3) and int(sampled.timesteps.max()) >= 4
    one_hot = scenarios.scenario_inputs(["ball_ahead"], obs_mode="one_hot")[1]
    assert one_hot.obs.shape == (1, 1, 7, 7, 20) and int(one_hot.obs[0, 0, 3, 5, 6]) == 1


@pytest.mark.parametrize("env_id", ["MiniGrid-Dynamic-Obstacles-5x5-v0", "MiniGrid-Dynamic-Obstacles-6x6-v0",
                                    "MiniGrid-Dynamic-Obstacles-16x16-v0", "MiniGrid-Dynamic-Obstacles-Random-8x8-v0"])
def test_scenarios_mean_the_same_in_every_env(env_id):
    """Built in the model's env, each scenario shows what its name says (front cell (3, 5))."""
    env = EnvConfig(env_id, max_steps=50)
    names = ["clear_ahead", "ball_ahead", "ball_two_ahead", "ball_diag_left", "ball_diag_right", "ball_left",
             "ball_right", "goal_ahead", "wall_ahead", "start_seed0"]
    _, inp = scenarios.scenario_inputs(names, env=env)
    obj = np.asarray(inp.obs[:, 0, :, :, 0])
    front = {n: obj[i, 3, 5] for i, n in enumerate(names)}
    assert front["clear_ahead"] == 1 and front["ball_ahead"] == 6 and front["goal_ahead"] == 8 and front["wall_ahead"] == 2
    assert obj[2, 3, 4] == 6 and obj[3, 2, 5] == 6 and obj[4, 4, 5] == 6 and obj[5, 2, 6] == 6 and obj[6, 4, 6] == 6
    assert not (obj[names.index("clear_ahead")] == 6).any()
    _, start = scenarios.scenario_states(["start_seed0"], env)
    _, reset = env.make()[0].reset(jax.random.PRNGKey(0), env.make()[1])
    np.testing.assert_array_equal(start.agent_pos[0], reset.agent_pos)
