"""The one place that asks which platform runs, and the CPU-only measures applied from it.

Everything else in romanjax is written for accelerators first. A measure that only pays on a
CPU (host threads per chunk, returning the C heap's free pages, cache-sized chunks) is
applied through the functions here, and only when every device in use is a CPU; on GPUs and
TPUs they return the plain choice.
"""

from __future__ import annotations

import os
import sys

import jax
import numpy as np

__all__ = [
    "all_cpu",
    "usable_cores",
    "host_workers",
    "release_free_heap",
    "chunks_in_flight",
    "chunk_bytes",
    "host_frame_chunk_pixels",
    "start_copy_to_host",
    "HOST_FRAME_MIN_CHUNKS",
    "HOST_FRAME_MIN_CHUNK_PIXELS",
    "CPU_CHUNK_BYTES",
    "DEVICE_MEMORY_FRACTION",
    "by_platform",
    "materialise",
    "optimization_barrier",
    "enable_x64",
    "LOCAL_X64",
    "is_traced",
    "kernel_chunk_pixels",
    "aligned_empty",
    "fits_through_frames",
    "apportions_through_frames",
]

# Names that moved between JAX versions, looked up once here.
try:  # public from JAX 0.4.32; older JAX holds it under a private name
    optimization_barrier = jax.lax.optimization_barrier
except AttributeError:  # pragma: no cover - depends on the installed JAX
    from jax._src.ad_checkpoint import _optimization_barrier as optimization_barrier
try:  # a local 64-bit scope: jax.enable_x64 in newer JAX, under jax.experimental before
    enable_x64 = jax.enable_x64
except AttributeError:  # pragma: no cover - depends on the installed JAX
    from jax.experimental import enable_x64
try:  # the class of traced values: jax.core.Tracer in every JAX so far, whose jax.core
    # namespace is shrinking; its home is the fallback
    _Tracer = jax.core.Tracer
except AttributeError:  # pragma: no cover - depends on the installed JAX
    from jax._src.core import Tracer as _Tracer


def is_traced(value) -> bool:
    """Whether ``value`` is traced (under ``jax.jit``, ``jax.grad``, ``jax.vmap``, ...): its
    value is not known on the host, so host-side checks and host paths do not apply."""
    return isinstance(value, _Tracer)


#: Whether 64-bit values may be used inside a traced program whatever ``JAX_ENABLE_X64``
#: says: JAX's public local scope (``jax.enable_x64``, JAX 0.8 on) holds under jit, vmap and
#: scans; the experimental one of older JAX does not (a 64-bit constant hoisted out of a
#: scan or batched by vmap is cut to 32 bits). The CPUs' two 64-bit measures take it:
#: Philox's products as one uint64 multiply (the same words as the 32-bit halves) and the
#: binomial sampler's float64 ``log k!`` table (the same draws up to the rounding of the
#: log-pmf ratio); older JAX runs the 32-bit forms, as accelerators do.
LOCAL_X64 = hasattr(jax, "enable_x64")

#: Bytes of resultants per chunk when every device is a CPU: the fitters' working set is
#: about 20x the resultants of a chunk and two chunks are in flight, so this bounds a
#: driver's footprint to ~40 chunks' resultants while each chunk's rows still stream
#: through the caches.
CPU_CHUNK_BYTES = 8 * 2**20

#: Fraction of an accelerator's free memory one chunk's resultants may take (the working set
#: is about 20x the resultants and two chunks are in flight).
DEVICE_MEMORY_FRACTION = 1 / 64


def _device_list(devices=None) -> list:
    """``devices`` as a list (default: the local devices; a ``Mesh`` gives its devices)."""
    if devices is None:
        return jax.local_devices()
    if hasattr(devices, "devices"):  # a Mesh
        return list(np.asarray(devices.devices).flat)
    return list(devices)


def all_cpu(devices=None) -> bool:
    """Whether every device of ``devices`` (default: the local devices; a ``Mesh`` is
    accepted) is a CPU."""
    return all(device.platform == "cpu" for device in _device_list(devices))


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS reports one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - macOS, Windows
        return max(1, os.cpu_count() or 1)


def host_workers(devices=None) -> int:
    """Chunks a frame driver computes at once by default: on CPUs one per usable core (XLA
    alone leaves part of the cores idle in the samplers' serial loops), elsewhere 1 (the
    device runs one chunk while the next is transferred)."""
    return usable_cores() if all_cpu(devices) else 1


def chunks_in_flight(devices=None) -> int:
    """Chunks ``fit_frame`` keeps enqueued at once with numpy in and out: on accelerators
    three, so that one chunk's host-to-device copy, another's compute and a third's copy back
    overlap; on CPUs two (the "device" is the host itself, and each chunk in flight holds its
    working set in the same memory)."""
    return 2 if all_cpu(devices) else 3


