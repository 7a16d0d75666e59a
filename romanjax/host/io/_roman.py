"""Writing romanjax products as Roman datamodel files (roman_datamodels ``ScienceRawModel`` for
L1, ``ImageModel`` for L2) that ``roman_datamodels.open`` reads and validates.

Layout, as romanisim writes them:

* both: ``meta.instrument.detector`` / ``optical_element`` and ``meta.exposure.start_time``
  from the product's meta (``detector``, ``optical_element``, ``start_time``), else
  romanjax's simulation defaults (WFI07, F158) and the time of writing; ``meta.exposure``
  carries the read pattern (``read_pattern``, ``nresultants``, ``frame_time`` = the time of
  one read [s], ``exposure_time``) and, when its reads are those of an MA table
  (:data:`romanjax.MA_TABLES`), the table's ``ma_table_number`` (else the datamodel's
  default, which means unknown).
* L1: ``data`` [DN] uint16 ``[n_resultant, ny + 8, nx + 8]``: the science pixels surrounded
  by the 4-pixel reference-pixel border (zeros here: the simulation has no reference-pixel
  signal). No ``resultantdq``: see the flags below. An L1 with a reference read is written
  as flight data are, and as romanisim writes it: ``reference_read`` ``[ny + 8, nx + 8]`` (zero
  border), ``meta.instrument.data_encoding_offset``, ``data`` (border included) and
  ``amp33`` encoded as ``clip(value - reference + offset, 0, 65535)`` (the ``amp33``
  relative to a zero ``reference_amp33``), so :func:`romanjax.host.io.read_product`, romancal
  and romanisim decode them.
* L2: ``data`` [DN/s] float32, ``dq`` uint32 (the pixel flags, all 32 bits), and the
  schema's float16 ``err``, ``var_poisson`` and ``var_rnoise`` [(DN/s)**2] (float16 is what
  the schema asks for: about three significant digits).

What the schema has no place for (the L1 resultant flags, the full-precision variances, the
gain and read noise, romanjax's provenance and an astropy WCS) goes to a ``romanjax_extras``
node beside ``roman`` in the same file, so :func:`romanjax.host.io.read_product` gets back exactly
what was written while any Roman tool sees a valid datamodel. Roman's per-resultant flags
are uint8 (a ``ScienceRawModel``'s optional ``resultantdq``, which becomes a ``RampModel``'s
``groupdq``), so only the low 8 bits of romanjax's uint32 resultant flags would survive
there (``NONLINEAR``, ``NO_FLAT_FIELD`` and the other high bits would not): the L1 is
written without ``resultantdq`` and its full uint32 flags are kept as ``dq`` in the extras,
where :func:`romanjax.host.io.read_product` takes them from. A gwcs WCS is stored as
``meta.wcs``; an astropy (FITS) TAN WCS exactly in the extras and as an equal gwcs in
``meta.wcs`` (:func:`gwcs_from_fits`); no WCS is ``meta.wcs = None``, as romancal's ramp fit
writes before ``assign_wcs``.
"""

from __future__ import annotations

import datetime
from pathlib import Path

import numpy as np

from ..._read_pattern import MA_TABLES
from ._asdf import NBORDER, _scalar_or_array, atomic_path
from ._products import L1Image, L2Image


def _require_datamodels(function):
    try:
        import roman_datamodels.datamodels as datamodels
    except ImportError as error:
        raise ImportError(
            f"{function}: Roman datamodel files need roman_datamodels "
            "(pip install 'romanjax[datamodels]'), or write romanjax files (format='romanjax')"
        ) from error
    return datamodels


def _ma_table_number(pattern):
    """The number of the MA table (:data:`romanjax.MA_TABLES`) whose reads ``pattern`` has,
    else None. The read time plays no part: a table fixes which reads make each resultant."""
    for number, reads in MA_TABLES.items():
        if reads == pattern.reads:
            return number
    return None


def _exposure(model, pattern, start_time):
    from astropy.time import Time, TimeDelta

    exposure = model.meta.exposure
    number = _ma_table_number(pattern)
    if number is not None:  # else the datamodel's "unknown" default
        exposure.ma_table_number = number
    exposure.read_pattern = [list(map(int, reads)) for reads in pattern.reads]
    exposure.nresultants = int(pattern.n_resultants)
    exposure.frame_time = float(pattern.read_time)
    exposure.exposure_time = float(pattern.exposure_time)
    exposure.effective_exposure_time = float(pattern.tbar[-1] - pattern.tbar[0])
    if start_time is None:
        start_time = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)
    start = Time(start_time, scale="utc")
    exposure.start_time = start
    exposure.end_time = start + TimeDelta(float(pattern.exposure_time), format="sec")
    exposure.truncated = False


