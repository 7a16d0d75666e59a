"""The reference read of ``simulate_l1(reference_read=True)`` and the flight encoding of the
resultants relative to it: against romanisim 0.15's ``make_l1(reference_read=True)``,
``encode_reference_read`` and ``decode_reference_read``, through ``simulate_frame``, and
written to and read back from L1 files."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import requires_romanisim

import romanjax
from romanjax.l1 import DATA_ENCODING_OFFSET, decode_reference_read, encode_reference_read

PATTERN = romanjax.ReadPattern.from_ma_table(4)
QUIET = dict(read_noise=0.0, pedestal_noise=0.0, saturation=1e9)


def _encoding_cases(rng, shape=(9, 20, 30)):
    """Whole-DN resultants and reference reads, with pixels that clip at 0 and at 65535."""
    resultants = rng.integers(0, 60500, shape).astype(np.float32)
    reference = rng.integers(0, 20000, shape[1:]).astype(np.float32)
    reference[0, :5] = 15000.0
    resultants[0, 0, :5] = 10000.0  # 5000 below the reference: clipped at 0
    resultants[1, 1, :5] = 65535.0
    reference[1, :5] = 0.0  # 65535 + 4000: clipped at 65535
    return resultants, reference


@requires_romanisim
@pytest.mark.parametrize("offset", [DATA_ENCODING_OFFSET, 1000])
def test_encoding_equals_romanisims(offset):
    from romanisim.l1 import decode_reference_read as their_decode
    from romanisim.l1 import encode_reference_read as their_encode
    from romanisim.models import parameters

    assert parameters.data_encoding_offset == DATA_ENCODING_OFFSET
    resultants, reference = _encoding_cases(np.random.default_rng(1))
    ours = np.asarray(encode_reference_read(resultants, reference, offset))
    theirs = their_encode(resultants, reference, offset)
    assert ours.dtype == np.uint16
    np.testing.assert_array_equal(ours, theirs)
    assert ours[0, 0, 0] == 0 and ours[1, 1, 0] == 65535  # both clips are exercised
    decoded = np.asarray(decode_reference_read(ours, reference.astype(np.uint16), offset))
    np.testing.assert_array_equal(decoded, their_decode(theirs, reference.astype(np.uint16),
                                                        offset))  # fmt: skip
    assert decoded.dtype == np.float32
    # exact wherever nothing was clipped
    kept = (theirs > 0) & (theirs < 65535)
    np.testing.assert_array_equal(decoded[kept], resultants[kept])


def test_encoding_under_jit_and_vmap(float_dtype):
    resultants, reference = _encoding_cases(np.random.default_rng(2), (5, 4, 3))
    direct = encode_reference_read(resultants, reference)
    jitted = jax.jit(encode_reference_read)(jnp.asarray(resultants), jnp.asarray(reference))
    np.testing.assert_array_equal(np.asarray(jitted), np.asarray(direct))
    stacked = jax.vmap(encode_reference_read, in_axes=(2, 1), out_axes=2)(
        jnp.asarray(resultants), jnp.asarray(reference))
    np.testing.assert_array_equal(np.asarray(stacked), np.asarray(direct))
    decoded = decode_reference_read(direct, reference.astype(float_dtype))
    assert decoded.dtype == float_dtype
    with pytest.raises(ValueError, match="encode_reference_read: `reference_read` of shape"):
        encode_reference_read(resultants, reference[:2])
    with pytest.raises(ValueError, match="`data_encoding_offset` must be >= 0"):
        encode_reference_read(resultants, reference, -1)


@requires_romanisim
def test_reference_read_equals_romanisims_make_l1():
    """Same inputs, no noise: romanisim's reference read (``make_l1(reference_read=True)``)
    and romanjax's are the same DN, the resultants' layout is unchanged, and the encoded
    file data agree."""
    import galsim
    from romanisim.l1 import encode_reference_read as their_encode
    from romanisim.l1 import make_l1

    rng = np.random.default_rng(3)
    shape = (12, 15)
    counts = rng.integers(0, 5000, shape)
    pedestal = rng.uniform(5000, 15000, shape).astype(np.float32)  # rounds differently per pixel
    _, _, theirs = make_l1(galsim.Image(counts.astype(np.float64)), PATTERN.reads,
                           read_noise=0.0, pedestal=pedestal, pedestal_extra_noise=0.0,
                           gain=2.0, reference_read=True, seed=4)  # fmt: skip
    l1, ours = romanjax.simulate_l1(jax.random.key(4), counts, PATTERN, gain=2.0,
                                    pedestal=pedestal, reference_read=True, **QUIET)  # fmt: skip
    assert ours.shape == shape and l1.resultants.shape == (PATTERN.n_resultants,) + shape
    np.testing.assert_array_equal(np.asarray(ours), theirs)
    np.testing.assert_array_equal(np.asarray(encode_reference_read(l1.resultants, ours)),
                                  their_encode(np.asarray(l1.resultants), theirs))  # fmt: skip


def test_reference_read_is_the_reset_level_with_one_reads_noise(float_dtype):
    """The reference read shares the pedestal draw of the resultants (so with no photons and
    no read noise it equals the one-read first resultant), has the read noise of one read,
    independent of the resultants', and leaves every other draw unchanged."""
    shape = (200, 250)
    counts = np.zeros(shape, int)
    key = jax.random.key(5)
    kw = dict(gain=2.0, pedestal=1e4, pedestal_noise=30.0, saturation=1e9)
    plain = romanjax.simulate_l1(key, counts, PATTERN, read_noise=0.0, **kw)
    l1, reference = romanjax.simulate_l1(key, counts, PATTERN, read_noise=0.0,
                                         reference_read=True, **kw)  # fmt: skip
    assert reference.dtype == float_dtype
    np.testing.assert_array_equal(np.asarray(reference), np.asarray(plain.resultants[0]))
    assert np.std(np.asarray(reference)) > 10  # the pedestal noise is there (30 e / 2)
    # cosmic rays of up to 20 pixels (81 points a track instead of the default's 801)
    cosmic_rays = {"max_cr_len": 200.0}
    noisy = romanjax.simulate_l1(key, counts, PATTERN, read_noise=5.0, cosmic_rays=cosmic_rays,
                                 **kw)  # fmt: skip
    l1, reference = romanjax.simulate_l1(key, counts, PATTERN, read_noise=5.0,
                                         cosmic_rays=cosmic_rays, reference_read=True,
                                         **kw)  # fmt: skip
    np.testing.assert_array_equal(np.asarray(l1.resultants), np.asarray(noisy.resultants))
    np.testing.assert_array_equal(np.asarray(l1.dq), np.asarray(noisy.dq))
    noise = np.asarray(reference, np.float64) - np.asarray(plain.resultants[0], np.float64)
    n = noise.size
    # one read: 5 DN, plus the rounding to whole DN (variance 1/12 each, twice at most)
    assert abs(noise.var() / 25.0 - 1) < 5 * np.sqrt(2 / n) + 2 / 12 / 25
    first = np.asarray(l1.resultants[0], np.float64) - np.asarray(plain.resultants[0])
    assert abs(np.corrcoef(noise.ravel(), first.ravel())[0, 1]) < 5 / np.sqrt(n)
    # no flags for the reference read, saturation flagged in the resultants only
    low = romanjax.simulate_l1(key, counts, PATTERN, read_noise=0.0, reference_read=True,
                               **dict(kw, saturation=100.0))  # fmt: skip
    np.testing.assert_array_equal(np.asarray(low[1]), np.asarray(low[0].resultants[-1]))
    np.testing.assert_allclose(np.asarray(low[1]), 110.0)  # clipped at 1.1 saturation
    assert np.all(np.asarray(low[0].dq) & romanjax.dq.SATURATED)


