"""Peak resident memory of one MA-table-4 frame (default 4088 x 4088) through ``fit_frame``.

    python benchmarks/full_frame_memory.py optimal
    python benchmarks/full_frame_memory.py casertano            # with jump detection
    python benchmarks/full_frame_memory.py casertano --spread   # jumps in every resultant
    python benchmarks/full_frame_memory.py likely [--spread]    # likelihood, jumps on
    python benchmarks/full_frame_memory.py optimal --size 256   # a quick check

Run each method in a fresh process (ru_maxrss is the process's high-water mark). The target
for a full frame is a peak under 2 x the float32 resultant array + 1 GB.
"""

import argparse
import resource
import time

import numpy as np


def main(method: str = "optimal", spread: bool = False, size: int = 4088):
    import romanjax

    pattern = romanjax.ReadPattern.from_ma_table(4)
    rng = np.random.default_rng(0)
    shape = (size, size)
    flux = rng.uniform(0.1, 50, shape).astype(np.float32)
    resultants = np.empty((pattern.n_resultants,) + shape, np.float32)
    for i, t in enumerate(pattern.tbar):  # ramps with read noise; no photon noise needed here
        resultants[i] = 1e4 + flux * np.float32(t)
        resultants[i] += rng.standard_normal(shape, dtype=np.float32) * 5
    if method in ("casertano", "likely"):  # a 2000 e jump in 1% of the pixels
        hit = rng.random(shape) < 0.01
        if spread:  # at a random resultant: jump flags in every resultant
            first = rng.integers(1, pattern.n_resultants, shape)
            for i in range(1, pattern.n_resultants):
                resultants[i, hit & (first <= i)] += np.float32(2000.0)
            del first
        else:  # at resultant 5
            resultants[5:, hit] += np.float32(2000.0)
        del hit
    del flux
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    start = time.perf_counter()
    kwargs = {"detect_jumps": True} if method in ("casertano", "likely") else {}
    fit = romanjax.fit_frame(resultants, pattern, 5.0, method=method, **kwargs)
    elapsed = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    flagged = 0.0 if fit.flags is None else float(np.mean(np.asarray(fit.pixel_dq) != 0))
    print(f"{method}: {size} x {size}, resultants {resultants.nbytes / 1e9:.3f} GB, peak RSS "
          f"before the fit {before:.2f} GB, peak {peak:.2f} GB (target "
          f"{2 * resultants.nbytes / 1e9 + 1:.2f} GB), fit {elapsed:.1f} s, "
          f"{flagged:.2%} of pixels flagged")  # fmt: skip


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("method", nargs="?", default="optimal",
                        choices=("optimal", "casertano", "likely"))  # fmt: skip
    parser.add_argument("--spread", action="store_true",
                        help="jumps at a random resultant instead of resultant 5")  # fmt: skip
    parser.add_argument("--size", type=int, default=4088, help="frame side (default 4088)")
    args = parser.parse_args()
    main(args.method, spread=args.spread, size=args.size)
