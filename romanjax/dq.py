"""Data-quality flag bits, as Roman's pixel and group flags (roman_datamodels ``dqflags``).

A resultant whose dq has any bit of :data:`DO_NOT_USE_IN_FIT` set is excluded from ramp fits
and splits its ramp into sub-ramps. The fitters never raise inside ``jit``; every resultant
of a pixel they cannot fit (no sub-ramp of two or more usable resultants) gets
:data:`DO_NOT_USE` in the returned dq instead.
"""

__all__ = [
    "DO_NOT_USE",
    "SATURATED",
    "JUMP_DET",
    "AD_FLOOR",
    "NONLINEAR",
    "NO_LIN_CORR",
    "NO_FLAT_FIELD",
    "NO_SAT_CHECK",
    "DO_NOT_USE_IN_FIT",
]

#: Pixel/resultant should not be used (Roman ``DO_NOT_USE``); set on every resultant of a
#: pixel the fitters could not fit (fewer than two usable resultants).
DO_NOT_USE = 1
#: Resultant at or above the saturation level.
SATURATED = 2
#: Jump (cosmic ray) detected in, or simulated into, this resultant.
JUMP_DET = 4
#: Resultant at or below the analogue-to-digital converter's floor (0 DN); romancal's
#: saturation step sets it with DO_NOT_USE.
AD_FLOOR = 2**6
#: Non-linear response.
NONLINEAR = 2**16
#: Non-linearity correction not available for this pixel.
NO_LIN_CORR = 2**20
#: Flat field not available for this pixel (a flat reference value that is not finite or
#: not positive; the pixel is then not flat-fielded).
NO_FLAT_FIELD = 2**18
#: Saturation not checked for this pixel (no usable saturation level): romancal's saturation
#: step compares it with the converter's limit only.
NO_SAT_CHECK = 2**21
#: ``DO_NOT_USE | SATURATED | JUMP_DET``: the bits that exclude a resultant from fits, as
#: romancal's ramp fitting skips them (romanisim's own fits skip only its 6, SATURATED |
#: JUMP_DET; its resultant flags never carry DO_NOT_USE).
DO_NOT_USE_IN_FIT = DO_NOT_USE | SATURATED | JUMP_DET
