"""Where the CPU goes: CPU time per record of a producer and its consumers, queue or broadcast.

``python -m benchmarks cpu [--mode queue|broadcast] [--sizes 64K] [--consumers 2] [--records N]``

One producer process (this one) and N consumer processes (``fork``) share one 64 MiB ring:

* ``queue``: the producer calls ``send_many`` with batches of ``--batch`` records (default: as
  many as fit in 1 MiB), each consumer ``recv_many(--batch)`` (copies) or, with ``--views``,
  ``recv_views(--batch)`` (zero-copy) until :class:`mmipc.EndOfStream`;
* ``broadcast``: the producer calls ``send`` per record, each subscriber (``start="next"``)
  receives a zero-copy view and reads one byte of it.

Each process reports ``time.process_time()`` (user + system CPU) over its records: a ceiling for
the pair on this machine is ``cores / (producer + consumers' CPU per record)``. Not a peer
comparison (no targets): it explains the ``queue`` and ``broadcast`` figures. Also printed:
``rewinds``, how far positions ran ahead of the bytes written (1.0: the producer never rewound;
``docs/ring.md``).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import time
from typing import Any

from benchmarks import _harness as H
from benchmarks.ring import parse_counts, parse_sizes

DESCRIPTION = "CPU time per record of a producer and its queue consumers / broadcast subscribers"

CAPACITY = 64 << 20


def _consumer(ring: Any, mode: str, batch: int, views: bool, ready: Any, results: Any) -> None:
    import mmipc

    source = ring.subscribe(start="next") if mode == "broadcast" else ring
    ready.release()
    got = 0
    cpu0 = time.process_time()
    t0 = None
    try:
        while True:
            if mode == "broadcast":
                with source.recv(timeout=60) as view:
                    view[0]
                got += 1
            elif views:
                got += len(source.recv_views(batch, timeout=60))
            else:
                got += len(source.recv_many(batch, timeout=60))
            if t0 is None:
                t0 = time.perf_counter()
    except mmipc.EndOfStream:
        pass
    results.put((got, time.process_time() - cpu0, time.perf_counter() - (t0 or time.perf_counter())))
    if source is not ring:
        source.close()
    ring.close()


def measure(
    mode: str, size: int, consumers: int, records: int, batch: int, views: bool = False
) -> dict[str, Any]:
    import mmipc
    from mmipc import _layout as L

    ctx = mp.get_context("fork")
    ring = mmipc.Ring.create(CAPACITY, mode=mode)
    ready, results = ctx.Semaphore(0), ctx.Queue()
    procs = [
        ctx.Process(target=_consumer, args=(ring, mode, batch, views, ready, results))
        for _ in range(consumers)
    ]
    for proc in procs:
        proc.start()
    for _ in procs:
        if not ready.acquire(timeout=60):
            raise TimeoutError("a consumer did not start")
    payload = os.urandom(size)
    cpu0, t0 = time.process_time(), time.perf_counter()
    if mode == "queue":
        items = [payload] * batch
        for _ in range(records // batch):
            ring.send_many(items, timeout=60)
        sent = records // batch * batch
    else:
        for _ in range(records):
            ring.send(payload, timeout=60)
        sent = records
    ring.end_stream(timeout=60)
    producer_cpu, producer_wall = time.process_time() - cpu0, time.perf_counter() - t0
    reports = [results.get(timeout=120) for _ in procs]
    for proc in procs:
        proc.join(60)
    rewinds = ring._words[L.W_TAIL] / max(1, sent * L.record_size(size))  # type: ignore[index]
    ring.close()
    delivered = sum(r[0] for r in reports)
    wall = max(producer_wall, *(r[2] for r in reports))
    return {
        "mode": mode,
        "size": size,
        "consumers": consumers,
        "records": sent,
        "delivered_per_s": delivered / wall,
        "producer_cpu_us": producer_cpu / sent * 1e6,
        "producer_busy": producer_cpu / producer_wall,
        "consumer_cpu_us": [r[1] / max(1, r[0]) * 1e6 for r in reports],
        "consumer_records": [r[0] for r in reports],
        "rewinds": rewinds,
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--mode", choices=("queue", "broadcast"), default="queue")
    parser.add_argument("--sizes", type=parse_sizes, default=[64 << 10], help="record sizes (default 64K)")
    parser.add_argument("--consumers", type=parse_counts, default=[2], help="consumer counts (default 2)")
    parser.add_argument(
        "--records", type=int, default=None, help="records per run (default: 2.5 GB worth, at most 200 000)"
    )
    parser.add_argument("--batch", type=int, default=None, help="queue: records per send_many/recv_many")
    parser.add_argument("--views", action="store_true", help="queue: consumers call recv_views (zero-copy)")


def run(args: argparse.Namespace) -> int:
    info = H.machine_info(("mmipc",))
    print(f"machine: {info.get('cpu')}, {info.get('cores_usable')} usable cores; git {info.get('git')}")
    rows = []
    for size in args.sizes:
        for n in args.consumers:
            records = args.records or max(1000, min(200_000, (2_500 << 20) // size))
            if args.quick:
                records = max(100, records // 10)
            batch = args.batch or max(1, min(1024, (1 << 20) // size))
            for _ in range(1 if args.quick else (args.repeat or 2)):
                row = measure(args.mode, size, n, records, batch, args.views)
                rows.append(row)
                print(
                    f"{args.mode}{' views' if args.views else ''} {H.format_size(size)}, {n} consumers: "
                    f"{H.format_rate(row['delivered_per_s'])} "
                    f"delivered/s; producer {row['producer_cpu_us']:.2f} us CPU per record "
                    f"(busy {row['producer_busy']:.2f}); consumers "
                    f"{', '.join(f'{c:.2f}' for c in row['consumer_cpu_us'])} us CPU per record received; "
                    f"positions / bytes {row['rewinds']:.2f}",
                    flush=True,
                )
    return 0
