"""fit_ramps_optimal with dq: exact GLS on the sub-ramps between flagged resultants."""

from __future__ import annotations

import numpy as np
import pytest
from oracles import difference_covariance, simulate_ramps

import romanjax
from romanjax import dq as dqflags
from romanjax.ramp._likely import fit_ramps_likely
from romanjax.ramp._optimal import fit_ramps_optimal


def dense_masked_gls(pattern, resultants, read_noise, flux, dq):
    """Dense float64 GLS of (pedestal, slope) on ``[R_0, R_1 - R_0, ...]`` with the unusable
    differences deleted; the pedestal is dropped (0, zero variance) if R_0 is flagged.
    Returns par ``[npix, 2]``, var ``[npix, 3, 2, 2]`` and a fittable mask."""
    n = pattern.n_resultants
    tbar = pattern.tbar
    design = np.zeros((n, 2))
    design[0] = 1, tbar[0]
    design[1:, 1] = np.diff(tbar)
    u = np.concatenate([resultants[:1], np.diff(resultants, axis=0)]).astype(np.float64)
    bad = (dq & dqflags.DO_NOT_USE_IN_FIT) != 0
    use = np.concatenate([~bad[:1], ~bad[1:] & ~bad[:-1]])
    read_unit = difference_covariance(pattern, 0.0, 1.0)
    poisson_unit = difference_covariance(pattern, 1.0, 0.0)
    npix = resultants.shape[1]
    par = np.zeros((npix, 2))
    var = np.zeros((npix, 3, 2, 2))
    fittable = use[1:].any(axis=0)
    for p in range(npix):
        if not fittable[p]:
            continue
        rows = use[:, p]
        cols = [0, 1] if rows[0] else [1]
        a = design[np.ix_(rows, cols)]
        cr = read_unit[np.ix_(rows, rows)]
        cp = poisson_unit[np.ix_(rows, rows)]
        cinv = np.linalg.inv(read_noise**2 * cr + flux[p] * cp)
        k = np.linalg.solve(a.T @ cinv @ a, a.T @ cinv)
        par[p, cols] = k @ u[rows, p]
        sub = np.ix_(cols, cols)
        var[p, 0][sub] = read_noise**2 * k @ cr @ k.T
        var[p, 1][sub] = flux[p] * k @ cp @ k.T
    var[:, 2] = var[:, 0] + var[:, 1]
    return par, var, fittable


def random_dq(rng, n, npix):
    dq = np.zeros((n, npix), np.uint32)
    jump = rng.random(npix) < 0.4
    dq[rng.integers(0, n, npix)[jump], np.arange(npix)[jump]] |= dqflags.JUMP_DET
    tail = rng.integers(1, n + 1, npix)
    saturated = rng.random(npix) < 0.4
    dq[np.arange(n)[:, None] >= np.where(saturated, tail, n)[None, :]] |= dqflags.SATURATED
    dq[0, rng.random(npix) < 0.15] |= dqflags.JUMP_DET  # no pedestal information
    dq[:, :2] = 0
    dq[:, 2] = dqflags.SATURATED  # nothing usable
    dq[1:, 3] = dqflags.SATURATED  # only R_0: no slope
    return dq


@pytest.mark.parametrize("flux", [0.5, 60.0, 4000.0])
def test_matches_dense_masked_gls(pattern, rng, flux, float_dtype):
    npix = 80
    n = pattern.n_resultants
    read_noise = 12.0
    resultants = simulate_ramps(rng, pattern, flux, read_noise, npix, pedestal=500.0)
    dq = random_dq(rng, n, npix)
    guess = flux * rng.uniform(0.7, 1.3, npix)
    fit = fit_ramps_optimal(resultants.astype(float_dtype), pattern, read_noise, dq=dq,
                            flux_estimate=guess)  # fmt: skip
    assert fit.par.dtype == float_dtype and fit.dq.dtype == np.uint32
    par, var, ok = dense_masked_gls(pattern, resultants, read_noise, guess, dq)
    sigma = np.sqrt(var[:, 2, 1, 1])
    slope = np.asarray(fit.slope)
    np.testing.assert_array_less(np.abs(slope - par[:, 1])[ok],
                                 2e-4 * np.abs(par[ok, 1]) + 2e-3 * sigma[ok])  # fmt: skip
    ped_sigma = np.sqrt(var[:, 2, 0, 0])
    # + 1e-3 e: float32 rounding of pedestals of ~500 e
    bound = 2e-4 * np.abs(par[ok, 0]) + 2e-3 * ped_sigma[ok] + 1e-3
    np.testing.assert_array_less(np.abs(np.asarray(fit.pedestal) - par[:, 0])[ok], bound)
    for part in range(3):
        scale = np.abs(var[ok, part]).max(axis=(1, 2), keepdims=True)
        np.testing.assert_array_less(np.abs(np.asarray(fit.var)[ok, part] - var[ok, part]),
                                     0.02 * np.abs(var[ok, part]) + 1e-5 * scale)  # fmt: skip
    assert not ok[2] and not ok[3]
    assert np.all(np.asarray(fit.dq)[:, ~ok] & dqflags.DO_NOT_USE)
    assert not np.any(np.asarray(fit.dq)[:, ok] & dqflags.DO_NOT_USE)
    assert np.all(np.asarray(fit.par)[~ok] == 0) and np.all(np.asarray(fit.var)[~ok] == 0)
    no_pedestal = ok & ((dq[0] & dqflags.DO_NOT_USE_IN_FIT) != 0)
    assert no_pedestal.any()
    assert np.all(np.asarray(fit.pedestal)[no_pedestal] == 0)
    assert np.all(np.asarray(fit.var)[no_pedestal][:, :, 0, :] == 0)


