"""Work queue: one producer, 2 and 4 consumer processes; Ring queue mode vs mp.Queue, faster-fifo.

``python -m benchmarks queue [--quick] [--sizes 64,64K] [--consumers 2,4]``

Each record goes to exactly one consumer; the figure is the **total** msgs/s (all records over
the slowest consumer's time, from the start barrier to the end of the stream). Cells run in
fresh processes (see ``_harness``; ``consumers`` processes share the records).

Cases:

* ``Ring queue send / recv_bytes``: ``Ring.create(capacity, mode="queue")``; the producer
  sends, every consumer calls ``recv_bytes`` on its own handle until :class:`EndOfStream`
  (the producer calls ``end_stream()`` after the timed records).
* ``Ring queue send_many / recv_many``: the batch API (``--batch`` records per call; default
  as many as fit in 1 MiB, at most 1024).
* ``Ring queue send_many / recv_views``: the same producer; consumers take up to ``--batch``
  records per call as zero-copy views (claimed until the views are dropped, released by the
  next call), read their lengths and drop them. Peers copy every message out (faster-fifo
  unpickles it); this is mmipc's own way to hand large payloads to workers.
* ``mp.Queue put / get``; faster-fifo ``put / get`` and ``put_many / get_many`` (``get_many``
  with the same batch). Their end of stream: one ``None`` per consumer after the records; a
  consumer stops at its first ``None`` (one that ``get_many`` returned extra ones puts them back).

Warm-up: the producer sends ``k`` records per consumer and each consumer takes exactly ``k``
(``recv_many``/``get_many`` ask for at most what is left), so every consumer is warm and
nothing is left over when the start barrier opens. Bounded transports get the same capacity as
the ring: ``max(64 MiB, 8 x record)``.

Target: mmipc >= 3x mp.Queue and >= 3x faster-fifo at every point (the best of mmipc's three
APIs against the better of faster-fifo's; every pairing is in the table).
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import queue as queue_module
import shlex
import sys
import time
from typing import Any

from benchmarks import _harness as H
from benchmarks.ring import capacity_for, parse_counts, parse_sizes, payload_of

DESCRIPTION = "Ring work queue, 1 producer -> 2/4 consumers vs mp.Queue, faster-fifo; 64 B, 64 KiB"

SIZES = (64, 64 << 10)
CONSUMERS = (2, 4)
BATCH_BYTES = 1 << 20
PEER_TIMEOUT = 120.0

RING_BYTES = "Ring queue send / recv_bytes"
RING_BATCH = "Ring queue send_many / recv_many"
RING_VIEWS = "Ring queue send_many / recv_views"
QUEUE = "mp.Queue put / get"
FFIFO = "faster-fifo put / get"
FFIFO_BATCH = "faster-fifo put_many / get_many"
RING_CASES = (RING_BYTES, RING_BATCH, RING_VIEWS)
FFIFO_CASES = (FFIFO, FFIFO_BATCH)
SHARED = "shared"  # Case.delivery: the consumers share the records


def batch_for(size: int) -> int:
    return max(1, min(1024, BATCH_BYTES // size))


def warm_share(spec: H.Spec) -> int:
    """Warm-up records each consumer takes (the producer sends this many per consumer)."""
    return max(1, spec.warmup // spec.consumers)


def _missing(module: str) -> str | None:
    return None if importlib.util.find_spec(module) is not None else f"{module} is not installed"


@functools.cache
def _ring_unavailable() -> str | None:
    """Why this checkout's mmipc cannot run the Ring cases (no queue mode), or None."""
    from mmipc import Ring

    try:
        ring = Ring.create(1 << 16, mode="queue")  # type: ignore[call-arg, unused-ignore]
    except TypeError as exc:
        return f"mmipc.Ring has no queue mode in this checkout ({exc})"
    ring.close()
    return None


def _send_in_batches(send_many: Any, item: Any, batch: int, count: int, **kwargs: Any) -> None:
    items = [item] * batch
    full, rest = divmod(count, batch)
    for _ in range(full):
        send_many(items, **kwargs)
    if rest:
        send_many(items[:rest], **kwargs)


# -- Ring queue mode -----------------------------------------------------------------------------


def _open_ring(spec: H.Spec, ctx: Any) -> H.Opened:
    from mmipc import Ring

    ring = Ring.create(capacity_for(spec.size), mode="queue")  # type: ignore[call-arg, unused-ignore]
    return H.Opened(ring, ring.close)


def ring_send_producer(ring: Any, spec: H.Spec, gate: H.Gate, index: int) -> None:
    payload = payload_of(spec.size)
    send = ring.send
    try:
        for _ in range(warm_share(spec) * spec.consumers):
            send(payload)
        gate.wait()
        for _ in range(spec.count):
            send(payload)
        ring.end_stream()
    finally:
        ring.close()


