"""A producer process and a consumer process exchanging records through an anonymous Ring.

Run: python examples/ring_basic.py
"""

from __future__ import annotations

import multiprocessing as mp

import mmipc


def consume(ring: mmipc.Ring, results: mp.Queue) -> None:
    total = 0
    count = 0
    for record in ring:  # bytes copies, until the producer ends the stream
        total += len(record)
        count += 1
    results.put((count, total))
    ring.close()


def main() -> None:
    with mmipc.Ring.create(1 << 20) as ring:  # anonymous: travels to children as a file descriptor
        results: mp.Queue = mp.Queue()
        child = mp.Process(target=consume, args=(ring, results))
        child.start()
        for i in range(1000):
            ring.send(f"record {i}".encode())  # one copy into shared memory
        with ring.reserve(4096) as buf:  # zero copies: build the payload in place
            buf[:] = bytes(4096)
        ring.send_many([b"a", b"b", b"c"])  # one lock, one publish, one wake-up
        ring.end_stream()
        count, total = results.get(timeout=60)
        child.join(timeout=60)
        print(f"consumer received {count} records, {total} bytes")
        print(ring.stats())


if __name__ == "__main__":
    main()
