"""Differentiable scenes (romanjax.jax_scene): JAX-GalSim rendering against galsim, gradients
against finite differences, vmap over stamps, the unknown-pedestal likelihood and the Fisher
matrices against dense float64 oracles."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import romanjax

pytest.importorskip("jax_galsim")
galsim = pytest.importorskip("galsim")

from romanjax import jax_scene as js  # noqa: E402

X64 = jax.config.jax_enable_x64
PATTERN = romanjax.ReadPattern.from_ma_table(4)
JACOBIAN = [[0.11, 0.01], [-0.008, 0.105]]
PARAMS = js.GalaxyParams(flux=2000.0, x=0.3, y=-0.2, half_light_radius=0.3, g1=0.1, g2=-0.05,
                         sky=1.0)  # fmt: skip


def _galsim_rate(profile, psf, params, shape):
    """galsim's own rendering (pixel-integrated, its default accuracy) plus the sky."""
    galaxy = {
        "exponential": galsim.Exponential(half_light_radius=params.half_light_radius,
                                          flux=params.flux),
        "spergel": galsim.Spergel(nu=-0.3, half_light_radius=params.half_light_radius,
                                  flux=params.flux),
        "gaussian": galsim.Gaussian(half_light_radius=params.half_light_radius,
                                    flux=params.flux),
    }[profile].shear(g1=params.g1, g2=params.g2)  # fmt: skip
    image = galsim.Convolve([galaxy, psf]).drawImage(
        nx=shape[1], ny=shape[0], wcs=galsim.JacobianWCS(*np.ravel(JACOBIAN)),
        offset=(params.x, params.y), dtype=np.float64,
    )  # fmt: skip
    return image.array + params.sky


@pytest.mark.parametrize("profile", ["exponential", "spergel", "gaussian"])
def test_rendering_equals_galsim_with_a_gaussian_psf(profile):
    model = js.stamp_model((20, 24), jacobian=JACOBIAN, profile=profile, spergel_nu=-0.3)
    rate = np.asarray(jax.jit(js.render_rate)(PARAMS, model))
    psf = galsim.Gaussian(fwhm=float(model.psf.fwhm))
    expected = _galsim_rate(profile, psf, PARAMS, (20, 24))
    peak = expected.max() - PARAMS.sky
    assert np.max(np.abs(rate - expected)) <= 1e-4 * peak
    assert np.argmax(rate) == np.argmax(expected)


def test_rendering_with_an_interpolated_airy_psf_equals_galsim():
    psf_jax = js.roman_psf("airy", fft_size=128)
    model = js.stamp_model(16, jacobian=JACOBIAN, psf=psf_jax, fft_size=128)
    rate = np.asarray(jax.jit(js.render_rate)(PARAMS, model))
    # galsim's InterpolatedImage of the very same PSF image
    psf = galsim.InterpolatedImage(
        galsim.Image(np.asarray(psf_jax.image.array, np.float64), scale=0.11 / 4),
        x_interpolant="quintic",
    )  # fmt: skip
    expected = _galsim_rate("exponential", psf, PARAMS, (16, 16))
    assert np.max(np.abs(rate - expected)) <= 1e-4 * (expected.max() - PARAMS.sky)


def test_a_point_source_holds_its_flux_and_moves_with_x_and_y():
    model = js.stamp_model(32, profile="point")
    # pixel (iy, ix) is centred at offset (ix - 15.5, iy - 15.5): this star sits on (18, 12)
    star = PARAMS._replace(x=2.5, y=-3.5, sky=0.0)
    rate = np.asarray(js.render_rate(star, model))
    assert abs(rate.sum() - star.flux) < 0.01 * star.flux  # the Gaussian PSF's wings stay in
    assert np.unravel_index(np.argmax(rate), rate.shape) == (12, 18)
    np.testing.assert_allclose(rate[12, 17], rate[12, 19], rtol=1e-4)  # symmetric about it


def test_vmap_over_stamps_equals_one_stamp_at_a_time():
    model = js.stamp_model(16, jacobian=JACOBIAN, fft_size=128)
    batch = js.GalaxyParams(*(jnp.asarray([v, v * 1.1 + 0.01, v * 0.9]) for v in PARAMS))
    together = jax.jit(jax.vmap(js.render_rate, in_axes=(0, None)))(batch, model)
    for i in range(3):
        single = js.render_rate(js.GalaxyParams(*(value[i] for value in batch)), model)
        np.testing.assert_allclose(together[i], single, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not X64, reason="finite differences need float64 (JAX_ENABLE_X64=1)")
