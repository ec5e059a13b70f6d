"""Broadcast rings (``mode="broadcast"``): every subscriber receives every record.

Multi-process tests run under fork, spawn and forkserver (``mp_context``); assertions are on
outcomes: the exact, ordered sequence each subscriber received, the ``missed`` count of a
:class:`mmipc.Lapped`, which exception a misuse raises.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import pickle
import random
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Callable
from typing import Any

import pytest

import mmipc
from _ringchild import (
    SMALL_RECORD,
    check_numbered,
    hold_writer_lock_joining,
    kill_and_join,
    make_record,
    numbered,
    produce_numbered_paced,
    produce_stream,
    subscribe_and_collect,
    subscribe_and_die,
)
from mmipc import _layout as L
from mmipc._broadcast import subscriber_sem_name

pytestmark = pytest.mark.timeout(120)

WAIT = 10.0


def wait_until(condition: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.002)


def send_numbered(ring: mmipc.Ring, start: int, count: int, seed: int = 0) -> None:
    """Send ``numbered`` records start..start+count-1 with send, send_many and reserve."""
    rng = random.Random(seed)
    seq = start
    while seq < start + count:
        how = rng.random()
        if how < 0.3:
            n = min(rng.randint(2, 9), start + count - seq)
            ring.send_many([numbered(s) for s in range(seq, seq + n)], timeout=WAIT)
            seq += n
            continue
        record = numbered(seq)
        if how < 0.6:
            with ring.reserve(len(record), timeout=WAIT) as buf:
                buf[:] = record
        else:
            ring.send(record, timeout=WAIT)
        seq += 1


def collect(conns: list[Any], procs: list[Any]) -> list[tuple[int, list[Any]]]:
    out = [conn.recv() for conn in conns]
    for proc in procs:
        proc.join(WAIT)
        assert proc.exitcode == 0
    return out


# -- every subscriber receives the complete, ordered sequence --------------------------------------


def test_subscribers_each_receive_every_record_in_order(make_ring: Any, mp_context: Any) -> None:
    """Three subscriber processes (views, copies, recv_many; one of them slow) and one producer.

    The ring (4 KiB) holds a few dozen records of the 2000 sent, so the producer wraps many
    times and waits for the slowest subscriber (back-pressure, the default). Asserts: each
    subscriber received exactly records 0..1999, in order, with intact bytes.
    """
    ring = make_ring(4096, mode="broadcast")
    hows = ["view", "many", "slow"]
    readies = [mp_context.Event() for _ in hows]
    pipes = [mp_context.Pipe(duplex=False) for _ in hows]
    procs = [
        mp_context.Process(target=subscribe_and_collect, args=(ring, "next", how, ready, w))
        for how, ready, (_r, w) in zip(hows, readies, pipes, strict=True)
    ]
    try:
        for proc in procs:
            proc.start()
        for ready in readies:
            assert ready.wait(WAIT)
        send_numbered(ring, 0, 2000, seed=1)
        ring.end_stream()
        results = collect([r for r, _w in pipes], procs)
    finally:
        kill_and_join(*procs)
    for how, (_missed, got) in zip(hows, results, strict=True):
        assert got == list(range(2000)), f"subscriber {how!r} got a different sequence"
    stats = ring.stats()
    assert stats.mode == "broadcast" and stats.records_written == 2000 and stats.producer_waits > 0


def test_many_producers_many_subscribers(make_ring: Any, mp_context: Any) -> None:
    """Two producer processes (multi_writer, mixed APIs) and two subscriber processes.

    Asserts: each subscriber receives every record of each producer exactly once, in per-producer
    order, byte for byte (``StreamChecker``), and both see the same total order.
    """
    ring = make_ring(1 << 14, mode="broadcast", multi_writer=True)
    readies = [mp_context.Event() for _ in range(2)]
    pipes = [mp_context.Pipe(duplex=False) for _ in range(2)]
    subs = [
        mp_context.Process(target=subscribe_and_collect, args=(ring, "next", "mixed", ready, w))
        for ready, (_r, w) in zip(readies, pipes, strict=True)
    ]
    producers = [
        mp_context.Process(target=produce_stream, args=(ring, p, 300, "mixed", p, None, SMALL_RECORD))
        for p in (1, 2)
    ]
    try:
        for proc in subs:
            proc.start()
        for ready in readies:
            assert ready.wait(WAIT)
        for proc in producers:
            proc.start()
        for proc in producers:
            proc.join(WAIT * 3)
            assert proc.exitcode == 0
        ring.end_stream()
        results = collect([r for r, _w in pipes], subs)
    finally:
        kill_and_join(*subs, *producers)
    (_, first), (_, second) = results
    for got in (first, second):
        assert sorted(got) == sorted((p, s) for p in (1, 2) for s in range(300))
        for p in (1, 2):
            assert [s for q, s in got if q == p] == list(range(300))
    assert first == second  # one log: every subscriber sees the same total order


# -- late join ---------------------------------------------------------------------------------------


def test_late_join_at_next_and_at_oldest(make_ring: Any, mp_context: Any) -> None:
    """Subscribers join after 40 records were published (all still in the ring).

    Asserts: ``start="oldest"`` receives records 0..99, ``start="next"`` exactly 40..99.
    """
    ring = make_ring(1 << 16, mode="broadcast")
    send_numbered(ring, 0, 40, seed=2)
    readies = [mp_context.Event() for _ in range(2)]
    pipes = [mp_context.Pipe(duplex=False) for _ in range(2)]
    procs = [
        mp_context.Process(target=subscribe_and_collect, args=(ring, start, "bytes", ready, w))
        for start, ready, (_r, w) in zip(("oldest", "next"), readies, pipes, strict=True)
    ]
    try:
        for proc in procs:
            proc.start()
        for ready in readies:
            assert ready.wait(WAIT)
        send_numbered(ring, 40, 60, seed=3)
        ring.end_stream()
        (_, oldest), (_, nxt) = collect([r for r, _w in pipes], procs)
    finally:
        kill_and_join(*procs)
    assert oldest == list(range(100))
    assert nxt == list(range(40, 100))


def test_oldest_after_wrapping_without_subscribers(make_ring: Any) -> None:
    """With no subscriber, producers overwrite the oldest records; "oldest" starts at a retained one.

    Asserts: the producer never waits; a subscriber joining at "oldest" receives a contiguous
    suffix first..999 with first > 0 that fits in the capacity, then the next record, then the end.
    """
    ring = make_ring(4096, mode="broadcast")
    for seq in range(1000):
        ring.send_nowait(numbered(seq))
    sub = ring.subscribe("oldest")
    got = []
    while True:
        try:
            got.append(check_numbered(sub.recv_bytes_nowait()))
        except mmipc.WouldBlock:
            break
    first = got[0]
    assert first > 0 and got == list(range(first, 1000))
    assert sum(L.record_size(len(numbered(s))) for s in range(first, 1000)) <= ring.capacity
    ring.send(numbered(1000))
    ring.end_stream()
    assert [check_numbered(data) for data in sub] == [1000]
    assert ring.stats().producer_waits == 0
    sub.close()


@pytest.mark.parametrize("kind", ["named", "file"])
def test_subscriber_from_attach_by_name_or_path(make_ring: Any, kind: str) -> None:
    """A subscriber of a ring attached by name or path (as an unrelated process would)."""
    ring = make_ring(1 << 14, kind=kind, mode="broadcast")
    other_handle = mmipc.Ring.attach(ring.name) if kind == "named" else mmipc.Ring.attach(path=ring.name)
    with other_handle as other:
        assert other.mode == "broadcast"
        with other.subscribe() as sub:
            ring.send(b"by name")
            assert sub.recv_bytes(timeout=WAIT) == b"by name"
            assert sub.last_record == mmipc.RecordInfo(0, 0, False)


# -- slow subscribers: back-pressure and untether -----------------------------------------------------


def test_back_pressure_waits_for_the_slowest_and_leaving_releases_it(make_ring: Any) -> None:
    """Back-pressure: a subscriber that does not read holds the producer; closing it lets it go.

    Asserts: ``send_nowait`` raises WouldBlock naming the subscriber's slot; a timed ``send``
    raises WaitTimeout; after ``sub.close()`` the same send succeeds and the other subscriber
    received every record.
    """
    ring = make_ring(1024, mode="broadcast")
    idle = ring.subscribe()
    active = ring.subscribe()
    sent = 0
    with pytest.raises(mmipc.WouldBlock, match=f"slot {idle._slot}"):
        while True:
            ring.send_nowait(numbered(sent))
            sent += 1
            check_numbered(active.recv_bytes_nowait())
    with pytest.raises(mmipc.WaitTimeout):
        ring.send(numbered(sent), timeout=0.05)
    idle.close()
    ring.send(numbered(sent), timeout=WAIT)
    assert [check_numbered(active.recv_bytes_nowait()) for _ in range(1)] == [sent]
    active.close()


def test_untether_cuts_a_stalled_subscriber_loose(make_ring: Any, mp_context: Any) -> None:
    """``untether_after=0.2``: a subscriber process that stalls is cut loose; it rejoins at the head.

    The stalled subscriber joins before record 0, then waits while 300 records (many ring-fulls)
    are sent. Asserts: the producer finishes; the stalled subscriber's first receive raises
    ``Lapped`` with ``missed == 300`` exactly; it then receives exactly the 50 records sent
    after it rejoined; a fast subscriber received all 350; the ring counts one lapped subscriber.
    """
    ring = make_ring(2048, mode="broadcast", untether_after=0.2)
    assert ring.untether_after == 0.2
    ready, go = mp_context.Event(), mp_context.Event()
    r, w = mp_context.Pipe(duplex=False)
    stalled = mp_context.Process(target=subscribe_and_collect, args=(ring, "next", "bytes", ready, w, go))
    fast = ring.subscribe()
    got_fast: list[int] = []
    try:
        stalled.start()
        assert ready.wait(WAIT)
        ready.clear()
        for seq in range(300):
            ring.send(numbered(seq), timeout=WAIT)
            got_fast.append(check_numbered(fast.recv_bytes(timeout=WAIT)))
        go.set()
        assert ready.wait(WAIT)  # it saw Lapped and rejoined
        for seq in range(300, 350):
            ring.send(numbered(seq), timeout=WAIT)
            got_fast.append(check_numbered(fast.recv_bytes(timeout=WAIT)))
        ring.end_stream()
        ((missed, got),) = collect([r], [stalled])
    finally:
        kill_and_join(stalled)
        fast.close()
    assert missed == 300
    assert got == list(range(300, 350))
    assert got_fast == list(range(350))
    assert ring.stats().lapped == 1


def test_a_subscriber_holding_a_view_is_never_cut_loose(make_ring: Any) -> None:
    """Only copies can be lapped: a held zero-copy view keeps its subscriber tethered.

    Asserts: while the view is held, a send that needs its record's space times out (well past
    ``untether_after``) and the view's bytes stay intact; once it is released the producer cuts
    the subscriber loose, and its next receive raises Lapped with the exact number missed.
    """
    ring = make_ring(1024, mode="broadcast", untether_after=0.05)
    sub = ring.subscribe()
    for seq in range(3):
        ring.send(numbered(seq))
    with sub.recv() as view:
        before = bytes(view)
        sent = 3
        with pytest.raises(mmipc.WaitTimeout, match="zero-copy views"):
            while True:
                ring.send(numbered(sent), timeout=0.4)
                sent += 1
        assert bytes(view) == before and check_numbered(view) == 0
        assert sub.stats().state == "tethered"
    for _ in range(40):  # released: now it is cut loose when it holds the producer back
        ring.send(numbered(sent), timeout=WAIT)
        sent += 1
    with pytest.raises(mmipc.Lapped) as info:
        sub.recv_bytes(timeout=WAIT)
    assert info.value.missed == sent - 1  # it received record 0 only
    ring.send(numbered(sent))
    assert check_numbered(sub.recv_bytes(timeout=WAIT)) == sent
    assert sub.stats().times_lapped == 1
    sub.close()


# -- crashes ---------------------------------------------------------------------------------------


@pytest.mark.crash
def test_killed_subscriber_stops_holding_the_producer_back(make_ring: Any, mp_context: Any) -> None:
    """A subscriber process SIGKILLed at a random moment while the producer depends on it.

    Back-pressure mode, a 4 KiB ring, 3000 records: the victim (views, pinned slices, copies,
    pauses) is killed after a random number of records. Asserts: every send completes (each
    within its 10 s timeout: the dead subscriber is dropped within about a second); the surviving
    subscriber (in this process, via a thread) receives all 3000 records in order; the victim's
    slot and semaphore are cleaned up (one live subscription left).
    """
    ring = make_ring(4096, mode="broadcast")
    ready = mp_context.Event()
    victim = mp_context.Process(target=subscribe_and_die, args=(ring, ready, os.getpid()))
    survivor = ring.subscribe()
    got: list[int] = []
    errors: list[BaseException] = []

    def read_all() -> None:
        try:
            for data in survivor:
                got.append(check_numbered(data))
        except BaseException as exc:  # reported below
            errors.append(exc)

    reader = threading.Thread(target=read_all)
    victim_slot = -1
    try:
        victim.start()
        assert ready.wait(WAIT)
        victim_slot = next(
            p.slot for p in ring._participants.table() if p.pid == victim.pid and p.roles & L.ROLE_SUBSCRIBER
        )
        reader.start()
        kill_at = random.Random(victim.pid).randrange(100, 2500)
        for seq in range(3000):
            if seq == kill_at:
                kill_and_join(victim)
            ring.send(numbered(seq), timeout=WAIT)
        ring.end_stream()
        reader.join(WAIT)
    finally:
        kill_and_join(victim)
        survivor.close()
    assert not errors, errors
    assert got == list(range(3000))
    assert ring.stats().subscribers == 0  # the survivor closed; the victim was cleaned up
    assert not os.path.exists(f"/dev/shm/sem.{subscriber_sem_name(ring._region.nonce, victim_slot)[1:]}")


# -- misuse and layout ----------------------------------------------------------------------------------


def test_misuse_raises_clear_errors(make_ring: Any) -> None:
    """Receiving on the ring itself, sending on a subscriber, bad arguments, closed handles."""
    ring = make_ring(4096, mode="broadcast")
    with pytest.raises(TypeError, match="subscribe"):
        ring.recv_bytes(timeout=0)
    with pytest.raises(ValueError, match="start"):
        ring.subscribe("newest")
    sub = ring.subscribe()
    with pytest.raises(TypeError, match="only receives"):
        sub.send(b"x")
    with pytest.raises(TypeError, match="pickled"):
        pickle.dumps(sub)
    with pytest.raises(mmipc.WouldBlock):
        sub.recv_bytes_nowait()
    with pytest.raises(mmipc.WaitTimeout):
        sub.recv_bytes(timeout=0.01)
    sub.close()
    sub.close()
    with pytest.raises(mmipc.ClosedError):
        sub.recv_bytes()
    with pytest.raises(ValueError, match="mode"):
        mmipc.Ring.create(4096, mode="fanout")
    with pytest.raises(TypeError, match="mode='broadcast'"):
        make_ring(4096, mode="queue").subscribe()
    with pytest.raises(ValueError, match="permissions"):
        mmipc.Ring.create(4096, mode=0o600, permissions=0o600)
    with pytest.raises(ValueError, match="untether_after"):
        mmipc.Ring.create(4096, mode="queue", untether_after=1.0)
    with pytest.raises(ValueError, match="untether_after"):
        mmipc.Ring.create(4096, mode="broadcast", untether_after=0)


def test_end_of_stream_reaches_every_subscriber(make_ring: Any) -> None:
    """Each subscriber drains, then gets EndOfStream on every later call; producers get EndOfStream."""
    ring = make_ring(4096, mode="broadcast")
    subs = [ring.subscribe() for _ in range(3)]
    ring.send_many([b"a", b"bb", b"ccc"])
    ring.end_stream()
    for sub in subs:
        assert list(sub) == [b"a", b"bb", b"ccc"]
        with pytest.raises(mmipc.EndOfStream):
            sub.recv_bytes()
        sub.close()
    with pytest.raises(mmipc.EndOfStream):
        ring.send(b"late")
    for start in ("next", "oldest"):  # joining an ended stream: the end (after the retained records)
        with ring.subscribe(start) as late:
            assert list(late) == ([] if start == "next" else [b"a", b"bb", b"ccc"])
            with pytest.raises(mmipc.EndOfStream):
                late.recv_bytes_nowait()


def test_attach_refuses_unknown_ring_flags(make_ring: Any, tmp_path: Any) -> None:
    """A ring whose flags carry a bit this mmipc does not know (a newer mode) is refused."""
    path = tmp_path / "future.ring"
    ring = make_ring(4096, path=str(path), mode="broadcast")
    ring.close()
    with open(path, "r+b") as f:
        header = bytearray(f.read(256))
        flags = struct.unpack_from("<Q", header, 80)[0] | (1 << 5)
        struct.pack_into("<Q", header, 80, flags)
        crc = zlib.crc32(bytes(header[0:16]) + bytes(header[24:128]) + bytes(header[132:256]))
        struct.pack_into("<I", header, 128, crc)
        f.seek(0)
        f.write(header)
    with pytest.raises(mmipc.IncompatibleRegion, match="flags"):
        mmipc.Ring.attach(path=str(path))


def test_records_of_many_sizes_wrap_intact(make_ring: Any) -> None:
    """Records up to the largest size, many laps, two subscribers read alternately (one thread)."""
    ring = make_ring(8192, mode="broadcast")
    subs = [ring.subscribe(), ring.subscribe()]
    expected = [make_record(0, s, 3000) for s in range(300)]
    got: list[list[bytes]] = [[], []]
    for record in expected:
        while True:
            try:
                ring.send_nowait(record)
                break
            except mmipc.WouldBlock:
                for sub, out in zip(subs, got, strict=True):
                    while True:
                        try:
                            out.append(sub.recv_bytes_nowait())
                        except mmipc.WouldBlock:
                            break
    for sub, out in zip(subs, got, strict=True):
        while True:
            try:
                out.append(sub.recv_bytes_nowait())
            except mmipc.WouldBlock:
                break
        sub.close()
    assert got[0] == expected and got[1] == expected


def test_inspect_shows_mode_and_subscriber_cursors(make_ring: Any) -> None:
    """``python -m mmipc inspect --json`` reports the mode, untether setting and each cursor."""
    ring = make_ring(4096, kind="named", mode="broadcast", untether_after=1.5)
    sub = ring.subscribe()
    ring.send(b"x" * 10)
    sub.recv_bytes()
    ring.send(b"y" * 10)
    proc = subprocess.run(
        [sys.executable, "-m", "mmipc", "inspect", ring.name, "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert (info["mode"], info["untether_after"]) == ("broadcast", "1.5 s")
    assert [
        (s["slot"], s["state"], s["cursor"], s["lag_bytes"], s["records_read"]) for s in info["subscribers"]
    ] == [(sub._slot, "tethered", 64, 64, 1)]
    sub.close()


def test_a_subscriber_does_not_survive_fork(make_ring: Any) -> None:
    """In a fork child the parent's subscription is unusable (ClosedError); subscribing again works."""
    ctx = multiprocessing.get_context("fork")
    ring = make_ring(4096, mode="broadcast")
    sub = ring.subscribe()
    r, w = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_fork_child_uses_subscriber, args=(ring, sub, w))
    proc.start()
    w.close()
    try:
        assert r.recv() == ("ClosedError", b"fresh")
    finally:
        proc.join(WAIT)
    ring.send(b"parent")  # the parent's subscription is untouched
    assert [sub.recv_bytes(timeout=WAIT) for _ in range(2)] == [b"fresh", b"parent"]
    sub.close()


