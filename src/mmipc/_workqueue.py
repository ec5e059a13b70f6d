"""Work-queue rings: each record goes to exactly one of many consumer processes.

``Ring.create(capacity, mode="queue")`` builds a :class:`_QueueRing` (shown as ``mmipc.Ring``).
Producers are the Ring's (one writer, or many with ``multi_writer=True``); ``send_many`` packs
runs of small items into batch records, as in the single-consumer mode (a queue Channel turns
that off: it needs one record per object). Every consumer process calls the usual receive
methods on its own handle.

Protocol (byte layout in ``_layout``, "Ring modes"):

* **Claiming.** Consumers claim records in order under the *claim lock*, an OFD lock on
  ``LOCK_QUEUE_CLAIM`` of the region's file: the kernel drops it when its holder dies, so a
  consumer killed while claiming wedges nobody. A claim stores the consumer's token
  ``(slot + 1) | generation << 16`` in the record header's ``user`` word, *then* advances
  ``claim`` (one store each): a consumer killed in between leaves a record at ``claim`` that the
  next claimer simply claims again.
* **Batch records** are taken item by item through the *item cursor* (``q_item`` items of the
  batch record at ``q_item_pos`` are taken; valid only while ``q_item_pos == claim``), by any
  number of consumers, each taking a run of items per hold. A taker copies its items and
  releases them in the same hold: batch items are never held, so a batch record needs no owner
  and is never redelivered. Whoever takes the last item marks the record released, then
  advances ``claim``; a partial take stores ``q_item``, then ``q_item_pos`` (which already names
  the record if an earlier take was partial too). The store that moves the cursor commits the
  take: ``claim``, ``q_item`` when ``q_item_pos`` already named the record, else ``q_item_pos``.
  A taker killed before its commit leaves the items to its successor; after it, they were
  delivered (the taker returns copies: like a message read from a pipe by a process killed
  before it used it). Nothing is ever delivered twice unflagged.
* **Releasing, in any order.** Releasing a record is one store of ``Q_RELEASED`` into its
  ``user`` word, under the claim lock, followed by a walk: ``head`` passes every released record
  (and padding) in order. Stores and walks all under one lock, so no release is missed (every
  claim walks too, and a producer waiting for space walks if the lock is free).
* **Crashes: at least once.** A dead consumer (its participant slot's OFD lock is gone) is
  recovered by whoever wins its slot: under the claim lock, each record between ``head`` and
  ``claim`` that carries its token is marked ``Q_REDELIVER`` (``redeliver_pending`` is raised
  first, so a recovery killed midway over-counts, never loses). Claimers take marked records
  first; they arrive flagged ``redelivered`` with their original sequence number
  (:attr:`Ring.last_record`). Idle consumers check for dead peers every
  :data:`LIVENESS_INTERVAL`, producers while they wait for space, and a consumer that reaches
  the end of the stream checks before it raises :class:`EndOfStream`.
* **Wake-ups.** Producers post the ring's data semaphore once per published group, as in the
  single-consumer mode. A waiting consumer takes a count; a claimer that finds a group's first
  record without having waited takes one if there is one. Counts stay bounded by the unclaimed
  groups (DESIGN.md 3.5); every wait is a slice that re-checks ``claim`` against ``tail``.
  Claimers read records published before they took any count: like the single-consumer spin
  path, this relies on x86-64 keeping loads in order (DESIGN.md 3.2).
"""

from __future__ import annotations

import os
import time
from bisect import bisect_right
from collections import deque
from collections.abc import Iterable, Iterator
from itertools import accumulate
from types import TracebackType
from typing import Any

from . import _layout as L
from ._errors import ClosedError, CorruptionError, EndOfStream, MmipcError, WaitTimeout, WouldBlock
from ._region import Region
from ._ring import RecordInfo, Ring, _Received, _unpack_lengths, register_mode
from ._semaphore import SLICE
from ._views import tracked_view
from ._wait import WaitStrategy, poll_until_above
from ._wait import resolve as _resolve_wait

__all__: list[str] = []

# How often an idle consumer (or a producer waiting for space) looks for dead consumers.
LIVENESS_INTERVAL = 0.1
CLAIM_LOCK_TIMEOUT = 10.0  # longest wait for the claim lock where no timeout applies
# Records longer than this are copied outside the claim lock (claimed, copied, released in a
# second hold), so that one consumer's long copy does not stall the others.
COPY_IN_HOLD_MAX = 16 << 10
NOWAIT_LOCK_WAIT = 0.01  # ``_nowait`` calls: the lock is held for microseconds, unless a holder is stuck

_DATA, _PADDING, _END, _BATCH = L.REC_DATA, L.REC_PADDING, L.REC_END, L.REC_BATCH
_BATCH_HEAD = L.BATCH_HEAD
_ANY = 1 << 62  # no limit (records, bytes, fit)
_RELEASED, _REDELIVER = L.Q_RELEASED, L.Q_REDELIVER