def test_gradients_of_the_log_likelihood_match_finite_differences():
    model = js.stamp_model(16, jacobian=JACOBIAN, fft_size=128)
    rate = js.render_rate(PARAMS, model)
    key = jax.random.key(3)
    # noisy resultants: the score is not zero, and every parameter's derivative is exercised
    resultants = romanjax.expected_resultants(rate, PATTERN) + 5 * jax.random.normal(
        key, (PATTERN.n_resultants,) + model.shape)  # fmt: skip

    def loglike(theta):
        return js.scene_log_likelihood(resultants, PATTERN, js.GalaxyParams(*theta), 5.0, model)

    theta = jnp.asarray(PARAMS, jnp.float64)
    gradient = np.asarray(jax.jit(jax.grad(loglike))(theta))
    steps = np.array([1e-2, 1e-4, 1e-4, 1e-5, 1e-5, 1e-5, 1e-4])
    for i, step in enumerate(steps):
        delta = np.zeros(7)
        delta[i] = step
        numeric = (float(loglike(theta + delta)) - float(loglike(theta - delta))) / (2 * step)
        assert np.isclose(gradient[i], numeric, rtol=1e-5, atol=1e-6 * abs(gradient).max()), (
            js.GalaxyParams._fields[i], gradient[i], numeric)  # fmt: skip


def _dense_difference_loglike(resultants, pattern, rate, read_noise):
    """float64 oracle: log N(d_1.. | rate * dtbar, C_d) of the resultant differences."""
    n = pattern.n_resultants
    index = np.arange(n)
    poisson = pattern.tbar[np.minimum.outer(index, index)]
    poisson[index, index] = pattern.tau
    covariance = rate * poisson + read_noise**2 * np.diag(1.0 / pattern.n_reads)
    k = np.diff(np.eye(n), axis=0)  # (n-1, n): d_i = R_i - R_{i-1}
    cd = k @ covariance @ k.T
    r = k @ (resultants - rate * pattern.tbar)
    return -0.5 * ((n - 1) * np.log(2 * np.pi) + np.linalg.slogdet(cd)[1]
                   + r @ np.linalg.solve(cd, r))  # fmt: skip


def test_unknown_pedestal_likelihood_is_that_of_the_differences():
    rng = np.random.default_rng(5)
    rate, sigma = 30.0, 7.0
    resultants = 1e4 + rate * PATTERN.tbar + rng.normal(0, 20, PATTERN.n_resultants)
    value = float(romanjax.ramp_log_likelihood(resultants, PATTERN, rate, sigma, pedestal=None))
    expected = _dense_difference_loglike(resultants, PATTERN, rate, sigma)
    assert value == pytest.approx(expected, rel=1e-5 if X64 else 1e-4)
    # free of the pedestal: any offset gives the same value
    shifted = romanjax.ramp_log_likelihood(resultants - 1e4, PATTERN, rate, sigma, pedestal=None)
    assert float(shifted) == pytest.approx(value, rel=1e-5)
    with pytest.raises(ValueError, match="pedestal=None"):
        romanjax.ramp_log_likelihood([1.0], romanjax.ReadPattern([[1]]), 1.0, 1.0, pedestal=None)


def _check_fisher_against_dense_oracle(fisher, params, sigma, model):
    """The rates' derivatives by central differences, and each pixel's information from the
    dense covariance of its differences d_1.. (GLS with a free pedestal)."""
    theta = np.asarray(params, np.float64)
    steps = np.array([1.0, 2e-3, 2e-3, 2e-4, 2e-4, 2e-4, 1e-2])
    columns = []
    for i, step in enumerate(steps):
        delta = np.zeros(7)
        delta[i] = step
        plus = js.render_rate(js.GalaxyParams(*(theta + delta)), model)
        minus = js.render_rate(js.GalaxyParams(*(theta - delta)), model)
        columns.append((np.asarray(plus) - np.asarray(minus)).ravel() / (2 * step))
    jacobian = np.stack(columns, axis=1)
    rates = np.asarray(js.render_rate(params, model)).ravel()
    n = PATTERN.n_resultants
    index = np.arange(n)
    poisson = PATTERN.tbar[np.minimum.outer(index, index)]
    poisson[index, index] = PATTERN.tau
    k = np.diff(np.eye(n), axis=0)
    dtbar = k @ PATTERN.tbar
    read = sigma**2 * np.diag(1 / PATTERN.n_reads)
    information = np.array(
        [dtbar @ np.linalg.solve(k @ (f * poisson + read) @ k.T, dtbar) for f in rates])
    expected = jacobian.T @ (information[:, None] * jacobian)
    scale = np.sqrt(np.outer(np.diag(expected), np.diag(expected)))
    assert np.max(np.abs(fisher - expected) / scale) < 1e-5


