"""Broadcast rings: every subscriber receives every record (pub/sub), each at its own cursor.

``Ring.create(capacity, mode="broadcast")`` builds a :class:`_BroadcastRing` (shown as
``mmipc.Ring``); ``ring.subscribe(start=...)`` returns a :class:`Subscriber`, a handle with the
Ring's receive API. Records, framing and producers are the Ring's (``_ring``); what changes:

* **Cursors.** Each subscriber owns a participant slot of the header (its own OFD liveness lock)
  and publishes in it its *cursor*: the position before which it needs nothing any more (one
  aligned store per release). Its receive state (group counts, batch items, pinned views) is
  the Ring's own machinery, pointed at the slot's words instead of the ring's consumer block.
* **Joining.** A subscriber registers while holding the writer semaphore (taken even with one
  producer): producers compute their limit under the same semaphore, so the limit always
  includes every joined cursor. "Store my cursor, then read the producer's claim" against
  "store my claim, then read the cursors" would be a Dekker pattern that loses even on x86-64
  (DESIGN.md 3.3). ``start="next"`` joins at ``tail``; ``"oldest"`` at ``head``, the oldest
  record the producers have not overwritten.
* **The producers' limit.** ``head`` is written by producers only (under the writer semaphore):
  when a record does not fit before ``head + capacity``, the producer recomputes it as the lowest
  cursor of the live subscriptions (or, with no subscriber holding anything, passes over the
  oldest records, record by record, so that ``head`` stays on a record boundary). Every
  subscriber that holds the producer back is checked for liveness (an OFD lock, ~1 us) at most
  every :data:`LIVENESS_INTERVAL`: a killed subscriber stops holding it back within ~0.1 s.
* **Wake-ups.** Each subscription has its own semaphore (``-b<slot>``); producers post it once
  per published group while the subscription is tethered, the subscriber takes one count per
  group it reads (the Ring's hand-off, DESIGN.md 3.2), so counts stay bounded by its unread
  groups (3.5). Groups published before a subscriber joined carry no count for it
  (``_counted_from``). A subscriber that advances while a producer waits posts the space
  semaphore (at most to 1).
* **Slow subscribers.** Back-pressure by default. With ``untether_after=T`` a subscription that
  holds the producer back for ``T`` seconds is cut loose in two steps, both by a producer under
  the writer semaphore: ``UNTETHERING`` (still counted: nothing it may be reading is
  overwritten), then, :data:`UNTETHER_GRACE` later and only if it holds no zero-copy view,
  ``LAPPED`` (no longer counted). The subscriber publishes the number of views it holds *before*
  it takes a record and checks its state *after* taking it: a view taken in any state but
  tethered is put back; a copy is kept unless the state was ``LAPPED`` (x86-64 keeps the copy's
  loads before the state load, and the producer stores ``LAPPED`` before it overwrites anything,
  as in a seqlock). The grace period lets a views count racing the producer's decision become
  visible (a store-load race is only possible within the store buffer's drain time, nanoseconds)
  and the producer re-checks the count before the final step. **A subscriber that holds views is
  never cut loose**: only copies can be lapped. A lapped subscriber's next receive call rejoins at
  the head and raises :class:`Lapped` with the number of records it missed.
"""

from __future__ import annotations

import os
import time
from collections import deque
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from . import _layout as L
from ._errors import ClosedError, CorruptionError, Lapped, RegionNotFound, WaitTimeout, WouldBlock
from ._region import Region
from ._ring import _PRIVATE, RecordInfo, Ring, _Received, register_mode
from ._semaphore import SLICE, Semaphore, semaphore_name, unlink_semaphore
from ._views import tracked_view
from ._wait import WaitStrategy
from ._wait import resolve as resolve_wait

__all__ = ["Subscriber", "SubscriberStats"]

# How often a producer held back by a subscriber checks that the subscriber is alive.
LIVENESS_INTERVAL = 0.1
# Between "untethering" and "lapped": time for a racing views count to become visible.
UNTETHER_GRACE = 0.02

_STATE_MASK = 0xFF
_START_POINTS = ("next", "oldest")


def subscriber_sem_name(nonce: int, slot: int) -> str:
    """The semaphore of the subscription in participant ``slot`` (``/mmipc-<nonce>-b<slot>``)."""
    return semaphore_name(nonce, f"b{slot}")


@dataclass(frozen=True)
class SubscriberStats:
    """A snapshot of one subscriber's counters."""

    name: str
    slot: int
    state: str
    position: int
    lag_bytes: int
    records_read: int
    bytes_read: int
    waits: int
    pinned_records: int
    times_lapped: int


