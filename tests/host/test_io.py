"""ASDF I/O: round trips, atomic writes, clear errors, and romanisim's L1/L2 files."""

from __future__ import annotations

import os

import asdf
import numpy as np
import pytest
from conftest import requires_romanisim, requires_stcal

import romanjax
from romanjax.host.io import (
    NBORDER,
    L1Image,
    L2Image,
    ProductFileError,
    file_kind,
    read_l1,
    read_l2,
    read_product,
    write_l1,
    write_l2,
)
from romanjax.host.scene import make_wcs


def make_l1_image(rng, shape=(6, 7)):
    pattern = romanjax.ReadPattern.from_ma_table(4)
    resultants = rng.uniform(1e3, 5e4, (pattern.n_resultants,) + shape).astype(np.float32)
    dq = rng.choice(np.array([0, 2, 4], np.uint32), resultants.shape)
    return L1Image(resultants=resultants, dq=dq, pattern=pattern,
                   gain=rng.uniform(1.8, 2.2, shape), read_noise=5.0,
                   wcs=make_wcs(shape, ra=10.0, dec=-30.0), meta={"seed": 3})  # fmt: skip


def make_l2_image(rng, shape=(6, 7)):
    pattern = romanjax.ReadPattern(((1, 2), (3,), (7, 8, 9)), read_time=2.5)
    data = rng.normal(5, 1, shape).astype(np.float32)
    var_r = rng.uniform(0.01, 0.02, shape).astype(np.float32)
    var_p = rng.uniform(0.01, 0.05, shape).astype(np.float32)
    return L2Image(data=data, var_rnoise=var_r, var_poisson=var_p, err=np.sqrt(var_r + var_p),
                   dq=rng.choice(np.array([0, 4], np.uint32), shape), pattern=pattern,
                   gain=2.0, read_noise=rng.uniform(4, 6, shape),
                   wcs=make_wcs(shape), meta={"note": "test"})  # fmt: skip


def assert_same_wcs(a, b, shape):
    y, x = np.indices(shape)
    np.testing.assert_allclose(
        np.array(a.pixel_to_world_values(x, y)), np.array(b.pixel_to_world_values(x, y)),
        rtol=0, atol=1e-10,
    )  # fmt: skip


def test_l1_round_trip(tmp_path, rng):
    l1 = make_l1_image(rng)
    path = write_l1(tmp_path / "a_L1.asdf", l1)
    back = read_l1(path)
    assert back.kind == "L1" and file_kind(path) == ("romanjax", "L1")
    assert np.array_equal(back.resultants, l1.resultants)
    assert back.resultants.dtype == np.float32
    assert np.array_equal(back.dq, l1.dq) and back.dq.dtype == np.uint32
    assert back.pattern == l1.pattern
    assert np.array_equal(back.gain, l1.gain) and back.read_noise == 5.0
    assert_same_wcs(back.wcs, l1.wcs, l1.shape)
    assert back.meta["seed"] == 3 and "created" in back.meta
    with asdf.open(path) as af:  # provenance
        assert af.tree["romanjax"]["version"] == romanjax.__version__
        assert af.tree["romanjax"]["software"] == "romanjax"


def test_l2_round_trip(tmp_path, rng):
    l2 = make_l2_image(rng)
    back = read_l2(write_l2(tmp_path / "b.asdf", l2))
    for name in ("data", "var_rnoise", "var_poisson", "err", "dq", "read_noise"):
        assert np.array_equal(getattr(back, name), getattr(l2, name)), name
    assert back.pattern == l2.pattern and back.pattern.read_time == 2.5
    assert back.gain == 2.0
    assert_same_wcs(back.wcs, l2.wcs, l2.shape)
    assert back.meta["note"] == "test"


