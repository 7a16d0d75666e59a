"""Readout timing within a frame, and the dark decay evaluated at it.

romanisim reads the pixels of a frame one after the other (``frame_read_times``) and uses
those per-pixel times for one effect only: the dark decay (``dark_decay_for_read``,
``apply_dark_decay``), off unless a ``darkdecaysignal`` is given. romanjax does the same.
"""

from __future__ import annotations

import numbers
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from .._read_pattern import ReadPattern
from .._validate import check_pattern, check_pixel_shape, check_real, check_values, float_dtype
from ..kernels.effects import (
    DETECTOR_PIXELS,
    REFERENCE_BORDER,
    dark_decay_resultants,
    pixel_read_times,
)

__all__ = ["frame_read_times", "dark_decay_signal", "DarkDecay", "dark_decay_params",
           "SCIENCE_PIXELS"]  # fmt: skip

#: Pixels on a side of the science array (the detector less its reference border).
SCIENCE_PIXELS = DETECTOR_PIXELS - 2 * REFERENCE_BORDER

_DETECTORS = range(1, 19)


def _check_detector(function: str, detector, name: str = "detector") -> int:
    if (isinstance(detector, (bool, np.bool_)) or not isinstance(detector, numbers.Integral)
            or int(detector) not in _DETECTORS):  # fmt: skip
        raise ValueError(f"{function}: `{name}` must be a WFI detector number 1 to 18, "
                         f"got {detector!r}")  # fmt: skip
    return int(detector)


def _check_scalar(function: str, name: str, value, **rules) -> None:
    if np.ndim(value) != 0:
        raise ValueError(f"{function}: `{name}` must be a scalar, got shape {np.shape(value)}")
    check_values(function, name, value, **rules)


@partial(jax.jit, static_argnames=("detector", "nborder", "dtype"))
def _frame_read_times(frame_time, t0, *, detector, nborder, dtype):
    index = jnp.arange(nborder, DETECTOR_PIXELS - nborder)
    times = pixel_read_times(index[:, None], index[None, :], detector, frame_time, dtype)
    return times + jnp.asarray(t0, dtype)


