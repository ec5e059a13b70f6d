"""Round-trip latency: ping-pong between two processes, p50 / p99 / p99.9, against the usual peers.

``python -m benchmarks latency [--quick] [--sizes 64,64K] [--count N] [--plot PATH]``

Method
------
Every cell runs in two fresh processes (``_harness.run_cell``): process **A** (the harness's
"consumer") sends a message of N bytes, process **B** (the "producer") receives it and sends
the same bytes back, and A times each round trip with ``time.perf_counter_ns()``, from before
its send to after its receive of the echo. Both sides run a warm-up of untimed round trips, meet
at the start barrier, then run ``count`` timed round trips (20 000 at 64 B, 5 000 at 64 KiB;
a tenth with ``--quick``). A checks the echo (every byte during the warm-up, the length during
the timed part). Each cell is sampled ``--repeat`` times (3; 1 with ``--quick``), each in fresh
processes, and the table shows the sample with the **lowest p50** (on a shared machine
interference only adds latency); the JSON keeps every sample's percentiles and a log-binned
histogram. The garbage collector stays on: it is part of what a caller pays.

Cases
-----
* ``Ring <strategy>``: two ``mmipc.Ring`` s, one each way, ``send`` + ``recv_bytes`` (a copy in
  and a copy out per hop). One row per wait strategy when ``Ring.create`` accepts ``wait=``
  (found with ``inspect.signature``: ``block``, ``spin``, ``adaptive``; the strategy is the
  handles', given to ``Ring.create`` and carried by pickling, checked in the children), plus
  ``Ring default``: ``Ring.create()`` without ``wait=``, what a user gets without choosing.
* ``Ring default reserve / recv view``: A writes in place and reads a zero-copy view; B echoes
  from its inbound view straight into an outbound reservation (one copy per hop).
* ``AsyncRing (asyncio) <strategy>``: A runs an asyncio loop and awaits ``AsyncRing.send`` and
  ``AsyncRing.recv_bytes``; B is a plain Ring echo. Default rings, and ``wait="block"`` ones
  (the target compares the asyncio round trip with the ``block`` one).
* ``asyncio thread hop, 1 process (no IPC)``: ``await loop.run_in_executor(executor, no-op)``
  on a one-thread executor: the floor of any adapter that waits on a helper thread.
* ``mmipc request/reply``: ``mmipc.Client.call`` against a ``mmipc.Server`` loop
  (``for request in server: request.reply(request.value)``), if the package has them; one row
  per wait strategy too when ``Server.create`` and ``Client.connect`` accept ``wait=``.
* ``mp.Pipe``: ``multiprocessing.Pipe()`` ``send_bytes`` / ``recv_bytes``.
* ``pyzmq REQ/REP ipc``: a REQ socket in A, REP in B, over ``ipc://`` in a temporary directory.
* ``posix_ipc semaphore (no payload)``: two named semaphores, A posts one and waits on the
  other, B the reverse: the floor of a cross-process wake-up, carrying no data.
* ``posix_ipc semaphore + shm copy``: the same, plus the payload copied into a shared mmap and
  out of it on each hop (the same two copies a Ring ``send`` + ``recv_bytes`` makes).
* ``mmipc Semaphore wrapper (no payload)``: the same ping-pong through ``mmipc._semaphore``'s
  ``Semaphore.acquire`` (what a Ring's blocking wait calls), to separate its cost from the ring's.
* ``shared-word spin (no payload)``: both processes poll a u64 in a shared mmap
  (``memoryview.cast('Q')``), never sleeping: the floor of the interpreter and the hardware.
* ``shared-word poll + sched_yield (no payload)``: the same with ``os.sched_yield()`` between
  polls (what a polite poller pays: one system call per poll).

Targets (issue 7): ``spin`` p50 at 64 B <= 5 us and >= 10x better than ``mp.Pipe``; ``block`` p50
within 1.3x of the raw semaphore ping-pong; the asyncio round trip <= 2x the ``block`` one.
"""

from __future__ import annotations

import argparse
import array
import asyncio
import contextlib
import dataclasses
import importlib.util
import inspect
import itertools
import math
import mmap
import os
import shlex
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks import _harness as H

DESCRIPTION = (
    "round-trip latency p50/p99/p99.9: Ring wait strategies, asyncio, request/reply vs Pipe, zmq, sems"
)

SIZES = (64, 64 << 10)
COUNTS = {64: 20_000, 64 << 10: 5_000}  # timed round trips per sample (a tenth with --quick)
DEFAULT_COUNT = 5_000  # for other --sizes
PEER_TIMEOUT = 60.0  # seconds any single blocking wait in a child may take before the cell fails
CELL_TIMEOUT = 180.0
STRATEGIES = ("block", "spin", "adaptive")
PLOT_PATH = H.REPO_ROOT / "docs" / "latency_histogram.png"
# Histogram bins kept in the JSON: 20 per decade from 100 ns to 1 s.
BINS_PER_DECADE = 20
BIN_LOW_NS = 100.0

DEFAULT = "default"  # the strategy name of a Ring created without wait=
PIPE = "mp.Pipe send_bytes / recv_bytes"
ZMQ = "pyzmq REQ/REP ipc"
SEM = "posix_ipc semaphore (no payload)"
SEM_COPY = "posix_ipc semaphore + shm copy"
SEM_WRAPPER = "mmipc Semaphore wrapper (no payload)"
THREAD_HOP = "asyncio thread hop, 1 process (no IPC)"
WORD = "shared-word spin (no payload)"
WORD_YIELD = "shared-word poll + sched_yield (no payload)"
RPC = "mmipc request/reply (Client.call)"


def rpc_case_name(strategy: str) -> str:
    return RPC if strategy == DEFAULT else f"mmipc request/reply wait={strategy}"


def ring_case_name(strategy: str) -> str:
    if strategy == DEFAULT:
        return "Ring default send / recv_bytes"
    return f"Ring wait={strategy} send / recv_bytes"


