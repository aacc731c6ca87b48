"""The MemoryDT write-up's analyses (`dtjax.circuits.memory`): the numbers measured on
`MemoryGatedMLP.pt` (the reference doc's §7 tables, within 0.02) and tiny hand-made cases pinning
what each function computes."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dtjax
from dtjax import hooks
from dtjax.circuits import memory as M
from dtjax.circuits.core import run_with_hooks
from dtjax.report import ReportOptions, build_report
from tolerance import assert_close

PT = Path(__file__).resolve().parents[1] / "checkpoints" / "original" / "MemoryGatedMLP.pt"
TOL = 0.02  # the brief's tolerance on the measured (2-decimal) tables

# §7's measured restored fractions on MemoryGatedMLP: (instruction, targets) -> RTG -> (0,5) / (4,2) / both
RESTORED = {
    ("ball", "ball-key"): {0.892: (.36, .12, .97), 0.0: (.76, .44, 1.03)},
    ("key", "ball-key"): {0.892: (.53, .65, .97), 0.0: (.20, .20, .97)},
    ("ball", "key-ball"): {0.892: (.58, .17, 1.05), 0.0: (.70, .53, .93)},
    ("key", "key-ball"): {0.892: (.33, .51, 1.03), 0.0: (.13, .22, .89)},
}


@pytest.fixture(scope="module")
def model():
    return dtjax.load(PT)


@pytest.fixture(scope="module")
def adversaries(model):
    cfg, params = model
    adv = M.adversary_inputs()
    ld, tokens = M.adversary_logit_diffs(params, cfg, adv)
    return adv, np.asarray(ld), tokens


@pytest.fixture(scope="module")
def instruction_pca(model):
    return M.subset_pca(model[1])


# ---------------------------------------------------------------------------------------------
# MemoryGatedMLP.pt against §7's measured numbers
# ---------------------------------------------------------------------------------------------


def test_embedding_norms_largest_at_the_task_cells(model):
    norms = np.asarray(M.embedding_norms(model[1]))
    assert norms.shape == (20, 7, 7)
    got = [norms[M.BALL_CH, 0, 6], norms[M.BALL_CH, 2, 6], norms[M.KEY_CH, 6, 5], norms[M.BALL_CH, 4, 2]]
    np.testing.assert_allclose(got, [1.97, 1.84, 1.65, 1.63], atol=TOL)
    assert abs(np.median(norms) - 0.232) <= TOL
    assert norms.max() == norms[M.BALL_CH, 0, 6]
    for writeup in (False, True):
        cos, n, labels = M.key_ball_cosines(model[1], writeup)
        assert cos.shape == (98, 98) and labels[0] == "key (0,0)" and labels[49] == "ball (0,0)"
        assert_close(cos, cos.T)
        assert_close(jnp.diag(cos), np.ones(98))
    assert_close(n, np.linalg.norm(np.asarray(M.preprocess_writeup(model[1]["W_state"]))[49 * 5:49 * 7], axis=-1))


def test_instruction_pca_and_its_feature_map(model, instruction_pca):
    p, labels = instruction_pca
    assert labels[:2] == ["key (4,2)", "ball (4,2)"]
    np.testing.assert_allclose(p.explained, [0.7561, 0.0834], atol=TOL)
    fmap = np.asarray(M.feature_map(model[1], p, 0))
    keys = [fmap[0, x, y] for x, y in ((0, 5), (2, 6), (4, 2), (4, 3))]
    balls = [fmap[1, x, y] for x, y in ((0, 5), (2, 6), (4, 2), (4, 3))]
    np.testing.assert_allclose(keys, [0.81, 0.85, 0.87, 0.90], atol=TOL)
    np.testing.assert_allclose(balls, [-0.82, -0.84, -0.92, -0.86], atol=TOL)
    assert abs(fmap[0, 2, 5] - 0.73) <= TOL
    # the map's subset cells are the PCA's own scores
    assert_close([fmap[c - M.KEY_CH, x, y] for c, x, y in M.subset_items()], p.scores[:, 0])


def test_target_pca(model):
    p, _ = M.subset_pca(model[1], M.TARGET_CELLS)
    np.testing.assert_allclose(p.explained, [0.4538, 0.3738], atol=TOL)


def test_adversary_restored_fractions(adversaries):
    adv, ld, _ = adversaries
    assert adv.shape == (4, 2, 5)
    np.testing.assert_allclose(ld[:, 0, 0], [3.77, -6.43, 7.26, -7.74], atol=TOL)  # LD(Original) at .892
    rf = np.asarray(M.restored_fractions(jnp.asarray(ld)))
    for i, label in enumerate(M.adversary_labels()):
        for j, rtg in enumerate(adv.rtgs):
            np.testing.assert_allclose(rf[i, j, 2:], RESTORED[label][rtg], atol=TOL, err_msg=f"{label} {rtg}")
            assert_close(rf[i, j, :2], [0.0, 1.0], floor=1.0)


def test_feature_projection_and_the_direct_intervention(model, adversaries, instruction_pca):
    cfg, params = model
    adv, ld, tokens = adversaries
    pc = instruction_pca[0].components[0]
    proj = np.asarray(M.feature_projection(tokens, pc)).reshape(adv.shape)
    # the S5 token (state + time embedding) is the frame's items' embeddings summed, plus W_time[0]
    frame = np.asarray(adv.inputs.obs[0, M.INSTRUCTION_FRAME])
    want = sum(np.asarray(params["W_state"][M.item_index(c, x, y)]) for x, y, c in np.argwhere(frame))
    assert_close(tokens[0, M.INSTRUCTION_POS], want + np.asarray(params["W_time"][0]))
    assert_close(proj[:, 0], proj[:, 1])  # RTG does not enter the S5 token
    # keys positive on the feature; flipping the instruction flips its sign
    inst = np.asarray([lay[0] for lay in adv.layouts])
    orig, flip = adv.edits.index("original"), adv.edits.index("instruction_flipped")
    assert ((proj[:, 0, orig] > 0.5) == (inst == 0)).all() and ((proj[:, 0, flip] > 0.5) == (inst == 1)).all()
    # setting the coefficient (in resid_pre, i.e. with W_pos) to its own value changes nothing;
    # -2 and +2 flip the decision (one compiled shape: 4 contexts x 2 coefficients)
    orig_idx = np.arange(adv.inputs.batch).reshape(adv.shape)[:, 0, orig]
    sub = adv.inputs.take(jnp.asarray(orig_idx))
    curve = np.asarray(M.intervention_curve(params, cfg, sub, pc, (-2.0, 2.0)))
    own = proj[:, 0, orig] + float(params["W_pos"][M.INSTRUCTION_POS] @ pc)
    rep = jax.tree.map(lambda a: jnp.repeat(a, 2, axis=0), sub)
    logits = run_with_hooks(params, cfg, rep, M.set_feature(pc, np.repeat(own, 2), 26))
    assert_close(M.logit_diff(logits)[::2], ld[:, 0, orig], rtol=1e-4)
    assert (np.sign(curve[:, 0]) == -np.sign(curve[:, 1])).all()
    assert ((curve[:, 1] > curve[:, 0]) == (np.asarray([lay[1] for lay in adv.layouts]) == 0)).all()


def test_l0h1_attends_to_the_instruction_frame(model, adversaries):
    cfg, params = model
    adv = adversaries[0]
    att = np.asarray(M.decision_attention(params, cfg, adv.inputs))
    assert att.shape == (cfg.n_layers, adv.inputs.batch, cfg.n_heads, 26)
    assert_close(att.sum(-1), np.ones(att.shape[:-1]))
    orig = np.arange(adv.inputs.batch).reshape(adv.shape)[..., 0].ravel()
    s5 = att[0, orig, 1, M.INSTRUCTION_POS]
    assert s5.min() >= 0.93 - TOL and s5.max() <= 0.99 + TOL


# ---------------------------------------------------------------------------------------------
# Hand-made cases
# ---------------------------------------------------------------------------------------------


def test_pca_on_planted_data():
    """Points +-3 along e0 and +-1 along e1, shifted: variances 18 and 2 (ratios 0.9, 0.1)."""
    offset = np.asarray([5.0, -2.0, 1.0])
    X = np.asarray([[3, 0, 0], [-3, 0, 0], [0, 1, 0], [0, -1, 0]], np.float32) + offset
    p = M.pca(jnp.asarray(X), 2)
    assert_close(p.explained, [0.9, 0.1])
    assert_close(p.mean, offset)
    assert_close(np.abs(p.components), [[1, 0, 0], [0, 1, 0]], floor=1.0)
    assert_close(p.scores, (X - offset) @ np.asarray(p.components).T)
    assert np.max(p.scores[:, 0]) >= -np.min(p.scores[:, 0])  # the largest score is positive
    neg = int(np.argmin(p.scores[:, 0]))
    q = M.orient(p, 0, neg)  # the row scoring -3 on PC0 made positive: PC0 flipped, PC1 kept
    assert q.scores[neg, 0] > 0
    assert_close(q.scores[:, 0], -np.asarray(p.scores[:, 0]))
    assert_close(q.scores[:, 1], p.scores[:, 1])
    with pytest.raises(ValueError, match="n_components"):
        M.pca(jnp.asarray(X), 4)


def test_restored_fraction_formula():
    assert_close(M.restored_fraction(1.0, -3.0, 5.0), 0.5)
    ld = jnp.asarray([[2.0, -2.0, 0.0, 1.0, -3.0]])  # original, flipped, three edits
    assert_close(M.restored_fractions(ld), [[0.0, 1.0, 0.5, 0.25, 1.25]])


def test_edit_frame_paints_the_complement_object_only():
    frame = np.zeros((7, 7, 20), np.uint8)
    frame[..., [1, 11, 17]] = 1  # every cell empty (object 1, red, open)
    frame[2, 6, [5, 11, 17]] = 1
    frame[2, 6, 1] = 0  # a key at the instruction cell
    out = M.edit_frame(frame, ((2, 6), (0, 5)), instruction=0)
    assert sorted(np.nonzero(out[2, 6])[0]) == [6, 11, 17] and sorted(np.nonzero(out[0, 5])[0]) == [6, 11, 17]
    same = np.ones((7, 7), bool)
    same[2, 6] = same[0, 5] = False
    assert (out[same] == frame[same]).all() and out.sum() == frame.sum()
    assert sorted(np.nonzero(M.edit_frame(frame, ((4, 2),), 1)[4, 2])[0]) == [5, 11, 17]
    with pytest.raises(ValueError, match="instruction"):
        M.edit_frame(frame, (), 2)


def test_layout_frames_show_the_instruction_and_the_targets():
    frames = M.layout_frames()
    assert frames.shape == (4, 5, 7, 7, 20)
    for (instruction, top), f in zip(M.LAYOUTS, frames, strict=True):
        assert f[0, 2, 6, M.KEY_CH + instruction] == 1  # the instruction at (2, 6) in the start view
        assert f[4, 1, 6, M.KEY_CH + top] == 1 and f[4, 5, 6, M.KEY_CH + 1 - top] == 1  # top object on the left
        assert (f.sum(-1) == 3).all()


def test_set_feature_sets_the_coefficient_at_one_position():
    x = np.random.default_rng(0).normal(size=(2, 5, 4)).astype(np.float32)
    d = np.asarray([1.0, 2.0, 0.0, -2.0], np.float32)
    name = "blocks.0.hook_resid_pre"
    iv = M.set_feature(jnp.asarray(d), jnp.asarray([1.5, -0.5]), 5, pos=3)[name]
    out = np.asarray(jax.jit(lambda a, iv: hooks.apply_intervention(name, iv, a))(x, iv))
    u = d / 3.0
    assert_close(out[:, 3] @ u, [1.5, -0.5], floor=1.0)
    assert_close(out[:, 3] - np.outer(out[:, 3] @ u, u), x[:, 3] - np.outer(x[:, 3] @ u, u))
    assert_close(np.delete(out, 3, axis=1), np.delete(x, 3, axis=1))


def test_preprocessing_and_cosines_by_hand():
    W = jnp.asarray([[1.0, 3.0], [2.0, 2.0], [0.0, 4.0]])  # item means 2, 2, 2
    P = M.preprocess_writeup(W)
    assert_close(P, np.asarray([[-1, 1], [0, 0], [-2, 2]]) / np.sqrt(5.0))
    assert_close(M.cosine_matrix(jnp.asarray([[1.0, 0.0], [1.0, 1.0], [-2.0, 0.0]])),
                 [[1, 2**-0.5, -1], [2**-0.5, 1, -(2**-0.5)], [-1, -(2**-0.5), 1]])
    items = [(5, 0, 0), (6, 0, 0), (5, 1, 0)]
    assert M.cosine_categories(items).tolist() == [[3, 2, 1], [2, 3, 0], [1, 0, 3]]
    assert M.item_index(6, 2, 6) == 6 * 49 + 2 * 7 + 6 and M.item_label(6, 2, 6) == "ball (2,6)"


@pytest.mark.slow
def test_report_sections_write_the_summary_keys(tmp_path):
    """analyse.py's two Memory sections on MemoryGatedMLP.pt: the summary keys and values."""
    build_report(PT, tmp_path, ReportOptions(strict=True, closed_loop=False,
                                             sections=("memory_features", "memory_adversaries")), log=lambda m: None)
    s = json.loads((tmp_path / "summary.json").read_text())
    np.testing.assert_allclose(s["memory.pca.instruction.explained"], [0.7561, 0.0834], atol=TOL)
    rows = s["memory.adversaries"]
    assert len(rows) == 40 and set(rows[0]) == {"instruction", "targets", "rtg", "edit", "restored"}
    for r in rows:
        if r["edit"].startswith("complement"):
            want = RESTORED[(r["instruction"], r["targets"])][r["rtg"]][list(M.EDITS).index(r["edit"]) - 2]
            assert abs(r["restored"] - want) <= TOL, r
