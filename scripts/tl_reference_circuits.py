"""TransformerLens reference numbers for dtjax.circuits: patching helpers, accumulated residual,
layer-wise decomposition and composition scores, computed once and stored as test data.

Two models, each built as a TransformerLens ``HookedTransformer`` running the DT's residual stream
(the DT embedding computed here in torch as the original project's DecisionTransformer computes it, then
``forward(resid, start_at_layer=0)``, the unembedding = the action head):

- the original overnight checkpoint (``checkpoints/original/demo_model_overnight_training.pt``,
  1 layer, no LayerNorm, tokens R, s, a), on two clean/corrupted pairs of the 64 real observations
  of ``tests/data/reference/demo_model_overnight_training_outputs.npz``: "rtg" (the same 32
  observations at RTG 0.9 vs -1) and "obs" (observations 0-31 vs 32-63, RTG 0.9);
- a tiny random DT (3 layers, 3 heads, d_model 24, LayerNorm, 2 timesteps = 6 tokens), its
  parameters stored with the numbers (in dtjax's parameter layout), for composition scores and
  multi-layer, multi-timestep, LayerNorm coverage.

The patching metric is the batch-mean forward - right logit difference at the last state token,
normalised (m - m_corr) / (m_clean - m_corr), as dtjax's ``activation_patching``.

Run (TransformerLens 4 removed HookedTransformer; the numbers were made with 3.9.0 on torch
2.13 CPU):

    pip install --no-deps --target /tmp/tl39 transformer-lens==3.9.0 better-abc
    PYTHONPATH=/tmp/tl39 python scripts/tl_reference_circuits.py   # a Python with torch: pip install -e .[bench]

Writes ``tests/data/reference/circuits_reference.npz``. TransformerLens and torch are never
dtjax dependencies: only this script imports them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import transformer_lens
from transformer_lens import HookedTransformer, HookedTransformerConfig, patching

ROOT = Path(__file__).resolve().parents[1]
OVERNIGHT = ROOT / "checkpoints" / "original" / "demo_model_overnight_training.pt"
OUTPUTS = ROOT / "tests" / "data" / "reference" / "demo_model_overnight_training_outputs.npz"
OUT = ROOT / "tests" / "data" / "reference" / "circuits_reference.npz"
DIRECTION = np.array([0.0, -1.0, 1.0], np.float32)  # forward - right

# TL patching helpers -> (dtjax hook suffix, index axes as dtjax orders them)
HELPERS = {
    "resid_pre": (patching.get_act_patch_resid_pre, "hook_resid_pre"),
    "resid_mid": (patching.get_act_patch_resid_mid, "hook_resid_mid"),
    "attn_out": (patching.get_act_patch_attn_out, "hook_attn_out"),
    "mlp_out": (patching.get_act_patch_mlp_out, "hook_mlp_out"),
    "z": (patching.get_act_patch_attn_head_out_by_pos, "attn.hook_z"),
    "q": (patching.get_act_patch_attn_head_q_by_pos, "attn.hook_q"),
    "v": (patching.get_act_patch_attn_head_v_by_pos, "attn.hook_v"),
    "pattern": (patching.get_act_patch_attn_head_pattern_by_pos, "attn.hook_pattern"),
}


class DTTransformer(HookedTransformer):
    """A HookedTransformer fed the DT's residual stream (its embedding is not a token lookup)."""

    def forward(self, input, *args, **kwargs):
        # a copy: TL's patching hooks write into the activation in place (under no_grad), and at
        # blocks.0.hook_resid_pre that activation is this input tensor, reused by the next patch
        kwargs.setdefault("start_at_layer", 0)
        return super().forward(input.clone(), *args, **kwargs)


def build(p: dict, n_layers, n_heads, d_model, d_head, d_mlp, n_ctx, layer_norm) -> DTTransformer:
    """A DTTransformer with dtjax-layout params ``p`` (numpy), unembedding = (W_U, b_U)."""
    cfg = HookedTransformerConfig(n_layers=n_layers, d_model=d_model, n_ctx=n_ctx, d_head=d_head, n_heads=n_heads,
                                  d_mlp=d_mlp, d_vocab=1, d_vocab_out=p["W_U"].shape[1], act_fn="relu",
                                  normalization_type="LN" if layer_norm else None, device="cpu", seed=0)
    model = DTTransformer(cfg)
    sd = model.state_dict()
    t = lambda x: torch.tensor(np.asarray(x, np.float32))  # noqa: E731
    for l in range(n_layers):
        b = p[f"blocks_{l}"]
        for k in ("W_Q", "W_K", "W_V", "W_O", "b_Q", "b_K", "b_V", "b_O"):
            sd[f"blocks.{l}.attn.{k}"] = t(b["attn"][k])
        for k in ("W_in", "b_in", "W_out", "b_out"):
            sd[f"blocks.{l}.mlp.{k}"] = t(b["mlp"][k])
        if layer_norm:
            for ln in ("ln1", "ln2"):
                sd[f"blocks.{l}.{ln}.w"], sd[f"blocks.{l}.{ln}.b"] = t(b[ln]["w"]), t(b[ln]["b"])
    if layer_norm:
        sd["ln_final.w"], sd["ln_final.b"] = t(p["ln_final"]["w"]), t(p["ln_final"]["b"])
    sd["unembed.W_U"], sd["unembed.b_U"] = t(p["W_U"]), t(p["b_U"])
    model.load_state_dict(sd)
    model.eval()
    return model


