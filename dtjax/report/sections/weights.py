"""Weight-space sections: "state_encoder", "embeddings", "qk", "ov" and "svd" (every layer)."""

from __future__ import annotations

import numpy as np

from dtjax import analysis as A
from dtjax import circuits as C
from dtjax import plots
from dtjax.report.base import Context, Page, Section, rounded
from dtjax.report.sections.states import shown

FRONT = (3, 5)  # the view cell directly in front of the agent


def _layer_notes(ctx: Context) -> list[str]:
    notes = []
    if ctx.cfg.n_layers > 1:
        notes.append("Layers > 0 are read directly from the embeddings; composition through earlier layers is not included.")
    if ctx.cfg.layer_norm:
        notes.append("LayerNorm on: these weight products skip the LN scale and centring, so read the maps as "
                     "directions and patterns, not as exact scores or logits.")
    return notes


def _head_labels(cfg) -> list[str]:
    return [f"L{l}H{h}" for l in range(cfg.n_layers) for h in range(cfg.n_heads)]


def state_encoder_compute(ctx: Context) -> dict:
    names, _ = ctx.scenarios()
    show = [names.index(n) for n in shown(ctx)[:2]]
    wmap = ctx.weight_panels()["state_encoder"][ctx.channels]  # (ch, 7, 7)
    amaps = ctx.scenario_panels()["state_encoder"][show][:, ctx.channels]  # (2, ch, 7, 7)
    notes = ["LayerNorm on: the activation projection no longer sums to the state embedding's DLA (ln_final rescales "
             "it)."] if ctx.cfg.layer_norm else []
    return {"maps": np.concatenate([wmap[None], amaps], 0), "rows": ["weights"] + [names[b] for b in show],
            "channels": ctx.channel_names, "direction": ctx.direction, "notes": notes,
            "summary": {"state_encoder_front_cell": {ch: float(wmap[i][FRONT]) for i, ch in enumerate(ctx.channel_names)}}}


def state_encoder_render(d: dict, page: Page) -> None:
    page.text(f"W_state's direct write onto the {d['direction']} direction, per observation cell and channel: the "
              "weight projection (W_state @ W_U @ v as a 7x7 map per channel) and the activation projection (weights x "
              "the last observation) for two scenarios. Only the direct path: the state embedding also acts through "
              "attention and the MLP.")
    page.figure(plots.maps_grid(d["maps"], d["rows"], d["channels"], "state encoder -> " + d["direction"]),
                "Rows: weight projection, then activation projections. Columns: channels.")


def embeddings_compute(ctx: Context) -> dict:
    e = ctx.embedding_panels()
    cfg = ctx.cfg
    rows = ([["w_R (RTG)", *map(float, e["cos_rtg"])]]
            + [[f"W_pos[{i}] ({lab})", *map(float, r)] for i, (r, lab) in
               enumerate(zip(e["cos_pos"], A.token_labels(cfg.n_timesteps, 3 * cfg.n_timesteps) + [""] * cfg.pos_rows))]
            + [[f"mean W_state, channel {n}", *map(float, e["cos_state_channel"][c])]
               for c, n in zip(ctx.channels, ctx.channel_names)])
    if cfg.time_embedding == "linear":
        rows.append(["w_t (linear time)", *map(float, e["cos_time"][0])])
    return {"panels": e, "cos_rows": rows, "direction": ctx.direction, "linear_time": cfg.time_embedding == "linear",
            "actions": list(ctx.task.action_names),
            "pos": C.state_pos(cfg.n_timesteps), "heads": _head_labels(cfg), "notes": _layer_notes(ctx)[:1],
            "summary": {"rtg_direct_per_unit": float(np.asarray(C.rtg_embedding_projection(ctx.params, np.ones(1, np.float32),
                                                                                           ctx.v))[0])}}


def embeddings_render(d: dict, page: Page) -> None:
    e = d["panels"]
    page.text("Direct projections of the RTG embedding (RTG x w_R) and each time-embedding row onto the logit "
              "directions, and the QK score they contribute.")
    page.figure(plots.embeddings(e["rtg"], e["rtg_proj"], e["rtg_proj_dir"], e["time_proj"], e["qk_time"], d["actions"],
                                 d["direction"], d["linear_time"]),
                "Left: the RTG token's direct path is a line through 0. Middle: time embeddings on the logit difference "
                "(rows never seen in training keep their init). Right: how the time embedding of the state token changes "
                "its score to the RTG token (per unit RTG), per layer and head.")
    page.text(f"Positional query W_pos[{d['pos']}] (the last state token) against the RTG key, per head: "
              + ", ".join(f"{lab} {float(v):+.3f}" for lab, v in zip(d["heads"], np.asarray(e["qk_pos"]).reshape(-1))))
    page.table(["embedding", *(f"cos W_U[{a}]" for a in d["actions"])], d["cos_rows"],
               "Cosine similarity of embeddings with the unembedding columns.")


