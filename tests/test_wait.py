"""Wait strategies (block, adaptive, spin): every receive and every wait for space hands records
over correctly under each strategy and start method, and no hand-off is ever lost (a lost
wake-up would hang a receive past its generous timeout)."""

from __future__ import annotations

import multiprocessing
import os
import pickle
import random
import time
from collections.abc import Callable
from typing import Any

import pytest

import mmipc
from mmipc import _wait

STRATEGIES = ["block", "adaptive", "spin"]
WAIT = 10.0  # per hand-off: a lost wake-up costs at most 5 ms, a hang fails the test
# Round trips of the lost-wake-up stress per strategy; MMIPC_STRESS_HANDOFFS raises it (the
# closing note of issue 7 reports a run with 1,000,000 per strategy).
STRESS = int(os.environ.get("MMIPC_STRESS_HANDOFFS", "0"))
ROUND_TRIPS = STRESS or 20_000
SPIN_ROUND_TRIPS = STRESS or 3_000

pytestmark = pytest.mark.timeout(120 if not STRESS else 7200)


def test_resolve_names_and_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    assert _wait.resolve("block") is _wait.BLOCK and _wait.resolve(None) is _wait.DEFAULT
    assert _wait.resolve(_wait.SPIN) is _wait.SPIN
    with pytest.raises(ValueError, match="wait must be 'block', 'adaptive' or 'spin', got 'fast'"):
        _wait.resolve("fast")
    monkeypatch.setattr(_wait, "POLLING_ALLOWED", False)
    with pytest.raises(ValueError, match="only ordered safely on x86-64"):
        _wait.resolve("spin")
    assert _wait.resolve("block") is _wait.BLOCK


def test_handle_default_per_call_and_pickling(make_ring: Callable[..., mmipc.Ring]) -> None:
    ring = make_ring(1 << 16, wait="spin")
    assert ring.wait == "spin"
    ring.wait = "block"
    assert ring.wait == "block" and pickle.loads(pickle.dumps(ring)).wait == "block"
    with pytest.raises(ValueError):
        ring.wait = "nope"
    ring.send(b"a", wait="spin")
    assert ring.recv_bytes(timeout=1, wait="spin") == b"a"
    assert ring.wait == "block"  # a per-call strategy does not stick
    with pytest.raises(mmipc.WaitTimeout):
        ring.recv_bytes(timeout=0.02, wait="spin")  # spinning still honours the timeout
    with pytest.raises(mmipc.WaitTimeout), ring.recv(timeout=0.02, wait="adaptive"):
        pass


def _bursty_producer(ring: mmipc.Ring, count: int, seed: int) -> None:
    """Send ``count`` numbered records in random bursts with random pauses (the consumer keeps
    going to sleep and being woken), then end the stream."""
    rng = random.Random(seed)
    i = 0
    while i < count:
        for _ in range(rng.randint(1, 40)):
            if i == count:
                break
            ring.send(i.to_bytes(4, "little") * rng.randint(1, 64), timeout=WAIT)
            i += 1
        if rng.random() < 0.3:
            time.sleep(rng.random() / 1000)
    ring.end_stream()
    ring.close()


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_strategy_receives_every_record(
    make_ring: Callable[..., mmipc.Ring], mp_context: Any, strategy: str
) -> None:
    """A small ring, so that the producer also waits for space, with the same strategy."""
    count = 3000
    ring = make_ring(4096, wait=strategy)
    child = mp_context.Process(target=_bursty_producer, args=(ring, count, 7))
    child.start()
    try:
        got = []
        k = 0
        while True:
            try:
                if k % 3 == 0:
                    data = ring.recv_bytes(timeout=WAIT)
                elif k % 3 == 1:
                    with ring.recv(timeout=WAIT) as view:
                        data = bytes(view)
                else:
                    batch = ring.recv_many(16, timeout=WAIT)
                    got += [int.from_bytes(b[:4], "little") for b in batch[:-1]]
                    data = batch[-1]
            except mmipc.EndOfStream:
                break
            got.append(int.from_bytes(data[:4], "little"))
            k += 1
    finally:
        child.join(WAIT)
    assert child.exitcode == 0
    assert got == list(range(count))


