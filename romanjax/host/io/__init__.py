"""Reading and writing L1/L2 products as ASDF files (romanjax's own and romanisim's).

Host-side only: imports numpy at import time and asdf / astropy / roman_datamodels only
when a file is read or written.
"""

from ._asdf import (
    NBORDER,
    ProductFileError,
    atomic_path,
    atomic_paths,
    file_kind,
    has_romanjax_extras,
    open_datamodel,
    open_product,
    read_l1,
    read_l2,
    read_product,
    write_datamodel,
    write_l1,
    write_l2,
)
from ._pipeline import ramp_fit_datamodel
from ._products import DEFAULT_GAIN, DEFAULT_READ_NOISE, L1Image, L2Image
from ._reference import (
    REFERENCE_KINDS,
    read_reference,
    saturation_flags,
    saturation_pixel_flags,
)
from ._roman import gwcs_from_fits, to_roman_l1, to_roman_l2, write_roman_l1, write_roman_l2

__all__ = [
    "L1Image",
    "L2Image",
    "DEFAULT_GAIN",
    "DEFAULT_READ_NOISE",
    "NBORDER",
    "ProductFileError",
    "atomic_path",
    "atomic_paths",
    "file_kind",
    "has_romanjax_extras",
    "open_datamodel",
    "open_product",
    "read_l1",
    "read_l2",
    "read_product",
    "write_datamodel",
    "write_l1",
    "write_l2",
    "gwcs_from_fits",
    "ramp_fit_datamodel",
    "REFERENCE_KINDS",
    "read_reference",
    "saturation_flags",
    "saturation_pixel_flags",
    "to_roman_l1",
    "to_roman_l2",
    "write_roman_l1",
    "write_roman_l2",
]
