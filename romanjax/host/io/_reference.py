"""Per-pixel calibration arrays from Roman reference files (roman_datamodels reference
models, as CRDS serves them) or given directly.

==============  =========================  ======================  =====================
kind            reference model            attribute               units
==============  =========================  ======================  =====================
``gain``        ``GainRefModel``           ``data``                [e/DN]
``read_noise``  ``ReadnoiseRefModel``      ``data``                [DN] (one read)
``dark``        ``DarkRefModel``           ``dark_slope``          [DN/s]
``flat``        ``FlatRefModel``           ``data``                dimensionless
``saturation``  ``SaturationRefModel``     ``data``                [DN]
``mask``        ``MaskRefModel``           ``dq``                  flags (uint32)
==============  =========================  ======================  =====================

``read_reference`` also reads ``saturation_dq``, the ``dq`` flags of a
``SaturationRefModel`` (uint32; its ``NO_SAT_CHECK`` pixels, see :func:`saturation_flags`).

Reference files cover the whole detector, 4096 x 4096 with the 4-pixel reference border;
an array that is the science shape plus that border is trimmed to the science pixels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ...dq import NO_SAT_CHECK
from ._roman import NBORDER

#: kind -> (reference model class name, attribute)
REFERENCE_KINDS = {
    "gain": ("GainRefModel", "data"),
    "read_noise": ("ReadnoiseRefModel", "data"),
    "dark": ("DarkRefModel", "dark_slope"),
    "flat": ("FlatRefModel", "data"),
    "saturation": ("SaturationRefModel", "data"),
    "mask": ("MaskRefModel", "dq"),
}
#: further kinds :func:`read_reference` reads from a file given for one of the above
_FLAG_KINDS = {"saturation_dq": ("SaturationRefModel", "dq")}


def read_reference(source, kind: str, shape) -> np.ndarray:
    """The ``[ny, nx]`` array of one calibration quantity (see the module table).

    Parameters
    ----------
    source : str, Path, roman_datamodels reference model, or array
        A reference file, an opened reference model, or the array itself.
    kind : str
        One of ``REFERENCE_KINDS``, or ``"saturation_dq"``.
    shape : (int, int)
        Science-pixel shape ``(ny, nx)``.

    Returns
    -------
    numpy.ndarray
        float64 (uint32 for ``mask`` and ``saturation_dq``), ``shape``.

    Raises
    ------
    ValueError
        If ``kind`` is unknown, the file holds another kind of reference, or the array's shape
        is neither ``shape`` nor ``shape`` with the reference border; values are not finite
        (a flat may hold non-finite values: its unusable pixels, see the command line; a
        saturation level may be NaN: the pixel is checked against the converter's limit
        only, see :func:`saturation_flags`).
    FileNotFoundError
        If the file does not exist.
    """
    kinds = {**REFERENCE_KINDS, **_FLAG_KINDS}
    if kind not in kinds:
        raise ValueError(f"read_reference: unknown `kind` {kind!r}; one of {list(kinds)}")
    model_name = kinds[kind][0]
    label = str(source) if isinstance(source, (str, Path)) else model_name
    flags = kind in ("mask", "saturation_dq")
    dtype = np.uint32 if flags else np.float64
    if isinstance(source, (str, Path)):
        from ._asdf import open_datamodel

        with open_datamodel(source) as model:  # the array is copied before the file closes
            array = _from_model(model, kind, label, dtype)
    elif hasattr(source, "meta") and hasattr(source, "validate"):
        array = _from_model(source, kind, label, dtype)
    else:
        array = np.asarray(source, dtype)
    ny, nx = shape
    if array.shape == (ny + 2 * NBORDER, nx + 2 * NBORDER):
        array = array[NBORDER:-NBORDER, NBORDER:-NBORDER]
    if array.shape != (ny, nx):
        raise ValueError(
            f"read_reference: `{kind}` from {label} has shape {array.shape}; the image needs "
            f"{(ny, nx)} (or {(ny + 2 * NBORDER, nx + 2 * NBORDER)} with the reference border)"
        )
    finite = np.isfinite(array) | (np.isnan(array) if kind == "saturation" else False)
    if not flags and kind != "flat" and not finite.all():
        raise ValueError(f"read_reference: `{kind}` from {label} has non-finite values")
    return array


def _from_model(model, kind, label, dtype):
    model_name, attribute = {**REFERENCE_KINDS, **_FLAG_KINDS}[kind]
    if type(model).__name__ != model_name:
        raise ValueError(
            f"read_reference: {label} is a {type(model).__name__}, not the {model_name} "
            f"that `{kind}` needs"
        )
    return np.array(getattr(model, attribute), dtype)


#: The 16-bit analogue-to-digital converter's largest value [DN]: romancal's saturation step
#: compares pixels without a usable saturation level (NaN) against one more than this.
ATOD_LIMIT = 65535.0


def saturation_flags(resultants, saturation, read_pattern=None,
                     saturation_dq=None) -> np.ndarray:  # fmt: skip
    """romancal's saturation step (stcal ``flag_saturated_pixels`` as romancal calls it, with
    no growth into neighbouring pixels). Returns uint32 flags of the resultants' shape
    ``[n_resultant, *pixels]``:

    - SATURATED on every resultant at or above ``saturation`` [DN] and on all later ones (a
      pixel stays saturated until reset); a NaN level, or a pixel whose
      ``saturation_dq`` (the reference file's flags, :func:`saturation_pixel_flags`) has
      NO_SAT_CHECK, is compared with ``ATOD_LIMIT + 1`` instead;
    - AD_FLOOR | DO_NOT_USE on every resultant at or below 0 DN;
    - with ``read_pattern`` (a :class:`romanjax.ReadPattern` or the lists of read numbers
      of each resultant), the two passes for resultants averaged over several reads, whose
      later reads may saturate while the mean stays below the level:

      * DO_NOT_USE on the resultant just before the first saturated one when it is at or
        above ``saturation * mean(reads) / last read`` (its dilution factor; resultants of
        one read, factor 1, are skipped) and carries neither SATURATED nor DO_NOT_USE;
      * DO_NOT_USE on resultant 1 (0-based) when resultant 2 is the first saturated one,
        resultant 0 extrapolated to the last read of resultant 2 stays below the level
        (``R_0 / mean(reads_0) * last(reads_2) < saturation``) and the step from resultant
        0 to 1 exceeds ``(saturation - R_0) / n_reads_1`` (a saturating event within
        resultant 1).

    romancal's ramp fit leaves DO_NOT_USE resultants out, as romanjax's fitters do
    (:data:`romanjax.dq.DO_NOT_USE_IN_FIT`)."""
    from ...dq import AD_FLOOR, DO_NOT_USE, SATURATED

    data = np.asarray(resultants)
    if not np.issubdtype(data.dtype, np.floating):  # no unsigned wrap-around below
        data = data.astype(np.float64)
    level = np.asarray(saturation, np.float64)
    unchecked = (saturation_pixel_flags(level, saturation_dq) & NO_SAT_CHECK) != 0
    level = np.where(unchecked, ATOD_LIMIT + 1, level)
    hit = np.logical_or.accumulate(data >= level[None], axis=0)
    flags = np.where(hit, np.uint32(SATURATED), np.uint32(0))
    flags |= np.where(data <= 0, np.uint32(AD_FLOOR | DO_NOT_USE), np.uint32(0))
    if read_pattern is None:
        return flags
    reads = [list(r) for r in getattr(read_pattern, "reads", read_pattern)]
    if len(reads) != data.shape[0]:
        raise ValueError(f"saturation_flags: `read_pattern` has {len(reads)} resultants, "
                         f"`resultants` {data.shape[0]}")  # fmt: skip
    saturated = (flags & SATURATED) != 0
    for g in range(data.shape[0] - 2, -1, -1):
        dilution = np.mean(reads[g]) / reads[g][-1]
        if dilution == 1:
            continue
        dilution = np.where(unchecked, 1.0, dilution)
        partial = ((data[g] >= level * dilution) & ((flags[g] & (SATURATED | DO_NOT_USE)) == 0)
                   & saturated[g + 1])  # fmt: skip
        flags[g] |= np.where(partial, np.uint32(DO_NOT_USE), np.uint32(0))
    if data.shape[0] > 2:
        first = data[0]
        late = (first / np.mean(reads[0])) * reads[2][-1] < level
        jump = (data[1] - first) > (level - first) / len(reads[1])
        third_only = saturated[2] & ~saturated[1]
        flags[1] |= np.where(late & jump & third_only, np.uint32(DO_NOT_USE), np.uint32(0))
    return flags


def saturation_pixel_flags(saturation, saturation_dq=None) -> np.ndarray:
    """The pixel flags romancal's saturation step takes from its reference file, uint32
    ``[*pixels]``: the file's own flags ``saturation_dq`` (default none), with NO_SAT_CHECK
    added where the level ``saturation`` is NaN. :func:`saturation_flags` does not check
    the NO_SAT_CHECK pixels against their level; the command line sets these flags on every
    resultant of the pixel."""
    level = np.asarray(saturation, np.float64)
    flags = np.zeros(level.shape, np.uint32)
    if saturation_dq is not None:
        flags |= np.broadcast_to(np.asarray(saturation_dq, np.uint32), level.shape)
    return flags | np.where(np.isnan(level), np.uint32(NO_SAT_CHECK), np.uint32(0))
