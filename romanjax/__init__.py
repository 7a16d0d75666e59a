"""romanjax: Roman WFI detector-level simulation and ramp fitting in JAX.

Three layers: :mod:`romanjax.kernels` (the shared pure ``jax.numpy`` kernels on pixel-minor
rows), the array API (``ramp`` and ``l1``, each stage's own kernels beside its validated,
jitted entry points; ``l2``, ``forward``, ``jax_scene``: device arrays in and out) and
:mod:`romanjax.host` (numpy, files, galsim, the frame drivers, dask, the command line).

Public names are loaded on first use, so ``import romanjax`` imports neither JAX nor the
host-side libraries (asdf, astropy, galsim) until they are needed.
"""

from importlib import import_module

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    "ReadPattern": "romanjax._read_pattern",
    "MA_TABLES": "romanjax._read_pattern",
    "RampFit": "romanjax.ramp._common",
    "construct_covar": "romanjax.ramp._covariance",
    "resultants_to_differences": "romanjax.ramp._covariance",
    "fit_ramps_optimal": "romanjax.ramp._optimal",
    "fit_ramps_casertano": "romanjax.ramp._casertano",
    "fit_ramps_likely": "romanjax.ramp._likely",
    "apportion_counts": "romanjax.l1._apportion",
    "simulate_l1": "romanjax.l1._simulate",
    "L1": "romanjax.l1._simulate",
    "make_l2": "romanjax.l2",
    "L2": "romanjax.l2",
    "inject_sources_into_l2": "romanjax.host.inject",
    "inject_sources_into_l1": "romanjax.host.inject",
    "inject_counts_into_l1": "romanjax.l1._inject",
    "frame_read_times": "romanjax.l1._readout",
    "dark_decay_signal": "romanjax.l1._readout",
    "PersistenceState": "romanjax.l1._persistence",
    "PersistenceParams": "romanjax.l1._persistence",
    "update_persistence": "romanjax.l1._persistence",
    "persistence_current": "romanjax.l1._persistence",
    "persistence_fermi": "romanjax.l1._persistence",
    "persistence_read": "romanjax.l1._persistence",
    "persistence_reads": "romanjax.l1._persistence",
    "expected_persistence_reads": "romanjax.l1._persistence",
    "encode_reference_read": "romanjax.l1._reference",
    "decode_reference_read": "romanjax.l1._reference",
    "expected_resultants": "romanjax.forward",
    "ramp_log_likelihood": "romanjax.forward",
    "fisher_slope_variance": "romanjax.forward",
    "fit_frame": "romanjax.host.frames",
    "simulate_frame": "romanjax.host.frames",
    "apportion_frame": "romanjax.host.frames",
}
_SUBMODULES = {"dq", "testing", "ramp", "l1", "host", "jax_scene"}

__all__ = sorted(_EXPORTS) + ["dq", "__version__"]


def __getattr__(name):
    if name in _EXPORTS:
        value = getattr(import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    if name in _SUBMODULES:
        module = import_module(f"romanjax.{name}")
        globals()[name] = module
        return module
    raise AttributeError(f"module 'romanjax' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS) | _SUBMODULES)
