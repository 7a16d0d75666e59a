"""An exact, vectorised binomial sampler for many ``n`` and one ``p`` (pure JAX).

Apportioning a ramp needs one binomial draw per pixel and read, all with the same ``p``.
``jax.random.binomial`` runs its rejection loop over the whole array until the last
element is accepted and evaluates ``lgamma`` in the working precision, which in float32
loses the acceptance test for large ``n`` (``lgamma(n)`` of 1e6 carries an absolute error
of ~0.1). This sampler keeps the same two exact algorithms and fixes both:

* mean ``n min(p, 1-p) < 10``: inversion of the CDF with a fixed, unrolled number of steps
  (the truncated tail beyond ``INVERSION_STEPS`` has probability < 1e-12 and the uniform is
  rescaled to the truncated mass, so no draw falls off the end);
* otherwise: BTRS, the transformed rejection of Hormann (1993, J. Stat. Comput. Simul. 46,
  101, algorithm BTRS), with the log-pmf ratio ``log f(k)/f(m)`` written in terms of
  ``log1p`` of small quantities and Stirling remainders (no difference of two ``lgamma`` of
  size ``n``), so it stays accurate in float32 for ``n`` up to 2e9;
* the first attempt of every element with ``n < LOG_FACTORIAL_TABLE_SIZE`` takes the
  log-pmf ratio from a float64 table of ``log k!`` instead (four lookups; the ratio is then
  exact to float64 rounding, and ~12% of a bright-scene apportionment is saved); elements
  with larger ``n`` discard that attempt, whatever its outcome, and are redrawn with the
  formula above;
* rejected draws are compacted into a buffer ``REDRAW_BUFFER`` (22%) of the size and
  redrawn there, recursively on ever smaller buffers (in place below 4096 elements), so the
  cost is ~1.3 attempts per element instead of the ~8 full-array passes a plain loop needs
  before the last of a million elements is accepted;
* both algorithms run on every element with no ``lax.cond`` (on XLA CPU a conditional
  around the rejection sampler costs more than the inversion it would skip), and arrays are
  padded to a multiple of 128 elements (the vector loops are several times slower on odd
  sizes);
* the random bits come from Philox4x32-10 (:mod:`.rng`), cheaper than JAX's threefry
  on the CPU;
* fair bits (:func:`binomial_half`) count random bits instead, and there one ``lax.cond``
  per call picks between two whole strategies by how many ``n`` are too large to count.

Every draw is an exact rejection or inversion sample; keys are split deterministically, so
the same key gives the same draws.
"""

from __future__ import annotations

import math
from functools import lru_cache

import jax
import jax.numpy as jnp
import numpy as np

from .queue import compact_positions as _compact_positions
from .rng import _enable_x64
from .rng import map_words as _map_words
from .rng import random_words as _random_words

__all__ = ["binomial", "binomial_half", "uniform_pair"]

#: Means ``n min(p, 1 - p)`` below this use inversion, above it BTRS (valid for >= 10).
INVERSION_MAX_MEAN = 10.0
#: Unrolled inversion steps; P(X > 42) < 1e-12 for any binomial of mean < 10.
INVERSION_STEPS = 42
#: Below this many elements the rejected draws are redrawn in place, without compaction.
_MIN_COMPACT = 4096
#: Binomial(n, 1/2) by counting set random bits up to this n (four 32-bit words).
POPCOUNT_MAX_N = 128
#: Arrays are padded to a multiple of this many elements.
_SIZE_MULTIPLE = 128
#: Rejected draws are redrawn in a buffer this fraction of the array (recursively).
REDRAW_BUFFER = 0.22
#: First BTRS attempts with ``n`` below this take ``log k!`` from a float64 table (8 MB).
LOG_FACTORIAL_TABLE_SIZE = 2**20

# Stirling remainder lgamma(y) - ((y - 1/2) log y - y + log(2 pi) / 2) at y = 1..9
_STIRLING_REMAINDER = tuple(
    math.lgamma(y) - ((y - 0.5) * math.log(y) - y + 0.5 * math.log(2 * math.pi))
    for y in range(1, 10)
)
# ... as the degree-8 polynomial through those nine values in t = (y - 5) / 4 (highest power
# first): one Horner chain instead of nine selects, exact at the nodes to 2e-9 in float32.
_STIRLING_POLYNOMIAL = tuple(
    float(c) for c in np.polyfit((np.arange(1, 10) - 5) / 4, _STIRLING_REMAINDER, 8))


