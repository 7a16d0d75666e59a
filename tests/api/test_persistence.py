"""Persistence (Sanchez et al. 2023): the Fermi current, the event update and the state
carried over exposures against romanisim 0.15, the per-read draws in distribution, and the
functions under jit, scan and vmap."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import requires_romanisim

import romanjax
from romanjax.l1._persistence import (
    TRACKING_DELAY,
    PersistenceParams,
    PersistenceState,
    expected_persistence_reads,
    persistence_current,
    persistence_fermi,
    persistence_read,
    persistence_reads,
    update_persistence,
)
from romanjax.testing import rtol_for, x64_enabled

EPOCH_MJD = 60000.0
DAY = 86400.0
DEFAULT = PersistenceParams()
CUSTOM = PersistenceParams(A=0.5, x0=2.0e4, dx=7.0e3, alpha=0.3, gamma=1.3, half_well=1.5e4,
                           ignore_rate=0.02)  # fmt: skip


def _dtype():
    return np.float64 if x64_enabled() else np.float32


def _romanisim_fermi(x, dt, params, monkeypatch):
    from romanisim import persistence
    from romanisim.models import parameters

    monkeypatch.setitem(parameters.persistence, "half_well", params.half_well)
    monkeypatch.setitem(parameters.persistence, "ignorerate", params.ignore_rate)
    x, dt = np.broadcast_arrays(np.asarray(x, np.float64), np.asarray(dt, np.float64))
    with np.errstate(invalid="ignore"):  # romanisim's power of negative fluences, masked
        return persistence.fermi(x.copy(), dt.copy(), params.A, params.x0, params.dx,
                                 params.alpha, params.gamma)  # fmt: skip


def _romanisim_persistence(params, monkeypatch, d=None):
    from romanisim import persistence
    from romanisim.models import parameters

    monkeypatch.setitem(parameters.persistence, "half_well", params.half_well)
    monkeypatch.setitem(parameters.persistence, "ignorerate", params.ignore_rate)
    d = {} if d is None else d
    return persistence.Persistence(A=params.A, x0=params.x0, dx=params.dx, alpha=params.alpha,
                                   gamma=params.gamma, **d)  # fmt: skip


def _canonical(state):
    """Slots of every pixel sorted by (time, fluence), empty slots last: the events as a set."""
    fluence = np.asarray(state.fluence, np.float64)
    time = np.asarray(state.time, np.float64)
    empty = fluence == 0
    order = np.lexsort((fluence, np.where(empty, np.inf, time), empty), axis=0)
    return np.take_along_axis(fluence, order, 0), np.take_along_axis(time, order, 0)


def _assert_same_events(state, reference, rtol):
    f, t = _canonical(state)
    f_ref, t_ref = _canonical(reference)
    np.testing.assert_array_equal(f > 0, f_ref > 0)
    np.testing.assert_allclose(f, f_ref, rtol=rtol)
    # times pass through MJD in romanisim: ~1e-6 s of float64 rounding at MJD 60000
    np.testing.assert_allclose(t, t_ref, rtol=rtol, atol=1e-5)


@requires_romanisim
@pytest.mark.parametrize("params", [DEFAULT, CUSTOM], ids=["default", "custom"])
def test_fermi_equals_romanisim(params, monkeypatch):
    dtype = _dtype()
    x = np.concatenate([[-50.0, 0.0, 1.0, 0.5 * params.half_well, params.half_well * (1 - 1e-6),
                         params.half_well, params.x0, 1e6, 1e9],
                        np.geomspace(10, 1e8, 60)]).astype(dtype)  # fmt: skip
    dt = np.array([1.0, 3.16247, 30.0, 999.0, 1000.0, 1e5], dtype)
    got = np.asarray(persistence_fermi(x[:, None], dt[None, :], params))
    assert got.dtype == dtype
    want = _romanisim_fermi(x[:, None], dt[None, :], params, monkeypatch)
    np.testing.assert_allclose(got, want, rtol=rtol_for(dtype, 2e-6, 1e-13), atol=0)
    # romanisim's unit test values (half well moved to 0.1)
    unit = PersistenceParams(A=1.0, x0=1.0, dx=1.0, alpha=1.0, gamma=1.0, half_well=0.1)
    assert np.isclose(persistence_fermi(1.0, 1000.0, unit), 0.5)
    assert np.isclose(persistence_fermi(100.0, 2000.0, unit._replace(gamma=2.0)), 25.0)


@requires_romanisim
def test_current_equals_romanisim_summed_per_pixel(rng, monkeypatch):
    dtype = _dtype()
    shape, n = (7, 9), 150
    index = rng.integers(0, 63, n)  # several events in many pixels
    x = np.geomspace(1e3, 1e7, n)[rng.permutation(n)].astype(dtype).astype(np.float64)
    t_s = rng.uniform(0, 3000, n).astype(dtype).astype(np.float64)
    reference = _romanisim_persistence(DEFAULT, monkeypatch,
                                       dict(x=x, t=EPOCH_MJD + t_s / DAY, index=index))
    state = PersistenceState.from_romanisim(reference, shape, epoch_mjd=EPOCH_MJD, dtype=dtype)
    assert state.fluence.dtype == dtype and state.n_events >= np.bincount(index).max()
    for now in (3100.0, 5000.0, 1e5):
        got = np.asarray(persistence_current(state, now))
        want = np.zeros(63)
        np.add.at(want, index, reference.current(EPOCH_MJD + now / DAY))
        # romanisim's clock is MJD: its time differences carry ~1e-6 s of float64 rounding
        np.testing.assert_allclose(got.reshape(-1), want, rtol=rtol_for(dtype, 1e-5, 1e-7))
    # events at or after the time asked give nothing (romanisim raises instead)
    early = np.asarray(persistence_current(state, -1.0))
    np.testing.assert_array_equal(early, 0)


def _fluences(rng, size, dt_old, params, monkeypatch):
    """Fluences spanning 1e2..1e7 e, none whose current 30 s after (new event) or
    ``dt_old + 30`` s after (old event) lies within 0.1% of the ignore rate, so float32
    rounding cannot move an event across the threshold."""
    x = np.geomspace(1e2, 1e7, 4 * size)
    near = np.zeros(x.shape, bool)
    for dt in (TRACKING_DELAY, *dt_old):
        rate = _romanisim_fermi(x, dt, params, monkeypatch)
        near |= np.abs(rate / params.ignore_rate - 1) < 1e-3
    x = rng.permutation(x[~near])[:size]
    return x.astype(_dtype())


@requires_romanisim
@pytest.mark.parametrize("params", [DEFAULT, CUSTOM], ids=["default", "custom"])
def test_update_over_two_exposures_equals_romanisim(params, rng, monkeypatch):
    dtype = _dtype()
    shape = (40, 50)
    t1, t2, t3 = 500.0, 900.0, 2500.0  # last-read times of three exposures [s]
    # the times after each event at which the updates judge it
    old = (t2 - t1 + TRACKING_DELAY, t3 - t1 + TRACKING_DELAY, t3 - t2 + TRACKING_DELAY)
    image1 = _fluences(rng, 2000, old, params, monkeypatch).reshape(shape)
    # exposure 2: the same bright pixels again in part (two events per pixel), others new
    image2 = np.where(rng.uniform(size=shape) < 0.5, image1,
                      _fluences(rng, 2000, old, params, monkeypatch).reshape(shape))
    image3 = np.zeros(shape, dtype)

    reference = _romanisim_persistence(params, monkeypatch)
    state = PersistenceState.empty(shape, n_events=4, dtype=dtype)
    for image, now in ((image1, t1), (image2, t2), (image3, t3)):
        reference.update(image.astype(np.float64), EPOCH_MJD + now / DAY)
        state = update_persistence(state, image, now, params)
        assert state.fluence.dtype == dtype and state.fluence.shape == (4,) + shape
        expected = PersistenceState.from_romanisim(reference, shape, epoch_mjd=EPOCH_MJD,
                                                   n_events=4, dtype=dtype)  # fmt: skip
        _assert_same_events(state, expected, rtol_for(dtype, 1e-6, 1e-12))
        if now == t2:
            per_pixel = np.bincount(reference.index, minlength=image1.size)
            assert per_pixel.max() == 2, "pixels should carry events of both exposures"
            assert 0 < len(reference.x) < 2 * image1.size


@requires_romanisim
def test_round_trip_through_romanisim_dict(rng, monkeypatch):
    from romanisim.persistence import Persistence

    dtype = _dtype()
    shape = (6, 5)
    state = PersistenceState.empty(shape, n_events=3, dtype=dtype)
    for now in (100.0, 300.0):
        state = update_persistence(state, rng.uniform(0, 3e5, shape).astype(dtype), now)
    d = state.to_romanisim(epoch_mjd=EPOCH_MJD, params=CUSTOM)
    other = Persistence.from_dict(d)
    assert PersistenceParams.from_romanisim(other) == CUSTOM._replace(
        half_well=DEFAULT.half_well, ignore_rate=DEFAULT.ignore_rate)
    back = PersistenceState.from_romanisim(other, shape, epoch_mjd=EPOCH_MJD, n_events=3,
                                           dtype=dtype)  # fmt: skip
    _assert_same_events(back, state, rtol_for(dtype, 1e-6, 1e-12))
    with pytest.raises(ValueError, match="n_events"):
        PersistenceState.from_romanisim(
            dict(x=[1e5, 1e5], t=[EPOCH_MJD, EPOCH_MJD], index=[3, 3]), shape,
            epoch_mjd=EPOCH_MJD, n_events=1)


def test_full_slots_keep_the_largest_currents():
    dtype = _dtype()
    state = PersistenceState.empty((3,), n_events=1, dtype=dtype)
    state = update_persistence(state, np.array([1e6, 1e6, 0.0], dtype), 0.0)
    # the second exposure: weaker than the old event in pixel 0, stronger in pixel 1
    state = update_persistence(state, np.array([6e3, 1e7, 1e7], dtype), 200.0)
    np.testing.assert_array_equal(np.asarray(state.fluence[0]), [1e6, 1e7, 1e7])
    np.testing.assert_array_equal(np.asarray(state.time[0]), [0.0, 200.0, 200.0])
    # with room for both, both are kept
    two = PersistenceState.empty((3,), n_events=2, dtype=dtype)
    two = update_persistence(two, np.array([1e6, 1e6, 0.0], dtype), 0.0)
    two = update_persistence(two, np.array([6e3, 1e7, 1e7], dtype), 200.0)
    assert np.count_nonzero(np.asarray(two.fluence)) == 5
    # a day later every event has faded below the ignore rate
    gone = update_persistence(two, np.zeros(3, dtype), 86400.0)
    np.testing.assert_array_equal(np.asarray(gone.fluence), 0)


def _one_event_state(fluence_groups, event_time, per_group, dtype):
    fluence = np.repeat(np.asarray(fluence_groups, dtype), per_group)
    zeros = np.zeros_like(fluence)
    return PersistenceState(jnp.asarray(np.stack([fluence, zeros])),
                            jnp.asarray(np.stack([np.full_like(fluence, event_time), zeros])))


@requires_romanisim
def test_read_draws_have_romanisims_mean_and_poisson_variance(monkeypatch):
    dtype = _dtype()
    per_group = 20_000
    # gaps after the event: the first reads' means run from ~0.01 to ~40 e (inversion below
    # 10, PTRS above), the later ones decay
    groups = [(3e3, 60.0), (1e5, 600.0), (1e5, 60.0), (1e7, 8.0), (1e7, 1.0)]
    read_times = np.array([1, 2, 3, 5, 6], np.float64) * 3.16247
    reference = _romanisim_persistence(DEFAULT, monkeypatch)
    key = jax.random.key(11)
    for fluence, gap in groups:
        state = _one_event_state([fluence], 0.0, per_group, dtype)
        draws = np.asarray(persistence_reads(key, state, read_times.astype(dtype), gap),
                           np.float64)  # fmt: skip
        assert np.all(draws == np.round(draws))
        increments = np.diff(draws, axis=0, prepend=0.0)
        assert increments.min() >= 0
        reference.x, reference.t, reference.index = (np.array([fluence]), np.array([EPOCH_MJD]),
                                                     np.array([0]))  # fmt: skip
        from romanisim.models import parameters

        lam = np.array([reference.current(EPOCH_MJD + (gap + t) / DAY)[0] * parameters.read_time
                        for t in read_times])  # fmt: skip
        mean, var = increments.mean(axis=1), increments.var(axis=1, ddof=1)
        np.testing.assert_array_less(np.abs(mean - lam), 5 * np.sqrt(lam / per_group),
                                     err_msg=f"mean {fluence} {gap}")  # fmt: skip
        np.testing.assert_array_less(np.abs(var - lam),
                                     5 * np.sqrt((lam + 2 * lam**2) / per_group),
                                     err_msg=f"variance {fluence} {gap}")  # fmt: skip
        # reads are independent: the variance of the total is the sum of the means
        total = draws[-1]
        assert abs(total.var(ddof=1) / lam.sum() - 1) < 5 * np.sqrt(
            (1 / lam.sum() + 2) / per_group)
        expected = np.asarray(expected_persistence_reads(state, read_times, gap), np.float64)
        # (romanisim's MJD clock: ~1e-6 s of rounding in its time differences)
        np.testing.assert_allclose(expected[:, 0], np.cumsum(lam), rtol=rtol_for(dtype, 1e-5, 1e-7))


@pytest.mark.parametrize("lam", [0.3, 3.7, 9.5, 10.5, 27.0, 400.0])
def test_read_draws_follow_the_poisson_pmf(lam):
    from scipy import stats

    dtype = _dtype()
    n = 100_000
    # one event, the duration chosen so the read's mean is lam
    state = _one_event_state([1e6], 0.0, n, dtype)
    current = float(persistence_current(state, 100.0)[0])
    draws = np.asarray(persistence_read(jax.random.key(5), state, 0, 100.0, lam / current),
                       np.float64)  # fmt: skip
    k_max = int(lam + 10 * np.sqrt(lam) + 10)
    observed = np.bincount(draws.astype(int), minlength=k_max + 1)
    assert len(observed) == k_max + 1, "a draw beyond 10 sigma"
    expected = stats.poisson.pmf(np.arange(k_max + 1), lam) * n
    # bins with >= 20 expected draws (contiguous: the pmf is unimodal); the tails join the
    # first and last of them
    lo, hi = np.flatnonzero(expected >= 20)[[0, -1]]
    obs = observed[lo:hi + 1].astype(np.float64)
    exp = expected[lo:hi + 1].copy()
    obs[0] += observed[:lo].sum()
    obs[-1] += observed[hi + 1:].sum()
    exp[0] += stats.poisson.cdf(lo - 1, lam) * n
    exp[-1] += stats.poisson.sf(hi, lam) * n
    chi2 = np.sum((obs - exp) ** 2 / exp)
    p_value = stats.chi2.sf(chi2, len(exp) - 1)
    assert p_value > 1e-4, (chi2, len(exp), p_value)


@requires_romanisim
def test_exact_integral_of_romanisims_current(monkeypatch):
    from scipy import integrate

    dtype = _dtype()
    read_times = np.array([1, 2, 4, 9], np.float64) * 3.16247  # skipped reads count too
    for params in (DEFAULT, CUSTOM):
        state = _one_event_state([4e3, 1e5, 1e7], 10.0, 1, dtype)
        got = np.asarray(expected_persistence_reads(state, read_times, 50.0, params=params,
                                                    exact=True), np.float64)  # fmt: skip
        for i, fluence in enumerate((4e3, 1e5, 1e7)):
            edges = 50.0 - 10.0 + np.r_[0.0, read_times]
            def current(u, fluence=fluence, params=params):
                return float(_romanisim_fermi(fluence, u, params, monkeypatch).ravel()[0])

            pieces = [integrate.quad(current, a, b, epsabs=0, epsrel=1e-12)[0]
                      for a, b in zip(edges[:-1], edges[1:])]  # fmt: skip
            np.testing.assert_allclose(got[:, i], np.cumsum(pieces),
                                       rtol=rtol_for(dtype, 1e-5, 1e-10))  # fmt: skip
    # gamma exactly 1 takes the logarithm
    state = _one_event_state([1e5], 0.0, 1, dtype)
    one = np.asarray(expected_persistence_reads(state, [10.0], 10.0, exact=True), np.float64)
    amplitude = float(persistence_fermi(1e5, 1000.0))
    np.testing.assert_allclose(one[0, 0], amplitude * 1000 * np.log(2.0),
                               rtol=rtol_for(dtype, 1e-5, 1e-12))  # fmt: skip


@requires_romanisim
@pytest.mark.parametrize("table", [4, 109])
def test_same_resultants_and_state_as_romanisims_apportion(table, monkeypatch):
    """romanisim's make_l1 path (no pedestal): persistence is drawn at the pattern's reads
    only and stays in the later reads; after the exposure the state is updated with the
    collected electrons at the time of the last read."""
    from astropy.time import Time
    from romanisim.l1 import apportion_counts_to_resultants, read_pattern_to_tij
    from romanisim.models import parameters

    assert parameters.read_time == romanjax.ReadPattern.from_ma_table(table).read_time
    dtype = _dtype()
    pattern = romanjax.ReadPattern.from_ma_table(table)
    n = 3000
    # groups: a bright and a saturated event without photons; a faint event that expires,
    # in pixels that collect 1e6 photons (a new event)
    fluence = np.repeat([2e5, 1e7, 3e3], n)
    counts = np.repeat([0, 0, 10**6], n).reshape(3, n)
    gap = 40.0  # exposure start after the event [s]
    reference = _romanisim_persistence(DEFAULT, monkeypatch, dict(
        x=fluence, t=np.full(3 * n, EPOCH_MJD), index=np.arange(3 * n)))
    state = PersistenceState.from_romanisim(reference, (3 * n,), epoch_mjd=EPOCH_MJD,
                                            n_events=2, dtype=dtype)  # fmt: skip
    resultants, _ = apportion_counts_to_resultants(
        counts, read_pattern_to_tij(pattern.reads), pedestal=0, pedestal_extra_noise=0.0,
        persistence=reference, tstart=Time(EPOCH_MJD + gap / DAY, format="mjd"), seed=3)
    resultants = resultants.reshape(pattern.n_resultants, 3 * n).astype(np.float64)
    cumulative = np.asarray(persistence_reads(jax.random.key(3), state, pattern.read_times, gap,
                                              read_time=pattern.read_time), np.float64)
    expected = np.asarray(expected_persistence_reads(state, pattern.read_times, gap,
                                                     read_time=pattern.read_time), np.float64)
    sizes = [len(r) for r in pattern.reads]
    ends = np.cumsum(sizes)
    ours = np.stack([cumulative[e - k:e].mean(axis=0) for e, k in zip(ends, sizes)])
    mean = np.stack([expected[e - k:e].mean(axis=0) for e, k in zip(ends, sizes)])
    for g in range(2):
        cols = slice(g * n, (g + 1) * n)
        theirs = resultants[:, cols]
        sigma = theirs.std(axis=1, ddof=1) / np.sqrt(n)
        assert np.all(sigma > 0)
        np.testing.assert_array_less(np.abs(theirs.mean(axis=1) - mean[:, cols].mean(axis=1)),
                                     5 * sigma)  # fmt: skip
        np.testing.assert_array_less(np.abs(ours[:, cols].mean(axis=1) - theirs.mean(axis=1)),
                                     5 * np.sqrt(2) * sigma)  # fmt: skip
    if len(pattern.reads[-1]) == 1:
        # the last resultant is the last read: the electrons romanisim's update saw
        collected = resultants[-1].astype(dtype)
        updated = update_persistence(state, collected, gap + pattern.read_times[-1])
        expected_state = PersistenceState.from_romanisim(reference, (3 * n,),
                                                         epoch_mjd=EPOCH_MJD, n_events=2,
                                                         dtype=dtype)  # fmt: skip
        _assert_same_events(updated, expected_state, rtol_for(dtype, 1e-6, 1e-12))
        f = np.asarray(updated.fluence)
        assert np.all(np.count_nonzero(f[:, 2 * n:], axis=0) == 1)  # old faint event gone
        assert np.all(np.count_nonzero(f[:, :2 * n], axis=0) == 1)  # no new event


def test_jit_scan_vmap_and_chunks_give_the_same_draws():
    dtype = _dtype()
    rng = np.random.default_rng(4)
    shape = (6, 7)
    state = PersistenceState.empty(shape, n_events=3, dtype=dtype)
    state = update_persistence(state, rng.uniform(0, 5e6, shape).astype(dtype), 0.0)
    state = update_persistence(state, rng.uniform(0, 5e6, shape).astype(dtype), 300.0)
    pattern = romanjax.ReadPattern.from_ma_table(4)
    times = pattern.read_times
    key = jax.random.key(8)
    whole = np.asarray(persistence_reads(key, state, times, 310.0))

    # the per-read function in a user's scan, as an L1 simulation calls it
    def scan(key, state, start):
        def step(total, xs):
            j, t = xs
            total = total + persistence_read(key, state, j, start + t, pattern.read_time)
            return total, total

        zeros = jnp.zeros(shape, state.fluence.dtype)
        return jax.lax.scan(step, zeros, (jnp.arange(len(times)), jnp.asarray(times, dtype)))[1]

    np.testing.assert_array_equal(np.asarray(jax.jit(scan)(key, state, 310.0)), whole)
    # the whole thing under a user's jit, and a new start time does not recompile
    jitted = jax.jit(lambda k, s, t0: persistence_reads(k, s, times, t0))
    np.testing.assert_array_equal(np.asarray(jitted(key, state, 310.0)), whole)
    jitted(key, state, 400.0)
    assert jitted._cache_size() == 1
    # update and current under jit
    image = rng.uniform(0, 5e6, shape).astype(dtype)
    direct = update_persistence(state, image, 700.0)
    traced = jax.jit(update_persistence)(state, image, 700.0)
    for a, b in zip(direct, traced):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # (inlined into another program the arithmetic may round differently by an ulp)
    np.testing.assert_allclose(np.asarray(jax.jit(persistence_current)(state, 900.0)),
                               np.asarray(persistence_current(state, 900.0)),
                               rtol=rtol_for(dtype, 1e-6, 1e-14))  # fmt: skip
    # vmap over keys: each key as a separate call
    keys = jax.random.split(key, 3)
    batched = jax.vmap(lambda k: persistence_reads(k, state, times, 310.0))(keys)
    for i in range(3):
        np.testing.assert_array_equal(np.asarray(batched[i]),
                                      np.asarray(persistence_reads(keys[i], state, times, 310.0)))
    # a chunk of the frame, drawn with its global pixel indices, repeats the frame's draws
    element = np.arange(42, dtype=np.uint32).reshape(shape)
    part = PersistenceState(state.fluence[:, 2:5], state.time[:, 2:5])
    chunk = persistence_reads(key, part, times, 310.0, element=element[2:5])
    np.testing.assert_array_equal(np.asarray(chunk), whole[:, 2:5])
    # same key, same draws; another key, other draws
    np.testing.assert_array_equal(np.asarray(persistence_reads(key, state, times, 310.0)), whole)
    other = np.asarray(persistence_reads(jax.random.key(9), state, times, 310.0))
    assert np.any(other != whole)


def test_empty_state_and_events_in_the_future_release_nothing():
    dtype = _dtype()
    state = PersistenceState.empty((4, 3), n_events=2, dtype=dtype)
    times = np.arange(1, 6) * 3.16247
    np.testing.assert_array_equal(np.asarray(persistence_reads(jax.random.key(0), state, times,
                                                               100.0)), 0)  # fmt: skip
    state = update_persistence(state, np.full((4, 3), 1e6, dtype), 200.0)
    assert np.all(np.asarray(persistence_current(state, 250.0)) > 0)
    np.testing.assert_array_equal(np.asarray(persistence_reads(jax.random.key(0), state, times,
                                                               150.0, exact=True)), 0)  # fmt: skip


def test_invalid_inputs_raise():
    state = PersistenceState.empty((3,), n_events=2)
    with pytest.raises(ValueError, match="update_persistence: `fluence`"):
        update_persistence(state, np.zeros(4), 0.0)
    with pytest.raises(ValueError, match="persistence_reads: `read_times`"):
        persistence_reads(jax.random.key(0), state, [3.0, 1.0], 0.0)
    with pytest.raises(ValueError, match="persistence_reads: `start_time`"):
        persistence_reads(jax.random.key(0), state, [1.0], np.nan)
    with pytest.raises(ValueError, match="`element`"):
        persistence_reads(jax.random.key(0), state, [1.0], 0.0, element=np.arange(4))
    with pytest.raises(TypeError, match="PersistenceState"):
        persistence_current((np.zeros((1, 3)), np.zeros((1, 3))), 0.0)
    with pytest.raises(ValueError, match="n_events"):
        PersistenceState.empty((3,), n_events=0)


# --------------------------------------------------------------------------- in simulate_l1


def _resultant_means(cumulative, pattern):
    """``[n_read, ...]`` cumulative reads -> ``[n_resultant, ...]`` means over each
    resultant's reads."""
    sizes = [len(r) for r in pattern.reads]
    ends = np.cumsum(sizes)
    return np.stack([cumulative[e - k:e].mean(axis=0) for e, k in zip(ends, sizes)])


