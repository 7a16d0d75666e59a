"""inject_sources_into_l2: flux recovery, untouched pixels, variance growth, both image kinds."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import jax
import numpy as np
import pytest
from astropy.table import Table
from conftest import requires_romanisim

import romanjax
from romanjax.host.inject import inject_sources_into_l2
from romanjax.host.io import L2Image
from romanjax.host.scene import make_wcs

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("romanjax.ramp._casertano") is None
    or importlib.util.find_spec("romanjax.l1._apportion") is None,
    reason="needs romanjax.fit_ramps_casertano and romanjax.apportion_counts",
)

STAMP = 24  # stamp side [pixels]: nothing outside +-STAMP/2 of a source may change
HALF = STAMP // 2 + 1


def flat_l2(shape=(96, 96), level=1.5, gain=2.0, read_noise=5.0):
    """A background-only romanjax L2 image at ``level`` [DN/s] with consistent variances."""
    pattern = romanjax.ReadPattern.from_ma_table(4)
    rng = np.random.default_rng(11)
    data = (level + rng.normal(0, 0.05, shape)).astype(np.float32)
    ramp = (data[None] * pattern.tbar[:, None, None]).astype(np.float32)
    fit = romanjax.make_l2(ramp, pattern, read_noise=read_noise, gain=gain)
    var_r = np.asarray(fit.var_rnoise, np.float32)
    var_p = np.asarray(fit.var_poisson, np.float32)
    dq = np.zeros(shape, np.uint32)
    dq[5, 5] = 4
    return L2Image(data=data, var_rnoise=var_r, var_poisson=var_p,
                   err=np.sqrt(var_r + var_p), dq=dq, pattern=pattern, gain=gain,
                   read_noise=read_noise, wcs=make_wcs(shape))  # fmt: skip


def far_mask(shape, xs, ys, half=HALF):
    yy, xx = np.indices(shape)
    far = np.ones(shape, bool)
    for x, y in zip(xs, ys, strict=True):
        far &= (np.abs(xx - round(x)) > half) | (np.abs(yy - round(y)) > half)
    return far


def box_sum(image, x, y, half=HALF):
    x, y = round(x), round(y)
    return image[max(y - half, 0): y + half + 1, max(x - half, 0): x + half + 1].sum()


def test_injection_into_romanjax_l2():
    image = flat_l2()
    before = image.copy()
    xs, ys, flux = [20.0, 70.3, 30.0], [25.0, 40.6, 75.0], [300.0, 1000.0, 5000.0]
    cat = Table({"x": xs, "y": ys, "flux": flux})
    new = inject_sources_into_l2(image, cat, key=jax.random.key(1), stamp_size=STAMP)
    assert isinstance(new, L2Image)
    # the input is untouched
    for name in ("data", "var_rnoise", "var_poisson", "err", "dq"):
        assert np.array_equal(getattr(image, name), getattr(before, name))
    delta = new.data.astype(np.float64) - image.data
    # flux recovered within 10% per source (the stamp holds ~97% of the Airy light)
    for x, y, f in zip(xs, ys, flux, strict=True):
        recovered = box_sum(delta, x, y) * image.gain
        assert abs(recovered / f - 1) < 0.1, (x, y, recovered, f)
    # far pixels bit-identical in every array; dq untouched everywhere
    far = far_mask(image.shape, xs, ys)
    for name in ("data", "var_rnoise", "var_poisson", "err"):
        assert np.array_equal(getattr(new, name)[far], getattr(image, name)[far]), name
    assert np.array_equal(new.dq, image.dq)
    assert new.pattern == image.pattern and new.gain == image.gain
    # variances grow where flux was added; err is consistent
    for x, y in zip(xs, ys, strict=True):
        iy, ix = round(y), round(x)
        assert new.var_poisson[iy, ix] > 2 * image.var_poisson[iy, ix]
        assert new.err[iy, ix] > image.err[iy, ix]
    changed = new.data != image.data
    np.testing.assert_allclose(new.err[changed] ** 2,
                               new.var_rnoise[changed] + new.var_poisson[changed],
                               rtol=1e-5)  # fmt: skip
    assert new.data.dtype == image.data.dtype


def test_ra_dec_positions_and_gain_from_image():
    image = flat_l2(gain=4.0)
    x0, y0 = 47.3, 50.8
    ra, dec = image.wcs.pixel_to_world_values(x0, y0)
    cat = Table({"ra": [float(ra)], "dec": [float(dec)], "flux": [2000.0]})
    new = inject_sources_into_l2(image, cat, key=jax.random.key(2), stamp_size=STAMP)
    delta = new.data.astype(np.float64) - image.data
    yy, xx = np.indices(delta.shape)
    near = ~far_mask(image.shape, [x0], [y0])
    weight = np.where(near, delta, 0)
    assert abs((weight * xx).sum() / weight.sum() - x0) < 0.15
    assert abs((weight * yy).sum() / weight.sum() - y0) < 0.15
    # the image's gain (4 e/DN) converts the counts: sum(delta) * 4 ~ flux
    assert abs(box_sum(delta, x0, y0) * 4.0 / 2000.0 - 1) < 0.1


def test_galaxy_is_extended_and_conserves_flux():
    image = flat_l2()
    kwargs = dict(key=jax.random.key(3), stamp_size=40)
    star = inject_sources_into_l2(image, Table({"x": [48.0], "y": [48.0], "flux": [3e3]}),
                                  **kwargs)  # fmt: skip
    galaxy = inject_sources_into_l2(
        image, Table({"x": [48.0], "y": [48.0], "flux": [3e3], "half_light_radius": [0.6],
                      "n": [1.0], "q": [0.5], "beta": [30.0]}), **kwargs,
    )  # fmt: skip
    yy, xx = np.indices(image.shape)
    r2 = (xx - 48.0) ** 2 + (yy - 48.0) ** 2

    def size(new):
        delta = new.data.astype(np.float64) - image.data
        inner = r2 < 20**2
        return (delta * r2)[inner].sum() / delta[inner].sum(), delta[inner].sum()

    star_size, star_flux = size(star)
    galaxy_size, galaxy_flux = size(galaxy)
    assert galaxy_size > 3 * star_size
    assert abs(galaxy_flux * 2.0 / 3e3 - 1) < 0.1


def test_bad_inputs():
    image = flat_l2((16, 16))
    with pytest.raises(ValueError, match="flux"):
        inject_sources_into_l2(image, Table({"x": [1.0], "y": [1.0]}), key=jax.random.key(0))
    with pytest.raises(ValueError, match="`image`"):
        inject_sources_into_l2(np.zeros((4, 4)), Table({"x": [1.0], "y": [1.0], "flux": [1.0]}),
                               key=jax.random.key(0))  # fmt: skip
    no_wcs = image.copy()
    no_wcs.wcs = None
    with pytest.raises(ValueError, match="WCS"):
        inject_sources_into_l2(no_wcs, Table({"ra": [1.0], "dec": [1.0], "flux": [1.0]}),
                               key=jax.random.key(0))  # fmt: skip
    # a source entirely off the image changes nothing
    off = inject_sources_into_l2(image, Table({"x": [500.0], "y": [500.0], "flux": [1e3]}),
                                 key=jax.random.key(0))  # fmt: skip
    assert np.array_equal(off.data, image.data)


@pytest.fixture(scope="module")
def romanisim_l2():
    """A small romanisim L2 ImageModel (64 x 64, MA table 4), made offline without CRDS."""
    pytest.importorskip("romanisim")
    import galsim
    import roman_datamodels as rdm
    from astropy import units as u
    from astropy.coordinates import SkyCoord
    from romanisim import catalog, image, util
    from romanisim.models import parameters, wcs

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(parameters, "n_pix", 64)
        coord = SkyCoord(ra=270 * u.deg, dec=66 * u.deg)
        meta = util.default_image_meta(coord=coord, filter_name="F158", ma_table=4)
        wcs.fill_in_parameters(meta, coord)
        rng = galsim.UniformDeviate(42)
        cat = catalog.make_dummy_table_catalog(coord, radius=0.003, bandpasses=["F158"],
                                               nobj=10, rng=rng)  # fmt: skip
        l2, _ = image.simulate(meta, cat, usecrds=False, psftype="galsim", level=2,
                               rng=rng, crparam=None)  # fmt: skip
    return rdm.datamodels.ImageModel(l2)


@requires_romanisim
def test_injection_into_romanisim_image_model(romanisim_l2):
    model = romanisim_l2
    original = model.data.copy()
    xs, ys, flux = [15.0, 45.0], [20.0, 44.0], [500.0, 2000.0]
    new = inject_sources_into_l2(model, Table({"x": xs, "y": ys, "flux": flux}),
                                 key=jax.random.key(5), stamp_size=STAMP)  # fmt: skip
    assert type(new) is type(model)
    assert np.array_equal(model.data, original)  # deep copy, input untouched
    delta = new.data.astype(np.float64) - model.data
    for x, y, f in zip(xs, ys, flux, strict=True):
        # romanisim images carry no gain: romanisim's default 2 e/DN is used
        assert abs(box_sum(delta, x, y) * 2.0 / f - 1) < 0.1
    far = far_mask(model.data.shape, xs, ys)
    for name in ("data", "var_poisson", "err", "dq"):
        assert np.array_equal(np.asarray(getattr(new, name))[far],
                              np.asarray(getattr(model, name))[far]), name  # fmt: skip
    assert np.array_equal(new.dq, model.dq)
    for x, y in zip(xs, ys, strict=True):
        assert new.var_poisson[round(y), round(x)] > model.var_poisson[round(y), round(x)]
        assert new.err[round(y), round(x)] > model.err[round(y), round(x)]
    new.validate()  # still a valid datamodel


@requires_romanisim
def test_injection_into_bare_wfi_image_node(romanisim_l2):
    """romanisim.image.simulate returns a bare WfiImage node; the result is one too."""
    import copy

    node = copy.deepcopy(romanisim_l2)._instance
    assert type(node).__name__ == "WfiImage"
    new = inject_sources_into_l2(node, Table({"x": [20.0], "y": [20.0], "flux": [1500.0]}),
                                 key=jax.random.key(8), stamp_size=STAMP)  # fmt: skip
    assert type(new) is type(node) and new is not node
    delta = np.asarray(new.data, np.float64) - np.asarray(node.data)
    assert abs(box_sum(delta, 20, 20) * 2.0 / 1500.0 - 1) < 0.1
    assert np.array_equal(np.asarray(node.data), np.asarray(romanisim_l2.data))


@requires_romanisim
def test_romanisim_image_model_ra_dec(romanisim_l2):
    """ra, dec through the model's gwcs (inverted numerically when gwcs cannot)."""
    model = romanisim_l2
    x0, y0 = 30.4, 33.7
    ra, dec = model.meta.wcs(x0, y0)
    new = inject_sources_into_l2(model, Table({"ra": [ra], "dec": [dec], "flux": [3000.0]}),
                                 key=jax.random.key(6), stamp_size=STAMP)  # fmt: skip
    delta = np.where(~far_mask(model.data.shape, [x0], [y0]),
                     new.data.astype(np.float64) - model.data, 0)  # fmt: skip
    yy, xx = np.indices(delta.shape)
    assert abs((delta * xx).sum() / delta.sum() - x0) < 0.2
    assert abs((delta * yy).sum() / delta.sum() - y0) < 0.2