def ring_batch_producer(ring: Any, spec: H.Spec, gate: H.Gate, index: int) -> None:
    payload = payload_of(spec.size)
    batch = spec.options["batch"]
    try:
        _send_in_batches(ring.send_many, payload, batch, warm_share(spec) * spec.consumers)
        gate.wait()
        _send_in_batches(ring.send_many, payload, batch, spec.count)
        ring.end_stream()
    finally:
        ring.close()


def ring_bytes_consumer(ring: Any, spec: H.Spec, gate: H.Gate) -> H.Sample:
    from mmipc import EndOfStream

    recv_bytes = ring.recv_bytes
    got = nbytes = 0
    try:
        for _ in range(warm_share(spec)):
            recv_bytes(PEER_TIMEOUT)
        t0 = gate.wait()
        try:
            while True:
                nbytes += len(recv_bytes(PEER_TIMEOUT))
                got += 1
        except EndOfStream:
            seconds = time.perf_counter() - t0
    finally:
        ring.close()
    return H.Sample(got, nbytes, seconds)


def ring_batch_consumer(ring: Any, spec: H.Spec, gate: H.Gate) -> H.Sample:
    from mmipc import EndOfStream

    recv_many = ring.recv_many
    most = spec.options["batch"]
    got = nbytes = 0
    try:
        left = warm_share(spec)
        while left:
            left -= len(recv_many(min(most, left), PEER_TIMEOUT))
        t0 = gate.wait()
        try:
            while True:
                records = recv_many(most, PEER_TIMEOUT)
                got += len(records)
                nbytes += sum(map(len, records))
        except EndOfStream:
            seconds = time.perf_counter() - t0
    finally:
        ring.close()
    return H.Sample(got, nbytes, seconds)


def ring_views_consumer(ring: Any, spec: H.Spec, gate: H.Gate) -> H.Sample:
    from mmipc import EndOfStream

    recv_views = ring.recv_views
    most = spec.options["batch"]
    got = nbytes = 0
    try:
        left = warm_share(spec)
        while left:
            views = recv_views(min(most, left), PEER_TIMEOUT)
            left -= len(views)
            del views
        ring.release_views()  # before the barrier: the others' warm-up may need this space
        t0 = gate.wait()
        try:
            while True:
                views = recv_views(most, PEER_TIMEOUT)
                got += len(views)
                nbytes += sum(map(len, views))
                del views  # released by the next call
        except EndOfStream:
            seconds = time.perf_counter() - t0
    finally:
        ring.close()
    return H.Sample(got, nbytes, seconds)


# -- multiprocessing.Queue -----------------------------------------------------------------------


def _open_queue(spec: H.Spec, ctx: Any) -> H.Opened:
    q = ctx.Queue()

    def close() -> None:
        q.close()
        q.join_thread()

    return H.Opened(q, close)


def queue_producer(q: Any, spec: H.Spec, gate: H.Gate, index: int) -> None:
    payload = payload_of(spec.size)
    put = q.put
    for _ in range(warm_share(spec) * spec.consumers):
        put(payload)
    gate.wait()
    for _ in range(spec.count):
        put(payload)
    for _ in range(spec.consumers):
        put(None)
    q.close()
    q.join_thread()  # the feeder thread has written everything to the pipe


def queue_consumer(q: Any, spec: H.Spec, gate: H.Gate) -> H.Sample:
    get = q.get
    for _ in range(warm_share(spec)):
        get(timeout=PEER_TIMEOUT)
    got = nbytes = 0
    t0 = gate.wait()
    while (item := get(timeout=PEER_TIMEOUT)) is not None:
        got += 1
        nbytes += len(item)
    return H.Sample(got, nbytes, time.perf_counter() - t0)


# -- faster-fifo ---------------------------------------------------------------------------------
#
# With several consumers faster-fifo's blocking get/get_many sometimes raises queue.Empty long
# before its timeout (measured here: a consumer woken while another one took the data); the
# consumers retry until PEER_TIMEOUT has really passed.


def _ffifo_get(q: Any) -> Any:
    deadline = time.monotonic() + PEER_TIMEOUT
    while True:
        try:
            return q.get(timeout=PEER_TIMEOUT)
        except queue_module.Empty:
            if time.monotonic() > deadline:
                raise


def _ffifo_get_many(q: Any, most: int) -> list[Any]:
    deadline = time.monotonic() + PEER_TIMEOUT
    while True:
        try:
            items: list[Any] = q.get_many(timeout=PEER_TIMEOUT, max_messages_to_get=most)
            return items
        except queue_module.Empty:
            if time.monotonic() > deadline:
                raise


def _open_ffifo(spec: H.Spec, ctx: Any) -> H.Opened:
    import faster_fifo  # type: ignore[import-not-found, unused-ignore]

    q = faster_fifo.Queue(max_size_bytes=capacity_for(spec.size) + 4096)
    return H.Opened(q, q.close)