def test_simulate_l1_with_an_empty_state_is_unchanged():
    """Persistence has its own key tag: with no events every other draw (photons, pedestal,
    cosmic rays, read noise) and every flag stays bit for bit the same."""
    dtype = _dtype()
    pattern = romanjax.ReadPattern.from_ma_table(4)
    counts = np.random.default_rng(1).poisson(30.0, (24, 20)).astype(dtype)
    key = jax.random.key(5)
    # a few hits per read on this stamp, tracks of up to 20 pixels (81 points each)
    kwargs = dict(cosmic_rays={"flux": 5000.0, "max_cr_len": 200.0},
                  inverse_linearity=np.array([0.0, 1.0, 1e-7], dtype))
    plain = romanjax.simulate_l1(key, counts, pattern, **kwargs)
    empty = PersistenceState.empty(counts.shape, n_events=3, dtype=dtype)
    l1, state = romanjax.simulate_l1(key, counts, pattern, persistence=empty, start_time=1e3,
                                     **kwargs)  # fmt: skip
    assert isinstance(l1, romanjax.L1) and isinstance(state, PersistenceState)
    assert np.any(np.asarray(plain.dq) & romanjax.dq.JUMP_DET)  # cosmic rays were drawn
    np.testing.assert_array_equal(np.asarray(l1.resultants), np.asarray(plain.resultants))
    np.testing.assert_array_equal(np.asarray(l1.dq), np.asarray(plain.dq))
    assert state.fluence.shape == (3,) + counts.shape and state.fluence.dtype == dtype
    assert state.time.dtype == dtype


