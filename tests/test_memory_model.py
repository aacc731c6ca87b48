"""The original's MemoryDT (`MemoryGatedMLP.pt`): import, parity with TransformerLens, the gated
MLP, and the original's padding convention.

Reference: `tests/data/memory_gated_mlp_outputs.npz` (see its README): TransformerLens 3.9 logits
on 64 real 9-timestep contexts of MiniGrid-MemoryS7FixedStart-v0 and every activation on 5 of them.
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dtjax
from dtjax import hooks
from dtjax.circuits.core import Inputs
from dtjax.config import ConfigError, ModelConfig
from dtjax.evaluate import Window
from dtjax.model import MLP, forward, init_params, param_specs, run_with_cache
from tolerance import assert_close

ROOT = Path(__file__).resolve().parents[1]
PT = ROOT / "checkpoints" / "original" / "MemoryGatedMLP.pt"
REF = ROOT / "tests" / "data" / "memory_gated_mlp_outputs.npz"
INPUT_KEYS = ("obs", "rtg", "timesteps", "actions", "mask", "layout", "episode_return", "logits_last", "logits_all",
              "hook_contexts")


@pytest.fixture(scope="module")
def memory():
    cfg, params = dtjax.load(PT)
    ref = dict(np.load(REF))
    return cfg, params, ref


def _inputs(ref, idx=slice(None)):
    """The model's arguments for reference contexts ``idx``: the 8 actions between the 9 observations."""
    return (ref["obs"][idx], ref["rtg"][idx], ref["timesteps"][idx].astype(np.int32),
            ref["actions"][idx, :8].astype(np.int32))


def test_memory_checkpoint_imports_with_its_architecture(memory):
    cfg, params, _ = memory
    assert (cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.d_head, cfg.d_mlp) == (2, 128, 4, 32, 256)
    assert (cfg.mlp, cfg.layer_norm, cfg.obs_mode, cfg.n_actions) == ("gated", True, "one_hot", 7)
    # 9 timesteps, 26 tokens: R1 s1 a1 ... R8 s8 a8 R9 s9 (the action after the last state is not an input)
    assert (cfg.n_timesteps, cfg.pos_rows, cfg.max_timestep, cfg.pad_rtg) == (9, 26, 1000, "initial")
    assert params["blocks_1"]["mlp"]["W_gate"].shape == (128, 256)
    assert params["W_action"].shape == (8, 128)  # row 7 = the padding action
    # the untrained state and reward predictors are not part of the model
    assert set(params) == {"W_state", "W_rtg", "W_action", "W_time", "W_pos", "W_U", "b_U", "blocks_0", "blocks_1",
                           "ln_final"}
    assert jax.tree.structure(params) == jax.tree.structure(jax.eval_shape(init_params, jax.random.PRNGKey(0), cfg))


def test_logits_match_transformerlens_on_all_64_contexts(memory):
    """Logits at every state token (padded ones included) and at the last, against TL 3.9."""
    cfg, params, ref = memory
    logits = np.asarray(forward(params, cfg, *_inputs(ref)))
    assert logits.shape == (64, 9, 7)
    assert_close(logits, ref["logits_all"], err_msg="logits_all")
    assert_close(logits[:, -1], ref["logits_last"], err_msg="logits_last")
    # the inputs cover what matters: left padding, time past the trained table, per-step RTGs
    assert (~ref["mask"][:, 0]).sum() >= 30 and ref["timesteps"].max() > 500
    assert (np.ptp(ref["rtg"], axis=1) > 0).any()


def _layer_norm(x, scale, w, b):
    return (x - x.mean(-1, keepdims=True)) / scale * w + b


