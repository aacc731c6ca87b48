"""dtjax.analysis: the panels the report and the explorer draw, on models of every shape.

Each panel is checked against an independent computation (a forward pass, a hand edit of the
weights, or an identity of the decomposition), not against the circuits function it calls.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dtjax import analysis as A
from dtjax import circuits as C
from dtjax.config import ModelConfig
from dtjax.model import forward
from fixtures import random_params
from tolerance import assert_close, assert_normalised_close

BASE = ModelConfig(d_model=16, n_heads=2, d_head=8, d_mlp=32, max_timestep=20)
SHAPES = {
    "k1": BASE,
    "k3_ln_2layers": BASE.replace(n_layers=2, n_timesteps=3, layer_norm=True),
    "attn_only_linear_time": BASE.replace(attn_only=True, d_mlp=0, n_timesteps=2, time_embedding="linear"),
    "one_hot_3layers": BASE.replace(obs_mode="one_hot", n_layers=3),
}


def _params(cfg, seed=0):
    return random_params(cfg, seed, std=0.3)


def _inputs(cfg, b=3, seed=0):
    rng = np.random.default_rng(seed)
    k = cfg.n_timesteps
    obs = rng.integers(0, 2, (b, k) + cfg.obs_shape) if cfg.obs_mode == "one_hot" else rng.integers(0, 9, (b, k) + cfg.obs_shape)
    return C.Inputs(obs=jnp.asarray(obs.astype(np.uint8)), rtg=jnp.asarray(rng.uniform(-1, 1, (b, k)), jnp.float32),
                    timesteps=jnp.asarray(rng.integers(0, 20, (b, k)), jnp.int32),
                    actions=None if k == 1 else jnp.asarray(rng.integers(0, 3, (b, k - 1)), jnp.int32))


@pytest.fixture(scope="module", params=list(SHAPES))
def model(request):
    cfg = SHAPES[request.param]
    return cfg, _params(cfg), _inputs(cfg)


V = C.action_vector("forward-right")


def test_token_labels():
    assert A.token_labels(1) == ["R_t", "s_t"]
    assert A.token_labels(3) == ["R_t-2", "s_t-2", "a_t-2", "R_t-1", "s_t-1", "a_t-1", "R_t", "s_t"]
    assert A.token_labels(2, 6) == ["R_t-1", "s_t-1", "a_t-1", "R_t", "s_t", "a_t"]


def test_state_panels(model):
    cfg, params, inp = model
    out = A.state_panels(params, cfg, inp, V)
    logits = forward(params, cfg, inp.obs, inp.rtg, inp.timesteps, inp.actions)[:, -1]
    assert_close(out["logits"], logits)
    assert_close(out["probs"].sum(-1), np.ones(inp.batch))
    assert_close(out["dla"].sum(-1), logits @ V)  # the components and biases sum to the logit difference
    assert out["dla"].shape[1] == len(A.dla_labels(cfg, inp))
    n = A.n_tokens(inp)
    assert out["pattern"].shape == (cfg.n_layers, inp.batch, cfg.n_heads, n, n)
    pos = 3 * (inp.n_timesteps - 1) + 1
    assert_close(out["attn_to_rtg"], out["pattern"][:, :, :, pos, pos - 1])
    if not cfg.layer_norm:  # the activation projection sums to the state embedding's direct contribution
        assert_close(out["state_encoder"].sum((-1, -2, -3)), out["dla"][:, A.dla_labels(cfg, inp).index("embed_state")])


def test_rtg_scan_panel_is_the_model_at_each_rtg(model):
    cfg, params, inp = model
    rtgs = jnp.asarray([-2.0, 0.5, 3.0])
    scan = A.rtg_scan_panel(params, cfg, inp, rtgs, V)
    assert scan["logits"].shape == (inp.batch, 3, cfg.n_actions)
    for j, r in enumerate(np.asarray(rtgs)):
        rtg = inp.rtg - inp.rtg[:, -1:] + r  # the whole history shifted: rewards between timesteps kept
        logits = forward(params, cfg, inp.obs, rtg, inp.timesteps, inp.actions)[:, -1]
        assert_close(scan["logits"][:, j], logits)
        assert_close(scan["dla"][:, j].sum(-1), logits @ V)


def test_rtg_scan_keeps_padding_at_rtg_zero():
    """At an episode's first step a K=3 context is left-padded (RTG 0); the scan moves only the real RTG."""
    from dtjax import scenarios

    cfg = SHAPES["k3_ln_2layers"]
    params = _params(cfg)
    _, inp = scenarios.scenario_inputs(["ball_ahead"], rtg=0.5, n_timesteps=3)
    scan = A.rtg_scan_panel(params, cfg, inp, jnp.asarray([-1.0, 2.0]), V)
    for j, r in enumerate((-1.0, 2.0)):
        logits = forward(params, cfg, inp.obs, jnp.asarray([[0.0, 0.0, r]]), inp.timesteps, inp.actions)[:, -1]
        assert_close(scan["logits"][:, j], logits)


