"""Philox4x32-10, the random bit generator of the apportionment (romanjax.kernels.rng)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from romanjax.kernels import rng as _philox

# Known-answer vectors of Philox4x32-10 from Random123 (Salmon et al. 2011, kat_vectors):
# (counter words, key words, output words).
RANDOM123_KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


def _philox_full_counter(key_words, counter):
    """Philox4x32-10 of a full four-word counter, from the module's round constants (the
    module's own function fixes the last three counter words to 0)."""
    k0, k1 = (jnp.uint32(k) for k in key_words)
    c = [jnp.asarray([w], jnp.uint32) for w in counter]
    for _ in range(_philox.PHILOX_ROUNDS):
        high0, low0 = _philox._multiply_hi_lo(c[0], _philox.PHILOX_MULTIPLIERS[0])
        high1, low1 = _philox._multiply_hi_lo(c[2], _philox.PHILOX_MULTIPLIERS[1])
        c = [high1 ^ c[1] ^ k0, low1, high0 ^ c[3] ^ k1, low0]
        k0 = k0 + jnp.uint32(_philox.PHILOX_WEYL[0])
        k1 = k1 + jnp.uint32(_philox.PHILOX_WEYL[1])
    return tuple(int(w[0]) for w in c)


@pytest.mark.parametrize("counter, key_words, expected", RANDOM123_KAT)
def test_round_function_reproduces_random123_known_answers(counter, key_words, expected):
    assert _philox_full_counter(key_words, counter) == expected


def test_multiply_hi_lo_is_the_exact_64_bit_product():
    a = np.array([0, 1, 0xFFFFFFFF, 0x12345678, 0x80000000], np.uint64)
    for multiplier in _philox.PHILOX_MULTIPLIERS:
        high, low = _philox._multiply_hi_lo(jnp.asarray(a, jnp.uint32), multiplier)
        product = a * np.uint64(multiplier)  # < 2**64: exact in numpy's uint64
        np.testing.assert_array_equal(np.asarray(high), product >> np.uint64(32))
        np.testing.assert_array_equal(np.asarray(low), product & np.uint64(0xFFFFFFFF))


def test_zero_counter_tail_matches_the_full_counter_round_function():
    key_words = (0xA4093822, 0x299F31D0)
    words = _philox.philox_4x32(key_words, jnp.asarray([0, 7, 0xFFFFFFFF], jnp.uint32))
    for i, counter in enumerate((0, 7, 0xFFFFFFFF)):
        expected = _philox_full_counter(key_words, (counter, 0, 0, 0))
        assert tuple(int(w[i]) for w in words) == expected


def test_random_words_are_word_zero_of_consecutive_counters_on_every_path():
    key = jax.random.key(5)
    size = 1000
    first, second = jax.jit(lambda k: _philox.random_words(k, size))(key)
    bits = jax.random.bits(key, (2,), jnp.uint32)
    direct = _philox.philox_4x32((bits[0], bits[1]), jnp.arange(2 * size, dtype=jnp.uint32))[0]
    np.testing.assert_array_equal(np.asarray(first), np.asarray(direct[:size]))
    np.testing.assert_array_equal(np.asarray(second), np.asarray(direct[size:]))
    # the conditional the CPU path uses to keep the words out of their consumers' loops
    def first_words(key_words):
        return _philox.philox_4x32(key_words, jnp.arange(2 * size, dtype=jnp.uint32))[0]

    buffered = _philox._in_a_buffer(first_words, (bits[0], bits[1]))
    np.testing.assert_array_equal(np.asarray(buffered), np.asarray(direct))


def test_random_words_bits_are_fair_and_independent_across_keys_and_halves():
    size = 200_000
    first, second = _philox.random_words(jax.random.key(11), size)
    other, _ = _philox.random_words(jax.random.key(12), size)
    for words in (first, second, other):
        words = np.asarray(words)
        ones = np.unpackbits(words.view(np.uint8)).reshape(size, 32).sum(axis=0)
        # every bit position is a fair coin: 32 binomial tests at 5.5 sigma
        assert np.all(np.abs(ones - size / 2) < 5.5 * np.sqrt(size / 4))
        assert stats.kstest(words / 2.0**32, "uniform").pvalue > 1e-4
    for a, b in ((first, second), (first, other)):
        r = np.corrcoef(np.asarray(a, np.float64), np.asarray(b, np.float64))[0, 1]
        assert abs(r) < 5 / np.sqrt(size)
    same_key, _ = _philox.random_words(jax.random.key(11), size)
    np.testing.assert_array_equal(np.asarray(same_key), np.asarray(first))


def test_random_words_reject_a_size_the_counters_cannot_hold():
    with pytest.raises(ValueError, match="size"):
        _philox.random_words(jax.random.key(0), 2**31 + 1)


def test_map_words_gives_each_element_the_four_words_of_its_counter():
    key = jax.random.key(9)
    n = jnp.arange(1000, dtype=jnp.uint32)

    def combine(words, n):
        return (words[0] ^ (words[1] >> 3)) + words[2] * 3 + (words[3] | n)

    got = jax.jit(lambda k, n: _philox.map_words(k, combine, n))(key, n)
    bits = jax.random.bits(key, (2,), jnp.uint32)
    words = _philox.philox_4x32((bits[0], bits[1]), jnp.arange(1000, dtype=jnp.uint32))
    np.testing.assert_array_equal(np.asarray(got), np.asarray(combine(words, n)))
    with pytest.raises(ValueError, match="2\\*\\*32"):
        jax.eval_shape(lambda n: _philox.map_words(key, combine, n),
                       jax.ShapeDtypeStruct((2**32 + 1,), jnp.uint32))
