"""dtjax.circuits past the original: attribution patching, the edge graph (EAP, path patching, ACDC),
logit lens, composition scores and steering, checked by the invariants of
docs next-capabilities §3 on tiny random 1- and 2-layer models (K = 1..3, with and without
LayerNorm, attention-only), each against an independent path through the model's hooks."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import envs
from dtjax import circuits as C
from dtjax import hooks
from dtjax.circuits import graph as G
from dtjax.config import ModelConfig
from dtjax.evaluate import evaluate
from fixtures import random_params
from tolerance import assert_close, assert_normalised_close

CFG = ModelConfig(n_layers=2, d_model=16, n_heads=2, d_head=8, d_mlp=32, n_timesteps=2, max_timestep=20)
CFG_LN = CFG.replace(layer_norm=True, n_timesteps=3)
CFG_ATTN = CFG.replace(attn_only=True, d_mlp=0)
CFG_1L = CFG.replace(n_layers=1, n_timesteps=1, n_ctx=3)
CONFIGS = {"noLN": CFG, "LN": CFG_LN, "attn_only": CFG_ATTN, "1L": CFG_1L}


def _noisy_params(cfg, seed=0):
    return random_params(cfg, seed)


def _inputs(cfg, b=4, seed=0, actions="full"):
    rng = np.random.default_rng(seed)
    k = cfg.n_timesteps
    acts = {"full": rng.integers(0, 4, (b, k)), "short": rng.integers(0, 4, (b, k - 1)), "none": None}[actions]
    return C.Inputs(obs=jnp.asarray(rng.integers(0, 9, (b, k) + cfg.obs_shape).astype(np.uint8)),
                    rtg=jnp.asarray(rng.uniform(-1, 1, (b, k)).astype(np.float32)),
                    timesteps=jnp.asarray(rng.integers(0, cfg.max_timestep, (b, k)).astype(np.int32)),
                    actions=None if acts is None else jnp.asarray(acts.astype(np.int32)))


@pytest.fixture(scope="module")
def models():
    return {name: _noisy_params(cfg, i) for i, (name, cfg) in enumerate(CONFIGS.items())}


def _pair(cfg, actions=None):
    """A clean/corrupted pair; tokens: 3K (R, s, a) by default, 3K - 1 (no last action) for the
    attention-only model, 2 (R, s) for K = 1 without actions."""
    actions = actions or ("short" if cfg.attn_only else "full")
    return _inputs(cfg, seed=3, actions=actions), _inputs(cfg, seed=4, actions=actions)


def _metric(logits, v="forward-right"):
    return float(C.logit_diff_metric(logits, v))


def _metrics(params, cfg, *inputs, v="forward-right"):
    """Per-example metrics of each inputs (their magnitudes set a normalised effect's float32 error)."""
    return [np.asarray(C.forward(params, cfg, x)[:, -1] @ C.action_vector(v)) for x in inputs]


def _effect(m, res):
    """(m - m_corr) / (m_clean - m_corr) with the metrics of a result dict."""
    return (m - float(res["corrupted"])) / (float(res["clean"]) - float(res["corrupted"]))


# ---------------------------------------------------------------------------------------------
# Attribution patching
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, hooks_", [
    ("noLN", ["blocks.1.hook_resid_post", "blocks.1.hook_mlp_out"]),
    ("attn_only", ["blocks.1.attn.hook_z", "blocks.1.attn.hook_v"]),
])
def test_attribution_patching_is_exact_where_the_path_is_affine(models, name, hooks_):
    """Invariant 1: AtP = ActP (same structure, same normalisation) where the metric is affine in the
    activation: the final residual and MLP output, a last-layer head's z or v without an MLP after."""
    cfg = CONFIGS[name]
    clean, corr = _pair(cfg)
    act = C.activation_patching(models[name], cfg, clean, corr, names=hooks_)
    atp = C.attribution_patching(models[name], cfg, clean, corr, names=hooks_)
    assert_close(atp["clean"], act["clean"])
    assert_close(atp["corrupted"], act["corrupted"])
    assert set(atp["effects"]) == set(hooks_)
    for h in hooks_:
        assert atp["effects"][h].shape == act["effects"][h].shape, h
        assert_normalised_close(atp["effects"][h], act["effects"][h], *_metrics(models[name], cfg, clean, corr), rtol=1e-4,
                                err_msg=h)
        assert float(jnp.abs(act["effects"][h]).max()) > 1e-2, h  # not trivially zero


