"""Jump (cosmic-ray) statistics of stcal's ``ols_cas22`` (Sharma & Casertano 2024, PASP 136).

For a fitted sub-ramp ``[s, e]`` with slope ``alpha`` [e/s], the excess slopes of single
(``i, i+1``) and double (``i, i+2``) resultant differences are tested::

    z_k,i = (l_k,i - alpha) / sqrt((sigma**2 r_k,i + alpha v_k,i) / dt_k,i**2 + corr)

with ``l_k,i = (R_{i+k} - R_i) / dt_k,i``, ``dt_k,i = tbar_{i+k} - tbar_i``,
``r_k,i = 1/N_{i+k} + 1/N_i``, ``v_k,i = tau_{i+k} + tau_i - 2 min(tbar_i, tbar_{i+k})`` and the
covariance correction ``corr = -alpha / (tbar_e - tbar_s)``. The statistic of position ``i``
is ``max(z_1,i, z_2,i)`` (NaN-ignoring) for ``s <= i <= e - 2`` and ``z_1,e-1`` for
``i = e - 1``. As in stcal's ``_fit_statistic``, the running maximum starts from
``z_1,e-1`` and is replaced only by strictly larger values visited in order ``s, ..., e - 2``
(so a NaN starting value means "no jump"). A jump is declared when the maximum is strictly
greater than ``intercept - constant * log10(clip(alpha, 1, 1e4))``; resultants ``i*`` and
``i* + 1`` are then flagged and the two sides refitted.

All functions work on the rows of :mod:`romanjax.kernels.linalg` (one ``[m]`` row of the
flattened pixels per resultant: a list for short patterns, whose loops unroll at trace time,
an array with scans for long ones), so every operation is elementwise over pixels.
"""

from __future__ import annotations

from functools import lru_cache

import jax.numpy as jnp
import numpy as np

from .._platform import materialise
from .._read_pattern import ReadPattern
from .linalg import append_row, as_rows, form_of, recurrence, rmap, sum_rows, unzip_rows

__all__ = ["jump_constants", "threshold", "whole_ramp_trigger", "segment_jumps"]


@lru_cache(maxsize=64)
def jump_constants(pattern: ReadPattern) -> dict[str, np.ndarray]:
    """Per-pattern constants of the statistics (float64, host; stcal ``fill_fixed_values``).

    Returns
    -------
    dict with ``[n - k]`` arrays for k = 1 (single) and 2 (double differences):
    ``inv_dt{k}`` = 1 / dt [1/s], ``read{k}`` = r / dt**2 [1/s**2] and
    ``poisson{k}`` = v / dt**2 [1/s].
    """
    tbar, tau = pattern.tbar, pattern.tau
    nreads = pattern.n_reads.astype(np.float64)
    out = {}
    for k in (1, 2):
        dt = tbar[k:] - tbar[:-k]
        r = 1 / nreads[k:] + 1 / nreads[:-k]
        v = tau[k:] + tau[:-k] - 2 * np.minimum(tbar[k:], tbar[:-k])
        out[f"inv_dt{k}"] = 1 / dt
        out[f"read{k}"] = r / dt**2
        out[f"poisson{k}"] = v / dt**2
    return out


def threshold(alpha, intercept: float, constant: float):
    """Jump threshold ``intercept - constant * log10(clip(alpha, 1, 1e4))`` (alpha [e/s])."""
    return intercept - constant * jnp.log10(jnp.clip(alpha, 1.0, 1e4))


def _z(difference, inv_dt, read, poisson, alpha, read_var, corr):
    """One statistic: excess local slope over its standard deviation (NaN if var < 0)."""
    delta = difference * inv_dt - alpha
    return delta / jnp.sqrt(read_var * read + alpha * poisson + corr)


