"""The "optimal" full-covariance ramp fitter with interpolated weights (romanisim's
``RampFitInterpolator``), as a pure JAX kernel.

Generalized least squares on the differences ``d`` (see :mod:`._covariance`):
``k = (A^T C^-1 A)^-1 A^T C^-1`` and ``par = k d``. After dividing by sigma**2 the weights
depend on one number, ``x = f / sigma**2``, so ``k(x)`` and the parameter covariances are
computed once per read pattern on a grid in ``x`` (float64, on the host) and interpolated per
pixel with a not-a-knot cubic spline in linear ``x``. Spline weights sum to one, so the
interpolated ``k`` still satisfies ``k A = I``: noiseless ramps are fitted exactly whatever
the interpolation error.

Evaluation (``dq=None``): elementwise over pixel rows (pixels last). Each pixel's knot interval
is found from ``log10(x)`` (the knots are log-spaced), then the cubic's coefficients of the
weights and 6 distinct covariance entries are gathered from a
``[4, 2 n + 6, m - 1]`` table (all but the weights of ``R_0``, which are exactly (1, 0): the
gathers are most of the work); pedestal, slope and covariance entries are separate ``[P]``
rows, which XLA compiles to vectorised loops and which are the ``RampFit`` fields (a vmapped
per-pixel kernel gathering ``[4, 2 n + 8]`` per pixel compiles to scalar loops instead).
With ``dq`` the weights are computed exactly per pixel instead (see ``_optimal_dq_kernel``).
"""

from __future__ import annotations

from functools import lru_cache, partial

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from .. import dq as dqflags
from .._platform import materialise
from .._read_pattern import ReadPattern
from .._validate import prepare_inputs
from ..kernels.linalg import (
    as_rows,
    fence,
    prepend_row,
    rmap,
    stack_rows,
    sum_rows,
    tridiagonal_solve,
)
from ..kernels.order import masked_median, median_axis0
from ..kernels.queue import compact
from ._common import (
    RampFit,
    exclude_non_finite,
    flag_words,
    map_pixels,
    mark_left_out,
    pack_flags,
    refit_capacity,
    refit_if_non_finite,
    through_frames,
    unfitted_flags,
)
from ._covariance import covariance_parts, design_matrix

__all__ = ["fit_ramps_optimal", "optimal_weight_grid", "DEFAULT_GRID"]

#: Default grid of ``flux / read_noise**2`` [1/s / e]: 200 log-spaced knots over 1e-5..1e5.
DEFAULT_GRID = (-5.0, 5.0, 200)


def exact_weights(pattern: ReadPattern, x: np.ndarray):
    """Exact GLS weights and covariances at ``x = f / sigma**2`` (float64, host).

    Returns
    -------
    k : ``[len(x), 2, n]``
        Rows (pedestal, slope) applied to the differences.
    var_read : ``[len(x), 2, 2]``
        ``k C_read k^T``: parameter covariance per unit sigma**2.
    var_poisson_per_flux : ``[len(x), 2, 2]``
        ``k C_poisson k^T``: parameter covariance per unit flux [e/s].
    """
    read_part, poisson_part = covariance_parts(pattern)
    a = design_matrix(pattern)
    covs = read_part[None] + np.asarray(x, np.float64)[:, None, None] * poisson_part[None]
    c_inv_a = np.linalg.solve(covs, np.broadcast_to(a, covs.shape[:1] + a.shape))
    normal = np.einsum("ni,xnj->xij", a, c_inv_a)  # A^T C^-1 A
    k = np.linalg.solve(normal, np.swapaxes(c_inv_a, 1, 2))  # (A^T C^-1 A)^-1 A^T C^-1
    var_read = np.einsum("xin,nm,xjm->xij", k, read_part, k)
    var_poisson = np.einsum("xin,nm,xjm->xij", k, poisson_part, k)
    return k, var_read, var_poisson


