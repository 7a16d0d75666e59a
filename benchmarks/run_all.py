"""romanjax against romanisim and stcal on the same data, in one process.

Rows (reference -> romanjax array API / frame driver, all on the same MA-table-4 frame of
resultants [e]):

- apportion: ``romanisim.l1.apportion_counts_to_resultants`` -> ``apportion_counts`` /
  ``apportion_frame``
- simulate_cr: ``romanisim.l1.apportion_counts_to_resultants(crparam={})`` (photons and
  romanisim's default cosmic rays) -> ``simulate_l1(cosmic_rays=True)`` / ``simulate_frame``
  (photons, the default cosmic rays, pedestal and 5 e of read noise; no reference fitter
  behind it, so its floors are only for scale)
- optimal: ``romanisim.ramp.RampFitInterpolator(reads).fit_ramps`` -> ``fit_ramps_optimal`` /
  ``fit_frame(method="optimal")``
- casertano: ``romanisim.ramp.fit_ramps_casertano`` -> ``fit_ramps_casertano`` /
  ``fit_frame(method="casertano")``
- cas22, cas22_jump: ``stcal.ramp_fitting.ols_cas22.fit_ramps(use_jump=...)`` ->
  ``fit_ramps_casertano(detect_jumps=...)`` / ``fit_frame(method="casertano", ...)``
- likely: ``stcal.ramp_fitting.likely_fit.likely_ramp_fit`` -> ``fit_ramps_likely`` /
  ``fit_frame(method="likely")`` (jump detection on in both)

romanjax is timed through both of its entry points, side by side on the same data:

- the array API: one direct call on the whole frame (numpy in), waited for with
  ``jax.block_until_ready``; the result stays on the device;
- the frame driver: ``fit_frame`` / ``apportion_frame``, numpy in and numpy out, with the
  host-device transfers, chunking and sharding included.

Each path gets one warm-up call that compiles, then the best of ``--repeat``; the ``compile``
column is the time of the array API's first call (near 0 for a second scene of the same
size, which reuses the compiled code). References get one warm-up call too, then the best of
``--ref-repeat``.

Floors: the *read floor* is one jitted, fused sum of the resultant rows of the frame
already on the device (the least any fitter must do: read every resultant once), with
numpy's ``sum`` beside it for scale; the *read+write floor* is one pass that reads the
resultants and writes fresh arrays of the ``RampFit`` layout (float ``slope``, ``var_read``,
``var_poisson``, ``var_total`` ``[*pixels]`` and the uint32 ``flags``
``[(2 n + 1) // 32 + 1, *pixels]``), the least a fitter returning that layout must do.
Peak memory: the resident-set high-water mark of the process sampled during each path of
each row (psutil, every 10 ms) minus the resident set before it, and the process's overall
peak.

Scenes (``--scene``, one table each):

- benchmark: 90% of the pixels faint sky-like 0.1-5 e/s, 10% sources 5-2000 e/s
  (log-uniform); 1% of the pixels with a 2000 e jump in the copy the jump rows fit;
- bright: rates log-uniform over 0.1-1000 e/s everywhere; 2% of the pixels with a jump of
  100-3000 e (uniform) in the copy the jump rows fit.

In both, resultants come from romanjax's apportionment (the exact distribution of
romanisim's) plus 5 e read noise per read, and a jump starts at a random resultant 2..n-1.

Runs unchanged on a CUDA machine (``pip install romanjax[cuda]``): JAX picks the GPU and the
frame drivers shard over all local devices.

Usage::

    python benchmarks/run_all.py                            # 1024 x 1024, benchmark scene
    python benchmarks/run_all.py --scene benchmark bright   # both scenes, one table each
    python benchmarks/run_all.py --full                     # 1024 x 1024 and 4088 x 4088
    python benchmarks/run_all.py --size 256 --repeat 2      # quick check
    python benchmarks/run_all.py --only optimal casertano --no-reference
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import platform
import resource
import sys
import threading
import time

import numpy as np

ROWS = ("apportion", "simulate_cr", "optimal", "casertano", "cas22", "cas22_jump", "likely")
SCENES = ("benchmark", "bright")
READ_NOISE = 5.0  # [e] per read


def have(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


class PeakMemory:
    """Resident-set high-water mark during a ``with`` block (sampling thread, 10 ms)."""

    def __init__(self):
        import psutil

        self.process = psutil.Process()

    def __enter__(self):
        self.start = self.process.memory_info().rss
        self.peak = self.start
        self.running = True
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self):
        while self.running:
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(0.01)

    def __exit__(self, *exc):
        self.running = False
        self.thread.join()
        self.peak = max(self.peak, self.process.memory_info().rss)

    @property
    def delta_mb(self) -> float:
        return (self.peak - self.start) / 2**20


def best_of(function, repeat: int):
    """Best wall time [s] of ``repeat`` calls (the result of the last call is returned)."""
    best, out = np.inf, None
    for _ in range(max(repeat, 1)):
        out = None
        gc.collect()
        start = time.perf_counter()
        out = function()
        best = min(best, time.perf_counter() - start)
    return best, out


def make_data(size: int, scene: str = "benchmark", seed: int = 2026):
    """Counts, resultants [e] and a jumped copy of them for a ``size x size`` MA-table-4
    frame of the given scene (see the module docstring).

    Resultants come from romanjax's apportionment (the exact distribution of romanisim's)
    plus N(0, 5 e / sqrt(N_i)) read noise; the jumped copy adds one jump at a random
    resultant 2..n-1 to a fraction of the pixels.
    """
    import jax

    import romanjax

    pattern = romanjax.ReadPattern.from_ma_table(4)
    rng = np.random.default_rng(seed)
    if scene == "benchmark":
        flux = rng.uniform(0.1, 5.0, (size, size))
        bright = rng.random((size, size)) < 0.1
        flux[bright] = 10 ** rng.uniform(np.log10(5), np.log10(2000), bright.sum())
        jump_fraction, jump_range = 0.01, (2000.0, 2000.0)
    elif scene == "bright":
        flux = 10 ** rng.uniform(-1.0, 3.0, (size, size))
        jump_fraction, jump_range = 0.02, (100.0, 3000.0)
    else:
        raise ValueError(f"unknown scene {scene!r}; choose from {SCENES}")
    counts = rng.poisson(flux * pattern.exposure_time).astype(np.int64)
    resultants = romanjax.apportion_frame(jax.random.key(seed), counts, pattern)
    n = pattern.n_resultants
    for i in range(n):  # in place, one resultant at a time (bounded temporaries)
        noise = rng.standard_normal((size, size), dtype=np.float32)
        resultants[i] += noise * np.float32(READ_NOISE / np.sqrt(pattern.n_reads[i]))
    resultants = resultants.astype(np.float32, copy=False)
    jumped = resultants.copy()
    hit = rng.random((size, size)) < jump_fraction
    where = rng.integers(2, n, hit.sum())
    if jump_range[0] == jump_range[1]:
        amplitude = np.full(hit.sum(), jump_range[0], np.float32)
    else:
        amplitude = rng.uniform(*jump_range, hit.sum()).astype(np.float32)
    rows, cols = np.nonzero(hit)
    for k in range(2, n):
        sel = where == k
        jumped[k:, rows[sel], cols[sel]] += amplitude[sel]
    return pattern, counts, resultants, jumped


def floor_times(resultants, repeat):
    """Floors [s]: one jitted pass reading the resultants (a fused sum of the rows; the
    fastest computation that touches every element once), the numpy sum, and one pass that
    reads the resultants and writes fresh arrays of the RampFit layout (slope, var_read,
    var_poisson, var_total ``[*pixels]`` float and flags ``[(2 n + 1) // 32 + 1, *pixels]`` uint32).
    """
    import jax

    on_device = jax.device_put(resultants)
    floors = []
    from _common import read_and_write_fit, row_sum

    for function in (jax.jit(row_sum), jax.jit(read_and_write_fit)):
        jax.block_until_ready(function(on_device))
        floors.append(best_of(lambda f=function: jax.block_until_ready(f(on_device)),
                              max(repeat, 3))[0])  # fmt: skip
    host, _ = best_of(lambda: resultants.sum(axis=0), max(repeat, 3))
    return floors[0], host, floors[1]


# ------------------------------------------------------------------------------------------
# the rows: (reference callable or None, array-API callable, frame-driver callable, note)
# ------------------------------------------------------------------------------------------


def row_functions(name, pattern, counts, resultants, jumped, reference: bool):
    import jax

    import romanjax

    reads = [list(r) for r in pattern.reads]
    n = resultants.shape[0]
    read_noise_map = np.full(resultants.shape[1:], READ_NOISE, np.float32)
    ref, note = None, ""

    def wait(function, *args, **kwargs):
        return lambda: jax.block_until_ready(function(*args, **kwargs))

    if name == "apportion":
        api = wait(romanjax.apportion_counts, jax.random.key(1), counts, pattern)
        frame = lambda: romanjax.apportion_frame(jax.random.key(1), counts, pattern)  # noqa: E731
        if reference and have("romanisim"):
            from romanisim.l1 import apportion_counts_to_resultants

            tij = [[index * pattern.read_time for index in r] for r in pattern.reads]
            ref = lambda: apportion_counts_to_resultants(counts, tij, seed=1)  # noqa: E731
            note = "romanisim apportion_counts_to_resultants"
    elif name == "simulate_cr":
        kw = dict(read_noise=READ_NOISE, cosmic_rays=True)
        api = wait(romanjax.simulate_l1, jax.random.key(1), counts, pattern, **kw)
        frame = lambda: romanjax.simulate_frame(jax.random.key(1), counts, pattern, **kw)  # noqa: E731
        if reference and have("romanisim"):
            from romanisim.l1 import apportion_counts_to_resultants

            tij = [[index * pattern.read_time for index in r] for r in pattern.reads]
            ref = lambda: apportion_counts_to_resultants(counts, tij, crparam={}, seed=1)  # noqa: E731
            note = "romanisim apportion_counts_to_resultants(crparam={})"
    elif name == "optimal":
        api = wait(romanjax.fit_ramps_optimal, resultants, pattern, READ_NOISE)
        frame = lambda: romanjax.fit_frame(  # noqa: E731
            resultants, pattern, READ_NOISE, method="optimal"
        )
        if reference and have("romanisim"):
            from romanisim.ramp import RampFitInterpolator

            fitter = RampFitInterpolator(reads)
            ref = lambda: fitter.fit_ramps(resultants, READ_NOISE)  # noqa: E731
            note = "romanisim RampFitInterpolator.fit_ramps"
    elif name == "casertano":
        api = wait(romanjax.fit_ramps_casertano, resultants, pattern, READ_NOISE)
        frame = lambda: romanjax.fit_frame(  # noqa: E731
            resultants, pattern, READ_NOISE, method="casertano"
        )
        if reference and have("romanisim"):
            from romanisim.ramp import fit_ramps_casertano

            dq = np.zeros(resultants.shape, np.int32)
            ref = lambda: fit_ramps_casertano(resultants, dq, READ_NOISE, reads)  # noqa: E731
            note = "romanisim fit_ramps_casertano"
    elif name in ("cas22", "cas22_jump"):
        use_jump = name == "cas22_jump"
        data = jumped if use_jump else resultants
        api = wait(romanjax.fit_ramps_casertano, data, pattern, READ_NOISE,
                   detect_jumps=use_jump)  # fmt: skip
        frame = lambda: romanjax.fit_frame(  # noqa: E731
            data, pattern, READ_NOISE, method="casertano", detect_jumps=use_jump
        )
        if reference and have("stcal"):
            from stcal.ramp_fitting.ols_cas22 import fit_ramps

            flat = data.reshape(n, -1)
            dq = np.zeros(flat.shape, np.int32)
            noise = read_noise_map.reshape(-1)
            ref = lambda: fit_ramps(  # noqa: E731
                flat, dq, noise, pattern.read_time, reads, use_jump=use_jump
            )
            note = f"stcal ols_cas22 use_jump={use_jump}"
    elif name == "likely":
        api = wait(romanjax.fit_ramps_likely, jumped, pattern, READ_NOISE, detect_jumps=True)
        frame = lambda: romanjax.fit_frame(  # noqa: E731
            jumped, pattern, READ_NOISE, method="likely", detect_jumps=True
        )
        if reference and have("stcal"):
            ref = lambda: stcal_likely(jumped, pattern, READ_NOISE)  # noqa: E731
            note = "stcal likely_ramp_fit (jumps on)"
    else:
        raise ValueError(f"unknown row {name!r}")
    return ref, api, frame, note


def stcal_likely(resultants, pattern, read_noise):
    """stcal's LIKELY fit of ``resultants`` [e] (gain 1), as romancal sets it up."""
    from stcal.ramp_fitting.likely_fit import likely_ramp_fit
    from stcal.ramp_fitting.ramp_fit_class import RampData

    n, ny, nx = resultants.shape
    ramp_data = RampData()
    ramp_data.set_arrays(
        resultants[None],
        np.zeros((1, n, ny, nx), np.uint8),
        np.zeros((ny, nx), np.uint32),
        np.zeros((ny, nx), np.float32),
    )
    ramp_data.set_meta(name="WFI", frame_time=pattern.read_time, group_time=pattern.read_time,
                       groupgap=0, nframes=1, drop_frames1=None)  # fmt: skip
    ramp_data.read_pattern = [list(np.asarray(r) * pattern.read_time) for r in pattern.reads]
    ramp_data.set_dqflags({"GOOD": 0, "DO_NOT_USE": 1, "SATURATED": 2, "JUMP_DET": 4,
                           "PERSISTENCE": 2**30, "NO_GAIN_VALUE": 2**19,
                           "UNRELIABLE_SLOPE": 2**24, "CHARGELOSS": 2**27})  # fmt: skip
    ramp_data.start_row, ramp_data.num_rows = 0, ny
    ramp_data.suppress_one_group_ramps = False
    # stcal's likely fitter takes the CDS read noise (romancal#2358): sqrt(2) x per read
    noise = np.full((ny, nx), np.sqrt(2.0) * read_noise, np.float32)
    return likely_ramp_fit(ramp_data, noise, np.ones((ny, nx), np.float32))


def time_path(function, repeat):
    """(compile [s], best time [s], peak RSS increase [MB]) of a romanjax path: one warm-up
    call that compiles, then the best of ``repeat``."""
    start = time.perf_counter()
    function()
    compile_s = time.perf_counter() - start
    with PeakMemory() as memory:
        best, _ = best_of(function, repeat)
    return compile_s, best, memory.delta_mb


def run_size(size, scene, rows, args):
    import jax

    print(f"\n## {scene} scene, {size} x {size}, MA table 4 (9 resultants), "
          f"{jax.default_backend()}", flush=True)  # fmt: skip
    t0 = time.perf_counter()
    pattern, counts, resultants, jumped = make_data(size, scene)
    print(f"(data: {resultants.nbytes / 2**20:.0f} MB of float32 resultants, made in "
          f"{time.perf_counter() - t0:.1f} s)", flush=True)  # fmt: skip
    floor_device, floor_host, floor_output = floor_times(resultants, args.repeat)
    results = []
    for name in rows:
        ref, api, frame, note = row_functions(name, pattern, counts, resultants, jumped,
                                              not args.no_reference)  # fmt: skip
        entry = {"row": name, "scene": scene, "size": size, "note": note, "ref_s": None,
                 "ref_mem_mb": None}  # fmt: skip
        for path, function in (("api", api), ("frame", frame)):
            compile_s, best, mem = time_path(function, args.repeat)
            entry.update({f"{path}_s": best, f"{path}_compile_s": compile_s,
                          f"{path}_mem_mb": mem})  # fmt: skip
        if ref is not None:
            try:
                ref()  # warm-up, as for romanjax: a first call costs up to 2x (page faults)
                with PeakMemory() as memory:
                    entry["ref_s"], _ = best_of(ref, args.ref_repeat)
                entry["ref_mem_mb"] = memory.delta_mb
            except Exception as error:  # noqa: BLE001 - report and go on
                entry["note"] += f"; reference failed: {type(error).__name__}: {error}"
        entry["floor_s"] = floor_device
        entry["floor_output_s"] = floor_output
        results.append(entry)
        print(f"  {name}: {json.dumps({k: v for k, v in entry.items() if k != 'row'})}",
              flush=True)  # fmt: skip
    print(table(results, scene, size, floor_device, floor_host, floor_output), flush=True)
    return results


def fmt(value, spec=".3f"):
    return "-" if value is None else format(value, spec)


def ratio(a, b):
    return a / b if a and b else None


def table(results, scene, size, floor_device, floor_host, floor_output):
    lines = [
        f"\n### {scene} scene, {size} x {size} (floors: one pass reading the resultants = "
        f"{floor_device:.4f} s jitted on the device, {floor_host:.4f} s numpy; reading them "
        f"and writing a RampFit = {floor_output:.4f} s)\n",
        "| row | reference | ref [s] | array API [s] | fit_frame/driver [s] | ref/api "
        "| ref/frame | api/frame | compile [s] | api / read floor | api / read+write floor "
        "| frame / read floor | frame / read+write floor | ref peak +MB | api peak +MB "
        "| frame peak +MB |",
        "|---|---|" + "---:|" * 14,
    ]
    for e in results:
        api, frame = e["api_s"], e["frame_s"]
        lines.append(
            f"| {e['row']} | {e['note'] or '-'} | {fmt(e['ref_s'])} | {fmt(api)} "
            f"| {fmt(frame)} | {fmt(ratio(e['ref_s'], api), '.1f')}x "
            f"| {fmt(ratio(e['ref_s'], frame), '.1f')}x | {fmt(ratio(api, frame), '.2f')} "
            f"| {fmt(e['api_compile_s'], '.1f')} "
            f"| {fmt(ratio(api, floor_device), '.1f')}x | {fmt(ratio(api, floor_output), '.1f')}x "
            f"| {fmt(ratio(frame, floor_device), '.1f')}x "
            f"| {fmt(ratio(frame, floor_output), '.1f')}x "
            f"| {fmt(e['ref_mem_mb'], '.0f')} | {fmt(e['api_mem_mb'], '.0f')} "
            f"| {fmt(e['frame_mem_mb'], '.0f')} |"
        )
    speedups = [(ratio(e["ref_s"], e[f"{path}_s"]), path, e["row"])
                for e in results for path in ("api", "frame")]  # fmt: skip
    speedups = [s for s in speedups if s[0] is not None]
    if speedups:
        low, path, row = min(speedups)
        lines.append(f"\nlowest speed-up over the reference: {low:.1f}x ({row}, {path})")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, nargs="+", default=[1024],
                        help="frame side(s) in pixels (default 1024)")  # fmt: skip
    parser.add_argument("--full", action="store_true", help="also a full 4088 x 4088 frame")
    parser.add_argument("--scene", nargs="+", choices=SCENES, default=["benchmark"],
                        help="scene(s), one table each (default benchmark)")  # fmt: skip
    parser.add_argument("--only", nargs="+", choices=ROWS, default=list(ROWS))
    parser.add_argument("--repeat", type=int, default=3, help="romanjax: best of N (default 3)")
    parser.add_argument("--ref-repeat", type=int, default=3,
                        help="references: best of N after a warm-up call (default 3)")
    parser.add_argument("--no-reference", action="store_true", help="romanjax rows only")
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    sizes = list(args.size) + ([4088] if args.full and 4088 not in args.size else [])

    import jax

    print(f"# romanjax benchmark\n\npython {platform.python_version()}, jax {jax.__version__}, "
          f"devices {jax.devices()}, {os.cpu_count()} CPUs, {platform.platform()}")  # fmt: skip
    for module in ("romanisim", "stcal"):
        if have(module):
            from importlib.metadata import version

            print(f"{module} {version(module)}")
    everything = []
    for size in sizes:
        for scene in dict.fromkeys(args.scene):
            everything += run_size(size, scene, args.only, args)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if sys.platform == "darwin":
        peak /= 1024  # bytes there
    print(f"\nprocess peak RSS: {peak:.0f} MB")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"results": everything, "peak_rss_mb": peak}, handle, indent=1)


if __name__ == "__main__":
    main()
