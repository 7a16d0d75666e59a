"""make_l2: DN resultants to an L2 count-rate image, against romanisim's make_l2 and direct
formulas."""

from __future__ import annotations

import importlib.util

import jax
import numpy as np
import pytest
from conftest import requires_romanisim, requires_stcal
from oracles import simulate_ramps

import romanjax
from romanjax import dq as dqbits
from romanjax.l2 import L2, apply_linearity, make_l2

have_casertano = importlib.util.find_spec("romanjax.ramp._casertano") is not None
requires_casertano = pytest.mark.skipif(
    not have_casertano, reason="romanjax.fit_ramps_casertano not available yet"
)

READ_TIME = 3.16247
FOUR_BY_FOUR = romanjax.ReadPattern([[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12],
                                     [13, 14, 15, 16]])  # fmt: skip


def dn_ramps(rng, pattern, shape, gain, read_noise_dn):
    """Poisson + read-noise ramps [DN] over a range of fluxes, with a pedestal."""
    npix = int(np.prod(shape))
    flux = np.exp(rng.uniform(np.log(1.0), np.log(3000.0), npix))  # e/s
    ramps_e = simulate_ramps(rng, pattern, flux, read_noise_dn * 2.0, npix, pedestal=1e4)
    return np.asarray(ramps_e).reshape((pattern.n_resultants,) + shape) / gain


@requires_romanisim
@requires_casertano
@pytest.mark.reference
def test_make_l2_matches_romanisim(rng):
    from romanisim.image import make_l2 as romanisim_make_l2

    pattern = romanjax.ReadPattern.from_ma_table(4)
    shape = (24, 30)
    gain = rng.uniform(1.6, 2.4, shape).astype(np.float32)
    read_noise = rng.uniform(4.0, 6.0, shape)
    resultants = np.round(dn_ramps(rng, pattern, shape, gain, 5.0)).astype(np.float32)
    flat = rng.uniform(0.7, 1.3, shape)
    dark = rng.uniform(0.0, 0.5, shape)
    dq = np.zeros(resultants.shape, np.uint32)
    hit = rng.uniform(size=resultants.shape) < 0.08
    dq[hit] = rng.choice([dqbits.SATURATED, dqbits.JUMP_DET, dqbits.NO_LIN_CORR], hit.sum())
    dq[:, 0, 0] = dqbits.SATURATED  # nothing to fit: rate and variances 0 in both

    ours = make_l2(resultants, pattern, read_noise=read_noise, gain=gain, dq=dq,
                   dark_rate=dark, flat=flat)  # fmt: skip
    ref_slope, ref_rvar, ref_pvar = romanisim_make_l2(
        resultants.copy(), [list(r) for r in pattern.reads], read_noise=read_noise,
        gain=gain, flat=flat, darkrate=dark, dq=dq.astype(np.int32).copy(),
    )  # fmt: skip
    # slopes span ~0-1500 DN/s: 1e-4 relative, with an absolute floor of 1e-4 of the typical
    # slope for the few pixels whose dark-subtracted slope is close to 0
    scale = np.median(np.abs(ref_slope))
    np.testing.assert_allclose(ours.slope, ref_slope, rtol=1e-4, atol=1e-4 * scale)
    np.testing.assert_allclose(ours.var_rnoise, ref_rvar, rtol=1e-3,
                               atol=1e-3 * np.median(ref_rvar))  # fmt: skip
    np.testing.assert_allclose(ours.var_poisson, ref_pvar, rtol=1e-3,
                               atol=1e-3 * np.median(ref_pvar))  # fmt: skip
    # the unfittable pixel: fitted rate 0, so the slope is just minus the dark, as romanisim
    np.testing.assert_allclose(ours.slope[0, 0], -dark[0, 0] / gain[0, 0] / flat[0, 0],
                               rtol=1e-5)  # fmt: skip
    assert ours.var_poisson[0, 0] == 0 and ours.var_rnoise[0, 0] == 0
    # dq: OR over resultants of the input flags (plus DO_NOT_USE where nothing was fitted)
    expected_dq = np.bitwise_or.reduce(dq, axis=0)
    got = np.asarray(ours.dq)
    assert np.array_equal(got & ~np.uint32(dqbits.DO_NOT_USE), expected_dq)
    assert got[0, 0] & dqbits.DO_NOT_USE