def test_every_hook_matches_transformerlens(memory):
    """Every TransformerLens activation of the reference, and the ones it leaves out as derivable
    (resid_mid, later resid_pre, mlp.hook_pre_linear) or that only dtjax has, on 5 contexts."""
    cfg, params, ref = memory
    idx = ref["hook_contexts"]
    _, cache = run_with_cache(params, cfg, *_inputs(ref, idx))
    tl = {k: v for k, v in ref.items() if k not in INPUT_KEYS}
    assert len(tl) == 26
    for name, want in tl.items():
        assert_close(cache[name], want, err_msg=name)
    checked = set(tl)
    # derived from the reference's own activations (float64) and the checkpoint's weights
    for layer in range(cfg.n_layers):
        b, p = f"blocks.{layer}.", params[f"blocks_{layer}"]
        pre = tl[b + "hook_resid_pre"] if layer == 0 else tl[f"blocks.{layer - 1}.hook_resid_post"]
        mid = pre.astype(np.float64) + tl[b + "hook_attn_out"]
        h = _layer_norm(mid, tl[b + "ln2.hook_scale"], np.asarray(p["ln2"]["w"], np.float64), np.asarray(p["ln2"]["b"], np.float64))
        want = {b + "hook_resid_pre": pre, b + "hook_resid_mid": mid,
                b + "mlp.hook_pre_linear": h @ np.asarray(p["mlp"]["W_in"], np.float64),
                b + "attn.hook_result": None, b + "attn.hook_attn_scores": None}
        for name in (b + "hook_resid_pre", b + "hook_resid_mid", b + "mlp.hook_pre_linear"):
            assert_close(cache[name], want[name], err_msg=name)
        # per-head results sum to attn_out; softmax of the masked scores is the pattern
        assert_close(np.asarray(cache[b + "attn.hook_result"]).sum(2) + np.asarray(p["attn"]["b_O"]),
                     tl[b + "hook_attn_out"], err_msg=b + "attn.hook_result")
        assert_close(jax.nn.softmax(cache[b + "attn.hook_attn_scores"], -1), tl[b + "attn.hook_pattern"],
                     err_msg=b + "attn.hook_attn_scores")
        checked |= set(want)
    # the embedding hooks: their interleaved sum plus W_pos is blocks.0.hook_resid_pre
    assert_close(np.asarray(cache["hook_embed"]) + np.asarray(cache["hook_pos_embed"]), tl["blocks.0.hook_resid_pre"],
                 err_msg="hook_embed + hook_pos_embed")
    tok = np.asarray(cache["hook_embed"])
    time = np.asarray(cache["hook_time_embed"])
    assert_close(tok[:, 0::3], np.asarray(cache["hook_rtg_embed"]) + time, err_msg="R tokens")
    assert_close(tok[:, 1::3], np.asarray(cache["hook_state_embed"]) + time, err_msg="s tokens")
    assert_close(tok[:, 2::3], np.asarray(cache["hook_action_embed"]) + time[:, :8], err_msg="a tokens")
    assert_close(cache["hook_logits"], ref["logits_all"][idx], err_msg="hook_logits")
    checked |= {"hook_embed", "hook_pos_embed", "hook_time_embed", "hook_rtg_embed", "hook_state_embed",
                "hook_action_embed", "hook_logits"}
    assert checked == set(cache) == set(hooks.hook_names(cfg))


# ---------------------------------------------------------------------------------------------
# The gated MLP against a hand computation
# ---------------------------------------------------------------------------------------------

GATED = ModelConfig(n_layers=1, d_model=8, n_heads=2, d_head=4, d_mlp=16, n_timesteps=2, max_timestep=10,
                    layer_norm=True, mlp="gated")


def test_gated_mlp_by_hand():
    """post = relu(x W_gate) * (x W_in) + b_in, with b_in after the product (TransformerLens)."""
    rng = np.random.default_rng(0)
    p = {k: rng.normal(size=s).astype(np.float32) for k, s in
         (("W_in", (8, 16)), ("W_gate", (8, 16)), ("b_in", (16,)), ("W_out", (16, 8)), ("b_out", (8,)))}
    x = rng.normal(size=(3, 5, 8)).astype(np.float32)
    out, state = MLP(GATED, prefix="blocks.0.mlp").apply({"params": p}, x, {}, mutable=["intermediates"])
    cache = {f"blocks.0.mlp.{k}": v for k, v in state["intermediates"].items()}
    x64 = {k: v.astype(np.float64) for k, v in p.items()}
    gate, lin = x.astype(np.float64) @ x64["W_gate"], x.astype(np.float64) @ x64["W_in"]
    post = np.maximum(gate, 0) * lin + x64["b_in"]
    assert set(cache) == {"blocks.0.mlp.hook_pre", "blocks.0.mlp.hook_pre_linear", "blocks.0.mlp.hook_post"}
    assert_close(cache["blocks.0.mlp.hook_pre"], gate)
    assert_close(cache["blocks.0.mlp.hook_pre_linear"], lin)
    assert_close(cache["blocks.0.mlp.hook_post"], post)
    assert_close(out, post @ x64["W_out"] + x64["b_out"])
    # b_in inside the product would be another function: the check above tells them apart
    inside = (np.maximum(gate, 0) * (lin + x64["b_in"])) @ x64["W_out"] + x64["b_out"]
    assert np.abs(np.asarray(out) - inside).max() > 0.1
    # a standard MLP on the same weights: relu(x W_in + b_in) W_out + b_out, no W_gate, no pre_linear
    std = GATED.replace(mlp="standard")
    p_std = {k: v for k, v in p.items() if k != "W_gate"}
    out_std = MLP(std, prefix="blocks.0.mlp").apply({"params": p_std}, x, {})
    assert_close(out_std, np.maximum(x.astype(np.float64) @ x64["W_in"] + x64["b_in"], 0) @ x64["W_out"] + x64["b_out"])
    # an intervention on hook_pre_linear acts there: zeroed, the MLP's output is b_in W_out + b_out
    ivs = hooks.zero_ablation(("pre_linear", 0))
    out_z = MLP(GATED, prefix="blocks.0.mlp").apply({"params": p}, x, ivs)
    assert_close(out_z, np.broadcast_to(x64["b_in"] @ x64["W_out"] + x64["b_out"], out.shape))