@pytest.mark.parametrize("exact", [False, True], ids=["romanisim", "exact"])
def test_simulate_l1_persistence_has_the_expected_mean(exact):
    """A bright earlier exposure: the next exposure's resultants (no photons, no noise,
    fine DN steps so the rounding is negligible) hold, on average, the resultant means of
    ``expected_persistence_reads``."""
    dtype = _dtype()
    pattern = romanjax.ReadPattern.from_ma_table(109)  # skipped reads: exact differs
    per_group = 4000
    groups = [2e4, 1e5, 1e7]
    shape = (len(groups), per_group)
    earlier = np.repeat(np.asarray(groups, dtype), per_group).reshape(shape)
    state = update_persistence(PersistenceState.empty(shape, n_events=2, dtype=dtype), earlier,
                               0.0)  # fmt: skip
    start = 40.0  # reset 40 s after the bright exposure's last read
    gain = 0.01  # [e/DN]: 1 e is 100 DN, so rounding to whole DN is below 0.005 e
    l1, _ = romanjax.simulate_l1(
        jax.random.key(2), np.zeros(shape, dtype), pattern, read_noise=0.0, gain=gain,
        pedestal=0.0, pedestal_noise=0.0, saturation=1e9, persistence=state,
        start_time=start, persistence_exact=exact)  # fmt: skip
    electrons = np.asarray(l1.resultants, np.float64) * gain
    expected = np.asarray(expected_persistence_reads(state, pattern.read_times, start,
                                                     read_time=pattern.read_time,
                                                     exact=exact), np.float64)  # fmt: skip
    mean = _resultant_means(expected, pattern)
    for g in range(len(groups)):
        got = electrons[:, g]
        sigma = got.std(axis=1, ddof=1) / np.sqrt(per_group)
        assert np.all(sigma > 0)
        np.testing.assert_array_less(np.abs(got.mean(axis=1) - mean[:, g].mean(axis=1)),
                                     5 * sigma + 0.01, err_msg=f"fluence {groups[g]}")  # fmt: skip
    # the charge grows from resultant to resultant, and more after brighter exposures
    assert np.all(np.diff(electrons.mean(axis=2), axis=0) > 0)
    assert np.all(np.diff(electrons[-1].mean(axis=1)) > 0)


