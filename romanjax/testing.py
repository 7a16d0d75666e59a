"""Tolerance helpers for comparing romanjax results, keyed by dtype.

float32 kernels agree with float64 references to a few parts in 1e6 of the largest value
involved; float64 kernels to ~1e-12. Tests use these helpers so one test body runs in both
precisions (``JAX_ENABLE_X64`` unset and set).
"""

from __future__ import annotations

import numpy as np

__all__ = ["x64_enabled", "rtol_for", "assert_close"]


def x64_enabled() -> bool:
    """Whether JAX computes in float64 by default (``JAX_ENABLE_X64``)."""
    import jax

    return bool(jax.config.read("jax_enable_x64"))


def rtol_for(dtype, float32: float = 1e-5, float64: float = 1e-10) -> float:
    """Relative tolerance for results of ``dtype`` (float32 or float64)."""
    return float64 if np.dtype(dtype) == np.float64 else float32


def assert_close(actual, desired, *, rtol32=1e-5, rtol64=1e-10, atol=0.0, err_msg=""):
    """``numpy.testing.assert_allclose`` with the rtol chosen by ``actual``'s dtype."""
    actual = np.asarray(actual)
    rtol = rtol_for(actual.dtype, rtol32, rtol64)
    np.testing.assert_allclose(actual, np.asarray(desired), rtol=rtol, atol=atol, err_msg=err_msg)
