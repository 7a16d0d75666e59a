"""The full L1 chain (romanisim ``make_l1``) as one jitted JAX function."""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from .. import dq as dqbits
from .._read_pattern import ReadPattern
from .._validate import check_pattern, check_values, float_dtype
from ..kernels.rng import key_words, standard_normal
from ._apportion import check_counts, counts_as_int32, read_scan, with_table_on_cpu
from ._effects import (
    IPC_KERNEL,
    apply_inverse_linearity,
    apply_ipc,
    cosmic_ray_cap,
    cosmic_ray_deposit,
    cosmic_ray_params,
    dark_decay_resultants,
)
from ._readout import dark_decay_params, science_read_times, simulation_read_times

__all__ = ["L1", "simulate_l1"]

# fixed fold_in tags: switching one effect off leaves the others' draws unchanged
_PHOTONS, _PEDESTAL, _COSMIC_RAYS, _READ_NOISE = 0, 1, 2, 3


class L1(NamedTuple):
    """Simulated L1 ramp: ``resultants`` ``[n_resultant, *pixels]`` [DN] (rounded, clipped
    at 1.1 x saturation) and ``dq`` ``[n_resultant, *pixels]`` uint32 (SATURATED,
    JUMP_DET for simulated cosmic-ray hits, NO_LIN_CORR)."""

    resultants: jax.Array
    dq: jax.Array


@partial(jax.jit, static_argnames=("pattern", "dtype", "image_shape", "crparams", "cr_cap",
                                   "readout"))  # fmt: skip
def _simulate(key, counts, read_noise, gain, pedestal, pedestal_noise, saturation,
              ipc_kernel, inv_lin, decay, read_times, *, pattern, dtype, image_shape, crparams,
              cr_cap, readout):  # fmt: skip
    shape = counts.shape
    npix = counts.size
    flat = counts_as_int32(counts)
    gain_flat = jnp.broadcast_to(gain, shape).reshape(-1)
    element = jnp.arange(npix, dtype=jnp.uint32)
    noise = standard_normal(key_words(jax.random.fold_in(key, _PEDESTAL)), element, 0, 0, dtype)
    instrumental = (jnp.broadcast_to(pedestal, shape).reshape(-1)
                    + noise * jnp.broadcast_to(pedestal_noise, shape).reshape(-1))  # fmt: skip
    no_lin_corr = jnp.zeros(npix, bool)
    if inv_lin is not None:
        ncoeff = inv_lin.shape[0]
        if inv_lin.ndim == 1:
            inv_lin = inv_lin.reshape((ncoeff,) + (1,) * len(shape))
        coeffs = jnp.broadcast_to(inv_lin, (ncoeff,) + shape).reshape(ncoeff, npix)
        bad = jnp.any(~jnp.isfinite(coeffs), axis=0) | jnp.all(coeffs == 0, axis=0)
        identity = jnp.zeros_like(coeffs).at[1].set(1)
        coeffs = jnp.where(bad[None], identity, coeffs)
        no_lin_corr = bad
    times = np.asarray(pattern.read_times)
    dts = np.diff(times, prepend=0.0)
    cr_key = jax.random.fold_in(key, _COSMIC_RAYS)

    def per_read(j, cumulative, inst):
        hit = jnp.zeros(npix, bool)
        if crparams is not None:
            area = npix * (crparams.pixel_size * 1e-4) ** 2  # [cm**2]
            mean = crparams.flux * area * jnp.asarray(dts, dtype)[j]
            deposit = cosmic_ray_deposit(jax.random.fold_in(cr_key, j), mean, cr_cap,
                                         image_shape, crparams, dtype)  # fmt: skip
            hit = deposit > 0
            inst = inst + deposit.astype(dtype)
        value = cumulative.astype(dtype) + inst
        if inv_lin is not None:
            value = apply_inverse_linearity(value, coeffs, gain_flat)
        return value, hit, inst

    def photons(key, flat, instrumental, table):
        return read_scan(key, flat, pattern, dtype, per_read=per_read, carry0=instrumental,
                         table=table)

    resultants, hits, _ = with_table_on_cpu(photons, jax.random.fold_in(key, _PHOTONS), flat,
                                            instrumental)  # fmt: skip
    n = pattern.n_resultants
    resultants = resultants.reshape((n,) + shape)
    if ipc_kernel is not None:
        resultants = apply_ipc(resultants.reshape((n,) + image_shape), ipc_kernel).reshape(
            resultants.shape)
    resultants = resultants / gain
    if decay is not None:  # [DN], after the gain and before read noise, as romanisim
        if readout is not None:
            read_times = science_read_times(shape, readout, pattern.read_time, dtype)
        read_times = jnp.broadcast_to(jnp.asarray(read_times, dtype), shape)
        resultants = resultants + dark_decay_resultants(read_times, decay[0], decay[1],
                                                        pattern, dtype)  # fmt: skip
    sigma = jnp.asarray(read_noise, dtype) / jnp.sqrt(
        jnp.asarray(pattern.n_reads, dtype)).reshape((n,) + (1,) * len(shape))
    read_key = key_words(jax.random.fold_in(key, _READ_NOISE))
    read_noise_draws = standard_normal(
        read_key, element, jnp.arange(n, dtype=jnp.uint32)[:, None], 0, dtype)
    resultants = resultants + sigma * read_noise_draws.reshape(resultants.shape)
    resultants = jnp.clip(jnp.round(resultants), 0, 1.1 * saturation)
    dq = jnp.where(hits.reshape((n,) + shape), jnp.uint32(dqbits.JUMP_DET), jnp.uint32(0))
    dq = dq | jnp.where(resultants >= saturation, jnp.uint32(dqbits.SATURATED), jnp.uint32(0))
    dq = dq | jnp.where(no_lin_corr.reshape(shape), jnp.uint32(dqbits.NO_LIN_CORR),
                        jnp.uint32(0))  # fmt: skip
    return L1(resultants.astype(dtype), dq.astype(jnp.uint32))


