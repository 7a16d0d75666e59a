"""The `romanjax` command: each subcommand run in a temporary folder, and its files opened."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from astropy.table import Table
from conftest import requires_romanisim

import romanjax
from romanjax.host.cli import main
from romanjax.host.io import read_l1, read_l2
from romanjax.host.scene import make_scene

needs_pipeline = pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in
        ("romanjax.ramp._casertano", "romanjax.l1._apportion", "romanjax.l1._simulate")),
    reason="needs romanjax.simulate_l1, apportion_counts and fit_ramps_casertano",
)  # fmt: skip

SIZE = 48


@pytest.fixture(autouse=True)
def _asdf_manifest_parser_restored():
    """The command switches asdf's manifest parser for its own process (libyaml); tests run
    it in the test process, so each test gives asdf back its own parser afterwards and later
    tests see asdf as a library caller has it."""
    try:
        from asdf.extension import _manifest
    except ImportError:
        yield
        return
    parser = getattr(_manifest, "yaml", None)
    yield
    if parser is not None:
        _manifest.yaml = parser


def test_help_subprocess():
    """The installed console script answers --help (falls back to `python -m`)."""
    script = shutil.which("romanjax") or str(Path(sys.executable).with_name("romanjax"))
    command = [script] if Path(script).exists() else [sys.executable, "-m", "romanjax.host.cli"]
    result = subprocess.run(command + ["--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0
    for word in ("simulate", "fit", "inject"):
        assert word in result.stdout


def test_console_exit_keeps_status_streams_and_exit_handlers(tmp_path):
    """The executable ends the process as soon as the command returns (``console_main``):
    with the command's exit status, its messages flushed and the ``atexit`` handlers run."""
    code = (
        "import atexit, sys\n"
        "atexit.register(lambda: print('exit handler ran', flush=False))\n"
        "sys.argv = ['romanjax', 'fit', sys.argv[1]]\n"
        "print('before', end='')\n"
        "from romanjax.host.cli import console_main\n"
        "console_main()\n"
        "print('not reached')\n"
    )
    missing = tmp_path / "missing_L1.asdf"
    result = subprocess.run([sys.executable, "-c", code, str(missing)], capture_output=True,
                            text=True, timeout=120)  # fmt: skip
    assert result.returncode == 1
    assert "romanjax fit: error:" in result.stderr and "missing_L1.asdf" in result.stderr
    assert result.stdout.startswith("before")
    assert "exit handler ran" in result.stdout
    assert "not reached" not in result.stdout


@pytest.mark.single_pass  # parsing YAML does not depend on the float dtype
def test_asdf_manifests_parse_the_same_through_libyaml():
    """The command parses asdf's extension manifests with libyaml: every manifest registered
    with asdf (asdf's, astropy's, gwcs's, roman_datamodels') gives the same Python objects
    as PyYAML's pure-Python ``safe_load``, and the extensions built from them load."""
    yaml = pytest.importorskip("yaml")
    if not getattr(yaml, "__with_libyaml__", False):
        pytest.skip("PyYAML without libyaml: the command keeps asdf's own parser")
    import asdf
    from asdf.extension import ManifestExtension, _manifest

    from romanjax.host import cli

    loader = cli._LibyamlSafeLoad(yaml)
    resources = asdf.get_config().resource_manager
    manifests = [uri for uri in resources if "/manifests/" in uri]
    assert len(manifests) >= 20  # asdf's core and standard, astropy, gwcs, roman_datamodels
    for uri in manifests:
        assert loader.safe_load(resources[uri]) == yaml.safe_load(resources[uri]), uri
    assert loader.YAMLError is yaml.YAMLError  # the rest is PyYAML's own
    assert cli._parse_asdf_manifests_with_libyaml()
    assert isinstance(_manifest.yaml, cli._LibyamlSafeLoad)
    assert cli._parse_asdf_manifests_with_libyaml()  # a second call keeps the one loader
    assert _manifest.yaml._yaml is yaml
    uri = next(u for u in manifests if "roman" in u)
    extension = ManifestExtension.from_uri(uri)
    assert extension.extension_uri == yaml.safe_load(resources[uri])["extension_uri"]


