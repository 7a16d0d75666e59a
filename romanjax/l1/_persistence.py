"""Detector persistence (Sanchez et al. 2023), as romanisim's ``Persistence``, in pure JAX.

A pixel that collected a large fluence ``x`` [e] in an earlier exposure releases trapped
charge afterwards. romanisim models the released current at a time ``dt`` [s] after that
exposure with a Fermi response in the fluence and a power law in time::

    I(x, dt) = A / (1 + exp(-(x - x0) / dx)) * (x / x0)**alpha * (dt / 1000 s)**(-gamma)

for ``x >= half_well``; below the half well the current is linear in the fluence,
``I(x, dt) = I(half_well, dt) * x / half_well`` [e/s].

Each exposure that leaves a pixel with a fluence whose current 30 s later exceeds
``ignore_rate`` adds an event ``(x, t)`` to that pixel (``t``: the time of the exposure's
last read); events whose current 30 s after the newest exposure falls to or below
``ignore_rate`` are forgotten. During a later exposure every read ``j`` at time ``t_j``
receives ``Poisson(sum_k I(x_k, t_j - t_k) * read_time)`` electrons, added to the charge
that is not photons (pedestal, cosmic rays), so every later read keeps them.

romanisim keeps a list of events of any length; here the state is dense, ``n_events`` slots
per pixel (``[n_events, *pixels]`` arrays), so it passes through ``jit``, ``vmap`` and
``lax.scan``. An empty slot has fluence 0. When a pixel has more live events than slots,
:func:`update_persistence` keeps those with the largest current 30 s after the update (the
ones dropped contribute the least); with enough slots the state holds exactly romanisim's
events.

Times are seconds on a clock of the caller's choice (romanisim uses MJD): the event times,
the update time and the exposure start times must use the same clock. In float32 a time
``T`` [s] is known to ``T * 6e-8``, so keep the clock near zero (e.g. seconds since the first
exposure of a sequence, or shift it with ``state._replace(time=state.time - t0)``).

Random draws: each read's electrons are exact Poisson draws keyed by the pixel's global
index, Philox4x32-10 counter ``(element, read index, stream, 0)`` under the caller's key
(:func:`romanjax.kernels.poisson.poisson`): a pixel's draws do not depend on the array it is
drawn in, so chunked frames give the same numbers.
"""

from __future__ import annotations

import math
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from .._read_pattern import DEFAULT_READ_TIME
from .._validate import check_pixel_shape
from ..kernels.order import sorting_network
from ..kernels.poisson import poisson
from ..kernels.rng import key_words

__all__ = [
    "PersistenceParams",
    "PersistenceState",
    "persistence_fermi",
    "persistence_current",
    "update_persistence",
    "persistence_read",
    "persistence_reads",
    "expected_persistence_reads",
    "TRACKING_DELAY",
]

#: New events are judged by their current this long after the exposure, and old events by
#: their current this long after the update, as romanisim does [s].
TRACKING_DELAY = 30.0
#: Time scale of the power law [s]: ``A`` is the current 1000 s after the exposure.
_TIME_SCALE = 1000.0
class PersistenceParams(NamedTuple):
    """Parameters of the persistence model (romanisim 0.15 defaults, from Sanchez et al. 2023).

    Attributes
    ----------
    A : float
        Amplitude [e/s]: the current 1000 s after an exposure of fluence ``x0``, times 2
        (the Fermi factor is 1/2 at ``x0``). romanisim's docstring calls it electrons.
    x0 : float
        Pivot fluence of the Fermi response [e].
    dx : float
        Width of the Fermi response [e].
    alpha : float
        Power-law index of the fluence (dimensionless).
    gamma : float
        Power-law index of the time since the exposure (dimensionless).
    half_well : float
        Below this fluence the current is linear in the fluence [e].
    ignore_rate : float
        Events whose current 30 s after an update is at or below this are not tracked
        [e/s]; must be >= 0.
    """

    A: float = 0.017
    x0: float = 6.0e4
    dx: float = 5.0e4
    alpha: float = 0.045
    gamma: float = 1.0
    half_well: float = 5.0e4
    ignore_rate: float = 0.01

    @classmethod
    def from_romanisim(cls, persistence) -> PersistenceParams:
        """The parameters of a romanisim ``Persistence`` or of its ``to_dict()`` (``A``,
        ``x0``, ``dx``, ``alpha``, ``gamma``; ``half_well`` and ``ignore_rate`` are
        romanisim module settings and keep their defaults here)."""
        d = persistence if isinstance(persistence, dict) else persistence.to_dict()
        return cls(**{name: float(d[name]) for name in ("A", "x0", "dx", "alpha", "gamma")})