def async_case_name(strategy: str) -> str:
    if strategy == DEFAULT:
        return "AsyncRing (asyncio) default"
    return f"AsyncRing (asyncio) wait={strategy}"


RING_VIEW = "Ring default reserve / recv view"


# -- samples -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class LatencySample(H.Sample):
    """A harness Sample carrying every round-trip time (``array('q')`` bytes, nanoseconds)."""

    rtt_ns: bytes = b""
    note: str = ""  # what the child actually used (e.g. the ring's wait strategy)

    def rtts(self) -> array.array[int]:
        values = array.array("q")
        values.frombytes(self.rtt_ns)
        return values


def _sample(spec: H.Spec, rtts: array.array[int], note: str = "") -> LatencySample:
    return LatencySample(
        messages=len(rtts),
        nbytes=2 * spec.size * len(rtts),
        seconds=sum(rtts) / 1e9,
        rtt_ns=rtts.tobytes(),
        note=note,
    )


def percentile(sorted_values: list[int], q: float) -> float:
    """The ``q`` quantile (0..1) of sorted values, nearest rank (no interpolation)."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q * len(sorted_values)))
    return float(sorted_values[min(rank, len(sorted_values)) - 1])


@dataclass
class Stats:
    """Percentiles of one sample, in microseconds."""

    count: int
    p50: float
    p90: float
    p99: float
    p999: float
    mean: float
    minimum: float
    maximum: float
    histogram: list[int]  # counts per log bin (see BINS_PER_DECADE, BIN_LOW_NS)

    @classmethod
    def of(cls, rtts: array.array[int]) -> Stats:
        values = sorted(rtts)
        us = 1e-3
        bins = [0] * (9 * BINS_PER_DECADE)  # 100 ns .. 100 s
        for v in values:
            k = int(math.log10(max(v, 1) / BIN_LOW_NS) * BINS_PER_DECADE) if v > BIN_LOW_NS else 0
            bins[min(max(k, 0), len(bins) - 1)] += 1
        while bins and bins[-1] == 0:
            bins.pop()
        return cls(
            count=len(values),
            p50=percentile(values, 0.50) * us,
            p90=percentile(values, 0.90) * us,
            p99=percentile(values, 0.99) * us,
            p999=percentile(values, 0.999) * us,
            mean=statistics.fmean(values) * us if values else math.nan,
            minimum=values[0] * us if values else math.nan,
            maximum=values[-1] * us if values else math.nan,
            histogram=bins,
        )


# -- helpers -----------------------------------------------------------------------------------


def payload_of(size: int) -> bytes:
    return (bytes(range(1, 256)) * (size // 255 + 1))[:size]


def _missing(module: str) -> str | None:
    return None if importlib.util.find_spec(module) is not None else f"{module} is not installed"


def _check_echo(got: Any, payload: bytes, what: str) -> None:
    if bytes(got) != payload:
        raise AssertionError(
            f"{what}: the echo differs from the message ({len(got)} vs {len(payload)} bytes)"
        )


def _check_len(n: int, size: int, what: str) -> None:
    if n != size:
        raise AssertionError(f"{what}: echo of {n} bytes, sent {size}")


def wait_strategies() -> list[str]:
    """The wait strategies ``Ring.create`` accepts (empty before ``wait=`` exists)."""
    from mmipc import Ring

    if "wait" not in inspect.signature(Ring.create).parameters:
        return []
    return list(STRATEGIES)


def _ring_kwargs(ring: Any, method: Any, strategy: str) -> dict[str, Any]:
    """``wait=`` for each call if the handle does not carry ``strategy`` itself (none needed if so)."""
    if strategy == DEFAULT or getattr(ring, "wait", None) == strategy:
        return {}
    if "wait" in inspect.signature(method).parameters:
        return {"wait": strategy}
    raise RuntimeError(
        f"cannot apply wait={strategy!r}: the ring handle says wait={getattr(ring, 'wait', None)!r}"
    )


def _ring_wait_note(ring: Any) -> str:
    for attr in ("wait", "wait_strategy", "_wait"):
        value = getattr(ring, attr, None)
        if isinstance(value, str):
            return f"handle {attr}={value}"
    return ""


_names = itertools.count()


def _unique(prefix: str) -> str:
    return f"{prefix}{os.getpid()}-{next(_names)}-{time.monotonic_ns() % 1_000_000}"


def _shared_file(nbytes: int) -> tuple[str, Any]:
    """A /dev/shm file of ``nbytes`` (zeroed); returns (path, unlink)."""
    directory = "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir()
    path = os.path.join(directory, _unique("mmipc-bench-latency-"))
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
    try:
        os.ftruncate(fd, nbytes)
    finally:
        os.close(fd)

    def unlink() -> None:
        with contextlib.suppress(OSError):
            os.unlink(path)

    return path, unlink


def _map(path: str) -> mmap.mmap:
    fd = os.open(path, os.O_RDWR)
    try:
        return mmap.mmap(fd, os.fstat(fd).st_size)
    finally:
        os.close(fd)


def _pin(spec: H.Spec, side: int) -> None:
    """With ``--pin``: process A on the first usable CPU, B on the second (dedicated-core runs)."""
    cpus = spec.options.get("pin")
    if cpus:
        os.sched_setaffinity(0, {cpus[side % len(cpus)]})


def _ping(
    spec: H.Spec, gate: H.Gate, roundtrip: Any, what: str, warm: list[bool] | None = None
) -> array.array[int]:
    """A's loop: ``roundtrip(payload)`` returns the echo (or ``None`` when no payload travels).

    Warm-up round trips check every byte of the echo; timed ones check its length (outside the
    timed interval). ``warm[0]`` is True during the warm-up (a view case copies the echo then).
    """
    _pin(spec, 0)
    payload = payload_of(spec.size)
    size = spec.size
    for _ in range(spec.warmup):
        echo = roundtrip(payload)
        if echo is not None:
            _check_echo(echo, payload, what)
    if warm is not None:
        warm[0] = False
    rtts = array.array("q", bytes(8 * spec.count))
    clock = time.perf_counter_ns
    gate.wait()
    for i in range(spec.count):
        t0 = clock()
        echo = roundtrip(payload)
        rtts[i] = clock() - t0
        if echo is not None:
            n = echo if type(echo) is int else len(echo)
            if n != size:
                _check_len(n, size, what)
    return rtts


# -- Ring (send / recv_bytes, reserve / recv view) ---------------------------------------------


def ring_capacity(size: int) -> int:
    return max(1 << 20, 8 * ((size + 63) & ~31))


def _open_rings(spec: H.Spec, ctx: Any) -> H.Opened:
    from mmipc import Ring

    strategy = spec.options.get("strategy", DEFAULT)
    kwargs = {} if strategy == DEFAULT else {"wait": strategy}
    a_to_b = Ring.create(ring_capacity(spec.size), **kwargs)
    b_to_a = Ring.create(ring_capacity(spec.size), **kwargs)

    def close() -> None:
        a_to_b.close()
        b_to_a.close()

    return H.Opened((a_to_b, b_to_a), close)


def ring_ping(handle: Any, spec: H.Spec, gate: H.Gate) -> LatencySample:
    out, inbound = handle
    strategy = spec.options.get("strategy", DEFAULT)
    send, recv_bytes = out.send, inbound.recv_bytes
    kw_send, kw_recv = _ring_kwargs(out, send, strategy), _ring_kwargs(inbound, recv_bytes, strategy)
    t = PEER_TIMEOUT
    if kw_send or kw_recv:

        def roundtrip(payload: bytes) -> bytes:
            send(payload, t, **kw_send)
            return recv_bytes(t, **kw_recv)  # type: ignore[no-any-return]

    else:

        def roundtrip(payload: bytes) -> bytes:
            send(payload, t)
            return recv_bytes(t)  # type: ignore[no-any-return]

    try:
        rtts = _ping(spec, gate, roundtrip, "Ring")
        note = _ring_wait_note(out)
    finally:
        out.close()
        inbound.close()
    return _sample(spec, rtts, note)


def ring_echo(handle: Any, spec: H.Spec, gate: H.Gate, index: int) -> None:
    _pin(spec, 1)
    inbound, out = handle
    strategy = spec.options.get("strategy", DEFAULT)
    send, recv_bytes = out.send, inbound.recv_bytes
    kw_send, kw_recv = _ring_kwargs(out, send, strategy), _ring_kwargs(inbound, recv_bytes, strategy)
    t = PEER_TIMEOUT
    try:
        for _ in range(spec.warmup):
            send(recv_bytes(t, **kw_recv), t, **kw_send)
        gate.wait()
        for _ in range(spec.count):
            send(recv_bytes(t, **kw_recv), t, **kw_send)
    finally:
        out.close()
        inbound.close()


def ring_view_ping(handle: Any, spec: H.Spec, gate: H.Gate) -> LatencySample:
    out, inbound = handle
    reserve, recv = out.reserve, inbound.recv
    t = PEER_TIMEOUT
    size = spec.size
    warm = [True]

    def roundtrip(payload: bytes) -> Any:
        with reserve(size, t) as buf:
            buf[:] = payload
        with recv(t) as view:
            if warm[0]:
                return bytes(view)
            view[0]  # touch it, as a reader would
            return len(view)

    try:
        rtts = _ping(spec, gate, roundtrip, "Ring view", warm)
    finally:
        out.close()
        inbound.close()
    return _sample(spec, rtts)


def ring_view_echo(handle: Any, spec: H.Spec, gate: H.Gate, index: int) -> None:
    _pin(spec, 1)
    inbound, out = handle
    reserve, recv = out.reserve, inbound.recv
    t = PEER_TIMEOUT

    def echo() -> None:
        with recv(t) as view, reserve(len(view), t) as buf:
            buf[:] = view

    try:
        for _ in range(spec.warmup):
            echo()
        gate.wait()
        for _ in range(spec.count):
            echo()
    finally:
        out.close()
        inbound.close()


# -- AsyncRing -------------------------------------------------------------------------------


def async_ping(handle: Any, spec: H.Spec, gate: H.Gate) -> LatencySample:
    from mmipc import AsyncRing

    out, inbound = handle
    payload = payload_of(spec.size)
    size = spec.size
    t = PEER_TIMEOUT

    async def main() -> array.array[int]:
        async with AsyncRing(out) as aout, AsyncRing(inbound) as ain:
            send, recv_bytes = aout.send, ain.recv_bytes
            for _ in range(spec.warmup):
                await send(payload, t)
                _check_echo(await recv_bytes(t), payload, "AsyncRing")
            rtts = array.array("q", bytes(8 * spec.count))
            clock = time.perf_counter_ns
            gate.wait()  # blocks the loop, which has nothing else to do
            for i in range(spec.count):
                t0 = clock()
                await send(payload, t)
                data = await recv_bytes(t)
                rtts[i] = clock() - t0
                if len(data) != size:
                    _check_len(len(data), size, "AsyncRing")
            return rtts

    _pin(spec, 0)
    note = _ring_wait_note(out)
    strategy = spec.options.get("strategy", DEFAULT)
    for ring in handle:
        if strategy != DEFAULT and getattr(ring, "wait", None) != strategy:
            raise RuntimeError(
                f"the ring handle says wait={getattr(ring, 'wait', None)!r}, expected {strategy!r}"
            )
    try:
        rtts = asyncio.run(main())
    finally:
        out.close()
        inbound.close()
    return _sample(spec, rtts, note)


def _open_nothing(spec: H.Spec, ctx: Any) -> H.Opened:
    return H.Opened(None)


def thread_hop_ping(handle: Any, spec: H.Spec, gate: H.Gate) -> LatencySample:
    """One process: ``await loop.run_in_executor(one_thread, no-op)``, the hop AsyncRing makes."""
    from concurrent.futures import ThreadPoolExecutor

    def nothing() -> None:
        pass

    async def main() -> array.array[int]:
        loop = asyncio.get_running_loop()
        with ThreadPoolExecutor(1) as executor:
            run = loop.run_in_executor
            for _ in range(spec.warmup):
                await run(executor, nothing)
            rtts = array.array("q", bytes(8 * spec.count))
            clock = time.perf_counter_ns
            gate.wait()
            for i in range(spec.count):
                t0 = clock()
                await run(executor, nothing)
                rtts[i] = clock() - t0
            return rtts

    return _sample(spec, asyncio.run(main()))


# -- mmipc request/reply ---------------------------------------------------------------------


def rpc_unavailable() -> str | None:
    import mmipc

    if not (hasattr(mmipc, "Client") and hasattr(mmipc, "Server")):
        return "mmipc has no Client / Server (request/reply) yet"
    return None


def rpc_strategies(strategies: list[str]) -> list[str]:
    """The strategies to measure request/reply with: all, if Server and Client take ``wait=``."""
    import mmipc

    if rpc_unavailable() is not None:
        return []
    for function in (mmipc.Server.create, mmipc.Client.connect):
        if "wait" not in inspect.signature(function).parameters:
            return []
    return list(strategies)


def _open_rpc(spec: H.Spec, ctx: Any) -> H.Opened:
    import mmipc

    name = _unique("lat-rpc-")
    strategy = spec.options.get("strategy", DEFAULT)
    kwargs = {} if strategy == DEFAULT else {"wait": strategy}
    server = mmipc.Server.create(name, capacity=ring_capacity(spec.size), **kwargs)

    def close() -> None:
        server.unlink()
        server.close()

    return H.Opened((name, server), close)


def rpc_ping(handle: Any, spec: H.Spec, gate: H.Gate) -> LatencySample:
    import mmipc

    name, server = handle
    server.close()  # this process is the client
    strategy = spec.options.get("strategy", DEFAULT)
    kwargs = {} if strategy == DEFAULT else {"wait": strategy}
    client = mmipc.Client.connect(name, reply_capacity=ring_capacity(spec.size), **kwargs)
    call = client.call
    t = PEER_TIMEOUT

    def roundtrip(payload: bytes) -> Any:
        return call(payload, timeout=t)

    try:
        rtts = _ping(spec, gate, roundtrip, "request/reply")
    finally:
        client.close()
    return _sample(spec, rtts)


def rpc_serve(handle: Any, spec: H.Spec, gate: H.Gate, index: int) -> None:
    _pin(spec, 1)
    _name, server = handle
    try:
        for served, request in enumerate(server, 1):
            request.reply(request.value)
            if served == spec.warmup:
                gate.wait()
            if served == spec.warmup + spec.count:
                break
    finally:
        server.close()


# -- multiprocessing.Pipe ----------------------------------------------------------------------


def _open_pipe(spec: H.Spec, ctx: Any) -> H.Opened:
    a, b = ctx.Pipe(duplex=True)

    def close() -> None:
        a.close()
        b.close()

    return H.Opened((a, b), close)


def pipe_ping(ends: Any, spec: H.Spec, gate: H.Gate) -> LatencySample:
    conn, other = ends
    other.close()
    send_bytes, recv_bytes = conn.send_bytes, conn.recv_bytes

    def roundtrip(payload: bytes) -> bytes:
        send_bytes(payload)
        return recv_bytes()  # type: ignore[no-any-return]

    try:
        rtts = _ping(spec, gate, roundtrip, "Pipe")
    finally:
        conn.close()
    return _sample(spec, rtts)


def pipe_echo(ends: Any, spec: H.Spec, gate: H.Gate, index: int) -> None:
    _pin(spec, 1)
    other, conn = ends
    other.close()
    send_bytes, recv_bytes = conn.send_bytes, conn.recv_bytes
    try:
        for _ in range(spec.warmup):
            send_bytes(recv_bytes())
        gate.wait()
        for _ in range(spec.count):
            send_bytes(recv_bytes())
    finally:
        conn.close()


# -- pyzmq REQ/REP -----------------------------------------------------------------------------


def _open_zmq(spec: H.Spec, ctx: Any) -> H.Opened:
    directory = tempfile.mkdtemp(prefix="mmipc-bench-")
    path = os.path.join(directory, "req-rep")

    def close() -> None:
        with contextlib.suppress(OSError):
            os.unlink(path)
        with contextlib.suppress(OSError):
            os.rmdir(directory)

    return H.Opened(f"ipc://{path}", close)


def zmq_ping(address: str, spec: H.Spec, gate: H.Gate) -> LatencySample:
    import zmq

    context = zmq.Context()
    sock = context.socket(zmq.REQ)
    sock.setsockopt(zmq.RCVTIMEO, int(PEER_TIMEOUT * 1000))
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(address)
    send, recv = sock.send, sock.recv

    def roundtrip(payload: bytes) -> bytes:
        send(payload)
        return recv()

    try:
        rtts = _ping(spec, gate, roundtrip, "pyzmq")
    finally:
        sock.close()
        context.term()
    return _sample(spec, rtts)


def zmq_echo(address: str, spec: H.Spec, gate: H.Gate, index: int) -> None:
    _pin(spec, 1)
    import zmq

    context = zmq.Context()
    sock = context.socket(zmq.REP)
    sock.setsockopt(zmq.RCVTIMEO, int(PEER_TIMEOUT * 1000))
    sock.setsockopt(zmq.LINGER, int(PEER_TIMEOUT * 1000))
    sock.bind(address)
    send, recv = sock.send, sock.recv
    try:
        for _ in range(spec.warmup):
            send(recv())
        gate.wait()
        for _ in range(spec.count):
            send(recv())
    finally:
        sock.close()
        context.term()


# -- raw posix_ipc semaphores (no payload, or with a shared-memory copy) ------------------------


def _nothing() -> None:
    pass


def _open_sems(spec: H.Spec, ctx: Any) -> H.Opened:
    import posix_ipc

    names = (f"/{_unique('mmipc-bench-lat-')}-a", f"/{_unique('mmipc-bench-lat-')}-b")
    for name in names:
        posix_ipc.Semaphore(name, posix_ipc.O_CREX, 0o600, 0).close()
    path: str | None = None
    unlink_file: Any = _nothing
    if spec.options.get("copy"):
        path, unlink_file = _shared_file(2 * spec.size)

    def close() -> None:
        for name in names:
            with contextlib.suppress(posix_ipc.ExistentialError):
                posix_ipc.unlink_semaphore(name)
        unlink_file()

    return H.Opened((names, path), close)


def _open_sem_pair(names: tuple[str, str], wrapper: bool) -> tuple[Any, Any]:
    """The two semaphores, raw posix_ipc objects or mmipc's own wrapper (``_semaphore``)."""
    if wrapper:
        from mmipc._semaphore import Semaphore

        return Semaphore.open(names[0]), Semaphore.open(names[1])
    import posix_ipc

    return posix_ipc.Semaphore(names[0]), posix_ipc.Semaphore(names[1])


