"""The ramp log-likelihood and its derivatives: compile and run times on a frame.

``romanjax.ramp_log_likelihood`` is the forward model's data term: scene fits take its
gradient, Newton steps and Fisher matrices its Hessian-vector products, and a model of a few
global parameters its full Hessian. For each MA table (``--table``, default 4 and 110: 9
and 16 resultants) and scene (``--scene``) the script jits, over a ``--size`` square frame of
float32 resultants [e] with 10 e read noise:

- ``value``: the per-pixel log-likelihood at the true rate image;
- ``grad``: its sum's gradient with respect to the rate image;
- ``hvp``: a Hessian-vector product in the rate image (forward over reverse);
- ``hessian(2)``: the full Hessian in two global parameters of the rate model
  ``theta_0 * template + theta_1`` (a flux scale and a background);

and prints the compile time (lowering plus XLA's compile, one call) and the best run time of
``--repeat`` calls, with the run time's ratio to the floor (one jitted read of the
resultants). The resultants are Poisson counts apportioned to the reads by
``romanjax.apportion_counts`` plus read noise. Scenes: ``sky``, rates log-uniform over
0.1-1000 e/s; ``stars``, 200 Gaussian stars (sigma 1.2 pixels, 10^3-10^5 e/s) on a 2 e/s
background.

    python benchmarks/bench_forward.py [--size 512] [--table 4 110] [--scene sky stars]
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
from _common import best_time, memory_pass_time

import romanjax

READ_NOISE = 10.0
SCENES = ("sky", "stars")


def rate_image(scene: str, size: int, rng) -> np.ndarray:
    """Count rate [e/s] of a ``size x size`` frame of ``scene`` (see the module docstring)."""
    if scene == "sky":
        return 10 ** rng.uniform(-1.0, 3.0, (size, size))
    if scene == "stars":
        yy, xx = np.mgrid[:size, :size]
        rate = np.full((size, size), 2.0)
        for x, y, flux in zip(rng.uniform(0, size, 200), rng.uniform(0, size, 200),
                              10 ** rng.uniform(3, 5, 200)):  # fmt: skip
            near = (np.abs(xx - x) < 8) & (np.abs(yy - y) < 8)
            r2 = (xx[near] - x) ** 2 + (yy[near] - y) ** 2
            rate[near] += flux / (2 * np.pi * 1.2**2) * np.exp(-0.5 * r2 / 1.2**2)
        return rate
    raise ValueError(f"unknown scene {scene!r}; choose from {SCENES}")


def simulated_resultants(pattern, rate, rng) -> jax.Array:
    """Float32 resultants [e] of ``rate``: Poisson counts over the exposure apportioned to
    the reads by :func:`romanjax.apportion_counts` (the exact distribution), plus
    ``READ_NOISE / sqrt(N_i)`` Gaussian read noise per resultant."""
    counts = rng.poisson(rate * pattern.exposure_time)
    resultants = romanjax.apportion_counts(jax.random.key(2026), counts, pattern)
    noise = rng.standard_normal(resultants.shape) * (READ_NOISE / np.sqrt(pattern.n_reads))[
        :, None, None]
    return (resultants + noise).astype(jnp.float32)


def programs(pattern, template):
    """name -> (function, example arguments) for the four programs of the module docstring."""

    def total(resultants, rate):
        return jnp.sum(romanjax.ramp_log_likelihood(resultants, pattern, rate, READ_NOISE))

    def value(resultants, rate):
        return romanjax.ramp_log_likelihood(resultants, pattern, rate, READ_NOISE)

    def grad(resultants, rate):
        return jax.grad(total, argnums=1)(resultants, rate)

    def hvp(resultants, rate, direction):
        return jax.jvp(lambda f: grad(resultants, f), (rate,), (direction,))[1]

    def hessian(resultants, theta):
        return jax.hessian(lambda th: total(resultants, th[0] * template + th[1]))(theta)

    return {"value": value, "grad": grad, "hvp": hvp, "hessian(2)": hessian}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--table", type=int, nargs="+", default=[4, 110])
    parser.add_argument("--scene", nargs="+", choices=SCENES, default=list(SCENES))
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    print(f"JAX {jax.__version__} on {jax.devices()[0].platform}, {args.size} x {args.size}, "
          f"float32, best of {args.repeat}")  # fmt: skip
    print("| table | scene | program | compile [s] | run [s] | run / floor |")
    print("|---:|---|---|---:|---:|---:|")
    for table in args.table:
        pattern = romanjax.ReadPattern.from_ma_table(table)
        for scene in args.scene:
            rng = np.random.default_rng(2026)
            rate = rate_image(scene, args.size, rng)
            resultants = simulated_resultants(pattern, rate, rng)
            rate = jnp.asarray(rate, jnp.float32)
            template = rate - 2.0
            floor = memory_pass_time(resultants)
            inputs = {"value": (resultants, rate), "grad": (resultants, rate),
                      "hvp": (resultants, rate, jnp.ones_like(rate)),
                      "hessian(2)": (resultants, jnp.array([1.0, 2.0], jnp.float32))}
            for name, function in programs(pattern, template).items():
                start = time.perf_counter()
                compiled = jax.jit(function).lower(*inputs[name]).compile()
                compile_s = time.perf_counter() - start
                out = compiled(*inputs[name])
                if not np.all(np.isfinite(np.asarray(out))):
                    raise RuntimeError(f"{name} on {scene}, MA table {table}: non-finite output")
                run = best_time(lambda c=compiled, a=inputs[name]: c(*a), args.repeat)
                print(f"| {table} | {scene} | {name} | {compile_s:.2f} | {run:.4f} | "
                      f"{run / floor:.0f} |", flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
