"""Pool: a :class:`concurrent.futures.Executor` whose tasks and results travel through shared memory.

Architecture (``docs/pool.md`` explains the choices)::

    submit() ──pickle──> pending deque ──dispatch──> task Channel of worker k ──> worker k
                                                     (one per worker, at most
                                                      ``prefetch`` tasks in it)
    futures <── result thread <── one multi-writer result Channel <── every worker
                    │              (large buffers: views of its heap; past the heap:
                    │               one overflow segment per buffer)
                    └── watches worker exit codes: fails the task a dead worker was running,
                        re-queues the ones it had not started, starts a replacement

* **Dispatch** happens in the caller's thread (``submit``) and in the result thread (when a
  result frees a worker's slot), under one lock, never blocking: ``send_nowait`` into the
  chosen worker's task channel. The pool knows at every moment which tasks each worker holds,
  in order; a worker runs them in that order and sends each result before taking the next, so
  when a worker dies (after its published results are drained) the oldest task it holds is the
  one it was running: exact attribution, with no extra message per task.
* **Messages.** A task is ``(task_id, stream, buffers)`` where ``stream`` is the pickle
  protocol-5 stream of ``(fn, args, kwargs)`` made in the submitting thread and ``buffers`` its
  large out-of-band buffers; a result is ``(worker_id, task_id, status, stream, buffers)``. The
  inner stream is pickled by the pool itself so that an object that fails to unpickle is
  reported on the right future (the channel's envelope always unpickles), while the buffers
  still travel out-of-band through the channel's heap and arrive as read-only views.
* **Overflow.** A worker whose result does not get heap space within ``_HEAP_WAIT`` seconds
  (the caller holds earlier results), or that is larger than the heap or the ring, writes the
  stream and each buffer into its own POSIX shared-memory segment and sends the names; the
  result thread maps and unlinks them at once, so the memory lives exactly as long as the
  caller's views. A result the caller keeps forever therefore never stalls the pool.
"""

from __future__ import annotations

import itertools
import mmap
import multiprocessing
import multiprocessing.context
import os
import pickle
import signal
import threading
import time
import traceback
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future
from concurrent.futures import TimeoutError as FuturesTimeout
from dataclasses import dataclass
from typing import Any

from ._channel import Channel
from ._errors import (
    BrokenPool,
    EndOfStream,
    HeapExhausted,
    MmipcError,
    RecordTooLarge,
    SerializationError,
    WaitTimeout,
    WorkerDied,
    WouldBlock,
)
from ._serialization import DEFAULT_COPY_THRESHOLD

__all__ = ["Pool", "PoolStats"]

MiB = 1 << 20

# Result statuses (the third field of a result message).
_OK = 0
_ERROR = 1
_READY = 2
_INIT_FAILED = 3
_OVERFLOW = 0x100  # flag: the stream and buffers are in overflow segments, not in the channel

_POLL = 0.02  # seconds between checks of worker liveness while the result channel is quiet
_HEAP_WAIT = 0.05  # a worker waits this long for result heap space before it overflows
_HEAP_WAIT_AGAIN = 0.001  # ... or this long if the heap was full for its previous result
_SEND_RETRY = 0.5  # a worker's blocking sends wake up this often to check that the pool lives
_JOIN_TIMEOUT = 3.0  # shutdown: how long workers get to exit after their stop message
_SHM_DIR = "/dev/shm"


class _RemoteTraceback(Exception):
    """The formatted traceback of an exception raised in a worker (the ``__cause__``)."""

    def __init__(self, tb: str) -> None:
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return self.tb


_FINISHED = "FINISHED"
_SPIN_SECONDS = 100e-6  # a caller about to block on a result polls this long first


class _PoolFuture(Future[Any]):
    """A :class:`concurrent.futures.Future` whose waits poll briefly before they block.

    The result thread usually completes a future within tens of microseconds of a caller
    starting to wait for it; polling (``sched_yield`` releases the GIL to that thread) saves the
    caller a futex sleep and wake-up, which is most of a small task's submit-to-result latency.
    """

    def _poll(self) -> None:
        if self._state != _FINISHED:  # type: ignore[attr-defined]
            clock = time.perf_counter
            deadline = clock() + _SPIN_SECONDS
            yield_cpu = os.sched_yield
            while self._state != _FINISHED and clock() < deadline:  # type: ignore[attr-defined]
                yield_cpu()

    def result(self, timeout: float | None = None) -> Any:
        self._poll()
        return super().result(timeout)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        self._poll()
        return super().exception(timeout)


@dataclass(frozen=True)
class PoolStats:
    """A snapshot of a pool's counters (cheap: no shared-memory walk)."""

    max_workers: int
    workers_alive: int
    tasks_submitted: int
    tasks_pending: int
    tasks_running: int
    tasks_completed: int
    tasks_failed: int
    workers_started: int
    workers_died: int
    results_overflowed: int
    tasks_overflowed: int
    broken: bool
    shutdown: bool


