"""Pool: a concurrent.futures Executor over shared memory (real worker processes)."""

from __future__ import annotations

import collections
import gc
import itertools
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import CancelledError, Future
from typing import Any

import numpy as np
import pytest

import _poolchild as C
import mmipc
from mmipc._pool import _RemoteTraceback

pytestmark = pytest.mark.timeout(90)

MiB = 1 << 20


def pool_entries(pool: mmipc.Pool) -> list[str]:
    """The /dev/shm entries that belong to ``pool`` (its channels' semaphores, overflow segments)."""
    return sorted(e for e in os.listdir("/dev/shm") if any(m in e for m in pool._shm_markers))


def assert_clean(pool: mmipc.Pool) -> None:
    """After shutdown: no worker process left, nothing of the pool in /dev/shm."""
    assert pool._thread.is_alive() is False
    assert all(w.process._closed or w.process.exitcode is not None for w in pool._workers)
    assert pool._workers == []
    assert multiprocessing.active_children() == []
    assert pool_entries(pool) == []


@pytest.fixture
def make_pool() -> Iterator[Callable[..., mmipc.Pool]]:
    made: list[mmipc.Pool] = []

    def make(*args: Any, **kwargs: Any) -> mmipc.Pool:
        # A smaller result heap than the default: tests need little, and creating it is cheaper.
        kwargs.setdefault("result_heap_size", 32 * MiB)
        pool = mmipc.Pool(*args, **kwargs)
        made.append(pool)
        return pool

    yield make
    for pool in made:
        pool.shutdown(wait=True, cancel_futures=True)
    for pool in made:
        assert_clean(pool)


def wait_for_pid(path: str) -> int:
    C.wait_until_file(path)
    with open(path) as f:
        return int(f.read())


# -- results ------------------------------------------------------------------------------------


KINDS = [
    "int",
    "none",
    "str",
    "dict",
    "bytes_1m",
    "bytes_8m",
    "bytearray_1m",
    "small_array",
    "array_1m",
    "empty_array",
    "array_2d",
    "mixed",
]


def _assert_same(got: Any, want: Any) -> None:
    if isinstance(want, np.ndarray):
        assert isinstance(got, np.ndarray)
        assert got.dtype == want.dtype and got.shape == want.shape
        assert np.array_equal(got, want)
    elif isinstance(want, dict):
        assert isinstance(got, dict) and got.keys() == want.keys()
        for key in want:
            _assert_same(got[key], want[key])
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want)
        for a, b in zip(got, want, strict=True):
            _assert_same(a, b)
    else:
        assert type(got) is type(want)
        assert got == want


def test_results_of_many_kinds(make_pool: Callable[..., mmipc.Pool], mp_context: Any) -> None:
    pool = make_pool(2, mp_context=mp_context, result_capacity=4 * MiB)
    futures = {kind: pool.submit(C.many_kinds, kind) for kind in KINDS}
    for kind, future in futures.items():
        _assert_same(future.result(timeout=30), C.many_kinds(kind))
    # Large buffers arrive as read-only views of shared memory; small ones as owned objects.
    assert futures["array_1m"].result().flags.writeable is False
    assert futures["mixed"].result()["x"].flags.writeable is False
    assert futures["small_array"].result().flags.writeable is True
    # pickle rebuilds a bytearray by copying its out-of-band buffer (an owned, writable object).
    assert isinstance(futures["bytearray_1m"].result(), bytearray)
    stats = pool.stats()
    assert stats.tasks_completed == len(KINDS) and stats.tasks_failed == 0
    assert stats.results_overflowed == 1  # bytes_8m: larger than the 4 MiB result ring


def test_copy_results_are_owned_and_writable(make_pool: Callable[..., mmipc.Pool]) -> None:
    pool = make_pool(1, copy_results=True)
    arr = pool.submit(C.pattern, 1 << 17, 5).result()
    assert arr.flags.writeable is True
    arr[0] = 7  # owned: writing is allowed and the pool's memory is untouched
    assert np.array_equal(arr[1:], C.pattern(1 << 17, 5)[1:])
    # copy= on map and imap_unordered overrides the pool's default.
    view_pool = make_pool(1)
    (view,) = view_pool.map(C.pattern, [1 << 17], [6])
    (copied,) = view_pool.map(C.pattern, [1 << 17], [6], copy=True)
    (copied2,) = view_pool.imap_unordered(C.pattern_128k, [6], copy=True)
    assert view.flags.writeable is False and copied.flags.writeable is True and copied2.flags.writeable
    assert np.array_equal(view, copied)