def _fork_child_uses_subscriber(ring: mmipc.Ring, sub: mmipc.Subscriber, conn: Any) -> None:
    try:
        sub.recv_bytes_nowait()
        error = "none"
    except mmipc.ClosedError:
        error = "ClosedError"
    mine = ring.subscribe()
    ring.send(b"fresh")
    conn.send((error, mine.recv_bytes(timeout=WAIT)))
    mine.close()


@pytest.mark.stress
def test_lapping_subscriber_never_sees_torn_records(make_ring: Any, mp_context: Any) -> None:
    """A slow subscriber of an ``untether_after=0.02`` ring is lapped again and again.

    It reads copies and views with random pauses (views held across pauses keep it tethered).
    Asserts: every record it receives is intact (a copy overwritten while taken would fail its
    check); the records it receives are increasing, and after each ``Lapped(missed)`` the next
    record is exactly ``missed`` past the last one received; the count ends at the total sent.
    """
    ring = make_ring(2048, mode="broadcast", untether_after=0.02)
    sub = ring.subscribe()
    ready = mp_context.Event()
    producer = mp_context.Process(target=produce_numbered_paced, args=(ring, 3000, ready))
    rng = random.Random(11)
    expected = 0
    laps = received = 0
    try:
        producer.start()
        ready.set()
        while True:
            try:
                if rng.random() < 0.3:
                    with sub.recv(timeout=WAIT) as view:
                        seq = check_numbered(view)
                        if rng.random() < 0.1:
                            time.sleep(0.03)  # held view: never cut loose meanwhile
                        assert check_numbered(view) == seq
                else:
                    seq = check_numbered(sub.recv_bytes(timeout=WAIT))
            except mmipc.Lapped as exc:
                laps += 1
                expected += exc.missed
                continue
            except mmipc.EndOfStream:
                break
            assert seq == expected, f"after {laps} laps expected record {expected}, got {seq}"
            expected += 1
            received += 1
            if rng.random() < 0.05:
                time.sleep(rng.random() * 0.04)
        producer.join(WAIT)
        assert producer.exitcode == 0
    finally:
        kill_and_join(producer)
        sub.close()
    assert expected == 3000
    assert laps >= 1 and received < 3000
    assert ring.stats().lapped == laps


