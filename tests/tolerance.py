"""Float32 tolerances that hold on any CPU or accelerator: errors scaled to the values compared.

Two float32 computations of the same quantity (another XLA fusion, another summation order, a
GPU) differ by a few ulps of the *largest* terms involved, not of the result: comparing logits
near -8.7 at ``atol=1e-6`` failed on one CPU (1.9e-6). ``assert_close`` allows ``rtol`` times the
largest magnitude of ``desired`` (at least ``floor``), so it reads the same for values near 10 or
near 0.01.

A normalised quantity ``(x - corrupted) / (clean - corrupted)`` (a patching effect, a restored
fraction, a circuit's faithfulness, a steering coefficient's metric) carries the metrics' errors,
a few ulps of ``|clean|`` and ``|corrupted|``, divided by ``|clean - corrupted|``: an effect that
is 1 in exact arithmetic came out 0.99966 on one machine, where a random tiny model's clean and
corrupted metrics differed by 2e-4 of their size. ``assert_normalised_close`` scales ``rtol`` by
that ``conditioning`` and refuses a pair so ill-conditioned that the check would mean nothing.
"""

from __future__ import annotations

import numpy as np

RTOL = 1e-5  # ~100 float32 ulps of the largest value: reorderings of sums over d_model <= 512 terms
MAX_CONDITIONING = 1e3  # beyond this a normalised check at RTOL allows > 1e-2: choose inputs that differ more


def assert_close(actual, desired, rtol: float = RTOL, floor: float = 1e-6, err_msg: str = "") -> None:
    """``|actual - desired| <= rtol * max(|desired|.max(), floor)`` elementwise, with shapes equal."""
    actual, desired = np.asarray(actual, np.float64), np.asarray(desired, np.float64)
    assert actual.shape == desired.shape, f"shapes differ: {actual.shape} vs {desired.shape} {err_msg}"
    scale = max(float(np.nanmax(np.abs(desired))) if desired.size else 0.0, floor)
    np.testing.assert_allclose(actual, desired, rtol=0, atol=rtol * scale, err_msg=err_msg)


def conditioning(clean, corrupted) -> float:
    """How much ``(x - mean(corrupted)) / (mean(clean) - mean(corrupted))`` amplifies relative
    float32 errors of the metrics: ``(mean|clean| + mean|corrupted|) / |mean(clean) - mean(corrupted)|``
    (>= 1). ``clean``, ``corrupted``: the metrics, scalars or the per-example values whose batch
    means are normalised (their magnitudes, not the means', set the rounding errors)."""
    c, k = np.asarray(clean, np.float64), np.asarray(corrupted, np.float64)
    size = float(np.abs(c).mean() + np.abs(k).mean())
    gap = abs(float(c.mean() - k.mean()))
    return max(size / gap, 1.0) if gap > 0 else np.inf


def assert_normalised_close(actual, desired, clean, corrupted, rtol: float = RTOL, err_msg: str = "") -> None:
    """``assert_close`` for normalised quantities (scale 1): ``|actual - desired| <= rtol *
    conditioning(clean, corrupted) * max(|desired|.max(), 1)``. Fails, rather than passes
    vacuously, when the conditioning exceeds ``MAX_CONDITIONING``."""
    cond = conditioning(clean, corrupted)
    assert cond <= MAX_CONDITIONING, (f"clean and corrupted metrics too close to normalise by "
                                      f"(conditioning {cond:.3g}: mean {np.mean(clean):.6g} vs {np.mean(corrupted):.6g}) {err_msg}")
    assert_close(actual, desired, rtol=rtol * cond, floor=1.0, err_msg=f"{err_msg} (conditioning {cond:.3g})")