def test_arguments_travel_out_of_band(make_pool: Callable[..., mmipc.Pool]) -> None:
    pool = make_pool(1)
    arr = C.pattern(1 << 18, 9)  # 2 MiB: through the task channel's heap
    total, writable = pool.submit(C.sum_array, arr).result()
    assert total == float(arr.sum()) and writable is False
    small = np.arange(10, dtype=np.float64)
    assert pool.submit(C.sum_array, small).result() == (45.0, True)


def test_results_reclaimed_when_dropped(make_pool: Callable[..., mmipc.Pool]) -> None:
    pool = make_pool(2, result_heap_size=8 * MiB)
    for _ in range(3):  # 3 x 6 MiB through an 8 MiB heap: only possible if dropped results free it
        results = [pool.submit(C.pattern, 1 << 17, k).result() for k in range(6)]
        for k, arr in enumerate(results):
            assert np.array_equal(arr, C.pattern(1 << 17, k))
        del results, arr
        gc.collect()
    assert pool.stats().results_overflowed == 0


def test_holding_many_large_results_while_more_arrive(make_pool: Callable[..., mmipc.Pool]) -> None:
    """The caller keeps every result; the heap (8 MiB) fills and later results keep flowing."""
    pool = make_pool(2, result_heap_size=8 * MiB)
    held = [pool.submit(C.pattern, 1 << 17, k).result(timeout=30) for k in range(24)]  # 24 MiB
    for k, arr in enumerate(held):
        assert arr.flags.writeable is False
        assert np.array_equal(arr, C.pattern(1 << 17, k))
    stats = pool.stats()
    assert stats.tasks_completed == 24
    assert 24 - 8 <= stats.results_overflowed < 24
    # Overflow segments are unlinked as soon as they arrive: held memory has no name left.
    assert [e for e in os.listdir("/dev/shm") if e.startswith(pool._overflow_prefix)] == []
    # Dropping everything returns the heap: new results fit again without overflowing.
    del held, arr
    gc.collect()
    before = pool.stats().results_overflowed
    again = [pool.submit(C.pattern, 1 << 17, k).result() for k in range(5)]
    assert pool.stats().results_overflowed == before
    assert np.array_equal(again[4], C.pattern(1 << 17, 4))


def test_map_keeps_order_and_chunks(make_pool: Callable[..., mmipc.Pool]) -> None:
    pool = make_pool(2)
    assert list(pool.map(C.square, range(100))) == [x * x for x in range(100)]
    assert list(pool.map(C.square, range(100), chunksize=7)) == [x * x for x in range(100)]
    assert list(pool.map(C.add, range(10), range(100, 130))) == [x + 100 + x for x in range(10)]
    assert list(pool.map(C.square, [])) == []
    with pytest.raises(ValueError, match="chunksize"):
        pool.map(C.square, range(3), chunksize=0)


def test_map_consumes_its_input_lazily(make_pool: Callable[..., mmipc.Pool]) -> None:
    pool = make_pool(2, prefetch=2)
    consumed = itertools.count()

    def endless() -> Iterator[int]:
        for k in itertools.count():
            next(consumed)
            yield k

    results = pool.map(C.square, endless(), chunksize=3, prefetch=4)
    first = list(itertools.islice(results, 10))
    assert first == [k * k for k in range(10)]
    # 10 results = 4 chunks consumed; at most 4 more chunks (12 items) are in flight ahead.
    assert next(consumed) <= 4 * 3 + 4 * 3
    results.close()  # cancels the rest


def test_imap_unordered(make_pool: Callable[..., mmipc.Pool]) -> None:
    pool = make_pool(2)
    assert sorted(pool.imap_unordered(C.square, range(50))) == [x * x for x in range(50)]
    assert sorted(pool.imap_unordered(C.square, range(50), chunksize=8)) == [x * x for x in range(50)]
    assert list(pool.imap_unordered(C.square, iter([]))) == []
    with pytest.raises(ValueError, match="task refuses 3"):
        list(pool.imap_unordered(C.raise_value_error, range(6)))