def simulate_l1(key: jax.Array, counts: ArrayLike, pattern: ReadPattern, *,
                read_noise: ArrayLike = 5.0, gain: ArrayLike = 2.0, pedestal: ArrayLike = 1e4,
                pedestal_noise: ArrayLike = 8.0, saturation: ArrayLike = 55000.0,
                cosmic_rays=None, ipc: ArrayLike | None = None,
                inverse_linearity: ArrayLike | None = None, dark_decay: dict | None = None,
                read_time_offsets: ArrayLike | None = None) -> L1:  # fmt: skip
    """Simulate an L1 ramp from total electrons, as romanisim's ``make_l1``.

    Order: apportion the photons read by read (:func:`romanjax.apportion_counts`), add the
    pedestal plus one N(0, pedestal_noise) draw per pixel (identical in every resultant),
    add cosmic-ray charge per read to the same non-photon buffer (so later reads keep it),
    apply the inverse non-linearity per read, average reads into resultants, apply IPC,
    divide by the gain, add the dark decay [DN] when asked, add read noise sigma/sqrt(N_i)
    per resultant, round, clip to [0, 1.1 saturation] and flag SATURATED where
    >= saturation.

    Parameters
    ----------
    key : jax.random key
        Split internally with fixed ``fold_in`` tags (photons 0, pedestal 1, cosmic rays 2,
        read noise 3): switching one effect off leaves the other draws unchanged.
    counts : array ``[*pixels]``
        Total electrons at the last read [e], non-negative integers.
    pattern : ReadPattern
    read_noise : float or array ``[*pixels]``
        Read noise of ONE read [DN].
    gain : float or array ``[*pixels]``
        [e/DN].
    pedestal, pedestal_noise : float or array ``[*pixels]``
        Reset level and its per-pixel Gaussian scatter [e].
    saturation : float or array ``[*pixels]``
        [DN].
    cosmic_rays : None, bool or dict
        ``True``: romanisim's model (8 /cm**2/s, power-law lengths 10-2000 um, Moyal dE/dx)
        at the rate for the simulated AREA: ``flux * n_pixels * (10 um)**2 * dt_j`` per read
        interval ``dt_j`` (romanisim applies the rate of a whole 16.8 cm**2 detector to any
        image, so small stamps get ~1e3 x the real density; here a 4088**2 frame gets about
        romanisim's 425 per read). Skipped reads' time counts too (romanisim gives them none).
        A dict overrides fields of :class:`CosmicRayParams`. Hit resultants get JUMP_DET.
        Needs 0-, 1- or 2-D ``counts`` (treated as an image of shape (1, 1), (1, n), (ny, nx)).
    ipc : None, bool or array ``[3, 3]``
        ``True``: romanisim's default normalised kernel :data:`IPC_KERNEL`; an array: that
        kernel. Applied to the electron resultants (pedestal included) with zero padding
        before the gain. romanisim 0.15 never applies IPC (bug: the result is discarded), so
        ``ipc=None`` matches it.
    inverse_linearity : array ``[ncoeff]`` or ``[ncoeff, *pixels]`` or None
        Polynomial coefficients in DN (constant first) applied to every read (romanisim
        ``NL.apply(electrons=True)``); NaN or all-zero coefficients are replaced by the
        identity and flagged NO_LIN_CORR.
    dark_decay : None or dict
        romanisim's ``darkdecaysignal`` (off by default, as in romanisim's ``make_l1``; it has
        no default values): ``amplitude`` [DN] and ``time_constant`` [s] (> 0), scalars, and
        the detector as ``sca`` or ``detector`` (1 to 18), so romanisim's dict can be passed
        as is. Each resultant gets the mean over its reads of
        ``amplitude * exp(-((k - 1.5) T + t_pix) / time_constant)`` [DN], with ``k`` the
        1-based read index, ``T = pattern.read_time`` and ``t_pix`` the pixel's read time
        within the frame (:func:`romanjax.frame_read_times`; see
        :func:`romanjax.dark_decay_signal`). It is added after the gain, before read noise,
        so it is neither non-linear nor spread by IPC, as in romanisim. With a detector,
        2-D ``counts`` are the 4088 x 4088 science array, or the part of it whose first
        pixel is at ``origin = (row, column)`` (an optional key).
    read_time_offsets : None or array ``[*pixels]``
        Each pixel's read time within a frame [s], from the frame start, instead of the
        detector in ``dark_decay`` (only used with ``dark_decay``); e.g.
        ``frame_read_times(pattern.read_time, detector, nborder=4)`` for ``simulate_frame``,
        which passes per-pixel arrays block by block. romanisim uses per-pixel read times
        only for the dark decay, and so does romanjax: photons, cosmic rays and read noise
        are not shifted within a frame.

    Returns
    -------
    L1
        ``resultants [n_resultant, *pixels]`` [DN], ``dq [n_resultant, *pixels]`` uint32.

    Notes
    -----
    Memory: about 10 float/int ``[*pixels]`` buffers plus the two outputs (a 4088x4088 frame
    with MA table 4 needs ~2 GB); split frames into row chunks on the host for less (with
    cosmic rays the rate scales with each chunk's area, so chunking is statistically
    equivalent).
    """
    check_pattern(pattern, "simulate_l1")
    counts = check_counts(counts, "simulate_l1")
    dtype = float_dtype(counts)
    counts = jnp.asarray(counts)
    shape = counts.shape
    crparams = cosmic_ray_params(cosmic_rays)
    if ipc is True:
        kernel = IPC_KERNEL
    elif ipc is None or ipc is False:
        kernel = None
    else:
        kernel = np.asarray(ipc)
        if kernel.shape != (3, 3):
            raise ValueError(f"simulate_l1: `ipc` must be a 3x3 kernel, got shape {kernel.shape}")
    image_shape = shape if len(shape) == 2 else (1, max(int(np.prod(shape)), 1))
    if (crparams is not None or kernel is not None) and len(shape) > 2:
        raise ValueError("simulate_l1: cosmic rays and IPC need `counts` of at most 2 dims")
    cr_cap = 0
    if crparams is not None:
        area = int(np.prod(shape)) * (crparams.pixel_size * 1e-4) ** 2
        max_dt = float(np.max(np.diff(pattern.read_times, prepend=0.0)))
        cr_cap = cosmic_ray_cap(crparams.flux * area * max_dt)
    per_pixel = (("read_noise", read_noise), ("gain", gain), ("pedestal", pedestal),
                 ("pedestal_noise", pedestal_noise), ("saturation", saturation))  # fmt: skip
    rules = {"read_noise": {"minimum": 0}, "gain": {"minimum": 0, "strict": True},
             "pedestal": {}, "pedestal_noise": {"minimum": 0},
             "saturation": {"minimum": 0, "strict": True}}  # fmt: skip
    for name, value in per_pixel:
        check_values("simulate_l1", name, value, **rules[name])
        try:
            fits = np.broadcast_shapes(np.shape(value), shape) == shape
        except ValueError:
            fits = False
        if not fits:
            raise ValueError(f"simulate_l1: `{name}` of shape {np.shape(value)} does not "
                             f"broadcast against `counts` of shape {shape}")  # fmt: skip
    decay = dark_decay_params(dark_decay, "simulate_l1")
    readout = read_times = decay_values = None
    if decay is not None:
        readout, read_times = simulation_read_times("simulate_l1", decay, shape,
                                                    read_time_offsets)  # fmt: skip
        decay_values = (jnp.asarray(decay.amplitude, dtype),
                        jnp.asarray(decay.time_constant, dtype))  # fmt: skip
        if read_times is not None:
            read_times = jnp.asarray(read_times, dtype)
    elif read_time_offsets is not None:
        raise ValueError("simulate_l1: `read_time_offsets` is only used with `dark_decay`")
    check_values("simulate_l1", "ipc", kernel)
    check_values("simulate_l1", "inverse_linearity", inverse_linearity)
    as_float = partial(jnp.asarray, dtype=dtype)
    inv_lin = None if inverse_linearity is None else as_float(inverse_linearity)
    return _simulate(key, counts, as_float(read_noise), as_float(gain), as_float(pedestal),
                     as_float(pedestal_noise), as_float(saturation),
                     None if kernel is None else as_float(kernel), inv_lin, decay_values,
                     read_times, pattern=pattern, dtype=dtype, image_shape=image_shape,
                     crparams=crparams, cr_cap=cr_cap, readout=readout)  # fmt: skip
