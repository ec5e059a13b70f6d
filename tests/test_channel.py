"""Channel: objects over a ring, large buffers out-of-band in the shared heap (real processes)."""

from __future__ import annotations

import ctypes
import gc
import json
import multiprocessing
import pickle
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import mmipc
from mmipc import _layout as L

pytestmark = pytest.mark.timeout(60)

MiB = 1 << 20


class Buffers:
    """An object that pickles to several out-of-band buffers."""

    def __init__(self, *parts: bytes) -> None:
        self.parts = [bytearray(p) for p in parts]

    def __reduce_ex__(self, protocol: Any) -> Any:
        return (_rebuild_buffers, tuple(pickle.PickleBuffer(p) for p in self.parts))


def _rebuild_buffers(*parts: Any) -> Buffers:
    out = Buffers()
    out.parts = [bytes(p) for p in parts]
    return out


def _assert_equal(a: Any, b: Any) -> None:
    if isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray)
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(a, b)
    elif isinstance(a, Buffers):
        assert [bytes(p) for p in a.parts] == [bytes(p) for p in b.parts]
    elif isinstance(a, (bytes, bytearray, memoryview)) and isinstance(b, memoryview):
        assert bytes(a) == bytes(b)
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            _assert_equal(x, y)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            _assert_equal(a[key], b[key])
    else:
        assert a == b


def sample_objects() -> list[Any]:
    big = np.arange(40_000, dtype=np.float64)
    return [
        None,
        42,
        "text",
        (1, 2, 3, 4, 5),
        {f"key{i}": i for i in range(10)},
        {"nested": [1, (2, 3), {"x": [b"bytes", bytearray(b"ba")]}], "set": {1, 2}},
        b"",
        b"small bytes",
        b"\x01" * 200_000,
        bytearray(b"\x02" * 150_000),
        memoryview(b"\x03" * 100),
        big,
        big.reshape(200, 200),
        np.asfortranarray(big.reshape(200, 200)),
        big[::3],  # non-contiguous: travels in-band
        np.arange(100_000, dtype=np.int8),
        np.arange(30_000, dtype=np.complex128),
        np.zeros(70_000, dtype=bool),
        np.zeros((0, 5), dtype=np.float32),
        np.array(3.5),
        np.zeros(20_000, dtype=[("a", "<i4"), ("b", "<f8")]),
        [np.ones(20_000), np.full(30_000, 2.0), {"inner": np.arange(17_000)}],
        Buffers(b"a" * 70_000, b"b" * 80_000, b"c" * 10),
    ]


def test_round_trip_in_process(make_channel: Callable[..., mmipc.Channel]) -> None:
    chan = make_channel(MiB, heap_size=8 * MiB)
    for obj in sample_objects():
        chan.send(obj)
        got = chan.recv()
        _assert_equal(obj, got)
        del got
    gc.collect()
    stats = chan.stats()
    assert stats.heap_blocks_in_use == 0 and stats.heap_blocks_held == 0
    assert stats.objects_sent == stats.objects_received == len(sample_objects())


# -- multi-process round trips -------------------------------------------------------------------


def _producer(chan: mmipc.Channel) -> None:
    for obj in sample_objects():
        chan.send(obj, timeout=30)
    with chan.reserve_array((300, 100), "float32", timeout=30) as arr:
        arr[...] = np.arange(30_000, dtype=np.float32).reshape(300, 100)
    chan.end_stream()
    chan.close()


def _consumer(chan: mmipc.Channel, results: Any) -> None:
    try:
        got = []
        while True:
            try:
                got.append(chan.recv(timeout=30))
            except mmipc.EndOfStream:
                break
        expected = [*sample_objects(), np.arange(30_000, dtype=np.float32).reshape(300, 100)]
        assert len(got) == len(expected)
        for a, b in zip(expected, got, strict=True):
            _assert_equal(a, b)
        results.put("ok")
    except BaseException as exc:  # report to the test
        results.put(repr(exc))
    finally:
        chan.close()


def test_child_producer_every_start_method(
    mp_context: multiprocessing.context.BaseContext, make_channel: Callable[..., mmipc.Channel]
) -> None:
    chan = make_channel(MiB, heap_size=8 * MiB)
    child = mp_context.Process(target=_producer, args=(chan,))
    child.start()
    got = []
    while True:
        try:
            got.append(chan.recv(timeout=30))
        except mmipc.EndOfStream:
            break
    child.join(30)
    assert child.exitcode == 0
    expected = [*sample_objects(), np.arange(30_000, dtype=np.float32).reshape(300, 100)]
    assert len(got) == len(expected)
    for a, b in zip(expected, got, strict=True):
        _assert_equal(a, b)
    arr = got[-1]
    assert arr.flags.writeable is False
    del got, arr, b
    gc.collect()
    assert chan.stats().heap_blocks_in_use == 0


