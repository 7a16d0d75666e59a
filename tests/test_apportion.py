"""apportion_counts: exact properties and the resultant mean/covariance of a Poisson ramp."""

import jax
import numpy as np
import pytest
from conftest import requires_romanisim

import romanjax
from romanjax.l1._apportion import apportion_counts

NPIX = 100_000


def test_exact_properties(pattern, rng, float_dtype):
    counts = rng.poisson(300.0, (50, 40))
    counts[0, 0] = 0
    counts[0, 1] = 2_000_000_000
    res = np.asarray(apportion_counts(jax.random.key(1), counts, pattern))
    assert res.shape == (pattern.n_resultants, 50, 40)
    assert res.dtype == float_dtype  # integer counts -> JAX default float (float32 unless x64)
    assert np.all(np.diff(res, axis=0) >= 0)
    assert np.all(res >= 0) and np.all(res <= counts * (1 + 1e-6))
    assert np.all(res[:, 0, 0] == 0)
    # the last resultant's last read is the total: a 1-read last resultant equals it
    if pattern.n_reads[-1] == 1:
        np.testing.assert_allclose(res[-1], counts, rtol=1e-7)
    # quantised: N_i * R_i is an integer (sum of integer cumulative counts)
    scaled = res[:, 1:, :] * pattern.n_reads[:, None, None]
    np.testing.assert_allclose(scaled, np.round(scaled), atol=1e-3)


def test_same_key_same_draw_different_key_differs():
    pattern = romanjax.ReadPattern.from_ma_table(4)
    counts = np.full((30, 30), 1000)
    a = apportion_counts(jax.random.key(3), counts, pattern)
    b = apportion_counts(jax.random.key(3), counts, pattern)
    c = apportion_counts(jax.random.key(4), counts, pattern)
    np.testing.assert_array_equal(a, b)
    assert np.any(np.asarray(a) != np.asarray(c))


@pytest.mark.parametrize("bad", [np.array([1.5, 2.0]), np.array([-1, 3]), np.array([np.nan])])
def test_bad_counts_raise(bad):
    with pytest.raises(ValueError, match="counts"):
        apportion_counts(jax.random.key(0), bad, romanjax.ReadPattern.from_ma_table(4))


def test_traced_counts_skip_check():
    pattern = romanjax.ReadPattern.from_ma_table(109)
    out = jax.jit(lambda c: apportion_counts(jax.random.key(0), c, pattern))(np.arange(5))
    assert out.shape == (10, 5)


@pytest.mark.parametrize("table", [4, 109])
@pytest.mark.parametrize("flux", [0.5, 30.0, 1000.0])
def test_poisson_ramp_mean_and_covariance(table, flux, rng):
    """Poisson totals -> unconditional Casertano covariance f tau_i / f tbar_i."""
    pattern = romanjax.ReadPattern.from_ma_table(table)
    counts = rng.poisson(flux * pattern.exposure_time, NPIX)
    res = np.asarray(apportion_counts(jax.random.key(table), counts, pattern), np.float64)
    n = pattern.n_resultants
    expected_cov = np.empty((n, n))
    for i in range(n):
        for j in range(n):
            expected_cov[i, j] = flux * (pattern.tau[i] if i == j else pattern.tbar[min(i, j)])
    mean = res.mean(axis=1)
    z = (mean - flux * pattern.tbar) / np.sqrt(np.diag(expected_cov) / NPIX)
    assert np.all(np.abs(z) < 5), z
    cov = np.cov(res)
    # sampling sd of a covariance estimate ~ sqrt((C_ii C_jj + C_ij**2) / N)
    d = np.diag(expected_cov)
    sd = np.sqrt((np.outer(d, d) + expected_cov**2) / NPIX)
    assert np.all(np.abs(cov - expected_cov) < 5 * sd), (cov - expected_cov) / sd


def test_fixed_total_conditional_covariance(rng):
    """Fixed total K: C_j are multinomial partial sums, Cov(C_a, C_b) = K s_a (1 - s_b) for
    s_a = t_a / T <= s_b; resultants are means over reads."""
    pattern = romanjax.ReadPattern.from_ma_table(109)
    total = 2000
    res = np.asarray(apportion_counts(jax.random.key(9), np.full(NPIX, total), pattern),
                     np.float64)  # fmt: skip
    s = [np.asarray(r) * pattern.read_time / pattern.exposure_time for r in pattern.reads]
    n = pattern.n_resultants
    expected = np.empty((n, n))
    for i in range(n):
        for j in range(n):
            a, b = np.meshgrid(s[i], s[j], indexing="ij")
            expected[i, j] = np.mean(total * np.minimum(a, b) * (1 - np.maximum(a, b)))
    mean_expected = total * pattern.tbar / pattern.exposure_time
    d = np.diag(expected)
    z = (res.mean(axis=1) - mean_expected) / np.sqrt(np.maximum(d, 1e-12) / NPIX)
    assert np.all(np.abs(z[:-1]) < 5), z
    sd = np.sqrt((np.outer(d, d) + expected**2) / NPIX) + 1e-9
    assert np.all(np.abs(np.cov(res) - expected) < 5 * sd)


@requires_romanisim
@pytest.mark.parametrize("flux", [2.0, 300.0])
def test_two_sample_against_romanisim(flux, rng):
    import logging

    from romanisim import l1 as rl1

    logging.disable(logging.WARNING)
    pattern = romanjax.ReadPattern.from_ma_table(109)
    counts = rng.poisson(flux * pattern.exposure_time, (300, 300)).astype(float)
    theirs, _ = rl1.apportion_counts_to_resultants(
        counts, rl1.read_pattern_to_tij(109), seed=11)
    ours = np.asarray(apportion_counts(jax.random.key(5), counts, pattern), np.float64)
    theirs = np.asarray(theirs, np.float64)
    npix = counts.size
    for i in range(pattern.n_resultants):
        a, b = ours[i].ravel() - counts.ravel() * pattern.tbar[i] / pattern.exposure_time, (
            theirs[i].ravel() - counts.ravel() * pattern.tbar[i] / pattern.exposure_time)
        va, vb = a.var(), b.var()
        if va == vb == 0:
            continue
        assert abs(a.mean() - b.mean()) < 5 * np.sqrt((va + vb) / npix)
        # var of a sample variance ~ 2 v**2 / N (near-Gaussian residuals); 6 sigma
        assert abs(va - vb) < 6 * np.sqrt(2 * (va**2 + vb**2) / npix)
