"""MemoryDT's write-up in the explorer: the adversary contexts, the instruction feature, its coefficient, attention.

Everything here is computed by ``dtjax.circuits.memory``, the functions the report's
"memory_adversaries" section calls (one place), and drawn by the page's Memory card:

- ``tables``: once per model, the write-up's 40 adversary contexts (``adversary_inputs``: 4 layouts
  x RTG 0.892 / 0 x 5 edits), their left - right logit difference (``adversary_logit_diffs``) and
  restored fraction (``restored_fractions``), and the instruction feature (PC1 of ``subset_pca``, keys
  positive); the page lists them as one-click scenarios (the session's ``adversary`` message loads one).
- ``panel``: per step, one jitted call on the context on screen: the left - right logit difference,
  the feature's projection of every state token (``feature_projection`` of ``hook_embed``), the
  logits with the instruction frame's coefficient set to ``coef`` (``set_feature``: a
  ``hooks.Apply`` at ``blocks.0.hook_resid_pre``, as the report's intervention curve; a traced
  coefficient and position, so the slider never recompiles) and every head's attention from the
  decision token (as ``decision_attention``, from the same cache).

``undefined`` is the one place that says whether a model and env have these analyses (the
report's condition: a Memory task, one-hot (7, 7, 20) observations, 9 timesteps; the adversaries
also need the 7x7 grid they are built in).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from dtjax.circuits import memory as M
from dtjax.circuits.core import Inputs, run_with_cache, run_with_hooks, state_pos
from dtjax.config import ModelConfig

COEF_RANGE = 2.0  # the slider's |c| (the write-up's Fig. 19 range)


def undefined(cfg: ModelConfig, task, size: int) -> str | None:
    """Why the Memory card does not apply to this model in this env (one line), or None."""
    why = M.writeup_undefined(cfg, task)
    if why:
        return why
    if size != M.VIEW:
        return f"the write-up's adversaries are contexts of the 7x7 Memory grid; this env is {size}x{size}"
    return None


@dataclasses.dataclass(frozen=True)
class Tables:
    """The write-up's numbers for one model: ``direction`` (d_model,) the instruction feature (unit
    PC1, keys positive); ``ld`` and ``restored`` (layout, rtg, edit) over ``layouts`` (names,
    ``envs.memory.layout_name``), ``rtgs`` and ``edits`` (``circuits.memory.EDITS``)."""

    direction: np.ndarray
    explained: tuple[float, float]
    layouts: tuple[str, ...]
    labels: tuple[tuple[str, str], ...]
    rtgs: tuple[float, ...]
    edits: tuple[str, ...]
    ld: np.ndarray
    restored: np.ndarray

    def describe(self) -> dict:
        return {"layouts": list(self.layouts), "labels": [list(lab) for lab in self.labels], "rtgs": list(self.rtgs),
                "edits": list(self.edits), "edit_labels": [edit_label(e) for e in self.edits], "ld": np.round(self.ld, 4), "restored": np.round(self.restored, 4),
                "explained": [round(e, 4) for e in self.explained], "coef_range": COEF_RANGE,
                "instruction_pos": M.INSTRUCTION_POS}

    def index(self, layout: str, edit: str, rtg: float) -> tuple[int, int, int]:
        """(layout, rtg, edit) indices; ValueError (one line) for an unknown one."""
        if layout not in self.layouts:
            raise ValueError(f"unknown layout {layout!r}; layouts: {', '.join(self.layouts)}")
        if edit not in self.edits:
            raise ValueError(f"unknown edit {edit!r}; edits: {', '.join(self.edits)}")
        hit = [j for j, r in enumerate(self.rtgs) if abs(r - rtg) < 1e-6]
        if not hit:
            raise ValueError(f"the adversaries are at RTG {' or '.join(f'{r:g}' for r in self.rtgs)}, got {rtg!r}")
        return self.layouts.index(layout), hit[0], self.edits.index(edit)


def edit_label(edit: str) -> str:
    """"original", "instruction flipped", "complement at (0,5)+(4,2)": an edit of ``circuits.memory.EDITS``."""
    if edit in ("original", "instruction_flipped"):
        return edit.replace("_", " ")
    return "complement at " + "+".join(f"({x},{y})" for x, y in M.EDITS[edit])


def tables(params, cfg: ModelConfig) -> Tables:
    """The write-up's adversary table and instruction feature of a Memory model (the report's functions)."""
    adv = M.adversary_inputs()
    ld, _ = M.adversary_logit_diffs(params, cfg, adv)
    p, _ = M.subset_pca(params)
    pc = np.asarray(p.components[0])
    return Tables(direction=pc / np.linalg.norm(pc), explained=tuple(float(e) for e in p.explained[:2]),
                  layouts=tuple(M.layout_names()), labels=M.adversary_labels(), rtgs=tuple(adv.rtgs),
                  edits=tuple(adv.edits), ld=np.asarray(ld), restored=np.asarray(M.restored_fractions(ld, adv.edits)))


def context(t: Tables, layout: str, edit: str, rtg: float) -> Inputs:
    """The report's context of one adversary (batch 1): ``adversary_inputs`` of that layout, edit and RTG."""
    adv = M.adversary_inputs()  # all 40 (the shapes `tables` compiled), then the one asked for
    return adv.inputs.take(np.asarray([np.ravel_multi_index(t.index(layout, edit, rtg), adv.shape)]))


