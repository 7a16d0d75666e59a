"""The optimal (interpolated full-covariance) fitter: oracles, romanisim, Monte Carlo, jit."""

import jax
import jax.numpy as jnp
import numpy as np
import oracles
import pytest
from conftest import UNEVEN_READS, requires_romanisim

import romanjax
from romanjax import ReadPattern, construct_covar, fit_ramps_optimal, resultants_to_differences
from romanjax.ramp._optimal import (
    _fit_optimal,
    _grid_interval,
    exact_weights,
    optimal_weight_grid,
)

FLUXES = np.array([0.01, 0.3, 1.0, 7.0, 50.0, 300.0, 2e3, 3e4])
READ_NOISES = np.array([2.0, 5.0, 10.0, 30.0])


def grid_pixels(rng, pattern, npix_per=3):
    """Simulated ramps over every (flux, read noise) combination: resultants, flux, rn."""
    flux, rn = (a.ravel() for a in np.meshgrid(FLUXES, READ_NOISES, indexing="ij"))
    flux, rn = np.repeat(flux, npix_per), np.repeat(rn, npix_per)
    ramps = np.concatenate(
        [oracles.simulate_ramps(rng, pattern, f, s, 1, pedestal=rng.normal(0, 30))
         for f, s in zip(flux, rn, strict=True)], axis=1,
    )  # fmt: skip
    return ramps, flux, rn


def test_resultants_to_differences():
    np.testing.assert_array_equal(
        resultants_to_differences(np.arange(10, 16)), [10, 1, 1, 1, 1, 1]
    )
    two_d = np.arange(12.0).reshape(4, 3) ** 2
    np.testing.assert_allclose(
        resultants_to_differences(two_d), np.vstack([two_d[:1], np.diff(two_d, axis=0)])
    )


def test_covariance_reference_values():
    # reference values (romanisim 0.15): MA table 4, sigma = 10, f = 10
    cov = np.asarray(construct_covar(10.0, 10.0, ReadPattern.from_ma_table(4)), np.float64)
    np.testing.assert_allclose(
        np.diag(cov),
        [131.6247, 231.6247, 189.53087, 147.48051, 171.25337, 194.98276, 194.98276, 213.43413,
         231.7551], rtol=1e-6,
    )  # fmt: skip
    np.testing.assert_allclose(
        np.diag(cov, 1),
        [-100, -100, -42.093826, 5.29976, 29.00742, 29.00742, 29.00742, 42.180756], rtol=1e-5,
    )
    assert np.all(np.triu(cov, 2) == 0)


def test_covariance_equals_oracle_and_is_linear(pattern, float_dtype):
    for sigma, flux in [(0.0, 5.0), (7.0, 0.0), (3.0, 250.0)]:
        got = construct_covar(sigma, flux, pattern)
        assert got.dtype == float_dtype
        want = oracles.difference_covariance(pattern, flux, sigma)
        np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-9 * np.abs(want).max())
    both = construct_covar(3.0, 250.0, pattern)
    parts = construct_covar(3.0, 0.0, pattern) + construct_covar(0.0, 250.0, pattern)
    np.testing.assert_allclose(both, parts, rtol=1e-6)
    np.testing.assert_allclose(both, np.swapaxes(both, -1, -2))
    batch = construct_covar(np.array([1.0, 2.0]), np.array([[3.0], [4.0], [5.0]]), pattern)
    assert batch.shape == (3, 2, pattern.n_resultants, pattern.n_resultants)


@requires_romanisim
def test_covariance_equals_romanisim(pattern):
    from romanisim import ramp

    reads = [list(r) for r in pattern.reads]
    for sigma, flux in [(10.0, 10.0), (2.0, 3e4), (30.0, 0.01)]:
        np.testing.assert_allclose(
            construct_covar(sigma, flux, pattern), ramp.construct_covar(sigma, flux, reads),
            rtol=2e-5, atol=1e-5,
        )  # fmt: skip


def test_spline_matches_scipy_not_a_knot():
    from scipy.interpolate import CubicSpline

    pattern = ReadPattern.from_ma_table(4)
    knots, coefficients = optimal_weight_grid(pattern)
    k, vr, vp = exact_weights(pattern, knots)
    values = np.concatenate([k.reshape(len(knots), -1), vr.reshape(-1, 4), vp.reshape(-1, 4)], 1)
    spline = CubicSpline(knots, values)
    np.testing.assert_allclose(coefficients[:, 0], spline.c[3], rtol=1e-9, atol=1e-14)
    np.testing.assert_allclose(coefficients[:, 1], spline.c[2], rtol=1e-6, atol=1e-12)
    x = np.geomspace(1.1e-5, 0.9e5, 57)
    j = np.searchsorted(knots, x) - 1
    t = (x - knots[j])[:, None]
    c = coefficients[j]
    ours = c[:, 0] + t * (c[:, 1] + t * (c[:, 2] + t * c[:, 3]))
    np.testing.assert_allclose(ours, spline(x), rtol=1e-8, atol=1e-12)


