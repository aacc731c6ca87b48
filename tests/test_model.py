"""The DT forward pass: parity with TransformerLens on the original checkpoints, and properties."""

from __future__ import annotations

import collections
import json
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dtjax
from dtjax import hooks
from dtjax.config import ConfigError, ModelConfig
from dtjax.model import DecisionTransformer, forward, init_params, param_specs, run_with_cache, run_with_hooks
from tolerance import assert_close

ROOT = Path(__file__).resolve().parents[1]
ORIG = ROOT / "checkpoints" / "original"
REF = ROOT / "tests" / "data" / "reference"
MODELS = ["demo_model", "demo_model_overnight_training", "demo_model_one_hot_overnight", "ReproduceOriginalPostShort"]

TINY = ModelConfig(n_layers=2, d_model=16, n_heads=2, d_head=8, d_mlp=32, n_timesteps=3, max_timestep=20)
TINY_LN = TINY.replace(layer_norm=True)
TINY_ATTN = TINY.replace(attn_only=True, layer_norm=True, d_mlp=0, time_embedding="linear", init="transformer_lens")


def _inputs(cfg, b=4, seed=0):
    rng = np.random.default_rng(seed)
    k = cfg.n_timesteps
    obs = rng.integers(0, 9, (b, k) + cfg.obs_shape).astype(np.uint8)
    rtg = rng.uniform(-1, 1, (b, k)).astype(np.float32)
    ts = rng.integers(0, cfg.max_timestep, (b, k)).astype(np.int32)
    acts = rng.integers(0, 4, (b, k)).astype(np.int32)
    return obs, rtg, ts, acts


@pytest.fixture(scope="module")
def tiny():
    return {c: init_params(jax.random.PRNGKey(1), c) for c in (TINY, TINY_LN, TINY_ATTN)}


# ---------------------------------------------------------------------------------------------
# Reference parity with the original checkpoints (TransformerLens 3.9 outputs, 64 real obs)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", MODELS)
def test_original_checkpoints_match_transformerlens(name):
    cfg, params = dtjax.load(ORIG / f"{name}.pt")
    ref = np.load(REF / f"{name}_outputs.npz")
    obs, rtg, t = ref["obs"][:, None], ref["rtg"][:, None], ref["timestep"][:, None].astype(np.int32)
    runs = [tok for tok in ("2tok", "3tok") if f"logits_{tok}" in ref.files]
    assert runs == (["2tok"] if cfg.pos_rows == 2 else ["2tok", "3tok"])
    worst = 0.0
    for tok in runs:
        acts = None if tok == "2tok" else ref["action"][:, None].astype(np.int32)
        logits, cache = run_with_cache(params, cfg, obs, rtg, t, acts)
        np.testing.assert_allclose(np.asarray(logits[:, 0]), ref[f"logits_{tok}"], atol=1e-4, rtol=0)
        keys = [k for k in ref.files if k.endswith("_" + tok) and k.startswith("blocks.")]
        assert len(keys) == 9  # q, k, v, pattern, z, attn_out, resid_mid, mlp_out, resid_post
        for key in keys:
            np.testing.assert_allclose(np.asarray(cache[key[: -len(tok) - 1]]), ref[key], atol=1e-4, rtol=0, err_msg=key)
            worst = max(worst, float(np.abs(np.asarray(cache[key[: -len(tok) - 1]]) - ref[key]).max()))
        worst = max(worst, float(np.abs(np.asarray(logits[:, 0]) - ref[f"logits_{tok}"]).max()))
        # the jitted training path gives the same logits as the cached one (up to float32 rounding
        # of another fusion: relative to the logits' magnitude, ~9 here)
        assert_close(forward(params, cfg, obs, rtg, t, acts), logits)
    print(f"{name}: max abs error {worst:.2e}")


def test_three_token_run_equals_two_token_run_for_the_state_logits():
    """The action token comes after the state token, so it never changes the state's logits."""
    cfg, params = dtjax.load(ORIG / "demo_model_overnight_training.pt")
    ref = np.load(REF / "demo_model_overnight_training_outputs.npz")
    obs, rtg, t = ref["obs"][:8, None], ref["rtg"][:8, None], ref["timestep"][:8, None].astype(np.int32)
    assert_close(forward(params, cfg, obs, rtg, t), forward(params, cfg, obs, rtg, t, np.zeros((8, 1), np.int32)))


