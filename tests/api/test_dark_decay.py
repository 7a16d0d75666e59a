"""Per-pixel read times within a frame and the dark decay: against romanisim 0.15's
``frame_read_times`` and ``apply_dark_decay``, and through ``simulate_l1`` and
``simulate_frame``."""

import jax
import numpy as np
import pytest
from conftest import requires_romanisim

import romanjax
from romanjax.l1 import dark_decay_signal, frame_read_times, simulate_l1

#: Uneven, with skipped reads: resultant means over 1, 2 and 3 reads.
PATTERN = romanjax.ReadPattern(((1,), (2, 3), (5, 6, 7)))
DECAY = dict(amplitude=1e6, time_constant=23.0)  # [DN], [s]; large, so rounding is negligible
QUIET = dict(read_noise=0.0, gain=1.0, pedestal=0.0, pedestal_noise=0.0, saturation=1e9)


def _window(array, origin, shape):
    return np.asarray(array)[tuple(slice(o, o + n) for o, n in zip(origin, shape, strict=True))]


def _rtol(dtype):
    return 2e-6 if dtype == np.float32 else 1e-12


@requires_romanisim
@pytest.mark.parametrize(("detector", "nborder", "t0", "frame_time"),
                         [(1, None, 0.0, 3.16247), (3, 4, 0.0, 3.16247), (7, 4, 12.5, 3.16247),
                          (9, None, -1.58, 3.04), (17, 1, 40.0, 3.16247)])  # fmt: skip
def test_frame_read_times_match_romanisim(detector, nborder, t0, frame_time, float_dtype):
    from romanisim.l1 import frame_read_times as reference

    ours = frame_read_times(frame_time, detector, t0=t0, nborder=nborder)
    assert ours.dtype == float_dtype
    expected = reference(frame_time, detector, t0=t0, nborder=nborder)
    assert ours.shape == expected.shape
    # one rounding of k * dt and one of + t0, in the working precision
    atol = 4 * np.finfo(float_dtype).eps * (abs(t0) + frame_time)
    np.testing.assert_allclose(np.asarray(ours, np.float64), expected, rtol=0, atol=atol)


def test_frame_read_times_channel_structure():
    """Without romanisim: each 128-column channel reads all its 4096 x 128 slots once;
    neighbouring channels run in opposite directions; detector 3 is mirrored left-right,
    detector 7 top-bottom, relative to the unmirrored pattern."""
    n, width = 4096 * 128, 128
    for detector in (3, 7):
        index = np.asarray(frame_read_times(float(n), detector), np.float64)  # = readout index
        np.testing.assert_array_equal(index, np.round(index))
        for channel in (0, 1, 17, 31):
            block = index[:, channel * width : (channel + 1) * width]
            np.testing.assert_array_equal(np.sort(block.ravel()), np.arange(n))
        unmirrored = index[:, ::-1] if detector == 3 else index[::-1]
        np.testing.assert_array_equal(unmirrored[0, :4], [0, 1, 2, 3])
        np.testing.assert_array_equal(unmirrored[0, 128:132], [127, 126, 125, 124])
        np.testing.assert_array_equal(unmirrored[1, :2], [128, 129])


@requires_romanisim
def test_dark_decay_signal_matches_romanisim_apply_dark_decay(float_dtype):
    from romanisim.l1 import apply_dark_decay

    pattern = romanjax.ReadPattern(((1,), (3, 4)))
    darkdecaysignal = dict(amplitude=2.5, time_constant=11.0, sca=3)
    expected = np.zeros((2, 4088, 4088))
    apply_dark_decay(expected, darkdecaysignal, [list(r) for r in pattern.reads])
    times = frame_read_times(pattern.read_time, 3, nborder=4)
    ours = dark_decay_signal(times, pattern, amplitude=2.5, time_constant=11.0)
    assert ours.dtype == float_dtype and ours.shape == expected.shape
    np.testing.assert_allclose(np.asarray(ours, np.float64), expected, rtol=_rtol(float_dtype))


def _expected_signal(times, pattern, amplitude, time_constant):
    """romanisim's definition, read by read, in float64: the mean over a resultant's reads k
    of amplitude exp(-((k - 1.5) T + t_pix) / tau)."""
    frame = pattern.read_time
    return np.stack([np.mean([amplitude * np.exp(-((k - 1.5) * frame + times) / time_constant)
                              for k in reads], axis=0) for reads in pattern.reads])  # fmt: skip


