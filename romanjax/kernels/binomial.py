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
  log-pmf ratio, on CPUs, from a float64 table of ``log k!`` instead (four lookups; the
  ratio is then exact to float64 rounding, and cheaper than the formula); elements with
  larger ``n`` discard that attempt on every platform, whatever its outcome, and are
  redrawn with the formula above;
* element ``e`` makes attempts ``0, 1, 2, ...``, each from the words of the Philox counter
  ``(e, attempt, 0, 0)`` (:mod:`.rng`; ``e`` is the element's global index, e.g. its
  pixel in the frame) and keeps its first accepted one, so its draw is a function of the
  key, ``e``, ``n`` and ``p`` alone: the same whatever the array size, the chunking of a
  frame, or the schedule of the redraws;
* the rejected draws are compacted into a buffer ``REDRAW_BUFFER`` (22%) of the size and
  redrawn there: on CPUs recursively on ever smaller buffers (in place below 4096
  elements), ~1.3 attempts per element in all instead of the ~8 full-array passes a plain
  loop needs before the last of a million elements is accepted; elsewhere in one loop over
  one buffer (one data-dependent loop in the program: on a GPU each trip of one copies its
  predicate to the host);
* both algorithms run on every element with no ``lax.cond`` (a conditional costs a
  device-to-host round trip on GPUs and, on XLA CPU, more than the inversion it would
  skip), and arrays are padded to a multiple of 128 elements (the vector loops are several
  times slower on odd sizes);
* fair bits (:func:`binomial_half`) count random bits instead; :func:`binomial_or_half`
  makes either kind of draw from one copy of the sampler.

