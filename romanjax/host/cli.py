"""The ``romanjax`` command: simulate a scene, fit L1 files, inject sources into L2 files.

::

    romanjax simulate [--size 512] [--ma-table 4] [--seed 0] [--method likely] [--output DIR]
    romanjax fit L1.asdf [--output L2.asdf] [--method likely] [--no-jumps] [--truth-flags]
    romanjax inject L2_OR_L1.asdf CATALOG [--output OUT.asdf] [--seed 0] [--psf airy]

Fits find jumps as romancal's default ramp fit does: the likelihood fitter with jump
detection, from the resultants alone. A simulator's true cosmic-ray flags (``JUMP_DET`` in
an L1's resultant dq: romanjax's own, or romanisim's ``romanisim.dq``), which no pipeline
sees, are dropped unless ``--truth-flags`` is given; the other resultant flags (SATURATED:
what the pipeline's saturation step flags) are kept.

User errors (missing or wrong files, bad options) print one line on stderr and exit with a
non-zero status; they never show a traceback (``--debug`` shows it). Existing output files
are replaced only with ``--overwrite``.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

__all__ = ["main", "build_parser"]

METHODS = ("casertano", "optimal", "likely")
EXIT_USAGE = 2
EXIT_ERROR = 1


class UserError(Exception):
    """A problem with the user's input: reported as one line, exit status 1."""


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _seed(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if not 0 <= value < 2**63:
        raise argparse.ArgumentTypeError(f"expected an integer from 0 to 2**63 - 1, got {text}")
    return value


def _non_negative_float(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text}")
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative number, got {text}")
    return value


def _positive_float(text):
    value = _non_negative_float(text)
    if value == 0:
        raise argparse.ArgumentTypeError("expected a positive number, got 0")
    return value


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="romanjax",
        description="Roman WFI L1 simulation and ramp fitting in JAX. Run "
        "`romanjax simulate` to make an example L1/L2 pair and a quick-look PNG.",
    )
    parser.add_argument("--version", action="version", version=f"romanjax {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    common.add_argument("--overwrite", action="store_true",
                        help="replace output files that exist (default: refuse)")
    common.add_argument("--debug", action="store_true",
                        help="show the Python traceback of an unexpected error")
    common.add_argument("--product-format", choices=("roman", "romanjax"), default="roman",
                        help="L1/L2 file format (default roman: roman_datamodels "
                             "ScienceRawModel / ImageModel files, as romanisim writes; "
                             "romanjax: romanjax's own ASDF layout)")
    fitting = argparse.ArgumentParser(add_help=False)
    fitting.add_argument("--method", choices=METHODS, default="likely",
                         help="ramp fitter (default likely: romancal's default, with jump "
                              "detection; casertano: romanisim's, with jump detection; "
                              "optimal: no jump detection)")
    fitting.add_argument("--no-jumps", action="store_true",
                         help="do not look for jumps (cosmic rays) in the ramps")
    fitting.add_argument("--truth-flags", action="store_true",
                         help="also exclude the resultants the simulator flagged as hit by a "
                              "cosmic ray (JUMP_DET in the L1 dq; no pipeline sees them)")

    sim = sub.add_parser(
        "simulate", parents=[common, fitting],
        help="simulate a built-in scene of stars and galaxies to L1 and L2 files",
        description="Render a built-in scene of stars and galaxies with galsim on a TAN WCS, "
        "simulate the L1 ramps (romanjax.simulate_l1), fit them (romanjax.make_l2) and write "
        "L1 and L2 ASDF files, the source catalog (ECSV) and a quick-look PNG.",
    )  # fmt: skip
    sim.add_argument("--size", type=_positive_int, default=512,
                     help="image side [pixels] (default 512)")
    sim.add_argument("--ma-table", type=int, default=4,
                     help="multi-accumulation table number (default 4)")
    sim.add_argument("--seed", type=_seed, default=0, help="random seed (default 0)")
    sim.add_argument("--output", type=Path, default=Path("romanjax_output"),
                     help="output folder (default ./romanjax_output)")
    sim.add_argument("--read-noise", type=_non_negative_float, default=5.0,
                     help="read noise of one read [DN] (default 5)")
    sim.add_argument("--gain", type=_positive_float, default=2.0,
                     help="gain [e/DN] (default 2)")
    sim.add_argument("--sky", type=_non_negative_float, default=1.0,
                     help="sky background [e/s/pixel] (default 1)")
    sim.add_argument("--psf", choices=("airy", "gaussian", "roman"), default="airy",
                     help="PSF (default airy: Roman's aperture at 1.58 micron)")
    sim.add_argument("--no-cosmic-rays", action="store_true",
                     help="simulate no cosmic rays (default: romanisim's cosmic-ray model)")
    sim.add_argument("--no-png", action="store_true", help="do not write the quick-look PNG")
    sim.add_argument("--detector", type=int, default=7, choices=range(1, 19), metavar="1..18",
                     help="WFI detector (SCA) recorded in the files, and whose PSF --psf roman "
                          "uses (default 7)")
    sim.add_argument("--start-time", default=None, metavar="ISO",
                     help="exposure start time, UTC (ISO 8601; default: now)")

    fit = sub.add_parser(
        "fit", parents=[common, fitting],
        help="fit an L1 file (romanjax's or romanisim's) into an L2 file",
        description="Fit the ramps of an L1 ASDF file written by romanjax or romanisim and "
        "write an L2 ASDF file (slope [DN/s], variances, dq). Roman files give the read pattern "
        "and the read time (meta.exposure.frame_time); romanisim files get the default "
        "gain 2 e/DN and read noise 5 DN unless given.",
    )  # fmt: skip
    fit.add_argument("l1", type=Path, metavar="L1.asdf", help="input L1 file")
    fit.add_argument("--output", "-o", type=Path, default=None,
                     help="output L2 file (default: next to the input, *_L2.asdf)")
    fit.add_argument("--read-noise", type=_non_negative_float, default=None,
                     help="read noise of one read [DN] (default: from the file, else 5)")
    fit.add_argument("--gain", type=_positive_float, default=None,
                     help="gain [e/DN] (default: from the file, else 2)")
    references = fit.add_argument_group(
        "reference files", "Roman reference files (roman_datamodels reference models, the "
        "whole detector with or without the 4-pixel reference border)")
    for kind, model, what in (
            ("gain", "GainRefModel", "gain [e/DN] per pixel (instead of --gain)"),
            ("read-noise", "ReadnoiseRefModel",
             "read noise of one read [DN] per pixel (instead of --read-noise)"),
            ("dark", "DarkRefModel", "dark rate (dark_slope [DN/s]), subtracted"),
            ("flat", "FlatRefModel", "flat field; the slopes are divided by it"),
            ("saturation", "SaturationRefModel",
             "saturation level [DN]: romancal's saturation step (resultants at or above it, "
             "and all later ones, SATURATED; a resultant whose later reads saturated "
             "DO_NOT_USE; 0 DN AD_FLOOR; the file's flags and NO_SAT_CHECK set)"),
            ("mask", "MaskRefModel",
             "bad-pixel mask: its flags are set on every resultant (DO_NOT_USE pixels are not "
             "fitted)")):  # fmt: skip
        references.add_argument(f"--{kind}-file", type=Path, default=None, metavar=model,
                                help=what)  # fmt: skip

    inject = sub.add_parser(
        "inject", parents=[common], help="inject catalog sources into an L2 or L1 file",
        description="Inject the sources of CATALOG (any astropy-readable table with x, y "
        "[0-based pixels] or ra, dec [deg], and flux [e/s]; optional half_light_radius "
        "[arcsec], n, q, beta for galaxies) into an L2 file written by romanjax or romanisim "
        "(refitting the touched pixels; a new L2 file, in --product-format for romanjax's "
        "files and as the same datamodel for other Roman L2 files), or into the resultants "
        "of an L1 file (romanjax.inject_sources_into_l1; a new L1 file in --product-format, "
        "to be fitted with `romanjax fit`).",
    )  # fmt: skip
    inject.add_argument("l2", type=Path, metavar="FILE.asdf", help="input L2 or L1 file")
    inject.add_argument("catalog", type=Path, metavar="CATALOG", help="source table")
    inject.add_argument("--output", "-o", type=Path, default=None,
                        help="output file (default: next to the input, *_injected.asdf)")
    inject.add_argument("--seed", type=_seed, default=0, help="random seed (default 0)")
    inject.add_argument("--psf", choices=("airy", "gaussian", "roman"), default="airy",
                        help="PSF (default airy)")
    inject.add_argument("--method", choices=METHODS, default="casertano",
                        help="ramp fitter for the refit (default casertano)")
    inject.add_argument("--format", default=None,
                        help="astropy table format of CATALOG (default: guessed)")
    return parser