@requires_casertano
def test_make_l2_romanisim_unit_cases():
    """romanisim's test_make_l2 cases, with the expected values written out."""
    shape = (5, 6)
    constant = np.ones((4,) + shape, np.float32)
    l2 = make_l2(constant, FOUR_BY_FOUR, read_noise=5.0, gain=1.0, flat=1.0, dark_rate=0.0)
    np.testing.assert_allclose(l2.slope, 0, atol=1e-6)
    ramp = np.broadcast_to(np.arange(4, dtype=np.float32)[:, None, None], (4,) + shape)
    l2_1 = make_l2(ramp, FOUR_BY_FOUR, read_noise=1.0, gain=1.0)
    np.testing.assert_allclose(l2_1.slope, 1 / READ_TIME / 4, rtol=1e-5)
    assert np.all(np.asarray(l2_1.var_rnoise) > 0) and np.all(np.asarray(l2_1.var_poisson) > 0)
    l2_2 = make_l2(ramp, FOUR_BY_FOUR, read_noise=2.0, gain=1.0)
    assert np.all(np.abs(np.asarray(l2_2.var_rnoise) / (4 * np.asarray(l2_1.var_rnoise)) - 1)
                  < 0.1)  # fmt: skip
    flat = make_l2(ramp, FOUR_BY_FOUR, read_noise=1.0, gain=1.0, flat=0.5)
    np.testing.assert_allclose(flat.slope, np.asarray(l2_1.slope) / 0.5, rtol=1e-6)
    np.testing.assert_allclose(flat.var_rnoise, np.asarray(l2_1.var_rnoise) / 0.25, rtol=1e-6)
    np.testing.assert_allclose(flat.var_poisson, np.asarray(l2_1.var_poisson) / 0.25, rtol=1e-6)
    dark = make_l2(ramp, FOUR_BY_FOUR, read_noise=1.0, gain=1.0,
                   dark_rate=1 / READ_TIME / 4)  # fmt: skip
    np.testing.assert_allclose(dark.slope, 0, atol=1e-6)


@requires_casertano
def test_gain_conversion_and_flat_clip():
    """Slope in DN/s = e/s / gain; variances / gain**2; a zero flat (host data) raises."""
    rng = np.random.default_rng(3)
    pattern = romanjax.ReadPattern.from_ma_table(4)
    ramps_e = simulate_ramps(rng, pattern, np.full(50, 200.0), 10.0, 50, pedestal=0.0)
    ramps_e = np.asarray(ramps_e, np.float32)
    fit = romanjax.fit_ramps_casertano(ramps_e, pattern, 10.0)
    for gain in (1.0, 2.5):
        l2 = make_l2(ramps_e / gain, pattern, read_noise=10.0 / gain, gain=gain)
        np.testing.assert_allclose(l2.slope, np.asarray(fit.slope) / gain, rtol=2e-5)
        np.testing.assert_allclose(l2.var_rnoise, np.asarray(fit.var_read) / gain**2, rtol=2e-5)
        np.testing.assert_allclose(l2.var_poisson, np.asarray(fit.var_poisson) / gain**2,
                                   rtol=2e-5)  # fmt: skip
    with pytest.raises(ValueError, match="make_l2: `flat` must be > 0"):
        make_l2(ramps_e, pattern, read_noise=10.0, gain=1.0, flat=0.0)  # host data: raises


def test_invalid_device_parameters_flag_their_pixels():
    """On a device the parameters are not read back: a pixel whose flat, gain, read noise or
    dark rate is invalid gets DO_NOT_USE and zeros; the other pixels are untouched."""
    import jax.numpy as jnp

    rng = np.random.default_rng(3)
    pattern = romanjax.ReadPattern.from_ma_table(4)
    ramps_e = np.asarray(simulate_ramps(rng, pattern, np.full(6, 200.0), 10.0, 6, pedestal=0.0),
                         np.float32)  # fmt: skip
    good = make_l2(ramps_e, pattern, read_noise=10.0, gain=1.0)
    bad = {"flat": [1, 0, 1, 1, 1, 1], "gain": [1, 1, np.nan, 1, 1, 1],
           "read_noise": [10, 10, 10, -1, 10, 10], "dark_rate": [0, 0, 0, 0, np.inf, 0]}
    kwargs = {"read_noise": 10.0, "gain": 1.0}
    kwargs.update({name: jnp.asarray(values, jnp.float32) for name, values in bad.items()})
    l2 = make_l2(ramps_e, pattern, **kwargs)
    flagged = np.array([False, True, True, True, True, False])
    np.testing.assert_array_equal(np.asarray(l2.dq) & romanjax.dq.DO_NOT_USE, flagged)
    for name in ("slope", "var_rnoise", "var_poisson"):
        value = np.asarray(getattr(l2, name))
        assert np.all(value[flagged] == 0) and np.all(np.isfinite(value))
        np.testing.assert_allclose(value[~flagged], np.asarray(getattr(good, name))[~flagged],
                                   rtol=1e-6)  # fmt: skip


