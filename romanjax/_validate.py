"""Validation of host data at the array API's entry points, and the dtype rules.

Host data (numpy arrays, Python scalars) is checked here, on the host, with a ``ValueError``
or ``TypeError`` naming the function and the argument. Shapes are static, so they are checked
for traced and device arrays too; values of device arrays are never copied to the host.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ._read_pattern import ReadPattern

__all__ = ["float_dtype", "promoted_float_dtype", "check_pattern", "check_pixel_shape",
           "prepare_dq", "prepare_inputs"]


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


def promoted_float_dtype(*arrays) -> jnp.dtype:
    """The floating dtype of a computation that combines ``arrays`` (the forward model): their
    promoted type (Python scalars are weak), made floating, canonicalised."""
    arrays = [np.asarray(a) if isinstance(a, (list, tuple)) else a for a in arrays]
    dtype = jnp.result_type(*arrays)
    if not jnp.issubdtype(dtype, jnp.floating):
        dtype = jnp.result_type(dtype, float)
    return jnp.dtype(jax.dtypes.canonicalize_dtype(dtype))