def ffifo_producer(q: Any, spec: H.Spec, gate: H.Gate, index: int) -> None:
    payload = payload_of(spec.size)
    put = q.put
    for _ in range(warm_share(spec) * spec.consumers):
        put(payload, timeout=PEER_TIMEOUT)
    gate.wait()
    for _ in range(spec.count):
        put(payload, timeout=PEER_TIMEOUT)
    for _ in range(spec.consumers):
        put(None, timeout=PEER_TIMEOUT)


def ffifo_consumer(q: Any, spec: H.Spec, gate: H.Gate) -> H.Sample:
    for _ in range(warm_share(spec)):
        _ffifo_get(q)
    got = nbytes = 0
    t0 = gate.wait()
    while (item := _ffifo_get(q)) is not None:
        got += 1
        nbytes += len(item)
    return H.Sample(got, nbytes, time.perf_counter() - t0)


def ffifo_batch_producer(q: Any, spec: H.Spec, gate: H.Gate, index: int) -> None:
    payload = payload_of(spec.size)
    batch = spec.options["batch"]
    _send_in_batches(q.put_many, payload, batch, warm_share(spec) * spec.consumers, timeout=PEER_TIMEOUT)
    gate.wait()
    _send_in_batches(q.put_many, payload, batch, spec.count, timeout=PEER_TIMEOUT)
    q.put_many([None] * spec.consumers, timeout=PEER_TIMEOUT)


def ffifo_batch_consumer(q: Any, spec: H.Spec, gate: H.Gate) -> H.Sample:
    most = spec.options["batch"]
    left = warm_share(spec)
    while left:
        left -= len(_ffifo_get_many(q, min(most, left)))
    got = nbytes = 0
    t0 = gate.wait()
    while True:
        items = _ffifo_get_many(q, most)
        if items[-1] is not None:
            got += len(items)
            nbytes += sum(map(len, items))
            continue
        # The end: None markers come after every record (one producer, FIFO order).
        first_end = items.index(None)
        got += first_end
        nbytes += sum(map(len, items[:first_end]))
        seconds = time.perf_counter() - t0
        extra = len(items) - first_end - 1
        if extra:
            q.put_many([None] * extra, timeout=PEER_TIMEOUT)  # the other consumers' markers
        break
    return H.Sample(got, nbytes, seconds)


# -- the benchmark -----------------------------------------------------------------------------


def cases() -> list[H.Case]:
    ffifo = lambda: _missing("faster_fifo")  # noqa: E731
    return [
        H.Case(
            RING_BYTES,
            _open_ring,
            ring_bytes_consumer,
            ring_send_producer,
            unavailable=_ring_unavailable,
            delivery=SHARED,
        ),
        H.Case(
            RING_BATCH,
            _open_ring,
            ring_batch_consumer,
            ring_batch_producer,
            unavailable=_ring_unavailable,
            delivery=SHARED,
        ),
        H.Case(
            RING_VIEWS,
            _open_ring,
            ring_views_consumer,
            ring_batch_producer,
            unavailable=_ring_unavailable,
            delivery=SHARED,
        ),
        H.Case(QUEUE, _open_queue, queue_consumer, queue_producer, delivery=SHARED),
        H.Case(FFIFO, _open_ffifo, ffifo_consumer, ffifo_producer, unavailable=ffifo, delivery=SHARED),
        H.Case(
            FFIFO_BATCH,
            _open_ffifo,
            ffifo_batch_consumer,
            ffifo_batch_producer,
            unavailable=ffifo,
            delivery=SHARED,
        ),
    ]


BASELINES = ((QUEUE, "Queue"), (FFIFO, "ffifo"), (FFIFO_BATCH, "ffifo many"))


def group_name(consumers: int, size: int) -> str:
    return f"{H.format_size(size)}, 1 producer -> {consumers} consumers"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--sizes", type=parse_sizes, default=list(SIZES), help="record sizes (default 64,64K)"
    )
    parser.add_argument(
        "--consumers", type=parse_counts, default=list(CONSUMERS), help="consumer counts (default 2,4)"
    )
    parser.add_argument(
        "--batch", type=int, default=None, help="records per send_many/put_many/get_many call"
    )


def _best(results: H.Results, group: str, names: tuple[str, ...]) -> tuple[str | None, float | None]:
    found = [(rate, case) for case in names if (rate := results.rate(group, case)) is not None]
    if not found:
        return None, None
    rate, case = max(found)
    return case, rate


def _target(description: str, rate: float | None, peer: float | None) -> H.Target:
    reason = _ring_unavailable() if rate is None else None
    if reason is not None:
        return H.Target(description, "FAIL", f"not measured: {reason}")
    return H.ratio_target(description, rate, peer, 3.0)


