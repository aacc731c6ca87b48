"""The tour notebook: ``notebooks/tour.ipynb`` is ``notebooks/tour.py`` converted by jupytext, cell
for cell, and is committed without outputs (CI executes it: ``pytest --nbmake notebooks/tour.ipynb``)."""

from __future__ import annotations

from pathlib import Path

import jupytext

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def test_tour_ipynb_is_its_script_converted_and_has_no_outputs():
    script = jupytext.read(NOTEBOOKS / "tour.py")
    notebook = jupytext.read(NOTEBOOKS / "tour.ipynb")
    want = [(c.cell_type, c.source) for c in script.cells]
    got = [(c.cell_type, c.source) for c in notebook.cells]
    assert got == want, "notebooks/tour.ipynb is stale: run jupytext --to ipynb notebooks/tour.py"
    code = [c for c in notebook.cells if c.cell_type == "code"]
    assert len(code) >= 10 and all(not c.outputs and c.execution_count is None for c in code)
