"""ASDF files: romanjax's own L1/L2 files, and romanisim's (roman_datamodels) L1/L2 files.

romanjax files hold one top-level ``romanjax`` node::

    romanjax:
      kind: L1 | L2
      version: romanjax version that wrote it (provenance)
      read_pattern: {reads: [[1], [2], [3, 4], ...], read_time: 3.16247}
      gain: float or [ny, nx]  (e/DN)
      read_noise: float or [ny, nx]  (DN, one read)
      wcs: {type: fits, header: {...}} | {type: gwcs, wcs: <gwcs>} | null
      meta: {...}
      L1: resultants [n, ny, nx] (DN), dq [n, ny, nx] uint32
      L2: data (DN/s), var_rnoise, var_poisson ((DN/s)**2), err (DN/s), dq uint32

romanisim writes a ``roman`` node (a roman_datamodels ``WfiScienceRaw`` for L1, with a
4-pixel reference border and the simulator's resultant dq in ``romanisim.dq``; a ``WfiImage``
for L2); those are read when roman_datamodels is installed.

Every write goes to a temporary file in the destination folder which is renamed over the
destination only once complete (``os.replace``), so an interrupted write never leaves a
partial file and never damages an existing one.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import tempfile
from pathlib import Path

import numpy as np

from ..._read_pattern import DEFAULT_READ_TIME, ReadPattern
from ._products import DATA_ENCODING_OFFSET, DEFAULT_GAIN, DEFAULT_READ_NOISE, L1Image, L2Image

__all__ = [
    "ProductFileError",
    "atomic_path",
    "write_l1",
    "write_l2",
    "read_product",
    "read_l1",
    "read_l2",
    "file_kind",
    "open_product",
    "open_datamodel",
    "write_datamodel",
    "NBORDER",
]

#: Width of the reference-pixel border of romanisim / Roman L1 frames [pixels].
NBORDER = 4


class ProductFileError(ValueError):
    """A file is missing, corrupt, or not the kind of product that was asked for."""


#: Staging folders older than this [s] are left over from a killed writer and are removed
#: by the next write into the same folder.
STALE_STAGING_SECONDS = 3600.0


def _remove_stale_staging(directory: Path) -> None:
    """Remove the hidden staging folders (``.NAME.*.part``) a killed writer left behind."""
    import shutil
    import time

    now = time.time()
    for folder in directory.glob(".*.part"):
        with contextlib.suppress(OSError):
            if folder.is_dir() and now - folder.stat().st_mtime > STALE_STAGING_SECONDS:
                shutil.rmtree(folder)


@contextlib.contextmanager
def atomic_paths(paths):
    """Yield temporary paths for several files written as one set; on success rename them
    all into place, on failure leave every final path untouched.

    The temporary files keep their final names (writers such as roman_datamodels record the
    file name inside the file) in one hidden staging folder next to the first path; each
    final ``os.replace`` is atomic on the same file system, and they follow each other only
    after every file of the set was written and synced, so a failure while writing never
    leaves a new file beside an old one. Staging folders left by a killed writer more than
    :data:`STALE_STAGING_SECONDS` ago are removed.
    """
    paths = [Path(path) for path in paths]
    directory = paths[0].parent if str(paths[0].parent) else Path(".")
    if not directory.is_dir():
        raise ProductFileError(f"cannot write {paths[0]}: folder {directory} does not exist")
    if any(path.parent.resolve() != directory.resolve() for path in paths) or \
            len({path.name for path in paths}) != len(paths):  # fmt: skip
        raise ValueError("atomic_paths: the files of a set must have distinct names in one folder")
    _remove_stale_staging(directory)
    staging = Path(tempfile.mkdtemp(prefix=f".{paths[0].name}.", suffix=".part", dir=directory))
    temporaries = [staging / path.name for path in paths]
    try:
        yield temporaries
        for temporary in temporaries:
            if not temporary.exists():
                raise ProductFileError(f"{temporary.name} of the set was not written")
            with open(temporary, "rb+") as stream:
                os.fsync(stream.fileno())
            os.chmod(temporary, 0o666 & ~_umask())
        for temporary, path in zip(temporaries, paths, strict=True):
            os.replace(temporary, path)
    finally:
        for temporary in temporaries:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
        with contextlib.suppress(OSError):
            os.rmdir(staging)


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path for ``path``; on success rename it over ``path`` (see
    :func:`atomic_paths`). If the body raises, the temporary file is removed and ``path`` is
    left untouched."""
    with atomic_paths([path]) as (temporary,):
        yield temporary


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _version() -> str:
    from ... import __version__

    return __version__