def targets(results: H.Results, sizes: list[int], consumers: list[int]) -> list[H.Target]:
    found: list[H.Target] = []
    for size in sizes:
        for n in consumers:
            group = group_name(n, size)
            case, rate = _best(results, group, RING_CASES)
            api = case.removeprefix("Ring queue ") if case else "mmipc"
            found.append(_target(f"{group}: mmipc ({api}) >= 3x mp.Queue", rate, results.rate(group, QUEUE)))
            peer_case, peer = _best(results, group, FFIFO_CASES)
            peer_api = peer_case.removeprefix("faster-fifo ") if peer_case else "-"
            found.append(_target(f"{group}: mmipc ({api}) >= 3x faster-fifo ({peer_api})", rate, peer))
    return found


def copy_bound(size: int, seconds: float) -> float:
    """Records/s of a producer that does nothing but copy ``size`` bytes into a ring-sized buffer.

    Every transport here writes each payload at least once on the producer's side (mmipc's
    ``send``: one copy into the ring), so this is a ceiling for one producer: measured in this
    process, round robin through ``capacity_for(size)`` bytes of anonymous shared memory.
    """
    import mmap

    capacity = capacity_for(size)
    buf = mmap.mmap(-1, capacity)
    view = memoryview(buf)
    payload = payload_of(size)
    slots = capacity // size
    for i in range(slots):  # fault every page in first
        view[i * size : (i + 1) * size] = payload
    best = 0.0
    for _ in range(3):
        done = 0
        t0 = time.perf_counter()
        while (elapsed := time.perf_counter() - t0) < seconds:
            for i in range(slots):
                view[i * size : (i + 1) * size] = payload
            done += slots
        best = max(best, done / elapsed)
    view.release()
    buf.close()
    return best


def print_copy_bounds(
    results: H.Results, sizes: list[int], consumers: list[int], seconds: float
) -> dict[str, Any]:
    """The copy ceiling per size, next to 3x the best faster-fifo figure of each group."""
    bounds: dict[str, Any] = {}
    print("producer copy ceiling (one process copying each payload once into a ring-sized buffer):")
    for size in sizes:
        bound = copy_bound(size, seconds)
        line = f"  {H.format_size(size)}: {H.format_rate(bound)} records/s"
        for n in consumers:
            _case, peer = _best(results, group_name(n, size), FFIFO_CASES)
            if peer:
                line += (
                    f"; {n} consumers: the ceiling is {bound / peer:.2f}x faster-fifo"
                    f" (the 3x target is {H.format_rate(3 * peer)}/s)"
                )
        print(line)
        bounds[str(size)] = bound
    return bounds


def run(args: argparse.Namespace) -> int:
    settings = H.Settings.from_args(args, "queue")
    ctx = H.make_context(settings, preload=["benchmarks.queue", "mmipc", "faster_fifo"])
    info = H.machine_info(("mmipc", "faster-fifo"))
    command = "python -m benchmarks " + shlex.join(sys.argv[1:])
    print(f"$ {command}")
    H.print_machine(info, settings)
    reason = _ring_unavailable()
    if reason is not None:
        print(f"NOTE: {reason}: the mmipc cases are skipped (no stand-in numbers).", flush=True)
    measurements: list[H.Measurement] = []
    selected = [case for case in cases() if settings.selected(case.name)]
    for n in args.consumers:
        for size in args.sizes:
            for case in selected:
                measurements.append(
                    H.measure(
                        ctx,
                        case,
                        group=group_name(n, size),
                        size=size,
                        producers=1,
                        consumers=n,
                        settings=settings,
                        initial_count=max(
                            4, min(20_000 if not settings.quick else 5_000, (64 << 20) // size)
                        ),
                        options={"batch": args.batch or batch_for(size)},
                    )
                )
    results = H.Results(measurements)
    table = H.print_table(results, BASELINES)
    print("(msgs/s: records consumed per second by all consumers together.)")
    checks = targets(results, args.sizes, args.consumers)
    H.evaluate_targets(checks)
    bounds = print_copy_bounds(results, args.sizes, args.consumers, settings.seconds)
    H.write_json(
        settings.json_path,
        {
            "benchmark": "queue",
            "command": command,
            "machine": info,
            "settings": {
                "quick": settings.quick,
                "repeat": settings.repeat,
                "seconds": settings.seconds,
                "start_method": settings.start_method,
                "sizes": args.sizes,
                "consumers": args.consumers,
                "batch": args.batch,
                "statistic": "best of repeats (highest total msgs/s)",
            },
            "measurements": [m.to_json() for m in measurements],
            "targets": [t.to_json() for t in checks],
            "copy_bound_records_per_s": bounds,
            "table": table,
        },
    )
    failed = [m for m in measurements if m.note.startswith("failed")]
    return 1 if failed else 0
