"""Work-queue rings (``mode="queue"``): each record goes to exactly one of many consumers.

Multi-process tests run under fork, spawn and forkserver (``mp_context``). Consumers report
every delivery and release through pipes (``_ringchild.queue_consume``); assertions are exact:
the union of deliveries is the sequence sent, and the only extra deliveries are flagged
redeliveries of records whose consumer was SIGKILLed.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from typing import Any

import pytest

import mmipc
from _ringchild import (
    Q_GOT,
    Q_GOT_AGAIN,
    Q_RELEASED,
    check_numbered,
    hold_claim_lock,
    hold_views,
    kill_and_join,
    numbered,
    produce_numbered,
    queue_consume,
    queue_take_killed,
    read_qmsgs,
)
from mmipc import _layout as L

pytestmark = pytest.mark.timeout(120)

WAIT = 10.0


def send_numbered(ring: mmipc.Ring, start: int, count: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    seq = start
    while seq < start + count:
        if rng.random() < 0.3:
            n = min(rng.randint(2, 9), start + count - seq)
            ring.send_many([numbered(s) for s in range(seq, seq + n)], timeout=WAIT)
            seq += n
        else:
            ring.send(numbered(seq), timeout=WAIT)
            seq += 1


class Collector:
    """Reads one consumer's report pipe in a thread (so a full pipe never blocks the consumer)."""

    def __init__(self, conn: Any) -> None:
        self.reports: list[tuple[bytes, int, int]] = []
        self._thread = threading.Thread(target=self._run, args=(conn,), daemon=True)
        self._thread.start()

    def _run(self, conn: Any) -> None:
        self.reports = read_qmsgs(conn)

    def join(self) -> list[tuple[bytes, int, int]]:
        self._thread.join(WAIT)
        assert not self._thread.is_alive(), "a report pipe stayed open"
        return self.reports


def start_consumer(
    mp_context: Any, ring: mmipc.Ring, how: str, seed: int, hold: int = 0
) -> tuple[Any, Collector]:
    r, w = mp_context.Pipe(duplex=False)
    proc = mp_context.Process(target=queue_consume, args=(ring, w, how, seed, hold))
    proc.start()
    w.close()
    return proc, Collector(r)


# -- exactly once without crashes ------------------------------------------------------------------


def test_each_record_goes_to_exactly_one_consumer(make_ring: Any, mp_context: Any) -> None:
    """Three consumer processes (recv_bytes, recv_many, views released out of order), 3000 records.

    The ring (4 KiB) wraps many times while consumers release views in random order. Asserts:
    the union of deliveries is exactly 0..2999, each once, none flagged redelivered, each
    record's ring sequence number equals its payload number, every delivery was released.
    """
    ring = make_ring(4096, mode="queue")
    consumers = [
        start_consumer(mp_context, ring, how, seed) for seed, how in enumerate(("bytes", "many", "window"))
    ]
    try:
        send_numbered(ring, 0, 3000, seed=5)
        ring.end_stream()
        for proc, _ in consumers:
            proc.join(WAIT * 3)
            assert proc.exitcode == 0
        reports = [collector.join() for _, collector in consumers]
    finally:
        kill_and_join(*(proc for proc, _ in consumers))
    got = [seq for rep in reports for kind, seq, _ in rep if kind in (Q_GOT, Q_GOT_AGAIN)]
    assert sorted(got) == list(range(3000))
    assert all(kind != Q_GOT_AGAIN for rep in reports for kind, _, _ in rep)
    assert all(seq == rseq for rep in reports for _, seq, rseq in rep)
    released = sorted(seq for rep in reports for kind, seq, _ in rep if kind == Q_RELEASED)
    assert released == list(range(3000))
    stats = ring.stats()
    assert (stats.mode, stats.records_read, stats.redelivered, stats.used_bytes) == ("queue", 3000, 0, 32)


