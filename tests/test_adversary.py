"""The automatic adversary search (`dtjax.circuits.adversary`): hand-made models whose decision
reads chosen cells (the search finds exactly the flipping edit, of the right size, or says none),
the batched scoring against a plain forward of the edited contexts, transfer, and the report
section. MemoryGatedMLP.pt's numbers (docs/findings.md §13) are the slow test's."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dtjax
from dtjax.circuits import adversary as A
from dtjax.circuits import memory as M
from dtjax.circuits.core import run_with_cache
from dtjax.config import EnvConfig, ModelConfig
from dtjax.model import init_params
from dtjax.report import Context, ReportOptions, all_sections, build_report, run_sections
from envs.memory import LEFT, RIGHT
from fixtures import random_params
from test_report_shapes import CheapPage
from tolerance import assert_close

PT = Path(__file__).resolve().parents[1] / "checkpoints" / "original" / "MemoryGatedMLP.pt"
ENV = EnvConfig("MiniGrid-MemoryS7FixedStart-v0", max_steps=50, obs_mode="one_hot")
# One layer, attention only, no LayerNorm: a hand-made model reads exactly the cells we choose.
HAND = ModelConfig(d_model=8, n_heads=1, d_head=8, d_mlp=8, max_timestep=50, n_timesteps=9, n_actions=7,
                   obs_mode="one_hot", attn_only=True)
TINY = ModelConfig(d_model=16, n_heads=2, d_head=8, d_mlp=16, max_timestep=50, n_timesteps=9, n_actions=7,
                   obs_mode="one_hot", layer_norm=True, pad_rtg="initial")
DECISION = M.N_PAD + 4  # frame s9: the junction, the decision token's own frame
FRAMES = (M.INSTRUCTION_FRAME, DECISION)  # the frames edited where all nine are not needed (fewer forwards)
BALL_CELL, KEY_CELL = (3, 5), (1, 1)  # two view cells no context holds a ball / key at
E0 = np.eye(HAND.d_model, dtype=np.float32)[0]


def hand_model(ball: float, key: float, offset: float) -> dict:
    """Every weight zero but: a ball at view (3,5) and a key at (1,1) write ``ball`` / ``key`` on
    residual direction 0, every timestep's embedding writes ``offset`` there, and the unembedding
    reads it as logit(left). The attention writes nothing (W_V = 0), so the decision token reads
    only its own frame: LD = offset + ball [ball at (3,5) in s9] + key [key at (1,1) in s9], and
    every frame's projection on direction 0 is offset + the same terms for that frame."""
    p = jax.tree.map(lambda x: np.zeros(x.shape, np.float32), jax.eval_shape(lambda: init_params(jax.random.PRNGKey(0), HAND)))
    p["W_state"][M.item_index(M.BALL_CH, *BALL_CELL)] = ball * E0
    p["W_state"][M.item_index(M.KEY_CH, *KEY_CELL)] = key * E0
    p["W_time"][:, 0] = offset
    p["W_U"][:, LEFT] = E0
    return jax.tree.map(jnp.asarray, p)


@pytest.fixture(scope="module")
def ctxs():
    return A.contexts(HAND, rtgs=(0.892,))


@pytest.fixture(scope="module")
def tiny():
    """A random LayerNorm Memory model and its 8 contexts (one compile of the scoring, shared)."""
    return random_params(TINY), A.contexts(TINY)


def _edit(frame, cell, kind):
    return (frame, *cell, A.KINDS.index(kind))


