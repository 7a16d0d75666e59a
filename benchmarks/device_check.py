"""Timings of romanjax's array API and frame drivers on whatever device JAX picks.

Needs only jax and numpy (romanjax's array API imports nothing else), so it runs from a
checkout on a bare accelerator machine::

    PYTHONPATH=. python3 benchmarks/device_check.py                # 4088 x 4088, MA table 4
    PYTHONPATH=. python3 benchmarks/device_check.py --size 512     # quick check (CPU too)
    PYTHONPATH=. python3 benchmarks/device_check.py --out results/ # where the JSON goes

The frame (counts from rates log-uniform in 0.1-1000 e/s, apportioned over the reads, read
noise added, 1% of the pixels with a 2000 e jump at a random resultant) is made on the device
and stays there. Each row is one call waited for with ``jax.block_until_ready`` after a
warm-up call that compiles (its time less the best call's is the ``compile`` column, 0.0
where the program was compiled earlier in the run: ``apportion_counts`` makes the frame);
the best of ``--repeat`` calls is reported (fewer once the time budget is spent: the
JSON's ``calls``). The frame-driver rows take numpy in and give numpy out (transfers
included).

Floors, measured the same way on the same device:

- ``read``: one jitted pass that reads every resultant once (a fused sum of the rows);
- ``read+write``: that pass plus writing fresh arrays of a fit's outputs (slope, three
  variances and one flag word per pixel).

Each time is printed with its ratio to the floors, and on a GPU with its target; the table
(``device_check.md``) and a JSON of the same numbers (``device_check.json``) are written to
``--out`` after every row, so a run stopped by a time limit keeps what it measured (the
rows still to come marked "not run yet"). No row starts after ``--budget`` seconds
(default 240, so that a full run ends within about five minutes even where a row is far
off its target); the rows left are listed as skipped.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time

import numpy as np

#: Targets [s] on one H100/H200-class GPU for a 4088 x 4088 MA-table-4 frame.
GPU_TARGETS = {
    "fit_ramps_optimal": 0.005,
    "fit_ramps_casertano": 0.005,
    "fit_ramps_casertano(detect_jumps)": 0.015,
    "fit_ramps_likely(detect_jumps)": 0.015,
    "apportion_counts": 0.030,
    "simulate_l1": 0.060,
    "fit_frame(casertano) numpy in/out": 0.060,
}

READ_NOISE = 5.0  # [e] per read
JUMP = 2000.0  # [e]
JUMP_FRACTION = 0.01


def timed(function, repeat, deadline=np.inf):
    """(compile-and-first-call time, best time of the timed calls [s], their number): up to
    ``repeat`` calls, stopping early once ``time.perf_counter()`` passes ``deadline`` (at
    least one is made)."""
    import jax

    start = time.perf_counter()
    jax.block_until_ready(function())
    first = time.perf_counter() - start
    best, calls = np.inf, 0
    for i in range(max(repeat, 1)):
        if i and time.perf_counter() > deadline:
            break
        start = time.perf_counter()
        jax.block_until_ready(function())
        best = min(best, time.perf_counter() - start)
        calls += 1
    return first, best, calls


def make_frame(size, seed=2026):
    """Counts, resultants and jumped resultants [e] of a ``size x size`` frame, on the
    device (MA table 4)."""
    import jax
    import jax.numpy as jnp

    import romanjax

    pattern = romanjax.ReadPattern.from_ma_table(4)
    n = pattern.n_resultants
    key = jax.random.key(seed)
    k_rate, k_counts, k_apportion, k_noise, k_hit, k_where = jax.random.split(key, 6)
    rate = 10 ** jax.random.uniform(k_rate, (size, size), minval=-1.0, maxval=3.0)
    counts = jax.random.poisson(k_counts, rate * pattern.exposure_time).astype(jnp.int32)
    resultants = romanjax.apportion_counts(k_apportion, counts, pattern)
    sigma = jnp.asarray(READ_NOISE / np.sqrt(pattern.n_reads), jnp.float32)[:, None, None]
    noise = jax.random.normal(k_noise, (n, size, size), jnp.float32) * sigma
    resultants = (resultants + noise).astype(jnp.float32)
    hit = jax.random.uniform(k_hit, (size, size)) < JUMP_FRACTION
    where = jax.random.randint(k_where, (size, size), 2, n)
    step = (jnp.arange(n)[:, None, None] >= where) & hit
    jumped = resultants + jnp.where(step, jnp.float32(JUMP), jnp.float32(0))
    return pattern, jax.block_until_ready((counts, resultants, jumped))


def floors(resultants, repeat):
    """The read and read+write floors [s] (see the module notes)."""
    import jax
    from _common import read_and_write_fit, row_sum

    read_pass, write_pass = jax.jit(row_sum), jax.jit(read_and_write_fit)
    read = timed(lambda: read_pass(resultants), repeat)[1]
    write = timed(lambda: write_pass(resultants), repeat)[1]
    return read, write


def rows(pattern, counts, resultants, jumped):
    """name -> zero-argument callable."""
    import jax

    import romanjax

    key = jax.random.key(7)
    host = np.asarray(resultants)
    host_counts = np.asarray(counts)
    return {
        "fit_ramps_optimal": lambda: romanjax.fit_ramps_optimal(resultants, pattern, READ_NOISE),
        "fit_ramps_casertano": lambda: romanjax.fit_ramps_casertano(
            resultants, pattern, READ_NOISE),
        "fit_ramps_casertano(detect_jumps)": lambda: romanjax.fit_ramps_casertano(
            jumped, pattern, READ_NOISE, detect_jumps=True),
        "fit_ramps_likely": lambda: romanjax.fit_ramps_likely(
            resultants, pattern, READ_NOISE, detect_jumps=False),
        "fit_ramps_likely(detect_jumps)": lambda: romanjax.fit_ramps_likely(
            jumped, pattern, READ_NOISE, detect_jumps=True),
        "apportion_counts": lambda: romanjax.apportion_counts(key, counts, pattern),
        "simulate_l1": lambda: romanjax.simulate_l1(key, counts, pattern),
        "fit_frame(casertano) numpy in/out": lambda: romanjax.fit_frame(
            host, pattern, READ_NOISE, method="casertano"),
        "fit_frame(optimal) numpy in/out": lambda: romanjax.fit_frame(
            host, pattern, READ_NOISE, method="optimal"),
        "apportion_frame numpy in/out": lambda: romanjax.apportion_frame(
            key, host_counts, pattern),
    }  # fmt: skip


def table_lines(header, read, write, results, skipped, pending=()):
    """The Markdown table of ``results``, the rows ``skipped`` for the time budget and the
    rows ``pending`` (not run yet: the table as it stands during the run)."""
    lines = [
        header,
        f"Floors: read {read * 1e3:.3f} ms; read+write {write * 1e3:.3f} ms\n",
        "| row | time [ms] | compile [s] | / read floor | / read+write floor | target [ms] |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for e in results:
        target = "-" if e["target_s"] is None else (
            f"{e['target_s'] * 1e3:.0f} ({'met' if e['meets_target'] else 'missed'})")
        lines.append(f"| {e['row']} | {e['time_s'] * 1e3:.2f} | {e['compile_s']:.1f} "
                     f"| {e['over_read']:.1f}x | {e['over_read_write']:.1f}x | {target} |")
    for name in skipped:
        lines.append(f"| {name} | skipped: time budget spent | | | | |")
    for name in pending:
        lines.append(f"| {name} | not run yet | | | | |")
    return lines  # fmt: skip


def write_atomically(path, text):
    """Write ``text`` to ``path`` through a temporary file and a rename, so a run stopped
    at any point leaves the previous complete file, never a partial one."""
    temporary = f"{path}.tmp"
    with open(temporary, "w") as handle:
        handle.write(text)
    os.replace(temporary, path)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=4088, help="frame side [pixels]")
    parser.add_argument("--repeat", type=int, default=5, help="best of N calls (default 5)")
    parser.add_argument("--only", nargs="+", default=None, help="run only these rows")
    parser.add_argument("--out", default=".", help="folder for device_check.json and .md")
    parser.add_argument("--budget", type=float, default=240.0,
                        help="seconds after which no new row starts and repeats stop "
                             "(default 240; the rows not run are listed as skipped)")
    args = parser.parse_args(argv)

    import jax

    device = jax.devices()[0]
    backend = jax.default_backend()
    header = (
        f"# romanjax device check\n\n{datetime.date.today().isoformat()}; jax "
        f"{jax.__version__}; backend {backend}; device {device.device_kind} "
        f"(x{len(jax.devices())}); python {platform.python_version()}; "
        f"{args.size} x {args.size}, MA table 4 (9 resultants), float32\n"
    )
    print(header, flush=True)
    start = time.perf_counter()
    deadline = start + args.budget
    pattern, (counts, resultants, jumped) = make_frame(args.size)
    print(f"frame made on the device in {time.perf_counter() - start:.1f} s", flush=True)
    read, write = floors(resultants, args.repeat)
    os.makedirs(args.out, exist_ok=True)
    selected = {name: function
                for name, function in rows(pattern, counts, resultants, jumped).items()
                if not args.only or name in args.only}  # fmt: skip
    results = []

    def save(skipped, pending=()):
        # after every row, so that a run stopped by a time limit keeps the rows it made
        table = "\n".join(table_lines(header, read, write, results, skipped, pending))
        write_atomically(os.path.join(args.out, "device_check.md"), table + "\n")
        write_atomically(os.path.join(args.out, "device_check.json"), json.dumps(
            {"jax": jax.__version__, "backend": backend, "device": device.device_kind,
             "size": args.size, "floor_read_s": read, "floor_read_write_s": write,
             "results": results, "skipped": list(skipped), "not_run_yet": list(pending),
             "argv": sys.argv[1:] if argv is None else list(argv)}, indent=1))
        return table  # fmt: skip

    names = list(selected)
    for position, name in enumerate(names):
        if time.perf_counter() > deadline:
            print(f"  time budget of {args.budget:.0f} s spent: skipping "
                  f"{', '.join(names[position:])}", flush=True)  # fmt: skip
            break
        first, best, calls = timed(selected[name], args.repeat, deadline)
        target = GPU_TARGETS.get(name) if backend == "gpu" else None
        entry = {"row": name, "time_s": best, "calls": calls,
                 "compile_s": max(first - best, 0.0),
                 "over_read": best / read, "over_read_write": best / write,
                 "target_s": target, "meets_target": None if target is None else best <= target}
        results.append(entry)  # fmt: skip
        print(f"  {name}: {best * 1e3:.2f} ms (best of {calls}; first call {first:.2f} s)",
              flush=True)  # fmt: skip
        save((), names[position + 1:])
    table = save(names[len(results):])
    print("\n" + table, flush=True)
    return results


if __name__ == "__main__":
    main()
