"""Host-side source rendering with galsim: PSFs, stars and galaxies on a WCS, and the
built-in demonstration scene of ``romanjax simulate``.

Positions are 0-based pixel coordinates (numpy ``array[y, x]``; pixel centres at integer
values, astropy's convention). Each source is drawn on a stamp with the WCS's local Jacobian
at its position (so the pixel scale and distortion of the image are respected) and added to
the image. Images are in expected electrons (or e/s, whichever the fluxes are in).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

__all__ = [
    "ROMAN_DIAMETER",
    "ROMAN_OBSCURATION",
    "ROMAN_PIXEL_SCALE",
    "make_wcs",
    "local_jacobian",
    "make_psf",
    "source_profile",
    "render_sources",
    "pixel_positions",
    "Scene",
    "make_scene",
]

#: Roman telescope aperture [m], central obscuration (linear fraction) and WFI pixel scale
#: [arcsec/pixel], as galsim.roman.
ROMAN_DIAMETER = 2.36
ROMAN_OBSCURATION = 0.32
ROMAN_PIXEL_SCALE = 0.11
#: Largest stamp drawn for one source [pixels].
MAX_STAMP = 256


def make_wcs(shape, *, ra=270.0, dec=66.0, pixel_scale=ROMAN_PIXEL_SCALE, rotation=0.0):
    """A gnomonic (TAN) astropy WCS centred on ``(ra, dec)`` [deg] for an image of ``shape``
    ``(ny, nx)``, with ``pixel_scale`` [arcsec/pixel] and north rotated by ``rotation``
    [deg]; RA increases to the left (east left, north up at rotation 0)."""
    from astropy.wcs import WCS

    ny, nx = shape
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [ra, dec]
    wcs.wcs.crpix = [(nx + 1) / 2, (ny + 1) / 2]  # FITS 1-based
    scale = pixel_scale / 3600.0
    c, s = np.cos(np.radians(rotation)), np.sin(np.radians(rotation))
    wcs.wcs.cd = scale * np.array([[-c, s], [s, c]])
    wcs.pixel_shape = (nx, ny)
    return wcs


def _pixel_to_world(wcs, x, y):
    ra, dec = wcs.pixel_to_world_values(np.asarray(x, float), np.asarray(y, float))
    return np.asarray(ra, float), np.asarray(dec, float)


def local_jacobian(wcs, x, y, *, step=0.5):
    """The local affine WCS (``galsim.JacobianWCS``, arcsec per pixel) of ``wcs`` at pixel
    ``(x, y)``, from central differences of ``pixel_to_world_values``; u points west
    (-RA cos dec), v north, galsim's convention. ``wcs=None``: Roman's 0.11"/pixel."""
    import galsim

    if wcs is None:
        return galsim.JacobianWCS(ROMAN_PIXEL_SCALE, 0.0, 0.0, ROMAN_PIXEL_SCALE)
    xs = np.array([x + step, x - step, x, x])
    ys = np.array([y, y, y + step, y - step])
    ra, dec = _pixel_to_world(wcs, xs, ys)
    ra0, dec0 = _pixel_to_world(wcs, x, y)
    cosd = np.cos(np.radians(dec0))
    du = -((ra - ra0 + 180.0) % 360.0 - 180.0) * cosd * 3600.0
    dv = (dec - dec0) * 3600.0
    h = 2 * step
    return galsim.JacobianWCS(
        float((du[0] - du[1]) / h), float((du[2] - du[3]) / h),
        float((dv[0] - dv[1]) / h), float((dv[2] - dv[3]) / h),
    )  # fmt: skip


