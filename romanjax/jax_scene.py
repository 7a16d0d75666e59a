"""Differentiable scenes: galaxies rendered with JAX-GalSim, from scene parameters to the
likelihood of observed resultants and the Fisher information of the parameters.

A *stamp* is a small image around one source. :class:`StampModel` holds what is fixed about
it (its shape, the local affine WCS, the PSF, the galaxy profile and the drawing accuracy);
:class:`GalaxyParams` holds what a fit varies: the flux [e/s], the centroid offset [pixel],
the half-light radius [arcsec], the reduced shear (g1, g2) and the sky [e/s/pixel].
:func:`render_rate` turns the two into a count-rate image [e/s per pixel];
:func:`scene_log_likelihood` puts :func:`romanjax.ramp_log_likelihood` on top of it, so the
log-likelihood of a stamp's resultants is a differentiable function of every parameter,
usable under ``jit``, ``vmap`` (over stamps), ``grad``, ``jacfwd`` and ``hessian``.

Fisher information. Pixels are independent and the parameters reach a pixel's resultants
only through its count rate ``f_p(theta)``, so

``F_ab = sum_p I_p (d f_p / d theta_a) (d f_p / d theta_b)``,

with ``I_p`` the information of one pixel's data about its count rate:
:func:`scene_fisher_resultants` takes ``I_p = 1 / fisher_slope_variance`` (the exact
resultant covariance, Casertano 2022; the pedestal free unless told otherwise), and
:func:`scene_fisher_slopes` takes ``I_p = 1 / Var(slope_p)`` with the variance of the slope
image a fitter delivered (L2 ``var_poisson + var_rnoise``), which is never smaller. Their
inverses bound the covariance of any unbiased estimate of the parameters from the
resultants and from the slope image: the difference is what fitting the resultants directly
gains.

Drawing. JAX-GalSim draws a convolution by FFT. Under ``jit`` the FFT size cannot depend on
traced values, so it is fixed (``fft_size``); with a fixed size JAX-GalSim keeps only the
Fourier modes below the Nyquist frequency of the image it draws, which aliases an
undersampled PSF (Roman's is: 0.11" pixels, a 0.13"-0.15" core). The stamp is therefore drawn
on a grid ``oversample`` times finer, each fine pixel integrated over its area, and summed
in blocks of ``oversample x oversample``; the sum of the fine pixels' integrals is the
integral over the coarse pixel, so the result is the same pixel-integrated image with the
aliasing pushed ``oversample`` times further out.

This module needs the optional ``jax-galsim`` package (``pip install romanjax[scene]``);
:func:`roman_psf` also needs galsim (host side), and is called once, outside ``jit``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import warnings
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from ._read_pattern import ReadPattern
from ._validate import check_pattern
from .forward import fisher_slope_variance, ramp_log_likelihood

__all__ = [
    "GalaxyParams",
    "StampModel",
    "stamp_model",
    "roman_psf",
    "render_rate",
    "scene_log_likelihood",
    "scene_fisher_resultants",
    "scene_fisher_slopes",
    "fit_scene",
]

PROFILES = ("exponential", "gaussian", "spergel", "point")


def _jax_galsim():
    try:
        import jax_galsim
    except ImportError as error:  # pragma: no cover - exercised only without the extra
        raise ImportError(
            "romanjax.jax_scene needs the jax-galsim package: pip install 'romanjax[scene]'"
        ) from error
    return jax_galsim


class GalaxyParams(NamedTuple):
    """The parameters of one stamp's scene (a pytree: stack them to batch over stamps).

    Attributes
    ----------
    flux : float or array
        Total count rate of the source [e/s].
    x, y : float or array
        Centroid offset from the stamp centre [pixel] along x (columns) and y (rows).
    half_light_radius : float or array
        Half-light radius of the galaxy before the PSF [arcsec] (ignored for ``"point"``).
    g1, g2 : float or array
        Reduced shear of the galaxy (``|g| < 1``; ignored for ``"point"``).
    sky : float or array
        Uniform background [e/s per pixel].
    """

    flux: ArrayLike
    x: ArrayLike
    y: ArrayLike
    half_light_radius: ArrayLike
    g1: ArrayLike
    g2: ArrayLike
    sky: ArrayLike


@partial(
    jax.tree_util.register_dataclass,
    data_fields=["psf"],
    meta_fields=["shape", "jacobian", "profile", "spergel_nu", "oversample", "fft_size"],
)
@dataclasses.dataclass(frozen=True)
class StampModel:
    """What is fixed about a stamp (a pytree whose only leaves are the PSF's).

    Attributes
    ----------
    shape : tuple of int
        ``(ny, nx)`` [pixel].
    jacobian : tuple of tuple of float
        Local affine WCS ``((du/dx, du/dy), (dv/dx, dv/dy))`` [arcsec/pixel], galsim's
        convention (u west, v north); Roman's nominal pixel is ``((0.11, 0), (0, 0.11))``.
    psf : jax_galsim.GSObject
        The PSF in arcsec, unit flux, without the pixel response (the drawing integrates
        over pixels).
    profile : {"exponential", "gaussian", "spergel", "point"}
        Galaxy profile. ``"spergel"`` (Spergel 2010) with index ``spergel_nu`` stands in for
        a Sersic profile (``nu = 0.5`` is the exponential; ``nu -> -0.6`` approaches de
        Vaucouleurs), which JAX-GalSim does not provide. ``"point"``: a star (only flux,
        position and sky matter).
    spergel_nu : float
        Spergel index (``-0.85 < nu <= 4``), used by ``"spergel"``.
    oversample : int
        Fine-grid factor of the drawing (see the module notes). 2 reaches galsim's own
        accuracy for Roman PSFs.
    fft_size : int
        Fixed FFT size of the fine-grid drawing [fine pixels]: large enough to hold the
        profile without wrapping (``fft_size * pixel / oversample`` arcsec).
    """

    shape: tuple
    jacobian: tuple
    psf: object
    profile: str = "exponential"
    spergel_nu: float = 0.5
    oversample: int = 2
    fft_size: int = 256


def _check_stamp(model, function):
    if not isinstance(model, StampModel):
        raise TypeError(f"{function}: `model` must be a StampModel, got {type(model).__name__}")


def stamp_model(shape, *, psf="gaussian", jacobian=None, wcs=None, position=None,
                profile="exponential", spergel_nu=0.5, oversample=2,
                fft_size=256) -> StampModel:  # fmt: skip
    """Build a :class:`StampModel` (host side: checks its arguments and makes the PSF).

    Parameters
    ----------
    shape : int or (int, int)
        Stamp size ``(ny, nx)`` [pixel] (an int: square).
    psf : {"gaussian", "airy", "roman"}, galsim.GSObject or jax_galsim.GSObject, optional
        ``"gaussian"`` (default): a JAX-GalSim Gaussian with the FWHM of Roman's Airy core
        at 1.58 micron (fast, exact). ``"airy"``, ``"roman"`` or a galsim profile: drawn
        once with galsim by :func:`roman_psf` into a JAX-GalSim ``InterpolatedImage``.
    jacobian : 2x2 array-like, optional
        Local WCS ``[[du/dx, du/dy], [dv/dx, dv/dy]]`` [arcsec/pixel]. Default: from ``wcs``
        at ``position``, else Roman's 0.11"/pixel.
    wcs : astropy.wcs.WCS, optional
        Image WCS; its local Jacobian at ``position`` (pixel ``(x, y)``, 0-based) is used.
    profile, spergel_nu, oversample, fft_size
        See :class:`StampModel`.

    Returns
    -------
    StampModel

    Raises
    ------
    ValueError
        If ``shape``, ``profile``, ``spergel_nu``, ``oversample``, ``fft_size`` or
        ``jacobian`` is invalid (the message names the argument).
    """
    jgs = _jax_galsim()
    shape = (int(shape), int(shape)) if np.ndim(shape) == 0 else tuple(int(s) for s in shape)
    if len(shape) != 2 or min(shape) < 1:
        raise ValueError(f"stamp_model: `shape` must be one or two positive sizes, got {shape}")
    if profile not in PROFILES:
        raise ValueError(f"stamp_model: `profile` must be one of {PROFILES}, got {profile!r}")
    if not -0.85 < float(spergel_nu) <= 4.0:
        raise ValueError(f"stamp_model: `spergel_nu` must lie in (-0.85, 4], got {spergel_nu}")
    if int(oversample) < 1:
        raise ValueError(f"stamp_model: `oversample` must be >= 1, got {oversample}")
    fine = max(shape) * int(oversample)
    if int(fft_size) < fine or int(fft_size) % 2:
        raise ValueError(
            f"stamp_model: `fft_size` must be even and at least the fine stamp size {fine}, "
            f"got {fft_size}"
        )
    if jacobian is None:
        if wcs is not None:
            from .host.scene import local_jacobian

            x, y = (0.0, 0.0) if position is None else position
            local = local_jacobian(wcs, float(x), float(y))
            jacobian = [[local.dudx, local.dudy], [local.dvdx, local.dvdy]]
        else:
            from .host.scene import ROMAN_PIXEL_SCALE

            jacobian = [[ROMAN_PIXEL_SCALE, 0.0], [0.0, ROMAN_PIXEL_SCALE]]
    jacobian = np.asarray(jacobian, float)
    if jacobian.shape != (2, 2) or not np.all(np.isfinite(jacobian)) or \
            abs(np.linalg.det(jacobian)) <= 0:  # fmt: skip
        raise ValueError("stamp_model: `jacobian` must be a finite, invertible 2x2 matrix")
    gsparams = jgs.GSParams(minimum_fft_size=int(fft_size), maximum_fft_size=int(fft_size))
    if isinstance(psf, jgs.GSObject):
        psf = psf.withGSParams(gsparams)
    elif isinstance(psf, str) and psf == "gaussian":
        from .host.scene import make_psf

        psf = jgs.Gaussian(fwhm=float(make_psf("gaussian").fwhm), gsparams=gsparams)
    else:
        psf = roman_psf(psf, fft_size=int(fft_size))
    return StampModel(
        shape=shape, jacobian=tuple(map(tuple, jacobian.tolist())), psf=psf,
        profile=profile, spergel_nu=float(spergel_nu), oversample=int(oversample),
        fft_size=int(fft_size),
    )  # fmt: skip


def roman_psf(kind="roman", *, scale=0.11 / 4, size=128, fft_size=256, **psf_options):
    """A galsim PSF drawn once (host side) into a JAX-GalSim ``InterpolatedImage``.

    Parameters
    ----------
    kind : {"roman", "airy", "gaussian"} or galsim.GSObject
        As :func:`romanjax.host.scene.make_psf` (``"roman"``: ``galsim.roman.getPSF``; options
        such as ``sca``, ``filter_name``, ``wavelength`` [micron] go in ``psf_options``).
    scale : float
        Sampling of the PSF image [arcsec]; a quarter of Roman's pixel by default, so the
        interpolated profile is well sampled.
    size : int
        PSF image size [samples].
    fft_size : int
        Fixed FFT size of later drawings (as :class:`StampModel`).

    Returns
    -------
    jax_galsim.InterpolatedImage
        Unit flux, without the pixel response, quintic interpolation.
    """
    from .host.scene import make_psf

    jgs = _jax_galsim()
    profile = make_psf(kind, **psf_options)
    image = profile.drawImage(nx=int(size), ny=int(size), scale=float(scale), method="no_pixel",
                              dtype=np.float64)  # fmt: skip
    array = image.array / image.array.sum()
    gsparams = jgs.GSParams(minimum_fft_size=int(fft_size), maximum_fft_size=int(fft_size))
    return jgs.InterpolatedImage(
        jgs.Image(jnp.asarray(array), scale=float(scale)), x_interpolant="quintic",
        gsparams=gsparams,
    )  # fmt: skip


@contextlib.contextmanager
def _quiet():
    """JAX-GalSim asks for complex128 buffers whatever the precision; in float32 (JAX's
    default) JAX narrows them to complex64 and warns. The narrowing is what float32 means."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Explicitly requested dtype",
                                category=UserWarning)  # fmt: skip
        yield


