"""dtjax.plots holds every figure: no other module draws, and the figures show the data they are given."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
from matplotlib.colors import to_rgba

from dtjax import plots

ROOT = Path(__file__).resolve().parents[1]


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_only_plots_imports_matplotlib():
    files = [p for d in ("dtjax", "envs", "scripts") for p in (ROOT / d).rglob("*.py")]
    files += [ROOT / "train.py", ROOT / "analyse.py"]
    drawing = sorted(str(p.relative_to(ROOT)) for p in files
                     if any(n.split(".")[0] == "matplotlib" for n in _imports(p)))
    assert drawing == ["dtjax/plots.py"]


def _row(veto: dict, head_circuit: bool) -> dict:
    return {"contrasts": {"veto": {"carry": veto}}, "head_circuit": head_circuit}


def test_census_shares_draws_one_line_per_model_coloured_by_circuit():
    labels = ["L0H0", "L0H1", "L0_mlp", "direct"]
    res = {"a": {"models": [_row(dict(zip(labels, [0.1, 0.6, 0.2, 0.0])), True),
                            _row(dict(zip(labels, [0.0, 0.1, 0.9, 0.0])), False)],
                 "counts": {"models": 2, "head_circuit": 1, "saturated": 0}},
           "b": {"models": [_row(dict(zip(labels, [0.2, 0.2, 0.5, 0.1])), False)],
                 "counts": {"models": 1, "head_circuit": 0, "saturated": 1}}}
    fig = plots.census_shares(res)
    ax_a, ax_b = fig.axes
    lines = [ln for ln in ax_a.get_lines() if len(ln.get_ydata()) == len(labels)]
    assert len(lines) == 2 and len([ln for ln in ax_b.get_lines() if len(ln.get_ydata()) == len(labels)]) == 1
    np.testing.assert_allclose(lines[0].get_ydata(), [0.1, 0.6, 0.2, 0.0])
    assert to_rgba(lines[0].get_color()) == to_rgba("C0") and to_rgba(lines[1].get_color()) == to_rgba("C1")
    assert [t.get_text() for t in ax_a.get_xticklabels()] == labels and "1/2" in ax_a.get_title()
    assert plots.png_bytes(fig)[:4] == b"\x89PNG"


def test_faithfulness_curve_styles_and_point_arrays():
    curves = {"rtg: EAP": ([1, 2, 4], [0.1, 0.5, 1.0]), "rtg: EAP-IG": ([1, 2, 4], [0.2, 0.6, 1.0])}
    points = {"rtg: ACDC": ((3, 5), (0.8, 0.95))}
    fig = plots.faithfulness_curve(curves, points, {"rtg: EAP-IG": {"color": "tab:red", "ls": "--"},
                                                    "rtg: ACDC": {"color": "tab:green"}})
    (ax,) = fig.axes
    by_label = {ln.get_label(): ln for ln in ax.get_lines()}
    assert by_label["rtg: EAP"].get_linestyle() == "-"  # defaults kept where no style is given
    assert by_label["rtg: EAP-IG"].get_linestyle() == "--" and to_rgba(by_label["rtg: EAP-IG"].get_color()) == to_rgba("tab:red")
    (pts,) = ax.collections
    np.testing.assert_allclose(pts.get_offsets(), [[3, 0.8], [5, 0.95]])
    assert to_rgba(pts.get_facecolor()[0]) == to_rgba("tab:green")
    plots.png_bytes(fig)