def test_injection_into_l1_recovers_the_flux():
    """inject_sources_into_l1: a 2000 e/s star added to a simulated L1 (sky and cosmic rays)
    and fitted with jump detection gives back its flux within 2% in a 25x25 box; pixels far
    from it are unchanged bit for bit; flags are kept."""
    from romanjax.host.inject import inject_sources_into_l1
    from romanjax.host.io import L1Image

    pattern = romanjax.ReadPattern.from_ma_table(4)
    shape = (64, 64)
    rng = np.random.default_rng(4)
    sky = rng.poisson(1.0 * pattern.exposure_time, shape)
    l1 = romanjax.simulate_l1(jax.random.key(3), sky, pattern, cosmic_rays=True)
    image = L1Image(resultants=np.asarray(l1.resultants), dq=np.asarray(l1.dq), pattern=pattern,
                    gain=2.0, read_noise=5.0, wcs=make_wcs(shape, ra=10.0, dec=-30.0))  # fmt: skip
    catalog = Table({"x": [30.0], "y": [33.0], "flux": [2000.0]})
    new = inject_sources_into_l1(image, catalog, key=jax.random.key(9), stamp_size=STAMP)
    assert isinstance(new, L1Image) and new.resultants.dtype == image.resultants.dtype
    far = np.ones(shape, bool)
    far[33 - HALF : 33 + HALF + 1, 30 - HALF : 30 + HALF + 1] = False
    np.testing.assert_array_equal(new.resultants[:, far], image.resultants[:, far])
    assert np.all(new.dq & image.dq == image.dq)

    def fit(img):
        return np.asarray(romanjax.make_l2(img.resultants, pattern, read_noise=5.0, gain=2.0,
                                           method="likely").slope, np.float64)  # fmt: skip

    from romanjax.host.scene import render_sources

    # the light the stamp holds (~97% of the Airy pattern), in the box [e/s]
    rendered = render_sources(shape, np.array([30.0]), np.array([33.0]),
                              np.array([2000.0 * pattern.exposure_time]), wcs=image.wcs,
                              stamp_size=STAMP) / pattern.exposure_time  # fmt: skip
    box = (slice(33 - 12, 33 + 13), slice(30 - 12, 30 + 13))
    assert 0.9 < rendered[box].sum() / 2000.0 <= 1.0
    delta = fit(new) - fit(image)
    recovered = delta[box].sum() * 2.0  # [e/s]
    assert abs(recovered / rendered[box].sum() - 1) < 0.02