def instruction_frame(valid, time) -> int:
    """Index in the window of the instruction frame (the episode's first frame, t = 0), or -1 when
    it has left the context."""
    hit = np.flatnonzero(np.asarray(valid) & (np.asarray(time) == 0))
    return int(hit[0]) if hit.size else -1


@functools.partial(jax.jit, static_argnames=("cfg",))
def _panel(params, cfg: ModelConfig, inputs: Inputs, direction, coef, frame):
    K = inputs.n_timesteps
    patterns = [f"blocks.{layer}.attn.hook_pattern" for layer in range(cfg.n_layers)]
    # one cached forward for the LD, the token embeddings and the patterns (``decision_attention`` reads
    # the same cache entries: one compile fewer), one with the intervention
    logits, cache = run_with_cache(params, cfg, inputs, names=["hook_embed"] + patterns)
    n_pos = cache["hook_embed"].shape[1]
    proj = jnp.stack([M.feature_projection(cache["hook_embed"], direction, state_pos(K, j))[0] for j in range(K)])
    pos = jnp.where(frame >= 0, 3 * frame + 1, -1)  # state_pos of a traced frame; -1: no token is set
    steered = run_with_hooks(params, cfg, inputs, M.set_feature(direction, coef[None], n_pos, pos))
    att = jnp.stack([cache[h][0, :, -1] for h in patterns])  # (layer, head, key_pos) from the last state token
    return {"probs": jax.nn.softmax(logits[0, -1]), "ld": M.logit_diff(logits)[0], "projection": proj,
            "steered_probs": jax.nn.softmax(steered[0, -1]), "steered_ld": M.logit_diff(steered)[0],
            "steered_action": jnp.argmax(steered[0, -1]), "attention": att}


def panel(params, cfg: ModelConfig, t: Tables, inputs: Inputs, frame: int, coef: float | None,
          block: bool = True) -> dict:
    """The Memory card's numbers at one context (batch 1): ``ld`` (left - right), ``probs``,
    ``projection`` (one per frame), ``frame`` (the instruction frame, or None), ``coef`` (None: no
    intervention), ``steered_probs`` / ``steered_ld`` / ``steered_action`` (the context with the
    instruction frame's coefficient set to ``coef``; None without one) and ``attention`` (layer,
    head, token) from the decision token. ``block=False``: the arrays are JAX's, still computing
    (async dispatch): the explorer's ``panels`` reply is serialised after the ``step`` reply is
    sent, so a key press does not wait for them; else numpy."""
    c = 0.0 if coef is None else float(coef)
    out = _panel(params, cfg, inputs, jnp.asarray(t.direction, jnp.float32), jnp.float32(c), jnp.int32(frame))
    steer = coef is not None and frame >= 0
    res = {"ld": out["ld"], "probs": out["probs"], "projection": out["projection"],
           "frame": frame if frame >= 0 else None, "coef": coef,
           **{k: out[k] if steer else None for k in ("steered_probs", "steered_ld", "steered_action")},
           "attention": out["attention"]}
    return jax.device_get(res) if block else res


def parse_coef(msg: dict):
    """The ``memory`` message's coefficient: None (no intervention) or a number in [-2, 2]."""
    c = msg.get("coef")
    if c is None:
        return None
    if isinstance(c, bool) or not isinstance(c, (int, float)) or not abs(c) <= COEF_RANGE:
        raise ValueError(f"coef must be null or a number in [-{COEF_RANGE:g}, {COEF_RANGE:g}], got {c!r}")
    return float(c)