def test_attribution_patching_taylor_order(models):
    """Invariant 2: along a(eps) = a_corr + eps (a_clean - a_corr), |ActP(eps) - eps AtP| = O(eps^2);
    through LayerNorm and attention the full patch (eps = 1) is then not what AtP says."""
    cfg, params = CFG_LN, models["LN"]
    clean, corr = _pair(cfg)
    name = "blocks.1.hook_resid_pre"
    atp = C.attribution_patching(params, cfg, clean, corr, names=[name], normalise=False)
    first = float(atp["effects"][name].sum())  # the whole hook moved: the sum over its nodes
    _, cc = C.run_with_cache(params, cfg, clean)
    _, kc = C.run_with_cache(params, cfg, corr)
    m_corr = float(atp["corrupted"])
    errs = []
    for eps in (0.2, 0.1, 0.05, 1.0):
        value = kc[name] + eps * (cc[name] - kc[name])
        m = _metric(C.run_with_hooks(params, cfg, corr, {name: hooks.Replace(True, value)}))
        errs.append(abs(m - m_corr - eps * first))
    assert abs(first) > 1e-2 and errs[0] > 1e-4 * abs(first)  # a real second-order term to measure
    ratios = [errs[0] / errs[1], errs[1] / errs[2]]
    assert all(3.0 < r < 5.0 for r in ratios), (errs, ratios)
    assert errs[3] > 0.05 * abs(first)  # the test above would fail here: AtP is not exact


def test_integrated_gradients_converge_to_activation_patching(models):
    """Invariant 3: the m-step integrated gradient of one node converges to its ActP; summed over a
    hook it converges to patching the whole hook (compared with plain AtP, the 1-point left rule)."""
    cfg, params = CFG_LN, models["LN"]  # smooth (LayerNorm, softmax): the midpoint rule converges fast
    clean, corr = _pair(cfg)
    corr = corr.replace(obs=clean.obs.at[:, 0].set(corr.obs[:, 0]))  # the inputs differ at timestep 0 only
    node, whole = "hook_state_embed", "blocks.0.hook_attn_out"
    act = C.activation_patching(params, cfg, clean, corr, names=[node])["effects"][node]
    ig = [C.attribution_patching(params, cfg, clean, corr, names=[node, whole], ig_steps=n) for n in (0, 4)]
    errs = [abs(float(r["effects"][node][0] - act[0])) for r in ig]
    assert errs[1] < errs[0] / 4 and errs[1] < 1e-2 * abs(float(act[0])), errs
    _, cache = C.run_with_cache(params, cfg, clean)
    exact = _effect(_metric(C.run_with_hooks(params, cfg, corr, hooks.patch_from_cache(cache, whole))), ig[0])
    errs = [abs(float(r["effects"][whole].sum()) - exact) for r in ig]
    assert errs[1] < errs[0] / 4, errs


def test_attribution_patching_zero_cases(models):
    """Invariant 4: all zeros when clean == corrupted; exactly zero at positions after the read-out."""
    cfg, params = CFG, models["noLN"]
    clean, corr = _pair(cfg)
    same = C.attribution_patching(params, cfg, clean, clean, normalise=False)["effects"]
    assert all(float(jnp.abs(e).max()) == 0.0 for e in same.values())
    eff = C.attribution_patching(params, cfg, clean, corr)["effects"]
    assert len(eff) == len(hooks.hook_names(cfg)) - 1  # every hook but the logits
    last = C.state_pos(cfg.n_timesteps)
    for name, e in eff.items():
        if name.startswith("hook_") and name not in ("hook_embed", "hook_pos_embed"):
            after = e[cfg.n_timesteps:] if name != "hook_action_embed" else e[cfg.n_timesteps - 1:]
        else:
            after = e[last + 1:]
        assert float(jnp.abs(after).max(initial=0.0)) == 0.0, name
    assert float(jnp.abs(eff["blocks.0.attn.hook_k"][last]).max()) > 0.0