# -- exceptions -----------------------------------------------------------------------------------


def test_exception_carries_remote_traceback(make_pool: Callable[..., mmipc.Pool], mp_context: Any) -> None:
    pool = make_pool(1, mp_context=mp_context)
    future = pool.submit(C.raise_value_error, 3)
    with pytest.raises(ValueError) as info:
        future.result(timeout=30)
    assert info.value.args == ("task refuses 3",)
    cause = info.value.__cause__
    assert isinstance(cause, _RemoteTraceback)
    assert "in raise_value_error" in cause.tb
    assert 'raise ValueError(f"task refuses {x}")' in cause.tb
    assert cause.tb.rstrip().endswith("ValueError: task refuses 3")
    # map raises at the failing item, after yielding the ones before it.
    results = pool.map(C.raise_value_error, range(6))
    assert [next(results) for _ in range(3)] == [0, 1, 2]
    with pytest.raises(ValueError, match="task refuses 3"):
        next(results)
    assert pool.submit(C.square, 4).result() == 16  # the worker survived


def test_pickling_errors_are_reported_on_the_future(make_pool: Callable[..., mmipc.Pool]) -> None:
    pool = make_pool(1)
    bad_arg = pool.submit(C.identity, threading.Lock())
    with pytest.raises(mmipc.SerializationError, match="cannot pickle task"):
        bad_arg.result()
    bad_fn = pool.submit(lambda: 1)
    with pytest.raises(mmipc.SerializationError):
        bad_fn.result()
    bad_result = pool.submit(C.return_unpicklable)
    with pytest.raises(mmipc.SerializationError, match="cannot be pickled"):
        bad_result.result(timeout=30)
    bad_exception = pool.submit(C.raise_unpicklable)
    with pytest.raises(RuntimeError, match="could not be pickled") as info:
        bad_exception.result(timeout=30)
    assert "Unpicklable: cannot travel" in str(info.value.__cause__)
    bad_load = pool.submit(C.return_loads_badly)
    with pytest.raises(mmipc.SerializationError, match="refuses to be rebuilt"):
        bad_load.result(timeout=30)
    assert pool.submit(C.square, 5).result() == 25
    stats = pool.stats()
    assert (stats.tasks_failed, stats.workers_died, stats.workers_started) == (5, 0, 1)


# -- crashes ---------------------------------------------------------------------------------------


@pytest.mark.crash
def test_worker_sigkill_mid_task(
    make_pool: Callable[..., mmipc.Pool], mp_context: Any, tmp_path: Any
) -> None:
    pool = make_pool(1, mp_context=mp_context, prefetch=2)
    flag = str(tmp_path / "pid")
    victim = pool.submit(C.announce_and_sleep, flag)
    queued = pool.submit(C.square, 6)  # dispatched to the same worker, behind the victim
    others = [pool.submit(C.square, k) for k in range(20)]
    pid = wait_for_pid(flag)
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(mmipc.WorkerDied) as info:
        victim.result(timeout=30)
    error = info.value
    assert error.pid == pid and error.exitcode == -signal.SIGKILL and error.signal_name == "SIGKILL"
    assert f"worker 0 (pid {pid}) was killed by SIGKILL" in str(error)
    assert "announce_and_sleep" in str(error)
    assert queued.result(timeout=30) == 36  # it had not started: it ran on the replacement
    assert [f.result(timeout=30) for f in others] == [k * k for k in range(20)]
    assert pool.submit(C.pid_of_worker).result(timeout=30) != pid
    stats = pool.stats()
    assert (stats.workers_died, stats.workers_started, stats.tasks_failed) == (1, 2, 1)


@pytest.mark.crash
def test_worker_sigkill_with_two_workers(make_pool: Callable[..., mmipc.Pool], tmp_path: Any) -> None:
    pool = make_pool(2)
    flag = str(tmp_path / "pid")
    victim = pool.submit(C.announce_and_sleep, flag)
    pid = wait_for_pid(flag)
    results = pool.map(C.square, range(200), chunksize=5)
    os.kill(pid, signal.SIGKILL)
    assert list(results) == [k * k for k in range(200)]
    with pytest.raises(mmipc.WorkerDied, match="SIGKILL"):
        victim.result(timeout=30)


