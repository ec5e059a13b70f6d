"""Request/reply over Channels: ``mmipc.Server`` and ``mmipc.Client``.

A service is a named request :class:`~mmipc.Channel` (many writers: the clients; one consumer:
the server process). Each client owns a reply channel named ``<service>.r<nonce>`` (many
writers, so a restarted server can answer; one consumer: the client). Messages are tuples:

* request ``(seq, reply_name, value)``
* reply ``(seq, status, value)``: ``REPLY_OK`` with the result; ``REPLY_ERROR`` with
  ``(exception, formatted remote traceback)``; ``REPLY_FAILED`` with a message (the result or
  the exception could not be pickled); ``REPLY_DIED`` with a message (the request was taken
  by a server that died: it is not run again).

``Server.create(name, multi_server=True)`` makes the request channel a work queue
(``mode="queue"``): any number of server processes (``Server.attach(name)``) share the
requests, each request going to exactly one of them. A request whose server died is delivered
again to another server, which answers ``REPLY_DIED`` instead of running it twice.

Replies are matched to requests by sequence number; a reply to an earlier call that timed out is
dropped. Large buffers in requests and replies travel out-of-band through the channels' heaps,
as with any Channel (a received numpy array is a read-only view).

Server death: while a client waits, it checks every :data:`CHECK_INTERVAL` seconds whether the
request channel's consumer (the server process, via its OFD lock) is still the live process
that was there when the request was sent (with ``multi_server``: whether any server is alive;
the survivors answer for a dead one). If that server died or left after it may have taken the
request, :class:`~mmipc.ServerDied` is raised (the request may or may not have run). A request
nobody has taken yet waits for a server (up to ``timeout``).
"""

from __future__ import annotations

import os
import time
import traceback
import weakref
from collections import OrderedDict
from types import TracebackType
from typing import Any

from . import _layout as L
from ._channel import Channel
from ._errors import ClosedError, EndOfStream, MmipcError, RemoteError, ServerDied, WaitTimeout, WouldBlock

__all__ = ["Client", "Request", "Server"]

REPLY_OK = 0
REPLY_ERROR = 1
REPLY_FAILED = 2
REPLY_DIED = 3

# How often a waiting client checks that the server holding its request is alive.
CHECK_INTERVAL = 0.05
# Reply channels a server keeps attached (least recently used ones are closed beyond this).
REPLY_CACHE = 128


def _reply_name(service: str) -> str:
    return f"{service}.r{os.urandom(5).hex()}"


def _consumer_pid(chan: Channel) -> int | None:
    """The pid of the live process consuming ``chan`` (a server), or None if nobody does.

    A work-queue channel (many servers): 0 while any consumer is alive (any live one answers
    for a dead one), None when none is.
    """
    ring = chan._ring
    words = ring._words
    if words is None:
        return None
    if chan.mode == "queue":
        alive = any(p.alive and p.roles & L.ROLE_QUEUE_CONSUMER for p in ring._participants.table())
        return 0 if alive else None
    if not ring._region.locked_elsewhere(L.LOCK_ROLE_CONSUMER):
        return None
    return int(words[L.W_CONSUMER_PID])


class Request:
    """One request taken by a :class:`Server`: its ``value`` and how to answer it."""

    __module__ = "mmipc"
    __slots__ = ("_answered", "_release", "_server", "client", "seq", "value")

    def __init__(self, server: Server, seq: int, client: str, value: Any, release: Any = None) -> None:
        self._server = server
        self.seq = seq
        self.client = client
        self.value = value
        self._answered = False
        # multi_server: the request's record stays claimed until it is answered, so that a
        # server dying meanwhile hands it to another server (which answers REPLY_DIED).
        self._release = release

    def __del__(self) -> None:
        release, self._release = getattr(self, "_release", None), None
        if release is not None:
            try:
                release()  # never answered: let the record go (the client's call times out)
            except Exception:
                pass

    def __repr__(self) -> str:
        state = "answered" if self._answered else "pending"
        return f"<mmipc.Request seq={self.seq} from {self.client!r} {state}>"

    def reply(self, value: Any, timeout: float | None = None) -> bool:
        """Send ``value`` back. Returns False if the client is gone (the reply is dropped).

        A value that cannot be pickled makes the client's call raise :class:`RemoteError`
        instead. ``timeout`` (default: the server's ``reply_timeout``) bounds the wait for room
        in a client's full reply channel; past it the reply is dropped (and False returned).
        """
        return self._answer(REPLY_OK, value, timeout)

    def fail(self, exc: BaseException, timeout: float | None = None) -> bool:
        """Make the client's call raise ``exc`` (with this process's traceback attached)."""
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        return self._answer(REPLY_ERROR, (exc, tb), timeout)

    def _answer(self, status: int, value: Any, timeout: float | None) -> bool:
        if self._answered:
            raise MmipcError(f"request {self.seq} from {self.client!r} was already answered")
        self._answered = True
        try:
            return self._server._send_reply(self.client, self.seq, status, value, timeout)
        finally:
            release, self._release = self._release, None
            if release is not None:
                release()


