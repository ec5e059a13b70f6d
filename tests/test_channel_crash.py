"""Crash safety of Channel: SIGKILLed producers and consumers and the shared heap's blocks.

Real processes are SIGKILLed while they hold heap blocks in every state a crash can leave
behind: ALLOCATED (a producer inside ``reserve_array`` or ``send``), IN_FLIGHT (taken from the ring
but not held yet), HELD (a consumer keeping received arrays). Every message is self-validating
(``_channelchild``: its array's length and items are a function of producer and seq), so the
receiver checks each object byte for byte and in per-producer order. The assertions are on
outcomes: which objects arrive, intact, in which order; which exception is raised; and that the
dead process's heap space comes back (the whole arena is allocatable again, no block in use).
Timeouts are generous (a lock recovery takes ~0.5 s) and never asserted on.
"""

from __future__ import annotations

import gc
import multiprocessing
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import mmipc
from _channelchild import (
    MIXED,
    ONE_BLOCK,
    as_message,
    check_message,
    consume_and_report,
    die_after_in_flight,
    die_between_receive_and_hold,
    die_inside_reserve_array,
    expected,
    hold_received,
    pattern,
    pin_then_stream,
    produce,
    read_reports,
    read_reports_to_eof,
    retire_holding,
)
from _ringchild import kill_and_join
from mmipc._heap import block_size_for

pytestmark = [pytest.mark.crash, pytest.mark.timeout(60)]

WAIT = 10.0  # generous: recoveries take ~0.5 s at most
GRACE = 1.0  # where no lock recovery is involved: a reclaim happens in the first allocator walk
BLOCK = 128 << 10  # a heap block of ITEMS uint64 items occupies exactly this
ITEMS = (BLOCK - 64) // 8
assert block_size_for(ITEMS * 8) == BLOCK
RANDOM_METHODS = ["fork", "spawn"]  # the randomized tests (the deterministic ones: mp_context)


# -- helpers ------------------------------------------------------------------------------------


class Tally:
    """Checks received messages: intact, and consecutive seqs per producer (from 0, or from a given start)."""

    def __init__(self, lo: int, hi: int) -> None:
        self.lo, self.hi = lo, hi
        self.next: dict[int, int] = {}
        self.order: list[tuple[int, int]] = []

    def add(self, obj: Any) -> tuple[int, int]:
        producer, seq = check_message(as_message(obj), self.lo, self.hi)
        want = self.next.get(producer, 0)
        assert seq == want, f"producer {producer}: got seq {seq}, expected {want}"
        self.next[producer] = seq + 1
        self.order.append((producer, seq))
        return producer, seq

    def count(self, producer: int) -> int:
        return self.next.get(producer, 0)


def wait_until(condition: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.001)