def test_permissions_and_the_older_int_mode(make_ring: Any) -> None:
    """``permissions=`` sets the mode bits of created objects; an int ``mode=`` still means that."""
    for kwargs in ({"mode": "broadcast", "permissions": 0o640}, {"mode": 0o640}):
        ring = make_ring(4096, kind="named", **kwargs)
        assert os.stat(f"/dev/shm/mmipc-{ring.name}").st_mode & 0o777 == 0o640
        assert ring.mode == ("broadcast" if "permissions" in kwargs else "single")


@pytest.mark.crash
def test_subscriber_killed_while_joining_hands_the_writer_lock_on(make_ring: Any, mp_context: Any) -> None:
    """A subscriber SIGKILLed while it holds the writer semaphore (as during its join).

    Asserts: the producer's next send completes within the wait (the dead holder is found and
    the lock handed on, ``recoveries`` == 1), a new subscriber joins, and it receives exactly
    the records sent after it joined.
    """
    ring = make_ring(1 << 14, mode="broadcast")
    held = mp_context.Event()
    holder = mp_context.Process(target=hold_writer_lock_joining, args=(ring, held))
    try:
        holder.start()
        assert held.wait(WAIT)
        with pytest.raises(mmipc.WouldBlock):
            ring.send_nowait(b"lock is held")
        kill_and_join(holder)
        ring.send(numbered(0), timeout=WAIT)
        sub = ring.subscribe(timeout=WAIT)
        for seq in range(1, 20):
            ring.send(numbered(seq), timeout=WAIT)
        got = [check_numbered(sub.recv_bytes(timeout=WAIT)) for _ in range(19)]
        sub.close()
    finally:
        kill_and_join(holder)
    assert got == list(range(1, 20))
    stats = ring.stats()
    assert stats.recoveries == 1 and stats.subscribers == 0


