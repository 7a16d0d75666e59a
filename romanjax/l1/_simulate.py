"""The full L1 chain (romanisim ``make_l1``) as one jitted JAX function."""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from .. import _platform, _programs
from .. import dq as dqbits
from .._read_pattern import ReadPattern
from .._validate import check_pattern, check_values, float_dtype
from ..kernels.effects import (
    IPC_KERNEL,
    CosmicRayParams,
    apply_inverse_linearity,
    apply_ipc,
    cosmic_ray_cap,
    cosmic_ray_deposit,
    cosmic_ray_part_cap,
    cosmic_ray_part_mean,
    cosmic_ray_points,
    cosmic_ray_tracks,
    dark_decay_resultants,
)
from ..kernels.rng import in_a_buffer, key_words, standard_normal
from ._apportion import (
    check_counts,
    counts_as_int32,
    factorised_scan,
    read_scan,
    with_table_on_cpu,
)
from ._persistence import PersistenceParams, PersistenceState, _check_host, _check_state
from ._persistence import _params as persistence_params_or_default
from ._persistence import _read as persistence_read_kernel
from ._persistence import _update as update_persistence_kernel
from ._readout import dark_decay_inputs, science_read_times

__all__ = ["L1", "simulate_l1"]

# fixed fold_in tags: switching one effect off leaves the others' draws unchanged
_PHOTONS, _PEDESTAL, _COSMIC_RAYS, _READ_NOISE, _PERSISTENCE = 0, 1, 2, 3, 4


def cosmic_ray_params(cosmic_rays) -> CosmicRayParams | None:
    """``None``/``False`` -> None, ``True`` -> defaults, a dict -> defaults overridden."""
    if cosmic_rays is None or cosmic_rays is False:
        return None
    if cosmic_rays is True:
        return CosmicRayParams()
    if isinstance(cosmic_rays, CosmicRayParams):
        return cosmic_rays
    if isinstance(cosmic_rays, dict):
        unknown = set(cosmic_rays) - set(CosmicRayParams._fields)
        if unknown:
            raise ValueError(
                f"simulate_l1: unknown `cosmic_rays` parameters {sorted(unknown)}; known: "
                f"{list(CosmicRayParams._fields)}"
            )
        return CosmicRayParams(**{k: float(v) for k, v in cosmic_rays.items()})
    raise ValueError("simulate_l1: `cosmic_rays` must be None, a bool or a dict")


class L1(NamedTuple):
    """Simulated L1 ramp: ``resultants`` ``[n_resultant, *pixels]`` [DN] (rounded, clipped
    at 1.1 x saturation) and ``dq`` ``[n_resultant, *pixels]`` uint32 (SATURATED,
    JUMP_DET for simulated cosmic-ray hits, NO_LIN_CORR)."""

    resultants: jax.Array
    dq: jax.Array


@partial(jax.jit, static_argnames=("pattern", "dtype", "image_shape", "frame_image", "crparams",
                                   "cr_cap", "cr_part_cap", "cr_total_cap", "readout",
                                   "persistence_exact", "reference_read"))  # fmt: skip
