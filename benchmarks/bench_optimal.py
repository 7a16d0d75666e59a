"""romanjax.fit_ramps_optimal vs romanisim's RampFitInterpolator on the same ramps.

    python benchmarks/bench_optimal.py [--size 1024] [--table 4] [--repeat 3]

Prints the best-of-N wall times, the speed-up and the time of one memory pass over the
resultants (the floor for a fitter that reads each resultant once).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _common import best_time, memory_pass_time, simulated_ramps  # noqa: E402

import romanjax  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1024, help="image side [pixels]")
    parser.add_argument("--table", type=int, default=4, help="MA table number")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)

    pattern = romanjax.ReadPattern.from_ma_table(args.table)
    ramps = simulated_ramps(pattern, (args.size, args.size))
    read_noise = np.full((args.size, args.size), 10.0, "f4")
    print(f"{args.size}x{args.size} pixels, MA table {args.table} ({pattern.n_resultants} "
          f"resultants), float32, JAX {jax.__version__} on {jax.devices()[0].platform}")

    on_device = jax.device_put(ramps)
    jax.block_until_ready(romanjax.fit_ramps_optimal(on_device, pattern, read_noise))  # compile
    t_jax = best_time(lambda: romanjax.fit_ramps_optimal(on_device, pattern, read_noise),
                      args.repeat)  # fmt: skip
    t_floor = memory_pass_time(on_device)
    print(f"romanjax fit_ramps_optimal      {t_jax:8.3f} s   ({t_jax / t_floor:5.1f}x one "
          f"memory pass, {t_floor * 1e3:.1f} ms)")

    try:
        from romanisim import ramp
    except ImportError:
        print("romanisim not installed: no reference timing (pip install '.[reference]')")
        return
    interpolator = ramp.RampFitInterpolator([list(r) for r in pattern.reads])
    t_ref = best_time(lambda: interpolator.fit_ramps(ramps, read_noise), args.repeat)
    print(f"romanisim RampFitInterpolator   {t_ref:8.3f} s")
    print(f"speed-up                        {t_ref / t_jax:8.1f}x  (goal >= 10x)")


if __name__ == "__main__":
    main()
