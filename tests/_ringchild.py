"""Self-validating record streams and child-process bodies for the Ring crash and stress tests.

Module level so that ``spawn`` and ``forkserver`` children can import them.

Every record is a pure function of ``(producer, seq)`` and the ring's ``max_size``: its length
(0 bytes up to ``max_size``) and its bytes. Records of :data:`HEADER_SIZE` bytes or more start
with ``producer, seq, length, crc32(body)``; only producer 0 ever sends shorter records (0..15
bytes), so every record can still be attributed: a short record must be producer 0's next one.
:class:`StreamChecker` recomputes each expected record and compares it byte for byte, which
catches corruption, loss, duplication and reordering within a producer.
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import struct
import time
import zlib
from typing import Any

import mmipc

HEADER = struct.Struct("<IIII")  # producer, seq, total length, crc32 of the body
HEADER_SIZE = HEADER.size
SEND_TIMEOUT = 30.0  # children never wait forever, even if the test process died


def record_length(producer: int, seq: int, max_size: int) -> int:
    """The length of record ``seq`` of ``producer``: small, medium or near ``max_size``."""
    digest = hashlib.blake2b(f"len/{producer}/{seq}".encode(), digest_size=8).digest()
    kind = digest[0]
    x = int.from_bytes(digest[1:8], "little")
    if kind < 16:
        length = 0
    elif kind < 90:
        length = x % 65  # 0..64: many tiny records, several per 32-byte slot boundary
    elif kind < 190:
        length = x % (max_size // 8 + 1)
    else:
        length = max_size - x % (max_size // 4 + 1)  # near max_record: wraps and padding
    if producer != 0:
        length = max(length, HEADER_SIZE)
    return min(length, max_size)


def make_record(producer: int, seq: int, max_size: int) -> bytes:
    """The bytes of record ``seq`` of ``producer`` (deterministic)."""
    length = record_length(producer, seq, max_size)
    rng = random.Random(producer * 1_000_003 + seq)
    if length < HEADER_SIZE:
        return rng.randbytes(length)
    body = rng.randbytes(length - HEADER_SIZE)
    return HEADER.pack(producer, seq, length, zlib.crc32(body)) + body


class StreamChecker:
    """Checks records from many producers: exact bytes, per-producer order, no loss, no dups."""

    def __init__(self, max_size: int) -> None:
        self.max_size = max_size
        self.next_seq: dict[int, int] = {}
        self.total = 0

    def add(self, data: Any) -> tuple[int, int]:
        """Check one received record; return its (producer, seq)."""
        data = bytes(data)
        if len(data) < HEADER_SIZE:
            producer = 0
            seq = self.next_seq.get(0, 0)
        else:
            producer, seq, length, crc = HEADER.unpack_from(data)
            assert length == len(data), f"record of {len(data)} bytes says length {length}"
            assert crc == zlib.crc32(data[HEADER_SIZE:]), f"checksum mismatch in record {producer}/{seq}"
        expected_seq = self.next_seq.get(producer, 0)
        assert seq == expected_seq, (
            f"producer {producer}: got seq {seq}, expected {expected_seq} "
            f"({'duplicate' if seq < expected_seq else 'gap'})"
        )
        expected = make_record(producer, seq, self.max_size)
        assert data == expected, (
            f"record {producer}/{seq}: {len(data)} bytes differ from the expected {len(expected)}"
        )
        self.next_seq[producer] = seq + 1
        self.total += 1
        return producer, seq

    def count(self, producer: int) -> int:
        return self.next_seq.get(producer, 0)


# -- producers --------------------------------------------------------------------------------


def _send_mixed(
    ring: mmipc.Ring, producer: int, seq: int, count: int | None, rng: random.Random, max_size: int
) -> int:
    """Send one step (one record or a batch) with a randomly chosen API; return the next seq."""
    how = rng.random()
    if how < 0.35:
        record = make_record(producer, seq, max_size)
        with ring.reserve(len(record), timeout=SEND_TIMEOUT) as buf:
            half = len(record) // 2
            buf[:half] = record[:half]  # written in two steps: a kill may land in between
            buf[half:] = record[half:]
        return seq + 1
    if how < 0.7:
        batch = rng.randint(1, 6)
        if count is not None:
            batch = min(batch, count - seq)
        ring.send_many(
            [make_record(producer, s, max_size) for s in range(seq, seq + batch)], timeout=SEND_TIMEOUT
        )
        return seq + batch
    ring.send(make_record(producer, seq, max_size), timeout=SEND_TIMEOUT)
    return seq + 1


def produce_stream(
    ring: mmipc.Ring,
    producer: int,
    count: int | None,
    mode: str,
    seed: int,
    ready: Any = None,
    max_size: int | None = None,
) -> None:
    """Send records 0..count-1 of ``producer`` (forever if ``count`` is None), then close.

    ``mode``: ``"send"`` (one ``send`` per record) or ``"mixed"`` (``reserve``, ``send_many``
    batches and ``send`` at random). ``ready`` (an Event) is set before the first record.
    ``max_size`` bounds the record lengths (default: the ring's ``max_record``).
    """
    rng = random.Random(seed)
    if max_size is None:
        max_size = ring.max_record
    with ring:
        if ready is not None:
            ready.set()
        seq = 0
        while count is None or seq < count:
            if mode == "send":
                ring.send(make_record(producer, seq, max_size), timeout=SEND_TIMEOUT)
                seq += 1
            else:
                seq = _send_mixed(ring, producer, seq, count, rng, max_size)


def hold_reservation(ring: mmipc.Ring, records: list[bytes], nbytes: int, held: Any) -> None:
    """Send ``records``, then write garbage into a reservation and wait to be killed."""
    for record in records:
        ring.send(record, timeout=SEND_TIMEOUT)
    with ring.reserve(nbytes, timeout=SEND_TIMEOUT) as buf:
        buf[:] = b"X" * nbytes
        held.set()
        time.sleep(120)  # killed here, inside the reservation (holding the writer lock)
    raise AssertionError("hold_reservation was not killed")


def hold_lock_unrecorded(ring: mmipc.Ring, held: Any) -> None:
    """Take the writer semaphore the way ``_lock_writer`` does, stop before recording the owner.

    Reproduces, deterministically, a writer killed between its semaphore acquire and its
    ``lock_owner`` store (or between clearing ``lock_owner`` and posting in ``_writer_exit``):
    the slot says "at the lock" (``S_LOCK_STATE`` 1), the semaphore is taken, no owner is known.
    """
    from mmipc import _layout as L

    slot = ring._ensure_slot()
    ring._participants.set_field(slot, L.S_LOCK_STATE, 1)
    assert ring._sem_lock is not None and ring._sem_lock.try_acquire()
    held.set()
    time.sleep(120)
    raise AssertionError("hold_lock_unrecorded was not killed")


def mark_waiting_at_lock(ring: mmipc.Ring, ready: Any) -> None:
    """Stand at the writer lock like a waiter in ``_lock_writer`` (``S_LOCK_STATE`` 1), then wait to be killed."""
    from mmipc import _layout as L

    slot = ring._ensure_slot()
    ring._participants.set_field(slot, L.S_LOCK_STATE, 1)
    ready.set()
    time.sleep(120)
    raise AssertionError("mark_waiting_at_lock was not killed")


# -- consumers --------------------------------------------------------------------------------

MSG = struct.Struct("<cQ")  # b"G" (received, view held) or b"R" (released), seq
MSG_GOT = b"G"
MSG_RELEASED = b"R"


def consume_and_report(ring: mmipc.Ring, conn: Any, seed: int) -> None:
    """Receive (views) until killed or end of stream, reporting each seq before and after release.

    Each record is ``seq`` as 8 bytes plus filler. A ``G`` message is written while the view is
    held, an ``R`` message after the ``with`` block released it: both are single small pipe
    writes, so a SIGKILL leaves each message either fully written or absent.
    """
    rng = random.Random(seed)
    fd = conn.fileno()
    with ring:
        while True:
            try:
                with ring.recv(timeout=SEND_TIMEOUT) as view:
                    seq = int.from_bytes(view[:8], "little")
                    if bytes(view[8:]) != filler(seq):
                        raise AssertionError(f"record {seq} is corrupt")
                    os.write(fd, MSG.pack(MSG_GOT, seq))
                    if rng.random() < 0.2:
                        time.sleep(rng.random() * 0.002)  # hold the view a little
                os.write(fd, MSG.pack(MSG_RELEASED, seq))
            except mmipc.EndOfStream:
                return


def consume_and_hold(ring: mmipc.Ring, conn: Any, released: int, pin: bool) -> None:
    """Receive and release ``released`` records, then take one more and wait to be killed.

    With ``pin`` the last record's block exits but a slice of its view stays referenced (the
    record stays pinned); otherwise the process sleeps inside the ``with`` block.
    """
    fd = conn.fileno()
    for _ in range(released):
        with ring.recv(timeout=SEND_TIMEOUT) as view:
            seq = int.from_bytes(view[:8], "little")
        os.write(fd, MSG.pack(MSG_RELEASED, seq))
    if pin:
        with ring.recv(timeout=SEND_TIMEOUT) as view:
            kept = view[:8]
        os.write(fd, MSG.pack(MSG_GOT, int.from_bytes(kept, "little")))
        time.sleep(120)
    else:
        with ring.recv(timeout=SEND_TIMEOUT) as view:
            os.write(fd, MSG.pack(MSG_GOT, int.from_bytes(view[:8], "little")))
            time.sleep(120)
    raise AssertionError("consume_and_hold was not killed")


def filler(seq: int) -> bytes:
    return bytes([seq % 251]) * (seq % 97)


def numbered(seq: int) -> bytes:
    """Record ``seq`` of a simple numbered stream (8-byte seq + filler)."""
    return seq.to_bytes(8, "little") + filler(seq)


def produce_numbered(ring: mmipc.Ring, start: int, count: int, end: bool, batch: int = 1) -> None:
    """Send numbered records ``start..start+count-1`` (then end the stream if ``end``).

    ``batch`` > 1: ``send_many`` batches of 1..``batch`` records (multi-record groups).
    """
    rng = random.Random(start)
    with ring:
        seq = start
        while seq < start + count:
            n = min(rng.randint(1, batch), start + count - seq)
            if n == 1:
                ring.send(numbered(seq), timeout=SEND_TIMEOUT)
            else:
                ring.send_many([numbered(s) for s in range(seq, seq + n)], timeout=SEND_TIMEOUT)
            seq += n
        if end:
            ring.end_stream(timeout=SEND_TIMEOUT)


# -- helpers for the test process ---------------------------------------------------------------


class Reports:
    """The ``MSG`` reports a child writes to a pipe, read without blocking (or to EOF)."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.data = b""

    def poll(self, timeout: float = 0.0) -> list[tuple[bytes, int]]:
        """Read what is available (waiting up to ``timeout`` for something); return all so far."""
        if self.conn.poll(timeout):
            self.data += os.read(self.conn.fileno(), 65536)
        return self.messages()

    def read_to_eof(self) -> list[tuple[bytes, int]]:
        """Read until every writer is gone (the child is dead); return every report."""
        while True:
            chunk = os.read(self.conn.fileno(), 65536)
            if not chunk:
                break
            self.data += chunk
        assert len(self.data) % MSG.size == 0, "a report was torn (pipe writes of 9 bytes are atomic)"
        return self.messages()

    def messages(self) -> list[tuple[bytes, int]]:
        whole = len(self.data) - len(self.data) % MSG.size
        return [MSG.unpack_from(self.data, i) for i in range(0, whole, MSG.size)]