class _Task:
    __slots__ = ("copy", "fn_name", "future", "id", "oob", "started", "stream")

    def __init__(self, task_id: int, future: Future[Any], fn_name: str, copy: bool) -> None:
        self.id = task_id
        self.future = future
        self.fn_name = fn_name
        self.copy = copy
        self.stream: bytes | None = None
        self.oob: list[pickle.PickleBuffer] = []
        self.started = False


class _Worker:
    __slots__ = ("chan", "full", "id", "inflight", "process", "ready", "sent", "stopping")

    def __init__(self, worker_id: int, process: Any, chan: Channel) -> None:
        self.id = worker_id
        self.process = process
        self.chan = chan
        self.inflight: deque[_Task] = deque()
        self.sent = 0  # tasks ever dispatched to it (max_tasks_per_child budget)
        self.ready = False
        self.full = False  # its task channel refused the last send; retried after its next result
        self.stopping = False  # sent its stop message (shutdown)


_live_pools: weakref.WeakSet[Pool] = weakref.WeakSet()
_atexit_registered = False


def _python_exit() -> None:
    for pool in list(_live_pools):
        try:
            pool.shutdown(wait=True)
        except Exception:
            pass


def _register_atexit() -> None:
    global _atexit_registered
    if not _atexit_registered:
        _atexit_registered = True
        # Runs before the interpreter joins non-daemon threads (what ProcessPoolExecutor uses).
        threading._register_atexit(_python_exit)  # type: ignore[attr-defined]


def _qualname(fn: Any) -> str:
    return str(getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or type(fn).__name__)


def _describe_exit(exitcode: int | None) -> str:
    if exitcode is None:
        return "is gone"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        return f"was killed by {name} (exit code {exitcode})"
    return f"exited with code {exitcode}"


