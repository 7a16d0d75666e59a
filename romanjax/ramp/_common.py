"""Shared pieces of the ramp fitters: the result container and the pixel-batching wrapper."""

from __future__ import annotations

import dataclasses
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from .. import _platform
from .. import dq as dqflags
from .._read_pattern import ReadPattern

__all__ = ["RampFit", "pack_flags", "mark_left_out", "unpack_jumps", "flag_words",
           "refit_capacity", "refit_if_non_finite", "map_pixels", "map_pixel_chunks",
           "through_frames", "exclude_non_finite", "refit_batch", "queue_size"]


def exclude_non_finite(resultants, dq):
    """Non-finite resultants (NaN, +-inf) set to 0 and flagged DO_NOT_USE in ``dq``, so the
    masked fits leave them out and fit each pixel from its other resultants (inside the
    jit: one fused pass, and a NaN never reaches a sum that other values enter).

    Returns the cleaned resultants, the flags, and the bool mask of the resultants left out
    (for :func:`mark_left_out`)."""
    bad = ~jnp.isfinite(resultants)
    resultants = jnp.where(bad, jnp.zeros((), resultants.dtype), resultants)
    return resultants, dq | jnp.where(bad, jnp.uint32(dqflags.DO_NOT_USE), jnp.uint32(0)), bad


