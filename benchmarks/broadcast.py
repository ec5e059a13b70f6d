"""Broadcast: one producer, 1/2/4 subscriber processes; Ring broadcast vs pyzmq PUB/SUB, iceoryx2.

``python -m benchmarks broadcast [--quick] [--sizes 64,1M] [--subscribers 1,2,4]``

Every subscriber receives every record; the figure is the **total delivered** msgs/s (the sum
over subscribers, over the slowest subscriber's time from the start barrier to its last
record). Cells run in fresh processes (see ``_harness``; ``consumers`` = subscribers).

Cases:

* ``Ring broadcast send / recv_bytes`` (below 64 KiB) and ``Ring broadcast send / recv view``
  (64 KiB and up: a zero-copy view, the subscriber reads one byte): ``Ring.create(capacity,
  mode="broadcast")`` in the parent, ``ring.subscribe(start="next")`` in each subscriber
  process; the producer starts once every subscriber has subscribed (a semaphore), so nothing
  is missed. ``Ring broadcast send_many / recv_many``: the batch API (below 64 KiB).
* ``pyzmq PUB/SUB ipc``: the producer binds a PUB socket, each subscriber connects a SUB
  socket subscribed to everything; ``recv(copy=False)`` (a frame, one byte read) from 64 KiB.
  PUB drops messages for a subscriber whose queue is full (its HWM, set on both sides so a
  subscriber's queue holds the ring's capacity in bytes): only delivered messages count, and
  the drops are reported. When the producer outruns the subscribers (1 MiB: zero-copy sends
  are only queued) most messages are dropped and the delivered rate is measured over the
  short time the subscribers take to drain their queues.
* ``iceoryx2 publish/subscribe``: a ``Slice[c_uint8]`` service (``max_slice_len`` = the
  record size, safe overflow off, publisher ``RetryUntilDelivered``, subscriber buffer =
  capacity / size, 16..1024 samples). The publisher loans a sample, copies the payload into it
  (``ctypes.memmove``: the copy ``Ring.send`` does too) and sends. Subscribers have no blocking
  receive: they poll ``receive()`` and ``os.sched_yield()`` when it is empty. Below 64 KiB a
  subscriber copies the payload out (``ctypes.string_at``); from 64 KiB it reads one byte in
  place. Measured here: with ``RetryUntilDelivered``, ``send()`` sometimes reports fewer
  subscribers than are connected (in ~2 of 10 runs of 200k 64-byte samples to 2 subscribers,
  about 600 sends, starting when a subscriber's buffer first fills): those samples are lost,
  so iceoryx2 runs under the same drop-tolerant protocol as pyzmq.

The peers' protocol (they may lose messages): every message's first byte says what it is. The
producer sends the warm-up, then repeats a "warm-up over" message every millisecond until every
subscriber has acknowledged one (a semaphore: slow joiners are connected by then), passes the
start barrier, sends the timed messages, then repeats an "end" message until every subscriber
has acknowledged one. A subscriber counts the timed messages it receives until its first "end"
(its time stops there).

Targets: mmipc ahead of pyzmq at every point (size x subscribers; the better of its
single-record and batch APIs, both shown); at 1 MiB, ahead of iceoryx2.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import functools
import importlib.util
import os
import shlex
import sys
import tempfile
import time
import uuid
from typing import Any

from benchmarks import _harness as H
from benchmarks.ring import capacity_for, parse_counts, parse_sizes, payload_of

DESCRIPTION = "Ring broadcast to 1/2/4 subscribers vs pyzmq PUB/SUB and iceoryx2 pub/sub; 64 B, 1 MiB"

SIZES = (64, 1 << 20)
SUBSCRIBERS = (1, 2, 4)
VIEW_FROM = 64 << 10  # from this size subscribers read zero-copy views instead of copies
BATCH_BYTES = 1 << 20
PEER_TIMEOUT = 120.0

RING_BYTES = "Ring broadcast send / recv_bytes"
RING_VIEW = "Ring broadcast send / recv view"
RING_BATCH = "Ring broadcast send_many / recv_many"
ZMQ = "pyzmq PUB/SUB ipc"
IOX = "iceoryx2 publish/subscribe"
RING_CASES = (RING_BYTES, RING_VIEW, RING_BATCH)

WARM, LAST, DATA, END = 0x57, 0x4C, 0x44, 0x45  # first byte of a peer message: b"W", b"L", b"D", b"E"


def _missing(module: str) -> str | None:
    return None if importlib.util.find_spec(module) is not None else f"{module} is not installed"


def batch_for(size: int) -> int:
    return max(1, min(1024, BATCH_BYTES // size))


@functools.cache
def _ring_unavailable() -> str | None:
    """Why this checkout's mmipc cannot run the Ring cases (no broadcast mode), or None."""
    from mmipc import Ring

    try:
        ring = Ring.create(1 << 16, mode="broadcast")  # type: ignore[call-arg, unused-ignore]
    except TypeError as exc:
        return f"mmipc.Ring has no broadcast mode in this checkout ({exc})"
    try:
        if not callable(getattr(ring, "subscribe", None)):
            return "mmipc.Ring(mode='broadcast') has no subscribe() in this checkout"
    finally:
        ring.close()
    return None


