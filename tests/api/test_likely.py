"""Tests of the likelihood ramp fitter (Brandt 2024a/b, stcal LIKELY)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import requires_stcal
from oracles import difference_covariance, simulate_ramps

import romanjax
from romanjax import dq as dqflags
from romanjax.ramp._likely import fit_ramps_likely, two_omit_threshold

# ------------------------------------------------------------------------------------------
# independent float64 oracles


def scaled_difference_covariance(pattern, flux, read_noise):
    """Dense covariance of d_i = (R_{i+1} - R_i) / Delta_i from the resultant covariance."""
    cov = difference_covariance(pattern, flux, read_noise)[1:, 1:]
    scale = 1 / np.diff(pattern.tbar)
    return cov * scale[:, None] * scale[None, :]


def dense_masked_gls(pattern, resultants, read_noise, guess, mask):
    """Dense float64 GLS of the slope on the usable scaled differences (rows deleted).

    ``resultants`` ``[n, npix]``, ``guess`` ``[npix]`` (covariance rate), ``mask``
    ``[n-1, npix]``. Returns slope, var_read, var_poisson, chisq, each ``[npix]``.
    """
    d = np.diff(np.asarray(resultants, np.float64), axis=0) / np.diff(pattern.tbar)[:, None]
    npix = d.shape[1]
    read_unit = scaled_difference_covariance(pattern, 0.0, 1.0)
    poisson_unit = scaled_difference_covariance(pattern, 1.0, 0.0)
    out = np.zeros((4, npix))
    for p in range(npix):
        use = mask[:, p]
        if not use.any():
            continue
        g = max(guess[p], 0.0)
        cov = read_noise**2 * read_unit + g * poisson_unit
        cov = cov[np.ix_(use, use)]
        cinv = np.linalg.inv(cov)
        ones = np.ones(use.sum())
        w = cinv @ ones / (ones @ cinv @ ones)
        slope = w @ d[use, p]
        resid = d[use, p] - slope
        out[0, p] = slope
        out[1, p] = read_noise**2 * w @ read_unit[np.ix_(use, use)] @ w
        out[2, p] = g * w @ poisson_unit[np.ix_(use, use)] @ w
        out[3, p] = resid @ cinv @ resid
    return out


def usable_differences(dq):
    bad = (np.asarray(dq) & dqflags.DO_NOT_USE_IN_FIT) != 0
    return ~bad[1:] & ~bad[:-1]


def random_dq(rng, n, npix):
    """Flags: a few jump-flagged resultants, saturated tails, some fully saturated pixels."""
    dq = np.zeros((n, npix), np.uint32)
    dq[rng.integers(0, n, npix), np.arange(npix)] |= np.where(
        rng.random(npix) < 0.3, dqflags.JUMP_DET, 0
    ).astype(np.uint32)
    tail = rng.integers(1, n + 1, npix)
    saturated = rng.random(npix) < 0.3
    dq[np.arange(n)[:, None] >= np.where(saturated, tail, n)[None, :]] |= dqflags.SATURATED
    dq[:, :3] = 0
    dq[:, 3] = dqflags.SATURATED  # nothing usable
    return dq


def simulate_with_jumps(rng, pattern, flux, read_noise, npix, hit_fraction, jump_range):
    """Ramps where ``hit_fraction`` of the pixels get one cosmic ray at a random read after
    the first resultant, of ``jump_range`` times the noise of the noisiest difference [e].
    Returns resultants, hit mask and jump amplitudes [e]."""
    resultants = simulate_ramps(rng, pattern, flux, read_noise, npix)
    cov = difference_covariance(pattern, flux, read_noise)
    noisiest = np.sqrt(np.max(np.diag(cov)[1:]))
    last = pattern.reads[-1][-1]
    first_read = pattern.reads[1][0]
    hit = rng.random(npix) < hit_fraction
    amplitude = np.where(hit, rng.uniform(*jump_range, npix) * noisiest, 0.0)
    when = rng.integers(first_read, last + 1, npix)  # the jump happens just before this read
    for i, reads in enumerate(pattern.reads):
        frac = np.mean(np.asarray(reads)[:, None] >= when[None, :], axis=0)
        resultants[i] += amplitude * frac
    return resultants, hit, amplitude, noisiest


def stcal_likely(resultants, pattern, read_noise, dq=None, rejection_threshold=4.5):
    """stcal's LIKELY on ``[n, npix]`` resultants [e] (gain 1), per-read noise [e].

    stcal divides the read noise by sqrt(2) (it expects the noise of a difference), so it is
    given sqrt(2) x the per-read noise as romancal does. Returns slope, var_rnoise,
    var_poisson, chisq ``[npix]`` and the updated group dq ``[n, npix]``."""
    from stcal.ramp_fitting.likely_fit import likely_ramp_fit
    from stcal.ramp_fitting.ramp_fit_class import RampData

    n, npix = resultants.shape
    ramp_data = RampData()
    groupdq = np.zeros((1, n, 1, npix), np.uint8)
    if dq is not None:
        groupdq[0, :, 0] = dq
    ramp_data.set_arrays(resultants.reshape(1, n, 1, npix).astype(np.float32), groupdq,
                         np.zeros((1, npix), np.uint32), np.zeros((1, npix), np.float32))
    ramp_data.set_meta(name="WFI", frame_time=pattern.read_time, group_time=0, groupgap=0,
                       nframes=1)  # fmt: skip
    ramp_data.set_dqflags(dict(DO_NOT_USE=1, SATURATED=2, JUMP_DET=4, PERSISTENCE=0,
                               NO_GAIN_VALUE=0, UNRELIABLE_SLOPE=0))  # fmt: skip
    ramp_data.read_pattern = [list(np.asarray(r, float) * pattern.read_time)
                              for r in pattern.reads]  # fmt: skip
    ramp_data.rejection_threshold = rejection_threshold
    noise = np.full((1, npix), read_noise * np.sqrt(2))
    image, _, _ = likely_ramp_fit(ramp_data, noise, np.ones((1, npix)))
    out = {key: np.asarray(image[key]).reshape(npix)
           for key in ("slope", "var_rnoise", "var_poisson", "chisq")}  # fmt: skip
    out["groupdq"] = ramp_data.groupdq[0, :, 0].astype(np.uint32)
    return out


# ------------------------------------------------------------------------------------------
# exactness against the dense oracle


@pytest.mark.parametrize("flux", [0.0, 3.0, 80.0, 3000.0])
@pytest.mark.parametrize("read_noise", [5.0, 25.0])
def test_matches_dense_gls_fixed_guess(pattern, rng, flux, read_noise, float_dtype):
    npix = 60
    n = pattern.n_resultants
    resultants = simulate_ramps(rng, pattern, flux, read_noise, npix, pedestal=1000.0)
    dq = random_dq(rng, n, npix)
    guess = flux * rng.uniform(0.5, 1.5, npix)
    fit = fit_ramps_likely(resultants.astype(float_dtype), pattern, read_noise, dq=dq,
                           flux_estimate=guess, detect_jumps=False)  # fmt: skip
    assert fit.par.dtype == float_dtype and fit.chisq.dtype == float_dtype
    mask = usable_differences(dq)
    slope, var_read, var_poisson, chisq = dense_masked_gls(pattern, resultants, read_noise,
                                                           guess, mask)  # fmt: skip
    sigma = np.sqrt(var_read + var_poisson)
    ok = mask.any(axis=0)
    np.testing.assert_array_less(
        np.abs(np.asarray(fit.slope) - slope)[ok], 2e-4 * np.abs(slope[ok]) + 2e-3 * sigma[ok]
    )
    np.testing.assert_allclose(np.asarray(fit.var_read)[ok], var_read[ok], rtol=0.02)
    np.testing.assert_allclose(np.asarray(fit.var_poisson)[ok], var_poisson[ok], rtol=0.02,
                               atol=1e-6 * var_read[ok].max())  # fmt: skip
    np.testing.assert_allclose(np.asarray(fit.var_total)[ok], sigma[ok] ** 2, rtol=0.02)
    # chi-square: absolute tolerance, it is O(n) and float32 loses ~1e-6 of the sums
    np.testing.assert_allclose(np.asarray(fit.chisq)[ok], chisq[ok], rtol=1e-3, atol=2e-2)
    # pixels without a usable difference
    assert not ok[3]
    assert np.all(np.asarray(fit.dq)[:, ~ok] & dqflags.DO_NOT_USE)
    assert np.all(np.asarray(fit.par)[~ok] == 0) and np.all(np.asarray(fit.var)[~ok] == 0)
    assert not np.any(np.asarray(fit.dq)[:, ok] & dqflags.DO_NOT_USE)
    assert np.all(np.isfinite(np.asarray(fit.par))) and np.all(np.isfinite(np.asarray(fit.var)))
    # pedestal is not estimated; the pedestal block of the covariance is 0
    assert fit.pedestal is None and np.all(np.asarray(fit.par)[..., 0] == 0)


def test_two_pass_debiasing_matches_oracle(pattern, rng, float_dtype):
    """Default guess: median usable difference (clipped at 0), then a second pass at the
    first-pass slope clipped at 0 (Brandt 2024a)."""
    npix = 80
    n = pattern.n_resultants
    flux = rng.choice([0.5, 20.0, 500.0], npix)
    resultants = simulate_ramps(rng, pattern, flux, 12.0, npix)
    dq = random_dq(rng, n, npix)
    fit = fit_ramps_likely(resultants.astype(float_dtype), pattern, 12.0, dq=dq,
                           detect_jumps=False)  # fmt: skip
    mask = usable_differences(dq)
    d = np.diff(resultants, axis=0) / np.diff(pattern.tbar)[:, None]
    median = np.array([np.median(d[mask[:, p], p]) if mask[:, p].any() else 0.0
                       for p in range(npix)])  # fmt: skip
    first = dense_masked_gls(pattern, resultants, 12.0, np.maximum(median, 0), mask)[0]
    slope, var_read, var_poisson, _ = dense_masked_gls(pattern, resultants, 12.0,
                                                       np.maximum(first, 0), mask)  # fmt: skip
    ok = mask.any(axis=0)
    sigma = np.sqrt(var_read + var_poisson)
    np.testing.assert_array_less(
        np.abs(np.asarray(fit.slope) - slope)[ok], 2e-4 * np.abs(slope[ok]) + 2e-3 * sigma[ok]
    )
    np.testing.assert_allclose(np.asarray(fit.var_poisson)[ok], var_poisson[ok], rtol=0.02,
                               atol=1e-6 * var_read[ok].max())  # fmt: skip


@pytest.mark.parametrize("table", [11, 16])
def test_long_patterns_float32_no_overflow(table, rng, float_dtype):
    """32-read resultants and 16 resultants: the pivot form needs no rescaling; compare with
    the dense oracle at low read noise and high flux (large dynamic range of alpha)."""
    pattern = romanjax.ReadPattern.from_ma_table(table)
    npix = 40
    for flux, read_noise in [(2e4, 1.0), (0.1, 30.0)]:
        resultants = simulate_ramps(rng, pattern, flux, read_noise, npix)
        fit = fit_ramps_likely(resultants.astype(float_dtype), pattern, read_noise,
                               flux_estimate=flux, detect_jumps=False)  # fmt: skip
        mask = np.ones((pattern.n_resultants - 1, npix), bool)
        slope, var_read, var_poisson, chisq = dense_masked_gls(
            pattern, resultants, read_noise, np.full(npix, flux), mask
        )
        sigma = np.sqrt(var_read + var_poisson)
        assert np.all(np.isfinite(np.asarray(fit.var)))
        np.testing.assert_array_less(np.abs(np.asarray(fit.slope) - slope),
                                     2e-4 * np.abs(slope) + 2e-3 * sigma)  # fmt: skip
        np.testing.assert_allclose(np.asarray(fit.var_total), sigma**2, rtol=0.02)
        np.testing.assert_allclose(np.asarray(fit.chisq), chisq, rtol=1e-3, atol=5e-2)


def test_shapes_and_scalar_ramp(rng):
    pattern = romanjax.ReadPattern.from_ma_table(4)
    resultants = simulate_ramps(rng, pattern, 10.0, 10.0, 12).astype(np.float32)
    fit = fit_ramps_likely(resultants.reshape(9, 3, 4), pattern, 10.0)
    assert fit.par.shape == (3, 4, 2) and fit.var.shape == (3, 4, 3, 2, 2)
    assert fit.dq.shape == (9, 3, 4) and fit.dq.dtype == np.uint32 and fit.chisq.shape == (3, 4)
    flat = fit_ramps_likely(resultants, pattern, 10.0)
    np.testing.assert_array_equal(np.asarray(fit.slope).ravel(), np.asarray(flat.slope))
    single = fit_ramps_likely(resultants[:, 5], pattern, 10.0)
    assert single.par.shape == (2,) and single.dq.shape == (9,)
    np.testing.assert_allclose(float(single.slope), float(flat.slope[5]), rtol=1e-6)
    with pytest.raises(ValueError, match="resultants"):
        fit_ramps_likely(resultants[:5], pattern, 10.0)
    with pytest.raises(ValueError, match="read_noise"):
        fit_ramps_likely(resultants, pattern, np.ones(5))


def test_two_omit_threshold_matches_stcal_formula():
    scipy_stats = pytest.importorskip("scipy.stats")
    scipy_special = pytest.importorskip("scipy.special")
    for t in (3.0, 4.5, 6.0):
        expected = scipy_stats.chi2.isf(scipy_special.erfc(t / math.sqrt(2)), 2)
        assert two_omit_threshold(t) == pytest.approx(expected, rel=1e-10)
    assert two_omit_threshold(4.5) == pytest.approx(23.8, abs=0.05)


# ------------------------------------------------------------------------------------------
# jump detection


def test_jump_flags_amplitudes_and_thresholds(rng):
    pattern = romanjax.ReadPattern.from_ma_table(4)
    npix = 400
    resultants = simulate_ramps(rng, pattern, 20.0, 15.0, npix)
    jump = 2000.0
    resultants[5:, :200] += jump  # jump between resultants 4 and 5: difference 4
    fit, jumps = fit_ramps_likely(resultants.astype(np.float32), pattern, 15.0,
                                  return_jump_amplitudes=True)  # fmt: skip
    dq = np.asarray(fit.dq)
    assert np.all(dq[5, :200] == dqflags.JUMP_DET)  # resultant i+1 of masked difference i
    # sometimes the pair (3, 4) or (4, 5) around a multi-read resultant wins after the
    # threshold penalty, which flags one neighbour too; stcal does exactly the same
    single = np.all(np.delete(dq[:, :200], 5, axis=0) == 0, axis=0)
    pair = (dq[4, :200] == dqflags.JUMP_DET) ^ (dq[6, :200] == dqflags.JUMP_DET)
    assert np.all(single | pair) and single.mean() > 0.7
    assert np.all(dq[:4, :200] == 0) and np.all(dq[7:, :200] == 0)
    assert np.mean(np.any(dq[:, 200:] != 0, axis=0)) < 0.01
    amplitude = np.asarray(jumps.amplitude)
    sigma = np.asarray(jumps.sigma)
    # a pair splits the jump over its two differences: compare the total
    total, total_sigma = amplitude[:, :200].sum(0), sigma[:, :200].sum(0)
    assert np.all(sigma[5, :200] > 0) and np.all(np.abs(total - jump) < 5 * total_sigma)
    assert np.all(amplitude[dq == 0] == 0) and np.all(sigma[dq == 0] == 0)
    # the slopes of the hit pixels are unbiased after masking
    z = (np.asarray(fit.slope[:200]) - 20.0) / np.sqrt(np.asarray(fit.var_total[:200]))
    assert abs(np.mean(z)) < 0.3 and 0.6 < np.std(z) < 1.4
    # a threshold above the jump's chi-square leaves it in
    none = fit_ramps_likely(resultants.astype(np.float32), pattern, 15.0,
                            threshold_one_omit=1e12, threshold_two_omit=1e12)  # fmt: skip
    assert not np.any(np.asarray(none.dq))
    off = fit_ramps_likely(resultants.astype(np.float32), pattern, 15.0, detect_jumps=False)
    assert not np.any(np.asarray(off.dq))


@pytest.mark.parametrize("table", [5, 110])
def test_search_as_loops_equals_written_out(table, rng, monkeypatch):
    """Patterns longer than SEARCH_UNROLL_LIMIT search with loops over arrays; written out
    instead (the limit raised), the same pixels drop the same differences, with the same
    amplitudes and slopes (the two forms differ only in the order of float operations)."""
    import jax

    from romanjax.ramp import _likely

    pattern = romanjax.ReadPattern.from_ma_table(table)
    assert pattern.n_resultants > _likely.SEARCH_UNROLL_LIMIT
    npix = 600
    resultants = simulate_ramps(rng, pattern, 20.0, 15.0, npix)
    n = pattern.n_resultants
    at = rng.integers(1, n, npix)
    hit = rng.random(npix) < 0.3
    resultants += np.where(hit & (np.arange(n)[:, None] >= at), 1500.0, 0.0)
    second = rng.random(npix) < 0.1  # some pixels with a second jump: a second search trip
    resultants += np.where(second & (np.arange(n)[:, None] >= n // 2 + 1), 2500.0, 0.0)

    def fit():
        jax.clear_caches()
        return fit_ramps_likely(resultants.astype(np.float32), pattern, 15.0,
                                return_jump_amplitudes=True)  # fmt: skip

    assert _likely.search_form(n) != n  # loops over arrays
    loops = fit()
    monkeypatch.setattr(_likely, "SEARCH_UNROLL_LIMIT", 16)
    assert _likely.search_form(n) == n  # written out
    written = fit()
    dq_loops, dq_written = np.asarray(loops[0].dq), np.asarray(written[0].dq)
    assert np.mean(np.any(dq_written == dqflags.JUMP_DET, axis=0)[hit]) > 0.9
    np.testing.assert_array_equal(dq_loops, dq_written)
    np.testing.assert_allclose(np.asarray(loops[0].slope), np.asarray(written[0].slope),
                               rtol=1e-5, atol=1e-5)  # fmt: skip
    np.testing.assert_allclose(np.asarray(loops[1].amplitude), np.asarray(written[1].amplitude),
                               rtol=1e-4, atol=1e-2)  # fmt: skip


def test_jump_inside_multiread_resultant_flags_pair(rng):
    """A jump in the middle of a 8-read resultant contaminates both neighbouring differences;
    the two-omit test masks both and flags resultants i+1 and i+2 (stcal)."""
    pattern = romanjax.ReadPattern.from_ma_table(4)  # resultant 5 holds reads 18..25
    npix = 200
    resultants = simulate_ramps(rng, pattern, 5.0, 10.0, npix)
    reads = np.asarray(pattern.reads[5])
    resultants[5] += 3000.0 * np.mean(reads >= 22)
    resultants[6:] += 3000.0
    fit = fit_ramps_likely(resultants.astype(np.float32), pattern, 10.0)
    dq = np.asarray(fit.dq)
    assert np.mean((dq[5] == dqflags.JUMP_DET) & (dq[6] == dqflags.JUMP_DET)) > 0.95


@pytest.mark.single_pass
def test_final_fit_after_search_matches_oracle(rng):
    """The first of the two final passes is taken from the jump search: the screen's fit for
    a pixel that does not search, the last search step's for one that does, and one more
    step that only fits for a pixel whose last drop left three differences. Every path must
    give the float64 dense oracle's two-pass slope with the mask the search found."""
    import jax
    import jax.numpy as jnp

    pattern = romanjax.ReadPattern(((1,), (2,), (3, 4), (5, 6), (7,), (8,)))  # 5 differences
    read_noise, npix, n = 10.0, 600, 6
    resultants = simulate_ramps(rng, pattern, rng.uniform(5.0, 200.0, npix), read_noise, npix)
    for jumps in (1, 2):  # pixels with one and with two jumps at random resultants
        hit = rng.random(npix) < 0.3
        at = rng.integers(1, n, npix)
        resultants += np.where(hit & (np.arange(n)[:, None] >= at), 2000.0 * jumps, 0.0)
    with jax.enable_x64(True):
        fit = fit_ramps_likely(jnp.asarray(resultants, jnp.float64), pattern, read_noise)
        slope = np.asarray(fit.slope)
    jumps = (np.asarray(fit.dq) & dqflags.JUMP_DET) != 0
    mask = ~jumps[1:]  # difference i masked <=> resultant i+1 flagged
    kept = mask.sum(axis=0)
    # the three paths: no search (5 kept), the search's last step (4), one step more (3)
    assert all(np.sum(kept == k) >= 10 for k in (5, 4, 3))
    d = np.diff(resultants, axis=0) / np.diff(pattern.tbar)[:, None]
    first = dense_masked_gls(pattern, resultants, read_noise,
                             np.maximum(np.median(d, axis=0), 0), mask)[0]  # fmt: skip
    slope_oracle, var_read, var_poisson, _ = dense_masked_gls(
        pattern, resultants, read_noise, np.maximum(first, 0), mask)  # fmt: skip
    sigma = np.sqrt(var_read + var_poisson)
    np.testing.assert_array_less(np.abs(slope - slope_oracle), 1e-9 * sigma)


