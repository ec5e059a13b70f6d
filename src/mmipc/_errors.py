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
    │   └── KVFull                          a KV region reached its max_size (nothing written)
    ├── IncompatibleRegion (ValueError)     not an mmipc region, other version/kind, truncated,
    │   │                                   still initializing, unlinked
    │   └── CorruptionError                 inconsistent header or record (random bytes, torn file)
    ├── RecordTooLarge (ValueError)         a record that the ring can never hold
    ├── BusyError (RuntimeError)            a role (single writer, consumer) held by a live peer
    ├── WorkerDied (RuntimeError)           a pool worker died while running the task (pid, signal)
    ├── BrokenPool (BrokenExecutor)         a pool that cannot run tasks any more (initializer failed)
    ├── ReadOnlyError (PermissionError)     a write through a read-only KV handle
    ├── Lapped                              a broadcast subscriber was cut loose (``missed``)
    ├── ServerDied (ConnectionError)        the server that took a request died before replying
    ├── RemoteError                         another process's error (carries its traceback)
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


class KVFull(NoSpaceError):
    """A KV region cannot hold a write: it reached its ``max_size`` (or the backing store is full).

    Nothing was written: the key keeps its previous value. The message names the sizes.
    """

    __module__ = "mmipc"


__all__ += ["KVFull"]


class Lapped(MmipcError):
    """A broadcast subscriber fell too far behind and was cut loose (``untether_after``).

    ``missed`` is the number of records published after the last record this subscriber
    received and before it rejoined: the subscriber has already rejoined at the head, so the
    next receive call returns the next record published. Raised once per lap.
    """

    __module__ = "mmipc"

    def __init__(self, message: str, missed: int = 0) -> None:
        super().__init__(message)
        self.missed = missed

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (str(self), self.missed))


__all__ += ["Lapped"]


class ReadOnlyError(MmipcError, PermissionError):
    """A write through a handle attached with ``readonly=True``."""

    __module__ = "mmipc"


__all__ += ["ReadOnlyError"]


class WorkerDied(MmipcError, RuntimeError):
    """A :class:`~mmipc.Pool` worker died (signal, ``os._exit``) while it was running the task.

    Set on the future of the task the worker was running; the pool replaced the worker and every
    other task goes on. ``pid``, ``exitcode`` (negative: killed by signal ``-exitcode``) and
    ``signal_name`` (``"SIGKILL"``, or ``None`` for a plain exit) name what happened.
    """

    __module__ = "mmipc"

    def __init__(self, message: str, pid: int = 0, exitcode: int | None = None) -> None:
        super().__init__(message)
        self.pid = pid
        self.exitcode = exitcode

    @property
    def signal_name(self) -> str | None:
        import signal

        if self.exitcode is None or self.exitcode >= 0:
            return None
        try:
            return signal.Signals(-self.exitcode).name
        except ValueError:
            return f"signal {-self.exitcode}"

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (str(self), self.pid, self.exitcode))


def _broken_executor_base() -> type[RuntimeError]:
    from concurrent.futures import BrokenExecutor

    return BrokenExecutor


class BrokenPool(MmipcError, _broken_executor_base()):  # type: ignore[misc]
    """A :class:`~mmipc.Pool` can run no more tasks (a worker's initializer failed or it died
    before it was ready). Pending and running tasks fail with it; ``submit`` raises it.

    A subclass of :class:`concurrent.futures.BrokenExecutor`, like ``BrokenProcessPool``.
    """

    __module__ = "mmipc"


__all__ += ["BrokenPool", "WorkerDied"]


class ServerDied(MmipcError, ConnectionError):
    """The server process that may have taken a request died or left before replying.

    Raised by :meth:`~mmipc.Client.call`; the request may or may not have run.
    """

    __module__ = "mmipc"


class RemoteError(MmipcError):
    """An error that happened in another process; its message carries the remote traceback.

    A request handler's exception reaches :meth:`~mmipc.Client.call` as itself, with a
    ``RemoteError`` holding the server's formatted traceback as its ``__cause__``.
    """

    __module__ = "mmipc"


__all__ += ["RemoteError", "ServerDied"]