def frame_read_times(frame_time: ArrayLike, detector: int, t0: ArrayLike = 0.0,
                     nborder: int | None = None) -> jax.Array:  # fmt: skip
    """Read time of every pixel of one frame, as romanisim's ``frame_read_times``.

    The 32 output channels of a WFI detector, 128 columns each, read their pixels at the
    same time, row by row, with alternating direction: even channels left to right, odd
    channels right to left. Pixel ``k`` (0-based) of a channel's sequence is read at
    ``t0 + k * frame_time / (4096 * 128)``. The whole pattern is then mirrored top-bottom,
    or left-right for detectors with ``detector % 3 == 0``.

    romanisim uses these times only for the dark decay (see :func:`dark_decay_signal` and
    ``simulate_l1(dark_decay=...)``); photons, cosmic rays and read noise are not shifted by
    them.

    Parameters
    ----------
    frame_time : float
        Duration of one frame (read) [s], e.g. ``pattern.read_time``.
    detector : int
        WFI detector (SCA) number, 1 to 18 (romanisim's ``sca``).
    t0 : float
        Start time of the frame [s].
    nborder : int or None
        Pixels trimmed from each edge: None (or 0) for the whole 4096 x 4096 detector, 4
        for the 4088 x 4088 science array of romanjax's and romanisim's images.

    Returns
    -------
    jax.Array ``[4096 - 2 nborder, 4096 - 2 nborder]``
        Read times [s], in the float dtype of ``frame_time`` and ``t0`` (JAX's default
        float for Python numbers).

    Raises
    ------
    ValueError
        ``detector`` not 1 to 18; ``nborder`` not an integer 0 to 2047; ``frame_time`` not
        finite and positive, ``t0`` not finite, or either not a scalar.

    Examples
    --------
    >>> times = romanjax.frame_read_times(3.16247, 7, nborder=4)   # [4088, 4088] [s]
    """
    function = "frame_read_times"
    detector = _check_detector(function, detector)
    if nborder is None:
        nborder = 0
    if (isinstance(nborder, (bool, np.bool_)) or not isinstance(nborder, numbers.Integral)
            or not 0 <= nborder < DETECTOR_PIXELS // 2):  # fmt: skip
        raise ValueError(f"{function}: `nborder` must be None or an integer 0 to "
                         f"{DETECTOR_PIXELS // 2 - 1}, got {nborder!r}")  # fmt: skip
    _check_scalar(function, "frame_time", frame_time, minimum=0, strict=True)
    _check_scalar(function, "t0", t0)
    dtype = float_dtype(frame_time, t0)
    return _frame_read_times(frame_time, t0, detector=detector, nborder=int(nborder),
                             dtype=dtype)  # fmt: skip


@partial(jax.jit, static_argnames=("pattern", "dtype"))
def _dark_decay_signal(read_times, amplitude, time_constant, *, pattern, dtype):
    return dark_decay_resultants(read_times, amplitude, time_constant, pattern, dtype)


def dark_decay_signal(read_times: ArrayLike, pattern: ReadPattern, *, amplitude: ArrayLike,
                      time_constant: ArrayLike) -> jax.Array:  # fmt: skip
    """Dark decay of every resultant, as romanisim's ``apply_dark_decay`` adds it [DN].

    Read ``k`` (1-based) of a pixel read ``t_pix`` into its frame is at
    ``t = (k - 1.5) T + t_pix``, with ``T = pattern.read_time`` (romanisim references the
    amplitude to the middle of the first read: read 1's frame runs from ``-T/2`` to
    ``T/2``). Its signal is ``amplitude * exp(-t / time_constant)``, and each resultant gets
    the mean over its reads. ``simulate_l1(dark_decay=...)`` adds this to the resultants
    after the gain and before read noise; romanisim's ``make_l2`` subtracts it again.

    Parameters
    ----------
    read_times : array ``[*pixels]``
        Each pixel's read time within a frame [s], measured from the frame start (e.g.
        ``frame_read_times(pattern.read_time, detector, nborder=4)`` or a part of it).
    pattern : ReadPattern
    amplitude : float
        Amplitude [DN] (romanisim's ``darkdecaysignal['amplitude']``, from the CRDS
        ``darkdecaysignal`` reference file).
    time_constant : float
        Decay time constant [s] (``darkdecaysignal['time_constant']``), > 0.

    Returns
    -------
    jax.Array ``[n_resultant, *pixels]``
        Mean dark-decay signal of each resultant [DN], in the float dtype of ``read_times``.

    Raises
    ------
    ValueError
        Non-finite ``read_times``; ``amplitude`` or ``time_constant`` not a finite scalar;
        ``time_constant <= 0``.
    """
    function = "dark_decay_signal"
    check_pattern(pattern, function)
    check_real(function, "read_times", read_times)
    check_values(function, "read_times", read_times)
    _check_scalar(function, "amplitude", amplitude)
    _check_scalar(function, "time_constant", time_constant, minimum=0, strict=True)
    dtype = float_dtype(read_times)
    return _dark_decay_signal(jnp.asarray(read_times, dtype), amplitude, time_constant,
                              pattern=pattern, dtype=dtype)  # fmt: skip


class DarkDecay(NamedTuple):
    """A validated ``simulate_l1(dark_decay=...)``: amplitude [DN] and time constant [s]
    (scalars, traced), and where the pixels sit (static): the detector and the position of
    ``counts[0, 0]`` in the 4088 x 4088 science array, or None when the caller gives the
    read times."""

    amplitude: object
    time_constant: object
    detector: int | None
    origin: tuple[int, int] | None


_DARK_DECAY_KEYS = ("amplitude", "time_constant", "detector", "sca", "origin")


def dark_decay_params(dark_decay, function: str = "simulate_l1") -> DarkDecay | None:
    """``None``/``False`` -> None; a dict (romanisim's ``darkdecaysignal`` as is, or with
    ``detector`` for ``sca`` and an optional ``origin``) -> :class:`DarkDecay`."""
    if dark_decay is None or dark_decay is False:
        return None
    if dark_decay is True:
        raise ValueError(
            f"{function}: `dark_decay` has no default (romanisim reads it per detector from "
            "the CRDS darkdecaysignal reference file); give a dict with `amplitude` [DN] and "
            "`time_constant` [s]"
        )
    if not isinstance(dark_decay, dict):
        raise ValueError(f"{function}: `dark_decay` must be None or a dict, got "
                         f"{type(dark_decay).__name__}")  # fmt: skip
    unknown = set(dark_decay) - set(_DARK_DECAY_KEYS)
    if unknown:
        raise ValueError(f"{function}: unknown `dark_decay` keys {sorted(unknown)}; known: "
                         f"{list(_DARK_DECAY_KEYS)}")  # fmt: skip
    for key in ("amplitude", "time_constant"):
        if key not in dark_decay:
            raise ValueError(f"{function}: `dark_decay` needs `{key}`")
    amplitude, time_constant = dark_decay["amplitude"], dark_decay["time_constant"]
    _check_scalar(function, "dark_decay['amplitude']", amplitude)
    _check_scalar(function, "dark_decay['time_constant']", time_constant, minimum=0, strict=True)
    if "sca" in dark_decay and "detector" in dark_decay:
        raise ValueError(f"{function}: give the detector of `dark_decay` as `detector` or "
                         f"`sca`, not both")  # fmt: skip
    detector = dark_decay.get("detector", dark_decay.get("sca"))
    if detector is not None:
        name = "dark_decay['detector']" if "detector" in dark_decay else "dark_decay['sca']"
        detector = _check_detector(function, detector, name)
    origin = dark_decay.get("origin")
    if origin is not None:
        if detector is None:
            raise ValueError(f"{function}: `dark_decay['origin']` needs the detector")
        ok = np.ndim(origin) == 1 and len(origin) == 2 and all(
            isinstance(v, numbers.Integral) and not isinstance(v, (bool, np.bool_)) and v >= 0
            for v in origin)  # fmt: skip
        if not ok:
            raise ValueError(f"{function}: `dark_decay['origin']` must be two non-negative "
                             f"integers (row, column), got {origin!r}")  # fmt: skip
        origin = (int(origin[0]), int(origin[1]))
    return DarkDecay(amplitude, time_constant, detector, origin)


def dark_decay_inputs(function: str, dark_decay, shape: tuple, read_time_offsets, dtype,
                      data: str = "counts"):  # fmt: skip
    """The checked dark-decay inputs of ``simulate_l1`` or ``make_l2``: ``(readout,
    read_times, (amplitude, time_constant))`` (see :func:`simulation_read_times`), or three
    None without ``dark_decay``."""
    decay = dark_decay_params(dark_decay, function)
    if decay is None:
        if read_time_offsets is not None:
            raise ValueError(f"{function}: `read_time_offsets` is only used with `dark_decay`")
        return None, None, None
    readout, read_times = simulation_read_times(function, decay, shape, read_time_offsets,
                                                data=data)  # fmt: skip
    values = (jnp.asarray(decay.amplitude, dtype), jnp.asarray(decay.time_constant, dtype))
    if read_times is not None:
        read_times = jnp.asarray(read_times, dtype)
    return readout, read_times, values


def simulation_read_times(function: str, decay: DarkDecay, shape: tuple, read_time_offsets,
                          data: str = "counts"):  # fmt: skip
    """Where the per-pixel read times of ``simulate_l1`` (or ``make_l2``) come from:
    ``(readout, read_times)``, exactly one not None. ``readout = (detector, row0, column0)``
    (static) has them computed in the jit for a 2-D image at that place of the science
    array; ``read_times`` are the caller's ``read_time_offsets``, checked to broadcast
    against ``shape``, the pixel shape of the argument named ``data`` in errors."""
    # simulate_l1's counts are its pixels; make_l2's resultants have a resultant axis first
    subject = f"`{data}`" if data == "counts" else f"`{data}` pixels"
    corner = f"{data}[0, 0]" if data == "counts" else f"{data}[:, 0, 0]"
    if read_time_offsets is not None:
        if decay.detector is not None:
            raise ValueError(
                f"{function}: give the pixels' read times either by the detector of "
                "`dark_decay` or by `read_time_offsets`, not both"
            )
        check_real(function, "read_time_offsets", read_time_offsets)
        check_values(function, "read_time_offsets", read_time_offsets)
        check_pixel_shape(function, "read_time_offsets", read_time_offsets, shape)
        return None, read_time_offsets
    if decay.detector is None:
        raise ValueError(
            f"{function}: `dark_decay` needs the pixels' read times: a `detector` (or `sca`) "
            "in the dict, or `read_time_offsets`"
        )
    if len(shape) != 2:
        raise ValueError(
            f"{function}: `dark_decay` with a detector needs 2-D {subject} (rows and columns "
            f"of the science array), got shape {shape}; give `read_time_offsets` otherwise"
        )
    origin = decay.origin
    if origin is None:
        if shape != (SCIENCE_PIXELS, SCIENCE_PIXELS):
            frames = (" (simulate_frame cuts frames into blocks of rows, so frames need "
                      "`read_time_offsets`)") if data == "counts" else ""  # fmt: skip
            raise ValueError(
                f"{function}: {subject} of shape {shape} is not a whole "
                f"{SCIENCE_PIXELS} x {SCIENCE_PIXELS} science array: give its place as "
                f"`dark_decay['origin'] = (row, column)` of {corner}, or the pixels' "
                f"`read_time_offsets`{frames}"
            )
        origin = (0, 0)
    if origin[0] + shape[0] > SCIENCE_PIXELS or origin[1] + shape[1] > SCIENCE_PIXELS:
        raise ValueError(
            f"{function}: {subject} of shape {shape} at `dark_decay['origin']` {origin} "
            f"extends beyond the {SCIENCE_PIXELS} x {SCIENCE_PIXELS} science array"
        )
    return (decay.detector,) + origin, None


def science_read_times(shape, readout, frame_time, dtype):
    """Read times [s] within a frame of the ``[ny, nx]`` pixels at ``readout = (detector,
    row0, column0)`` of the science array (traceable; ``shape`` and ``readout`` static)."""
    detector, row0, column0 = readout
    rows = jnp.arange(shape[0]) + (REFERENCE_BORDER + row0)
    columns = jnp.arange(shape[1]) + (REFERENCE_BORDER + column0)
    return pixel_read_times(rows[:, None], columns[None, :], detector, frame_time, dtype)