class Pool(Executor):
    """A process pool (:class:`concurrent.futures.Executor`) that moves tasks and results through
    shared memory.

    ``Pool(max_workers=None, *, mp_context=None, initializer=None, initargs=(),
    max_tasks_per_child=None, copy_results=False, prefetch=2, result_heap_size=256 MiB,
    result_capacity=4 MiB, task_capacity=1 MiB, task_heap_size=16 MiB, copy_threshold=64 KiB)``

    Results come back through a shared-memory channel: numpy arrays and other large buffers
    (from ``copy_threshold`` bytes) arrive as **read-only views of shared memory**, whose memory
    returns to the pool when the caller drops them (``copy_results=True``, or ``copy=True`` on
    :meth:`map` / :meth:`imap_unordered`, returns owned, writable copies instead). Holding any
    number of results never stalls the pool: results that find the result heap full travel in
    their own shared-memory segments. Task arguments travel the same way through a small channel
    per worker (large buffers arrive in the worker as read-only views).

    A worker that dies (signal, ``os._exit``) fails the task it was running with
    :class:`WorkerDied` (naming the worker, its pid and the signal); the pool starts a
    replacement and every other task completes. An exception raised by a task reaches the
    caller with the worker's formatted traceback as its ``__cause__``. An initializer that
    raises breaks the pool (:class:`BrokenPool`), like ``ProcessPoolExecutor``.

    ``submit`` may be called from several threads. ``shutdown`` never hangs on dead workers:
    workers that do not exit after their stop message are terminated, then killed, and every
    shared-memory object of the pool is removed.
    """

    __module__ = "mmipc"

    def __init__(
        self,
        max_workers: int | None = None,
        *,
        mp_context: multiprocessing.context.BaseContext | str | None = None,
        initializer: Callable[..., object] | None = None,
        initargs: tuple[Any, ...] = (),
        max_tasks_per_child: int | None = None,
        copy_results: bool = False,
        prefetch: int = 2,
        result_heap_size: int = 256 * MiB,
        result_capacity: int = 4 * MiB,
        task_capacity: int = 1 * MiB,
        task_heap_size: int = 16 * MiB,
        copy_threshold: int = DEFAULT_COPY_THRESHOLD,
    ) -> None:
        if max_workers is None:
            max_workers = os.cpu_count() or 1
        if not isinstance(max_workers, int) or max_workers < 1:
            raise ValueError(f"max_workers must be an int >= 1, got {max_workers!r}")
        if max_tasks_per_child is not None and (
            not isinstance(max_tasks_per_child, int) or max_tasks_per_child < 1
        ):
            raise ValueError(f"max_tasks_per_child must be an int >= 1 or None, got {max_tasks_per_child!r}")
        if not isinstance(prefetch, int) or prefetch < 1:
            raise ValueError(f"prefetch must be an int >= 1, got {prefetch!r}")
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        if isinstance(mp_context, str) or mp_context is None:
            mp_context = multiprocessing.get_context(mp_context)
        self._max_workers = max_workers
        self._ctx = mp_context
        self._initializer = initializer
        self._initargs = tuple(initargs)
        self._max_tasks = max_tasks_per_child
        self._copy_results = bool(copy_results)
        self._prefetch = prefetch
        self._task_capacity = task_capacity
        self._task_heap_size = task_heap_size
        self._copy_threshold = copy_threshold
        self._overflow_prefix = f"mmipc-pool-{os.getpid():x}-{int.from_bytes(os.urandom(5), 'little'):010x}-"

        # Re-entrant: a future's done-callback may submit while the pool fails a task.
        self._lock = threading.RLock()
        self._pending: deque[_Task] = deque()
        self._workers: list[_Worker] = []
        self._by_id: dict[int, _Worker] = {}
        self._ids = itertools.count()
        self._worker_ids = itertools.count()
        self._segment_ids = itertools.count()
        self._shutdown = False
        self._broken: str | None = None
        self._submitted = self._completed = self._failed = 0
        self._started = self._died = self._overflowed = self._tasks_overflowed = 0

        # Every OS object the pool creates carries one of these strings in its /dev/shm name
        # (channel nonces; the overflow prefix): tests check that none survives shutdown.
        # (Bounded: a pool that replaces workers forever keeps the most recent ones.)
        self._shm_markers: deque[str] = deque([self._overflow_prefix], maxlen=4096)
        self._result_chan = Channel.create(
            result_capacity,
            multi_writer=True,
            heap_size=result_heap_size,
            copy_threshold=copy_threshold,
            max_participants=max(64, 2 * max_workers + 8),
        )
        self._shm_markers.extend(_channel_markers(self._result_chan))
        try:
            with self._lock:
                for _ in range(max_workers):
                    self._start_worker_locked()
        except BaseException:
            self._teardown()
            raise
        self._thread = threading.Thread(target=self._result_loop, name="mmipc-pool-results", daemon=True)
        _register_atexit()
        _live_pools.add(self)
        self._thread.start()

    # -- public API -----------------------------------------------------------------------------

    @property
    def max_workers(self) -> int:
        return self._max_workers

    def __repr__(self) -> str:
        state = "broken" if self._broken else "shut down" if self._shutdown else "running"
        with self._lock:
            running = sum(len(w.inflight) for w in self._workers)
            pending = len(self._pending)
            alive = len(self._workers)
        return (
            f"<mmipc.Pool {state} workers={alive}/{self._max_workers} "
            f"start_method={self._ctx.get_start_method()} pending={pending} running={running}>"
        )

    def stats(self) -> PoolStats:
        """A snapshot of the pool's counters."""
        with self._lock:
            return PoolStats(
                max_workers=self._max_workers,
                workers_alive=len(self._workers),  # not yet found dead (checked every 20 ms)
                tasks_submitted=self._submitted,
                tasks_pending=len(self._pending),
                tasks_running=sum(len(w.inflight) for w in self._workers),
                tasks_completed=self._completed,
                tasks_failed=self._failed,
                workers_started=self._started,
                workers_died=self._died,
                results_overflowed=self._overflowed,
                tasks_overflowed=self._tasks_overflowed,
                broken=self._broken is not None,
                shutdown=self._shutdown,
            )

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        """Schedule ``fn(*args, **kwargs)`` in a worker; return its :class:`Future`.

        ``fn`` and the arguments are pickled here, in the calling thread: an object that cannot
        be pickled is reported on the returned future (:class:`SerializationError`). Raises
        :class:`BrokenPool` if the pool is broken and ``RuntimeError`` after :meth:`shutdown`.
        """
        return self._submit(fn, args, kwargs, self._copy_results)

    def _submit(self, fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any], copy: bool) -> Future[Any]:
        if self._broken is not None:
            raise BrokenPool(self._broken)
        if self._shutdown:
            raise RuntimeError("cannot schedule new futures after shutdown")
        future: Future[Any] = _PoolFuture()
        task = _Task(next(self._ids), future, _qualname(fn), copy)
        oob = task.oob
        threshold = self._copy_threshold

        def callback(buffer: pickle.PickleBuffer) -> bool:
            if buffer.raw().nbytes < threshold:
                return True
            oob.append(buffer)
            return False

        try:
            task.stream = pickle.dumps((fn, args, kwargs), 5, buffer_callback=callback)
        except Exception as exc:
            error = SerializationError(f"cannot pickle task {task.id} ({task.fn_name}): {exc!r}")
            error.__cause__ = exc
            future.set_exception(error)
            with self._lock:
                self._submitted += 1
                self._failed += 1
            return future
        with self._lock:
            if self._broken is not None:
                raise BrokenPool(self._broken)
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            self._submitted += 1
            self._pending.append(task)
            self._dispatch_locked()
        return future

    def map(  # type: ignore[override]
        self,
        fn: Callable[..., Any],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
        copy: bool | None = None,
        prefetch: int | None = None,
    ) -> Iterator[Any]:
        """Like :func:`map`, in the workers: results in input order.

        The input is consumed lazily: at most ``prefetch`` chunks (default: ``2 * max_workers``
        times the per-worker prefetch) are submitted ahead of the one being consumed, so an
        endless or huge iterable is fine. ``chunksize`` items travel as one task. ``timeout``
        counts from this call, as for :meth:`concurrent.futures.Executor.map`. ``copy``
        overrides ``copy_results``. Closing the iterator early cancels what has not started.
        """
        if chunksize < 1:
            raise ValueError(f"chunksize must be >= 1, got {chunksize}")
        window = self._window(prefetch)
        deadline = None if timeout is None else time.monotonic() + timeout
        want_copy = self._copy_results if copy is None else bool(copy)
        chunks = _chunks(zip(*iterables), chunksize)  # noqa: B905 (map stops at the shortest)
        futures: deque[Future[Any]] = deque()
        for chunk in itertools.islice(chunks, window):
            futures.append(self._submit(_run_chunk, (fn, chunk), {}, want_copy))
        return self._ordered(fn, futures, chunks, deadline, want_copy, timeout)

    def _ordered(
        self,
        fn: Callable[..., Any],
        futures: deque[Future[Any]],
        chunks: Iterator[list[tuple[Any, ...]]],
        deadline: float | None,
        copy: bool,
        timeout: float | None,
    ) -> Iterator[Any]:
        done = 0
        try:
            while futures:
                future = futures.popleft()
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                try:
                    results = future.result(left)
                except FuturesTimeout:
                    raise TimeoutError(
                        f"map: {done} results in {timeout} s, the next one ({_qualname(fn)}) not yet"
                    ) from None
                done += len(results)
                del future
                for chunk in itertools.islice(chunks, 1):
                    futures.append(self._submit(_run_chunk, (fn, chunk), {}, copy))
                yield from results
        finally:
            for future in futures:
                future.cancel()

    def imap_unordered(
        self,
        fn: Callable[..., Any],
        iterable: Iterable[Any],
        chunksize: int = 1,
        *,
        copy: bool | None = None,
        prefetch: int | None = None,
        timeout: float | None = None,
    ) -> Iterator[Any]:
        """``fn(item)`` for every item, yielded as they complete (any order).

        Lazily consumed like :meth:`map`, with at most ``prefetch`` chunks in flight. An exception
        raised by a task is raised by the iterator when that task completes; closing the
        iterator early cancels what has not started.
        """
        if chunksize < 1:
            raise ValueError(f"chunksize must be >= 1, got {chunksize}")
        window = self._window(prefetch)
        want_copy = self._copy_results if copy is None else bool(copy)
        items = ((item,) for item in iterable)
        chunks = _chunks(items, chunksize)
        done: deque[Future[Any]] = deque()
        ready = threading.Condition()

        def on_done(future: Future[Any]) -> None:
            with ready:
                done.append(future)
                ready.notify()

        outstanding: set[Future[Any]] = set()

        def submit_next(count: int) -> None:
            for chunk in itertools.islice(chunks, count):
                future = self._submit(_run_chunk, (fn, chunk), {}, want_copy)
                outstanding.add(future)
                future.add_done_callback(on_done)

        submit_next(window)
        return self._unordered(outstanding, done, ready, submit_next, timeout)

    def _unordered(
        self,
        outstanding: set[Future[Any]],
        done: deque[Future[Any]],
        ready: threading.Condition,
        submit_next: Callable[[int], None],
        timeout: float | None,
    ) -> Iterator[Any]:
        try:
            while outstanding:
                with ready:
                    deadline = None if timeout is None else time.monotonic() + timeout
                    while not done:
                        left = None if deadline is None else deadline - time.monotonic()
                        if left is not None and left <= 0:
                            raise TimeoutError(f"imap_unordered: no result within {timeout} s")
                        ready.wait(left)
                    future = done.popleft()
                outstanding.discard(future)
                if future.cancelled():
                    continue
                results = future.result()
                del future
                submit_next(1)
                yield from results
        finally:
            for future in outstanding:
                future.cancel()

    def _window(self, prefetch: int | None) -> int:
        if prefetch is None:
            return 2 * self._max_workers * self._prefetch
        if prefetch < 1:
            raise ValueError(f"prefetch must be >= 1, got {prefetch}")
        return prefetch

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop accepting tasks; finish the pending ones (or cancel them), stop the workers.

        ``wait=True`` returns once every worker has exited and every shared-memory object of
        the pool is removed. It never hangs on dead workers; it does wait for the tasks that
        are running (as ``ProcessPoolExecutor`` does). ``cancel_futures=True`` cancels the
        tasks that no worker has taken yet. Idempotent.
        """
        with self._lock:
            self._shutdown = True
            if cancel_futures:
                kept: deque[_Task] = deque()
                for task in self._pending:
                    if task.started or not task.future.cancel():
                        kept.append(task)
                self._pending = kept
        if wait and threading.current_thread() is not self._thread:
            self._thread.join()

    # -- dispatch (under self._lock) ------------------------------------------------------------

    def _eligible(self, worker: _Worker) -> bool:
        if worker.full or worker.stopping or len(worker.inflight) >= self._prefetch:
            return False
        return self._max_tasks is None or worker.sent < self._max_tasks

    def _dispatch_locked(self) -> None:
        pending = self._pending
        while pending and self._broken is None:
            best: _Worker | None = None
            for worker in self._workers:
                if self._eligible(worker) and (best is None or len(worker.inflight) < len(best.inflight)):
                    best = worker
                    if not worker.inflight:
                        break
            if best is None:
                return
            task = pending[0]
            if not task.started:
                if not task.future.set_running_or_notify_cancel():
                    pending.popleft()
                    continue
                task.started = True
            try:
                best.chan.send_nowait((task.id, task.stream, task.oob))
            except WouldBlock:
                if best.inflight:
                    best.full = True  # retried when this worker returns a result
                    continue
                # An idle worker's channel is empty: its heap is held (the worker keeps views
                # of earlier arguments) or the arguments are large: send them in segments.
                if not self._send_overflow_locked(best, task):
                    continue
            except RecordTooLarge:
                if not self._send_overflow_locked(best, task):
                    continue
            except MmipcError as exc:
                pending.popleft()
                self._fail_locked(task, exc)
                continue
            pending.popleft()
            # The stream stays with the task until it completes: a task queued on a worker
            # that dies before starting it is sent again to another worker.
            best.inflight.append(task)
            best.sent += 1

    def _send_overflow_locked(self, worker: _Worker, task: _Task) -> bool:
        """Send the task's stream and buffers in overflow segments; False: failed (reported)."""
        assert task.stream is not None
        parts: list[tuple[str, int]] = []
        try:
            for data in [task.stream, *(b.raw() for b in task.oob)]:
                name = f"{self._overflow_prefix}p{next(self._segment_ids):x}"
                parts.append(_write_segment(name, data))
            worker.chan.send_nowait((task.id, None, parts))
        except (OSError, MmipcError) as exc:
            for name, _size in parts:
                try:
                    os.unlink(os.path.join(_SHM_DIR, name))
                except OSError:
                    pass
            self._pending.popleft()
            self._fail_locked(
                task,
                exc
                if isinstance(exc, MmipcError)
                else MemoryError(
                    f"task {task.id} ({task.fn_name}): its arguments fit neither the task channel nor "
                    f"/dev/shm: {exc}"
                ),
            )
            return False
        self._tasks_overflowed += 1
        return True

    def _fail_locked(self, task: _Task, error: BaseException) -> None:
        self._failed += 1
        if not task.future.done():
            task.future.set_exception(error)

    # -- workers --------------------------------------------------------------------------------

    def _start_worker_locked(self) -> _Worker:
        worker_id = next(self._worker_ids)
        chan = Channel.create(
            self._task_capacity,
            heap_size=self._task_heap_size,
            copy_threshold=self._copy_threshold,
        )
        self._shm_markers.extend(_channel_markers(chan))
        try:
            process = self._ctx.Process(  # type: ignore[attr-defined]
                target=_worker_main,
                args=(
                    worker_id,
                    chan,
                    self._result_chan,
                    self._initializer,
                    self._initargs,
                    self._max_tasks,
                    os.getpid(),
                    self._overflow_prefix,
                    self._copy_threshold,
                ),
                name=f"mmipc-pool-worker-{worker_id}",
            )
            process.start()
        except BaseException:
            _destroy_channel(chan)
            raise
        worker = _Worker(worker_id, process, chan)
        self._workers.append(worker)
        self._by_id[worker_id] = worker
        self._started += 1
        return worker

    def _retire_locked(self, worker: _Worker) -> None:
        """Forget an exited worker: its task channel, and overflow segments it never sent.

        Called after the results it published were drained (those segments are mapped and
        unlinked already): what is left under its prefix was being written when it died.
        """
        self._workers.remove(worker)
        del self._by_id[worker.id]
        _destroy_channel(worker.chan)
        self._remove_overflow(f"{self._overflow_prefix}{worker.id:x}-")

    # -- the result thread ----------------------------------------------------------------------

    def _result_loop(self) -> None:
        try:
            self._run_results()
        except BaseException as exc:  # a bug: never leave callers waiting forever
            detail = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
            self._break(f"the result thread of the pool failed: {exc!r}\n{detail}")
        finally:
            self._teardown()

    def _run_results(self) -> None:
        chan = self._result_chan
        last_check = time.monotonic()
        while True:
            try:
                messages = chan.recv_many(256, timeout=_POLL)
            except WaitTimeout:
                messages = []
            except (SerializationError, EndOfStream, MmipcError):
                messages = []  # cannot happen with the pool's envelopes; nothing to attribute
            for message in messages:
                self._handle(message)
            del messages
            now = time.monotonic()
            if now - last_check >= _POLL:
                last_check = now
                self._check_workers()
            with self._lock:
                if self._broken is not None:
                    return
                if self._shutdown and not self._pending and not any(w.inflight for w in self._workers):
                    return

    def _handle(self, message: tuple[Any, ...]) -> None:
        worker_id, task_id, status, stream, buffers = message
        worker = self._by_id.get(worker_id)
        if status == _READY:
            if worker is not None:
                worker.ready = True
            return
        if status == _INIT_FAILED:
            self._break(f"the initializer of worker {worker_id} failed", stream)
            return
        with self._lock:
            task: _Task | None = None
            if worker is not None and worker.inflight:
                if worker.inflight[0].id == task_id:
                    task = worker.inflight.popleft()
                else:  # never expected; find it anyway rather than mis-attribute
                    for candidate in worker.inflight:
                        if candidate.id == task_id:
                            task = candidate
                            worker.inflight.remove(candidate)
                            break
            if task is None or worker is None:
                return
            worker.full = False
            task.stream = None
            task.oob = []
            if status & ~_OVERFLOW == _OK:
                self._completed += 1
            else:
                self._failed += 1
            self._dispatch_locked()
        self._deliver(task, status, stream, buffers)
        del task, stream, buffers
        if self._max_tasks is not None and worker.sent >= self._max_tasks and not worker.inflight:
            self._replace_finished(worker)

    def _deliver(self, task: _Task, status: int, stream: Any, buffers: list[Any]) -> None:
        future = task.future
        try:
            if status & _OVERFLOW:
                stream, buffers = self._map_overflow(buffers)
                status &= ~_OVERFLOW
            if task.copy and buffers:
                buffers = [bytearray(b) for b in buffers]
            value = pickle.loads(stream, buffers=buffers)
        except Exception as exc:
            error = SerializationError(
                f"result of task {task.id} ({task.fn_name}) cannot be rebuilt: {exc!r}"
            )
            error.__cause__ = exc
            if status & ~_OVERFLOW == _OK:
                with self._lock:
                    self._completed -= 1
                    self._failed += 1
            if not future.done():
                future.set_exception(error)
            return
        if status == _OK:
            if not future.done():
                future.set_result(value)
            return
        remote, tb = value
        remote.__cause__ = _RemoteTraceback(tb)
        if not future.done():
            future.set_exception(remote)

    def _map_overflow(self, parts: list[tuple[str, int]]) -> tuple[Any, list[Any]]:
        views = _map_segments(parts, self._overflow_prefix)
        with self._lock:
            self._overflowed += 1
        return views[0], views[1:]

    def _replace_finished(self, worker: _Worker) -> None:
        """A worker that ran its ``max_tasks_per_child`` tasks exits by itself: replace it now."""
        worker.process.join(_JOIN_TIMEOUT)
        if worker.process.exitcode is None:
            return  # left to the liveness check
        self._drain()
        with self._lock:
            if worker.id not in self._by_id:
                return
            self._retire_locked(worker)
            if worker.inflight:
                self._died += 1
                self._fail_dead_locked(worker)
            if self._broken is None and (not self._shutdown or self._pending):
                self._start_worker_locked()
            self._dispatch_locked()

    def _drain(self) -> None:
        """Handle every result already published (a dead worker's last results come first)."""
        while True:
            try:
                messages = self._result_chan.recv_many(256, timeout=0)
            except (WaitTimeout, WouldBlock):
                return
            except MmipcError:
                continue
            for message in messages:
                self._handle(message)

    def _check_workers(self) -> None:
        dead = [w for w in list(self._workers) if w.process.exitcode is not None]
        if not dead:
            return
        self._drain()
        with self._lock:
            for worker in dead:
                if worker.id not in self._by_id:
                    continue
                self._retire_locked(worker)
                worker.process.join(0)
                clean_exit = worker.process.exitcode == 0 and not worker.inflight
                if not clean_exit:
                    self._died += 1
                if not worker.ready and not clean_exit:
                    self._pending.extendleft(reversed(worker.inflight))  # fail with the rest
                    worker.inflight.clear()
                    self._break_locked(
                        f"worker {worker.id} (pid {worker.process.pid}) "
                        f"{_describe_exit(worker.process.exitcode)} before it was ready"
                    )
                    return
                self._fail_dead_locked(worker)
                if self._broken is None and (not self._shutdown or self._pending):
                    self._start_worker_locked()
            self._dispatch_locked()

    def _fail_dead_locked(self, worker: _Worker) -> None:
        if not worker.inflight:
            return
        running = worker.inflight.popleft()
        pid, code = worker.process.pid, worker.process.exitcode
        self._fail_locked(
            running,
            WorkerDied(
                f"worker {worker.id} (pid {pid}) {_describe_exit(code)} while running task "
                f"{running.id} ({running.fn_name}); the pool replaced it",
                pid=pid or 0,
                exitcode=code,
            ),
        )
        # Tasks it had not started go back to the front of the queue, in order. Their
        # arguments were released when they were sent: they must be pickled again.
        self._pending.extendleft(reversed(worker.inflight))
        worker.inflight.clear()

    def _break(self, message: str, remote_tb: Any = None) -> None:
        if isinstance(remote_tb, (bytes, bytearray, memoryview)):
            try:
                remote_tb = pickle.loads(remote_tb)
            except Exception:
                remote_tb = None
        if isinstance(remote_tb, str):
            message = f"{message}:\n{remote_tb}"
        with self._lock:
            self._break_locked(message)

    def _break_locked(self, message: str) -> None:
        if self._broken is not None:
            return
        self._broken = message
        tasks = list(self._pending)
        self._pending.clear()
        for worker in self._workers:
            tasks.extend(worker.inflight)
            worker.inflight.clear()
        for task in tasks:
            if not task.future.done():
                if not task.started:
                    task.future.set_running_or_notify_cancel()
                if not task.future.done():
                    self._fail_locked(task, BrokenPool(message))

    # -- teardown -------------------------------------------------------------------------------

    def _teardown(self) -> None:
        """Stop every worker (bounded: stop message, join, terminate, kill) and remove all memory."""
        with self._lock:
            self._shutdown = True
            workers = list(self._workers)
            for worker in workers:
                worker.stopping = True
                try:
                    worker.chan.send_nowait(None)
                except Exception:
                    pass
        deadline = time.monotonic() + _JOIN_TIMEOUT
        for worker in workers:
            worker.process.join(max(0.0, deadline - time.monotonic()))
        for worker in workers:
            if worker.process.exitcode is None:
                worker.process.terminate()
        for worker in workers:
            worker.process.join(1.0)
            if worker.process.exitcode is None:
                worker.process.kill()
                worker.process.join(5.0)
        with self._lock:
            for worker in workers:
                if worker.id in self._by_id:
                    self._retire_locked(worker)
                if worker.process.exitcode is not None:
                    worker.process.close()
            leftover = list(self._pending)
            self._pending.clear()
            for worker in workers:
                leftover.extend(worker.inflight)
                worker.inflight.clear()
            for task in leftover:
                if not task.future.done() and not task.future.cancel():
                    self._fail_locked(task, BrokenPool("the pool was shut down before the task ran"))
        _destroy_channel(self._result_chan)
        self._remove_overflow(self._overflow_prefix)
        # Until here the at-exit hook joins this pool (shutdown(wait=False) then exit is fine).
        _live_pools.discard(self)

    def _remove_overflow(self, prefix: str) -> None:
        try:
            names = os.listdir(_SHM_DIR)
        except OSError:
            return
        for name in names:
            if name.startswith(prefix):
                try:
                    os.unlink(os.path.join(_SHM_DIR, name))
                except OSError:
                    pass