class PersistenceState(NamedTuple):
    """Persistence events of every pixel, carried from one exposure to the next.

    Attributes
    ----------
    fluence : array ``[n_events, *pixels]``
        Fluence of each tracked event [e]; 0 marks an empty slot.
    time : array ``[n_events, *pixels]``
        Time of each event [s] (the last read of the exposure that caused it), on the
        caller's clock; 0 in empty slots.

    Start with :meth:`empty`; after each exposure call :func:`update_persistence` with the
    electrons it collected (pedestal excluded) and the time of its last read.
    """

    fluence: jax.Array
    time: jax.Array

    @classmethod
    def empty(cls, shape, n_events: int = 4, dtype=None) -> PersistenceState:
        """A state with no events for pixels of ``shape`` and ``n_events`` slots per pixel;
        ``dtype`` defaults to JAX's default float (float64 with x64 on)."""
        if int(n_events) < 1:
            raise ValueError(f"PersistenceState.empty: `n_events` must be >= 1, got {n_events}")
        dtype = _default_float(dtype)
        zeros = jnp.zeros((int(n_events),) + tuple(shape), dtype)
        return cls(zeros, zeros)

    @property
    def n_events(self) -> int:
        return self.fluence.shape[0]

    @classmethod
    def from_romanisim(cls, persistence, shape, *, epoch_mjd: float, n_events: int | None = None,
                       dtype=None) -> PersistenceState:  # fmt: skip
        """A state from a romanisim ``Persistence`` or its ``to_dict()`` (host side).

        Parameters
        ----------
        persistence : romanisim ``Persistence`` or dict with ``x`` [e], ``t`` [MJD] and
            ``index`` (indices into the raveled image)
        shape : tuple
            Pixel shape of the image.
        epoch_mjd : float
            MJD of time 0 of the returned state's clock: ``time = (t - epoch_mjd) * 86400``.
        n_events : int, optional
            Slots per pixel (default: 4, or more if a pixel has more events). A pixel with
            more events than ``n_events`` raises ``ValueError``.
        dtype : float dtype, optional
        """
        d = persistence if isinstance(persistence, dict) else persistence.to_dict()
        x = np.asarray(d["x"], np.float64).reshape(-1)
        t = np.asarray(d["t"], np.float64).reshape(-1)
        index = np.asarray(d["index"], np.int64).reshape(-1)
        shape = tuple(int(s) for s in shape)
        npix = int(np.prod(shape))
        if not (x.shape == t.shape == index.shape):
            raise ValueError("PersistenceState.from_romanisim: x, t and index differ in length")
        if index.size and (index.min() < 0 or index.max() >= npix):
            raise ValueError(f"PersistenceState.from_romanisim: an index is outside an image "
                             f"of shape {shape}")  # fmt: skip
        order = np.argsort(index, kind="stable")
        index, x, t = index[order], x[order], t[order]
        first = np.searchsorted(index, index, side="left")
        slot = np.arange(index.size) - first
        most = int(slot.max()) + 1 if index.size else 0
        if n_events is None:
            n_events = max(4, most)
        if most > n_events:
            raise ValueError(f"PersistenceState.from_romanisim: a pixel has {most} events, "
                             f"more than n_events={n_events}")  # fmt: skip
        fluence = np.zeros((n_events, npix))
        time = np.zeros((n_events, npix))
        fluence[slot, index] = x
        time[slot, index] = (t - epoch_mjd) * 86400.0
        dtype = _default_float(dtype)
        return cls(jnp.asarray(fluence.reshape((n_events,) + shape), dtype),
                   jnp.asarray(time.reshape((n_events,) + shape), dtype))  # fmt: skip

    def to_romanisim(self, *, epoch_mjd: float, params: PersistenceParams | None = None) -> dict:
        """The events as romanisim's ``Persistence.to_dict()`` (host side): ``x`` [e], ``t``
        [MJD] (float64), ``index`` (into the raveled image) and the parameters ``A``, ``x0``,
        ``dx``, ``alpha``, ``gamma``; ``romanisim.persistence.Persistence.from_dict`` reads
        it."""
        params = PersistenceParams() if params is None else params
        fluence = np.asarray(self.fluence)
        time = np.asarray(self.time, np.float64)
        n = fluence.shape[0]
        fluence, time = fluence.reshape(n, -1), time.reshape(n, -1)
        slot, index = np.nonzero(fluence > 0)
        return dict(x=fluence[slot, index], t=epoch_mjd + time[slot, index] / 86400.0,
                    index=index.astype(np.int64), A=params.A, x0=params.x0, dx=params.dx,
                    alpha=params.alpha, gamma=params.gamma)  # fmt: skip


