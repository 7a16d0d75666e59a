"""Independent float64 numpy oracles used by the tests (no JAX, no romanisim).

These are deliberately direct, slow formulations: dense covariances built element by element
from Var(R_i) = sigma**2/N_i + f tau_i and Cov(R_i, R_j) = f tbar_i (i < j), dense inverses,
and a read-by-read Poisson simulator.
"""

from __future__ import annotations

import numpy as np


def resultant_covariance(pattern, flux, read_noise):
    """Dense ``[n, n]`` covariance of the resultants themselves (float64)."""
    n = pattern.n_resultants
    tbar, tau, nreads = pattern.tbar, pattern.tau, pattern.n_reads
    cov = np.empty((n, n))
    for i in range(n):
        for j in range(n):
            if i == j:
                cov[i, j] = read_noise**2 / nreads[i] + flux * tau[i]
            else:
                cov[i, j] = flux * tbar[min(i, j)]
    return cov


def difference_covariance(pattern, flux, read_noise):
    """``[n, n]`` covariance of ``[R_0, R_1 - R_0, ...]`` via the difference operator."""
    n = pattern.n_resultants
    op = np.eye(n) - np.eye(n, k=-1)
    return op @ resultant_covariance(pattern, flux, read_noise) @ op.T


def gls_fit(pattern, differences, read_noise, flux_weights):
    """Dense GLS of (pedestal, slope) on differences ``[n, npix]`` with C evaluated at
    ``flux_weights`` ``[npix]``; returns par ``[npix, 2]`` and (read, poisson, total)
    covariances ``[npix, 3, 2, 2]`` (Poisson part at ``max(flux_weights, 0)``)."""
    n = pattern.n_resultants
    tbar = pattern.tbar
    a = np.zeros((n, 2))
    a[0] = 1, tbar[0]
    a[1:, 1] = np.diff(tbar)
    differences = np.asarray(differences, np.float64)
    npix = differences.shape[1]
    read_noise = np.broadcast_to(np.asarray(read_noise, np.float64), (npix,))
    flux_weights = np.broadcast_to(np.asarray(flux_weights, np.float64), (npix,))
    par = np.empty((npix, 2))
    var = np.empty((npix, 3, 2, 2))
    c_read_unit = difference_covariance(pattern, 0.0, 1.0)
    c_poisson_unit = difference_covariance(pattern, 1.0, 0.0)
    for p in range(npix):
        cov = read_noise[p] ** 2 * c_read_unit + flux_weights[p] * c_poisson_unit
        cinv = np.linalg.inv(cov)
        k = np.linalg.inv(a.T @ cinv @ a) @ a.T @ cinv
        par[p] = k @ differences[:, p]
        var[p, 0] = read_noise[p] ** 2 * k @ c_read_unit @ k.T
        var[p, 1] = max(flux_weights[p], 0) * k @ c_poisson_unit @ k.T
        var[p, 2] = var[p, 0] + var[p, 1]
    return par, var


def simulate_ramps(rng, pattern, flux, read_noise, npix, pedestal=0.0):
    """Read-by-read Poisson simulation of ``npix`` ramps: ``[n_resultant, npix]`` [e].

    Poisson electrons arrive in every interval between reads (skipped reads included), the
    reads of each resultant are averaged, and read noise sigma/sqrt(N_i) is added per
    resultant (the distribution of averaging N_i independent per-read noises)."""
    last = pattern.reads[-1][-1]
    times = pattern.read_time * np.arange(1, last + 1)
    dt = np.diff(times, prepend=0.0)
    flux = np.broadcast_to(np.asarray(flux, np.float64), (npix,))
    cumulative = np.cumsum(rng.poisson(flux[None, :] * dt[:, None]), axis=0)
    resultants = np.stack([cumulative[np.asarray(r) - 1].mean(axis=0) for r in pattern.reads])
    sigma = np.broadcast_to(np.asarray(read_noise, np.float64), (npix,))
    noise = rng.standard_normal(resultants.shape) * sigma / np.sqrt(pattern.n_reads)[:, None]
    return resultants + noise + pedestal