# ---------------------------------------------------------------------------------------------
# Model properties
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cfg", [TINY, TINY_LN, TINY_ATTN], ids=["noln", "ln", "attn_only"])
def test_cache_has_every_hook_with_shapes(tiny, cfg):
    obs, rtg, ts, acts = _inputs(cfg)
    logits, cache = run_with_cache(tiny[cfg], cfg, obs, rtg, ts, acts)
    b, k, n = 4, cfg.n_timesteps, 3 * cfg.n_timesteps
    h, dh, d = cfg.n_heads, cfg.d_head, cfg.d_model
    assert logits.shape == (b, k, 3)
    assert set(cache) == set(hooks.all_hook_names(cfg.n_layers, cfg.layer_norm, cfg.attn_only))
    per_suffix = {
        "hook_state_embed": (b, k, d), "hook_rtg_embed": (b, k, d), "hook_action_embed": (b, k, d),
        "hook_time_embed": (b, k, d), "hook_embed": (b, n, d), "hook_pos_embed": (b, n, d),
        "hook_resid_pre": (b, n, d), "hook_resid_mid": (b, n, d), "hook_resid_post": (b, n, d),
        "hook_attn_out": (b, n, d), "hook_mlp_out": (b, n, d), "hook_scale": (b, n, 1),
        "attn.hook_q": (b, n, h, dh), "attn.hook_k": (b, n, h, dh), "attn.hook_v": (b, n, h, dh),
        "attn.hook_z": (b, n, h, dh), "attn.hook_result": (b, n, h, d), "attn.hook_attn_scores": (b, h, n, n),
        "attn.hook_pattern": (b, h, n, n), "mlp.hook_pre": (b, n, cfg.d_mlp), "mlp.hook_post": (b, n, cfg.d_mlp),
        "hook_logits": (b, k, 3),
    }
    for name, act in cache.items():
        suffix = next(s for s in per_suffix if name.endswith(s))
        assert act.shape == per_suffix[suffix], name
    np.testing.assert_allclose(cache["hook_logits"], logits)
    assert_close(forward(tiny[cfg], cfg, obs, rtg, ts, acts), logits)
    assert_close(run_with_hooks(tiny[cfg], cfg, obs, rtg, ts, acts), logits)
    # internal consistency: heads' results sum to attn_out, patterns are causal distributions
    p0 = tiny[cfg]["blocks_0"]["attn"]
    assert_close(cache["blocks.0.attn.hook_result"].sum(2) + p0["b_O"], cache["blocks.0.hook_attn_out"],
                 floor=float(jnp.abs(cache["blocks.0.attn.hook_result"]).max()))
    pat = cache["blocks.1.attn.hook_pattern"]
    np.testing.assert_allclose(pat.sum(-1), 1.0, atol=1e-5)
    assert float(jnp.abs(jnp.triu(pat, 1)).max()) == 0.0
    assert_close(cache["blocks.0.hook_resid_pre"], cache["hook_embed"] + cache["hook_pos_embed"])