class _Fanout:
    """Stands in for the data semaphore on a broadcast producer: one post per tethered subscription.

    The list of targets is rebuilt when ``sub_epoch`` changes (a join, under the writer
    semaphore, which the poster holds too); a post goes out only while the slot still holds the
    subscription it was built for (its state word is the join's exact token).
    """

    __slots__ = ("_epoch", "_ring", "_sems", "_targets")

    def __init__(self, ring: _BroadcastRing) -> None:
        self._ring = ring
        self._epoch = -1
        self._targets: list[tuple[int, int, Semaphore]] = []
        self._sems: dict[tuple[int, int], Semaphore] = {}

    def release(self) -> None:
        words = self._ring._words
        assert words is not None
        if words[L.W_B_SUB_EPOCH] != self._epoch:
            self._refresh(words)
        for index, token, sem in self._targets:
            if words[index] == token:
                sem.release()

    def _refresh(self, words: memoryview) -> None:
        ring = self._ring
        self._epoch = words[L.W_B_SUB_EPOCH]
        targets = []
        keep: dict[tuple[int, int], Semaphore] = {}
        for slot in range(ring._participants.capacity):
            if words[L.slot_word(slot, L.S_STATE)] & 0xFF != L.SLOT_ACTIVE:
                continue
            if not words[L.slot_word(slot, L.S_ROLES)] & L.ROLE_SUBSCRIBER:
                continue
            token = int(words[L.slot_word(slot, L.S_SUB_STATE)])
            if token & _STATE_MASK != L.SUB_TETHERED:
                continue
            sem = self._sems.pop((slot, token), None)
            if sem is None:
                try:
                    sem = Semaphore.open(subscriber_sem_name(ring._region.nonce, slot))
                except RegionNotFound:
                    continue  # left meanwhile
            keep[(slot, token)] = sem
            targets.append((L.slot_word(slot, L.S_SUB_STATE), token, sem))
        for sem in self._sems.values():
            sem.close()
        self._sems = keep
        self._targets = targets

    def close(self) -> None:
        for sem in self._sems.values():
            sem.close()
        self._sems = {}
        self._targets = []
        self._epoch = -1