# ---------------------------------------------------------------------------------------------
# The edge graph: the graph forward against the model
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, actions", [("noLN", "full"), ("LN", "full"), ("attn_only", "short"), ("1L", "none")])
def test_graph_forward_reproduces_the_model(models, name, actions):
    cfg, params = CONFIGS[name], models[name]
    clean, corr = _pair(cfg, actions)
    g = G.inputs_graph(cfg, clean)
    assert ("embed_action" in g.senders) == (actions != "none") and g.receivers[-1] == "logits"
    assert len(g.senders) == 4 + (actions != "none") + cfg.n_layers * (cfg.n_heads + (not cfg.attn_only))
    assert len(g.receivers) == cfg.n_layers * (3 * cfg.n_heads + (not cfg.attn_only)) + 1
    clean_logits, p_clean = C.sender_outputs(params, cfg, clean)
    corr_logits, p_corr = C.sender_outputs(params, cfg, corr)
    _, cache = C.run_with_cache(params, cfg, clean)
    assert_close(p_clean[: 4 + (actions != "none")].sum(0), cache["blocks.0.hook_resid_pre"])
    logits, outs = C.graph_forward(params, cfg, clean, p_corr, np.zeros(g.allowed.shape), return_outputs=True)
    assert_close(logits, clean_logits)
    assert_close(outs, p_clean)
    logits, outs = C.graph_forward(params, cfg, clean, p_corr, np.ones(g.allowed.shape), return_outputs=True)
    assert_close(logits, corr_logits)
    assert_close(outs[: 4 + (actions != "none")], p_clean[: 4 + (actions != "none")])  # a run's own embeddings


def test_edge_patches_equal_patches_through_the_hooks(models):
    """Edge-level patching against explicit interventions on the model (LayerNorm on)."""
    cfg, params = CFG_LN, models["LN"]
    clean, corr = _pair(cfg)
    g = G.inputs_graph(cfg, corr)
    _, p_clean = C.sender_outputs(params, cfg, clean)
    _, p_corr = C.sender_outputs(params, cfg, corr)
    _, cc = C.run_with_cache(params, cfg, clean)
    _, kc = C.run_with_cache(params, cfg, corr)
    a1, m1 = params["blocks_1"]["attn"], params["blocks_1"]["mlp"]

    def edge(s, r):
        return C.graph_forward(params, cfg, corr, p_clean, g.edge_mask([(s, r)]))

    # embed_state -> L1H0.v: head 0's value input alone gets the clean state embedding
    i = g.sender_index("embed_state")
    x = C.layer_norm(params, cfg, "blocks.1.ln1", kc["blocks.1.hook_resid_pre"] + p_clean[i] - p_corr[i])
    v0 = jnp.einsum("bpd,de->bpe", x, a1["W_V"][0]) + a1["b_V"][0]
    ivs = {"blocks.1.attn.hook_v": hooks.Apply(lambda v, new: v.at[:, :, 0].set(new), v0)}
    assert_close(edge("embed_state", "L1H0.v"), C.run_with_hooks(params, cfg, corr, ivs))
    # L0H1 -> L1_mlp: the MLP input alone gets head L0H1's clean output
    i = g.sender_index("L0H1")
    x = C.layer_norm(params, cfg, "blocks.1.ln2", kc["blocks.1.hook_resid_mid"] + p_clean[i] - p_corr[i])
    ivs = {"blocks.1.mlp.hook_pre": hooks.Replace(True, x @ m1["W_in"] + m1["b_in"])}
    assert_close(edge("L0H1", "L1_mlp"), C.run_with_hooks(params, cfg, corr, ivs))
    # every outgoing edge of a sender = activation patching of its output hook
    out_of = g.allowed * (np.arange(len(g.senders)) == g.sender_index("L0H1"))[:, None]
    assert_close(C.graph_forward(params, cfg, corr, p_clean, out_of),
                 C.run_with_hooks(params, cfg, corr, hooks.patch_from_cache(cc, ("result", 0), head=1)))
    # every incoming edge of a receiver = its input from the clean run (the MLP's output becomes clean)
    into = g.allowed * (np.arange(len(g.receivers)) == g.receivers.index("L0_mlp"))[None, :]
    assert_close(C.graph_forward(params, cfg, corr, p_clean, into),
                 C.run_with_hooks(params, cfg, corr, hooks.patch_from_cache(cc, ("mlp_out", 0))))