# -- Ring broadcast ------------------------------------------------------------------------------


def _open_ring(spec: H.Spec, ctx: Any) -> H.Opened:
    from mmipc import Ring

    ring = Ring.create(capacity_for(spec.size), mode="broadcast")  # type: ignore[call-arg, unused-ignore]
    ready = ctx.Semaphore(0)
    return H.Opened((ring, ready), ring.close)


def _wait_ready(ready: Any, subscribers: int) -> None:
    for _ in range(subscribers):
        if not ready.acquire(timeout=H.BARRIER_TIMEOUT):
            raise TimeoutError(f"only some of {subscribers} subscribers got ready")


def ring_send_producer(handle: Any, spec: H.Spec, gate: H.Gate, index: int) -> None:
    ring, ready = handle
    payload = payload_of(spec.size)
    send = ring.send
    try:
        _wait_ready(ready, spec.consumers)
        for _ in range(spec.warmup):
            send(payload)
        gate.wait()
        for _ in range(spec.count):
            send(payload)
    finally:
        ring.close()


def ring_batch_producer(handle: Any, spec: H.Spec, gate: H.Gate, index: int) -> None:
    ring, ready = handle
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
        _wait_ready(ready, spec.consumers)
        send(spec.warmup)
        gate.wait()
        send(spec.count)
    finally:
        ring.close()


def ring_bytes_consumer(handle: Any, spec: H.Spec, gate: H.Gate) -> H.Sample:
    ring, ready = handle
    sub = ring.subscribe(start="next")
    ready.release()
    recv_bytes = sub.recv_bytes
    try:
        for _ in range(spec.warmup_total):
            recv_bytes(PEER_TIMEOUT)
        nbytes = 0
        t0 = gate.wait()
        for _ in range(spec.total):
            nbytes += len(recv_bytes(PEER_TIMEOUT))
        seconds = time.perf_counter() - t0
    finally:
        sub.close()
        ring.close()
    return H.Sample(spec.total, nbytes, seconds)


def ring_view_consumer(handle: Any, spec: H.Spec, gate: H.Gate) -> H.Sample:
    ring, ready = handle
    sub = ring.subscribe(start="next")
    ready.release()
    recv = sub.recv
    touched = 0
    try:
        for _ in range(spec.warmup_total):
            with recv(PEER_TIMEOUT) as view:
                touched += view[0]
        nbytes = 0
        t0 = gate.wait()
        for _ in range(spec.total):
            with recv(PEER_TIMEOUT) as view:
                touched += view[0]
                nbytes += len(view)
        seconds = time.perf_counter() - t0
    finally:
        sub.close()
        ring.close()
    return H.Sample(spec.total, nbytes, seconds)


def ring_batch_consumer(handle: Any, spec: H.Spec, gate: H.Gate) -> H.Sample:
    ring, ready = handle
    sub = ring.subscribe(start="next")
    ready.release()
    recv_many = sub.recv_many
    most = max(1024, spec.options["batch"])

    def receive(total: int) -> int:
        got = nbytes = 0
        while got < total:
            records = recv_many(min(most, total - got), PEER_TIMEOUT)
            got += len(records)
            nbytes += sum(map(len, records))
        return nbytes

    try:
        receive(spec.warmup_total)
        t0 = gate.wait()
        nbytes = receive(spec.total)
        seconds = time.perf_counter() - t0
    finally:
        sub.close()
        ring.close()
    return H.Sample(spec.total, nbytes, seconds)


# -- the peers: a protocol for transports that may drop messages ----------------------------------
#
# Every message's first byte says what it is: WARM (warm-up), LAST (warm-up over), DATA (timed),
# END. The producer sends spec.warmup WARM messages, then repeats LAST every millisecond until
# every subscriber has acknowledged one (through a semaphore: slow joiners are connected by
# then), passes the start barrier, sends spec.count DATA messages, then repeats END until every
# subscriber has acknowledged one. A subscriber counts the DATA messages it receives between
# the barrier and its first END (its time ends there) and ignores leftover WARM/LAST ones; a
# message the transport dropped is simply not counted (Sample.dropped).