def _galaxy(params: GalaxyParams, model: StampModel, gsparams):
    jgs = _jax_galsim()
    if model.profile == "point":
        return jgs.DeltaFunction(flux=params.flux, gsparams=gsparams)
    if model.profile == "exponential":
        galaxy = jgs.Exponential(half_light_radius=params.half_light_radius, flux=params.flux,
                                 gsparams=gsparams)  # fmt: skip
    elif model.profile == "gaussian":
        galaxy = jgs.Gaussian(half_light_radius=params.half_light_radius, flux=params.flux,
                              gsparams=gsparams)  # fmt: skip
    else:
        galaxy = jgs.Spergel(nu=model.spergel_nu, half_light_radius=params.half_light_radius,
                             flux=params.flux, gsparams=gsparams)  # fmt: skip
    return galaxy.shear(g1=params.g1, g2=params.g2)


def render_rate(params: GalaxyParams, model: StampModel) -> jax.Array:
    """The count-rate image of a stamp [e/s per pixel]: the galaxy convolved with the PSF,
    integrated over pixels, plus the sky.

    Parameters
    ----------
    params : GalaxyParams
        Scalar parameters (``vmap`` this function to batch over stamps).
    model : StampModel
        The stamp's fixed structure.

    Returns
    -------
    Array
        ``[ny, nx]`` count rate [e/s], in the floating dtype of ``params``. The pixel
        ``(iy, ix)`` is centred at offset ``(ix - (nx - 1) / 2, iy - (ny - 1) / 2)`` from the
        stamp centre, the point ``(x, y) = (0, 0)`` of :class:`GalaxyParams`.
    """
    _check_stamp(model, "render_rate")
    jgs = _jax_galsim()
    dtype = jnp.result_type(*(jnp.asarray(value) for value in params), float)
    params = GalaxyParams(*(jnp.asarray(value, dtype) for value in params))
    gsparams = jgs.GSParams(minimum_fft_size=model.fft_size, maximum_fft_size=model.fft_size)
    profile = jgs.Convolve([_galaxy(params, model, gsparams), model.psf], gsparams=gsparams)
    ov = model.oversample
    jacobian = np.asarray(model.jacobian) / ov
    ny, nx = model.shape
    # the fine grid's pixel edges fall on the coarse grid's, and both images share their
    # centre, so the offset scales with the grid
    with _quiet():
        image = profile.drawImage(
            nx=nx * ov, ny=ny * ov, wcs=jgs.JacobianWCS(*jacobian.ravel().tolist()),
            offset=(params.x * ov, params.y * ov), dtype=dtype,
        )  # fmt: skip
    rate = image.array.reshape(ny, ov, nx, ov).sum(axis=(1, 3))
    return rate + params.sky