def _write_segment(name: str, data: Any) -> tuple[str, int]:
    """Copy ``data`` into a new POSIX shared-memory segment ``name`` (an overflow part)."""
    view = memoryview(data).cast("B")
    path = os.path.join(_SHM_DIR, name)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        size = view.nbytes
        if size:
            os.posix_fallocate(fd, 0, size)  # a full /dev/shm: an error now, not SIGBUS later
            with mmap.mmap(fd, size) as mm:
                mm[:] = view
    except BaseException:
        os.unlink(path)
        raise
    finally:
        os.close(fd)
    return name, size


def _map_segments(parts: list[tuple[str, int]], prefix: str) -> list[Any]:
    """Map overflow segments read-only and unlink them: their memory lives as long as the views."""
    views: list[Any] = []
    for name, size in parts:
        if not name.startswith(prefix) or "/" in name:
            raise SerializationError(f"overflow segment {name!r} does not belong to this pool")
        path = os.path.join(_SHM_DIR, name)
        fd = os.open(path, os.O_RDONLY)
        try:
            os.unlink(path)
            views.append(memoryview(mmap.mmap(fd, size, prot=mmap.PROT_READ)) if size else memoryview(b""))
        finally:
            os.close(fd)
    return views


def _channel_markers(chan: Channel) -> list[str]:
    regions = [chan._ring._region, chan._heap_region]
    return [f"{region.nonce:016x}" for region in regions if region is not None]


