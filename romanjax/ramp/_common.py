"""Shared pieces of the ramp fitters: the result container and the pixel-batching wrapper."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .._read_pattern import ReadPattern

__all__ = ["RampFit", "PackedFlags", "SlopeRows", "EntryRows", "float_dtype", "prepare_inputs",
           "map_pixels"]


class PackedFlags(NamedTuple):
    """Internal, ``fit_frame`` only: a chunk's output dq as a list of flagged pixels.

    When a fitter finds jumps without input dq, only the candidate pixels of its jump search
    can carry a flag, and the dense ``[n_resultant, pixels]`` uint32 array costs more to write
    and copy back than the refit of those pixels. The first ``count`` entries of ``pixels``
    (flat pixel indices, increasing) are the candidates, ``bits`` their flags: bit ``i`` for
    ``JUMP_DET`` in resultant ``i``, bit ``UNFITTED_BIT`` for ``DO_NOT_USE`` in every
    resultant. ``fit_frame`` expands them on the host (:meth:`expand_into`).
    """

    pixels: jax.Array
    bits: jax.Array
    count: jax.Array

    #: bit of a pixel with no usable sub-ramp (patterns of up to 31 resultants are packed)
    UNFITTED_BIT = 31

    def expand_into(self, out, jump_flag, unfitted_flag):
        """OR the flags into the zero-initialised numpy ``out [n, m]`` of the chunk, writing
        only the flagged pixels (those beyond ``m``, the chunk's padding, are dropped)."""
        count = int(self.count)
        pixels = np.asarray(self.pixels)[:count]
        words = np.asarray(self.bits)[:count]
        flagged = (words != 0) & (pixels < out.shape[1])
        pixels, words = pixels[flagged], words[flagged]
        for i in range(out.shape[0]):
            out[i, pixels[(words >> np.uint32(i)) & np.uint32(1) != 0]] |= np.uint32(jump_flag)
        unfitted = pixels[(words >> np.uint32(PackedFlags.UNFITTED_BIT)) != 0]
        out[:, unfitted] |= np.uint32(unfitted_flag)


class SlopeRows(NamedTuple):
    """Internal, ``fit_frame`` only: a chunk's ``par`` or ``var`` whose pedestal entries are
    zero by construction (Casertano, likelihood), as its non-zero entries only.

    ``rows`` is ``[1, chunk]`` for ``par`` (the slope, ``par[..., 1]``) and ``[3, chunk]`` for
    ``var`` (read, Poisson and total slope variances, ``var[..., k, 1, 1]``). ``fit_frame``
    writes them into pixel-minor planes of zero-initialised outputs whose other planes are
    never touched (:func:`romanjax._batch._plane_array`): a full frame's ``var`` then holds
    3 resident floats per pixel instead of 12, and the chunk sends back 4 values per pixel
    instead of 14.
    """

    rows: jax.Array


class EntryRows(NamedTuple):
    """Internal, ``fit_frame`` only: a chunk's ``par`` or ``var`` (optimal fitter, no input
    dq) as separate ``[chunk]`` rows of its distinct entries, as the fit computes them.

    ``par``: ``(pedestal, slope)``. ``var``: the read-noise entries ``(00, 01, 11)`` then the
    Poisson ones; ``10`` equals ``01`` and the total is read + Poisson (summed on the host in
    the same float precision, so the values equal the direct fit's). ``fit_frame`` writes
    them into pixel-minor planes (:func:`romanjax._batch._plane_array`, ``every_plane``),
    which spares the device the interleaved ``[P, 3, 2, 2]`` layout and the host a quarter
    of the copy."""

    rows: tuple

    def write_into(self, planes, start, stop):
        """Write the rows' first ``stop - start`` values into ``planes[..., start:stop]``
        (``par`` planes ``[2, P]``, ``var`` planes ``[2, 2, 3, P]``)."""
        m = stop - start
        rows = [np.asarray(row)[:m] for row in self.rows]
        if planes.ndim == 2:
            for i, row in enumerate(rows):
                planes[i, start:stop] = row
            return
        for k in range(2):  # read, Poisson
            v00, v01, v11 = rows[3 * k : 3 * k + 3]
            planes[0, 0, k, start:stop] = v00
            planes[0, 1, k, start:stop] = v01
            planes[1, 0, k, start:stop] = v01
            planes[1, 1, k, start:stop] = v11
        for i, j in ((0, 0), (0, 1), (1, 1)):
            np.add(planes[i, j, 0, start:stop], planes[i, j, 1, start:stop],
                   out=planes[i, j, 2, start:stop])  # fmt: skip
        planes[1, 0, 2, start:stop] = planes[0, 1, 2, start:stop]


class RampFit(NamedTuple):
    """Result of a ramp fit; a pytree, so it passes through ``jit``, ``vmap`` and ``grad``.

    Attributes
    ----------
    par : Array
        ``[*pixels, 2]`` (pedestal [e], slope [e/s]). Fitters that do not estimate the pedestal
        (Casertano, likelihood) return 0 for it, as romanisim and stcal do.
    var : Array
        ``[*pixels, 3, 2, 2]`` covariance of ``par`` from read noise, Poisson noise and their
        total ([e**2], [e**2/s], [e**2/s**2] entries).
    dq : Array
        ``[n_resultant, *pixels]`` uint32: the input dq OR-ed with the jumps the fitter found
        (``JUMP_DET``) and ``DO_NOT_USE`` on pixels that could not be fitted.
    chisq : Array or None
        ``[*pixels]`` chi-square of the fit (likelihood fitter), else None.
    """

    par: jax.Array
    var: jax.Array
    dq: jax.Array
    chisq: jax.Array | None = None

    @property
    def slope(self) -> jax.Array:
        """``[*pixels]`` fitted count rate [e/s]."""
        return self.par[..., 1]

    @property
    def pedestal(self) -> jax.Array:
        """``[*pixels]`` fitted pedestal [e] (0 for fitters that do not estimate it)."""
        return self.par[..., 0]

    @property
    def var_read(self) -> jax.Array:
        """``[*pixels]`` slope variance from read noise [(e/s)**2]."""
        return self.var[..., 0, 1, 1]

    @property
    def var_poisson(self) -> jax.Array:
        """``[*pixels]`` slope variance from Poisson noise [(e/s)**2]."""
        return self.var[..., 1, 1, 1]

    @property
    def var_total(self) -> jax.Array:
        """``[*pixels]`` total slope variance [(e/s)**2]."""
        return self.var[..., 2, 1, 1]


def float_dtype(*arrays) -> jnp.dtype:
    """The floating dtype of a computation on ``arrays``: the first floating array's dtype
    (canonicalised: float64 only with x64 on). Python scalars are weakly typed and do not
    decide it; integer arrays and scalars alone give JAX's default float."""
    for array in arrays:
        if isinstance(array, (int, float, bool)) or not hasattr(array, "dtype"):
            continue
        if jnp.issubdtype(array.dtype, jnp.floating):
            return jnp.dtype(jax.dtypes.canonicalize_dtype(array.dtype))
    return jnp.dtype(jax.dtypes.canonicalize_dtype(jnp.float64))


def check_pattern(pattern, function: str) -> ReadPattern:
    if not isinstance(pattern, ReadPattern):
        raise TypeError(
            f"{function}: `pattern` must be a romanjax.ReadPattern, got {type(pattern).__name__}"
        )
    return pattern


def check_pixel_shape(function: str, name: str, value, pixels: tuple) -> None:
    """Raise ``ValueError`` naming ``name`` unless ``value`` broadcasts to ``pixels``."""
    shape = np.shape(value)
    try:
        if np.broadcast_shapes(shape, pixels) == pixels:
            return
    except ValueError:
        pass
    raise ValueError(
        f"{function}: `{name}` of shape {shape} does not broadcast against the pixel shape "
        f"{pixels}"
    )


def prepare_dq(function: str, dq, shape: tuple):
    """``dq`` as uint32 broadcast to ``shape`` (zeros if None), or a ``ValueError`` naming it."""
    if dq is None:
        return jnp.zeros(shape, dtype=jnp.uint32)
    try:
        np.broadcast_shapes(np.shape(dq), shape)
    except ValueError:
        raise ValueError(
            f"{function}: `dq` of shape {np.shape(dq)} does not broadcast against `resultants` "
            f"of shape {shape}"
        ) from None
    return jnp.broadcast_to(jnp.asarray(dq).astype(jnp.uint32), shape)


def prepare_inputs(function: str, resultants, pattern, dq=None, *, make_dq=True,
                   **per_pixel):  # fmt: skip
    """Validate shapes on the host and broadcast per-pixel inputs against the pixel shape.

    Returns ``(resultants, dq, per_pixel)`` as JAX arrays: resultants in their float dtype,
    dq as uint32 ``[n_resultant, *pixels]`` (zeros if None; None if ``dq`` is None and
    ``make_dq`` is False, for fitters that make their zero dq inside the jit), per-pixel
    values broadcast to ``[*pixels]`` in the resultants' dtype (None stays None).

    The per-pixel values are broadcast here, outside the jit, on purpose: a 0-d read noise
    inside the jit lets XLA fold it into a scalar, and the code it then generates rounds
    differently for different pixel counts (2-8 ulp in float64), so ``fit_frame``'s chunks
    would no longer reproduce a direct call bit for bit. (``fit_frame`` passes a scalar read
    noise as one array made once per call, so it pays no per-chunk broadcast.)
    """
    check_pattern(pattern, function)
    if not hasattr(resultants, "shape"):
        resultants = np.asarray(resultants)
    if resultants.ndim < 1:
        raise ValueError(f"{function}: `resultants` must have a leading resultant axis")
    if resultants.shape[0] != pattern.n_resultants:
        raise ValueError(
            f"{function}: `resultants` has {resultants.shape[0]} resultants on axis 0 but the "
            f"read pattern has {pattern.n_resultants}"
        )
    dtype = float_dtype(resultants)
    resultants = jnp.asarray(resultants, dtype=dtype)
    pixels = resultants.shape[1:]
    dq = prepare_dq(function, dq, resultants.shape) if dq is not None or make_dq else None
    out = {}
    for name, value in per_pixel.items():
        if value is None:
            out[name] = None
            continue
        check_pixel_shape(function, name, value, pixels)
        out[name] = jnp.broadcast_to(jnp.asarray(value, dtype=dtype), pixels)
    return resultants, dq, out


def map_pixels(kernel, resultants, dq, *per_pixel):
    """Apply a one-pixel ``kernel(ramp[n], dq[n], *scalars)`` to every pixel with ``vmap``.

    ``resultants`` and ``dq`` are ``[n, *pixels]``, each of ``per_pixel`` is ``[*pixels]``.
    The kernel returns a pytree of per-pixel arrays; the result has ``*pixels`` prepended
    to each leaf, except leaves named in a ``RampFit.dq`` slot, which keep the resultant axis
    first (``[n, *pixels]``).
    """
    n = resultants.shape[0]
    pixels = resultants.shape[1:]
    flat_ramps = resultants.reshape(n, -1)
    flat_dq = dq.reshape(n, -1)
    flat_extra = [value.reshape(-1) for value in per_pixel]
    fit = jax.vmap(kernel, in_axes=(1, 1) + (0,) * len(flat_extra))(
        flat_ramps, flat_dq, *flat_extra
    )

    def unflatten(leaf):
        return leaf.reshape(pixels + leaf.shape[1:])

    result = jax.tree_util.tree_map(unflatten, fit)
    if isinstance(result, RampFit):
        # the kernel returns dq as [n] per pixel -> [*pixels, n]; move the resultant axis first
        result = result._replace(dq=jnp.moveaxis(result.dq, -1, 0))
    return result
