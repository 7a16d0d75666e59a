"""Casertano (2022) fitter: reference numbers, romanisim, a direct float64 oracle, sub-ramps,
edge cases, shapes, dtypes, recompilation, gradients and Monte Carlo calibration."""

import jax
import jax.numpy as jnp
import numpy as np
import oracles
import pytest
from conftest import UNEVEN_READS, requires_romanisim

import romanjax
from romanjax import ReadPattern, fit_ramps_casertano
from romanjax.ramp._casertano import _fit_casertano

MA4 = ReadPattern.from_ma_table(4)
TABLE2 = [(5, 0.0), (10, 0.4), (20, 1.0), (50, 3.0), (100, 6.0), (np.inf, 10.0)]


def direct_segment(res, nreads, tbar, tau, sigma):
    """Casertano (2022) Eqs. 35-45 for one segment, written directly (float64, unscaled)."""
    smax = max(res[-1] - res[0], 0.0)
    snr = smax / np.sqrt(sigma**2 + smax) if sigma**2 + smax > 0 else np.nan
    power = next((p for edge, p in TABLE2 if snr < edge), 10.0)
    mid = (tbar[0] + tbar[-1]) / 2
    u = np.abs(tbar - mid)
    u[u < 1e-9 * (tbar[-1] - tbar[0])] = 0  # a resultant at the midpoint: exactly 0, not 1e-15
    w = (1 + power) * nreads / (1 + power * nreads) * u**power
    f0, f1, f2 = w.sum(), (w * tbar).sum(), (w * tbar**2).sum()
    k = (f0 * tbar - f1) * w / (f2 * f0 - f1**2)
    vs = sum(k[i] ** 2 * tau[i] for i in range(len(k))) + 2 * sum(
        k[i] * k[j] * tbar[i] for i in range(len(k)) for j in range(i + 1, len(k))
    )
    return k @ res, sigma**2 * np.sum(k**2 / nreads), vs


def direct_fit(pattern, resultants, dq, sigma):
    """Direct float64 oracle of the split-ramp fit: slope, read var, Poisson var [npix]."""
    n, npix = resultants.shape
    out = np.zeros((3, npix))
    for p in range(npix):
        good = (dq[:, p] & 6) == 0
        segs, i = [], 0
        while i < n:
            if good[i]:
                j = i
                while j + 1 < n and good[j + 1]:
                    j += 1
                if j > i:
                    segs.append(slice(i, j + 1))
                i = j + 1
            else:
                i += 1
        fits = [direct_segment(resultants[s, p], pattern.n_reads[s], pattern.tbar[s],
                               pattern.tau[s], sigma[p]) for s in segs]  # fmt: skip
        if not fits:
            continue
        w = np.array([1 / max(f[1], 1e-10) for f in fits])
        slope = sum(wi * f[0] for wi, f in zip(w, fits)) / w.sum()
        out[:, p] = (slope, 1 / w.sum() if sigma[p] > 0 else 0.0,
                     sum(wi**2 * f[2] for wi, f in zip(w, fits)) / w.sum() ** 2 * max(slope, 0))
    return out


def random_dq(rng, n, npix):
    """Random flags: isolated jumps/saturation, saturation from a resultant on, fully flagged
    pixels, and bits outside DO_NOT_USE_IN_FIT (which must be ignored)."""
    dq = np.zeros((n, npix), np.uint32)
    dq[rng.random((n, npix)) < 0.12] |= romanjax.dq.JUMP_DET
    sat_from = rng.integers(1, n + 3, npix)
    dq[np.arange(n)[:, None] >= sat_from[None]] |= romanjax.dq.SATURATED
    dq[:, rng.random(npix) < 0.05] |= romanjax.dq.SATURATED
    dq[rng.random((n, npix)) < 0.2] |= romanjax.dq.NONLINEAR
    dq[:, :3] = 0  # a few clean pixels
    return dq


def simulated(rng, pattern, npix, pedestal=1e4):
    flux = 10 ** rng.uniform(-1.5, 4, npix)
    sigma = rng.choice([3.0, 10.0, 25.0], npix)
    return oracles.simulate_ramps(rng, pattern, flux, sigma, npix, pedestal), flux, sigma


