"""O(n) linear algebra on lists of per-resultant rows (the loops unroll at trace time)."""

from __future__ import annotations

import jax

__all__ = ["fence", "tridiagonal_solve"]


def fence(tree):
    """``lax.optimization_barrier``: keeps XLA from duplicating the O(n) recurrences that
    produced ``tree`` into every consumer fusion (the values are computed once, then
    read)."""
    return jax.lax.optimization_barrier(tree)


def tridiagonal_solve(diag, off, rhs, *, inverse=False):
    """Solve ``C x = b`` for a symmetric tridiagonal C in O(n) (Thomas algorithm).

    Parameters
    ----------
    diag : list of n scalars
        ``C_ii``, all nonzero pivots assumed (C positive definite).
    off : list of n-1 scalars
        ``C_{i,i+1}``.
    rhs : list of right-hand sides, each a list of n scalars.
    inverse : bool
        Also return the diagonal and first off-diagonal of ``C^-1`` from the forward and
        backward pivots (ratios of Brandt 2024a's theta/phi minors, Eqs. 38-45).

    Returns
    -------
    solutions : list (one per right-hand side) of lists of n scalars
    inv_diag, inv_off : lists of n and n-1 scalars (only if ``inverse``)
    """
    n = len(diag)
    inv_p = [1 / diag[0]]
    factors = [None]
    z = [[b[0]] for b in rhs]
    for i in range(1, n):
        factor = off[i - 1] * inv_p[i - 1]
        factors.append(factor)
        inv_p.append(1 / (diag[i] - factor * off[i - 1]))
        for zk, b in zip(z, rhs):
            zk.append(b[i] - factor * zk[i - 1])
    inv_p, z = fence((inv_p, z))
    solutions = []
    for zk in z:
        x = [None] * n
        x[n - 1] = zk[n - 1] * inv_p[n - 1]
        for i in range(n - 2, -1, -1):
            x[i] = (zk[i] - off[i] * x[i + 1]) * inv_p[i]
        solutions.append(x)
    solutions = fence(solutions)
    if not inverse:
        return solutions
    # backward pivots q_i = phi_i / phi_{i+1}; store b_i**2 / q_{i+1}
    inv_q = [None] * n
    inv_q[n - 1] = 1 / diag[n - 1]
    for i in range(n - 2, -1, -1):
        inv_q[i] = 1 / (diag[i] - off[i] * off[i] * inv_q[i + 1])
    inv_q = fence(inv_q)
    inv_diag = []
    for i in range(n):
        value = diag[i]
        if i > 0:
            value = value - off[i - 1] * off[i - 1] * inv_p[i - 1]
        if i < n - 1:
            value = value - off[i] * off[i] * inv_q[i + 1]
        inv_diag.append(1 / value)
    inv_off = []
    for i in range(n - 1):
        # -b / (p_i q_{i+1} - b**2) = -b inv_p inv_q / (1 - b**2 inv_p inv_q)
        ipq = inv_p[i] * inv_q[i + 1]
        inv_off.append(-off[i] * ipq / (1 - off[i] * off[i] * ipq))
    return solutions, inv_diag, inv_off
