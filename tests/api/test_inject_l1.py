"""Injection into L1 (romanjax.inject_counts_into_l1): the injected resultants are
distributed as a direct simulation of the combined electrons; untouched pixels are unchanged."""

from __future__ import annotations

import jax
import numpy as np
import pytest

import romanjax
from romanjax import dq as dqflags

MA4 = romanjax.ReadPattern.from_ma_table(4)
N = 20000  # pixels per sample


def _moments(resultants):
    r = np.asarray(resultants, np.float64).reshape(MA4.n_resultants, -1)
    return r.mean(axis=1), np.cov(r)


@pytest.mark.parametrize(("base", "added"), [(50, 30), (2000, 6000)])
def test_injected_resultants_are_distributed_as_a_direct_simulation(base, added):
    """Faint (read-noise dominated) and bright pixels: means within 5 standard errors,
    covariances within sampling error (about 1% here; 6% allowed, which also holds the one
    extra rounding to whole DN, 1/12 DN**2)."""
    shape = (N,)
    l1 = romanjax.simulate_l1(jax.random.key(1), np.full(shape, base), MA4)
    injected = romanjax.inject_counts_into_l1(jax.random.key(2), l1.resultants,
                                              np.full(shape, added), MA4, dq=l1.dq)  # fmt: skip
    direct = romanjax.simulate_l1(jax.random.key(3), np.full(shape, base + added), MA4)
    mean_i, cov_i = _moments(injected.resultants)
    mean_d, cov_d = _moments(direct.resultants)
    scale = np.sqrt(np.diag(cov_d))
    assert np.all(np.abs(mean_i - mean_d) < 5 * scale * np.sqrt(2 / N))
    np.testing.assert_allclose(cov_i / np.outer(scale, scale), cov_d / np.outer(scale, scale),
                               atol=0.06)  # fmt: skip
    assert not np.any(np.asarray(injected.dq))  # nothing saturates here


def test_injection_saturates_and_flags_like_a_direct_simulation():
    shape = (2000,)
    base, added = 40_000, 80_000  # 60000 DN at the end: the last resultants saturate
    l1 = romanjax.simulate_l1(jax.random.key(4), np.full(shape, base), MA4)
    assert not np.any(np.asarray(l1.dq) & dqflags.SATURATED)
    injected = romanjax.inject_counts_into_l1(jax.random.key(5), l1.resultants,
                                              np.full(shape, added), MA4, dq=l1.dq)  # fmt: skip
    direct = romanjax.simulate_l1(jax.random.key(6), np.full(shape, base + added), MA4)
    flags_i = np.asarray(injected.dq) & dqflags.SATURATED
    flags_d = np.asarray(direct.dq) & dqflags.SATURATED
    np.testing.assert_array_equal(flags_i.mean(axis=1) > 0.5, flags_d.mean(axis=1) > 0.5)
    assert flags_i[-1].all() and not flags_i[0].any()
    np.testing.assert_array_equal(np.asarray(injected.resultants)[-1],
                                  np.asarray(direct.resultants)[-1])  # clipped at 1.1 x sat


def test_pixels_without_new_electrons_are_unchanged_bit_for_bit():
    rng = np.random.default_rng(2)
    l1 = romanjax.simulate_l1(jax.random.key(7), rng.integers(0, 5000, (30, 40)), MA4,
                              cosmic_rays=True)  # fmt: skip
    counts = np.zeros((30, 40), np.int64)
    counts[10:14, 20:25] = 5000
    out = romanjax.inject_counts_into_l1(jax.random.key(8), l1.resultants, counts, MA4,
                                         dq=l1.dq)  # fmt: skip
    untouched = counts == 0
    before, after = np.asarray(l1.resultants), np.asarray(out.resultants)
    np.testing.assert_array_equal(after[:, untouched], before[:, untouched])
    np.testing.assert_array_equal(np.asarray(out.dq)[:, untouched],
                                  np.asarray(l1.dq)[:, untouched])  # fmt: skip
    assert np.all(after[-1, ~untouched] > before[-1, ~untouched] + 2000)
    assert np.all(np.asarray(out.dq) & np.asarray(l1.dq) == np.asarray(l1.dq))  # flags kept


def test_bad_arguments_are_named():
    resultants = np.zeros((MA4.n_resultants, 3))
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="inject_counts_into_l1: `counts` of shape"):
        romanjax.inject_counts_into_l1(key, resultants, np.zeros(4, int), MA4)
    with pytest.raises(ValueError, match="inject_counts_into_l1: `counts` must be non-negative"):
        romanjax.inject_counts_into_l1(key, resultants, np.array([1, -1, 0]), MA4)
    with pytest.raises(ValueError, match="inject_counts_into_l1: `gain` must be > 0"):
        romanjax.inject_counts_into_l1(key, resultants, np.ones(3, int), MA4, gain=0.0)
    with pytest.raises(ValueError, match="`resultants` of shape"):
        romanjax.inject_counts_into_l1(key, resultants[:4], np.ones(3, int), MA4)