def test_many_producers_many_consumers(make_ring: Any, mp_context: Any) -> None:
    """Two producer processes (multi_writer, send and send_many) and two consumer processes.

    Asserts: the union of deliveries is exactly the 2 x 1000 records sent, each once, unflagged.
    """
    ring = make_ring(1 << 13, mode="queue", multi_writer=True)
    consumers = [start_consumer(mp_context, ring, how, seed) for seed, how in enumerate(("view", "many"))]
    producers = [
        mp_context.Process(target=produce_numbered, args=(ring, start, 1000, False, 6)) for start in (0, 1000)
    ]
    try:
        for proc in producers:
            proc.start()
        for proc in producers:
            proc.join(WAIT * 3)
            assert proc.exitcode == 0
        ring.end_stream()
        for proc, _ in consumers:
            proc.join(WAIT * 3)
            assert proc.exitcode == 0
        reports = [collector.join() for _, collector in consumers]
    finally:
        kill_and_join(*producers, *(proc for proc, _ in consumers))
    got = [seq for rep in reports for kind, seq, _ in rep if kind in (Q_GOT, Q_GOT_AGAIN)]
    assert sorted(got) == list(range(2000))
    assert all(kind != Q_GOT_AGAIN for rep in reports for kind, _, _ in rep)


def test_out_of_order_release_reclaims_space_correctly(make_ring: Any) -> None:
    """Views released in any order: space is reclaimed up to the oldest unreleased record only.

    Asserts: with records 0..2 held, releasing 1 and 2 frees nothing (the ring stays full);
    releasing 0 frees all three at once; a pinned slice keeps its record (and only the space
    from it on) held after its block exits.
    """
    ring = make_ring(1024, mode="queue")
    n = 0
    while True:
        try:
            ring.send_nowait(numbered(n) + bytes(200 - len(numbered(n))))
            n += 1
        except mmipc.WouldBlock:
            break
    contexts = [ring.recv(timeout=WAIT) for _ in range(3)]
    views = [ctx.__enter__() for ctx in contexts]
    assert [int.from_bytes(v[:8], "little") for v in views] == [0, 1, 2]
    head0 = ring._words[L.W_HEAD]
    contexts[2].__exit__(None, None, None)
    contexts[1].__exit__(None, None, None)
    assert ring._words[L.W_HEAD] == head0
    with pytest.raises(mmipc.WouldBlock):
        ring.send_nowait(bytes(200))
    contexts[0].__exit__(None, None, None)
    assert ring._words[L.W_HEAD] == head0 + 3 * L.record_size(200)
    ring.send_nowait(bytes(200))
    with ring.recv(timeout=WAIT) as view:
        kept = view[:8]
    assert ring.stats().pinned_records == 1
    assert int.from_bytes(kept, "little") == 3
    head1 = ring._words[L.W_HEAD]
    assert len(ring.recv_bytes(timeout=WAIT)) == 200  # record 4, released at once
    assert ring._words[L.W_HEAD] == head1  # record 3 is still pinned
    del kept
    ring.send_nowait(bytes(200))
    ring.recv_bytes(timeout=WAIT)  # any receive call collects released views
    assert ring._words[L.W_HEAD] == head1 + 3 * L.record_size(200)
    assert ring.stats().pinned_records == 0


def test_two_consumer_handles_in_one_process(make_ring: Any) -> None:
    """Two handles (pickled copies) share the records; recv_into keeps a record that does not fit."""
    ring = make_ring(1 << 14, mode="queue")
    import pickle

    other = pickle.loads(pickle.dumps(ring))
    try:
        ring.send_many([numbered(s) for s in range(10)])
        a = ring.recv_bytes(timeout=WAIT)
        b = other.recv_bytes(timeout=WAIT)
        small = bytearray(4)
        with pytest.raises(ValueError, match="does not fit"):
            ring.recv_into(small)
        big = bytearray(200)
        length = ring.recv_into(big)
        assert (check_numbered(a), check_numbered(b), check_numbered(big[:length])) == (0, 1, 2)
        rest = other.recv_many(100)
        assert [check_numbered(r) for r in rest] == list(range(3, 10))
        assert [i.sequence for i in other.last_records] == list(range(3, 10))
    finally:
        other.close()


# -- crashes: at least once, flagged ---------------------------------------------------------------