def gwcs_from_fits(wcs):
    """A gwcs equal to a celestial TAN (gnomonic) astropy WCS without distortion.

    ``pixel (0-based) -> Shift(-(CRPIX - 1)) -> CD matrix [deg] -> Pix2Sky_TAN ->
    RotateNative2Celestial(CRVAL, lon_pole=180)``: FITS' definition of a TAN projection
    (Calabretta & Greisen 2002), in gwcs's 0-based pixel convention.
    """
    from astropy import coordinates
    from astropy import units as u
    from astropy.modeling import models
    from gwcs import coordinate_frames as cf
    from gwcs import wcs as gwcs_wcs

    ctype = list(wcs.wcs.ctype)
    if wcs.naxis != 2 or not (ctype[0].startswith("RA---TAN") and ctype[1].startswith("DEC--TAN")) \
            or wcs.sip is not None or wcs.has_distortion:  # fmt: skip
        raise ValueError(
            f"gwcs_from_fits: only a 2-d RA---TAN/DEC--TAN WCS without distortion converts, "
            f"got {ctype}"
        )
    crpix = wcs.wcs.crpix
    crval = wcs.wcs.crval
    matrix = wcs.pixel_scale_matrix  # [deg/pixel]
    transform = (
        (models.Shift(-(crpix[0] - 1)) & models.Shift(-(crpix[1] - 1)))
        | models.AffineTransformation2D(matrix=matrix, translation=[0.0, 0.0])
        | models.Pix2Sky_TAN()
        | models.RotateNative2Celestial(crval[0], crval[1], 180.0)
    )
    detector = cf.Frame2D(name="detector", axes_names=("x", "y"), unit=(u.pix, u.pix))
    sky = cf.CelestialFrame(reference_frame=coordinates.ICRS(), name="world",
                            unit=(u.deg, u.deg))  # fmt: skip
    return gwcs_wcs.WCS([(detector, transform), (sky, None)])


def _wcs(model, wcs, extras):
    import gwcs

    if wcs is None:
        # no WCS (as romancal's ramp fit writes before assign_wcs); never the maker's
        # placeholder, which would place the image elsewhere on the sky
        model.meta.wcs = None
        return
    if isinstance(wcs, gwcs.WCS):
        model.meta.wcs = wcs
        return
    # an astropy WCS: kept exactly in the extras, and as an equal gwcs for Roman tools
    extras["fits_wcs"] = dict(wcs.to_header(relax=True))
    model.meta.wcs = gwcs_from_fits(wcs)


#: Detector and optical element written when a product's meta does not name them: those of
#: romanjax's simulations (``make_psf``'s defaults: SCA 7, F158).
DEFAULT_DETECTOR, DEFAULT_OPTICAL_ELEMENT = "WFI07", "F158"


def _instrument(model, meta):
    """``meta.instrument``: the detector and optical element the product names (``detector``
    as ``"WFI07"`` or 7, ``optical_element``), else romanjax's simulation defaults."""
    detector = meta.get("detector", DEFAULT_DETECTOR)
    if isinstance(detector, (int, np.integer)) or str(detector).isdigit():
        detector = f"WFI{int(detector):02d}"
    model.meta.instrument.detector = str(detector)
    model.meta.instrument.optical_element = str(meta.get("optical_element",
                                                         DEFAULT_OPTICAL_ELEMENT))


#: Width of the 33rd amplifier's (reference) output per row [pixels], as in Roman L1 files.
AMP33_WIDTH = 128


def zero_reference_arrays(model, n_resultants, shape):
    """Replace the maker's stand-in reference-pixel arrays by zeros of Roman's shapes: a
    simulation has no reference-pixel signal, and a fit none to report. ``shape`` is the
    science ``(ny, nx)`` (L2) or the full ``(ny + 8, nx + 8)`` (L1, which holds its border in
    ``data``)."""
    ny, nx = shape
    n, b = n_resultants, NBORDER
    arrays = {
        "amp33": np.zeros((n, ny, AMP33_WIDTH), np.uint16),
        "dq2": np.zeros((ny, nx), np.uint32),
        "border_ref_pix_left": np.zeros((n, ny, b), np.float32),
        "border_ref_pix_right": np.zeros((n, ny, b), np.float32),
        "border_ref_pix_top": np.zeros((n, b, nx), np.float32),
        "border_ref_pix_bottom": np.zeros((n, b, nx), np.float32),
        "dq_border_ref_pix_left": np.zeros((ny, b), np.uint32),
        "dq_border_ref_pix_right": np.zeros((ny, b), np.uint32),
        "dq_border_ref_pix_top": np.zeros((b, nx), np.uint32),
        "dq_border_ref_pix_bottom": np.zeros((b, nx), np.uint32),
    }
    for name, value in arrays.items():
        if name in model:
            setattr(model, name, value)