def sem_ping(handle: Any, spec: H.Spec, gate: H.Gate) -> LatencySample:
    (name_ab, name_ba), path = handle
    ab, ba = _open_sem_pair((name_ab, name_ba), bool(spec.options.get("wrapper")))
    post, acquire = ab.release, ba.acquire
    t = PEER_TIMEOUT
    size = spec.size
    mm = _map(path) if path is not None else None
    if mm is None:

        def roundtrip(payload: bytes) -> None:
            post()
            acquire(t)
            return None  # no payload travels

    else:
        buf = memoryview(mm)
        to_b, to_a = buf[:size], buf[size : 2 * size]

        def roundtrip(payload: bytes) -> bytes:  # type: ignore[misc]
            to_b[:] = payload
            post()
            acquire(t)
            return bytes(to_a)

    try:
        rtts = _ping(spec, gate, roundtrip, "semaphore")
    finally:
        if mm is not None:
            del to_b, to_a
            buf.release()
            mm.close()
        ab.close()
        ba.close()
    return _sample(spec, rtts)


def sem_echo(handle: Any, spec: H.Spec, gate: H.Gate, index: int) -> None:
    _pin(spec, 1)
    (name_ab, name_ba), path = handle
    ab, ba = _open_sem_pair((name_ab, name_ba), bool(spec.options.get("wrapper")))
    acquire, post = ab.acquire, ba.release
    t = PEER_TIMEOUT
    size = spec.size
    mm = _map(path) if path is not None else None
    if mm is None:

        def echo() -> None:
            acquire(t)
            post()

    else:
        buf = memoryview(mm)
        to_b, to_a = buf[:size], buf[size : 2 * size]

        def echo() -> None:
            acquire(t)
            to_a[:] = bytes(to_b)  # copy out (as recv_bytes), copy in (as send)
            post()

    try:
        for _ in range(spec.warmup):
            echo()
        gate.wait()
        for _ in range(spec.count):
            echo()
    finally:
        if mm is not None:
            del to_b, to_a
            buf.release()
            mm.close()
        ab.close()
        ba.close()


