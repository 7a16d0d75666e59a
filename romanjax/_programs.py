"""Compiled programs kept on disk between processes, for the ``romanjax`` command.

JAX's persistent compilation cache skips XLA's compile on a second run, but a jitted call
still traces the Python function, lowers it to StableHLO and fingerprints that module to
find the cached program; for the L2 fit of a small file that is most of the fit's time.
Here the compiled executable itself is kept (``jax.experimental.serialize_executable``)
under a key made of everything that decides the program without tracing it:

- the function: its module and name, and the source of the module that defines it (for
  romanjax's own functions, a digest of every module of the package, which also covers
  what they call); functions with a closure or bound arguments (``functools.partial``)
  never take the cache, since what they hold is not in the key;
- its static arguments (type and ``repr`` of every value);
- the structure, shapes, dtypes and weak types of its array arguments (the values are
  the program's inputs, not part of it);
- the versions of Python, numpy, jax, jaxlib and romanjax, the JAX settings that change
  tracing (64-bit mode, default matmul precision, NaN checks, promotion rules),
  ``XLA_FLAGS``, and the device (platform and its version, kind, count) and the
  processor's instruction-set flags (a CPU executable is compiled for them).

A later call with the same key loads the executable and runs it: no tracing, lowering or
compile. Any change to any of those inputs gives another key and so a fresh compile.

It is off unless a caller turns it on for a block of code (:func:`kept_in`): the command
does so for its own process. Only calls whose array arguments are Python or numpy scalars,
numpy arrays or single-device JAX arrays on the default device take it (others run as
usual), and it is best effort: an entry that cannot be read or loaded, or whose program
fails, is compiled again (and replaced); one that cannot be written is skipped. Entries
are written atomically (a temporary file, then a rename), so concurrent commands never
read half an entry, readable by their owner only; the folder keeps the :data:`KEEP` most
recently used (an entry holds the whole executable: 2 MB for a small L2 fit, 12 MB for an
L1 simulation, whose ``log k!`` table is a constant of the program).
An entry is a pickle, and loading a pickle can run code: the folder must be the user's own.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
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

from . import _platform

__all__ = ["kept_in", "call"]

_directory: contextvars.ContextVar[Path | None] = contextvars.ContextVar(
    "romanjax_programs", default=None)
#: Programs loaded or compiled by this process, by key (a second call reads no file).
_programs: dict[str, object] = {}
#: File suffix of the entries (``<key>.exe`` in the cache directory).
SUFFIX = ".exe"
#: Entries kept in the folder; writing one more removes the least recently used.
KEEP = 16


@contextlib.contextmanager
def kept_in(directory):
    """Within the block (in this thread or task), :func:`call` keeps compiled programs in
    ``directory`` (created when the first is written); ``None`` leaves them off."""
    token = _directory.set(None if directory is None else Path(directory))
    try:
        yield
    finally:
        _directory.reset(token)


def call(function, *args, **static):
    """``function(*args, **static)`` for a ``jax.jit`` function whose keyword arguments are
    all static; with a cache directory set (:func:`kept_in`), through the kept program."""
    directory = _directory.get()
    key = None
    if directory is not None:
        try:
            key = _key(function, args, static)
        except Exception:  # noqa: BLE001 - a call the key cannot describe runs as usual
            key = None
    if key is None:
        return function(*args, **static)
    path = directory / (key + SUFFIX)
    program = _programs.get(key)
    if program is None:
        program = _load(path)
    if program is not None:
        try:
            result = program(*args)
        except Exception:  # noqa: BLE001 - a foreign or damaged program: compile again
            program = None
        else:
            _programs[key] = program
            return result
    program = function.lower(*args, **static).compile()
    _store(path, program)
    _programs[key] = program
    return program(*args)


def _key(function, args, static) -> str | None:
    """The entry's name for this call, or None where the call does not take the cache."""
    source = _function_source(function)
    if source is None:
        return None
    default = jax.devices()[0]
    leaves, tree = jax.tree_util.tree_flatten(args)
    shapes = []
    for leaf in leaves:
        if _platform.is_traced(leaf):  # under a caller's transformation
            return None
        if type(leaf) in (bool, int, float, complex):  # a weakly typed argument
            shapes.append(((), type(leaf).__name__, True))
            continue
        if isinstance(leaf, jax.Array):
            if leaf.sharding.device_set != {default}:
                return None
        elif not isinstance(leaf, (np.ndarray, np.generic)):
            return None
        weak = bool(getattr(leaf, "weak_type", False))
        shapes.append((tuple(leaf.shape), str(leaf.dtype), weak))
    statics = _describe(dict(static))
    if " at 0x" in statics:  # an object's address: not the same key in the next process
        return None
    settings = [str(getattr(jax.config, name, None)) for name in (
        "jax_enable_x64", "jax_default_matmul_precision", "jax_debug_nans", "jax_debug_infs",
        "jax_numpy_rank_promotion", "jax_numpy_dtype_promotion")]  # fmt: skip
    parts = (
        f"{function.__module__}.{function.__qualname__}", source, statics, str(tree),
        repr(shapes), _environment(), *settings, os.environ.get("XLA_FLAGS", ""),
        default.platform, str(getattr(default.client, "platform_version", "")),
        str(getattr(default, "device_kind", "")), str(jax.device_count()),
    )  # fmt: skip
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