def test_one_cell_flip_is_found_exactly(ctxs):
    """LD = -0.5, a ball at (3,5) in s9 adds 1 (a key at (1,1) 0.25): that edit, and only it, flips
    the decision in every context; the feature (direction 0) flips in every frame with it."""
    s = A.search(hand_model(1.0, 0.25, -0.5), HAND, ctxs, direction=E0, top_b=4)
    n = len(ctxs.labels)
    assert_close(s.ld0, np.full(n, -0.5))
    flips = s.singles_edits[s.singles_flip]
    assert flips.shape == (n, 2, 4) and (flips[:, 0] == _edit(DECISION, BALL_CELL, "ball")).all()
    assert (flips[:, 1, 0] == -1).all() and sorted(s.singles_ctx[s.singles_flip]) == list(range(n))
    assert_close(s.singles_ld[s.singles_flip], np.full(n, 0.5))
    key = (s.singles_edits[:, 0] == _edit(DECISION, KEY_CELL, "key")).all(-1)
    assert_close(s.singles_ld[key], np.full(n, -0.25))
    others = ~s.singles_flip & ~key
    assert_close(s.singles_ld[others], np.full(others.sum(), -0.5))
    assert (s.min_decision == 1).all() and (s.min_feature == 1).all()
    # the feature flips at the ball cell of every frame (its projection is read per frame)
    feat = s.singles_edits[s.singles_feature, 0]
    assert len(feat) == n * HAND.n_timesteps and (feat[:, 1:] == _edit(0, BALL_CELL, "ball")[1:]).all()
    assert A.best_edits(s, 0, 1)[0] == {"edit": "s9 (3,5) ball", "size": 1, "frames": [DECISION],
                                        "cells": [[3, 5, "ball"]], "ld": pytest.approx(0.5, rel=1e-5), "flips": True}
    rates = A.flip_rates(s)
    per_ctx = np.bincount(s.singles_ctx, minlength=n)
    assert_close(rates["decision"], 1.0 / per_ctx)
    frames = A.by_frame(s)
    assert (frames["decision"][:, :DECISION] == 0).all() and (frames["decision"][:, DECISION] > 0).all()
    assert A.size_label(s.min_decision[0]) == 1
    only = A.search(hand_model(1.0, 0.25, -0.5), HAND, ctxs, direction=E0, top_b=0, frames=[DECISION])
    assert (only.singles_edits[:, 0, 0] == DECISION).all() and only.singles_flip.sum() == n and len(only.pairs_ld) == 0


def test_two_cell_flip_is_found_by_the_pair_search(ctxs):
    """LD = -1.5; the ball and the key each add 1: no single edit flips, the pair of both in s9 does
    (and only it among the searched pairs); the feature needs the same two cells in one frame."""
    s = A.search(hand_model(1.0, 1.0, -1.5), HAND, ctxs, direction=E0, top_b=4, frames=FRAMES)
    n = len(ctxs.labels)
    assert not s.singles_flip.any() and not s.singles_feature.any()
    # C(4, 2) = 6 pairs of the top 4 per context, less the one of two kinds painted on one cell (the
    # first of the tied singles); every pair touches two cells
    assert (np.bincount(s.pairs_ctx) == 5).all()
    assert (s.pairs_edits[:, 0, :3] != s.pairs_edits[:, 1, :3]).any(-1).all()
    flips = s.pairs_edits[s.pairs_flip]
    assert flips.shape == (n, 2, 4)
    want = {_edit(DECISION, BALL_CELL, "ball"), _edit(DECISION, KEY_CELL, "key")}
    assert all({tuple(r) for r in f} == want for f in flips)
    assert_close(s.pairs_ld[s.pairs_flip], np.full(n, 0.5))
    assert (s.min_decision == 2).all() and (s.min_feature == 2).all()
    assert_close(s.feature_pair_proj, np.full(n, 0.5))
    assert all({tuple(r[1:]) for r in fp} == {tuple(w[1:]) for w in want} for fp in s.feature_pairs)
    assert (s.feature_pairs[:, :, 0] == M.INSTRUCTION_FRAME).all()  # the instruction frame's feature
    assert A.best_edits(s, 0, 1)[0]["size"] == 2 and A.size_label(s.min_decision[0]) == 2
    # without the key's weight nothing flips: "none"
    s = A.search(hand_model(1.0, 0.0, -1.5), HAND, ctxs, direction=E0, top_b=4, frames=FRAMES)
    assert not s.singles_flip.any() and not s.pairs_flip.any()
    assert (s.min_decision == 0).all() and (s.min_feature == 0).all() and A.size_label(s.min_decision[0]) == "none"
    assert (A.min_decision_without(s) == 0).all()