@pytest.mark.parametrize("method", ["casertano", "optimal", "likely"])
def test_methods_fit_noiseless_ramps_exactly(method):
    if method != "optimal" and importlib.util.find_spec(
        f"romanjax.ramp._{method}"
    ) is None:
        pytest.skip(f"fit_ramps_{method} not available yet")
    pattern = romanjax.ReadPattern.from_ma_table(4)
    slope_dn = np.array([0.5, 3.0, 40.0, 400.0])  # DN/s
    resultants = (100.0 + slope_dn[None, :] * pattern.tbar[:, None]).astype(np.float32)
    l2 = make_l2(resultants, pattern, read_noise=5.0, gain=2.0, method=method)
    np.testing.assert_allclose(l2.slope, slope_dn, rtol=2e-4)
    assert isinstance(l2, L2)
    assert np.asarray(l2.slope).dtype == np.asarray(resultants + np.float32(0)).dtype or (
        jax.config.read("jax_enable_x64")
    )
    assert np.all(np.asarray(l2.var_rnoise) > 0)


def test_unknown_method_names_method():
    pattern = romanjax.ReadPattern.from_ma_table(4)
    with pytest.raises(ValueError, match="`method`"):
        make_l2(np.zeros((9, 2, 2)), pattern, read_noise=5.0, gain=2.0, method="ols")


def test_bad_shapes_raise():
    pattern = romanjax.ReadPattern.from_ma_table(4)
    with pytest.raises(ValueError, match="resultants"):
        make_l2(np.zeros((8, 2, 2)), pattern, read_noise=5.0, gain=2.0)
    with pytest.raises(ValueError, match="`gain`"):
        make_l2(np.zeros((9, 2, 2)), pattern, read_noise=5.0, gain=np.ones(3))
    with pytest.raises(ValueError, match="`dq`"):
        make_l2(np.zeros((9, 2, 2)), pattern, read_noise=5.0, gain=2.0,
                dq=np.zeros((8, 2, 2)))  # fmt: skip
    with pytest.raises(ValueError, match="`linearity`"):
        make_l2(np.zeros((9, 2, 2)), pattern, read_noise=5.0, gain=2.0,
                linearity=np.ones((2, 3)))  # fmt: skip


@requires_casertano
def test_pure_jit_and_dtype(float_dtype):
    rng = np.random.default_rng(5)
    pattern = romanjax.ReadPattern.from_ma_table(4)
    resultants = np.asarray(simulate_ramps(rng, pattern, np.full(12, 50.0), 10.0, 12, 1e4))
    resultants = (resultants / 2).reshape(9, 3, 4).astype(float_dtype)
    dq = np.zeros(resultants.shape, np.uint32)
    dq[4, 1, 1] = dqbits.JUMP_DET
    before = resultants.copy(), dq.copy()
    l2 = make_l2(resultants, pattern, read_noise=5.0, gain=2.0, dq=dq, dark_rate=0.1, flat=0.9)
    assert np.array_equal(resultants, before[0]) and np.array_equal(dq, before[1])
    assert np.asarray(l2.slope).dtype == float_dtype
    assert np.asarray(l2.dq).dtype == np.uint32 and l2.dq.shape == (3, 4)
    assert np.asarray(l2.dq)[1, 1] & dqbits.JUMP_DET

    @jax.jit
    def jitted(r):
        return make_l2(r, pattern, read_noise=5.0, gain=2.0, dq=dq, dark_rate=0.1, flat=0.9)

    again = jitted(resultants)
    np.testing.assert_allclose(again.slope, l2.slope, rtol=1e-6)
    np.testing.assert_allclose(again.var_poisson, l2.var_poisson, rtol=1e-6)


@requires_casertano
def test_linearity_correction():
    pattern = romanjax.ReadPattern.from_ma_table(4)
    slope_dn = np.array([[10.0, 20.0]])
    resultants = (slope_dn[None] * pattern.tbar[:, None, None]).astype(np.float32)
    # c0 + c1 R: doubles the signal in pixel 0; all-zero coefficients in pixel 1 -> identity
    coefficients = np.zeros((3, 1, 2))
    coefficients[1, 0, 0] = 2.0
    l2 = make_l2(resultants, pattern, read_noise=5.0, gain=2.0, linearity=coefficients)
    np.testing.assert_allclose(l2.slope, [[20.0, 20.0]], rtol=1e-5)
    assert np.asarray(l2.dq)[0, 0] == 0
    assert np.asarray(l2.dq)[0, 1] == dqbits.NO_LIN_CORR
    corrected, flags = apply_linearity(resultants, np.array([1.0, 1.0, 0.01]))
    np.testing.assert_allclose(corrected, 1 + resultants + 0.01 * resultants**2, rtol=1e-6)
    assert not np.any(np.asarray(flags))