def refit_capacity(n_pixels: int) -> int:
    """Pixels with a non-finite resultant that a whole-ramp fit of device data refits from
    their other resultants in one call (static): 1/64 of the pixels, at least 64. Such
    pixels are gathered into one fixed-size batch (no data-dependent loop); any beyond it
    are flagged unfitted."""
    return int(min(n_pixels, max(64, -(-n_pixels // 64))))


def queue_size(n_pixels: int) -> int:
    """Pixels per trip of a work queue over a data-dependent subset of ``n_pixels`` pixels
    (static): 1/16 of them, at least 4096 (all of them if fewer). The subset (the likelihood
    fitter's jump search, the Casertano candidate refit off the CPU) is compacted into
    batches of this size, so a loop trip costs the batch, not the frame, and the usual
    subset (a few % of the pixels) takes one trip per iteration of its algorithm."""
    return max(min(n_pixels, 4096), -(-n_pixels // 16))


#: Pixels per block of the CPU refit of :func:`refit_batch`.
CPU_REFIT_BLOCK = 4096


def refit_batch(index, refit, cpu_refit, *columns):
    """The refit of the pixels ``index`` (the fixed-size batch of device-data pixels with a
    non-finite resultant, :func:`refit_capacity`: compacted, real pixels first, padded with
    the pixel count), which a whole-ramp fit of device data makes on every call.

    ``refit`` and ``cpu_refit`` (same results; the latter may be a smaller, slower program)
    take ``columns`` (arrays ``[..., n_pixels]``) gathered at a block of pixels and return a
    pytree of per-pixel arrays ``[block]``; the result is their values at ``index``. Values
    at padding entries are unspecified (the caller's scatter drops them).

    On accelerators ``refit`` runs once on the whole batch: no conditional, which would copy
    its predicate to the host and block. On CPUs, where a conditional costs nothing, the
    batch is cut into blocks of :data:`CPU_REFIT_BLOCK` pixels and ``cpu_refit`` runs only
    on the blocks that hold real pixels (usually none)
    (:func:`romanjax._platform.by_platform`)."""
    n_pixels = columns[0].shape[-1]

    def gather(where, columns):
        take = jnp.minimum(where, n_pixels - 1)
        return [column[..., take] for column in columns]

    def elsewhere(index, *columns):
        return refit(*gather(index, columns))

    def on_cpu(index, *columns):
        size = index.shape[0]
        block = min(size, CPU_REFIT_BLOCK)
        n_blocks = -(-size // block)
        padded = jnp.concatenate([index, jnp.full(n_blocks * block - size, n_pixels,
                                                  index.dtype)])  # fmt: skip
        count = jnp.sum(index < n_pixels, dtype=jnp.int32)
        shapes = jax.eval_shape(cpu_refit, *(
            jax.ShapeDtypeStruct(column.shape[:-1] + (block,), column.dtype)
            for column in columns))  # fmt: skip

        def skip(_):
            return jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)

        def one_block(_, b):
            where = jax.lax.dynamic_slice(padded, (b * block,), (block,))
            new = jax.lax.cond(b * block < count, lambda w: cpu_refit(*gather(w, columns)),
                               skip, where)  # fmt: skip
            return None, new

        # a scan with a conditional per block (not a loop of data-dependent length), so that
        # the refit can be differentiated in reverse mode
        _, out = jax.lax.scan(one_block, None, jnp.arange(n_blocks, dtype=jnp.int32))
        return jax.tree_util.tree_map(lambda o: o.reshape((-1,) + o.shape[2:])[:size], out)

    return _platform.by_platform(index, *columns, cpu=on_cpu, default=elsewhere)


def refit_if_non_finite(unusable, refit, unchanged, *operands):
    """``refit(*operands)``, the zeroing and refit of a whole-ramp fit's pixels marked
    ``unusable`` (``[m]``, a non-finite resultant); on CPUs only when there is such a pixel,
    else ``unchanged(*operands)`` (same shapes). A conditional costs nothing on a CPU, and
    a clean frame then keeps its outputs in one fused pass, which the zeroing and the
    batch's scatters into every output would break; accelerators refit unconditionally, as
    a conditional there copies its predicate to the host."""

    def on_cpu(*operands):
        return jax.lax.cond(jnp.any(unusable), refit, unchanged, *operands)

    return _platform.by_platform(*operands, cpu=on_cpu, default=refit)


def flag_words(n_resultants: int) -> int:
    """Words of :attr:`RampFit.flags` per pixel: ``2 n + 1`` bits, one jump bit per
    resultant, the unfitted bit, one left-out bit per resultant."""
    return (2 * n_resultants + 1) // 32 + 1


def _or_bits(words, flags, first: int):
    """``words [w, *pixels]`` with bit ``first + i`` set where ``flags[i]`` (one Python-level
    shift and OR per flag: elementwise, fused)."""
    words = list(words)
    for i, flag in enumerate(flags):
        position = first + i
        words[position // 32] = words[position // 32] | (
            flag.astype(jnp.uint32) << jnp.uint32(position % 32))
    return words


def pack_flags(jumps, unfitted, left_out=None):
    """Pack per-resultant jump flags, the per-pixel unfitted flag and the per-resultant
    left-out flags into uint32 words.

    Parameters
    ----------
    jumps : sequence of n bool arrays ``[*pixels]`` (or a bool array ``[n, *pixels]``)
        Resultant ``i`` flagged as a jump by the fitter.
    unfitted : bool array ``[*pixels]``
        No usable sub-ramp.
    left_out : sequence of n bool arrays ``[*pixels]`` (or ``[n, *pixels]``), optional
        Resultant ``i`` left out because it is not finite (NaN or inf).

    Returns
    -------
    Array ``[flag_words(n), *pixels]`` uint32: bit ``b`` of the pixel's flags is bit
    ``b % 32`` of word ``b // 32``; bits ``0 .. n-1`` are the jumps, bit ``n`` is
    ``unfitted``, bits ``n+1 .. 2n`` the left-out resultants.
    """
    n = len(jumps)
    zero = jnp.zeros(jnp.shape(unfitted), jnp.uint32)
    words = _or_bits([zero] * flag_words(n), list(jumps) + [unfitted], 0)
    if left_out is not None:
        words = _or_bits(words, left_out, n + 1)
    return jnp.stack(words)


def mark_left_out(words, left_out):
    """``words [flag_words(n), *pixels]`` with the left-out bits (``n + 1 + i``) set where
    ``left_out [n, *pixels]`` (the non-finite resultants a fit left out)."""
    n = left_out.shape[0]
    return jnp.stack(_or_bits([words[w] for w in range(words.shape[0])], list(left_out), n + 1))


def unfitted_flags(unfitted, n_resultants: int, words=None):
    """:attr:`RampFit.flags` words ``[flag_words(n), *pixels]`` with no jumps and the unfitted
    bit set where ``unfitted`` (OR-ed into ``words`` when given): one shift, no packing of
    ``n`` all-false jump rows."""
    n = n_resultants
    bit = unfitted.astype(jnp.uint32) << jnp.uint32(n % 32)
    if words is None:
        words = jnp.zeros((flag_words(n),) + unfitted.shape, jnp.uint32)
    return words.at[n // 32].set(words[n // 32] | bit)


def unpack_bits(flags, first: int, count: int):
    """Bits ``first .. first + count - 1`` of packed ``flags [w, *pixels]`` as a list of
    ``count`` bool arrays ``[*pixels]``."""
    return [((flags[b // 32] >> (b % 32)) & 1) != 0 for b in range(first, first + count)]


def unpack_jumps(flags, n_resultants: int):
    """The jump bits of packed ``flags [w, *pixels]`` as a list of n bool arrays ``[*pixels]``
    (inverse of :func:`pack_flags`)."""
    return unpack_bits(flags, 0, n_resultants)


@partial(
    jax.tree_util.register_dataclass,
    data_fields=["slope", "var_read", "var_poisson", "var_total", "flags", "pedestal",
                 "var_pedestal", "cov_pedestal_slope", "chisq"],
    meta_fields=["n_resultants"],
)
@dataclasses.dataclass(frozen=True)
class RampFit:
    """Result of a ramp fit, stored as the fitters compute it: one ``[*pixels]`` array per
    quantity (pixel-minor, C-contiguous). A pytree, so it passes through ``jit``, ``vmap``
    and ``grad``; the number of resultants is static metadata.

    Attributes
    ----------
    slope : Array ``[*pixels]``
        Fitted count rate [e/s].
    var_read, var_poisson, var_total : Array ``[*pixels]``
        Slope variance from read noise, from Poisson noise, and their sum [(e/s)**2].
    flags : Array ``[(2 n_resultants + 1) // 32 + 1, *pixels]`` uint32, or None
        What the fitter found, packed per pixel (bit ``b`` is bit ``b % 32`` of word
        ``b // 32``): bit ``i`` when the fitter flagged resultant ``i`` as a jump
        (``JUMP_DET``), bit ``n`` when the pixel has no usable sub-ramp (``DO_NOT_USE``;
        slope and variances are then 0), bit ``n + 1 + i`` when resultant ``i`` was left out
        because it is not finite (``DO_NOT_USE``). None when nothing can be flagged (finite
        host data, no input dq and no jump detection). The input dq is not repeated here;
        :meth:`resultant_dq` combines both. Expanded forms: :attr:`dq`, :attr:`jump_map`,
        :attr:`left_out`, :attr:`unfitted`, :attr:`pixel_dq`.
    pedestal : Array ``[*pixels]`` or None
        Fitted pedestal [e] (optimal fitter); None for fitters that do not estimate it
        (Casertano, likelihood: :attr:`par` then shows 0, as romanisim and stcal do).
    var_pedestal, cov_pedestal_slope : Array ``[3, *pixels]`` or None
        Pedestal variance [e**2] and pedestal-slope covariance [e**2/s], each as (read,
        Poisson, total) (optimal fitter), else None.
    chisq : Array ``[*pixels]`` or None
        Chi-square of the fit (likelihood fitter), else None.
    n_resultants : int
        Resultants of the read pattern (static).
    """

    slope: jax.Array
    var_read: jax.Array
    var_poisson: jax.Array
    var_total: jax.Array
    flags: jax.Array | None = None
    pedestal: jax.Array | None = None
    var_pedestal: jax.Array | None = None
    cov_pedestal_slope: jax.Array | None = None
    chisq: jax.Array | None = None
    n_resultants: int = 0

    def _xp(self):
        return np if isinstance(self.slope, np.ndarray) else jnp

    def replace(self, **changes) -> RampFit:
        """A copy with the given fields replaced."""
        return dataclasses.replace(self, **changes)

    @property
    def shape(self) -> tuple:
        """The pixel shape."""
        return tuple(np.shape(self.slope))

    @property
    def par(self) -> jax.Array:
        """``[*pixels, 2]`` (pedestal [e], slope [e/s]), romanisim's layout (computed)."""
        xp = self._xp()
        pedestal = xp.zeros_like(self.slope) if self.pedestal is None else self.pedestal
        return xp.stack([pedestal, self.slope], axis=-1)

    @property
    def var(self) -> jax.Array:
        """``[*pixels, 3, 2, 2]`` covariance of :attr:`par` from read noise, Poisson noise and
        their total, romanisim's layout (computed; pedestal entries 0 when not fitted)."""
        xp = self._xp()
        slope = xp.stack([self.var_read, self.var_poisson, self.var_total], axis=-1)
        if self.var_pedestal is None:
            zero = xp.zeros_like(slope)
            ped = cov = zero
        else:
            ped = xp.moveaxis(self.var_pedestal, 0, -1)
            cov = xp.moveaxis(self.cov_pedestal_slope, 0, -1)
        top = xp.stack([ped, cov], axis=-1)
        bottom = xp.stack([cov, slope], axis=-1)
        return xp.stack([top, bottom], axis=-2)

    @property
    def unfitted(self) -> jax.Array:
        """``[*pixels]`` bool: the pixel has no usable sub-ramp."""
        n = self.n_resultants
        if self.flags is None:
            return self._xp().zeros(self.shape, bool)
        return ((self.flags[n // 32] >> (n % 32)) & 1) != 0

    @property
    def jump_map(self) -> jax.Array:
        """``[n_resultants, *pixels]`` bool: resultants the fitter flagged as jumps."""
        xp = self._xp()
        if self.flags is None:
            return xp.zeros((self.n_resultants,) + self.shape, bool)
        return xp.stack(unpack_jumps(self.flags, self.n_resultants)) if self.n_resultants else (
            xp.zeros((0,) + self.shape, bool))

    @property
    def left_out(self) -> jax.Array:
        """``[n_resultants, *pixels]`` bool: resultants left out of the fit because they are
        not finite (NaN or inf)."""
        xp = self._xp()
        n = self.n_resultants
        if self.flags is None or n == 0:
            return xp.zeros((n,) + self.shape, bool)
        return xp.stack(unpack_bits(self.flags, n + 1, n))

    @property
    def dq(self) -> jax.Array:
        """``[n_resultants, *pixels]`` uint32: the flags the fitter set, ``JUMP_DET`` on the
        jumps it found, ``DO_NOT_USE`` on the non-finite resultants it left out and on every
        resultant of an unfitted pixel (OR it with the input dq, or call
        :meth:`resultant_dq`, for romanisim's combined array)."""
        return self.resultant_dq()

    def resultant_dq(self, dq=None) -> jax.Array:
        """``[n_resultants, *pixels]`` uint32: ``dq`` (the input flags; default none) OR
        ``JUMP_DET`` on the jumps found OR ``DO_NOT_USE`` on the non-finite resultants left
        out and on every resultant of an unfitted pixel."""
        xp = self._xp()
        jump = xp.where(self.jump_map, xp.uint32(dqflags.JUMP_DET), xp.uint32(0))
        unusable = self.left_out | self.unfitted
        out = jump | xp.where(unusable, xp.uint32(dqflags.DO_NOT_USE), xp.uint32(0))
        if dq is not None:
            out = out | xp.asarray(dq).astype(xp.uint32)
        return out.astype(xp.uint32)

    @property
    def pixel_dq(self) -> jax.Array:
        """``[*pixels]`` uint32: ``JUMP_DET`` where the fitter found a jump, ``DO_NOT_USE``
        where the pixel could not be fitted."""
        xp = self._xp()
        jump = xp.any(self.jump_map, axis=0) if self.n_resultants else xp.zeros(self.shape, bool)
        return (xp.where(jump, xp.uint32(dqflags.JUMP_DET), xp.uint32(0))
                | xp.where(self.unfitted, xp.uint32(dqflags.DO_NOT_USE), xp.uint32(0)))


def map_pixels(kernel, resultants, dq, *per_pixel):
    """Apply a kernel on pixel-minor rows, ``kernel(ramps [n, P], dq [n, P], *[P])``, to
    ``resultants`` and ``dq`` ``[n, *pixels]`` and ``per_pixel`` arrays ``[*pixels]`` (or
    None, passed through): the pixels are flattened to P and every leaf of the kernel's
    result ``[*leaf_shape, P]`` is given back its pixel axes, ``[*leaf_shape, *pixels]``.
    """
    n = resultants.shape[0]
    pixels = resultants.shape[1:]
    flat_extra = [None if value is None else value.reshape(-1) for value in per_pixel]
    fit = kernel(resultants.reshape(n, -1), dq.reshape(n, -1), *flat_extra)
    return jax.tree_util.tree_map(lambda leaf: leaf.reshape(leaf.shape[:-1] + pixels), fit)


def through_frames(resultants, pattern, read_noise, *others) -> bool:
    """Whether a public fitter runs this call through the frame driver (large host frames on
    CPUs, :func:`romanjax._platform.fits_through_frames`); never for an invalid ``pattern``,
    whose error the fitter itself reports."""
    if not isinstance(pattern, ReadPattern):
        return False
    return _platform.fits_through_frames(resultants, pattern.n_resultants, read_noise, *others)


def map_pixel_chunks(kernel, *arrays):
    """``kernel(*arrays)`` for arrays whose last axis is the (flat) pixel axis, returning a
    pytree of arrays whose last axis is that pixel axis, evaluated chunk by chunk where the
    platform module asks for it (:func:`romanjax._platform.kernel_chunk_pixels`).

    The chunks are ``fori_loop`` iterations over fixed-size windows; the last window is
    moved back to end at the last pixel (it overlaps the one before, whose pixels it
    recomputes to the same values), so one kernel of one size is compiled. Pixels are
    independent, so the result equals one pass over all pixels (to the last bit or two of
    floating point: the code generated for another length may round differently).
    """
    present = [a for a in arrays if a is not None]
    n_pixels = present[0].shape[-1]
    n_rows = max((a.shape[0] for a in present if a.ndim > 1), default=1)
    itemsize = max(jnp.dtype(a.dtype).itemsize for a in present)
    chunk = _platform.kernel_chunk_pixels(n_rows, itemsize)
    if chunk is None or n_pixels <= chunk:
        return kernel(*arrays)
    count = -(-n_pixels // chunk)

    def window(array, start):
        if array is None:
            return None
        sizes = array.shape[:-1] + (chunk,)
        return jax.lax.dynamic_slice(array, (0,) * (array.ndim - 1) + (start,), sizes)

    shapes = jax.eval_shape(kernel, *[window(a, 0) for a in arrays])
    out = jax.tree_util.tree_map(
        lambda s: jnp.zeros(s.shape[:-1] + (n_pixels,), s.dtype), shapes
    )

    def body(i, out):
        start = jnp.minimum(i * chunk, n_pixels - chunk)
        part = kernel(*[window(a, start) for a in arrays])
        return jax.tree_util.tree_map(
            lambda o, p: jax.lax.dynamic_update_slice(o, p, (0,) * (o.ndim - 1) + (start,)),
            out, part,
        )  # fmt: skip

    return jax.lax.fori_loop(0, count, body, out)
