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


def _exact_outcomes(pattern, total):
    """Exact distribution of ``n_i R_i`` (integers) for ``total`` photons, by enumerating
    every assignment of the photons to the read intervals (independent, p = dt_j / T)."""
    import itertools
    from collections import defaultdict

    reads = [r for group in pattern.reads for r in group]
    interval = np.diff(np.concatenate([[0], reads])) / reads[-1]
    members = [np.isin(reads, group) for group in pattern.reads]
    outcomes = defaultdict(float)
    for slots in itertools.product(range(len(reads)), repeat=total):
        cumulative = np.zeros(len(reads), int)
        for s in slots:
            cumulative[s:] += 1
        key = tuple(int(cumulative[m].sum()) for m in members)
        outcomes[key] += float(np.prod(interval[list(slots)]))
    return outcomes


# 109: skipped reads (a longer first slot); 4: resultants of 1, 1, 2, 5, 8, 8, 8, 10 and 1
# reads (the benchmark's pattern); UNEVEN: slots of different lengths inside a resultant;
# the last one has resultants of 3, 5, 6, 7 and 12 equally spaced reads (the odd and even
# steps of the uniform-sum factorisation)
@pytest.mark.parametrize("reads", [
    romanjax.ReadPattern.from_ma_table(109).reads,
    romanjax.ReadPattern.from_ma_table(4).reads,
    ((1, 2, 3), (4, 5, 6, 7, 8), (10,), (11,), (21, 22, 23), (30, 31, 32, 33, 34, 35)),
    ((1, 2, 5, 6), (7, 9, 10)),
    tuple(tuple(range(a, b)) for a, b in [(1, 4), (4, 9), (9, 15), (15, 22), (22, 34)]),
])
def test_joint_distribution_of_a_small_total_is_exact(reads):
    """Chi-square of the whole resultant vector for 3 photons against exact enumeration:
    checks the factorised draws (group totals, within-resultant offsets) jointly."""
    pattern = romanjax.ReadPattern(reads)
    total, npix = 3 if pattern.reads[-1][-1] <= 16 else 2, 200_000
    exact = _exact_outcomes(pattern, total)
    res = np.asarray(apportion_counts(jax.random.key(21), np.full(npix, total), pattern),
                     np.float64)  # fmt: skip
    scaled = np.rint(res * pattern.n_reads[:, None]).astype(int)
    keys, seen = np.unique(scaled.T, axis=0, return_counts=True)
    observed = dict(zip(map(tuple, keys), seen))
    assert set(observed) <= set(exact), "a resultant vector that cannot occur"
    expected = np.array([p * npix for p in exact.values()])
    counts = np.array([observed.get(k, 0) for k in exact])
    np.testing.assert_allclose(expected.sum(), npix, rtol=1e-9)
    # pool the rare outcomes (expected < 5) into one bin
    rare = expected < 5
    exp_bins = np.append(expected[~rare], expected[rare].sum())
    obs_bins = np.append(counts[~rare], counts[rare].sum())
    if exp_bins[-1] == 0:
        exp_bins, obs_bins = exp_bins[:-1], obs_bins[:-1]
    chi2 = np.sum((obs_bins - exp_bins) ** 2 / exp_bins)
    dof = len(exp_bins) - 1
    assert abs(chi2 - dof) < 5 * np.sqrt(2 * dof), (chi2, dof)
