"""simulate_l1: read noise, rounding, saturation, cosmic-ray flags, IPC, key separation."""

import jax
import numpy as np

import romanjax
from romanjax import dq as dqbits
from romanjax.l1 import IPC_KERNEL, simulate_l1

PATTERN = romanjax.ReadPattern.from_ma_table(4)


def test_read_noise_variance_and_quantisation():
    sigma = 5.0
    out = simulate_l1(jax.random.key(0), np.zeros(100_000, int), PATTERN, read_noise=sigma,
                      gain=1.0, pedestal=1000.0, pedestal_noise=0.0)  # fmt: skip
    res = np.asarray(out.resultants, np.float64)
    np.testing.assert_array_equal(res, np.round(res))
    var = res.var(axis=1)
    expected = sigma**2 / PATTERN.n_reads + 1 / 12
    assert np.all(np.abs(var / expected - 1) < 5 * np.sqrt(2 / res.shape[1])), var / expected


def test_saturation_clip_and_flags():
    out = simulate_l1(jax.random.key(1), np.array([0, 10**7, 2 * 10**9]), PATTERN)
    res, dq = np.asarray(out.resultants), np.asarray(out.dq)
    assert res.max() <= 1.1 * 55000
    np.testing.assert_array_equal(dq & dqbits.SATURATED > 0, res >= 55000)
    assert dq[-1, 1] & dqbits.SATURATED and not np.any(dq[:, 0] & dqbits.SATURATED)


def test_cosmic_rays_flagged_where_they_land_and_off_leaves_photons():
    counts = np.zeros((128, 128), int)
    kw = dict(read_noise=0.0, gain=1.0, pedestal=0.0, pedestal_noise=0.0)
    on = simulate_l1(jax.random.key(2), counts, PATTERN, cosmic_rays={"flux": 200.0}, **kw)
    res, dq = np.asarray(on.resultants), np.asarray(on.dq)
    rises = np.diff(np.concatenate([np.zeros((1, 128, 128)), res]), axis=0) > 0
    assert rises.sum() > 50
    flagged = (dq & dqbits.JUMP_DET) > 0
    # a rise comes from a hit in this resultant, or a hit in a non-final read of the previous
    # one (that resultant only averaged part of it)
    previous = np.concatenate([np.zeros((1, 128, 128), bool), flagged[:-1]])
    assert np.all(flagged[rises] | previous[rises])
    assert flagged.sum() > 0 and rises[flagged].mean() > 0.8  # small hits may round away
    # single-read resultants show every hit: rise and flag coincide exactly
    single = romanjax.ReadPattern([[k] for k in range(1, 10)])
    on = simulate_l1(jax.random.key(2), counts, single, cosmic_rays={"flux": 200.0}, **kw)
    res, dq = np.asarray(on.resultants), np.asarray(on.dq)
    rises = np.diff(np.concatenate([np.zeros((1, 128, 128)), res]), axis=0) > 0
    assert rises.sum() > 50
    np.testing.assert_array_equal(rises, (dq & dqbits.JUMP_DET) > 0)
    # with photons: pixels never hit are identical with CRs on and off
    counts = np.full((128, 128), 5000)
    a = simulate_l1(jax.random.key(3), counts, PATTERN, cosmic_rays={"flux": 50.0})
    b = simulate_l1(jax.random.key(3), counts, PATTERN)
    clean = ~np.any(np.asarray(a.dq) & dqbits.JUMP_DET, axis=0)
    assert clean.mean() > 0.5
    np.testing.assert_array_equal(np.asarray(a.resultants)[:, clean],
                                  np.asarray(b.resultants)[:, clean])  # fmt: skip


def test_ipc_point_source_and_same_key():
    counts = np.zeros((9, 9), int)
    counts[4, 4] = 100_000
    # saturation above the peak, so the 1.1 x saturation clip does not cut the centre pixel
    kw = dict(read_noise=0.0, gain=1.0, pedestal=0.0, pedestal_noise=0.0, saturation=2e5)
    out = simulate_l1(jax.random.key(4), counts, PATTERN, ipc=True, **kw)
    last = np.asarray(out.resultants[-1], np.float64)
    np.testing.assert_allclose(last[3:6, 3:6], np.round(1e5 * IPC_KERNEL), atol=1)
    again = simulate_l1(jax.random.key(4), counts, PATTERN, ipc=True, **kw)
    np.testing.assert_array_equal(out.resultants, again.resultants)


