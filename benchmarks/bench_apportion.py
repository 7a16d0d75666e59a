"""romanjax's apportionment vs romanisim.l1.apportion_counts_to_resultants, MA table 4.

    python benchmarks/bench_apportion.py [--size 512] [--repeat 3] [--full]

Same counts (a bright scene: 0.5-100 e/s, ~6700 e per pixel on average), same pattern, one
process; best of N after a warm-up (compile). romanjax runs the frame driver
``romanjax.apportion_frame`` (numpy in and out, chunks of bounded memory); romanisim runs in
512-row chunks. ``--full`` also runs a 4088x4088 frame (once).
"""

import argparse
import logging
import time

import jax
import numpy as np

import romanjax


def best(f, repeat):
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        f()
        times.append(time.perf_counter() - t)
    return min(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512, help="frame side [pixels]")
    parser.add_argument("--full", action="store_true", help="also a 4088 x 4088 frame (once)")
    parser.add_argument("--repeat", type=int, default=3, help="best of N")
    args = parser.parse_args()
    from romanisim import l1 as rl1

    logging.disable(logging.WARNING)
    pattern = romanjax.ReadPattern.from_ma_table(4)
    tij = rl1.read_pattern_to_tij(4)
    rng = np.random.default_rng(0)
    sizes = [args.size] + ([4088] if args.full and args.size != 4088 else [])
    for size in sizes:
        counts = rng.poisson(rng.uniform(0.5, 100, (size, size)) * pattern.exposure_time)
        chunk = 512
        key = jax.random.key(0)

        def ours(key=key, counts=counts):
            romanjax.apportion_frame(key, counts, pattern)

        def theirs(size=size, chunk=chunk, counts=counts):
            for start in range(0, size, chunk):
                rl1.apportion_counts_to_resultants(
                    counts[start:start + chunk].astype(float), tij, seed=1)

        ours()  # compile
        t_ours = best(ours, args.repeat if size == args.size else 1)
        t_theirs = best(theirs, args.repeat if size == args.size else 1)
        print(f"{size}x{size}: romanjax {t_ours:.2f} s, romanisim {t_theirs:.2f} s, "
              f"speed-up {t_theirs / t_ours:.2f}x")


if __name__ == "__main__":
    main()