@requires_romanisim
@pytest.mark.parametrize(("detector", "origin"), [(7, (2000, 100)), (9, (0, 3700))])
def test_simulate_l1_adds_the_dark_decay_in_dn(detector, origin, float_dtype):
    """Zero counts and no noise: off gives the pedestal exactly, on adds the dark decay of
    each pixel's own read times, in DN (after the gain), rounded."""
    from romanisim.l1 import frame_read_times as reference

    shape = (5, 300)  # crosses channel boundaries, where the read direction flips
    counts = np.zeros(shape, int)
    kw = dict(QUIET, gain=2.0, pedestal=2000.0)  # 1000 DN
    off = simulate_l1(jax.random.key(0), counts, PATTERN, **kw)
    on = simulate_l1(jax.random.key(0), counts, PATTERN, **kw,
                     dark_decay=dict(DECAY, sca=detector, origin=origin))  # fmt: skip
    np.testing.assert_array_equal(off.resultants, 1000.0)
    times = _window(reference(PATTERN.read_time, detector, nborder=4), origin, shape)
    expected = _expected_signal(times, PATTERN, **DECAY)
    difference = np.asarray(on.resultants, np.float64) - np.asarray(off.resultants, np.float64)
    # rounding to whole DN, plus the working precision of a ~1e6 DN signal
    tolerance = 0.5 + _rtol(float_dtype) * expected
    assert np.all(np.abs(difference - expected) <= tolerance)
    # the per-pixel times matter: a pixel read one row later is 3.4e-5 lower, ~17 DN here
    assert np.ptp(difference[-1]) > 50
    np.testing.assert_array_equal(on.dq, off.dq)


def test_dark_decay_pushes_pixels_into_saturation():
    counts = np.zeros((2, 3), int)
    out = simulate_l1(jax.random.key(1), counts, PATTERN, **dict(QUIET, saturation=1000.0),
                      dark_decay=dict(amplitude=2000.0, time_constant=1e4),
                      read_time_offsets=np.zeros((2, 3)))  # fmt: skip
    np.testing.assert_array_equal(out.resultants, 1100.0)  # clipped at 1.1 saturation
    assert np.all(np.asarray(out.dq) & romanjax.dq.SATURATED)


def test_read_time_offsets_give_the_detector_times_and_chunk_in_simulate_frame(float_dtype):
    """``read_time_offsets`` = the detector's times gives the same result as the detector in
    the dict; simulate_frame passes them block by block (here 7-row blocks)."""
    shape, origin = (40, 30), (100, 250)
    counts = np.zeros(shape, int)
    times = _window(frame_read_times(PATTERN.read_time, 7, nborder=4), origin, shape)
    by_detector = simulate_l1(jax.random.key(2), counts, PATTERN, **QUIET,
                              dark_decay=dict(DECAY, detector=7, origin=origin))  # fmt: skip
    by_times = simulate_l1(jax.random.key(2), counts, PATTERN, **QUIET, dark_decay=DECAY,
                           read_time_offsets=times)  # fmt: skip
    frame = romanjax.simulate_frame(jax.random.key(2), counts, PATTERN, **QUIET,
                                    dark_decay=DECAY, read_time_offsets=times,
                                    rng_block=7 * shape[1])  # fmt: skip
    expected = np.round(_expected_signal(np.asarray(times, np.float64), PATTERN, **DECAY))
    for out in (by_detector, by_times, frame):
        got = np.asarray(out.resultants, np.float64)
        assert np.max(np.abs(got - expected)) <= 1 + _rtol(float_dtype) * expected.max()
    # the same arithmetic, compiled differently: a float32 rounding may flip a .5
    for out in (by_detector, frame):
        np.testing.assert_allclose(np.asarray(out.resultants), by_times.resultants, atol=1)


def test_dark_decay_under_jit_and_vmap_with_traced_parameters():
    counts = np.zeros((3, 4), int)

    def run(amplitude, time_constant):
        return simulate_l1(jax.random.key(3), counts, PATTERN, **QUIET,
                           dark_decay=dict(amplitude=amplitude, time_constant=time_constant,
                                           sca=5, origin=(10, 20))).resultants  # fmt: skip

    eager = np.asarray(run(1e4, 30.0))
    assert eager.min() > 1000  # the decay is there
    # vmap traces both parameters (as a user's jit would)
    mapped = jax.vmap(run)(np.array([1e4, 2e4], np.float32), np.array([30.0, 30.0], np.float32))
    np.testing.assert_allclose(mapped[0], eager, atol=1)
    assert np.all(np.abs(np.asarray(mapped[1]) - 2 * eager) <= 2)


