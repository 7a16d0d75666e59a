"""Flags and bad input (docs/errors.md): resultants flagged DO_NOT_USE, SATURATED or JUMP_DET
(``romanjax.dq.DO_NOT_USE_IN_FIT``, as romancal) and non-finite resultants are left out of
every fit; invalid host arguments raise errors that name them; integer inputs are exact."""

from __future__ import annotations

import re

import numpy as np
import pytest

import romanjax
from romanjax import dq as dqflags

MA4 = romanjax.ReadPattern.from_ma_table(4)
FITTERS = {
    "casertano": lambda r, dq: romanjax.fit_ramps_casertano(r, MA4, 5.0, dq=dq),
    "optimal": lambda r, dq: romanjax.fit_ramps_optimal(r, MA4, 5.0, dq=dq),
    "likely": lambda r, dq: romanjax.fit_ramps_likely(r, MA4, 5.0, dq=dq, detect_jumps=False),
}


def _ramps(float_dtype):
    """Noiseless ramps [e] of three fluxes [e/s]: every sub-ramp has the true slope, so a
    fit that leaves out a resultant still gives it."""
    flux = np.array([3.0, 40.0, 900.0])
    return flux, (250.0 + MA4.tbar[:, None] * flux[None]).astype(float_dtype)


@pytest.mark.parametrize("method", sorted(FITTERS))
@pytest.mark.parametrize("bit", [dqflags.DO_NOT_USE, dqflags.SATURATED, dqflags.JUMP_DET])
def test_a_flagged_corrupt_resultant_is_left_out(method, bit, float_dtype):
    flux, resultants = _ramps(float_dtype)
    corrupt = resultants.copy()
    corrupt[-1] += 5000.0 + 50.0 * flux  # a corrupt last resultant [e]
    dq = np.zeros(corrupt.shape, np.uint32)
    dq[-1] = bit
    fit = FITTERS[method](corrupt, dq)
    np.testing.assert_allclose(np.asarray(fit.slope), flux, rtol=1e-4)
    assert not np.any(np.asarray(fit.dq) & dqflags.DO_NOT_USE)  # the pixels were fitted
    unflagged = FITTERS[method](corrupt, np.zeros_like(dq))
    assert np.all(np.abs(np.asarray(unflagged.slope) / flux - 1) > 1e-2)  # the test can fail


def test_make_l2_leaves_out_do_not_use_resultants(float_dtype):
    flux, resultants = _ramps(float_dtype)
    gain = 2.0
    data = resultants / gain  # [DN]
    data[-1] += 3000.0 + 50.0 * flux
    dq = np.zeros(data.shape, np.uint32)
    dq[-1] = dqflags.DO_NOT_USE
    for method in sorted(FITTERS):
        l2 = romanjax.make_l2(data, MA4, read_noise=2.5, gain=gain, dq=dq, method=method,
                              **({"detect_jumps": False} if method == "likely" else {}))
        np.testing.assert_allclose(np.asarray(l2.slope), flux / gain, rtol=1e-4)
        assert np.all(np.asarray(l2.dq) == dqflags.DO_NOT_USE)  # the input flag, carried
        kept = romanjax.make_l2(data, MA4, read_noise=2.5, gain=gain, method=method,
                                **({"detect_jumps": False} if method == "likely" else {}))
        assert np.all(np.abs(np.asarray(kept.slope) * gain / flux - 1) > 1e-2)


# ---------------------------------------------------------------------------------------------
# non-finite resultants: left out (DO_NOT_USE), the pixel fitted from its other resultants
# ---------------------------------------------------------------------------------------------


def _with_non_finite(float_dtype):
    flux, resultants = _ramps(float_dtype)
    resultants[4, 1] = np.nan
    resultants[-1, 2] = np.inf
    resultants[0, 0] = -np.inf
    return flux, resultants


@pytest.mark.parametrize("method", sorted(FITTERS))
def test_non_finite_host_resultants_are_left_out(method, float_dtype):
    flux, resultants = _with_non_finite(float_dtype)
    fit = FITTERS[method](resultants, None)
    np.testing.assert_allclose(np.asarray(fit.slope), flux, rtol=1e-4)
    for name in ("var_read", "var_poisson", "var_total"):
        assert np.all(np.isfinite(np.asarray(getattr(fit, name))))
    _assert_left_out_flagged(fit, resultants)


