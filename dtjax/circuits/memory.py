"""The MemoryDT write-up's analyses ("Finding Features and Adversarial Inputs for MemoryDT"), for
any Memory model (one-hot (7, 7, 20) observations), as pure functions.

Vocabulary: a *vocabulary item* is one (channel, x, y) of the one-hot input, (x, y) the view
coordinates ``image[x, y]`` (the agent at (3, 6)); its embedding is row ``c*49 + x*7 + y`` of
``W_state`` (TransformerLens' ``state_embedding.weight`` column).

- embeddings: ``embedding_norms`` (the L2 norm of every item), ``key_ball_cosines`` (the 98
  key/ball items, plain or with the write-up's preprocessing);
- features: ``pca`` (sklearn's PCA, centred on the subset), ``subset_pca`` of chosen items
  (``INSTRUCTION_CELLS``, ``TARGET_CELLS``), ``feature_map`` (the key and ball 7x7 maps of one PC);
- adversaries: ``adversary_inputs`` (the four layouts' 9-timestep contexts at the junction, built
  by stepping the env), ``edit_frame`` (the complement object painted on the instruction frame),
  ``adversary_logit_diffs`` / ``restored_fractions`` (the left - right logit difference and the
  fraction of the instruction flip an edit restores), ``feature_projection`` (the feature's
  coefficient in the instruction frame's token), ``set_feature`` (the direct intervention setting
  that coefficient, through ``dtjax.hooks.Apply``), ``decision_attention`` (every head's
  attention from the decision token).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

import envs
from dtjax import hooks
from dtjax.circuits.core import Inputs, run_with_cache, run_with_hooks, state_pos
from dtjax.config import ModelConfig
from envs.memory import FORWARD, LEFT, OBJECT_KINDS, RIGHT, layout_name, make_state

VIEW = 7
N_CHANNELS = 20
N_OBJECT_CHANNELS = 11  # one-hot channels 0..10: the object type
KEY_CH, BALL_CH = 5, 6  # object channels of key and ball (minigrid OBJECT_TO_IDX)
INSTRUCTION_CELL = (2, 6)  # the instruction in the start view (view x, y)
INSTRUCTION_CELLS = ((4, 2), (2, 6), (0, 5), (4, 3))  # the write-up's instruction subset (Fig. 9-11)
TARGET_CELLS = ((1, 6), (5, 6), (1, 2), (5, 2))  # the target subset (Fig. 12-13)
# The write-up's four layouts, in its label order "instruction, top-bottom": (instruction, top) kinds
LAYOUTS = ((0, 0), (0, 1), (1, 1), (1, 0))
RTGS = (0.892, 0.0)
# The edits: name -> the view cells painted with the instruction's complement on the S5 frame
EDITS = {
    "original": (),
    "instruction_flipped": (INSTRUCTION_CELL,),
    "complement_0_5": ((0, 5),),
    "complement_4_2": ((4, 2),),
    "complement_0_5_4_2": ((0, 5), (4, 2)),
}
N_PAD = 4  # all-zero frames before the 5 real ones (the write-up's 9-timestep contexts)
PAD_ACTION = 7
INSTRUCTION_FRAME = N_PAD  # S5: the first real frame (t = 0), where the instruction is seen
INSTRUCTION_POS = state_pos(N_PAD + 5, INSTRUCTION_FRAME)  # token 13


def item_index(channel: int, x: int, y: int) -> int:
    """Row of ``W_state`` of vocabulary item (channel, x, y)."""
    return channel * VIEW * VIEW + x * VIEW + y


def item_label(channel: int, x: int, y: int) -> str:
    """"key (2,6)" for channels 5/6, else "ch 11 (2,6)"."""
    name = {KEY_CH: "key", BALL_CH: "ball"}.get(channel, f"ch {channel}")
    return f"{name} ({x},{y})"


def _check_memory(cfg: ModelConfig) -> None:
    if tuple(cfg.obs_shape) != (VIEW, VIEW, N_CHANNELS):
        raise ValueError(f"a Memory model has one-hot (7, 7, 20) observations; this one has {tuple(cfg.obs_shape)}")


# ---------------------------------------------------------------------------------------------
# EMBEDDINGS (Fig. 5-7)
# ---------------------------------------------------------------------------------------------


def embedding_norms(params: dict) -> jax.Array:
    """L2 norm of every vocabulary item's embedding, (20, 7, 7) indexed [channel, x, y]."""
    W = jnp.asarray(params["W_state"])
    return jnp.linalg.norm(W, axis=-1).reshape(N_CHANNELS, VIEW, VIEW)


