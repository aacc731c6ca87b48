"""The explorer's web server: Starlette + uvicorn, one WebSocket (and one ``Session``) per tab.

Routes: ``/`` the page (``static/index.html``), ``/static/*`` its script and style,
``/plotly.min.js`` plotly.js from the installed ``plotly`` package (nothing from a CDN), and
``/ws`` the session's WebSocket. Each text frame is one JSON message; ``Session.handle`` runs in
a worker thread (JAX releases the GIL, so two tabs do not wait on each other's analyses) and its
replies are sent in order -- the ``step`` reply (probabilities) before the ``panels`` reply, each
serialised only when it is its turn. ``Deferred`` work (activation patching, closed-loop
episodes) runs as a background task, so key presses keep being answered meanwhile.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import socket
import sys
import traceback
from pathlib import Path
from typing import Any, Callable

import numpy as np

from dtjax.explorer.catalog import Catalog
from dtjax.explorer.session import Deferred, Model, Session

STATIC = Path(__file__).parent / "static"
log = logging.getLogger("dtjax.explorer")


def to_jsonable(x: Any) -> Any:
    """Numpy arrays and scalars as lists and numbers; NaN and infinities as null (valid JSON)."""
    if isinstance(x, dict):
        return {str(k): to_jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [to_jsonable(v) for v in x]
    if isinstance(x, (np.ndarray, np.generic)) or hasattr(x, "__array__"):
        a = np.asarray(x)
        if a.dtype.kind in "biu":
            return a.tolist()
        a = a.astype(np.float64)
        return a.tolist() if np.isfinite(a).all() else _null_nonfinite(a.tolist())
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def _null_nonfinite(v):
    if isinstance(v, list):
        return [_null_nonfinite(u) for u in v]
    return None if isinstance(v, float) and not math.isfinite(v) else v


def dumps(reply: dict) -> str:
    """One reply as compact JSON text."""
    return json.dumps(to_jsonable(reply), allow_nan=False, separators=(",", ":"))


_PLOTLY_JS: str | None = None


def plotly_js() -> str:
    """plotly.min.js of the installed ``plotly`` package (read once)."""
    global _PLOTLY_JS
    if _PLOTLY_JS is None:
        from plotly.offline import get_plotlyjs

        _PLOTLY_JS = get_plotlyjs()
    return _PLOTLY_JS


def make_app(catalog: Catalog, new_session: Callable[[], Session] | None = None):
    """The Starlette app serving the page and one session per WebSocket."""
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.responses import FileResponse, Response
    from starlette.routing import Mount, Route, WebSocketRoute
    from starlette.staticfiles import StaticFiles
    from starlette.websockets import WebSocket, WebSocketDisconnect

    new_session = new_session or (lambda: Session(catalog.default, catalog=catalog))

    async def index(request):
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    async def plotly(request):
        return Response(plotly_js(), media_type="application/javascript", headers={"Cache-Control": "max-age=86400"})

    async def ws_endpoint(websocket: WebSocket):
        await websocket.accept()
        lock = asyncio.Lock()
        tasks: set[asyncio.Task] = set()
        closed = False

        async def send(reply: dict) -> None:
            if closed:
                return
            text = dumps(reply)
            async with lock:
                await websocket.send_text(text)

        async def run_deferred(job: Deferred, seq) -> None:
            try:
                log.info("%s started", job.kind)
                reply = await run_in_threadpool(job.compute)
                log.info("%s done", job.kind)
            except Exception as e:  # noqa: BLE001 (shown in the page; the server keeps serving)
                log.error("%s failed:\n%s", job.kind, traceback.format_exc())
                reply = {"type": "error", "message": f"{job.kind} failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}
            reply.setdefault("seq", seq)
            try:
                await send(reply)
            except Exception:  # noqa: BLE001 (the tab closed meanwhile)
                pass

        async def dispatch(replies: list) -> None:
            for r in replies:
                if isinstance(r, Deferred):
                    task = asyncio.create_task(run_deferred(r, None))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                else:
                    await send(r)

        try:
            session = await run_in_threadpool(new_session)
            await dispatch(await run_in_threadpool(session.start))
            while True:
                msg = await websocket.receive()
                if msg["type"] == "websocket.disconnect":
                    break
                text = msg.get("text")
                if text is None:
                    text = msg.get("bytes") or b""
                try:
                    replies = await run_in_threadpool(session.handle, text)
                except Exception as e:  # noqa: BLE001 (a bug must not end the session)
                    log.error("message failed:\n%s", traceback.format_exc())
                    replies = [{"type": "error", "message": f"internal error: {type(e).__name__}: {str(e)[:200]}"}]
                await dispatch(replies)
        except WebSocketDisconnect:
            pass
        finally:
            closed = True
            for t in list(tasks):
                t.cancel()

    routes = [
        Route("/", index),
        Route("/plotly.min.js", plotly),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
        WebSocketRoute("/ws", ws_endpoint),
    ]
    return Starlette(routes=routes)


class ServeError(OSError):
    """The server cannot start (the port is taken, the host is unknown); the message is one line."""


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port`` (0: any free port), or ``ServeError``."""
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ServeError(f"port must be an integer in 0..65535, got {port!r}")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise ServeError(f"cannot listen on {host}:{port}: unknown host ({e.strerror})") from None
    family = infos[0][0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        if sys.platform != "win32":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(infos[0][4])
        sock.listen(128)
    except OSError as e:
        sock.close()
        what = "the port is in use" if e.errno in (98, 48, 10048) else (e.strerror or str(e))
        raise ServeError(f"cannot listen on {host}:{port}: {what}") from None
    sock.set_inheritable(True)
    return sock


def serve(ckpt, host: str = "127.0.0.1", port: int = 8000, models_dir=None, log_fn=None, sae_dirs=()) -> int:
    """Load ``ckpt``, compile, then serve the explorer at ``http://host:port/`` until Ctrl-C.

    The port is taken first (a port in use fails before any loading); a checkpoint that does not
    load raises ``dtjax.loader.LoadError``. ``models_dir`` (default: none) lists the models the
    page can switch to. ``sae_dirs``: sparse dictionaries of the model (with those under its run's
    ``sae/``) for the active-latents panel; one that does not fit raises ``dtjax.sae.SAEError``.
    Prints the URL on stdout once the page can be used; returns 0.
    """
    import uvicorn

    say = log_fn or (lambda m: print(m, file=sys.stderr, flush=True))

    sock = bind(host, port)
    try:
        model = Model.load(ckpt, warm=False, sae_dirs=sae_dirs, log=say)
        if model.saes:
            say(f"dictionaries: {', '.join(f'{s.name} ({s.cfg.hook}, {s.cfg.token})' for s in model.saes)}")
        say(f"loaded {ckpt}; compiling the explore step ...")
        model.compile_s = model.warm_up()
        say(f"compiled in {model.compile_s:.1f} s ({model.cfg.n_layers} layer(s), {model.cfg.n_heads} heads, "
            f"K={model.cfg.n_timesteps}, env {model.env_cfg.env_id})")
        catalog = Catalog(model, models_dir)
        app = make_app(catalog)
        real_port = sock.getsockname()[1]
        shown = f"[{host}]" if ":" in host else host
        print(f"http://{shown}:{real_port}/", flush=True)
        say("explorer running; Ctrl-C stops it")
        config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=2, ws="websockets-sansio")
        server = uvicorn.Server(config)
        try:
            server.run(sockets=[sock])
        except KeyboardInterrupt:  # uvicorn re-raises the captured SIGINT after shutting down
            pass
    finally:
        sock.close()
    say("explorer stopped")
    return 0
