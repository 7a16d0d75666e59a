"""Casertano (2022) ramp fitting with sub-ramps between flagged resultants and optional jump
detection (Sharma & Casertano 2024), as romanisim's ``fit_ramps_casertano`` and stcal's
``ols_cas22``.

Per sub-ramp ``[s, e]`` of at least two resultants (Casertano 2022, Roman-STScI-000394):

- signal-to-noise ``snr = S / sqrt(sigma**2 + S)`` with ``S = max(R_e - R_s, 0)`` [e];
- exponent ``P`` from Table 2 (lower edges inclusive): 0, 0.4, 1, 3, 6, 10 for ``snr`` below
  5, 10, 20, 50, 100 and above;
- weights (Eq. 45) ``w_i = (1 + P) N_i / (1 + P N_i) |(tbar_i - tbar_mid) / t_scale|**P``
  with ``tbar_mid = (tbar_s + tbar_e) / 2``, ``t_scale = (tbar_e - tbar_s) / 2`` and 0**0 = 1;
- ``K_i = (F0 tbar_i - F1) w_i / D`` with ``Fk = sum w tbar**k``, ``D = F2 F0 - F1**2``
  (Eqs. 35-37); slope ``sum K_i R_i`` (Eq. 38); read variance ``sigma**2 sum K_i**2 / N_i``
  (Eq. 39); Poisson coefficient ``V_S = sum K_i**2 tau_i + 2 sum_{i<j} K_i K_j tbar_i``
  (Eq. 40).

Sub-ramps are combined with weights ``1 / V_R`` (clipped at 1e10, romanisim); the Poisson
variance is the combined coefficient times ``max(slope, 0)``.

Implementation: the sums are evaluated in centred, scaled time ``(tbar_i - tbar_mid) /
t_scale`` and resultants relative to ``R_s`` (exact rewritings, since ``sum K = 0`` and
``sum K tbar = 1``), so float32 keeps ~1e-7 relative accuracy. Every pixel first gets the
whole-ramp fit from six per-pattern weight vectors precomputed on the host (one per ``P``);
only pixels with flagged resultants, or whose whole ramp fails the jump test, are refitted
with the general sub-ramp kernel (sub-ramps as masks over the resultant axis, segment sums
as forward/backward recurrences over the rows of :mod:`romanjax.kernels.linalg`,
materialised between stages by :func:`romanjax._platform.materialise`) and, with jump
detection, iterated until no sub-ramp splits. The candidates are compacted (in pixel order)
and, on CPUs, refitted ``BLOCK_PIXELS`` at a time (:func:`_refit_in_blocks`); elsewhere in
one work queue whose loop runs once per jump split (:func:`_refit_queue`).
"""

from __future__ import annotations

from functools import lru_cache, partial

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from .. import _platform
from .. import dq as dqflags
from .._platform import materialise
from .._read_pattern import ReadPattern
from .._validate import prepare_inputs
from ..kernels.jumps import segment_jumps, whole_ramp_trigger
from ..kernels.linalg import (
    UNROLL_LIMIT,
    append_row,
    as_rows,
    form_of,
    prepend_row,
    recurrence,
    rmap,
    stack_rows,
    sum_rows,
    unzip_rows,
)
from ..kernels.queue import compact as _compact
from ._common import (
    RampFit,
    exclude_non_finite,
    flag_words,
    mark_left_out,
    pack_flags,
    queue_size,
    refit_batch,
    refit_capacity,
    refit_if_non_finite,
    through_frames,
    unfitted_flags,
    unpack_jumps,
)

__all__ = ["fit_ramps_casertano", "casertano_weights", "P_EDGES", "P_VALUES"]

#: Lower edges of the signal-to-noise bins of Casertano (2022) Table 2.
P_EDGES = (5.0, 10.0, 20.0, 50.0, 100.0)
#: Weight exponents of Casertano (2022) Table 2, one per bin (below 5, 5-10, ..., >= 100).
P_VALUES = (0.0, 0.4, 1.0, 3.0, 6.0, 10.0)
#: Largest segment weight 1 / V_R [1/(e/s)**2] (romanisim clips at 1e10).
MAX_WEIGHT = 1e10


