"""The exception hierarchy of mmipc (the only module that defines exceptions).

Every error raised by mmipc derives from :class:`MmipcError`; most also derive from the builtin
that a caller would naturally catch, so ``except TimeoutError`` or ``except FileNotFoundError``
keep working::

    MmipcError (Exception)
    ├── ClosedError (ValueError)            you closed this handle, then used it
    ├── WouldBlock (BlockingIOError)        a ``*_nowait`` call found nothing to do
    ├── WaitTimeout (TimeoutError)          a blocking call ran out of its timeout
    │   └── HeapExhausted                   a channel's heap stayed full (says who holds it)
    ├── EndOfStream (EOFError)              the producer ended the stream and it is drained
    ├── RegionNotFound (FileNotFoundError)  no region (or semaphore) of that name or path
    ├── RegionExists (FileExistsError)      ``create`` found the name or path taken
    ├── NoSpaceError (OSError)              the backing store cannot hold the region
    ├── IncompatibleRegion (ValueError)     not an mmipc region, other version/kind, truncated,
    │   │                                   still initializing, unlinked
    │   └── CorruptionError                 inconsistent header or record (random bytes, torn file)
    ├── RecordTooLarge (ValueError)         a record that the ring can never hold
    ├── BusyError (RuntimeError)            a role (single writer, consumer) held by a live peer
    └── SerializationError (ValueError)     an object that cannot be serialized (nothing was
                                            sent) or a record that cannot be rebuilt

All exceptions carry one message string naming the object and the numbers that were wrong, and
all of them pickle (they travel between processes).
"""

from __future__ import annotations

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
    "WaitTimeout",
    "WouldBlock",
]


class MmipcError(Exception):
    """Base class of every error raised by mmipc."""

    __module__ = "mmipc"


class ClosedError(MmipcError, ValueError):
    """The handle was closed (by this process) and cannot be used any more."""

    __module__ = "mmipc"


class WouldBlock(MmipcError, BlockingIOError):
    """A ``*_nowait`` call could not proceed without waiting (nothing to receive, no space)."""

    __module__ = "mmipc"


class WaitTimeout(MmipcError, TimeoutError):
    """A blocking call did not complete before its timeout."""

    __module__ = "mmipc"


class EndOfStream(MmipcError, EOFError):
    """The producer ended the stream and every record before the end has been received."""

    __module__ = "mmipc"


class RegionNotFound(MmipcError, FileNotFoundError):
    """No region exists with that name or path."""

    __module__ = "mmipc"


class RegionExists(MmipcError, FileExistsError):
    """A region already exists with that name or path."""

    __module__ = "mmipc"


class NoSpaceError(MmipcError, OSError):
    """The backing store (``/dev/shm``, a disk) cannot hold the region."""

    __module__ = "mmipc"


class IncompatibleRegion(MmipcError, ValueError):
    """The object is not a usable mmipc region of the expected kind and layout version."""

    __module__ = "mmipc"


class CorruptionError(IncompatibleRegion):
    """A header or record is inconsistent: the memory was overwritten or the file is torn."""

    __module__ = "mmipc"


class RecordTooLarge(MmipcError, ValueError):
    """A record is larger than the ring can ever hold."""

    __module__ = "mmipc"


class BusyError(MmipcError, RuntimeError):
    """A role that only one process may hold (single writer, consumer) is held by a live peer."""

    __module__ = "mmipc"


class HeapExhausted(WaitTimeout):
    """A channel's shared heap stayed full for the whole timeout (received objects hold it).

    The message says how many blocks and bytes each participant holds.
    """

    __module__ = "mmipc"


class SerializationError(MmipcError, ValueError):
    """An object could not be serialized (nothing was sent) or a record could not be rebuilt."""

    __module__ = "mmipc"


__all__ += ["HeapExhausted", "SerializationError"]