@pytest.mark.single_pass
@pytest.mark.slow  # ~25 s to compile the VJP of the two-pass fit with the jump search
def test_gradient_with_jump_detection_matches_oracle(rng):
    """With jump detection the first of the two final passes is not rerun: its rates come
    from the search's fits, and a custom JVP gives their derivatives. The gradient of each
    slope with respect to its resultants must be that of the float64 dense oracle (median
    guess, first pass, second pass, with the jump mask the fit found held fixed), by central
    differences; without the first pass's derivatives it misses the dependence of the second
    pass's covariance on the data."""
    import jax
    import jax.numpy as jnp

    pattern = romanjax.ReadPattern.from_ma_table(109)
    read_noise = 9.0
    npix = 3
    resultants = simulate_ramps(rng, pattern, np.array([25.0, 400.0, 60.0]), read_noise, npix)
    resultants[6:, 0] += 900.0  # a jump: the search drops a difference of pixel 0
    resultants[4:, 2] += 700.0  # and one of pixel 2
    with jax.enable_x64(True):
        data = jnp.asarray(resultants, jnp.float64)
        fit = fit_ramps_likely(data, pattern, read_noise)
        total = jax.grad(lambda r: fit_ramps_likely(r, pattern, read_noise).slope.sum())
        grad = np.asarray(total(data))
    jumps = (np.asarray(fit.dq) & dqflags.JUMP_DET) != 0
    assert jumps[6, 0] and jumps[4, 2] and not jumps[:, 1].any()
    mask = ~jumps[1:]  # difference i masked <=> resultant i+1 flagged

    def oracle(r):
        d = np.diff(r, axis=0) / np.diff(pattern.tbar)[:, None]
        median = np.median(d, axis=0)  # no dq: every difference is in the first guess
        first = dense_masked_gls(pattern, r, read_noise, np.maximum(median, 0), mask)[0]
        return dense_masked_gls(pattern, r, read_noise, np.maximum(first, 0), mask)[0]

    np.testing.assert_allclose(np.asarray(fit.slope), oracle(resultants), rtol=1e-9)
    eps = 1e-3
    expected = np.zeros_like(resultants)
    for i in range(pattern.n_resultants):
        step = np.zeros_like(resultants)
        step[i] = eps
        expected[i] = (oracle(resultants + step) - oracle(resultants - step)) / (2 * eps)
    np.testing.assert_allclose(grad, expected, rtol=1e-6, atol=1e-7 * np.abs(expected).max())


