"""The likelihood ramp fitter of Brandt (2024a, b), stcal's ``LIKELY`` algorithm, in JAX.

Data: the scaled resultant differences ``d_i = (R_{i+1} - R_i) / Delta_i`` with
``Delta_i = tbar_{i+1} - tbar_i`` (Brandt 2024a Eq. 5), i = 0 .. n-2, so ``E[d_i] = f`` and
the pedestal cancels. Their covariance is exactly tridiagonal (Brandt 2024a Eqs. 28-29):

* ``alpha_i = [sigma**2 (1/N_i + 1/N_{i+1}) + f (tau_i + tau_{i+1} - 2 tbar_i)] / Delta_i**2``
* ``beta_i = [-sigma**2 / N_{i+1} + f (tbar_{i+1} - tau_{i+1})] / (Delta_i Delta_{i+1})``

evaluated at a rate guess f, which makes the fit a linear generalized least-squares problem:
``f_hat = 1^T C^-1 d / 1^T C^-1 1``, ``chi2 = (d - f_hat)^T C^-1 (d - f_hat)``.

O(n) solve. Brandt's leading/trailing minors ``theta_k``/``phi_k`` (Eqs. 38-48) are products
of up to n numbers and overflow float32 for long patterns unless rescaled; here the same
quantities are carried as their ratios, the pivots ``p_i = theta_{i+1} / theta_i`` (forward
elimination, a Thomas solve) and ``q_i = phi_i / phi_{i+1}`` (backward elimination), which
stay of the order of the ``alpha_i`` whatever the pattern length. With them

* ``C^-1 1`` and ``C^-1 d`` come from one forward and one backward sweep,
* ``(C^-1)_ii = 1 / (alpha_i - beta_{i-1}**2 / p_{i-1} - beta_i**2 / q_{i+1})``,
* ``(C^-1)_{i,i+1} = -beta_i / (p_i q_{i+1} - beta_i**2)``,

which is everything the fit and the jump tests need; no dense inverse anywhere. The data are
centred on the rate guess before the solve (the fit is invariant under ``d -> d - c``), so
float32 keeps the chi-square and the likelihood-ratio statistics accurate at high flux.

Masking: a difference that touches a flagged resultant (``dq & DO_NOT_USE_IN_FIT``) or a
jump is removed exactly by zeroing ``d_i``, ``beta_{i-1}``, ``beta_i`` and its entry of the
ones vector (Brandt's ``diffs2use``): it decouples into its own 1x1 block and carries no
weight.

Jump detection (Brandt 2024b Sec. 3): for every difference i the chi-square improvement of
the model ``d = a 1 + b e_i`` (one omitted difference) and, where resultant i+1 has more
than one read, of ``d = a 1 + b e_i + c e_{i+1}`` (two omitted differences, a jump inside a
multi-read resultant). With ``P = C^-1 - C^-1 1 1^T C^-1 / (1^T C^-1 1)`` and
``r = P d``, the improvements are ``r_i**2 / P_ii`` and ``r^T V^-1 r`` with ``V`` the 2x2
block of ``P`` (algebraically identical to Paper 2's closed forms, without their
cancellation). The best single and the best pair are compared with their thresholds as stcal's
``mask_jumps`` does, the winner is masked, and the search repeats on the pixels that changed
while more than three differences remain (a ``lax.while_loop`` of at most n-1 trips).

Debiasing (Brandt 2024a Sec. 5): the first pass uses the median difference (clipped at 0)
as the rate guess; the final fit is redone with the first-pass estimate clipped at 0.

Layout: one-pixel kernels (prologue: differences, mask, median; one jump-search iteration;
final fits) are vmapped over the flattened pixels. Only the scheduling of the jump search is
array-level: a chi-square screen (no omission can gain more than the full fit's chi-square)
selects the pixels that can drop anything, and the pixels still searching are compacted into
fixed-size batches (``jnp.nonzero(..., size=...)``) inside a ``lax.while_loop``, so the
search costs in proportion to the pixels with jumps; the result is the same as iterating
every pixel.
"""

from __future__ import annotations