@pytest.mark.crash
def test_killed_consumer_records_are_redelivered_flagged(make_ring: Any, mp_context: Any) -> None:
    """A consumer SIGKILLed while it holds three views: another consumer gets exactly those, flagged.

    Asserts: after the kill, this process receives records 0..2 first, each flagged redelivered
    and carrying its sequence number, then 3..9 unflagged; nothing else, nothing twice.
    """
    ring = make_ring(1 << 14, mode="queue")
    for s in range(10):  # one data record each (batch items are never held: they are copies)
        ring.send(numbered(s))
    proc, collector = start_consumer(mp_context, ring, "bytes", 0, hold=3)
    try:
        deadline = time.monotonic() + WAIT
        while ring._words[L.W_Q_CLAIM] < 3 * L.record_size(len(numbered(2))) and time.monotonic() < deadline:
            time.sleep(0.005)
        time.sleep(0.05)  # its reports are written right after each claim
        kill_and_join(proc)
    finally:
        kill_and_join(proc)
    held = collector.join()
    assert [(k, s) for k, s, _ in held] == [(Q_GOT, 0), (Q_GOT, 1), (Q_GOT, 2)]
    got = []
    for _ in range(10):
        data = ring.recv_bytes(timeout=WAIT)
        info = ring.last_record
        got.append((check_numbered(data), info.sequence, info.redelivered))
    assert got == [(s, s, s < 3) for s in range(10)]
    with pytest.raises(mmipc.WouldBlock):
        ring.recv_bytes_nowait()
    stats = ring.stats()
    assert stats.redelivered == 3 and stats.used_bytes == 0


@pytest.mark.crash
def test_consumers_killed_at_random_moments(make_ring: Any, mp_context: Any) -> None:
    """Consumers are SIGKILLed at random moments and replaced while 2500 records flow.

    Asserts: every record 0..2499 was delivered at least once; every record has at most one
    unflagged delivery and at most one release (a released record is never delivered again); all
    extra deliveries are flagged redelivered; ring sequence numbers match payloads; the ring is
    empty at the end.
    """
    ring = make_ring(4096, mode="queue")
    # Views of data records only: a batch item is copied and released when taken, so a consumer
    # killed before it reports one would look like a loss here (test_batch_items_* cover them).
    ring._pack_items = False
    rng = random.Random(7)
    hows = ["view", "window"]  # both report a delivery before they release it
    live = [start_consumer(mp_context, ring, hows[i % 2], i) for i in range(3)]
    done: list[Collector] = []
    kills = 0
    try:
        seq = 0
        while seq < 2500:
            n = rng.randint(100, 300)
            send_numbered(ring, seq, min(n, 2500 - seq), seed=seq)
            seq = min(seq + n, 2500)
            if seq < 2500:
                victim = live.pop(rng.randrange(len(live)))
                kill_and_join(victim[0])
                done.append(victim[1])
                kills += 1
                live.append(start_consumer(mp_context, ring, hows[kills % 2], 100 + kills))
        ring.end_stream()
        for proc, _ in live:
            proc.join(WAIT * 3)
            assert proc.exitcode == 0
    finally:
        kill_and_join(*(proc for proc, _ in live))
    reports = [c.join() for c in done] + [c.join() for _, c in live]
    deliveries = [(kind, seq) for rep in reports for kind, seq, _ in rep if kind in (Q_GOT, Q_GOT_AGAIN)]
    assert {seq for _, seq in deliveries} == set(range(2500))
    first = Counter(seq for kind, seq in deliveries if kind == Q_GOT)
    assert max(first.values()) == 1, "a record was delivered twice without the redelivered flag"
    releases = Counter(seq for rep in reports for kind, seq, _ in rep if kind == Q_RELEASED)
    assert max(releases.values()) == 1, "a released record was delivered again"
    assert all(seq == rseq for rep in reports for _, seq, rseq in rep)
    assert kills > 0 and ring.stats().used_bytes == 32  # only the end-of-stream record is left


def test_closed_consumer_returns_its_records(make_ring: Any) -> None:
    """A consumer that closes while holding views: another handle receives those, flagged."""
    ring = make_ring(1 << 14, mode="queue")
    ring._pack_items = False  # send_many writes one data record per item (as a queue Channel does)
    ring.send_many([numbered(s) for s in range(4)])
    import pickle

    leaver = pickle.loads(pickle.dumps(ring))
    contexts = [leaver.recv(timeout=WAIT) for _ in range(2)]
    for ctx in contexts:
        ctx.__enter__()
    leaver.close()
    got = [(check_numbered(ring.recv_bytes(timeout=WAIT)), ring.last_record.redelivered) for _ in range(4)]
    assert got == [(0, True), (1, True), (2, False), (3, False)]


