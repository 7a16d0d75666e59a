"""Inject sources into an existing L2 image (romanisim ``image.inject_sources_into_l2``) or
L1 exposure.

Host-side: galsim renders the sources; the Poisson draw, the apportioning of the new counts
over the reads (:func:`romanjax.apportion_counts`), the refit of the touched L2 pixels
(:func:`romanjax.make_l2`) and the addition to L1 resultants
(:func:`romanjax.inject_counts_into_l1`) run in JAX.
"""

from __future__ import annotations

import copy

import numpy as np

from .. import dq as dqflags
from .io._products import DEFAULT_GAIN, DEFAULT_READ_NOISE, L1Image, L2Image

__all__ = ["inject_sources_into_l2", "inject_sources_into_l1"]

_MIN_BUCKET = 1024


def _bucket(n: int) -> int:
    """Pad the number of refitted pixels to a power of two so repeated injections with
    different source counts reuse a handful of compiled kernels."""
    return max(_MIN_BUCKET, 1 << int(np.ceil(np.log2(max(n, 1)))))


def _as_table(catalog):
    from astropy.table import Table

    if isinstance(catalog, Table):
        return catalog
    try:
        return Table(catalog)
    except Exception as error:
        raise ValueError(
            f"inject_sources_into_l2: `catalog` must be an astropy Table or a mapping of "
            f"columns, got {type(catalog).__name__} ({error})"
        ) from error


def _is_datamodel(image) -> bool:
    module = type(image).__module__
    return module.startswith("roman_datamodels")


def _optional_column(table, *names):
    for name in names:
        if name in table.colnames:
            return np.asarray(table[name], float)
    return None


def _pixel_flags(image, shape):
    try:
        dq = image.dq
    except (AttributeError, KeyError):
        dq = None
    return np.zeros(shape, np.uint32) if dq is None else np.asarray(dq).astype(np.uint32)


def _old_values(image, name, mask):
    try:
        values = getattr(image, name)
    except (AttributeError, KeyError):
        return None
    return None if values is None else np.asarray(values, np.float64)[mask]


def _per_pixel_values(value, mask):
    array = np.asarray(value, np.float64)
    return array[mask] if array.ndim else np.full(int(mask.sum()), float(array))


def _source_counts(function, catalog, wcs, shape, pattern, key, psf, stamp_size, progress):
    """Poisson electrons ``[*shape]`` (int64) of the catalog's sources over the exposure,
    and the key left for apportioning them."""
    import jax
    import jax.numpy as jnp

    from .scene import pixel_positions, render_sources

    table = _as_table(catalog)
    if "flux" not in table.colnames:
        raise ValueError(
            f"{function}: `catalog` needs a `flux` column [e/s]; it has {table.colnames}"
        )
    try:
        x, y = pixel_positions(table, wcs, shape)
    except ValueError as error:
        raise ValueError(f"{function}: {error}") from None
    flux = np.asarray(table["flux"], float)
    expected = render_sources(
        shape, x, y, flux * pattern.exposure_time, wcs=wcs, psf=psf,
        half_light_radius=_optional_column(table, "half_light_radius"),
        sersic_n=_optional_column(table, "n", "sersic_n"),
        axis_ratio=_optional_column(table, "q", "axis_ratio"),
        position_angle=_optional_column(table, "beta", "position_angle"),
        stamp_size=stamp_size, progress=progress,
    )  # fmt: skip
    candidates = expected != 0
    key_counts, key_reads = jax.random.split(key)
    lam = np.clip(expected[candidates], 0, None)
    counts = np.zeros(shape, np.int64)
    counts[candidates] = np.asarray(jax.random.poisson(key_counts, jnp.asarray(lam)))
    return counts, key_reads


