"""Differentiable forward modelling of ramps: expected resultants, the exact Gaussian
log-likelihood of observed resultants, and the Fisher (Cramér-Rao) bound on the slope.

Model (Casertano 2022; Brandt 2024a Eqs. 4, 11, 28-29). A pixel with count rate f [e/s],
pedestal p [e] and read noise sigma [e per read] read out with a :class:`~romanjax.ReadPattern`
has Gaussian resultants with

* mean ``E[R_i] = p + f tbar_i``,
* variance ``Var(R_i) = sigma**2 / N_i + f tau_i``,
* covariance ``Cov(R_i, R_j) = f tbar_i`` for ``i < j``.

The map ``R -> d = [R_0, R_1 - R_0, ...]`` is linear with unit Jacobian determinant, so the
density of ``R`` equals the density of ``d``, whose covariance is tridiagonal (see
:mod:`romanjax.ramp._covariance`). The log-likelihood is evaluated through an ``L D L^T``
factorisation of that tridiagonal matrix (a continued-fraction recurrence, written out over
the resultants), in O(n) per pixel, with no dense inverse: ``log det C = sum log D_i``
and the quadratic form is ``sum y_i**2 / D_i`` with ``L y = d - E[d]``.

Everything here is pure ``jax.numpy`` / ``lax``: usable under ``jit``, ``vmap``, ``grad``,
``jacfwd`` and ``hessian`` with respect to the flux, the pedestal, the read noise and the
resultants. The read pattern is static.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from ._read_pattern import ReadPattern
from ._validate import check_pattern, promoted_float_dtype
from .ramp._covariance import covariance_parts

__all__ = [
    "expected_resultants",
    "ramp_log_likelihood",
    "fisher_information",
    "fisher_slope_variance",
]

_LOG_2PI = float(np.log(2 * np.pi))


def _broadcast_shape(function: str, **arrays) -> tuple[int, ...]:
    # a tuple is taken as a shape, anything else as an array
    shapes = {
        name: value if isinstance(value, tuple) else np.shape(value)
        for name, value in arrays.items()
    }
    try:
        return np.broadcast_shapes(*shapes.values())
    except ValueError:
        detail = ", ".join(f"`{name}` {shape}" for name, shape in shapes.items())
        raise ValueError(f"{function}: shapes do not broadcast: {detail}") from None


def expected_resultants(flux: ArrayLike, pattern: ReadPattern, *,
                         pedestal: ArrayLike = 0.0) -> jax.Array:
    """Mean resultants of a ramp: ``E[R_i] = pedestal + flux * tbar_i``.

    Parameters
    ----------
    flux : float or array ``[*pixels]``
        Count rate [e/s].
    pattern : ReadPattern
        Static read pattern; ``tbar`` is the mean read time of each resultant [s].
    pedestal : float or array broadcasting against ``flux``, optional
        Charge at reset [e]. Default 0.

    Returns
    -------
    Array
        ``[n_resultant, *pixels]`` [e], with ``pixels = broadcast(flux, pedestal).shape``,
        in the floating dtype of the inputs. Linear, hence trivially differentiable, in
        ``flux`` and ``pedestal``.

    Examples
    --------
    >>> import romanjax
    >>> pattern = romanjax.ReadPattern([[1], [2, 3], [4]], read_time=1.0)
    >>> [float(r) for r in expected_resultants(10.0, pattern)]
    [10.0, 25.0, 40.0]
    """
    check_pattern(pattern, "expected_resultants")
    shape = _broadcast_shape("expected_resultants", flux=flux, pedestal=pedestal)
    dtype = promoted_float_dtype(flux, pedestal)
    flux = jnp.broadcast_to(jnp.asarray(flux, dtype), shape)
    pedestal = jnp.broadcast_to(jnp.asarray(pedestal, dtype), shape)
    tbar = jnp.asarray(pattern.tbar, dtype).reshape((-1,) + (1,) * len(shape))
    return pedestal[None] + flux[None] * tbar


def _tridiagonal_parts(pattern: ReadPattern):
    """Host float64 diagonals of the difference covariance: (read diag, read off, Poisson
    diag, Poisson off), the off-diagonals padded with a leading 0 so that entry i is
    ``C_{i-1, i}``."""
    read_part, poisson_part = covariance_parts(pattern)
    n = pattern.n_resultants
    read_off = np.zeros(n)
    poisson_off = np.zeros(n)
    if n > 1:
        read_off[1:] = np.diagonal(read_part, 1)
        poisson_off[1:] = np.diagonal(poisson_part, 1)
    return np.diagonal(read_part).copy(), read_off, np.diagonal(poisson_part).copy(), poisson_off


@partial(jax.jit, static_argnames=("pattern", "free_pedestal"))
def _log_likelihood(resultants, flux, read_noise, pedestal, *, pattern, free_pedestal=False):
    n = pattern.n_resultants
    dtype = resultants.dtype
    shape = jnp.broadcast_shapes(resultants.shape[1:], flux.shape, read_noise.shape,
                                 pedestal.shape)  # fmt: skip
    # Straight-line elementwise code on whole pixel arrays, one resultant at a time (the
    # resultant axis is static and short): no loop (a loop is a device-to-host round trip
    # per trip on GPUs), and every per-resultant quantity is its own array. The parameters
    # are broadcast to the pixels once, the resultants split into rows once, and the
    # pattern's constants enter as host scalars, so that the derivative programs
    # accumulate cotangents elementwise and reduce over broadcast pixels once, instead of
    # once per resultant (XLA fuses each such reduction with the recurrence that feeds
    # it, and the program grows with the square of the pattern length).
    flux = jnp.broadcast_to(flux, shape)
    sigma2 = jnp.broadcast_to(jnp.square(read_noise), shape)
    pedestal = jnp.broadcast_to(pedestal, shape)
    rows = [row[0] for row in jnp.split(jnp.broadcast_to(resultants, (n,) + shape), n)]
    read_diag, read_off, poisson_diag, poisson_off = (
        [float(x) for x in part] for part in _tridiagonal_parts(pattern)
    )
    # differences of the residual: d - E[d], unit Jacobian from the resultants
    residual = [row - (pedestal + flux * float(t)) for row, t in zip(rows, pattern.tbar)]
    e = residual[:1] + [residual[i] - residual[i - 1] for i in range(1, n)]
    diag = [sigma2 * read_diag[i] + flux * poisson_diag[i] for i in range(n)]
    off = [sigma2 * read_off[i] + flux * poisson_off[i] for i in range(n)]
    if free_pedestal:
        # only d_0 = R_0 depends on the pedestal: the likelihood of d_1..d_{n-1} (their
        # covariance is the trailing block of the tridiagonal matrix, so the coupling
        # C_{0,1} goes) is free of it
        e, diag, off = e[1:], diag[1:], [jnp.zeros(shape, dtype)] + off[2:]
        n = n - 1

    # L D L^T of the symmetric tridiagonal matrix: pivots D_i = C_ii - C_{i-1,i}**2 / D_{i-1},
    # forward substitution y_i = e_i - (C_{i-1,i} / D_{i-1}) y_{i-1}, and the running sums
    # log det C = sum_i log D_i and e^T C^-1 e = sum_i y_i**2 / D_i
    pivot_prev = jnp.ones(shape, dtype)
    y_prev = jnp.zeros(shape, dtype)
    valid = jnp.ones(shape, bool)
    logdet = jnp.zeros(shape, dtype)
    quadratic = jnp.zeros(shape, dtype)
    for i in range(n):
        # once a pivot failed, feed benign values so that nothing overflows (the pixel's
        # value is -inf and its gradient must stay finite)
        e_i = jnp.where(valid, e[i], 0)
        diag_i = jnp.where(valid, diag[i], 1)
        off_i = jnp.where(valid, off[i], 0)
        ratio = off_i / pivot_prev
        pivot = diag_i - ratio * off_i
        ok = pivot > 0
        y_prev = jnp.where(ok, e_i - ratio * y_prev, 0)
        pivot_prev = jnp.where(ok, pivot, 1)
        valid = valid & ok
        logdet = logdet + jnp.log(pivot_prev)
        quadratic = quadratic + jnp.square(y_prev) / pivot_prev
    loglike = -0.5 * (n * _LOG_2PI + jnp.where(valid, logdet + quadratic, 0))
    return jnp.where(valid, loglike, -jnp.inf)


def ramp_log_likelihood(resultants: ArrayLike, pattern: ReadPattern, flux: ArrayLike,
                        read_noise: ArrayLike, *,
                        pedestal: ArrayLike | None = 0.0) -> jax.Array:  # fmt: skip
    """Gaussian log-likelihood of observed resultants under the exact ramp covariance.

    ``log N(R | p + f tbar, C)`` with ``C_ii = sigma**2 / N_i + f tau_i`` and
    ``C_ij = f tbar_min(i,j)`` (Casertano 2022; Brandt 2024a Eqs. 4, 11), normalisation
    ``-n/2 log(2 pi) - 1/2 log det C`` included. Evaluated in O(n) per pixel through the
    tridiagonal covariance of the resultant differences (Brandt 2024a Eqs. 28-29; the
    difference map has unit Jacobian determinant) with an ``L D L^T`` recurrence written
    out over the resultants; no dense inverse is formed.

    Parameters
    ----------
    resultants : array ``[n_resultant, *pixels]``
        Observed resultants [e].
    pattern : ReadPattern
        Static read pattern.
    flux : float or array broadcasting against ``[*pixels]``
        Count rate [e/s] of the model (mean and Poisson covariance).
    read_noise : float or array broadcasting against ``[*pixels]``
        Read noise of ONE read [e] (not CDS).
    pedestal : float or array broadcasting against ``[*pixels]``, or None, optional
        Charge at reset [e] (the mean of the resultants at t = 0). Default 0. ``None``: the
        pedestal is unknown, and the function returns the log-likelihood of the resultant
        differences ``R_i - R_{i-1}`` (i >= 1), which do not depend on it (the marginal
        likelihood of the flux under a flat prior on the pedestal, up to a constant; its
        Fisher information about the flux is the free-pedestal information of
        :func:`fisher_slope_variance`). Needs at least two resultants.

    Returns
    -------
    Array
        ``[*pixels]`` log-likelihood (more generally the broadcast of the pixel shape with the
        shapes of ``flux``, ``read_noise`` and ``pedestal``), in the floating dtype of the
        inputs. ``-inf`` where the covariance is not positive definite (a negative ``flux``
        larger than the read noise allows, or ``flux = read_noise = 0``).

    Raises
    ------
    ValueError
        If ``resultants`` has no resultant axis, its length does not match ``pattern`` or the
        shapes do not broadcast.

    Notes
    -----
    Stable at ``flux -> 0`` (the covariance tends to the read-noise covariance, which is
    positive definite for ``read_noise > 0``) and differentiable in ``flux``, ``pedestal``,
    ``read_noise`` and ``resultants`` to any order (``grad``, ``jacfwd``, ``hessian``).
    The Gaussian approximation to the Poisson counts is the same as the fitters'; at very
    low counts per resultant the exact likelihood is a Poisson-Gaussian convolution.

    Examples
    --------
    >>> import jax, romanjax
    >>> pattern = romanjax.ReadPattern.from_ma_table(4)
    >>> ramp = romanjax.expected_resultants(5.0, pattern)
    >>> score = jax.grad(romanjax.ramp_log_likelihood, argnums=2)(ramp, pattern, 5.0, 10.0)
    """
    check_pattern(pattern, "ramp_log_likelihood")
    if not hasattr(resultants, "shape"):
        resultants = np.asarray(resultants)
    if resultants.ndim < 1:
        raise ValueError("ramp_log_likelihood: `resultants` needs a leading resultant axis")
    if resultants.shape[0] != pattern.n_resultants:
        raise ValueError(
            f"ramp_log_likelihood: `resultants` has {resultants.shape[0]} resultants on axis 0 "
            f"but the read pattern has {pattern.n_resultants}"
        )
    free_pedestal = pedestal is None
    if free_pedestal:
        if pattern.n_resultants < 2:
            raise ValueError(
                "ramp_log_likelihood: `pedestal=None` (unknown pedestal) needs at least two "
                "resultants"
            )
        pedestal = 0.0
    _broadcast_shape(
        "ramp_log_likelihood", pixels=resultants.shape[1:], flux=flux,
        read_noise=read_noise, pedestal=pedestal,
    )  # fmt: skip
    dtype = promoted_float_dtype(resultants, flux, read_noise, pedestal)
    return _log_likelihood(
        jnp.asarray(resultants, dtype), jnp.asarray(flux, dtype),
        jnp.asarray(read_noise, dtype), jnp.asarray(pedestal, dtype), pattern=pattern,
        free_pedestal=free_pedestal,
    )  # fmt: skip


def fisher_information(pattern: ReadPattern, flux, read_noise, *, gaussian_variance_term=False):
    """Fisher information of the resultants about (pedestal [e], flux [e/s]).

    ``I = J^T C^-1 J`` with ``J = [1, tbar]`` the derivatives of the mean resultants and ``C``
    the exact resultant covariance at ``flux`` and ``read_noise``; optionally plus the
    Gaussian covariance term ``1/2 tr(C^-1 dC/df C^-1 dC/df)`` on the flux-flux entry.

    Parameters
    ----------
    pattern : ReadPattern
        Static read pattern.
    flux : float or array
        Count rate [e/s] (>= 0).
    read_noise : float or array broadcasting against ``flux``
        Read noise of one read [e]. ``flux`` and ``read_noise`` must not both be 0.
    gaussian_variance_term : bool, optional
        Include the information the Gaussian model draws from the flux dependence of its
        covariance. Default False: for the real (Poisson) process that information is an
        artefact of the Gaussian approximation; without it the bound equals the exact
        Poisson value ``T / f`` for noiseless single-read ramps, and it is what the
        generalized least squares fitters attain.

    Returns
    -------
    Array
        ``[*batch, 2, 2]`` information matrix in the order (pedestal, flux), with
        ``batch = broadcast(flux, read_noise).shape`` ([1/e**2], [s/e**2], [s**2/e**2]).
    """
    check_pattern(pattern, "fisher_information")
    shape = _broadcast_shape("fisher_information", flux=flux, read_noise=read_noise)
    dtype = promoted_float_dtype(flux, read_noise)
    flux = jnp.broadcast_to(jnp.asarray(flux, dtype), shape)[..., None, None]
    sigma2 = jnp.square(jnp.broadcast_to(jnp.asarray(read_noise, dtype), shape))[..., None, None]
    tbar, tau = pattern.tbar, pattern.tau
    # resultant covariance per unit flux: tau on the diagonal, tbar_min(i,j) off it
    index = np.arange(pattern.n_resultants)
    poisson = tbar[np.minimum.outer(index, index)]
    poisson[index, index] = tau
    poisson = jnp.asarray(poisson, dtype)
    read = jnp.asarray(np.diag(1.0 / pattern.n_reads), dtype)
    covariance = sigma2 * read + flux * poisson
    jacobian = jnp.asarray(np.stack([np.ones_like(tbar), tbar], axis=1), dtype)  # [n, 2]
    c_inv_j = jnp.linalg.solve(covariance, jnp.broadcast_to(jacobian, covariance.shape[:-1] + (2,)))
    information = jnp.einsum("ni,...nj->...ij", jacobian, c_inv_j)
    information = 0.5 * (information + jnp.swapaxes(information, -1, -2))  # exactly symmetric
    if gaussian_variance_term:
        c_inv_p = jnp.linalg.solve(covariance, jnp.broadcast_to(poisson, covariance.shape))
        extra = 0.5 * jnp.einsum("...ij,...ji->...", c_inv_p, c_inv_p)
        information = information.at[..., 1, 1].add(extra)
    return information


def fisher_slope_variance(pattern: ReadPattern, flux: ArrayLike, read_noise: ArrayLike, *,
                          pedestal_known: bool = False,
                          gaussian_variance_term: bool = False) -> jax.Array:  # fmt: skip
    """Cramér-Rao lower bound on the variance of an unbiased slope estimate [(e/s)**2].

    The inverse Fisher information of the resultants (see :func:`fisher_information`) for a
    ramp with count rate ``flux`` read out with ``pattern`` and read noise ``read_noise``,
    with the pedestal a free (nuisance) parameter unless ``pedestal_known``. With a free
    pedestal this is the variance of generalized least squares on the resultant differences
    with the covariance evaluated at the true flux (Brandt 2024a Eq. 35): the optimal and
    likelihood fitters attain it when their flux estimate is right; Casertano's diagonal
    weights (2022) lie above it.

    Parameters
    ----------
    pattern : ReadPattern
        Static read pattern.
    flux : float or array
        True count rate [e/s] (>= 0).
    read_noise : float or array broadcasting against ``flux``
        Read noise of one read [e] (not CDS). ``flux`` and ``read_noise`` must not both be 0.
    pedestal_known : bool, optional
        Treat the pedestal as known (the first resultant then also constrains the slope).
        Default False, as the fitters, which estimate it or difference it away.
    gaussian_variance_term : bool, optional
        See :func:`fisher_information`. Default False.

    Returns
    -------
    Array
        ``[*broadcast(flux, read_noise).shape]`` slope variance bound [(e/s)**2].

    Examples
    --------
    >>> import romanjax
    >>> pattern = romanjax.ReadPattern.from_ma_table(4)
    >>> variance = romanjax.fisher_slope_variance(pattern, [1.0, 10.0, 100.0], 10.0)
    >>> variance.shape
    (3,)
    """
    information = fisher_information(
        pattern, flux, read_noise, gaussian_variance_term=gaussian_variance_term
    )
    if pedestal_known:
        return 1.0 / information[..., 1, 1]
    determinant = information[..., 0, 0] * information[..., 1, 1] - information[..., 0, 1] ** 2
    return information[..., 0, 0] / determinant