@pytest.mark.single_pass  # parsing YAML does not depend on the float dtype
def test_roman_datamodels_imports_with_libyaml_manifests():
    """The command imports roman_datamodels with ``yaml.safe_load`` parsing by libyaml, for
    that import only: in a fresh process the import goes through libyaml once per RAD
    datamodel manifest, builds its node classes from the same objects as PyYAML's
    pure-Python parser gives, and leaves ``yaml.safe_load`` as it was; a second call (the
    package imported) does nothing."""
    yaml = pytest.importorskip("yaml")
    pytest.importorskip("roman_datamodels")
    if not getattr(yaml, "__with_libyaml__", False):
        pytest.skip("PyYAML without libyaml: the command imports roman_datamodels as usual")
    code = (
        "import sys, yaml\n"
        "from romanjax.host import cli\n"
        "assert 'roman_datamodels' not in sys.modules\n"
        "parsed = []\n"
        "libyaml = cli._LibyamlSafeLoad.safe_load\n"
        "def counted(self, stream):  # calls made by roman_datamodels only\n"
        "    if sys._getframe(1).f_globals['__name__'].startswith('roman_datamodels'):\n"
        "        parsed.append(1)\n"
        "    return libyaml(self, stream)\n"
        "cli._LibyamlSafeLoad.safe_load = counted\n"
        "pure = yaml.safe_load\n"
        "assert cli._import_roman_datamodels_with_libyaml()\n"
        "assert yaml.safe_load is pure\n"
        "assert not cli._import_roman_datamodels_with_libyaml()\n"
        "import importlib.resources, rad.resources\n"
        "from roman_datamodels._stnode import _stnode\n"
        "folder = importlib.resources.files(rad.resources) / 'manifests'\n"
        "paths = [p for p in folder.iterdir() if 'datamodels-' in p.name]\n"
        "expected = {m['id']: m for m in (pure(p.read_bytes()) for p in paths)}\n"
        "built = {m['id']: m for m in _stnode.DATAMODEL_MANIFESTS}\n"
        "assert built == expected, sorted(set(built) ^ set(expected))\n"
        "print(len(parsed), len(built))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr
    parsed, manifests = (int(word) for word in result.stdout.split())
    assert manifests >= 1
    assert parsed == manifests


@pytest.mark.parametrize("sub", ["simulate", "fit", "inject"])
def test_help_every_subcommand(sub, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([sub, "--help"])
    assert exit_info.value.code == 0
    assert "usage: romanjax " + sub in capsys.readouterr().out


def test_no_command_and_bad_options(capsys):
    assert main([]) != 0
    with pytest.raises(SystemExit) as exit_info:
        main(["simulate", "--size", "-3"])
    assert exit_info.value.code == 2
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "x.asdf", "--method", "nonsense"])
    assert exit_info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


