"""dtjax.circuits against TransformerLens 3.9 numbers (``scripts/tl_reference_circuits.py``): its
activation-patching helpers, ``accumulated_resid``, ``decompose_resid`` and
``all_composition_scores``, on the original overnight checkpoint (two clean/corrupted pairs of
real observations) and on a tiny random 3-layer, 3-head, 2-timestep DT with LayerNorm."""

from __future__ import annotations

import json
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

import dtjax
from dtjax import circuits as C
from dtjax.config import ModelConfig
from tolerance import assert_close, assert_normalised_close

ROOT = Path(__file__).resolve().parents[1]
REF = np.load(ROOT / "tests" / "data" / "reference" / "circuits_reference.npz")
OVERNIGHT = ROOT / "checkpoints" / "original" / "demo_model_overnight_training.pt"

# TL helper -> dtjax hook suffix (as in the script)
HOOKS = {"resid_pre": "hook_resid_pre", "resid_mid": "hook_resid_mid", "attn_out": "hook_attn_out",
         "mlp_out": "hook_mlp_out", "z": "attn.hook_z", "q": "attn.hook_q", "v": "attn.hook_v",
         "pattern": "attn.hook_pattern"}


def _tiny():
    cfg = ModelConfig(**json.loads(str(REF["tiny/config"])))
    params: dict = {}
    for key in REF.files:
        if key.startswith("tiny/params/"):
            *path, leaf = key[len("tiny/params/"):].split("/")
            node = params
            for p in path:
                node = node.setdefault(p, {})
            node[leaf] = jnp.asarray(REF[key])
    return cfg, params


@pytest.fixture(scope="module")
def models():
    return {"overnight": dtjax.load(OVERNIGHT), "tiny": _tiny()}


def _pair(tag):
    def inputs(which):
        return C.Inputs(obs=jnp.asarray(REF[f"{tag}/{which}_obs"]), rtg=jnp.asarray(REF[f"{tag}/{which}_rtg"]),
                        timesteps=jnp.asarray(REF[f"{tag}/{which}_timesteps"].astype(np.int32)),
                        actions=jnp.asarray(REF[f"{tag}/{which}_actions"].astype(np.int32)))
    return inputs("clean"), inputs("corrupted")


def _tl_effect(tag, helper, layer):
    """TL's patching result for one layer in dtjax's layout: (pos,) or (pos, head)."""
    x = REF[f"{tag}/patch/{helper}"][layer]
    return x.T if helper == "pattern" else x  # TL: (head, dest_pos)


FAST = ["resid_pre", "attn_out", "mlp_out", "z", "pattern"]  # the rest (resid_mid, q, v): the slow test
CASES = [("overnight_rtg", FAST, [0]), ("overnight_obs", FAST, [0])]  # the tiny model: the slow test


@pytest.mark.parametrize("tag, helpers, layers", CASES, ids=[c[0] for c in CASES])
def test_activation_patching_matches_transformerlens(models, tag, helpers, layers):
    cfg, params = models[tag.split("_")[0]]
    clean, corr = _pair(tag)
    names = [f"blocks.{l}.{HOOKS[h]}" for h in helpers for l in layers]
    res = C.activation_patching(params, cfg, clean, corr, "forward-right", names=names)
    assert_close(res["clean"], REF[f"{tag}/m_clean"], rtol=1e-4)
    assert_close(res["corrupted"], REF[f"{tag}/m_corr"], rtol=1e-4)
    for h in helpers:
        for l in layers:
            ours, tl = res["effects"][f"blocks.{l}.{HOOKS[h]}"], _tl_effect(tag, h, l)
            # normalised effects: two frameworks' float32 errors of the metrics, scaled by the pair's conditioning
            assert_normalised_close(ours, tl, REF[f"{tag}/m_clean"], REF[f"{tag}/m_corr"], rtol=1e-4,
                                    err_msg=f"{tag} {h} layer {l}")
    if tag.startswith("overnight"):  # the action token comes after the read-out: TL and dtjax give 0 there
        assert np.all(_tl_effect(tag, "resid_pre", 0)[2] == 0)


@pytest.mark.slow
@pytest.mark.parametrize("tag", ["overnight_rtg", "overnight_obs", "tiny"])
def test_activation_patching_matches_transformerlens_every_helper_and_layer(models, tag):
    cfg, params = models[tag.split("_")[0]]
    clean, corr = _pair(tag)
    names = [f"blocks.{l}.{h}" for h in HOOKS.values() for l in range(cfg.n_layers)]
    res = C.activation_patching(params, cfg, clean, corr, "forward-right", names=names)
    for h, suffix in HOOKS.items():
        for l in range(cfg.n_layers):
            assert_normalised_close(res["effects"][f"blocks.{l}.{suffix}"], _tl_effect(tag, h, l), REF[f"{tag}/m_clean"],
                                    REF[f"{tag}/m_corr"], rtol=1e-4, err_msg=f"{h} {l}")


@pytest.mark.parametrize("tag", ["overnight_rtg", "overnight_obs", "tiny"])
def test_accumulated_and_decomposed_residual_match_transformerlens(models, tag):
    cfg, params = models[tag.split("_")[0]]
    clean, _ = _pair(tag)
    _, cache = C.run_with_cache(params, cfg, clean)
    for ln in (False, True) if cfg.layer_norm else (False,):
        suffix = "_ln" if ln else ""
        labels, acc = C.accumulated_resid(params, cfg, cache, incl_mid=True, apply_ln=ln)
        assert labels == list(REF[f"{tag}/accumulated_labels"])
        assert_close(np.swapaxes(acc, 0, 1), REF[f"{tag}/accumulated_resid{suffix}"], rtol=1e-4, err_msg=f"acc {ln}")
        labels, dec = C.decompose_resid_layers(params, cfg, cache, apply_ln=ln)
        assert labels[:2] == ["embed", "pos_embed"] and labels[2:] == list(REF[f"{tag}/decompose_labels"])
        assert_close(np.swapaxes(dec[:, 2:], 0, 1), REF[f"{tag}/decompose_resid{suffix}"], rtol=1e-4, err_msg=f"dec {ln}")
    # the logit lens along forward - right is these residuals projected (without LN: exactly)
    lens = C.logit_lens(params, cfg, clean, "forward-right")
    d = np.asarray(params["W_U"]) @ np.array([0.0, -1.0, 1.0])
    tl = REF[f"{tag}/accumulated_resid{'_ln' if cfg.layer_norm else ''}"] @ d  # (n, batch)
    assert_close(lens["accumulated"], tl.T, rtol=1e-4)


def test_composition_scores_match_transformerlens(models):
    cfg, params = models["tiny"]
    scores = C.all_composition_scores(params, cfg)
    for mode in "QKV":
        tl = REF[f"tiny/composition_{mode}"]
        assert tl.shape == (3, 3, 3, 3) and np.abs(tl).max() > 0.1
        assert_close(scores[mode], tl, rtol=1e-4, err_msg=mode)
