"""Compile time of each public kernel for short and long read patterns.

For each entry point and each pattern (MA table 4: 9 resultants; 16 and 100 resultants of
2 reads each) the function is jitted over ``--pixels`` pixels with the pattern static, and
the two stages are timed separately: lowering (tracing to StableHLO) and XLA's compile.
Nothing is executed. The process's peak resident set is printed at the end (the largest
compile's memory). Run each pattern in a fresh process (``--pattern``) to see its own peak.

    python benchmarks/compile_times.py [--pixels 65536] [--pattern 9 16 100]
"""

from __future__ import annotations

import argparse
import resource
import sys
import time

import jax
import jax.numpy as jnp

import romanjax


def pattern_of(n: int) -> romanjax.ReadPattern:
    if n == 9:
        return romanjax.ReadPattern.from_ma_table(4)
    return romanjax.ReadPattern([[2 * i + 1, 2 * i + 2] for i in range(n)])


def entry_points(pattern, pixels):
    n = pattern.n_resultants
    ramps = jax.ShapeDtypeStruct((n, pixels), jnp.float32)
    dq = jax.ShapeDtypeStruct((n, pixels), jnp.uint32)
    noise = jax.ShapeDtypeStruct((pixels,), jnp.float32)
    counts = jax.ShapeDtypeStruct((pixels,), jnp.int32)
    key = jax.eval_shape(lambda: jax.random.key(0))
    return {
        "casertano": (lambda r, s: romanjax.fit_ramps_casertano(r, pattern, s), (ramps, noise)),
        "casertano+jumps": (lambda r, s: romanjax.fit_ramps_casertano(
            r, pattern, s, detect_jumps=True), (ramps, noise)),
        "optimal": (lambda r, s: romanjax.fit_ramps_optimal(r, pattern, s), (ramps, noise)),
        "optimal+dq": (lambda r, q, s: romanjax.fit_ramps_optimal(r, pattern, s, dq=q),
                       (ramps, dq, noise)),
        "likely": (lambda r, s: romanjax.fit_ramps_likely(r, pattern, s), (ramps, noise)),
        "apportion_counts": (lambda k, c: romanjax.apportion_counts(k, c, pattern),
                             (key, counts)),
        "simulate_l1": (lambda k, c: romanjax.simulate_l1(k, c, pattern), (key, counts)),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pixels", type=int, default=2**16)
    parser.add_argument("--pattern", type=int, nargs="+", default=[9, 16, 100],
                        help="resultants per pattern (9 is MA table 4)")
    args = parser.parse_args(argv)
    print(f"JAX {jax.__version__} on {jax.devices()[0].platform}, {args.pixels} pixels")
    print("| resultants | entry point | lower [s] | compile [s] |")
    print("|---:|---|---:|---:|")
    for n in args.pattern:
        pattern = pattern_of(n)
        for name, (function, shapes) in entry_points(pattern, args.pixels).items():
            start = time.perf_counter()
            lowered = jax.jit(function).lower(*shapes)
            lowered_at = time.perf_counter()
            lowered.compile()
            done = time.perf_counter()
            print(f"| {n} | {name} | {lowered_at - start:.1f} | {done - lowered_at:.1f} |",
                  flush=True)  # fmt: skip
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # kB -> GB on Linux
    print(f"peak resident set: {peak:.2f} GB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