def _marked(size: int, mark: int) -> bytes:
    payload = bytearray(payload_of(size))
    payload[0] = mark
    return bytes(payload)


def _repeat_until_acked(send: Any, acks: Any, subscribers: int, what: str) -> None:
    acked = 0
    deadline = time.monotonic() + PEER_TIMEOUT
    while acked < subscribers:
        send()
        while acked < subscribers and acks.acquire(timeout=0.001):
            acked += 1
        if time.monotonic() > deadline:
            raise TimeoutError(f"{subscribers - acked} subscriber(s) never acknowledged the {what} message")


def _open_acks(ctx: Any) -> tuple[Any, Any]:
    return ctx.Semaphore(0), ctx.Semaphore(0)


# -- pyzmq PUB/SUB -------------------------------------------------------------------------------


def _open_zmq(spec: H.Spec, ctx: Any) -> H.Opened:
    directory = tempfile.mkdtemp(prefix="mmipc-bench-")
    path = os.path.join(directory, "pub-sub")

    def close() -> None:
        with contextlib.suppress(OSError):
            os.unlink(path)
        with contextlib.suppress(OSError):
            os.rmdir(directory)

    return H.Opened((f"ipc://{path}", *_open_acks(ctx)), close)


def _zmq_hwm(size: int) -> int:
    """Messages a subscriber's queue holds: the ring's capacity in bytes (send and receive side)."""
    return max(16, capacity_for(size) // size // 2)


def zmq_producer(handle: Any, spec: H.Spec, gate: H.Gate, index: int) -> None:
    import zmq

    address, last_acks, end_acks = handle
    context = zmq.Context()
    sock = context.socket(zmq.PUB)
    sock.setsockopt(zmq.SNDHWM, _zmq_hwm(spec.size))
    sock.setsockopt(zmq.LINGER, 0)
    sock.bind(address)
    warm, last, data, end = (_marked(spec.size, m) for m in (WARM, LAST, DATA, END))
    copy = spec.size < VIEW_FROM
    send: Any = sock.send
    try:
        for _ in range(spec.warmup):
            send(warm, copy=copy)
        _repeat_until_acked(lambda: send(last), last_acks, spec.consumers, "warm-up end")
        gate.wait()
        for _ in range(spec.count):
            send(data, copy=copy)
        _repeat_until_acked(lambda: send(end), end_acks, spec.consumers, "end")
    finally:
        sock.close(linger=0)
        context.term()


def zmq_consumer(handle: Any, spec: H.Spec, gate: H.Gate) -> H.Sample:
    import zmq

    address, last_acks, end_acks = handle
    context = zmq.Context()
    sock = context.socket(zmq.SUB)
    sock.setsockopt(zmq.RCVHWM, _zmq_hwm(spec.size))
    sock.setsockopt(zmq.RCVTIMEO, int(PEER_TIMEOUT * 1000))
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SUBSCRIBE, b"")
    sock.connect(address)
    copy = spec.size < VIEW_FROM
    recv: Any = sock.recv
    delivered = nbytes = 0
    try:
        while recv()[0] != LAST:
            pass
        last_acks.release()
        t0 = gate.wait()
        while True:
            msg = recv(copy=copy)
            first = msg[0] if copy else msg.buffer[0]
            if first == DATA:
                delivered += 1
                nbytes += len(msg)
            elif first == END:
                seconds = time.perf_counter() - t0
                break
        end_acks.release()
    finally:
        sock.close(linger=0)
        context.term()
    return H.Sample(delivered, nbytes, seconds, dropped=spec.total - delivered)


# -- iceoryx2 ------------------------------------------------------------------------------------


def _iox_unavailable() -> str | None:
    return _missing("iceoryx2")


