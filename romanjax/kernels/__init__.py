"""Kernel utilities shared by the fitters and the simulator.

Pure ``jax.numpy`` / ``jax.lax`` functions on pixel-minor rows: no validation, no jit, no
numpy on traced values, no I/O. ``queue``: stream compaction of the pixels a data-dependent
step must revisit; ``order``: sorting networks, medians and selection on short axes;
``linalg``: the O(n) symmetric tridiagonal solve; ``rng``: Philox4x32-10 random words keyed
by global element index;
``binomial``: the exact vectorised binomial sampler of the apportionment; ``poisson``: the
exact Poisson sampler of cosmic-ray tracks and persistence, keyed the same way; ``jumps``: the
jump statistics of stcal's ``ols_cas22`` on sub-ramps; ``effects``: the detector effects
of the L1 simulation (cosmic rays, IPC, non-linearity, readout timing, dark decay). Where the best
kernel differs by platform (materialisation of intermediates, the redraw schedule, the
64-bit product, the float64 ``log k!`` table) the choice is made when lowering, through
:mod:`romanjax._platform` (``by_platform``, ``materialise``).
"""
