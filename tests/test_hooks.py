"""Interventions through dtjax.hooks: each equals the same change made by hand, inside jit, no retrace."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dtjax import hooks
from dtjax.config import ModelConfig
from dtjax.model import _run_with_hooks, forward, init_params, run_with_cache, run_with_hooks
from tolerance import assert_close

CFG = ModelConfig(n_layers=2, d_model=16, n_heads=3, d_head=8, d_mlp=32, n_timesteps=2, max_timestep=20)


def _inputs(cfg, b=4, seed=0):
    rng = np.random.default_rng(seed)
    k = cfg.n_timesteps
    return (rng.integers(0, 9, (b, k) + cfg.obs_shape).astype(np.uint8), rng.uniform(-1, 1, (b, k)).astype(np.float32),
            rng.integers(0, cfg.max_timestep, (b, k)).astype(np.int32), rng.integers(0, 4, (b, k)).astype(np.int32))


@pytest.fixture(scope="module")
def model():
    params = init_params(jax.random.PRNGKey(3), CFG)
    x = _inputs(CFG)
    logits, cache = run_with_cache(params, CFG, *x)
    return params, x, logits, cache


def _with(params, path, fn):
    """A copy of params with params[path...] replaced by fn(old)."""
    out = jax.tree.map(lambda a: a, params)
    d = out
    for k in path[:-1]:
        d = d[k]
    d[path[-1]] = fn(d[path[-1]])
    return out


def test_act_name_shorthand():
    assert hooks.act_name("pattern", 0) == "blocks.0.attn.hook_pattern"
    assert hooks.act_name(("pattern", 1)) == "blocks.1.attn.hook_pattern"
    assert hooks.act_name("resid_post", 2) == "blocks.2.hook_resid_post"
    assert hooks.act_name("attn_scores", 0) == "blocks.0.attn.hook_attn_scores"
    assert hooks.act_name("z", 3) == "blocks.3.attn.hook_z"
    assert hooks.act_name("embed") == "hook_embed"
    assert hooks.act_name("scale") == "ln_final.hook_scale"
    assert hooks.act_name("blocks.0.mlp.hook_post") == "blocks.0.mlp.hook_post"
    for bad in (("nonsense", 0), ("pattern",), ("blocks.0.attn.hook_nope",), ("blocks.x.hook_resid_pre",)):
        with pytest.raises(KeyError):
            hooks.act_name(*bad)


def test_zero_head_equals_zeroing_its_output_weights(model):
    params, x, _, _ = model
    manual = forward(_with(params, ["blocks_1", "attn", "W_O"], lambda w: w.at[1].set(0.0)), CFG, *x)
    by_mask = run_with_hooks(params, CFG, *x, interventions=hooks.zero_ablation("blocks.1.attn.hook_z",
                                                                               hooks.head_mask(CFG.n_heads, [1])))
    by_head = run_with_hooks(params, CFG, *x, interventions=hooks.zero_ablation(("z", 1), head=1))
    by_result = run_with_hooks(params, CFG, *x, interventions=hooks.zero_ablation("blocks.1.attn.hook_result", head=1))
    for out in (by_mask, by_head, by_result):
        assert_close(out, manual)
    assert not np.allclose(manual, forward(params, CFG, *x), atol=1e-4)


def test_zero_mlp_and_position(model):
    params, x, logits, cache = model
    no_mlp = _with(params, ["blocks_0", "mlp"], lambda p: {**p, "W_out": 0 * p["W_out"], "b_out": 0 * p["b_out"]})
    assert_close(run_with_hooks(params, CFG, *x, interventions=hooks.zero_ablation(("mlp_out", 0))), forward(no_mlp, CFG, *x))
    # zeroing the last token's residual stream (an action token) changes no logit (causal, read at states)
    last = 3 * CFG.n_timesteps - 1
    out = run_with_hooks(params, CFG, *x, interventions=hooks.zero_ablation("blocks.0.hook_resid_pre", pos=last))
    assert_close(out, logits)
    # zeroing position 1 (first state token) by hand through the embedding
    out = run_with_hooks(params, CFG, *x, interventions=hooks.zero_ablation("blocks.0.hook_resid_pre", pos=1))
    _, c2 = run_with_cache(params, CFG, *x, interventions=hooks.zero_ablation("hook_embed", pos=1) |
                           {"hook_pos_embed": hooks.Replace(True, 0.0, pos=1)})
    assert_close(out, c2["hook_logits"])
    np.testing.assert_array_equal(c2["blocks.0.hook_resid_pre"][:, 1], 0.0)


def test_pattern_ablation_by_hand(model):
    """Forcing every query to attend to position 0 equals z = v[0] computed from the cache."""
    params, x, _, cache = model
    n = 3 * CFG.n_timesteps
    onehot = jnp.zeros((n, n)).at[:, 0].set(1.0)
    _, c = run_with_cache(params, CFG, *x, interventions={("pattern", 0): hooks.Replace(True, onehot)})
    v = cache["blocks.0.attn.hook_v"]
    assert_close(c["blocks.0.attn.hook_z"], jnp.broadcast_to(v[:, :1], v.shape))


def test_mean_ablation_and_apply(model):
    params, x, _, cache = model
    name = "blocks.0.hook_attn_out"
    mean = cache[name].mean(0)
    _, c = run_with_cache(params, CFG, *x, interventions=hooks.mean_ablation(name, mean))
    assert_close(c[name], jnp.broadcast_to(mean, cache[name].shape))
    # Apply with a traced argument: scaling by 0 equals zero ablation
    scaled = run_with_hooks(params, CFG, *x, interventions={name: hooks.Apply(lambda a, s: a * s, jnp.float32(0.0))})
    assert_close(scaled, run_with_hooks(params, CFG, *x, interventions=hooks.zero_ablation(name)))
    # the cache holds the activation after intervention
    _, c = run_with_cache(params, CFG, *x, interventions={name: hooks.Apply(jnp.negative)})
    assert_close(c[name], -cache[name])


def test_patching_from_cache(model):
    params, a, _, _ = model
    b = _inputs(CFG, seed=1)
    logits_b, cache_b = run_with_cache(params, CFG, *b)
    iv = hooks.patch_from_cache(cache_b, ("resid_post", 1))
    assert_close(run_with_hooks(params, CFG, *a, interventions=iv), logits_b)
    # patching only the last state token's residual changes only the last logit
    last_state = 3 * CFG.n_timesteps - 2
    logits_a = forward(params, CFG, *a)
    out = run_with_hooks(params, CFG, *a, interventions=hooks.patch_from_cache(cache_b, "blocks.1.hook_resid_post",
                                                                                pos=last_state))
    assert_close(out[:, :-1], logits_a[:, :-1])
    assert_close(out[:, -1], logits_b[:, -1])


def test_new_values_do_not_retrace(model):
    params, x, _, _ = model
    before = _run_with_hooks._cache_size()
    outs = []
    for value, head, mask in ((0.0, 0, True), (1.0, 2, False), (-3.0, 1, True)):
        iv = {"blocks.0.attn.hook_z": hooks.Replace(jnp.asarray(mask), jnp.float32(value), head=jnp.int32(head))}
        outs.append(run_with_hooks(params, CFG, *x, interventions=iv))
    assert _run_with_hooks._cache_size() == before + 1
    assert not np.allclose(outs[0], outs[2])

    traces = []

    @jax.jit
    def f(value):
        traces.append(1)
        return run_with_hooks(params, CFG, *x, interventions={"blocks.0.hook_attn_out": hooks.Replace(True, value)})

    f(jnp.zeros((4, 6, 16)))
    f(jnp.ones((4, 6, 16)))
    assert len(traces) == 1


def test_sweep_heads_with_vmap(model):
    """An ablation sweep is a vmap over intervention data (one compile, one call)."""
    params, x, _, _ = model

    def ablate(head):
        return run_with_hooks(params, CFG, *x, interventions=hooks.zero_ablation("blocks.0.attn.hook_z", head=head))

    swept = jax.jit(jax.vmap(ablate))(jnp.arange(CFG.n_heads))
    for h in range(CFG.n_heads):
        assert_close(swept[h], ablate(h))


def test_unknown_or_invalid_interventions(model):
    params, x, _, _ = model
    with pytest.raises(KeyError):
        run_with_hooks(params, CFG, *x, interventions=hooks.zero_ablation("blocks.5.hook_resid_pre"))
    with pytest.raises(KeyError):
        run_with_hooks(params, CFG, *x, interventions={"blocks.0.attn.hook_patern": hooks.Replace(True, 0.0)})
    with pytest.raises(ValueError, match="no head axis"):
        run_with_hooks(params, CFG, *x, interventions=hooks.zero_ablation("blocks.0.hook_resid_pre", head=0))
    with pytest.raises(TypeError):
        run_with_hooks(params, CFG, *x, interventions={"hook_embed": 0.0})
    one = CFG.replace(n_layers=1, n_timesteps=1)
    with pytest.raises(KeyError):  # no action token fed: its embedding does not exist
        run_with_hooks(init_params(jax.random.PRNGKey(0), one), one, *_inputs(one)[:3],
                       interventions=hooks.zero_ablation("hook_action_embed"))


def test_cache_name_filter(model):
    params, x, logits, cache = model
    out, c = run_with_cache(params, CFG, *x, names=[("pattern", 0), "hook_logits", "blocks.1.attn.hook_result"])
    assert set(c) == {"blocks.0.attn.hook_pattern", "hook_logits", "blocks.1.attn.hook_result"}
    assert_close(c["blocks.0.attn.hook_pattern"], cache["blocks.0.attn.hook_pattern"])
    assert_close(out, logits)
    with pytest.raises(KeyError):
        run_with_cache(params, CFG, *x, names=["blocks.0.ln1.hook_scale"])  # no LayerNorm in this model


def test_import_dtjax_is_light():
    import subprocess
    import sys

    code = "import sys, dtjax; assert callable(dtjax.load); print(sorted(m for m in ('jax', 'flax', 'numpy') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"
