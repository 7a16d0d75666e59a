"""Fixed sorting networks for short axes: elementwise min/max instead of XLA's sort.

Ramp fitters need order statistics (the median difference slope) of a handful of values per
pixel. ``jnp.median`` lowers to a general sort that is ~100x slower on CPU than a fixed
network of compare-exchange steps, which vectorises over pixels and is differentiable almost
everywhere.

The medians carry the derivative of an order statistic directly (a custom JVP): the tangent
of the middle value is the tangent of the entry it is, shared equally among tied entries.
Differentiating through the network instead gives the same derivative wherever no two usable
entries tie, but at a cost of one select per compare-exchange per tangent, which XLA must
compile into every derivative program.
"""

from __future__ import annotations

from functools import cache

import jax
import jax.numpy as jnp

from .linalg import as_rows, sum_rows, take_rows

__all__ = [
    "NETWORK_LIMIT", "sorting_network", "sort_axis0", "median_axis0", "select_index",
    "masked_median",
]

#: Longest axis sorted by a network in :func:`masked_median` (static).
NETWORK_LIMIT = 16


@cache
def sorting_network(n: int) -> tuple[tuple[int, int], ...]:
    """Compare-exchange pairs ``(i, j)``, ``i < j``, that sort ``n`` values (Batcher's odd-even
    merge sort on the next power of two, pruned to the first ``n`` wires: the pruned wires
    would hold +inf, which a compare-exchange never moves, so dropping them is exact)."""
    size = 1
    while size < n:
        size *= 2
    pairs = []
    p = 1
    while p < size:
        k = p
        while k >= 1:
            for j in range(k % p, size - k, 2 * k):
                for i in range(min(k, size - j - k)):
                    a, b = i + j, i + j + k
                    if a // (2 * p) == b // (2 * p) and b < n:
                        pairs.append((a, b))
            k //= 2
        p *= 2
    return tuple(pairs)


def sort_axis0(values, valid=None):
    """Sort along axis 0 with a sorting network; returns a list of ``n`` arrays.

    Parameters
    ----------
    values : array ``[n, ...]``
    valid : bool array ``[n, ...]``, optional
        Entries that are False are treated as +inf (sorted to the end).
    """
    rows = list(values)
    if valid is not None:
        rows = [jnp.where(ok, row, jnp.inf) for row, ok in zip(rows, valid)]
    for a, b in sorting_network(len(rows)):
        rows[a], rows[b] = jnp.minimum(rows[a], rows[b]), jnp.maximum(rows[a], rows[b])
    return rows


def median_axis0(values, valid=None):
    """Median along axis 0 (``numpy.median`` convention: mean of the two middle values).

    Parameters
    ----------
    values : array ``[n, ...]``
    valid : bool array ``[n, ...]``, optional
        Only valid entries count; with none valid the result is 0.

    Returns
    -------
    Array ``[...]``
    """
    values = jnp.asarray(values)
    n = values.shape[0]
    if valid is None:
        lo, hi = _middle(values, None, None)
        return lo if n % 2 else 0.5 * (lo + hi)
    return masked_median(values, valid)


@jax.custom_jvp
def _middle(values, usable, count):
    """``(lower, upper)`` middle entries along axis 0 of ``values [n, ...]``: the sorted
    entries ``(count - 1) // 2`` and ``count // 2`` of the usable ones (``usable`` and
    ``count``, their number, both None: every entry, ``count = n``). Equal for an odd count.

    Up to :data:`NETWORK_LIMIT` values by a sorting network (whose size grows as
    n log**2 n), beyond that by ``jnp.sort``, whose program does not grow with n."""
    n = values.shape[0]
    if usable is None:
        rows = sort_axis0(values)
        return rows[(n - 1) // 2], rows[n // 2]
    if n <= NETWORK_LIMIT:
        ordered = sort_axis0(values, usable)
        return select_index(ordered, (count - 1) // 2), select_index(ordered, count // 2)
    ordered = jnp.sort(jnp.where(usable, values, jnp.inf), axis=0)
    return take_rows(ordered, (count - 1) // 2), take_rows(ordered, count // 2)


@_middle.defjvp
def _middle_jvp(primals, tangents):
    """Each middle value moves with the usable entries equal to it (a copy of one of them):
    its tangent is their tangents' mean, zero where there is none (no usable entry). Linear
    in the tangents, with weights that are constant almost everywhere, so it transposes for
    reverse mode and its own derivative is zero."""
    values, usable, count = primals
    d_values = tangents[0]
    lo, hi = _middle(values, usable, count)

    def share(middle):
        hits = values == middle[None]
        if usable is not None:
            hits = hits & usable
        number = jnp.maximum(jnp.sum(hits, axis=0), 1).astype(d_values.dtype)
        return jnp.sum(jnp.where(hits, d_values, 0), axis=0) / number

    return (lo, hi), (share(lo), share(hi))


def select_index(values, index):
    """``values[index]`` for a list of pixel rows and a per-pixel index, as a one-hot sum
    (elementwise code, unlike a gather)."""
    out = jnp.zeros_like(values[0])
    for i, value in enumerate(values):
        out = jnp.where(index == i, value, out)
    return out


def masked_median(values, mask):
    """Median along axis 0 of the usable entries (``mask``) of ``values [n, *pixels]``;
    0 where none is usable.

    Up to :data:`NETWORK_LIMIT` values by a sorting network (whose size grows as
    n log**2 n), beyond that by ``jnp.sort``, whose program does not grow with n.
    """
    values = jnp.asarray(values)
    mask = jnp.asarray(mask)
    n = values.shape[0]
    # n differences: the row form of a pattern of n + 1 resultants
    count = sum_rows(as_rows(mask.astype(jnp.int32), n + 1))
    lo, hi = _middle(values, mask, count)
    return jnp.where(count > 0, 0.5 * (lo + hi), jnp.zeros_like(lo))