def _assert_left_out_flagged(fit, resultants, unfitted=None):
    """``fit.dq``: DO_NOT_USE on exactly the non-finite resultants (and on every resultant
    of the ``unfitted`` pixels), no other flag; ``fit.left_out`` the non-finite ones."""
    bad = ~np.isfinite(resultants)
    np.testing.assert_array_equal(np.asarray(fit.left_out), bad)
    expected = bad if unfitted is None else bad | unfitted[None]
    np.testing.assert_array_equal(
        np.asarray(fit.dq), np.where(expected, dqflags.DO_NOT_USE, 0).astype(np.uint32))


def test_non_finite_device_resultants_are_left_out(float_dtype):
    """On a device (or under jit) the masked fits leave them out: the likelihood fitter
    always, Casertano with dq or jump detection, the optimal fitter with dq."""
    import jax
    import jax.numpy as jnp

    flux, resultants = _with_non_finite(float_dtype)
    on_device = jnp.asarray(resultants)
    zeros = jnp.zeros(resultants.shape, jnp.uint32)
    fits = [
        romanjax.fit_ramps_likely(on_device, MA4, 5.0),
        romanjax.fit_ramps_casertano(on_device, MA4, 5.0, dq=zeros),
        romanjax.fit_ramps_casertano(on_device, MA4, 5.0, detect_jumps=True),
        romanjax.fit_ramps_optimal(on_device, MA4, 5.0, dq=zeros),
        jax.jit(lambda r: romanjax.fit_ramps_likely(r, MA4, 5.0))(on_device),
    ]
    for fit in fits:
        np.testing.assert_allclose(np.asarray(fit.slope), flux, rtol=1e-4)
        _assert_left_out_flagged(fit, resultants)


@pytest.mark.parametrize("method", ["casertano", "optimal"])
def test_non_finite_device_resultants_on_the_whole_ramp_path_are_refitted(method, float_dtype):
    """Device data without dq (and Casertano without jump detection) take the whole-ramp
    path: a pixel with a non-finite resultant is refitted from its finite ones, as the
    masked fit does with those resultants flagged; never NaN, and the other pixels are
    fitted as before."""
    import jax
    import jax.numpy as jnp

    flux, resultants = _with_non_finite(float_dtype)
    clean_flux, clean = _ramps(float_dtype)
    flux = np.concatenate([flux, clean_flux])
    resultants = np.concatenate([resultants, clean], axis=1)
    fitter = getattr(romanjax, f"fit_ramps_{method}")
    bad = ~np.all(np.isfinite(resultants), axis=0)
    assert bad.any() and not bad.all()
    flags = np.where(np.isfinite(resultants), 0, romanjax.dq.DO_NOT_USE).astype(np.uint32)
    masked = fitter(np.where(np.isfinite(resultants), resultants, 0), MA4, 5.0, dq=flags)
    for fit in (fitter(jnp.asarray(resultants), MA4, 5.0),
                jax.jit(lambda r: fitter(r, MA4, 5.0))(jnp.asarray(resultants))):
        for name in ("slope", "var_read", "var_poisson", "var_total"):
            value = np.asarray(getattr(fit, name))
            assert np.all(np.isfinite(value)), name
            np.testing.assert_allclose(value[bad], np.asarray(getattr(masked, name))[bad],
                                       rtol=1e-5, err_msg=name)  # fmt: skip
        np.testing.assert_allclose(np.asarray(fit.slope), flux, rtol=1e-4)
        _assert_left_out_flagged(fit, resultants)