def test_section9_noiseless():
    # reference values (romanisim 0.15 / stcal 1.20), MA table 4, sigma 10
    flux = np.array([0, 1, 10, 100, 1000, 1e4])
    ramps = 1e4 + flux[None] * MA4.tbar[:, None]
    fit = fit_ramps_casertano(ramps.astype("f4"), MA4, 10.0)
    np.testing.assert_allclose(fit.slope, flux, rtol=6e-6, atol=2e-5)
    np.testing.assert_allclose(
        fit.var_read, [0.001454, 0.002008, 0.004670, 0.007421, 0.007421, 0.007421], rtol=5e-4
    )
    np.testing.assert_allclose(
        fit.var_poisson, [0, 0.0080205, 0.074987, 0.73947, 7.3947, 73.947], rtol=1e-4
    )
    np.testing.assert_allclose(fit.var_total, fit.var_read + fit.var_poisson, rtol=1e-6)
    assert fit.pedestal is None and np.all(np.asarray(fit.par)[..., 0] == 0)
    assert np.all(np.asarray(fit.dq) == 0)


def test_section9_split_ramp():
    ramp = (1e4 + 10 * MA4.tbar)[:, None]
    dq = np.zeros((9, 1), np.uint32)
    dq[4] = romanjax.dq.JUMP_DET
    fit = fit_ramps_casertano(ramp.astype("f4"), MA4, 10.0, dq=dq)
    # romanisim's float32 sums give 10.000028; the exact value is 10
    np.testing.assert_allclose(fit.slope, [10.0], rtol=4e-6)
    np.testing.assert_allclose(fit.var_read, [0.0182928], rtol=1e-5)
    np.testing.assert_allclose(fit.var_poisson, [0.1150257], rtol=1e-5)
    assert not np.any(fit.dq)  # nothing found: the input flag only splits the ramp
    np.testing.assert_array_equal(np.asarray(fit.resultant_dq(dq))[:, 0], dq[:, 0])
    # the segments of section 9: V_R 0.2329943 and 0.0198514 -> 1 / (1/a + 1/b)
    assert abs(float(fit.var_read[0]) - 1 / (1 / 0.2329943 + 1 / 0.0198514)) < 1e-7


@pytest.mark.parametrize("with_dq", [False, True])
def test_matches_direct_oracle(rng, pattern, with_dq, float_dtype):
    ramps, _, sigma = simulated(rng, pattern, 150)
    dq = random_dq(rng, pattern.n_resultants, 150) if with_dq else np.zeros(ramps.shape, "u4")
    fit = fit_ramps_casertano(ramps.astype(float_dtype), pattern, sigma,
                              dq=dq if with_dq else None)  # fmt: skip
    assert fit.slope.dtype == float_dtype
    want = direct_fit(pattern, ramps.astype(float_dtype).astype(np.float64), dq, sigma)
    total = want[1] + want[2]
    # float32: resultants ~1e4 e carry ~1e-3 e rounding; the tolerance is in slope sigmas
    tol = 1e-4 * np.abs(want[0]) + (1e-3 if float_dtype == np.float32 else 1e-8) * np.sqrt(total)
    assert np.all(np.abs(np.asarray(fit.slope, np.float64) - want[0]) <= tol + 1e-12)
    rtol = 2e-5 if float_dtype == np.float32 else 1e-9
    np.testing.assert_allclose(fit.var_read, want[1], rtol=rtol, atol=1e-30)
    np.testing.assert_allclose(fit.var_poisson, want[2], rtol=1e-4, atol=1e-12)


