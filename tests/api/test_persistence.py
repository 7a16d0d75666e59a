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
