"""Exact Poisson draws keyed by counters (Philox4x32-10, :mod:`romanjax.kernels.rng`).

Each draw is a pure function of the key words and its counter ``(element, index, stream,
tag)``: ``element`` and ``index`` name the draw (a pixel and a read, a cosmic-ray track and
one of its points), ``tag`` separates the callers' uses of one key, and ``stream`` is the
sampler's own (0 for the inversion, ``1 + attempt`` for the rejection attempts). A draw so
does not depend on the array it is drawn in, and chunked frames give the same numbers.

Means below :data:`INVERSION_MAX_MEAN` use CDF inversion with a fixed, unrolled number of
steps; larger means use the transformed rejection PTRS of Hormann (1993, "The transformed
rejection method for generating Poisson random variables", Insurance: Mathematics and
Economics 12, 39), with the log-pmf written so that it stays accurate in float32. Draws are
floats holding integers, in the dtype of the means.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from .rng import philox_4x32, unit

__all__ = ["poisson", "INVERSION_MAX_MEAN", "INVERSION_STEPS", "MAX_ATTEMPTS"]

#: Poisson means below this use CDF inversion, above it PTRS (valid from 10 on).
INVERSION_MAX_MEAN = 10.0
#: Unrolled inversion steps: P(X > 40) < 2e-13 for a Poisson mean below 10; the uniform is
#: rescaled to the truncated mass, so no draw falls off the end.
INVERSION_STEPS = 40
#: PTRS accepts ~90% of attempts for means >= 10; the loop stops after this many (an element
#: still rejected then, probability < 1e-50, keeps its last candidate).
MAX_ATTEMPTS = 64
_STREAM_INVERSION, _STREAM_PTRS = 0, 1
_LOG_2PI = math.log(2 * math.pi)
# Stirling remainders lgamma(k + 1) - (k log k - k + log(2 pi k) / 2) at k = 1..9.
_STIRLING_REMAINDER = tuple(
    math.lgamma(k + 1) - (k * math.log(k) - k + 0.5 * math.log(2 * math.pi * k))
    for k in range(1, 10)
)


def _inversion(u, lam):
    """Poisson(lam) for lam < 10 by sequential CDF inversion, truncated at
    :data:`INVERSION_STEPS` (``u`` rescaled to the truncated mass)."""
    pmf = jnp.exp(-lam)
    cdf = pmf
    cdfs = [cdf]
    for i in range(1, INVERSION_STEPS + 1):
        pmf = pmf * (lam / i)
        cdf = cdf + pmf
        cdfs.append(cdf)
    u = u * cdf
    k = jnp.zeros_like(lam)
    for c in cdfs[:-1]:
        k = k + (u > c).astype(lam.dtype)
    return k


def _g(t):
    """``(1 + t) log1p(t) - t`` for t > -1, without cancellation near 0 (series |t| < 0.1)."""
    series = t * t * (0.5 + t * (-1.0 / 6 + t * (1.0 / 12 + t * (
        -1.0 / 20 + t * (1.0 / 30 + t * (-1.0 / 42 + t * (1.0 / 56)))))))
    return jnp.where(jnp.abs(t) < 0.1, series, (1 + t) * jnp.log1p(t) - t)


def _stirling_remainder(k):
    """``lgamma(k + 1) - (k log k - k + log(2 pi k) / 2)`` at integer-valued ``k >= 1``."""
    large = jnp.maximum(k, 10.0)
    r = 1.0 / large
    r2 = r * r
    series = r * (1.0 / 12 - r2 * (1.0 / 360 - r2 * (1.0 / 1260)))
    out = series
    for i, value in enumerate(_STIRLING_REMAINDER, start=1):
        out = jnp.where(k == i, value, out)
    return out


def _log_pmf(k, lam):
    """``log P(k)`` of Poisson(lam) for integer-valued ``k >= 0``, as
    ``-lam g((k - lam)/lam) - log(2 pi k)/2 - r(k)`` (Stirling with remainder ``r``): no
    terms of size ``lam log lam`` cancel, so it stays accurate in float32."""
    kk = jnp.maximum(k, 1.0)
    main = -lam * _g((kk - lam) / lam) - 0.5 * (_LOG_2PI + jnp.log(kk)) - _stirling_remainder(kk)
    return jnp.where(k == 0, -lam, main)


def _ptrs_attempt(u, v, lam):
    """One PTRS attempt for lam >= 10: (candidate k, accepted); the constants as in numpy's
    ``random_poisson_ptrs``."""
    slam = jnp.sqrt(lam)
    b = 0.931 + 2.53 * slam
    a = -0.059 + 0.02483 * b
    inv_alpha = 1.1239 + 1.1328 / (b - 3.4)
    v_r = 0.9277 - 3.6224 / (b - 2)
    u = u - 0.5
    us = 0.5 - jnp.abs(u)  # > 0: u is never 0 or 1
    k = jnp.floor((2 * a / us + b) * u + lam + 0.43)
    quick = (us >= 0.07) & (v <= v_r)
    rejected = (k < 0) | ((us < 0.013) & (v > us))
    lhs = jnp.log(v) + jnp.log(inv_alpha) - jnp.log(a / (us * us) + b)
    accept = quick | (~rejected & (lhs <= _log_pmf(jnp.maximum(k, 0), lam)))
    return k, accept


def poisson(words_key, lam, element, index, tag=0):
    """Exact Poisson(lam) draws (floats holding integers, in ``lam``'s dtype), one per entry
    of ``lam``, keyed by the counter ``(element, index, stream, tag)``.

    Parameters
    ----------
    words_key : pair of uint32 scalars
        Philox key words (:func:`romanjax.kernels.rng.key_words`).
    lam : float array
        Means; non-finite or non-positive means give 0.
    element, index : integer arrays broadcasting to ``lam``'s shape (uint32 range)
    tag : int
        Fourth counter word: separates independent uses of one key.

    Every element runs the inversion (no ``lax.cond``); the PTRS loop runs only while some
    element with mean >= 10 is still rejected, so it makes no trip when all means are small
    (on an accelerator its condition is still read once per call).
    """
    dtype = lam.dtype
    lam = jnp.where(jnp.isfinite(lam) & (lam > 0), lam, 0)
    small = lam < INVERSION_MAX_MEAN
    element = jnp.asarray(element).astype(jnp.uint32)
    index = jnp.asarray(index).astype(jnp.uint32)
    tag = jnp.uint32(tag)
    words = philox_4x32(words_key, element, index, _STREAM_INVERSION, tag)
    k_small = _inversion(jnp.broadcast_to(unit(words, dtype), lam.shape),
                         jnp.where(small, lam, 0))  # fmt: skip
    lam_large = jnp.where(small, 100.0, lam)  # any valid PTRS mean where unused

    def attempt(state):
        n, k, done = state
        w = philox_4x32(words_key, element, index, jnp.uint32(_STREAM_PTRS) + n, tag)
        if jnp.dtype(dtype) == jnp.float32:
            u, v = unit(w, dtype, 0), unit(w, dtype, 1)
        else:
            u, v = unit(w, dtype, 0), unit(w, dtype, 2)
        candidate, accept = _ptrs_attempt(jnp.broadcast_to(u, lam.shape),
                                          jnp.broadcast_to(v, lam.shape), lam_large)  # fmt: skip
        k = jnp.where(done, k, candidate)
        return n + 1, k, done | accept

    def more(state):
        n, _, done = state
        return (n < MAX_ATTEMPTS) & jnp.any(~done)

    _, k_large, _ = jax.lax.while_loop(
        more, attempt, (jnp.uint32(0), jnp.zeros_like(lam), small))
    return jnp.where(small, k_small, jnp.maximum(k_large, 0))
