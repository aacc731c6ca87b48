"""Mechanistic-interpretability analyses of a Decision Transformer, as pure functions.

Every function takes ``(params, cfg, ...)`` -- the parameter dict and ``ModelConfig`` of
``dtjax.load`` -- plus a cache, ``Inputs`` or nothing (weights-only circuits), and returns arrays
(with a list of labels where the axis is a set of components). TransformerLens vocabulary
throughout: hook names, ``W_QK``/``W_OV``, DLA, ``decompose_resid``.

- ``core``: ``Inputs`` (a batch of model inputs as a pytree), logit directions, token positions.
- ``attribution``: attention patterns, residual decomposition, direct logit attribution,
  state-encoder maps, RTG scans, RTG/time embedding projections.
- ``weights``: ``FactoredMatrix``, QK and OV circuits as 7x7 maps, their SVDs.
- ``act_patching``: zero / mean ablations (logits and closed-loop returns), activation patching.
- ``attr_patching``: attribution patching (with integrated gradients), steering by activation differences.
- ``graph``: the edge graph of heads, MLPs, embeddings and logits; edge-level patching, edge
  attribution patching, path patching, ACDC and pruning by attribution, circuit faithfulness.
- ``lens``: logit lens, accumulated residual, layer-wise residual decomposition.
- ``composition``: Q, K and V composition scores between heads.
- ``census``: how a model avoids a ball ahead (``mechanism``: which component carries the veto
  and the RTG gate); its front end, reading and writing runs, is ``dtjax.census``.
"""

from dtjax.circuits.attribution import (
    attention_patterns, component_labels, decompose_logits, decompose_resid, direct_logit_attribution,
    embedding_cosines, rtg_embedding_projection, rtg_scan, state_encoder_maps, time_embedding_projection,
)
from dtjax.circuits.act_patching import (
    ABLATIONS, ablate_logits, ablate_returns, ablation_interventions, ablation_masks, ablation_means,
    activation_patching, component_name, components, logit_diff_metric, patchable_hooks,
)
from dtjax.circuits.composition import all_composition_scores, composition_scores
from dtjax.circuits.core import (
    ACTIONS, Inputs, action_vector, check_pair, direction_label, forward, layer_norm, logit_direction, obs_maps,
    obs_to_chw, run_with_cache, run_with_hooks, state_pos,
)
from dtjax.circuits.graph import (
    Graph, acdc, circuit_faithfulness, edge_attribution_patching, edge_graph, graph_forward, path_patching,
    path_patching_senders, prune_by_attribution, sender_outputs,
)
from dtjax.circuits.lens import accumulated_resid, decompose_resid_layers, logit_lens
from dtjax.circuits.attr_patching import attribution_patching, steer_logits, steer_returns, steering_vector
from dtjax.circuits.weights import (
    W_OV, W_QK, FactoredMatrix, circuit_svd, ov_circuit, ov_rtg, ov_state, qk_circuit, qk_embeddings_rtg,
    qk_state_rtg,
)

__all__ = [
    "ABLATIONS", "ACTIONS", "FactoredMatrix", "Graph", "Inputs", "W_OV", "W_QK", "ablate_logits", "ablate_returns",
    "ablation_interventions", "ablation_masks", "ablation_means", "accumulated_resid", "acdc", "action_vector",
    "activation_patching", "all_composition_scores", "attention_patterns", "attribution_patching", "check_pair",
    "circuit_faithfulness", "circuit_svd", "component_labels", "component_name", "components", "composition_scores",
    "decompose_logits", "decompose_resid", "decompose_resid_layers", "direct_logit_attribution", "direction_label",
    "edge_attribution_patching", "edge_graph", "embedding_cosines", "forward", "graph_forward", "layer_norm",
    "logit_diff_metric", "logit_direction", "logit_lens", "obs_maps", "obs_to_chw", "ov_circuit", "ov_rtg", "ov_state",
    "patchable_hooks", "path_patching", "path_patching_senders", "prune_by_attribution", "qk_circuit",
    "qk_embeddings_rtg", "qk_state_rtg", "rtg_embedding_projection", "rtg_scan", "run_with_cache", "run_with_hooks",
    "sender_outputs", "state_encoder_maps", "state_pos", "steer_logits", "steer_returns", "steering_vector",
    "time_embedding_projection",
]