def _stages(names, quiet):
    from tqdm.auto import tqdm

    return tqdm(total=len(names), desc=names[0], unit="stage", disable=quiet, leave=False,
                file=sys.stderr)  # fmt: skip


def _advance(bar, label):
    bar.update(1)
    bar.set_description(label)


def _quicklook(path, l2, title):
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    import numpy as np

    from .io import atomic_path

    data = np.asarray(l2.data, float)
    finite = data[np.isfinite(data)]
    low, high = np.percentile(finite, [1, 99.7]) if finite.size else (0.0, 1.0)
    scale = max(high - low, 1e-6) / 20
    fig, axes = plt.subplots(1, 2, figsize=(12, 5.4), constrained_layout=True)
    fig.suptitle(title)
    shown = axes[0].imshow(np.arcsinh((data - low) / scale), origin="lower", cmap="gray",
                           vmin=0, vmax=np.arcsinh((high - low) / scale))  # fmt: skip
    axes[0].set_title("L2 slope [DN/s], asinh stretch")
    fig.colorbar(shown, ax=axes[0], label="asinh((slope - p1) / (p99.7 - p1) * 20)")
    err = np.asarray(l2.err, float)
    snr = np.where(err > 0, data / np.where(err > 0, err, 1), 0)
    shown = axes[1].imshow(np.log10(np.clip(snr, 0.1, None)), origin="lower", cmap="viridis",
                           vmin=-1, vmax=3)  # fmt: skip
    flagged_y, flagged_x = np.nonzero(np.asarray(l2.dq) != 0)
    axes[1].scatter(flagged_x, flagged_y, s=4, c="red", marker="s", linewidths=0,
                    label=f"dq != 0 ({flagged_x.size} pixels)")  # fmt: skip
    axes[1].legend(loc="upper right", fontsize=8)
    axes[1].set_title("signal-to-noise (slope / err)")
    fig.colorbar(shown, ax=axes[1], label="log10 S/N")
    for ax in axes:
        ax.set_xlabel("x [pixel]")
        ax.set_ylabel("y [pixel]")
    with atomic_path(path) as temporary:
        fig.savefig(temporary, dpi=100, format="png")
    plt.close(fig)


