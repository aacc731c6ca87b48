"""The report's sections: every module in this package that defines ``SECTIONS`` (a tuple of
``dtjax.report.Section``) contributes them, placed by ``Section.order``.

Built in: ``overview`` (model, calibration), ``states`` (scenarios, dla, rtg_scan), ``rtg`` (rtg_time), ``weights``
(state_encoder, embeddings, qk, ov, svd), ``causal`` (ablation, patching), ``circuits``
(attribution, path_patching, circuit_discovery, logit_lens, composition, steering), ``sae`` (sae:
opt-in, ``analyse.py --sae DIR``). A new module here is
a new group of sections; nothing else needs editing.
"""

from __future__ import annotations

import importlib
import pkgutil


def all_sections() -> list:
    """Every section of every module of this package, sorted by (order, key); keys are unique."""
    found = []
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{__name__}.{info.name}")
        found.extend(getattr(module, "SECTIONS", ()))
    keys = [s.key for s in found]
    dup = sorted({k for k in keys if keys.count(k) > 1})
    if dup:
        raise ValueError(f"report sections defined twice: {', '.join(dup)}")
    return sorted(found, key=lambda s: (s.order, s.key))
