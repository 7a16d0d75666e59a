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


def _median_weights(values, usable):
    """d median / d values of each pixel, float64 on the host: 1 on the middle entry (odd
    count), 1/2 on each of the two middle ones (even), shared equally among entries tied
    with a middle one; 0 with no usable entry."""
    weights = np.zeros(values.shape)
    for p in range(values.shape[1]):
        kept = np.flatnonzero(usable[:, p])
        if kept.size == 0:
            continue
        ordered = np.sort(values[kept, p])
        for middle in (ordered[(kept.size - 1) // 2], ordered[kept.size // 2]):
            tied = kept[values[kept, p] == middle]
            weights[tied, p] += 0.5 / tied.size
    return weights


@pytest.mark.parametrize("n", [1, 2, 5, 8, 15, 16, 17, 40])
def test_median_derivatives_are_the_middle_entries(n, rng):
    """The medians' custom JVP: forward and reverse mode give the order statistic's
    derivative (the sorting network's own, where no usable entries tie), ties share it
    equally, masked entries get none, and the second derivative is zero."""
    from romanjax.kernels.order import masked_median

    pixels = 300
    values = rng.normal(size=(n, pixels)).astype("f4")
    values[:, :60] = np.round(values[:, :60])  # ties
    usable = rng.random((n, pixels)) < 0.6
    usable[:, 0] = False  # no usable entry: median 0, derivative 0
    values[~usable] = np.where(rng.random((~usable).sum()) < 0.5, np.nan, 1e30)

    def total(x):
        return masked_median(x, usable).sum()

    grad = np.asarray(jax.grad(total)(values))
    np.testing.assert_allclose(grad, _median_weights(values, usable), rtol=1e-6, atol=0)
    tangent = rng.normal(size=values.shape).astype("f4")
    _, forward = jax.jvp(lambda x: masked_median(x, usable), (values,), (tangent,))
    want = np.sum(np.where(_median_weights(values, usable) > 0,
                           _median_weights(values, usable) * tangent, 0), axis=0)
    np.testing.assert_allclose(np.asarray(forward), want, rtol=1e-5, atol=1e-6)
    # every entry usable (median_axis0): where no two entries tie, the network's own
    # derivative, obtained by differentiating its compare-exchange steps
    finite = rng.normal(size=(n, pixels)).astype("f4")
    grad = np.asarray(jax.grad(lambda x: median_axis0(x).sum())(finite))
    np.testing.assert_allclose(grad, _median_weights(finite, np.ones(finite.shape, bool)),
                               rtol=1e-6, atol=0)  # fmt: skip
    if n <= 16:
        def through_network(x):
            rows = sort_axis0(x)
            return (0.5 * (rows[(n - 1) // 2] + rows[n // 2])).sum()

        np.testing.assert_array_equal(grad, np.asarray(jax.grad(through_network)(finite)))
    hessian_diagonal = jax.jvp(jax.grad(lambda x: median_axis0(x).sum()), (finite,),
                               (np.ones_like(finite),))[1]  # fmt: skip
    np.testing.assert_array_equal(np.asarray(hessian_diagonal), 0)