# -- spinning on a shared word ---------------------------------------------------------------


def _open_word(spec: H.Spec, ctx: Any) -> H.Opened:
    path, unlink = _shared_file(mmap.PAGESIZE)
    return H.Opened(path, unlink)


_spin_deadline = [0.0]


def _spin_until(words: memoryview, index: int, value: int, pause: Any) -> None:
    """Poll ``words[index]`` until it equals ``value`` (calling ``pause()`` between polls, if given)."""
    spins = 0
    while words[index] != value:
        spins += 1
        if pause is not None:
            pause()
        if spins & 0xFFFF == 0 and time.monotonic() > _spin_deadline[0]:
            raise TimeoutError(f"the peer did not move word {index} to {value} within {CELL_TIMEOUT} s")


def word_ping(path: str, spec: H.Spec, gate: H.Gate) -> LatencySample:
    mm = _map(path)
    words = memoryview(mm).cast("Q")
    seq = [0]
    pause = os.sched_yield if spec.options.get("yield") else None

    def roundtrip(payload: bytes) -> None:
        n = seq[0] + 1
        seq[0] = n
        words[0] = n  # one aligned 8-byte store
        _spin_until(words, 1, n, pause)
        return None  # no payload travels

    _spin_deadline[0] = time.monotonic() + CELL_TIMEOUT
    try:
        rtts = _ping(spec, gate, roundtrip, "shared word")
    finally:
        words.release()
        mm.close()
    return _sample(spec, rtts)


