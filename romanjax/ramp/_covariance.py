"""Covariance of resultant differences and the design matrix of the ramp model.

Data vector (romanisim's layout): ``d_0 = R_0`` and ``d_i = R_i - R_{i-1}`` for i >= 1.
For read noise sigma [e per read] and count rate f [e/s] (Casertano 2022; Brandt 2024a
Eqs. 28-29, unscaled):

* ``Var(R_i) = sigma**2 / N_i + f tau_i`` and ``Cov(R_i, R_j) = f tbar_i`` for i < j, so
* ``C_00 = sigma**2 / N_0 + f tau_0``
* ``C_ii = sigma**2 (1/N_i + 1/N_{i-1}) + f (tau_i + tau_{i-1} - 2 tbar_{i-1})``, i >= 1
* ``C_{i,i+1} = f (tbar_i - tau_i) - sigma**2 / N_i``; all other entries are 0.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from .._read_pattern import ReadPattern
from .._validate import check_pattern, float_dtype

__all__ = ["construct_covar", "resultants_to_differences", "covariance_parts", "design_matrix"]


def covariance_parts(pattern: ReadPattern) -> tuple[np.ndarray, np.ndarray]:
    """Read-noise and Poisson parts of the difference covariance, float64 on the host.

    Returns
    -------
    read_part, poisson_part : numpy.ndarray
        ``[n, n]`` each, so that ``C = sigma**2 * read_part + f * poisson_part``
        (sigma [e], f [e/s]).
    """
    n = pattern.n_resultants
    inv_n = 1.0 / pattern.n_reads
    tbar, tau = pattern.tbar, pattern.tau
    read_diag = inv_n.copy()
    read_diag[1:] += inv_n[:-1]
    poisson_diag = tau.copy()
    poisson_diag[1:] += tau[:-1] - 2 * tbar[:-1]
    read_part = np.diag(read_diag)
    poisson_part = np.diag(poisson_diag)
    if n > 1:
        offsets = np.arange(n - 1)
        read_part[offsets, offsets + 1] = read_part[offsets + 1, offsets] = -inv_n[:-1]
        off = (tbar - tau)[:-1]
        poisson_part[offsets, offsets + 1] = poisson_part[offsets + 1, offsets] = off
    return read_part, poisson_part


def design_matrix(pattern: ReadPattern) -> np.ndarray:
    """``[n, 2]`` design matrix A of (pedestal, slope) for the differences (float64).

    Row 0 is ``[1, tbar_0]``; row i >= 1 is ``[0, tbar_i - tbar_{i-1}]``, so that
    ``E[d] = A @ (pedestal, f)`` for the model ``R_i = pedestal + f tbar_i``.
    """
    tbar = pattern.tbar
    a = np.zeros((pattern.n_resultants, 2))
    a[0] = 1.0, tbar[0]
    a[1:, 1] = np.diff(tbar)
    return a


def construct_covar(read_noise: ArrayLike, flux: ArrayLike, pattern: ReadPattern) -> jax.Array:
    """Covariance of :func:`resultants_to_differences` for one ramp (romanisim's layout).

    Parameters
    ----------
    read_noise : float or array
        Read noise of one read [e]; arrays broadcast against ``flux``.
    flux : float or array
        Count rate [e/s].
    pattern : ReadPattern

    Returns
    -------
    Array
        ``[*batch, n, n]`` with ``batch = broadcast(read_noise, flux).shape`` (``[n, n]`` for
        scalars), tridiagonal, linear in ``(read_noise**2, flux)``.
    """
    check_pattern(pattern, "construct_covar")
    dtype = float_dtype(read_noise, flux)
    read_part, poisson_part = (jnp.asarray(p, dtype) for p in covariance_parts(pattern))
    sigma2 = jnp.square(jnp.asarray(read_noise, dtype))[..., None, None]
    flux = jnp.asarray(flux, dtype)[..., None, None]
    return sigma2 * read_part + flux * poisson_part


def resultants_to_differences(resultants: ArrayLike) -> jax.Array:
    """First differences with the first resultant kept: ``[R_0, R_1 - R_0, ...]``.

    Parameters
    ----------
    resultants : array
        ``[n_resultant, *pixels]`` [e].

    Returns
    -------
    Array
        ``[n_resultant, *pixels]`` [e], same dtype.
    """
    resultants = jnp.asarray(resultants)
    if resultants.ndim < 1:
        raise ValueError("resultants_to_differences: `resultants` needs a resultant axis")
    return jnp.concatenate([resultants[:1], jnp.diff(resultants, axis=0)], axis=0)
