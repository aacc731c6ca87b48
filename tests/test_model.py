"""The DT forward pass, hooks and interventions, and loading of the original checkpoints."""

from __future__ import annotations

import io
import pickle
import zipfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dtjax
from dtjax import hooks
from dtjax.config import ConfigError, ModelConfig
from dtjax.loader import LoadError
from dtjax.model import forward, init_params, run_with_cache, run_with_hooks

ROOT = Path(__file__).resolve().parents[1]
ORIG = ROOT / "checkpoints" / "original"
REF = ROOT / "tests" / "data" / "reference"
MODELS = ["demo_model", "demo_model_overnight_training", "demo_model_one_hot_overnight", "ReproduceOriginalPostShort"]

TINY = ModelConfig(n_layers=2, d_model=16, n_heads=2, d_head=8, d_mlp=32, n_timesteps=3, max_timestep=20)
TINY_LN = TINY.replace(layer_norm=True)


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
    return {c: init_params(jax.random.PRNGKey(1), c) for c in (TINY, TINY_LN)}


# ---------------------------------------------------------------------------------------------
# Reference parity with the original checkpoints (TransformerLens outputs)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", MODELS)
def test_original_checkpoints_match_transformerlens(name):
    cfg, params = dtjax.load(ORIG / f"{name}.pt")
    ref = np.load(REF / f"{name}_outputs.npz")
    obs, rtg, t = ref["obs"][:, None], ref["rtg"][:, None], ref["timestep"][:, None].astype(np.int32)
    checked = 0
    for tok in ("2tok", "3tok"):
        if f"logits_{tok}" not in ref.files:
            continue
        acts = None if tok == "2tok" else ref["action"][:, None].astype(np.int32)
        logits, cache = run_with_cache(params, cfg, obs, rtg, t, acts)
        np.testing.assert_allclose(np.asarray(logits[:, 0]), ref[f"logits_{tok}"], atol=1e-4)
        for key in ref.files:
            if key.endswith("_" + tok) and key.startswith("blocks."):
                np.testing.assert_allclose(np.asarray(cache[key[: -len(tok) - 1]]), ref[key], atol=1e-4, err_msg=key)
                checked += 1
    assert checked >= 9


def test_loaded_configs():
    cfg, p = dtjax.load(ORIG / "demo_model_overnight_training.pt")
    assert (cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.d_mlp, cfg.max_timestep, cfg.pos_rows) == (1, 128, 2, 256, 300, 3)
    assert cfg.n_timesteps == 1 and not cfg.layer_norm and cfg.obs_mode == "image"
    # the original counts 209,815 parameters, including its never-trained reward and state heads
    assert sum(x.size for x in jax.tree.leaves(p)) == 209_815 - (128 + 1) - (147 * 128 + 147)
    cfg, _ = dtjax.load(ORIG / "ReproduceOriginalPostShort.pt")
    assert cfg.pos_rows == 2 and cfg.max_timestep == 1000
    cfg, _ = dtjax.load(ORIG / "demo_model_one_hot_overnight.pt")
    assert cfg.obs_mode == "one_hot" and cfg.max_timestep == 50


def test_loader_errors(tmp_path):
    with pytest.raises(LoadError, match="not found"):
        dtjax.load(tmp_path / "nope.pt")
    (tmp_path / "text.pt").write_text("hello")
    with pytest.raises(LoadError, match="not a PyTorch checkpoint"):
        dtjax.load(tmp_path / "text.pt")
    raw = (ORIG / "demo_model.pt").read_bytes()
    (tmp_path / "trunc.pt").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(LoadError):
        dtjax.load(tmp_path / "trunc.pt")
    with zipfile.ZipFile(tmp_path / "foreign.pt", "w") as z:
        z.writestr("a/readme.txt", "x")
    with pytest.raises(LoadError, match="no data.pkl"):
        dtjax.load(tmp_path / "foreign.pt")

    class Evil:
        def __reduce__(self):
            import os

            return (os.system, ("echo pwned",))

    with zipfile.ZipFile(tmp_path / "evil.pt", "w") as z:
        z.writestr("a/data.pkl", pickle.dumps(Evil(), protocol=2))
    with pytest.raises(LoadError, match="refusing to unpickle"):
        dtjax.load(tmp_path / "evil.pt")
    with zipfile.ZipFile(tmp_path / "notdt.pt", "w") as z:
        z.writestr("a/data.pkl", pickle.dumps({"x": 1}, protocol=2))
    with pytest.raises(LoadError, match="not a Decision Transformer"):
        dtjax.load(tmp_path / "notdt.pt")
    (tmp_path / "emptydir").mkdir()
    with pytest.raises(LoadError, match="no dtjax checkpoint"):
        dtjax.load(tmp_path / "emptydir")