def make_psf(kind="airy", *, wavelength=1.58, sca=7, filter_name="H158", pupil_bin=8):
    """A galsim PSF (achromatic, unit flux, arcsec units).

    Parameters
    ----------
    kind : {"airy", "gaussian", "roman"} or galsim.GSObject
        ``"airy"`` (default): obscured Airy pattern of Roman's 2.36 m aperture (obscuration
        0.32) at ``wavelength``; ``"gaussian"``: a Gaussian with the Airy core's FWHM
        (1.03 lambda/D); ``"roman"``: ``galsim.roman.getPSF(sca, filter_name)`` at
        ``wavelength`` (slower: ~0.5 s per call); a GSObject is returned unchanged.
    wavelength : float
        [micron] (F158/H158 is centred at ~1.58 micron).
    """
    import galsim

    if isinstance(kind, galsim.GSObject):
        return kind
    lam_nm = wavelength * 1e3
    if kind == "airy":
        return galsim.Airy(
            lam=lam_nm, diam=ROMAN_DIAMETER, obscuration=ROMAN_OBSCURATION,
            scale_unit=galsim.arcsec,
        )  # fmt: skip
    if kind == "gaussian":
        fwhm = 1.03 * wavelength * 1e-6 / ROMAN_DIAMETER * 206264.806
        return galsim.Gaussian(fwhm=fwhm)
    if kind == "roman":
        import galsim.roman

        return galsim.roman.getPSF(sca, filter_name, wavelength=lam_nm, pupil_bin=pupil_bin)
    raise ValueError(f"make_psf: unknown PSF `kind` {kind!r}; use 'airy', 'gaussian', 'roman'")


def source_profile(half_light_radius=None, sersic_n=None, axis_ratio=None,
                   position_angle=None):  # fmt: skip
    """The intrinsic galsim profile of one source (unit flux): a point source when
    ``half_light_radius`` [arcsec] is missing, not finite or <= 0, else a Sersic galaxy of
    index ``sersic_n`` (default 1, clipped to galsim's 0.3..6.2), sheared to ``axis_ratio``
    (b/a) at ``position_angle`` [deg]."""
    import galsim

    if half_light_radius is None or not np.isfinite(half_light_radius) or half_light_radius <= 0:
        return None
    n = 1.0 if sersic_n is None or not np.isfinite(sersic_n) else float(np.clip(sersic_n, 0.3, 6.2))
    galaxy = galsim.Sersic(n=n, half_light_radius=float(half_light_radius))
    if axis_ratio is not None and np.isfinite(axis_ratio) and 0 < axis_ratio < 1:
        beta = 0.0 if position_angle is None or not np.isfinite(position_angle) else position_angle
        galaxy = galaxy.shear(q=float(axis_ratio), beta=float(beta) * galsim.degrees)
    return galaxy


