"""O(n) linear algebra and reductions along the resultant axis of pixel rows.

A ramp quantity with one value per resultant (or difference) and pixel is held as *rows*:
either a Python list of n pixel arrays ``[*pixels]`` or one array ``[n, *pixels]``
(pixel-minor). Kernels choose the form from the static pattern length (:func:`as_rows`):

* up to :data:`UNROLL_LIMIT` resultants a list. Every loop over the resultants is then written out
  as straight-line code on whole pixel rows, which XLA fuses into a few passes over the
  pixels. (On CPU this is much faster than array code along a short major axis: XLA's
  reduction over a major axis, a concatenation of rows or a recurrence feeding one are slow
  there.)
* beyond, one array, and the loops are ``lax.scan`` loops with a static trip count, so the
  program, and its compile time, does not grow with the length of the read pattern.

The functions here take and give either form; :func:`rmap` applies elementwise code to both.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .. import _platform

__all__ = ["UNROLL_LIMIT", "as_rows", "form_of", "rmap", "unzip_rows", "prepend_row", "append_row",
           "stack_rows", "sum_rows", "argmax_rows", "take_rows", "row_count", "recurrence", "fence",
           "tridiagonal_solve"]  # fmt: skip

#: Most resultants of a pattern whose rows are lists (straight-line code); longer patterns
#: use arrays and loops.
UNROLL_LIMIT = 16


def _is_list(rows) -> bool:
    return isinstance(rows, (list, tuple))


def as_rows(values, n_resultants: int):
    """``values`` (an array ``[k, *pixels]``, or a host constant ``[k]``) in the row form of a
    pattern of ``n_resultants``: a list of its k rows up to :data:`UNROLL_LIMIT` resultants,
    else an array, host constants as columns ``[k, 1]`` so that they broadcast against flat
    pixels. Every quantity of one fit takes the form of its pattern, whatever its own k."""
    if n_resultants <= UNROLL_LIMIT:
        return [values[i] for i in range(len(values))]
    if _is_list(values):
        return jnp.stack(values)
    values = jnp.asarray(values)
    return values if values.ndim > 1 else values[:, None]


def form_of(rows, n_resultants: int) -> int:
    """The pattern length to give :func:`as_rows` for quantities that go with ``rows``: the
    pattern's own for a list, one beyond :data:`UNROLL_LIMIT` for an array. A kernel may
    so be run in the array form for a short pattern (``as_rows(values, UNROLL_LIMIT + 1)``),
    e.g. on a rarely used path where a smaller program matters more than speed."""
    return n_resultants if _is_list(rows) else max(n_resultants, UNROLL_LIMIT + 1)


def row_count(rows) -> int:
    """The number of rows (either form)."""
    return len(rows) if _is_list(rows) else rows.shape[0]


def _traced_once(function, n_calls: int):
    """``function`` as one ``jax.jit``, so that the n calls that write out a loop over the
    rows of the list form trace it once (same shapes: its cached jaxpr is reused) instead
    of n times. XLA inlines the calls, so the compiled computation is the same; only the
    Python tracing, most of the time it takes to lower a written-out kernel, shrinks (and a
    program that holds a kernel twice, once per platform branch, costs little more to lower
    than one that holds it once)."""
    return jax.jit(function) if n_calls > 1 else function


def rmap(function, *rows):
    """``function`` applied row by row (lists) or to the arrays at once (broadcasting)."""
    lists = [r for r in rows if _is_list(r)]
    if not lists:
        return function(*rows)
    n = len(lists[0])
    function = _traced_once(function, n)
    return [function(*(r[i] if _is_list(r) else r for r in rows)) for i in range(n)]


def prepend_row(first, rows):
    """``first`` followed by ``rows``, in the form of ``rows``."""
    return [first] + list(rows) if _is_list(rows) else jnp.concatenate([first[None], rows])


def append_row(rows, last):
    """``rows`` followed by ``last``, in the form of ``rows``."""
    return list(rows) + [last] if _is_list(rows) else jnp.concatenate([rows, last[None]])


def unzip_rows(rows, width: int):
    """Rows of ``width``-tuples (what :func:`rmap` gives for a function returning tuples) as
    a tuple of ``width`` rows. (The list form is a list of tuples; the array form is
    already a tuple of arrays.)"""
    if isinstance(rows, list):
        return tuple([entry[j] for entry in rows] for j in range(width))
    return tuple(rows)


def stack_rows(rows):
    """The array ``[n, *pixels]`` of ``rows`` in either form."""
    return jnp.stack(rows) if _is_list(rows) else rows


def sum_rows(rows):
    """The sum over the rows, ``[*pixels]``, added row by row (in order)."""
    if _is_list(rows):
        total = rows[0]
        for row in rows[1:]:
            total = total + row
        return total
    return jax.lax.scan(lambda total, row: (total + row, None), rows[0], rows[1:],
                        unroll=4)[0]  # fmt: skip


def argmax_rows(rows):
    """``(index, value)`` of the largest row value per pixel (the first such index)."""
    if _is_list(rows):  # the same running update as the scan below (NaN never wins)
        best, index = rows[0], jnp.zeros(jnp.shape(rows[0]), jnp.int32)
        for i, row in enumerate(rows[1:], start=1):
            better = row > best
            best, index = jnp.where(better, row, best), jnp.where(better, i, index)
        return index, best

    def step(carry, row):
        best, index, i = carry
        better = row > best
        return (jnp.where(better, row, best), jnp.where(better, i, index), i + 1), None

    start = (rows[0], jnp.zeros(rows.shape[1:], jnp.int32), jnp.int32(1))
    (best, index, _), _ = jax.lax.scan(step, start, rows[1:], unroll=4)
    return index, best


def take_rows(rows, index):
    """``rows[index]`` per pixel for an integer ``index [*pixels]`` (a one-hot selection:
    elementwise code, no gather); 0 where ``index`` is out of range."""
    if _is_list(rows):
        out = jnp.zeros_like(rows[0])
        for i, row in enumerate(rows):
            out = jnp.where(index == i, row, out)
        return out

    def step(carry, row):
        out, i = carry
        return (jnp.where(index == i, row, out), i + 1), None

    start = (jnp.zeros_like(rows[0]), jnp.int32(0))
    return jax.lax.scan(step, start, rows, unroll=4)[0][0]


def fence(tree):
    """``lax.optimization_barrier``: keeps XLA from duplicating the O(n) recurrences that
    produced ``tree`` into every consumer fusion (the values are computed once, then
    read)."""
    return _platform.optimization_barrier(tree)


def recurrence(step, init, rows, *, reverse=False):
    """``lax.scan(step, init, rows, reverse=reverse)`` for a tuple of rows in either form
    (lists: written out, the outputs a list; arrays: a scan, the outputs arrays)."""
    if not _is_list(rows[0]):
        return jax.lax.scan(step, init, rows, reverse=reverse, unroll=4)
    n = len(rows[0])
    carry, outputs = init, [None] * n
    step = _traced_once(step, n)
    for i in (range(n - 1, -1, -1) if reverse else range(n)):
        carry, outputs[i] = step(carry, tuple(r[i] for r in rows))
    if outputs and isinstance(outputs[0], tuple):  # a tuple of lists, as scan's arrays
        return carry, tuple(list(column) for column in zip(*outputs))
    return carry, outputs


def tridiagonal_solve(diag, off, rhs, *, inverse=False):
    """Solve ``C x = b`` for symmetric tridiagonal C in O(n) (Thomas algorithm), per pixel.

    Parameters
    ----------
    diag : rows ``[n]``
        ``C_ii``, all nonzero pivots assumed (C positive definite).
    off : rows ``[n-1]``
        ``C_{i,i+1}``.
    rhs : sequence of k rows ``[n]``
        The right-hand sides.
    inverse : bool
        Also return the diagonal and first off-diagonal of ``C^-1`` from the forward and
        backward pivots (ratios of Brandt 2024a's theta/phi minors, Eqs. 38-45).

    Returns
    -------
    solutions : list of k rows ``[n]``
    inv_diag, inv_off : rows ``[n]`` and ``[n-1]`` (only if ``inverse``)

    Notes
    -----
    Forward pivots ``p_i = C_ii - C_{i-1,i}**2 / p_{i-1}`` (kept as ``1 / p_i``) and the
    eliminated right-hand sides ``z_i = b_i - (C_{i-1,i} / p_{i-1}) z_{i-1}``; then
    ``x_i = (z_i - C_{i,i+1} x_{i+1}) / p_i`` backwards. The backward pivots ``q_i`` run the
    same recurrence from the other end, and ``(C^-1)_ii = 1 / (C_ii - C_{i-1,i}**2 / p_{i-1}
    - C_{i,i+1}**2 / q_{i+1})``, ``(C^-1)_{i,i+1} = -C_{i,i+1} / (p_i q_{i+1} - C_{i,i+1}**2)``.
    Rows are given back in the form they came in.
    """
    rhs = list(rhs)
    k = len(rhs)
    listed = _is_list(diag)

    def forward(carry, row):
        inv_p, z = carry
        d_i, o_prev, *b_i = row
        factor = o_prev * inv_p
        inv_p = 1 / (d_i - factor * o_prev)
        z = tuple(b - factor * zk for b, zk in zip(b_i, z))
        return (inv_p, z), (inv_p,) + z

    first = (1 / diag[0], tuple(b[0] for b in rhs))
    _, rest = recurrence(forward, first, (diag[1:], off, *(b[1:] for b in rhs)))
    if listed and not rest:
        rest = [[]] * (k + 1)
    inv_p = prepend_row(first[0], rest[0])
    z = [prepend_row(first[1][j], rest[1 + j]) for j in range(k)]
    inv_p, z = fence((inv_p, z))

    def backward(x_next, row):
        inv_p_i, o_i, *z_i = row
        x = tuple((zk - o_i * xk) * inv_p_i for zk, xk in zip(z_i, x_next))
        return x, x

    n_last = (len(diag) if listed else diag.shape[0]) - 1
    last = tuple(zk[n_last] * inv_p[n_last] for zk in z)
    _, rest = recurrence(backward, last, (inv_p[:-1], off, *(zk[:-1] for zk in z)),
                          reverse=True)  # fmt: skip
    if listed and not rest:
        rest = [[]] * k
    solutions = fence([append_row(rest[j], last[j]) for j in range(k)])
    if not inverse:
        return solutions

    def backward_pivot(inv_q_next, row):
        d_i, o_i = row
        inv_q = 1 / (d_i - o_i * o_i * inv_q_next)
        return inv_q, inv_q

    inv_q_last = 1 / diag[n_last]
    _, inv_q_rest = recurrence(backward_pivot, inv_q_last, (diag[:-1], off), reverse=True)
    inv_q = fence(append_row(list(inv_q_rest) if listed else inv_q_rest, inv_q_last))
    # (C^-1)_ii from both pivots; the first and last rows lack one neighbour
    from_left = rmap(lambda o, ip: o * o * ip, off, inv_p[:-1])
    from_right = rmap(lambda o, iq: o * o * iq, off, inv_q[1:])
    zero = jnp.zeros_like(diag[0])
    from_left = prepend_row(zero, from_left)
    from_right = append_row(from_right, zero)
    inv_diag = rmap(lambda d, left, right: 1 / (d - left - right), diag, from_left, from_right)

    # -b / (p_i q_{i+1} - b**2) = -b inv_p inv_q / (1 - b**2 inv_p inv_q)
    def inverse_off(o, ip, iq):
        ipq = ip * iq
        return -o * ipq / (1 - o * o * ipq)

    inv_off = rmap(inverse_off, off, inv_p[:-1], inv_q[1:])
    return solutions, inv_diag, inv_off