def inject_sources_into_l1(image: L1Image, catalog, *, key, psf=None, gain=None,
                           saturation=55000.0, stamp_size=None, progress=False,
                           inverse_linearity=None) -> L1Image:
    """Add sources to an L1 exposure as if they had been in it; returns a new L1Image.

    The sources are rendered and drawn as :func:`inject_sources_into_l2` draws them
    (expected electrons ``flux * exposure_time`` drawn with galsim, Poisson counts), then
    apportioned over the reads and added to the resultants by
    :func:`romanjax.inject_counts_into_l1`: new cosmic rays are not added, existing flags
    are kept, saturation is applied and flagged again, and pixels that receive no electrons
    are unchanged bit for bit. The result is an L1 like any other: fit it with
    :func:`romanjax.make_l2` (jump detection then treats the pixels with cosmic rays as the
    pipeline would, which L2 injection cannot).

    Parameters
    ----------
    image : romanjax.host.io.L1Image
        The L1 exposure (e.g. :func:`romanjax.host.io.read_l1` of a romanjax or romanisim file);
        not modified. Its response must be linear in charge unless ``inverse_linearity``
        is given (see :func:`romanjax.inject_counts_into_l1`).
    catalog, key, psf, stamp_size, progress
        As :func:`inject_sources_into_l2`.
    gain : float or array ``[ny, nx]``, optional
        [e/DN]; default the image's gain.
    saturation : float or array ``[ny, nx]``
        [DN] (default 55000, :func:`romanjax.simulate_l1`'s).
    inverse_linearity : array ``[ncoeff]`` or ``[ncoeff, ny, nx]``, optional
        The inverse non-linearity the L1 was simulated with (romanisim
        ``inverselinearity``, polynomial in DN, constant term first): the resultants are
        linearised by its exact inverse, the electrons added and the non-linearity
        re-applied (:func:`romanjax.inject_counts_into_l1`). The L1 file does not store it.

    Returns
    -------
    romanjax.host.io.L1Image
        A new L1 image: the resultants with the sources' electrons, the flags with any new
        ``SATURATED``; pattern, gain, read noise and WCS as the input's.

    Raises
    ------
    ValueError
        If ``image`` is not an L1Image, or the catalog lacks ``flux`` or positions, or as
        :func:`romanjax.inject_counts_into_l1` for ``gain``, ``saturation`` and
        ``inverse_linearity``.
    """
    from ..l1._inject import inject_counts_into_l1

    if not isinstance(image, L1Image):
        raise ValueError("inject_sources_into_l1: `image` must be a romanjax.host.io.L1Image, got "
                         f"{type(image).__name__}")  # fmt: skip
    gain = image.gain if gain is None else gain
    shape = tuple(image.resultants.shape[1:])
    counts, key_reads = _source_counts("inject_sources_into_l1", catalog, image.wcs, shape,
                                       image.pattern, key, psf, stamp_size, progress)  # fmt: skip
    new = inject_counts_into_l1(key_reads, image.resultants, counts, image.pattern,
                                dq=image.dq, gain=gain, saturation=saturation,
                                inverse_linearity=inverse_linearity)  # fmt: skip
    out = copy.copy(image)
    out.resultants = np.asarray(new.resultants).astype(image.resultants.dtype, copy=False)
    out.dq = np.asarray(new.dq, np.uint32)
    out.meta = dict(image.meta)
    return out