def render_sources(shape, x, y, flux, *, wcs=None, psf=None, half_light_radius=None,
                   sersic_n=None, axis_ratio=None, position_angle=None, stamp_size=None,
                   progress=False):  # fmt: skip
    """Draw sources (PSF-convolved, pixel-integrated) into a zero image of ``shape``.

    Parameters
    ----------
    shape : (ny, nx)
    x, y : array ``[n_source]``
        0-based pixel positions (sources may lie off the image; their light on it is kept).
    flux : array ``[n_source]``
        Total flux of each source, in the unit the image should have ([e] or [e/s]).
    wcs : astropy.wcs.WCS or gwcs.WCS, optional
        Sets the local pixel scale and orientation; None: 0.11"/pixel, north up.
    psf : galsim.GSObject or str, optional
        See :func:`make_psf`; default the Roman Airy pattern at 1.58 micron.
    half_light_radius, sersic_n, axis_ratio, position_angle : array ``[n_source]``, optional
        Galaxy shape per source (see :func:`source_profile`); NaN/<= 0 radius: point source.
    stamp_size : int, optional
        Side of the square stamp each source is drawn on [pixels] (light outside is lost).
        Default: galsim's good image size for the profile, at most 256.
    progress : bool
        Show a tqdm progress bar.

    Returns
    -------
    numpy.ndarray ``[ny, nx]`` float64
    """
    import galsim

    psf = make_psf("airy" if psf is None else psf)
    ny, nx = shape
    image = galsim.ImageD(nx, ny, xmin=0, ymin=0)
    x = np.atleast_1d(np.asarray(x, float))
    y = np.atleast_1d(np.asarray(y, float))
    flux = np.broadcast_to(np.asarray(flux, float), x.shape)

    def column(values):
        if values is None:
            return [None] * len(x)
        return list(np.broadcast_to(np.asarray(values, float), x.shape))

    hlr, nn, qq, pa = (column(v) for v in (half_light_radius, sersic_n, axis_ratio,
                                           position_angle))  # fmt: skip
    indices = range(len(x))
    if progress:
        from tqdm.auto import tqdm

        indices = tqdm(indices, desc="rendering sources", unit="src", leave=False)
    for i in indices:
        if not (np.isfinite(x[i]) and np.isfinite(y[i]) and np.isfinite(flux[i])) or flux[i] == 0:
            continue
        jacobian = local_jacobian(wcs, x[i], y[i])
        galaxy = source_profile(hlr[i], nn[i], qq[i], pa[i])
        obj = psf if galaxy is None else galsim.Convolve(galaxy, psf)
        obj = obj.withFlux(float(flux[i]))
        if stamp_size is None:
            size = min(obj.getGoodImageSize(jacobian.minLinearScale()), MAX_STAMP)
        else:
            size = int(stamp_size)
        size -= size % 2  # the stamp spans size + 1 pixels centred on the nearest pixel
        ix, iy = int(np.floor(x[i] + 0.5)), int(np.floor(y[i] + 0.5))
        bounds = galsim.BoundsI(ix - size // 2, ix + size // 2, iy - size // 2, iy + size // 2)
        overlap = bounds & image.bounds
        if not overlap.isDefined():
            continue
        stamp = galsim.ImageD(bounds, wcs=jacobian)
        obj.drawImage(image=stamp, center=galsim.PositionD(x[i], y[i]))
        image[overlap] += stamp[overlap]
    return image.array


def pixel_positions(catalog, wcs, shape=None):
    """0-based pixel ``(x, y)`` of a catalog: its ``x``, ``y`` columns, else ``ra``, ``dec``
    [deg] through ``wcs`` (astropy or gwcs). When the WCS has no usable inverse (some gwcs),
    the forward transform is inverted by Newton iterations started at the centre of
    ``shape``."""
    names = set(catalog.colnames)
    if {"x", "y"} <= names:
        return np.asarray(catalog["x"], float), np.asarray(catalog["y"], float)
    if not {"ra", "dec"} <= names:
        raise ValueError(
            "`catalog` needs `x`, `y` (0-based pixels) or `ra`, `dec` (deg) columns; it has "
            f"{sorted(names)}"
        )
    if wcs is None:
        raise ValueError("`catalog` gives `ra`, `dec` but the image has no WCS; give `x`, `y`")
    ra = np.atleast_1d(np.asarray(_plain(catalog["ra"]), float))
    dec = np.atleast_1d(np.asarray(_plain(catalog["dec"]), float))
    try:
        x, y = wcs.world_to_pixel_values(ra, dec)
        x, y = np.atleast_1d(np.asarray(x, float)), np.atleast_1d(np.asarray(y, float))
        if np.all(np.isfinite(x)) and np.all(np.isfinite(y)):
            return x, y
    except Exception:  # noqa: BLE001 - gwcs inverses fail in many ways; invert numerically
        pass
    return _newton_inverse(wcs, ra, dec, shape)


def _newton_inverse(wcs, ra, dec, shape, iterations=30, step=0.5):
    """Invert ``pixel_to_world_values`` by Newton's method on tangent-plane offsets."""
    ny, nx = shape if shape is not None else (0, 0)
    x = np.full(ra.shape, (nx - 1) / 2.0)
    y = np.full(ra.shape, (ny - 1) / 2.0)

    def offsets(xx, yy):
        r, d = _pixel_to_world(wcs, xx, yy)
        du = ((ra - r + 180.0) % 360.0 - 180.0) * np.cos(np.radians(dec))
        return du, dec - d

    for _ in range(iterations):
        du, dv = offsets(x, y)
        if np.all(np.hypot(du, dv) * 3600 < 1e-6):
            break
        ux1, vx1 = offsets(x + step, y)
        uy1, vy1 = offsets(x, y + step)
        # offsets shrink by the Jacobian times the step
        a, b = (du - ux1) / step, (du - uy1) / step
        c, d = (dv - vx1) / step, (dv - vy1) / step
        det = a * d - b * c
        x = x + (d * du - b * dv) / det
        y = y + (-c * du + a * dv) / det
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise ValueError("could not convert `ra`, `dec` to pixels with the image's WCS")
    return x, y


def _plain(column):
    """A catalog column as plain values (degrees when it is an astropy Quantity)."""
    try:
        import astropy.units as u

        if getattr(column, "unit", None) is not None:
            return u.Quantity(column).to_value(u.deg)
    except Exception:  # not an angle: take the numbers as they are
        pass
    return np.asarray(column)


class Scene(NamedTuple):
    """The built-in scene: ``rate [ny, nx]`` expected electrons per second (sources + sky),
    its source ``catalog`` (astropy Table: x, y, ra, dec, flux [e/s], half_light_radius
    [arcsec], n, q, beta [deg], type) and the ``wcs`` (astropy)."""

    rate: np.ndarray
    catalog: object
    wcs: object


def make_scene(shape=(512, 512), *, seed=0, n_stars=None, n_galaxies=None, sky=1.0,
               psf=None, ra=270.0, dec=66.0, progress=False) -> Scene:  # fmt: skip
    """A field of stars and galaxies rendered with galsim on a TAN WCS [e/s].

    Star fluxes follow a power law (dN/dF ~ F**-2) from 5 to 3e4 e/s, so the brightest
    saturate in a 140 s exposure; galaxies are Sersic profiles (n in {1, 1.5, 2.5, 4},
    half-light radius 0.15-0.8", axis ratio 0.3-1) of 20-3000 e/s. Default densities:
    one star per ~2000 pixels and one galaxy per ~3000 pixels; ``sky`` [e/s/pixel] is flat.
    """
    from astropy.table import Table

    ny, nx = shape
    rng = np.random.default_rng(seed)
    area = nx * ny
    n_stars = max(1, area // 2000) if n_stars is None else int(n_stars)
    n_galaxies = max(1, area // 3000) if n_galaxies is None else int(n_galaxies)
    wcs = make_wcs(shape, ra=ra, dec=dec)
    n = n_stars + n_galaxies
    x = rng.uniform(-0.5, nx - 0.5, n)
    y = rng.uniform(-0.5, ny - 0.5, n)
    low, high = 5.0, 3e4
    u = rng.uniform(size=n_stars)
    star_flux = 1.0 / (1.0 / low - u * (1.0 / low - 1.0 / high))  # dN/dF ~ F^-2
    galaxy_flux = np.exp(rng.uniform(np.log(20.0), np.log(3000.0), n_galaxies))
    hlr = np.concatenate([np.full(n_stars, np.nan), rng.uniform(0.15, 0.8, n_galaxies)])
    sersic = np.concatenate([np.full(n_stars, np.nan),
                             rng.choice([1.0, 1.5, 2.5, 4.0], n_galaxies)])  # fmt: skip
    q = np.concatenate([np.full(n_stars, np.nan), rng.uniform(0.3, 1.0, n_galaxies)])
    beta = np.concatenate([np.full(n_stars, np.nan), rng.uniform(0, 180, n_galaxies)])
    flux = np.concatenate([star_flux, galaxy_flux])
    ra_s, dec_s = _pixel_to_world(wcs, x, y)
    catalog = Table(
        {"x": x, "y": y, "ra": ra_s, "dec": dec_s, "flux": flux, "half_light_radius": hlr,
         "n": sersic, "q": q, "beta": beta,
         "type": np.array(["star"] * n_stars + ["galaxy"] * n_galaxies)}
    )  # fmt: skip
    rate = render_sources(
        shape, x, y, flux, wcs=wcs, psf=psf, half_light_radius=hlr, sersic_n=sersic,
        axis_ratio=q, position_angle=beta, progress=progress,
    )  # fmt: skip
    return Scene(rate=rate + sky, catalog=catalog, wcs=wcs)
