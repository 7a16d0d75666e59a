"""The host side of romanjax: numpy, files and drivers around the array API.

- :mod:`~romanjax.host.frames`: the frame drivers ``fit_frame``, ``simulate_frame`` and
  ``apportion_frame`` (chunks of a large frame, sharded over the devices; numpy or device
  arrays in, C-contiguous numpy arrays out), with the CPU-only measures that
  :mod:`romanjax._platform` applies when every device is a CPU.
- :mod:`~romanjax.host.io`: Roman (roman_datamodels) and romanjax ASDF files, reference
  files, atomic writes.
- :mod:`~romanjax.host.scene`: galsim scenes and PSFs rendered to count-rate images.
- :mod:`~romanjax.host.inject`: source injection into L1 and L2 products.
- :mod:`~romanjax.host.distributed`: dask over many exposures.
- :mod:`~romanjax.host.cli`: the ``romanjax`` command line.

Only this layer imports asdf, astropy, gwcs, roman_datamodels and galsim. The submodules
load on first use, so ``import romanjax.host`` stays light.
"""

from importlib import import_module

_SUBMODULES = {"frames", "io", "scene", "inject", "distributed", "cli"}


def __getattr__(name):
    if name in _SUBMODULES:
        module = import_module(f"romanjax.host.{name}")
        globals()[name] = module
        return module
    raise AttributeError(f"module 'romanjax.host' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | _SUBMODULES)