@requires_romanisim
def test_reference_read_gets_the_dark_decay_of_read_zero(float_dtype):
    """romanisim adds the dark decay to the reference read at ``t = -1.5 T + t_pix``
    (``dark_decay_for_read(darkdecaysignal, 0.0)``)."""
    from romanisim.l1 import dark_decay_for_read

    shape, origin = (6, 300), (1000, 3000)
    decay = dict(amplitude=2e4, time_constant=30.0, sca=9)
    l1, reference = romanjax.simulate_l1(jax.random.key(6), np.zeros(shape, int), PATTERN,
                                         gain=1.0, pedestal=0.0, reference_read=True,
                                         dark_decay=dict(decay, origin=origin), **QUIET)
    full = dark_decay_for_read(decay, 0.0)
    expected = full[origin[0]:origin[0] + shape[0], origin[1]:origin[1] + shape[1]]
    tolerance = 0.5 + (2e-6 if float_dtype == np.float32 else 1e-12) * expected
    assert np.all(np.abs(np.asarray(reference, np.float64) - expected) <= tolerance)
    assert np.all(np.asarray(reference) > np.asarray(l1.resultants[0]))  # earlier: larger


def test_simulate_frame_reference_read(float_dtype):
    shape = (23, 19)  # rng_block 95: blocks of 5 rows
    counts = np.random.default_rng(7).integers(0, 3000, shape)
    key = jax.random.key(8)
    runs = [romanjax.simulate_frame(key, counts, PATTERN, chunk_pixels=c, rng_block=95,
                                    reference_read=True, workers=1) for c in (95, 1000)]
    for l1, reference in runs:
        assert isinstance(reference, np.ndarray) and reference.shape == shape
        np.testing.assert_array_equal(reference, runs[0][1])
        np.testing.assert_array_equal(l1.resultants, runs[0][0].resultants)
    whole, whole_reference = romanjax.simulate_l1(key, counts, PATTERN, reference_read=True)
    np.testing.assert_array_equal(runs[0][1], np.asarray(whole_reference))
    np.testing.assert_array_equal(runs[0][0].resultants, np.asarray(whole.resultants))
    plain = romanjax.simulate_frame(key, counts, PATTERN, chunk_pixels=95, rng_block=95,
                                    workers=1)  # fmt: skip
    np.testing.assert_array_equal(plain.resultants, runs[0][0].resultants)