def _simulate(key, counts, read_noise, gain, pedestal, pedestal_noise, saturation,
              ipc_kernel, inv_lin, decay, read_times, persistence=None, start_time=None,
              persistence_params=None, first_pixel=0, *, pattern, dtype, image_shape,
              frame_image, crparams, cr_cap, cr_part_cap, cr_total_cap, readout,
              persistence_exact=False,
              reference_read=False):  # fmt: skip
    shape = counts.shape
    npix = counts.size
    flat = counts_as_int32(counts)
    gain_flat = jnp.broadcast_to(gain, shape).reshape(-1)
    # every random stream is keyed by the pixel's flat index in the frame
    element = (jnp.asarray(first_pixel, jnp.uint32)
               + jnp.arange(npix, dtype=jnp.uint32))  # fmt: skip
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
    if crparams is not None:
        # every read interval's tracks over the whole frame and the electrons of the points
        # of those that reach these pixels, drawn before the walk over the reads (the
        # Poisson sampler's rejection loop runs once, not once per read); each read then
        # adds its own tracks' points
        cr_words = key_words(jax.random.fold_in(key, _COSMIC_RAYS))
        area = frame_image[0] * frame_image[1] * (crparams.pixel_size * 1e-4) ** 2  # [cm**2]
        tracks = cosmic_ray_tracks(cr_words, jnp.arange(len(dts), dtype=jnp.uint32),
                                   crparams.flux * area * jnp.asarray(dts, dtype), cr_cap,
                                   frame_image, crparams, dtype)  # fmt: skip
        cr_points = cosmic_ray_points(tracks, cr_words, frame_image, first_pixel, image_shape,
                                      cr_total_cap, cr_part_cap, crparams, dtype)  # fmt: skip
    if persistence is not None:
        # the events as [n_events, npix] rows, in the state's own dtype (its clock may need
        # more precision than the pixel values)
        n_events = persistence.fluence.shape[0]
        events = PersistenceState(persistence.fluence.reshape(n_events, npix),
                                  persistence.time.reshape(n_events, npix))  # fmt: skip
        clock = events.time.dtype
        ps_key = jax.random.fold_in(key, _PERSISTENCE)
        read_clock = jnp.asarray(start_time, clock) + jnp.asarray(times, clock)  # [n_read]
        # romanisim: each read collects the current at its time for one frame time;
        # exact: the current integrated since the previous read of the pattern
        durations = jnp.asarray(dts if persistence_exact else
                                np.full_like(dts, pattern.read_time), clock)  # fmt: skip

    def per_read(j, cumulative, inst):
        hit = jnp.zeros(npix, bool)
        if crparams is not None:  # the frame's tracks, deposited in these pixels
            deposit = cosmic_ray_deposit(cr_points, j, frame_image, first_pixel, image_shape,
                                         cr_part_cap, crparams, dtype)  # fmt: skip
            hit = deposit > 0
            inst = inst + deposit.astype(dtype)
        if persistence is not None:  # after the cosmic rays, before the non-linearity
            released = persistence_read_kernel(ps_key, events, j, read_clock[j], durations[j],
                                               persistence_params, persistence_exact,
                                               element)  # fmt: skip
            inst = inst + released.astype(dtype)
        value = cumulative.astype(dtype) + inst
        if inv_lin is not None:
            value = apply_inverse_linearity(value, coeffs, gain_flat)
        return value, hit, inst

    def photons(key, flat, instrumental, table):
        return read_scan(key, flat, pattern, dtype, per_read=per_read, carry0=instrumental,
                         element=element, table=table)

    photon_key = jax.random.fold_in(key, _PHOTONS)
    if inv_lin is None:
        # a resultant is then linear in the charge: the photons' resultants are drawn
        # resultant by resultant (apportion_counts' factorised draws, about half as many
        # binomials as reads) and the other charge, which draws no photons, is averaged over
        # the reads on its own
        resultants = with_table_on_cpu(
            lambda key, flat, element, table: factorised_scan(key, flat, pattern, dtype,
                                                              element, table),
            photon_key, flat, element)  # fmt: skip
        # the charge that is the same in every read, in a buffer of its own: how XLA fuses
        # this sum with what follows could otherwise differ with and without the other
        # charge below, and with it the rounding
        resultants = in_a_buffer(lambda _, r, i: r + i, element, resultants, instrumental)
        hits, charge = jnp.zeros(resultants.shape, bool), instrumental
        if crparams is not None or persistence is not None:
            # the cosmic rays' and persistence's charge, from 0: a pixel without any gets
            # exactly the resultants of a simulation without them
            other, hits, extra = read_scan(photon_key, flat, pattern, dtype,
                                           per_read=per_read, carry0=jnp.zeros_like(instrumental),
                                           element=element, draws=False)  # fmt: skip
            resultants, charge = resultants + other, instrumental + extra
    else:  # the non-linearity needs every read's photons: drawn read by read
        resultants, hits, charge = with_table_on_cpu(photons, photon_key, flat, instrumental)
    new_state = None
    if persistence is not None:
        # romanisim: every electron the pixel collected (photons, cosmic rays, persistence,
        # pedestal noise) but not the pedestal, before IPC and the non-linearity; the last
        # read takes every photon, so the photons collected are ``flat``
        pedestal_flat = jnp.broadcast_to(pedestal, shape).reshape(-1)
        fluence = flat.astype(clock) + (charge - pedestal_flat).astype(clock)
        new_state = update_persistence_kernel(events, fluence, read_clock[-1],
                                              persistence_params)  # fmt: skip
        new_state = PersistenceState(new_state.fluence.reshape(persistence.fluence.shape),
                                     new_state.time.reshape(persistence.time.shape))  # fmt: skip
    n = pattern.n_resultants
    resultants = resultants.reshape((n,) + shape)
    if reference_read:
        # romanisim: a zero-time read of the reset level (pedestal and its noise; no photons,
        # cosmic rays or persistence), through the inverse non-linearity, then the same
        # chain as a one-read resultant; carried as plane 0 of the resultants until the
        # read noise
        reference = instrumental
        if inv_lin is not None:
            reference = apply_inverse_linearity(reference, coeffs, gain_flat)
        resultants = jnp.concatenate([reference.reshape((1,) + shape), resultants])
    planes = resultants.shape[0]
    if ipc_kernel is not None:
        resultants = apply_ipc(resultants.reshape((planes,) + image_shape),
                               ipc_kernel).reshape(resultants.shape)  # fmt: skip
    resultants = resultants / gain
    if decay is not None:  # [DN], after the gain and before read noise, as romanisim
        if readout is not None:
            read_times = science_read_times(shape, readout, pattern.read_time, dtype)
        read_times = jnp.broadcast_to(jnp.asarray(read_times, dtype), shape)
        signal = dark_decay_resultants(read_times, decay[0], decay[1], pattern, dtype)
        if reference_read:  # read "0", at t = -1.5 T + t_pix
            first = decay[0] * jnp.exp(-(read_times - 1.5 * pattern.read_time) / decay[1])
            signal = jnp.concatenate([first.astype(dtype)[None], signal])
        resultants = resultants + signal
    reads = jnp.asarray(((1,) if reference_read else ()) + tuple(pattern.n_reads), dtype)
    sigma = jnp.asarray(read_noise, dtype) / jnp.sqrt(reads).reshape((planes,)
                                                                     + (1,) * len(shape))
    read_key = key_words(jax.random.fold_in(key, _READ_NOISE))
    # resultant i draws counter (pixel, i); the reference read (pixel, n), so the resultants'
    # draws do not depend on whether it is simulated
    index = np.arange(n, dtype=np.uint32)
    if reference_read:
        index = np.concatenate([[n], index]).astype(np.uint32)
    read_noise_draws = standard_normal(read_key, element, jnp.asarray(index)[:, None], 0,
                                       dtype)  # fmt: skip
    resultants = resultants + sigma * read_noise_draws.reshape(resultants.shape)
    resultants = jnp.clip(jnp.round(resultants), 0, 1.1 * saturation)
    if reference_read:  # (no flags: saturation is flagged in the resultants only)
        reference, resultants = resultants[0], resultants[1:]
    dq = jnp.where(hits.reshape((n,) + shape), jnp.uint32(dqbits.JUMP_DET), jnp.uint32(0))
    dq = dq | jnp.where(resultants >= saturation, jnp.uint32(dqbits.SATURATED), jnp.uint32(0))
    dq = dq | jnp.where(no_lin_corr.reshape(shape), jnp.uint32(dqbits.NO_LIN_CORR),
                        jnp.uint32(0))  # fmt: skip
    out = [L1(resultants.astype(dtype), dq.astype(jnp.uint32))]
    if reference_read:
        out.append(reference.astype(dtype))
    if new_state is not None:
        out.append(new_state)
    return out[0] if len(out) == 1 else tuple(out)