def _wcs_to_tree(wcs):
    if wcs is None:
        return None
    try:
        import gwcs

        if isinstance(wcs, gwcs.WCS):
            return {"type": "gwcs", "wcs": wcs}
    except ImportError:  # pragma: no cover - gwcs comes with roman_datamodels
        pass
    from astropy.wcs import WCS

    if isinstance(wcs, WCS):
        header = wcs.to_header(relax=True)
        return {"type": "fits", "header": {key: header[key] for key in header}}
    raise TypeError(
        f"`wcs` must be an astropy.wcs.WCS or a gwcs.WCS, got {type(wcs).__name__}"
    )


def _wcs_from_tree(node):
    if node is None:
        return None
    if node.get("type") == "gwcs":
        return node["wcs"]
    if node.get("type") == "fits":
        from astropy.io import fits
        from astropy.wcs import WCS

        return WCS(fits.Header(dict(node["header"])))
    raise ValueError(f"unknown WCS type {node.get('type')!r}")


def _scalar_or_array(value):
    array = np.asarray(value)
    return float(array) if array.ndim == 0 else array


def _pattern_tree(pattern: ReadPattern):
    return {"reads": [list(r) for r in pattern.reads], "read_time": float(pattern.read_time)}


def _common_tree(product, kind):
    meta = dict(product.meta)
    meta.setdefault("created", datetime.datetime.now(datetime.timezone.utc).isoformat())
    return {
        "kind": kind,
        "version": _version(),
        "software": "romanjax",
        "read_pattern": _pattern_tree(product.pattern),
        "gain": _scalar_or_array(product.gain),
        "read_noise": _scalar_or_array(product.read_noise),
        "wcs": _wcs_to_tree(product.wcs),
        "meta": meta,
    }


def _write(tree, path):
    import asdf

    path = Path(path)
    af = asdf.AsdfFile({"romanjax": tree})
    if isinstance(tree.get("dq"), np.ndarray):
        af.set_array_compression(tree["dq"], "zlib")  # mostly zeros: ~100x smaller
    with atomic_path(path) as temporary:
        af.write_to(temporary)
    return path


def write_l1(path, l1: L1Image):
    """Write an :class:`L1Image` to ``path`` (ASDF, atomically). Returns the path."""
    tree = _common_tree(l1, "L1")
    tree["resultants"] = np.asarray(l1.resultants)
    tree["dq"] = np.asarray(l1.dq, dtype=np.uint32)
    if l1.reference_read is not None:  # resultants stay absolute in romanjax files
        tree["reference_read"] = np.asarray(l1.reference_read)
        tree["data_encoding_offset"] = int(l1.data_encoding_offset)
    return _write(tree, path)


def write_l2(path, l2: L2Image):
    """Write an :class:`L2Image` to ``path`` (ASDF, atomically). Returns the path."""
    tree = _common_tree(l2, "L2")
    for name in ("data", "var_rnoise", "var_poisson", "err"):
        tree[name] = np.asarray(getattr(l2, name))
    tree["dq"] = np.asarray(l2.dq, dtype=np.uint32)
    return _write(tree, path)