def _fit_keywords(args) -> dict:
    """The fitter keywords of ``--method`` and ``--no-jumps``."""
    if args.method in ("casertano", "likely"):
        return {"detect_jumps": not args.no_jumps}
    return {}


def _fit_meta(args) -> dict:
    detects = _fit_keywords(args).get("detect_jumps", False)
    return {"method": args.method, "jump_detection": detects, "truth_flags": args.truth_flags,
            "pixel_flags": "romancal"}


def _flags_for_fit(dq, truth_flags: bool):
    """The L1 resultant flags a fit uses: without ``truth_flags`` the simulator's true
    cosmic-ray hits (JUMP_DET) are cleared; the other flags stay."""
    import numpy as np

    from ..dq import JUMP_DET

    dq = np.asarray(dq, np.uint32)
    return dq if truth_flags else dq & np.uint32(~JUMP_DET & 0xFFFFFFFF)


def _simulate(args):
    import jax
    import numpy as np

    import romanjax

    from .io import L1Image, L2Image, atomic_paths
    from .scene import make_psf, make_scene

    write_l1, write_l2 = _writers(args)

    if args.ma_table not in romanjax.MA_TABLES:
        raise UserError(
            f"unknown --ma-table {args.ma_table}; known tables: {sorted(romanjax.MA_TABLES)}"
        )
    if args.size > 4088:
        raise UserError(f"--size {args.size} is larger than a WFI detector (4088)")
    start_time = _start_time(args.start_time)
    output = args.output
    if output.exists() and not output.is_dir():
        raise UserError(f"--output {output} exists and is not a folder")
    names = {"L1": "romanjax_L1.asdf", "L2": "romanjax_L2.asdf",
             "catalog": "romanjax_catalog.ecsv", "quick-look": "romanjax_L2.png"}
    _check_outputs([output / name for name in names.values()], args.overwrite)
    output.mkdir(parents=True, exist_ok=True)
    pattern = romanjax.ReadPattern.from_ma_table(args.ma_table)
    shape = (args.size, args.size)
    stages = ["rendering scene", "simulating L1 ramps", "fitting ramps", "writing files"]
    start = time.perf_counter()
    bar = _stages(stages, args.quiet)
    psf = make_psf("roman", sca=args.detector) if args.psf == "roman" else args.psf
    scene = make_scene(shape, seed=args.seed, sky=args.sky, psf=psf)
    _advance(bar, stages[1])
    key = jax.random.key(args.seed)
    key_photons, key_l1 = jax.random.split(key)
    expected = scene.rate * pattern.exposure_time
    counts = np.asarray(jax.random.poisson(key_photons, expected.astype(np.float32)), np.int32)
    l1 = romanjax.simulate_l1(key_l1, counts, pattern, read_noise=args.read_noise,
                              gain=args.gain, cosmic_rays=not args.no_cosmic_rays)  # fmt: skip
    resultants = np.asarray(l1.resultants, np.float32)
    l1_dq = np.asarray(l1.dq, np.uint32)
    _advance(bar, stages[2])
    l2 = romanjax.make_l2(resultants, pattern, read_noise=args.read_noise, gain=args.gain,
                          dq=_flags_for_fit(l1_dq, args.truth_flags), method=args.method,
                          pixel_flags="romancal", **_fit_keywords(args))  # fmt: skip
    l2 = jax.block_until_ready(l2)
    _advance(bar, stages[3])
    meta = {
        "command": "romanjax simulate",
        "seed": args.seed,
        "ma_table": args.ma_table,
        **_fit_meta(args),
        "cosmic_rays": not args.no_cosmic_rays,
        "sky": args.sky,
        "psf": args.psf,
        "detector": f"WFI{args.detector:02d}",
        "optical_element": "F158",
        "start_time": start_time,
        "n_sources": len(scene.catalog),
    }
    l1_image = L1Image(resultants=resultants, dq=l1_dq, pattern=pattern, gain=args.gain,
                       read_noise=args.read_noise, wcs=scene.wcs, meta=dict(meta))  # fmt: skip
    l2_image = L2Image.from_l2(l2, pattern, gain=args.gain, read_noise=args.read_noise,
                               wcs=scene.wcs, meta=dict(meta))  # fmt: skip
    keys = ["L1", "L2", "catalog"] + ([] if args.no_png else ["quick-look"])
    paths = {key: output / names[key] for key in keys}
    # one set: written into a staging folder and moved into place together, so a failure
    # never leaves a new L1 beside an old L2
    with atomic_paths(list(paths.values())) as temporaries:
        staged = dict(zip(keys, temporaries, strict=True))
        write_l1(staged["L1"], l1_image)
        write_l2(staged["L2"], l2_image)
        scene.catalog.write(staged["catalog"], format="ascii.ecsv", overwrite=True)
        if not args.no_png:
            _quicklook(staged["quick-look"], l2_image,
                       f"romanjax simulate: {args.size}x{args.size} pixels, MA table "
                       f"{args.ma_table}, {args.method} fit, seed {args.seed}")
    bar.update(1)
    bar.close()
    elapsed = time.perf_counter() - start
    print(f"romanjax simulate: {len(scene.catalog)} sources, {args.size}x{args.size} pixels, "
          f"MA table {args.ma_table}, {args.method} fit, {elapsed:.1f} s")  # fmt: skip
    for label, path in paths.items():
        print(f"  {label:<11} {path}")
    return 0