def casertano_weights(tbar, tau, n_reads, power):
    """Casertano (2022) coefficients of one ramp (float64, host).

    Parameters
    ----------
    tbar, tau : ``[k]``
        Mean and variance-based times of the sub-ramp's resultants [s].
    n_reads : ``[k]``
        Reads per resultant.
    power : float
        Exponent P of Table 2.

    Returns
    -------
    k : ``[k]``
        Slope weights K_i [1/s] (Eq. 37).
    read : float
        ``sum K_i**2 / N_i`` [1/s**2]: V_R = read_noise**2 * read (Eq. 39).
    poisson : float
        V_S [s/s**2] (Eq. 40): the Poisson variance is V_S times the slope.
    """
    tbar = np.asarray(tbar, np.float64)
    tau = np.asarray(tau, np.float64)
    n_reads = np.asarray(n_reads, np.float64)
    half = (tbar[-1] - tbar[0]) / 2
    half = 1.0 if half == 0 else half
    v = (tbar - (tbar[0] + tbar[-1]) / 2) / half
    u = np.abs(v)
    u[u < 64 * np.finfo(np.float64).eps] = 0  # at the midpoint up to rounding
    upow = np.ones_like(u) if power == 0 else u**power
    w = (1 + power) * n_reads / (1 + power * n_reads) * upow
    f0, f1, f2 = w.sum(), (w * v).sum(), (w * v * v).sum()
    det = f2 * f0 - f1**2
    k = (f0 * v - f1) * w / (det * half)
    read = float(np.sum(k**2 / n_reads))
    t0 = tbar[0]
    poisson = float(np.sum(k**2 * (tau - t0)) + 2 * sum(
        k[i] * k[j] * (tbar[i] - t0) for i in range(len(k)) for j in range(i + 1, len(k))
    ))  # fmt: skip
    return k, read, poisson


@lru_cache(maxsize=64)
def _constants(pattern: ReadPattern):
    """Per-pattern host constants: whole-ramp K, V_R/sigma**2 and V_S for each P, and the
    weight prefactors (1 + P) N_i / (1 + P N_i)."""
    n = pattern.n_resultants
    nreads = pattern.n_reads.astype(np.float64)
    prefactor = np.array([(1 + p) * nreads / (1 + p * nreads) for p in P_VALUES])  # [6, n]
    if n >= 2:
        whole = [casertano_weights(pattern.tbar, pattern.tau, nreads, p) for p in P_VALUES]
        k = np.array([w[0] for w in whole])
        read = np.array([w[1] for w in whole])
        poisson = np.array([w[2] for w in whole])
    else:
        k, read, poisson = np.zeros((6, n)), np.zeros(6), np.zeros(6)
    return {"k": k, "read": read, "poisson": poisson, "prefactor": prefactor}


def _power_masks(signal, read_var):
    """``snr >= edge`` for each Table 2 edge, with ``snr = S / sqrt(sigma**2 + S)``.

    Compared as ``S**2 >= edge**2 (sigma**2 + S)`` (no square root, S >= 0). When
    ``sigma**2 + S == 0`` the snr is 0/0 = NaN, which romanisim's and stcal's table lookup
    turn into the last bin (P = 10); that is reproduced here.
    """
    denominator = read_var + signal
    undefined = denominator == 0
    s2 = signal * signal
    return [undefined | (s2 >= edge * edge * denominator) for edge in P_EDGES]


def _by_bin(masks, values):
    """``values[0]`` where no mask holds, else ``values[j+1]`` for the last true masks[j]
    (the masks are nested: masks[j+1] implies masks[j])."""
    out = values[0]
    for mask, value in zip(masks, values[1:]):
        out = jnp.where(mask, value, out)
    return out


def _whole_ramp(rows, read_var, pattern):
    """Whole-ramp Casertano fit of every pixel (no flags): slope [e/s], V_R [(e/s)**2],
    V_S [e/s]. ``rows``: rows ``[n]`` of resultants ``[m]`` [e]; ``read_var``: ``[m]``
    [e**2]."""
    n = pattern.n_resultants
    dtype = rows[0].dtype
    const = _constants(pattern)
    masks = _power_masks(jnp.maximum(rows[-1] - rows[0], 0), read_var)
    k_rows = [as_rows(jnp.asarray(const["k"][j, 1:], dtype), n) for j in range(len(P_VALUES))]

    def term(row, *k_by_bin):
        return _by_bin(masks, k_by_bin) * (row - rows[0])

    slope = sum_rows(rmap(term, rows[1:], *k_rows))
    read = _by_bin(masks, [jnp.asarray(v, dtype) for v in const["read"]])
    poisson = _by_bin(masks, [jnp.asarray(v, dtype) for v in const["poisson"]])
    return slope, read_var * read, poisson


def _combine(weight, slope_sum, read_sum, poisson_sum):
    total = weight
    ok = total > 0
    safe = jnp.where(ok, total, 1)
    slope = jnp.where(ok, slope_sum / safe, 0)
    var_read = jnp.where(ok, read_sum / (safe * safe), 0)
    coeff = jnp.where(ok, poisson_sum / (safe * safe), 0)
    return slope, var_read, coeff, ok


