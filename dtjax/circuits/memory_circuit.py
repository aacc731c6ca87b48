"""The memory circuit of a Memory model: which heads carry the instruction, seen in the first real
frame, to the junction decision four steps later, how the RTG enters, and how faithful the found
circuit is. Pure functions over the edge graph of ``dtjax.circuits.graph``, position-resolved.

The pairs (the write-up's 9-timestep contexts of ``dtjax.circuits.memory``, at the junction; batch
= the two layouts whose match is on one side):

- ``instruction_pair``: the layouts whose match is on top (clean; left is right) against the same
  targets with the other instruction (corrupted; right is right). They differ only in the S5
  frame, the instruction frame (token ``memory.INSTRUCTION_POS`` = 13): the history, not the
  current view (the task's ``pairs``, "same junction state, other instruction").
- ``rtg_pair``: the same clean contexts at RTG 0.892 against RTG 0 (where the model goes to the
  wrong object).

Metric, as the circuit sections: the batch-mean logit difference along a direction over actions
(left - right) at the decision token (the last state token); patching is denoising (the corrupted
run, clean values restored), normalised (m - m_corr) / (m_clean - m_corr).

- ``head_input_patching``: every head's query, key or value input restored at one token position
  (all its senders at once): (q/k/v, layer, head, position); where the instruction and the RTG are
  read, and by which head.
- ``source_edge_patching``: one sender at one position (the S5 state embedding) -> each receiver
  at that position: the first hop of the path.
- ``graph.path_patching_matrix``: each head -> each later receiver (q, k, v of the next layer's
  heads, the MLPs, the logits): the composition between layers, measured by patching.
- ``head_source_dla``: each head's direct logit contribution at the decision token split by the
  source position it attends to (attention x value x W_O, through the final LayerNorm's frozen
  scale): how much of the decision comes straight from S5, or from the R tokens.
- ``faithfulness``: the metric of a kept-edge set (per position or over all) with every other edge
  patched from the corrupted run or mean-ablated, per context: the un-normalised logit
  differences, the fraction of the clean one, the normalised effect and the decision accuracy.
- ``path_circuit`` / ``circuit_line``: the circuit as a position-resolved edge set from the
  measured effects and its one-line statement ("S5 -> L0H1 (v) -> ... -> logits").
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from dtjax.circuits import graph as G
from dtjax.circuits import memory as M
from dtjax.circuits.core import Inputs, action_vector, check_pair, run_with_cache
from dtjax.config import ModelConfig

RTG = 0.892  # the write-up's target RTG
MATCH_TOP = ((0, 0), (1, 1))  # (instruction, top) layouts whose match is on top: left is right
MATCH_BOTTOM = ((1, 0), (0, 1))  # the same targets in order, the other instruction: right is right
QKV = G.QKV
THRESHOLD = 0.1  # a normalised effect counted as part of the circuit


def pair_inputs(layouts, rtg: float = RTG, pad_rtg: str = "initial") -> Inputs:
    """The write-up's junction contexts (9 timesteps, original frames) of ``layouts`` at ``rtg``;
    the 4 padding frames hold ``rtg`` too (``pad_rtg="initial"``, the original's convention) or 0
    (``"zero"``, ``ModelConfig.pad_rtg`` of a model trained so)."""
    if pad_rtg not in ("initial", "zero"):
        raise ValueError(f"pad_rtg must be 'initial' or 'zero', got {pad_rtg!r}")
    inputs = M.adversary_inputs(rtgs=(rtg,), edits=("original",), layouts=tuple(layouts)).inputs
    if pad_rtg == "zero":
        inputs = inputs.replace(rtg=inputs.rtg.at[:, :M.N_PAD].set(0.0))
    return inputs


def instruction_pair(rtg: float = RTG, match_top: bool = True, pad_rtg: str = "initial") -> tuple[Inputs, Inputs]:
    """(clean, corrupted): the layouts with the match on top (``match_top``; else on the bottom)
    against the same targets with the other instruction; they differ only in the S5 frame."""
    a, b = (MATCH_TOP, MATCH_BOTTOM) if match_top else (MATCH_BOTTOM, MATCH_TOP)
    return pair_inputs(a, rtg, pad_rtg), pair_inputs(b, rtg, pad_rtg)


def rtg_pair(rtg: float = RTG, corrupted_rtg: float = 0.0, match_top: bool = True,
             pad_rtg: str = "initial") -> tuple[Inputs, Inputs]:
    """(clean, corrupted): the same contexts at ``rtg`` and at ``corrupted_rtg``."""
    lay = MATCH_TOP if match_top else MATCH_BOTTOM
    return pair_inputs(lay, rtg, pad_rtg), pair_inputs(lay, corrupted_rtg, pad_rtg)


def decision_direction(match_top: bool = True, n_actions: int = 7) -> jax.Array:
    """(n_actions,) left - right for the match-on-top contexts, right - left for the others."""
    return action_vector(("left", "right") if match_top else ("right", "left"), n_actions)


def n_positions(inputs: Inputs) -> int:
    """Tokens of ``inputs``: R, s (and a, when fed) per timestep."""
    k = inputs.n_timesteps
    return 2 * k + (0 if inputs.actions is None else inputs.actions.shape[1])


def _normalise(m, m_clean, m_corr):
    d = m_clean - m_corr
    return (m - m_corr) / jnp.where(jnp.abs(d) < 1e-9, jnp.nan, d)


# ---------------------------------------------------------------------------------------------
# POSITION-RESOLVED EDGE PATCHING
# ---------------------------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("cfg",))
def _masked_chunk(params, cfg, base, patch, masks, v):
    return jax.vmap(lambda m: G.graph_forward(params, cfg, base, patch, m)[:, -1] @ v)(masks)


def masked_logit_diffs(params: dict, cfg: ModelConfig, base: Inputs, patch: jax.Array, masks, v: jax.Array,
                       chunk: int = 8) -> jax.Array:
    """(n_masks, batch): the logit along ``v`` (n_actions,) at the last state token of ``base``
    with each of ``masks`` (n_masks, n_senders, n_receivers[, pos]) patched to ``patch``
    (``graph.graph_forward``), ``chunk`` masks per call: one compile per model and input shape,
    whatever the number of masks."""
    masks = np.asarray(masks, np.float32)
    n = len(masks)
    masks = np.concatenate([masks, np.zeros(((-n) % chunk,) + masks.shape[1:], np.float32)])
    out = [_masked_chunk(params, cfg, base, patch, jnp.asarray(masks[i:i + chunk]), v)
           for i in range(0, len(masks), chunk)]
    return jnp.concatenate(out)[:n]


def _patch_setup(params, cfg, clean, corrupted, direction):
    check_pair(clean, corrupted)
    v = action_vector(direction, cfg.n_actions)
    clean_logits, p_clean = G.sender_outputs(params, cfg, clean)
    corr_logits, _ = G.sender_outputs(params, cfg, corrupted)
    return v, p_clean, (clean_logits[:, -1] @ v).mean(), (corr_logits[:, -1] @ v).mean()


def head_input_patching(params: dict, cfg: ModelConfig, clean: Inputs, corrupted: Inputs,
                        direction: Any = "left-right") -> dict:
    """Each head's q, k or v input restored to its clean value at one token position (every
    sender's edge into it at that position), the rest of the corrupted run recomputed.

    Returns ``effects`` (3 [q, k, v], n_layers, n_heads, pos) normalised, ``clean``, ``corrupted``.
    A head that moves information from position p to the decision token shows it in k and v at p;
    the decision token's own query is q at the last position.
    """
    v, p_clean, m_clean, m_corr = _patch_setup(params, cfg, clean, corrupted, direction)
    g = G.inputs_graph(cfg, corrupted)
    n_pos = n_positions(corrupted)
    L, H = cfg.n_layers, cfg.n_heads
    idx = np.asarray([[[g.receivers.index(f"L{l}H{h}.{c}") for h in range(H)] for l in range(L)] for c in QKV])
    masks = np.zeros((3, L, H, n_pos, len(g.senders), len(g.receivers), n_pos), np.float32)
    for (c, l, h), r in np.ndenumerate(idx):
        for p in range(n_pos):
            masks[c, l, h, p, :, r, p] = 1.0
    lds = masked_logit_diffs(params, cfg, corrupted, p_clean, masks.reshape((-1,) + masks.shape[4:]), v)
    eff = _normalise(lds.mean(1), m_clean, m_corr).reshape(3, L, H, n_pos)
    return {"effects": eff, "clean": m_clean, "corrupted": m_corr}


def source_edge_patching(params: dict, cfg: ModelConfig, clean: Inputs, corrupted: Inputs, sender: str, pos: int,
                         direction: Any = "left-right") -> dict:
    """The edge ``sender`` -> each receiver at token ``pos`` alone restored to clean (denoising).

    Returns ``receivers`` (labels), ``effects`` (n_receivers,) normalised (NaN where no edge),
    ``clean``, ``corrupted``.
    """
    v, p_clean, m_clean, m_corr = _patch_setup(params, cfg, clean, corrupted, direction)
    g = G.inputs_graph(cfg, corrupted)
    s, n_pos = g.sender_index(sender), n_positions(corrupted)
    masks = np.zeros((len(g.receivers), len(g.senders), len(g.receivers), n_pos), np.float32)
    for r in range(len(g.receivers)):
        masks[r, s, r, pos] = 1.0
    lds = masked_logit_diffs(params, cfg, corrupted, p_clean, masks, v)
    eff = jnp.where(jnp.asarray(g.allowed[s]), _normalise(lds.mean(1), m_clean, m_corr), jnp.nan)
    return {"receivers": list(g.receivers), "effects": eff, "clean": m_clean, "corrupted": m_corr}


# ---------------------------------------------------------------------------------------------
# DIRECT LOGIT ATTRIBUTION BY SOURCE POSITION, ATTENTION
# ---------------------------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("cfg",))
def head_source_dla(params: dict, cfg: ModelConfig, inputs: Inputs, direction: jax.Array) -> jax.Array:
    """(batch, n_layers, n_heads, key_pos): each head's direct contribution to the logit along
    ``direction`` (n_actions,) at the last state token, split by the source token it attends to:
    pattern[q, p] (v[p] @ W_O) through the final LayerNorm (centred, the cached scale) and W_U.
    Summed over the source positions it is the head's DLA (b_O not included)."""
    names = [(n, layer) for layer in range(cfg.n_layers) for n in ("pattern", "v")] + ["ln_final.hook_scale"]
    _, cache = run_with_cache(params, cfg, inputs, names=names)
    q = n_positions(inputs) - 1
    u = params["W_U"] @ direction
    if cfg.layer_norm:
        u = params["ln_final"]["w"] * u
    out = []
    for layer in range(cfg.n_layers):
        a = params[f"blocks_{layer}"]["attn"]
        pat = cache[f"blocks.{layer}.attn.hook_pattern"][:, :, q]  # (batch, head, key_pos)
        val = jnp.einsum("bphe,hed->bphd", cache[f"blocks.{layer}.attn.hook_v"], a["W_O"])
        if cfg.layer_norm:
            val = (val - val.mean(-1, keepdims=True)) / cache["ln_final.hook_scale"][:, q][:, None, None]
        out.append(jnp.einsum("bhp,bphd,d->bhp", pat, val, u))
    return jnp.stack(out, axis=1)


def decision_attention(params: dict, cfg: ModelConfig, inputs: Inputs) -> jax.Array:
    """(batch, n_layers, n_heads, key_pos): every head's attention from the decision token."""
    return jnp.moveaxis(M.decision_attention(params, cfg, inputs), 0, 1)


# ---------------------------------------------------------------------------------------------
# FAITHFULNESS OF A CIRCUIT
# ---------------------------------------------------------------------------------------------


def ablation_patch(params: dict, cfg: ModelConfig, clean: Inputs, corrupted: Inputs | None = None,
                   reference: Inputs | None = None) -> jax.Array:
    """The values edges outside a circuit carry (n_senders, batch, pos, d_model): the senders'
    outputs on ``corrupted`` (patched from the corrupted run) or, given ``reference``, their mean
    over its batch per position (mean ablation), broadcast to ``clean``'s batch."""
    if (corrupted is None) == (reference is None):
        raise ValueError("give exactly one of corrupted (patching) and reference (mean ablation)")
    if corrupted is not None:
        check_pair(clean, corrupted)
        return G.sender_outputs(params, cfg, corrupted)[1]
    if n_positions(reference) != n_positions(clean):
        raise ValueError(f"the reference has {n_positions(reference)} tokens, the circuit's inputs {n_positions(clean)}")
    out = G.sender_outputs(params, cfg, reference)[1].mean(1, keepdims=True)
    return jnp.broadcast_to(out, out.shape[:1] + (clean.batch,) + out.shape[2:])


@functools.partial(jax.jit, static_argnames=("cfg",))
def _faith(params, cfg, clean, patch, kept, v):
    full = jnp.ones_like(kept, jnp.float32)
    lds = [G.graph_forward(params, cfg, clean, patch, m)[:, -1] @ v
           for m in (jnp.zeros_like(full), 1.0 - kept.astype(jnp.float32), full)]
    return tuple(lds)


def faithfulness(params: dict, cfg: ModelConfig, clean: Inputs, patch: jax.Array, kept,
                 direction: Any = "left-right") -> dict:
    """A circuit's behaviour with every edge outside it carrying ``patch`` (``ablation_patch``).

    ``kept``: bool (n_senders, n_receivers) edges over all positions or (n_senders, n_receivers,
    pos) per receiver position (``edge_positions``). Per context (batch,): ``clean`` (the model),
    ``circuit``, ``empty`` (every edge patched) logit differences along ``direction``. Summaries:
    ``fraction`` = mean(circuit) / mean(clean) (1 for the full graph, mean(empty) / mean(clean)
    for the empty one); ``normalised`` = (mean(circuit) - mean(empty)) / (mean(clean) -
    mean(empty)); ``accuracy``: the fraction of contexts where the circuit's logit difference has
    the model's sign (the same turn).
    """
    v = action_vector(direction, cfg.n_actions)
    allowed = G.inputs_graph(cfg, clean).allowed
    kept = np.asarray(kept, bool)
    if kept.ndim == 2:  # over all positions: one compile for both kinds of mask
        kept = np.repeat(kept[..., None], n_positions(clean), -1)
    kept = kept & allowed[:, :, None]
    clean_ld, circ, empty = _faith(params, cfg, clean, patch, jnp.asarray(kept), v)
    mc, mk, me = clean_ld.mean(), circ.mean(), empty.mean()
    return {"clean": clean_ld, "circuit": circ, "empty": empty, "fraction": mk / mc,
            "normalised": _normalise(mk, mc, me), "accuracy": (jnp.sign(circ) == jnp.sign(clean_ld)).mean(),
            "n_edges": int(kept.sum())}


def edge_positions(cfg: ModelConfig, inputs: Inputs, edges) -> np.ndarray:
    """A kept mask (n_senders, n_receivers, pos) bool from ``edges``: (sender, receiver) over all
    positions or (sender, receiver, positions) with positions an int or a list of ints."""
    g = G.inputs_graph(cfg, inputs)
    n_pos = n_positions(inputs)
    m = np.zeros(g.allowed.shape + (n_pos,), bool)
    for e in edges:
        pos = list(range(n_pos)) if len(e) == 2 else np.atleast_1d(e[2]).tolist()
        bad = [p for p in pos if not -n_pos <= p < n_pos]
        if bad:
            raise ValueError(f"edge {e[:2]}: position {bad[0]} is outside the {n_pos} tokens")
        rows = g.edge_mask([e[:2]])
        for p in pos:
            m[..., p] |= rows
    return m


# ---------------------------------------------------------------------------------------------
# THE CIRCUIT: FROM THE MEASURED EFFECTS TO AN EDGE SET AND ONE LINE
# ---------------------------------------------------------------------------------------------


def token_label(pos: int) -> str:
    """The app's label of token ``pos``: R1, S1, A1, R2, ... (timesteps from 1; S5 = token 13)."""
    return f"{'RSA'[pos % 3]}{pos // 3 + 1}"


def _owner(receiver: str) -> str:
    return receiver.split(".")[0]


def _paths(edges: dict, start: str, end: str = "logits") -> list[list[str]]:
    """Every path start -> ... -> end over ``edges`` {(sender, receiver component): effect}."""
    out = []

    def walk(path):
        if path[-1] == end:
            out.append(path)
            return
        for (s, r) in edges:
            if s == path[-1] and r not in path:
                walk(path + [r])

    walk([start])
    return out


def circuit_path(params: dict, cfg: ModelConfig, clean: Inputs, corrupted: Inputs, direction: Any = "left-right",
                 patching: dict | None = None, threshold: float = THRESHOLD) -> dict:
    """The circuit that carries the pair's difference, from the measured effects.

    1. The reader: the (input, head, position) of ``head_input_patching`` (``patching``, computed
       if None) with the largest effect; its source is the embedding of that token.
    2. Downstream: path patching (MLPs frozen: each edge on its own) from the reader and every later
       sender to every later receiver; the edges with effect > ``threshold`` form a graph, and its
       paths from the reader to the logits are the circuit.

    Returns ``source`` (token label), ``pos``, ``head``, ``input`` ("q"/"k"/"v"), ``reader_effect``,
    ``edges`` {"sender -> receiver": effect} over ``threshold``, ``paths`` (lists of nodes), ``line``
    (one line: "S5 -> L0H1 (v) -> [L0_mlp -> L1_mlp -> logits | L1_mlp -> logits]") and ``kept``
    (the position-resolved edge set of ``edge_positions``: source embedding -> the reader's input at
    its position, the reader's query at the decision token and keys everywhere from every earlier
    sender, and every downstream edge at the decision token).
    """
    patching = patching or head_input_patching(params, cfg, clean, corrupted, direction)
    eff = np.nan_to_num(np.asarray(patching["effects"]), nan=-np.inf)
    c, layer, h, pos = np.unravel_index(np.argmax(eff), eff.shape)
    head, inp = f"L{layer}H{h}", QKV[c]
    g = G.inputs_graph(cfg, clean)
    stage = g.send_stage[g.sender_index(head)]
    senders = [head] + [s for s, st in zip(g.senders, g.send_stage) if st > stage]
    receivers = [r for r, st in zip(g.receivers, g.recv_stage) if st > stage]
    pm = np.asarray(G.path_patching_matrix(params, cfg, clean, corrupted, senders, receivers, direction,
                                           freeze_mlps=True)["effects"])
    strong = {}
    for i, s in enumerate(senders):
        for j, r in enumerate(receivers):
            if np.isfinite(pm[i, j]) and pm[i, j] > threshold:
                key = (s, _owner(r))
                strong[key] = max(strong.get(key, -np.inf), float(pm[i, j]))
    paths = _paths(strong, head)
    used = {(p[i], p[i + 1]) for p in paths for i in range(len(p) - 1)}
    src = token_label(int(pos))
    tails = [" → ".join(p[1:]) for p in paths]
    line = f"{src} → {head} ({inp}) → " + (tails[0] if len(tails) == 1 else "[" + " | ".join(tails) + "]") \
        if tails else f"{src} → {head} ({inp}); no path to the logits above {threshold:g}"
    n_pos, dec = n_positions(clean), n_positions(clean) - 1
    source = ("embed_rtg", "embed_state", "embed_action")[int(pos) % 3]
    earlier = [s for s, st in zip(g.senders, g.send_stage) if st < stage]
    kept = [(source, f"{head}.{inp}", int(pos))]
    kept += [(s, f"{head}.q", dec) for s in earlier] + [(s, f"{head}.k") for s in earlier]
    for s, r in used:
        for rr in ([r] if r in g.receivers else [f"{r}.{x}" for x in QKV]):
            kept.append((s, rr, dec))
    return {"source": src, "pos": int(pos), "head": head, "input": inp, "reader_effect": float(eff[c, layer, h, pos]),
            "edges": {f"{s} → {r}": round(x, 4) for (s, r), x in strong.items()}, "paths": paths, "line": line,
            "kept": edge_positions(cfg, clean, kept), "n_pos": n_pos}


def with_view(cfg: ModelConfig, inputs: Inputs, kept: np.ndarray) -> np.ndarray:
    """``kept`` plus every embedding's edge into the receivers the circuit uses at the decision
    token (the current view: what a mean ablation would otherwise take from them)."""
    g = G.inputs_graph(cfg, inputs)
    dec = n_positions(inputs) - 1
    out = np.array(kept, bool)
    used = out[:, :, dec].any(0)  # receivers with a kept edge at the decision token
    emb = np.asarray([s.startswith("embed_") for s in g.senders])
    out[:, :, dec] |= emb[:, None] & used[None, :] & g.allowed
    return out
