"""Probes: concepts from ground truth, linear probes on any hook, and probe-directed steering.

- ``dtjax.probes.ground_truth``: ``collect`` (closed-loop rollouts keeping every env state),
  ``concepts(env, rollouts)`` (labels from ground truth), ``split`` (held-out episodes).
- ``dtjax.probes.linear``: ``fit`` / ``fit_many`` (softmax probes, many in one jitted vmapped
  program), ``predict_proba``, ``evaluate`` / ``metrics`` (held-out accuracy, macro-F1, AUROC).
- ``dtjax.probes.suite``: ``probe_table`` (every hook x token x concept with the raw-observation,
  random-model and shuffled-label baselines), ``concept_f1`` (the F1 of a few concepts, no baselines).

The small API other modules use (training dynamics): ``fit(x, y, n_classes) -> Probe``,
``evaluate(probe, x, y) -> {"accuracy", "f1", "auroc", "n"}``, ``fit_many``, ``concept_f1``.
"""

from dtjax.probes.ground_truth import CELLS, Concept, ProbeData, Rollouts, collect, concepts, split
from dtjax.probes.linear import (
    MIN_COUNT,
    Probe,
    auroc,
    evaluate,
    fit,
    fit_many,
    metrics,
    midranks,
    predict_proba,
    predict_proba_many,
)
from dtjax.probes.suite import ProbeTable, concept_f1, default_sites, features, probe_table, token_pos

__all__ = ["CELLS", "MIN_COUNT", "Concept", "Probe", "ProbeData", "ProbeTable", "Rollouts", "auroc", "collect",
           "concept_f1", "concepts", "default_sites", "evaluate", "features", "fit", "fit_many", "metrics", "midranks",
           "predict_proba", "predict_proba_many", "probe_table", "split", "token_pos"]
