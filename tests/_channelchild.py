"""Self-validating channel messages and child-process bodies for the Channel crash tests.

Module level so that ``spawn`` and ``forkserver`` children can import them.

Every message is ``(producer, seq, array)`` where the array's length and contents are a pure
function of ``(producer, seq)`` (:func:`pattern`), so the receiver can check each object
byte for byte, and its per-producer order, without any side channel.
"""

from __future__ import annotations

import os
import random
import struct
import time
from typing import Any

import numpy as np

import mmipc

SEND_TIMEOUT = 30.0  # children never wait forever, even if the test process died
REPORT = struct.Struct("<Q")  # one seq per report: a single 8-byte pipe write (atomic)


def array_len(producer: int, seq: int, lo: int, hi: int) -> int:
    """Number of uint64 items of message ``seq`` of ``producer``, in ``[lo, hi]`` (deterministic)."""
    return random.Random(producer * 1_000_003 + seq).randint(lo, hi)


def pattern(producer: int, seq: int, n: int) -> np.ndarray:
    """The array of message ``seq`` of ``producer``: unique per message and per item."""
    return np.arange(n, dtype=np.uint64) + np.uint64(producer << 48 | seq << 24)


def expected(producer: int, seq: int, lo: int, hi: int) -> np.ndarray:
    return pattern(producer, seq, array_len(producer, seq, lo, hi))


def check_message(obj: Any, lo: int, hi: int) -> tuple[int, int]:
    """Assert that ``obj`` is an intact message; return its ``(producer, seq)``."""
    assert isinstance(obj, tuple) and len(obj) in (3, 4), f"not a message: {type(obj)}"
    producer, seq, arr = obj[:3]
    want = expected(producer, seq, lo, hi)
    if len(obj) == 4:  # a second out-of-band buffer: the array reversed
        assert np.array_equal(obj[3], want[::-1]), f"message {producer}/{seq}: second array differs"
    assert isinstance(arr, np.ndarray) and arr.dtype == np.uint64, f"{producer}/{seq}: {arr!r:.80}"
    assert arr.shape == want.shape, f"message {producer}/{seq}: shape {arr.shape} != {want.shape}"
    assert np.array_equal(arr, want), f"message {producer}/{seq}: contents differ (half-written?)"
    return producer, seq


MIXED = ("send", "reserve", "two")
ONE_BLOCK = ("send", "reserve")  # exactly one heap block per message


def send_message(chan: mmipc.Channel, producer: int, seq: int, lo: int, hi: int, how: str) -> None:
    """Send one message with ``send`` or (``how == "reserve"``) build its array in place in two steps.

    ``reserve`` sends the array alone (a bare array), which the receiver maps back to the
    message with :func:`as_message` (its first item names producer and seq); ``two`` sends a
    second array (the first reversed): two heap blocks for one object.
    """
    want = expected(producer, seq, lo, hi)
    if how == "two":
        chan.send((producer, seq, want, want[::-1].copy()), timeout=SEND_TIMEOUT)
    elif how == "reserve":
        with chan.reserve_array(want.shape, want.dtype, timeout=SEND_TIMEOUT) as arr:
            half = len(want) // 2
            arr[:half] = want[:half]  # written in two steps: a kill may land in between
            arr[half:] = want[half:]
    else:
        chan.send((producer, seq, want), timeout=SEND_TIMEOUT)


def as_message(obj: Any) -> Any:
    """A bare array sent by ``reserve_array`` as the ``(producer, seq, array)`` it stands for."""
    if isinstance(obj, np.ndarray):
        first = int(obj[0])
        return (first >> 48, (first >> 24) & 0xFFFFFF, obj)
    return obj


def produce(
    chan: mmipc.Channel,
    producer: int,
    count: int | None,
    lo: int,
    hi: int,
    seed: int,
    kinds: tuple[str, ...],
    ready: Any = None,
    stop: Any = None,
    end: bool = False,
) -> None:
    """Send messages 0..count-1 (forever if ``count`` is None), each one a random choice of
    ``kinds`` (see :func:`send_message`: ``"send"``, ``"reserve"``, ``"two"``).

    ``stop`` (an Event): also stop once it is set, then send ``("done", producer, sent)``.
    ``end``: end the stream after the last message.
    """
    rng = random.Random(seed)
    if ready is not None:
        ready.set()
    seq = 0
    while (count is None or seq < count) and not (stop is not None and stop.is_set()):
        how = rng.choice(kinds)
        send_message(chan, producer, seq, lo, hi, how)
        seq += 1
    if stop is not None:
        chan.send(("done", producer, seq), timeout=SEND_TIMEOUT)
    if end:
        chan.end_stream(timeout=SEND_TIMEOUT)
    chan.close()


