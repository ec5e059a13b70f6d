"""asyncio adapters (AsyncRing, AsyncChannel): real processes, the loop never blocks, cancellation
loses nothing, timeouts."""

from __future__ import annotations

import asyncio
import pickle
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import mmipc

pytestmark = pytest.mark.timeout(60)

COUNT = 200


def _send_after_go(chan: mmipc.Channel, go: Any) -> None:
    assert go.wait(30)
    for i in range(COUNT):
        chan.send({"i": i, "array": np.full(20_000, i, dtype=np.int64) if i % 50 == 0 else None}, timeout=30)
    chan.end_stream()
    chan.close()


def test_channel_receives_from_a_child_without_blocking_the_loop(
    make_channel: Callable[..., mmipc.Channel], mp_context: Any
) -> None:
    """The child sends only after a second task of the loop said "go": if an awaited receive
    blocked the loop, "go" would never be said and the receive would time out."""
    chan = make_channel()
    go = mp_context.Event()
    child = mp_context.Process(target=_send_after_go, args=(chan, go))
    child.start()

    async def main() -> list[Any]:
        async with mmipc.AsyncChannel(pickle.loads(pickle.dumps(chan))) as achan:
            receiving = asyncio.ensure_future(_collect(achan))
            await _until_busy(achan)  # the receive polled on the loop, then went to the thread
            go.set()
            return await asyncio.wait_for(receiving, 30)

    try:
        got = asyncio.run(main())
    finally:
        child.join(30)
    assert child.exitcode == 0
    assert [obj["i"] for obj in got] == list(range(COUNT))
    for obj in got[::50]:
        array = obj["array"]
        assert not array.flags.writeable and array.shape == (20_000,)
        assert (array == obj["i"]).all()


async def _until_busy(adapter: Any, task: Any = None) -> None:
    """Wait (at most 5 s) until an operation is on the adapter's helper thread (or ``task`` is
    done): with a polling wait strategy it first polls on the loop thread for up to 1 ms."""
    for _ in range(5000):
        if adapter._busy or (task is not None and task.done()):
            return
        await asyncio.sleep(0.001)
    raise AssertionError("the operation never reached the helper thread")


async def _collect(achan: mmipc.AsyncChannel) -> list[Any]:
    return [obj async for obj in achan]


def test_cancelled_receives_lose_nothing(make_channel: Callable[..., mmipc.Channel]) -> None:
    """Each round cancels a waiting receive in the same loop step as a record arrives, so the
    record lands before, during or after the cancellation. Whatever the interleaving, every
    record is received exactly once, in order."""
    chan = make_channel()
    producer = pickle.loads(pickle.dumps(chan))
    rounds = 150

    async def main() -> list[int]:
        got: list[int] = []
        cancelled = 0
        async with mmipc.AsyncChannel(chan) as achan:
            sent = 0
            while sent < rounds:
                while achan._stash:  # earlier cancelled receives first: they come back in order
                    got.append(await achan.recv(timeout=5))
                task = asyncio.ensure_future(achan.recv(timeout=30))
                await _until_busy(achan, task)
                if task.done():  # a record a cancelled receive never started to take
                    got.append(task.result())
                    continue
                producer.send(sent)  # arrives while the receive waits on the helper thread
                task.cancel()
                sent += 1
                try:
                    got.append(await task)
                except asyncio.CancelledError:
                    cancelled += 1
                if sent % 3 == 0:  # let the cancelled receive finish on the helper thread first
                    await asyncio.sleep(0.002)
            while len(got) < rounds:
                got.append(await achan.recv(timeout=5))
            with pytest.raises(mmipc.WouldBlock):
                chan.recv_nowait()
        assert cancelled > 0
        return got

    try:
        assert asyncio.run(main()) == list(range(rounds))
    finally:
        producer.close()