@requires_romanisim
@pytest.mark.parametrize("table", [4, 7, 17, 109, 110, "uneven"])
def test_matches_romanisim(rng, table):
    import romanisim.ramp

    pattern = ReadPattern(UNEVEN_READS) if table == "uneven" else ReadPattern.from_ma_table(table)
    n, npix = pattern.n_resultants, 1000
    # no pedestal: romanisim sums uncentred float32 times (D = F2 F0 - F1**2 cancels), so its
    # sum(K) is 0 only to ~1e-7 relative and a 1e4 e pedestal leaks ~3e-3 sigma into its
    # slopes (romanjax agrees with the float64 oracle to 1e-7 there, test_matches_direct_oracle)
    ramps, _, sigma = simulated(rng, pattern, npix, pedestal=0.0)
    ramps = ramps.astype("f4")
    dq = random_dq(rng, n, npix)
    par, var = romanisim.ramp.fit_ramps_casertano(
        ramps, (dq & romanjax.dq.DO_NOT_USE_IN_FIT).astype("i4"), sigma.astype("f4"),
        [list(r) for r in pattern.reads],
    )  # fmt: skip
    fit = fit_ramps_casertano(ramps, pattern, sigma, dq=dq)
    slope = np.asarray(fit.slope, np.float64)
    tol = 1e-4 * np.abs(par[:, 1]) + 1e-3 * np.sqrt(var[:, 2, 1, 1])
    assert np.all(np.abs(slope - par[:, 1]) <= tol + 1e-6), np.max(np.abs(slope - par[:, 1]))
    for k in range(3):
        np.testing.assert_allclose(fit.var[:, k, 1, 1], var[:, k, 1, 1], rtol=1e-3, atol=1e-12)
    assert np.all(np.asarray(fit.var)[:, :, 0, :] == 0)
    # pixels without a usable segment: slope 0, variances 0, DO_NOT_USE on every resultant
    usable = (dq & 6) == 0
    has_segment = np.any(usable[1:] & usable[:-1], axis=0)
    assert (~has_segment).sum() > 25
    assert np.all(slope[~has_segment] == 0) and np.all(np.asarray(fit.var)[~has_segment] == 0)
    out_dq = np.asarray(fit.resultant_dq(dq))
    np.testing.assert_array_equal(out_dq & ~np.uint32(1), dq & ~np.uint32(1))
    assert np.all(out_dq[:, ~has_segment] & romanjax.dq.DO_NOT_USE)
    assert not np.any(out_dq[:, has_segment] & ~dq[:, has_segment] & romanjax.dq.DO_NOT_USE)


