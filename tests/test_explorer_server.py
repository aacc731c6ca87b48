"""dtjax.explorer.server: the page, plotly.js and the WebSocket protocol, through Starlette's TestClient.

Bad messages must come back as an ``error`` reply on the same socket, which keeps serving; two
sockets are two independent sessions; the CLI fails in one line on a bad path or a taken port.
"""

from __future__ import annotations

import json
import socket
import warnings
from pathlib import Path

import numpy as np
import pytest

from explorer_models import tiny_model

starlette = pytest.importorskip("starlette")
pytest.importorskip("httpx")
with warnings.catch_warnings():  # Starlette >= 1.x suggests httpx2 for its TestClient; httpx still works
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient  # noqa: E402

from dtjax.explorer.catalog import Catalog, find_models  # noqa: E402
from dtjax.explorer.server import make_app, to_jsonable  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def client():
    catalog = Catalog(tiny_model(), None)
    with TestClient(make_app(catalog)) as c:
        yield c


def _recv_until(ws, kind, limit=12):
    """Replies up to and including the first of type ``kind``."""
    got = []
    for _ in range(limit):
        got.append(ws.receive_json())
        if got[-1]["type"] == kind:
            return got
        assert got[-1]["type"] != "error", got[-1]
    raise AssertionError(f"no {kind} reply in {[g['type'] for g in got]}")


def test_page_and_assets(client):
    page = client.get("/")
    assert page.status_code == 200
    for tid in ("frame", "view", "action-probs", "attention", "dla", "rtg-scan", "state-encoder", "qk", "ov",
                "ablation", "patching", "history", "timestep", "rtg-slider", "status"):
        assert f'data-testid="{tid}"' in page.text, tid
    assert '<input type="range" data-testid="rtg-slider"' in page.text
    assert '<div class="card wide" data-testid="sae-card" hidden>' in page.text  # shown only for a model with SAEs
    js = client.get("/plotly.min.js")
    assert js.status_code == 200 and len(js.text) > 1_000_000 and "plotly" in js.text[:2000].lower()
    assert client.get("/static/app.js").status_code == 200 and client.get("/static/style.css").status_code == 200
    assert "cdn" not in page.text.lower()  # nothing from the internet


def test_protocol_step_and_bad_messages(client):
    with client.websocket_connect("/ws") as ws:
        first = _recv_until(ws, "panels")
        assert [m["type"] for m in first] == ["init", "weights", "step", "panels"]
        init = first[0]
        assert init["dla_labels"][-1] == "b_U" and init["tokens"][-1] == "s_t" and init["n_layers"] == 1
        assert init["saes"] == [] and first[-1]["sae"] == []  # no dictionary: no SAE panel (its card stays hidden)
        ws.send_text(json.dumps({"type": "act", "action": "left", "seq": 11}))
        step, panels = ws.receive_json(), ws.receive_json()
        assert (step["type"], panels["type"], step["seq"], panels["seq"]) == ("step", "panels", 11, 11)
        assert step["timestep"] == 1 and abs(sum(step["probs"]) - 1) < 1e-5 and step["status"] == "running"
        assert len(panels["scan"]["rtg"]) == init["n_scan"] and len(panels["dla"]) == len(init["dla_labels"])
        bad = ["{not json", "[]", json.dumps({"type": "act", "action": "jump"}), json.dumps({"type": "set", "rtg": "x"}),
               json.dumps({"type": "set", "rtg": 99}), json.dumps({"type": "edit", "op": "ball", "cell": [40, 2]}),
               json.dumps({"type": "teleport"}), json.dumps({"type": "goto", "step": -1})]
        for i, text in enumerate(bad):
            ws.send_text(text)
            err = ws.receive_json()
            assert err["type"] == "error" and err["message"], text
        ws.send_bytes(b"\xff\xfe")
        assert ws.receive_json()["type"] == "error"
        ws.send_text(json.dumps({"type": "act", "action": 2, "seq": 12}))  # still serving
        assert ws.receive_json()["seq"] == 12


def test_memory_messages_outside_memory_are_errors(client):
    """The Memory card's messages on a model where it does not apply: an error reply each (the reason in
    one line, as ``init.memory.undefined``), and the socket keeps serving."""
    with client.websocket_connect("/ws") as ws:
        first = _recv_until(ws, "panels")
        why = first[0]["memory"]["undefined"]
        assert why and first[-1]["memory"] is None
        for i, msg in enumerate([{"type": "memory", "coef": 1.0}, {"type": "adversary", "layout": "key_key-ball", "edit": "original"}]):
            ws.send_text(json.dumps({**msg, "seq": 30 + i}))
            err = ws.receive_json()
            assert (err["type"], err["seq"]) == ("error", 30 + i) and why in err["message"]
        ws.send_text(json.dumps({"type": "act", "action": 2, "seq": 40}))
        assert ws.receive_json()["seq"] == 40


