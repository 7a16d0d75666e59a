"""Injection into L1 (romanjax.inject_counts_into_l1): the injected resultants are
distributed as a direct simulation of the combined electrons; untouched pixels are unchanged."""

from __future__ import annotations

import jax
import numpy as np
import pytest

import romanjax
from romanjax import dq as dqflags

MA4 = romanjax.ReadPattern.from_ma_table(4)
N = 20000  # pixels per sample


def _moments(resultants):
    r = np.asarray(resultants, np.float64).reshape(MA4.n_resultants, -1)
    return r.mean(axis=1), np.cov(r)


@pytest.mark.parametrize(("base", "added"), [(50, 30), (2000, 6000)])
def test_injected_resultants_are_distributed_as_a_direct_simulation(base, added):
    """Faint (read-noise dominated) and bright pixels: means within 5 standard errors,
    covariances within sampling error (about 1% here; 6% allowed, which also holds the one
    extra rounding to whole DN, 1/12 DN**2)."""
    shape = (N,)
    l1 = romanjax.simulate_l1(jax.random.key(1), np.full(shape, base), MA4)
    injected = romanjax.inject_counts_into_l1(jax.random.key(2), l1.resultants,
                                              np.full(shape, added), MA4, dq=l1.dq)  # fmt: skip
    direct = romanjax.simulate_l1(jax.random.key(3), np.full(shape, base + added), MA4)
    mean_i, cov_i = _moments(injected.resultants)
    mean_d, cov_d = _moments(direct.resultants)
    scale = np.sqrt(np.diag(cov_d))
    assert np.all(np.abs(mean_i - mean_d) < 5 * scale * np.sqrt(2 / N))
    np.testing.assert_allclose(cov_i / np.outer(scale, scale), cov_d / np.outer(scale, scale),
                               atol=0.06)  # fmt: skip
    assert not np.any(np.asarray(injected.dq))  # nothing saturates here


def test_injection_saturates_and_flags_like_a_direct_simulation():
    shape = (2000,)
    base, added = 40_000, 80_000  # 60000 DN at the end: the last resultants saturate
    l1 = romanjax.simulate_l1(jax.random.key(4), np.full(shape, base), MA4)
    assert not np.any(np.asarray(l1.dq) & dqflags.SATURATED)
    injected = romanjax.inject_counts_into_l1(jax.random.key(5), l1.resultants,
                                              np.full(shape, added), MA4, dq=l1.dq)  # fmt: skip
    direct = romanjax.simulate_l1(jax.random.key(6), np.full(shape, base + added), MA4)
    flags_i = np.asarray(injected.dq) & dqflags.SATURATED
    flags_d = np.asarray(direct.dq) & dqflags.SATURATED
    np.testing.assert_array_equal(flags_i.mean(axis=1) > 0.5, flags_d.mean(axis=1) > 0.5)
    assert flags_i[-1].all() and not flags_i[0].any()
    np.testing.assert_array_equal(np.asarray(injected.resultants)[-1],
                                  np.asarray(direct.resultants)[-1])  # clipped at 1.1 x sat


def test_pixels_without_new_electrons_are_unchanged_bit_for_bit():
    rng = np.random.default_rng(2)
    l1 = romanjax.simulate_l1(jax.random.key(7), rng.integers(0, 5000, (30, 40)), MA4,
                              cosmic_rays=True)  # fmt: skip
    counts = np.zeros((30, 40), np.int64)
    counts[10:14, 20:25] = 5000
    out = romanjax.inject_counts_into_l1(jax.random.key(8), l1.resultants, counts, MA4,
                                         dq=l1.dq)  # fmt: skip
    untouched = counts == 0
    before, after = np.asarray(l1.resultants), np.asarray(out.resultants)
    np.testing.assert_array_equal(after[:, untouched], before[:, untouched])
    np.testing.assert_array_equal(np.asarray(out.dq)[:, untouched],
                                  np.asarray(l1.dq)[:, untouched])  # fmt: skip
    assert np.all(after[-1, ~untouched] > before[-1, ~untouched] + 2000)
    assert np.all(np.asarray(out.dq) & np.asarray(l1.dq) == np.asarray(l1.dq))  # flags kept