@requires_stcal
@pytest.mark.parametrize("table", [4, 110, 11])
def test_matches_stcal_likely(table):
    rng = np.random.default_rng(table)
    pattern = romanjax.ReadPattern.from_ma_table(table)
    n = pattern.n_resultants
    npix = 3000
    flux = rng.choice([1.0, 50.0, 2000.0], npix)
    read_noise = 15.0
    resultants = simulate_ramps(rng, pattern, flux, read_noise, npix)
    hit = rng.random(npix) < 0.3
    when = rng.integers(1, n, npix)
    resultants += hit * rng.uniform(200, 5000, npix) * (np.arange(n)[:, None] >= when)
    resultants = resultants.astype(np.float32)
    dq = np.zeros((n, npix), np.uint32)
    dq[-2:, :300] = dqflags.SATURATED
    ref = stcal_likely(resultants, pattern, read_noise, dq=dq)
    fit = fit_ramps_likely(resultants, pattern, read_noise, dq=dq)
    same = np.all(np.asarray(fit.resultant_dq(dq)) == ref["groupdq"], axis=0)
    assert same.mean() >= 0.99
    assert np.any(np.asarray(fit.dq) & dqflags.JUMP_DET)
    sigma = np.sqrt(ref["var_rnoise"] + ref["var_poisson"])
    dz = np.abs(np.asarray(fit.slope) - ref["slope"]) / sigma
    assert np.max(dz[same]) < 0.05
    # stcal's median rate guess includes the differences of flagged (saturated) resultants,
    # romanjax's excludes them: on those pixels the covariance guess differs slightly
    strict = same & np.all(dq == 0, axis=0)
    loose = same & ~strict
    np.testing.assert_allclose(np.asarray(fit.var_read)[strict], ref["var_rnoise"][strict],
                               rtol=1e-3)  # fmt: skip
    np.testing.assert_allclose(np.asarray(fit.var_read)[loose], ref["var_rnoise"][loose],
                               rtol=1e-2)  # fmt: skip
    poisson = np.asarray(fit.var_poisson)
    err = np.abs(poisson - ref["var_poisson"])
    assert np.all(err[strict] <= 1e-3 * ref["var_poisson"][strict] + 1e-4 * sigma[strict] ** 2)
    assert np.all(err[loose] <= 5e-2 * sigma[loose] ** 2)  # guess differs by ~sigma/10
    np.testing.assert_allclose(np.asarray(fit.chisq)[strict], ref["chisq"][strict],
                               rtol=1e-3, atol=1e-2)  # fmt: skip
    np.testing.assert_allclose(np.asarray(fit.chisq)[loose], ref["chisq"][loose],
                               rtol=2e-2, atol=1e-1)  # fmt: skip