def key_ball_items() -> list[tuple[int, int, int]]:
    """The 98 key/ball items in flatten order: key (0,0), key (0,1), ..., ball (6,6)."""
    return [(c, x, y) for c in (KEY_CH, BALL_CH) for x in range(VIEW) for y in range(VIEW)]


def preprocess_writeup(W: jax.Array) -> jax.Array:
    """The write-up notebook's preprocessing of the embeddings ``W`` (items, d_model): subtract
    each item's own mean component, then divide each d_model dimension by its norm over the items."""
    W = W - W.mean(axis=1, keepdims=True)
    return W / jnp.linalg.norm(W, axis=0, keepdims=True)


def cosine_matrix(X: jax.Array) -> jax.Array:
    """Pairwise cosine similarity of the rows of ``X``."""
    U = X / jnp.linalg.norm(X, axis=-1, keepdims=True)
    return jnp.einsum("id,jd->ij", U, U)


def key_ball_cosines(params: dict, writeup: bool = False) -> tuple[jax.Array, jax.Array, list[str]]:
    """(cosines (98, 98), norms (98,), labels) of the key/ball embeddings; ``writeup``: after
    `preprocess_writeup` over all 980 items (the norms then are the preprocessed ones, Fig. 7's
    filter at 0.8), else the raw embeddings."""
    W = jnp.asarray(params["W_state"])
    if writeup:
        W = preprocess_writeup(W)
    items = key_ball_items()
    X = W[jnp.asarray([item_index(*it) for it in items])]
    return cosine_matrix(X), jnp.linalg.norm(X, axis=-1), [item_label(*it) for it in items]


def cosine_categories(items: list[tuple[int, int, int]]) -> np.ndarray:
    """(n, n) category of each pair for Fig. 7: 0 other channel other position, 1 same channel
    only, 2 same position only, 3 same channel and position (the diagonal)."""
    c = np.asarray([it[0] for it in items])
    p = np.asarray([it[1] * VIEW + it[2] for it in items])
    return (c[:, None] == c[None, :]).astype(int) + 2 * (p[:, None] == p[None, :]).astype(int)


# ---------------------------------------------------------------------------------------------
# PCA FEATURES (Fig. 9-13)
# ---------------------------------------------------------------------------------------------


class PCA(NamedTuple):
    """sklearn's PCA of n vectors: ``mean`` (d,), ``components`` (k, d) unit rows, ``explained``
    (k,) explained-variance ratios, ``scores`` (n, k) = (X - mean) @ components.T."""

    mean: jax.Array
    components: jax.Array
    explained: jax.Array
    scores: jax.Array


@functools.partial(jax.jit, static_argnames=("n_components",))
def pca(X: jax.Array, n_components: int = 2) -> PCA:
    """PCA of the rows of ``X`` (n, d) centred on their mean, as sklearn's (full SVD). Signs:
    each component's largest-magnitude score is positive (orient with `orient`)."""
    X = jnp.asarray(X, jnp.float32)
    if X.ndim != 2 or not 1 <= n_components <= min(X.shape):
        raise ValueError(f"pca needs (n, d) data and 1 <= n_components <= min(n, d); got {X.shape}, {n_components}")
    mean = X.mean(0)
    U, S, Vt = jnp.linalg.svd(X - mean, full_matrices=False)
    var = S**2
    sign = jnp.sign(U[jnp.argmax(jnp.abs(U), axis=0), jnp.arange(U.shape[1])])
    Vt = Vt * sign[:, None]
    comps = Vt[:n_components]
    return PCA(mean, comps, (var / var.sum())[:n_components], (X - mean) @ comps.T)


def orient(p: PCA, component: int, positive_row: int) -> PCA:
    """``p`` with PC ``component`` flipped if needed so that row ``positive_row``'s score is positive."""
    s = jnp.where(p.scores[positive_row, component] < 0, -1.0, 1.0)
    flip = jnp.ones(p.components.shape[0]).at[component].set(s)
    return p._replace(components=p.components * flip[:, None], scores=p.scores * flip[None, :])