import math
from functools import lru_cache, partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from .. import dq as dqflags
from .._read_pattern import ReadPattern
from .._validate import prepare_inputs
from ..kernels.linalg import fence, tridiagonal_solve
from ..kernels.order import masked_median
from ._common import RampFit, exclude_non_finite, map_pixel_chunks, pack_flags, through_frames

__all__ = [
    "fit_ramps_likely",
    "LikelyJumps",
    "two_omit_threshold",
    "difference_covariance_parts",
]

#: Default rejection threshold [sigma] (stcal / romancal ``rejection_threshold``).
DEFAULT_REJECTION_THRESHOLD = 4.5


class LikelyJumps(NamedTuple):
    """Jumps found by :func:`fit_ramps_likely` (``return_jump_amplitudes=True``).

    Attributes
    ----------
    amplitude : Array
        ``[n_resultant, *pixels]`` estimated jump [e] in the difference ``R_j - R_{j-1}``
        ending at resultant j, for every difference masked as a jump (0 elsewhere and at
        j = 0). Evaluated with the covariance at the jump-search rate guess, as Brandt 2024b's
        ``jumpval_oneomit`` (times ``Delta``).
    sigma : Array
        ``[n_resultant, *pixels]`` 1-sigma uncertainty of ``amplitude`` [e] (0 where no jump).
    """

    amplitude: jax.Array
    sigma: jax.Array


def two_omit_threshold(rejection_threshold: float) -> float:
    """The two-difference threshold stcal derives from a rejection threshold t [sigma].

    ``chi2.isf(erfc(t / sqrt(2)), 2) = -2 ln(erfc(t / sqrt(2)))`` (a chi-square with two
    degrees of freedom at the two-sided Gaussian tail probability of t sigma); stcal uses
    ``t**2 + 10`` if that is infinite.
    """
    p = math.erfc(rejection_threshold / math.sqrt(2.0))
    if p <= 0.0:
        return rejection_threshold**2 + 10.0
    return -2.0 * math.log(p)


@lru_cache(maxsize=64)
def difference_covariance_parts(pattern: ReadPattern):
    """Per-pattern pieces of the scaled-difference covariance (float64, host).

    Returns
    -------
    delta : ``[n-1]`` ``tbar_{i+1} - tbar_i`` [s]
    alpha_read, alpha_poisson : ``[n-1]`` diagonal per unit sigma**2 [1/s**2] and per unit
        flux [1/s]
    beta_read, beta_poisson : ``[n-2]`` off-diagonal, same units (Brandt 2024a Eqs. 28-29).
    two_omit_ok : ``[n-2]`` bool, resultant i+1 has more than one read (stcal ``mask_jumps``).
    """
    tbar, tau, nreads = pattern.tbar, pattern.tau, pattern.n_reads.astype(np.float64)
    delta = np.diff(tbar)
    alpha_read = (1 / nreads[:-1] + 1 / nreads[1:]) / delta**2
    alpha_poisson = (tau[:-1] + tau[1:] - 2 * tbar[:-1]) / delta**2
    beta_read = -1 / (nreads[1:-1] * delta[1:] * delta[:-1])
    beta_poisson = (tbar[1:-1] - tau[1:-1]) / (delta[1:] * delta[:-1])
    two_omit_ok = pattern.n_reads[1:-1] > 1
    return delta, alpha_read, alpha_poisson, beta_read, beta_poisson, two_omit_ok


# --------------------------------------------------------------------------------------------
# one-pixel building blocks (lists of scalars; the loops are over the static pattern length)


class _Pass(NamedTuple):
    rate: jax.Array  # fitted rate [e/s]
    chisq: jax.Array
    var_read: jax.Array
    var_poisson: jax.Array
    usable: jax.Array  # bool: at least one usable difference
    # jump-search pieces (None unless asked), lists over the differences
    x: list | None = None  # C^-1 1
    resid: list | None = None  # r = P d
    v: list | None = None  # P_ii
    v01: list | None = None  # P_{i,i+1}
    inv_c: jax.Array | None = None  # 1 / 1^T C^-1 1
    dchisq_one: list | None = None
    dchisq_two: list | None = None