class _ActAtSecondTry:
    """Stands in for a subscriber's data semaphore: runs ``action`` at the second ``try_acquire``
    (``recv_many`` takes one count per group, so: after its first record, inside its loop)."""

    def __init__(self, sem: Any, action: Any) -> None:
        self._sem = sem
        self._action = action
        self._tries = 0

    def try_acquire(self) -> bool:
        self._tries += 1
        if self._tries == 2:
            self._action()
        return bool(self._sem.try_acquire())

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sem, name)


def test_subscriber_cut_loose_inside_recv_many_gets_lapped(make_ring: Any) -> None:
    """A subscriber is cut loose (and the records it was about to read overwritten) while its
    ``recv_many`` loop runs: the call raises :class:`mmipc.Lapped`, not CorruptionError.

    The producer (another handle, in this thread) sends into a full ring from inside the
    subscriber's loop: with ``untether_after`` 1 ms it untethers the subscriber, laps it after
    the grace period (it holds no view) and overwrites. Asserts: Lapped with a positive
    ``missed``; the subscriber then rejoined at the head and receives the next record.
    """
    ring = make_ring(1 << 16, mode="broadcast", untether_after=0.001)
    sub = ring.subscribe()
    producer = pickle.loads(pickle.dumps(ring))
    try:
        sent = 0
        while True:
            try:
                producer.send_nowait(struct.pack("<Q", sent) + bytes(4000))
            except mmipc.WouldBlock:
                break
            sent += 1

        def overrun() -> None:
            nonlocal sent
            for _ in range(sent):
                producer.send(struct.pack("<Q", sent) + bytes(4000), timeout=WAIT)
                sent += 1

        real = sub._sem_data
        sub._sem_data = _ActAtSecondTry(real, overrun)
        try:
            with pytest.raises(mmipc.Lapped) as info:
                sub.recv_many(1000, timeout=WAIT, max_bytes=1 << 30)
        finally:
            sub._sem_data = real
        assert info.value.missed > 0
        producer.send(struct.pack("<Q", 10**6) + bytes(10), timeout=WAIT)
        assert struct.unpack_from("<Q", sub.recv_bytes(timeout=WAIT))[0] == 10**6
    finally:
        producer.close()
        sub.close()


@pytest.mark.parametrize("mode", ["single", "broadcast"])
def test_recv_views_stream_across_processes(make_ring: Any, mp_context: Any, mode: str) -> None:
    """A producer process sends 3000 numbered records (``send`` and ``send_many`` batches) into a
    4 KiB ring, which wraps many times; this process takes them with ``recv_views(50)`` (as the
    consumer, or as a subscriber), dropping each call's views before the next.

    Asserts: exactly 0..2999, in order, then EndOfStream.
    """
    from _ringchild import check_numbered, produce_numbered

    ring = make_ring(4096, mode=mode) if mode != "single" else make_ring(4096)
    source = ring.subscribe() if mode == "broadcast" else ring
    producer = mp_context.Process(target=produce_numbered, args=(ring, 0, 3000, True, 8))
    got: list[int] = []
    try:
        producer.start()
        with pytest.raises(mmipc.EndOfStream):
            while True:
                views = source.recv_views(50, timeout=WAIT)
                got += [check_numbered(v) for v in views]
                del views
        producer.join(WAIT)
        assert producer.exitcode == 0
    finally:
        kill_and_join(producer)
        if source is not ring:
            source.close()
    assert got == list(range(3000))