# ---------------------------------------------------------------------------------------------
# Model properties
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cfg", [TINY, TINY_LN], ids=["noln", "ln"])
def test_cache_has_every_hook_with_shapes(tiny, cfg):
    obs, rtg, ts, acts = _inputs(cfg)
    logits, cache = run_with_cache(tiny[cfg], cfg, obs, rtg, ts, acts)
    b, k, n = 4, cfg.n_timesteps, 3 * cfg.n_timesteps
    assert logits.shape == (b, k, 3)
    assert set(cache) == set(hooks.all_hook_names(cfg.n_layers, cfg.layer_norm))
    h, dh, d = cfg.n_heads, cfg.d_head, cfg.d_model
    assert cache["blocks.1.attn.hook_pattern"].shape == (b, h, n, n)
    assert cache["blocks.0.attn.hook_q"].shape == (b, n, h, dh)
    assert cache["blocks.0.attn.hook_result"].shape == (b, n, h, d)
    assert cache["blocks.0.mlp.hook_post"].shape == (b, n, cfg.d_mlp)
    assert cache["hook_state_embed"].shape == (b, k, d)
    np.testing.assert_allclose(cache["hook_logits"], logits)
    np.testing.assert_allclose(forward(tiny[cfg], cfg, obs, rtg, ts, acts), logits, atol=1e-6)


def test_causality(tiny):
    """Changing a later token never changes an earlier output; gradients to the future are 0."""
    cfg = TINY
    p = tiny[cfg]
    obs, rtg, ts, acts = _inputs(cfg, b=1)
    base = forward(p, cfg, obs, rtg, ts, acts)
    obs2, rtg2 = obs.copy(), rtg.copy()
    obs2[:, -1] = 8 - obs2[:, -1]
    rtg2[:, -1] += 3.0
    acts2 = acts.copy()
    acts2[:, -1] = (acts2[:, -1] + 1) % 4
    out = forward(p, cfg, obs2, rtg2, ts, acts2)
    np.testing.assert_allclose(out[:, :-1], base[:, :-1], atol=1e-6)
    assert not np.allclose(out[:, -1], base[:, -1])
    # the action of the same timestep never reaches its own prediction
    out = forward(p, cfg, obs, rtg, ts, acts2)
    np.testing.assert_allclose(out, base, atol=1e-6)
    g = jax.grad(lambda r: forward(p, cfg, obs, r, ts, acts)[0, 0].sum())(jnp.asarray(rtg))
    assert np.all(np.asarray(g)[0, 1:] == 0) and np.asarray(g)[0, 0] != 0