def test_causality(tiny):
    """Changing a later token never changes an earlier output; gradients to the future are 0."""
    cfg = TINY
    p = tiny[cfg]
    obs, rtg, ts, acts = _inputs(cfg, b=1)
    base = forward(p, cfg, obs, rtg, ts, acts)
    obs2, rtg2, acts2 = obs.copy(), rtg.copy(), acts.copy()
    acts2[:, -1] = (acts2[:, -1] + 1) % 4
    obs2[:, -1] = 8 - obs2[:, -1]
    rtg2[:, -1] += 3.0
    out = forward(p, cfg, obs2, rtg2, ts, acts2)
    assert_close(out[:, :-1], base[:, :-1])
    assert not np.allclose(out[:, -1], base[:, -1])
    # the action of timestep t never reaches its own prediction, but does reach t+1
    acts3 = acts.copy()
    acts3[:, 0] = (acts3[:, 0] + 1) % 4
    out = forward(p, cfg, obs, rtg, ts, acts3)
    assert_close(out[:, 0], base[:, 0])
    assert not np.allclose(out[:, 1], base[:, 1])
    # gradients of logit t w.r.t. every token embedding after state token t are exactly zero
    n = 3 * cfg.n_timesteps
    for t in range(cfg.n_timesteps):
        def logit_t(delta, t=t):
            iv = {"hook_embed": hooks.Apply(lambda x, d: x + d, delta)}
            return run_with_hooks(p, cfg, obs, rtg, ts, acts, interventions=iv)[0, t].sum()

        g = np.asarray(jax.grad(logit_t)(jnp.zeros((1, n, cfg.d_model))))
        state_pos = 3 * t + 1
        assert np.all(g[0, state_pos + 1:] == 0.0)
        assert np.all(np.abs(g[0, : state_pos + 1]).sum(-1) > 0)


@pytest.mark.parametrize("cfg", [TINY, TINY_LN], ids=["noln", "ln"])
def test_without_last_action(tiny, cfg):
    """(batch, K-1) actions give 3K-1 tokens and the same logits as any last action."""
    p = tiny[cfg]
    obs, rtg, ts, acts = _inputs(cfg)
    full = forward(p, cfg, obs, rtg, ts, acts)
    short, cache = run_with_cache(p, cfg, obs, rtg, ts, acts[:, :-1])
    assert_close(short, full)
    n = 3 * cfg.n_timesteps - 1
    assert cache["hook_embed"].shape[1] == n and cache["blocks.0.attn.hook_pattern"].shape[-2:] == (n, n)
    assert cache["hook_action_embed"].shape == (4, cfg.n_timesteps - 1, cfg.d_model)


def test_single_timestep_without_action():
    cfg = ModelConfig(d_model=16, n_heads=2, d_head=8, d_mlp=16)
    p = init_params(jax.random.PRNGKey(0), cfg)
    obs, rtg, ts, acts = _inputs(cfg)
    logits, cache = run_with_cache(p, cfg, obs, rtg, ts)
    assert cache["hook_embed"].shape == (4, 2, 16) and "hook_action_embed" not in cache
    assert_close(logits, forward(p, cfg, obs, rtg, ts, acts))
    assert_close(logits, forward(p, cfg, obs, rtg, ts, acts[:, :0]))
    assert_close(logits, forward(p, cfg, obs.astype(np.float32), rtg, ts))


def test_input_shape_errors(tiny):
    p = tiny[TINY]
    obs, rtg, ts, acts = _inputs(TINY)
    with pytest.raises(ValueError, match="single timestep"):
        forward(p, TINY, obs, rtg, ts)
    with pytest.raises(ValueError, match="obs must be"):
        forward(p, TINY, obs[..., :2], rtg, ts, acts)
    with pytest.raises(ValueError, match="timesteps must be"):
        forward(p, TINY, obs, rtg, ts[:, :2], acts)
    with pytest.raises(ValueError, match="actions must be"):
        forward(p, TINY, obs, rtg, ts, acts[:, :1])
    long = _inputs(TINY.replace(n_timesteps=4))
    with pytest.raises(ValueError, match="exceed the model's 9 positions"):
        forward(p, TINY, *long)


def test_jit_vmap_grad_public_calls(tiny):
    cfg = TINY
    p = tiny[cfg]
    obs, rtg, ts, acts = _inputs(cfg, b=3)
    batched = forward(p, cfg, obs, rtg, ts, acts)
    per_example = jax.vmap(lambda o, r, t, a: forward(p, cfg, o[None], r[None], t[None], a[None])[0])(obs, rtg, ts, acts)
    assert_close(per_example, batched)
    _, cache = jax.vmap(lambda o, r, t, a: run_with_cache(p, cfg, o[None], r[None], t[None], a[None]))(obs, rtg, ts, acts)
    assert cache["blocks.0.attn.hook_pattern"].shape == (3, 1, 2, 9, 9)
    hooked = jax.jit(lambda q: run_with_hooks(q, cfg, obs, rtg, ts, acts, interventions=hooks.zero_ablation(("z", 0), head=0)))(p)
    assert hooked.shape == batched.shape
    # vmap over parameters (e.g. several seeds) and a gradient through the whole model
    ps = jax.tree.map(lambda a: jnp.stack([a, -a]), p)
    seeds = jax.vmap(lambda q: forward(q, cfg, obs, rtg, ts, acts))(ps)
    assert_close(seeds[0], batched)
    g = jax.grad(lambda q: forward(q, cfg, obs, rtg, ts, acts).sum())(p)
    assert jax.tree.structure(g) == jax.tree.structure(p)


