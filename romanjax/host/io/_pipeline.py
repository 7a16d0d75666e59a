"""A romancal-shaped entry point: a roman_datamodels ``RampModel`` in, the ``ImageModel`` that
romancal's ``RampFitStep`` would write out.

romancal's ramp fit reads the ``RampModel`` that ``dq_init``, ``saturation``, ``refpix``,
``linearity`` and ``dark_current`` made: ``data`` [DN] ``[n_resultant, ny, nx]`` float32
(science pixels), ``groupdq`` uint8 resultant flags, ``pixeldq`` uint32 pixel flags, and
``meta.exposure.read_pattern`` / ``frame_time``; the read noise [DN] and gain [e/DN] come from
CRDS reference files. :func:`ramp_fit_datamodel` fits the same data with romanjax's fitters
(default: the likelihood fitter with jump detection, romancal's default) and builds the
``ImageModel``: ``data`` [DN/s], ``dq = pixeldq | romancal's compressed resultant flags``
(:func:`romanjax.l2.pixel_flags_romancal`), ``err``, ``var_poisson``, ``var_rnoise``, the
ramp's metadata, ``meta.wcs = None`` (``assign_wcs`` comes later) and, when the ramp records
its calibration steps, ``meta.cal_step.ramp_fit = "COMPLETE"``. ``chisq`` and ``dumo`` are
zeros (romanjax does not compute them for the image).
"""

from __future__ import annotations

import numpy as np

from ._roman import NBORDER, _require_datamodels, zero_reference_arrays

#: Metadata nodes of the ramp copied to the image, where the image schema has them.
_META_NODES = ("exposure", "instrument", "observation", "pointing", "program", "visit",
               "ephemeris", "coordinates", "guide_star", "ref_file", "velocity_aberration",
               "wcsinfo", "rcs", "telescope", "origin", "cal_step")  # fmt: skip


def _reference_array(value, name, shape):
    """A scalar, an array, or a reference datamodel's ``data`` (trimmed of the 4-pixel
    reference border when it has it), as an array of ``shape`` or a scalar."""
    data = getattr(value, "data", value)
    array = np.asarray(data, np.float64)
    if array.ndim == 0:
        return float(array)
    if array.shape == (shape[0] + 2 * NBORDER, shape[1] + 2 * NBORDER):
        array = array[NBORDER:-NBORDER, NBORDER:-NBORDER]
    if array.shape != tuple(shape):
        raise ValueError(
            f"ramp_fit_datamodel: `{name}` of shape {array.shape} matches neither the science "
            f"pixels {tuple(shape)} nor them with the reference border"
        )
    return array


def ramp_fit_datamodel(ramp, *, read_noise, gain, method: str = "likely",
                       detect_jumps: bool = True):  # fmt: skip
    """Fit a roman_datamodels ``RampModel`` into an ``ImageModel``, as romancal's
    ``RampFitStep`` (see the module notes).

    Parameters
    ----------
    ramp : roman_datamodels RampModel
        After ``dq_init``, ``saturation``, ``linearity`` and ``dark_current``.
    read_noise : float, array ``[ny, nx]`` or ReadnoiseRefModel
        Read noise of one read [DN].
    gain : float, array ``[ny, nx]`` or GainRefModel
        [e/DN].
    method : {"likely", "casertano", "optimal"}, optional
        Ramp fitter (default ``"likely"``, romancal's default).
    detect_jumps : bool, optional
        Jump detection for ``"likely"`` and ``"casertano"`` (default True).

    Returns
    -------
    roman_datamodels ImageModel
        Validated.

    Raises
    ------
    ValueError
        If the read pattern, the data or a reference array does not fit the ramp.
    """
    datamodels = _require_datamodels("ramp_fit_datamodel")
    from ...l2 import make_l2
    from ._asdf import _roman_pattern

    pattern = _roman_pattern(ramp, "RampModel")
    data = np.asarray(ramp.data, np.float32)
    if data.ndim != 3 or data.shape[0] != pattern.n_resultants:
        raise ValueError(
            f"ramp_fit_datamodel: `ramp.data` of shape {data.shape} does not hold the "
            f"{pattern.n_resultants} resultants of meta.exposure.read_pattern"
        )
    shape = data.shape[1:]
    groupdq = np.asarray(ramp.groupdq, np.uint32)
    pixeldq = np.asarray(ramp.pixeldq, np.uint32)
    if groupdq.shape != data.shape or pixeldq.shape != shape:
        raise ValueError(
            f"ramp_fit_datamodel: `groupdq` {groupdq.shape} and `pixeldq` {pixeldq.shape} "
            f"must match the data {data.shape}"
        )
    keywords = {"detect_jumps": bool(detect_jumps)} if method != "optimal" else {}
    l2 = make_l2(data, pattern, read_noise=_reference_array(read_noise, "read_noise", shape),
                 gain=_reference_array(gain, "gain", shape), dq=groupdq, method=method,
                 pixel_flags="romancal", **keywords)  # fmt: skip
    image = datamodels.ImageModel.create_fake_data(shape=shape)
    zero_reference_arrays(image, pattern.n_resultants, shape)
    for node in _META_NODES:
        if node in ramp.meta:
            image.meta[node] = ramp.meta[node]
    image.meta.wcs = None
    if "cal_step" in image.meta and "ramp_fit" in image.meta.cal_step:
        image.meta.cal_step.ramp_fit = "COMPLETE"
    var_rnoise = np.asarray(l2.var_rnoise, np.float32)
    var_poisson = np.asarray(l2.var_poisson, np.float32)
    image.data = np.asarray(l2.slope, np.float32)
    image.dq = pixeldq | np.asarray(l2.dq, np.uint32)
    image.err = np.sqrt(var_rnoise + var_poisson).astype(image.err.dtype)
    image.var_poisson = var_poisson.astype(image.var_poisson.dtype)
    image.var_rnoise = var_rnoise.astype(image.var_poisson.dtype)
    image.chisq = np.zeros(shape, image.chisq.dtype)
    image.dumo = np.zeros(shape, image.dumo.dtype)
    image.validate()
    return image
