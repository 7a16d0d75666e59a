"""The accelerators' programs and host paths, run on the CPU: every platform choice forced to
what a GPU or TPU takes, the results compared with the CPU's.

romanjax picks per platform in one module (:mod:`romanjax._platform`): inside the programs
``by_platform`` (the CPU's materialising loops, blocked refits, float64 ``log k!`` table,
64-bit Philox products and nested redraws, or the accelerators' barriers, work queues and
flat loops), on the host ``all_cpu`` and ``kernel_chunk_pixels`` (three chunks in flight
instead of two, one host worker, numpy frames cut for their copies to overlap the fits, one
pass instead of cache-sized chunks: the arrays here are smaller than one such chunk, so both
sides run one pass and compare programs of one shape). The lowering
tests count what the accelerators' programs hold; these run them. Each branch is written to
give the CPU's results: the draws are keyed by pixel and attempt, the fits are the same
arithmetic. The one documented difference is the CPU's float64 ``log k!`` table in the
rejection sampler's first attempts, whose rounding can flip an acceptance test that falls
within it of its boundary; the reference here is the CPU's program without it, so the
draws must agree electron for electron (the simulations' resultants, rounded to whole DN
after the read noise is added in float, to 1 DN), the flags exactly and the fitted values
to a few units of the last place (the programs fuse differently).
"""

from __future__ import annotations

import collections
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import romanjax
from romanjax import _platform

MA4 = romanjax.ReadPattern.from_ma_table(4)
READ_NOISE = 10.0


def _name(function):
    """A branch's name (functions, partials, lambdas)."""
    function = getattr(function, "func", function)
    return getattr(function, "__name__", repr(function))


def _without_table(*operands, cpu, default):
    """The CPU's branches but for the ``log k!`` table (``with_table_on_cpu``'s choice, the
    one whose default is the sampler called with ``table=False``)."""
    if isinstance(default, functools.partial) and default.keywords.get("table") is False:
        return default(*operands)
    return cpu(*operands)


@pytest.fixture
def accelerators(monkeypatch):
    """``force()``: from then on the accelerators' choices, with fresh traces; returns a
    Counter of the in-program branches taken. On teardown the CPU's choices come back and
    the traces made under them are dropped (later tests of the same shapes would otherwise
    reuse them)."""
    taken = collections.Counter()

    def forced(*operands, cpu, default):
        taken[_name(default)] += 1
        return default(*operands)

    def force():
        monkeypatch.setattr(_platform, "by_platform", forced)
        monkeypatch.setattr(_platform, "all_cpu", lambda devices=None: False)
        monkeypatch.setattr(_platform, "kernel_chunk_pixels",
                            lambda n_resultants, itemsize: None)  # fmt: skip
        jax.clear_caches()
        return taken

    yield force
    monkeypatch.undo()
    jax.clear_caches()


def _scene(npix, seed=1):
    """Counts [e] from faint (inversion) to bright (rejection sampler) pixels."""
    rng = np.random.default_rng(seed)
    counts = rng.integers(0, 200_000, npix).astype(np.int32)
    counts[: npix // 5] = rng.integers(0, 50, npix // 5)
    return counts


def _assert_fits_agree(fit, reference):
    """Flags exact; slopes to 1e-4 sigma or a few units of the last place."""
    np.testing.assert_array_equal(np.asarray(fit.flags), np.asarray(reference.flags))
    slope = np.asarray(reference.slope, np.float64)
    eps = np.finfo(np.asarray(reference.slope).dtype).eps
    tol = 1e-4 * np.sqrt(np.abs(np.asarray(reference.var_total, np.float64)))
    tol += 8 * eps * np.abs(slope) + 1e-30
    assert np.all(np.abs(np.asarray(fit.slope, np.float64) - slope) <= tol)
    np.testing.assert_allclose(np.asarray(fit.var_total), np.asarray(reference.var_total),
                               rtol=64 * eps)  # fmt: skip


def _fits(resultants, dq):
    """The fitters as a pipeline calls them, on device arrays."""
    r = jnp.asarray(resultants)
    return {
        "optimal": romanjax.fit_ramps_optimal(r, MA4, READ_NOISE),
        "optimal+dq": romanjax.fit_ramps_optimal(r, MA4, READ_NOISE, dq=dq),
        "casertano+dq": romanjax.fit_ramps_casertano(r, MA4, READ_NOISE, dq=dq),
        "casertano+jumps": romanjax.fit_ramps_casertano(r, MA4, READ_NOISE, dq=dq,
                                                        detect_jumps=True),
        "likely": romanjax.fit_ramps_likely(r, MA4, READ_NOISE, dq=dq),
    }  # fmt: skip


def test_array_api_on_the_accelerators_branches_gives_the_cpu_results(accelerators):
    """apportion_counts, simulate_l1 (with cosmic rays) and the fitters (with flags and jump
    detection) through the accelerators' branches: the same draws, flags and fits."""
    counts = jnp.asarray(_scene(5003))
    key = jax.random.key(3)

    def simulate():
        apportioned = romanjax.apportion_counts(key, counts, MA4)
        l1 = romanjax.simulate_l1(key, counts, MA4, cosmic_rays=True)
        return np.asarray(apportioned), np.asarray(l1.resultants), np.asarray(l1.dq)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_platform, "by_platform", _without_table)
        jax.clear_caches()
        want = simulate()
    resultants = (want[1] * 2.0).astype(np.float32)  # [e] at a gain of 2
    # the simulation's flags less its cosmic-ray truth, which jump detection is to find
    dq = want[2] & ~np.uint32(romanjax.dq.JUMP_DET)
    want_fits = _fits(resultants, dq)
    taken = accelerators()
    got = simulate()
    got_fits = _fits(resultants, dq)
    # the accelerators' branches ran: 32-bit Philox products, the flat redraw loop,
    # barriers instead of materialising loops, the candidate work queue
    for branch in ("_philox_narrow", "_redraw_flat", "elsewhere", "_refit_queue"):
        assert taken[branch] > 0, (branch, taken)
    np.testing.assert_array_equal(got[0], want[0])  # the draws, electron for electron
    np.testing.assert_array_equal(got[2], want[2])
    np.testing.assert_allclose(got[1], want[1], rtol=0, atol=1)  # whole DN
    for name, fit in got_fits.items():
        _assert_fits_agree(fit, want_fits[name])
    assert np.any(np.asarray(want_fits["casertano+jumps"].jump_map))  # cosmic rays found