def _check_outputs(paths, overwrite: bool) -> None:
    """Refuse output paths that are folders, or files that exist unless ``--overwrite``."""
    for path in paths:
        if path.is_dir():
            raise UserError(f"output {path} is a folder; give a file name")
    existing = [str(path) for path in paths if path.exists()]
    if existing and not overwrite:
        raise UserError(f"{', '.join(existing)} exists; give --overwrite to replace it")


def _default_output(path: Path, suffix: str) -> Path:
    stem = path.stem
    for tag in ("_L1", "_l1", "_L2", "_l2", "_uncal", "_cal"):
        if stem.endswith(tag):
            stem = stem[: -len(tag)]
            break
    return path.with_name(f"{stem}{suffix}.asdf")


def _fit(args):
    import jax
    import numpy as np

    import romanjax

    from .io import L2Image, read_l1

    _, write_l2 = _writers(args)
    l1 = read_l1(args.l1)
    gain = l1.gain if args.gain is None else args.gain
    read_noise = l1.read_noise if args.read_noise is None else args.read_noise
    refs = _reference_files(args, l1.shape)
    gain = refs.get("gain", gain)
    read_noise = refs.get("read_noise", read_noise)
    dq = _flags_for_fit(l1.dq, args.truth_flags)
    if "saturation" in refs:
        from .io import saturation_flags, saturation_pixel_flags

        level, level_dq = refs["saturation"], refs["saturation_dq"]
        dq = dq | saturation_flags(l1.resultants, level, l1.pattern, level_dq)
        dq = dq | saturation_pixel_flags(level, level_dq)[None]
    if "mask" in refs:
        dq = dq | refs["mask"][None]
    if "flat" in refs:  # unusable flat values: not flat-fielded, flagged (romancal's flat step)
        from ..dq import NO_FLAT_FIELD

        no_flat = ~(np.isfinite(refs["flat"]) & (refs["flat"] > 0))
        refs["flat"] = np.where(no_flat, 1.0, refs["flat"])
        dq = dq | np.where(no_flat, np.uint32(NO_FLAT_FIELD), np.uint32(0))[None]
    # DarkRefModel's dark_slope is in DN/s; make_l2 subtracts electrons per second
    dark_rate = refs["dark"] * gain if "dark" in refs else None
    output = args.output or _default_output(args.l1, "_L2")
    if output.resolve() == args.l1.resolve():
        raise UserError(f"--output {output} would overwrite the input L1 file")
    _check_outputs([output], args.overwrite)
    stages = ["fitting ramps", "writing L2"]
    bar = _stages(stages, args.quiet)
    start = time.perf_counter()
    l2 = romanjax.make_l2(l1.resultants, l1.pattern, read_noise=read_noise, gain=gain,
                          dq=dq, dark_rate=dark_rate, flat=refs.get("flat"),
                          method=args.method, pixel_flags="romancal",
                          **_fit_keywords(args))  # fmt: skip
    l2 = jax.block_until_ready(l2)
    _advance(bar, stages[1])
    meta = dict(l1.meta)
    meta.update(command="romanjax fit", source_l1=str(args.l1), **_fit_meta(args))
    meta.update({f"reference_{kind}": str(getattr(args, f"{kind}_file"))
                 for kind in refs if kind != "saturation_dq"})  # fmt: skip
    image = L2Image.from_l2(l2, l1.pattern, gain=gain, read_noise=read_noise, wcs=l1.wcs,
                            meta=meta)  # fmt: skip
    write_l2(output, image)
    bar.update(1)
    bar.close()
    print(f"romanjax fit: {args.l1} -> {output} ({l1.shape[0]}x{l1.shape[1]} pixels, "
          f"{args.method}, {time.perf_counter() - start:.1f} s)")  # fmt: skip
    return 0


