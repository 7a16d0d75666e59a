"""The dask.distributed path (a local two-worker cluster) and the jax.distributed helper."""

from __future__ import annotations

import numpy as np
import pytest

import romanjax
from romanjax.host.distributed import fit_exposures, load_exposure, process_shard

MA4 = romanjax.ReadPattern.from_ma_table(4)


def ramps(seed, pixels=(20, 30)):
    rng = np.random.default_rng(seed)
    flux = rng.uniform(0, 300, pixels)
    tbar = MA4.tbar.reshape(-1, 1, 1)
    return (flux * tbar + rng.normal(0, 5, (9,) + pixels)).astype(np.float32)


def test_process_shard():
    items = list(range(10))
    shards = [process_shard(items, i, 3) for i in range(3)]
    assert shards == [[0, 3, 6, 9], [1, 4, 7], [2, 5, 8]]
    assert process_shard(items) == items  # a single JAX process takes everything
    with pytest.raises(ValueError, match="`process_index`"):
        process_shard(items, 3, 3)


def test_load_exposure(tmp_path):
    data = ramps(0)
    np.save(tmp_path / "a.npy", data)
    dq = np.zeros(data.shape, np.uint32)
    np.savez(tmp_path / "b.npz", resultants=data, dq=dq)
    loaded, none = load_exposure(tmp_path / "a.npy")
    assert isinstance(loaded, np.memmap) and none is None
    np.testing.assert_array_equal(loaded, data)
    loaded, loaded_dq = load_exposure(str(tmp_path / "b.npz"))
    np.testing.assert_array_equal(loaded, data)
    np.testing.assert_array_equal(loaded_dq, dq)
    with pytest.raises(ValueError, match="loader"):
        load_exposure(tmp_path / "c.fits")


def test_fit_exposures_on_local_cluster(tmp_path):
    distributed = pytest.importorskip("distributed")
    exposures = [ramps(seed) for seed in range(3)]
    paths = []
    for i, data in enumerate(exposures):
        np.save(tmp_path / f"exposure{i}.npy", data)
        paths.append(str(tmp_path / f"exposure{i}.npy"))
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster:  # fmt: skip
        with distributed.Client(cluster) as client:
            assert len(client.scheduler_info()["workers"]) == 2
            fits = fit_exposures(client, paths, MA4, 5.0, method="optimal", chunk_pixels=256)
            # arrays travel too; a writer runs on the worker and its result comes back
            written = fit_exposures(
                client, exposures[:2], MA4, 5.0, method="optimal",
                writer=lambda item, fit: float(fit.slope.mean()),
            )  # fmt: skip
            futures = fit_exposures(client, paths[:1], MA4, 5.0, method="optimal", gather=False)
            assert futures[0].result().par.shape == (20, 30, 2)
    assert len(fits) == 3
    for data, fit in zip(exposures, fits, strict=True):
        direct = romanjax.fit_ramps_optimal(data, MA4, 5.0)
        # chunks of another length may round the last bit differently (XLA's vectorised
        # body vs remainder, FMA contraction): floats to 4 ulp, flags exactly
        for name in ("par", "var", "dq"):
            got = getattr(fit, name)
            assert isinstance(got, np.ndarray)
            if name == "dq":
                np.testing.assert_array_equal(got, np.asarray(direct.dq))
            else:
                np.testing.assert_array_max_ulp(got, np.asarray(getattr(direct, name)), maxulp=4)
    for data, mean in zip(exposures[:2], written, strict=True):
        np.testing.assert_allclose(
            mean,
            float(np.asarray(romanjax.fit_ramps_optimal(data, MA4, 5.0).slope).mean()),
            rtol=1e-6,
        )
