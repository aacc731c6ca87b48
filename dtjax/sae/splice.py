"""Splicing a dictionary into the DT through its hooks (interventions as data).

``splice(cfg, variables, model_params, model_cfg)`` gives the ``{hook: hooks.Apply}`` that
replaces the activation at the dictionary's site by the dictionary's output, at every token of
its type (other tokens untouched). Pass it to ``run_with_hooks`` or to
``dtjax.evaluate.evaluate(..., interventions=...)``, which applies it at every step of a rollout.
The dictionary's variables are the traced ``arg`` of the ``Apply``; its function is a frozen
dataclass of the (hashable) ``SAEConfig``, so another dictionary of the same shape never retraces.

A transcoder replaces an MLP: ``resid_post = resid_mid + T(mlp_in(resid_mid))``. The hooks let an
intervention see one activation at a time, and ``hook_mlp_out`` alone does not determine the
MLP's input, so the splice is two interventions: ``hook_resid_mid`` becomes
``resid_mid + T(mlp_in(resid_mid))`` and ``hook_mlp_out`` becomes 0 at the same tokens. Their sum,
``resid_post``, is exactly the transcoder's replacement; only the cached ``hook_resid_mid`` and
``hook_mlp_out`` of those tokens read differently (the MLP itself then runs on the shifted
``resid_mid``, but its output is discarded).
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from dtjax import hooks as hooks_lib
from dtjax.config import ModelConfig
from dtjax.sae.activations import EMBED_TOKEN, layer_of, mlp_input, token_mask
from dtjax.sae.model import SAEConfig, SparseDictionary


def _select(x, new, token: str, hook: str):
    if hook in EMBED_TOKEN:  # one token type per position already
        return new
    sel = jnp.asarray(token_mask(x.shape[1], token))[None, :, None]
    return jnp.where(sel, new, x)


@dataclasses.dataclass(frozen=True)
class SAESplice:
    """``x -> SAE(x)`` at the tokens of ``cfg.token`` (an ``Apply`` function; arg = SAE variables)."""

    cfg: SAEConfig

    def __call__(self, x, variables):
        return _select(x, SparseDictionary(self.cfg).apply(variables, x), self.cfg.token, self.cfg.hook)


@dataclasses.dataclass(frozen=True)
class TranscoderSplice:
    """``resid_mid -> resid_mid + T(mlp_in(resid_mid))`` at the tokens of ``cfg.token``.

    arg = (transcoder variables, the block's ln2 params or None); ``model_cfg`` only for ln2.
    """

    cfg: SAEConfig
    model_cfg: ModelConfig

    def __call__(self, x, arg):
        variables, ln2 = arg
        layer = layer_of(self.cfg.hook)
        params = {f"blocks_{layer}": {"ln2": ln2}} if ln2 is not None else {}
        out = SparseDictionary(self.cfg).apply(variables, mlp_input(params, self.model_cfg, x, layer))
        return _select(x, x + out, self.cfg.token, "")


@dataclasses.dataclass(frozen=True)
class ZeroTokens:
    """``x -> 0`` at the tokens of ``token`` (an ``Apply`` function without arg)."""

    token: str

    def __call__(self, x):
        return _select(x, jnp.zeros_like(x), self.token, "")


def splice(cfg: SAEConfig, variables: dict, model_params: dict | None = None, model_cfg: ModelConfig | None = None) -> dict:
    """Interventions that run the model with the dictionary in place of its site (see module doc).

    ``model_params`` / ``model_cfg`` are needed for transcoders only (the MLP input goes through
    ``ln2`` when the model has LayerNorm).
    """
    variables = {"params": variables["params"], "norm": variables["norm"]}
    if not cfg.transcoder:
        return {cfg.hook: hooks_lib.Apply(SAESplice(cfg), variables)}
    if model_cfg is None:
        raise ValueError("splicing a transcoder needs the model's config (and params when it has LayerNorm)")
    layer = layer_of(cfg.hook)
    ln2 = model_params[f"blocks_{layer}"]["ln2"] if model_cfg.layer_norm else None
    return {f"blocks.{layer}.hook_resid_mid": hooks_lib.Apply(TranscoderSplice(cfg, model_cfg), (variables, ln2)),
            cfg.hook: hooks_lib.Apply(ZeroTokens(cfg.token))}


def ablation(cfg: SAEConfig, kind: str, mean: jnp.ndarray | None = None) -> dict:
    """The baseline interventions of the CE / KL scores: the site's output at the dictionary's tokens
    set to zero (``kind="zero"``) or to ``mean`` (d_out,) (``kind="mean"``)."""
    if kind not in ("zero", "mean"):
        raise ValueError(f"ablation kind is zero or mean, got {kind!r}")
    value = jnp.zeros((), jnp.float32) if kind == "zero" else jnp.asarray(mean, jnp.float32)
    if cfg.hook in EMBED_TOKEN:
        return {cfg.hook: hooks_lib.Replace(mask=jnp.bool_(True), value=value)}
    return {cfg.hook: hooks_lib.Apply(_ReplaceTokens(cfg.token), value)}


@dataclasses.dataclass(frozen=True)
class _ReplaceTokens:
    token: str

    def __call__(self, x, value):
        return _select(x, jnp.broadcast_to(value.astype(x.dtype), x.shape), self.token, "")
