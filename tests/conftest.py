"""Shared fixtures: start methods, rings that are always cleaned up, and the /dev/shm leak check.

The leak check runs once, in the controlling process (not in xdist workers), after the whole
session: any mmipc object in ``/dev/shm`` that was not there when the session started fails the run.
"""

from __future__ import annotations

import multiprocessing
import os
import pathlib
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import mmipc
from mmipc import _semaphore
from mmipc._ring import _sem_names

START_METHODS = ["fork", "spawn", "forkserver"]

_SHM = pathlib.Path("/dev/shm")
_BEFORE_KEY = "_mmipc_shm_before"


def mmipc_shm_entries() -> set[str]:
    """Names of mmipc regions and semaphores currently in /dev/shm."""
    try:
        return {entry for entry in os.listdir(_SHM) if "mmipc" in entry}
    except FileNotFoundError:
        return set()


def _is_controller(config: pytest.Config) -> bool:
    return not hasattr(config, "workerinput")


def pytest_sessionstart(session: pytest.Session) -> None:
    if _is_controller(session.config):
        setattr(session.config, _BEFORE_KEY, mmipc_shm_entries())


def _in_use_by_a_live_process(entries: set[str]) -> set[str]:
    """The entries some live process still maps or holds open (another run on a shared machine)."""
    paths = {str(_SHM / entry): entry for entry in entries}
    used: set[str] = set()
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            with open(f"/proc/{pid}/maps") as maps:
                for line in maps:
                    path = line.rstrip("\n").rpartition(" ")[2]
                    if path in paths:
                        used.add(paths[path])
            for fd in os.listdir(f"/proc/{pid}/fd"):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target in paths:
                    used.add(paths[target])
        except OSError:
            continue
    return used


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    config = session.config
    if not _is_controller(config):
        return
    before: set[str] = getattr(config, _BEFORE_KEY, set())
    new = mmipc_shm_entries() - before
    # Every process this session started has exited by now; objects a live process still uses
    # belong to another run on the same machine and are not this suite's leaks.
    leaked = sorted(new - _in_use_by_a_live_process(new))
    if leaked:
        reporter = config.pluginmanager.get_plugin("terminalreporter")
        message = "mmipc objects left in /dev/shm by the test suite: " + ", ".join(leaked)
        if reporter is not None:
            reporter.write_line(message, red=True, bold=True)
        else:
            print(message)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(params=START_METHODS)
def mp_context(request: pytest.FixtureRequest) -> multiprocessing.context.BaseContext:
    """Each test using this runs once per start method."""
    return multiprocessing.get_context(request.param)


def cleanup_ring(ring: mmipc.Ring) -> None:
    """Remove everything a ring owns from the machine, whatever state the test left it in."""
    nonce = ring._region.nonce
    try:
        if not ring.closed:
            try:
                ring.unlink()
            except mmipc.MmipcError:
                pass
            ring.close()
    finally:
        for sem in _sem_names(nonce):
            _semaphore.unlink_semaphore(sem)


@pytest.fixture
def make_ring(tmp_path: pathlib.Path) -> Iterator[Callable[..., mmipc.Ring]]:
    """``make_ring(capacity, kind="anonymous"|"named"|"file", **kwargs)``; cleaned up after."""
    made: list[mmipc.Ring] = []

    def make(capacity: int = 1 << 16, kind: str = "anonymous", **kwargs: Any) -> mmipc.Ring:
        if kind == "named":
            kwargs.setdefault("name", f"test-{uuid.uuid4().hex[:12]}")
        elif kind == "file":
            kwargs.setdefault("path", str(tmp_path / f"ring-{uuid.uuid4().hex[:8]}.mmipc"))
        ring = mmipc.Ring.create(capacity, **kwargs)
        made.append(ring)
        return ring

    yield make
    for ring in made:
        cleanup_ring(ring)


@pytest.fixture(params=["anonymous", "named", "file"])
def ring_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def cleanup_channel(chan: mmipc.Channel) -> None:
    """Remove everything a channel owns, whatever state the test left it in."""
    region = chan._heap_region
    try:
        if not chan.closed:
            try:
                chan.unlink()
            except mmipc.MmipcError:
                pass
    finally:
        if region is not None:
            region.unlink_name()
        chan.close()
        cleanup_ring(chan._ring)


@pytest.fixture
def make_channel(tmp_path: Any) -> Iterator[Callable[..., mmipc.Channel]]:
    made: list[mmipc.Channel] = []

    def make(capacity: int = 1 << 20, kind: str = "anonymous", **kwargs: Any) -> mmipc.Channel:
        if kind == "named":
            kwargs.setdefault("name", f"test-{uuid.uuid4().hex[:12]}")
        elif kind == "file":
            kwargs.setdefault("path", str(tmp_path / f"chan-{uuid.uuid4().hex[:8]}.mmipc"))
        chan = mmipc.Channel.create(capacity, **kwargs)
        made.append(chan)
        return chan

    yield make
    for chan in made:
        cleanup_channel(chan)