def _meta(product):
    meta = {}
    for key, value in dict(product.meta).items():
        meta[str(key)] = value if isinstance(value, (str, int, float, bool, list, dict)) or \
            value is None else str(value)  # fmt: skip
    return meta


def _datamodel_node(model):
    """The tagged node (``WfiImage``, ``WfiScienceRaw``, ...) a roman_datamodels model wraps:
    what the model's own ``save`` writes as the file's ``roman`` node.

    romanjax writes its ``romanjax_extras`` node beside ``roman`` in the same ASDF tree, and
    roman_datamodels has no public way to do that: ``DataModel.save`` / ``to_asdf`` build an
    ``AsdfFile`` holding ``roman`` alone, no public attribute or method returns the node,
    and the node classes live in the private ``roman_datamodels._stnode``. So this reads the
    model's private ``_instance``, the attribute ``to_asdf`` itself writes, here and nowhere
    else; ``tests/host/test_io.py`` checks that it is still the model's node, so a
    roman_datamodels release that changes it fails there, and a write fails with this
    message rather than with a corrupt file.
    """
    from roman_datamodels.datamodels import DataModel

    try:  # roman_datamodels 1.2 re-exports it here; 1.0 and 1.1 only in _stnode
        from roman_datamodels.datamodels import TaggedObjectNode
    except ImportError:
        from roman_datamodels._stnode import TaggedObjectNode

    try:
        node = model._instance if isinstance(model, DataModel) else None
    except (AttributeError, RecursionError):  # DataModel.__getattr__ looks in _instance too
        node = None
    if not isinstance(node, TaggedObjectNode):
        import roman_datamodels

        raise RuntimeError(
            f"romanjax cannot get the node of a {type(model).__name__} from roman_datamodels "
            f"{roman_datamodels.__version__} to write a Roman file; write a romanjax file "
            "(format 'romanjax') or use a roman_datamodels release romanjax supports"
        )
    return node


def _save(model, extras, path):
    import asdf

    path = Path(path)
    model.meta.filename = path.name
    model.validate()  # a schema error raises here, before any file is touched
    af = asdf.AsdfFile({"roman": _datamodel_node(model), "romanjax_extras": extras})
    arrays = [value for value in extras.values() if isinstance(value, np.ndarray)]
    arrays += [getattr(model, name) for name in model if isinstance(getattr(model, name, None),
                                                                    np.ndarray)]  # fmt: skip
    for value in arrays:
        if value.dtype.kind in "ui" or not value.any():
            af.set_array_compression(value, "zlib")  # flags and empty arrays: mostly zeros
    with atomic_path(path) as temporary:
        af.write_to(temporary)
    return path


def encode_whole_dn(data, reference, offset):
    """romanisim's ``encode_reference_read`` on host arrays:
    ``clip(data - reference + offset, 0, 65535)`` as uint16, computed in float64
    (:func:`romanjax.encode_reference_read` is the same on device)."""
    encoded = np.asarray(data).astype(np.float64) - np.asarray(reference)[None] + offset
    return np.clip(encoded, 0, np.iinfo(np.uint16).max).astype(np.uint16)


def _whole_dn(name, value, shape):
    value = np.asarray(value)
    if value.shape != shape:
        raise ValueError(f"to_roman_l1: `{name}` of shape {value.shape} is not the science "
                         f"pixels' shape {shape}")  # fmt: skip
    if not np.isfinite(value).all() or np.any(value != np.rint(value)) or \
            value.min(initial=0) < 0 or value.max(initial=0) > np.iinfo(np.uint16).max:
        raise ValueError(f"to_roman_l1: Roman L1 files store whole DN in 0..65535 (uint16), "
                         f"and `{name}` holds other values")  # fmt: skip
    return value


