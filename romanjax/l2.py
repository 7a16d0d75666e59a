"""L2 (count-rate) products from L1 resultants: romanisim's ``make_l2`` as a pure function.

The resultants arrive in DN; the ramp fitters work in electrons, so the chain is (romanisim
``image.make_l2``):

1. optional dark decay subtraction: the mean over each resultant's reads of
   ``amplitude * exp(-t / time_constant)`` [DN] at every pixel's own read times
   (:func:`romanjax.dark_decay_signal`), what ``simulate_l1(dark_decay=...)`` adds,
2. optional classical non-linearity correction of the DN resultants (a per-pixel polynomial,
   constant term first; pixels with NaN or all-zero coefficients are left uncorrected and
   flagged ``NO_LIN_CORR`` on every resultant),
3. ``fit(resultants * gain, dq & DO_NOT_USE_IN_FIT, read_noise * gain)`` [e, e/s],
4. ``slope_e -= dark_rate`` (the Poisson variance keeps the dark-inclusive rate),
5. divide the slope by the gain and the variances by ``gain**2`` [DN/s, (DN/s)**2],
6. divide the slope by the flat and the variances by ``flat**2``. Pixels whose gain, read noise,
   dark rate or flat is invalid (device data; host data raises) get DO_NOT_USE and zeros.

Unlike romanisim, nothing is modified in place.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from . import _programs
from . import dq as dqbits
from ._read_pattern import ReadPattern
from ._validate import check_pixel_shape, check_real, check_values, float_dtype, prepare_dq
from .kernels.effects import dark_decay_resultants
from .l1._readout import dark_decay_inputs, science_read_times
from .ramp._common import exclude_non_finite

__all__ = ["L2", "make_l2", "METHODS", "PIXEL_FLAGS", "apply_linearity", "pixel_flags_romancal"]

#: Ramp-fitting methods of :func:`make_l2` and the romanjax fitter each one uses.
METHODS = {
    "casertano": "fit_ramps_casertano",
    "optimal": "fit_ramps_optimal",
    "likely": "fit_ramps_likely",
}


class L2(NamedTuple):
    """A fitted count-rate image; a pytree, so it passes through ``jit`` and ``vmap``.

    Attributes
    ----------
    slope : Array ``[*pixels]``
        Count rate [DN/s] (dark-subtracted and flat-fielded when asked).
    var_rnoise : Array ``[*pixels]``
        Slope variance from read noise [(DN/s)**2].
    var_poisson : Array ``[*pixels]``
        Slope variance from Poisson noise [(DN/s)**2].
    dq : Array ``[*pixels]`` uint32
        Bitwise OR over the resultants of the input dq, the non-linearity flags and the
        flags the fitter set (found jumps ``JUMP_DET``, unfittable ``DO_NOT_USE``).
    """

    slope: jax.Array
    var_rnoise: jax.Array
    var_poisson: jax.Array
    dq: jax.Array

    @property
    def err(self) -> jax.Array:
        """``[*pixels]`` total slope uncertainty ``sqrt(var_rnoise + var_poisson)`` [DN/s]."""
        return jnp.sqrt(self.var_rnoise + self.var_poisson)


def _fitter(method: str):
    import romanjax

    return getattr(romanjax, METHODS[method])


def apply_linearity(resultants, coefficients):
    """Classical non-linearity correction ``sum_k c_k R**k`` of DN resultants (pure).

    Parameters
    ----------
    resultants : array ``[n_resultant, *pixels]``
        Resultants [DN].
    coefficients : array ``[n_coeff]`` or ``[n_coeff, *pixels]``
        Polynomial coefficients, constant term first (romanisim / CRDS ``linearity``
        convention), mapping observed DN to linearised DN.

    Returns
    -------
    corrected : array ``[n_resultant, *pixels]``
        Linearised resultants [DN]; pixels with non-finite or all-zero coefficients are left
        unchanged (identity polynomial).
    flags : array ``[*pixels]`` uint32
        ``NO_LIN_CORR`` where the coefficients were unusable, else 0.
    """
    coefficients = jnp.asarray(coefficients, resultants.dtype)
    pixels = resultants.shape[1:]
    missing = (1,) * (len(pixels) + 1 - coefficients.ndim)
    coefficients = jnp.broadcast_to(
        coefficients.reshape(coefficients.shape[:1] + missing + coefficients.shape[1:]),
        coefficients.shape[:1] + pixels,
    )
    bad = jnp.any(~jnp.isfinite(coefficients), axis=0) | jnp.all(coefficients == 0, axis=0)
    identity = jnp.zeros(coefficients.shape[:1], resultants.dtype).at[1].set(1)
    identity = identity.reshape(identity.shape + (1,) * len(pixels))
    coefficients = jnp.where(bad[None], identity, coefficients)
    # Horner, highest power first
    corrected = jnp.zeros_like(resultants)
    for k in range(coefficients.shape[0] - 1, -1, -1):
        corrected = corrected * resultants + coefficients[k][None]
    flags = jnp.where(bad, jnp.uint32(dqbits.NO_LIN_CORR), jnp.uint32(0))
    return corrected, flags


#: ``make_l2(pixel_flags=...)``: how the L2 pixel flags are made from the resultant flags.
PIXEL_FLAGS = ("romanisim", "romancal")


def pixel_flags_romancal(resultant_dq, unfitted):
    """romancal's L2 pixel flags from the resultant flags (stcal's ``dq_compress_sect``,
    which romancal's likelihood ramp fit calls).

    ``SATURATED`` where any resultant saturated (a ramp that saturated late but was fitted
    carries it too); ``DO_NOT_USE`` only where no usable sub-ramp remained; ``JUMP_DET`` (and
    every bit other than SATURATED and DO_NOT_USE) where any resultant carries it. A single
    DO_NOT_USE resultant (left out of the fit) leaves no DO_NOT_USE on the pixel.

    Parameters
    ----------
    resultant_dq : Array ``[n_resultant, *pixels]`` uint32
        Input flags OR the fitter's (found jumps).
    unfitted : Array ``[*pixels]`` bool

    Returns
    -------
    Array ``[*pixels]`` uint32
    """
    dnu = jnp.uint32(dqbits.DO_NOT_USE)
    combined = jnp.bitwise_or.reduce(resultant_dq, axis=0)
    return (combined & ~dnu) | jnp.where(unfitted, dnu, jnp.uint32(0))


@partial(jax.jit, static_argnames=("pattern", "method", "has_dq", "fit_kwargs", "pixel_flags",
                                   "readout"))  # fmt: skip
def _make_l2(resultants, dq, read_noise, gain, dark_rate, flat, linearity, decay=None,
             read_times=None, *, pattern, method, has_dq, fit_kwargs, pixel_flags="romanisim",
             readout=None):  # fmt: skip
    dtype = resultants.dtype
    if has_dq:  # non-finite resultants: DO_NOT_USE, left out of the fit
        resultants, dq, _ = exclude_non_finite(resultants, dq)
    if decay is not None:  # [DN], before the non-linearity correction, as romanisim
        pixels = resultants.shape[1:]
        if readout is not None:
            read_times = science_read_times(pixels, readout, pattern.read_time, dtype)
        read_times = jnp.broadcast_to(jnp.asarray(read_times, dtype), pixels)
        resultants = resultants - dark_decay_resultants(read_times, decay[0], decay[1],
                                                        pattern, dtype)  # fmt: skip
    if linearity is not None:
        resultants, lin_flags = apply_linearity(resultants, linearity)
        dq = dq | lin_flags[None]
        has_dq = True
    fitter = _fitter(method)
    electrons = resultants * gain[None]
    fit_dq = (dq & jnp.uint32(dqbits.DO_NOT_USE_IN_FIT)) if has_dq else None
    kwargs = dict(fit_kwargs)
    fit = fitter(electrons, pattern, read_noise * gain, dq=fit_dq, **kwargs)
    slope_e = fit.slope.astype(dtype)
    if dark_rate is not None:
        slope_e = slope_e - dark_rate
    gain2 = jnp.square(gain)
    slope = slope_e / gain
    var_rnoise = fit.var_read.astype(dtype) / gain2
    var_poisson = fit.var_poisson.astype(dtype) / gain2
    # invalid per-pixel parameters (device data; host data was checked on the host): the
    # pixel gets DO_NOT_USE and zeros, never NaN or inf
    invalid = ~jnp.isfinite(gain) | (gain <= 0) | ~jnp.isfinite(read_noise) | (read_noise < 0)
    if dark_rate is not None:
        invalid = invalid | ~jnp.isfinite(dark_rate)
    if flat is not None:
        invalid = invalid | ~jnp.isfinite(flat) | (flat <= 0)
        flat = jnp.clip(flat, 1e-9, jnp.inf)
        slope = slope / flat
        flat2 = jnp.square(flat)
        var_rnoise = var_rnoise / flat2
        var_poisson = var_poisson / flat2
    zero = jnp.zeros((), dtype)
    slope, var_rnoise, var_poisson = (jnp.where(invalid, zero, value)
                                      for value in (slope, var_rnoise, var_poisson))
    resultant_dq = dq | fit.dq.astype(jnp.uint32)
    if pixel_flags == "romancal":
        out_dq = pixel_flags_romancal(resultant_dq, fit.unfitted | invalid)
    else:
        out_dq = jnp.bitwise_or.reduce(resultant_dq, axis=0)
        out_dq = out_dq | jnp.where(invalid, jnp.uint32(dqbits.DO_NOT_USE), jnp.uint32(0))
    return L2(slope=slope, var_rnoise=var_rnoise, var_poisson=var_poisson, dq=out_dq)


def _per_pixel(name, value, pixels, dtype):
    if value is None:
        return None
    check_pixel_shape("make_l2", name, value, pixels)
    return jnp.broadcast_to(jnp.asarray(value, dtype), pixels)


def make_l2(resultants: ArrayLike, pattern: ReadPattern, *, read_noise: ArrayLike,
            gain: ArrayLike, dq: ArrayLike | None = None, dark_rate: ArrayLike | None = None,
            flat: ArrayLike | None = None, method: str = "casertano",
            linearity: ArrayLike | None = None, pixel_flags: str = "romanisim",
            dark_decay: dict | None = None, read_time_offsets: ArrayLike | None = None,
            **fit_kwargs) -> L2:  # fmt: skip
    """Fit L1 resultants [DN] into an L2 count-rate image [DN/s], as romanisim's ``make_l2``.

    The dark decay is subtracted when asked, the resultants are converted to electrons with
    ``gain``, fitted with the chosen ramp fitter using ``dq & DO_NOT_USE_IN_FIT``
    (DO_NOT_USE, saturated and jump-flagged resultants split the ramps, as in romancal), the
    dark rate is subtracted from the electron slope, and slope and variances are converted
    back to DN and flat-fielded (romanisim ``image.make_l2``). Pure: the inputs are never
    modified. Jit-compatible (pattern, method and the fitter keywords are static).

    Parameters
    ----------
    resultants : array ``[n_resultant, *pixels]``
        L1 resultants [DN]; integer inputs (uint16 L1 files) are converted to float.
    pattern : ReadPattern
        Static read pattern.
    read_noise : float or array broadcasting to ``[*pixels]``
        Read noise of one read [DN] (romanisim's default is 5 DN).
    gain : float or array broadcasting to ``[*pixels]``
        Gain [e/DN] (romanisim's default is 2 e/DN).
    dq : array ``[n_resultant, *pixels]``, optional
        Resultant flags; bits ``DO_NOT_USE | SATURATED | JUMP_DET`` exclude a resultant from
        the fit.
    dark_rate : float or array broadcasting to ``[*pixels]``, optional
        Dark current [e/s] subtracted from the fitted electron rate.
    flat : float or array broadcasting to ``[*pixels]``, optional
        Flat field [dimensionless], > 0; the slope is divided by it and the variances by its
        square.
    method : {"casertano", "optimal", "likely"}
        Ramp fitter: :func:`romanjax.fit_ramps_casertano` (romanisim's choice),
        :func:`romanjax.fit_ramps_optimal` (full-covariance GLS: interpolated weights on
        unflagged ramps, exact sub-ramp GLS around flagged resultants) or
        :func:`romanjax.fit_ramps_likely` (stcal's ``LIKELY``, romancal's default, with jump
        detection).
    linearity : array ``[n_coeff]`` or ``[n_coeff, *pixels]``, optional
        Classical non-linearity correction polynomial in DN, constant term first, applied to
        the resultants before fitting (see :func:`apply_linearity`).
    pixel_flags : {"romanisim", "romancal"}, optional
        How the L2 pixel flags are made. ``"romanisim"`` (default, as romanisim's
        ``make_l2``): the OR over resultants of the input, non-linearity and fitter flags,
        plus DO_NOT_USE where nothing was fitted. ``"romancal"`` (as romancal's ramp fit):
        ``SATURATED | DO_NOT_USE`` only where no usable sub-ramp remained (``DO_NOT_USE``
        alone when no resultant saturated), ``JUMP_DET`` where a jump was flagged or found,
        other bits OR-ed (see :func:`pixel_flags_romancal`).
    dark_decay : dict, optional
        romanisim's ``darkdecaysignal``, as :func:`romanjax.simulate_l1` takes it:
        ``amplitude`` [DN] and ``time_constant`` [s] (> 0), and the detector as ``sca`` or
        ``detector`` (1 to 18) with an optional ``origin = (row, column)`` of the first
        pixel in the 4088 x 4088 science array (2-D resultant images; without ``origin``
        they must be the whole science array). Each resultant less the mean over its reads
        of ``amplitude * exp(-((k - 1.5) T + t_pix) / time_constant)``
        (:func:`romanjax.dark_decay_signal`) is what is fitted, as romanisim's ``make_l2``
        does before its non-linearity correction; ``make_l2(dark_decay=D)`` undoes
        ``simulate_l1(dark_decay=D)``.
    read_time_offsets : array broadcasting to ``[*pixels]``, optional
        Each pixel's read time within a frame [s], instead of the detector in
        ``dark_decay`` (only used with ``dark_decay``; see :func:`romanjax.frame_read_times`).
    **fit_kwargs
        Passed on to the fitter (e.g. ``detect_jumps=True`` for Casertano); must be hashable.

    Returns
    -------
    L2
        ``slope`` [DN/s], ``var_rnoise`` and ``var_poisson`` [(DN/s)**2], all ``[*pixels]``
        in the resultants' float dtype, and ``dq [*pixels]`` uint32 (see ``pixel_flags``).

    Raises
    ------
    ValueError
        If ``method`` is unknown, a shape does not match the pattern / pixel shape, or
        ``dark_decay`` is invalid or lacks the pixels' read times.
    """
    if method not in METHODS:
        raise ValueError(
            f"make_l2: unknown `method` {method!r}; choose one of {sorted(METHODS)}"
        )
    if pixel_flags not in PIXEL_FLAGS:
        raise ValueError(
            f"make_l2: unknown `pixel_flags` {pixel_flags!r}; choose one of {PIXEL_FLAGS}"
        )
    if not isinstance(pattern, ReadPattern):
        raise TypeError(
            f"make_l2: `pattern` must be a romanjax.ReadPattern, got {type(pattern).__name__}"
        )
    if not hasattr(resultants, "shape"):
        resultants = np.asarray(resultants)
    if resultants.ndim < 1 or resultants.shape[0] != pattern.n_resultants:
        raise ValueError(
            f"make_l2: `resultants` of shape {resultants.shape} must have the "
            f"{pattern.n_resultants} resultants of the read pattern on axis 0"
        )
    check_real("make_l2", "resultants", resultants)
    dtype = float_dtype(resultants)
    if not jnp.issubdtype(resultants.dtype, jnp.floating):
        dtype = jnp.dtype(jax.dtypes.canonicalize_dtype(jnp.float64))
    has_dq = dq is not None
    if not has_dq and not isinstance(resultants, jax.Array):
        host = np.asarray(resultants)
        # host data with NaN or inf: flags are made, so the fit leaves them out
        has_dq = host.dtype.kind == "f" and not np.isfinite(host).all()
    resultants = jnp.asarray(resultants, dtype)
    pixels = resultants.shape[1:]
    if read_noise is None or gain is None:
        raise ValueError("make_l2: `read_noise` [DN] and `gain` [e/DN] are required")
    check_values("make_l2", "read_noise", read_noise, minimum=0)
    check_values("make_l2", "gain", gain, minimum=0, strict=True)
    check_values("make_l2", "dark_rate", dark_rate)
    check_values("make_l2", "flat", flat, minimum=0, strict=True)
    read_noise = _per_pixel("read_noise", read_noise, pixels, dtype)
    gain = _per_pixel("gain", gain, pixels, dtype)
    dark_rate = _per_pixel("dark_rate", dark_rate, pixels, dtype)
    flat = _per_pixel("flat", flat, pixels, dtype)
    dq = prepare_dq("make_l2", dq, resultants.shape)
    if linearity is not None:
        lin_shape = np.shape(linearity)
        try:
            ok = len(lin_shape) >= 1 and lin_shape[0] >= 2 and (
                len(lin_shape) == 1 or np.broadcast_shapes(lin_shape[1:], pixels) == pixels
            )
        except ValueError:
            ok = False
        if not ok:
            raise ValueError(
                f"make_l2: `linearity` coefficients of shape {lin_shape} must be "
                f"[n_coeff >= 2] or [n_coeff, *pixels] with pixels {pixels}"
            )
        linearity = jnp.asarray(linearity, dtype)
    readout, read_times, decay_values = dark_decay_inputs(
        "make_l2", dark_decay, pixels, read_time_offsets, dtype, data="resultants")
    # (through a kept program where the caller asked for one: the command line's processes)
    return _programs.call(
        _make_l2, resultants, dq, read_noise, gain, dark_rate, flat, linearity, decay_values,
        read_times, pattern=pattern, method=method, has_dq=has_dq,
        fit_kwargs=tuple(sorted(fit_kwargs.items())), pixel_flags=pixel_flags, readout=readout,
    )  # fmt: skip
