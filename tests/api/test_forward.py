"""Tests of romanjax.forward: expected resultants, the O(n) ramp log-likelihood, the Fisher
bound, gradients through the fitters, and a PSF forward model fitted by Newton's method."""

from __future__ import annotations

import importlib.util

import jax
import jax.numpy as jnp
import numpy as np
import oracles
import pytest
from jax.scipy.special import erf
from jax.test_util import check_grads
from scipy.stats import multivariate_normal

import romanjax
from romanjax.forward import (
    expected_resultants,
    fisher_information,
    fisher_slope_variance,
    ramp_log_likelihood,
)
from romanjax.ramp._optimal import fit_ramps_optimal

#: computes in float64 (``jax.enable_x64``) whatever the pass: run once, in the float32 pass
single_pass = pytest.mark.single_pass


def module_exists(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


def independent_tbar(pattern):
    """Mean read times straight from the read indices (not from ReadPattern.tbar)."""
    return np.array([pattern.read_time * sum(r) / len(r) for r in pattern.reads])


def dense_logpdf(resultants, pattern, flux, read_noise, pedestal):
    """scipy float64 multivariate-normal log-pdf of each column of ``resultants [n, npix]``."""
    mean = pedestal + flux * independent_tbar(pattern)
    cov = oracles.resultant_covariance(pattern, flux, read_noise)
    return np.array([multivariate_normal(mean, cov).logpdf(col) for col in resultants.T])


# --------------------------------------------------------------------------------------------
# expected_resultants


def test_expected_resultants(pattern, float_dtype):
    flux = np.array([[0.0, 2.5, 40.0]], np.float32)
    pedestal = np.array([[100.0], [-3.0]], np.float32)
    mean = expected_resultants(flux, pattern, pedestal=pedestal)
    assert mean.shape == (pattern.n_resultants, 2, 3)
    assert mean.dtype == float_dtype or mean.dtype == np.float32
    expected = pedestal[None] + flux[None] * independent_tbar(pattern)[:, None, None]
    np.testing.assert_allclose(np.asarray(mean), expected, rtol=1e-6)


def test_expected_resultants_scalar_and_errors(pattern):
    assert expected_resultants(1.0, pattern).shape == (pattern.n_resultants,)
    with pytest.raises(ValueError, match="broadcast"):
        expected_resultants(np.ones(3), pattern, pedestal=np.ones(4))
    with pytest.raises(TypeError, match="pattern"):
        expected_resultants(1.0, "not a pattern")


# --------------------------------------------------------------------------------------------
# ramp_log_likelihood against the dense multivariate normal


@single_pass
@pytest.mark.parametrize(
    "flux, read_noise", [(0.0, 5.0), (0.5, 12.0), (30.0, 20.0), (3000.0, 8.0), (30.0, 0.0)]
)
def test_log_likelihood_matches_dense_normal_float64(pattern, rng, flux, read_noise):
    # read_noise = 0 is allowed for flux > 0: reads are 1-based, so the Poisson covariance is
    # positive definite
    resultants = oracles.simulate_ramps(rng, pattern, flux, read_noise, 7, pedestal=250.0)
    reference = dense_logpdf(resultants, pattern, flux, read_noise, 250.0)
    with jax.enable_x64(True):
        value = ramp_log_likelihood(
            jnp.asarray(resultants, jnp.float64), pattern, flux, read_noise, pedestal=250.0
        )
        assert value.dtype == jnp.float64
        np.testing.assert_allclose(np.asarray(value), reference, rtol=1e-8)


def test_log_likelihood_matches_dense_normal_default_dtype(pattern, rng, float_dtype):
    npix = 12
    flux = rng.uniform(0.0, 200.0, npix)
    read_noise = rng.uniform(3.0, 25.0, npix)
    pedestal = rng.uniform(-50.0, 50.0, npix)
    resultants = np.stack(
        [oracles.simulate_ramps(rng, pattern, f, s, 1, p)[:, 0]
         for f, s, p in zip(flux, read_noise, pedestal)], axis=1,
    )  # fmt: skip
    reference = np.array([
        dense_logpdf(resultants[:, [i]], pattern, flux[i], read_noise[i], pedestal[i])[0]
        for i in range(npix)
    ])  # fmt: skip
    value = ramp_log_likelihood(
        resultants.astype(float_dtype), pattern, flux.astype(float_dtype),
        read_noise.astype(float_dtype), pedestal=pedestal.astype(float_dtype),
    )  # fmt: skip
    assert value.dtype == float_dtype
    # float32: the residuals and the pivots carry ~1e-7 relative rounding each, summed over
    # up to 16 resultants; 1e-5 of |log L| (~30-60) is ~5e-4 absolute.
    rtol = 1e-10 if float_dtype == np.float64 else 1e-5
    np.testing.assert_allclose(np.asarray(value), reference, rtol=rtol)


def test_log_likelihood_broadcasting_and_shapes(pattern, rng, float_dtype):
    resultants = oracles.simulate_ramps(rng, pattern, 10.0, 10.0, 12).reshape(-1, 3, 4)
    flux = np.array([0.0, 5.0, 10.0, 20.0])  # broadcasts against the last pixel axis
    value = ramp_log_likelihood(resultants.astype(float_dtype), pattern, flux, 10.0)
    assert value.shape == (3, 4)
    for i in range(3):
        for j in range(4):
            reference = dense_logpdf(resultants[:, i, j][:, None], pattern, flux[j], 10.0, 0.0)
            np.testing.assert_allclose(float(value[i, j]), reference[0], rtol=1e-5)
    # a single ramp: no pixel axes
    assert ramp_log_likelihood(resultants[:, 0, 0], pattern, 10.0, 10.0).shape == ()


def test_log_likelihood_float32_stays_float32(pattern, rng):
    resultants = oracles.simulate_ramps(rng, pattern, 10.0, 10.0, 3).astype(np.float32)
    assert ramp_log_likelihood(resultants, pattern, 10.0, 10.0).dtype == np.float32


def test_log_likelihood_errors(pattern):
    n = pattern.n_resultants
    with pytest.raises(ValueError, match="resultants"):
        ramp_log_likelihood(np.zeros((n + 1, 2)), pattern, 1.0, 1.0)
    with pytest.raises(ValueError, match="resultant axis"):
        ramp_log_likelihood(np.float32(1.0), pattern, 1.0, 1.0)
    with pytest.raises(ValueError, match="broadcast"):
        ramp_log_likelihood(np.zeros((n, 2)), pattern, np.ones(3), 1.0)
    with pytest.raises(TypeError, match="pattern"):
        ramp_log_likelihood(np.zeros((n, 2)), (1, 2), 1.0, 1.0)


def test_log_likelihood_not_positive_definite_is_minus_inf(pattern):
    ramp = np.zeros(pattern.n_resultants, np.float32)
    value = ramp_log_likelihood(np.stack([ramp, ramp], 1), pattern, [-1e4, 0.0], [1.0, 0.0])
    assert np.all(np.isneginf(np.asarray(value)))
    # and the gradient there is finite (zero), not NaN
    grad = jax.grad(lambda f: ramp_log_likelihood(ramp, pattern, f, 1.0))(-1e4)
    assert np.isfinite(grad)


# --------------------------------------------------------------------------------------------
# gradients of the likelihood


@single_pass
@pytest.mark.parametrize("flux", [0.0, 300.0])
def test_log_likelihood_check_grads(pattern, rng, flux):
    resultants = oracles.simulate_ramps(rng, pattern, flux + 5.0, 10.0, 3, pedestal=20.0)
    with jax.enable_x64(True):
        data = jnp.asarray(resultants, jnp.float64)

        def loglike(flux, read_noise, pedestal):
            return ramp_log_likelihood(data, pattern, flux, read_noise, pedestal=pedestal)

        args = (jnp.float64(flux), jnp.float64(10.0), jnp.array([20.0, 19.0, 25.0]))
        # second order for MA table 4 and the uneven pattern (9 and 6 resultants), first
        # order for the longer ones: the recurrence is one unrolled step whatever the
        # pattern, and check_grads compiles 19 programs at second order, each taking
        # seconds at 10 and 16 resultants
        order = 2 if pattern.n_resultants <= 9 else 1
        check_grads(loglike, args, order=order, modes=("fwd", "rev"), eps=1e-5)
        # and with respect to the data
        check_grads(
            lambda r: ramp_log_likelihood(r, pattern, flux, 10.0, pedestal=20.0),
            (data,), order=1, modes=("rev",), eps=1e-4,
        )  # fmt: skip


@single_pass
@pytest.mark.parametrize("program", ["value", "grad", "hvp"])
def test_log_likelihood_programs_grow_linearly_with_the_pattern(program):
    # the recurrence is O(n) per pixel, and so must be XLA's optimised program for it and its
    # derivatives: 16 against 9 resultants is 1.78x. (A recurrence over stacked arrays reduced
    # at the end had XLA emit the recurrence again for every entry read: 2.2-3.3x here, and
    # the derivatives ran tens of times slower.)
    def instructions(table):
        pattern = romanjax.ReadPattern.from_ma_table(table)
        data = jnp.zeros((pattern.n_resultants, 64), jnp.float32)

        def total(f):
            return ramp_log_likelihood(data, pattern, f, 10.0).sum()

        function = {"value": total, "grad": jax.grad(total),
                    "hvp": lambda f: jax.jvp(jax.grad(total), (f,), (f,))[1]}[program]
        text = jax.jit(function).lower(jnp.ones(64, jnp.float32)).compile().as_text()
        return sum(" = " in line for line in text.splitlines())

    assert instructions(110) / instructions(4) < 2.1


@single_pass
def test_dlogl_dflux_matches_finite_difference_of_dense_oracle(pattern, rng):
    flux, read_noise, pedestal = 40.0, 12.0, 80.0
    resultants = oracles.simulate_ramps(rng, pattern, flux, read_noise, 5, pedestal)
    h = 1e-4
    numeric = (
        dense_logpdf(resultants, pattern, flux + h, read_noise, pedestal)
        - dense_logpdf(resultants, pattern, flux - h, read_noise, pedestal)
    ) / (2 * h)
    with jax.enable_x64(True):
        data = jnp.asarray(resultants, jnp.float64)
        analytic = jax.vmap(
            jax.grad(lambda r, f: ramp_log_likelihood(r, pattern, f, read_noise, pedestal=pedestal),
                     argnums=1),
            in_axes=(1, None),
        )(data, jnp.float64(flux))  # fmt: skip
    np.testing.assert_allclose(np.asarray(analytic), numeric, rtol=1e-6, atol=1e-8)


def test_stable_as_flux_goes_to_zero(pattern, rng, float_dtype):
    resultants = oracles.simulate_ramps(rng, pattern, 0.0, 8.0, 4).astype(float_dtype)

    def loglike(f):
        return ramp_log_likelihood(resultants, pattern, f, 8.0).sum()

    at_zero = loglike(0.0)
    near_zero = loglike(1e-6)
    grad0 = jax.grad(loglike)(0.0)
    hess0 = jax.hessian(loglike)(0.0)
    assert np.isfinite(at_zero) and np.isfinite(grad0) and np.isfinite(hess0)
    # continuous: the change over 1e-6 e/s is ~ 1e-6 * grad
    np.testing.assert_allclose(float(near_zero), float(at_zero),
                               atol=1e-5 * abs(float(at_zero)) + 1e-5 * abs(float(grad0)))
    # read-noise-only limit: independent reference with the pure read-noise covariance
    reference = dense_logpdf(np.asarray(resultants, np.float64), pattern, 0.0, 8.0, 0.0).sum()
    np.testing.assert_allclose(float(at_zero), reference, rtol=1e-5)


def test_jit_vmap_jacfwd_hessian_agree(pattern, rng, float_dtype):
    resultants = oracles.simulate_ramps(rng, pattern, 50.0, 10.0, 6).astype(float_dtype)
    flux = np.linspace(40.0, 60.0, 6).astype(float_dtype)
    eager = ramp_log_likelihood(resultants, pattern, flux, 10.0)
    jitted = jax.jit(ramp_log_likelihood, static_argnums=1)(resultants, pattern, flux, 10.0)
    mapped = jax.vmap(ramp_log_likelihood, in_axes=(1, None, 0, None))(
        resultants, pattern, flux, 10.0
    )
    # float32: an outer jit fuses the recurrence differently (~1e-6 relative)
    rtol = 1e-12 if float_dtype == np.float64 else 1e-5
    np.testing.assert_allclose(np.asarray(jitted), np.asarray(eager), rtol=rtol)
    np.testing.assert_allclose(np.asarray(mapped), np.asarray(eager), rtol=rtol)
    # per-pixel likelihoods are independent: the Jacobian in flux is diagonal
    jac = jax.jacfwd(ramp_log_likelihood, argnums=2)(resultants, pattern, flux, 10.0)
    grad = jax.grad(lambda f: ramp_log_likelihood(resultants, pattern, f, 10.0).sum())(flux)
    np.testing.assert_allclose(np.asarray(jnp.diag(jac)), np.asarray(grad), rtol=rtol * 10)
    assert np.all(np.asarray(jac - jnp.diag(jnp.diag(jac))) == 0)
    hess = jax.hessian(lambda f: ramp_log_likelihood(resultants, pattern, f, 10.0).sum())(flux)
    assert np.all(np.diag(np.asarray(hess)) < 0)  # concave in flux near the truth


# --------------------------------------------------------------------------------------------
# Fisher bound


@single_pass
def test_fisher_equals_dense_gls_variance(pattern):
    flux = np.array([0.0, 0.3, 10.0, 500.0, 2e4])
    read_noise = np.array([5.0, 20.0])[:, None]
    with jax.enable_x64(True):
        bound = np.asarray(fisher_slope_variance(pattern, flux, read_noise))
    assert bound.shape == (2, 5)
    n = pattern.n_resultants
    for i, sigma in enumerate(read_noise[:, 0]):
        _, var = oracles.gls_fit(pattern, np.zeros((n, 5)), sigma, flux)
        np.testing.assert_allclose(bound[i], var[:, 2, 1, 1], rtol=1e-9)


@single_pass
def test_fisher_poisson_limit_single_reads():
    """No read noise, single reads, free pedestal: the differences are independent Poisson
    increments over t_last - t_first, so the bound is f / (t_last - t_first)."""
    pattern = romanjax.ReadPattern([[1], [3], [4], [9], [20]], read_time=2.0)
    flux = np.array([0.5, 7.0, 300.0])
    with jax.enable_x64(True):
        bound = np.asarray(fisher_slope_variance(pattern, flux, 0.0))
        known = np.asarray(fisher_slope_variance(pattern, flux, 0.0, pedestal_known=True))
    np.testing.assert_allclose(bound, flux / (2.0 * (20 - 1)), rtol=1e-10)
    # a known pedestal also uses the first read: Poisson over the whole 40 s
    np.testing.assert_allclose(known, flux / 40.0, rtol=1e-10)


def test_fisher_options_order_and_dtype(pattern, float_dtype):
    base = fisher_slope_variance(pattern, 30.0, 10.0)
    known = fisher_slope_variance(pattern, 30.0, 10.0, pedestal_known=True)
    gaussian = fisher_slope_variance(pattern, 30.0, 10.0, gaussian_variance_term=True)
    assert base.dtype == float_dtype
    assert float(known) < float(base) and float(gaussian) < float(base)
    info = fisher_information(pattern, np.array([1.0, 30.0]), 10.0)
    assert info.shape == (2, 2, 2)
    np.testing.assert_allclose(np.asarray(info), np.swapaxes(np.asarray(info), -1, -2))
    assert np.all(np.linalg.eigvalsh(np.asarray(info, np.float64)) > 0)


@single_pass
def test_optimal_fitter_variance_at_true_flux_attains_bound(pattern):
    flux = np.array([0.01, 1.0, 30.0, 1e3, 3e4])
    n = pattern.n_resultants
    with jax.enable_x64(True):
        bound = np.asarray(fisher_slope_variance(pattern, flux, 10.0))
        fit = fit_ramps_optimal(jnp.zeros((n, 5), jnp.float64), pattern, 10.0, flux_estimate=flux)
        var = np.asarray(fit.var_total)
    # the spline-interpolated weights are exact to ~1e-7 relative (cf. test_optimal); the GLS
    # variance cannot be below the bound, and is within 1% of it at the true flux
    assert np.all(var >= bound * (1 - 1e-6))
    np.testing.assert_allclose(var, bound, rtol=1e-2)


def test_monte_carlo_scatter_of_optimal_fit_matches_bound(rng):
    pattern = romanjax.ReadPattern.from_ma_table(4)
    npix, flux, read_noise = 40_000, 20.0, 12.0
    resultants = oracles.simulate_ramps(rng, pattern, flux, read_noise, npix)
    fit = fit_ramps_optimal(resultants.astype(np.float32), pattern, read_noise,
                            flux_estimate=flux)  # fmt: skip
    bound = float(fisher_slope_variance(pattern, flux, read_noise))
    sample = np.var(np.asarray(fit.slope, np.float64), ddof=1)
    # sample variance of 4e4 draws: relative std sqrt(2 / 4e4) = 0.7%; 4% is > 5 sigma
    np.testing.assert_allclose(sample, bound, rtol=0.04)
    np.testing.assert_allclose(np.mean(np.asarray(fit.slope)), flux, atol=4 * np.sqrt(bound / npix))


# --------------------------------------------------------------------------------------------
# gradients through the fitters with respect to the resultants


def oracle_slope_weights_on_resultants(pattern, read_noise, flux):
    """GLS slope weights applied to the resultants, from the dense float64 oracle: the slope
    of the unit difference vectors, then through the difference operator."""
    n = pattern.n_resultants
    par, _ = oracles.gls_fit(pattern, np.eye(n), read_noise, np.full(n, flux))
    k_differences = par[:, 1]  # slope weight of each difference
    operator = np.eye(n) - np.eye(n, k=-1)  # d = operator @ R
    return operator.T @ k_differences


def test_optimal_fit_gradient_is_the_gls_weights(pattern, rng, float_dtype):
    read_noise, flux = 9.0, 25.0
    resultants = oracles.simulate_ramps(rng, pattern, flux, read_noise, 1)[:, 0]

    def slope(r):
        return fit_ramps_optimal(r, pattern, read_noise, flux_estimate=flux).slope

    grad = np.asarray(jax.grad(slope)(resultants.astype(float_dtype)))
    expected = oracle_slope_weights_on_resultants(pattern, read_noise, flux)
    # the weights are spline-interpolated in x = f / sigma**2 between grid knots: the
    # interpolation error is ~1e-6 of the largest weight (float64 and float32 alike)
    atol = 1e-5 * np.abs(expected).max()
    np.testing.assert_allclose(grad, expected, atol=atol)
    # any unbiased slope estimator: insensitive to a constant, unit response to a unit ramp
    np.testing.assert_allclose(grad.sum(), 0.0, atol=1e-5 * np.abs(grad).max())
    np.testing.assert_allclose(grad @ pattern.tbar, 1.0, rtol=1e-5)


@single_pass
@pytest.mark.parametrize("flux_estimate", [None, 25.0])
def test_optimal_fit_check_grads(pattern, rng, flux_estimate):
    resultants = oracles.simulate_ramps(rng, pattern, 25.0, 9.0, 3)
    with jax.enable_x64(True):
        data = jnp.asarray(resultants, jnp.float64)

        def par(r):
            return fit_ramps_optimal(r, pattern, 9.0, flux_estimate=flux_estimate).par

        check_grads(par, (data,), order=1, modes=("fwd", "rev"), eps=1e-3)


casertano = pytest.mark.skipif(
    not module_exists("romanjax.ramp._casertano"), reason="romanjax.ramp._casertano not written"
)
likely = pytest.mark.skipif(
    not module_exists("romanjax.ramp._likely"), reason="romanjax.ramp._likely not written"
)


@single_pass
@casertano
def test_casertano_fit_gradients(rng):
    # one pattern, reverse mode only: compiling the fitter's derivatives takes ~10-50 s each
    from romanjax.ramp._casertano import fit_ramps_casertano

    pattern = romanjax.ReadPattern.from_ma_table(109)

    resultants = oracles.simulate_ramps(rng, pattern, 25.0, 9.0, 3)
    with jax.enable_x64(True):
        data = jnp.asarray(resultants, jnp.float64)
        grad = np.asarray(
            jax.grad(lambda r: fit_ramps_casertano(r, pattern, 9.0).slope[0])(data)
        )[:, 0]
        # weights K_i with sum K = 0 and sum K tbar = 1 (Casertano 2022 Eqs. 35-38); the
        # S/N-dependent exponent is piecewise constant, so it contributes no gradient
        np.testing.assert_allclose(grad.sum(), 0.0, atol=1e-10 * np.abs(grad).max())
        np.testing.assert_allclose(grad @ pattern.tbar, 1.0, rtol=1e-10)
        check_grads(lambda r: fit_ramps_casertano(r, pattern, 9.0).slope, (data,), order=1,
                    modes=("rev",), eps=1e-3)  # fmt: skip


@single_pass
@likely
def test_likely_fit_gradients(rng):
    # one pattern only: compiling the likelihood fitter's jump search under jvp/vjp is slow
    from romanjax.ramp._likely import fit_ramps_likely

    pattern = romanjax.ReadPattern.from_ma_table(109)
    read_noise, flux = 9.0, 25.0
    resultants = oracles.simulate_ramps(rng, pattern, flux, read_noise, 3)
    with jax.enable_x64(True):
        data = jnp.asarray(resultants, jnp.float64)

        def fixed(r):
            return fit_ramps_likely(r, pattern, read_noise, detect_jumps=False,
                                    flux_estimate=flux).slope  # fmt: skip

        grad = np.asarray(jax.grad(lambda r: fixed(r)[0])(data))[:, 0]
        expected = oracle_slope_weights_on_resultants(pattern, read_noise, flux)
        np.testing.assert_allclose(grad, expected, atol=1e-8 * np.abs(expected).max())
        check_grads(fixed, (data,), order=1, modes=("rev",), eps=1e-3)


# --------------------------------------------------------------------------------------------
# forward model: a star's flux, position and background from simulated resultants

STAMP, PSF_SIGMA, READ_NOISE = 11, 1.2, 15.0
TRUTH = np.array([3000.0, 5.3, 4.8, 4.0])  # flux [e/s], x, y [pixel], background [e/s/pixel]


def render(theta):
    """Pixel-integrated Gaussian PSF plus a flat background: rate image [e/s]."""
    flux, x0, y0, background = theta[0], theta[1], theta[2], theta[3]
    edges = jnp.arange(STAMP + 1, dtype=theta.dtype) - 0.5
    scale = PSF_SIGMA * np.sqrt(2.0)
    px = jnp.diff(0.5 * erf((edges - x0) / scale))
    py = jnp.diff(0.5 * erf((edges - y0) / scale))
    return flux * py[:, None] * px[None, :] + background


def fit_star(resultants, pattern):
    def nll(theta):
        return -jnp.sum(ramp_log_likelihood(resultants, pattern, render(theta), READ_NOISE))

    # start: summed slope image, its centroid, the median of the edge pixels
    slopes = (resultants[-1] - resultants[0]) / (pattern.tbar[-1] - pattern.tbar[0])
    edge = jnp.concatenate([slopes[0], slopes[-1], slopes[:, 0], slopes[:, -1]])
    background = jnp.median(edge)
    image = jnp.clip(slopes - background, 0)
    yy, xx = jnp.mgrid[:STAMP, :STAMP]
    total = image.sum()
    start = jnp.stack([total, (image * xx).sum() / total, (image * yy).sum() / total, background])

    def newton(theta, _):
        step = jnp.linalg.solve(jax.hessian(nll)(theta), jax.grad(nll)(theta))
        return theta - step, None

    theta, _ = jax.lax.scan(newton, start.astype(resultants.dtype), None, length=12)
    covariance = jnp.linalg.inv(jax.hessian(nll)(theta))
    return theta, covariance


def test_forward_model_recovers_star_with_hessian_errors(float_dtype):
    pattern = romanjax.ReadPattern.from_ma_table(4)
    rng = np.random.default_rng(5)
    draws = 50
    rate = np.asarray(render(jnp.asarray(TRUTH)), np.float64).ravel()
    data = np.stack([
        oracles.simulate_ramps(rng, pattern, rate, READ_NOISE, rate.size).reshape(-1, STAMP, STAMP)
        for _ in range(draws)
    ]).astype(float_dtype)  # fmt: skip
    theta, covariance = jax.jit(jax.vmap(lambda r: fit_star(r, pattern)))(data)
    theta = np.asarray(theta, np.float64)
    errors = np.sqrt(np.diagonal(np.asarray(covariance, np.float64), axis1=1, axis2=2))
    assert np.all(np.isfinite(theta)) and np.all(errors > 0)
    # one draw: every parameter within its reported 2 sigma
    assert np.all(np.abs(theta[0] - TRUTH) < 2 * errors[0]), (theta[0], errors[0])
    # over the draws: ~95% within 2 sigma (>= 88% allows binomial scatter for 50 draws)
    assert np.all(np.mean(np.abs(theta - TRUTH) < 2 * errors, axis=0) >= 0.88)
    # the Hessian errors match the scatter: the sample std of 50 draws has ~10% relative
    # scatter, so 25% is a 2.5-sigma tolerance
    ratio = np.std(theta, axis=0, ddof=1) / errors.mean(axis=0)
    np.testing.assert_allclose(ratio, 1.0, atol=0.25)
    # no bias beyond 3 standard errors of the mean
    assert np.all(np.abs(theta.mean(axis=0) - TRUTH) < 3 * errors.mean(axis=0) / np.sqrt(draws))