def test_resultant_fisher_matches_a_dense_oracle_and_bounds_the_slope_fisher():
    model = js.stamp_model(12, jacobian=JACOBIAN, fft_size=64)
    params = PARAMS._replace(flux=500.0, half_light_radius=0.2)
    sigma = 8.0
    fisher = np.asarray(js.scene_fisher_resultants(PATTERN, params, sigma, model), np.float64)
    assert fisher.shape == (7, 7)
    scale = np.sqrt(np.outer(np.diag(fisher), np.diag(fisher)))
    tolerance = 1e-5 if X64 else 1e-3
    if X64:  # finite differences of the rendering need float64
        _check_fisher_against_dense_oracle(fisher, params, sigma, model)

    # the slope image with the Casertano fitter's variance at the true rates carries no more
    # information than the resultants: F_res - F_slope is positive semi-definite
    rate_image = js.render_rate(params, model)
    fit = romanjax.fit_ramps_casertano(romanjax.expected_resultants(rate_image, PATTERN),
                                       PATTERN, sigma)  # fmt: skip
    variance = np.asarray(fit.var_total).reshape(model.shape)
    slopes = np.asarray(
        js.scene_fisher_slopes(PATTERN, params, sigma, model, slope_variance=variance), np.float64)
    gap = np.linalg.eigvalsh((fisher - slopes) / scale)
    assert gap.min() > -tolerance
    assert gap.max() > 0.01  # Casertano's weights lose some information at these fluxes
    bound_resultants = np.diag(np.linalg.inv(fisher))
    bound_slopes = np.diag(np.linalg.inv(slopes))
    assert np.all(bound_resultants <= bound_slopes * (1 + tolerance))
    # with each pixel's own Cramer-Rao variance the two agree
    best = np.asarray(js.scene_fisher_slopes(PATTERN, params, sigma, model), np.float64)
    assert np.max(np.abs(best - fisher) / scale) < tolerance


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="`profile`"):
        js.stamp_model(16, profile="sersic")
    with pytest.raises(ValueError, match="`fft_size`"):
        js.stamp_model(100, fft_size=128)
    with pytest.raises(ValueError, match="`jacobian`"):
        js.stamp_model(16, jacobian=[[0.1, 0.0], [0.2, 0.0]])
    with pytest.raises(ValueError, match="`shape`"):
        js.stamp_model((16, 0))
    model = js.stamp_model(8, fft_size=64)
    with pytest.raises(ValueError, match="`resultants`"):
        js.scene_log_likelihood(np.zeros((PATTERN.n_resultants, 8, 9)), PATTERN, PARAMS, 5.0,
                                model)  # fmt: skip
    with pytest.raises(ValueError, match="`slope_variance`"):
        js.scene_fisher_slopes(PATTERN, PARAMS, 5.0, model, slope_variance=np.ones((8, 9)))
    with pytest.raises(TypeError, match="`model`"):
        js.render_rate(PARAMS, "stamp")