def not_a_knot_spline(knots: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Coefficients of the not-a-knot cubic spline through ``values`` at ``knots``.

    Parameters
    ----------
    knots : ``[m]`` strictly increasing, m >= 4.
    values : ``[m, p]``

    Returns
    -------
    ``[m - 1, 4, p]``: on interval j, ``y = c0 + c1 t + c2 t**2 + c3 t**3`` with
    ``t = x - knots[j]``.
    """
    h = np.diff(knots)
    secant = np.diff(values, axis=0) / h[:, None]
    m = len(knots)
    system = np.zeros((m, m))
    rhs = np.zeros((m,) + values.shape[1:])
    # interior: continuity of the second derivative, in terms of the knot slopes s_j
    for j in range(1, m - 1):
        system[j, j - 1] = h[j]
        system[j, j] = 2 * (h[j - 1] + h[j])
        system[j, j + 1] = h[j - 1]
        rhs[j] = 3 * (h[j] * secant[j - 1] + h[j - 1] * secant[j])
    # not-a-knot: the third derivative is continuous at the second and second-last knots
    span = knots[2] - knots[0]
    system[0, 0], system[0, 1] = h[1], span
    rhs[0] = ((h[0] + 2 * span) * h[1] * secant[0] + h[0] ** 2 * secant[1]) / span
    span = knots[-1] - knots[-3]
    system[-1, -1], system[-1, -2] = h[-2], span
    rhs[-1] = (h[-1] ** 2 * secant[-2] + (2 * span + h[-1]) * h[-2] * secant[-1]) / span
    slopes = np.linalg.solve(system, rhs)
    hh = h[:, None]
    c0 = values[:-1]
    c1 = slopes[:-1]
    c2 = (3 * secant - 2 * slopes[:-1] - slopes[1:]) / hh
    c3 = (slopes[:-1] + slopes[1:] - 2 * secant) / hh**2
    return np.stack([c0, c1, c2, c3], axis=1)


@lru_cache(maxsize=64)
def optimal_weight_grid(pattern: ReadPattern, grid: tuple = DEFAULT_GRID):
    """Knots and spline coefficients of the optimal weights for ``pattern`` (cached).

    Parameters
    ----------
    pattern : ReadPattern
    grid : (log10 lower, log10 upper, number of knots)
        Knots ``10**linspace(*grid)`` in ``x = flux / read_noise**2``.

    Returns
    -------
    knots : numpy.ndarray ``[m]``
    coefficients : numpy.ndarray ``[m - 1, 4, 2 n + 8]``
        Per interval, the cubic coefficients of the flattened
        ``(k [2, n], var_read [2, 2], var_poisson_per_flux [2, 2])``.
    """
    low, high, count = grid
    if not (count >= 4 and high > low):
        raise ValueError(f"optimal_weight_grid: `grid` needs >= 4 knots and high > low: {grid}")
    knots = 10.0 ** np.linspace(low, high, int(count))
    k, var_read, var_poisson = exact_weights(pattern, knots)
    values = np.concatenate(
        [k.reshape(len(knots), -1), var_read.reshape(len(knots), 4),
         var_poisson.reshape(len(knots), 4)], axis=1,
    )  # fmt: skip
    return knots, not_a_knot_spline(knots, values)


@lru_cache(maxsize=64)
def _interpolation_table(pattern: ReadPattern, grid: tuple):
    """The spline table of :func:`optimal_weight_grid` in the layout the fitter reads.

    Returns
    -------
    knots : numpy.ndarray ``[m]``
    table : numpy.ndarray ``[4, 2 n + 6, m - 1]``
        ``table[p, q, j]``: coefficient of ``t**p`` on interval j of quantity q, the
        quantities being ``k`` (pedestal row, then slope row, ``2 n``) and the distinct
        entries (00, 01, 11) of ``var_read`` and then of ``var_poisson_per_flux``. One
        contiguous row over the intervals per (power, quantity): each coefficient is a single
        gather per pixel, and the symmetric duplicates (10) are not interpolated.
    """
    knots, coefficients = optimal_weight_grid(pattern, grid)
    n = pattern.n_resultants
    keep = list(range(2 * n)) + [2 * n + i for i in (0, 1, 3, 4, 5, 7)]
    table = np.ascontiguousarray(np.transpose(coefficients[:, :, keep], (1, 2, 0)))
    return knots, table


def _grid_interval(x, knots, low: float, high: float):
    """Index j of the knot interval holding ``x`` (``knots[j] <= x < knots[j + 1]``, clipped to
    ``0 .. m - 2``), as ``searchsorted(knots, x, side="right") - 1``, but computed from
    ``log10(x)`` (the knots are ``10**linspace(low, high, m)``) and corrected by one
    comparison each way for rounding. ``x`` must be finite and positive."""
    m = knots.shape[0]
    g = (jnp.log10(x) - low) * ((m - 1) / (high - low))
    j = jnp.clip(jnp.floor(g), 0, m - 2).astype(jnp.int32)
    j = jnp.where(x < jnp.take(knots, j, mode="clip"), jnp.maximum(j - 1, 0), j)
    return jnp.where(x >= jnp.take(knots, j + 1, mode="clip"), jnp.minimum(j + 1, m - 2), j)


def _optimal_rows(differences, read_noise, flux_estimate, *, pattern, grid):
    """The interpolated GLS fit, elementwise over pixels (one pixel if the inputs are scalars).

    Parameters
    ----------
    differences : list of n arrays ``[P]``
        ``R_0, R_1 - R_0, ...`` [e].
    read_noise, flux_estimate : arrays ``[P]``
        [e] and [e/s]; ``flux_estimate`` None: median difference slope.

    Returns
    -------
    ``(pedestal, slope, var_read, var_poisson)``: arrays ``[P]`` [e], [e/s] and two lists of
    the (00, 01, 11) covariance entries.

    Notes
    -----
    Written on rows with the pixels last, not as a vmapped one-pixel kernel: each result is a
    separate elementwise loop in which the spline coefficients are gathered once per pixel
    with the interval found from ``log10(x)``, which XLA vectorises; the previous
    ``coefficients[interval]`` per pixel materialised ``[P, 4, 2 n + 8]`` and was ~3x slower.
    """
    n = pattern.n_resultants
    dtype = differences[0].dtype
    low, high, _ = grid
    knots_np, table_np = _interpolation_table(pattern, grid)
    knots = jnp.asarray(knots_np, dtype)
    table = jnp.asarray(table_np, dtype)
    read_var = jnp.square(read_noise)
    flag = jnp.any(jnp.ravel(read_var)[:1] == -jnp.inf)  # runtime False (also for 0 pixels)
    if flux_estimate is None:
        delta = np.diff(pattern.tbar)
        flux_estimate = median_axis0(
            jnp.stack([differences[i] / delta[i - 1].item() for i in range(1, n)])
        )
        # materialise the median: fused into the interval search below, whose gathers make
        # XLA CPU emit a scalar loop, its sorting network would run in that scalar loop too
        flux_estimate = materialise(flux_estimate, flag)
    has_read_noise = read_var > 0
    safe_read_var = jnp.where(has_read_noise, read_var, 1)
    x = jnp.where(has_read_noise, flux_estimate / safe_read_var, jnp.inf)
    x = jnp.clip(x, knots[0], knots[-1])
    x = jnp.where(jnp.isnan(x), knots[0], x)  # non-finite estimate: treat as read-noise limited
    interval = _grid_interval(x, knots, low, high)
    t = x - jnp.take(knots, interval, mode="clip")
    # materialise the per-pixel interval and offset: when this is inlined into a larger jit
    # (a user's own jax.jit around the fitter) XLA otherwise recomputes the median and the
    # interval search inside every one of the 2n + 4 gathered quantities (~5x slower)
    x, interval, t = materialise((x, interval, t), flag)

    def value(q):  # quantity q of the table at x (Horner)
        c = [jnp.take(table[p, q], interval, mode="clip") for p in range(4)]
        return c[0] + t * (c[1] + t * (c[2] + t * c[3]))

    # k A = I and the pedestal column of A is e_0 (the pedestal enters only R_0), so
    # k[:, 0] = (1, 0) exactly at every x: those two of the 2 n weights are not interpolated
    pedestal = differences[0] + sum(value(i) * differences[i] for i in range(1, n))
    slope = sum(value(n + i) * differences[i] for i in range(1, n))
    # Poisson variance at the (clipped) flux the weights were evaluated at, as romanisim; with
    # zero read noise the flux estimate itself, floored at 0.
    poisson_flux = jnp.where(has_read_noise, x * read_var, jnp.maximum(flux_estimate, 0))
    var_read = [read_var * value(2 * n + a) for a in range(3)]
    var_poisson = [poisson_flux * value(2 * n + 3 + a) for a in range(3)]
    return pedestal, slope, var_read, var_poisson


@partial(jax.jit, static_argnames=("pattern", "grid"))
def _refit_non_finite(outputs, unusable, flat, read_noise, *flux_estimate, pattern, grid):
    """The whole-ramp fit's ``outputs`` (pedestal, slope ``[m]``; the read, Poisson and total
    variance entries, lists of three ``[m]``) of device data, with every pixel that has a
    non-finite resultant in ``flat`` (``[n, m]``; ``unusable [m]``) zeroed and then refitted
    from its finite resultants by the masked fit, as many as fit one fixed-size batch
    (:func:`~._common.refit_capacity`); the rest stay unfitted. Returns the outputs and the
    :attr:`RampFit.flags` words ``[flag_words(n), m]`` (unfitted and left-out bits).

    One ``jax.jit``: the platform branches that call it trace it once."""
    n, npix = flat.shape
    zero = jnp.zeros((), flat.dtype)
    pedestal, slope, var_read, var_poisson, var_total = jax.tree_util.tree_map(
        lambda value: jnp.where(unusable, zero, value), outputs)
    index = compact(unusable, refit_capacity(npix))
    take = jnp.minimum(index, npix - 1)
    sub, sub_dq, _ = exclude_non_finite(flat[:, take], jnp.zeros((n, take.shape[0]), jnp.uint32))
    low, high, _ = grid
    par, var, fitted = _optimal_dq_kernel(
        sub, sub_dq, read_noise[take], flux_estimate[0][take] if flux_estimate else None,
        pattern=pattern, x_low=10.0**low, x_high=10.0**high)  # fmt: skip

    def put(values, new):
        return values.at[index].set(new, mode="drop")

    entries = ((0, 0), (0, 1), (1, 1))  # pedestal variance, covariance, slope variance
    pedestal, slope = put(pedestal, par[0]), put(slope, par[1])
    var_read, var_poisson, var_total = (
        [put(v, new[e]) for v, e in zip(values, entries, strict=True)]
        for values, new in zip((var_read, var_poisson, var_total), var, strict=True))
    unusable = unusable.at[index].set(~fitted, mode="drop")
    flags = mark_left_out(unfitted_flags(unusable, n), ~jnp.isfinite(flat))
    return (pedestal, slope, var_read, var_poisson, var_total), flags


@partial(jax.jit, static_argnames=("pattern", "grid", "flag_non_finite"))
def _fit_optimal(resultants, read_noise, flux_estimate, *, pattern, grid, flag_non_finite=False):
    """The dq=None fit: the interpolated GLS of :func:`_optimal_rows` as ``[*pixels]`` rows.

    ``flag_non_finite`` (device data): a pixel with a non-finite resultant is refitted from
    its finite resultants by the masked fit, in one fixed-size batch
    (:func:`_refit_non_finite`); pixels beyond the batch are not fitted (zeros, the
    unfitted flag) rather than NaN. The test reads the resultants; testing the outputs
    instead would make every output depend on all the others, which XLA answers by
    recomputing the weights per output. On CPUs all of it runs only for a frame that has
    such a pixel (:func:`~._common.refit_if_non_finite`): otherwise the zeroing and the
    batch's scatters into the outputs keep XLA from computing the outputs in one fused pass
    (their shared weights are then written out and read back), which doubles the fit's
    time."""
    n = pattern.n_resultants
    pixels = resultants.shape[1:]
    flat = resultants.reshape(n, -1)
    differences = [flat[0]] + [flat[i] - flat[i - 1] for i in range(1, n)]
    if flux_estimate is not None:
        flux_estimate = flux_estimate.reshape(-1)
    pedestal, slope, var_read, var_poisson = _optimal_rows(
        differences, read_noise.reshape(-1), flux_estimate, pattern=pattern, grid=grid
    )
    var_total = [a + b for a, b in zip(var_read, var_poisson, strict=True)]
    flags = None
    if flag_non_finite:
        outputs = (pedestal, slope, var_read, var_poisson, var_total)
        columns = [flat, read_noise.reshape(-1)]
        if flux_estimate is not None:
            columns.append(flux_estimate)
        refit = partial(_refit_non_finite, pattern=pattern, grid=grid)

        def when_finite(outputs, *_):  # nothing to refit or flag
            return outputs, jnp.zeros((flag_words(n), flat.shape[1]), jnp.uint32)

        unusable = ~jnp.all(jnp.isfinite(flat), axis=0)
        outputs, flags = refit_if_non_finite(unusable, refit, when_finite, outputs, unusable,
                                             *columns)  # fmt: skip
        pedestal, slope, var_read, var_poisson, var_total = outputs
        flags = flags.reshape(flags.shape[:1] + pixels)

    def rows(values):
        return jnp.stack(values).reshape((len(values),) + pixels)

    return RampFit(
        slope=slope.reshape(pixels), var_read=var_read[2].reshape(pixels),
        var_poisson=var_poisson[2].reshape(pixels), var_total=var_total[2].reshape(pixels),
        flags=flags, pedestal=pedestal.reshape(pixels),
        var_pedestal=rows([var_read[0], var_poisson[0], var_total[0]]),
        cov_pedestal_slope=rows([var_read[1], var_poisson[1], var_total[1]]),
        n_resultants=n,
    )  # fmt: skip


def _tridiagonal_parts(pattern: ReadPattern):
    """Diagonals of the read and Poisson parts of the difference covariance (host, float64):
    ``(read_diag [n], read_off [n-1], poisson_diag [n], poisson_off [n-1])``."""
    read_part, poisson_part = covariance_parts(pattern)
    return (np.diag(read_part).copy(), np.diag(read_part, 1).copy(),
            np.diag(poisson_part).copy(), np.diag(poisson_part, 1).copy())  # fmt: skip


def _optimal_dq_kernel(ramp, dq, read_noise, flux_estimate, *, pattern, x_low, x_high):
    """Exact GLS of (pedestal, slope) on the usable differences of each ramp, on pixel-minor
    rows: ``ramp``, ``dq`` ``[n, P]``; ``read_noise``, ``flux_estimate`` (or None) ``[P]``.
    Returns ``par [2, P]``, ``var [3, 2, 2, P]`` and ``fitted [P]``.

    Differences ``u_0 = R_0``, ``u_i = R_i - R_{i-1}``; ``u_i`` is usable when neither
    resultant it touches is flagged (``dq & DO_NOT_USE_IN_FIT``). Unusable differences are
    decoupled exactly (their row and column of C and of the design matrix zeroed, Brandt
    2024a ``diffs2use``), which is the optimal combination of the sub-ramps between flagged
    resultants: the differences of different sub-ramps are uncorrelated once the differences
    between them are removed. The pedestal is estimated only when ``R_0`` is usable (it enters
    only ``u_0``); otherwise it is 0 with zero variance. Solved in O(n) with a tridiagonal
    (Thomas) solve for ``C^-1 [a_pedestal, a_slope, u]``.
    """
    n = pattern.n_resultants
    dtype = ramp.dtype
    tbar = float(pattern.tbar[0])
    delta = [float(t) for t in np.diff(pattern.tbar)]
    cr, er, cp, ep = (as_rows(jnp.asarray(p, dtype), n) for p in _tridiagonal_parts(pattern))
    r = as_rows(ramp, n)
    bad = rmap(lambda q: (q & dqflags.DO_NOT_USE_IN_FIT) != 0, as_rows(dq, n))
    mask = prepend_row(~bad[0], rmap(lambda lo, hi: ~lo & ~hi, bad[:-1], bad[1:]))
    u_rest = rmap(jnp.subtract, r[1:], r[:-1])
    if flux_estimate is None:
        slopes = rmap(jnp.divide, u_rest, as_rows(jnp.asarray(delta, dtype), n))
        flux_estimate = masked_median(stack_rows(slopes), stack_rows(mask[1:]))
    flux_estimate = flux_estimate.astype(dtype)
    # weights at x = flux / read_noise**2 clipped to the interpolation grid, as dq=None
    read_var = jnp.square(read_noise)
    has_read_noise = read_var > 0
    x = jnp.where(has_read_noise, flux_estimate / jnp.where(has_read_noise, read_var, 1), x_high)
    x = jnp.where(jnp.isnan(x), x_low, jnp.clip(x, x_low, x_high))
    poisson_flux = jnp.where(has_read_noise, x * read_var, jnp.maximum(flux_estimate, 0))
    # materialised: every row below reads them, and XLA would otherwise recompute the
    # median's sorting network in each
    never = jnp.sum(read_var[:1]) == -jnp.inf  # False, not provably so
    flux_estimate, x = materialise((flux_estimate, x), never)
    mf = rmap(lambda mk: mk.astype(dtype), mask)
    diag = rmap(lambda mk, c_r, c_p: jnp.where(mk, c_r + x * c_p, 1), mask, cr, cp)
    off = rmap(lambda e_r, e_p, m0, m1: (e_r + x * e_p) * (m0 * m1), er, ep, mf[:-1], mf[1:])
    # design columns (pedestal, slope) of the usable differences; centre the data on the
    # model at the flux estimate so float32 keeps its precision: the pedestal column is
    # nonzero only in row 0, the slope column is tbar_0 there and Delta_i below
    a1_rest = rmap(jnp.multiply, mf[1:], as_rows(jnp.asarray(delta, dtype), n))
    ped_ref = jnp.where(mask[0], r[0] - flux_estimate * tbar, 0)
    u_first = jnp.where(mask[0], r[0] - ped_ref - flux_estimate * mf[0] * tbar, 0)
    u_c = prepend_row(u_first, rmap(lambda mk, ui, ai: jnp.where(mk, ui - flux_estimate * ai, 0),
                                    mask[1:], u_rest, a1_rest))  # fmt: skip
    a0 = prepend_row(mf[0], rmap(jnp.zeros_like, mf[1:]))
    a1 = prepend_row(mf[0] * tbar, a1_rest)
    x0, x1, y = fence(tridiagonal_solve(diag, off, [a0, a1, u_c]))
    # a0 is zero below row 0
    n00, n01, b0 = mf[0] * x0[0], mf[0] * x1[0], mf[0] * y[0]
    n11 = sum_rows(rmap(jnp.multiply, a1, x1))
    b1 = sum_rows(rmap(jnp.multiply, a1, y))
    slope_ok = sum_rows(rmap(lambda mk: mk.astype(jnp.int32), mask[1:])) > 0
    n00 = jnp.where(mask[0], n00, 1)  # no pedestal information: fix it (its row is zero)
    det = n00 * n11 - n01 * n01
    det = jnp.where(slope_ok & (det > 0), det, 1)
    i00, i01, i11 = n11 / det, -n01 / det, n00 / det
    par = jnp.stack([ped_ref + i00 * b0 + i01 * b1, flux_estimate + i01 * b0 + i11 * b1])
    # rows of K = N^-1 A^T C^-1
    k = (rmap(lambda p, q: i00 * p + i01 * q, x0, x1), rmap(lambda p, q: i01 * p + i11 * q, x0, x1))

    def quadratic(c_diag, c_off):
        """``K C K^T`` ``[2, 2, P]`` for the tridiagonal C (diagonals ``c_diag``, ``c_off``)."""
        def entry(ka, kb):
            inner = sum_rows(rmap(lambda p, q, c: p * q * c, ka, kb, c_diag))
            cross = rmap(lambda c, pa, pb, qa, qb: c * (pa * qb + pb * qa),
                         c_off, ka[:-1], ka[1:], kb[:-1], kb[1:])  # fmt: skip
            return inner + sum_rows(cross)

        q01 = entry(k[0], k[1])
        return jnp.stack([jnp.stack([entry(k[0], k[0]), q01]),
                          jnp.stack([q01, entry(k[1], k[1])])])  # fmt: skip

    var_read = read_var * quadratic(cr, er)
    var_poisson = poisson_flux * quadratic(cp, ep)
    var = jnp.stack([var_read, var_poisson, var_read + var_poisson])
    zero = jnp.zeros((), dtype)
    par = jnp.where(slope_ok, par, zero)
    var = jnp.where(slope_ok, var, zero)
    return par, var, slope_ok


@partial(jax.jit, static_argnames=("pattern", "grid"))
def _fit_optimal_dq(resultants, dq, read_noise, flux_estimate, *, pattern, grid):
    resultants, dq, left_out = exclude_non_finite(resultants, dq)  # left out like flags
    low, high, _ = grid
    kernel = partial(_optimal_dq_kernel, pattern=pattern, x_low=10.0**low, x_high=10.0**high)
    par, var, fitted = map_pixels(kernel, resultants, dq, read_noise, flux_estimate)
    n = pattern.n_resultants
    no_jumps = [jnp.zeros(fitted.shape, bool)] * n
    return RampFit(
        slope=par[1], var_read=var[0, 1, 1], var_poisson=var[1, 1, 1], var_total=var[2, 1, 1],
        flags=pack_flags(no_jumps, ~fitted, left_out), pedestal=par[0], var_pedestal=var[:, 0, 0],
        cov_pedestal_slope=var[:, 0, 1], n_resultants=n,
    )  # fmt: skip


def fit_ramps_optimal(resultants: ArrayLike, pattern: ReadPattern, read_noise: ArrayLike, *,
                      flux_estimate: ArrayLike | None = None, dq: ArrayLike | None = None,
                      grid: tuple[float, float, int] = DEFAULT_GRID) -> RampFit:  # fmt: skip
    """Fit ramps by full-covariance least squares with interpolated optimal weights.

    The romanisim "optimal" fitter (``RampFitInterpolator.fit_ramps``): generalized least
    squares on the resultant differences, ``k = (A^T C^-1 A)^-1 A^T C^-1``, with ``k`` and the
    parameter covariances precomputed on a grid of ``x = flux / read_noise**2`` and
    interpolated per pixel (not-a-knot cubic spline in linear x, x clipped to the grid).

    Parameters
    ----------
    resultants : array ``[n_resultant, *pixels]``
        Resultants [e].
    pattern : ReadPattern
        Static read pattern.
    read_noise : float or array broadcasting to ``[*pixels]``
        Read noise of one read [e].
    flux_estimate : float or array broadcasting to ``[*pixels]``, optional
        Count rate [e/s] at which the weights and the Poisson variance are evaluated. Default:
        per-pixel median of the difference slopes ``(R_i - R_{i-1}) / (tbar_i - tbar_{i-1})``.
    dq : array ``[n_resultant, *pixels]``, optional
        Resultant flags. If given, resultants with ``dq & DO_NOT_USE_IN_FIT`` (DO_NOT_USE,
        saturated tails, jumps) are excluded: the differences touching them are removed exactly
        (decoupled from the tridiagonal covariance), which combines the sub-ramps between
        flagged resultants optimally, and the GLS is solved exactly per pixel in O(n) at the
        same clipped ``x`` (no interpolation; it agrees with the ``dq=None`` result to the
        grid's interpolation error when nothing is flagged). The pedestal is fitted only if
        resultant 0 is usable (else 0 with zero variance). The default flux estimate is the
        median of the usable difference slopes. Pixels without a usable difference between two
        resultants get slope, pedestal and variances 0 and ``DO_NOT_USE`` on every resultant.
    grid : (log10 low, log10 high, knots), optional
        The interpolation grid in x; default ``(-5, 5, 200)`` as romanisim.

    Returns
    -------
    RampFit
        ``slope [*pixels]`` [e/s], ``pedestal [*pixels]`` [e]; the slope variances
        ``var_read``, ``var_poisson``, ``var_total`` and the pedestal's ``var_pedestal``,
        ``cov_pedestal_slope`` (``[3, *pixels]``: read, Poisson, total), the read part
        ``read_noise**2 k C_r k^T`` and the Poisson part ``f k C_p k^T`` with f the clipped
        grid flux ``x * read_noise**2`` (``max(flux_estimate, 0)`` where the read noise is 0);
        ``par``/``var`` give romanisim's layout. ``flags``: with ``dq``, ``DO_NOT_USE`` on
        unfittable pixels; None without.

    Raises
    ------
    ValueError
        If shapes do not match the pattern or the pattern has fewer than two resultants.

    Notes
    -----
    Romanisim evaluates the weights with float32 inverses; here the grid is computed in
    float64 and cast to the dtype of ``resultants``.
    """
    kwargs = dict(flux_estimate=flux_estimate, dq=dq, grid=grid)
    if through_frames(resultants, pattern, read_noise, dq, flux_estimate):
        from ..host.frames import fit_on_device

        return fit_on_device("optimal", resultants, pattern, read_noise, **kwargs)
    return _fit_ramps_optimal(resultants, pattern, read_noise, **kwargs)


def _fit_ramps_optimal(resultants, pattern, read_noise, *, flux_estimate=None, dq=None,
                       grid=DEFAULT_GRID, checked_on_host=False):  # fmt: skip
    # host data was checked for NaN/inf on the host (and sent to the masked path if it has
    # any; the frame driver checks its chunks); device data and traced values are checked
    # inside the program
    on_device = isinstance(resultants, jax.Array) and not checked_on_host
    resultants, dq, per_pixel = prepare_inputs(
        "fit_ramps_optimal", resultants, pattern, dq, make_dq=False,
        read_noise=read_noise, flux_estimate=flux_estimate,
    )  # fmt: skip
    read_noise, flux_estimate = per_pixel["read_noise"], per_pixel["flux_estimate"]
    if pattern.n_resultants < 2:
        raise ValueError("fit_ramps_optimal: the read `pattern` needs at least two resultants")
    low, high, count = grid
    if not (count >= 4 and high > low):
        raise ValueError(f"fit_ramps_optimal: `grid` needs >= 4 knots and high > low: {grid}")
    if dq is not None:
        return _fit_optimal_dq(resultants, dq, read_noise, flux_estimate, pattern=pattern,
                               grid=tuple(grid))  # fmt: skip
    return _fit_optimal(resultants, read_noise, flux_estimate, pattern=pattern, grid=tuple(grid),
                        flag_non_finite=on_device)