def kill_and_join(*procs: Any) -> None:
    """SIGKILL (if still running) and reap every process."""
    for proc in procs:
        if proc.pid is not None and proc.exitcode is None:
            try:
                os.kill(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    for proc in procs:
        if proc.pid is not None:
            proc.join(30)


# -- broadcast subscribers and work-queue consumers (test_ring_broadcast, test_ring_queue) -------

QMSG = struct.Struct("<cQQ")  # kind, payload seq, ring sequence number
Q_GOT = b"G"  # received (view held or copy made), first delivery
Q_GOT_AGAIN = b"D"  # received, flagged redelivered
Q_RELEASED = b"R"  # released


def check_numbered(data: Any) -> int:
    """The seq of a :func:`numbered` record, after checking its filler."""
    seq = int.from_bytes(bytes(data[:8]), "little")
    if bytes(data[8:]) != filler(seq):
        raise AssertionError(f"record {seq} is corrupt")
    return seq


def subscribe_and_collect(
    ring: mmipc.Ring, start: str, how: str, ready: Any, conn: Any, go: Any = None
) -> None:
    """Subscribe at ``start``, set ``ready``, receive until the end of the stream with ``how``.

    ``how``: ``"view"`` (``recv`` views), ``"bytes"`` (``recv_bytes``), ``"many"`` (``recv_many``),
    ``"slow"`` (``recv_bytes`` with a pause every few records: holds the producer back),
    ``"mixed"`` (``StreamChecker`` records from several producers, ``recv_bytes``). Sends back the
    list of received items (numbered seqs, or ``(producer, seq)`` pairs). With ``go``, waits
    for it after subscribing and expects one :class:`mmipc.Lapped` first, sending its ``missed``.
    """
    got: list[Any] = []
    missed = -1
    with ring:
        sub = ring.subscribe(start, timeout=SEND_TIMEOUT)
        ready.set()
        if go is not None:
            assert go.wait(SEND_TIMEOUT)
            try:
                sub.recv_bytes(timeout=SEND_TIMEOUT)
                raise AssertionError("expected Lapped")
            except mmipc.Lapped as exc:
                missed = exc.missed
            ready.set()
        checker = StreamChecker(SMALL_RECORD)
        try:
            while True:
                if how == "view":
                    with sub.recv(timeout=SEND_TIMEOUT) as view:
                        got.append(check_numbered(view))
                elif how == "many":
                    got.extend(check_numbered(r) for r in sub.recv_many(7, timeout=SEND_TIMEOUT))
                elif how == "mixed":
                    got.append(checker.add(sub.recv_bytes(timeout=SEND_TIMEOUT)))
                else:
                    got.append(check_numbered(sub.recv_bytes(timeout=SEND_TIMEOUT)))
                    if how == "slow" and len(got) % 50 == 0:
                        time.sleep(0.02)
        except mmipc.EndOfStream:
            pass
        sub.close()
    conn.send((missed, got))
    conn.close()


SMALL_RECORD = 600  # max record length of the multi-producer broadcast test


def subscribe_and_die(ring: mmipc.Ring, ready: Any, seed: int) -> None:
    """Subscribe, then receive (views and copies, with pauses) until SIGKILLed."""
    rng = random.Random(seed)
    sub = ring.subscribe("next", timeout=SEND_TIMEOUT)
    ready.set()
    while True:
        kept = None
        if rng.random() < 0.5:
            with sub.recv(timeout=SEND_TIMEOUT) as view:
                check_numbered(view)
                if rng.random() < 0.3:
                    kept = view[:8]  # pinned after the block: holds the producer back
        else:
            check_numbered(sub.recv_bytes(timeout=SEND_TIMEOUT))
        if rng.random() < 0.05:
            time.sleep(rng.random() * 0.05)  # killed here, maybe holding a pinned view
        del kept  # (a view pinned across a blocking receive could wait for itself)


def last(ring: mmipc.Ring) -> mmipc.RecordInfo:
    """The :class:`mmipc.RecordInfo` of the record ``ring`` (a queue consumer) received last."""
    info = ring.last_record
    assert info is not None
    return info


def queue_consume(ring: mmipc.Ring, conn: Any, how: str, seed: int, hold: int = 0) -> None:
    """Consume a queue ring until the end of the stream (or SIGKILL), reporting through ``conn``.

    Each delivery is reported (``Q_GOT`` or ``Q_GOT_AGAIN`` for a flagged redelivery, with the
    payload's seq and the ring's sequence number) before the record is released, each release
    after (``Q_RELEASED``): single 17-byte pipe writes, so a SIGKILL leaves each report whole or
    absent. ``how``: ``"view"`` (``recv``), ``"window"`` (keeps up to 4 views and releases them
    in random order), ``"bytes"`` and ``"many"`` (``recv_many``); the last two release inside the
    call, before the report, so crash tests use only the first two. ``hold``: take that many
    views, report, then sleep.
    """
    rng = random.Random(seed)
    fd = conn.fileno()

    def report(data: Any, info: mmipc.RecordInfo) -> int:
        seq = check_numbered(data)
        os.write(fd, QMSG.pack(Q_GOT_AGAIN if info.redelivered else Q_GOT, seq, info.sequence))
        return seq

    with ring:
        if hold:
            views = []
            for _ in range(hold):
                ctx = ring.recv(timeout=SEND_TIMEOUT)
                view = ctx.__enter__()
                report(view, last(ring))
                views.append((ctx, view))
            time.sleep(120)
            raise AssertionError("queue_consume(hold) was not killed")
        window: list[Any] = []
        try:
            while True:
                if how == "many":
                    batch = ring.recv_many(rng.randint(1, 8), timeout=SEND_TIMEOUT)
                    infos = ring.last_records
                    assert len(infos) == len(batch)
                    for data, info in zip(batch, infos, strict=True):
                        seq = report(data, info)
                        os.write(fd, QMSG.pack(Q_RELEASED, seq, info.sequence))
                elif how == "window":
                    # Views are held only while more records are ready: a consumer that waits
                    # for records while holding the oldest one could wait for itself.
                    try:
                        ctx = ring.recv_nowait()
                        view = ctx.__enter__()
                    except mmipc.WouldBlock:
                        rng.shuffle(window)
                        while window:
                            old_ctx, seq, rseq = window.pop()
                            old_ctx.__exit__(None, None, None)
                            os.write(fd, QMSG.pack(Q_RELEASED, seq, rseq))
                        ctx = ring.recv(timeout=SEND_TIMEOUT)
                        view = ctx.__enter__()
                    seq = report(view, last(ring))
                    window.append((ctx, seq, last(ring).sequence))
                    if len(window) >= rng.randint(1, 4):
                        ctx, seq, rseq = window.pop(rng.randrange(len(window)))
                        ctx.__exit__(None, None, None)
                        os.write(fd, QMSG.pack(Q_RELEASED, seq, rseq))
                elif how == "view":
                    with ring.recv(timeout=SEND_TIMEOUT) as view:
                        info = last(ring)
                        seq = report(view, info)
                    os.write(fd, QMSG.pack(Q_RELEASED, seq, info.sequence))
                else:
                    data = ring.recv_bytes(timeout=SEND_TIMEOUT)
                    info = last(ring)
                    seq = report(data, info)
                    os.write(fd, QMSG.pack(Q_RELEASED, seq, info.sequence))
                if rng.random() < 0.02:
                    time.sleep(rng.random() * 0.005)
        except mmipc.EndOfStream:
            while window:
                ctx, seq, rseq = window.pop()
                ctx.__exit__(None, None, None)
                os.write(fd, QMSG.pack(Q_RELEASED, seq, rseq))


def read_qmsgs(conn: Any) -> list[tuple[bytes, int, int]]:
    """Every ``QMSG`` report in a pipe whose writers are all gone."""
    data = b""
    while True:
        chunk = os.read(conn.fileno(), 65536)
        if not chunk:
            break
        data += chunk
    assert len(data) % QMSG.size == 0, "a report was torn"
    return [QMSG.unpack_from(data, i) for i in range(0, len(data), QMSG.size)]


def produce_numbered_paced(ring: mmipc.Ring, count: int, ready: Any) -> None:
    """Wait for ``ready``, send numbered records 0..count-1 (a short pause now and then), end."""
    rng = random.Random(count)
    with ring:
        assert ready.wait(SEND_TIMEOUT)
        for seq in range(count):
            ring.send(numbered(seq), timeout=SEND_TIMEOUT)
            if rng.random() < 0.01:
                time.sleep(0.002)
        ring.end_stream(timeout=SEND_TIMEOUT)


def hold_claim_lock(ring: mmipc.Ring, held: Any) -> None:
    """Take a queue ring's claim lock (as a consumer does while claiming) and wait to be killed."""
    ring._lock_claims()  # type: ignore[attr-defined]
    held.set()
    time.sleep(120)
    raise AssertionError("hold_claim_lock was not killed")


def hold_writer_lock_joining(ring: mmipc.Ring, held: Any) -> None:
    """Subscribe, then take the writer semaphore as a (re)joining subscriber does; wait to be killed."""
    sub = ring.subscribe()
    sub._lock_writer(None, False)
    held.set()
    time.sleep(120)
    raise AssertionError("hold_writer_lock_joining was not killed")


def queue_take_killed(ring: mmipc.Ring, conn: Any, first: int, second: int, kill_at: int) -> None:
    """Take ``first`` records with ``recv_many`` and report them; then take ``second`` with the
    ring's shared-word stores counted, SIGKILLed at the ``kill_at``-th one (0: never), and
    report what that call returned and how many stores it made."""
    from _kvchild import _KillingWords

    with ring:
        conn.send([check_numbered(r) for r in ring.recv_many(first, timeout=SEND_TIMEOUT)])
        counter = [0]
        words = ring._words
        ring._words = _KillingWords(words, counter, kill_at)  # type: ignore[arg-type,assignment]
        try:
            got = ring.recv_many(second, timeout=SEND_TIMEOUT)
        finally:
            ring._words = words
        conn.send([check_numbered(r) for r in got])
        conn.send(counter[0])


# -- rewinding (test_ring_rewind) -------------------------------------------------------------------


def big_numbered(seq: int, size: int) -> bytes:
    """Record ``seq`` of a stream of ``size``-byte records (8-byte seq, then a fill byte)."""
    return seq.to_bytes(8, "little") + bytes([seq % 251]) * (size - 8)


def check_big_numbered(data: Any, size: int) -> int:
    seq = int.from_bytes(bytes(data[:8]), "little")
    if len(data) != size or bytes(data[8:]) != bytes([seq % 251]) * (size - 8):
        raise AssertionError(f"record {seq} is corrupt")
    return seq


def produce_acked(ring: mmipc.Ring, count: int, size: int, acks: Any, per_record: int, window: int) -> None:
    """Send ``count`` big numbered records, at most ``window`` ahead of the consumers (each
    receiver acks each record it has released; ``per_record`` acks make one record), and with
    every earlier record acked whenever the tail's offset is past ``REWIND_AT``: the readers have
    then all caught up, so that send rewinds, deterministically. Ends the stream."""
    from mmipc import _layout as L
    from mmipc import _ring

    words = ring._words
    assert words is not None
    cap = ring.capacity
    acked = 0
    with ring:
        for seq in range(count):
            target = seq if words[L.W_TAIL] % cap >= _ring.REWIND_AT else seq - window + 1
            while acked < target:
                for _ in range(per_record):
                    assert acks.acquire(timeout=SEND_TIMEOUT), "a consumer stopped acking"
                acked += 1
            ring.send(big_numbered(seq, size), timeout=SEND_TIMEOUT)
        ring.end_stream(timeout=SEND_TIMEOUT)


def consume_acked(ring: mmipc.Ring, how: str, size: int, acks: Any, conn: Any, ready: Any = None) -> None:
    """Receive big numbered records until the end of the stream, acking each one after its
    release; send back the seqs. ``how``: ``"view"``, ``"subscribe"`` (a broadcast subscriber
    reading views; sets ``ready`` once subscribed) or ``"bytes"`` (``recv_bytes``)."""
    got = []
    with ring:
        source = ring
        if how == "subscribe":
            source = ring.subscribe(start="next")
            ready.set()
        try:
            while True:
                if how == "bytes":
                    got.append(check_big_numbered(source.recv_bytes(timeout=SEND_TIMEOUT), size))
                else:
                    with source.recv(timeout=SEND_TIMEOUT) as view:
                        got.append(check_big_numbered(view, size))
                acks.release()
        except mmipc.EndOfStream:
            pass
        finally:
            if source is not ring:
                source.close()
    conn.send(got)


def produce_rewind_killed(
    ring: mmipc.Ring, conn: Any, first: int, kill_at: int, unit: int, recover: int
) -> None:
    """One producer of ``test_producer_killed_at_every_store_of_a_rewind``.

    Sends big numbered records from ``first`` on: first one of ``recover`` bytes (more than
    ``REWIND_LAG``: it never rewinds, so a jump a killed predecessor left unpublished at this
    very position is still there when it is written), then ``unit``-byte records until the
    tail's offset reaches ``REWIND_AT``. Reports the seq of the next record, waits for ``"go"``
    (the consumer has released everything: the next send rewinds), sends that record with the
    ring's shared-word stores counted, SIGKILLed at the ``kill_at``-th one, and reports how
    many stores it made (only if it was not killed).
    """
    from _kvchild import _KillingWords
    from mmipc import _layout as L
    from mmipc import _ring

    with ring:
        words = ring._words
        assert words is not None
        cap = ring.capacity
        ring.send(big_numbered(first, recover), timeout=SEND_TIMEOUT)
        seq = first + 1
        while words[L.W_TAIL] % cap < _ring.REWIND_AT:
            ring.send(big_numbered(seq, unit), timeout=SEND_TIMEOUT)
            seq += 1
        conn.send(seq)
        assert conn.recv() == "go"
        assert words[L.W_HEAD] == words[L.W_TAIL], "the consumer has not released everything"
        counter = [0]
        ring._words = _KillingWords(words, counter, kill_at)  # type: ignore[arg-type,assignment]
        try:
            ring.send(big_numbered(seq, unit), timeout=SEND_TIMEOUT)
        finally:
            ring._words = words
        conn.send(counter[0])


def hold_views(ring: mmipc.Ring, conn: Any, count: int) -> None:
    """Take ``count`` records with ``recv_views``, report their seqs, hold them until killed."""
    views = ring.recv_views(count, timeout=SEND_TIMEOUT)
    conn.send([check_numbered(v) for v in views])
    time.sleep(120)
    raise AssertionError("hold_views was not killed")
