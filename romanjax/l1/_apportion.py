"""Exact apportionment of a fixed number of electrons over the reads of a ramp.

Given the total number of electrons ``K`` a pixel collects by the last read, the photon
arrival times are independent and uniform over ``(0, T]`` (a Poisson process conditioned on
its total). The numbers of electrons arriving between consecutive reads are therefore
multinomial with probabilities ``dt_j / T``, and resultant ``i`` is the mean of the
cumulative counts ``C_j`` of its reads: ``R_i = mean_{j in resultant i} C_j``. romanisim's
``apportion_counts_to_resultants`` (Casertano 2022; romanisim ``l1.py``) draws it read by
read, ``c_j ~ Binomial(K - sum_{l<j} c_l, dt_j / (T - t_{j-1}))``; :func:`read_scan` does
the same (used by :func:`romanjax.simulate_l1` when it applies an inverse non-linearity,
which needs every read).

:func:`apportion_counts` draws the same joint distribution with fewer binomials, sampling
resultants directly (the seed's suggestion). A photon arriving in group ``g`` (the time from
the previous resultant's last read to this resultant's last read) adds 1 to every later
resultant and ``U + 1`` reads' worth to resultant ``g``, where ``U`` (0..n_g - 1) counts the
reads of ``g`` after the one it precedes. So

* group totals ``S_g`` are sequential binomials over the ``n_resultant`` groups, and
* ``R_g = C_{g-1} + (S_g + W_g) / n_g`` with ``W_g = sum over the group's photons of U``.

With equally spaced reads ``U`` is uniform on ``{0..n-1}``, and the sum of ``S`` such
uniforms, ``USum(S, n)``, factorises exactly: for even ``n``, ``U = b + 2 U'`` with a fair
bit ``b`` and ``U'`` uniform on ``{0..n/2-1}``, independent, so
``USum(S, n) = Binomial(S, 1/2) + 2 USum(S, n/2)``; for odd ``n``, ``U = n - 1`` with
probability ``1/n`` and uniform on ``{0..n-2}`` otherwise, so with
``M ~ Binomial(S, 1/n)``, ``USum(S, n) = (n - 1) M + USum(S - M, n - 1)``. A first slot
longer than the others (skipped reads before the group) is one more binomial; any other
uneven group falls back to one binomial per slot. MA table 4 (44 reads, resultants of
1, 1, 2, 5, 8, 8, 8, 10, 1 reads) needs 25 draws per pixel instead of 43, 15 of them fair
bits: ``Binomial(n, 1/2)`` for ``n <= 128`` is the number of set bits among ``n`` random
bits (:func:`romanjax.kernels.binomial.binomial_half`), far cheaper than a general
binomial; :func:`factorised_scan` makes both kinds of draw with one sampler
(:func:`romanjax.kernels.binomial.binomial_or_half`).

Either way ``E[R_i] = K tbar_i / T`` and, for Poisson totals, ``Var R_i = f tau_i`` and
``Cov(R_i, R_j) = f tbar_i`` (i < j).
"""

from __future__ import annotations

import math
from functools import lru_cache, partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from .. import _platform
from .._read_pattern import ReadPattern
from .._validate import check_pattern, float_dtype
from ..kernels.binomial import binomial as _binomial
from ..kernels.binomial import binomial_or_half

__all__ = ["apportion_counts", "apportion_plan", "read_probabilities", "check_counts",
           "MAX_COUNTS", "counts_as_int32"]

#: Largest total per pixel [e] (romanisim clips there too); int32 holds it exactly.
MAX_COUNTS = 2_000_000_000


def read_probabilities(pattern: ReadPattern) -> np.ndarray:
    """``[n_reads_total]`` p_j = dt_j / (T - t_{j-1}) for every read in the pattern (float64).

    ``dt_j`` runs from the previous read *in the pattern* (skipped reads lengthen it), with
    t = 0 at reset; the last probability is exactly 1."""
    times = np.asarray(pattern.read_times, np.float64)
    previous = np.concatenate([[0.0], times[:-1]])
    remaining = times[-1] - previous
    p = np.minimum((times - previous) / remaining, 1.0)
    p[-1] = 1.0
    return p