# (position, payload offset, length, sequence, redelivered)
_Claim = tuple[int, int, int, int, bool]


class _QueueRing(Ring):
    """A ring created with ``mode="queue"``."""

    __module__ = "mmipc"
    __qualname__ = "Ring"

    def __init__(self, region: Region, *, _token: object = None) -> None:
        super().__init__(region, _token=_token)
        self._claim_token = 0
        self._claim_locked = False
        self._pack_items = True  # send_many packs small items into batch records (Channel: False)
        self._copies: list[bytes] = []  # what the last receive took (bytes, released already)
        self._runs: list[tuple[int, int, bool, int]] = []  # ... as (position, sequence, redelivered, n)
        self._claimed_bytes = 0
        self._batch_cache: tuple[int, int, list[int], list[int]] | None = None
        self._deferred: list[tuple[int, int, int, int]] = []  # (index in _copies, position, start, length)
        self._held: list[tuple[int, int, int, int]] = []  # recv_views: the same, claimed for views
        self._to_release: list[int] = []  # records whose views are gone: released in the next hold
        self._next_maintenance = 0.0
        self._user_base = self._data_offset + L.RECORD_USER_OFFSET  # + pos % capacity, then // 8

    # -- the claim lock ---------------------------------------------------------------------------

    def _lock_claims(self, timeout: float = CLAIM_LOCK_TIMEOUT) -> None:
        region = self._region
        if region.lock(L.LOCK_QUEUE_CLAIM):
            self._claim_locked = True
            return
        for _ in range(64):  # held for microseconds: yield before sleeping
            os.sched_yield()
            if region.lock(L.LOCK_QUEUE_CLAIM):
                self._claim_locked = True
                return
        deadline = time.monotonic() + timeout
        delay = 0.0001
        while not region.lock(L.LOCK_QUEUE_CLAIM):
            if time.monotonic() >= deadline:
                raise WaitTimeout(f"claim lock of queue ring {self.name!r} busy for {timeout} s")
            time.sleep(delay)
            delay = min(delay * 2, 0.002)
        self._claim_locked = True

    def _unlock_claims(self) -> None:
        self._claim_locked = False
        self._region.unlock(L.LOCK_QUEUE_CLAIM)

    def _user_index(self, pos: int) -> int:
        return (self._user_base + pos % self._capacity) >> 3

    # -- writing: one record per item ---------------------------------------------------------------

    def _plan_records(self, sizes: list[int]) -> Iterator[tuple[int, int, int, int]]:
        if self._pack_items:
            return super()._plan_records(sizes)
        return ((i, 1, size, size) for i, size in enumerate(sizes))

    def _wait_space(self, end: int, timeout: float | None, nowait: bool) -> None:
        cap = self._capacity
        if end - self._head_cache <= cap:
            return
        words = self._words
        assert words is not None
        head = self._space_head(words[L.W_HEAD])
        if end - head > cap:
            self._maintain(reap=False)  # releases a walk lost to a race may be waiting for
            head = self._space_head(words[L.W_HEAD])
        if end - head <= cap:
            self._head_cache = head
            return
        self._check_positions(head, words[L.W_TAIL])
        if nowait:
            raise WouldBlock(self._full_message(end, head))
        words[L.W_PRODUCER_WAITS] += 1
        deadline = None if timeout is None else time.monotonic() + timeout
        strategy = self._wait
        if strategy.poll:
            while True:  # poll for room (wait strategies, _wait)
                if poll_until_above(words, L.W_HEAD, end - cap - 1, strategy, deadline):
                    self._head_cache = self._space_head(words[L.W_HEAD])
                    return
                if not strategy.spins:
                    break
                if deadline is not None and time.monotonic() >= deadline:
                    head = self._space_head(int(words[L.W_HEAD]))
                    raise WaitTimeout(self._full_message(end, head) + f" after {timeout} s")
                if self._closed:
                    raise ClosedError(f"ring {self.name!r} is closed")
                self._maintain(reap=True)
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
                if not sem.acquire(wait):
                    self._maintain(reap=True)
        finally:
            words[L.W_PRODUCER_WAITING] = 0

    def _full_message(self, end: int, head: int) -> str:
        words = self._words
        assert words is not None
        need = end - head - self._capacity
        msg = f"queue ring {self.name!r} is full: consumers must release {need} more bytes"
        if head < words[L.W_Q_CLAIM]:
            owner = words[self._user_index(head)]
            if owner and not owner & (_RELEASED | _REDELIVER):
                slot = (owner & 0xFFFF) - 1
                pid = self._participants.get_field(slot, L.S_PID)
                msg += (
                    f" (the oldest record, at {head}, is held by the consumer in slot {slot}, process {pid})"
                )
        return msg

    # -- maintenance: head walk, dead consumers -----------------------------------------------------

    def _maintain(self, reap: bool) -> None:
        """Walk ``head`` and (at most every LIVENESS_INTERVAL) recover dead consumers, if the claim lock is free."""
        if self._closed or self._claim_locked:
            return
        if not self._region.lock(L.LOCK_QUEUE_CLAIM):
            return
        self._claim_locked = True
        try:
            self._walk_head()
            if reap:
                now = time.monotonic()
                if now >= self._next_maintenance:
                    self._next_maintenance = now + LIVENESS_INTERVAL
                    self._reap_dead()
        finally:
            self._unlock_claims()

    def _walk_head(self) -> None:
        """Under the claim lock: pass every released record (and padding) at ``head``."""
        words = self._words
        assert words is not None
        head = pos = words[L.W_HEAD]
        claim, tail = words[L.W_Q_CLAIM], words[L.W_TAIL]
        while pos < claim:
            _length, rtype, _flags, size, _seq = self._read_header(pos, tail)
            if rtype != _PADDING and words[self._user_index(pos)] != _RELEASED:
                break
            pos += size
        if pos != head:
            words[L.W_HEAD] = pos
            if words[L.W_PRODUCER_WAITING]:
                sem = self._sem_space
                assert sem is not None
                if sem.value == 0:
                    sem.release()

    def _reap_dead(self) -> None:
        """Under the claim lock: recover every dead consumer's records."""
        participants = self._participants
        for p in participants.table():
            if p.alive or not p.roles & L.ROLE_QUEUE_CONSUMER:
                continue
            if participants.take_dead(p.slot):
                try:
                    self._cleanup_dead_slot(p.slot)
                finally:
                    participants.release(p.slot)

    def _cleanup_dead_slot(self, slot: int) -> None:
        super()._cleanup_dead_slot(slot)
        words = self._words
        assert words is not None
        if not words[L.slot_word(slot, L.S_ROLES)] & L.ROLE_QUEUE_CONSUMER:
            return
        token = self._participants.generation(slot) << 16 | (slot + 1)
        locked_here = not self._claim_locked
        if locked_here:
            self._lock_claims()
        try:
            marked = self._mark_for_redelivery(token)
            words[L.W_Q_CONSUMERS_RECOVERED] += 1
        finally:
            if locked_here:
                self._unlock_claims()
        if marked:
            sem = self._sem_data
            assert sem is not None
            if sem.value == 0:
                sem.release()  # wake one idle consumer; the others re-check every slice

    def _mark_for_redelivery(self, token: int) -> int:
        """Under the claim lock: mark the records claimed by ``token`` for redelivery."""
        words = self._words
        assert words is not None
        pos, claim, tail = words[L.W_HEAD], words[L.W_Q_CLAIM], words[L.W_TAIL]
        marked = 0
        while pos < claim:
            _length, rtype, _flags, size, _seq = self._read_header(pos, tail)
            index = self._user_index(pos)
            if rtype == _DATA and words[index] == token:
                words[L.W_Q_REDELIVER_PENDING] += 1  # before the mark: over-count, never lose
                words[index] = _REDELIVER
                marked += 1
            pos += size
        return marked

    # -- consumers ----------------------------------------------------------------------------------

    def _claim_consumer(self) -> None:
        slot = self._ensure_slot()
        participants = self._participants
        participants.set_field(
            slot,
            L.S_ROLES,
            participants.get_field(slot, L.S_ROLES) | L.ROLE_CONSUMER | L.ROLE_QUEUE_CONSUMER,
        )
        self._claim_token = participants.generation(slot) << 16 | (slot + 1)
        self._w_consumer_waits = L.slot_word(slot, L.S_WAITS)
        self._w_pinned = L.slot_word(slot, L.S_PINNED)
        words = self._words
        assert words is not None
        for field in (L.S_RECORDS_READ, L.S_BYTES_READ, L.S_WAITS, L.S_PINNED):
            words[L.slot_word(slot, field)] = 0
        self._outstanding = deque()
        self._consumer_role = True

    def _claim(
        self, have_count: bool, limit: int, max_bytes: int, hold: bool, fit: int, views: bool = False
    ) -> _Claim | None:
        """Under the claim lock: take records and batch items in order (redeliveries first).

        Every record and item taken goes to ``self._copies`` as ``bytes`` and is released at
        once (in this hold), up to ``limit`` of them and about ``max_bytes``. Data records longer
        than :data:`COPY_IN_HOLD_MAX` are claimed instead and listed in ``self._deferred``: the
        caller copies them after the hold (other consumers go on meanwhile) and releases them
        in a second one (a crash in between redelivers them, flagged). Except with
        ``hold`` (``recv``, ``recv_into``, one record), where a *data* record is claimed for this
        consumer and returned instead (it stays claimed until released, and is redelivered if
        this consumer dies first). Batch items are always copied: a batch record's items are
        taken by many consumers, in order, through the item cursor (``q_item`` at
        ``q_item_pos``), and a batch record has no owner to redeliver for.

        With ``views`` (:meth:`recv_views`), data records are claimed for this consumer and
        listed in ``self._held`` (the caller makes a view of each after the hold); batch items are
        copied as usual.

        Nothing is taken if the next record (or item) is longer than ``fit``: raises
        :class:`_TooLarge`. Raises :class:`EndOfStream` at the end-of-stream record once no
        redelivery is pending, if nothing was taken in this call.
        """
        words, mm = self._words, self._mm
        assert words is not None and mm is not None
        token = self._claim_token
        cap, data_offset, user_base = self._capacity, self._data_offset, self._user_base
        copies, runs = self._copies, self._runs
        nbytes = 0
        while len(copies) < limit and nbytes < max_bytes:
            if words[L.W_Q_REDELIVER_PENDING]:
                got = self._claim_redelivery(token, fit)
                if got is not None:
                    if hold:
                        return got
                    pos, start, length, seq, _redelivered = got
                    if views:
                        self._held.append((len(copies), pos, start, length))
                        copies.append(b"")  # a view after the hold; released when unreferenced
                    elif length > COPY_IN_HOLD_MAX:
                        self._deferred.append((len(copies), pos, start, length))
                        copies.append(b"")  # copied after the hold, then released
                    else:
                        copies.append(mm[start : start + length])
                        words[(user_base + pos % cap) >> 3] = _RELEASED
                    runs.append((pos, seq, True, 1))
                    nbytes += length
                    continue
            claim, tail = words[L.W_Q_CLAIM], words[L.W_TAIL]
            if not 0 <= tail - L.past_jump(words, claim, tail) <= cap or claim < words[L.W_HEAD]:
                raise CorruptionError(
                    f"queue ring {self.name!r}: claim position {claim} is outside head {words[L.W_HEAD]} "
                    f".. tail {tail} (the header was overwritten)"
                )
            if claim >= tail:
                break
            length, rtype, flags, size, seq = self._read_header(claim, tail)
            if rtype == _DATA:
                if length > fit:
                    raise _TooLarge(length)
            elif rtype == _BATCH:
                first, begins, ends = self._queue_batch(claim, length)
                count = len(ends)
                k = words[L.W_Q_ITEM] if words[L.W_Q_ITEM_POS] == claim else 0
                if not 0 <= k < count:
                    raise CorruptionError(
                        f"queue ring {self.name!r}: item cursor {k} is outside the batch record of "
                        f"{count} items at position {claim}"
                    )
                if ends[k] - begins[k] > fit:
                    raise _TooLarge(ends[k] - begins[k])
                if k:
                    # The group's count went to the item 0 taker; a partial take posted one for
                    # the rest (below), which this take consumes like a group's.
                    flags |= L.FLAG_FIRST
            if flags & L.FLAG_FIRST and not have_count:
                sem = self._sem_data
                assert sem is not None
                if sem.value:
                    sem.try_acquire()  # this group's count (bounds the semaphore, DESIGN.md 3.5)
            have_count = False
            if rtype == _DATA:
                index = (user_base + claim % cap) >> 3
                start = data_offset + claim % cap + 32
                if hold or views or length > COPY_IN_HOLD_MAX:
                    words[index] = token  # claimed: first the mark, then the position
                    words[L.W_Q_CLAIM] = claim + size
                    if hold:
                        return claim, start, length, seq, False
                    if views:
                        self._held.append((len(copies), claim, start, length))
                        copies.append(b"")  # a view after the hold; released when unreferenced
                    else:
                        self._deferred.append((len(copies), claim, start, length))
                        copies.append(b"")  # copied after the hold, then released
                else:
                    copies.append(mm[start : start + length])
                    words[index] = _RELEASED
                    words[L.W_Q_CLAIM] = claim + size
                runs.append((claim, seq, False, 1))
                nbytes += length
            elif rtype == _BATCH:
                stop = count if not hold else k + 1
                stop = min(stop, k + limit - len(copies))
                begin = begins[k]
                if ends[stop - 1] - begin > max_bytes - nbytes:
                    stop = max(k + 1, bisect_right(ends, begin + max_bytes - nbytes, k, stop))
                end = ends[stop - 1]
                if stop == k + 1:
                    copies.append(mm[first + begin : first + end])
                else:
                    blob = mm[first + begin : first + end]
                    copies.extend(
                        [
                            blob[b - begin : e - begin]
                            for b, e in zip(begins[k:stop], ends[k:stop], strict=True)
                        ]
                    )
                runs.append((claim, seq + k, False, stop - k))
                nbytes += end - begin
                if stop < count:
                    # Item cursor: the count, then the record it belongs to. On a record's first
                    # partial take, a consumer killed in between leaves a pair that does not
                    # match: its successor takes the items again from 0 (the dead one never
                    # returned them); on a later one the count alone commits. Then the limit is
                    # reached.
                    words[L.W_Q_ITEM] = stop
                    words[L.W_Q_ITEM_POS] = claim
                    sem = self._sem_data
                    assert sem is not None
                    if sem.value == 0:
                        # The rest of this batch has no count of its own (its group's went to
                        # the item 0 taker): wake one idle consumer for it (at most one extra
                        # count: bounded, DESIGN.md 3.5).
                        sem.release()
                    break
                words[(user_base + claim % cap) >> 3] = _RELEASED  # then the position
                words[L.W_Q_CLAIM] = claim + size
            elif rtype == _PADDING:
                words[L.W_Q_CLAIM] = claim + size
            elif rtype == _END:
                if copies:
                    break  # the next call raises EndOfStream
                self._reap_dead()  # nobody else may be left to do it
                if words[L.W_Q_REDELIVER_PENDING]:
                    continue  # claim the redeliveries first
                raise EndOfStream(f"ring {self.name!r}: the stream was ended and is drained")
            else:
                raise CorruptionError(
                    f"queue ring {self.name!r}: record at position {claim} has type {rtype}, "
                    "which queue rings never write"
                )
        self._claimed_bytes = nbytes
        return None

    def _queue_batch(self, pos: int, length: int) -> tuple[int, list[int], list[int]]:
        """Validate the batch record at ``pos``: (offset of its first payload, item begins, ends).

        Kept for the record at hand: claimers take a batch record's items over many calls.
        """
        cached = self._batch_cache
        if cached is not None and cached[0] == pos:
            return cached[1], cached[2], cached[3]
        mm = self._mm
        assert mm is not None
        base = self._data_offset + pos % self._capacity + 32
        count, reserved = _BATCH_HEAD.unpack_from(mm, base)
        table = (4 * count + 7) & ~7
        if count < 2 or reserved != 0 or 8 + table > length:
            raise CorruptionError(
                f"queue ring {self.name!r}: batch record at position {pos} has an invalid item count {count}"
            )
        ends = list(accumulate(_unpack_lengths(mm[base + 8 : base + 8 + 4 * count])))
        if 8 + table + ends[-1] != length:
            raise CorruptionError(
                f"queue ring {self.name!r}: batch record at position {pos}: item lengths add up to "
                f"{ends[-1]}, the record holds {length - 8 - table}"
            )
        begins = [0, *ends[:-1]]
        self._batch_cache = (pos, base + 8 + table, begins, ends)
        return base + 8 + table, begins, ends

    def _claim_redelivery(self, token: int, fit: int) -> _Claim | None:
        words = self._words
        assert words is not None
        pos, claim, tail = words[L.W_HEAD], words[L.W_Q_CLAIM], words[L.W_TAIL]
        while pos < claim:
            length, rtype, _flags, size, seq = self._read_header(pos, tail)
            index = self._user_index(pos)
            if rtype == _DATA and words[index] == _REDELIVER:
                if length > fit:
                    raise _TooLarge(length)
                words[index] = token
                pending = words[L.W_Q_REDELIVER_PENDING]
                words[L.W_Q_REDELIVER_PENDING] = pending - 1 if pending else 0
                words[L.W_Q_REDELIVERED] += 1
                return pos, self._data_offset + pos % self._capacity + 32, length, seq, True
            pos += size
        words[L.W_Q_REDELIVER_PENDING] = 0  # an over-count left by a recovery that died midway
        return None

    def _count(self, records: int, nbytes: int) -> None:
        """Under the claim lock: the ring's and this consumer's counters."""
        words = self._words
        slot = self._slot
        assert words is not None and slot is not None
        words[L.W_RECORDS_READ] += records
        words[L.W_BYTES_READ] += nbytes
        words[L.slot_word(slot, L.S_RECORDS_READ)] += records
        words[L.slot_word(slot, L.S_BYTES_READ)] += nbytes

    def _acquire(
        self,
        timeout: float | None,
        nowait: bool,
        limit: int,
        max_bytes: int,
        hold: bool,
        fit: int = _ANY,
        views: bool = False,
    ) -> _Claim | None:
        """Wait for records and take them (:meth:`_claim`); copies are in ``self._copies``.

        Records whose views were dropped since the last call are released in the same hold as
        the claims (one lock pair for both).
        """
        if self._closed:
            raise ClosedError(f"ring {self.name!r} is closed")
        if not self._consumer_role:
            self._claim_consumer()
        self._copies = []
        self._runs = []
        self._deferred = []
        self._held = []
        if self._outstanding:
            self._collect_done()
        words = self._words
        sem = self._sem_data
        assert words is not None and sem is not None
        deadline: float | None = None if timeout is None else time.monotonic() + timeout
        waited = False
        have_count = False
        while True:
            if nowait:
                lock_wait = NOWAIT_LOCK_WAIT
            elif deadline is None:
                lock_wait = CLAIM_LOCK_TIMEOUT
            else:
                lock_wait = max(deadline - time.monotonic(), NOWAIT_LOCK_WAIT)
            try:
                self._lock_claims(lock_wait)
            except WaitTimeout:
                if nowait:
                    raise WouldBlock(f"claim lock of queue ring {self.name!r} is busy") from None
                raise
            try:
                if self._to_release:
                    for pos in self._to_release:
                        words[self._user_index(pos)] = _RELEASED
                    self._to_release = []
                self._walk_head()
                now = time.monotonic()
                if now >= self._next_maintenance:  # busy consumers look for dead peers too
                    self._next_maintenance = now + LIVENESS_INTERVAL
                    self._reap_dead()
                try:
                    got = self._claim(have_count, limit, max_bytes, hold, fit, views)
                except _TooLarge:
                    if have_count and sem.value == 0:
                        sem.release()  # the count this call waited for goes back: nothing was taken
                    raise
                if got is not None:
                    self._count(1, got[2])
                    self._runs.append((got[0], got[3], got[4], 1))
                elif self._copies:
                    self._count(len(self._copies), self._claimed_bytes)
                    self._walk_head()  # they were released in this hold
            finally:
                self._unlock_claims()
            if self._deferred:
                self._copy_deferred()
            if views and self._copies:
                self._make_views()  # (also when it took batch items only: views of their copies)
            if got is not None or self._copies:
                return got
            have_count = False
            if nowait:
                raise WouldBlock(f"queue ring {self.name!r} has no record ready")
            now = time.monotonic()
            strategy = self._wait
            first_wait = not waited
            if not waited:
                waited = True
                words[self._w_consumer_waits] += 1
            if now >= self._next_maintenance:
                self._maintain(reap=True)
            if strategy.poll and (first_wait or strategy.spins):
                # Poll for a record past the claim position (wait strategies, _wait); then the
                # claim above takes it (and its count, if there is one).
                if poll_until_above(words, L.W_TAIL, int(words[L.W_Q_CLAIM]), strategy, deadline):
                    continue
                if strategy.spins:
                    if deadline is not None and time.monotonic() >= deadline:
                        raise WaitTimeout(f"no record arrived in queue ring {self.name!r} within {timeout} s")
                    if self._closed:
                        raise ClosedError(f"ring {self.name!r} is closed")
                    continue
            wait = SLICE
            if deadline is not None:
                wait = min(wait, deadline - now)
                if wait <= 0:
                    raise WaitTimeout(f"no record arrived in queue ring {self.name!r} within {timeout} s")
            if sem.acquire(wait):
                have_count = True
            elif self._outstanding:
                self._advance()
            if self._closed:
                raise ClosedError(f"ring {self.name!r} is closed")

    def _taken(self) -> list[Any]:
        """What the last receive took, handed over: the handle keeps no reference to it (a view
        kept here would pin its record)."""
        taken, self._copies = self._copies, []
        return taken

    def _make_views(self) -> None:
        """:meth:`recv_views`: a tracked view of each record claimed in the hold (released when
        it and everything made from it is unreferenced); batch items' copies as views."""
        mm = self._mm
        assert mm is not None
        copies: list[Any] = self._copies
        copies[:] = [memoryview(c) for c in copies]  # batch items (copies); held records replaced below
        held, self._held = self._held, []
        for i, pos, start, length in held:
            copies[i], ref = tracked_view(mm, start, length)
            self._outstanding.append([pos, None, ref, True])

    def _copy_deferred(self) -> None:
        """Copy the large records :meth:`_claim` claimed for this call, then release them."""
        mm = self._mm
        assert mm is not None
        copies, deferred = self._copies, self._deferred
        self._deferred = []
        for i, _pos, start, length in deferred:
            # An exception here leaves them claimed by us: close() hands them on, flagged.
            copies[i] = mm[start : start + length]
        positions = [pos for _i, pos, _start, _length in deferred]
        try:
            self._release_records(positions)
        except MmipcError:
            self._to_release.extend(positions)  # copied, returned; released by a later call

    def _take(self, timeout: float | None, nowait: bool) -> tuple[Any, int, int]:
        raise AssertionError("queue rings receive through _acquire")  # pragma: no cover

    def _done(self, end: Any) -> None:
        self._release_record(end)

    def _release_record(self, pos: int) -> None:
        self._release_records((pos,))

    def _release_records(self, positions: Iterable[int]) -> None:
        """Mark records released and let ``head`` pass them, under the claim lock.

        The stores happen inside the lock too: a walk (always under the lock) then sees every
        release made in an earlier hold, and a release in a later hold walks itself, so no
        release can be missed by both (a store-then-load race otherwise, DESIGN.md 3.3).
        """
        words = self._words
        assert words is not None
        locked_here = not self._claim_locked
        if locked_here:
            self._lock_claims()
        try:
            for pos in positions:
                words[self._user_index(pos)] = _RELEASED
            self._walk_head()
        finally:
            if locked_here:
                self._unlock_claims()

    def _advance(self) -> None:
        """Release every received record whose view is released and unreferenced, in any order."""
        self._collect_done()
        if self._to_release:
            self._release_records(self._to_release)  # if it raises, they stay listed
            self._to_release = []

    def _collect_done(self) -> None:
        """Move the records whose views are released and unreferenced to ``_to_release``."""
        out = self._outstanding
        keep: deque[list[Any]] = deque()
        done = self._to_release
        pinned = 0
        while out:
            entry = out.popleft()
            if not entry[3]:
                keep.append(entry)
                continue
            ref = entry[2]
            if ref is not None and ref() is not None:
                keep.append(entry)
                pinned += 1
                continue
            done.append(entry[0])
        self._outstanding = keep
        if pinned != self._pinned_reported:
            self._pinned_reported = pinned
            assert self._words is not None
            self._words[self._w_pinned] = pinned

    @property
    def last_record(self) -> RecordInfo | None:
        """Position, sequence number and redelivery flag of the record received last.

        After :meth:`recv_many`: the last of its records (:attr:`last_records` has them all).
        ``redelivered`` is true for a record whose first consumer died holding it. An item of a
        batch record (``send_many``) has the batch record's position and its own sequence number.
        """
        if not self._runs:
            return None
        pos, seq, redelivered, n = self._runs[-1]
        return RecordInfo(pos, seq + n - 1, redelivered)

    @property
    def last_records(self) -> list[RecordInfo]:
        """:class:`RecordInfo` of every record the last receive call returned, in order."""
        return [
            RecordInfo(pos, seq + i, redelivered) for pos, seq, redelivered, n in self._runs for i in range(n)
        ]

    def recv(self, timeout: float | None = None, *, wait: str | WaitStrategy | None = None) -> _Received:
        """Claim the next record and receive it as a read-only view (``with ring.recv() as view``).

        A data record stays claimed by this consumer until the block exits and the view is
        unreferenced; if the consumer dies first, another consumer receives it (flagged
        ``redelivered``). An item of a batch record (small items sent with ``send_many``) is
        copied and released when taken, as with :meth:`recv_bytes`: the view is of that copy.
        """
        return _QueueReceived(self, timeout, False, None if wait is None else _resolve_wait(wait))

    def recv_nowait(self) -> _Received:
        """:meth:`recv` that raises :class:`WouldBlock` if no record is ready."""
        return _QueueReceived(self, 0.0, True)

    def recv_bytes(self, timeout: float | None = None, *, wait: str | WaitStrategy | None = None) -> bytes:
        """Take the next record as ``bytes``: claimed, copied and released in one claim-lock hold."""
        if wait is not None:
            return self._with_wait(wait, self.recv_bytes, timeout)  # type: ignore[no-any-return]
        self._acquire(timeout, False, 1, _ANY, False)
        return self._taken()[0]  # type: ignore[no-any-return]

    def recv_bytes_nowait(self) -> bytes:
        """:meth:`recv_bytes` that raises :class:`WouldBlock` if no record is ready."""
        self._acquire(0.0, True, 1, _ANY, False)
        return self._taken()[0]  # type: ignore[no-any-return]

    def recv_into(
        self, buffer: Any, timeout: float | None = None, *, wait: str | WaitStrategy | None = None
    ) -> int:
        """Copy the next record into a writable ``buffer``; return its length.

        A record larger than ``buffer`` raises ``ValueError`` and stays unclaimed.
        """
        if wait is not None:
            return self._with_wait(wait, self.recv_into, buffer, timeout)  # type: ignore[no-any-return]
        target = memoryview(buffer).cast("B")
        try:
            got = self._acquire(timeout, False, 1, _ANY, True, target.nbytes)
        except _TooLarge as exc:
            raise ValueError(
                f"record of {exc.args[0]} bytes does not fit a buffer of {target.nbytes} bytes"
            ) from None
        if got is None:
            data = self._taken()[0]
            target[: len(data)] = data
            return len(data)
        pos, start, length, _seq, _redelivered = got
        try:
            assert self._buf is not None
            target[:length] = self._buf[start : start + length]
        finally:
            self._release_record(pos)
        return length

    def recv_views(
        self,
        max_records: int = 1024,
        timeout: float | None = None,
        max_bytes: int = 2 << 20,
        *,
        wait: str | WaitStrategy | None = None,
    ) -> list[memoryview]:
        """Claim up to ``max_records`` records (and about ``max_bytes``, so that one consumer
        does not take everything) in one claim-lock hold, waiting only for the first, and return
        them as read-only zero-copy views, as :meth:`Ring.recv_views`.

        Each data record stays claimed by this consumer until its view (and everything made
        from it) is unreferenced; then the next receive call releases it, in the same hold as
        its claims (or :meth:`release_views` does). A consumer that dies first has them
        delivered again (flagged). Items of batch records come as views of copies, released
        when taken (as with :meth:`recv`). Do not use the views after :meth:`close`: it hands
        the records they show to other consumers, and the producer may then overwrite them.
        """
        if wait is not None:
            return self._with_wait(wait, self.recv_views, max_records, timeout, max_bytes)  # type: ignore[no-any-return]
        if max_records < 1:
            raise ValueError(f"max_records must be >= 1, got {max_records}")
        self._acquire(timeout, False, max_records, max_bytes, False, _ANY, True)
        return self._taken()  # type: ignore[return-value]

    def recv_many(
        self,
        max_records: int = 1024,
        timeout: float | None = None,
        max_bytes: int = 2 << 20,
        *,
        wait: str | WaitStrategy | None = None,
    ) -> list[bytes]:
        """Take up to ``max_records`` records as ``bytes`` in one claim-lock hold, waiting only for the first.

        Stops adding records once about ``max_bytes`` of payload are collected; every record
        taken is released before the call returns.
        """
        if wait is not None:
            return self._with_wait(wait, self.recv_many, max_records, timeout, max_bytes)  # type: ignore[no-any-return]
        if max_records < 1:
            raise ValueError(f"max_records must be >= 1, got {max_records}")
        self._acquire(timeout, False, max_records, max_bytes, False)
        return self._taken()

    def _pinned_count(self) -> int:
        words = self._words
        assert words is not None
        return sum(
            int(words[L.slot_word(p.slot, L.S_PINNED)])
            for p in self._participants.table()
            if p.alive and p.roles & L.ROLE_QUEUE_CONSUMER
        )

    def _mode_stats(self) -> dict[str, Any]:
        words = self._words
        assert words is not None
        return {"mode": "queue", "redelivered": int(words[L.W_Q_REDELIVERED])}

    def _after_fork_in_child(self) -> None:
        self._claim_locked = False
        self._to_release, self._held, self._deferred, self._copies = [], [], [], []
        super()._after_fork_in_child()

    def close(self) -> None:
        """Leave; records this consumer claimed and did not release go to other consumers (flagged)."""
        if self._closed or not hasattr(self, "_region"):
            return
        if self._consumer_role and not self._region.closed:
            if self._outstanding or self._to_release:
                try:
                    self._advance()
                except MmipcError:
                    pass  # not released: they go to other consumers below (or once we are gone)
            try:
                self._lock_claims()
            except MmipcError:
                pass  # the records stay ours until our slot is found dead
            else:
                try:
                    if self._mark_for_redelivery(self._claim_token):
                        sem = self._sem_data
                        if sem is not None and sem.value == 0:
                            sem.release()
                finally:
                    self._unlock_claims()
            self._outstanding = deque()
        super().close()