def test_child_consumer_every_start_method(
    mp_context: multiprocessing.context.BaseContext, make_channel: Callable[..., mmipc.Channel]
) -> None:
    chan = make_channel(MiB, heap_size=8 * MiB)
    results = mp_context.Queue()
    child = mp_context.Process(target=_consumer, args=(chan, results))
    child.start()
    _producer_in_parent(chan)
    assert results.get(timeout=30) == "ok"
    child.join(30)
    assert child.exitcode == 0


def _producer_in_parent(chan: mmipc.Channel) -> None:
    for obj in sample_objects():
        chan.send(obj, timeout=30)
    with chan.reserve_array((300, 100), "float32", timeout=30) as arr:
        arr[...] = np.arange(30_000, dtype=np.float32).reshape(300, 100)
    chan.end_stream()


def _multi_producer(chan: mmipc.Channel, index: int, count: int) -> None:
    for i in range(count):
        chan.send((index, i, np.full(20_000, index * 1000 + i, dtype=np.int64)), timeout=30)
    chan.close()


def test_many_producers(make_channel: Callable[..., mmipc.Channel]) -> None:
    chan = make_channel(256 << 10, heap_size=2 * MiB, multi_writer=True)
    ctx = multiprocessing.get_context("fork")
    children = [ctx.Process(target=_multi_producer, args=(chan, k, 60)) for k in range(3)]
    for child in children:
        child.start()
    seen: dict[int, list[int]] = {0: [], 1: [], 2: []}
    for _ in range(180):
        index, i, arr = chan.recv(timeout=30)
        assert arr.shape == (20_000,) and int(arr[0]) == int(arr[-1]) == index * 1000 + i
        seen[index].append(i)
    for child in children:
        child.join(30)
        assert child.exitcode == 0
    assert all(v == list(range(60)) for v in seen.values())


# -- views, pinning, reclaim ---------------------------------------------------------------------


def _heap_address_range(chan: mmipc.Channel) -> tuple[int, int]:
    mm = chan._heap_region.mm  # type: ignore[union-attr]
    assert mm is not None
    anchor = ctypes.c_char.from_buffer(mm)
    start = ctypes.addressof(anchor)
    del anchor
    return start, start + len(mm)


def test_received_arrays_are_read_only_views_of_the_heap(make_channel: Callable[..., mmipc.Channel]) -> None:
    chan = make_channel()
    sent = np.arange(50_000, dtype=np.float64)
    chan.send(sent)
    got = chan.recv()
    assert got.flags.writeable is False
    with pytest.raises(ValueError):
        got[0] = 1.0
    start, end = _heap_address_range(chan)
    address = got.__array_interface__["data"][0]
    assert start <= address and address + got.nbytes <= end
    base = got
    while isinstance(base, np.ndarray) and base.base is not None:
        base = base.base
    assert isinstance(base, memoryview) and base.readonly
    assert not np.shares_memory(got, sent)
    assert chan.stats().heap_blocks_held == 1


def test_copy_true_returns_owned_writable_objects(make_channel: Callable[..., mmipc.Channel]) -> None:
    chan = make_channel()
    chan.send({"a": np.arange(50_000.0), "b": b"x" * 100_000})
    got = chan.recv(copy=True)
    assert got["a"].flags.writeable is True
    got["a"][0] = -1.0
    start, end = _heap_address_range(chan)
    assert not start <= got["a"].__array_interface__["data"][0] < end
    assert got["b"] == b"x" * 100_000
    assert chan.stats().heap_blocks_in_use == 0
    chan.send(b"y" * 100_000)
    raw = chan.recv(copy=True)
    assert type(raw) is bytes and raw == b"y" * 100_000


def test_gc_returns_blocks(make_channel: Callable[..., mmipc.Channel]) -> None:
    chan = make_channel(MiB, heap_size=4 * MiB)
    held = []
    for i in range(20):
        chan.send(np.full(10_000, i))
        held.append(chan.recv())
    stats = chan.stats()
    assert stats.heap_blocks_held == 20 and stats.heap_bytes_held == 20 * 80_000
    view = held[3][10:20]  # a slice keeps its block alive
    del held
    gc.collect()
    assert chan.stats().heap_blocks_held == 1
    assert list(view) == [3] * 10
    del view
    assert chan.stats().heap_blocks_in_use == 0


def test_held_arrays_do_not_stall_and_stay_intact(make_channel: Callable[..., mmipc.Channel]) -> None:
    chan = make_channel(256 << 10, heap_size=MiB)
    chan.send(np.arange(20_000, dtype=np.int64))
    kept = chan.recv()
    total = 0
    i = 0
    while total < 20 * MiB:  # 20 times the heap, while `kept` pins its block
        chan.send(np.full(25_000, i, dtype=np.int64), timeout=5)
        arr = chan.recv(timeout=5)
        assert int(arr[0]) == i
        total += arr.nbytes
        i += 1
    np.testing.assert_array_equal(kept, np.arange(20_000, dtype=np.int64))
    assert chan.stats().ring.used_bytes == 0  # the ring record was released at once