def test_dark_decay_is_off_by_default():
    counts = np.full((3, 4), 500)
    a = simulate_l1(jax.random.key(4), counts, PATTERN)
    b = simulate_l1(jax.random.key(4), counts, PATTERN, dark_decay=None)
    np.testing.assert_array_equal(a.resultants, b.resultants)


@pytest.mark.parametrize(("kwargs", "match"), [
    (dict(dark_decay=True), "no default"),
    (dict(dark_decay=dict(time_constant=1.0, sca=7)), "needs `amplitude`"),
    (dict(dark_decay=dict(DECAY, time_constant=0.0, sca=7)), "time_constant"),
    (dict(dark_decay=dict(DECAY, time_constant=np.nan, sca=7)), "finite"),
    (dict(dark_decay=dict(DECAY, amplitude=np.ones(2), sca=7)), "scalar"),
    (dict(dark_decay=dict(DECAY, sca=19)), "1 to 18"),
    (dict(dark_decay=dict(DECAY, sca=7, detector=7)), "not both"),
    (dict(dark_decay=dict(DECAY, gain=1)), "unknown `dark_decay` keys"),
    (dict(dark_decay=DECAY), "needs the pixels' read times"),
    (dict(dark_decay=dict(DECAY, sca=7)), "not a whole 4088 x 4088"),
    (dict(dark_decay=dict(DECAY, sca=7, origin=(4085, 0))), "beyond"),
    (dict(dark_decay=dict(DECAY, sca=7, origin=(-1, 0))), "origin"),
    (dict(dark_decay=dict(DECAY, sca=7), read_time_offsets=np.zeros((4, 5))), "not both"),
    (dict(read_time_offsets=np.zeros((4, 5))), "only used with `dark_decay`"),
    (dict(dark_decay=DECAY, read_time_offsets=np.zeros((3, 5))), "read_time_offsets"),
    (dict(dark_decay=DECAY, read_time_offsets=np.full((4, 5), np.inf)), "finite"),
])  # fmt: skip
def test_simulate_l1_rejects_bad_dark_decay(kwargs, match):
    with pytest.raises(ValueError, match=match):
        simulate_l1(jax.random.key(0), np.zeros((4, 5), int), PATTERN, **kwargs)


def test_dark_decay_with_a_detector_needs_an_image():
    with pytest.raises(ValueError, match="2-D `counts`"):
        simulate_l1(jax.random.key(0), np.zeros(20, int), PATTERN,
                    dark_decay=dict(DECAY, sca=7))  # fmt: skip


