"""Compiled programs kept on disk between processes (``romanjax._programs``, the command
line's measure): the same results as the jitted call, a second process that neither traces
nor compiles, a new entry for every change of what decides the program, and damaged entries
compiled again."""

from __future__ import annotations

import functools
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from romanjax import _programs

pytestmark = pytest.mark.single_pass  # the cache's mechanics do not depend on the dtype

TRACES = []


def _scaled(x, y, *, power):
    TRACES.append(power)  # once per trace
    return jnp.sum(x**power, axis=0) + y, x * 2


scaled = jax.jit(_scaled, static_argnames=("power",))


def entries(folder):
    return sorted(p.name for p in folder.iterdir())


@pytest.fixture(autouse=True)
def _fresh_process_store():
    """Each test starts with no program of this process's own (as a new process)."""
    _programs._programs.clear()
    yield
    _programs._programs.clear()


def test_off_by_default_and_with_none(tmp_path):
    x = np.arange(6.0, dtype=np.float32).reshape(2, 3)
    expected = scaled(x, np.float32(1), power=2)
    plain = _programs.call(scaled, x, np.float32(1), power=2)  # no block: off
    with _programs.kept_in(None):
        off = _programs.call(scaled, x, np.float32(1), power=2)
    with _programs.kept_in(tmp_path / "kept"):
        assert _programs._directory.get() == tmp_path / "kept"
    assert _programs._directory.get() is None  # restored after the block
    for got in (plain, off):
        np.testing.assert_array_equal(got[0], expected[0])
    assert entries(tmp_path) == []


def test_kept_program_gives_the_jitted_results_and_one_entry_per_program(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(4, 5)).astype(np.float32)
    y = jnp.asarray(rng.normal(size=5).astype(np.float32))
    with _programs.kept_in(tmp_path):
        first = _programs.call(scaled, x, y, power=3)
        assert len(entries(tmp_path)) == 1
        TRACES.clear()
        again = _programs.call(scaled, x, y, power=3)  # this process's own copy: no trace
        assert TRACES == []
        assert len(entries(tmp_path)) == 1
        _programs.call(scaled, x, y, power=2)  # a static argument
        _programs.call(scaled, x[:3], y, power=3)  # a shape
        _programs.call(scaled, x.astype(np.float64) if jax.config.jax_enable_x64
                       else x.astype(np.int32), y, power=3)  # a dtype  # fmt: skip
        assert len(entries(tmp_path)) == 4
    assert not [name for name in entries(tmp_path) if not name.endswith(_programs.SUFFIX)]
    expected = scaled(x, y, power=3)
    for got in (first, again):
        for a, b in zip(got, expected):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_traced_arguments_take_the_plain_call(tmp_path):
    x = np.ones((2, 3), np.float32)
    with _programs.kept_in(tmp_path):
        got = jax.jit(lambda v: _programs.call(scaled, v, jnp.float32(1), power=1)[0])(x)
    np.testing.assert_array_equal(got, [3.0, 3.0, 3.0])
    assert entries(tmp_path) == []


def test_python_scalars_are_inputs_of_one_kept_program(tmp_path):
    """A Python scalar is a weakly typed input: one entry serves every value."""
    x = np.ones((2, 3), np.float32)
    with _programs.kept_in(tmp_path):
        one = _programs.call(scaled, x, 1.0, power=1)
        _programs._programs.clear()  # as a new process: the entry is loaded
        two = _programs.call(scaled, x, 2.0, power=1)
    np.testing.assert_array_equal(one[0], [3.0, 3.0, 3.0])
    np.testing.assert_array_equal(two[0], [4.0, 4.0, 4.0])
    assert one[0].dtype == scaled(x, 1.0, power=1)[0].dtype
    assert len(entries(tmp_path)) == 1


def test_damaged_entry_is_compiled_again_and_replaced(tmp_path, monkeypatch):
    loads = []
    load = _programs._load
    monkeypatch.setattr(_programs, "_load", lambda path: loads.append(load(path)) or loads[-1])
    x = np.arange(4.0, dtype=np.float32)
    y = np.float32(0.5) * np.ones(4, np.float32)
    with _programs.kept_in(tmp_path):
        _programs.call(scaled, x[None], y, power=1)
    (entry,) = tmp_path.iterdir()
    entry.write_bytes(b"not a program")
    _programs._programs.clear()  # as a new process
    with _programs.kept_in(tmp_path):
        got = _programs.call(scaled, x[None], y, power=1)
    assert loads[-1] is None  # not loaded: compiled again
    np.testing.assert_array_equal(got[0], x + 0.5)
    assert entry.read_bytes() != b"not a program"
    _programs._programs.clear()
    with _programs.kept_in(tmp_path):
        got = _programs.call(scaled, x[None], y, power=1)
    assert loads[-1] is not None  # the replaced entry loads
    np.testing.assert_array_equal(got[0], x + 0.5)
    assert [p.name for p in tmp_path.iterdir()] == [entry.name]  # no temporary file left