def test_transfer_to_another_model(ctxs):
    """The one-cell model's flipping edits flip it again and never flip the model that needs two."""
    src = A.search(hand_model(1.0, 0.25, -0.5), HAND, ctxs, direction=E0, top_b=0, frames=FRAMES)
    ctx, edits = A.flipping_edits(src)
    same = A.transfer(hand_model(1.0, 0.25, -0.5), HAND, ctx, edits, ctxs)
    other = A.transfer(hand_model(1.0, 1.0, -1.5), HAND, ctx, edits, ctxs)
    assert same["flip"].all() and (same["rate"] == 1).all()
    assert not other["flip"].any() and (other["rate"] == 0).all()
    assert_close(other["ld"], np.full(len(ctx), -0.5))
    with pytest.raises(ValueError, match="context indices"):
        A.transfer(hand_model(1.0, 0.25, -0.5), HAND, [len(ctxs.labels)], edits[:1], ctxs)


def test_scores_match_a_forward_of_the_edited_contexts(tiny, ctxs):
    """`score` on a random LayerNorm model: LD of single and two-cell edits as a plain forward of
    the contexts edited in numpy, and the frame projections as hook_embed's state tokens on u."""
    params, c = tiny
    obs = np.asarray(c.inputs.obs)
    rng = np.random.default_rng(0)
    singles = A.single_edits(obs[1])
    edits = np.concatenate([singles[rng.choice(len(singles), 5, replace=False)],
                            A.pair_edits(singles[rng.choice(len(singles), 3, replace=False)])])
    ctx = rng.integers(0, c.inputs.batch, len(edits))
    u = rng.normal(size=TINY.d_model).astype(np.float32)
    ld, proj = A.score(params, TINY, c.inputs, u, ctx, edits)  # one chunk, padded with unused rows
    edited = obs[ctx].copy()
    for i, e in enumerate(edits):
        for f, x, y, k in e:
            if f >= 0:
                edited[i, f, x, y] = A.KIND_CODES[k]
    inp = c.inputs.take(jnp.asarray(ctx)).replace(obs=jnp.asarray(edited))
    logits, cache = run_with_cache(params, TINY, inp, names=["hook_embed"])
    assert_close(ld, logits[:, -1, LEFT] - logits[:, -1, RIGHT], rtol=1e-4)
    want = np.asarray(cache["hook_embed"][:, 1::3]) @ (u / np.linalg.norm(u))
    assert_close(proj, want, rtol=1e-4)
    # the contexts: the padding action is the model's, the zero-padding model's RTG 0 before s5
    zero = ctxs.inputs  # HAND pads with RTG 0 (dtjax's default), TINY with the initial RTG
    assert (np.asarray(zero.actions[0, :M.N_PAD]) == HAND.n_actions).all()
    assert_close(zero.rtg[0], [0.0] * M.N_PAD + [0.892] * 5)
    assert_close(c.inputs.rtg[0], np.full(9, 0.892))
    assert_close(c.inputs.rtg[1], np.zeros(9), floor=1.0)