def unit_embeddings(params: dict, center: bool = False) -> jax.Array:
    """Every item's embedding (980, d_model) scaled to unit norm (the app's ``show_embeddings``);
    ``center``: subtract the mean embedding first."""
    W = jnp.asarray(params["W_state"])
    if center:
        W = W - W.mean(0)
    return W / jnp.linalg.norm(W, axis=-1, keepdims=True)


def subset_items(cells=INSTRUCTION_CELLS) -> list[tuple[int, int, int]]:
    """Key and ball at each of ``cells``: key (x0,y0), ball (x0,y0), key (x1,y1), ..."""
    return [(c, x, y) for x, y in cells for c in (KEY_CH, BALL_CH)]


def subset_pca(params: dict, cells=INSTRUCTION_CELLS, n_components: int = 2) -> tuple[PCA, list[str]]:
    """(PCA, labels) of the unit key/ball embeddings at ``cells``, oriented so that the first
    key has a positive PC1 (keys positive on the instruction feature)."""
    items = subset_items(cells)
    rows = jnp.asarray([item_index(*it) for it in items])
    return _subset_pca(params["W_state"], rows, n_components), [item_label(*it) for it in items]


@functools.partial(jax.jit, static_argnames=("n_components",))
def _subset_pca(W_state, rows, n_components):
    return orient(pca(unit_embeddings({"W_state": W_state})[rows], n_components), 0, 0)


def feature_map(params: dict, p: PCA, component: int = 0) -> jax.Array:
    """(2, 7, 7) [key/ball, x, y]: sklearn's ``transform`` of every key and ball item's unit
    embedding on PC ``component``: (unit embedding - subset mean) . PC (Fig. 10-11's panels)."""
    return _feature_map(params["W_state"], p.mean, p.components[component])


@jax.jit
def _feature_map(W_state, mean, component):
    U = unit_embeddings({"W_state": W_state}).reshape(N_CHANNELS, VIEW, VIEW, -1)[jnp.asarray([KEY_CH, BALL_CH])]
    return jnp.einsum("kxyd,d->kxy", U - mean, component)


# ---------------------------------------------------------------------------------------------
# ADVERSARIES (Fig. 14-20)
# ---------------------------------------------------------------------------------------------


def layout_label(instruction: int, top: int) -> tuple[str, str]:
    """("key", "key-ball"): the write-up's "instruction, top-bottom" label parts."""
    return OBJECT_KINDS[instruction], f"{OBJECT_KINDS[top]}-{OBJECT_KINDS[1 - top]}"


