"""Timing helpers shared by the benchmark scripts (best-of-N wall time, a memory-pass floor)."""

from __future__ import annotations

import resource
import time

import jax
import numpy as np


def best_time(function, repeat: int = 3) -> float:
    """Best wall time [s] of ``function()`` over ``repeat`` runs, waiting for JAX results."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        jax.block_until_ready(function())
        times.append(time.perf_counter() - start)
    return min(times)


def row_sum(a):
    """Sum of the resultant rows: explicit row adds fuse into one elementwise loop that reads
    every element once (a reduction over axis 0, ``jnp.sum``, can lower to a slower loop and
    overstate the floor)."""
    total = a[0]
    for i in range(1, a.shape[0]):
        total = total + a[i]
    return total


def read_and_write_fit(a):
    """One read of the resultants plus writing fresh arrays of a ``RampFit``'s outputs: four
    float ``[*pixels]`` rows (slope and its three variances) and the flag words
    ``[(2 n + 1) // 32 + 1, *pixels]`` uint32. The least a fitter returning that layout must
    do."""
    total = row_sum(a)
    flags = jax.numpy.broadcast_to((total < 0).astype(np.uint32),
                                   ((2 * a.shape[0] + 1) // 32 + 1,) + total.shape)  # fmt: skip
    return total, 2 * total, 3 * total, 4 * total, flags


_sum = jax.jit(row_sum)


def memory_pass_time(resultants_on_device, repeat: int = 5) -> float:
    """Time [s] of one read of the resultant array: the fastest jitted computation that
    touches every element once (a fused sum of the resultant rows)."""
    jax.block_until_ready(_sum(resultants_on_device))
    return best_time(lambda: _sum(resultants_on_device), repeat)


def peak_rss_gb() -> float:
    """Peak resident memory of this process so far [GB] (Linux ru_maxrss is in kB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def simulated_ramps(pattern, shape, seed=0, pedestal=1e4):
    """Float32 ramps [e] for timing: fluxes log-uniform over 0.1..1e3 e/s, read noise 10 e."""
    rng = np.random.default_rng(seed)
    npix = int(np.prod(shape))
    flux = 10 ** rng.uniform(-1, 3, npix).astype("f4")
    tbar = pattern.tbar.astype("f4")
    tau = pattern.tau.astype("f4")
    n = pattern.n_resultants
    # noiseless ramp plus independent per-resultant read and shot noise: realistic values
    # for timing (the statistics are tested in tests/, not here)
    ramps = pedestal + flux[None] * tbar[:, None]
    ramps += rng.standard_normal((n, npix), dtype="f4") * np.sqrt(10.0**2 / pattern.n_reads
                                                                 ).astype("f4")[:, None]
    ramps += rng.standard_normal((n, npix), dtype="f4") * np.sqrt(flux[None] * tau[:, None])
    return ramps.reshape((n,) + tuple(shape)).astype("f4")
