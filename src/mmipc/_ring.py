"""Ring: a bounded log of variable-size records in a shared region, written and read in place.

Protocol (DESIGN.md 6; byte layouts in ``_layout``):

* Positions are absolute u64 byte counts. The producer block holds ``tail`` (published end),
  the consumer block ``head`` (released start). A record occupies ``record_size(length)``
  bytes, never wraps (a padding record fills the end of the data area), and its payload is
  32-byte aligned, so every view is contiguous and numpy can map it.
* A producer writes records beyond ``tail`` (invisible to everyone), then publishes them with
  one store of ``tail``, then posts the data semaphore **once per publish** (one record, or a
  whole batch: a *group*, marked ``FLAG_FIRST``/``FLAG_LAST``). The consumer takes one count
  before it reads the first record of each group. The count is a hand-off that orders memory on
  every CPU (DESIGN.md 3.2) and stays bounded by the number of unread groups (3.5). ``tail``
  stays the truth: a count that is late (a producer descheduled or killed between its publish
  and its post) costs the consumer one :data:`SLICE` and is absorbed later.
* Producers waiting for space raise a flag and sleep on the space semaphore in slices; the
  consumer posts it (at most to 1) when it advances ``head`` and sees the flag. A lost post
  costs at most one slice (3.3).
* ``multi_writer=True``: producers are serialized from reserve to commit by the writer
  semaphore. The holder records ``(slot + 1) | generation << 16`` in ``lock_owner``; a waiter
  that times out a slice checks the owner's OFD liveness lock and, if it is dead, wins the dead
  slot and hands the semaphore on. A producer that dies before publishing leaves nothing visible.
* Single writer / single consumer roles are OFD locks: a second live writer or consumer gets
  :class:`BusyError`, and a killed one frees its role at once. A new consumer resumes at ``head``:
  records that were read but not released are delivered again.
* A received view is tracked (``_views``): when its ``with`` block exits the record is released,
  unless something made from the view (a numpy array, a slice) is still alive; then the record
  stays pinned, with everything after it, until that object is collected. Space is reclaimed in
  order up to the oldest record still pinned or held.
"""

from __future__ import annotations

import array
import os
import sys
import time
import weakref
from bisect import bisect_right
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import accumulate as _accumulate
from types import TracebackType
from typing import TYPE_CHECKING, Any

from . import _layout as L
from ._errors import (
    BusyError,
    ClosedError,
    CorruptionError,
    EndOfStream,
    IncompatibleRegion,
    RecordTooLarge,
    RegionNotFound,
    WaitTimeout,
    WouldBlock,
)
from ._liveness import Participants
from ._region import Region
from ._semaphore import SLICE, Semaphore, semaphore_name, unlink_semaphore
from ._views import tracked_view
from ._wait import DEFAULT as _DEFAULT_WAIT
from ._wait import WaitStrategy, poll_until_above
from ._wait import resolve as _resolve_wait

if TYPE_CHECKING:  # the broadcast module builds on this one (imports point down)
    from ._broadcast import Subscriber

__all__ = ["RecordInfo", "Ring", "RingStats", "register_mode"]

# How often a producer waiting for the writer semaphore checks whether its holder died, and how
# long "held, but no owner recorded" must persist before a dead waiter is suspected.
LOCK_CHECK_INTERVAL = 0.05
LOCK_STALE_AFTER = 0.5


def _spin_for_count(sem: Semaphore) -> None:
    """Spin (wait strategy "spin") until the count a producer posts right after publishing is
    there, then take it: a blocking wait would cost a cross-process wake-up."""
    clock = time.monotonic
    stop = clock() + SLICE
    while not sem.try_acquire():
        if clock() >= stop:
            sem.acquire(SLICE)  # lost with a producer that died in between: go on after a slice
            return
        while sem.value == 0 and clock() < stop:
            pass


_RECORD = L.RECORD
_DATA = L.REC_DATA
_PADDING = L.REC_PADDING
_END = L.REC_END
_FIRST_LAST = L.FLAG_FIRST | L.FLAG_LAST
_FIRST = L.FLAG_FIRST
# Word indices used on the fast paths (a module global is cheaper than ``L.NAME``).
_W_TAIL, _W_HEAD, _W_END_OF_STREAM = L.W_TAIL, L.W_HEAD, L.W_END_OF_STREAM
_W_RECORDS_WRITTEN, _W_BYTES_WRITTEN = L.W_RECORDS_WRITTEN, L.W_BYTES_WRITTEN
_W_RECORDS_READ, _W_BYTES_READ, _W_PRODUCER_WAITING = L.W_RECORDS_READ, L.W_BYTES_READ, L.W_PRODUCER_WAITING
_W_JUMP_FROM = L.W_JUMP_FROM
_BATCH = L.REC_BATCH
_BATCH_HEAD = L.BATCH_HEAD

# send_many packs runs of items this small into batch records of at most BATCH_RECORD_MAX bytes.
BATCH_ITEM_MAX = 1024
BATCH_RECORD_MAX = 1 << 16

# Rewinding: a producer at an offset of REWIND_AT or more that finds the ring empty (every
# reader has released everything) goes on at offset 0, so that while the readers keep up the
# ring's working set stays about REWIND_AT plus a record, inside the CPU's caches, whatever the
# capacity (copying 1 MiB into a 64 MiB ring round robin: 51 us; into 8 MiB: 21 us; 32 MiB L3
# here). The rest of the lap becomes a *jump*: padding without a header in the data area
# (``jump_from``/``jump_to`` in the producer block; ``_read_header`` synthesizes it), so no
# byte of the ring is in use after a rewind and the producer keeps the whole capacity. If the
# slowest reader is at most REWIND_LAG behind, the producer waits up to REWIND_WAIT (yielding
# the CPU) for it to catch up; a failed check is repeated after REWIND_RECHECK more bytes, then
# twice as many after each further failure (so readers that stay behind cost a few checks per
# lap), back to REWIND_RECHECK after a rewind. Only
# one jump is pending at a time: a rewind needs every reader at the producer's position, so
# all of them are past the previous jump.
REWIND_AT = 8 << 20
REWIND_LAG = 4 << 20
REWIND_WAIT = 100e-6
REWIND_RECHECK = 1 << 20
_LITTLE = sys.byteorder == "little"


def _batch_length(count: int, payload: int) -> int:
    """Length of a batch record: count and reserved words, the length table (8-aligned), payloads."""
    return 8 + ((4 * count + 7) & ~7) + payload


def _pack_lengths(lengths: list[int]) -> bytes:
    table = array.array("I", lengths)
    if not _LITTLE:
        table.byteswap()
    return table.tobytes() + bytes(-4 * len(lengths) % 8)


def _unpack_lengths(data: bytes) -> list[int]:
    table = array.array("I")
    table.frombytes(data)
    if not _LITTLE:
        table.byteswap()
    return table.tolist()


_LAST = L.FLAG_LAST


@dataclass(frozen=True)
class RingStats:
    """A snapshot of a ring's counters (shared by every process)."""

    name: str
    capacity: int
    used_bytes: int
    records_written: int
    bytes_written: int
    records_read: int
    bytes_read: int
    producer_waits: int
    consumer_waits: int
    recoveries: int
    pinned_records: int
    end_of_stream: bool
    participants: int
    mode: str = "single"
    subscribers: int = 0  # broadcast: live tethered subscriptions
    lapped: int = 0  # broadcast: subscribers cut loose so far
    redelivered: int = 0  # queue: records delivered again after their consumer died


@dataclass(frozen=True)
class RecordInfo:
    """Where the record a broadcast subscriber or queue consumer received last came from.

    ``position`` is the record's absolute ring position, ``sequence`` its sequence number
    (producers number records 0, 1, 2, ... in publishing order), ``redelivered`` is true for a
    queue record delivered again because the consumer that held it died (at-least-once).
    """

    position: int
    sequence: int
    redelivered: bool = False


_MODE_FLAGS = {"single": 0, "broadcast": L.RING_BROADCAST, "queue": L.RING_QUEUE}
_MODE_NAMES = {flag: name for name, flag in _MODE_FLAGS.items()}


def _fmt_size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError


def _sem_names(nonce: int) -> tuple[str, str, str]:
    return semaphore_name(nonce, "d"), semaphore_name(nonce, "s"), semaphore_name(nonce, "w")


class _Reservation:
    """Context manager returned by :meth:`Ring.reserve`."""

    __slots__ = ("_nbytes", "_nowait", "_pos", "_ring", "_timeout", "_view", "_wait")

    def __init__(
        self, ring: Ring, nbytes: int, timeout: float | None, nowait: bool, wait: WaitStrategy | None = None
    ) -> None:
        self._ring = ring
        self._nbytes = nbytes
        self._timeout = timeout
        self._nowait = nowait
        self._wait = wait
        self._view: memoryview | None = None

    def __enter__(self) -> memoryview:
        if self._view is not None:
            raise RuntimeError("a reservation can be entered only once")
        ring = self._ring
        size = ring._check_size(self._nbytes)
        saved = ring._wait
        if self._wait is not None:
            ring._wait = self._wait
        try:
            pos = ring._writer_enter(self._timeout, self._nowait)
            try:
                pos = ring._make_room(pos, size, self._timeout, self._nowait)
            except BaseException:
                ring._writer_exit()
                raise
        finally:
            ring._wait = saved
        start = ring._data_offset + pos % ring._capacity + L.RECORD_HEADER_SIZE
        self._pos = pos
        assert ring._buf is not None
        self._view = ring._buf[start : start + self._nbytes]
        return self._view

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        ring = self._ring
        view = self._view
        try:
            if view is not None:
                try:
                    view.release()
                except BufferError:
                    pass  # exported (a numpy array): writing after the block is the caller's bug
            if exc_type is None:
                pos = self._pos
                n = self._nbytes
                words = ring._words
                assert ring._mm is not None and words is not None
                _RECORD.pack_into(
                    ring._mm,
                    ring._data_offset + pos % ring._capacity,
                    n,
                    _DATA,
                    _FIRST_LAST,
                    pos,
                    words[L.W_RECORDS_WRITTEN],
                    0,
                )
                ring._publish(pos + L.record_size(n), 1, n)
        finally:
            ring._writer_exit()