# ---------------------------------------------------------------------------------------------
# Edge attribution patching
# ---------------------------------------------------------------------------------------------


_OUTPUT_HOOK = {"embed_rtg": "hook_rtg_embed", "embed_state": "hook_state_embed", "embed_action": "hook_action_embed",
                "embed_time": "hook_time_embed", "embed_pos": "hook_pos_embed"}


def _node_attribution(atp, sender):
    if sender in _OUTPUT_HOOK:
        return float(atp[_OUTPUT_HOOK[sender]].sum())
    layer = int(sender[1])
    if sender.endswith("_mlp"):
        return float(atp[f"blocks.{layer}.hook_mlp_out"].sum())
    return float(atp[f"blocks.{layer}.attn.hook_result"][:, int(sender.split("H")[1])].sum())


@pytest.mark.parametrize("name", ["noLN", "LN", "attn_only"])
def test_edge_scores_sum_to_node_attribution(models, name):
    """Invariant 5: the EAP scores of a sender's outgoing edges sum to its attribution-patching score
    (through the graph vs through the model's hooks), denoising and noising."""
    cfg, params = CONFIGS[name], models[name]
    clean, corr = _pair(cfg)
    g = G.inputs_graph(cfg, clean)
    names = list(_OUTPUT_HOOK.values()) + [f"blocks.{l}.attn.hook_result" for l in range(cfg.n_layers)] + \
        ([] if cfg.attn_only else [f"blocks.{l}.hook_mlp_out" for l in range(cfg.n_layers)])
    modes = [("denoising", clean, corr)] + ([("noising", corr, clean)] if name == "LN" else [])
    for mode, a, b in modes:
        eap = C.edge_attribution_patching(params, cfg, clean, corr, mode=mode)
        atp = C.attribution_patching(params, cfg, a, b, names=names)["effects"]
        assert eap["edges"] == g.edges and eap["scores"].shape == (len(g.edges),)
        sums = np.nansum(np.asarray(eap["matrix"]), 1)
        node = np.array([_node_attribution(atp, s) for s in g.senders])
        assert_close(sums, node, rtol=1e-4, err_msg=mode)
        assert np.abs(node).max() > 0.1 and sums[g.sender_index("embed_pos")] == 0.0


def test_eap_ig_scores_sum_to_the_whole_difference(models):
    cfg, params = CFG_LN, models["LN"]
    clean, corr = _pair(cfg)
    sums = [float(C.edge_attribution_patching(params, cfg, clean, corr, ig_steps=n)["scores"].sum()) for n in (0, 8)]
    assert abs(sums[1] - 1.0) < 0.25 * abs(sums[0] - 1.0) and abs(sums[1] - 1.0) < 0.02, sums


# ---------------------------------------------------------------------------------------------
# Path patching
# ---------------------------------------------------------------------------------------------


def _dla_difference(params, cfg, clean, corr, direction="forward-right"):
    _, cc = C.run_with_cache(params, cfg, clean)
    _, kc = C.run_with_cache(params, cfg, corr)
    labels, dc = C.direct_logit_attribution(params, cfg, cc, direction)
    _, dk = C.direct_logit_attribution(params, cfg, kc, direction)
    return dict(zip(labels, np.asarray((dc - dk).mean(0))))