@pytest.mark.parametrize("table", [6, 110])
def test_casertano_refit_of_non_finite_device_pixels_for_long_patterns(table, float_dtype):
    """Beyond 9 resultants the CPU program refits device-data pixels with a non-finite
    resultant in the array form (with loops), and only when there are some: the result is
    still the masked fit's (written out up to 16 resultants), and a clean frame is fitted
    as before."""
    import jax.numpy as jnp

    pattern = romanjax.ReadPattern.from_ma_table(table)
    assert pattern.n_resultants > 9
    flux = np.array([3.0, 40.0, 900.0, 0.5, 7.0, 120.0])
    resultants = (250.0 + pattern.tbar[:, None] * flux[None]).astype(float_dtype)
    rng = np.random.default_rng(5)
    resultants += rng.normal(0, 3.0, resultants.shape).astype(float_dtype)
    clean = romanjax.fit_ramps_casertano(jnp.asarray(resultants), pattern, 5.0)
    reference = romanjax.fit_ramps_casertano(resultants, pattern, 5.0, dq=np.zeros(
        resultants.shape, np.uint32))  # fmt: skip
    np.testing.assert_allclose(np.asarray(clean.slope), np.asarray(reference.slope),
                               rtol=1e-5)  # fmt: skip
    resultants[5, 1] = np.nan
    resultants[-1, 2] = np.inf
    resultants[0, 4] = -np.inf
    resultants[3:9, 5] = np.nan  # splits the ramp in two
    bad = ~np.all(np.isfinite(resultants), axis=0)
    flags = np.where(np.isfinite(resultants), 0, romanjax.dq.DO_NOT_USE).astype(np.uint32)
    masked = romanjax.fit_ramps_casertano(np.where(np.isfinite(resultants), resultants, 0),
                                          pattern, 5.0, dq=flags)  # fmt: skip
    fit = romanjax.fit_ramps_casertano(jnp.asarray(resultants), pattern, 5.0)
    for name in ("slope", "var_read", "var_poisson", "var_total"):
        value = np.asarray(getattr(fit, name))
        assert np.all(np.isfinite(value)), name
        np.testing.assert_allclose(value, np.asarray(getattr(masked, name)), rtol=1e-5,
                                   err_msg=name)  # fmt: skip
    assert np.all(np.asarray(fit.slope)[bad] != np.asarray(clean.slope)[bad])
    _assert_left_out_flagged(fit, resultants)


@pytest.mark.parametrize("table", [4, 6])
@pytest.mark.parametrize("bad_pixels", [0, 100, 400])
def test_casertano_cpu_refit_in_blocks(table, bad_pixels, monkeypatch, float_dtype):
    """On CPUs the refit batch is fitted block by block, only as many blocks as it holds
    pixels (small blocks here, so that the batch spans several, the last one partly
    padding): every refitted pixel gets the masked fit's values, and pixels beyond the
    batch are flagged unfitted."""
    import jax.numpy as jnp

    from romanjax.ramp import _common

    monkeypatch.setattr(_common, "CPU_REFIT_BLOCK", 48)
    pattern = romanjax.ReadPattern.from_ma_table(table)
    npix = 64 * 157 + 3  # a pixel count of its own: a fresh trace with the small blocks
    capacity = _common.refit_capacity(npix)
    assert capacity > 3 * 48 and capacity % 48
    rng = np.random.default_rng(table + bad_pixels)
    flux = rng.uniform(0.5, 900.0, npix)
    resultants = (250.0 + pattern.tbar[:, None] * flux[None]).astype(float_dtype)
    resultants += rng.normal(0, 3.0, resultants.shape).astype(float_dtype)
    where = rng.choice(npix, bad_pixels, replace=False)
    resultants[rng.integers(1, pattern.n_resultants, bad_pixels), where] = np.nan
    bad = ~np.all(np.isfinite(resultants), axis=0)
    flags = np.where(np.isfinite(resultants), 0, romanjax.dq.DO_NOT_USE).astype(np.uint32)
    masked = romanjax.fit_ramps_casertano(np.where(np.isfinite(resultants), resultants, 0),
                                          pattern, 5.0, dq=flags)  # fmt: skip
    fit = romanjax.fit_ramps_casertano(jnp.asarray(resultants), pattern, 5.0)
    refitted = ~bad | (np.cumsum(bad) <= capacity)
    assert (~refitted).sum() == max(bad_pixels - capacity, 0)
    for name in ("slope", "var_read", "var_poisson"):
        value = np.asarray(getattr(fit, name))
        np.testing.assert_allclose(value[refitted], np.asarray(getattr(masked, name))[refitted],
                                   rtol=1e-5, err_msg=name)  # fmt: skip
        assert not value[~refitted].any(), name
    _assert_left_out_flagged(fit, resultants, unfitted=~refitted)


@pytest.mark.parametrize("method", ["casertano", "optimal"])
def test_non_finite_device_pixels_beyond_the_refit_batch_are_flagged(method, float_dtype):
    """More such pixels than one refit batch holds: the first ones (in pixel order) are
    refitted, the others are not fitted (zeros, DO_NOT_USE), never NaN with dq 0."""
    import jax.numpy as jnp

    from romanjax.ramp._common import refit_capacity

    flux, resultants = _ramps(float_dtype)
    resultants = np.tile(resultants, (1, 40))[:, :100]
    flux = np.tile(flux, 40)[:100]
    resultants[3] = np.nan  # every pixel
    capacity = refit_capacity(100)
    assert capacity < 100
    fit = getattr(romanjax, f"fit_ramps_{method}")(jnp.asarray(resultants), MA4, 5.0)
    slope = np.asarray(fit.slope)
    np.testing.assert_allclose(slope[:capacity], flux[:capacity], rtol=1e-4)
    assert not slope[capacity:].any()
    _assert_left_out_flagged(fit, resultants, unfitted=np.arange(100) >= capacity)