Every draw is an exact rejection or inversion sample; the same key gives the same draws.
"""

from __future__ import annotations

import math
from functools import lru_cache

import jax
import jax.numpy as jnp
import numpy as np

from .. import _platform
from .queue import compact_positions as _compact_positions
from .rng import counter_words, in_a_buffer
from .rng import key_words as _key_words

__all__ = ["binomial", "binomial_half", "binomial_or_half", "uniform_pair"]

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
#: The ``stream`` word of the Philox counters (element, attempt, stream, 0): BTRS's uniforms
#: ``u`` and ``v`` are words of one counter, and the counted bits of :func:`binomial_half`
#: all four words of attempt 0's.
_STREAM = 0

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


def _to_unit53(high, low):
    """Two uint32 words -> float64 uniform on [0, 1) (53 bits: 27 of ``high``, 26 of ``low``)."""
    return ((high >> 5).astype(jnp.float64) * 2.0**26 + (low >> 6).astype(jnp.float64)) * 2.0**-53


def uniform_pair(key_words, element, attempt, dtype):
    """Two independent uniform arrays on [0, 1): ``u`` and ``v`` of attempt ``attempt`` of
    the elements ``element``.

    Both come from the four words of counter ``(element, attempt, 0, 0)`` of Philox4x32-10
    keyed by ``key_words`` (:mod:`.rng`), one generator call per element: float32 ``u``
    from word 0 and ``v`` from word 1 (23 random bits each), float64 ``u`` from words 0-1
    and ``v`` from words 2-3 (53 bits each).

    Parameters
    ----------
    key_words : pair of uint32 scalars
    element : uint32 ``[m]``
        Global element (pixel) indices.
    attempt : uint32 ``[m]`` or scalar
    dtype : float32 or float64
    """
    dtype = jnp.dtype(dtype)

    def draw(element, attempt, key_words):
        attempt = jnp.broadcast_to(attempt, element.shape)
        words = counter_words(key_words, element, attempt, _STREAM)
        if dtype == jnp.float32:
            return _to_unit(words[0]), _to_unit(words[1])
        return _to_unit53(words[0], words[1]), _to_unit53(words[2], words[3])

    return in_a_buffer(draw, element, jnp.asarray(attempt, jnp.uint32), key_words)


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


# log_pmf_ratio and _inversion are each one jax.jit: the sampler calls them once per
# attempt kind and buffer, and a call of a shape seen before reuses its traced jaxpr instead
# of tracing their hundreds of elementwise operations again. XLA inlines the calls, so the
# compiled program is the same; lowering apportion_counts takes 0.05-0.1 s less.
@jax.jit
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
    with _platform.enable_x64(True):
        table = jnp.asarray(log_factorials())

        def log_factorial(i):
            return jnp.take(table, i, mode="clip")

        log_odds = (jnp.log(jnp.asarray(p, jnp.float64)) - jnp.log(jnp.asarray(q, jnp.float64)))
        ratio = (log_factorial(m) + log_factorial(n - m) - log_factorial(k)
                 - log_factorial(n - k) + (k - m).astype(jnp.float64) * log_odds)
        return ratio.astype(dtype)


@jax.jit
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


def _btrs_attempt(u, v, n, p, constants, first=False, table=False):
    """One BTRS attempt per element: (candidate k, accepted).

    ``first``: an element's first attempt, where elements with
    ``n >= LOG_FACTORIAL_TABLE_SIZE`` are never accepted (the attempt is discarded whatever
    its outcome, so the accepted draws keep their distribution) and the others may take
    the log-pmf ratio from the float64 table (``table``, :func:`table_log_pmf_ratio`; a CPU
    measure chosen by the caller: TPUs have no float64). Otherwise the ratio is
    :func:`log_pmf_ratio`. The discarding does not depend on ``table``, so the draws are the
    same with and without the table up to the rounding of the ratio."""
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
    else:
        ratio = log_pmf_ratio(k, m, n, p, 1.0 - p, r)
    if first:
        valid = valid & (n < LOG_FACTORIAL_TABLE_SIZE)
    accept = valid & (quick | (lhs <= ratio))
    return k, accept


def _redraw_buffer_size(size: int) -> int:
    """Elements of the compacted redraw buffer of a ``size`` array (multiple of 8)."""
    return -(-int(size * REDRAW_BUFFER) // 8) * 8


def _redraw_rejected(key_words, element, n, p, k, accepted, attempt):
    """Redraw the rejected elements until every one is accepted.

    Element ``e`` makes attempts ``attempt[e], attempt[e] + 1, ...`` (uniforms of counter
    ``(element[e], attempt)``, :func:`uniform_pair`) and keeps its first accepted one, so its
    draw depends only on the key, its global index and its ``n``: not on the other elements,
    the array size or the schedule. Two schedules, chosen per platform
    (:func:`romanjax._platform.by_platform`), give the same draws:

    * CPUs (:func:`_redraw_nested`): the rejected elements are compacted into a buffer
      ``REDRAW_BUFFER`` of the size, redrawn there and resolved recursively on ever smaller
      buffers (so ~1.3 attempts per element are computed in all);
    * elsewhere (:func:`_redraw_flat`): one loop whose every trip compacts the rejected
      elements into one buffer and gives each a fresh attempt, so the program holds a
      single data-dependent loop (each trip of one costs a device-to-host copy on a GPU).

    Every ``attempt`` is at least 1 (attempt 0 is made by the caller, with its rules).
    """
    return _platform.by_platform(key_words, element, n, p, k, accepted, attempt,
                                 cpu=_redraw_nested, default=_redraw_flat)


def _attempt_at(key_words, element, attempt, n, p):
    """Attempt ``attempt`` (at least 1) of each element."""
    u, v = uniform_pair(key_words, element, attempt, n.dtype)
    return _btrs_attempt(u, v, n, p, _btrs_constants(n, p))


def _gathered(index, element, n, attempt):
    """The compacted elements' indices, ``n`` (1000 in padding slots: any valid BTRS input)
    and next attempts."""
    return (jnp.take(element, index, mode="fill", fill_value=0),
            jnp.take(n, index, mode="fill", fill_value=1000.0),
            jnp.take(attempt, index, mode="fill", fill_value=0))


def _redraw_in_place(key_words, element, n, p, k, accepted, attempt):
    def trip(state):
        k, accepted, attempt = state
        k_new, accepted_new = _attempt_at(key_words, element, attempt, n, p)
        return jnp.where(accepted, k, k_new), accepted | accepted_new, attempt + 1

    return jax.lax.while_loop(lambda s: ~jnp.all(s[1]), trip, (k, accepted, attempt))[0]


def _compacted_attempt(key_words, element, n, p, accepted, attempt, buffer):
    """The rejected elements compacted into ``buffer`` slots (in order; those that do not
    fit are left for later) and their next attempt made there: ``(index, target)`` of
    :func:`romanjax.kernels.queue.compact_positions`, the slots' ``(element, n, attempt)``
    and the attempt's ``(k, accepted)``."""
    index, target = _compact_positions(~accepted, buffer)
    element_sub, n_sub, attempt_sub = _gathered(index, element, n, attempt)
    k_sub, accepted_sub = _platform.optimization_barrier(
        _attempt_at(key_words, element_sub, attempt_sub, n_sub, p))
    return (index, target), (element_sub, n_sub, attempt_sub), (k_sub, accepted_sub)