@pytest.mark.parametrize("name", ["1L", "noLN"])
def test_path_patching_identities(models, name):
    """Invariant 6: sender -> logits with MLPs frozen = DLA difference (every sender at once);
    recomputed MLPs and no later head = activation patching of the head; 1 layer: every head ->
    every receiver = activation patching of hook_attn_out. Invariant 7: the full cut is the clean run."""
    cfg, params = CONFIGS[name], models[name]
    actions = "none" if cfg.n_timesteps == 1 else "full"
    clean, corr = _pair(cfg, actions)
    _, cc = C.run_with_cache(params, cfg, clean)
    metrics = _metrics(params, cfg, clean, corr)
    sweep = C.path_patching_senders(params, cfg, clean, corr, "logits", freeze_mlps=True)
    norm = float(sweep["clean"]) - float(sweep["corrupted"])
    dla = _dla_difference(params, cfg, clean, corr)
    for s, e in zip(sweep["senders"], np.asarray(sweep["effects"])):
        assert abs(e * norm - dla.get(s, 0.0)) < 1e-4 * max(1.0, abs(norm)), s  # rtg/action: no direct path
    last = cfg.n_layers - 1
    for h in range(cfg.n_heads):
        pp = C.path_patching(params, cfg, clean, corr, f"L{last}H{h}", "logits", freeze_mlps=False)
        m = _metric(C.run_with_hooks(params, cfg, corr, hooks.patch_from_cache(cc, ("z", last), head=h)))
        assert_normalised_close(pp["effect"], _effect(m, pp), *metrics)
    heads = [f"L0H{h}" for h in range(cfg.n_heads)]
    full = C.path_patching(params, cfg, clean, corr, G.inputs_graph(cfg, clean).senders, "logits")
    assert_normalised_close(full["effect"], 1.0, *metrics)
    if cfg.n_layers == 1:
        rest = [r for r in G.inputs_graph(cfg, clean).receivers if not r.startswith("L0H")]
        pp = C.path_patching(params, cfg, clean, corr, heads, rest, freeze_mlps=False)
        m = _metric(C.run_with_hooks(params, cfg, corr, hooks.patch_from_cache(cc, ("attn_out", 0))))
        assert_normalised_close(pp["effect"], _effect(m, pp), *metrics)
        frozen = C.path_patching(params, cfg, clean, corr, heads, rest, freeze_mlps=True)
        assert abs(float(frozen["effect"]) - float(pp["effect"])) > 1e-3  # the flag matters


# ---------------------------------------------------------------------------------------------
# ACDC and pruning by attribution
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dead_head_model(models):
    """The 2-layer model with head L0H1 silenced (W_O = 0): its edges cannot matter."""
    p = models["noLN"]
    a = dict(p["blocks_0"]["attn"], W_O=p["blocks_0"]["attn"]["W_O"].at[1].set(0.0))
    return dict(p, blocks_0=dict(p["blocks_0"], attn=a))


def test_acdc_limits(dead_head_model):
    """Invariant 8: tau -> inf keeps nothing (the corrupted run); tau = 0 keeps a circuit as good as
    the model, prunes exactly the edges that cannot matter, and keeps every edge whose removal alone
    changes the output. The reported KL is recomputed from the final mask and equals the sum of the
    accepted steps."""
    cfg, params = CFG, dead_head_model
    clean, corr = _pair(cfg)
    g = G.inputs_graph(cfg, clean)
    metrics = _metrics(params, cfg, clean, corr)
    none = C.acdc(params, cfg, clean, corr, tau=np.inf)
    assert none["n_edges"] == 0 and none["edges"] == []
    assert_normalised_close(none["faithfulness"], 0.0, *metrics)
    corr_logits = C.forward(params, cfg, corr)
    assert_close(none["kl"], G.last_token_kl(C.forward(params, cfg, clean), corr_logits), rtol=1e-4)
    full = C.acdc(params, cfg, clean, corr, tau=0.0)
    assert_normalised_close(full["faithfulness"], 1.0, *metrics)
    assert float(full["kl"]) < 1e-6
    kept = set(full["edges"])
    assert not any(s in ("embed_pos", "L0H1") for s, _ in kept)  # identical in both runs / silenced
    assert not any(r.startswith("L0H1.") for _, r in kept)  # inputs of a head whose outputs are all pruned
    assert len(full["steps"]) == none["n_total"] == len(g.edges)
    # each edge alone: the exact effect of removing it from the full graph (one vmap over edges)
    _, patch = C.sender_outputs(params, cfg, corr)
    idx = np.argwhere(g.allowed)
    masks = np.zeros((len(idx),) + g.allowed.shape, np.float32)
    masks[np.arange(len(idx)), idx[:, 0], idx[:, 1]] = 1.0
    ref = C.graph_forward(params, cfg, clean, patch, np.zeros(g.allowed.shape))
    single = jax.vmap(lambda m: G.last_token_kl(ref, C.graph_forward(params, cfg, clean, patch, m)))(jnp.asarray(masks))
    for e, kl in zip(g.edges, np.asarray(single)):
        if kl > 1e-5:
            assert e in kept, (e, kl)
    accepted = sum(s["delta_kl"] for s in full["steps"] if s["removed"] and not s["orphan"])
    assert abs(accepted - float(full["kl"])) < 1e-5
    mid = C.acdc(params, cfg, clean, corr, tau=0.05)
    assert 0 < mid["n_edges"] < full["n_edges"] and float(mid["kl"]) > 0.0


