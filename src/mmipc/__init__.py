"""mmipc: shared-memory IPC for multi-process Python.

Processes exchange data through rings that live in shared memory (anonymous memfd, named POSIX
shared memory, or files). Producers write records in place, consumers read zero-copy views.
"""

from __future__ import annotations

from ._channel import Channel, ChannelStats

# The public namespace. Implementation lives in private modules (one per concept); every public
# class sets ``__module__ = "mmipc"`` so tracebacks, reprs and pickles show ``mmipc.Ring``.
from ._errors import (
    BusyError,
    ClosedError,
    CorruptionError,
    EndOfStream,
    HeapExhausted,
    IncompatibleRegion,
    MmipcError,
    NoSpaceError,
    RecordTooLarge,
    RegionExists,
    RegionNotFound,
    SerializationError,
    WaitTimeout,
    WouldBlock,
)
from ._ring import Ring, RingStats
from ._serialization import PairSerializer, PickleSerializer, RawSerializer, Serializer

RingStats.__module__ = "mmipc"
ChannelStats.__module__ = "mmipc"
for _cls in (PairSerializer, PickleSerializer, RawSerializer, Serializer):
    _cls.__module__ = "mmipc"
del _cls

__version__ = "0.1.0"

__all__ = [
    "BusyError",
    "Channel",
    "ChannelStats",
    "ClosedError",
    "CorruptionError",
    "EndOfStream",
    "HeapExhausted",
    "IncompatibleRegion",
    "MmipcError",
    "NoSpaceError",
    "PairSerializer",
    "PickleSerializer",
    "RawSerializer",
    "RecordTooLarge",
    "RegionExists",
    "RegionNotFound",
    "Ring",
    "RingStats",
    "SerializationError",
    "Serializer",
    "WaitTimeout",
    "WouldBlock",
    "__version__",
]
