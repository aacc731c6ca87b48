"""dtjax.io: atomic writers never leave a half-written or temporary file; jsonable is strict JSON."""

from __future__ import annotations

import json
import os

import jax.numpy as jnp
import numpy as np
import pytest

from dtjax import io


def _siblings(d):
    return sorted(p.name for p in d.iterdir())


def test_jsonable_gives_strict_json():
    x = {1: np.float32(0.5), "a": (np.int64(3), np.bool_(True)), "nan": float("nan"), "arr": np.array([1.0, np.inf]),
         "jax": jnp.arange(3), "s": np.array(["x", "y"]), "none": None}
    out = io.jsonable(x)
    assert out == {"1": 0.5, "a": [3, True], "nan": None, "arr": [1.0, None], "jax": [0, 1, 2], "s": ["x", "y"],
                   "none": None}
    json.dumps(out, allow_nan=False)  # raises on any NaN / numpy value left
    assert type(out["a"][0]) is int and type(out["a"][1]) is bool


def test_write_json_replaces_whole_file_and_leaves_no_temporary(tmp_path):
    p = tmp_path / "summary.json"
    io.write_json_atomic(p, {"b": 1, "a": [1, 2]})
    assert json.loads(p.read_text()) == {"a": [1, 2], "b": 1}
    assert p.read_text().index('"a"') < p.read_text().index('"b"')  # sorted keys by default
    io.write_json_atomic(p, {"b": 2, "a": 0}, indent=1, sort_keys=False)
    assert p.read_text().index('"b"') < p.read_text().index('"a"')
    assert json.loads(p.read_text()) == {"b": 2, "a": 0}
    assert _siblings(tmp_path) == ["summary.json"]


def test_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    p = tmp_path / "config.json"
    io.write_json_atomic(p, {"v": 1})
    with pytest.raises(TypeError):  # not JSON-serialisable: fails before anything is written
        io.write_json_atomic(p, {"v": object()})
    assert json.loads(p.read_text()) == {"v": 1}

    def crash(*a):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)  # the rename fails after the temporary file is complete
    with pytest.raises(OSError, match="disk full"):
        io.write_text_atomic(p, "{}")
    assert json.loads(p.read_text()) == {"v": 1}
    assert _siblings(tmp_path) == ["config.json"]


def test_save_arrays_round_trip(tmp_path):
    arrays = {"latents/density": np.linspace(0, 1, 7, dtype=np.float32), "probes/names": np.array(["a", "bb"]),
              "top": np.arange(12).reshape(3, 4)}
    p = io.save_arrays_atomic(tmp_path / "analysis.npz", arrays)
    with np.load(p) as z:
        assert sorted(z.files) == sorted(arrays)
        for k, v in arrays.items():
            np.testing.assert_array_equal(z[k], v)
            assert z[k].dtype == v.dtype
    assert _siblings(tmp_path) == ["analysis.npz"]


def test_atomic_dir_appears_complete_or_not_at_all(tmp_path):
    out = tmp_path / "sub" / "dataset"
    with io.atomic_dir(out) as tmp:
        assert not out.exists() and tmp.parent == out.parent.absolute() and tmp.name.startswith(".dataset.tmp-")
        (tmp / "a.txt").write_text("x")
    assert (out / "a.txt").read_text() == "x" and _siblings(out.parent) == ["dataset"]

    class Refused(ValueError):
        pass

    with pytest.raises(Refused, match="exists"):
        with io.atomic_dir(out, lambda p: Refused(f"{p.name} exists")):
            pass
    other = tmp_path / "sub" / "other"
    with pytest.raises(RuntimeError):
        with io.atomic_dir(other) as tmp:
            (tmp / "half.txt").write_text("y")
            raise RuntimeError("crash mid-write")
    assert _siblings(out.parent) == ["dataset"]
    with pytest.raises(FileExistsError):  # a path that appears while the block writes is not overwritten
        with io.atomic_dir(other) as tmp:
            other.mkdir()
    assert list(other.iterdir()) == [] and _siblings(out.parent) == ["dataset", "other"]
