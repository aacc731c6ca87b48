"""Writing files that readers may open at any moment, and turning results into strict JSON.

Every file and directory dtjax writes for later reading (run configs, calibration and summary
JSON, datasets, dictionaries, reports, census tables) goes through here, so none can be seen
half-written: the bytes go to a hidden sibling ``.<name>.tmp-<pid>-<rand>`` in the same
directory (same file system, so the rename is atomic), are flushed and fsynced, and the sibling
is then renamed over the target with ``os.replace`` (a directory with ``os.rename``, and only if
the target does not exist yet). If anything fails before the rename, the sibling is removed and
the old file, if any, is left as it was.

A leaf module: it imports only the standard library and numpy.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import secrets
import shutil
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np


def jsonable(x: Any) -> Any:
    """``x`` as plain JSON types: dict keys as strings, tuples as lists, numpy (and jax) arrays
    and scalars as lists and Python numbers, NaN and infinities as None (strict JSON)."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, Path):
        return str(x)
    if isinstance(x, (np.ndarray, np.generic)) or (hasattr(x, "__array__") and hasattr(x, "shape")):
        return jsonable(np.asarray(x).tolist())
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def tmp_sibling(path: str | os.PathLike) -> Path:
    """A fresh hidden name beside ``path`` for writing it: ``.<name>.tmp-<pid>-<rand>``."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")


def fsync_dir(path: str | os.PathLike) -> None:
    """Make a rename inside directory ``path`` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path``, replacing any old file only once the new one is complete."""
    path = Path(path)
    tmp = tmp_sibling(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """``write_bytes_atomic`` of ``text`` encoded as UTF-8."""
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | os.PathLike, obj: Any, indent: int | None = 2, sort_keys: bool = True) -> Path:
    """Write ``obj`` as JSON (encoded in full before anything is written, so an object that cannot
    be encoded leaves the old file untouched). Pass ``jsonable(obj)`` for numpy values or NaN."""
    return write_text_atomic(path, json.dumps(obj, indent=indent, sort_keys=sort_keys))


def save_arrays_atomic(path: str | os.PathLike, arrays: dict[str, Any], compressed: bool = True) -> Path:
    """Write ``{name: array}`` as one ``.npz`` (``np.load(path)[name]`` reads each back)."""
    buf = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buf, **{k: np.asarray(v) for k, v in arrays.items()})
    return write_bytes_atomic(path, buf.getvalue())


def fsync_file(f) -> None:
    """Flush and fsync an open file (for files written inside ``atomic_dir``)."""
    f.flush()
    os.fsync(f.fileno())


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, exists: Callable[[Path], BaseException] = FileExistsError) -> Iterator[Path]:
    """Build a directory in a hidden sibling and rename it to ``path`` when the block completes.

    ``with atomic_dir(out) as tmp:`` yields the sibling (absolute); write everything into it (fsync
    the files with ``fsync_file``). An existing ``path`` is never overwritten: ``exists(path)`` is
    raised before the block if it exists, and after it if it appeared meanwhile. On any error
    the sibling is removed.
    """
    path = Path(path)
    if path.exists():
        raise exists(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_sibling(path).absolute()
    tmp.mkdir()
    try:
        yield tmp
        fsync_dir(tmp)
        if path.exists():  # appeared while we wrote
            raise exists(path)
        os.rename(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_dir(path.parent)
