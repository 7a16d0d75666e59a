"""What the array API compiles to on accelerators, checked on the StableHLO lowered for
``cuda`` and ``tpu`` (``jax.export``; no accelerator needed).

On XLA GPU every trip of a ``while`` loop and every ``case`` with a run-time index copies its
predicate to the host and waits for it, so the fitters may contain only the loops their
algorithms iterate (jump splits, the candidate refit); conditionals whose index is a
constant (``lax.platform_dependent`` lowered for one platform) are folded by XLA and not
counted. TPUs have no 64-bit types, so no operation may produce one.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import pytest

import romanjax

PATTERN = romanjax.ReadPattern.from_ma_table(4)
PIXELS = 2**16


def _resultants():
    return jnp.zeros((PATTERN.n_resultants, PIXELS), jnp.float32)


def _dq():
    return jnp.zeros((PATTERN.n_resultants, PIXELS), jnp.uint32)


#: name -> (function, arguments, most while loops + run-time conditionals allowed): the loops
#: the programs hold, each one an algorithm iterates (the issue's limits were 3 for the jump
#: fitters and the apportionment, 4 for simulate_l1; a new loop has to be argued for here)
CALLS = {
    "fit_ramps_optimal": (lambda r: romanjax.fit_ramps_optimal(r, PATTERN, 5.0), 0),
    "fit_ramps_optimal(dq)": (
        lambda r, q: romanjax.fit_ramps_optimal(r, PATTERN, 5.0, dq=q), 0),
    "fit_ramps_casertano": (lambda r: romanjax.fit_ramps_casertano(r, PATTERN, 5.0), 0),
    "fit_ramps_casertano(dq)": (
        lambda r, q: romanjax.fit_ramps_casertano(r, PATTERN, 5.0, dq=q), 1),
    # one work queue: a trip per jump split, not a loop over blocks of candidates
    "fit_ramps_casertano(detect_jumps)": (
        lambda r: romanjax.fit_ramps_casertano(r, PATTERN, 5.0, detect_jumps=True), 1),
    # the jump search's work queue
    "fit_ramps_likely": (lambda r: romanjax.fit_ramps_likely(r, PATTERN, 5.0), 1),
    "ramp_log_likelihood": (lambda r: romanjax.ramp_log_likelihood(r, PATTERN, 10.0, 5.0), 0),
    # the binomial sampler's redraw of rejected draws
    "apportion_counts(counts)": (
        lambda c: romanjax.apportion_counts(jax.random.key(0), c, PATTERN), 1),
    "simulate_l1(counts)": (
        lambda c: romanjax.simulate_l1(jax.random.key(0), c, PATTERN, read_noise=5.0), 1),
    # cosmic rays add the Poisson sampler's rejection loop once, for the electrons of the
    # tracks' points, drawn once for the exposure before the walk over the reads (no trip
    # when every mean is below 10); the numbers of tracks are counted from exponential gaps
    "simulate_l1(counts, cosmic_rays)": (
        lambda c: romanjax.simulate_l1(jax.random.key(0), c, PATTERN, read_noise=5.0,
                                       cosmic_rays=True), 2),
    # persistence adds the Poisson sampler's rejection loop (no trip when every mean < 10)
    "simulate_l1(counts, persistence)": (
        lambda c: romanjax.simulate_l1(
            jax.random.key(0), c, PATTERN, start_time=100.0,
            persistence=romanjax.PersistenceState.empty(c.shape, dtype=jnp.float32)), 2),
}  # fmt: skip


def _static_trip_count(lines: list[str], at: int, constant: set[str]) -> bool:
    """Whether the ``stablehlo.while`` on ``lines[at]`` counts a counter from a constant to a
    constant bound in constant steps (a ``lax.scan`` or ``fori_loop``): its condition region
    is one ``compare LT`` of a loop argument that starts at a constant with a constant, and its
    body adds a constant to that argument. XLA knows such a loop's trip count and runs it on
    the GPU without reading its predicate back."""
    inits = dict(re.findall(r"(%iterArg\w*) = (%[\w#]+)", lines[at]))
    indent = len(lines[at]) - len(lines[at].lstrip())
    condition, j = [], at + 1
    while "} do {" not in lines[j]:
        if lines[j].strip() not in ("", "cond {"):
            condition.append(lines[j])
        j += 1
    compare = re.search(r"stablehlo.compare\s+LT, (%iterArg\w*), (%[\w#]+)", condition[0])
    if len(condition) != 2 or compare is None or "stablehlo.return" not in condition[1]:
        return False
    counter, bound = compare.groups()
    if inits.get(counter) not in constant or bound not in constant:
        return False
    end = j + 1
    while not (lines[end].startswith(" " * indent + "}") and
               len(lines[end]) - len(lines[end].lstrip()) == indent):
        end += 1
    steps = [re.search(rf"stablehlo.add {counter}, (%[\w#]+)", line) for line in lines[j:end]]
    return any(step and step.group(1) in constant for step in steps)


def count_control_flow(text: str) -> tuple[int, int]:
    """(data-dependent while loops, conditionals with a run-time index) in StableHLO ``text``.

    Loops with a trip count known when compiling (:func:`_static_trip_count`) are not
    counted."""
    constant = set()
    whiles = cases = 0
    lines = text.splitlines()
    for at, line in enumerate(lines):
        match = re.match(r"\s*(%[\w#:]+)(?:, %[\w#:]+)* = \"?([\w.]+)\"?", line)
        if not match:
            continue
        name, op = match.groups()
        name = name.split(":")[0]
        if op == "stablehlo.constant":
            constant.add(name)
        elif op == "stablehlo.while":
            whiles += not _static_trip_count(lines, at, constant)
        elif op == "stablehlo.case":
            index = re.search(r"case\"?\((%[\w#]+)\)", line).group(1)
            if index in constant:
                constant.add(name)
            else:
                cases += 1
    return whiles, cases


def wide_types(text: str) -> list[str]:
    """Lines of ``text`` whose operations take or produce 64-bit values (attributes, such
    as a reduce window's padding, do not count)."""
    found = []
    for line in text.splitlines():
        bare = re.sub(r"<\{.*?\}>", "", line)
        bare = re.sub(r"(dense|array)<[^>]*>", "", bare)
        if re.search(r"tensor<[^>]*\b(?:\d+x)*(f64|i64|ui64)>", bare):
            found.append(line.strip())
    return found


def lowered(name: str, platform: str) -> str:
    function, _ = CALLS[name]
    if "(counts)" in name:
        args = (jnp.zeros(PIXELS, jnp.int32),)
    else:
        args = (_resultants(), _dq()) if "(dq)" in name else (_resultants(),)
    return jax.export.export(jax.jit(function), platforms=(platform,))(*args).mlir_module()


def test_counting_sees_loops_and_runtime_conditionals():
    def looped(x):
        x = jax.lax.while_loop(lambda c: c[0] < c[1].sum(), lambda c: (c[0] + 1, c[1]),
                               (0, x))[1]  # fmt: skip
        return jax.lax.cond(x[0] > 0, lambda v: v + 1, lambda v: v - 1, x)

    text = jax.export.export(jax.jit(looped), platforms=("cuda",))(jnp.ones(8)).mlir_module()
    assert count_control_flow(text) == (1, 1)

    def scanned(x):  # static trip counts: a scan and a fori_loop with constant bounds
        x = jax.lax.scan(lambda c, _: (c * 2, None), x, None, length=5)[0]
        return jax.lax.fori_loop(0, 3, lambda i, c: c + i, x)

    text = jax.export.export(jax.jit(scanned), platforms=("cuda",))(jnp.ones(8)).mlir_module()
    assert "stablehlo.while" in text and count_control_flow(text) == (0, 0)

    def bounded_by_data(x):  # a counter whose bound is a value: data-dependent
        return jax.lax.fori_loop(0, x[0].astype(jnp.int32), lambda i, c: c + i, x)

    text = jax.export.export(jax.jit(bounded_by_data), platforms=("cuda",))(jnp.ones(8))
    assert count_control_flow(text.mlir_module()) == (1, 0)
    plain = jax.export.export(jax.jit(lambda x: x * 2), platforms=("cuda",))(jnp.ones(8))
    assert count_control_flow(plain.mlir_module()) == (0, 0)
    wide = jax.export.export(jax.jit(lambda x: x.astype(jnp.int32) * 2), platforms=("tpu",))
    assert wide_types(wide(jnp.ones(8, jnp.float32)).mlir_module()) == []
    converted = "%1 = stablehlo.convert %0 : (tensor<8xf32>) -> tensor<8xf64>"
    padded = ('%1 = "stablehlo.reduce_window"(%0, %c) <{padding = dense<[[3, 0]]> : '
              "tensor<1x2xi64>, window_dimensions = array<i64: 4>}> ({")
    assert wide_types(converted) == [converted] and wide_types(padded) == []


@pytest.mark.parametrize("name", sorted(CALLS))
def test_no_host_round_trips_on_gpu(name):
    whiles, cases = count_control_flow(lowered(name, "cuda"))
    assert whiles + cases <= CALLS[name][1], (whiles, cases)


@pytest.mark.skipif(jax.config.jax_enable_x64, reason="x64 makes the default integers 64-bit")
@pytest.mark.parametrize("name", sorted(CALLS))
def test_no_64_bit_operations_on_tpu(name):
    assert wide_types(lowered(name, "tpu")) == []
