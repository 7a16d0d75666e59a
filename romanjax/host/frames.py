"""Full frames in bounded memory: chunked, device-sharded execution of the array API.

The array functions (``fit_ramps_*``, ``apportion_counts``, ``simulate_l1``) take the whole
``[n_resultant, *pixels]`` array at once, which for a 4088 x 4088 detector with many
resultants, or for many detectors, does not fit in accelerator memory. The drivers here are
host-side: numpy in, numpy out (or device arrays in, device arrays out). They

1. view the pixels as one flat axis (no copy for C-contiguous input) and cut it into chunks
   of a fixed number of pixels (default sized from the number of resultants and the device
   memory, see :func:`default_chunk_pixels`);
2. pad the last chunk to the same size (so there is exactly one compilation) and to a
   multiple of the device count, and place each chunk on all local devices with a
   :class:`jax.sharding.NamedSharding` over a 1-D mesh (or the given ``Mesh``) split along
   pixels;
3. rely on JAX's asynchronous dispatch to overlap work: the next chunks are transferred and
   enqueued before the results of chunk ``i`` are pulled back to the host (two chunks in
   flight on CPUs, three on accelerators, from :mod:`romanjax._platform`; the simulation
   drivers on a CPU instead compute one chunk per core at once, each from a host thread of
   its own: XLA alone leaves part of the cores idle in the samplers' loops);
4. copy each chunk's results into preallocated host arrays. Every array of a
   :class:`~romanjax.RampFit` has the pixels last, so a chunk's results are copied into
   ``out[..., start:stop]`` of ordinary C-contiguous arrays, whatever the fitter.

Ramp fits are pixel-independent, so :func:`fit_frame` returns what the fitter returns on the
whole array: flags bit for bit, floats to the last bit or two (XLA's CPU code generation depends
on the array length, so a chunk may round its last bit differently; seen: 1 ulp in float64).
The apportionment's random numbers are keyed by each pixel's index in the frame, so
:func:`apportion_frame` returns what one :func:`~romanjax.apportion_counts` call on the whole
frame returns. :func:`simulate_frame` runs :func:`~romanjax.simulate_l1` on blocks of whole
rows, each told where it sits in the frame (``frame_shape``, ``first_pixel``): its pixel
draws are keyed by the pixel's frame index and its cosmic rays drawn for the whole frame, so
it returns what one call on the whole frame returns, whatever the chunk and block sizes and
the number of devices.
"""

from __future__ import annotations

import inspect
import math
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache, partial
from importlib import import_module
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from .. import _platform
from .._read_pattern import ReadPattern
from .._validate import check_pixel_shape, check_values

if TYPE_CHECKING:
    from ..l1._simulate import L1
    from ..ramp._common import RampFit

__all__ = [
    "fit_frame",
    "simulate_frame",
    "apportion_frame",
    "default_chunk_pixels",
    "FITTERS",
    "DEFAULT_CPU_CHUNK_BYTES",
    "DEFAULT_RNG_BLOCK",
    "fit_on_device",
]

#: ``method`` name -> (module, function) of the ramp fitters, imported on first use: the
#: array-API fitters' one-pass path (the public functions send large host frames on CPUs
#: here, see :func:`fit_on_device`).
FITTERS = {
    "optimal": ("romanjax.ramp._optimal", "_fit_ramps_optimal"),
    "casertano": ("romanjax.ramp._casertano", "_fit_ramps_casertano"),
    "likely": ("romanjax.ramp._likely", "_fit_ramps_likely"),
}

#: Frames of at least this many bytes of resultants return the C heap's free pages to the
#: OS after their first chunk on CPUs (:func:`romanjax._platform.release_free_heap`), which
#: keeps compilation scratch out of a full frame's peak memory.
LARGE_FRAME_BYTES = 256 * 2**20

#: Bytes of resultants per chunk on CPUs (see :mod:`romanjax._platform`).
DEFAULT_CPU_CHUNK_BYTES = _platform.CPU_CHUNK_BYTES

#: Pixels per random-number block of the block-keyed frame driver, for simulators that do not
#: take their place in the frame (block ``b`` uses ``jax.random.fold_in(key, b)``).
#: :func:`simulate_frame` takes its place, so its blocks are a chunk's share of each device,
#: by default at least this many pixels.
DEFAULT_RNG_BLOCK = 2**20

# --------------------------------------------------------------------------------------------
# host-side helpers
# --------------------------------------------------------------------------------------------


def _resolve_fitter(method):
    if callable(method):
        return method
    if not isinstance(method, str) or method not in FITTERS:
        raise ValueError(
            f"fit_frame: unknown `method` {method!r}; choose one of {sorted(FITTERS)} "
            "or pass a fitter function"
        )
    module, name = FITTERS[method]
    return getattr(import_module(module), name)


def _mesh_and_spec(mesh, function: str):
    """The mesh to shard over and the tuple of its axis names (all axes split pixels)."""
    if mesh is None:
        mesh = jax.sharding.Mesh(np.array(jax.local_devices()), ("pixels",))
    elif not isinstance(mesh, jax.sharding.Mesh):
        raise TypeError(
            f"{function}: `mesh` must be a jax.sharding.Mesh or None, got {type(mesh).__name__}"
        )
    return mesh, tuple(mesh.axis_names)


