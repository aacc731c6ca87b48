"""dtjax.circuits.memory_circuit (and graph's per-position masks): what each function computes on a
hand-built 1-layer attention-only model whose circuit is known, identities on a random 2-layer
LayerNorm model, and the report's instruction pair on a Memory model. The MemoryGatedMLP numbers
are a slow test (the position sweep takes ~15 s on 2 cores)."""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dtjax import circuits as C
from dtjax.circuits import graph as G
from dtjax.circuits import memory as M
from dtjax.circuits import memory_circuit as MC
from dtjax.config import EnvConfig, ModelConfig
from dtjax.report import Context, ReportOptions
from dtjax.report.sections.circuits import circuit_pairs
from fixtures import quick_compiles, random_params
from tolerance import assert_close, assert_normalised_close

# 1 layer, 2 heads, no MLP, no LN, 3 timesteps (8 tokens: R s a R s a R s)
HAND = ModelConfig(n_layers=1, d_model=8, n_heads=2, d_head=4, d_mlp=8, n_timesteps=3, max_timestep=10, attn_only=True)
RAND = ModelConfig(n_layers=2, d_model=16, n_heads=2, d_head=8, d_mlp=16, n_timesteps=3, max_timestep=10,
                   layer_norm=True)
T_STAR = 1  # the one timestep whose observation differs between clean and corrupted
P_STAR = 3 * T_STAR + 1  # its state token
DIR = "left-right"


def _hand_params():
    """Keys zero (every head attends uniformly), head 1's values zero (it writes nothing): the
    only path from the differing S2 frame to the decision is S2 -> L0H0's value -> logits."""
    p = random_params(HAND, 0)
    a = dict(p["blocks_0"]["attn"])
    a["W_K"], a["b_K"] = jnp.zeros_like(a["W_K"]), jnp.zeros_like(a["b_K"])
    a["W_V"], a["b_V"] = a["W_V"].at[1].set(0.0), a["b_V"].at[1].set(0.0)
    return {**p, "blocks_0": {**p["blocks_0"], "attn": a}}


def _pair(cfg, b=3, seed=0):
    rng = np.random.default_rng(seed)
    k = cfg.n_timesteps
    obs = rng.integers(0, 9, (b, k) + cfg.obs_shape).astype(np.uint8)
    other = obs.copy()
    other[:, T_STAR] = rng.integers(0, 9, other[:, T_STAR].shape)
    common = dict(rtg=jnp.asarray(rng.uniform(-1, 1, (b, k)), jnp.float32),
                  timesteps=jnp.asarray(np.tile(np.arange(k), (b, 1)), jnp.int32),
                  actions=jnp.asarray(rng.integers(0, 3, (b, k - 1)), jnp.int32))
    return C.Inputs(obs=jnp.asarray(obs), **common), C.Inputs(obs=jnp.asarray(other), **common)


_quick_compiles = pytest.fixture(scope="module", autouse=True, name="_quick_compiles")(quick_compiles)


@pytest.fixture(scope="module")
def hand():
    params = _hand_params()
    clean, corr = _pair(HAND)
    return params, clean, corr, MC.head_input_patching(params, HAND, clean, corr, DIR)


def test_head_input_patching_finds_the_known_reader(hand):
    """Only L0H0's value at the differing state token carries the difference: effect 1 there, 0
    (to rounding) at every other (input, head, position)."""
    params, clean, corr, res = hand
    eff = np.asarray(res["effects"])
    assert eff.shape == (3, 1, 2, 8)
    assert_normalised_close(eff[2, 0, 0, P_STAR], 1.0, res["clean"], res["corrupted"])
    rest = eff.copy()
    rest[2, 0, 0, P_STAR] = 0.0
    assert np.abs(rest).max() < 1e-4, rest


def test_source_edges_and_the_stated_path(hand):
    params, clean, corr, res = hand
    first = MC.source_edge_patching(params, HAND, clean, corr, "embed_state", P_STAR, DIR)
    eff = dict(zip(first["receivers"], np.asarray(first["effects"])))
    assert_normalised_close(eff["L0H0.v"], 1.0, first["clean"], first["corrupted"])
    assert max(abs(x) for r, x in eff.items() if r != "L0H0.v") < 1e-4, eff
    path = MC.circuit_path(params, HAND, clean, corr, DIR, res)
    assert path["line"] == "S2 → L0H0 (v) → logits" and path["paths"] == [["L0H0", "logits"]]
    assert (path["head"], path["input"], path["pos"]) == ("L0H0", "v", P_STAR)