def _reference_files(args, shape) -> dict:
    """The arrays of the ``--*-file`` options that were given, by kind."""
    from .io import ProductFileError, read_reference

    for kind, scalar in (("gain", args.gain), ("read_noise", args.read_noise)):
        if scalar is not None and getattr(args, f"{kind}_file") is not None:
            option = kind.replace("_", "-")
            raise UserError(f"give --{option} or --{option}-file, not both")
    arrays = {}
    for kind in ("gain", "read_noise", "dark", "flat", "saturation", "mask"):
        path = getattr(args, f"{kind}_file")
        if path is None:
            continue
        try:
            arrays[kind] = read_reference(path, kind, shape)
            if kind == "saturation":  # the file's flags (NO_SAT_CHECK pixels) as well
                arrays["saturation_dq"] = read_reference(path, "saturation_dq", shape)
        except (ValueError, FileNotFoundError, ProductFileError) as error:
            raise UserError(f"--{kind.replace('_', '-')}-file: {error}") from None
    if "gain" in arrays and not (arrays["gain"] > 0).all():
        raise UserError(f"--gain-file {args.gain_file}: the gain must be > 0 everywhere")
    if "read_noise" in arrays and not (arrays["read_noise"] >= 0).all():
        raise UserError(f"--read-noise-file {args.read_noise_file}: negative read noise")
    return arrays