def _params(params):
    if params is None:
        return PersistenceParams()
    if not isinstance(params, PersistenceParams):
        raise TypeError(f"`params` must be a PersistenceParams, got {type(params).__name__}")
    return params


def _default_float(dtype):
    if dtype is None:
        dtype = jnp.float64
    return jnp.dtype(jax.dtypes.canonicalize_dtype(dtype))


def _as_float(value):
    value = jnp.asarray(value)
    if not jnp.issubdtype(value.dtype, jnp.floating):
        value = value.astype(_default_float(None))
    return value


# --------------------------------------------------------------------------- kernels (pure)


def _fermi(x, dt, params):
    """Sanchez et al. (2023) current [e/s] at ``dt`` [s] > 0 after a fluence ``x`` [e]."""
    hw = params.half_well
    decay = (dt / _TIME_SCALE) ** (-params.gamma)
    # the Fermi branch is evaluated at max(x, half_well), so negative or zero fluences never
    # reach the power (x / x0)**alpha; the result there is the linear branch anyway
    x_high = jnp.where(x < hw, hw, x)
    high = params.A / (1 + jnp.exp(-(x_high - params.x0) / params.dx)) * (
        x_high / params.x0) ** params.alpha * decay
    half = params.A / (1 + jnp.exp(-(hw - params.x0) / params.dx)) * (
        hw / params.x0) ** params.alpha * decay
    return jnp.where(x < hw, half * x / hw, high)


def _event_current(fluence, event_time, now, params):
    """Current [e/s] of each event at ``now``: zero in empty slots and for events that are not
    in the past (romanisim raises there; traced code cannot)."""
    dt = now - event_time
    live = (fluence > 0) & (dt > 0)
    return jnp.where(live, _fermi(fluence, jnp.where(live, dt, _TIME_SCALE), params), 0)


def _read_mean(fluence, event_time, now, duration, params, exact):
    """Expected persistence electrons of one read ``[*pixels]`` ending at ``now`` [s].

    ``exact=False`` (romanisim): the current at the read times ``duration``.
    ``exact=True``: the current integrated over ``(now - duration, now]``; with
    ``u0 = now - duration - t_k``, ``L = log1p(duration / u0)`` and ``e = 1 - gamma``,
    ``int_u0^(u0 + duration) (u / 1000)**-gamma du = 1000 (u0/1000)**e expm1(e L) / e``
    (``1000 L`` at ``e = 0``).
    """
    if not exact:
        return jnp.sum(_event_current(fluence, event_time, now, params), axis=0) * duration
    u0 = now - duration - event_time
    live = (fluence > 0) & (u0 > 0) & (duration > 0)
    u0 = jnp.where(live, u0, _TIME_SCALE)
    amplitude = _fermi(jnp.where(live, fluence, 0), jnp.full_like(u0, _TIME_SCALE), params)
    e = 1 - jnp.asarray(params.gamma, u0.dtype)
    log_ratio = jnp.log1p(duration / u0)
    growth = jnp.where(e == 0, log_ratio, jnp.expm1(e * log_ratio) / jnp.where(e == 0, 1, e))
    integral = _TIME_SCALE * (u0 / _TIME_SCALE) ** e * growth
    return jnp.sum(jnp.where(live, amplitude * integral, 0), axis=0)


