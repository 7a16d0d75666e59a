"""Many exposures on many machines: a ``dask.distributed`` map of :func:`fit_frame`, and how to
use JAX's own multi-process runtime.

romanjax does not ship a scheduler; two existing engines cover the cases.

dask.distributed (CPU clusters, many exposure files)
----------------------------------------------------
:func:`fit_exposures` submits one task per exposure to a ``dask.distributed`` ``Client``.
Each worker loads its exposure (``loader``), runs :func:`romanjax.fit_frame` on the devices it
sees, and either returns the :class:`RampFit` or hands it to ``writer`` on the worker (so
large results never travel back to the client). Install with ``pip install romanjax[dask]``.
One JAX computation per worker process is the efficient layout: start workers with
``nthreads=1`` (XLA already uses all cores of a CPU worker) or one worker per GPU
(``CUDA_VISIBLE_DEVICES`` per worker).

>>> from dask.distributed import Client, LocalCluster             # doctest: +SKIP
>>> client = Client(LocalCluster(n_workers=2, threads_per_worker=1))  # doctest: +SKIP
>>> fits = fit_exposures(client, ["a.npy", "b.npy"], pattern, 5.0,
...                      method="casertano", detect_jumps=True)  # doctest: +SKIP

jax.distributed (accelerator clusters)
--------------------------------------
On a multi-host GPU/TPU system start one process per host (or per GPU) with the same script
and call ``jax.distributed.initialize()`` first (arguments are auto-detected under SLURM,
Open MPI and on Cloud TPU; otherwise pass ``coordinator_address``, ``num_processes`` and
``process_id``). Every process then sees ``jax.local_devices()`` (its own) and
``jax.devices()`` (all). Exposures are independent, so the simplest correct scheme is data
parallel over processes with no cross-host communication at all::

    import jax, romanjax
    from romanjax.host.distributed import process_shard
    jax.distributed.initialize()
    for path in process_shard(all_exposure_paths):     # this process's share
        resultants = load(path)                        # numpy, host memory
        fit = romanjax.fit_frame(resultants, pattern, read_noise)  # local devices
        save(path, fit)

:func:`romanjax.fit_frame` shards each chunk over ``jax.local_devices()`` by default, which is
what each process should use; its numpy-in/numpy-out contract is per process. (A ``Mesh``
spanning several processes needs globally sharded inputs built with
``jax.make_array_from_process_local_data`` and is not what ``fit_frame`` takes; fitting is
embarrassingly parallel, so nothing is gained from it.)
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import numpy as np

__all__ = ["fit_exposures", "load_exposure", "process_shard"]


def process_shard(items: Sequence, process_index: int | None = None,
                  process_count: int | None = None) -> list:  # fmt: skip
    """This process's share of ``items`` under ``jax.distributed``: every
    ``process_count``-th item starting at ``process_index`` (defaults from
    ``jax.process_index()`` / ``jax.process_count()``, i.e. all items in a single process).
    """
    if process_index is None or process_count is None:
        import jax

        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    if not 0 <= process_index < process_count:
        raise ValueError(
            f"process_shard: `process_index` {process_index} not in [0, {process_count})"
        )
    return list(items)[process_index::process_count]


def load_exposure(item):
    """Default ``loader``: ``(resultants, dq)`` from an array, a ``(resultants, dq)`` pair, a
    ``.npy`` file (memory-mapped, read chunk by chunk by :func:`fit_frame`) or a ``.npz`` file
    with arrays ``resultants`` and optionally ``dq``. Resultants in electrons [e]."""
    if isinstance(item, tuple) and len(item) == 2:
        return item
    if isinstance(item, (str, os.PathLike)):
        path = os.fspath(item)
        if path.endswith(".npy"):
            return np.load(path, mmap_mode="r"), None
        if path.endswith(".npz"):
            with np.load(path) as data:
                return data["resultants"], (data["dq"] if "dq" in data else None)
        raise ValueError(f"load_exposure: cannot read {path!r}; pass `loader=` for this file type")
    return np.asarray(item), None


def _fit_one(item, pattern, read_noise, method, loader, writer, fit_kwargs):
    from .frames import fit_frame

    resultants, dq = loader(item)
    fit = fit_frame(resultants, pattern, read_noise, method=method, dq=dq, **fit_kwargs)
    return fit if writer is None else writer(item, fit)


def fit_exposures(client, exposures: Sequence, pattern, read_noise, *, method="casertano",
                  loader: Callable = load_exposure, writer: Callable | None = None,
                  gather: bool = True, **fit_kwargs):  # fmt: skip
    """Fit many exposures on a ``dask.distributed`` cluster, one task per exposure.

    Parameters
    ----------
    client : dask.distributed.Client
    exposures : sequence
        Anything ``loader`` understands: ``.npy``/``.npz`` paths, arrays
        ``[n_resultant, *pixels]`` [e], ``(resultants, dq)`` pairs. Paths are cheapest: the
        data are read on the worker.
    pattern : ReadPattern
        Read pattern shared by all exposures.
    read_noise : float or array broadcasting to ``[*pixels]``
        Read noise of one read [e].
    method : str or callable
        As :func:`romanjax.fit_frame`.
    loader : callable ``item -> (resultants, dq or None)``
        Runs on the worker. Default :func:`load_exposure`.
    writer : callable ``(item, RampFit) -> object``, optional
        Runs on the worker; its return value (e.g. the output path) replaces the fit in the
        results, so large fits need not travel back to the client.
    gather : bool
        True: wait and return the results in the order of ``exposures``; False: return the
        dask futures.
    **fit_kwargs
        Passed to :func:`romanjax.fit_frame` (``chunk_pixels``, ``detect_jumps``, ...).

    Returns
    -------
    list
        One :class:`RampFit` (numpy arrays) or ``writer`` result per exposure, or futures.

    Raises
    ------
    ImportError
        If dask.distributed is not installed (``pip install romanjax[dask]``).
    """
    try:
        import distributed  # noqa: F401
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(
            "fit_exposures needs dask.distributed: pip install 'romanjax[dask]'"
        ) from error
    futures = [
        client.submit(
            _fit_one, item, pattern, read_noise, method, loader, writer, fit_kwargs, pure=False
        )  # fmt: skip
        for item in exposures
    ]
    return client.gather(futures) if gather else futures