def test_flagged_pixels_keep_their_read_noise_variance():
    """A pixel whose ramp was split (JUMP_DET) keeps its larger read-noise variance and adds
    the new electrons' Poisson variance; unflagged pixels are refitted as before."""
    image = flat_l2((48, 48))
    flagged = (slice(20, 29), slice(20, 29))
    dq = image.dq.copy()
    dq[flagged] = romanjax.dq.JUMP_DET
    image.dq = dq
    var_r = image.var_rnoise.copy()
    var_r[flagged] *= 4.0  # as a split ramp's read-noise variance is larger
    image.var_rnoise, image.err = var_r, np.sqrt(var_r + image.var_poisson)
    cat = Table({"x": [24.0], "y": [24.0], "flux": [2000.0]})
    new = inject_sources_into_l2(image, cat, key=jax.random.key(2), stamp_size=STAMP)
    changed = new.data != image.data
    split = changed & (dq != 0)
    unsplit = changed & (dq == 0)
    assert split.sum() > 50 and unsplit.sum() > 50
    np.testing.assert_array_equal(new.var_rnoise[split], image.var_rnoise[split])
    assert np.all(new.var_poisson[split] >= image.var_poisson[split])
    assert np.all(new.var_poisson[24, 24] > 10 * image.var_poisson[24, 24])
    # the same injection into the image without flags: the same slopes everywhere, the same
    # variances on the unflagged pixels, and a smaller read-noise variance on the others
    plain = inject_sources_into_l2(flat_l2((48, 48)), cat, key=jax.random.key(2),
                                   stamp_size=STAMP)  # fmt: skip
    np.testing.assert_array_equal(new.data, plain.data)
    for name in ("var_rnoise", "var_poisson"):
        np.testing.assert_array_equal(getattr(new, name)[unsplit], getattr(plain, name)[unsplit])
    assert np.all(plain.var_rnoise[split] < new.var_rnoise[split])
    np.testing.assert_allclose(new.err[changed] ** 2,
                               new.var_rnoise[changed] + new.var_poisson[changed], rtol=1e-5)
    assert np.array_equal(new.dq, image.dq)


