"""The platform module's materialisation: values unchanged, a loop XLA keeps on CPUs."""

import jax
import jax.numpy as jnp
import numpy as np

from romanjax import _platform


def _tree(x):
    """Values of several shapes and dtypes: groups that share a shape and dtype (rotated by
    the never-run loop body) and values with no partner (changed arithmetically)."""
    return {
        "rows": [x * (i + 1.0) for i in range(3)],
        "wide": jnp.concatenate([x, x[:2]]),
        "masks": (x > 2.0, x < 1.0),
        "count": jnp.sum(x > 0.0).astype(jnp.int32),
    }


def test_materialise_returns_its_values_and_keeps_the_loop_on_cpu():
    x = jnp.arange(5.0)

    def f(x):
        tree = _tree(x)
        return _platform.materialise(tree, x[0] < -1.0)

    got = jax.jit(f)(x)
    want = _tree(x)
    for g, w in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
        assert g.dtype == w.dtype and g.shape == w.shape
        np.testing.assert_array_equal(np.asarray(g), np.asarray(w))
    # the loop is what stops XLA's CPU compiler from fusing the producers into every
    # consumer: a body XLA could see through (an identity) would be simplified away
    compiled = jax.jit(f).lower(x).compile().as_text()
    assert compiled.count(" while(") == 1


def test_materialise_is_the_identity_for_differentiation():
    def f(x):
        tree = _platform.materialise(_tree(x), x[0] < -1.0)
        return sum(jnp.sum(r) for r in tree["rows"]) + jnp.sum(tree["wide"] ** 2)

    x = jnp.arange(5.0)
    # d/dx of sum_i (i + 1) x and of |(x, x[:2])|^2
    expected = 6.0 + 2.0 * x + 2.0 * jnp.where(jnp.arange(5) < 2, x, 0.0)
    np.testing.assert_allclose(np.asarray(jax.grad(f)(x)), np.asarray(expected))


def test_is_traced_tells_traced_values_from_concrete_ones():
    """Host paths and host checks key on this: a traced value under jit, grad or vmap has
    no value on the host, a numpy array, a device array or a Python number has."""
    seen = []

    def record(x):
        seen.append(_platform.is_traced(x))
        return x * 2.0

    x = jnp.arange(3.0)
    jax.jit(record)(x)
    jax.grad(lambda v: jnp.sum(record(v)))(x)
    jax.vmap(record)(x)
    assert seen == [True, True, True]
    assert not any(_platform.is_traced(v) for v in (x, np.arange(3.0), 2.0, None))


def test_start_copy_to_host_only_off_the_cpu(monkeypatch):
    """Results of a chunk start their copy to the host as soon as they are computed on an
    accelerator; on CPUs they are host memory already and nothing is called."""
    calls = []

    class Leaf:
        def copy_to_host_async(self):
            calls.append(self)

    tree = {"slope": Leaf(), "flags": [Leaf(), np.zeros(2)]}
    assert _platform.start_copy_to_host(tree) is tree
    assert calls == []  # the test machine's devices are CPUs
    monkeypatch.setattr(_platform, "all_cpu", lambda devices=None: False)
    _platform.start_copy_to_host(tree)
    assert len(calls) == 2
    _platform.start_copy_to_host(jnp.arange(3.0))  # a real array takes it too