def word_echo(path: str, spec: H.Spec, gate: H.Gate, index: int) -> None:
    _pin(spec, 1)
    mm = _map(path)
    words = memoryview(mm).cast("Q")
    pause = os.sched_yield if spec.options.get("yield") else None
    _spin_deadline[0] = time.monotonic() + CELL_TIMEOUT
    try:
        n = 0
        for _ in range(spec.warmup):
            n += 1
            _spin_until(words, 0, n, pause)
            words[1] = n
        gate.wait()
        for _ in range(spec.count):
            n += 1
            _spin_until(words, 0, n, pause)
            words[1] = n
    finally:
        words.release()
        mm.close()


# -- the benchmark -----------------------------------------------------------------------------


@dataclass
class Row:
    """One case at one size: every sample's stats, the shown (lowest-p50) one, or a note."""

    case: str
    size: int
    count: int = 0
    samples: list[Stats] = dataclasses.field(default_factory=list)
    rtts: array.array[int] | None = None  # the shown sample's round trips (for the plot)
    note: str = ""
    child_note: str = ""

    @property
    def best(self) -> Stats | None:
        if not self.samples or self.note:
            return None
        return min(self.samples, key=lambda s: s.p50)

    def to_json(self) -> dict[str, Any]:
        best = self.best
        return {
            "case": self.case,
            "size": self.size,
            "count": self.count,
            "note": self.note,
            "child_note": self.child_note,
            "shown": dataclasses.asdict(best) if best is not None else None,
            "samples": [dataclasses.asdict(s) for s in self.samples],
        }