def test_gated_config_params_and_hooks():
    specs = param_specs(GATED)
    assert specs[("blocks_0", "mlp", "W_gate")][0] == (8, 16)
    assert ("blocks_0", "mlp", "W_gate") not in param_specs(GATED.replace(mlp="standard"))
    # W_gate is drawn last, so a standard model's draws (tests/data/init_params_v0_1.json) do not move
    order = [k for k in specs if k[-1] in ("W_in", "W_out", "W_gate")]
    assert order == [("blocks_0", "mlp", "W_in"), ("blocks_0", "mlp", "W_out"), ("blocks_0", "mlp", "W_gate")]
    params = init_params(jax.random.PRNGKey(0), GATED)
    assert params["blocks_0"]["mlp"]["W_gate"].shape == (8, 16)
    assert float(jnp.std(params["blocks_0"]["mlp"]["W_gate"])) > 0
    std = GATED.replace(mlp="standard")
    names = hooks.hook_names(GATED)
    assert "blocks.0.mlp.hook_pre_linear" in names and "blocks.0.mlp.hook_pre_linear" not in hooks.hook_names(std)
    assert hooks.act_name("pre_linear", 0) == "blocks.0.mlp.hook_pre_linear"
    assert ModelConfig.from_json(GATED.to_json()) == GATED
    assert ModelConfig.from_dict({k: v for k, v in std.to_dict().items() if k not in ("mlp", "pad_rtg")}) == std
    with pytest.raises(ConfigError, match="model.mlp"):
        GATED.replace(mlp="swiglu")
    with pytest.raises(ConfigError, match="model.pad_rtg"):
        GATED.replace(pad_rtg="first")


# ---------------------------------------------------------------------------------------------
# Padding: the original's evaluation windows
# ---------------------------------------------------------------------------------------------


def test_pad_rtg_initial_reproduces_the_originals_windows(memory):
    """``Window.start`` and ``Inputs.left_pad`` with the model's ``pad_rtg`` rebuild the reference's
    padded contexts exactly (zero observation, the initial RTG, timestep 0, action 7), and the
    logits then match TL; dtjax's own padding (RTG 0) gives other logits."""
    cfg, params, ref = memory
    # contexts at an episode's first step, with one RTG (not the ones drawn per timestep)
    first = np.where((ref["mask"].sum(1) == 1) & (np.ptp(ref["rtg"], axis=1) == 0))[0]
    assert len(first) >= 3
    obs, rtg, ts, acts = _inputs(ref, first)
    w = Window.start(obs[:, -1], rtg[:, -1], ts[:, -1], cfg.n_timesteps, cfg.n_actions, cfg.pad_rtg)

    def last_logits(window):  # through the 64-context batch of the logits test (no new compilation)
        full = [np.array(a) for a in _inputs(ref)]
        for a, x in zip(full, (window.obs, window.rtg, window.timesteps, window.actions[:, :8])):
            a[first] = np.asarray(x)
        return np.asarray(forward(params, cfg, *full))[first, -1]

    np.testing.assert_array_equal(np.asarray(w.obs), obs)
    np.testing.assert_array_equal(np.asarray(w.rtg), rtg)
    np.testing.assert_array_equal(np.asarray(w.timesteps), ts)
    np.testing.assert_array_equal(np.asarray(w.actions)[:, :8], acts)
    padded = Inputs(obs[:, -1:], rtg[:, -1:], ts[:, -1:]).left_pad(cfg.n_timesteps, cfg.n_actions, cfg.pad_rtg)
    np.testing.assert_array_equal(np.asarray(padded.rtg), rtg)
    np.testing.assert_array_equal(np.asarray(padded.actions), acts)
    assert_close(last_logits(w), ref["logits_last"][first])
    # with_rtg moves the padding with the real RTGs under "initial", keeps it at 0 under "zero"
    moved = padded.with_rtg(jnp.full((len(first),), 0.25), cfg.n_actions, cfg.pad_rtg)
    np.testing.assert_array_equal(np.asarray(moved.rtg), np.full((len(first), 9), 0.25, np.float32))
    zero = Window.start(obs[:, -1], rtg[:, -1], ts[:, -1], cfg.n_timesteps, cfg.n_actions)
    assert float(np.abs(np.asarray(zero.rtg)[:, :8]).max()) == 0.0
    kept = Inputs(zero.obs, zero.rtg, zero.timesteps, zero.actions[:, :8]).with_rtg(jnp.full((len(first),), 0.25), 7)
    assert float(np.abs(np.asarray(kept.rtg)[:, :8]).max()) == 0.0
    assert float(np.abs(last_logits(zero) - ref["logits_last"][first]).max()) > 1e-3
    with pytest.raises(ValueError, match="pad_rtg"):
        Window.start(obs[:, -1], rtg[:, -1], ts[:, -1], 9, 7, "unseen")
