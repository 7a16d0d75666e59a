"""Benchmark: romanjax.fit_ramps_likely against stcal's LIKELY on the same data.

Usage: python benchmarks/bench_likely.py [--size 1024] [--table 4] [--repeat 3]
       [--jump-fraction 0.05] [--no-stcal] [--curve]

Simulates ``size x size`` ramps (Gaussian approximation of the Poisson + read noise, fluxes
log-uniform in 0.5..5000 e/s, read noise 15 e per read, a fraction of pixels with a cosmic
ray), fits them with jump detection in both codes (gain 1, stcal given sqrt(2) x the per-read
noise as romancal does), and prints the times, the ratio and the agreement of the flags.
romanjax is timed best-of-N after a compile run; stcal once (it is slow). ``--curve`` also
prints the jump detection rate against jump size (read-by-read Poisson simulation, jumps at
a random read after the first resultant, in units of the noise of the noisiest difference).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _common import best_time, memory_pass_time  # noqa: E402

import romanjax  # noqa: E402


def simulate(rng, pattern, size, jump_fraction, read_noise):
    n = pattern.n_resultants
    npix = size * size
    flux = 10 ** rng.uniform(np.log10(0.5), np.log10(5000), npix).astype(np.float32)
    # Gaussian approximation with the exact resultant covariance: cumulative Poisson counts
    # per interval between resultant mean times are replaced by normal draws of the same
    # variance, which is all the timing needs
    tbar = pattern.tbar.astype(np.float32)
    steps = np.diff(np.concatenate([[0.0], tbar])).astype(np.float32)
    increments = flux * steps[:, None]
    counts = np.cumsum(increments + np.sqrt(increments) * rng.standard_normal(
        (n, npix), dtype=np.float32), axis=0)  # fmt: skip
    noise = read_noise / np.sqrt(pattern.n_reads.astype(np.float32))[:, None]
    resultants = counts + noise * rng.standard_normal((n, npix), dtype=np.float32)
    hit = rng.random(npix) < jump_fraction
    where = rng.integers(1, n, npix)
    resultants += (hit * rng.uniform(100, 5000, npix)).astype(np.float32) * (
        np.arange(n)[:, None] >= where[None, :]
    )
    return resultants.reshape(n, size, size).astype(np.float32)


def run_stcal(resultants, pattern, read_noise):
    from stcal.ramp_fitting.likely_fit import likely_ramp_fit
    from stcal.ramp_fitting.ramp_fit_class import RampData

    n, ny, nx = resultants.shape
    ramp_data = RampData()
    ramp_data.set_arrays(resultants[None], np.zeros((1, n, ny, nx), np.uint8),
                         np.zeros((ny, nx), np.uint32), np.zeros((ny, nx), np.float32))
    ramp_data.set_meta(name="WFI", frame_time=pattern.read_time, group_time=0, groupgap=0,
                       nframes=1)  # fmt: skip
    ramp_data.set_dqflags(dict(DO_NOT_USE=1, SATURATED=2, JUMP_DET=4, PERSISTENCE=0,
                               NO_GAIN_VALUE=0, UNRELIABLE_SLOPE=0))  # fmt: skip
    ramp_data.read_pattern = [list(np.asarray(r, float) * pattern.read_time)
                              for r in pattern.reads]  # fmt: skip
    ramp_data.rejection_threshold = 4.5
    noise = np.full((ny, nx), read_noise * np.sqrt(2))
    image, _, _ = likely_ramp_fit(ramp_data, noise, np.ones((ny, nx)))
    return image, ramp_data.groupdq[0]


def detection_curve(table, flux_values=(1.0, 50.0, 2000.0), npix=20000, read_noise=20.0):
    """Print the fraction of jumps found against their size (x the noisiest difference's
    noise) and the false-flag rate on clean ramps."""
    rng = np.random.default_rng(1)
    pattern = romanjax.ReadPattern.from_ma_table(table)
    read_times = pattern.read_time * np.arange(1, pattern.reads[-1][-1] + 1)
    sizes = (1, 2, 3, 5, 7, 10, 20, 50, 100)
    print(f"detection rate vs jump size (MA table {table}, read noise {read_noise} e)")
    print("flux [e/s] | false flags | " + " ".join(f"{s:>6}x" for s in sizes))
    for flux in flux_values:
        dt = np.diff(read_times, prepend=0.0)
        counts = np.cumsum(rng.poisson(flux * dt[:, None], (len(dt), npix)), axis=0)
        clean = np.stack([counts[np.asarray(r) - 1].mean(axis=0) for r in pattern.reads])
        clean = clean + read_noise / np.sqrt(pattern.n_reads)[:, None] * rng.standard_normal(
            clean.shape
        )
        n = pattern.n_resultants
        op = np.eye(n) - np.eye(n, k=-1)
        tbar, tau, nreads = pattern.tbar, pattern.tau, pattern.n_reads
        cov = np.where(np.arange(n)[:, None] == np.arange(n), read_noise**2 / nreads + flux * tau,
                       flux * tbar[np.minimum.outer(np.arange(n), np.arange(n))])  # fmt: skip
        noisiest = np.sqrt(np.max(np.diag(op @ cov @ op.T)[1:]))
        fit = romanjax.fit_ramps_likely(clean.astype(np.float32), pattern, read_noise)
        false = np.mean(np.asarray(fit.pixel_dq) != 0)
        rates = []
        for size in sizes:
            when = rng.integers(pattern.reads[1][0], pattern.reads[-1][-1] + 1, npix)
            hit = clean.copy()
            for i, reads in enumerate(pattern.reads):
                hit[i] += size * noisiest * np.mean(np.asarray(reads)[:, None] >= when, axis=0)
            fit = romanjax.fit_ramps_likely(hit.astype(np.float32), pattern, read_noise)
            rates.append(np.mean(np.asarray(fit.pixel_dq) != 0))
        print(f"{flux:10g} | {false:11.4f} | " + " ".join(f"{r:7.3f}" for r in rates))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--table", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--jump-fraction", type=float, default=0.05)
    parser.add_argument("--no-stcal", action="store_true")
    parser.add_argument("--curve", action="store_true")
    args = parser.parse_args()
    if args.curve:
        detection_curve(args.table)

    rng = np.random.default_rng(0)
    pattern = romanjax.ReadPattern.from_ma_table(args.table)
    read_noise = 15.0
    resultants = simulate(rng, pattern, args.size, args.jump_fraction, read_noise)
    print(f"{args.size}x{args.size} pixels, MA table {args.table} ({pattern.n_resultants} "
          f"resultants), {args.jump_fraction:.0%} of pixels with a jump, "
          f"{jax.device_count()} {jax.default_backend()} device(s)")  # fmt: skip

    device_data = jax.device_put(resultants)
    floor = memory_pass_time(device_data, args.repeat + 2)

    timings = {}
    for detect in (False, True):

        def ours(detect=detect):
            return romanjax.fit_ramps_likely(device_data, pattern, read_noise,
                                             detect_jumps=detect)  # fmt: skip

        start = time.perf_counter()
        fit = jax.block_until_ready(ours())
        compile_time = time.perf_counter() - start
        best = best_time(ours, args.repeat)
        timings[detect] = best
        print(f"romanjax LIKELY detect_jumps={detect}: {best:.3f} s "
              f"(first call incl. compile {compile_time:.1f} s)")  # fmt: skip
    print(f"one memory pass over the resultants (floor): {floor * 1e3:.1f} ms")

    if args.no_stcal:
        return
    start = time.perf_counter()
    image, groupdq = run_stcal(resultants, pattern, read_noise)
    stcal_time = time.perf_counter() - start
    print(f"stcal LIKELY (jump detection on): {stcal_time:.2f} s")
    print(f"speed-up with jump detection: {stcal_time / timings[True]:.1f}x")
    same = np.all(np.asarray(fit.dq) == groupdq, axis=0)
    sigma = np.sqrt(image["var_rnoise"] + image["var_poisson"])
    dz = np.abs(np.asarray(fit.slope) - image["slope"]) / sigma
    print(f"identical jump flags: {same.mean():.5f} of pixels; max |slope difference| where "
          f"flags agree: {np.max(dz[same]):.2e} sigma")  # fmt: skip


if __name__ == "__main__":
    main()
