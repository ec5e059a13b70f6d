"""Request/reply (Server, Client) between real processes: replies matched to requests, remote
exceptions with tracebacks, large buffers, many clients, killed servers and clients."""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest

import mmipc

pytestmark = pytest.mark.timeout(90)

WAIT = 30.0


class Boom(Exception):
    pass


def handler(value: Any) -> Any:
    """The test service: echoes, doubles, raises, returns arrays, or does not pickle."""
    op, arg = value
    if op == "double":
        return 2 * arg
    if op == "raise":
        raise Boom(f"boom {arg}")
    if op == "array":
        return {"sum": float(arg.sum()), "back": np.full(arg.shape, 7.0)}
    if op == "unpicklable":
        return lambda: None
    if op == "pid":
        return os.getpid()
    if op == "stuck":
        return "not stuck here"  # only serve_until_stuck hangs on it
    raise ValueError(op)


def serve(server: mmipc.Server, ready: Any = None) -> None:
    if ready is not None:
        ready.set()
    server.serve(handler)
    server.close()


def serve_until_stuck(server: mmipc.Server, stuck: Any) -> None:
    """Answer requests; on ("stuck", _) say so and hang (the test kills this process)."""
    for request in server:
        if request.value[0] == "stuck":
            stuck.set()
            time.sleep(600)
        request.reply(handler(request.value))


@pytest.fixture
def service() -> Iterator[Callable[..., mmipc.Server]]:
    made: list[mmipc.Server] = []

    def make(**kwargs: Any) -> mmipc.Server:
        server = mmipc.Server.create(f"test-rpc-{uuid.uuid4().hex[:10]}", **kwargs)
        made.append(server)
        return server

    yield make
    for server in made:
        heap = server._requests._heap_region
        try:
            server.unlink()
        except mmipc.MmipcError:
            pass
        server.close()
        if heap is not None:
            heap.unlink_name()


def _start(ctx: Any, target: Any, *args: Any) -> Any:
    process = ctx.Process(target=target, args=args)
    process.start()
    return process


def _stop(*processes: Any) -> None:
    for p in processes:
        if p.is_alive():
            p.kill()
        p.join(WAIT)


def test_calls_errors_and_large_buffers(service: Callable[..., mmipc.Server], mp_context: Any) -> None:
    server = service(capacity=1 << 20, heap_size=32 << 20)
    process = _start(mp_context, serve, server)
    try:
        with mmipc.Client.connect(server.name, reply_heap_size=32 << 20) as client:
            assert [client.call(("double", i), timeout=WAIT) for i in range(50)] == [2 * i for i in range(50)]
            with pytest.raises(Boom, match="boom 3") as info:
                client.call(("raise", 3), timeout=WAIT)
            cause = info.value.__cause__
            assert isinstance(cause, mmipc.RemoteError)
            assert (
                "remote traceback" in str(cause)
                and "in handler" in str(cause)
                and "Boom: boom 3" in str(cause)
            )
            with pytest.raises(mmipc.RemoteError, match="could not send the reply"):
                client.call(("unpicklable", None), timeout=WAIT)
            big = np.arange(1 << 20, dtype=np.float64)  # 8 MiB each way, out-of-band
            reply = client.call(("array", big), timeout=WAIT)
            assert reply["sum"] == float(big.sum())
            assert reply["back"].shape == big.shape and not reply["back"].flags.writeable
            assert (reply["back"] == 7.0).all()
            assert client.call(("double", "x"), timeout=WAIT) == "xx"  # still in step after all that
            client.end_service()
        process.join(WAIT)
        assert process.exitcode == 0
    finally:
        _stop(process)


def _client_calls(name: str, index: int, count: int, results: Any) -> None:
    try:
        with mmipc.Client.connect(name) as client:
            got = [client.call(("double", index * 1000 + i), timeout=WAIT) for i in range(count)]
        results.put((index, got))
    except BaseException as exc:
        results.put((index, repr(exc)))


def test_many_client_processes(service: Callable[..., mmipc.Server], mp_context: Any) -> None:
    server = service()
    results = mp_context.Queue()
    server_process = _start(mp_context, serve, server)
    clients = [_start(mp_context, _client_calls, server.name, k, 60, results) for k in range(3)]
    try:
        got = dict(results.get(timeout=WAIT) for _ in clients)
        for k in range(3):
            assert got[k] == [2 * (k * 1000 + i) for i in range(60)]
    finally:
        _stop(*clients)
        _stop(server_process)


def test_server_killed_mid_request_fails_the_call(
    service: Callable[..., mmipc.Server], mp_context: Any
) -> None:
    server = service()
    stuck = mp_context.Event()
    process = _start(mp_context, serve_until_stuck, server, stuck)
    try:
        with mmipc.Client.connect(server.name) as client:
            assert client.call(("double", 21), timeout=WAIT) == 42
            killer = _KillWhenSet(process, stuck)
            started = time.monotonic()
            with pytest.raises(
                mmipc.ServerDied, match=rf"process {process.pid}\) left after taking request 2"
            ):
                client.call(("stuck", None), timeout=WAIT)
            assert killer.killed and time.monotonic() - started < WAIT  # not the timeout
            # A replacement server takes over the service; the client goes on.
            replacement = _start(mp_context, serve, mmipc.Server.attach(server.name))
            try:
                assert client.call(("double", 5), timeout=WAIT) == 10
                client.end_service()
                replacement.join(WAIT)
                assert replacement.exitcode == 0
            finally:
                _stop(replacement)
    finally:
        _stop(process)