def test_cosmic_ray_mean_charge_matches_the_model():
    """Total deposited charge over the exposure = E[number of tracks] x E[charge per track],
    both computed here in float64 by quadrature over the model's length and dE/dx laws."""
    from scipy import integrate, stats

    from romanjax.kernels.effects import CosmicRayParams

    flux = 300.0  # [1/cm**2/s]; high so ~5e4 tracks make the sample mean precise
    params = CosmicRayParams(flux=flux)
    shape = (512, 512)
    area = shape[0] * shape[1] * (params.pixel_size * 1e-4) ** 2  # [cm**2]
    kw = dict(read_noise=0.0, gain=1.0, pedestal=0.0, pedestal_noise=0.0, saturation=1e12)
    out = simulate_l1(jax.random.key(7), np.zeros(shape, int), PATTERN,
                      cosmic_rays={"flux": flux}, **kw)  # fmt: skip
    total = float(np.asarray(out.resultants, np.float64)[-1].sum())  # last resultant = 1 read

    # length [um]: density ~ l**slope on [min, max]; 3-D length in pixels
    s, lo, hi = params.length_slope, params.min_cr_len, params.max_cr_len
    norm = integrate.quad(lambda x: x**s, lo, hi)[0]
    depth = params.pixel_depth / params.pixel_size

    def length_moment(power):
        def f(x):
            return np.sqrt((x / params.pixel_size) ** 2 + depth**2) ** power * x**s
        return integrate.quad(f, lo, hi, limit=200)[0] / norm

    # dE/dx: Moyal(location, scale) truncated to [min, max]
    moyal = stats.moyal(loc=params.moyal_location, scale=params.moyal_scale)
    mass = moyal.cdf(params.max_dEdx) - moyal.cdf(params.min_dEdx)

    def dedx_moment(power):
        def f(x):
            return x**power * moyal.pdf(x)
        return integrate.quad(f, params.min_dEdx, params.max_dEdx, limit=200)[0] / mass

    scale = params.pixel_size / params.conversion_factor
    mean_charge = scale * dedx_moment(1) * length_moment(1)
    second = scale**2 * dedx_moment(2) * length_moment(2) + mean_charge  # + Poisson points
    rate = flux * area * PATTERN.exposure_time  # mean number of tracks
    expected = rate * mean_charge
    sigma = np.sqrt(rate * second)  # compound Poisson: Var = rate E[charge**2]
    # tracks leaving the image lose charge: < 0.5% for ~1.5-pixel tracks on 512x512
    assert abs(total - expected) < 5 * sigma + 0.005 * expected, (total, expected, sigma)
    assert sigma < 0.05 * expected  # the test can tell a 10% error in the model


def test_inverse_linearity_applied_to_every_read():
    """Single-read resultants: the non-linear output equals the polynomial (in DN) of the
    linear output, read by read. The linear output is that of the identity polynomial, so
    that both draw their photons read by read, from the same random numbers."""
    pattern = romanjax.ReadPattern([[1], [2], [4], [7], [8]])
    counts = np.random.default_rng(0).integers(0, 60_000, 5000)
    gain = 1.0  # so the rounded linear output is the exact electron count per read
    coefficients = np.array([3.0, 0.98, 4e-7, -2e-12])  # constant first, DN
    kw = dict(read_noise=0.0, gain=gain, pedestal=0.0, pedestal_noise=0.0, saturation=1e9)
    linear = simulate_l1(jax.random.key(8), counts, pattern, inverse_linearity=[0.0, 1.0], **kw)
    bent = simulate_l1(jax.random.key(8), counts, pattern, inverse_linearity=coefficients, **kw)
    dn = np.asarray(linear.resultants, np.float64)  # integer electrons = DN, exact
    expected = np.polynomial.polynomial.polyval(dn, coefficients)
    got = np.asarray(bent.resultants, np.float64)
    # outputs are rounded to integer DN; float32 evaluation may flip a .5 rounding
    assert np.max(np.abs(got - np.round(expected))) <= 1
    assert np.mean(got == np.round(expected)) > 0.99
    assert np.any(np.abs(expected - dn) > 5)  # the polynomial really bends the ramp
    assert not np.any(np.asarray(bent.dq) & dqbits.NO_LIN_CORR)
    # all-zero coefficients of a pixel: identity and NO_LIN_CORR
    per_pixel = np.broadcast_to(coefficients[:, None], (4, 5000)).copy()
    per_pixel[:, :10] = 0
    flagged = simulate_l1(jax.random.key(8), counts, pattern, inverse_linearity=per_pixel, **kw)
    assert np.all(np.asarray(flagged.dq)[:, :10] & dqbits.NO_LIN_CORR)
    np.testing.assert_array_equal(np.asarray(flagged.resultants)[:, :10],
                                  np.asarray(linear.resultants)[:, :10])  # fmt: skip


