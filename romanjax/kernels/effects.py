"""Detector effects of the L1 simulation: cosmic rays, IPC, inverse non-linearity, readout
timing within a frame and dark decay.

Pure ``jax.numpy`` functions on flat or 2-D pixel arrays (and the static cosmic-ray model
they are specialised for); :func:`romanjax.simulate_l1` checks its arguments and strings
them together in romanisim's ``make_l1`` order.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .poisson import poisson
from .queue import compact
from .rng import philox_4x32, unit

__all__ = [
    "IPC_KERNEL",
    "CosmicRayParams",
    "cosmic_ray_cap",
    "cosmic_ray_part_cap",
    "cosmic_ray_part_mean",
    "CosmicRayTracks",
    "cosmic_ray_tracks",
    "cosmic_ray_reaches",
    "cosmic_ray_points",
    "cosmic_ray_deposit",
    "apply_ipc",
    "apply_inverse_linearity",
    "DETECTOR_PIXELS",
    "REFERENCE_BORDER",
    "readout_index",
    "pixel_read_times",
    "dark_decay_resultants",
]

#: romanisim's default IPC kernel (``romanisim.models.ipc``), normalised to sum 1, in the
#: ``scipy.ndimage.convolve`` convention. romanisim 0.15 ``make_l1`` never applies it (the
#: convolved array is discarded); romanjax applies it when ``simulate_l1(ipc=True)``.
IPC_KERNEL = np.array([[0.21, 1.66, 0.22], [1.88, 91.59, 1.87], [0.21, 1.62, 0.2]])
IPC_KERNEL = IPC_KERNEL / IPC_KERNEL.sum()
IPC_KERNEL.setflags(write=False)


class CosmicRayParams(NamedTuple):
    """Cosmic-ray model (romanisim ``parameters.cr`` defaults; hashable, static).

    flux [1/cm**2/s], min/max_dEdx [eV/um] (Moyal location/scale [eV/um]), min/max_cr_len
    [um] with power-law slope, conversion_factor [eV/e], pixel_size and pixel_depth [um].
    """

    flux: float = 8.0
    min_dEdx: float = 10.0
    max_dEdx: float = 1e4
    moyal_location: float = 120.0
    moyal_scale: float = 50.0
    min_cr_len: float = 10.0
    max_cr_len: float = 2000.0
    length_slope: float = -4.33
    conversion_factor: float = 0.5
    pixel_size: float = 10.0
    pixel_depth: float = 5.0


def cosmic_ray_cap(mean: float) -> int:
    """Static maximum number of CRs per read for a Poisson mean: mean + 10 sqrt(mean) + 12.

    P(N > cap) < 1e-15 for every mean (Chernoff bound), so truncation is negligible."""
    return int(math.ceil(mean + 10 * math.sqrt(mean) + 12))


def _length_moment(params: CosmicRayParams, power: int) -> float:
    """``E[L**power]`` of the tracks' 2-D length ``L`` [pixels] (power law ``l**slope`` on
    ``[min_cr_len, max_cr_len]``), in float64 on the host."""
    s, lo, hi = params.length_slope, params.min_cr_len, params.max_cr_len

    def integral(k):  # int_lo^hi l**(s + k) dl
        if s + k + 1 == 0:
            return math.log(hi / lo)
        return (hi ** (s + k + 1) - lo ** (s + k + 1)) / (s + k + 1)

    return integral(power) / integral(0) / params.pixel_size**power


def cosmic_ray_part_cap(rate_per_pixel: float, frame_image, part_image,
                        params: CosmicRayParams) -> int:
    """Static number of track slots a part of ``part_image = (rows, columns)`` pixels of a
    frame ``frame_image`` needs in a read interval whose mean number of tracks is
    ``rate_per_pixel`` per frame pixel (:func:`cosmic_ray_deposit`).

    The tracks it takes are those whose extent reaches the part's box grown by one pixel on
    every side, so they start within ``L`` (the track's length in pixels, in the max-norm)
    of that box. Their number is Poisson (the tracks are independent) with mean at most
    ``rate * E[(rows + 2 + 2 L)(columns + 2 + 2 L)]``, at most the frame's own mean; the cap
    is :func:`cosmic_ray_cap` of that mean."""
    return cosmic_ray_cap(cosmic_ray_part_mean(rate_per_pixel, frame_image, part_image, params))


def cosmic_ray_part_mean(rate_per_pixel: float, frame_image, part_image,
                         params: CosmicRayParams) -> float:  # fmt: skip
    """The bound on the mean number of tracks that reach a part of a frame of which
    :func:`cosmic_ray_part_cap` is the Poisson cap: ``rate_per_pixel * E[(rows + 2 + 2 L)
    (columns + 2 + 2 L)]``, at most the frame's own mean. Linear in the rate, so the bound
    for a whole exposure is that of the sum of its intervals' rates."""
    rows, columns = part_image[0] + 2, part_image[1] + 2
    mean_length, mean_square = _length_moment(params, 1), _length_moment(params, 2)
    grown = rows * columns + 2 * (rows + columns) * mean_length + 4 * mean_square
    frame = frame_image[0] * frame_image[1]
    return rate_per_pixel * min(grown, frame)


def _moyal_cdf(x, location, scale):
    return math.erfc(math.exp(-(x - location) / scale / 2) / math.sqrt(2))


class CosmicRayTracks(NamedTuple):
    """The cosmic rays of one read interval over a whole frame, ``[cap]`` each: start
    ``(row, column)`` in frame pixels, ``(d_row, d_column)`` the track in pixels, charge [e]
    (zero in the unused slots)."""

    row: jax.Array
    column: jax.Array
    d_row: jax.Array
    d_column: jax.Array
    charge: jax.Array


#: Fourth Philox counter word of each cosmic-ray draw: a track's parameters (and the gap
#: before it), its points' electrons (:func:`~.poisson.poisson`); 0 and 1 are unused.
_TAG_TRACK, _TAG_POINTS = 2, 3


def cosmic_ray_tracks(words, read, mean_number, cap, frame_image, params: CosmicRayParams,
                      dtype):  # fmt: skip
    """The tracks of the read intervals ``read`` over a frame of ``frame_image = (ny, nx)``
    pixels.

    Parameters
    ----------
    words : pair of uint32 scalars
        Philox key words (:func:`romanjax.kernels.rng.key_words`) of the exposure's cosmic
        rays.
    read : integer scalar or array ``[r]``
        Read intervals (their number in the pattern, from 0).
    mean_number : float, scalar or broadcasting to ``read``
        Mean number of tracks of each interval over the frame.
    cap : int
        Static number of track slots per interval (:func:`cosmic_ray_cap`).

    Returns
    -------
    CosmicRayTracks
        ``[*read.shape, cap]`` arrays.

    N ~ Poisson(mean_number) (truncated at ``cap``; the number of arrivals of a unit-rate
    Poisson process within ``mean_number``, from exponential gaps) tracks start uniformly on
    the frame (pixel centres at integers, edges at -1/2 and n - 1/2), with a uniform
    direction, a length from the truncated power law l**slope and dE/dx from the truncated
    Moyal distribution (romanisim ``cr.sample_cr_params``, here by exact inverse CDFs instead
    of a tabulated one). The mean charge of a track is dE/dx * pixel_size / conversion_factor *
    L3d, with the 3-D length L3d = sqrt(L2d**2 + (depth/size)**2) [pixels].

    Every draw is keyed by its interval and slot (Philox counters ``(slot, read, parameter,
    2)``: parameters 0-4 the track's, 5 the gap before its arrival), and every
    shape is fixed by ``cap``, and ``cap`` by the frame, so every part of the frame sees the
    same tracks (:func:`cosmic_ray_deposit`), and the intervals may be drawn together or one
    at a time."""
    ny, nx = frame_image
    read = jnp.asarray(read).astype(jnp.uint32)
    mean_number = jnp.broadcast_to(jnp.asarray(mean_number, dtype), read.shape)
    slot = jnp.arange(cap, dtype=jnp.uint32)

    def uniform(parameter):  # one Philox counter per parameter and slot
        return unit(philox_4x32(words, slot, read[..., None], parameter, _TAG_TRACK), dtype)

    # the arrivals of a unit-rate Poisson process: slot s holds a track when the sum of its
    # s + 1 exponential gaps is at most the mean, so the number of tracks is Poisson(mean)
    # truncated at cap (elementwise and a cumulative sum: no rejection loop)
    arrival = jnp.cumsum(-jnp.log(uniform(5)), axis=-1)
    valid = arrival <= mean_number[..., None]

    i0 = uniform(0) * ny - 0.5
    j0 = uniform(1) * nx - 0.5
    phi = uniform(2) * (2 * np.pi)
    # power law on [lo, hi]: inverse CDF of x**s, s != -1
    s1 = params.length_slope + 1
    lo, hi = params.min_cr_len, params.max_cr_len
    length = (lo**s1 + uniform(3) * (hi**s1 - lo**s1)) ** (1 / s1) / params.pixel_size
    # truncated Moyal: CDF(x) = erfc(exp(-(x - loc) / (2 scale)) / sqrt 2)
    c_lo = _moyal_cdf(params.min_dEdx, params.moyal_location, params.moyal_scale)
    c_hi = _moyal_cdf(params.max_dEdx, params.moyal_location, params.moyal_scale)
    w = uniform(4) * (c_hi - c_lo) + c_lo
    w = jnp.clip(w, 1e-30, 1 - 1e-7)
    dedx = params.moyal_location - 2 * params.moyal_scale * jnp.log(
        jnp.sqrt(2.0) * jax.scipy.special.erfinv(1 - w)
    )
    dedx = jnp.clip(dedx, params.min_dEdx, params.max_dEdx)
    length_3d = jnp.sqrt(length**2 + (params.pixel_depth / params.pixel_size) ** 2)
    charge = dedx * params.pixel_size / params.conversion_factor * length_3d  # [e]
    return CosmicRayTracks(i0, j0, length * jnp.cos(phi), length * jnp.sin(phi),
                           jnp.where(valid, charge, 0))


def cosmic_ray_reaches(tracks: CosmicRayTracks, frame_image, first_pixel, part_image, dtype):
    """``[cap]`` bool: the tracks that may deposit charge in the part of the frame
    (:func:`cosmic_ray_deposit`), those whose extent meets the part's box grown by one pixel
    on every side. A track's sampled points lie between its start and its end and are
    rounded to pixel centres (at most half a pixel), so no track outside this set reaches
    the part; :func:`cosmic_ray_part_cap` bounds the number of tracks inside it."""
    nx = frame_image[1]
    rows, columns = part_image
    first_pixel = jnp.asarray(first_pixel, jnp.int32)
    row0, column0 = first_pixel // nx, first_pixel % nx
    end_row, end_column = tracks.row + tracks.d_row, tracks.column + tracks.d_column
    return ((tracks.charge > 0)
            & (jnp.maximum(tracks.row, end_row) >= row0.astype(dtype) - 1)
            & (jnp.minimum(tracks.row, end_row) <= (row0 + rows).astype(dtype))
            & (jnp.maximum(tracks.column, end_column) >= column0.astype(dtype) - 1)
            & (jnp.minimum(tracks.column, end_column) <= (column0 + columns).astype(dtype)))


def cosmic_ray_points(tracks: CosmicRayTracks, words, frame_image, first_pixel, part_image,
                      total_cap, part_cap, params: CosmicRayParams, dtype):  # fmt: skip
    """The tracks of every read interval that reach a part of their frame, compacted, and the
    electrons of each of their points: ``(taken, electrons, start, number)``, what
    :func:`cosmic_ray_deposit` takes.

    The part is ``part_image = (rows, columns)`` pixels starting at the frame's flat pixel
    ``first_pixel`` (may be traced): whole rows of the frame (``columns == nx``), or a run
    within its one row (``ny == 1``). ``tracks`` are ``[r, cap]`` arrays of
    :func:`cosmic_ray_tracks` (all the exposure's intervals) drawn under ``words``, and
    ``r * cap`` must stay below ``2**31`` (an int32 index and a uint32 counter).

    Each track is sampled at ``P`` equally spaced points (spacing <= 1/4 pixel), its mean
    charge shared equally between them, and every point gets a Poisson draw
    (:func:`~.poisson.poisson`) keyed by the track and the point (counter ``(read * cap +
    slot, point, stream, 3)``; so a point draws the same electrons whichever part it lands
    in). Per pixel this is Poisson with mean proportional to the track length inside it
    (sampled to 1/4 pixel) -- romanisim instead adds the depth term to every traversed
    pixel's chord, which gives short chords somewhat more charge; the total charge per track
    agrees for tracks longer than a pixel.

    Only the tracks that reach the part are sampled, compacted in (interval, slot) order into
    one buffer for the whole exposure: ``total_cap`` tracks in all (the Poisson cap of the
    exposure's mean number, :func:`cosmic_ray_part_mean`), at most ``part_cap`` per interval
    (that of one interval), plus ``part_cap`` rows of padding. Drawing every interval's
    points at once makes the draws' work that of the exposure's mean number of tracks rather
    than of every interval's cap, and runs the Poisson sampler's rejection loop once.

    Returns
    -------
    taken : CosmicRayTracks
        ``[total_cap + part_cap]`` arrays: the buffer's tracks (charge 0 in unused rows).
    electrons : int32 ``[total_cap + part_cap, P]``
        The electrons of each of their points.
    start, number : int32 ``[r]``
        The first buffer row of each interval's tracks and how many rows are its own.
    """
    n_points = _points_per_track(params)
    n_reads, cap = tracks.charge.shape
    reaches = cosmic_ray_reaches(tracks, frame_image, first_pixel, part_image, dtype)
    number = jnp.sum(reaches, axis=1, dtype=jnp.int32)
    start = jnp.cumsum(number) - number
    # an interval's rows: its reaching tracks, at most part_cap, within the buffer's tracks
    number = jnp.clip(jnp.minimum(number, total_cap - start), 0, part_cap)
    start = jnp.minimum(start, total_cap)
    size = n_reads * cap
    track = compact(reaches.reshape(-1), total_cap + part_cap)  # ``size`` in unused rows
    taken = CosmicRayTracks(*(jnp.take(x.reshape(-1), track, mode="fill", fill_value=0)
                              for x in tracks))  # fmt: skip
    per_point = jnp.broadcast_to((taken.charge / n_points)[:, None], (track.shape[0], n_points))
    point = jnp.arange(n_points, dtype=jnp.uint32)
    electrons = poisson(words, per_point, jnp.minimum(track, size - 1)[:, None], point[None],
                        tag=_TAG_POINTS).astype(jnp.int32)  # fmt: skip
    return taken, electrons, start, number


def _points_per_track(params: CosmicRayParams) -> int:
    """Points a track is sampled at: spacing at most 1/4 pixel for the longest track."""
    return int(math.ceil(4 * params.max_cr_len / params.pixel_size)) + 1


def cosmic_ray_deposit(points, read, frame_image, first_pixel, part_image, part_cap,
                       params: CosmicRayParams, dtype):  # fmt: skip
    """Electrons the tracks of read interval ``read`` (may be traced) deposit in the part of
    :func:`cosmic_ray_points` (the same ``frame_image``, ``first_pixel``, ``part_image``),
    ``[rows * columns]`` int32, from its ``points``: the interval's window of ``part_cap``
    buffer rows, of which the first ``number[read]`` are its own, each point rounded to its
    pixel centre and added up per pixel."""
    ny, nx = frame_image
    rows, columns = part_image
    first_pixel = jnp.asarray(first_pixel, jnp.int32)
    taken, electrons, start, number = points
    n_points = electrons.shape[1]
    first = start[read]
    row, column, d_row, d_column = (jax.lax.dynamic_slice_in_dim(x, first, part_cap)
                                    for x in taken[:4])  # fmt: skip
    electrons = jax.lax.dynamic_slice_in_dim(electrons, first, part_cap)
    frac = (jnp.arange(n_points, dtype=dtype) + 0.5) / n_points
    ii = jnp.round(row[:, None] + frac[None] * d_row[:, None]).astype(jnp.int32)
    jj = jnp.round(column[:, None] + frac[None] * d_column[:, None]).astype(jnp.int32)
    index = ii * nx + jj - first_pixel
    inside = ((ii >= 0) & (ii < ny) & (jj >= 0) & (jj < nx) & (index >= 0)
              & (index < rows * columns)
              & (jnp.arange(part_cap) < number[read])[:, None])  # fmt: skip
    index = jnp.where(inside, index, rows * columns)
    image = jnp.zeros(rows * columns, jnp.int32)
    return image.at[index.reshape(-1)].add(jnp.where(inside, electrons, 0).reshape(-1),
                                           mode="drop")  # fmt: skip


def apply_ipc(images, kernel):
    """Convolve the last two axes with a 3x3 ``kernel``, zero padding, as
    ``scipy.ndimage.convolve(images, kernel[None], mode="constant")``:
    ``out[y, x] = sum_ab kernel[a, b] in[y + 1 - a, x + 1 - b]``."""
    kernel = jnp.asarray(kernel, images.dtype)
    pad = [(0, 0)] * (images.ndim - 2) + [(1, 1), (1, 1)]
    padded = jnp.pad(images, pad)
    ny, nx = images.shape[-2:]
    out = jnp.zeros_like(images)
    for a in range(3):
        for b in range(3):
            out = out + kernel[a, b] * padded[..., 2 - a : 2 - a + ny, 2 - b : 2 - b + nx]
    return out


def apply_inverse_linearity(electrons, coefficients, gain):
    """romanisim ``NL.apply(electrons=True)``: DN = e / gain, polynomial in DN (coefficients
    ``[ncoeff, ...]``, constant term first), times gain back to [e]."""
    dn = electrons / gain
    result = jnp.zeros_like(dn)
    for c in coefficients[::-1]:
        result = result * dn + c
    return result * gain


#: Pixels on a side of a whole WFI detector, reference border included (romanisim ``n_pix_tot``).
DETECTOR_PIXELS = 4096
#: Reference pixels on each edge around the 4088 x 4088 science array (romanisim ``nborder``).
REFERENCE_BORDER = 4
#: A detector is read by 32 output channels, each 128 columns wide, all at once: each channel
#: reads its 4096 x 128 pixels row by row, so one frame is 4096 * 128 pixel reads long.
CHANNEL_COLUMNS = 128
READS_PER_FRAME = DETECTOR_PIXELS * CHANNEL_COLUMNS


def readout_index(rows, columns, detector: int):
    """Position ``k`` (0 to 4096 * 128 - 1) of pixels in their channel's readout sequence,
    as romanisim ``frame_read_times`` orders them (that pixel is read at ``k / (4096 * 128)``
    of the frame time).

    ``rows`` and ``columns`` are integer arrays (broadcasting) of positions in the whole
    4096 x 4096 detector, reference border included. Before orientation, channel ``c``
    (columns ``128 c`` to ``128 c + 127``) reads row 0 first and, within a row, left to right
    when ``c`` is even and right to left when ``c`` is odd. Detectors ``detector % 3 == 0``
    are then mirrored left-right, the others top-bottom.
    """
    last = DETECTOR_PIXELS - 1
    if detector % 3 == 0:
        columns = last - columns
    else:
        rows = last - rows
    within = columns % CHANNEL_COLUMNS
    odd = (columns // CHANNEL_COLUMNS) % 2 == 1
    within = jnp.where(odd, CHANNEL_COLUMNS - 1 - within, within)
    return rows * CHANNEL_COLUMNS + within


def pixel_read_times(rows, columns, detector: int, frame_time, dtype):
    """Read time of pixels after the start of a frame [s]: ``readout_index * frame_time /
    (4096 * 128)``; ``rows``, ``columns`` as :func:`readout_index`.

    The index (below 2**19) and the power-of-two division are exact in float32, so the only
    rounding is that of one product.
    """
    index = readout_index(rows, columns, detector).astype(dtype)
    return index * (jnp.asarray(frame_time, dtype) / READS_PER_FRAME)


def dark_decay_resultants(read_times, amplitude, time_constant, pattern, dtype):
    """Dark decay of every resultant, ``[n_resultant, *read_times.shape]`` [DN].

    romanisim ``apply_dark_decay``: read ``k`` (1-based) of a pixel read ``t_pix`` [s] into
    its frame (``read_times``) happens at ``t = (k - 1.5) T + t_pix`` (``T`` the frame time
    ``pattern.read_time``; the frame of read 1 then runs from ``-T/2`` to ``T/2``), its
    signal is ``amplitude * exp(-t / time_constant)``, and a resultant gets the mean over its
    reads. Written as ``exp(-((k_0 - 1.5) T + t_pix) / tau) * mean_k exp(-(k - k_0) T / tau)``
    with ``k_0`` the resultant's first read: one exponential per pixel and resultant, and the
    second factor lies in (0, 1], so nothing overflows unless the signal itself does.
    """
    frame = pattern.read_time
    tau = jnp.asarray(time_constant, dtype)
    first = np.array([reads[0] for reads in pattern.reads], np.float64)
    offset = jnp.asarray((first - 1.5) * frame, dtype)  # [n] [s]
    spread = [jnp.mean(jnp.exp(-jnp.asarray([(k - reads[0]) * frame for k in reads], dtype)
                               / tau)) for reads in pattern.reads]  # fmt: skip
    weight = jnp.asarray(amplitude, dtype) * jnp.stack(spread)
    pixels = (1,) * jnp.ndim(read_times)
    times = jnp.asarray(read_times, dtype)[None] + offset.reshape((-1,) + pixels)
    return weight.reshape((-1,) + pixels) * jnp.exp(-times / tau)