def _default_element(shape):
    return jnp.arange(math.prod(shape), dtype=jnp.uint32).reshape(shape)


def _update(state, fluence, now, params):
    fluence = jnp.asarray(fluence, state.fluence.dtype)
    now = jnp.asarray(now, state.time.dtype)
    threshold = params.ignore_rate
    new_rate = _fermi(fluence, jnp.full_like(fluence, TRACKING_DELAY), params)
    old_rate = _event_current(state.fluence, state.time, now + TRACKING_DELAY, params)
    # candidates: the new event first, then the old ones, as romanisim concatenates them
    rates = [new_rate] + list(old_rate)
    values = [fluence] + list(state.fluence)
    times = [jnp.broadcast_to(now, fluence.shape)] + list(state.time)
    # a NaN rate compares False: such an event is not kept
    keys = [jnp.where(r > threshold, r, -jnp.inf) for r in rates]
    # descending sort by rate with payload (a sorting network on the n_events + 1 wires)
    for i, j in sorting_network(len(keys)):
        swap = keys[j] > keys[i]
        keys[i], keys[j] = jnp.where(swap, keys[j], keys[i]), jnp.where(swap, keys[i], keys[j])
        values[i], values[j] = (jnp.where(swap, values[j], values[i]),
                                jnp.where(swap, values[i], values[j]))  # fmt: skip
        times[i], times[j] = (jnp.where(swap, times[j], times[i]),
                              jnp.where(swap, times[i], times[j]))  # fmt: skip
    n = state.fluence.shape[0]
    kept = [jnp.isfinite(key) for key in keys[:n]]
    new_fluence = jnp.stack([jnp.where(k, v, 0) for k, v in zip(kept, values[:n])])
    new_time = jnp.stack([jnp.where(k, t, 0) for k, t in zip(kept, times[:n])])
    return PersistenceState(new_fluence.astype(state.fluence.dtype),
                            new_time.astype(state.time.dtype))  # fmt: skip


def _read(key, state, index, now, duration, params, exact, element):
    mean = _read_mean(state.fluence, state.time, now, duration, params, exact)
    return poisson(key_words(key), mean, element, index)


def _durations(read_times, read_time, exact):
    if exact:
        return jnp.diff(read_times, prepend=jnp.zeros((1,), read_times.dtype))
    return jnp.full_like(read_times, read_time)


# --------------------------------------------------------------------------- array API


def _check_state(function, state, name="state"):
    if not isinstance(state, PersistenceState):
        raise TypeError(f"{function}: `{name}` must be a PersistenceState, got "
                        f"{type(state).__name__}")  # fmt: skip
    if np.shape(state.fluence) != np.shape(state.time) or np.ndim(state.fluence) < 1:
        raise ValueError(f"{function}: `{name}.fluence` {np.shape(state.fluence)} and "
                         f"`{name}.time` {np.shape(state.time)} must have one shape "
                         f"[n_events, *pixels]")  # fmt: skip
    for field in ("fluence", "time"):
        value = getattr(state, field)
        if not isinstance(value, jax.Array) and not np.all(np.isfinite(np.asarray(value))):
            raise ValueError(f"{function}: `{name}.{field}` holds non-finite values")