def _function_source(function) -> str | None:
    """A digest of the source that defines ``function`` (a jitted function defined at the
    top level of a module): romanjax's own (:func:`_package_digest`) or that of its module's
    file; None for closures, bound arguments and functions without a source file."""
    inner = getattr(function, "__wrapped__", None)
    if inner is None or isinstance(inner, functools.partial) or \
            getattr(inner, "__closure__", None) or "<locals>" in function.__qualname__:
        return None  # fmt: skip
    module = sys.modules.get(function.__module__)
    if function.__module__.split(".")[0] == __name__.split(".")[0]:
        return _package_digest()
    path = getattr(module, "__file__", None)
    if not path or not path.endswith(".py"):
        return None
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _describe(value) -> str:
    """Type and ``repr`` of a static value, through tuples, lists and dicts (a
    ``numpy.float64`` and a ``float`` of the same ``repr`` trace differently)."""
    if isinstance(value, (tuple, list)):
        inner = ", ".join(_describe(v) for v in value)
        return f"{type(value).__qualname__}[{inner}]"
    if isinstance(value, dict):
        items = sorted((repr(k), _describe(v)) for k, v in value.items())
        return "dict{" + ", ".join(f"{k}: {v}" for k, v in items) + "}"
    kind = type(value)
    return f"{kind.__module__}.{kind.__qualname__}:{value!r}"


@lru_cache(maxsize=1)
def _package_digest() -> str | None:
    """A digest of the source of every romanjax module, or None where the package has no
    source files to read (then the key could not see a change of romanjax)."""
    digest = hashlib.sha256()
    package = Path(__file__).resolve().parent
    paths = sorted(package.rglob("*.py"))
    if not paths:
        return None
    for path in paths:
        digest.update(str(path.relative_to(package)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


@lru_cache(maxsize=1)
def _environment() -> str:
    """What a process's programs depend on besides the call: the versions of Python,
    numpy, jax, jaxlib and romanjax, and the processor."""
    import importlib.metadata

    import jaxlib

    try:
        version = importlib.metadata.version("romanjax")
    except importlib.metadata.PackageNotFoundError:
        version = ""
    return "\0".join((sys.version, np.__version__, jax.__version__,
                      getattr(jaxlib, "__version__", ""), version, platform.machine(),
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
        program = serialize_executable.deserialize_and_load(payload, in_tree, out_tree)
        os.utime(path)  # recently used
        return program
    except FileNotFoundError:
        return None
    except Exception:  # noqa: BLE001 - a damaged or foreign entry: compile again, replace it
        return None


def _store(path: Path, program) -> None:
    """Write ``program`` to ``path`` atomically, then keep the :data:`KEEP` most recently
    used entries; skipped where it cannot be written."""
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
        entries = sorted(path.parent.glob("*" + SUFFIX), key=lambda p: p.stat().st_mtime)
        for old in entries[:-KEEP]:
            old.unlink(missing_ok=True)
    except Exception:  # noqa: BLE001 - a cache that cannot be written is no cache
        return