# ------------------------------------------------------------------------------------------
# Monte Carlo calibration


@pytest.mark.parametrize("flux", [1.0, 50.0, 2000.0])
def test_monte_carlo_unbiased_and_calibrated(flux):
    rng = np.random.default_rng(int(flux) + 7)
    pattern = romanjax.ReadPattern.from_ma_table(4)
    npix = 40000
    resultants = simulate_ramps(rng, pattern, flux, 20.0, npix)
    fit = fit_ramps_likely(resultants.astype(np.float32), pattern, 20.0)
    z = (np.asarray(fit.slope, np.float64) - flux) / np.sqrt(np.asarray(fit.var_total))
    # 1/sqrt(4e4) = 0.005 statistical error on the mean; chi2/dof error sqrt(2/4e4) = 0.007
    assert abs(np.mean(z)) < 0.05
    assert abs(np.mean(z**2) - 1) < 0.05
    # jump detection on clean ramps: false flags well under 1%
    assert np.mean(np.any(np.asarray(fit.dq) != 0, axis=0)) < 0.01
    # chi-square of the fit itself: mean near the n - 2 degrees of freedom
    dof = pattern.n_resultants - 2
    assert abs(np.mean(np.asarray(fit.chisq)) / dof - 1) < 0.05


@pytest.mark.parametrize("flux", [1.0, 50.0, 2000.0])
def test_monte_carlo_jump_detection(flux):
    """30% of pixels hit by jumps of 10-100x the noise of the noisiest difference: >= 97%
    found, < 1% false flags on clean pixels, slopes of hit pixels still calibrated."""
    rng = np.random.default_rng(int(flux) + 11)
    pattern = romanjax.ReadPattern.from_ma_table(4)
    npix = 20000
    resultants, hit, _, _ = simulate_with_jumps(rng, pattern, flux, 20.0, npix, 0.3, (10, 100))
    fit = fit_ramps_likely(resultants.astype(np.float32), pattern, 20.0)
    flagged = np.any(np.asarray(fit.dq) & dqflags.JUMP_DET, axis=0)
    assert flagged[hit].mean() >= 0.97
    assert flagged[~hit].mean() < 0.01
    z = (np.asarray(fit.slope, np.float64) - flux) / np.sqrt(np.asarray(fit.var_total))
    assert abs(np.mean(z[hit & flagged])) < 0.1
    assert abs(np.mean(z[hit & flagged] ** 2) - 1) < 0.1