class _BroadcastRing(Ring):
    """A ring created with ``mode="broadcast"``: producers write, subscribers read."""

    __module__ = "mmipc"
    __qualname__ = "Ring"

    def __init__(self, region: Region, *, _token: object = None) -> None:
        super().__init__(region, _token=_token)
        flags = region.header()["flags"]
        self._untether_ns = (flags >> L.RING_UNTETHER_SHIFT) * 1_000_000
        self._fanout = _Fanout(self)
        self._plain_data_sem: Semaphore | None = None
        self._role_claimed = False
        self._checked_at: dict[int, float] = {}
        self._slowest_slot = -1

    def _join(self, create_mode: int | None) -> None:
        super()._join(create_mode)
        # Producers post every subscription instead of the ring's data semaphore.
        self._plain_data_sem = self._sem_data
        self._sem_data = self._fanout  # type: ignore[assignment]

    @property
    def untether_after(self) -> float | None:
        """Seconds a subscriber may hold the producer back before it is cut loose (None: never)."""
        return self._untether_ns / 1e9 if self._untether_ns else None

    def close(self) -> None:
        if self._closed or not hasattr(self, "_region"):
            return
        try:
            super().close()
        finally:
            self._fanout.close()
            if self._plain_data_sem is not None:
                self._plain_data_sem.close()
                self._plain_data_sem = None

    def _extra_sem_names(self) -> tuple[str, ...]:
        nonce = self._region.nonce
        return tuple(subscriber_sem_name(nonce, slot) for slot in range(self._participants.capacity))

    def _mode_stats(self) -> dict[str, Any]:
        words = self._words
        assert words is not None
        live = 0
        for slot in self._subscription_slots():
            if self._participants.alive(slot):
                live += 1
        return {"mode": "broadcast", "subscribers": live, "lapped": int(words[L.W_B_LAPPED_TOTAL])}

    def _subscription_slots(self) -> list[int]:
        """Slots holding a subscription that producers still count (tethered or untethering)."""
        words = self._words
        assert words is not None
        first = L.slot_word(0, 0)
        stride = L.slot_word(1, 0) - first
        counted = (L.SUB_TETHERED, L.SUB_UNTETHERING)
        return [
            slot
            for slot, base in enumerate(range(first, first + stride * self._participants.capacity, stride))
            if words[base + L.S_STATE] & 0xFF == L.SLOT_ACTIVE
            and words[base + L.S_ROLES] & L.ROLE_SUBSCRIBER
            and words[base + L.S_SUB_STATE] & _STATE_MASK in counted
        ]

    def _readers_low(self, pos: int) -> int:
        """Under the writer semaphore: the lowest cursor of the counted subscriptions, or -1
        if there is none (``_ring.REWIND_AT``: with no subscriber the ring keeps its full
        capacity of history for ``start="oldest"``, so it never rewinds)."""
        words = self._words
        assert words is not None
        cursors = [words[L.slot_word(slot, L.S_CURSOR)] for slot in self._subscription_slots()]
        return int(min(cursors)) if cursors else -1

    def _before_rewind(self, pos: int) -> None:
        # Every counted subscription is at ``pos``: so is the oldest record worth keeping. A
        # ``start="oldest"`` joiner then starts at the jump, never at an older position that a
        # later jump could have left without its synthesized padding.
        words = self._words
        assert words is not None
        if words[L.W_HEAD] < pos:
            words[L.W_HEAD] = pos

    def _min_cursor(self) -> int:
        """The lowest position any counted subscription still needs (``tail`` if none).

        A read-only snapshot (no liveness checks, no untethering): records before it have been
        released by every subscriber that producers wait for.
        """
        self._check_open()
        words = self._words
        assert words is not None
        low = int(words[L.W_TAIL])
        for slot in self._subscription_slots():
            low = min(low, int(words[L.slot_word(slot, L.S_CURSOR)]))
        return max(low, int(words[L.W_HEAD]))

    # -- subscribing ----------------------------------------------------------------------------

    def subscribe(self, start: str = "next", *, timeout: float | None = None) -> Subscriber:
        """Join as a subscriber; it receives every record from ``start`` on, in order.

        ``start="next"``: the next record published; ``"oldest"``: the oldest record the
        producers have not overwritten yet. The subscriber is a separate handle (its own
        mapping and participant slot) with the Ring's receive API; close it to leave. Joining
        takes the writer semaphore, so it waits for a producer in the middle of a record (at
        most ``timeout`` seconds, then :class:`WaitTimeout`). In another process, pickle the
        ring (or attach it by name or path) and subscribe there.
        """
        self._check_open()
        if start not in _START_POINTS:
            raise ValueError(f"start must be 'next' or 'oldest', got {start!r}")
        region = self._region
        if region.backing == "named":
            new = Region.attach(L.KIND_RING, name=region.name)
        elif region.backing == "file":
            assert region.path is not None
            new = Region.attach(L.KIND_RING, path=region.path)
        else:
            new = Region.attach(L.KIND_RING, fd=os.dup(region.fd))
        try:
            sub = Subscriber(new, _token=_PRIVATE)
        except BaseException:
            new.close()
            raise
        try:
            sub._join(create_mode=None)
            sub._subscribe(start, timeout)
        except BaseException:
            sub.close()
            raise
        return sub

    def _take(self, timeout: float | None, nowait: bool) -> tuple[Any, int, int]:
        raise TypeError(
            f"ring {self.name!r} is a broadcast ring: receive through a subscriber (ring.subscribe())"
        )

    # -- producers ------------------------------------------------------------------------------

    def _writer_enter(self, timeout: float | None, nowait: bool, allow_ended: bool = False) -> int:
        if not self._user_multi_writer and not self._role_claimed:
            self._check_open()
            assert self._words is not None
            if not self._region.lock(L.LOCK_ROLE_WRITER):
                from ._errors import BusyError

                raise BusyError(
                    f"ring {self.name!r} is single-writer and process {self._words[L.W_WRITER_PID]} "
                    "is its writer; create it with multi_writer=True for several producers"
                )
            self._words[L.W_WRITER_PID] = os.getpid()
            self._role_claimed = True
        return super()._writer_enter(timeout, nowait, allow_ended)

    def _after_fork_in_child(self) -> None:
        self._role_claimed = False
        self._fanout = _Fanout(self)
        if self._plain_data_sem is not None:
            self._sem_data = self._fanout  # type: ignore[assignment]
        super()._after_fork_in_child()

    def _cleanup_dead_slot(self, slot: int) -> None:
        super()._cleanup_dead_slot(slot)
        words = self._words
        assert words is not None
        if words[L.slot_word(slot, L.S_ROLES)] & L.ROLE_SUBSCRIBER:
            words[L.slot_word(slot, L.S_SUB_STATE)] = 0
            unlink_semaphore(subscriber_sem_name(self._region.nonce, slot))
            self._post_space()

    def _post_space(self) -> None:
        words = self._words
        sem = self._sem_space
        if words is not None and sem is not None and words[L.W_PRODUCER_WAITING] and sem.value == 0:
            sem.release()

    def _dead(self, slot: int) -> bool:
        """Whether the subscription in ``slot`` belongs to a dead process (then clean it up)."""
        now = time.monotonic()
        if now - self._checked_at.get(slot, -1.0) < LIVENESS_INTERVAL:
            return False
        self._checked_at[slot] = now
        participants = self._participants
        if participants.alive(slot):
            return False
        if participants.take_dead(slot):
            try:
                self._cleanup_dead_slot(slot)
            finally:
                participants.release(slot)
        return True

    def _recompute_head(self, end: int) -> int:
        """Under the writer semaphore: the producers' new ``head`` for a record ending at ``end``."""
        words = self._words
        assert words is not None
        cap = self._capacity
        untether_ns = self._untether_ns
        lowest = -1
        self._slowest_slot = -1
        for slot in range(self._participants.capacity):
            base = L.slot_word(slot, 0)
            if words[base + L.S_STATE] & 0xFF != L.SLOT_ACTIVE:
                continue
            if not words[base + L.S_ROLES] & L.ROLE_SUBSCRIBER:
                continue
            state = words[base + L.S_SUB_STATE]
            kind = state & _STATE_MASK
            if kind != L.SUB_TETHERED and kind != L.SUB_UNTETHERING:
                continue
            cursor = L.past_jump(words, words[base + L.S_CURSOR], words[L.W_TAIL])  # (ours: we write)
            if end - cursor > cap:  # this subscription holds the producer back
                if self._dead(slot):
                    continue
                if untether_ns:
                    now_ns = time.monotonic_ns()
                    since = words[base + L.S_BEHIND_SINCE]
                    if kind == L.SUB_TETHERED:
                        if since == 0:
                            words[base + L.S_BEHIND_SINCE] = now_ns
                        elif now_ns - since >= untether_ns and words[base + L.S_VIEWS] == 0:
                            words[base + L.S_BEHIND_SINCE] = now_ns
                            words[base + L.S_SUB_STATE] = (state & ~_STATE_MASK) | L.SUB_UNTETHERING
                    elif now_ns - since >= UNTETHER_GRACE * 1e9:
                        if words[base + L.S_VIEWS] == 0:
                            words[base + L.S_SUB_STATE] = (state & ~_STATE_MASK) | L.SUB_LAPPED
                            words[L.W_B_LAPPED_TOTAL] += 1
                            continue
                        # It took a view meanwhile: it stays, and the timer starts again.
                        words[base + L.S_BEHIND_SINCE] = 0
                        words[base + L.S_SUB_STATE] = (state & ~_STATE_MASK) | L.SUB_TETHERED
            elif kind == L.SUB_TETHERED and words[base + L.S_BEHIND_SINCE]:
                words[base + L.S_BEHIND_SINCE] = 0  # caught up
            if lowest < 0 or cursor < lowest:
                lowest = cursor
                self._slowest_slot = slot
        head = words[L.W_HEAD]
        tail = words[L.W_TAIL]
        if lowest < 0:
            # Nobody holds the oldest records: pass over as many as the new record needs.
            pos = head
            while end - pos > cap and pos < tail:
                pos += self._read_header(pos, tail)[3]
            lowest = pos
        if lowest > tail:
            raise CorruptionError(
                f"ring {self.name!r}: subscriber cursor {lowest} is beyond tail {tail} (the header was overwritten)"
            )
        lowest = self._space_head(lowest)
        if lowest > head:
            words[L.W_HEAD] = lowest
            return int(lowest)
        return int(head)

    def _wait_space(self, end: int, timeout: float | None, nowait: bool) -> None:
        cap = self._capacity
        if end - self._head_cache <= cap:
            return
        words = self._words
        assert words is not None
        head = words[L.W_HEAD]
        if end - head > cap:
            self._check_positions(head, words[L.W_TAIL])
            head = self._recompute_head(end)
        if end - head <= cap:
            self._head_cache = head
            return
        if nowait:
            raise WouldBlock(self._full_message(end, head))
        words[L.W_PRODUCER_WAITS] += 1
        deadline = None if timeout is None else time.monotonic() + timeout
        poll_until = time.monotonic() + min(self._wait.poll, 1.0)
        sem = self._sem_space
        assert sem is not None
        words[L.W_PRODUCER_WAITING] = 1
        try:
            while True:
                # Subscribers post the space semaphore as they advance; every slice the cursors
                # are read again anyway (a post can be lost, DESIGN.md 3.3).
                wait = SLICE
                if deadline is not None:
                    wait = min(wait, deadline - time.monotonic())
                    if wait <= 0:
                        raise WaitTimeout(self._full_message(end, head) + f" after {timeout} s")
                strategy = self._wait
                if strategy.spins or (strategy.poll and time.monotonic() < poll_until):
                    # Polling strategies (x86-64, _wait): the limit is the slowest cursor, which
                    # only a recomputation sees; recompute instead of sleeping (for a while).
                    if not strategy.spins:
                        os.sched_yield()
                else:
                    sem.acquire(wait)
                if self._closed:
                    raise ClosedError(f"ring {self.name!r} is closed")
                head = self._recompute_head(end)
                if end - head <= cap:
                    self._head_cache = head
                    return
        finally:
            words[L.W_PRODUCER_WAITING] = 0

    def _full_message(self, end: int, head: int) -> str:
        need = end - head - self._capacity
        slot = self._slowest_slot
        if slot < 0:
            return f"broadcast ring {self.name!r} is full: {need} more bytes must be released"
        pid = self._participants.get_field(slot, L.S_PID)
        views = self._participants.get_field(slot, L.S_VIEWS)
        msg = (
            f"broadcast ring {self.name!r} is full: subscriber in slot {slot} (process {pid}) must "
            f"release {need} more bytes"
        )
        if views:
            msg += f" (it holds {views} zero-copy views)"
        return msg