def cases(strategies: list[str]) -> list[tuple[H.Case, set[int] | None]]:
    """(case, sizes it runs at or None for all)."""
    found: list[tuple[H.Case, set[int] | None]] = []
    for strategy in [DEFAULT, *strategies]:
        found.append(
            (
                H.Case(
                    ring_case_name(strategy),
                    _open_rings,
                    ring_ping,
                    ring_echo,
                    options={"strategy": strategy},
                ),
                None,
            )
        )
    found.append((H.Case(RING_VIEW, _open_rings, ring_view_ping, ring_view_echo), None))
    for strategy in [DEFAULT, *[s for s in strategies if s == "block"]]:
        found.append(
            (
                H.Case(
                    async_case_name(strategy),
                    _open_rings,
                    async_ping,
                    ring_echo,
                    options={"strategy": strategy},
                ),
                None,
            )
        )
    found.append((H.Case(THREAD_HOP, _open_nothing, thread_hop_ping, max_producers=0), {64}))
    for strategy in [DEFAULT, *rpc_strategies(strategies)]:
        found.append(
            (
                H.Case(
                    rpc_case_name(strategy),
                    _open_rpc,
                    rpc_ping,
                    rpc_serve,
                    unavailable=rpc_unavailable,
                    options={"strategy": strategy},
                ),
                None,
            )
        )
    found.append((H.Case(PIPE, _open_pipe, pipe_ping, pipe_echo), None))
    found.append((H.Case(ZMQ, _open_zmq, zmq_ping, zmq_echo, unavailable=lambda: _missing("zmq")), None))
    found.append((H.Case(SEM, _open_sems, sem_ping, sem_echo), None))
    found.append((H.Case(SEM_COPY, _open_sems, sem_ping, sem_echo, options={"copy": True}), None))
    found.append((H.Case(SEM_WRAPPER, _open_sems, sem_ping, sem_echo, options={"wrapper": True}), {64}))
    found.append((H.Case(WORD, _open_word, word_ping, word_echo), {64}))
    found.append((H.Case(WORD_YIELD, _open_word, word_ping, word_echo, options={"yield": True}), {64}))
    return found