def _read_catalog(path: Path, fmt):
    from astropy.table import Table

    if not path.exists():
        raise FileNotFoundError(f"no such file: {path}")
    try:
        table = Table.read(path, format=fmt) if fmt else Table.read(path)
    except Exception as first:  # noqa: BLE001 - astropy raises many kinds; try plain ASCII
        if fmt:
            raise UserError(f"cannot read catalog {path} as {fmt!r}: {first}") from None
        try:
            table = Table.read(path, format="ascii")
        except Exception:  # noqa: BLE001
            raise UserError(f"cannot read catalog {path}: {first}") from None
    if "flux" not in table.colnames:
        raise UserError(f"catalog {path} has no `flux` column [e/s]; columns: {table.colnames}")
    if not ({"x", "y"} <= set(table.colnames) or {"ra", "dec"} <= set(table.colnames)):
        raise UserError(
            f"catalog {path} needs `x`, `y` or `ra`, `dec` columns; columns: {table.colnames}"
        )
    _check_catalog_values(table, path)
    return table


def _check_catalog_values(table, path) -> None:
    """Refuse a catalog whose numeric columns hold text, NaN or inf, or whose fluxes are
    negative, naming the column and the first rows (0-based) at fault."""
    import numpy as np

    position = ("x", "y") if {"x", "y"} <= set(table.colnames) else ("ra", "dec")
    shape_columns = [c for c in ("half_light_radius", "n", "q", "beta") if c in table.colnames]
    for name in ("flux", *position, *shape_columns):
        column = table[name]
        try:
            values = np.asarray(column, dtype=float)
        except (TypeError, ValueError):
            raise UserError(f"catalog {path}: column `{name}` must be numbers, got "
                            f"{column.dtype}") from None  # fmt: skip
        mask = np.ma.getmaskarray(column) | ~np.isfinite(values)
        if name == "flux":
            mask |= values < 0
        if mask.any():
            rows = np.flatnonzero(mask)
            what = "missing, NaN, inf or negative" if name == "flux" else "missing, NaN or inf"
            listed = ", ".join(str(row) for row in rows[:5]) + (", ..." if len(rows) > 5 else "")
            raise UserError(f"catalog {path}: {len(rows)} rows with a {what} `{name}` "
                            f"(rows {listed})")  # fmt: skip


def _start_time(text):
    """``--start-time`` as an ISO 8601 UTC string (default: now)."""
    import datetime

    if text is None:
        now = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)
        return now.isoformat(timespec="milliseconds")
    try:
        from astropy.time import Time

        return Time(text, scale="utc").isot
    except ValueError:
        raise UserError(f"--start-time {text!r} is not an ISO 8601 time") from None


def _writers(args):
    """The L1 and L2 writers of ``--product-format``."""
    from . import io

    if args.product_format == "romanjax":
        return io.write_l1, io.write_l2
    try:
        import roman_datamodels  # noqa: F401
    except ImportError:
        raise UserError(
            "--product-format roman needs roman_datamodels (pip install 'romanjax[datamodels]'); "
            "or pass --product-format romanjax"
        ) from None
    return io.write_roman_l1, io.write_roman_l2


