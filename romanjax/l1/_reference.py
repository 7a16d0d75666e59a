"""The reference read and the flight encoding of resultants relative to it.

On board, the detector is read once right after its reset (the reference read, a zero-time
read holding the reset level). The resultants are not stored as they are: each pixel's
reference read is subtracted and a constant ``data_encoding_offset`` [DN] is added, so that
read noise around a low level is not clipped at 0, and the result is stored as uint16
beside the reference read itself, which makes the encoding invertible::

    stored  = clip(resultant - reference_read + offset, 0, 65535)      (uint16)
    decoded = stored + reference_read - offset

as romanisim's ``encode_reference_read`` / ``decode_reference_read`` (romancal's ``dq_init``
decodes). Decoding is exact where the encoding did not clip, which the offset is there to
prevent. ``simulate_l1(reference_read=True)`` simulates the reference read itself.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from .._validate import check_real, check_values, float_dtype

__all__ = ["DATA_ENCODING_OFFSET", "encode_reference_read", "decode_reference_read"]

#: romanisim's default ``data_encoding_offset`` [DN].
DATA_ENCODING_OFFSET = 4000

_UINT16_MAX = 2**16 - 1


def _check(function, resultants, reference_read, offset):
    check_real(function, "resultants", resultants)
    check_real(function, "reference_read", reference_read)
    check_values(function, "reference_read", reference_read)
    if np.ndim(offset) != 0:
        raise ValueError(f"{function}: `data_encoding_offset` must be a scalar, got shape "
                         f"{np.shape(offset)}")  # fmt: skip
    check_values(function, "data_encoding_offset", offset, minimum=0)
    shape = np.shape(resultants)
    if len(shape) < 1:
        raise ValueError(f"{function}: `resultants` must have the resultant axis first, got "
                         f"a scalar")  # fmt: skip
    try:
        ok = np.broadcast_shapes(np.shape(reference_read), shape[1:]) == shape[1:]
    except ValueError:
        ok = False
    if not ok:
        raise ValueError(f"{function}: `reference_read` of shape {np.shape(reference_read)} "
                         f"does not broadcast against the pixel shape {shape[1:]}")  # fmt: skip


@jax.jit
def _encode(resultants, reference_read, offset):
    dtype = jnp.result_type(float_dtype(resultants, reference_read))
    encoded = (resultants.astype(dtype) - reference_read.astype(dtype)[None]
               + jnp.asarray(offset, dtype))  # fmt: skip
    # (NaN, which a clip leaves, becomes 0; the cast truncates towards 0 as numpy's does)
    encoded = jnp.clip(jnp.where(jnp.isnan(encoded), 0, encoded), 0, _UINT16_MAX)
    return encoded.astype(jnp.uint16)


@partial(jax.jit, static_argnames=("dtype",))
def _decode(data, reference_read, offset, *, dtype):
    return (data.astype(dtype) + reference_read.astype(dtype)[None]
            - jnp.asarray(offset, dtype))  # fmt: skip


def encode_reference_read(resultants: ArrayLike, reference_read: ArrayLike,
                          data_encoding_offset: ArrayLike = DATA_ENCODING_OFFSET,
                          ) -> jax.Array:  # fmt: skip
    """Encode resultants as the spacecraft stores them, romanisim's ``encode_reference_read``.

    ``clip(resultants - reference_read + data_encoding_offset, 0, 65535)`` as uint16.

    Parameters
    ----------
    resultants : array ``[n_resultant, *pixels]``
        Resultants [DN] (absolute, as :func:`romanjax.simulate_l1` returns them).
    reference_read : array broadcasting to ``[*pixels]``
        Reference read [DN] (``simulate_l1(..., reference_read=True)``).
    data_encoding_offset : int
        Offset added after the subtraction [DN] (romanisim's default 4000), >= 0.

    Returns
    -------
    jax.Array ``[n_resultant, *pixels]`` uint16
        Encoded resultants [DN], as stored in an L1 file's ``data``.

    Raises
    ------
    ValueError
        A shape that does not broadcast, a non-finite reference read, a negative or
        non-scalar offset (host data).
    """
    function = "encode_reference_read"
    _check(function, resultants, reference_read, data_encoding_offset)
    return _encode(jnp.asarray(resultants), jnp.asarray(reference_read), data_encoding_offset)


def decode_reference_read(data: ArrayLike, reference_read: ArrayLike,
                          data_encoding_offset: ArrayLike = DATA_ENCODING_OFFSET,
                          ) -> jax.Array:  # fmt: skip
    """Absolute resultants from encoded ones, romanisim's ``decode_reference_read``.

    ``data + reference_read - data_encoding_offset``; the inverse of
    :func:`encode_reference_read` wherever the encoding did not clip.

    Parameters
    ----------
    data : array ``[n_resultant, *pixels]``
        Encoded resultants [DN] (an L1 file's ``data``, uint16).
    reference_read : array broadcasting to ``[*pixels]``
        Reference read [DN].
    data_encoding_offset : int
        The offset the encoding added [DN] (an L1 file's
        ``meta.instrument.data_encoding_offset``).

    Returns
    -------
    jax.Array ``[n_resultant, *pixels]``
        Resultants [DN], in the float dtype of ``reference_read`` (float32 for integer
        inputs, as romanisim; float64 for float64 ones with x64 on).
    """
    function = "decode_reference_read"
    _check(function, data, reference_read, data_encoding_offset)
    reference_read = jnp.asarray(reference_read)
    dtype = (reference_read.dtype if jnp.issubdtype(reference_read.dtype, jnp.floating)
             else jnp.dtype(jnp.float32))  # fmt: skip
    return _decode(jnp.asarray(data), reference_read, data_encoding_offset, dtype=dtype)