def _redraw_scheduled(key_words, element, n, p, k, accepted, attempt, nested):
    """:func:`_redraw_rejected` with the schedule ``nested`` (CPUs) or flat (elsewhere)."""
    size = k.shape[0]
    if size <= _MIN_COMPACT:
        return _redraw_in_place(key_words, element, n, p, k, accepted, attempt)
    buffer = _redraw_buffer_size(size)

    def nested_round(state):
        k, accepted = state
        (index, target), (element_sub, n_sub, attempt_sub), (k_sub, accepted_sub) = (
            _compacted_attempt(key_words, element, n, p, accepted, attempt, buffer))
        k_sub = _redraw_nested(key_words, element_sub, n_sub, p, k_sub,
                               accepted_sub | (index >= size), attempt_sub + 1)
        placed = target < buffer
        k = jnp.where(placed, jnp.take(k_sub, jnp.minimum(target, buffer - 1)), k)
        # elements left out of a full buffer keep their next attempt for a later round
        return k, accepted | placed

    def flat_trip(state):
        k, accepted, attempt = state
        (_, target), _, (k_sub, accepted_sub) = _compacted_attempt(
            key_words, element, n, p, accepted, attempt, buffer)
        placed = target < buffer
        slot = jnp.minimum(target, buffer - 1)
        got = placed & jnp.take(accepted_sub, slot)
        k = jnp.where(got, jnp.take(k_sub, slot), k)
        return k, accepted | got, jnp.where(placed, attempt + 1, attempt)

    if nested:
        return jax.lax.while_loop(lambda s: ~jnp.all(s[1]), nested_round, (k, accepted))[0]
    return jax.lax.while_loop(lambda s: ~jnp.all(s[1]), flat_trip, (k, accepted, attempt))[0]


def _redraw_nested(key_words, element, n, p, k, accepted, attempt):
    return _redraw_scheduled(key_words, element, n, p, k, accepted, attempt, nested=True)


def _redraw_flat(key_words, element, n, p, k, accepted, attempt):
    return _redraw_scheduled(key_words, element, n, p, k, accepted, attempt, nested=False)


def _materialised(k, n):
    """The draws ``k`` in a buffer of their own (:func:`romanjax._platform.materialise`):
    otherwise XLA fuses the unrolled inversion and the sampler's selects into each of the
    caller's consumers of ``k`` and computes them once per consumer. ``n[0] < 0`` is false
    but not provably so."""
    if k.shape[0] == 0:
        return k
    return _platform.materialise(k, n[0] < 0)


def _elements(n, element):
    """``element`` as uint32, default the positions ``0..size-1``."""
    if element is None:
        return jnp.arange(n.shape[0], dtype=jnp.uint32)
    return jnp.asarray(element, jnp.uint32)


def _padded(sampler, key, n, element, *args, **kwargs):
    """``sampler(key, n, *args, element=element, **kwargs)`` on ``n`` and ``element`` padded to a
    multiple of ``_SIZE_MULTIPLE`` (the vector loops are several times slower on odd sizes;
    the padding's draws are discarded), or ``None`` when no padding is needed."""
    size = n.shape[0]
    if size % _SIZE_MULTIPLE == 0:
        return None
    pad = _SIZE_MULTIPLE - size % _SIZE_MULTIPLE
    return sampler(key, jnp.pad(n, (0, pad)), *args, element=jnp.pad(element, (0, pad)),
                   **kwargs)[:size]


