"""Channels in queue mode (each object to one of many receivers, redelivered if its receiver
died) and broadcast mode (every subscriber gets every object), across real processes."""

from __future__ import annotations

import os
import pickle
import signal
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import mmipc

pytestmark = pytest.mark.timeout(90)

WAIT = 30.0
COUNT = 300


def message(i: int) -> Any:
    """Every tenth object carries an array large enough to travel out-of-band."""
    return (i, np.full(20_000, i, dtype=np.int64)) if i % 10 == 0 else (i, f"small {i}")


def check(obj: Any) -> int:
    i, payload = obj
    if i % 10 == 0:
        assert payload.shape == (20_000,) and (payload == i).all()
    else:
        assert payload == f"small {i}"
    return int(i)


def queue_consumer(chan: mmipc.Channel, results: Any) -> None:
    got = []
    try:
        while True:
            try:
                obj = chan.recv(timeout=WAIT)
            except mmipc.EndOfStream:
                break
            info = chan.last_record
            assert info is not None
            got.append((check(obj), info.redelivered))
        results.put(got)
    except BaseException as exc:
        results.put(repr(exc))
    finally:
        chan.close()


def test_queue_each_object_to_exactly_one_receiver(
    make_channel: Callable[..., mmipc.Channel], mp_context: Any
) -> None:
    chan = make_channel(1 << 18, mode="queue", heap_size=4 << 20)
    results = mp_context.Queue()
    consumers = [mp_context.Process(target=queue_consumer, args=(chan, results)) for _ in range(3)]
    for c in consumers:
        c.start()
    try:
        for i in range(COUNT):
            chan.send(message(i), timeout=WAIT)
        chan.end_stream()
        parts = [results.get(timeout=WAIT) for _ in consumers]
    finally:
        for c in consumers:
            c.join(WAIT)
            if c.is_alive():
                c.kill()
    assert all(isinstance(p, list) for p in parts), parts
    received = sorted(i for part in parts for i, _ in part)
    assert received == list(range(COUNT))  # nothing lost, nothing twice
    assert not any(redelivered for part in parts for _, redelivered in part)
    for part in parts:
        assert [i for i, _ in part] == sorted(i for i, _ in part)  # each receiver: in order


_hang_event: Any = None


class Hangs:
    """Unpickling it inside a process that set ``_hang_event`` signals and hangs there."""

    def __init__(self, i: int) -> None:
        self.i = i

    def __reduce__(self) -> Any:
        return (_rebuild_hangs, (self.i,))


def _rebuild_hangs(i: int) -> Hangs:
    if _hang_event is not None:
        _hang_event.set()
        time.sleep(600)
    return Hangs(i)


def hanging_consumer(chan: mmipc.Channel, event: Any) -> None:
    global _hang_event
    _hang_event = event
    chan.recv(timeout=WAIT)  # hangs while rebuilding: the record and its blocks are held


@pytest.mark.parametrize("via", ["send", "send_many"])
def test_queue_object_of_a_killed_receiver_is_redelivered(
    make_channel: Callable[..., mmipc.Channel], mp_context: Any, via: str
) -> None:
    """``send_many`` too: a queue channel writes one record per object (no batch records, whose
    items are released when taken), so the object a receiver dies rebuilding comes back."""
    chan = make_channel(1 << 18, mode="queue", heap_size=4 << 20)
    receiver = pickle.loads(pickle.dumps(chan))
    array = np.arange(50_000, dtype=np.float64)
    if via == "send":
        chan.send((Hangs(7), array), timeout=WAIT)
        chan.send("after", timeout=WAIT)
    else:  # both in-band: one ring.send_many call
        array = np.arange(5, dtype=np.float64)
        assert chan.send_many([(Hangs(7), array), "after"], timeout=WAIT) == 2
    event = mp_context.Event()
    victim = mp_context.Process(target=hanging_consumer, args=(chan, event))
    victim.start()
    try:
        assert event.wait(WAIT), "the victim never started to rebuild the object"
        os.kill(victim.pid, signal.SIGKILL)
        victim.join(WAIT)
        # The redelivery comes when the receiver finds the victim dead: before or after the
        # next record, so the two arrive in either order.
        got = {}
        for _ in range(2):
            obj = receiver.recv(timeout=WAIT)
            info = receiver.last_record
            assert info is not None
            got["after" if obj == "after" else "hangs"] = (obj, info)
        (hangs, payload), info = got["hangs"]
        assert isinstance(hangs, Hangs) and hangs.i == 7
        assert np.array_equal(payload, array) and (via == "send_many" or not payload.flags.writeable)
        assert info.redelivered and info.sequence == 0
        assert not got["after"][1].redelivered and got["after"][1].sequence == 1
        with pytest.raises(mmipc.WouldBlock):
            receiver.recv_nowait()
    finally:
        if victim.is_alive():
            victim.kill()
        victim.join(WAIT)
        receiver.close()


