"""An automatic adversary search for MemoryDT: which one- and two-cell edits of the context flip
the decision or the instruction feature, and whether they transfer to other models.

The write-up's adversaries (`dtjax.circuits.memory`) are hand-made: the instruction's complement
painted at (0,5), (4,2) or both on the instruction frame. Here every edit is searched. A *cell
edit* sets one view cell (x, y) of one frame of the 9-timestep context to one of the cell values
the env's one-hot encoding gives Memory's objects (`KINDS`: empty (object 1, red, open), key and
ball (objects 5 / 6, green, open); the whole 20-channel cell is replaced, so an edited frame is
made of cells the env draws). An edit is data: an int32 array (size, 4) of (frame, x, y, kind)
rows, frame -1 marking an unused row, so one- and two-cell edits share one array shape and one
compiled forward (`score`: a jitted vmap over a chunk of edits, called chunk by chunk, so the
shapes are static and any number of edits runs on one compile).

The search (`search`), per context (the write-up's 4 layouts at the junction, at RTG 0.892 and 0,
`contexts`):
1. every single-cell edit that changes its cell (every frame, every view cell, every kind):
   its left - right logit difference LD at the decision token (the last state token) and the
   instruction feature's projection of every frame's token (state + time embedding, the
   write-up's Fig. 18 quantity, on the unit instruction PC1 of `dtjax.circuits.memory.subset_pca`);
2. the decision flips when LD changes sign; the feature flips when the projection of an edited
   frame changes sign. On the instruction frame s5 that is the instruction feature itself (its
   rate and minimal size are read there, ``feature_frame``); on other frames it is the same
   direction read where no instruction is shown (the zero padding frames' projection is only
   W_time[0]'s, small, so painting almost anything flips it there);
3. pairs: the decision is not additive in the edits, so the pair space (~10^6 per context) is
   pruned greedily: the ``top_b`` single edits that move LD furthest toward the flip without
   flipping it are combined in every pair of distinct cells (``top_b * (top_b - 1) / 2`` forwards).
   The feature's projection *is* additive (linear in the frame's one-hot), so its two-cell minimum
   is exact over all pairs: the two cells of one frame that move it most.

The minimal edit size that flips is 1, 2, or 0 for none (for the decision: none among the
singles and the searched pairs). `transfer` applies edits found on one model to another model's
contexts (its own unedited decision is the reference for the flip).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from dtjax import model as model_lib
from dtjax.circuits import memory as M
from dtjax.circuits.core import Inputs
from dtjax.config import ModelConfig
from envs import minigrid as mg
from envs.memory import LEFT, RIGHT

KINDS = ("empty", "key", "ball")  # the cell values an edit paints
KIND_CODES = mg.CELL_ONE_HOT[[mg.EMPTY, mg.KEY, mg.GREEN_BALL]]  # (3, 20) their one-hot cells, as the env encodes them
EDIT_SIZE = 2  # rows of an edit array; a single-cell edit has frame -1 in its second row
NO_CELL = (-1, 0, 0, 0)  # an unused row
CHUNK = 256  # edits per compiled forward call


# ---------------------------------------------------------------------------------------------
# CONTEXTS AND EDITS AS DATA
# ---------------------------------------------------------------------------------------------


def check_memory(cfg: ModelConfig) -> None:
    """A model the search applies to: one-hot (7, 7, 20) Memory observations and the write-up's
    9-timestep context (else ValueError, one line)."""
    if tuple(cfg.obs_shape) != (M.VIEW, M.VIEW, M.N_CHANNELS):
        raise ValueError(f"the adversary search needs one-hot (7, 7, 20) Memory observations; this model has {tuple(cfg.obs_shape)}")
    if cfg.n_timesteps != M.N_PAD + 5:
        raise ValueError(f"the adversary contexts have {M.N_PAD + 5} timesteps; this model has {cfg.n_timesteps}")


class Contexts(NamedTuple):
    """The contexts searched: ``inputs`` (batch C of 9 timesteps) and a label per context."""

    inputs: Inputs
    labels: tuple[str, ...]


def contexts(cfg: ModelConfig, rtgs=M.RTGS, layouts=M.LAYOUTS) -> Contexts:
    """The write-up's unedited adversary contexts (`dtjax.circuits.memory.adversary_inputs`), one
    per (layout, RTG) in that order, padded the way ``cfg`` was trained: the padding action is
    ``cfg.n_actions``, and with ``pad_rtg="zero"`` the 4 padding timesteps hold RTG 0 (the write-up's
    app pads with the initial RTG, as ``pad_rtg="initial"`` models, e.g. the original's)."""
    check_memory(cfg)
    adv = M.adversary_inputs(rtgs, ("original",), layouts)
    inp = adv.inputs
    pad = jnp.arange(inp.n_timesteps) < M.N_PAD
    acts = jnp.where(pad[None, : inp.actions.shape[1]], cfg.n_actions, inp.actions)
    rtg = jnp.where(pad[None], 0.0, inp.rtg) if cfg.pad_rtg == "zero" else inp.rtg
    labels = tuple(f"{i}, {t} @ {r:g}" for i, t in (M.layout_label(*lay) for lay in layouts) for r in rtgs)
    return Contexts(inp.replace(actions=acts, rtg=rtg), labels)


def single_edits(obs: np.ndarray, frames=None) -> np.ndarray:
    """Every single-cell edit of the context ``obs`` (K, 7, 7, 20) that changes its cell: (n, 2, 4)
    int32 rows (frame, x, y, kind) in (frame, x, y, kind) order; ``frames``: only these (default all)."""
    obs = np.asarray(obs)
    k = obs.shape[0]
    frames = np.arange(k) if frames is None else np.asarray(frames)
    f, x, y, kind = (a.ravel() for a in np.meshgrid(frames, np.arange(7), np.arange(7), np.arange(len(KINDS)),
                                                    indexing="ij"))
    changes = ~(obs[f, x, y] == KIND_CODES[kind]).all(-1)
    first = np.stack([f, x, y, kind], -1)[changes]
    return np.stack([first, np.broadcast_to(NO_CELL, first.shape)], 1).astype(np.int32)


def pair_edits(singles: np.ndarray) -> np.ndarray:
    """Every pair (n*(n-1)/2 at most, (m, 2, 4)) of the single edits ``singles`` (n, 2, 4) that
    touch two different cells (frame, x, y)."""
    a, b = np.triu_indices(len(singles), 1)
    s = singles[:, 0]
    keep = (s[a, :3] != s[b, :3]).any(-1)
    return np.stack([s[a[keep]], s[b[keep]]], 1).astype(np.int32)


def apply_edit(obs: jax.Array, edit: jax.Array) -> jax.Array:
    """``obs`` (K, 7, 7, 20) with each used row (frame, x, y, kind) of ``edit`` (size, 4) painted."""
    codes = jnp.asarray(KIND_CODES, obs.dtype)
    for row in range(edit.shape[0]):
        f, x, y, kind = edit[row, 0], edit[row, 1], edit[row, 2], edit[row, 3]
        used = f >= 0
        f = jnp.maximum(f, 0)
        obs = obs.at[f, x, y].set(jnp.where(used, codes[kind], obs[f, x, y]))
    return obs


def describe(edit) -> str:
    """"S5 (2,6) ball + S9 (3,5) key": token label (s1..s9 of the 9 timesteps) and view cell of each row."""
    rows = [r for r in np.asarray(edit).reshape(-1, 4) if r[0] >= 0]
    return " + ".join(f"s{int(f) + 1} ({int(x)},{int(y)}) {KINDS[int(k)]}" for f, x, y, k in rows) or "none"


# ---------------------------------------------------------------------------------------------
# SCORING
# ---------------------------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("cfg",))
def _score_chunk(params, cfg: ModelConfig, inputs: Inputs, u, ctx, edits):
    """(LD (n,), frame projections (n, K)) of the edits (n, size, 4) applied to contexts ``ctx`` (n,)."""
    obs = jax.vmap(apply_edit)(inputs.obs[ctx], edits)
    rtg, ts, acts = inputs.rtg[ctx], inputs.timesteps[ctx], inputs.actions[ctx]
    logits = model_lib.forward(params, cfg, obs, rtg, ts, acts)
    ld = logits[:, -1, LEFT] - logits[:, -1, RIGHT]
    # the state token without W_pos (hook_embed): flatten (c, x, y) @ W_state + W_time[t], on u
    flat = jnp.moveaxis(obs.astype(jnp.float32), -1, -3).reshape(obs.shape[:2] + (-1,))
    w_time = params["W_time"]
    time = w_time[jnp.clip(ts, 0, w_time.shape[0] - 1)] if cfg.time_embedding == "learned" \
        else ts.astype(jnp.float32)[..., None] * w_time[0]
    return ld, flat @ (params["W_state"] @ u) + time @ u


def score(params: dict, cfg: ModelConfig, inputs: Inputs, direction, ctx, edits, chunk: int = CHUNK):
    """(LD (n,), projections (n, K)) of each edit ``edits[i]`` (n, size, 4) on context ``ctx[i]`` of
    ``inputs``: the left - right logit difference at the decision token, and every frame token's
    coefficient on unit ``direction`` (d_model,). One compile per (cfg, chunk, edit size): the
    edits go through in chunks of ``chunk``, the last padded with unused rows."""
    check_memory(cfg)
    edits = np.asarray(edits, np.int32)
    edits = edits[:, None] if edits.ndim == 2 else edits
    ctx = np.asarray(ctx, np.int32).reshape(-1)
    if len(ctx) != len(edits):
        raise ValueError(f"one context index per edit: got {len(ctx)} for {len(edits)} edits")
    n = len(edits)
    pad = -n % chunk
    edits = np.concatenate([edits, np.broadcast_to(NO_CELL, (pad,) + edits.shape[1:]).astype(np.int32)])
    ctx = np.concatenate([ctx, np.zeros(pad, np.int32)])
    u = jnp.asarray(direction, jnp.float32)
    u = u / jnp.linalg.norm(u)
    lds, projs = [], []
    for i in range(0, len(edits), chunk):
        ld, proj = _score_chunk(params, cfg, inputs, u, jnp.asarray(ctx[i:i + chunk]), jnp.asarray(edits[i:i + chunk]))
        lds.append(ld)
        projs.append(proj)
    ld = np.concatenate([np.asarray(x) for x in lds]) if lds else np.zeros(0, np.float32)
    proj = np.concatenate([np.asarray(x) for x in projs]) if projs else np.zeros((0, inputs.n_timesteps), np.float32)
    return ld[:n], proj[:n]


def instruction_direction(params: dict) -> jax.Array:
    """The instruction feature: PC1 (unit, keys positive) of the write-up's instruction subset."""
    return M.subset_pca(params)[0].components[0]


# ---------------------------------------------------------------------------------------------
# THE SEARCH
# ---------------------------------------------------------------------------------------------


class Search(NamedTuple):
    """What `search` found, numpy arrays. C contexts, K frames; singles n1, searched pairs n2.

    labels: (C,) context labels; ld0 (C,) unedited LD; proj0 (C, K) unedited frame projections.
    singles / pairs: ``*_ctx`` (n,) context index, ``*_edits`` (n, 2, 4), ``*_ld`` (n,),
    ``*_flip`` (n,) bool (the decision flips); ``singles_feature`` (n1,) bool (an edited frame's
    projection flips). min_decision / min_feature (C,): the minimal edit size that flips (1, 2;
    0 = none found; the feature's on frame ``feature_frame``, None: any frame). feature_pairs
    (C, 2, 4): the best two-cell feature edit (by the linear sum) of each context; feature_pair_proj
    (C,) its frame's projection after it.
    """

    labels: tuple[str, ...]
    ld0: np.ndarray
    proj0: np.ndarray
    singles_ctx: np.ndarray
    singles_edits: np.ndarray
    singles_ld: np.ndarray
    singles_flip: np.ndarray
    singles_feature: np.ndarray
    pairs_ctx: np.ndarray
    pairs_edits: np.ndarray
    pairs_ld: np.ndarray
    pairs_flip: np.ndarray
    min_decision: np.ndarray
    min_feature: np.ndarray
    feature_pairs: np.ndarray
    feature_pair_proj: np.ndarray
    top_b: int
    feature_frame: int | None


def _progress(ld, ld0):
    """How far each LD moved toward the other sign from ``ld0``: -sign(ld0) * ld (flip when > 0)."""
    return -np.sign(ld0) * ld


def search(params: dict, cfg: ModelConfig, ctxs: Contexts | None = None, direction=None, top_b: int = 32,
           frames=None, feature_frame: int | None = M.INSTRUCTION_FRAME, chunk: int = CHUNK) -> Search:
    """Search one- and two-cell edits of every context of ``ctxs`` (default `contexts`) that flip
    the decision (the sign of LD) or the feature (the sign of an edited frame's projection on unit
    ``direction``, default `instruction_direction`); pairs among the ``top_b`` best non-flipping
    single edits of each context (module docstring). ``frames``: only edit these frame indices;
    ``feature_frame``: the frame whose feature flips count for ``min_feature`` (None: any)."""
    check_memory(cfg)
    if top_b < 0:
        raise ValueError(f"top_b must be >= 0, got {top_b}")
    ctxs = contexts(cfg) if ctxs is None else ctxs
    u = instruction_direction(params) if direction is None else jnp.asarray(direction, jnp.float32)
    inp = ctxs.inputs
    n_ctx = inp.batch
    obs = np.asarray(inp.obs)
    noop = np.broadcast_to(np.asarray(NO_CELL, np.int32), (n_ctx, EDIT_SIZE, 4))
    ld0, proj0 = score(params, cfg, inp, u, np.arange(n_ctx), noop, chunk)

    per = [single_edits(obs[c], frames) for c in range(n_ctx)]
    s_ctx = np.concatenate([np.full(len(e), c, np.int32) for c, e in enumerate(per)])
    s_edits = np.concatenate(per)
    s_ld, s_proj = score(params, cfg, inp, u, s_ctx, s_edits, chunk)
    s_flip = s_ld * ld0[s_ctx] < 0
    f = s_edits[:, 0, 0]
    s_feature = s_proj[np.arange(len(f)), f] * proj0[s_ctx, f] < 0

    # pairs for the decision: the top_b non-flipping singles by progress toward the flip
    pairs = []
    for c in range(n_ctx):
        idx = np.flatnonzero((s_ctx == c) & ~s_flip)
        best = idx[np.argsort(-_progress(s_ld[idx], ld0[c]), kind="stable")[:top_b]]
        p = pair_edits(s_edits[best])
        pairs.append((np.full(len(p), c, np.int32), p))
    p_ctx = np.concatenate([c for c, _ in pairs]) if pairs else np.zeros(0, np.int32)
    p_edits = np.concatenate([p for _, p in pairs]).reshape(-1, EDIT_SIZE, 4) if pairs else np.zeros((0, EDIT_SIZE, 4), np.int32)
    p_ld, _ = score(params, cfg, inp, u, p_ctx, p_edits, chunk)
    p_flip = p_ld * ld0[p_ctx] < 0

    # the feature's pairs, exactly: the projection of a frame is linear in its cells' one-hots
    delta = s_proj[np.arange(len(f)), f] - proj0[s_ctx, f]
    min_feature = np.zeros(n_ctx, np.int32)
    feature_pairs = np.broadcast_to(np.asarray(NO_CELL, np.int32), (n_ctx, EDIT_SIZE, 4)).copy()
    feature_pair_proj = np.full(n_ctx, np.nan, np.float32)
    for c in range(n_ctx):
        sel = (s_ctx == c) & ((f == feature_frame) if feature_frame is not None else True)
        if s_feature[sel].any():
            min_feature[c] = 1
        best_val = -np.inf
        for fr in np.unique(f[sel]):
            idx = np.flatnonzero(sel & (f == fr))
            toward = -np.sign(proj0[c, fr]) * delta[idx]
            cells = s_edits[idx, 0, 1] * 7 + s_edits[idx, 0, 2]
            order = np.argsort(-toward, kind="stable")
            top = [order[0]] + [o for o in order[1:] if cells[o] != cells[order[0]]][:1]  # best kind per cell
            if len(top) < 2:
                continue
            val = toward[top].sum()
            if val > best_val:
                best_val = val
                feature_pairs[c] = [s_edits[idx[top[0]], 0], s_edits[idx[top[1]], 0]]
                feature_pair_proj[c] = proj0[c, fr] + delta[idx[top]].sum()
        if min_feature[c] == 0 and feature_pairs[c, 0, 0] >= 0 and \
                feature_pair_proj[c] * proj0[c, feature_pairs[c, 0, 0]] < 0:
            min_feature[c] = 2
    min_decision = np.asarray([1 if s_flip[s_ctx == c].any() else 2 if p_flip[p_ctx == c].any() else 0
                               for c in range(n_ctx)], np.int32)
    return Search(ctxs.labels, ld0, proj0, s_ctx, s_edits, s_ld, s_flip, s_feature, p_ctx, p_edits, p_ld, p_flip,
                  min_decision, min_feature, feature_pairs, feature_pair_proj, top_b, feature_frame)


# ---------------------------------------------------------------------------------------------
# SUMMARIES
# ---------------------------------------------------------------------------------------------


def flip_rates(s: Search) -> dict[str, np.ndarray]:
    """Per context (C,): the fraction of single edits that flip the decision; of those on the
    feature frame (``s.feature_frame``; all for None) that flip the feature; of all single edits that
    flip their frame's feature (``feature_any``); of the searched pairs that flip the decision
    (nan where a context had none)."""
    n = len(s.labels)

    def rate(flag, ctx):
        tot = np.bincount(ctx, minlength=n)
        return np.where(tot > 0, np.bincount(ctx, flag.astype(float), minlength=n) / np.maximum(tot, 1), np.nan)

    on = s.singles_edits[:, 0, 0] == s.feature_frame if s.feature_frame is not None else np.ones(len(s.singles_ctx), bool)
    return {"decision": rate(s.singles_flip, s.singles_ctx), "feature": rate(s.singles_feature[on], s.singles_ctx[on]),
            "feature_any": rate(s.singles_feature, s.singles_ctx),
            "pairs": rate(s.pairs_flip, s.pairs_ctx)}


def by_frame(s: Search, n_frames: int | None = None) -> dict[str, np.ndarray]:
    """(C, K) fractions of single edits at each frame position that flip the decision / the feature,
    and (C, K) the largest move toward a decision flip at that frame (``progress``, > 0: flips)."""
    n, k = len(s.labels), n_frames or s.proj0.shape[1]
    f = s.singles_edits[:, 0, 0]
    cell = s.singles_ctx * k + f
    tot = np.bincount(cell, minlength=n * k).reshape(n, k)
    out = {}
    for name, flag in (("decision", s.singles_flip), ("feature", s.singles_feature)):
        hit = np.bincount(cell, flag.astype(float), minlength=n * k).reshape(n, k)
        out[name] = np.where(tot > 0, hit / np.maximum(tot, 1), np.nan)
    prog = np.full(n * k, -np.inf)
    np.maximum.at(prog, cell, _progress(s.singles_ld, s.ld0[s.singles_ctx]))
    out["progress"] = np.where(tot > 0, prog.reshape(n, k), np.nan)
    return out


def best_edits(s: Search, c: int, n: int = 5) -> list[dict]:
    """The ``n`` edits (singles and searched pairs) of context ``c`` that move LD furthest toward
    the other sign: ``{"edit", "size", "frame", "cells", "ld", "flips"}``, best first."""
    eds = np.concatenate([s.singles_edits[s.singles_ctx == c], s.pairs_edits[s.pairs_ctx == c]])
    ld = np.concatenate([s.singles_ld[s.singles_ctx == c], s.pairs_ld[s.pairs_ctx == c]])
    # prefer the smaller edit among equal moves; then the larger move
    size = (eds[:, :, 0] >= 0).sum(1)
    order = np.lexsort((size, -_progress(ld, s.ld0[c])))[:n]
    return [{"edit": describe(eds[i]), "size": int(size[i]), "frames": sorted({int(r[0]) for r in eds[i] if r[0] >= 0}),
             "cells": [[int(r[1]), int(r[2]), KINDS[int(r[3])]] for r in eds[i] if r[0] >= 0], "ld": float(ld[i]),
             "flips": bool(ld[i] * s.ld0[c] < 0)} for i in order]


def flipping_edits(s: Search) -> tuple[np.ndarray, np.ndarray]:
    """(context index (n,), edits (n, 2, 4)): every single and searched pair that flips the decision."""
    return (np.concatenate([s.singles_ctx[s.singles_flip], s.pairs_ctx[s.pairs_flip]]),
            np.concatenate([s.singles_edits[s.singles_flip], s.pairs_edits[s.pairs_flip]]))


def transfer(params: dict, cfg: ModelConfig, ctx, edits, ctxs: Contexts | None = None, chunk: int = CHUNK) -> dict:
    """Edits found on another model applied to this one: edit ``edits[i]`` on this model's context
    ``ctx[i]`` (`contexts` of ``cfg``, the same layouts and RTGs). Returns ``ld0`` (C,) this model's
    unedited LD, ``ld`` (n,) after each edit, ``flip`` (n,) whether it flips this model's decision,
    and ``rate`` (C,) the fraction per context (nan where none was given)."""
    ctxs = contexts(cfg) if ctxs is None else ctxs
    n_ctx = ctxs.inputs.batch
    ctx = np.asarray(ctx, np.int32)
    if len(ctx) and (ctx.min() < 0 or ctx.max() >= n_ctx):
        raise ValueError(f"context indices must be in 0..{n_ctx - 1}")
    u = jnp.zeros(cfg.d_model).at[0].set(1.0)  # the projections are not used here
    noop = np.broadcast_to(np.asarray(NO_CELL, np.int32), (n_ctx, EDIT_SIZE, 4))
    ld0, _ = score(params, cfg, ctxs.inputs, u, np.arange(n_ctx), noop, chunk)
    ld, _ = score(params, cfg, ctxs.inputs, u, ctx, edits, chunk)
    flip = ld * ld0[ctx] < 0 if len(ctx) else np.zeros(0, bool)
    tot = np.bincount(ctx, minlength=n_ctx)
    rate = np.where(tot > 0, np.bincount(ctx, flip.astype(float), minlength=n_ctx) / np.maximum(tot, 1), np.nan)
    return {"ld0": ld0, "ld": ld, "flip": flip, "rate": rate}


def touches(edits: np.ndarray, frame: int, cell: tuple[int, int]) -> np.ndarray:
    """(n,) bool: which edits (n, size, 4) paint view ``cell`` of ``frame``."""
    e = np.asarray(edits).reshape(len(edits), -1, 4) if len(edits) else np.zeros((0, EDIT_SIZE, 4), np.int32)
    return ((e[..., 0] == frame) & (e[..., 1] == cell[0]) & (e[..., 2] == cell[1])).any(-1)


def min_decision_without(s: Search, frame: int = M.INSTRUCTION_FRAME, cell=M.INSTRUCTION_CELL) -> np.ndarray:
    """(C,) the minimal edit size that flips the decision among edits that leave ``cell`` of
    ``frame`` alone (default the instruction itself: adversaries other than changing the instruction)."""
    keep_s, keep_p = ~touches(s.singles_edits, frame, cell), ~touches(s.pairs_edits, frame, cell)
    return np.asarray([1 if (s.singles_flip & keep_s)[s.singles_ctx == c].any()
                       else 2 if (s.pairs_flip & keep_p)[s.pairs_ctx == c].any() else 0
                       for c in range(len(s.labels))], np.int32)


def cell_flip_maps(s: Search, frames) -> np.ndarray:
    """(len(frames), len(KINDS), 7, 7): for each frame, kind and view cell, the fraction of the
    contexts in which that single edit flips the decision (nan where it never changed its cell)."""
    out = np.zeros((len(frames), len(KINDS), 7, 7))
    tot = np.zeros_like(out)
    e = s.singles_edits[:, 0]
    for i, fr in enumerate(frames):
        sel = e[:, 0] == fr
        np.add.at(tot[i], (e[sel, 3], e[sel, 1], e[sel, 2]), 1)
        np.add.at(out[i], (e[sel, 3], e[sel, 1], e[sel, 2]), s.singles_flip[sel].astype(float))
    return np.where(tot > 0, out / np.maximum(tot, 1), np.nan)


def size_label(n: int) -> int | str:
    """A minimal edit size for people and summary.json: 1, 2, or "none"."""
    return int(n) if n else "none"