def test_queue_misuse_and_end_of_stream(make_ring: Any) -> None:
    """Timeouts, nowait, EndOfStream on every call after the end, closed handles."""
    ring = make_ring(4096, mode="queue")
    with pytest.raises(mmipc.WouldBlock):
        ring.recv_bytes_nowait()
    with pytest.raises(mmipc.WaitTimeout):
        ring.recv_bytes(timeout=0.02)
    with pytest.raises(ValueError):
        ring.recv_many(0)
    ring.send(b"last")
    ring.end_stream()
    assert list(ring) == [b"last"]
    for _ in range(2):
        with pytest.raises(mmipc.EndOfStream):
            ring.recv_bytes()
    ring.close()
    with pytest.raises(mmipc.ClosedError):
        ring.recv_bytes()


@pytest.mark.crash
def test_consumer_killed_holding_the_claim_lock_wedges_nobody(make_ring: Any, mp_context: Any) -> None:
    """A consumer SIGKILLed while it holds the claim lock (an OFD lock: the kernel drops it).

    Asserts: while it lives, a timed receive raises WaitTimeout and ``recv_bytes_nowait``
    WouldBlock (nothing is claimed); after the kill, every record is received, in order, once.
    """
    ring = make_ring(1 << 14, mode="queue")
    ring.send_many([numbered(s) for s in range(5)])
    held = mp_context.Event()
    holder = mp_context.Process(target=hold_claim_lock, args=(ring, held))
    try:
        holder.start()
        assert held.wait(WAIT)
        with pytest.raises(mmipc.WaitTimeout, match="claim lock"):
            ring.recv_bytes(timeout=0.1)
        with pytest.raises(mmipc.WouldBlock):
            ring.recv_bytes_nowait()
        kill_and_join(holder)
        got = [check_numbered(ring.recv_bytes(timeout=WAIT)) for _ in range(5)]
    finally:
        kill_and_join(holder)
    assert got == list(range(5))
    assert ring.stats().redelivered == 0


# -- batch records (send_many): items taken through the item cursor --------------------------------


def test_batch_items_are_shared_and_released_when_taken(make_ring: Any) -> None:
    """Items of one batch record go to several consumers, in order; a view of an item is a copy.

    Asserts: two handles alternate over a 6-item batch record and get items 0..5 once each, with
    the batch record's position and their own sequence numbers; the record is released (the ring
    is empty) while a view of its last item is still held; nothing is ever redelivered.
    """
    ring = make_ring(1 << 14, mode="queue")
    import pickle

    other = pickle.loads(pickle.dumps(ring))
    try:
        ring.send_many([numbered(s) for s in range(6)])
        got = [check_numbered(ring.recv_bytes(timeout=WAIT))]
        got += [check_numbered(r) for r in other.recv_many(2, timeout=WAIT)]
        infos = [ring.last_record, *other.last_records]
        got += [check_numbered(r) for r in ring.recv_many(2, timeout=WAIT)]
        infos += ring.last_records
        with other.recv(timeout=WAIT) as view:
            got.append(check_numbered(view))
            infos.append(other.last_record)
            assert ring.stats().used_bytes == 0
        assert got == list(range(6))
        assert [(i.position, i.sequence, i.redelivered) for i in infos] == [(0, s, False) for s in range(6)]
        assert ring.stats().redelivered == 0 and ring.stats().records_read == 6
    finally:
        other.close()


def test_batch_item_too_large_for_recv_into_stays(make_ring: Any) -> None:
    """recv_into with a buffer smaller than the next batch item: ValueError, the item is not taken."""
    ring = make_ring(1 << 14, mode="queue")
    ring.send_many([b"a" * 10, b"b" * 100, b"c"])
    buf = bytearray(50)
    assert ring.recv_into(buf) == 10 and buf[:10] == b"a" * 10
    with pytest.raises(ValueError, match="record of 100 bytes does not fit a buffer of 50 bytes"):
        ring.recv_into(buf)
    assert ring.recv_many(10) == [b"b" * 100, b"c"]