def counts_as_int32(counts):
    """Flattened ``counts`` as int32 electrons in ``[0, MAX_COUNTS]``: floats rounded, narrow
    integers (uint8, int16, uint16) widened before the clip, so no value wraps."""
    flat = counts.reshape(-1)
    if jnp.issubdtype(flat.dtype, jnp.floating):
        return jnp.round(jnp.clip(flat, 0, MAX_COUNTS)).astype(jnp.int32)
    if jnp.dtype(flat.dtype).itemsize < 4:
        flat = flat.astype(jnp.int32)
    return jnp.clip(flat, 0, MAX_COUNTS).astype(jnp.int32)


def check_counts(counts, function: str):
    """Host-side check that concrete ``counts`` are non-negative integers (no-op if traced).

    Returns ``counts`` as an array: integer dtypes unchanged, integer-valued floats as int32.
    """
    if _platform.is_traced(counts):
        return counts
    array = np.asarray(counts)
    if array.dtype == bool or not (
        np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)
    ):
        raise ValueError(f"{function}: `counts` must be numeric, got dtype {array.dtype}")
    if np.issubdtype(array.dtype, np.floating):
        if not np.all(np.isfinite(array)) or not np.all(array == np.round(array)):
            raise ValueError(f"{function}: `counts` must be integer-valued electrons")
    if np.any(array < 0):
        raise ValueError(f"{function}: `counts` must be non-negative")
    if np.any(array > MAX_COUNTS):
        raise ValueError(f"{function}: `counts` must be <= {MAX_COUNTS:.0e} per pixel")
    return array


def binomial(key, n, p, dtype, element=None, table=False):
    """Exact Binomial(n, p) draws for int32 ``n`` ``[npix]`` and a scalar ``p``; ``element``
    the pixels' global indices (default ``0..npix-1``).

    See :mod:`romanjax.kernels.binomial`: inversion for means below 10, BTRS rejection with
    a float32-exact acceptance test otherwise, rejected draws compacted and redrawn. Result
    in ``[0, n]``, so electrons are conserved exactly. ``table``: first attempts use the
    float64 ``log k!`` table (a CPU measure, see :func:`with_table_on_cpu`)."""
    return _binomial(key, n, p, dtype, element, table)


def with_table_on_cpu(function, *operands):
    """``function(*operands, table=True)`` when lowered for a CPU, ``table=False``
    elsewhere (:func:`romanjax._platform.by_platform`). The binomial sampler's float64
    ``log k!`` table is a constant of the program: chosen here, outside the scans over the
    draws, a program lowered for a GPU or TPU holds no trace of it. JAX without a local
    64-bit scope that holds in traces (:data:`romanjax._platform.LOCAL_X64`) never takes
    it."""
    if not _platform.LOCAL_X64:
        return function(*operands, table=False)
    return _platform.by_platform(*operands, cpu=partial(function, table=True),
                                 default=partial(function, table=False))