class _SubscriberReceived(_Received):
    """Context manager returned by :meth:`Subscriber.recv`: a view taken only while tethered."""

    __slots__ = ()

    def __enter__(self) -> memoryview:
        if self._entry is not None:
            raise RuntimeError("a received record can be entered only once")
        sub = self._ring
        assert isinstance(sub, Subscriber)
        view: memoryview
        if self._wait is not None:
            view, entry = sub._with_wait(self._wait, sub._take_view, self._timeout, self._nowait)
        else:
            view, entry = sub._take_view(self._timeout, self._nowait)
        self._entry = entry
        return view


class Subscriber(_BroadcastRing):
    """One subscription to a broadcast ring: receives every record from where it joined, in order.

    Made by :meth:`Ring.subscribe`. Receive with the Ring's API: :meth:`recv` (a zero-copy
    view), :meth:`recv_bytes`, :meth:`recv_into`, :meth:`recv_many`, their ``_nowait`` twins and
    iteration; :meth:`close` leaves. With ``untether_after``, a receive call may raise
    :class:`Lapped` once (the subscriber has then rejoined at the head). A subscriber belongs
    to the process that made it: it does not pickle and does not survive ``fork``.
    """

    __module__ = "mmipc"
    __qualname__ = "Subscriber"

    def __init__(self, region: Region, *, _token: object = None) -> None:
        super().__init__(region, _token=_token)
        self._sub_token = 0
        self._sub_sem: Semaphore | None = None
        self._state_index = 0
        self._views_index = 0
        self._cursor_index = 0
        self._delivered = 0  # sequence number of the next record the user has not received
        self._times_lapped = 0
        self._last_info: RecordInfo | None = None
        self._subscribed = False

    # -- joining and leaving ----------------------------------------------------------------------

    def _subscribe(self, start: str, timeout: float | None) -> None:
        slot = self._slot
        assert slot is not None and self._words is not None
        mode = os.fstat(self._region.fd).st_mode & 0o777
        self._sub_sem, _ = Semaphore.open_or_create(subscriber_sem_name(self._region.nonce, slot), 0, mode)
        self._sem_data = self._sub_sem
        self._state_index = L.slot_word(slot, L.S_SUB_STATE)
        self._views_index = L.slot_word(slot, L.S_VIEWS)
        self._cursor_index = L.slot_word(slot, L.S_CURSOR)
        self._w_records_read = L.slot_word(slot, L.S_RECORDS_READ)
        self._w_bytes_read = L.slot_word(slot, L.S_BYTES_READ)
        self._w_consumer_waits = L.slot_word(slot, L.S_WAITS)
        self._w_pinned = L.slot_word(slot, L.S_PINNED)
        words = self._words
        for index in (self._w_records_read, self._w_bytes_read, self._w_consumer_waits, self._w_pinned):
            words[index] = 0
        self._join_at(start, timeout)
        self._consumer_role = True  # the Ring's receive path: no consumer role lock to claim
        self._subscribed = True

    def _join_at(self, start: str, timeout: float | None) -> None:
        """(Re)join at the head or the tail, under the writer semaphore (see the module docstring)."""
        words = self._words
        sem = self._sub_sem
        slot = self._slot
        assert words is not None and sem is not None and slot is not None
        self._lock_writer(timeout, False)
        try:
            while sem.try_acquire():  # counts of an earlier subscription in this slot
                pass
            epoch = words[L.W_B_SUB_EPOCH] + 1
            words[L.W_B_SUB_EPOCH] = epoch
            head, tail = words[L.W_HEAD], words[L.W_TAIL]
            self._check_positions(head, tail)
            pos = tail if start == "next" else head
            if pos == tail and words[L.W_END_OF_STREAM]:
                pos = tail - L.RECORD_HEADER_SIZE  # the end-of-stream record: receive calls raise
            seq = self._first_sequence(pos, tail)
            words[L.slot_word(slot, L.S_BEHIND_SINCE)] = 0
            words[self._views_index] = 0
            words[self._cursor_index] = pos
            roles = words[L.slot_word(slot, L.S_ROLES)]
            words[L.slot_word(slot, L.S_ROLES)] = (roles | L.ROLE_SUBSCRIBER) & ~L.ROLE_WRITER
            token = epoch << 8 | L.SUB_TETHERED
            words[self._state_index] = token
            self._sub_token = token
            self._read_pos = pos
            self._counted_from = tail  # later groups carry a count for this subscription
            self._at_group_start = True
            self._have_token = False
            self._batch = None
            self._last_batch = None
            self._outstanding = deque()
            self._pinned_reported = 0
            self._next_seq = seq
            self._delivered = seq
            self._writer_epoch = words[L.W_WRITER_EPOCH]
        finally:
            self._writer_exit()

    def _first_sequence(self, pos: int, tail: int) -> int:
        """Sequence number of the first data record at or after ``pos``."""
        words = self._words
        assert words is not None
        while pos < tail:
            _length, rtype, _flags, size, seq = self._read_header(pos, tail)
            if rtype in (L.REC_DATA, L.REC_BATCH):
                return seq
            if rtype == L.REC_END:
                break
            pos += size
        return int(words[L.W_RECORDS_WRITTEN])

    def close(self) -> None:
        """Leave: producers stop waiting for this subscriber. Idempotent.

        Views received from this subscriber must not be used after it closed: producers no
        longer keep their records.
        """
        if self._closed or not hasattr(self, "_region"):
            return
        words = self._words
        if self._subscribed and words is not None and not self._region.closed:
            words[self._state_index] = 0
            slot = self._slot
            if slot is not None:
                roles = words[L.slot_word(slot, L.S_ROLES)]
                words[L.slot_word(slot, L.S_ROLES)] = roles & ~L.ROLE_SUBSCRIBER
                unlink_semaphore(subscriber_sem_name(self._region.nonce, slot))
            self._post_space()
        self._subscribed = False
        sem = self._sub_sem
        self._sub_sem = None
        try:
            super().close()
        finally:
            if sem is not None:
                sem.close()

    def _after_fork_in_child(self) -> None:
        # The subscription (slot, cursor, semaphore) is the parent's: this copy is unusable.
        self._participants.forget_after_fork()
        self._slot = None
        self._subscribed = False
        self._closed = True

    def __reduce__(self) -> tuple[Any, ...]:
        raise TypeError(
            "a Subscriber cannot be pickled: pass the ring to the other process and call "
            "ring.subscribe() there"
        )

    def __repr__(self) -> str:
        if self._closed:
            return f"<mmipc.Subscriber of {self.name!r} closed>"
        words = self._words
        assert words is not None
        state = L.SUB_STATE_NAMES.get(int(words[self._state_index]) & _STATE_MASK, "?")
        return (
            f"<mmipc.Subscriber of {self.name!r} slot={self._slot} position={self._read_pos} "
            f"lag={L.bytes_after(words, self._read_pos)} {state}>"
        )

    @property
    def last_record(self) -> RecordInfo | None:
        """Position and sequence number of the record the last single-record receive returned.

        Set by :meth:`recv`, :meth:`recv_bytes`, :meth:`recv_into` and their ``_nowait`` twins;
        ``None`` after :meth:`recv_many` (whose records carry consecutive sequence numbers
        ending at :attr:`next_sequence` ``- 1``).
        """
        return self._last_info

    @property
    def next_sequence(self) -> int:
        """Sequence number of the next record this subscriber will receive."""
        return self._delivered

    def stats(self) -> SubscriberStats:  # type: ignore[override]
        """This subscription's counters."""
        self._check_open()
        if self._outstanding:
            self._advance()
        words = self._words
        slot = self._slot
        assert words is not None and slot is not None
        return SubscriberStats(
            name=self.name,
            slot=slot,
            state=L.SUB_STATE_NAMES.get(int(words[self._state_index]) & _STATE_MASK, "?"),
            position=self._read_pos,
            lag_bytes=L.bytes_after(words, self._read_pos),
            records_read=int(words[self._w_records_read]),
            bytes_read=int(words[self._w_bytes_read]),
            waits=int(words[self._w_consumer_waits]),
            pinned_records=int(words[self._w_pinned]),
            times_lapped=self._times_lapped,
        )

    # -- writing is the ring's business ---------------------------------------------------------

    def _not_a_producer(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError("a Subscriber only receives: send through the ring")

    send = send_nowait = send_many = reserve = reserve_nowait = end_stream = _not_a_producer  # type: ignore[assignment]

    # -- receiving --------------------------------------------------------------------------------

    def _check_open_subscription(self) -> None:
        if self._closed:
            raise ClosedError(f"subscriber of ring {self.name!r} is closed")
        if not self._subscribed:
            raise ClosedError(f"subscriber of ring {self.name!r} left its subscription")

    def _state(self) -> int:
        words = self._words
        assert words is not None
        return int(words[self._state_index])

    def _copy_ok(self) -> None:
        """After taking (copying) a record: raise :class:`Lapped` if the producer cut us loose."""
        state = self._state()
        if state == self._sub_token or state == (self._sub_token & ~_STATE_MASK) | L.SUB_UNTETHERING:
            return  # still counted by the producers: nothing we copied was overwritten
        self._lapped()

    def _lapped(self) -> None:
        missed_from = self._delivered
        self._outstanding = deque()
        self._times_lapped += 1
        self._join_at("next", None)
        missed = self._delivered - missed_from
        raise Lapped(
            f"subscriber in slot {self._slot} of ring {self.name!r} held the producer back for more "
            f"than {self.untether_after} s and was cut loose: it missed {missed} records and "
            "rejoined at the head",
            missed,
        )

    def _resolve_untethering(self, timeout: float | None) -> None:
        """We want a view while a producer is cutting us loose: wait for its decision (or make it)."""
        words = self._words
        assert words is not None
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            state = words[self._state_index]
            if state == self._sub_token:
                return
            if state & _STATE_MASK != L.SUB_UNTETHERING:
                self._lapped()
            try:
                self._lock_writer(0.0, True)
            except WouldBlock:
                pass
            else:
                # No producer is deciding right now: decide as it would have.
                try:
                    if words[self._state_index] & _STATE_MASK == L.SUB_UNTETHERING:
                        if self._outstanding:
                            words[L.slot_word(self._slot, L.S_BEHIND_SINCE)] = 0  # type: ignore[arg-type]
                            words[self._state_index] = self._sub_token
                        else:
                            words[self._state_index] = (self._sub_token & ~_STATE_MASK) | L.SUB_LAPPED
                            words[L.W_B_LAPPED_TOTAL] += 1
                finally:
                    self._writer_exit()
                continue
            if deadline is not None and time.monotonic() >= deadline:
                raise WaitTimeout(f"subscriber of ring {self.name!r} is being cut loose ({timeout} s)")
            time.sleep(0.001)

    def _take(self, timeout: float | None, nowait: bool) -> tuple[Any, int, int]:
        self._check_open_subscription()
        if self._state() != self._sub_token:
            self._copy_ok()
        try:
            return Ring._take(self, timeout, nowait)
        except CorruptionError:
            self._copy_ok()  # overwritten under us because we were cut loose: Lapped, not corruption
            raise

    def _record_delivered(self, single: bool) -> None:
        batch = self._batch
        self._delivered = batch.seq + batch.index if batch is not None else self._next_seq
        if not single:
            self._last_info = None
        elif self._last_batch is not None:
            last = self._last_batch
            self._last_info = RecordInfo(last.pos, last.seq + last.index - 1)
        else:
            self._last_info = RecordInfo(self._last_pos, self._last_seq)

    def _take_view(self, timeout: float | None, nowait: bool) -> tuple[memoryview, list[Any]]:
        words = self._words
        assert words is not None and self._mm is not None
        out = self._outstanding
        while True:
            self._check_open_subscription()
            if words[self._state_index] != self._sub_token:
                self._copy_ok()
                self._resolve_untethering(timeout)
            # Publish the view before taking the record: a producer deciding to cut us loose
            # sees it (or we see its decision below).
            words[self._views_index] = len(out) + 1
            try:
                end, start, length = self._take(timeout, nowait)
            except BaseException:
                words[self._views_index] = len(out)
                raise
            view, ref = tracked_view(self._mm, start, length)
            if words[self._state_index] == self._sub_token:
                break
            view.release()
            self._unread(length)
            words[self._views_index] = len(out)
        entry = [end, view, ref, False]
        out.append(entry)
        self._record_delivered(True)
        return view, entry

    def _take_one_view(self, timeout: float | None, nowait: bool) -> memoryview:
        view, entry = self._take_view(timeout, nowait)
        entry[1] = None  # recv_views: released once unreferenced (and counted as held until then)
        entry[3] = True
        return view

    def recv(self, timeout: float | None = None, *, wait: str | WaitStrategy | None = None) -> _Received:
        """Receive the next record as a read-only zero-copy view (``with sub.recv() as view:``).

        As :meth:`Ring.recv`. While the subscriber holds views, it is never cut loose (it
        holds the producer back instead).
        """
        return _SubscriberReceived(self, timeout, False, None if wait is None else resolve_wait(wait))

    def recv_nowait(self) -> _Received:
        """:meth:`recv` that raises :class:`WouldBlock` if no record is ready."""
        return _SubscriberReceived(self, 0.0, True)

    def _advance(self) -> None:
        super()._advance()
        words = self._words
        if words is not None and self._subscribed:
            words[self._views_index] = len(self._outstanding)

    def _set_head(self, head: int) -> None:
        words = self._words
        assert words is not None
        words[self._cursor_index] = head
        if words[L.W_PRODUCER_WAITING]:
            self._post_space()

    def _set_skip(self, marker: tuple[int, int]) -> None:
        pass  # the cursor stays at a batch record until all its items are released

    def recv_bytes(self, timeout: float | None = None, *, wait: str | WaitStrategy | None = None) -> bytes:
        """Receive the next record as ``bytes`` (one copy)."""
        if wait is not None:
            return self._with_wait(wait, self.recv_bytes, timeout)  # type: ignore[no-any-return]
        end, start, length = self._take(timeout, False)
        data = self._mm[start : start + length]  # type: ignore[index]
        self._copy_ok()
        self._done(end)
        self._record_delivered(True)
        return data

    def recv_bytes_nowait(self) -> bytes:
        """:meth:`recv_bytes` that raises :class:`WouldBlock` if no record is ready."""
        end, start, length = self._take(0.0, True)
        data = self._mm[start : start + length]  # type: ignore[index]
        self._copy_ok()
        self._done(end)
        self._record_delivered(True)
        return data

    def recv_into(
        self, buffer: Any, timeout: float | None = None, *, wait: str | WaitStrategy | None = None
    ) -> int:
        """Copy the next record into a writable ``buffer``; return its length."""
        if wait is not None:
            return self._with_wait(wait, self.recv_into, buffer, timeout)  # type: ignore[no-any-return]
        target = memoryview(buffer).cast("B")
        end, start, length = self._take(timeout, False)
        if length > target.nbytes:
            self._unread(length)
            raise ValueError(f"record of {length} bytes does not fit a buffer of {target.nbytes} bytes")
        assert self._buf is not None
        target[:length] = self._buf[start : start + length]
        self._copy_ok()
        self._done(end)
        self._record_delivered(True)
        return length

    def recv_many(
        self,
        max_records: int = 1024,
        timeout: float | None = None,
        max_bytes: int = 2 << 20,
        *,
        wait: str | WaitStrategy | None = None,
    ) -> list[bytes]:
        """Receive up to ``max_records`` records as ``bytes``, waiting only for the first."""
        try:
            out = super().recv_many(max_records, timeout, max_bytes, wait=wait)
        except CorruptionError:
            self._copy_ok()  # cut loose in the middle of the call: Lapped, not corruption (as _take)
            raise
        self._copy_ok()
        self._record_delivered(False)
        return out

    def __enter__(self) -> Subscriber:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


register_mode(L.RING_BROADCAST, _BroadcastRing)
