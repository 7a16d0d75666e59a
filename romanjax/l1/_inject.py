"""Injection into L1: new electrons apportioned over the reads and added to the resultants.

A source that had been in the exposure would have added its electrons read by read; the
resultants are averages of cumulative reads, so they are linear in the accumulated charge
and the new electrons' resultants add to the existing ones. The new counts are apportioned
exactly (:func:`romanjax.apportion_counts`, multinomial over the read intervals), converted
with the gain, added, quantised to whole DN and clipped, and saturation is flagged again.
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


def inject_counts_into_l1(key: jax.Array, resultants: ArrayLike, counts: ArrayLike,
                          pattern: ReadPattern, *, dq: ArrayLike | None = None,
                          gain: ArrayLike = 2.0, saturation: ArrayLike = 55000.0) -> L1:
    """Add ``counts`` electrons collected during the exposure to L1 ``resultants``.

    The counts are apportioned over the reads of ``pattern`` with ``key``
    (:func:`romanjax.apportion_counts`: the same draws as simulating them), divided by the
    gain, added to the resultants, rounded to whole DN (as an L1 holds them; this adds at
    most the variance 1/12 DN**2 of one more rounding) and clipped to
    ``[0, 1.1 * saturation]`` as :func:`romanjax.simulate_l1` clips; resultants at or above
    ``saturation`` get ``SATURATED``. Pixels with no new counts are returned unchanged, bit
    for bit, with their flags. The L1 must be linear in charge (simulated without
    ``inverse_linearity``): a non-linear response is not undone and redone here.

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

    Returns
    -------
    L1
        ``resultants`` [DN] in the input's float dtype (float for integer input) and
        ``dq`` uint32.
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
    added = apportion_counts(key, counts, pattern)
    return _inject(jnp.asarray(resultants, dtype), dq, jnp.asarray(added), jnp.asarray(counts),
                   jnp.asarray(gain, dtype), jnp.asarray(saturation, dtype))  # fmt: skip


@jax.jit
def _inject(resultants, dq, added, counts, gain, saturation):
    dtype = resultants.dtype
    new = jnp.round(resultants + added.astype(dtype) / gain)
    new = jnp.clip(new, 0, 1.1 * saturation)
    touched = (counts > 0)[None]
    out = jnp.where(touched, new, resultants)
    saturated = touched & (out >= saturation)
    flags = dq | jnp.where(saturated, jnp.uint32(dqbits.SATURATED), jnp.uint32(0))
    return L1(out, flags)