@pytest.mark.parametrize(("args", "kwargs", "match"), [
    ((3.0, 0), {}, "1 to 18"),
    ((3.0, True), {}, "1 to 18"),
    ((3.0, 7), dict(nborder=-1), "nborder"),
    ((3.0, 7), dict(nborder=2048), "nborder"),
    ((0.0, 7), {}, "frame_time"),
    ((3.0, 7), dict(t0=np.inf), "t0"),
])  # fmt: skip
def test_frame_read_times_rejects_bad_arguments(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        frame_read_times(*args, **kwargs)


def test_dark_decay_signal_rejects_bad_arguments():
    with pytest.raises(ValueError, match="time_constant"):
        dark_decay_signal(np.zeros(3), PATTERN, amplitude=1.0, time_constant=-1.0)
    with pytest.raises(ValueError, match="read_times"):
        dark_decay_signal(np.array([0.0, np.nan]), PATTERN, amplitude=1.0, time_constant=1.0)


# --------------------------------------------------------------------------- make_l2


@pytest.mark.parametrize("method", ["casertano", "optimal"])
def test_make_l2_removes_the_dark_decay_simulate_l1_adds(method, float_dtype):
    """simulate_l1(dark_decay=D) then make_l2(dark_decay=D) fits the slope of the same
    simulation without dark decay (same key: same photons and read noise; the two differ
    only by the rounding of the resultants to whole DN), where fitting without the
    correction is biased by many standard errors."""
    pattern = romanjax.ReadPattern.from_ma_table(4)
    shape, origin = (60, 70), (3000, 40)
    decay = dict(amplitude=300.0, time_constant=40.0, sca=4, origin=origin)  # [DN], [s]
    rate = 4.0  # [e/s]
    counts = np.random.default_rng(8).poisson(rate * pattern.exposure_time, shape)
    sim = dict(read_noise=5.0, gain=2.0)
    fit = dict(read_noise=5.0, gain=2.0, method=method)
    key = jax.random.key(9)
    plain = simulate_l1(key, counts, pattern, **sim)
    decayed = simulate_l1(key, counts, pattern, **sim, dark_decay=decay)
    want = romanjax.make_l2(plain.resultants, pattern, **fit)
    got = romanjax.make_l2(decayed.resultants, pattern, **fit, dark_decay=decay)
    biased = romanjax.make_l2(decayed.resultants, pattern, **fit)
    assert got.slope.dtype == float_dtype
    err = np.sqrt(np.asarray(want.var_rnoise) + np.asarray(want.var_poisson))
    difference = np.asarray(got.slope, np.float64) - np.asarray(want.slope, np.float64)
    # rounding (|d| < 1 DN per resultant, uniform) moves single slopes by a small fraction of
    # their error and the mean over the image not at all
    assert np.max(np.abs(difference) / err) < 0.5
    assert abs(difference.mean()) < 5 * difference.std() / np.sqrt(difference.size)
    assert np.mean(np.asarray(biased.slope) - np.asarray(want.slope)) < -5 * err.mean()
    np.testing.assert_array_equal(np.asarray(got.dq), np.asarray(want.dq))
    # exactly the resultants less dark_decay_signal at the pixels' read times
    times = _window(frame_read_times(pattern.read_time, 4, nborder=4), origin, shape)
    signal = dark_decay_signal(times, pattern, amplitude=300.0, time_constant=40.0)
    by_hand = romanjax.make_l2(decayed.resultants - signal, pattern, **fit)
    np.testing.assert_allclose(np.asarray(got.slope), np.asarray(by_hand.slope),
                               rtol=_rtol(float_dtype), atol=_rtol(float_dtype))  # fmt: skip
    # the same times given as read_time_offsets, and under jit
    by_offsets = romanjax.make_l2(decayed.resultants, pattern, **fit,
                                  dark_decay=dict(amplitude=300.0, time_constant=40.0),
                                  read_time_offsets=times)  # fmt: skip
    np.testing.assert_allclose(np.asarray(by_offsets.slope), np.asarray(got.slope),
                               rtol=_rtol(float_dtype), atol=_rtol(float_dtype))  # fmt: skip
    jitted = jax.jit(lambda r: romanjax.make_l2(r, pattern, **fit, dark_decay=decay))
    np.testing.assert_allclose(np.asarray(jitted(decayed.resultants).slope),
                               np.asarray(got.slope), rtol=_rtol(float_dtype),
                               atol=_rtol(float_dtype))  # fmt: skip


@pytest.mark.parametrize(("kwargs", "match"), [
    (dict(read_time_offsets=np.zeros((4, 5))), "make_l2: `read_time_offsets` is only used"),
    (dict(dark_decay=dict(amplitude=1.0, time_constant=2.0)), "make_l2: `dark_decay` needs"),
    (dict(dark_decay=dict(amplitude=1.0, time_constant=0.0), read_time_offsets=0.0),
     "make_l2: `dark_decay\\['time_constant'\\]`"),
    (dict(dark_decay=dict(amplitude=1.0, time_constant=2.0, sca=3)),
     "make_l2: `resultants` pixels of shape \\(4, 5\\) is not a whole"),
    (dict(dark_decay=dict(amplitude=1.0, time_constant=2.0), read_time_offsets=np.zeros(3)),
     "make_l2: `read_time_offsets`"),
    (dict(dark_decay=True), "make_l2: `dark_decay` has no default"),
])  # fmt: skip
def test_make_l2_rejects_bad_dark_decay(kwargs, match):
    resultants = np.zeros((PATTERN.n_resultants, 4, 5), np.float32)
    with pytest.raises(ValueError, match=match):
        romanjax.make_l2(resultants, PATTERN, read_noise=5.0, gain=2.0, **kwargs)


def test_simulate_frame_refuses_a_detector_for_the_read_times():
    """Blocks of rows do not know where they sit on the detector: the detector form would
    give every block the first block's read times, so simulate_frame refuses it."""
    counts = np.zeros((8, 5), int)
    with pytest.raises(ValueError, match="simulate_frame: .*read_time_offsets"):
        romanjax.simulate_frame(jax.random.key(0), counts, PATTERN, **QUIET,
                                dark_decay=dict(DECAY, detector=7, origin=(0, 0)),
                                rng_block=10)  # fmt: skip