def embed(p: dict, obs, rtg, timesteps, actions) -> torch.Tensor:
    """The DT's residual stream before block 0 (batch, 3K, d_model): tokens R, s, a per timestep,
    each + its time embedding, then + W_pos."""
    b, k = rtg.shape
    flat = np.moveaxis(obs.astype(np.float32), -1, -3).reshape(b, k, -1)  # (c, x, y) order
    state = flat @ p["W_state"]
    r = rtg[..., None].astype(np.float32) * p["W_rtg"][0]
    a = p["W_action"][actions]
    time = p["W_time"][np.clip(timesteps, 0, p["W_time"].shape[0] - 1)]
    tokens = (np.stack([r, state, a], 2) + time[:, :, None]).reshape(b, 3 * k, -1)
    return torch.tensor((tokens + p["W_pos"][: 3 * k]).astype(np.float32))


def overnight_params() -> dict:
    sd = {k: v.numpy() for k, v in torch.load(OVERNIGHT, map_location="cpu", weights_only=True).items()}
    pre = "transformer.blocks.0."
    return {
        "W_state": sd["state_encoder.weight"].T, "W_rtg": sd["reward_embedding.0.weight"].T,
        "W_action": sd["action_embedding.0.weight"], "W_time": sd["time_embedding.weight"],
        "W_pos": sd["transformer.pos_embed.W_pos"], "W_U": sd["predict_actions.weight"].T,
        "b_U": sd["predict_actions.bias"],
        "blocks_0": {"attn": {k: sd[pre + "attn." + k] for k in ("W_Q", "W_K", "W_V", "W_O", "b_Q", "b_K", "b_V", "b_O")},
                     "mlp": {k: sd[pre + "mlp." + k] for k in ("W_in", "b_in", "W_out", "b_out")}},
    }


TINY = dict(n_layers=3, n_heads=3, d_model=24, d_head=8, d_mlp=32, n_timesteps=2, max_timestep=20, layer_norm=True)


def tiny_params(rng) -> dict:
    L, H, d, dh, dm = TINY["n_layers"], TINY["n_heads"], TINY["d_model"], TINY["d_head"], TINY["d_mlp"]
    n = lambda *s, std=None: rng.normal(0, std or 1 / np.sqrt(s[-2] if len(s) > 1 else 1), s).astype(np.float32)  # noqa: E731
    ln = lambda: {"w": (1 + 0.2 * rng.normal(size=d)).astype(np.float32), "b": n(d, std=0.2)}  # noqa: E731
    p = {"W_state": n(147, d, std=0.1), "W_rtg": n(1, d, std=1.0), "W_action": n(4, d, std=0.5),
         "W_time": n(TINY["max_timestep"] + 1, d, std=0.5), "W_pos": n(6, d, std=0.5), "W_U": n(d, 3, std=1.0), "b_U": n(3, std=0.2),
         "ln_final": ln()}
    for l in range(L):
        p[f"blocks_{l}"] = {
            "attn": {"W_Q": n(H, d, dh), "W_K": n(H, d, dh), "W_V": n(H, d, dh), "W_O": n(H, dh, d),
                     "b_Q": n(H, dh, std=0.2), "b_K": n(H, dh, std=0.2), "b_V": n(H, dh, std=0.2), "b_O": n(d, std=0.2)},
            "mlp": {"W_in": n(d, dm), "b_in": n(dm, std=0.2), "W_out": n(dm, d), "b_out": n(d, std=0.2)},
            "ln1": ln(), "ln2": ln()}
    return p


def flatten(tree, prefix="") -> dict:
    out = {}
    for k, v in tree.items():
        out.update(flatten(v, f"{prefix}{k}/") if isinstance(v, dict) else {f"{prefix}{k}": np.asarray(v)})
    return out


def tl_patch(helper, model, corrupted_resid, clean_cache, metric, ranges):
    """TL's helper with an explicit index table (its default reads the position count off
    ``tokens.shape[-1]``, which for a residual input is d_model)."""
    kw = dict(helper.keywords)
    names = kw.pop("index_axis_names")
    df = patching.make_df_from_ranges(ranges, names)
    return patching.generic_activation_patch(model, corrupted_resid, clean_cache, metric, index_df=df, **kw).reshape(
        ranges).numpy()