def test_init_params_shapes_and_options():
    for cfg in (TINY, TINY_LN, TINY_ATTN, ModelConfig(obs_mode="one_hot", n_ctx=2, max_timestep=50)):
        p = init_params(jax.random.PRNGKey(0), cfg)
        d, h = cfg.d_model, cfg.n_heads
        assert p["W_state"].shape == (cfg.obs_dim, d) and p["W_pos"].shape == (cfg.pos_rows, d)
        assert p["W_time"].shape == ((cfg.max_timestep + 1) if cfg.time_embedding == "learned" else 1, d)
        assert p["W_action"].shape == (cfg.n_actions + 1, d) and p["W_U"].shape == (d, cfg.n_actions)
        assert p["blocks_1" if cfg.n_layers > 1 else "blocks_0"]["attn"]["W_O"].shape == (h, cfg.d_head, d)
        assert ("mlp" in p["blocks_0"]) != cfg.attn_only and ("ln_final" in p) == cfg.layer_norm
    p = init_params(jax.random.PRNGKey(0), ModelConfig(init="transformer_lens"))
    std = 0.8 / np.sqrt(128)
    assert abs(float(p["blocks_0"]["attn"]["W_Q"].std()) - std) < 0.1 * std
    assert abs(float(p["W_pos"].mean()) - std) < 0.2  # the original's mean/std slip: N(0.0707, 1)
    p = init_params(jax.random.PRNGKey(0), ModelConfig())
    assert abs(float(p["W_state"].std()) - 0.02) < 0.002 and float(jnp.abs(p["b_U"]).max()) == 0.0


def test_config_validation_and_roundtrip():
    bad = (dict(d_model=0), dict(n_heads=0), dict(obs_mode="rgb"), dict(time_embedding="sin"), dict(n_timesteps=3, n_ctx=4),
           dict(d_mlp=0), dict(n_layers=1.5), dict(layer_norm="yes"), dict(init="xavier"), dict(init_std=0.0),
           dict(n_ctx=-1), dict(d_model=True))
    for kw in bad:
        with pytest.raises(ConfigError) as e:
            ModelConfig(**kw)
        assert "\n" not in str(e.value) and str(e.value).startswith("model.")
    assert ModelConfig(attn_only=True, d_mlp=0).attn_only
    assert ModelConfig(d_model=16, n_heads=4, d_head=8).d_head == 8  # d_head is explicit, as in TransformerLens
    for cfg in (TINY, TINY_LN, TINY_ATTN):
        assert ModelConfig.from_json(cfg.to_json()) == cfg and hash(ModelConfig.from_json(cfg.to_json())) == hash(cfg)
    with pytest.raises(ConfigError, match="unknown field"):
        ModelConfig.from_dict({"d_modl": 3})
    assert ModelConfig().pos_rows == 3 and ModelConfig(n_timesteps=4).pos_rows == 12
    assert ModelConfig(n_ctx=2).pos_rows == 2 and ModelConfig(obs_mode="one_hot").obs_shape == (7, 7, 20)


# ---------------------------------------------------------------------------------------------
# The Flax module: its API, and that the training path traces no hook
# ---------------------------------------------------------------------------------------------