def _gls_pass(d, mask, read_var, guess, center, parts, two_ok=None, *, jumps):
    """One GLS fit of the scaled differences at a fixed rate guess (one pixel).

    ``d``: list of m scaled differences [e/s]; ``mask``: list of m bools (usable);
    ``read_var``: sigma**2 [e**2]; ``guess``: rate for the covariance [e/s], >= 0;
    ``center``: value subtracted from ``d`` before the solve [e/s]; ``two_ok``: static list of
    m-1 bools, the pairs for which the two-omit statistic is wanted.
    """
    _, ar, ap, br, bp, _ = parts
    m = len(d)
    dtype = d[0].dtype
    tiny = jnp.asarray(100 * jnp.finfo(dtype).eps, dtype)
    # a covariance that is identically zero (no read noise, zero rate) is replaced by the
    # read-noise shape; the reported variances below still use the true read_var
    degenerate = (read_var <= 0) & (guess <= 0)
    solve_var = jnp.where(degenerate, jnp.ones_like(read_var), read_var)
    mf = [mk.astype(dtype) for mk in mask]
    diag = [jnp.where(mask[i], solve_var * ar[i] + guess * ap[i], 1) for i in range(m)]
    off = [(solve_var * br[i] + guess * bp[i]) * (mf[i] * mf[i + 1]) for i in range(m - 1)]
    dm = [jnp.where(mask[i], d[i] - center, 0) for i in range(m)]
    if jumps:
        (x, y), inv_diag, inv_off = tridiagonal_solve(diag, off, [mf, dm], inverse=True)
    else:
        x, y = tridiagonal_solve(diag, off, [mf, dm])
    c_total = sum(mf[i] * x[i] for i in range(m))
    b_total = sum(dm[i] * x[i] for i in range(m))
    usable = c_total > 0
    c_safe = jnp.where(usable, c_total, 1)
    inv_c = 1 / c_safe
    a = b_total * inv_c
    resid = [y[i] - a * x[i] for i in range(m)]  # (P d)_i
    zero = jnp.zeros((), dtype)
    rate = jnp.where(usable, a + center, zero)
    if jumps:
        # one omitted difference: chi-square improvement r_i**2 / P_ii (Brandt 2024b Sec. 3.1)
        v = [inv_diag[i] - x[i] * x[i] * inv_c for i in range(m)]
        ok1 = [mask[i] & (v[i] > tiny * inv_diag[i]) for i in range(m)]
        dchisq1 = [
            jnp.where(ok1[i], resid[i] * resid[i] / jnp.where(ok1[i], v[i], 1), 0)
            for i in range(m)
        ]
        # two omitted neighbours i, i+1: r^T V^-1 r with V the 2x2 block of P (Sec. 3.2)
        dchisq2, v01s = [], []
        for i in range(m - 1):
            v01 = inv_off[i] - x[i] * x[i + 1] * inv_c
            v01s.append(v01)
            if two_ok is not None and not two_ok[i]:
                dchisq2.append(zero)
                continue
            det = v[i] * v[i + 1] - v01 * v01
            ok2 = mask[i] & mask[i + 1] & (det > tiny * jnp.abs(v[i] * v[i + 1]))
            quad = v[i + 1] * resid[i] ** 2 - 2 * v01 * resid[i] * resid[i + 1]
            quad = quad + v[i] * resid[i + 1] ** 2
            both = quad / jnp.where(ok2, det, 1)
            # stcal's fill_masked_reads: with one of the pair already masked, the two-omit
            # model is the one-omit model of the other difference
            other = jnp.where(mask[i], dchisq1[i], dchisq1[i + 1])
            dchisq2.append(jnp.where(ok2, both, other))
        return _Pass(rate=rate, chisq=zero, var_read=zero, var_poisson=zero, usable=usable,
                     x=x, resid=resid, v=v, v01=v01s, inv_c=inv_c, dchisq_one=dchisq1,
                     dchisq_two=dchisq2)  # fmt: skip
    chisq = sum((dm[i] - a * mf[i]) * resid[i] for i in range(m))
    w = [x[i] * inv_c for i in range(m)]
    var_read = sum(w[i] * w[i] * ar[i] for i in range(m)) + 2 * sum(
        w[i] * w[i + 1] * br[i] for i in range(m - 1)
    )
    var_poisson = sum(w[i] * w[i] * ap[i] for i in range(m)) + 2 * sum(
        w[i] * w[i + 1] * bp[i] for i in range(m - 1)
    )
    return _Pass(
        rate=rate,
        chisq=jnp.where(usable, jnp.maximum(chisq, 0), zero),
        var_read=jnp.where(usable, read_var * var_read, zero),
        var_poisson=jnp.where(usable, guess * var_poisson, zero),
        usable=usable,
    )