def test_back_pressure_names_what_is_held(make_channel: Callable[..., mmipc.Channel]) -> None:
    chan = make_channel(MiB, heap_size=MiB)
    held = []
    with pytest.raises(mmipc.HeapExhausted) as info:
        for _ in range(100):
            chan.send(np.zeros(100_000), timeout=0.2)
            held.append(chan.recv())
    message = str(info.value)
    assert "held blocks" in message and "800000 bytes" in message and "process" in message
    assert isinstance(info.value, TimeoutError)
    del held
    chan.send(np.ones(100_000), timeout=1)  # usable again once the arrays are dropped
    assert float(chan.recv().sum()) == 100_000.0
    with pytest.raises(mmipc.WouldBlock):
        chan.recv_nowait()


# -- errors ------------------------------------------------------------------------------------


def test_object_too_large_for_the_ring(make_channel: Callable[..., mmipc.Channel]) -> None:
    chan = make_channel(4096)
    with pytest.raises(mmipc.RecordTooLarge) as info:
        chan.send(list(range(10_000)))
    assert "capacity >=" in str(info.value) and "bytes in-band" in str(info.value)
    with pytest.raises(mmipc.RecordTooLarge) as info2:
        chan.send(np.zeros(10_000))  # 80000 bytes, heap of 4096
    assert "heap_size >= 80064" in str(info2.value)
    chan.send("still usable")
    assert chan.recv() == "still usable"


def test_unpicklable_object_sends_nothing(make_channel: Callable[..., mmipc.Channel]) -> None:
    chan = make_channel()
    with pytest.raises(mmipc.SerializationError):
        chan.send({"f": lambda: None, "a": np.zeros(100_000)})
    assert chan.stats().objects_sent == 0 and chan.stats().heap_blocks_in_use == 0
    chan.send(1)
    assert chan.recv() == 1


def test_corrupt_records_raise(make_channel: Callable[..., mmipc.Channel]) -> None:
    chan = make_channel()
    chan._ring.send(b"not a channel record")
    with pytest.raises(mmipc.CorruptionError):
        chan.recv()
    bogus = L.CHAN_HEAD.pack(L.CHAN_MAGIC, L.FMT_OBJECT, L.SER_PICKLE, 1) + L.CHAN_BUFFER.pack(12345, 1, 10)
    chan._ring.send(bogus)
    with pytest.raises(mmipc.CorruptionError, match=r"outside the arena|bad header"):
        chan.recv()
    chan._ring.send(L.CHAN_HEAD.pack(L.CHAN_MAGIC, L.FMT_OBJECT, L.SER_PICKLE, 5))
    with pytest.raises(mmipc.CorruptionError, match="announces 5 buffers"):
        chan.recv()
    chan.send("after")
    assert chan.recv() == "after"


def test_corrupt_record_in_a_batch_loses_nothing_else(make_channel: Callable[..., mmipc.Channel]) -> None:
    chan = make_channel()
    chan.send("first")
    chan._ring.send(b"\x80\x05garbage")  # a bare pickle stream that does not unpickle
    chan.send(np.arange(20_000))  # out-of-band, after the bad record
    chan.send("last")
    assert chan.recv_many(10, timeout=5) == ["first"]
    with pytest.raises(mmipc.SerializationError, match="cannot unpickle"):
        chan.recv_many(10, timeout=5)
    rest = chan.recv_many(10, timeout=5)
    np.testing.assert_array_equal(rest[0], np.arange(20_000))
    assert rest[1:] == ["last"]
    del rest
    gc.collect()
    assert chan.stats().heap_blocks_in_use == 0


def test_batch_blocks_are_not_reclaimed_before_they_are_held(
    make_channel: Callable[..., mmipc.Channel],
) -> None:
    """recv_many takes several records from the ring before holding their blocks: a producer
    reclaiming space in between must see them as still needed (the receiver's done mark)."""
    producer = make_channel(MiB, heap_size=MiB)
    receiver = pickle.loads(pickle.dumps(producer))  # a second handle: its own heap slot
    try:
        part = 300_000 // 8
        producer.send(np.full(part, 1.0))
        producer.send(np.full(part, 2.0))
        take_blocks = receiver._take_blocks
        calls: list[int] = []
        outcomes: list[str] = []

        def take_then_let_the_producer_scan(data: bytes, nbufs: int, copy: bool) -> list[Any]:
            calls.append(nbufs)
            if len(calls) == 2:
                # The first record's block is held, the second's not yet: only reclaiming the
                # second record's block could make room for this one.
                try:
                    producer.send(np.full(2 * part, 3.0), timeout=0)
                    outcomes.append("sent")
                except mmipc.HeapExhausted:
                    outcomes.append("exhausted")
            return take_blocks(data, nbufs, copy)

        receiver._take_blocks = take_then_let_the_producer_scan  # type: ignore[method-assign]
        first, second = receiver.recv_many(2, timeout=5)
        assert outcomes == ["exhausted"]
        np.testing.assert_array_equal(first, np.full(part, 1.0))
        np.testing.assert_array_equal(second, np.full(part, 2.0))
    finally:
        receiver.close()


