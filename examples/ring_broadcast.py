"""Broadcast (pub/sub): every subscriber process receives every record, in order, zero-copy.

One producer, three subscriber processes that join before the first record, and a fourth that
joins late and starts at the oldest record still in the ring. The ring is much smaller than the
stream: the producer waits for the slowest subscriber (back-pressure). A second, small part shows
``untether_after``: a subscriber that stalls is cut loose and told how many records it missed.

Run: python examples/ring_broadcast.py
"""

from __future__ import annotations

import multiprocessing as mp
from typing import Any

import mmipc

RECORDS = 5000


def subscriber(ring: mmipc.Ring, start: str, joined: Any, results: Any, index: int) -> None:
    with ring, ring.subscribe(start) as sub:  # subscribe from a pickled ring, in this process
        joined.set()
        numbers = []
        for data in sub:  # until the producer ends the stream
            numbers.append(int(data))
        results.put((index, start, numbers))


def main() -> None:
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    with mmipc.Ring.create(1 << 14, mode="broadcast") as ring:  # 16 KiB: many laps
        early = [ctx.Event() for _ in range(3)]
        procs = [
            ctx.Process(target=subscriber, args=(ring, "next", e, results, i)) for i, e in enumerate(early)
        ]
        for p in procs:
            p.start()
        for e in early:
            e.wait(30)
        late_joined = ctx.Event()
        late = ctx.Process(target=subscriber, args=(ring, "oldest", late_joined, results, 3))
        for n in range(RECORDS):
            ring.send(str(n).encode(), timeout=30)
            if n == RECORDS // 2:
                late.start()  # joins while records are flowing
                late_joined.wait(30)
        ring.end_stream()
        got = sorted(results.get(timeout=60) for _ in range(4))
        for p in [*procs, late]:
            p.join(60)
        for index, start, numbers in got:
            assert numbers == list(range(numbers[0], RECORDS)), "complete and in order"
            print(f"subscriber {index} (start={start!r}) received records {numbers[0]}..{numbers[-1]}")
        assert all(numbers[0] == 0 for _, start, numbers in got if start == "next")
        print(f"producer waited {ring.stats().producer_waits} times for the slowest subscriber")

    # Untether: a subscriber that holds the producer back for 0.1 s is cut loose.
    with mmipc.Ring.create(4096, mode="broadcast", untether_after=0.1) as ring:
        stalled = ring.subscribe()
        for n in range(500):
            ring.send(str(n).encode(), timeout=30)  # nobody reads: after 0.1 s stalled is cut loose
        try:
            stalled.recv_bytes()
        except mmipc.Lapped as exc:
            print(f"stalled subscriber lapped: missed {exc.missed} records, rejoined at the head")
        ring.send(b"after")
        print(f"then it received {stalled.recv_bytes(timeout=5)!r}")
        stalled.close()


if __name__ == "__main__":
    main()