def _argmax(values):
    """First index of the maximum of a list of scalars, and the maximum."""
    best = values[0]
    for value in values[1:]:
        best = jnp.maximum(best, value)
    index = jnp.asarray(len(values) - 1)
    for i in range(len(values) - 2, -1, -1):
        index = jnp.where(values[i] == best, i, index)
    return index, best


def _jump_search_step(d, mask, active, amp, *, read_var, guess, center, parts, two_ok,
                      thresholds):  # fmt: skip
    """One iteration of stcal's ``mask_jumps`` for one pixel (Brandt 2024b Sec. 4).

    ``d``: list over the m differences; ``mask`` ``[m]`` bool; ``amp`` None or ``[2, m]``
    (jump amplitude and sigma per difference, in units of ``d``). The best single and the best
    pair omission are compared after subtracting their thresholds; the better one is masked
    if it passes its threshold. Returns the updated ``(mask, active, amp)``; a pixel that is
    not ``active`` is unchanged, and it stays active only if it dropped something and keeps
    more than three differences.
    """
    m = len(d)
    dtype = d[0].dtype
    zero = jnp.zeros((), dtype)
    threshold_one, threshold_two = thresholds
    fit = _gls_pass(d, [mask[i] for i in range(m)], read_var, guess, center, parts, two_ok,
                    jumps=True)  # fmt: skip
    dchisq1 = fence(jnp.stack(fit.dchisq_one))
    i1 = jnp.argmax(dchisq1)
    best1 = jnp.maximum(jnp.max(dchisq1), 0)
    use_two = m >= 2 and any(two_ok)
    positions = jnp.arange(m)
    if use_two:
        dchisq2 = jnp.stack([fit.dchisq_two[i] if two_ok[i] else zero for i in range(m - 1)])
        dchisq2 = fence(dchisq2)
        i2 = jnp.argmax(dchisq2)
        best2 = jnp.maximum(jnp.max(dchisq2), 0)
    else:
        i2, best2 = jnp.asarray(0), zero
    one_better = best1 - threshold_one > best2 - threshold_two
    drop1 = active & one_better & (best1 > threshold_one)
    drop2 = active & ~one_better & (best2 > threshold_two)
    hit1 = drop1 & (positions == i1)
    hit2a = drop2 & (positions == i2)
    hit2b = drop2 & (positions == i2 + 1)
    new_mask = mask & ~(hit1 | hit2a | hit2b)
    active = (drop1 | drop2) & (jnp.sum(new_mask) > 3)
    if amp is None:
        return new_mask, active, None
    # one omitted: jump b = r_i / P_ii, sigma P_ii**-1/2; pair: (b, c) = V^-1 (r_i, r_{i+1})
    resid, v = jnp.stack(fit.resid), jnp.stack(fit.v)
    r1, v1 = resid[i1], v[i1]
    v1_safe = jnp.where(v1 > 0, v1, 1)
    b1, s1 = r1 / v1_safe, jax.lax.rsqrt(v1_safe)
    if use_two:
        j2 = jnp.minimum(i2 + 1, m - 1)
        ra, rb, va, vb = resid[i2], resid[j2], v[i2], v[j2]
        vab = jnp.stack(fit.v01)[i2]
        det = va * vb - vab * vab
        det_safe = jnp.where(det > 0, det, 1)
        b2 = (vb * ra - vab * rb) / det_safe
        c2 = (va * rb - vab * ra) / det_safe
        sb2 = jnp.sqrt(jnp.maximum(vb / det_safe, 0))
        sc2 = jnp.sqrt(jnp.maximum(va / det_safe, 0))
    else:
        b2 = c2 = sb2 = sc2 = zero
    values = jnp.where(hit1, b1, jnp.where(hit2a, b2, jnp.where(hit2b, c2, amp[0])))
    sigmas = jnp.where(hit1, s1, jnp.where(hit2a, sb2, jnp.where(hit2b, sc2, amp[1])))
    return new_mask, active, jnp.stack([values, sigmas])