def read_scan(key, counts, pattern: ReadPattern, dtype, per_read=None, carry0=None,
              element=None, table=False, draws=True):
    """Walk the reads of ``pattern`` drawing the photons of each read interval.

    Parameters
    ----------
    key : jax.random key
    counts : int32 ``[npix]`` total electrons at the last read [e].
    per_read : callable or None
        ``per_read(j, cumulative, carry) -> (value [npix] float, flag [npix] bool, carry)``:
        turns the cumulative photon count after read ``j`` (global read number in the
        pattern, 0-based) into the value averaged into the resultant (default: the count
        itself); flags are OR-ed over the reads of each resultant.
    carry0 : pytree passed to ``per_read``.
    element : uint32 ``[npix]``, optional
        Global pixel indices of the random streams (default ``0..npix-1``).
    table : bool
        First binomial attempts use the float64 ``log k!`` table (:func:`binomial`).
    draws : bool
        False: draw no photons (the cumulative count ``per_read`` gets stays 0), for charge
        that is added to photons drawn otherwise.

    Returns
    -------
    resultants : ``[n_resultant, npix]`` in ``dtype``; flags ``[n_resultant, npix]`` bool;
    carry.
    """
    p_all = read_probabilities(pattern)
    n_res = pattern.n_resultants
    resultant_of = np.concatenate([np.full(len(r), i) for i, r in enumerate(pattern.reads)])
    last_of_resultant = np.concatenate([np.arange(len(r)) == len(r) - 1 for r in pattern.reads])
    reads_in = np.concatenate([np.full(len(r), len(r), np.float64) for r in pattern.reads])
    j_last = len(p_all) - 1

    # One scan over all reads (one copy of the sampler in the compiled graph); the sum of
    # the reads of the current resultant is carried and written out at its last read.
    def body(state, xs):
        remaining, cumulative, total, flag, out, out_flags, carry = state
        p, j, i, last, inv_n = xs
        if draws:
            draw = binomial(jax.random.fold_in(key, j), remaining, p, dtype, element, table)
            draw = jnp.where(j == j_last, remaining, draw)  # the last read takes what is left
            remaining = remaining - draw
            cumulative = cumulative + draw
        if per_read is None:
            value = cumulative.astype(dtype)
        else:
            value, hit, carry = per_read(j, cumulative, carry)
            flag = flag | hit
        total = total + value
        row = jnp.where(last, total * inv_n, jax.lax.dynamic_index_in_dim(out, i, 0, False))
        out = jax.lax.dynamic_update_index_in_dim(out, row, i, 0)
        row_flag = jnp.where(last, flag, jax.lax.dynamic_index_in_dim(out_flags, i, 0, False))
        out_flags = jax.lax.dynamic_update_index_in_dim(out_flags, row_flag, i, 0)
        total = jnp.where(last, jnp.zeros_like(total), total)
        flag = flag & ~last
        return (remaining, cumulative, total, flag, out, out_flags, carry), None

    zeros = jnp.zeros(counts.shape, dtype)
    state = (counts, jnp.zeros_like(counts), zeros, jnp.zeros(counts.shape, bool),
             jnp.zeros((n_res,) + counts.shape, dtype),
             jnp.zeros((n_res,) + counts.shape, bool), carry0)
    xs = (jnp.asarray(p_all, dtype), jnp.arange(len(p_all)), jnp.asarray(resultant_of),
          jnp.asarray(last_of_resultant), jnp.asarray(1.0 / reads_in, dtype))
    state, _ = jax.lax.scan(body, state, xs)
    return state[4], state[5], state[6]


class ApportionPlan(NamedTuple):
    """The binomial draws of :func:`apportion_counts`, one row per draw (host arrays).

    ``probability[s]``: p of the draw; ``coefficient[s]``: what each drawn photon adds to
    ``W_g`` (0 for a group-total draw); ``group_total[s]``: the draw is ``S_g`` (from the
    photons not yet in a group) rather than a split of the current group's photons;
    ``reduces[s]``: the drawn photons leave the current group's pool; ``resultant[s]``: the
    group (resultant) the draw belongs to."""

    probability: np.ndarray
    coefficient: np.ndarray
    group_total: np.ndarray
    reduces: np.ndarray
    resultant: np.ndarray


