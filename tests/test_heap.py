"""The shared heap allocator: a random model test of its block list, and its error messages."""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator

import pytest

import mmipc
from mmipc import _layout as L
from mmipc._heap import Heap, block_size_for
from mmipc._liveness import Participants
from mmipc._region import Region

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def heap() -> Iterator[tuple[Heap, int]]:
    region = Region.create(L.KIND_HEAP, Heap.region_size_for(256 << 10))
    Heap.format(region)
    participants = Participants(region)
    with participants.attach_lock():
        slot = participants.claim(L.ROLE_ATTACHED, lambda slot: None)
    h = Heap(region, participants)
    try:
        yield h, h.owner_of(slot)
    finally:
        with participants.attach_lock():
            participants.release(slot)
        region.close()


def _check_tiling(h: Heap) -> list[tuple[int, int, str]]:
    """The block walk must cover the arena exactly; returns (offset, size, state) per block."""
    blocks = [(b.offset, b.size, b.state) for b in h.blocks()]
    assert blocks, "walk stopped at once"
    assert blocks[0][0] == h.arena_start
    for (off, size, _), (nxt, _, _) in itertools.pairwise(blocks):
        assert off + size == nxt
    assert blocks[-1][0] + blocks[-1][1] == h.arena_end
    return blocks


def test_random_alloc_release_never_overlaps(heap: tuple[Heap, int]) -> None:
    """Random allocations and releases, including failing allocations under pressure.

    Every live block keeps its fill pattern (no other allocation overlaps it) and the walk
    always tiles the arena. This is the scenario in which a rover left inside a merged block
    made the allocator hand out overlapping blocks.
    """
    h, owner = heap
    mm = h.region.mm
    assert mm is not None
    rng = random.Random(1234)
    live: dict[int, tuple[int, int]] = {}  # offset -> (nbytes, fill byte)
    failures = successes = 0
    for step in range(4000):
        if live and (rng.random() < 0.45 or len(live) > 40):
            offset = rng.choice(list(live))
            del live[offset]
            # Receivers release by one store of RELEASED; the allocator frees lazily.
            h.set_state(offset, L.BLOCK_RELEASED)
        else:
            nbytes = rng.choice([1, 100, 1000, 5000, 20_000, 60_000, 120_000])
            try:
                offset = h.alloc(nbytes, owner, timeout=0, nowait=True)
            except mmipc.WouldBlock:
                failures += 1
            else:
                successes += 1
                fill = step % 251 + 1
                mm[offset + L.BLOCK_HEADER_SIZE : offset + L.BLOCK_HEADER_SIZE + nbytes] = (
                    bytes([fill]) * nbytes
                )
                h.set_state(offset, L.BLOCK_HELD, owner)
                live[offset] = (nbytes, fill)
        if step % 50 == 0:
            blocks = _check_tiling(h)
            starts = {off for off, _, _ in blocks}
            assert set(live) <= starts
        for offset, (nbytes, fill) in live.items():
            start = offset + L.BLOCK_HEADER_SIZE
            assert mm[start] == fill and mm[start + nbytes - 1] == fill
    for offset, (nbytes, fill) in live.items():
        start = offset + L.BLOCK_HEADER_SIZE
        assert mm[start : start + nbytes] == bytes([fill]) * nbytes
    assert failures > 100 and successes > 1000  # the run did exercise a full heap


def test_released_blocks_coalesce_into_one(heap: tuple[Heap, int]) -> None:
    h, owner = heap
    offsets = []
    while True:
        try:
            offsets.append(h.alloc(10_000, owner, timeout=0, nowait=True))
        except mmipc.WouldBlock:
            break
    assert len(offsets) == h.arena_size // block_size_for(10_000)
    for offset in offsets:
        h.set_state(offset, L.BLOCK_RELEASED)
    whole = h.arena_size - L.BLOCK_HEADER_SIZE
    offset = h.alloc(whole, owner, timeout=0, nowait=True)
    assert offset == h.arena_start
    assert _check_tiling(h) == [(h.arena_start, h.arena_size, "allocated")]


def test_exhausted_message_names_holders(heap: tuple[Heap, int]) -> None:
    h, owner = heap
    held = h.alloc(200_000, owner, timeout=0)
    h.set_state(held, L.BLOCK_HELD, owner)
    with pytest.raises(mmipc.HeapExhausted, match=r"1 held blocks / 200000 bytes by process \d+ \(slot 0\)"):
        h.alloc(100_000, owner, timeout=0.01)
    with pytest.raises(mmipc.RecordTooLarge, match=r"heap_size >= "):
        h.alloc(h.arena_size, owner, timeout=0)


def test_bad_block_references_are_corruption(heap: tuple[Heap, int]) -> None:
    h, owner = heap
    offset = h.alloc(1000, owner, timeout=0)
    ticket = h.ticket(offset)
    assert h.check_block(offset, ticket, 1000) & 0xFF == L.BLOCK_ALLOCATED
    with pytest.raises(mmipc.CorruptionError, match="outside the arena"):
        h.check_block(h.arena_end, ticket, 10)
    with pytest.raises(mmipc.CorruptionError, match="bad header"):
        h.check_block(offset + 64, ticket, 10)
    with pytest.raises(mmipc.CorruptionError, match="ticket"):
        h.check_block(offset, ticket + 1, 1000)