class _TooLarge(Exception):
    """``recv_into``: the next record does not fit the buffer (nothing was taken)."""


class _QueueReceived(_Received):
    """:meth:`_QueueRing.recv`: a claimed data record as a tracked view, or a batch item's copy."""

    __slots__ = ()

    def __enter__(self) -> memoryview:
        if self._entry is not None:
            raise RuntimeError("a received record can be entered only once")
        ring: _QueueRing = self._ring  # type: ignore[assignment]
        args = (self._timeout, self._nowait, 1, _ANY, True)
        got = (
            ring._acquire(*args) if self._wait is None else ring._with_wait(self._wait, ring._acquire, *args)
        )
        if got is None:
            view = memoryview(ring._taken()[0])
            self._entry = [None, view, None, True]
            return view
        assert ring._mm is not None
        view, ref = tracked_view(ring._mm, got[1], got[2])
        entry = [got[0], view, ref, False]
        ring._outstanding.append(entry)
        self._entry = entry
        return view

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        entry = self._entry
        if entry is not None and entry[0] is None:  # a copy: nothing to release in the ring
            view = entry[1]
            entry[1] = None
            if view is not None:
                try:
                    view.release()
                except BufferError:
                    pass
            return
        super().__exit__(exc_type, exc, tb)


register_mode(L.RING_QUEUE, _QueueRing)
