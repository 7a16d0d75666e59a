"""ReadPattern, MA tables and dq bits."""

import numpy as np
import pytest
from conftest import requires_romanisim

import romanjax
from romanjax import ReadPattern


def test_ma_table_4_timing_matches_published_values():
    # reference values (romanisim 0.15, read_time 3.16247)
    pattern = ReadPattern.from_ma_table(4)
    np.testing.assert_allclose(
        pattern.tbar,
        [3.16247, 6.32494, 11.068645, 22.13729, 42.693345, 67.993105, 93.292865, 121.755095,
         139.14868], rtol=1e-7,
    )  # fmt: skip
    np.testing.assert_allclose(
        pattern.tau,
        [3.16247, 6.32494, 10.278028, 19.607314, 38.542603, 63.842363, 89.142123, 116.537019,
         139.14868], rtol=1e-7,
    )  # fmt: skip
    np.testing.assert_array_equal(pattern.n_reads, [1, 1, 2, 5, 8, 8, 8, 10, 1])
    assert pattern.n_resultants == 9
    assert pattern.exposure_time == pytest.approx(139.14868)
    assert len(pattern.read_times) == 44
    assert pattern.read_times[-1] == pytest.approx(pattern.exposure_time)


def test_stcal_timing_values_with_old_read_time():
    # stcal's test_jump_cas22 numbers, read_time 3.04
    pattern = ReadPattern(((1, 2, 3, 4), (5,), (6, 7, 8), (9, 10, 11, 12, 13, 14, 15, 16, 17,
                           18), (19, 20, 21), (22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32, 33,
                           34, 35, 36)), read_time=3.04)  # fmt: skip
    np.testing.assert_allclose(pattern.tbar, [7.6, 15.2, 21.28, 41.04, 60.8, 88.16], rtol=1e-7)
    np.testing.assert_allclose(
        pattern.tau, [5.7, 15.2, 19.928888, 36.024, 59.448887, 80.593781], rtol=1e-6
    )


def test_tau_is_mean_of_min_times(pattern):
    # tau_i = sum_{k,l} min(t_k, t_l) / N_i**2 (Brandt 2024a Eq. 11), brute force
    for i, reads in enumerate(pattern.reads):
        t = pattern.read_time * np.asarray(reads, float)
        assert pattern.tau[i] == pytest.approx(np.minimum.outer(t, t).mean(), rel=1e-12)
        assert pattern.tbar[i] == pytest.approx(t.mean(), rel=1e-12)


def test_uniform_tau_formula():
    # uniform spacing delta: tau = tbar - (N-1)(N+1) delta / (6N)
    pattern = ReadPattern([range(3, 11)], read_time=2.0)
    n, delta = 8, 2.0
    assert pattern.tau[0] == pytest.approx(pattern.tbar[0] - (n - 1) * (n + 1) * delta / (6 * n))


@requires_romanisim
def test_ma_tables_equal_romanisim():
    from romanisim.models import parameters

    assert set(romanjax.MA_TABLES) == set(parameters.read_pattern)
    for number, reads in parameters.read_pattern.items():
        assert romanjax.MA_TABLES[number] == tuple(tuple(r) for r in reads), number
    assert ReadPattern.from_ma_table(4).read_time == parameters.read_time


@requires_romanisim
def test_tbar_tau_equal_romanisim(pattern):
    from romanisim import ramp

    reads = [list(r) for r in pattern.reads]
    np.testing.assert_allclose(pattern.tbar, ramp.read_pattern_to_tbar(reads), rtol=1e-6)
    np.testing.assert_allclose(pattern.tau, ramp.read_pattern_to_tau(reads), rtol=1e-6)


def test_table_109_skips_reads():
    reads = [r for resultant in romanjax.MA_TABLES[109] for r in resultant]
    assert {4, 8, 9, 14}.isdisjoint(reads)
    assert reads[-1] == 44


@pytest.mark.parametrize(
    "reads, message",
    [
        ([], "empty"),
        ([[1], []], "resultant 1 of `reads` is empty"),
        ([[0, 1]], "not positive"),
        ([[-3]], "not positive"),
        ([[1, 2], [2, 3]], "strictly increasing"),
        ([[3, 2]], "strictly increasing"),
        ([[1.5]], "not an integer"),
        (5, "sequence of sequences"),
    ],
)
def test_invalid_patterns_raise(reads, message):
    with pytest.raises(ValueError, match=message):
        ReadPattern(reads)


@pytest.mark.parametrize("read_time", [0.0, -1.0, float("nan")])
def test_invalid_read_time(read_time):
    with pytest.raises(ValueError, match="read_time"):
        ReadPattern([[1]], read_time=read_time)


def test_unknown_table():
    with pytest.raises(ValueError, match="unknown MA table"):
        ReadPattern.from_ma_table(2)


def test_hashable_and_static():
    a = ReadPattern([[1, 2], [3]])
    b = ReadPattern(((1, 2), (3,)))
    assert a == b and hash(a) == hash(b)
    assert a != ReadPattern([[1, 2], [3]], read_time=3.04)
    with pytest.raises(ValueError):
        a.tbar[0] = 1.0  # timing arrays are read-only
    assert "from_ma_table(4" in repr(ReadPattern.from_ma_table(4))


def test_dq_bits():
    assert romanjax.dq.SATURATED == 2
    assert romanjax.dq.JUMP_DET == 4
    assert romanjax.dq.NONLINEAR == 2**16
    assert romanjax.dq.NO_LIN_CORR == 2**20
    assert romanjax.dq.DO_NOT_USE_IN_FIT == 7  # romancal skips DO_NOT_USE resultants too


def test_import_is_light():
    import subprocess
    import sys

    code = (
        "import sys, romanjax; romanjax.ReadPattern; romanjax.MA_TABLES; romanjax.dq;"
        "heavy = [m for m in ('asdf', 'astropy', 'galsim', 'jax', 'matplotlib') "
        "if m in sys.modules]; print(heavy); assert not heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