def _echo(ring_in: mmipc.Ring, ring_out: mmipc.Ring, strategy: str) -> None:
    while True:
        try:
            data = ring_in.recv_bytes(timeout=WAIT, wait=strategy)
        except mmipc.EndOfStream:
            break
        ring_out.send(data, timeout=WAIT, wait=strategy)
    ring_out.end_stream()


@pytest.mark.stress
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_ping_pong_never_loses_a_wake_up(make_ring: Callable[..., mmipc.Ring], strategy: str) -> None:
    """Two processes bounce a record back and forth; each side waits for the other every time
    (the worst case for lost wake-ups). Every receive has a 10 s timeout: a lost wake-up that
    were not recovered by the 5 ms re-checks would raise WaitTimeout."""
    rounds = SPIN_ROUND_TRIPS if strategy == "spin" else ROUND_TRIPS
    out, back = make_ring(1 << 12), make_ring(1 << 12)
    child = multiprocessing.get_context("fork").Process(target=_echo, args=(out, back, strategy))
    child.start()
    try:
        slowest = 0.0
        for i in range(rounds):
            payload = i.to_bytes(8, "little")
            t0 = time.perf_counter()
            out.send(payload, timeout=WAIT, wait=strategy)
            assert back.recv_bytes(timeout=WAIT, wait=strategy) == payload
            slowest = max(slowest, time.perf_counter() - t0)
        out.end_stream()
        with pytest.raises(mmipc.EndOfStream):
            back.recv_bytes(timeout=WAIT)
    finally:
        child.join(WAIT)
    assert child.exitcode == 0
    print(f"{strategy}: {rounds} round trips, slowest {slowest * 1e3:.1f} ms")


def _channel_producer(chan: mmipc.Channel, count: int) -> None:
    for i in range(count):
        chan.send({"i": i}, timeout=WAIT)
    chan.end_stream()
    chan.close()


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_channels_queues_and_subscribers_take_the_strategy(mp_context: Any, strategy: str) -> None:
    count = 500
    chan = mmipc.Channel.create(1 << 14, wait=strategy, heap_size=0)
    queue = mmipc.Channel.create(1 << 14, mode="queue", heap_size=0)
    try:
        assert chan.wait == strategy and pickle.loads(pickle.dumps(chan)).wait == strategy
        child = mp_context.Process(target=_channel_producer, args=(chan, count))
        child.start()
        got = [obj["i"] for obj in chan]
        child.join(WAIT)
        assert got == list(range(count))
        consumer = pickle.loads(pickle.dumps(queue))
        consumer.wait = strategy
        child = mp_context.Process(target=_channel_producer, args=(queue, count))
        child.start()
        got = []
        while True:
            try:
                got.append(consumer.recv(timeout=WAIT, wait=strategy)["i"])
            except mmipc.EndOfStream:
                break
        child.join(WAIT)
        assert got == list(range(count))
        consumer.close()
    finally:
        for c in (chan, queue):
            c.unlink()
            c.close()


def test_broadcast_subscriber_and_producer_with_each_strategy(make_ring: Callable[..., mmipc.Ring]) -> None:
    for strategy in STRATEGIES:
        ring = make_ring(1 << 12, mode="broadcast", wait=strategy)
        sub = ring.subscribe()
        try:
            sub.wait = strategy
            for i in range(200):
                ring.send(bytes(100) + i.to_bytes(4, "little"), timeout=WAIT)
                if i % 7 == 6:
                    for j in range(i - 6, i + 1):
                        assert sub.recv_bytes(timeout=WAIT)[100:] == j.to_bytes(4, "little")
        finally:
            sub.close()