def scene_log_likelihood(resultants: ArrayLike, pattern: ReadPattern, params: GalaxyParams,
                         read_noise: ArrayLike, model: StampModel, *,
                         pedestal: ArrayLike | None = None) -> jax.Array:  # fmt: skip
    """Log-likelihood of a stamp's resultants given the scene parameters.

    ``sum_p log N(R_p | f_p(params), C_p)`` with ``f = render_rate(params, model)`` and the
    exact ramp covariance (:func:`romanjax.ramp_log_likelihood`).

    Parameters
    ----------
    resultants : array ``[n_resultant, ny, nx]``
        Observed resultants [e].
    pattern : ReadPattern
        Static read pattern.
    params : GalaxyParams
        Scene parameters (scalars).
    read_noise : float or array ``[ny, nx]``
        Read noise of one read [e].
    model : StampModel
        The stamp's fixed structure.
    pedestal : float, array ``[ny, nx]`` or None, optional
        Charge at reset [e]. Default None: unknown, the likelihood of the resultant
        differences (as the ramp fitters, which fit or difference the pedestal away).

    Returns
    -------
    Array
        Scalar log-likelihood, in the floating dtype of the inputs.

    Raises
    ------
    ValueError
        If the resultants do not match the pattern or the stamp shape.
    """
    check_pattern(pattern, "scene_log_likelihood")
    _check_stamp(model, "scene_log_likelihood")
    shape = tuple(np.shape(resultants))
    if shape != (pattern.n_resultants,) + model.shape:
        raise ValueError(
            f"scene_log_likelihood: `resultants` has shape {shape}; the pattern and the stamp "
            f"need {(pattern.n_resultants,) + model.shape}"
        )
    rate = render_rate(params, model)
    return jnp.sum(ramp_log_likelihood(resultants, pattern, rate, read_noise, pedestal=pedestal))


