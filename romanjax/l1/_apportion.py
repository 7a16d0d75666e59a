"""Exact apportionment of a fixed number of electrons over the reads of a ramp.

Given the total number of electrons ``K`` a pixel collects by the last read, the photon
arrival times are independent and uniform over ``(0, T]`` (a Poisson process conditioned on
its total). The numbers of electrons arriving between consecutive reads are therefore
multinomial with probabilities ``dt_j / T``. We draw them as romanisim does, by sequential
binomials ``c_j ~ Binomial(K - sum_{l<j} c_l, dt_j / (T - t_{j-1}))`` (the last one takes
what remains), accumulate ``C_j = sum_{l<=j} c_l`` and average the reads of each resultant:
``R_i = mean_{j in resultant i} C_j``. Skipped reads (MA table 109) only lengthen the next
interval. This is the exact joint distribution of romanisim's
``apportion_counts_to_resultants`` (Casertano 2022; romanisim ``l1.py``), so
``E[R_i] = K tbar_i / T`` and, for Poisson totals, ``Var R_i = f tau_i`` and
``Cov(R_i, R_j) = f tbar_i`` (i < j).
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from .._read_pattern import ReadPattern
from ._binomial import binomial as _binomial

__all__ = ["apportion_counts", "read_probabilities", "check_counts", "MAX_COUNTS"]

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


def check_counts(counts, function: str):
    """Host-side check that concrete ``counts`` are non-negative integers (no-op if traced).

    Returns ``counts`` as an array: integer dtypes unchanged, integer-valued floats as int32.
    """
    if isinstance(counts, jax.core.Tracer):
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


def _float_dtype(counts) -> jnp.dtype:
    dtype = jnp.asarray(counts).dtype
    if jnp.issubdtype(dtype, jnp.floating):
        return jnp.dtype(jax.dtypes.canonicalize_dtype(dtype))
    return jnp.dtype(jax.dtypes.canonicalize_dtype(jnp.float64))


def binomial(key, n, p, dtype):
    """Exact Binomial(n, p) draws for int32 ``n`` ``[npix]`` and a scalar ``p``.

    See :mod:`._binomial`: inversion for means below 10, BTRS rejection with a float32-exact
    acceptance test otherwise, rejected draws compacted and redrawn. Result in ``[0, n]``,
    so electrons are conserved exactly."""
    return _binomial(key, n, p, dtype)


def read_scan(key, counts, pattern: ReadPattern, dtype, per_read=None, carry0=None):
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
        draw = binomial(jax.random.fold_in(key, j), remaining, p, dtype)
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


@partial(jax.jit, static_argnames=("pattern", "dtype"))
def _apportion(key, counts, pattern, dtype):
    shape = counts.shape
    flat = jnp.clip(counts.reshape(-1), 0, MAX_COUNTS)
    flat = jnp.round(flat).astype(jnp.int32) if jnp.issubdtype(flat.dtype, jnp.floating) else (
        flat.astype(jnp.int32))
    resultants, _, _ = read_scan(key, flat, pattern, dtype)
    return resultants.reshape((pattern.n_resultants,) + shape)


def apportion_counts(key, counts, pattern: ReadPattern):
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
        is skipped when ``counts`` is traced, e.g. under the caller's ``jit``).

    Notes
    -----
    Draws are made read by read in a ``lax.scan``; memory is a few ``[*pixels]`` int32/float
    buffers plus the output, so a 4088x4088 frame needs about 1 GB. The counts are held in
    int32 (exact up to 2e9); in float32 the binomial draws for totals above 2**24 are made
    on float32-rounded counts and clamped, so electrons are conserved exactly.
    """
    from ..ramp._common import check_pattern

    check_pattern(pattern, "apportion_counts")
    counts = check_counts(counts, "apportion_counts")
    dtype = _float_dtype(counts)
    return _apportion(key, jnp.asarray(counts), pattern, dtype)