class Reports:
    """Seqs a child reports through a pipe (``_channelchild.REPORT``)."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.seqs: list[int] = []

    def poll(self, timeout: float = 0.0) -> list[int]:
        self.seqs += read_reports(self.conn, timeout)
        return self.seqs

    def read_to_eof(self) -> list[int]:
        """Everything reported, once the child is dead (its end of the pipe is closed)."""
        self.seqs += read_reports_to_eof(self.conn)
        return self.seqs


def receive_some(chan: mmipc.Channel, tally: Tally, window: deque[Any], timeout: float = 0.002) -> bool:
    """Receive one message if one comes within ``timeout``; keep the last two (HELD blocks).

    When nothing comes the window is dropped, so a producer waiting for heap space never waits
    on the test process.
    """
    try:
        obj = chan.recv(timeout=timeout)
    except mmipc.WaitTimeout:
        window.clear()
        return False
    if isinstance(obj, tuple) and obj and obj[0] == "done":
        window.append(obj)
        return True
    tally.add(obj)
    window.append(obj)
    while len(window) > 2:
        window.popleft()
    return True


def drain(chan: mmipc.Channel, tally: Tally, window: deque[Any]) -> None:
    """Receive until nothing is ready (every producer is dead or done)."""
    while True:
        try:
            obj = chan.recv_nowait()
        except mmipc.WouldBlock:
            return
        tally.add(obj)
        window.append(obj)
        while len(window) > 2:
            window.popleft()


def assert_whole_heap_reclaimed(chan: mmipc.Channel) -> None:
    """Every byte of the heap is usable again: one buffer as large as the whole arena goes through.

    Call with no received object alive in the test process and no live peer holding any. Then
    asserts that, once that buffer was received and dropped, no block is in use.
    """
    gc.collect()
    items = (chan.heap_size - 64) // 8
    assert block_size_for(items * 8) == chan.heap_size
    chan.send((7, 0, pattern(7, 0, items)), timeout=WAIT)
    producer, seq, arr = chan.recv(timeout=WAIT)
    assert (producer, seq) == (7, 0) and np.array_equal(arr, pattern(7, 0, items))
    with pytest.raises(mmipc.WouldBlock):
        chan.recv_nowait()
    del arr
    gc.collect()
    stats = chan.stats()
    assert (stats.heap_blocks_in_use, stats.heap_blocks_held, stats.heap_blocks_in_flight) == (0, 0, 0)
    assert stats.heap_used_bytes == 0


def message(producer: int, seq: int, items: int = ITEMS) -> tuple[int, int, np.ndarray]:
    return (producer, seq, pattern(producer, seq, items))


# -- 1. a producer killed while it holds ALLOCATED blocks ----------------------------------------


@pytest.mark.parametrize("multi_writer", [False, True], ids=["single", "multi"])
def test_producer_killed_inside_reserve_array(make_channel: Any, mp_context: Any, multi_writer: bool) -> None:
    """A producer sent 3 arrays, then is SIGKILLed inside ``reserve_array`` with a half-filled block
    (with ``multi_writer`` it dies holding the writer lock).

    The heap holds exactly 8 blocks: 3 in flight, 1 ALLOCATED by the dead producer, 4 free. A new
    producer process sends 5 arrays, the last of which fits only if the dead block is reclaimed.
    Asserts: the consumer receives exactly the 3 + 5 messages, intact and in order, never the
    half-written array; exactly one block was reclaimed; the whole arena is usable again.
    """
    before, after = 3, 5
    chan = make_channel(256 << 10, heap_size=(before + after) * BLOCK, multi_writer=multi_writer)
    assert chan.heap_size == (before + after) * BLOCK
    held = mp_context.Event()
    victim = mp_context.Process(target=die_inside_reserve_array, args=(chan, 1, before, ITEMS, ITEMS, held))
    successor = mp_context.Process(target=produce, args=(chan, 2, after, ITEMS, ITEMS, 5, ONE_BLOCK))
    try:
        victim.start()
        assert held.wait(WAIT), "the victim never entered reserve_array"
        stats = chan.stats()
        assert (stats.objects_sent, stats.heap_blocks_in_flight, stats.heap_blocks_in_use) == (3, 3, 4)
        kill_and_join(victim)
        successor.start()
        successor.join(WAIT * 3)
        assert successor.exitcode == 0
    finally:
        kill_and_join(victim, successor)
    tally = Tally(ITEMS, ITEMS)
    got = [tally.add(chan.recv(timeout=WAIT)) for _ in range(before + after)]
    assert got == [(1, s) for s in range(before)] + [(2, s) for s in range(after)]
    with pytest.raises(mmipc.WouldBlock):
        chan.recv_nowait()
    assert chan.stats().heap_reclaimed == 1  # the dead producer's ALLOCATED block, once
    assert_whole_heap_reclaimed(chan)


@pytest.mark.parametrize("multi_writer", [False, True], ids=["single", "multi"])
def test_producer_killed_between_in_flight_and_publish(
    make_channel: Any, mp_context: Any, multi_writer: bool
) -> None:
    """A producer sent 2 arrays, then is SIGKILLed inside ``send`` of a two-array object right
    after its first block turned IN_FLIGHT (the second is ALLOCATED; the record is unpublished;
    with ``multi_writer`` it dies holding the writer lock).

    The heap holds exactly 6 blocks: 2 in flight, the dead producer's 2, 2 free. A new producer
    process sends 4 arrays, which needs both dead blocks back. Asserts: the consumer receives
    exactly the 2 + 4 messages, intact and in order, never the dead producer's object; exactly
    two blocks were reclaimed; the whole arena is usable again.
    """
    before, after = 2, 4
    chan = make_channel(256 << 10, heap_size=(before + after) * BLOCK, multi_writer=multi_writer)
    assert chan.heap_size == (before + after) * BLOCK
    held = mp_context.Event()
    victim = mp_context.Process(target=die_after_in_flight, args=(chan, 1, before, ITEMS, held))
    successor = mp_context.Process(target=produce, args=(chan, 2, after, ITEMS, ITEMS, 3, ONE_BLOCK))
    try:
        victim.start()
        assert held.wait(WAIT), "the victim never reached its IN_FLIGHT store"
        stats = chan.stats()
        assert (stats.objects_sent, stats.heap_blocks_in_flight, stats.heap_blocks_in_use) == (2, 3, 4)
        kill_and_join(victim)
        successor.start()
        successor.join(WAIT * 3)
        assert successor.exitcode == 0
    finally:
        kill_and_join(victim, successor)
    tally = Tally(ITEMS, ITEMS)
    got = [tally.add(chan.recv(timeout=WAIT)) for _ in range(before + after)]
    assert got == [(1, s) for s in range(before)] + [(2, s) for s in range(after)]
    with pytest.raises(mmipc.WouldBlock):
        chan.recv_nowait()
    assert chan.stats().heap_reclaimed == 2
    assert_whole_heap_reclaimed(chan)


@pytest.mark.parametrize("start_method", RANDOM_METHODS)
def test_dead_producers_in_flight_block_is_reclaimed_after_in_band_traffic(
    make_channel: Any, start_method: str
) -> None:
    """A producer is SIGKILLed right after the first of its two blocks (half the heap each) turned
    IN_FLIGHT; the consumer then receives only small, in-band objects (which pass the position
    the dead record would have had).

    Asserts: a send that needs the whole heap goes through within ``GRACE`` s (every block of
    the dead producer is reclaimable: its record was never published, the live consumer is past
    that position and cannot be about to hold the block), and arrives intact.
    (Regression: the done mark used to move only for records with out-of-band buffers.)
    """
    ctx = multiprocessing.get_context(start_method)
    chan = make_channel(256 << 10, heap_size=4 * BLOCK)
    held = ctx.Event()
    victim = ctx.Process(target=die_after_in_flight, args=(chan, 1, 0, (2 * BLOCK - 64) // 8, held))
    try:
        victim.start()
        assert held.wait(WAIT), "the victim never reached its IN_FLIGHT store"
        kill_and_join(victim)
    finally:
        kill_and_join(victim)
    for i in range(3):
        chan.send(("small", i), timeout=WAIT)
        assert chan.recv(timeout=WAIT) == ("small", i)
    items = (chan.heap_size - 64) // 8
    chan.send((7, 0, pattern(7, 0, items)), timeout=GRACE)
    producer, seq, arr = chan.recv(timeout=WAIT)
    assert (producer, seq) == (7, 0) and np.array_equal(arr, pattern(7, 0, items))
    del arr
    assert_whole_heap_reclaimed(chan)


@pytest.mark.parametrize("start_method", RANDOM_METHODS)
def test_retired_receiver_does_not_pin_a_dead_producers_blocks(make_channel: Any, start_method: str) -> None:
    """Consumer process A receives one array, keeps it and closes its handle (it stays alive);
    the test process takes over as consumer; a producer process is SIGKILLed right after its
    first block turned IN_FLIGHT; the test process then sends and receives an array (its own
    done mark passes the dead record's position).

    Asserts: a send needing every block except A's goes through within ``GRACE`` s (A can
    never take a record again, so it cannot be about to hold the dead producer's block).
    """
    ctx = multiprocessing.get_context(start_method)
    chan = make_channel(256 << 10, heap_size=8 * BLOCK, multi_writer=True)
    chan.send(message(1, 0), timeout=WAIT)
    retired, held = ctx.Event(), ctx.Event()
    retiree = ctx.Process(target=retire_holding, args=(chan, ITEMS, retired))
    victim = ctx.Process(target=die_after_in_flight, args=(chan, 2, 0, (2 * BLOCK - 64) // 8, held))
    try:
        retiree.start()
        assert retired.wait(WAIT), "the first consumer did not retire"
        victim.start()
        assert held.wait(WAIT), "the victim never reached its IN_FLIGHT store"
        kill_and_join(victim)
        chan.send(message(1, 1), timeout=WAIT)
        assert check_message(chan.recv(timeout=WAIT), ITEMS, ITEMS) == (1, 1)
        gc.collect()
        assert chan.stats().heap_blocks_held == 1  # A's
        items = (6 * BLOCK - 64) // 8
        chan.send((7, 0, pattern(7, 0, items)), timeout=GRACE)
        producer, seq, arr = chan.recv(timeout=WAIT)
        assert (producer, seq) == (7, 0) and np.array_equal(arr, pattern(7, 0, items))
        del arr
    finally:
        kill_and_join(victim, retiree)
    assert_whole_heap_reclaimed(chan)


@pytest.mark.timeout(90)
@pytest.mark.parametrize("start_method", RANDOM_METHODS)
def test_producers_killed_at_random_moments_while_sending_arrays(
    make_channel: Any,
    start_method: str,
) -> None:
    """Single-writer producers stream arrays (``send`` and two-step ``reserve_array``); each is
    SIGKILLed at a random moment (some after a random number of messages arrived).

    The heap (2 MiB) is small against the traffic (64..320 KiB arrays), so producers keep
    reusing space, and die while allocating, while copying, inside ``reserve_array`` or between
    their blocks' IN_FLIGHT stores and the publication. The test process consumes concurrently,
    holding the last two arrays. Asserts: every killed producer's messages arrive as an exact,
    intact prefix of its stream (never a half-written array); a new producer process then sends
    40 messages that all arrive; afterwards the whole arena is usable again.
    """
    ctx = multiprocessing.get_context(start_method)
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    lo, hi = 8_200, 40_000
    chan = make_channel(64 << 10, heap_size=2 << 20)
    tally = Tally(lo, hi)
    window: deque[Any] = deque()
    procs: list[Any] = []
    try:
        for round_ in range(4):
            producer = 10 + round_
            ready = ctx.Event()
            proc = ctx.Process(
                target=produce, args=(chan, producer, None, lo, hi, seed + round_, MIXED, ready)
            )
            procs.append(proc)
            proc.start()
            assert ready.wait(WAIT), f"producer {producer} did not start (seed {seed})"
            need = rng.randint(0, 12)
            kill_at = time.monotonic() + rng.uniform(0.0, 0.03)
            deadline = time.monotonic() + WAIT
            while tally.count(producer) < need or time.monotonic() < kill_at:
                assert time.monotonic() < deadline, f"producer {producer} made no progress (seed {seed})"
                receive_some(chan, tally, window)
            kill_and_join(proc)
            drain(chan, tally, window)
        final = ctx.Process(target=produce, args=(chan, 99, 40, lo, hi, seed, MIXED))
        procs.append(final)
        final.start()
        deadline = time.monotonic() + WAIT * 3
        while tally.count(99) < 40:
            assert time.monotonic() < deadline, f"the new producer made no progress (seed {seed})"
            receive_some(chan, tally, window, timeout=0.05)
        final.join(WAIT)
        assert final.exitcode == 0
    finally:
        kill_and_join(*procs)
    with pytest.raises(mmipc.WouldBlock):
        chan.recv_nowait()
    assert tally.count(99) == 40
    assert sum(tally.next.values()) == len(tally.order)
    window.clear()
    assert_whole_heap_reclaimed(chan)


# -- 2. many writers, one killed repeatedly -------------------------------------------------------


@pytest.mark.timeout(90)
@pytest.mark.parametrize("start_method", RANDOM_METHODS)
def test_multi_writer_survivors_arrive_intact_while_a_producer_is_killed_repeatedly(
    make_channel: Any,
    start_method: str,
) -> None:
    """Two producer processes stream until told to stop; a third is SIGKILLed at random, 4 times.

    Victims die holding the writer lock, heap blocks ALLOCATED or IN_FLIGHT, or in between.
    Asserts: each survivor's messages all arrive (as many as it announces in its final
    ``("done", producer, count)`` message), intact and in order, and both finish (no deadlock:
    the lock recovery hands the lock on); each victim's messages are an intact prefix of its
    stream; afterwards the whole arena is usable again.
    """
    ctx = multiprocessing.get_context(start_method)
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    lo, hi = 8_200, 30_000
    chan = make_channel(64 << 10, heap_size=2 << 20, multi_writer=True)
    tally = Tally(lo, hi)
    window: deque[Any] = deque()
    stop = ctx.Event()
    survivors = []
    for producer in (1, 2):
        ready = ctx.Event()
        proc = ctx.Process(
            target=produce, args=(chan, producer, None, lo, hi, seed + producer, MIXED, ready, stop)
        )
        survivors.append((proc, ready))
    procs: list[Any] = [proc for proc, _ in survivors]
    done: dict[int, int] = {}
    try:
        for proc, _ in survivors:
            proc.start()
        for _, ready in survivors:
            assert ready.wait(WAIT)
        for round_ in range(4):
            victim_id = 10 + round_
            ready = ctx.Event()
            victim = ctx.Process(
                target=produce, args=(chan, victim_id, None, lo, hi, seed + victim_id, MIXED, ready)
            )
            procs.append(victim)
            victim.start()
            assert ready.wait(WAIT)
            need = rng.randint(0, 6)
            kill_at = time.monotonic() + rng.uniform(0.0, 0.05)
            deadline = time.monotonic() + WAIT
            while tally.count(victim_id) < need or time.monotonic() < kill_at:
                assert time.monotonic() < deadline, f"victim {victim_id} made no progress (seed {seed})"
                receive_some(chan, tally, window)
            kill_and_join(victim)
        # the survivors were sending all along; they must still make progress after the kills
        progress = {p: tally.count(p) for p in (1, 2)}
        deadline = time.monotonic() + WAIT * 2
        while any(tally.count(p) < progress[p] + 5 for p in (1, 2)):
            assert time.monotonic() < deadline, f"a survivor is stuck: {tally.next} (seed {seed})"
            receive_some(chan, tally, window, timeout=0.05)
        stop.set()
        while len(done) < 2:
            assert time.monotonic() < deadline, f"a survivor did not finish: {tally.next} (seed {seed})"
            if receive_some(chan, tally, window, timeout=0.05) and window and window[-1][0] == "done":
                _, producer, count = window.pop()
                done[producer] = count
        for proc, _ in survivors:
            proc.join(WAIT)
            assert proc.exitcode == 0
        drain(chan, tally, window)
    finally:
        kill_and_join(*procs)
    assert done == {1: tally.count(1), 2: tally.count(2)}, f"seed {seed}"
    with pytest.raises(mmipc.WouldBlock):
        chan.recv_nowait()
    window.clear()
    assert_whole_heap_reclaimed(chan)


# -- 3. consumers killed while holding blocks or between receiving and holding ------------------


def test_consumer_killed_holding_arrays_its_blocks_are_reclaimed(
    make_channel: Any,
    mp_context: Any,
) -> None:
    """A consumer process receives and keeps 6 arrays that fill the heap, then is SIGKILLed.

    Asserts: while it lives the heap is full (``send_nowait`` -> WouldBlock, 6 held blocks);
    after the kill the producer sends 6 more arrays, which needs every dead HELD block back
    (exactly 6 reclaimed); a new consumer receives exactly those 6, intact, in order.
    """
    count = 6
    chan = make_channel(256 << 10, heap_size=count * BLOCK)
    assert chan.heap_size == count * BLOCK
    for seq in range(count):
        chan.send(message(1, seq), timeout=WAIT)
    reader, writer = mp_context.Pipe(duplex=False)
    consumer = mp_context.Process(target=hold_received, args=(chan, writer, count, ITEMS, ITEMS))
    try:
        consumer.start()
        writer.close()
        reports = Reports(reader)
        wait_until(lambda: len(reports.poll(0.01)) == count, "the consumer to hold every array")
        assert reports.seqs == list(range(count))
        stats = chan.stats()
        assert (stats.heap_blocks_held, stats.heap_bytes_held) == (count, count * ITEMS * 8)
        with pytest.raises(mmipc.WouldBlock):
            chan.send_nowait(message(1, count))
        kill_and_join(consumer)
        for seq in range(count, 2 * count):
            chan.send(message(1, seq), timeout=WAIT)
    finally:
        kill_and_join(consumer)
        reader.close()
    assert chan.stats().heap_reclaimed == count
    tally = Tally(ITEMS, ITEMS)
    tally.next[1] = count
    assert [tally.add(chan.recv(timeout=WAIT)) for _ in range(count)] == [
        (1, s) for s in range(count, 2 * count)
    ]
    with pytest.raises(mmipc.WouldBlock):
        chan.recv_nowait()
    assert_whole_heap_reclaimed(chan)


def test_consumer_killed_between_receiving_and_holding(make_channel: Any, mp_context: Any) -> None:
    """A consumer process takes message 0 from the ring and is stopped before its block turns
    HELD (the block IN_FLIGHT, the record released, the consumer's done mark behind it), with
    the heap full of messages 0..5.

    Asserts: while that consumer lives, its block stays reserved (``send_nowait`` ->
    WouldBlock: it may be about to hold it); once it is SIGKILLed, a send reclaims exactly that
    block; a new consumer receives messages 1..6 intact and in order (message 0 died with the
    consumer that took it), and nothing more.
    """
    count = 6
    chan = make_channel(256 << 10, heap_size=count * BLOCK)
    for seq in range(count):
        chan.send(message(1, seq), timeout=WAIT)
    held = mp_context.Event()
    consumer = mp_context.Process(target=die_between_receive_and_hold, args=(chan, held))
    try:
        consumer.start()
        assert held.wait(WAIT), "the consumer never took a message"
        stats = chan.stats()
        assert (stats.objects_received, stats.heap_blocks_in_flight, stats.heap_blocks_held) == (1, 6, 0)
        with pytest.raises(mmipc.WouldBlock):
            chan.send_nowait(message(1, count))
        kill_and_join(consumer)
        chan.send(message(1, count), timeout=WAIT)
    finally:
        kill_and_join(consumer)
    assert chan.stats().heap_reclaimed == 1
    tally = Tally(ITEMS, ITEMS)
    tally.next[1] = 1
    assert [tally.add(chan.recv(timeout=WAIT)) for _ in range(count)] == [(1, s) for s in range(1, count + 1)]
    with pytest.raises(mmipc.WouldBlock):
        chan.recv_nowait()
    assert_whole_heap_reclaimed(chan)


@pytest.mark.timeout(90)
@pytest.mark.parametrize("batch", [1, 4], ids=["recv", "recv_many"])
@pytest.mark.parametrize("start_method", RANDOM_METHODS)
def test_consumers_killed_at_random_moments_while_receiving(
    make_channel: Any, start_method: str, batch: int
) -> None:
    """A producer process streams 300 objects (one or two arrays of 64..192 KiB each) into a
    4 MiB heap; consumer processes, each keeping a random window of 0..3 received objects, are
    SIGKILLed one after another at random moments.

    Each consumer reports a seq after checking its message (``recv_many``: batches of up to 4
    records are taken from the ring before their objects are rebuilt and reported). A consumer
    killed before the ring released a record gets it re-delivered to the next one; killed
    after that and before holding the blocks, the object is lost (the ring already released
    it) and its IN_FLIGHT blocks are reclaimed; killed later, its HELD blocks are reclaimed.
    Asserts: each consumer's first message is the last reported one + 1 .. + 1 + ``batch``,
    then it receives consecutive, intact messages; the test process receives the rest the same
    way, up to the last message, and nothing more; the producer finishes (it never stays
    blocked on a dead consumer's blocks); the whole arena is usable again.
    """
    ctx = multiprocessing.get_context(start_method)
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    lo, hi, total = 8_200, 24_000, 300
    chan = make_channel(64 << 10, heap_size=4 << 20)
    producer = ctx.Process(target=produce, args=(chan, 1, total, lo, hi, seed, MIXED))
    procs = [producer]
    first_min, first_max = 0, 0
    try:
        producer.start()
        for round_ in range(4):
            if first_max + 40 >= total:
                break  # a runaway consumer got close to the end: the test process takes the rest
            reader, writer = ctx.Pipe(duplex=False)
            consumer = ctx.Process(
                target=consume_and_report, args=(chan, writer, lo, hi, seed + round_, batch)
            )
            procs.append(consumer)
            consumer.start()
            writer.close()
            reports = Reports(reader)
            target = first_max + rng.randint(3, 30)
            deadline = time.monotonic() + WAIT * 2
            while not any(s >= target for s in reports.poll(0.01)):
                assert time.monotonic() < deadline, f"round {round_}: consumer stalled (seed {seed})"
            time.sleep(rng.random() * 0.003)  # a random moment: not a synchronization
            kill_and_join(consumer)
            got = reports.read_to_eof()
            reader.close()
            assert first_min <= got[0] <= first_max, (
                f"round {round_}: first {got[0]} not in [{first_min}, {first_max}] (seed {seed})"
            )
            assert got == list(range(got[0], got[0] + len(got))), f"round {round_}: gap (seed {seed})"
            first_min, first_max = got[-1] + 1, got[-1] + 1 + batch
        # the test process is the last consumer: until the producer is done and nothing is left
        rest = []
        deadline = time.monotonic() + WAIT * 3
        while True:
            assert time.monotonic() < deadline, f"the producer is stuck after {rest[-1:]} (seed {seed})"
            exited = producer.exitcode is not None  # before the receive: then nothing can follow
            try:
                obj = chan.recv(timeout=0.05)
            except mmipc.WaitTimeout:
                if exited:
                    break
                continue
            rest.append(check_message(as_message(obj), lo, hi))
            del obj
        assert producer.exitcode == 0
    finally:
        kill_and_join(*procs)
    # (the last killed consumer may have taken the last messages: then nothing is left)
    first = rest[0][1] if rest else total
    assert first_min <= first <= first_max, f"seed {seed}: the rest starts at {first}"
    assert rest == [(1, s) for s in range(first, total)], f"seed {seed}"
    with pytest.raises(mmipc.WouldBlock):
        chan.recv_nowait()
    assert_whole_heap_reclaimed(chan)


# -- 4. the pinning rule across processes -------------------------------------------------------


@pytest.mark.parametrize("start_method", RANDOM_METHODS)
def test_held_arrays_stay_intact_while_the_producer_streams_ten_heaps(
    make_channel: Any,
    start_method: str,
) -> None:
    """A consumer process keeps 4 arrays of an 8-block heap while 80 more stream through (10
    times the heap), then keeps 4 more.

    Asserts: all 88 sends complete (each within its timeout); then the heap is truly full (8
    held blocks, every byte used) and a send raises ``HeapExhausted`` (a ``TimeoutError``) whose
    message names the 8 held blocks and the holding process, and ``send_nowait`` raises
    WouldBlock; the consumer finds every kept array byte-exact; after it exits (still holding
    them) the whole arena is usable again.
    """
    ctx = multiprocessing.get_context(start_method)
    pinned, streamed, more = 4, 80, 4
    chan = make_channel(256 << 10, heap_size=8 * BLOCK)
    assert chan.heap_size == 8 * BLOCK
    reader, writer = ctx.Pipe(duplex=False)
    go = ctx.Event()
    consumer = ctx.Process(target=pin_then_stream, args=(chan, writer, go, pinned, streamed, more, ITEMS))
    try:
        consumer.start()
        writer.close()
        reports = Reports(reader)
        for seq in range(pinned + streamed + more):
            chan.send(message(1, seq), timeout=WAIT)
        wait_until(lambda: reports.poll(0.01) == [1, 2], "the consumer to hold 8 arrays")
        stats = chan.stats()
        assert (stats.heap_blocks_held, stats.heap_used_bytes) == (8, 8 * BLOCK)
        with pytest.raises(mmipc.HeapExhausted) as info:
            chan.send(message(1, 88), timeout=0.3)
        assert isinstance(info.value, TimeoutError)
        text = str(info.value)
        assert f"8 held blocks / {8 * ITEMS * 8} bytes by process {consumer.pid} " in text, text
        with pytest.raises(mmipc.WouldBlock):
            chan.send_nowait(message(1, 88))
        go.set()
        wait_until(lambda: reports.poll(0.01) == [1, 2, 3], "the consumer to check its arrays")
        consumer.join(WAIT)
        assert consumer.exitcode == 0
    finally:
        kill_and_join(consumer)
        reader.close()
    assert chan.stats().heap_blocks_held == 8  # it exited holding them
    assert_whole_heap_reclaimed(chan)
    assert chan.stats().heap_reclaimed == 8


# -- 5. a producer blocked on a full heap; the holder is killed ----------------------------------


def test_producer_blocked_on_a_full_heap_completes_when_the_holder_is_killed(
    make_channel: Any,
    mp_context: Any,
) -> None:
    """The test process blocks in ``send`` (heap full of a consumer process's held arrays); the
    consumer is SIGKILLed while the send waits.

    Asserts: the send was really waiting for space (its allocator failed at least once and it
    is still running), then completes without error within its timeout once the holder is dead,
    and the message arrives intact at a new consumer.
    """
    count = 6
    chan = make_channel(256 << 10, heap_size=count * BLOCK)
    for seq in range(count):
        chan.send(message(1, seq), timeout=WAIT)
    reader, writer = mp_context.Pipe(duplex=False)
    consumer = mp_context.Process(target=hold_received, args=(chan, writer, count, ITEMS, ITEMS))
    heap = chan._heap
    assert heap is not None
    try_alloc = heap._try_alloc
    blocked = threading.Event()

    def spy(need: int, nbytes: int, owner: int) -> int:
        offset = try_alloc(need, nbytes, owner)
        if offset < 0:
            blocked.set()
        return offset

    outcome: list[Any] = []

    def send() -> None:
        try:
            chan.send(message(1, count), timeout=WAIT)
            outcome.append("sent")
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=send, daemon=True)
    try:
        consumer.start()
        writer.close()
        reports = Reports(reader)
        wait_until(lambda: len(reports.poll(0.01)) == count, "the consumer to hold every array")
        with pytest.raises(mmipc.WouldBlock):
            chan.send_nowait(message(1, count))
        heap._try_alloc = spy  # type: ignore[method-assign]
        thread.start()
        assert blocked.wait(WAIT), "the send never waited for heap space"
        assert thread.is_alive() and not outcome
        kill_and_join(consumer)
        thread.join(WAIT * 2)
        assert not thread.is_alive(), "the send is still blocked after the holder died"
    finally:
        kill_and_join(consumer)
        reader.close()
    assert outcome == ["sent"]
    producer, seq, arr = chan.recv(timeout=WAIT)
    assert (producer, seq) == (1, count) and np.array_equal(arr, expected(1, count, ITEMS, ITEMS))
    del arr
    assert_whole_heap_reclaimed(chan)