def test_what_the_key_cannot_see_takes_the_plain_call(tmp_path):
    """Closures and bound arguments hold values the key does not see: never kept."""

    def make(scale):
        return jax.jit(lambda x: x * scale)

    x = np.ones(3, np.float32)
    with _programs.kept_in(tmp_path):
        got = [_programs.call(make(s), x) for s in (2.0, 3.0)]
        bound = _programs.call(jax.jit(functools.partial(_scaled, power=2)), x[None],
                               np.float32(0))  # fmt: skip
    np.testing.assert_array_equal(got[0], [2, 2, 2])
    np.testing.assert_array_equal(got[1], [3, 3, 3])
    np.testing.assert_array_equal(bound[0], [1, 1, 1])
    assert entries(tmp_path) == []


class Two(int):
    """An int whose ``repr`` is that of the int 2 (as numpy 1's scalars print)."""

    def __repr__(self):
        return "2"


def test_static_values_are_keyed_by_type(tmp_path):
    x = np.full((2, 3), 2.0, np.float32)
    with _programs.kept_in(tmp_path):
        a = _programs.call(scaled, x, np.float32(0), power=2)
        b = _programs.call(scaled, x, np.float32(0), power=Two(2))
    assert len(entries(tmp_path)) == 2
    np.testing.assert_array_equal(a[0], b[0])


def test_the_folder_keeps_the_most_recently_used_entries(tmp_path, monkeypatch):
    monkeypatch.setattr(_programs, "KEEP", 2)
    x = np.ones((1, 4), np.float32)
    with _programs.kept_in(tmp_path):
        for power in (1, 2, 3):
            _programs.call(scaled, x, np.float32(0), power=power)
            names = entries(tmp_path)
            if power == 1:
                first = names
    assert len(names) == 2
    assert first[0] not in names  # the oldest went


def test_a_second_process_loads_the_program_without_tracing(tmp_path):
    module = tmp_path / "kept_module.py"
    module.write_text(textwrap.dedent("""
        import sys
        import jax, jax.numpy as jnp, numpy as np
        from romanjax import _programs

        traces = []

        @jax.jit
        def f(x):
            traces.append(1)
            return jnp.cumsum(x * x)

        with _programs.kept_in(sys.argv[1]):
            out = _programs.call(f, np.arange(10.0, dtype=np.float32))
        print(len(traces), " ".join(str(v) for v in np.asarray(out)))
    """))
    runs = [subprocess.run([sys.executable, str(module), str(tmp_path / "kept")],
                           capture_output=True, text=True, timeout=300, cwd=tmp_path)
            for _ in range(2)]  # fmt: skip
    for run in runs:
        assert run.returncode == 0, run.stderr
    (traced_first, *first), (traced_second, *second) = (run.stdout.split() for run in runs)
    assert (traced_first, traced_second) == ("1", "0")
    assert first == second
    np.testing.assert_allclose([float(v) for v in second], np.cumsum(np.arange(10.0) ** 2))
    assert len(entries(tmp_path / "kept")) == 1


def test_kept_simulation_draws_the_same_ramps(tmp_path):
    """``simulate_l1`` through a kept program (random key, Python-scalar options, cosmic
    rays) gives the plain call's ramps, loaded from the folder as well as just compiled."""
    import romanjax

    pattern = romanjax.ReadPattern.from_ma_table(4)
    counts = np.random.default_rng(3).poisson(300, (8, 16)).astype(np.int32)
    key = jax.random.key(7)
    options = dict(read_noise=6.0, cosmic_rays=True)
    expected = romanjax.simulate_l1(key, counts, pattern, **options)
    runs, written = [], []
    for _ in range(2):
        _programs._programs.clear()
        with _programs.kept_in(tmp_path):
            runs.append(romanjax.simulate_l1(key, counts, pattern, **options))
        written += [p.stat().st_ino for p in tmp_path.iterdir()]
    assert len(written) == 2 and written[0] == written[1]  # one entry, loaded the second time
    for got in runs:
        np.testing.assert_array_equal(np.asarray(got.resultants), np.asarray(expected.resultants))
        np.testing.assert_array_equal(np.asarray(got.dq), np.asarray(expected.dq))