def _check_host(function, name, value, *, ndim=None):
    if isinstance(value, jax.Array):  # device or traced values are not read back
        return
    host = np.asarray(value)
    if host.dtype.kind not in "iuf":
        raise TypeError(f"{function}: `{name}` must be real numbers, got dtype {host.dtype}")
    if ndim is not None and host.ndim != ndim:
        raise ValueError(f"{function}: `{name}` must have {ndim} dimension(s), got shape "
                         f"{host.shape}")  # fmt: skip
    if not np.isfinite(host).all():
        raise ValueError(f"{function}: `{name}` must be finite, got NaN or inf")


def _check_element(function, element, pixels):
    if element is None:
        return _default_element(pixels)
    check_pixel_shape(function, "element", element, pixels)
    return jnp.asarray(element, jnp.uint32)


def persistence_fermi(fluence: ArrayLike, dt: ArrayLike,
                      params: PersistenceParams | None = None) -> jax.Array:  # fmt: skip
    """Persistence current of an event, romanisim's ``fermi`` (Sanchez et al. 2023).

    ``A / (1 + exp(-(x - x0) / dx)) * (x / x0)**alpha * (dt / 1000)**(-gamma)`` for
    ``x >= half_well``, ``I(half_well, dt) * x / half_well`` below.

    Parameters
    ----------
    fluence : array
        Fluence ``x`` of the event [e].
    dt : array
        Time since the event [s] (broadcast against ``fluence``; > 0 for a finite result).
    params : PersistenceParams, optional
        Model parameters (default: romanisim's).

    Returns
    -------
    array
        Current [e/s], the broadcast shape, in the float dtype of the inputs.
    """
    return _fermi_jit(fluence, dt, _params(params))


@jax.jit
def _fermi_jit(fluence, dt, params):
    fluence, dt = _as_float(fluence), _as_float(dt)
    dtype = jnp.result_type(fluence, dt)
    return _fermi(fluence.astype(dtype), dt.astype(dtype), params)


@jax.jit
def _current(state, now, params):
    now = jnp.asarray(now, state.time.dtype)
    return jnp.sum(_event_current(state.fluence, state.time, now, params), axis=0)


def persistence_current(state: PersistenceState, time: ArrayLike,
                        params: PersistenceParams | None = None) -> jax.Array:  # fmt: skip
    """Total persistence current of every pixel at ``time``, romanisim's
    ``Persistence.current`` summed over each pixel's events.

    Parameters
    ----------
    state : PersistenceState
    time : float or array ``[*pixels]``
        Time [s] on the state's clock. Events at or after ``time`` contribute 0.
    params : PersistenceParams, optional
        Model parameters (default: romanisim's).

    Returns
    -------
    array ``[*pixels]``
        Current [e/s] in the state's dtype.
    """
    _check_state("persistence_current", state)
    _check_host("persistence_current", "time", time)
    return _current(state, time, _params(params))


def update_persistence(state: PersistenceState, fluence: ArrayLike, time: ArrayLike,
                       params: PersistenceParams | None = None,
                       ) -> PersistenceState:  # fmt: skip
    """The state after an exposure, romanisim's ``Persistence.update``.

    The exposure becomes a new event ``(fluence, time)`` in every pixel where
    ``I(fluence, 30 s) > ignore_rate``; old events are kept where their current at
    ``time + 30 s`` is above ``ignore_rate``. A pixel with more surviving events than slots
    keeps the ones with the largest of those currents.

    Parameters
    ----------
    state : PersistenceState
        Events before the exposure.
    fluence : array ``[*pixels]``
        Electrons collected in the exposure [e]: photons plus everything else the pixel
        accumulated (cosmic rays, persistence, pedestal noise), without the pedestal, as
        romanisim passes them.
    time : float or array ``[*pixels]``
        Time of the exposure's last read [s], on the state's clock.
    params : PersistenceParams, optional
        Model parameters (default: romanisim's).

    Returns
    -------
    PersistenceState
        Same shapes and dtype as ``state``.
    """
    _check_state("update_persistence", state)
    _check_host("update_persistence", "fluence", fluence)
    _check_host("update_persistence", "time", time)
    pixels = tuple(np.shape(state.fluence)[1:])
    if np.shape(fluence) != pixels:
        raise ValueError(f"update_persistence: `fluence` of shape {np.shape(fluence)} is not "
                         f"the state's pixel shape {pixels}")  # fmt: skip
    return _update_jit(state, fluence, time, _params(params))


