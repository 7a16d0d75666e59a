"""Peak resident memory of one full 4088 x 4088 MA-table-4 frame through ``fit_frame``.

    python benchmarks/full_frame_memory.py optimal
    python benchmarks/full_frame_memory.py casertano     # with jump detection
    python benchmarks/full_frame_memory.py casertano --spread  # jumps in every resultant
    python benchmarks/full_frame_memory.py likely [--spread]    # likelihood, jumps on

Run each method in a fresh process (ru_maxrss is the process's high-water mark). The target
of issue 6 is a peak under 2 x the float32 resultant array + 1 GB.
"""

import resource
import sys
import time

import numpy as np


def main(method: str, spread: bool = False):
    import romanjax

    pattern = romanjax.ReadPattern.from_ma_table(4)
    rng = np.random.default_rng(0)
    shape = (4088, 4088)
    flux = rng.uniform(0.1, 50, shape).astype(np.float32)
    resultants = np.empty((pattern.n_resultants,) + shape, np.float32)
    for i, t in enumerate(pattern.tbar):  # ramps with read noise; no photon noise needed here
        resultants[i] = 1e4 + flux * np.float32(t)
        resultants[i] += rng.standard_normal(shape, dtype=np.float32) * 5
    if method in ("casertano", "likely"):  # a 2000 e jump in 1% of the pixels
        hit = rng.random(shape) < 0.01
        if spread:  # at a random resultant: flags in every dq row, most of its pages touched
            first = rng.integers(1, pattern.n_resultants, shape)
            for i in range(1, pattern.n_resultants):
                resultants[i, hit & (first <= i)] += np.float32(2000.0)
            del first
        else:  # at resultant 5: flags in rows 4 and 5 (and a few false ones elsewhere)
            resultants[5:, hit] += np.float32(2000.0)
        del hit
    del flux
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    start = time.perf_counter()
    kwargs = {"detect_jumps": True} if method in ("casertano", "likely") else {}
    romanjax.fit_frame(resultants, pattern, 5.0, method=method, **kwargs)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    print(f"{method}: resultants {resultants.nbytes / 1e9:.3f} GB, peak RSS before the fit "
          f"{before:.2f} GB, peak {peak:.2f} GB (target {2 * resultants.nbytes / 1e9 + 1:.2f} "
          f"GB), fit {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    main(args[0] if args else "optimal", spread="--spread" in sys.argv[1:])