def _btrs(key_words, element, u, v, n, p, skip, table):
    """BTRS draws for float ``n`` (valid, >= 10 p-means, wherever ``skip`` is false) from a
    first attempt on ``(u, v)`` (attempt 0; with the ``log k!`` table if ``table``),
    rejected ones redrawn from attempt 1; float ``[size]``."""
    n_safe = jnp.where(skip, 1000.0, n)  # any valid BTRS input; result unused
    k, accepted = _platform.optimization_barrier(
        _btrs_attempt(u, v, n_safe, p, _btrs_constants(n_safe, p), first=True, table=table))
    return _redraw_rejected(key_words, element, n_safe, p, k, accepted | skip,
                            jnp.ones(n.shape, jnp.uint32))


def binomial(key, n, p, dtype, element=None, table=False):
    """Exact Binomial(n, p) draws for integer ``n`` ``[size]`` and one probability ``p``.

    Parameters
    ----------
    key : jax.random key
    n : int32 array ``[size]``
        Trials, 0 <= n <= 2e9.
    p : float scalar (may be traced), 0 <= p <= 1.
    dtype : float dtype of the arithmetic (float32 or float64).
    element : uint32 array ``[size]``, optional
        Global indices of the elements (default ``0..size-1``). An element's draw depends
        only on ``key``, its index, ``n`` and ``p``, so the draws of a frame do not depend on
        how it is cut into chunks.
    table : bool
        First attempts take ``log k!`` from the float64 table (:func:`log_factorials`): a
        CPU measure, for callers that choose it per platform outside any loop (the table is
        a constant of the program; inside a loop it would be carried through the loop on
        every platform).

    Returns
    -------
    int array ``[size]`` (dtype of ``n``), ``0 <= k <= n``.
    """
    element = _elements(n, element)
    padded = _padded(binomial, key, n, element, p, dtype, table=table)
    if padded is not None:
        return padded
    key_words = _key_words(key)
    nf = n.astype(dtype)
    p = jnp.asarray(p, dtype)
    flip = p > 0.5
    p_low = jnp.where(flip, 1.0 - p, p)
    small = nf * p_low < INVERSION_MAX_MEAN
    u, v = uniform_pair(key_words, element, 0, dtype)
    # Both algorithms on every element, no lax.cond: a conditional costs a device-to-host
    # round trip on GPUs and, on CPUs, more than the inversion it would skip.
    # The redraw loop does no work when every element is small.
    k = _btrs(key_words, element, u, v, nf, p_low, small, table)
    k = jnp.where(small, _inversion(u, jnp.where(small, nf, 0.0), p_low), k)
    return _finished(k, n, nf, p_low, flip)


def _finished(k, n, nf, p_low, flip):
    """The accepted ``k`` (float) as draws of ``n``: 0 where ``p`` or ``n`` is 0, clipped
    to ``[0, n]``, flipped back where ``p > 1/2``, in a buffer of their own."""
    k = jnp.where((p_low > 0) & (nf > 0), k, 0.0)
    k = jnp.clip(k, 0.0, nf).astype(n.dtype)
    return _materialised(jnp.where(flip, n - k, k), n)


def _count_bits(words, n):
    """Set bits among the lowest ``n`` bits of the four words (``n <= POPCOUNT_MAX_N``)."""
    return sum(_count_low_bits(word, n - 32 * i) for i, word in enumerate(words))


def _count_low_bits(word, count):
    """Number of set bits among the lowest ``count`` (clipped to 0..32) bits of ``word``."""
    shift = jnp.clip(count, 0, 31).astype(jnp.uint32)
    mask = jnp.where(count >= 32, jnp.uint32(0xFFFFFFFF), (jnp.uint32(1) << shift) - jnp.uint32(1))
    return jax.lax.population_count(word & mask)


def binomial_half(key, n, dtype, element=None, table=False):
    """Exact Binomial(n, 1/2) draws for integer ``n`` ``[size]`` (0 <= n <= 2e9).

    ``n <= POPCOUNT_MAX_N``: the number of set bits among the lowest ``n`` bits of the four
    words of counter ``(element, 0, 0, 0)`` (counted inside the generator's own kernel).
    Larger ``n``: BTRS, attempts ``0, 1, ...`` as in :func:`binomial` (attempt 0's ``u`` and
    ``v`` are words 0 and 1 of that same counter). Each element uses its random numbers for
    one of the two, so the draws stay independent, and (as in :func:`binomial`) an
    element's draw depends only on the key, its global index and its ``n``. ``table`` as in
    :func:`binomial`. It is :func:`binomial_or_half` with ``half`` true.

    Returns int ``[size]`` (dtype of ``n``).
    """
    return binomial_or_half(key, n, 0.5, True, dtype, element, table)