def _rate_jacobian(params: GalaxyParams, model: StampModel):
    """``[ny * nx, 7]`` derivatives of the pixel rates with respect to the parameters."""
    dtype = jnp.result_type(*(jnp.asarray(value) for value in params), float)
    vector = jnp.stack([jnp.asarray(value, dtype) for value in params])

    def rates(theta):
        value = render_rate(GalaxyParams(*theta), model).ravel()
        return value, value  # the rates ride along as aux: the stamp is rendered once

    jacobian, value = jax.jacfwd(rates, has_aux=True)(vector)
    return value, jacobian


def _scene_fisher(function, pattern, params, read_noise, model, slope_variance, **bound):
    """``sum_p J_p J_p^T / V_p`` with ``V_p`` the given slope variance, else the per-pixel
    Cramér-Rao bound (``fisher_slope_variance`` with the options ``bound``)."""
    check_pattern(pattern, function)
    _check_stamp(model, function)
    rates, jacobian = _rate_jacobian(params, model)
    if slope_variance is None:
        read_noise = jnp.broadcast_to(jnp.asarray(read_noise, rates.dtype), model.shape).ravel()
        variance = fisher_slope_variance(pattern, rates, read_noise, **bound)
    else:
        if tuple(np.shape(slope_variance)) != model.shape:
            raise ValueError(
                f"{function}: `slope_variance` has shape {np.shape(slope_variance)}, "
                f"the stamp {model.shape}"
            )
        variance = jnp.asarray(slope_variance, rates.dtype).ravel()
    fisher = jnp.einsum("pa,p,pb->ab", jacobian, 1.0 / variance, jacobian)
    return 0.5 * (fisher + fisher.T)