def _to_unit(bits):
    """uint32 random bits -> float32 uniform on [0, 1) (23 bits)."""
    return jax.lax.bitcast_convert_type((bits >> 9) | jnp.uint32(0x3F800000), jnp.float32) - 1.0


def uniform_pair(key, size: int, dtype):
    """Two independent ``[size]`` uniform arrays on [0, 1) for ``key``.

    float32: from two Philox4x32-10 words per element (:mod:`.rng`; cheaper than
    ``jax.random.uniform``'s threefry hashes on the CPU), 23 random bits each.
    float64: ``jax.random.uniform`` (52 random bits).
    """
    dtype = jnp.dtype(dtype)
    if dtype != jnp.float32:
        u = jax.random.uniform(key, (2, size), dtype)
        return u[0], u[1]
    first, second = _random_words(key, size)
    return _to_unit(first), _to_unit(second)


def _stirling_remainder(y):
    """``lgamma(y) - ((y - 1/2) log y - y + log(2 pi)/2)`` at integer-valued ``y >= 1``."""
    large = jnp.maximum(y, 10.0)
    r = 1.0 / large
    r2 = r * r
    series = r * (1.0 / 12 - r2 * (1.0 / 360 - r2 * (1.0 / 1260)))
    t = (jnp.minimum(y, 9.0) - 5.0) * 0.25
    small = jnp.full_like(y, _STIRLING_POLYNOMIAL[0])
    for coefficient in _STIRLING_POLYNOMIAL[1:]:
        small = small * t + coefficient
    return jnp.where(y >= 10, series, small)


def _g(t, log1p_t):
    """``(1 + t) log1p(t) - t`` without cancellation near ``t = 0`` (series for |t| < 0.1)."""
    series = t * t * (0.5 + t * (-1.0 / 6 + t * (1.0 / 12 + t * (
        -1.0 / 20 + t * (1.0 / 30 + t * (-1.0 / 42 + t * (1.0 / 56)))))))
    return jnp.where(jnp.abs(t) < 0.1, series, (1.0 + t) * log1p_t - t)


def log_pmf_ratio(k, m, n, p, q, r):
    """``log f(k) - log f(m)`` of Binomial(n, p), accurate in float32 for n up to 2e9.

    With ``d = k - m``, ``y1 = m + 1``, ``y2 = n - k + 1`` and Stirling's formula
    ``log x! = (x + 1/2) log(x + 1) - (x + 1) + log(2 pi)/2 + c(x + 1)``::

        d log1p((r - d p) / (y1 q)) - y1 g(d/y1) + y2 g(d/y2)
          + (log1p(d/y1) - log1p(d/y2)) / 2 - c(k+1) + c(m+1) + c(n-m+1) - c(n-k+1)

    where ``g(t) = (1+t) log1p(t) - t`` and ``r = (n - m + 1) p - (m + 1) q``. Every term is
    of the size of the result (no ``lgamma(n)``-sized terms cancel).
    """
    d = k - m
    y1 = m + 1.0
    y2 = n - k + 1.0
    t1 = d / y1
    t2 = d / y2
    log1p_t1 = jnp.log1p(t1)
    log1p_t2 = jnp.log1p(t2)
    return (d * jnp.log1p((r - d * p) / (y1 * q)) - y1 * _g(t1, log1p_t1)
            + y2 * _g(t2, log1p_t2) + 0.5 * (log1p_t1 - log1p_t2)
            - _stirling_remainder(k + 1.0) + _stirling_remainder(m + 1.0)
            + _stirling_remainder(n - m + 1.0) - _stirling_remainder(y2))