_update_jit = jax.jit(_update)


@partial(jax.jit, static_argnames=("exact",))
def _read_jit(key, state, index, now, duration, params, element, *, exact):
    return _read(key, state, index, jnp.asarray(now, state.time.dtype),
                 jnp.asarray(duration, state.time.dtype), params, exact, element)  # fmt: skip


def persistence_read(key: jax.Array, state: PersistenceState, index: ArrayLike,
                     time: ArrayLike, duration: ArrayLike, *,
                     params: PersistenceParams | None = None, exact: bool = False,
                     element: ArrayLike | None = None) -> jax.Array:  # fmt: skip
    """Persistence electrons released in one read (for a per-read loop such as an L1 scan).

    Parameters
    ----------
    key : jax.random key
        The persistence key (``simulate_l1`` folds in tag 4); its draws are keyed further by
        ``(element, index)``.
    state : PersistenceState
    index : int (may be traced)
        0-based number of the read in the exposure; the same ``index`` gives the same draws.
    time : float
        Absolute time of the read [s], on the state's clock (exposure start + read time).
    duration : float
        ``exact=False``: romanisim's integration time of a read [s] (its frame time, 3.16247
        s); ``exact=True``: the interval since the previous read (since the reset for the
        first) [s].
    params : PersistenceParams, optional
        Model parameters (default: romanisim's).
    exact : bool
        ``False`` (romanisim): mean ``I(time) * duration``, the current at the read times
        the duration. ``True``: the current integrated over ``(time - duration, time]``.
    element : uint32 array ``[*pixels]``, optional
        Global pixel indices of the random streams (default ``0..n_pixels - 1``, row-major).

    Returns
    -------
    array ``[*pixels]``
        Poisson draws (integer-valued floats) [e], in the state's dtype.
    """
    _check_state("persistence_read", state)
    pixels = tuple(np.shape(state.fluence)[1:])
    element = _check_element("persistence_read", element, pixels)
    return _read_jit(key, state, index, time, duration, _params(params), element,
                     exact=bool(exact))  # fmt: skip


def _cumulative(per_read, state, read_times, start_time, read_time, exact):
    """``[n_read, *pixels]`` running sum over the reads of ``per_read(j, time, duration)``
    ``[*pixels]`` (read ``j`` at ``start_time + read_times[j]``, durations as
    :func:`_durations`), in the dtype of the state's clock."""
    dtype = state.time.dtype
    read_times = jnp.asarray(read_times, dtype)
    durations = _durations(read_times, jnp.asarray(read_time, dtype), exact)
    start = jnp.asarray(start_time, dtype)

    def step(total, xs):
        j, t, duration = xs
        total = total + per_read(j, start + t, duration)
        return total, total

    zeros = jnp.zeros(state.fluence.shape[1:], dtype)
    _, out = jax.lax.scan(step, zeros, (jnp.arange(read_times.shape[0]), read_times,
                                        durations))  # fmt: skip
    return out


@partial(jax.jit, static_argnames=("exact",))
def _reads_jit(key, state, read_times, start_time, read_time, params, element, *, exact):
    def draw(j, time, duration):
        return _read(key, state, j, time, duration, params, exact, element)

    return _cumulative(draw, state, read_times, start_time, read_time, exact)


@partial(jax.jit, static_argnames=("exact",))
def _expected_jit(state, read_times, start_time, read_time, params, *, exact):
    def mean(j, time, duration):
        return _read_mean(state.fluence, state.time, time, duration, params, exact)

    return _cumulative(mean, state, read_times, start_time, read_time, exact)


