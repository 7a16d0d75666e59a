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


def test_full_counters_reproduce_random123_known_answers():
    for counter, key_words, expected in RANDOM123_KAT:
        words = _philox.philox_4x32(key_words, *(jnp.asarray([w], jnp.uint32) for w in counter))
        assert tuple(int(w[0]) for w in words) == expected


@pytest.mark.parametrize("multiply", ["_multiply_hi_lo", "_multiply_hi_lo_64"])
def test_multiply_hi_lo_on_random_operands(multiply):
    """Both products (uint32 halves everywhere but CPUs, one uint64 product on CPUs)."""
    a = np.random.default_rng(0).integers(0, 2**32, 100_000, dtype=np.uint64)
    for multiplier in _philox.PHILOX_MULTIPLIERS:
        high, low = jax.jit(getattr(_philox, multiply), static_argnums=1)(
            jnp.asarray(a, jnp.uint32), multiplier)
        product = a * np.uint64(multiplier)
        np.testing.assert_array_equal(np.asarray(high), product >> np.uint64(32))
        np.testing.assert_array_equal(np.asarray(low), product & np.uint64(0xFFFFFFFF))


def test_key_words_differ_across_keys_and_implementations_and_repeat_for_one_key():
    keys = [jax.random.key(1), jax.random.key(2), jax.random.key(1, impl="rbg"),
            jax.random.key(2, impl="rbg"), jax.random.fold_in(jax.random.key(1), 0),
            jax.random.split(jax.random.key(1))[1]]
    words = [tuple(int(w) for w in _philox.key_words(k)) for k in keys]
    assert len(set(words)) == len(words)
    # a raw uint32 key and the typed threefry key of the same seed are the same key
    assert tuple(int(w) for w in _philox.key_words(jax.random.PRNGKey(1))) == words[0]
    assert tuple(int(w) for w in jax.jit(_philox.key_words)(keys[0])) == words[0]


def test_counter_words_are_fair_and_independent_across_elements_attempts_and_streams():
    size = 200_000
    key_words = _philox.key_words(jax.random.key(11))
    element = jnp.arange(size, dtype=jnp.uint32)
    first = _philox.counter_words(key_words, element, 0, 0)[0]
    samples = [first, _philox.counter_words(key_words, element, 1, 0)[0],
               _philox.counter_words(key_words, element, 0, 1)[0],
               _philox.counter_words(_philox.key_words(jax.random.key(12)), element, 0, 0)[0]]
    for words in samples:
        words = np.asarray(words)
        ones = np.unpackbits(words.view(np.uint8)).reshape(size, 32).sum(axis=0)
        # every bit position is a fair coin: 32 binomial tests at 5.5 sigma
        assert np.all(np.abs(ones - size / 2) < 5.5 * np.sqrt(size / 4))
        assert stats.kstest(words / 2.0**32, "uniform").pvalue > 1e-4
    for other in samples[1:]:
        r = np.corrcoef(np.asarray(first, np.float64), np.asarray(other, np.float64))[0, 1]
        assert abs(r) < 5 / np.sqrt(size)
    # a pure function of the counter: any subset of elements, in any order
    picked = jnp.asarray([5, 199_999, 0, 77], jnp.uint32)
    np.testing.assert_array_equal(
        np.asarray(_philox.counter_words(key_words, picked, 0, 0)[0]),
        np.asarray(first)[np.asarray(picked)])


def test_in_a_buffer_computes_the_function_on_every_path():
    key_words = _philox.key_words(jax.random.key(5))
    element = jnp.arange(1000, dtype=jnp.uint32)

    def words(element, key_words):
        return _philox.counter_words(key_words, element, 3, 0)

    direct = words(element, key_words)
    for got in (_philox.in_a_buffer(words, element, key_words),
                jax.jit(lambda e: _philox.in_a_buffer(words, e, key_words))(element),
                _philox.in_a_buffer(words, element[:0], key_words)):
        n = got[0].shape[0]
        for a, b in zip(got, direct):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b)[:n])


def test_standard_normal_is_normal_and_keyed_by_element_and_index():
    key_words = _philox.key_words(jax.random.key(3))
    element = jnp.arange(100_000, dtype=jnp.uint32)
    for dtype in {jax.dtypes.canonicalize_dtype(d) for d in (jnp.float32, jnp.float64)}:
        z = _philox.standard_normal(key_words, element, 0, 0, dtype)
        assert z.dtype == dtype and np.all(np.isfinite(np.asarray(z)))
        assert stats.kstest(np.asarray(z, np.float64), "norm").pvalue > 1e-4
        rows = _philox.standard_normal(key_words, element, jnp.arange(2, dtype=jnp.uint32)[:, None],
                                       0, dtype)
        np.testing.assert_array_equal(np.asarray(rows[0]), np.asarray(z))
        r = np.corrcoef(np.asarray(rows, np.float64))[0, 1]
        assert abs(r) < 5 / np.sqrt(100_000)