def test_weight_panels_by_hand(model):
    """One observation feature's OV and state-encoder entries equal the weight products by hand."""
    cfg, params, _ = model
    w = A.weight_panels(params, cfg, V)
    c = cfg.obs_shape[-1]
    assert w["qk"].shape == (cfg.n_layers, cfg.n_heads, c, 7, 7) and w["ov"].shape[-1] == cfg.n_actions
    assert_close(w["ov_dir"], w["ov"] @ np.asarray(V))
    # W_state row of channel 0, cell (3, 5), through head 0's OV and the unembedding, by hand
    row = np.asarray(params["W_state"]).reshape(c, 7, 7, cfg.d_model)[0, 3, 5]
    a = params["blocks_0"]["attn"]
    by_hand = row @ np.asarray(a["W_V"][0]) @ np.asarray(a["W_O"][0]) @ np.asarray(params["W_U"])
    assert_close(w["ov"][0, 0, 0, 3, 5], by_hand)
    assert_close(w["state_encoder"][0, 3, 5], row @ np.asarray(params["W_U"]) @ np.asarray(V))


def test_ablation_panel(model):
    cfg, params, inp = model
    out = A.ablation_panel(params, cfg, inp, "zero")
    labels = A.ablation_labels(cfg)
    assert out["probs"].shape == (len(labels), inp.batch, cfg.n_actions)
    assert ("L0_mlp" in labels) != cfg.attn_only
    assert_close(out["probs"][0], A.state_panels(params, cfg, inp, V)["probs"])
    # ablating head L0H1 = zeroing its rows of W_O (TL zero ablation keeps b_O)
    p2 = jax.tree.map(lambda x: x, params)
    p2["blocks_0"]["attn"]["W_O"] = params["blocks_0"]["attn"]["W_O"].at[1].set(0.0)
    logits = forward(p2, cfg, inp.obs, inp.rtg, inp.timesteps, inp.actions)[:, -1]
    assert_close(out["logits"][labels.index("L0H1")], logits)


def _metric(params, cfg, inp):
    """The per-example metric the patching panel normalises: last-token logits along V."""
    return np.asarray(forward(params, cfg, inp.obs, inp.rtg, inp.timesteps, inp.actions)[:, -1] @ V)


def test_patching_panel(model):
    cfg, params, inp = model
    # another batch: an RTG flip alone moved the LN model's metric by 1e-4 of its size (effects
    # that are 1 in exact arithmetic then carry float32 errors ~1e-1); here conditioning is < 50
    corrupted = _inputs(cfg, seed=1)
    last = f"blocks.{cfg.n_layers - 1}.hook_resid_post"
    out = A.patching_panel(params, cfg, inp, corrupted, V, names=["hook_rtg_embed", "blocks.0.attn.hook_z", last])
    n = A.n_tokens(inp)
    assert out["matrix"].shape == (1 + cfg.n_heads + 1, n) and out["columns"] == A.token_labels(inp.n_timesteps, n)
    row = out["rows"].index(last)
    m_clean, m_corr = _metric(params, cfg, inp), _metric(params, cfg, corrupted)
    # the final residual at the last state token is the whole effect
    assert_normalised_close(out["matrix"][row, n - 1], 1.0, m_clean, m_corr)
    assert np.isnan(out["matrix"][0, inp.n_timesteps:]).all()  # per-timestep hook: K positions only
    # earlier tokens: the logit reads only the last
    assert_normalised_close(out["matrix"][row, :n - 1], np.zeros(n - 1), m_clean, m_corr)