def die_inside_reserve_array(
    chan: mmipc.Channel, producer: int, before: int, lo: int, hi: int, held: Any
) -> None:
    """Send ``before`` messages, then half-fill a ``reserve_array`` block and wait to be killed."""
    for seq in range(before):
        send_message(chan, producer, seq, lo, hi, "send")
    want = expected(producer, before, lo, hi)
    with chan.reserve_array(want.shape, want.dtype, timeout=SEND_TIMEOUT) as arr:
        arr[: len(want) // 2] = want[: len(want) // 2]
        held.set()
        time.sleep(120)  # killed here: the block is ALLOCATED, the record unpublished
    raise AssertionError("die_inside_reserve_array was not killed")


def hold_received(chan: mmipc.Channel, conn: Any, count: int, lo: int, hi: int) -> None:
    """Receive ``count`` messages, keep every one, report each seq, then wait to be killed."""
    fd = conn.fileno()
    kept = []
    for _ in range(count):
        obj = as_message(chan.recv(timeout=SEND_TIMEOUT))
        _producer, seq = check_message(obj, lo, hi)
        kept.append(obj)
        os.write(fd, REPORT.pack(seq))
    time.sleep(120)
    raise AssertionError("hold_received was not killed")


def consume_and_report(chan: mmipc.Channel, conn: Any, lo: int, hi: int, seed: int, batch: int) -> None:
    """Receive until killed, verifying each message and reporting its seq after the check.

    ``batch`` > 1: ``recv_many(batch)``. Keeps a random window of the last 0..3 received
    messages alive (HELD blocks), so a kill lands while blocks are held, while records are
    taken but not yet held, or in between.
    """
    rng = random.Random(seed)
    fd = conn.fileno()
    window: list[Any] = []
    keep = rng.randint(0, 3)
    while True:
        if batch > 1:
            objs = chan.recv_many(batch, timeout=SEND_TIMEOUT)
        else:
            objs = [chan.recv(timeout=SEND_TIMEOUT)]
        for obj in objs:
            _producer, seq = check_message(as_message(obj), lo, hi)
            window.append(obj)
            del window[: max(0, len(window) - keep)]
            os.write(fd, REPORT.pack(seq))
        del objs, obj


def pin_then_stream(
    chan: mmipc.Channel, conn: Any, go: Any, pinned: int, streamed: int, more: int, n: int
) -> None:
    """The pinning-rule consumer (see ``test_held_arrays_stay_intact_...``).

    Receives and keeps ``pinned`` messages; receives and drops ``streamed`` more (verifying each);
    reports; receives and keeps ``more``; reports; waits for ``go``; then checks that every kept
    array is still byte-exact (a crc of all of them against the expected one) and reports again.
    """
    fd = conn.fileno()
    kept = []
    for _ in range(pinned):
        obj = chan.recv(timeout=SEND_TIMEOUT)
        check_message(obj, n, n)
        kept.append(obj)
    for _ in range(streamed):
        obj = chan.recv(timeout=SEND_TIMEOUT)
        check_message(obj, n, n)
        del obj
    os.write(fd, REPORT.pack(1))
    for _ in range(more):
        obj = chan.recv(timeout=SEND_TIMEOUT)
        check_message(obj, n, n)
        kept.append(obj)
    os.write(fd, REPORT.pack(2))
    assert go.wait(SEND_TIMEOUT)
    for producer, seq, arr in kept:
        assert np.array_equal(arr, pattern(producer, seq, len(arr))), f"held array {seq} was overwritten"
    os.write(fd, REPORT.pack(3))
    os._exit(0)  # exit holding the blocks (never released by a callback)


def read_reports(conn: Any, timeout: float = 0.0) -> list[int]:
    """Every complete report available now (waiting up to ``timeout`` for the first)."""
    out: list[int] = []
    data = b""
    if conn.poll(timeout):
        while conn.poll(0):
            chunk = os.read(conn.fileno(), 65536)
            if not chunk:
                break
            data += chunk
    assert len(data) % REPORT.size == 0
    out += [REPORT.unpack_from(data, i)[0] for i in range(0, len(data), REPORT.size)]
    return out


def read_reports_to_eof(conn: Any) -> list[int]:
    """Every report still unread, once every writer of the pipe is gone (the child is dead)."""
    data = b""
    while True:
        chunk = os.read(conn.fileno(), 65536)
        if not chunk:
            break
        data += chunk
    assert len(data) % REPORT.size == 0, "a report was torn (8-byte pipe writes are atomic)"
    return [REPORT.unpack_from(data, i)[0] for i in range(0, len(data), REPORT.size)]


def die_after_in_flight(chan: mmipc.Channel, producer: int, before: int, items: int, held: Any) -> None:
    """Send ``before`` messages, then send a two-array object and stop (to be killed) right after
    its first block turned IN_FLIGHT: that block IN_FLIGHT, the second ALLOCATED, nothing published.
    """
    from mmipc import _layout as L

    for seq in range(before):
        send_message(chan, producer, seq, items, items, "send")
    heap = chan._heap
    assert heap is not None
    set_state = heap.set_state

    def pause(offset: int, state: int, owner: int = 0) -> None:
        set_state(offset, state, owner)
        if state == L.BLOCK_IN_FLIGHT:
            held.set()
            time.sleep(120)

    heap.set_state = pause  # type: ignore[method-assign]
    half = pattern(producer, before, items)
    chan.send((producer, before, half, half.copy()), timeout=SEND_TIMEOUT)
    raise AssertionError("die_after_in_flight was not killed")


def die_between_receive_and_hold(chan: mmipc.Channel, held: Any) -> None:
    """Receive one message and stop (to be killed) after the ring released its record and before
    its block turned HELD: the block is IN_FLIGHT and this receiver's done mark is behind it.
    """
    heap = chan._heap
    assert heap is not None
    check_block = heap.check_block

    def pause(offset: int, ticket: int, nbytes: int) -> int:
        state = check_block(offset, ticket, nbytes)
        held.set()
        time.sleep(120)
        return state

    heap.check_block = pause  # type: ignore[method-assign]
    chan.recv(timeout=SEND_TIMEOUT)
    raise AssertionError("die_between_receive_and_hold was not killed")


def retire_holding(chan: mmipc.Channel, items: int, done: Any) -> None:
    """Receive one message, keep it, close the channel handle (a receiver that retired while
    still holding an array: its heap slot stays registered), then wait to be killed."""
    kept = chan.recv(timeout=SEND_TIMEOUT)
    check_message(kept, items, items)
    chan.close()
    done.set()
    time.sleep(120)
    raise AssertionError("retire_holding was not killed")