def release_free_heap(devices=None) -> None:
    """On CPUs under glibc, return the C heap's free pages to the OS (``malloc_trim``): XLA's
    compilation leaves freed scratch memory resident that would otherwise count in a full
    frame's peak. Elsewhere nothing."""
    if not sys.platform.startswith("linux") or not all_cpu(devices):
        return
    try:
        import ctypes

        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def chunk_bytes(devices) -> int:
    """Bytes of resultants one chunk may hold on ``devices``: a fraction of the smallest free
    device memory times the device count on devices that report memory statistics,
    :data:`CPU_CHUNK_BYTES` elsewhere."""
    devices = list(devices)
    free = []
    for device in devices:
        try:
            stats = device.memory_stats()
        except Exception:  # noqa: BLE001 - backends without memory statistics
            stats = None
        if stats and "bytes_limit" in stats:
            free.append(stats["bytes_limit"] - stats.get("bytes_in_use", 0))
    if free and len(free) == len(devices):
        return int(max(min(free), 0) * DEVICE_MEMORY_FRACTION * len(devices))
    return CPU_CHUNK_BYTES


#: On accelerators a host frame (numpy in, numpy out) is cut into at least this many chunks:
#: in one chunk its copy to the device, its fit and the copy back run one after another,
#: while with several the copies of the chunks in flight (:func:`chunks_in_flight`) overlap
#: the fit of another.
HOST_FRAME_MIN_CHUNKS = 8
#: ... into chunks of at least this many pixels per device, below which a chunk's dispatch
#: and kernel launches cost more than overlapping its copies saves.
HOST_FRAME_MIN_CHUNK_PIXELS = 2**18