@lru_cache(maxsize=1)
def log_factorials() -> np.ndarray:
    """float64 ``[LOG_FACTORIAL_TABLE_SIZE]`` table of ``log k!`` (host, built once).

    ``math.lgamma`` below ``k = 30``, above it Stirling's series
    ``(x - 1/2) log x - x + log(2 pi)/2 + 1/(12 x) - 1/(360 x^3) + 1/(1260 x^5)`` at
    ``x = k + 1`` (truncation error < 1e-13 there; float64 rounding ~1e-16 relative)."""
    size = LOG_FACTORIAL_TABLE_SIZE
    x = np.arange(1, size + 1, dtype=np.float64)
    r = 1.0 / x
    r2 = r * r
    table = ((x - 0.5) * np.log(x) - x + 0.5 * math.log(2 * math.pi)
             + r * (1.0 / 12 - r2 * (1.0 / 360 - r2 * (1.0 / 1260))))
    table[:30] = [math.lgamma(k + 1.0) for k in range(30)]
    table.flags.writeable = False
    return table


def table_log_pmf_ratio(k, m, n, p, q):
    """``log f(k) - log f(m)`` of Binomial(n, p) from the float64 table of ``log k!``
    (:func:`log_factorials`), for integer-valued ``0 <= k, m <= n < LOG_FACTORIAL_TABLE_SIZE``
    (others are clamped: the caller must not use them)::

        log m! + log (n - m)! - log k! - log (n - k)! + (k - m) log(p / q)

    computed in float64 (under a local x64 scope) and returned in the dtype of ``k``."""
    dtype = k.dtype
    last = LOG_FACTORIAL_TABLE_SIZE - 1
    k, m, n = (jnp.clip(x, 0, last).astype(jnp.int32) for x in (k, m, n))
    with _enable_x64(True):
        table = jnp.asarray(log_factorials())

        def log_factorial(i):
            return jnp.take(table, i, mode="clip")

        log_odds = (jnp.log(jnp.asarray(p, jnp.float64)) - jnp.log(jnp.asarray(q, jnp.float64)))
        ratio = (log_factorial(m) + log_factorial(n - m) - log_factorial(k)
                 - log_factorial(n - k) + (k - m).astype(jnp.float64) * log_odds)
        return ratio.astype(dtype)


def _inversion(u, n, p):
    """Binomial(n, p) by sequential CDF inversion with ``INVERSION_STEPS`` unrolled steps."""
    q = 1.0 - p
    ratio = p / q
    pmf = jnp.exp(n * jnp.log1p(-p))
    cdf = pmf
    cdfs = [cdf]
    for i in range(1, INVERSION_STEPS + 1):
        pmf = pmf * ((n - (i - 1)) * (ratio / i))
        cdf = cdf + pmf
        cdfs.append(cdf)
    u = u * cdf  # draw from the distribution truncated at INVERSION_STEPS (tail < 1e-12)
    k = jnp.zeros_like(n)
    for c in cdfs[:-1]:
        k = k + (u > c).astype(n.dtype)
    return k


def _btrs_constants(n, p):
    q = 1.0 - p
    spq = jnp.sqrt(n * p * q)
    b = 1.15 + 2.53 * spq
    a = -0.0873 + 0.0248 * b + 0.01 * p
    c = n * p + 0.5
    v_r = 0.92 - 4.2 / b
    alpha = (2.83 + 5.1 / b) * spq
    mode_real = (n + 1.0) * p
    m = jnp.floor(mode_real)
    r = (mode_real - m) - q  # = (n - m + 1) p - (m + 1) q
    return a, b, c, v_r, alpha, m, r


def _btrs_attempt(u, v, n, p, constants, table=False):
    """One BTRS attempt per element: (candidate k, accepted).

    ``table``: the log-pmf ratio from :func:`table_log_pmf_ratio`, and elements with
    ``n >= LOG_FACTORIAL_TABLE_SIZE`` never accepted (their attempt is discarded whatever
    its outcome, so the accepted draws keep their distribution); otherwise
    :func:`log_pmf_ratio`."""
    a, b, c, v_r, alpha, m, r = constants
    u = u - 0.5
    us = 0.5 - jnp.abs(u)
    us_safe = jnp.maximum(us, 1e-6)
    k = jnp.floor((2.0 * a / us_safe + b) * u + c)
    valid = (us > 0) & (k >= 0) & (k <= n)
    k = jnp.clip(k, 0, n)
    quick = (us >= 0.07) & (v <= v_r)
    lhs = jnp.log(v * alpha / (a / (us_safe * us_safe) + b))
    if table:
        ratio = table_log_pmf_ratio(k, m, n, p, 1.0 - p)
        valid = valid & (n < LOG_FACTORIAL_TABLE_SIZE)
    else:
        ratio = log_pmf_ratio(k, m, n, p, 1.0 - p, r)
    accept = valid & (quick | (lhs <= ratio))
    return k, accept