def to_roman_l1(l1: L1Image):
    """The ``ScienceRawModel`` of an :class:`L1Image` and its extras node (see the module
    notes)."""
    datamodels = _require_datamodels("to_roman_l1")
    resultants = np.asarray(l1.resultants)
    n, ny, nx = resultants.shape
    b = NBORDER
    model = datamodels.ScienceRawModel.create_fake_data(shape=(n, ny + 2 * b, nx + 2 * b))
    finite = np.isfinite(resultants)
    if not finite.all() or np.any(resultants != np.rint(resultants)) or \
            resultants.min(initial=0) < 0 or resultants.max(initial=0) > np.iinfo(np.uint16).max:
        raise ValueError(
            "to_roman_l1: Roman L1 files store whole DN in 0..65535 (uint16), and `resultants` "
            "holds other values; write a romanjax file instead (format 'romanjax')"
        )  # fmt: skip
    data = np.zeros((n, ny + 2 * b, nx + 2 * b), np.uint16)
    data[:, b:-b, b:-b] = resultants
    reference = None
    if l1.reference_read is not None:
        reference = np.zeros((ny + 2 * b, nx + 2 * b), np.uint16)
        reference[b:-b, b:-b] = _whole_dn("reference_read", l1.reference_read, (ny, nx))
        offset = int(l1.data_encoding_offset)
        if not 0 <= offset <= np.iinfo(np.uint16).max:
            raise ValueError(f"to_roman_l1: `data_encoding_offset` {offset} is not 0..65535")
        encoded = data.astype(np.float64) - reference[None] + offset
        if encoded.min(initial=0) < 0 or encoded.max(initial=0) > np.iinfo(np.uint16).max:
            raise ValueError(
                "to_roman_l1: `resultants` minus `reference_read` plus the data encoding "
                f"offset {offset} leaves 0..65535 (it would be clipped in the file, and the "
                "resultants read back would differ); write a romanjax file instead (format "
                "'romanjax')"
            )  # fmt: skip
        data = encode_whole_dn(data, reference, offset)
    model.data = data
    zero_reference_arrays(model, n, (ny + 2 * b, nx + 2 * b))
    if reference is not None:
        model.reference_read = reference
        model.reference_amp33 = np.zeros((ny + 2 * b, AMP33_WIDTH), np.uint16)
        model.amp33 = encode_whole_dn(np.zeros((n, ny + 2 * b, AMP33_WIDTH), np.uint16),
                                      model.reference_amp33, offset)  # fmt: skip
        model.meta.instrument.data_encoding_offset = offset
    _exposure(model, l1.pattern, l1.meta.get("start_time"))
    _instrument(model, l1.meta)
    extras = {"kind": "L1", "dq": np.asarray(l1.dq, np.uint32),
              "gain": _scalar_or_array(l1.gain), "read_noise": _scalar_or_array(l1.read_noise),
              "meta": _meta(l1)}  # fmt: skip
    _wcs(model, l1.wcs, extras)
    return model, extras


def to_roman_l2(l2: L2Image):
    """The ``ImageModel`` of an :class:`L2Image` and its extras node (see the module notes)."""
    datamodels = _require_datamodels("to_roman_l2")
    data = np.asarray(l2.data, np.float32)
    model = datamodels.ImageModel.create_fake_data(shape=data.shape)
    zero_reference_arrays(model, l2.pattern.n_resultants, data.shape)
    model.data = data
    model.dq = np.asarray(l2.dq, np.uint32)
    model.err = np.asarray(l2.err).astype(np.float16)
    model.var_poisson = np.asarray(l2.var_poisson).astype(np.float16)
    model.var_rnoise = np.asarray(l2.var_rnoise).astype(np.float16)
    for name in ("chisq", "dumo"):  # not computed by the slope fit: zeros, not placeholders
        if name in model:
            setattr(model, name, np.zeros(data.shape, np.float16))
    _exposure(model, l2.pattern, l2.meta.get("start_time"))
    _instrument(model, l2.meta)
    extras = {"kind": "L2", "var_rnoise": np.asarray(l2.var_rnoise, np.float32),
              "var_poisson": np.asarray(l2.var_poisson, np.float32),
              "err": np.asarray(l2.err, np.float32),
              "gain": _scalar_or_array(l2.gain), "read_noise": _scalar_or_array(l2.read_noise),
              "meta": _meta(l2)}  # fmt: skip
    _wcs(model, l2.wcs, extras)
    return model, extras


def write_roman_l1(path, l1: L1Image):
    """Write an :class:`L1Image` as a Roman ``ScienceRawModel`` file (atomically).

    The resultant flags ``l1.dq`` (uint32) are written whole to the ``romanjax_extras`` node
    and not to the model: Roman's per-resultant flags (``resultantdq``, a ``RampModel``'s
    ``groupdq``) are uint8 and would keep only their low 8 bits. :func:`romanjax.host.io.read_l1`
    reads them back exactly; other Roman tools see an L1 without resultant flags.

    Returns the path. Raises ImportError without roman_datamodels."""
    return _save(*to_roman_l1(l1), path)


def write_roman_l2(path, l2: L2Image):
    """Write an :class:`L2Image` as a Roman ``ImageModel`` file (atomically).

    The pixel flags ``l2.dq`` go whole to the model's ``dq``, which is uint32 as they are.

    Returns the path. Raises ImportError without roman_datamodels."""
    return _save(*to_roman_l2(l2), path)
