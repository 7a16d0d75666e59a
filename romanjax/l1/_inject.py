"""Injection into L1: new electrons apportioned over the reads and added to the resultants.

A source that had been in the exposure would have added its electrons read by read; the
resultants are averages of cumulative reads, so they are linear in the accumulated charge
and the new electrons' resultants add to the existing ones. The new counts are apportioned
exactly (:func:`romanjax.apportion_counts`, multinomial over the read intervals), converted
with the gain, added, quantised to whole DN and clipped, and saturation is flagged again.

An L1 simulated with a non-linear response (``simulate_l1(inverse_linearity=...)``) is first
linearised resultant by resultant by inverting that polynomial (Newton steps), the new DN
are added there, and the polynomial is applied again; see :func:`inject_counts_into_l1`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from .. import dq as dqbits
from .._read_pattern import ReadPattern
from .._validate import check_pattern, check_pixel_shape, check_real, check_values, prepare_dq
from ._apportion import apportion_counts, check_counts
from ._simulate import L1

__all__ = ["inject_counts_into_l1"]


#: Newton steps inverting the inverse-linearity polynomial (quadratic convergence from the
#: observed DN: a mild non-linearity, a few percent, converges in three or four).
NEWTON_STEPS = 8
_DITHER = 0x44495448  # fold_in tag of the dither stream


def inject_counts_into_l1(key: jax.Array, resultants: ArrayLike, counts: ArrayLike,
                          pattern: ReadPattern, *, dq: ArrayLike | None = None,
                          gain: ArrayLike = 2.0, saturation: ArrayLike = 55000.0,
                          inverse_linearity: ArrayLike | None = None) -> L1:
    """Add ``counts`` electrons collected during the exposure to L1 ``resultants``.

    The counts are apportioned over the reads of ``pattern`` with ``key``
    (:func:`romanjax.apportion_counts`: the same draws as simulating them), divided by the
    gain, added to the resultants, rounded to whole DN (as an L1 holds them; this adds at
    most the variance 1/12 DN**2 of one more rounding) and clipped to
    ``[0, 1.1 * saturation]`` as :func:`romanjax.simulate_l1` clips; resultants at or above
    ``saturation`` get ``SATURATED``. Pixels with no new counts are returned unchanged, bit
    for bit, with their flags.

    Without ``inverse_linearity`` the L1 must be linear in charge (simulated without
    ``inverse_linearity``). With it (the coefficients the L1 was simulated with), each
    resultant ``R`` [DN] is linearised as ``x = P^-1(R)``, the exact inverse of the
    inverse-linearity polynomial ``P`` (``NEWTON_STEPS`` Newton steps from ``R``), the new
    DN ``a`` are added and ``P(x + a)`` is rounded, clipped and flagged as above. The
    inverse of ``P`` is used rather than romanisim's separate ``linearity`` correction
    polynomial (what :func:`romanjax.make_l2` takes) because that is a fitted, only
    approximate inverse: ``P(L(R))`` differs from ``R`` even with no new electrons, which
    would bias every touched resultant, whereas ``P(P^-1(R)) = R``.

    Approximation: :func:`romanjax.simulate_l1` applies ``P`` per read (to the cumulative
    linear DN ``d_k`` of read ``k``) and averages the reads, ``R = mean_k P(d_k)``; the reads
    are gone here, so ``P`` is undone and redone on the resultant, giving
    ``P(x + mean_k a_k)`` for the true ``mean_k P(d_k + a_k)``. The two agree to first
    order; they differ at second order in the curvature over the resultant's reads,
    ``P''/2 * (2 cov_k(d_k, a_k) + var_k(a_k))`` (``cov_k``, ``var_k`` over the reads of one
    resultant), so resultants of one read are exact, given the L1's value before its
    rounding to whole DN (which is not kept, see the dither below). Read noise and the
    pedestal are inside ``R`` and go through ``P^-1`` (the simulation adds read noise after
    ``P``: an effect of the same second order). Dark decay (added after ``P``) and IPC are
    not undone. Pixels with non-finite or all-zero coefficients use the identity, as
    :func:`romanjax.simulate_l1` does (its ``NO_LIN_CORR`` flags are kept; none are added).

    Dither: the L1 holds whole DN, so ``R + U`` (``U`` uniform on ``(-0.5, 0.5)``, drawn
    from its own stream of ``key``: the rounding the L1 lost) is linearised. Without it
    ``round(P(P^-1(R) + a))`` would be a fixed map of the integers with slope
    ``P'(x + a) / P'(x) != 1``, which for pixels at one level biases the mean by up to
    0.5 DN and the variance by up to about ``sigma`` DN**2 (``sigma`` the resultant's noise
    [DN]); the dither adds about 1/12 DN**2 of variance, as one more rounding does.
    Resultants that receive no new electrons (``a = 0``, e.g. before the first new
    electron) are kept as they are, and pixels whose polynomial is the identity get no
    dither (the result is then the linear injection's, bit for bit).

    Parameters
    ----------
    key : jax.random key
    resultants : array ``[n_resultant, *pixels]``
        The L1 resultants [DN].
    counts : integer array ``[*pixels]``
        New electrons per pixel over the whole exposure [e] (e.g. Poisson draws of the
        sources' expected electrons); checked as :func:`romanjax.apportion_counts` checks.
    pattern : ReadPattern
    dq : integer array ``[n_resultant, *pixels]``, optional
        The L1's resultant flags, kept; ``SATURATED`` is added where injection saturates.
    gain : float or array broadcasting to ``[*pixels]``
        [e/DN], > 0.
    saturation : float or array broadcasting to ``[*pixels]``
        [DN], > 0.
    inverse_linearity : array ``[ncoeff]`` or ``[ncoeff, *pixels]``, optional
        The inverse non-linearity the L1 was simulated with
        (:func:`romanjax.simulate_l1`'s ``inverse_linearity``: romanisim
        ``inverselinearity``, a polynomial in DN, constant term first, ``ncoeff >= 2``); it
        must increase over the resultants' range. None: the L1 is linear in charge.

    Returns
    -------
    L1
        ``resultants`` [DN] in the input's float dtype (float for integer input) and
        ``dq`` uint32.

    Raises
    ------
    ValueError
        Naming the argument: ``resultants`` not matching the pattern, ``counts`` of another
        pixel shape or not non-negative integers, ``gain`` or ``saturation`` not > 0 or not
        broadcasting to the pixels, ``inverse_linearity`` not finite or of another shape.
    """
    check_pattern(pattern, "inject_counts_into_l1")
    if not hasattr(resultants, "shape"):
        resultants = np.asarray(resultants)
    check_real("inject_counts_into_l1", "resultants", resultants)
    if resultants.ndim < 1 or resultants.shape[0] != pattern.n_resultants:
        raise ValueError(
            f"inject_counts_into_l1: `resultants` of shape {resultants.shape} must have the "
            f"{pattern.n_resultants} resultants of the read pattern on axis 0"
        )
    pixels = tuple(resultants.shape[1:])
    counts = check_counts(counts, "inject_counts_into_l1")
    if tuple(np.shape(counts)) != pixels:
        raise ValueError(f"inject_counts_into_l1: `counts` of shape {np.shape(counts)} must "
                         f"have the resultants' pixel shape {pixels}")  # fmt: skip
    for name, value, strict in (("gain", gain, True), ("saturation", saturation, True)):
        check_values("inject_counts_into_l1", name, value, minimum=0, strict=strict)
        check_pixel_shape("inject_counts_into_l1", name, value, pixels)
    dq = prepare_dq("inject_counts_into_l1", dq, resultants.shape)
    dtype = resultants.dtype if jnp.issubdtype(resultants.dtype, jnp.floating) else (
        jax.dtypes.canonicalize_dtype(jnp.float64))
    coeffs = None
    if inverse_linearity is not None:
        coeffs = _coefficients(inverse_linearity, pixels, dtype)
    added = apportion_counts(key, counts, pattern)
    dither = None
    if coeffs is not None:  # its own stream: the apportionment draws as without it
        dither = jax.random.uniform(jax.random.fold_in(key, _DITHER), resultants.shape, dtype,
                                    -0.5, 0.5)  # fmt: skip
    return _inject(jnp.asarray(resultants, dtype), dq, jnp.asarray(added), jnp.asarray(counts),
                   jnp.asarray(gain, dtype), jnp.asarray(saturation, dtype), coeffs,
                   dither)  # fmt: skip


def _coefficients(coefficients, pixels, dtype):
    """Checked ``inverse_linearity`` as ``[ncoeff, *pixels]`` (broadcast), non-finite or
    all-zero pixels replaced by the identity."""
    function, name = "inject_counts_into_l1", "inverse_linearity"
    check_values(function, name, coefficients)
    shape = tuple(np.shape(coefficients))
    try:
        ok = len(shape) >= 1 and shape[0] >= 2 and (
            len(shape) == 1 or np.broadcast_shapes(shape[1:], pixels) == pixels)
    except ValueError:
        ok = False
    if not ok:
        raise ValueError(f"{function}: `{name}` coefficients of shape {shape} must be "
                         f"[ncoeff >= 2] or [ncoeff, *pixels] with pixels {pixels}")  # fmt: skip
    coefficients = jnp.asarray(coefficients, dtype)
    if coefficients.ndim == 1:
        coefficients = coefficients.reshape(shape[:1] + (1,) * len(pixels))
    coefficients = jnp.broadcast_to(coefficients, shape[:1] + pixels)
    bad = jnp.any(~jnp.isfinite(coefficients), axis=0) | jnp.all(coefficients == 0, axis=0)
    identity = jnp.zeros_like(coefficients).at[1].set(1)
    return jnp.where(bad[None], identity, coefficients)


def _polynomial(x, coefficients):
    """``P(x)`` and ``P'(x)`` (Horner), coefficients ``[ncoeff, *pixels]`` constant first,
    ``x`` ``[n_resultant, *pixels]``."""
    value = jnp.zeros_like(x)
    slope = jnp.zeros_like(x)
    for c in coefficients[::-1]:
        slope = slope * x + value
        value = value * x + c[None]
    return value, slope


@jax.jit
def _inject(resultants, dq, added, counts, gain, saturation, coefficients=None, dither=None):
    dtype = resultants.dtype
    added = added.astype(dtype) / gain
    if coefficients is None:
        new = resultants + added
    else:  # linearise (Newton from the observed DN), add, apply the non-linearity again
        # the L1's whole DN R stand for R + U (U uniform, the rounding lost), else the
        # slope P'(x + a) / P'(x) != 1 maps the integers to a biased, narrower lattice
        identity = jnp.zeros(coefficients.shape[:1], dtype).at[1].set(1)
        identity = identity.reshape(identity.shape + (1,) * (coefficients.ndim - 1))
        linear = jnp.all(coefficients == identity, axis=0)  # exactly the linear injection
        observed = resultants + jnp.where(linear[None], 0, dither)
        x = observed
        for _ in range(NEWTON_STEPS):
            value, slope = _polynomial(x, coefficients)
            x = x - (value - observed) / slope
        new = _polynomial(x + added, coefficients)[0]
        new = jnp.where(added > 0, new, resultants)  # nothing added: P(P^-1(R)) = R
    new = jnp.round(new)
    new = jnp.clip(new, 0, 1.1 * saturation)
    touched = (counts > 0)[None]
    out = jnp.where(touched, new, resultants)
    saturated = touched & (out >= saturation)
    flags = dq | jnp.where(saturated, jnp.uint32(dqbits.SATURATED), jnp.uint32(0))
    return L1(out, flags)
