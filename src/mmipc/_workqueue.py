"""Work-queue rings: each record goes to exactly one of many consumer processes.

``Ring.create(capacity, mode="queue")`` builds a :class:`_QueueRing` (shown as ``mmipc.Ring``).
Producers are the Ring's (one writer, or many with ``multi_writer=True``); ``send_many`` writes
one record per item (no batch records: a record is the unit a consumer claims and releases).
Every consumer process calls the usual receive methods on its own handle.

Protocol (byte layout in ``_layout``, "Ring modes"):

* **Claiming.** Consumers claim records in order under the *claim lock*, an OFD lock on
  ``LOCK_QUEUE_CLAIM`` of the region's file: the kernel drops it when its holder dies, so a
  consumer killed while claiming wedges nobody. A claim stores the consumer's token
  ``(slot + 1) | generation << 16`` in the record header's ``user`` word, *then* advances
  ``claim`` (one store each): a consumer killed in between leaves a record at ``claim`` that the
  next claimer simply claims again.
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
from collections import deque
from collections.abc import Iterable, Iterator
from typing import Any

from . import _layout as L
from ._errors import ClosedError, CorruptionError, EndOfStream, MmipcError, WaitTimeout, WouldBlock
from ._region import Region
from ._ring import RecordInfo, Ring, register_mode
from ._semaphore import SLICE
from ._wait import WaitStrategy, poll_until_above

__all__: list[str] = []

# How often an idle consumer (or a producer waiting for space) looks for dead consumers.
LIVENESS_INTERVAL = 0.1
CLAIM_LOCK_TIMEOUT = 10.0  # longest wait for the claim lock where no timeout applies
NOWAIT_LOCK_WAIT = 0.01  # ``_nowait`` calls: the lock is held for microseconds, unless a holder is stuck

_DATA, _PADDING, _END = L.REC_DATA, L.REC_PADDING, L.REC_END
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
        self._held_back: tuple[_Claim, RecordInfo] | None = None
        self._copy_in_hold = False  # recv_bytes: _take copies and releases under its lock hold
        self._copied: bytes | None = None
        self._last_info: RecordInfo | None = None
        self._last_infos: list[RecordInfo] = []
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
        for i, size in enumerate(sizes):
            yield i, 1, size, size

    def _wait_space(self, end: int, timeout: float | None, nowait: bool) -> None:
        cap = self._capacity
        if end - self._head_cache <= cap:
            return
        words = self._words
        assert words is not None
        head = words[L.W_HEAD]
        if end - head > cap:
            self._maintain(reap=False)  # releases a walk lost to a race may be waiting for
            head = words[L.W_HEAD]
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
                    self._head_cache = words[L.W_HEAD]
                    return
                if not strategy.spins:
                    break
                if deadline is not None and time.monotonic() >= deadline:
                    raise WaitTimeout(self._full_message(end, int(words[L.W_HEAD])) + f" after {timeout} s")
                if self._closed:
                    raise ClosedError(f"ring {self.name!r} is closed")
                self._maintain(reap=True)
        sem = self._sem_space
        assert sem is not None
        words[L.W_PRODUCER_WAITING] = 1
        try:
            while True:
                head = words[L.W_HEAD]
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
        self._held_back = None
        self._consumer_role = True

    def _claim_next(self, have_count: bool) -> _Claim | None:
        """Under the claim lock: claim a record (redeliveries first); None if there is none.

        Raises :class:`EndOfStream` at the end-of-stream record once no redelivery is pending.
        """
        words = self._words
        assert words is not None
        token = self._claim_token
        if words[L.W_Q_REDELIVER_PENDING]:
            got = self._claim_redelivery(token)
            if got is not None:
                return got
        cap = self._capacity
        claim, tail = words[L.W_Q_CLAIM], words[L.W_TAIL]
        if not 0 <= tail - claim <= cap or claim < words[L.W_HEAD]:
            raise CorruptionError(
                f"queue ring {self.name!r}: claim position {claim} is outside head {words[L.W_HEAD]} "
                f".. tail {tail} (the header was overwritten)"
            )
        while claim < tail:
            length, rtype, flags, size, seq = self._read_header(claim, tail)
            if flags & L.FLAG_FIRST and not have_count:
                sem = self._sem_data
                assert sem is not None
                if sem.value:
                    sem.try_acquire()  # this group's count (bounds the semaphore, DESIGN.md 3.5)
            have_count = False
            if rtype == _PADDING:
                claim += size
                words[L.W_Q_CLAIM] = claim
                continue
            if rtype == _END:
                self._reap_dead()  # nobody else may be left to do it
                if words[L.W_Q_REDELIVER_PENDING]:
                    got = self._claim_redelivery(token)
                    if got is not None:
                        return got
                raise EndOfStream(f"ring {self.name!r}: the stream was ended and is drained")
            if rtype != _DATA:
                raise CorruptionError(
                    f"queue ring {self.name!r}: record at position {claim} has type {rtype}, "
                    "which queue rings never write"
                )
            words[self._user_index(claim)] = token  # claimed: first the mark, then the position
            words[L.W_Q_CLAIM] = claim + size
            return claim, self._data_offset + claim % cap + 32, length, seq, False
        return None

    def _claim_redelivery(self, token: int) -> _Claim | None:
        words = self._words
        assert words is not None
        pos, claim, tail = words[L.W_HEAD], words[L.W_Q_CLAIM], words[L.W_TAIL]
        while pos < claim:
            length, rtype, _flags, size, seq = self._read_header(pos, tail)
            index = self._user_index(pos)
            if rtype == _DATA and words[index] == _REDELIVER:
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

    def _take(self, timeout: float | None, nowait: bool) -> tuple[Any, int, int]:
        """Claim the next record (waiting); return (its position as release marker, offset, length)."""
        if self._closed:
            raise ClosedError(f"ring {self.name!r} is closed")
        if not self._consumer_role:
            self._claim_consumer()
        held = self._held_back
        if held is not None:
            self._held_back = None
            (pos, start, length, _seq, _re), info = held
            self._last_info = info
            self._last_infos = [info]
            return pos, start, length
        if self._outstanding:
            self._advance()
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
                self._walk_head()
                now = time.monotonic()
                if now >= self._next_maintenance:  # busy consumers look for dead peers too
                    self._next_maintenance = now + LIVENESS_INTERVAL
                    self._reap_dead()
                got = self._claim_next(have_count)
                if got is not None:
                    self._count(1, got[2])
                    if self._copy_in_hold:
                        # recv_bytes: copy and release in this same hold (a lock pair costs
                        # ~3.5 us: one per record instead of two).
                        self._copied = self._mm[got[1] : got[1] + got[2]]  # type: ignore[index]
                        words[self._user_index(got[0])] = _RELEASED
                        self._walk_head()
            finally:
                self._unlock_claims()
            if got is not None:
                pos, start, length, seq, redelivered = got
                info = RecordInfo(pos, seq, redelivered)
                self._last_info = info
                self._last_infos = [info]
                return pos, start, length
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

    def _unread(self, length: int) -> None:
        """``recv_into`` with a buffer too small: keep the claimed record for the next call."""
        info = self._last_info
        assert info is not None
        pos = info.position
        start = self._data_offset + pos % self._capacity + 32
        self._held_back = ((pos, start, length, info.sequence, info.redelivered), info)

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
        out = self._outstanding
        keep: deque[list[Any]] = deque()
        done = []
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
        if done:
            self._release_records(done)
        if pinned != self._pinned_reported:
            self._pinned_reported = pinned
            assert self._words is not None
            self._words[self._w_pinned] = pinned

    @property
    def last_record(self) -> RecordInfo | None:
        """Position, sequence number and redelivery flag of the record received last.

        After :meth:`recv_many`: the last of its records (:attr:`last_records` has them all).
        ``redelivered`` is true for a record whose first consumer died holding it.
        """
        return self._last_info

    @property
    def last_records(self) -> list[RecordInfo]:
        """:class:`RecordInfo` of every record the last receive call returned, in order."""
        return list(self._last_infos)

    def recv_bytes(self, timeout: float | None = None, *, wait: str | WaitStrategy | None = None) -> bytes:
        """Claim the next record and return it as ``bytes`` (released at once)."""
        if wait is not None:
            return self._with_wait(wait, self.recv_bytes, timeout)  # type: ignore[no-any-return]
        self._copy_in_hold = True
        try:
            pos, start, length = self._take(timeout, False)
        finally:
            self._copy_in_hold = False
        data = self._copied
        if data is not None:
            self._copied = None
            return data
        data = self._mm[start : start + length]  # type: ignore[index]
        self._release_record(pos)
        return data

    def recv_many(
        self,
        max_records: int = 1024,
        timeout: float | None = None,
        max_bytes: int = 2 << 20,
        *,
        wait: str | WaitStrategy | None = None,
    ) -> list[bytes]:
        """Claim up to ``max_records`` records (one claim-lock hold), waiting only for the first."""
        if wait is not None:
            return self._with_wait(wait, self.recv_many, max_records, timeout, max_bytes)  # type: ignore[no-any-return]
        if max_records < 1:
            raise ValueError(f"max_records must be >= 1, got {max_records}")
        pos, start, length = self._take(timeout, False)
        mm = self._mm
        assert mm is not None
        out = [mm[start : start + length]]
        self._release_record(pos)
        infos = self._last_infos
        nbytes = length
        if max_records > 1 and nbytes < max_bytes:
            claims: list[_Claim] = []
            self._lock_claims()
            try:
                while len(claims) + 1 < max_records and nbytes < max_bytes:
                    try:
                        got = self._claim_next(False)
                    except EndOfStream:
                        break  # the next call raises it
                    if got is None:
                        break
                    claims.append(got)
                    nbytes += got[2]
                if claims:
                    self._count(len(claims), sum(c[2] for c in claims))
            finally:
                self._unlock_claims()
            for cpos, cstart, clength, seq, redelivered in claims:
                out.append(mm[cstart : cstart + clength])
                infos.append(RecordInfo(cpos, seq, redelivered))
            if claims:
                self._release_records([c[0] for c in claims])
                self._last_info = infos[-1]
        return out

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
        self._held_back = None
        self._claim_locked = False
        super()._after_fork_in_child()

    def close(self) -> None:
        """Leave; records this consumer claimed and did not release go to other consumers (flagged)."""
        if self._closed or not hasattr(self, "_region"):
            return
        if self._consumer_role and not self._region.closed:
            if self._outstanding:
                self._advance()
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
            self._held_back = None
        super().close()


register_mode(L.RING_QUEUE, _QueueRing)
