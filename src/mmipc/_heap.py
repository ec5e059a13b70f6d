"""The shared-memory allocator of mmipc: variable-size blocks in a byte range of a region.

Layout (block header, states, control page) is specified in ``_layout`` (heap section). The
allocator is next-fit over an address-ordered list of blocks, coalescing free neighbours lazily
while it walks. Every mutation of the block list (:meth:`Heap.alloc`, :meth:`Heap.free`,
:meth:`Heap.reclaim`) must be serialized by the caller: the channel runs them under its ring's
writer lock (multi-writer: a semaphore with dead-owner recovery; single writer: an OFD role
lock), so a producer killed while allocating is recovered by the ring's lock recovery.

What other processes may do concurrently, and why it is safe:

* A receiver turns a block it was handed from IN_FLIGHT to HELD, and its garbage-collection
  callback turns HELD into RELEASED. Each is one aligned ``cast('Q')`` store of the state word
  (DESIGN.md 3.1). The callback takes no lock: it may run at any point, even while this thread
  is inside the allocator.
* The allocator never writes a block it does not own except to turn a *reclaimable* block back
  into FREE. Reclaimable: FREE, RELEASED, ALLOCATED by a dead participant, and IN_FLIGHT / HELD
  blocks that the owner's policy (``still_needed``) says nobody can reach any more.

Participants are the slots of the heap region's participant table (``_liveness``): an owner is
``(slot + 1) | generation << 16``; it is dead when its OFD lock is gone or the slot was reused.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from . import _layout as L
from ._errors import CorruptionError, HeapExhausted, RecordTooLarge, WouldBlock
from ._liveness import Participants
from ._region import Region

__all__ = ["BlockInfo", "Heap", "HeapStats"]

_HDR = L.BLOCK_HEADER_SIZE
_ALIGN = L.BLOCK_ALIGN
_FREE = L.BLOCK_FREE
_ALLOCATED = L.BLOCK_ALLOCATED
_IN_FLIGHT = L.BLOCK_IN_FLIGHT
_HELD = L.BLOCK_HELD
_RELEASED = L.BLOCK_RELEASED

# Waiting for space: re-scan after these many seconds (growing), never sleeping on a lost event.
_WAIT_FIRST = 0.0002
_WAIT_MAX = 0.005


def block_size_for(nbytes: int) -> int:
    """Bytes a block carrying ``nbytes`` of payload occupies."""
    return max(L.MIN_BLOCK, (nbytes + _HDR + _ALIGN - 1) & ~(_ALIGN - 1))


@dataclass(frozen=True)
class BlockInfo:
    """One block as seen by a (racy, read-only) walk."""

    offset: int
    size: int
    state: str
    owner_slot: int | None
    ticket: int
    nbytes: int


@dataclass(frozen=True)
class HeapStats:
    """A snapshot of a heap's blocks."""

    arena_size: int
    free_bytes: int
    used_bytes: int
    blocks_in_use: int
    held_blocks: int
    held_bytes: int
    in_flight_blocks: int
    released_blocks: int
    allocations: int
    reclaimed: int


