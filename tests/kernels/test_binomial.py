"""The exact vectorised binomial sampler behind apportion_counts (romanjax.kernels.binomial).

Goodness of fit against scipy's exact pmf (float64) on both algorithms (inversion below a
mean of 10, BTRS above), across the switch, for p > 1/2 (symmetry), huge n (float32
acceptance test), through the compacted redraw levels and the in-place fallback.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from romanjax.kernels import binomial as _binomial

SAMPLES = 200_000
# one compiled sampler for every case (n and p are traced), so the file compiles once
_binomial_jit = jax.jit(_binomial.binomial, static_argnames="dtype")


def _draw(key, n, p):
    dtype = jax.dtypes.canonicalize_dtype(jnp.float64)
    n_array = jnp.full(SAMPLES, n, jnp.int32)
    return np.asarray(_binomial_jit(key, n_array, p, dtype=dtype)).astype(np.int64)


def _chi2_pvalue(x, n, p):
    """Pearson chi-square p-value of the sample ``x`` against Binomial(n, p), binned."""
    mean, sd = n * p, np.sqrt(n * p * (1 - p))
    lo, hi = int(max(0, mean - 6 * sd - 1)), int(min(n, mean + 6 * sd + 1))
    edges = np.unique(np.round(np.linspace(lo, hi + 1, 50)).astype(np.int64))
    edges = np.concatenate([[-1], edges[1:-1], [n + 1]])  # outer bins take the tails
    observed = np.histogram(x, edges)[0]
    expected = np.diff(stats.binom.cdf(edges - 1, n, p)) * len(x)
    keep = expected > 10
    # merge the sparse bins into one so no probability mass is left out of the test
    observed = np.append(observed[keep], observed[~keep].sum())
    expected = np.append(expected[keep], expected[~keep].sum())
    if expected[-1] < 10:
        observed, expected = observed[:-1], expected[:-1]
    chi2 = ((observed - expected) ** 2 / expected).sum()
    return stats.chi2.sf(chi2, len(observed) - 1)


CASES = [
    (3, 0.3),  # inversion, tiny n
    (40, 0.2),  # inversion, mean 8
    (49, 0.2),  # mean 9.8: last inversion
    (51, 0.2),  # mean 10.2: first BTRS
    (120, 0.5),  # BTRS at p = 1/2
    (300, 0.9),  # p > 1/2 through the symmetry, mean of the low side 30
    (5_000, 1 / 45),  # a typical read of a ramp
    (1_000_000, 0.3),
    (100_000_000, 0.02),
    (2_000_000_000, 0.01),  # the largest total apportion_counts accepts
]


@pytest.mark.parametrize("n, p", CASES)
def test_matches_exact_pmf(n, p):
    x = _draw(jax.random.key(n % 1009), n, p)
    assert x.min() >= 0 and x.max() <= n
    mean, var = n * p, n * p * (1 - p)
    z = (x.mean() - mean) / np.sqrt(var / len(x))
    assert abs(z) < 5, z
    # variance of the sample variance ~ 2 var^2 / N for near-normal shapes
    assert abs(x.var() / var - 1) < 5 * np.sqrt(2 / len(x)) + 5 / len(x), x.var() / var
    assert _chi2_pvalue(x, n, p) > 1e-4


def _draw_array(key, n, p):
    dtype = jax.dtypes.canonicalize_dtype(jnp.float64)
    return np.asarray(_binomial_jit(key, n, p, dtype=dtype)).astype(np.int64)


def test_mixed_regimes_in_one_array():
    """Inversion and rejection elements side by side: each matches its own pmf."""
    n = jnp.asarray(np.repeat([20, 4000], SAMPLES // 2), jnp.int32)
    x = _draw_array(jax.random.key(5), n, 0.05)
    assert _chi2_pvalue(x[: SAMPLES // 2], 20, 0.05) > 1e-4
    assert _chi2_pvalue(x[SAMPLES // 2:], 4000, 0.05) > 1e-4


def _key_words(seed):
    return _binomial._key_words(jax.random.key(seed))


@pytest.mark.parametrize("schedule", ["_redraw_nested", "_redraw_flat"])
def test_redraws_when_the_buffer_overflows(schedule):
    """All rejected (more than the compaction buffer holds): both schedules still produce
    the exact distribution, and accepted entries are kept as they are."""
    n, p, size = 2000, 0.1, 20_000
    nf = jnp.full(size, float(n), jnp.float32)
    k0 = jnp.zeros(size, jnp.float32)
    element = jnp.arange(size, dtype=jnp.uint32)
    attempt = jnp.ones(size, jnp.uint32)
    redraw = jax.jit(getattr(_binomial, schedule))
    x = np.asarray(redraw(_key_words(11), element, nf, jnp.float32(p), k0,
                          jnp.zeros(size, bool), attempt)).astype(int)
    assert _chi2_pvalue(x, n, p) > 1e-4
    kept = redraw(_key_words(11), element, nf, jnp.float32(p), k0 + 7, jnp.ones(size, bool),
                  attempt)
    assert np.all(np.asarray(kept) == 7)


def test_redraw_schedules_give_the_same_draws():
    """The CPU's nested buffers and the accelerators' single loop make the same attempts
    per element (its own counter sequence), so they give identical draws, whatever the
    number of rejected elements."""
    rng = np.random.default_rng(3)
    size = 30_000
    nf = jnp.asarray(rng.integers(20, 5000, size), jnp.float32)
    p = jnp.float32(0.2)
    element = jnp.asarray(rng.permutation(10 * size)[:size], jnp.uint32)
    for rejected in (0.05, 0.5, 1.0):
        accepted = jnp.asarray(rng.random(size) >= rejected)
        args = (_key_words(4), element, nf, p, jnp.zeros(size, jnp.float32), accepted,
                jnp.ones(size, jnp.uint32))
        nested = np.asarray(jax.jit(_binomial._redraw_nested)(*args))
        flat = np.asarray(jax.jit(_binomial._redraw_flat)(*args))
        np.testing.assert_array_equal(nested, flat)
        assert np.all(nested[np.asarray(accepted)] == 0)
        assert np.all(nested[~np.asarray(accepted)] > 0)


def test_draws_depend_on_the_element_index_not_the_array():
    """An element's draw is a function of the key, its index, n and p: the same in a
    prefix, a permutation or a different neighbourhood of the array (so a frame cut into
    chunks draws what the whole frame would)."""
    rng = np.random.default_rng(8)
    size = 20_000
    n = jnp.asarray(rng.integers(0, 3000, size), jnp.int32)
    dtype = jax.dtypes.canonicalize_dtype(jnp.float64)
    whole = np.asarray(_binomial_jit(jax.random.key(2), n, 0.3, dtype=dtype))
    order = rng.permutation(size)[:7001]  # odd size: padded inside
    shuffled = _binomial_jit(jax.random.key(2), n[order], 0.3, dtype=dtype,
                             element=jnp.asarray(order, jnp.uint32))
    np.testing.assert_array_equal(np.asarray(shuffled), whole[order])
    for sampler in (_half_jit,):
        whole = np.asarray(sampler(jax.random.key(2), n, dtype=dtype))
        part = sampler(jax.random.key(2), n[order], dtype=dtype,
                       element=jnp.asarray(order, jnp.uint32))
        np.testing.assert_array_equal(np.asarray(part), whole[order])


def test_table_and_formula_first_attempts_agree():
    """The first attempt with the CPU's log k! table and with the formula (elsewhere) accept
    the same candidates but for the rounding of the ratio, and both discard n beyond the
    table."""
    size = 50_000
    dtype = jax.dtypes.canonicalize_dtype(jnp.float64)
    rng = np.random.default_rng(1)
    nf = jnp.asarray(rng.integers(100, _binomial.LOG_FACTORIAL_TABLE_SIZE + 1000, size), dtype)
    p = jnp.asarray(0.05, dtype)
    u, v = _binomial.uniform_pair(_key_words(1), jnp.arange(size, dtype=jnp.uint32), 0, dtype)
    constants = _binomial._btrs_constants(nf, p)
    k_t, a_t = _binomial._btrs_attempt(u, v, nf, p, constants, first=True, table=True)
    k_f, a_f = _binomial._btrs_attempt(u, v, nf, p, constants, first=True, table=False)
    np.testing.assert_array_equal(np.asarray(k_t), np.asarray(k_f))
    assert np.mean(np.asarray(a_t) != np.asarray(a_f)) < 1e-3
    beyond = np.asarray(nf) >= _binomial.LOG_FACTORIAL_TABLE_SIZE
    assert beyond.any() and not np.any(np.asarray(a_t)[beyond] | np.asarray(a_f)[beyond])


def test_edges_and_determinism():
    key = jax.random.key(3)
    n = jnp.asarray([0, 1, 5, 100, 2_000_000_000], jnp.int32)
    assert np.array_equal(_binomial.binomial(key, n, 1.0, jnp.float32), n)
    assert np.array_equal(_binomial.binomial(key, n, 0.0, jnp.float32), np.zeros(5))
    assert np.all(np.asarray(_binomial.binomial(key, n * 0, 0.3, jnp.float32)) == 0)
    a = _binomial.binomial(key, jnp.full(1000, 500, jnp.int32), 0.2, jnp.float32)
    b = _binomial.binomial(key, jnp.full(1000, 500, jnp.int32), 0.2, jnp.float32)
    c = _binomial.binomial(jax.random.key(4), jnp.full(1000, 500, jnp.int32), 0.2, jnp.float32)
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_other_key_implementations_and_raw_keys():
    n = jnp.full(SAMPLES, 300, jnp.int32)
    for key in (jax.random.key(1, impl="rbg"), jax.random.PRNGKey(1)):
        x = _draw_array(key, n, 0.25)
        assert _chi2_pvalue(x, 300, 0.25) > 1e-4


def test_uniform_pair_is_uniform_and_independent():
    element = jnp.arange(SAMPLES, dtype=jnp.uint32)
    for dtype in {jax.dtypes.canonicalize_dtype(d) for d in (jnp.float32, jnp.float64)}:
        u, v = _binomial.uniform_pair(_key_words(2), element, 0, dtype)
        u2, _ = _binomial.uniform_pair(_key_words(2), element, 1, dtype)
        assert u.dtype == v.dtype == dtype
        u, v, u2 = (np.asarray(w, np.float64) for w in (u, v, u2))
        for w in (u, v, u2):
            assert w.min() >= 0 and w.max() < 1
            assert stats.kstest(w, "uniform").pvalue > 1e-4
        for w in (v, u2):  # another stream, another attempt
            assert abs(np.corrcoef(u, w)[0, 1]) < 5 / np.sqrt(SAMPLES)
        if dtype == jnp.float64:  # more than float32's 23 random bits
            assert np.any(u * 2.0**23 != np.floor(u * 2.0**23))


@pytest.mark.parametrize("n, p, tol", [
    (100, 0.1, 1e-4), (10_000, 0.3, 1e-4), (1_000_000, 0.02, 1e-4), (100_000_000, 0.5, 1e-4),
    # at 2e9 float32 cannot hold n, m and k exactly (spacing 128); the log ratio is still
    # within 1e-2 over +-8 sigma, where lgamma differences would be off by thousands
    (2_000_000_000, 0.5, 2e-2),
])
def test_log_pmf_ratio_float32_accuracy(n, p, tol):
    q = 1 - p
    mode = np.floor((n + 1) * p)
    sd = np.sqrt(n * p * q)
    k = np.unique(np.clip(np.round(mode + np.linspace(-8, 8, 41) * sd), 0, n))
    exact = stats.binom.logpmf(k, n, p) - stats.binom.logpmf(mode, n, p)
    f32 = jnp.float32
    got = _binomial.log_pmf_ratio(f32(1) * k.astype(np.float32), f32(mode), f32(n), f32(p),
                                  f32(q), f32(((n + 1) * p - mode) - q))
    assert np.max(np.abs(np.asarray(got, np.float64) - exact)) < tol


def test_log_factorial_table_against_lgamma():
    table = _binomial.log_factorials()
    size = _binomial.LOG_FACTORIAL_TABLE_SIZE
    assert table.shape == (size,) and table.dtype == np.float64
    k = np.unique(np.concatenate([np.arange(60), np.geomspace(60, size - 1, 200).astype(int)]))
    exact = np.array([math.lgamma(v + 1.0) for v in k])
    # float64 rounding of values up to 1.4e7 (~2e-9); the series' truncation is far below
    assert np.max(np.abs(table[k] - exact) / np.maximum(exact, 1.0)) < 1e-14
    assert not table.flags.writeable  # shared, cached


@pytest.mark.parametrize("n, p", [(12, 0.5), (100, 0.1), (10_000, 0.3), (1_000_000, 0.02),
                                  (2**20 - 1, 0.5)])
def test_table_log_pmf_ratio_accuracy(n, p):
    """The table ratio over +-8 sigma against scipy, for float32 and float64 outputs: only
    the rounding of the result to the output dtype is left."""
    mode = np.floor((n + 1) * p)
    sd = np.sqrt(n * p * (1 - p))
    k = np.unique(np.clip(np.round(mode + np.linspace(-8, 8, 41) * sd), 0, n))
    for dtype in {jax.dtypes.canonicalize_dtype(d) for d in (jnp.float32, jnp.float64)}:
        # the p and q the sampler holds (float32-rounded p shifts the ratio by up to 2e-5)
        p_held = jnp.asarray(p, dtype)
        q_held = 1 - p_held
        log_f = [math.lgamma(n + 1.0) - math.lgamma(j + 1.0) - math.lgamma(n - j + 1.0)
                 + j * math.log(float(p_held)) + (n - j) * math.log(float(q_held))
                 for j in np.append(k, mode)]  # fmt: skip
        exact = np.array(log_f[:-1]) - log_f[-1]
        got = _binomial.table_log_pmf_ratio(jnp.asarray(k, dtype), jnp.asarray(mode, dtype),
                                            jnp.asarray(n, dtype), p_held, q_held)
        assert got.dtype == dtype
        # float32: the ratio (up to ~32) rounded to 24 bits; float64: lgamma differences of
        # values up to 1.4e7 (~1e-8 in this float64 reference itself)
        tol = 1e-5 if dtype == jnp.float32 else 1e-7
        assert np.max(np.abs(np.asarray(got, np.float64) - exact)) < tol, dtype


def test_first_attempts_beyond_the_table_are_redrawn():
    """n just inside and just outside the log k! table in one array: the outside ones
    discard their table attempt and are redrawn by the formula; both match their pmf."""
    size = _binomial.LOG_FACTORIAL_TABLE_SIZE
    n = jnp.asarray(np.repeat([size - 1, size + 5], SAMPLES // 2), jnp.int32)
    x = _draw_array(jax.random.key(8), n, 0.001)
    assert _chi2_pvalue(x[: SAMPLES // 2], size - 1, 0.001) > 1e-4
    assert _chi2_pvalue(x[SAMPLES // 2:], size + 5, 0.001) > 1e-4
    # a first attempt beyond the table is never accepted
    u, v = _binomial.uniform_pair(_key_words(1), jnp.arange(4096, dtype=jnp.uint32), 0,
                                  jnp.float32)
    nf = jnp.full(4096, float(size + 5), jnp.float32)
    p = jnp.float32(0.001)
    _, accepted = _binomial._btrs_attempt(u, v, nf, p, _binomial._btrs_constants(nf, p),
                                          first=True, table=True)  # fmt: skip
    assert not np.any(np.asarray(accepted))
    inside = nf - 6.0
    _, accepted = _binomial._btrs_attempt(u, v, inside, p, _binomial._btrs_constants(inside, p),
                                          first=True, table=True)  # fmt: skip
    assert np.mean(np.asarray(accepted)) > 0.5


def test_stirling_remainder_at_small_and_large_integers():
    """The remainder ``lgamma(y) - Stirling(y)`` (polynomial through y = 1..9, series above)
    against math.lgamma in float64, at every integer it meets below 10 and some above."""
    y = np.arange(1, 41, dtype=np.float64)
    exact = np.array([math.lgamma(v) - ((v - 0.5) * math.log(v) - v
                                        + 0.5 * math.log(2 * math.pi)) for v in y])
    # float32 holds the values (~0.08..0.002) to ~4e-9; in float64 the limit is the series'
    # first omitted term, 1 / (1680 y**7) = 6e-11 at y = 10 (float64 only runs under x64)
    for dtype in {jax.dtypes.canonicalize_dtype(d) for d in (jnp.float32, jnp.float64)}:
        tol = 1e-10 if dtype == jnp.float64 else 1e-8
        got = np.asarray(_binomial._stirling_remainder(jnp.asarray(y, dtype)), np.float64)
        assert np.max(np.abs(got - exact)) < tol, dtype


_half_jit = jax.jit(_binomial.binomial_half, static_argnames="dtype")


@pytest.mark.parametrize("n", [1, 7, 31, 32, 33, 64, 65, 96, 127, 128, 129, 500, 100_000])
def test_binomial_half_matches_exact_pmf(n):
    """Fair-bit draws: counted random bits up to n = 128 (across the 32-bit word
    boundaries), BTRS above; each against the exact Binomial(n, 1/2)."""
    dtype = jax.dtypes.canonicalize_dtype(jnp.float64)
    x = np.asarray(_half_jit(jax.random.key(n), jnp.full(SAMPLES, n, jnp.int32), dtype=dtype))
    assert x.min() >= 0 and x.max() <= n
    assert _chi2_pvalue(x.astype(np.int64), n, 0.5) > 1e-4


@pytest.mark.parametrize("large_fraction", [0.05, 0.6])
def test_binomial_half_few_or_many_large_n(large_fraction):
    """A few large ``n`` (fewer than the redraw buffer holds) or many, drawn by BTRS next
    to counted bits for the rest."""
    dtype = jax.dtypes.canonicalize_dtype(jnp.float64)
    n_large = int(SAMPLES * large_fraction)
    assert (n_large <= _binomial._redraw_buffer_size(SAMPLES)) == (large_fraction < 0.22)
    rng = np.random.default_rng(4)
    is_large = np.zeros(SAMPLES, bool)
    is_large[rng.permutation(SAMPLES)[:n_large]] = True
    n = np.where(is_large, 700, 90)
    x = np.asarray(_half_jit(jax.random.key(6), jnp.asarray(n, jnp.int32), dtype=dtype))
    x = x.astype(np.int64)
    assert _chi2_pvalue(x[is_large], 700, 0.5) > 1e-4
    assert _chi2_pvalue(x[~is_large], 90, 0.5) > 1e-4
    # the two groups are independent of each other's positions: no correlation with a
    # neighbour's draw
    centred = (x - n / 2) / np.sqrt(n / 4)
    assert abs(np.corrcoef(centred[:-1], centred[1:])[0, 1]) < 5 / np.sqrt(SAMPLES)


@pytest.mark.parametrize("table", [False, True])
def test_binomial_half_draws_do_not_depend_on_the_other_elements(table):
    """An element drawn with the same n gets the same draw whether few or many of the other
    elements need BTRS (the redraw buffer then holds few or is full), with or without the
    log k! table in the first attempts, inside the table and beyond it (where every first
    attempt is discarded)."""
    dtype = jax.dtypes.canonicalize_dtype(jnp.float64)
    half = jax.jit(lambda key, n: _binomial.binomial_half(key, n, dtype, table=table))
    rng = np.random.default_rng(5)
    order = rng.permutation(SAMPLES)
    few = np.zeros(SAMPLES, bool)
    few[order[: SAMPLES // 20]] = True
    many = np.zeros(SAMPLES, bool)
    many[order[: SAMPLES * 3 // 5]] = True
    size = _binomial.LOG_FACTORIAL_TABLE_SIZE
    for large in (700, size - 1, size + 5):
        a = np.asarray(half(jax.random.key(6), jnp.asarray(np.where(few, large, 90), jnp.int32)))
        b = np.asarray(half(jax.random.key(6), jnp.asarray(np.where(many, large, 90),
                                                           jnp.int32)))  # fmt: skip
        assert _chi2_pvalue(a[few].astype(np.int64), large, 0.5) > 1e-4
        assert _chi2_pvalue(b[many].astype(np.int64), large, 0.5) > 1e-4
        np.testing.assert_array_equal(a[few], b[few])
        np.testing.assert_array_equal(a[~many], b[~many])


def test_binomial_half_mixed_array_and_edges():
    dtype = jax.dtypes.canonicalize_dtype(jnp.float64)
    n = jnp.asarray(np.repeat([40, 3000], SAMPLES // 2), jnp.int32)
    x = np.asarray(_half_jit(jax.random.key(2), n, dtype=dtype)).astype(np.int64)
    assert _chi2_pvalue(x[: SAMPLES // 2], 40, 0.5) > 1e-4
    assert _chi2_pvalue(x[SAMPLES // 2:], 3000, 0.5) > 1e-4
    edge = jnp.asarray([0, 0, 2_000_000_000], jnp.int32)  # odd size: padded inside
    y = np.asarray(_half_jit(jax.random.key(3), edge, dtype=dtype))
    assert y[0] == y[1] == 0 and abs(y[2] - 1e9) < 6 * np.sqrt(5e8)


@pytest.mark.parametrize("table", [False, True])
def test_binomial_or_half_draws_what_either_sampler_draws(table):
    """The apportionment's one sampler for both kinds of draw gives, element for element,
    the draws of ``binomial`` (``half`` false, p below and above 1/2) and of
    ``binomial_half`` (``half`` true), with ``half`` traced, on an odd-sized array (padded
    inside) mixing inversion, counted bits, BTRS inside and beyond the log k! table, and
    elements that are redrawn."""
    dtype = jax.dtypes.canonicalize_dtype(jnp.float64)
    size = _binomial.LOG_FACTORIAL_TABLE_SIZE
    rng = np.random.default_rng(8)
    n = jnp.asarray(rng.choice([0, 1, 12, 90, 128, 129, 700, 3000, size + 5, 2_000_000_000],
                               20_001), jnp.int32)
    either = jax.jit(lambda key, n, p, half: _binomial.binomial_or_half(
        key, n, p, half, dtype, table=table))
    general = jax.jit(lambda key, n, p: _binomial.binomial(key, n, p, dtype, table=table))
    fair = jax.jit(lambda key, n: _binomial.binomial_half(key, n, dtype, table=table))
    key = jax.random.key(9)
    for p in (0.03, 0.3, 0.5, 0.8):
        np.testing.assert_array_equal(np.asarray(either(key, n, p, False)),
                                      np.asarray(general(key, n, p)))
    drawn = np.asarray(either(key, n, 0.5, True))
    np.testing.assert_array_equal(drawn, np.asarray(fair(key, n)))
    # up to 128 trials the draw is the number of set bits among the lowest n bits of the
    # four words of counter (element, 0, 0, 0), counted here in numpy
    from romanjax.kernels.rng import counter_words, key_words
    words = np.stack([np.asarray(w, np.uint64) for w in counter_words(
        key_words(key), jnp.arange(n.shape[0], dtype=jnp.uint32), 0, 0)], axis=1)
    bits = (words[:, :, None] >> np.arange(32, dtype=np.uint64)) & 1  # [m, word, bit]
    bits = bits.reshape(len(words), 128)
    n_host = np.asarray(n)
    small = n_host <= 128
    counted = np.array([bits[i, :n_host[i]].sum() for i in np.flatnonzero(small)])
    np.testing.assert_array_equal(drawn[small], counted)
    assert not np.array_equal(drawn, np.asarray(general(key, n, 0.5)))
