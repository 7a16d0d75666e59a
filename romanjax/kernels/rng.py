"""Philox4x32-10, the counter-based random bit generator of Salmon et al. (2011), in JAX.

The apportionment's binomial samplers need ~100 random 32-bit words per pixel. JAX's
threefry2x32 runs on the CPU as a separate kernel (20 rounds of add-rotate-xor per two
words). Philox4x32-10 (ten rounds of two 32x32 -> 64-bit multiplications per four words)
written in array operations fuses with its consumers instead, which makes the apportionment
faster on CPUs (see the benchmarks). It passes the same statistical tests (BigCrush; Salmon,
Moraes, Dror & Shaw 2011, "Parallel random numbers: as easy as 1, 2, 3", SC11) and is the
generator of cuRAND, numpy's ``Philox`` and TensorFlow.

The stream of a draw is keyed by two words taken from the caller's JAX key with
``jax.random.bits``, so any key implementation works and the same key gives the same words.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["map_words", "philox_4x32", "random_words"]

#: Multipliers and Weyl key increments of Philox4x32 (Salmon et al. 2011, table 2).
PHILOX_MULTIPLIERS = (0xD2511F53, 0xCD9E8D57)
PHILOX_WEYL = (0x9E3779B9, 0xBB67AE85)
PHILOX_ROUNDS = 10

try:  # newer JAX; older JAX (0.4.x) has it under jax.experimental
    _enable_x64 = jax.enable_x64
except AttributeError:  # pragma: no cover - depends on the installed JAX
    from jax.experimental import enable_x64 as _enable_x64


def _multiply_hi_lo(a, multiplier: int):
    """High and low uint32 words of the 64-bit product ``a * multiplier``.

    Traced with 64-bit types enabled locally, so it works with ``JAX_ENABLE_X64`` unset too;
    only the uint32 halves leave the block."""
    with _enable_x64(True):
        product = jax.lax.convert_element_type(a, jnp.uint64) * jnp.uint64(multiplier)
        high = jax.lax.convert_element_type(product >> jnp.uint64(32), jnp.uint32)
        low = jax.lax.convert_element_type(product, jnp.uint32)
    return high, low


def philox_4x32(key_words, counters):
    """Philox4x32-10 of ``counters`` (the first counter word; the other three are 0).

    Parameters
    ----------
    key_words : pair of uint32 scalars (may be traced)
    counters : uint32 array ``[m]``

    Returns
    -------
    four uint32 arrays ``[m]``: the four output words of each counter.
    """
    k0, k1 = (jnp.asarray(k, jnp.uint32) for k in key_words)
    c0 = jnp.asarray(counters, jnp.uint32)
    c1 = c2 = c3 = jnp.zeros_like(c0)
    for _ in range(PHILOX_ROUNDS):
        high0, low0 = _multiply_hi_lo(c0, PHILOX_MULTIPLIERS[0])
        high1, low1 = _multiply_hi_lo(c2, PHILOX_MULTIPLIERS[1])
        c0, c1, c2, c3 = high1 ^ c1 ^ k0, low1, high0 ^ c3 ^ k1, low0
        k0 = k0 + jnp.uint32(PHILOX_WEYL[0])
        k1 = k1 + jnp.uint32(PHILOX_WEYL[1])
    return c0, c1, c2, c3


def _key_words(key):
    bits = jax.random.bits(key, (2,), jnp.uint32)
    return bits[0], bits[1]


def _in_a_buffer(function, key_words, *operands):
    """``function(key_words, *operands)`` computed into a buffer of its own (the CPU path).

    On XLA CPU a generator written in array operations is fused into every consumer of its
    result, and several consumers then evaluate it several times over (2-4x the work;
    ``optimization_barrier`` does not stop it). The result of a conditional is never fused
    into its consumers; both branches are the same, so the predicate does not matter. On
    other platforms the function is left to the compiler."""
    def buffered(*args):
        return jax.lax.cond(args[0][0] > args[0][1], function, function, *args)

    return jax.lax.platform_dependent(key_words, *operands, cpu=buffered, default=function)


def map_words(key, function, *operands):
    """``function(words, *operands)`` with ``words`` the four Philox4x32-10 words of counter
    ``i`` for element ``i`` of the ``[size]`` operands, as one kernel with one output.

    All four words of a counter are used for one element, and no words array is written
    out; the stream is keyed by ``jax.random.bits(key, (2,), uint32)``."""
    size = operands[0].shape[0]
    if size > 2**32:
        raise ValueError(f"map_words: operands must have at most 2**32 elements, got {size}")

    def kernel(key_words, *operands):
        words = philox_4x32(key_words, jnp.arange(size, dtype=jnp.uint32))
        return function(words, *operands)

    return _in_a_buffer(kernel, _key_words(key), *operands)


def random_words(key, size: int):
    """Two independent uint32 arrays ``[size]`` of random bits for the JAX ``key``.

    Word 0 of Philox4x32-10 at counters ``0..2 size - 1`` of the stream keyed by
    ``jax.random.bits(key, (2,), uint32)``; the first ``size`` make the first array. (One
    word per counter: the other three would have to leave the kernel as extra arrays, and
    on the CPU that costs more than the hash; :func:`map_words` uses all four where one
    kernel can consume them.)"""
    if 2 * size > 2**32:
        raise ValueError(f"random_words: `size` must be at most 2**31, got {size}")

    def first_words(key_words):
        return philox_4x32(key_words, jnp.arange(2 * size, dtype=jnp.uint32))[0]

    words = _in_a_buffer(first_words, _key_words(key))
    return words[:size], words[size:]