def test_faithfulness_full_empty_and_the_known_circuit(hand):
    """Full graph: the clean logits; empty graph patched from the corrupted run: the corrupted
    logits; the known circuit (S2 -> L0H0.v at S2, L0H0 -> logits) with everything else corrupted:
    the clean logits again (fraction 1); mean ablation: every context the same when nothing is kept."""
    params, clean, corr, _ = hand
    v = C.action_vector(DIR, HAND.n_actions)
    ld_clean = C.forward(params, HAND, clean)[:, -1] @ v
    ld_corr = C.forward(params, HAND, corr)[:, -1] @ v
    g = G.inputs_graph(HAND, clean)
    patch = MC.ablation_patch(params, HAND, clean, corrupted=corr)
    full = MC.faithfulness(params, HAND, clean, patch, np.ones(g.allowed.shape, bool), DIR)
    assert_close(full["circuit"], ld_clean)
    assert_close(full["clean"], ld_clean)
    assert_close(full["empty"], ld_corr)
    assert_close(full["fraction"], 1.0)
    assert full["accuracy"] == 1.0 and full["n_edges"] == 8 * int(g.allowed.sum())
    kept = MC.edge_positions(HAND, clean, [("embed_state", "L0H0.v", P_STAR), ("L0H0", "logits", 7)])
    circ = MC.faithfulness(params, HAND, clean, patch, kept, DIR)
    assert circ["n_edges"] == 2
    assert_close(circ["circuit"], ld_clean, rtol=1e-4)
    assert_normalised_close(circ["normalised"], 1.0, ld_clean, ld_corr)
    wrong = MC.faithfulness(params, HAND, clean, patch, MC.edge_positions(HAND, clean, [("embed_state", "L0H0.v", 1)]), DIR)
    assert_close(wrong["circuit"], ld_corr, rtol=1e-4)  # the right edge at the wrong position keeps nothing
    mean = MC.ablation_patch(params, HAND, clean, reference=C.Inputs.concat([clean, corr]))
    empty = MC.faithfulness(params, HAND, clean, mean, np.zeros(g.allowed.shape, bool), DIR)
    assert_close(empty["circuit"], np.full(clean.batch, float(empty["circuit"][0])), rtol=1e-5)
    assert_close(empty["fraction"], float(empty["circuit"].mean() / ld_clean.mean()), rtol=1e-5)


def test_bad_inputs_are_one_line_errors(hand):
    params, clean, corr, _ = hand
    with pytest.raises(ValueError, match="position 8 is outside the 8 tokens"):
        MC.edge_positions(HAND, clean, [("embed_state", "L0H0.v", 8)])
    with pytest.raises(ValueError, match="exactly one of corrupted"):
        MC.ablation_patch(params, HAND, clean)
    with pytest.raises(ValueError, match="pad_rtg must be 'initial' or 'zero', got 'none'"):
        MC.instruction_pair(pad_rtg="none")


@pytest.fixture(scope="module")
def rand():
    return random_params(RAND, 1), *_pair(RAND, seed=2)


def test_per_position_mask_equals_the_edge_mask_when_it_covers_every_position(hand):
    params, clean, corr, _ = hand
    g = G.inputs_graph(HAND, clean)
    _, patch = G.sender_outputs(params, HAND, corr)
    mask = np.random.default_rng(0).random(g.allowed.shape) < 0.5
    two = G.graph_forward(params, HAND, clean, patch, jnp.asarray(mask, jnp.float32))
    three = G.graph_forward(params, HAND, clean, patch, jnp.asarray(np.repeat(mask[..., None], 8, -1), jnp.float32))
    assert_close(three, two)


def test_path_patching_matrix_is_path_patching_per_pair(hand):
    """Each cell is ``path_patching`` of its (sender, receiver); NaN where there is no edge."""
    params, clean, corr, _ = hand
    m = G.path_patching_matrix(params, HAND, clean, corr, ["L0H0", "L0H1", "embed_state"], ["logits", "L0H1.v"], DIR)
    for i, s in enumerate(["L0H0", "L0H1", "embed_state"]):
        one = G.path_patching(params, HAND, clean, corr, s, "logits", DIR)
        assert_close(m["effects"][i, 0], one["effect"], rtol=1e-4, floor=1.0)
    assert_normalised_close(m["effects"][0, 0], 1.0, m["clean"], m["corrupted"])
    assert np.isnan(m["effects"][0, 1]) and np.isnan(m["effects"][1, 1])  # same layer: no edge
    assert_close(m["effects"][2, 1], 0.0, floor=1.0)  # head 1's values are zero: it carries nothing


def test_head_source_dla_sums_to_the_heads_dla(rand):
    """Summed over source positions: each head's output at the decision token (z @ W_O) through the
    final LayerNorm (centred, the cached scale, its weight) and W_U, along the direction."""
    params, clean, _ = rand
    v = C.action_vector(DIR, RAND.n_actions)
    by_src = np.asarray(MC.head_source_dla(params, RAND, clean, v))  # (batch, layer, head, pos)
    names = [("z", l) for l in range(2)] + ["ln_final.hook_scale"]
    _, cache = C.run_with_cache(params, RAND, clean, names=names)
    u = np.asarray(params["ln_final"]["w"]) * (np.asarray(params["W_U"]) @ np.asarray(v))
    scale = np.asarray(cache["ln_final.hook_scale"])[:, -1]  # (batch, 1)
    for l in range(2):
        out = np.einsum("bhe,hed->bhd", np.asarray(cache[f"blocks.{l}.attn.hook_z"])[:, -1],
                        np.asarray(params[f"blocks_{l}"]["attn"]["W_O"]))
        want = (out - out.mean(-1, keepdims=True)) / scale[:, :, None] @ u
        assert_close(by_src[:, l].sum(-1), want, rtol=1e-4)