@pytest.mark.parametrize("method", ["casertano", "optimal"])
def test_fit_frame_leaves_out_non_finite_host_resultants(method, float_dtype):
    flux, resultants = _with_non_finite(float_dtype)
    frame = np.tile(resultants, (1, 700))  # chunks of 1024 pixels: every chunk has some
    fit = romanjax.fit_frame(frame, MA4, 5.0, method=method, chunk_pixels=1024)
    np.testing.assert_allclose(np.asarray(fit.slope), np.tile(flux, 700), rtol=1e-4)
    _assert_left_out_flagged(fit, frame)


def test_make_l2_flags_and_leaves_out_non_finite_resultants(float_dtype):
    flux, resultants = _with_non_finite(float_dtype)
    for method in sorted(FITTERS):
        l2 = romanjax.make_l2(resultants / 2.0, MA4, read_noise=2.5, gain=2.0, method=method)
        np.testing.assert_allclose(np.asarray(l2.slope), flux / 2.0, rtol=1e-4)
        # the pixels with a non-finite resultant carry its DO_NOT_USE
        np.testing.assert_array_equal(np.asarray(l2.dq), [dqflags.DO_NOT_USE] * 3)
    clean = _ramps(float_dtype)[1]
    assert not np.any(np.asarray(romanjax.make_l2(clean, MA4, read_noise=2.5, gain=2.0).dq))


# ---------------------------------------------------------------------------------------------
# invalid host arguments: an error naming the argument
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "value", "message"), [
    ("gain", 0.0, "`gain` must be > 0"),
    ("gain", -2.0, "`gain` must be > 0"),
    ("gain", np.nan, "`gain` must be finite"),
    ("read_noise", -1.0, "`read_noise` must be >= 0"),
    ("read_noise", np.inf, "`read_noise` must be finite"),
    ("flat", 0.0, "`flat` must be > 0"),
    ("flat", np.full((3,), np.nan), "`flat` must be finite"),
    ("dark_rate", np.nan, "`dark_rate` must be finite"),
])  # fmt: skip
def test_make_l2_rejects_invalid_parameters(name, value, message):
    resultants = _ramps(np.float32)[1]
    kwargs = {"read_noise": 2.5, "gain": 2.0, name: value}
    with pytest.raises(ValueError, match=f"make_l2: {message}"):
        romanjax.make_l2(resultants, MA4, **kwargs)


@pytest.mark.parametrize("method", sorted(FITTERS))
def test_fitters_reject_bad_dtypes_and_dq(method):
    resultants = _ramps(np.float32)[1]
    fitter = getattr(romanjax, f"fit_ramps_{method}")
    with pytest.raises(TypeError, match="`resultants` must be real numbers"):
        fitter(resultants > 300, MA4, 5.0)
    with pytest.raises(TypeError, match="`resultants` must be real numbers"):
        fitter(resultants.astype(np.complex64), MA4, 5.0)
    with pytest.raises(TypeError, match="`dq` must be an integer array"):
        fitter(resultants, MA4, 5.0, dq=np.full(resultants.shape, 2.5))
    with pytest.raises(ValueError, match=r"`dq` values must be 0 to 2\*\*32 - 1"):
        fitter(resultants, MA4, 5.0, dq=np.full(resultants.shape, 2**32, np.int64))
    with pytest.raises(ValueError, match=r"`dq` values must be 0 to 2\*\*32 - 1"):
        fitter(resultants, MA4, 5.0, dq=np.full(resultants.shape, -1, np.int32))
    with pytest.raises(ValueError, match=f"fit_ramps_{method}: `read_noise` must be >= 0"):
        fitter(resultants, MA4, np.array([5.0, -1.0, 5.0]))
    with pytest.raises(ValueError, match=f"fit_ramps_{method}: `read_noise` must be finite"):
        fitter(resultants, MA4, np.nan)
    if method != "casertano":
        with pytest.raises(ValueError, match="`flux_estimate` must be finite"):
            fitter(resultants, MA4, 5.0, flux_estimate=np.array([1.0, np.inf, 2.0]))


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.uint16, np.uint32])
def test_narrow_integer_counts_are_exact(dtype):
    """Counts of any integer width are the same electrons as int32 counts (never wrapped)."""
    import jax

    top = min(np.iinfo(dtype).max, 40000)
    counts = np.linspace(0, top, 12).astype(dtype).reshape(3, 4)
    key = jax.random.key(8)
    wide = counts.astype(np.int32)
    np.testing.assert_array_equal(np.asarray(romanjax.apportion_counts(key, counts, MA4)),
                                  np.asarray(romanjax.apportion_counts(key, wide, MA4)))
    a = romanjax.simulate_l1(key, counts, MA4, read_noise=5.0, gain=2.0)
    b = romanjax.simulate_l1(key, wide, MA4, read_noise=5.0, gain=2.0)
    np.testing.assert_array_equal(np.asarray(a.resultants), np.asarray(b.resultants))


