"""Benchmark: romanjax.fit_ramps_casertano vs stcal ols_cas22 (use_jump False / True).

Same float32 ramps [e] (MA table 4 unless ``--table``) in one process: realistic fluxes
(0.1..1e3 e/s), read noise 10 e, and cosmic-ray jumps (100..1e4 e at a random read) in a
fraction of the pixels (``--jump-fraction``, default 0.02, about what a 140 s Roman exposure
sees). Prints best-of-N wall times of the array API on the frame already on the device,
ratios, and the memory-pass floor: a jitted, fused sum of the resultant rows (one read of
every resultant, the least any fitter must do; benchmarks/_common.py).

    python benchmarks/bench_casertano.py [--size 1024] [--table 4] [--repeat 3]
        [--jump-fraction 0.02]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _common import best_time, memory_pass_time  # noqa: E402

import romanjax  # noqa: E402


def simulated_ramps(pattern, shape, seed=0, pedestal=1e4, read_noise=10.0):
    """Float32 ramps [e] with correlated (cumulative) shot noise, read by read (Gaussian
    increments), fluxes log-uniform over 0.1..1e3 e/s, read noise per read ``read_noise``.
    (Independent per-resultant shot noise would make bright ramps look jumpy.)"""
    rng = np.random.default_rng(seed)
    npix = int(np.prod(shape))
    flux = (10 ** rng.uniform(-1, 3, npix)).astype("f4")
    n = pattern.n_resultants
    out = np.empty((n, npix), np.float32)
    total = np.zeros(npix, np.float32)
    last = 0
    for i, reads in enumerate(pattern.reads):
        acc = np.zeros(npix, np.float32)
        for read in reads:
            mean = flux * pattern.read_time * (read - last)
            total += mean + np.sqrt(mean) * rng.standard_normal(npix, dtype="f4")
            last = read
            acc += total
        out[i] = acc / len(reads) + pedestal
        out[i] += rng.standard_normal(npix, dtype="f4") * (read_noise / np.sqrt(len(reads)))
    return out.reshape((n,) + tuple(shape))


def add_jumps(ramps, pattern, fraction, seed=1):
    """Add one jump of 100..1e4 e (log-uniform) at a random read to ``fraction`` of pixels."""
    rng = np.random.default_rng(seed)
    n = pattern.n_resultants
    flat = ramps.reshape(n, -1)
    npix = flat.shape[1]
    hit = rng.random(npix) < fraction
    nread = pattern.reads[-1][-1]
    read = rng.integers(1, nread + 1, npix)
    size = 10 ** rng.uniform(2, 4, npix)
    for i, reads in enumerate(pattern.reads):
        after = (np.asarray(reads)[None, :] >= read[:, None]).mean(axis=1)
        flat[i] += (hit * size * after).astype(flat.dtype)
    return flat.reshape(ramps.shape), hit


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1024, help="image side [pixels]")
    parser.add_argument("--repeat", type=int, default=3, help="best of N")
    parser.add_argument("--jump-fraction", type=float, default=0.02)
    parser.add_argument("--table", type=int, default=4, help="MA table number")
    args = parser.parse_args(argv)

    pattern = romanjax.ReadPattern.from_ma_table(args.table)
    shape = (args.size, args.size)
    ramps = simulated_ramps(pattern, shape)
    ramps, hit = add_jumps(ramps, pattern, args.jump_fraction)
    n = pattern.n_resultants
    read_noise = 10.0
    print(f"MA table {args.table}, {n} resultants, {args.size}x{args.size} pixels, float32, "
          f"{hit.mean():.1%} pixels with a jump; devices: {jax.devices()}")

    device_ramps = jax.device_put(ramps)
    floor = memory_pass_time(device_ramps, args.repeat + 2)

    def ours(jumps, dq=None):
        return romanjax.fit_ramps_casertano(device_ramps, pattern, read_noise, dq=dq,
                                            detect_jumps=jumps)

    zeros_dq = jnp.zeros(ramps.shape, jnp.uint32)
    jax.block_until_ready(ours(False))
    t_plain = best_time(lambda: ours(False), args.repeat)
    jax.block_until_ready(ours(False, zeros_dq))
    t_plain_dq = best_time(lambda: ours(False, zeros_dq), args.repeat)
    jax.block_until_ready(ours(True))
    t_jump = best_time(lambda: ours(True), args.repeat)

    results = {"romanjax, no jumps": t_plain, "romanjax, no jumps, dq=zeros": t_plain_dq,
               "romanjax, jumps": t_jump}
    try:
        from stcal.ramp_fitting.ols_cas22 import fit_ramps as stcal_fit
    except ImportError:
        stcal_fit = None
    if stcal_fit is not None:
        flat = np.ascontiguousarray(ramps.reshape(n, -1), dtype=np.float32)
        rn = np.full(flat.shape[1], read_noise, np.float32)
        reads = [list(r) for r in pattern.reads]

        def stcal(jumps):
            dq = np.zeros(flat.shape, np.int32)
            return stcal_fit(flat, dq, rn, pattern.read_time, reads, use_jump=jumps)

        results["stcal, no jumps"] = best_time(lambda: stcal(False), 1)
        results["stcal, jumps"] = best_time(lambda: stcal(True), 1)

    print(f"{'memory pass (row sum, floor)':34s} {floor * 1e3:9.1f} ms")
    for name, value in results.items():
        print(f"{name:34s} {value * 1e3:9.1f} ms   {value / floor:6.1f}x floor")
    if stcal_fit is not None:
        print(f"speed-up vs stcal, no jumps: {results['stcal, no jumps'] / t_plain:.1f}x; "
              f"with jumps: {results['stcal, jumps'] / t_jump:.1f}x")


if __name__ == "__main__":
    main()