def scene_fisher_resultants(pattern: ReadPattern, params: GalaxyParams, read_noise: ArrayLike,
                            model: StampModel, *, pedestal_known: bool = False,
                            gaussian_variance_term: bool = False) -> jax.Array:  # fmt: skip
    """Fisher information of a stamp's resultants about its scene parameters.

    ``F = sum_p (df_p/dtheta)(df_p/dtheta)^T / V_p`` with
    ``V_p = fisher_slope_variance(pattern, f_p, read_noise)``, the Cramér-Rao bound of one
    pixel's count rate from its resultants under the exact ramp covariance.

    Parameters
    ----------
    pattern : ReadPattern
        Static read pattern.
    params : GalaxyParams
        Scene parameters (scalars) at which the information is evaluated.
    read_noise : float or array ``[ny, nx]``
        Read noise of one read [e].
    model : StampModel
        The stamp's fixed structure.
    pedestal_known, gaussian_variance_term : bool, optional
        As :func:`romanjax.fisher_slope_variance`. Default: the pedestal free (as in
        :func:`scene_log_likelihood` with ``pedestal=None``), no covariance term.

    Returns
    -------
    Array
        ``[7, 7]`` information matrix in the order of :class:`GalaxyParams` fields; its
        inverse bounds the covariance of unbiased estimates of the parameters.
    """
    return _scene_fisher("scene_fisher_resultants", pattern, params, read_noise, model, None,
                         pedestal_known=pedestal_known,
                         gaussian_variance_term=gaussian_variance_term)  # fmt: skip


def scene_fisher_slopes(pattern: ReadPattern, params: GalaxyParams, read_noise: ArrayLike,
                        model: StampModel, *,
                        slope_variance: ArrayLike | None = None) -> jax.Array:  # fmt: skip
    """Fisher information of a stamp's slope image (an L2) about its scene parameters.

    ``F = sum_p (df_p/dtheta)(df_p/dtheta)^T / Var(s_p)``: the slope image as independent
    Gaussian pixels with the variance the fitter delivered.

    Parameters
    ----------
    pattern : ReadPattern
        Static read pattern.
    params : GalaxyParams
        Scene parameters (scalars) at which the information is evaluated.
    read_noise : float or array ``[ny, nx]``
        Read noise of one read [e].
    model : StampModel
        The stamp's fixed structure.
    slope_variance : array ``[ny, nx]``, optional
        Variance of each pixel's slope [(e/s)**2], for example an L2's
        ``var_poisson + var_rnoise``, or the variance of a fitter's estimate at the true
        rate. Default: the Cramér-Rao bound of each pixel's slope with a free pedestal, the
        best any per-pixel fitter reaches; with it the slope and resultant bounds agree, and
        the resultants gain exactly where a fitter's variance exceeds that bound.

    Returns
    -------
    Array
        ``[7, 7]`` information matrix in the order of :class:`GalaxyParams` fields.

    Raises
    ------
    ValueError
        If ``slope_variance`` does not match the stamp shape.
    """
    return _scene_fisher("scene_fisher_slopes", pattern, params, read_noise, model,
                         slope_variance)