def test_frame_drivers_on_the_accelerators_paths_give_the_cpu_results(accelerators,
                                                                      monkeypatch):
    """apportion_frame, simulate_frame and fit_frame (numpy in and out, and device arrays in
    and out) on the accelerators' host paths (one worker; for fit_frame and apportion_frame
    three chunks in flight, early copies back and, for a numpy frame by default, the chunks
    cut for overlap) and programs, in several chunks: the CPU's draws and fits. The CPU's
    reference fits use chunks of the same length, so both sides run programs of one shape."""
    counts = _scene(64 * 80, seed=2).reshape(64, 80)
    key = jax.random.key(5)
    chunk = 1024 * jax.local_device_count()  # five chunks on one device

    def simulate():
        apportioned = romanjax.apportion_frame(key, counts, MA4, chunk_pixels=chunk)
        l1 = romanjax.simulate_frame(key, counts, MA4, chunk_pixels=chunk)
        return np.asarray(apportioned), np.asarray(l1.resultants), np.asarray(l1.dq)

    def fits(resultants, dq, numpy_chunk):
        out = {}
        for method, options in (("casertano", {"detect_jumps": True}), ("likely", {}),
                                ("optimal", {})):  # fmt: skip
            out[method] = romanjax.fit_frame(resultants, MA4, READ_NOISE, method=method, dq=dq,
                                             chunk_pixels=numpy_chunk, **options)  # fmt: skip
            out[method + " on device"] = romanjax.fit_frame(
                jnp.asarray(resultants), MA4, READ_NOISE, method=method, dq=jnp.asarray(dq),
                chunk_pixels=chunk, **options)  # fmt: skip
        return out

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_platform, "by_platform", _without_table)
        jax.clear_caches()
        want = simulate()
    resultants = (want[1] * 2.0).astype(np.float32)
    want_fits = fits(resultants, want[2], chunk)
    taken = accelerators()
    assert _platform.chunks_in_flight() == 3 and _platform.host_workers() == 1
    # the numpy fits take the default chunks, cut for overlap to the reference's length
    monkeypatch.setattr(_platform, "HOST_FRAME_MIN_CHUNK_PIXELS", 1024)
    assert _platform.host_frame_chunk_pixels(counts.size) == chunk
    got = simulate()
    got_fits = fits(resultants, want[2], None)
    assert taken["_philox_narrow"] > 0 and taken["_refit_queue"] > 0, taken
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[2], want[2])
    np.testing.assert_allclose(got[1], want[1], rtol=0, atol=1)  # whole DN
    for name, fit in got_fits.items():
        kind = jax.Array if name.endswith("on device") else np.ndarray
        assert isinstance(fit.slope, kind), (name, type(fit.slope))
        _assert_fits_agree(fit, want_fits[name])


def test_host_frames_are_cut_for_their_transfers_to_overlap_on_accelerators(monkeypatch):
    """A host frame that one chunk would hold (a GPU's memory budget) is cut into
    HOST_FRAME_MIN_CHUNKS chunks on accelerators, not on CPUs and not for device data; a
    small frame keeps chunks of at least HOST_FRAME_MIN_CHUNK_PIXELS."""
    from romanjax.host import frames

    monkeypatch.setattr(_platform, "chunk_bytes", lambda devices: 2**31)  # 60M pixels of 9
    mesh, _ = frames._mesh_and_spec(None, "test")
    n_pixels = 4088 * 4088

    def chunks(n, **kwargs):
        return -(-n // frames._chunk_size(None, n, 9, 4, mesh.size, "test", **kwargs))

    assert chunks(n_pixels, mesh=mesh) == 1  # CPUs: no transfers to overlap
    monkeypatch.setattr(_platform, "all_cpu", lambda devices=None: False)
    assert chunks(n_pixels, mesh=mesh) == _platform.HOST_FRAME_MIN_CHUNKS == 8
    assert chunks(n_pixels) == 1  # device data (no mesh given): nothing to copy
    small = 2 * _platform.HOST_FRAME_MIN_CHUNK_PIXELS * mesh.size
    assert chunks(small, mesh=mesh) == 2
    assert frames._chunk_size(None, n_pixels, 9, 4, mesh.size, "test", mesh=mesh) % (
        1024 * mesh.size) == 0  # whole units of 1024 pixels per device
    assert chunks(512 * 512, mesh=mesh) == 1