def test_simulate_l1_returns_the_updated_state():
    """The returned state is ``update_persistence`` of the electrons the exposure left:
    MA table 109 ends with a one-read resultant, so without read noise, pedestal and with
    gain 1 the last resultant is those electrons exactly (photons + persistence)."""
    dtype = _dtype()
    pattern = romanjax.ReadPattern.from_ma_table(109)
    assert len(pattern.reads[-1]) == 1
    rng = np.random.default_rng(3)
    shape = (30, 40)
    state = PersistenceState.empty(shape, n_events=3, dtype=dtype)
    state = update_persistence(state, rng.uniform(0, 4e5, shape).astype(dtype), 0.0)
    counts = np.where(rng.uniform(size=shape) < 0.3, rng.integers(0, 10**6, shape),
                      rng.integers(0, 3000, shape)).astype(dtype)  # fmt: skip
    start = 50.0
    l1, new = romanjax.simulate_l1(jax.random.key(4), counts, pattern, read_noise=0.0, gain=1.0,
                                   pedestal=0.0, pedestal_noise=0.0, saturation=1e9,
                                   persistence=state, start_time=start)  # fmt: skip
    collected = np.asarray(l1.resultants[-1])
    assert np.all(collected >= counts) and np.any(collected > counts)  # persistence added
    want = update_persistence(state, collected, start + pattern.exposure_time)
    _assert_same_events(new, want, rtol_for(dtype, 1e-6, 1e-12))
    assert new.fluence.dtype == dtype and new.fluence.shape == state.fluence.shape
    # pixels that keep their old event and gain a new one
    assert np.count_nonzero(np.asarray(new.fluence), axis=0).max() == 2