def _either_first(key_words, element, n, nf, p_low, half, table):
    """Attempt 0 of :func:`binomial_half` (``half`` true) or :func:`binomial` (false): the
    counted bits or the inversion where they apply (accepted), one BTRS attempt elsewhere
    (with the ``log k!`` table if ``table``), all from the words of counter
    ``(element, 0, 0, 0)`` as in either. Returns ``(k, accepted, n for BTRS)``.

    The counted bits and the BTRS attempt are computed for every element and chosen by
    selects. The inversion is skipped for fair bits, on CPUs by a ``lax.cond`` on ``half``
    (it costs more there than the conditional's copy of one array); elsewhere computed and
    discarded (a conditional costs a device-to-host round trip on a GPU)."""
    dtype = nf.dtype
    counts_bits = half & (n <= POPCOUNT_MAX_N)
    small = jnp.where(half, n <= POPCOUNT_MAX_N, nf * p_low < INVERSION_MAX_MEAN)

    def bits_or_first_words(element, n, key_words):
        """Counted bits where they apply, else word 0 (``u``); and word 1 (``v``)."""
        words = counter_words(key_words, element, 0, _STREAM)
        return jnp.where(counts_bits, _count_bits(words, n), words[0]), words[1]

    first, word_v = in_a_buffer(bits_or_first_words, element, n, key_words)
    if dtype == jnp.float32:
        u, v = _to_unit(first), _to_unit(word_v)
    else:
        u, v = uniform_pair(key_words, element, 0, dtype)
    n_safe = jnp.where(small, 1000.0, nf)  # any valid BTRS input; result unused
    k, accepted = _platform.optimization_barrier(
        _btrs_attempt(u, v, n_safe, p_low, _btrs_constants(n_safe, p_low), first=True,
                      table=table))

    def inverted(u, nf):
        return _inversion(u, jnp.where(small, nf, 0.0), p_low)

    def skipped(u, nf):
        return jnp.zeros_like(u)

    inversion = _platform.by_platform(
        u, nf, cpu=lambda u, nf: jax.lax.cond(half, skipped, inverted, u, nf),
        default=inverted)
    counted = jnp.where(half, first.astype(dtype), inversion)
    return jnp.where(small, counted, k), accepted | small, n_safe


def binomial_or_half(key, n, p, half, dtype, element=None, table=False):
    """:func:`binomial` ``(key, n, p, ...)``, or where the scalar ``half`` (may be traced) is
    true :func:`binomial_half` ``(key, n, ...)`` (``p`` is then ignored): the same draws as
    those two, from one copy of the sampler, for loops over draws of both kinds (the
    apportionment's factorised draws): a loop over both samplers would compile both.

    Attempt 0 as in :func:`_either_first`; the rejected elements are then redrawn by one
    loop (:func:`_redraw_rejected`) from attempt 1.

    Parameters
    ----------
    key : jax.random key
    n : int32 array ``[size]``, 0 <= n <= 2e9.
    p : float scalar (may be traced), 0 <= p <= 1.
    half : bool scalar (may be traced): a Binomial(n, 1/2) draw by :func:`binomial_half`.
    dtype, element, table : as in :func:`binomial`.

    Returns
    -------
    int array ``[size]`` (dtype of ``n``), ``0 <= k <= n``.
    """
    element = _elements(n, element)
    padded = _padded(binomial_or_half, key, n, element, p, half, dtype, table=table)
    if padded is not None:
        return padded
    key_words = _key_words(key)
    nf = n.astype(dtype)
    p = jnp.asarray(p, dtype)
    half = jnp.asarray(half, bool)
    flip = ~half & (p > 0.5)
    p_low = jnp.where(half, jnp.asarray(0.5, dtype), jnp.where(flip, 1.0 - p, p))
    k, accepted, n_safe = _either_first(key_words, element, n, nf, p_low, half, table)
    k = _redraw_rejected(key_words, element, n_safe, p_low, k, accepted,
                         jnp.ones(n.shape, jnp.uint32))
    return _finished(k, n, nf, p_low, flip)
