"""Read patterns (multi-accumulation tables) of the Roman WFI.

A read pattern lists, for each resultant, the 1-based indices of the non-destructive reads
averaged into it. Read ``k`` happens ``k * read_time`` seconds after the reset. Everything the
ramp fitters need from a pattern (mean times, variance times, reads per resultant) is derived
here once, on the host, in float64.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from types import MappingProxyType

import numpy as np

__all__ = ["ReadPattern", "MA_TABLES", "DEFAULT_READ_TIME"]

#: Frame (read) time of the WFI science detectors [s] (romanisim >= 0.10).
DEFAULT_READ_TIME = 3.16247


def _contiguous(reads_per_resultant: tuple[int, ...]) -> tuple[tuple[int, ...], ...]:
    """Consecutive reads 1, 2, ... grouped into resultants of the given sizes."""
    groups, start = [], 1
    for size in reads_per_resultant:
        groups.append(tuple(range(start, start + size)))
        start += size
    return tuple(groups)


# Rev F multi-accumulation tables 3-17 (all reads used, grouped as listed) and the DMS test
# tables 109 (with skipped reads 4, 8, 9, 14) and 110, as romanisim 0.15 defines them.
_READS_PER_RESULTANT = {
    3: (1, 2, 6, 8, 1),
    4: (1, 1, 2, 5, 8, 8, 8, 10, 1),
    5: (1, 1, 2, 6, 6, 6, 6, 6, 8, 10, 10, 1),
    6: (1, 1, 2, 6, 6, 6, 8, 8, 8, 8, 8, 10, 10, 10, 1),
    7: (1, 1, 2, 8, 8, 10, 10, 12, 12, 12, 12, 12, 12, 12, 1),
    8: (1, 1, 2, 8, 9, 10, 12, 16, 16, 16, 16, 16, 16, 16, 1),
    9: (1, 1, 2, 8, 8, 10, 12, 16, 16, 16, 16, 16, 32, 32, 1),
    10: (1, 1, 2, 8, 12, 16, 16, 16, 16, 16, 32, 32, 32, 32, 1),
    11: (1, 1, 2, 16, 16, 16, 32, 32, 32, 32, 32, 32, 32, 32, 1),
    12: (1, 2, 2, 4, 4, 4, 4, 4, 4, 4, 4, 4, 8, 8, 1),
    13: (1, 2, 2, 4, 4, 4, 4, 8, 8, 8, 8, 8, 8, 8, 1),
    14: (1, 2, 2, 4, 6, 8, 8, 8, 8, 8, 8, 8, 8, 16, 1),
    15: (1, 2, 2, 4, 6, 6, 12, 12, 12, 12, 12, 12, 12, 12, 1),
    16: (1, 2, 2, 8, 12, 12, 12, 12, 12, 12, 12, 16, 16, 16, 1),
    17: (2, 2, 2, 6, 8, 12, 16, 16, 16, 16, 16, 16, 32, 32, 1),
    110: (1,) + (3,) * 14 + (1,),
}
_TABLES = {number: _contiguous(sizes) for number, sizes in _READS_PER_RESULTANT.items()}
_TABLES[109] = (
    (1,), (2, 3), (5, 6, 7), (10, 11, 12, 13), (15, 16, 17, 18, 19, 20),
    (21, 22, 23, 24, 25, 26), (27, 28, 29, 30, 31, 32), (33, 34, 35, 36, 37, 38),
    (39, 40, 41, 42, 43), (44,),
)  # fmt: skip

#: ``{table number: tuple of tuples of 1-based read indices}``, read-only.
MA_TABLES = MappingProxyType(dict(sorted(_TABLES.items())))


def _frozen(values) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    array.setflags(write=False)
    return array


@dataclass(frozen=True, eq=True)
class ReadPattern:
    """Which reads are averaged into each resultant, and when they happen.

    A ``ReadPattern`` is static, hashable structure: pass it to jitted functions as a static
    argument (the fitters do this for you); a new pattern compiles a new kernel.

    Parameters
    ----------
    reads : sequence of sequences of int
        For each resultant, the 1-based indices of its reads, strictly increasing over the
        whole pattern (reads may be skipped between and inside resultants).
    read_time : float
        Time between consecutive reads [s]; read ``k`` happens at ``k * read_time`` after
        reset. Default 3.16247 s (romanisim >= 0.10).

    Attributes
    ----------
    reads : tuple of tuple of int
    read_time : float
        [s]
    n_resultants : int
    n_reads : numpy.ndarray
        ``[n_resultants]`` reads per resultant, N_i.
    tbar : numpy.ndarray
        ``[n_resultants]`` mean read time of each resultant [s] (Brandt 2024a Eq. 4).
    tau : numpy.ndarray
        ``[n_resultants]`` variance-based time [s], tau_i = sum_{k,l} min(t_k, t_l) / N_i**2
        (Casertano 2022; Brandt 2024a Eq. 11), so Var(R_i) = f tau_i + sigma**2 / N_i.
    read_times : numpy.ndarray
        Every read time in order [s].
    exposure_time : float
        Time of the last read [s].

    Raises
    ------
    ValueError
        If a resultant is empty, an index is not a positive integer, or the indices are not
        strictly increasing; or if ``read_time`` is not positive and finite.

    Examples
    --------
    >>> pattern = ReadPattern.from_ma_table(4)
    >>> pattern.n_resultants, round(pattern.exposure_time, 3)
    (9, 139.149)
    """

    reads: tuple[tuple[int, ...], ...]
    read_time: float = DEFAULT_READ_TIME

    def __post_init__(self):
        try:
            reads = tuple(tuple(resultant) for resultant in self.reads)
        except TypeError as error:
            raise ValueError(
                "ReadPattern: `reads` must be a sequence of sequences of read indices"
            ) from error
        if not reads:
            raise ValueError("ReadPattern: `reads` is empty; a pattern needs one resultant")
        previous = 0
        for i, resultant in enumerate(reads):
            if not resultant:
                raise ValueError(f"ReadPattern: resultant {i} of `reads` is empty")
            for index in resultant:
                if isinstance(index, (bool, np.bool_)) or not isinstance(
                    index, (int, float, np.integer, np.floating)
                ) or not float(index).is_integer():
                    raise ValueError(
                        f"ReadPattern: read index {index!r} in resultant {i} is not an integer"
                    )
                if index <= 0:
                    raise ValueError(
                        f"ReadPattern: read index {index} in resultant {i} is not positive "
                        "(indices are 1-based)"
                    )
                if index <= previous:
                    raise ValueError(
                        f"ReadPattern: read indices must be strictly increasing; {index} in "
                        f"resultant {i} follows {previous}"
                    )
                previous = index
        reads = tuple(tuple(int(index) for index in resultant) for resultant in reads)
        read_time = float(self.read_time)
        if not np.isfinite(read_time) or read_time <= 0:
            raise ValueError(f"ReadPattern: `read_time` must be positive, got {self.read_time!r}")
        object.__setattr__(self, "reads", reads)
        object.__setattr__(self, "read_time", read_time)

    @classmethod
    def from_ma_table(cls, number: int, read_time: float = DEFAULT_READ_TIME) -> ReadPattern:
        """The pattern of multi-accumulation table ``number`` (3-17 Rev F, 109, 110)."""
        if number not in MA_TABLES:
            raise ValueError(
                f"ReadPattern.from_ma_table: unknown MA table `number` {number!r}; "
                f"known tables are {sorted(MA_TABLES)}"
            )
        return cls(MA_TABLES[number], read_time=read_time)

    def __repr__(self) -> str:
        for number, reads in MA_TABLES.items():
            if reads == self.reads:
                return f"ReadPattern.from_ma_table({number}, read_time={self.read_time})"
        return f"ReadPattern({self.reads}, read_time={self.read_time})"

    @property
    def n_resultants(self) -> int:
        return len(self.reads)

    @cached_property
    def n_reads(self) -> np.ndarray:
        return _frozen([len(resultant) for resultant in self.reads])

    @cached_property
    def read_times(self) -> np.ndarray:
        return _frozen([index * self.read_time for r in self.reads for index in r])

    @property
    def exposure_time(self) -> float:
        return self.reads[-1][-1] * self.read_time

    @cached_property
    def tbar(self) -> np.ndarray:
        return _frozen([self.read_time * np.mean(r) for r in self.reads])

    @cached_property
    def tau(self) -> np.ndarray:
        taus = []
        for resultant in self.reads:
            times = self.read_time * np.asarray(resultant, dtype=np.float64)
            n = len(times)
            # sum_{k,l} min(t_k, t_l) = sum_k (2 (n - k) - 1) t_k for ascending t (0-based k)
            taus.append(np.sum((2 * (n - np.arange(n)) - 1) * times) / n**2)
        return _frozen(taus)
