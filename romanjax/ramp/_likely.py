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
as the rate guess; the final fit is redone with the first-pass estimate clipped at 0. With
jump detection the first pass is not run again: every pixel's last fit in the search (the
screen's, or that of its last search step, which drops nothing) is already the fit of its
final mask at the first guess, and its rate is kept (a pixel whose last drop leaves three or
fewer differences takes one more step that only fits). Under differentiation the first pass
gives the derivatives of that rate (a custom JVP), as the search's values carry none.

Layout: the kernels (prologue: differences, mask, median; one jump-search iteration;
final fits) work on pixel-minor rows ``[m, P]`` of the flattened pixels. The scheduling of the
jump search: a chi-square screen (no omission can gain more than the full fit's chi-square)
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
from .._platform import materialise
from .._read_pattern import ReadPattern
from .._validate import prepare_inputs
from ..kernels.linalg import (
    UNROLL_LIMIT,
    argmax_rows,
    as_rows,
    fence,
    rmap,
    stack_rows,
    sum_rows,
    take_rows,
    tridiagonal_solve,
)
from ..kernels.order import masked_median
from ..kernels.queue import compact
from ._common import (
    RampFit,
    exclude_non_finite,
    map_pixel_chunks,
    mark_left_out,
    pack_flags,
    queue_size,
    through_frames,
)

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
# building blocks on pixel-minor rows: ``[m, P]`` per difference, ``[P]`` per pixel


class _Pass(NamedTuple):
    rate: jax.Array  # fitted rate [e/s]
    chisq: jax.Array
    var_read: jax.Array
    var_poisson: jax.Array
    usable: jax.Array  # bool: at least one usable difference
    # jump-search pieces (None unless asked), rows over the m differences
    x: list | jax.Array | None = None  # C^-1 1
    resid: list | jax.Array | None = None  # r = P d
    v: list | jax.Array | None = None  # P_ii
    v01: list | jax.Array | None = None  # P_{i,i+1}
    inv_c: jax.Array | None = None  # 1 / 1^T C^-1 1
    dchisq_one: list | jax.Array | None = None
    dchisq_two: list | jax.Array | None = None


def _gls_pass(d, mask, read_var, guess, center, parts, two_ok=None, *, jumps):
    """One GLS fit of the scaled differences at a fixed rate guess, per pixel.

    ``d``: rows ``[m]`` of scaled differences [e/s]; ``mask``: rows ``[m]`` of bools
    (usable); ``read_var``: sigma**2 [e**2]; ``guess``: rate for the covariance [e/s], >= 0;
    ``center``: value subtracted from ``d`` before the solve [e/s] (each ``[P]``);
    ``parts``: the covariance parts as rows (:func:`_pattern_parts`); ``two_ok``: rows
    ``[m-1]`` of bools, the pairs for which the two-omit statistic is wanted.
    """
    _, ar, ap, br, bp, _ = parts
    dtype = d[0].dtype
    tiny = jnp.asarray(100 * jnp.finfo(dtype).eps, dtype)
    zero = jnp.zeros((), dtype)
    # a covariance that is identically zero (no read noise, zero rate) is replaced by the
    # read-noise shape; the reported variances below still use the true read_var
    degenerate = (read_var <= 0) & (guess <= 0)
    solve_var = jnp.where(degenerate, jnp.ones_like(read_var), read_var)
    mf = rmap(lambda mk: mk.astype(dtype), mask)
    diag = rmap(lambda mk, a_r, a_p: jnp.where(mk, solve_var * a_r + guess * a_p, 1),
                mask, ar, ap)  # fmt: skip
    off = rmap(lambda b_r, b_p, m0, m1: (solve_var * b_r + guess * b_p) * (m0 * m1),
               br, bp, mf[:-1], mf[1:])  # fmt: skip
    dm = rmap(lambda mk, di: jnp.where(mk, di - center, 0), mask, d)
    if jumps:
        (x, y), inv_diag, inv_off = tridiagonal_solve(diag, off, [mf, dm], inverse=True)
    else:
        x, y = tridiagonal_solve(diag, off, [mf, dm])
    c_total = sum_rows(rmap(jnp.multiply, mf, x))
    b_total = sum_rows(rmap(jnp.multiply, dm, x))
    usable = c_total > 0
    inv_c = 1 / jnp.where(usable, c_total, 1)
    a = b_total * inv_c
    resid = rmap(lambda yi, xi: yi - a * xi, y, x)  # (P d)_i
    rate = jnp.where(usable, a + center, zero)
    if jumps:
        # one omitted difference: chi-square improvement r_i**2 / P_ii (Brandt 2024b Sec. 3.1)
        v = rmap(lambda idg, xi: idg - xi * xi * inv_c, inv_diag, x)

        def one_omit(mk, vi, idg, ri):
            ok = mk & (vi > tiny * idg)
            return jnp.where(ok, ri * ri / jnp.where(ok, vi, 1), 0)

        dchisq1 = rmap(one_omit, mask, v, inv_diag, resid)
        # two omitted neighbours i, i+1: r^T V^-1 r with V the 2x2 block of P (Sec. 3.2)
        v01 = rmap(lambda io, xa, xb: io - xa * xb * inv_c, inv_off, x[:-1], x[1:])

        def two_omit(ok_pair, ma, mb, va, vb, vab, ra, rb, one_a, one_b):
            det = va * vb - vab * vab
            ok = ma & mb & (det > tiny * jnp.abs(va * vb))
            quad = vb * ra * ra - 2 * vab * ra * rb + va * rb * rb
            both = quad / jnp.where(ok, det, 1)
            # stcal's fill_masked_reads: with one of the pair already masked, the two-omit
            # model is the one-omit model of the other difference
            other = jnp.where(ma, one_a, one_b)
            return jnp.where(ok_pair, jnp.where(ok, both, other), zero)

        dchisq2 = rmap(two_omit, two_ok, mask[:-1], mask[1:], v[:-1], v[1:], v01, resid[:-1],
                       resid[1:], dchisq1[:-1], dchisq1[1:])  # fmt: skip
        return _Pass(rate=rate, chisq=zero, var_read=zero, var_poisson=zero, usable=usable,
                     x=x, resid=resid, v=v, v01=v01, inv_c=inv_c, dchisq_one=dchisq1,
                     dchisq_two=dchisq2)  # fmt: skip
    chisq = sum_rows(rmap(lambda dmi, mfi, ri: (dmi - a * mfi) * ri, dm, mf, resid))
    w = rmap(lambda xi: xi * inv_c, x)

    def quadratic(c_diag, c_off):  # w^T C w for the tridiagonal C (c_diag, c_off)
        inner = sum_rows(rmap(lambda wi, ci: wi * wi * ci, w, c_diag))
        cross = sum_rows(rmap(lambda wa, wb, ci: wa * wb * ci, w[:-1], w[1:], c_off))
        return inner + 2 * cross

    return _Pass(
        rate=rate,
        chisq=jnp.where(usable, jnp.maximum(chisq, 0), zero),
        var_read=jnp.where(usable, read_var * quadratic(ar, br), zero),
        var_poisson=jnp.where(usable, guess * quadratic(ap, bp), zero),
        usable=usable,
    )


#: States of a pixel in the jump search (:func:`_jump_search_step`), int32 in every mode.
_DONE, _FIT_ONLY, _SEARCH = (np.int32(state) for state in range(3))


def _jump_search_step(d, mask, active, amp, *, read_var, guess, center, parts, two_ok,
                      thresholds):  # fmt: skip
    """One iteration of stcal's ``mask_jumps`` on every pixel (Brandt 2024b Sec. 4).

    ``d``, ``mask``: rows ``[m]`` of differences and their usable mask; ``active``: ``[P]``
    int32, 0 (done), 1 (fit only: the last search left at most three differences) or 2
    (search); ``amp`` None or ``[2, m, P]`` (jump amplitude and sigma per difference, in units
    of ``d``). The best single and the best pair omission are compared after subtracting
    their thresholds; the better one is masked if it passes its threshold. Returns the
    updated ``(mask [m, P], active, amp, rate)``: a pixel that is not searching keeps its
    mask; one that dropped something stays active (searching if it keeps more than three
    differences, else for one more fit), every other pixel is done. ``rate`` is each pixel's
    fit at ``guess`` with the mask it came in with, so a pixel's last step (the one that
    dropped nothing) fits its final mask.
    """
    m = len(d)
    dtype = d[0].dtype
    zero = jnp.zeros((), dtype)
    threshold_one, threshold_two = thresholds
    fit = _gls_pass(d, mask, read_var, guess, center, parts, two_ok[0], jumps=True)
    searching = active == _SEARCH
    i1, best1 = argmax_rows(fence(fit.dchisq_one))
    best1 = jnp.maximum(best1, 0)
    use_two = m >= 2 and any(two_ok[1])
    if use_two:
        i2, best2 = argmax_rows(fence(fit.dchisq_two))
        best2 = jnp.maximum(best2, 0)
    else:
        i2, best2 = jnp.zeros((), jnp.int32), zero
    one_better = best1 - threshold_one > best2 - threshold_two
    drop1 = searching & one_better & (best1 > threshold_one)
    drop2 = searching & ~one_better & (best2 > threshold_two)
    # materialised: the per-difference rows below are stacked into arrays, and XLA would
    # otherwise recompute the whole search for every row of the stack
    never = jnp.sum(read_var.reshape(-1)[:1]) == -jnp.inf  # False, not provably so
    i1, i2, drop1, drop2 = materialise((i1, i2, drop1, drop2), never)
    form = m + 1 if isinstance(d, list) else UNROLL_LIMIT + 1  # the form of ``d``
    positions = as_rows(np.arange(m), form)
    hit1 = rmap(lambda i: drop1 & (i == i1), positions)
    hit2a = rmap(lambda i: drop2 & (i == i2), positions)
    hit2b = rmap(lambda i: drop2 & (i == i2 + 1), positions)
    new_mask = rmap(lambda mk, h1, ha, hb: mk & ~(h1 | ha | hb), mask, hit1, hit2a, hit2b)
    more = sum_rows(rmap(lambda mk: mk.astype(jnp.int32), new_mask)) > 3
    active = jnp.where(drop1 | drop2, jnp.where(more, _SEARCH, _FIT_ONLY), _DONE)
    if amp is None:
        return stack_rows(new_mask), active, None, fit.rate
    # one omitted: jump b = r_i / P_ii, sigma P_ii**-1/2; pair: (b, c) = V^-1 (r_i, r_{i+1})
    resid, v = fit.resid, fit.v
    r1, v1 = take_rows(resid, i1), take_rows(v, i1)
    v1_safe = jnp.where(v1 > 0, v1, 1)
    b1, s1 = r1 / v1_safe, jax.lax.rsqrt(v1_safe)
    if use_two:
        j2 = jnp.minimum(i2 + 1, m - 1)
        ra, rb = take_rows(resid, i2), take_rows(resid, j2)
        va, vb = take_rows(v, i2), take_rows(v, j2)
        vab = take_rows(fit.v01, i2)
        det = va * vb - vab * vab
        det_safe = jnp.where(det > 0, det, 1)
        b2 = (vb * ra - vab * rb) / det_safe
        c2 = (va * rb - vab * ra) / det_safe
        sb2 = jnp.sqrt(jnp.maximum(vb / det_safe, 0))
        sc2 = jnp.sqrt(jnp.maximum(va / det_safe, 0))
    else:
        b2 = c2 = sb2 = sc2 = zero
    b1, s1, b2, c2, sb2, sc2 = materialise((b1, s1, b2, c2, sb2, sc2), never)

    def amplitude(h1, ha, hb, old_value, old_sigma):
        value = jnp.where(h1, b1, jnp.where(ha, b2, jnp.where(hb, c2, old_value)))
        sigma = jnp.where(h1, s1, jnp.where(ha, sb2, jnp.where(hb, sc2, old_sigma)))
        return value, sigma

    pairs = rmap(amplitude, hit1, hit2a, hit2b, as_rows(amp[0], form), as_rows(amp[1], form))
    if isinstance(pairs, list):
        values, sigmas = jnp.stack([p[0] for p in pairs]), jnp.stack([p[1] for p in pairs])
    else:
        values, sigmas = pairs
    return stack_rows(new_mask), active, jnp.stack([values, sigmas]), fit.rate


def _pattern_parts(pattern, dtype, form=None):
    """``delta`` (static tuple), the covariance parts as rows of the pattern's form
    (:func:`romanjax.kernels.linalg.as_rows`; of the form of ``form`` resultants if given)
    and the two-omit pairs as ``(rows, static tuple)``."""
    host = difference_covariance_parts(pattern)
    n = pattern.n_resultants if form is None else form
    delta = tuple(float(t) for t in host[0])
    two_ok = tuple(bool(t) for t in host[5])
    parts = (None,) + tuple(as_rows(jnp.asarray(p, dtype), n) for p in host[1:5]) + (None,)
    return delta, parts, (as_rows(jnp.asarray(two_ok, bool), n), two_ok)


def _prologue_kernel(ramp, dq, flux_estimate, *, pattern):
    """Scaled differences ``[m, P]`` [e/s], their usable mask ``[m, P]`` and the first rate
    guess ``[P]`` (centre, and covariance guess clipped at 0) [e/s] of ramps ``[n, P]``."""
    n = pattern.n_resultants
    dtype = ramp.dtype
    delta, _, _ = _pattern_parts(pattern, dtype)
    ramp_rows = as_rows(ramp, n)
    bad = rmap(lambda q: (q & dqflags.DO_NOT_USE_IN_FIT) != 0, as_rows(dq, n))
    d = rmap(lambda hi, lo, dt: (hi - lo) / dt, ramp_rows[1:], ramp_rows[:-1],
             as_rows(jnp.asarray(delta, dtype), n))  # fmt: skip
    mask = rmap(lambda lo, hi: ~lo & ~hi, bad[:-1], bad[1:])
    if flux_estimate is None:
        center = masked_median(stack_rows(d), stack_rows(mask))
    else:
        center = flux_estimate.astype(dtype)
    return stack_rows(d), stack_rows(mask), center


#: Most resultants of a pattern whose jump search is written out as straight-line code (rows
#: as lists, :func:`romanjax.kernels.linalg.as_rows`). The search runs on the compacted
#: queue of pixels that may still drop a difference (a small part of a fit's work), and its
#: program is the fitter's largest, so longer patterns (MA tables of 12 and 15 resultants
#: among them) search with loops over arrays: the same results, a program that does not
#: grow with the pattern, and little cost on a queue this small. The screen and the final
#: fits, which run on every pixel, stay written out up to ``UNROLL_LIMIT``.
SEARCH_UNROLL_LIMIT = 9


def search_form(n_resultants: int) -> int:
    """The pattern length whose row form the jump search over a pattern of ``n_resultants``
    takes: its own up to :data:`SEARCH_UNROLL_LIMIT`, else the array form."""
    return n_resultants if n_resultants <= SEARCH_UNROLL_LIMIT else UNROLL_LIMIT + 1


def _search_kernel(d, mask, active, amp, read_noise, center, thresholds, *, pattern):
    """One jump-search iteration (``d``, ``mask`` ``[m, P]``; ``amp`` None or
    ``[2, m, P]``), see ``_jump_search_step``."""
    n = search_form(pattern.n_resultants)
    _, parts, two_ok = _pattern_parts(pattern, d.dtype, n)
    return _jump_search_step(
        as_rows(d, n), as_rows(mask, n), active, amp,
        read_var=jnp.square(read_noise), guess=jnp.maximum(center, 0), center=center,
        parts=parts, two_ok=two_ok, thresholds=thresholds,
    )  # fmt: skip


def _first_guess_fit(d, mask, read_noise, center, *, pattern):
    """The GLS fit of ``d`` (``[m, P]``) with ``mask`` at the rate guess ``center`` (clipped
    at 0 for the variances), without jump terms: the screen's fit and the first of the two
    final passes are both this fit."""
    n = pattern.n_resultants
    _, parts, _ = _pattern_parts(pattern, d.dtype)
    return _gls_pass(as_rows(d, n), as_rows(mask, n), jnp.square(read_noise),
                     jnp.maximum(center, 0), center, parts, jumps=False)  # fmt: skip


def _screen_kernel(d, mask, read_noise, center, *, pattern):
    """Chi-square and rate of each pixel's fit at its first rate guess (all usable
    differences)."""
    fit = _first_guess_fit(d, mask, read_noise, center, pattern=pattern)
    return fit.chisq, fit.rate


def _first_pass_rate(d, mask, read_noise, center0, *, pattern):
    """Rate ``[P]`` of the fit of ``d`` (``[m, P]``) with ``mask`` at the first guess
    ``center0`` (the first of the two final passes)."""
    return _first_guess_fit(d, mask, read_noise, center0, pattern=pattern).rate


def _known_first_pass_rate(d, mask, read_noise, center0, known, *, pattern):
    """The first final pass's rate when the jump search has already computed it (``known``,
    ``[P]``: every pixel's last fit at ``center0`` with its final mask, from the screen or
    the search): ``known`` itself, and the derivatives of :func:`_first_pass_rate` (the
    search's own values carry none). The pass over every pixel so runs only under
    differentiation."""

    @jax.custom_jvp
    def rate(d, mask, read_noise, center0, known):
        return known

    @rate.defjvp
    def rate_jvp(primals, tangents):
        d, mask, read_noise, center0, known = primals
        dd, _, drn, dc, _ = tangents  # the mask's tangent is float0
        _, drate = jax.jvp(
            lambda d, rn, c: _first_pass_rate(d, mask, rn, c, pattern=pattern),
            (d, read_noise, center0), (dd, drn, dc))  # fmt: skip
        return known, drate

    return rate(d, mask, read_noise, center0, known)


def _final_kernel(d, mask0, mask, read_noise, center0, *, pattern, second_pass, center1=None):
    """The last fit(s) of each pixel: at the first guess with the final mask, then (if
    ``second_pass``) again at that rate clipped at 0 (Brandt 2024a debiasing). ``center1``,
    if given, is the first of these fits' rate (known from the jump search)."""
    n = pattern.n_resultants
    _, parts, _ = _pattern_parts(pattern, d.dtype)
    dl, ml = as_rows(d, n), as_rows(mask, n)
    read_var = jnp.square(read_noise)
    guess0 = jnp.maximum(center0, 0)
    if second_pass:
        if center1 is None:
            center1 = _first_pass_rate(d, mask, read_noise, center0, pattern=pattern)
        guess1 = jnp.maximum(center1, 0)
    else:
        center1, guess1 = center0, guess0
    final = _gls_pass(dl, ml, read_var, guess1, center1, parts, jumps=False)
    # a difference i masked by the search flags resultant i+1 (stcal's likely_ramp_fit)
    found = rmap(lambda before, after: before & ~after, as_rows(mask0, n), ml)
    jumps = jnp.concatenate([jnp.zeros_like(mask[:1]), stack_rows(found)])
    flags = pack_flags(jumps, ~final.usable)
    return (final.rate, final.var_read, final.var_poisson, final.var_read + final.var_poisson,
            final.chisq, flags)


def _jump_search(d, mask0, read_noise, center, thresholds, *, pattern, amplitudes):
    """stcal's ``mask_jumps`` over all pixels: ``d``, ``mask0`` ``[m, P]``; returns the final
    mask ``[m, P]``, (if ``amplitudes``) the jump amplitudes and sigmas ``[2, m, P]`` in
    units of the scaled differences, else None, and the rate ``[P]`` of every pixel's fit at
    ``center`` with its final mask (that of the screen, or of the pixel's last search step).

    A cheap chi-square screen over every pixel decides which pixels can drop anything in
    the first iteration; later iterations run only on the pixels whose mask just changed and
    that keep more than three differences (stcal's ``recheck``). The searching pixels are
    compacted (:func:`romanjax.kernels.queue.compact`, as every data-dependent subset in the
    fitters) into batches of a fixed size (a work queue in a ``lax.while_loop``), so the cost
    follows the number of pixels with jumps, not the number of iterations times the frame.
    """
    m, npix = d.shape
    step = partial(_search_kernel, thresholds=thresholds, pattern=pattern)
    amp = jnp.zeros((2, m, npix), d.dtype) if amplitudes else None
    # Screen: omitting differences can improve chi-square by at most the chi-square of the
    # full fit, so a pixel whose chi-square is below both thresholds cannot drop anything in
    # the first iteration (and is done). Only the others enter the search (a small margin
    # keeps rounding at the boundary on the safe side).
    chisq, rate = _screen_kernel(d, mask0, read_noise, center, pattern=pattern)
    limit = jnp.minimum(thresholds[0], thresholds[1]) * (1 - 1e-3)
    # a pixel that drops something in its last search step keeps its place in the queue for
    # one more step that only fits (_FIT_ONLY), so that every pixel's last step fits its
    # final mask and gives the first final pass's rate
    state = (mask0, jnp.where(chisq > limit, _SEARCH, _DONE), amp, rate)
    size = queue_size(npix)

    def cond(state):
        return jnp.any(state[1] != _DONE)

    def body(state):
        mask, active, amp, rate = state
        index = compact(active != _DONE, size)
        take = jnp.minimum(index, npix - 1)
        valid = index < npix
        sub_mask, sub_active, sub_amp, sub_rate = step(
            d[:, take], mask[:, take], jnp.where(valid, active[take], _DONE),
            None if amp is None else amp[:, :, take], read_noise[take], center[take],
        )  # fmt: skip
        mask = mask.at[:, index].set(sub_mask, mode="drop")
        active = active.at[index].set(sub_active, mode="drop")
        rate = rate.at[index].set(sub_rate, mode="drop")
        if amp is not None:
            amp = amp.at[:, :, index].set(sub_amp, mode="drop")
        return mask, active, amp, rate

    mask, _, amp, rate = jax.lax.while_loop(cond, body, state)
    return mask, amp, rate


@partial(jax.jit, static_argnames=("pattern", "detect_jumps", "with_jumps"))
def _fit_likely(resultants, dq, read_noise, flux_estimate, thresholds, *, pattern,
                detect_jumps, with_jumps):  # fmt: skip
    n = pattern.n_resultants
    dtype = resultants.dtype
    pixels = resultants.shape[1:]
    ramps = resultants.reshape(n, -1)
    # dq None: the zero flags are made here, inside the jit
    flat_dq = jnp.zeros(ramps.shape, jnp.uint32) if dq is None else dq.reshape(n, -1)
    ramps, flat_dq, left_out = exclude_non_finite(ramps, flat_dq)  # left out like flags
    thresholds = tuple(jnp.asarray(t, dtype) for t in thresholds)
    prologue = partial(_prologue_kernel, pattern=pattern)
    final = partial(_final_kernel, pattern=pattern, second_pass=flux_estimate is None)
    delta, _, _ = _pattern_parts(pattern, dtype)

    def flat_fit(ramps, flat_dq, read_noise, flux_estimate):
        d, mask0, center = prologue(ramps, flat_dq, flux_estimate)
        # materialised: read by every later stage, which would otherwise each recompute the
        # median's sorting network
        never = jnp.sum(read_noise[:1]) == -jnp.inf  # False, not provably so
        d, mask0, center = materialise((d, mask0, center), never)
        center1 = None  # the first final pass's rate, when already known
        if detect_jumps:
            # the mask is piecewise constant in the data: no gradient through the search
            mask, amp, searched_rate = _jump_search(
                jax.lax.stop_gradient(d), mask0, jax.lax.stop_gradient(read_noise),
                jax.lax.stop_gradient(center), thresholds, pattern=pattern,
                amplitudes=with_jumps,
            )  # fmt: skip
            if flux_estimate is None:  # the search made the first final pass's fits
                center1 = _known_first_pass_rate(d, mask, read_noise, center, searched_rate,
                                                 pattern=pattern)  # fmt: skip
        else:
            mask, amp = mask0, jnp.zeros((2,) + d.shape, dtype)
        rows = final(d, mask0, mask, read_noise, center, center1=center1)
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
    flags = mark_left_out(flags, left_out)
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
        from ..host.frames import fit_on_device

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
