"""fit_frame / simulate_frame: chunked and sharded results equal direct results exactly."""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import romanjax
from romanjax import dq as dqflags
from romanjax.host.frames import (
    _simulate_frame,
    apportion_frame,
    balanced_chunk_pixels,
    default_chunk_pixels,
    fit_frame,
    simulate_frame,
)
from romanjax.ramp._common import RampFit, pack_flags


def have(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


needs_casertano = pytest.mark.skipif(
    not have("romanjax.ramp._casertano"), reason="fit_ramps_casertano not written yet"
)
needs_likely = pytest.mark.skipif(
    not have("romanjax.ramp._likely"), reason="fit_ramps_likely not written yet"
)
needs_apportion = pytest.mark.skipif(
    not have("romanjax.l1._apportion"), reason="apportion_counts not written yet"
)
needs_simulate = pytest.mark.skipif(
    not have("romanjax.l1._simulate"), reason="simulate_l1 not written yet"
)

MA4 = romanjax.ReadPattern.from_ma_table(4)


def make_ramps(rng, pattern, pixels, dtype, read_noise=10.0):
    """Noisy linear ramps [e] with fluxes 0..500 e/s; float64 draws cast to ``dtype``."""
    flux = rng.uniform(0, 500, pixels)
    tbar = pattern.tbar.reshape((-1,) + (1,) * len(pixels))
    noise = rng.normal(0, read_noise, (pattern.n_resultants,) + tuple(pixels))
    return (100.0 + flux * tbar + noise / np.sqrt(pattern.n_reads.reshape(tbar.shape))).astype(
        dtype
    )


def assert_fits_equal(direct, chunked):
    """Every field equal, numpy arrays of the same dtype and shape: integer fields (dq) bit
    for bit, floats to 4 ulp. Why not bit for bit: XLA's CPU code generation depends on the
    array length (vectorised body vs remainder, FMA contraction), and the likelihood fitter's
    jump queue is sized by the number of pixels, so a chunk can round its last bit
    differently from the whole frame (seen: 1 ulp in float64)."""
    assert type(chunked) is type(direct)
    if isinstance(direct, RampFit):
        assert chunked.n_resultants == direct.n_resultants
        names = [f.name for f in dataclasses.fields(RampFit) if f.name != "n_resultants"]
    else:
        names = direct._fields
    for name in names:
        want, got = getattr(direct, name), getattr(chunked, name)
        if want is None:
            assert got is None, name
            continue
        assert isinstance(got, np.ndarray), name
        want = np.asarray(want)
        assert got.dtype == want.dtype, name
        assert got.shape == want.shape, name
        if np.issubdtype(want.dtype, np.floating):
            np.testing.assert_array_max_ulp(got, want, maxulp=4)
        else:
            np.testing.assert_array_equal(got, want, err_msg=name)


# ---------------------------------------------------------------------------------------------
# fit_frame with the optimal fitter
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("chunk_pixels", [None, 1, 997, 1024, 2500, 10**6])
def test_fit_frame_equals_direct_optimal(rng, float_dtype, chunk_pixels):
    # 53 x 47 = 2491 pixels: not a multiple of any chunk size above
    resultants = make_ramps(rng, MA4, (53, 47), float_dtype)
    if chunk_pixels == 1:
        resultants = resultants[:, :5, :7]  # one pixel per chunk: keep the loop short
    direct = romanjax.fit_ramps_optimal(resultants, MA4, 10.0)
    chunked = fit_frame(resultants, MA4, 10.0, method="optimal", chunk_pixels=chunk_pixels)
    assert_fits_equal(direct, chunked)
    assert chunked.par.dtype == float_dtype
    assert chunked.dq.dtype == np.uint32


@pytest.mark.parametrize("pixels", [(), (1,), (13,), (3, 4, 5), (0, 4)])
def test_fit_frame_pixel_shapes(rng, float_dtype, pixels):
    pattern = romanjax.ReadPattern(((1, 2), (3,), (5, 6, 7), (9,), (12, 13)))
    resultants = make_ramps(rng, pattern, pixels, float_dtype)
    direct = romanjax.fit_ramps_optimal(resultants, pattern, 7.0)
    chunked = fit_frame(resultants, pattern, 7.0, method="optimal", chunk_pixels=6)
    assert_fits_equal(direct, chunked)


def test_fit_frame_per_pixel_inputs_and_layouts(rng, float_dtype):
    resultants = make_ramps(rng, MA4, (31, 29), float_dtype)
    read_noise = rng.uniform(5, 20, (31, 29)).astype(float_dtype)
    flux_estimate = rng.uniform(0, 500, (31, 1)).astype(float_dtype)  # broadcasts over columns
    direct = romanjax.fit_ramps_optimal(
        resultants, MA4, read_noise, flux_estimate=flux_estimate
    )
    for data in (resultants, np.asfortranarray(resultants), resultants[:, ::1, :]):
        chunked = fit_frame(
            data, MA4, read_noise, method="optimal", chunk_pixels=100, flux_estimate=flux_estimate
        )
        assert_fits_equal(direct, chunked)
    # a transposed (non-contiguous) view of the pixels is cut into slabs, not copied whole
    transposed = np.ascontiguousarray(np.swapaxes(resultants, 1, 2))
    view = np.swapaxes(transposed, 1, 2)
    assert not view.flags.c_contiguous
    assert_fits_equal(direct, fit_frame(view, MA4, read_noise, method="optimal",
                                        chunk_pixels=77, flux_estimate=flux_estimate))  # fmt: skip


def test_fit_frame_memmap(rng, tmp_path):
    resultants = make_ramps(rng, MA4, (40, 40), np.float32)
    np.save(tmp_path / "ramps.npy", resultants)
    mapped = np.load(tmp_path / "ramps.npy", mmap_mode="r")
    direct = romanjax.fit_ramps_optimal(resultants, MA4, 10.0)
    assert_fits_equal(direct, fit_frame(mapped, MA4, 10.0, method="optimal", chunk_pixels=300))


def test_fit_frame_one_compilation(rng):
    """The last chunk is padded to the chunk size: one trace of the fitter per frame."""
    traces = []

    @jax.jit
    def traced(resultants, read_noise):
        traces.append(resultants.shape)
        return romanjax.fit_ramps_optimal(resultants, MA4, read_noise)

    def fitter(resultants, pattern, read_noise):
        return traced(resultants, read_noise)

    resultants = make_ramps(rng, MA4, (1000,), np.float32)
    fit = fit_frame(resultants, MA4, 10.0, method=fitter, chunk_pixels=300)  # 4 chunks, last 100
    assert traces == [(9, 300)]
    assert fit.par.shape == (1000, 2)


def fake_fitter(resultants, pattern, read_noise, *, dq=None, flag_above=np.inf):
    """A stand-in fitter: 'slope' = last resultant, a jump where value > flag_above or where
    the input dq is non-zero, unfitted where the first resultant is negative."""
    resultants = jnp.asarray(resultants)
    jumps = resultants > flag_above
    if dq is not None:
        jumps = jumps | (jnp.asarray(dq) != 0)
    pixels = resultants.shape[1:]
    noise = jnp.broadcast_to(jnp.asarray(read_noise, resultants.dtype), pixels)
    return RampFit(
        slope=resultants[-1] * read_noise, var_read=noise, var_poisson=2 * noise,
        var_total=3 * noise, flags=pack_flags(jumps, resultants[0] < 0),
        pedestal=resultants[0], var_pedestal=jnp.stack([noise] * 3),
        cov_pedestal_slope=jnp.stack([noise] * 3), chisq=resultants.sum(axis=0),
        n_resultants=resultants.shape[0],
    )  # fmt: skip


def test_fit_frame_forwards_dq_and_per_pixel_kwargs(rng):
    resultants = make_ramps(rng, MA4, (17, 19), np.float32)
    dq = np.zeros(resultants.shape, np.uint32)
    dq[3, 5:9, 2] = dqflags.SATURATED
    read_noise = rng.uniform(1, 2, (17, 19)).astype(np.float32)
    threshold = np.quantile(resultants[-1], 0.9)
    direct = fake_fitter(resultants, MA4, read_noise, dq=dq, flag_above=threshold)
    chunked = fit_frame(resultants, MA4, read_noise, method=fake_fitter, dq=dq,
                        chunk_pixels=50, flag_above=threshold)  # fmt: skip
    assert_fits_equal(direct, chunked)
    assert np.all(chunked.jump_map[3, 5:9, 2])  # the forwarded input dq
    assert chunked.jump_map.sum() > 4  # and the per-pixel keyword's threshold
    # dq broadcasting against the resultants (a per-resultant flag): no full-size copy needed
    per_resultant = np.array([0, 0, 1, 0, 0, 0, 0, 0, 0], np.uint32)[:, None, None]
    chunked = fit_frame(resultants, MA4, 1.0, method=fake_fitter, dq=per_resultant,
                        chunk_pixels=64)  # fmt: skip
    assert np.all(chunked.jump_map[2]) and not chunked.jump_map[[0, 1, 3]].any()


def test_fit_frame_errors(rng):
    resultants = make_ramps(rng, MA4, (4, 4), np.float32)
    with pytest.raises(ValueError, match="`method`"):
        fit_frame(resultants, MA4, 10.0, method="ols")
    with pytest.raises(ValueError, match="`chunk_pixels`"):
        fit_frame(resultants, MA4, 10.0, method="optimal", chunk_pixels=0)
    with pytest.raises(ValueError, match="`chunk_pixels`"):
        fit_frame(resultants, MA4, 10.0, method="optimal", chunk_pixels=2.5)
    with pytest.raises(ValueError, match="`resultants`"):
        fit_frame(resultants[:5], MA4, 10.0, method="optimal")
    with pytest.raises(ValueError, match="`dq`"):
        fit_frame(resultants, MA4, 10.0, method=fake_fitter, dq=np.zeros((9, 3), np.uint32))
    with pytest.raises(ValueError, match="`read_noise`"):
        fit_frame(resultants, MA4, np.ones(5), method="optimal")
    with pytest.raises(ValueError, match="`flux_estimate`"):
        fit_frame(resultants, MA4, 10.0, method="optimal", flux_estimate=np.ones((4, 3)))
    with pytest.raises(TypeError, match="`pattern`"):
        fit_frame(resultants, MA4.reads, 10.0, method="optimal")
    with pytest.raises(TypeError, match="`mesh`"):
        fit_frame(resultants, MA4, 10.0, method="optimal", mesh=jax.devices())


def test_fit_frame_progress_bar(rng, capsys):
    resultants = make_ramps(rng, MA4, (30, 30), np.float32)
    fit_frame(resultants, MA4, 10.0, method="optimal", chunk_pixels=300, progress=True)
    err = capsys.readouterr().err
    assert "fit_frame[optimal]" in err
    assert "100%" in err and "900/900" in err
    fit_frame(resultants, MA4, 10.0, method="optimal", chunk_pixels=300)
    assert capsys.readouterr().err == ""


def test_fit_frame_given_mesh(rng):
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("p",))
    resultants = make_ramps(rng, MA4, (10, 11), np.float32)
    direct = romanjax.fit_ramps_optimal(resultants, MA4, 10.0)
    assert_fits_equal(direct, fit_frame(resultants, MA4, 10.0, method="optimal", mesh=mesh,
                                        chunk_pixels=32))  # fmt: skip


