"""The Ring's API and framing, in one process and across real processes under every start method.

Crash tests (SIGKILL) are in test_ring_crash.py; the multi-producer stress test in test_ring_stress.py.
"""

from __future__ import annotations

import gc
import os
import pickle
import struct
import subprocess
import sys
import threading
import uuid
from typing import Any

import pytest

import mmipc
from mmipc import _layout as L
from mmipc._ring import _sem_names

# -- child-process bodies (module level: spawn and forkserver import them) ----------------------


def produce(ring: mmipc.Ring, count: int, size: int) -> None:
    with ring:
        for i in range(count):
            ring.send(i.to_bytes(4, "little") * (size // 4), timeout=30)
        ring.end_stream(timeout=30)


def produce_in_place(ring: mmipc.Ring, count: int) -> None:
    with ring:
        for i in range(count):
            with ring.reserve(8 + i % 50, timeout=30) as buf:
                buf[:8] = i.to_bytes(8, "little")
                buf[8:] = bytes([i % 251]) * (i % 50)
        ring.end_stream(timeout=30)


def consume(ring: mmipc.Ring, results: Any) -> None:
    with ring:
        got = [bytes(r) for r in ring]
    results.put(got)


def produce_batches(ring: mmipc.Ring, batches: int, per_batch: int) -> None:
    with ring:
        for b in range(batches):
            ring.send_many(
                [(b * per_batch + i).to_bytes(8, "little") * (1 + i % 7) for i in range(per_batch)],
                timeout=30,
            )
        ring.end_stream(timeout=30)


# -- helpers ----------------------------------------------------------------------------------


def sem_files(ring: mmipc.Ring) -> list[str]:
    return [f"/dev/shm/sem.{n[1:]}" for n in _sem_names(ring._region.nonce)]


def fill(ring: mmipc.Ring, record: bytes) -> int:
    """Send ``record`` until the ring is full; return how many were sent."""
    sent = 0
    while True:
        try:
            ring.send_nowait(record)
        except mmipc.WouldBlock:
            return sent
        sent += 1


# -- creation, attach, names ------------------------------------------------------------------


def test_create_rounds_capacity_and_reports_geometry(make_ring) -> None:
    ring = make_ring(1000)
    assert ring.capacity == 1024
    assert ring.max_record == 1024 - 32
    assert not ring.multi_writer
    assert not ring.closed


@pytest.mark.parametrize("capacity", [0, 63, -1, 1.5, "1024"])
def test_create_rejects_bad_capacity(capacity: Any) -> None:
    with pytest.raises(ValueError, match="capacity"):
        mmipc.Ring.create(capacity)


def test_named_ring_is_mode_0600_and_attachable(make_ring) -> None:
    ring = make_ring(4096, kind="named")
    name = ring.name
    assert os.stat(f"/dev/shm/mmipc-{name}").st_mode & 0o777 == 0o600
    for path in sem_files(ring)[:2]:
        assert os.stat(path).st_mode & 0o777 == 0o600
    ring.send(b"hello")
    with mmipc.Ring.attach(name) as other:
        assert other.recv_bytes(timeout=5) == b"hello"


def test_file_ring_mode_can_be_chosen(make_ring) -> None:
    ring = make_ring(4096, kind="file", mode=0o640)
    assert os.stat(ring._region.path).st_mode & 0o777 == 0o640


def test_create_existing_name_raises_region_exists(make_ring) -> None:
    ring = make_ring(4096, kind="named")
    with pytest.raises(mmipc.RegionExists) as info:
        mmipc.Ring.create(4096, name=ring.name)
    assert isinstance(info.value, FileExistsError)
    assert ring.name in str(info.value)


def test_attach_missing_name_raises_region_not_found() -> None:
    name = f"missing-{uuid.uuid4().hex[:8]}"
    with pytest.raises(mmipc.RegionNotFound, match=name) as info:
        mmipc.Ring.attach(name)
    assert isinstance(info.value, FileNotFoundError)


def test_attach_needs_exactly_one_of_name_or_path(tmp_path) -> None:
    with pytest.raises(ValueError):
        mmipc.Ring.attach()
    with pytest.raises(ValueError):
        mmipc.Ring.attach("x", path=tmp_path / "y")


def test_create_too_large_for_dev_shm_is_no_space_error() -> None:
    name = f"huge-{uuid.uuid4().hex[:8]}"
    with pytest.raises(mmipc.NoSpaceError, match="no space left") as info:
        mmipc.Ring.create(1 << 46, name=name)
    assert isinstance(info.value, OSError)
    assert not os.path.exists(f"/dev/shm/mmipc-{name}")


def test_unlink_removes_name_and_semaphores_but_handle_keeps_working(make_ring) -> None:
    ring = make_ring(4096, kind="named")
    name = ring.name
    ring.unlink()
    assert not os.path.exists(f"/dev/shm/mmipc-{name}")
    assert not any(os.path.exists(p) for p in sem_files(ring))
    with pytest.raises(mmipc.RegionNotFound):
        mmipc.Ring.attach(name)
    ring.send(b"still works")
    assert ring.recv_bytes(timeout=5) == b"still works"


def test_last_close_removes_semaphores_and_attach_recreates_them(make_ring) -> None:
    ring = make_ring(4096, kind="file")
    path = ring._region.path
    ring.send_many([b"a", b"b"])
    ring.send(b"c")
    files = sem_files(ring)
    ring.close()
    assert not any(os.path.exists(p) for p in files)
    with mmipc.Ring.attach(path=path) as again:
        assert again._sem_data.value == 2  # one count per unread group
        assert [again.recv_bytes(timeout=5) for _ in range(3)] == [b"a", b"b", b"c"]
        again.unlink()


def test_hugepages_option_creates_a_working_ring(make_ring) -> None:
    ring = make_ring(4 << 20, hugepages=True)
    ring.send(b"x" * 100)
    assert ring.recv_bytes() == b"x" * 100


# -- framing ------------------------------------------------------------------------------------


def test_exact_fit_largest_record_round_trips_twice(make_ring) -> None:
    ring = make_ring(4096)
    payload = bytes(range(256)) * 15 + bytes(ring.max_record - 3840)
    assert len(payload) == ring.max_record
    for _ in range(2):  # the second one starts exactly at the wrap point
        ring.send(payload)
        assert ring.recv_bytes() == payload
    assert ring.stats().used_bytes == 0


def test_record_larger_than_ring_names_both_sizes(make_ring) -> None:
    ring = make_ring(4096)
    with pytest.raises(mmipc.RecordTooLarge) as info:
        ring.send(b"x" * 4065)
    message = str(info.value)
    assert "4065" in message and "4064" in message and "4096" in message
    assert isinstance(info.value, ValueError)
    with pytest.raises(mmipc.RecordTooLarge), ring.reserve(5000):
        pass
    with pytest.raises(mmipc.RecordTooLarge):
        ring.send_many([b"ok", b"x" * 5000])
    assert ring.stats().records_written == 0  # send_many checks every size first
    with pytest.raises(ValueError), ring.reserve(-1):
        pass


def test_wrap_inserts_padding_and_keeps_payloads_contiguous(make_ring) -> None:
    ring = make_ring(256)
    first = b"a" * 100  # a record of 160 bytes; the next one does not fit in the last 96
    ring.send(first)
    assert ring.recv_bytes() == first
    second = b"b" * 100
    ring.send(second)
    mm, base = ring._mm, ring._data_offset
    padding = L.RECORD.unpack_from(mm, base + 160)
    assert padding[:4] == (96 - 32, L.REC_PADDING, L.FLAG_FIRST | L.FLAG_LAST, 160)
    record = L.RECORD.unpack_from(mm, base)
    assert record[:4] == (100, L.REC_DATA, L.FLAG_FIRST | L.FLAG_LAST, 256)
    with ring.recv() as view:
        assert view.contiguous and bytes(view) == second
    stats = ring.stats()
    assert stats.records_written == stats.records_read == 2
    assert stats.used_bytes == 0


def test_zero_length_records(make_ring) -> None:
    ring = make_ring(4096)
    ring.send(b"")
    with ring.reserve(0) as buf:
        assert buf.nbytes == 0
    ring.send_many([b"", b"x", b""])
    assert [ring.recv_bytes() for _ in range(5)] == [b"", b"", b"", b"x", b""]
    assert ring.stats().used_bytes == 0


def test_full_ring_would_block_and_times_out_with_clear_message(make_ring) -> None:
    ring = make_ring(1024)
    sent = fill(ring, b"x" * 100)
    assert sent == 1024 // 160
    with pytest.raises(mmipc.WouldBlock, match="full") as info:
        ring.send_nowait(b"x" * 100)
    assert isinstance(info.value, BlockingIOError)
    with pytest.raises(mmipc.WaitTimeout, match="full") as timeout_info:
        ring.send(b"x" * 100, timeout=0.05)
    assert isinstance(timeout_info.value, TimeoutError)
    with pytest.raises(mmipc.WaitTimeout), ring.reserve(100, timeout=0.05):
        pytest.fail("must not enter")
    assert ring.recv_bytes() == b"x" * 100
    ring.send_nowait(b"y" * 100)  # the space of one record was reclaimed
    assert ring.stats().producer_waits == 2


def test_empty_ring_would_block_and_times_out(make_ring) -> None:
    ring = make_ring(1024)
    with pytest.raises(mmipc.WouldBlock):
        ring.recv_bytes_nowait()
    with pytest.raises(mmipc.WouldBlock), ring.recv_nowait():
        pytest.fail("must not enter")
    with pytest.raises(mmipc.WaitTimeout, match=r"within 0\.05 s"):
        ring.recv_bytes(timeout=0.05)
    with pytest.raises(mmipc.WaitTimeout):
        ring.recv_many(timeout=0.02)


def test_many_laps_of_mixed_sizes_round_trip_in_order(make_ring) -> None:
    ring = make_ring(1024)
    import random

    rng = random.Random(7)
    # One thread is both ends here: a record (with the padding before it) must fit while the
    # padding is unread, so records take at most half the ring (record size <= 512).
    for i in range(3000):
        payload = bytes([i % 256]) * rng.randrange(0, 481)
        ring.send(payload)
        assert ring.recv_bytes() == payload
    stats = ring.stats()
    assert stats.records_written == stats.records_read == 3000
    assert stats.used_bytes == 0


# -- reserve --------------------------------------------------------------------------------------


def test_reserve_commits_on_normal_exit(make_ring) -> None:
    ring = make_ring(4096)
    with ring.reserve(5) as buf:
        assert not buf.readonly and buf.nbytes == 5
        buf[:] = b"hello"
    assert ring.recv_bytes() == b"hello"


def test_reserve_discards_on_exception_and_ring_stays_usable(make_ring) -> None:
    ring = make_ring(4096)
    with pytest.raises(KeyError), ring.reserve(10) as buf:
        buf[:] = b"discarded!"
        raise KeyError("boom")
    with pytest.raises(mmipc.WouldBlock):
        ring.recv_bytes_nowait()
    ring.send(b"next")
    assert ring.recv_bytes() == b"next"
    assert ring.stats().records_written == 1


def test_reservation_cannot_be_entered_twice(make_ring) -> None:
    ring = make_ring(4096)
    reservation = ring.reserve(4)
    with reservation as buf:
        buf[:] = b"abcd"
    with pytest.raises(RuntimeError), reservation:
        pass


def test_reserve_view_is_numpy_writable_in_place(make_ring) -> None:
    np = pytest.importorskip("numpy")
    ring = make_ring(1 << 16)
    with ring.reserve(8 * 100) as buf:
        arr = np.frombuffer(buf, dtype=np.float64)
        arr[:] = np.arange(100)
        del arr
    with ring.recv() as view:
        got = np.frombuffer(view, dtype=np.float64)
        assert got.tolist() == list(map(float, range(100)))
        assert not got.flags.writeable
        del got


# -- recv views and pinning -----------------------------------------------------------------------


def test_recv_view_is_read_only_and_released_after_block(make_ring) -> None:
    ring = make_ring(4096)
    ring.send(b"abc")
    with ring.recv() as view:
        assert view.readonly
        assert bytes(view) == b"abc"
        with pytest.raises(TypeError):
            view[0] = 1  # type: ignore[index]
    with pytest.raises(ValueError):
        bytes(view)  # released
    assert ring.stats().used_bytes == 0


def test_exported_view_pins_record_until_collected(make_ring) -> None:
    np = pytest.importorskip("numpy")
    ring = make_ring(1024)
    ring.send(b"\x07" * 96)
    with ring.recv() as view:
        kept = np.frombuffer(view, dtype=np.uint8)
    # The record is released by the consumer but still referenced: its bytes must survive
    # while the producer fills every other byte of the ring.
    sent = fill(ring, b"\xff" * 96)
    assert sent == (1024 - 128) // 128
    stats = ring.stats()
    assert stats.pinned_records == 1
    with pytest.raises(mmipc.WouldBlock, match="pinned"):
        ring.send_nowait(b"\xff" * 96)
    assert kept.tolist() == [7] * 96
    for _ in range(sent):
        assert ring.recv_bytes() == b"\xff" * 96
    assert kept.tolist() == [7] * 96
    del kept
    gc.collect()
    with pytest.raises(mmipc.WouldBlock):
        ring.recv_bytes_nowait()  # the consumer's next operation notices the export is gone
    ring.send_nowait(b"\x01" * 96)
    assert ring.stats().pinned_records == 0
    assert ring.recv_bytes() == b"\x01" * 96


def test_slices_of_a_view_also_pin(make_ring) -> None:
    ring = make_ring(1024)
    ring.send(b"keep-me!" * 12)
    with ring.recv() as view:
        part = view[8:16]
    fill(ring, b"\x00" * 96)
    assert bytes(part) == b"keep-me!"
    del part
    gc.collect()


def test_received_cannot_be_entered_twice(make_ring) -> None:
    ring = make_ring(1024)
    ring.send(b"a")
    ring.send(b"b")
    received = ring.recv()
    with received as view:
        assert bytes(view) == b"a"
    with pytest.raises(RuntimeError), received:
        pass
    assert ring.recv_bytes() == b"b"


def test_recv_into_and_too_small_buffer_keeps_record(make_ring) -> None:
    ring = make_ring(4096)
    ring.send(b"0123456789")
    small = bytearray(4)
    with pytest.raises(ValueError, match="does not fit"):
        ring.recv_into(small)
    big = bytearray(16)
    assert ring.recv_into(big) == 10
    assert bytes(big[:10]) == b"0123456789"
    assert ring.stats().records_read == 1


# -- batches -----------------------------------------------------------------------------------------


def test_send_many_recv_many_order_and_limits(make_ring) -> None:
    ring = make_ring(1 << 14)
    items = [bytes([i]) * (i % 40) for i in range(100)]
    assert ring.send_many(items) == 100
    assert ring.send_many([]) == 0
    got = ring.recv_many(30)
    assert len(got) == 30
    got += ring.recv_many(1000)
    assert got == items
    with pytest.raises(ValueError):
        ring.recv_many(0)
    assert ring.stats().records_read == 100


def test_send_many_accepts_buffers_of_any_kind(make_ring) -> None:
    ring = make_ring(1 << 14)
    array = pytest.importorskip("array")
    items: list[Any] = [b"by", bytearray(b"ba"), memoryview(b"mv"), array.array("i", [1, 2])]
    ring.send_many(items)
    assert ring.recv_many() == [b"by", b"ba", b"mv", array.array("i", [1, 2]).tobytes()]


def test_send_many_larger_than_the_ring_waits_for_a_consumer(make_ring) -> None:
    ring = make_ring(2048)
    items = [i.to_bytes(4, "little") * 25 for i in range(500)]  # 500 * 160 bytes >> 2048
    got: list[bytes] = []

    def consumer() -> None:
        while len(got) < len(items):
            got.extend(ring.recv_many(timeout=10))

    thread = threading.Thread(target=consumer)
    thread.start()
    assert ring.send_many(items, timeout=10) == 500
    thread.join(20)
    assert got == items


def test_send_many_timeout_reports_progress(make_ring) -> None:
    ring = make_ring(1024)
    with pytest.raises(mmipc.WaitTimeout, match=r"sent \d+ of 50 items"):
        ring.send_many([b"x" * 100] * 50, timeout=0.05)
    sent = ring.stats().records_written
    assert 0 < sent < 50
    assert len(ring.recv_many(100)) == sent


def test_recv_many_stops_at_end_of_stream(make_ring) -> None:
    ring = make_ring(4096)
    ring.send_many([b"1", b"2"])
    ring.end_stream()
    assert ring.recv_many() == [b"1", b"2"]
    for _ in range(2):
        with pytest.raises(mmipc.EndOfStream):
            ring.recv_many()


# -- end of stream and iteration -------------------------------------------------------------------


def test_end_stream_drains_then_raises_and_blocks_sends(make_ring) -> None:
    ring = make_ring(4096)
    ring.send(b"last")
    ring.end_stream()
    ring.end_stream()  # idempotent
    assert ring.stats().end_of_stream
    with pytest.raises(mmipc.EndOfStream) as info:
        ring.send(b"more")
    assert isinstance(info.value, EOFError)
    with pytest.raises(mmipc.EndOfStream), ring.reserve(1):
        pass
    assert ring.recv_bytes() == b"last"
    for _ in range(3):
        with pytest.raises(mmipc.EndOfStream, match="drained"):
            ring.recv_bytes(timeout=1)
    with pytest.raises(mmipc.EndOfStream), ring.recv():
        pass
    assert "ended" in repr(ring)


def test_iteration_yields_every_record_then_stops(make_ring) -> None:
    ring = make_ring(4096)
    ring.send_many([b"a", b"b", b"c"])
    ring.end_stream()
    assert list(ring) == [b"a", b"b", b"c"]
    assert list(ring) == []


# -- roles, closing, repr, stats, pickling --------------------------------------------------------


def test_single_writer_and_single_consumer_roles_are_exclusive(make_ring) -> None:
    ring = make_ring(4096, kind="named")
    ring.send(b"x")
    ring.recv_bytes()
    with mmipc.Ring.attach(ring.name) as other:
        with pytest.raises(mmipc.BusyError, match="single-writer"):
            other.send(b"y")
        with pytest.raises(mmipc.BusyError, match="consumer"):
            other.recv_bytes_nowait()
    assert isinstance(mmipc.BusyError("x"), RuntimeError)


def test_roles_pass_on_after_close(make_ring) -> None:
    ring = make_ring(4096, kind="named")
    other = mmipc.Ring.attach(ring.name)
    ring.send(b"from first")
    assert other.recv_bytes() == b"from first"
    ring_name = ring.name
    other.close()
    with mmipc.Ring.attach(ring_name) as third:
        ring.send(b"again")
        assert third.recv_bytes() == b"again"


def test_closed_handle_raises_closed_error(make_ring) -> None:
    ring = make_ring(4096)
    ring.close()
    ring.close()  # idempotent
    assert ring.closed
    for call in (
        lambda: ring.send(b"x"),
        lambda: ring.recv_bytes(),
        lambda: ring.recv_many(),
        lambda: ring.stats(),
        lambda: ring.flush(),
        lambda: ring.unlink(),
        lambda: ring.end_stream(),
        lambda: pickle.dumps(ring),
    ):
        with pytest.raises(mmipc.ClosedError, match="closed"):
            call()
    with pytest.raises(mmipc.ClosedError), ring.reserve(1):
        pass
    assert "closed" in repr(ring)


def test_context_manager_closes(make_ring) -> None:
    ring = make_ring(4096)
    with ring as entered:
        assert entered is ring
    assert ring.closed


def test_repr_and_stats(make_ring) -> None:
    ring = make_ring(1 << 20, kind="named", multi_writer=True)
    ring.send_many([b"x" * 10, b"y" * 20])
    ring.recv_bytes()
    text = repr(ring)
    assert text.startswith("<mmipc.Ring ") and ring.name in text
    assert "named" in text and "capacity=1.0 MiB" in text and "multi-writer" in text
    assert "roles=consumer" in text
    stats = ring.stats()
    assert stats == mmipc.RingStats(
        name=ring.name,
        capacity=1 << 20,
        used_bytes=96,  # one batch record (46 bytes) holds both items until both are read
        records_written=2,
        bytes_written=30,
        records_read=1,
        bytes_read=10,
        producer_waits=0,
        consumer_waits=0,
        recoveries=0,
        pinned_records=0,
        end_of_stream=False,
        participants=1,
    )
    with pytest.raises(AttributeError):
        stats.capacity = 1  # type: ignore[misc]


def test_direct_construction_is_refused() -> None:
    with pytest.raises(TypeError, match=r"Ring\.create"):
        mmipc.Ring(None)  # type: ignore[arg-type]


# -- across processes --------------------------------------------------------------------------------


def run_pair(ctx: Any, ring: mmipc.Ring, target: Any, args: tuple[Any, ...]) -> list[bytes]:
    results = ctx.Queue()
    producer = ctx.Process(target=target, args=(ring, *args))
    consumer = ctx.Process(target=consume, args=(ring, results))
    producer.start()
    consumer.start()
    try:
        got = results.get(timeout=60)
    finally:
        producer.join(30)
        consumer.join(30)
        for proc in (producer, consumer):
            if proc.is_alive():
                proc.kill()
                proc.join()
    assert producer.exitcode == 0 and consumer.exitcode == 0
    return got


def test_producer_and_consumer_processes_copy_path(make_ring, mp_context) -> None:
    ring = make_ring(1 << 14)
    got = run_pair(mp_context, ring, produce, (2000, 200))
    assert got == [i.to_bytes(4, "little") * 50 for i in range(2000)]


def test_producer_and_consumer_processes_reserve_path(make_ring, mp_context) -> None:
    ring = make_ring(4096)
    got = run_pair(mp_context, ring, produce_in_place, (3000,))
    assert len(got) == 3000
    for i, record in enumerate(got):
        assert record == i.to_bytes(8, "little") + bytes([i % 251]) * (i % 50)


def test_producer_and_consumer_processes_batches(make_ring, mp_context) -> None:
    ring = make_ring(8192)
    got = run_pair(mp_context, ring, produce_batches, (50, 64))
    assert got == [i.to_bytes(8, "little") * (1 + (i % 64) % 7) for i in range(50 * 64)]


def test_named_rings_from_an_unrelated_process(make_ring) -> None:
    requests = make_ring(4096, kind="named")
    replies = make_ring(4096, kind="named")
    code = (
        "import mmipc\n"
        f"with mmipc.Ring.attach({requests.name!r}) as rq, mmipc.Ring.attach({replies.name!r}) as rp:\n"
        "    rp.send(rq.recv_bytes(timeout=30).upper(), timeout=30)\n"
    )
    requests.send(b"ping")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert replies.recv_bytes(timeout=10) == b"PING"


def test_pickled_ring_in_same_process_attaches_again(make_ring) -> None:
    ring = make_ring(4096, kind="named")
    clone = pickle.loads(pickle.dumps(ring))
    try:
        ring.send(b"via clone")
        assert clone.recv_bytes(timeout=5) == b"via clone"
        assert clone.name == ring.name
    finally:
        clone.close()


def test_file_ring_persists_unconsumed_records(tmp_path) -> None:
    path = tmp_path / "persist.ring"
    ring = mmipc.Ring.create(4096, path=path)
    ring.send_many([b"one", b"two", b"three"])
    assert ring.recv_bytes() == b"one"
    ring.flush()
    ring.close()
    assert path.exists()
    again = mmipc.Ring.attach(path=path)
    try:
        assert again.recv_bytes(timeout=5) == b"two"
        again.send(b"four")
    finally:
        again.close()
    third = mmipc.Ring.attach(path=path)
    try:
        assert [third.recv_bytes(timeout=5) for _ in range(2)] == [b"three", b"four"]
        assert third.stats().records_written == 4
    finally:
        third.unlink()
        third.close()
    assert not path.exists()


def test_attach_in_a_forked_child_gets_its_own_slot(make_ring) -> None:
    ring = make_ring(4096)
    ring.send(b"x")
    parent_slot = ring._slot
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        try:
            os.close(read)
            os.write(write, str(ring._slot).encode())
        finally:
            os._exit(0)
    os.close(write)
    child_slot = int(os.read(read, 100))
    os.close(read)
    os.waitpid(pid, 0)
    assert child_slot != parent_slot
    assert ring.stats().participants == 1  # the child left (its lock died with it)
    assert ring._region.kind == L.KIND_RING


# -- sequence numbers ---------------------------------------------------------------------------


def test_sequence_gap_is_corruption_unless_the_writer_changed(make_ring) -> None:
    ring = make_ring(4096, kind="named")
    ring.send(b"zero")
    assert ring.recv_bytes() == b"zero"
    # A record counted but never published, as a writer killed between the two stores leaves:
    ring._words[L.W_RECORDS_WRITTEN] += 1
    ring.send(b"two")
    with pytest.raises(mmipc.CorruptionError, match="sequence number 2, expected 1"):
        ring.recv_bytes()
    # The same gap after the writing role changed hands is legitimate.
    ring._words[L.W_WRITER_EPOCH] += 1
    assert ring.recv_bytes() == b"two"
    ring.send_many([b"three", b"four"])
    assert ring.recv_many() == [b"three", b"four"]


def test_a_new_writer_after_a_lost_record_is_accepted(make_ring) -> None:
    ring = make_ring(4096, kind="named")
    ring.send(b"zero")
    assert ring.recv_bytes() == b"zero"
    ring._words[L.W_RECORDS_WRITTEN] += 1  # counted, never published, writer gone:
    ring._region.unlock(L.LOCK_ROLE_WRITER)
    ring._writer_role = False
    with mmipc.Ring.attach(ring.name) as writer:
        writer.send(b"from the next writer")  # claiming the role moves writer_epoch
    assert ring.recv_bytes() == b"from the next writer"


# -- batch records (send_many packs small items) ------------------------------------------------


def test_send_many_packs_small_items_into_batch_records(make_ring) -> None:
    ring = make_ring(1 << 16)
    items = [bytes([i % 256]) * (i % 40) for i in range(300)]
    assert ring.send_many(items) == 300
    base = ring._data_offset
    first = L.RECORD.unpack_from(ring._mm, base)
    assert first[1] == L.REC_BATCH and first[4] == 0  # type, sequence of its first item
    count, reserved = L.BATCH_HEAD.unpack_from(ring._mm, base + 32)
    assert 2 <= count <= 300 and reserved == 0
    got = [ring.recv_bytes()]  # every receive call takes the items one by one
    got += ring.recv_many(1)
    got += ring.recv_many(7)
    with ring.recv() as view:
        got.append(bytes(view))
    buffer = bytearray(64)
    got.append(bytes(buffer[: ring.recv_into(buffer)]))
    while len(got) < 300:
        got += ring.recv_many(1000)
    assert got == items
    stats = ring.stats()
    assert stats.records_written == stats.records_read == 300
    assert stats.bytes_written == stats.bytes_read == sum(map(len, items))
    assert stats.used_bytes == 0


def test_mixed_sizes_keep_order_across_batch_and_data_records(make_ring) -> None:
    ring = make_ring(1 << 16)
    items = [b"a" * 2000, b"b", b"c", b"d" * 5000, b"e", b"", b"f" * 1024, b"g" * 1025]
    ring.send_many(items)
    assert ring.recv_many() == items
    ring.send_many([b"only"])  # a run of one small item is a plain data record
    assert L.RECORD.unpack_from(ring._mm, ring._data_offset + ring._read_pos % ring.capacity)[1] == L.REC_DATA
    assert ring.recv_bytes() == b"only"


def test_recv_into_too_small_keeps_a_batch_item(make_ring) -> None:
    ring = make_ring(1 << 16)
    ring.send_many([b"x" * 10, b"y" * 20, b"z"])
    with pytest.raises(ValueError, match="does not fit"):
        ring.recv_into(bytearray(5))
    assert [ring.recv_bytes() for _ in range(3)] == [b"x" * 10, b"y" * 20, b"z"]


def test_a_pinned_batch_item_keeps_the_whole_batch_record(make_ring) -> None:
    np = pytest.importorskip("numpy")
    ring = make_ring(1 << 16)
    ring.send_many([b"\x07" * 16, b"\x08" * 16])
    with ring.recv() as view:
        kept = np.frombuffer(view, dtype=np.uint8)
    with ring.recv() as view:
        assert bytes(view) == b"\x08" * 16
    assert ring.stats().used_bytes > 0 and ring.stats().pinned_records == 1
    assert kept.tolist() == [7] * 16
    del kept
    gc.collect()
    with pytest.raises(mmipc.WouldBlock):
        ring.recv_bytes_nowait()
    assert ring.stats().used_bytes == 0 and ring.stats().pinned_records == 0


def test_next_consumer_resumes_inside_a_batch_at_the_first_unreleased_item(make_ring) -> None:
    ring = make_ring(1 << 16, kind="named")
    ring.send_many([b"1", b"2", b"3", b"4"])
    with mmipc.Ring.attach(ring.name) as first:
        assert first.recv_bytes() == b"1"
        assert first.recv_many(1) == [b"2"]  # then it leaves with 3 and 4 unread
    assert ring._words[L.W_HEAD_SKIP_POS] == ring._words[L.W_HEAD] and ring._words[L.W_HEAD_SKIP] == 2
    assert ring.recv_many() == [b"3", b"4"]
    assert ring.stats().used_bytes == 0


@pytest.mark.parametrize(
    "corrupt",
    [
        ("count", lambda mm, base: L.BATCH_HEAD.pack_into(mm, base + 32, 1, 0)),
        ("reserved", lambda mm, base: L.BATCH_HEAD.pack_into(mm, base + 32, 3, 9)),
        ("lengths", lambda mm, base: struct.pack_into("<I", mm, base + 40, 2)),
    ],
    ids=lambda c: c[0],
)
def test_corrupt_batch_record_is_corruption_error(make_ring, corrupt) -> None:
    ring = make_ring(1 << 16)
    ring.send_many([b"aaaa", b"bbbb", b"cccc"])
    corrupt[1](ring._mm, ring._data_offset)
    with pytest.raises(mmipc.CorruptionError, match="batch record"):
        ring.recv_bytes()


def test_recv_many_max_bytes_bounds_one_call(make_ring) -> None:
    ring = make_ring(1 << 16)
    ring.send_many([bytes([i]) * 2000 for i in range(10)])
    first = ring.recv_many(max_bytes=5000)
    assert [r[0] for r in first] == [0, 1, 2]  # about max_bytes, and at least one record
    assert len(ring.recv_many(max_bytes=1)) == 1
    assert [r[0] for r in ring.recv_many()] == list(range(4, 10))


# -- recv_views ------------------------------------------------------------------------------


def test_recv_views_single_consumer_pins_in_order(make_ring: Any) -> None:
    """``recv_views`` on a single-consumer ring: data records and batch items as zero-copy views;
    space comes back in ring order once the views are unreferenced.

    Asserts: 4 data records and 3 batch items arrive as 7 read-only views in one call; with
    view 0 kept and the others dropped, nothing is freed (the oldest holds the head) and one
    record is pinned; dropping view 0 frees everything.
    """
    from _ringchild import check_numbered, numbered

    ring = make_ring(1 << 14)
    for s in range(4):
        ring.send(numbered(s))
    ring.send_many([numbered(s) for s in range(4, 7)])
    used = ring.stats().used_bytes
    views = ring.recv_views(100, timeout=10.0)
    assert [check_numbered(v) for v in views] == list(range(7))
    assert all(v.readonly for v in views)
    first = views[0]
    del views
    assert ring.release_views() == 1
    assert ring.stats().used_bytes == used
    del first
    assert ring.stats().used_bytes == 0
    with pytest.raises(mmipc.WouldBlock):
        ring.recv_bytes_nowait()