@pytest.mark.crash
def test_segfault_in_task(make_pool: Callable[..., mmipc.Pool]) -> None:
    pool = make_pool(1)
    with pytest.raises(mmipc.WorkerDied, match="killed by SIGSEGV") as info:
        pool.submit(C.segfault).result(timeout=30)
    assert info.value.signal_name == "SIGSEGV"
    assert pool.submit(C.square, 8).result(timeout=30) == 64


@pytest.mark.crash
def test_os_exit_in_task(make_pool: Callable[..., mmipc.Pool]) -> None:
    pool = make_pool(1)
    with pytest.raises(mmipc.WorkerDied, match="exited with code 3 while running task") as info:
        pool.submit(C.exit_now, 3).result(timeout=30)
    assert (info.value.exitcode, info.value.signal_name) == (3, None)
    assert pool.submit(C.square, 9).result(timeout=30) == 81


def test_max_tasks_per_child(make_pool: Callable[..., mmipc.Pool], mp_context: Any) -> None:
    pool = make_pool(1, mp_context=mp_context, max_tasks_per_child=2)
    pids = [pool.submit(C.pid_of_worker).result(timeout=30) for _ in range(7)]
    assert sorted(collections.Counter(pids).values()) == [1, 2, 2, 2]
    assert pids[0] == pids[1] != pids[2] == pids[3] != pids[4] == pids[5] != pids[6]
    stats = pool.stats()
    assert (stats.workers_started, stats.workers_died, stats.tasks_completed) == (4, 0, 7)
    if mp_context.get_start_method() != "fork":
        return  # the bulk part starts 10 more workers: cheap only with fork
    # In bulk, too: every task completes and no worker runs more than two.
    counts = collections.Counter(pool.map(C.pid_of_worker, range(20)))
    assert sum(counts.values()) == 20 and max(counts.values()) <= 2


# -- cancellation and shutdown ---------------------------------------------------------------------


def test_cancel_pending_tasks(make_pool: Callable[..., mmipc.Pool], tmp_path: Any) -> None:
    pool = make_pool(1, prefetch=2)
    release = str(tmp_path / "go")
    blocker = pool.submit(C.wait_for_file, release)
    second = pool.submit(C.square, 2)  # in the worker's channel: running, cannot be cancelled
    rest = [pool.submit(C.square, k) for k in range(10)]
    assert second.cancel() is False
    assert [f.cancel() for f in rest[5:]] == [True] * 5
    open(release, "w").close()
    assert blocker.result(timeout=30) > 0 and second.result(timeout=30) == 4
    assert [f.result(timeout=30) for f in rest[:5]] == [k * k for k in range(5)]
    for future in rest[5:]:
        with pytest.raises(CancelledError):
            future.result()


def test_shutdown_finishes_pending_work(make_pool: Callable[..., mmipc.Pool], mp_context: Any) -> None:
    pool = make_pool(2, mp_context=mp_context)
    futures = [pool.submit(C.sleep_then, 0.01, k) for k in range(30)]
    pool.shutdown(wait=True)
    assert [f.result(timeout=0) for f in futures] == list(range(30))
    assert_clean(pool)
    with pytest.raises(RuntimeError, match="after shutdown"):
        pool.submit(C.square, 1)
    pool.shutdown()  # idempotent


def test_shutdown_cancel_futures(make_pool: Callable[..., mmipc.Pool], tmp_path: Any) -> None:
    pool = make_pool(1, prefetch=1)
    release = str(tmp_path / "go")
    blocker = pool.submit(C.wait_for_file, release)
    rest = [pool.submit(C.square, k) for k in range(10)]
    pool.shutdown(wait=False, cancel_futures=True)
    assert all(f.cancelled() for f in rest)
    open(release, "w").close()
    assert blocker.result(timeout=30) > 0
    pool.shutdown(wait=True)
    assert_clean(pool)


