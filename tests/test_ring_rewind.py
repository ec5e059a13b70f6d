"""Rewinding: a producer whose readers have caught up goes back to offset 0 early
(``_ring.REWIND_AT``), so the ring's working set stays in the CPU caches. The rest of the lap
becomes a *jump* (padding with no header in the data area): nothing is overwritten, the ring
keeps its whole capacity, and every mode delivers exactly what was sent.

In-process tests check when the producer rewinds and when it does not, that a rewind keeps the
full capacity, and that a jump left unpublished by a dead writer is dropped; cross-process tests
pace the producer with acknowledgements (the readers stay close behind, so it rewinds at every
chance) and assert the exact streams, in every mode and start method.
"""

from __future__ import annotations

import itertools
import signal
from typing import Any

import pytest

import mmipc
from _ringchild import (
    big_numbered,
    check_big_numbered,
    consume_acked,
    kill_and_join,
    produce_acked,
    produce_rewind_killed,
)
from mmipc import _layout as L
from mmipc import _ring

pytestmark = pytest.mark.timeout(120)

WAIT = 30.0
CAP = 32 << 20  # more than 2 x REWIND_AT: rings this large rewind
SIZE = 512 << 10
RECORD = L.record_size(SIZE)


def tail(ring: mmipc.Ring) -> int:
    return int(ring._words[L.W_TAIL])


def test_constants_make_these_tests_meaningful() -> None:
    assert CAP > 2 * _ring.REWIND_AT and SIZE <= _ring.REWIND_LAG


@pytest.mark.parametrize("mode", ["single", "queue"])
def test_producer_rewinds_while_the_consumer_keeps_up(make_ring: Any, mode: str) -> None:
    """Send one record, receive it, 200 times (100 MiB through a 32 MiB ring).

    Asserts: every record is written below REWIND_AT + one record (the producer went back to
    offset 0 each time it passed REWIND_AT); positions advanced by whole laps (the padding), far
    beyond the bytes sent; every record arrives intact, in order; the ring ends empty.
    """
    ring = make_ring(CAP, mode=mode) if mode != "single" else make_ring(CAP)
    highest = 0
    for seq in range(200):
        before = tail(ring)
        ring.send(big_numbered(seq, SIZE))
        start = (tail(ring) - RECORD) % CAP
        highest = max(highest, start)
        assert tail(ring) - before in (RECORD, RECORD + (CAP - before % CAP))
        assert check_big_numbered(ring.recv_bytes(), SIZE) == seq
    assert highest < _ring.REWIND_AT
    assert tail(ring) >= 10 * CAP  # 12 laps of 16 records; 100 MiB alone fill 3
    assert ring.stats().used_bytes == 0


def test_no_rewind_while_the_consumer_lags(make_ring: Any) -> None:
    """The consumer stays 12 records (6 MiB, more than REWIND_LAG) behind: the producer does not
    rewind (nor wait for it), so the records fill the ring up to its end (positions == bytes
    sent, no padding)."""
    ring = make_ring(CAP)
    lag = 12
    for seq in range(lag):
        ring.send(big_numbered(seq, SIZE))
    for seq in range(lag, 60):  # 60 records of 512 KiB + 32 B: less than the 32 MiB ring
        ring.send(big_numbered(seq, SIZE))
        assert check_big_numbered(ring.recv_bytes(), SIZE) == seq - lag
    assert tail(ring) == 60 * RECORD
    assert [check_big_numbered(ring.recv_bytes(), SIZE) for _ in range(lag)] == list(range(60 - lag, 60))


def test_send_many_and_reserve_rewind_too(make_ring: Any) -> None:
    """``send_many`` and ``reserve`` take the same path: both rewind once past REWIND_AT."""
    ring = make_ring(CAP)
    seq = 0
    while tail(ring) % CAP < _ring.REWIND_AT:
        ring.send_many([big_numbered(seq, SIZE), big_numbered(seq + 1, SIZE)])
        assert [check_big_numbered(r, SIZE) for r in ring.recv_many(2)] == [seq, seq + 1]
        seq += 2
    ring.send_many([big_numbered(seq, SIZE), big_numbered(seq + 1, SIZE)])
    assert tail(ring) == CAP + 2 * RECORD  # padded to the end, then both at offset 0
    assert [check_big_numbered(r, SIZE) for r in ring.recv_many(2)] == [seq, seq + 1]
    seq += 2
    while tail(ring) % CAP < _ring.REWIND_AT:
        with ring.reserve(SIZE) as buf:
            buf[:] = big_numbered(seq, SIZE)
        assert check_big_numbered(ring.recv_bytes(), SIZE) == seq
        seq += 1
    with ring.reserve(SIZE) as buf:
        buf[:] = big_numbered(seq, SIZE)
    assert tail(ring) == 2 * CAP + RECORD
    assert check_big_numbered(ring.recv_bytes(), SIZE) == seq