def _check_reads(function, state, read_times, start_time):
    _check_state(function, state)
    _check_host(function, "read_times", read_times, ndim=1)
    _check_host(function, "start_time", start_time, ndim=0)
    if not isinstance(read_times, jax.Array):
        host = np.asarray(read_times, np.float64)
        if host.size and (host[0] < 0 or np.any(np.diff(host) < 0)):
            raise ValueError(f"{function}: `read_times` must be non-negative and "
                             f"non-decreasing")  # fmt: skip


def persistence_reads(key: jax.Array, state: PersistenceState, read_times: ArrayLike,
                      start_time: ArrayLike, *, read_time: float = DEFAULT_READ_TIME,
                      params: PersistenceParams | None = None, exact: bool = False,
                      element: ArrayLike | None = None) -> jax.Array:  # fmt: skip
    """Cumulative persistence electrons at every read of an exposure.

    Read ``j`` (at ``start_time + read_times[j]``) releases ``Poisson(mean_j)`` electrons,
    drawn as :func:`persistence_read` ``(key, state, j, start_time + read_times[j], ...)``
    does; they add to the non-photon charge, so the value after read ``j`` is the sum over
    reads ``0..j``. As romanisim's ``make_l1``, ``mean_j = I(start_time + read_times[j]) *
    read_time``, and reads that are not in ``read_times`` (skipped reads of a pattern)
    release nothing. ``exact=True`` integrates the current over the time since the previous
    read instead (since the reset, ``read_times = 0``, for the first), so skipped reads'
    time counts too.

    Parameters
    ----------
    key : jax.random key
    state : PersistenceState
        Events from earlier exposures (all before ``start_time``).
    read_times : array ``[n_read]``
        Times of the reads after the reset [s] (``ReadPattern.read_times``).
    start_time : float
        Time of the exposure's reset [s], on the state's clock.
    read_time : float
        Integration time of one read [s] for ``exact=False`` (``ReadPattern.read_time``).
    params : PersistenceParams, optional
        Model parameters (default: romanisim's).
    exact : bool
    element : uint32 array ``[*pixels]``, optional
        Global pixel indices of the random streams (default ``0..n_pixels - 1``).

    Returns
    -------
    array ``[n_read, *pixels]``
        Cumulative electrons [e] (integer-valued floats), in the state's dtype.
    """
    _check_reads("persistence_reads", state, read_times, start_time)
    pixels = tuple(np.shape(state.fluence)[1:])
    element = _check_element("persistence_reads", element, pixels)
    return _reads_jit(key, state, read_times, start_time, read_time, _params(params), element,
                      exact=bool(exact))  # fmt: skip


def expected_persistence_reads(state: PersistenceState, read_times: ArrayLike,
                               start_time: ArrayLike, *, read_time: float = DEFAULT_READ_TIME,
                               params: PersistenceParams | None = None,
                               exact: bool = False) -> jax.Array:  # fmt: skip
    """The mean of :func:`persistence_reads`: cumulative expected persistence electrons.

    ``sum_{l <= j} mean_l`` with ``mean_l = I(start_time + read_times[l]) * read_time``
    (``exact=False``, romanisim) or the current integrated since the previous read
    (``exact=True``), as :func:`persistence_reads` draws them.

    Parameters
    ----------
    state : PersistenceState
        Events from earlier exposures (all before ``start_time``).
    read_times : array ``[n_read]``
        Times of the reads after the reset [s] (``ReadPattern.read_times``).
    start_time : float
        Time of the exposure's reset [s], on the state's clock.
    read_time : float
        Integration time of one read [s] for ``exact=False`` (``ReadPattern.read_time``).
    params : PersistenceParams, optional
        Model parameters (default: romanisim's).
    exact : bool

    Returns
    -------
    array ``[n_read, *pixels]``
        Cumulative expected electrons [e] after each read, in the state's dtype.
    """
    _check_reads("expected_persistence_reads", state, read_times, start_time)
    return _expected_jit(state, read_times, start_time, read_time, _params(params),
                         exact=bool(exact))  # fmt: skip