@pytest.mark.parametrize(("options", "message"), [
    (["simulate", "--seed", "1180591620717411303424"], "--seed: expected an integer from 0"),
    (["simulate", "--seed", "-1"], "--seed: expected an integer from 0"),
    (["simulate", "--gain", "inf"], "--gain: expected a finite number"),
    (["simulate", "--read-noise", "inf"], "--read-noise: expected a finite number"),
    (["simulate", "--sky", "nan"], "--sky: expected a finite number"),
    (["fit", "x.asdf", "--gain", "inf"], "--gain: expected a finite number"),
    (["fit", "x.asdf", "--read-noise", "-1"], "--read-noise: expected a non-negative number"),
])  # fmt: skip
def test_bad_option_values_name_the_option(options, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(options)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


@pytest.fixture(scope="module")
def simulated(tmp_path_factory):
    if any(importlib.util.find_spec(m) is None for m in
           ("romanjax.ramp._casertano", "romanjax.l1._apportion", "romanjax.l1._simulate")):
        pytest.skip("needs simulate_l1, apportion_counts and fit_ramps_casertano")  # fmt: skip
    folder = tmp_path_factory.mktemp("sim") / "out"
    status = main(["simulate", "--size", str(SIZE), "--seed", "4", "--output", str(folder),
                   "-q"])  # fmt: skip
    assert status == 0
    return folder


@needs_pipeline
def test_simulate_writes_readable_files(simulated):
    l1 = read_l1(simulated / "romanjax_L1.asdf")
    l2 = read_l2(simulated / "romanjax_L2.asdf")
    pattern = romanjax.ReadPattern.from_ma_table(4)
    assert l1.resultants.shape == (pattern.n_resultants, SIZE, SIZE)
    assert l1.pattern == pattern and l2.pattern == pattern
    assert l2.data.shape == (SIZE, SIZE)
    assert np.all(np.isfinite(l2.data)) and np.all(l2.var_poisson >= 0)
    np.testing.assert_allclose(l2.err**2, l2.var_rnoise + l2.var_poisson, rtol=1e-5)
    catalog = Table.read(simulated / "romanjax_catalog.ecsv")
    assert {"x", "y", "ra", "dec", "flux"} <= set(catalog.colnames) and len(catalog) >= 2
    # the scene is in the image: sky 1 e/s = 0.5 DN/s median, and the fitted image follows
    # the (deterministic) scene it was simulated from: same mean rate [e/s] within 3%
    # (Poisson + read noise on 2304 pixels is < 1%), pixel values strongly correlated
    assert 0.3 < np.median(l2.data) < 0.8
    scene = make_scene((SIZE, SIZE), seed=4)
    assert abs(np.mean(l2.data) * 2.0 / np.mean(scene.rate) - 1) < 0.03
    assert np.corrcoef(l2.data.ravel(), scene.rate.ravel())[0, 1] > 0.8
    # WCS stored: the catalog's ra/dec map back to its x/y
    x, y = l2.wcs.world_to_pixel_values(catalog["ra"], catalog["dec"])
    np.testing.assert_allclose(x, catalog["x"], atol=1e-6)
    png = (simulated / "romanjax_L2.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_simulate_writes_roman_datamodels_by_default_and_romanjax_files_on_request(
        simulated, tmp_path):  # fmt: skip
    rdm = pytest.importorskip("roman_datamodels")
    from romanjax.host.io import file_kind

    for name, model_type in (("romanjax_L1.asdf", "ScienceRawModel"),
                             ("romanjax_L2.asdf", "ImageModel")):  # fmt: skip
        assert file_kind(simulated / name)[0] == "roman"
        with rdm.open(simulated / name) as model:
            model.validate()
            assert type(model).__name__ == model_type
    out = tmp_path / "own"
    assert main(["simulate", "--size", "16", "--output", str(out), "-q", "--no-png",
                 "--product-format", "romanjax"]) == 0  # fmt: skip
    assert file_kind(out / "romanjax_L1.asdf") == ("romanjax", "L1")
    assert file_kind(out / "romanjax_L2.asdf") == ("romanjax", "L2")
    # detector and start time: given, recorded in the Roman meta, carried through `fit`
    with rdm.open(simulated / "romanjax_L1.asdf") as model:
        assert model.meta.instrument.detector == "WFI07"
        assert model.meta.instrument.optical_element == "F158"
    sca3 = tmp_path / "sca3"
    assert main(["simulate", "--size", "16", "--output", str(sca3), "-q", "--no-png",
                 "--detector", "3", "--start-time", "2027-03-01T12:00:00"]) == 0  # fmt: skip
    assert main(["fit", str(sca3 / "romanjax_L1.asdf"), "-o", str(sca3 / "refit.asdf"),
                 "-q"]) == 0  # fmt: skip
    for name in ("romanjax_L1.asdf", "romanjax_L2.asdf", "refit.asdf"):
        with rdm.open(sca3 / name) as model:
            assert model.meta.instrument.detector == "WFI03", name
            assert model.meta.exposure.start_time.isot.startswith("2027-03-01T12:00:00"), name
    assert main(["simulate", "--size", "16", "--output", str(tmp_path / "bad"), "-q",
                 "--start-time", "yesterday"]) == 1  # fmt: skip


@needs_pipeline
def test_fit_command_matches_simulate(simulated, tmp_path, capsys):
    out = tmp_path / "refit_L2.asdf"
    assert main(["fit", str(simulated / "romanjax_L1.asdf"), "-o", str(out), "-q"]) == 0
    assert str(out) in capsys.readouterr().out
    refit = read_l2(out)
    original = read_l2(simulated / "romanjax_L2.asdf")
    np.testing.assert_allclose(refit.data, original.data, rtol=1e-6, atol=1e-6)
    assert np.array_equal(refit.dq, original.dq)
    assert refit.meta["method"] == "likely"  # romancal's default fit: with jump detection
    assert refit.meta["jump_detection"] and not refit.meta["truth_flags"]
    assert original.meta["method"] == "likely" and original.meta["cosmic_rays"]


@needs_pipeline
def test_fit_finds_jumps_and_ignores_truth_flags_by_default(tmp_path):
    """`romanjax fit` finds a jump in the resultants alone (likely, as romancal's default;
    casertano too), and uses the simulator's true cosmic-ray flags only when asked."""
    from romanjax.host.io import L1Image, write_l1

    pattern = romanjax.ReadPattern.from_ma_table(4)
    rng = np.random.default_rng(5)
    counts = rng.poisson(20.0 * pattern.exposure_time, (12, 12))
    l1 = romanjax.simulate_l1(jax.random.key(3), counts, pattern, read_noise=5.0, gain=2.0)
    resultants = np.array(l1.resultants, np.float32)
    dq = np.array(l1.dq, np.uint32)
    jumped, flagged = (5, 7), (2, 3)
    resultants[4:, jumped[0], jumped[1]] += 3000.0  # a cosmic ray no flag records [DN]
    dq[4:, flagged[0], flagged[1]] |= romanjax.dq.JUMP_DET  # a "true" hit with no jump
    path = write_l1(tmp_path / "cr_L1.asdf",
                    L1Image(resultants=resultants, dq=dq, pattern=pattern))  # fmt: skip

    def fit(*options):
        out = tmp_path / f"fit{len(list(tmp_path.iterdir()))}_L2.asdf"
        assert main(["fit", str(path), "-o", str(out), "-q", *options]) == 0
        return read_l2(out)

    jump = romanjax.dq.JUMP_DET
    default = fit()
    assert default.meta["method"] == "likely" and default.meta["jump_detection"]
    assert default.dq[jumped] & jump and not default.dq[flagged] & jump
    assert np.count_nonzero(default.dq & jump) == 1
    clean = np.delete(default.data.ravel(), jumped[0] * 12 + jumped[1])
    # the jump is fitted around: the pixel's rate is that of the others [DN/s], within noise
    assert abs(default.data[jumped] - np.median(clean)) < 5 * np.std(clean)

    blind = fit("--no-jumps")
    assert not blind.meta["jump_detection"] and not blind.dq[jumped] & jump
    assert blind.data[jumped] - np.median(clean) > 20 * np.std(clean)

    truth = fit("--truth-flags")
    assert truth.meta["truth_flags"] and truth.dq[flagged] & jump and truth.dq[jumped] & jump

    casertano = fit("--method", "casertano")
    assert casertano.meta["jump_detection"] and casertano.dq[jumped] & jump
    assert abs(casertano.data[jumped] - np.median(clean)) < 5 * np.std(clean)


@needs_pipeline
def test_inject_command(simulated, tmp_path):
    catalog = tmp_path / "new_sources.csv"
    Table({"x": [12.0, 35.0], "y": [30.0, 14.0], "flux": [800.0, 1500.0]}).write(catalog)
    out = tmp_path / "injected.asdf"
    source = simulated / "romanjax_L2.asdf"
    assert main(["inject", str(source), str(catalog), "-o", str(out), "-q"]) == 0
    before, after = read_l2(source), read_l2(out)
    delta = after.data.astype(np.float64) - before.data
    for x, y, f in [(12, 30, 800.0), (35, 14, 1500.0)]:
        assert delta[y - 8: y + 9, x - 8: x + 9].sum() * 2.0 > 0.7 * f
    assert after.meta["injected_sources"] == 2
    assert np.array_equal(after.dq, before.dq)


@needs_pipeline
def test_inject_reports_sources_centred_off_the_image(simulated, tmp_path, capsys):
    catalog = tmp_path / "edge.csv"
    # row 1 just off the right edge (its wings fall on the image), row 2 far away
    Table({"x": [20.0, SIZE + 1.0, 500.0], "y": [20.0, 10.0, 20.0],
           "flux": [800.0, 5000.0, 800.0]}).write(catalog)  # fmt: skip
    out = tmp_path / "edge_injected.asdf"
    capsys.readouterr()
    assert main(["inject", str(simulated / "romanjax_L2.asdf"), str(catalog), "-o", str(out),
                 "-q"]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert "2 of 3 sources are centred off the image (catalog rows 1, 2)" in printed
    before, after = read_l2(simulated / "romanjax_L2.asdf"), read_l2(out)
    delta = after.data.astype(np.float64) - before.data
    assert delta[5:16, SIZE - 3:].sum() > 0  # the wings of the source just off the edge


def test_user_errors_exit_nonzero_without_traceback(tmp_path, capsys):
    missing = tmp_path / "missing.asdf"
    assert main(["fit", str(missing)]) == 1
    err = capsys.readouterr().err
    assert "missing.asdf" in err and "Traceback" not in err
    corrupt = tmp_path / "corrupt.asdf"
    corrupt.write_text("not asdf")
    assert main(["fit", str(corrupt)]) == 1
    assert "corrupt.asdf" in capsys.readouterr().err
    assert main(["inject", str(corrupt), str(tmp_path / "cat.csv")]) == 1
    assert main(["simulate", "--ma-table", "99", "--output", str(tmp_path / "o")]) == 1
    assert "--ma-table" in capsys.readouterr().err


@needs_pipeline
def test_wrong_kind_and_bad_catalog(simulated, tmp_path, capsys):
    assert main(["fit", str(simulated / "romanjax_L2.asdf"), "-o", str(tmp_path / "x")]) == 1
    assert "expected an L1" in capsys.readouterr().err
    assert main(["inject", str(simulated / "romanjax_L1.asdf"), "c.csv"]) == 1
    assert "no such file: c.csv" in capsys.readouterr().err
    bad = tmp_path / "bad.csv"
    Table({"x": [1.0], "y": [2.0]}).write(bad)
    assert main(["inject", str(simulated / "romanjax_L2.asdf"), str(bad)]) == 1
    assert "flux" in capsys.readouterr().err


@needs_pipeline
def test_inject_into_an_l1_file(simulated, tmp_path):
    """`romanjax inject` on an L1 adds the sources to its resultants; `romanjax fit` of the
    result shows them."""
    catalog = tmp_path / "stars.csv"
    Table({"x": [20.0], "y": [24.0], "flux": [3000.0]}).write(catalog)
    l1_path = simulated / "romanjax_L1.asdf"
    out = tmp_path / "injected_L1.asdf"
    assert main(["inject", str(l1_path), str(catalog), "-o", str(out), "-q"]) == 0
    before, after = read_l1(l1_path), read_l1(out)
    assert after.meta["injected_sources"] == 1 and after.pattern == before.pattern
    delta = after.resultants[-1].astype(np.float64) - before.resultants[-1]
    assert delta[24, 20] > 1000  # [DN] at the star's centre
    assert np.abs(delta[:, 40:]).max() <= 5  # the Airy wings only, far from the star
    fitted = tmp_path / "injected_L2.asdf"
    assert main(["fit", str(out), "-o", str(fitted), "-q"]) == 0
    rate = read_l2(fitted).data.astype(np.float64) - read_l2(simulated / "romanjax_L2.asdf").data
    assert abs(rate[12:37, 8:33].sum() * 2.0 / 3000.0 - 1) < 0.1  # the stamp holds ~97%


@needs_pipeline
def test_outputs_are_not_replaced_without_overwrite(simulated, tmp_path, capsys):
    l1 = simulated / "romanjax_L1.asdf"
    out = tmp_path / "fit_L2.asdf"
    assert main(["fit", str(l1), "-o", str(out), "-q"]) == 0
    first = out.read_bytes()
    out.write_bytes(b"keep me")
    assert main(["fit", str(l1), "-o", str(out), "-q"]) == 1
    assert "exists; give --overwrite" in capsys.readouterr().err
    assert out.read_bytes() == b"keep me"  # untouched
    assert main(["fit", str(l1), "-o", str(out), "-q", "--overwrite"]) == 0
    assert read_l2(out).data.shape == (SIZE, SIZE) and len(out.read_bytes()) == len(first)
    folder = tmp_path / "a_folder"
    folder.mkdir()
    assert main(["fit", str(l1), "-o", str(folder), "-q"]) == 1
    assert "is a folder" in capsys.readouterr().err
    # simulate refuses a folder that holds its products already
    assert main(["simulate", "--size", "8", "--output", str(simulated), "-q"]) == 1
    assert "romanjax_L1.asdf" in capsys.readouterr().err


@needs_pipeline
@pytest.mark.parametrize(("table", "message"), [
    ({"x": [1.0, 2.0], "y": [2.0, 3.0], "flux": [100.0, np.nan]}, "1 rows with a missing, NaN, "
     "inf or negative `flux` (rows 1)"),
    ({"x": [1.0, 2.0], "y": [2.0, 3.0], "flux": [-5.0, 10.0]}, "negative `flux` (rows 0)"),
    ({"x": [1.0, np.inf], "y": [2.0, 3.0], "flux": [5.0, 10.0]}, "NaN or inf `x` (rows 1)"),
    ({"x": [1.0, 2.0], "y": [2.0, 3.0], "flux": ["bright", "faint"]}, "column `flux` must be "
     "numbers"),
])  # fmt: skip
def test_inject_refuses_bad_catalog_rows(simulated, tmp_path, capsys, table, message):
    path = tmp_path / "catalog.ecsv"
    Table(table).write(path)
    assert main(["inject", str(simulated / "romanjax_L2.asdf"), str(path), "-o",
                 str(tmp_path / "out.asdf"), "-q"]) == 1  # fmt: skip
    err = capsys.readouterr().err
    assert message in err and "catalog.ecsv" in err
    assert not (tmp_path / "out.asdf").exists()


def test_unexpected_errors_are_one_line_unless_debug(tmp_path, capsys, monkeypatch):
    from romanjax.host import cli

    def broken(args):
        raise RuntimeError("something broke")

    monkeypatch.setattr(cli, "_fit", broken)
    assert main(["fit", str(tmp_path / "x.asdf")]) == 1
    err = capsys.readouterr().err
    assert "unexpected error (RuntimeError): something broke" in err and "Traceback" not in err
    with pytest.raises(RuntimeError, match="something broke"):
        main(["fit", str(tmp_path / "x.asdf"), "--debug"])


@requires_romanisim
@needs_pipeline
def test_fit_and_inject_romanisim_files(tmp_path):
    """`fit` reads romanisim's L1; `inject` writes a romanisim L2 back as a datamodel."""
    import galsim
    import roman_datamodels as rdm
    from astropy import units as u
    from astropy.coordinates import SkyCoord
    from romanisim import catalog, image, util
    from romanisim import l1 as romanisim_l1
    from romanisim.models import parameters, wcs

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(parameters, "n_pix", 32)
        coord = SkyCoord(ra=270 * u.deg, dec=66 * u.deg)
        meta = util.default_image_meta(coord=coord, filter_name="F158", ma_table=4)
        wcs.fill_in_parameters(meta, coord)
        rng = galsim.UniformDeviate(9)
        cat = catalog.make_dummy_table_catalog(coord, radius=0.003, bandpasses=["F158"],
                                               nobj=5, rng=rng)  # fmt: skip
        l1, _ = image.simulate(meta, cat, usecrds=False, psftype="galsim", level=1, rng=rng,
                               crparam=None)  # fmt: skip
        b = parameters.nborder
        romanisim_l1.make_asdf(l1.data[:, b:-b, b:-b], metadata=l1.meta,
                               filepath=tmp_path / "rsim_L1.asdf")  # fmt: skip
        l2, _ = image.simulate(meta, cat, usecrds=False, psftype="galsim", level=2, rng=rng,
                               crparam=None)  # fmt: skip
        rdm.datamodels.ImageModel(l2).save(tmp_path / "rsim_image.asdf")

    # fit: default output next to the input, *_L1 -> *_L2
    assert main(["fit", str(tmp_path / "rsim_L1.asdf"), "-q"]) == 0
    fitted = read_l2(tmp_path / "rsim_L2.asdf")
    assert fitted.data.shape == (32, 32)
    assert fitted.meta["source_format"] == "WfiScienceRaw"
    # romanisim's L1 holds DN, so the fitted sky level is close to romanisim's own L2
    reference = read_l2(tmp_path / "rsim_image.asdf")
    assert abs(np.median(fitted.data) / np.median(reference.data) - 1) < 0.2

    catalog_path = tmp_path / "cat.ecsv"
    Table({"x": [16.0], "y": [16.0], "flux": [2000.0]}).write(catalog_path)
    out = tmp_path / "rsim_injected.asdf"
    assert main(["inject", str(tmp_path / "rsim_image.asdf"), str(catalog_path), "-o", str(out),
                 "-q"]) == 0  # fmt: skip
    with rdm.open(out) as model, rdm.open(tmp_path / "rsim_image.asdf") as original:
        assert type(model).__name__ == "ImageModel"
        delta = model.data.astype(np.float64) - original.data
        assert abs(delta[4:29, 4:29].sum() * 2.0 / 2000.0 - 1) < 0.1


@needs_pipeline
@pytest.mark.single_pass  # the cache mechanics do not depend on the float dtype
def test_fit_keeps_compiled_programs_in_its_cache(simulated, tmp_path):
    """``romanjax fit`` stores its compiled programs in the persistent cache (the folder of
    ROMANJAX_CACHE_DIR) and a second run reuses them; ROMANJAX_COMPILATION_CACHE=0 turns
    the cache off."""
    l1_path = simulated / "romanjax_L1.asdf"
    command = [sys.executable, "-m", "romanjax.host.cli", "fit", str(l1_path), "--quiet"]
    cache = tmp_path / "cache"
    env = dict(os.environ, ROMANJAX_COMPILATION_CACHE="1", ROMANJAX_CACHE_DIR=str(cache))
    first = subprocess.run(command + ["-o", str(tmp_path / "a.asdf")], env=env,
                           capture_output=True, text=True, timeout=600)  # fmt: skip
    assert first.returncode == 0, first.stderr
    entries = sorted(p.name for p in cache.rglob("*") if p.is_file())
    assert entries  # the fit's programs were written
    (program,) = (cache / "programs").glob("*.exe")  # and the fit as a whole
    written = program.stat()
    second = subprocess.run(command + ["-o", str(tmp_path / "b.asdf")], env=env,
                            capture_output=True, text=True, timeout=600)  # fmt: skip
    assert second.returncode == 0, second.stderr
    assert sorted(p.name for p in cache.rglob("*") if p.is_file()) == entries  # all reused
    assert program.stat().st_ino == written.st_ino  # loaded, not written again
    np.testing.assert_array_equal(read_l2(tmp_path / "a.asdf").data,
                                  read_l2(tmp_path / "b.asdf").data)  # fmt: skip
    off = tmp_path / "off"
    env_off = dict(env, ROMANJAX_COMPILATION_CACHE="0", ROMANJAX_CACHE_DIR=str(off))
    third = subprocess.run(command + ["-o", str(tmp_path / "c.asdf")], env=env_off,
                           capture_output=True, text=True, timeout=600)  # fmt: skip
    assert third.returncode == 0, third.stderr
    assert not off.exists()
    np.testing.assert_array_equal(read_l2(tmp_path / "a.asdf").data,
                                  read_l2(tmp_path / "c.asdf").data)  # fmt: skip


@needs_pipeline
def test_fit_reads_roman_reference_files(simulated, tmp_path):
    """--gain-file, --read-noise-file, --dark-file, --flat-file, --saturation-file and
    --mask-file (roman_datamodels reference models, with the reference border) give the
    same L2 as make_l2 with the arrays, plus romancal's saturation and mask flags."""
    rdm = pytest.importorskip("roman_datamodels")
    from romanjax import dq as dqbits

    full = (SIZE + 8, SIZE + 8)
    rng = np.random.default_rng(2)
    arrays = {
        "gain": rng.uniform(1.8, 2.2, full), "read_noise": rng.uniform(4.5, 5.5, full),
        "dark": rng.uniform(0.0, 0.02, full), "flat": rng.uniform(0.9, 1.1, full),
        "saturation": np.full(full, 55000.0),
    }  # fmt: skip
    l1 = read_l1(simulated / "romanjax_L1.asdf")
    science = (slice(4, -4), slice(4, -4))
    arrays["saturation"][science][10, 11] = float(l1.resultants[3, 10, 11])  # saturates there
    arrays["flat"][science][5, 6] = 0.0  # no flat value
    mask = np.zeros(full, np.uint32)
    mask[science][20, 21] = dqbits.DO_NOT_USE
    files = {}
    # a pixel the saturation file exempts from the check (NO_SAT_CHECK): never SATURATED
    saturation_dq = np.zeros(full, np.uint32)
    arrays["saturation"][science][12, 13] = 1.0
    saturation_dq[science][12, 13] = dqbits.NO_SAT_CHECK
    for kind, (model, attribute) in romanjax.host.io.REFERENCE_KINDS.items():
        ref = getattr(rdm.datamodels, model).create_fake_data(shape=full)
        value = mask if kind == "mask" else arrays[kind].astype(np.float32)
        setattr(ref, attribute, value)
        if kind == "saturation":
            ref.dq = saturation_dq
        files[kind] = tmp_path / f"{kind}.asdf"
        ref.save(files[kind])
    out = tmp_path / "ref_L2.asdf"
    options = [f"--{kind.replace('_', '-')}-file={path}" for kind, path in files.items()]
    assert main(["fit", str(simulated / "romanjax_L1.asdf"), "-o", str(out), "-q",
                 *options]) == 0  # fmt: skip
    got = read_l2(out)
    a = {kind: value[science].astype(np.float32).astype(np.float64)
         for kind, value in arrays.items()}  # fmt: skip
    dq = np.asarray(l1.dq, np.uint32) & ~np.uint32(dqbits.JUMP_DET)  # truth flags dropped
    level_dq = saturation_dq[science]
    dq |= romanjax.host.io.saturation_flags(l1.resultants, a["saturation"], l1.pattern, level_dq)
    dq |= romanjax.host.io.saturation_pixel_flags(a["saturation"], level_dq)[None]
    dq[:, 20, 21] |= dqbits.DO_NOT_USE
    flat = a["flat"].copy()
    flat[5, 6] = 1.0
    dq[:, 5, 6] |= dqbits.NO_FLAT_FIELD
    expected = romanjax.make_l2(l1.resultants, l1.pattern, read_noise=a["read_noise"],
                                gain=a["gain"], dq=dq, dark_rate=a["dark"] * a["gain"],
                                flat=flat, method="likely", detect_jumps=True,
                                pixel_flags="romancal")  # fmt: skip
    np.testing.assert_array_equal(got.data, np.asarray(expected.slope))
    np.testing.assert_array_equal(got.dq, np.asarray(expected.dq))
    assert got.dq[20, 21] & dqbits.DO_NOT_USE and got.dq[5, 6] & dqbits.NO_FLAT_FIELD
    assert got.meta["reference_gain"] == str(files["gain"])
    # the saturated pixel was fitted from its first resultants, or flagged if it could not be
    assert got.data[10, 11] != 0 or got.dq[10, 11] & dqbits.SATURATED
    assert got.dq[12, 13] & dqbits.NO_SAT_CHECK and not got.dq[12, 13] & dqbits.SATURATED
    # a reference of the wrong kind, and scalar and file given together, are refused by name
    assert main(["fit", str(simulated / "romanjax_L1.asdf"), "-o", str(tmp_path / "x.asdf"),
                 "-q", f"--gain-file={files['flat']}"]) == 1  # fmt: skip
    assert main(["fit", str(simulated / "romanjax_L1.asdf"), "-o", str(tmp_path / "x.asdf"),
                 "-q", "--gain=2", f"--gain-file={files['gain']}"]) == 1  # fmt: skip
    assert not (tmp_path / "x.asdf").exists()
