"""Ramp fitting kernels and their array entry points (electrons, seconds)."""

from ._common import RampFit
from ._covariance import construct_covar, resultants_to_differences
from ._optimal import fit_ramps_optimal

__all__ = ["RampFit", "construct_covar", "resultants_to_differences", "fit_ramps_optimal"]