def _inject(args):
    import jax
    import numpy as np

    from .inject import inject_sources_into_l1, inject_sources_into_l2
    from .io import L2Image, open_product, write_datamodel

    write_l1, write_l2 = _writers(args)
    # the input is read once: romanjax's files (either format) and every L1 as romanjax
    # images, other Roman L2 files as the datamodel, injected into and written back as such
    _, kind, image = open_product(args.l2)
    catalog = _read_catalog(args.catalog, args.format)
    output = args.output or _default_output(args.l2, "_injected")
    if output.resolve() == args.l2.resolve():
        raise UserError(f"--output {output} would overwrite the input file")
    _check_outputs([output], args.overwrite)
    stages = ["injecting sources", f"writing {kind}"]
    bar = _stages(stages, args.quiet)
    start = time.perf_counter()
    key = jax.random.key(args.seed)
    if kind == "L1":  # into the resultants; written in --product-format
        l1 = image
        off = _sources_off_image(catalog, l1.wcs, l1.shape)
        new = inject_sources_into_l1(l1, catalog, key=key, psf=args.psf,
                                     progress=not args.quiet)  # fmt: skip
        _advance(bar, stages[1])
        new.meta.update(injected_from=str(args.catalog), injected_sources=len(catalog))
        write_l1(output, new)
    else:
        ours = isinstance(image, L2Image)
        wcs = image.wcs if ours else getattr(image.meta, "wcs", None)
        off = _sources_off_image(catalog, wcs, tuple(np.shape(image.data)))
        new = inject_sources_into_l2(image, catalog, key=key, psf=args.psf,
                                     method=args.method, progress=not args.quiet)  # fmt: skip
        _advance(bar, stages[1])
        if ours:
            new.meta.update(injected_from=str(args.catalog), injected_sources=len(catalog))
            write_l2(output, new)
        else:
            write_datamodel(new, output)
    bar.update(1)
    bar.close()
    print(f"romanjax inject: {len(catalog)} sources from {args.catalog} into {args.l2} -> "
          f"{output} ({time.perf_counter() - start:.1f} s)")  # fmt: skip
    if len(off):
        rows = ", ".join(str(row) for row in off[:10]) + (", ..." if len(off) > 10 else "")
        print(f"romanjax inject: {len(off)} of {len(catalog)} sources are centred off the "
              f"image (catalog rows {rows}); only the part of their light that falls on it "
              "was added")  # fmt: skip
    return 0


def _sources_off_image(catalog, wcs, shape):
    """Catalog rows (0-based) whose centre lies outside the image's pixels."""
    import numpy as np

    from .scene import pixel_positions

    try:
        x, y = pixel_positions(catalog, wcs, shape)
    except ValueError as error:
        raise UserError(f"catalog: {error}") from None
    ny, nx = shape[-2:]
    outside = (x < -0.5) | (x > nx - 0.5) | (y < -0.5) | (y > ny - 0.5) | \
        ~np.isfinite(x) | ~np.isfinite(y)  # fmt: skip
    return np.flatnonzero(outside).tolist()


#: Environment variables of the persistent compilation cache: ``ROMANJAX_COMPILATION_CACHE=0``
#: turns it off, ``ROMANJAX_CACHE_DIR`` places it (default: ``$XDG_CACHE_HOME/romanjax/jax``,
#: i.e. ``~/.cache/romanjax/jax``).
CACHE_SWITCH, CACHE_DIR = "ROMANJAX_COMPILATION_CACHE", "ROMANJAX_CACHE_DIR"


