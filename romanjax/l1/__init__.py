"""L1 simulation: apportion electrons over reads and add the detector effects."""

from ._apportion import apportion_counts
from ._effects import IPC_KERNEL, CosmicRayParams
from ._inject import inject_counts_into_l1
from ._readout import dark_decay_signal, frame_read_times
from ._simulate import L1, simulate_l1

__all__ = ["apportion_counts", "simulate_l1", "L1", "IPC_KERNEL", "CosmicRayParams",
           "inject_counts_into_l1", "frame_read_times", "dark_decay_signal"]