def measure_row(ctx: Any, case: H.Case, size: int, count: int, repeat: int, pin: tuple[int, ...] = ()) -> Row:
    row = Row(case.name, size, count)
    reason = case.unavailable()
    if reason is not None:
        row.note = f"skipped: {reason}"
        _progress(row)
        return row
    warmup = max(50, count // 10)
    producers = 0 if case.max_producers == 0 else 1  # 0: a one-process reference
    options = {"pin": list(pin)} if pin else {}
    spec = H.Spec(size=size, count=count, warmup=warmup, producers=producers, options=options)
    best_p50 = math.inf
    try:
        for _ in range(repeat):
            sample = H.run_cell(ctx, case, spec, timeout=CELL_TIMEOUT)
            assert isinstance(sample, LatencySample)
            rtts = sample.rtts()
            stats = Stats.of(rtts)
            row.samples.append(stats)
            row.child_note = sample.note
            if stats.p50 < best_p50:
                best_p50 = stats.p50
                row.rtts = rtts
    except H.CellError as exc:
        row.note = f"failed: {exc}"
    _progress(row)
    return row


def _progress(row: Row) -> None:
    best = row.best
    if best is not None:
        p50s = ", ".join(f"{s.p50:.1f}" for s in row.samples)
        text = f"p50 {best.p50:.1f} us  p99 {best.p99:.1f}  p99.9 {best.p999:.1f}  (p50 of samples: {p50s})"
    else:
        text = row.note.splitlines()[0] if row.note else "no samples"
    print(f"  [{H.format_size(row.size)}] {row.case}: {text}", file=sys.stderr, flush=True)
    if row.note.startswith("failed"):
        print(row.note, file=sys.stderr, flush=True)


def _fmt(value: float) -> str:
    if math.isnan(value):
        return "-"
    return f"{value:.1f}" if value < 1000 else f"{value:,.0f}"


def print_table(rows: list[Row], baseline: str = PIPE) -> str:
    width = max([len(r.case) for r in rows] + [10])
    header = ["case".ljust(width), "p50 us", "p99 us", "p99.9 us", "mean us", "p50 vs Pipe"]
    lines: list[str] = []
    for size in dict.fromkeys(r.size for r in rows):
        group = [r for r in rows if r.size == size]
        base = next((r.best for r in group if r.case == baseline), None)
        lines.append(f"\nround trip, {H.format_size(size)} each way\n")
        lines.append("| " + " | ".join(header) + " |")
        lines.append(
            "|" + "|".join("-" * (len(h) + 1) + ("-" if i == 0 else ":") for i, h in enumerate(header)) + "|"
        )
        for r in group:
            best = r.best
            if best is None:
                cells = [r.case.ljust(width)] + ["-".rjust(len(h)) for h in header[1:]]
                lines.append("| " + " | ".join(cells) + f" | {r.note.splitlines()[0][:80] if r.note else ''}")
                continue
            ratio = "-" if base is None or best.p50 <= 0 else f"{base.p50 / best.p50:.2f}x"
            cells = [
                r.case.ljust(width),
                _fmt(best.p50).rjust(len(header[1])),
                _fmt(best.p99).rjust(len(header[2])),
                _fmt(best.p999).rjust(len(header[3])),
                _fmt(best.mean).rjust(len(header[4])),
                ratio.rjust(len(header[5])),
            ]
            lines.append("| " + " | ".join(cells) + " |")
    lines.append("\n(p50 vs Pipe: how many times lower the p50 is than mp.Pipe's; higher is better.)")
    text = "\n".join(lines) + "\n"
    print(text, flush=True)
    return text


def _p50(rows: list[Row], case: str, size: int) -> float | None:
    for r in rows:
        if r.case == case and r.size == size and r.best is not None:
            return r.best.p50
    return None


def targets(rows: list[Row], strategies: list[str]) -> list[H.Target]:
    found: list[H.Target] = []
    spin = _p50(rows, ring_case_name("spin"), 64) if "spin" in strategies else None
    pipe = _p50(rows, PIPE, 64)
    sem = _p50(rows, SEM, 64)
    block = _p50(rows, ring_case_name("block"), 64) if "block" in strategies else None
    missing = "Ring.create has no wait= yet" if not strategies else "a figure it needs was not measured"

    if spin is None:
        found.append(H.Target("64 B: spin p50 round trip <= 5 us", "SKIP", missing))
        found.append(H.Target("64 B: spin p50 >= 10x better than mp.Pipe", "SKIP", missing))
    else:
        found.append(
            H.Target("64 B: spin p50 round trip <= 5 us", "PASS" if spin <= 5.0 else "FAIL", f"{spin:.2f} us")
        )
        if pipe is None:
            found.append(H.Target("64 B: spin p50 >= 10x better than mp.Pipe", "SKIP", missing))
        else:
            ratio = pipe / spin
            found.append(
                H.Target(
                    "64 B: spin p50 >= 10x better than mp.Pipe",
                    "PASS" if ratio >= 10 else "FAIL",
                    f"{ratio:.2f}x (Pipe {pipe:.1f} us, spin {spin:.2f} us)",
                )
            )
    if block is None or sem is None:
        found.append(H.Target("64 B: block p50 within 1.3x of the raw semaphore ping-pong", "SKIP", missing))
    else:
        ratio = block / sem
        found.append(
            H.Target(
                "64 B: block p50 within 1.3x of the raw semaphore ping-pong",
                "PASS" if ratio <= 1.3 else "FAIL",
                f"{ratio:.2f}x (block {block:.1f} us, semaphore {sem:.1f} us)",
            )
        )
    for size in sorted({r.size for r in rows}):
        aio = _p50(rows, async_case_name("block"), size) if block is not None else None
        ref = _p50(rows, ring_case_name("block"), size)
        if aio is None or ref is None:
            found.append(
                H.Target(f"{H.format_size(size)}: asyncio round trip <= 2x the block one", "SKIP", missing)
            )
        else:
            ratio = aio / ref
            found.append(
                H.Target(
                    f"{H.format_size(size)}: asyncio round trip <= 2x the block one",
                    "PASS" if ratio <= 2.0 else "FAIL",
                    f"{ratio:.2f}x (asyncio {aio:.1f} us, block {ref:.1f} us)",
                )
            )
    # Context lines (not targets of the issue): the default policy against the same references.
    default = _p50(rows, ring_case_name(DEFAULT), 64)
    adefault = _p50(rows, async_case_name(DEFAULT), 64)
    if default is not None and pipe is not None:
        found.append(
            H.Target(
                "(info) 64 B: default Ring p50 vs mp.Pipe", "INFO", f"{pipe / default:.2f}x lower than Pipe"
            )
        )
    if default is not None and sem is not None:
        found.append(
            H.Target(
                "(info) 64 B: default Ring p50 vs raw semaphore",
                "INFO",
                f"{default / sem:.2f}x the semaphore",
            )
        )
    if default is not None and adefault is not None:
        found.append(
            H.Target("(info) 64 B: asyncio default vs Ring default", "INFO", f"{adefault / default:.2f}x")
        )
    return found


def plot(rows: list[Row], path: Path, title: str) -> str | None:
    """Write the latency figure; return why it was not written, or None.

    Top row: log-x histograms at the smallest size, mmipc's rows on the left, the peers and
    floors on the right (same axes). Bottom row: the tail of each size (up to two) as 1 - CDF
    on log-log axes, every row.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install mmipc[bench])"
    measured = [r for r in rows if r.rtts is not None and len(r.rtts) > 0]
    sizes = sorted({r.size for r in measured})
    if not sizes:
        return "nothing measured"
    cases_seen = list(dict.fromkeys(r.case for r in measured))
    palette = [*plt.get_cmap("tab10").colors, *plt.get_cmap("Dark2").colors]  # type: ignore[attr-defined]

    def is_mmipc(case: str) -> bool:
        return case.startswith(("Ring", "AsyncRing", "mmipc request"))

    def line_style(case: str) -> str:
        if is_mmipc(case):
            return "-"  # mmipc: solid
        if case in (PIPE, ZMQ):
            return "--"  # peers: dashed
        return ":"  # floors and diagnostics: dotted

    styles = {case: (palette[i % len(palette)], line_style(case)) for i, case in enumerate(cases_seen)}
    fig, grid = plt.subplots(2, 2, figsize=(15, 11), layout="constrained")
    axes = list(grid.flat)

    def us_of(r: Row) -> list[float]:
        assert r.rtts is not None
        return sorted(v / 1e3 for v in r.rtts)

    small = sizes[0]
    shown = [r for r in measured if r.size == small]
    lo = max(0.1, min(us_of(r)[0] for r in shown))
    hi = max(us_of(r)[-1] for r in shown)
    step = 0.04  # decades per bin
    first = math.floor(math.log10(lo) / step) * step
    edges = [10 ** (first + i * step) for i in range(int((math.log10(hi) - first) / step) + 2)]
    for ax, mine in ((axes[0], True), (axes[1], False)):
        for r in shown:
            if is_mmipc(r.case) != mine:
                continue
            values = us_of(r)
            color, style = styles[r.case]
            ax.hist(
                values,
                bins=edges,
                histtype="step",
                linewidth=1.5,
                linestyle=style,
                color=color,
                label=r.case,
                weights=[100.0 / len(values)] * len(values),
            )
        ax.set_xscale("log")
        ax.set_xlim(edges[0], edges[-1])
        ax.set_xlabel("round-trip time (us, log scale)")
        ax.set_ylabel(f"% of round trips per bin ({step} decade wide)")
        what = "mmipc" if mine else "peers and floors"
        ax.set_title(f"histogram, {H.format_size(small)} each way: {what}")
        ax.grid(True, which="both", alpha=0.25)

    for ax, size in zip(axes[2:], sizes[:2], strict=False):
        group = [r for r in measured if r.size == size]
        longest = 1
        for r in group:
            values = us_of(r)
            n = len(values)
            longest = max(longest, n)
            color, style = styles[r.case]
            # Fraction of round trips at least this slow: p50 at 0.5, p99 at 0.01, p99.9 at 0.001.
            ax.step(
                values,
                [(n - i) / n for i in range(n)],
                where="post",
                color=color,
                linestyle=style,
                linewidth=1.4,
                label=r.case,
            )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_ylim(0.5 / longest, 1.2)
        for q, text in ((0.5, "p50"), (0.01, "p99"), (0.001, "p99.9")):
            ax.axhline(q, color="grey", linewidth=0.8, linestyle=":")
            ax.text(
                0.005, q, text, transform=ax.get_yaxis_transform(), va="bottom", fontsize=8, color="dimgrey"
            )
        ax.set_xlabel("round-trip time (us, log scale)")
        ax.set_ylabel("fraction of round trips at least this slow (1 - CDF)")
        ax.set_title(f"tail, {H.format_size(size)} each way")
        ax.grid(True, which="both", alpha=0.25)

    handles, labels = [], []
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            if label not in labels:
                handles.append(handle)
                labels.append(label)
    if len(sizes) == 1:
        axes[3].set_visible(False)
    fig.legend(
        handles, labels, loc="outside lower center", ncol=min(3, len(labels)), fontsize=10, frameon=False
    )
    fig.suptitle(title, fontsize=11)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    print(f"plot written to {path}", flush=True)
    return None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--sizes",
        type=lambda text: [H.parse_size(p) for p in text.split(",")],
        default=list(SIZES),
        help="comma-separated message sizes (default 64,64K)",
    )
    parser.add_argument(
        "--count",
        type=int,
        default=None,
        help="timed round trips per sample (default 20000 at 64 B, 5000 at 64 KiB; a tenth with --quick)",
    )
    parser.add_argument(
        "--pin",
        action="store_true",
        help="pin process A to the first usable CPU and B to the second (dedicated cores)",
    )
    parser.add_argument(
        "--plot",
        default=None,
        metavar="PATH",
        help=f"latency histogram PNG (default {PLOT_PATH.relative_to(H.REPO_ROOT)}, none with --quick; '-': none)",
    )


def run(args: argparse.Namespace) -> int:
    settings = H.Settings.from_args(args, "latency")
    ctx = H.make_context(settings, preload=["benchmarks.latency", "mmipc", "zmq", "posix_ipc"])
    info = H.machine_info(("mmipc", "pyzmq", "posix_ipc", "matplotlib"))
    with contextlib.suppress(ImportError):
        import zmq

        info["packages"]["libzmq"] = zmq.zmq_version()
    command = "python -m benchmarks " + shlex.join(sys.argv[1:])
    print(f"$ {command}")
    mem = info.get("memory_bytes") or 0
    print(
        f"machine: {info['cpu']}, {info['cores_usable']} usable cores, {mem / 2**30:.1f} GiB RAM, "
        f"{info['kernel']}, {info['python']}\n"
        f"packages: {', '.join(f'{k} {v}' for k, v in info['packages'].items() if v)}; git {info.get('git')}; "
        f"load average {info.get('load_average_at_start')}\n"
        f"method: {settings.start_method} children, ping-pong timed in process A with perf_counter_ns, "
        f"lowest-p50 of {settings.repeat} sample(s)",
        flush=True,
    )
    pin: tuple[int, ...] = ()
    if args.pin:
        usable = sorted(os.sched_getaffinity(0))
        if len(usable) < 2:
            raise SystemExit("--pin needs two usable CPUs")
        pin = (usable[0], usable[1])
        print(
            f"pinned: process A on CPU {pin[0]}, process B on CPU {pin[1]} (the thread-hop row is not pinned)"
        )
    strategies = wait_strategies()
    print(
        f"Ring wait strategies: {', '.join(strategies) if strategies else 'none (Ring.create has no wait=)'}"
    )
    selected = [(c, sizes) for c, sizes in cases(strategies) if settings.selected(c.name)]
    rows: list[Row] = []
    for size in args.sizes:
        count = args.count or COUNTS.get(size, DEFAULT_COUNT)
        if settings.quick and args.count is None:
            count = max(200, count // 10)
        for case, only in selected:
            if only is not None and size not in only:
                continue
            rows.append(measure_row(ctx, case, size, count, settings.repeat, pin))
    table = print_table(rows)
    checks = targets(rows, strategies)
    text = H.evaluate_targets(checks)
    plot_path: Path | None
    if args.plot is None:
        plot_path = None if settings.quick else PLOT_PATH
    else:
        plot_path = None if args.plot in ("-", "") else Path(args.plot)
    plot_note = None
    if plot_path is not None:
        plot_note = plot(
            rows,
            plot_path,
            f"mmipc round-trip latency between two processes ({info['cpu']}, {info['cores_usable']} cores; "
            f"{info['date_utc']} UTC)",
        )
        if plot_note:
            print(f"no plot: {plot_note}")
    H.write_json(
        settings.json_path,
        {
            "benchmark": "latency",
            "command": command,
            "machine": info,
            "settings": {
                "quick": settings.quick,
                "repeat": settings.repeat,
                "start_method": settings.start_method,
                "sizes": args.sizes,
                "count": args.count,
                "pinned_cpus": list(pin),
                "wait_strategies": strategies,
                "statistic": "sample with the lowest p50 of the repeats; percentiles nearest-rank",
                "histogram_bins": f"{BINS_PER_DECADE} per decade from {BIN_LOW_NS:g} ns",
            },
            "rows": [r.to_json() for r in rows],
            "targets": [t.to_json() for t in checks],
            "table": table,
            "targets_text": text,
            "plot": str(plot_path) if plot_path is not None and plot_note is None else None,
        },
    )
    failed = [r for r in rows if r.note.startswith("failed")]
    return 1 if failed else 0
