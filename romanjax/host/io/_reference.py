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

Reference files cover the whole detector, 4096 x 4096 with the 4-pixel reference border;
an array that is the science shape plus that border is trimmed to the science pixels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

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


def read_reference(source, kind: str, shape) -> np.ndarray:
    """The ``[ny, nx]`` array of one calibration quantity (see the module table).

    Parameters
    ----------
    source : str, Path, roman_datamodels reference model, or array
        A reference file, an opened reference model, or the array itself.
    kind : str
        One of ``REFERENCE_KINDS``.
    shape : (int, int)
        Science-pixel shape ``(ny, nx)``.

    Returns
    -------
    numpy.ndarray
        float64 (uint32 for ``mask``), ``shape``.

    Raises
    ------
    ValueError
        If ``kind`` is unknown, the file holds another kind of reference, or the array's shape
        is neither ``shape`` nor ``shape`` with the reference border; values are not finite
        (a flat may hold non-finite values: its unusable pixels, see the command line).
    FileNotFoundError
        If the file does not exist.
    """
    if kind not in REFERENCE_KINDS:
        raise ValueError(f"read_reference: unknown `kind` {kind!r}; one of {list(REFERENCE_KINDS)}")
    model_name = REFERENCE_KINDS[kind][0]
    label = str(source) if isinstance(source, (str, Path)) else model_name
    dtype = np.uint32 if kind == "mask" else np.float64
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
    if kind not in ("mask", "flat") and not np.isfinite(array).all():
        raise ValueError(f"read_reference: `{kind}` from {label} has non-finite values")
    return array


def _from_model(model, kind, label, dtype):
    model_name, attribute = REFERENCE_KINDS[kind]
    if type(model).__name__ != model_name:
        raise ValueError(
            f"read_reference: {label} is a {type(model).__name__}, not the {model_name} "
            f"that `{kind}` needs"
        )
    return np.array(getattr(model, attribute), dtype)


def saturation_flags(resultants, saturation) -> np.ndarray:
    """romancal's saturation step: SATURATED on every resultant at or above ``saturation``
    [DN] and on all later ones (a pixel stays saturated until reset). Returns uint32 flags of
    the resultants' shape."""
    from ...dq import SATURATED

    hit = np.asarray(resultants) >= np.asarray(saturation)[None]
    hit = np.logical_or.accumulate(hit, axis=0)
    return np.where(hit, np.uint32(SATURATED), np.uint32(0))