@requires_romanisim
def test_simulate_l1_state_equals_romanisims_make_l1(monkeypatch):
    """romanisim's make_l1 with a Persistence object and romanjax's simulate_l1 with the
    same state update to the same events. The model's amplitude is made so small that no
    read receives persistence electrons (expected ~4e-7 electrons over the whole image and
    exposure), so the electrons left
    are the counts in both, deterministically, while fluences span the tracking threshold
    (new events) and the old events' currents span it too (some expire)."""
    import galsim
    from astropy.time import Time
    from romanisim.l1 import make_l1

    dtype = _dtype()
    pattern = romanjax.ReadPattern.from_ma_table(4)
    params = PersistenceParams(A=1e-13, ignore_rate=1e-13)
    rng = np.random.default_rng(5)
    shape = (20, 30)
    npix = shape[0] * shape[1]
    gap, old_dt = 60.0, 1500.0  # exposure start after the last event; age of older events
    old_rates = np.geomspace(1e3, 1e7, 4 * npix)
    # fluences whose current (new event, 30 s after) and old events' currents (at the
    # update + 30 s) are not within 0.1% of the ignore rate: rounding cannot move them
    judge = (TRACKING_DELAY, gap + pattern.exposure_time + TRACKING_DELAY,
             gap + old_dt + pattern.exposure_time + TRACKING_DELAY)
    rate = np.stack([_romanisim_fermi(old_rates, dt, params, monkeypatch) for dt in judge])
    ok = np.all(np.abs(rate / params.ignore_rate - 1) > 1e-3, axis=0)
    pool = rng.permutation(old_rates[ok])
    x_old = np.concatenate([pool[:npix], pool[npix:2 * npix]]).astype(dtype)
    t_old = np.concatenate([np.full(npix, -old_dt), np.zeros(npix)])
    index = np.concatenate([np.arange(npix), np.arange(npix)])
    reference = _romanisim_persistence(params, monkeypatch, dict(
        x=x_old.astype(np.float64), t=EPOCH_MJD + t_old / DAY, index=index))
    state = PersistenceState.from_romanisim(reference, shape, epoch_mjd=EPOCH_MJD, n_events=4,
                                            dtype=dtype)  # fmt: skip
    counts = np.round(pool[2 * npix:3 * npix]).reshape(shape).astype(dtype)

    make_l1(galsim.Image(counts.astype(np.float64)), pattern.reads, read_noise=0.0,
            pedestal=1e4, pedestal_extra_noise=0.0, gain=2.0, persistence=reference,
            tstart=Time(EPOCH_MJD + gap / DAY, format="mjd"), seed=1)  # fmt: skip
    _, new = romanjax.simulate_l1(jax.random.key(1), counts, pattern, read_noise=0.0, gain=2.0,
                                  pedestal=1e4, pedestal_noise=0.0, persistence=state,
                                  start_time=gap, persistence_params=params)  # fmt: skip
    expected = PersistenceState.from_romanisim(reference, shape, epoch_mjd=EPOCH_MJD,
                                               n_events=4, dtype=dtype)  # fmt: skip
    _assert_same_events(new, expected, rtol_for(dtype, 1e-6, 1e-12))
    live = np.count_nonzero(np.asarray(new.fluence), axis=0)
    assert live.min() < live.max()  # some events expired, some pixels kept several
    assert np.count_nonzero(np.asarray(new.time) == np.asarray(new.time).max()) > 0


