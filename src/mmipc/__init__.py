"""mmipc: shared-memory IPC for multi-process Python.

Processes exchange data through rings that live in shared memory (anonymous memfd, named POSIX
shared memory, or files). Producers write records in place, consumers read zero-copy views.
"""

from __future__ import annotations

from ._aio import AsyncChannel, AsyncRing
from ._broadcast import Subscriber, SubscriberStats
from ._channel import Channel, ChannelStats

# The public namespace. Implementation lives in private modules (one per concept); every public
# class sets ``__module__ = "mmipc"`` so tracebacks, reprs and pickles show ``mmipc.Ring``.
from ._errors import (
    BrokenPool,
    BusyError,
    ClosedError,
    CorruptionError,
    EndOfStream,
    HeapExhausted,
    IncompatibleRegion,
    KVFull,
    Lapped,
    MmipcError,
    NoSpaceError,
    ReadOnlyError,
    RecordTooLarge,
    RegionExists,
    RegionNotFound,
    RemoteError,
    SerializationError,
    ServerDied,
    WaitTimeout,
    WorkerDied,
    WouldBlock,
)
from ._kv import KV, KVObjects, KVStats
from ._pool import Pool, PoolStats
from ._ring import RecordInfo, Ring, RingStats
from ._rpc import Client, Request, Server
from ._serialization import PairSerializer, PickleSerializer, RawSerializer, Serializer
from ._workqueue import _QueueRing  # noqa: F401  (registers mode="queue" with Ring.create)

RingStats.__module__ = "mmipc"
RecordInfo.__module__ = "mmipc"
SubscriberStats.__module__ = "mmipc"
ChannelStats.__module__ = "mmipc"
KVStats.__module__ = "mmipc"
PoolStats.__module__ = "mmipc"
for _cls in (PairSerializer, PickleSerializer, RawSerializer, Serializer):
    _cls.__module__ = "mmipc"
del _cls

__version__ = "0.1.0"

__all__ = [
    "KV",
    "AsyncChannel",
    "AsyncRing",
    "BrokenPool",
    "BusyError",
    "Channel",
    "ChannelStats",
    "Client",
    "ClosedError",
    "CorruptionError",
    "EndOfStream",
    "HeapExhausted",
    "IncompatibleRegion",
    "KVFull",
    "KVObjects",
    "KVStats",
    "Lapped",
    "MmipcError",
    "NoSpaceError",
    "PairSerializer",
    "PickleSerializer",
    "Pool",
    "PoolStats",
    "RawSerializer",
    "ReadOnlyError",
    "RecordInfo",
    "RecordTooLarge",
    "RegionExists",
    "RegionNotFound",
    "RemoteError",
    "Request",
    "Ring",
    "RingStats",
    "SerializationError",
    "Serializer",
    "Server",
    "ServerDied",
    "Subscriber",
    "SubscriberStats",
    "WaitTimeout",
    "WorkerDied",
    "WouldBlock",
    "__version__",
]