def _redraw_buffer_size(size: int) -> int:
    """Elements of the compacted redraw buffer of a ``size`` array (multiple of 8)."""
    return -(-int(size * REDRAW_BUFFER) // 8) * 8


def _redraw_rejected(key, n, p, k, accepted):
    """Redraw the rejected elements until every one is accepted.

    Exact: each element keeps its first accepted draw, attempts use independent keys. The
    rejected elements are compacted into a buffer ``REDRAW_BUFFER`` of the size (in rounds,
    should they not fit; BTRS rejects at most ~30% for means >= 10), given a fresh attempt
    there and resolved recursively on ever smaller buffers; small arrays are redrawn in
    place until none is left. The redrawn values come back by a gather on the compacted
    positions (cheaper than a scatter on XLA CPU).
    """
    size = k.shape[0]
    if size <= _MIN_COMPACT:
        constants = _btrs_constants(n, p)

        def attempt(state):
            k, accepted, count = state
            u, v = uniform_pair(jax.random.fold_in(key, count), size, n.dtype)
            k_new, accepted_new = _btrs_attempt(u, v, n, p, constants)
            return jnp.where(accepted, k, k_new), accepted | accepted_new, count + 1

        return jax.lax.while_loop(lambda s: ~jnp.all(s[1]), attempt, (k, accepted, 0))[0]

    buffer = _redraw_buffer_size(size)

    def round_(state):
        k, accepted, count = state
        round_key = jax.random.fold_in(key, count)
        index, target = _compact_positions(~accepted, buffer)
        n_sub = jnp.take(n, index, mode="fill", fill_value=1000.0)
        padding = index >= size
        u, v = uniform_pair(jax.random.fold_in(round_key, 0), buffer, n.dtype)
        k_sub, accepted_sub = jax.lax.optimization_barrier(
            _btrs_attempt(u, v, n_sub, p, _btrs_constants(n_sub, p)))
        k_sub = _redraw_rejected(jax.random.fold_in(round_key, 1), n_sub, p, k_sub,
                                 accepted_sub | padding)
        placed = target < buffer
        k = jnp.where(placed, jnp.take(k_sub, jnp.minimum(target, buffer - 1)), k)
        return k, accepted | placed, count + 1

    return jax.lax.while_loop(lambda s: ~jnp.all(s[1]), round_, (k, accepted, 0))[0]


def _padded(sampler, key, n, *args):
    """``sampler(key, n, *args)`` on ``n`` padded with zeros to a multiple of
    ``_SIZE_MULTIPLE`` (the vector loops are several times slower on odd sizes), or ``None``
    when no padding is needed."""
    size = n.shape[0]
    if size % _SIZE_MULTIPLE == 0:
        return None
    pad = _SIZE_MULTIPLE - size % _SIZE_MULTIPLE
    return sampler(key, jnp.pad(n, (0, pad)), *args)[:size]


def _btrs(key, u, v, n, p, skip):
    """BTRS draws for float ``n`` (valid, >= 10 p-means, wherever ``skip`` is false) from a
    first attempt on ``(u, v)``, rejected ones redrawn with ``key``; float ``[size]``."""
    n_safe = jnp.where(skip, 1000.0, n)  # any valid BTRS input; result unused
    k, accepted = jax.lax.optimization_barrier(
        _btrs_attempt(u, v, n_safe, p, _btrs_constants(n_safe, p), table=True))
    return _redraw_rejected(key, n_safe, p, k, accepted | skip)


def binomial(key, n, p, dtype):
    """Exact Binomial(n, p) draws for integer ``n`` ``[size]`` and one probability ``p``.

    Parameters
    ----------
    key : jax.random key
    n : int32 array ``[size]``
        Trials, 0 <= n <= 2e9.
    p : float scalar (may be traced), 0 <= p <= 1.
    dtype : float dtype of the arithmetic (float32 or float64).

    Returns
    -------
    int array ``[size]`` (dtype of ``n``), ``0 <= k <= n``.
    """
    padded = _padded(binomial, key, n, p, dtype)
    if padded is not None:
        return padded
    size = n.shape[0]
    nf = n.astype(dtype)
    p = jnp.asarray(p, dtype)
    flip = p > 0.5
    p_low = jnp.where(flip, 1.0 - p, p)
    small = nf * p_low < INVERSION_MAX_MEAN
    u, v = uniform_pair(jax.random.fold_in(key, 0), size, dtype)
    # Both algorithms on every element, no lax.cond: a conditional costs a device-to-host
    # round trip on GPUs and, on CPUs, more than the inversion it would skip.
    # The redraw loop does no work when every element is small.
    k = _btrs(jax.random.fold_in(key, 1), u, v, nf, p_low, small)
    k = jnp.where(small, _inversion(u, jnp.where(small, nf, 0.0), p_low), k)
    k = jnp.where((p_low > 0) & (nf > 0), k, 0.0)
    k = jnp.clip(k, 0.0, nf).astype(n.dtype)
    k = jnp.where(flip, n - k, k)
    return k


def _count_low_bits(word, count):
    """Number of set bits among the lowest ``count`` (clipped to 0..32) bits of ``word``."""
    shift = jnp.clip(count, 0, 31).astype(jnp.uint32)
    mask = jnp.where(count >= 32, jnp.uint32(0xFFFFFFFF), (jnp.uint32(1) << shift) - jnp.uint32(1))
    return jax.lax.population_count(word & mask)


def binomial_half(key, n, dtype):
    """Exact Binomial(n, 1/2) draws for integer ``n`` ``[size]`` (0 <= n <= 2e9).

    Two ways, chosen per call by how many ``n`` exceed ``POPCOUNT_MAX_N``:

    * few (at most the redraw buffer, ``REDRAW_BUFFER`` of the array; faint pixels): the
      number of set bits among ``n`` random bits for ``n <= POPCOUNT_MAX_N`` (the four words
      of one Philox counter, counted inside the generator's own kernel), and BTRS as in
      :func:`binomial` for the larger ones only, compacted into the redraw buffer as
      rejected draws are;
    * many: two random words per element, their set bits counted for ``n <= 64`` and turned
      into the uniforms of a BTRS attempt for larger ``n`` (each element uses its words for
      one of the two, so the draws stay independent), rejected attempts redrawn.

    Returns int ``[size]`` (dtype of ``n``).
    """
    padded = _padded(binomial_half, key, n, dtype)
    if padded is not None:
        return padded
    size = n.shape[0]
    dtype = jnp.dtype(dtype)
    nf = n.astype(dtype)
    half = jnp.asarray(0.5, dtype)
    words_key, btrs_key = jax.random.fold_in(key, 0), jax.random.fold_in(key, 1)

    def count_bits(words, n):
        return sum(_count_low_bits(word, n - 32 * i) for i, word in enumerate(words))

    def large_ones_compacted():
        counted = _map_words(words_key, count_bits, n).astype(dtype)
        return _redraw_rejected(btrs_key, nf, half, counted, n <= POPCOUNT_MAX_N)

    def btrs_everywhere():
        words = _random_words(words_key, size)
        small = n <= 64  # the bits of the two words
        counted = count_bits(words, n).astype(dtype)
        if dtype == jnp.float32:
            u, v = _to_unit(words[0]), _to_unit(words[1])
        else:
            u, v = uniform_pair(jax.random.fold_in(key, 2), size, dtype)
        return jnp.where(small, counted, _btrs(btrs_key, u, v, nf, half, small))

    few = jnp.sum(n > POPCOUNT_MAX_N) <= _redraw_buffer_size(size)
    k = jax.lax.cond(few, large_ones_compacted, btrs_everywhere)
    return jnp.clip(k, 0.0, nf).astype(n.dtype)