def test_the_task_pairs_join_the_circuit_pairs_as_instruction():
    """A Memory model's circuit pairs gain "instruction": the task's pairs whose scenarios show the
    same current frame (here hand-made windows that differ only in frame 5), repeated to the common
    batch, which is rounded down to a multiple of the 2 pairs."""
    cfg = ModelConfig(d_model=8, n_heads=2, d_head=4, d_mlp=8, max_timestep=50, n_timesteps=9, n_actions=7,
                      obs_mode="one_hot", layer_norm=True)
    env = EnvConfig("MiniGrid-MemoryS7FixedStart-v0", max_steps=50, obs_mode="one_hot")
    ctx = Context(Path("tiny-memory"), cfg, random_params(cfg), env, ReportOptions(circuit_batch=5), log=lambda m: None)
    names = [n for pair in ctx.task.pairs.values() for n in pair]  # clean, corrupted, clean, corrupted
    rng = np.random.default_rng(0)
    obs = np.repeat(rng.integers(0, 2, (2, 1, 9, 7, 7, 20)), 2, axis=1).reshape(4, 9, 7, 7, 20).astype(np.float32)
    obs[1::2, M.INSTRUCTION_FRAME] = 1 - obs[1::2, M.INSTRUCTION_FRAME]  # the corrupted rows: another S5
    windows = C.Inputs(obs=obs, rtg=np.full((4, 9), 0.9, np.float32), timesteps=np.zeros((4, 9), np.int32),
                       actions=np.full((4, 8), 2, np.int32))  # numpy: no per-shape compiles of eager indexing
    ctx.memo(f"scenarios@{ctx.options.rtg}", lambda: (names, windows))
    ctx.memo("reference", lambda: windows.take(np.arange(4).repeat(2)[:7]))
    pairs, notes = circuit_pairs(ctx)
    assert set(pairs) == {"rtg", "instruction"} and any(n.startswith("Pair instruction") for n in notes)
    ic, ik = pairs["instruction"]
    assert ic.batch == pairs["rtg"][0].batch == 4
    np.testing.assert_array_equal(np.asarray(ic.obs), obs[[0, 2, 0, 2]])
    np.testing.assert_array_equal(np.asarray(ik.obs), obs[[1, 3, 1, 3]])


ORIGINAL = Path(__file__).resolve().parents[1] / "checkpoints" / "original" / "MemoryGatedMLP.pt"


@pytest.mark.slow
@pytest.mark.skipif(not ORIGINAL.exists(), reason="checkpoints/original/MemoryGatedMLP.pt is not here")
def test_the_memory_circuit_of_memory_gated_mlp():
    """docs/findings.md §13, "The memory circuit": S5 -> L0H1 (v) -> MLPs -> logits, faithful."""
    from dtjax.run import Run

    run = Run.open(ORIGINAL).require_model()
    params, cfg = jax.tree.map(jnp.asarray, run.params), run.model_cfg
    clean, corr = MC.instruction_pair()
    diff = np.asarray(clean.obs != corr.obs).reshape(2, 9, -1).any(-1)  # the pair differs only in S5
    assert diff[:, M.INSTRUCTION_FRAME].all() and diff.sum() == 2
    assert MC.token_label(M.INSTRUCTION_POS) == "S5" and MC.token_label(24) == "R9"
    zero = MC.pair_inputs(MC.MATCH_TOP, pad_rtg="zero")  # a model trained with RTG 0 in the padding
    np.testing.assert_array_equal(np.asarray(zero.rtg), np.repeat([[0.0] * 4 + [MC.RTG] * 5], 2, 0).astype(np.float32))
    np.testing.assert_array_equal(np.asarray(zero.obs), np.asarray(clean.obs))
    res = MC.head_input_patching(params, cfg, clean, corr)
    assert_close(res["clean"], 5.5141, rtol=1e-3)
    assert_close(res["corrupted"], -7.0845, rtol=1e-3)
    assert abs(float(res["effects"][2, 0, 1, M.INSTRUCTION_POS]) - 0.986) < 0.01
    path = MC.circuit_path(params, cfg, clean, corr, patching=res)
    assert path["line"] == "S5 → L0H1 (v) → [L0_mlp → L1_mlp → logits | L1_mlp → logits]"
    f = MC.faithfulness(params, cfg, clean, MC.ablation_patch(params, cfg, clean, corrupted=corr), path["kept"])
    assert_close(f["clean"], [3.766, 7.262], rtol=1e-3)  # Key, Key-Ball and Ball, Ball-Key at RTG 0.892
    assert_close(f["circuit"], [4.094, 4.791], rtol=2e-3)  # the instruction only along the path
    assert float(f["accuracy"]) == 1.0