def test_simulate_l1_persistence_under_jit_and_scan():
    """simulate_l1 with persistence under a user's jit (a new start time or state does not
    recompile) and as the body of a lax.scan over exposures, equal to the eager calls."""
    dtype = _dtype()
    pattern = romanjax.ReadPattern.from_ma_table(4)
    shape = (6, 7)
    rng = np.random.default_rng(6)
    state = update_persistence(PersistenceState.empty(shape, n_events=2, dtype=dtype),
                               rng.uniform(0, 5e6, shape).astype(dtype), 0.0)  # fmt: skip
    counts = rng.integers(0, 2000, shape).astype(dtype)
    key = jax.random.key(7)

    def simulate(key, counts, state, start):
        return romanjax.simulate_l1(key, counts, pattern, persistence=state, start_time=start)

    eager_l1, eager_state = simulate(key, counts, state, 60.0)
    jitted = jax.jit(simulate)
    l1, new = jitted(key, counts, state, 60.0)
    np.testing.assert_array_equal(np.asarray(l1.resultants), np.asarray(eager_l1.resultants))
    np.testing.assert_array_equal(np.asarray(l1.dq), np.asarray(eager_l1.dq))
    _assert_same_events(new, eager_state, rtol_for(dtype, 1e-6, 1e-12))
    jitted(key, counts, new, 400.0)
    assert jitted._cache_size() == 1

    # three exposures in a scan, each starting a minute after the previous one's last read
    def exposure(carry, i):
        state, start = carry
        l1, state = simulate(jax.random.fold_in(key, i), counts, state, start)
        return (state, start + pattern.exposure_time + 60.0), l1.resultants

    (_, _), stack = jax.lax.scan(exposure, (state, jnp.asarray(60.0, dtype)), jnp.arange(3))
    s, start = state, 60.0
    for i in range(3):
        one, s = simulate(jax.random.fold_in(key, i), counts, s, start)
        np.testing.assert_array_equal(np.asarray(stack[i]), np.asarray(one.resultants))
        start += pattern.exposure_time + 60.0