def default_chunk_pixels(n_resultants: int, itemsize: int = 4, devices=None) -> int:
    """Default number of pixels per chunk for ``n_resultants`` resultants of ``itemsize`` bytes.

    On devices that report memory statistics (GPUs, TPUs) one chunk's resultants take
    1/64 of the smallest free device memory per device; elsewhere (CPU) the chunk holds
    :data:`DEFAULT_CPU_CHUNK_BYTES` of resultants. Rounded down to a multiple of
    1024 x the device count (at least one such multiple).

    Parameters
    ----------
    n_resultants : int
    itemsize : int
        Bytes per resultant value (4 for float32, 8 for float64).
    devices : sequence of jax.Device, optional
        Devices a chunk is sharded over; default ``jax.local_devices()``.
    """
    devices = list(jax.local_devices() if devices is None else devices)
    budget = _platform.chunk_bytes(devices)
    unit = 1024 * len(devices)
    pixels = int(budget // (max(n_resultants, 1) * itemsize))
    return max(unit, pixels // unit * unit)


def balanced_chunk_pixels(n_pixels: int, largest: int, unit: int) -> int:
    """Chunk length for ``n_pixels`` in as few chunks of at most ``largest`` pixels as
    possible, made equal and rounded up to a multiple of ``unit`` (itself at most
    ``largest``): the padding of the last chunk is then under ``unit`` pixels per chunk
    instead of up to a whole chunk (1024**2 pixels in chunks of 232448 used to pad to
    5 x 232448 = 1.11 x the frame; balanced, 5 x 209920 = 1.001 x)."""
    count = max(1, -(-n_pixels // largest))
    per_chunk = -(-n_pixels // count)
    return min(-(-per_chunk // unit) * unit, max(largest, unit))


def _chunk_size(chunk_pixels, n_pixels, n_resultants, itemsize, n_shards, function,
                mesh=None):  # fmt: skip
    """Fixed chunk length: a multiple of ``n_shards``, no longer than the padded frame. The
    default is :func:`default_chunk_pixels` at most, balanced over the chunks; for a host
    frame on accelerators (``mesh`` given) also at most
    :func:`romanjax._platform.host_frame_chunk_pixels`, so that its transfers overlap the
    compute."""
    if chunk_pixels is None:
        largest = default_chunk_pixels(n_resultants, itemsize)
        unit = 1024 * n_shards
        if mesh is not None:
            overlap = _platform.host_frame_chunk_pixels(n_pixels, mesh)
            if overlap is not None:  # a whole number of units, as every chunk
                largest = min(largest, -(-overlap // unit) * unit)
        chunk = balanced_chunk_pixels(n_pixels, largest, unit)
    else:
        if isinstance(chunk_pixels, bool) or int(chunk_pixels) != chunk_pixels or chunk_pixels < 1:
            raise ValueError(
                f"{function}: `chunk_pixels` must be a positive integer, got {chunk_pixels!r}"
            )
        chunk = int(chunk_pixels)
    chunk = max(min(chunk, max(n_pixels, 1)), 1)
    return -(-chunk // n_shards) * n_shards


@partial(jax.jit, static_argnames=("length",))
def _device_window(array, start, length):
    """``array[..., start:start + length]`` with ``start`` traced: one program for every
    chunk of a frame (a slice at a static start is a program of its own per chunk)."""
    return jax.lax.dynamic_slice_in_dim(array, start, length, axis=array.ndim - 1)


def _flat_slice(array, lead: int, start: int, stop: int) -> np.ndarray:
    """``array.reshape(*array.shape[:lead], -1)[..., start:stop]`` without copying the
    whole array when it is not C-contiguous (e.g. a broadcast view): only the slab of the
    first pixel axis that holds the range is reshaped. Device arrays are sliced on the
    device; pass them flat already (a reshape of a device array is a copy of all of it, one
    per chunk)."""
    if isinstance(array, jax.Array):
        flat = array.reshape(array.shape[:lead] + (-1,))  # the array itself when flat
        return _device_window(flat, np.int32(start), length=stop - start)
    pixels = array.shape[lead:]
    if len(pixels) <= 1:
        return array.reshape(array.shape[:lead] + (-1,))[..., start:stop]
    if array.flags.c_contiguous:
        return array.reshape(array.shape[:lead] + (-1,))[..., start:stop]
    rest = math.prod(pixels[1:])
    first, last = start // rest, -(-stop // rest)
    index = (slice(None),) * lead + (slice(first, last),)
    slab = np.reshape(array[index], array.shape[:lead] + (-1,))
    return slab[..., start - first * rest : stop - first * rest]


def _pad_last(array: np.ndarray, length: int) -> np.ndarray:
    """Pad the last axis to ``length`` by repeating its last value (a valid pixel)."""
    missing = length - array.shape[-1]
    if missing == 0:
        return array
    widths = [(0, 0)] * (array.ndim - 1) + [(0, missing)]
    xp = jnp if isinstance(array, jax.Array) else np
    return xp.pad(array, widths, mode="edge" if array.shape[-1] else "constant")


def _per_pixel(name, value, pixels, function, xp=np):
    """Broadcast a per-pixel input to ``pixels`` (a view for numpy) or raise naming it."""
    check_pixel_shape(function, name, value, pixels)
    return xp.broadcast_to(xp.asarray(value), pixels)


def _is_pixel_array(value) -> bool:
    return isinstance(value, (np.ndarray, jax.Array)) and np.ndim(value) > 0


def _simulation_workers(workers, mesh, function) -> int:
    """Chunks :func:`_simulate_frame` computes at once (validated ``workers``, or the default:
    the usable cores when every device of ``mesh`` is a CPU, else 1)."""
    if workers is None:
        return _platform.host_workers(mesh)
    if isinstance(workers, bool) or not isinstance(workers, (int, np.integer)) or workers < 1:
        raise ValueError(f"{function}: `workers` must be a positive integer, got {workers!r}")
    return int(workers)


def _run_chunks(starts, submit, collect, *, workers, on_host, bar, after_first=None,
                in_flight=2):  # fmt: skip
    """Drive the chunks: ``submit(start) -> job`` enqueues one (device work),
    ``collect(job)`` stores its results on the host (main thread, in order).

    ``workers == 1``: up to ``in_flight`` chunks are enqueued before the oldest is collected
    (JAX's asynchronous dispatch overlaps their transfers and compute). Otherwise
    ``workers`` threads each run ``on_host(submit(start))`` (the chunk computed and copied
    to numpy) at once, with one more chunk queued; XLA's CPU runtime alone leaves part of
    the cores idle in the kernels' serial loops and in the host copies. ``after_first()``
    runs once the first chunk is collected."""
    def done(job):
        collect(job)
        if job[0] == 0 and after_first is not None:
            after_first()
        if bar is not None:
            bar.update(job[1] - job[0])

    if workers == 1:
        pending = deque()
        for start in starts:
            pending.append(submit(start))  # enqueue chunk i + in_flight - 1 ...
            if len(pending) >= max(in_flight, 1):
                done(pending.popleft())  # ... before pulling chunk i back
        while pending:
            done(pending.popleft())
        return
    # The first chunk is submitted (compiled and enqueued) on the calling thread before any
    # worker starts, so the program is compiled once, not by several workers at once.
    starts = iter(starts)
    first = next(starts, None)
    if first is None:
        return
    first_job = submit(first)
    with ThreadPoolExecutor(workers, thread_name_prefix="romanjax-chunk") as pool:
        futures = deque([pool.submit(on_host, first_job)])
        try:
            for start in starts:
                futures.append(pool.submit(lambda start: on_host(submit(start)), start))
                if len(futures) > workers:  # one queued behind the running ones
                    done(futures.popleft().result())
            while futures:
                done(futures.popleft().result())
        finally:
            for future in futures:  # after an error: do not start the queued ones
                future.cancel()


def _progress_bar(progress, total, description):
    if not progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="pix", unit_scale=True, desc=description)


# --------------------------------------------------------------------------------------------
# fit_frame
# --------------------------------------------------------------------------------------------


def fit_frame(resultants: ArrayLike, pattern: ReadPattern, read_noise: ArrayLike, *,
              method: str | Callable = "casertano", dq: ArrayLike | None = None,
              chunk_pixels: int | None = None, mesh: jax.sharding.Mesh | None = None,
              progress: bool = False, **fit_kwargs) -> RampFit:  # fmt: skip
    """Fit the ramps of a whole frame (or stack of frames) in chunks of bounded memory.

    Numpy in, numpy out; device arrays (``jax.Array``) in, device arrays out (the chunks
    are then sliced and joined on the device, never copied to the host). The pixels are
    processed in chunks of ``chunk_pixels``; each chunk is
    sharded over all local devices (or ``mesh``) and fitted with the fitter named by
    ``method``; the next chunks are enqueued before chunk ``i`` is copied back (three in
    flight on accelerators, two on CPUs), so host transfers overlap device work (on
    accelerators each chunk's results start their copy to the host as soon as they are
    computed, ``jax.Array.copy_to_host_async``). The result
    is identical to calling the fitter on the whole array (flags bit for bit;
    floating-point values to within a few ulp, see the module notes).

    Parameters
    ----------
    resultants : array ``[n_resultant, *pixels]``
        Resultants [e], any number of pixel dimensions. float32 or float64 (float64 is kept
        only with x64 enabled, as for the fitters). A C-contiguous array is never copied
        whole; a numpy memmap is read chunk by chunk.
    pattern : ReadPattern
        Static read pattern.
    read_noise : float or array broadcasting to ``[*pixels]``
        Read noise of one read [e].
    method : {"casertano", "optimal", "likely"} or callable
        The fitter: :func:`fit_ramps_casertano`, :func:`fit_ramps_optimal` or
        :func:`fit_ramps_likely`; or any function with their signature
        ``f(resultants, pattern, read_noise, *, dq=..., **fit_kwargs) -> RampFit``.
    dq : array broadcasting to ``[n_resultant, *pixels]``, optional
        Resultant dq flags (uint32). Passed to the fitter only when given.
    chunk_pixels : int, optional
        Pixels per chunk (rounded up to a multiple of the device count). Default: at most
        :func:`default_chunk_pixels` (8 MB of resultants on CPU, 1/64 of free device
        memory per device on accelerators), the frame split into equal chunks of a multiple
        of 1024 pixels per device so that the last one carries little padding. On
        accelerators a numpy frame is cut into at least eight chunks (of at least 2**18
        pixels per device, :func:`romanjax._platform.host_frame_chunk_pixels`), so that
        the copies of some overlap the fits of others; a device frame is not cut further.
    mesh : jax.sharding.Mesh, optional
        Devices to shard each chunk over (the pixel axis is split over all mesh axes).
        Default: a 1-D mesh of ``jax.local_devices()``.
    progress : bool
        Show a tqdm progress bar (pixels done) on stderr.
    **fit_kwargs
        Passed to the fitter. numpy/JAX arrays with at least one dimension (e.g. a per-pixel
        ``flux_estimate`` [e/s]) must broadcast to ``[*pixels]`` and are chunked like the
        pixels; everything else (thresholds, ``detect_jumps``, ``grid``) is passed as is.

    Returns
    -------
    RampFit
        The fitter's result with C-contiguous numpy arrays (``slope``, the variances and
        the packed ``flags`` with the pixels last, as the fitter returns them; ``par``,
        ``var`` and ``dq`` are computed from them on access).

    Raises
    ------
    ValueError
        Unknown ``method``; ``resultants`` without the pattern's resultants on axis 0;
        ``dq``, ``read_noise`` or a per-pixel keyword that does not broadcast;
        ``chunk_pixels`` not a positive integer.

    Examples
    --------
    >>> import numpy as np, romanjax
    >>> pattern = romanjax.ReadPattern.from_ma_table(4)
    >>> ramps = np.outer(pattern.tbar, np.full(6, 10.0)).reshape(9, 2, 3).astype(np.float32)
    >>> fit = romanjax.fit_frame(ramps, pattern, 5.0, method="optimal", chunk_pixels=4)
    >>> fit.slope.shape, bool(np.allclose(fit.slope, 10.0))
    ((2, 3), True)
    """
    function = "fit_frame"
    fitter = _resolve_fitter(method)
    if fit_kwargs.get("return_jump_amplitudes"):
        raise ValueError(
            "fit_frame: `return_jump_amplitudes` is not supported (the result is one RampFit); "
            "call romanjax.fit_ramps_likely for the jump amplitudes"
        )
    if not isinstance(pattern, ReadPattern):
        raise TypeError(
            f"{function}: `pattern` must be a romanjax.ReadPattern, got {type(pattern).__name__}"
        )
    # device arrays in: chunks are sliced on the device and the results stay there
    on_device = isinstance(resultants, jax.Array) and not _platform.is_traced(resultants)
    xp = jnp if on_device else np
    if not on_device and not isinstance(resultants, np.ndarray):
        resultants = np.asarray(resultants)
    if resultants.ndim < 1 or resultants.shape[0] != pattern.n_resultants:
        raise ValueError(
            f"{function}: `resultants` of shape {resultants.shape} must have the read "
            f"pattern's {pattern.n_resultants} resultants on axis 0"
        )
    n = pattern.n_resultants
    pixels = resultants.shape[1:]
    n_pixels = math.prod(pixels)
    if dq is not None:
        try:
            dq = xp.broadcast_to(xp.asarray(dq), resultants.shape)
        except ValueError:
            raise ValueError(
                f"{function}: `dq` of shape {np.shape(dq)} does not broadcast against "
                f"`resultants` of shape {resultants.shape}"
            ) from None
    check_values(function, "read_noise", read_noise, minimum=0)  # host data: on the host
    pixel_kwargs = {"read_noise": read_noise} if _is_pixel_array(read_noise) else {}
    pixel_kwargs.update({k: v for k, v in fit_kwargs.items() if _is_pixel_array(v)})
    pixel_kwargs = {k: _per_pixel(k, v, pixels, function, xp) for k, v in pixel_kwargs.items()}
    static_kwargs = {k: v for k, v in fit_kwargs.items() if k not in pixel_kwargs}
    if not pixels:  # a single ramp: one pixel
        resultants = resultants.reshape(n, 1)
        dq = None if dq is None else dq.reshape(n, 1)
        pixel_kwargs = {k: v.reshape(1) for k, v in pixel_kwargs.items()}
    elif on_device:  # flat once: each reshape of a device array copies all of it
        resultants = resultants.reshape(n, -1)
        dq = None if dq is None else dq.reshape(n, -1)
        pixel_kwargs = {k: v.reshape(-1) for k, v in pixel_kwargs.items()}

    mesh, axes = _mesh_and_spec(mesh, function)
    n_shards = mesh.size
    itemsize = 8 if resultants.dtype == np.float64 and jax.config.jax_enable_x64 else 4
    large = not on_device and resultants.nbytes >= LARGE_FRAME_BYTES
    chunk = _chunk_size(chunk_pixels, n_pixels, n, itemsize, n_shards, function,
                        mesh=None if on_device else mesh)  # fmt: skip
    ramp_sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(None, axes))
    pixel_sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(axes))
    chunk_noise = read_noise
    if "read_noise" not in pixel_kwargs and np.ndim(read_noise) == 0:
        # one chunk-sized array for every chunk: the fitter would otherwise broadcast the
        # scalar again for each chunk (an eager device write on the main thread)
        try:
            value = float(read_noise)
        except (TypeError, ValueError):
            pass  # not a number: the fitter reports it
        else:
            dtype = resultants.dtype if resultants.dtype.kind == "f" else np.float32
            dtype = jax.dtypes.canonicalize_dtype(dtype)  # float64 only with x64
            chunk_noise = jax.device_put(np.full(chunk, value, dtype), pixel_sharding)

    def submit(start):
        stop = min(start + chunk, n_pixels)
        ramps = _pad_last(_flat_slice(resultants, 1, start, stop), chunk)
        kwargs = dict(static_kwargs)
        if not on_device and method in ("optimal", "casertano"):
            # host data, checked here chunk by chunk: the fitter skips its in-program check
            # (as a direct call on host data does)
            kwargs["checked_on_host"] = True
        if dq is not None:
            kwargs["dq"] = jax.device_put(
                _pad_last(_flat_slice(dq, 1, start, stop), chunk), ramp_sharding
            )
        elif not on_device and ramps.dtype.kind == "f" and not np.isfinite(ramps).all():
            # NaN or inf in this chunk of host data: the masked fit leaves them out, as a
            # direct call on host data does
            kwargs["dq"] = jax.device_put(np.zeros(ramps.shape, np.uint32), ramp_sharding)
        for name, value in pixel_kwargs.items():
            kwargs[name] = jax.device_put(
                _pad_last(_flat_slice(value, 0, start, stop), chunk), pixel_sharding
            )
        noise = kwargs.pop("read_noise", chunk_noise)
        fit = fitter(jax.device_put(ramps, ramp_sharding), pattern, noise, **kwargs)
        if not on_device:  # numpy out: the copy back starts when the fit is done
            _platform.start_copy_to_host(fit, mesh)
        return start, stop, fit

    outputs = []  # [treedef, *leaves]: every leaf of a RampFit is [..., pixels], pixel-minor

    def collect(job):
        start, stop, fit = job
        leaves, treedef = jax.tree_util.tree_flatten(fit)
        if not outputs:
            outputs.append(treedef)
            for leaf in leaves:
                shape = leaf.shape[:-1] + (n_pixels,)
                outputs.append([] if on_device else _platform.aligned_empty(shape, leaf.dtype))
        for target, leaf in zip(outputs[1:], leaves, strict=True):
            if on_device:  # the chunk's part, joined on the device at the end
                target.append(leaf[..., : stop - start])
            else:
                target[..., start:stop] = np.asarray(leaf)[..., : stop - start]

    def after_first():
        if large:
            _platform.release_free_heap(mesh)

    bar = _progress_bar(progress, n_pixels, f"fit_frame[{getattr(method, '__name__', method)}]")
    try:
        # chunks i + 1, ... enqueued before chunk i is copied back
        _run_chunks(range(0, max(n_pixels, 1), chunk), submit, collect, workers=1,
                    on_host=None, bar=bar, after_first=after_first,
                    in_flight=_platform.chunks_in_flight(mesh))  # fmt: skip
    finally:
        if bar is not None:
            bar.close()
    treedef, leaves = outputs[0], outputs[1:]
    if on_device:
        leaves = [jnp.concatenate(parts, axis=-1) for parts in leaves]
    return jax.tree_util.tree_unflatten(
        treedef, [leaf.reshape(leaf.shape[:-1] + pixels) for leaf in leaves]
    )


def fit_on_device(method, resultants, pattern, read_noise, **kwargs):
    """:func:`fit_frame` for the array API's host-data path on CPUs
    (:func:`romanjax._platform.fits_through_frames`): the same fit, returned as device
    arrays that wrap the driver's aligned host outputs without a copy."""
    fit = fit_frame(resultants, pattern, read_noise, method=method, **kwargs)
    return jax.tree_util.tree_map(jax.device_put, fit)


# --------------------------------------------------------------------------------------------
# simulate_frame / apportion_frame
# --------------------------------------------------------------------------------------------

_SIMULATORS = {
    "apportion_counts": ("romanjax.l1._apportion", "apportion_counts"),
    "simulate_l1": ("romanjax.l1._simulate", "simulate_l1"),
}

#: simulate_l1 keywords that couple neighbouring pixels, which a flat-pixel chunking breaks.
_NONLOCAL = ("ipc",)


def _simulator(name):
    module, attr = _SIMULATORS[name]
    return getattr(import_module(module), attr)


def _takes_frame_position(simulator) -> bool:
    """Whether ``simulator`` draws the random numbers of a part of a frame itself, given the
    frame's shape and the part's first pixel (``frame_shape``, ``first_pixel``: as
    :func:`romanjax.simulate_l1`)."""
    parameters = inspect.signature(simulator).parameters
    return "frame_shape" in parameters and "first_pixel" in parameters


def _block_simulator(simulator, pattern, static_items, pixel_names, block_shape, shardings,
                     frame_shape=None):
    """A jitted ``(key, block_ids[m], counts[m, B], *per_pixel[m, B], stacked, shared) ->
    leaves [n, m*B]`` that runs ``simulator`` on each block, reshaped to ``block_shape``
    (cached when the static keywords are hashable): with ``frame_shape``, as the part of
    that frame starting at pixel ``block_id * B`` under ``key``
    (:func:`_takes_frame_position`); without, with key ``fold_in(key, block_id)``.
    ``stacked``: a dict of keyword pytrees whose leaves are ``[m, k, B]`` (a leading axis
    before the pixels, such as a persistence state), passed block by block as
    ``[k, *block_shape]``; ``shared``: a dict of traced keywords passed to every block
    as they are (a start time)."""
    try:
        return _cached_block_simulator(
            simulator, pattern, static_items, pixel_names, block_shape, shardings, frame_shape
        )
    except TypeError:  # unhashable keyword values (e.g. a dict of cosmic-ray parameters)
        return _cached_block_simulator.__wrapped__(
            simulator, pattern, static_items, pixel_names, block_shape, shardings, frame_shape
        )


@lru_cache(maxsize=32)
def _cached_block_simulator(simulator, pattern, static_items, pixel_names, block_shape,
                            shardings, frame_shape):  # fmt: skip
    static = dict(static_items)
    block_size = math.prod(block_shape)

    def one_block(key, shared, block_id, counts, stacked, *per_pixel):
        per_pixel = [value.reshape(block_shape) for value in per_pixel]
        stacked = jax.tree_util.tree_map(
            lambda leaf: leaf.reshape(leaf.shape[:1] + block_shape), stacked)
        kwargs = dict(static, **dict(zip(pixel_names, per_pixel, strict=True)), **stacked,
                      **shared)  # fmt: skip
        if frame_shape is None:
            out = simulator(
                jax.random.fold_in(key, block_id), counts.reshape(block_shape), pattern,
                **kwargs)
        else:
            first = block_id.astype(jnp.int32) * block_size
            out = simulator(key, counts.reshape(block_shape), pattern,
                            frame_shape=frame_shape, first_pixel=first, **kwargs)
        return jax.tree_util.tree_map(lambda leaf: leaf.reshape(leaf.shape[:1] + (-1,)), out)

    def run(key, block_ids, counts, stacked, shared, *per_pixel):
        # blocks one after the other (lax.map, not vmap): under vmap the binomial sampler's
        # runtime branches (all means small / mixed / all large) and its rejection loops
        # would become selects that evaluate every branch for every block
        out = jax.lax.map(lambda args: one_block(key, shared, *args),
                          (block_ids, counts, stacked, *per_pixel))  # fmt: skip

        def merge(leaf):  # [m, k, B] -> [k, m * B]
            leaf = jnp.moveaxis(leaf, 0, 1)
            return leaf.reshape(leaf.shape[:1] + (-1,))

        return jax.tree_util.tree_map(merge, out)

    in_shardings, out_sharding = shardings
    return jax.jit(run, in_shardings=in_shardings, out_shardings=out_sharding)


def _simulate_frame(simulator, function, key, counts, pattern, *, chunk_pixels, mesh, progress,
                    rng_block, kwargs, workers=None):  # fmt: skip
    """The block driver behind :func:`simulate_frame` (blocks told their place in the frame
    when the simulator takes it, :func:`_takes_frame_position`, else keyed by block):
    ``simulator(key, counts[*pixels], pattern, **kwargs)`` returns a pytree of
    ``[k, *pixels]`` arrays (``[n_resultant, *pixels]`` resultants, a ``[n_events, *pixels]``
    persistence state); ``function`` names the caller in errors."""
    name = getattr(simulator, "__name__", "the simulator")
    if not isinstance(pattern, ReadPattern):
        raise TypeError(
            f"{function}: `pattern` must be a romanjax.ReadPattern, got {type(pattern).__name__}"
        )
    for bad in _NONLOCAL:
        if kwargs.get(bad) is not None:
            raise ValueError(
                f"{function}: `{bad}` couples neighbouring pixels and cannot be applied per "
                f"chunk of pixels; call {name} on the whole frame (or rows) instead"
            )
    frame_keyed = _takes_frame_position(simulator)
    if rng_block is None and not frame_keyed:
        rng_block = DEFAULT_RNG_BLOCK
    if rng_block is not None:
        if isinstance(rng_block, bool) or int(rng_block) != rng_block or rng_block < 1:
            raise ValueError(
                f"{function}: `rng_block` must be a positive integer, got {rng_block!r}")
        rng_block = int(rng_block)
    counts = np.asarray(counts)
    pixels = counts.shape
    n_pixels = math.prod(pixels)
    n = pattern.n_resultants
    all_kwargs = kwargs
    stacked, shared, kwargs = _split_carried(function, kwargs, pixels)
    pixel_names = tuple(k for k, v in kwargs.items() if _is_pixel_array(v))
    per_pixel = [_per_pixel(k, kwargs[k], pixels, function).reshape(-1) for k in pixel_names]
    static_items = tuple(sorted((k, v) for k, v in kwargs.items() if k not in pixel_names))
    flat_counts = counts.reshape(-1)

    mesh, axes = _mesh_and_spec(mesh, function)
    n_shards = mesh.size
    default_chunk = chunk_pixels is None
    if default_chunk:
        chunk_pixels = default_chunk_pixels(n, 4)
    chunk = _chunk_size(chunk_pixels, n_pixels, n, 4, 1, function)
    workers = _simulation_workers(workers, mesh, function)
    one_per_device = rng_block is None
    if one_per_device:  # a simulator keyed by frame position: one block per device and chunk
        if default_chunk:
            # at least DEFAULT_RNG_BLOCK pixels per device: a part's cosmic rays cost a
            # margin of track slots whatever its size (cosmic_ray_part_cap); then at least
            # one chunk per worker
            chunk = max(chunk, DEFAULT_RNG_BLOCK * n_shards)
            if workers > 1:
                chunk = min(chunk, -(-n_pixels // workers))
        rng_block = -(-chunk // n_shards)
    # 2-D and larger frames: blocks of whole rows of the first axis (images stay images)
    if len(pixels) >= 2:
        row = math.prod(pixels[1:])
        rows = (-(-rng_block // max(row, 1)) if one_per_device  # whole rows, rounded up
                else rng_block // max(row, 1))  # fmt: skip
        rows = min(max(1, rows), max(pixels[0], 1))
        block_shape, rng_block = (rows,) + pixels[1:], rows * row
    else:
        rng_block = min(rng_block, max(n_pixels, 1))
        block_shape = (rng_block,)
    rng_block = max(rng_block, 1)

    # a chunk is a whole number of blocks, and of blocks per shard
    blocks_per_chunk = max(1, -(-chunk // rng_block))
    blocks_per_chunk = -(-blocks_per_chunk // n_shards) * n_shards
    n_blocks = max(1, -(-n_pixels // rng_block))
    blocks_per_chunk = min(blocks_per_chunk, -(-n_blocks // n_shards) * n_shards)
    if default_chunk and workers > 1:  # at least one chunk per worker where blocks allow
        per_worker = -(-n_blocks // workers)
        blocks_per_chunk = min(blocks_per_chunk, -(-per_worker // n_shards) * n_shards)
    chunk = blocks_per_chunk * rng_block

    spec = jax.sharding.PartitionSpec
    block_sharding = jax.sharding.NamedSharding(mesh, spec(axes, None))
    ids_sharding = jax.sharding.NamedSharding(mesh, spec(axes))
    replicated = jax.sharding.NamedSharding(mesh, spec())
    out_sharding = jax.sharding.NamedSharding(mesh, spec(None, axes))
    stacked_sharding = jax.sharding.NamedSharding(mesh, spec(axes, None, None))
    in_shardings = ((replicated, ids_sharding, block_sharding, stacked_sharding, replicated)
                    + (block_sharding,) * len(per_pixel))  # fmt: skip
    run = _block_simulator(
        simulator, pattern, static_items, pixel_names, block_shape, (in_shardings, out_sharding),
        pixels if frame_keyed else None,
    )

    def blocks(array, start, stop):
        return _pad_last(array[start:stop], chunk).reshape(blocks_per_chunk, rng_block)

    def stacked_blocks(array, start, stop):  # [k, n_pixels] -> [m, k, B]
        part = _pad_last(array[:, start:stop], chunk)
        return np.moveaxis(part.reshape(part.shape[0], blocks_per_chunk, rng_block), 1, 0)

    def submit(start):
        stop = min(start + chunk, n_pixels)
        first = start // rng_block
        ids = np.arange(first, first + blocks_per_chunk, dtype=np.uint32)
        chunk_stacked = jax.tree_util.tree_map(lambda a: stacked_blocks(a, start, stop), stacked)
        out = run(key, ids, blocks(flat_counts, start, stop), chunk_stacked, shared,
                  *[blocks(value, start, stop) for value in per_pixel])  # fmt: skip
        return start, stop, out

    outputs = []

    def collect(job):
        start, stop, out = job
        leaves, treedef = jax.tree_util.tree_flatten(out)
        leaves = [np.asarray(leaf) for leaf in leaves]
        if not outputs:
            outputs.append(treedef)
            outputs.extend(np.zeros((leaf.shape[0], n_pixels), leaf.dtype) for leaf in leaves)
        for target, leaf in zip(outputs[1:], leaves, strict=True):
            part = leaf[:, : stop - start]
            if part.any():
                target[:, start:stop] = part

    def on_host(job):  # in a worker thread: the chunk computed and copied to numpy
        start, stop, out = job
        return start, stop, jax.tree_util.tree_map(np.asarray, out)

    bar = _progress_bar(progress, n_pixels, function)
    try:
        _run_chunks(range(0, n_pixels, chunk), submit, collect, workers=workers,
                    on_host=on_host, bar=bar)  # fmt: skip
    finally:
        if bar is not None:
            bar.close()
    if not outputs:  # empty frame: nothing to chunk
        out = simulator(key, counts, pattern, **all_kwargs)
        return jax.tree_util.tree_map(np.asarray, out)
    treedef, leaves = outputs[0], outputs[1:]
    return jax.tree_util.tree_unflatten(
        treedef, [leaf.reshape(leaf.shape[:1] + pixels) for leaf in leaves])


#: simulate_l1 keywords with a leading axis before the pixels (``[k, *pixels]`` leaves),
#: cut into blocks along the pixels like the per-pixel arrays.
_STACKED = ("persistence",)
#: simulate_l1 keywords passed to every block as traced values (not static: a new value,
#: e.g. the next exposure's start time, does not recompile).
_SHARED = ("start_time",)


def _split_carried(function, kwargs, pixels):
    """``(stacked, shared, rest)`` of the simulator keywords: ``stacked`` holds the
    :data:`_STACKED` ones as host arrays with the pixels flattened (``[k, n_pixels]``
    leaves), ``shared`` the :data:`_SHARED` ones as arrays, ``rest`` everything else.
    A persistence state must be a ``PersistenceState`` over ``pixels``; the simulator checks
    the rest."""
    stacked, shared, rest = {}, {}, {}
    for name, value in kwargs.items():
        if name in _STACKED and value is not None:
            from ..l1._persistence import PersistenceState, _check_state

            if isinstance(value, PersistenceState):  # on the host from here on
                value = PersistenceState(*(np.asarray(leaf) for leaf in value))
            _check_state(function, value, name)  # the type, one shape, finite values
            leaves = list(value)
            if any(leaf.shape[1:] != pixels for leaf in leaves):
                raise ValueError(f"{function}: `{name}` holds arrays of shapes "
                                 f"{[leaf.shape for leaf in leaves]}, not [n_events, *pixels] "
                                 f"with pixels {pixels} of `counts`")  # fmt: skip
            stacked[name] = PersistenceState(
                *(leaf.reshape(leaf.shape[:1] + (-1,)) for leaf in leaves))
        elif name in _SHARED and value is not None:
            if np.ndim(value) != 0:
                raise ValueError(f"{function}: `{name}` must be a scalar, got shape "
                                 f"{np.shape(value)}")  # fmt: skip
            if not isinstance(value, jax.Array) and not np.isfinite(np.asarray(value, float)):
                raise ValueError(f"{function}: `{name}` must be finite, got {value!r}")
            shared[name] = value if isinstance(value, jax.Array) else np.asarray(value)
        else:
            rest[name] = value
    return stacked, shared, rest


def _shard_map(function, **kwargs):
    """``shard_map`` of any supported JAX, with its replication check off (the kernels'
    loops carry per-device values that start as constants, which the check rejects)."""
    import inspect

    try:  # JAX >= 0.6 exports shard_map at the top level
        shard_map = jax.shard_map
    except AttributeError:  # pragma: no cover - depends on the installed JAX
        from jax.experimental.shard_map import shard_map
    parameters = inspect.signature(shard_map).parameters
    check = "check_vma" if "check_vma" in parameters else "check_rep"
    return shard_map(function, **kwargs, **{check: False})


@lru_cache(maxsize=32)
def _apportion_program(pattern, dtype, mesh):
    """Jitted ``(key, counts [chunk], start) -> resultants [n, chunk]`` over ``mesh``: each
    device apportions its run of the chunk with the global pixel indices of that run, so
    the draws are those of one call on the whole frame."""
    from ..l1._apportion import _apportion

    axes = tuple(mesh.axis_names)
    spec = jax.sharding.PartitionSpec

    def local(key, counts, start):
        first = start + jax.lax.axis_index(axes).astype(jnp.uint32) * jnp.uint32(counts.shape[0])
        return _apportion(key, counts, pattern, dtype, first)

    return jax.jit(_shard_map(local, mesh=mesh, in_specs=(spec(), spec(axes), spec()),
                              out_specs=spec(None, axes)))


def apportion_frame(key: jax.Array, counts: ArrayLike, pattern: ReadPattern, *,
                    chunk_pixels: int | None = None, mesh: jax.sharding.Mesh | None = None,
                    progress: bool = False, rng_block: int | None = None,
                    workers: int | None = None) -> np.ndarray | jax.Array:  # fmt: skip
    """:func:`apportion_counts` over a whole frame in chunks of bounded memory: the same
    resultants as one ``apportion_counts(key, counts, pattern)`` call.

    Every pixel draws from random streams keyed by its index in the flattened frame
    (:mod:`romanjax.kernels.binomial`), so a chunk of pixels draws exactly what the whole
    frame would, whatever ``chunk_pixels``, ``workers`` or the devices of ``mesh``. A chunk
    is one program: its pixels are split evenly over the devices.

    Parameters
    ----------
    key : jax.random key
    counts : array ``[*pixels]``
        Integer total counts per pixel at the end of the exposure [e], as
        :func:`apportion_counts` takes them (checked on the host for host data).
    pattern : ReadPattern
    chunk_pixels : int, optional
        Pixels per chunk (rounded up to a multiple of the device count); default
        :func:`default_chunk_pixels`, made smaller where that gives each of ``workers`` a
        chunk, and for numpy counts on accelerators at most
        :func:`romanjax._platform.host_frame_chunk_pixels` (at least eight chunks, so that
        transfers overlap the compute).
    mesh : jax.sharding.Mesh, optional
        Devices to shard over; default all local devices.
    progress : bool
        tqdm progress bar on stderr.
    rng_block : None
        Deprecated and ignored: the draws no longer come in blocks (a ``FutureWarning``
        when given).
    workers : int, optional
        Chunks computed at once, each from a host thread of its own (the result does not
        depend on it). Default: on CPU devices the cores this process may use (XLA alone
        leaves part of them idle in the samplers' loops), elsewhere 1 (chunk ``i + 1`` is
        enqueued while chunk ``i`` is copied back). Each running chunk holds its own working
        set, ~0.7 GB per 2**20 pixels.

    Returns
    -------
    ``[n_resultant, *pixels]`` resultants [e]: numpy for numpy ``counts``, a device array
    for a ``jax.Array`` (the chunks stay on the device).

    Raises
    ------
    ValueError
        Invalid ``counts`` (as :func:`apportion_counts`), 2**32 - 1 pixels or more, bad
        ``chunk_pixels`` or ``workers``.
    """
    from .._validate import check_pattern, float_dtype
    from ..l1._apportion import check_counts

    if rng_block is not None:
        import warnings

        warnings.warn("apportion_frame: `rng_block` is deprecated and has no effect (each "
                      "pixel's draws are keyed by its index in the frame)", FutureWarning,
                      stacklevel=2)
    check_pattern(pattern, "apportion_frame")
    on_device = isinstance(counts, jax.Array)
    if not on_device:
        counts = check_counts(np.asarray(counts), "apportion_frame")
    dtype = float_dtype(counts)
    pixels = tuple(counts.shape)
    n_pixels = math.prod(pixels)
    n = pattern.n_resultants
    if n_pixels == 0:  # nothing to chunk
        out = _simulator("apportion_counts")(key, counts, pattern)
        return out if on_device else np.asarray(out)
    mesh, _ = _mesh_and_spec(mesh, "apportion_frame")
    n_shards = mesh.size
    workers = _simulation_workers(workers, mesh, "apportion_frame")
    default_chunk = chunk_pixels is None
    chunk = _chunk_size(chunk_pixels, n_pixels, n, 4, n_shards, "apportion_frame",
                        mesh=None if on_device else mesh)  # fmt: skip
    if default_chunk and workers > 1:  # a whole number of equal chunks per worker
        unit = 1024 * n_shards
        n_chunks = -(-max(-(-n_pixels // chunk), 1) // workers) * workers
        per_chunk = -(-n_pixels // n_chunks)
        chunk = min(chunk, -(-per_chunk // unit) * unit)
    if n_pixels + chunk > 2**32 - 1:  # element indices below 2**32 - 1 (kernels.rng)
        raise ValueError(f"apportion_frame: at most 2**32 - 1 pixels per frame (with the "
                         f"last chunk's padding), got {n_pixels}")
    run = _apportion_program(pattern, dtype, mesh)
    flat = counts.reshape(-1)

    def submit(start):
        stop = min(start + chunk, n_pixels)
        out = run(key, _pad_last(_flat_slice(flat, 0, start, stop), chunk), np.uint32(start))
        if not on_device:  # numpy out: the copy back starts when the chunk is done
            _platform.start_copy_to_host(out, mesh)
        return start, stop, out

    outputs = []

    def collect(job):
        start, stop, out = job
        if on_device:
            outputs.append(out[:, : stop - start])
            return
        if not outputs:  # aligned: the array API wraps it as a device array without a copy
            outputs.append(_platform.aligned_empty((n, n_pixels), out.dtype))
        outputs[0][:, start:stop] = np.asarray(out)[:, : stop - start]

    def on_host(job):  # in a worker thread: the chunk computed and copied to numpy
        start, stop, out = job
        return start, stop, np.asarray(out)

    bar = _progress_bar(progress, n_pixels, "apportion_frame")
    try:
        _run_chunks(range(0, n_pixels, chunk), submit, collect,
                    workers=1 if on_device else workers, on_host=on_host, bar=bar,
                    in_flight=_platform.chunks_in_flight(mesh))  # fmt: skip
    finally:
        if bar is not None:
            bar.close()
    if on_device:
        return jnp.concatenate(outputs, axis=1).reshape((n,) + pixels)
    return outputs[0].reshape((n,) + pixels)


def simulate_frame(key: jax.Array, counts: ArrayLike, pattern: ReadPattern, *,
                   chunk_pixels: int | None = None, mesh: jax.sharding.Mesh | None = None,
                   progress: bool = False, rng_block: int | None = None,
                   workers: int | None = None, **kwargs) -> L1 | tuple:  # fmt: skip
    """:func:`simulate_l1` over a whole frame in chunks of bounded memory.

    Numpy in, numpy out, in blocks of rows: for 2-D (and higher) ``counts`` whole rows of the
    first axis, ``max(1, rng_block // row_length)`` rows per block (at most all rows); for
    1-D ``counts`` runs of ``min(rng_block, size)`` pixels; by default one block per device
    and chunk, so each device runs one elementwise program per chunk. Block ``b`` of ``B``
    pixels (the last one zero-padded to full size) is ``simulate_l1(key, counts_block, pattern,
    frame_shape=counts.shape, first_pixel=b * B, **kwargs)``: its random numbers are those
    of the whole frame at its pixels (cosmic-ray tracks drawn for the whole frame cross
    block edges unbroken), so the result is ``simulate_l1(key, counts, pattern, **kwargs)``
    on the whole frame, whatever ``chunk_pixels``, ``rng_block``, ``workers`` or the
    devices.

    Parameters
    ----------
    key : jax.random key
    counts : array ``[*pixels]``
        Integer total counts per pixel [e].
    pattern : ReadPattern
    chunk_pixels, mesh, progress, workers
        As :func:`apportion_frame` (chunks are rounded up to whole blocks per device), but
        the default chunks of a numpy frame are not cut smaller on accelerators (a part's
        cosmic rays cost a margin of track slots whatever its size).
    rng_block : int or None
        Approximate pixels per block (default: a chunk's share of each device): the unit of
        one simulate_l1 call within a chunk. The values do not depend on it.
    **kwargs
        Passed to :func:`simulate_l1` (``read_noise`` [DN], ``gain`` [e/DN], ``pedestal``
        [e], ...). numpy/JAX arrays with at least one dimension must broadcast to
        ``[*pixels]`` and are chunked with the pixels; other values must be hashable.
        Effects that couple neighbouring pixels (``ipc``) are refused. ``persistence`` (a
        :class:`~romanjax.PersistenceState` over the whole frame, ``[n_events, *pixels]``)
        is cut into the same blocks as the pixels, and ``start_time`` is passed to every
        block as a traced value (a new start time does not recompile). The persistence
        electrons are keyed by pixel, like every other effect.

    Returns
    -------
    L1
        ``resultants`` and ``dq``, numpy ``[n_resultant, *pixels]``.
    tuple
        With ``reference_read=True`` or ``persistence``: as :func:`simulate_l1`,
        ``(l1, reference_read, new_state)`` without the items not asked for, all numpy over
        the whole frame (the reference read ``[*pixels]``, the state of the input state's
        shape).

    Raises
    ------
    ValueError
        ``ipc`` given; a per-pixel keyword that does not broadcast; a ``persistence`` state
        whose pixels are not those of ``counts``; bad ``chunk_pixels``, ``rng_block`` or
        ``workers``.
    """
    decay = kwargs.get("dark_decay")
    if isinstance(decay, dict) and ("detector" in decay or "sca" in decay):
        # the detector form's `origin` is one window: not worked out per block
        raise ValueError(
            "simulate_frame: give the pixels' read times of `dark_decay` as "
            "`read_time_offsets` (romanjax.frame_read_times), not by its detector"
        )
    reference = bool(kwargs.get("reference_read", False))
    out = _simulate_frame(
        _simulate_l1_reference_plane if reference else _simulator("simulate_l1"),
        "simulate_frame", key, counts, pattern, chunk_pixels=chunk_pixels, mesh=mesh,
        progress=progress, rng_block=rng_block, kwargs=kwargs, workers=workers,
    )  # fmt: skip
    if reference:
        out = (out[0], out[1][0]) + tuple(out[2:])
    return out


def _simulate_l1_reference_plane(key, counts, pattern, frame_shape=None, first_pixel=0,
                                 **kwargs):  # fmt: skip
    """simulate_l1 with its ``[*pixels]`` reference read as a ``[1, *pixels]`` plane, so
    that every output of a block has one axis before the pixels (the frame driver's
    layout); :func:`simulate_frame` takes the plane off again."""
    out = _simulator("simulate_l1")(key, counts, pattern, frame_shape=frame_shape,
                                    first_pixel=first_pixel, **kwargs)  # fmt: skip
    return (out[0], out[1][None]) + tuple(out[2:])


_simulate_l1_reference_plane.__name__ = "simulate_l1"  # the name errors give users