def _segments(rows, good, read_var, pattern, *, want_coefficients=False):
    """Casertano fits of every sub-ramp (maximal run of good resultants) and their
    inverse-read-variance combination, with sub-ramps as masks over the resultant axis.

    Parameters
    ----------
    rows : rows ``[n]`` of ``[m]``
        Resultants [e] (:func:`romanjax.kernels.linalg.as_rows`).
    good : rows ``[n]`` of ``[m]`` bool
        Resultant is used.
    read_var : ``[m]``
        Read noise squared [e**2].
    pattern : ReadPattern
    want_coefficients : bool
        Also return the per-resultant coefficients of the combined slope (for derivatives).

    Returns
    -------
    dict with the combined ``slope`` [e/s], ``var_read`` [(e/s)**2], ``coeff`` (V_S of the
    combination) and ``fitted`` (a usable sub-ramp exists), all ``[m]``; the per-resultant
    rows ``next_in``, ``first``, ``alpha`` (slope of the resultant's sub-ramp) and ``span``
    (its tbar_e - tbar_s) for the jump statistics; and ``coefficients`` (rows ``[n]``) if
    asked.
    """
    n = form_of(rows, pattern.n_resultants)  # the constants take the form of ``rows``
    dtype = rows[0].dtype
    const = _constants(pattern)
    tbar = as_rows(jnp.asarray(pattern.tbar, dtype), n)
    tau = as_rows(jnp.asarray(pattern.tau, dtype), n)
    nreads = as_rows(jnp.asarray(pattern.n_reads, dtype), n)
    prefactor = [as_rows(jnp.asarray(const["prefactor"][j], dtype), n)
                 for j in range(len(P_VALUES))]  # fmt: skip
    no = jnp.zeros_like(good[0])
    zero = jnp.zeros_like(rows[0])
    # runtime False: a sub-ramp's (finite or NaN) read variance is never -inf
    flag = read_var[0] == -jnp.inf
    cont = prepend_row(no, rmap(jnp.logical_and, good[1:], good[:-1]))
    next_in = append_row(cont[1:], no)
    first = rmap(lambda g, c: g & ~c, good, cont)
    cont, next_in, first = materialise((cont, next_in, first), flag)

    # start time/value forward, end time/value backward, within each run
    def carry_over(carry, row):  # keep the run's value while linked, else take this one
        linked, t, r = row
        carry = (jnp.where(linked, carry[0], t), jnp.where(linked, carry[1], r))
        return carry, carry

    _, (t_start, r_start) = recurrence(carry_over, (zero, zero), (cont, tbar, rows))
    _, (t_end, r_end) = recurrence(carry_over, (zero, zero), (next_in, tbar, rows),
                                   reverse=True)  # fmt: skip
    t_start, r_start, t_end, r_end = materialise((t_start, r_start, t_end, r_end), flag)

    # weights (Eq. 45) in centred, scaled time v in [-1, 1]
    def weights(g, t, ts, te, rs, re, *pre):
        span = te - ts
        h = jnp.where(span > 0, span / 2, 1)
        vi = (t - (ts + te) / 2) / h
        # a resultant at the midpoint to rounding gets |v| = 0 exactly (0**0.4 = 0, not the
        # ~1e-3 that float32 rounding of tbar_mid would give)
        u = jnp.abs(vi)
        u = jnp.where(u < 64 * jnp.finfo(dtype).eps, 0, u)
        masks = _power_masks(jnp.maximum(re - rs, 0), read_var)
        u2 = u * u
        u3 = u2 * u
        u6 = u3 * u3
        upow = _by_bin(
            masks, [jnp.ones_like(u), jnp.exp(0.4 * jnp.log(u)), u, u3, u6, u6 * u3 * u]
        )
        return jnp.where(g & (span > 0), _by_bin(masks, pre) * upow, 0), vi, h

    wvh = rmap(weights, good, tbar, t_start, t_end, r_start, r_end, *prefactor)
    w, v, half = unzip_rows(wvh, 3)
    w, v, half = materialise((w, v, half), flag)

    # segment sums F0, F1, F2: forward accumulation, backward broadcast from the run's end
    def accumulate(carry, row):
        c, wi, vi = row
        carry = tuple(t + jnp.where(c, a, 0) for t, a in zip((wi, wi * vi, wi * vi * vi),
                                                              carry))  # fmt: skip
        return carry, carry

    def broadcast(carry, row):
        nxt, *own = row
        carry = tuple(jnp.where(nxt, b, a) for a, b in zip(own, carry))
        return carry, carry

    _, sums = recurrence(accumulate, (zero, zero, zero), (cont, w, v))
    sums = materialise(sums, flag)
    _, sums = recurrence(broadcast, (zero, zero, zero), (next_in, *sums), reverse=True)
    sums = materialise(sums, flag)

    # K (Eq. 37)
    def coefficient(f0, f1, f2, vi, wi, h):
        det = f2 * f0 - f1 * f1
        ok = det != 0
        return jnp.where(ok, (f0 * vi - f1) * wi / (jnp.where(ok, det, 1) * h), 0), ok

    k, ok = unzip_rows(rmap(coefficient, *sums, v, w, half), 2)
    k, ok = materialise((k, ok), flag)

    # per-run accumulations of slope, read and Poisson coefficients
    def per_run(carry, row):
        slope_acc, read_acc, poisson_acc, cross = carry
        c, ki, t, ta, ts, ri, rs, n_i = row
        prev_cross = jnp.where(c, cross, 0)
        slope_acc = ki * (ri - rs) + jnp.where(c, slope_acc, 0)
        read_acc = ki * ki / n_i + jnp.where(c, read_acc, 0)
        poisson_acc = (ki * ki * (ta - ts) + 2 * ki * prev_cross
                       + jnp.where(c, poisson_acc, 0))  # fmt: skip
        cross = prev_cross + ki * (t - ts)
        return (slope_acc, read_acc, poisson_acc, cross), (slope_acc, read_acc, poisson_acc)

    _, accumulated = recurrence(per_run, (zero, zero, zero, zero),
                                (cont, k, tbar, tau, t_start, rows, r_start, nreads))
    slope_acc, read_acc, poisson_acc = materialise(accumulated, flag)

    # combine at the last resultant of each run (segments of >= 2 resultants, D != 0)
    def segment(g, nxt, oki, ts, te, s_acc, r_acc, p_acc):
        last = g & ~nxt & oki & (te > ts)
        seg_read = read_var * r_acc
        weight = jnp.where(last, 1 / jnp.maximum(seg_read, 1 / MAX_WEIGHT), 0)
        return weight, weight * s_acc, weight * weight * seg_read, weight * weight * p_acc

    terms = unzip_rows(rmap(segment, good, next_in, ok, t_start, t_end, slope_acc, read_acc,
                        poisson_acc), 4)  # fmt: skip
    total = tuple(sum_rows(t) for t in terms)
    slope, var_read, coeff, fitted = _combine(*total)

    # slope of each resultant's sub-ramp, broadcast backwards from the run's end
    def from_end(carry, row):
        nxt, own = row
        carry = jnp.where(nxt, carry, own)
        return carry, carry

    _, alpha = recurrence(from_end, zero, (next_in, slope_acc), reverse=True)
    span = rmap(jnp.subtract, t_end, t_start)
    alpha, span = materialise((alpha, span), flag)
    out = {
        "slope": slope, "var_read": var_read, "coeff": coeff, "fitted": fitted,
        "next_in": next_in, "first": first, "alpha": alpha,
        "span": span,
    }  # fmt: skip
    if want_coefficients:
        safe_total = jnp.where(fitted, total[0], 1)
        _, seg_weight = recurrence(from_end, zero, (next_in, terms[0]), reverse=True)
        # slope = sum_runs W_run sum_i K_i (R_i - R_s) / sum W = sum_i c_i R_i (sum K = 0)
        out["coefficients"] = rmap(
            lambda g, sw, ki: jnp.where(fitted & g, sw * ki / safe_total, 0),
            good, seg_weight, k)  # fmt: skip
    return out