class Server:
    """The serving end of a request/reply service (one server process, or many with
    ``multi_server=True``).

    ``Server.create("calc")`` makes the service; clients connect by name. Take requests with
    :meth:`recv` (or iterate) and answer each with ``request.reply(value)`` or
    ``request.fail(exc)``, or let :meth:`serve` call a function for every request. A server
    process that dies is replaced by ``Server.attach("calc")`` in another process; clients
    whose request it may have taken get :class:`ServerDied`.
    """

    __module__ = "mmipc"

    def __init__(self, requests: Channel, reply_timeout: float, *, _token: object = None) -> None:
        if _token is not _PRIVATE:
            raise TypeError("use Server.create(...) or Server.attach(...)")
        self._requests = requests
        self._reply_timeout = reply_timeout
        self._replies: OrderedDict[str, Channel] = OrderedDict()
        self._closed = False
        self.requests_served = 0
        self.replies_dropped = 0

    @classmethod
    def create(
        cls,
        name: str,
        *,
        capacity: int = 1 << 20,
        heap_size: int | None = None,
        copy_threshold: int | None = None,
        reply_timeout: float = 5.0,
        multi_server: bool = False,
        permissions: int = 0o600,
    ) -> Server:
        """Create the service ``name`` (its request channel; ``RegionExists`` if taken).

        ``multi_server=True``: many server processes may serve it at once (each opens it with
        :meth:`attach`); every request goes to exactly one of them.
        """
        chan = Channel.create(
            capacity,
            name=name,
            multi_writer=True,
            heap_size=heap_size,
            copy_threshold=copy_threshold,
            mode="queue" if multi_server else "single",
            permissions=permissions,
        )
        return cls(chan, reply_timeout, _token=_PRIVATE)

    @classmethod
    def attach(cls, name: str, *, reply_timeout: float = 5.0, timeout: float = 2.0) -> Server:
        """Serve an existing service (for example after its server process died)."""
        return cls(Channel.attach(name, timeout=timeout), reply_timeout, _token=_PRIVATE)

    def __reduce__(self) -> tuple[Any, ...]:
        if self._closed:
            raise ClosedError(f"server {self.name!r} is closed and cannot be pickled")
        return (_rebuild_server, (self._requests, self._reply_timeout))

    @property
    def name(self) -> str:
        return self._requests.name

    def __repr__(self) -> str:
        if self._closed:
            return f"<mmipc.Server {self.name!r} closed>"
        return (
            f"<mmipc.Server {self.name!r} served={self.requests_served} "
            f"clients_cached={len(self._replies)} dropped={self.replies_dropped}>"
        )

    def __enter__(self) -> Server:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def recv(self, timeout: float | None = None) -> Request:
        """The next request; :class:`WaitTimeout` after ``timeout`` s."""
        if self._closed:
            raise ClosedError(f"server {self.name!r} is closed")
        requests = self._requests
        held = requests.mode == "queue"
        while True:
            release = None
            if held:
                message, release = requests._recv_held(timeout)
            else:
                message = requests.recv(timeout)
            try:
                seq, client, value = message
                if not (isinstance(seq, int) and isinstance(client, str)):
                    raise TypeError
            except (TypeError, ValueError):
                if release is not None:
                    release()
                continue  # not a request of this protocol (nobody to answer): skip it
            info = requests.last_record
            if info is not None and info.redelivered:
                # Its first server died with it: it may have run. Never run it twice.
                text = f"the server of {self.name!r} that took request {seq} died; it may or may not have run"
                try:
                    self._send_reply(client, seq, REPLY_DIED, text, None)
                finally:
                    if release is not None:
                        release()
                continue
            return Request(self, seq, client, value, release)

    def __iter__(self) -> Any:
        """Requests until the service is ended (:meth:`Client.end_service` or ``end_stream``)."""
        while True:
            try:
                yield self.recv()
            except EndOfStream:
                return

    def serve(self, handler: Any, *, timeout: float | None = None, max_requests: int | None = None) -> int:
        """Answer requests with ``handler(value)`` until the service ends, ``timeout`` s pass
        without a request, or ``max_requests`` were served. Exceptions raised by the handler go
        back to the caller (with the traceback); returns the number of requests served."""
        served = 0
        while max_requests is None or served < max_requests:
            try:
                request = self.recv(timeout)
            except (EndOfStream, WaitTimeout):
                break
            try:
                result = handler(request.value)
            except Exception as exc:
                request.fail(exc)
            else:
                request.reply(result)
            served += 1
        return served

    def _reply_channel(self, client: str) -> Channel | None:
        chan = self._replies.get(client)
        if chan is not None:
            self._replies.move_to_end(client)
            return chan
        try:
            chan = Channel.attach(client, timeout=0.5)
        except MmipcError:
            return None  # the client is gone (its reply channel was unlinked)
        self._replies[client] = chan
        while len(self._replies) > REPLY_CACHE:
            self._replies.popitem(last=False)[1].close()
        return chan

    def _drop_client(self, client: str) -> None:
        chan = self._replies.pop(client, None)
        if chan is not None:
            chan.close()

    def _send_reply(self, client: str, seq: int, status: int, value: Any, timeout: float | None) -> bool:
        if self._closed:
            raise ClosedError(f"server {self.name!r} is closed")
        self.requests_served += 1
        chan = self._reply_channel(client)
        if chan is None:
            self.replies_dropped += 1
            return False
        timeout = self._reply_timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        message = (seq, status, value)
        while True:
            try:
                chan.send_nowait(message)
                return True
            except WouldBlock:
                pass
            except MmipcError as exc:
                if status == REPLY_FAILED:
                    raise
                # The result (or exception) cannot travel: tell the caller why, instead.
                status, message = REPLY_FAILED, (seq, REPLY_FAILED, f"{type(exc).__name__}: {exc}")
                continue
            if _consumer_pid(chan) is None or time.monotonic() >= deadline:
                self.replies_dropped += 1  # the client died or stopped reading
                self._drop_client(client)
                return False
            time.sleep(0.001)

    def close(self) -> None:
        """Stop serving (idempotent). Pending clients' calls raise :class:`ServerDied`."""
        if self._closed:
            return
        self._closed = True
        for chan in self._replies.values():
            chan.close()
        self._replies.clear()
        self._requests.close()

    def unlink(self) -> None:
        """Remove the service's name (clients connected already keep their handles)."""
        self._requests.unlink()