def whole_ramp_trigger(rows, alpha, read_var, pattern, intercept, constant):
    """Whether stcal might split the whole, unflagged ramp ``[0, n-1]`` (a cheap screen).

    Every pixel that stcal's statistic would split is flagged; the flagged pixels are then
    fitted and tested exactly (:func:`segment_jumps`), so the screen only has to be a
    superset. It avoids the 2n - 3 square roots and divisions of the statistics: with a
    positive threshold ``t``, ``z = delta / sqrt(V) > t`` holds only if ``delta > 0`` and
    ``delta**2 > t**2 V`` (also when ``V <= 0``, where z is inf or NaN: those pixels go to
    the exact test). The comparison carries a relative margin of 1e-5 so that rounding
    cannot drop a pixel whose exact statistic is just above the threshold; a NaN excess
    (NaN z, never a jump in stcal) is not flagged, and a threshold <= 0 flags every pixel.

    Parameters
    ----------
    rows : rows ``[n]`` of ``[m]``
        The resultants [e] (:func:`romanjax.kernels.linalg.as_rows`).
    alpha : ``[m]``
        Slope fitted to the whole ramp [e/s].
    read_var : ``[m]``
        Read noise squared [e**2].
    pattern : ReadPattern
    intercept, constant : float
        Threshold parameters.

    Returns
    -------
    ``[m]`` bool: the pixels to test exactly.
    """
    n = pattern.n_resultants
    dtype = rows[0].dtype
    c = {key: as_rows(jnp.asarray(value, dtype), n)
         for key, value in jump_constants(pattern).items()}  # fmt: skip
    span = float(pattern.tbar[-1] - pattern.tbar[0])
    corr = -alpha / jnp.asarray(span, dtype)
    limit = threshold(alpha, intercept, constant)
    limit2 = limit * limit * (1 - 1e-5)

    def exceeds(upper, lower, inv_dt, read, poisson):
        delta = (upper - lower) * inv_dt - alpha
        var = read_var * read + alpha * poisson + corr
        return ((delta > 0) & (delta * delta > limit2 * var)).astype(jnp.int32)

    hits = limit <= 0
    for k in (1, 2):
        if n > k:
            over = rmap(exceeds, rows[k:], rows[:-k], c[f"inv_dt{k}"], c[f"read{k}"],
                        c[f"poisson{k}"])  # fmt: skip
            hits = hits | (sum_rows(over) > 0)
    return hits


