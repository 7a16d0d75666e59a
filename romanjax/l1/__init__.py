"""L1 simulation: apportion electrons over reads and add the detector effects."""

from ..kernels.effects import IPC_KERNEL, CosmicRayParams
from ._apportion import apportion_counts
from ._inject import inject_counts_into_l1
from ._persistence import (
    PersistenceParams,
    PersistenceState,
    expected_persistence_reads,
    persistence_current,
    persistence_fermi,
    persistence_read,
    persistence_reads,
    update_persistence,
)
from ._readout import dark_decay_signal, frame_read_times
from ._reference import DATA_ENCODING_OFFSET, decode_reference_read, encode_reference_read
from ._simulate import L1, simulate_l1

__all__ = ["apportion_counts", "simulate_l1", "L1", "IPC_KERNEL", "CosmicRayParams",
           "inject_counts_into_l1", "frame_read_times", "dark_decay_signal",
           "PersistenceState", "PersistenceParams", "update_persistence",
           "persistence_current", "persistence_fermi", "persistence_read", "persistence_reads",
           "expected_persistence_reads", "encode_reference_read", "decode_reference_read",
           "DATA_ENCODING_OFFSET"]
