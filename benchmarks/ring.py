"""Ring throughput against the transports a user would pick instead, in one run.

``python -m benchmarks ring [--quick] [--sizes 64,4K,1M,64M] [--producers 1,4]``

Cases (each cell in fresh processes, see ``_harness``):

* ``memcpy (1 process)``: the reference: one process copies the same payload into successive
  slots of a buffer as large as the ring's working set (slice assignment, i.e. ``memcpy``): the
  ring's capacity, or, where a ring rewinds (``mmipc._ring.REWIND_AT``: over 16 MiB, records up
  to 4 MiB), the first ``REWIND_AT`` plus two records, which is where a producer whose consumer
  keeps up writes.
* ``Ring send / recv_bytes``: the copy path, bytes in, bytes out (two copies: into the ring,
  out of it; the two processes copy in parallel).
* ``Ring send / recv view``: one copy in; the consumer reads a zero-copy view (touches a byte).
* ``Ring reserve / recv view``: in place: the producer reserves a record and stamps 8 bytes
  into it (it builds its data where the consumer reads it); the consumer touches one byte of a
  zero-copy view. No payload byte is copied, so this measures the per-record cost; its GB/s is
  the payload size the records carry, not a copy rate.
* ``Ring send_many / recv_many``: the batch API, ``--batch`` records per call (default: as many
  as fit in 1 MiB, at most 1024).
* Peers: ``multiprocessing.Queue`` (``put``/``get`` of ``bytes``), ``multiprocessing.Pipe``
  (``send_bytes``/``recv_bytes``; one producer only: several writers interleave large
  messages), pyzmq ``PUSH``/``PULL`` over ``ipc://`` (``copy=False`` from pyzmq's 64 KiB
  zero-copy threshold up), faster-fifo ``put``/``get`` and ``put_many``/``get_many``.

Bounded transports get the same capacity: ``max(64 MiB, 8 x record)`` (512 MiB for 64 MiB
messages). With several producers the ring is created with ``multi_writer=True``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import shlex
import sys
import tempfile
import time
from typing import Any

from benchmarks import _harness as H

DESCRIPTION = "Ring (copy, in place, batch) vs mp.Queue, mp.Pipe, pyzmq, faster-fifo, memcpy; 64 B-64 MiB"

SIZES = (64, 4 << 10, 1 << 20, 64 << 20)
MIN_CAPACITY = 64 << 20
BATCH_BYTES = 1 << 20
ZMQ_COPY_THRESHOLD = 64 << 10  # pyzmq's own zmq.COPY_THRESHOLD: below it, copy=False copies anyway
PEER_TIMEOUT = 120.0  # seconds a peer's blocking get may wait before the cell counts as failed

MEMCPY = "memcpy (1 process)"
RING_BYTES = "Ring send / recv_bytes"
RING_VIEW = "Ring send / recv view"
RING_INPLACE = "Ring reserve / recv view"
RING_BATCH = "Ring send_many / recv_many"
QUEUE = "mp.Queue put / get"
PIPE = "mp.Pipe send_bytes / recv_bytes"
ZMQ = "pyzmq PUSH/PULL ipc"
FFIFO = "faster-fifo put / get"
FFIFO_BATCH = "faster-fifo put_many / get_many"

RING_CASES = (RING_BYTES, RING_VIEW, RING_INPLACE, RING_BATCH)


# -- helpers ---------------------------------------------------------------------------------


def record_size(size: int) -> int:
    """Bytes a record of ``size`` occupies in a Ring (32-byte header, 32-byte aligned)."""
    return (size + 63) & ~31


def capacity_for(size: int) -> int:
    return max(MIN_CAPACITY, 8 * record_size(size))


def batch_for(size: int) -> int:
    return max(1, min(1024, BATCH_BYTES // size))


def payload_of(size: int) -> bytes:
    # Not zeros: a zero-filled source may be the kernel's shared zero page and copy from cache.
    return (bytes(range(1, 256)) * (size // 255 + 1))[:size]


def _missing(module: str) -> str | None:
    return None if importlib.util.find_spec(module) is not None else f"{module} is not installed"


# -- memcpy reference ------------------------------------------------------------------------


def _open_nothing(spec: H.Spec, ctx: Any) -> H.Opened:
    return H.Opened(None)


def memcpy_consumer(handle: Any, spec: H.Spec, gate: H.Gate) -> H.Sample:
    size = spec.size
    capacity = spec.options["capacity"]
    src = payload_of(size)
    stride = record_size(size)
    try:
        from mmipc import _ring

        if capacity > 2 * _ring.REWIND_AT and size <= _ring.REWIND_LAG:
            capacity = _ring.REWIND_AT + 2 * stride  # a rewinding ring's working set
    except (ImportError, AttributeError):
        pass  # an mmipc without rewinding: the whole capacity
    target = memoryview(bytearray(b"\x01") * capacity)  # every page touched before timing
    last = capacity - size  # the last offset a payload fits at
    offset = 0
    for _ in range(spec.warmup):
        target[offset : offset + size] = src
        offset += stride
        if offset > last:
            offset = 0
    t0 = gate.wait()
    for _ in range(spec.count):
        target[offset : offset + size] = src
        offset += stride
        if offset > last:
            offset = 0
    return H.Sample(spec.count, spec.count * size, time.perf_counter() - t0)


# -- Ring --------------------------------------------------------------------------------------


def _open_ring(spec: H.Spec, ctx: Any) -> H.Opened:
    from mmipc import Ring

    ring = Ring.create(capacity_for(spec.size), multi_writer=spec.producers > 1)
    return H.Opened(ring, ring.close)  # anonymous (memfd): nothing to unlink


def ring_send_producer(ring: Any, spec: H.Spec, gate: H.Gate, index: int) -> None:
    payload = payload_of(spec.size)
    send = ring.send
    try:
        for _ in range(spec.warmup):
            send(payload)
        gate.wait()
        for _ in range(spec.count):
            send(payload)
    finally:
        ring.close()


def ring_reserve_producer(ring: Any, spec: H.Spec, gate: H.Gate, index: int) -> None:
    size = spec.size
    stamp = payload_of(min(8, size))
    reserve = ring.reserve
    try:
        for _ in range(spec.warmup):
            with reserve(size) as buf:
                buf[:8] = stamp
        gate.wait()
        for _ in range(spec.count):
            with reserve(size) as buf:
                buf[:8] = stamp
    finally:
        ring.close()


def ring_batch_producer(ring: Any, spec: H.Spec, gate: H.Gate, index: int) -> None:
    batch = spec.options["batch"]
    items = [payload_of(spec.size)] * batch
    send_many = ring.send_many

    def send(count: int) -> None:
        full, rest = divmod(count, batch)
        for _ in range(full):
            send_many(items)
        if rest:
            send_many(items[:rest])

    try:
        send(spec.warmup)
        gate.wait()
        send(spec.count)
    finally:
        ring.close()


def ring_bytes_consumer(ring: Any, spec: H.Spec, gate: H.Gate) -> H.Sample:
    recv_bytes = ring.recv_bytes
    try:
        for _ in range(spec.warmup_total):
            recv_bytes()
        nbytes = 0
        t0 = gate.wait()
        for _ in range(spec.total):
            nbytes += len(recv_bytes())
        seconds = time.perf_counter() - t0
    finally:
        ring.close()
    return H.Sample(spec.total, nbytes, seconds)


def ring_view_consumer(ring: Any, spec: H.Spec, gate: H.Gate) -> H.Sample:
    recv = ring.recv
    touched = 0
    try:
        for _ in range(spec.warmup_total):
            with recv() as view:
                touched += view[0]
        nbytes = 0
        t0 = gate.wait()
        for _ in range(spec.total):
            with recv() as view:
                touched += view[0]
                nbytes += len(view)
        seconds = time.perf_counter() - t0
    finally:
        ring.close()
    return H.Sample(spec.total, nbytes, seconds)


def ring_batch_consumer(ring: Any, spec: H.Spec, gate: H.Gate) -> H.Sample:
    recv_many = ring.recv_many
    most = max(1024, spec.options["batch"])

    def receive(total: int) -> int:
        got = nbytes = 0
        while got < total:
            records = recv_many(min(most, total - got))
            got += len(records)
            nbytes += sum(map(len, records))
        return nbytes

    try:
        receive(spec.warmup_total)
        t0 = gate.wait()
        nbytes = receive(spec.total)
        seconds = time.perf_counter() - t0
    finally:
        ring.close()
    return H.Sample(spec.total, nbytes, seconds)


# -- multiprocessing.Queue and Pipe ------------------------------------------------------------


def _open_queue(spec: H.Spec, ctx: Any) -> H.Opened:
    q = ctx.Queue()

    def close() -> None:
        q.close()
        q.join_thread()

    return H.Opened(q, close)


def queue_producer(q: Any, spec: H.Spec, gate: H.Gate, index: int) -> None:
    payload = payload_of(spec.size)
    put = q.put
    for _ in range(spec.warmup):
        put(payload)
    gate.wait()
    for _ in range(spec.count):
        put(payload)
    q.close()
    q.join_thread()  # the feeder thread has written everything to the pipe


def queue_consumer(q: Any, spec: H.Spec, gate: H.Gate) -> H.Sample:
    get = q.get
    for _ in range(spec.warmup_total):
        get(timeout=PEER_TIMEOUT)
    nbytes = 0
    t0 = gate.wait()
    for _ in range(spec.total):
        nbytes += len(get(timeout=PEER_TIMEOUT))
    return H.Sample(spec.total, nbytes, time.perf_counter() - t0)


def _open_pipe(spec: H.Spec, ctx: Any) -> H.Opened:
    reader, writer = ctx.Pipe(duplex=False)

    def close() -> None:
        reader.close()
        writer.close()

    return H.Opened((reader, writer), close)


def pipe_producer(ends: Any, spec: H.Spec, gate: H.Gate, index: int) -> None:
    reader, writer = ends
    reader.close()
    payload = payload_of(spec.size)
    send_bytes = writer.send_bytes
    for _ in range(spec.warmup):
        send_bytes(payload)
    gate.wait()
    for _ in range(spec.count):
        send_bytes(payload)
    writer.close()


def pipe_consumer(ends: Any, spec: H.Spec, gate: H.Gate) -> H.Sample:
    reader, writer = ends
    writer.close()
    recv_bytes = reader.recv_bytes
    for _ in range(spec.warmup_total):
        recv_bytes()
    nbytes = 0
    t0 = gate.wait()
    for _ in range(spec.total):
        nbytes += len(recv_bytes())
    return H.Sample(spec.total, nbytes, time.perf_counter() - t0)


# -- pyzmq -----------------------------------------------------------------------------------


def _open_zmq(spec: H.Spec, ctx: Any) -> H.Opened:
    directory = tempfile.mkdtemp(prefix="mmipc-bench-")
    path = os.path.join(directory, "push-pull")

    def close() -> None:
        with contextlib.suppress(OSError):
            os.unlink(path)
        with contextlib.suppress(OSError):
            os.rmdir(directory)

    return H.Opened(f"ipc://{path}", close)


def zmq_producer(address: str, spec: H.Spec, gate: H.Gate, index: int) -> None:
    import zmq

    context = zmq.Context()
    sock = context.socket(zmq.PUSH)
    sock.setsockopt(zmq.LINGER, int(PEER_TIMEOUT * 1000))
    sock.connect(address)
    payload = payload_of(spec.size)
    copy = spec.size < ZMQ_COPY_THRESHOLD
    send: Any = sock.send  # copy is a runtime bool: pyzmq's overloads want a literal
    try:
        for _ in range(spec.warmup):
            send(payload, copy=copy)
        gate.wait()
        for _ in range(spec.count):
            send(payload, copy=copy)
        gate.finish()  # disconnecting before the consumer read everything can lose messages
    finally:
        sock.close()
        context.term()  # returns once everything queued is delivered (or LINGER passed)


def zmq_consumer(address: str, spec: H.Spec, gate: H.Gate) -> H.Sample:
    import zmq

    context = zmq.Context()
    sock = context.socket(zmq.PULL)
    sock.setsockopt(zmq.RCVTIMEO, int(PEER_TIMEOUT * 1000))
    sock.bind(address)
    copy = spec.size < ZMQ_COPY_THRESHOLD  # large: a zero-copy Frame instead of new bytes
    recv = sock.recv
    try:
        for _ in range(spec.warmup_total):
            recv(copy=copy)
        nbytes = 0
        t0 = gate.wait()
        for _ in range(spec.total):
            nbytes += len(recv(copy=copy))
        seconds = time.perf_counter() - t0
        gate.finish()
    finally:
        sock.close(linger=0)
        context.term()
    return H.Sample(spec.total, nbytes, seconds)


# -- faster-fifo -----------------------------------------------------------------------------


def _open_ffifo(spec: H.Spec, ctx: Any) -> H.Opened:
    import faster_fifo  # type: ignore[import-not-found, unused-ignore]

    # Room for the same bytes as the ring, plus pickle's framing of each message.
    q = faster_fifo.Queue(max_size_bytes=capacity_for(spec.size) + 4096)
    return H.Opened(q, q.close)


def ffifo_producer(q: Any, spec: H.Spec, gate: H.Gate, index: int) -> None:
    payload = payload_of(spec.size)
    put = q.put
    for _ in range(spec.warmup):
        put(payload, timeout=PEER_TIMEOUT)
    gate.wait()
    for _ in range(spec.count):
        put(payload, timeout=PEER_TIMEOUT)


def ffifo_consumer(q: Any, spec: H.Spec, gate: H.Gate) -> H.Sample:
    get = q.get
    for _ in range(spec.warmup_total):
        get(timeout=PEER_TIMEOUT)
    nbytes = 0
    t0 = gate.wait()
    for _ in range(spec.total):
        nbytes += len(get(timeout=PEER_TIMEOUT))
    return H.Sample(spec.total, nbytes, time.perf_counter() - t0)


def ffifo_batch_producer(q: Any, spec: H.Spec, gate: H.Gate, index: int) -> None:
    batch = spec.options["batch"]
    items = [payload_of(spec.size)] * batch
    put_many = q.put_many

    def send(count: int) -> None:
        full, rest = divmod(count, batch)
        for _ in range(full):
            put_many(items, timeout=PEER_TIMEOUT)
        if rest:
            put_many(items[:rest], timeout=PEER_TIMEOUT)

    send(spec.warmup)
    gate.wait()
    send(spec.count)


def ffifo_batch_consumer(q: Any, spec: H.Spec, gate: H.Gate) -> H.Sample:
    get_many = q.get_many
    most = max(1024, spec.options["batch"])

    def receive(total: int) -> int:
        got = nbytes = 0
        while got < total:
            items = get_many(timeout=PEER_TIMEOUT, max_messages_to_get=min(most, total - got))
            got += len(items)
            nbytes += sum(map(len, items))
        return nbytes

    receive(spec.warmup_total)
    t0 = gate.wait()
    nbytes = receive(spec.total)
    return H.Sample(spec.total, nbytes, time.perf_counter() - t0)


# -- the benchmark -----------------------------------------------------------------------------


def cases() -> list[H.Case]:
    return [
        H.Case(MEMCPY, _open_nothing, memcpy_consumer, max_producers=0),
        H.Case(RING_BYTES, _open_ring, ring_bytes_consumer, ring_send_producer),
        H.Case(RING_VIEW, _open_ring, ring_view_consumer, ring_send_producer),
        H.Case(RING_INPLACE, _open_ring, ring_view_consumer, ring_reserve_producer, logical_bytes=True),
        H.Case(RING_BATCH, _open_ring, ring_batch_consumer, ring_batch_producer),
        H.Case(QUEUE, _open_queue, queue_consumer, queue_producer),
        H.Case(PIPE, _open_pipe, pipe_consumer, pipe_producer, max_producers=1),
        H.Case(ZMQ, _open_zmq, zmq_consumer, zmq_producer, unavailable=lambda: _missing("zmq")),
        H.Case(
            FFIFO, _open_ffifo, ffifo_consumer, ffifo_producer, unavailable=lambda: _missing("faster_fifo")
        ),
        H.Case(
            FFIFO_BATCH,
            _open_ffifo,
            ffifo_batch_consumer,
            ffifo_batch_producer,
            unavailable=lambda: _missing("faster_fifo"),
        ),
    ]


BASELINES = ((QUEUE, "Queue"), (PIPE, "Pipe"), (ZMQ, "pyzmq"), (FFIFO, "ffifo"), (MEMCPY, "memcpy"))


def group_name(producers: int, size: int) -> str:
    return f"{producers} producer{'s' if producers > 1 else ''}, {H.format_size(size)}"


def parse_sizes(text: str) -> list[int]:
    """``"64,4K,1M"`` -> ``[64, 4096, 1048576]``."""
    return [H.parse_size(part) for part in text.split(",")]


def parse_counts(text: str) -> list[int]:
    """``"1,4"`` -> ``[1, 4]``."""
    try:
        values = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of integers: {text!r}")
    if any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"producer counts must be >= 1: {text!r}")
    return values


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--sizes",
        type=parse_sizes,
        default=list(SIZES),
        help="comma-separated message sizes (default 64,4K,1M,64M)",
    )
    parser.add_argument(
        "--producers",
        type=parse_counts,
        default=[1, 4],
        help="comma-separated producer counts (default 1,4)",
    )
    parser.add_argument("--batch", type=int, default=None, help="records per send_many/put_many call")


def targets(results: H.Results) -> list[H.Target]:
    def rate(producers: int, size: int, case: str) -> float | None:
        return results.rate(group_name(producers, size), case)

    kib4, mib1, mib64 = 4 << 10, 1 << 20, 64 << 20
    found = [
        H.ratio_target(
            "64 B: single-record API (send/recv_bytes) >= 1.2x pyzmq",
            rate(1, 64, RING_BYTES),
            rate(1, 64, ZMQ),
            1.2,
        ),
        H.ratio_target(
            "64 B: single-record API (send/recv_bytes) >= 8x mp.Queue",
            rate(1, 64, RING_BYTES),
            rate(1, 64, QUEUE),
            8.0,
        ),
        H.ratio_target(
            "64 B: batch API (send_many/recv_many) >= 2.5x pyzmq",
            rate(1, 64, RING_BATCH),
            rate(1, 64, ZMQ),
            2.5,
        ),
        H.ratio_target(
            "4 KiB: single-record API (send/recv_bytes) >= 5x pyzmq",
            rate(1, kib4, RING_BYTES),
            rate(1, kib4, ZMQ),
            5.0,
        ),
        H.ratio_target(
            "1 MiB: copy path send/recv_bytes >= 70% of memcpy",
            rate(1, mib1, RING_BYTES),
            rate(1, mib1, MEMCPY),
            0.7,
            unit="%",
        ),
        H.ratio_target(
            "1 MiB: copy path send/recv view >= 70% of memcpy",
            rate(1, mib1, RING_VIEW),
            rate(1, mib1, MEMCPY),
            0.7,
            unit="%",
        ),
        H.ratio_target(
            "in place: msgs/s at 64 MiB within 2x of 4 KiB",
            rate(1, mib64, RING_INPLACE),
            rate(1, kib4, RING_INPLACE),
            0.5,
        ),
    ]
    sizes = sorted({m.size for m in results.measurements})
    many = sorted({m.producers for m in results.measurements if m.producers > 1})
    for producers in many:
        for case in RING_CASES:
            for size in sizes:
                found.append(
                    H.ratio_target(
                        f"{producers} producers, {H.format_size(size)}, {case}: total >= 1 producer",
                        rate(producers, size, case),
                        rate(1, size, case),
                        1.0,
                    )
                )
    return found


def initial_count(size: int, quick: bool) -> int:
    """The first pilot's message count: ~0.05 s for the fastest cases, more for the slow ones."""
    return max(4, min(20_000 if not quick else 5_000, (64 << 20) // size))


def run(args: argparse.Namespace) -> int:
    settings = H.Settings.from_args(args, "ring")
    ctx = H.make_context(settings, preload=["benchmarks.ring", "mmipc", "zmq", "faster_fifo"])
    info = H.machine_info(("mmipc", "numpy", "pyzmq", "faster-fifo"))
    with contextlib.suppress(ImportError):
        import zmq

        info["packages"]["libzmq"] = zmq.zmq_version()
    command = "python -m benchmarks " + shlex.join(sys.argv[1:])
    print(f"$ {command}")
    H.print_machine(info, settings)
    measurements: list[H.Measurement] = []
    selected = [case for case in cases() if settings.selected(case.name)]
    for producers in args.producers:
        for size in args.sizes:
            for case in selected:
                if producers > 1 and case.max_producers is not None and producers > case.max_producers:
                    continue  # not shown at all: Pipe and memcpy are single-producer by nature
                # memcpy is single-process: it is filed under the 1-producer groups.
                options = {"capacity": capacity_for(size), "batch": args.batch or batch_for(size)}
                measurements.append(
                    H.measure(
                        ctx,
                        case,
                        group=group_name(producers, size),
                        size=size,
                        producers=0 if case.name == MEMCPY else producers,
                        settings=settings,
                        initial_count=initial_count(size, settings.quick),
                        options=options,
                    )
                )
    results = H.Results(measurements)
    table = H.print_table(results, BASELINES)
    checks = targets(results)
    H.evaluate_targets(checks)
    H.write_json(
        settings.json_path,
        {
            "benchmark": "ring",
            "command": command,
            "machine": info,
            "settings": {
                "quick": settings.quick,
                "repeat": settings.repeat,
                "seconds": settings.seconds,
                "start_method": settings.start_method,
                "sizes": args.sizes,
                "producers": args.producers,
                "batch": args.batch,
                "statistic": "best of repeats (highest msgs/s)",
            },
            "measurements": [m.to_json() for m in measurements],
            "targets": [t.to_json() for t in checks],
            "table": table,
        },
    )
    failed = [m for m in measurements if m.note.startswith("failed")]
    return 1 if failed else 0