def test_simulate_l1_persistence_errors():
    pattern = romanjax.ReadPattern.from_ma_table(4)
    counts = np.zeros((3, 4))
    state = PersistenceState.empty((3, 4), n_events=2)
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="simulate_l1: `start_time`.*required"):
        romanjax.simulate_l1(key, counts, pattern, persistence=state)
    with pytest.raises(ValueError, match="`start_time` is only used with `persistence`"):
        romanjax.simulate_l1(key, counts, pattern, start_time=0.0)
    with pytest.raises(ValueError, match="`persistence_params` is only used"):
        romanjax.simulate_l1(key, counts, pattern, persistence_params=PersistenceParams())
    with pytest.raises(ValueError, match="`persistence_exact` is only used"):
        romanjax.simulate_l1(key, counts, pattern, persistence_exact=True)
    with pytest.raises(ValueError, match="simulate_l1: `persistence` holds pixels"):
        romanjax.simulate_l1(key, np.zeros((4, 3)), pattern, persistence=state, start_time=0.0)
    with pytest.raises(ValueError, match="simulate_l1: `start_time` must be a scalar"):
        romanjax.simulate_l1(key, counts, pattern, persistence=state, start_time=[0.0, 1.0])
    with pytest.raises(ValueError, match="simulate_l1: `start_time` must be finite"):
        romanjax.simulate_l1(key, counts, pattern, persistence=state, start_time=np.nan)
    with pytest.raises(ValueError, match="simulate_frame: `start_time` must be finite"):
        romanjax.simulate_frame(key, counts, pattern, persistence=state, start_time=np.nan)
    bad = PersistenceState(np.asarray(state.fluence).copy(), np.asarray(state.time).copy())
    bad.time[0] = np.nan
    with pytest.raises(ValueError, match="simulate_l1: `persistence.time` holds non-finite"):
        romanjax.simulate_l1(key, counts, pattern, persistence=bad, start_time=0.0)
    with pytest.raises(ValueError, match="simulate_frame: `persistence.time` holds non-finite"):
        romanjax.simulate_frame(key, counts, pattern, persistence=bad, start_time=0.0)
    with pytest.raises(TypeError, match="simulate_l1: `persistence` must be a PersistenceState"):
        romanjax.simulate_l1(key, counts, pattern, persistence=(state.fluence, state.time),
                             start_time=0.0)  # fmt: skip
    with pytest.raises(TypeError, match="`persistence_params` must be a PersistenceParams"):
        romanjax.simulate_l1(key, counts, pattern, persistence=state, start_time=0.0,
                             persistence_params={"A": 1.0})  # fmt: skip
