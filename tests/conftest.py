"""Shared fixtures. Every test runs in float32 and, with JAX_ENABLE_X64=1, in float64.

The folders mirror the package's layers: ``kernels/`` the shared kernels (sorting networks,
random bits, the binomial sampler) against exact or float64 references; ``api/`` the array
API (fitters, simulator, L2, forward model) against the float64 oracles of ``oracles.py``,
romanisim and stcal, its contract (jit, vmap, dtypes) and its lowering for accelerators;
``host/`` files, frame drivers, the command line, injection, dask, docs and notebooks.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))

#: XLA flags that make the suite's compiles cheap. The suite is bound by XLA's compiles
#: (hundreds of small programs per worker, each run on a few thousand pixels), and these halve
#: them: no LLVM optimisation passes (``xla_backend_optimization_level=0``, and none of the
#: expensive ones LLVM would still run, ``xla_llvm_disable_expensive_passes``), and the CPU's
#: elemental kernel emitter instead of its newer fusion emitters, whose code generation is
#: most of the rest (``xla_cpu_use_fusion_emitters=false``). They change how fast a program
#: runs and the last bits of its results, not its arithmetic (no fast math at any level; what
#: differs is rounding, such as a multiply-add fused into one instruction in one build and not
#: in the other): simulated resultants come out identical, fits of the same resultants agree
#: to 3e-7 relative in float32 (slopes above 1 e/s), and a random draw that sits on a
#: comparison's edge may come out differently, as it may between a CPU and a GPU. Tests that
#: compare the last bits of programs of different lengths run on the users' flags instead
#: (marker ``users_codegen``, :func:`pytest_pyfunc_call`). Set before JAX creates its CPU
#: client, which reads ``XLA_FLAGS`` once; subprocesses of the tests inherit them. A flag of
#: the same name already in ``XLA_FLAGS`` wins, so the suite can still be run as users compile
#: (``XLA_FLAGS`` set to :data:`USERS_XLA_FLAGS`, below).
TEST_XLA_FLAGS = ("--xla_backend_optimization_level=0", "--xla_llvm_disable_expensive_passes=true",
                  "--xla_cpu_use_fusion_emitters=false")

#: ``XLA_FLAGS`` of the programs users run (XLA's defaults, spelt out so that the suite's own
#: flags above are not added to them), for the tests marked ``users_codegen``.
USERS_XLA_FLAGS = ("--xla_backend_optimization_level=2 --xla_llvm_disable_expensive_passes=false "
                   "--xla_cpu_use_fusion_emitters=true")


def _xla_accepts(flags: str) -> bool:
    """Whether this jaxlib's XLA knows every flag in ``flags`` (it aborts the process on an
    unknown one, and XLA renames or drops flags from release to release)."""
    probe = subprocess.run([sys.executable, "-c", "import jax; jax.devices()"],
                           env=dict(os.environ, XLA_FLAGS=flags), capture_output=True)
    return probe.returncode == 0


# the first process of a run (pytest's, before its xdist workers start) decides, and its
# workers and subprocesses inherit the decision with the environment
if "ROMANJAX_TEST_USERS_XLA_FLAGS" not in os.environ:
    _missing = [flag for flag in TEST_XLA_FLAGS if flag.split("=")[0] not in
                os.environ.get("XLA_FLAGS", "")]
    if _missing and not _xla_accepts(" ".join(_missing + [USERS_XLA_FLAGS])):
        # an XLA without the emitter choice: the optimisation level alone (a flag of every XLA)
        _missing = [flag for flag in _missing if flag == TEST_XLA_FLAGS[0]]
        USERS_XLA_FLAGS = "--xla_backend_optimization_level=2"
    for _flag in _missing:
        os.environ["XLA_FLAGS"] = (_flag + " " + os.environ.get("XLA_FLAGS", "")).strip()
    os.environ["ROMANJAX_TEST_USERS_XLA_FLAGS"] = USERS_XLA_FLAGS
USERS_XLA_FLAGS = os.environ["ROMANJAX_TEST_USERS_XLA_FLAGS"]

import romanjax  # noqa: E402

# the command line's persistent compilation cache stays off in the suite (the in-process
# CLI tests would otherwise switch it on for the whole worker); test_cli turns it on in
# subprocesses with a cache folder of their own
os.environ["ROMANJAX_COMPILATION_CACHE"] = "0"

#: A hand-made uneven pattern with skipped reads and resultants of very different sizes.
UNEVEN_READS = ((1, 2, 3), (4, 5, 6, 7, 8), (10,), (11,), (21, 22, 23), (30, 31, 32, 33, 34, 35))


def have(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


requires_romanisim = pytest.mark.skipif(not have("romanisim"), reason="romanisim not installed")
requires_stcal = pytest.mark.skipif(not have("stcal"), reason="stcal not installed")


@pytest.fixture
def rng():
    return np.random.default_rng(20261124)


@pytest.fixture(params=[4, 109, 110, "uneven"])
def pattern(request):
    """MA tables 4 (default), 109 (skipped reads), 110 and an uneven hand-made pattern."""
    if request.param == "uneven":
        return romanjax.ReadPattern(UNEVEN_READS)
    return romanjax.ReadPattern.from_ma_table(request.param)


@pytest.fixture
def float_dtype():
    """The dtype romanjax computes in for float inputs in this run."""
    from romanjax.testing import x64_enabled

    return np.float64 if x64_enabled() else np.float32


#: Memory maps a test worker may hold before its compiled programs are dropped. Every
#: program XLA compiles for the CPU keeps about 20 memory maps (code, constants and data of
#: its kernels) for as long as it stays in JAX's caches; a worker that runs hundreds of tests
#: reaches Linux's limit of 65530 maps per process (``vm.max_map_count``), after which XLA's
#: next compilation aborts the process.
MAX_WORKER_MAPS = 30_000


def _memory_maps() -> int | None:
    try:
        with open("/proc/self/maps", "rb") as maps:
            return sum(1 for _ in maps)
    except OSError:  # not Linux
        return None


@pytest.fixture(autouse=True)
def _bounded_compiled_programs():
    """After a test, drop JAX's compiled programs if the worker holds more than
    :data:`MAX_WORKER_MAPS` memory maps (later tests compile what they need again)."""
    yield
    maps = _memory_maps()
    if maps is not None and maps > MAX_WORKER_MAPS:
        import gc

        import jax

        jax.clear_caches()
        gc.collect()


def pytest_pyfunc_call(pyfuncitem):
    """Run a test marked ``users_codegen`` in a pytest subprocess whose programs are compiled
    with XLA's default CPU flags (:data:`USERS_XLA_FLAGS`) instead of the suite's cheap ones.

    Such a test compares the last bits of two programs that differ only in array lengths (a
    frame fitted whole and in chunks): the rounding of float arithmetic may depend on the
    code XLA generates for each length, and the suite's flags generate other code than users
    get (the elemental kernel emitter rounds some pixels' fits differently for different
    lengths). The comparison's tolerance is that of the users' programs, so it runs on them;
    the subprocess inherits the environment (the float64 mode included)."""
    if pyfuncitem.get_closest_marker("users_codegen") is None or (
            os.environ.get("XLA_FLAGS") == USERS_XLA_FLAGS):
        return None
    env = dict(os.environ, XLA_FLAGS=USERS_XLA_FLAGS)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist",
         pyfuncitem.nodeid], cwd=pyfuncitem.config.rootpath, env=env, capture_output=True,
        text=True)
    if result.returncode != 0 or "1 passed" not in result.stdout:
        pytest.fail(f"failed with the users' XLA flags ({USERS_XLA_FLAGS}):\n"
                    f"{result.stdout[-6000:]}{result.stderr[-2000:]}", pytrace=False)
    return True
