"""Sparse dictionaries on the Decision Transformer: SAEs and transcoders trained in JAX.

    from dtjax import sae
    ctx = sae.open_context("checkpoints/default")                       # model, dataset, env
    cfg = sae.make_config(ctx, "blocks.0.hook_resid_post", "state", arch="topk", n_latents=1024, k=16)
    path, d = sae.train(ctx, cfg, sae.SAETrainConfig())                 # -> checkpoints/default/sae/<name>/
    ctx, d = sae.open_dictionary(path)
    a = sae.analyse(ctx, d)                                             # plain data: metrics, latents, probes
    logits = run_with_hooks(params, cfg, obs, rtg, t, interventions=sae.splice(d.cfg, d.variables))

Command line: ``python -m dtjax.sae train ...`` and ``python -m dtjax.sae eval --sae DIR``
(``python -m dtjax.sae --help``). Modules: ``model`` (the Flax dictionary: TopK, BatchTopK,
JumpReLU; SAE or transcoder), ``activations`` (sites and on-device harvesting), ``train`` (the
jitted loop), ``splice`` (the dictionary as hook interventions), ``metrics``, ``probes``
(ground-truth probes and AUROC), ``store`` (directories), ``features`` (the jobs: train, analyse; what each latent means). ``python -m dtjax.sae eval`` renders through
the report's SAE section (``dtjax.report.sections.sae.eval_page``) and ``dtjax.plots``.
"""

from dtjax.sae.features import (
    SAEInputs, active_latents, analyse, eval_arrays, make_config, open_context, open_dictionary, summary, train,
)
from dtjax.sae.model import ARCHS, TOKENS, SAEConfig, SAEError, SparseDictionary, init_sae
from dtjax.sae.splice import splice
from dtjax.sae.store import Dictionary, load, save
from dtjax.sae.train import SAETrainConfig, train_dictionary

__all__ = ["ARCHS", "TOKENS", "SAEInputs", "active_latents", "Dictionary", "SAEConfig", "SAEError", "SAETrainConfig", "SparseDictionary",
           "analyse", "eval_arrays", "init_sae", "load", "make_config", "open_context", "open_dictionary", "save", "splice", "summary",
           "train", "train_dictionary"]
