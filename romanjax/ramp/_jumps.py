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

All functions work on lists of per-resultant rows (each ``[m]``, the flattened pixels), so the
loops over the (static, short) resultant axis unroll at trace time and every operation is
elementwise over pixels.
"""

from __future__ import annotations

from functools import lru_cache

import jax.numpy as jnp
import numpy as np

from .._platform import materialise
from .._read_pattern import ReadPattern

__all__ = ["jump_constants", "threshold", "whole_ramp_trigger", "segment_jumps"]


def barrier(tree, flag):
    """Materialise intermediate results (a pytree of arrays): stops XLA from duplicating the
    unrolled O(n) forward/backward scans over the resultant axis into every consumer fusion
    (the sub-ramp fit and jump step compile to many times their operations without it).
    ``flag`` is a scalar bool that is False at run time but not provably so (see
    :func:`romanjax._platform.materialise`, which chooses the mechanism per platform). The
    identity for differentiation."""
    return materialise(tree, flag)


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
    rows : list of ``[m]`` arrays
        The n resultants [e].
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
    n = len(rows)
    dtype = rows[0].dtype
    c = {key: value.astype(dtype) for key, value in jump_constants(pattern).items()}
    span = float(pattern.tbar[-1] - pattern.tbar[0])
    corr = -alpha / jnp.asarray(span, dtype)
    limit = threshold(alpha, intercept, constant)
    limit2 = limit * limit * (1 - 1e-5)
    hit = limit <= 0

    def exceeds(difference, inv_dt, read, poisson):
        delta = difference * inv_dt - alpha
        var = read_var * read + alpha * poisson + corr
        return (delta > 0) & (delta * delta > limit2 * var)

    for k in (1, 2):
        for i in range(n - k):
            hit = hit | exceeds(rows[i + k] - rows[i], c[f"inv_dt{k}"][i], c[f"read{k}"][i],
                                c[f"poisson{k}"][i])  # fmt: skip
    return hit


def segment_jumps(rows, good, next_in, first, alpha, span, read_var, pattern, intercept,
                  constant):  # fmt: skip
    """Jumps found in every sub-ramp of a segmented ramp, as stcal's ``_fit_statistic``.

    Parameters
    ----------
    rows : list of n ``[m]`` arrays
        Resultants [e].
    good : list of n ``[m]`` bool
        Resultant is used (not flagged).
    next_in : list of n ``[m]`` bool
        Resultants ``i`` and ``i + 1`` are both good (same sub-ramp); False for the last.
    first : list of n ``[m]`` bool
        Resultant ``i`` is the first of its sub-ramp.
    alpha : list of n ``[m]``
        The slope of the sub-ramp each resultant belongs to [e/s].
    span : list of n ``[m]``
        ``tbar_e - tbar_s`` of that sub-ramp [s].
    read_var : ``[m]``
        Read noise squared [e**2].
    pattern : ReadPattern
    intercept, constant : float

    Returns
    -------
    list of n ``[m]`` bool: resultants newly flagged as jumps (``i*`` and ``i* + 1`` of every
    sub-ramp whose maximum statistic exceeds its threshold).
    """
    n = len(rows)
    dtype = rows[0].dtype
    c = {key: value.astype(dtype) for key, value in jump_constants(pattern).items()}
    nan = jnp.asarray(jnp.nan, dtype)
    safe_span = [jnp.where(s > 0, s, 1) for s in span]
    corr = [-a / s for a, s in zip(alpha, safe_span)]
    z1 = [
        _z(rows[i + 1] - rows[i], c["inv_dt1"][i], c["read1"][i], c["poisson1"][i], alpha[i],
           read_var, corr[i])
        for i in range(n - 1)
    ]  # fmt: skip
    stat = []
    double_ok = []
    for i in range(n - 2):
        z2 = _z(rows[i + 2] - rows[i], c["inv_dt2"][i], c["read2"][i], c["poisson2"][i],
                alpha[i], read_var, corr[i])  # fmt: skip
        stat.append(jnp.fmax(z1[i], z2))
        double_ok.append(next_in[i] & next_in[i + 1])
    flag = read_var[0] == -jnp.inf  # runtime False for barrier()
    z1, stat, double_ok = barrier((z1, stat, double_ok), flag)
    # starting value z1[e-1] and index e-1, broadcast backwards over the sub-ramp
    start = [None] * n
    start_index = [None] * n
    for i in range(n - 1, -1, -1):
        if i == n - 1:
            start[i] = jnp.full_like(rows[i], nan)
            start_index[i] = jnp.full(rows[i].shape, -1, jnp.int32)
            continue
        is_second_last = next_in[i] & ~next_in[i + 1]
        start[i] = jnp.where(is_second_last, z1[i], jnp.where(next_in[i], start[i + 1], nan))
        start_index[i] = jnp.where(
            is_second_last, i, jnp.where(next_in[i], start_index[i + 1], -1)
        )
    start, start_index = barrier((start, start_index), flag)
    # forward running max (strict '>', visiting s..e-2 in order) within each sub-ramp
    best = best_index = None
    bests, best_indices = [], []
    for i in range(n):
        if i == 0:
            best, best_index = start[0], start_index[0]
        else:
            best = jnp.where(first[i], start[i], best)
            best_index = jnp.where(first[i], start_index[i], best_index)
        if i < n - 2:
            update = double_ok[i] & (stat[i] > best)
            best = jnp.where(update, stat[i], best)
            best_index = jnp.where(update, i, best_index)
        bests.append(best)
        best_indices.append(best_index)
    bests, best_indices = barrier((bests, best_indices), flag)
    # decide at the last resultant of each sub-ramp, broadcast the jump index backwards
    flags = [None] * n
    jump_index = None
    for i in range(n - 1, -1, -1):
        last = good[i] & ~next_in[i]
        jump = last & (bests[i] > threshold(alpha[i], intercept, constant))
        here = jnp.where(jump, best_indices[i], -2)
        jump_index = here if i == n - 1 else jnp.where(next_in[i], jump_index, here)
        flags[i] = good[i] & ((jump_index == i) | (jump_index == i - 1))
    return flags
