"""Kernel utilities shared by the fitters and the simulator.

Pure ``jax.numpy`` / ``jax.lax`` functions on pixel-minor rows: no validation, no jit, no
numpy on traced values, no I/O. ``queue``: stream compaction of the pixels a data-dependent
step must revisit; ``order``: sorting networks, medians and selection on short axes;
``linalg``: the O(n) symmetric tridiagonal solve; ``rng``: Philox4x32-10 random words;
``binomial``: the exact vectorised binomial sampler of the apportionment. The
materialisation of intermediates is platform-dependent and lives in
:mod:`romanjax._platform` (``materialise``).
"""
