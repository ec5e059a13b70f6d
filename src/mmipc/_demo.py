"""The demo behind ``python -m mmipc demo``: 1 GiB in 1 MiB payloads, Ring vs multiprocessing.Queue.

A producer process and a consumer process exchange ``total`` bytes in ``size``-byte payloads,
first through a :class:`mmipc.Ring` (the producer builds each payload in place with
``reserve``; the consumer reads it through a zero-copy view), then through a
``multiprocessing.Queue`` (pickle, pipe, unpickle), measured in the same run.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import time
from typing import Any

from ._ring import Ring

__all__ = ["run_demo"]


def _ring_producer(ring: Ring, count: int, payload: bytes, start: Any) -> None:
    start.wait()
    n = len(payload)
    for i in range(count):
        with ring.reserve(n) as buf:
            buf[:] = payload  # the producer writes its payload straight into shared memory
            buf[:8] = i.to_bytes(8, "little")
    ring.end_stream()
    ring.close()


def _ring_consumer(ring: Ring, count: int, start: Any, result: Any) -> None:
    start.wait()
    t0 = time.perf_counter()
    received = 0
    checksum = 0
    while True:
        try:
            with ring.recv() as view:  # zero-copy: a read-only view of the shared record
                checksum += int.from_bytes(view[:8], "little") + view[-1]
                received += 1
        except EOFError:
            break
    result.put((received, time.perf_counter() - t0, checksum))
    ring.close()


def _queue_producer(queue: Any, count: int, payload: bytes, start: Any) -> None:
    start.wait()
    for i in range(count):
        queue.put(i.to_bytes(8, "little") + payload[8:])
    queue.put(None)


def _queue_consumer(queue: Any, count: int, start: Any, result: Any) -> None:
    start.wait()
    t0 = time.perf_counter()
    received = 0
    checksum = 0
    while True:
        item = queue.get()
        if item is None:
            break
        checksum += int.from_bytes(item[:8], "little") + item[-1]
        received += 1
    result.put((received, time.perf_counter() - t0, checksum))


def _run_pair(
    ctx: Any, producer: Any, consumer: Any, channel: Any, count: int, payload: bytes
) -> tuple[int, float, int]:
    start = ctx.Barrier(2)
    result = ctx.Queue()
    procs = [
        ctx.Process(target=consumer, args=(channel, count, start, result)),
        ctx.Process(target=producer, args=(channel, count, payload, start)),
    ]
    for p in procs:
        p.start()
    try:
        received, seconds, checksum = result.get(timeout=600)
    finally:
        for p in procs:
            p.join(timeout=60)
            if p.is_alive():
                p.kill()
                p.join()
    return received, seconds, checksum


def run_demo(total: int = 1 << 30, size: int = 1 << 20, json_output: bool = False) -> int:
    """Run the demo and print (or return as JSON) throughput of both; 0 on success."""
    if size < 8:
        raise ValueError("payload size must be at least 8 bytes")
    count = max(1, total // size)
    payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
    expected = sum(range(count)) + count * payload[-1]
    ctx = mp.get_context()
    capacity = max(64 << 20, 8 * (size + 64))
    if not json_output:
        print(
            f"mmipc demo: {count} payloads of {size} bytes ({count * size / 2**30:.2f} GiB), "
            f"producer -> consumer process ({ctx.get_start_method()} start)"
        )
    rows = []
    with Ring.create(capacity) as ring:
        received, seconds, checksum = _run_pair(ctx, _ring_producer, _ring_consumer, ring, count, payload)
    rows.append(("mmipc.Ring (reserve + zero-copy recv)", received, seconds, checksum))
    queue = ctx.Queue(maxsize=64)
    received, seconds, checksum = _run_pair(ctx, _queue_producer, _queue_consumer, queue, count, payload)
    queue.close()
    rows.append(("multiprocessing.Queue", received, seconds, checksum))
    ok = all(r[1] == count and r[3] == expected for r in rows)
    results: list[dict[str, Any]] = [
        {
            "transport": name,
            "messages": n,
            "seconds": s,
            "mb_per_s": n * size / s / 1e6,
            "msgs_per_s": n / s,
            "verified": n == count and c == expected,
        }
        for name, n, s, c in rows
    ]
    speedup = results[0]["mb_per_s"] / results[1]["mb_per_s"]
    if json_output:
        print(
            json.dumps(
                {"payload_bytes": size, "count": count, "results": results, "speedup": speedup}, indent=2
            )
        )
    else:
        print(f"{'transport':40} {'MB/s':>10} {'msgs/s':>10}  verified")
        for r in results:
            print(f"{r['transport']:40} {r['mb_per_s']:10,.0f} {r['msgs_per_s']:10,.0f}  {r['verified']}")
        print(f"mmipc.Ring is {speedup:.1f}x multiprocessing.Queue on this machine, in this run")
    return 0 if ok else 1