def test_grid_interval_equals_searchsorted(float_dtype):
    # the interval is computed from log10(x); it must be the searchsorted one exactly, also at
    # the knots themselves, next to them and at the clipped ends
    for grid in [(-5.0, 5.0, 200), (-2.0, 3.0, 7), (-5.0, 5.0, 1001)]:
        knots = jnp.asarray(10.0 ** np.linspace(*grid[:2], grid[2]), float_dtype)
        kn = np.asarray(knots)
        x = np.concatenate([
            kn, np.nextafter(kn, 0), np.nextafter(kn, np.inf),
            10 ** np.random.default_rng(1).uniform(grid[0], grid[1], 20_000),
        ]).astype(float_dtype)  # fmt: skip
        x = np.clip(x, kn[0], kn[-1])
        want = np.clip(np.searchsorted(kn, x, side="right") - 1, 0, len(kn) - 2)
        got = np.asarray(jax.jit(_grid_interval, static_argnums=(2, 3))(x, knots, *grid[:2]))
        np.testing.assert_array_equal(got, want)


def test_fit_equals_spline_table_evaluation(pattern, rng, float_dtype):
    # the fitter reads a re-laid-out copy of optimal_weight_grid's table: evaluate the original
    # [m - 1, 4, 2n + 8] table in float64 numpy at the same x and compare everything
    n = pattern.n_resultants
    npix = 300
    flux = 10 ** rng.uniform(-6, 6, npix)  # includes x beyond both grid ends
    rn = rng.uniform(0.5, 30, npix)
    ramps = rng.normal(0, 50, (n, npix)) + flux * pattern.tbar[:, None]
    fit = fit_ramps_optimal(ramps.astype(float_dtype), pattern, rn, flux_estimate=flux)
    knots, coefficients = optimal_weight_grid(pattern)
    x = np.clip(flux / rn**2, knots[0], knots[-1])
    j = np.clip(np.searchsorted(knots, x, side="right") - 1, 0, len(knots) - 2)
    t = (x - knots[j])[:, None]
    c = coefficients[j]
    values = c[:, 0] + t * (c[:, 1] + t * (c[:, 2] + t * c[:, 3]))
    k = values[:, : 2 * n].reshape(npix, 2, n)
    differences = np.vstack([ramps[:1], np.diff(ramps, axis=0)]).astype(float_dtype)
    par = np.einsum("pij,jp->pi", k, differences.astype(np.float64))
    var_read = rn[:, None, None] ** 2 * values[:, 2 * n : 2 * n + 4].reshape(npix, 2, 2)
    var_poisson = (x * rn**2)[:, None, None] * values[:, 2 * n + 4 :].reshape(npix, 2, 2)
    eps = np.finfo(float_dtype).eps
    scale = np.abs(k).sum(axis=2) * np.abs(differences).max(axis=0)[:, None]
    np.testing.assert_array_less(np.abs(np.asarray(fit.par) - par), 64 * eps * scale)
    var = np.stack([var_read, var_poisson, var_read + var_poisson], axis=1)
    # float32: x and t are rounded to float32 before the cubic (as the previous kernel did)
    np.testing.assert_allclose(fit.var, var, rtol=2e-5 if eps > 1e-10 else 1e-9)
    assert fit.dq.shape == (n, npix) and not np.any(np.asarray(fit.dq))