def _pattern_parts(pattern, dtype):
    host = difference_covariance_parts(pattern)
    delta = tuple(float(t) for t in host[0])
    two_ok = tuple(bool(t) for t in host[5])
    parts = (None,) + tuple(jnp.asarray(p, dtype) for p in host[1:5]) + (None,)
    return delta, parts, two_ok


def _prologue_kernel(ramp, dq, flux_estimate, *, pattern):
    """Scaled differences ``[m]`` [e/s], their usable mask ``[m]`` and the first rate guess
    (centre, and covariance guess clipped at 0) [e/s] of one ramp."""
    m = pattern.n_resultants - 1
    dtype = ramp.dtype
    delta, _, _ = _pattern_parts(pattern, dtype)
    d = [(ramp[i + 1] - ramp[i]) / jnp.asarray(delta[i], dtype) for i in range(m)]
    bad = (dq & dqflags.DO_NOT_USE_IN_FIT) != 0
    mask = [~bad[i] & ~bad[i + 1] for i in range(m)]
    if flux_estimate is None:
        center = masked_median(d, mask)
    else:
        center = flux_estimate.astype(dtype)
    return jnp.stack(d), jnp.stack(mask), center


def _search_kernel(d, mask, active, amp, read_noise, center, thresholds, *, pattern):
    """One jump-search iteration for one pixel (arrays ``[m]``; ``amp`` None or ``[2, m]``),
    see ``_jump_search_step``."""
    m = pattern.n_resultants - 1
    _, parts, two_ok = _pattern_parts(pattern, d.dtype)
    return _jump_search_step(
        [d[i] for i in range(m)], mask, active, amp,
        read_var=jnp.square(read_noise), guess=jnp.maximum(center, 0), center=center,
        parts=parts, two_ok=two_ok, thresholds=thresholds,
    )  # fmt: skip


def _screen_kernel(d, mask, read_noise, center, *, pattern):
    """Chi-square of one pixel's fit at its first rate guess (all usable differences)."""
    m = pattern.n_resultants - 1
    _, parts, _ = _pattern_parts(pattern, d.dtype)
    fit = _gls_pass([d[i] for i in range(m)], [mask[i] for i in range(m)],
                    jnp.square(read_noise), jnp.maximum(center, 0), center, parts,
                    jumps=False)  # fmt: skip
    return fit.chisq


def _final_kernel(d, mask0, mask, read_noise, center0, *, pattern, second_pass):
    """The last fit(s) of one pixel: at the first guess with the final mask, then (if
    ``second_pass``) again at that rate clipped at 0 (Brandt 2024a debiasing)."""
    m = pattern.n_resultants - 1
    dtype = d.dtype
    _, parts, _ = _pattern_parts(pattern, dtype)
    dl = [d[i] for i in range(m)]
    ml = [mask[i] for i in range(m)]
    read_var = jnp.square(read_noise)
    guess0 = jnp.maximum(center0, 0)
    if second_pass:
        center1 = _gls_pass(dl, ml, read_var, guess0, center0, parts, jumps=False).rate
        guess1 = jnp.maximum(center1, 0)
    else:
        center1, guess1 = center0, guess0
    final = _gls_pass(dl, ml, read_var, guess1, center1, parts, jumps=False)
    # a difference i masked by the search flags resultant i+1 (stcal's likely_ramp_fit)
    jumps = [jnp.zeros((), bool)] + [mask0[i] & ~mask[i] for i in range(m)]
    flags = pack_flags(jumps, ~final.usable)
    return (final.rate, final.var_read, final.var_poisson, final.var_read + final.var_poisson,
            final.chisq, flags)