@pytest.mark.crash
@pytest.mark.parametrize("second", [7, 2])
def test_batch_item_taker_killed_at_every_store(make_ring: Any, mp_context: Any, second: int) -> None:
    """A consumer taking items of batch records is SIGKILLed at each shared-word store in turn.

    Two batch records of 8 items. The child takes 3 items (reported), then ``second`` more: 7
    (the rest of the first record, which it finishes, and 2 of the second: a record's first
    partial take) or 2 (a later partial take of the first record, committed by one store). The
    second take is killed at its 1st, 2nd, ... store until one run makes it to the end. A take is delivered by its stores (the
    items are released as they are taken: ``recv_many`` returns copies), so a take killed midway
    has delivered what it stored and never returned it: those items are gone, like a record
    read from a pipe by a process killed before it used it. Asserts, for every kill point: what
    the child returned plus what this process then receives has no duplicate and nothing
    flagged; what is missing lies within the killed take's items 3..9 and is exactly a prefix of
    them (the take commits in order); a kill before the take's first commit loses nothing; the
    ring ends empty and consistent.
    """
    kill_at = 0
    completed = False
    losses: list[int] = []
    while not completed:
        kill_at += 1
        assert kill_at < 100, "the take never completed"
        ring = make_ring(1 << 14, mode="queue")
        ring.send_many([numbered(s) for s in range(8)])
        ring.send_many([numbered(s) for s in range(8, 16)])
        r, w = mp_context.Pipe(duplex=False)
        proc = mp_context.Process(target=queue_take_killed, args=(ring, w, 3, second, kill_at))
        try:
            proc.start()
            w.close()
            reported: list[int] = []
            try:
                while True:
                    msg = r.recv()
                    if isinstance(msg, int):
                        completed = True
                        break
                    reported += msg
            except EOFError:
                pass
            proc.join(WAIT)
        finally:
            kill_and_join(proc)
            r.close()
        if completed:
            assert proc.exitcode == 0 and reported == list(range(3 + second))
        else:
            assert proc.exitcode == -9 and reported == [0, 1, 2]
        rest = ring.recv_many(100, timeout=WAIT)
        infos = ring.last_records
        while True:
            try:
                rest += ring.recv_many(100, timeout=0.2)
            except mmipc.WaitTimeout:
                break
            infos += ring.last_records
        seen = reported + [check_numbered(x) for x in rest]
        assert len(seen) == len(set(seen)), kill_at  # nothing twice
        missing = sorted(set(range(16)) - set(seen))
        assert missing == list(range(3, 3 + len(missing))) and len(missing) <= second, (kill_at, missing)
        losses.append(len(missing))
        assert not any(i.redelivered for i in infos)
        with pytest.raises(mmipc.WouldBlock):
            ring.recv_bytes_nowait()
        assert ring.stats().used_bytes == 0
        ring.close()
    assert kill_at > 4  # the take made several stores, each one a kill point
    assert losses[0] == 0 and losses[-1] == 0  # killed before its first store; not killed


# -- recv_views: many zero-copy views per call --------------------------------------------------------


def test_recv_views_claims_records_until_their_views_are_gone(make_ring: Any) -> None:
    """``recv_views`` on a queue ring: views of claimed data records (zero-copy), released in
    any order once unreferenced, by the next receive call; batch items come as views of copies.

    Asserts: 6 data records arrive as 6 read-only views in one call; the ring stays full while
    they live (6 pinned); dropping views 4 and 1 frees no space (records are reclaimed in
    ring order, and 0 is still held); dropping view 0 too, the next call (which also takes the 3
    batch items sent meanwhile) releases them, and the space of 0 and 1 comes back; dropping the
    rest releases everything.
    """
    ring = make_ring(1 << 14, mode="queue")
    for s in range(6):
        ring.send(numbered(s))
    views = ring.recv_views(100, timeout=WAIT)
    assert [check_numbered(v) for v in views] == list(range(6))
    assert all(v.readonly for v in views)
    assert [i.sequence for i in ring.last_records] == list(range(6))
    full = ring.stats().used_bytes
    assert full == sum(L.record_size(len(numbered(s))) for s in range(6))
    assert ring.stats().pinned_records == 6
    del views[4], views[1]
    ring.send(numbered(6))
    assert check_numbered(ring.recv_bytes(timeout=WAIT)) == 6  # a call: releases 1 and 4
    assert ring.stats().used_bytes == full + L.record_size(len(numbered(6)))  # 0 holds the head
    del views[0]
    before = int(ring._words[L.W_TAIL])
    ring.send_many([numbered(s) for s in range(7, 10)])
    batch = int(ring._words[L.W_TAIL]) - before
    items = ring.recv_views(100, timeout=WAIT)
    assert [check_numbered(v) for v in items] == [7, 8, 9]
    assert all(type(v) is memoryview and v.readonly for v in items)  # batch items only: copies
    freed = L.record_size(len(numbered(0))) + L.record_size(len(numbered(1)))
    assert ring.stats().used_bytes == full + L.record_size(len(numbered(6))) + batch - freed
    assert ring.stats().pinned_records == 3
    del views, items
    with pytest.raises(mmipc.WouldBlock):
        ring.recv_bytes_nowait()
    assert ring.stats().used_bytes == 0