def compilation_cache_dir() -> Path | None:
    """Where the command keeps JAX's persistent compilation cache, or None when it is off."""
    if os.environ.get(CACHE_SWITCH, "1").strip().lower() in ("0", "false", "no", "off"):
        return None
    if os.environ.get(CACHE_DIR):
        return Path(os.environ[CACHE_DIR]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "romanjax" / "jax"


def _use_compilation_cache() -> Path | None:
    """Keep compiled programs across runs: a second ``romanjax fit`` of the same kind of file
    loads them instead of compiling again. Best effort: a cache that cannot be created is
    skipped. Returns the cache directory, or None.

    Two caches share the directory: JAX's persistent compilation cache, for every program
    the command compiles, and in its ``programs`` folder the command's L1 simulation and L2
    fit as whole executables (:mod:`romanjax._programs`), which a later run loads without
    tracing them again."""
    directory = compilation_cache_dir()
    if directory is None:
        return None
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    import jax

    jax.config.update("jax_compilation_cache_dir", str(directory))
    # every program, however quick to compile: a time threshold would make which programs
    # are kept depend on the machine's load, and a second run recompile some of them
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return directory


class _LibyamlSafeLoad:
    """PyYAML as asdf's manifest loader sees it, with ``safe_load`` parsed by libyaml.

    asdf builds each extension from its manifest, a YAML document it parses with
    ``yaml.safe_load``, PyYAML's pure-Python parser: the 40-60 manifests of asdf, astropy,
    gwcs and roman_datamodels take 0.4-0.5 s, the largest cost of a small ``romanjax fit``
    after importing jax. libyaml's ``CSafeLoader`` builds the same Python objects (the same
    YAML 1.1 safe schema) in a tenth of the time. Everything else is PyYAML's own."""

    def __init__(self, yaml):
        self._yaml = yaml

    def safe_load(self, stream):
        return self._yaml.load(stream, Loader=self._yaml.CSafeLoader)

    def __getattr__(self, name):
        return getattr(self._yaml, name)


def _parse_asdf_manifests_with_libyaml() -> bool:
    """In the command's own process, let asdf parse extension manifests with libyaml.

    Only the ``romanjax`` command does this (the process is the command's): the array API
    and :mod:`romanjax.host.io` leave asdf as the caller has it. Skipped, and False
    returned, where PyYAML has no libyaml or asdf no longer reads its manifests through its
    module-level ``yaml``."""
    try:
        import yaml
        from asdf.extension import _manifest
    except ImportError:
        return False
    if isinstance(getattr(_manifest, "yaml", None), _LibyamlSafeLoad):
        return True
    if not (getattr(yaml, "__with_libyaml__", False) and getattr(_manifest, "yaml", None) is yaml):
        return False
    _manifest.yaml = _LibyamlSafeLoad(yaml)
    return True


def _import_roman_datamodels_with_libyaml() -> bool:
    """In the command's own process, import roman_datamodels with its manifests parsed by
    libyaml.

    Any ASDF file the command reads or writes loads asdf's extensions, which imports
    roman_datamodels where it is installed; on import it builds its node classes from
    RAD's datamodel manifests, large YAML documents it parses with PyYAML's module-level
    ``yaml.safe_load`` (pure Python), about a quarter of a second. The command imports it
    first, with ``yaml.safe_load`` parsing by libyaml (the same objects; see
    :class:`_LibyamlSafeLoad`) for the length of that import only. Returns whether it did;
    False where roman_datamodels is already imported or not installed, PyYAML has no
    libyaml, or the import fails (the package is then imported as usual where it is needed,
    and a failure reported there)."""
    import importlib.util

    if "roman_datamodels" in sys.modules:
        return False
    try:
        import yaml
    except ImportError:
        return False
    if not getattr(yaml, "__with_libyaml__", False) or \
            importlib.util.find_spec("roman_datamodels") is None:  # fmt: skip
        return False
    safe_load = yaml.safe_load
    yaml.safe_load = _LibyamlSafeLoad(yaml).safe_load
    try:
        import roman_datamodels  # noqa: F401
    except Exception:  # noqa: BLE001 - imported again as usual where needed, and reported there
        return False
    finally:
        yaml.safe_load = safe_load
    return True


def main(argv=None) -> int:
    """Run the ``romanjax`` command; returns the exit status (0 on success)."""
    parser = build_parser()
    args = parser.parse_args(argv)  # exits with status 2 and a usage message on bad options
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    cache = _use_compilation_cache()
    _parse_asdf_manifests_with_libyaml()
    _import_roman_datamodels_with_libyaml()
    handlers = {"simulate": _simulate, "fit": _fit, "inject": _inject}
    from .. import _programs

    try:
        with _programs.kept_in(None if cache is None else cache / "programs"):
            return handlers[args.command](args)
    except KeyboardInterrupt:
        print(f"romanjax {args.command}: interrupted", file=sys.stderr)
        return 130
    except (UserError, ValueError, OSError, ImportError) as error:
        if args.debug:
            raise
        print(f"romanjax {args.command}: error: {error}", file=sys.stderr)
        return EXIT_ERROR
    except Exception as error:  # noqa: BLE001 - one line, never a traceback (--debug: raise)
        if args.debug:
            raise
        print(f"romanjax {args.command}: unexpected error ({type(error).__name__}): {error} "
              f"(--debug shows the traceback)", file=sys.stderr)  # fmt: skip
        return EXIT_ERROR


def console_main() -> None:
    """The ``romanjax`` executable: :func:`main`, then the process ends at once with its status.

    Python's own shutdown tears down the modules and objects of jax, astropy, asdf and
    roman_datamodels one by one, 0.3-0.4 s after the work is done (a tenth of a small
    fit). By the time :func:`main` returns, every output file has been written and closed
    (atomically), so the process runs the exit handlers registered with :mod:`atexit`
    (logging's flush among them), flushes its streams and ends without that teardown. An
    exception (``--debug``) or ``SystemExit`` (argparse's usage errors, ``--help``) takes
    Python's ordinary exit."""
    import atexit

    status = main()
    atexit._run_exitfuncs()  # what the interpreter would run at exit, in the same order
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


if __name__ == "__main__":  # pragma: no cover
    console_main()
