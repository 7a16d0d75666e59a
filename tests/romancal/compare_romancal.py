"""Compare ``romanjax fit`` (default options) with romancal's default ramp fit.

Standalone script, run in a separate environment holding romancal 1.1 and a non-editable
romanjax (see README.md in this folder); pytest does not collect it (conftest.py).

1. ``romanjax simulate`` writes a Roman L1 (ScienceRawModel) of a small scene with cosmic
   rays (``--size``, default 256 science pixels a side; MA table 4).
2. Reference files are made with roman_datamodels' ``create_fake_data`` (CRDS is not used):
   gain 2 e/DN, read noise 5 DN, saturation 55000 DN, an empty mask, sized to the L1 with its
   4-pixel border.
3. romancal: DQInitStep -> SaturationStep -> RampFitStep (defaults: ``likely`` fitter with
   jump detection), with ``override_*`` reference files only.
4. ``romanjax fit L1 --saturation-file`` (the same saturation reference file), otherwise
   default options (gain and read noise from the L1's extras).
5. Compared: fraction of pixels where |slope_romanjax - slope_romancal| > 3 * err_romancal,
   and the fraction of pixels whose L2 JUMP_DET bit agrees. Exits 1 when
   beyond-3-sigma >= 0.5% or JUMP_DET agreement < 99%.

Optionally (``--romanisim``) the same comparison on an L1 written by romanisim's
``romanisim.l1`` from the same scene's counts.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

# CRDS is never needed (every reference file is an override), and must not reach a server
os.environ.setdefault("CRDS_PATH", "/tmp/crds_cache")
os.environ.setdefault("CRDS_SERVER_URL", "https://crds-offline.invalid")
os.environ.setdefault("CRDS_MODE", "local")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np  # noqa: E402

GAIN, READ_NOISE, SATURATION = 2.0, 5.0, 55000.0
NBORDER = 4
MAX_BEYOND_3SIGMA, MIN_JUMP_AGREEMENT = 0.005, 0.99
JUMP_DET, DO_NOT_USE, SATURATED = 4, 1, 2


SERVER_CONFIG_STUB = (
    "{'observatory': 'roman', 'force_remote_mode': False, "
    "'operational_context': 'roman_0000.pmap', 'edit_context': 'roman_0000.pmap', "
    "'last_synced': 'never (offline stub)', 'bad_files_list': [], 'bad_files': '', "
    "'reference_url': {}, 'mapping_url': {}, 'crds_version': {}}\n"
)


def offline_crds():
    """Every step here gets its reference files as overrides, but stpipe's ``finalize_result``
    still asks CRDS for the context used (``crds_client.get_context_used``), and CRDS with no
    server and no cached server configuration calls ``sys.exit(-1)`` ("CRDS server connection
    and cache load FAILED"). A stub ``config/roman/server_config`` in ``CRDS_PATH`` (written
    only when none is there) lets it answer offline (context ``roman_0000.pmap``)."""
    path = Path(os.environ["CRDS_PATH"]) / "config" / "roman" / "server_config"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(SERVER_CONFIG_STUB)
    return path


def romanjax_cli(argv):
    from romanjax.host import cli

    status = cli.main(argv)
    if status != 0:
        raise SystemExit(f"romanjax {' '.join(map(str, argv))} failed with status {status}")


def make_references(folder: Path, shape):
    """Gain, read noise, saturation and mask reference files of ``shape`` (border included)."""
    from roman_datamodels import datamodels as dm

    folder.mkdir(parents=True, exist_ok=True)
    values = {
        "gain": (dm.GainRefModel, {"data": np.full(shape, GAIN, np.float32)}),
        "readnoise": (dm.ReadnoiseRefModel, {"data": np.full(shape, READ_NOISE, np.float32)}),
        "saturation": (dm.SaturationRefModel, {"data": np.full(shape, SATURATION, np.float32),
                                               "dq": np.zeros(shape, np.uint32)}),
        "mask": (dm.MaskRefModel, {"dq": np.zeros(shape, np.uint32)}),
    }
    paths = {}
    for kind, (model_class, arrays) in values.items():
        model = model_class.create_fake_data(shape=shape)
        for name, value in arrays.items():
            setattr(model, name, value)
        model.meta.instrument.detector = "WFI07"
        path = folder / f"{kind}.asdf"
        model.save(path)
        paths[kind] = path
    return paths


def run_romancal(l1_path: Path, refs, output: Path):
    from romancal.dq_init import DQInitStep
    from romancal.ramp_fitting import RampFitStep
    from romancal.saturation import SaturationStep

    model = DQInitStep(override_mask=str(refs["mask"])).run(str(l1_path))
    model = SaturationStep(override_saturation=str(refs["saturation"])).run(model)
    model = RampFitStep(override_gain=str(refs["gain"]),
                        override_readnoise=str(refs["readnoise"])).run(model)
    model.save(output)
    return output


def compare(label, romanjax_l2: Path, romancal_l2: Path):
    import roman_datamodels as rdm

    with rdm.open(romanjax_l2) as ours, rdm.open(romancal_l2) as theirs:
        slope_j, slope_c = np.asarray(ours.data, float), np.asarray(theirs.data, float)
        err_c = np.asarray(theirs.err, float)
        dq_j, dq_c = np.asarray(ours.dq, np.uint32), np.asarray(theirs.dq, np.uint32)
    n = slope_c.size
    both_finite = np.isfinite(slope_j) & np.isfinite(slope_c) & np.isfinite(err_c) & (err_c > 0)
    beyond = ~both_finite | (np.abs(slope_j - slope_c) > 3 * np.where(both_finite, err_c, 1))
    jump_j, jump_c = (dq_j & JUMP_DET) != 0, (dq_c & JUMP_DET) != 0
    agree = jump_j == jump_c
    dnu_j, dnu_c = (dq_j & DO_NOT_USE) != 0, (dq_c & DO_NOT_USE) != 0
    ratio = np.abs(slope_j - slope_c)[both_finite] / err_c[both_finite]
    result = {
        "pixels": n,
        "beyond_3sigma": beyond.mean(),
        "beyond_3sigma_count": int(beyond.sum()),
        "not_finite_either": int((~both_finite).sum()),
        "median_abs_diff_over_err": float(np.median(ratio)),
        "p99_abs_diff_over_err": float(np.percentile(ratio, 99)),
        "jump_agreement": agree.mean(),
        "jump_romanjax": int(jump_j.sum()),
        "jump_romancal": int(jump_c.sum()),
        "jump_both": int((jump_j & jump_c).sum()),
        "do_not_use_romanjax": int(dnu_j.sum()),
        "do_not_use_romancal": int(dnu_c.sum()),
        "saturated_romanjax": int(((dq_j & SATURATED) != 0).sum()),
        "saturated_romancal": int(((dq_c & SATURATED) != 0).sum()),
        "dq_identical": float((dq_j == dq_c).mean()),
    }
    print(f"\n== {label} ==")
    for key, value in result.items():
        print(f"  {key:<26} {value:.6g}" if isinstance(value, float) else
              f"  {key:<26} {value}")
    ok = result["beyond_3sigma"] < MAX_BEYOND_3SIGMA and \
        result["jump_agreement"] >= MIN_JUMP_AGREEMENT
    print(f"  targets (beyond 3 sigma < {MAX_BEYOND_3SIGMA:.1%}, JUMP_DET agreement >= "
          f"{MIN_JUMP_AGREEMENT:.0%}): {'PASS' if ok else 'FAIL'}")
    return ok, result


def romanisim_l1(path: Path, size: int, seed: int, sky: float, ma_table: int):
    """An L1 simulated by romanisim's ``romanisim.l1.make_l1`` from Poisson counts of
    romanjax's built-in scene: romanisim's cosmic rays (default parameters, but the area of
    the sub-image), pedestal, IPC, read noise 5 DN, gain 2 e/DN, saturation 55000 DN.
    Packaged as ``romanisim.l1.make_asdf`` does (a ``roman`` ScienceRawModel node and a
    ``romanisim`` node with the true dq), but ``size + 8`` pixels a side: ``make_asdf``
    always writes the full 4096x4096 frame."""
    import asdf
    import galsim
    from roman_datamodels.datamodels import ScienceRawModel
    from romanisim import l1 as romanisim_l1_module
    from romanisim.models import parameters

    import romanjax
    from romanjax.host.scene import make_scene

    read_pattern = parameters.read_pattern[ma_table]
    pattern = romanjax.ReadPattern.from_ma_table(ma_table)
    scene = make_scene((size, size), seed=seed, sky=sky, psf="airy")
    rng = np.random.default_rng(seed)
    counts = rng.poisson(np.asarray(scene.rate, float) * pattern.exposure_time)
    # romanisim's cosmic-ray rate is per detector (area 16.8 cm**2, whatever the image size):
    # scaled to the sub-image, else a 256x256 image gets a whole detector's hits
    area = parameters.cr["area"] * (size / parameters.n_pix) ** 2
    resultants, dq = romanisim_l1_module.make_l1(
        galsim.Image(counts.astype(np.float64)), read_pattern, read_noise=READ_NOISE,
        rng=galsim.UniformDeviate(seed), gain=GAIN, crparam={"area": area},
        saturation=SATURATION)
    n = len(resultants)
    b = NBORDER
    npix = size + 2 * b
    out = ScienceRawModel._node_type.create_fake_data(shape=(n, npix, npix))
    out["amp33"] = np.zeros((n, npix, 128), dtype=out.amp33.dtype)
    data = np.zeros((n, npix, npix), np.uint16)
    data[:, b:-b, b:-b] = resultants
    out["data"] = data
    exposure = out.meta.exposure
    exposure.read_pattern = [list(map(int, reads)) for reads in read_pattern]
    exposure.nresultants = n
    exposure.frame_time = float(parameters.read_time)
    exposure.ma_table_number = ma_table
    # romanisim's image.simulate sets a WCS; make_asdf's fake node has none, and romancal's
    # L2 (ImageModel) requires meta.wcs: no WCS, as romancal writes before assign_wcs
    out.meta["wcs"] = None
    extras = {"dq": np.zeros(data.shape, "i4")}
    extras["dq"][:, b:-b, b:-b] = dq
    af = asdf.AsdfFile()
    af.tree = {"roman": out, "romanisim": extras}
    af.write_to(path)
    return path


def compare_on(label, l1, refs, work: Path):
    """romancal's and romanjax's default fits of ``l1``, compared."""
    t0 = time.perf_counter()
    romancal_l2 = run_romancal(l1, refs, work / "romancal_L2.asdf")
    t_romancal = time.perf_counter() - t0
    t0 = time.perf_counter()
    romanjax_l2 = work / "romanjax_fit_L2.asdf"
    romanjax_cli(["fit", str(l1), "-o", str(romanjax_l2), "-q", "--overwrite",
                  f"--saturation-file={refs['saturation']}"])
    t_romanjax = time.perf_counter() - t0
    print(f"romancal DQInit+Saturation+RampFit {t_romancal:.1f} s, romanjax fit "
          f"{t_romanjax:.1f} s")
    return compare(label, romanjax_l2, romancal_l2)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256, help="science pixels a side")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--ma-table", type=int, default=4)
    parser.add_argument("--sky", type=float, default=1.0, help="sky [e/s/pixel]")
    parser.add_argument("--romanisim", action="store_true",
                        help="also compare on an L1 simulated by romanisim")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/romancal_compare"))
    args = parser.parse_args(argv)

    import roman_datamodels
    import romancal
    import stcal

    import romanjax

    print(f"romancal {romancal.__version__}, roman_datamodels {roman_datamodels.__version__}, "
          f"stcal {stcal.__version__}, romanjax {romanjax.__version__}")
    print(f"CRDS offline: CRDS_PATH={os.environ['CRDS_PATH']}, server config {offline_crds()}")
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    sim = work / f"sim{args.size}"
    start = time.perf_counter()
    romanjax_cli(["simulate", "--size", str(args.size), "--seed", str(args.seed),
                  "--ma-table", str(args.ma_table), "--sky", str(args.sky),
                  "--output", str(sim), "--no-png", "-q", "--overwrite"])
    l1 = sim / "romanjax_L1.asdf"
    shape = (args.size + 2 * NBORDER,) * 2
    refs = make_references(work / "refs", shape)
    ok, _ = compare_on(f"romanjax simulate L1, {args.size}x{args.size}, seed {args.seed}, "
                       f"sky {args.sky} e/s, MA table {args.ma_table}", l1, refs, sim)
    if args.romanisim:
        risim = work / f"romanisim{args.size}"
        risim.mkdir(parents=True, exist_ok=True)
        l1 = romanisim_l1(risim / "romanisim_L1.asdf", args.size, args.seed, args.sky,
                          args.ma_table)
        ok_risim, _ = compare_on(f"romanisim L1, {args.size}x{args.size}, seed {args.seed}, "
                                 f"sky {args.sky} e/s, MA table {args.ma_table}", l1, refs,
                                 risim)  # fmt: skip
        ok = ok and ok_risim
    print(f"total {time.perf_counter() - start:.1f} s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