def subscriber(chan: mmipc.Channel, start: str, ready: Any, results: Any) -> None:
    try:
        sub = chan.subscribe(start, timeout=WAIT)
        ready.set()
        got = [check_small(obj) for obj in sub]
        last = sub.last_record
        sequence = last.sequence if last is not None else None
        results.put((start, got, sequence))
        sub.close()
    except BaseException as exc:
        results.put((start, repr(exc), None))
    finally:
        chan.close()


def test_broadcast_every_subscriber_gets_every_object(
    make_channel: Callable[..., mmipc.Channel], mp_context: Any
) -> None:
    chan = make_channel(1 << 20, mode="broadcast")
    chan.send((-1, "before anyone subscribed"), timeout=WAIT)  # only "oldest" sees it
    results = mp_context.Queue()
    readies = [mp_context.Event() for _ in range(3)]
    starts = ["next", "next", "oldest"]
    subs = [
        mp_context.Process(target=subscriber, args=(chan, start, ready, results))
        for start, ready in zip(starts, readies, strict=True)
    ]
    for p in subs:
        p.start()
    try:
        assert all(ready.wait(WAIT) for ready in readies)
        for i in range(COUNT):
            chan.send(message(i), timeout=WAIT)
        chan.end_stream()
        got = [results.get(timeout=WAIT) for _ in subs]
    finally:
        for p in subs:
            p.join(WAIT)
            if p.is_alive():
                p.kill()
    for start, objects, sequence in got:
        expected = list(range(COUNT)) if start == "next" else [-1, *range(COUNT)]
        assert objects == expected, (start, objects)
        assert sequence == COUNT  # of the last object: producers number every record from 0


def check_small(obj: Any) -> int:
    return check(obj) if obj[0] >= 0 else obj[0]


def test_mode_errors_and_reprs(make_channel: Callable[..., mmipc.Channel]) -> None:
    with pytest.raises(ValueError, match="heap_size must be 0"):
        mmipc.Channel.create(1 << 16, mode="broadcast", heap_size=1 << 20)
    single = make_channel(1 << 16, mode=0o600)  # an int mode is still the permissions
    assert single.mode == "single" and single.last_record is None
    with pytest.raises(ValueError, match="only broadcast channels have subscribers"):
        single.subscribe()
    broadcast = make_channel(1 << 16, mode="broadcast")
    sub = broadcast.subscribe("oldest")
    try:
        assert broadcast.mode == "broadcast" and "mode=broadcast" in repr(broadcast)
        assert repr(sub).startswith("<mmipc.Channel subscriber")
        with pytest.raises(TypeError, match="does not pickle"):
            pickle.dumps(sub)
        with pytest.raises(TypeError, match="only receives"):
            sub.send(1)
        broadcast.send({"k": 1})
        assert sub.recv(timeout=WAIT) == {"k": 1}
        assert sub.stats().objects_received == 1
    finally:
        sub.close()
