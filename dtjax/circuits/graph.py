"""The DT as a graph of edges between components, and the analyses over edges: edge-level patching,
edge attribution patching (EAP), path patching and ACDC circuit discovery.

The graph (Elhage et al. 2021's residual stream, as ACDC, EAP and auto-circuit use it). Every
component adds its output to the residual stream, and every component reads the sum of what was
added before it, so each reader's input is a sum over writers that can be patched one writer at a
time. *Senders* (writers), in forward order:

    embed_rtg, embed_state, embed_action (when action tokens are fed), embed_time, embed_pos
        the token embeddings scattered to their positions (their sum is ``resid_pre`` of layer 0)
    L{l}H{h}    head h of layer l: ``hook_result`` = z @ W_O[h] (b_O is a constant, not a sender)
    L{l}_mlp    the MLP of layer l: ``hook_mlp_out``

*Receivers* (readers): ``L{l}H{h}.q|k|v`` (head h's query, key and value inputs, each read
separately, as TransformerLens's ``use_split_qkv_input``), ``L{l}_mlp`` and ``logits``. Each sender
has an edge to every receiver after it. Edges span all token positions.

Edge-level patching (``graph_forward``). A mask ``M`` (sender, receiver) in [0, 1] and a patch
value ``P_u`` for each sender (usually its output on another input) give every receiver v the input

    x_v = sum_u [(1 - M[u, v]) out_u + M[u, v] P_u] + biases          (then v's own LayerNorm)

where ``out_u`` is u's output *in this run* (so a patched edge changes everything downstream of
its receiver). M = 0 is the model; M = 1 everywhere with P from another input is that input's run.
It is built from the model's own modules (``LayerNorm``, ``Attention``, ``MLP`` of
``dtjax.model``), applied layer by layer: each head's q, k and v are projected from its own input
and handed to ``Attention`` through ``hooks.Apply`` at ``hook_q/k/v``, so the masking, scaling and
softmax are the model's. ``dtjax/model.py`` is unchanged and its training path traces no hook.

Conventions shared with ``dtjax.circuits.act_patching.activation_patching``: the metric is the mean logit
difference along a direction over actions at the last state token, and a patching experiment is
*denoising* -- run ``corrupted``, restore ``clean`` -- normalised as
(m_patched - m_corrupted) / (m_clean - m_corrupted). To noise instead, swap the two inputs.

- EAP (Syed, Rager & Conmy 2023, arXiv 2310.10348): score(u -> v) = (P_u - out_u) . dm/dx_v, all
  edges from one forward pass per input and one backward pass: it is ``jax.grad`` of the metric
  with respect to M at M = 0. Because u's output enters every later input unchanged, the scores of
  u's outgoing edges sum to u's node attribution (``attribution_patching`` at its output hook).
  ``ig_steps`` integrates the gradient along M = alpha for every edge at once (EAP-IG, Hanna et
  al. 2024, arXiv 2403.17806), whose scores sum to the whole clean-corrupted difference.
- Path patching (Wang et al. 2022, arXiv 2211.00593, Appendix; Goldowsky-Dill et al. 2023, arXiv
  2304.05969): (1) run both inputs; (2) run the base (corrupted) input with every head except the
  sender frozen at its base output and the sender at its clean output -- the MLPs frozen too
  (``freeze_mlps=True``) or recomputed (``False``, as in the IOI paper) -- and save the receivers'
  inputs; (3) rerun the base input with only the receivers' inputs patched to those, everything
  else recomputed. Both runs are ``graph_forward`` calls.
- ACDC (Conmy et al. 2023, arXiv 2304.14997): from the full graph, visit receivers from the
  logits backwards and, for each, its senders from the latest; patch the edge to the corrupted
  run and keep it patched (remove it) if the KL divergence from the clean model's action
  distribution rises by at most tau. A component none of whose outgoing edges is left cannot
  matter, so its incoming edges go without a test, as in ACDC. The whole search is one
  ``lax.scan`` over the edges; tau is traced.
- Pruning by EAP scores: keep the top-n edges by |EAP score| (noising, as Syed et al.).

Faithfulness of a circuit (a kept-edge set): the metric with every other edge patched to the
corrupted run, normalised as above (1 = the clean model's behaviour, 0 = the corrupted one's).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from dtjax import hooks as hooks_lib
from dtjax import model as model_lib
from dtjax.circuits.core import Inputs, action_vector, check_pair, layer_norm, run_with_cache
from dtjax.config import ModelConfig

EMBED_NODES = ("embed_rtg", "embed_state", "embed_action", "embed_time", "embed_pos")
QKV = ("q", "k", "v")


@dataclasses.dataclass(frozen=True)
class Graph:
    """Senders, receivers and which edges exist, for one model shape and token layout.

    ``send_stage`` / ``recv_stage``: where each node sits in the forward pass (embeddings 0, layer
    l's attention 2l+1, its MLP 2l+2, logits last); an edge exists iff sender stage < receiver stage.
    ``recv_owner``: the sender index of the component each receiver feeds (-1 for the logits).
    """

    senders: tuple[str, ...]
    receivers: tuple[str, ...]
    send_stage: tuple[int, ...]
    recv_stage: tuple[int, ...]
    recv_owner: tuple[int, ...]

    @property
    def allowed(self) -> np.ndarray:
        """(n_senders, n_receivers) bool: the edges of the graph."""
        return np.asarray(self.send_stage)[:, None] < np.asarray(self.recv_stage)[None, :]

    @property
    def edges(self) -> list[tuple[str, str]]:
        """Every edge (sender, receiver), sender-major in forward order."""
        return [(self.senders[i], self.receivers[j]) for i, j in zip(*np.nonzero(self.allowed))]

    def sender_index(self, label: str) -> int:
        if label not in self.senders:
            raise ValueError(f"unknown sender {label!r}; senders are {', '.join(self.senders)}")
        return self.senders.index(label)

    def receiver_indices(self, label: str) -> list[int]:
        """Receivers named by ``label``: one receiver, or a head ("L1H0") for its q, k and v."""
        if label in self.receivers:
            return [self.receivers.index(label)]
        qkv = [self.receivers.index(f"{label}.{c}") for c in QKV if f"{label}.{c}" in self.receivers]
        if not qkv:
            raise ValueError(f"unknown receiver {label!r}; receivers are {', '.join(self.receivers)} "
                             "(or a head label for its q, k and v)")
        return qkv

    def edge_mask(self, edges) -> np.ndarray:
        """(n_senders, n_receivers) bool with True at the given (sender, receiver) edges."""
        m = np.zeros(self.allowed.shape, bool)
        for s, r in edges:
            for j in self.receiver_indices(r):
                m[self.sender_index(s), j] = True
        if (m & ~self.allowed).any():
            raise ValueError(f"no such edge in {list(edges)}: a sender feeds only receivers after it")
        return m

    def edges_of(self, mask) -> list[tuple[str, str]]:
        """The edges where a (n_senders, n_receivers) mask is True (and the edge exists)."""
        m = np.asarray(mask, bool) & self.allowed
        return [(self.senders[i], self.receivers[j]) for i, j in zip(*np.nonzero(m))]


@functools.lru_cache(maxsize=64)
def edge_graph(cfg: ModelConfig, with_actions: bool = True) -> Graph:
    """The edge graph of a model of shape ``cfg`` (``with_actions``: action tokens are fed)."""
    senders = [n for n in EMBED_NODES if with_actions or n != "embed_action"]
    send_stage = [0] * len(senders)
    receivers, recv_stage, recv_owner = [], [], []
    for l in range(cfg.n_layers):
        for h in range(cfg.n_heads):
            receivers += [f"L{l}H{h}.{c}" for c in QKV]
            recv_stage += [2 * l + 1] * 3
            recv_owner += [len(senders) + h] * 3
        senders += [f"L{l}H{h}" for h in range(cfg.n_heads)]
        send_stage += [2 * l + 1] * cfg.n_heads
        if not cfg.attn_only:
            receivers.append(f"L{l}_mlp")
            recv_stage.append(2 * l + 2)
            recv_owner.append(len(senders))
            senders.append(f"L{l}_mlp")
            send_stage.append(2 * l + 2)
    receivers.append("logits")
    recv_stage.append(2 * cfg.n_layers + 1)
    recv_owner.append(-1)
    return Graph(tuple(senders), tuple(receivers), tuple(send_stage), tuple(recv_stage), tuple(recv_owner))


def inputs_graph(cfg: ModelConfig, inputs: Inputs) -> Graph:
    return edge_graph(cfg, inputs.actions is not None)


# ---------------------------------------------------------------------------------------------
# SENDER OUTPUTS AND THE GRAPH FORWARD
# ---------------------------------------------------------------------------------------------


def _embed_outputs(cfg: ModelConfig, cache: dict, with_actions: bool) -> list[jax.Array]:
    """The embedding senders (batch, pos, d_model) each: token embeddings at their own positions,
    the time embedding at every token of its timestep, the positional embedding."""
    pos = cache["hook_pos_embed"]
    b, n, d = pos.shape
    k = cache["hook_rtg_embed"].shape[1]

    def at(slot, x):  # (b, K', d) per-timestep vectors -> (b, n, d) placed at token slot of each timestep
        x = jnp.concatenate([x, jnp.zeros((b, k - x.shape[1], d), x.dtype)], 1)
        return jnp.zeros((b, k, 3, d), x.dtype).at[:, :, slot].set(x).reshape(b, 3 * k, d)[:, :n]

    out = [at(0, cache["hook_rtg_embed"]), at(1, cache["hook_state_embed"])]
    if with_actions:
        out.append(at(2, cache["hook_action_embed"]))
    time = jnp.repeat(cache["hook_time_embed"], 3, axis=1)[:, :n]
    return out + [time, pos]


def _sender_names(cfg: ModelConfig, with_actions: bool) -> list[str]:
    names = [n for n in ("hook_rtg_embed", "hook_state_embed", "hook_action_embed", "hook_time_embed", "hook_pos_embed")
             if with_actions or n != "hook_action_embed"]
    for l in range(cfg.n_layers):
        names.append(f"blocks.{l}.attn.hook_result")
        if not cfg.attn_only:
            names.append(f"blocks.{l}.hook_mlp_out")
    return names


@functools.partial(jax.jit, static_argnames=("cfg",))
def sender_outputs(params: dict, cfg: ModelConfig, inputs: Inputs) -> tuple[jax.Array, jax.Array]:
    """(logits (batch, K, n_actions), outputs (n_senders, batch, pos, d_model)) of every sender on ``inputs``."""
    with_actions = inputs.actions is not None
    logits, cache = run_with_cache(params, cfg, inputs, names=_sender_names(cfg, with_actions))
    outs = _embed_outputs(cfg, cache, with_actions)
    for l in range(cfg.n_layers):
        res = cache[f"blocks.{l}.attn.hook_result"]
        outs += [res[:, :, h] for h in range(cfg.n_heads)]
        if not cfg.attn_only:
            outs.append(cache[f"blocks.{l}.hook_mlp_out"])
    return logits, jnp.stack(outs)


def _take(_, value):
    return value  # hooks.Apply: replace the activation by ``value`` (the computed one is then unused)


@functools.partial(jax.jit, static_argnames=("cfg", "return_outputs"))
def graph_forward(params: dict, cfg: ModelConfig, inputs: Inputs, patch: jax.Array, mask: jax.Array,
                  return_outputs: bool = False):
    """Logits (batch, K, n_actions) of ``inputs`` with edges patched (see the module docstring).

    Args:
      patch: (n_senders, batch, pos, d_model) the value each patched edge carries instead of its
        sender's output in this run (e.g. ``sender_outputs`` of another input).
      mask: (n_senders, n_receivers) in [0, 1]: 0 keeps the edge, 1 patches it; entries that are
        not edges are ignored. Differentiable (EAP is its gradient at 0). Or (n_senders,
        n_receivers, pos): per receiver token position (the receiver reads the patched value at
        the positions where it is 1), for position-resolved patching.
      return_outputs: also return every sender's output in this run (n_senders, batch, pos, d_model).
    """
    g = inputs_graph(cfg, inputs)
    mask = jnp.asarray(mask, jnp.float32)
    allowed = jnp.asarray(g.allowed, jnp.float32)
    mask = mask * (allowed[:, :, None] if mask.ndim == 3 else allowed)
    with_actions = inputs.actions is not None
    _, cache = run_with_cache(params, cfg, inputs, names=_sender_names(cfg, with_actions)[: 4 + with_actions])
    outs = _embed_outputs(cfg, cache, with_actions)
    const = jnp.zeros((cfg.d_model,), jnp.float32)  # the b_O of the layers read so far
    n_recv = 0
    H = cfg.n_heads

    def read(count):  # inputs (count, batch, pos, d_model) of the next ``count`` receivers
        X = jnp.stack(outs)[:, None]  # (sender, 1, batch, pos, d_model)
        m = mask[: X.shape[0], n_recv: n_recv + count]
        m = m[:, :, None, :, None] if m.ndim == 3 else m[:, :, None, None, None]
        # (1 - m) out + m P per edge, then the sum: for m in {0, 1} an edge whose P equals its sender's
        # output changes nothing (bitwise), and a sender all of whose edges are patched is not read at all
        return ((1.0 - m) * X + m * patch[: X.shape[0], None]).sum(0) + const

    for l in range(cfg.n_layers):
        p, pre = params[f"blocks_{l}"], f"blocks.{l}"
        x = layer_norm(params, cfg, f"{pre}.ln1", read(3 * H)).reshape((H, 3) + outs[0].shape)
        n_recv += 3 * H
        a = p["attn"]
        qkv = {c: jnp.einsum("hbpd,hde->bphe", x[:, i], a[f"W_{c.upper()}"]) + a[f"b_{c.upper()}"]
               for i, c in enumerate(QKV)}
        ivs = {f"{pre}.attn.hook_{c}": hooks_lib.Apply(_take, qkv[c]) for c in QKV}
        _, state = model_lib.Attention(cfg, prefix=f"{pre}.attn", names=(f"{pre}.attn.hook_result",)).apply(
            {"params": a}, x[0, 0], ivs, mutable=["intermediates"])
        result = state["intermediates"]["hook_result"]  # (batch, pos, head, d_model)
        outs += [result[:, :, h] for h in range(H)]
        const = const + a["b_O"]
        if not cfg.attn_only:
            x = layer_norm(params, cfg, f"{pre}.ln2", read(1)[0])
            n_recv += 1
            outs.append(model_lib.MLP(cfg, prefix=f"{pre}.mlp").apply({"params": p["mlp"]}, x, {}))
    x = layer_norm(params, cfg, "ln_final", read(1)[0])
    logits = x[:, 1::3] @ params["W_U"] + params["b_U"]
    return (logits, jnp.stack(outs)) if return_outputs else logits


def last_logit_metric(logits: jax.Array, v: jax.Array) -> jax.Array:
    """The metric ACDC and the edge scores read: the batch mean of the logits along ``v`` (n_actions,)
    at the last state token (``logits`` (batch, timesteps, n_actions))."""
    return (logits[:, -1] @ v).mean()


def last_token_kl(ref_logits: jax.Array, logits: jax.Array) -> jax.Array:
    """Mean over the batch of KL(softmax(ref) || softmax(logits)) at the last state token.

    For nearby logits, from their difference d (centred under p): KL = log1p(sum p expm1(d)), which
    keeps its relative precision as KL -> 0 (sum p (log p - log q) loses it below ~1e-7, where ACDC
    with a small tau decides).
    """
    ref, new = ref_logits[:, -1], logits[:, -1]
    logp = jax.nn.log_softmax(ref)
    p = jnp.exp(logp)
    d = new - ref
    d = d - (p * d).sum(-1, keepdims=True)
    near = jnp.abs(d).max(-1) < 1.0
    small = jnp.log1p((p * jnp.expm1(jnp.where(near[:, None], d, 0.0))).sum(-1))
    direct = (p * (logp - jax.nn.log_softmax(new))).sum(-1)
    return jnp.where(near, small, direct).mean()


def _normaliser(m_clean, m_corr):
    return jnp.where(jnp.abs(m_clean - m_corr) < 1e-9, jnp.nan, m_clean - m_corr)


# ---------------------------------------------------------------------------------------------
# EDGE ATTRIBUTION PATCHING
# ---------------------------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("cfg", "ig_steps"))
def _eap(params, cfg, base, patch, v, ig_steps):
    allowed = jnp.asarray(inputs_graph(cfg, base).allowed, jnp.float32)

    def metric(m):
        return last_logit_metric(graph_forward(params, cfg, base, patch, m), v)

    if ig_steps == 0:
        m_base, grad = jax.value_and_grad(metric)(jnp.zeros_like(allowed))
    else:  # midpoint rule along M = alpha for every edge at once
        alphas = (jnp.arange(ig_steps) + 0.5) / ig_steps
        grad = jax.lax.map(lambda a: jax.grad(metric)(a * allowed), alphas).mean(0)
        m_base = metric(jnp.zeros_like(allowed))
    return m_base, grad * allowed


def edge_attribution_patching(params: dict, cfg: ModelConfig, clean: Inputs, corrupted: Inputs,
                              direction: Any = "forward-right", mode: str = "denoising", ig_steps: int = 0,
                              normalise: bool = True) -> dict:
    """Edge attribution patching (Syed et al. 2023): a first-order estimate of patching each edge.

    ``mode="denoising"`` (the default, as ``activation_patching``): the corrupted run with one edge
    carrying its sender's clean output, score = (out_clean - out_corr) . dm/dx_v on the corrupted
    run; normalised by (m_clean - m_corr). ``"noising"`` (Syed et al.'s ACDC setting): the clean run
    with one edge corrupted, gradient on the clean run, normalised as (m_clean - m_patched) /
    (m_clean - m_corr), so an edge the behaviour needs scores positive in both modes.
    ``ig_steps`` > 0: EAP-IG, the gradient averaged over ``ig_steps`` midpoints of M = alpha (all
    edges); the scores then sum to 1 (the whole difference) as ``ig_steps`` grows.
    ``normalise=False`` gives the raw metric changes (signed as the patch changes the metric).

    Returns ``clean``, ``corrupted`` (metrics), ``senders``, ``receivers``, ``edges`` (list of
    (sender, receiver)), ``scores`` (n_edges,) in that order, and ``matrix`` (n_senders,
    n_receivers) with NaN where there is no edge.
    """
    check_pair(clean, corrupted)
    if mode not in ("denoising", "noising"):
        raise ValueError(f"mode must be 'denoising' or 'noising', got {mode!r}")
    v = action_vector(direction, cfg.n_actions)
    base, source = (corrupted, clean) if mode == "denoising" else (clean, corrupted)
    src_logits, patch = sender_outputs(params, cfg, source)
    m_base, raw = _eap(params, cfg, base, patch, v, int(ig_steps))
    m_src = last_logit_metric(src_logits, v)
    m_clean, m_corr = (m_src, m_base) if mode == "denoising" else (m_base, m_src)
    if normalise:
        raw = raw / _normaliser(m_clean, m_corr) * (1.0 if mode == "denoising" else -1.0)
    g = inputs_graph(cfg, base)
    allowed = g.allowed
    return {"clean": m_clean, "corrupted": m_corr, "senders": list(g.senders), "receivers": list(g.receivers),
            "edges": g.edges, "scores": raw[allowed], "matrix": jnp.where(allowed, raw, jnp.nan)}


# ---------------------------------------------------------------------------------------------
# PATH PATCHING
# ---------------------------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("cfg",))
def _path_patch(params, cfg, base, p_src, p_base, send, recv, freeze_mlps):
    g = inputs_graph(cfg, base)
    allowed = jnp.asarray(g.allowed, jnp.float32)
    is_mlp = jnp.asarray([s.endswith("_mlp") for s in g.senders])
    # step 2: the sender(s) at their source outputs, every other head (and every MLP if frozen) at its
    # base output; the MLPs that are not frozen recompute from those (with all MLPs frozen this run
    # changes nothing: it is there so that the flag is data and both settings share one compile)
    p2 = jnp.where(send[:, None, None, None], p_src, p_base)
    frozen = send | ~is_mlp | freeze_mlps
    _, outs2 = graph_forward(params, cfg, base, p2, frozen[:, None] * allowed, return_outputs=True)
    p3 = jnp.where(frozen[:, None, None, None], p2, outs2)
    # step 3: only the receivers' inputs patched to their step-2 values
    return graph_forward(params, cfg, base, p3, allowed * recv[None, :])


def _labels_mask(g: Graph, labels, senders: bool) -> np.ndarray:
    """Bool mask over the graph's senders (or receivers) named by a label or a list of labels."""
    m = np.zeros(len(g.senders if senders else g.receivers), bool)
    for x in [labels] if isinstance(labels, str) else labels:
        m[g.sender_index(x) if senders else g.receiver_indices(x)] = True
    return m


def _path_setup(params, cfg, clean, corrupted, receivers, direction):
    g = inputs_graph(cfg, corrupted)
    recv = _labels_mask(g, receivers, senders=False)
    v = action_vector(direction, cfg.n_actions)
    clean_logits, p_src = sender_outputs(params, cfg, clean)
    corr_logits, p_base = sender_outputs(params, cfg, corrupted)
    return g, jnp.asarray(recv), v, p_src, p_base, last_logit_metric(clean_logits, v), last_logit_metric(corr_logits, v)


def path_patching(params: dict, cfg: ModelConfig, clean: Inputs, corrupted: Inputs, sender, receivers,
                  direction: Any = "forward-right", freeze_mlps: bool = True) -> dict:
    """Path patching sender -> receivers (Wang et al. 2022), clean -> corrupted.

    ``sender``: a sender label ("L0H1", "L0_mlp", "embed_rtg") or a list of them (patched
    together); ``receivers``: a receiver label ("L1H0.k", "L1_mlp", "logits"), a head ("L1H0" =
    its q, k and v) or a list. ``freeze_mlps``: MLPs between sender and receivers keep their
    corrupted outputs (True) or are recomputed (False, the IOI paper's choice).

    Returns ``clean``, ``corrupted``, ``patched`` (metrics) and ``effect`` = (patched - corrupted)
    / (clean - corrupted). Identities (tested): sender -> logits with MLPs frozen is the sender's
    direct-logit-attribution difference; with MLPs recomputed and no head after the sender it is
    activation patching of the sender; every head of a 1-layer model -> every receiver with the MLP
    recomputed is activation patching of ``hook_attn_out``.
    """
    check_pair(clean, corrupted)
    send = _labels_mask(inputs_graph(cfg, clean), sender, senders=True)
    g, recv, v, p_src, p_base, m_clean, m_corr = _path_setup(params, cfg, clean, corrupted, receivers, direction)
    logits = _path_patch(params, cfg, corrupted, p_src, p_base, jnp.asarray(send), recv, jnp.bool_(freeze_mlps))
    m = last_logit_metric(logits, v)
    return {"clean": m_clean, "corrupted": m_corr, "patched": m, "effect": (m - m_corr) / _normaliser(m_clean, m_corr)}


def path_patching_senders(params: dict, cfg: ModelConfig, clean: Inputs, corrupted: Inputs, receivers,
                          direction: Any = "forward-right", freeze_mlps: bool = True) -> dict:
    """Path patching from every sender on its own to ``receivers`` (one vmap over senders).

    Returns ``senders`` (labels), ``effects`` (n_senders,) normalised as ``path_patching``
    (NaN for senders with no edge to any receiver), ``clean``, ``corrupted``.
    """
    check_pair(clean, corrupted)
    g, recv, v, p_src, p_base, m_clean, m_corr = _path_setup(params, cfg, clean, corrupted, receivers, direction)
    eye = jnp.eye(len(g.senders), dtype=bool)
    logits = jax.vmap(lambda s: _path_patch(params, cfg, corrupted, p_src, p_base, s, recv, jnp.bool_(freeze_mlps)))(eye)
    eff = ((logits[:, :, -1] @ v).mean(1) - m_corr) / _normaliser(m_clean, m_corr)
    reaches = (g.allowed & np.asarray(recv)[None, :]).any(1)
    return {"senders": list(g.senders), "effects": jnp.where(jnp.asarray(reaches), eff, jnp.nan),
            "clean": m_clean, "corrupted": m_corr}


@functools.partial(jax.jit, static_argnames=("cfg",))
def _path_chunk(params, cfg, base, p_src, p_base, send, recv, freeze_mlps, v):
    logits = jax.vmap(lambda s, r: _path_patch(params, cfg, base, p_src, p_base, s, r, freeze_mlps))(send, recv)
    return (logits[:, :, -1] @ v).mean(1)


def path_patching_matrix(params: dict, cfg: ModelConfig, clean: Inputs, corrupted: Inputs, senders, receivers,
                         direction: Any = "forward-right", freeze_mlps: bool = True) -> dict:
    """Path patching from each of ``senders`` to each of ``receivers`` on its own (labels as
    ``path_patching``; vmapped over the pairs in fixed chunks, one compile).

    Returns ``effects`` (len(senders), len(receivers)) normalised as ``path_patching`` (NaN where
    the sender has no edge to the receiver), ``clean``, ``corrupted``.
    """
    check_pair(clean, corrupted)
    g = inputs_graph(cfg, clean)
    send = np.stack([_labels_mask(g, s, senders=True) for s in senders])
    recv = np.stack([_labels_mask(g, r, senders=False) for r in receivers])
    v = action_vector(direction, cfg.n_actions)
    clean_logits, p_src = sender_outputs(params, cfg, clean)
    corr_logits, p_base = sender_outputs(params, cfg, corrupted)
    m_clean, m_corr = last_logit_metric(clean_logits, v), last_logit_metric(corr_logits, v)
    si, ri = np.meshgrid(np.arange(len(senders)), np.arange(len(receivers)), indexing="ij")
    n, chunk = si.size, 8  # fixed chunks of pairs: one compile whatever the number of pairs
    rows = np.concatenate([np.arange(n), np.zeros((-n) % chunk, int)])
    fz = jnp.bool_(freeze_mlps)
    m = [_path_chunk(params, cfg, corrupted, p_src, p_base, jnp.asarray(send[si.ravel()[rows[i:i + chunk]]]),
                     jnp.asarray(recv[ri.ravel()[rows[i:i + chunk]]]), fz, v) for i in range(0, len(rows), chunk)]
    eff = (jnp.concatenate(m)[:n] - m_corr) / _normaliser(m_clean, m_corr)
    reaches = np.asarray([(g.allowed[send[i]][:, recv[j]]).any() for i, j in zip(si.ravel(), ri.ravel())])
    eff = jnp.where(jnp.asarray(reaches), eff, jnp.nan).reshape(si.shape)
    return {"effects": eff, "clean": m_clean, "corrupted": m_corr}


# ---------------------------------------------------------------------------------------------
# CIRCUITS: ACDC, PRUNING BY EAP, FAITHFULNESS
# ---------------------------------------------------------------------------------------------


def _full_graph(params, cfg, clean, patch):
    """The graph forward with no edge patched: the clean model's logits (the KL reference, so a
    circuit that changes nothing has KL exactly 0)."""
    return graph_forward(params, cfg, clean, patch, jnp.zeros(inputs_graph(cfg, clean).allowed.shape))


@functools.partial(jax.jit, static_argnames=("cfg",))
def _circuit_eval(params, cfg, clean, patch, ref_logits, kept, v):
    """(metric, KL from the clean model) of the circuit ``kept`` (bool edges) with every other edge corrupted."""
    logits = graph_forward(params, cfg, clean, patch, 1.0 - kept.astype(jnp.float32))
    return last_logit_metric(logits, v), last_token_kl(ref_logits, logits)


def circuit_faithfulness(params: dict, cfg: ModelConfig, clean: Inputs, corrupted: Inputs, kept,
                         direction: Any = "forward-right") -> dict:
    """How much of the clean behaviour a circuit keeps: ``kept`` is a (n_senders, n_receivers) bool
    mask or a list of (sender, receiver) edges; every other edge is patched to the corrupted run.

    Returns ``faithfulness`` = (m_circuit - m_corr) / (m_clean - m_corr), ``kl`` = KL(clean model ||
    circuit) at the last state token (the clean model as the graph forward computes it), ``metric``, ``clean``, ``corrupted``, ``n_edges`` kept.
    """
    check_pair(clean, corrupted)
    g = inputs_graph(cfg, clean)
    kept = np.asarray(g.edge_mask(kept) if isinstance(kept, (list, tuple)) else kept, bool) & g.allowed
    v = action_vector(direction, cfg.n_actions)
    corr_logits, patch = sender_outputs(params, cfg, corrupted)
    ref = _full_graph(params, cfg, clean, patch)
    m, kl = _circuit_eval(params, cfg, clean, patch, ref, jnp.asarray(kept), v)
    m_clean, m_corr = last_logit_metric(ref, v), last_logit_metric(corr_logits, v)
    return {"faithfulness": (m - m_corr) / _normaliser(m_clean, m_corr), "kl": kl, "metric": m,
            "clean": m_clean, "corrupted": m_corr, "n_edges": int(kept.sum())}


def _acdc_order(g: Graph) -> np.ndarray:
    """Edges (k, 2) as (sender, receiver) indices: receivers from the logits backwards, each
    receiver's senders latest first."""
    allowed = g.allowed
    return np.array([(i, j) for j in reversed(range(len(g.receivers))) for i in reversed(range(len(g.senders)))
                     if allowed[i, j]], np.int32)


@functools.partial(jax.jit, static_argnames=("cfg",))
def _acdc_scan(params, cfg, clean, patch, ref_logits, tau):
    g = inputs_graph(cfg, clean)
    allowed = jnp.asarray(g.allowed)
    owner = jnp.asarray(g.recv_owner)
    order = jnp.asarray(_acdc_order(g))

    def kl_of(removed):
        return last_token_kl(ref_logits, graph_forward(params, cfg, clean, patch, removed.astype(jnp.float32)))

    def step(carry, edge):
        removed, kl = carry
        first = edge[0] < 0  # step 0 only evaluates the full graph, by the same code as every trial
        s, r = jnp.maximum(edge[0], 0), jnp.maximum(edge[1], 0)
        o = owner[r]
        # the receiver's component has no outgoing edge left: nothing it computes reaches the logits
        orphan = ~first & (o >= 0) & jnp.all(jnp.where(allowed[jnp.maximum(o, 0)], removed[jnp.maximum(o, 0)], True))
        trial = jnp.where(first, removed, removed.at[s, r].set(True))
        kl_try = jax.lax.cond(orphan, lambda: kl, lambda: kl_of(trial))
        drop = first | orphan | (kl_try - kl <= tau)
        return (jnp.where(drop, trial, removed), jnp.where(drop, kl_try, kl)), (kl_try - kl, drop, orphan)

    init = (jnp.zeros(allowed.shape, bool), jnp.float32(0.0))
    steps = jnp.concatenate([jnp.full((1, 2), -1, jnp.int32), order])
    (removed, _), (delta, drop, orphan) = jax.lax.scan(step, init, steps)
    delta, drop, orphan = delta[1:], drop[1:], orphan[1:]
    return removed, delta, drop, orphan


def acdc(params: dict, cfg: ModelConfig, clean: Inputs, corrupted: Inputs, tau: float,
         direction: Any = "forward-right") -> dict:
    """ACDC (Conmy et al. 2023) over the edge graph with KL threshold ``tau``.

    An edge is removed (patched to the corrupted run for good) when removing it raises
    KL(clean model || circuit), averaged over the batch at the last state token, by at most
    ``tau``; ``tau = inf`` removes every edge, ``tau = 0`` only edges whose removal changes nothing.

    Returns ``edges`` (kept, list of (sender, receiver)), ``kept`` (n_senders, n_receivers) bool,
    ``n_edges`` kept of ``n_total``, the circuit's ``faithfulness`` and ``kl`` (recomputed from the
    final mask, not accumulated), ``clean`` / ``corrupted`` metrics along ``direction``, ``tau``,
    and the search log ``steps``: one dict per visited edge (``edge``, ``delta_kl``, ``removed``,
    ``orphan``) in visiting order.
    """
    check_pair(clean, corrupted)
    g = inputs_graph(cfg, clean)
    _, patch = sender_outputs(params, cfg, corrupted)
    ref = _full_graph(params, cfg, clean, patch)
    removed, delta, drop, orphan = _acdc_scan(params, cfg, clean, patch, ref, jnp.float32(tau))
    kept = g.allowed & ~np.asarray(removed)
    res = circuit_faithfulness(params, cfg, clean, corrupted, kept, direction)
    order = _acdc_order(g)
    steps = [{"edge": (g.senders[i], g.receivers[j]), "delta_kl": float(d), "removed": bool(x), "orphan": bool(o)}
             for (i, j), d, x, o in zip(order, np.asarray(delta), np.asarray(drop), np.asarray(orphan))]
    return {"edges": g.edges_of(kept), "kept": kept, "n_total": int(g.allowed.sum()), "tau": float(tau),
            "steps": steps, **res}


def acdc_arrays(params: dict, cfg: ModelConfig, clean: Inputs, corrupted: Inputs, tau, v: jax.Array) -> dict:
    """``acdc``'s circuit as arrays of one traceable computation (jit it; vmap it over stacked
    params): ``kept`` (n_senders, n_receivers) bool, ``n_edges`` kept, the circuit's
    ``faithfulness`` and ``kl``. ``v``: the (n_actions,) direction. No search log or labels
    (``inputs_graph(cfg, clean)`` names the edges)."""
    g = inputs_graph(cfg, clean)
    corr_logits, patch = sender_outputs(params, cfg, corrupted)
    ref = _full_graph(params, cfg, clean, patch)
    removed, *_ = _acdc_scan(params, cfg, clean, patch, ref, jnp.float32(tau))
    kept = jnp.asarray(g.allowed) & ~removed
    m, kl = _circuit_eval(params, cfg, clean, patch, ref, kept, v)
    m_clean, m_corr = last_logit_metric(ref, v), last_logit_metric(corr_logits, v)
    return {"kept": kept, "n_edges": kept.sum(), "faithfulness": (m - m_corr) / _normaliser(m_clean, m_corr), "kl": kl}


def prune_by_attribution(params: dict, cfg: ModelConfig, clean: Inputs, corrupted: Inputs, n_edges,
                         direction: Any = "forward-right", ig_steps: int = 0) -> dict:
    """Circuits of the top-n edges by |EAP score| (noising mode, Syed et al. 2023), for each n.

    ``n_edges``: an int or a sequence of ints. Returns ``n_edges`` (m,), ``faithfulness`` and
    ``kl`` (m,) (``circuit_faithfulness`` of each, one vmap), ``edges`` (list of m edge lists),
    ``ranking`` (every edge, best first) and ``scores`` (their normalised EAP scores).
    """
    check_pair(clean, corrupted)
    g = inputs_graph(cfg, clean)
    eap = edge_attribution_patching(params, cfg, clean, corrupted, direction, mode="noising", ig_steps=ig_steps)
    scores = np.asarray(eap["scores"])
    rank = np.argsort(-np.abs(np.nan_to_num(scores)), kind="stable")
    edges = g.edges
    ns = np.atleast_1d(np.asarray(n_edges, int))
    idx = np.argwhere(g.allowed)  # edge order of ``edges``
    masks = np.zeros((len(ns),) + g.allowed.shape, bool)
    for m, n in enumerate(ns):
        for e in rank[:n]:
            masks[(m,) + tuple(idx[e])] = True
    v = action_vector(direction, cfg.n_actions)
    _, patch = sender_outputs(params, cfg, corrupted)
    ref = _full_graph(params, cfg, clean, patch)
    metric, kl = jax.vmap(lambda k: _circuit_eval(params, cfg, clean, patch, ref, k, v))(jnp.asarray(masks))
    norm = _normaliser(eap["clean"], eap["corrupted"])
    return {"n_edges": ns, "faithfulness": (metric - eap["corrupted"]) / norm, "kl": kl,
            "edges": [g.edges_of(m) for m in masks], "ranking": [edges[e] for e in rank], "scores": scores[rank]}