class Client:
    """The calling end of a service: ``Client.connect("calc").call(value, timeout=5)``.

    Each client owns a reply channel (removed by :meth:`close`). One client per thread.
    """

    __module__ = "mmipc"

    def __init__(self, requests: Channel, replies: Channel, *, _token: object = None) -> None:
        if _token is not _PRIVATE:
            raise TypeError("use Client.connect(...)")
        self._requests = requests
        self._replies = replies
        self._reply_name = replies.name
        self._seq = 0
        self._closed = False
        self._finalizer = weakref.finalize(self, _remove_reply_channel, replies)

    @classmethod
    def connect(
        cls,
        name: str,
        *,
        reply_capacity: int = 1 << 20,
        reply_heap_size: int | None = None,
        timeout: float = 2.0,
    ) -> Client:
        """Connect to the service ``name`` (``RegionNotFound`` if there is none)."""
        requests = Channel.attach(name, timeout=timeout)
        try:
            replies = Channel.create(
                reply_capacity, name=_reply_name(name), multi_writer=True, heap_size=reply_heap_size
            )
        except BaseException:
            requests.close()
            raise
        try:
            try:
                replies.recv_nowait()  # take the consumer role now: servers see we are alive
            except WouldBlock:
                pass
        except BaseException:
            _remove_reply_channel(replies)
            requests.close()
            raise
        return cls(requests, replies, _token=_PRIVATE)

    @property
    def name(self) -> str:
        return self._requests.name

    def __repr__(self) -> str:
        if self._closed:
            return f"<mmipc.Client of {self.name!r} closed>"
        return f"<mmipc.Client of {self.name!r} calls={self._seq} reply={self._reply_name!r}>"

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def call(self, value: Any, timeout: float | None = None, *, copy: bool = False) -> Any:
        """Send ``value`` as a request and return the server's reply.

        Raises the server's exception (its ``__cause__`` a :class:`RemoteError` carrying the
        remote traceback), :class:`RemoteError` if the reply could not be serialized,
        :class:`ServerDied` if the server that may have taken the request died or left,
        :class:`WaitTimeout` after ``timeout`` s (the request may still run later: a late
        reply is dropped). ``copy=True`` returns owned copies of large buffers.
        """
        if self._closed:
            raise ClosedError(f"client of {self.name!r} is closed")
        deadline = None if timeout is None else time.monotonic() + timeout
        self._seq += 1
        seq = self._seq
        requests = self._requests
        words = requests._ring._words
        assert words is not None
        # Who serves, seen before the send: a server that takes the request and dies at once
        # would be gone before a later look. The wait loop below follows any change.
        server = _consumer_pid(requests)
        before = int(words[L.W_TAIL])
        requests.send((seq, self._reply_name, value), timeout)
        after = int(words[L.W_TAIL])
        while True:
            wait = CHECK_INTERVAL
            if deadline is not None:
                wait = min(wait, deadline - time.monotonic())
                if wait <= 0:
                    raise WaitTimeout(
                        f"no reply from service {self.name!r} to request {seq} within {timeout} s"
                    )
            try:
                reply = self._replies.recv(wait, copy=copy)
            except WaitTimeout:
                server = self._check_server(seq, server, before, after)
                continue
            try:
                rseq, status, result = reply
            except (TypeError, ValueError):
                continue  # not a reply of this protocol
            if rseq != seq:
                continue  # the late reply to an earlier call that timed out
            if status == REPLY_OK:
                return result
            if status == REPLY_ERROR:
                exc, tb = result
                raise exc from RemoteError(f"\n\nremote traceback (service {self.name!r}):\n{tb}")
            if status == REPLY_DIED:
                raise ServerDied(str(result))
            raise RemoteError(f"service {self.name!r} could not send the reply to request {seq}: {result}")

    def _check_server(self, seq: int, server: int | None, before: int, after: int) -> int | None:
        now = _consumer_pid(self._requests)
        if now is not None and (server is None or now == server or now == 0):
            return now  # the same live server, the first one to come, or live queue servers
        words = self._requests._ring._words
        assert words is not None
        head = int(words[L.W_HEAD])
        if head <= before:
            return now  # nobody has taken the request yet: wait for a server
        certain = "" if head >= after else " (or an earlier request)"
        if server == 0:
            who = f"every server of {self.name!r} left"
        else:
            pid = server if server is not None else "?"
            what = "left" if now is None else f"was replaced by process {now}"
            who = f"the server of {self.name!r} (process {pid}) {what}"
        raise ServerDied(f"{who} after taking request {seq}{certain}; it may or may not have run")

    def end_service(self) -> None:
        """End the service's request stream: the server drains what was sent, then stops."""
        self._requests.end_stream()

    def close(self) -> None:
        """Leave the service and remove this client's reply channel (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self._finalizer()
        self._requests.close()


def _remove_reply_channel(chan: Channel) -> None:
    try:
        if not chan.closed:
            chan.unlink()
    except MmipcError:
        pass
    chan.close()


_PRIVATE = object()


def _rebuild_server(requests: Channel, reply_timeout: float) -> Server:
    return Server(requests, reply_timeout, _token=_PRIVATE)