def test_edits_as_data():
    obs = np.zeros((9, 7, 7, 20), np.uint8)
    obs[4:] = A.KIND_CODES[0]  # real frames: every cell empty
    singles = A.single_edits(obs)
    assert len(singles) == 4 * 49 * 3 + 5 * 49 * 2  # the zero frames take any kind, the empty cells two
    assert (singles[:, 1] == A.NO_CELL).all()
    pairs = A.pair_edits(singles[[0, 1, 3]])  # (0,0,0) empty, (0,0,0) key, (0,0,1) empty
    assert pairs.shape == (2, 2, 4)  # the two edits of one cell are not a pair
    out = np.asarray(A.apply_edit(jnp.asarray(obs), jnp.asarray([[4, 2, 6, 2], list(A.NO_CELL)])))
    assert sorted(np.nonzero(out[4, 2, 6])[0]) == [6, 12, 17]  # a green, open ball
    assert (np.delete(out.reshape(-1, 20), 4 * 49 + 2 * 7 + 6, 0) == np.delete(obs.reshape(-1, 20), 4 * 49 + 2 * 7 + 6, 0)).all()
    assert A.describe(np.asarray([[4, 2, 6, 2], [8, 3, 5, 1]])) == "s5 (2,6) ball + s9 (3,5) key"
    assert A.touches(singles[[0, 3]], 0, (0, 1)).tolist() == [False, True]
    with pytest.raises(ValueError, match="9 timesteps"):
        A.contexts(TINY.replace(n_timesteps=3))
    with pytest.raises(ValueError, match="one-hot"):
        A.contexts(TINY.replace(obs_mode="image"))


def test_the_report_section(tiny):
    """The section on a tiny random Memory model: its summary keys, one row per context."""
    opt = ReportOptions(fast=True, strict=True, closed_loop=False, dpi=20, sections=("memory_adversary_search",))
    ctx = Context("tiny-memory", TINY, tiny[0], ENV, opt, log=lambda m: None)
    page = CheapPage("memory")
    res, status = run_sections(ctx, [s for s in all_sections() if s.key in opt.sections], page)
    assert status["memory_adversary_search"]["status"] == "ok", status
    summ = res["memory_adversary_search"]["summary"]
    rows = summ["memory.adversary_search.scenarios"]
    assert len(rows) == 8 and rows[0]["scenario"] == "key, key-ball @ 0.892"
    assert all(r["min_edit"] in (1, 2, "none") and 0 <= r["flip_rate"] <= 1 for r in rows)
    assert set(summ) >= {"memory.adversary_search.flip_rate", "memory.adversary_search.min_edit",
                         "memory.adversary_search.by_frame"}
    assert summ["memory.adversary_search.candidates"]["top_b"] == 8
    assert len(summ["memory.adversary_search.by_frame"]["decision"]) == 9
    assert "automatic adversary search" in page.render()


@pytest.mark.slow
def test_memory_gated_mlp(tmp_path):
    """MemoryGatedMLP.pt (docs/findings.md §13): single edits flip the decision only on the
    instruction frame s5 and the junction frame s9; changing the instruction is a one-cell
    flip in every context; and the report's summary keys."""
    cfg, params = dtjax.load(PT)
    s = A.search(params, cfg, top_b=32)
    frames = A.by_frame(s)["decision"]
    assert (frames[:, [0, 1, 2, 3, 5, 6, 7]] == 0).all() and (frames[:, M.INSTRUCTION_FRAME] > 0).all()
    inst = A.touches(s.singles_edits, M.INSTRUCTION_FRAME, M.INSTRUCTION_CELL)
    kinds = s.singles_edits[:, 0, 3]
    layouts = np.repeat([lay[0] for lay in M.LAYOUTS], len(M.RTGS))  # 0 key, 1 ball
    complement = inst & (kinds == 2 - layouts[s.singles_ctx])  # key -> ball (2), ball -> key (1)
    assert s.singles_flip[complement].all() and (s.min_decision == 1).all()
    build_report(PT, tmp_path, ReportOptions(strict=True, closed_loop=False, sections=("memory_adversary_search",)),
                 log=lambda m: None)
    summ = json.loads((tmp_path / "summary.json").read_text())
    assert set(summ["memory.adversary_search.min_edit"].values()) == {1}
    assert summ["memory.adversary_search.candidates"]["singles"] == len(s.singles_ld)