def test_shutdown_without_wait_then_exit_finishes(make_pool: Callable[..., mmipc.Pool]) -> None:
    pool = make_pool(2)
    futures = [pool.submit(C.sleep_then, 0.005, k) for k in range(20)]
    pool.shutdown(wait=False)
    assert [f.result(timeout=30) for f in futures] == list(range(20))
    pool._thread.join(30)
    assert_clean(pool)


@pytest.mark.crash
def test_shutdown_with_dead_workers_does_not_hang(
    make_pool: Callable[..., mmipc.Pool], tmp_path: Any
) -> None:
    pool = make_pool(2)
    flag = str(tmp_path / "pid")
    victim = pool.submit(C.announce_and_sleep, flag)
    pid = wait_for_pid(flag)
    for worker in list(pool._workers):
        os.kill(worker.process.pid, signal.SIGKILL)
    pool.shutdown(wait=True)  # a hang here is caught by the test's timeout
    with pytest.raises(mmipc.WorkerDied):
        victim.result(timeout=0)
    assert victim.exception().pid == pid  # type: ignore[union-attr]
    assert_clean(pool)


def test_context_manager_and_repr(mp_context: Any) -> None:
    with mmipc.Pool(2, mp_context=mp_context) as pool:
        text = repr(pool)
        assert text.startswith("<mmipc.Pool running workers=2/2 start_method=")
        assert mp_context.get_start_method() in text
        assert pool.submit(C.add, 2, y=3).result(timeout=30) == 5
        assert pool.max_workers == 2
    assert repr(pool).startswith("<mmipc.Pool shut down")
    assert_clean(pool)


# -- initializer, threads, arguments ---------------------------------------------------------------


def test_initializer(make_pool: Callable[..., mmipc.Pool], mp_context: Any) -> None:
    pool = make_pool(2, mp_context=mp_context, initializer=C.init_global, initargs=({"k": 1},))
    assert list(pool.map(C.read_global, range(4))) == [{"k": 1}] * 4


def test_failing_initializer_breaks_the_pool(make_pool: Callable[..., mmipc.Pool], tmp_path: Any) -> None:
    go = str(tmp_path / "go")
    pool = make_pool(1, initializer=C.init_fails_when, initargs=(go, "no database"))
    future = pool.submit(C.square, 3)  # queued before the initializer fails
    open(go, "w").close()
    with pytest.raises(mmipc.BrokenPool, match="initializer of worker 0 failed") as info:
        future.result(timeout=30)
    assert "RuntimeError: no database" in str(info.value)
    pool._thread.join(30)
    with pytest.raises(mmipc.BrokenPool):
        pool.submit(C.square, 1)
    assert pool.stats().broken is True
    assert repr(pool).startswith("<mmipc.Pool broken")