def _sub_ramp_trip(rows, base, jumps, read_var, pattern, detect_jumps, intercept, constant):
    """One trip of the jump iteration: the sub-ramp fit of the resultants ``base`` (rows
    ``[n]`` of ``[b]`` bool) less ``jumps`` (``[n, b]`` bool, the jumps found so far), and
    the jumps that fit shows (``[n, b]``, :func:`~romanjax.kernels.jumps.segment_jumps`;
    None without ``detect_jumps``). ``rows`` (the resultants) set the row form.

    Returns ``(slope, V_R, V_S coefficient, fitted)`` (all ``[b]``) and the new jumps.
    """
    use = rmap(lambda b, j: b & ~j, base, as_rows(jumps, form_of(rows, pattern.n_resultants)))
    seg = _segments(rows, use, read_var, pattern)
    result = (seg["slope"], seg["var_read"], seg["coeff"], seg["fitted"])
    if not detect_jumps:
        return result, None
    new = segment_jumps(rows, use, seg["next_in"], seg["first"], seg["alpha"], seg["span"],
                        read_var, pattern, intercept, constant)  # fmt: skip
    return result, stack_rows(new)


def _general(resultants, good, read_var, pattern, detect_jumps, intercept, constant,
             form=None):  # fmt: skip
    """Sub-ramp fit of ``[n, b]`` pixels with optional iterated jump detection, in the row
    form of ``form`` resultants (default: the pattern's own; see
    :func:`romanjax.kernels.linalg.as_rows`).

    Returns slope, V_R, V_S coefficient, fitted ``[b]`` and the jump flags ``[n, b]``.
    """
    n = pattern.n_resultants
    form = n if form is None else form
    rows = as_rows(resultants, form)
    base = as_rows(good, form)
    no_jumps = jnp.zeros_like(good)

    def trip(jumps):
        return _sub_ramp_trip(rows, base, jumps, read_var, pattern, detect_jumps, intercept,
                              constant)  # fmt: skip

    if not detect_jumps:
        return (*trip(no_jumps)[0], no_jumps)

    def body(state):
        jumps, _, trips, _ = state
        result, new = trip(jumps)
        return jumps | new, jnp.any(new), trips + 1, result

    def cond(state):  # a pixel's jumps only grow, so the trip limit never binds
        _, changed, trips, _ = state
        return changed & (trips <= n)

    zeros = jnp.zeros_like(rows[0])
    init = (no_jumps, jnp.array(True), jnp.array(0, jnp.int32),
            (zeros, zeros, zeros, jnp.zeros(zeros.shape, bool)))  # fmt: skip
    jumps, _, _, result = jax.lax.while_loop(cond, body, init)
    return (*result, jumps)