class _KillWhenSet:
    """SIGKILL ``process`` from a thread as soon as ``event`` is set."""

    def __init__(self, process: Any, event: Any) -> None:
        import threading

        self.killed = False

        def run() -> None:
            if event.wait(WAIT):
                os.kill(process.pid, signal.SIGKILL)
                self.killed = True

        threading.Thread(target=run, daemon=True).start()


def test_no_server_times_out_and_a_late_reply_is_dropped(
    service: Callable[..., mmipc.Server], mp_context: Any
) -> None:
    server = service()
    with mmipc.Client.connect(server.name) as client:
        with pytest.raises(mmipc.WaitTimeout, match=r"no reply .* to request 1 within 0\.2 s"):
            client.call(("double", 1), timeout=0.2)
        process = _start(mp_context, serve, server)  # serves the stale request 1, then request 2
        try:
            assert client.call(("double", 2), timeout=WAIT) == 4
            client.end_service()
            process.join(WAIT)
            assert process.exitcode == 0
        finally:
            _stop(process)


def _call_and_vanish(name: str, done: Any) -> None:
    client = mmipc.Client.connect(name)
    client._requests.send((1, client._reply_name, ("double", 1)))  # a request, no wait for the reply
    done.set()
    os._exit(0)  # its reply channel stays behind, unread: the server must not hang on it


def test_server_survives_a_client_that_died(service: Callable[..., mmipc.Server], mp_context: Any) -> None:
    server = service()
    done = mp_context.Event()
    vanished = _start(mp_context, _call_and_vanish, server.name, done)
    assert done.wait(WAIT)
    vanished.join(WAIT)
    request = server.recv(timeout=WAIT)
    try:
        assert request.value == ("double", 1)
        assert request.reply(2, timeout=1.0) is True  # room in its channel: delivered, unread
        with pytest.raises(mmipc.MmipcError, match="already answered"):
            request.reply(3)
        with mmipc.Client.connect(server.name) as client:
            client._requests.send((1, client._reply_name, ("double", 4)))
            live = server.recv(timeout=WAIT)
            assert live.reply(8) is True
            assert client._replies.recv(timeout=WAIT) == (1, 0, 8)
    finally:
        stale = mmipc.Channel.attach(request.client)
        stale.unlink()
        stale.close()


def test_reprs_and_closed_handles(service: Callable[..., mmipc.Server]) -> None:
    server = service()
    client = mmipc.Client.connect(server.name)
    assert repr(server).startswith(f"<mmipc.Server {server.name!r} served=0")
    assert repr(client).startswith(f"<mmipc.Client of {server.name!r} calls=0 reply='{server.name}.r")
    reply_name = client._reply_name
    client.close()
    assert "closed" in repr(client)
    with pytest.raises(mmipc.ClosedError):
        client.call(1)
    with pytest.raises(mmipc.RegionNotFound):
        mmipc.Channel.attach(reply_name)  # close removed the reply channel
    with pytest.raises(mmipc.RegionNotFound):
        mmipc.Client.connect(f"missing-{uuid.uuid4().hex[:8]}")


def _live_servers(client: mmipc.Client) -> int:
    from mmipc import _layout as L

    table = client._requests._ring._participants.table()
    return sum(1 for p in table if p.alive and p.roles & L.ROLE_QUEUE_CONSUMER)


def test_many_servers_share_a_service_and_answer_for_a_dead_one(
    service: Callable[..., mmipc.Server], mp_context: Any
) -> None:
    """Server A takes a request and hangs; server B starts; A is SIGKILLed. The request is
    delivered again to B, which answers ServerDied for it (it never runs it twice), and B
    serves the calls that follow."""
    import threading

    server = service(multi_server=True)
    stuck = mp_context.Event()
    hanging = _start(mp_context, serve_until_stuck, mmipc.Server.attach(server.name), stuck)
    healthy = None
    try:
        with mmipc.Client.connect(server.name) as client:
            assert [client.call(("double", i), timeout=WAIT) for i in range(20)] == [2 * i for i in range(20)]
            outcome: list[BaseException | object] = []

            def call_stuck() -> None:
                try:
                    outcome.append(client.call(("stuck", None), timeout=WAIT))
                except BaseException as exc:
                    outcome.append(exc)

            caller = threading.Thread(target=call_stuck)
            caller.start()
            assert stuck.wait(WAIT), "server A never took the request"
            healthy = _start(mp_context, serve, mmipc.Server.attach(server.name))
            deadline = time.monotonic() + WAIT
            while _live_servers(client) < 2:  # B is waiting for requests
                assert time.monotonic() < deadline, "server B never started"
                time.sleep(0.01)
            os.kill(hanging.pid, signal.SIGKILL)
            caller.join(WAIT)
            assert not caller.is_alive()
            (result,) = outcome
            assert isinstance(result, mmipc.ServerDied), result
            assert "died; it may or may not have run" in str(result)
            assert client.call(("double", 5), timeout=WAIT) == 10  # B goes on
            client.end_service()
        healthy.join(WAIT)
        assert healthy.exitcode == 0
    finally:
        _stop(hanging, *([healthy] if healthy is not None else []))
