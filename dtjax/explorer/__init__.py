"""The interactive explorer: play Dynamic Obstacles beside the model's live internals.

``python analyse.py --ckpt PATH --serve`` starts it (``dtjax.explorer.server.serve``). A browser
tab is one WebSocket and one ``session.Session``; every panel is computed by ``dtjax.analysis``
in one jitted step per message. See docs/explorer.md for the panels and the message protocol.
"""


def serve(*args, **kwargs):
    """See ``dtjax.explorer.server.serve`` (imported lazily: the web stack loads only here)."""
    from dtjax.explorer.server import serve as _serve  # lazy: the web stack loads only when serving

    return _serve(*args, **kwargs)