@pytest.mark.slow
def test_galaxy_fit_scatter_reaches_the_resultant_fisher_bound():
    """The example of docs/scenes.md: flux, position, size and shear of a galaxy fitted to
    1000 simulated L1 ramps (Poisson electrons apportioned over the reads, read noise,
    rounding); the scatter of each parameter within 10% of the Fisher bound (the sampling
    error of a standard deviation from 1000 draws is 2.2%)."""
    pattern = romanjax.ReadPattern.from_ma_table(4)
    model = js.stamp_model(20, fft_size=128)
    truth = js.GalaxyParams(1500.0, 0.2, -0.1, 0.25, 0.15, -0.1, 1.0)
    n, sigma = 1000, 5.0
    rate = js.render_rate(truth, model)
    counts_key, noise_key = jax.random.split(jax.random.key(1))
    counts = jax.random.poisson(counts_key, rate * pattern.exposure_time, (n,) + model.shape)

    def simulate(key, counts):
        return romanjax.simulate_l1(key, counts, pattern, read_noise=sigma, gain=1.0,
                                    pedestal=0.0, pedestal_noise=0.0,
                                    saturation=1e9).resultants  # fmt: skip

    resultants = jax.jit(jax.vmap(simulate))(jax.random.split(noise_key, n), counts)
    fit = jax.jit(jax.vmap(lambda r: js.fit_scene(r, pattern, sigma, model, truth, steps=5)[0]))
    estimates = np.stack([np.asarray(value) for value in fit(resultants.astype(rate.dtype))][:6],
                         axis=1)  # fmt: skip
    assert np.all(np.isfinite(estimates))
    fisher = np.asarray(js.scene_fisher_resultants(pattern, truth, sigma, model), np.float64)
    bound = np.sqrt(np.diag(np.linalg.inv(fisher[:6, :6])))  # the sky is known
    ratio = estimates.std(axis=0, ddof=1) / bound
    assert np.all(np.abs(ratio - 1) < 0.10), dict(zip(js.GalaxyParams._fields, ratio))
    # unbiased to a fraction of the scatter
    bias = (estimates.mean(axis=0) - np.asarray(truth)[:6]) / bound
    assert np.all(np.abs(bias) < 0.25), dict(zip(js.GalaxyParams._fields, bias))


def test_fit_scene_reaches_the_same_maximum_from_a_displaced_start_by_both_methods():
    model = js.stamp_model(16, fft_size=128)
    truth = PARAMS._replace(flux=800.0, half_light_radius=0.2)
    rate = js.render_rate(truth, model)
    counts = jax.random.poisson(jax.random.key(7), rate * PATTERN.exposure_time)
    resultants = romanjax.simulate_l1(
        jax.random.key(8), counts, PATTERN, read_noise=5.0, gain=1.0, pedestal=0.0,
        pedestal_noise=0.0, saturation=1e9,
    ).resultants.astype(rate.dtype)  # fmt: skip
    start = truth._replace(flux=760.0, x=0.25, y=-0.15, half_light_radius=0.22, g1=0.12)
    fisher = np.asarray(js.scene_fisher_resultants(PATTERN, truth, 5.0, model), np.float64)
    bound = np.sqrt(np.diag(np.linalg.inv(fisher[:6, :6])))
    fits = {}
    for method in ("scoring", "lbfgs"):
        fitted, value = js.fit_scene(resultants, PATTERN, 5.0, model, start, steps=10,
                                     method=method)  # fmt: skip
        fits[method] = np.asarray(fitted)[:6]
        # a maximum: the score, in units of the bound, is negligible
        score = jax.grad(lambda theta: js.scene_log_likelihood(
            resultants, PATTERN, js.GalaxyParams(*theta), 5.0, model))(jnp.asarray(fitted))
        assert np.all(np.abs(np.asarray(score)[:6] * bound) < 0.05), (method, score)
        assert np.isfinite(float(value))
    assert np.all(np.abs(fits["scoring"] - fits["lbfgs"]) / bound < 0.05)
    assert np.all(np.abs(fits["scoring"] - np.asarray(truth)[:6]) / bound < 4)
    with pytest.raises(ValueError, match="`free`"):
        js.fit_scene(resultants, PATTERN, 5.0, model, start, free=("size",))
    with pytest.raises(ValueError, match="`method`"):
        js.fit_scene(resultants, PATTERN, 5.0, model, start, method="adam")


def test_a_galsim_roman_psf_made_once_renders_inside_jit():
    pytest.importorskip("galsim.roman")
    model = js.stamp_model(16, psf="roman", fft_size=128)  # galsim.roman.getPSF, drawn once
    assert type(model.psf).__name__ == "InterpolatedImage"
    star = PARAMS._replace(x=0.5, y=0.5, sky=0.0)  # centred on pixel (8, 8)
    model = dataclasses.replace(model, profile="point")
    rate = np.asarray(jax.jit(js.render_rate)(star, model))
    assert np.all(np.isfinite(rate))
    assert np.unravel_index(np.argmax(rate), rate.shape) == (8, 8)
    # Roman's PSF at 1.58 micron on 0.11" pixels: a fraction of the light in the peak pixel,
    # most of it within the stamp
    assert 0.15 < rate.max() / star.flux < 0.6
    assert 0.85 < rate.sum() / star.flux <= 1.0001