def test_closed_channel(make_channel: Callable[..., mmipc.Channel]) -> None:
    chan = make_channel()
    chan.close()
    assert "closed" in repr(chan)
    with pytest.raises(mmipc.ClosedError):
        chan.send(1)
    with pytest.raises(mmipc.ClosedError):
        chan.recv()
    with pytest.raises(mmipc.ClosedError):
        pickle.dumps(chan)


# -- serializers, batches, attach ---------------------------------------------------------------


def test_raw_serializer(make_channel: Callable[..., mmipc.Channel]) -> None:
    chan = make_channel(serializer="raw")
    chan.send(b"abc")
    small = chan.recv()
    assert isinstance(small, memoryview) and small.readonly and bytes(small) == b"abc"
    chan.send(np.arange(50_000, dtype=np.uint8))
    big = chan.recv()
    assert isinstance(big, memoryview) and bytes(big) == bytes(np.arange(50_000, dtype=np.uint8))
    chan.send(b"q" * 100_000)
    assert chan.recv(copy=True) == bytearray(b"q" * 100_000)
    with pytest.raises(mmipc.SerializationError):
        chan.send({"not": "bytes"})


def test_pair_serializer_and_attach_by_name(make_channel: Callable[..., mmipc.Channel]) -> None:
    chan = make_channel(kind="named", serializer=(json.dumps, json.loads))
    chan.send({"a": [1, 2]})
    with pytest.raises(ValueError, match="custom serializer"):
        mmipc.Channel.attach(chan.name)
    other = mmipc.Channel.attach(chan.name, serializer=mmipc.PairSerializer(json.dumps, json.loads))
    try:
        assert other.recv() == {"a": [1, 2]}
    finally:
        other.close()


def test_attach_by_path_keeps_settings(make_channel: Callable[..., mmipc.Channel]) -> None:
    chan = make_channel(kind="file", serializer="raw", copy_threshold=1000)
    path = chan._ring._region.path
    with mmipc.Channel.attach(path=path) as other:
        assert other.serializer.name == "raw" and other.copy_threshold == 1000
        other.send(b"z" * 5000)
    got = chan.recv()
    assert bytes(got) == b"z" * 5000


def test_attach_plain_ring_has_no_heap(make_ring: Callable[..., mmipc.Ring]) -> None:
    ring = make_ring(MiB, kind="named")
    chan = mmipc.Channel.attach(ring.name)
    try:
        assert chan.heap_size == 0
        chan.send(b"x" * 100_000)  # everything in-band
        assert chan.recv() == b"x" * 100_000
    finally:
        chan.close()


def test_batches_iteration_and_context_manager(make_channel: Callable[..., mmipc.Channel]) -> None:
    with make_channel() as chan:
        objs = [(i, i + 1, i + 2, i + 3, i + 4) for i in range(500)]
        objs[100] = np.arange(20_000)
        assert chan.send_many(objs) == 500
        got = []
        while len(got) < 500:
            got.extend(chan.recv_many(128, timeout=5))
        for a, b in zip(objs, got, strict=True):
            _assert_equal(a, b)
        chan.send("last")
        chan.end_stream()
        assert list(chan) == ["last"]
        with pytest.raises(mmipc.EndOfStream):
            chan.send(1)
        assert "mmipc.Channel" in repr(chan)
    assert chan.closed


def test_reserve_array_discarded_on_exception(make_channel: Callable[..., mmipc.Channel]) -> None:
    chan = make_channel()
    with pytest.raises(RuntimeError), chan.reserve_array((100, 100), "int16") as arr:
        arr[...] = 1
        raise RuntimeError("abandon")
    assert chan.stats().heap_blocks_in_use == 0 and chan.stats().objects_sent == 0
    with chan.reserve_array((), "float64") as scalar:
        scalar[...] = 2.5
    with chan.reserve_array((0, 3), "int32"):
        pass
    got = chan.recv()
    assert got.shape == () and float(got) == 2.5
    empty = chan.recv()
    assert empty.shape == (0, 3) and empty.dtype == np.int32
    with pytest.raises(ValueError), chan.reserve_array(3, object):
        pass
