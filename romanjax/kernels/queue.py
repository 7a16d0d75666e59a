"""Stream compaction for jitted code: the indices of the true entries of a mask, in order.

``jnp.nonzero(mask, size=...)`` and ``jnp.cumsum`` lower to slow sequential loops on XLA
CPU; a two-level prefix count (sequential sums within rows of ``width``
entries, the row totals recursively) and one scatter do the same in a few ms. It is how every
data-dependent subset of pixels is gathered: the binomial sampler's rejected draws, the
Casertano jump stage's candidate pixels, the likelihood fitter's jump-search queue and the
refit of pixels with non-finite resultants.
"""

from __future__ import annotations

import jax.numpy as jnp

__all__ = ["prefix_count", "compact", "compact_positions"]


def prefix_count(mask, width: int = 16):
    """Inclusive prefix sum ``[m]`` int32 of a bool (or 0/1) ``[m]`` array (``cumsum``)."""
    x = mask.astype(jnp.int32)
    m = x.shape[0]
    if m <= 4096:
        return jnp.cumsum(x)
    pad = (-m) % width
    rows = jnp.pad(x, (0, pad)).reshape(-1, width)
    columns = [rows[:, 0]]
    for j in range(1, width):
        columns.append(columns[-1] + rows[:, j])
    inner = jnp.stack(columns, axis=1)
    totals = inner[:, -1]
    return (inner + (prefix_count(totals, width) - totals)[:, None]).reshape(-1)[:m]


def compact_positions(mask, size: int):
    """``(index, target)``: ``index [size]`` as :func:`compact`, and ``target [m]`` int32, the
    slot of each entry of ``mask`` in ``index`` (``>= size`` for false or dropped entries), so
    values computed on the compacted buffer come back by a gather instead of a scatter."""
    m = mask.shape[0]
    target = jnp.where(mask, prefix_count(mask) - 1, size)
    fill = jnp.full((size,), m, jnp.int32)
    return fill.at[target].set(jnp.arange(m, dtype=jnp.int32), mode="drop"), target


def compact(mask, size: int):
    """Indices ``[size]`` int32 of the true entries of ``mask [m]`` in order, padded with
    ``m`` (``jnp.nonzero(mask, size=size, fill_value=m)``); entries beyond ``size`` are
    dropped."""
    return compact_positions(mask, size)[0]