@requires_stcal
@pytest.mark.reference
def test_pixel_flags_romancal_equal_stcals_dq_compress_sect():
    """Every combination of DO_NOT_USE, SATURATED and JUMP_DET over four resultants: the
    pixel flags equal stcal's ``dq_compress_sect`` (which romancal's likelihood ramp fit
    calls), with the pixel unfitted where stcal finds every resultant SATURATED or
    DO_NOT_USE."""
    import itertools
    from types import SimpleNamespace

    from stcal.ramp_fitting.utils import dq_compress_sect

    from romanjax.l2 import pixel_flags_romancal

    flags = (0, dqbits.DO_NOT_USE, dqbits.SATURATED, dqbits.JUMP_DET,
             dqbits.SATURATED | dqbits.JUMP_DET)  # fmt: skip
    dq = np.array(list(itertools.product(flags, repeat=4)), np.uint32).T  # [4, 625]
    ramp_data = SimpleNamespace(flags_saturated=dqbits.SATURATED, flags_jump_det=dqbits.JUMP_DET,
                                flags_do_not_use=dqbits.DO_NOT_USE)  # fmt: skip
    expected = dq_compress_sect(ramp_data, dq[:, None, :].copy(),
                                np.zeros((1, dq.shape[1]), np.uint32))[0]  # fmt: skip
    unfitted = np.all(dq & (dqbits.SATURATED | dqbits.DO_NOT_USE), axis=0)
    got = np.asarray(pixel_flags_romancal(dq, unfitted))
    assert np.any(expected & dqbits.SATURATED) and np.any(expected & dqbits.DO_NOT_USE)
    np.testing.assert_array_equal(got, expected)


def test_pixel_flags_romancal_against_romanisim_semantics():
    """romancal (stcal's dq_compress_sect): SATURATED where any resultant saturated,
    DO_NOT_USE only where no usable sub-ramp remains (one DO_NOT_USE resultant left out
    leaves no flag), JUMP_DET where any resultant carries it. romanisim: the OR over
    resultants."""
    pattern = romanjax.ReadPattern.from_ma_table(4)
    n = pattern.n_resultants
    rate = np.array([50.0, 50.0, 50.0, 50.0, 50.0], np.float32)  # [DN/s]
    resultants = (rate[None] * pattern.tbar[:, None]).astype(np.float32) + 100.0
    dq = np.zeros(resultants.shape, np.uint32)
    dq[5:, 1] = dqbits.SATURATED          # later resultants saturated: still a usable ramp
    dq[:, 2] = dqbits.SATURATED           # every resultant saturated: nothing to fit
    dq[3, 3] = dqbits.DO_NOT_USE          # one corrupt resultant, left out
    dq[4:, 4] = dqbits.JUMP_DET           # a flagged jump
    romancal = romanjax.make_l2(resultants, pattern, read_noise=5.0, gain=2.0, dq=dq,
                                method="likely", detect_jumps=False, pixel_flags="romancal")
    romanisim = romanjax.make_l2(resultants, pattern, read_noise=5.0, gain=2.0, dq=dq,
                                 method="likely", detect_jumps=False)  # fmt: skip
    got = np.asarray(romancal.dq)
    assert got[0] == 0
    assert got[1] == dqbits.SATURATED  # fitted from its first resultants, flagged
    assert got[2] == dqbits.SATURATED | dqbits.DO_NOT_USE
    assert got[3] == 0
    assert got[4] == dqbits.JUMP_DET
    expected = np.bitwise_or.reduce(dq, axis=0)
    expected[2] |= dqbits.DO_NOT_USE  # nothing fitted
    np.testing.assert_array_equal(np.asarray(romanisim.dq), expected)
    # the fits themselves do not depend on the flag convention
    np.testing.assert_array_equal(np.asarray(romancal.slope), np.asarray(romanisim.slope))
    np.testing.assert_allclose(np.asarray(romancal.slope)[[0, 1, 3, 4]], 50.0, rtol=1e-4)
    assert n > 5
    with pytest.raises(ValueError, match="`pixel_flags`"):
        romanjax.make_l2(resultants, pattern, read_noise=5.0, gain=2.0, pixel_flags="stcal")
