"""Multi-producer stress tests of the Ring with self-validating records, across real processes.

Four producer processes share one small ``multi_writer`` ring; record lengths run from 0 bytes to
``max_record`` so that wrap-around and padding happen on most laps. The consumer recomputes every
record from ``(producer, seq)`` (``_ringchild.StreamChecker``) and so proves: every byte is
right, each producer's records arrive in order, none is lost and none is duplicated.
"""

from __future__ import annotations

import multiprocessing
import random
import time
from typing import Any

import pytest

import mmipc
from _ringchild import StreamChecker, kill_and_join, make_record, produce_stream, record_length
from mmipc import _layout as L

pytestmark = [pytest.mark.stress, pytest.mark.timeout(120)]

PRODUCERS = 4
CAPACITY = 16 * 1024  # small: a near-max record fills it, so almost every lap wraps
RECORDS_PER_PRODUCER = 2500
RECV_TIMEOUT = 30.0


def test_record_lengths_cover_zero_to_max_record() -> None:
    """The generator itself: the stream exercises empty, tiny, medium and near-max records."""
    max_size = CAPACITY - 32
    lengths = [record_length(p, s, max_size) for p in range(PRODUCERS) for s in range(RECORDS_PER_PRODUCER)]
    assert min(lengths) == 0
    assert max(lengths) > max_size - 256
    assert sum(1 for n in lengths if n > max_size // 2) > len(lengths) // 10
    assert sum(1 for n in lengths if n < 64) > len(lengths) // 10
    assert all(len(make_record(0, s, max_size)) == record_length(0, s, max_size) for s in range(200))


def _drain(ring: mmipc.Ring, checker: StreamChecker, total: int, mode: str, seed: int) -> None:
    rng = random.Random(seed)
    while checker.total < total:
        if mode == "send" or rng.random() < 0.2:
            with ring.recv(timeout=RECV_TIMEOUT) as view:
                checker.add(view)
        else:
            for record in ring.recv_many(max_records=rng.randint(1, 64), timeout=RECV_TIMEOUT):
                checker.add(record)


@pytest.mark.parametrize("mode", ["send", "mixed"])
def test_four_producers_every_record_exact_in_order_once(make_ring: Any, mp_context: Any, mode: str) -> None:
    """4 producers x 2500 records through a 16 KiB ring; the consumer checks every record.

    ``send``: producers ``send`` one record at a time, the consumer takes zero-copy ``recv`` views.
    ``mixed``: producers pick ``reserve`` (written in place), ``send_many`` batches or ``send``
    at random; the consumer mostly uses ``recv_many`` with random batch limits, sometimes ``recv``.
    """
    seed = random.randrange(1 << 30)
    ring = make_ring(CAPACITY, multi_writer=True)
    total = PRODUCERS * RECORDS_PER_PRODUCER
    procs = [
        mp_context.Process(target=produce_stream, args=(ring, p, RECORDS_PER_PRODUCER, mode, seed + p))
        for p in range(PRODUCERS)
    ]
    checker = StreamChecker(ring.max_record)
    try:
        for proc in procs:
            proc.start()
        _drain(ring, checker, total, mode, seed)
        for proc in procs:
            proc.join(30)
        assert [proc.exitcode for proc in procs] == [0] * PRODUCERS, f"seed {seed}"
    finally:
        kill_and_join(*procs)
    assert {p: checker.count(p) for p in range(PRODUCERS)} == dict.fromkeys(
        range(PRODUCERS), RECORDS_PER_PRODUCER
    )
    with pytest.raises(mmipc.WouldBlock):  # nothing extra: no duplicate, no stray padding
        ring.recv_bytes_nowait()
    stats = ring.stats()
    assert stats.records_written == stats.records_read == total
    expected_bytes = sum(
        record_length(p, s, ring.max_record) for p in range(PRODUCERS) for s in range(RECORDS_PER_PRODUCER)
    )
    assert stats.bytes_written == stats.bytes_read == expected_bytes
    assert stats.used_bytes == 0
    assert ring._region.words[L.W_TAIL] > 100 * CAPACITY  # the stream wrapped > 100 times
    assert stats.recoveries == 0


def test_empty_record_views_stay_usable(make_ring: Any) -> None:
    """Each empty record's view is a usable, empty, read-only memoryview, however many came before."""
    ring = make_ring(4096)
    for _ in range(3):
        ring.send(b"")
    for _ in range(3):
        with ring.recv(timeout=5) as view:
            assert bytes(view) == b""
            assert view.nbytes == 0 and view.readonly


def _tight_producer(ring: mmipc.Ring, producer: int) -> None:
    """Send small self-validating records as fast as possible until killed."""
    seq = 0
    with ring:
        while True:
            ring.send(make_record(producer, seq, 200), timeout=30)
            seq += 1


@pytest.mark.stress
def test_writer_lock_recovery_storm_loses_nothing(make_ring: Any) -> None:
    """3 producers in tight ``send`` loops; one is SIGKILLed every few ms, 250 times, and replaced.

    Asserts: after every kill the stream keeps moving (within 10 s) and every record received is
    exact, in per-producer order, without gaps or duplicates (no sequence-number CorruptionError).
    """
    ctx = multiprocessing.get_context("fork")
    rng = random.Random(12)
    ring = make_ring(1 << 14, multi_writer=True)
    checker = StreamChecker(200)
    live: dict[int, Any] = {}
    next_id = 1
    try:
        for _ in range(250):
            while len(live) < 3:
                live[next_id] = ctx.Process(target=_tight_producer, args=(ring, next_id))
                live[next_id].start()
                next_id += 1
            until = time.monotonic() + rng.uniform(0.001, 0.02)
            while time.monotonic() < until:
                try:
                    for record in ring.recv_many(256, timeout=0.001):
                        checker.add(record)
                except mmipc.WaitTimeout:
                    pass
            kill_and_join(live.pop(rng.choice(list(live))))
            before, deadline = checker.total, time.monotonic() + 10
            while checker.total == before:
                assert time.monotonic() < deadline, "no record for 10 s after a kill: writer lock lost"
                try:
                    for record in ring.recv_many(256, timeout=0.01):
                        checker.add(record)
                except mmipc.WaitTimeout:
                    pass
    finally:
        kill_and_join(*live.values())
