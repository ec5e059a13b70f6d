"""Channel (objects, zero-copy arrays) against mp.Queue, pyzmq, faster-fifo and memcpy, in one run.

``python -m benchmarks channel [--quick] [--array-sizes 64M] [--scaling-sizes 1M,4M,16M,64M]``

One producer process, one consumer process per cell (see ``_harness``).

**float64 arrays** (``--array-sizes``, default 64 MiB; the producer owns one array of that
size and, before each send, writes one element of it: ``arr[0] = i``; the consumer reads one
element, ``arr[0]``, of every array it receives and drops it):

* ``Channel send / recv``: ``chan.send(arr)``; pickle protocol 5 puts the array's buffer
  out-of-band into a heap block (one ``memcpy``, the only copy); ``recv()`` returns a
  read-only array viewing the heap block; dropping it returns the block.
* ``Channel reserve_array / recv``: ``with chan.reserve_array(shape, "float64") as a: a[0] = i``:
  the producer builds the array in place in the heap (here: one element written; the rest
  holds what the block held before), nothing is copied. GB/s is the size the arrays carry, not
  a copy rate. Run at every ``--scaling-sizes`` size (default 1, 4, 16, 64 MiB).
* ``mp.Queue put / get``: ``q.put(arr)`` (pickled in the feeder thread, through a pipe,
  unpickled).
* ``pyzmq PUSH/PULL ipc copy=False``: ``send_multipart([header, arr], copy=False)`` (header:
  dtype and shape), ``recv_multipart(copy=False)`` then ``np.frombuffer`` of the frame.
* ``memcpy (1 process)``: the reference: ``np.copyto(dst, src)`` of the same array in one
  process.

The channel's heap holds 8 arrays (pyzmq's HWM is its default 1000 messages, but zero-copy
sends all reference the producer's one array; mp.Queue is unbounded). Every array case (and
memcpy) warms up with at least 10 arrays, so the heap's pages are all faulted in before timing:
a fresh heap block costs a shared-memory page fault per 4 KiB page on its first use, which a
long-running sender pays once.

**Small objects** (a tuple of five ints; a dict of ten str keys to ints; the same object sent
every time, serialized every time):

* ``Channel send / recv``, ``Channel send_many / recv_many`` (``--batch`` objects per call,
  default 1024);
* ``mp.Queue put / get``; faster-fifo ``put / get`` and ``put_many / get_many`` (both pickle).

Targets: arrays: Channel >= 15x mp.Queue, >= 4x pyzmq, >= 60% of the memcpy rate (checked for
``send`` and for ``reserve_array``); ``reserve_array``: arrays/s at every larger size >= at
1 MiB. Small objects: >= 4x mp.Queue, >= 2x faster-fifo (the better of the Channel's two APIs
against the better of faster-fifo's; every pairing is in the table).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import pickle
import shlex
import struct
import sys
import tempfile
import time
from typing import Any

from benchmarks import _harness as H

DESCRIPTION = "Channel (arrays zero-copy, small objects) vs mp.Queue, pyzmq, faster-fifo, memcpy"

ARRAY_SIZES = (64 << 20,)
SCALING_SIZES = (1 << 20, 4 << 20, 16 << 20, 64 << 20)
IN_FLIGHT = 8  # arrays a transport can hold at once
WARMUP_ARRAYS = IN_FLIGHT + 2  # see _warmup
SMALL_RING = 64 << 20  # ring (and faster-fifo) bytes for small objects
BATCH = 1024
PEER_TIMEOUT = 120.0

MEMCPY = "memcpy (1 process)"
CHAN_SEND = "Channel send / recv"
CHAN_RESERVE = "Channel reserve_array / recv"
CHAN_BATCH = "Channel send_many / recv_many"
QUEUE = "mp.Queue put / get"
ZMQ = "pyzmq PUSH/PULL ipc copy=False"
FFIFO = "faster-fifo put / get"
FFIFO_BATCH = "faster-fifo put_many / get_many"

TUPLE = "tuple of 5 ints"
DICT = "dict of 10 keys"
OBJECTS = (TUPLE, DICT)


def make_object(kind: str) -> Any:
    if kind == TUPLE:
        return (1, 22, 333, 4444, 55555)
    return {f"key{i}": i * 1000 for i in range(10)}


def touch(obj: Any) -> int:
    """Read one field of a received small object (the consumer uses what it gets)."""
    return int(obj[0] if isinstance(obj, tuple) else obj["key0"])


def pickled_size(kind: str) -> int:
    return len(pickle.dumps(make_object(kind), protocol=5))


def _missing(module: str) -> str | None:
    return None if importlib.util.find_spec(module) is not None else f"{module} is not installed"


def _elements(spec: H.Spec) -> int:
    return spec.size // 8


def _warmup(spec: H.Spec) -> int:
    """Untimed arrays before the start barrier: enough to fault in every page of the heap.

    A fresh channel's heap blocks are first touched by the first arrays copied into them (a
    shared-memory page fault per 4 KiB page); a long-running sender reuses blocks whose pages
    are mapped already. Every array case (and memcpy) gets the same warm-up.
    """
    return max(spec.warmup, WARMUP_ARRAYS)


# -- memcpy reference ------------------------------------------------------------------------


def _open_nothing(spec: H.Spec, ctx: Any) -> H.Opened:
    return H.Opened(None)


def memcpy_consumer(handle: Any, spec: H.Spec, gate: H.Gate) -> H.Sample:
    import numpy as np

    n = _elements(spec)
    src = np.arange(n, dtype=np.float64)
    dst = np.ones(n, dtype=np.float64)  # every page touched before timing
    for i in range(_warmup(spec)):
        src[0] = i
        np.copyto(dst, src)
    touched = 0.0
    t0 = gate.wait()
    for i in range(spec.count):
        src[0] = i
        np.copyto(dst, src)
        touched += dst[0]
    return H.Sample(spec.count, spec.count * spec.size, time.perf_counter() - t0)


# -- Channel: arrays ---------------------------------------------------------------------------


def _open_channel(spec: H.Spec, ctx: Any) -> H.Opened:
    from mmipc import Channel

    if spec.options.get("small"):
        chan = Channel.create(SMALL_RING, heap_size=1 << 20)
    else:
        from mmipc._heap import block_size_for

        chan = Channel.create(1 << 20, heap_size=IN_FLIGHT * block_size_for(spec.size))

    def close() -> None:
        with contextlib.suppress(Exception):
            chan.unlink()
        chan.close()

    return H.Opened(chan, close)


def chan_send_producer(chan: Any, spec: H.Spec, gate: H.Gate, index: int) -> None:
    import numpy as np

    arr = np.arange(_elements(spec), dtype=np.float64)
    send = chan.send
    try:
        for i in range(_warmup(spec)):
            arr[0] = i
            send(arr)
        gate.wait()
        for i in range(spec.count):
            arr[0] = i
            send(arr)
    finally:
        chan.close()


def chan_reserve_producer(chan: Any, spec: H.Spec, gate: H.Gate, index: int) -> None:
    shape = (_elements(spec),)
    reserve_array = chan.reserve_array
    try:
        for i in range(_warmup(spec)):
            with reserve_array(shape, "float64") as arr:
                arr[0] = i
        gate.wait()
        for i in range(spec.count):
            with reserve_array(shape, "float64") as arr:
                arr[0] = i
    finally:
        chan.close()


def chan_array_consumer(chan: Any, spec: H.Spec, gate: H.Gate) -> H.Sample:
    recv = chan.recv
    touched = 0.0
    try:
        for _ in range(_warmup(spec)):
            touched += recv(PEER_TIMEOUT)[0]
        nbytes = 0
        t0 = gate.wait()
        for _ in range(spec.total):
            arr = recv(PEER_TIMEOUT)
            touched += arr[0]
            nbytes += arr.nbytes
            del arr  # the heap block goes back
        seconds = time.perf_counter() - t0
    finally:
        chan.close()
    return H.Sample(spec.total, nbytes, seconds)


# -- Channel: small objects --------------------------------------------------------------------


def chan_small_producer(chan: Any, spec: H.Spec, gate: H.Gate, index: int) -> None:
    obj = make_object(spec.options["object"])
    send = chan.send
    try:
        for _ in range(spec.warmup):
            send(obj)
        gate.wait()
        for _ in range(spec.count):
            send(obj)
    finally:
        chan.close()


def chan_small_consumer(chan: Any, spec: H.Spec, gate: H.Gate) -> H.Sample:
    recv = chan.recv
    touched = 0
    try:
        for _ in range(spec.warmup_total):
            touched += touch(recv(PEER_TIMEOUT))
        t0 = gate.wait()
        for _ in range(spec.total):
            touched += touch(recv(PEER_TIMEOUT))
        seconds = time.perf_counter() - t0
    finally:
        chan.close()
    return H.Sample(spec.total, spec.total * spec.size, seconds)


def _send_in_batches(send_many: Any, obj: Any, batch: int, count: int, **kwargs: Any) -> None:
    items = [obj] * batch
    full, rest = divmod(count, batch)
    for _ in range(full):
        send_many(items, **kwargs)
    if rest:
        send_many(items[:rest], **kwargs)


def chan_batch_producer(chan: Any, spec: H.Spec, gate: H.Gate, index: int) -> None:
    obj = make_object(spec.options["object"])
    batch = spec.options["batch"]
    try:
        _send_in_batches(chan.send_many, obj, batch, spec.warmup)
        gate.wait()
        _send_in_batches(chan.send_many, obj, batch, spec.count)
    finally:
        chan.close()


def chan_batch_consumer(chan: Any, spec: H.Spec, gate: H.Gate) -> H.Sample:
    recv_many = chan.recv_many
    most = spec.options["batch"]

    def receive(total: int) -> int:
        got = touched = 0
        while got < total:
            objs = recv_many(min(most, total - got), PEER_TIMEOUT)
            got += len(objs)
            for obj in objs:
                touched += touch(obj)
        return touched

    try:
        receive(spec.warmup_total)
        t0 = gate.wait()
        receive(spec.total)
        seconds = time.perf_counter() - t0
    finally:
        chan.close()
    return H.Sample(spec.total, spec.total * spec.size, seconds)


# -- multiprocessing.Queue ---------------------------------------------------------------------


def _open_queue(spec: H.Spec, ctx: Any) -> H.Opened:
    q = ctx.Queue()

    def close() -> None:
        q.close()
        q.join_thread()

    return H.Opened(q, close)


def queue_array_producer(q: Any, spec: H.Spec, gate: H.Gate, index: int) -> None:
    import numpy as np

    arr = np.arange(_elements(spec), dtype=np.float64)
    put = q.put
    for i in range(_warmup(spec)):
        arr[0] = i
        put(arr)
    gate.wait()
    for i in range(spec.count):
        arr[0] = i
        put(arr)
    q.close()
    q.join_thread()


def queue_array_consumer(q: Any, spec: H.Spec, gate: H.Gate) -> H.Sample:
    get = q.get
    touched = 0.0
    for _ in range(_warmup(spec)):
        touched += get(timeout=PEER_TIMEOUT)[0]
    nbytes = 0
    t0 = gate.wait()
    for _ in range(spec.total):
        arr = get(timeout=PEER_TIMEOUT)
        touched += arr[0]
        nbytes += arr.nbytes
        del arr
    return H.Sample(spec.total, nbytes, time.perf_counter() - t0)


def queue_small_producer(q: Any, spec: H.Spec, gate: H.Gate, index: int) -> None:
    obj = make_object(spec.options["object"])
    put = q.put
    for _ in range(spec.warmup):
        put(obj)
    gate.wait()
    for _ in range(spec.count):
        put(obj)
    q.close()
    q.join_thread()


def queue_small_consumer(q: Any, spec: H.Spec, gate: H.Gate) -> H.Sample:
    get = q.get
    touched = 0
    for _ in range(spec.warmup_total):
        touched += touch(get(timeout=PEER_TIMEOUT))
    t0 = gate.wait()
    for _ in range(spec.total):
        touched += touch(get(timeout=PEER_TIMEOUT))
    return H.Sample(spec.total, spec.total * spec.size, time.perf_counter() - t0)


# -- pyzmq ---------------------------------------------------------------------------------------


def _open_zmq(spec: H.Spec, ctx: Any) -> H.Opened:
    directory = tempfile.mkdtemp(prefix="mmipc-bench-")
    path = os.path.join(directory, "push-pull")

    def close() -> None:
        with contextlib.suppress(OSError):
            os.unlink(path)
        with contextlib.suppress(OSError):
            os.rmdir(directory)

    return H.Opened(f"ipc://{path}", close)


_ZHEAD = struct.Struct("<8sQ")  # dtype string, number of elements (1-d)


def zmq_producer(address: str, spec: H.Spec, gate: H.Gate, index: int) -> None:
    import numpy as np
    import zmq

    context = zmq.Context()
    sock = context.socket(zmq.PUSH)
    sock.setsockopt(zmq.LINGER, int(PEER_TIMEOUT * 1000))
    sock.connect(address)
    arr = np.arange(_elements(spec), dtype=np.float64)
    header = _ZHEAD.pack(arr.dtype.str.encode(), arr.size)
    send_multipart: Any = sock.send_multipart
    try:
        for i in range(_warmup(spec)):
            arr[0] = i
            send_multipart([header, arr], copy=False)
        gate.wait()
        for i in range(spec.count):
            arr[0] = i
            send_multipart([header, arr], copy=False)
        gate.finish()  # disconnecting before the consumer read everything can lose messages
    finally:
        sock.close()
        context.term()


def zmq_consumer(address: str, spec: H.Spec, gate: H.Gate) -> H.Sample:
    import numpy as np
    import zmq

    context = zmq.Context()
    sock = context.socket(zmq.PULL)
    sock.setsockopt(zmq.RCVTIMEO, int(PEER_TIMEOUT * 1000))
    sock.bind(address)
    recv_multipart: Any = sock.recv_multipart
    touched = 0.0

    def receive() -> Any:
        head, body = recv_multipart(copy=False)
        dtype, n = _ZHEAD.unpack(head.bytes)
        return np.frombuffer(body.buffer, dtype=dtype.rstrip(b"\0").decode(), count=n)

    try:
        for _ in range(_warmup(spec)):
            touched += receive()[0]
        nbytes = 0
        t0 = gate.wait()
        for _ in range(spec.total):
            arr = receive()
            touched += arr[0]
            nbytes += arr.nbytes
            del arr
        seconds = time.perf_counter() - t0
        gate.finish()
    finally:
        sock.close(linger=0)
        context.term()
    return H.Sample(spec.total, nbytes, seconds)


# -- faster-fifo -------------------------------------------------------------------------------


def _open_ffifo(spec: H.Spec, ctx: Any) -> H.Opened:
    import faster_fifo  # type: ignore[import-not-found, unused-ignore]

    q = faster_fifo.Queue(max_size_bytes=SMALL_RING)
    return H.Opened(q, q.close)


def ffifo_producer(q: Any, spec: H.Spec, gate: H.Gate, index: int) -> None:
    obj = make_object(spec.options["object"])
    put = q.put
    for _ in range(spec.warmup):
        put(obj, timeout=PEER_TIMEOUT)
    gate.wait()
    for _ in range(spec.count):
        put(obj, timeout=PEER_TIMEOUT)


def ffifo_consumer(q: Any, spec: H.Spec, gate: H.Gate) -> H.Sample:
    get = q.get
    touched = 0
    for _ in range(spec.warmup_total):
        touched += touch(get(timeout=PEER_TIMEOUT))
    t0 = gate.wait()
    for _ in range(spec.total):
        touched += touch(get(timeout=PEER_TIMEOUT))
    return H.Sample(spec.total, spec.total * spec.size, time.perf_counter() - t0)


def ffifo_batch_producer(q: Any, spec: H.Spec, gate: H.Gate, index: int) -> None:
    obj = make_object(spec.options["object"])
    batch = spec.options["batch"]
    _send_in_batches(q.put_many, obj, batch, spec.warmup, timeout=PEER_TIMEOUT)
    gate.wait()
    _send_in_batches(q.put_many, obj, batch, spec.count, timeout=PEER_TIMEOUT)


def ffifo_batch_consumer(q: Any, spec: H.Spec, gate: H.Gate) -> H.Sample:
    get_many = q.get_many
    most = spec.options["batch"]

    def receive(total: int) -> None:
        got = touched = 0
        while got < total:
            objs = get_many(timeout=PEER_TIMEOUT, max_messages_to_get=min(most, total - got))
            got += len(objs)
            for obj in objs:
                touched += touch(obj)

    receive(spec.warmup_total)
    t0 = gate.wait()
    receive(spec.total)
    return H.Sample(spec.total, spec.total * spec.size, time.perf_counter() - t0)


# -- the benchmark -----------------------------------------------------------------------------


def _needs(*modules: str) -> Any:
    def unavailable() -> str | None:
        for module in modules:
            reason = _missing(module)
            if reason is not None:
                return reason
        return None

    return unavailable


def array_cases() -> list[H.Case]:
    np_only = _needs("numpy")
    return [
        H.Case(MEMCPY, _open_nothing, memcpy_consumer, max_producers=0, unavailable=np_only),
        H.Case(CHAN_SEND, _open_channel, chan_array_consumer, chan_send_producer, unavailable=np_only),
        H.Case(
            CHAN_RESERVE,
            _open_channel,
            chan_array_consumer,
            chan_reserve_producer,
            unavailable=np_only,
            logical_bytes=True,
        ),
        H.Case(QUEUE, _open_queue, queue_array_consumer, queue_array_producer, unavailable=np_only),
        H.Case(ZMQ, _open_zmq, zmq_consumer, zmq_producer, unavailable=_needs("numpy", "zmq")),
    ]


def small_cases() -> list[H.Case]:
    ffifo = _needs("faster_fifo")
    small = {"small": True}
    return [
        H.Case(CHAN_SEND, _open_channel, chan_small_consumer, chan_small_producer, options=small),
        H.Case(CHAN_BATCH, _open_channel, chan_batch_consumer, chan_batch_producer, options=small),
        H.Case(QUEUE, _open_queue, queue_small_consumer, queue_small_producer),
        H.Case(FFIFO, _open_ffifo, ffifo_consumer, ffifo_producer, unavailable=ffifo),
        H.Case(FFIFO_BATCH, _open_ffifo, ffifo_batch_consumer, ffifo_batch_producer, unavailable=ffifo),
    ]


BASELINES = (
    (QUEUE, "Queue"),
    (ZMQ, "pyzmq"),
    (FFIFO, "ffifo"),
    (FFIFO_BATCH, "ffifo many"),
    (MEMCPY, "memcpy"),
)


def array_group(size: int) -> str:
    return f"float64 array, {H.format_size(size)}"


def small_group(kind: str) -> str:
    return f"small object: {kind}"


def parse_sizes(text: str) -> list[int]:
    return [H.parse_size(part) for part in text.split(",") if part.strip()]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--array-sizes",
        type=parse_sizes,
        default=list(ARRAY_SIZES),
        help="array sizes for every array case (default 64M; multiples of 8 bytes)",
    )
    parser.add_argument(
        "--scaling-sizes",
        type=parse_sizes,
        default=list(SCALING_SIZES),
        help="array sizes for reserve_array (default 1M,4M,16M,64M)",
    )
    parser.add_argument("--batch", type=int, default=BATCH, help="objects per send_many/put_many call")
    parser.add_argument("--no-small", action="store_true", help="skip the small-object groups")


def _best(results: H.Results, group: str, names: tuple[str, ...]) -> tuple[str | None, float | None]:
    """The fastest of ``names`` in ``group``: (case, msgs/s), or (None, None)."""
    found = [(rate, case) for case in names if (rate := results.rate(group, case)) is not None]
    if not found:
        return None, None
    rate, case = max(found)
    return case, rate


def targets(results: H.Results, array_sizes: list[int], scaling_sizes: list[int]) -> list[H.Target]:
    found: list[H.Target] = []
    for size in array_sizes:
        group = array_group(size)
        label = f"{H.format_size(size)} arrays"
        for case, api in ((CHAN_SEND, "send"), (CHAN_RESERVE, "reserve_array")):
            rate = results.rate(group, case)
            found.append(
                H.ratio_target(
                    f"{label}: Channel {api} >= 15x mp.Queue", rate, results.rate(group, QUEUE), 15.0
                )
            )
            found.append(
                H.ratio_target(
                    f"{label}: Channel {api} >= 4x pyzmq copy=False", rate, results.rate(group, ZMQ), 4.0
                )
            )
            found.append(
                H.ratio_target(
                    f"{label}: Channel {api} >= 60% of the memcpy rate",
                    rate,
                    results.rate(group, MEMCPY),
                    0.6,
                    unit="%",
                )
            )
    ordered = sorted(scaling_sizes)
    if len(ordered) > 1:
        smallest = ordered[0]
        for size in ordered[1:]:
            found.append(
                H.ratio_target(
                    f"reserve_array: arrays/s at {H.format_size(size)} >= at {H.format_size(smallest)}",
                    results.rate(array_group(size), CHAN_RESERVE),
                    results.rate(array_group(smallest), CHAN_RESERVE),
                    1.0,
                )
            )
    for kind in OBJECTS:
        group = small_group(kind)
        if group not in results.groups():
            continue
        best_case, rate = _best(results, group, (CHAN_SEND, CHAN_BATCH))
        best_api = best_case.removeprefix("Channel ") if best_case else "-"
        found.append(
            H.ratio_target(
                f"{kind}: Channel ({best_api}) >= 4x mp.Queue", rate, results.rate(group, QUEUE), 4.0
            )
        )
        peer_case, peer = _best(results, group, (FFIFO, FFIFO_BATCH))
        peer_api = peer_case.removeprefix("faster-fifo ") if peer_case else "-"
        found.append(
            H.ratio_target(f"{kind}: Channel ({best_api}) >= 2x faster-fifo ({peer_api})", rate, peer, 2.0)
        )
    return found


def run(args: argparse.Namespace) -> int:
    settings = H.Settings.from_args(args, "channel")
    ctx = H.make_context(settings, preload=["benchmarks.channel", "mmipc", "numpy", "zmq", "faster_fifo"])
    info = H.machine_info(("mmipc", "numpy", "pyzmq", "faster-fifo"))
    with contextlib.suppress(ImportError):
        import zmq

        info["packages"]["libzmq"] = zmq.zmq_version()
    command = "python -m benchmarks " + shlex.join(sys.argv[1:])
    print(f"$ {command}")
    H.print_machine(info, settings)
    for size in [*args.array_sizes, *args.scaling_sizes]:
        if size <= 0 or size % 8:
            raise SystemExit(f"array sizes must be positive multiples of 8 bytes, got {size}")
    measurements: list[H.Measurement] = []
    sizes = sorted(set(args.array_sizes) | set(args.scaling_sizes))
    for size in sizes:
        for case in array_cases():
            if not settings.selected(case.name):
                continue
            if size not in args.array_sizes and case.name != CHAN_RESERVE:
                continue
            measurements.append(
                H.measure(
                    ctx,
                    case,
                    group=array_group(size),
                    size=size,
                    producers=0 if case.name == MEMCPY else 1,
                    settings=settings,
                    initial_count=4,
                )
            )
    if not args.no_small:
        for kind in OBJECTS:
            for case in small_cases():
                if not settings.selected(case.name):
                    continue
                measurements.append(
                    H.measure(
                        ctx,
                        case,
                        group=small_group(kind),
                        size=pickled_size(kind),
                        producers=1,
                        settings=settings,
                        initial_count=5_000 if settings.quick else 20_000,
                        options={"object": kind, "batch": args.batch},
                    )
                )
    results = H.Results(measurements)
    table = H.print_table(results, BASELINES)
    print("(small objects: GB/s counts the pickled size of each object.)")
    checks = targets(results, args.array_sizes, args.scaling_sizes)
    H.evaluate_targets(checks)
    H.write_json(
        settings.json_path,
        {
            "benchmark": "channel",
            "command": command,
            "machine": info,
            "settings": {
                "quick": settings.quick,
                "repeat": settings.repeat,
                "seconds": settings.seconds,
                "start_method": settings.start_method,
                "array_sizes": args.array_sizes,
                "scaling_sizes": args.scaling_sizes,
                "batch": args.batch,
                "fill": "one element written per array (arr[0] = i) in every case; consumer reads arr[0]",
                "statistic": "best of repeats (highest msgs/s)",
            },
            "measurements": [m.to_json() for m in measurements],
            "targets": [t.to_json() for t in checks],
            "table": table,
        },
    )
    failed = [m for m in measurements if m.note.startswith("failed")]
    return 1 if failed else 0