def test_prune_by_attribution(models):
    cfg, params = CFG, models["noLN"]
    clean, corr = _pair(cfg)
    g = G.inputs_graph(cfg, clean)
    metrics = _metrics(params, cfg, clean, corr)
    res = C.prune_by_attribution(params, cfg, clean, corr, [0, 5, len(g.edges)])
    assert_normalised_close(np.asarray(res["faithfulness"])[[0, 2]], [0.0, 1.0], *metrics)
    assert len(res["edges"][1]) == 5 and set(res["edges"][1]) == set(res["ranking"][:5])
    assert np.all(np.diff(np.abs(res["scores"])) <= 0)
    check = C.circuit_faithfulness(params, cfg, clean, corr, res["edges"][1])
    assert_normalised_close(check["faithfulness"], res["faithfulness"][1], *metrics)
    assert check["n_edges"] == 5


# ---------------------------------------------------------------------------------------------
# Logit lens, composition scores, steering
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["noLN", "LN"])
def test_logit_lens(models, name):
    cfg, params = CONFIGS[name], models[name]
    inp = _inputs(cfg)
    lens = C.logit_lens(params, cfg, inp, "forward-right")
    logits, cache = C.run_with_cache(params, cfg, inp)
    assert lens["accumulated_labels"] == ["0_pre", "0_mid", "1_pre", "1_mid", "final_post"]
    assert lens["layer_labels"] == ["embed", "pos_embed", "0_attn_out", "0_mlp_out", "1_attn_out", "1_mlp_out"]
    along = logits[:, -1] @ C.action_vector("forward-right")
    assert_close(lens["accumulated_logits"][:, -1], logits[:, -1])
    assert_close(lens["accumulated"][:, -1] + params["b_U"] @ C.action_vector("forward-right"), along, rtol=1e-4)
    assert_close(lens["layers"].sum(1) + lens["bias"], along, rtol=1e-4)
    assert_close(lens["components"].sum(1) + lens["bias"], along, rtol=1e-4)
    # the first entry: the embeddings alone through the final LN and W_U (hook_embed + hook_pos_embed)
    x = C.layer_norm(params, cfg, "ln_final", cache["hook_embed"][:, -2] + cache["hook_pos_embed"][:, -2])
    assert_close(lens["accumulated_logits"][:, 0], x @ params["W_U"] + params["b_U"], rtol=1e-4)
    if not cfg.layer_norm:  # each step of the accumulated lens is what the layers in between add
        steps = np.diff(np.asarray(lens["accumulated"]), axis=1)
        assert_close(steps, np.asarray(lens["layers"])[:, 2:], rtol=1e-4)


def test_composition_scores_match_dense_products(models):
    params, cfg = models["noLN"], CFG
    scores = C.all_composition_scores(params, cfg)
    assert scores["labels"] == ["L0H0", "L0H1", "L1H0", "L1H1"]
    a = [{k: np.asarray(v, np.float64) for k, v in params[f"blocks_{l}"]["attn"].items()} for l in range(2)]
    ov = [[a[l]["W_V"][h] @ a[l]["W_O"][h] for h in range(2)] for l in range(2)]
    qk = [[a[l]["W_Q"][h] @ a[l]["W_K"][h].T for h in range(2)] for l in range(2)]
    right = {"Q": qk, "K": [[m.T for m in row] for row in qk], "V": ov}
    for mode in "QKV":
        s = np.asarray(scores[mode])
        assert s.shape == (2, 2, 2, 2) and np.all(s[1] == 0) and np.all(s[0, :, 0] == 0)
        for h1 in range(2):
            for h2 in range(2):
                left, r = ov[0][h1], right[mode][1][h2]
                dense = np.linalg.norm(left @ r) / (np.linalg.norm(left) * np.linalg.norm(r))
                np.testing.assert_allclose(s[0, h1, 1, h2], dense, rtol=1e-4)
    with pytest.raises(ValueError, match="composition mode"):
        C.composition_scores(params, cfg, "O")