#: Candidate pixels refitted per block (one compiled block). Each block iterates until its
#: own pixels stop splitting, at a cost proportional to the block, so with the usual ~1-3%
#: candidates a small block wastes little on padding, while with every pixel a candidate
#: small blocks cost only a little more per pixel than large ones.
BLOCK_PIXELS = 512


def _block_size(m: int) -> int:
    """Static number of candidate pixels per block for ``m`` pixels."""
    return int(max(1, min(m, BLOCK_PIXELS)))


#: Row form (:func:`romanjax.kernels.linalg.as_rows`) of the CPU refit of device-data pixels
#: with a non-finite resultant: the array form, with loops, for every pattern. On CPUs that
#: refit runs only on the blocks of the batch that hold such pixels
#: (:func:`~._common.refit_batch`, usually none), and written out its program would be most
#: of the fitter's compile time. Elsewhere the whole batch is refitted on every call,
#: written out up to ``UNROLL_LIMIT``.
CPU_REFIT_FORM = UNROLL_LIMIT + 1


def _fit_flat(resultants, dq, read_noise, pattern, has_dq, detect_jumps, intercept, constant):
    """Fit ``[n, m]`` resultants; returns slope, V_R, V_P (all ``[m]``) and the packed flags
    ``[flag_words(n), m]`` (:func:`~._common.pack_flags`: the jumps found and the unfitted bit).

    Pixels with a flagged resultant or a whole-ramp jump trigger are the candidates: they are
    compacted to the front and refitted with sub-ramps in blocks, the others keep the
    whole-ramp fit (and no flags).
    """
    n, m = resultants.shape
    read_var = read_noise * read_noise
    rows = as_rows(resultants, n)
    words = jnp.zeros((flag_words(n), m), jnp.uint32)
    if n >= 2:
        slope, var_read, coeff = _whole_ramp(rows, read_var, pattern)
    else:
        slope = var_read = coeff = jnp.zeros((m,), resultants.dtype)
        words = pack_flags([jnp.zeros((m,), bool)] * n, jnp.ones((m,), bool))
    bad = (dq & dqflags.DO_NOT_USE_IN_FIT) != 0
    candidates = None
    if has_dq:
        candidates = jnp.any(bad, axis=0)
    if detect_jumps and n >= 3:
        trigger = whole_ramp_trigger(rows, slope, read_var, pattern, intercept, constant)
        candidates = trigger if candidates is None else candidates | trigger
    if candidates is not None and n >= 2 and m > 0:
        config = dict(pattern=pattern, detect_jumps=detect_jumps, intercept=intercept,
                      constant=constant)  # fmt: skip
        slope, var_read, coeff, words = _platform.by_platform(
            candidates, slope, var_read, coeff, words, resultants, bad, read_var,
            cpu=partial(_refit_in_blocks, **config), default=partial(_refit_queue, **config))
    var_poisson = coeff * jnp.maximum(slope, 0)
    return slope, var_read, var_poisson, words


def _store(state, index, fit, flags):
    """Scatter one batch's refit into the per-pixel ``state`` (slope, V_R, V_S coefficient
    ``[m]``, flag words ``[flag_words(n), m]``) at ``index`` (``[b]``; entries ``m`` are
    padding and dropped). ``fit`` is the batch's (slope, V_R, coefficient), ``flags`` its
    packed words ``[flag_words(n), b]``."""
    slope, var_read, coeff, words = state
    s, vr, c = fit
    return (slope.at[index].set(s, mode="drop"), var_read.at[index].set(vr, mode="drop"),
            coeff.at[index].set(c, mode="drop"), words.at[:, index].set(flags, mode="drop"))


