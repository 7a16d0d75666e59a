"""Resultant flags as romancal reads them: DO_NOT_USE, SATURATED and JUMP_DET resultants are
left out of every fit (``romanjax.dq.DO_NOT_USE_IN_FIT``)."""

from __future__ import annotations

import numpy as np
import pytest

import romanjax
from romanjax import dq as dqflags

MA4 = romanjax.ReadPattern.from_ma_table(4)
FITTERS = {
    "casertano": lambda r, dq: romanjax.fit_ramps_casertano(r, MA4, 5.0, dq=dq),
    "optimal": lambda r, dq: romanjax.fit_ramps_optimal(r, MA4, 5.0, dq=dq),
    "likely": lambda r, dq: romanjax.fit_ramps_likely(r, MA4, 5.0, dq=dq, detect_jumps=False),
}


def _ramps(float_dtype):
    """Noiseless ramps [e] of three fluxes [e/s]: every sub-ramp has the true slope, so a
    fit that leaves out a resultant still gives it."""
    flux = np.array([3.0, 40.0, 900.0])
    return flux, (250.0 + MA4.tbar[:, None] * flux[None]).astype(float_dtype)


@pytest.mark.parametrize("method", sorted(FITTERS))
@pytest.mark.parametrize("bit", [dqflags.DO_NOT_USE, dqflags.SATURATED, dqflags.JUMP_DET])
def test_a_flagged_corrupt_resultant_is_left_out(method, bit, float_dtype):
    flux, resultants = _ramps(float_dtype)
    corrupt = resultants.copy()
    corrupt[-1] += 5000.0 + 50.0 * flux  # a corrupt last resultant [e]
    dq = np.zeros(corrupt.shape, np.uint32)
    dq[-1] = bit
    fit = FITTERS[method](corrupt, dq)
    np.testing.assert_allclose(np.asarray(fit.slope), flux, rtol=1e-4)
    assert not np.any(np.asarray(fit.dq) & dqflags.DO_NOT_USE)  # the pixels were fitted
    unflagged = FITTERS[method](corrupt, np.zeros_like(dq))
    assert np.all(np.abs(np.asarray(unflagged.slope) / flux - 1) > 1e-2)  # the test can fail


def test_make_l2_leaves_out_do_not_use_resultants(float_dtype):
    flux, resultants = _ramps(float_dtype)
    gain = 2.0
    data = resultants / gain  # [DN]
    data[-1] += 3000.0 + 50.0 * flux
    dq = np.zeros(data.shape, np.uint32)
    dq[-1] = dqflags.DO_NOT_USE
    for method in sorted(FITTERS):
        l2 = romanjax.make_l2(data, MA4, read_noise=2.5, gain=gain, dq=dq, method=method,
                              **({"detect_jumps": False} if method == "likely" else {}))
        np.testing.assert_allclose(np.asarray(l2.slope), flux / gain, rtol=1e-4)
        assert np.all(np.asarray(l2.dq) == dqflags.DO_NOT_USE)  # the input flag, carried
        kept = romanjax.make_l2(data, MA4, read_noise=2.5, gain=gain, method=method,
                                **({"detect_jumps": False} if method == "likely" else {}))
        assert np.all(np.abs(np.asarray(kept.slope) * gain / flux - 1) > 1e-2)