def _destroy_channel(chan: Channel) -> None:
    try:
        if not chan.closed:
            try:
                chan.unlink()
            except MmipcError:
                pass
    finally:
        chan.close()


def _chunks(items: Iterator[tuple[Any, ...]], size: int) -> Iterator[list[tuple[Any, ...]]]:
    while True:
        chunk = list(itertools.islice(items, size))
        if not chunk:
            return
        yield chunk


def _run_chunk(fn: Callable[..., Any], chunk: list[tuple[Any, ...]]) -> list[Any]:
    return [fn(*args) for args in chunk]


# -- the worker process -----------------------------------------------------------------------


def _parent_alive(pid: int) -> bool:
    """Whether the pool's process lives.

    multiprocessing's parent sentinel (a pipe whose other end the pool's process holds) is the
    reliable test under fork, spawn and forkserver alike: a killed pool process that is still a
    zombie passes ``kill(pid, 0)``, and under forkserver the workers' parent is the fork server,
    which the workers themselves keep alive.
    """
    parent = multiprocessing.parent_process()
    if parent is not None:
        return parent.is_alive()
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _worker_main(
    worker_id: int,
    tasks: Channel,
    results: Channel,
    initializer: Callable[..., object] | None,
    initargs: tuple[Any, ...],
    max_tasks: int | None,
    parent_pid: int,
    overflow_prefix: str,
    threshold: int,
) -> None:
    sender = _ResultSender(worker_id, results, parent_pid, overflow_prefix, threshold)
    if initializer is not None:
        try:
            initializer(*initargs)
        except BaseException as exc:
            tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
            sender.send_raw((worker_id, -1, _INIT_FAILED, pickle.dumps(tb), []))
            os._exit(1)
    sender.send_raw((worker_id, -1, _READY, b"", []))
    done = 0
    while max_tasks is None or done < max_tasks:
        try:
            message = tasks.recv(timeout=_SEND_RETRY)
        except WaitTimeout:
            if not _parent_alive(parent_pid):
                return
            continue
        except EndOfStream:
            return
        if message is None:
            return
        task_id, stream, buffers = message
        del message
        try:
            if stream is None:  # arguments too large for the task channel: overflow segments
                views = _map_segments(buffers, overflow_prefix)
                stream, buffers = views[0], views[1:]
                del views
            fn, args, kwargs = pickle.loads(stream, buffers=buffers)
            del stream, buffers
            value = fn(*args, **kwargs)
            del fn, args, kwargs
            status = _OK
        except BaseException as exc:
            value = exc
            status = _ERROR
        sender.send(task_id, status, value)
        del value
        done += 1


