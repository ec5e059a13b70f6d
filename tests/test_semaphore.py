"""The posix_ipc wrapper: names, create/open errors, timed waits, signals, cross-process posts."""

from __future__ import annotations

import multiprocessing
import os
import secrets
import signal
import threading
import time
from collections.abc import Iterator

import pytest

import mmipc
from mmipc._semaphore import Semaphore, semaphore_name, unlink_semaphore


@pytest.fixture
def sem_name() -> Iterator[str]:
    name = semaphore_name(secrets.randbits(64), "t")
    yield name
    unlink_semaphore(name)


def post_later(name: str, delay: float) -> None:
    time.sleep(delay)
    sem = Semaphore.open(name)
    sem.release()
    sem.close()


def test_names_are_short_and_prefixed() -> None:
    name = semaphore_name(0xABC, "d")
    assert name == "/mmipc-0000000000000abc-d"
    assert len(name) <= 31  # macOS limit


def test_create_open_value_and_unlink(sem_name: str) -> None:
    sem = Semaphore.create(sem_name, 2)
    assert os.stat(f"/dev/shm/sem.{sem_name[1:]}").st_mode & 0o777 == 0o600
    other = Semaphore.open(sem_name)
    assert other.value == 2
    assert sem.try_acquire() and other.try_acquire()
    assert not sem.try_acquire()
    other.release()
    assert sem.value == 1
    assert sem.unlink()
    assert not sem.unlink()
    sem.close()
    other.close()


def test_create_existing_and_open_missing(sem_name: str) -> None:
    sem = Semaphore.create(sem_name)
    with pytest.raises(mmipc.RegionExists):
        Semaphore.create(sem_name)
    sem.unlink()
    sem.close()
    with pytest.raises(mmipc.RegionNotFound):
        Semaphore.open(sem_name)
    created_sem, created = Semaphore.open_or_create(sem_name, 3)
    assert created and created_sem.value == 3
    again, created_again = Semaphore.open_or_create(sem_name, 0)
    assert not created_again and again.value == 3
    created_sem.close()
    again.close()


def test_acquire_times_out_and_returns_false(sem_name: str) -> None:
    sem = Semaphore.create(sem_name)
    start = time.monotonic()
    assert sem.acquire(0.05) is False
    assert time.monotonic() - start >= 0.05
    assert sem.acquire(0) is False
    assert sem.acquire(-1) is False
    sem.close()


def test_acquire_without_timeout_takes_a_post_from_another_process(sem_name: str) -> None:
    sem = Semaphore.create(sem_name)
    proc = multiprocessing.get_context("spawn").Process(target=post_later, args=(sem_name, 0.2))
    proc.start()
    try:
        assert sem.acquire(None) is True
    finally:
        proc.join(30)
    assert proc.exitcode == 0
    sem.close()


def test_signal_whose_handler_returns_does_not_end_the_wait(sem_name: str) -> None:
    sem = Semaphore.create(sem_name)
    hits: list[int] = []
    previous = signal.signal(signal.SIGALRM, lambda signum, frame: hits.append(signum))
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.05)
        start = time.monotonic()
        assert sem.acquire(0.3) is False  # the wait continued to its deadline
        assert time.monotonic() - start >= 0.3
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert hits == [signal.SIGALRM]
    sem.close()


@pytest.mark.parametrize("timeout", [10.0, None])
def test_exception_from_a_signal_handler_ends_the_wait(sem_name: str, timeout: float | None) -> None:
    """posix_ipc replaces a handler's exception with SignalError; mmipc must not lose it (Ctrl-C)."""
    sem = Semaphore.create(sem_name)

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGALRM, handler)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.05)
        with pytest.raises(KeyboardInterrupt):
            sem.acquire(timeout)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    sem.close()


def test_wait_in_another_thread_survives_signals(sem_name: str) -> None:
    sem = Semaphore.create(sem_name)
    result: list[bool] = []
    thread = threading.Thread(target=lambda: result.append(sem.acquire(5)))
    thread.start()
    previous = signal.signal(signal.SIGUSR1, lambda signum, frame: None)
    try:
        for _ in range(5):
            signal.pthread_kill(thread.ident, signal.SIGUSR1)  # type: ignore[arg-type]
            time.sleep(0.01)
        sem.release()
        thread.join(10)
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert result == [True]
    sem.close()