def test_timeouts_and_wait_for(make_channel: Callable[..., mmipc.Channel]) -> None:
    chan = make_channel()
    producer = pickle.loads(pickle.dumps(chan))

    async def main() -> None:
        async with mmipc.AsyncChannel(chan) as achan:
            with pytest.raises(mmipc.WaitTimeout, match=r"gave up after 0\.05 s"):
                await achan.recv(timeout=0.05)
            with pytest.raises((TimeoutError, asyncio.TimeoutError)):  # distinct types before 3.11
                await asyncio.wait_for(achan.recv(), 0.05)
            with pytest.raises(mmipc.WaitTimeout):
                await achan.recv(timeout=0)
            producer.send("after")  # the adapter still works after timeouts and cancellation
            assert await achan.recv(timeout=5) == "after"

    try:
        asyncio.run(main())
    finally:
        producer.close()


def _ring_echo(ring: mmipc.Ring, back: mmipc.Ring) -> None:
    for data in ring:
        back.send(data[::-1], timeout=30)
    back.end_stream()
    ring.close()
    back.close()


def test_ring_round_trip_with_a_child(make_ring: Callable[..., mmipc.Ring], mp_context: Any) -> None:
    out, back = make_ring(1 << 16), make_ring(1 << 16)
    child = mp_context.Process(target=_ring_echo, args=(out, back))
    child.start()
    payloads = [bytes([i % 251]) * (1 + i * 37 % 3000) for i in range(300)]

    async def main() -> list[bytes]:
        async with (
            mmipc.AsyncRing(pickle.loads(pickle.dumps(out))) as aout,
            mmipc.AsyncRing(pickle.loads(pickle.dumps(back))) as aback,
        ):

            async def send_all() -> None:
                for p in payloads[:100]:
                    await aout.send(p, timeout=30)  # the ring is small: sends wait for space
                assert await aout.send_many(payloads[100:], timeout=30) == 200
                await aout.end_stream(timeout=30)

            sender = asyncio.ensure_future(send_all())
            got: list[bytes] = []
            while len(got) < 150:
                got += await aback.recv_many(7, timeout=30)
            got += [data async for data in aback]
            await sender
            return got

    try:
        got = asyncio.run(main())
    finally:
        child.join(30)
    assert child.exitcode == 0
    assert got == [p[::-1] for p in payloads]


def test_send_waits_for_space_without_blocking_the_loop(make_ring: Callable[..., mmipc.Ring]) -> None:
    ring = make_ring(4096)
    consumer = pickle.loads(pickle.dumps(ring))
    record = b"x" * 1000
    while True:
        try:
            ring.send_nowait(record)
        except mmipc.WouldBlock:
            break
    sent_before = ring.stats().records_written

    async def main() -> None:
        async with mmipc.AsyncRing(ring) as aring:
            sending = asyncio.ensure_future(aring.send(b"last", timeout=30))
            await asyncio.sleep(0)
            assert not sending.done()
            for _ in range(sent_before):  # the loop runs while the send waits: drain here
                assert consumer.recv_bytes(timeout=5) == record
            await sending
            assert consumer.recv_bytes(timeout=5) == b"last"

    try:
        asyncio.run(main())
    finally:
        consumer.close()


def test_closed_adapter_and_repr(make_channel: Callable[..., mmipc.Channel]) -> None:
    chan = make_channel()
    producer = pickle.loads(pickle.dumps(chan))
    achan = mmipc.AsyncChannel(chan)
    assert repr(achan).startswith("<mmipc.AsyncChannel of <mmipc.Channel") and "busy=0" in repr(achan)

    async def main() -> None:
        producer.end_stream()
        with pytest.raises(mmipc.EndOfStream):
            await achan.recv(timeout=5)
        await achan.aclose()
        with pytest.raises(mmipc.ClosedError, match="closed"):
            await achan.recv()

    try:
        asyncio.run(main())
    finally:
        producer.close()
    assert chan.closed and "closed" in repr(achan)