class _ResultSender:
    """The worker's side of the result channel: inner pickle, heap, overflow segments."""

    def __init__(self, worker_id: int, chan: Channel, parent_pid: int, prefix: str, threshold: int) -> None:
        self.worker_id = worker_id
        self.chan = chan
        self.parent_pid = parent_pid
        self.prefix = f"{prefix}{worker_id:x}-"
        self.threshold = threshold
        self.overflows = 0
        self.oob: list[pickle.PickleBuffer] = []
        # After the heap was found full, wait only briefly for it next time: a caller that
        # holds its results keeps it full, and every result would pay the full wait.
        self.heap_wait = _HEAP_WAIT

    def _callback(self, buffer: pickle.PickleBuffer) -> bool:
        if buffer.raw().nbytes < self.threshold:
            return True
        self.oob.append(buffer)
        return False

    def _pickle(self, status: int, value: Any) -> bytes:
        if status == _OK:
            return pickle.dumps(value, 5, buffer_callback=self._callback)
        tb = "".join(traceback.format_exception(type(value), value, value.__traceback__))
        value.__traceback__ = None
        try:
            return pickle.dumps((value, tb), 5, buffer_callback=self._callback)
        except Exception as exc:
            del self.oob[:]
            substitute = RuntimeError(f"{value!r} (the exception could not be pickled: {exc!r})")
            return pickle.dumps((substitute, tb), 5)

    def send(self, task_id: int, status: int, value: Any) -> None:
        self.oob = []
        try:
            stream = self._pickle(status, value)
        except Exception as exc:
            tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
            error = SerializationError(f"the result of task {task_id} cannot be pickled: {exc!r}")
            stream = pickle.dumps((error, tb), 5)
            status = _ERROR
            self.oob = []
        oob, self.oob = self.oob, []
        message = (self.worker_id, task_id, status, stream, oob)
        while True:
            try:
                self.chan.send(message, timeout=self.heap_wait if oob else _SEND_RETRY)
                if oob:
                    self.heap_wait = _HEAP_WAIT
                return
            except (HeapExhausted, RecordTooLarge):
                self.heap_wait = _HEAP_WAIT_AGAIN
                break
            except WaitTimeout:
                if not _parent_alive(self.parent_pid):
                    os._exit(0)
        # The heap stayed full (the caller holds earlier results) or the result is larger than
        # the channel: one shared-memory segment per part, mapped and unlinked by the parent.
        parts: list[tuple[str, int]] = []
        try:
            for data in [stream, *(buffer.raw() for buffer in oob)]:
                parts.append(_write_segment(f"{self.prefix}{self.overflows:x}", data))
                self.overflows += 1
        except OSError as exc:
            for name, _size in parts:
                os.unlink(os.path.join(_SHM_DIR, name))
            size = len(stream) + sum(buffer.raw().nbytes for buffer in oob)
            no_room = MemoryError(
                f"the result of task {task_id} ({size} bytes) does not fit the pool's result heap "
                f"and no overflow segment could be made: {exc}"
            )
            self.send_raw((self.worker_id, task_id, _ERROR, pickle.dumps((no_room, "")), []))
            return
        del oob, message
        self.send_raw((self.worker_id, task_id, status | _OVERFLOW, b"", parts))

    def send_raw(self, message: tuple[Any, ...]) -> None:
        while True:
            try:
                self.chan.send(message, timeout=_SEND_RETRY)
                return
            except WaitTimeout:
                if not _parent_alive(self.parent_pid):
                    os._exit(0)