class Heap:
    """The allocator over one region's arena, seen through one handle.

    ``still_needed(state, offset, ticket, ref)`` is the owner's policy for IN_FLIGHT and HELD
    blocks whose fate the heap cannot know (the channel: "the record that names it is still
    unreleased, or the live consumer may be about to hold it"); it is called under the caller's
    lock with the block's fields and its owner's liveness already taken into account.
    """

    def __init__(
        self,
        region: Region,
        participants: Participants,
        *,
        still_needed: Callable[[int, int, int, int, bool], bool] | None = None,
    ) -> None:
        self.region = region
        self.participants = participants
        words = region.words
        assert words is not None and region.buf is not None
        self._words = words
        self._control: int = L.HEADER.unpack_from(region.buf, 0)[6] // 8  # data_offset // 8
        c = self._control
        if words[c + L.H_MAGIC] != L.HEAP_MAGIC:
            raise CorruptionError(f"heap of {region.display_name!r}: bad heap magic")
        if words[c + L.H_VERSION] != L.HEAP_VERSION:
            raise CorruptionError(
                f"heap of {region.display_name!r} has version {words[c + L.H_VERSION]}; "
                f"this mmipc reads version {L.HEAP_VERSION}"
            )
        self.arena_start = c * 8 + int(words[c + L.H_ARENA_OFFSET])
        self.arena_size = int(words[c + L.H_ARENA_SIZE])
        self.arena_end = self.arena_start + self.arena_size
        if self.arena_end > region.size or self.arena_size % _ALIGN:
            raise CorruptionError(f"heap of {region.display_name!r}: arena overruns the region")
        self._still_needed = still_needed
        self._alive_cache: dict[int, bool] = {}

    # -- creation ---------------------------------------------------------------------------

    @staticmethod
    def region_size_for(arena_size: int) -> int:
        """Data-area bytes for a heap region whose arena holds ``arena_size`` bytes."""
        return L.HEAP_CONTROL_SIZE + L.align_up(max(arena_size, L.MIN_BLOCK), _ALIGN)

    @staticmethod
    def format(region: Region, *, copy_threshold: int = 0, serializer_id: int = 0) -> None:
        """Write the control page and one FREE block spanning the arena (creation only)."""
        buf, words = region.buf, region.words
        assert buf is not None and words is not None
        data_offset = L.HEADER.unpack_from(buf, 0)[6]
        data_size = L.HEADER.unpack_from(buf, 0)[7]
        c = data_offset // 8
        arena_size = (data_size - L.HEAP_CONTROL_SIZE) & ~(_ALIGN - 1)
        words[c + L.H_VERSION] = L.HEAP_VERSION
        words[c + L.H_ARENA_OFFSET] = L.HEAP_CONTROL_SIZE
        words[c + L.H_ARENA_SIZE] = arena_size
        words[c + L.H_NEXT_TICKET] = 1
        words[c + L.H_ROVER] = 0
        words[c + L.H_COPY_THRESHOLD] = copy_threshold
        words[c + L.H_SERIALIZER] = serializer_id
        start = (data_offset + L.HEAP_CONTROL_SIZE) // 8
        words[start + L.B_SIZE] = arena_size
        words[start + L.B_CHECK] = L.BLOCK_CHECK ^ 0
        words[start + L.B_STATE] = _FREE
        words[c + L.H_MAGIC] = L.HEAP_MAGIC  # last: the heap is formatted

    # -- control words ----------------------------------------------------------------------

    def control(self, index: int) -> int:
        return int(self._words[self._control + index])

    def set_control(self, index: int, value: int) -> None:
        self._words[self._control + index] = value

    # -- ownership --------------------------------------------------------------------------

    def owner_of(self, slot: int) -> int:
        """The owner value of this handle's participant ``slot``."""
        return (slot + 1) | self.participants.generation(slot) << 16

    def owner_alive(self, owner: int) -> bool:
        """Whether ``owner`` is a live participant (cached for the duration of one scan)."""
        cached = self._alive_cache.get(owner)
        if cached is not None:
            return cached
        slot = (owner & 0xFFFF) - 1
        participants = self.participants
        alive = (
            0 <= slot < participants.capacity
            and participants.get_field(slot, L.S_STATE) == (owner >> 16) << 8 | L.SLOT_ACTIVE
            and participants.alive(slot)
        )
        self._alive_cache[owner] = alive
        return alive

    # -- block access -----------------------------------------------------------------------

    def _index(self, offset: int) -> int:
        return offset // 8

    def check_block(self, offset: int, ticket: int, nbytes: int) -> int:
        """Validate a reference from a record; return the block's current state word."""
        rel = offset - self.arena_start
        if rel < 0 or offset + _HDR + nbytes > self.arena_end or rel % _ALIGN:
            raise CorruptionError(
                f"heap of {self.region.display_name!r}: record names block offset {offset} "
                f"({nbytes} bytes), outside the arena"
            )
        w = self._words
        i = offset // 8
        if w[i + L.B_CHECK] != L.BLOCK_CHECK ^ rel or w[i + L.B_SIZE] < _HDR + nbytes:
            raise CorruptionError(
                f"heap of {self.region.display_name!r}: block at offset {offset} has a bad header"
            )
        if w[i + L.B_TICKET] != ticket:
            raise CorruptionError(
                f"heap of {self.region.display_name!r}: block at offset {offset} carries ticket "
                f"{w[i + L.B_TICKET]}, the record expects {ticket} (it was reclaimed: its "
                "receiver or sender died)"
            )
        return int(w[i + L.B_STATE])

    def state_word(self, offset: int) -> int:
        return int(self._words[offset // 8 + L.B_STATE])

    def set_state(self, offset: int, state: int, owner: int = 0) -> None:
        """One store of the block's state word."""
        self._words[offset // 8 + L.B_STATE] = state | owner << 8

    def set_ref(self, offset: int, ref: int) -> None:
        self._words[offset // 8 + L.B_REF] = ref

    def ticket(self, offset: int) -> int:
        return int(self._words[offset // 8 + L.B_TICKET])

    # -- allocation (caller holds the writer lock) -----------------------------------------

    def alloc(self, nbytes: int, owner: int, *, timeout: float | None, nowait: bool = False) -> int:
        """Allocate a block for ``nbytes`` of payload owned by ``owner``; return its offset.

        The block is ALLOCATED; its payload starts at ``offset + 64`` (64-byte aligned). When
        the arena is full, reclaims and re-scans in short sleeps for up to ``timeout`` seconds,
        then raises :class:`HeapExhausted` naming what holds the space (:class:`WouldBlock` with
        ``nowait``). Raises :class:`RecordTooLarge` if the arena can never hold it.
        """
        need = block_size_for(nbytes)
        if need > self.arena_size:
            raise RecordTooLarge(
                f"buffer of {nbytes} bytes does not fit the heap of {self.region.display_name!r} "
                f"({self.arena_size} bytes); create it with heap_size >= {need}"
            )
        offset = self._try_alloc(need, nbytes, owner)
        if offset >= 0:
            return offset
        if nowait:
            raise WouldBlock(self._exhausted_message(nbytes, None))
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = _WAIT_FIRST
        while True:
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise HeapExhausted(self._exhausted_message(nbytes, timeout))
                time.sleep(min(delay, left))
            else:
                time.sleep(delay)
            delay = min(delay * 2, _WAIT_MAX)
            offset = self._try_alloc(need, nbytes, owner)
            if offset >= 0:
                return offset

    def _try_alloc(self, need: int, nbytes: int, owner: int) -> int:
        w = self._words
        c = self._control
        start, end = self.arena_start, self.arena_end
        rover = start + int(w[c + L.H_ROVER])
        if not start <= rover < end:
            rover = start
        # A walk may merge the rover's block into an earlier one, and a rover left inside a block
        # would make the next walk read a stale header as a block: until this walk stores a
        # fresh rover (on success), or if its process dies mid-walk, walks start at the arena.
        w[c + L.H_ROVER] = 0
        self._alive_cache.clear()
        self._begin_scan()
        # Two passes: from the rover to the end, then from the start (next-fit).
        for lo, hi in ((rover, end), (start, end)):
            offset: int = lo
            while offset < hi:
                i = offset // 8
                size = int(w[i + L.B_SIZE])
                if size < _HDR or size % _ALIGN or offset + size > end:
                    raise CorruptionError(
                        f"heap of {self.region.display_name!r}: block at offset {offset} has size {size}"
                    )
                if self._reclaimable(offset, owner):
                    # Coalesce the following reclaimable blocks into this one.
                    nxt = offset + size
                    while nxt < end and self._reclaimable(nxt, owner):
                        size += int(w[nxt // 8 + L.B_SIZE])
                        nxt = offset + size
                    w[i + L.B_SIZE] = size
                    if size >= need:
                        if size - need >= L.MIN_BLOCK:
                            j = (offset + need) // 8
                            w[j + L.B_SIZE] = size - need
                            w[j + L.B_CHECK] = L.BLOCK_CHECK ^ (offset + need - start)
                            w[j + L.B_TICKET] = 0
                            w[j + L.B_STATE] = _FREE
                            size = need
                            w[i + L.B_SIZE] = size
                        ticket = int(w[c + L.H_NEXT_TICKET])
                        w[c + L.H_NEXT_TICKET] = ticket + 1
                        w[i + L.B_CHECK] = L.BLOCK_CHECK ^ (offset - start)
                        w[i + L.B_TICKET] = ticket
                        w[i + L.B_REF] = 0
                        w[i + L.B_NBYTES] = nbytes
                        w[i + L.B_STATE] = _ALLOCATED | owner << 8
                        w[c + L.H_ALLOCATIONS] += 1
                        nxt = offset + size
                        w[c + L.H_ROVER] = (nxt if nxt < end else start) - start
                        return offset
                    if w[i + L.B_STATE] != _FREE:
                        w[i + L.B_STATE] = _FREE
                offset += size
            if lo == start:
                break
        return -1

    def _begin_scan(self) -> None:
        """Hook for owners that snapshot shared state once per scan (the channel reads head)."""

    def _reclaimable(self, offset: int, owner: int) -> bool:
        """Whether the block may be reused now; turns it FREE (counting) if it was not."""
        w = self._words
        i = offset // 8
        word = int(w[i + L.B_STATE])
        state = word & 0xFF
        if state == _FREE:
            return True
        if state == _RELEASED:
            w[i + L.B_STATE] = _FREE
            w[self._control + L.H_RELEASED] += 1
            return True
        block_owner = word >> 8
        if state == _ALLOCATED:
            if block_owner == owner or self.owner_alive(block_owner):
                return False
        elif state in (_IN_FLIGHT, _HELD):
            alive = self.owner_alive(block_owner)
            if state == _HELD and alive:
                return False
            if self._still_needed is not None and self._still_needed(
                state, offset, int(w[i + L.B_TICKET]), int(w[i + L.B_REF]), alive
            ):
                return False
            if int(w[i + L.B_STATE]) != word:
                return False  # a receiver moved it meanwhile (IN_FLIGHT -> HELD)
        else:
            raise CorruptionError(
                f"heap of {self.region.display_name!r}: block at offset {offset} has state {state}"
            )
        w[i + L.B_STATE] = _FREE
        w[self._control + L.H_RECLAIMED] += 1
        return True

    # -- used by the KV region (growth and non-blocking allocation) -----------------------

    def try_alloc(self, nbytes: int, owner: int) -> int:
        """One allocation attempt (caller holds the lock); the block offset, or -1 if no room."""
        need = block_size_for(nbytes)
        if need > self.arena_size:
            return -1
        return self._try_alloc(need, nbytes, owner)

    def refresh(self) -> None:
        """Re-read the mapping and the arena size (after the region was remapped or grown)."""
        words = self.region.words
        assert words is not None
        self._words = words
        self.arena_size = int(words[self._control + L.H_ARENA_SIZE])
        self.arena_end = self.arena_start + self.arena_size
        if self.arena_end > self.region.size or self.arena_size % _ALIGN:
            raise CorruptionError(f"heap of {self.region.display_name!r}: arena overruns the region")

    def extend(self, new_arena_size: int) -> None:
        """Grow the arena to ``new_arena_size`` (the mapping already covers it; caller locked).

        A FREE block is written over the new space first, then the arena size is published with
        one store, so a writer killed in between leaves the old arena intact (redo is idempotent).
        """
        self.refresh()
        old = self.arena_size
        if new_arena_size <= old:
            return
        if new_arena_size % _ALIGN or self.arena_start + new_arena_size > self.region.size:
            raise ValueError(f"cannot extend the heap of {self.region.display_name!r} to {new_arena_size}")
        w = self._words
        i = self.arena_end // 8
        w[i + L.B_SIZE] = new_arena_size - old
        w[i + L.B_CHECK] = L.BLOCK_CHECK ^ old
        w[i + L.B_TICKET] = 0
        w[i + L.B_STATE] = _FREE
        w[self._control + L.H_ARENA_SIZE] = new_arena_size
        self.refresh()

    def free(self, offset: int) -> None:
        """Return a block this handle allocated and never published (caller holds the lock)."""
        self._words[offset // 8 + L.B_STATE] = _FREE

    # -- inspection (any process, racy reads) ----------------------------------------------

    def blocks(self) -> Iterator[BlockInfo]:
        """Walk the arena (a snapshot that may be torn by a concurrent allocator)."""
        w = self._words
        offset, end = self.arena_start, self.arena_end
        while offset < end:
            i = offset // 8
            size = int(w[i + L.B_SIZE])
            if size < _HDR or size % _ALIGN or offset + size > end:
                return  # torn by a concurrent split: stop rather than misread
            word = int(w[i + L.B_STATE])
            owner = word >> 8
            yield BlockInfo(
                offset=offset,
                size=size,
                state=L.BLOCK_STATE_NAMES.get(word & 0xFF, str(word & 0xFF)),
                owner_slot=(owner & 0xFFFF) - 1 if owner else None,
                ticket=int(w[i + L.B_TICKET]),
                nbytes=int(w[i + L.B_NBYTES]),
            )
            offset += size

    def stats(self) -> HeapStats:
        free_bytes = used = in_use = held = held_bytes = in_flight = released = 0
        for block in self.blocks():
            if block.state == "free":
                free_bytes += block.size
                continue
            if block.state == "released":
                released += 1
                free_bytes += block.size
                continue
            in_use += 1
            used += block.size
            if block.state == "held":
                held += 1
                held_bytes += block.nbytes
            elif block.state == "in-flight":
                in_flight += 1
        return HeapStats(
            arena_size=self.arena_size,
            free_bytes=free_bytes,
            used_bytes=used,
            blocks_in_use=in_use,
            held_blocks=held,
            held_bytes=held_bytes,
            in_flight_blocks=in_flight,
            released_blocks=released,
            allocations=self.control(L.H_ALLOCATIONS),
            reclaimed=self.control(L.H_RECLAIMED),
        )

    def _exhausted_message(self, nbytes: int, timeout: float | None) -> str:
        by_owner: dict[tuple[str, int | None], list[int]] = {}
        for block in self.blocks():
            if block.state in ("free", "released"):
                continue
            entry = by_owner.setdefault((block.state, block.owner_slot), [0, 0])
            entry[0] += 1
            entry[1] += block.nbytes
        parts = []
        for (state, slot), (count, total) in sorted(by_owner.items(), key=lambda kv: -kv[1][1]):
            who = "no participant"
            if slot is not None:
                pid = (
                    self.participants.get_field(slot, L.S_PID)
                    if 0 <= slot < self.participants.capacity
                    else 0
                )
                who = f"process {pid} (slot {slot})"
            parts.append(f"{count} {state} blocks / {total} bytes by {who}")
        waited = f" after {timeout:.3g} s" if timeout is not None else ""
        return (
            f"heap of {self.region.display_name!r} ({self.arena_size} bytes) has no room for a "
            f"buffer of {nbytes} bytes{waited}: "
            + ("; ".join(parts) or "fragmented")
            + " (drop received objects, or create the channel with a larger heap_size)"
        )
