"""Several producer processes feeding one consumer through a multi-writer Ring.

Run: python examples/ring_multi_producer.py
"""

from __future__ import annotations

import multiprocessing as mp

import mmipc

PRODUCERS = 4
PER_PRODUCER = 2000


def produce(ring: mmipc.Ring, producer_id: int) -> None:
    for seq in range(PER_PRODUCER):
        ring.send(f"{producer_id}:{seq}".encode(), timeout=30)
    ring.close()


def main() -> None:
    with mmipc.Ring.create(1 << 20, multi_writer=True) as ring:
        procs = [mp.Process(target=produce, args=(ring, i)) for i in range(PRODUCERS)]
        for p in procs:
            p.start()
        last = [-1] * PRODUCERS
        for _ in range(PRODUCERS * PER_PRODUCER):
            producer_id, seq = map(int, ring.recv_bytes(timeout=30).split(b":"))
            assert seq == last[producer_id] + 1, "per-producer order is kept"
            last[producer_id] = seq
        for p in procs:
            p.join(timeout=60)
        print(
            f"received {PRODUCERS * PER_PRODUCER} records from {PRODUCERS} producers, in order per producer"
        )


if __name__ == "__main__":
    main()