def _open_tree(path):
    """Read the whole ASDF tree of ``path`` into memory (no memory map, file closed)."""
    import warnings

    import asdf

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such file: {path}")
    if path.is_dir():
        raise ProductFileError(f"{path} is a folder, not an ASDF file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with asdf.open(path, lazy_load=False, memmap=False, validate_checksums=True) as af:
                tree = _materialise(dict(af.tree))
    except ProductFileError:
        raise
    except Exception as error:
        raise ProductFileError(f"{path} is not a readable ASDF file: {error}") from error
    return tree


def _materialise(value):
    """Copy arrays out of an open ASDF file (stnode objects are kept as they are)."""
    if isinstance(value, dict):
        return {key: _materialise(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_materialise(item) for item in value]
    if hasattr(value, "__array__") and not isinstance(value, np.ndarray) and (
        type(value).__module__.startswith("asdf")
    ):
        return np.array(value)
    return value


def _roman_node_kind(node):
    name = type(node).__name__
    if "ScienceRaw" in name:
        return "L1"
    if name in ("WfiImage", "ImageModel"):
        return "L2"
    return None


def has_romanjax_extras(path) -> bool:
    """Whether ``path`` is a Roman datamodel file romanjax wrote (it carries romanjax's
    ``romanjax_extras`` node beside ``roman``)."""
    return isinstance(_open_tree(path).get("romanjax_extras"), dict)


def file_kind(path) -> tuple[str, str]:
    """``(source, kind)`` of an ASDF product file: source ``"romanjax"`` or ``"roman"``
    (roman_datamodels / romanisim), kind ``"L1"`` or ``"L2"``."""
    return _classify(_open_tree(path), path)[:2]


def _classify(tree, path):
    if isinstance(tree.get("romanjax"), dict):
        node = tree["romanjax"]
        kind = node.get("kind")
        if kind not in ("L1", "L2"):
            raise ProductFileError(f"{path}: romanjax file of unknown kind {kind!r}")
        return "romanjax", kind, node
    if "roman" in tree:
        node = tree["roman"]
        kind = _roman_node_kind(node)
        if kind is None:
            if isinstance(node, dict) or "Tagged" in type(node).__name__:
                raise ProductFileError(
                    f"{path}: a Roman datamodel file, but roman_datamodels could not read it "
                    "(install it with `pip install romanjax[datamodels]`)"
                )
            raise ProductFileError(
                f"{path}: Roman datamodel {type(node).__name__} is neither an L1 "
                "(ScienceRaw) nor an L2 (WfiImage) product"
            )
        return "roman", kind, node
    raise ProductFileError(f"{path}: not a romanjax or Roman L1/L2 ASDF file")


def _pattern_from_tree(node, path):
    try:
        return ReadPattern(node["reads"], read_time=node.get("read_time", DEFAULT_READ_TIME))
    except (KeyError, TypeError, ValueError) as error:
        raise ProductFileError(f"{path}: invalid read pattern ({error})") from error


def _require(node, names, path):
    missing = [name for name in names if name not in node]
    if missing:
        raise ProductFileError(f"{path}: romanjax file is missing {', '.join(missing)}")


def _from_romanjax(node, kind, path):
    common = dict(
        pattern=_pattern_from_tree(node.get("read_pattern") or {}, path),
        gain=_scalar_or_array(node.get("gain", DEFAULT_GAIN)),
        read_noise=_scalar_or_array(node.get("read_noise", DEFAULT_READ_NOISE)),
        wcs=_wcs_from_tree(node.get("wcs")),
        meta=dict(node.get("meta") or {}),
    )
    if kind == "L1":
        _require(node, ["resultants", "dq"], path)
        resultants = np.asarray(node["resultants"])
        if resultants.ndim != 3 or resultants.shape[0] != common["pattern"].n_resultants:
            raise ProductFileError(
                f"{path}: resultants of shape {resultants.shape} do not match the read pattern "
                f"({common['pattern'].n_resultants} resultants)"
            )
        if node.get("reference_read") is not None:
            common["reference_read"] = np.asarray(node["reference_read"])
            common["data_encoding_offset"] = int(node.get("data_encoding_offset",
                                                          DATA_ENCODING_OFFSET))  # fmt: skip
        return L1Image(resultants=resultants, dq=np.asarray(node["dq"], np.uint32), **common)
    _require(node, ["data", "var_rnoise", "var_poisson", "err", "dq"], path)
    arrays = {name: np.asarray(node[name]) for name in ("data", "var_rnoise", "var_poisson", "err")}
    return L2Image(dq=np.asarray(node["dq"], np.uint32), **arrays, **common)


def _roman_get(node, name, default=None):
    try:
        value = node[name]
    except (KeyError, AttributeError, TypeError):
        return default
    return default if value is None else value


def _roman_pattern(node, path):
    """The read pattern of a Roman file: ``meta.exposure.read_pattern``, with the time of one
    read from ``meta.exposure.frame_time`` [s] (romanisim simulates with it too), else the
    default :data:`DEFAULT_READ_TIME`."""
    try:
        reads = node.meta.exposure.read_pattern
    except (AttributeError, KeyError) as error:
        raise ProductFileError(f"{path}: no meta.exposure.read_pattern ({error})") from error
    try:
        frame_time = node.meta.exposure.frame_time
    except (AttributeError, KeyError):
        frame_time = None
    read_time = DEFAULT_READ_TIME
    if frame_time is not None:
        try:
            read_time = float(getattr(frame_time, "value", frame_time))  # a Quantity or a float
        except (TypeError, ValueError):
            read_time = float("nan")
        if not (np.isfinite(read_time) and read_time > 0):
            raise ProductFileError(
                f"{path}: meta.exposure.frame_time must be a positive number of seconds, got "
                f"{frame_time!r}"
            )
    try:
        return ReadPattern([list(r) for r in reads], read_time=read_time)
    except (TypeError, ValueError) as error:
        raise ProductFileError(
            f"{path}: no usable meta.exposure.read_pattern ({error})"
        ) from error


def _roman_wcs(node):
    try:
        return node.meta.wcs
    except (AttributeError, KeyError):
        return None


def _extras(tree, kind, path):
    """romanjax's ``romanjax_extras`` node of a Roman datamodel file it wrote (see
    :mod:`romanjax.host.io._roman`), or an empty dict."""
    extras = tree.get("romanjax_extras")
    if not isinstance(extras, dict):
        return {}
    if extras.get("kind") != kind:
        raise ProductFileError(
            f"{path}: a Roman {kind} file whose romanjax extras are for {extras.get('kind')!r}"
        )
    return extras


def _extras_wcs(extras):
    header = extras.get("fits_wcs")
    if not header:
        return None
    from astropy.wcs import WCS

    return WCS(header)


def _with_extras(product, extras, path):
    """Gain, read noise, provenance and an astropy WCS from the extras, where present."""
    for name in ("gain", "read_noise"):
        if name in extras:
            setattr(product, name, _scalar_or_array(extras[name]))
    if isinstance(extras.get("meta"), dict):
        product.meta = {**product.meta, **extras["meta"]}  # as written, as romanjax files
    if extras.get("fits_wcs"):  # the exact astropy WCS the file was written from
        product.wcs = _extras_wcs(extras)
    return product


def _from_roman(node, kind, tree, path):
    extras = _extras(tree, kind, path)
    return _with_extras(_from_roman_node(node, kind, tree, path, extras), extras, path)


def _roman_meta(node, path):
    """Provenance, and the detector, optical element and start time a Roman file names."""
    meta = {"source_file": str(path), "source_format": type(node).__name__}
    for key, get in (("detector", lambda: node.meta.instrument.detector),
                     ("optical_element", lambda: node.meta.instrument.optical_element),
                     ("start_time", lambda: node.meta.exposure.start_time.isot)):  # fmt: skip
        try:
            value = get()
        except (AttributeError, KeyError, TypeError):
            continue
        if isinstance(value, str) and value not in ("", "?"):
            meta[key] = value
    return meta


def _from_roman_node(node, kind, tree, path, extras):
    pattern = _roman_pattern(node, path)
    meta = _roman_meta(node, path)
    if kind == "L1":
        data = np.asarray(node.data)
        if data.ndim != 3 or min(data.shape[1:]) <= 2 * NBORDER:
            raise ProductFileError(f"{path}: L1 data of shape {data.shape} are not a ramp cube")
        resultants = data.astype(np.float32)
        reference = _roman_get(node, "reference_read")
        try:
            offset = node.meta.instrument.data_encoding_offset
        except (AttributeError, KeyError):
            offset = None
        b = NBORDER
        encoding = {}
        if reference is not None and offset is not None:
            # flight-like encoding: stored = resultant - reference read + offset
            resultants = resultants + np.asarray(reference, np.float32)[None] - np.float32(offset)
            encoding = dict(reference_read=np.asarray(reference, np.float32)[b:-b, b:-b],
                            data_encoding_offset=int(offset))  # fmt: skip
        resultants = resultants[:, b:-b, b:-b]
        romanisim = tree.get("romanisim") or {}
        dq = romanisim.get("dq") if isinstance(romanisim, dict) else None
        if "dq" in extras:
            dq = extras["dq"]
        if dq is None:
            dq = np.zeros(resultants.shape, np.uint32)
        else:
            dq = np.asarray(dq)
            if dq.shape == data.shape:
                dq = dq[:, b:-b, b:-b]
            dq = dq.astype(np.uint32)
        if resultants.shape[0] != pattern.n_resultants:
            raise ProductFileError(
                f"{path}: {resultants.shape[0]} resultants but the read pattern has "
                f"{pattern.n_resultants}"
            )
        return L1Image(resultants=resultants, dq=dq, pattern=pattern, wcs=_roman_wcs(node),
                       meta=meta, **encoding)  # fmt: skip
    data = np.asarray(node.data)
    var_poisson = np.asarray(extras.get("var_poisson",
                                        _roman_get(node, "var_poisson", np.zeros_like(data))))
    err = extras.get("err", _roman_get(node, "err"))
    var_rnoise = extras.get("var_rnoise", _roman_get(node, "var_rnoise"))
    if var_rnoise is None:
        var_rnoise = (
            np.clip(np.square(np.asarray(err)) - var_poisson, 0, None).astype(data.dtype)
            if err is not None else np.zeros_like(data)
        )  # fmt: skip
    var_rnoise = np.asarray(var_rnoise)
    err = np.sqrt(var_rnoise + var_poisson) if err is None else np.asarray(err)
    dq = np.asarray(_roman_get(node, "dq", np.zeros(data.shape, np.uint32)), np.uint32)
    return L2Image(data=data, var_rnoise=var_rnoise, var_poisson=var_poisson, err=err, dq=dq,
                   pattern=pattern, wcs=_roman_wcs(node), meta=meta)  # fmt: skip


def read_product(path):
    """Read an L1 or L2 ASDF file written by romanjax or romanisim.

    Returns
    -------
    L1Image or L2Image
        romanisim files get romanisim's default gain (2 e/DN) and read noise (5 DN), the
        default read time 3.16247 s, the reference-pixel border trimmed, and (L1) the
        reference read decoded when the file carries one.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ProductFileError (a ValueError)
        If the file is not ASDF, is corrupt, or is not an L1/L2 product.
    """
    return _product(_open_tree(path), path)


def _product(tree, path):
    """The L1Image or L2Image of an opened tree (see :func:`read_product`)."""
    source, kind, node = _classify(tree, path)
    if source == "romanjax":
        return _from_romanjax(node, kind, path)
    return _from_roman(node, kind, tree, path)


def open_product(path):
    """Open an L1 or L2 file once and give its kind and the image to work on.

    One read of the file serves the classification (:func:`file_kind`,
    :func:`has_romanjax_extras`) and the image, which is

    * an :class:`L1Image` or :class:`L2Image` (:func:`read_product`) for romanjax's files in
      either format (its own layout, or a Roman datamodel with the ``romanjax_extras``
      node) and for every L1 file;
    * the roman_datamodels ``ImageModel`` (as :func:`open_datamodel` gives it) for any other
      Roman L2 file, such as romanisim writes: working on the datamodel and saving it keeps
      every array and metadata the file has, which an :class:`L2Image` has no place for.

    Returns
    -------
    source : {"romanjax", "roman"}
        As :func:`file_kind`.
    kind : {"L1", "L2"}
    image : L1Image, L2Image or roman_datamodels DataModel

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ProductFileError (a ValueError)
        If the file is not ASDF, is corrupt, or is not an L1/L2 product.
    """
    tree = _open_tree(path)
    source, kind, node = _classify(tree, path)
    if kind == "L2" and source == "roman" and not isinstance(tree.get("romanjax_extras"), dict):
        import asdf
        import roman_datamodels as rdm

        # the node read above is the whole model (arrays loaded, file closed): wrap it
        # rather than open the file again
        try:
            return source, kind, rdm.open(asdf.AsdfFile({"roman": node}))
        except Exception as error:
            raise ProductFileError(
                f"{path} is not a readable Roman datamodel file: {error}"
            ) from error
    return source, kind, _product(tree, path)


def read_l1(path) -> L1Image:
    """Read an L1 file (romanjax or romanisim); a wrong-kind file raises ProductFileError."""
    product = read_product(path)
    if product.kind != "L1":
        raise ProductFileError(f"{path} is an {product.kind} file, expected an L1 file")
    return product


def read_l2(path) -> L2Image:
    """Read an L2 file (romanjax or romanisim); a wrong-kind file raises ProductFileError."""
    product = read_product(path)
    if product.kind != "L2":
        raise ProductFileError(f"{path} is an {product.kind} file, expected an L2 file")
    return product


def open_datamodel(path):
    """Open a Roman datamodel file with roman_datamodels (e.g. a romanisim L2 ``ImageModel``).

    Raises
    ------
    ImportError
        If roman_datamodels is not installed.
    ProductFileError
        If the file cannot be read as a datamodel.
    """
    import roman_datamodels as rdm

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such file: {path}")
    try:
        return rdm.open(path)
    except Exception as error:
        raise ProductFileError(
            f"{path} is not a readable Roman datamodel file: {error}"
        ) from error


def write_datamodel(model, path):
    """Save a roman_datamodels model to ``path`` atomically. Returns the path."""
    path = Path(path)
    with atomic_path(path) as temporary:
        model.save(temporary)
    return path