def inject_sources_into_l2(image, catalog, *, key, psf=None, gain=None, read_noise=None,
                           method="casertano", stamp_size=None, progress=False):  # fmt: skip
    """Add sources to an L2 image as if they had been in the exposure; returns a new image.

    As romanisim's ``inject_sources_into_l2``: the expected electrons of the sources,
    ``flux * exposure_time``, are drawn with galsim into a zero image; pixels with nonzero
    expectation get Poisson counts; the counts are apportioned over the reads of the image's
    read pattern (:func:`romanjax.apportion_counts`, no pedestal, no noise); a noiseless
    "virtual ramp" ``data * tbar`` [DN] is made from the existing slope image, the new
    counts / gain are added, and only the pixels that received counts are refitted
    (:func:`romanjax.make_l2`, jitted) and replaced in ``data``, ``var_rnoise``,
    ``var_poisson`` and ``err``. Every other array and pixel is bit-identical to the input;
    ``dq`` is unchanged. Because the fitted slope is linear in the ramp, the new slope is
    the old slope plus the fitted injected slope; weights and Poisson variance follow the
    total signal, and the read variance is recomputed from the read noise.

    Pixels whose dq carries ``JUMP_DET``, ``SATURATED`` or ``DO_NOT_USE`` were fitted from
    split ramps, whose read-noise variance the unsplit virtual ramp would understate: they
    keep their ``var_rnoise`` (never smaller) and get their old ``var_poisson`` plus the
    Poisson variance of the new electrons (the refit's, times the new share of the rate).
    Arrays of a fit that the refit cannot recompute (romancal's ``chisq`` and ``dumo``) keep
    their values: the injected electrons follow a straight ramp in expectation, so they
    change neither beyond their own noise. For cosmic-ray pixels treated as the pipeline
    would, inject into the L1 instead (:func:`inject_sources_into_l1`).

    Parameters
    ----------
    image : romanjax.host.io.L2Image or roman_datamodels ImageModel
        The L2 image (e.g. from :func:`romanjax.host.io.read_l2`, or a romanisim ``ImageModel``
        from ``roman_datamodels.open``, or the ``WfiImage`` node ``romanisim.image.simulate``
        returns). It is not modified (deep copy). Arrays the image does not have (recent
        roman_datamodels ``ImageModel``s carry no ``var_rnoise``) are not added.
    catalog : astropy.table.Table or mapping of columns
        ``flux`` [e/s] and either ``x``, ``y`` (0-based pixels) or ``ra``, ``dec`` [deg]
        (converted with the image's WCS, astropy or gwcs). Optional galaxy shape columns:
        ``half_light_radius`` [arcsec] (NaN or <= 0: point source), ``n`` (Sersic index,
        default 1), ``q`` (axis ratio b/a) and ``beta`` [deg] (position angle).
    key : jax.random.PRNGKey
        Randomness for the Poisson counts and their apportioning.
    psf : galsim.GSObject or {"airy", "gaussian", "roman"}, optional
        Default: Roman's obscured Airy pattern at 1.58 micron; ``"roman"`` uses
        ``galsim.roman.getPSF`` (see :func:`romanjax.host.scene.make_psf`).
    gain : float or array ``[ny, nx]``, optional
        [e/DN]. Default: the image's ``gain`` when it carries one (romanjax L2 images), else
        romanisim's default 2 e/DN (roman_datamodels images carry no gain).
    read_noise : float or array ``[ny, nx]``, optional
        Read noise of one read [DN] used in the refit. Default: the image's ``read_noise``
        when it carries one (romanjax L2 images), else romanisim's default 5 DN.
    method : {"casertano", "optimal", "likely"}
        Fitter for the refit (romanisim uses Casertano).
    stamp_size : int, optional
        Side of the stamp each source is drawn on [pixels]; pixels outside every stamp are
        never touched. Default: galsim's good image size for the profile (at most 256).
    progress : bool
        Show a progress bar while rendering.

    Returns
    -------
    Same type as ``image``
        A new image with the sources added.

    Raises
    ------
    ValueError
        If ``image`` is not an L2 image, the catalog lacks ``flux`` or positions, or
        positions are given as ``ra``, ``dec`` for an image without WCS.
    """

    import romanjax

    from ..l2 import make_l2

    if isinstance(image, L2Image):
        out = image.copy()
        pattern = out.pattern
        wcs = out.wcs
        image_gain, image_read_noise = out.gain, out.read_noise
    elif _is_datamodel(image):
        from roman_datamodels import DataModel

        # DataModel.copy() is a deep copy; bare stnodes (romanisim's WfiImage) are deep-copied
        out = image.copy() if isinstance(image, DataModel) else copy.deepcopy(image)
        try:
            pattern = romanjax.ReadPattern([list(r) for r in out.meta.exposure.read_pattern])
        except Exception as error:
            raise ValueError(
                f"inject_sources_into_l2: `image` has no usable meta.exposure.read_pattern "
                f"({error})"
            ) from error
        try:
            wcs = out.meta.wcs
        except (AttributeError, KeyError):
            wcs = None
        image_gain, image_read_noise = DEFAULT_GAIN, DEFAULT_READ_NOISE
    else:
        raise ValueError(
            "inject_sources_into_l2: `image` must be a romanjax.host.io.L2Image or a "
            f"roman_datamodels ImageModel, got {type(image).__name__}"
        )
    gain = image_gain if gain is None else gain
    read_noise = image_read_noise if read_noise is None else read_noise

    data = np.asarray(out.data)
    shape = data.shape
    counts, key_reads = _source_counts("inject_sources_into_l2", catalog, wcs, shape, pattern,
                                       key, psf, stamp_size, progress)  # fmt: skip
    mask = counts != 0
    n_pixels = int(mask.sum())
    if n_pixels == 0:
        return out

    size = _bucket(n_pixels)
    padded_counts = np.zeros(size, np.int32)
    padded_counts[:n_pixels] = counts[mask]
    new_electrons = np.asarray(romanjax.apportion_counts(key_reads, padded_counts, pattern))
    gain_m = np.ones(size)
    gain_m[:n_pixels] = _per_pixel_values(gain, mask)
    read_noise_m = np.full(size, float(np.mean(read_noise)))
    read_noise_m[:n_pixels] = _per_pixel_values(read_noise, mask)
    old_slope = np.zeros(size)
    old_slope[:n_pixels] = data[mask]
    # virtual noiseless ramp of the existing slope [DN], plus the new counts [DN]
    ramp = old_slope[None, :] * pattern.tbar[:, None] + new_electrons / gain_m[None, :]
    fitted = make_l2(
        ramp.astype(data.dtype), pattern, read_noise=read_noise_m.astype(data.dtype),
        gain=gain_m.astype(data.dtype), method=method,
    )  # fmt: skip
    slope = np.asarray(fitted.slope)[:n_pixels]
    var_rnoise = np.asarray(fitted.var_rnoise)[:n_pixels]
    var_poisson = np.asarray(fitted.var_poisson)[:n_pixels]
    # Pixels whose ramp was split (a jump, saturation) or flagged: the noiseless virtual ramp
    # is one unsplit ramp, whose read-noise variance is smaller than the split ramp's. They
    # keep their read-noise variance and add the Poisson variance of the new electrons
    # (the refit's Poisson variance, proportional to the rate, times the new share of it).
    flags = _pixel_flags(out, shape)[mask]
    split = (flags & (dqflags.DO_NOT_USE_IN_FIT | dqflags.DO_NOT_USE)) != 0
    if split.any():
        old_rnoise = _old_values(out, "var_rnoise", mask)
        old_poisson = _old_values(out, "var_poisson", mask)
        new_share = np.clip(1 - old_slope[:n_pixels] / np.where(slope > 0, slope, np.inf),
                            0, 1)  # fmt: skip
        if old_rnoise is not None:
            var_rnoise = np.where(split, np.maximum(old_rnoise, var_rnoise), var_rnoise)
        if old_poisson is not None:
            var_poisson = np.where(split, old_poisson + var_poisson * new_share, var_poisson)

    def replace(name, values):
        try:
            array = getattr(out, name)
        except (AttributeError, KeyError):
            return
        if array is None:
            return
        array = np.array(array)  # writable copy, whatever the model holds
        array[mask] = values.astype(array.dtype)
        setattr(out, name, array)

    replace("data", slope)
    replace("var_rnoise", var_rnoise)
    replace("var_poisson", var_poisson)
    replace("err", np.sqrt(var_rnoise + var_poisson))
    return out