def fit_scene(resultants: ArrayLike, pattern: ReadPattern, read_noise: ArrayLike,
              model: StampModel, init: GalaxyParams, *,
              free: tuple = ("flux", "x", "y", "half_light_radius", "g1", "g2"),
              steps: int = 10, method: str = "scoring",
              pedestal: ArrayLike | None = None):  # fmt: skip
    """Maximum-likelihood scene parameters of one stamp from its resultants (optax L-BFGS).

    Minimises ``-scene_log_likelihood`` over the ``free`` parameters (the others stay at
    ``init``) in coordinates whitened by the Fisher matrix at ``init``
    (``theta = init + L^-T z`` with ``F = L L^T``, :func:`scene_fisher_resultants`), where
    the Hessian is close to the identity, for a fixed number of optax steps. ``"scoring"``
    (the default): ``optax.sgd`` with unit learning rate, which in these coordinates is
    Fisher scoring (``delta theta = F^-1 grad log L``): it converges from a start within a
    few standard deviations of the optimum, and has no data-dependent loop (under ``vmap``
    a line search runs until the slowest stamp is done, and on GPUs each of its trips is a
    round trip to the host). ``"lbfgs"``: ``optax.lbfgs`` with its zoom line search, for
    starts farther away. ``vmap`` it over stamps (``resultants`` and ``init`` batched) to
    fit many at once.

    Parameters
    ----------
    resultants : array ``[n_resultant, ny, nx]``
        Observed resultants [e].
    pattern : ReadPattern
        Static read pattern.
    read_noise : float or array ``[ny, nx]``
        Read noise of one read [e].
    model : StampModel
        The stamp's fixed structure.
    init : GalaxyParams
        Starting point (scalars); also the values of the parameters that are not free.
    free : tuple of str, optional
        Names of the :class:`GalaxyParams` fields to fit. Default all but the sky.
    steps : int, optional
        Iterations (static).
    method : {"scoring", "lbfgs"}, optional
        The optax optimiser (see above).
    pedestal : float, array ``[ny, nx]`` or None, optional
        As :func:`scene_log_likelihood` (default None: unknown).

    Returns
    -------
    (GalaxyParams, Array)
        The fitted parameters and the final negative log-likelihood.

    Raises
    ------
    ValueError
        If ``free`` names a field :class:`GalaxyParams` does not have, or ``method`` is
        unknown.
    """
    import optax

    if method not in ("scoring", "lbfgs"):
        raise ValueError(f"fit_scene: `method` must be 'scoring' or 'lbfgs', got {method!r}")
    unknown = sorted(set(free) - set(GalaxyParams._fields))
    if unknown or not free:
        raise ValueError(f"fit_scene: `free` must name fields of GalaxyParams, got {free!r}")
    index = np.array([GalaxyParams._fields.index(name) for name in free])
    dtype = jnp.result_type(*(jnp.asarray(value) for value in init), float)
    start = jnp.stack([jnp.asarray(value, dtype) for value in init])
    fisher = scene_fisher_resultants(pattern, GalaxyParams(*start), read_noise, model)
    # theta = init + L^-T z with F = L L^T: the Hessian of -log L in z is about the identity
    cholesky = jnp.linalg.cholesky(fisher[np.ix_(index, index)])

    def parameters(z):
        return start.at[index].add(jax.scipy.linalg.solve_triangular(cholesky.T, z, lower=False))

    def objective(z):
        theta = parameters(z)
        return -scene_log_likelihood(resultants, pattern, GalaxyParams(*theta), read_noise,
                                     model, pedestal=pedestal)  # fmt: skip

    if method == "scoring":
        optimiser = optax.sgd(learning_rate=1.0)
        value_and_grad = jax.value_and_grad(objective)
    else:
        optimiser = optax.lbfgs()
        # the value and gradient the line search already computed at the accepted point
        value_and_grad = optax.value_and_grad_from_state(objective)

    def step(carry, _):
        z, state = carry
        if method == "scoring":
            value, gradient = value_and_grad(z)
            updates, state = optimiser.update(gradient, state, z)
        else:
            value, gradient = value_and_grad(z, state=state)
            updates, state = optimiser.update(gradient, state, z, value=value, grad=gradient,
                                              value_fn=objective)  # fmt: skip
        return (optax.apply_updates(z, updates), state), value

    z0 = jnp.zeros(len(index), dtype)
    (z, _), _ = jax.lax.scan(step, (z0, optimiser.init(z0)), None, length=int(steps))
    return GalaxyParams(*parameters(z)), objective(z)