def test_draws_are_keyed_by_pixel_without_cosmic_rays():
    """Photons, pedestal and read noise are keyed by the pixel's flat index: a leading part
    of the pixels simulates to the same values alone as within the whole array."""
    import jax
    import numpy as np

    import romanjax

    pattern = romanjax.ReadPattern.from_ma_table(4)
    counts = np.random.default_rng(2).integers(0, 20_000, 3000)
    whole = romanjax.simulate_l1(jax.random.key(9), counts, pattern, read_noise=5.0)
    part = romanjax.simulate_l1(jax.random.key(9), counts[:1234], pattern, read_noise=5.0)
    np.testing.assert_array_equal(np.asarray(part.resultants),
                                  np.asarray(whole.resultants)[:, :1234])
    np.testing.assert_array_equal(np.asarray(part.dq), np.asarray(whole.dq)[:, :1234])
    other = romanjax.simulate_l1(jax.random.key(10), counts[:1234], pattern, read_noise=5.0)
    assert not np.array_equal(np.asarray(other.resultants), np.asarray(part.resultants))


def test_parts_of_a_frame_simulate_what_the_whole_frame_does():
    """``frame_shape`` and ``first_pixel``: any split of a frame into whole rows (or, in 1-D,
    runs of pixels) simulates to the whole frame's values, cosmic rays included; tracks
    cross part edges unbroken."""
    rng = np.random.default_rng(4)
    counts = rng.integers(0, 3000, (48, 40))
    key = jax.random.key(11)
    # tracks of up to 20 pixels (max_cr_len 200 um): they still cross the parts' edges, and
    # each is sampled at 81 points instead of the default's 801, which the splits do not need
    kw = dict(cosmic_rays={"flux": 3000.0, "max_cr_len": 200.0})
    whole = simulate_l1(key, counts, PATTERN, **kw)
    hits = np.any(np.asarray(whole.dq) & dqbits.JUMP_DET, axis=0)
    assert 0.1 < hits.mean() < 0.9
    for edges in ((0, 16, 32, 48), (0, 1, 30, 48)):
        parts = [simulate_l1(key, counts[a:b], PATTERN, frame_shape=counts.shape,
                             first_pixel=a * counts.shape[1], **kw)
                 for a, b in zip(edges[:-1], edges[1:], strict=False)]  # fmt: skip
        for name in ("resultants", "dq"):
            np.testing.assert_array_equal(
                np.concatenate([np.asarray(getattr(p, name)) for p in parts], axis=1),
                np.asarray(getattr(whole, name)))
    # alone, without its frame, a part draws other cosmic rays (its own, at its own area)
    alone = simulate_l1(key, counts[16:32], PATTERN, **kw)
    assert not np.array_equal(np.asarray(alone.dq), np.asarray(whole.dq)[:, 16:32])
    flat = counts.reshape(-1)
    whole_flat = simulate_l1(key, flat, PATTERN, **kw)
    part = simulate_l1(key, flat[700:1300], PATTERN, frame_shape=flat.shape, first_pixel=700,
                       **kw)  # fmt: skip
    np.testing.assert_array_equal(np.asarray(part.resultants),
                                  np.asarray(whole_flat.resultants)[:, 700:1300])
    # the first pixel may be traced (the frame drivers pass it so)
    traced = jax.jit(lambda first: simulate_l1(key, counts[16:32], PATTERN,
                                               frame_shape=counts.shape, first_pixel=first,
                                               **kw).dq)(16 * 40)  # fmt: skip
    np.testing.assert_array_equal(np.asarray(traced), np.asarray(whole.dq)[:, 16:32])


def test_bad_frame_position_is_refused():
    import pytest

    counts = np.zeros((4, 5), int)
    key = jax.random.key(0)
    for kwargs, match in ((dict(frame_shape=(8, 6)), "not whole rows"),
                          (dict(frame_shape=(8, 5), first_pixel=3), "`first_pixel` 3"),
                          (dict(frame_shape=(8, 5), first_pixel=25), "`first_pixel` 25"),
                          (dict(frame_shape=(8, 5), first_pixel=-5), "`first_pixel` -5"),
                          (dict(frame_shape=(8, 5), first_pixel=1.5), "integer scalar"),
                          (dict(frame_shape=(8, 5), ipc=True), "`ipc`"),
                          (dict(frame_shape="abc"), "`frame_shape`")):  # fmt: skip
        with pytest.raises(ValueError, match=match):
            simulate_l1(key, counts, PATTERN, **kwargs)