def _refit_in_blocks(candidates, slope, var_read, coeff, words, resultants, bad, read_var, *,
                     pattern, detect_jumps, intercept, constant):  # fmt: skip
    """The candidate refit on CPUs: the candidates compacted (in pixel order) and refitted
    :data:`BLOCK_PIXELS` at a time, each block iterating the jump search until its own pixels
    stop splitting (:func:`_general`). Blocks small enough to stay in cache are what makes
    this fastest on a CPU; a loop over them would cost one host round trip per block and
    per trip on an accelerator (:func:`_refit_queue` instead).

    Takes and returns the whole-ramp ``slope, var_read, coeff`` ``[m]`` and ``words``
    ``[flag_words(n), m]``, updated at the candidates; ``bad`` (``[n, m]``) marks the
    resultants left out of every fit (flagged or non-finite)."""
    n, m = resultants.shape
    block = _block_size(m)
    n_blocks = -(-m // block)
    # candidate indices first (in pixel order), padded with m (dropped on scatter)
    index = _compact(candidates, n_blocks * block)
    count = jnp.sum(candidates, dtype=jnp.int32)

    def body(b, state):
        idx = jax.lax.dynamic_slice(index, (b * block,), (block,))
        take = jnp.minimum(idx, m - 1)
        good = ~bad[:, take]
        s, vr, c, f, j = _general(resultants[:, take], good, read_var[take],
                                  pattern, detect_jumps, intercept, constant)  # fmt: skip
        return _store(state, idx, (s, vr, c), pack_flags(j, ~f))

    state = (slope, var_read, coeff, words)
    return jax.lax.fori_loop(0, (count + block - 1) // block, body, state)


def _refit_queue(candidates, slope, var_read, coeff, words, resultants, bad, read_var, *,
                 pattern, detect_jumps, intercept, constant):  # fmt: skip
    """The candidate refit off the CPU, as a work queue in one ``lax.while_loop``: every
    trip compacts the pixels still to fit into one batch of :func:`~._common.queue_size`
    pixels, makes one trip of the jump iteration on them (:func:`_sub_ramp_trip`, the jumps
    found so far read back from ``words``) and keeps in the queue only those that just
    split (and those the batch could not hold). The loop so runs once per jump split (and
    per full batch), not once per block of candidates; its per-pixel results are those of
    :func:`_refit_in_blocks`. A pixel leaves the queue when a trip adds no jump, and its
    jumps only grow, so it takes at most n + 1 trips. Without jump detection every pixel
    leaves after its first trip, and no jumps are read back."""
    n, m = resultants.shape
    size = queue_size(m)

    def body(state):
        *fits, active = state
        index = _compact(active, size)
        take = jnp.minimum(index, m - 1)
        if detect_jumps:
            jumps = jnp.stack(unpack_jumps(fits[3][:, take], n))
        else:
            jumps = jnp.zeros((n, size), bool)
        good = ~bad[:, take]
        (s, vr, c, f), new = _sub_ramp_trip(
            as_rows(resultants[:, take], n), as_rows(good, n), jumps, read_var[take], pattern,
            detect_jumps, intercept, constant)  # fmt: skip
        again = jnp.zeros((size,), bool)  # without jump detection: one trip per pixel
        if detect_jumps:
            jumps, again = jumps | new, jnp.any(new, axis=0)
        fits = _store(fits, index, (s, vr, c), pack_flags(jumps, ~f))
        return (*fits, active.at[index].set(again, mode="drop"))

    state = (slope, var_read, coeff, words, candidates)
    return jax.lax.while_loop(lambda state: jnp.any(state[-1]), body, state)[:4]


def _coefficients(resultants, dq, words, read_noise, pattern):
    """Per-resultant coefficients ``c`` of the final slope (``slope = sum_i c_i R_i``) and the
    combined V_S, from the input flags and the jumps found (derivative pass)."""
    jumps = jnp.stack(unpack_jumps(words, resultants.shape[0]))
    good = ((dq & dqflags.DO_NOT_USE_IN_FIT) == 0) & ~jumps
    n = resultants.shape[0]
    seg = _segments(as_rows(resultants, n), as_rows(good, n), read_noise * read_noise, pattern,
                    want_coefficients=True)  # fmt: skip
    return stack_rows(seg["coefficients"]), seg["coeff"]


@partial(jax.jit, static_argnames=("pattern", "intercept", "constant"))
def _refit_non_finite(slope, var_read, var_poisson, words, flat, read_noise, unusable, *,
                      pattern, intercept, constant):  # fmt: skip
    """The whole-ramp fit (``slope``, ``var_read``, ``var_poisson`` ``[m]``, flag ``words``
    ``[flag_words(n), m]``) of device data, with every pixel that has a non-finite
    resultant in ``flat`` (``[n, m]``; ``unusable [m]``) zeroed and then refitted from its
    finite resultants (sub-ramps between them), as many as fit one fixed-size batch
    (:func:`~._common.refit_capacity`; on CPUs only the blocks of it that hold such pixels,
    :func:`~._common.refit_batch`); the rest stay unfitted (the unfitted bit). The
    non-finite resultants get their left-out bits.

    One ``jax.jit``: the platform branches that call it trace it once."""
    n, npix = flat.shape
    zero = jnp.zeros((), slope.dtype)
    slope, var_read, var_poisson = (jnp.where(unusable, zero, value)
                                    for value in (slope, var_read, var_poisson))
    if n >= 2:
        index = _compact(unusable, refit_capacity(npix))

        def refit(form):
            def run(sub, sub_rn):
                good = jnp.isfinite(sub)
                return _general(jnp.where(good, sub, 0), good, sub_rn * sub_rn, pattern,
                                False, intercept, constant, form=form)[:4]  # fmt: skip

            return run

        s, vr, c, fitted = refit_batch(index, refit(None), refit(CPU_REFIT_FORM), flat,
                                       read_noise)  # fmt: skip
        slope = slope.at[index].set(s, mode="drop")
        var_read = var_read.at[index].set(vr, mode="drop")
        var_poisson = var_poisson.at[index].set(c * jnp.maximum(s, 0), mode="drop")
        unusable = unusable.at[index].set(~fitted, mode="drop")
    return slope, var_read, var_poisson, mark_left_out(unfitted_flags(unusable, n, words),
                                                       ~jnp.isfinite(flat))  # fmt: skip


@partial(
    jax.jit,
    static_argnames=("pattern", "has_dq", "detect_jumps", "intercept", "constant",
                     "flag_non_finite"),
)
def _fit_casertano(resultants, dq, read_noise, *, pattern, has_dq, detect_jumps, intercept,
                   constant, flag_non_finite=False):  # fmt: skip
    n = resultants.shape[0]
    pixels = resultants.shape[1:]
    flat = resultants.reshape(n, -1)
    # device data on the whole-ramp path (no dq, no jump detection): a pixel with a
    # non-finite resultant is refitted from its finite ones in one fixed-size batch
    # (refit_capacity); any beyond it is not fitted (zeros, DO_NOT_USE), never NaN. The
    # test reads the resultants; testing the outputs instead makes each output depend on
    # the others, which XLA answers with recomputation. On CPUs the zeroing, refit and
    # flags run only for a frame that has such a pixel (refit_if_non_finite).
    check_outputs = flag_non_finite and not (has_dq or detect_jumps)
    # dq None: the zero flags are made here, inside the jit (fused, never read from memory)
    flat_dq = jnp.zeros(flat.shape, jnp.uint32) if dq is None else dq.reshape(n, -1)
    left_out = None
    if has_dq or detect_jumps:  # non-finite resultants are left out like flagged ones
        flat, flat_dq, left_out = exclude_non_finite(flat, flat_dq)
        has_dq = True
    flat_rn = read_noise.reshape(-1)
    config = dict(pattern=pattern, has_dq=has_dq, detect_jumps=detect_jumps,
                  intercept=intercept, constant=constant)  # fmt: skip

    @jax.custom_jvp
    def core(r, q, s):
        return _fit_flat(r, q, s, **config)

    @core.defjvp
    def core_jvp(primals, tangents):
        r, q, s = primals
        dr, _, ds = tangents
        slope, var_read, var_poisson, words = _fit_flat(r, q, s, **config)
        coefficients, coeff = _coefficients(r, q, words, s, pattern)
        dslope = jnp.sum(coefficients * dr, axis=0)
        # V_R = s**2 / sum(1 / a_run): d V_R / d s = 2 V_R / s; the sub-ramp choice, P and the
        # jump flags are piecewise constant
        positive = s > 0
        dvar_read = jnp.where(positive, 2 * var_read / jnp.where(positive, s, 1), 0) * ds
        dvar_poisson = jnp.where(slope > 0, coeff, 0) * dslope
        zero_words = np.zeros(words.shape, dtype=jax.dtypes.float0)
        return (slope, var_read, var_poisson, words), (dslope, dvar_read, dvar_poisson,
                                                       zero_words)  # fmt: skip

    slope, var_read, var_poisson, words = core(flat, flat_dq, flat_rn)
    flags = None
    if has_dq or detect_jumps or n < 2:
        flags = words if left_out is None else mark_left_out(words, left_out)
    if check_outputs:
        npix = flat.shape[1]
        words = jnp.zeros((flag_words(n), npix), jnp.uint32) if flags is None else flags
        fix = partial(_refit_non_finite, pattern=pattern, intercept=intercept,
                      constant=constant)  # fmt: skip

        def when_finite(slope, var_read, var_poisson, words, *_):
            return slope, var_read, var_poisson, words

        unusable = ~jnp.all(jnp.isfinite(flat), axis=0)
        slope, var_read, var_poisson, flags = refit_if_non_finite(
            unusable, fix, when_finite, slope, var_read, var_poisson, words, flat, flat_rn,
            unusable)  # fmt: skip
    if flags is not None:
        flags = flags.reshape(flags.shape[:1] + pixels)
    return RampFit(
        slope=slope.reshape(pixels), var_read=var_read.reshape(pixels),
        var_poisson=var_poisson.reshape(pixels),
        var_total=(var_read + var_poisson).reshape(pixels), flags=flags, n_resultants=n,
    )  # fmt: skip


def fit_ramps_casertano(resultants: ArrayLike, pattern: ReadPattern, read_noise: ArrayLike, *,
                        dq: ArrayLike | None = None, detect_jumps: bool = False,
                        threshold_intercept: float = 5.5,
                        threshold_constant: float = 1 / 3) -> RampFit:  # fmt: skip
    """Fit ramps with Casertano (2022) weights, splitting at flagged resultants and,
    optionally, at detected jumps (Sharma & Casertano 2024), as romanisim's
    ``fit_ramps_casertano`` and stcal's ``ols_cas22.fit_ramps``.

    Parameters
    ----------
    resultants : array ``[n_resultant, *pixels]``
        Resultants [e]; float32 in gives float32 out, float64 (x64) gives float64.
    pattern : ReadPattern
        Static read pattern (its ``read_time`` sets the times).
    read_noise : float or array broadcasting to ``[*pixels]``
        Read noise of one read [e], >= 0.
    dq : integer array broadcasting to ``[n_resultant, *pixels]``, optional
        Resultant flags. Resultants with ``dq & romanjax.dq.DO_NOT_USE_IN_FIT`` (DO_NOT_USE,
        saturated or jump) are dropped and split the ramp into sub-ramps; other bits are ignored
        (``RampFit.resultant_dq(dq)`` combines them with the fitter's flags). None: the
        whole ramp is fitted.
    detect_jumps : bool
        Run stcal's ``ols_cas22`` jump detection: per sub-ramp, the single- and
        double-difference excess-slope statistics with the slope-dependent variance and the
        ``-slope / (tbar_e - tbar_s)`` correction; if the maximum is strictly above
        ``threshold_intercept - threshold_constant * log10(clip(slope, 1, 1e4))`` resultants
        ``i*`` and ``i* + 1`` are flagged ``JUMP_DET`` and both sides are refitted, until no
        sub-ramp splits.
    threshold_intercept, threshold_constant : float
        Jump threshold parameters (stcal defaults 5.5 and 1/3).

    Returns
    -------
    RampFit
        ``slope [*pixels]`` [e/s] (the pedestal is not fitted, as upstream: ``pedestal`` is
        None and ``par`` shows 0); ``var_read`` [(e/s)**2] (``1 / sum 1/V_R``),
        ``var_poisson`` (combined ``V_S`` times ``max(slope, 0)``) and ``var_total`` their
        sum; ``flags`` the jumps found (``JUMP_DET`` in ``dq``) and the pixels with no usable
        sub-ramp of two or more resultants (``DO_NOT_USE``; slope and variances 0 there),
        None without input dq and jump detection.

    Raises
    ------
    ValueError
        On shapes that do not match the pattern, or a concrete negative or non-finite
        ``read_noise``.

    Notes
    -----
    Read noise 0 follows romanisim: every sub-ramp gets the same weight (romanisim's weight 1;
    here the 1e10 clip, equivalent after normalisation), so the slope is the plain mean of the
    sub-ramp slopes and the read variance is 0; stcal instead returns slope 0. With read noise 0
    and a non-increasing ramp the signal-to-noise is 0/0, which romanisim and stcal put in the
    last bin (P = 10); so does this function.

    The result is differentiable with respect to ``resultants`` (and ``read_noise`` for the read
    variance): the sub-ramp boundaries, ``P`` and the jump flags are piecewise constant, so the
    slope's gradient is its coefficient vector ``sum_runs W K / sum W``.
    """
    kwargs = dict(dq=dq, detect_jumps=detect_jumps, threshold_intercept=threshold_intercept,
                  threshold_constant=threshold_constant)  # fmt: skip
    if through_frames(resultants, pattern, read_noise, dq):
        from ..host.frames import fit_on_device

        return fit_on_device("casertano", resultants, pattern, read_noise, **kwargs)
    return _fit_ramps_casertano(resultants, pattern, read_noise, **kwargs)


def _fit_ramps_casertano(resultants, pattern, read_noise, *, dq=None, detect_jumps=False,
                         threshold_intercept=5.5, threshold_constant=1 / 3,
                         checked_on_host=False):  # fmt: skip
    # host data was checked for NaN/inf on the host (and sent to the masked path if it has
    # any; the frame driver checks its chunks); device data and traced values are checked
    # inside the program
    on_device = isinstance(resultants, jax.Array) and not checked_on_host
    resultants, dq_array, per_pixel = prepare_inputs(
        "fit_ramps_casertano", resultants, pattern, dq, make_dq=False, read_noise=read_noise
    )
    rn = per_pixel["read_noise"]  # host values checked (finite, >= 0) by prepare_inputs
    return _fit_casertano(
        resultants, dq_array, rn, pattern=pattern, has_dq=dq_array is not None,
        detect_jumps=bool(detect_jumps), intercept=float(threshold_intercept),
        constant=float(threshold_constant), flag_non_finite=on_device,
    )  # fmt: skip