class _Received:
    """Context manager returned by :meth:`Ring.recv`."""

    __slots__ = ("_entry", "_nowait", "_ring", "_timeout", "_wait")

    def __init__(
        self, ring: Ring, timeout: float | None, nowait: bool, wait: WaitStrategy | None = None
    ) -> None:
        self._ring = ring
        self._timeout = timeout
        self._nowait = nowait
        self._wait = wait
        self._entry: list[Any] | None = None

    def __enter__(self) -> memoryview:
        if self._entry is not None:
            raise RuntimeError("a received record can be entered only once")
        ring = self._ring
        if self._wait is not None:
            end, start, length = ring._with_wait(self._wait, ring._take, self._timeout, self._nowait)
        else:
            end, start, length = ring._take(self._timeout, self._nowait)
        assert ring._mm is not None
        view, ref = tracked_view(ring._mm, start, length)
        entry = [end, view, ref, False]
        ring._outstanding.append(entry)
        self._entry = entry
        return view

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._entry is not None:
            self._ring._release(self._entry)


class Ring:
    """A bounded log of variable-size records shared between processes, zero-copy both ways.

    Create one with :meth:`create`, open an existing one with :meth:`attach`, or pass a handle to
    a child process (it pickles). Producers write with :meth:`reserve` (in place) or :meth:`send`
    (one copy); the consumer reads with :meth:`recv` (a read-only view) or :meth:`recv_bytes`
    (a copy). A handle is not thread-safe: use one handle per thread.
    """

    __module__ = "mmipc"

    # -- construction ---------------------------------------------------------------------

    def __init__(self, region: Region, *, _token: object = None) -> None:
        if _token is not _PRIVATE:
            raise TypeError("use Ring.create(...) or Ring.attach(...)")
        self._region = region
        hdr = region.header()
        self._capacity: int = hdr["data_size"]
        # Rings up to twice REWIND_AT never rewind (the offset never reaches the capacity).
        self._rewind_at = REWIND_AT if self._capacity > 2 * REWIND_AT else self._capacity
        self._rewind_from = 0  # position before which this producer does not check again
        self._rewind_step = REWIND_RECHECK  # doubles with each failed check, back after a rewind
        self._data_offset: int = hdr["data_offset"]
        self._max_record: int = hdr["max_record"]
        flags = hdr["flags"]
        # Producers take the writer semaphore with several writers, and on broadcast rings
        # always (subscribers join under it: see _broadcast).
        self._user_multi_writer = bool(flags & L.RING_MULTI_WRITER)
        self._multi_writer = bool(flags & (L.RING_MULTI_WRITER | L.RING_BROADCAST))
        self._mode_flags: int = flags & L.RING_MODE_MASK
        self._mm = region.mm
        self._buf = region.buf
        self._words = region.words
        self._participants = Participants(region)
        self._slot: int | None = None
        self._closed = False
        self._sem_data: Semaphore | None = None
        self._sem_space: Semaphore | None = None
        self._sem_lock: Semaphore | None = None
        # producer state
        self._writer_role = False
        self._lock_owner_value = 0  # (slot + 1) | generation << 16 once this handle took the lock
        self._stale_grants = 0  # lock_grants when this waiter started suspecting a lost lock
        self._head_cache = 0
        self._unknown_owner_since: float | None = None
        # consumer state
        self._consumer_role = False
        self._read_pos = 0
        self._last_pos = 0
        self._last_seq = -1
        self._next_seq = -1  # sequence the next data record must carry (-1: not known yet)
        self._writer_epoch = 0  # writer_epoch when _next_seq was last confirmed
        self._at_group_start = True
        self._have_token = False
        self._outstanding: deque[list[Any]] = deque()
        self._batch: _Batch | None = None  # the batch record being read, items left
        self._last_batch: _Batch | None = None  # the batch the last item taken came from
        self._skip_pos = -1  # a batch record whose first _skip items a dead consumer released
        self._skip = 0
        self._pinned_reported = 0
        # Receive-side counters and the first position whose group carries a semaphore count:
        # the ring's own words here; a broadcast subscriber points them at its slot.
        self._w_records_read = L.W_RECORDS_READ
        self._w_bytes_read = L.W_BYTES_READ
        self._w_consumer_waits = L.W_CONSUMER_WAITS
        self._w_pinned = L.W_PINNED
        self._counted_from = 0
        self._wait: WaitStrategy = _DEFAULT_WAIT
        region.fork_callbacks.append(_weak_callback(self._after_fork_in_child))

    @classmethod
    def create(
        cls,
        capacity: int,
        *,
        name: str | None = None,
        path: str | os.PathLike[str] | None = None,
        multi_writer: bool = False,
        mode: str | int | None = None,
        untether_after: float | None = None,
        permissions: int | None = None,
        max_participants: int = L.DEFAULT_MAX_PARTICIPANTS,
        hugepages: bool = False,
        wait: str | WaitStrategy | None = None,
    ) -> Ring:
        """Create a ring holding ``capacity`` bytes of records (rounded up to 32).

        ``name``: a POSIX shared-memory object ``/dev/shm/mmipc-<name>``; ``path``: a file that
        persists; neither: anonymous (memfd), shared with children. ``multi_writer``: any number
        of producer processes (serialized by a semaphore); otherwise one producer at a time.
        ``mode``: ``"single"`` (default: one consumer at a time), ``"broadcast"`` (every
        subscriber, see :meth:`subscribe`, receives every record) or ``"queue"`` (each record
        goes to exactly one of many consumers; see ``docs/broadcast_queue.md``).
        ``untether_after`` (broadcast only): seconds a subscriber may hold the producer back
        before it is cut loose and told it :class:`Lapped`; ``None`` (default): back-pressure,
        the producer waits for the slowest subscriber. ``permissions``: of the created objects
        (default ``0o600``; an ``int`` given as ``mode`` is accepted as permissions too).
        ``hugepages`` asks the kernel for transparent huge pages (``madvise``) for large rings.
        The largest record payload is ``capacity - 32`` bytes. ``wait``: this handle's wait
        strategy, ``"block"``, ``"adaptive"`` (the default on x86-64) or ``"spin"``
        (``docs/latency.md``).

        Raises :class:`RegionExists`, :class:`NoSpaceError`, ``ValueError``.
        """
        strategy = _resolve_wait(wait)
        if isinstance(mode, int) and not isinstance(mode, bool):
            if permissions is not None:
                raise ValueError("give the permissions once (permissions=), not also as mode=")
            permissions, mode = mode, None
        if permissions is None:
            permissions = 0o600
        mode_flag = _MODE_FLAGS.get(mode if isinstance(mode, str) else "single" if mode is None else "")
        if mode_flag is None:
            raise ValueError(f"mode must be 'single', 'broadcast' or 'queue', got {mode!r}")
        extra_flags = mode_flag
        if untether_after is not None:
            if mode_flag != L.RING_BROADCAST:
                raise ValueError("untether_after applies to broadcast rings (mode='broadcast') only")
            untether_ms = round(float(untether_after) * 1000)
            if not 1 <= untether_ms <= 0xFFFFFFFF:
                raise ValueError(f"untether_after must be 0.001 .. 4294967 seconds, got {untether_after!r}")
            extra_flags |= untether_ms << L.RING_UNTETHER_SHIFT
        if not isinstance(capacity, int) or capacity < 64:
            raise ValueError(f"capacity must be an int >= 64 bytes, got {capacity!r}")
        capacity = L.align_up(capacity, L.RECORD_ALIGN)
        max_record = min(capacity - L.RECORD_HEADER_SIZE, L.MAX_RECORD_LIMIT)
        region = Region.create(
            L.KIND_RING,
            capacity,
            name=name,
            path=path,
            mode=permissions,
            max_participants=max_participants,
            flags=(L.RING_MULTI_WRITER if multi_writer else 0)
            | (L.REGION_HUGEPAGES if hugepages else 0)
            | extra_flags,
            max_record=max_record,
            hugepages=hugepages,
        )
        try:
            ring = _ring_class(region.header()["flags"])(region, _token=_PRIVATE)
            ring._wait = strategy
            ring._join(create_mode=permissions)
        except BaseException:
            region.unlink_name()
            for sem in _sem_names(region.nonce):
                unlink_semaphore(sem)
            region.close()
            raise
        return ring

    @classmethod
    def attach(
        cls,
        name: str | None = None,
        *,
        path: str | os.PathLike[str] | None = None,
        timeout: float = 2.0,
        wait: str | WaitStrategy | None = None,
    ) -> Ring:
        """Open an existing ring by ``name`` or ``path``.

        Waits up to ``timeout`` seconds for a ring that is still being created. ``wait``: this
        handle's wait strategy (see :meth:`create`). Raises :class:`RegionNotFound`,
        :class:`IncompatibleRegion` or :class:`CorruptionError`.
        """
        if (name is None) == (path is None):
            raise ValueError("Ring.attach needs a name or a path (anonymous rings travel by pickling)")
        strategy = _resolve_wait(wait)
        region = Region.attach(L.KIND_RING, name=name, path=path, timeout=timeout)
        return cls._from_region(region, strategy)

    @classmethod
    def _from_region(cls, region: Region, wait: WaitStrategy = _DEFAULT_WAIT) -> Ring:
        try:
            flags = region.header()["flags"]
            if flags & ~L.RING_KNOWN_FLAGS or (flags & L.RING_MODE_MASK) == L.RING_MODE_MASK:
                raise IncompatibleRegion(
                    f"ring {region.display_name!r} has flags {flags:#x} this mmipc does not know "
                    "(a newer layout?)"
                )
            ring = _ring_class(flags)(region, _token=_PRIVATE)
            ring._wait = wait
            ring._join(create_mode=None)
        except BaseException:
            region.close()
            raise
        return ring

    def _join(self, create_mode: int | None) -> None:
        """Open (or create) the semaphores and claim a participant slot, under the attach lock."""
        region = self._region
        data_name, space_name, lock_name = _sem_names(region.nonce)
        with self._participants.attach_lock():
            if create_mode is not None:
                self._sem_data = Semaphore.create(data_name, 0, create_mode)
                self._sem_space = Semaphore.create(space_name, 0, create_mode)
                if self._multi_writer:
                    self._sem_lock = Semaphore.create(lock_name, 1, create_mode)
            else:
                # The last participant to leave removes the semaphores; re-create them from the
                # ring's state (one data count per unread group, a free writer lock).
                mode = os.fstat(region.fd).st_mode & 0o777
                try:
                    self._sem_data = Semaphore.open(data_name)
                except RegionNotFound:
                    self._sem_data, _ = Semaphore.open_or_create(data_name, self._count_groups(), mode)
                self._sem_space, _ = Semaphore.open_or_create(space_name, 0, mode)
                if self._multi_writer:
                    self._sem_lock, created = Semaphore.open_or_create(lock_name, 1, mode)
                    if created:
                        assert self._words is not None
                        self._words[L.W_LOCK_OWNER] = 0
            self._slot = self._participants.claim(L.ROLE_ATTACHED, self._cleanup_dead_slot)

    def _count_groups(self) -> int:
        """Unread groups between head and tail (validating every header on the way)."""
        words = self._words
        assert words is not None
        pos, tail = words[L.W_HEAD], words[L.W_TAIL]
        self._check_positions(pos, tail)
        groups = 0
        first = True
        while pos < tail:
            _length, _rtype, flags, size, _seq = self._read_header(pos, tail)
            if first and not flags & L.FLAG_FIRST:
                pass  # head is inside a group whose count a dead consumer already took
            elif flags & L.FLAG_FIRST:
                groups += 1
            first = False
            pos += size
        return groups

    # -- properties, repr, pickling, close ------------------------------------------------

    @property
    def name(self) -> str:
        """The ring's name, path, or ``anon:<nonce>``."""
        return self._region.display_name

    @property
    def capacity(self) -> int:
        """Bytes of record space."""
        return self._capacity

    @property
    def max_record(self) -> int:
        """Largest payload one record can carry."""
        return self._max_record

    @property
    def multi_writer(self) -> bool:
        return self._user_multi_writer

    def subscribe(self, start: str = "next", *, timeout: float | None = None) -> Subscriber:
        """Join a broadcast ring as a subscriber (see ``_broadcast``); other modes raise TypeError."""
        raise TypeError(
            f"ring {self.name!r} is a {self.mode}-consumer ring: only rings created with "
            "mode='broadcast' have subscribers"
        )

    @property
    def last_record(self) -> RecordInfo | None:
        """Position, sequence number and redelivery flag of the record received last.

        Tracked by broadcast subscribers and queue consumers (``mode="queue"``); ``None`` on a
        single-consumer ring, whose fast paths do not track it.
        """
        return None

    @property
    def last_records(self) -> list[RecordInfo]:
        """:class:`RecordInfo` of every record the last receive call returned (queue mode; else [])."""
        return []

    @property
    def mode(self) -> str:
        """``"single"`` (one consumer), ``"broadcast"`` or ``"queue"``, fixed at creation."""
        return _MODE_NAMES[self._mode_flags]

    @property
    def closed(self) -> bool:
        return self._closed

    def __repr__(self) -> str:
        kind = self._region.backing
        if self._closed:
            return f"<mmipc.Ring {self.name!r} {kind} closed>"
        words = self._words
        assert words is not None
        used = L.bytes_after(words, int(words[L.W_HEAD]))
        roles = [r for r, held in (("writer", self._writer_role), ("consumer", self._consumer_role)) if held]
        return (
            f"<mmipc.Ring {self.name!r} {kind} capacity={_fmt_size(self._capacity)} "
            f"used={_fmt_size(used)} {'multi' if self._user_multi_writer else 'single'}-writer"
            f"{'' if not self._mode_flags else ' ' + self.mode}"
            f"{' roles=' + ','.join(roles) if roles else ''}"
            f"{' ended' if words[L.W_END_OF_STREAM] else ''}>"
        )

    @property
    def wait(self) -> str:
        """This handle's wait strategy: ``"block"``, ``"adaptive"`` or ``"spin"`` (settable)."""
        return self._wait.name

    @wait.setter
    def wait(self, wait: str | WaitStrategy) -> None:
        self._wait = _resolve_wait(wait)

    def _with_wait(self, wait: str | WaitStrategy, method: Any, *args: Any, **kwargs: Any) -> Any:
        """Call ``method`` with this handle's strategy set to ``wait`` for the duration."""
        saved = self._wait
        self._wait = _resolve_wait(wait)
        try:
            return method(*args, **kwargs)
        finally:
            self._wait = saved

    def __reduce__(self) -> tuple[Any, ...]:
        if self._closed:
            raise ClosedError(f"ring {self.name!r} is closed and cannot be pickled")
        return (_rebuild_ring, (self._region.descriptor(), self._wait))

    def __enter__(self) -> Ring:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    def close(self) -> None:
        """Leave the ring: drop roles and the participant slot, unmap. Idempotent.

        Records this handle received but has not released (or that views still pin) stay
        unreleased: the next consumer receives them again. The mapping itself is unmapped
        when the last view made from it is garbage collected. The last participant to leave
        removes the ring's semaphores (``attach`` re-creates them).
        """
        if self._closed or not hasattr(self, "_region"):
            return
        self._closed = True
        region = self._region
        if region.closed:
            return
        try:
            if self._outstanding:
                self._advance()
            if self._writer_role:
                region.unlock(L.LOCK_ROLE_WRITER)
            if self._consumer_role:
                region.unlock(L.LOCK_ROLE_CONSUMER)
            with self._participants.attach_lock():
                if self._slot is not None:
                    self._participants.release(self._slot)
                    self._slot = None
                if not self._participants.others_alive():
                    for name in (*_sem_names(region.nonce), *self._extra_sem_names()):
                        unlink_semaphore(name)
        finally:
            for sem in (self._sem_data, self._sem_space, self._sem_lock):
                if sem is not None:
                    sem.close()
            self._writer_role = self._consumer_role = False
            self._mm = self._buf = self._words = None
            region.close()

    def unlink(self) -> None:
        """Remove the ring's name or file and its semaphores.

        Processes still attached keep working; nobody can attach any more. The handle stays
        open: :meth:`close` it too.
        """
        self._check_open()
        self._region.mark_closed_state()
        self._region.unlink_name()
        for name in (*_sem_names(self._region.nonce), *self._extra_sem_names()):
            unlink_semaphore(name)

    def _extra_sem_names(self) -> tuple[str, ...]:
        """Semaphores of the ring's mode beyond the three every ring has (broadcast: subscribers')."""
        return ()

    def flush(self) -> None:
        """Write the mapping back to its file (``msync``); makes a file-backed ring durable."""
        self._check_open()
        self._region.flush()

    def stats(self) -> RingStats:
        """A consistent-enough snapshot of the shared counters."""
        self._check_open()
        if self._outstanding:
            self._advance()
        words = self._words
        assert words is not None
        return RingStats(
            name=self.name,
            capacity=self._capacity,
            used_bytes=L.bytes_after(words, int(words[L.W_HEAD])),
            records_written=words[L.W_RECORDS_WRITTEN],
            bytes_written=words[L.W_BYTES_WRITTEN],
            records_read=words[L.W_RECORDS_READ],
            bytes_read=words[L.W_BYTES_READ],
            producer_waits=words[L.W_PRODUCER_WAITS],
            consumer_waits=words[L.W_CONSUMER_WAITS],
            recoveries=words[L.W_RECOVERIES],
            pinned_records=self._pinned_count(),
            end_of_stream=bool(words[L.W_END_OF_STREAM]),
            participants=sum(1 for p in self._participants.table() if p.alive),
            **self._mode_stats(),
        )

    def _mode_stats(self) -> dict[str, Any]:
        return {}

    def _pinned_count(self) -> int:
        assert self._words is not None
        return int(self._words[L.W_PINNED])

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError(f"ring {self.name!r} is closed")

    def _after_fork_in_child(self) -> None:
        # The parent's slot and roles stay the parent's; claim a slot of our own now so that
        # the parent's last close does not remove semaphores this child still uses.
        self._participants.forget_after_fork()
        self._slot = None
        self._lock_owner_value = 0
        self._writer_role = self._consumer_role = False
        self._outstanding = deque()
        self._batch = None
        self._have_token = False
        if self._closed:
            return
        try:
            with self._participants.attach_lock():
                self._slot = self._participants.claim(L.ROLE_ATTACHED, self._cleanup_dead_slot)
        except Exception:
            self._slot = None  # claimed lazily by the first write

    def _ensure_slot(self) -> int:
        if self._slot is None:
            with self._participants.attach_lock():
                self._slot = self._participants.claim(L.ROLE_ATTACHED, self._cleanup_dead_slot)
        return self._slot

    # -- writing ----------------------------------------------------------------------------

    def _check_size(self, nbytes: int) -> int:
        if nbytes < 0:
            raise ValueError(f"record size must be >= 0, got {nbytes}")
        if nbytes > self._max_record:
            raise RecordTooLarge(
                f"record of {nbytes} bytes exceeds the largest record {self._max_record} of ring "
                f"{self.name!r} (capacity {self._capacity}); create the ring with capacity >= "
                f"{L.record_size(nbytes)}"
            )
        return L.record_size(nbytes)

    def reserve(
        self, nbytes: int, timeout: float | None = None, *, wait: str | WaitStrategy | None = None
    ) -> _Reservation:
        """Reserve a record of exactly ``nbytes`` and write it in place.

        Use as ``with ring.reserve(n) as buf: buf[:] = ...``: ``buf`` is a writable memoryview
        inside the ring; the record is published when the block exits normally and discarded
        if it raises. Waiting (for the writer lock, for space) happens on entering the block and
        takes at most ``timeout`` seconds (``None``: no limit), then raises :class:`WaitTimeout`.
        Do not use ``buf`` after the block.
        """
        return _Reservation(self, nbytes, timeout, False, None if wait is None else _resolve_wait(wait))

    def reserve_nowait(self, nbytes: int) -> _Reservation:
        """:meth:`reserve` that raises :class:`WouldBlock` instead of waiting."""
        return _Reservation(self, nbytes, 0.0, True)

    def send(
        self, data: Any, timeout: float | None = None, *, wait: str | WaitStrategy | None = None
    ) -> None:
        """Copy a bytes-like object into one record (one memcpy).

        Waits at most ``timeout`` seconds for space (and for the writer lock), with the wait
        strategy ``wait`` (default: the handle's); raises :class:`WaitTimeout`,
        :class:`RecordTooLarge`, :class:`EndOfStream` once the stream was ended,
        :class:`ClosedError`.
        """
        if wait is not None:
            self._with_wait(wait, self.send, data, timeout)
            return
        if self._writer_role:
            # Fast path: the single writer already holds its role, and the record fits without
            # padding or waiting. Anything else goes through _send (same steps, all checks).
            words = self._words
            n = len(data) if type(data) is bytes else memoryview(data).nbytes
            size = (n + 63) & ~31  # record_size(n)
            pos = words[_W_TAIL]  # type: ignore[index]
            cap = self._capacity
            off = pos % cap
            if (
                n <= self._max_record
                and off + size <= cap
                and pos + size - self._head_cache <= cap
                and (off < self._rewind_at or pos < self._rewind_from)
                and not words[_W_END_OF_STREAM]  # type: ignore[index]
            ):
                base = self._data_offset + off
                mm = self._mm
                seq = words[_W_RECORDS_WRITTEN]  # type: ignore[index]
                _RECORD.pack_into(mm, base, n, _DATA, _FIRST_LAST, pos, seq, 0)  # type: ignore[arg-type]
                mm[base + 32 : base + 32 + n] = data  # type: ignore[index]
                words[_W_RECORDS_WRITTEN] = seq + 1  # type: ignore[index]
                words[_W_BYTES_WRITTEN] += n  # type: ignore[index]
                words[_W_TAIL] = pos + size  # type: ignore[index]
                self._sem_data.release()  # type: ignore[union-attr]
                return
        self._send(data, timeout, False)

    def send_nowait(self, data: Any) -> None:
        """:meth:`send` that raises :class:`WouldBlock` instead of waiting."""
        self._send(data, 0.0, True)

    def _send(self, data: Any, timeout: float | None, nowait: bool) -> None:
        n = len(data) if type(data) is bytes else memoryview(data).nbytes
        if n > self._max_record:
            self._check_size(n)
        size = (n + 63) & ~31  # record_size(n), inlined: this is the hot path
        pos = self._writer_enter(timeout, nowait)
        try:
            cap = self._capacity
            off = pos % cap
            if (
                off + size > cap
                or pos + size - self._head_cache > cap
                or (off >= self._rewind_at and pos >= self._rewind_from)
            ):
                pos = self._make_room(pos, size, timeout, nowait)
                off = pos % cap
            base = self._data_offset + off
            mm = self._mm
            words = self._words
            assert mm is not None and words is not None
            _RECORD.pack_into(mm, base, n, _DATA, _FIRST_LAST, pos, words[L.W_RECORDS_WRITTEN], 0)
            mm[base + 32 : base + 32 + n] = data
            # Counters first, then the publishing store: a writer killed in between leaves a
            # gap in sequence numbers (allowed across a writer change), never a duplicate.
            words[L.W_RECORDS_WRITTEN] += 1
            words[L.W_BYTES_WRITTEN] += n
            words[L.W_TAIL] = pos + size
            self._sem_data.release()  # type: ignore[union-attr]
        finally:
            if self._multi_writer:
                self._writer_exit()

    def send_many(
        self, items: Iterable[Any], timeout: float | None = None, *, wait: str | WaitStrategy | None = None
    ) -> int:
        """Send many bytes-like objects with one lock, one publish and one post per ring-full.

        Returns the number of items sent. Every size is checked before anything is written.
        Runs of small items (up to :data:`BATCH_ITEM_MAX` bytes) are packed into *batch
        records* (a length table, then the payloads back to back), so that both sides pay
        the record and semaphore costs once per batch, not per item; every receive call still
        returns the items one by one, in order, each with its own sequence number. On timeout,
        the items sent so far stay sent and :class:`WaitTimeout` says how many.
        """
        if wait is not None:
            return self._with_wait(wait, self.send_many, items, timeout)  # type: ignore[no-any-return]
        items = list(items)
        if not items:
            return 0
        sizes = [len(item) if type(item) is bytes else memoryview(item).nbytes for item in items]
        largest = max(sizes)
        if largest > self._max_record:
            self._check_size(largest)
        pos = self._writer_enter(timeout, False)
        sent = 0
        try:
            mm, words = self._mm, self._words
            assert mm is not None and words is not None
            cap, data_offset = self._capacity, self._data_offset
            seq = words[L.W_RECORDS_WRITTEN]
            group_start = pos
            group_items = 0
            group_bytes = 0
            last_off = 0
            pack = _RECORD.pack_into
            rewind = pos % cap >= self._rewind_at and pos >= self._rewind_from  # checked at the start
            for first, count, length, payload_bytes in self._plan_records(sizes):
                size = (length + 63) & ~31  # record_size(length), inlined
                off = pos % cap
                if off + size > cap or pos + size - self._head_cache > cap or rewind:
                    rewind = False
                    if (
                        pos + size - self._space_head(words[L.W_HEAD]) > cap
                        or off + size > cap
                        or off >= self._rewind_at
                    ):
                        if group_items:
                            self._publish_group(group_start, pos, last_off, group_items, group_bytes)
                            sent += group_items
                            group_items = group_bytes = 0
                        try:
                            pos = self._make_room(pos, size, timeout, False)
                        except WaitTimeout as exc:
                            raise WaitTimeout(f"{exc} (sent {sent} of {len(items)} items)") from None
                        group_start = pos
                        off = pos % cap
                base = data_offset + off
                flags = 0 if group_items else _FIRST
                if count == 1:
                    pack(mm, base, length, _DATA, flags, pos, seq, 0)
                    mm[base + 32 : base + 32 + length] = items[first]
                else:
                    pack(mm, base, length, _BATCH, flags, pos, seq, 0)
                    _BATCH_HEAD.pack_into(mm, base + 32, count, 0)
                    table = _pack_lengths(sizes[first : first + count])
                    start = base + 32 + 8
                    mm[start : start + len(table)] = table
                    start = base + 32 + length - payload_bytes
                    mm[start : start + payload_bytes] = b"".join(items[first : first + count])
                last_off = base
                seq += count
                pos += size
                group_items += count
                group_bytes += payload_bytes
            if group_items:
                self._publish_group(group_start, pos, last_off, group_items, group_bytes)
                sent += group_items
        finally:
            self._writer_exit()
        return sent

    def _plan_records(self, sizes: list[int]) -> Iterator[tuple[int, int, int, int]]:
        """Split items into records: (first item, item count, record length, payload bytes).

        Consecutive items of at most BATCH_ITEM_MAX bytes share a batch record of at most
        ``batch_limit`` bytes; other items (and a run of one) get a data record each.
        """
        batch_limit = min(BATCH_RECORD_MAX, self._max_record, self._capacity // 8)
        n = len(sizes)
        if max(sizes) <= BATCH_ITEM_MAX and n > 1:
            # All small (the common case): cut chunks with a bisection over running totals of
            # (item + 4-byte table entry); _batch_length(c, t) <= t + 4c + 15.
            totals = list(_accumulate([size + 4 for size in sizes]))
            start, before = 0, 0
            while start < n:
                stop = max(start + 1, bisect_right(totals, before + batch_limit - 15, lo=start))
                count = stop - start
                payload = totals[stop - 1] - before - 4 * count
                if count == 1:
                    yield start, 1, payload, payload
                else:
                    yield start, count, _batch_length(count, payload), payload
                before = totals[stop - 1]
                start = stop
            return
        i = 0
        while i < n:
            size = sizes[i]
            j = i
            total = 0
            if size <= BATCH_ITEM_MAX:
                while j < n and sizes[j] <= BATCH_ITEM_MAX:
                    if _batch_length(j + 1 - i, total + sizes[j]) > batch_limit:
                        break
                    total += sizes[j]
                    j += 1
            if j - i >= 2:
                yield i, j - i, _batch_length(j - i, total), total
                i = j
            else:
                yield i, 1, size, size
                i += 1

    def _publish_group(self, start: int, end: int, last_base: int, records: int, nbytes: int) -> None:
        del start
        mm = self._mm
        assert mm is not None
        flags = L.FLAGS.unpack_from(mm, last_base + L.FLAGS_OFFSET)[0]
        L.FLAGS.pack_into(mm, last_base + L.FLAGS_OFFSET, flags | L.FLAG_LAST)  # not yet published
        self._publish(end, records, nbytes)

    def _publish(self, end: int, records: int, nbytes: int) -> None:
        words = self._words
        assert words is not None
        words[L.W_RECORDS_WRITTEN] += records  # counters before the publish (see _send)
        words[L.W_BYTES_WRITTEN] += nbytes
        words[L.W_TAIL] = end  # the single store that makes the group visible
        self._sem_data.release()  # type: ignore[union-attr]

    def end_stream(self, timeout: float | None = None) -> None:
        """Mark the end of the stream: receivers drain what was sent, then get :class:`EndOfStream`.

        Later sends from any producer raise :class:`EndOfStream`. Idempotent.
        """
        self._check_open()
        words = self._words
        assert words is not None
        if words[L.W_END_OF_STREAM]:
            return
        pos = self._writer_enter(timeout, False, allow_ended=True)
        try:
            if words[L.W_END_OF_STREAM]:
                return
            pos = self._make_room(pos, L.RECORD_HEADER_SIZE, timeout, False)
            assert self._mm is not None
            _RECORD.pack_into(
                self._mm, self._data_offset + pos % self._capacity, 0, _END, _FIRST_LAST, pos, 0, 0
            )
            words[L.W_END_OF_STREAM] = 1
            words[L.W_TAIL] = pos + L.RECORD_HEADER_SIZE
            self._sem_data.release()  # type: ignore[union-attr]
        finally:
            self._writer_exit()

    def _writer_enter(self, timeout: float | None, nowait: bool, allow_ended: bool = False) -> int:
        """Take the writer lock (or role); return the current tail."""
        if self._closed:
            raise ClosedError(f"ring {self.name!r} is closed")
        words = self._words
        assert words is not None
        if self._multi_writer:
            self._lock_writer(timeout, nowait)
        elif not self._writer_role:
            self._claim_writer()
        if words[L.W_END_OF_STREAM] and not allow_ended:
            if self._multi_writer:
                self._writer_exit()
            raise EndOfStream(f"cannot send: the stream of ring {self.name!r} was ended")
        tail = words[L.W_TAIL]
        if words[L.W_JUMP_FROM] == tail and tail:
            # A writer died between recording a jump and publishing it: it never happened
            # (readers would take a record written at ``tail`` for the jump).
            words[L.W_JUMP_FROM] = 0
        return tail

    def _writer_exit(self) -> None:
        if self._multi_writer:
            words = self._words
            assert words is not None and self._sem_lock is not None and self._slot is not None
            words[L.W_LOCK_OWNER] = 0
            self._sem_lock.release()
            words[L.slot_word(self._slot, L.S_LOCK_STATE)] = 0

    def _claim_writer(self) -> None:
        words = self._words
        assert words is not None
        if not self._region.lock(L.LOCK_ROLE_WRITER):
            raise BusyError(
                f"ring {self.name!r} is single-writer and process {words[L.W_WRITER_PID]} is its "
                "writer; create it with multi_writer=True for several producers"
            )
        words[L.W_WRITER_PID] = os.getpid()
        words[L.W_WRITER_EPOCH] += 1  # the role holder writes this word only while holding it
        self._writer_role = True
        slot = self._ensure_slot()
        roles = self._participants.get_field(slot, L.S_ROLES)
        self._participants.set_field(slot, L.S_ROLES, roles | L.ROLE_WRITER)

    def _lock_writer(self, timeout: float | None, nowait: bool) -> None:
        sem = self._sem_lock
        words = self._words
        assert sem is not None and words is not None
        slot = self._slot
        if slot is not None and self._lock_owner_value:
            # Fast path: slot and role already set up. lock_state = 1 *before* the acquire, so
            # that dying between the acquire and the owner store stays recoverable.
            words[L.slot_word(slot, L.S_LOCK_STATE)] = 1
            if sem.try_acquire():
                words[L.W_LOCK_GRANTS] += 1
                words[L.W_LOCK_OWNER] = self._lock_owner_value
                return
        slot = self._ensure_slot()
        participants = self._participants
        participants.set_field(slot, L.S_LOCK_STATE, 1)
        if nowait and not sem.try_acquire():
            self._check_lock_holder()  # a dead holder is handed on even without waiting
            if not sem.try_acquire():
                participants.set_field(slot, L.S_LOCK_STATE, 0)
                raise WouldBlock(f"writer lock of ring {self.name!r} is held by {self._owner_description()}")
        elif not nowait and not sem.try_acquire():
            deadline = None if timeout is None else time.monotonic() + timeout
            while True:
                wait = LOCK_CHECK_INTERVAL
                if deadline is not None:
                    wait = min(wait, deadline - time.monotonic())
                    if wait <= 0:
                        participants.set_field(slot, L.S_LOCK_STATE, 0)
                        raise WaitTimeout(
                            f"writer lock of ring {self.name!r} still held by "
                            f"{self._owner_description()} after {timeout} s"
                        )
                if sem.acquire(wait):
                    break
                self._check_lock_holder()
        self._unknown_owner_since = None
        words[L.W_LOCK_GRANTS] += 1
        self._lock_owner_value = participants.generation(slot) << 16 | (slot + 1)
        words[L.W_LOCK_OWNER] = self._lock_owner_value
        if not participants.get_field(slot, L.S_ROLES) & L.ROLE_WRITER:
            participants.set_field(slot, L.S_ROLES, participants.get_field(slot, L.S_ROLES) | L.ROLE_WRITER)

    def _owner_description(self) -> str:
        words = self._words
        assert words is not None
        owner = words[L.W_LOCK_OWNER]
        if not owner:
            return "an unrecorded holder"
        slot = (owner & 0xFFFF) - 1
        return f"process {self._participants.get_field(slot, L.S_PID)} (slot {slot})"

    def _check_lock_holder(self) -> None:
        """Called while waiting for the writer lock: hand it on if its holder died."""
        words = self._words
        assert words is not None and self._sem_lock is not None
        owner = words[L.W_LOCK_OWNER]
        participants = self._participants
        if owner:
            self._unknown_owner_since = None
            if words[L.W_LOCK_SUSPECT]:
                words[L.W_LOCK_SUSPECT] = 0  # the lock moves: nobody died holding it
            slot = (owner & 0xFFFF) - 1
            if 0 <= slot < participants.capacity and not participants.alive(slot):
                if participants.take_dead(slot):
                    try:
                        self._cleanup_dead_slot(slot)
                    finally:
                        participants.release(slot)
            return
        # Held with no owner recorded: normal for microseconds (between the holder's acquire and
        # its store). If it lasts, a writer died between acquire and store, or between clearing
        # the owner and posting. "Lasts" means: no grant of the lock (``lock_grants``, bumped by
        # every holder right after its acquire) for LOCK_STALE_AFTER, then a dead slot that was
        # at the lock (or the suspect mark it left). The decision is re-checked and taken under
        # the attach lock, and the recovery bumps ``lock_grants``, so of several waiters that
        # timed out together exactly one posts (two posts would admit two writers).
        sem = self._sem_lock
        if sem.value > 0:
            self._unknown_owner_since = None
            if words[L.W_LOCK_SUSPECT]:
                words[L.W_LOCK_SUSPECT] = 0
            return
        now = time.monotonic()
        grants = words[L.W_LOCK_GRANTS]
        if self._unknown_owner_since is None or grants != self._stale_grants:
            self._unknown_owner_since = now
            self._stale_grants = grants
            return
        if now - self._unknown_owner_since < LOCK_STALE_AFTER:
            return
        self._unknown_owner_since = None
        with participants.attach_lock():
            if words[L.W_LOCK_GRANTS] != grants or words[L.W_LOCK_OWNER] != 0 or sem.value != 0:
                return  # the lock moved meanwhile, or another waiter recovered it
            dead_slot = None
            for p in participants.table():
                if (
                    not p.alive
                    and participants.get_field(p.slot, L.S_LOCK_STATE) == 1
                    and participants.take_dead(p.slot)
                ):
                    dead_slot = p.slot
                    break
            if dead_slot is None and not words[L.W_LOCK_SUSPECT]:
                return
            try:
                words[L.W_LOCK_SUSPECT] = 0
                words[L.W_LOCK_GRANTS] = grants + 1
                words[L.W_RECOVERIES] += 1
                words[L.W_WRITER_EPOCH] += 1
                sem.release()
            finally:
                if dead_slot is not None:
                    participants.release(dead_slot)

    def _cleanup_dead_slot(self, slot: int) -> None:
        """Run by whoever won a dead participant's slot lock."""
        words = self._words
        assert words is not None
        owner = words[L.W_LOCK_OWNER]
        if self._multi_writer and owner and owner == (self._participants.generation(slot) << 16 | (slot + 1)):
            # It died holding the writer lock, before publishing: nothing it wrote is visible.
            words[L.W_LOCK_OWNER] = 0
            words[L.W_RECOVERIES] += 1
            words[L.W_WRITER_EPOCH] += 1
            assert self._sem_lock is not None
            self._sem_lock.release()
        elif self._multi_writer and not owner and self._participants.get_field(slot, L.S_LOCK_STATE) == 1:
            # It died at the lock with no owner recorded: waiting, or holding it between its
            # acquire and its owner store. The slot is about to be reused, so leave a mark for
            # the waiters' staleness check (_check_lock_holder) instead of guessing now.
            words[L.W_LOCK_SUSPECT] = 1

    def _make_room(self, pos: int, size: int, timeout: float | None, nowait: bool) -> int:
        """Return the position where a record of ``size`` bytes goes, padding and waiting as needed.

        Pads to the end of the ring when the record does not fit there, or to rewind (see
        :data:`REWIND_AT`).
        """
        cap = self._capacity
        off = pos % cap
        if (
            off >= self._rewind_at
            and size <= REWIND_LAG
            and pos >= self._rewind_from
            and self._may_rewind(pos, not nowait)
        ):
            words = self._words
            assert words is not None
            self._before_rewind(pos)
            jump_to = pos + cap - off
            words[L.W_JUMP_TO] = jump_to
            words[L.W_JUMP_FROM] = pos
            words[L.W_TAIL] = jump_to  # publishes the jump, a group of its own
            self._sem_data.release()  # type: ignore[union-attr]
            self._head_cache = jump_to  # nothing before it is in use
            pos = jump_to
        elif off + size > cap:
            pad = cap - off
            self._wait_space(pos + pad, timeout, nowait)
            assert self._mm is not None
            _RECORD.pack_into(
                self._mm,
                self._data_offset + off,
                pad - L.RECORD_HEADER_SIZE,
                _PADDING,
                _FIRST_LAST,
                pos,
                0,
                0,
            )
            words = self._words
            assert words is not None
            words[L.W_TAIL] = pos + pad
            self._sem_data.release()  # type: ignore[union-attr]
            pos += pad
        self._wait_space(pos + size, timeout, nowait)
        return pos

    def _may_rewind(self, pos: int, may_wait: bool = True) -> bool:
        """Whether a producer at ``pos`` may rewind (:data:`REWIND_AT`): every reader has
        released everything before ``pos``, at once or (``may_wait``: not for ``_nowait``
        calls) within :data:`REWIND_WAIT` if the slowest is at most :data:`REWIND_LAG` behind.
        If not, the next check waits for :data:`REWIND_RECHECK` more bytes, twice that after a
        second failure, and so on until a rewind succeeds."""
        low = self._readers_low(pos)
        if low != pos and may_wait and low >= 0 and pos - low <= REWIND_LAG:
            clock = time.monotonic
            deadline = clock() + REWIND_WAIT
            while clock() < deadline:
                os.sched_yield()  # the reader may be waiting for this core
                low = self._readers_low(pos)
                if low == pos:
                    break
        if low == pos:
            self._rewind_step = REWIND_RECHECK
            return True
        # Back off: readers that stay behind cost at most a few checks (and waits) per lap.
        self._rewind_from = pos + self._rewind_step
        self._rewind_step = min(2 * self._rewind_step, self._capacity)
        return False

    def _readers_low(self, pos: int) -> int:
        """The lowest position a reader still needs (-1: rewinding is not allowed now)."""
        words = self._words
        assert words is not None
        return int(words[L.W_HEAD])

    def _before_rewind(self, pos: int) -> None:
        """Under the writer lock, just before a rewind at ``pos`` (broadcast moves its head)."""

    def _space_head(self, head: int) -> int:
        """``head`` for space accounting: readers at a jump need nothing before its end."""
        words = self._words
        assert words is not None
        return L.past_jump(words, head, int(words[L.W_TAIL]))  # producers: the tail is their own

    def _wait_space(self, end: int, timeout: float | None, nowait: bool) -> None:
        cap = self._capacity
        if end - self._head_cache <= cap:
            return
        words = self._words
        assert words is not None
        head = self._space_head(words[L.W_HEAD])
        if end - head <= cap:
            self._head_cache = head
            return
        self._check_positions(head, words[L.W_TAIL])  # a corrupt head/tail must not look "full"
        if nowait:
            raise WouldBlock(self._full_message(end, head))
        words[L.W_PRODUCER_WAITS] += 1
        strategy = self._wait
        deadline = None if timeout is None else time.monotonic() + timeout
        need = end - cap
        if strategy.poll:
            # Poll for room (x86-64 only, _wait), asking for an eighth of the ring more than
            # this record needs, so that a fast consumer frees a batch of records per poll.
            while True:
                poll_until_above(
                    words, L.W_HEAD, min(need + (cap >> 3), words[L.W_TAIL]) - 1, strategy, deadline
                )
                head = self._space_head(words[L.W_HEAD])
                if head >= need:
                    self._head_cache = head
                    return
                if not strategy.spins:
                    break
                if self._closed:
                    raise ClosedError(f"ring {self.name!r} is closed")
                if deadline is not None and time.monotonic() >= deadline:
                    raise WaitTimeout(self._full_message(end, head) + f" after {timeout} s")
        sem = self._sem_space
        assert sem is not None
        words[L.W_PRODUCER_WAITING] = 1
        try:
            while True:
                head = self._space_head(words[L.W_HEAD])
                if end - head <= cap:
                    self._head_cache = head
                    return
                if self._closed:
                    raise ClosedError(f"ring {self.name!r} is closed")
                wait = SLICE
                if deadline is not None:
                    wait = min(wait, deadline - time.monotonic())
                    if wait <= 0:
                        raise WaitTimeout(self._full_message(end, head) + f" after {timeout} s")
                sem.acquire(wait)
        finally:
            words[L.W_PRODUCER_WAITING] = 0

    def _full_message(self, end: int, head: int) -> str:
        words = self._words
        assert words is not None
        need = end - head - self._capacity
        pinned = words[L.W_PINNED]
        msg = f"ring {self.name!r} is full: {need} more bytes must be released by the consumer"
        if pinned:
            msg += f" (the consumer holds {pinned} pinned records: views still referenced)"
        return msg

    # -- reading ----------------------------------------------------------------------------

    def recv(self, timeout: float | None = None, *, wait: str | WaitStrategy | None = None) -> _Received:
        """Receive the next record as a read-only zero-copy view.

        Use as ``with ring.recv() as view: ...``. Waiting happens on entering the block, at
        most ``timeout`` seconds (``None``: no limit), then :class:`WaitTimeout`. The record is
        released when the block exits; if something made from the view (a numpy array, a
        slice) is still alive then, the record stays pinned until it is collected, and so does
        every record after it. Raises :class:`EndOfStream` once the stream was ended and drained.
        ``wait``: the wait strategy of this call (default: the handle's, :attr:`wait`).
        """
        return _Received(self, timeout, False, None if wait is None else _resolve_wait(wait))

    def recv_nowait(self) -> _Received:
        """:meth:`recv` that raises :class:`WouldBlock` if no record is ready."""
        return _Received(self, 0.0, True)

    def recv_bytes(self, timeout: float | None = None, *, wait: str | WaitStrategy | None = None) -> bytes:
        """Receive the next record as ``bytes`` (one copy) and release it at once."""
        if wait is not None:
            return self._with_wait(wait, self.recv_bytes, timeout)  # type: ignore[no-any-return]
        if self._consumer_role and not self._outstanding and self._batch is None:
            # Fast path: a data record is ready and passes every check of _read_header and
            # _take; anything else (waiting, padding, end of stream, errors) takes _take.
            words = self._words
            pos = self._read_pos
            tail = words[_W_TAIL]  # type: ignore[index]
            if 0 < tail - pos <= self._capacity and (
                self._have_token or not self._at_group_start or self._sem_data.try_acquire()  # type: ignore[union-attr]
            ):
                self._have_token = False
                cap = self._capacity
                off = pos % cap
                base = self._data_offset + off
                mm = self._mm
                length, rtype, flags, rpos, seq, _user = _RECORD.unpack_from(mm, base)  # type: ignore[arg-type]
                size = (length + 63) & ~31
                end = pos + size
                if (
                    rtype == _DATA
                    and rpos == pos
                    and pos != words[_W_JUMP_FROM]  # type: ignore[index]
                    and seq == self._next_seq
                    and length <= self._max_record
                    and off + size <= cap
                    and end <= tail
                ):
                    self._at_group_start = bool(flags & _LAST)
                    self._last_pos = pos
                    self._last_seq = seq
                    self._next_seq = seq + 1
                    self._read_pos = end
                    words[_W_RECORDS_READ] += 1  # type: ignore[index]
                    words[_W_BYTES_READ] += length  # type: ignore[index]
                    data = mm[base + 32 : base + 32 + length]  # type: ignore[index]
                    words[_W_HEAD] = end  # type: ignore[index]
                    if words[_W_PRODUCER_WAITING]:  # type: ignore[index]
                        self._set_head(end)  # posts the space semaphore
                    return data
                self._have_token = self._at_group_start  # the count taken above stays ours
        end, start, length = self._take(timeout, False)
        data = self._mm[start : start + length]  # type: ignore[index]
        self._done(end)
        return data

    def recv_bytes_nowait(self) -> bytes:
        """:meth:`recv_bytes` that raises :class:`WouldBlock` if no record is ready."""
        end, start, length = self._take(0.0, True)
        data = self._mm[start : start + length]  # type: ignore[index]
        self._done(end)
        return data

    def recv_into(
        self, buffer: Any, timeout: float | None = None, *, wait: str | WaitStrategy | None = None
    ) -> int:
        """Copy the next record into a writable ``buffer``; return its length.

        A record larger than ``buffer`` raises ``ValueError`` and stays unreceived.
        """
        if wait is not None:
            return self._with_wait(wait, self.recv_into, buffer, timeout)  # type: ignore[no-any-return]
        target = memoryview(buffer).cast("B")
        end, start, length = self._take(timeout, False)
        if length > target.nbytes:
            self._unread(length)
            raise ValueError(f"record of {length} bytes does not fit a buffer of {target.nbytes} bytes")
        assert self._buf is not None
        target[:length] = self._buf[start : start + length]
        self._done(end)
        return length

    def recv_views(
        self,
        max_records: int = 1024,
        timeout: float | None = None,
        max_bytes: int = 2 << 20,
        *,
        wait: str | WaitStrategy | None = None,
    ) -> list[memoryview]:
        """Receive up to ``max_records`` records (and about ``max_bytes``: at least one) as
        read-only zero-copy views, waiting only for the first (at most ``timeout`` seconds;
        :class:`WaitTimeout`, :class:`EndOfStream` as :meth:`recv`).

        Unlike :meth:`recv`, there is no ``with`` block: a record stays unreleased (and, on a
        single-consumer ring, so does every record after it) while its view or anything made
        from it is referenced, and is released by a later receive call (or
        :meth:`release_views`, or :meth:`stats`) once it is not. Drop the views (or
        ``view.release()`` them) when done, and call :meth:`release_views` before this process
        blocks on anything else. Items of a batch record are views into it, and the batch record
        is released with its last item (queue rings: views of copies, see there).
        """
        if wait is not None:
            return self._with_wait(wait, self.recv_views, max_records, timeout, max_bytes)  # type: ignore[no-any-return]
        if max_records < 1:
            raise ValueError(f"max_records must be >= 1, got {max_records}")
        views = [self._take_one_view(timeout, False)]
        nbytes = views[0].nbytes
        while len(views) < max_records and nbytes < max_bytes:
            try:
                views.append(self._take_one_view(0.0, True))
            except (WouldBlock, EndOfStream):
                break  # EndOfStream: the next call raises it
            nbytes += views[-1].nbytes
        return views

    def release_views(self) -> int:
        """Release now the records of :meth:`recv_views` views that are no longer referenced
        (every receive call and :meth:`stats` do it too); return how many records views still
        pin. Call it after dropping views when this process is about to block on something
        else: until then a producer waiting for their space waits for this process.
        """
        self._check_open()
        self._advance()
        return int(self._pinned_reported)

    def _take_one_view(self, timeout: float | None, nowait: bool) -> memoryview:
        end, start, length = self._take(timeout, nowait)
        assert self._mm is not None
        view, ref = tracked_view(self._mm, start, length)
        self._outstanding.append([end, None, ref, True])  # released once unreferenced
        return view

    def recv_many(
        self,
        max_records: int = 1024,
        timeout: float | None = None,
        max_bytes: int = 2 << 20,
        *,
        wait: str | WaitStrategy | None = None,
    ) -> list[bytes]:
        """Receive up to ``max_records`` records as ``bytes``, waiting only for the first.

        Returns at least one record (or raises :class:`WaitTimeout` / :class:`EndOfStream`),
        and stops adding records once about ``max_bytes`` of payload are collected: fresh
        large ``bytes`` objects cost page faults, and measured with 1 MiB records (two
        processes), 2 per call ran at 10.9k records/s, 4 at 2.7k, 1024 (a 1 GiB list) at 0.5k.
        Records after the first are read in a tight loop: one semaphore count per published
        group (a ``send_many`` batch is one group) and one stats update per call. Space is
        released every eighth of the capacity, so a producer waiting for room goes on while a
        long batch is still being copied.
        """
        if wait is not None:
            return self._with_wait(wait, self.recv_many, max_records, timeout, max_bytes)  # type: ignore[no-any-return]
        if max_records < 1:
            raise ValueError(f"max_records must be >= 1, got {max_records}")
        end, start, length = self._take(timeout, False)
        mm, words, sem = self._mm, self._words, self._sem_data
        assert mm is not None and words is not None and sem is not None
        out = [mm[start : start + length]]
        records = nbytes = 0
        batch = self._batch
        if batch is not None:  # the rest of a batch record, sliced out of one copy
            k, stop = batch.index, min(batch.count, batch.index + max_records - 1)
            if stop > k:
                shift = batch.begins[k]
                blob = mm[batch.first + shift : batch.first + batch.ends[stop - 1]]
                out.extend(
                    [
                        blob[b - shift : e - shift]
                        for b, e in zip(batch.begins[k:stop], batch.ends[k:stop], strict=True)
                    ]
                )
                records = stop - k
                nbytes = batch.ends[stop - 1] - shift
                batch.index = stop
            if stop < batch.count:
                words[self._w_records_read] += records
                words[self._w_bytes_read] += nbytes
                self._done((batch.pos, stop))
                return out
            self._batch = None
            end = batch.pos + batch.size
        cap, data_offset, max_record = self._capacity, self._data_offset, self._max_record
        unpack = _RECORD.unpack_from
        partial = None  # release marker of the items taken from a batch record left unfinished
        pos = consumed = end  # == self._read_pos: the last record taken is complete
        at_start = self._at_group_start
        counted_from = self._counted_from
        tail = words[L.W_TAIL]
        # Release space as we go (not only at the end) unless views pin earlier records.
        release_step = cap >> 3 if not self._outstanding else 1 << 62
        released = consumed
        self._done(consumed)
        while len(out) < max_records and nbytes + length < max_bytes:
            if pos >= tail:
                tail = words[L.W_TAIL]
                if pos >= tail:
                    break
                if tail - pos > cap:
                    self._check_positions(pos, tail)
            if at_start and pos >= counted_from and not sem.try_acquire():
                break  # published, but its count is not posted yet: take it on the next call
            off = pos % cap
            length, rtype, flags, rpos, seq, _user = unpack(mm, data_offset + off)
            size = (length + 63) & ~31
            if not (
                rtype == _DATA
                and rpos == pos
                and pos != words[_W_JUMP_FROM]
                and length <= max_record
                and off + size <= cap
                and pos + size <= tail
            ):
                length, rtype, flags, size, seq = self._read_header(pos, tail)  # validates; raises
                if rtype == _END:
                    at_start = False  # stays unread (its count taken): the next call raises EndOfStream
                    break
            at_start = bool(flags & L.FLAG_LAST)
            if rtype == _DATA:
                if seq != self._next_seq and not self._sequence_gap_ok(seq):
                    self._read_pos = pos
                    self._done(consumed)
                    raise self._bad_sequence(pos, seq)
                self._next_seq = seq + 1
                base = data_offset + off + 32
                out.append(mm[base : base + length])
                records += 1
                nbytes += length
            elif rtype == _BATCH:
                try:
                    lengths, first, skip = self._batch_lengths(pos, length, seq)
                except CorruptionError:
                    self._read_pos = pos
                    self._done(consumed)
                    raise
                count = len(lengths)
                stop = min(count, skip + max_records - len(out))
                ends = list(_accumulate(lengths))
                begins = [0, *ends[:-1]]
                blob = mm[first + begins[skip] : first + ends[stop - 1]]  # one copy, then slices
                shift = begins[skip]
                out.extend(
                    [
                        blob[b - shift : e - shift]
                        for b, e in zip(begins[skip:stop], ends[skip:stop], strict=True)
                    ]
                )
                records += stop - skip
                nbytes += ends[stop - 1] - shift
                if stop < count:  # the rest waits for the next call; the record stays unreleased
                    self._batch = _Batch(pos, size, first, begins, ends, stop, seq)
                    partial = (pos, stop)
                    pos += size
                    break
            pos = consumed = pos + size
            if consumed - released >= release_step:
                released = consumed
                self._set_head(consumed)
        self._at_group_start = at_start
        self._read_pos = pos
        if records:
            words[self._w_records_read] += records
            words[self._w_bytes_read] += nbytes
        self._done(consumed)
        if partial is not None:
            self._done(partial)
        return out

    def __iter__(self) -> Iterator[bytes]:
        """Yield records as ``bytes`` until the end of the stream."""
        while True:
            try:
                yield self.recv_bytes()
            except EndOfStream:
                return

    def _claim_consumer(self) -> None:
        words = self._words
        assert words is not None
        if not self._region.lock(L.LOCK_ROLE_CONSUMER):
            raise BusyError(
                f"ring {self.name!r} already has a live consumer (process {words[L.W_CONSUMER_PID]}); "
                "a ring has one consumer at a time"
            )
        words[L.W_CONSUMER_PID] = os.getpid()
        self._consumer_role = True
        slot = self._ensure_slot()
        self._participants.set_field(
            slot, L.S_ROLES, self._participants.get_field(slot, L.S_ROLES) | L.ROLE_CONSUMER
        )
        head, tail = words[L.W_HEAD], words[L.W_TAIL]
        self._check_positions(head, tail)
        self._read_pos = head
        self._have_token = False
        self._outstanding = deque()
        self._batch = None
        self._skip_pos, self._skip = words[L.W_HEAD_SKIP_POS], words[L.W_HEAD_SKIP]
        if self._skip_pos != head:
            self._skip_pos = -1
        if head < tail:
            # A previous consumer may have died inside a group (its count already taken).
            self._at_group_start = bool(self._read_header(head, tail)[2] & L.FLAG_FIRST)
        else:
            self._at_group_start = True
        self._next_seq = -1
        self._writer_epoch = words[L.W_WRITER_EPOCH]
        # A consumer that died left its count of pinned records behind: they are ours now.
        words[L.W_PINNED] = 0
        self._pinned_reported = 0

    def _check_positions(self, head: int, tail: int) -> None:
        if not 0 <= tail - L.past_jump(self._words, head, tail) <= self._capacity:
            raise CorruptionError(
                f"ring {self.name!r}: head {head} and tail {tail} are {tail - head} bytes apart, "
                f"capacity is {self._capacity} (the header was overwritten)"
            )

    def _read_header(self, pos: int, tail: int) -> tuple[int, int, int, int, int]:
        """Read and validate the record header at ``pos``; return (length, type, flags, size, seq).

        Data records must also carry the next sequence number (checked by the callers).
        """
        cap = self._capacity
        off = pos % cap
        if pos == self._words[_W_JUMP_FROM] and pos:  # type: ignore[index]
            return cap - off - L.RECORD_HEADER_SIZE, _PADDING, _FIRST_LAST, cap - off, 0  # a jump
        length, rtype, flags, rpos, seq, _user = _RECORD.unpack_from(self._mm, self._data_offset + off)  # type: ignore[arg-type]
        if rpos != pos:
            raise CorruptionError(
                f"ring {self.name!r}: record header at offset {off} says position {rpos}, expected {pos}"
            )
        if rtype in (_DATA, _BATCH):
            size = (length + 63) & ~31
            if length > self._max_record or off + size > cap:
                raise CorruptionError(
                    f"ring {self.name!r}: record at position {pos} has length {length}, which "
                    f"overruns the data area ({cap - off - 32} bytes left)"
                )
        elif rtype == _PADDING:
            size = cap - off
            if length != size - L.RECORD_HEADER_SIZE:
                raise CorruptionError(
                    f"ring {self.name!r}: padding at position {pos} has length {length}, expected {size - 32}"
                )
        elif rtype == _END:
            size = L.RECORD_HEADER_SIZE
            words = self._words
            assert words is not None
            if length != 0 or not words[L.W_END_OF_STREAM]:
                raise CorruptionError(
                    f"ring {self.name!r}: end-of-stream record at position {pos} is inconsistent "
                    f"(length {length}, end flag {words[L.W_END_OF_STREAM]})"
                )
        else:
            raise CorruptionError(f"ring {self.name!r}: record at position {pos} has unknown type {rtype}")
        if pos + size > tail:
            raise CorruptionError(
                f"ring {self.name!r}: record at position {pos} ({size} bytes) extends past tail {tail}"
            )
        return length, rtype, flags, size, seq

    def _sequence_gap_ok(self, seq: int) -> bool:
        """A data record skips sequence numbers: legitimate only after the writer changed.

        A writer killed between counting a record and publishing it leaves a gap; the next
        writer got the role or lock through a change of ``writer_epoch``.
        """
        words = self._words
        assert words is not None
        epoch = words[L.W_WRITER_EPOCH]
        if seq > self._next_seq and epoch != self._writer_epoch:
            self._writer_epoch = epoch
            return True
        return False

    def _bad_sequence(self, pos: int, seq: int) -> CorruptionError:
        return CorruptionError(
            f"ring {self.name!r}: record at position {pos} has sequence number {seq}, expected "
            f"{self._next_seq} (a record header was overwritten)"
        )

    def _take(self, timeout: float | None, nowait: bool) -> tuple[int, int, int]:
        """Wait for the next data record; return (end position, payload offset, length)."""
        if self._closed:
            raise ClosedError(f"ring {self.name!r} is closed")
        if not self._consumer_role:
            self._claim_consumer()
        out = self._outstanding
        if out and out[0][3]:
            self._advance()
        words = self._words
        sem = self._sem_data
        assert words is not None and sem is not None
        if self._batch is not None:
            return self._take_pending()
        deadline: float | None = None
        waited = False
        while True:
            pos = self._read_pos
            tail = words[L.W_TAIL]
            if pos < tail:
                if tail - pos > self._capacity:
                    self._check_positions(pos, tail)
                if self._at_group_start and not self._have_token and pos >= self._counted_from:
                    # The group is published; its count follows at once (or was lost with a
                    # producer that died in between: then go on after one slice).
                    if not sem.try_acquire():
                        if self._wait.spins:
                            _spin_for_count(sem)
                        else:
                            sem.acquire(SLICE)
                self._have_token = False
                length, rtype, flags, size, seq = self._read_header(pos, tail)
                if rtype == _DATA:
                    if seq != self._next_seq and self._next_seq >= 0 and not self._sequence_gap_ok(seq):
                        raise self._bad_sequence(pos, seq)
                    self._last_seq = seq
                    self._next_seq = seq + 1
                    self._last_batch = None
                    self._at_group_start = bool(flags & L.FLAG_LAST)
                    end = pos + size
                    self._last_pos = pos
                    self._read_pos = end
                    words[self._w_records_read] += 1
                    words[self._w_bytes_read] += length
                    return end, self._data_offset + pos % self._capacity + 32, length
                if rtype == _BATCH:
                    lengths, first, skip = self._batch_lengths(pos, length, seq)
                    ends = list(_accumulate(lengths))
                    self._batch = _Batch(pos, size, first, [0, *ends[:-1]], ends, skip, seq)
                    self._at_group_start = bool(flags & L.FLAG_LAST)
                    self._read_pos = pos + size
                    return self._take_pending()
                if rtype == _PADDING:
                    self._at_group_start = bool(flags & L.FLAG_LAST)
                    self._read_pos = pos + size
                    self._done(pos + size)
                    continue
                self._at_group_start = False  # end of stream: stays unread, raises every time
                raise EndOfStream(f"ring {self.name!r}: the stream was ended and is drained")
            # Empty. A count taken while empty was surplus (a late post already absorbed).
            self._have_token = False
            if nowait:
                raise WouldBlock(f"ring {self.name!r} has no record ready")
            strategy = self._wait
            if not waited:
                waited = True
                words[self._w_consumer_waits] += 1
                if timeout is not None:
                    deadline = time.monotonic() + timeout
                if strategy.poll and poll_until_above(words, _W_TAIL, pos, strategy, deadline):
                    continue  # published meanwhile: take its count in the loop above
            elif strategy.spins and poll_until_above(words, _W_TAIL, pos, strategy, deadline):
                continue
            if strategy.spins:  # never sleeps: a slice of polling passed, check and poll again
                if deadline is not None and time.monotonic() >= deadline:
                    raise WaitTimeout(f"no record arrived in ring {self.name!r} within {timeout} s")
                if out and out[0][3]:
                    self._advance()
                if self._closed:
                    raise ClosedError(f"ring {self.name!r} is closed")
                continue
            wait = SLICE
            if deadline is not None:
                wait = min(wait, deadline - time.monotonic())
                if wait <= 0:
                    raise WaitTimeout(f"no record arrived in ring {self.name!r} within {timeout} s")
            if sem.acquire(wait):
                self._have_token = True
            elif out and out[0][3]:
                self._advance()  # views may have been collected meanwhile
            if self._closed:
                raise ClosedError(f"ring {self.name!r} is closed")

    def _take_pending(self) -> tuple[Any, int, int]:
        """The next item of the batch record being read: (release marker, offset, length).

        Item ``k`` (1-based) releases ``(pos, k)``: the first ``k`` items of the record at
        ``pos`` (``head_skip``); the last one releases the record. A consumer that leaves in
        the middle of a batch therefore hands its successor exactly the unreleased items.
        """
        batch = self._batch
        assert batch is not None
        k = batch.index
        begin = batch.begins[k]
        n = batch.ends[k] - begin
        batch.index = k = k + 1
        if k < batch.count:
            marker: Any = (batch.pos, k)
        else:
            marker = batch.pos + batch.size
            self._batch = None
        self._last_batch = batch
        words = self._words
        assert words is not None
        words[self._w_records_read] += 1
        words[self._w_bytes_read] += n
        return marker, batch.first + begin, n

    def _batch_lengths(self, pos: int, length: int, seq: int) -> tuple[list[int], int, int]:
        """Validate the batch record at ``pos``: (item lengths, offset of the first payload, skip).

        ``skip`` is how many leading items a consumer that left had released already.
        """
        mm = self._mm
        assert mm is not None
        base = self._data_offset + pos % self._capacity + 32
        count, reserved = _BATCH_HEAD.unpack_from(mm, base)
        table = (4 * count + 7) & ~7
        if count < 2 or reserved != 0 or 8 + table > length:
            raise CorruptionError(
                f"ring {self.name!r}: batch record at position {pos} has an invalid item count {count}"
            )
        lengths = _unpack_lengths(mm[base + 8 : base + 8 + 4 * count])
        if 8 + table + sum(lengths) != length:
            raise CorruptionError(
                f"ring {self.name!r}: batch record at position {pos}: item lengths add up to "
                f"{sum(lengths)}, the record holds {length - 8 - table}"
            )
        if seq != self._next_seq and self._next_seq >= 0 and not self._sequence_gap_ok(seq):
            raise self._bad_sequence(pos, seq)
        self._next_seq = seq + count
        skip = 0
        if pos == self._skip_pos:
            self._skip_pos = -1
            if 0 < self._skip < count:
                skip = self._skip
        return lengths, base + 8 + table, skip

    def _unread(self, length: int) -> None:
        """Put back the record just taken (``recv_into`` with a buffer too small)."""
        words = self._words
        assert words is not None
        if self._last_batch is not None:
            self._last_batch.index -= 1
            self._batch = self._last_batch
            self._last_batch = None
            words[self._w_records_read] -= 1
            words[self._w_bytes_read] -= length
            return
        self._read_pos = self._last_pos
        self._next_seq = self._last_seq
        words[self._w_records_read] -= 1
        words[self._w_bytes_read] -= length
        self._at_group_start = False  # its group's count (if any) was taken already

    def _done(self, end: Any) -> None:
        """The record (or batch item) with release marker ``end`` is consumed, unreferenced.

        A marker is the position that ends a record (an ``int``), or ``(position, n)`` for the
        first ``n`` items of the batch record at ``position`` (its last item's marker is the
        record's end).
        """
        if self._outstanding:
            self._outstanding.append([end, None, None, True])
            self._advance()
        elif type(end) is int:
            self._set_head(end)
        else:
            self._set_skip(end)

    def _set_skip(self, marker: tuple[int, int]) -> None:
        """Record that the first items of the batch record at ``head`` are released.

        Two words, ``head_skip`` then ``head_skip_pos``: a consumer that dies in between leaves
        a pair that does not match (or matches with the previous count), so its successor
        delivers those items again (at least once), never skips an unreleased one.
        """
        words = self._words
        assert words is not None
        pos, count = marker
        words[L.W_HEAD_SKIP] = count
        if words[L.W_HEAD_SKIP_POS] != pos:
            words[L.W_HEAD_SKIP_POS] = pos

    def _release(self, entry: list[Any]) -> None:
        view = entry[1]
        entry[1] = None
        if view is not None:
            try:
                view.release()
            except BufferError:
                pass  # still exported: the weak reference below keeps the record pinned
        entry[3] = True
        if not self._closed:
            self._advance()

    def _advance(self) -> None:
        """Release, in order, every record that is consumed and no longer referenced."""
        out = self._outstanding
        new_head = None
        new_skip = None
        while out:
            entry = out[0]
            if not entry[3]:
                break
            ref = entry[2]
            if ref is not None and ref() is not None:
                break
            out.popleft()
            if type(entry[0]) is int:
                new_head = entry[0]
                new_skip = None
            else:
                new_skip = entry[0]
        if new_head is not None:
            self._set_head(new_head)
        if new_skip is not None:
            self._set_skip(new_skip)
        pinned = 0
        for entry in out:
            if entry[3] and entry[2] is not None and entry[2]() is not None:
                pinned += 1
        if pinned != self._pinned_reported:
            self._pinned_reported = pinned
            assert self._words is not None
            self._words[self._w_pinned] = pinned

    def _set_head(self, head: int) -> None:
        words = self._words
        assert words is not None
        words[_W_HEAD] = head
        if words[L.W_PRODUCER_WAITING]:
            sem = self._sem_space
            assert sem is not None
            if sem.value == 0:  # keep the count bounded (DESIGN.md 3.5)
                sem.release()


class _Batch:
    """A batch record being read: item boundaries (relative to ``first``) and the next item."""

    __slots__ = ("begins", "count", "ends", "first", "index", "pos", "seq", "size")

    def __init__(
        self, pos: int, size: int, first: int, begins: list[int], ends: list[int], index: int, seq: int = 0
    ) -> None:
        self.pos = pos
        self.seq = seq
        self.size = size
        self.first = first
        self.begins = begins
        self.ends = ends
        self.index = index
        self.count = len(ends)


_PRIVATE = object()


def _weak_callback(method: Any) -> Any:
    ref = weakref.WeakMethod(method)

    def call() -> None:
        bound = ref()
        if bound is not None:
            bound()

    return call


# The classes of the other modes live in modules above this one (``_broadcast``, ``_workqueue``)
# and register here when imported (``mmipc/__init__`` imports them), so imports point down.
_MODE_CLASSES: dict[int, type[Ring]] = {0: Ring}


def register_mode(flag: int, cls: type[Ring]) -> None:
    """Make ``Ring.create``/``attach`` build ``cls`` for rings whose mode flag is ``flag``."""
    _MODE_CLASSES[flag] = cls


def _ring_class(flags: int) -> type[Ring]:
    flag = flags & L.RING_MODE_MASK
    try:
        return _MODE_CLASSES[flag]
    except KeyError:
        raise IncompatibleRegion(
            f"ring mode {_MODE_NAMES.get(flag, flag)!r} is not available (import mmipc, not mmipc._ring)"
        ) from None


def _rebuild_ring(descriptor: tuple[str, Any], wait: WaitStrategy = _DEFAULT_WAIT) -> Ring:
    return Ring._from_region(Region.from_descriptor(L.KIND_RING, descriptor), wait)