def test_wrong_kind_and_corrupt_files(tmp_path, rng):
    l2_path = write_l2(tmp_path / "x.asdf", make_l2_image(rng))
    with pytest.raises(ProductFileError, match="expected an L1"):
        read_l1(l2_path)
    garbage = tmp_path / "garbage.asdf"
    garbage.write_bytes(b"this is not an asdf file\n" * 10)
    with pytest.raises(ValueError, match="garbage.asdf"):
        read_product(garbage)
    truncated = tmp_path / "truncated.asdf"
    truncated.write_bytes(l2_path.read_bytes()[: len(l2_path.read_bytes()) // 3])
    with pytest.raises(ValueError, match="truncated.asdf"):
        read_l2(truncated)
    other = tmp_path / "other.asdf"
    asdf.AsdfFile({"something": np.arange(3)}).write_to(other)
    with pytest.raises(ProductFileError, match="not a romanjax or Roman"):
        read_product(other)
    with pytest.raises(FileNotFoundError, match="missing.asdf"):
        read_product(tmp_path / "missing.asdf")
    bad_pattern = tmp_path / "bad_pattern.asdf"
    asdf.AsdfFile({"romanjax": {"kind": "L2", "read_pattern": {"reads": [[2], [1]]}}}).write_to(
        bad_pattern
    )
    with pytest.raises(ProductFileError, match="read pattern"):
        read_l2(bad_pattern)


def test_flipped_bytes_fail_the_checksum(tmp_path, rng):
    """A file whose array bytes were damaged is refused (ASDF block checksums are checked),
    never read as data; the command line says so in one line and exits 1."""
    from romanjax.host.cli import main

    path = write_l1(tmp_path / "good_L1.asdf", make_l1_image(rng, shape=(30, 30)))
    data = bytearray(path.read_bytes())
    middle = len(data) // 2  # inside the resultants' block
    data[middle : middle + 8] = bytes(value ^ 0xFF for value in data[middle : middle + 8])
    damaged = tmp_path / "damaged_L1.asdf"
    damaged.write_bytes(bytes(data))
    assert read_l1(path).resultants.shape[1:] == (30, 30)  # the undamaged file reads
    with pytest.raises(ProductFileError, match="damaged_L1.asdf.*checksum"):
        read_l1(damaged)
    assert main(["fit", str(damaged), "-o", str(tmp_path / "out.asdf"), "-q"]) == 1
    assert not (tmp_path / "out.asdf").exists()


def test_atomic_write_keeps_old_file(tmp_path, rng, monkeypatch):
    path = tmp_path / "keep.asdf"
    write_l2(path, make_l2_image(rng))
    original = path.read_bytes()

    def failing_write(self, target, *args, **kwargs):
        with open(target, "wb") as stream:
            stream.write(b"#ASDF 1.0.0\npartial")
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(asdf.AsdfFile, "write_to", failing_write)
    with pytest.raises(OSError, match="disk full"):
        write_l2(path, make_l2_image(rng))
    assert path.read_bytes() == original
    assert sorted(os.listdir(tmp_path)) == ["keep.asdf"]  # no temporary file left behind
    monkeypatch.undo()
    read_l2(path)  # still a valid file


def test_a_file_set_is_written_as_a_unit_and_stale_staging_is_removed(tmp_path, rng):
    from romanjax.host.io import atomic_paths
    from romanjax.host.io._asdf import STALE_STAGING_SECONDS

    a, b = tmp_path / "set_L1.asdf", tmp_path / "set_L2.asdf"
    write_l2(a, make_l2_image(rng))
    write_l2(b, make_l2_image(rng))
    old = a.read_bytes(), b.read_bytes()
    # the second file fails: neither final file changes, although the first was written
    with pytest.raises(OSError, match="simulated"):
        with atomic_paths([a, b]) as (ta, tb):
            write_l2(ta, make_l2_image(rng))
            raise OSError("simulated failure while writing the second file")
    assert (a.read_bytes(), b.read_bytes()) == old
    assert sorted(os.listdir(tmp_path)) == ["set_L1.asdf", "set_L2.asdf"]
    # a file of the set that was never written fails the set too
    with pytest.raises(ProductFileError, match="not written"):
        with atomic_paths([a, b]) as (ta, tb):
            write_l2(ta, make_l2_image(rng))
    assert (a.read_bytes(), b.read_bytes()) == old
    # a staging folder a killed writer left an hour ago is removed by the next write
    stale = tmp_path / ".set_L1.asdf.abc123.part"
    stale.mkdir()
    (stale / "set_L1.asdf").write_bytes(b"partial")
    young = tmp_path / ".set_L2.asdf.def456.part"
    young.mkdir()  # a writer still at work: kept
    past = stale.stat().st_mtime - STALE_STAGING_SECONDS - 60
    os.utime(stale, (past, past))
    with atomic_paths([a, b]) as (ta, tb):
        write_l2(ta, make_l2_image(rng))
        write_l2(tb, make_l2_image(rng))
    assert not stale.exists() and young.exists()
    assert a.read_bytes() != old[0] and b.read_bytes() != old[1]


def test_write_into_missing_folder_is_clear(tmp_path, rng):
    with pytest.raises(ProductFileError, match="does not exist"):
        write_l2(tmp_path / "nope" / "x.asdf", make_l2_image(rng))


# --- romanisim files -------------------------------------------------------------------


@pytest.fixture(scope="module")
def romanisim_files(tmp_path_factory):
    """A small romanisim L1 (with its dq extras) and L2, made offline (no CRDS)."""
    pytest.importorskip("romanisim")
    import galsim
    import roman_datamodels as rdm
    from astropy import units as u
    from astropy.coordinates import SkyCoord
    from romanisim import catalog, image, util
    from romanisim import l1 as romanisim_l1
    from romanisim.models import parameters, wcs

    folder = tmp_path_factory.mktemp("romanisim")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(parameters, "n_pix", 32)
        coord = SkyCoord(ra=270 * u.deg, dec=66 * u.deg)
        meta = util.default_image_meta(coord=coord, filter_name="F158", ma_table=4)
        wcs.fill_in_parameters(meta, coord)
        rng = galsim.UniformDeviate(7)
        cat = catalog.make_dummy_table_catalog(coord, radius=0.003, bandpasses=["F158"],
                                               nobj=5, rng=rng)  # fmt: skip
        l1, extras = image.simulate(meta, cat, usecrds=False, psftype="galsim", level=1,
                                    rng=rng, crparam=None)  # fmt: skip
        b = parameters.nborder
        l1_dq = np.zeros(l1.data.shape, np.uint32)[:, b:-b, b:-b]
        l1_dq[3, 5, 6] = 4
        romanisim_l1.make_asdf(l1.data[:, b:-b, b:-b], dq=l1_dq, metadata=l1.meta,
                               filepath=folder / "sim_L1.asdf")  # fmt: skip
        l2, _ = image.simulate(meta, cat, usecrds=False, psftype="galsim", level=2,
                               rng=rng, crparam=None)  # fmt: skip
        rdm.datamodels.ImageModel(l2).save(folder / "sim_L2.asdf")
    return {"l1": folder / "sim_L1.asdf", "l2": folder / "sim_L2.asdf",
            "l1_data": np.asarray(l1.data), "l1_dq": l1_dq, "l2_data": np.asarray(l2.data)}


@requires_romanisim
def test_read_romanisim_l1(romanisim_files):
    l1 = read_l1(romanisim_files["l1"])
    assert file_kind(romanisim_files["l1"]) == ("roman", "L1")
    raw = romanisim_files["l1_data"]
    assert raw.dtype == np.uint16 and raw.shape[1:] == (32 + 2 * NBORDER,) * 2
    assert l1.resultants.shape == (9, 32, 32)
    b = NBORDER
    assert np.array_equal(l1.resultants, raw[:, b:-b, b:-b].astype(np.float32))
    assert np.array_equal(l1.dq, romanisim_files["l1_dq"])
    assert l1.pattern == romanjax.ReadPattern.from_ma_table(4)
    assert l1.gain == 2.0 and l1.read_noise == 5.0


@requires_romanisim
def test_roman_frame_time_is_honoured(romanisim_files, tmp_path):
    """The read time comes from meta.exposure.frame_time: doubling it halves the slopes."""
    import roman_datamodels as rdm

    doubled = tmp_path / "doubled_L1.asdf"
    with rdm.open(romanisim_files["l1"]) as model:
        frame_time = float(model.meta.exposure.frame_time)
        model.meta.exposure.frame_time = 2 * frame_time
        model.save(doubled)
    original, slow = read_l1(romanisim_files["l1"]), read_l1(doubled)
    assert original.pattern.read_time == pytest.approx(frame_time)
    assert slow.pattern.read_time == pytest.approx(2 * frame_time)
    fits = [romanjax.make_l2(l1.resultants, l1.pattern, read_noise=5.0, gain=2.0,
                             method="casertano") for l1 in (original, slow)]  # fmt: skip
    np.testing.assert_allclose(np.asarray(fits[1].slope), np.asarray(fits[0].slope) / 2,
                               rtol=1e-5, atol=1e-6)  # fmt: skip


@requires_romanisim
def test_read_romanisim_l2(romanisim_files):
    l2 = read_l2(romanisim_files["l2"])
    assert file_kind(romanisim_files["l2"]) == ("roman", "L2")
    assert np.array_equal(l2.data, romanisim_files["l2_data"])
    assert l2.pattern == romanjax.ReadPattern.from_ma_table(4)
    assert l2.wcs is not None
    x, y = l2.wcs(np.array([3.0]), np.array([4.0]))  # gwcs forward transform works
    assert np.all(np.isfinite(x)) and np.all(np.isfinite(y))
    np.testing.assert_allclose(l2.err**2, l2.var_rnoise + l2.var_poisson, rtol=1e-4, atol=1e-9)
    with pytest.raises(ProductFileError, match="expected an L1"):
        read_l1(romanisim_files["l2"])


@requires_romanisim
def test_romanisim_l2_round_trips_as_romanjax_file_with_gwcs(romanisim_files, tmp_path):
    l2 = read_l2(romanisim_files["l2"])
    back = read_l2(write_l2(tmp_path / "converted.asdf", l2))
    assert file_kind(tmp_path / "converted.asdf") == ("romanjax", "L2")
    assert type(back.wcs).__name__ == type(l2.wcs).__name__ == "WCS"
    assert type(back.wcs).__module__.startswith("gwcs")
    x, y = np.array([1.0, 20.0]), np.array([3.0, 30.0])
    np.testing.assert_allclose(np.array(back.wcs(x, y)), np.array(l2.wcs(x, y)), atol=1e-12)
    assert np.array_equal(back.data, l2.data) and np.array_equal(back.dq, l2.dq)


# -- Roman datamodel files written by romanjax (romanjax.host.io.write_roman_l1 / write_roman_l2) --

def _integer_l1(rng):
    l1 = make_l1_image(rng)
    l1.resultants = np.rint(l1.resultants)
    return l1


def test_roman_l1_opens_and_validates_in_roman_datamodels_and_round_trips(tmp_path, rng):
    rdm = pytest.importorskip("roman_datamodels")
    from romanjax.host.io import write_roman_l1

    l1 = _integer_l1(rng)
    path = write_roman_l1(tmp_path / "r_L1.asdf", l1)
    with rdm.open(path) as model:
        model.validate()
        assert type(model).__name__ == "ScienceRawModel"
        b = NBORDER
        assert model.data.dtype == np.uint16
        assert model.data.shape == (l1.pattern.n_resultants, 6 + 2 * b, 7 + 2 * b)
        np.testing.assert_array_equal(model.data[:, b:-b, b:-b], l1.resultants)
        assert not model.data[:, :b].any()  # the reference-pixel border carries no signal
        assert model.meta.exposure.read_pattern == [list(r) for r in l1.pattern.reads]
        assert model.meta.exposure.nresultants == l1.pattern.n_resultants
        assert model.meta.exposure.frame_time == pytest.approx(l1.pattern.read_time)
    back = read_l1(path)
    assert file_kind(path) == ("roman", "L1")
    assert np.array_equal(back.resultants, l1.resultants)
    assert np.array_equal(back.dq, l1.dq) and back.pattern == l1.pattern
    assert np.array_equal(back.gain, l1.gain) and back.read_noise == 5.0
    assert_same_wcs(back.wcs, l1.wcs, l1.shape)
    assert back.meta["seed"] == 3


def test_roman_l2_opens_and_validates_with_an_equal_gwcs(tmp_path, rng):
    rdm = pytest.importorskip("roman_datamodels")
    from romanjax.host.io import write_roman_l2

    l2 = make_l2_image(rng)
    path = write_roman_l2(tmp_path / "r_L2.asdf", l2)
    with rdm.open(path) as model:
        model.validate()
        assert type(model).__name__ == "ImageModel"
        np.testing.assert_array_equal(model.data, l2.data)
        np.testing.assert_array_equal(model.dq, l2.dq)
        # the schema's float16 variances hold about three significant digits
        np.testing.assert_allclose(np.asarray(model.var_poisson, np.float32), l2.var_poisson,
                                   rtol=1e-3)  # fmt: skip
        np.testing.assert_allclose(np.asarray(model.err, np.float32), l2.err, rtol=1e-3)
        # reference-pixel arrays: Roman's shapes, no stand-in values
        n = l2.pattern.n_resultants
        assert model.border_ref_pix_left.shape == (n, 6, NBORDER)
        assert model.border_ref_pix_top.shape == (n, NBORDER, 7)
        assert model.amp33.shape[:2] == (n, 6)
        for name in ("border_ref_pix_left", "border_ref_pix_top", "amp33", "dq2"):
            assert not np.asarray(getattr(model, name)).any(), name
        # meta.wcs: a gwcs equal to the astropy TAN WCS the image was made with
        y, x = np.indices(l2.shape)
        np.testing.assert_allclose(np.array(model.meta.wcs(x, y)),
                                   np.array(l2.wcs.pixel_to_world_values(x, y)),
                                   rtol=0, atol=1e-9)  # fmt: skip
    back = read_l2(path)
    for name in ("data", "var_rnoise", "var_poisson", "err", "dq"):
        assert np.array_equal(getattr(back, name), getattr(l2, name)), name  # full precision
    assert back.pattern == l2.pattern and back.meta["note"] == "test"
    # without a WCS, meta.wcs is None (romancal's ramp-fit output before assign_wcs)
    l2.wcs = None
    with rdm.open(write_roman_l2(tmp_path / "nowcs_L2.asdf", l2)) as model:
        model.validate()
        assert model.meta.wcs is None


def test_roman_files_name_the_ma_table_of_their_read_pattern(tmp_path, rng):
    """meta.exposure.ma_table_number is the MA table whose reads the pattern has (whatever
    the read time), and the datamodel's default for any other pattern."""
    rdm = pytest.importorskip("roman_datamodels")
    from romanjax.host.io import write_roman_l1, write_roman_l2

    default = rdm.datamodels.ImageModel.create_fake_data(shape=(2, 2))
    unknown = default.meta.exposure.ma_table_number
    assert unknown not in romanjax.MA_TABLES
    l1 = _integer_l1(rng)
    l1.pattern = romanjax.ReadPattern.from_ma_table(4, read_time=2.0)
    l2 = make_l2_image(rng)  # not an MA table
    for write, product, expected, name in ((write_roman_l1, l1, 4, "a_L1.asdf"),
                                           (write_roman_l2, l2, unknown, "a_L2.asdf")):
        path = write(tmp_path / name, product)
        with rdm.open(path) as model:
            model.validate()
            assert model.meta.exposure.ma_table_number == expected
        assert read_product(path).pattern == product.pattern
    l2.pattern = romanjax.ReadPattern.from_ma_table(109)  # skips reads
    with rdm.open(write_roman_l2(tmp_path / "b_L2.asdf", l2)) as model:
        assert model.meta.exposure.ma_table_number == 109
    assert read_l2(tmp_path / "b_L2.asdf").pattern == romanjax.ReadPattern.from_ma_table(109)


def test_roman_l1_keeps_its_uint32_resultant_flags_in_the_extras(tmp_path, rng):
    """Roman's per-resultant flags are uint8: the L1 has none, and the extras hold every bit."""
    rdm = pytest.importorskip("roman_datamodels")
    from romanjax.host.io import write_roman_l1

    l1 = _integer_l1(rng)
    l1.dq = l1.dq | np.where(rng.random(l1.dq.shape) < 0.3, romanjax.dq.NONLINEAR,
                             0).astype(np.uint32)  # fmt: skip
    path = write_roman_l1(tmp_path / "flags_L1.asdf", l1)
    with rdm.open(path) as model:
        assert "resultantdq" not in model and "groupdq" not in model
    with asdf.open(path) as af:
        extras = np.asarray(af["romanjax_extras"]["dq"])
    assert extras.dtype == np.uint32 and np.array_equal(extras, l1.dq)
    back = read_l1(path)
    assert back.dq.dtype == np.uint32 and np.array_equal(back.dq, l1.dq)
    assert (back.dq & romanjax.dq.NONLINEAR).any()


def test_roman_writer_gets_the_models_node_from_roman_datamodels(rng):
    """The Roman writers put romanjax_extras beside the model's node, which roman_datamodels
    offers only as the private ``DataModel._instance``: if a release drops or changes it,
    this fails here (and the writers raise a clear error instead of writing a bad file)."""
    pytest.importorskip("roman_datamodels")
    from roman_datamodels.datamodels import TaggedObjectNode

    from romanjax.host.io import to_roman_l1, to_roman_l2
    from romanjax.host.io._roman import _datamodel_node

    for model, _ in (to_roman_l1(_integer_l1(rng)), to_roman_l2(make_l2_image(rng))):
        node = _datamodel_node(model)
        assert isinstance(node, TaggedObjectNode)
        assert type(node).__name__ in ("WfiScienceRaw", "WfiImage")
        model.meta.filename = "changed.asdf"  # the model's node, not a copy
        assert node.meta.filename == "changed.asdf"
        assert node.data is model.data
    with pytest.raises(RuntimeError, match="cannot get the node"):
        _datamodel_node({"meta": {}})


def test_roman_l1_refuses_values_uint16_cannot_hold(tmp_path, rng):
    pytest.importorskip("roman_datamodels")
    from romanjax.host.io import write_roman_l1

    l1 = make_l1_image(rng)  # fractional DN
    with pytest.raises(ValueError, match="`resultants`"):
        write_roman_l1(tmp_path / "x_L1.asdf", l1)
    l1 = _integer_l1(rng)
    l1.resultants[0, 0, 0] = 70000.0
    with pytest.raises(ValueError, match="uint16"):
        write_roman_l1(tmp_path / "x_L1.asdf", l1)
    assert not (tmp_path / "x_L1.asdf").exists()


def test_ramp_fit_datamodel_turns_a_ramp_model_into_romancals_image_model():
    rdm = pytest.importorskip("roman_datamodels")
    import jax

    from romanjax.host.io import ramp_fit_datamodel

    pattern = romanjax.ReadPattern.from_ma_table(4)
    shape = (10, 12)
    rng = np.random.default_rng(11)
    counts = rng.poisson(30.0 * pattern.exposure_time, shape)
    l1 = romanjax.simulate_l1(jax.random.key(5), counts, pattern, read_noise=5.0, gain=2.0)
    ramp = rdm.datamodels.RampModel.create_fake_data(shape=(pattern.n_resultants,) + shape)
    ramp.data = np.asarray(l1.resultants, np.float32)
    groupdq = np.zeros(ramp.data.shape, np.uint8)
    groupdq[:, 2, 3] = romanjax.dq.SATURATED  # saturated from the start
    groupdq[6:, 4, 5] = romanjax.dq.SATURATED  # saturated late: fitted, and flagged (stcal)
    ramp.groupdq = groupdq
    pixeldq = np.zeros(shape, np.uint32)
    pixeldq[7, 7] = 2**20  # a pixel flag from the mask is carried through
    ramp.pixeldq = pixeldq
    ramp.meta.exposure.read_pattern = [list(r) for r in pattern.reads]
    ramp.meta.exposure.frame_time = pattern.read_time
    gain = rdm.datamodels.GainRefModel.create_fake_data(shape=(shape[0] + 8, shape[1] + 8))
    gain.data = np.full(gain.data.shape, 2.0, np.float32)  # with the reference border
    image = ramp_fit_datamodel(ramp, read_noise=np.full(shape, 5.0), gain=gain)
    assert type(image).__name__ == "ImageModel"
    image.validate()
    direct = romanjax.make_l2(ramp.data, pattern, read_noise=5.0, gain=2.0,
                              dq=groupdq.astype(np.uint32), method="likely",
                              detect_jumps=True, pixel_flags="romancal")  # fmt: skip
    np.testing.assert_array_equal(image.data, np.asarray(direct.slope, np.float32))
    assert image.dq[2, 3] == romanjax.dq.SATURATED | romanjax.dq.DO_NOT_USE
    assert image.dq[4, 5] == romanjax.dq.SATURATED and image.dq[7, 7] == 2**20
    assert image.meta.exposure.read_pattern == [list(r) for r in pattern.reads]
    assert image.meta.cal_step.ramp_fit == "COMPLETE" and image.meta.wcs is None
    # the sky rate comes back: 30 e/s = 15 DN/s
    assert abs(np.median(image.data) - 15.0) < 0.5
    with pytest.raises(ValueError, match="`gain`"):
        ramp_fit_datamodel(ramp, read_noise=5.0, gain=np.ones((3, 3)))


@requires_stcal
@pytest.mark.reference
def test_saturation_flags_equal_stcals_as_romancal_calls_it():
    """With the read pattern, the flags are stcal ``flag_saturated_pixels``'s as romancal's
    saturation step calls it (no growth into neighbours, ``read_pattern`` given), bit for
    bit: the forward pass, the A/D floor, the diluted resultant before the first saturated
    one and the saturating event within resultant 1; NaN levels and the reference file's
    NO_SAT_CHECK pixels checked against 65536; the pixel flags taken from the file."""
    from stcal.saturation.saturation import flag_saturated_pixels

    from romanjax import dq as dqflags
    from romanjax.host.io import saturation_flags, saturation_pixel_flags

    # resultant 1 of several reads, so a saturating event within it can hide
    pattern = romanjax.ReadPattern([[1], [2, 3, 4], [5, 6, 7, 8], list(range(9, 15)),
                                    list(range(15, 23)), [23]])  # fmt: skip
    rng = np.random.default_rng(3)
    shape, n = (40, 50), pattern.n_resultants
    level = rng.uniform(3e4, 6e4, shape)
    level[rng.random(shape) < 0.05] = np.nan
    rate = 10 ** rng.uniform(0, 4.5, shape)  # [DN/s]: from faint to saturating in read 2
    tbar = np.array([np.mean(r) for r in pattern.reads]) * pattern.read_time
    data = 1000 + rate[None] * tbar[:, None, None] + rng.normal(0, 20, (n,) + shape)
    event = rng.random(shape) < 0.1  # a large jump from resultant 1 on
    data[1:, event] += rng.uniform(1e4, 6e4, event.sum())
    # a saturating event in read 4, the last of resultant 1, whose mean stays below the level
    late = (rng.random(shape) < 0.1) & (rate < 100)
    charge = np.nan_to_num(level[late], nan=6e4) + rng.uniform(1000, 5000, late.sum())
    data[1, late] += charge / 3
    data[2:, late] += charge
    data[:, rng.random(shape) < 0.03] = 0.0
    data = np.clip(np.round(data), 0, 65535).astype(np.float32)
    level_dq = np.where(rng.random(shape) < 0.1, dqflags.NO_SAT_CHECK, 0).astype(np.uint32)
    level_dq[:5] |= dqflags.DO_NOT_USE
    got = saturation_flags(data, level, pattern, level_dq)
    names = {"DO_NOT_USE": 1, "SATURATED": 2, "AD_FLOOR": 64, "NO_SAT_CHECK": 2**21}
    want, want_pixel, _ = flag_saturated_pixels(
        data[None].copy(), np.zeros((1, n) + shape, np.uint32), np.zeros(shape, np.uint32),
        level.copy(), level_dq.copy(), 65535.0, names, n_pix_grow_sat=0,
        read_pattern=pattern.reads)  # fmt: skip
    np.testing.assert_array_equal(got, want[0])
    np.testing.assert_array_equal(saturation_pixel_flags(level, level_dq), want_pixel)
    # NO_SAT_CHECK pixels that reach the level are not flagged
    ignored = (level_dq & dqflags.NO_SAT_CHECK) != 0
    assert np.any(ignored & (data[-1] >= np.nan_to_num(level, nan=7e4)))
    assert not np.any((got[-1] & dqflags.SATURATED)[ignored & (data[-1] < 65535)])
    # every pass is exercised: DO_NOT_USE without SATURATED or AD_FLOOR (the diluted
    # resultants), on resultant 1 and on later ones
    diluted = ((got & dqflags.DO_NOT_USE) != 0) & ((got & dqflags.AD_FLOOR) == 0)
    assert diluted[1].sum() > 5 and diluted[2:].sum() > 5, diluted.sum(axis=(1, 2))
    assert np.any(got & dqflags.AD_FLOOR) and np.any(got & dqflags.SATURATED)
    # the lists of read numbers work as the pattern does; a mismatch is refused
    np.testing.assert_array_equal(saturation_flags(data, level, pattern.reads, level_dq), got)
    with pytest.raises(ValueError, match="`read_pattern` has 5 resultants"):
        saturation_flags(data, level, pattern.reads[:-1])


def test_read_reference_trims_the_border_and_names_bad_shapes():
    from romanjax.host.io import read_reference, saturation_flags

    full = np.arange(14 * 16, dtype=float).reshape(14, 16)
    np.testing.assert_array_equal(read_reference(full, "gain", (6, 8)), full[4:-4, 4:-4])
    np.testing.assert_array_equal(read_reference(full[4:-4, 4:-4], "flat", (6, 8)),
                                  full[4:-4, 4:-4])  # fmt: skip
    with pytest.raises(ValueError, match="`read_noise`.*shape"):
        read_reference(np.ones((5, 5)), "read_noise", (6, 8))
    with pytest.raises(ValueError, match="non-finite"):
        read_reference(np.full((6, 8), np.nan), "gain", (6, 8))
    with pytest.raises(ValueError, match="`kind`"):
        read_reference(full, "bias", (6, 8))
    # saturation: the first resultant at or above the level and every later one
    resultants = np.array([[1.0, 5.0], [6.0, 5.0], [4.0, 5.0]])  # [3 resultants, 2 pixels]
    flags = saturation_flags(resultants, np.array([5.5, 9.0]))
    np.testing.assert_array_equal(flags[:, 0], [0, 2, 2])
    np.testing.assert_array_equal(flags[:, 1], [0, 0, 0])