def test_interpolated_weights_match_exact(pattern, float_dtype):
    # grid vs direct computation (romanisim's acceptance: atol 1e-5, rtol 1e-4)
    x = np.geomspace(1e-5, 1e5, 41)
    k_exact, vr_exact, vp_exact = exact_weights(pattern, x)
    rn = 1.0
    differences = np.eye(pattern.n_resultants)[:, :, None].repeat(len(x), axis=2)
    # fitting unit vectors e_j at flux x returns column j of k(x)
    fits = [fit_ramps_optimal(np.cumsum(differences[:, j], axis=0), pattern, rn,
                              flux_estimate=x) for j in range(pattern.n_resultants)]  # fmt: skip
    k_interp = np.stack([np.asarray(f.par) for f in fits], axis=-1)  # [x, 2, n]
    np.testing.assert_allclose(k_interp, k_exact, rtol=1e-4, atol=1e-5)
    var = np.asarray(fits[0].var)
    np.testing.assert_allclose(var[:, 0], vr_exact, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(var[:, 1], x[:, None, None] * vp_exact, rtol=1e-4, atol=1e-5)


def test_weights_of_first_resultant_are_exact_constants(pattern):
    # the fitter does not interpolate k[:, 0]: k A = I with the pedestal column of A equal to
    # e_0 makes it (1, 0) at every x, for every pattern (here at x beyond the grid as well)
    x = np.geomspace(1e-7, 1e7, 57)
    k, _, _ = exact_weights(pattern, x)
    np.testing.assert_allclose(k[:, 0, 0], 1.0, rtol=0, atol=1e-12)
    np.testing.assert_allclose(k[:, 1, 0], 0.0, rtol=0, atol=1e-12)
    a = np.stack([np.eye(pattern.n_resultants)[0],
                  np.concatenate([pattern.tbar[:1], np.diff(pattern.tbar)])], axis=1)
    np.testing.assert_allclose(k @ a, np.broadcast_to(np.eye(2), (len(x), 2, 2)), atol=1e-9)


@pytest.mark.parametrize("flux_estimate", ["true", "median"])
def test_fit_equals_dense_gls_oracle(pattern, rng, flux_estimate):
    ramps, flux, rn = grid_pixels(rng, pattern)
    differences = np.vstack([ramps[:1], np.diff(ramps, axis=0)])
    if flux_estimate == "true":
        weights_flux = flux
        fit = fit_ramps_optimal(ramps.astype("f4"), pattern, rn, flux_estimate=flux)
    else:
        weights_flux = np.median(differences[1:] / np.diff(pattern.tbar)[:, None], axis=0)
        fit = fit_ramps_optimal(ramps.astype("f4"), pattern, rn)
    # the grid clips x = f / sigma**2 to [1e-5, 1e5], so the oracle does too
    clipped = np.clip(weights_flux / rn**2, 1e-5, 1e5) * rn**2
    par, var = oracles.gls_fit(pattern, differences, rn, clipped)
    sigma = np.sqrt(var[:, 2, 1, 1])
    np.testing.assert_allclose(fit.slope, par[:, 1], rtol=1e-4, atol=1e-3 * sigma.min())
    assert np.all(np.abs(fit.slope - par[:, 1]) <= 1e-4 * np.abs(par[:, 1]) + 1e-3 * sigma)
    np.testing.assert_allclose(fit.var, var, rtol=2e-3, atol=1e-12)


@requires_romanisim
@pytest.mark.parametrize("table", [4, 7, 17, 109, 110, "uneven"])
def test_fit_equals_romanisim_interpolator(table, rng):
    from romanisim import ramp

    pattern = ReadPattern(UNEVEN_READS) if table == "uneven" else ReadPattern.from_ma_table(table)
    ramps, flux, rn = grid_pixels(rng, pattern, npix_per=2)
    ramps = ramps.astype("f4")
    interpolator = ramp.RampFitInterpolator([list(r) for r in pattern.reads])
    par_ref, var_ref = interpolator.fit_ramps(ramps, rn)
    fit = fit_ramps_optimal(ramps, pattern, rn)
    sigma = np.sqrt(var_ref[:, 2, 1, 1])
    slope_ref = par_ref[:, 1]
    assert np.all(np.abs(fit.slope - slope_ref) <= 1e-4 * np.abs(slope_ref) + 1e-3 * sigma)
    np.testing.assert_allclose(fit.var, var_ref, rtol=2e-3, atol=1e-9)
    ped_sigma = np.sqrt(var_ref[:, 2, 0, 0])
    assert np.all(np.abs(fit.pedestal - par_ref[:, 0]) <= 1e-3 * ped_sigma + 1e-4 * np.abs(
        par_ref[:, 0]))


def test_reference_variances_section_9():
    # reference values (romanisim 0.15): MA table 4, sigma = 10 e; exact direct-inverse totals
    pattern = ReadPattern.from_ma_table(4)
    flux = np.array([0.5, 10.0, 1000.0, 1e4])
    fit = fit_ramps_optimal(np.zeros((9, 4), "f4"), pattern, 10.0, flux_estimate=flux)
    np.testing.assert_allclose(fit.var_read, [0.001531, 0.003831, 0.010433, 0.010775], rtol=2e-3)
    np.testing.assert_allclose(
        fit.var_poisson, [0.004173, 0.075427, 7.353874, 73.5369], rtol=1e-3
    )
    np.testing.assert_allclose(fit.var_total, [0.005704, 0.079258, 7.364305, 73.5477], rtol=1e-3)
    # the slope row of k at f = 10 (columns are the differences)
    unit = np.tril(np.ones((9, 9)))  # resultants whose differences are the unit vectors
    k_slope = fit_ramps_optimal(unit, pattern, 10.0, flux_estimate=10.0).slope
    np.testing.assert_allclose(
        k_slope[1:],
        [3.404208e-3, 5.378481e-3, 7.198006e-3, 7.946081e-3, 7.938906e-3, 7.817251e-3,
         8.642172e-3, 4.375502e-3], rtol=1e-3,
    )  # fmt: skip
    assert abs(float(k_slope[0])) < 1e-6


def test_noiseless_ramps_recovered(pattern):
    # romanisim's test: slope rtol 1e-5 (atol 1e-6), pedestal atol 2e-2
    flux = np.array([10, 100, 1000, 1, 2, 3, 0], float)
    pedestal = np.array([-10, 0, 10, -1, 0, 1, 2], float)
    ramps = pedestal + flux * pattern.tbar[:, None]
    fit = fit_ramps_optimal(ramps.astype("f4"), pattern, 3.0)
    tol = 1e-5 if fit.slope.dtype == np.float32 else 1e-9
    np.testing.assert_allclose(fit.slope, flux, rtol=tol, atol=1e-4 * tol / 1e-5 + 1e-6)
    np.testing.assert_allclose(fit.pedestal, pedestal, atol=2e-2)


@pytest.mark.parametrize("flux", [1.0, 100.0, 3000.0])
def test_monte_carlo_chi_square(flux):
    # 1e5 simulated ramps: the reported variance describes the scatter around the truth
    pattern = ReadPattern.from_ma_table(4)
    rng = np.random.default_rng(int(flux))
    ramps = oracles.simulate_ramps(rng, pattern, flux, 5.0, 100_000)
    fit = fit_ramps_optimal(ramps.astype("f4"), pattern, 5.0)
    z = (np.asarray(fit.slope, float) - flux) / np.sqrt(np.asarray(fit.var_total, float))
    assert abs(np.mean(z**2) - 1) < 0.03
    ped_z = np.asarray(fit.pedestal, float) / np.sqrt(np.asarray(fit.var[:, 2, 0, 0], float))
    assert abs(np.mean(ped_z**2) - 1) < 0.03
    # The median flux estimate comes from the same data, so the weights correlate with it and
    # the slope is biased (Brandt 2024a section 5; measured here: -0.04 sigma at 1 e/s for MA 4).
    # It must stay a small fraction of sigma ...
    assert abs(np.mean(z)) < 0.08
    # ... and vanish when the weights do not depend on the data (5 Monte Carlo sigma: 0.016).
    exact = fit_ramps_optimal(ramps.astype("f4"), pattern, 5.0, flux_estimate=flux)
    z_exact = (np.asarray(exact.slope, float) - flux) / np.sqrt(np.asarray(exact.var_total, float))
    assert abs(np.mean(z_exact)) < 0.016
    assert abs(np.mean(z_exact**2) - 1) < 0.03


@pytest.mark.parametrize("pixels", [(), (5,), (3, 4), (2, 3, 2)])
def test_any_trailing_pixel_shape(pixels, rng):
    pattern = ReadPattern.from_ma_table(4)
    npix = int(np.prod(pixels))
    ramps = oracles.simulate_ramps(rng, pattern, 40.0, 6.0, npix).astype("f4")
    rn = np.linspace(3, 9, npix).astype("f4")
    flat = fit_ramps_optimal(ramps, pattern, rn)
    shaped = fit_ramps_optimal(ramps.reshape((9,) + pixels), pattern, rn.reshape(pixels))
    assert shaped.par.shape == pixels + (2,)
    assert shaped.var.shape == pixels + (3, 2, 2)
    assert shaped.dq.shape == (9,) + pixels and shaped.dq.dtype == np.uint32
    assert shaped.slope.shape == pixels
    np.testing.assert_array_equal(np.asarray(shaped.par).reshape(npix, 2), flat.par)
    np.testing.assert_array_equal(np.asarray(shaped.var).reshape(npix, 3, 2, 2), flat.var)


def test_dtype_follows_input(float_dtype):
    pattern = ReadPattern.from_ma_table(4)
    ramps = 10 * pattern.tbar[:, None] * np.ones((1, 3))
    assert fit_ramps_optimal(ramps.astype("f4"), pattern, 5.0).par.dtype == np.float32
    assert fit_ramps_optimal(ramps.astype(int), pattern, 5.0).par.dtype == float_dtype
    assert fit_ramps_optimal(ramps, pattern, 5.0).var.dtype == float_dtype


def test_no_recompile_on_new_data(rng):
    pattern = ReadPattern(((1,), (2, 3), (4, 5, 6, 7), (9,)))
    shape = (4, 6, 5)
    fit_ramps_optimal(rng.normal(size=shape).astype("f4"), pattern, 5.0)
    before = _fit_optimal._cache_size()
    for _ in range(3):
        fit_ramps_optimal(rng.normal(size=shape).astype("f4"), pattern, rng.uniform(1, 9))
    assert _fit_optimal._cache_size() == before


def test_zero_read_noise_is_finite():
    pattern = ReadPattern.from_ma_table(4)
    ramps = np.stack([50 * pattern.tbar, 0 * pattern.tbar], axis=1).astype("f4")
    fit = fit_ramps_optimal(ramps, pattern, 0.0)
    assert np.all(np.isfinite(fit.par)) and np.all(np.isfinite(fit.var))
    np.testing.assert_allclose(fit.slope, [50, 0], atol=1e-3)
    np.testing.assert_array_equal(fit.var_read, [0, 0])
    assert fit.var_poisson[0] > 0


def test_bad_inputs_name_the_argument():
    pattern = ReadPattern.from_ma_table(4)
    with pytest.raises(ValueError, match="`resultants` has 5 resultants"):
        fit_ramps_optimal(np.zeros((5, 3)), pattern, 5.0)
    with pytest.raises(ValueError, match="`read_noise`"):
        fit_ramps_optimal(np.zeros((9, 3)), pattern, np.ones(4))
    with pytest.raises(ValueError, match="`flux_estimate`"):
        fit_ramps_optimal(np.zeros((9, 3)), pattern, 5.0, flux_estimate=np.ones((2, 3)))
    with pytest.raises(TypeError, match="`pattern`"):
        fit_ramps_optimal(np.zeros((9, 3)), [[1]], 5.0)
    with pytest.raises(ValueError, match="at least two resultants"):
        fit_ramps_optimal(np.zeros((1, 3)), ReadPattern([[1, 2]]), 5.0)


def test_works_under_user_jit_vmap_and_grad():
    pattern = ReadPattern.from_ma_table(4)
    ramps = jnp.asarray(20 * pattern.tbar[:, None] + np.arange(4.0), jnp.float32)

    @jax.jit
    def slopes(r):
        return fit_ramps_optimal(r, pattern, 5.0).slope

    np.testing.assert_allclose(slopes(ramps), fit_ramps_optimal(ramps, pattern, 5.0).slope,
                               rtol=1e-6)  # fmt: skip
    batched = jax.vmap(lambda r: fit_ramps_optimal(r, pattern, 5.0).slope, in_axes=1)(ramps)
    np.testing.assert_allclose(batched, slopes(ramps), rtol=1e-6)
    # with a fixed flux estimate the fit is linear: the gradient is the slope row of k
    grad = jax.grad(lambda r: fit_ramps_optimal(r, pattern, 5.0, flux_estimate=20.0).slope)(
        ramps[:, 0]
    )
    k, _, _ = exact_weights(pattern, np.array([20.0 / 25.0]))
    k_resultants = k[0, 1] - np.append(k[0, 1, 1:], 0.0)  # d/dR_j of sum_i k_i (R_i - R_{i-1})
    np.testing.assert_allclose(grad, k_resultants, rtol=2e-4, atol=1e-7)


def test_package_exports():
    assert romanjax.fit_ramps_optimal is fit_ramps_optimal
    fit = romanjax.RampFit(np.ones(2), np.zeros(2), np.zeros(2), np.zeros(2), n_resultants=3)
    assert fit.par.shape == (2, 2) and fit.var.shape == (2, 3, 2, 2) and fit.dq.shape == (3, 2)
    leaves, treedef = jax.tree_util.tree_flatten(fit)  # a pytree with static n_resultants
    assert len(leaves) == 4 and jax.tree_util.tree_unflatten(treedef, leaves).n_resultants == 3