def test_bad_arguments_are_named():
    resultants = np.zeros((MA4.n_resultants, 3))
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="inject_counts_into_l1: `counts` of shape"):
        romanjax.inject_counts_into_l1(key, resultants, np.zeros(4, int), MA4)
    with pytest.raises(ValueError, match="inject_counts_into_l1: `counts` must be non-negative"):
        romanjax.inject_counts_into_l1(key, resultants, np.array([1, -1, 0]), MA4)
    with pytest.raises(ValueError, match="inject_counts_into_l1: `gain` must be > 0"):
        romanjax.inject_counts_into_l1(key, resultants, np.ones(3, int), MA4, gain=0.0)
    with pytest.raises(ValueError, match="`resultants` of shape"):
        romanjax.inject_counts_into_l1(key, resultants[:4], np.ones(3, int), MA4)


# --- non-linear L1 (inverse_linearity): linearise, add, re-apply --------------------------

ONE_READ = romanjax.ReadPattern([[i] for i in range(1, 7)])  # one read per resultant


def _poly(x, coefficients):
    x = np.asarray(x, np.float64)
    return sum(np.asarray(c, np.float64) * x**k for k, c in enumerate(coefficients))


def test_one_read_resultants_are_linearised_and_reinjected_exactly():
    """One read per resultant, no read or pedestal noise: the resultants are P(pedestal)
    (2000 e = 1000 DN; whole DN: P(1000) = 1000 + 1e6 * beta, per pixel coefficients), and
    the injected ones must be P(1000 + a / gain), with ``a`` the apportion_counts draws of
    the same key, up to the dither of the whole DN and the new rounding: within 1 DN, and
    unbiased to 0.02 DN over the 24000 resultants (the dither and rounding errors are
    about 0.4 DN each). Without the coefficients the injection is off by tens of DN."""
    npix = 4000
    beta = np.where(np.arange(npix) % 2 == 0, -1e-6, -2e-6)
    coeffs = np.stack([np.zeros(npix), np.ones(npix), beta])
    gain = 2.0
    l1 = romanjax.simulate_l1(jax.random.key(10), np.zeros(npix, int), ONE_READ,
                              read_noise=0.0, pedestal=2000.0, pedestal_noise=0.0, gain=gain,
                              inverse_linearity=coeffs)  # fmt: skip
    np.testing.assert_array_equal(np.asarray(l1.resultants), np.broadcast_to(
        1000 + 1e6 * beta, (ONE_READ.n_resultants, npix)))  # fmt: skip
    counts = np.random.default_rng(3).integers(1, 60000, npix)
    key = jax.random.key(11)
    added = np.asarray(romanjax.apportion_counts(key, counts, ONE_READ), np.float64)
    expected = _poly(1000 + added / gain, coeffs)
    out = romanjax.inject_counts_into_l1(key, l1.resultants, counts, ONE_READ, dq=l1.dq,
                                         gain=gain, inverse_linearity=coeffs)  # fmt: skip
    error = np.asarray(out.resultants, np.float64) - expected
    assert np.abs(error).max() <= 1
    assert abs(error.mean()) < 0.02, error.mean()
    nothing = added == 0  # resultants before the first new electron: unchanged
    np.testing.assert_array_equal(np.asarray(out.resultants)[nothing],
                                  np.asarray(l1.resultants)[nothing])  # fmt: skip
    linear = romanjax.inject_counts_into_l1(key, l1.resultants, counts, ONE_READ, dq=l1.dq,
                                            gain=gain)  # fmt: skip
    assert np.abs(np.asarray(linear.resultants, np.float64) - expected).max() > 50