def _uniform_sum_draws(m: int) -> list:
    """``(p, coefficient, reduces)`` draws giving ``USum(S, m)`` (module docstring)."""
    if m == 1:
        return []
    if m % 2 == 0:
        return [(0.5, 1, False)] + [(p, 2 * c, r) for p, c, r in _uniform_sum_draws(m // 2)]
    return [(1.0 / m, m - 1, True)] + _uniform_sum_draws(m - 1)


@lru_cache(maxsize=64)
def apportion_plan(pattern: ReadPattern) -> ApportionPlan:
    """The exact factorised draws of ``pattern`` (module docstring), built on the host.

    Slot lengths are whole numbers of reads (read ``k`` is at ``k * read_time``), so "equal
    slots" is an exact integer test. The last group total takes all remaining photons
    (probability 1, no draw)."""
    rows = []
    previous_read, total_reads = 0, pattern.reads[-1][-1]
    for g, reads in enumerate(pattern.reads):
        n = len(reads)
        slots = np.diff(np.concatenate([[previous_read], reads]))
        span = reads[-1] - previous_read
        p_group = 1.0 if g == len(pattern.reads) - 1 else span / (total_reads - previous_read)
        draws = [(p_group, 0, False)]
        if n > 1 and np.all(slots == slots[0]):
            draws += _uniform_sum_draws(n)
        elif n > 1 and np.all(slots[1:] == slots[1]):
            draws += [(slots[0] / span, n - 1, True)] + _uniform_sum_draws(n - 1)
        else:  # one binomial per slot; the last slot (U = 0) takes the rest
            for k in range(n - 1):
                draws.append((slots[k] / slots[k:].sum(), n - 1 - k, True))
        for s, (p, c, r) in enumerate(draws):
            rows.append((p, c, s == 0, r, g))
        previous_read = reads[-1]
    columns = list(zip(*rows))
    dtypes = (np.float64, np.float64, bool, bool, np.int32)
    return ApportionPlan(*(np.asarray(col, dt) for col, dt in zip(columns, dtypes)))


def factorised_scan(key, counts, pattern: ReadPattern, dtype, element=None, table=False):
    """Resultants ``[n_resultant, npix]`` (``dtype``) of int32 totals ``counts [npix]``.

    One ``lax.scan`` over the rows of :func:`apportion_plan`, in order (one copy of the
    sampler in the compiled graph; draw ``s`` uses ``fold_in(key, s)``, and pixel ``i`` the
    random streams of ``element[i]``, default ``i``). Group totals are drawn from the photons
    not yet in a group, the other draws from the current group's pool; the fair bits
    (p = 1/2, the pool unchanged) by counting random bits, the rest by the general sampler
    (:func:`romanjax.kernels.binomial.binomial_or_half`). ``out[g]`` accumulates
    ``n_g R_g = n_g C_{g-1} + S_g + W_g``: at the group total ``C_{g-1}`` is the total
    less the photons not yet in a group. The scan carries only those free photons, the
    group's pool and ``out``, so a draw reads and writes three arrays besides its own. The
    last group total (probability 1) is taken whole by a select, not a conditional, so the
    scan has a fixed trip count."""
    plan = apportion_plan(pattern)
    n_reads = np.asarray(pattern.n_reads, np.float64)
    half = (plan.probability == 0.5) & ~plan.group_total & ~plan.reduces

    def step(state, xs):
        free, pool, out = state
        s, p, coefficient, group_total, reduces, fair, g = xs
        source_count = jnp.where(group_total, free, pool)
        draw = binomial_or_half(jax.random.fold_in(key, s), source_count, p, fair, dtype,
                                element, table)
        draw = jnp.where(p >= 1.0, source_count, draw)
        drawn = draw.astype(dtype)
        earlier = (counts - free).astype(dtype) * jnp.asarray(n_reads, dtype)[g]
        row = jax.lax.dynamic_index_in_dim(out, g, 0, False) + jnp.where(
            group_total, earlier + drawn, coefficient * drawn)
        out = jax.lax.dynamic_update_index_in_dim(out, row, g, 0)
        free = jnp.where(group_total, free - draw, free)
        pool = jnp.where(group_total, draw, jnp.where(reduces, pool - draw, pool))
        return (free, pool, out), None

    state = (counts, jnp.zeros_like(counts),
             jnp.zeros((pattern.n_resultants,) + counts.shape, dtype))
    xs = (jnp.arange(len(plan.probability)), jnp.asarray(plan.probability, dtype),
          jnp.asarray(plan.coefficient, dtype), jnp.asarray(plan.group_total),
          jnp.asarray(plan.reduces), jnp.asarray(half), jnp.asarray(plan.resultant))
    state, _ = jax.lax.scan(step, state, xs)
    return state[-1] * jnp.asarray(1.0 / n_reads, dtype)[:, None]


@partial(jax.jit, static_argnames=("pattern", "dtype"))
def _apportion(key, counts, pattern, dtype, first_pixel=0):
    """Resultants of ``counts [*pixels]``, whose flattened pixel ``i`` has the global index
    ``first_pixel + i`` (a chunk of a frame draws what the whole frame would)."""
    shape = counts.shape
    flat = counts_as_int32(counts)
    element = jnp.asarray(first_pixel, jnp.uint32) + jnp.arange(flat.shape[0], dtype=jnp.uint32)
    resultants = with_table_on_cpu(
        lambda key, flat, element, table: factorised_scan(key, flat, pattern, dtype, element,
                                                          table),
        key, flat, element)
    return resultants.reshape((pattern.n_resultants,) + shape)


def apportion_counts(key: jax.Array, counts: ArrayLike, pattern: ReadPattern) -> jax.Array:
    """Split each pixel's total electrons over the reads and average them into resultants.

    The exact distribution of romanisim's ``apportion_counts_to_resultants`` (no pedestal,
    no noise): the fixed integer total is distributed over the read intervals as a Poisson
    process conditioned on its total (sequential binomials, p_j = dt_j / remaining time),
    and the cumulative counts of the reads of each resultant are averaged.

    Parameters
    ----------
    key : jax.random key
        Same key, same draw.
    counts : array ``[*pixels]``
        Total electrons at the last read [e]: non-negative integers (integer or
        integer-valued float dtype), at most 2e9 per pixel.
    pattern : ReadPattern
        Static read pattern; skipped reads lengthen the following interval.

    Returns
    -------
    resultants : Array ``[n_resultant, *pixels]`` [e]
        float32 (float64 for float64 input with x64 enabled). Monotone in the resultant
        axis, ``0 <= R_i <= counts``.

    Raises
    ------
    ValueError
        If concrete ``counts`` are negative, non-integer, non-finite or above 2e9 (the check
        is skipped when ``counts`` is traced, e.g. under the caller's ``jit``), or hold more
        than 2**32 - 1 pixels.

    Notes
    -----
    Pixel ``i`` of the flattened ``counts`` draws from random streams keyed by ``key`` and
    ``i`` alone (:mod:`romanjax.kernels.binomial`), so any part of a frame, apportioned with
    its pixels' frame indices (as :func:`romanjax.apportion_frame` does), draws what the
    whole frame would, and the result is the same on every device count. On CPUs a numpy
    ``counts`` larger than one cache-sized chunk is apportioned by
    :func:`romanjax.apportion_frame`, one chunk per core (the same draws), and returned as a
    device array.

    The draws are factorised by resultant (module docstring: group totals, then the sum of
    the within-group read offsets by binomials with p = 1/2 or 1/n), one ``lax.scan`` over
    them; MA table 4 needs 25 binomial draws per pixel instead of romanisim's 43. Memory is
    the output and ~14 more ``[*pixels]`` buffers (the scan's state and the sampler's), so
    one call on a 4088x4088 frame of MA table 4 needs ~1.6 GB;
    ``romanjax.apportion_frame`` bounds it (chunks of a fixed size). The counts
    are held in int32 (exact up to 2e9); in float32 the binomial draws for totals above
    2**24 are made on float32-rounded counts and clamped, so electrons are conserved
    exactly.
    """
    check_pattern(pattern, "apportion_counts")
    counts = check_counts(counts, "apportion_counts")
    if math.prod(np.shape(counts)) > 2**32 - 1:
        raise ValueError("apportion_counts: at most 2**32 - 1 pixels per call "
                         f"(the random streams are keyed by a 32-bit pixel index), got "
                         f"{math.prod(np.shape(counts))}")
    if _platform.apportions_through_frames(key, counts, pattern.n_resultants):
        from ..host.frames import apportion_frame

        return jax.device_put(apportion_frame(key, counts, pattern))
    dtype = float_dtype(counts)
    return _apportion(key, jnp.asarray(counts), pattern, dtype)
