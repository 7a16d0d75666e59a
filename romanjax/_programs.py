"""Compiled programs kept on disk between processes, for the ``romanjax`` command.

JAX's persistent compilation cache skips XLA's compile on a second run, but a jitted call
still traces the Python function, lowers it to StableHLO and fingerprints that module to
find the cached program; for the L2 fit of a small file that is most of the fit's time.
Here the compiled executable itself is kept (``jax.experimental.serialize_executable``)
under a key made of everything that decides the program without tracing it:

- the function (module and name) and its static arguments (their ``repr``);
- the structure, shapes, dtypes and weak types of its array arguments;
- the source of romanjax itself (a digest of every module in the package), the versions of
  Python, jax and jaxlib, the JAX settings that change lowering (64-bit mode, default
  matmul precision), ``XLA_FLAGS``, and the device (platform, kind, count) and, on CPUs,
  the processor's instruction-set flags (an executable is compiled for them).

A later call with the same key loads the executable and runs it: no tracing, lowering or
compile. Any change to any of those inputs gives another key and so a fresh compile.

It is off unless a caller turns it on for a block of code (:func:`kept_in`): the command
does so for its own process. Only calls whose array arguments are numpy arrays or
single-device JAX arrays on the default device take it (others run as usual), and it is
best effort: an entry that cannot be read or loaded is compiled again (and replaced), one
that cannot be written is skipped. Entries are written atomically (a temporary file,
then a rename), so concurrent commands never read half an entry. Entries are pickles, as
JAX's own cache entries are: the directory must be the user's own.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pickle
import platform
import sys
import tempfile
from functools import lru_cache
from pathlib import Path

import jax
import numpy as np

__all__ = ["kept_in", "call"]

_directory: Path | None = None
#: Programs loaded or compiled by this process, by key (a second call reads no file).
_programs: dict[str, object] = {}
#: File suffix of the entries (``<key>.exe`` in the cache directory).
SUFFIX = ".exe"


@contextlib.contextmanager
def kept_in(directory):
    """Within the block, :func:`call` keeps compiled programs in ``directory`` (created if
    needed); ``None`` leaves them off."""
    global _directory
    previous = _directory
    _directory = None if directory is None else Path(directory)
    try:
        yield
    finally:
        _directory = previous


def call(function, *args, **static):
    """``function(*args, **static)`` for a ``jax.jit`` function whose keyword arguments are
    all static; with a cache directory set (:func:`kept_in`), through the kept program."""
    key = None if _directory is None else _key(function, args, static)
    if key is None:
        return function(*args, **static)
    program = _programs.get(key)
    if program is None:
        program = _load(_directory / (key + SUFFIX))
    if program is None:
        program = function.lower(*args, **static).compile()
        _store(_directory / (key + SUFFIX), program)
    _programs[key] = program
    return program(*args)


def _key(function, args, static) -> str | None:
    """The entry's name for this call, or None where the call does not take the cache."""
    default = jax.devices()[0]
    leaves, tree = jax.tree_util.tree_flatten(args)
    shapes = []
    for leaf in leaves:
        if isinstance(leaf, jax.core.Tracer):  # under a caller's transformation
            return None
        if isinstance(leaf, jax.Array):
            if leaf.sharding.device_set != {default}:
                return None
        elif not isinstance(leaf, np.ndarray):
            return None
        weak = bool(getattr(leaf, "weak_type", False))
        shapes.append((tuple(leaf.shape), str(leaf.dtype), weak))
    statics = repr(sorted(static.items()))
    if " at 0x" in statics:  # an object's address: not the same key in the next process
        return None
    parts = (
        f"{function.__module__}.{function.__qualname__}", statics, str(tree), repr(shapes),
        _environment(), str(jax.config.jax_enable_x64),
        str(getattr(jax.config, "jax_default_matmul_precision", None)),
        os.environ.get("XLA_FLAGS", ""),
        default.platform, getattr(default, "device_kind", ""), str(jax.device_count()),
    )  # fmt: skip
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


@lru_cache(maxsize=1)
def _environment() -> str:
    """What a process's programs depend on besides the call: romanjax's source, the
    versions of Python, jax and jaxlib, and the processor."""
    digest = hashlib.sha256()
    package = Path(__file__).resolve().parent
    for path in sorted(package.rglob("*.py")):
        digest.update(str(path.relative_to(package)).encode() + b"\0" + path.read_bytes())
    import jaxlib

    return "\0".join((digest.hexdigest(), sys.version, jax.__version__,
                      getattr(jaxlib, "__version__", ""), platform.machine(),
                      _processor_flags()))  # fmt: skip


def _processor_flags() -> str:
    """The processor's instruction-set flags (Linux), which a CPU executable is built for."""
    try:
        with open("/proc/cpuinfo") as lines:
            for line in lines:
                if line.startswith(("flags", "Features")):
                    return line.strip()
    except OSError:
        pass
    return platform.processor()


def _load(path: Path):
    """The program kept at ``path``, or None (no entry, or one that does not load)."""
    try:
        from jax.experimental import serialize_executable

        with open(path, "rb") as stream:
            payload, in_tree, out_tree = pickle.load(stream)
        return serialize_executable.deserialize_and_load(payload, in_tree, out_tree)
    except FileNotFoundError:
        return None
    except Exception:  # noqa: BLE001 - a damaged or foreign entry: compile again, replace it
        return None


def _store(path: Path, program) -> None:
    """Write ``program`` to ``path`` atomically; skipped where it cannot be written."""
    try:
        from jax.experimental import serialize_executable

        entry = pickle.dumps(serialize_executable.serialize(program))
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".", suffix=".tmp")
        try:
            with os.fdopen(handle, "wb") as stream:
                stream.write(entry)
            os.replace(temporary, path)
        except BaseException:
            os.unlink(temporary)
            raise
    except Exception:  # noqa: BLE001 - a cache that cannot be written is no cache
        return
