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
    assert flagged.sum() > 0 and np.all(rises[flagged])
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