@pytest.mark.parametrize("layout", ["romanjax L2", "Roman L2", "other Roman L2", "romanjax L1"])
def test_inject_command_reads_its_input_once(layout, tmp_path, monkeypatch):
    """`romanjax inject` classifies its input and builds the image from one read of the
    file, whatever the file is (romanjax's own layout or a Roman datamodel, with or without
    romanjax's extras; L2 or L1)."""
    import asdf

    from romanjax.host.cli import main
    from romanjax.host.io import L1Image, read_product, to_roman_l2, write_datamodel, write_l1

    if "Roman" in layout:
        pytest.importorskip("roman_datamodels")
    if layout.endswith("L1") and importlib.util.find_spec("romanjax.l1._inject") is None:
        pytest.skip("needs romanjax.inject_counts_into_l1")
    shape = (32, 32)
    image = flat_l2(shape)
    source = tmp_path / "input.asdf"
    if layout == "romanjax L2":
        romanjax.host.io.write_l2(source, image)
    elif layout == "Roman L2":
        romanjax.host.io.write_roman_l2(source, image)
    elif layout == "other Roman L2":  # a plain ImageModel, without romanjax_extras
        write_datamodel(to_roman_l2(image)[0], source)
    else:
        ramp = np.rint(500.0 + image.data[None] * image.pattern.tbar[:, None, None])
        write_l1(source, L1Image(resultants=ramp.astype(np.float32),
                                 dq=np.zeros(ramp.shape, np.uint32), pattern=image.pattern,
                                 wcs=image.wcs))  # fmt: skip
    catalog = tmp_path / "cat.csv"
    Table({"x": [16.0], "y": [15.0], "flux": [1000.0]}).write(catalog)

    opened = []
    real_open = asdf.open

    def counting_open(target, *args, **kwargs):
        if isinstance(target, (str, os.PathLike)) and Path(target).resolve() == source.resolve():
            opened.append(target)
        return real_open(target, *args, **kwargs)

    monkeypatch.setattr(asdf, "open", counting_open)
    out = tmp_path / "out.asdf"
    assert main(["inject", str(source), str(catalog), "-o", str(out), "-q",
                 "--product-format", "romanjax" if layout.startswith("romanjax") else "roman"]) == 0
    assert len(opened) == 1, f"{layout}: the input was opened {len(opened)} times"
    monkeypatch.undo()
    before, after = read_product(source), read_product(out)
    assert type(after) is type(before) and after.kind == layout[-2:]
    if layout.endswith("L2"):
        assert after.data.sum() > before.data.sum()