def qk_compute(ctx: Context) -> dict:
    qk = ctx.weight_panels()["qk"][:, :, ctx.channels]  # (layer, head, ch, 7, 7)
    return {"maps": qk.reshape((-1,) + qk.shape[2:]), "rows": _head_labels(ctx.cfg), "channels": ctx.channel_names,
            "notes": _layer_notes(ctx),
            "summary": {"qk_front_cell_object": rounded(qk[0, :, 0][(slice(None),) + FRONT]),
                        "qk_front_cell_object_by_layer": rounded(qk[:, :, 0][(slice(None), slice(None)) + FRONT])}}


def qk_render(d: dict, page: Page) -> None:
    page.text("QK_full[h] = W_state W_Q[h] W_K[h]ᵀ w_Rᵀ (the original app's, unscaled by 1/sqrt(d_head)): how much a "
              "unit of each observation feature raises the state token's attention score to the RTG token, per unit RTG. "
              "Positive: attends more to RTG when RTG > 0. Biases and time/position embeddings excluded.")
    page.figure(plots.maps_grid(d["maps"], d["rows"], d["channels"], "QK state -> RTG"), "Per layer, head and channel.")


def ov_compute(ctx: Context) -> dict:
    w = ctx.weight_panels()
    ov = w["ov"][:, :, ctx.channels]  # (layer, head, ch, 7, 7, A)
    ov_dir = w["ov_dir"][:, :, ctx.channels]  # (layer, head, ch, 7, 7)
    fwd = ctx.task.action_index("forward")
    heads = _head_labels(ctx.cfg)
    maps = np.concatenate([ov[..., fwd].reshape((-1,) + ov.shape[2:5]), ov_dir.reshape((-1,) + ov_dir.shape[2:])], 0)
    cell = (slice(None), slice(None), 0) + FRONT + (fwd,)
    return {"maps": maps, "rows": [f"{h} forward" for h in heads] + [f"{h} {ctx.direction}" for h in heads],
            "channels": ctx.channel_names, "ov_rtg": w["ov_rtg"].reshape(-1, w["ov_rtg"].shape[-1]), "heads": heads,
            "actions": list(ctx.task.action_names),
            "notes": _layer_notes(ctx),
            "summary": {"ov_front_cell_object_forward": rounded(ov[cell][0]), "ov_front_cell_object_forward_by_layer": rounded(ov[cell]),
                        "ov_rtg": rounded(w["ov_rtg"][0]), "ov_rtg_by_layer": rounded(w["ov_rtg"])}}


def ov_render(d: dict, page: Page) -> None:
    page.text("OV_full[h] = W_state W_V[h] W_O[h] W_U: the change in each action logit per unit of an observation "
              "feature, if the state token attends to itself with weight 1; and w_R W_OV W_U per unit RTG if it attends "
              "to the RTG token.")
    page.figure(plots.maps_grid(d["maps"], d["rows"], d["channels"], "OV state -> logits"),
                "Rows: layer x head x (forward logit, analysed direction).")
    page.table(["head", *d["actions"]], [[h, *map(float, r)] for h, r in zip(d["heads"], d["ov_rtg"])],
               "OV of the RTG embedding (per unit RTG attended).")


def svd_compute(ctx: Context) -> dict:
    svd = {k: np.asarray(v) for k, v in A.svd_panels(ctx.params, ctx.cfg, 2).items()}
    top = svd["ov_input_maps"][:, :, 0][:, :, ctx.channels]  # (layer, head, ch, 7, 7)
    return {"qk_S": svd["qk_S"], "ov_S": svd["ov_S"], "top_maps": top.reshape((-1,) + top.shape[2:]),
            "top_logits": svd["ov_output_logits"][:, :, 0].reshape(-1, ctx.cfg.n_actions), "heads": _head_labels(ctx.cfg),
            "channels": ctx.channel_names, "notes": _layer_notes(ctx)[:1],
            "summary": {"ov_singular_values_top3": rounded(svd["ov_S"][0, :, :3]),
                        "ov_singular_values_top3_by_layer": rounded(svd["ov_S"][:, :, :3])}}


def svd_render(d: dict, page: Page) -> None:
    page.text("Singular values of W_QK and W_OV per layer and head (factored, never forming the d_model x d_model "
              "product), and the top OV direction read in input and output vocabulary: which observation features write "
              "it (W_state @ U) and what it does to the logits (Vh @ W_U).")
    page.figure(plots.singular_values(d["qk_S"], d["ov_S"]), "A sharp drop means the head reads/writes few directions.")
    page.figure(plots.maps_grid(d["top_maps"], [f"{h} top OV input" for h in d["heads"]], d["channels"], "top OV singular direction"),
                "Top OV input direction per head as observation maps; its output moves the logits by "
                + "; ".join(f"{h}: (L, R, F) = ({', '.join(f'{x:+.2f}' for x in r)})" for h, r in zip(d["heads"], d["top_logits"]))
                + " (sign of each pair arbitrary).")


SECTIONS = (
    Section("state_encoder", "State encoder", state_encoder_compute, state_encoder_render, order=50),
    Section("embeddings", "RTG and time embeddings", embeddings_compute, embeddings_render, order=60),
    Section("qk", "QK circuit: state query -> RTG key", qk_compute, qk_render, order=70),
    Section("ov", "OV circuit: what each input writes to the logits", ov_compute, ov_render, order=80),
    Section("svd", "SVD of the QK and OV circuits", svd_compute, svd_render, order=90),
)