def test_default_chunk_pixels():
    devices = jax.local_devices()
    unit = 1024 * len(devices)
    few, many = default_chunk_pixels(3), default_chunk_pixels(30)
    assert few % unit == 0 and many % unit == 0
    assert few > many >= unit
    assert default_chunk_pixels(9, 8) <= default_chunk_pixels(9, 4)
    assert default_chunk_pixels(10**9) == unit  # never zero


@pytest.mark.parametrize("n_pixels", [1, 1000, 1024, 1025, 232448, 232449, 1 << 20, 4088 * 4088])
@pytest.mark.parametrize("unit", [1024, 4096])
def test_balanced_chunks_cover_the_frame_with_little_padding(n_pixels, unit):
    largest = 227 * unit  # default_chunk_pixels: a multiple of the unit (232448 for 1024)
    chunk = balanced_chunk_pixels(n_pixels, largest, unit)
    count = -(-n_pixels // chunk)
    assert chunk % unit == 0 and chunk <= largest
    assert count == max(1, -(-n_pixels // largest))  # no more chunks than the largest allow
    assert count * chunk - n_pixels < count * unit  # padding: under one unit per chunk
    # 5 chunks of ceil(2**20 / 5) = 209716 rounded up to 205 x 1024, not 4.5 chunks + padding
    assert balanced_chunk_pixels(1 << 20, 232448, 1024) == 205 * 1024


# ---------------------------------------------------------------------------------------------
# the other fitters (run once their modules exist)
# ---------------------------------------------------------------------------------------------


def flagged_inputs(rng, dtype):
    resultants = make_ramps(rng, MA4, (37, 41), dtype)
    dq = np.zeros(resultants.shape, np.uint32)
    dq[4:, :3, :] = dqflags.SATURATED
    # a few cosmic-ray jumps for the jump detectors
    hit = rng.random((37, 41)) < 0.05
    resultants[5:, hit] += dtype(3000.0)
    return resultants, dq


@needs_casertano
@pytest.mark.parametrize("detect_jumps", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_fit_frame_equals_direct_casertano(rng, float_dtype, detect_jumps):
    resultants, dq = flagged_inputs(rng, float_dtype)
    direct = romanjax.fit_ramps_casertano(resultants, MA4, 10.0, dq=dq, detect_jumps=detect_jumps)
    chunked = fit_frame(resultants, MA4, 10.0, method="casertano", dq=dq, chunk_pixels=500,
                        detect_jumps=detect_jumps)  # fmt: skip
    assert_fits_equal(direct, chunked)
    assert np.any(chunked.resultant_dq(dq) & dqflags.SATURATED)
    assert np.all(chunked.unfitted[:3, :] == direct.unfitted[:3, :])
    if detect_jumps:
        assert np.any(chunked.dq & dqflags.JUMP_DET)  # the injected jumps were found
    else:  # the default method is casertano (same compiled chunk function: no new compile)
        assert_fits_equal(direct, fit_frame(resultants, MA4, 10.0, dq=dq, chunk_pixels=500))


@needs_casertano
def test_fit_frame_equals_direct_casertano_without_dq(rng, float_dtype):
    # no input dq, no jumps: the chunk fitter returns dq=None and fit_frame fills zeros
    resultants = make_ramps(rng, MA4, (29, 31), float_dtype)
    direct = romanjax.fit_ramps_casertano(resultants, MA4, 10.0)
    chunked = fit_frame(resultants, MA4, 10.0, method="casertano", chunk_pixels=300)
    assert_fits_equal(direct, chunked)
    assert chunked.dq.dtype == np.uint32 and not chunked.dq.any()


@pytest.mark.users_codegen
@needs_casertano
@pytest.mark.parametrize("chunk_pixels", [7, 3000, None])
def test_fit_frame_packed_jump_flags_equal_direct(chunk_pixels):
    # jumps without input dq come back from each chunk as a list of flagged pixels: ramps of
    # 1e4 e steps in random resultants give jumps everywhere and, where the flagged
    # resultants leave no sub-ramp of two, pixels with DO_NOT_USE in every resultant; chunk
    # sizes that do not divide the 20000 pixels put candidates in the padding
    rng = np.random.default_rng(1)
    steps = rng.choice([0.0, 1e4], size=(MA4.n_resultants, 20000))
    resultants = (np.cumsum(steps, axis=0) + rng.normal(0, 3, steps.shape)).astype(np.float32)
    direct = romanjax.fit_ramps_casertano(resultants, MA4, 10.0, detect_jumps=True)
    chunked = fit_frame(resultants, MA4, 10.0, method="casertano", detect_jumps=True,
                        chunk_pixels=chunk_pixels)  # fmt: skip
    assert_fits_equal(direct, chunked)
    unfitted = np.all(chunked.dq & dqflags.DO_NOT_USE, axis=0)
    assert 0.01 < unfitted.mean() < 0.5 and np.any(chunked.dq & dqflags.JUMP_DET)


@pytest.mark.users_codegen
@needs_casertano
def test_large_frame_memory_measures_keep_results(monkeypatch):
    # the measure fit_frame takes for large frames on CPUs (the C heap trimmed after the
    # first chunk) must not change results: force it on a small one
    from romanjax.host import frames

    monkeypatch.setattr(frames, "LARGE_FRAME_BYTES", 0)
    rng = np.random.default_rng(5)
    steps = rng.choice([0.0, 3e3], size=(MA4.n_resultants, 5000), p=[0.9, 0.1])
    resultants = (np.cumsum(steps, axis=0) + rng.normal(0, 3, steps.shape)).astype(np.float32)
    direct = romanjax.fit_ramps_casertano(resultants, MA4, 10.0, detect_jumps=True)
    chunked = fit_frame(resultants, MA4, 10.0, detect_jumps=True, chunk_pixels=1024)
    assert_fits_equal(direct, chunked)
    assert np.any(chunked.dq & dqflags.JUMP_DET)


def test_optimal_fit_frame_rows_equal_a_direct_call(rng):
    ramps = make_ramps(rng, MA4, (37, 41), np.float32)
    read_noise = rng.uniform(5, 15, (37, 41)).astype(np.float32)
    direct = romanjax.fit_ramps_optimal(ramps, MA4, read_noise)
    fit = fit_frame(ramps, MA4, read_noise, method="optimal", chunk_pixels=500)
    for leaf in jax.tree_util.tree_leaves(fit):  # ordinary arrays, pixels last
        assert isinstance(leaf, np.ndarray) and leaf.flags.c_contiguous
        assert leaf.shape[-2:] == (37, 41)
    assert_fits_equal(direct, fit)  # the total may round its last bit differently
    np.testing.assert_array_equal(fit.par, np.asarray(direct.par))
    np.testing.assert_array_equal(fit.var[..., 0, 1], fit.var[..., 1, 0])


@pytest.mark.parametrize("method", [pytest.param("casertano", marks=needs_casertano),
                                    pytest.param("likely", marks=needs_likely)])
def test_slope_only_fits_store_no_pedestal(method):
    # Casertano and likelihood fits do not estimate the pedestal: fit_frame returns the slope
    # and its three variances as C-contiguous [*pixels] arrays and no pedestal arrays at all;
    # par and var show the zero pedestal entries
    rng = np.random.default_rng(3)
    shape = (64, 96)
    resultants = make_ramps(rng, MA4, shape, np.float32)
    chunked = fit_frame(resultants, MA4, 10.0, method=method, detect_jumps=False,
                        chunk_pixels=2048)  # fmt: skip
    assert chunked.pedestal is None and chunked.var_pedestal is None
    for leaf in jax.tree_util.tree_leaves(chunked):
        assert leaf.flags.c_contiguous and leaf.shape[-2:] == shape
    var, par = chunked.var, chunked.par
    assert var.shape == shape + (3, 2, 2) and par.shape == shape + (2,)
    direct = getattr(romanjax, f"fit_ramps_{method}")(resultants, MA4, 10.0, detect_jumps=False)
    assert_fits_equal(direct, chunked)
    assert not var[..., 0, :].any() and not var[..., 1, 0].any() and not par[..., 0].any()
    np.testing.assert_array_equal(var[..., 2, 1, 1], chunked.var_total)


@needs_casertano
def test_flags_are_none_only_when_zero_by_construction(rng):
    resultants = make_ramps(rng, MA4, (40,), np.float32)
    dq = np.zeros(resultants.shape, np.uint32)
    dq[-1, :3] = dqflags.SATURATED
    assert romanjax.fit_ramps_optimal(resultants, MA4, 10.0).flags is None
    assert romanjax.fit_ramps_casertano(resultants, MA4, 10.0).flags is None
    # ... and dq still reads as zeros of the resultants' shape
    assert romanjax.fit_ramps_optimal(resultants, MA4, 10.0).dq.shape == resultants.shape
    assert not romanjax.fit_ramps_casertano(resultants, MA4, 10.0).dq.any()
    for fit in (romanjax.fit_ramps_optimal(resultants, MA4, 10.0, dq=dq),
                romanjax.fit_ramps_casertano(resultants, MA4, 10.0, dq=dq),
                romanjax.fit_ramps_casertano(resultants, MA4, 10.0, detect_jumps=True)):
        assert fit.flags.shape == (1, 40) and fit.flags.dtype == np.uint32
    # jumps without input dq: packed per pixel, one bit per resultant
    jumped = resultants.copy()
    jumped[4:, :5] += 5e3
    fit = romanjax.fit_ramps_casertano(jumped, MA4, 10.0, detect_jumps=True)
    flags = np.asarray(fit.flags)[0]
    assert np.all(flags[:5] & (1 << 4))  # resultant 4 of each jumped pixel ...
    jump_map = np.asarray(fit.jump_map)
    assert np.all(jump_map[4, :5]) and jump_map.dtype == bool
    np.testing.assert_array_equal(  # ... expands to JUMP_DET in dq
        np.asarray(fit.dq), np.where(jump_map, dqflags.JUMP_DET, 0).astype(np.uint32)
    )
    assert not np.any(flags & (1 << MA4.n_resultants))  # every pixel fitted
    one = romanjax.ReadPattern(((1, 2),))  # one resultant: no slope, DO_NOT_USE everywhere
    fit = romanjax.fit_ramps_casertano(resultants[:1], one, 10.0)
    assert np.all(np.asarray(fit.unfitted)) and np.all(np.asarray(fit.dq) & dqflags.DO_NOT_USE)
    np.testing.assert_array_equal(np.asarray(fit.pixel_dq), dqflags.DO_NOT_USE)


@needs_likely
@pytest.mark.parametrize("detect_jumps", [False, True])
def test_fit_frame_equals_direct_likely(rng, float_dtype, detect_jumps):
    resultants, dq = flagged_inputs(rng, float_dtype)
    direct = romanjax.fit_ramps_likely(resultants, MA4, 10.0, dq=dq, detect_jumps=detect_jumps)
    chunked = fit_frame(resultants, MA4, 10.0, method="likely", dq=dq, chunk_pixels=500,
                        detect_jumps=detect_jumps)  # fmt: skip
    assert_fits_equal(direct, chunked)


@needs_likely
def test_fit_frame_refuses_jump_amplitudes():
    # fit_frame returns one RampFit; the amplitudes come from fit_ramps_likely itself
    resultants = make_ramps(np.random.default_rng(0), MA4, (8,), np.float32)
    with pytest.raises(ValueError, match="return_jump_amplitudes"):
        fit_frame(resultants, MA4, 10.0, method="likely", return_jump_amplitudes=True)


# ---------------------------------------------------------------------------------------------
# the block-keyed simulation driver
# ---------------------------------------------------------------------------------------------


def toy_simulator(key, counts, pattern, *, read_noise=1.0, gain=1.0):
    """Stand-in for simulate_l1: Poisson-ish reads + Gaussian noise, [n, *pixels] outputs."""
    n = pattern.n_resultants
    frac = jnp.asarray(pattern.tbar / pattern.exposure_time, jnp.float32)
    k_counts, k_noise = jax.random.split(key)
    shape = (n,) + counts.shape
    thin = jax.random.binomial(k_counts, counts.astype(jnp.float32), frac.reshape((n,) + (1,) *
                               counts.ndim), shape=shape)  # fmt: skip
    noisy = thin / gain + read_noise * jax.random.normal(k_noise, shape)
    flags = jnp.where(noisy > 50, jnp.uint32(dqflags.SATURATED), jnp.uint32(0))
    return {"resultants": noisy, "dq": flags}


def simulate_toy(key, counts, **kwargs):
    return _simulate_frame(toy_simulator, "simulate_frame", key, counts, MA4,
                           chunk_pixels=kwargs.pop("chunk_pixels", None), mesh=None,
                           progress=kwargs.pop("progress", False),
                           rng_block=kwargs.pop("rng_block", 64), kwargs=kwargs,
                           workers=kwargs.pop("workers", None))  # fmt: skip


def test_simulate_driver_independent_of_chunking(rng):
    counts = rng.integers(0, 100, (23, 29))  # rng_block 64 -> blocks of 2 rows, the last 1 row
    key = jax.random.key(3)
    read_noise = rng.uniform(0.5, 2, (23, 29)).astype(np.float32)
    runs = [simulate_toy(key, counts, chunk_pixels=c, read_noise=read_noise, gain=2.0)
            for c in (None, 1, 300)]  # fmt: skip
    for run in runs[1:]:
        for name in ("resultants", "dq"):
            assert isinstance(run[name], np.ndarray)
            assert run[name].shape == (9, 23, 29)
            np.testing.assert_array_equal(run[name], runs[0][name])
    # the definition: block b = rows 2b, 2b + 1 with key fold_in(key, b); the last one padded
    for b in (0, 5, 11):
        block = np.zeros((2, 29), counts.dtype)
        noise = np.full((2, 29), read_noise[-1, -1])
        part = counts[2 * b : 2 * b + 2]
        block[: len(part)] = part
        noise[: len(part)] = read_noise[2 * b : 2 * b + 2]
        want = toy_simulator(jax.random.fold_in(key, b), jnp.asarray(block), MA4,
                             read_noise=jnp.asarray(noise), gain=2.0)  # fmt: skip
        got = runs[0]["resultants"][:, 2 * b : 2 * b + len(part)]
        # same random numbers; the float arithmetic may differ in the last bit between a
        # vmapped-jitted and an eager call
        np.testing.assert_allclose(got, np.asarray(want["resultants"])[:, : len(part)],
                                   rtol=1e-6, atol=1e-5)  # fmt: skip
    # 1-D counts: runs of rng_block pixels
    flat = simulate_toy(key, counts.reshape(-1), chunk_pixels=200, gain=2.0)
    want = toy_simulator(jax.random.fold_in(key, 3), jnp.asarray(counts.reshape(-1)[192:256]),
                         MA4, gain=2.0)  # fmt: skip
    np.testing.assert_allclose(flat["resultants"][:, 192:256], np.asarray(want["resultants"]),
                               rtol=1e-6, atol=1e-5)  # fmt: skip
    # a different key gives different numbers
    other = simulate_toy(jax.random.key(4), counts, read_noise=read_noise, gain=2.0)
    assert not np.array_equal(other["resultants"], runs[0]["resultants"])


def test_simulate_driver_errors_and_progress(rng, capsys):
    counts = rng.integers(0, 100, (8, 8))
    with pytest.raises(ValueError, match="`ipc`"):
        simulate_toy(jax.random.key(0), counts, ipc=np.ones((3, 3)))
    with pytest.raises(ValueError, match="`rng_block`"):
        simulate_toy(jax.random.key(0), counts, rng_block=0)
    with pytest.raises(ValueError, match="`read_noise`"):
        simulate_toy(jax.random.key(0), counts, read_noise=np.ones(3))
    simulate_toy(jax.random.key(0), counts, progress=True, chunk_pixels=16)
    err = capsys.readouterr().err
    assert "simulate_frame" in err and "100%" in err


def test_simulate_driver_independent_of_workers(rng, capsys):
    counts = rng.integers(0, 100, (23, 29))
    key = jax.random.key(3)
    want = simulate_toy(key, counts, chunk_pixels=64, gain=2.0, workers=1)
    for workers, chunk in ((2, 64), (3, 64), (2, 1), (4, 300), (None, 64)):
        got = simulate_toy(key, counts, chunk_pixels=chunk, gain=2.0, workers=workers)
        for name in ("resultants", "dq"):
            np.testing.assert_array_equal(got[name], want[name])
    simulate_toy(key, counts, chunk_pixels=64, gain=2.0, workers=2, progress=True)
    err = capsys.readouterr().err
    assert "simulate_frame" in err and "100%" in err
    for bad in (0, -1, 1.5, "2", True):
        with pytest.raises(ValueError, match="`workers`"):
            simulate_toy(key, counts, workers=bad)


def test_simulate_driver_runs_chunks_at_once(rng, monkeypatch):
    """With ``workers=2``, after the first chunk (which compiles, alone) two chunks run at
    the same time: each waits at a two-party barrier for the other (run one after the
    other, the first one times out)."""
    import threading

    from romanjax.host import frames

    barrier = threading.Barrier(2, timeout=20)
    threads = set()
    real = frames._block_simulator

    def meeting_block_simulator(*args):
        run = real(*args)

        def run_and_meet(*operands):
            out = jax.block_until_ready(run(*operands))
            if int(operands[1][0]) != 0:  # not the first chunk
                threads.add(threading.current_thread().name)
                barrier.wait()
            return out

        return run_and_meet

    monkeypatch.setattr(frames, "_block_simulator", meeting_block_simulator)
    counts = rng.integers(0, 100, (12, 16))  # 192 pixels: three chunks of 64 (4 rows)
    got = simulate_toy(jax.random.key(3), counts, chunk_pixels=64, gain=2.0, workers=2)
    assert len(threads) == 2 and all(name.startswith("romanjax-chunk") for name in threads)
    monkeypatch.setattr(frames, "_block_simulator", real)
    want = simulate_toy(jax.random.key(3), counts, chunk_pixels=64, gain=2.0, workers=1)
    np.testing.assert_array_equal(got["resultants"], want["resultants"])


def test_simulation_workers_default():
    from romanjax._platform import usable_cores as _usable_cores
    from romanjax.host.frames import _simulation_workers

    class Device:
        def __init__(self, platform):
            self.platform = platform

    class Mesh:
        def __init__(self, *platforms):
            self.devices = np.array([Device(p) for p in platforms], dtype=object)

    assert _usable_cores() >= 1
    assert _simulation_workers(None, Mesh("cpu", "cpu"), "f") == _usable_cores()
    assert _simulation_workers(None, Mesh("gpu"), "f") == 1
    assert _simulation_workers(3, Mesh("gpu"), "f") == 3
    assert _simulation_workers(np.int64(2), Mesh("cpu"), "f") == 2


@needs_apportion
def test_apportion_frame_chunking(rng):
    """Draws keyed by each pixel's index in the frame: every chunking, worker count and
    device placement gives exactly one apportion_counts call on the whole frame."""
    counts = rng.integers(0, 5000, (37, 53))
    key = jax.random.key(11)
    whole = np.asarray(romanjax.apportion_counts(key, counts, MA4))
    a = apportion_frame(key, counts, MA4, chunk_pixels=300)
    assert isinstance(a, np.ndarray) and a.shape == (9,) + counts.shape
    np.testing.assert_array_equal(a, whole)
    # the last resultant holds every count (the last read is the last resultant's only read)
    np.testing.assert_allclose(a[-1], counts)
    assert np.all(np.diff(a, axis=0) >= 0)
    for chunk, workers in ((5000, None), (301, 1), (1024, 3), (1, 2)):
        np.testing.assert_array_equal(
            apportion_frame(key, counts[:3] if chunk == 1 else counts, MA4, chunk_pixels=chunk,
                            workers=workers), whole[:, :3] if chunk == 1 else whole)
    # device arrays in: a device array out, the same draws
    on_device = apportion_frame(key, jnp.asarray(counts), MA4, chunk_pixels=700)
    assert isinstance(on_device, jax.Array)
    np.testing.assert_array_equal(np.asarray(on_device), whole)
    # a different key, different draws; the deprecated rng_block changes nothing
    assert not np.array_equal(apportion_frame(jax.random.key(12), counts, MA4), whole)
    with pytest.warns(FutureWarning, match="rng_block"):
        np.testing.assert_array_equal(apportion_frame(key, counts, MA4, rng_block=265), whole)
    with pytest.raises(ValueError, match="`counts`"):
        apportion_frame(key, -counts, MA4)
    assert apportion_frame(key, counts[:0], MA4).shape == (9, 0, 53)


@needs_apportion
def test_apportion_counts_of_a_large_host_frame_runs_through_the_frame_driver(rng, monkeypatch):
    """On CPUs a numpy frame larger than one kernel chunk is apportioned by apportion_frame
    (one chunk per core): the same draws as the one-pass program, as a device array."""
    from romanjax import _platform
    from romanjax.host import frames

    counts = rng.integers(0, 3000, (600, 600))
    key = jax.random.key(2)
    assert _platform.apportions_through_frames(key, counts, MA4.n_resultants)
    assert not _platform.apportions_through_frames(key, jnp.asarray(counts), MA4.n_resultants)
    calls = []
    original = frames.apportion_frame
    monkeypatch.setattr(frames, "apportion_frame",
                        lambda *a, **k: calls.append(1) or original(*a, **k))
    routed = romanjax.apportion_counts(key, counts, MA4)
    assert calls and isinstance(routed, jax.Array)
    one_pass = romanjax.apportion_counts(key, jnp.asarray(counts), MA4)
    np.testing.assert_array_equal(np.asarray(routed), np.asarray(one_pass))


@needs_simulate
@pytest.mark.slow
def test_simulate_frame_chunking(rng):
    """Any chunk size and block size: simulate_l1 on the whole frame, cosmic rays included
    (tracks cross block edges unbroken)."""
    counts = rng.integers(0, 5000, (37, 53))
    key = jax.random.key(12)
    # ~60 tracks per read on 37 x 53 pixels, of up to 20 pixels each (sampled at 81 points
    # instead of the default's 801, which the chunking does not need)
    cosmic_rays = {"flux": 2000.0, "max_cr_len": 200.0}
    whole = romanjax.simulate_l1(key, counts, MA4, cosmic_rays=cosmic_rays)
    hit = np.any(np.asarray(whole.dq) & dqflags.JUMP_DET, axis=0)
    assert hit.mean() > 0.05 and np.any(hit[4] & hit[5])  # tracks across rows 4 | 5
    for chunk, block in ((300, 265), (5000, 265), (None, 106), (700, 10_000)):
        a = simulate_frame(key, counts, MA4, chunk_pixels=chunk, rng_block=block,
                           cosmic_rays=cosmic_rays)  # fmt: skip
        assert type(a).__name__ == "L1"
        for name in ("resultants", "dq"):
            assert isinstance(getattr(a, name), np.ndarray)
            assert getattr(a, name).shape == (9,) + counts.shape
            np.testing.assert_array_equal(getattr(a, name), np.asarray(getattr(whole, name)))


@needs_simulate
def test_simulate_frame_persistence(rng):
    """The state is cut into the frame's blocks: results and new state do not depend on the
    chunk size, and are simulate_l1's on the whole frame with the whole state."""
    from romanjax.l1._persistence import PersistenceState, update_persistence

    dtype = np.float64 if jax.config.jax_enable_x64 else np.float32
    shape = (23, 19)  # rng_block 95: blocks of 5 rows, the last one of 3
    counts = rng.integers(0, 3000, shape).astype(dtype)
    state = update_persistence(PersistenceState.empty(shape, n_events=2, dtype=dtype),
                               rng.uniform(0, 5e5, shape).astype(dtype), 0.0)  # fmt: skip
    key = jax.random.key(13)
    kwargs = dict(rng_block=95, persistence=state, start_time=45.0, workers=1)
    runs = [simulate_frame(key, counts, MA4, chunk_pixels=c, **kwargs) for c in (95, 400, None)]
    for l1, new in runs:
        assert isinstance(l1.resultants, np.ndarray) and isinstance(new.fluence, np.ndarray)
        assert l1.resultants.shape == (9,) + shape and new.fluence.shape == (2,) + shape
        for a, b in ((l1.resultants, runs[0][0].resultants), (l1.dq, runs[0][0].dq),
                     (new.fluence, runs[0][1].fluence), (new.time, runs[0][1].time)):
            np.testing.assert_array_equal(a, b)
    # the definition: simulate_l1 on the whole frame with the whole state
    l1, new = runs[0]
    want, want_state = romanjax.simulate_l1(key, counts, MA4, persistence=state, start_time=45.0)
    np.testing.assert_array_equal(l1.resultants, np.asarray(want.resultants))
    np.testing.assert_array_equal(l1.dq, np.asarray(want.dq))
    np.testing.assert_allclose(new.fluence, np.asarray(want_state.fluence), rtol=1e-6)
    np.testing.assert_array_equal(new.time, np.asarray(want_state.time))
    assert np.any(new.time == 45.0 + MA4.exposure_time)  # new events
    plain = simulate_frame(key, counts, MA4, chunk_pixels=95, rng_block=95, workers=1)
    assert np.all(l1.resultants >= plain.resultants) and np.any(l1.resultants > plain.resultants)
    with pytest.raises(ValueError, match="simulate_frame: `persistence` holds arrays"):
        simulate_frame(key, counts[:5], MA4, persistence=state, start_time=0.0)
    with pytest.raises(TypeError, match="simulate_frame: `persistence` must be a Persistence"):
        simulate_frame(key, counts, MA4, persistence=tuple(state), start_time=0.0)


# ---------------------------------------------------------------------------------------------
# several devices (the device count is fixed when JAX starts: a subprocess)
# ---------------------------------------------------------------------------------------------

SHARDED_SCRIPT = textwrap.dedent(
    """
    import sys
    import jax, numpy as np
    sys.path[:0] = [{tests!r}, {root!r}]
    import test_batch as t
    import romanjax
    from romanjax.host.frames import fit_frame
    assert jax.device_count() == 4, jax.devices()
    rng = np.random.default_rng(5)
    dtype = np.float64 if jax.config.jax_enable_x64 else np.float32
    ramps = t.make_ramps(rng, t.MA4, (61, 43), dtype)  # 2623 pixels: odd
    read_noise = rng.uniform(5, 15, (61, 43)).astype(dtype)
    direct = romanjax.fit_ramps_optimal(ramps, t.MA4, read_noise)
    for chunk in (None, 1, 7, 1000, 2623, 4096):
        data = ramps[:, :3, :5] if chunk == 1 else ramps
        noise = read_noise[:3, :5] if chunk == 1 else read_noise
        want = direct if chunk != 1 else romanjax.fit_ramps_optimal(data, t.MA4, noise)
        t.assert_fits_equal(want, fit_frame(data, t.MA4, noise, method="optimal",
                                            chunk_pixels=chunk))
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:2]), ("p",))
    t.assert_fits_equal(direct, fit_frame(ramps, t.MA4, read_noise, method="optimal",
                                          chunk_pixels=999, mesh=mesh))
    mesh2d = jax.sharding.Mesh(np.array(jax.devices()).reshape(2, 2), ("a", "b"))
    t.assert_fits_equal(direct, fit_frame(ramps, t.MA4, read_noise, method="optimal",
                                          chunk_pixels=999, mesh=mesh2d))
    # the output of a chunk really is spread over the 4 devices
    sharded = romanjax.fit_ramps_optimal(
        jax.device_put(ramps.reshape(9, -1)[:, :2620], jax.sharding.NamedSharding(
            jax.sharding.Mesh(np.array(jax.devices()), ("p",)),
            jax.sharding.PartitionSpec(None, "p"))), t.MA4, 10.0)
    assert len(sharded.par.sharding.device_set) == 4
    # the block-keyed driver (a simulator that does not take its place in the frame) does
    # not depend on the number of devices
    counts = rng.integers(0, 100, (23, 29))
    one = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("p",))
    from romanjax.host.frames import _simulate_frame
    runs = [_simulate_frame(t.toy_simulator, "simulate_frame", jax.random.key(3), counts, t.MA4,
                            chunk_pixels=c, mesh=m, progress=False, rng_block=64,
                            kwargs={{"gain": 2.0}})
            for c, m in ((64, one), (64, None), (1000, None), (None, None))]
    for run in runs[1:]:
        np.testing.assert_array_equal(run["resultants"], runs[0]["resultants"])
        np.testing.assert_array_equal(run["dq"], runs[0]["dq"])
    # a persistence state is cut into the same blocks on one device or four
    from romanjax.l1._persistence import PersistenceState, update_persistence
    counts = rng.integers(0, 3000, (23, 19)).astype(dtype)
    state = update_persistence(PersistenceState.empty(counts.shape, n_events=2, dtype=dtype),
                               rng.uniform(0, 5e5, counts.shape).astype(dtype), 0.0)
    # (and with cosmic rays, on any devices: the whole frame's simulate_l1; tracks of up to
    # 20 pixels, 81 points each instead of the default's 801)
    cosmic_rays = {{"flux": 2000.0, "max_cr_len": 200.0}}
    runs = [romanjax.simulate_frame(jax.random.key(5), counts, t.MA4, chunk_pixels=c, mesh=m,
                                    rng_block=95, persistence=state, start_time=45.0,
                                    cosmic_rays=cosmic_rays)
            for c, m in ((95, one), (400, None))]
    whole = romanjax.simulate_l1(jax.random.key(5), counts, t.MA4, persistence=state,
                                 start_time=45.0, cosmic_rays=cosmic_rays)
    assert np.any(np.asarray(whole[0].dq) & 4)
    for run in runs:
        for a, b in zip(jax.tree_util.tree_leaves(run[0]), jax.tree_util.tree_leaves(whole[0])):
            np.testing.assert_array_equal(a, np.asarray(b))
        np.testing.assert_array_equal(run[1].time, runs[0][1].time)
        np.testing.assert_array_equal(run[1].fluence, runs[0][1].fluence)
    # pixel-keyed apportionment: one device, four, a 2-D mesh, any chunk: the same draws
    counts = rng.integers(0, 3000, (61, 43))
    whole = np.asarray(romanjax.apportion_counts(jax.random.key(4), counts, t.MA4))
    for c, m in ((None, None), (1000, None), (999, mesh), (333, mesh2d), (2623, one)):
        np.testing.assert_array_equal(
            romanjax.apportion_frame(jax.random.key(4), counts, t.MA4, chunk_pixels=c, mesh=m),
            whole)
    print("SHARDED-OK")
    """
)


@pytest.mark.single_pass  # the sharding mechanics do not depend on the float dtype
def test_fit_frame_sharded_over_four_cpu_devices(tmp_path):
    script = tmp_path / "sharded.py"
    here = os.path.dirname(os.path.abspath(__file__))
    script.write_text(SHARDED_SCRIPT.format(tests=here, root=os.path.dirname(here)))
    env = dict(os.environ)
    env["XLA_FLAGS"] = (
        env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
    ).strip()
    env["JAX_PLATFORMS"] = "cpu"
    result = subprocess.run(
        [sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SHARDED-OK" in result.stdout


@pytest.mark.users_codegen
@needs_casertano
@pytest.mark.parametrize("method", ["optimal", "casertano", "likely"])
def test_array_api_runs_large_host_frames_through_the_driver(monkeypatch, method):
    # on CPUs a public fitter given a numpy frame larger than one chunk runs it through the
    # frame driver and returns device arrays; the values equal the one-pass fit of the same
    # data given as a device array (which never takes that route)
    from romanjax import _platform
    from romanjax.ramp import _common

    monkeypatch.setattr(_platform, "CPU_CHUNK_BYTES", 9 * 4 * 1024)  # 1024-pixel chunks
    rng = np.random.default_rng(11)
    resultants = make_ramps(rng, MA4, (40, 70), np.float32)
    resultants[5:, 3, :9] += np.float32(3e3)
    fitter = getattr(romanjax, f"fit_ramps_{method}")
    kwargs = {} if method == "optimal" else {"detect_jumps": True}
    calls = []
    real = _common.through_frames
    monkeypatch.setattr(
        _common, "through_frames", lambda *a: calls.append(real(*a)) or calls[-1]
    )
    module = importlib.import_module(fitter.__module__)
    monkeypatch.setattr(module, "through_frames", _common.through_frames)
    routed = fitter(resultants, MA4, 10.0, **kwargs)
    one_pass = fitter(jnp.asarray(resultants), MA4, 10.0, **kwargs)
    assert calls == [True, False]
    for leaf in jax.tree_util.tree_leaves(routed):
        assert isinstance(leaf, jax.Array)
    if method == "optimal":
        # a device array on the whole-ramp path is checked for non-finite values inside the
        # program, so it carries flags (all zero here); the host frame was checked on the host
        assert routed.flags is None and not np.asarray(one_pass.flags).any()
        one_pass = dataclasses.replace(one_pass, flags=None)
    assert_fits_equal(jax.tree_util.tree_map(np.asarray, one_pass),
                      jax.tree_util.tree_map(np.asarray, routed))  # fmt: skip
    if method != "optimal":
        assert np.all(np.asarray(routed.jump_map)[5, 3, :9])


def test_through_frames_only_for_large_untraced_host_frames(monkeypatch):
    from romanjax import _platform
    from romanjax.ramp._common import through_frames

    monkeypatch.setattr(_platform, "CPU_CHUNK_BYTES", 9 * 4 * 1024)
    big = np.zeros((9, 2048), np.float32)
    assert through_frames(big, MA4, 5.0)
    assert not through_frames(big[:, :1024], MA4, 5.0)  # one chunk: one pass
    assert not through_frames(jnp.asarray(big), MA4, 5.0)  # device data stays on the device
    assert not through_frames(big.astype(np.int32), MA4, 5.0)
    assert not through_frames(big[:8], MA4, 5.0)  # wrong shape: the fitter reports it
    assert not through_frames(big, "MA4", 5.0)
    seen = []
    jax.grad(lambda s: seen.append(through_frames(big, MA4, s)) or s)(5.0)
    assert seen == [False]  # a traced argument: the caller's transformation owns the call


def test_aligned_host_arrays_become_device_arrays_without_a_copy():
    from romanjax._platform import HOST_ALIGNMENT, aligned_empty

    array = aligned_empty((3, 1000), np.float32)
    assert array.ctypes.data % HOST_ALIGNMENT == 0 and array.shape == (3, 1000)
    array[...] = 2.5
    np.testing.assert_array_equal(np.asarray(jax.device_put(array)), array)


@needs_likely
def test_kernel_chunks_equal_one_pass(monkeypatch, rng):
    # the likelihood fitter loops over fixed-size pixel windows on CPUs; the last window is
    # moved back to end at the last pixel, and the result equals one pass
    from romanjax import _platform

    resultants, dq = flagged_inputs(rng, np.float32)
    flat = jnp.asarray(resultants.reshape(MA4.n_resultants, -1)[:, :1500])
    flat_dq = jnp.asarray(dq.reshape(MA4.n_resultants, -1)[:, :1500])
    one_pass = romanjax.fit_ramps_likely(flat, MA4, 10.0, dq=flat_dq)
    monkeypatch.setattr(_platform, "CPU_CHUNK_BYTES", 9 * 4 * 1024)  # 2 windows, overlapping
    chunks = []
    real = _platform.kernel_chunk_pixels
    monkeypatch.setattr(_platform, "kernel_chunk_pixels",
                        lambda *a: chunks.append(real(*a)) or chunks[-1])  # fmt: skip
    romanjax.ramp._likely._fit_likely.clear_cache()
    try:
        chunked = romanjax.fit_ramps_likely(flat, MA4, 10.0, dq=flat_dq)
    finally:
        romanjax.ramp._likely._fit_likely.clear_cache()
    assert_fits_equal(jax.tree_util.tree_map(np.asarray, one_pass),
                      jax.tree_util.tree_map(np.asarray, chunked))  # fmt: skip
    assert chunks == [1024]  # traced once, in 1024-pixel windows
    assert np.any(np.asarray(chunked.jump_map))


@needs_casertano
@pytest.mark.parametrize("method", ["optimal", "casertano", "likely"])
def test_fit_frame_keeps_device_arrays_on_the_device(rng, method):
    # device arrays in: the chunks are sliced and joined on the device (a device-to-host
    # copy raises under the transfer guard), and the values equal the numpy path's
    resultants, dq = flagged_inputs(rng, np.float32)
    read_noise = rng.uniform(5, 15, resultants.shape[1:]).astype(np.float32)
    kwargs = {"detect_jumps": True} if method != "optimal" else {}
    on_device = [jnp.asarray(a) for a in (resultants, dq, read_noise)]
    with jax.transfer_guard_device_to_host("disallow"):
        fit = fit_frame(on_device[0], MA4, on_device[2], method=method, dq=on_device[1],
                        chunk_pixels=500, **kwargs)  # fmt: skip
    leaves = jax.tree_util.tree_leaves(fit)
    assert leaves and all(isinstance(leaf, jax.Array) for leaf in leaves)
    host = fit_frame(resultants, MA4, read_noise, method=method, dq=dq, chunk_pixels=500,
                     **kwargs)  # fmt: skip
    assert_fits_equal(host, jax.tree_util.tree_map(np.asarray, fit))


@pytest.mark.parametrize("in_flight", [1, 2, 3])
def test_run_chunks_keeps_chunks_in_flight(in_flight):
    from romanjax.host.frames import _run_chunks

    events = []
    _run_chunks(range(0, 50, 10), lambda start: events.append(("submit", start)) or
                (start, start + 10), lambda job: events.append(("collect", job[0])),
                workers=1, on_host=None, bar=None, in_flight=in_flight)  # fmt: skip
    # every chunk submitted and collected once, in order, and chunk i collected only after
    # chunk i + in_flight - 1 was submitted (while the later ones still run)
    assert [s for kind, s in events if kind == "submit"] == [0, 10, 20, 30, 40]
    assert [s for kind, s in events if kind == "collect"] == [0, 10, 20, 30, 40]
    for i, start in enumerate(range(0, 50, 10)):
        collected = events.index(("collect", start))
        submitted = min(i + in_flight - 1, 4) * 10
        assert events.index(("submit", submitted)) < collected
        if i + in_flight <= 4:
            assert events.index(("submit", (i + in_flight) * 10)) > collected


def test_chunks_in_flight_per_platform():
    from romanjax._platform import chunks_in_flight

    class Device:
        def __init__(self, platform):
            self.platform = platform

    assert chunks_in_flight([Device("cpu")]) == 2
    assert chunks_in_flight([Device("gpu"), Device("gpu")]) == 3


def test_run_chunks_threads_wait_for_the_first_submit():
    """With several workers the first submit (which compiles the program) runs alone; the
    others start only once it has returned, and then run at once."""
    import threading
    import time

    from romanjax.host.frames import _run_chunks

    lock = threading.Lock()
    active, order = [0], []

    def submit(start):
        with lock:
            active[0] += 1
            order.append(("start", start, active[0]))
        time.sleep(0.3 if start == 0 else 0.1)
        with lock:
            order.append(("end", start))
            active[0] -= 1
        return start, start + 10

    collected = []
    _run_chunks(range(0, 60, 10), submit, lambda job: collected.append(job[0]), workers=3,
                on_host=lambda job: job, bar=None)  # fmt: skip
    assert collected == [0, 10, 20, 30, 40, 50]
    first_end = order.index(("end", 0))
    assert order[0][:2] == ("start", 0)
    assert all(entry[0] == "end" or entry[1] == 0 for entry in order[:first_end])
    # after the first, the others overlap
    assert max(entry[2] for entry in order if entry[0] == "start") >= 2


@needs_simulate
def test_simulate_frame_runs_one_block_per_device_and_chunk(rng, monkeypatch):
    """simulate_l1 takes its place in the frame, so a chunk need not be cut into random-number
    blocks: by default each chunk is one simulate_l1 call per device (here one device)."""
    from romanjax.host import frames

    shapes = []
    original = frames._block_simulator

    def spy(simulator, pattern, static_items, pixel_names, block_shape, *args):
        shapes.append(block_shape)
        return original(simulator, pattern, static_items, pixel_names, block_shape, *args)

    monkeypatch.setattr(frames, "_block_simulator", spy)
    counts = rng.integers(0, 100, (40, 30))
    # 320 pixels a chunk: blocks of whole rows, rounded up (11 rows of 30), one per chunk
    out = simulate_frame(jax.random.key(1), counts, MA4, chunk_pixels=320, workers=1)
    assert shapes == [(11, 30)]
    np.testing.assert_array_equal(
        out.resultants, np.asarray(romanjax.simulate_l1(jax.random.key(1), counts, MA4).resultants))