def test_flax_module_api(tiny):
    """The documented linen calls: init gives the TL-named tree, apply sows under TL names."""
    cfg = TINY_LN
    obs, rtg, ts, acts = (jnp.asarray(a) for a in _inputs(cfg))
    model = DecisionTransformer(cfg)
    variables = model.init(jax.random.PRNGKey(0), obs, rtg, ts, acts)
    assert list(variables) == ["params"]
    params = tiny[cfg]
    shapes = lambda t: jax.tree.map(jnp.shape, t)  # noqa: E731
    assert shapes(variables["params"]) == shapes(params)
    logits, state = model.apply({"params": params}, obs, rtg, ts, acts, mutable=["intermediates"])
    pattern = state["intermediates"]["blocks_0"]["attn"]["hook_pattern"]
    n = 3 * cfg.n_timesteps
    assert pattern.shape == (4, cfg.n_heads, n, n) and logits.shape == (4, cfg.n_timesteps, 3)
    assert state["intermediates"]["blocks_1"]["ln2"]["hook_scale"].shape == (4, n, 1)
    assert set(hooks.flatten_intermediates(state["intermediates"])) == set(hooks.hook_names(cfg))
    # without a mutable collection nothing is sown; interventions go in as data
    out = model.apply({"params": params}, obs, rtg, ts, acts, interventions=hooks.zero_ablation(("z", 0), head=1))
    _, cache = run_with_cache(params, cfg, obs, rtg, ts, acts)
    assert not np.allclose(out, logits, atol=1e-4)
    # nn.tabulate and capture_intermediates work (the researcher's Flax tools)
    table = nn.tabulate(model, jax.random.PRNGKey(0), depth=2)(obs, rtg, ts, acts)
    assert "blocks_1" in table and "W_Q" in table
    _, st = model.apply({"params": params}, obs, rtg, ts, acts, capture_intermediates=True, mutable=["intermediates"])
    assert "__call__" in st["intermediates"]["blocks_0"]["attn"]
    assert_close(st["intermediates"]["blocks_0"]["attn"]["hook_z"], cache["blocks.0.attn.hook_z"])


def test_module_init_draws_each_leaf_from_its_distribution():
    """model.init (Flax's per-leaf keys) and init_params (one flat draw) share param_specs."""
    cfg = ModelConfig(init="transformer_lens")
    obs, rtg, ts, _ = (jnp.asarray(a) for a in _inputs(cfg))
    flax_p = DecisionTransformer(cfg).init(jax.random.PRNGKey(1), obs, rtg, ts)["params"]
    ours = init_params(jax.random.PRNGKey(1), cfg)
    flat = dict(jax.tree_util.tree_leaves_with_path(flax_p))
    for path, leaf in jax.tree_util.tree_leaves_with_path(ours):
        a, b = np.asarray(flat[path]), np.asarray(leaf)
        assert a.shape == b.shape
        if a.size > 1000:  # large leaves: the same mean and spread, different draws
            assert abs(a.std() - b.std()) < 0.1 * b.std() and abs(a.mean() - b.mean()) < 0.1 * max(b.std(), 1e-3)
            assert not np.array_equal(a, b)
    assert len(flat) == len(param_specs(cfg))


def test_init_params_values_unchanged_since_v0_1():
    """init_params(PRNGKey(0), cfg) gives the values of dtjax 0.1 (stored), so train.py still
    reproduces its earlier checkpoints for a seed."""
    ref = json.loads((ROOT / "tests" / "data" / "init_params_v0_1.json").read_text())
    for name, entry in ref.items():
        cfg = ModelConfig.from_dict(entry["config"])
        got = {jax.tree_util.keystr(k): np.asarray(v) for k, v in jax.tree_util.tree_leaves_with_path(
            init_params(jax.random.PRNGKey(0), cfg))}
        assert set(got) == set(entry["leaves"]), name
        for key, want in entry["leaves"].items():
            assert_close(got[key].reshape(-1)[:4], want["first"], floor=1e-3, err_msg=f"{name} {key}")
            assert_close(np.abs(got[key].astype(np.float64)).sum(), want["abs_sum"], err_msg=f"{name} {key}")


