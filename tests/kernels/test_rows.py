"""The row forms of ``romanjax.kernels.linalg`` (lists for short patterns, arrays with loops
for long ones) against numpy, and the fitters' long-pattern (array) form against their
short-pattern (list) form on the same data."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import romanjax
from romanjax.kernels import linalg
from romanjax.kernels.order import NETWORK_LIMIT, masked_median

FORMS = {"list": 2, "array": 10**6}  # the n_resultants that selects each form


def rows(values, form):
    return linalg.as_rows(jnp.asarray(values), FORMS[form])


def dense(rows):
    return np.asarray(linalg.stack_rows(rows))


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("n", [1, 2, 7, 23])
def test_tridiagonal_solve_and_inverse_equal_a_dense_solve(form, n, rng, float_dtype):
    pixels = 5
    off = rng.uniform(-0.4, 0.4, (n - 1, pixels))
    diag = rng.uniform(1.0, 2.0, (n, pixels))
    rhs = rng.normal(size=(2, n, pixels))
    (x, y), inv_diag, inv_off = linalg.tridiagonal_solve(
        rows(diag.astype(float_dtype), form), rows(off.astype(float_dtype), form),
        [rows(b.astype(float_dtype), form) for b in rhs], inverse=True)  # fmt: skip
    rtol = 1e-5 if float_dtype == np.float32 else 1e-12
    for p in range(pixels):
        c = np.diag(diag[:, p]) + np.diag(off[:, p], 1) + np.diag(off[:, p], -1)
        inverse = np.linalg.inv(c)
        np.testing.assert_allclose(dense(x)[:, p], inverse @ rhs[0, :, p], rtol=rtol, atol=rtol)
        np.testing.assert_allclose(dense(y)[:, p], inverse @ rhs[1, :, p], rtol=rtol, atol=rtol)
        np.testing.assert_allclose(dense(inv_diag)[:, p], np.diag(inverse), rtol=rtol)
        if n > 1:
            np.testing.assert_allclose(dense(inv_off)[:, p], np.diag(inverse, 1), rtol=rtol,
                                       atol=rtol)  # fmt: skip


@pytest.mark.parametrize("form", FORMS)
def test_row_reductions_equal_numpy(form, rng):
    values = np.round(rng.normal(size=(21, 300)), 1).astype(np.float32)  # ties included
    got_index, got_max = linalg.argmax_rows(rows(values, form))
    np.testing.assert_array_equal(got_index, np.argmax(values, axis=0))  # the first maximum
    np.testing.assert_array_equal(got_max, values.max(axis=0))
    np.testing.assert_allclose(linalg.sum_rows(rows(values, form)), values.sum(axis=0),
                               rtol=1e-5, atol=1e-5)  # fmt: skip
    index = rng.integers(-1, 23, 300)
    want = np.where((index >= 0) & (index < 21), values[np.clip(index, 0, 20), np.arange(300)], 0)
    np.testing.assert_array_equal(linalg.take_rows(rows(values, form), jnp.asarray(index)), want)


@pytest.mark.parametrize("n", [NETWORK_LIMIT + 1, 40])
def test_masked_median_beyond_the_network(n, rng):
    values = rng.normal(size=(n, 200)).astype(np.float32)
    valid = rng.random((n, 200)) < 0.5
    valid[:, 0] = False  # no usable value: 0
    got = np.asarray(jax.jit(masked_median)(values, valid))
    for p in range(200):
        kept = values[valid[:, p], p]
        assert got[p] == pytest.approx(np.median(kept) if kept.size else 0.0, rel=1e-6)


def _long_pattern_data(rng, n):
    pattern = romanjax.ReadPattern([[2 * i + 1, 2 * i + 2] for i in range(n)])
    pixels = 400
    flux = 10 ** rng.uniform(-1, 3, pixels)
    tbar = np.asarray(pattern.tbar)
    resultants = flux * tbar[:, None] + rng.normal(0, 8, (n, pixels))
    hit = rng.random(pixels) < 0.2
    resultants[n // 2 :, hit] += 800.0  # cosmic-ray jumps
    dq = np.where(rng.random((n, pixels)) < 0.03, romanjax.dq.DO_NOT_USE, 0).astype(np.uint32)
    return pattern, resultants.astype(np.float32), dq


@pytest.mark.parametrize("method", ["likely", "optimal", "casertano"])
def test_long_pattern_array_form_equals_the_list_form(method, rng, monkeypatch):
    """A 20-resultant pattern fitted in the array form (loops) and, with the unroll limit
    raised, in the list form (straight-line code): the same slopes, variances and jumps."""
    pattern, resultants, dq = _long_pattern_data(rng, 20)
    assert pattern.n_resultants > linalg.UNROLL_LIMIT

    def fit():
        if method == "likely":
            return romanjax.fit_ramps_likely(resultants, pattern, 8.0, dq=dq)
        if method == "casertano":
            return romanjax.fit_ramps_casertano(resultants, pattern, 8.0, dq=dq,
                                                detect_jumps=True)  # fmt: skip
        return romanjax.fit_ramps_optimal(resultants, pattern, 8.0, dq=dq)

    jax.clear_caches()
    array_form = fit()
    monkeypatch.setattr(linalg, "UNROLL_LIMIT", 64)
    jax.clear_caches()
    list_form = fit()
    jax.clear_caches()
    for name in ("slope", "var_read", "var_poisson"):
        np.testing.assert_allclose(getattr(array_form, name), getattr(list_form, name),
                                   rtol=2e-5, atol=1e-6, err_msg=name)  # fmt: skip
    np.testing.assert_array_equal(array_form.dq, list_form.dq)
    if method != "optimal":
        assert np.asarray(array_form.jump_map).any()  # the search ran and found the jumps
        np.testing.assert_array_equal(array_form.jump_map, list_form.jump_map)