@pytest.mark.parametrize(("name", "value", "message"), [
    ("read_noise", np.nan, "`read_noise` must be finite"),
    ("read_noise", -1.0, "`read_noise` must be >= 0"),
    ("gain", -2.0, "`gain` must be > 0"),
    ("gain", np.nan, "`gain` must be finite"),
    ("pedestal", np.inf, "`pedestal` must be finite"),
    ("saturation", -1.0, "`saturation` must be > 0"),
    ("saturation", np.nan, "`saturation` must be finite"),
    ("ipc", np.full((3, 3), np.nan), "`ipc` must be finite"),
    ("read_noise", np.ones(5), "`read_noise` of shape (5,) does not broadcast"),
])  # fmt: skip
def test_simulate_l1_rejects_invalid_parameters(name, value, message):
    import jax

    with pytest.raises(ValueError, match=f"simulate_l1: {re.escape(message)}"):
        romanjax.simulate_l1(jax.random.key(0), np.full((3, 4), 100), MA4, **{name: value})


@pytest.mark.parametrize(("counts", "message"), [
    (np.array([3, -1]), "`counts` must be non-negative"),
    (np.array([2.5, 1.0]), "`counts` must be integer-valued electrons"),
    (np.array([np.nan, 1.0]), "`counts` must be integer-valued electrons"),
    (np.array([3e9, 1.0]), "`counts` must be <= 2e+09 per pixel"),
    (np.array([True, False]), "`counts` must be numeric"),
])  # fmt: skip
def test_counts_are_checked_everywhere(counts, message):
    import jax

    key = jax.random.key(0)
    calls = {
        "apportion_counts": lambda: romanjax.apportion_counts(key, counts, MA4),
        "apportion_frame": lambda: romanjax.apportion_frame(key, counts, MA4),
        "simulate_l1": lambda: romanjax.simulate_l1(key, counts, MA4),
    }
    for function, call in calls.items():
        with pytest.raises(ValueError, match=f"{function}: {re.escape(message)}"):
            call()


def test_empty_frames_and_bad_read_indices():
    """No pixels is a valid (empty) answer everywhere; read indices must be numbers."""
    empty = np.zeros((MA4.n_resultants, 0, 5), np.float32)
    for method in sorted(FITTERS):
        assert romanjax.fit_frame(empty, MA4, 5.0, method=method).slope.shape == (0, 5)
    fit = romanjax.fit_ramps_casertano(empty, MA4, 5.0, detect_jumps=True)
    assert fit.slope.shape == (0, 5)
    with pytest.raises(ValueError, match="read index '1' in resultant 0 is not an integer"):
        romanjax.ReadPattern([["1"], ["2"]])


def test_integer_resultants_are_fitted_as_floats(float_dtype):
    """uint16 resultants (as L1 files hold them) fit as the same values in floats."""
    flux, resultants = _ramps(np.float64)
    whole = np.round(resultants / 2.0)  # [DN], whole numbers below 2**16
    as_uint16 = whole.astype(np.uint16)
    for method in sorted(FITTERS):
        a = romanjax.make_l2(as_uint16, MA4, read_noise=2.5, gain=2.0, method=method)
        b = romanjax.make_l2(whole.astype(float_dtype), MA4, read_noise=2.5, gain=2.0,
                             method=method)  # fmt: skip
        assert np.asarray(a.slope).dtype == float_dtype
        np.testing.assert_allclose(np.asarray(a.slope), np.asarray(b.slope), rtol=1e-6)
        np.testing.assert_allclose(np.asarray(a.slope), flux / 2.0, rtol=2e-2)