def _reference_forward(p, cfg, obs, rtg, ts, acts):
    """A hook-free DT in plain jnp, written independently of dtjax.model (no Flax, no hooks)."""
    b, k = rtg.shape
    s = jnp.moveaxis(obs.astype(jnp.float32), -1, -3).reshape(b, k, -1) @ p["W_state"]
    r = rtg.astype(jnp.float32)[..., None] * p["W_rtg"][0]
    if cfg.time_embedding == "learned":
        t = p["W_time"][jnp.clip(ts, 0, p["W_time"].shape[0] - 1)]
    else:
        t = ts.astype(jnp.float32)[..., None] * p["W_time"][0]
    a = p["W_action"][acts]
    x = (jnp.stack([r, s, a], 2) + t[:, :, None]).reshape(b, 3 * k, -1)
    n = x.shape[1]
    x = x + jnp.broadcast_to(p["W_pos"][:n], x.shape)

    def ln(q, x):
        x = x - x.mean(-1, keepdims=True)
        return x / jnp.sqrt((x ** 2).mean(-1, keepdims=True) + 1e-5) * q["w"] + q["b"]

    for layer in range(cfg.n_layers):
        blk = p[f"blocks_{layer}"]
        at = blk["attn"]
        h = ln(blk["ln1"], x) if cfg.layer_norm else x
        q = jnp.einsum("bpd,hde->bphe", h, at["W_Q"]) + at["b_Q"]
        kk = jnp.einsum("bpd,hde->bphe", h, at["W_K"]) + at["b_K"]
        v = jnp.einsum("bpd,hde->bphe", h, at["W_V"]) + at["b_V"]
        sc = jnp.einsum("bqhe,bkhe->bhqk", q, kk) / jnp.sqrt(jnp.float32(q.shape[-1]))
        sc = jnp.where(jnp.tril(jnp.ones((n, n), bool)), sc, -1e5)
        z = jnp.einsum("bhqk,bkhe->bqhe", jax.nn.softmax(sc, -1), v)
        x = x + jnp.einsum("bqhe,hed->bqd", z, at["W_O"]) + at["b_O"]
        if not cfg.attn_only:
            m = blk["mlp"]
            h = ln(blk["ln2"], x) if cfg.layer_norm else x
            x = x + jax.nn.relu(h @ m["W_in"] + m["b_in"]) @ m["W_out"] + m["b_out"]
    if cfg.layer_norm:
        x = ln(p["ln_final"], x)
    return x[:, 1::3] @ p["W_U"] + p["b_U"]


def _primitives(jaxpr) -> collections.Counter:
    """Multiset of primitive names of a jaxpr, nested jaxprs (jit, custom_jvp) included; the
    ``jit`` call wrappers themselves are not counted (forward is jitted, the reference is not)."""
    out = collections.Counter()
    for eqn in jaxpr.eqns:
        if eqn.primitive.name not in ("jit", "pjit"):
            out[eqn.primitive.name] += 1
        for v in eqn.params.values():
            inner = getattr(v, "jaxpr", None)
            if inner is not None:
                out += _primitives(getattr(inner, "jaxpr", inner))
    return out


@pytest.mark.parametrize("cfg", [TINY, TINY_LN, TINY_ATTN], ids=["noln", "ln", "attn_only_linear"])
def test_training_path_traces_no_hook(tiny, cfg):
    """forward (the training path) and run_with_hooks without interventions trace exactly the
    primitives of the hook-free reference, and give its values; a cache costs extra operations."""
    p = tiny[cfg]
    x = [jnp.asarray(a) for a in _inputs(cfg)]
    ref = _primitives(jax.make_jaxpr(jax.jit(lambda q: _reference_forward(q, cfg, *x)))(p).jaxpr)
    for fn in (lambda q: forward(q, cfg, *x), lambda q: run_with_hooks(q, cfg, *x),
               lambda q: DecisionTransformer(cfg).apply({"params": q}, *x)):
        got = _primitives(jax.make_jaxpr(jax.jit(fn))(p).jaxpr)
        assert got == ref, (got - ref, ref - got)
    cached = _primitives(jax.make_jaxpr(lambda q: run_with_cache(q, cfg, *x)[0])(p).jaxpr)
    assert sum(cached.values()) > sum(ref.values())  # per-head results: the counter sees hooks
    assert_close(forward(p, cfg, *x), _reference_forward(p, cfg, *x))