def test_unflagged_dq_matches_interpolated_fitter(pattern, rng, float_dtype):
    """With nothing flagged the exact path equals the dq=None (interpolated) fit to the
    grid's interpolation error."""
    npix = 300
    flux = rng.choice([0.3, 30.0, 3000.0], npix)
    resultants = simulate_ramps(rng, pattern, flux, 10.0, npix, pedestal=200.0)
    resultants = resultants.astype(float_dtype)
    plain = fit_ramps_optimal(resultants, pattern, 10.0)
    flagged = fit_ramps_optimal(resultants, pattern, 10.0,
                                dq=np.zeros(resultants.shape, np.uint32))  # fmt: skip
    sigma = np.sqrt(np.asarray(plain.var_total))
    np.testing.assert_array_less(np.abs(np.asarray(flagged.slope) - np.asarray(plain.slope)),
                                 1e-3 * sigma + 1e-4 * np.abs(np.asarray(plain.slope)))  # fmt: skip
    np.testing.assert_allclose(np.asarray(flagged.var_total), np.asarray(plain.var_total),
                               rtol=2e-3)  # fmt: skip


def test_consistent_with_likely_on_same_mask(pattern, rng, float_dtype):
    npix = 200
    n = pattern.n_resultants
    resultants = simulate_ramps(rng, pattern, 40.0, 15.0, npix).astype(float_dtype)
    dq = random_dq(rng, n, npix)
    optimal = fit_ramps_optimal(resultants, pattern, 15.0, dq=dq, flux_estimate=40.0)
    likely = fit_ramps_likely(resultants, pattern, 15.0, dq=dq, flux_estimate=40.0,
                              detect_jumps=False)  # fmt: skip
    ok = ~(np.asarray(optimal.dq)[0] & dqflags.DO_NOT_USE).astype(bool)
    sigma = np.sqrt(np.asarray(likely.var_total))[ok]
    np.testing.assert_array_less(
        np.abs(np.asarray(optimal.slope) - np.asarray(likely.slope))[ok], 1e-4 * sigma + 1e-6
    )
    np.testing.assert_allclose(np.asarray(optimal.var_read)[ok], np.asarray(likely.var_read)[ok],
                               rtol=1e-4)  # fmt: skip
    np.testing.assert_array_equal(np.asarray(optimal.dq) & dqflags.DO_NOT_USE,
                                  np.asarray(likely.dq) & dqflags.DO_NOT_USE)  # fmt: skip


@pytest.mark.parametrize("flux", [1.0, 50.0, 2000.0])
def test_monte_carlo_with_dq(flux):
    """Flagged resultants (saturated tails, jump-flagged resultants, with real jumps in
    them) removed: slopes unbiased and the reported variance calibrated."""
    rng = np.random.default_rng(int(flux) + 3)
    pattern = romanjax.ReadPattern.from_ma_table(4)
    n = pattern.n_resultants
    npix = 40000
    resultants = simulate_ramps(rng, pattern, flux, 20.0, npix, pedestal=300.0)
    dq = np.zeros((n, npix), np.uint32)
    hit = rng.random(npix) < 0.3
    where = rng.integers(1, n, npix)
    # a cosmic ray in resultant `where` (flagged) shifts it and all later resultants
    resultants += np.where(hit, rng.uniform(500, 5000, npix), 0) * (np.arange(n)[:, None] >= where)
    dq[where[hit], np.arange(npix)[hit]] |= dqflags.JUMP_DET
    saturated = rng.random(npix) < 0.3
    tail = rng.integers(3, n, npix)
    dq[(np.arange(n)[:, None] >= tail) & saturated] |= dqflags.SATURATED
    fit = fit_ramps_optimal(resultants.astype(np.float32), pattern, 20.0, dq=dq)
    ok = ~(np.asarray(fit.dq)[0] & dqflags.DO_NOT_USE).astype(bool)
    assert ok.mean() > 0.95
    z = (np.asarray(fit.slope, np.float64)[ok] - flux) / np.sqrt(np.asarray(fit.var_total)[ok])
    # statistical errors ~0.005 (mean) and ~0.007 (mean square)
    assert abs(np.mean(z)) < 0.05
    assert abs(np.mean(z**2) - 1) < 0.05


def test_shapes_and_errors(rng):
    pattern = romanjax.ReadPattern.from_ma_table(4)
    resultants = simulate_ramps(rng, pattern, 10.0, 10.0, 12).astype(np.float32)
    dq = np.zeros(resultants.shape, np.uint32)
    dq[-1, :4] = dqflags.SATURATED
    fit = fit_ramps_optimal(resultants.reshape(9, 3, 4), pattern, 10.0, dq=dq.reshape(9, 3, 4))
    assert fit.par.shape == (3, 4, 2) and fit.var.shape == (3, 4, 3, 2, 2)
    assert fit.dq.shape == (9, 3, 4)
    assert not np.any(fit.dq)  # every pixel fitted, no jumps searched
    np.testing.assert_array_equal(np.asarray(fit.resultant_dq(dq.reshape(9, 3, 4))).reshape(9, 12),
                                  dq)  # fmt: skip
    with pytest.raises(ValueError, match="dq"):
        fit_ramps_optimal(resultants, pattern, 10.0, dq=np.zeros((4, 12), np.uint32))