def test_left_padded_scenarios_match_closed_loop_evaluation():
    """A K=3 model's first decision in dtjax.evaluate is what it predicts on the left-padded
    scenario of the env's reset state (the padding convention of training and evaluation)."""
    from dtjax import scenarios
    from dtjax.config import EnvConfig
    from dtjax.evaluate import Window, _policy_logits

    cfg = SHAPES["k3_ln_2layers"]
    params = _params(cfg)
    env = EnvConfig("MiniGrid-Dynamic-Obstacles-Random-8x8-v0", max_steps=20)
    _, inp = scenarios.scenario_inputs(["start_seed0"], rtg=0.5, env=env, n_timesteps=3)
    assert inp.obs.shape[:2] == (1, 3) and inp.actions.shape == (1, 2) and (np.asarray(inp.actions) == 3).all()
    assert (np.asarray(inp.obs[:, :2]) == 0).all() and (np.asarray(inp.rtg[0]) == [0, 0, 0.5]).all()
    # evaluate's history at t = 0: the same padding, K actions (the last one padding too)
    obs0 = jnp.asarray(np.asarray(inp.obs[:, -1]))
    hist = Window(obs=jnp.concatenate([jnp.zeros_like(inp.obs[:, :2]), obs0[:, None]], 1), rtg=jnp.asarray([[0.0, 0.0, 0.5]]),
                  timesteps=jnp.zeros((1, 3), jnp.int32), actions=jnp.full((1, 3), 3, jnp.int32))
    start = Window.start(obs0, jnp.asarray([0.5]), 0, 3, 3)  # the window evaluate starts an episode with
    for a, b in zip(jax.tree.leaves(start), jax.tree.leaves(hist)):
        np.testing.assert_array_equal(a, b)
    assert_close(_policy_logits(params, cfg, hist, {}), A.state_panels(params, cfg, inp, V)["logits"])


def test_ablation_set_panel_and_closed_loop_by_hand():
    """Zero-ablating a set of heads = zeroing their W_O rows (TL zero ablation keeps b_O), in one
    forward pass and in closed-loop episodes; all-False masks are the clean model."""
    from dtjax.config import EnvConfig
    from dtjax.evaluate import evaluate

    cfg = SHAPES["k1"]
    params, inp = _params(cfg), _inputs(cfg)
    means = C.ablation_means(params, cfg, inp)
    edited = jax.tree.map(lambda x: x, params)
    edited["blocks_0"]["attn"]["W_O"] = params["blocks_0"]["attn"]["W_O"].at[:].set(0.0)
    masks = A.ablation_set_masks(cfg, ["L0H0", "L0H1"])
    out = A.ablation_set_panel(params, cfg, inp, V, masks, means, False)
    logits = forward(edited, cfg, inp.obs, inp.rtg, inp.timesteps, inp.actions)[:, -1]
    assert_close(out["logits"], logits)
    assert_close(out["dla"].sum(-1), logits @ V)
    none = A.ablation_set_panel(params, cfg, inp, V, A.ablation_set_masks(cfg), means, True)
    assert_close(none["logits"], forward(params, cfg, inp.obs, inp.rtg, inp.timesteps, inp.actions)[:, -1])
    with pytest.raises(ValueError, match="unknown component"):
        A.ablation_set_masks(cfg, ["L3H0"])
    env, env_params = EnvConfig("MiniGrid-Dynamic-Obstacles-5x5-v0", max_steps=8).make()
    key = jax.random.PRNGKey(3)
    res = A.closed_loop_panel(params, cfg, env, env_params, key, 0.5, 6, masks, means, False)
    for row, p in enumerate((params, edited)):
        ref = evaluate(p, cfg, env, env_params, key, [0.5], 6)
        assert_close(res["mean_return"][row], ref.returns.mean())
        assert_close(res["hit_rate"][row], ref.hit.mean())


def test_explorer_mean_ablation_uses_the_reports_reference():
    """K > 1: the explorer's mean-ablation means are ``circuits.ablation_means`` over
    ``analysis.reference_inputs``, the report's reference: real K-step rollout windows with the
    current action slot padded (3K tokens), not episodes' first steps left-padded."""
    from explorer_models import ENV, tiny_model

    model = tiny_model()
    cfg, k = model.cfg, model.cfg.n_timesteps
    ref = A.reference_inputs(jax.random.PRNGKey(0), model.mean_samples, cfg, ENV)
    assert ref.actions.shape == (model.mean_samples, k) and bool((ref.actions[:, -1] == cfg.n_actions).all())
    assert bool((ref.rtg[:, -2] != 0).any())  # windows that reach past an episode's first step
    want = C.ablation_means(model.params, cfg, ref)
    got = model.get_means()
    assert jax.tree.structure(got) == jax.tree.structure(want)
    jax.tree.map(assert_close, got, want)
