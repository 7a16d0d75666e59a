"""Jump detection of the Casertano fitter: the section-9 example, stcal ols_cas22
(use_jump=True) on ramps with injected jumps, false-jump rate and chi-square calibration."""

import numpy as np
import oracles
import pytest
from conftest import UNEVEN_READS, requires_stcal

import romanjax
from romanjax import ReadPattern, fit_ramps_casertano

MA4 = ReadPattern.from_ma_table(4)


def ramps_with_jumps(rng, pattern, flux, read_noise, npix, fraction, pedestal=1e4,
                     sizes=(30, 1e4)):  # fmt: skip
    """Read-by-read Poisson ramps; a jump of 30..1e4 e (log-uniform) at a random read in
    ``fraction`` of the pixels. Returns resultants [n, npix] and the hit mask."""
    ramps = oracles.simulate_ramps(rng, pattern, flux, read_noise, npix, pedestal)
    hit = rng.random(npix) < fraction
    read = rng.integers(1, pattern.reads[-1][-1] + 1, npix)
    size = 10 ** rng.uniform(*np.log10(sizes), npix)
    for i, reads in enumerate(pattern.reads):
        ramps[i] += hit * size * (np.asarray(reads)[None] >= read[:, None]).mean(axis=1)
    return ramps, hit


def test_section9_jump_example():
    # reference values (romanisim 0.15 / stcal 1.20): a 1000 e step from read 20 on,
    # f = 10, sigma = 10, MA table 4
    reads = np.arange(1, 45)
    ramp = 1e4 + 10 * MA4.read_time * reads + np.where(reads >= 20, 1000.0, 0.0)
    res = np.array([ramp[np.asarray(r) - 1].mean() for r in MA4.reads])[:, None]
    fit = fit_ramps_casertano(res.astype("f4"), MA4, 10.0, detect_jumps=True)
    np.testing.assert_array_equal(np.asarray(fit.dq)[:, 0], [0, 0, 0, 0, 4, 4, 0, 0, 0])
    np.testing.assert_allclose(fit.slope, [9.999996], rtol=2e-6)
    plain = fit_ramps_casertano(res.astype("f4"), MA4, 10.0)
    np.testing.assert_allclose(plain.slope, [17.98], rtol=1e-3)
    # input bits that do not split the ramp change nothing; resultant_dq ORs them in
    dq = np.zeros((9, 1), np.uint32)
    dq[:, 0] = romanjax.dq.NONLINEAR
    fit = fit_ramps_casertano(res.astype("f4"), MA4, 10.0, dq=dq, detect_jumps=True)
    np.testing.assert_array_equal(np.asarray(fit.dq)[:, 0], [0, 0, 0, 0, 4, 4, 0, 0, 0])
    np.testing.assert_array_equal(
        np.asarray(fit.resultant_dq(dq))[:, 0],
        romanjax.dq.NONLINEAR | np.array([0, 0, 0, 0, 4, 4, 0, 0, 0]),
    )
    # a higher threshold finds nothing
    high = fit_ramps_casertano(res.astype("f4"), MA4, 10.0, detect_jumps=True,
                               threshold_intercept=1e3)  # fmt: skip
    assert np.all(np.asarray(high.dq) == 0)


@requires_stcal
@pytest.mark.parametrize("table", [4, 17, 110, "uneven"])
def test_matches_stcal(rng, table):
    from stcal.ramp_fitting.ols_cas22 import fit_ramps

    pattern = ReadPattern(UNEVEN_READS) if table == "uneven" else ReadPattern.from_ma_table(table)
    npix = 4000
    flux = 10 ** rng.uniform(-1, 3.5, npix)
    sigma = rng.choice([5.0, 10.0, 20.0], npix)
    ramps, hit = ramps_with_jumps(rng, pattern, flux, sigma, npix, 0.25)
    ramps = ramps.astype("f4")
    dq_in = np.zeros(ramps.shape, np.int32)
    dq_in[pattern.n_resultants - 1, rng.random(npix) < 0.1] = romanjax.dq.SATURATED
    dq_stcal = dq_in.copy()  # stcal writes the jumps into it in place
    out = fit_ramps(ramps, dq_stcal, sigma.astype("f4"), pattern.read_time,
                    [list(r) for r in pattern.reads], use_jump=True)  # fmt: skip
    fit = fit_ramps_casertano(ramps, pattern, sigma, dq=dq_in, detect_jumps=True)
    theirs = (dq_stcal == romanjax.dq.JUMP_DET) & (dq_in == 0)
    ours = (np.asarray(fit.dq) & romanjax.dq.JUMP_DET) != 0
    agree = np.all(theirs == ours, axis=0)
    assert agree.mean() >= 0.995, agree.mean()
    assert ours[:, hit].any(axis=0).mean() > 0.5  # the test has teeth: most jumps are found
    slope = np.asarray(fit.slope, np.float64)
    ref = out.parameters[:, 1]
    tol = 1e-4 * np.abs(ref) + 1e-3 * np.sqrt(out.variances[:, 2])
    assert np.all(np.abs(slope - ref)[agree] <= tol[agree] + 1e-6)
    np.testing.assert_allclose(np.asarray(fit.var_read)[agree], out.variances[agree, 0],
                               rtol=1e-3, atol=1e-12)  # fmt: skip
    # Poisson variance = V_S max(slope, 0): allow the slope tolerance times V_S on top
    coeff = out.variances[:, 1] / np.where(ref > 0, ref, 1)
    diff = np.abs(np.asarray(fit.var_poisson) - out.variances[:, 1])
    assert np.all((diff <= 1e-3 * out.variances[:, 1] + coeff * tol + 1e-12)[agree])


