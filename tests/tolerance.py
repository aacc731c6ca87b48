"""Float32 tolerances that hold on any CPU or accelerator: errors scaled to the values compared.

Two float32 computations of the same quantity (another XLA fusion, another summation order, a
GPU) differ by a few ulps of the *largest* terms involved, not of the result: comparing logits
near -8.7 at ``atol=1e-6`` failed on one CPU (1.9e-6). ``assert_close`` allows ``rtol`` times the
largest magnitude of ``desired`` (at least ``floor``), so it reads the same for values near 10 or
near 0.01.
"""

from __future__ import annotations

import numpy as np

RTOL = 1e-5  # ~100 float32 ulps of the largest value: reorderings of sums over d_model <= 512 terms


def assert_close(actual, desired, rtol: float = RTOL, floor: float = 1e-6, err_msg: str = "") -> None:
    """``|actual - desired| <= rtol * max(|desired|.max(), floor)`` elementwise, with shapes equal."""
    actual, desired = np.asarray(actual, np.float64), np.asarray(desired, np.float64)
    assert actual.shape == desired.shape, f"shapes differ: {actual.shape} vs {desired.shape} {err_msg}"
    scale = max(float(np.nanmax(np.abs(desired))) if desired.size else 0.0, floor)
    np.testing.assert_allclose(actual, desired, rtol=0, atol=rtol * scale, err_msg=err_msg)
