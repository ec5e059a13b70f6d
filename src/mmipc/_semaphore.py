"""Named POSIX semaphores: the only module that imports ``posix_ipc``.

It wraps the details DESIGN.md 3.6 lists once: ``acquire`` releases the GIL and ``release`` does
not; timeouts are wall-clock, so long waits are loops of short ones against ``time.monotonic()``;
a failing ``acquire(0)`` raises, which costs ~0.5 us, so callers check shared state before
trying. posix_ipc errors become mmipc errors.

Signals. When a signal interrupts ``sem_timedwait``, posix_ipc runs the Python handler and then
*replaces* whatever the handler raised with its own ``SignalError`` (measured with posix_ipc
1.3: a ``KeyboardInterrupt`` or pytest-timeout's failure vanishes). Retrying that error would
make Ctrl-C and alarms ineffective during a wait. So in the main thread (the only thread that
runs Python signal handlers) blocking waits run with signals blocked, at most
:data:`SIGNAL_SLICE` at a time; when the mask is restored, pending signals are delivered and
their handlers raise normally. Other threads never run handlers: an interrupted wait is retried.

Platform gap: on macOS ``sem_timedwait`` does not exist (a timeout > 0 blocks forever in
posix_ipc) and ``sem_getvalue`` fails; mmipc targets Linux and says so in its docs.
"""

from __future__ import annotations

import signal
import threading
import time

import posix_ipc

from ._errors import MmipcError, RegionExists, RegionNotFound

__all__ = ["SLICE", "Semaphore", "semaphore_name", "unlink_semaphore"]

# Longest single kernel wait. Every blocking wait is a loop of waits of at most this long that
# re-checks shared state in between, so a lost post delays a waiter by at most SLICE (DESIGN 3.3).
SLICE = 0.005

# Longest wait with signals blocked in the main thread: the most a Ctrl-C can be delayed.
SIGNAL_SLICE = 0.05

PREFIX = "mmipc-"
_ALL_SIGNALS = signal.valid_signals()
try:
    # The C function. ``signal.pthread_sigmask`` wraps it and turns every number of the returned
    # mask into a ``Signals`` member, raising and catching ValueError for each real-time signal:
    # measured 62.8 us for a block + restore pair against 2.0 us here, on every blocking wait.
    from _signal import pthread_sigmask as _sigmask  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - other Python implementations
    _sigmask = signal.pthread_sigmask
_MAIN_THREAD_ID = threading.main_thread().ident


def semaphore_name(nonce: int, suffix: str) -> str:
    """The semaphore name for a region ``nonce`` (``/mmipc-<16 hex>-<suffix>``, < 31 chars)."""
    return f"/{PREFIX}{nonce:016x}-{suffix}"


def unlink_semaphore(name: str) -> bool:
    """Remove a semaphore name; return False if it did not exist."""
    try:
        posix_ipc.unlink_semaphore(name)
    except posix_ipc.ExistentialError:
        return False
    return True


class Semaphore:
    """A named counting semaphore.

    ``release`` is the raw bound C method (no Python frame on the hot path). ``acquire`` waits
    at most ``timeout`` seconds (``None``: no limit), in slices of at most :data:`SLICE`.
    """

    __slots__ = ("_sem", "name", "release")

    def __init__(self, sem: posix_ipc.Semaphore) -> None:
        self._sem = sem
        self.name: str = sem.name
        self.release = sem.release

    @classmethod
    def create(cls, name: str, initial: int = 0, mode: int = 0o600) -> Semaphore:
        """Create a new semaphore; raise :class:`RegionExists` if the name is taken."""
        try:
            return cls(posix_ipc.Semaphore(name, posix_ipc.O_CREX, mode, initial))
        except posix_ipc.ExistentialError:
            raise RegionExists(f"semaphore {name!r} already exists") from None
        except posix_ipc.Error as exc:
            raise MmipcError(f"cannot create semaphore {name!r}: {exc}") from None

    @classmethod
    def open(cls, name: str) -> Semaphore:
        """Open an existing semaphore; raise :class:`RegionNotFound` if there is none."""
        try:
            return cls(posix_ipc.Semaphore(name))
        except posix_ipc.ExistentialError:
            raise RegionNotFound(f"semaphore {name!r} does not exist") from None
        except posix_ipc.Error as exc:
            raise MmipcError(f"cannot open semaphore {name!r}: {exc}") from None

    @classmethod
    def open_or_create(cls, name: str, initial: int, mode: int = 0o600) -> tuple[Semaphore, bool]:
        """Open ``name``, creating it with ``initial`` if missing; return (semaphore, created)."""
        while True:
            try:
                return cls.create(name, initial, mode), True
            except RegionExists:
                pass
            try:
                return cls.open(name), False
            except RegionNotFound:
                continue  # unlinked between the two calls: try again

    def try_acquire(self) -> bool:
        """Take one count if available, without waiting."""
        try:
            self._sem.acquire(0)
        except posix_ipc.BusyError:
            return False
        return True

    def acquire(self, timeout: float | None) -> bool:
        """Wait up to ``timeout`` seconds (``None``: forever) for a count; return whether taken.

        Waits longer than :data:`SLICE` are split into slices so that signals and deadlines are
        honoured; callers that must re-check shared state use ``acquire(SLICE)`` in their own loop.
        """
        sem = self._sem
        if timeout is not None and timeout <= 0:
            try:
                sem.acquire(0)
            except posix_ipc.BusyError:
                return False
            return True
        main = threading.get_ident() == _MAIN_THREAD_ID
        longest = SIGNAL_SLICE if main else 1.0
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if deadline is None:
                wait = longest
            else:
                wait = deadline - time.monotonic()
                if wait <= 0:
                    return False
                wait = min(wait, longest)
            if main:
                old_mask = _sigmask(signal.SIG_BLOCK, _ALL_SIGNALS)
                try:
                    sem.acquire(wait)
                except (posix_ipc.BusyError, posix_ipc.SignalError):
                    continue
                finally:
                    _sigmask(signal.SIG_SETMASK, old_mask)  # handlers run here
                return True
            try:
                sem.acquire(wait)
            except (posix_ipc.BusyError, posix_ipc.SignalError):
                continue  # no handler runs in this thread: retry
            return True

    @property
    def value(self) -> int:
        """The current count (Linux; a snapshot)."""
        return int(self._sem.value)

    def close(self) -> None:
        """Release this process's handle (the semaphore itself stays)."""
        try:
            self._sem.close()
        except posix_ipc.Error:
            pass

    def unlink(self) -> bool:
        """Remove the name; processes that have it open keep using it."""
        return unlink_semaphore(self.name)
