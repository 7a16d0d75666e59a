"""The public contract, checked over romanjax.__all__."""

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import romanjax

PATTERN = romanjax.ReadPattern(((1,), (2, 3), (4, 5, 6), (7, 8, 9, 10), (12,)))
N = PATTERN.n_resultants


def _ramps(npix=6):
    flux = np.linspace(0.0, 500.0, npix)
    return (100.0 + flux * PATTERN.tbar[:, None] + np.sin(np.arange(N * npix)).reshape(N, npix)
            ).astype("f4")  # fmt: skip


def _counts(npix=6):
    return np.arange(npix, dtype="f4") * 37.0


# name -> (function of a float32 pixel array, the array): the public array functions
ARRAY_CALLS = {
    "fit_ramps_optimal": (lambda r: romanjax.fit_ramps_optimal(r, PATTERN, 5.0), _ramps),
    "fit_ramps_casertano": (lambda r: romanjax.fit_ramps_casertano(r, PATTERN, 5.0), _ramps),
    "fit_ramps_casertano(jumps)": (
        lambda r: romanjax.fit_ramps_casertano(r, PATTERN, 5.0, detect_jumps=True), _ramps),
    "fit_ramps_likely": (lambda r: romanjax.fit_ramps_likely(r, PATTERN, 5.0), _ramps),
    "resultants_to_differences": (romanjax.resultants_to_differences, _ramps),
    "construct_covar": (lambda f: romanjax.construct_covar(5.0, f, PATTERN), lambda: _counts()),
    "apportion_counts": (
        lambda c: romanjax.apportion_counts(jax.random.key(1), c, PATTERN), _counts),
    "simulate_l1": (lambda c: romanjax.simulate_l1(jax.random.key(2), c, PATTERN), _counts),
    "simulate_l1(persistence)": (lambda c: romanjax.simulate_l1(
        jax.random.key(2), c, PATTERN, start_time=100.0, persistence=romanjax.update_persistence(
            romanjax.PersistenceState.empty(c.shape, n_events=2, dtype=c.dtype), c * 1e3, 0.0)),
        _counts),
    "persistence_reads": (lambda c: romanjax.persistence_reads(
        jax.random.key(3), romanjax.update_persistence(
            romanjax.PersistenceState.empty(c.shape, n_events=2, dtype=c.dtype), c * 1e3, 0.0),
        PATTERN.read_times, 100.0), _counts),
    "expected_resultants": (lambda f: romanjax.expected_resultants(f, PATTERN), _counts),
    "ramp_log_likelihood": (
        lambda r: romanjax.ramp_log_likelihood(r, PATTERN, 50.0, 5.0, pedestal=100.0), _ramps),
    "make_l2": (lambda r: romanjax.make_l2(r, PATTERN, read_noise=2.5, gain=2.0), _ramps),
}


@pytest.mark.parametrize("name", romanjax.__all__)
def test_public_name_resolves_and_is_documented(name):
    value = getattr(romanjax, name)
    if name == "__version__":
        assert isinstance(value, str)
        return
    if name == "MA_TABLES":
        assert set(value) == set(range(3, 18)) | {109, 110}
        return
    doc = inspect.getdoc(value)
    assert doc and len(doc) > 40, f"romanjax.{name} needs a docstring"
    if inspect.isfunction(value):
        assert "Parameters" in doc and "Returns" in doc, f"romanjax.{name}: numpy docstring"


def test_api_names_present():
    api = {"ReadPattern", "MA_TABLES", "dq", "construct_covar", "resultants_to_differences",
           "fit_ramps_optimal", "fit_ramps_casertano", "fit_ramps_likely", "apportion_counts",
           "simulate_l1", "make_l2", "inject_sources_into_l2", "expected_resultants",
           "ramp_log_likelihood", "fit_frame"}  # fmt: skip
    assert api <= set(romanjax.__all__)


def _leaves(tree):
    return [leaf for leaf in jax.tree_util.tree_leaves(tree) if hasattr(leaf, "dtype")]


@pytest.mark.parametrize("name", sorted(ARRAY_CALLS))
def test_jit_equals_eager_and_float32_stays_float32(name):
    function, make = ARRAY_CALLS[name]
    x = jnp.asarray(make())
    eager = function(x)
    jitted = jax.jit(function)(x)
    for a, b in zip(_leaves(eager), _leaves(jitted), strict=True):
        if jnp.issubdtype(a.dtype, jnp.floating):
            assert a.dtype == jnp.float32, f"{name} returned {a.dtype} for float32 input"
            np.testing.assert_allclose(a, b, rtol=2e-6, atol=1e-6)
        else:
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name", sorted(ARRAY_CALLS))
def test_vmap_over_a_batch_axis(name):
    function, make = ARRAY_CALLS[name]
    x = jnp.asarray(make())
    batch = jnp.stack([x, x * 2])  # x 2 keeps counts integer-valued
    mapped = jax.vmap(function)(batch)
    for i in range(2):
        single = function(batch[i])
        for a, b in zip(_leaves(mapped), _leaves(single), strict=True):
            if jnp.issubdtype(a.dtype, jnp.floating):
                np.testing.assert_allclose(a[i], b, rtol=2e-6, atol=1e-6)
            else:
                np.testing.assert_array_equal(a[i], b)


@pytest.mark.parametrize("name", ["fit_ramps_optimal", "fit_ramps_casertano", "fit_ramps_likely"])
def test_fitters_return_rampfit_layout(name):
    fit = getattr(romanjax, name)(_ramps(6).reshape(N, 2, 3), PATTERN, 5.0)
    assert fit.par.shape == (2, 3, 2)
    assert fit.var.shape == (2, 3, 3, 2, 2)
    assert fit.dq.shape == (N, 2, 3) and fit.dq.dtype == jnp.uint32
    for prop in ("slope", "var_read", "var_poisson", "var_total"):
        assert getattr(fit, prop).shape == (2, 3)
    # the pedestal only where the fitter estimates it (None, and 0 in par, elsewhere)
    assert (fit.pedestal is None) == (name != "fit_ramps_optimal")
    if fit.pedestal is not None:
        assert fit.pedestal.shape == (2, 3)
        assert fit.var_pedestal.shape == fit.cov_pedestal_slope.shape == (3, 2, 3)
    assert np.all(np.isfinite(fit.par)) and np.all(np.isfinite(fit.var))