def _iox_buffer(size: int) -> int:
    return max(16, min(1024, capacity_for(size) // size))


def _iox_service(name: str, spec: H.Spec) -> tuple[Any, Any]:
    import iceoryx2 as iox  # type: ignore[import-untyped, unused-ignore]

    iox.set_log_level(iox.LogLevel.Error)
    node = iox.NodeBuilder.new().create(iox.ServiceType.Ipc)
    service = (
        node.service_builder(iox.ServiceName.new(name))
        .publish_subscribe(iox.Slice[ctypes.c_uint8])
        .max_publishers(1)
        .max_subscribers(max(1, spec.consumers))
        .subscriber_max_buffer_size(_iox_buffer(spec.size))
        .history_size(0)
        .enable_safe_overflow(False)
        .open_or_create()
    )
    return node, service


def _open_iox(spec: H.Spec, ctx: Any) -> H.Opened:
    name = f"mmipc-bench-{uuid.uuid4().hex[:16]}"
    held = list(_iox_service(name, spec))  # the parent keeps the service alive for the cell

    def close() -> None:
        held.clear()

    return H.Opened((name, ctx.Semaphore(0), *_open_acks(ctx)), close)


def iox_producer(handle: Any, spec: H.Spec, gate: H.Gate, index: int) -> None:
    import iceoryx2 as iox  # type: ignore[import-untyped, unused-ignore]

    name, ready, last_acks, end_acks = handle
    node, service = _iox_service(name, spec)
    publisher = (
        service.publisher_builder()
        .initial_max_slice_len(spec.size)
        .allocation_strategy(iox.AllocationStrategy.Static)
        .backpressure_strategy(iox.BackpressureStrategy.RetryUntilDelivered)
        .create()
    )
    size = spec.size
    warm, last, data, end = (_marked(size, m) for m in (WARM, LAST, DATA, END))
    loan = publisher.loan_slice_uninit
    memmove = ctypes.memmove

    def send(payload: bytes, count: int) -> None:
        for _ in range(count):
            sample = loan(size)
            memmove(sample.payload_ptr, payload, size)
            sample.assume_init().send()

    try:
        _wait_ready(ready, spec.consumers)  # every subscriber exists: none misses the warm-up
        publisher.update_connections()
        send(warm, spec.warmup)
        _repeat_until_acked(lambda: send(last, 1), last_acks, spec.consumers, "warm-up end")
        gate.wait()
        send(data, spec.count)
        _repeat_until_acked(lambda: send(end, 1), end_acks, spec.consumers, "end")
    finally:
        publisher.delete()
        del service, node


def iox_consumer(handle: Any, spec: H.Spec, gate: H.Gate) -> H.Sample:
    name, ready, last_acks, end_acks = handle
    node, service = _iox_service(name, spec)
    subscriber = service.subscriber_builder().buffer_size(_iox_buffer(spec.size)).create()
    receive = subscriber.receive
    pause = os.sched_yield
    copy = spec.size < VIEW_FROM
    string_at = ctypes.string_at
    size = spec.size

    def take(until: int) -> tuple[int, int, float]:
        """Receive up to the first message marked ``until``: (DATA messages, their bytes, end time)."""
        got = nbytes = 0
        deadline = time.monotonic() + PEER_TIMEOUT
        while True:
            sample = receive()
            if sample is None:
                pause()  # iceoryx2 has no blocking receive: poll, yielding the CPU
                if time.monotonic() > deadline:
                    raise TimeoutError(f"iceoryx2 subscriber: no end message after {got} samples")
                continue
            if copy:
                first = string_at(sample.payload_ptr, size)[0]  # the payload copied out
            else:
                first = sample.payload()[0]  # one byte, read in place
            sample.delete()
            if first == DATA:
                got += 1
                nbytes += size
            elif first == until:
                return got, nbytes, time.perf_counter()

    try:
        ready.release()
        take(LAST)
        last_acks.release()
        t0 = gate.wait()
        delivered, nbytes, t_end = take(END)
        end_acks.release()
    finally:
        subscriber.delete()
        del service, node
    return H.Sample(delivered, nbytes, t_end - t0, dropped=spec.total - delivered)


# -- the benchmark -----------------------------------------------------------------------------


def cases() -> list[H.Case]:
    return [
        H.Case(
            RING_BYTES, _open_ring, ring_bytes_consumer, ring_send_producer, unavailable=_ring_unavailable
        ),
        H.Case(RING_VIEW, _open_ring, ring_view_consumer, ring_send_producer, unavailable=_ring_unavailable),
        H.Case(
            RING_BATCH, _open_ring, ring_batch_consumer, ring_batch_producer, unavailable=_ring_unavailable
        ),
        H.Case(
            ZMQ, _open_zmq, zmq_consumer, zmq_producer, unavailable=lambda: _missing("zmq"), delivery="lossy"
        ),
        H.Case(IOX, _open_iox, iox_consumer, iox_producer, unavailable=_iox_unavailable, delivery="lossy"),
    ]


def applies(case: str, size: int) -> bool:
    """Copies below VIEW_FROM (recv_bytes, batches); zero-copy views from it."""
    if case == RING_VIEW:
        return size >= VIEW_FROM
    if case in (RING_BYTES, RING_BATCH):
        return size < VIEW_FROM
    return True


BASELINES = ((ZMQ, "pyzmq"), (IOX, "iceoryx2"))


def group_name(subscribers: int, size: int) -> str:
    return f"{H.format_size(size)}, {subscribers} subscriber{'s' if subscribers > 1 else ''}"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sizes", type=parse_sizes, default=list(SIZES), help="record sizes (default 64,1M)")
    parser.add_argument(
        "--subscribers",
        type=parse_counts,
        default=list(SUBSCRIBERS),
        help="subscriber counts (default 1,2,4)",
    )
    parser.add_argument("--batch", type=int, default=None, help="records per send_many call")


def best_ring(results: H.Results, group: str) -> tuple[str | None, float | None]:
    found = [(rate, case) for case in RING_CASES if (rate := results.rate(group, case)) is not None]
    if not found:
        return None, None
    rate, case = max(found)
    return case, rate


def targets(results: H.Results, sizes: list[int], subscribers: list[int]) -> list[H.Target]:
    found: list[H.Target] = []
    for size in sizes:
        for n in subscribers:
            group = group_name(n, size)
            case, rate = best_ring(results, group)
            api = case.removeprefix("Ring broadcast ") if case else "mmipc"
            found.append(
                _target(
                    f"{group}: mmipc ({api}) ahead of pyzmq PUB/SUB (delivered)",
                    rate,
                    results.rate(group, ZMQ),
                )
            )
            if size == 1 << 20:
                found.append(
                    _target(f"{group}: mmipc ({api}) ahead of iceoryx2", rate, results.rate(group, IOX))
                )
    return found


def _target(description: str, rate: float | None, peer: float | None) -> H.Target:
    reason = _ring_unavailable() if rate is None else None
    if reason is not None:
        return H.Target(description, "FAIL", f"not measured: {reason}")
    return H.ratio_target(description, rate, peer, 1.0)


def drops_report(results: H.Results) -> str:
    """Messages the lossy peers did not deliver (best sample, all subscribers together)."""
    lines = []
    for m in results.measurements:
        if m.case in (ZMQ, IOX) and m.ok and m.best is not None:
            best = m.best
            sent = best.messages + best.dropped
            lines.append(
                f"  [{m.group}] {m.case}: delivered {best.messages} of {sent} "
                f"({best.dropped} not delivered, {best.dropped / max(sent, 1):.1%})"
            )
    text = "messages not delivered (best sample, all subscribers together):\n" + (
        "\n".join(lines) or "  none measured"
    )
    print(text + "\n", flush=True)
    return text


def run(args: argparse.Namespace) -> int:
    settings = H.Settings.from_args(args, "broadcast")
    ctx = H.make_context(settings, preload=["benchmarks.broadcast", "mmipc", "zmq", "iceoryx2"])
    info = H.machine_info(("mmipc", "pyzmq", "iceoryx2"))
    with contextlib.suppress(ImportError):
        import zmq

        info["packages"]["libzmq"] = zmq.zmq_version()
    command = "python -m benchmarks " + shlex.join(sys.argv[1:])
    print(f"$ {command}")
    H.print_machine(info, settings)
    reason = _ring_unavailable()
    if reason is not None:
        print(f"NOTE: {reason}: the mmipc cases fail below (no stand-in numbers).", flush=True)
    measurements: list[H.Measurement] = []
    selected = [case for case in cases() if settings.selected(case.name)]
    for n in args.subscribers:
        for size in args.sizes:
            for case in selected:
                if not applies(case.name, size):
                    continue
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
    print("(msgs/s: messages delivered, summed over subscribers.)")
    drops = drops_report(results)
    checks = targets(results, args.sizes, args.subscribers)
    H.evaluate_targets(checks)
    H.write_json(
        settings.json_path,
        {
            "benchmark": "broadcast",
            "command": command,
            "machine": info,
            "settings": {
                "quick": settings.quick,
                "repeat": settings.repeat,
                "seconds": settings.seconds,
                "start_method": settings.start_method,
                "sizes": args.sizes,
                "subscribers": args.subscribers,
                "batch": args.batch,
                "statistic": "best of repeats (highest total delivered msgs/s)",
            },
            "measurements": [m.to_json() for m in measurements],
            "targets": [t.to_json() for t in checks],
            "table": table,
            "drops": drops,
        },
    )
    failed = [m for m in measurements if m.note.startswith("failed")]
    return 1 if failed else 0
