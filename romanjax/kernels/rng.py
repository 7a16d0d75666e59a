"""Philox4x32-10, the counter-based random bit generator of Salmon et al. (2011), in JAX.

The apportionment's binomial samplers need ~100 random 32-bit words per pixel. Philox4x32-10
(ten rounds of two 32 x 32 -> 64-bit multiplications per four words) written in array
operations fuses with its consumers, passes the same statistical tests as JAX's threefry
(BigCrush; Salmon, Moraes, Dror & Shaw 2011, "Parallel random numbers: as easy as 1, 2, 3",
SC11) and is the generator of cuRAND, numpy's ``Philox`` and TensorFlow.

Every word is a pure function of a counter and a key, and the samplers use the counter
``(element, attempt, stream, 0)``: ``element`` is the global index of the pixel, not its
position in the array at hand, so a pixel's random numbers do not depend on how a frame is
cut into chunks or devices, nor on which of the samplers' work buffers it lands in. The key
is two words taken from the caller's JAX key with ``jax.random.bits``, so any key
implementation works and the same key gives the same words.

The 64-bit products are formed from 16-bit halves in uint32 arithmetic, so no 64-bit type
appears in the program (TPUs have none); on CPUs, where a uint64 multiplication is cheaper,
through one uint64 product.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from .. import _platform

__all__ = ["philox_4x32", "key_words", "counter_words", "in_a_buffer", "unit",
           "standard_normal"]

#: Multipliers and Weyl key increments of Philox4x32 (Salmon et al. 2011, table 2).
PHILOX_MULTIPLIERS = (0xD2511F53, 0xCD9E8D57)
PHILOX_WEYL = (0x9E3779B9, 0xBB67AE85)
PHILOX_ROUNDS = 10
#: Fixed Philox key under which a JAX key's data words are mixed into the key words (the
#: first digits of pi, as in Random123's test vectors).
_KEY_MIXING = (0x243F6A88, 0x85A308D3)


def _multiply_hi_lo(a, multiplier: int):
    """High and low uint32 words of the 64-bit product ``a * multiplier`` (uint32 ``a``).

    With ``a = a1 2**16 + a0`` and ``m = m1 2**16 + m0``, ``t = a1 m0 + (a0 m0 >> 16)`` and
    ``w = (t & 0xFFFF) + a0 m1`` are below ``2**32``, and the high word is
    ``a1 m1 + (t >> 16) + (w >> 16)``; the low word is the wrapping uint32 product."""
    a = jnp.asarray(a, jnp.uint32)
    m0, m1 = jnp.uint32(multiplier & 0xFFFF), jnp.uint32(multiplier >> 16)
    a0, a1 = a & jnp.uint32(0xFFFF), a >> jnp.uint32(16)
    t = a1 * m0 + ((a0 * m0) >> jnp.uint32(16))
    w = (t & jnp.uint32(0xFFFF)) + a0 * m1
    high = a1 * m1 + (t >> jnp.uint32(16)) + (w >> jnp.uint32(16))
    return high, a * jnp.uint32(multiplier)


def _multiply_hi_lo_64(a, multiplier: int):
    """:func:`_multiply_hi_lo` through one uint64 product (traced under a local x64 scope,
    so it works with ``JAX_ENABLE_X64`` unset; only the uint32 halves leave it): on CPUs one
    multiplication instead of four, and a smaller program to compile."""
    with _platform.enable_x64(True):
        product = jax.lax.convert_element_type(a, jnp.uint64) * jnp.uint64(multiplier)
        high = jax.lax.convert_element_type(product >> jnp.uint64(32), jnp.uint32)
        low = jax.lax.convert_element_type(product, jnp.uint32)
    return high, low


def _round(key_words, counters, multiply):
    """One Philox round: the counters mixed under the round key ``key_words``."""
    k0, k1 = key_words
    c0, c1, c2, c3 = counters
    high0, low0 = multiply(c0, PHILOX_MULTIPLIERS[0])
    high1, low1 = multiply(c2, PHILOX_MULTIPLIERS[1])
    return high1 ^ c1 ^ k0, low1, high0 ^ c3 ^ k1, low0


#: One round per multiplication, each a ``jax.jit``: the ten rounds of a call (and the
#: calls of one shape) trace it once. XLA inlines the calls, so the program is the same.
_ROUND_NARROW = jax.jit(partial(_round, multiply=_multiply_hi_lo))
_ROUND_WIDE = jax.jit(partial(_round, multiply=_multiply_hi_lo_64))


def _rounds(key_words, counters, round_):
    k0, k1 = key_words
    for _ in range(PHILOX_ROUNDS):
        counters = round_((k0, k1), counters)
        k0 = k0 + jnp.uint32(PHILOX_WEYL[0])
        k1 = k1 + jnp.uint32(PHILOX_WEYL[1])
    return counters


@jax.jit
def _philox_narrow(key_words, counters):
    return _rounds(key_words, counters, _ROUND_NARROW)


@jax.jit
def _philox_wide(key_words, counters):
    return _rounds(key_words, counters, _ROUND_WIDE)


def philox_4x32(key_words, c0, c1=0, c2=0, c3=0):
    """Philox4x32-10 of the counters ``(c0, c1, c2, c3)`` (broadcast uint32 arrays).

    Parameters
    ----------
    key_words : pair of uint32 scalars (may be traced)
    c0, c1, c2, c3 : uint32 arrays or scalars, broadcast together

    Returns
    -------
    four uint32 arrays: the four output words of each counter.

    The products are formed in uint32 halves (:func:`_multiply_hi_lo`) except on CPUs, where
    one uint64 product is cheaper (:func:`_multiply_hi_lo_64`; where
    :data:`romanjax._platform.LOCAL_X64` allows it); the words are the same.
    """
    key_words = tuple(jnp.asarray(k, jnp.uint32) for k in key_words)
    counters = tuple(jnp.broadcast_arrays(*(jnp.asarray(c, jnp.uint32)
                                            for c in (c0, c1, c2, c3))))
    # jitted rounds: each shape is traced once however often the samplers call them
    return _platform.by_platform(key_words, counters, default=_philox_narrow,
                                 cpu=_philox_wide if _platform.LOCAL_X64 else _philox_narrow)


def key_words(key):
    """The two uint32 Philox key words of a JAX random ``key`` (typed or raw uint32).

    The key's data words (two for threefry keys, four for ``rbg``), zero-padded to four,
    taken as a counter of Philox4x32-10 under a fixed key; its first two output words. A
    bijection of the counter, so different key data give different words (up to the
    truncation to 64 bits); read directly rather than drawn with ``jax.random.bits``, whose
    counter arithmetic is 64-bit."""
    if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.key_data(key)
    data = jnp.asarray(key).reshape(-1).astype(jnp.uint32)
    words = [data[i] if i < data.shape[0] else jnp.uint32(0) for i in range(4)]
    for i in range(4, data.shape[0]):
        words[i % 4] = words[i % 4] ^ data[i]
    mixed = philox_4x32(_KEY_MIXING, *words)
    return mixed[0], mixed[1]


def counter_words(key_words, element, attempt, stream):
    """The four words of counter ``(element, attempt, stream, 0)``: ``element`` uint32
    ``[m]`` (global indices), ``attempt`` uint32 ``[m]`` or scalar, ``stream`` a Python int
    that separates the uses of one attempt."""
    return philox_4x32(key_words, element, attempt, stream)


def in_a_buffer(function, element, *operands):
    """``function(element, *operands)`` computed into buffers of its own
    (:func:`romanjax._platform.materialise`), for a uint32 ``element`` ``[m]`` of indices
    below ``2**32 - 1``.

    On XLA CPU a generator written in array operations is fused into every consumer of its
    result, and several consumers then evaluate it several times over (2-4x the work;
    ``optimization_barrier`` does not stop it there). ``element[0] == 2**32 - 1`` is false
    but not provably so, which is what the CPU's materialisation needs."""
    if element.shape[0] == 0:
        return function(element, *operands)
    flag = element[0] == jnp.uint32(0xFFFFFFFF)
    return _platform.materialise(function(element, *operands), flag)


def unit(words, dtype, first=0):
    """Uniform on (0, 1) from ``words[first]`` (float32, 23 bits) or ``words[first]`` and
    ``words[first + 1]`` (float64, 53 bits); never exactly 0 or 1."""
    if jnp.dtype(dtype) == jnp.float32:
        return ((words[first] >> 9).astype(jnp.float32) + 0.5) * 2.0**-23
    return ((words[first] >> 5).astype(dtype) * 2.0**26
            + (words[first + 1] >> 6).astype(dtype) + 0.5) * 2.0**-53  # fmt: skip


def standard_normal(key_words, element, index, stream: int, dtype):
    """Standard normal draws, one per ``(element, index)`` pair (broadcast uint32 arrays):
    ``sqrt(2) erfinv(2 u - 1)`` of a uniform ``u`` strictly inside (0, 1) from counter
    ``(element, index, stream, 0)``: float32 from 23 bits of one word, float64 from 53 bits
    of two. Like every stream here, a pure function of the key and the counter."""
    dtype = jnp.dtype(dtype)
    u = unit(counter_words(key_words, element, index, stream), dtype)
    return jnp.sqrt(jnp.asarray(2.0, dtype)) * jax.lax.erf_inv(2.0 * u - 1.0)