@requires_romanisim
def test_read_noise_zero_matches_romanisim(rng):
    import romanisim.ramp

    ramps, _, _ = simulated(rng, MA4, 500, pedestal=0.0)  # see test_matches_romanisim
    ramps = ramps.astype("f4")
    ramps[:, :20] = 0  # zero flux, flat ramps (snr 0/0)
    dq = random_dq(rng, 9, 500)
    par, var = romanisim.ramp.fit_ramps_casertano(
        ramps, (dq & 6).astype("i4"), 0.0, [list(r) for r in MA4.reads]
    )
    fit = fit_ramps_casertano(ramps, MA4, 0.0, dq=dq)
    assert np.all(np.isfinite(np.asarray(fit.par))) and np.all(np.isfinite(np.asarray(fit.var)))
    np.testing.assert_allclose(fit.slope, par[:, 1], rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(np.asarray(fit.var_read), 0)
    np.testing.assert_allclose(fit.var_poisson, var[:, 1, 1, 1], rtol=1e-3, atol=1e-12)


def test_edge_cases(float_dtype):
    n = MA4.n_resultants
    ramps = np.tile((1e4 + 50.0 * MA4.tbar)[:, None], (1, 5)).astype(float_dtype)
    dq = np.zeros((n, 5), np.uint32)
    dq[:, 0] = romanjax.dq.SATURATED  # all flagged
    dq[1:, 1] = romanjax.dq.SATURATED  # a single usable resultant
    dq[::2, 2] = romanjax.dq.JUMP_DET  # only single-resultant segments
    ramps[:, 3] = 1e4  # zero flux
    fit = fit_ramps_casertano(ramps, MA4, np.array([10, 10, 10, 10, 0.0]), dq=dq)
    out = np.asarray(fit.resultant_dq(dq))
    for p in range(3):
        assert float(fit.slope[p]) == 0 and np.all(np.asarray(fit.var[p]) == 0)
        assert np.all(out[:, p] & romanjax.dq.DO_NOT_USE)
        np.testing.assert_array_equal(out[:, p] & ~np.uint32(1), dq[:, p])
    assert abs(float(fit.slope[3])) < 1e-4 and float(fit.var_poisson[3]) == 0
    assert float(fit.var_read[3]) > 0
    # read noise 0: exact slope, zero read variance, finite everything
    np.testing.assert_allclose(fit.slope[4], 50.0, rtol=1e-5)
    assert float(fit.var_read[4]) == 0 and float(fit.var_poisson[4]) > 0
    assert np.all(np.isfinite(np.asarray(fit.var)))
    assert np.all(out[:, 3:] == 0)
    # read noise 0 and zero flux (snr 0/0): finite
    zero = fit_ramps_casertano(np.full((n, 2), 1e4, float_dtype), MA4, 0.0)
    assert np.all(np.asarray(zero.slope) == 0) and np.all(np.isfinite(np.asarray(zero.var)))


def test_one_resultant_pattern():
    pattern = ReadPattern([[1, 2, 3]])
    fit = fit_ramps_casertano(np.ones((1, 4), "f4"), pattern, 5.0)
    assert np.all(np.asarray(fit.slope) == 0)
    assert np.all(np.asarray(fit.dq) == romanjax.dq.DO_NOT_USE)


def test_shapes_dtypes_and_no_recompile(rng, float_dtype):
    ramps, _, _ = simulated(rng, MA4, 24)
    ramps = ramps.astype(float_dtype)
    flat = fit_ramps_casertano(ramps, MA4, 10.0)
    for shape in [(24,), (4, 6), (2, 3, 4)]:
        fit = fit_ramps_casertano(ramps.reshape((9,) + shape), MA4, 10.0)
        assert fit.par.shape == shape + (2,) and fit.var.shape == shape + (3, 2, 2)
        assert fit.dq.shape == (9,) + shape and fit.dq.dtype == jnp.uint32
        assert fit.par.dtype == float_dtype and fit.var.dtype == float_dtype
        np.testing.assert_array_equal(np.asarray(fit.slope).reshape(-1), flat.slope)
    single = fit_ramps_casertano(ramps[:, 5], MA4, 10.0, dq=np.zeros(9, int))
    assert single.par.shape == (2,) and single.var.shape == (3, 2, 2) and single.dq.shape == (9,)
    np.testing.assert_allclose(single.slope, flat.slope[5], rtol=1e-6)
    # a second call with new data of the same shapes does not recompile
    kwargs = dict(dq=np.zeros((9, 24), np.uint32), detect_jumps=True)
    fit_ramps_casertano(ramps, MA4, 10.0, **kwargs)
    size = _fit_casertano._cache_size()
    fit_ramps_casertano(ramps * 1.5, MA4, 7.0, **kwargs)
    assert _fit_casertano._cache_size() == size


def test_under_jit_and_vmap(rng):
    ramps, _, _ = simulated(rng, MA4, 12)
    ramps = jnp.asarray(ramps, jnp.float32)
    want = fit_ramps_casertano(ramps, MA4, 10.0, detect_jumps=True).slope
    jitted = jax.jit(lambda r: fit_ramps_casertano(r, MA4, 10.0, detect_jumps=True).slope)
    np.testing.assert_array_equal(jitted(ramps), want)
    mapped = jax.vmap(lambda r: fit_ramps_casertano(r, MA4, 10.0, dq=np.zeros(9, int)).slope,
                      in_axes=1)(ramps)  # fmt: skip
    np.testing.assert_allclose(mapped, fit_ramps_casertano(ramps, MA4, 10.0).slope, rtol=1e-6)


@pytest.mark.parametrize("table", [4, 6])
def test_gradient_of_device_data_with_non_finite_resultants(rng, table, float_dtype):
    """Device data without dq: pixels with a non-finite resultant are refitted inside the
    program (on CPUs block by block, only where there are some); the slope's gradient goes
    through that refit too, 0 on the resultants left out."""
    pattern = romanjax.ReadPattern.from_ma_table(table)
    n = pattern.n_resultants
    flux = rng.uniform(1.0, 500.0, 30)
    ramps = (200.0 + pattern.tbar[:, None] * flux[None]).astype(float_dtype)
    ramps += rng.normal(0, 5.0, ramps.shape).astype(float_dtype)
    ramps[n // 2, 3] = np.nan
    ramps[-1, 11] = np.inf
    bad = ~np.isfinite(ramps)

    def total_slope(r):
        return jnp.sum(fit_ramps_casertano(r, pattern, 5.0).slope)

    grad = np.asarray(jax.grad(total_slope)(jnp.asarray(ramps)), np.float64)
    assert np.all(np.isfinite(grad))
    assert np.all(grad[bad] == 0)
    fit = fit_ramps_casertano(jnp.asarray(ramps), pattern, 5.0)
    clean = np.where(bad, 0, ramps).astype(np.float64)
    # the slope is linear in the resultants for fixed sub-ramps and P: slope = sum_i g_i R_i
    np.testing.assert_allclose(np.sum(grad * clean, axis=0), fit.slope, rtol=1e-4, atol=1e-3)
    assert np.any(grad[:, 3] != 0) and np.any(grad[:, 11] != 0)


@pytest.mark.parametrize("detect_jumps", [False, True])
def test_gradient(rng, detect_jumps, float_dtype):
    ramps, _, sigma = simulated(rng, MA4, 40)
    ramps = ramps.astype(float_dtype)
    ramps[5:, :5] += 3000  # jumps
    dq = random_dq(rng, 9, 40)

    def total_slope(r):
        return jnp.sum(fit_ramps_casertano(r, MA4, sigma, dq=dq, detect_jumps=detect_jumps).slope)

    grad = np.asarray(jax.grad(total_slope)(jnp.asarray(ramps)), np.float64)
    assert np.all(np.isfinite(grad))
    fit = fit_ramps_casertano(ramps, MA4, sigma, dq=dq, detect_jumps=detect_jumps)
    # the slope is linear in the resultants for fixed sub-ramps and P: slope = sum_i g_i R_i
    np.testing.assert_allclose(np.sum(grad * ramps, axis=0), fit.slope, rtol=1e-4, atol=1e-3)
    # flagged resultants have zero gradient; unfit pixels have zero gradient
    assert np.all(grad[(np.asarray(fit.dq) & 6) != 0] == 0)
    # variance gradients are finite
    gv = jax.grad(lambda r: jnp.sum(fit_ramps_casertano(r, MA4, sigma, dq=dq).var_total))(
        jnp.asarray(ramps)
    )
    assert np.all(np.isfinite(np.asarray(gv)))
    # finite differences on one pixel (float64 only: in float32 a 1e4 e slope resolves 1e-3)
    if float_dtype != np.float64:
        return
    eps = 1.0
    bumped = ramps.copy()
    bumped[7, 2] += eps
    diff = (fit_ramps_casertano(bumped, MA4, sigma, dq=dq, detect_jumps=detect_jumps).slope[2]
            - fit.slope[2]) / eps
    assert abs(float(diff) - grad[7, 2]) < 1e-8


def test_bad_input():
    with pytest.raises(ValueError, match="read_noise"):
        fit_ramps_casertano(np.zeros((9, 3), "f4"), MA4, -1.0)
    with pytest.raises(ValueError, match="resultants"):
        fit_ramps_casertano(np.zeros((8, 3), "f4"), MA4, 1.0)
    with pytest.raises(ValueError, match="dq"):
        fit_ramps_casertano(np.zeros((9, 3), "f4"), MA4, 1.0, dq=np.zeros((9, 4)))


def test_monte_carlo_chi_square(rng):
    # 1e5 simulated ramps (read-by-read Poisson): slope errors against the fitted variance
    npix, flux, sigma = 100_000, 100.0, 10.0
    ramps = oracles.simulate_ramps(rng, MA4, flux, sigma, npix, pedestal=1e4)
    fit = fit_ramps_casertano(ramps, MA4, sigma)
    chi2 = np.mean((np.asarray(fit.slope, np.float64) - flux) ** 2 / np.asarray(fit.var_total))
    # reference value: 1.0054 for romanisim (the Poisson variance uses the noisy slope)
    assert abs(chi2 - 1) < 0.03, chi2
    assert abs(np.mean(fit.slope) - flux) < 4 * np.sqrt(np.mean(fit.var_total) / npix)
    # with random saturation / flags the combination is calibrated too
    dq = np.zeros((9, npix), np.uint32)
    dq[4, ::2] = romanjax.dq.JUMP_DET
    dq[7:, 1::3] = romanjax.dq.SATURATED
    fit = fit_ramps_casertano(ramps, MA4, sigma, dq=dq)
    chi2 = np.mean((np.asarray(fit.slope, np.float64) - flux) ** 2 / np.asarray(fit.var_total))
    assert abs(chi2 - 1) < 0.03, chi2
