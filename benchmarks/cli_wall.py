"""Wall time of the ``romanjax fit`` command, first and repeated runs.

Simulates one L1 file (``romanjax simulate --size N``), then runs ``romanjax fit`` on it
several times as separate processes, the way a user does: first with an empty persistent
compilation cache (the run that compiles), then again with that cache (the runs that
reuse it), and once with the cache off. Prints each run's wall time; the accelerator
issue's target is under 3 s for a repeated fit of a 256 x 256 file.

    python benchmarks/cli_wall.py [--size 256] [--repeat 3] [--product-format roman]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _command(module: bool) -> list[str]:
    script = shutil.which("romanjax") or str(Path(sys.executable).with_name("romanjax"))
    if module or not Path(script).exists():
        return [sys.executable, "-m", "romanjax.host.cli"]
    return [script]


def _run(arguments, env, module=False) -> float:
    start = time.perf_counter()
    result = subprocess.run(_command(module) + arguments, env=env, capture_output=True,
                            text=True)  # fmt: skip
    wall = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"romanjax {' '.join(arguments)} failed:\n{result.stderr}")
    return wall


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=3, help="runs with the filled cache")
    parser.add_argument("--product-format", default="roman", choices=("roman", "romanjax"))
    parser.add_argument("--module", action="store_true",
                        help="run `python -m romanjax.host.cli` (the checkout on PYTHONPATH) "
                             "instead of the installed executable")  # fmt: skip
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        env = dict(os.environ, ROMANJAX_COMPILATION_CACHE="1",
                   ROMANJAX_CACHE_DIR=str(folder / "cache"))  # fmt: skip
        _run(["simulate", "--size", str(args.size), "--output", str(folder / "sim"),
              "--quiet"], dict(env, ROMANJAX_CACHE_DIR=str(folder / "sim_cache")),
             args.module)  # fmt: skip
        l1 = str(folder / "sim" / "romanjax_L1.asdf")
        fit = ["fit", l1, "--quiet", "--overwrite", "--product-format", args.product_format,
               "-o", str(folder / "L2.asdf")]  # fmt: skip
        print(f"romanjax fit of a {args.size} x {args.size} L1 file "
              f"(--product-format {args.product_format}), wall time of each process:")
        m = args.module
        print(f"- first run, empty cache (compiles): {_run(fit, env, m):.2f} s")
        for i in range(args.repeat):
            print(f"- run {i + 2}, with the cache: {_run(fit, env, m):.2f} s")
        off = dict(env, ROMANJAX_COMPILATION_CACHE="0")
        print(f"- cache off: {_run(fit, off, m):.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
