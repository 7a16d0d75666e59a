"""Host-side L1 and L2 products: numpy arrays plus what is needed to use them again (read
pattern, gain, read noise, WCS, metadata). These are what the ASDF files hold."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..._read_pattern import ReadPattern

__all__ = ["L1Image", "L2Image", "DEFAULT_GAIN", "DEFAULT_READ_NOISE"]

#: romanisim's default gain [e/DN] (``parameters.reference_data['gain']``).
DEFAULT_GAIN = 2.0
#: romanisim's default read noise of one read [DN] (``parameters.reference_data['readnoise']``).
DEFAULT_READ_NOISE = 5.0
#: romanisim's default offset of the reference-read encoding [DN]
#: (``parameters.data_encoding_offset``; :data:`romanjax.l1._reference.DATA_ENCODING_OFFSET`).
DATA_ENCODING_OFFSET = 4000


@dataclass
class L1Image:
    """An L1 exposure: resultants [DN] and what is needed to fit them.

    Attributes
    ----------
    resultants : numpy.ndarray ``[n_resultant, ny, nx]``
        Resultants [DN] (science pixels only, no reference-pixel border).
    dq : numpy.ndarray ``[n_resultant, ny, nx]`` uint32
        Resultant flags (``romanjax.dq``).
    pattern : ReadPattern
    gain : float or numpy.ndarray ``[ny, nx]``
        [e/DN]
    read_noise : float or numpy.ndarray ``[ny, nx]``
        Read noise of one read [DN].
    wcs : astropy.wcs.WCS, gwcs.WCS or None
    meta : dict
        Free-form metadata (provenance, simulation parameters); plain ASDF-serialisable values.
    reference_read : numpy.ndarray ``[ny, nx]`` or None
        The reference read [DN] (``simulate_l1(..., reference_read=True)``), or None. With
        one, Roman L1 files store the resultants encoded relative to it, as flight data
        (:func:`romanjax.encode_reference_read`); ``resultants`` always hold absolute DN.
    data_encoding_offset : int
        Offset of that encoding [DN] (romanisim's default 4000).
    """

    resultants: np.ndarray
    dq: np.ndarray
    pattern: ReadPattern
    gain: Any = DEFAULT_GAIN
    read_noise: Any = DEFAULT_READ_NOISE
    wcs: Any = None
    meta: dict = field(default_factory=dict)
    reference_read: Any = None
    data_encoding_offset: int = DATA_ENCODING_OFFSET

    kind = "L1"

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.resultants.shape[1:])


@dataclass
class L2Image:
    """An L2 count-rate image, romanjax's counterpart of a roman_datamodels ``ImageModel``.

    Attributes
    ----------
    data : numpy.ndarray ``[ny, nx]``
        Count rate [DN/s].
    var_rnoise, var_poisson : numpy.ndarray ``[ny, nx]``
        Slope variances from read noise and Poisson noise [(DN/s)**2].
    err : numpy.ndarray ``[ny, nx]``
        ``sqrt(var_rnoise + var_poisson)`` [DN/s].
    dq : numpy.ndarray ``[ny, nx]`` uint32
        Pixel flags (OR of the resultant flags).
    pattern : ReadPattern
        Read pattern of the exposure the slopes were fitted from.
    gain : float or numpy.ndarray ``[ny, nx]``
        [e/DN]
    read_noise : float or numpy.ndarray ``[ny, nx]``
        Read noise of one read [DN].
    wcs : astropy.wcs.WCS, gwcs.WCS or None
    meta : dict
    """

    data: np.ndarray
    var_rnoise: np.ndarray
    var_poisson: np.ndarray
    err: np.ndarray
    dq: np.ndarray
    pattern: ReadPattern
    gain: Any = DEFAULT_GAIN
    read_noise: Any = DEFAULT_READ_NOISE
    wcs: Any = None
    meta: dict = field(default_factory=dict)

    kind = "L2"

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)

    @classmethod
    def from_l2(cls, l2, pattern, *, gain, read_noise, wcs=None, meta=None) -> L2Image:
        """Wrap the :class:`romanjax.L2` result of :func:`romanjax.make_l2` as host arrays."""
        var_rnoise = np.asarray(l2.var_rnoise)
        var_poisson = np.asarray(l2.var_poisson)
        return cls(
            data=np.asarray(l2.slope),
            var_rnoise=var_rnoise,
            var_poisson=var_poisson,
            err=np.sqrt(var_rnoise + var_poisson),
            dq=np.asarray(l2.dq, dtype=np.uint32),
            pattern=pattern,
            gain=gain,
            read_noise=read_noise,
            wcs=wcs,
            meta=dict(meta or {}),
        )

    def copy(self) -> L2Image:
        """A deep copy of the arrays and metadata (the WCS object is shared; it is not
        modified by romanjax)."""
        import copy

        values = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, np.ndarray):
                value = value.copy()
            elif f.name == "meta":
                value = copy.deepcopy(value)
            values[f.name] = value
        return type(self)(**values)