@functools.cache
def _frames_fn():
    """The jitted `layout_frames` of all layouts at once (vmap over layouts, scan over 4 forwards)."""
    env, params = envs.make("MiniGrid-MemoryS7FixedStart-v0", obs_mode="one_hot")

    def one(instruction, top):
        state = make_state((1, VIEW // 2), 0, instruction, top, VIEW)

        def step(s, _):
            o, s, _, done, _ = env.step_env(jax.random.PRNGKey(0), s, jnp.int32(FORWARD), params)
            return s, (o, done)

        _, (obs, done) = jax.lax.scan(step, state, None, length=4)
        return jnp.concatenate([env.observe(state)[None], obs]), done.any()

    return jax.jit(jax.vmap(one))


def layout_frames(layouts=LAYOUTS) -> np.ndarray:
    """The 5 one-hot observations (layouts, 5, 7, 7, 20) of each (instruction, top) layout of the
    7x7 Memory grid: the reset state at (1, 3) facing east, then after each of 4 forwards, stepping
    the env (the write-up's ``generate_scenario_dict``)."""
    lay = np.asarray(layouts, np.int32).reshape(-1, 2)
    obs, done = _frames_fn()(jnp.asarray(lay[:, 0]), jnp.asarray(lay[:, 1]))
    if bool(done.any()):
        raise RuntimeError("an episode ended in the hallway; the env is not MiniGrid Memory")
    return np.asarray(obs)


def edit_frame(frame, cells, instruction: int) -> np.ndarray:
    """``frame`` (7, 7, 20) one-hot with each of ``cells`` painted with the complement of the
    ``instruction`` kind (0 key -> ball, 1 ball -> key): all 11 object channels zeroed, the
    complement's set; colour and state channels unchanged (the app's ``get_updated_obs``)."""
    if instruction not in (0, 1):
        raise ValueError(f"instruction must be 0 (key) or 1 (ball), got {instruction!r}")
    frame = np.array(frame)
    for x, y in cells:
        frame[x, y, :N_OBJECT_CHANNELS] = 0
        frame[x, y, BALL_CH if instruction == 0 else KEY_CH] = 1
    return frame


class Adversaries(NamedTuple):
    """The adversary contexts, batch = layout x RTG x edit (C order over ``LAYOUTS``, ``rtgs``,
    ``edits``): ``inputs`` (9 timesteps each) and the labels of each axis."""

    inputs: Inputs
    layouts: tuple[tuple[int, int], ...]
    rtgs: tuple[float, ...]
    edits: tuple[str, ...]

    @property
    def shape(self) -> tuple[int, int, int]:
        return len(self.layouts), len(self.rtgs), len(self.edits)


def adversary_inputs(rtgs=RTGS, edits=tuple(EDITS), layouts=LAYOUTS) -> Adversaries:
    """The write-up's adversary contexts: per layout, 4 all-zero frames then the 5 real ones
    (S5..S9), actions [7, 7, 7, 7, 2, 2, 2, 2], timesteps [0, 0, 0, 0, 0, 1, 2, 3, 4], the RTG
    constant; each edit paints `EDITS`[edit]'s cells on the S5 frame only."""
    unknown = sorted(set(edits) - set(EDITS))
    if unknown:
        raise ValueError(f"unknown edit {unknown[0]!r}; choose from {', '.join(EDITS)}")
    obs, rtg = [], []
    for (instruction, _), frames in zip(layouts, layout_frames(layouts)):
        ctx = np.concatenate([np.zeros((N_PAD,) + frames.shape[1:], frames.dtype), frames])
        for r in rtgs:
            for e in edits:
                edited = ctx.copy()
                edited[INSTRUCTION_FRAME] = edit_frame(ctx[INSTRUCTION_FRAME], EDITS[e], instruction)
                obs.append(edited)
                rtg.append(np.full((N_PAD + 5,), r, np.float32))
    n = len(obs)
    ts = np.tile(np.asarray([0] * N_PAD + list(range(5)), np.int32), (n, 1))
    acts = np.tile(np.asarray([PAD_ACTION] * N_PAD + [FORWARD] * 4, np.int32), (n, 1))
    inputs = Inputs(jnp.asarray(np.stack(obs)), jnp.asarray(np.stack(rtg)), jnp.asarray(ts), jnp.asarray(acts))
    return Adversaries(inputs, tuple(layouts), tuple(rtgs), tuple(edits))


def logit_diff(logits: jax.Array) -> jax.Array:
    """left - right logit at the last state token: (batch, K, n_actions) -> (batch,)."""
    return logits[:, -1, LEFT] - logits[:, -1, RIGHT]


def adversary_logit_diffs(params: dict, cfg: ModelConfig, adv: Adversaries) -> tuple[jax.Array, jax.Array]:
    """(LD (layouts, rtgs, edits), the feature-space tokens): the left - right logit difference of
    every adversary context, and ``hook_embed`` (batch, pos, d_model) (tokens without W_pos)."""
    _check_memory(cfg)
    logits, cache = run_with_cache(params, cfg, adv.inputs, names=["hook_embed"])
    return logit_diff(logits).reshape(adv.shape), cache["hook_embed"]


def restored_fraction(ld_edit, ld_original, ld_flipped) -> jax.Array:
    """(LD(edit) - LD(original)) / (LD(instruction flipped) - LD(original))."""
    return (jnp.asarray(ld_edit) - ld_original) / (jnp.asarray(ld_flipped) - ld_original)


def restored_fractions(ld: jax.Array, edits=tuple(EDITS)) -> jax.Array:
    """Restored fraction of every edit, (layouts, rtgs, edits), from `adversary_logit_diffs`' LD."""
    i0, i1 = edits.index("original"), edits.index("instruction_flipped")
    return restored_fraction(ld, ld[..., i0:i0 + 1], ld[..., i1:i1 + 1])


def feature_projection(tokens: jax.Array, direction: jax.Array, pos: int = INSTRUCTION_POS) -> jax.Array:
    """The coefficient of unit ``direction`` in token ``pos`` of ``tokens`` (batch, pos, d): (batch,)."""
    return jnp.einsum("bd,d->b", tokens[:, pos], direction / jnp.linalg.norm(direction))


def _set_component(x, arg):
    """x with, at the positions of ``arg["pos"]``, its component on unit ``arg["u"]`` set to ``arg["c"]`` (batch,)."""
    u, c, sel = arg["u"], arg["c"], arg["pos"]
    coef = jnp.einsum("bpd,d->bp", x, u)
    new = x + (c[:, None] - coef)[..., None] * u
    return jnp.where(sel[None, :, None], new, x)


def set_feature(direction: jax.Array, coefs: jax.Array, n_pos: int, pos: int = INSTRUCTION_POS,
                hook: str = "blocks.0.hook_resid_pre") -> dict:
    """The direct intervention of Fig. 19 as data: at ``hook`` and token ``pos``, remove the
    component along unit ``direction`` and set it to ``coefs`` (batch,) (one per context)."""
    u = direction / jnp.linalg.norm(direction)
    sel = jnp.arange(n_pos) == pos
    return {hook: hooks.Apply(_set_component, {"u": u, "c": jnp.asarray(coefs, jnp.float32), "pos": sel})}


def intervention_curve(params: dict, cfg: ModelConfig, inputs: Inputs, direction: jax.Array,
                       coefs=(-2.0, -1.0, 0.0, 1.0, 2.0)) -> jax.Array:
    """LD (batch, len(coefs)) of each context with the feature's coefficient in the instruction
    frame's token set to each of ``coefs`` (one forward pass over batch x coefs)."""
    _check_memory(cfg)
    coefs = jnp.asarray(coefs, jnp.float32)
    b, n = inputs.batch, len(coefs)
    rep = jax.tree.map(lambda x: jnp.repeat(x, n, axis=0), inputs)
    n_pos = 3 * inputs.n_timesteps - (inputs.n_timesteps - inputs.actions.shape[1])
    logits = run_with_hooks(params, cfg, rep, set_feature(direction, jnp.tile(coefs, b), n_pos))
    return logit_diff(logits).reshape(b, n)


def decision_attention(params: dict, cfg: ModelConfig, inputs: Inputs) -> jax.Array:
    """Attention (n_layers, batch, head, key_pos) of every head from the last state token."""
    names = [("pattern", layer) for layer in range(cfg.n_layers)]
    _, cache = run_with_cache(params, cfg, inputs, names=names)
    return jnp.stack([cache[f"blocks.{layer}.attn.hook_pattern"][:, :, -1] for layer in range(cfg.n_layers)])


def adversary_labels() -> tuple[tuple[str, str], ...]:
    """(instruction, targets) label of each of `LAYOUTS`, e.g. ("key", "key-ball")."""
    return tuple(layout_label(*lay) for lay in LAYOUTS)


def layout_names() -> list[str]:
    """`envs.memory.layout_name` of each of `LAYOUTS`."""
    return [layout_name(*lay) for lay in LAYOUTS]


def writeup_undefined(cfg: ModelConfig, task, contexts: bool = True) -> str | None:
    """Why the write-up's analyses do not apply to a model of ``task`` (one line), or None: they need a
    Memory model with one-hot (7, 7, 20) views and, for the write-up's contexts (``contexts``), its
    9 timesteps. The one check of the report's Memory sections and the explorer's Memory card."""
    if task.family != "memory" or tuple(cfg.obs_shape) != (VIEW, VIEW, N_CHANNELS):
        return f"defined for Memory models with one-hot ({VIEW}, {VIEW}, {N_CHANNELS}) observations (the MemoryDT write-up)"
    if contexts and cfg.n_timesteps != N_PAD + 5:
        return f"the write-up's contexts have {N_PAD + 5} timesteps; this model has {cfg.n_timesteps}"
    return None
