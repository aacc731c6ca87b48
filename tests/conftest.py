"""Shared pytest configuration: a `slow` marker skipped unless --runslow is given, and one JAX
persistent compilation cache for the whole test session.

The cache: many tests build the same jitted programs again (a new closure per run, per fixture,
per xdist worker, per ``train.py``/``analyse.py`` subprocess), and XLA compiles on CPU dominate the
suite's time; with a shared on-disk cache each distinct program compiles once per session. The
directory is ``$JAX_COMPILATION_CACHE_DIR`` when set (kept between sessions), else a temporary
directory made by the xdist controller (or the only process), shared with the workers and the
subprocesses through that environment variable, and removed at the end.
"""

import os
import shutil
import tempfile

import jax
import pytest

_CACHE_ENV = "JAX_COMPILATION_CACHE_DIR"
_OWNED = "DTJAX_TEST_OWNS_JAX_CACHE"  # set where this session made the directory (and removes it)


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False, help="run tests marked slow")


def pytest_configure(config):
    if not os.environ.get(_CACHE_ENV):  # the controller (or a lone process): workers inherit the variable
        os.environ[_CACHE_ENV] = tempfile.mkdtemp(prefix="dtjax-jax-cache-")
        os.environ[_OWNED] = str(os.getpid())
    jax.config.update("jax_compilation_cache_dir", os.environ[_CACHE_ENV])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def pytest_unconfigure(config):
    if os.environ.get(_OWNED) == str(os.getpid()):
        shutil.rmtree(os.environ[_CACHE_ENV], ignore_errors=True)


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow"):
        return
    skip_slow = pytest.mark.skip(reason="slow: run with --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip_slow)
