"""asyncio adapters: await sends and receives of a Ring or a Channel without blocking the loop.

How it waits
------------
mmipc's wake-ups are posix semaphores, which have no file descriptor an event loop could
watch. Each adapter therefore owns **one helper thread** that runs the blocking calls (a
handle is not thread-safe: every call on the wrapped handle runs either on that thread or, on
the fast path, on the loop thread while the helper thread is idle; never both at once).

* Fast path: when the helper thread is idle, the operation is first tried with the ``_nowait``
  call on the loop thread. A record that is already there costs no thread hop at all. If the
  handle's wait strategy polls (``"adaptive"``, the default on x86-64, or ``"spin"``), the loop
  thread keeps trying between other tasks (``await asyncio.sleep(0)``) for the strategy's polling
  budget (at most :data:`POLL_MAX`) before it hands the call to the helper thread.
* Slow path: the blocking call runs on the helper thread in slices of :data:`SLICE` seconds; the
  result comes back through ``loop.call_soon_threadsafe`` (one extra cross-thread wake-up,
  measured in ``python -m benchmarks latency``).

Cancellation and timeouts
-------------------------
Cancelling the awaiting task (``task.cancel()``, ``asyncio.timeout``, ``wait_for``) raises
``CancelledError`` once the helper thread has finished its current slice (at most
:data:`SLICE`): a receive that completed on the helper thread meanwhile is **not lost**, it is
kept and returned by the next receive, in order (the wait is what keeps the order). A send that was already
under way when it was cancelled may still complete (a send is atomic: it either published its
record or did nothing), so a protocol that must know should not cancel sends, or should use
``send_nowait``. ``timeout=`` raises :class:`~mmipc.WaitTimeout` as the blocking call does.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from types import TracebackType
from typing import Any, Generic, TypeVar

from ._channel import Channel
from ._errors import ClosedError, EndOfStream, WaitTimeout, WouldBlock
from ._ring import Ring
from ._wait import WaitStrategy

__all__ = ["AsyncChannel", "AsyncRing"]

# Longest time the helper thread spends in one blocking call before it re-checks whether the
# awaiting task was cancelled: it bounds how long a cancelled operation keeps the thread busy.
SLICE = 0.02
# Longest the loop thread polls (handles whose wait strategy polls) before handing off.
POLL_MAX = 0.001

H = TypeVar("H", Ring, Channel)
T = TypeVar("T")


class _Cancelled(Exception):
    """Ends a helper-thread call whose awaiting task was cancelled (nobody sees it)."""


class _Adapter(Generic[H]):
    """Shared machinery: one helper thread, the fast path, cancellation, the stash."""

    _kind = "handle"

    def __init__(self, handle: H) -> None:
        self._handle: H = handle
        self._executor: ThreadPoolExecutor | None = None
        # Operations submitted to the helper thread whose outcome the loop has not processed
        # yet. Only the loop thread changes it: while it is 0 the handle is free to use here.
        self._busy = 0
        # Objects received on the helper thread after their task was cancelled, in order.
        self._stash: deque[Any] = deque()
        self._closed = False

    @property
    def handle(self) -> H:
        """The wrapped Ring or Channel (do not use it while an operation is awaited)."""
        return self._handle

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"busy={self._busy} stashed={len(self._stash)}"
        return f"<mmipc.{type(self).__name__} of {self._handle!r} {state}>"

    async def __aenter__(self: Any) -> Any:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError(f"async adapter of {self._kind} {self._handle.name!r} is closed")

    async def aclose(self) -> None:
        """Stop the helper thread (after its current slice) and close the wrapped handle."""
        if self._closed:
            return
        self._closed = True
        executor, self._executor = self._executor, None
        if executor is not None:
            await asyncio.get_running_loop().run_in_executor(None, executor.shutdown)
        self._handle.close()

    def close(self) -> None:
        """Synchronous :meth:`aclose` (waits at most one slice for the helper thread)."""
        if self._closed:
            return
        self._closed = True
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True)
        self._handle.close()

    def _strategy(self) -> WaitStrategy:
        handle: Any = self._handle
        ring = handle._ring if isinstance(handle, Channel) else handle
        return ring._wait  # type: ignore[no-any-return]

    def _thread(self) -> ThreadPoolExecutor:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"mmipc-aio-{self._handle.name}")
        return self._executor

    async def _run(
        self,
        nowait: Callable[[], T] | None,
        blocking: Callable[[float | None], T],
        timeout: float | None,
        receive: bool,
        sliced: bool = True,
    ) -> T:
        """Try ``nowait`` on the loop thread when idle, else run ``blocking`` on the helper thread.

        ``sliced``: ``blocking(t)`` waits at most ``t`` seconds and raises ``WaitTimeout`` having
        done nothing, so it can be retried slice by slice (cancellation is noticed between
        slices). Otherwise it runs once with the whole ``timeout``.
        """
        self._check_open()
        stash = self._stash
        if receive and stash:
            return stash.popleft()  # type: ignore[no-any-return]
        loop = asyncio.get_running_loop()
        if nowait is not None and not self._busy:
            try:
                return nowait()
            except WouldBlock as exc:
                if timeout is not None and timeout <= 0:  # as the blocking call does
                    raise WaitTimeout(
                        f"{self._kind} {self._handle.name!r}: gave up after 0 s: {exc}"
                    ) from None
            # The handle's strategy polls (adaptive, spin): poll here too, between other tasks,
            # for its budget (at most POLL_MAX): a peer that answers within it costs no thread hop.
            budget = min(self._strategy().poll, POLL_MAX)
            if budget > 0:
                stop = loop.time() + budget
                while loop.time() < stop:
                    await asyncio.sleep(0)
                    self._check_open()
                    if receive and stash:
                        return stash.popleft()  # type: ignore[no-any-return]
                    if self._busy:
                        break  # another task handed the handle to the helper thread
                    try:
                        return nowait()
                    except WouldBlock:
                        pass
        cancelled = threading.Event()
        clock = loop.time  # time.monotonic: callable from any thread
        deadline = None if timeout is None else clock() + timeout
        result_future: asyncio.Future[T] = loop.create_future()
        settled: asyncio.Future[None] = loop.create_future()  # deliver ran (stash up to date)

        def deliver(ok: bool, value: Any) -> None:
            # On the loop thread, so the future's cancellation cannot race with this check.
            self._busy -= 1
            try:
                if result_future.cancelled():
                    if ok and receive:
                        stash.append(value)  # its task is gone: the next receive returns it
                    return
                if ok:
                    result_future.set_result(value)
                else:
                    result_future.set_exception(value)
            finally:
                settled.set_result(None)

        def work() -> None:
            try:
                value = stash.popleft() if receive and stash else call()
            except BaseException as exc:
                outcome: tuple[bool, Any] = (False, exc)
            else:
                outcome = (True, value)
            try:
                loop.call_soon_threadsafe(deliver, *outcome)
            except RuntimeError:  # the loop is closed: nobody is waiting any more
                pass

        def call() -> T:
            if cancelled.is_set():
                raise _Cancelled
            if not sliced:
                return blocking(timeout)
            last: WaitTimeout | None = None
            while True:
                wait = SLICE
                if deadline is not None:
                    wait = min(wait, deadline - clock())
                    if wait <= 0:
                        # A specific error of the last slice (HeapExhausted: who holds the heap)
                        # is kept; its duration was the slice's, so the message is ours.
                        detail = f": {last}" if last is not None and type(last) is not WaitTimeout else ""
                        raise (type(last) if last is not None else WaitTimeout)(
                            f"{self._kind} {self._handle.name!r}: gave up after {timeout} s{detail}"
                        )
                try:
                    return blocking(wait)
                except WaitTimeout as exc:
                    if cancelled.is_set():
                        raise _Cancelled from None
                    last = exc

        self._thread().submit(work)
        self._busy += 1
        try:
            return await result_future
        except asyncio.CancelledError:
            cancelled.set()
            if receive:
                if not settled.done():
                    # A record this call took may be on its way to the stash: wait (at most one
                    # slice) until it is there, so that a receive started after this
                    # cancellation cannot read a later record first.
                    try:
                        await asyncio.shield(settled)
                    except asyncio.CancelledError:
                        pass  # cancelled again: deliver still stashes it, order best effort
                # Cancelled after the result was set but before this task resumed: keep it.
                if result_future.done() and not result_future.cancelled():
                    if result_future.exception() is None:
                        stash.append(result_future.result())
            raise


class AsyncRing(_Adapter[Ring]):
    """Awaitable sends and receives on a :class:`~mmipc.Ring` (copies; no zero-copy views).

    ``async with mmipc.AsyncRing(ring) as aring: data = await aring.recv_bytes()``. Closing the
    adapter closes the ring handle. See the module notes for how it waits and cancels.
    """

    __module__ = "mmipc"
    _kind = "ring"

    async def send(self, data: Any, timeout: float | None = None) -> None:
        """Copy ``data`` into one record; waits for space without blocking the loop."""
        ring = self._handle
        await self._run(lambda: ring.send_nowait(data), lambda t: ring.send(data, t), timeout, False)

    async def send_many(self, items: Iterable[Any], timeout: float | None = None) -> int:
        """:meth:`Ring.send_many` on the helper thread (it may wait several times)."""
        ring, batch = self._handle, list(items)
        return await self._run(None, lambda t: ring.send_many(batch, t), timeout, False, sliced=False)

    async def recv_bytes(self, timeout: float | None = None) -> bytes:
        """The next record as ``bytes``; :class:`~mmipc.EndOfStream` once drained."""
        ring = self._handle
        return await self._run(ring.recv_bytes_nowait, ring.recv_bytes, timeout, True)

    async def recv_many(self, max_records: int = 1024, timeout: float | None = None) -> list[bytes]:
        """Up to ``max_records`` records, waiting only for the first."""
        ring = self._handle

        return await self._run(
            lambda: _drain(ring.recv_bytes_nowait, max_records),
            lambda t: ring.recv_many(max_records, t),
            timeout,
            True,
        )

    async def end_stream(self, timeout: float | None = None) -> None:
        ring = self._handle
        await self._run(None, lambda t: ring.end_stream(t), timeout, False, sliced=False)

    def __aiter__(self) -> AsyncRing:
        return self

    async def __anext__(self) -> bytes:
        try:
            return await self.recv_bytes()
        except EndOfStream:
            raise StopAsyncIteration from None


class AsyncChannel(_Adapter[Channel]):
    """Awaitable sends and receives on a :class:`~mmipc.Channel`.

    ``async with mmipc.AsyncChannel(chan) as achan: obj = await achan.recv()``; large buffers
    arrive as zero-copy views exactly as with :meth:`Channel.recv`. Closing the adapter closes
    the channel handle. See the module notes for how it waits and cancels.
    """

    __module__ = "mmipc"
    _kind = "channel"

    async def send(self, obj: Any, timeout: float | None = None) -> None:
        """Send one object (serialized on the calling thread's turn); waits without blocking the loop."""
        chan = self._handle
        await self._run(lambda: chan.send_nowait(obj), lambda t: chan.send(obj, t), timeout, False)

    async def send_many(self, objects: Iterable[Any], timeout: float | None = None) -> int:
        chan, batch = self._handle, list(objects)
        return await self._run(None, lambda t: chan.send_many(batch, t), timeout, False, sliced=False)

    async def recv(self, timeout: float | None = None, *, copy: bool = False) -> Any:
        """The next object; :class:`~mmipc.EndOfStream` once the stream is drained."""
        chan = self._handle
        return await self._run(
            lambda: chan.recv_nowait(copy=copy), lambda t: chan.recv(t, copy=copy), timeout, True
        )

    async def recv_many(
        self, max_objects: int = 1024, timeout: float | None = None, *, copy: bool = False
    ) -> list[Any]:
        """Up to ``max_objects`` objects, waiting only for the first."""
        chan = self._handle

        return await self._run(
            lambda: _drain(lambda: chan.recv_nowait(copy=copy), max_objects),
            lambda t: chan.recv_many(max_objects, t, copy=copy),
            timeout,
            True,
        )

    async def end_stream(self, timeout: float | None = None) -> None:
        chan = self._handle
        await self._run(None, lambda t: chan.end_stream(t), timeout, False, sliced=False)

    def __aiter__(self) -> AsyncChannel:
        return self

    async def __anext__(self) -> Any:
        try:
            return await self.recv()
        except EndOfStream:
            raise StopAsyncIteration from None


def _drain(first: Callable[[], T], limit: int) -> list[T]:
    """``first()`` (which may raise WouldBlock), then more ``first()`` calls up to ``limit`` items."""
    out = [first()]
    while len(out) < limit:
        try:
            out.append(first())
        except WouldBlock:
            break
    return out