def simulate_l1(key: jax.Array, counts: ArrayLike, pattern: ReadPattern, *,
                read_noise: ArrayLike = 5.0, gain: ArrayLike = 2.0, pedestal: ArrayLike = 1e4,
                pedestal_noise: ArrayLike = 8.0, saturation: ArrayLike = 55000.0,
                cosmic_rays=None, ipc: ArrayLike | None = None,
                inverse_linearity: ArrayLike | None = None, dark_decay: dict | None = None,
                read_time_offsets: ArrayLike | None = None,
                persistence: PersistenceState | None = None,
                start_time: ArrayLike | None = None,
                persistence_params: PersistenceParams | None = None,
                persistence_exact: bool = False, reference_read: bool = False,
                frame_shape: tuple | None = None, first_pixel: ArrayLike = 0,
                ) -> L1 | tuple:  # fmt: skip
    """Simulate an L1 ramp from total electrons, as romanisim's ``make_l1``.

    Order: apportion the photons over the reads (:func:`romanjax.apportion_counts`' draws
    without ``inverse_linearity``, which needs every read's photons and so draws them read
    by read, from other random numbers), add the
    pedestal plus one N(0, pedestal_noise) draw per pixel (identical in every resultant),
    add cosmic-ray charge and then persistence charge per read to the same non-photon
    buffer (so later reads keep it), apply the inverse non-linearity per read, average reads
    into resultants, apply IPC, divide by the gain, add the dark decay [DN] when asked, add
    read noise sigma/sqrt(N_i) per resultant, round, clip to [0, 1.1 saturation] and flag
    SATURATED where >= saturation.

    Parameters
    ----------
    key : jax.random key
        Split internally with fixed ``fold_in`` tags (photons 0, pedestal 1, cosmic rays 2,
        read noise 3, persistence 4): switching one effect off leaves the other draws
        unchanged.
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
        interval ``dt_j``, ``n_pixels`` those of the frame (``frame_shape``). romanisim
        applies the rate of a whole 16.8 cm**2 detector to any image, so small stamps get
        ~1e3 x the real density; here a 4088**2 frame gets about romanisim's 425 per read.
        Skipped reads' time counts too (romanisim gives them none).
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
    persistence : PersistenceState or None
        Persistence events of earlier exposures (:class:`romanjax.PersistenceState`, pixel
        shape that of ``counts``; start with ``PersistenceState.empty(counts.shape)``), as
        romanisim's ``persistence``. Read ``j`` of the pattern, at ``start_time +
        pattern.read_times[j]``, gets ``Poisson(sum_k I(x_k, t - t_k) * pattern.read_time)``
        electrons (:func:`romanjax.persistence_read`, keyed by the pixel and the read), added
        after that read's cosmic rays and before the non-linearity, so every later read keeps
        them. The call then also returns the state after this exposure (see Returns).
    start_time : float, required with ``persistence``
        Time of this exposure's reset [s], on the clock of ``persistence.time`` (romanisim's
        ``tstart``, which is an MJD; here seconds: keep the clock near zero in float32, see
        :class:`romanjax.PersistenceState`). Scalar; may be traced, so a sequence of
        exposures under ``jit`` or ``lax.scan`` compiles once.
    persistence_params : PersistenceParams or None
        Parameters of the persistence model (default: romanisim's).
    persistence_exact : bool
        ``False`` (romanisim): each read collects the current at its time for one frame time
        ``pattern.read_time``, and skipped reads collect nothing. ``True``: each read
        collects the current integrated since the previous read of the pattern (since the
        reset for the first), so skipped reads' time counts.
    reference_read : bool
        Also simulate the reference read (off by default, as romanisim's ``make_l1``): a
        zero-time read of the reset level (pedestal and pedestal noise, the same draw as the
        resultants'; no photons, cosmic rays or persistence) through the inverse
        non-linearity, IPC and gain, plus the dark decay at read "0" (``t = -1.5 T +
        t_pix``), plus read noise of ONE read (counter ``(pixel, n_resultant)``, so the
        resultants' draws do not change), rounded and clipped like the resultants, without
        flags. :func:`romanjax.encode_reference_read` encodes the resultants relative to
        it, as flight L1 files store them.
    frame_shape : tuple or None
        ``counts`` are a part of a larger frame of this shape (default: ``counts.shape``,
        the whole frame): whole rows of it (``counts.shape[1:] == frame_shape[1:]``), or
        for a 1-D frame a run of its pixels. Every random number is then the one the whole
        frame draws for these pixels (see Notes), so a frame simulated part by part, in any
        parts, equals the frame simulated at once. :func:`romanjax.simulate_frame` does
        this. Not with ``ipc`` (it couples pixels across part edges).
    first_pixel : int
        Flat index in the frame of the first pixel of ``counts`` (a multiple of the row
        length for 2-D frames); may be traced.

    Returns
    -------
    L1
        ``resultants [n_resultant, *pixels]`` [DN], ``dq [n_resultant, *pixels]`` uint32.
    tuple
        When ``reference_read`` or ``persistence`` is given: ``(l1, reference_read,
        new_state)`` with the items not asked for left out, in romanisim's order
        (``make_l1`` returns the reference read after the resultants and dq). The reference
        read is ``[*pixels]`` [DN] in the resultants' dtype. The new state is the state after
        this exposure,
        ``update_persistence(persistence, fluence, start_time + pattern.exposure_time)``
        with ``fluence`` every electron the exposure left in each pixel (photons, cosmic
        rays, persistence and pedestal noise; not the pedestal), before IPC and the
        non-linearity, as romanisim's ``make_l1`` updates its ``Persistence`` in place; its
        shapes and dtype are those of ``persistence``. Without either the return value is
        the L1 alone, so ``resultants, dq = simulate_l1(...)`` keeps working.

    Notes
    -----
    Random numbers: photons, pedestal noise, read noise and persistence are drawn from
    counter-based streams keyed by ``key``, the effect and the pixel's flat index in the
    frame; the cosmic rays of each read interval are drawn for the whole frame (their
    number at the frame's rate, their starts anywhere on it) and each part deposits the
    charge of the tracks that reach it, every sampled point of a track drawing its
    electrons from a stream keyed by the track and the point. Tracks therefore cross part
    edges unbroken.

    Memory: about 10 float/int ``[*pixels]`` buffers plus the two outputs (a 4088x4088 frame
    with MA table 4 needs ~2 GB); simulate a frame in parts of whole rows for less
    (``frame_shape``, ``first_pixel``; :func:`romanjax.simulate_frame`): the result does not
    change. Persistence adds the ``[n_events, *pixels]`` state twice (in and out).

    Examples
    --------
    A sequence of exposures with persistence, the state carried from one to the next:

    >>> state = romanjax.PersistenceState.empty(counts.shape, n_events=4)
    >>> t0 = 0.0                                         # reset of the first exposure [s]
    >>> for i, exposure_counts in enumerate(exposures):
    ...     l1, state = romanjax.simulate_l1(jax.random.fold_in(key, i), exposure_counts,
    ...                                      pattern, persistence=state, start_time=t0)
    ...     t0 = t0 + pattern.exposure_time + 60.0       # the next reset a minute later
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
    frame_shape = _check_frame(frame_shape, first_pixel, shape, kernel is not None)
    if crparams is not None and int(np.prod(frame_shape)) > 2**31 - 1:
        raise ValueError("simulate_l1: cosmic rays need at most 2**31 - 1 pixels per frame "
                         f"(`frame_shape` {frame_shape})")  # fmt: skip
    frame_image = (frame_shape if len(frame_shape) == 2
                   else (1, max(int(np.prod(frame_shape)), 1)))  # fmt: skip
    cr_cap = cr_part_cap = cr_total_cap = 0
    if crparams is not None:
        max_dt = float(np.max(np.diff(pattern.read_times, prepend=0.0)))
        pixel_rate = crparams.flux * (crparams.pixel_size * 1e-4) ** 2  # per pixel per second
        rate = pixel_rate * max_dt  # per pixel, longest interval
        cr_cap = cosmic_ray_cap(rate * frame_image[0] * frame_image[1])
        cr_part_cap = cosmic_ray_part_cap(rate, frame_image, image_shape, crparams)
        # the exposure's tracks reaching the part: Poisson, its mean the sum of the intervals'
        exposure_mean = cosmic_ray_part_mean(pixel_rate * pattern.read_times[-1], frame_image,
                                             image_shape, crparams)  # fmt: skip
        cr_total_cap = cosmic_ray_cap(exposure_mean)
        # a track slot (read * cr_cap + slot) is an int32 index and a uint32 Philox counter
        if len(pattern.read_times) * cr_cap >= 2**31:
            raise ValueError(f"simulate_l1: `cosmic_rays` flux {crparams.flux:g} /cm**2/s gives "
                             f"up to {cr_cap} tracks per read over the frame; "
                             f"{len(pattern.read_times)} reads of them overflow the 32-bit "
                             "track indices")  # fmt: skip
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
    readout, read_times, decay_values = dark_decay_inputs(
        "simulate_l1", dark_decay, shape, read_time_offsets, dtype)
    check_values("simulate_l1", "ipc", kernel)
    check_values("simulate_l1", "inverse_linearity", inverse_linearity)
    persistence, start_time, persistence_params = _check_persistence(
        persistence, start_time, persistence_params, persistence_exact, shape)
    if not isinstance(reference_read, (bool, np.bool_)):
        raise ValueError(f"simulate_l1: `reference_read` must be a bool, got "
                         f"{reference_read!r}")  # fmt: skip
    as_float = partial(jnp.asarray, dtype=dtype)
    inv_lin = None if inverse_linearity is None else as_float(inverse_linearity)
    # (through a kept program where the caller asked for one: the command line's processes)
    return _programs.call(
        _simulate, key, counts, as_float(read_noise), as_float(gain), as_float(pedestal),
        as_float(pedestal_noise), as_float(saturation),
        None if kernel is None else as_float(kernel), inv_lin, decay_values, read_times,
        persistence, start_time, persistence_params, first_pixel, pattern=pattern,
        dtype=dtype, image_shape=image_shape, frame_image=frame_image, crparams=crparams,
        cr_cap=cr_cap, cr_part_cap=cr_part_cap, cr_total_cap=cr_total_cap, readout=readout,
        persistence_exact=bool(persistence_exact), reference_read=bool(reference_read),
    )  # fmt: skip


def _check_frame(frame_shape, first_pixel, shape, ipc):
    """The frame's shape (a tuple) of a :func:`simulate_l1` call on ``counts`` of ``shape``
    with ``frame_shape`` and ``first_pixel``; host values are checked, traced ones pass."""
    function = "simulate_l1"
    if frame_shape is None:
        frame_shape = tuple(shape)
    else:
        try:
            frame_shape = tuple(int(n) for n in frame_shape)
        except (TypeError, ValueError) as error:
            raise ValueError(f"{function}: `frame_shape` must be a tuple of ints, got "
                             f"{frame_shape!r}") from error  # fmt: skip
    if len(frame_shape) != len(shape) or tuple(frame_shape[1:]) != tuple(shape[1:]):
        raise ValueError(f"{function}: `counts` of shape {tuple(shape)} are not whole rows of "
                         f"a frame of `frame_shape` {frame_shape}")  # fmt: skip
    if ipc and frame_shape != tuple(shape):
        raise ValueError(f"{function}: `ipc` couples neighbouring pixels and cannot be "
                         f"applied to a part of a frame (`frame_shape` {frame_shape})")
    if np.ndim(first_pixel) != 0 or not jnp.issubdtype(jnp.result_type(first_pixel),
                                                       jnp.integer):  # fmt: skip
        raise ValueError(f"{function}: `first_pixel` must be an integer scalar, got "
                         f"{first_pixel!r}")  # fmt: skip
    if not _platform.is_traced(first_pixel):
        first = int(first_pixel)
        row = int(np.prod(frame_shape[1:])) if len(frame_shape) > 1 else 1
        size, frame_size = int(np.prod(shape)), int(np.prod(frame_shape))
        if first < 0 or first % max(row, 1) or first + size > frame_size:
            raise ValueError(f"{function}: `first_pixel` {first} does not start whole rows "
                             f"of {size} pixels inside a frame of `frame_shape` "
                             f"{frame_shape}")  # fmt: skip
    return frame_shape


def _check_persistence(persistence, start_time, params, exact, shape):
    """Validated ``(state, start_time, params)`` of :func:`simulate_l1` (None, None, None
    without persistence); host values are checked here, traced ones pass."""
    function = "simulate_l1"
    if persistence is None:
        for name, value in (("start_time", start_time), ("persistence_params", params)):
            if value is not None:
                raise ValueError(f"{function}: `{name}` is only used with `persistence`")
        if exact:
            raise ValueError(f"{function}: `persistence_exact` is only used with `persistence`")
        return None, None, None
    if not isinstance(exact, (bool, np.bool_)):
        raise ValueError(f"{function}: `persistence_exact` must be a bool, got {exact!r}")
    _check_state(function, persistence, "persistence")
    persistence = PersistenceState(*(leaf if hasattr(leaf, "dtype") else np.asarray(leaf)
                                     for leaf in persistence))  # fmt: skip
    pixels = tuple(np.shape(persistence.fluence)[1:])
    if pixels != tuple(shape):
        raise ValueError(f"{function}: `persistence` holds pixels of shape {pixels}, not the "
                         f"shape {tuple(shape)} of `counts`")  # fmt: skip
    if not jnp.issubdtype(persistence.fluence.dtype, jnp.floating) or \
            not jnp.issubdtype(persistence.time.dtype, jnp.floating):  # fmt: skip
        raise ValueError(f"{function}: `persistence` must hold float arrays, got "
                         f"{persistence.fluence.dtype} and {persistence.time.dtype}")  # fmt: skip
    if start_time is None:
        raise ValueError(f"{function}: `start_time` (the exposure's reset time [s], on "
                         f"the clock of `persistence.time`) is required with "
                         f"`persistence`")  # fmt: skip
    if np.ndim(start_time) != 0:
        raise ValueError(f"{function}: `start_time` must be a scalar, got shape "
                         f"{np.shape(start_time)}")  # fmt: skip
    _check_host(function, "start_time", start_time)
    try:
        params = persistence_params_or_default(params)
    except TypeError as error:
        raise TypeError(f"{function}: `persistence_params` must be a PersistenceParams, got "
                        f"{type(params).__name__}") from error  # fmt: skip
    return persistence, start_time, params