def test_steering_coefficients_interpolate_clean_and_corrupted(models):
    cfg, params = CFG, models["noLN"]
    clean, corr = _pair(cfg)
    res = C.steer_logits(params, cfg, clean, corr, ("resid_pre", 0), [0.0, 1.0, 0.5])
    assert res["logits"].shape == (3, clean.batch, 3)
    assert_close(res["logits"][0], C.forward(params, cfg, clean)[:, -1])
    assert_close(res["logits"][1], C.forward(params, cfg, corr)[:, -1])  # resid_pre of layer 0 cuts everything
    assert_close(res["metric"][:2], [res["clean"], res["corrupted"]])
    # at a hook that is not a cut, coeff 1 sets that activation to its corrupted value
    z = C.steer_logits(params, cfg, clean, corr, ("z", 1), [1.0])
    _, kc = C.run_with_cache(params, cfg, corr)
    assert_close(z["logits"][0], C.run_with_hooks(params, cfg, clean, hooks.patch_from_cache(kc, ("z", 1)))[:, -1])


@pytest.mark.slow
def test_steering_in_closed_loop():
    """Coefficient 0 reproduces the unsteered episodes; a large push changes them."""
    cfg = CFG_1L.replace(d_model=8, d_head=4, d_mlp=8)
    params = _noisy_params(cfg, 7)
    env, env_params = envs.make("MiniGrid-Dynamic-Obstacles-8x8-v0", max_steps=12)
    clean, corr = _pair(cfg, "none")
    vec = C.steering_vector(params, cfg, clean, corr, ("resid_pre", 0))
    assert vec.shape == (2, cfg.d_model)
    key = jax.random.PRNGKey(0)
    res = C.steer_returns(params, cfg, env, env_params, key, [0.5, 1.0], 6, 50.0 * vec, ("resid_pre", 0), [0.0, 1.0])
    plain = evaluate(params, cfg, env, env_params, key, [0.5, 1.0], 6)
    assert res["mean_return"].shape == (2, 2)
    np.testing.assert_array_equal(res["mean_return"][0], plain.returns.mean(1))
    changed = [not np.array_equal(res[k][1], res[k][0]) for k in ("mean_return", "hit_rate", "timeout_rate")]
    assert any(changed)


def test_bad_arguments_are_one_line_errors(models):
    cfg, params = CFG, models["noLN"]
    clean, corr = _pair(cfg)
    short = corr.take(np.arange(2))
    for fn in (C.attribution_patching, C.activation_patching, C.edge_attribution_patching, C.acdc):
        args = (0.1,) if fn is C.acdc else ()
        with pytest.raises(ValueError, match="same shapes"):
            fn(params, cfg, clean, short, *args)
    with pytest.raises(ValueError, match="unknown sender 'L5H0'; senders are embed_rtg"):
        C.path_patching(params, cfg, clean, corr, "L5H0", "logits")
    with pytest.raises(ValueError, match="unknown receiver 'L0H0.x'"):
        C.path_patching(params, cfg, clean, corr, "L0H0", "L0H0.x")
    with pytest.raises(ValueError, match="no such edge"):
        G.inputs_graph(cfg, clean).edge_mask([("L1H0", "L0H0.q")])
    with pytest.raises(ValueError, match="mode must be"):
        C.edge_attribution_patching(params, cfg, clean, corr, mode="both")
    with pytest.raises(ValueError, match="hook_logits"):
        C.attribution_patching(params, cfg, clean, corr, names=["hook_logits"])