def reference(tag: str, model, p: dict, clean: dict, corr: dict, out: dict) -> None:
    cfg = model.cfg
    v = torch.tensor(DIRECTION)
    x_clean, x_corr = embed(p, **clean), embed(p, **corr)
    read = x_clean.shape[1] - 2  # the last state token
    with torch.no_grad():
        clean_logits, cache = model.run_with_cache(x_clean)
        m_clean = float((clean_logits[:, read] @ v).mean())
        m_corr = float((model(x_corr)[:, read] @ v).mean())

        def metric(logits):
            return ((logits[:, read] @ v).mean() - m_corr) / (m_clean - m_corr)

        for k, val in {**{f"clean_{n}": a for n, a in clean.items()}, **{f"corrupted_{n}": a for n, a in corr.items()}}.items():
            out[f"{tag}/{k}"] = np.asarray(val)
        out[f"{tag}/m_clean"], out[f"{tag}/m_corr"] = np.float32(m_clean), np.float32(m_corr)
        n_pos, L, H = x_clean.shape[1], cfg.n_layers, cfg.n_heads
        for name, (helper, _) in HELPERS.items():
            ranges = [L, H, n_pos] if name == "pattern" else [L, n_pos, H] if name in ("z", "q", "v") else [L, n_pos]
            out[f"{tag}/patch/{name}"] = tl_patch(helper, model, x_corr, cache, metric, ranges)
        for ln in (False, True) if cfg.normalization_type else (False,):
            acc, labels = cache.accumulated_resid(incl_mid=True, apply_ln=ln, pos_slice=read, return_labels=True)
            out[f"{tag}/accumulated_resid{'_ln' if ln else ''}"] = acc.numpy()
            dec, dlabels = cache.decompose_resid(mode="all", incl_embeds=False, apply_ln=ln, pos_slice=read,
                                                 return_labels=True)
            out[f"{tag}/decompose_resid{'_ln' if ln else ''}"] = dec.numpy()
        out[f"{tag}/accumulated_labels"] = np.array(labels)
        out[f"{tag}/decompose_labels"] = np.array(dlabels)
    print(f"{tag}: m_clean {m_clean:+.4f} m_corr {m_corr:+.4f}; accumulated {labels}; decompose {dlabels}")


def main() -> None:
    out: dict = {}
    ref = np.load(OUTPUTS)
    obs, ts, act = ref["obs"][:, None], ref["timestep"][:, None], ref["action"][:, None]
    p = overnight_params()
    model = build(p, 1, 2, 128, 64, 256, 3, layer_norm=False)
    first = dict(obs=obs[:32], timesteps=ts[:32], actions=act[:32])
    reference("overnight_rtg", model, p, dict(first, rtg=np.full((32, 1), 0.9, np.float32)),
              dict(first, rtg=np.full((32, 1), -1.0, np.float32)), out)
    reference("overnight_obs", model, p, dict(first, rtg=np.full((32, 1), 0.9, np.float32)),
              dict(obs=obs[32:], timesteps=ts[32:], actions=act[32:], rtg=np.full((32, 1), 0.9, np.float32)), out)

    rng = np.random.default_rng(2024)
    tp = tiny_params(rng)
    tiny = build(tp, TINY["n_layers"], TINY["n_heads"], TINY["d_model"], TINY["d_head"], TINY["d_mlp"], 6, True)

    def draw(b=8):
        return dict(obs=rng.integers(0, 9, (b, 2, 7, 7, 3)).astype(np.uint8),
                    rtg=rng.uniform(-1, 1, (b, 2)).astype(np.float32),
                    timesteps=rng.integers(0, TINY["max_timestep"], (b, 2)).astype(np.int32),
                    actions=rng.integers(0, 4, (b, 2)).astype(np.int32))

    clean = draw()
    corr = dict(draw(), rtg=clean["rtg"] - 2.0)  # other observations, and a lower RTG throughout
    reference("tiny", tiny, tp, clean, corr, out)
    with torch.no_grad():
        for mode in "QKV":
            out[f"tiny/composition_{mode}"] = tiny.all_composition_scores(mode).numpy()
    out.update({f"tiny/params/{k}": v for k, v in flatten(tp).items()})
    out["tiny/config"] = np.array(json.dumps(TINY))
    out["meta"] = np.array(json.dumps({"transformer_lens": transformer_lens.__version__ if hasattr(
        transformer_lens, "__version__") else "3.9.0", "torch": torch.__version__, "direction": "forward-right",
        "metric": "batch-mean logit difference at the last state token, (m - m_corr) / (m_clean - m_corr)"}))
    np.savez_compressed(OUT, **out)
    print(f"wrote {OUT} ({OUT.stat().st_size / 1024:.0f} KiB, {len(out)} arrays)")


if __name__ == "__main__":
    main()