def test_accelerator_candidate_refit_is_the_cpu_refit(monkeypatch, float_dtype):
    """Off the CPU the candidates are refitted by a work queue (one loop trip per jump split,
    ``_refit_queue``) instead of the CPU's blocks: forced here on the CPU (``by_platform``
    taking the accelerator branch, which also makes ``materialise`` an optimisation
    barrier), with a queue far smaller than the candidates (several trips before the first
    split), it finds the same jumps and gives the same fits as the CPU path, with jump
    detection and with input flags alone."""
    import jax.numpy as jnp

    from romanjax import _platform
    from romanjax.ramp import _casertano

    pattern = MA4
    rng = np.random.default_rng(4)
    npix, queue = 3011, 64  # a pixel count of its own: fresh traces
    flux = 10 ** rng.uniform(-1, 3.5, npix)
    ramps, hit = ramps_with_jumps(rng, pattern, flux, 10.0, npix, 0.1)
    ramps = ramps.astype(float_dtype)
    dq = np.zeros(ramps.shape, np.uint32)
    dq[pattern.n_resultants // 2, rng.random(npix) < 0.05] = romanjax.dq.DO_NOT_USE
    modes = (True, False)  # jump detection (input flags and jumps), input flags alone
    cpu = [fit_ramps_casertano(jnp.asarray(ramps), pattern, 10.0, dq=dq, detect_jumps=jumps)
           for jumps in modes]  # fmt: skip
    # the accelerator path, on the same pixels and one more (a shape of its own)
    monkeypatch.setattr(_platform, "by_platform", lambda *operands, cpu, default: default(
        *operands))  # fmt: skip
    monkeypatch.setattr(_casertano, "queue_size", lambda n_pixels: queue)
    more = np.concatenate([ramps, ramps[:, :1]], axis=1)
    more_dq = np.concatenate([dq, dq[:, :1]], axis=1)
    for reference, jumps in zip(cpu, modes):
        fit = fit_ramps_casertano(jnp.asarray(more), pattern, 10.0, dq=more_dq,
                                  detect_jumps=jumps)  # fmt: skip
        split = np.asarray(reference.jump_map).any(axis=0)
        if jumps:  # the comparison has jumps in it, more than the queue holds
            assert split[hit].mean() > 0.5 and split.sum() > 2 * queue
        else:
            assert not split.any()
        np.testing.assert_array_equal(np.asarray(fit.flags)[:, :npix], reference.flags)
        # the two programs fuse differently, so they may round differently: to 1e-4 sigma
        # or a few units of the last place (bright pixels, where sigma / slope ~ 1e-3)
        slope = np.asarray(reference.slope, np.float64)
        tol = 1e-4 * np.sqrt(np.asarray(reference.var_total, np.float64))
        tol += 4 * np.finfo(float_dtype).eps * np.abs(slope)
        assert np.all(np.abs(np.asarray(fit.slope)[:npix] - slope) <= tol)
        for name in ("var_read", "var_poisson"):
            np.testing.assert_allclose(np.asarray(getattr(fit, name))[:npix],
                                       getattr(reference, name), rtol=1e-5,
                                       err_msg=name)  # fmt: skip


def test_false_jumps_and_chi_square(rng):
    # clean ramps, flux 100, sigma 5 (stcal's test): report and bound the false-jump rate
    npix = 100_000
    ramps = oracles.simulate_ramps(rng, MA4, 100.0, 5.0, npix, pedestal=1e4)
    fit = fit_ramps_casertano(ramps, MA4, 5.0, detect_jumps=True)
    false_rate = np.any(np.asarray(fit.dq) & romanjax.dq.JUMP_DET, axis=0).mean()
    print(f"false-jump rate on clean ramps (f=100, sigma=5): {false_rate:.2e}")
    assert false_rate < 1e-3
    chi2 = np.mean((np.asarray(fit.slope, np.float64) - 100.0) ** 2 / np.asarray(fit.var_total))
    assert abs(chi2 - 1) < 0.03, chi2
    # with 1000 e jumps in a quarter of the pixels (stcal's test): calibrated after detection
    # (smaller jumps are missed at times and bias those slopes by design, Sharma & Casertano)
    ramps, hit = ramps_with_jumps(rng, MA4, 100.0, 5.0, npix, 0.25, sizes=(1e3, 1e3))
    fit = fit_ramps_casertano(ramps, MA4, 5.0, detect_jumps=True)
    found = np.any(np.asarray(fit.dq) & romanjax.dq.JUMP_DET, axis=0)
    print(f"jumps found in {found[hit].mean():.1%} of hit pixels")
    keep = np.asarray(fit.var_total) > 0
    resid = (np.asarray(fit.slope, np.float64) - 100.0) ** 2 / np.where(keep, fit.var_total, 1)
    assert found[hit].mean() > 0.95
    chi2 = np.mean(resid[keep])
    assert abs(chi2 - 1) < 0.03, chi2


@pytest.mark.parametrize("m", [1, 37, 4096, 16 * 4099, 100_003, 1 << 17])
def test_candidate_compaction(rng, m):
    # the candidate compaction (two-level prefix count + scatter) equals jnp.nonzero
    import jax.numpy as jnp

    from romanjax.kernels.queue import compact as _compact
    from romanjax.kernels.queue import prefix_count as _prefix_count

    for fraction in (0.0, 0.03, 1.0):
        mask = rng.random(m) < fraction
        np.testing.assert_array_equal(_prefix_count(jnp.asarray(mask)), np.cumsum(mask))
        size = m + 5
        expected = np.full(size, m)
        expected[: mask.sum()] = np.nonzero(mask)[0]
        np.testing.assert_array_equal(_compact(jnp.asarray(mask), size), expected)
        half = max(m // 2, 1)  # a buffer smaller than the count keeps the first entries
        np.testing.assert_array_equal(_compact(jnp.asarray(mask), half), expected[:half])


def _exact_whole_ramp_split(ramps, alpha, read_noise, pattern, intercept=5.5, constant=1 / 3):
    """float64 numpy: stcal's whole-ramp decision (running max of max(z1, z2) over
    i = 0..n-3 started at z1[n-2], NaN start never replaced, strictly above the threshold)."""
    from romanjax.kernels.jumps import jump_constants

    c = jump_constants(pattern)
    n = pattern.n_resultants
    corr = -alpha / (pattern.tbar[-1] - pattern.tbar[0])
    read_var = read_noise**2
    with np.errstate(all="ignore"):
        def z(k, i):
            delta = (ramps[i + k] - ramps[i]) * c[f"inv_dt{k}"][i] - alpha
            return delta / np.sqrt(read_var * c[f"read{k}"][i] + alpha * c[f"poisson{k}"][i]
                                   + corr)  # fmt: skip

        top = z(1, n - 2)
        for i in range(n - 2):
            stat = np.fmax(z(1, i), z(2, i))
            top = np.where(np.isnan(top), top, np.fmax(top, stat))
        limit = intercept - constant * np.log10(np.clip(alpha, 1, 1e4))
        return top > limit


@pytest.mark.parametrize("table", [4, 109, "uneven"])
def test_whole_ramp_screen_is_a_superset(rng, table):
    """The sqrt-free screen flags every pixel stcal's statistic splits (zero and large read
    noise, negative and zero slopes, jumps of all sizes), and few others."""
    import jax.numpy as jnp

    from romanjax.kernels.jumps import whole_ramp_trigger

    pattern = ReadPattern(UNEVEN_READS) if table == "uneven" else ReadPattern.from_ma_table(table)
    npix = 40_000
    flux = np.concatenate([10 ** rng.uniform(-1, 4, npix - 2000), np.zeros(1000),
                           -rng.uniform(0, 5, 1000)])  # fmt: skip
    sigma = rng.choice([0.0, 1.0, 5.0, 30.0], npix)
    ramps, _ = ramps_with_jumps(rng, pattern, np.maximum(flux, 0), sigma, npix, 0.3,
                                sizes=(3, 1e4))  # fmt: skip
    ramps += flux * 0 + np.minimum(flux, 0) * pattern.tbar[:, None]  # negative slopes
    ramps = ramps.astype(np.float32)
    for intercept, constant in ((5.5, 1 / 3), (1.0, 0.5)):  # the second: threshold <= 0 too
        # alpha: any per-pixel slope will do for the comparison; use a noisy one
        alpha = ((ramps[-1] - ramps[0]) / (pattern.tbar[-1] - pattern.tbar[0])
                 * rng.uniform(0.8, 1.2, npix)).astype(np.float32)  # fmt: skip
        exact = _exact_whole_ramp_split(ramps.astype(np.float64), alpha.astype(np.float64),
                                        sigma, pattern, intercept, constant)  # fmt: skip
        screen = np.asarray(whole_ramp_trigger(
            [jnp.asarray(r) for r in ramps], jnp.asarray(alpha),
            jnp.asarray(sigma**2, jnp.float32), pattern, intercept, constant))  # fmt: skip
        assert exact.any() and not exact.all()  # the test has teeth
        missed = exact & ~screen
        assert not missed.any(), np.flatnonzero(missed)[:10]
        if intercept == 5.5:  # the screen adds only pixels the exact test is close to
            assert (screen & ~exact).mean() < 0.05, (screen & ~exact).mean()