def test_two_sockets_are_two_sessions(client):
    with client.websocket_connect("/ws") as a, client.websocket_connect("/ws") as b:
        _recv_until(a, "panels")
        _recv_until(b, "panels")
        for _ in range(3):
            a.send_text(json.dumps({"type": "act", "action": 0}))
            assert a.receive_json()["type"] == "step" and a.receive_json()["type"] == "panels"
        b.send_text(json.dumps({"type": "set", "rtg": -0.5}))
        step_b = _recv_until(b, "step")[-1]
        assert step_b["timestep"] == 0 and step_b["rtg"] == -0.5
        a.send_text(json.dumps({"type": "goto", "step": 3}))
        step_a = a.receive_json()
        assert step_a["timestep"] == 3 and step_a["rtg"] == pytest.approx(0.9)


def test_deferred_closed_loop(client):
    """Work off the key-press path (here closed-loop episodes; patching in test_explorer_session):
    ``busy`` at once, key presses answered meanwhile, the result when it is done."""
    with client.websocket_connect("/ws") as ws:
        _recv_until(ws, "panels")
        ws.send_text(json.dumps({"type": "set", "ablate": ["L0H1"]}))
        _recv_until(ws, "panels")
        ws.send_text(json.dumps({"type": "closed_loop", "episodes": 2, "seq": 8}))
        assert ws.receive_json()["type"] == "busy"
        ws.send_text(json.dumps({"type": "act", "action": 0, "seq": 9}))
        got = _recv_until(ws, "closed_loop")
        assert [m["seq"] for m in got if m["type"] == "step"] == [9]
        res = got[-1]
        assert res["labels"] == ["clean", "ablated"] and res["ablate"] == ["L0H1"] and len(res["mean_return"]) == 2
        assert res["episodes"] == 2 and 0 <= res["goal_rate"][1] <= 1


def test_json_encoding_of_arrays():
    out = to_jsonable({"a": np.array([1.5, np.nan, np.inf], np.float32), "b": np.int32(3), "c": (np.bool_(True),)})
    assert out == {"a": [1.5, None, None], "b": 3, "c": [True]}
    json.dumps(out, allow_nan=False)


def test_find_models(tmp_path):
    (tmp_path / "runs" / "a" / "ckpt").mkdir(parents=True)
    (tmp_path / "runs" / "a" / "dataset").mkdir()
    (tmp_path / "orig").mkdir()
    (tmp_path / "orig" / "m.pt").write_bytes(b"x")
    (tmp_path / "notes.txt").write_text("x")
    assert list(find_models(tmp_path)) == ["orig/m.pt", "runs/a"]


def _cli(capsys, *args):
    """``python analyse.py ARGS`` in this process (jax is imported already): (exit code, stdout, stderr)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("analyse_cli", ROOT / "analyse.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    capsys.readouterr()
    code = mod.main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_bad_checkpoint_and_taken_port(tmp_path, capsys):
    code, out, err = _cli(capsys, "--ckpt", str(tmp_path / "missing.pt"), "--serve", "--port", "0")
    assert code == 1 and out == "" and err == f"error: checkpoint not found: {tmp_path / 'missing.pt'}\n"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        code, out, err = _cli(capsys, "--ckpt", "checkpoints/original/demo_model_overnight_training.pt", "--serve",
                              "--port", str(port))
    assert code == 1 and err == f"error: cannot listen on 127.0.0.1:{port}: the port is in use\n"
    code, out, err = _cli(capsys, "--ckpt", "x.pt", "--serve", "--port", "70000")
    assert code == 1 and err == "error: port must be an integer in 0..65535, got 70000\n"


def test_cli_sae_that_is_not_a_dictionary(tmp_path, capsys):
    code, out, err = _cli(capsys, "--ckpt", "checkpoints/original/demo_model_overnight_training.pt", "--serve",
                          "--port", "0", "--sae", str(tmp_path))
    assert code == 1 and out == "" and err == f"error: --sae {tmp_path}: no dtjax SAE directory there (needs config.json and ckpt/)\n"