def _queue_size(npix: int) -> int:
    """Pixels re-searched per trip after the first full iteration (static)."""
    return max(min(npix, 4096), -(-npix // 16))


def _jump_search(d, mask0, read_noise, center, thresholds, *, pattern, amplitudes):
    """stcal's ``mask_jumps`` over all pixels: ``d``, ``mask0`` ``[m, P]``; returns the final
    mask ``[m, P]`` and (if ``amplitudes``) the jump amplitudes and sigmas ``[2, m, P]`` in
    units of the scaled differences, else None.

    A cheap chi-square screen over every pixel decides which pixels can drop anything in
    the first iteration; later iterations run only on the pixels whose mask just changed and
    that keep more than three differences (stcal's ``recheck``). The searching pixels are
    compacted into batches of a fixed size (a work queue in a ``lax.while_loop``), so the cost
    follows the number of pixels with jumps, not the number of iterations times the frame.
    """
    m, npix = d.shape
    amp_axis = 2 if amplitudes else None
    step = jax.vmap(
        partial(_search_kernel, thresholds=thresholds, pattern=pattern),
        in_axes=(1, 1, 0, amp_axis, 0, 0), out_axes=(1, 0, amp_axis),
    )  # fmt: skip
    amp = jnp.zeros((2, m, npix), d.dtype) if amplitudes else None
    # Screen: omitting differences can improve chi-square by at most the chi-square of the
    # full fit, so a pixel whose chi-square is below both thresholds cannot drop anything in
    # the first iteration (and is done). Only the others enter the search (a small margin
    # keeps rounding at the boundary on the safe side).
    chisq = jax.vmap(partial(_screen_kernel, pattern=pattern), in_axes=(1, 1, 0, 0))(
        d, mask0, read_noise, center
    )
    limit = jnp.minimum(thresholds[0], thresholds[1]) * (1 - 1e-3)
    state = (mask0, chisq > limit, amp)
    size = _queue_size(npix)

    def cond(state):
        return jnp.any(state[1])

    def body(state):
        mask, active, amp = state
        (index,) = jnp.nonzero(active, size=size, fill_value=npix)
        take = jnp.minimum(index, npix - 1)
        valid = index < npix
        sub_mask, sub_active, sub_amp = step(
            d[:, take], mask[:, take], active[take] & valid,
            None if amp is None else amp[:, :, take], read_noise[take], center[take],
        )  # fmt: skip
        mask = mask.at[:, index].set(sub_mask, mode="drop")
        active = active.at[index].set(sub_active, mode="drop")
        if amp is not None:
            amp = amp.at[:, :, index].set(sub_amp, mode="drop")
        return mask, active, amp

    mask, _, amp = jax.lax.while_loop(cond, body, state)
    return mask, amp


@partial(jax.jit, static_argnames=("pattern", "detect_jumps", "with_jumps"))
def _fit_likely(resultants, dq, read_noise, flux_estimate, thresholds, *, pattern,
                detect_jumps, with_jumps):  # fmt: skip
    n = pattern.n_resultants
    dtype = resultants.dtype
    pixels = resultants.shape[1:]
    ramps = resultants.reshape(n, -1)
    # dq None: the zero flags are made here, inside the jit
    flat_dq = jnp.zeros(ramps.shape, jnp.uint32) if dq is None else dq.reshape(n, -1)
    ramps, flat_dq = exclude_non_finite(ramps, flat_dq)  # left out like flagged resultants
    thresholds = tuple(jnp.asarray(t, dtype) for t in thresholds)
    prologue = partial(_prologue_kernel, pattern=pattern)
    final = partial(_final_kernel, pattern=pattern, second_pass=flux_estimate is None)
    delta, _, _ = _pattern_parts(pattern, dtype)

    def flat_fit(ramps, flat_dq, read_noise, flux_estimate):
        if flux_estimate is None:
            d, mask0, center = jax.vmap(lambda r, q: prologue(r, q, None), in_axes=(1, 1),
                                        out_axes=(1, 1, 0))(ramps, flat_dq)  # fmt: skip
        else:
            d, mask0, center = jax.vmap(prologue, in_axes=(1, 1, 0), out_axes=(1, 1, 0))(
                ramps, flat_dq, flux_estimate
            )
        if detect_jumps:
            # the mask is piecewise constant in the data: no gradient through the search
            mask, amp = _jump_search(
                jax.lax.stop_gradient(d), mask0, jax.lax.stop_gradient(read_noise),
                jax.lax.stop_gradient(center), thresholds, pattern=pattern,
                amplitudes=with_jumps,
            )  # fmt: skip
        else:
            mask, amp = mask0, jnp.zeros((2,) + d.shape, dtype)
        rows = jax.vmap(final, in_axes=(1, 1, 1, 0, 0), out_axes=-1)(
            d, mask0, mask, read_noise, center
        )
        if not with_jumps:
            return rows, None
        found = mask0 & ~mask
        scale = jnp.asarray(delta, dtype)[:, None]
        pad = jnp.zeros((1,) + ramps.shape[1:], dtype)

        def per_resultant(values):  # [n - 1, m] per difference -> [n, m] per resultant
            return jnp.concatenate([pad, jnp.where(found, values * scale, 0)])

        return rows, (per_resultant(amp[0]), per_resultant(amp[1]))

    rows, jumps = map_pixel_chunks(
        flat_fit, ramps, flat_dq, read_noise.reshape(-1),
        None if flux_estimate is None else flux_estimate.reshape(-1),
    )  # fmt: skip
    rate, var_read, var_poisson, var_total, chisq, flags = rows
    fit = RampFit(
        slope=rate.reshape(pixels), var_read=var_read.reshape(pixels),
        var_poisson=var_poisson.reshape(pixels), var_total=var_total.reshape(pixels),
        flags=flags.reshape(flags.shape[:1] + pixels), chisq=chisq.reshape(pixels),
        n_resultants=n,
    )  # fmt: skip
    if not with_jumps:
        return fit
    amplitude, sigma = (values.reshape((n,) + pixels) for values in jumps)
    return fit, LikelyJumps(amplitude=amplitude, sigma=sigma)


def fit_ramps_likely(resultants: ArrayLike, pattern: ReadPattern, read_noise: ArrayLike, *,
                     dq: ArrayLike | None = None, detect_jumps: bool = True,
                     flux_estimate: ArrayLike | None = None,
                     rejection_threshold: float = DEFAULT_REJECTION_THRESHOLD,
                     threshold_one_omit: float | None = None,
                     threshold_two_omit: float | None = None,
                     return_jump_amplitudes: bool = False,
                     ) -> RampFit | tuple[RampFit, LikelyJumps]:  # fmt: skip
    """Fit ramps by exact tridiagonal GLS with likelihood jump detection (stcal ``LIKELY``).

    Brandt (2024a, PASP 136, 045004) optimal fit of the scaled resultant differences with
    their exact tridiagonal covariance (Eqs. 28-29), solved in O(n) per pixel, with the
    two-pass debiasing of its Sec. 5, and the likelihood-based jump detection of Brandt
    (2024b, PASP 136, 045005) as stcal's ``likely_fit`` runs it. See the module docstring for
    the formulation.

    Parameters
    ----------
    resultants : array ``[n_resultant, *pixels]``
        Resultants [e].
    pattern : ReadPattern
        Static read pattern (at least two resultants; jump detection needs four or more
        differences left to act).
    read_noise : float or array broadcasting to ``[*pixels]``
        Read noise of ONE read [e] (stcal is given sqrt(2) times this, as romancal does).
    dq : array ``[n_resultant, *pixels]``, optional
        Resultant flags; resultants with ``dq & DO_NOT_USE_IN_FIT`` are excluded by masking the
        differences that touch them.
    detect_jumps : bool
        Run the one- and two-difference likelihood tests (default True).
    flux_estimate : float or array broadcasting to ``[*pixels]``, optional
        Rate [e/s] (clipped at 0) at which the covariance is evaluated, for the jump search and
        a single final fit. Default: the median usable difference for the jump search and the
        first pass, then a second pass at the first-pass rate clipped at 0.
    rejection_threshold : float
        Jump threshold t [sigma], default 4.5 (romancal): one-omit threshold ``t**2`` on the
        chi-square improvement, two-omit threshold ``chi2.isf(erfc(t/sqrt2), 2)`` (23.8 for 4.5).
    threshold_one_omit, threshold_two_omit : float, optional
        Override the two chi-square-improvement thresholds directly.
    return_jump_amplitudes : bool
        Also return a :class:`LikelyJumps` with the fitted jump amplitudes [e].

    Returns
    -------
    RampFit, or (RampFit, LikelyJumps) if ``return_jump_amplitudes``
        ``slope [*pixels]`` [e/s] (``pedestal`` None: ``par`` shows 0); ``var_read``
        ``sum w_i**2 alpha^r_i + 2 sum w_i w_{i+1} beta^r_i`` times sigma**2,
        ``var_poisson`` the same with the photon parts times the final rate guess,
        ``var_total`` their sum (= ``1 / 1^T C^-1 1``); ``flags``: a jump on resultant i+1
        for every difference i masked as a jump (both i+1 and i+2 for a pair, as stcal;
        ``JUMP_DET`` in ``dq``), and the pixels with no usable difference (``DO_NOT_USE``;
        slope, variances and chisq 0 there); ``chisq [*pixels]`` of the final fit.

    Raises
    ------
    ValueError
        If shapes do not match the pattern or the pattern has fewer than two resultants.

    Notes
    -----
    Differences from stcal: the median rate guess ignores differences touching flagged
    resultants (stcal's includes them); computations stay in the input dtype (stcal uses
    float64 internally; the solve here is in pivot form and centred, see the module notes).
    Gradients with respect to the resultants flow through the guesses and both final
    passes; the jump mask is piecewise constant and is not differentiated.
    """
    kwargs = dict(dq=dq, detect_jumps=detect_jumps, flux_estimate=flux_estimate,
                  rejection_threshold=rejection_threshold,
                  threshold_one_omit=threshold_one_omit, threshold_two_omit=threshold_two_omit)
    if not return_jump_amplitudes and through_frames(resultants, pattern, read_noise, dq,
                                                     flux_estimate):  # fmt: skip
        from .._batch import fit_on_device

        return fit_on_device("likely", resultants, pattern, read_noise, **kwargs)
    return _fit_ramps_likely(resultants, pattern, read_noise,
                             return_jump_amplitudes=return_jump_amplitudes, **kwargs)


def _fit_ramps_likely(resultants, pattern, read_noise, *, dq=None, detect_jumps=True,
                      flux_estimate=None, rejection_threshold=DEFAULT_REJECTION_THRESHOLD,
                      threshold_one_omit=None, threshold_two_omit=None,
                      return_jump_amplitudes=False):  # fmt: skip
    resultants, dq_array, per_pixel = prepare_inputs(
        "fit_ramps_likely", resultants, pattern, dq, make_dq=False,
        read_noise=read_noise, flux_estimate=flux_estimate,
    )  # fmt: skip
    if pattern.n_resultants < 2:
        raise ValueError("fit_ramps_likely: the read `pattern` needs at least two resultants")
    if threshold_one_omit is None:
        if not rejection_threshold > 0:
            raise ValueError(
                f"fit_ramps_likely: `rejection_threshold` must be positive: {rejection_threshold}"
            )
        threshold_one_omit = float(rejection_threshold) ** 2
    if threshold_two_omit is None:
        threshold_two_omit = two_omit_threshold(float(rejection_threshold))
    return _fit_likely(
        resultants, dq_array, per_pixel["read_noise"], per_pixel["flux_estimate"],
        (float(threshold_one_omit), float(threshold_two_omit)),
        pattern=pattern, detect_jumps=bool(detect_jumps),
        with_jumps=bool(return_jump_amplitudes),
    )  # fmt: skip