def host_frame_chunk_pixels(n_pixels: int, devices=None) -> int | None:
    """Most pixels per chunk of a host frame of ``n_pixels`` on ``devices`` (default: the
    local devices; a ``Mesh`` is accepted) for its transfers to overlap the compute:
    ``ceil(n_pixels / HOST_FRAME_MIN_CHUNKS)``, but at least
    :data:`HOST_FRAME_MIN_CHUNK_PIXELS` per device; None on CPUs, where the device is the
    host and there is nothing to transfer (their chunks are sized for the caches instead,
    :func:`chunk_bytes`)."""
    devices = _device_list(devices)
    if all_cpu(devices):
        return None
    return max(-(-n_pixels // HOST_FRAME_MIN_CHUNKS), HOST_FRAME_MIN_CHUNK_PIXELS * len(devices))


def start_copy_to_host(tree, devices=None):
    """Off the CPU, start copying the arrays of ``tree`` to the host as soon as they are
    computed (``jax.Array.copy_to_host_async``), so that one chunk's results travel while
    later chunks compute and the ``np.asarray`` that collects them finds them there; returns
    ``tree``. On CPUs (``devices`` all CPUs; default the local devices, a ``Mesh`` is
    accepted) the arrays are in host memory already: nothing is done."""
    if not all_cpu(devices):
        for leaf in jax.tree_util.tree_leaves(tree):
            copy = getattr(leaf, "copy_to_host_async", None)
            if copy is not None:
                copy()
    return tree


def by_platform(*operands, cpu, default):
    """``cpu(*operands)`` when the program is lowered for a CPU, ``default(*operands)`` for
    any other platform (``lax.platform_dependent``: the choice is made when lowering, so a
    program lowered for one platform holds only that branch). Both must return the same
    shapes and dtypes."""
    return jax.lax.platform_dependent(*operands, cpu=cpu, default=default)


def materialise(tree, flag):
    """Materialise a pytree of intermediate arrays: stop XLA from fusing (and so duplicating)
    the unrolled O(n) recurrences that produced them into every consumer.

    Off the CPU this is ``lax.optimization_barrier``. XLA's CPU compiler expands that barrier
    before fusion, so on CPUs the values instead pass through a ``while_loop`` whose
    condition ``flag`` (a scalar bool that is False at run time but that XLA cannot prove so,
    e.g. ``read_var[0] == -inf``) keeps its body from ever running; a loop result is never
    fused. On a GPU such a loop would cost a device-to-host copy of ``flag``, which is why it
    is only taken on CPUs. The choice is made when lowering (``lax.platform_dependent``).

    The identity for differentiation (a custom JVP passes the tangents through), so it can
    sit on differentiable paths."""
    return _materialise(tree, flag)


@jax.custom_jvp
def _materialise(tree, flag):
    def on_cpu(tree, flag):
        leaves, treedef = jax.tree_util.tree_flatten(tree)

        def body(carry):  # never runs; changes every value so XLA cannot drop the loop
            return carry[0], _changed(carry[1])

        leaves = jax.lax.while_loop(lambda c: c[0], body, (flag, leaves))[1]
        return jax.tree_util.tree_unflatten(treedef, leaves)

    def elsewhere(tree, flag):
        return optimization_barrier(tree)

    return by_platform(tree, flag, cpu=on_cpu, default=elsewhere)


def _changed(leaves):
    """The never-run body of the CPU's materialising loop: each value replaced by another
    (so that no loop result is invariant, which XLA would forward past the loop). Values of
    one shape and dtype are rotated among themselves, which costs no compiled kernel; a value
    with no partner is doubled (negated if bool), one small kernel each. (A body of
    arithmetic on every value compiles one kernel per value, and a materialised recurrence
    of 16 rows carries dozens.)"""
    groups = {}
    for i, x in enumerate(leaves):
        groups.setdefault((x.shape, x.dtype), []).append(i)
    out = list(leaves)
    for members in groups.values():
        if len(members) == 1:
            x = leaves[members[0]]
            out[members[0]] = ~x if x.dtype == bool else x + x
        else:
            for i, j in zip(members, members[1:] + members[:1]):
                out[i] = leaves[j]
    return out


@_materialise.defjvp
def _materialise_jvp(primals, tangents):
    tree, flag = primals
    return _materialise(tree, flag), tangents[0]


def kernel_chunk_pixels(n_resultants: int, itemsize: int) -> int | None:
    """Pixels per chunk in which the array API runs a kernel over a large pixel count, or
    None for one pass over all pixels.

    On CPUs a kernel's intermediates for a whole frame overflow the caches, so the jitted
    array functions loop over chunks holding :data:`CPU_CHUNK_BYTES` of resultants (the
    same size as the frame drivers' chunks). Accelerators keep one pass: their memory
    bandwidth is what the pass needs, and a loop would only serialise the work. Decided
    from the default backend when the function is traced."""
    if jax.default_backend() != "cpu":
        return None
    pixels = CPU_CHUNK_BYTES // (max(n_resultants, 1) * itemsize)
    return max(1024, pixels // 1024 * 1024)


#: Alignment of host arrays that ``jax.device_put`` may wrap without copying on CPUs.
HOST_ALIGNMENT = 64


def aligned_empty(shape, dtype) -> np.ndarray:
    """Uninitialised numpy array whose data starts on a :data:`HOST_ALIGNMENT` boundary. On
    CPUs ``jax.device_put`` wraps such an array without copying it (numpy's own large
    allocations are only 16-byte aligned, and their copy costs a page fault per 4 kB)."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = np.empty(nbytes + HOST_ALIGNMENT, np.uint8)
    offset = -raw.ctypes.data % HOST_ALIGNMENT
    return raw[offset : offset + nbytes].view(dtype).reshape(shape)


def fits_through_frames(resultants, n_resultants: int, *others) -> bool:
    """Whether an array-API fit of host data runs through the frame driver: on CPUs, for
    a float numpy ``resultants [n_resultants, *pixels]`` of more pixels than one chunk,
    when no argument is being traced.

    The driver moves the resultants to the device chunk by chunk (buffers the allocator
    recycles) and writes the results into aligned host arrays that become device arrays
    without a copy, instead of one copy of the whole frame into fresh pages; on
    accelerators the plain path already streams the frame through device memory."""
    if not isinstance(resultants, np.ndarray) or resultants.dtype.kind != "f":
        return False
    if resultants.ndim < 2 or resultants.shape[0] != n_resultants:
        return False
    if any(is_traced(value) for value in others):
        return False
    if not all_cpu():
        return False
    itemsize = jax.dtypes.canonicalize_dtype(resultants.dtype).itemsize
    chunk = kernel_chunk_pixels(n_resultants, itemsize)
    return chunk is not None and resultants.size // max(n_resultants, 1) > chunk


def apportions_through_frames(key, counts, n_resultants: int) -> bool:
    """Whether ``apportion_counts`` of host data runs through ``apportion_frame``: on CPUs,
    for numpy ``counts`` of more pixels than one kernel chunk, with a concrete ``key``.

    The frame driver computes one chunk per core (XLA alone leaves part of the cores idle
    in the samplers' loops); its draws are those of one call on the whole frame, so this
    only changes the schedule."""
    if not isinstance(counts, np.ndarray) or is_traced(key):
        return False
    if not all_cpu():
        return False
    chunk = kernel_chunk_pixels(n_resultants, 4)
    return chunk is not None and counts.size > chunk