def test_cosmic_ray_part_cap_bounds_the_tracks_that_reach_a_part():
    """The slots of a part (cosmic_ray_part_cap) hold every track that reaches it: the mean
    number of reaching tracks, measured over many read intervals at a high flux with long
    tracks, is at most the bound the cap is the Poisson cap of, and not far below it (a
    bound of the frame's whole rate would pass the first test but not the second)."""
    from romanjax.kernels import effects

    params = effects.CosmicRayParams(flux=2e4, length_slope=-2.0)  # long tracks: E[L] ~ 5 px
    frame, part, first = (300, 200), (20, 200), 140 * 200
    rate = 1e-3  # tracks per frame pixel and read interval: 60 per interval
    cap = effects.cosmic_ray_cap(rate * frame[0] * frame[1])

    from romanjax.kernels.rng import key_words

    # 4000 read intervals' tracks at once
    tracks = effects.cosmic_ray_tracks(key_words(jax.random.key(5)), np.arange(4000),
                                       rate * frame[0] * frame[1], cap, frame, params,
                                       np.float32)  # fmt: skip
    counts = np.asarray(jax.vmap(lambda t: effects.cosmic_ray_reaches(
        t, frame, first, part, np.float32).sum())(tracks))  # fmt: skip
    rows, columns = part[0] + 2, part[1] + 2
    mean_length = effects._length_moment(params, 1)
    bound = rate * (rows * columns + 2 * (rows + columns) * mean_length
                    + 4 * effects._length_moment(params, 2))  # fmt: skip
    se = np.sqrt(bound / counts.size)
    assert counts.mean() <= bound + 4 * se, (counts.mean(), bound)
    assert counts.mean() >= 0.5 * bound
    assert effects.cosmic_ray_part_cap(rate, frame, part, params) == effects.cosmic_ray_cap(bound)
    assert counts.max() <= effects.cosmic_ray_part_cap(rate, frame, part, params)


def test_cosmic_ray_tracks_are_keyed_by_their_interval_and_slot():
    """An interval's tracks are the same drawn alone or with other intervals (counters of
    the interval and the slot, not positions in the array), differ between intervals, and
    their number is Poisson: over 3000 intervals its mean and variance are the mean's."""
    from romanjax.kernels import effects
    from romanjax.kernels.rng import key_words

    params = effects.CosmicRayParams()
    frame, mean = (64, 64), 20.0
    cap = effects.cosmic_ray_cap(mean)
    words = key_words(jax.random.key(3))
    together = effects.cosmic_ray_tracks(words, np.arange(3000), mean, cap, frame, params,
                                         np.float32)  # fmt: skip
    alone = effects.cosmic_ray_tracks(words, 17, mean, cap, frame, params, np.float32)
    for a, b in zip(alone, together):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b)[17])
    assert not np.array_equal(np.asarray(together.row[17]), np.asarray(together.row[18]))
    number = np.asarray(together.charge > 0).sum(axis=1)
    assert np.all(np.asarray(together.charge)[:, :number.max()][
        np.arange(number.max()) >= number[:, None]] == 0)
    se = np.sqrt(mean / number.size)
    assert abs(number.mean() - mean) < 5 * se, number.mean()
    assert abs(number.var(ddof=1) / mean - 1) < 5 * np.sqrt(2 / number.size), number.var()
    # the whole distribution, at a small and a large mean: chi-square against Poisson over
    # the counts expected at least 5 times (tails pooled)
    from scipy import stats

    for mean in (2.5, 20.0):
        cap = effects.cosmic_ray_cap(mean)
        tracks = effects.cosmic_ray_tracks(words, np.arange(20000), mean, cap, frame, params,
                                           np.float32)  # fmt: skip
        number = np.asarray(tracks.charge > 0).sum(axis=1)
        pmf = stats.poisson.pmf(np.arange(cap + 1), mean)
        keep = np.flatnonzero(pmf * number.size >= 5)
        lo, hi = keep[0], keep[-1]
        observed = np.bincount(number, minlength=cap + 1)
        obs = np.r_[observed[:lo + 1].sum(), observed[lo + 1:hi], observed[hi:].sum()]
        exp = np.r_[stats.poisson.cdf(lo, mean), pmf[lo + 1:hi],
                    stats.poisson.sf(hi - 1, mean)] * number.size  # fmt: skip
        assert stats.chisquare(obs, exp).pvalue > 1e-4, (mean, obs, exp)


def test_cosmic_ray_flux_too_large_for_the_counters_is_refused():
    """A track slot (read * cap + slot) is an int32 index and a 32-bit Philox counter: a flux
    whose tracks per read times reads reach 2**31 is refused, naming the argument, before
    anything is traced."""
    import pytest

    counts = np.zeros((4, 5), int)
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="`cosmic_rays` flux 1e\\+09"):
        simulate_l1(key, counts, PATTERN, frame_shape=(4096, 5),
                    cosmic_rays={"flux": 1e9})  # fmt: skip
    # a flux a thousand times smaller fits, and its tracks hit every pixel
    out = simulate_l1(key, counts, PATTERN, cosmic_rays={"flux": 1e6})
    assert (np.asarray(out.dq) & dqbits.JUMP_DET).any(axis=0).all()