def test_submit_from_many_threads(make_pool: Callable[..., mmipc.Pool]) -> None:
    pool = make_pool(2)
    out: dict[int, list[Future[int]]] = {}

    def client(k: int) -> None:
        out[k] = [pool.submit(C.add, k * 1000, j) for j in range(200)]

    threads = [threading.Thread(target=client, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for k in range(4):
        assert [f.result(timeout=30) for f in out[k]] == [k * 1000 + j for j in range(200)]
    assert pool.stats().tasks_completed == 800


def test_done_callback_may_submit(make_pool: Callable[..., mmipc.Pool]) -> None:
    pool = make_pool(1)
    chained: list[Future[int]] = []
    first = pool.submit(C.square, 3)
    first.add_done_callback(lambda f: chained.append(pool.submit(C.square, f.result())))
    assert first.result(timeout=30) == 9
    deadline = time.monotonic() + 30
    while not chained and time.monotonic() < deadline:
        time.sleep(0.001)
    assert chained[0].result(timeout=30) == 81


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="max_workers"):
        mmipc.Pool(0)
    with pytest.raises(ValueError, match="max_tasks_per_child"):
        mmipc.Pool(1, max_tasks_per_child=0)
    with pytest.raises(ValueError, match="prefetch"):
        mmipc.Pool(1, prefetch=0)
    with pytest.raises(TypeError, match="initializer"):
        mmipc.Pool(1, initializer=3)  # type: ignore[arg-type]


def test_map_timeout(make_pool: Callable[..., mmipc.Pool], tmp_path: Any) -> None:
    pool = make_pool(1)
    results = pool.map(C.wait_for_file, [str(tmp_path / "never")], timeout=0.2)
    with pytest.raises(TimeoutError, match=r"map: 0 results in 0.2 s, the next one \(wait_for_file\)"):
        next(results)
    # Unblock the worker so that the fixture's shutdown is quick.
    open(tmp_path / "never", "w").close()


def test_errors_pickle() -> None:
    import pickle

    error = mmipc.WorkerDied("worker 1 (pid 5) was killed by SIGKILL", pid=5, exitcode=-9)
    again = pickle.loads(pickle.dumps(error))
    assert (str(again), again.pid, again.exitcode, again.signal_name) == (str(error), 5, -9, "SIGKILL")
    broken = pickle.loads(pickle.dumps(mmipc.BrokenPool("x")))
    assert isinstance(broken, mmipc.BrokenPool) and str(broken) == "x"
    from concurrent.futures import BrokenExecutor

    assert issubclass(mmipc.BrokenPool, BrokenExecutor) and issubclass(mmipc.WorkerDied, RuntimeError)


@pytest.mark.crash
@pytest.mark.stress
def test_sigkill_workers_while_results_stream(make_pool: Callable[..., mmipc.Pool]) -> None:
    """Kill workers at arbitrary moments (mid-send, mid-copy, idle) while 1 MiB results flow."""
    pool = make_pool(2, result_heap_size=16 * MiB)
    futures = [pool.submit(C.pattern, 1 << 17, k) for k in range(300)]
    kills = 0
    for k in range(0, 300, 60):
        futures[k].exception(timeout=30)  # results are flowing
        victim = pool._workers[kills % 2].process.pid
        os.kill(victim, signal.SIGKILL)
        kills += 1
        deadline = time.monotonic() + 30
        while victim in [w.process.pid for w in pool._workers] and time.monotonic() < deadline:
            time.sleep(0.002)  # until the pool noticed (and replaced it): the next kill is another
    died = 0
    for k, future in enumerate(futures):
        error = future.exception(timeout=60)
        if error is None:
            assert np.array_equal(future.result(), C.pattern(1 << 17, k))
        else:
            assert isinstance(error, mmipc.WorkerDied) and "SIGKILL" in str(error)
            died += 1
    assert died <= kills
    assert pool.stats().workers_died == kills
    assert pool.stats().results_overflowed > 0  # the 16 MiB heap filled: the overflow path ran
    # Overflow segments are unlinked on arrival, and a killed worker's half-written ones when
    # it is retired: nothing of the pool's is left in /dev/shm while it runs.
    assert [e for e in os.listdir("/dev/shm") if e.startswith(pool._overflow_prefix)] == []
    assert pool.submit(C.square, 12).result(timeout=30) == 144


def test_arguments_larger_than_the_task_channel(make_pool: Callable[..., mmipc.Pool]) -> None:
    """In-band arguments over the task ring and buffers over the task heap travel in segments."""
    pool = make_pool(1, task_capacity=64 * 1024, task_heap_size=1 * MiB)
    big_bytes = bytes(range(256)) * 4096  # 1 MiB in-band (bytes pickle in-band)
    assert pool.submit(len, big_bytes).result(timeout=30) == len(big_bytes)
    arr = C.pattern(1 << 18, 11)  # 2 MiB out-of-band: larger than the 1 MiB task heap
    total, writable = pool.submit(C.sum_array, arr).result(timeout=30)
    assert (total, writable) == (float(arr.sum()), False)
    assert pool.stats().tasks_overflowed == 2
    assert [e for e in os.listdir("/dev/shm") if e.startswith(pool._overflow_prefix)] == []


def test_held_results_outlive_the_pool(mp_context: Any) -> None:
    with mmipc.Pool(1, mp_context=mp_context, result_heap_size=8 * MiB) as pool:
        arr = pool.submit(C.pattern, 1 << 17, 21).result(timeout=30)
        markers = list(pool._shm_markers)
    assert_clean(pool)
    assert [e for e in os.listdir("/dev/shm") if any(m in e for m in markers)] == []
    assert np.array_equal(arr, C.pattern(1 << 17, 21))  # still mapped while referenced


def test_imap_unordered_close_cancels_the_rest(make_pool: Callable[..., mmipc.Pool], tmp_path: Any) -> None:
    pool = make_pool(1, prefetch=1)
    first, later = str(tmp_path / "first"), str(tmp_path / "later")
    results = pool.imap_unordered(C.wait_for_file, [first] + [later] * 9, prefetch=10)
    assert pool.stats().tasks_submitted == 10
    open(first, "w").close()
    assert next(results) > 0
    results.close()  # the second task is running (waiting for `later`); eight are pending
    open(later, "w").close()
    pool.shutdown(wait=True)
    stats = pool.stats()
    assert (stats.tasks_completed, stats.tasks_pending, stats.tasks_failed) == (2, 0, 0)


def test_worker_dying_before_ready_breaks_the_pool(make_pool: Callable[..., mmipc.Pool]) -> None:
    pool = make_pool(1, initializer=C.init_exits, initargs=(7,))
    with pytest.raises(
        mmipc.BrokenPool, match=r"worker 0 \(pid \d+\) exited with code 7 before it was ready"
    ):
        pool.submit(C.square, 3).result(timeout=30)


def test_many_replacements_reuse_participant_slots(make_pool: Callable[..., mmipc.Pool]) -> None:
    """More workers over the pool's life than the result channel has participant slots (64)."""
    pool = make_pool(2, mp_context=multiprocessing.get_context("fork"), max_tasks_per_child=1)
    pids = list(pool.map(C.pid_of_worker, range(100)))
    assert len(set(pids)) == 100
    stats = pool.stats()
    assert stats.tasks_completed == 100 and stats.workers_died == 0 and stats.workers_started >= 100


def test_futures_work_with_wait_and_as_completed(make_pool: Callable[..., mmipc.Pool]) -> None:
    from concurrent.futures import FIRST_EXCEPTION, as_completed, wait

    pool = make_pool(2)
    futures = [pool.submit(C.square, k) for k in range(20)]
    assert all(isinstance(f, Future) for f in futures)
    assert sorted(f.result() for f in as_completed(futures, timeout=30)) == [k * k for k in range(20)]
    failing = [pool.submit(C.raise_value_error, k) for k in range(6)]
    done, _ = wait(failing, timeout=30, return_when=FIRST_EXCEPTION)
    assert any(isinstance(f.exception(), ValueError) for f in done)


_ORPHAN_SCRIPT = """
import os, sys, time
sys.path.insert(0, {tests!r})
import multiprocessing, mmipc, _poolchild as C
if __name__ == "__main__":
    pool = mmipc.Pool(2, mp_context={method!r}, result_heap_size=8 << 20)
    pids = [w.process.pid for w in pool._workers]
    assert sorted(set(pool.map(C.pid_of_worker, range(20)))) <= sorted(pids)
    print(" ".join(map(str, pids)), flush=True)
    print(" ".join(pool._shm_markers), flush=True)
    os.kill(os.getpid(), 9)  # the pool's process dies without any shutdown
"""


@pytest.mark.crash
@pytest.mark.parametrize("method", ["fork", "forkserver"])
def test_workers_exit_when_the_pool_process_dies(method: str) -> None:
    import subprocess
    import sys

    tests = os.path.dirname(os.path.abspath(__file__))
    script = _ORPHAN_SCRIPT.format(tests=tests, method=method)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    pids_line, markers_line = proc.stdout.splitlines()[:2]
    pids = [int(p) for p in pids_line.split()]
    markers = markers_line.split()
    try:
        deadline = time.monotonic() + 15
        alive = pids
        while alive and time.monotonic() < deadline:
            time.sleep(0.05)
            alive = [p for p in pids if os.path.exists(f"/proc/{p}") and _not_zombie(p)]
        assert alive == [], f"workers {alive} outlived the pool's process"
    finally:
        # The pool's process was SIGKILLed: its semaphores are orphans (python -m mmipc gc's job).
        for entry in os.listdir("/dev/shm"):
            if any(m in entry for m in markers):
                os.unlink(os.path.join("/dev/shm", entry))


def _not_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
