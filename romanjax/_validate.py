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
           "check_real", "check_values", "prepare_dq", "prepare_inputs"]


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


def _dtype(value) -> np.dtype:
    dtype = getattr(value, "dtype", None)
    return np.dtype(dtype) if dtype is not None else np.asarray(value).dtype


def check_real(function: str, name: str, value) -> None:
    """Raise ``TypeError`` naming ``name`` unless ``value`` holds real numbers (integers or
    floats; not booleans, complex numbers or objects)."""
    dtype = _dtype(value)
    if dtype.kind not in "iuf":
        raise TypeError(f"{function}: `{name}` must be real numbers, got dtype {dtype}")


def check_values(function: str, name: str, value, *, minimum=None, strict=False) -> None:
    """For host data (Python numbers, numpy arrays): raise ``ValueError`` naming ``name`` if
    ``value`` holds NaN or inf, or a value below ``minimum`` (at or below it with
    ``strict``). Device and traced values are not read back (the kernels flag them)."""
    if value is None or isinstance(value, jax.Array):
        return
    check_real(function, name, value)
    host = np.asarray(value)
    if host.dtype.kind == "f" and not np.isfinite(host).all():
        raise ValueError(f"{function}: `{name}` must be finite, got NaN or inf")
    if minimum is not None and host.size:
        low = host.min()
        if low < minimum or (strict and low == minimum):
            relation = ">" if strict else ">="
            raise ValueError(f"{function}: `{name}` must be {relation} {minimum}, got {low}")


def prepare_dq(function: str, dq, shape: tuple):
    """``dq`` as uint32 broadcast to ``shape`` (zeros if None), or an error naming it: dq
    must be integers (a ``TypeError`` otherwise), and host values must fit in 32 bits
    (0 to 2**32 - 1; a ``ValueError`` otherwise), never cast with loss."""
    if dq is None:
        return jnp.zeros(shape, dtype=jnp.uint32)
    try:
        np.broadcast_shapes(np.shape(dq), shape)
    except ValueError:
        raise ValueError(
            f"{function}: `dq` of shape {np.shape(dq)} does not broadcast against `resultants` "
            f"of shape {shape}"
        ) from None
    dq_dtype = _dtype(dq)
    if dq_dtype.kind not in "iu":
        raise TypeError(f"{function}: `dq` must be an integer array, got dtype {dq_dtype}")
    if not isinstance(dq, jax.Array) and (dq_dtype.kind == "i" or dq_dtype.itemsize > 4):
        host = np.asarray(dq)
        if host.size and (host.min() < 0 or host.max() > 2**32 - 1):
            raise ValueError(f"{function}: `dq` values must be 0 to 2**32 - 1 (32 flag bits), "
                             f"got {host.min()} to {host.max()}")
    return jnp.broadcast_to(jnp.asarray(dq).astype(jnp.uint32), shape)


#: What host values of the fitters' per-pixel arguments must be (besides finite).
_PER_PIXEL_RULES = {"read_noise": {"minimum": 0}}


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
    check_real(function, "resultants", resultants)
    dtype = float_dtype(resultants)
    if dq is None and not make_dq and not isinstance(resultants, jax.Array):
        # host data with NaN or inf: the fit takes the masked path, which leaves them out
        # (flagged DO_NOT_USE inside the jit) and fits each pixel from its other resultants
        host = np.asarray(resultants)
        if host.dtype.kind == "f" and not np.isfinite(host).all():
            make_dq = True
    resultants = jnp.asarray(resultants, dtype=dtype)
    pixels = resultants.shape[1:]
    dq = prepare_dq(function, dq, resultants.shape) if dq is not None or make_dq else None
    out = {}
    for name, value in per_pixel.items():
        if value is None:
            out[name] = None
            continue
        check_values(function, name, value, **_PER_PIXEL_RULES.get(name, {}))
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