def test_broadcast_without_subscribers_keeps_its_history(make_ring: Any) -> None:
    """With no subscriber a broadcast ring never rewinds: ``start="oldest"`` still finds the last
    ring-full of records (60 records of 512 KiB in a 32 MiB ring)."""
    ring = make_ring(CAP, mode="broadcast")
    for seq in range(60):
        ring.send(big_numbered(seq, SIZE))
    assert tail(ring) == 60 * RECORD
    sub = ring.subscribe(start="oldest")
    try:
        assert check_big_numbered(sub.recv_bytes(timeout=WAIT), SIZE) == 0
    finally:
        sub.close()


@pytest.mark.parametrize("mode", ["single", "broadcast", "queue"])
def test_rewinding_streams_are_exact_across_processes(make_ring: Any, mp_context: Any, mode: str) -> None:
    """A producer process sends 300 records of 512 KiB (150 MiB through 32 MiB), at most 4
    ahead of its consumers and waiting for them to catch up whenever it is past REWIND_AT, so
    it rewinds once per lap (16 records, then the 17th goes to offset 0): to one consumer
    process (views), to 2 broadcast subscriber processes (views), or to 2 queue consumer
    processes (copies).

    Asserts: the consumer / every subscriber received exactly 0..299 in order; the queue
    consumers' union is exactly 0..299, each once; the producer rewound on every lap (the tail
    is exactly 18 laps and 12 records on; the bytes alone fill under 5 laps).
    """
    count = 300
    ring = make_ring(CAP, mode=mode) if mode != "single" else make_ring(CAP)
    receivers = 1 if mode == "single" else 2
    how = {"single": "view", "broadcast": "subscribe", "queue": "bytes"}[mode]
    acks = mp_context.Semaphore(0)
    pipes, procs, events = [], [], []  # (events stay referenced until spawned children have them)
    try:
        for _ in range(receivers):
            r, w = mp_context.Pipe(duplex=False)
            ready = mp_context.Event()
            events.append(ready)
            proc = mp_context.Process(target=consume_acked, args=(ring, how, SIZE, acks, w, ready))
            proc.start()
            w.close()
            if how == "subscribe":
                assert ready.wait(WAIT)
            pipes.append(r)
            procs.append(proc)
        per_record = receivers if mode == "broadcast" else 1
        producer = mp_context.Process(target=produce_acked, args=(ring, count, SIZE, acks, per_record, 4))
        producer.start()
        procs.append(producer)
        results = [r.recv() if r.poll(WAIT * 3) else None for r in pipes]
        for proc in procs:
            proc.join(WAIT)
            assert proc.exitcode == 0
    finally:
        kill_and_join(*procs)
    if mode == "queue":
        assert sorted(seq for got in results for seq in got) == list(range(count))
    else:
        assert results == [list(range(count))] * receivers
    per_lap = -(-_ring.REWIND_AT // RECORD)  # 16: the 17th record of a lap rewinds
    laps, rest = divmod(count, per_lap)
    assert tail(ring) == laps * CAP + rest * RECORD + L.RECORD_HEADER_SIZE  # (+ the end record)


def test_a_rewind_keeps_the_whole_capacity(make_ring: Any) -> None:
    """After a rewind the ring still buffers a full capacity: the jump occupies no byte.

    Asserts: right after a rewind, 60 records (30 MiB of a 32 MiB ring) go in without waiting
    while nobody reads (send_nowait never raises WouldBlock), then all arrive in order.
    """
    ring = make_ring(CAP)
    seq = 0
    while tail(ring) < CAP:  # send/receive until the producer has rewound once
        ring.send(big_numbered(seq, SIZE))
        assert check_big_numbered(ring.recv_bytes(), SIZE) == seq
        seq += 1
    assert tail(ring) % CAP == RECORD  # the last record went to offset 0
    first = seq
    for _ in range(60):
        ring.send_nowait(big_numbered(seq, SIZE))
        seq += 1
    assert [check_big_numbered(ring.recv_bytes(), SIZE) for _ in range(60)] == list(range(first, seq))


@pytest.mark.parametrize("multi_writer", [False, True])
def test_a_jump_left_unpublished_by_a_dead_writer_is_dropped(make_ring: Any, multi_writer: bool) -> None:
    """A writer killed between recording a jump and publishing it leaves ``jump_from == tail``.

    The next writer (a multi-writer's next lock holder, or a new single-writer role holder)
    drops it: asserts the next record written at that position is received intact, not
    mistaken for the jump's padding.
    """
    ring = make_ring(CAP, multi_writer=multi_writer)
    for seq in range(3):
        ring.send(big_numbered(seq, SIZE))
        assert check_big_numbered(ring.recv_bytes(), SIZE) == seq
    words = ring._words
    words[L.W_JUMP_TO] = CAP  # what a writer dying right after its jump_from store leaves
    words[L.W_JUMP_FROM] = tail(ring)
    writer = ring
    if not multi_writer:
        import pickle

        ring._region.unlock(L.LOCK_ROLE_WRITER)  # as if the writer had died: a new one takes over
        ring._writer_role = False
        writer = pickle.loads(pickle.dumps(ring))
    try:
        writer.send(big_numbered(3, SIZE))
        assert words[L.W_JUMP_FROM] == 0
        assert check_big_numbered(ring.recv_bytes(timeout=WAIT), SIZE) == 3
    finally:
        if writer is not ring:
            writer.close()


def test_a_subscriber_waiting_at_a_jump_is_not_behind(make_ring: Any) -> None:
    """A subscriber that read everything sits at the jump while two producers fill most of the
    next lap: it holds nothing back, so even a short ``untether_after`` never cuts it loose
    (the second producer, which did not make the jump, recomputes the limit from the cursors).

    Asserts: a rewind and 40 more records (20 MiB, more than the jump's start offset) go in with
    pauses longer than ``untether_after``; the subscriber then receives all 41, in order,
    without :class:`mmipc.Lapped`.
    """
    ring = make_ring(CAP, mode="broadcast", untether_after=0.01, multi_writer=True)
    sub = ring.subscribe()
    import pickle

    other = pickle.loads(pickle.dumps(ring))  # a second producer: it knows nothing of the jump
    try:
        seq = 0
        while tail(ring) % CAP < _ring.REWIND_AT:
            ring.send(big_numbered(seq, SIZE))
            assert check_big_numbered(sub.recv_bytes(timeout=WAIT), SIZE) == seq
            seq += 1
        first = seq
        import time

        for i in range(41):  # the first one rewinds: the subscriber stays at the jump
            (ring if i % 2 == 0 else other).send(big_numbered(seq, SIZE), timeout=WAIT)
            seq += 1
            time.sleep(0.015)
        assert tail(ring) == CAP + 41 * RECORD
        assert sub.stats().state == "tethered"  # never found behind, not even "untethering"
        got = [check_big_numbered(sub.recv_bytes(timeout=WAIT), SIZE) for _ in range(seq - first)]
        assert got == list(range(first, seq))
        assert ring.stats().lapped == 0
    finally:
        sub.close()
        other.close()


KILL_UNIT = 1 << 20  # the records of the killed producers (at most REWIND_LAG: they rewind)
KILL_RECOVER = 5 << 20  # each producer's first record: more than REWIND_LAG, it never rewinds


@pytest.mark.parametrize("multi_writer", [False, True])
def test_producer_killed_at_every_store_of_a_rewind(
    make_ring: Any, mp_context: Any, multi_writer: bool
) -> None:
    """A producer process is SIGKILLed at its 1st, 2nd, ... shared-word store of a rewinding
    ``send`` (one process per kill point, until one completes); the test process consumes.

    Each producer first sends one record of 5 MiB (more than REWIND_LAG, so it never rewinds:
    it lands exactly where a killed predecessor may have recorded a jump it did not publish),
    then 1 MiB records until the tail's offset reaches REWIND_AT; the consumer receives and
    releases them all; then the producer's next ``send`` rewinds, counted and killed. The next
    producer takes over the writer role (the kernel dropped the dead one's) or recovers the
    writer lock (multi_writer).

    Asserts: the consumer receives exactly the records sent, intact and in order; only the
    record of a killed send may be missing, and only if that send was killed before it
    published it; after each kill the ring is empty (``stats().used_bytes == 0``); one kill
    point left an unpublished jump (``jump_from == tail``) and the next producer's record there
    still arrived; the run that was not killed rewound; afterwards the ring keeps working
    (sends, receives, rewinds, exact ``used_bytes``).
    """
    ring = make_ring(CAP, multi_writer=multi_writer)
    unit_record = L.record_size(KILL_UNIT)
    words = ring._words
    seq = 0
    kill_at = 1
    unpublished_jumps = 0
    missing = []  # seqs of killed sends that never published their record
    while True:
        assert kill_at < 40, "the rewinding send was killed at 40 stores and still not done"
        parent, child = mp_context.Pipe()
        proc = mp_context.Process(
            target=produce_rewind_killed, args=(ring, child, seq, kill_at, KILL_UNIT, KILL_RECOVER)
        )
        proc.start()
        child.close()
        try:
            assert parent.poll(WAIT), "the producer did not get ready"
            rewinding = parent.recv()
            for expected in range(seq, rewinding):  # published already: no long wait
                size = KILL_RECOVER if expected == seq else KILL_UNIT
                assert check_big_numbered(ring.recv_bytes(timeout=5.0), size) == expected
            assert ring.stats().used_bytes == 0
            start = tail(ring)
            assert start % CAP >= _ring.REWIND_AT
            parent.send("go")
            assert parent.poll(WAIT), "the rewinding send did not finish"
            try:
                stores = parent.recv()
            except EOFError:
                stores = None  # killed
            proc.join(WAIT)
        finally:
            kill_and_join(proc)
            parent.close()
        if stores is None:
            assert proc.exitcode == -signal.SIGKILL
            if words[L.W_JUMP_FROM] == tail(ring) == start:
                unpublished_jumps += 1
        else:
            assert proc.exitcode == 0
            assert stores == kill_at - 1
        drained = []
        while True:
            try:
                drained.append(check_big_numbered(ring.recv_bytes_nowait(), KILL_UNIT))
            except mmipc.WouldBlock:
                break
        if stores is not None:
            assert drained == [rewinding]
            assert tail(ring) == start + (CAP - start % CAP) + unit_record  # it rewound
            break
        assert drained in ([], [rewinding])
        if not drained:
            missing.append(rewinding)
        assert ring.stats().used_bytes == 0
        seq = rewinding + 1
        kill_at += 1
    assert unpublished_jumps == 1
    assert kill_at >= (10 if multi_writer else 6)
    assert missing  # kills before the publishing store lose the record, and only it
    if multi_writer:
        assert len(missing) < kill_at - 1  # kills in _writer_exit come after the publish
    # The ring keeps working: this process sends and receives 24 more records (it rewinds).
    before = tail(ring)
    for _ in range(3):
        ring.send(big_numbered(seq, KILL_UNIT), timeout=WAIT)
        seq += 1
    assert ring.stats().used_bytes == tail(ring) - before
    for expected in range(seq - 3, seq):
        assert check_big_numbered(ring.recv_bytes(timeout=WAIT), KILL_UNIT) == expected
    assert ring.stats().used_bytes == 0
    for _ in range(21):
        ring.send(big_numbered(seq, KILL_UNIT), timeout=WAIT)
        assert check_big_numbered(ring.recv_bytes(timeout=WAIT), KILL_UNIT) == seq
        seq += 1
    assert tail(ring) - before > 24 * unit_record  # it rewound (a jump's positions)
    assert ring.stats().used_bytes == 0


# -- review findings (demonstrations of open bugs) ---------------------------------------------
#
# A producer can rewind between a reader's load of the tail and its look at ``jump_from`` (it
# rewinds exactly when every reader sits at its position, i.e. idle readers). ``past_jump`` takes
# the caller's tail, so a jump published after it does not count and ``tail - past_jump(...)``
# never goes negative. The tests below land the producer's rewind right there, deterministically
# (a stand-in for the reader's ``_words`` runs the producer's ``send`` at the reader's first
# load of ``jump_from``); they raised CorruptionError (or a negative size) when ``past_jump``
# compared with the current tail instead.


class _RewindAtFirstLoad:
    """Stands in for a reader's ``_words``: runs ``action`` just before the first load of ``index``."""

    def __init__(self, words: Any, index: int, action: Any) -> None:
        self._words = words
        self._index = index
        self._action = action

    def __getitem__(self, index: Any) -> Any:
        if index == self._index and self._action is not None:
            action, self._action = self._action, None
            action()
        return self._words[index]

    def __setitem__(self, index: Any, value: Any) -> None:
        self._words[index] = value

    def __len__(self) -> int:
        return len(self._words)


def _to_rewind_point(producer: mmipc.Ring, consumer: Any) -> int:
    """Send and receive until the producer's next send rewinds; return that send's seq."""
    seq = 0
    while tail(producer) % CAP < _ring.REWIND_AT:
        producer.send(big_numbered(seq, SIZE))
        assert check_big_numbered(consumer.recv_bytes(timeout=WAIT), SIZE) == seq
        seq += 1
    return seq


def test_queue_claim_racing_a_rewind_is_not_corruption(make_ring: Any) -> None:
    """An idle queue consumer's claim (claim == tail == head) loads claim and tail; the producer
    rewinds before ``_claim`` looks at the jump. Asserts: the consumer receives the record (no
    CorruptionError from ``tail - past_jump(claim)`` going negative)."""
    import pickle

    ring = make_ring(CAP, mode="queue")
    producer = pickle.loads(pickle.dumps(ring))
    try:
        seq = _to_rewind_point(producer, ring)
        words = ring._words
        ring._words = _RewindAtFirstLoad(words, L.W_JUMP_FROM, lambda: producer.send(big_numbered(seq, SIZE)))
        try:
            got = ring.recv_bytes(timeout=WAIT)
        finally:
            ring._words = words
        assert check_big_numbered(got, SIZE) == seq
    finally:
        producer.close()


def test_new_consumer_racing_a_rewind_is_not_corruption(make_ring: Any) -> None:
    """A consumer taking over (``_claim_consumer``) loads head == tail, then the producer rewinds.
    Asserts: it receives the record (``_check_positions(head, tail)`` does not map head past a
    jump published after its tail)."""
    import pickle

    ring = make_ring(CAP)
    first = pickle.loads(pickle.dumps(ring))
    seq = _to_rewind_point(ring, first)
    first.close()  # frees the consumer role
    consumer = pickle.loads(pickle.dumps(ring))
    try:
        words = consumer._words
        consumer._words = _RewindAtFirstLoad(words, L.W_JUMP_FROM, lambda: ring.send(big_numbered(seq, SIZE)))
        try:
            got = consumer.recv_bytes(timeout=WAIT)
        finally:
            consumer._words = words
        assert check_big_numbered(got, SIZE) == seq
    finally:
        consumer.close()


def test_stats_racing_a_rewind_are_not_negative(make_ring: Any) -> None:
    """``stats()`` while the producer publishes a jump. Asserts: ``used_bytes`` is 0 or the
    record's size, never ``-(capacity - offset)``."""
    import pickle

    ring = make_ring(CAP)
    observer = pickle.loads(pickle.dumps(ring))
    try:
        seq = _to_rewind_point(ring, ring)
        words = observer._words
        observer._words = _RewindAtFirstLoad(words, L.W_JUMP_FROM, lambda: ring.send(big_numbered(seq, SIZE)))
        try:
            used = observer.stats().used_bytes
        finally:
            observer._words = words
        assert 0 <= used <= RECORD, f"used_bytes {used}"
    finally:
        observer.close()


def test_failed_rewind_checks_back_off(make_ring: Any) -> None:
    """A consumer that stays more than REWIND_LAG behind: the producer's checks past REWIND_AT
    come REWIND_RECHECK, then 2x, 4x, ... bytes apart (a few per lap, each a scan that failed),
    and back to REWIND_RECHECK once a rewind succeeds.

    Asserts: with the consumer 12 records (6 MiB) behind, the producer checked at most 5 times
    while writing from 8 MiB to 30 MiB (one check per 512 KiB record without the back-off:
    44); after the consumer catches up, the next lap rewinds at its first check.
    """
    ring = make_ring(CAP)
    checks = []
    real = ring._readers_low

    def counting(pos: int) -> int:
        checks.append(pos)
        return real(pos)

    ring._readers_low = counting  # type: ignore[method-assign]
    lag = 12
    for seq in range(lag):
        ring.send(big_numbered(seq, SIZE))
    for seq in range(lag, 60):
        ring.send(big_numbered(seq, SIZE))
        assert check_big_numbered(ring.recv_bytes(), SIZE) == seq - lag
    assert 1 <= len(checks) <= 5, checks
    gaps = [b - a for a, b in itertools.pairwise(checks)]
    for i, gap in enumerate(gaps):  # the first record boundary at or after each step
        assert _ring.REWIND_RECHECK << i <= gap < (_ring.REWIND_RECHECK << i) + RECORD, gaps
    for seq in range(60 - lag, 60):
        assert check_big_numbered(ring.recv_bytes(), SIZE) == seq
    checks.clear()
    seq = 60
    while tail(ring) < 2 * CAP:  # the natural wrap, then a lap in which the consumer keeps up
        ring.send(big_numbered(seq, SIZE))
        assert check_big_numbered(ring.recv_bytes(), SIZE) == seq
        seq += 1
    assert len(checks) == 1 and ring._rewind_step == _ring.REWIND_RECHECK