@pytest.mark.crash
def test_recv_views_of_a_killed_consumer_are_redelivered(make_ring: Any, mp_context: Any) -> None:
    """A consumer holding 3 views from ``recv_views`` is SIGKILLed: another consumer gets
    exactly those 3 again, flagged, and the other 5 unflagged (in whatever order its liveness
    check makes: redeliveries are claimed first once it has found the dead consumer)."""
    ring = make_ring(1 << 14, mode="queue")
    for s in range(8):
        ring.send(numbered(s))
    r, w = mp_context.Pipe(duplex=False)
    proc = mp_context.Process(target=hold_views, args=(ring, w, 3))
    try:
        proc.start()
        w.close()
        assert r.recv() == [0, 1, 2]
        kill_and_join(proc)
    finally:
        kill_and_join(proc)
        r.close()
    got = []
    for _ in range(8):
        data = ring.recv_bytes(timeout=WAIT)
        got.append((check_numbered(data), ring.last_record.redelivered))
    assert sorted(got) == [(s, s < 3) for s in range(8)]
    assert ring.stats().redelivered == 3 and ring.stats().used_bytes == 0


def test_release_views_frees_dropped_views_at_once(make_ring: Any) -> None:
    """``release_views`` releases the records of dropped views without a receive call (queue and
    single-consumer rings), and reports the records still pinned."""
    for mode in ("queue", "single"):
        ring = make_ring(1 << 14, mode=mode) if mode == "queue" else make_ring(1 << 14)
        for s in range(4):
            ring.send(numbered(s))
        views = ring.recv_views(4, timeout=WAIT)
        assert ring.release_views() == 4
        kept = views[3]
        del views
        assert ring.release_views() == 1
        assert ring._words[L.W_HEAD] == sum(L.record_size(len(numbered(s))) for s in range(3))
        del kept
        assert ring.release_views() == 0
        assert ring.stats().used_bytes == 0


def test_release_views_keeps_what_a_failed_release_could_not_release(make_ring: Any) -> None:
    """``release_views`` that cannot take the claim lock raises WaitTimeout and forgets nothing:
    the next call releases the dropped views' records (the ring empties, nothing redelivered)."""
    ring = make_ring(1 << 14, mode="queue")
    for s in range(2):
        ring.send(numbered(s))
    views = ring.recv_views(2, timeout=WAIT)
    del views
    real = ring._lock_claims

    def busy(timeout: float = 0.0) -> None:
        raise mmipc.WaitTimeout("claim lock busy (test)")

    ring._lock_claims = busy  # type: ignore[method-assign]
    with pytest.raises(mmipc.WaitTimeout):
        ring.release_views()
    ring._lock_claims = real  # type: ignore[method-assign]
    assert ring.release_views() == 0
    stats = ring.stats()
    assert (stats.used_bytes, stats.redelivered) == (0, 0)


def test_a_partial_batch_take_leaves_a_count_for_the_rest(make_ring: Any) -> None:
    """The group count of a batch record goes to whoever takes its first item; a take that
    leaves items behind posts one count (if none is there) so that a consumer blocked on the
    semaphore (``wait="block"``) wakes for the rest instead of sleeping out its 5 ms slice.

    Asserts: after ``send_many`` of 3 items the data semaphore holds 1 (the group's); taking
    one item leaves it at 1 (taken, then posted for the rest); taking the other two consumes
    that count and leaves it at 0.
    """
    ring = make_ring(1 << 14, mode="queue", wait="block")
    ring.send_many([numbered(s) for s in range(3)])
    sem = ring._sem_data
    assert sem.value == 1
    assert check_numbered(ring.recv_bytes(timeout=WAIT)) == 0
    assert sem.value == 1
    assert [check_numbered(r) for r in ring.recv_many(10, timeout=WAIT)] == [1, 2]
    assert sem.value == 0