def test_reference_read_and_persistence_together():
    state = romanjax.PersistenceState.empty((3, 4), n_events=2, dtype=np.float32)
    out = romanjax.simulate_l1(jax.random.key(9), np.zeros((3, 4), int), PATTERN,
                               reference_read=True, persistence=state, start_time=0.0)
    assert len(out) == 3 and isinstance(out[0], romanjax.L1)
    assert out[1].shape == (3, 4) and isinstance(out[2], romanjax.PersistenceState)
    with pytest.raises(ValueError, match="`reference_read` must be a bool"):
        romanjax.simulate_l1(jax.random.key(9), np.zeros(3, int), PATTERN, reference_read=1)


# --------------------------------------------------------------------------- files


def _l1_image(rng, shape=(6, 7)):
    from romanjax.host.io import L1Image

    l1, reference = romanjax.simulate_l1(jax.random.key(10), rng.integers(0, 10**5, shape),
                                         PATTERN, reference_read=True)  # fmt: skip
    return L1Image(resultants=np.asarray(l1.resultants), dq=np.asarray(l1.dq), pattern=PATTERN,
                   reference_read=np.asarray(reference))  # fmt: skip


@requires_romanisim
def test_roman_l1_file_stores_the_flight_encoding_and_round_trips(tmp_path):
    """A Roman L1 file written with a reference read holds romanisim's encoding of the data
    (border and amp33 included) and the reference read, and reads back to the same absolute
    resultants."""
    rdm = pytest.importorskip("roman_datamodels")
    from romanisim.l1 import encode_reference_read as their_encode

    from romanjax.host.io import NBORDER, read_l1, write_roman_l1

    image = _l1_image(np.random.default_rng(11))
    path = write_roman_l1(tmp_path / "ref_L1.asdf", image)
    b = NBORDER
    with rdm.open(path) as model:
        model.validate()
        assert model.meta.instrument.data_encoding_offset == DATA_ENCODING_OFFSET
        full = np.zeros(model.data.shape, np.float32)
        full[:, b:-b, b:-b] = image.resultants
        np.testing.assert_array_equal(model.reference_read[b:-b, b:-b], image.reference_read)
        np.testing.assert_array_equal(model.data, their_encode(full, model.reference_read))
        np.testing.assert_array_equal(model.amp33, DATA_ENCODING_OFFSET)
        assert model.data.dtype == model.reference_read.dtype == np.uint16
    back = read_l1(path)
    np.testing.assert_array_equal(back.resultants, image.resultants)
    np.testing.assert_array_equal(back.reference_read, image.reference_read)
    assert back.data_encoding_offset == DATA_ENCODING_OFFSET
    # the encoding really is relative: the stored data are the resultants less the reference
    # read plus the offset, not the resultants
    with rdm.open(path) as model:
        assert not np.array_equal(model.data[:, b:-b, b:-b], image.resultants)


def test_romanjax_l1_file_keeps_the_reference_read(tmp_path):
    pytest.importorskip("asdf")
    from romanjax.host.io import read_l1, write_l1

    image = _l1_image(np.random.default_rng(12))
    image.data_encoding_offset = 1000
    back = read_l1(write_l1(tmp_path / "ref_L1.asdf", image))
    np.testing.assert_array_equal(back.resultants, image.resultants)
    np.testing.assert_array_equal(back.reference_read, image.reference_read)
    assert back.data_encoding_offset == 1000
    none = read_l1(write_l1(tmp_path / "plain_L1.asdf", _l1_image_without_reference(image)))
    assert none.reference_read is None


def _l1_image_without_reference(image):
    import dataclasses

    return dataclasses.replace(image, reference_read=None)


def test_offsets_agree():
    from romanjax.host.io._products import DATA_ENCODING_OFFSET as io_offset

    assert io_offset == DATA_ENCODING_OFFSET


def test_roman_l1_refuses_resultants_its_encoding_would_clip(tmp_path):
    """Resultants more than the encoding offset below the reference read (or too far above
    it) cannot be stored relative to it without clipping: the writer refuses them rather than
    write a file that reads back differently."""
    pytest.importorskip("roman_datamodels")
    from romanjax.host.io import write_roman_l1

    image = _l1_image(np.random.default_rng(13))
    image.resultants = np.asarray(image.resultants).copy()
    image.resultants[0, 0, 0] = float(image.reference_read[0, 0]) - DATA_ENCODING_OFFSET - 1
    with pytest.raises(ValueError, match="to_roman_l1: `resultants` minus `reference_read`"):
        write_roman_l1(tmp_path / "clipped_L1.asdf", image)
    assert not (tmp_path / "clipped_L1.asdf").exists()