@pytest.mark.parametrize("pass_coefficients", [True, False])
def test_nonlinear_injection_means_equal_a_direct_simulation(pass_coefficients):
    """MA table 4 and a mild romanisim-like non-linearity (P(x) = x - 5e-7 x**2: 2.5% low at
    50000 DN): the injected resultants' means equal a direct simulate_l1 of the combined
    electrons within 5 standard errors (about 1.5 DN; the per-resultant approximation,
    second order in the curvature over a resultant's up to 10 reads, is about 0.5 DN
    here); without the coefficients the injected DN are not bent by the non-linearity and
    the means are biased by up to hundreds of DN."""
    coeffs = np.array([0.0, 1.0, -5e-7])
    shape = (N,)
    base, added = 2000, 30000
    l1 = romanjax.simulate_l1(jax.random.key(12), np.full(shape, base), MA4,
                              inverse_linearity=coeffs)  # fmt: skip
    kwargs = {"inverse_linearity": coeffs} if pass_coefficients else {}
    injected = romanjax.inject_counts_into_l1(jax.random.key(13), l1.resultants,
                                              np.full(shape, added), MA4, dq=l1.dq,
                                              **kwargs)  # fmt: skip
    direct = romanjax.simulate_l1(jax.random.key(14), np.full(shape, base + added), MA4,
                                  inverse_linearity=coeffs)  # fmt: skip
    mean_i, cov_i = _moments(injected.resultants)
    mean_d, cov_d = _moments(direct.resultants)
    error = np.sqrt((np.diag(cov_i) + np.diag(cov_d)) / N)
    close = np.abs(mean_i - mean_d) < 5 * error
    if pass_coefficients:
        assert close.all(), (mean_i - mean_d, error)
        scale = np.sqrt(np.diag(cov_d))
        np.testing.assert_allclose(cov_i / np.outer(scale, scale),
                                   cov_d / np.outer(scale, scale), atol=0.06)  # fmt: skip
    else:
        assert np.all(mean_i[3:] - mean_d[3:] > 10)  # too bright: linear increments
        assert mean_i[-1] - mean_d[-1] > 150
        assert not close[3:].any()


def test_nonlinear_injection_leaves_untouched_pixels_bit_for_bit():
    rng = np.random.default_rng(4)
    shape = (30, 40)
    coeffs = np.zeros((3,) + shape)
    coeffs[1] = 1.0
    coeffs[2] = rng.uniform(-3e-6, -1e-6, shape)
    coeffs[:, 11, 21] = 0.0  # all zero: identity, as simulate_l1 (the linear injection)
    l1 = romanjax.simulate_l1(jax.random.key(15), rng.integers(0, 5000, shape), MA4,
                              cosmic_rays=True, inverse_linearity=coeffs)  # fmt: skip
    counts = np.zeros(shape, np.int64)
    counts[10:14, 20:25] = 5000
    out = romanjax.inject_counts_into_l1(jax.random.key(16), l1.resultants, counts, MA4,
                                         dq=l1.dq, inverse_linearity=coeffs)  # fmt: skip
    untouched = counts == 0
    before, after = np.asarray(l1.resultants), np.asarray(out.resultants)
    np.testing.assert_array_equal(after[:, untouched], before[:, untouched])
    np.testing.assert_array_equal(np.asarray(out.dq)[:, untouched],
                                  np.asarray(l1.dq)[:, untouched])  # fmt: skip
    assert np.all(np.asarray(out.dq) & np.asarray(l1.dq) == np.asarray(l1.dq))  # flags kept
    assert np.all(after[-1, ~untouched] > before[-1, ~untouched] + 2000)
    linear = romanjax.inject_counts_into_l1(jax.random.key(16), l1.resultants, counts, MA4,
                                            dq=l1.dq)  # fmt: skip
    np.testing.assert_array_equal(after[:, 11, 21], np.asarray(linear.resultants)[:, 11, 21])
    # elsewhere the non-linearity bends the added DN down
    assert np.all(after[-1, 12, 22] < np.asarray(linear.resultants)[-1, 12, 22])


def test_bad_inverse_linearity_is_named():
    resultants = np.zeros((MA4.n_resultants, 3))
    key, counts = jax.random.key(0), np.ones(3, int)
    match = "inject_counts_into_l1: `inverse_linearity` coefficients of shape"
    for bad in (np.array([1.0]), np.zeros((3, 4)), np.float64(1.0), np.zeros((3, 2, 3))):
        with pytest.raises(ValueError, match=match):
            romanjax.inject_counts_into_l1(key, resultants, counts, MA4,
                                           inverse_linearity=bad)  # fmt: skip
    with pytest.raises(ValueError, match="inject_counts_into_l1: `inverse_linearity` must be "
                                         "finite"):  # fmt: skip
        romanjax.inject_counts_into_l1(key, resultants, counts, MA4,
                                       inverse_linearity=np.array([0.0, 1.0, np.nan]))  # fmt: skip
