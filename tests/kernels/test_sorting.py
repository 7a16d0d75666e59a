"""Sorting-network order statistics against numpy."""

import jax
import numpy as np
import pytest

from romanjax.kernels.order import median_axis0, sort_axis0, sorting_network


@pytest.mark.parametrize("n", list(range(1, 20)) + [32, 33])
def test_sort_and_median_equal_numpy(n, rng):
    values = rng.normal(size=(n, 300))
    values[:, :50] = np.round(values[:, :50])  # ties
    values = values.astype("f4")  # exact in either precision
    np.testing.assert_array_equal(np.stack(sort_axis0(values)), np.sort(values, axis=0))
    np.testing.assert_allclose(median_axis0(values), np.median(values, axis=0), rtol=1e-7)


def test_network_sizes_are_batcher():
    assert len(sorting_network(8)) == 19  # Batcher's odd-even merge sort on 8 wires
    assert sorting_network(1) == ()


@pytest.mark.parametrize("n", [2, 5, 8, 15])
def test_masked_median(n, rng):
    values = rng.normal(size=(n, 400)).astype("f4")
    valid = rng.random((n, 400)) < 0.6
    got = np.asarray(jax.jit(median_axis0)(values, valid))
    for p in range(400):
        kept = values[valid[:, p], p]
        want = np.median(kept) if kept.size else 0.0
        assert got[p] == pytest.approx(want, rel=1e-6, abs=1e-12)