def segment_jumps(rows, good, next_in, first, alpha, span, read_var, pattern, intercept,
                  constant):  # fmt: skip
    """Jumps found in every sub-ramp of a segmented ramp, as stcal's ``_fit_statistic``.

    Parameters
    ----------
    rows : rows ``[n]`` of ``[m]``
        Resultants [e].
    good : rows ``[n]`` of ``[m]`` bool
        Resultant is used (not flagged).
    next_in : rows ``[n]`` of ``[m]`` bool
        Resultants ``i`` and ``i + 1`` are both good (same sub-ramp); False for the last.
    first : rows ``[n]`` of ``[m]`` bool
        Resultant ``i`` is the first of its sub-ramp.
    alpha : rows ``[n]`` of ``[m]``
        The slope of the sub-ramp each resultant belongs to [e/s].
    span : rows ``[n]`` of ``[m]``
        ``tbar_e - tbar_s`` of that sub-ramp [s].
    read_var : ``[m]``
        Read noise squared [e**2].
    pattern : ReadPattern
    intercept, constant : float

    Returns
    -------
    rows ``[n]`` of ``[m]`` bool: resultants newly flagged as jumps (``i*`` and ``i* + 1`` of every
    sub-ramp whose maximum statistic exceeds its threshold).
    """
    n = pattern.n_resultants
    form = form_of(rows, n)  # constants in the form of ``rows``
    dtype = rows[0].dtype
    c = {key: as_rows(jnp.asarray(value, dtype), form)
         for key, value in jump_constants(pattern).items()}  # fmt: skip
    nan = jnp.asarray(jnp.nan, dtype)
    corr = rmap(lambda a, s: -a / jnp.where(s > 0, s, 1), alpha, span)
    z1 = rmap(lambda hi, lo, inv_dt, read, poisson, a, cr: _z(hi - lo, inv_dt, read, poisson, a,
                                                              read_var, cr),
              rows[1:], rows[:-1], c["inv_dt1"], c["read1"], c["poisson1"], alpha[:-1],
              corr[:-1])  # fmt: skip

    def statistic(hi, lo, inv_dt, read, poisson, a, cr, single, nxt, nxt2):
        z2 = _z(hi - lo, inv_dt, read, poisson, a, read_var, cr)
        return jnp.fmax(single, z2), nxt & nxt2

    stat, double_ok = unzip_rows(rmap(statistic, rows[2:], rows[:-2], c["inv_dt2"], c["read2"],
                                  c["poisson2"], alpha[:-2], corr[:-2], z1[:-1], next_in[:-2],
                                  next_in[1:-1]), 2)  # fmt: skip
    flag = read_var[0] == -jnp.inf  # False at run time, not provably so (materialise)
    z1, stat, double_ok = materialise((z1, stat, double_ok), flag)
    positions = as_rows(np.arange(n, dtype=np.int32), form)
    no_start = (jnp.full_like(rows[0], nan), jnp.full(rows[0].shape, -1, jnp.int32))

    # starting value z1[e-1] and index e-1, broadcast backwards over the sub-ramp
    def to_start(carry, row):
        nxt, nxt_next, single, i = row
        is_second_last = nxt & ~nxt_next
        carry = (jnp.where(is_second_last, single, jnp.where(nxt, carry[0], nan)),
                 jnp.where(is_second_last, i, jnp.where(nxt, carry[1], -1)))  # fmt: skip
        return carry, carry

    _, (start, start_index) = recurrence(to_start, no_start,
                                         (next_in[:-1], next_in[1:], z1, positions[:-1]),
                                         reverse=True)  # fmt: skip
    start = append_row(start, no_start[0])
    start_index = append_row(start_index, no_start[1])
    start, start_index = materialise((start, start_index), flag)

    # forward running max (strict '>', visiting s..e-2 in order) within each sub-ramp; the
    # statistics stop two resultants before the end
    nan_row = jnp.full_like(rows[0], nan)
    stat = append_row(append_row(stat, nan_row), nan_row)
    no = jnp.zeros_like(rows[0], bool)
    double_ok = append_row(append_row(double_ok, no), no)

    def running_max(carry, row):
        fst, s0, s0_index, ok, st, i = row
        best = jnp.where(fst, s0, carry[0])
        best_index = jnp.where(fst, s0_index, carry[1])
        update = ok & (st > best)
        carry = (jnp.where(update, st, best), jnp.where(update, i, best_index))
        return carry, carry

    _, (bests, best_indices) = recurrence(
        running_max, (start[0], start_index[0]),
        (first, start, start_index, double_ok, stat, positions))  # fmt: skip
    bests, best_indices = materialise((bests, best_indices), flag)

    # decide at the last resultant of each sub-ramp, broadcast the jump index backwards
    def decide(jump_index, row):
        g, nxt, best, best_i, a = row
        jump = g & ~nxt & (best > threshold(a, intercept, constant))
        here = jnp.where(jump, best_i, -2)
        jump_index = jnp.where(nxt, jump_index, here)
        return jump_index, jump_index

    _, jump_index = recurrence(decide, jnp.full(rows[0].shape, -2, jnp.int32),
                               (good, next_in, bests, best_indices, alpha), reverse=True)
    # every output row compares with the jump index: without materialising it, XLA writes the
    # backward recurrence into each of them (quadratic in the resultants)
    jump_index = materialise(jump_index, flag)
    return rmap(lambda g, ji, i: g & ((ji == i) | (ji == i - 1)), good, jump_index, positions)