def test_head_ablation_equals_manual(tiny):
    cfg = TINY
    p = tiny[cfg]
    obs, rtg, ts, acts = _inputs(cfg)
    iv = hooks.zero_ablation("blocks.1.attn.hook_z", hooks.head_mask(cfg.n_heads, [1]))
    ablated = run_with_hooks(p, cfg, obs, rtg, ts, acts, interventions=iv)
    # by hand: zero head 1's output projection in layer 1
    p2 = jax.tree.map(lambda x: x, p)
    p2["blocks_1"]["attn"]["W_O"] = p["blocks_1"]["attn"]["W_O"].at[1].set(0.0)
    np.testing.assert_allclose(ablated, forward(p2, cfg, obs, rtg, ts, acts), atol=1e-5)
    # zero-ablating the MLP output equals removing the MLP weights' contribution
    iv = hooks.zero_ablation("blocks.0.hook_mlp_out")
    p3 = jax.tree.map(lambda x: x, p)
    p3["blocks_0"]["mlp"] = {**p["blocks_0"]["mlp"], "W_out": jnp.zeros_like(p["blocks_0"]["mlp"]["W_out"]),
                             "b_out": jnp.zeros_like(p["blocks_0"]["mlp"]["b_out"])}
    np.testing.assert_allclose(run_with_hooks(p, cfg, obs, rtg, ts, acts, interventions=iv),
                               forward(p3, cfg, obs, rtg, ts, acts), atol=1e-5)


def test_patching_from_cache_and_no_retrace(tiny):
    cfg = TINY
    p = tiny[cfg]
    a = _inputs(cfg, seed=0)
    b = _inputs(cfg, seed=1)
    logits_b, cache_b = run_with_cache(p, cfg, *b)
    # patch every residual stream of run b into run a at the last layer's output: logits become b's
    iv = hooks.patch_from_cache(cache_b, "blocks.1.hook_resid_post")
    np.testing.assert_allclose(run_with_hooks(p, cfg, *a, interventions=iv), logits_b, atol=1e-5)

    traces = []

    @jax.jit
    def f(value):
        traces.append(1)
        return run_with_hooks(p, cfg, *a, interventions={"blocks.0.hook_attn_out": hooks.Replace(jnp.bool_(True), value)})

    f(jnp.zeros((4, 9, 16)))
    f(jnp.ones((4, 9, 16)))
    assert len(traces) == 1


def test_jit_vmap_public_calls(tiny):
    cfg = TINY
    p = tiny[cfg]
    obs, rtg, ts, acts = _inputs(cfg, b=3)
    per_example = jax.vmap(lambda o, r, t, a: forward(p, cfg, o[None], r[None], t[None], a[None])[0])(obs, rtg, ts, acts)
    np.testing.assert_allclose(per_example, forward(p, cfg, obs, rtg, ts, acts), atol=1e-5)
    _, cache = jax.vmap(lambda o, r, t, a: run_with_cache(p, cfg, o[None], r[None], t[None], a[None]))(obs, rtg, ts, acts)
    assert cache["blocks.0.attn.hook_pattern"].shape == (3, 1, 2, 9, 9)


def test_single_timestep_without_action():
    cfg = ModelConfig(d_model=16, n_heads=2, d_head=8, d_mlp=16)
    p = init_params(jax.random.PRNGKey(0), cfg)
    obs, rtg, ts, acts = _inputs(cfg)
    np.testing.assert_allclose(forward(p, cfg, obs, rtg, ts), forward(p, cfg, obs, rtg, ts, acts), atol=1e-6)
    with pytest.raises(ValueError, match="single timestep"):
        forward(p, TINY, *_inputs(TINY)[:3])


def test_config_validation_and_roundtrip():
    for bad in (dict(d_model=0), dict(obs_mode="rgb"), dict(time_embedding="sin"), dict(n_timesteps=3, n_ctx=4)):
        with pytest.raises(ConfigError):
            ModelConfig(**bad)
    assert ModelConfig.from_json(TINY_LN.to_json()) == TINY_LN
    with pytest.raises(ConfigError, match="unknown field"):
        ModelConfig.from_dict({"d_modl": 3})


def test_act_name_shorthand():
    assert hooks.act_name("pattern", 0) == "blocks.0.attn.hook_pattern"
    assert hooks.act_name("resid_post", 2) == "blocks.2.hook_resid_post"
    assert hooks.act_name("embed") == "hook_embed"
    with pytest.raises(KeyError):
        hooks.act_name("nonsense", 0)
