"""Shared pytest configuration: a `slow` marker skipped unless --runslow is given, and one JAX
persistent compilation cache for the whole test session.

The cache: many tests build the same jitted programs again (a new closure per run, per fixture,
per xdist worker, per ``train.py``/``analyse.py`` subprocess), and XLA compiles on CPU dominate the
suite's time; with a shared on-disk cache each distinct program compiles once per session. The
directory is ``$JAX_COMPILATION_CACHE_DIR`` when set (kept between sessions), else a temporary
directory made by the xdist controller (or the only process), shared with the workers and the
subprocesses through that environment variable, and removed at the end.

The order: with ``-n 2 --dist loadfile`` each file runs whole on one worker, and xdist hands out
files in queue order (by default the files with the most tests first, whatever they cost). A long
file handed out last leaves the other worker idle at the end, so the files in ``LONGEST_FIRST``
(the longest measured, longest first) go out first and the many short files fill in behind them
(longest-processing-time-first scheduling); the other files keep their collection order.
"""

import os
import shutil
import tempfile

import jax
import pytest

_CACHE_ENV = "JAX_COMPILATION_CACHE_DIR"
_OWNED = "DTJAX_TEST_OWNS_JAX_CACHE"  # set where this session made the directory (and removes it)
# The longest files, longest first (summed --durations of a 2-worker run); a file not listed (or
# renamed) only loses its head start. Re-rank when a file's total passes ~60 s.
LONGEST_FIRST = (
    "test_report_shapes.py", "test_circuits_patching.py", "test_envs.py", "test_seeds.py", "test_train.py",
    "test_circuits.py", "test_sae.py", "test_model.py", "test_report.py", "test_analysis.py",
)


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False, help="run tests marked slow")


def pytest_configure(config):
    if not os.environ.get(_CACHE_ENV):  # the controller (or a lone process): workers inherit the variable
        os.environ[_CACHE_ENV] = tempfile.mkdtemp(prefix="dtjax-jax-cache-")
        os.environ[_OWNED] = str(os.getpid())
    jax.config.update("jax_compilation_cache_dir", os.environ[_CACHE_ENV])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    if hasattr(config.option, "loadscopereorder"):  # xdist installed: queue files in our order (below)
        config.option.loadscopereorder = False


def pytest_unconfigure(config):
    if os.environ.get(_OWNED) == str(os.getpid()):
        shutil.rmtree(os.environ[_CACHE_ENV], ignore_errors=True)


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: tests keep their order in a file
    if config.getoption("--runslow"):
        return
    skip_slow = pytest.mark.skip(reason="slow: run with --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip_slow)
