"""mmipc: shared-memory IPC for multi-process Python.

Processes exchange data through rings that live in shared memory (anonymous memfd, named POSIX
shared memory, or files). Producers write records in place, consumers read zero-copy views.
"""

from __future__ import annotations

# The public namespace. Implementation lives in private modules (one per concept); every public
# class sets ``__module__ = "mmipc"`` so tracebacks, reprs and pickles show ``mmipc.Ring``.
from ._errors import (
    BusyError,
    ClosedError,
    CorruptionError,
    EndOfStream,
    IncompatibleRegion,
    MmipcError,
    NoSpaceError,
    RecordTooLarge,
    RegionExists,
    RegionNotFound,
    WaitTimeout,
    WouldBlock,
)
from ._ring import Ring, RingStats

RingStats.__module__ = "mmipc"

__version__ = "0.1.0"

__all__ = [
    "BusyError",
    "ClosedError",
    "CorruptionError",
    "EndOfStream",
    "IncompatibleRegion",
    "MmipcError",
    "NoSpaceError",
    "RecordTooLarge",
    "RegionExists",
    "RegionNotFound",
    "Ring",
    "RingStats",
    "WaitTimeout",
    "WouldBlock",
    "__version__",
]
